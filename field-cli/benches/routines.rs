//! The officers' routines at county scale, timed through the real `fq`
//! binary: `fq report monthly` in every format (and `fq report subsidy`) on a
//! county replica of 100,000 cases, and `fq todo` on a township replica of
//! 10,000 cases (issue 11's targets: ≤ 2 s and ≤ 100 ms).
//!
//! ```text
//! cargo bench -p fq-field --bench routines
//! FQ_BENCH_CASES=20000 FQ_BENCH_TOWNSHIP_CASES=2000 cargo bench -p fq-field --bench routines   # a quick look
//! FQ_BENCH_DIR=/tmp/fq-routines cargo bench -p fq-field --bench routines                        # keep (and reuse) the ledgers
//! ```
//! The ledgers are built through `fq_core`'s API from the sample generator
//! (`fq_core::sample::generate`: the whole county, recorded over 210 days,
//! with settlements, escalations, follow-ups, supervision), with the county
//! policy and roster installed, each batch of cases in one transaction (the
//! build is setup, not what is timed). Each command is then run as a new
//! process, as a county admin runs it, and the wall time of every run is
//! printed: best, median and worst of `FQ_BENCH_RUNS` (default 5; 20 for
//! `todo`), and the mean CPU time of a run (user + system, from
//! `/proc/self/stat`), which other work on a shared machine does not inflate.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fq_core::case::{AdminCode, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::county::County;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::policy::{SignedPolicy, areas_of};
use fq_core::roster::Roster;
use fq_core::sample::generate;

const FQ: &str = env!("CARGO_BIN_EXE_fq");
/// The township of the `todo` replica: 宾居镇.
const TOWNSHIP: &str = "532924101";
/// Every case is recorded and handled before this time, 2026-11-03 09:00
/// China time; the report is October's.
const NOW: Timestamp = Timestamp(1_793_667_600_000);
const NOW_TEXT: &str = "2026-11-03T09:00:00+08:00";
const MONTH: &str = "2026-10";
const BATCH: usize = 500;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Builds `cases` sample cases of `county` into a new ledger at `dir/ledger.db`,
/// unless a ledger is there already (a kept `FQ_BENCH_DIR`).
fn build(dir: &Path, county: &County, tier: Tier, scope: &str, name: &str, cases: usize) {
    let path = dir.join("ledger.db");
    if path.exists() {
        println!("{}: reusing {}", name, path.display());
        return;
    }
    std::fs::create_dir_all(dir).expect("data dir");
    let clock = ManualClock::new(NOW);
    let role = if tier == Tier::County { Role::CountyAdmin } else { Role::TownshipOfficer };
    let init =
        InitOptions { tier, name: name.into(), role, scope: AdminCode::parse(scope).expect("scope"), grid: None };
    let opts = LedgerOptions { seed: Some(11), ..Default::default() };
    let mut l = Ledger::init(&path, init, Arc::new(clock.clone()), opts).expect("init");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let binchuan = County::binchuan();
    let policy = SignedPolicy::sign(
        &binchuan.code,
        1,
        Timestamp(1_790_000_000_000),
        "",
        Roster::from_county(&binchuan).expect("roster").staff().to_vec(),
        areas_of(&binchuan),
        &key,
    )
    .expect("policy");
    l.install_policy(policy.as_bytes(), &key.verifying_key()).expect("install");
    let started = Instant::now();
    let samples = generate(county, 20_261_103, cases, NOW);
    let steps: usize = samples.iter().map(|c| 1 + c.steps.len()).sum();
    for chunk in samples.chunks(BATCH) {
        l.begin_group().expect("begin");
        for c in chunk {
            c.replay(&mut l, &clock).expect("replay");
        }
        l.commit_group().expect("commit");
    }
    drop(l);
    let bytes: u64 =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0);
    println!(
        "{name}: built {cases} cases ({steps} changes) in {:.0} s; {bytes} bytes = {:.0} bytes per case",
        started.elapsed().as_secs_f64(),
        bytes as f64 / cases as f64
    );
}

/// CPU time (user + system) of this process's finished children, from
/// `/proc/self/stat` (Linux; clock ticks, taken as 100 a second), if readable.
fn children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line: 14 and 15 here.
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `fq` on `dir` `runs` times; returns the wall times, sorted, and the
/// mean CPU time of a run (what the machine's other load does not inflate).
fn time_fq(dir: &Path, args: &[&str], runs: usize) -> (Vec<Duration>, Option<Duration>) {
    let cpu_before = children_cpu();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(FQ)
                .arg("--data-dir")
                .arg(dir)
                .args(args)
                .env("FQ_NOW", NOW_TEXT)
                .env_remove("LANG")
                .env_remove("LC_ALL")
                .env_remove("LC_MESSAGES")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("run fq");
            let took = started.elapsed();
            assert!(out.status.success(), "fq {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            took
        })
        .collect();
    times.sort();
    let cpu = match (cpu_before, children_cpu()) {
        (Some(a), Some(b)) => b.checked_sub(a).map(|d| d / u32::try_from(runs).unwrap_or(1)),
        _ => None,
    };
    (times, cpu)
}

fn show(what: &str, (times, cpu): &(Vec<Duration>, Option<Duration>)) {
    let ms = |d: &Duration| d.as_secs_f64() * 1_000.0;
    let cpu = cpu.map(|c| format!("  cpu {:>7.1} ms", ms(&c))).unwrap_or_default();
    println!(
        "{what:<46} best {:>8.1} ms  median {:>8.1} ms  worst {:>8.1} ms{cpu}  ({} runs)",
        ms(&times[0]),
        ms(&times[times.len() / 2]),
        ms(&times[times.len() - 1]),
        times.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter is not meaningful here.
    let county_cases = env_usize("FQ_BENCH_CASES", 100_000);
    let township_cases = env_usize("FQ_BENCH_TOWNSHIP_CASES", 10_000);
    let runs = env_usize("FQ_BENCH_RUNS", 5).max(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = std::env::var_os("FQ_BENCH_DIR").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);

    let binchuan = County::binchuan();
    let county_dir = root.join("county");
    build(&county_dir, &binchuan, Tier::County, "532924", "宾川县综治中心", county_cases);
    let mut township = binchuan.clone();
    township.townships.retain(|t| t.code.as_str() == TOWNSHIP);
    let township_dir = root.join("township");
    build(&township_dir, &township, Tier::Township, TOWNSHIP, "宾居镇综治中心", township_cases);

    let out = root.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    println!("fq report monthly --month {MONTH}, county replica of {county_cases} cases:");
    show("  --format table", &time_fq(&county_dir, &["report", "monthly", "--month", MONTH], runs));
    for format in ["csv", "json", "html", "xlsx"] {
        let file = out.join(format!("monthly.{format}"));
        let file = file.to_str().expect("utf-8 path");
        let args = ["report", "monthly", "--month", MONTH, "--format", format, "--out", file];
        show(&format!("  --format {format} --out FILE"), &time_fq(&county_dir, &args, runs));
    }
    let args = ["report", "monthly", "--month", MONTH, "--scope", TOWNSHIP, "--format", "html", "--out"];
    let file = out.join("township.html");
    let mut scoped: Vec<&str> = args.to_vec();
    scoped.push(file.to_str().expect("utf-8 path"));
    show(&format!("  --scope {TOWNSHIP} --format html"), &time_fq(&county_dir, &scoped, runs));
    println!("fq report subsidy --month {MONTH}, county replica of {county_cases} cases:");
    show("  --format table", &time_fq(&county_dir, &["report", "subsidy", "--month", MONTH], runs));
    let file = out.join("subsidy.xlsx");
    let args = ["report", "subsidy", "--month", MONTH, "--format", "xlsx", "--out", file.to_str().expect("utf-8 path")];
    show("  --format xlsx --out FILE", &time_fq(&county_dir, &args, runs));

    println!("fq todo, township replica of {township_cases} cases:");
    let todo_runs = env_usize("FQ_BENCH_RUNS", 20).max(1);
    show("  fq todo", &time_fq(&township_dir, &["todo"], todo_runs));
    show("  fq todo --json", &time_fq(&township_dir, &["--json", "todo"], todo_runs));
    show("  fq --version (process start, for reference)", &time_fq(&township_dir, &["--version"], todo_runs));
    for (name, path) in [("monthly.html", out.join("monthly.html")), ("monthly.xlsx", out.join("monthly.xlsx"))] {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{name}: {len} bytes");
    }
}
