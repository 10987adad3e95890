//! QUIC endpoints with mutual TLS: the only module that names quinn.
//!
//! Both sides present a certificate from the county CA and trust nothing else. A server hands
//! out a connection only through [`Handshake::authenticate`], which reads the peer's
//! [`PeerIdentity`] and checks its serial against the revocation list in force; a client gets
//! one only through [`ClientEndpoint::connect`], which checks that the peer is a county or
//! township server above the client's own scope.
//!
//! Device to device on the local network (`fq serve` / `fq sync --peer`, ADR 43): one device
//! listens ([`peer_server_endpoint`]) and the other dials it ([`peer_client_endpoint`]), each
//! with its own device certificate. A device certificate is for client authentication only and
//! names no DNS name, so the dialer checks the listener's chain as a server checks a client's
//! (rustls' WebPKI client verifier, the county CA the only root). After the handshake both
//! sides check the other's identity as for any peer (not revoked, inside the county) and that
//! it is another person's device whose scope contains, or lies in, their own
//! ([`check_device_peer`]).
//!
//! Transport settings are tuned for 2G links (see the constants and DESIGN.md §8): quinn's
//! defaults assume a fast link and an unbounded connection receive window.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ca::{
    AdminCode, Bundle, CaCertificate, GrantRole, IdentityError, PeerIdentity, RevocationError, RevocationHandle,
    SERVER_NAME, Serial, SubjectId,
};

pub use quinn::{Connection, ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};

/// ALPN protocol id of the fq sync protocol, version 1. Both sides require it.
pub const ALPN: &[u8] = b"fq-sync/1";

/// Keep-alive interval. Mobile carriers' NAT drops idle UDP mappings after 30 s or more; a
/// PING every 15 s (about 50 bytes) keeps the path open while a session waits for the ledger.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Idle timeout. 2G links stall for tens of seconds (cell handover, GPRS suspended during a
/// voice call); quinn's default of 30 s would kill sessions that would have recovered.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Receive window of one stream, in bytes. Bounds what one sync session can buffer in the
/// server (quinn's default is 1.25 MB a stream); a 256 KiB change still streams through it.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 256 * 1024;
/// Receive window of a whole connection, in bytes. quinn's default is unbounded; a county
/// server holds thousands of device connections, so each may buffer at most this much.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Send window of a connection, in bytes: unacknowledged data we keep in memory. At 2G rates
/// (a few KB/s) 2 MiB is minutes of data, more than any congestion window will allow.
pub const SEND_WINDOW_BYTES: u64 = 2 * 1024 * 1024;
/// Bidirectional streams (sync sessions) a peer may have open at once on one connection,
/// unless the config says otherwise ([`NetConfig::max_streams`]). A child runs one session at a
/// time on a connection (a retry after its watchdog dials a new connection); 2 leaves room for
/// one overlap and bounds what one connection can make the server hold (OPERATIONS.md,
/// "Limits").
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 2;
/// Unidirectional streams a peer may open by default: none. The one use of them, a server
/// sending its revocation list down to a township or a device (PROTOCOL.md, "Revocation
/// lists"), is allowed by the child on the connection it dials
/// (`Connection::set_max_concurrent_uni_streams`), so every accepting side still takes none.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 0;
/// RTT assumed before the first measurement: RFC 9002's 333 ms. 2G/EDGE round trips are
/// 300-1000 ms, so on the slowest links the first handshake flight may go twice (1.2 KB up,
/// about 2.5 KB down). 600 ms avoided that, but every lost handshake packet then cost a probe
/// timeout of about 1.8 s instead of 1 s: on issue 12's link (300 ms, 10 % loss) a handshake
/// that lost a packet took 2.3-3.0 s instead of 1.6-2.3 s (ADR 46).
pub const INITIAL_RTT: Duration = Duration::from_millis(333);
/// QUIC's smallest datagram payload, which every path must carry (RFC 9000, 14).
const MIN_UDP_PAYLOAD: u16 = 1200;
/// Receive and send buffer asked for on a server's UDP socket. Linux gives 208 KiB by default:
/// a few hundred devices dialing at once (a Monday morning, or the end of an outage) overflow
/// it, and a dropped first handshake packet costs that device a one-second retransmission
/// timer. 4 MiB holds about 1,800 datagrams. The kernel caps it at `net.core.rmem_max` /
/// `wmem_max`; a smaller buffer is logged at start-up (OPERATIONS.md says how to raise it).
pub const SERVER_UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// TLS sessions a server remembers for resumption (and 0-RTT), about 1 KiB each. A client
/// stores two tickets per server, so this covers a few thousand devices.
pub const SERVER_SESSION_CACHE_ENTRIES: usize = 8192;
/// Bytes of a server's stateless-reset key ([`ResetKey`]).
pub const RESET_KEY_BYTES: usize = 32;
/// Shortest time between two stateless resets a server sends (quinn's default is 20 ms). After a
/// restart every device that was syncing needs one; at 2 ms a county's 1,600 devices are all
/// told within about 3 s, and a reset is smaller than the packet that caused it, so it cannot
/// amplify a flood.
pub const MIN_RESET_INTERVAL: Duration = Duration::from_millis(2);
/// Connection attempts a server queues before it has looked at them. The accept loop hands each
/// one to its own task at once, so the queue is short; the bound only matters under a flood.
pub const MAX_INCOMING: usize = 1024;
/// Bytes of early (0-RTT) packets held for one connection attempt before the server looks at it,
/// and for all of them together. quinn's defaults (10 MiB and 100 MiB) are sized for web servers.
pub const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// See [`INCOMING_BUFFER_BYTES`].
pub const INCOMING_BUFFER_TOTAL_BYTES: u64 = 8 * 1024 * 1024;

/// The secret a server derives its QUIC stateless-reset tokens from.
///
/// A server that lost a connection's state (it was restarted) answers that connection's next
/// packet with a stateless reset, which the peer accepts only if its token matches the one the
/// server handed out when the connection was made. quinn picks a random key per process by
/// default, so a restarted server's resets never match and its predecessor's peers wait for an
/// idle timeout. A server keeps its key in its data directory instead (`server`), so the
/// restarted process resets those connections at once and the peers dial again.
#[derive(Clone, PartialEq, Eq)]
pub struct ResetKey([u8; RESET_KEY_BYTES]);

impl ResetKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; RESET_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; RESET_KEY_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The key's bytes (to save it).
    pub fn as_bytes(&self) -> &[u8; RESET_KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("ResetKey(..)")
    }
}

/// Transport settings that deployments (and tests) may change; everything else is fixed by the
/// constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetConfig {
    /// How often to send a keep-alive when the connection is otherwise idle.
    pub keep_alive_interval: Duration,
    /// How long a connection may go without hearing from the peer before it is dropped.
    pub idle_timeout: Duration,
    /// Sync sessions (bidirectional streams) the peer may have open at once on one connection.
    pub max_streams: u32,
    /// A server's stateless-reset key; `None` takes a random one for this process (clients, and
    /// servers in tests that never restart).
    pub reset_key: Option<ResetKey>,
    /// Whether a client probes for a path MTU above QUIC's 1,200 bytes, and lets its server
    /// probe towards it. A device's sync says no (`fq_sync_server::client::SyncOptions`): on
    /// 2G the probes, about 1.4 KB each and four a side, hold a 64 kbit/s link for most of a
    /// second just as the session starts, and a larger packet saves a device almost nothing.
    pub probe_mtu: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: KEEP_ALIVE_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            max_streams: MAX_CONCURRENT_BIDI_STREAMS,
            reset_key: None,
            probe_mtu: true,
        }
    }
}

/// Application error codes sent when a connection is closed on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// Normal end of a connection.
    Done,
    /// The peer's certificate is revoked.
    Revoked,
    /// The peer's certificate does not name a valid fq identity.
    BadIdentity,
    /// The peer is not the kind of peer expected (e.g. a device where a server was dialled,
    /// or a server outside our scope).
    WrongPeer,
    /// The peer did not negotiate [`ALPN`].
    WrongProtocol,
    /// The server is shutting down; the client should come back later.
    ShuttingDown,
    /// The peer's certificate opened more connections than the server allows one certificate;
    /// the server closed its oldest one.
    TooManyConnections,
}

impl CloseCode {
    const ALL: [CloseCode; 7] = [
        CloseCode::Done,
        CloseCode::Revoked,
        CloseCode::BadIdentity,
        CloseCode::WrongPeer,
        CloseCode::WrongProtocol,
        CloseCode::ShuttingDown,
        CloseCode::TooManyConnections,
    ];

    /// The code on the wire. Trust failures use 0x1xx, limits 0x2xx; the sync protocol has its
    /// own range.
    pub fn code(self) -> VarInt {
        VarInt::from_u32(match self {
            Self::Done => 0,
            Self::ShuttingDown => 1,
            Self::Revoked => 0x101,
            Self::BadIdentity => 0x102,
            Self::WrongPeer => 0x103,
            Self::WrongProtocol => 0x104,
            Self::TooManyConnections => 0x201,
        })
    }

    /// The close code for a wire code, if it is one of ours.
    pub fn from_code(code: VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Revoked => "certificate revoked",
            Self::BadIdentity => "certificate names no valid fq identity",
            Self::WrongPeer => "unexpected peer",
            Self::WrongProtocol => "alpn fq-sync/1 required",
            Self::ShuttingDown => "server shutting down",
            Self::TooManyConnections => "too many connections for this certificate",
        }
    }

    /// Closes `connection` with this code and its reason.
    pub fn close(self, connection: &Connection) {
        connection.close(self.code(), self.reason().as_bytes());
    }
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A server endpoint needs a county or township certificate.
    #[error("role {0} cannot run a server (county or township required)")]
    NotAServer(GrantRole),
    /// A device-to-device endpoint needs a person's device certificate.
    #[error("role {0} is not a person's device")]
    NotADevice(GrantRole),
    /// The revocation handle trusts another CA than the bundle.
    #[error("revocation list ca (county {handle}) differs from the bundle ca (county {bundle})")]
    CaMismatch {
        /// County of the handle's CA.
        handle: AdminCode,
        /// County of the bundle's CA.
        bundle: AdminCode,
    },
    /// The keep-alive interval is not shorter than the idle timeout, or the timeout is too long.
    #[error("keep-alive {keep_alive:?} must be shorter than idle timeout {idle_timeout:?}")]
    Timeouts {
        /// Keep-alive interval asked for.
        keep_alive: Duration,
        /// Idle timeout asked for.
        idle_timeout: Duration,
    },
    /// rustls refused the certificate, key or protocol settings.
    #[error("tls configuration failed")]
    Tls(#[source] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier failed: {0}")]
    Verifier(String),
    /// The crypto provider lacks the cipher suite QUIC needs for its first packets.
    #[error("quic crypto configuration failed: {0}")]
    Quic(String),
    /// The bundle's revocation list is not valid for its CA.
    #[error("bundle revocation list is invalid")]
    Revocations(#[source] RevocationError),
    /// The UDP socket could not be bound.
    #[error("cannot bind udp {addr}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why an incoming connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The QUIC or TLS handshake failed (no client certificate, unknown CA, timeout...).
    #[error("handshake failed")]
    Handshake(#[source] ConnectionError),
    /// The handshake completed without a peer certificate (never expected with our verifier).
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The handshake did not select [`ALPN`].
    #[error("peer did not negotiate alpn fq-sync/1")]
    WrongProtocol,
    /// The certificate chains to the CA but names no valid fq identity.
    #[error("peer certificate names no valid identity")]
    Identity(#[source] IdentityError),
    /// The certificate's serial is in the revocation list in force.
    #[error("certificate {serial} of {id} is revoked")]
    Revoked {
        /// The peer's subject id.
        id: SubjectId,
        /// The revoked serial.
        serial: Serial,
    },
    /// The certificate's scope lies outside the server's county.
    #[error("peer scope {scope} is outside county {county}")]
    OutsideCounty {
        /// The peer's scope.
        scope: AdminCode,
        /// The server's county.
        county: AdminCode,
    },
    /// A device listening for another device was dialed by a peer it does not take.
    #[error("peer is not a device of this area")]
    Peer(#[source] PeerMismatch),
}

/// Why a device does not take another certificate as a device-to-device peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMismatch {
    /// The peer is a server, not a person's device.
    #[error("peer {id} has role {role}, not a person's device")]
    NotADevice {
        /// The peer's id.
        id: SubjectId,
        /// The peer's role.
        role: GrantRole,
    },
    /// The peer presents this device's own certificate.
    #[error("peer {id} is this device itself")]
    SameDevice {
        /// The id both certificates name.
        id: SubjectId,
    },
    /// Neither scope contains the other: a device of another village (or township).
    #[error("peer {id} covers {peer_scope}, which neither contains nor lies in our scope {own_scope}")]
    NoOverlap {
        /// The peer's id.
        id: SubjectId,
        /// The peer's scope.
        peer_scope: AdminCode,
        /// Our scope.
        own_scope: AdminCode,
    },
}

/// Checks that `peer` may be a device-to-device peer of `own`: another person's device whose
/// scope contains ours or lies in it (the grid worker and the mediator of one village; a
/// township officer and a device of one of its villages). The session checks the same from
/// the Hellos ([`fq_core::sync::session::SessionConfig::device_peer`]); this check refuses the
/// connection before either side reads a byte of the other's data.
pub fn check_device_peer(own: &PeerIdentity, peer: &PeerIdentity) -> Result<(), PeerMismatch> {
    if peer.role.is_server() {
        return Err(PeerMismatch::NotADevice { id: peer.id.clone(), role: peer.role });
    }
    if peer.id == own.id || peer.public_key == own.public_key {
        return Err(PeerMismatch::SameDevice { id: peer.id.clone() });
    }
    if !(peer.scope.contains(&own.scope) || own.scope.contains(&peer.scope)) {
        return Err(PeerMismatch::NoOverlap {
            id: peer.id.clone(),
            peer_scope: peer.scope.clone(),
            own_scope: own.scope.clone(),
        });
    }
    Ok(())
}

/// Why an outgoing connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection could not be started (bad address, endpoint closed).
    #[error("cannot start connection to {addr}")]
    Start {
        /// Server address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC or TLS handshake failed, or the server closed the connection.
    #[error("handshake with {addr} failed")]
    Handshake {
        /// Server address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: ConnectionError,
    },
    /// The server presented no certificate.
    #[error("server presented no certificate")]
    NoCertificate,
    /// The handshake did not select [`ALPN`].
    #[error("server did not negotiate alpn fq-sync/1")]
    WrongProtocol,
    /// The server certificate names no valid fq identity.
    #[error("server certificate names no valid identity")]
    Identity(#[source] IdentityError),
    /// The peer is not a county or township server.
    #[error("peer {id} has role {role}, not a county or township server")]
    NotAServer {
        /// The peer's id.
        id: SubjectId,
        /// The peer's role.
        role: GrantRole,
    },
    /// The server's scope does not contain ours: it is not our parent.
    #[error("server {id} serves {server_scope}, which does not contain our scope {own_scope}")]
    OutOfScope {
        /// The server's id.
        id: SubjectId,
        /// The server's scope.
        server_scope: AdminCode,
        /// Our scope.
        own_scope: AdminCode,
    },
    /// The peer's certificate is in our revocation list.
    #[error("peer certificate {serial} of {id} is revoked")]
    Revoked {
        /// The peer's id.
        id: SubjectId,
        /// The revoked serial.
        serial: Serial,
    },
    /// A device dialing another device found a peer it does not take.
    #[error("the peer is not a device of this area")]
    Peer(#[source] PeerMismatch),
}

/// A server's QUIC endpoint, or a device's listening for another device
/// ([`peer_server_endpoint`]). Yields [`Handshake`]s; a connection is reachable only through
/// [`Handshake::authenticate`], so no caller can skip the revocation check.
#[derive(Debug)]
pub struct ServerEndpoint {
    endpoint: quinn::Endpoint,
    revocations: RevocationHandle,
    /// A listening device: itself, to check each dialer against ([`check_device_peer`]).
    device: Option<PeerIdentity>,
}

/// Binds a server endpoint on `bind` with the server's `bundle` (role county or township).
/// Clients must present a certificate from the bundle's CA; `revocations` is consulted on every
/// accepted connection and may be updated while the server runs.
pub fn server_endpoint(
    bind: SocketAddr,
    bundle: &Bundle,
    revocations: RevocationHandle,
    net: &NetConfig,
) -> Result<ServerEndpoint, EndpointError> {
    if !bundle.role().is_server() {
        return Err(EndpointError::NotAServer(bundle.role()));
    }
    check_same_ca(&revocations, bundle)?;
    let provider = provider();
    let roots = Arc::new(root_store(bundle.ca())?);
    let verifier = client_verifier(roots, &provider)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(EndpointError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![bundle.certificate_der().clone()], bundle.private_key_der())
        .map_err(EndpointError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Stateful resumption (rustls allows 0-RTT only with it). Early data is safe here even
    // though it can be replayed: `Handshake::authenticate` returns the connection only after the
    // full handshake, so nothing reads 0-RTT stream data before the client's Finished proved it
    // live, and the identity check below runs first.
    tls.session_storage = ServerSessionMemoryCache::new(SERVER_SESSION_CACHE_ENTRIES);
    tls.max_early_data_size = u32::MAX;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config
        .transport_config(Arc::new(transport(net)?))
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    let mut endpoint_config = match &net.reset_key {
        Some(key) => {
            let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
            // quinn drops, without a reset, packets whose connection id it does not recognise as
            // its own, and by default it signs its ids with a key drawn per process: derive that
            // key from the reset key too, so a restarted server knows its predecessor's ids.
            let tag = ring::hmac::sign(&hmac, b"fq connection ids v1");
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&tag.as_ref()[..8]);
            let cid_key = u64::from_le_bytes(cid_key);
            let mut config = quinn::EndpointConfig::new(Arc::new(hmac));
            config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    endpoint_config.min_reset_interval(MIN_RESET_INTERVAL);
    let socket = server_socket(bind).map_err(|source| EndpointError::Bind { addr: bind, source })?;
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr: bind, source })?;
    Ok(ServerEndpoint { endpoint, revocations, device: None })
}

/// Binds a device's endpoint on `bind` that waits for another device of its area
/// (`fq serve`), presenting `bundle`'s certificate. Dialers must present a certificate from the
/// bundle's CA, not revoked in `revocations` (the newest list the device knows), and pass
/// [`check_device_peer`].
///
/// Unlike a server's endpoint it has no 0-RTT, no stateless-reset key kept across restarts and
/// default UDP buffers: one person's phone, one session at a time.
pub fn peer_server_endpoint(
    bind: SocketAddr,
    bundle: &Bundle,
    revocations: RevocationHandle,
    net: &NetConfig,
) -> Result<ServerEndpoint, EndpointError> {
    check_device_bundle(&revocations, bundle)?;
    let provider = provider();
    let roots = Arc::new(root_store(bundle.ca())?);
    let verifier = client_verifier(roots, &provider)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(EndpointError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![bundle.certificate_der().clone()], bundle.private_key_der())
        .map_err(EndpointError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport(net)?));
    let endpoint =
        quinn::Endpoint::server(config, bind).map_err(|source| EndpointError::Bind { addr: bind, source })?;
    Ok(ServerEndpoint { endpoint, revocations, device: Some(bundle.identity().clone()) })
}

/// rustls' WebPKI client-certificate verifier over `roots` (the county CA): a certificate is
/// required, and none means the handshake fails.
fn client_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, EndpointError> {
    WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
        .build()
        .map_err(|e| EndpointError::Verifier(e.to_string()))
}

/// A device-to-device endpoint is for a person's device, with the revocation list of its CA.
fn check_device_bundle(revocations: &RevocationHandle, bundle: &Bundle) -> Result<(), EndpointError> {
    if bundle.role().is_server() {
        return Err(EndpointError::NotADevice(bundle.role()));
    }
    check_same_ca(revocations, bundle)
}

fn check_same_ca(revocations: &RevocationHandle, bundle: &Bundle) -> Result<(), EndpointError> {
    if revocations.ca() != bundle.ca() {
        return Err(EndpointError::CaMismatch {
            handle: revocations.ca().county().clone(),
            bundle: bundle.county().clone(),
        });
    }
    Ok(())
}

/// A UDP socket bound on `bind` with [`SERVER_UDP_BUFFER_BYTES`] asked for each way.
fn server_socket(bind: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // Like std's bind: a v6 wildcard also takes v4 where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    // Asking for more than the kernel allows is not an error: it grants what it can.
    let _ = socket.set_recv_buffer_size(SERVER_UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SERVER_UDP_BUFFER_BYTES);
    socket.bind(&bind.into())?;
    // Linux reports twice the size granted (half is its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < SERVER_UDP_BUFFER_BYTES / 2 {
        tracing::warn!(
            granted,
            wanted = SERVER_UDP_BUFFER_BYTES,
            "small udp receive buffer: bursts of devices dialing at once will lose packets; raise net.core.rmem_max"
        );
    }
    Ok(socket.into())
}

impl ServerEndpoint {
    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next connection attempt, or `None` once the endpoint is closed. Authenticate each one
    /// in its own task: a handshake over 2G takes seconds.
    pub async fn accept(&self) -> Option<Handshake> {
        let incoming = self.endpoint.accept().await?;
        Some(Handshake { incoming, revocations: self.revocations.clone(), device: self.device.clone() })
    }

    /// The revocation list handle; install newer lists through it.
    pub fn revocations(&self) -> &RevocationHandle {
        &self.revocations
    }

    /// Stops accepting new connections; connections already accepted carry on. New handshakes
    /// go unanswered (the client's connect times out) until the endpoint is closed.
    pub fn stop_accepting(&self) {
        self.endpoint.set_server_config(None);
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.close_with(CloseCode::Done);
    }

    /// Closes every connection with `code` and stops accepting.
    pub fn close_with(&self, code: CloseCode) {
        self.endpoint.close(code.code(), code.reason().as_bytes());
    }

    /// Waits until every connection has finished closing.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// A connection attempt a server has received but not yet authenticated.
#[derive(Debug)]
pub struct Handshake {
    incoming: quinn::Incoming,
    revocations: RevocationHandle,
    device: Option<PeerIdentity>,
}

impl Handshake {
    /// The peer's address (not yet validated).
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Refuses the attempt without a handshake (a server that is shutting down).
    pub fn refuse(self) {
        self.incoming.refuse();
    }

    /// Completes the handshake, reads the client's identity and refuses the connection (closing
    /// it with a [`CloseCode`]) if its certificate is revoked or names no valid identity.
    pub async fn authenticate(self) -> Result<(Connection, PeerIdentity), AcceptError> {
        let connecting = self.incoming.accept().map_err(AcceptError::Handshake)?;
        // Wait for the full handshake, even when the client sent 0-RTT data: that data stays in
        // quinn's buffers until the checks below have passed.
        let connection = connecting.await.map_err(AcceptError::Handshake)?;
        match check_client(&connection, &self.revocations, self.device.as_ref()) {
            Ok(peer) => Ok((connection, peer)),
            Err((code, err)) => {
                code.close(&connection);
                Err(err)
            }
        }
    }
}

/// The checks every accepted connection goes through.
///
/// The revocation check is deliberately here, after the handshake, and not in the TLS client
/// certificate verifier: a resumed TLS 1.3 session (and its 0-RTT data) skips certificate
/// verification entirely, because the server restores the client's certificate from the
/// session ticket. A device revoked after its session was established could otherwise come back
/// with a ticket for as long as the server remembers the session. Checking the restored
/// certificate here covers full, resumed and 0-RTT handshakes alike, and reads the list in
/// force at this moment, so a list installed a second ago already applies.
///
/// A listening device (`device`) also takes only another device of its area.
fn check_client(
    connection: &Connection,
    revocations: &RevocationHandle,
    device: Option<&PeerIdentity>,
) -> Result<PeerIdentity, (CloseCode, AcceptError)> {
    if !negotiated_alpn(connection) {
        return Err((CloseCode::WrongProtocol, AcceptError::WrongProtocol));
    }
    let der = peer_certificate(connection).ok_or((CloseCode::BadIdentity, AcceptError::NoCertificate))?;
    let peer = PeerIdentity::from_der(der.as_ref()).map_err(|e| (CloseCode::BadIdentity, AcceptError::Identity(e)))?;
    if revocations.is_revoked(&peer.serial) {
        return Err((CloseCode::Revoked, AcceptError::Revoked { id: peer.id, serial: peer.serial }));
    }
    let county = revocations.ca().county();
    if !county.contains(&peer.scope) {
        return Err((CloseCode::WrongPeer, AcceptError::OutsideCounty { scope: peer.scope, county: county.clone() }));
    }
    if let Some(own) = device {
        check_device_peer(own, &peer).map_err(|e| (CloseCode::WrongPeer, AcceptError::Peer(e)))?;
    }
    Ok(peer)
}

/// A device's (or a township server's) QUIC endpoint for dialling its parent, or a device's
/// for dialling another device ([`peer_client_endpoint`]).
#[derive(Debug)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    own: PeerIdentity,
    revocations: RevocationHandle,
    /// Whom this endpoint dials.
    dials: Dials,
}

/// Whom a client endpoint dials.
#[derive(Debug, Clone)]
enum Dials {
    /// Its parent server. A device's certificate met instead is noted here by the verifier
    /// ([`ServerVerifier`]), so a failed handshake can say that the address is a device.
    Parent(Arc<Mutex<Option<PeerIdentity>>>),
    /// Another device of its area.
    Device,
}

/// Binds a client endpoint on `bind` (use port 0) presenting `bundle`'s certificate. Servers
/// are verified against the bundle's CA and checked against the bundle's revocation list.
/// TLS sessions are remembered in memory (rustls' default cache) so that reconnections resume.
pub fn client_endpoint(bind: SocketAddr, bundle: &Bundle, net: &NetConfig) -> Result<ClientEndpoint, EndpointError> {
    let revocations =
        RevocationHandle::new(bundle.ca().clone(), bundle.revocations().clone()).map_err(EndpointError::Revocations)?;
    let provider = provider();
    let roots = Arc::new(root_store(bundle.ca())?);
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
        .build()
        .map_err(|e| EndpointError::Verifier(e.to_string()))?;
    let as_device = client_verifier(roots, &provider)?;
    let seen = Arc::new(Mutex::new(None));
    let verifier = ServerVerifier { webpki, as_device, device_seen: Arc::clone(&seen) };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(EndpointError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![bundle.certificate_der().clone()], bundle.private_key_der())
        .map_err(EndpointError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    let endpoint = client_quinn(bind, tls, net)?;
    Ok(ClientEndpoint { endpoint, own: bundle.identity().clone(), revocations, dials: Dials::Parent(seen) })
}

/// Binds a device's client endpoint on `bind` (use port 0) for dialling another device of its
/// area that runs `fq serve`, presenting `bundle`'s certificate. The listener's certificate is
/// checked against the bundle's CA as a server checks a client's (a device certificate is for
/// client authentication only and names no DNS name), then against `revocations` (the newest
/// list the device knows) and [`check_device_peer`]. No 0-RTT: one dial per `fq sync --peer`.
pub fn peer_client_endpoint(
    bind: SocketAddr,
    bundle: &Bundle,
    revocations: RevocationHandle,
    net: &NetConfig,
) -> Result<ClientEndpoint, EndpointError> {
    check_device_bundle(&revocations, bundle)?;
    let provider = provider();
    let roots = Arc::new(root_store(bundle.ca())?);
    let as_device = client_verifier(roots, &provider)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(EndpointError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DeviceVerifier(as_device)))
        .with_client_auth_cert(vec![bundle.certificate_der().clone()], bundle.private_key_der())
        .map_err(EndpointError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let endpoint = client_quinn(bind, tls, net)?;
    Ok(ClientEndpoint { endpoint, own: bundle.identity().clone(), revocations, dials: Dials::Device })
}

fn client_quinn(
    bind: SocketAddr,
    tls: rustls::ClientConfig,
    net: &NetConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let quic = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = transport(net)?;
    let mut endpoint = if net.probe_mtu {
        quinn::Endpoint::client(bind).map_err(|source| EndpointError::Bind { addr: bind, source })?
    } else {
        transport.mtu_discovery_config(None);
        // The largest datagram we take, as a transport parameter: at QUIC's minimum, the
        // server has nothing to probe for either.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.max_udp_payload_size(MIN_UDP_PAYLOAD).map_err(|e| EndpointError::Quic(e.to_string()))?;
        let socket = std::net::UdpSocket::bind(bind).map_err(|source| EndpointError::Bind { addr: bind, source })?;
        quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))
            .map_err(|source| EndpointError::Bind { addr: bind, source })?
    };
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// How a client checks its parent's certificate: rustls' WebPKI server verifier for
/// [`SERVER_NAME`] with the county CA as the only root, unchanged. When that fails on a
/// certificate that is a person's device of the same CA (someone gave `fq sync --server` the
/// address of a device running `fq serve`), the device's identity is noted, so the error can
/// say what answered instead of a bare TLS failure. The verdict is never changed.
#[derive(Debug)]
struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    as_device: Arc<dyn ClientCertVerifier>,
    device_seen: Arc<Mutex<Option<PeerIdentity>>>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if verdict.is_err()
            && self.as_device.verify_client_cert(end_entity, intermediates, now).is_ok()
            && let Ok(device) = PeerIdentity::from_der(end_entity.as_ref())
            && !device.role.is_server()
            && let Ok(mut seen) = self.device_seen.lock()
        {
            *seen = Some(device);
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// How a dialing device checks the device it dials. A device certificate carries only the
/// client-authentication purpose and no DNS name, so rustls' server verifier refuses it; it is
/// checked instead exactly as a server checks a client's: chained to the county CA (the only
/// root), valid now, for client authentication. The server name is not checked: who the peer
/// is comes from its certificate's identity, checked after the handshake
/// ([`check_device_peer`], revocation). Handshake signatures are checked by the same verifier.
#[derive(Debug)]
struct DeviceVerifier(Arc<dyn ClientCertVerifier>);

impl ServerCertVerifier for DeviceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl ClientEndpoint {
    /// Connects to the peer at `addr` and checks it: for a parent (server name
    /// [`SERVER_NAME`]), a county or township server whose scope contains ours; for a device
    /// ([`peer_client_endpoint`]), another device of our area ([`check_device_peer`]). Either
    /// way its certificate must not be revoked. Resumes an earlier TLS session with that peer
    /// when one is remembered.
    pub async fn connect(&self, addr: SocketAddr) -> Result<(Connection, PeerIdentity), ConnectError> {
        if let Dials::Parent(seen) = &self.dials
            && let Ok(mut seen) = seen.lock()
        {
            *seen = None;
        }
        let connecting =
            self.endpoint.connect(addr, SERVER_NAME).map_err(|source| ConnectError::Start { addr, source })?;
        let connection = match connecting.await {
            Ok(connection) => connection,
            Err(source) => {
                // A device's certificate where a server was expected: say so.
                if let Dials::Parent(seen) = &self.dials
                    && let Some(device) = seen.lock().ok().and_then(|mut s| s.take())
                {
                    return Err(ConnectError::NotAServer { id: device.id, role: device.role });
                }
                return Err(ConnectError::Handshake { addr, source });
            }
        };
        match self.check_peer(&connection) {
            Ok(peer) => Ok((connection, peer)),
            Err((code, err)) => {
                code.close(&connection);
                Err(err)
            }
        }
    }

    fn check_peer(&self, connection: &Connection) -> Result<PeerIdentity, (CloseCode, ConnectError)> {
        if !negotiated_alpn(connection) {
            return Err((CloseCode::WrongProtocol, ConnectError::WrongProtocol));
        }
        let der = peer_certificate(connection).ok_or((CloseCode::BadIdentity, ConnectError::NoCertificate))?;
        let server =
            PeerIdentity::from_der(der.as_ref()).map_err(|e| (CloseCode::BadIdentity, ConnectError::Identity(e)))?;
        // Same reason as on the server: a resumed session restores the server's certificate
        // without verifying it again.
        if self.revocations.is_revoked(&server.serial) {
            return Err((CloseCode::Revoked, ConnectError::Revoked { id: server.id, serial: server.serial }));
        }
        if let Dials::Device = self.dials {
            check_device_peer(&self.own, &server).map_err(|e| (CloseCode::WrongPeer, ConnectError::Peer(e)))?;
            return Ok(server);
        }
        if !server.role.is_server() {
            return Err((CloseCode::WrongPeer, ConnectError::NotAServer { id: server.id, role: server.role }));
        }
        // The child always dials its parent, whose division contains the child's.
        if !server.scope.contains(&self.own.scope) {
            return Err((
                CloseCode::WrongPeer,
                ConnectError::OutOfScope {
                    id: server.id,
                    server_scope: server.scope,
                    own_scope: self.own.scope.clone(),
                },
            ));
        }
        Ok(server)
    }

    /// The revocation list used to check servers; install newer lists through it.
    pub fn revocations(&self) -> &RevocationHandle {
        &self.revocations
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The underlying quinn endpoint, for callers that need quinn directly (0-RTT, statistics).
    /// Connections made through it skip the server checks of [`ClientEndpoint::connect`].
    pub fn quinn_endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Closes every connection of this endpoint.
    pub fn close(&self) {
        self.endpoint.close(CloseCode::Done.code(), CloseCode::Done.reason().as_bytes());
    }

    /// Waits until every connection has finished closing (so the server has seen the close).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Why a connection ended, as a short stable phrase for the log (the human log translates it;
/// quinn's own texts vary between versions).
pub fn connection_end(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::ApplicationClosed(_) => "closed by the peer",
        ConnectionError::LocallyClosed => "closed by this side",
        ConnectionError::TimedOut => "the peer went silent (idle timeout)",
        ConnectionError::Reset => "reset by the peer",
        ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_) => "transport error",
        ConnectionError::VersionMismatch => "quic version mismatch",
        ConnectionError::CidsExhausted => "connection ids exhausted",
    }
}

/// True when the server refused the connection before any handshake (QUIC's
/// CONNECTION_REFUSED): it is at its connection limit, or stopping.
pub fn is_refused(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// Why reading a stream failed, as a short stable phrase for the log (see [`connection_end`]).
pub fn read_end(e: &ReadError) -> &'static str {
    match e {
        ReadError::ConnectionLost(c) => connection_end(c),
        ReadError::Reset(_) => "the peer reset the stream",
        ReadError::ClosedStream => "the stream was closed",
        ReadError::IllegalOrderedRead => "stream read out of order",
        ReadError::ZeroRttRejected => "early data rejected",
    }
}

/// The ring provider, the only one this workspace builds.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding only the county CA.
fn root_store(ca: &CaCertificate) -> Result<RootCertStore, EndpointError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(EndpointError::Tls)?;
    Ok(roots)
}

fn transport(net: &NetConfig) -> Result<quinn::TransportConfig, EndpointError> {
    let timeouts = || EndpointError::Timeouts { keep_alive: net.keep_alive_interval, idle_timeout: net.idle_timeout };
    if net.keep_alive_interval >= net.idle_timeout {
        return Err(timeouts());
    }
    let idle = quinn::IdleTimeout::try_from(net.idle_timeout).map_err(|_| timeouts())?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(net.keep_alive_interval))
        .max_idle_timeout(Some(idle))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .max_concurrent_bidi_streams(VarInt::from_u32(net.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        .initial_rtt(INITIAL_RTT)
        // The protocol does not use unreliable datagrams; refuse them.
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// The peer's leaf certificate. For rustls sessions quinn's `peer_identity` is a
/// `Vec<CertificateDer>`, leaf first; it is also set on resumed sessions (restored from the
/// ticket).
fn peer_certificate(connection: &Connection) -> Option<CertificateDer<'static>> {
    let identity: Box<dyn Any> = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

fn negotiated_alpn(connection: &Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == ALPN)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn close_code_round_trips_and_is_unique() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(VarInt::from_u32(0x1ff)), None);
    }

    #[test]
    fn transport_rejects_keep_alive_not_shorter_than_idle_timeout() {
        let mut net = NetConfig::default();
        assert!(transport(&net).is_ok());
        net.keep_alive_interval = net.idle_timeout;
        assert!(matches!(transport(&net), Err(EndpointError::Timeouts { .. })));
    }
}
