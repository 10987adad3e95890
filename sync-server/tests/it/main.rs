//! Integration tests of `fq-sync-server`: the CA through the real `fq-server` binary, mutual TLS
//! over real QUIC on 127.0.0.1, and the sync server itself (in-process and as the binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca;
mod county;
mod language;
mod limits;
mod lossy;
mod peer;
mod process;
mod relay;
mod report;
mod restart;
mod revocation;
mod schema;
mod server;
mod tls;
