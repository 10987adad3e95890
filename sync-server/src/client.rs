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
//! the sync is not done). Either ends this sync with an error; what was acknowledged before is
//! kept and the next `fq sync` resumes after it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::{Ledger, LedgerError};
use fq_core::sync::session::{Credentials, Event, PolicyOutcome, Session, SessionConfig, SessionError, Side, Stats};
use fq_core::sync::wire::{ErrorCode, Refused};

use crate::ca::{Bundle, PeerIdentity};
use crate::net::{
    ClientEndpoint, CloseCode, ConnectError, Connection, ConnectionError, EndpointError, NetConfig, ReadError,
    RecvStream, SendStream, WriteError, client_endpoint,
};

/// How long dialing may take by default: a 2G handshake takes seconds, not this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sync may go without hearing from the server by default.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long hanging up may take: the server's last bytes and its view of our close.
const HANG_UP_TIMEOUT: Duration = Duration::from_secs(3);
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
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            net: NetConfig::default(),
            connect_timeout: CONNECT_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            session: SessionConfig::default(),
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
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
}

/// What a finished sync did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncReport {
    /// The server, as its certificate says.
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
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The local QUIC endpoint could not be set up.
    #[error("cannot set up the network endpoint")]
    Endpoint(#[source] EndpointError),
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

    /// True when a TLS or identity check refused the connection: a certificate from another
    /// CA on either side, a revoked certificate, a server that is not our parent.
    pub fn is_trust_failure(&self) -> bool {
        match self {
            Self::Connect { source, .. } => match source {
                ConnectError::Handshake { source, .. } => {
                    matches!(source, ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_))
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
    bundle: Bundle,
    options: SyncOptions,
    started: Instant,
}

/// Dials `server` with the device's `bundle`. Touches no local data.
pub async fn dial(bundle: &Bundle, server: SocketAddr, options: &SyncOptions) -> Result<Dialed, SyncError> {
    let started = Instant::now();
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = client_endpoint(bind, bundle, &options.net).map_err(SyncError::Endpoint)?;
    let connected = tokio::time::timeout(options.connect_timeout, endpoint.connect(server)).await;
    let (connection, peer) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(ConnectError::Handshake { addr, source })) => {
            // The server may close right after the handshake (a revoked certificate).
            let refused = closed_by_server(&source);
            return Err(
                refused.unwrap_or(SyncError::Connect { addr, source: ConnectError::Handshake { addr, source } })
            );
        }
        Ok(Err(source)) => return Err(SyncError::Connect { addr: server, source }),
        Err(_) => {
            endpoint.close();
            return Err(SyncError::Unreachable { addr: server, after: options.connect_timeout });
        }
    };
    Ok(Dialed { endpoint, connection, server: peer, bundle: bundle.clone(), options: options.clone(), started })
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

fn lost(e: &ConnectionError) -> SyncError {
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
    /// The server, as its certificate says.
    pub fn server(&self) -> &PeerIdentity {
        &self.server
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
        self,
        ledger: &mut Ledger,
        mut progress: impl FnMut(&Progress),
    ) -> (Result<SyncReport, SyncError>, HangUp) {
        let result = self.run(ledger, &mut progress).await;
        CloseCode::Done.close(&self.connection);
        (result, HangUp { endpoint: self.endpoint })
    }

    async fn run(&self, ledger: &mut Ledger, progress: &mut impl FnMut(&Progress)) -> Result<SyncReport, SyncError> {
        let clock = SystemClock;
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(|e| lost(&e))?;
        let creds = Credentials {
            ca: self.bundle.ca_verifying_key(),
            own: Some((self.bundle.grant().clone(), self.bundle.signing_key().clone())),
            peer_scope_limit: Some(self.server.scope.clone()),
        };
        let upstream = ledger.upstream().map_err(SyncError::Ledger)?;
        let acked = match upstream {
            Some(up) => ledger.peer(up).map_err(SyncError::Ledger)?.map_or(0, |p| p.acked_seq),
            None => 0,
        };
        let head = ledger.log_head().map_err(SyncError::Ledger)?;
        let to_send = u64::try_from(head.saturating_sub(acked)).unwrap_or(0);
        let mut session = Session::new(Side::Child, ledger, creds, self.options.session.clone(), upstream, clock.now())
            .map_err(SyncError::Session)?;
        let mut refused = Vec::new();
        let mut policy = None;
        let mut clock_offset = None;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut heard = Instant::now();
        loop {
            transmit(&mut session, &mut send).await?;
            for event in std::iter::from_fn(|| session.poll_event()) {
                match event {
                    Event::Acked { refused: r, .. } => refused.extend(r),
                    Event::Policy(outcome) => policy = Some(outcome),
                    Event::PeerClock { peer_minus_ours_ms } => clock_offset = Some(peer_minus_ours_ms),
                    _ => {}
                }
            }
            let s = session.stats();
            progress(&Progress {
                sent: s.sent,
                to_send: to_send.max(s.sent),
                received: s.received,
                bytes_out: s.bytes_out,
                bytes_in: s.bytes_in,
            });
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
            let stall = self.options.stall_timeout.saturating_sub(heard.elapsed());
            tokio::select! {
                r = recv.read(&mut buf) => match r {
                    Ok(Some(n)) => {
                        heard = Instant::now();
                        if let Err(e) = session.handle_input(ledger, &buf[..n], clock.now()) {
                            // Tell the server why before hanging up.
                            let _ = transmit(&mut session, &mut send).await;
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
                        let _ = transmit(&mut session, &mut send).await;
                        return Err(SyncError::Session(e));
                    }
                }
                () = tokio::time::sleep(stall) => return Err(SyncError::Stalled(self.options.stall_timeout)),
            }
        }
        // Done: finish our side and read the server's to its end (it finishes once it has
        // retired the session), so no stream is left half open.
        let _ = send.finish();
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, drain(&mut recv)).await;
        Ok(SyncReport {
            server: self.server.clone(),
            stats: session.stats().clone(),
            refused,
            policy,
            peer_minus_ours_ms: clock_offset,
            elapsed: self.started.elapsed(),
        })
    }
}

/// A closed connection whose close the server has yet to see.
#[derive(Debug)]
pub struct HangUp {
    endpoint: ClientEndpoint,
}

impl HangUp {
    /// Waits (at most a few seconds) until the close reached the server, so that it does not
    /// keep the connection until an idle timeout.
    pub async fn wait(self) {
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, self.endpoint.wait_idle()).await;
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
