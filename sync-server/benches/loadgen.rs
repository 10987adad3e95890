//! Load generator: many devices upload their edits to ONE township server over real QUIC on
//! loopback. Prints figures; asserts nothing (DESIGN.md §9: timings live in benchmarks).
//!
//! ```text
//! cargo bench -p fq-sync-server --bench loadgen
//! FQ_LOADGEN_DEVICES=200 FQ_LOADGEN_EDITS=20 FQ_LOADGEN_CONCURRENCY=64 cargo bench -p fq-sync-server --bench loadgen
//! ```
//!
//! - A county CA in a temporary directory issues the township server's bundle and one real,
//!   distinct bundle per device (the server records each device as its own peer).
//! - Each device is an in-memory ledger holding its grant and `FQ_LOADGEN_EDITS` changes made
//!   through the ledger API (a case or two, then one-field edits and notes), all made before
//!   timing starts. In memory so that the clients' own disk writes do not compete with the
//!   server's fsyncs.
//! - The server is the real `fq-server run` binary in a child process, so its peak RSS (VmHWM)
//!   is its own. It runs with production settings (durability FULL: one fsync per batch).
//! - Devices sync with [`fq_sync_server::client::dial`] and `Dialed::sync_then_hang_up`,
//!   `FQ_LOADGEN_CONCURRENCY` sessions at a time (default 128: a Monday morning's burst), on a
//!   2-thread runtime (this machine has 2 cores, shared with the server). A device's slot frees
//!   when its session ends; its hang-up runs on beside the others and is reported apart.
//!
//! Targets reported against (not asserted): at least 20,000 changes/s ingested, at most 300
//! bytes per one-field edit, at most 256 MB server RSS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use fq_core::case::{AdminCode, Category, Risk};
use fq_core::clock::SystemClock;
use fq_core::doc::FieldEdit;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::sync::wire::{self, Envelope, LogPosition, Message};
use fq_core::trust;
use fq_sync_server::ca::{Bundle, CertificateAuthority, GrantRole};
use fq_sync_server::client::{SyncError, SyncOptions, SyncReport, dial};
use fq_sync_server::status;
use tokio::task::JoinSet;

const COUNTY: &str = "532924";
const TOWNSHIP: &str = "532924101";
/// Most villages a township code leaves room for (532924101001 ..= 532924101999).
const MAX_VILLAGES: usize = 999;
/// One case per this many changes on a device (at least one case).
const CHANGES_PER_CASE: usize = 10;
/// Bound on waiting for the server to start listening.
const SERVER_START: Duration = Duration::from_secs(30);
/// Bound on the server's graceful shutdown.
const SERVER_STOP: Duration = Duration::from_secs(20);
/// Bound on one device's sync.
const SYNC_WAIT: Duration = Duration::from_secs(120);

const TARGET_CHANGES_PER_SEC: f64 = 20_000.0;
const TARGET_EDIT_BYTES: usize = 300;
const TARGET_RSS_MB: f64 = 256.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to run, from the environment.
struct Settings {
    devices: usize,
    edits: usize,
    concurrency: usize,
    villages: usize,
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => {
            let n: usize = v.trim().parse().with_context(|| format!("{name}={v:?} is not a count"))?;
            if n == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(n)
        }
        Err(_) => Ok(default),
    }
}

fn run() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; any other argument is a mistake worth saying.
    if let Some(arg) = std::env::args().skip(1).find(|a| a != "--bench") {
        bail!(
            "unexpected argument {arg:?}; settings come from FQ_LOADGEN_DEVICES, FQ_LOADGEN_EDITS, FQ_LOADGEN_CONCURRENCY"
        );
    }
    let settings = Settings {
        devices: env_usize("FQ_LOADGEN_DEVICES", 1_570)?,
        edits: env_usize("FQ_LOADGEN_EDITS", 20)?,
        concurrency: env_usize("FQ_LOADGEN_CONCURRENCY", 128)?,
        villages: env_usize("FQ_LOADGEN_VILLAGES", MAX_VILLAGES)?.min(MAX_VILLAGES),
    };
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_fq-server"));
    if !server_bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p fq-sync-server` (cargo bench normally does)",
            server_bin.display()
        );
    }
    println!(
        "loadgen: {} devices x {} edits, {} at a time, over {} villages, one township server ({})",
        settings.devices,
        settings.edits,
        settings.concurrency,
        settings.villages.min(settings.devices),
        server_bin.display()
    );

    one_field_edit_payload()?;

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let now = SystemTime::now();
    let county: AdminCode = COUNTY.parse()?;
    let ca = CertificateAuthority::init(&dir.path().join("ca"), &county, now).context("ca init")?;
    let tw_bundle = dir.path().join("tw-101.bundle.json");
    ca.issue(&"tw-101".parse()?, GrantRole::TownshipServer, &TOWNSHIP.parse()?, now)
        .context("issue the township bundle")?
        .save(&tw_bundle)
        .context("save the township bundle")?;

    let started = Instant::now();
    let mut bundles = Vec::with_capacity(settings.devices);
    for i in 0..settings.devices {
        let village: AdminCode = format!("{TOWNSHIP}{:03}", 1 + i % settings.villages).parse()?;
        let role = if i % 2 == 0 { GrantRole::Mediator } else { GrantRole::GridWorker };
        let id = format!("d{i:05}").parse()?;
        bundles.push(ca.issue(&id, role, &village, now).with_context(|| format!("issue device {i}"))?);
    }
    let issuing = started.elapsed();
    println!(
        "setup: issued {} device bundles in {:.2} s ({:.2} ms each)",
        settings.devices,
        issuing.as_secs_f64(),
        issuing.as_secs_f64() * 1000.0 / settings.devices as f64
    );

    let started = Instant::now();
    let mut devices = Vec::with_capacity(settings.devices);
    let mut total_changes = 0u64;
    for bundle in bundles {
        let ledger = device_ledger(&bundle, settings.edits)?;
        total_changes += u64::try_from(ledger.log_head()?)?;
        devices.push((bundle, ledger));
    }
    println!(
        "setup: {} device ledgers (in memory) with {total_changes} changes in {:.2} s; loadgen RSS now {:.0} MB",
        devices.len(),
        started.elapsed().as_secs_f64(),
        own_rss_mb().unwrap_or(f64::NAN)
    );

    let data = dir.path().join("tw");
    let mut server = ServerChild::start(&server_bin, &tw_bundle, &data)?;
    println!("server: pid {} listening on {}; RSS at start {:.1} MB", server.pid(), server.addr, server.rss_mb().0);

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    let cpu_before = (cpu_seconds(server.pid()), cpu_seconds("self"));
    let drops_before = udp_receive_buffer_errors();
    let outcome = runtime.block_on(upload(devices, server.addr, settings.concurrency));
    let cpu = (cpu_seconds(server.pid()) - cpu_before.0, cpu_seconds("self") - cpu_before.1);
    let udp_drops = drops_before.zip(udp_receive_buffer_errors()).map(|(a, b)| b.saturating_sub(a));
    let (peak_mb, rss_mb) = server.rss_mb();
    let log_lines = server.log_lines();
    server.stop()?;
    let outcome = outcome?;

    let held = status::read(&data).context("read the township replica after the run")?;
    let server = ServerFigures { peak_mb, rss_mb, log_lines, held: held.counts.changes, cpu_s: cpu.0, udp_drops };
    report(&settings, total_changes, &outcome, &server, cpu.1);
    Ok(())
}

/// The changes of one device: `edits` in all, a case per [`CHANGES_PER_CASE`], the rest
/// one-field title and risk edits and notes, round robin over its cases.
fn device_ledger(bundle: &Bundle, edits: usize) -> anyhow::Result<Ledger> {
    let init = InitOptions {
        tier: Tier::Device,
        name: bundle.id().to_string(),
        role: bundle.role().person_role().ok_or_else(|| anyhow!("{} is not a person's bundle", bundle.id()))?,
        scope: bundle.scope().clone(),
        grid: None,
    };
    let mut ledger = Ledger::init_in_memory(init, Arc::new(SystemClock), LedgerOptions::default())?;
    ledger.add_grant(bundle.grant())?;
    let cases = edits.div_ceil(CHANGES_PER_CASE).max(1).min(edits);
    let mut ids = Vec::with_capacity(cases);
    for c in 0..cases {
        let case = ledger.create_case(NewCase {
            category: Category::Neighbor,
            title: format!("宅基地滴水纠纷 {c}"),
            description: "两户因房屋滴水檐位置发生争执，经网格员上报。".into(),
            parties: Vec::new(),
            risk: Risk::Low,
            flags: Vec::new(),
            village: None,
            grid: None,
        })?;
        ids.push(case.id);
    }
    // Each risk edit flips the case's risk: writing the value a field already holds makes no
    // change at all.
    let mut risks = vec![Risk::Low; ids.len()];
    for e in 0..edits - cases {
        let c = e % ids.len();
        let case = ids[c];
        match e % 3 {
            0 => ledger
                .edit(case, FieldEdit { title: Some(format!("宅基地滴水纠纷（第{e}稿）")), ..FieldEdit::default() }),
            1 => ledger.add_note(case, "第二次调解：双方到场，初步达成意向"),
            _ => {
                risks[c] = if risks[c] == Risk::Low { Risk::Medium } else { Risk::Low };
                ledger.edit(case, FieldEdit { risk: Some(risks[c]), ..FieldEdit::default() })
            }
        }?;
    }
    Ok(ledger)
}

/// Prints the size of a one-field title edit as it travels: the Automerge change, its envelope
/// (case id, signer key, signature) inside a push, and a push frame carrying only it.
fn one_field_edit_payload() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let now = SystemTime::now();
    let ca = CertificateAuthority::init(&dir.path().join("ca"), &COUNTY.parse()?, now)?;
    let bundle = ca.issue(&"d-probe".parse()?, GrantRole::Mediator, &format!("{TOWNSHIP}201").parse()?, now)?;
    let mut ledger = device_ledger(&bundle, 1)?;
    let case = ledger.list(&Default::default())?.first().map(|r| r.id).ok_or_else(|| anyhow!("no case"))?;
    ledger.edit(case, FieldEdit { title: Some("宅基地滴水纠纷（调解中）".into()), ..FieldEdit::default() })?;
    let head = ledger.log_head()?;
    let change = ledger.changes_since(head - 1, 1)?.pop().ok_or_else(|| anyhow!("no change at the log head"))?;
    let envelope = Envelope {
        case: change.case,
        signer: Some(bundle.public_key_bytes()),
        signature: Some(trust::sign_change(bundle.signing_key(), &change.hash)),
        change: change.bytes.clone(),
    };
    let push = |envelopes: Vec<Envelope>| -> anyhow::Result<usize> {
        let upto = Some(LogPosition { seq: head, hash: [0; 32] });
        Ok(wire::encode(&Message::Push { batch: 1, upto, envelopes })?.len())
    };
    let with = push(vec![envelope.clone()])?;
    let without = push(Vec::new())?;
    println!(
        "payload: one-field title edit: change {} B, envelope {} B in a push (wire_len {}; target <= {TARGET_EDIT_BYTES} B), \
         push frame carrying only it {with} B",
        change.bytes.len(),
        with - without,
        envelope.wire_len(),
    );
    Ok(())
}

/// What the uploads did.
struct Outcome {
    /// From the first dial to the last device's session ending (its last ack).
    wall: Duration,
    /// Each device's report, and the time from its dial to the end of its session.
    reports: Vec<(SyncReport, Duration)>,
    failures: Vec<String>,
    /// How long each device's hang-up took after its session ended.
    hang_ups: Vec<Duration>,
    /// From the last session ending to the last hang-up done.
    hang_up_tail: Duration,
}

/// Syncs every device with the server, `concurrency` sessions at a time. A device's slot is
/// free once its session is over: its hang-up (`Endpoint::wait_idle`, about three probe
/// timeouts) is the phone's business, costs the server nothing, and runs on meanwhile.
async fn upload(devices: Vec<(Bundle, Ledger)>, server: SocketAddr, concurrency: usize) -> anyhow::Result<Outcome> {
    let options = Arc::new(SyncOptions::default());
    let mut pending = devices.into_iter();
    let mut running = JoinSet::new();
    let mut hanging_up = JoinSet::new();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    loop {
        while running.len() < concurrency {
            let Some((bundle, mut ledger)) = pending.next() else { break };
            let options = Arc::clone(&options);
            running.spawn(async move {
                let began = Instant::now();
                let session = async {
                    match dial(&bundle, server, &options).await {
                        Ok(dialed) => {
                            let (result, hang_up) = dialed.sync_then_hang_up(&mut ledger, |_| {}).await;
                            (result, Some(hang_up))
                        }
                        Err(e) => (Err(e), None),
                    }
                };
                let (result, hang_up) = tokio::time::timeout(SYNC_WAIT, session)
                    .await
                    .unwrap_or_else(|_| (Err(SyncError::Stalled(SYNC_WAIT)), None));
                let result = result.map_err(|e| format!("{}: {e:#}", bundle.id()));
                // The ledger is dropped here: its memory goes back while the others run.
                (result.map(|report| (report, began.elapsed())), hang_up)
            });
        }
        match running.join_next().await {
            Some(joined) => {
                let (result, hang_up) = joined.context("a device task panicked")?;
                match result {
                    Ok(done) => reports.push(done),
                    Err(e) => failures.push(e),
                }
                if let Some(hang_up) = hang_up {
                    hanging_up.spawn(async move {
                        let began = Instant::now();
                        hang_up.wait().await;
                        began.elapsed()
                    });
                }
            }
            None => break,
        }
    }
    let wall = started.elapsed();
    let mut hang_ups = Vec::with_capacity(reports.len());
    while let Some(joined) = hanging_up.join_next().await {
        hang_ups.push(joined.context("a hang-up task panicked")?);
    }
    Ok(Outcome { wall, reports, failures, hang_ups, hang_up_tail: started.elapsed() - wall })
}

/// The value at quantile `q` (nearest rank) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets target" } else { "MISSES target" }
}

/// What the server process did, from outside.
struct ServerFigures {
    peak_mb: f64,
    rss_mb: f64,
    log_lines: u64,
    /// Changes its replica holds after the run.
    held: i64,
    /// CPU seconds (user + system) it used during the uploads.
    cpu_s: f64,
    /// UDP receive-buffer drops on the host during the uploads, if /proc says.
    udp_drops: Option<u64>,
}

fn report(settings: &Settings, total_changes: u64, outcome: &Outcome, server: &ServerFigures, client_cpu_s: f64) {
    let ServerFigures { peak_mb, rss_mb, log_lines, held, cpu_s, .. } = *server;
    let sent: u64 = outcome.reports.iter().map(|(r, _)| r.stats.sent).sum();
    let refused: usize = outcome.reports.iter().map(|(r, _)| r.refused.len()).sum();
    let bytes_out: u64 = outcome.reports.iter().map(|(r, _)| r.stats.bytes_out).sum();
    let bytes_in: u64 = outcome.reports.iter().map(|(r, _)| r.stats.bytes_in).sum();
    let pulled: u64 = outcome.reports.iter().map(|(r, _)| r.stats.received).sum();
    let mut latency: Vec<Duration> = outcome.reports.iter().map(|(r, _)| r.elapsed).collect();
    latency.sort();
    let mut call: Vec<Duration> = outcome.reports.iter().map(|(_, d)| *d).collect();
    call.sort();
    let mut hang_ups = outcome.hang_ups.clone();
    hang_ups.sort();
    let wall = outcome.wall.as_secs_f64();
    let rate = sent as f64 / wall;
    let per_edit = if sent == 0 { f64::NAN } else { (bytes_out + bytes_in) as f64 / sent as f64 };

    println!("--- loadgen results ---");
    println!(
        "devices: {} synced, {} failed (of {}); concurrency {}",
        outcome.reports.len(),
        outcome.failures.len(),
        settings.devices,
        settings.concurrency
    );
    for failure in outcome.failures.iter().take(5) {
        println!("  failure: {failure}");
    }
    println!(
        "changes: {sent} acknowledged of {total_changes} made; {refused} refused; server now holds {held}; \
         devices pulled {pulled} changes of their villages' other devices"
    );
    println!("wall time: {wall:.2} s");
    println!(
        "ingest rate: {rate:.0} changes/s ({}: >= {TARGET_CHANGES_PER_SEC:.0})",
        verdict(rate >= TARGET_CHANGES_PER_SEC)
    );
    println!(
        "cpu during the uploads: server {cpu_s:.2} s ({:.1} us per change acknowledged), load generator {client_cpu_s:.2} s, \
         of {:.2} s available on {} cores",
        cpu_s * 1e6 / sent.max(1) as f64,
        wall * cores() as f64,
        cores()
    );
    println!(
        "per-device sync latency (dial + session): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(quantile(&latency, 0.50)),
        ms(quantile(&latency, 0.99)),
        ms(quantile(&latency, 1.0))
    );
    println!(
        "per-device session time (task start to last ack, queueing for the dial included): p50 {:.1} ms, p99 {:.1} ms",
        ms(quantile(&call, 0.50)),
        ms(quantile(&call, 0.99))
    );
    println!(
        "per-device hang-up after the session (not holding a slot): p50 {:.1} ms, p99 {:.1} ms; the last one ended \
         {:.2} s after the last ack",
        ms(quantile(&hang_ups, 0.50)),
        ms(quantile(&hang_ups, 0.99)),
        outcome.hang_up_tail.as_secs_f64()
    );
    if let Some(drops) = server.udp_drops {
        println!("udp datagrams dropped for full receive buffers during the run (whole host): {drops}");
    }
    println!(
        "session bytes: {bytes_out} out + {bytes_in} in = {per_edit:.0} B per edit ({:.0} B up, {:.0} B down, the \
         pulled changes included; sync frames only: QUIC/TLS handshakes and packet headers not counted)",
        bytes_out as f64 / sent.max(1) as f64,
        bytes_in as f64 / sent.max(1) as f64,
    );
    println!(
        "server peak RSS (VmHWM): {peak_mb:.1} MB ({}: <= {TARGET_RSS_MB:.0} MB); RSS at end {rss_mb:.1} MB; {log_lines} log lines",
        verdict(peak_mb <= TARGET_RSS_MB)
    );
}

/// The real `fq-server run`, as a child process; killed if still running when dropped.
struct ServerChild {
    child: Child,
    addr: SocketAddr,
    lines: Arc<AtomicU64>,
}

impl ServerChild {
    /// Starts the server and waits (bounded) for its "listening" log line.
    fn start(binary: &Path, bundle: &Path, data: &Path) -> anyhow::Result<ServerChild> {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = Command::new(binary)
            .args(["run", "--tier", "township", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data)
            .arg("--bundle")
            .arg(bundle)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?;
        let (addr_tx, addr_rx) = std_mpsc::channel::<SocketAddr>();
        let lines = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&lines);
        // Drain the log for the life of the process: a full pipe would stall the server.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                counted.fetch_add(1, Ordering::Relaxed);
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening"
                        && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
                    {
                        let _ = addr_tx.send(addr);
                    }
                    if v["level"] == "ERROR" {
                        eprintln!("server: {line}");
                    }
                }
            }
        });
        let mut server = ServerChild { child, addr: "127.0.0.1:0".parse()?, lines };
        match addr_rx.recv_timeout(SERVER_START) {
            Ok(addr) => server.addr = addr,
            Err(_) => bail!("fq-server did not log \"listening\" within {SERVER_START:?}"),
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmHWM, VmRSS) of the server in MB, from /proc; NaN where unreadable.
    fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        (proc_kb(&status, "VmHWM:") / 1024.0, proc_kb(&status, "VmRSS:") / 1024.0)
    }

    /// Log lines read so far.
    fn log_lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        let signalled = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status()?;
        if !signalled.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + SERVER_STOP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("fq-server exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("fq-server did not stop within {SERVER_STOP:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `Vm*:` field of /proc/<pid>/status in kB; NaN when absent.
fn proc_kb(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one); NaN when
/// /proc cannot say.
fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / clock_ticks_per_second()
}

/// The host's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`Udp: RcvbufErrors` in /proc/net/snmp).
fn udp_receive_buffer_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `getconf CLK_TCK` (100 on every Linux this runs on, but asked rather than assumed).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// This process's RSS in MB.
fn own_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(proc_kb(&status, "VmRSS:") / 1024.0)
}
