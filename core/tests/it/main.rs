//! Integration tests of fq-core through its public API, on real SQLite files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod encryption;
mod file;
mod hostile;
mod ledger;
mod merge;
mod sync;
mod wire;
