//! Revocation lists down the tree: a county server sends the list in force to its townships
//! over their sync connections; a township installs a newer one, closes what it revokes, keeps
//! it in its data directory across restarts, and ignores anything else sent on that stream
//! without losing its sync session. Real `fq-server` processes on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fq_core::ledger::Ledger;
use fq_sync_server::ca::{Bundle, MAX_REVOCATION_LIST_BYTES, RevocationHandle, RevocationList};
use fq_sync_server::client::{SyncError, SyncReport, sync_once};
use fq_sync_server::net::{CloseCode, Connection, ConnectionError, client_endpoint, server_endpoint};
use fq_sync_server::server::SAVED_REVOCATIONS_FILE;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::county::County;
use crate::process::{RunSpec, ServerProcess, write_config};
use crate::server::{device, new_case, options};

const FQ_SERVER: &str = env!("CARGO_BIN_EXE_fq-server");
const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";
/// Upper bound for one sync or one network wait.
const WAIT: Duration = Duration::from_secs(30);
/// How long a revocation may take from the CA's file to the township's refusal: the county
/// checks its file at once on SIGHUP (and every second anyway), then sends the list down the
/// open connection. Loopback takes milliseconds; the bound only keeps a broken build from
/// hanging.
const REACH: Duration = Duration::from_secs(20);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn sync(ledger: &mut Ledger, bundle: &Bundle, addr: SocketAddr) -> Result<SyncReport, SyncError> {
    timeout(WAIT, sync_once(ledger, bundle, addr, &options(), |_| {})).await.expect("sync finished in time")
}

fn assert_revoked(result: Result<SyncReport, SyncError>) {
    match result {
        Err(SyncError::Refused { code: Some(CloseCode::Revoked), .. }) => {}
        other => panic!("expected the township to refuse a revoked device, got {other:?}"),
    }
}

fn count(server: &ServerProcess, message: &str) -> usize {
    server.logs().iter().filter(|l| l["message"] == message).count()
}

/// Waits (bounded) until `server` has logged `message` at least `n` times.
async fn wait_count(server: &ServerProcess, message: &str, n: usize) {
    let start = Instant::now();
    while count(server, message) < n {
        assert!(start.elapsed() < WAIT, "{message:?} was not logged {n} times:\n{}", server.dump());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cases(data: &Path) -> Value {
    let out = crate::county::fq_server(&["status", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["counts"]["cases"].clone()
}

/// A county CA with bundles for a county server, township tw-101 and two devices of its
/// village, and a directory for each server.
struct Tree {
    county: County,
    dir: TempDir,
    d07: Bundle,
    d08: Bundle,
}

impl Tree {
    fn new() -> Self {
        let county = County::new();
        county.issue("county", "county", "532924");
        county.issue("tw-101", "township", TOWNSHIP);
        let d07 = county.issue("d07", "mediator", VILLAGE);
        let d08 = county.issue("d08", "mediator", VILLAGE);
        Tree { county, dir: tempfile::tempdir().unwrap(), d07, d08 }
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn township_data(&self) -> PathBuf {
        self.dir.path().join("tw")
    }

    /// The county server, following the CA's revocation list file (checked every second).
    fn start_county(&self) -> ServerProcess {
        let config = write_config(&self.path("county-etc"), Some(&self.county.ca_dir().join("revocations.json")));
        ServerProcess::start(
            Path::new(FQ_SERVER),
            &RunSpec {
                tier: "county",
                listen: "127.0.0.1:0",
                data_dir: &self.dir.path().join("county"),
                bundle: &self.county.bundle_path("county"),
                upstream: None,
                config: Some(&config),
            },
        )
    }

    /// Township tw-101 dialing `upstream`, with no revocation list file of its own.
    fn start_township(&self, upstream: Option<SocketAddr>) -> ServerProcess {
        let config = write_config(&self.path("tw-etc"), None);
        ServerProcess::start(
            Path::new(FQ_SERVER),
            &RunSpec {
                tier: "township",
                listen: "127.0.0.1:0",
                data_dir: &self.township_data(),
                bundle: &self.county.bundle_path("tw-101"),
                upstream,
                config: Some(&config),
            },
        )
    }

    /// Revokes `id` at the CA and tells the county server to re-read its file now.
    fn revoke(&self, id: &str, county_server: &mut ServerProcess) -> RevocationList {
        let list = self.county.revoke(id);
        county_server.signal("HUP");
        list
    }

    /// The list the township keeps in its data directory.
    fn township_saved(&self) -> RevocationList {
        RevocationList::load(&self.township_data().join(SAVED_REVOCATIONS_FILE)).unwrap()
    }
}

fn installed_from_upstream(version: u64) -> impl Fn(&Value) -> bool {
    move |l: &Value| l["version"] == version && l["source"] == "upstream"
}

#[tokio::test]
async fn township_refuses_a_device_revoked_at_the_county_and_keeps_refusing_after_a_restart() {
    let tree = Tree::new();
    let mut county_server = tree.start_county();
    let mut township = tree.start_township(Some(county_server.addr));
    township.wait_log("upstream connected", |_| true);

    // Before the revocation d07 syncs, and keeps a connection open.
    let mut d07 = device(&tree.d07);
    d07.create_case(new_case("吊销前")).unwrap();
    sync(&mut d07, &tree.d07, township.addr).await.unwrap();
    let endpoint = client_endpoint(localhost(), &tree.d07, &options().net).unwrap();
    let (open, _) = timeout(WAIT, endpoint.connect(township.addr)).await.unwrap().unwrap();

    let started = Instant::now();
    let list = tree.revoke("d07", &mut county_server);
    assert_eq!(list.version(), 1);
    county_server.wait_log("revocation list installed", |l| l["version"] == 1);
    township
        .wait_log_for("revocation list installed", REACH, installed_from_upstream(1))
        .unwrap_or_else(|| panic!("the township never installed the county's list:\n{}", township.dump()));

    // (a) The open connection is closed, and the next one refused, within the bound.
    let closed = timeout(WAIT, open.closed()).await.expect("the township closes the revoked connection");
    match closed {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(CloseCode::from_code(close.error_code), Some(CloseCode::Revoked));
        }
        other => panic!("expected a close for revocation, got {other:?}"),
    }
    d07.create_case(new_case("吊销后")).unwrap();
    assert_revoked(sync(&mut d07, &tree.d07, township.addr).await);
    assert!(started.elapsed() < REACH, "the revocation took {:?} to reach the township", started.elapsed());
    // Another device of the same village is unaffected.
    let mut d08 = device(&tree.d08);
    sync(&mut d08, &tree.d08, township.addr).await.unwrap();

    // (b) The township saved the list it got, byte for byte the CA's, in its data directory.
    let saved = tree.township_saved();
    assert_eq!(saved, list);
    saved.verify(tree.d07.ca()).unwrap();
    assert!(saved.contains(tree.d07.serial()));

    // (c) With the county gone, a restarted township still refuses d07: the saved list is the
    //     only place it can have it from (its bundle and config know of no revocation).
    county_server.kill();
    township.signal("TERM");
    assert!(township.wait_exit(WAIT).is_some_and(|s| s.success()), "{}", township.dump());
    let township = tree.start_township(None);
    township.wait_log("saved revocation list read", |l| {
        l["path"].as_str().is_some_and(|p| p.ends_with("revocations.json"))
    });
    assert_revoked(sync(&mut d07, &tree.d07, township.addr).await);
    township.wait_log("connection refused", |l| l["reason"].as_str().is_some_and(|r| r.contains("revoked")));
    sync(&mut d08, &tree.d08, township.addr).await.unwrap();
}

#[test]
fn township_starts_with_a_warning_when_its_saved_list_is_corrupt() {
    let tree = Tree::new();
    let data = tree.township_data();
    std::fs::create_dir_all(&data).unwrap();
    let saved = data.join(SAVED_REVOCATIONS_FILE);
    std::fs::write(&saved, b"{\"format\": 1, \"county\": \"5329").unwrap();
    let township = tree.start_township(None);
    let warning = township.wait_log(
        "saved revocation list unusable; ignoring it and starting with the bundle's and the config's lists",
        |_| true,
    );
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["path"], saved.to_str().unwrap());
    assert!(warning["error"].as_str().unwrap().contains("not valid json"), "{warning}");
}

/// A stand-in for the county between a township and the real county server: it holds the
/// county's bundle towards the township and the township's towards the county, pipes the sync
/// session through unchanged, forwards the county's revocation streams, and can send the
/// township streams of its own.
struct Middle {
    addr: SocketAddr,
    inject: mpsc::UnboundedSender<Vec<u8>>,
}

impl Middle {
    async fn start(tree: &Tree, county_addr: SocketAddr) -> Middle {
        let county_bundle = Bundle::load(&tree.county.bundle_path("county")).unwrap();
        let township_bundle = Bundle::load(&tree.county.bundle_path("tw-101")).unwrap();
        let handle = RevocationHandle::new(county_bundle.ca().clone(), tree.county.revocations()).unwrap();
        let endpoint = server_endpoint(localhost(), &county_bundle, handle, &options().net).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (inject, mut injected) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let handshake = endpoint.accept().await.unwrap();
            let (below, _) = handshake.authenticate().await.unwrap();
            let dialer = client_endpoint(localhost(), &township_bundle, &options().net).unwrap();
            let (above, _) = dialer.connect(county_addr).await.unwrap();
            above.set_max_concurrent_uni_streams(1u32.into());
            tokio::spawn(pipe_sessions(below.clone(), above.clone()));
            let (forward, mut to_send) = mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                while let Ok(mut recv) = above.accept_uni().await {
                    let bytes = recv.read_to_end(MAX_REVOCATION_LIST_BYTES).await.unwrap();
                    let _ = forward.send(bytes);
                }
            });
            loop {
                let bytes = tokio::select! {
                    Some(bytes) = injected.recv() => bytes,
                    Some(bytes) = to_send.recv() => bytes,
                    else => break,
                };
                send_uni(&below, &bytes).await;
            }
            let _keep = (endpoint, dialer);
        });
        Middle { addr, inject }
    }

    fn send(&self, bytes: Vec<u8>) {
        self.inject.send(bytes).unwrap();
    }
}

/// Every bidirectional stream the township opens is opened on to the county and copied both
/// ways.
async fn pipe_sessions(below: Connection, above: Connection) {
    while let Ok((mut down_send, mut down_recv)) = below.accept_bi().await {
        let Ok((mut up_send, mut up_recv)) = above.open_bi().await else { return };
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut down_recv, &mut up_send).await;
            let _ = up_send.finish();
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut up_recv, &mut down_send).await;
            let _ = down_send.finish();
        });
    }
}

/// One unidirectional stream holding `bytes`; the township may stop it early (too large).
async fn send_uni(conn: &Connection, bytes: &[u8]) {
    let mut send = timeout(WAIT, conn.open_uni()).await.expect("the township grants a stream").unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let _ = timeout(WAIT, send.stopped()).await;
}

// Multi-threaded: the middle's tasks must run while the test thread blocks on the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn township_ignores_garbage_forged_and_older_lists_and_keeps_its_session() {
    let tree = Tree::new();
    let mut county_server = tree.start_county();
    let middle = Middle::start(&tree, county_server.addr).await;
    let township = tree.start_township(Some(middle.addr));
    township.wait_log("upstream connected", |_| true);
    let v0 = tree.county.revocations();

    // Not JSON; JSON but far too long; a list that revokes d07 with a version above anything
    // the CA signed, under the empty list's signature.
    middle.send(b"not a revocation list".to_vec());
    middle.send(vec![b' '; MAX_REVOCATION_LIST_BYTES + 1]);
    let mut forged: Value = serde_json::from_slice(&v0.to_json().unwrap()).unwrap();
    forged["version"] = 9.into();
    forged["serials"] = serde_json::json!([tree.d07.serial().to_string()]);
    middle.send(forged.to_string().into_bytes());
    wait_count(&township, "revocation list from upstream ignored", 3).await;
    let reasons: Vec<String> = township
        .logs()
        .iter()
        .filter(|l| l["message"] == "revocation list from upstream ignored")
        .map(|l| l["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(reasons[0].contains("not valid json"), "{reasons:?}");
    assert!(reasons[1].contains("cannot read the stream"), "{reasons:?}");
    assert!(reasons[2].contains("not signed by the ca"), "{reasons:?}");
    assert!(!tree.township_data().join(SAVED_REVOCATIONS_FILE).exists(), "nothing bad may be saved");

    // d07 is not revoked, and the session with the county still carries its case up.
    let mut d07 = device(&tree.d07);
    d07.create_case(new_case("伪造名单之后")).unwrap();
    sync(&mut d07, &tree.d07, township.addr).await.unwrap();
    let county_data = tree.dir.path().join("county");
    let start = Instant::now();
    while cases(&county_data) != 1 {
        assert!(start.elapsed() < WAIT, "the case never reached the county:\n{}", township.dump());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The genuine list still arrives on the same connection, and an older one after it changes
    // nothing.
    tree.revoke("d07", &mut county_server);
    township
        .wait_log_for("revocation list installed", REACH, installed_from_upstream(1))
        .unwrap_or_else(|| panic!("the county's list never arrived:\n{}", township.dump()));
    // (The county's own v0, sent when the township connected, was the first stale one.)
    let stale = count(&township, "revocation list is not newer; ignored");
    middle.send(v0.to_json().unwrap());
    wait_count(&township, "revocation list is not newer; ignored", stale + 1).await;
    assert_eq!(tree.township_saved().version(), 1);
    assert_revoked(sync(&mut d07, &tree.d07, township.addr).await);
    assert_eq!(count(&township, "upstream connected"), 1, "the link to the county never dropped");
    assert_eq!(count(&township, "upstream disconnected"), 0, "{}", township.dump());
}
