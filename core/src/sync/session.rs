//! One sync session with one peer, over one stream: sans-io, quinn-style.
//!
//! The caller owns the transport and the clock. It feeds received bytes to
//! [`Session::handle_input`], sends whatever [`Session::poll_transmit`]
//! returns, calls [`Session::handle_timeout`] when [`Session::poll_timeout`]
//! says, and reads progress from [`Session::poll_event`]. The ledger is
//! passed in on every call that needs it; the session holds no I/O.
//!
//! # Flow (see `docs/PROTOCOL.md`)
//! 1. The child sends `Hello`; the parent answers with its own. Each says how
//!    far it holds the other's log (`have`, with the hash at that position).
//! 2. Each side checks the claim against its own log. If it matches, it
//!    pushes its log after that position; if not (a restored backup, a
//!    rebuilt server), it sends a `Digest` of its cases for the peer's scope,
//!    the peer answers `Want` for the cases it lacks or differs on, and the
//!    side pushes exactly those changes before resuming from its log head.
//! 3. Pushes are bounded batches, at most [`SessionConfig::max_in_flight`]
//!    unacknowledged. The receiver verifies, authorizes, applies and commits
//!    each batch together with the new log position, then acks it. A resent
//!    batch is a no-op: changes are keyed by hash. Pushes start small and
//!    follow the link: each ack says how fast the last push crossed, and the
//!    next is sized to cross in a quarter of the ack watchdog (ADR 9).
//!    2b. The county policy comes down (ADR 30): the child announces the version
//!    it holds in a `Policy` frame; the parent answers with its version and
//!    clock, and with the signed policy when its own is newer (and again
//!    whenever it installs a newer one while the session is open). The child
//!    installs it only if the county CA signed it and it is newer; a forged,
//!    unsigned or older one is reported as an event and never installed. The
//!    parent's clock tells the child how far off its own is.
//! 4. A side with nothing more sends `Done`; when both have and nothing is in
//!    flight the session reports [`Event::CaughtUp`]. It stays usable: call
//!    [`Session::notify_local_changes`] when the log grows.
//!
//! Any decode error, out-of-turn message or unauthorized hello ends the
//! session with an `Error` frame; the caller drops the stream and the next
//! session starts from the saved positions.
//!
//! # Inspection (ADR 22)
//! A child may open with `Inspect` instead of `Hello` (`fq audit compare`,
//! driven by [`crate::audit::Comparison`]). The parent answers with its Hello
//! and then only answers queries about its data in the child's scope (bucket
//! sums, case digests, change lists). Nothing is pushed, applied or
//! recorded on either side.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;

use super::wire::{
    self, CaseDocument, DecodeError, Envelope, ErrorCode, FrameDecoder, LogPosition, MAX_DIGEST_ENTRIES,
    MAX_ENVELOPES_PER_PUSH, MAX_FRAME_BYTES, MAX_HEADS_PER_CASE, MAX_RUN_CHANGES, Message, PROTOCOL_VERSION, Refused,
    Run, Vouch, Voucher,
};
use crate::audit;
use crate::case::{AdminCode, CaseId};
use crate::clock::Timestamp;
use crate::doc::Hash;
use crate::ledger::{IncomingChange, Ledger, LedgerError, OutgoingChange, PeerInfo, PolicyInstall, RefuseReason, Tier};
use crate::trust::{self, Provenance, SignedGrant};

/// The first push's size: at GPRS rates (2-5 KB/s under a weak signal) two
/// such pushes cross in well under the 20 s ack watchdog.
const FIRST_BATCH_BYTES: usize = 16 * 1024;
/// The smallest push size the rate estimate may choose (a bigger change is
/// still sent, alone).
const MIN_BATCH_BYTES: usize = 4 * 1024;
/// A GPRS link in a weak cell, for the watchdog's allowance.
const SLOWEST_LINK_BYTES_PER_SEC: u32 = 1_000;
/// A push is sized to cross the link in this fraction of the ack watchdog.
const WATCHDOG_SHARE: i64 = 4;

/// Log rows of urgent cases read ahead of the log in one pass.
const URGENT_ROWS: u32 = 4096;

/// Cases per `Want` frame, so a frame stays under the limit whatever the heads.
const WANT_CASES_PER_FRAME: usize = 256;
/// Refusals listed in one ack (the rest are counted in the audit only), and
/// the words kept of each, so an ack always fits a frame.
const ACK_REFUSALS: usize = 512;
const ACK_TEXT_BYTES: usize = 200;

fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Which end of the link this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dialing side: a device, or a township server towards the county.
    Child,
    /// The accepting side.
    Parent,
}

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most log rows read for one push.
    pub max_batch_rows: u32,
    /// At most about this many change bytes per push (under the frame limit).
    pub max_batch_bytes: usize,
    /// About this many change bytes in the first push, before anything is
    /// known of the link. Later pushes follow the rate acks arrive at.
    pub first_batch_bytes: usize,
    /// The slowest link a push must cross: an unacknowledged push may take
    /// [`SessionConfig::ack_timeout_ms`] plus its bytes (and those sent
    /// before it) at this rate before the watchdog ends the session.
    pub slowest_link_bytes_per_sec: u32,
    /// Most pushes awaiting an ack.
    pub max_in_flight: usize,
    /// An unacknowledged push older than this ends the session (the watchdog
    /// of DESIGN.md §6: the caller reconnects and resends).
    pub ack_timeout_ms: i64,
    /// A peer that has not said hello by then is dropped.
    pub hello_timeout_ms: i64,
    /// A one-way exchange (a sync file): nothing the peer sends can answer
    /// what this side sends, so pushes go all at once without waiting for
    /// acks, no watchdog runs, an ack recorded in the file moves the
    /// acknowledged position whichever session sent its push, and where a
    /// peer's claim on our log does not hold, the log is sent again from its
    /// start instead of a digest (recovery needs a round trip).
    pub one_way: bool,
    /// The peer is another person's device (device to device, over the local
    /// network or by file): both are devices whose scopes overlap, and each
    /// side sends only what lies in both.
    pub device_peer: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: 512,
            max_batch_bytes: 512 * 1024,
            first_batch_bytes: FIRST_BATCH_BYTES,
            slowest_link_bytes_per_sec: SLOWEST_LINK_BYTES_PER_SEC,
            max_in_flight: 2,
            ack_timeout_ms: 20_000,
            hello_timeout_ms: 30_000,
            one_way: false,
            device_peer: false,
        }
    }
}

/// What this replica brings to a session besides its ledger.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The county CA's key: grants are verified against it.
    pub ca: ed25519_dalek::VerifyingKey,
    /// This replica's own grant and key; its own changes are signed with it.
    pub own: Option<(SignedGrant, SigningKey)>,
    /// The scope the peer's certificate allows: a hello claiming more is refused.
    pub peer_scope_limit: Option<AdminCode>,
}

/// Why a session ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent bytes that do not decode.
    #[error("bad frame from peer: {0}")]
    Decode(#[from] DecodeError),
    /// The peer sent a message out of turn.
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    /// No common protocol version.
    #[error("peer speaks protocol versions {min}..={max}, this build {PROTOCOL_VERSION}")]
    Version {
        /// The peer's oldest.
        min: u8,
        /// The peer's newest.
        max: u8,
    },
    /// The peer's hello claims a scope its certificate does not allow.
    #[error("peer claims scope {claimed}, its certificate allows {allowed}")]
    Unauthorized {
        /// What the hello said.
        claimed: String,
        /// What the certificate says.
        allowed: String,
    },
    /// The peer ended the session.
    #[error("peer ended the session: {code:?}: {text}")]
    Peer {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        text: String,
    },
    /// A push went unacknowledged too long.
    #[error("no acknowledgement for {ms} ms")]
    TimedOut {
        /// How long it waited.
        ms: i64,
    },
    /// The local ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A message could not be encoded (a bug: batches are sized to fit).
    #[error("cannot encode message: {0}")]
    Encode(#[from] wire::EncodeError),
}

/// Something the caller may want to show or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer said hello; its identity is now known.
    Connected(PeerInfo),
    /// A push from the peer was committed and acknowledged.
    Received {
        /// Changes applied.
        applied: u32,
        /// Changes already held.
        duplicates: u32,
        /// Changes waiting for dependencies.
        pending: u32,
        /// Changes refused here.
        refused: u32,
    },
    /// The peer acknowledged one of our pushes.
    Acked {
        /// Changes in that push.
        sent: u32,
        /// Changes it refused, with reasons.
        refused: Vec<Refused>,
    },
    /// Positions were lost on one side; recovery by digest ran.
    Recovered {
        /// Changes sent because the peer lacked them.
        sent: u32,
    },
    /// Both sides have sent everything and nothing is in flight.
    CaughtUp,
    /// What became of a county policy the parent sent (child side).
    Policy(PolicyOutcome),
    /// How far the peer's clock is from ours: its clock minus ours when its
    /// `Policy` frame arrived (so a device behind its server sees a positive
    /// value on the server, a negative one on the device). A device corrects
    /// its own time by it (see `Ledger::note_parent_clock`).
    PeerClock {
        /// The peer's clock minus ours, in ms (transit time included).
        peer_minus_ours_ms: i64,
    },
}

/// What a child did with a policy its parent sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// It was newer and is now in force.
    Installed {
        /// The version before.
        previous: u64,
        /// The version now in force.
        version: u64,
    },
    /// It was not newer than the one in force.
    Stale {
        /// The version offered.
        offered: u64,
        /// The version in force.
        current: u64,
    },
    /// It is not the county CA's (forged, altered, unsigned, another
    /// county's) or does not read: refused, never installed.
    Refused {
        /// The version the frame claimed.
        claimed: u64,
        /// Why, in words.
        reason: String,
    },
}

/// Running totals of a session, for `fq sync`'s summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Changes sent in acknowledged pushes.
    pub sent: u64,
    /// Changes received and newly applied here.
    pub received: u64,
    /// Changes received that were already held.
    pub duplicates: u64,
    /// Our changes the peer refused.
    pub refused_by_peer: u64,
    /// Peer changes refused here.
    pub refused_here: u64,
    /// Bytes of frames sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// About how many changes the parent said it would send in this session (0: it did not
    /// say: a version 1 or 2 parent, or the child side of nothing).
    pub to_receive: u64,
    /// Cases that went whole, as their documents, in a first sync (version 4): sent by a
    /// parent, or received and read by a child.
    pub whole_cases: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's hello.
    Hello,
    /// Exchanging pushes.
    Streaming,
    /// Answering a child's read-only inspection.
    Inspecting,
    /// Ended; nothing more is sent or accepted.
    Closed,
}

#[derive(Debug)]
struct InFlight {
    batch: u64,
    sent_at: Timestamp,
    changes: u32,
    /// The push's frame length.
    bytes: usize,
    /// Bytes of this push and of the pushes still in flight before it: what
    /// had to cross the link before its ack could come.
    bytes_through: usize,
}

/// A sync session with one peer.
#[derive(Debug)]
pub struct Session {
    side: Side,
    cfg: SessionConfig,
    creds: Credentials,
    state: State,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    started: Timestamp,
    peer: Option<PeerInfo>,
    // Our log, going to the peer.
    next_seq: i64,
    in_flight: VecDeque<InFlight>,
    next_batch: u64,
    /// Change bytes for the next push: follows the link's rate.
    batch_bytes: usize,
    log_exhausted: bool,
    sent_done: bool,
    grants_sent: BTreeSet<[u8; 32]>,
    /// Set while a digest we sent awaits the peer's `Want`: the log position
    /// to resume from once the wanted changes are sent.
    recovery_resume: Option<LogPosition>,
    /// A position read past without a push (everything in between was
    /// skipped), still to be told to the peer.
    unsent_position: Option<LogPosition>,
    /// Whether we sent our digest in this session (at most once).
    digest_sent: bool,
    /// Changes sent so far for the peer's `Want`s.
    recovered: u32,
    // The peer's log, coming to us.
    peer_done: bool,
    /// Digest parts received so far, while the peer recovers towards us.
    digest_in: Vec<(CaseId, Hash)>,
    /// Set once a push had a change refused for a reason that may pass (its
    /// signer's grant had not arrived): the peer's position stays where it
    /// was for the rest of the session, so that later pushes cannot carry it
    /// past that change, and the next session sends it again.
    position_held: bool,
    caught_up_reported: bool,
    stats: Stats,
    error: Option<String>,
    /// The peer's log head, as its hello and its last `Done` said.
    peer_log_head: Option<i64>,
    /// Whether the peer's own grant (the first it sends) has been seen.
    peer_grant_seen: bool,
    /// Whether the peer opened a read-only inspection.
    inspecting: bool,
    /// The digest of the inspected scope, computed once per inspection.
    inspected: Option<Vec<(CaseId, Hash)>>,
    /// Child: whether it announced its policy, and whether the parent answered.
    policy_announced: bool,
    policy_answered: bool,
    /// Parent: the policy version the child holds, once it said, and the
    /// newest version sent to it in this session.
    peer_policy: Option<u64>,
    /// The protocol version both sides speak, once the peer said hello (1 before).
    version: u8,
    /// Hashes of the changes sent in this session: a change goes once per
    /// session, however many passes (urgent first, then the log) reach it.
    sent: BTreeSet<Hash>,
    /// This replica's own scope, read at the peer's hello.
    own_scope: Option<AdminCode>,
    /// Changes of urgent cases still to push ahead of the log.
    urgent: VecDeque<OutgoingChange>,
    /// Whether the urgent cases after the current position were read.
    urgent_read: bool,
    /// Parent, in a child's first sync (version 4): the cases still to send whole, as their
    /// documents, before the urgent and log passes (which then skip what they carried).
    whole: VecDeque<CaseId>,
}

impl Session {
    /// Starts a session. A child queues its hello at once; a parent waits
    /// for the child's. `expected_peer` is the peer this replica last synced
    /// with on this link, if any: its saved position goes into the hello.
    pub fn new(
        side: Side,
        ledger: &Ledger,
        creds: Credentials,
        cfg: SessionConfig,
        expected_peer: Option<crate::case::ReplicaId>,
        now: Timestamp,
    ) -> Result<Self, SessionError> {
        let batch_bytes = cfg.first_batch_bytes.min(cfg.max_batch_bytes).max(1);
        let mut s = Self {
            side,
            cfg,
            creds,
            state: State::Hello,
            decoder: FrameDecoder::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            started: now,
            peer: None,
            next_seq: 0,
            in_flight: VecDeque::new(),
            next_batch: 1,
            batch_bytes,
            log_exhausted: false,
            sent_done: false,
            grants_sent: BTreeSet::new(),
            recovery_resume: None,
            unsent_position: None,
            digest_sent: false,
            recovered: 0,
            peer_done: false,
            digest_in: Vec::new(),
            position_held: false,
            caught_up_reported: false,
            stats: Stats::default(),
            error: None,
            peer_log_head: None,
            peer_grant_seen: false,
            inspecting: false,
            inspected: None,
            policy_announced: false,
            policy_answered: false,
            peer_policy: None,
            version: 1,
            whole: VecDeque::new(),
            sent: BTreeSet::new(),
            urgent: VecDeque::new(),
            urgent_read: false,
            own_scope: None,
        };
        if side == Side::Child {
            s.send_hello(ledger, expected_peer)?;
        }
        Ok(s)
    }

    /// Claims no position for what the peer sends from now on (its pushes may not follow on
    /// from what this replica holds of its log: a sync file written against a position this
    /// replica has lost): the changes are taken, the position stays, and the acks say so.
    pub fn hold_position(&mut self) {
        self.position_held = true;
    }

    /// The peer, once it has said hello.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Totals so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The peer's log head, as its hello and its last `Done` said.
    pub fn peer_log_head(&self) -> Option<i64> {
        self.peer_log_head
    }

    /// Whether this is a parent answering a read-only inspection: nothing was
    /// or will be written.
    pub fn is_inspection(&self) -> bool {
        self.inspecting
    }

    /// Whether the session has ended (see [`Session::close_reason`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the session ended badly, if it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether everything has been exchanged and acknowledged both ways.
    pub fn is_caught_up(&self) -> bool {
        self.state == State::Streaming
            && self.sent_done
            && self.peer_done
            && self.in_flight.is_empty()
            && self.recovery_resume.is_none()
            && (!self.policy_announced || self.policy_answered)
    }

    /// Child: whether this side will never need to send anything more in this session, so a
    /// dialer may finish its stream now and hang up once the rest arrives. It has sent its
    /// Done, the parent's Done has come (the parent pushes nothing more that needs an Ack in
    /// this session: what it pushed came before its Done, and its acks are queued), and no
    /// digest has gone either way (a recovery may still ask for `Want` frames).
    pub fn is_finished_sending(&self) -> bool {
        self.side == Side::Child
            && self.state == State::Streaming
            && self.sent_done
            && self.peer_done
            && !self.digest_sent
            && self.digest_in.is_empty()
            && self.recovery_resume.is_none()
    }

    /// Sends the child the policy in force if it is newer than what the child
    /// holds (and than what was sent it): call when this replica installed a
    /// newer policy while the session is open. A no-op on a child side, and
    /// before the child said which version it holds.
    pub fn offer_policy(&mut self, ledger: &Ledger, now: Timestamp) -> Result<(), SessionError> {
        if self.side != Side::Parent || self.state != State::Streaming {
            return Ok(());
        }
        let Some(theirs) = self.peer_policy else { return Ok(()) };
        let in_force = ledger.policy();
        if let Some(signed) = in_force.signed()
            && in_force.version() > theirs
        {
            self.peer_policy = Some(in_force.version());
            let msg = Message::Policy { now, version: in_force.version(), signed: Some(signed.as_bytes().to_vec()) };
            self.send(&msg)?;
        }
        Ok(())
    }

    /// The parent's answer to a child's announcement, or a newer policy.
    fn receive_policy(
        &mut self,
        ledger: &mut Ledger,
        peer_now: Timestamp,
        version: u64,
        signed: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<(), SessionError> {
        match self.side {
            Side::Parent => {
                // A child's announcement: its clock, and the version it holds.
                // A policy never goes up the tree: a body from a child is ignored.
                self.events.push_back(Event::PeerClock { peer_minus_ours_ms: peer_now.0.saturating_sub(now.0) });
                let mine = ledger.policy();
                let newer = mine.signed().filter(|_| mine.version() > version).map(|s| s.as_bytes().to_vec());
                self.peer_policy = Some(if newer.is_some() { mine.version() } else { version });
                self.send(&Message::Policy { now, version: mine.version(), signed: newer })
            }
            Side::Child => {
                if !self.policy_answered {
                    // The first answer is the one to the announcement: the
                    // parent's clock as it answered, a moment ago.
                    self.policy_answered = true;
                    // Another person's device is no authority on the time (its
                    // clock may be the wrong one), and a file's clock reading is
                    // as old as the file, hours or days by the time it is read:
                    // only a parent server's, live, corrects ours (ADR 34).
                    if !self.cfg.device_peer && !self.cfg.one_way {
                        ledger.note_parent_clock(peer_now, now)?;
                    }
                    self.events.push_back(Event::PeerClock { peer_minus_ours_ms: peer_now.0.saturating_sub(now.0) });
                }
                let Some(bytes) = signed else { return Ok(()) };
                let outcome = match ledger.install_policy(&bytes, &self.creds.ca) {
                    Ok(PolicyInstall::Installed { previous, version }) => {
                        PolicyOutcome::Installed { previous, version }
                    }
                    Ok(PolicyInstall::Stale { offered, current }) => PolicyOutcome::Stale { offered, current },
                    Err(LedgerError::Policy(e)) => PolicyOutcome::Refused { claimed: version, reason: e.to_string() },
                    Err(e) => return Err(e.into()),
                };
                self.events.push_back(Event::Policy(outcome));
                Ok(())
            }
        }
    }

    /// Feeds bytes received from the peer. Call whenever the stream yields
    /// data; then drain [`Session::poll_transmit`] and [`Session::poll_event`].
    pub fn handle_input(&mut self, ledger: &mut Ledger, bytes: &[u8], now: Timestamp) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.stats.bytes_in += bytes.len() as u64;
        let r = (|| {
            self.decoder.push(bytes)?;
            while let Some(msg) = self.decoder.next()? {
                self.handle_message(ledger, msg, now)?;
                if self.state == State::Closed {
                    break;
                }
            }
            self.pump(ledger, now)
        })();
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let f = self.transmit.pop_front()?;
        self.stats.bytes_out += f.len() as u64;
        Some(f)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.cfg.one_way {
            return None;
        }
        match self.state {
            State::Closed => None,
            State::Hello => Some(Timestamp(self.started.0 + self.cfg.hello_timeout_ms)),
            State::Streaming => self.in_flight.front().map(|f| Timestamp(f.sent_at.0 + self.ack_allowance_ms(f))),
            // Queries come when the child asks; QUIC's idle timeout ends a dead one.
            State::Inspecting => None,
        }
    }

    /// How long a push may wait for its ack: the watchdog, plus the time its
    /// bytes (and those ahead of it) take on the slowest link we serve.
    fn ack_allowance_ms(&self, push: &InFlight) -> i64 {
        let rate = u64::from(self.cfg.slowest_link_bytes_per_sec.max(1));
        let crossing = u64::try_from(push.bytes_through).unwrap_or(u64::MAX).saturating_mul(1000) / rate;
        self.cfg.ack_timeout_ms.saturating_add(i64::try_from(crossing).unwrap_or(i64::MAX))
    }

    /// Sizes the next push after `push` was acknowledged at `now`: so that it
    /// crosses in a quarter of the watchdog at the rate this one did, growing
    /// at most twofold per ack.
    fn follow_rate(&mut self, push: &InFlight, now: Timestamp) {
        let took_ms = now.0.saturating_sub(push.sent_at.0).max(1);
        let budget_ms = (self.cfg.ack_timeout_ms / WATCHDOG_SHARE).max(1);
        let through = i64::try_from(push.bytes_through).unwrap_or(i64::MAX);
        let fits = through.saturating_mul(budget_ms) / took_ms;
        let fits = usize::try_from(fits).unwrap_or(usize::MAX);
        let floor = MIN_BATCH_BYTES.min(self.cfg.max_batch_bytes);
        self.batch_bytes = fits.min(self.batch_bytes.saturating_mul(2)).min(self.cfg.max_batch_bytes).max(floor);
    }

    /// Checks the watchdogs. An expired one ends the session.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), SessionError> {
        if let Some(at) = self.poll_timeout()
            && now >= at
        {
            let ms = match (self.state, self.in_flight.front()) {
                (State::Streaming, Some(push)) => self.ack_allowance_ms(push),
                (State::Hello, _) => self.cfg.hello_timeout_ms,
                _ => self.cfg.ack_timeout_ms,
            };
            let e = SessionError::TimedOut { ms };
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Tells the session the local log grew (an edit, or changes from another
    /// peer): it resumes pushing.
    pub fn notify_local_changes(&mut self, ledger: &mut Ledger, now: Timestamp) -> Result<(), SessionError> {
        if self.state != State::Streaming {
            return Ok(());
        }
        self.log_exhausted = false;
        self.sent_done = false;
        self.caught_up_reported = false;
        self.urgent_read = false;
        let r = self.pump(ledger, now);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// Ends the session, telling the peer why.
    pub fn close(&mut self, code: ErrorCode, text: &str) {
        if self.state == State::Closed {
            return;
        }
        if let Ok(frame) = wire::encode(&Message::Error { code, text: wire::clip_text(text) }) {
            self.transmit.push_back(frame);
        }
        self.state = State::Closed;
    }

    fn fail(&mut self, e: &SessionError) {
        if self.state == State::Closed {
            return;
        }
        self.error = Some(e.to_string());
        let code = match e {
            SessionError::Decode(DecodeError::FrameTooLarge { .. }) => ErrorCode::TooLarge,
            SessionError::Decode(_) | SessionError::Unexpected(_) => ErrorCode::BadFrame,
            SessionError::Version { .. } => ErrorCode::UnsupportedVersion,
            SessionError::Unauthorized { .. } => ErrorCode::Unauthorized,
            _ => ErrorCode::Internal,
        };
        match e {
            // The peer already ended it; nothing to say.
            SessionError::Peer { .. } => self.state = State::Closed,
            _ => self.close(code, &e.to_string()),
        }
    }

    fn send(&mut self, msg: &Message) -> Result<(), SessionError> {
        self.transmit.push_back(wire::encode_with(msg, self.version)?);
        Ok(())
    }

    /// The protocol version in use (1 until the peer's hello is read).
    pub fn version(&self) -> u8 {
        self.version
    }

    fn send_hello(&mut self, ledger: &Ledger, peer: Option<crate::case::ReplicaId>) -> Result<(), SessionError> {
        let me = ledger.identity();
        let have = match peer {
            Some(p) => {
                ledger.peer(p)?.map_or(LogPosition::START, |r| LogPosition { seq: r.their_seq, hash: r.their_hash })
            }
            None => LogPosition::START,
        };
        let hello = Message::Hello {
            replica: me.replica,
            tier: me.tier,
            scope: me.scope.clone(),
            log_head: ledger.log_head()?,
            have,
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        };
        self.send(&hello)
    }

    fn handle_message(&mut self, ledger: &mut Ledger, msg: Message, now: Timestamp) -> Result<(), SessionError> {
        match (self.state, msg) {
            (_, Message::Error { code, text }) => {
                self.error = Some(format!("peer: {text}"));
                self.state = State::Closed;
                Err(SessionError::Peer { code, text })
            }
            (State::Hello, Message::Inspect { replica, tier, scope, min_version, max_version })
                if self.side == Side::Parent =>
            {
                self.version = self.check_peer(ledger, tier, &scope, min_version, max_version)?;
                self.own_scope = Some(ledger.identity().scope.clone());
                let peer = PeerInfo { replica, tier, scope };
                self.send_hello(ledger, None)?;
                self.state = State::Inspecting;
                self.inspecting = true;
                self.events.push_back(Event::Connected(peer.clone()));
                self.peer = Some(peer);
                Ok(())
            }
            (State::Inspecting, Message::SumsQuery { bits }) => {
                let digest = self.inspected_digest(ledger)?;
                let sums = audit::bucket_sums(digest, bits);
                self.send(&Message::Sums { bits, sums })
            }
            (State::Inspecting, Message::CasesQuery { bits, buckets }) => {
                let wanted: BTreeSet<u32> = buckets.into_iter().collect();
                let entries = audit::cases_in_buckets(self.inspected_digest(ledger)?, bits, &wanted);
                let parts = entries.chunks(MAX_DIGEST_ENTRIES).count().max(1);
                if entries.is_empty() {
                    self.send(&Message::Digest { part: 0, last: true, entries: Vec::new() })?;
                }
                for (i, chunk) in entries.chunks(MAX_DIGEST_ENTRIES).enumerate() {
                    let part = u32::try_from(i).unwrap_or(u32::MAX);
                    self.send(&Message::Digest { part, last: i + 1 == parts, entries: chunk.to_vec() })?;
                }
                Ok(())
            }
            (State::Inspecting, Message::ChangesQuery { cases }) => {
                let scope = self.peer_scope()?;
                for case in cases {
                    for frame in audit::change_lists(ledger, case, &scope)? {
                        self.send(&frame)?;
                    }
                }
                self.send(&Message::Done { log_head: ledger.log_head()? })
            }
            (State::Hello, Message::Hello { replica, tier, scope, have, min_version, max_version, log_head }) => {
                self.version = self.check_peer(ledger, tier, &scope, min_version, max_version)?;
                self.own_scope = Some(ledger.identity().scope.clone());
                let peer = PeerInfo { replica, tier, scope };
                self.peer_log_head = Some(log_head);
                if self.side == Side::Parent {
                    self.send_hello(ledger, Some(replica))?;
                }
                self.state = State::Streaming;
                self.events.push_back(Event::Connected(peer.clone()));
                self.peer = Some(peer);
                if self.side == Side::Child {
                    // Which policy we hold, and our clock: the parent answers
                    // with its own, and the policy itself if it is newer.
                    let version = ledger.policy().version();
                    self.send(&Message::Policy { now, version, signed: None })?;
                    self.policy_announced = true;
                }
                self.send_own_grant()?;
                self.start_from(ledger, have)?;
                self.plan_first_sync(ledger, have)?;
                self.send_outlook(ledger)
            }
            (State::Streaming, Message::Outlook { changes }) if self.side == Side::Child => {
                self.stats.to_receive = changes;
                Ok(())
            }
            (State::Streaming, Message::Grant { bytes }) => {
                // A grant that does not verify is ignored: changes signed by
                // its key are refused as unknown signers and reported back.
                // A grant held already, byte for byte, was verified when it was kept.
                let held = trust::claimed_key(&bytes)
                    .map(|k| ledger.grant(&k))
                    .transpose()?
                    .flatten()
                    .filter(|g| g.bytes == bytes)
                    .map(|g| g.signer);
                let key = match held {
                    Some(key) => Some(key),
                    None => match SignedGrant::decode(&bytes, &self.creds.ca) {
                        Ok(g) => Some(ledger.add_grant(&g)?.signer),
                        Err(_) => None,
                    },
                };
                // The peer sends its own grant first, before any push: it
                // names the peer in the audit (a relay, a device).
                if let Some(key) = key
                    && !std::mem::replace(&mut self.peer_grant_seen, true)
                    && let Some(peer) = self.peer.clone()
                {
                    ledger.record_peer_grant(&peer, &key)?;
                }
                Ok(())
            }
            (State::Streaming, Message::Push { batch, upto, envelopes }) => {
                let changes = envelopes
                    .into_iter()
                    .map(|e| IncomingChange {
                        case: e.case,
                        bytes: e.change,
                        signer: e.signer,
                        signature: e.signature.map(|s| s.to_vec()),
                    })
                    .collect();
                self.receive_push(ledger, batch, upto, changes)
            }
            (State::Streaming, Message::Cases { batch, cases }) if self.version >= 4 && self.side == Side::Child => {
                self.receive_cases(ledger, batch, cases)
            }
            (State::Streaming, Message::Pack { batch, upto, runs }) if self.version >= 2 => {
                let changes = runs.into_iter().flat_map(incoming_run).collect();
                self.receive_push(ledger, batch, upto, changes)
            }
            (State::Streaming, Message::Ack { batch, upto, refused, .. }) => {
                self.receive_ack(ledger, batch, upto, refused, now)
            }
            (State::Streaming, Message::Digest { last, entries, .. }) => {
                if self.digest_in.len() + entries.len() > 64 * MAX_DIGEST_ENTRIES {
                    return Err(SessionError::Unexpected("oversized digest"));
                }
                self.digest_in.extend(entries);
                if last {
                    self.answer_digest(ledger)?;
                }
                Ok(())
            }
            (State::Streaming, Message::Want { cases }) => self.send_wanted(ledger, cases, now),
            (State::Streaming, Message::Done { log_head }) => {
                self.peer_done = true;
                self.peer_log_head = Some(log_head);
                Ok(())
            }
            (State::Streaming, Message::Policy { now: peer_now, version, signed }) => {
                self.receive_policy(ledger, peer_now, version, signed, now)
            }
            (_, other) => Err(SessionError::Unexpected(other.name())),
        }
    }

    /// Checks a peer's hello (or inspection): a common version, a scope its
    /// certificate allows, and the tree's shape (a child dials its parent,
    /// which must cover it).
    fn check_peer(
        &self,
        ledger: &Ledger,
        tier: Tier,
        scope: &AdminCode,
        min_version: u8,
        max_version: u8,
    ) -> Result<u8, SessionError> {
        let Some(version) = wire::negotiate_version(min_version, max_version) else {
            return Err(SessionError::Version { min: min_version, max: max_version });
        };
        if let Some(limit) = &self.creds.peer_scope_limit
            && !limit.contains(scope)
        {
            return Err(SessionError::Unauthorized { claimed: scope.to_string(), allowed: limit.to_string() });
        }
        let me = ledger.identity();
        // A child dials its parent: the parent must cover the child. Two
        // devices meeting must share their area, one inside the other's.
        let fits = match self.side {
            _ if self.cfg.device_peer => {
                tier == Tier::Device
                    && me.tier == Tier::Device
                    && (scope.contains(&me.scope) || me.scope.contains(scope))
            }
            Side::Child => scope.contains(&me.scope) && tier != Tier::Device,
            Side::Parent => me.scope.contains(scope),
        };
        if !fits {
            return Err(SessionError::Unauthorized {
                claimed: format!("{} {scope}", tier.code()),
                allowed: me.scope.to_string(),
            });
        }
        Ok(version)
    }

    /// The digest of the inspecting child's scope, read once per inspection.
    fn inspected_digest(&mut self, ledger: &Ledger) -> Result<&[(CaseId, Hash)], SessionError> {
        if self.inspected.is_none() {
            let scope = self.peer_scope()?;
            self.inspected = Some(ledger.digest(&scope)?);
        }
        Ok(self.inspected.as_deref().unwrap_or_default())
    }

    /// Tells a child how many changes are coming (version 3, in a live session): what our log
    /// holds after its position in its scope. Nothing when a recovery digest went instead.
    fn send_outlook(&mut self, ledger: &Ledger) -> Result<(), SessionError> {
        if self.side != Side::Parent || self.version < 3 || self.cfg.one_way || self.digest_sent {
            return Ok(());
        }
        let scope = self.peer_scope()?;
        let changes = ledger.count_changes_after(self.next_seq, &scope)?;
        self.send(&Message::Outlook { changes })
    }

    fn send_own_grant(&mut self) -> Result<(), SessionError> {
        if let Some((grant, _)) = &self.creds.own {
            let key = grant.grant.public_key;
            let bytes = grant.bytes.clone();
            self.grants_sent.insert(key);
            self.send(&Message::Grant { bytes })?;
        }
        Ok(())
    }

    /// Decides where our log resumes for this peer, given what it claims to hold.
    fn start_from(&mut self, ledger: &mut Ledger, have: LogPosition) -> Result<(), SessionError> {
        let ours = ledger.log_hash(have.seq)?;
        if have.seq >= 0 && ours == Some(have.hash) {
            self.next_seq = have.seq;
            return Ok(());
        }
        if self.cfg.one_way {
            // No round trip for a digest: send the peer's scope from the start
            // (what it holds is a no-op there).
            self.next_seq = 0;
            return Ok(());
        }
        // The peer's idea of our log does not match it: one side was restored
        // or rebuilt. Send a digest of our cases in its scope; it will ask for
        // what it lacks. Afterwards we resume from our current head.
        let head = ledger.log_head()?;
        let resume = LogPosition { seq: head, hash: ledger.log_hash(head)?.unwrap_or([0; 32]) };
        self.next_seq = head;
        self.send_digest(ledger, resume)
    }

    /// Sends our digest for the peer's scope and pauses pushing until the
    /// peer says what it wants; then pushes continue from `resume`.
    fn send_digest(&mut self, ledger: &mut Ledger, resume: LogPosition) -> Result<(), SessionError> {
        let scope = self.peer_scope()?;
        let digest = ledger.digest(&scope)?;
        let parts = digest.chunks(MAX_DIGEST_ENTRIES).count().max(1);
        if digest.is_empty() {
            self.send(&Message::Digest { part: 0, last: true, entries: Vec::new() })?;
        }
        for (i, chunk) in digest.chunks(MAX_DIGEST_ENTRIES).enumerate() {
            let part = u32::try_from(i).unwrap_or(u32::MAX);
            self.send(&Message::Digest { part, last: i + 1 == parts, entries: chunk.to_vec() })?;
        }
        self.digest_sent = true;
        self.recovery_resume = Some(resume);
        Ok(())
    }

    /// What this side sends the peer: the peer's scope, or for another
    /// person's device the part both cover (the narrower of the two).
    fn peer_scope(&self) -> Result<AdminCode, SessionError> {
        let peer =
            self.peer.as_ref().map(|p| p.scope.clone()).ok_or(SessionError::Unexpected("message before hello"))?;
        match &self.own_scope {
            Some(mine) if self.cfg.device_peer && peer.contains(mine) => Ok(mine.clone()),
            _ => Ok(peer),
        }
    }

    fn answer_digest(&mut self, ledger: &mut Ledger) -> Result<(), SessionError> {
        let theirs: BTreeMap<CaseId, Hash> = std::mem::take(&mut self.digest_in).into_iter().collect();
        let my_scope = ledger.identity().scope.clone();
        let mine: BTreeMap<CaseId, Hash> = ledger.digest(&my_scope)?.into_iter().collect();
        let mut want = Vec::new();
        for (case, their_hash) in &theirs {
            if mine.get(case) != Some(their_hash) {
                let heads = if mine.contains_key(case) { ledger.heads(*case)? } else { Vec::new() };
                want.push((*case, heads.into_iter().take(MAX_HEADS_PER_CASE).collect::<Vec<_>>()));
            }
        }
        // Each entry may carry up to MAX_HEADS_PER_CASE heads; this many
        // entries always fit one frame (256 × 2 KiB ≈ 0.5 MiB). An empty
        // `Want` ends the list.
        for chunk in want.chunks(WANT_CASES_PER_FRAME) {
            self.send(&Message::Want { cases: chunk.to_vec() })?;
        }
        self.send(&Message::Want { cases: Vec::new() })?;
        // A digest means the peer found our idea of its log wrong, so it was
        // restored or we were: we may lack what it got from us earlier and
        // will not resend (it skips echoes). Offer our digest in turn, once.
        if !self.digest_sent {
            let resume = LogPosition { seq: self.next_seq, hash: ledger.log_hash(self.next_seq)?.unwrap_or([0; 32]) };
            self.send_digest(ledger, resume)?;
        }
        Ok(())
    }

    fn send_wanted(
        &mut self,
        ledger: &mut Ledger,
        cases: Vec<(CaseId, Vec<Hash>)>,
        now: Timestamp,
    ) -> Result<(), SessionError> {
        let Some(resume) = self.recovery_resume else {
            return Err(SessionError::Unexpected("want"));
        };
        if cases.is_empty() {
            // The end of the peer's list: the last recovery push carries the
            // position we resume from, so once it is committed the peer holds
            // everything up to it.
            self.push_batch(ledger, Vec::new(), Some(resume), now)?;
            self.recovery_resume = None;
            self.events.push_back(Event::Recovered { sent: self.recovered });
            self.recovered = 0;
            return Ok(());
        }
        let mut sent = 0u32;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for (case, heads) in cases {
            for change in ledger.changes_missing(case, &heads)? {
                if !batch.is_empty()
                    && (bytes + change.bytes.len() > self.batch_bytes || batch.len() >= MAX_ENVELOPES_PER_PUSH)
                {
                    sent += self.push_batch(ledger, std::mem::take(&mut batch), None, now)?;
                    bytes = 0;
                }
                bytes += change.bytes.len();
                batch.push(change);
            }
        }
        if !batch.is_empty() {
            sent += self.push_batch(ledger, batch, None, now)?;
        }
        self.recovered += sent;
        Ok(())
    }

    /// A child that holds nothing of our log yet (a new or replaced device, a rebuilt
    /// township) gets the cases of its scope whole, as their documents, instead of change by
    /// change (version 4, ADR 45): a document encodes a case's changes column by column, in
    /// about half the bytes. Only a server sends them: a device signs its own changes as it
    /// pushes them, and a document carries only signatures already kept.
    fn plan_first_sync(&mut self, ledger: &Ledger, have: LogPosition) -> Result<(), SessionError> {
        if self.side != Side::Parent
            || self.version < 4
            || self.cfg.one_way
            || self.cfg.device_peer
            || have.seq != 0
            || self.digest_sent
            || ledger.identity().tier == Tier::Device
        {
            return Ok(());
        }
        let scope = self.peer_scope()?;
        self.whole = ledger.cases_urgent_first(&scope)?.into();
        Ok(())
    }

    /// Sends the cases of a child's first sync whole, while there is room in flight: each
    /// message about a push's worth of documents, a push that moves no position. A case that
    /// cannot go whole ([`Ledger::case_document`]) is left to the log pass.
    fn send_whole_cases(&mut self, ledger: &mut Ledger, room: usize, now: Timestamp) -> Result<(), SessionError> {
        let skip = self.peer.as_ref().map(|p| p.replica);
        while self.in_flight.len() < room && !self.whole.is_empty() {
            let mut cases = Vec::new();
            let mut bytes = 0usize;
            let mut count = 0usize;
            while let Some(case) = self.whole.pop_front() {
                let Some((document, hashes)) = ledger.case_document(case, skip)? else { continue };
                // Documents and vouchers (at most 72 bytes each) must fit one block.
                let size = document.document.len() + 72 * document.vouchers.len() + 64;
                if !cases.is_empty() && bytes + size > wire::MAX_PACK_BYTES - 64 * 1024 {
                    self.whole.push_front(case);
                    break;
                }
                bytes += size;
                count += hashes.len();
                self.sent.extend(hashes);
                cases.push(document);
                if bytes >= self.batch_bytes || cases.len() >= wire::MAX_PACK_TABLE {
                    break;
                }
            }
            if cases.is_empty() {
                break;
            }
            let signers: BTreeSet<[u8; 32]> = cases.iter().flat_map(|c| &c.vouchers).filter_map(|v| v.signer).collect();
            for k in signers {
                self.offer_grant(ledger, k)?;
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            self.stats.whole_cases += cases.len() as u64;
            let frame = wire::encode_with(&Message::Cases { batch, cases }, self.version)?;
            self.queue_push(frame, batch, u32::try_from(count).unwrap_or(u32::MAX), now);
        }
        Ok(())
    }

    /// Sends pushes while there is room in flight and log to read.
    fn pump(&mut self, ledger: &mut Ledger, now: Timestamp) -> Result<(), SessionError> {
        if self.state != State::Streaming || self.recovery_resume.is_some() {
            return Ok(());
        }
        let scope = self.peer_scope()?;
        let skip = self.peer.as_ref().map(|p| p.replica);
        if !self.whole.is_empty() {
            self.send_whole_cases(ledger, self.cfg.max_in_flight, now)?;
            if !self.whole.is_empty() {
                return Ok(());
            }
        }
        // Urgent cases first (high risk, then escalations waiting), in pushes
        // that move no position: the log pass below skips what they carried.
        if !self.urgent_read {
            self.urgent_read = true;
            let urgent = ledger.urgent_outgoing(self.next_seq, &scope, skip, URGENT_ROWS)?;
            // The read replaces what is still queued, never adds to it: the
            // queue came from the same position (the log pass waits for it to
            // empty), so this read holds it already. Added, a change still
            // queued went twice in one push, and the peer refused the run signed
            // over both copies while the next push's position covered it: an
            // acknowledged change lost.
            self.urgent = self.unsent(urgent).into();
        }
        let room = if self.cfg.one_way { usize::MAX } else { self.cfg.max_in_flight };
        while self.in_flight.len() < room && !self.urgent.is_empty() {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(next) = self.urgent.front() {
                let inside_run = batch.last().is_some_and(|c: &OutgoingChange| {
                    matches!(c.signature.as_deref().and_then(Provenance::from_blob), Some(Provenance::RunMember { .. }))
                });
                if !batch.is_empty()
                    && !inside_run
                    && (bytes + next.bytes.len() > self.batch_bytes || batch.len() >= MAX_ENVELOPES_PER_PUSH / 2)
                {
                    break;
                }
                bytes += next.bytes.len();
                if let Some(c) = self.urgent.pop_front() {
                    batch.push(c);
                }
            }
            self.push_batch(ledger, batch, None, now)?;
        }
        if !self.urgent.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() < room && !self.log_exhausted {
            let mut out = ledger.outgoing(self.next_seq, &scope, skip, self.cfg.max_batch_rows, self.batch_bytes)?;
            self.log_exhausted = out.exhausted;
            if out.upto == self.next_seq {
                break;
            }
            self.next_seq = out.upto;
            let upto = LogPosition { seq: out.upto, hash: out.upto_hash };
            // Sent earlier in this session (ahead of the log, or as part of a run).
            out.changes = self.unsent(out.changes);
            if out.changes.is_empty() && !out.exhausted {
                // Nothing here for this peer (other villages' changes): read
                // on without a push and its ack, which for a new device on a
                // busy township would be hundreds of empty round trips and
                // fsyncs. The position travels with the next push.
                self.unsent_position = Some(upto);
                continue;
            }
            self.unsent_position = None;
            self.push_batch(ledger, out.changes, Some(upto), now)?;
        }
        if self.log_exhausted && self.in_flight.len() < room {
            // The tail was all skipped: one empty push moves the peer's position.
            if let Some(upto) = self.unsent_position.take() {
                self.push_batch(ledger, Vec::new(), Some(upto), now)?;
            }
        }
        // Done goes once everything is queued, ahead of the acks: the peer reads it after the
        // pushes, so it holds them by then, and a dialing device can finish its stream a round
        // trip sooner (`is_finished_sending`).
        if self.log_exhausted && self.unsent_position.is_none() && !self.sent_done {
            self.sent_done = true;
            let head = ledger.log_head()?;
            self.send(&Message::Done { log_head: head })?;
        }
        if self.is_caught_up() && !self.caught_up_reported {
            self.caught_up_reported = true;
            self.events.push_back(Event::CaughtUp);
        }
        Ok(())
    }

    /// Signs our own changes, sends grants the peer may lack, then the push:
    /// a [`Message::Pack`] of signed runs in version 2, else a [`Message::Push`].
    fn push_batch(
        &mut self,
        ledger: &mut Ledger,
        changes: Vec<OutgoingChange>,
        upto: Option<LogPosition>,
        now: Timestamp,
    ) -> Result<u32, SessionError> {
        self.sent.extend(changes.iter().map(|c| c.hash));
        if self.version >= 2 {
            let runs = self.runs(ledger, changes)?;
            let count = runs.iter().map(|r| r.changes.len()).sum::<usize>();
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let batch = self.next_batch;
            self.next_batch += 1;
            let frame = wire::encode_with(&Message::Pack { batch, upto, runs }, self.version)?;
            self.queue_push(frame, batch, count, now);
            return Ok(count);
        }
        if changes.iter().any(|c| {
            matches!(
                c.signature.as_deref().and_then(Provenance::from_blob),
                Some(Provenance::RunHead { .. } | Provenance::RunMember { .. })
            )
        }) {
            // Version 1 has one signature per change; a run's cannot be split.
            return Err(SessionError::Version { min: 1, max: 1 });
        }
        let mut envelopes = Vec::with_capacity(changes.len());
        for c in changes {
            let (signer, signature) = match (c.signer, c.signature.as_deref()) {
                (Some(k), Some(sig)) => (Some(k), <[u8; 64]>::try_from(sig).ok()),
                (None, _) if c.received_from.is_none() => match &self.creds.own {
                    Some((grant, key)) => (Some(grant.grant.public_key), Some(trust::sign_change(key, &c.hash))),
                    None => (None, None),
                },
                _ => (None, None),
            };
            if let Some(k) = signer
                && !self.grants_sent.contains(&k)
            {
                if let Some(g) = ledger.grant(&k)? {
                    self.send(&Message::Grant { bytes: g.bytes })?;
                }
                self.grants_sent.insert(k);
            }
            envelopes.push(Envelope { case: c.case, signer, signature, change: c.bytes });
        }
        let count = u32::try_from(envelopes.len()).unwrap_or(u32::MAX);
        let batch = self.next_batch;
        self.next_batch += 1;
        let frame = wire::encode_with(&Message::Push { batch, upto, envelopes }, self.version)?;
        self.queue_push(frame, batch, count, now);
        Ok(count)
    }

    /// `changes` without what this session already sent: a change alone is
    /// dropped if it went out, a signed run (its members, then its head) only
    /// if all of it did, since its signature covers the whole set.
    fn unsent(&self, changes: Vec<OutgoingChange>) -> Vec<OutgoingChange> {
        let mut out = Vec::with_capacity(changes.len());
        let mut run: Vec<OutgoingChange> = Vec::new();
        for c in changes {
            match c.signature.as_deref().and_then(Provenance::from_blob) {
                Some(Provenance::RunMember { .. }) => run.push(c),
                Some(Provenance::RunHead { .. }) => {
                    run.push(c);
                    let group = std::mem::take(&mut run);
                    if group.iter().any(|g| !self.sent.contains(&g.hash)) {
                        out.extend(group);
                    }
                }
                _ => {
                    out.append(&mut run);
                    if !self.sent.contains(&c.hash) {
                        out.push(c);
                    }
                }
            }
        }
        out.append(&mut run);
        out
    }

    fn queue_push(&mut self, frame: Vec<u8>, batch: u64, count: u32, now: Timestamp) {
        debug_assert!(frame.len() <= MAX_FRAME_BYTES + 4);
        let bytes = frame.len();
        let bytes_through = self.in_flight.iter().fold(bytes, |sum, f| sum.saturating_add(f.bytes));
        self.transmit.push_back(frame);
        self.in_flight.push_back(InFlight { batch, sent_at: now, changes: count, bytes, bytes_through });
    }

    /// Groups a batch into signed runs, sending first the grants the peer may
    /// lack. Our own changes to one case become one run under one signature;
    /// a relayed run goes as it came (its members, then its head); any other
    /// change is a run of one with its own signature.
    fn runs(&mut self, ledger: &mut Ledger, changes: Vec<OutgoingChange>) -> Result<Vec<Run>, SessionError> {
        let mut runs: Vec<Run> = Vec::new();
        // Our own changes, per case, in log order: signed at the end, as one run each.
        let mut own: BTreeMap<CaseId, (usize, Vec<Hash>)> = BTreeMap::new();
        let mut members: Vec<Vec<u8>> = Vec::new();
        for c in changes {
            let provenance = c.signature.as_deref().and_then(Provenance::from_blob);
            let mine = c.signer.is_none() && c.received_from.is_none() && self.creds.own.is_some();
            if let Some(k) = c.signer {
                self.offer_grant(ledger, k)?;
            }
            match provenance {
                _ if mine => {
                    // Once per run: a run signed over two copies of a change is
                    // refused whole by the peer.
                    if own.get(&c.case).is_some_and(|(_, hashes)| hashes.contains(&c.hash)) {
                        continue;
                    }
                    let full = own
                        .get(&c.case)
                        .is_some_and(|(at, _)| runs.get(*at).is_none_or(|r| r.changes.len() >= MAX_RUN_CHANGES));
                    if full || !own.contains_key(&c.case) {
                        own.insert(c.case, (runs.len(), Vec::new()));
                        runs.push(Run { case: c.case, signer: None, signature: None, changes: Vec::new() });
                    }
                    if let Some((at, hashes)) = own.get_mut(&c.case)
                        && let Some(run) = runs.get_mut(*at)
                    {
                        hashes.push(c.hash);
                        run.changes.push(c.bytes);
                    }
                }
                Some(Provenance::RunMember { .. }) => members.push(c.bytes),
                Some(Provenance::RunHead { signature, .. }) => {
                    let mut changes = std::mem::take(&mut members);
                    changes.push(c.bytes);
                    runs.push(Run { case: c.case, signer: c.signer, signature: Some(signature), changes });
                }
                Some(Provenance::Single(sig)) => {
                    runs.push(Run { case: c.case, signer: c.signer, signature: Some(sig), changes: vec![c.bytes] });
                }
                None => runs.push(Run { case: c.case, signer: c.signer, signature: None, changes: vec![c.bytes] }),
            }
        }
        if let Some((grant, key)) = &self.creds.own {
            let public = grant.grant.public_key;
            for (case, (at, hashes)) in own {
                let Some(run) = runs.get_mut(at) else { continue };
                let signature = match hashes.as_slice() {
                    [one] => trust::sign_change(key, one),
                    many => trust::sign_run(key, case.as_bytes(), many),
                };
                run.signer = Some(public);
                run.signature = Some(signature);
            }
            if !self.grants_sent.contains(&public) {
                self.grants_sent.insert(public);
                let bytes = grant.bytes.clone();
                self.send(&Message::Grant { bytes })?;
            }
        }
        Ok(runs.into_iter().filter(|r| !r.changes.is_empty()).collect())
    }

    /// Sends the grant of `signer` unless this session already did.
    fn offer_grant(&mut self, ledger: &Ledger, signer: [u8; 32]) -> Result<(), SessionError> {
        if self.grants_sent.insert(signer)
            && let Some(g) = ledger.grant(&signer)?
        {
            self.send(&Message::Grant { bytes: g.bytes })?;
        }
        Ok(())
    }

    /// Whole cases of a first sync: each document's changes, with what vouches for them, go
    /// through the same checks as a push's. A document that does not load, or whose vouchers
    /// do not fit it, is refused whole and audited; the rest of the message is taken.
    fn receive_cases(&mut self, ledger: &mut Ledger, batch: u64, cases: Vec<CaseDocument>) -> Result<(), SessionError> {
        let Some(peer) = self.peer.clone() else { return Err(SessionError::Unexpected("cases")) };
        let mut changes = Vec::new();
        let mut broken = Vec::new();
        for case in cases {
            let id = case.case;
            match incoming_document(case) {
                Ok(mut c) => {
                    self.stats.whole_cases += 1;
                    changes.append(&mut c);
                }
                Err(why) => broken.push(ledger.refuse_input(&peer, id, RefuseReason::Malformed, &why)?),
            }
        }
        self.apply_and_ack(ledger, batch, None, changes, broken)
    }

    fn receive_push(
        &mut self,
        ledger: &mut Ledger,
        batch: u64,
        upto: Option<LogPosition>,
        changes: Vec<IncomingChange>,
    ) -> Result<(), SessionError> {
        self.apply_and_ack(ledger, batch, upto, changes, Vec::new())
    }

    /// Applies a push's changes (with `broken`, what was refused before it could be read as
    /// changes) and acknowledges it once committed.
    fn apply_and_ack(
        &mut self,
        ledger: &mut Ledger,
        batch: u64,
        upto: Option<LogPosition>,
        changes: Vec<IncomingChange>,
        broken: Vec<crate::ledger::Refusal>,
    ) -> Result<(), SessionError> {
        let Some(peer) = self.peer.clone() else { return Err(SessionError::Unexpected("push")) };
        let upto = upto.filter(|_| !self.position_held);
        let mut report = ledger.apply_from_peer(&peer, changes, upto)?;
        report.refused.extend(broken);
        // The ledger kept the old position for this push (see
        // `Ledger::apply_from_peer`); keep it for the pushes that follow too.
        self.position_held |= report.refused.iter().any(|r| r.reason == RefuseReason::UnknownSigner);
        let refused: Vec<Refused> = report
            .refused
            .iter()
            .take(ACK_REFUSALS)
            .map(|r| Refused {
                case: r.case,
                hash: r.hash.unwrap_or([0; 32]),
                reason: wire_reason(r.reason),
                text: clip(&r.detail, ACK_TEXT_BYTES),
            })
            .collect();
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        self.stats.received += report.applied as u64;
        self.stats.duplicates += report.duplicates as u64;
        self.stats.refused_here += report.refused.len() as u64;
        self.events.push_back(Event::Received {
            applied: n(report.applied),
            duplicates: n(report.duplicates),
            pending: n(report.pending),
            refused: n(report.refused.len()),
        });
        self.send(&Message::Ack {
            batch,
            // No position is claimed while it is held: the sender must not
            // count these changes as taken.
            upto: upto.filter(|_| !self.position_held).map_or(0, |p| p.seq),
            applied: n(report.applied),
            duplicates: n(report.duplicates),
            pending: n(report.pending),
            refused,
        })
    }

    fn receive_ack(
        &mut self,
        ledger: &mut Ledger,
        batch: u64,
        upto: i64,
        refused: Vec<Refused>,
        now: Timestamp,
    ) -> Result<(), SessionError> {
        let Some(pos) = self.in_flight.iter().position(|f| f.batch == batch) else {
            if self.cfg.one_way
                && let Some(peer) = self.peer.clone()
            {
                // An answer file acknowledges the pushes of the file it answers
                // (another session): the peer committed up to `upto` of our log.
                if upto > 0 {
                    ledger.record_ack(&peer, upto)?;
                }
                self.stats.refused_by_peer += refused.len() as u64;
                self.events.push_back(Event::Acked { sent: 0, refused });
            }
            // Otherwise an ack for a batch of an earlier session, or a duplicate: harmless.
            return Ok(());
        };
        let Some(done) = self.in_flight.remove(pos) else { return Ok(()) };
        self.follow_rate(&done, now);
        if upto >= 0
            && let Some(peer) = self.peer.clone()
        {
            ledger.record_ack(&peer, upto)?;
            if crate::faults::on(crate::faults::Bug::PeerAckCountsUpstream)
                && self.cfg.device_peer
                && let Some(up) = ledger.upstream()?
            {
                // The injected bug: another device's ack taken for the township's.
                ledger.record_ack(&PeerInfo { replica: up, ..peer }, upto)?;
            }
        }
        self.stats.sent += u64::from(done.changes);
        self.stats.refused_by_peer += refused.len() as u64;
        self.events.push_back(Event::Acked { sent: done.changes, refused });
        Ok(())
    }
}

/// The changes of a received run, each with the provenance the ledger keeps:
/// a run of one carries its own signature; in a longer run the last change is
/// the head, holding the run signature and the other members' hashes, and
/// every other change names the head.
fn incoming_run(run: Run) -> Vec<IncomingChange> {
    let Run { case, signer, signature, changes } = run;
    let Some(signature) = signature else {
        return changes.into_iter().map(|bytes| IncomingChange { case, bytes, signer, signature: None }).collect();
    };
    if changes.len() == 1 {
        return changes
            .into_iter()
            .map(|bytes| IncomingChange { case, bytes, signer, signature: Some(signature.to_vec()) })
            .collect();
    }
    let hashes: Vec<Hash> = changes.iter().map(|c| crate::doc::chunk_hash(c)).collect();
    let head = hashes.last().copied().unwrap_or([0; 32]);
    let mut others: Vec<Hash> = hashes.iter().take(hashes.len().saturating_sub(1)).copied().collect();
    others.sort_unstable();
    let head_blob = Provenance::RunHead { signature, others }.to_blob();
    let member_blob = Provenance::RunMember { head }.to_blob();
    let last = changes.len() - 1;
    changes
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| IncomingChange {
            case,
            bytes,
            signer,
            signature: Some(if i == last { head_blob.clone() } else { member_blob.clone() }),
        })
        .collect()
}

/// The changes of a case sent whole, each with the provenance the ledger keeps (as a Pack's
/// runs give it: [`incoming_run`]), or why the case is refused whole.
fn incoming_document(case: CaseDocument) -> Result<Vec<IncomingChange>, String> {
    let CaseDocument { case, document, vouchers } = case;
    let changes = crate::doc::document_changes(&document).map_err(|e| e.to_string())?;
    if changes.len() != vouchers.len() {
        return Err(format!("{} changes but {} signatures", changes.len(), vouchers.len()));
    }
    let hash_at = |i: u16| changes.get(usize::from(i)).map(|(h, _)| *h);
    let mut out = Vec::with_capacity(changes.len());
    for ((_, bytes), Voucher { signer, vouch }) in changes.iter().zip(vouchers) {
        let provenance = match vouch {
            Vouch::Unsigned => None,
            Vouch::Single(sig) => Some(Provenance::Single(sig)),
            Vouch::RunHead { signature, others } => {
                let mut others: Vec<Hash> =
                    others.into_iter().map(hash_at).collect::<Option<_>>().ok_or("a run member outside the case")?;
                others.sort_unstable();
                Some(Provenance::RunHead { signature, others })
            }
            Vouch::RunMember { head } => {
                Some(Provenance::RunMember { head: hash_at(head).ok_or("a run head outside the case")? })
            }
        };
        out.push(IncomingChange { case, bytes: bytes.clone(), signer, signature: provenance.map(|p| p.to_blob()) });
    }
    Ok(out)
}

fn wire_reason(r: RefuseReason) -> wire::RefuseReason {
    match r {
        RefuseReason::Malformed => wire::RefuseReason::Malformed,
        RefuseReason::BadSignature => wire::RefuseReason::BadSignature,
        RefuseReason::UnknownSigner => wire::RefuseReason::UnknownSigner,
        RefuseReason::OutOfScope => wire::RefuseReason::OutOfScope,
        RefuseReason::Role => wire::RefuseReason::Role,
        RefuseReason::Quarantined => wire::RefuseReason::Quarantined,
    }
}
