//! A device's sync with its server: dial, run one session until both sides are caught up, hang up.
//!
//! This is what `fq sync` runs (on a current-thread runtime): the device owns its ledger, so
//! the session is driven inline, with no actor. Dialing comes first and touches nothing local:
//! [`dial`] returns a [`Dialed`] link, and only [`Dialed::sync`] reads and writes the ledger. A
//! server that cannot be reached within [`SyncOptions::connect_timeout`] leaves the device's data
//! exactly as it was.
//!
//! Watchdogs: the session's ack timeout (no ack for a push within 20 s ends it) and a stall
//! timeout ([`SyncOptions::stall_timeout`]: nothing heard from the server for that long while
//! the sync is not done). Either ends this session; what was acknowledged before is kept.
//!
//! Redial: a session that ends because the link did (the connection was reset or lost, the
//! server restarted or is shutting down, a watchdog fired) is followed by one more dial of the
//! same server ([`SyncOptions::redials`]), and a new session resumes from the positions saved
//! at every ack: acknowledged changes are never sent again as new, and what was in flight is
//! sent again and counted as duplicates by the server. A restarted server resets its
//! predecessor's connections at once (its reset key is kept on disk), so a restart costs a
//! syncing device the time to dial again, not a watchdog. If the second dial fails too, the
//! sync ends with the first error, and the next `fq sync` resumes where it stopped.
//!
//! Device to device (`fq sync --peer`, ADR 43): [`dial_peer`] dials another device of this
//! device's area running `fq serve` ([`crate::peer`]), and the same [`Dialed::sync`] runs the
//! session with [`SessionConfig::device_peer`]: each side sends only what lies in both scopes.
//! The position reached with that device is found again by its certificate's key (the peer
//! row its own grant names), so the next session with it resumes instead of starting over.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fq_core::audit::{CompareError, CompareReport, Comparison};
use fq_core::case::ReplicaId;
use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::{Ledger, LedgerError, Tier};
use fq_core::sync::session::{Credentials, Event, PolicyOutcome, Session, SessionConfig, SessionError, Side, Stats};
use fq_core::sync::wire::{ErrorCode, Refused};

use crate::ca::{Bundle, CaCertificate, PeerIdentity, RevocationHandle, RevocationList};
use crate::net::{
    ClientEndpoint, CloseCode, ConnectError, Connection, ConnectionError, EndpointError, NetConfig, ReadError,
    RecvStream, SendStream, WriteError, client_endpoint, is_refused, peer_client_endpoint,
};

/// How long dialing may take by default: a 2G handshake takes seconds, not this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sync may go without hearing from the server by default.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a sync dials again by default after its link failed during a session.
pub const REDIALS: u32 = 1;
/// How often a syncing device pings the server when it has nothing else to send. A device that
/// waits for an ack sends nothing, and a restarted server can reset the old connection only
/// when a packet of it arrives: at the default 15 s keep-alive a restart cost the device 15 s.
/// A ping and its ack are about 120 bytes: 60 B/s both ways, during a sync only.
pub const SYNC_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How often [`confirmed`] looks whether the server confirmed the handshake.
const CONFIRMATION_POLL: Duration = Duration::from_millis(10);
/// How long hanging up may wait for the server's last bytes (the end of its stream), or for it to
/// acknowledge the end of ours.
pub(crate) const HANG_UP_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds on how long a closed connection lingers so that its close goes out: about a round
/// trip, at most 300 ms. Waiting for quinn's whole draining period (three probe timeouts,
/// seconds on 2G) would only keep the user waiting: the sync is over, every change of it was
/// acknowledged after its commit, and a server that never hears the close (10 % of closes on
/// a link losing 10 %) drops the connection at its idle timeout (ADR 44).
const LINGER_MIN: Duration = Duration::from_millis(50);
/// See [`LINGER_MIN`].
const LINGER_MAX: Duration = Duration::from_millis(300);
/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How a sync runs. Start from [`SyncOptions::default`] and change what you need
/// (`SyncOptions { connect_timeout, ..SyncOptions::default() }`).
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// QUIC transport settings.
    pub net: NetConfig,
    /// Bound on dialing the server (handshake included).
    pub connect_timeout: Duration,
    /// Bound on silence from the server while the sync is not done.
    pub stall_timeout: Duration,
    /// Session tunables.
    pub session: SessionConfig,
    /// Dials after a session whose link failed ([`SyncError::is_redialable`]); 0 never dials
    /// again.
    pub redials: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            net: NetConfig { keep_alive_interval: SYNC_KEEP_ALIVE, probe_mtu: false, ..NetConfig::default() },
            connect_timeout: CONNECT_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            session: SessionConfig::default(),
            redials: REDIALS,
        }
    }
}

/// Where a sync stands, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Changes sent and acknowledged.
    pub sent: u64,
    /// About how many changes there were to send when the sync started (log rows after the
    /// server's acknowledged position; some may belong to other scopes or be duplicates).
    pub to_send: u64,
    /// Changes received and applied.
    pub received: u64,
    /// About how many changes the server said this sync would bring, those received before a
    /// redial included (0: it did not say; a server older than protocol version 3).
    pub to_receive: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// How many times the link failed and the server was dialed again so far.
    pub reconnects: u32,
}

/// What a finished sync did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncReport {
    /// The server (or the device, for [`dial_peer`]), as its certificate says.
    pub server: PeerIdentity,
    /// Totals.
    pub stats: Stats,
    /// Our changes the server refused, with its reasons.
    pub refused: Vec<Refused>,
    /// What became of a county policy the server sent, if it sent one.
    pub policy: Option<PolicyOutcome>,
    /// The server's clock minus ours, as the sync measured it (transit
    /// included): a device off by more than ten minutes corrects its time.
    pub peer_minus_ours_ms: Option<i64>,
    /// How long the sync took, dialing included.
    pub elapsed: Duration,
    /// How many times the link failed during the sync and the server was dialed again.
    pub redials: u32,
    /// The newest revocation list the server sent that the county CA signed, if it sent one:
    /// the device keeps it if it is newer than what it knows, to check other devices with.
    pub revocations: Option<RevocationList>,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The local QUIC endpoint could not be set up.
    #[error("cannot set up the network endpoint")]
    Endpoint(#[source] EndpointError),
    /// The server refused the connection before its handshake: it is full (its connection
    /// limit) or stopping.
    #[error("the server at {addr} refused the connection (busy or stopping)")]
    Busy {
        /// The server.
        addr: SocketAddr,
    },
    /// Nothing answered within the connect timeout.
    #[error("no answer from {addr} within {after:?}")]
    Unreachable {
        /// The server.
        addr: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
    /// The handshake failed or the server did not pass our checks (wrong CA, not our parent,
    /// revoked server certificate).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The server closed the connection on purpose (our certificate is revoked, we are not its
    /// child, it is shutting down).
    #[error("the server closed the connection: {reason}")]
    Refused {
        /// The server's close code, if it is one of ours.
        code: Option<CloseCode>,
        /// The server's words.
        reason: String,
    },
    /// The server ended the sync session with an error frame.
    #[error("the server ended the session ({code:?}): {text}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        text: String,
    },
    /// The connection or the stream failed (a lost link).
    #[error("the connection was lost: {0}")]
    Lost(String),
    /// Nothing heard from the server for too long.
    #[error("the server went silent for {0:?}")]
    Stalled(Duration),
    /// The session failed on our side (the server sent something we refuse, or a push went
    /// unacknowledged for too long).
    #[error("sync session failed")]
    Session(#[source] SessionError),
    /// The local ledger failed.
    #[error("the local ledger failed")]
    Ledger(#[source] LedgerError),
    /// A comparison (`fq audit compare`) failed: the server is older, not our
    /// parent, or sent something we refuse.
    #[error("the comparison failed")]
    Compare(#[source] CompareError),
}

impl SyncError {
    /// True when the server could not be reached at all (nothing local was read or written).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Connect { source: ConnectError::Handshake { source, .. }, .. } => {
                matches!(source, ConnectionError::TimedOut | ConnectionError::Reset)
            }
            _ => false,
        }
    }

    /// True when the link failed during a session in a way a new connection may cure: it was
    /// lost or reset (a restarted server resets its predecessor's connections), the server is
    /// shutting down (it may be restarting), or a watchdog gave up on a silent server.
    pub fn is_redialable(&self) -> bool {
        matches!(
            self,
            Self::Lost(_)
                | Self::Stalled(_)
                | Self::Refused { code: Some(CloseCode::ShuttingDown), .. }
                | Self::Server { code: ErrorCode::ShuttingDown, .. }
                | Self::Session(SessionError::TimedOut { .. })
        )
    }

    /// True when a TLS or identity check refused the connection: a certificate from another
    /// CA on either side, a revoked certificate, a server that is not our parent (or, device
    /// to device, a peer that is not a device of our area).
    pub fn is_trust_failure(&self) -> bool {
        match self {
            Self::Connect { source, .. } => match source {
                ConnectError::Handshake { source, .. } => {
                    !is_refused(source)
                        && matches!(source, ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_))
                }
                ConnectError::Start { .. } => false,
                _ => true,
            },
            Self::Refused { code, .. } => {
                matches!(code, Some(CloseCode::Revoked | CloseCode::BadIdentity | CloseCode::WrongPeer))
            }
            _ => false,
        }
    }
}

/// A connection to the server, before anything local was touched.
#[derive(Debug)]
pub struct Dialed {
    endpoint: ClientEndpoint,
    connection: Connection,
    server: PeerIdentity,
    addr: SocketAddr,
    bundle: Bundle,
    options: SyncOptions,
    started: Instant,
    /// The peer is another device (device to device), not our parent server.
    device_peer: bool,
}

/// Dials `server` with the device's `bundle`. Touches no local data.
pub async fn dial(bundle: &Bundle, server: SocketAddr, options: &SyncOptions) -> Result<Dialed, SyncError> {
    let started = Instant::now();
    let endpoint = client_endpoint(any_port(server), bundle, &options.net).map_err(SyncError::Endpoint)?;
    dial_on(endpoint, bundle, server, options, started, false).await
}

/// Dials another device of this device's area, listening at `peer` (`fq serve`), with the
/// device's `bundle`; its certificate is checked against `revocations` (the newest list the
/// device knows). Touches no local data. [`Dialed::sync`] then runs a device-to-device session.
pub async fn dial_peer(
    bundle: &Bundle,
    revocations: RevocationHandle,
    peer: SocketAddr,
    options: &SyncOptions,
) -> Result<Dialed, SyncError> {
    let started = Instant::now();
    let endpoint =
        peer_client_endpoint(any_port(peer), bundle, revocations, &options.net).map_err(SyncError::Endpoint)?;
    dial_on(endpoint, bundle, peer, options, started, true).await
}

/// The wildcard address of `peer`'s family, any port.
fn any_port(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

async fn dial_on(
    endpoint: ClientEndpoint,
    bundle: &Bundle,
    server: SocketAddr,
    options: &SyncOptions,
    started: Instant,
    device_peer: bool,
) -> Result<Dialed, SyncError> {
    let (connection, peer) = match connect(&endpoint, server, options.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            endpoint.close();
            return Err(e);
        }
    };
    Ok(Dialed {
        endpoint,
        connection,
        server: peer,
        addr: server,
        bundle: bundle.clone(),
        options: options.clone(),
        started,
        device_peer,
    })
}

/// One dial of `server` on `endpoint`, bounded by `limit`.
async fn connect(
    endpoint: &ClientEndpoint,
    server: SocketAddr,
    limit: Duration,
) -> Result<(Connection, PeerIdentity), SyncError> {
    match tokio::time::timeout(limit, endpoint.connect(server)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(ConnectError::Handshake { addr, source })) => {
            if is_refused(&source) {
                return Err(SyncError::Busy { addr });
            }
            // The server may close right after the handshake (a revoked certificate).
            let refused = closed_by_server(&source);
            Err(refused.unwrap_or(SyncError::Connect { addr, source: ConnectError::Handshake { addr, source } }))
        }
        Ok(Err(source)) => Err(SyncError::Connect { addr: server, source }),
        Err(_) => Err(SyncError::Unreachable { addr: server, after: limit }),
    }
}

/// [`dial`], then [`Dialed::sync`].
pub async fn sync_once(
    ledger: &mut Ledger,
    bundle: &Bundle,
    server: SocketAddr,
    options: &SyncOptions,
    progress: impl FnMut(&Progress),
) -> Result<SyncReport, SyncError> {
    dial(bundle, server, options).await?.sync(ledger, progress).await
}

/// The server's close, as an error, if it closed the connection on purpose.
fn closed_by_server(e: &ConnectionError) -> Option<SyncError> {
    match e {
        ConnectionError::ApplicationClosed(close) => Some(SyncError::Refused {
            code: CloseCode::from_code(close.error_code),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        }),
        _ => None,
    }
}

pub(crate) fn lost(e: &ConnectionError) -> SyncError {
    closed_by_server(e).unwrap_or_else(|| SyncError::Lost(e.to_string()))
}

fn read_error(e: ReadError) -> SyncError {
    match e {
        ReadError::ConnectionLost(c) => lost(&c),
        other => SyncError::Lost(other.to_string()),
    }
}

fn write_error(e: WriteError) -> SyncError {
    match e {
        WriteError::ConnectionLost(c) => lost(&c),
        other => SyncError::Lost(other.to_string()),
    }
}

impl Dialed {
    /// The server (or the device), as its certificate says.
    pub fn server(&self) -> &PeerIdentity {
        &self.server
    }

    /// Whether the peer is another device ([`dial_peer`]).
    pub fn is_device_peer(&self) -> bool {
        self.device_peer
    }

    /// Runs one session with the server until both sides are caught up, then hangs up.
    pub async fn sync(self, ledger: &mut Ledger, progress: impl FnMut(&Progress)) -> Result<SyncReport, SyncError> {
        let (result, hang_up) = self.sync_then_hang_up(ledger, progress).await;
        hang_up.wait().await;
        result
    }

    /// [`Dialed::sync`], returning as soon as the session is over, with the hang-up still to
    /// wait for. The load generator uses it: a device's hang-up costs the server nothing, so
    /// the next device need not wait for it.
    pub async fn sync_then_hang_up(
        mut self,
        ledger: &mut Ledger,
        mut progress: impl FnMut(&Progress),
    ) -> (Result<SyncReport, SyncError>, HangUp) {
        let mut so_far = Stats::default();
        let mut told = Told::default();
        let mut redials = 0;
        let lists = Arc::new(Mutex::new(None));
        let mut taker = take_revocations(self.connection.clone(), self.bundle.ca().clone(), Arc::clone(&lists));
        let result = loop {
            let (result, stats) = self.attempt(ledger, &mut progress, &so_far, redials, &mut told).await;
            add(&mut so_far, &stats);
            match result {
                Ok(()) => break Ok(()),
                Err(e) if e.is_redialable() && redials < self.options.redials => {
                    CloseCode::Done.close(&self.connection);
                    redials += 1;
                    match connect(&self.endpoint, self.addr, self.options.connect_timeout).await {
                        // The same CA vouches for it, but a different server at that address
                        // (another township) must not get this device's changes.
                        Ok((connection, server)) if server.id == self.server.id => {
                            taker.abort();
                            taker = take_revocations(connection.clone(), self.bundle.ca().clone(), Arc::clone(&lists));
                            self.connection = connection;
                        }
                        Ok((connection, _)) => {
                            CloseCode::Done.close(&connection);
                            break Err(e);
                        }
                        Err(_) => break Err(e),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        taker.abort();
        let revocations = lists.lock().ok().and_then(|mut newest| newest.take());
        let linger = self.connection.rtt().clamp(LINGER_MIN, LINGER_MAX);
        CloseCode::Done.close(&self.connection);
        let report = result.map(|()| SyncReport {
            server: self.server.clone(),
            stats: so_far,
            refused: told.refused,
            policy: told.policy,
            peer_minus_ours_ms: told.peer_minus_ours_ms,
            elapsed: self.started.elapsed(),
            redials,
            revocations,
        });
        (report, HangUp { endpoint: self.endpoint, linger })
    }

    /// One session on the current connection. Returns its outcome and what it did, also when it
    /// failed (what was acknowledged before the failure counts).
    async fn attempt(
        &self,
        ledger: &mut Ledger,
        progress: &mut impl FnMut(&Progress),
        before: &Stats,
        reconnects: u32,
        told: &mut Told,
    ) -> (Result<(), SyncError>, Stats) {
        let clock = SystemClock;
        let (mut send, mut recv) = match self.connection.open_bi().await {
            Ok(stream) => stream,
            Err(e) => return (Err(lost(&e)), Stats::default()),
        };
        let creds = Credentials {
            ca: self.bundle.ca_verifying_key(),
            own: Some((self.bundle.grant().clone(), self.bundle.signing_key().clone())),
            peer_scope_limit: Some(self.server.scope.clone()),
        };
        // The peer this ledger last synced with on this link: its position goes into our Hello.
        let expected = match self.expected_peer(ledger) {
            Ok(up) => up,
            Err(e) => return (Err(SyncError::Ledger(e)), Stats::default()),
        };
        let to_send = match to_send(ledger, expected) {
            Ok(n) => n,
            Err(e) => return (Err(e), Stats::default()),
        };
        let config = SessionConfig { device_peer: self.device_peer, ..self.options.session.clone() };
        let mut session = match Session::new(Side::Child, ledger, creds, config, expected, clock.now()) {
            Ok(session) => session,
            Err(e) => return (Err(SyncError::Session(e)), Stats::default()),
        };
        let mut show = |s: &Stats| {
            progress(&Progress {
                sent: before.sent + s.sent,
                to_send: (before.sent + to_send).max(before.sent + s.sent),
                received: before.received + s.received,
                to_receive: if s.to_receive > 0 { before.received + s.to_receive } else { 0 },
                bytes_out: before.bytes_out + s.bytes_out,
                bytes_in: before.bytes_in + s.bytes_in,
                reconnects,
            });
        };
        let driver = Driver { stall_timeout: self.options.stall_timeout, finish_early: true };
        let result = driver.drive(&mut session, ledger, &mut send, &mut recv, &mut show, told).await;
        (result, session.stats().clone())
    }

    /// Our parent server as this ledger last synced with it, or, device to device, the replica
    /// of the device whose certificate key we dialed.
    fn expected_peer(&self, ledger: &Ledger) -> Result<Option<ReplicaId>, LedgerError> {
        if self.device_peer { known_device(ledger, &self.server.public_key.to_bytes()) } else { ledger.upstream() }
    }
}

/// The replica of the device whose own grant has `key`, as this ledger last synced with it: a
/// session records the key of the grant its peer sends first (the peer's own), so the device
/// found behind a certificate is found again, and the next session with it resumes from where
/// the last one reached. A device set up again under the same certificate (a new replica)
/// answers a stale position, and the session recovers with a digest.
fn known_device(ledger: &Ledger, key: &[u8; 32]) -> Result<Option<ReplicaId>, LedgerError> {
    Ok(ledger
        .peers()?
        .into_iter()
        .filter(|p| p.tier == Tier::Device.code() && p.signer.as_ref() == Some(key))
        .max_by_key(|p| p.last_sync)
        .map(|p| p.replica))
}

/// Runs a session on one stream: the dialing side's loop, and a listening device's
/// (`crate::peer`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Driver {
    /// Bound on silence from the peer while the session is not caught up.
    pub(crate) stall_timeout: Duration,
    /// The dialer's side: finish our stream as soon as the session has nothing more to send
    /// ([`Session::is_finished_sending`]), and once caught up wait only for the peer to
    /// acknowledge that end, not for the peer's own end of stream (a round trip less on 2G).
    pub(crate) finish_early: bool,
}

impl Driver {
    /// Runs `session` until both sides are caught up, then finishes our side of the stream.
    pub(crate) async fn drive(
        &self,
        session: &mut Session,
        ledger: &mut Ledger,
        send: &mut SendStream,
        recv: &mut RecvStream,
        show: &mut impl FnMut(&Stats),
        told: &mut Told,
    ) -> Result<(), SyncError> {
        let clock = SystemClock;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut heard = Instant::now();
        let mut finished = false;
        loop {
            if finished {
                // Only an ack for a push the peer made after its Done can come now: the peer
                // sends that push again next time.
                let late = std::iter::from_fn(|| session.poll_transmit()).count();
                if late > 0 {
                    tracing::debug!(frames = late, "frames after our stream ended, dropped");
                }
            } else {
                transmit(session, send).await?;
                if self.finish_early && session.is_finished_sending() {
                    finished = true;
                    let _ = send.finish();
                }
            }
            for event in std::iter::from_fn(|| session.poll_event()) {
                told.take(event);
            }
            show(session.stats());
            if session.is_caught_up() {
                break;
            }
            if session.is_closed() {
                let reason = session.close_reason().unwrap_or("the session ended").to_owned();
                return Err(SyncError::Lost(reason));
            }
            let watchdog = session.poll_timeout().map(|at| {
                let ms = at.0.saturating_sub(clock.now().0).max(0);
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            });
            let stall = self.stall_timeout.saturating_sub(heard.elapsed());
            tokio::select! {
                r = recv.read(&mut buf) => match r {
                    Ok(Some(n)) => {
                        heard = Instant::now();
                        if let Err(e) = session.handle_input(ledger, &buf[..n], clock.now()) {
                            // Tell the server why before hanging up.
                            let _ = transmit(session, send).await;
                            return Err(match e {
                                SessionError::Peer { code, text } => SyncError::Server { code, text },
                                SessionError::Ledger(l) => SyncError::Ledger(l),
                                other => SyncError::Session(other),
                            });
                        }
                    }
                    Ok(None) => return Err(SyncError::Lost("the server ended the stream".into())),
                    Err(e) => return Err(read_error(e)),
                },
                () = tokio::time::sleep(watchdog.unwrap_or(stall)), if watchdog.is_some() => {
                    if let Err(e) = session.handle_timeout(clock.now()) {
                        let _ = transmit(session, send).await;
                        return Err(SyncError::Session(e));
                    }
                }
                () = tokio::time::sleep(stall) => return Err(SyncError::Stalled(self.stall_timeout)),
            }
        }
        if finished {
            // Our Done went before the end of our stream: once the peer acknowledged that end
            // it holds the Done, and retires the session on reading it.
            let _ = tokio::time::timeout(HANG_UP_TIMEOUT, send.stopped()).await;
            return Ok(());
        }
        // Done: finish our side and read the server's to its end (it finishes once it has
        // retired the session), so no stream is left half open.
        let _ = send.finish();
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, drain(recv)).await;
        Ok(())
    }
}

/// Takes the revocation lists the server sends on `conn` (each on a stream of its own) while
/// the sync runs, keeping in `newest` the newest one `ca` signed. A list that does not verify
/// is dropped: the server relays the county's list, and a device keeps only the county's word.
fn take_revocations(
    conn: Connection,
    ca: CaCertificate,
    newest: Arc<Mutex<Option<RevocationList>>>,
) -> tokio::task::JoinHandle<()> {
    // A device's endpoint takes no unidirectional streams by default; its server may open
    // these (the list, and a newer one if the county revokes during the sync).
    let streams = crate::upstream::REVOCATION_STREAMS;
    conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(streams));
    let nudge = conn.clone();
    tokio::spawn(async move {
        // Once the server has confirmed the handshake, one stream more: the MAX_STREAMS frame
        // is a packet the server acknowledges. If our first packets after the handshake (the
        // session's Hello) reached the server before it had our Finished, it dropped them, and
        // nothing else we send would ask for an ack: quinn would send them again only at its
        // probe timeout, 2-4 s later on 2G. The ack of this packet makes it see them lost and
        // send them again a round trip after the confirmation (ADR 46).
        confirmed(&nudge).await;
        nudge.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(streams + 1));
    });
    tokio::spawn(async move {
        while let Ok(recv) = conn.accept_uni().await {
            let Ok(list) = crate::upstream::read_list(recv).await else { continue };
            if list.verify(&ca).is_err() {
                continue;
            }
            if let Ok(mut kept) = newest.lock()
                && kept.as_ref().is_none_or(|k| list.version() > k.version())
            {
                *kept = Some(list);
            }
        }
    })
}

/// Returns once the server has confirmed the handshake on `conn` (its HANDSHAKE_DONE frame came;
/// quinn counts it but does not signal it), or the connection has closed.
async fn confirmed(conn: &Connection) {
    while conn.stats().frame_rx.handshake_done == 0 && conn.close_reason().is_none() {
        tokio::time::sleep(CONFIRMATION_POLL).await;
    }
}

/// What the server told us during a sync, over every session of it (a redial starts another).
#[derive(Debug, Default)]
pub(crate) struct Told {
    /// Our changes the server refused.
    pub(crate) refused: Vec<Refused>,
    /// The county policy the server sent, if any.
    pub(crate) policy: Option<PolicyOutcome>,
    /// The server's clock minus ours, as last measured.
    pub(crate) peer_minus_ours_ms: Option<i64>,
}

impl Told {
    fn take(&mut self, event: Event) {
        match event {
            Event::Acked { refused, .. } => self.refused.extend(refused),
            // A session after a redial finds the policy installed by the one before "not
            // newer": what the sync did is still the installation.
            Event::Policy(outcome)
                if !(matches!(outcome, PolicyOutcome::Stale { .. })
                    && matches!(self.policy, Some(PolicyOutcome::Installed { .. }))) =>
            {
                self.policy = Some(outcome);
            }
            Event::PeerClock { peer_minus_ours_ms } => self.peer_minus_ours_ms = Some(peer_minus_ours_ms),
            _ => {}
        }
    }
}

/// About how many changes there are to send: log rows after the position `peer` acknowledged.
fn to_send(ledger: &Ledger, peer: Option<ReplicaId>) -> Result<u64, SyncError> {
    let acked = match peer {
        Some(up) => ledger.peer(up).map_err(SyncError::Ledger)?.map_or(0, |p| p.acked_seq),
        None => 0,
    };
    let head = ledger.log_head().map_err(SyncError::Ledger)?;
    Ok(u64::try_from(head.saturating_sub(acked)).unwrap_or(0))
}

/// Adds one session's totals to the sync's.
fn add(total: &mut Stats, s: &Stats) {
    total.sent += s.sent;
    total.received += s.received;
    total.duplicates += s.duplicates;
    total.refused_by_peer += s.refused_by_peer;
    total.refused_here += s.refused_here;
    total.bytes_out += s.bytes_out;
    total.bytes_in += s.bytes_in;
    total.whole_cases += s.whole_cases;
}

impl Dialed {
    /// Compares the ledger with the server's data in its scope, read-only on
    /// both sides (`fq audit compare`, ADR 22), then hangs up.
    pub async fn compare(self, ledger: &mut Ledger) -> Result<CompareReport, SyncError> {
        let result = self.run_compare(ledger).await;
        let linger = self.connection.rtt().clamp(LINGER_MIN, LINGER_MAX);
        CloseCode::Done.close(&self.connection);
        HangUp { endpoint: self.endpoint, linger }.wait().await;
        result
    }

    async fn run_compare(&self, ledger: &mut Ledger) -> Result<CompareReport, SyncError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(|e| lost(&e))?;
        let mut comparison = Comparison::new(ledger, Some(self.server.scope.clone())).map_err(SyncError::Compare)?;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            while let Some(frame) = comparison.poll_transmit() {
                send.write_all(&frame).await.map_err(write_error)?;
            }
            if comparison.is_done() {
                break;
            }
            let read = tokio::time::timeout(self.options.stall_timeout, recv.read(&mut buf)).await;
            match read {
                Err(_) => return Err(SyncError::Stalled(self.options.stall_timeout)),
                Ok(Ok(Some(n))) => comparison.handle_input(ledger, &buf[..n]).map_err(SyncError::Compare)?,
                Ok(Ok(None)) => return Err(SyncError::Lost("the server ended the stream".into())),
                Ok(Err(e)) => return Err(read_error(e)),
            }
        }
        let _ = send.finish();
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, drain(&mut recv)).await;
        comparison.report().cloned().ok_or(SyncError::Lost("the comparison ended without a result".into()))
    }
}

/// A closed connection whose close the server has yet to see.
#[derive(Debug)]
pub struct HangUp {
    endpoint: ClientEndpoint,
    /// How long to let the close go out: about a round trip, at most 300 ms.
    linger: Duration,
}

impl HangUp {
    /// Lets the close go out to the server (about a round trip, at most 300 ms), so that it
    /// does not keep the connection until its idle timeout.
    pub async fn wait(self) {
        let _ = tokio::time::timeout(self.linger, self.endpoint.wait_idle()).await;
    }
}

async fn transmit(session: &mut Session, send: &mut SendStream) -> Result<(), SyncError> {
    while let Some(frame) = session.poll_transmit() {
        send.write_all(&frame).await.map_err(write_error)?;
    }
    Ok(())
}

/// Reads and drops whatever the server still sends, until its side ends.
async fn drain(recv: &mut RecvStream) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    while let Ok(Some(_)) = recv.read(&mut buf).await {}
}
