//! Device to device over real QUIC on 127.0.0.1 (ADR 43): a device listening with its own
//! certificate, which carries no DNS name and only the client-authentication purpose, and
//! another device dialing it. Who each side takes, and who it refuses.

use std::net::SocketAddr;
use std::time::Duration;

use fq_sync_server::ca::{Bundle, GrantRole, PeerIdentity, RevocationHandle, RevocationList};
use fq_sync_server::net::{
    AcceptError, CloseCode, ConnectError, ConnectionError, EndpointError, NetConfig, PeerMismatch, client_endpoint,
    peer_client_endpoint, peer_server_endpoint, server_endpoint,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::county::County;

const WAIT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn net() -> NetConfig {
    let mut net = NetConfig::default();
    net.keep_alive_interval = Duration::from_millis(500);
    net.idle_timeout = Duration::from_secs(5);
    net
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn handle(bundle: &Bundle, list: RevocationList) -> RevocationHandle {
    RevocationHandle::new(bundle.ca().clone(), list).unwrap()
}

/// A device listening for devices (or, with `server`, a township server), reporting each
/// authentication result and keeping accepted connections open until they close.
struct Listener {
    addr: SocketAddr,
    results: mpsc::UnboundedReceiver<Result<PeerIdentity, AcceptError>>,
}

impl Listener {
    fn start(bundle: &Bundle, list: RevocationList) -> Listener {
        let endpoint = if bundle.role().is_server() {
            server_endpoint(localhost(), bundle, handle(bundle, list), &net()).unwrap()
        } else {
            peer_server_endpoint(localhost(), bundle, handle(bundle, list), &net()).unwrap()
        };
        let addr = endpoint.local_addr().unwrap();
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(handshake) = endpoint.accept().await {
                let result = handshake.authenticate().await;
                match result {
                    Ok((connection, peer)) => {
                        let _ = tx.send(Ok(peer));
                        tokio::spawn(async move { connection.closed().await });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        });
        Listener { addr, results }
    }

    async fn next(&mut self) -> Result<PeerIdentity, AcceptError> {
        within("the listener's result", self.results.recv()).await.expect("listener alive")
    }
}

#[tokio::test]
async fn peer_devices_of_one_village_connect_with_their_own_certificates() {
    let county = County::new();
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let mediator = county.issue("d07", "mediator", "532924101201");
    let mut listener = Listener::start(&grid, county.revocations());
    let dialer = peer_client_endpoint(localhost(), &mediator, handle(&mediator, county.revocations()), &net()).unwrap();
    let (connection, peer) = within("connect", dialer.connect(listener.addr)).await.unwrap();
    assert_eq!(&peer, grid.identity());
    assert_eq!(&listener.next().await.unwrap(), mediator.identity());
    // A township officer's device covers the village: the two nest.
    let officer = county.issue("o01", "township-officer", "532924101");
    let dialer = peer_client_endpoint(localhost(), &officer, handle(&officer, county.revocations()), &net()).unwrap();
    let (other, peer) = within("connect", dialer.connect(listener.addr)).await.unwrap();
    assert_eq!(peer.id.as_str(), "d08");
    assert_eq!(listener.next().await.unwrap().id.as_str(), "o01");
    CloseCode::Done.close(&connection);
    CloseCode::Done.close(&other);
}

#[tokio::test]
async fn peer_device_of_another_village_is_refused_by_both_sides() {
    let county = County::new();
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let other = county.issue("d09", "mediator", "532924101202");
    let mut listener = Listener::start(&grid, county.revocations());
    let dialer = peer_client_endpoint(localhost(), &other, handle(&other, county.revocations()), &net()).unwrap();
    let err = within("connect", dialer.connect(listener.addr)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::Peer(PeerMismatch::NoOverlap { id, .. }) if id.as_str() == "d08"),
        "got {err:?}"
    );
    // The listener refuses it as well, or sees the dialer hang up first.
    let refused = listener.next().await.unwrap_err();
    assert!(
        matches!(refused, AcceptError::Peer(PeerMismatch::NoOverlap { .. }) | AcceptError::Handshake(_)),
        "got {refused:?}"
    );
}

#[tokio::test]
async fn peer_dialer_refuses_a_server_and_a_server_client_names_a_device() {
    let county = County::new();
    let township = county.issue("tw-101", "township", "532924101");
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let mediator = county.issue("d07", "mediator", "532924101201");
    // A server's address given as a device's.
    let mut server = Listener::start(&township, county.revocations());
    let dialer = peer_client_endpoint(localhost(), &mediator, handle(&mediator, county.revocations()), &net()).unwrap();
    let err = within("connect", dialer.connect(server.addr)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::Peer(PeerMismatch::NotADevice { role: GrantRole::TownshipServer, .. })),
        "got {err:?}"
    );
    assert!(server.next().await.is_ok(), "the server had nothing against the device");
    // A device's address given as a server's: the TLS check fails as before, and the error
    // names the device that answered.
    let mut listener = Listener::start(&grid, county.revocations());
    let client = client_endpoint(localhost(), &mediator, &net()).unwrap();
    let err = within("connect", client.connect(listener.addr)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::NotAServer { id, role: GrantRole::GridWorker } if id.as_str() == "d08"),
        "got {err:?}"
    );
    assert!(matches!(listener.next().await, Err(AcceptError::Handshake(_))));
    // A server bundle cannot listen for devices.
    let err =
        peer_server_endpoint(localhost(), &township, handle(&township, county.revocations()), &net()).unwrap_err();
    assert!(matches!(err, EndpointError::NotADevice(GrantRole::TownshipServer)), "got {err:?}");
}

#[tokio::test]
async fn peer_revoked_devices_are_refused_each_way() {
    let county = County::new();
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let mediator = county.issue("d07", "mediator", "532924101201");
    let before = county.revocations();
    // The dialer knows the listener's certificate is revoked.
    let revoked_grid = county.revoke("d08");
    let mut listener = Listener::start(&grid, before.clone());
    let dialer = peer_client_endpoint(localhost(), &mediator, handle(&mediator, revoked_grid), &net()).unwrap();
    let err = within("connect", dialer.connect(listener.addr)).await.unwrap_err();
    assert!(matches!(&err, ConnectError::Revoked { id, .. } if id.as_str() == "d08"), "got {err:?}");
    let _ = listener.next().await;
    // The listener knows the dialer's certificate is revoked.
    let both = county.revoke("d07");
    let mut listener = Listener::start(&grid, both);
    let dialer = peer_client_endpoint(localhost(), &mediator, handle(&mediator, before), &net()).unwrap();
    let closed = match within("connect", dialer.connect(listener.addr)).await {
        Ok((connection, _)) => within("close", connection.closed()).await,
        Err(ConnectError::Handshake { source, .. }) => source,
        Err(other) => panic!("unexpected error {other:?}"),
    };
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(c) if CloseCode::from_code(c.error_code) == Some(CloseCode::Revoked)),
        "got {closed:?}"
    );
    assert!(matches!(listener.next().await, Err(AcceptError::Revoked { .. })));
}

#[tokio::test]
async fn peer_device_of_another_county_fails_the_handshake() {
    let county = County::new();
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let impostor = County::new().issue("d07", "mediator", "532924101201");
    let mut listener = Listener::start(&grid, county.revocations());
    let dialer =
        peer_client_endpoint(localhost(), &impostor, handle(&impostor, impostor.revocations().clone()), &net())
            .unwrap();
    let err = within("connect", dialer.connect(listener.addr)).await.unwrap_err();
    assert!(matches!(err, ConnectError::Handshake { .. }), "got {err:?}");
    assert!(matches!(listener.next().await, Err(AcceptError::Handshake(_))));
}

/// A session cut short because the listening device stops serving (Ctrl-C, SIGTERM) is
/// reported as such, counted, and the dialer is told the listener is shutting down. Before,
/// the listener printed nothing about it.
#[tokio::test]
async fn peer_session_cut_short_by_stopping_is_reported_and_the_dialer_told() {
    use fq_core::clock::{Clock, SystemClock};
    use fq_core::sync::session::{Credentials, Session, SessionConfig, Side};
    use fq_sync_server::peer::{PeerEvent, ServeOptions, listen, serve_peers};

    let county = County::new();
    let grid = county.issue("d08", "grid-worker", "532924101201");
    let mediator = county.issue("d07", "mediator", "532924101201");
    let mut options = ServeOptions::default();
    options.net = net();
    let listener = listen(localhost(), &grid, handle(&grid, county.revocations()), &options).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (seen, mut events) = mpsc::unbounded_channel();
    let serving = tokio::spawn(async move {
        let open = || Ok::<_, std::convert::Infallible>(crate::server::device(&grid));
        let shutdown = async {
            let _ = stopped.await;
        };
        serve_peers(&listener, open, false, shutdown, |event| {
            let line = match event {
                PeerEvent::Started { peer, .. } => format!("started {}", peer.id),
                PeerEvent::Progress(_) => return,
                PeerEvent::Interrupted { peer, .. } => format!("interrupted {}", peer.id),
                PeerEvent::Session(_) => "session".to_owned(),
                _ => "refused".to_owned(),
            };
            let _ = seen.send(line);
        })
        .await
    });

    // The dialer says hello and waits for the answer: the listener is then inside the session.
    let dialer = peer_client_endpoint(localhost(), &mediator, handle(&mediator, county.revocations()), &net()).unwrap();
    let (connection, _) = within("connect", dialer.connect(addr)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let ledger = crate::server::device(&mediator);
    let creds = Credentials {
        ca: mediator.ca_verifying_key(),
        own: Some((mediator.grant().clone(), mediator.signing_key().clone())),
        peer_scope_limit: None,
    };
    let config = SessionConfig { device_peer: true, ..SessionConfig::default() };
    let mut session = Session::new(Side::Child, &ledger, creds, config, None, SystemClock.now()).unwrap();
    while let Some(frame) = session.poll_transmit() {
        send.write_all(&frame).await.unwrap();
    }
    let mut first = [0u8; 1];
    within("the listener's hello", recv.read_exact(&mut first)).await.unwrap();

    stop.send(()).unwrap();
    let sessions = within("the listener to stop", serving).await.unwrap().unwrap();
    assert_eq!(sessions, 1, "the session cut short is counted");
    assert_eq!(events.recv().await.as_deref(), Some("started d07"));
    assert_eq!(events.recv().await.as_deref(), Some("interrupted d07"), "nothing else was told");
    match within("the close", connection.closed()).await {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(CloseCode::from_code(close.error_code), Some(CloseCode::ShuttingDown))
        }
        other => panic!("the dialer was not told the listener stopped: {other:?}"),
    }
}
