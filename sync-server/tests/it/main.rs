//! Integration tests of `fq-sync-server`: the CA through the real `fq-server` binary, and
//! mutual TLS over real QUIC on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca;
mod county;
mod tls;
