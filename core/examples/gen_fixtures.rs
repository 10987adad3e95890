//! Regenerates the committed fixtures from their fixed seeds:
//!
//! ```text
//! cargo run -p fq-core --example gen_fixtures            # write fixtures/*.json
//! cargo run -p fq-core --example gen_fixtures -- --check # exit 1 if they are stale
//! cargo run -p fq-core --release --example gen_fixtures -- --time 100000
//!                                                        # time generating that many cases
//! ```
//!
//! The unit tests of `county` and `sample` compare the committed files with
//! the generators byte for byte, so the files are only ever changed by
//! changing the generators and running this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use fq_core::county::{BINCHUAN_PEOPLE, BINCHUAN_SEED, BINCHUAN_TOWNSHIPS, BINCHUAN_VILLAGES, County};
use fq_core::sample::{self, BINCHUAN_SAMPLES_COUNT, BINCHUAN_SAMPLES_SEED, BINCHUAN_SAMPLES_START};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => false,
        ["--check"] => true,
        ["--time", n] if n.parse::<usize>().is_ok() => {
            time(n.parse().unwrap_or_default());
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: gen_fixtures [--check | --time CASES]");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Writes (or checks) both fixtures; `Ok(false)` when a check found a stale file.
fn run(check: bool) -> Result<bool, Error> {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = core.parent().unwrap_or(core).join("fixtures");
    // Generated, not loaded: the embedded copy is what is being replaced.
    let county = County::generate(BINCHUAN_SEED, BINCHUAN_TOWNSHIPS, BINCHUAN_VILLAGES, BINCHUAN_PEOPLE);
    let cases = sample::generate(&county, BINCHUAN_SAMPLES_SEED, BINCHUAN_SAMPLES_COUNT, BINCHUAN_SAMPLES_START);
    let files = [
        (dir.join("county-532924.json"), county.to_json()?),
        (dir.join("sample-cases.json"), sample::to_json(&cases)?),
        (dir.join("report-scenario.json"), sample::to_json(&sample::report_scenario())?),
    ];
    let mut fresh = true;
    for (path, json) in files {
        fresh &= emit(&path, &json, check)?;
    }
    println!(
        "{} ({}): {} townships, {} villages, {} grids, {} people; {} sample cases",
        county.name,
        county.code,
        county.townships.len(),
        county.villages().count(),
        county.grid_count(),
        county.people_count(),
        cases.len()
    );
    Ok(fresh)
}

/// Times generating `count` sample cases in Binchuan and prints how they end up.
fn time(count: usize) {
    let county = County::binchuan();
    let started = Instant::now();
    let cases = sample::generate(&county, BINCHUAN_SAMPLES_SEED, count, BINCHUAN_SAMPLES_START);
    let elapsed = started.elapsed();
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum();
    println!("{} cases, {steps} steps in {elapsed:.2?}", cases.len());
    let mut by_status = BTreeMap::new();
    for case in &cases {
        if let Ok(state) = case.final_state() {
            *by_status.entry(state.status.zh()).or_insert(0usize) += 1;
        }
    }
    for (status, n) in by_status {
        println!("  {status}: {n} ({:.1}%)", n as f64 * 100.0 / cases.len().max(1) as f64);
    }
}

fn emit(path: &PathBuf, json: &str, check: bool) -> Result<bool, Error> {
    let display = path.display();
    if check {
        let current = std::fs::read_to_string(path).map_err(|e| format!("cannot read {display}: {e}"))?;
        let same = current == json;
        println!("{display}: {}", if same { "up to date" } else { "STALE (run without --check)" });
        return Ok(same);
    }
    std::fs::write(path, json).map_err(|e| format!("cannot write {display}: {e}"))?;
    println!("wrote {display} ({} bytes)", json.len());
    Ok(true)
}
