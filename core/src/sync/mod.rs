//! The sync protocol, sans-io: no sockets and no clock here (DESIGN.md §6).
//!
//! - [`wire`]: the versioned, length-prefixed binary frames and the messages they carry,
//!   with every size limit checked before anything is allocated. See `docs/PROTOCOL.md`.

pub mod wire;
