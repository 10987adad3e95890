//! `fq case import FILE.csv`: a county moving from spreadsheets brings its
//! existing cases in, with the columns `fq export --format csv` writes
//! (Chinese or English headers, in any order).
//!
//! Every row is checked before anything is written: one bad row and nothing is
//! imported, and every bad row is named by its line, its column and what to
//! fix. The ledger then creates all cases in one transaction
//! (`Ledger::import_cases`), each walked to the status and level the file
//! gives, dated as the file says, so monthly reports count them in the months
//! they happened.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fq_core::case::{
    AdminCode, AdminLevel, Category, InputError, Level, MAX_TITLE_CHARS, Party, Risk, Status, check_line,
};
use fq_core::clock::Timestamp;
use fq_core::doc::CaseState;
use fq_core::ledger::{ImportedCase, Ledger, LedgerError, Named, NewCase};
use serde_json::json;

use crate::export::CSV_HEADER;
use crate::lang::Lang;
use crate::render;
use crate::request::TextFileProblem;

/// Largest CSV file read: a county's whole history is a few megabytes.
const MAX_IMPORT_BYTES: u64 = 64 * 1024 * 1024;
/// Bad rows listed in one refusal; the count says how many more there were.
pub(crate) const MAX_ROW_PROBLEMS: usize = 20;

/// What is wrong with one cell.
#[derive(Debug)]
pub(crate) enum CellProblem {
    /// A required cell is empty.
    Empty,
    /// A value the core refuses (a code, a category, a name...).
    Input(InputError),
    /// A date that is not `2026-10-01`, `2026-10-01 09:30` or RFC 3339.
    Date,
    /// A grid that is not a whole number.
    Number,
    /// A village outside this ledger's area.
    OutsideArea {
        /// The ledger's area.
        scope: String,
    },
    /// A responsible person the roster does not know, or shares.
    Person(LedgerError),
    /// The same old case number twice in the file.
    Repeated {
        /// The line it was first on.
        first: usize,
    },
}

/// One bad cell: its line in the file (the header is line 1) and column.
#[derive(Debug)]
pub(crate) struct RowProblem {
    pub line: usize,
    /// The column's English header (`village`, `recorded_at`...).
    pub column: &'static str,
    pub value: String,
    pub problem: CellProblem,
}

/// Why a file was not imported. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// The file cannot be read, is not UTF-8, or is too large.
    #[error("cannot import {}: {problem:?}", path.display())]
    File { path: PathBuf, problem: TextFileProblem },
    /// The file is not CSV (a broken quote) at this line.
    #[error("{} is not a CSV file (line {line})", path.display())]
    NotCsv { path: PathBuf, line: usize },
    /// The file has no header row, or no data rows.
    #[error("{} has no cases", path.display())]
    Empty { path: PathBuf },
    /// A header that is not a column of the export.
    #[error("unknown column {name:?}")]
    UnknownColumn { name: String },
    /// A column every case needs is missing.
    #[error("missing column {name}")]
    MissingColumn { name: &'static str },
    /// Rows that do not check (at most [`MAX_ROW_PROBLEMS`] listed).
    #[error("{} bad rows", rows.len())]
    Rows { rows: Vec<RowProblem>, more: usize },
}

/// The columns, as (English key, Chinese header).
fn column(header: &str) -> Option<&'static str> {
    let h = header.trim().trim_start_matches('\u{feff}');
    CSV_HEADER.iter().find(|(zh, en)| h == *zh || h.eq_ignore_ascii_case(en)).map(|(_, en)| *en)
}

/// A cell as an export wrote it: a leading `'` that kept a spreadsheet from
/// reading text as a formula is taken off again.
fn cell(text: &str) -> &str {
    let t = text.trim();
    match t.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@']) => rest,
        _ => t,
    }
}

/// A date or time as a spreadsheet may hold it, read in China time.
fn time(text: &str) -> Option<Timestamp> {
    let t = text.trim().replace('/', "-");
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(&t) {
        return Some(Timestamp(d.timestamp_millis()));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M"))
        .ok()
        .or_else(|| chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))?;
    Some(Timestamp(naive.and_utc().timestamp_millis() - 8 * 3_600_000))
}

fn read_file(path: &Path) -> Result<String, ImportError> {
    let fail = |problem| ImportError::File { path: path.to_owned(), problem };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_IMPORT_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|_| fail(TextFileProblem::Unreadable))?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(fail(TextFileProblem::TooBig));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(TextFileProblem::NotUtf8))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text))
}

/// Reads and checks every row; the cases to import, or every problem found.
pub(crate) fn read(path: &Path, ledger: &Ledger) -> Result<Vec<ImportedCase>, ImportError> {
    let text = read_file(path)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|_| ImportError::NotCsv { path: path.to_owned(), line: 1 })?.clone();
    let mut columns: Vec<Option<&'static str>> = Vec::with_capacity(headers.len());
    for h in &headers {
        match column(h) {
            Some(c) => columns.push(Some(c)),
            None if h.trim().is_empty() => columns.push(None),
            None => return Err(ImportError::UnknownColumn { name: h.trim().to_owned() }),
        }
    }
    for required in ["village", "title", "recorded_at"] {
        if !columns.contains(&Some(required)) {
            return Err(ImportError::MissingColumn { name: required });
        }
    }
    if !columns.contains(&Some("category")) && !columns.contains(&Some("category_label")) {
        return Err(ImportError::MissingColumn { name: "category" });
    }
    let scope = ledger.identity().scope.clone();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut numbers: Vec<(String, usize)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|_| ImportError::NotCsv { path: path.to_owned(), line })?;
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let get = |name: &str| {
            columns.iter().position(|c| *c == Some(name)).and_then(|i| record.get(i)).map(cell).unwrap_or("")
        };
        let mut bad = |column: &'static str, value: &str, problem: CellProblem| {
            problems.push(RowProblem { line, column, value: value.to_owned(), problem });
        };
        let number = get("number");
        let old_number = (!number.is_empty()).then(|| number.to_owned());
        if let Some(n) = &old_number {
            match numbers.iter().find(|(m, _)| m == n) {
                Some((_, first)) => bad("number", n, CellProblem::Repeated { first: *first }),
                None => numbers.push((n.clone(), line)),
            }
        }
        let village = match get("village") {
            "" => {
                bad("village", "", CellProblem::Empty);
                None
            }
            v => match AdminCode::parse(v) {
                Ok(c) if c.level() != AdminLevel::Village => {
                    bad(
                        "village",
                        v,
                        CellProblem::Input(InputError::AdminCode {
                            input: v.to_owned(),
                            reason: "a case belongs to a 12-digit village code",
                        }),
                    );
                    None
                }
                Ok(c) if !scope.contains(&c) => {
                    bad("village", v, CellProblem::OutsideArea { scope: scope.to_string() });
                    None
                }
                Ok(c) => Some(c),
                Err(e) => {
                    bad("village", v, CellProblem::Input(e));
                    None
                }
            },
        };
        let grid = match get("grid") {
            "" => None,
            g => match g.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    bad("grid", g, CellProblem::Number);
                    None
                }
            },
        };
        let category = match (get("category"), get("category_label")) {
            ("", "") => {
                bad("category", "", CellProblem::Empty);
                None
            }
            (code, label) => {
                let (col, v) = if code.is_empty() { ("category_label", label) } else { ("category", code) };
                match Category::parse(v) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        bad(col, v, CellProblem::Input(e));
                        None
                    }
                }
            }
        };
        let title = match check_line("title", get("title"), MAX_TITLE_CHARS) {
            Ok(t) => Some(t),
            Err(InputError::Text { reason: "it is empty", .. }) => {
                bad("title", "", CellProblem::Empty);
                None
            }
            Err(e) => {
                bad("title", get("title"), CellProblem::Input(e));
                None
            }
        };
        let mut parse = |name: &'static str, default: &str, f: &dyn Fn(&str) -> Result<(), InputError>| {
            let v = get(name);
            let v = if v.is_empty() { default } else { v };
            if let Err(e) = f(v) {
                bad(name, v, CellProblem::Input(e));
            }
        };
        parse("status", "recorded", &|v| Status::parse(v).map(drop));
        parse("level", "village", &|v| Level::parse(v).map(drop));
        parse("risk", "low", &|v| Risk::parse(v).map(drop));
        let or = |v: &'static str, d: &'static str| if get(v).is_empty() { d.to_owned() } else { get(v).to_owned() };
        let status = Status::parse(&or("status", "recorded")).ok();
        let level = Level::parse(&or("level", "village")).ok();
        let risk = Risk::parse(&or("risk", "low")).ok();
        let recorded_at = match get("recorded_at") {
            "" => {
                bad("recorded_at", "", CellProblem::Empty);
                None
            }
            v => time(v).or_else(|| {
                bad("recorded_at", v, CellProblem::Date);
                None
            }),
        };
        let updated_at = match get("updated_at") {
            "" => recorded_at,
            v => time(v).or_else(|| {
                bad("updated_at", v, CellProblem::Date);
                None
            }),
        };
        let responsible = match get("responsible") {
            "" => None,
            name => match village.as_ref().map_or_else(|| ledger.person(name), |v| ledger.person_at(name, v)) {
                Ok(p) => Some(p),
                Err(LedgerError::Input(e)) => {
                    bad("responsible", name, CellProblem::Input(e));
                    None
                }
                Err(e) => {
                    bad("responsible", name, CellProblem::Person(e));
                    None
                }
            },
        };
        let mut parties = Vec::new();
        for name in get("parties").split([';', '；', '、']).map(str::trim).filter(|n| !n.is_empty()) {
            match Party::parse(&format!("name={name}")) {
                Ok(p) => parties.push(p),
                Err(e) => bad("parties", name, CellProblem::Input(e)),
            }
        }
        if let (
            Some(village),
            Some(category),
            Some(title),
            Some(status),
            Some(level),
            Some(risk),
            Some(recorded_at),
            Some(updated_at),
        ) = (village, category, title, status, level, risk, recorded_at, updated_at)
        {
            out.push(ImportedCase {
                old_number,
                case: NewCase {
                    category,
                    title,
                    description: String::new(),
                    parties,
                    risk,
                    flags: Vec::new(),
                    village: Some(village),
                    grid,
                },
                recorded_at,
                status,
                level,
                updated_at,
                responsible: responsible.map(|p: Named| p),
            });
        }
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(MAX_ROW_PROBLEMS);
        problems.truncate(MAX_ROW_PROBLEMS);
        return Err(ImportError::Rows { rows: problems, more });
    }
    if out.is_empty() {
        return Err(ImportError::Empty { path: path.to_owned() });
    }
    Ok(out)
}

/// The line after an import.
pub(crate) fn receipt(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    file: &Path,
    done: &[CaseState],
) -> anyhow::Result<()> {
    if json {
        let numbers: Vec<&str> = done.iter().map(|c| c.number.as_str()).collect();
        return render::json_line(
            out,
            &json!({ "ok": true, "file": file.to_string_lossy(), "count": done.len(), "cases": numbers }),
        );
    }
    match lang {
        Lang::Zh => writeln!(out, "已从 {} 导入 {} 件案件。", file.display(), done.len())?,
        Lang::En => writeln!(out, "Imported {} cases from {}.", done.len(), file.display())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_reads_what_spreadsheets_hold() {
        let t = time("2026-10-01T09:30:00+08:00");
        assert_eq!(t, time("2026-10-01 09:30"));
        assert_eq!(t, time("2026/10/01 09:30:00"));
        assert_eq!(time("2026-10-01").map(|t| t.to_rfc3339()).as_deref(), Some("2026-09-30T16:00:00.000Z"));
        assert_eq!(time("十月一日"), None);
    }

    #[test]
    fn cell_undoes_the_exports_formula_guard() {
        assert_eq!(cell("'=1+1"), "=1+1");
        assert_eq!(cell(" '张三 "), "'张三");
        assert_eq!(column("村代码"), Some("village"));
        assert_eq!(column("Recorded_At"), Some("recorded_at"));
        assert_eq!(column("\u{feff}编号"), Some("number"));
    }
}
