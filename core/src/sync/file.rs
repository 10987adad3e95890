//! Sync by file: the frames of a sync session carried on a USB stick (`.fqs`), sans-io.
//!
//! A file holds what one side of a [`Session`] sent, sealed for one receiver:
//!
//! - **Signed by its sender.** The sender's CA-signed grant travels in the clear header, and an
//!   Ed25519 signature by that grant's key covers every byte before it. A flipped byte, a
//!   truncated file or a file spliced from two others fails that check, and the whole file is
//!   refused before a frame is looked at: nothing is applied.
//! - **Encrypted to its receiver.** The frames (case titles, parties, notes) are sealed with
//!   XChaCha20-Poly1305 under a key agreed by X25519 between a fresh ephemeral key and the
//!   receiver's Ed25519 key from its grant, read as a Montgomery point (ADR 40). Only the
//!   holder of the receiver's private key reads them; a file given to another replica is
//!   refused by name before anything is decrypted.
//! - **The same session.** Writing drives a one-way [`Session`]
//!   ([`SessionConfig::one_way`]) against the peer's hello as this replica last knew it;
//!   reading feeds the file's frames to a one-way session and collects what it answers. Every
//!   envelope is verified and authorized as over QUIC; importing a file twice changes nothing
//!   (changes are keyed by hash); an answer's acks are what makes a change acknowledged on
//!   the device.
//!
//! # Layout (`docs/PROTOCOL.md`, "Sync files")
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `FQS1` |
//! | 2 + n | the sender's grant (`u16` length, then the signed grant) |
//! | 16 | the sender's replica id |
//! | 32 | the receiver's Ed25519 public key (from its grant) |
//! | 16 | this file's id (random) |
//! | 16 | the id of the file this one answers (zero: none) |
//! | 8 | written at (ms since the epoch, the sender's clock) |
//! | 8 | where the sender's pushes start in its log (the position it last saw acknowledged) |
//! | 32 | the ephemeral X25519 public key |
//! | 24 | the XChaCha20-Poly1305 nonce |
//! | 4 + n | the sealed frames (`u32` length; the AEAD's associated data is every byte above) |
//! | 64 | the sender's Ed25519 signature over `fq sync file v1\0` and every byte above |

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::session::{Credentials, Event, Session, SessionConfig, SessionError, Side, Stats};
use super::wire::{self, FrameDecoder, LogPosition, Message, Refused};
use crate::case::{AdminCode, ReplicaId};
use crate::clock::Timestamp;
use crate::ledger::{Ledger, LedgerError, PeerInfo, Tier};
use crate::trust::{GrantError, GrantRole, SignedGrant};

/// The first bytes of every sync file.
pub const FILE_MAGIC: &[u8; 4] = b"FQS1";
/// Largest sync file read or written: a village's first sync is a few MB.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Domain separation of the sender's signature.
const FILE_CONTEXT: &[u8] = b"fq sync file v1\0";
/// Domain separation of the key derivation.
const KEY_CONTEXT: &[u8] = b"fq sync file key v1\0";
const SIGNATURE_BYTES: usize = 64;

/// Why a sync file was refused. Nothing of a refused file is applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Not a sync file (no `FQS1` magic).
    #[error("not an fq sync file")]
    NotAFile,
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("the file is {0} bytes, more than a sync file may be")]
    TooLarge(usize),
    /// The file ends early or its signature does not verify: cut short or altered.
    #[error("the file is damaged: {0}")]
    Damaged(&'static str),
    /// The sender's grant is not signed by this county's CA.
    #[error("the file's sender is not from this county: {0}")]
    Sender(#[source] GrantError),
    /// The file is sealed for another replica.
    #[error("the file is for another replica (key {intended})")]
    WrongReceiver {
        /// The intended receiver's key, in hex (its first 8 bytes).
        intended: String,
    },
    /// This replica has no key to open files with (a device without its bundle).
    #[error("this replica has no key to open sync files")]
    NoKey,
    /// The receiver's key is not a usable X25519 key.
    #[error("the receiver's key cannot receive files")]
    BadReceiverKey,
    /// The sealed frames do not decrypt (never for a file whose signature verified, unless
    /// the sender sealed it wrongly).
    #[error("the file does not decrypt")]
    Decrypt,
    /// The frames inside do not decode.
    #[error("the file's frames do not decode: {0}")]
    Frames(#[source] wire::DecodeError),
    /// A frame could not be encoded (a bug).
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] wire::EncodeError),
    /// An answer to a file this replica did not write: a file the phone this one replaced
    /// wrote (same certificate, another log), or one written before a restore. Its
    /// acknowledgements are about another log, so none of it is taken.
    #[error("the file answers a sync file this replica did not write")]
    NotOurAnswer,
    /// The sender's role or scope may not sync with this replica.
    #[error("the file's sender {subject} ({scope}) may not sync with this replica")]
    Unauthorized {
        /// The sender's certificate id.
        subject: String,
        /// Its scope.
        scope: String,
    },
    /// The session refused what the file says.
    #[error("sync session failed")]
    Session(#[from] SessionError),
    /// The local ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A sync file's clear header, as read.
#[derive(Debug, Clone)]
pub struct FileHeader {
    /// The sender's grant, verified against the county CA.
    pub sender: SignedGrant,
    /// The sender's replica id.
    pub sender_replica: ReplicaId,
    /// The receiver's Ed25519 public key.
    pub receiver: [u8; 32],
    /// This file's id.
    pub id: [u8; 16],
    /// The id of the file this one answers, if it is an answer.
    pub answers: Option<[u8; 16]>,
    /// When it was written, by the sender's clock.
    pub written_at: Timestamp,
    /// Where the file's pushes start in the sender's log: they carry what comes after it.
    pub from_seq: i64,
}

/// Who a file is for, as the writer knows it (from the receiver's grant).
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Its Ed25519 public key: the file is sealed for it.
    pub key: [u8; 32],
    /// Its certificate id.
    pub subject: String,
    /// Its role.
    pub role: GrantRole,
    /// Its scope.
    pub scope: AdminCode,
    /// Its replica id, if this replica has synced with it before.
    pub replica: Option<ReplicaId>,
}

/// What one file exchange did.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// Session totals (changes sent in the file, received from it, refused).
    pub stats: Stats,
    /// Changes of ours the other side refused (from an answer's acks).
    pub refused: Vec<Refused>,
    /// Changes of ours the file acknowledges as committed by the other side.
    pub acknowledged: bool,
    /// Whether this file was imported before (nothing new happened).
    pub replayed: bool,
}

/// Seals `frames` for `receiver`, signed by `sender_key`. `entropy` gives 16 + 32 + 24
/// random bytes (file id, ephemeral key, nonce).
// Each argument is one field of the header; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn seal(
    frames: &[u8],
    sender: &SignedGrant,
    sender_key: &SigningKey,
    sender_replica: ReplicaId,
    receiver: &[u8; 32],
    answers: Option<[u8; 16]>,
    written_at: Timestamp,
    from_seq: i64,
    entropy: [u8; 72],
) -> Result<Vec<u8>, FileError> {
    let (id, rest) = entropy.split_at(16);
    let (ephemeral, nonce) = rest.split_at(32);
    let ephemeral: [u8; 32] = ephemeral.try_into().map_err(|_| FileError::BadReceiverKey)?;
    let receiver_point = VerifyingKey::from_bytes(receiver).map_err(|_| FileError::BadReceiverKey)?.to_montgomery();
    let ephemeral_public = MontgomeryPoint::mul_base_clamped(ephemeral);
    let shared = receiver_point.mul_clamped(ephemeral);
    let key = file_key(&shared, &ephemeral_public, receiver)?;
    let mut out = Vec::with_capacity(frames.len() + 512);
    out.extend_from_slice(FILE_MAGIC);
    let grant = &sender.bytes;
    out.extend_from_slice(&u16::try_from(grant.len()).map_err(|_| FileError::Damaged("grant"))?.to_be_bytes());
    out.extend_from_slice(grant);
    out.extend_from_slice(sender_replica.as_bytes());
    out.extend_from_slice(receiver);
    out.extend_from_slice(id);
    out.extend_from_slice(&answers.unwrap_or([0; 16]));
    out.extend_from_slice(&written_at.0.to_be_bytes());
    out.extend_from_slice(&from_seq.to_be_bytes());
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(nonce);
    let sealed = XChaCha20Poly1305::new(&key.into())
        .encrypt(XNonce::from_slice(nonce), Payload { msg: frames, aad: &out })
        .map_err(|_| FileError::Decrypt)?;
    out.extend_from_slice(&u32::try_from(sealed.len()).map_err(|_| FileError::TooLarge(sealed.len()))?.to_be_bytes());
    out.extend_from_slice(&sealed);
    let signature = sender_key.sign(&signed_message(&out));
    out.extend_from_slice(&signature.to_bytes());
    if out.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Reads a file's header and checks its signature, without decrypting: who sent it and for
/// whom. A file that fails here is refused whole.
pub fn read_header(bytes: &[u8], ca: &VerifyingKey) -> Result<FileHeader, FileError> {
    Ok(parse(bytes, ca)?.0)
}

/// Checks and opens a file addressed to `own`: its header and its frames. Refuses a file
/// for another replica before decrypting it.
pub fn open(bytes: &[u8], ca: &VerifyingKey, own: &SigningKey) -> Result<(FileHeader, Vec<u8>), FileError> {
    let (header, aad, nonce, ephemeral, sealed) = parse(bytes, ca)?;
    if header.receiver != own.verifying_key().to_bytes() {
        let intended = header.receiver.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(FileError::WrongReceiver { intended });
    }
    let shared = MontgomeryPoint(ephemeral).mul_clamped(own.to_scalar_bytes());
    let key = file_key(&shared, &MontgomeryPoint(ephemeral), &header.receiver)?;
    let frames = XChaCha20Poly1305::new(&key.into())
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: sealed, aad })
        .map_err(|_| FileError::Decrypt)?;
    Ok((header, frames))
}

type Parsed<'a> = (FileHeader, &'a [u8], [u8; 24], [u8; 32], &'a [u8]);

fn parse<'a>(bytes: &'a [u8], ca: &VerifyingKey) -> Result<Parsed<'a>, FileError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge(bytes.len()));
    }
    if !bytes.starts_with(FILE_MAGIC) {
        return Err(FileError::NotAFile);
    }
    let short = || FileError::Damaged("the file ends early");
    let body_len = bytes.len().checked_sub(SIGNATURE_BYTES).ok_or_else(short)?;
    let (body, signature) = bytes.split_at(body_len);
    let mut r = Cursor { buf: body, at: FILE_MAGIC.len() };
    let grant_len = usize::from(u16::from_be_bytes(r.array()?));
    let grant = r.take(grant_len)?;
    let replica: [u8; 16] = r.array()?;
    let receiver: [u8; 32] = r.array()?;
    let id: [u8; 16] = r.array()?;
    let answers: [u8; 16] = r.array()?;
    let written_at = i64::from_be_bytes(r.array()?);
    let from_seq = i64::from_be_bytes(r.array()?);
    let ephemeral: [u8; 32] = r.array()?;
    let nonce: [u8; 24] = r.array()?;
    let aad_end = r.at;
    let sealed_len = usize::try_from(u32::from_be_bytes(r.array()?)).unwrap_or(usize::MAX);
    let sealed = r.take(sealed_len)?;
    if r.at != body.len() {
        return Err(FileError::Damaged("bytes after the sealed frames"));
    }
    let sender = SignedGrant::decode(grant, ca).map_err(FileError::Sender)?;
    let key = sender.grant.verifying_key().map_err(FileError::Sender)?;
    let signature: [u8; SIGNATURE_BYTES] = signature.try_into().map_err(|_| short())?;
    key.verify_strict(&signed_message(body), &Signature::from_bytes(&signature))
        .map_err(|_| FileError::Damaged("its signature does not verify: it was altered or cut short"))?;
    let header = FileHeader {
        sender,
        sender_replica: ReplicaId::from_bytes(replica),
        receiver,
        id,
        answers: (answers != [0; 16]).then_some(answers),
        written_at: Timestamp(written_at),
        from_seq,
    };
    Ok((header, body.get(..aad_end).unwrap_or_default(), nonce, ephemeral, sealed))
}

/// Reads a file's header fields, failing at its end instead of panicking.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FileError> {
        let short = || FileError::Damaged("the file ends early");
        let end = self.at.checked_add(n).ok_or_else(short)?;
        let piece = self.buf.get(self.at..end).ok_or_else(short)?;
        self.at = end;
        Ok(piece)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FileError> {
        self.take(N)?.try_into().map_err(|_| FileError::Damaged("the file ends early"))
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(FILE_CONTEXT.len() + body.len());
    message.extend_from_slice(FILE_CONTEXT);
    message.extend_from_slice(body);
    message
}

/// The AEAD key: SHA-256 over the context, the X25519 shared secret, the ephemeral public key
/// and the receiver's Ed25519 key. A low-order point (an all-zero secret) is refused.
fn file_key(shared: &MontgomeryPoint, ephemeral: &MontgomeryPoint, receiver: &[u8; 32]) -> Result<[u8; 32], FileError> {
    if shared.as_bytes() == &[0; 32] {
        return Err(FileError::BadReceiverKey);
    }
    let mut h = Sha256::new();
    h.update(KEY_CONTEXT);
    h.update(shared.as_bytes());
    h.update(ephemeral.as_bytes());
    h.update(receiver);
    Ok(h.finalize().into())
}

/// Decodes every frame of a file before any is handled: a file whose frames do not all
/// decode is refused whole.
pub fn frames(bytes: &[u8]) -> Result<Vec<Vec<u8>>, FileError> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes).map_err(FileError::Frames)?;
    let mut count = 0usize;
    while decoder.next().map_err(FileError::Frames)?.is_some() {
        count += 1;
    }
    if decoder.buffered() != 0 {
        return Err(FileError::Frames(wire::DecodeError::Truncated { what: "frame" }));
    }
    // Split again, by length prefix, to feed the session frame by frame.
    let mut out = Vec::with_capacity(count);
    let mut rest = bytes;
    while let Some(len) = rest.get(..4) {
        let n = usize::try_from(u32::from_be_bytes(len.try_into().unwrap_or([0; 4]))).unwrap_or(usize::MAX);
        let end = 4usize.saturating_add(n);
        let (frame, tail) =
            rest.split_at_checked(end).ok_or(FileError::Frames(wire::DecodeError::Truncated { what: "frame" }))?;
        out.push(frame.to_vec());
        rest = tail;
    }
    Ok(out)
}

fn session_config(device_peer: bool) -> SessionConfig {
    SessionConfig { one_way: true, device_peer, ..SessionConfig::default() }
}

fn drain(session: &mut Session) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(frame) = session.poll_transmit() {
        out.extend_from_slice(&frame);
    }
    out
}

fn collect(session: &mut Session, report: &mut FileReport) {
    while let Some(event) = session.poll_event() {
        if let Event::Acked { refused, .. } = event {
            report.acknowledged = true;
            report.refused.extend(refused);
        }
    }
}

/// Writes what `receiver` lacks, as far as this replica knows: a one-way session started
/// against the receiver's hello as last seen (where it stands in our log: the position it
/// last acknowledged). Writes nothing to the ledger but the new file's id, so that its answer is
/// taken here and on no other replica (a replaced phone has the same key, not the same log).
/// Returns the sealed file.
pub fn write(
    ledger: &mut Ledger,
    creds: &Credentials,
    receiver: &Receiver,
    now: Timestamp,
    entropy: [u8; 72],
) -> Result<(Vec<u8>, FileReport), FileError> {
    let Some((own_grant, own_key)) = &creds.own else { return Err(FileError::NoKey) };
    let device_peer = receiver.role.person_role().is_some();
    let replica = receiver.replica.unwrap_or(ReplicaId::from_bytes([0; 16]));
    let known = ledger.peer(replica)?;
    let acked = known.as_ref().map_or(0, |p| p.acked_seq);
    let have = LogPosition { seq: acked, hash: ledger.log_hash(acked)?.unwrap_or([0; 32]) };
    let tier = match receiver.role {
        GrantRole::TownshipServer => Tier::Township,
        GrantRole::CountyServer => Tier::County,
        _ => Tier::Device,
    };
    let mut session =
        Session::new(Side::Child, ledger, creds.clone(), session_config(device_peer), receiver.replica, now)?;
    let peer_hello = wire::encode(&Message::Hello {
        replica,
        tier,
        scope: receiver.scope.clone(),
        log_head: known.as_ref().map_or(0, |p| p.their_seq),
        have,
        min_version: wire::MIN_PROTOCOL_VERSION,
        max_version: wire::PROTOCOL_VERSION,
    })?;
    let mut frames = drain(&mut session);
    session.handle_input(ledger, &peer_hello, now)?;
    frames.extend(drain(&mut session));
    let mut report = FileReport { stats: session.stats().clone(), ..FileReport::default() };
    // The session counted what it queued as sent; nothing is acknowledged yet.
    report.stats.sent = 0;
    if crate::faults::on(crate::faults::Bug::AckOnWrite)
        && let Some(replica) = receiver.replica
    {
        // The injected bug: what the file carries counts as taken before any answer.
        let peer = PeerInfo { replica, tier, scope: receiver.scope.clone() };
        ledger.record_ack(&peer, ledger.log_head()?)?;
    }
    let me = ledger.identity().replica;
    let file = seal(&frames, own_grant, own_key, me, &receiver.key, None, now, acked, entropy)?;
    // Remembered (under our own replica id, which no sender has) so that an answer is taken
    // only for a file of this log: a replaced phone has the same key but another log.
    let mut id = [0u8; 16];
    id.copy_from_slice(&entropy[..16]);
    ledger.note_file(&me, &id)?;
    report.stats.bytes_out = u64::try_from(file.len()).unwrap_or(u64::MAX);
    Ok((file, report))
}

/// Imports a file sent to this replica and returns the answer's frames, sealed for the
/// sender (acknowledgements of what was committed here, and what the sender lacks in its
/// scope), or `None` when the file was itself an answer. The caller commits the ledger's
/// work (a server's group) before it hands the answer out: an answer is a durable promise.
pub fn import(
    ledger: &mut Ledger,
    creds: &Credentials,
    bytes: &[u8],
    now: Timestamp,
    entropy: [u8; 72],
) -> Result<(Option<Vec<u8>>, FileReport), FileError> {
    let Some((own_grant, own_key)) = &creds.own else { return Err(FileError::NoKey) };
    let (header, inner) = open(bytes, &creds.ca, own_key)?;
    let frames = frames(&inner)?;
    let sender = &header.sender.grant;
    let me = ledger.identity().clone();
    // Who may sync with whom, as a certificate says over QUIC: a device or server child
    // inside our scope, our parent server, or another device whose scope overlaps ours.
    let device_peer = sender.role.person_role().is_some() && me.tier == Tier::Device;
    let from_parent = sender.role.is_server() && sender.scope.contains(&me.scope) && sender.scope != me.scope;
    let from_child = !device_peer && !from_parent && me.scope.contains(&sender.scope);
    let overlap = sender.scope.contains(&me.scope) || me.scope.contains(&sender.scope);
    if !(from_parent || from_child || (device_peer && overlap)) {
        return Err(FileError::Unauthorized { subject: sender.subject.clone(), scope: sender.scope.to_string() });
    }
    if let Some(answered) = header.answers
        && !ledger.file_seen(&me.replica, &answered)?
    {
        return Err(FileError::NotOurAnswer);
    }
    let replayed = seen(ledger, &header)?;
    let mut report = FileReport { replayed, ..FileReport::default() };
    // An answer is read as the side that wrote the file it answers; any other file is
    // answered as the side that accepts a connection.
    let side = if header.answers.is_some() || from_parent { Side::Child } else { Side::Parent };
    let limit = Some(sender.scope.clone());
    let creds = Credentials { ca: creds.ca, own: creds.own.clone(), peer_scope_limit: limit };
    // The grant is as good as one sent in a session: keep it (a device learns its server's
    // key from an answer, and a peer's from its file).
    ledger.add_grant(&header.sender)?;
    let mut session = Session::new(side, ledger, creds, session_config(device_peer), Some(header.sender_replica), now)?;
    // The writer started its pushes where it last saw us acknowledge its log. If this replica
    // holds less of that log now (it was restored from a backup since), the file has a gap:
    // its changes are taken, but no position is, so nothing after the gap counts as held
    // (the answer's Hello tells the writer where this replica really stands).
    let held = ledger.peer(header.sender_replica)?.map_or(0, |p| p.their_seq);
    if header.answers.is_none() && header.from_seq > held {
        session.hold_position();
    }
    let _ours = drain(&mut session);
    for frame in &frames {
        if let Ok(Message::Hello { replica, have, .. }) = wire::decode(frame.get(4..).unwrap_or_default()) {
            if replica != header.sender_replica {
                return Err(FileError::Unauthorized {
                    subject: sender.subject.clone(),
                    scope: sender.scope.to_string(),
                });
            }
            // An answer says how much of our log its writer holds (before our file): if less
            // than it acknowledged before (it was restored), the next file starts there.
            if header.answers.is_some() && !replayed {
                ledger.lower_ack(replica, have.seq)?;
            }
        }
        session.handle_input(ledger, frame, now)?;
        collect(&mut session, &mut report);
    }
    let answer = drain(&mut session);
    collect(&mut session, &mut report);
    report.stats = session.stats().clone();
    ledger.note_file(&header.sender_replica, &header.id)?;
    if header.answers.is_some() {
        return Ok((None, report));
    }
    // An answer's pushes start where the file's writer said it holds our log: no gap.
    let sealed = seal(&answer, own_grant, own_key, me.replica, &sender.public_key, Some(header.id), now, 0, entropy)?;
    report.stats.bytes_out = u64::try_from(sealed.len()).unwrap_or(u64::MAX);
    Ok((Some(sealed), report))
}

/// Whether this replica imported the file before.
fn seen(ledger: &Ledger, header: &FileHeader) -> Result<bool, FileError> {
    Ok(ledger.file_seen(&header.sender_replica, &header.id)?)
}

/// The receiver a device writes to by default: the township (or county) server it syncs with,
/// whose grant it holds from an earlier session or answer file.
pub fn upstream_receiver(ledger: &Ledger) -> Result<Option<Receiver>, FileError> {
    let me = ledger.identity().scope.clone();
    let upstream = ledger.upstream()?;
    let scope = match upstream {
        Some(up) => ledger.peer(up)?.and_then(|p| AdminCode::parse(&p.scope).ok()),
        None => None,
    };
    let found = ledger.grants()?.into_iter().rev().find_map(|g| {
        let role = GrantRole::parse(&g.role).ok()?;
        let grant_scope = AdminCode::parse(&g.scope).ok()?;
        let fits = role.is_server() && grant_scope.contains(&me) && scope.as_ref().is_none_or(|s| *s == grant_scope);
        fits.then_some(Receiver { key: g.signer, subject: g.subject, role, scope: grant_scope, replica: upstream })
    });
    Ok(found)
}

/// A peer device this replica knows by its certificate id (its grant came with its changes,
/// or from an earlier exchange), if its scope overlaps ours.
pub fn peer_receiver(ledger: &Ledger, subject: &str) -> Result<Option<Receiver>, FileError> {
    let me = ledger.identity().scope.clone();
    let found = ledger.grants()?.into_iter().rev().find_map(|g| {
        let role = GrantRole::parse(&g.role).ok()?;
        let scope = AdminCode::parse(&g.scope).ok()?;
        let fits = g.subject == subject && role.person_role().is_some() && (scope.contains(&me) || me.contains(&scope));
        fits.then_some(Receiver { key: g.signer, subject: g.subject, role, scope, replica: None })
    });
    Ok(found)
}
