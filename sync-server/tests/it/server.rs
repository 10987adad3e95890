//! The sync server over real QUIC on 127.0.0.1: in-process through the library, and as the real
//! `fq-server run` binary (refusals, bad input, SIGTERM, status).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fq_core::case::{Category, Risk};
use fq_core::clock::SystemClock;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::store::ListFilter;
use fq_core::sync::wire::{ErrorCode, FrameDecoder, Message};
use fq_sync_server::ca::{Bundle, CaCertificate, SERVER_NAME};
use fq_sync_server::client::{SyncError, SyncOptions, sync_once};
use fq_sync_server::config::ServerConfig;
use fq_sync_server::net::{ALPN, NetConfig, client_endpoint};
use fq_sync_server::server;
use serde_json::Value;
use tokio::time::timeout;

use crate::county::{County, fq_server};
use crate::process::{RunSpec, ServerProcess, write_config};

const FQ_SERVER: &str = env!("CARGO_BIN_EXE_fq-server");
/// Upper bound for one sync or one network wait in these tests.
const WAIT: Duration = Duration::from_secs(30);
const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Short timeouts: a refused or dead peer must not keep a test waiting.
pub fn options() -> SyncOptions {
    let mut o = SyncOptions::default();
    let mut net = NetConfig::default();
    net.keep_alive_interval = Duration::from_millis(500);
    net.idle_timeout = Duration::from_secs(5);
    o.net = net;
    o.connect_timeout = Duration::from_secs(5);
    o.stall_timeout = Duration::from_secs(20);
    o
}

/// A device ledger in memory for the holder of `bundle`.
pub fn device(bundle: &Bundle) -> Ledger {
    let init = InitOptions {
        tier: Tier::Device,
        name: bundle.id().to_string(),
        role: bundle.role().person_role().unwrap(),
        scope: bundle.scope().clone(),
        grid: None,
    };
    let mut ledger = Ledger::init_in_memory(init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    ledger.add_grant(bundle.grant()).unwrap();
    ledger
}

/// A neighbour dispute titled `title`, in the device's own village.
pub fn new_case(title: &str) -> NewCase {
    NewCase {
        category: Category::Neighbor,
        title: title.into(),
        description: String::new(),
        parties: Vec::new(),
        risk: Risk::Low,
        flags: Vec::new(),
        village: None,
        grid: None,
    }
}

fn ids(ledger: &Ledger) -> Vec<String> {
    let mut ids: Vec<String> =
        ledger.list(&ListFilter::default()).unwrap().into_iter().map(|r| r.id.to_string()).collect();
    ids.sort();
    ids
}

async fn sync(
    ledger: &mut Ledger,
    bundle: &Bundle,
    addr: SocketAddr,
) -> Result<fq_sync_server::client::SyncReport, SyncError> {
    timeout(WAIT, sync_once(ledger, bundle, addr, &options(), |_| {})).await.expect("sync finished in time")
}

/// A township server started from the real binary, with its bundle issued by `county`.
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

fn status(data: &Path) -> Value {
    let out = fq_server(&["status", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn serve_in_process_moves_changes_between_two_devices() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = county.issue("tw-101", "township", TOWNSHIP);
    drop(bundle);
    let mut config =
        ServerConfig::new(Tier::Township, localhost(), dir.path().join("tw"), county.bundle_path("tw-101"));
    config.net = options().net;
    let bound = server::bind(config).unwrap();
    let addr = bound.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    let a_bundle = county.issue("d07", "mediator", VILLAGE);
    let b_bundle = county.issue("d08", "grid-worker", VILLAGE);
    let mut a = device(&a_bundle);
    let mut b = device(&b_bundle);
    let case = a.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let report = sync(&mut a, &a_bundle, addr).await.unwrap();
    assert_eq!(report.stats.sent, 1, "{report:?}");
    assert_eq!(report.server.id.as_str(), "tw-101");
    let report = sync(&mut b, &b_bundle, addr).await.unwrap();
    assert_eq!(report.stats.received, 1, "{report:?}");
    b.add_note(case.id, "双方到场").unwrap();
    sync(&mut b, &b_bundle, addr).await.unwrap();
    let report = sync(&mut a, &a_bundle, addr).await.unwrap();
    assert_eq!(report.stats.received, 1);
    assert_eq!(a.heads(case.id).unwrap(), b.heads(case.id).unwrap());
    // A second sync with nothing new moves nothing.
    let again = sync(&mut a, &a_bundle, addr).await.unwrap();
    assert_eq!((again.stats.sent, again.stats.received), (0, 0));

    stop.send(()).unwrap();
    timeout(WAIT, running).await.unwrap().unwrap().unwrap();
}

/// A hand-built client: trusts `ca`, presents no certificate.
fn anonymous_client(ca: &CaCertificate) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

#[tokio::test]
async fn run_refuses_devices_without_a_good_certificate() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), Some(&county.ca_dir().join("revocations.json")));
    let server = township(&county, &dir.path().join("tw"), Some(&config));
    let good = county.issue("d07", "mediator", VILLAGE);

    // No certificate at all: the handshake fails.
    let anonymous = anonymous_client(good.ca());
    let connecting = anonymous.connect(server.addr, SERVER_NAME).unwrap();
    if let Ok(Ok(conn)) = timeout(WAIT, connecting).await {
        let closed = timeout(WAIT, conn.closed()).await.expect("the server closes an anonymous connection");
        assert!(!matches!(closed, quinn::ConnectionError::LocallyClosed), "{closed:?}");
    }
    server.wait_log("connection refused", |_| true);

    // A certificate from another county's CA (same id, role and scope).
    let impostor = County::new().issue("d07", "mediator", VILLAGE);
    let mut ledger = device(&impostor);
    ledger.create_case(new_case("冒名")).unwrap();
    let err = sync(&mut ledger, &impostor, server.addr).await.unwrap_err();
    assert!(err.is_trust_failure(), "{err:?}");
    assert_eq!(ledger.counts().unwrap()[0], 1);

    // A good device syncs; then it is revoked at the CA, and the running server picks up the
    // new list from the file named in its config.
    let mut ledger = device(&good);
    ledger.create_case(new_case("正常")).unwrap();
    sync(&mut ledger, &good, server.addr).await.unwrap();
    county.revoke("d07");
    server.wait_log("revocation list installed", |l| l["version"] == 1);
    ledger.create_case(new_case("吊销后")).unwrap();
    let err = sync(&mut ledger, &good, server.addr).await.unwrap_err();
    assert!(err.is_trust_failure(), "{err:?}");
    assert!(matches!(err, SyncError::Refused { code: Some(fq_sync_server::net::CloseCode::Revoked), .. }), "{err:?}");
    server.wait_log("connection refused", |l| l["reason"].as_str().is_some_and(|r| r.contains("revoked")));
    assert_eq!(
        status(&dir.path().join("tw"))["counts"]["cases"],
        1,
        "nothing from the revoked device after revocation"
    );
}

/// Sends `bytes` on a fresh stream of an authenticated connection, finishes it, and returns
/// what the server answered before ending the stream (or the read error).
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    // The server may stop the stream before reading it all: a write error is fine.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    timeout(WAIT, recv.read_to_end(1 << 20)).await.map_err(|_| "no answer".to_owned())?.map_err(|e| e.to_string())
}

fn error_code(reply: &[u8]) -> Option<ErrorCode> {
    let mut d = FrameDecoder::new();
    d.push(reply).ok()?;
    while let Ok(Some(msg)) = d.next() {
        if let Message::Error { code, .. } = msg {
            return Some(code);
        }
    }
    None
}

#[tokio::test]
async fn run_ends_sessions_on_garbage_and_keeps_serving() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let server = township(&county, &dir.path().join("tw"), None);
    let rogue = county.issue("d07", "mediator", VILLAGE);
    let endpoint = client_endpoint(localhost(), &rogue, &options().net).unwrap();
    let (conn, _) = timeout(WAIT, endpoint.connect(server.addr)).await.unwrap().unwrap();

    // An unknown message kind in a well-formed frame.
    let reply = send_raw(&conn, &[0, 0, 0, 5, 1, 99, 0, 0, 0]).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::BadFrame), "{reply:?}");
    // A length prefix far over the 1 MiB limit: refused before anything is allocated.
    let reply = send_raw(&conn, &[0xff, 0xff, 0xff, 0xff, 1, 1]).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::TooLarge), "{reply:?}");
    // Plain noise, and a lot of it.
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let reply = send_raw(&conn, &noise).await;
    assert!(reply.as_ref().map_or(true, |r| error_code(r).is_some()), "{reply:?}");
    server.wait_log("session failed", |_| true);

    // Another device syncs right after, on a connection of its own.
    let honest = county.issue("d08", "mediator", VILLAGE);
    let mut ledger = device(&honest);
    ledger.create_case(new_case("正常案件")).unwrap();
    let report = sync(&mut ledger, &honest, server.addr).await.unwrap();
    assert_eq!(report.stats.sent, 1);
    // And the rogue connection itself still works for a proper session.
    let mut rogue_ledger = device(&rogue);
    let report = sync(&mut rogue_ledger, &rogue, server.addr).await.unwrap();
    assert_eq!(report.stats.received, 1);
}

#[test]
fn run_exits_zero_on_sigterm_and_logs_shutdown() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = township(&county, &dir.path().join("tw"), None);
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15)).expect("fq-server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}; logs:\n{}", server.dump());
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
    server.wait_log("shutting down", |_| true);
    server.wait_log("shutdown complete", |_| true);
}

#[test]
fn run_refuses_a_bundle_of_the_wrong_tier() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    county.issue("county", "county", "532924");
    let data: PathBuf = dir.path().join("data");
    let out = fq_server(&[
        "run",
        "--tier",
        "township",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--bundle",
        county.bundle_path("county").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tier township needs a township server bundle"));
    assert!(!data.join("ledger.db").exists());
}

#[tokio::test]
async fn status_shows_peers_and_refusals_while_running() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tw");
    let server = township(&county, &data, None);
    let bundle = county.issue("d07", "mediator", VILLAGE);
    let mut ledger = device(&bundle);
    ledger.create_case(new_case("宅基地")).unwrap();
    // A case of another village, made to look like this device's own work.
    let other = county.issue("d09", "mediator", "532924101202");
    let mut elsewhere = device(&other);
    elsewhere.create_case(new_case("越界")).unwrap();
    let changes = elsewhere.changes_since(0, 10).unwrap();
    ledger.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
    let report = sync(&mut ledger, &bundle, server.addr).await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");

    let s = status(&data);
    crate::schema::assert_valid("server-status.v1.schema.json", &s);
    assert_eq!(s["identity"]["tier"], "township");
    assert_eq!(s["counts"]["cases"], 1);
    assert_eq!(s["peers"].as_array().unwrap().len(), 1);
    assert_eq!(s["peers"][0]["tier"], "device");
    assert!(s["peers"][0]["last_sync"].is_i64());
    let refusals = s["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{s:#}");
    assert!(refusals[0]["detail"].as_str().unwrap().contains("out-of-scope"), "{s:#}");
    // The human form says the same.
    let out = fq_server(&["status", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("township server tw-101") && text.contains("recent refusals"), "{text}");
    assert_eq!(ids(&ledger).len(), 2);
}

#[tokio::test]
async fn run_township_dials_the_county_again_after_it_dies() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    county.issue("county", "county", "532924");
    // Short link timers so that a dead county is noticed in seconds, not minutes.
    let quick = "sync_interval_secs = 2\nkeep_alive_secs = 1\nidle_timeout_secs = 3\nack_timeout_secs = 3\n";
    let config = crate::process::write_config_text(dir.path(), "quick.toml", quick);
    let county_data = dir.path().join("county");
    let county_bundle = county.bundle_path("county");
    let spec = |listen| RunSpec {
        tier: "county",
        listen,
        data_dir: &county_data,
        bundle: &county_bundle,
        upstream: None,
        config: Some(&config),
    };
    let mut county_server = ServerProcess::start(Path::new(FQ_SERVER), &spec("127.0.0.1:0"));
    let county_addr = county_server.addr;
    county.issue("tw-101", "township", TOWNSHIP);
    let township = ServerProcess::start(
        Path::new(FQ_SERVER),
        &RunSpec {
            tier: "township",
            listen: "127.0.0.1:0",
            data_dir: &dir.path().join("tw"),
            bundle: &county.bundle_path("tw-101"),
            upstream: Some(county_addr),
            config: Some(&config),
        },
    );
    township.wait_log("upstream connected", |_| true);

    // The county dies without a word; a device's case reaches the township meanwhile.
    county_server.signal("KILL");
    county_server.wait_exit(Duration::from_secs(10)).unwrap();
    let bundle = county.issue("d07", "mediator", VILLAGE);
    let mut ledger = device(&bundle);
    ledger.create_case(new_case("停电期间登记")).unwrap();
    sync(&mut ledger, &bundle, township.addr).await.unwrap();
    township.wait_log("upstream disconnected", |_| true);

    // The county comes back on its address; the township finds it and hands the case up.
    let listen = county_addr.to_string();
    let _county_again = ServerProcess::start(Path::new(FQ_SERVER), &spec(&listen));
    let start = Instant::now();
    while status(&county_data)["counts"]["cases"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "the county never got the case:\n{}", township.dump());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(township.logs().iter().filter(|l| l["message"] == "upstream connected").count() >= 2);
}
