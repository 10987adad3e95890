//! A device waiting for another device of its area on the local network (`fq serve`, ADR 43).
//!
//! Two devices whose scopes nest (the grid worker and the mediator of one village) exchange
//! cases with no server: one listens ([`listen`], then [`serve_peers`]), the other dials it
//! with [`crate::client::dial_peer`]. Both present their own device certificates; each checks
//! the other's against the county CA, the revocation list it knows and
//! [`crate::net::check_device_peer`] before a byte of data is read.
//!
//! The listener takes one session at a time, on the caller's task, with a ledger the caller
//! opens for that session and that is closed after it: one writer at a time, and nothing of the
//! ledger held between exchanges. A device that dials while another's session runs
//! waits in QUIC's queue until this one ends (its dial bound is 15 s; a village's exchange
//! takes a second or two). Each session is the accepting side ([`Side::Parent`]) of a
//! device-to-device session ([`SessionConfig::device_peer`]): it sends the dialer only what
//! lies in both scopes, and takes from it only changes its authors were allowed to make. Its
//! Hello carries the position this ledger holds of the dialer's log, found by the replica id
//! the dialer's Hello names, so a second exchange with the same device resumes.
//!
//! The loop itself is the client's ([`crate::client`]'s `Driver`): the same frames, watchdogs
//! and end of session on both sides.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::Ledger;
use fq_core::sync::session::{Credentials, Session, SessionConfig, Side, Stats};
use fq_core::sync::wire::Refused;

use crate::ca::{Bundle, PeerIdentity, RevocationHandle};
use crate::client::{Driver, HANG_UP_TIMEOUT, SyncError, Told, lost};
use crate::net::{
    AcceptError, CloseCode, Connection, ConnectionError, EndpointError, NetConfig, ServerEndpoint, peer_server_endpoint,
};

/// How long a dialer's handshake may take before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a listener waits for a session without hearing from the dialer.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How a listening device runs. Start from [`ServeOptions::default`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// QUIC transport settings.
    pub net: NetConfig,
    /// Bound on a dialer's handshake.
    pub handshake_timeout: Duration,
    /// Bound on silence from the dialer while its session is not done.
    pub stall_timeout: Duration,
    /// Session tunables; [`SessionConfig::device_peer`] is always set.
    pub session: SessionConfig,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            net: NetConfig::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            session: SessionConfig::default(),
        }
    }
}

/// A device listening for another device of its area.
#[derive(Debug)]
pub struct PeerListener {
    endpoint: ServerEndpoint,
    bundle: Bundle,
    options: ServeOptions,
}

/// Binds `bind` for devices of `bundle`'s area; `revocations` is the newest list this device
/// knows. Touches no ledger.
pub fn listen(
    bind: SocketAddr,
    bundle: &Bundle,
    revocations: RevocationHandle,
    options: &ServeOptions,
) -> Result<PeerListener, EndpointError> {
    let endpoint = peer_server_endpoint(bind, bundle, revocations, &options.net)?;
    Ok(PeerListener { endpoint, bundle: bundle.clone(), options: options.clone() })
}

/// What happened to one connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A connection that did not become a session: its handshake failed (another county's
    /// certificate, none, a dialer that gave up, `fq sync --server` pointed at this device), or
    /// its certificate was refused (revoked, a server, a device of another area).
    Refused {
        /// Where it came from.
        addr: SocketAddr,
        /// Why.
        error: AcceptError,
    },
    /// A device of this area passed the checks; its session starts.
    Started {
        /// The device, as its certificate says.
        peer: PeerIdentity,
        /// Where it dialed from.
        addr: SocketAddr,
    },
    /// Where the running session stands (after every frame read or sent), for a display.
    Progress(Stats),
    /// A session with a device of this area, run to its end or until it failed.
    Session(Box<PeerSession>),
    /// A session cut short because this side stopped serving (Ctrl-C, SIGTERM). What was
    /// acknowledged stays: each batch was committed before its Ack. The dialer is told this
    /// side is shutting down.
    Interrupted {
        /// The device, as its certificate says.
        peer: PeerIdentity,
        /// Where it dialed from.
        addr: SocketAddr,
    },
}

/// One session with a dialing device.
#[derive(Debug)]
#[non_exhaustive]
pub struct PeerSession {
    /// The device, as its certificate says.
    pub peer: PeerIdentity,
    /// Where it dialed from.
    pub addr: SocketAddr,
    /// What the session did (also when it failed: what was acknowledged stays).
    pub stats: Stats,
    /// Our changes the dialer refused.
    pub refused: Vec<Refused>,
    /// How long the session took, handshake included.
    pub elapsed: Duration,
    /// How it ended.
    pub result: Result<(), SyncError>,
}

impl PeerListener {
    /// The address the listener is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This device, as its certificate says (what the other device sees).
    pub fn identity(&self) -> &PeerIdentity {
        self.bundle.identity()
    }

    /// Waits for the next connection and checks who dialed; `None` once the listener is closed.
    async fn accept(&self) -> Option<Result<Dialer, PeerEvent>> {
        let handshake = self.endpoint.accept().await?;
        let addr = handshake.remote_address();
        let started = Instant::now();
        let accepted = match tokio::time::timeout(self.options.handshake_timeout, handshake.authenticate()).await {
            Ok(Ok((connection, peer))) => Ok(Dialer { connection, peer, addr, started }),
            Ok(Err(error)) => Err(PeerEvent::Refused { addr, error }),
            Err(_) => Err(PeerEvent::Refused { addr, error: AcceptError::Handshake(ConnectionError::TimedOut) }),
        };
        Some(accepted)
    }

    /// Runs the session of a device that passed the checks, to its end, with `ledger`.
    async fn run(&self, dialer: Dialer, ledger: &mut Ledger, show: &mut impl FnMut(&Stats)) -> PeerSession {
        let Dialer { connection, peer, addr, started } = dialer;
        let mut told = Told::default();
        let (result, stats) = self.session(ledger, &connection, &peer, &mut told, show).await;
        // The dialer hangs up once it has read our side to its end; a failed session's Error
        // frame gets the same time to arrive before the connection closes.
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, connection.closed()).await;
        CloseCode::Done.close(&connection);
        PeerSession { peer, addr, stats, refused: told.refused, elapsed: started.elapsed(), result }
    }

    async fn session(
        &self,
        ledger: &mut Ledger,
        connection: &Connection,
        peer: &PeerIdentity,
        told: &mut Told,
        show: &mut impl FnMut(&Stats),
    ) -> (Result<(), SyncError>, Stats) {
        let stall = self.options.stall_timeout;
        let (mut send, mut recv) = match tokio::time::timeout(stall, connection.accept_bi()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return (Err(lost(&e)), Stats::default()),
            Err(_) => return (Err(SyncError::Stalled(stall)), Stats::default()),
        };
        let creds = Credentials {
            ca: self.bundle.ca_verifying_key(),
            own: Some((self.bundle.grant().clone(), self.bundle.signing_key().clone())),
            peer_scope_limit: Some(peer.scope.clone()),
        };
        let config = SessionConfig { device_peer: true, ..self.options.session.clone() };
        // The dialer's Hello names its replica; our Hello answers with the position held of it.
        let mut session = match Session::new(Side::Parent, ledger, creds, config, None, SystemClock.now()) {
            Ok(session) => session,
            Err(e) => return (Err(SyncError::Session(e)), Stats::default()),
        };
        let driver = Driver { stall_timeout: stall, finish_early: false };
        let result = driver.drive(&mut session, ledger, &mut send, &mut recv, show, told).await;
        if result.is_err() {
            let _ = send.finish();
        }
        (result, session.stats().clone())
    }

    /// Refuses new devices, closes the connection of a session cut short (the dialer is told
    /// this side is shutting down) and waits, a few seconds at most, for the close to go out.
    pub async fn close(&self) {
        self.endpoint.close_with(CloseCode::ShuttingDown);
        let _ = tokio::time::timeout(HANG_UP_TIMEOUT, self.endpoint.wait_idle()).await;
    }
}

/// A device that passed the checks, its session not yet run.
#[derive(Debug)]
struct Dialer {
    connection: Connection,
    peer: PeerIdentity,
    addr: SocketAddr,
    started: Instant,
}

/// Serves devices one session at a time until `shutdown` completes (or, with `once`, until one
/// session has run), telling `on_event` about each connection; then closes the listener.
/// Returns how many sessions ran.
///
/// The ledger is opened with `open` for each session, once the dialer passed the checks, and
/// closed when the session ends: between exchanges the person keeps using the device's other
/// commands, and no document stays cached across what they write. A ledger that does not open
/// ends the serving with that error. A session cut short by `shutdown` keeps what was
/// acknowledged: each batch is committed before its Ack.
pub async fn serve_peers<E>(
    listener: &PeerListener,
    mut open: impl FnMut() -> Result<Ledger, E>,
    once: bool,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(&PeerEvent),
) -> Result<u32, E> {
    tokio::pin!(shutdown);
    let mut sessions = 0;
    let outcome = loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break Ok(()),
        };
        let dialer = match accepted {
            None => break Ok(()),
            Some(Err(refused)) => {
                on_event(&refused);
                continue;
            }
            Some(Ok(dialer)) => dialer,
        };
        let mut ledger = match open() {
            Ok(ledger) => ledger,
            Err(e) => break Err(e),
        };
        // A handle of our own: dropped with the session, the last handle would close the
        // connection as if the session were done.
        let (peer, addr, connection) = (dialer.peer.clone(), dialer.addr, dialer.connection.clone());
        on_event(&PeerEvent::Started { peer: peer.clone(), addr });
        let ran = {
            let mut show = |stats: &Stats| on_event(&PeerEvent::Progress(stats.clone()));
            tokio::select! {
                session = listener.run(dialer, &mut ledger, &mut show) => Some(session),
                () = &mut shutdown => None,
            }
        };
        let Some(session) = ran else {
            CloseCode::ShuttingDown.close(&connection);
            sessions += 1;
            on_event(&PeerEvent::Interrupted { peer, addr });
            break Ok(());
        };
        drop(ledger);
        sessions += 1;
        on_event(&PeerEvent::Session(Box::new(session)));
        if once {
            break Ok(());
        }
    };
    listener.close().await;
    outcome.map(|()| sessions)
}
