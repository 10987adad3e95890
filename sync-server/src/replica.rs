//! The thread that owns the server's replica: its [`Ledger`] and every sync [`Session`].
//!
//! rusqlite's `Connection` is `Send` but not `Sync`, and a session is only meaningful next to
//! the ledger it reads and writes, so both live on one thread (iroh-docs' actor, mini-redis'
//! `db`). Async tasks talk to it with [`Command`]s over a bounded channel: a connection task
//! forwards the bytes it reads with the session's id, and the actor answers by putting frames on
//! that session's outgoing channel, which the connection task writes to the stream.
//!
//! Why one thread is enough: the network side (handshakes, reads, writes, keep-alives) runs on
//! the tokio runtime meanwhile, and the actor commits in groups: everything queued while it
//! worked is handled in one transaction with one fsync, and the frames it produced (the acks)
//! go out only after that commit (see [`Actor::run`], ADR 7).
//!
//! When a group's commands grew the local log, every session is told once at the end of the
//! group ([`Session::notify_local_changes`]), so a device's edit flows on to the county and to
//! the other devices connected at that moment; the upstream dialer is woken too. The session
//! whose peer alone brought the new changes is not told: it would find nothing to send back.
//! Once per group, not once per push: with N devices connected, telling everyone after each
//! push made every push cost N log reads.
//!
//! The outgoing channels are unbounded: what a session queues is bounded by the protocol itself
//! (at most [`fq_core::sync::session::SessionConfig::max_in_flight`] unacknowledged pushes of
//! under 1 MiB each, acks, and one recovery digest), and the actor must never wait on a slow peer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::{CLOCK_SKEW_TOLERANCE_MS, Ledger, LedgerError, PolicyInstall, Tier};
use fq_core::sync::session::{Credentials, Event, PolicyOutcome, Session, SessionConfig, SessionError, Side, Stats};
use fq_core::sync::wire::ErrorCode;
use fq_core::trust::{GrantRole, SignedGrant};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::ca::PeerIdentity;
use crate::limits::{Charge, OverBudget};

/// Commands queued for the actor before senders wait: enough for a burst from many streams.
/// Each holds at most one read chunk, so the queue holds at most 16 MiB.
pub(crate) const COMMAND_QUEUE: usize = 256;
/// Longest the actor sleeps without looking at its sessions' timers.
const MAX_IDLE_TICK: Duration = Duration::from_secs(1);
/// Most commands handled in one group commit: bounds the time frames wait for it.
const MAX_GROUP: usize = 256;
/// Longest a group takes more commands: acks wait for the commit, and a peer's ack watchdog
/// (20 s) must never see a group of many big pushes as a dead server.
const MAX_GROUP_TIME: Duration = Duration::from_millis(200);

/// A session's number, unique for the life of the server process.
pub(crate) type SessionId = u64;

/// What a connection task asks of the actor.
#[derive(Debug)]
pub(crate) enum Command {
    /// A new stream: start a session on it.
    Open {
        /// Its id.
        id: SessionId,
        /// Parent for a device or township dialing in; child for our link to the county.
        side: Side,
        /// Who is at the other end, from its certificate (boxed: it is large and rare).
        peer: Box<PeerIdentity>,
        /// Where the session's frames go.
        out: mpsc::UnboundedSender<Outgoing>,
    },
    /// Bytes read from a session's stream.
    Input {
        /// The session.
        id: SessionId,
        /// The bytes, as read.
        bytes: Vec<u8>,
        /// What to give back to the input budget once the bytes are handled: the frames they
        /// complete (none on the link to the county, which is not charged).
        release: Option<(Arc<Charge>, usize)>,
    },
    /// The stream announced a frame that does not fit in the input budget: end the session.
    OverBudget {
        /// The session.
        id: SessionId,
        /// Whose share was spent.
        over: OverBudget,
        /// The stream's charge, given back once the session (and its decoder) is gone.
        held: Option<Arc<Charge>>,
    },
    /// The stream ended (finished by the peer, reset, or the connection was lost).
    Ended {
        /// The session.
        id: SessionId,
        /// Why, for the log.
        reason: String,
        /// The stream's charge, given back once the session (and its decoder) is gone.
        held: Option<Arc<Charge>>,
    },
    /// A signed county policy to install (from the file the county server
    /// follows); the reply says what became of it. Open child sessions are
    /// sent it if it was installed.
    InstallPolicy {
        /// The signed bytes.
        bytes: Vec<u8>,
        /// What [`Ledger::install_policy`] said.
        reply: oneshot::Sender<Result<PolicyInstall, LedgerError>>,
    },
    /// A sync file handed in by `fq-server import`: import it and answer, after the commit.
    Import {
        /// The file's bytes.
        bytes: Vec<u8>,
        /// Where the answer goes: one frame, `0` and the answer file, or `1` and why the file
        /// was refused (English, for the operator's log and `fq-server import`).
        out: mpsc::UnboundedSender<Outgoing>,
    },
    /// Tests only: the actor panics, as a bug would make it.
    #[cfg(test)]
    Panic,
}

/// What the actor sends a session's writer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A frame to write.
    Frame(Vec<u8>),
    /// The session is over: write nothing more, finish the stream.
    Finish,
}

/// The server's own credentials, from its bundle.
#[derive(Debug, Clone)]
pub(crate) struct OwnCredentials {
    /// The county CA's key.
    pub ca: VerifyingKey,
    /// The server's grant.
    pub grant: SignedGrant,
    /// The server's key.
    pub key: SigningKey,
}

/// A handle on the actor thread.
#[derive(Debug)]
pub(crate) struct ReplicaHandle {
    tx: mpsc::Sender<Command>,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

/// Asks the actor to stop, ahead of whatever is queued: commands queued behind the one being
/// handled are dropped (nothing in them was acknowledged; their peers send them again).
#[derive(Debug, Default)]
struct Stop {
    asked: AtomicBool,
    wake: Notify,
}

impl ReplicaHandle {
    /// Starts the actor thread with the ledger it will own.
    pub(crate) fn spawn(
        ledger: Ledger,
        own: OwnCredentials,
        cfg: SessionConfig,
        upstream_wake: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        let actor = Actor::new(ledger, own, cfg, upstream_wake);
        let stop = Arc::new(Stop::default());
        let asked = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fq-replica".into())
            .spawn(move || runtime.block_on(actor.run(rx, &asked)))?;
        Ok(Self { tx, stop, thread: Some(thread) })
    }

    /// A sender for connection tasks.
    pub(crate) fn sender(&self) -> mpsc::Sender<Command> {
        self.tx.clone()
    }

    /// Resolves when the actor has stopped taking commands: after [`ReplicaHandle::shutdown`],
    /// or at any time if it died (a panic). The server treats the second as fatal, since
    /// nothing can be synced without it.
    pub(crate) async fn stopped(&self) {
        self.tx.closed().await;
    }

    /// Stops the actor: it finishes the command it is on (a batch being applied commits, and
    /// its ack is sent), commits its group, closes every session with "shutting down", drops the
    /// ledger and ends; this waits for all of that and joins the thread.
    pub(crate) async fn shutdown(mut self) {
        self.stop.asked.store(true, Ordering::Release);
        self.stop.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The actor has returned (or died); joining cannot block for long.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                error!("the replica thread ended abnormally");
            }
        }
    }
}

struct Live {
    session: Session,
    out: mpsc::UnboundedSender<Outgoing>,
    peer: PeerIdentity,
    side: Side,
}

struct Actor {
    ledger: Ledger,
    own: OwnCredentials,
    cfg: SessionConfig,
    sessions: BTreeMap<SessionId, Live>,
    upstream_wake: Arc<Notify>,
    clock: SystemClock,
    /// Whether a group transaction is open: see [`Actor::run`].
    grouped: bool,
    /// Frames (acks among them) held back until the group commits, in order.
    held: Vec<(mpsc::UnboundedSender<Outgoing>, Outgoing)>,
    /// Whether the log grew since sessions were last told, and by whom: see [`Actor::spread`].
    grew: Growth,
    /// The policy version child sessions were last offered: see [`Actor::spread`].
    policy_offered: u64,
}

/// What grew the log during a group: nothing, the peer of one session alone, or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    None,
    Session(SessionId),
    Other,
}

impl Actor {
    fn new(ledger: Ledger, own: OwnCredentials, cfg: SessionConfig, upstream_wake: Arc<Notify>) -> Self {
        Actor {
            ledger,
            own,
            cfg,
            sessions: BTreeMap::new(),
            upstream_wake,
            clock: SystemClock,
            grouped: false,
            held: Vec::new(),
            grew: Growth::None,
            policy_offered: 0,
        }
    }

    /// Group commit: the actor waits for a command, then handles it and every
    /// command already queued behind it (up to [`MAX_GROUP`], for at most
    /// [`MAX_GROUP_TIME`]) inside one
    /// group transaction, commits that once, and only then lets out the
    /// frames those commands produced. Each session's work is still its own
    /// savepoint; many devices' pushes share one fsync, and no ack leaves
    /// before the commit that makes it true.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, stop: &Stop) {
        let stopping = || stop.asked.load(Ordering::Acquire);
        while !stopping() {
            let nap = self.next_timeout().unwrap_or(MAX_IDLE_TICK).min(MAX_IDLE_TICK);
            let first = tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(cmd) => Some(cmd),
                },
                () = tokio::time::sleep(nap) => None,
                () = stop.wake.notified() => None,
            };
            if first.is_some() {
                self.begin_group();
            }
            let mut queued = first;
            let mut handled = 0;
            let started = std::time::Instant::now();
            while let Some(cmd) = queued.take() {
                self.handle(cmd);
                handled += 1;
                if !stopping() && handled < MAX_GROUP && started.elapsed() < MAX_GROUP_TIME {
                    queued = rx.try_recv().ok();
                }
            }
            self.check_timeouts();
            self.spread();
            self.end_group();
        }
        self.shutdown();
    }

    fn begin_group(&mut self) {
        match self.ledger.begin_group() {
            Ok(()) => self.grouped = true,
            // Each operation then commits on its own, as without groups.
            Err(e) => warn!(error = %e, "cannot open a group transaction; committing one by one"),
        }
    }

    /// Commits the group and sends what it held. If the commit fails, what the
    /// held frames promise is not on disk: they are dropped, and every session
    /// is closed so that its peer reconnects and resumes from what is.
    fn end_group(&mut self) {
        if !std::mem::replace(&mut self.grouped, false) {
            return;
        }
        match self.ledger.commit_group() {
            Ok(()) => {
                for (out, o) in self.held.drain(..) {
                    // A closed receiver means the writer is gone; the reader reports the end.
                    let _ = out.send(o);
                }
            }
            Err(e) => {
                error!(error = %e, "cannot save the received changes; closing every session, peers will resend");
                self.held.clear();
                let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
                for id in ids {
                    if let Some(live) = self.sessions.get_mut(&id) {
                        live.session.close(ErrorCode::Internal, "the server could not save; sync again later");
                    }
                    self.flush(id);
                }
            }
        }
    }

    /// Imports a sync file like a session from its sender: the answer (acks among it) is held
    /// until the group commits, so it promises only what is on disk.
    fn import(&mut self, bytes: &[u8], out: &mpsc::UnboundedSender<Outgoing>) {
        use crate::import::{Refusal, accepted_frame, refused_frame};
        let creds = Credentials {
            ca: self.own.ca,
            own: Some((self.own.grant.clone(), self.own.key.clone())),
            peer_scope_limit: None,
        };
        let mut entropy = [0u8; 72];
        let frame = match getrandom::fill(&mut entropy) {
            Err(e) => refused_frame(Refusal::Failed, &format!("no randomness: {e}")),
            Ok(()) => match fq_core::sync::file::import(&mut self.ledger, &creds, bytes, self.clock.now(), entropy) {
                Ok((Some(answer), report)) => {
                    info!(
                        received = report.stats.received,
                        duplicates = report.stats.duplicates,
                        refused = report.stats.refused_here,
                        replayed = report.replayed,
                        answer_bytes = answer.len(),
                        "sync file imported"
                    );
                    if report.stats.received > 0 {
                        self.grew = Growth::Other;
                    }
                    accepted_frame(&report, &answer)
                }
                Ok((None, _)) => {
                    warn!("sync file refused: it is an answer file");
                    refused_frame(Refusal::AnAnswer, "the file is an answer, not a file to answer")
                }
                Err(e) => {
                    // Damaged, cut or misaddressed files are refused before anything is
                    // applied; a session error later on keeps what committed before it, as
                    // over QUIC.
                    let why = error_chain_text(&e);
                    warn!(error = %why, "sync file refused");
                    refused_frame(Refusal::of(&e), &why)
                }
            },
        };
        self.emit(out, Outgoing::Frame(frame));
        self.emit(out, Outgoing::Finish);
    }

    /// Sends a frame to a session's writer, or holds it until the group commits.
    fn emit(&mut self, out: &mpsc::UnboundedSender<Outgoing>, o: Outgoing) {
        if self.grouped {
            self.held.push((out.clone(), o));
        } else {
            let _ = out.send(o);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Open { id, side, peer, out } => self.open(id, side, *peer, out),
            Command::Input { id, bytes, release } => {
                self.input(id, &bytes);
                // The frames these bytes complete have been decoded and handled: the session no
                // longer holds them.
                if let Some((charge, bytes)) = release {
                    charge.release(bytes);
                }
            }
            Command::OverBudget { id, over, held: _held } => self.over_budget(id, over),
            Command::Ended { id, reason, held: _held } => {
                if let Some(live) = self.sessions.remove(&id) {
                    self.record_lag(&live);
                    self.emit(&live.out, Outgoing::Finish);
                    let caught_up = live.session.is_caught_up();
                    log_end(id, &live, &reason, caught_up);
                }
            }
            Command::InstallPolicy { bytes, reply } => {
                let result = self.ledger.install_policy(&bytes, &self.own.ca);
                match &result {
                    Ok(PolicyInstall::Installed { previous, version }) => {
                        info!(previous, version, source = "policy_file", "county policy installed");
                    }
                    Ok(PolicyInstall::Stale { offered, current }) => {
                        debug!(offered, current, "county policy is not newer; ignored");
                    }
                    Err(e) => warn!(error = %e, "county policy refused; the one in force stays"),
                }
                let _ = reply.send(result);
            }
            Command::Import { bytes, out } => self.import(&bytes, &out),
            #[cfg(test)]
            Command::Panic => panic!("the replica thread panics (test)"),
        }
    }

    fn open(&mut self, id: SessionId, side: Side, peer: PeerIdentity, out: mpsc::UnboundedSender<Outgoing>) {
        let now = self.clock.now();
        let creds = Credentials {
            ca: self.own.ca,
            own: Some((self.own.grant.clone(), self.own.key.clone())),
            peer_scope_limit: Some(peer.scope.clone()),
        };
        // The parent's hello names the child once it has said who it is; a child names the
        // parent it last synced with.
        let expected = match side {
            Side::Child => match self.ledger.upstream() {
                Ok(up) => up,
                Err(e) => {
                    error!(session = id, error = %e, "cannot read the upstream position");
                    let _ = out.send(Outgoing::Finish);
                    return;
                }
            },
            Side::Parent => None,
        };
        match Session::new(side, &self.ledger, creds, self.cfg.clone(), expected, now) {
            Ok(session) => {
                debug!(session = id, peer = %peer.id, ?side, "session opened");
                self.sessions.insert(id, Live { session, out, peer, side });
                self.flush(id);
            }
            Err(e) => {
                error!(session = id, peer = %peer.id, error = %e, "cannot start a session");
                let _ = out.send(Outgoing::Finish);
            }
        }
    }

    fn input(&mut self, id: SessionId, bytes: &[u8]) {
        let before = self.ledger.log_head().ok();
        let now = self.clock.now();
        let Some(live) = self.sessions.get_mut(&id) else {
            // The session already ended; the reader drains the stream to its end.
            return;
        };
        match live.session.handle_input(&mut self.ledger, bytes, now) {
            Ok(()) => {}
            // The peer ended it (it is shutting down, or gave up on us): its words are the reason.
            Err(SessionError::Peer { code, text }) => {
                info!(session = id, peer = %live.peer.id, ?code, %text, "session ended by the peer");
            }
            // The session has ended itself and queued an error frame for the peer.
            Err(e) => warn!(session = id, peer = %live.peer.id, error = %e, "session failed"),
        }
        self.flush(id);
        let after = self.ledger.log_head().ok();
        if after > before {
            self.grew = match self.grew {
                Growth::None => Growth::Session(id),
                Growth::Session(other) if other == id => Growth::Session(id),
                _ => Growth::Other,
            };
        }
    }

    /// Ends a session whose stream announced more input than the budget holds: the peer's fault
    /// when its certificate's share is spent (`TooLarge`), the server's load when the whole
    /// budget is (`Busy`: try again later).
    fn over_budget(&mut self, id: SessionId, over: OverBudget) {
        let Some(live) = self.sessions.get_mut(&id) else { return };
        let peer = live.peer.id.as_str();
        let serial = live.peer.serial.to_string();
        match over {
            OverBudget::Peer { held, wanted, limit } => {
                warn!(session = id, peer, serial, held, wanted, limit, "peer input budget spent; session ended");
                live.session.close(ErrorCode::TooLarge, "too much unfinished input from this certificate");
            }
            OverBudget::Server { held, wanted, limit } => {
                warn!(session = id, peer, serial, held, wanted, limit, "server input budget spent; session ended");
                live.session.close(ErrorCode::Busy, "the server is busy; sync again in a few minutes");
            }
        }
        self.flush(id);
    }

    /// If the log grew during this group, every session pushes on what its peer lacks (the
    /// sessions that brought the changes find nothing of theirs to send back: a change is never
    /// sent to the peer it came from).
    fn spread(&mut self) {
        // A newer county policy (from the file, or from the county over the
        // upstream session) goes on to every child connected now.
        let version = self.ledger.policy().version();
        if version > self.policy_offered {
            self.policy_offered = version;
            let now = self.clock.now();
            let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
            for id in ids {
                if let Some(live) = self.sessions.get_mut(&id)
                    && let Err(e) = live.session.offer_policy(&self.ledger, now)
                {
                    warn!(session = id, peer = %live.peer.id, error = %e, "session failed");
                }
                self.flush(id);
            }
        }
        let grew = std::mem::replace(&mut self.grew, Growth::None);
        if grew == Growth::None {
            return;
        }
        let now = self.clock.now();
        // A session whose own peer brought everything new has nothing to push for it (a change
        // never goes back to the peer it came from). Told, it would push only its position,
        // which costs a push and its ack, a round trip on 2G; and a device that has already
        // finished its stream (ADR 46) could not acknowledge it, so the session would end with
        // a push in flight. The position goes with the next push, or the next session.
        let ids: Vec<SessionId> = self.sessions.keys().copied().filter(|id| grew != Growth::Session(*id)).collect();
        for id in ids {
            if let Some(live) = self.sessions.get_mut(&id)
                && let Err(e) = live.session.notify_local_changes(&mut self.ledger, now)
            {
                warn!(session = id, peer = %live.peer.id, error = %e, "session failed");
            }
            self.flush(id);
        }
        self.upstream_wake.notify_one();
    }

    /// Handles a session's events, queues its frames, and retires it if it has ended.
    fn flush(&mut self, id: SessionId) {
        let Some(live) = self.sessions.get_mut(&id) else { return };
        let mut caught_up = false;
        while let Some(event) = live.session.poll_event() {
            log_event(id, live, &event);
            caught_up |= event == Event::CaughtUp;
            if let Event::Connected(info) = &event {
                let expected = tier_of(live.peer.role);
                if info.tier != expected {
                    warn!(
                        session = id,
                        peer = %live.peer.id,
                        claimed = info.tier.code(),
                        certificate = expected.code(),
                        "session refused: hello tier does not match the certificate"
                    );
                    live.session.close(ErrorCode::Unauthorized, "hello tier does not match the certificate");
                }
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = live.session.poll_transmit() {
            frames.push(Outgoing::Frame(frame));
        }
        let closed = live.session.is_closed();
        if closed {
            frames.push(Outgoing::Finish);
        }
        let out = live.out.clone();
        // A township's session with its county stays open for hours: its lag
        // is recorded each time it catches up, not only when it ends.
        let lag = (caught_up && live.side == Side::Parent && !live.session.is_inspection())
            .then(|| live.session.peer().map(|p| p.replica))
            .flatten();
        for o in frames {
            self.emit(&out, o);
        }
        if let Some(peer) = lag
            && let Err(e) = self.ledger.record_caught_up(peer)
        {
            warn!(session = id, error = %e, "cannot record the peer's lag");
        }
        if closed && let Some(live) = self.sessions.remove(&id) {
            self.record_lag(&live);
            let reason = live.session.close_reason().unwrap_or("closed by this server").to_owned();
            log_end(id, &live, &reason, false);
        }
    }

    /// After a session with a child: records how far apart the two were when
    /// it ended, so `fq-server status` and `fq audit` show each child's lag
    /// without dialing it (the county never dials its townships). Nothing is
    /// recorded for an inspection, which writes nothing.
    fn record_lag(&mut self, live: &Live) {
        if live.side != Side::Parent || live.session.is_inspection() {
            return;
        }
        let (Some(peer), Some(head)) = (live.session.peer(), live.session.peer_log_head()) else { return };
        if let Err(e) = self.ledger.record_lag(peer.replica, head) {
            warn!(peer = %live.peer.id, error = %e, "cannot record the peer's lag");
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let at = self.sessions.values().filter_map(|l| l.session.poll_timeout()).min()?;
        let ms = at.0.saturating_sub(self.clock.now().0).max(0);
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    fn check_timeouts(&mut self) {
        let now = self.clock.now();
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, l)| l.session.poll_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(live) = self.sessions.get_mut(&id)
                && let Err(e) = live.session.handle_timeout(now)
            {
                warn!(session = id, peer = %live.peer.id, error = %e, "session timed out");
            }
            self.flush(id);
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(live) = self.sessions.get_mut(&id) {
                live.session.close(ErrorCode::ShuttingDown, "server shutting down");
            }
            self.flush(id);
        }
        debug!("replica closed");
    }
}

/// The tier a certificate's role speaks for in a hello.
fn tier_of(role: GrantRole) -> Tier {
    match role {
        GrantRole::CountyServer => Tier::County,
        GrantRole::TownshipServer => Tier::Township,
        _ => Tier::Device,
    }
}

fn log_event(id: SessionId, live: &Live, event: &Event) {
    let peer = live.peer.id.as_str();
    match event {
        Event::Connected(info) => info!(
            session = id,
            peer,
            replica = %info.replica,
            tier = info.tier.code(),
            scope = %info.scope,
            side = ?live.side,
            "session started"
        ),
        Event::Received { applied, duplicates, pending, refused } => {
            info!(session = id, peer, applied, duplicates, pending, refused, "changes applied");
            if *refused > 0 {
                warn!(session = id, peer, refused, "changes refused; see the audit log");
            }
        }
        Event::Acked { sent, refused } => {
            debug!(session = id, peer, sent, refused = refused.len(), "changes acknowledged by the peer");
            if !refused.is_empty() {
                warn!(session = id, peer, refused = refused.len(), "the peer refused changes we sent");
            }
        }
        Event::Recovered { sent } => info!(session = id, peer, sent, "recovered by digest"),
        Event::CaughtUp => {
            let s = live.session.stats();
            info!(session = id, peer, sent = s.sent, received = s.received, "session caught up");
        }
        Event::Policy(PolicyOutcome::Installed { previous, version }) => {
            info!(session = id, peer, previous, version, source = "upstream", "county policy installed");
        }
        Event::Policy(PolicyOutcome::Stale { offered, current }) => {
            debug!(session = id, peer, offered, current, "county policy from upstream is not newer; ignored");
        }
        Event::Policy(PolicyOutcome::Refused { claimed, reason }) => {
            warn!(session = id, peer, claimed_version = claimed, %reason, "county policy from upstream refused; the one in force stays");
        }
        Event::PeerClock { peer_minus_ours_ms } => {
            if peer_minus_ours_ms.abs() > CLOCK_SKEW_TOLERANCE_MS {
                warn!(session = id, peer, offset_ms = peer_minus_ours_ms, "peer clock is off");
            } else {
                debug!(session = id, peer, offset_ms = peer_minus_ours_ms, "peer clock");
            }
        }
    }
}

fn error_chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn log_end(id: SessionId, live: &Live, reason: &str, caught_up: bool) {
    let Stats { sent, received, duplicates, refused_by_peer, refused_here, bytes_out, bytes_in, .. } =
        live.session.stats().clone();
    info!(
        session = id,
        peer = live.peer.id.as_str(),
        reason,
        caught_up,
        sent,
        received,
        duplicates,
        refused_by_peer,
        refused_here,
        bytes_out,
        bytes_in,
        "session ended"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::SystemTime;

    use fq_core::case::Role;
    use fq_core::ledger::{InitOptions, LedgerOptions};

    use super::*;
    use crate::ca::{CertificateAuthority, GrantRole};

    fn township_replica(dir: &std::path::Path) -> ReplicaHandle {
        township_and_ca(dir).0
    }

    fn township_and_ca(dir: &std::path::Path) -> (ReplicaHandle, CertificateAuthority) {
        let now = SystemTime::now();
        let ca = CertificateAuthority::init(&dir.join("ca"), &"532924".parse().unwrap(), now).unwrap();
        let bundle = ca
            .issue(&"tw-101".parse().unwrap(), GrantRole::TownshipServer, &"532924101".parse().unwrap(), now)
            .unwrap();
        let init = InitOptions {
            tier: Tier::Township,
            name: "tw-101".into(),
            role: Role::TownshipOfficer,
            scope: bundle.scope().clone(),
            grid: None,
        };
        let ledger =
            Ledger::init(&dir.join("replica.db"), init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
        let own = OwnCredentials {
            ca: bundle.ca_verifying_key(),
            grant: bundle.grant().clone(),
            key: bundle.signing_key().clone(),
        };
        (ReplicaHandle::spawn(ledger, own, SessionConfig::default(), Arc::new(Notify::new())).unwrap(), ca)
    }

    /// ADR 46: the changes a device pushes grow the township's log, but the device's own
    /// session is not woken for them: it would push the device its position alone, which a
    /// device that has ended its stream can no longer acknowledge. Everything the township
    /// sends after its acks is checked: no push follows.
    #[tokio::test]
    async fn a_devices_own_pushes_do_not_wake_its_session() {
        use fq_core::ledger::NewCase;
        use fq_core::sync::wire::{Message, decode};
        let dir = tempfile::tempdir().unwrap();
        let (replica, ca) = township_and_ca(dir.path());
        let bundle = ca
            .issue(&"d07".parse().unwrap(), GrantRole::Mediator, &"532924101201".parse().unwrap(), SystemTime::now())
            .unwrap();
        let init = InitOptions {
            tier: Tier::Device,
            name: "d07".into(),
            role: Role::Mediator,
            scope: bundle.scope().clone(),
            grid: None,
        };
        let mut device = Ledger::init_in_memory(init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
        device.add_grant(bundle.grant()).unwrap();
        for title in ["宅基地滴水纠纷", "山林界址纠纷"] {
            let case = NewCase {
                category: fq_core::case::Category::Neighbor,
                title: title.into(),
                description: String::new(),
                parties: Vec::new(),
                risk: fq_core::case::Risk::Low,
                flags: Vec::new(),
                village: None,
                grid: None,
            };
            device.create_case(case).unwrap();
        }
        let creds = Credentials {
            ca: bundle.ca_verifying_key(),
            own: Some((bundle.grant().clone(), bundle.signing_key().clone())),
            peer_scope_limit: None,
        };
        let now = SystemClock.now();
        let mut session = Session::new(Side::Child, &device, creds, SessionConfig::default(), None, now).unwrap();
        let (out, mut frames) = mpsc::unbounded_channel();
        let sender = replica.sender();
        let id = 1;
        sender
            .send(Command::Open { id, side: Side::Parent, peer: Box::new(bundle.identity().clone()), out })
            .await
            .unwrap();
        let mut after_acks = Vec::new();
        for _ in 0..20 {
            while let Some(bytes) = session.poll_transmit() {
                sender.send(Command::Input { id, bytes, release: None }).await.unwrap();
            }
            if session.is_caught_up() {
                // Whatever the township still sends comes within this wait.
                while let Ok(Some(Outgoing::Frame(f))) =
                    tokio::time::timeout(Duration::from_millis(300), frames.recv()).await
                {
                    after_acks.push(decode(&f[4..]).unwrap());
                }
                break;
            }
            let Some(Outgoing::Frame(f)) = frames.recv().await else { panic!("the session ended") };
            session.handle_input(&mut device, &f, SystemClock.now()).unwrap();
        }
        assert!(session.is_caught_up(), "the device's session did not catch up");
        assert_eq!(session.stats().sent, 2);
        assert!(
            !after_acks.iter().any(|m| matches!(m, Message::Push { .. } | Message::Pack { .. })),
            "the township pushed the device after its acks: {after_acks:?}"
        );
        replica.shutdown().await;
    }

    #[tokio::test]
    async fn a_replica_thread_that_dies_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let replica = township_replica(dir.path());
        // Alive: `stopped` does not resolve.
        let alive = tokio::time::timeout(Duration::from_millis(200), replica.stopped()).await;
        assert!(alive.is_err(), "a live replica thread reported stopped");
        replica.sender().send(Command::Panic).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), replica.stopped())
            .await
            .expect("a panicked replica thread was not noticed");
        // Shutting down a dead replica still returns.
        tokio::time::timeout(Duration::from_secs(10), replica.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn a_replica_thread_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let replica = township_replica(dir.path());
        let sender = replica.sender();
        tokio::time::timeout(Duration::from_secs(10), replica.shutdown()).await.unwrap();
        assert!(sender.is_closed(), "the replica thread still takes commands after shutdown");
    }
}
