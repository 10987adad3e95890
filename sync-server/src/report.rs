//! Monthly reports, automatically: a county or township server writes last month's report
//! (HTML, xlsx and JSON) into `DATA_DIR/reports/` on the first day of each month, as one
//! county's rule has it (每月自动生成各类矛盾纠纷数据统计表和分析报告).
//!
//! The server checks at start and then every hour: if last month's report is missing it is
//! made, so a server that was down on the 1st catches up when it comes back. The report is
//! read from the replica file with a read-only ledger beside the replica thread (SQLite WAL
//! lets a reader in during writes), on a blocking thread, so syncing goes on meanwhile. Each
//! file is written to a temporary name and renamed; the JSON is written last, so a report
//! whose JSON exists is whole. The figures are `fq_core::report`'s, the same as
//! `fq report monthly` gives for the same month.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fq_core::clock::{Clock, SystemClock};
use fq_core::lang::Lang;
use fq_core::ledger::Ledger;
use fq_core::report::{self, Month};
use fq_core::vault::DataKey;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::server::LEDGER_FILE;

/// The directory, inside the data directory, reports are written to.
pub const REPORTS_DIR: &str = "reports";
/// How often the server looks whether last month's report is there.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The files of one month's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthlyFiles {
    /// The month (`2026-10`).
    pub month: String,
    /// The one-file HTML report.
    pub html: PathBuf,
    /// The xlsx workbook.
    pub xlsx: PathBuf,
    /// The figures as JSON (`schemas/report-monthly.v1.schema.json`).
    pub json: PathBuf,
}

fn files(dir: &Path, month: Month) -> MonthlyFiles {
    let stem = dir.join(REPORTS_DIR).join(format!("monthly-{month}"));
    MonthlyFiles {
        month: month.to_string(),
        html: stem.with_extension("html"),
        xlsx: stem.with_extension("xlsx"),
        json: stem.with_extension("json"),
    }
}

/// The newest whole monthly report in `data_dir`, if any.
pub fn newest(data_dir: &Path) -> Option<MonthlyFiles> {
    let entries = std::fs::read_dir(data_dir.join(REPORTS_DIR)).ok()?;
    let mut months: Vec<Month> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Month::parse(name.strip_prefix("monthly-")?.strip_suffix(".json")?).ok()
        })
        .collect();
    months.sort_unstable();
    months.last().map(|m| files(data_dir, *m))
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The replica could not be read.
    #[error("cannot read the replica")]
    Ledger(#[from] fq_core::ledger::LedgerError),
    /// The figures could not be put in a format.
    #[error("cannot make the report")]
    Report(#[from] report::ReportError),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `month`'s report of the replica in `data_dir` (its whole area), in `lang`; `key` is
/// the replica's data key if it is encrypted (`run --encrypt`).
pub fn write(data_dir: &Path, month: Month, lang: Lang, key: Option<&DataKey>) -> Result<MonthlyFiles, WriteError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ledger = Ledger::open_read_only_with_key(&data_dir.join(LEDGER_FILE), Arc::clone(&clock), key)?;
    let m = report::monthly(&ledger, month, None, clock.now())?;
    let out = files(data_dir, month);
    let dir = data_dir.join(REPORTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| WriteError::Io { path: dir.clone(), source })?;
    let json = serde_json::to_vec_pretty(&m).map_err(|e| report::ReportError::Encode(e.to_string()))?;
    for (path, bytes) in [
        (&out.html, report::html::monthly(&m, lang)?.into_bytes()),
        (&out.xlsx, report::sheet::monthly_xlsx(&m, lang)?),
        // Last: its presence says the report is whole.
        (&out.json, json),
    ] {
        crate::ca::replace_file(path, &bytes, 0o644).map_err(|source| WriteError::Io { path: path.clone(), source })?;
    }
    Ok(out)
}

/// Writes last month's report whenever it is missing, checking at start and every hour, until `stop`.
pub(crate) async fn monthly(data_dir: PathBuf, lang: Lang, key: Option<DataKey>, mut stop: watch::Receiver<bool>) {
    loop {
        let month = Month::of(SystemClock.now()).previous();
        if !files(&data_dir, month).json.exists() {
            let dir = data_dir.clone();
            let key = key.clone();
            match tokio::task::spawn_blocking(move || write(&dir, month, lang, key.as_ref())).await {
                Ok(Ok(f)) => info!(month = %month, path = %f.html.display(), "monthly report written"),
                Ok(Err(e)) => {
                    warn!(month = %month, error = %crate::server::error_chain(&e), "cannot write the monthly report; trying again in an hour")
                }
                Err(e) => warn!(month = %month, error = %e, "cannot write the monthly report; trying again in an hour"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
