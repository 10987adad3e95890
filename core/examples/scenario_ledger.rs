//! Builds a county replica holding the report scenario
//! (`fixtures/report-scenario.json`), for looking at the reports by hand and
//! for the screenshot `docs/report-monthly.png`:
//!
//! ```text
//! cargo run -p fq-core --example scenario_ledger -- /tmp/scenario
//! FQ_NOW=2026-11-03T09:00:00+08:00 fq --data-dir /tmp/scenario report monthly --month 2026-10 \
//!     --format html --out /tmp/scenario/report.html
//! ```
//!
//! The policy installed is the default one with the Binchuan roster, signed
//! by a fixed demonstration key (bytes `[7; 32]`, as the tests use): never a
//! county's real CA.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use fq_core::case::{AdminCode, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::county::County;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::policy::{SignedPolicy, areas_of};
use fq_core::roster::Roster;
use fq_core::sample::{SCENARIO_NOW, load_samples};

type Error = Box<dyn std::error::Error>;

const SCENARIO: &str = include_str!("../../fixtures/report-scenario.json");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: scenario_ledger DIR   (DIR must not hold a ledger.db yet)");
        return ExitCode::from(2);
    };
    match build(PathBuf::from(dir)) {
        Ok(path) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenario_ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(dir: PathBuf) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ledger.db");
    if path.exists() {
        return Err(format!("{} exists already", path.display()).into());
    }
    let clock = ManualClock::new(SCENARIO_NOW);
    let county = County::binchuan();
    let init = InitOptions {
        tier: Tier::County,
        name: format!("{}综治中心", county.name),
        role: Role::CountyAdmin,
        scope: county.code.clone(),
        grid: None,
    };
    let mut ledger = Ledger::init(&path, init, Arc::new(clock.clone()), LedgerOptions::default())?;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let roster = Roster::from_county(&county)?.staff().to_vec();
    let issued = Timestamp(1_790_000_000_000);
    let policy = SignedPolicy::sign(&AdminCode::parse("532924")?, 1, issued, "", roster, areas_of(&county), &key)?;
    ledger.install_policy(policy.as_bytes(), &key.verifying_key())?;
    for case in load_samples(SCENARIO)? {
        case.replay(&mut ledger, &clock)?;
    }
    Ok(path)
}
