//! The binary wire format of the sync protocol: frames and the messages they carry.
//!
//! # Frame layout
//! | bytes | field | notes |
//! | --- | --- | --- |
//! | 4 | payload length | `u32` big-endian, at most [`MAX_FRAME_BYTES`]; the prefix is not counted |
//! | 1 | protocol version | [`PROTOCOL_VERSION`] |
//! | 1 | message kind | 1 hello, 2 grant, 3 push, 4 ack, 5 digest, 6 want, 7 done, 8 error; a read-only inspection (ADR 22): 9 inspect, 10 sums query, 11 sums, 12 cases query, 13 changes query, 14 change list, 20 policy; version 2 adds 30 pack |
//! | rest | body | the message's fields in order, nothing after them |
//!
//! Integers are big-endian and fixed width. A string is `u16 length | UTF-8`, a byte string
//! `u32 length | bytes`, a list `u32 count | items`. Identifiers are raw bytes of fixed width:
//! case and replica ids 16, change hashes 32, ed25519 public keys 32, signatures 64.
//! `docs/PROTOCOL.md` has a byte-level table for every message and the session flow.
//!
//! # Invariants
//! - Peer input never panics and never allocates more than it has already sent: a length or a
//!   count is checked against its limit *and* against the bytes that remain before any buffer
//!   is sized from it, so a 20-byte frame claiming four million envelopes costs nothing.
//! - [`FrameDecoder`] reads the length prefix first and refuses an oversize frame before it
//!   buffers a byte of its body; it never holds more than one partial frame.
//! - [`encode`] refuses to build any frame that [`decode`] would refuse, so a message that
//!   encodes always round-trips.
//! - After an error the byte stream is out of step: the decoder stays poisoned.

use std::collections::VecDeque;
use std::fmt;

use crate::case::{AdminCode, CaseId, ReplicaId};
use crate::clock::Timestamp;
use crate::doc::Hash;
use crate::ledger::Tier;
pub use crate::policy::MAX_POLICY_BYTES;

pub use crate::doc::MAX_CHANGE_BYTES;

/// The protocol version this build speaks best. Version 2 adds [`Message::Pack`], the
/// compressed push with signed runs (`docs/PROTOCOL.md`); version 3 the [`Message::Outlook`];
/// version 4 [`Message::Cases`], whole cases for a first sync. Every other message is the same.
pub const PROTOCOL_VERSION: u8 = 4;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// Largest payload of one frame, in bytes (the 4-byte length prefix not counted).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest opaque device grant, in bytes.
pub const MAX_GRANT_BYTES: usize = 4 * 1024;
/// Most envelopes in one push.
pub const MAX_ENVELOPES_PER_PUSH: usize = 4096;
/// Most (case, heads hash) entries in one digest part.
pub const MAX_DIGEST_ENTRIES: usize = 16_384;
/// Most cases in one want.
pub const MAX_WANT_CASES: usize = 4096;
/// Most heads listed for one case in a want.
pub const MAX_HEADS_PER_CASE: usize = 64;
/// Longest string (error and refusal text, scope), in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Most refusals in one ack.
pub const MAX_REFUSALS: usize = 4096;
/// Most bits of case id an inspection buckets cases by (65,536 buckets).
pub const MAX_SUM_BITS: u8 = 16;
/// Most buckets asked for in one cases query.
pub const MAX_QUERY_BUCKETS: usize = 16_384;
/// Most cases asked for in one changes query.
pub const MAX_QUERY_CASES: usize = 4096;
/// Most changes listed in one change list (a case with more is listed in several).
pub const MAX_LISTED_CHANGES: usize = 8192;
/// Most bytes the block of a [`Message::Pack`] may inflate to: the same as a frame, so a pack
/// never holds more than a version-1 push could.
pub const MAX_PACK_BYTES: usize = MAX_FRAME_BYTES;
/// Most changes one signed run of a [`Message::Pack`] holds.
pub const MAX_RUN_CHANGES: usize = 512;
/// Most distinct signers or cases one pack names in its tables.
pub const MAX_PACK_TABLE: usize = 4096;
/// Bytes of a pack payload before its compressed block (version, kind, batch, upto flag,
/// upto seq and chain, block length).
pub const PACK_FIXED_BYTES: usize = 1 + 1 + 8 + 1 + 8 + 8 + 4;

/// Bytes of the length prefix in front of every payload.
pub const PREFIX_BYTES: usize = 4;
/// Bytes of a push payload before its first envelope, at most (version, kind, batch,
/// upto flag, upto seq and hash, count).
///
/// A push fits one frame when `PUSH_FIXED_BYTES + Σ envelope.wire_len() <= MAX_FRAME_BYTES`.
pub const PUSH_FIXED_BYTES: usize = 1 + 1 + 8 + 1 + 8 + 32 + 4;

const KIND_HELLO: u8 = 1;
const KIND_GRANT: u8 = 2;
const KIND_PUSH: u8 = 3;
const KIND_ACK: u8 = 4;
const KIND_DIGEST: u8 = 5;
const KIND_WANT: u8 = 6;
const KIND_DONE: u8 = 7;
const KIND_ERROR: u8 = 8;
const KIND_INSPECT: u8 = 9;
const KIND_SUMS_QUERY: u8 = 10;
const KIND_SUMS: u8 = 11;
const KIND_CASES_QUERY: u8 = 12;
const KIND_CHANGES_QUERY: u8 = 13;
const KIND_CHANGE_LIST: u8 = 14;
/// The county policy and the sender's clock (ADR 30). Numbered apart from
/// the change-carrying kinds, whose encoding may be reworked on its own.
const KIND_POLICY: u8 = 20;
const KIND_PACK: u8 = 30;
/// How many changes the parent is about to send (version 3).
const KIND_OUTLOOK: u8 = 31;
/// Whole cases as their documents, for a first sync (version 4).
const KIND_CASES: u8 = 32;

const FLAG_SIGNER: u8 = 0b01;
const FLAG_SIGNATURE: u8 = 0b10;

// Smallest encoding of each list item: what a count is checked against before a `Vec` is sized.
/// case 16, flags 1, change length 4.
const MIN_ENVELOPE_BYTES: usize = 16 + 1 + 4;
/// case 16, hash 32, reason 1, text length 2.
const MIN_REFUSED_BYTES: usize = 16 + 32 + 1 + 2;
/// case 16, hash 32.
const DIGEST_ENTRY_BYTES: usize = 16 + 32;
/// case 16, head count 4.
const MIN_WANT_CASE_BYTES: usize = 16 + 4;
/// hash 32, time 8, device 8, message length 2.
const MIN_LISTED_CHANGE_BYTES: usize = 32 + 8 + 8 + 2;
const HASH_BYTES: usize = 32;

/// Frames are reassembled in a buffer that is released, rather than kept, when it grew past
/// this: a session that once received a 1 MiB frame should not hold 1 MiB for its lifetime.
const RETAIN_BUFFER_BYTES: usize = 64 * 1024;

const ZERO_HASH: Hash = [0; 32];

/// A position in one replica's change log: its sequence number and the hash of the change there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The `log_seq` (0: before the first change).
    pub seq: i64,
    /// The hash of the change at `seq`; all zero when `seq` is 0.
    pub hash: Hash,
}

impl LogPosition {
    /// The position before the first change.
    pub const START: LogPosition = LogPosition { seq: 0, hash: ZERO_HASH };
}

/// One change in transit, with its provenance; relays forward it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The case the change claims to belong to.
    pub case: CaseId,
    /// The authoring device's ed25519 public key, if known.
    pub signer: Option<[u8; 32]>,
    /// The author's ed25519 signature over the change hash, if any.
    pub signature: Option<[u8; 64]>,
    /// The raw Automerge change, at most [`MAX_CHANGE_BYTES`].
    pub change: Vec<u8>,
}

impl Envelope {
    /// Bytes this envelope takes inside a push payload, to pack pushes under [`MAX_FRAME_BYTES`].
    pub fn wire_len(&self) -> usize {
        MIN_ENVELOPE_BYTES
            + self.signer.map_or(0, |k| k.len())
            + self.signature.map_or(0, |s| s.len())
            + self.change.len()
    }
}

/// Changes of one case that travel under one signature, in a [`Message::Pack`].
///
/// With one change, `signature` is the author's signature over its hash, exactly as in an
/// [`Envelope`]. With more, it is a run signature ([`crate::trust::sign_run`]) over the case
/// and the sorted hashes of every change of the run, so one signature covers them all; a relay
/// forwards the run whole (docs/PROTOCOL.md, "Signed runs").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The case every change of the run belongs to.
    pub case: CaseId,
    /// The signing device's ed25519 public key, if known.
    pub signer: Option<[u8; 32]>,
    /// The signature over the run, if any.
    pub signature: Option<[u8; 64]>,
    /// The raw Automerge changes, at least one, at most [`MAX_RUN_CHANGES`], each at most
    /// [`MAX_CHANGE_BYTES`].
    pub changes: Vec<Vec<u8>>,
}

impl Run {
    /// Uncompressed bytes of this run's changes, to size packs.
    pub fn change_bytes(&self) -> usize {
        self.changes.iter().map(Vec::len).sum()
    }
}

/// Why a receiver refused one change of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The bytes are not a valid change for that case (1).
    Malformed,
    /// The signature does not verify (2).
    BadSignature,
    /// The signer is not a known device (3).
    UnknownSigner,
    /// The case lies outside the sender's or the author's scope (4).
    OutOfScope,
    /// The author's role may not make this change (5).
    Role,
    /// The author's certificate is revoked (6).
    Revoked,
    /// The change was quarantined (it crashed the parser, or is held for review) (7).
    Quarantined,
    /// Any other reason, and every code this build does not know (255).
    Other,
}

impl RefuseReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RefuseReason::Malformed => 1,
            RefuseReason::BadSignature => 2,
            RefuseReason::UnknownSigner => 3,
            RefuseReason::OutOfScope => 4,
            RefuseReason::Role => 5,
            RefuseReason::Revoked => 6,
            RefuseReason::Quarantined => 7,
            RefuseReason::Other => 255,
        }
    }

    /// The reason a wire code names; unknown codes are [`RefuseReason::Other`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => RefuseReason::Malformed,
            2 => RefuseReason::BadSignature,
            3 => RefuseReason::UnknownSigner,
            4 => RefuseReason::OutOfScope,
            5 => RefuseReason::Role,
            6 => RefuseReason::Revoked,
            7 => RefuseReason::Quarantined,
            _ => RefuseReason::Other,
        }
    }
}

/// One change of a push that the receiver will not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The case the change claimed.
    pub case: CaseId,
    /// The change's hash (all zero when the bytes were too broken to hash).
    pub hash: Hash,
    /// Why, for the machine.
    pub reason: RefuseReason,
    /// Why, for a person; at most [`MAX_TEXT_BYTES`] (see [`clip_text`]).
    pub text: String,
}

/// One change of a case as an inspection lists it: enough to name it for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChange {
    /// The change hash.
    pub hash: Hash,
    /// Its device time (ms since the epoch).
    pub at: i64,
    /// The device that made it (the first 8 bytes of its actor).
    pub device: [u8; 8],
    /// Its message (`fq1|op|role|name`), at most [`MAX_TEXT_BYTES`].
    pub message: String,
}

/// Why a session is being ended, sent in [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame could not be decoded, or a message came out of turn (1).
    BadFrame,
    /// No common protocol version (2).
    UnsupportedVersion,
    /// The peer may not sync this scope, or its grant is refused (3).
    Unauthorized,
    /// Something exceeded a limit (4).
    TooLarge,
    /// The sender failed on its own side; retry later (5).
    Internal,
    /// The sender is shutting down; retry later (6).
    ShuttingDown,
    /// The sender is too busy to take this session now (its server-wide limits are reached);
    /// retry later (7).
    Busy,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::Unauthorized => 3,
            ErrorCode::TooLarge => 4,
            ErrorCode::Internal => 5,
            ErrorCode::ShuttingDown => 6,
            ErrorCode::Busy => 7,
            ErrorCode::Other(code) => code,
        }
    }

    /// The error a wire code names. `Other` holding a known code decodes as that code.
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::Unauthorized,
            4 => ErrorCode::TooLarge,
            5 => ErrorCode::Internal,
            6 => ErrorCode::ShuttingDown,
            7 => ErrorCode::Busy,
            other => ErrorCode::Other(other),
        }
    }
}

/// One message of the sync protocol. `docs/PROTOCOL.md` says when each is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message of each side: who it is and where it stands.
    Hello {
        /// The sender's replica id.
        replica: ReplicaId,
        /// The sender's tier.
        tier: Tier,
        /// The division the sender holds (a device: its village; a server: its township or county).
        scope: AdminCode,
        /// The last position of the sender's own log (0: empty).
        log_head: i64,
        /// The last position of the *receiver's* log that the sender durably holds.
        have: LogPosition,
        /// The oldest protocol version the sender speaks (at least 1).
        min_version: u8,
        /// The newest protocol version the sender speaks (at least `min_version`).
        max_version: u8,
    },
    /// An opaque, CA-signed device grant, at most [`MAX_GRANT_BYTES`].
    Grant {
        /// The grant's bytes.
        bytes: Vec<u8>,
    },
    /// A batch of changes from the sender's log, oldest first.
    Push {
        /// The sender's batch number, echoed by the ack.
        batch: u64,
        /// The position of the sender's log this batch reaches, even when changes before it were
        /// filtered out (out of the receiver's scope), with the hash of the change there. `None`
        /// for a recovery batch, which moves no position.
        upto: Option<LogPosition>,
        /// The changes, at most [`MAX_ENVELOPES_PER_PUSH`].
        envelopes: Vec<Envelope>,
    },
    /// The receiver committed a push.
    Ack {
        /// The acknowledged batch.
        batch: u64,
        /// Its `upto`: the sender may resume after this position.
        upto: i64,
        /// Changes applied now.
        applied: u32,
        /// Changes already held.
        duplicates: u32,
        /// Changes kept until their dependencies arrive.
        pending: u32,
        /// Changes refused, at most [`MAX_REFUSALS`].
        refused: Vec<Refused>,
    },
    /// One part of a digest: case id → hash of its sorted heads, for recovery.
    Digest {
        /// The part number, from 0.
        part: u32,
        /// Whether this is the last part.
        last: bool,
        /// The entries, at most [`MAX_DIGEST_ENTRIES`].
        entries: Vec<(CaseId, Hash)>,
    },
    /// The cases the receiver of a digest lacks or differs on, each with its own heads
    /// (empty when it lacks the case).
    Want {
        /// The cases, at most [`MAX_WANT_CASES`], each with at most [`MAX_HEADS_PER_CASE`] heads.
        cases: Vec<(CaseId, Vec<Hash>)>,
    },
    /// How many changes the parent is about to send in this session, about (it counts its
    /// log after the child's position in the child's scope; changes the child holds already
    /// are among them). Sent once, after the parent's Hello; version 3 or later. The child
    /// shows it as progress and relies on it for nothing else.
    Outlook {
        /// Changes to come.
        changes: u64,
    },
    /// The sender has nothing more to send now.
    Done {
        /// The sender's log head.
        log_head: i64,
    },
    /// The sender ends the session.
    Error {
        /// Why, for the machine.
        code: ErrorCode,
        /// Why, for a person; at most [`MAX_TEXT_BYTES`] (see [`clip_text`]).
        text: String,
    },
    /// A child's first message instead of [`Message::Hello`]: it asks for a
    /// read-only inspection of the parent's data in its scope (`fq audit
    /// compare`). The parent answers with its Hello and then only answers
    /// queries; neither side writes anything. An older parent does not know
    /// the kind and ends the session with `bad-frame`.
    Inspect {
        /// The sender's replica id.
        replica: ReplicaId,
        /// The sender's tier.
        tier: Tier,
        /// The division the sender holds, as in a Hello.
        scope: AdminCode,
        /// The oldest protocol version the sender speaks.
        min_version: u8,
        /// The newest protocol version the sender speaks.
        max_version: u8,
    },
    /// Asks for the bucket sums of the inspected scope at `bits`.
    SumsQuery {
        /// Cases are put in buckets by the first `bits` bits of their id, at most [`MAX_SUM_BITS`].
        bits: u8,
    },
    /// The bucket sums: for each of the `2^bits` buckets, the first 8 bytes of SHA-256 over
    /// its cases' (id, heads hash) pairs in id order; all zero for an empty bucket.
    Sums {
        /// The bits asked for.
        bits: u8,
        /// One sum per bucket, `2^bits` of them.
        sums: Vec<[u8; 8]>,
    },
    /// Asks for the (case id, heads hash) pairs of some buckets; the answer is [`Message::Digest`]
    /// parts, the last one marked.
    CasesQuery {
        /// The bucket width, as in the sums.
        bits: u8,
        /// The buckets, at most [`MAX_QUERY_BUCKETS`], each below `2^bits`.
        buckets: Vec<u32>,
    },
    /// Asks for the changes of some cases; the answer is one [`Message::ChangeList`] per case
    /// (or more for a very long case), then [`Message::Done`].
    ChangesQuery {
        /// The cases, at most [`MAX_QUERY_CASES`].
        cases: Vec<CaseId>,
    },
    /// The changes a replica holds of one case (none: it does not hold the case).
    ChangeList {
        /// The case.
        case: CaseId,
        /// Its number there (empty when it does not hold the case).
        number: String,
        /// The changes, at most [`MAX_LISTED_CHANGES`].
        changes: Vec<ListedChange>,
    },
    /// The county policy (after the hellos): a child announces the version
    /// it holds; the parent answers with its own version, and with the signed
    /// policy itself when it holds a newer one (again whenever it installs a
    /// newer one). Both carry the sender's clock, so a device learns how far
    /// off its own is.
    Policy {
        /// The sender's clock when it sent this.
        now: Timestamp,
        /// The policy version the sender holds (0: the built-in default).
        version: u64,
        /// The signed policy, at most [`MAX_POLICY_BYTES`]; only from a parent.
        signed: Option<Vec<u8>>,
    },
    /// Version 2's push: the same batch, position and changes as a [`Message::Push`], with
    /// each signer and case named once, one signature per run of one author's changes to a
    /// case, and the whole block DEFLATEd. Acknowledged by an [`Message::Ack`] like a push.
    Pack {
        /// The sender's batch number, echoed by the ack.
        batch: u64,
        /// As in [`Message::Push`]; only the first 8 bytes of its hash (the chain value) travel,
        /// the other 24 must be zero.
        upto: Option<LogPosition>,
        /// The runs, at most [`MAX_ENVELOPES_PER_PUSH`] changes in all.
        runs: Vec<Run>,
    },
    /// Version 4: whole cases as their documents, sent by a parent to a child that holds
    /// nothing of its log yet (a new or replaced device's first sync). Like a push that moves
    /// no position, acknowledged by an [`Message::Ack`] with `upto` 0.
    Cases {
        /// The sender's batch number, echoed by the ack.
        batch: u64,
        /// The cases, at most [`MAX_PACK_TABLE`], in at most [`MAX_PACK_BYTES`] uncompressed.
        cases: Vec<CaseDocument>,
    },
}

/// One case sent whole in a [`Message::Cases`]: its document, and what vouches for each of
/// its changes, in the order the document lists them ([`crate::doc::document_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseDocument {
    /// The case.
    pub case: CaseId,
    /// Automerge's uncompressed document of the case, at most
    /// [`crate::doc::MAX_DOCUMENT_BYTES`].
    pub document: Vec<u8>,
    /// One for each change of the document, in its order.
    pub vouchers: Vec<Voucher>,
}

/// What vouches for one change of a [`CaseDocument`]: who signed it, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    /// The signing device's ed25519 public key, if known.
    pub signer: Option<[u8; 32]>,
    /// The signature, or where in the document the signature of its run is.
    pub vouch: Vouch,
}

/// The provenance of a change kept by the sender ([`crate::trust::Provenance`]), with run
/// members named by their place in the case's document instead of their 32-byte hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vouch {
    /// Nothing vouches for it (it came unsigned).
    Unsigned,
    /// Its own signature.
    Single([u8; 64]),
    /// The head of a signed run: the run signature, and the other members' places.
    RunHead {
        /// The run signature.
        signature: [u8; 64],
        /// The places of the run's other changes in the document.
        others: Vec<u16>,
    },
    /// A member of the run whose head is at this place in the document.
    RunMember {
        /// The head's place.
        head: u16,
    },
}

impl Message {
    /// The message kind's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Grant { .. } => "grant",
            Message::Push { .. } => "push",
            Message::Ack { .. } => "ack",
            Message::Digest { .. } => "digest",
            Message::Want { .. } => "want",
            Message::Done { .. } => "done",
            Message::Outlook { .. } => "outlook",
            Message::Error { .. } => "error",
            Message::Inspect { .. } => "inspect",
            Message::SumsQuery { .. } => "sums query",
            Message::Sums { .. } => "sums",
            Message::CasesQuery { .. } => "cases query",
            Message::ChangesQuery { .. } => "changes query",
            Message::ChangeList { .. } => "change list",
            Message::Policy { .. } => "policy",
            Message::Pack { .. } => "pack",
            Message::Cases { .. } => "cases",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => KIND_HELLO,
            Message::Grant { .. } => KIND_GRANT,
            Message::Push { .. } => KIND_PUSH,
            Message::Ack { .. } => KIND_ACK,
            Message::Digest { .. } => KIND_DIGEST,
            Message::Want { .. } => KIND_WANT,
            Message::Done { .. } => KIND_DONE,
            Message::Outlook { .. } => KIND_OUTLOOK,
            Message::Error { .. } => KIND_ERROR,
            Message::Inspect { .. } => KIND_INSPECT,
            Message::SumsQuery { .. } => KIND_SUMS_QUERY,
            Message::Sums { .. } => KIND_SUMS,
            Message::CasesQuery { .. } => KIND_CASES_QUERY,
            Message::ChangesQuery { .. } => KIND_CHANGES_QUERY,
            Message::ChangeList { .. } => KIND_CHANGE_LIST,
            Message::Policy { .. } => KIND_POLICY,
            Message::Pack { .. } => KIND_PACK,
            Message::Cases { .. } => KIND_CASES,
        }
    }
}

/// The highest protocol version both this build and a peer announcing `their_min..=their_max`
/// speak, or `None` (the session then ends with [`ErrorCode::UnsupportedVersion`]).
pub fn negotiate_version(their_min: u8, their_max: u8) -> Option<u8> {
    let high = PROTOCOL_VERSION.min(their_max);
    let low = MIN_PROTOCOL_VERSION.max(their_min);
    (low <= high).then_some(high)
}

/// `text` cut at a character boundary to at most [`MAX_TEXT_BYTES`], so it always encodes.
pub fn clip_text(text: &str) -> String {
    let mut end = 0;
    for (at, c) in text.char_indices() {
        let next = at + c.len_utf8();
        if next > MAX_TEXT_BYTES {
            break;
        }
        end = next;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// Why a message could not be encoded. Nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A list holds more items than its limit.
    #[error("too many {what}: {count} > {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A string or byte string is longer than its limit.
    #[error("{what} too long: {len} bytes > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload would exceed [`MAX_FRAME_BYTES`]; split the message (fewer envelopes,
    /// refusals, entries or cases).
    #[error("frame too large: at least {len} bytes > {MAX_FRAME_BYTES}")]
    FrameTooLarge {
        /// The payload length reached when the limit was crossed (a lower bound).
        len: usize,
    },
    /// A field holds a value the protocol forbids (a negative log position, `min_version`
    /// above `max_version`, a non-zero hash at position 0).
    #[error("invalid {what}")]
    BadValue {
        /// Which field.
        what: &'static str,
    },
}

/// Why bytes from a peer could not be decoded. The session ends with [`ErrorCode::BadFrame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ended inside a field, or a count claims more items than the bytes left hold.
    #[error("{what} truncated")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A length prefix exceeds [`MAX_FRAME_BYTES`]; the body was not read.
    #[error("frame too large: {len} bytes > {MAX_FRAME_BYTES}")]
    FrameTooLarge {
        /// The announced payload length.
        len: usize,
    },
    /// The payload's version byte is not one this build decodes.
    #[error("unsupported protocol version {got}")]
    UnsupportedVersion {
        /// The version byte.
        got: u8,
    },
    /// The kind byte names no message.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A count exceeds its limit.
    #[error("too many {what}: {count} > {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// The announced count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A length exceeds its limit.
    #[error("{what} too long: {len} bytes > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string is not valid UTF-8.
    #[error("{what} is not valid utf-8")]
    BadUtf8 {
        /// Which field.
        what: &'static str,
    },
    /// A field holds a value the protocol forbids (unknown tier, bad scope, reserved flag bits,
    /// a negative log position, ...).
    #[error("invalid {what}")]
    BadValue {
        /// Which field.
        what: &'static str,
    },
    /// Bytes remain after the message's last field.
    #[error("{len} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// An earlier error left the stream out of step; this decoder will decode nothing more.
    #[error("decoder poisoned by an earlier error")]
    Poisoned,
}

/// Encodes `msg` as one whole frame, length prefix included, framed with the oldest version
/// that has its kind (1, or 2 for a [`Message::Pack`]).
///
/// Refuses (naming the limit) any frame that [`decode`] would refuse.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let version = match msg {
        Message::Pack { .. } => 2,
        Message::Outlook { .. } => 3,
        Message::Cases { .. } => 4,
        _ => 1,
    };
    encode_with(msg, version)
}

/// Encodes `msg` framed with the session's negotiated `version`. A Hello and an Error are
/// always framed with version 1 (their layout is frozen, so any peer reads them); a Pack needs
/// version 2 or later.
pub fn encode_with(msg: &Message, version: u8) -> Result<Vec<u8>, EncodeError> {
    let version = match msg {
        Message::Hello { .. } | Message::Error { .. } => 1,
        Message::Pack { .. } if version < 2 => return Err(EncodeError::BadValue { what: "pack needs version 2" }),
        Message::Cases { .. } if version < 4 => return Err(EncodeError::BadValue { what: "cases needs version 4" }),
        Message::Outlook { .. } if version < 3 => {
            return Err(EncodeError::BadValue { what: "outlook needs version 3" });
        }
        _ => version,
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(EncodeError::BadValue { what: "version" });
    }
    let mut w = Writer::new(msg.kind(), version);
    match msg {
        Message::Hello { replica, tier, scope, log_head, have, min_version, max_version } => {
            check_hello(*log_head, have, *min_version, *max_version).map_err(|what| EncodeError::BadValue { what })?;
            w.put(replica.as_bytes())?;
            w.u8(tier_code(*tier))?;
            w.string("scope", scope.as_str(), MAX_TEXT_BYTES)?;
            w.i64(*log_head)?;
            w.i64(have.seq)?;
            w.put(&have.hash)?;
            w.u8(*min_version)?;
            w.u8(*max_version)?;
        }
        Message::Grant { bytes } => w.bytes("grant", bytes, MAX_GRANT_BYTES)?,
        Message::Push { batch, upto, envelopes } => {
            w.u64(*batch)?;
            match upto {
                None => w.u8(0)?,
                Some(p) => {
                    check_position(p.seq, "push upto").map_err(|what| EncodeError::BadValue { what })?;
                    w.u8(1)?;
                    w.i64(p.seq)?;
                    w.put(&p.hash)?;
                }
            }
            w.count("envelopes", envelopes.len(), MAX_ENVELOPES_PER_PUSH)?;
            for e in envelopes {
                w.put(e.case.as_bytes())?;
                let flags = if e.signer.is_some() { FLAG_SIGNER } else { 0 }
                    | if e.signature.is_some() { FLAG_SIGNATURE } else { 0 };
                w.u8(flags)?;
                if let Some(key) = &e.signer {
                    w.put(key)?;
                }
                if let Some(sig) = &e.signature {
                    w.put(sig)?;
                }
                w.bytes("change", &e.change, MAX_CHANGE_BYTES)?;
            }
        }
        Message::Ack { batch, upto, applied, duplicates, pending, refused } => {
            check_position(*upto, "ack upto").map_err(|what| EncodeError::BadValue { what })?;
            w.u64(*batch)?;
            w.i64(*upto)?;
            w.u32(*applied)?;
            w.u32(*duplicates)?;
            w.u32(*pending)?;
            w.count("refusals", refused.len(), MAX_REFUSALS)?;
            for r in refused {
                w.put(r.case.as_bytes())?;
                w.put(&r.hash)?;
                w.u8(r.reason.code())?;
                w.string("refusal text", &r.text, MAX_TEXT_BYTES)?;
            }
        }
        Message::Digest { part, last, entries } => {
            w.u32(*part)?;
            w.u8(u8::from(*last))?;
            w.count("digest entries", entries.len(), MAX_DIGEST_ENTRIES)?;
            for (case, hash) in entries {
                w.put(case.as_bytes())?;
                w.put(hash)?;
            }
        }
        Message::Want { cases } => {
            w.count("wanted cases", cases.len(), MAX_WANT_CASES)?;
            for (case, heads) in cases {
                w.put(case.as_bytes())?;
                w.count("heads", heads.len(), MAX_HEADS_PER_CASE)?;
                for head in heads {
                    w.put(head)?;
                }
            }
        }
        Message::Done { log_head } => {
            check_position(*log_head, "log head").map_err(|what| EncodeError::BadValue { what })?;
            w.i64(*log_head)?;
        }
        Message::Outlook { changes } => w.u64(*changes)?,
        Message::Error { code, text } => {
            w.u16(code.code())?;
            w.string("error text", text, MAX_TEXT_BYTES)?;
        }
        Message::Inspect { replica, tier, scope, min_version, max_version } => {
            check_hello(0, &LogPosition::START, *min_version, *max_version)
                .map_err(|what| EncodeError::BadValue { what })?;
            w.put(replica.as_bytes())?;
            w.u8(tier_code(*tier))?;
            w.string("scope", scope.as_str(), MAX_TEXT_BYTES)?;
            w.u8(*min_version)?;
            w.u8(*max_version)?;
        }
        Message::SumsQuery { bits } => {
            check_bits(*bits).map_err(|what| EncodeError::BadValue { what })?;
            w.u8(*bits)?;
        }
        Message::Sums { bits, sums } => {
            check_bits(*bits).map_err(|what| EncodeError::BadValue { what })?;
            if sums.len() != 1 << bits {
                return Err(EncodeError::BadValue { what: "sums count" });
            }
            w.u8(*bits)?;
            w.count("sums", sums.len(), 1 << MAX_SUM_BITS)?;
            for sum in sums {
                w.put(sum)?;
            }
        }
        Message::CasesQuery { bits, buckets } => {
            check_bits(*bits).map_err(|what| EncodeError::BadValue { what })?;
            if buckets.iter().any(|b| u64::from(*b) >= 1 << bits) {
                return Err(EncodeError::BadValue { what: "bucket" });
            }
            w.u8(*bits)?;
            w.count("buckets", buckets.len(), MAX_QUERY_BUCKETS)?;
            for b in buckets {
                w.u32(*b)?;
            }
        }
        Message::ChangesQuery { cases } => {
            w.count("queried cases", cases.len(), MAX_QUERY_CASES)?;
            for case in cases {
                w.put(case.as_bytes())?;
            }
        }
        Message::ChangeList { case, number, changes } => {
            w.put(case.as_bytes())?;
            w.string("case number", number, MAX_TEXT_BYTES)?;
            w.count("listed changes", changes.len(), MAX_LISTED_CHANGES)?;
            for c in changes {
                w.put(&c.hash)?;
                w.i64(c.at)?;
                w.put(&c.device)?;
                w.string("change message", &c.message, MAX_TEXT_BYTES)?;
            }
        }
        Message::Policy { now, version, signed } => {
            w.i64(now.0)?;
            w.u64(*version)?;
            match signed {
                None => w.u8(0)?,
                Some(bytes) => {
                    w.u8(1)?;
                    w.bytes("policy", bytes, MAX_POLICY_BYTES)?;
                }
            }
        }
        Message::Pack { batch, upto, runs } => {
            w.u64(*batch)?;
            match upto {
                None => w.u8(0)?,
                Some(p) => {
                    check_position(p.seq, "pack upto").map_err(|what| EncodeError::BadValue { what })?;
                    let (chain, rest) = p.hash.split_at(8);
                    if rest.iter().any(|b| *b != 0) {
                        return Err(EncodeError::BadValue { what: "pack upto hash" });
                    }
                    w.u8(1)?;
                    w.i64(p.seq)?;
                    w.put(chain)?;
                }
            }
            let block = pack_block(runs)?;
            w.u32(u32::try_from(block.len()).unwrap_or(u32::MAX))?;
            w.put(&deflate(&block))?;
        }
        Message::Cases { batch, cases } => {
            w.u64(*batch)?;
            let block = cases_block(cases)?;
            w.u32(u32::try_from(block.len()).unwrap_or(u32::MAX))?;
            w.put(&deflate(&block))?;
        }
    }
    Ok(w.finish())
}

const VOUCH_UNSIGNED: u8 = 0;
const VOUCH_SINGLE: u8 = 1;
const VOUCH_RUN_HEAD: u8 = 2;
const VOUCH_RUN_MEMBER: u8 = 3;
/// Set in a voucher's tag when a signer index follows.
const VOUCH_SIGNER: u8 = 0b100;

/// The uncompressed block of a [`Message::Cases`]: the signer table, then each case (its id,
/// its document, its vouchers).
fn cases_block(cases: &[CaseDocument]) -> Result<Vec<u8>, EncodeError> {
    let too_many = |what, count, max| EncodeError::TooMany { what, count, max };
    if cases.is_empty() || cases.len() > MAX_PACK_TABLE {
        return Err(too_many("cases", cases.len(), MAX_PACK_TABLE));
    }
    let mut signers: Vec<[u8; 32]> = Vec::new();
    for v in cases.iter().flat_map(|c| &c.vouchers) {
        if let Some(k) = v.signer
            && !signers.contains(&k)
        {
            signers.push(k);
        }
    }
    if signers.len() > MAX_PACK_TABLE {
        return Err(too_many("pack signers", signers.len(), MAX_PACK_TABLE));
    }
    let index = |i: usize| u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(cases.iter().map(|c| c.document.len() + 72 * c.vouchers.len() + 24).sum());
    out.extend_from_slice(&index(signers.len()));
    signers.iter().for_each(|k| out.extend_from_slice(k));
    out.extend_from_slice(&index(cases.len()));
    for case in cases {
        if case.document.len() > crate::doc::MAX_DOCUMENT_BYTES {
            let max = crate::doc::MAX_DOCUMENT_BYTES;
            return Err(EncodeError::TooLong { what: "case document", len: case.document.len(), max });
        }
        if case.vouchers.is_empty() || case.vouchers.len() > crate::doc::MAX_DOCUMENT_CHANGES {
            return Err(too_many("vouchers", case.vouchers.len(), crate::doc::MAX_DOCUMENT_CHANGES));
        }
        out.extend_from_slice(case.case.as_bytes());
        put_uleb(&mut out, case.document.len());
        out.extend_from_slice(&case.document);
        put_uleb(&mut out, case.vouchers.len());
        for v in &case.vouchers {
            let kind = match v.vouch {
                Vouch::Unsigned => VOUCH_UNSIGNED,
                Vouch::Single(_) => VOUCH_SINGLE,
                Vouch::RunHead { .. } => VOUCH_RUN_HEAD,
                Vouch::RunMember { .. } => VOUCH_RUN_MEMBER,
            };
            out.push(kind | if v.signer.is_some() { VOUCH_SIGNER } else { 0 });
            if let Some(k) = &v.signer {
                out.extend_from_slice(&index(signers.iter().position(|s| s == k).unwrap_or(0)));
            }
            match &v.vouch {
                Vouch::Unsigned => {}
                Vouch::Single(sig) => out.extend_from_slice(sig),
                Vouch::RunHead { signature, others } => {
                    if others.is_empty() || others.len() > crate::doc::MAX_DOCUMENT_CHANGES {
                        return Err(too_many("run members", others.len(), crate::doc::MAX_DOCUMENT_CHANGES));
                    }
                    out.extend_from_slice(signature);
                    put_uleb(&mut out, others.len());
                    others.iter().for_each(|i| out.extend_from_slice(&i.to_be_bytes()));
                }
                Vouch::RunMember { head } => out.extend_from_slice(&head.to_be_bytes()),
            }
        }
        if out.len() > MAX_PACK_BYTES {
            return Err(EncodeError::TooLong { what: "cases block", len: out.len(), max: MAX_PACK_BYTES });
        }
    }
    Ok(out)
}

fn decode_cases(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let batch = r.u64("cases batch")?;
    let block = deflated_block(r, "cases block length")?;
    let mut b = Reader { buf: &block };
    let signers = signer_table(&mut b)?;
    // case id 16, document length 1, voucher count 1, one voucher 1.
    let case_count = r_count16(&mut b, "cases", 19)?;
    if case_count == 0 {
        return Err(DecodeError::BadValue { what: "cases" });
    }
    let mut cases = Vec::with_capacity(case_count);
    for _ in 0..case_count {
        let case = CaseId::from_bytes(b.array("case id")?);
        let len = b.uleb("case document")?;
        if len > crate::doc::MAX_DOCUMENT_BYTES {
            return Err(DecodeError::TooLong { what: "case document", len, max: crate::doc::MAX_DOCUMENT_BYTES });
        }
        let document = b.take(len, "case document")?.to_vec();
        let n = b.uleb("vouchers")?;
        if n == 0 || n > crate::doc::MAX_DOCUMENT_CHANGES {
            return Err(DecodeError::TooMany { what: "vouchers", count: n, max: crate::doc::MAX_DOCUMENT_CHANGES });
        }
        if n > b.buf.len() {
            return Err(DecodeError::Truncated { what: "vouchers" });
        }
        let mut vouchers = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = b.u8("voucher")?;
            if tag & !(VOUCH_SIGNER | 0b11) != 0 {
                return Err(DecodeError::BadValue { what: "voucher" });
            }
            let signer = if tag & VOUCH_SIGNER != 0 {
                let at = usize::from(b.u16("voucher signer")?);
                Some(*signers.get(at).ok_or(DecodeError::BadValue { what: "voucher signer" })?)
            } else {
                None
            };
            let vouch = match tag & 0b11 {
                VOUCH_UNSIGNED => Vouch::Unsigned,
                VOUCH_SINGLE => Vouch::Single(b.array("signature")?),
                VOUCH_RUN_HEAD => {
                    let signature = b.array("signature")?;
                    let m = b.uleb("run members")?;
                    if m == 0 || m > crate::doc::MAX_DOCUMENT_CHANGES {
                        let max = crate::doc::MAX_DOCUMENT_CHANGES;
                        return Err(DecodeError::TooMany { what: "run members", count: m, max });
                    }
                    if m.saturating_mul(2) > b.buf.len() {
                        return Err(DecodeError::Truncated { what: "run members" });
                    }
                    let mut others = Vec::with_capacity(m);
                    for _ in 0..m {
                        others.push(b.u16("run member")?);
                    }
                    Vouch::RunHead { signature, others }
                }
                _ => Vouch::RunMember { head: b.u16("run head")? },
            };
            vouchers.push(Voucher { signer, vouch });
        }
        cases.push(CaseDocument { case, document, vouchers });
    }
    b.finish()?;
    Ok(Message::Cases { batch, cases })
}

/// The uncompressed block of a pack: the signer and case tables, then the runs.
fn pack_block(runs: &[Run]) -> Result<Vec<u8>, EncodeError> {
    let mut signers: Vec<[u8; 32]> = Vec::new();
    let mut cases: Vec<CaseId> = Vec::new();
    let mut changes = 0usize;
    for run in runs {
        if let Some(k) = run.signer
            && !signers.contains(&k)
        {
            signers.push(k);
        }
        if !cases.contains(&run.case) {
            cases.push(run.case);
        }
        if run.changes.is_empty() || run.changes.len() > MAX_RUN_CHANGES {
            return Err(EncodeError::TooMany { what: "run changes", count: run.changes.len(), max: MAX_RUN_CHANGES });
        }
        changes += run.changes.len();
    }
    let too_many = |what, count, max| EncodeError::TooMany { what, count, max };
    if changes > MAX_ENVELOPES_PER_PUSH {
        return Err(too_many("envelopes", changes, MAX_ENVELOPES_PER_PUSH));
    }
    if signers.len() > MAX_PACK_TABLE {
        return Err(too_many("pack signers", signers.len(), MAX_PACK_TABLE));
    }
    if cases.len() > MAX_PACK_TABLE {
        return Err(too_many("pack cases", cases.len(), MAX_PACK_TABLE));
    }
    let index = |i: usize| u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(64 + runs.iter().map(|r| r.change_bytes() + 72).sum::<usize>());
    out.extend_from_slice(&index(signers.len()));
    signers.iter().for_each(|k| out.extend_from_slice(k));
    out.extend_from_slice(&index(cases.len()));
    cases.iter().for_each(|c| out.extend_from_slice(c.as_bytes()));
    out.extend_from_slice(&u32::try_from(runs.len()).unwrap_or(u32::MAX).to_be_bytes());
    for run in runs {
        out.extend_from_slice(&index(cases.iter().position(|c| *c == run.case).unwrap_or(0)));
        let flags = if run.signer.is_some() { FLAG_SIGNER } else { 0 }
            | if run.signature.is_some() { FLAG_SIGNATURE } else { 0 };
        out.push(flags);
        if let Some(k) = &run.signer {
            out.extend_from_slice(&index(signers.iter().position(|s| s == k).unwrap_or(0)));
        }
        if let Some(sig) = &run.signature {
            out.extend_from_slice(sig);
        }
        out.extend_from_slice(&index(run.changes.len()));
        for change in &run.changes {
            if change.len() > MAX_CHANGE_BYTES {
                return Err(EncodeError::TooLong { what: "change", len: change.len(), max: MAX_CHANGE_BYTES });
            }
            put_uleb(&mut out, change.len());
            out.extend_from_slice(change);
        }
        if out.len() > MAX_PACK_BYTES {
            return Err(EncodeError::TooLong { what: "pack block", len: out.len(), max: MAX_PACK_BYTES });
        }
    }
    Ok(out)
}

fn put_uleb(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let byte = u8::try_from(v & 0x7f).unwrap_or(0);
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// DEFLATE (raw, no header) at the best level: a pack is compressed once and may cross a
/// 2G link, so bytes matter more than the sender's CPU.
fn deflate(block: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc =
        flate2::write::DeflateEncoder::new(Vec::with_capacity(block.len() / 2 + 64), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(block);
    enc.finish().unwrap_or_default()
}

/// Inflates a pack's block, refusing a declared length over [`MAX_PACK_BYTES`] before reading
/// it, and any stream that inflates to more or less than it declared.
/// The rest of a Pack or Cases message: its declared inflated length (`what`), then the
/// DEFLATEd block, inflated within that length.
fn deflated_block(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    let declared = usize::try_from(r.u32(what)?).unwrap_or(usize::MAX);
    inflate(r.rest(), declared)
}

/// A block's table of signers: a count, then each ed25519 key.
fn signer_table(b: &mut Reader<'_>) -> Result<Vec<[u8; 32]>, DecodeError> {
    let count = r_count16(b, "pack signers", 32)?;
    let mut signers = Vec::with_capacity(count);
    for _ in 0..count {
        signers.push(b.array::<32>("signer")?);
    }
    Ok(signers)
}

fn inflate(compressed: &[u8], declared: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read as _;
    if declared > MAX_PACK_BYTES {
        return Err(DecodeError::TooLong { what: "pack block", len: declared, max: MAX_PACK_BYTES });
    }
    // Sized by what arrived, never by the claim alone.
    let mut out = Vec::with_capacity(declared.min(compressed.len().saturating_mul(8)));
    flate2::read::DeflateDecoder::new(compressed)
        .take(u64::try_from(declared).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::BadValue { what: "pack block" })?;
    if out.len() != declared {
        return Err(DecodeError::BadValue { what: "pack block length" });
    }
    Ok(out)
}

fn decode_pack(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let batch = r.u64("pack batch")?;
    let upto = match r.u8("pack upto flag")? {
        0 => None,
        1 => {
            let seq = r.i64("pack upto")?;
            check_position(seq, "pack upto").map_err(|what| DecodeError::BadValue { what })?;
            let chain: [u8; 8] = r.array("pack upto chain")?;
            let mut hash = ZERO_HASH;
            hash[..8].copy_from_slice(&chain);
            if seq == 0 && hash != ZERO_HASH {
                return Err(DecodeError::BadValue { what: "pack upto chain" });
            }
            Some(LogPosition { seq, hash })
        }
        _ => return Err(DecodeError::BadValue { what: "pack upto flag" }),
    };
    let block = deflated_block(r, "pack block length")?;
    let mut b = Reader { buf: &block };
    let signers = signer_table(&mut b)?;
    let case_count = r_count16(&mut b, "pack cases", 16)?;
    let mut cases = Vec::with_capacity(case_count);
    for _ in 0..case_count {
        cases.push(CaseId::from_bytes(b.array("case id")?));
    }
    // case index 2, flags 1, change count 2, one change length 1.
    let run_count = b.count("runs", MAX_ENVELOPES_PER_PUSH, 6)?;
    let mut runs = Vec::with_capacity(run_count);
    let mut total = 0usize;
    for _ in 0..run_count {
        let case = *cases.get(usize::from(b.u16("run case")?)).ok_or(DecodeError::BadValue { what: "run case" })?;
        let flags = b.u8("run flags")?;
        if flags & !(FLAG_SIGNER | FLAG_SIGNATURE) != 0 {
            return Err(DecodeError::BadValue { what: "run flags" });
        }
        let signer = if flags & FLAG_SIGNER != 0 {
            Some(*signers.get(usize::from(b.u16("run signer")?)).ok_or(DecodeError::BadValue { what: "run signer" })?)
        } else {
            None
        };
        let signature = if flags & FLAG_SIGNATURE != 0 { Some(b.array("signature")?) } else { None };
        let n = usize::from(b.u16("run changes")?);
        if n == 0 || n > MAX_RUN_CHANGES {
            return Err(DecodeError::TooMany { what: "run changes", count: n, max: MAX_RUN_CHANGES });
        }
        total += n;
        if total > MAX_ENVELOPES_PER_PUSH {
            return Err(DecodeError::TooMany { what: "envelopes", count: total, max: MAX_ENVELOPES_PER_PUSH });
        }
        if n > b.buf.len() {
            return Err(DecodeError::Truncated { what: "run changes" });
        }
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let len = b.uleb("change")?;
            if len > MAX_CHANGE_BYTES {
                return Err(DecodeError::TooLong { what: "change", len, max: MAX_CHANGE_BYTES });
            }
            changes.push(b.take(len, "change")?.to_vec());
        }
        runs.push(Run { case, signer, signature, changes });
    }
    b.finish()?;
    Ok(Message::Pack { batch, upto, runs })
}

/// A `u16` table size, checked against the table limit and the bytes left.
fn r_count16(r: &mut Reader<'_>, what: &'static str, item: usize) -> Result<usize, DecodeError> {
    let n = usize::from(r.u16(what)?);
    if n > MAX_PACK_TABLE {
        return Err(DecodeError::TooMany { what, count: n, max: MAX_PACK_TABLE });
    }
    if n.saturating_mul(item) > r.buf.len() {
        return Err(DecodeError::Truncated { what });
    }
    Ok(n)
}

/// Decodes one payload (a frame without its length prefix).
///
/// [`FrameDecoder`] calls this for each frame; fuzz tests call it directly.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::FrameTooLarge { len: payload.len() });
    }
    let mut r = Reader { buf: payload };
    let version = r.u8("version")?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { got: version });
    }
    let kind = r.u8("kind")?;
    let msg = match kind {
        KIND_PACK if version < 2 => return Err(DecodeError::UnknownKind { kind }),
        KIND_PACK => decode_pack(&mut r)?,
        KIND_OUTLOOK if version < 3 => return Err(DecodeError::UnknownKind { kind }),
        KIND_OUTLOOK => Message::Outlook { changes: r.u64("outlook changes")? },
        KIND_CASES if version < 4 => return Err(DecodeError::UnknownKind { kind }),
        KIND_CASES => decode_cases(&mut r)?,
        KIND_HELLO => decode_hello(&mut r)?,
        KIND_GRANT => Message::Grant { bytes: r.bytes("grant", MAX_GRANT_BYTES)?.to_vec() },
        KIND_PUSH => decode_push(&mut r)?,
        KIND_ACK => decode_ack(&mut r)?,
        KIND_DIGEST => {
            let part = r.u32("digest part")?;
            let last = match r.u8("digest last")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue { what: "digest last" }),
            };
            let count = r.count("digest entries", MAX_DIGEST_ENTRIES, DIGEST_ENTRY_BYTES)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push((CaseId::from_bytes(r.array("case id")?), r.array("heads hash")?));
            }
            Message::Digest { part, last, entries }
        }
        KIND_WANT => {
            let count = r.count("wanted cases", MAX_WANT_CASES, MIN_WANT_CASE_BYTES)?;
            let mut cases = Vec::with_capacity(count);
            for _ in 0..count {
                let case = CaseId::from_bytes(r.array("case id")?);
                let n = r.count("heads", MAX_HEADS_PER_CASE, HASH_BYTES)?;
                let mut heads = Vec::with_capacity(n);
                for _ in 0..n {
                    heads.push(r.array("head")?);
                }
                cases.push((case, heads));
            }
            Message::Want { cases }
        }
        KIND_DONE => {
            let log_head = r.i64("log head")?;
            check_position(log_head, "log head").map_err(|what| DecodeError::BadValue { what })?;
            Message::Done { log_head }
        }
        KIND_ERROR => {
            let code = ErrorCode::from_code(r.u16("error code")?);
            let text = r.string("error text", MAX_TEXT_BYTES)?.to_owned();
            Message::Error { code, text }
        }
        KIND_INSPECT => {
            let replica = ReplicaId::from_bytes(r.array("replica id")?);
            let tier = tier_from_code(r.u8("tier")?).ok_or(DecodeError::BadValue { what: "tier" })?;
            let scope = canonical_scope(r.string("scope", MAX_TEXT_BYTES)?)?;
            let min_version = r.u8("min version")?;
            let max_version = r.u8("max version")?;
            check_hello(0, &LogPosition::START, min_version, max_version)
                .map_err(|what| DecodeError::BadValue { what })?;
            Message::Inspect { replica, tier, scope, min_version, max_version }
        }
        KIND_SUMS_QUERY => {
            let bits = r.u8("sum bits")?;
            check_bits(bits).map_err(|what| DecodeError::BadValue { what })?;
            Message::SumsQuery { bits }
        }
        KIND_SUMS => {
            let bits = r.u8("sum bits")?;
            check_bits(bits).map_err(|what| DecodeError::BadValue { what })?;
            let count = r.count("sums", 1 << MAX_SUM_BITS, 8)?;
            if count != 1 << bits {
                return Err(DecodeError::BadValue { what: "sums count" });
            }
            let mut sums = Vec::with_capacity(count);
            for _ in 0..count {
                sums.push(r.array("sum")?);
            }
            Message::Sums { bits, sums }
        }
        KIND_CASES_QUERY => {
            let bits = r.u8("sum bits")?;
            check_bits(bits).map_err(|what| DecodeError::BadValue { what })?;
            let count = r.count("buckets", MAX_QUERY_BUCKETS, 4)?;
            let mut buckets = Vec::with_capacity(count);
            for _ in 0..count {
                let b = r.u32("bucket")?;
                if u64::from(b) >= 1 << bits {
                    return Err(DecodeError::BadValue { what: "bucket" });
                }
                buckets.push(b);
            }
            Message::CasesQuery { bits, buckets }
        }
        KIND_CHANGES_QUERY => {
            let count = r.count("queried cases", MAX_QUERY_CASES, 16)?;
            let mut cases = Vec::with_capacity(count);
            for _ in 0..count {
                cases.push(CaseId::from_bytes(r.array("case id")?));
            }
            Message::ChangesQuery { cases }
        }
        KIND_CHANGE_LIST => {
            let case = CaseId::from_bytes(r.array("case id")?);
            let number = r.string("case number", MAX_TEXT_BYTES)?.to_owned();
            let count = r.count("listed changes", MAX_LISTED_CHANGES, MIN_LISTED_CHANGE_BYTES)?;
            let mut changes = Vec::with_capacity(count);
            for _ in 0..count {
                let hash = r.array("change hash")?;
                let at = r.i64("change time")?;
                let device = r.array("device")?;
                let message = r.string("change message", MAX_TEXT_BYTES)?.to_owned();
                changes.push(ListedChange { hash, at, device, message });
            }
            Message::ChangeList { case, number, changes }
        }
        KIND_POLICY => {
            let now = Timestamp(r.i64("policy clock")?);
            let version = r.u64("policy version")?;
            let signed = match r.u8("policy flag")? {
                0 => None,
                1 => Some(r.bytes("policy", MAX_POLICY_BYTES)?.to_vec()),
                _ => return Err(DecodeError::BadValue { what: "policy flag" }),
            };
            Message::Policy { now, version, signed }
        }
        kind => return Err(DecodeError::UnknownKind { kind }),
    };
    r.finish()?;
    Ok(msg)
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let replica = ReplicaId::from_bytes(r.array("replica id")?);
    let tier = tier_from_code(r.u8("tier")?).ok_or(DecodeError::BadValue { what: "tier" })?;
    let scope = canonical_scope(r.string("scope", MAX_TEXT_BYTES)?)?;
    let log_head = r.i64("log head")?;
    let have = LogPosition { seq: r.i64("have seq")?, hash: r.array("have hash")? };
    let min_version = r.u8("min version")?;
    let max_version = r.u8("max version")?;
    check_hello(log_head, &have, min_version, max_version).map_err(|what| DecodeError::BadValue { what })?;
    Ok(Message::Hello { replica, tier, scope, log_head, have, min_version, max_version })
}

fn decode_push(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let batch = r.u64("push batch")?;
    let upto = match r.u8("push upto flag")? {
        0 => None,
        1 => {
            let seq = r.i64("push upto")?;
            check_position(seq, "push upto").map_err(|what| DecodeError::BadValue { what })?;
            Some(LogPosition { seq, hash: r.array("push upto hash")? })
        }
        _ => return Err(DecodeError::BadValue { what: "push upto flag" }),
    };
    let count = r.count("envelopes", MAX_ENVELOPES_PER_PUSH, MIN_ENVELOPE_BYTES)?;
    let mut envelopes = Vec::with_capacity(count);
    for _ in 0..count {
        let case = CaseId::from_bytes(r.array("case id")?);
        let flags = r.u8("envelope flags")?;
        if flags & !(FLAG_SIGNER | FLAG_SIGNATURE) != 0 {
            return Err(DecodeError::BadValue { what: "envelope flags" });
        }
        let signer = if flags & FLAG_SIGNER != 0 { Some(r.array("signer")?) } else { None };
        let signature = if flags & FLAG_SIGNATURE != 0 { Some(r.array("signature")?) } else { None };
        let change = r.bytes("change", MAX_CHANGE_BYTES)?.to_vec();
        envelopes.push(Envelope { case, signer, signature, change });
    }
    Ok(Message::Push { batch, upto, envelopes })
}

fn decode_ack(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let batch = r.u64("ack batch")?;
    let upto = r.i64("ack upto")?;
    check_position(upto, "ack upto").map_err(|what| DecodeError::BadValue { what })?;
    let applied = r.u32("ack applied")?;
    let duplicates = r.u32("ack duplicates")?;
    let pending = r.u32("ack pending")?;
    let count = r.count("refusals", MAX_REFUSALS, MIN_REFUSED_BYTES)?;
    let mut refused = Vec::with_capacity(count);
    for _ in 0..count {
        let case = CaseId::from_bytes(r.array("case id")?);
        let hash = r.array("change hash")?;
        let reason = RefuseReason::from_code(r.u8("refusal reason")?);
        let text = r.string("refusal text", MAX_TEXT_BYTES)?.to_owned();
        refused.push(Refused { case, hash, reason, text });
    }
    Ok(Message::Ack { batch, upto, applied, duplicates, pending, refused })
}

/// A division code exactly as `AdminCode::parse` accepts it unchanged: only the canonical
/// digits (the parser also accepts full-width digits and spaces, which would let one scope
/// travel as many byte strings).
fn canonical_scope(raw: &str) -> Result<AdminCode, DecodeError> {
    AdminCode::parse(raw).ok().filter(|code| code.as_str() == raw).ok_or(DecodeError::BadValue { what: "scope" })
}

fn check_bits(bits: u8) -> Result<(), &'static str> {
    if bits > MAX_SUM_BITS { Err("sum bits") } else { Ok(()) }
}

fn check_position(seq: i64, what: &'static str) -> Result<(), &'static str> {
    if seq < 0 { Err(what) } else { Ok(()) }
}

fn check_hello(log_head: i64, have: &LogPosition, min_version: u8, max_version: u8) -> Result<(), &'static str> {
    check_position(log_head, "log head")?;
    check_position(have.seq, "have seq")?;
    if have.seq == 0 && have.hash != ZERO_HASH {
        return Err("have hash");
    }
    if min_version == 0 || min_version > max_version {
        return Err("version range");
    }
    Ok(())
}

fn tier_code(tier: Tier) -> u8 {
    match tier {
        Tier::Device => 0,
        Tier::Township => 1,
        Tier::County => 2,
    }
}

fn tier_from_code(code: u8) -> Option<Tier> {
    match code {
        0 => Some(Tier::Device),
        1 => Some(Tier::Township),
        2 => Some(Tier::County),
        _ => None,
    }
}

/// Reassembles frames from a byte stream, in any chunking, and decodes them.
///
/// Call [`FrameDecoder::push`] with each chunk read from the stream, then
/// [`FrameDecoder::next`] until it returns `Ok(None)`. Frames are decoded as soon as they are
/// complete, so the decoder holds raw bytes of at most one partial frame (at most
/// [`MAX_FRAME_BYTES`] + 4); decoded messages wait in a queue, so drain it after each push.
///
/// An error is reported once, in stream order: by `push` when no decoded message is waiting,
/// otherwise by `next` after the messages that came before the bad frame. Every later call
/// returns [`DecodeError::Poisoned`]: the stream is out of step and the session must end.
#[derive(Default)]
pub struct FrameDecoder {
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// The payload length of the frame being read, once its prefix is complete.
    body_len: Option<usize>,
    body: Vec<u8>,
    ready: VecDeque<Message>,
    /// An error not yet returned, held back until the messages before it are taken.
    failed: Option<DecodeError>,
    poisoned: bool,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buffered())
            .field("body_len", &self.body_len)
            .field("ready", &self.ready.len())
            .field("failed", &self.failed)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl FrameDecoder {
    /// An empty decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk of the stream. Fails only with the first error of the stream
    /// (when no decoded message is waiting before it) or with [`DecodeError::Poisoned`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        let mut input = bytes;
        // Input after a bad frame is meaningless: it is dropped while the error waits its turn.
        while self.failed.is_none() && !input.is_empty() {
            input = match self.body_len {
                None => self.read_prefix(input),
                Some(len) => self.read_body(input, len),
            };
        }
        if self.ready.is_empty()
            && let Some(err) = self.failed.take()
        {
            self.poisoned = true;
            return Err(err);
        }
        Ok(())
    }

    /// The next decoded message, `Ok(None)` when a whole frame has not arrived yet.
    #[allow(clippy::should_implement_trait, reason = "an error is not the end of the stream")]
    pub fn next(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        if let Some(msg) = self.ready.pop_front() {
            return Ok(Some(msg));
        }
        match self.failed.take() {
            Some(err) => {
                self.poisoned = true;
                Err(err)
            }
            None => Ok(None),
        }
    }

    /// Raw bytes held of the frame being reassembled (never more than [`MAX_FRAME_BYTES`] + 4).
    pub fn buffered(&self) -> usize {
        self.prefix_len + self.body.len()
    }

    /// Whether an error has been returned and the decoder refuses all further input.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn read_prefix<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        let (take, rest) = split(input, PREFIX_BYTES.saturating_sub(self.prefix_len));
        for &byte in take {
            if let Some(slot) = self.prefix.get_mut(self.prefix_len) {
                *slot = byte;
                self.prefix_len += 1;
            }
        }
        if self.prefix_len == PREFIX_BYTES {
            self.prefix_len = 0;
            let len = usize::try_from(u32::from_be_bytes(self.prefix)).unwrap_or(usize::MAX);
            if len > MAX_FRAME_BYTES {
                self.fail(DecodeError::FrameTooLarge { len });
            } else if len == 0 {
                self.complete(decode(&[]));
            } else {
                self.body_len = Some(len);
            }
        }
        rest
    }

    fn read_body<'a>(&mut self, input: &'a [u8], len: usize) -> &'a [u8] {
        if self.body.is_empty() && input.len() >= len {
            // The whole frame is in this chunk: decode it in place, without copying.
            let (frame, rest) = split(input, len);
            self.body_len = None;
            self.complete(decode(frame));
            return rest;
        }
        let (take, rest) = split(input, len.saturating_sub(self.body.len()));
        let needed = self.body.len() + take.len();
        if needed > self.body.capacity() {
            // Grow by doubling, but never past the announced length: the buffer is sized by
            // bytes that arrived, not by what the prefix claims.
            let target = needed.max(self.body.capacity().saturating_mul(2)).min(len);
            self.body.reserve_exact(target.saturating_sub(self.body.len()));
        }
        self.body.extend_from_slice(take);
        if self.body.len() >= len {
            let result = decode(&self.body);
            self.release_body();
            self.complete(result);
        }
        rest
    }

    fn complete(&mut self, result: Result<Message, DecodeError>) {
        match result {
            Ok(msg) => self.ready.push_back(msg),
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, err: DecodeError) {
        self.failed = Some(err);
        self.prefix_len = 0;
        self.body = Vec::new();
        self.body_len = None;
    }

    fn release_body(&mut self) {
        self.body_len = None;
        if self.body.capacity() > RETAIN_BUFFER_BYTES {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
    }
}

/// `input` split after `n` bytes, or all of it and nothing when it is shorter.
fn split(input: &[u8], n: usize) -> (&[u8], &[u8]) {
    input.split_at_checked(n).unwrap_or((input, &[]))
}

/// Reads big-endian fields from a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(DecodeError::Truncated { what })?;
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        <[u8; N]>::try_from(self.take(N, what)?).map_err(|_| DecodeError::Truncated { what })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// `u32 length | bytes`, the length checked against `max` before the bytes are taken.
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(len, what)
    }

    /// `u16 length | UTF-8`.
    fn string(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        std::str::from_utf8(self.take(len, what)?).map_err(|_| DecodeError::BadUtf8 { what })
    }

    /// A `u32` item count, checked against its limit and against the bytes left, given the
    /// smallest encoding of one item. The result is safe to pass to `Vec::with_capacity`: it is
    /// at most `remaining / min_item_bytes`.
    fn count(&mut self, what: &'static str, max: usize, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        if count.saturating_mul(min_item_bytes) > self.buf.len() {
            return Err(DecodeError::Truncated { what });
        }
        Ok(count)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes { len: self.buf.len() }) }
    }

    /// Everything left (a pack's compressed block runs to the end of the frame).
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// An unsigned LEB128 length of at most 5 bytes.
    fn uleb(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let mut v: u64 = 0;
        for shift in [0, 7, 14, 21, 28] {
            let byte = self.u8(what)?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(usize::try_from(v).unwrap_or(usize::MAX));
            }
        }
        Err(DecodeError::BadValue { what })
    }
}

/// Builds one frame; refuses to grow the payload past [`MAX_FRAME_BYTES`].
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(kind: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; PREFIX_BYTES]);
        buf.push(version);
        buf.push(kind);
        Self { buf }
    }

    /// Checked before copying, so an oversize push fails before it is built.
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = self.buf.len().saturating_sub(PREFIX_BYTES).saturating_add(bytes.len());
        if len > MAX_FRAME_BYTES {
            return Err(EncodeError::FrameTooLarge { len });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.put(&[v])
    }

    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn i64(&mut self, v: i64) -> Result<(), EncodeError> {
        self.put(&v.to_be_bytes())
    }

    fn bytes(&mut self, what: &'static str, bytes: &[u8], max: usize) -> Result<(), EncodeError> {
        let too_long = EncodeError::TooLong { what, len: bytes.len(), max };
        if bytes.len() > max {
            return Err(too_long);
        }
        self.u32(u32::try_from(bytes.len()).map_err(|_| too_long)?)?;
        self.put(bytes)
    }

    fn string(&mut self, what: &'static str, text: &str, max: usize) -> Result<(), EncodeError> {
        let too_long = EncodeError::TooLong { what, len: text.len(), max };
        if text.len() > max {
            return Err(too_long);
        }
        self.u16(u16::try_from(text.len()).map_err(|_| too_long)?)?;
        self.put(text.as_bytes())
    }

    fn count(&mut self, what: &'static str, count: usize, max: usize) -> Result<(), EncodeError> {
        let too_many = EncodeError::TooMany { what, count, max };
        if count > max {
            return Err(too_many);
        }
        self.u32(u32::try_from(count).map_err(|_| too_many)?)
    }

    fn finish(mut self) -> Vec<u8> {
        // `put` kept the payload within MAX_FRAME_BYTES, so the length fits a u32.
        let len = u32::try_from(self.buf.len().saturating_sub(PREFIX_BYTES)).unwrap_or(u32::MAX);
        if let Some(prefix) = self.buf.get_mut(..PREFIX_BYTES) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn scope() -> AdminCode {
        AdminCode::parse("532924101201").unwrap()
    }

    fn case(n: u8) -> CaseId {
        CaseId::from_bytes([n; 16])
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                replica: ReplicaId::from_bytes([7; 16]),
                tier: Tier::Device,
                scope: scope(),
                log_head: 42,
                have: LogPosition { seq: 17, hash: [3; 32] },
                min_version: 1,
                max_version: 1,
            },
            Message::Hello {
                replica: ReplicaId::from_bytes([8; 16]),
                tier: Tier::County,
                scope: AdminCode::parse("532924").unwrap(),
                log_head: 0,
                have: LogPosition::START,
                min_version: 1,
                max_version: 9,
            },
            Message::Grant { bytes: vec![1, 2, 3, 4] },
            Message::Push {
                batch: 5,
                upto: None,
                envelopes: vec![
                    Envelope { case: case(1), signer: Some([4; 32]), signature: Some([5; 64]), change: vec![9; 100] },
                    Envelope { case: case(2), signer: None, signature: Some([6; 64]), change: vec![] },
                    Envelope { case: case(3), signer: Some([7; 32]), signature: None, change: vec![1] },
                    Envelope { case: case(4), signer: None, signature: None, change: vec![2; 3] },
                ],
            },
            Message::Push { batch: 6, upto: Some(LogPosition { seq: 120, hash: [120; 32] }), envelopes: vec![] },
            Message::Ack {
                batch: 5,
                upto: 99,
                applied: 2,
                duplicates: 1,
                pending: 0,
                refused: vec![Refused {
                    case: case(4),
                    hash: [8; 32],
                    reason: RefuseReason::OutOfScope,
                    text: "案件不在本村范围".into(),
                }],
            },
            Message::Digest { part: 0, last: true, entries: vec![(case(1), [1; 32]), (case(2), [2; 32])] },
            Message::Want { cases: vec![(case(1), vec![[1; 32], [2; 32]]), (case(9), vec![])] },
            Message::Done { log_head: 1234 },
            Message::Outlook { changes: 10_001 },
            Message::Cases {
                batch: 9,
                cases: vec![
                    CaseDocument {
                        case: case(3),
                        document: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 0, 1, 0],
                        vouchers: vec![
                            Voucher { signer: Some([7; 32]), vouch: Vouch::RunMember { head: 2 } },
                            Voucher { signer: Some([7; 32]), vouch: Vouch::RunMember { head: 2 } },
                            Voucher {
                                signer: Some([7; 32]),
                                vouch: Vouch::RunHead { signature: [9; 64], others: vec![0, 1] },
                            },
                        ],
                    },
                    CaseDocument {
                        case: case(4),
                        document: vec![1; 40],
                        vouchers: vec![
                            Voucher { signer: Some([8; 32]), vouch: Vouch::Single([5; 64]) },
                            Voucher { signer: None, vouch: Vouch::Unsigned },
                        ],
                    },
                ],
            },
            Message::Error { code: ErrorCode::Unauthorized, text: "scope not granted".into() },
            Message::Error { code: ErrorCode::Other(999), text: String::new() },
            Message::Policy { now: Timestamp(1_790_000_000_000), version: 0, signed: None },
            Message::Policy { now: Timestamp(-1), version: 3, signed: Some(vec![b'f', b'q', b'P', b'1', 0]) },
        ]
    }

    fn decode_stream(bytes: &[u8], chunk: usize) -> Result<Vec<Message>, DecodeError> {
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            dec.push(piece)?;
            while let Some(msg) = dec.next()? {
                out.push(msg);
            }
        }
        Ok(out)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn encode_round_trips_every_kind() {
        for msg in samples() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode_stream(&bytes, bytes.len()).unwrap(), vec![msg.clone()], "{}", msg.name());
            assert_eq!(decode(&bytes[PREFIX_BYTES..]).unwrap(), msg);
        }
    }

    #[test]
    fn decoder_reassembles_frames_fed_one_byte_at_a_time() {
        let msgs = samples();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        assert_eq!(decode_stream(&stream, 1).unwrap(), msgs);
        assert_eq!(decode_stream(&stream, 7).unwrap(), msgs);
    }

    #[test]
    fn decoder_returns_two_frames_of_one_push_in_order() {
        let a = Message::Done { log_head: 1 };
        let b = Message::Grant { bytes: vec![1; 10] };
        let mut bytes = encode(&a).unwrap();
        bytes.extend(encode(&b).unwrap());
        let mut dec = FrameDecoder::new();
        dec.push(&bytes).unwrap();
        assert_eq!(dec.next().unwrap(), Some(a));
        assert_eq!(dec.next().unwrap(), Some(b));
        assert_eq!(dec.next().unwrap(), None);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn decoder_refuses_oversize_prefix_before_buffering() {
        let mut dec = FrameDecoder::new();
        let len = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 1000]);
        // Three bytes are not yet a length.
        dec.push(&bytes[..3]).unwrap();
        assert_eq!(dec.buffered(), 3);
        let err = dec.push(&bytes[3..]).unwrap_err();
        assert_eq!(err, DecodeError::FrameTooLarge { len: MAX_FRAME_BYTES + 1 });
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.push(&[1]), Err(DecodeError::Poisoned));
        assert_eq!(dec.next(), Err(DecodeError::Poisoned));
        assert!(dec.is_poisoned());
    }

    #[test]
    fn decoder_accepts_a_frame_of_exactly_the_limit() {
        // One change cannot fill a frame (MAX_CHANGE_BYTES is a quarter of it): use a run.
        let change_len = 4000;
        let per = MIN_ENVELOPE_BYTES + change_len;
        let n = (MAX_FRAME_BYTES - PUSH_FIXED_BYTES) / per;
        let rest = MAX_FRAME_BYTES - PUSH_FIXED_BYTES - n * per;
        let mut envelopes: Vec<Envelope> = (0..n)
            .map(|_| Envelope { case: case(1), signer: None, signature: None, change: vec![0; change_len] })
            .collect();
        envelopes.push(Envelope { case: case(2), signer: None, signature: None, change: vec![0; rest] });
        let mut msg = Message::Push { batch: 1, upto: Some(LogPosition { seq: 1, hash: [1; 32] }), envelopes };
        assert!(matches!(encode(&msg), Err(EncodeError::FrameTooLarge { .. })));
        if let Message::Push { envelopes, .. } = &mut msg {
            let last = envelopes.pop().unwrap();
            let first = envelopes.first_mut().unwrap();
            assert_eq!(last.change.len(), rest);
            first.change.extend(std::iter::repeat_n(0, rest));
            assert_eq!(PUSH_FIXED_BYTES + envelopes.iter().map(Envelope::wire_len).sum::<usize>(), MAX_FRAME_BYTES);
        }
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes.len(), MAX_FRAME_BYTES + PREFIX_BYTES);
        let mut dec = FrameDecoder::new();
        for piece in bytes.chunks(65_536) {
            dec.push(piece).unwrap();
            assert!(dec.buffered() <= MAX_FRAME_BYTES + PREFIX_BYTES);
        }
        assert_eq!(dec.next().unwrap(), Some(msg));
    }

    #[test]
    fn decode_fails_fast_on_a_huge_count_in_a_tiny_frame() {
        let mut payload = vec![PROTOCOL_VERSION, KIND_PUSH];
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.push(0); // no upto: a recovery batch
        payload.extend_from_slice(&4_000_000u32.to_be_bytes());
        assert_eq!(
            decode(&payload),
            Err(DecodeError::TooMany { what: "envelopes", count: 4_000_000, max: MAX_ENVELOPES_PER_PUSH })
        );
        // Under the limit but more than the bytes left could hold.
        let at = payload.len() - 4;
        payload[at..].copy_from_slice(&4000u32.to_be_bytes());
        payload.extend_from_slice(&[0; 20]);
        assert_eq!(decode(&payload), Err(DecodeError::Truncated { what: "envelopes" }));

        let mut want = vec![PROTOCOL_VERSION, KIND_WANT];
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&64u32.to_be_bytes());
        assert_eq!(decode(&want), Err(DecodeError::Truncated { what: "heads" }));
    }

    #[test]
    fn decode_refuses_long_fields_before_reading_them() {
        let mut grant = vec![PROTOCOL_VERSION, KIND_GRANT];
        grant.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&grant), Err(DecodeError::TooLong { what: "grant", .. })));
        let mut err = vec![PROTOCOL_VERSION, KIND_ERROR, 0, 1];
        err.extend_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(decode(&err), Err(DecodeError::TooLong { what: "error text", len: 2000, .. })));
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = encode(&Message::Done { log_head: 3 }).unwrap();
        bytes.push(0);
        assert_eq!(decode(&bytes[PREFIX_BYTES..]), Err(DecodeError::TrailingBytes { len: 1 }));
        let framed = frame(&bytes[PREFIX_BYTES..]);
        assert_eq!(decode_stream(&framed, 3), Err(DecodeError::TrailingBytes { len: 1 }));
    }

    #[test]
    fn decode_maps_unknown_reason_and_error_codes_to_other() {
        let ack = Message::Ack {
            batch: 1,
            upto: 1,
            applied: 0,
            duplicates: 0,
            pending: 0,
            refused: vec![Refused { case: case(1), hash: [0; 32], reason: RefuseReason::Malformed, text: "x".into() }],
        };
        let mut bytes = encode(&ack).unwrap();
        // The reason byte sits before the text (u16 length + 1 byte).
        let at = bytes.len() - 4;
        assert_eq!(bytes[at], 1);
        bytes[at] = 42;
        let Message::Ack { refused, .. } = decode(&bytes[PREFIX_BYTES..]).unwrap() else { panic!("not an ack") };
        assert_eq!(refused[0].reason, RefuseReason::Other);

        let payload = [PROTOCOL_VERSION, KIND_ERROR, 0x12, 0x34, 0, 0];
        assert_eq!(decode(&payload).unwrap(), Message::Error { code: ErrorCode::Other(0x1234), text: String::new() });
        assert_eq!(ErrorCode::from_code(ErrorCode::Other(4).code()), ErrorCode::TooLarge);
    }

    #[test]
    fn decode_refuses_bad_versions_kinds_and_values() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated { what: "version" }));
        assert_eq!(decode(&[5, KIND_DONE]), Err(DecodeError::UnsupportedVersion { got: 5 }));
        // Whole cases are version 4's.
        assert_eq!(
            decode(&[3, KIND_CASES, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::UnknownKind { kind: KIND_CASES })
        );
        assert_eq!(decode(&[1, KIND_PACK]), Err(DecodeError::UnknownKind { kind: KIND_PACK }));
        // An Outlook is version 3's: a version 2 frame of that kind is not one.
        assert_eq!(
            decode(&[2, KIND_OUTLOOK, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::UnknownKind { kind: KIND_OUTLOOK })
        );
        assert!(matches!(encode_with(&Message::Outlook { changes: 1 }, 2), Err(EncodeError::BadValue { .. })));
        assert_eq!(decode(&[PROTOCOL_VERSION, 0]), Err(DecodeError::UnknownKind { kind: 0 }));
        assert_eq!(decode(&[PROTOCOL_VERSION, 15]), Err(DecodeError::UnknownKind { kind: 15 }));

        let mut done = vec![PROTOCOL_VERSION, KIND_DONE];
        done.extend_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(decode(&done), Err(DecodeError::BadValue { what: "log head" }));

        let mut push = encode(&Message::Push {
            batch: 1,
            upto: Some(LogPosition { seq: 1, hash: [1; 32] }),
            envelopes: vec![Envelope { case: case(1), signer: None, signature: None, change: vec![] }],
        })
        .unwrap();
        let flags = PREFIX_BYTES + PUSH_FIXED_BYTES + 16;
        push[flags] = 0b100;
        assert_eq!(decode(&push[PREFIX_BYTES..]), Err(DecodeError::BadValue { what: "envelope flags" }));

        let upto = [PROTOCOL_VERSION, KIND_PUSH, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0];
        assert_eq!(decode(&upto), Err(DecodeError::BadValue { what: "push upto flag" }));

        let digest = [PROTOCOL_VERSION, KIND_DIGEST, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        assert_eq!(decode(&digest), Err(DecodeError::BadValue { what: "digest last" }));

        let mut error = vec![PROTOCOL_VERSION, KIND_ERROR, 0, 1, 0, 2, 0xff, 0xfe];
        assert_eq!(decode(&error), Err(DecodeError::BadUtf8 { what: "error text" }));
        error.truncate(7);
        assert_eq!(decode(&error), Err(DecodeError::Truncated { what: "error text" }));
    }

    #[test]
    fn hello_refuses_non_canonical_scope_and_bad_versions() {
        let hello = samples().remove(0);
        let bytes = encode(&hello).unwrap();
        let payload = &bytes[PREFIX_BYTES..];
        // version, kind, replica, tier, then the scope's u16 length and digits.
        let scope_at = 2 + 16 + 1 + 2;
        let mut spaced = payload[..scope_at - 2].to_vec();
        spaced.extend_from_slice(&13u16.to_be_bytes());
        spaced.extend_from_slice(b" 532924101201");
        spaced.extend_from_slice(&payload[scope_at + 12..]);
        assert_eq!(decode(&spaced), Err(DecodeError::BadValue { what: "scope" }));

        let mut tier = payload.to_vec();
        tier[18] = 3;
        assert_eq!(decode(&tier), Err(DecodeError::BadValue { what: "tier" }));

        let Message::Hello { replica, tier, scope, log_head, have, .. } = hello else { unreachable!() };
        let hello = |have, min_version, max_version| Message::Hello {
            replica,
            tier,
            scope: scope.clone(),
            log_head,
            have,
            min_version,
            max_version,
        };
        assert_eq!(encode(&hello(have, 2, 1)), Err(EncodeError::BadValue { what: "version range" }));
        assert_eq!(encode(&hello(have, 0, 1)), Err(EncodeError::BadValue { what: "version range" }));
        let mut raw = encode(&hello(have, 1, 1)).unwrap();
        let min_at = raw.len() - 2;
        raw[min_at] = 2;
        assert_eq!(decode(&raw[PREFIX_BYTES..]), Err(DecodeError::BadValue { what: "version range" }));
        let dirty_start = LogPosition { seq: 0, hash: [1; 32] };
        assert_eq!(encode(&hello(dirty_start, 1, 1)), Err(EncodeError::BadValue { what: "have hash" }));
    }

    #[test]
    fn encode_names_the_limit_it_refuses() {
        let change = Envelope { case: case(1), signer: None, signature: None, change: vec![0; MAX_CHANGE_BYTES + 1] };
        let push =
            Message::Push { batch: 1, upto: Some(LogPosition { seq: 1, hash: [1; 32] }), envelopes: vec![change] };
        assert_eq!(
            encode(&push),
            Err(EncodeError::TooLong { what: "change", len: MAX_CHANGE_BYTES + 1, max: MAX_CHANGE_BYTES })
        );
        let big = Envelope { case: case(1), signer: None, signature: None, change: vec![0; MAX_CHANGE_BYTES] };
        let push =
            Message::Push { batch: 1, upto: Some(LogPosition { seq: 1, hash: [1; 32] }), envelopes: vec![big; 4] };
        assert!(matches!(encode(&push), Err(EncodeError::FrameTooLarge { .. })));
        let grant = Message::Grant { bytes: vec![0; MAX_GRANT_BYTES + 1] };
        assert!(matches!(encode(&grant), Err(EncodeError::TooLong { what: "grant", .. })));
        let want = Message::Want { cases: vec![(case(1), vec![[0; 32]; MAX_HEADS_PER_CASE + 1])] };
        assert!(matches!(encode(&want), Err(EncodeError::TooMany { what: "heads", .. })));
        let digest = Message::Digest { part: 0, last: true, entries: vec![(case(1), [0; 32]); MAX_DIGEST_ENTRIES + 1] };
        assert!(matches!(encode(&digest), Err(EncodeError::TooMany { what: "digest entries", .. })));
        let text = "界".repeat(400);
        let error = Message::Error { code: ErrorCode::Internal, text: text.clone() };
        assert!(matches!(encode(&error), Err(EncodeError::TooLong { what: "error text", len: 1200, .. })));
        let clipped = clip_text(&text);
        assert_eq!(clipped.len(), 1023);
        assert!(encode(&Message::Error { code: ErrorCode::Internal, text: clipped }).is_ok());
        assert_eq!(clip_text("short"), "short");
    }

    #[test]
    fn decoder_reports_an_error_after_the_messages_before_it() {
        let good = encode(&Message::Done { log_head: 5 }).unwrap();
        let mut stream = good.clone();
        stream.extend_from_slice(&frame(&[PROTOCOL_VERSION, 77]));
        stream.extend_from_slice(&good);
        let mut dec = FrameDecoder::new();
        dec.push(&stream).unwrap();
        assert_eq!(dec.next().unwrap(), Some(Message::Done { log_head: 5 }));
        assert_eq!(dec.next(), Err(DecodeError::UnknownKind { kind: 77 }));
        assert_eq!(dec.next(), Err(DecodeError::Poisoned));
        // A zero-length frame is an error too, not a silent no-op.
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.push(&[0, 0, 0, 0]), Err(DecodeError::Truncated { what: "version" }));
    }

    #[test]
    fn frame_layout_is_stable() {
        let done = encode(&Message::Done { log_head: 0x0102 }).unwrap();
        assert_eq!(done, [0, 0, 0, 10, 1, 7, 0, 0, 0, 0, 0, 0, 1, 2]);
        let error = encode(&Message::Error { code: ErrorCode::ShuttingDown, text: "bye".into() }).unwrap();
        assert_eq!(error, [0, 0, 0, 9, 1, 8, 0, 6, 0, 3, b'b', b'y', b'e']);
        let envelope = Envelope { case: case(0xaa), signer: Some([1; 32]), signature: None, change: vec![0xcc] };
        let push = encode(&Message::Push {
            batch: 2,
            upto: Some(LogPosition { seq: 3, hash: [3; 32] }),
            envelopes: vec![envelope.clone()],
        })
        .unwrap();
        let mut want = vec![0, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 3];
        want.extend_from_slice(&[3; 32]);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&[0xaa; 16]);
        want.push(0b01);
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&[0, 0, 0, 1, 0xcc]);
        let len = u32::try_from(want.len() - PREFIX_BYTES).unwrap();
        want[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(push, want);
        assert_eq!(push.len(), PREFIX_BYTES + PUSH_FIXED_BYTES + envelope.wire_len());
    }

    fn pack() -> Message {
        let change = |n: u8| {
            let mut c = vec![0x85, 0x6f, 0x4a, 0x83, n, n, n, n, 1, 4];
            c.extend_from_slice(&[n; 60]);
            c
        };
        Message::Pack {
            batch: 9,
            upto: Some(LogPosition { seq: 12, hash: chain_hash(0x0102_0304_0506_0708) }),
            runs: vec![
                Run {
                    case: case(1),
                    signer: Some([5; 32]),
                    signature: Some([6; 64]),
                    changes: vec![change(1), change(2)],
                },
                Run { case: case(2), signer: Some([5; 32]), signature: Some([7; 64]), changes: vec![change(3)] },
                Run { case: case(1), signer: None, signature: None, changes: vec![vec![]] },
            ],
        }
    }

    fn chain_hash(chain: i64) -> Hash {
        let mut h = [0; 32];
        h[..8].copy_from_slice(&chain.to_be_bytes());
        h
    }

    #[test]
    fn pack_round_trips_smaller_than_the_push_it_replaces() {
        let msg = pack();
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes[PREFIX_BYTES], 2, "a pack is framed as version 2");
        assert_eq!(decode_stream(&bytes, 5).unwrap(), vec![msg.clone()]);
        let Message::Pack { batch, upto, runs } = msg else { unreachable!() };
        let envelopes: Vec<Envelope> = runs
            .iter()
            .flat_map(|r| {
                r.changes.iter().map(|c| Envelope {
                    case: r.case,
                    signer: r.signer,
                    signature: r.signature,
                    change: c.clone(),
                })
            })
            .collect();
        let push = encode(&Message::Push { batch, upto, envelopes }).unwrap();
        assert!(bytes.len() * 2 < push.len(), "pack {} B, push {} B", bytes.len(), push.len());
        assert_eq!(
            encode_with(&Message::Pack { batch, upto, runs: Vec::new() }, 1),
            Err(EncodeError::BadValue { what: "pack needs version 2" })
        );
    }

    #[test]
    fn pack_refuses_a_block_that_inflates_past_what_it_declared() {
        let Message::Pack { batch, upto, runs } = pack() else { unreachable!() };
        let good = encode(&Message::Pack { batch, upto, runs }).unwrap();
        // The declared block length sits before the compressed block.
        let at = PREFIX_BYTES + 2 + 8 + 1 + 8 + 8;
        let mut lying = good.clone();
        lying[at..at + 4].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(decode(&lying[PREFIX_BYTES..]), Err(DecodeError::BadValue { what: "pack block length" }));
        let mut huge = good.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&huge[PREFIX_BYTES..]), Err(DecodeError::TooLong { what: "pack block", .. })));
        // A bomb: a small stream that inflates to far more than a frame is refused at the cap.
        let bomb = deflate(&vec![0u8; 8 * MAX_PACK_BYTES]);
        let mut payload = vec![2, KIND_PACK];
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.push(0);
        payload.extend_from_slice(&u32::try_from(MAX_PACK_BYTES).unwrap().to_be_bytes());
        payload.extend_from_slice(&bomb);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(decode(&payload), Err(DecodeError::BadValue { what: "pack block length" }));
        let mut flipped = good;
        let last = flipped.len() - 3;
        flipped[last] ^= 0xff;
        assert!(decode(&flipped[PREFIX_BYTES..]).is_err());
    }

    #[test]
    fn policy_frame_layout_is_stable_and_refuses_bad_flags() {
        let policy = encode(&Message::Policy { now: Timestamp(0x0102), version: 3, signed: Some(vec![0xab]) }).unwrap();
        let mut want = vec![0, 0, 0, 24, 1, 20, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 1, 0xab];
        assert_eq!(policy, want);
        want[22] = 2;
        assert_eq!(decode(&want[PREFIX_BYTES..]), Err(DecodeError::BadValue { what: "policy flag" }));
        let too_big = Message::Policy { now: Timestamp(0), version: 1, signed: Some(vec![0; MAX_POLICY_BYTES + 1]) };
        assert!(matches!(encode(&too_big), Err(EncodeError::TooLong { what: "policy", .. })));
    }

    #[test]
    fn negotiate_version_picks_the_highest_common() {
        assert_eq!(negotiate_version(1, 1), Some(1));
        assert_eq!(negotiate_version(1, 5), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate_version(2, 5), Some(4));
        assert_eq!(negotiate_version(1, 2), Some(2));
        assert_eq!(negotiate_version(1, 3), Some(3));
        assert_eq!(negotiate_version(3, 5), Some(4));
        assert_eq!(negotiate_version(5, 6), None);
        assert_eq!(negotiate_version(0, 0), None);
    }
}
