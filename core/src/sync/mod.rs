//! The sync protocol, sans-io: no sockets and no clock here (DESIGN.md §6).
//!
//! - [`session`]: one session with one peer: hello, push, ack, recovery by digest;
//!   quinn-style verbs, the ledger passed in.
//! - [`file`](mod@file): sync by file (`.fqs` on a USB stick): the session's frames, signed by the
//!   sender and encrypted to the receiver, driven through a one-way session.
//! - [`wire`]: the versioned, length-prefixed binary frames and the messages they carry,
//!   with every size limit checked before anything is allocated. See `docs/PROTOCOL.md`.

pub mod file;
pub mod session;
pub mod wire;
