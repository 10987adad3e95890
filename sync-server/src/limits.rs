//! What one peer, and all peers together, may make a server hold.
//!
//! A county server is one process for a whole county, and every device holds a valid
//! certificate: a lost or cloned phone must not be able to make the server hold memory without
//! end. Four limits bound it (docs/OPERATIONS.md, "Limits", derives the memory bound from them):
//!
//! - **Connections in total** ([`Limits::max_connections`]), counted from the first packet of
//!   a handshake: past it, new attempts are refused before any cryptography is done.
//! - **Connections per certificate** ([`Limits::max_connections_per_peer`]): a new connection
//!   past it closes the same certificate's *oldest* one. A phone that lost its link and dialed
//!   again leaves a dead connection behind until the idle timeout; closing the oldest serves the
//!   live one, and an attacker still never holds more than the limit.
//! - **Streams per connection**: QUIC's own stream credit ([`crate::net::NetConfig::max_streams`]);
//!   a peer cannot open more, whatever it sends.
//! - **The input budget** ([`Limits::input_budget_bytes`], with a share per certificate,
//!   [`Limits::input_budget_per_peer_bytes`]): bytes a peer has announced but the server has not
//!   finished with. A frame is charged its announced length when its 4-byte prefix is read (the
//!   decoder never holds more than that for it) and released once the replica thread has handled
//!   its last byte; a recovery digest's parts stay charged until its last part, because the
//!   session keeps them until then. A stream whose next frame does not fit ends its session: the
//!   certificate's share is spent (`TooLarge`, the peer's fault) or the server's (`Busy`, try
//!   later). Everything a stream charged is released when it ends, however it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fq_core::sync::wire::{MAX_FRAME_BYTES, PREFIX_BYTES};

use crate::ca::Serial;

/// Connections (handshakes included) a server holds at once, unless the config says. A county's
/// 1,600 devices sync for seconds at a time; even a Monday morning keeps a few dozen open, and
/// the load generator's 128 devices at a time use half of it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Connections one certificate may hold at once, unless the config says. A device needs one,
/// two while a dead one waits for its idle timeout.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Bytes of unfinished input all peers together may make the server hold, unless the config
/// says.
pub const DEFAULT_INPUT_BUDGET_BYTES: usize = 128 * MIB;
/// Bytes of unfinished input one certificate may make the server hold, unless the config says:
/// four frames of the largest size (a device pushes one at a time), or the recovery digest of
/// a scope of about 87,000 cases (48 bytes a case; a county records a few thousand a year). It
/// is half of what one certificate's connections and streams could otherwise hold in frames
/// (4 × 2 × 1 MiB), so it binds first.
pub const DEFAULT_INPUT_BUDGET_PER_PEER_BYTES: usize = 4 * MIB;
/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// The limits a server puts on its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections at once, handshakes included.
    pub max_connections: usize,
    /// Connections one certificate may hold at once.
    pub max_connections_per_peer: usize,
    /// Bytes of unfinished input all peers together may make the server hold.
    pub input_budget_bytes: usize,
    /// Bytes of unfinished input one certificate may make the server hold (at least one frame
    /// of the largest size, [`MAX_FRAME_BYTES`]).
    pub input_budget_per_peer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            input_budget_bytes: DEFAULT_INPUT_BUDGET_BYTES,
            input_budget_per_peer_bytes: DEFAULT_INPUT_BUDGET_PER_PEER_BYTES,
        }
    }
}

/// Whose share of the input budget a charge did not fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OverBudget {
    /// The certificate's own share is spent: the peer is holding too much.
    #[error("the peer's input budget is spent: {held} bytes held, {wanted} more asked, {limit} allowed")]
    Peer {
        /// Bytes the certificate held already.
        held: usize,
        /// Bytes the new frame asked for.
        wanted: usize,
        /// The certificate's share.
        limit: usize,
    },
    /// The server's whole budget is spent (many peers at once): try later.
    #[error("the server's input budget is spent: {held} bytes held, {wanted} more asked, {limit} allowed")]
    Server {
        /// Bytes all peers held already.
        held: usize,
        /// Bytes the new frame asked for.
        wanted: usize,
        /// The whole budget.
        limit: usize,
    },
}

/// The server-wide input budget and every certificate's share of it.
#[derive(Debug)]
pub(crate) struct InputBudget {
    limit: usize,
    peer_limit: usize,
    // std Mutex: held only to add or subtract, never across an await.
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    peers: BTreeMap<Serial, usize>,
}

impl InputBudget {
    /// A budget of `limit` bytes, at most `peer_limit` of them for one certificate.
    pub(crate) fn new(limit: usize, peer_limit: usize) -> Self {
        Self { limit, peer_limit, held: Mutex::new(Held::default()) }
    }

    /// Bytes held by everyone now.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    fn take(&self, serial: &Serial, n: usize) -> Result<(), OverBudget> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.peers.get(serial).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.peer_limit {
            return Err(OverBudget::Peer { held: mine, wanted: n, limit: self.peer_limit });
        }
        if held.total.saturating_add(n) > self.limit {
            return Err(OverBudget::Server { held: held.total, wanted: n, limit: self.limit });
        }
        held.total += n;
        held.peers.insert(serial.clone(), mine + n);
        Ok(())
    }

    fn give_back(&self, serial: &Serial, n: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(n);
        let left = held.peers.get(serial).copied().unwrap_or(0).saturating_sub(n);
        if left == 0 {
            held.peers.remove(serial);
        } else {
            held.peers.insert(serial.clone(), left);
        }
    }
}

/// What one stream holds of the input budget. Shared by the stream's reader (which charges) and
/// the chunks it queued for the replica thread (which release once handled); whatever is still
/// held when the last of them is dropped goes back to the budget.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<InputBudget>,
    serial: Serial,
    held: AtomicUsize,
}

impl Charge {
    /// An empty charge on `budget` for the certificate `serial`.
    pub(crate) fn new(budget: Arc<InputBudget>, serial: Serial) -> Self {
        Self { budget, serial, held: AtomicUsize::new(0) }
    }

    /// Charges `n` more bytes, or says whose share they do not fit in (nothing is charged then).
    pub(crate) fn take(&self, n: usize) -> Result<(), OverBudget> {
        if n == 0 {
            return Ok(());
        }
        self.budget.take(&self.serial, n)?;
        self.held.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back `n` bytes (never more than this charge holds).
    pub(crate) fn release(&self, n: usize) {
        let mut given = 0;
        let _ = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            given = n.min(held);
            Some(held - given)
        });
        if given > 0 {
            self.budget.give_back(&self.serial, given);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let left = *self.held.get_mut();
        if left > 0 {
            self.budget.give_back(&self.serial, left);
        }
    }
}

/// Bytes of a frame's body the tracker reads to know its kind: version, kind, and for a digest
/// its part number and `last` flag.
const HEAD_BYTES: usize = 7;
/// The frame kind of a recovery digest (docs/PROTOCOL.md).
const KIND_DIGEST: u8 = 5;

/// Follows the frame boundaries of one stream as its bytes pass, to know what the session is
/// holding: it never decodes a frame, only reads length prefixes and the first bytes of bodies.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// The body length of the frame being read, once its prefix is complete.
    frame_len: usize,
    /// Body bytes of that frame still to come; `None` while a prefix is being read.
    remaining: Option<usize>,
    head: [u8; HEAD_BYTES],
    head_len: usize,
    /// Bytes of digest parts the session keeps until the digest's last part.
    digest_held: usize,
    /// A length over the frame limit was announced: the session refuses it before reading on,
    /// so nothing after it is ever held.
    broken: bool,
}

/// What a chunk of a stream means for the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tracked {
    /// Bytes to charge before the chunk is passed on: the announced lengths of the frames it
    /// begins.
    pub(crate) charge: usize,
    /// Bytes to release once the replica thread has handled the chunk: the frames it completes
    /// (and a digest's earlier parts with its last one).
    pub(crate) release: usize,
}

impl FrameTracker {
    /// Reads a chunk of the stream, in order.
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> Tracked {
        let mut tracked = Tracked::default();
        while !input.is_empty() && !self.broken {
            match self.remaining {
                None => {
                    let take = (PREFIX_BYTES - self.prefix_len).min(input.len());
                    let (bytes, rest) = input.split_at(take);
                    self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(bytes);
                    self.prefix_len += take;
                    input = rest;
                    if self.prefix_len == PREFIX_BYTES {
                        self.prefix_len = 0;
                        let len = usize::try_from(u32::from_be_bytes(self.prefix)).unwrap_or(usize::MAX);
                        if len > MAX_FRAME_BYTES {
                            self.broken = true;
                        } else if len > 0 {
                            tracked.charge += len;
                            self.frame_len = len;
                            self.remaining = Some(len);
                            self.head_len = 0;
                        }
                    }
                }
                Some(remaining) => {
                    let take = remaining.min(input.len());
                    let (bytes, rest) = input.split_at(take);
                    let head = (HEAD_BYTES - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + head].copy_from_slice(&bytes[..head]);
                    self.head_len += head;
                    input = rest;
                    let left = remaining - take;
                    if left > 0 {
                        self.remaining = Some(left);
                        continue;
                    }
                    self.remaining = None;
                    let digest_part = self.head_len == HEAD_BYTES && self.head[1] == KIND_DIGEST;
                    if digest_part && self.head[6] == 0 {
                        // Kept by the session until the digest's last part.
                        self.digest_held += self.frame_len;
                    } else {
                        tracked.release += self.frame_len + std::mem::take(&mut self.digest_held);
                    }
                }
            }
        }
        tracked
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use fq_core::sync::wire::{self, ErrorCode, Message};

    use super::*;

    fn serial(n: u8) -> Serial {
        format!("0{n}").parse().unwrap()
    }

    #[test]
    fn input_budget_holds_each_peer_to_its_share_and_everyone_to_the_total() {
        let budget = Arc::new(InputBudget::new(3 * MIB, 2 * MIB));
        let a = Charge::new(Arc::clone(&budget), serial(1));
        let a2 = Charge::new(Arc::clone(&budget), serial(1));
        let b = Charge::new(Arc::clone(&budget), serial(2));
        a.take(MIB).unwrap();
        a2.take(MIB).unwrap();
        assert!(matches!(a2.take(1), Err(OverBudget::Peer { held, limit, .. }) if held == 2 * MIB && limit == 2 * MIB));
        b.take(MIB).unwrap();
        assert!(matches!(b.take(1), Err(OverBudget::Server { .. })), "the total binds before b's share");
        assert_eq!(budget.total(), 3 * MIB, "a refused charge takes nothing");
        a.release(10 * MIB);
        assert_eq!(budget.total(), 2 * MIB, "a release never gives back more than was charged");
        drop(a2);
        drop(b);
        assert_eq!(budget.total(), 0, "a dropped charge gives back what it held");
        let fresh = Charge::new(Arc::clone(&budget), serial(1));
        fresh.take(2 * MIB).unwrap();
    }

    fn frame(message: &Message) -> Vec<u8> {
        wire::encode(message).unwrap()
    }

    #[test]
    fn frame_tracker_charges_a_frame_when_it_begins_and_releases_it_when_it_ends() {
        let done = frame(&Message::Done { log_head: 7 });
        let len = done.len() - PREFIX_BYTES;
        let mut t = FrameTracker::default();
        // Byte by byte: the prefix charges once, the last byte releases.
        let mut total = Tracked::default();
        for (i, byte) in done.iter().enumerate() {
            let step = t.feed(std::slice::from_ref(byte));
            if i == PREFIX_BYTES - 1 {
                assert_eq!(step.charge, len);
            }
            total.charge += step.charge;
            total.release += step.release;
        }
        assert_eq!(total, Tracked { charge: len, release: len });
        // Two frames and the start of a third in one chunk.
        let mut chunk = [done.clone(), done.clone()].concat();
        chunk.extend_from_slice(&[0, 1, 0, 0, 1]);
        assert_eq!(t.feed(&chunk), Tracked { charge: 2 * len + 0x1_0000, release: 2 * len });
        // An oversize prefix charges nothing: the session refuses it unread.
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]), Tracked::default());
        assert_eq!(t.feed(&done), Tracked::default());
    }

    #[test]
    fn frame_tracker_keeps_digest_parts_charged_until_the_last() {
        let part = |part, last| {
            frame(&Message::Digest { part, last, entries: vec![(fq_core::case::CaseId::from_bytes([1; 16]), [2; 32])] })
        };
        let first = part(0, false);
        let last = part(1, true);
        let error = frame(&Message::Error { code: ErrorCode::Busy, text: String::new() });
        let mut t = FrameTracker::default();
        let a = t.feed(&first);
        assert_eq!((a.charge, a.release), (first.len() - PREFIX_BYTES, 0));
        let b = t.feed(&last);
        assert_eq!(b.release, first.len() + last.len() - 2 * PREFIX_BYTES);
        // Other kinds are released as they complete, whatever their bytes look like.
        let c = t.feed(&error);
        assert_eq!(c.release, error.len() - PREFIX_BYTES);
    }
}
