//! What an operator feels: the memory peers can make a real `fq-server` hold, how long SIGTERM
//! takes, and what a restart costs a device that is syncing. Prints figures; asserts nothing
//! (DESIGN.md §9: timings live in benchmarks).
//!
//! ```text
//! cargo bench -p fq-sync-server --bench operations
//! FQ_OPS_RUNS=9 FQ_OPS_CHANGES=5000 cargo bench -p fq-sync-server --bench operations
//! FQ_OPS=sigterm,restart cargo bench -p fq-sync-server --bench operations   # some parts only
//! ```
//!
//! 1. **Connections**: resident memory per authenticated, idle connection, and per open session
//!    (Hello and Grant sent), from one certificate allowed 64 connections.
//! 2. **The issue's attack**: one certificate opens connection after connection, every stream
//!    carrying a Hello, a Grant and 900 KB of a 1 MB push that never ends; once with the default
//!    limits, once with limits raised out of the way (what the server did before them).
//! 3. **SIGTERM**: from the signal to the process's exit, with a device connected, and from
//!    there to a new server listening on the same port (`FQ_OPS_RUNS` runs; median).
//! 4. **Restart during a sync**: a device uploads `FQ_OPS_CHANGES` changes through
//!    `fq_sync_server::client` (what `fq sync` runs); after the first acknowledged batch the
//!    township is killed (SIGKILL) and restarted on the same port. Reported: the whole sync,
//!    from the kill to the device's redial being connected, from the kill to the sync's end,
//!    and the same upload without a restart (`FQ_OPS_RUNS` runs; medians).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark is a test program")]

#[path = "../tests/it/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use fq_core::case::{Category, Risk};
use fq_core::clock::{Clock, SystemClock};
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::sync::session::{Credentials, Session, SessionConfig, Side};
use fq_core::sync::wire::{self, Message};
use fq_sync_server::ca::{Bundle, CertificateAuthority, GrantRole};
use fq_sync_server::client::{SyncOptions, dial, sync_once};
use fq_sync_server::net::{ClientEndpoint, Connection, SendStream, client_endpoint};

use crate::process::{RunSpec, ServerProcess};

const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let runs = env_usize("FQ_OPS_RUNS", 7);
    let changes = env_usize("FQ_OPS_CHANGES", 3_000);
    let setup = Setup::new();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("--- operations: fq-server {} ---", setup.binary.display());
    let only = std::env::var("FQ_OPS").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    if part("connections") {
        rt.block_on(connections(&setup));
    }
    if part("attack") {
        rt.block_on(attack(&setup));
    }
    if part("sigterm") {
        sigterm(&setup, runs, &rt);
    }
    if part("restart") {
        restart(&setup, runs, changes, &rt);
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// A county CA with a township bundle and a few device bundles, in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    binary: PathBuf,
    township: PathBuf,
    devices: Vec<Bundle>,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = CertificateAuthority::init(&dir.path().join("ca"), &"532924".parse().unwrap(), now).unwrap();
        let township = dir.path().join("tw-101.bundle.json");
        ca.issue(&"tw-101".parse().unwrap(), GrantRole::TownshipServer, &TOWNSHIP.parse().unwrap(), now)
            .unwrap()
            .save(&township)
            .unwrap();
        let devices = ["d07", "d08", "rogue"]
            .iter()
            .map(|id| ca.issue(&id.parse().unwrap(), GrantRole::Mediator, &VILLAGE.parse().unwrap(), now).unwrap())
            .collect();
        Setup { dir, binary: PathBuf::from(env!("CARGO_BIN_EXE_fq-server")), township, devices }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A township server with its own fresh data directory and `config` (if any).
    fn server(&self, name: &str, listen: &str, config: Option<&str>) -> ServerProcess {
        let data = self.path(name);
        let config = config.map(|text| {
            let path = self.path(&format!("{name}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        });
        ServerProcess::start(
            &self.binary,
            &RunSpec {
                tier: "township",
                listen,
                data_dir: &data,
                bundle: &self.township,
                upstream: None,
                config: config.as_deref(),
            },
        )
    }
}

fn options() -> SyncOptions {
    SyncOptions { connect_timeout: Duration::from_secs(10), ..SyncOptions::default() }
}

/// A device ledger in memory holding `changes` of its own (cases of ten changes).
fn device(bundle: &Bundle, changes: usize) -> Ledger {
    let init = InitOptions {
        tier: Tier::Device,
        name: bundle.id().to_string(),
        role: bundle.role().person_role().unwrap(),
        scope: bundle.scope().clone(),
        grid: None,
    };
    let mut ledger = Ledger::init_in_memory(init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    ledger.add_grant(bundle.grant()).unwrap();
    let mut made = 0;
    while made < changes {
        let case = ledger
            .create_case(NewCase {
                category: Category::Neighbor,
                title: format!("纠纷 {made}"),
                description: String::new(),
                parties: Vec::new(),
                risk: Risk::Low,
                flags: Vec::new(),
                village: None,
                grid: None,
            })
            .unwrap();
        made += 1;
        for n in 0..9 {
            if made >= changes {
                break;
            }
            ledger.add_note(case.id, &format!("第{n}次调解")).unwrap();
            made += 1;
        }
    }
    ledger
}

/// Resident and peak memory of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// What a device sends to begin a session: its Hello and its Grant.
fn opening(bundle: &Bundle) -> Vec<u8> {
    let ledger = device(bundle, 0);
    let creds = Credentials {
        ca: bundle.ca_verifying_key(),
        own: Some((bundle.grant().clone(), bundle.signing_key().clone())),
        peer_scope_limit: None,
    };
    let mut session =
        Session::new(Side::Child, &ledger, creds, SessionConfig::default(), None, SystemClock.now()).unwrap();
    let mut bytes = session.poll_transmit().unwrap();
    bytes.extend(wire::encode(&Message::Grant { bytes: bundle.grant().bytes.clone() }).unwrap());
    bytes
}

async fn connect(endpoint: &ClientEndpoint, addr: SocketAddr) -> Connection {
    tokio::time::timeout(WAIT, endpoint.connect(addr)).await.unwrap().unwrap().0
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// 1. Resident memory per idle connection and per open session.
async fn connections(setup: &Setup) {
    const N: usize = 64;
    let server = setup.server("connections", "127.0.0.1:0", Some("max_connections_per_peer = 64\n"));
    let bundle = &setup.devices[0];
    let mut warm = device(bundle, 1);
    sync_once(&mut warm, bundle, server.addr, &options(), |_| {}).await.unwrap();
    settle().await;
    let (before, _) = memory(server.pid());
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), bundle, &options().net).unwrap();
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(connect(&endpoint, server.addr).await);
    }
    settle().await;
    let (idle, _) = memory(server.pid());
    let hello = opening(bundle);
    let mut streams: Vec<SendStream> = Vec::new();
    for conn in &conns {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&hello).await.unwrap();
        streams.push(send);
    }
    settle().await;
    let (open, _) = memory(server.pid());
    println!(
        "connections: RSS {before:.1} MiB; +{N} idle connections {idle:.1} MiB ({:.1} KiB each); \
         +a session on each {open:.1} MiB ({:.1} KiB per session)",
        (idle - before) * 1024.0 / N as f64,
        (open - idle) * 1024.0 / N as f64
    );
    drop(streams);
    for conn in conns {
        conn.close(0u32.into(), b"");
    }
}

/// 2. The issue's attack with the default limits and with limits raised out of the way.
async fn attack(setup: &Setup) {
    let raised = "max_connections_per_peer = 64\nmax_streams_per_connection = 4\n\
                  input_budget_mib = 4096\ninput_budget_per_peer_mib = 4096\n";
    for (name, config) in [("default limits", None), ("limits raised", Some(raised))] {
        const CONNECTIONS: usize = 40;
        const STREAMS: usize = 4;
        let server = setup.server(&format!("attack-{}", name.len()), "127.0.0.1:0", config);
        let rogue = &setup.devices[2];
        let mut bytes = opening(rogue);
        bytes.extend(1_000_000u32.to_be_bytes());
        bytes.extend([1, 3]);
        bytes.resize(bytes.len() + 900_000 - 2, 0);
        let (before, _) = memory(server.pid());
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), rogue, &options().net).unwrap();
        let mut held = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            let conn = connect(&endpoint, server.addr).await;
            for _ in 0..STREAMS {
                if let Ok(Ok((mut send, _))) = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await
                    && let Ok(Ok(())) = tokio::time::timeout(WAIT, send.write_all(&bytes)).await
                {
                    held.push(send);
                }
            }
            conns.push(conn);
        }
        settle().await;
        let honest = &setup.devices[1];
        let mut ledger = device(honest, 10);
        let served = sync_once(&mut ledger, honest, server.addr, &options(), |_| {}).await;
        let (during, peak) = memory(server.pid());
        println!(
            "attack ({name}): {CONNECTIONS} connections x {STREAMS} streams x 900 KB attempted \
             ({:.0} MiB); {} streams written in full; server RSS {before:.1} -> {during:.1} MiB, \
             peak {peak:.1} MiB (+{:.1} MiB); honest device {}",
            (CONNECTIONS * STREAMS * 900_000) as f64 / (1024.0 * 1024.0),
            held.len(),
            peak - before,
            if served.is_ok() { "synced" } else { "failed" }
        );
        drop(held);
        for conn in conns {
            conn.close(0u32.into(), b"");
        }
    }
}

/// 3. SIGTERM to exit, with a device connected, and the restart on the same port.
fn sigterm(setup: &Setup, runs: usize, rt: &tokio::runtime::Runtime) {
    let mut exits = Vec::new();
    let mut restarts = Vec::new();
    let mut server = setup.server("sigterm", "127.0.0.1:0", None);
    let addr = server.addr;
    let bundle = &setup.devices[0];
    for _ in 0..runs {
        // A device that synced and keeps its connection open, as one mid-sync would.
        let _guard = rt.enter();
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), bundle, &options().net).unwrap();
        let conn = rt.block_on(async {
            let mut ledger = device(bundle, 1);
            sync_once(&mut ledger, bundle, addr, &options(), |_| {}).await.unwrap();
            connect(&endpoint, addr).await
        });
        let start = Instant::now();
        server.signal("TERM");
        let status = server.wait_exit(WAIT).expect("fq-server exits after SIGTERM");
        exits.push(start.elapsed());
        assert!(status.success(), "exit status {status:?}");
        let again = Instant::now();
        server = setup.server("sigterm", &addr.to_string(), None);
        restarts.push(again.elapsed());
        drop(conn);
        drop(endpoint);
    }
    println!(
        "sigterm: signal to exit median {} (runs: {}); a new server on the same port listening {} later (median)",
        ms(median(exits.clone())),
        exits.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        ms(median(restarts))
    );
}

/// 4. A township killed (SIGKILL) and restarted while a device uploads.
fn restart(setup: &Setup, runs: usize, changes: usize, rt: &tokio::runtime::Runtime) {
    let bundle = &setup.devices[0];
    let mut plain = Vec::new();
    let mut whole = Vec::new();
    let mut to_redial = Vec::new();
    let mut to_end = Vec::new();
    for run in 0..runs {
        // Without a restart, for reference.
        let server = setup.server(&format!("plain-{run}"), "127.0.0.1:0", None);
        let mut ledger = device(bundle, changes);
        let start = Instant::now();
        let report = rt.block_on(sync_once(&mut ledger, bundle, server.addr, &options(), |_| {})).unwrap();
        plain.push(start.elapsed());
        assert_eq!(report.stats.sent as usize, changes);
        drop(server);

        let name = format!("restart-{run}");
        let server = setup.server(&name, "127.0.0.1:0", None);
        let addr = server.addr;
        let mut ledger = device(bundle, changes);
        let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let redialed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let killer = {
            let killed = Arc::clone(&killed);
            let data = setup.path(&name);
            let binary = setup.binary.clone();
            let township = setup.township.clone();
            thread::spawn(move || {
                let mut server = server;
                server.wait_log("changes applied", |l| l["peer"] == "d07");
                *killed.lock().unwrap() = Some(Instant::now());
                server.signal("KILL");
                server.wait_exit(WAIT).unwrap();
                restart_server(&binary, &township, &data, addr)
            })
        };
        let start = Instant::now();
        let seen = Arc::clone(&redialed);
        let report = rt
            .block_on(async {
                let dialed = dial(bundle, addr, &options()).await?;
                dialed
                    .sync(&mut ledger, |p| {
                        if p.reconnects > 0 {
                            seen.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                    })
                    .await
            })
            .unwrap();
        let end = Instant::now();
        whole.push(end - start);
        let _restarted = killer.join().unwrap();
        let killed = killed.lock().unwrap().unwrap();
        let redialed = redialed.lock().unwrap().unwrap_or(end);
        to_redial.push(redialed.saturating_duration_since(killed));
        to_end.push(end.saturating_duration_since(killed));
        assert_eq!(report.redials, 1, "the sync must have crossed the restart: {report:?}");
    }
    println!(
        "restart: {changes} changes uploaded; without a restart median {}; with the township killed \
         and restarted after the first ack: whole sync median {}, kill to the device connected again \
         median {} (runs: {}), kill to the sync's end median {}",
        ms(median(plain)),
        ms(median(whole)),
        ms(median(to_redial.clone())),
        to_redial.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        ms(median(to_end))
    );
}

fn restart_server(binary: &Path, bundle: &Path, data: &Path, addr: SocketAddr) -> ServerProcess {
    let listen = addr.to_string();
    ServerProcess::start(
        binary,
        &RunSpec { tier: "township", listen: &listen, data_dir: data, bundle, upstream: None, config: None },
    )
}
