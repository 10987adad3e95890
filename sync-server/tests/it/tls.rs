//! Mutual TLS over real QUIC on 127.0.0.1: who the server lets in, and who it refuses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fq_sync_server::ca::{Bundle, CaCertificate, GrantRole, PeerIdentity, RevocationHandle, SERVER_NAME};
use fq_sync_server::net::{
    ALPN, AcceptError, CloseCode, ConnectError, Connection, ConnectionError, EndpointError, NetConfig, client_endpoint,
    server_endpoint,
};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::county::County;

/// Upper bound for every wait; loopback handshakes take milliseconds.
const WAIT: Duration = Duration::from_secs(10);
const ECHO_LIMIT_BYTES: usize = 64 * 1024;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Short timeouts so that a refused connection cannot keep a test waiting.
fn net() -> NetConfig {
    let mut net = NetConfig::default();
    net.keep_alive_interval = Duration::from_millis(500);
    net.idle_timeout = Duration::from_secs(5);
    net
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A running township server that reports every authentication result and echoes every
/// bidirectional stream of the connections it accepts.
struct Server {
    addr: SocketAddr,
    revocations: RevocationHandle,
    results: mpsc::UnboundedReceiver<Result<PeerIdentity, AcceptError>>,
}

impl Server {
    fn start(county: &County, id: &str, scope: &str) -> Server {
        let bundle = county.issue(id, "township", scope);
        let revocations = RevocationHandle::new(bundle.ca().clone(), county.revocations()).unwrap();
        let endpoint = server_endpoint(localhost(), &bundle, revocations.clone(), &net()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(handshake) = endpoint.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    match handshake.authenticate().await {
                        Ok((connection, peer)) => {
                            let _ = tx.send(Ok(peer));
                            serve_echo(connection).await;
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err));
                        }
                    }
                });
            }
        });
        Server { addr, revocations, results }
    }

    async fn next_result(&mut self) -> Result<PeerIdentity, AcceptError> {
        within("the server's authentication result", self.results.recv()).await.expect("server task alive")
    }
}

/// Echoes each stream: reads it to its end, writes it back, finishes, and waits until the peer
/// has received everything.
async fn serve_echo(connection: Connection) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let Ok(data) = recv.read_to_end(ECHO_LIMIT_BYTES).await else {
            return;
        };
        if send.write_all(&data).await.is_err() || send.finish().is_err() {
            return;
        }
        let _ = send.stopped().await;
    }
}

/// Sends `msg` on a new stream, finishes it, and reads the reply to its end.
async fn echo(connection: &Connection, msg: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(msg).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(ECHO_LIMIT_BYTES).await.map_err(|e| e.to_string())
}

fn application_close(err: &ConnectionError) -> Option<(CloseCode, String)> {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            Some((CloseCode::from_code(close.error_code)?, String::from_utf8_lossy(&close.reason).into_owned()))
        }
        _ => None,
    }
}

/// A quinn client built by hand: trusts `roots`, presents `cert` (or no certificate).
fn raw_client(roots: &CaCertificate, cert: Option<&Bundle>) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    store.add(roots.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store);
    let mut tls = match cert {
        Some(bundle) => {
            builder.with_client_auth_cert(vec![bundle.certificate_der().clone()], bundle.private_key_der()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// Asserts that a hand-built client gets no working connection: the handshake fails, or the
/// connection dies before an echo completes.
async fn assert_raw_client_refused(endpoint: &quinn::Endpoint, addr: SocketAddr) {
    let connecting = endpoint.connect(addr, SERVER_NAME).unwrap();
    if let Ok(connection) = within("the refused handshake", connecting).await {
        let echoed = within("the refused echo", echo(&connection, b"let me in")).await;
        assert!(echoed.is_err(), "refused client got an echo: {echoed:?}");
    }
}

#[tokio::test]
async fn server_accepts_valid_device_and_echoes_stream() {
    let county = County::new();
    let mut server = Server::start(&county, "tw-101", "532924101");
    let device = county.issue("d07", "mediator", "532924101201");
    let client = client_endpoint(localhost(), &device, &net()).unwrap();

    let (connection, server_id) = within("connect", client.connect(server.addr)).await.unwrap();
    assert_eq!(server_id.id.as_str(), "tw-101");
    assert_eq!(server_id.role, GrantRole::TownshipServer);

    let peer = server.next_result().await.unwrap();
    assert_eq!(&peer, device.identity());

    for msg in [&b"hello township"[..], &[0u8; 40_000][..]] {
        let reply = within("echo", echo(&connection, msg)).await.unwrap();
        assert_eq!(reply, msg);
    }
    CloseCode::Done.close(&connection);
    within("client idle", client.wait_idle()).await;
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let county = County::new();
    let mut server = Server::start(&county, "tw-101", "532924101");
    let ca = county.issue("d07", "mediator", "532924101201").ca().clone();

    let anonymous = raw_client(&ca, None);
    assert_raw_client_refused(&anonymous, server.addr).await;
    let err = server.next_result().await.unwrap_err();
    assert!(matches!(err, AcceptError::Handshake(_)), "got {err:?}");
}

#[tokio::test]
async fn server_refuses_client_certificate_from_another_ca() {
    let county = County::new();
    let mut server = Server::start(&county, "tw-101", "532924101");
    let ca = county.issue("d07", "mediator", "532924101201").ca().clone();
    // Same county code, same id and role, but signed by a CA the server does not trust.
    let impostor = County::new().issue("d07", "mediator", "532924101201");

    let client = raw_client(&ca, Some(&impostor));
    assert_raw_client_refused(&client, server.addr).await;
    let err = server.next_result().await.unwrap_err();
    assert!(matches!(err, AcceptError::Handshake(_)), "got {err:?}");

    // Our own client refuses the server too: it trusts only its own (impostor) CA.
    let own = client_endpoint(localhost(), &impostor, &net()).unwrap();
    let refused = within("connect", own.connect(server.addr)).await;
    assert!(matches!(refused, Err(ConnectError::Handshake { .. })), "got {refused:?}");
    let _ = server.next_result().await;

    // The server keeps serving genuine devices after refusing others.
    let genuine = county.issue("d08", "mediator", "532924101201");
    let client = client_endpoint(localhost(), &genuine, &net()).unwrap();
    let (connection, _) = within("connect", client.connect(server.addr)).await.unwrap();
    assert_eq!(server.next_result().await.unwrap().id, genuine.identity().id);
    assert_eq!(within("echo", echo(&connection, b"ok")).await.unwrap(), b"ok");
}

#[tokio::test]
async fn server_refuses_revoked_client_after_list_swapped_in_while_running() {
    let county = County::new();
    let mut server = Server::start(&county, "tw-101", "532924101");
    let device = county.issue("d07", "mediator", "532924101201");
    // The server was started with the empty list; the revocation reaches it at run time.
    let list = county.revoke("d07");
    server.revocations.update(list).unwrap();

    let client = client_endpoint(localhost(), &device, &net()).unwrap();
    let closed = match within("connect", client.connect(server.addr)).await {
        // TLS may complete before the server's close arrives.
        Ok((connection, _)) => within("close", connection.closed()).await,
        Err(ConnectError::Handshake { source, .. }) => source,
        Err(other) => panic!("unexpected error {other:?}"),
    };
    assert_eq!(
        application_close(&closed),
        Some((CloseCode::Revoked, "certificate revoked".to_owned())),
        "got {closed:?}"
    );
    let err = server.next_result().await.unwrap_err();
    match err {
        AcceptError::Revoked { id, serial } => {
            assert_eq!(&id, device.id());
            assert_eq!(&serial, device.serial());
        }
        other => panic!("expected revoked, got {other:?}"),
    }
}

/// The case the post-handshake check exists for: a device that held a TLS session before it
/// was revoked comes back with a session ticket. A resumed TLS 1.3 handshake does not send a
/// CertificateRequest and does not run the client certificate verifier; rustls restores the
/// client's certificate from the stored session (rustls server/tls13.rs: `peer_certificates`
/// cloned from `resumedata.client_cert_chain`, `doing_client_auth` only if `full_handshake`).
///
/// How the test knows the handshake really was resumed: it dials with 0-RTT.
/// `Connecting::into_0rtt` succeeds only if the client holds a session ticket for the server
/// (otherwise it hands the `Connecting` back), and the `ZeroRttAccepted` future resolves to
/// `true` only if the server accepted the early data. TLS 1.3 allows early data only when the
/// server accepted the first PSK offered, i.e. resumed the session (RFC 8446 §4.2.10; rustls
/// returns "rejected" from `decide_if_early_data_allowed` whenever it is not resuming). So
/// `accepted == true` proves the server resumed the session and skipped the verifier.
#[tokio::test]
async fn server_refuses_revoked_client_resuming_a_session_from_before_revocation() {
    let county = County::new();
    let mut server = Server::start(&county, "tw-101", "532924101");
    let device = county.issue("d07", "mediator", "532924101201");
    let client = client_endpoint(localhost(), &device, &net()).unwrap();

    // 1. Full handshake while the device is in good standing; the server sends tickets right
    //    after the handshake, ahead of the echo reply, so they are stored once the echo returns.
    let (connection, _) = within("connect", client.connect(server.addr)).await.unwrap();
    assert_eq!(server.next_result().await.unwrap().id, device.identity().id);
    assert_eq!(within("echo", echo(&connection, b"one")).await.unwrap(), b"one");
    CloseCode::Done.close(&connection);

    // 2. Control: a resumed connection (with 0-RTT data) before revocation is accepted, and the
    //    identity restored from the ticket is the device's.
    let resumed = client
        .quinn_endpoint()
        .connect(server.addr, SERVER_NAME)
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("no session ticket stored: resumption was not attempted"));
    let (connection, accepted) = resumed;
    let early_echo = echo(&connection, b"early");
    let (reply, accepted) = within("resumed echo", async { tokio::join!(early_echo, accepted) }).await;
    assert!(accepted, "server did not accept 0-RTT: the session was not resumed");
    assert_eq!(reply.unwrap(), b"early");
    assert_eq!(&server.next_result().await.unwrap(), device.identity());
    CloseCode::Done.close(&connection);

    // 3. Revoke while the device still holds a ticket.
    server.revocations.update(county.revoke("d07")).unwrap();

    // 4. Resume again, with 0-RTT data. The session is resumed (accepted == true), so no
    //    certificate verifier ran; the server must still refuse, and must never answer the
    //    early data.
    let (connection, accepted) = client
        .quinn_endpoint()
        .connect(server.addr, SERVER_NAME)
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("no session ticket stored: resumption was not attempted"));
    let early_echo = echo(&connection, b"early after revocation");
    let (reply, accepted) = within("refused resumption", async { tokio::join!(early_echo, accepted) }).await;
    assert!(accepted, "server did not accept 0-RTT: the session was not resumed");
    assert!(reply.is_err(), "revoked device got its 0-RTT data answered: {reply:?}");
    let closed = within("close", connection.closed()).await;
    assert_eq!(
        application_close(&closed),
        Some((CloseCode::Revoked, "certificate revoked".to_owned())),
        "got {closed:?}"
    );
    assert!(matches!(server.next_result().await, Err(AcceptError::Revoked { .. })));
}

#[tokio::test]
async fn connect_refuses_server_outside_own_scope() {
    let county = County::new();
    // A township server of township 102; the device belongs to township 101.
    let mut server = Server::start(&county, "tw-102", "532924102");
    let device = county.issue("d07", "mediator", "532924101201");
    let client = client_endpoint(localhost(), &device, &net()).unwrap();
    let err = within("connect", client.connect(server.addr)).await.unwrap_err();
    assert!(matches!(err, ConnectError::OutOfScope { .. }), "got {err:?}");
    // The server itself had nothing against the device.
    assert!(server.next_result().await.is_ok());
}

#[tokio::test]
async fn server_endpoint_refuses_device_bundle() {
    let county = County::new();
    let device = county.issue("d07", "mediator", "532924101201");
    let handle = RevocationHandle::new(device.ca().clone(), county.revocations()).unwrap();
    let err = server_endpoint(localhost(), &device, handle, &net()).unwrap_err();
    assert!(matches!(err, EndpointError::NotAServer(GrantRole::Mediator)), "got {err:?}");
}

/// The other side of the resumption proof above: `accepted` is not always true. Tickets are
/// kept per server name (every server is `fq-server`), so a client holding a ticket from one
/// server offers it to another; that server does not know the session, runs a full handshake
/// (verifying the certificate), and rejects the early data.
#[tokio::test]
async fn resumption_falls_back_to_full_handshake_on_a_server_that_never_saw_the_session() {
    let county = County::new();
    let mut first = Server::start(&county, "tw-101", "532924101");
    // A second server of the same township (say, after a rebuild on new hardware).
    let mut second = Server::start(&county, "tw-101b", "532924101");
    let device = county.issue("d07", "mediator", "532924101201");
    let client = client_endpoint(localhost(), &device, &net()).unwrap();

    let (connection, _) = within("connect", client.connect(first.addr)).await.unwrap();
    assert!(first.next_result().await.is_ok());
    assert_eq!(within("echo", echo(&connection, b"one")).await.unwrap(), b"one");
    CloseCode::Done.close(&connection);

    let (connection, accepted) = client
        .quinn_endpoint()
        .connect(second.addr, SERVER_NAME)
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("no session ticket stored: resumption was not attempted"));
    assert!(!within("handshake", accepted).await, "an unknown session cannot be resumed");
    assert_eq!(&second.next_result().await.unwrap(), device.identity());
    // 0-RTT streams were rejected; the connection itself works after the full handshake.
    assert_eq!(within("echo", echo(&connection, b"two")).await.unwrap(), b"two");
}
