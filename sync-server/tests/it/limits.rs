//! What peers can make a real `fq-server` hold (docs/OPERATIONS.md, "Limits"): one device
//! certificate flooding it with half-sent frames, and a server full of connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::Tier;
use fq_core::sync::session::{Credentials, Session, SessionConfig, Side};
use fq_core::sync::wire::{self, Message};
use fq_sync_server::ca::Bundle;
use fq_sync_server::client::{SyncError, sync_once};
use fq_sync_server::config::ServerConfig;
use fq_sync_server::net::{ClientEndpoint, Connection, SendStream, client_endpoint};
use tokio::time::timeout;

use crate::county::{County, fq_server_json};
use crate::process::{RunSpec, ServerProcess, write_config_text};
use crate::server::{device, new_case, options};

const FQ_SERVER: &str = env!("CARGO_BIN_EXE_fq-server");
const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";
/// Bound on every network wait of these tests.
const WAIT: Duration = Duration::from_secs(30);
/// The length a half-sent push announces (under the 1 MiB frame limit), and how much of it
/// the attacker sends.
const ANNOUNCED: u32 = 1_000_000;
const SENT: usize = 900_000;

/// Resident and peak memory of a process, in bytes, from `/proc/PID/status`.
fn memory(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What a device sends to begin a session: its Hello and its Grant, as a real session makes them.
fn opening(bundle: &Bundle) -> Vec<u8> {
    let ledger = device(bundle);
    let creds = Credentials {
        ca: bundle.ca_verifying_key(),
        own: Some((bundle.grant().clone(), bundle.signing_key().clone())),
        peer_scope_limit: None,
    };
    let mut session =
        Session::new(Side::Child, &ledger, creds, SessionConfig::default(), None, SystemClock.now()).unwrap();
    let mut bytes = session.poll_transmit().expect("a child's session opens with its hello");
    bytes.extend(wire::encode(&Message::Grant { bytes: bundle.grant().bytes.clone() }).unwrap());
    bytes
}

/// Hello, Grant, then most of a push that announces [`ANNOUNCED`] bytes and never ends.
fn half_sent_push(bundle: &Bundle) -> Vec<u8> {
    let mut bytes = opening(bundle);
    bytes.extend(ANNOUNCED.to_be_bytes());
    bytes.extend([1, 3]); // version 1, kind Push
    bytes.resize(bytes.len() + SENT - 2, 0);
    bytes
}

/// What one attacking stream came to.
#[derive(Debug, PartialEq, Eq)]
enum Stream {
    /// The server took every byte (and holds the unfinished frame).
    Held,
    /// The server stopped reading it or its connection was closed.
    Refused,
    /// No stream credit: the connection already runs as many sessions as it may.
    NoCredit,
}

/// Opens a stream on `conn` and writes `bytes` without finishing it.
async fn attack_stream(conn: &Connection, bytes: &[u8]) -> (Stream, Option<SendStream>) {
    let Ok(opened) = timeout(Duration::from_millis(500), conn.open_bi()).await else {
        return (Stream::NoCredit, None);
    };
    let Ok((mut send, _recv)) = opened else { return (Stream::Refused, None) };
    match timeout(WAIT, send.write_all(bytes)).await {
        Ok(Ok(())) => (Stream::Held, Some(send)),
        _ => (Stream::Refused, None),
    }
}

fn township(county: &County, data: &Path, config: Option<&Path>) -> ServerProcess {
    let bundle = county.bundle_path("tw-101");
    if !bundle.exists() {
        county.issue("tw-101", "township", TOWNSHIP);
    }
    ServerProcess::start(
        Path::new(FQ_SERVER),
        &RunSpec { tier: "township", listen: "127.0.0.1:0", data_dir: data, bundle: &bundle, upstream: None, config },
    )
}

async fn connect(endpoint: &ClientEndpoint, addr: SocketAddr) -> Connection {
    timeout(WAIT, endpoint.connect(addr)).await.expect("connected in time").expect("the server takes the connection").0
}

/// The issue's attack, with the defaults of a real server: one device certificate opens
/// connection after connection, and on each as many streams as it can, every one carrying a
/// valid Hello and Grant and then 900 KB of a 1 MB push that never ends. Without limits the
/// server held all of it (656 MB for 150 connections); with them, the certificate's oldest
/// connections are closed, streams past the credit never open, and frames past its share of the
/// input budget end their session. Meanwhile an honest device syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bound_holds_under_one_certificate_flooding_half_sent_frames() {
    const CONNECTIONS: usize = 20;
    const STREAMS: usize = 3;
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tw");
    let server = township(&county, &data, None);
    let pid = server.pid();
    // The first connection warms the server up (TLS, the replica's first session): measure from
    // a server that has served one honest device.
    let honest = county.issue("d08", "mediator", VILLAGE);
    let mut honest_ledger = device(&honest);
    honest_ledger.create_case(new_case("攻击前")).unwrap();
    timeout(WAIT, sync_once(&mut honest_ledger, &honest, server.addr, &options(), |_| {})).await.unwrap().unwrap();
    let (before, _) = memory(pid);

    let rogue = county.issue("rogue", "mediator", VILLAGE);
    let bytes = half_sent_push(&rogue);
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), &rogue, &options().net).unwrap();
    let mut held_streams = Vec::new();
    let mut outcomes = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let conn = connect(&endpoint, server.addr).await;
        let mut written = 0;
        for _ in 0..STREAMS {
            let (outcome, send) = attack_stream(&conn, &bytes).await;
            if outcome == Stream::Held {
                written += bytes.len();
            }
            outcomes.push(outcome);
            held_streams.extend(send);
        }
        connections.push((conn, written));
    }
    let attempted = CONNECTIONS * STREAMS * SENT;
    // Written is not sent: wait until every connection still open has put its bytes on the wire
    // (on loopback, sent is received), so that the server holds all it will hold.
    for (conn, written) in &connections {
        let sent = timeout(WAIT, async {
            while conn.close_reason().is_none() && usize::try_from(conn.stats().udp_tx.bytes).unwrap() < *written {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(sent.is_ok(), "an attacking connection never sent what it wrote");
    }

    // An honest device syncs while the attacker holds all it can.
    honest_ledger.create_case(new_case("攻击中")).unwrap();
    let report = timeout(WAIT, sync_once(&mut honest_ledger, &honest, server.addr, &options(), |_| {}))
        .await
        .expect("the honest sync finished in time")
        .expect("the honest device is served during the attack");
    assert_eq!(report.stats.sent, 1, "{report:?}");
    let (during, peak) = memory(pid);

    let count = |s: Stream| outcomes.iter().filter(|o| **o == s).count();
    let bound =
        ServerConfig::new(Tier::Township, server.addr, data.clone(), county.bundle_path("tw-101")).memory_bound();
    eprintln!(
        "attack: {CONNECTIONS} connections x {STREAMS} streams, {:.1} MiB of half-sent frames attempted; \
         streams held {}, refused {}, without credit {}",
        mib(attempted),
        count(Stream::Held),
        count(Stream::Refused),
        count(Stream::NoCredit),
    );
    eprintln!(
        "server RSS: {:.1} MiB before, {:.1} MiB during (peak {:.1} MiB), growth {:.1} MiB; \
         documented bound per certificate {:.1} MiB, whole server {:.1} MiB",
        mib(before),
        mib(during),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(bound.per_peer),
        mib(bound.server)
    );

    // Every limit fired, and says so with the certificate's id.
    server.wait_log("connection limit per certificate reached; oldest connection closed", |l| l["peer"] == "rogue");
    server.wait_log("peer input budget spent; session ended", |l| l["peer"] == "rogue");
    assert!(count(Stream::NoCredit) > 0, "no stream was held back by the stream credit: {outcomes:?}");
    assert!(count(Stream::Held) > 0, "the attack never got a frame in: {outcomes:?}");
    // The memory the server was made to hold stays within what one certificate may cost it,
    // and the whole process within the documented server-wide bound.
    assert!(
        peak.saturating_sub(before) < bound.per_peer,
        "one certificate made the server grow by {:.1} MiB, more than its bound {:.1} MiB",
        mib(peak.saturating_sub(before)),
        mib(bound.per_peer)
    );
    assert!(peak < bound.server, "peak RSS {:.1} MiB over the bound {:.1} MiB", mib(peak), mib(bound.server));
    assert!(attempted > 2 * bound.per_peer, "the attack must try more than the bound allows");
    let status = fq_server_json(&["status", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(status["counts"]["cases"], 2, "both of the honest device's cases are on the server: {status:#}");
    drop(held_streams);
    drop(connections);
}

/// A server at its connection limit refuses the next attempt before any handshake, and the
/// device is told the server is busy; once a slot is free it is served.
#[tokio::test]
async fn limits_refuse_connections_past_the_server_limit_as_busy() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_text(dir.path(), "small.toml", "max_connections = 2\n");
    let server = township(&county, &dir.path().join("tw"), Some(&config));
    let hog = county.issue("d07", "mediator", VILLAGE);
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), &hog, &options().net).unwrap();
    let first = connect(&endpoint, server.addr).await;
    let second = connect(&endpoint, server.addr).await;

    let late = county.issue("d08", "mediator", VILLAGE);
    let mut ledger = device(&late);
    ledger.create_case(new_case("满员时")).unwrap();
    let err = timeout(WAIT, sync_once(&mut ledger, &late, server.addr, &options(), |_| {})).await.unwrap().unwrap_err();
    assert!(matches!(err, SyncError::Busy { .. }), "{err:?}");
    server.wait_log("connection refused: server full", |l| l["limit"] == 2);

    first.close(0u32.into(), b"done");
    second.close(0u32.into(), b"done");
    let report = timeout(WAIT, async {
        loop {
            match sync_once(&mut ledger, &late, server.addr, &options(), |_| {}).await {
                Err(SyncError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
                other => break other,
            }
        }
    })
    .await
    .expect("a slot frees once the connections are closed")
    .unwrap();
    assert_eq!(report.stats.sent, 1);
}
