//! Integration tests of `fq`: each drives the built binary on a temporary data
//! directory and reads its `--json` output, as a script or the app would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod conflict;
mod crash;
mod encryption;
mod export;
mod harness;
mod input;
mod language;
mod lifecycle;
mod peer;
// The `fq-server` process guard, shared with fq-sync-server's tests.
#[path = "../../../sync-server/tests/it/process.rs"]
mod process;
mod routines;
mod schema;
mod sync;
mod usb;
