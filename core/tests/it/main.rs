//! Integration tests of fq-core through its public API, on real SQLite files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod encryption;
mod file;
mod hostile;
mod ledger;
mod merge;
mod report;
mod routines;
mod sync;
mod wire;
