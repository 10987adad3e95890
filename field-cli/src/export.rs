//! `fq export`: every case as JSON or CSV, for the county's spreadsheets and
//! for backups.
//!
//! An export leaves the device, so ID numbers are masked unless `--unmasked`
//! is given; the CSV carries party names only. A file given with `--out` is
//! written to a temporary file beside it and renamed into place, so a crash or
//! a full disk never leaves half an export under the real name. CSV files get
//! a UTF-8 byte order mark so Excel and WPS show Chinese correctly; CSV on
//! standard output has none, for pipes.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use fq_core::clock::Timestamp;
use fq_core::doc::CaseState;
use fq_core::ledger::Ledger;
use fq_core::store::{CaseRow, ListFilter};
use fq_core::text::{Escape, SafeWriter};
use serde::Serialize;
use serde_json::json;

use crate::cli::ExportFormat;
use crate::lang::Lang;
use crate::render::{self, cst, mask_id};

/// The CSV columns, in order, as (Chinese, English) headers. A Chinese file
/// holds labels (调解成功, 村级, 高); an English one the stable codes
/// (`settled`, `village`, `high`) and the English category label.
pub(crate) const CSV_HEADER: [(&str, &str); 15] = [
    ("编号", "number"),
    ("村代码", "village"),
    ("网格", "grid"),
    ("类别代码", "category"),
    ("类别", "category_label"),
    ("标题", "title"),
    ("状态", "status"),
    ("级别", "level"),
    ("风险等级", "risk"),
    ("登记时间", "recorded_at"),
    ("更新时间", "updated_at"),
    ("办结期限", "deadline"),
    ("责任人", "responsible"),
    ("当事人", "parties"),
    ("并发冲突", "conflicts"),
];

/// Makes Excel read a CSV file as UTF-8.
const UTF8_BOM: &[u8] = "\u{feff}".as_bytes();

/// One case in a JSON export: the case state and its number of conflicting fields.
#[derive(Debug, Serialize)]
struct ExportCase {
    #[serde(flatten)]
    state: CaseState,
    conflicts: u32,
}

/// What an export did.
#[derive(Debug)]
pub(crate) struct Exported {
    pub count: usize,
    pub out: Option<PathBuf>,
}

/// Writes every case in `format` to `out` (a file) or standard output.
pub(crate) fn run(
    ledger: &mut Ledger,
    lang: Lang,
    format: ExportFormat,
    out: Option<&Path>,
    unmasked: bool,
) -> anyhow::Result<Exported> {
    // Text from other devices may hold control characters a forged peer
    // slipped in: escaped in every export, as JSON escapes in JSON.
    let escape = if format == ExportFormat::Json { Escape::Json } else { Escape::Human };
    let Some(path) = out else {
        let stdout = io::stdout();
        let mut sink = SafeWriter::new(BufWriter::new(stdout.lock()), escape);
        let count = write(ledger, lang, format, unmasked, &mut sink)?;
        sink.flush()?;
        return Ok(Exported { count, out: None });
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let count = {
        let mut sink = SafeWriter::new(BufWriter::new(tmp.as_file_mut()), escape);
        if format == ExportFormat::Csv {
            sink.write_all(UTF8_BOM)?;
        }
        let count = write(ledger, lang, format, unmasked, &mut sink)?;
        sink.flush().with_context(|| format!("cannot write {}", path.display()))?;
        count
    };
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Exported { count, out: Some(path.to_path_buf()) })
}

fn write(
    ledger: &mut Ledger,
    lang: Lang,
    format: ExportFormat,
    unmasked: bool,
    sink: &mut dyn Write,
) -> anyhow::Result<usize> {
    // The ledger hands cases over one at a time through a callback that cannot
    // fail: keep the first write error and skip the rest.
    let mut failed: Option<anyhow::Error> = None;
    let count = match format {
        ExportFormat::Json => {
            let head = json!({ "exported_at": ledger.now(), "scope": ledger.identity().scope, "masked": !unmasked });
            let head = serde_json::to_string(&head)?;
            // Open the object and leave it open for the case array.
            let head = head.strip_suffix('}').unwrap_or(&head);
            write!(sink, "{head},\"cases\":[")?;
            let mut first = true;
            let count = ledger.export(&ListFilter::default(), |row, state| {
                if failed.is_some() {
                    return;
                }
                let case = ExportCase { state: masked(state, unmasked), conflicts: row.conflicts };
                let r = (|| -> anyhow::Result<()> {
                    if !first {
                        sink.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *sink, &case).map_err(io::Error::from)?;
                    Ok(())
                })();
                first = false;
                failed = r.err();
            })?;
            if let Some(e) = failed.take() {
                return Err(e);
            }
            writeln!(sink, "],\"count\":{count}}}")?;
            count
        }
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(&mut *sink);
            csv.write_record(CSV_HEADER.map(|(zh, en)| lang.pick(zh, en))).map_err(io::Error::from)?;
            let count = ledger.export(&ListFilter::default(), |row, state| {
                if failed.is_none() {
                    failed = csv.write_record(csv_row(lang, row, &state)).err().map(|e| io::Error::from(e).into());
                }
            })?;
            if let Some(e) = failed.take() {
                return Err(e);
            }
            csv.flush()?;

            count
        }
    };
    Ok(count)
}

fn masked(mut state: CaseState, unmasked: bool) -> CaseState {
    if !unmasked {
        for p in &mut state.parties {
            p.id_number = p.id_number.as_deref().map(mask_id);
        }
    }
    state
}

/// A time for spreadsheets: RFC 3339 in China time, e.g. `2026-11-21T13:04:00+08:00`.
fn sheet_time(t: Timestamp) -> String {
    cst(t).map_or_else(|| t.0.to_string(), |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
}

/// Free text as a spreadsheet cell: text a person typed that starts like a
/// formula (`=`, `+`, `-`, `@`, tab, CR) gets a leading `'` so Excel and WPS
/// show it instead of running it (CSV injection).
fn sheet_text(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

fn csv_row(lang: Lang, row: &CaseRow, state: &CaseState) -> [String; 15] {
    let parties: Vec<&str> = state.parties.iter().map(|p| p.name.as_str()).collect();
    let word = |code: &'static str, label: &'static str| lang.pick(label, code).to_owned();
    [
        row.number.clone(),
        row.village.clone(),
        row.grid.map(|g| g.to_string()).unwrap_or_default(),
        row.category.code().to_owned(),
        lang.label(row.category).to_owned(),
        sheet_text(&row.title),
        word(row.status.code(), row.status.zh()),
        word(row.level.code(), row.level.zh()),
        word(row.risk.code(), row.risk.zh()),
        sheet_time(row.recorded_at),
        sheet_time(row.updated_at),
        row.deadline.map(sheet_time).unwrap_or_default(),
        sheet_text(row.responsible.as_deref().unwrap_or_default()),
        sheet_text(&parties.join(";")),
        row.conflicts.to_string(),
    ]
}

/// The line printed after an export to a file.
pub(crate) fn receipt(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    format: ExportFormat,
    done: &Exported,
    unmasked: bool,
) -> anyhow::Result<()> {
    let Some(path) = &done.out else { return Ok(()) };
    let format_code = match format {
        ExportFormat::Json => "json",
        ExportFormat::Csv => "csv",
    };
    if json {
        let value = json!({ "ok": true, "format": format_code, "count": done.count, "out": path.to_string_lossy(), "masked": !unmasked });
        return render::json_line(out, &value);
    }
    let note = match (lang, unmasked) {
        (Lang::Zh, false) => "身份证号已隐藏中间部分",
        (Lang::Zh, true) => "含完整身份证号，请妥善保管",
        (Lang::En, false) => "ID numbers masked",
        (Lang::En, true) => "full ID numbers included: keep the file safe",
    };
    match lang {
        Lang::Zh => writeln!(out, "已导出 {} 件案件到 {}（{note}）", done.count, path.display())?,
        Lang::En => writeln!(out, "Exported {} cases to {} ({note})", done.count, path.display())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sheet_text;

    #[test]
    fn sheet_text_defuses_formulas() {
        assert_eq!(sheet_text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(sheet_text("-1+2"), "'-1+2");
        assert_eq!(sheet_text("宅基地纠纷"), "宅基地纠纷");
        assert_eq!(sheet_text(""), "");
    }
}
