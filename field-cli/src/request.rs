//! Raw arguments turned into validated values before any ledger is opened.
//!
//! Every value is parsed here with the core's forgiving parsers, so bad input
//! is refused before anything is opened or written: a wrong ID checksum on
//! `case new` creates no case, a wrong code on `init` leaves no file behind.
//! The ledger checks again what only it can check (scope, transitions).

use std::path::{Path, PathBuf};

use fq_core::case::{
    AdminCode, Category, InputError, Level, MAX_TEXT_CHARS, MAX_TITLE_CHARS, Outcome, Party, Risk, RiskFlag, Role,
    Status, check_line, check_text,
};
use fq_core::doc::FieldEdit;
use fq_core::ledger::{InitOptions, NewCase, Tier};

use fq_core::clock::Timestamp;

use crate::cli::{
    AuditCommand, CaseCommand, Cli, Command, ExportFormat, PassphraseCommand, PolicyCommand, ReportCommand,
    ReportFormat,
};

/// The longest person name the ledger keeps, in characters (as in the core).
const MAX_NAME_CHARS: usize = 50;
/// The longest court name or court reference, in characters (as in the core).
const MAX_COURT_CHARS: usize = 100;
/// Audit records shown when `--limit` is not given.
const DEFAULT_AUDIT_LIMIT: u32 = 50;

/// Input the core has no words for: numbers typed by the user, and where the
/// ledger lives.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArgError {
    /// A whole number (grid, limit) that does not parse.
    #[error("invalid {what} {input:?}: expected a whole number")]
    Number {
        /// Which argument.
        what: &'static str,
        /// What was given.
        input: String,
    },
    /// No `--data-dir`, no `FQ_DATA_DIR` and no home directory.
    #[error("no data directory: give --data-dir or set FQ_DATA_DIR")]
    NoDataDir,
    /// `fq init` without a bundle needs `--role` and `--village`.
    #[error("fq init needs --role and --village, or --bundle")]
    MissingRoleOrVillage,
    /// Neither the text nor a file to read it from was given.
    #[error("no {what} given")]
    MissingText {
        /// Which field.
        what: &'static str,
    },
    /// A date that is not `YYYY-MM-DD`.
    #[error("invalid date {input:?}: expected YYYY-MM-DD")]
    Date {
        /// What was given.
        input: String,
    },
    /// `--format html` or `xlsx` without `--out`: a terminal cannot show them.
    #[error("--format {format} needs --out FILE")]
    NeedsFile {
        /// The format.
        format: &'static str,
    },
    /// A text file (`--description-file` and the like) that cannot be used.
    #[error("cannot use {} for the {what}: {problem:?}", path.display())]
    TextFile {
        /// Which field.
        what: &'static str,
        /// The file (`-` for standard input).
        path: PathBuf,
        /// What is wrong.
        problem: TextFileProblem,
    },
}

/// What is wrong with a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFileProblem {
    /// It cannot be read (missing, no permission).
    Unreadable,
    /// It is not UTF-8 text (a Word file, GBK-encoded text).
    NotUtf8,
    /// It is bigger than any text a case field holds.
    TooBig,
}

/// The most bytes read from a text file: every character of the longest
/// field in 4 bytes, and a byte-order mark.
const MAX_TEXT_FILE_BYTES: u64 = (MAX_TEXT_CHARS as u64) * 4 + 3;

/// Long text given inline or read from a file (`-`: standard input), so a
/// description typed in an editor or pasted from a report can be used whole.
/// A UTF-8 byte-order mark (Notepad writes one) is dropped.
fn long_text(what: &'static str, inline: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let raw = match (inline, file) {
        (Some(t), _) => t.to_owned(),
        (None, None) => return Ok(None),
        (None, Some(path)) => read_text_file(what, path)?,
    };
    Ok(Some(check_text(what, &raw, MAX_TEXT_CHARS)?))
}

fn read_text_file(what: &'static str, path: &Path) -> Result<String, ArgError> {
    use std::io::Read;
    let fail = |problem| ArgError::TextFile { what, path: path.to_owned(), problem };
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|_| fail(TextFileProblem::Unreadable))?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(fail(TextFileProblem::TooBig));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(TextFileProblem::NotUtf8))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text))
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The directory holding `ledger.db`, if given (`--data-dir`, `FQ_DATA_DIR`).
    data_dir: Option<PathBuf>,
    /// Print `--json` instead of text.
    pub json: bool,
    /// Where the ledger's passphrase is read from (`--passphrase-file`), if given.
    pub passphrase_file: Option<PathBuf>,
}

impl Settings {
    /// The directory holding `ledger.db`: the one given, else `default_dir`
    /// (the platform's data directory).
    pub(crate) fn data_dir(&self, default_dir: impl FnOnce() -> Option<PathBuf>) -> Result<PathBuf, ArgError> {
        self.data_dir.clone().or_else(default_dir).ok_or(ArgError::NoDataDir)
    }
}

/// `fq init`: the ledger's owner, checked; role and area may come from a bundle instead.
#[derive(Debug, Clone)]
pub(crate) struct Init {
    pub name: String,
    pub role: Option<Role>,
    pub scope: Option<AdminCode>,
    pub grid: Option<u32>,
    pub bundle: Option<PathBuf>,
    /// A revocation list file handed over with the bundle.
    pub revocations: Option<PathBuf>,
    pub wipe_after: Option<u32>,
}

impl Init {
    /// The ledger to create when no bundle is given: role and area are required then.
    pub(crate) fn without_bundle(&self) -> Option<InitOptions> {
        Some(InitOptions {
            tier: Tier::Device,
            name: self.name.clone(),
            role: self.role?,
            scope: self.scope.clone()?,
            grid: self.grid,
        })
    }
}

/// What the user asked for, fully validated.
#[derive(Debug)]
pub(crate) enum Request {
    Init(Init),
    Enroll { bundle: PathBuf, revocations: Option<PathBuf> },
    Sync { server: Option<String> },
    SyncPeer { addr: String },
    Serve { listen: Option<String>, once: bool },
    SyncFile(SyncFile),
    New(NewCase),
    List { filter: Filter },
    Show { case: String, history: bool, unmasked: bool },
    Edit { case: String, edit: FieldEdit },
    Act { case: String, action: Action },
    Export { format: ExportFormat, out: Option<PathBuf>, unmasked: bool },
    Audit(Audit),
    Demo,
    Encrypt { wipe_after: Option<u32> },
    PassphraseChange { new_file: Option<PathBuf> },
    Todo { scope: Option<AdminCode> },
    Report(Report),
    PolicyShow,
    Import { file: PathBuf },
}

/// Which report, for what, in which form.
#[derive(Debug)]
pub(crate) struct Report {
    /// Monthly figures, or the subsidy sheet (with one person, if asked).
    pub kind: ReportKind,
    /// The month; `None`: the month before "now".
    pub month: Option<fq_core::report::Month>,
    pub scope: Option<AdminCode>,
    pub format: ReportFormat,
    pub out: Option<PathBuf>,
}

#[derive(Debug)]
pub(crate) enum ReportKind {
    Monthly,
    Subsidy { person: Option<String> },
}

/// `fq audit` and its commands, validated.
#[derive(Debug)]
pub(crate) enum Audit {
    Summary,
    Conflicts { case: Option<String>, since: Option<Timestamp> },
    Resolve { case: String, field: String, value: String },
    History { case: String, skew_ms: i64, unmasked: bool },
    Verify { case: Option<String>, bundle: Option<PathBuf> },
    Compare { server: Option<String>, bundle: Option<PathBuf> },
    Refused { since: Option<Timestamp> },
    Log { limit: u32 },
}

/// `fq sync --to-file` or `--from-file`.
#[derive(Debug)]
pub(crate) enum SyncFile {
    /// Write what the township (or the peer device named) lacks.
    Write { out: PathBuf, peer: Option<String> },
    /// Import a file; answer a peer device's file into `answer`.
    Read { input: PathBuf, answer: Option<PathBuf> },
}

/// `case list` filters; `overdue` becomes a time when the ledger is open.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub status: Option<Status>,
    pub level: Option<Level>,
    pub category: Option<Category>,
    pub within: Option<AdminCode>,
    pub risk: Option<Risk>,
    pub overdue: bool,
    pub search: Option<String>,
    pub limit: Option<u32>,
}

/// A lifecycle step on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Note(String),
    Assign(String),
    Escalate(String),
    Accept,
    Settle(String),
    Fail(String),
    Confirm { court: String, reference: Option<String> },
    FollowUp { outcome: Outcome, note: Option<String> },
    Archive,
    Supervise { instruction: String, due: fq_core::clock::Timestamp },
    Respond(String),
    Waive(String),
}

/// Validates the raw command line.
pub(crate) fn from_cli(cli: Cli) -> anyhow::Result<(Settings, Request)> {
    let request = match cli.command {
        Command::Init(a) => Request::Init(Init {
            name: check_line("name", &a.name, MAX_NAME_CHARS)?,
            role: a.role.as_deref().map(Role::parse).transpose()?,
            scope: a.village.as_deref().map(AdminCode::parse).transpose()?,
            grid: a.grid.as_deref().map(|g| number("grid", g)).transpose()?,
            bundle: a.bundle,
            revocations: a.revocations,
            wipe_after: a.wipe_after.as_deref().map(|n| number("wipe-after", n)).transpose()?,
        }),
        Command::Enroll(a) => Request::Enroll { bundle: a.bundle, revocations: a.revocations },
        Command::Sync(a) => match (a.to_file, a.from_file, a.device) {
            (Some(out), _, _) => Request::SyncFile(SyncFile::Write { out, peer: a.peer.map(|p| p.trim().to_owned()) }),
            (None, Some(input), _) => Request::SyncFile(SyncFile::Read { input, answer: a.answer }),
            (None, None, Some(addr)) => Request::SyncPeer { addr: addr.trim().to_owned() },
            (None, None, None) => {
                Request::Sync { server: a.server.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) }
            }
        },
        Command::Serve(a) => {
            Request::Serve { listen: a.listen.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()), once: a.once }
        }
        Command::Case(c) => case(c)?,
        Command::Export(a) => Request::Export { format: a.format, out: a.out, unmasked: a.unmasked },
        Command::Audit(a) => Request::Audit(audit(a.command)?),
        Command::Demo => Request::Demo,
        Command::Encrypt(a) => {
            Request::Encrypt { wipe_after: a.wipe_after.as_deref().map(|n| number("wipe-after", n)).transpose()? }
        }
        Command::Passphrase(PassphraseCommand::Change(a)) => {
            Request::PassphraseChange { new_file: a.new_passphrase_file }
        }
        Command::Todo(a) => Request::Todo { scope: a.scope.as_deref().map(AdminCode::parse).transpose()? },
        Command::Report(r) => Request::Report(report(r)?),
        Command::Policy(PolicyCommand::Show) => Request::PolicyShow,
    };
    let data_dir = cli.data_dir.filter(|d| !d.as_os_str().is_empty());
    Ok((Settings { data_dir, json: cli.json, passphrase_file: cli.passphrase_file }, request))
}

fn case(command: CaseCommand) -> anyhow::Result<Request> {
    Ok(match command {
        CaseCommand::New(a) => Request::New(NewCase {
            category: Category::parse(&a.category)?,
            title: check_line("title", &a.title, MAX_TITLE_CHARS)?,
            description: match (a.description.as_deref().map(str::trim), &a.description_file) {
                (Some(""), _) | (None, None) => String::new(),
                (d, file) => long_text("description", d, file.as_deref())?.unwrap_or_default(),
            },
            parties: parties(&a.party)?,
            risk: a.risk.as_deref().map(Risk::parse).transpose()?.unwrap_or(Risk::Low),
            flags: flags(&a.flag)?,
            village: a.village.as_deref().map(AdminCode::parse).transpose()?,
            grid: a.grid.as_deref().map(|g| number("grid", g)).transpose()?,
        }),
        CaseCommand::List(a) => Request::List {
            filter: Filter {
                status: a.status.as_deref().map(Status::parse).transpose()?,
                level: a.level.as_deref().map(Level::parse).transpose()?,
                category: a.category.as_deref().map(Category::parse).transpose()?,
                within: a.village.as_deref().map(AdminCode::parse).transpose()?,
                risk: a.risk.as_deref().map(Risk::parse).transpose()?,
                overdue: a.overdue,
                search: a.search.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
                limit: a.limit.as_deref().map(|l| number("limit", l)).transpose()?,
            },
        },
        CaseCommand::Show(a) => {
            Request::Show { case: reference(&a.case.case)?, history: a.history, unmasked: a.unmasked }
        }
        CaseCommand::Edit(a) => Request::Edit {
            case: reference(&a.case.case)?,
            edit: FieldEdit {
                title: a.title.as_deref().map(|t| check_line("title", t, MAX_TITLE_CHARS)).transpose()?,
                description: long_text("description", a.description.as_deref(), a.description_file.as_deref())?,
                category: a.category.as_deref().map(Category::parse).transpose()?,
                risk: a.risk.as_deref().map(Risk::parse).transpose()?,
                grid: a.grid.as_deref().map(|g| number("grid", g)).transpose()?,
                add_parties: parties(&a.add_party)?,
                add_flags: flags(&a.add_flag)?,
                remove_flags: flags(&a.remove_flag)?,
            },
        },
        CaseCommand::Note(a) => {
            let note = long_text("note", a.text.as_deref(), a.file.as_deref())?;
            act(&a.case.case, Action::Note(note.ok_or(ArgError::MissingText { what: "note" })?))?
        }
        CaseCommand::Assign(a) => act(&a.case.case, Action::Assign(check_line("assignee", &a.to, MAX_NAME_CHARS)?))?,
        CaseCommand::Escalate(a) => act(&a.case.case, Action::Escalate(text("reason", &a.reason)?))?,
        CaseCommand::Accept(a) => act(&a.case, Action::Accept)?,
        CaseCommand::Settle(a) => {
            let agreement = long_text("agreement", a.agreement.as_deref(), a.agreement_file.as_deref())?;
            act(&a.case.case, Action::Settle(agreement.ok_or(ArgError::MissingText { what: "agreement" })?))?
        }
        CaseCommand::Fail(a) => act(&a.case.case, Action::Fail(text("reason", &a.reason)?))?,
        CaseCommand::Confirm(a) => act(
            &a.case.case,
            Action::Confirm {
                court: check_line("court", &a.court, MAX_COURT_CHARS)?,
                reference: a.reference.as_deref().map(|r| check_line("reference", r, MAX_COURT_CHARS)).transpose()?,
            },
        )?,
        CaseCommand::Followup(a) => act(
            &a.case.case,
            Action::FollowUp {
                outcome: Outcome::parse(&a.outcome)?,
                note: a.note.as_deref().map(|n| text("note", n)).transpose()?,
            },
        )?,
        CaseCommand::Archive(a) => act(&a.case, Action::Archive)?,
        CaseCommand::Supervise(a) => act(
            &a.case.case,
            Action::Supervise { instruction: text("instruction", &a.instruction)?, due: due_date(&a.due)? },
        )?,
        CaseCommand::Respond(a) => act(&a.case.case, Action::Respond(text("note", &a.note)?))?,
        CaseCommand::Waive(a) => act(&a.case.case, Action::Waive(text("reason", &a.reason)?))?,
        CaseCommand::Import(a) => Request::Import { file: a.file },
    })
}

fn audit(command: Option<AuditCommand>) -> anyhow::Result<Audit> {
    let optional_case = |c: Option<String>| c.as_deref().map(reference).transpose();
    Ok(match command {
        None => Audit::Summary,
        Some(AuditCommand::Conflicts(a)) => {
            Audit::Conflicts { case: optional_case(a.case)?, since: a.since.as_deref().map(date).transpose()? }
        }
        Some(AuditCommand::Resolve(a)) => {
            let value = a.value.trim().to_owned();
            let field = a.field.trim().to_owned();
            // The field and value are checked now: a wrong one writes nothing.
            fq_core::audit::parse_field(&field, &value)?;
            match field.as_str() {
                "description" | "agreement" => check_text(text_field(&field), &value, MAX_TEXT_CHARS)?,
                _ => check_line("value", &value, MAX_TITLE_CHARS)?,
            };
            Audit::Resolve { case: reference(&a.case.case)?, field, value }
        }
        Some(AuditCommand::History(a)) => Audit::History {
            case: reference(&a.case.case)?,
            skew_ms: a
                .skew
                .as_deref()
                .map(|m| number("skew", m))
                .transpose()?
                .map_or(fq_core::audit::DEFAULT_SKEW_MS, |minutes| i64::from(minutes) * 60_000),
            unmasked: a.unmasked,
        },
        Some(AuditCommand::Verify(a)) => Audit::Verify { case: optional_case(a.case)?, bundle: a.bundle },
        Some(AuditCommand::Compare(a)) => {
            Audit::Compare { server: a.server.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()), bundle: a.bundle }
        }
        Some(AuditCommand::Refused(a)) => Audit::Refused { since: a.since.as_deref().map(date).transpose()? },
        Some(AuditCommand::Log(a)) => Audit::Log {
            limit: a.limit.as_deref().map(|l| number("limit", l)).transpose()?.unwrap_or(DEFAULT_AUDIT_LIMIT),
        },
    })
}

/// The name a long-text check reports for a resolved field.
fn text_field(field: &str) -> &'static str {
    if field == "agreement" { "agreement" } else { "description" }
}

/// A date as people type it (`2026-11-01`, China time, from midnight), or an
/// RFC 3339 time.
fn date(input: &str) -> Result<Timestamp, ArgError> {
    let text = input.trim();
    let bad = || ArgError::Date { input: input.to_owned() };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp(t.timestamp_millis()));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?;
    let midnight = day.and_hms_opt(0, 0, 0).ok_or_else(bad)?;
    // China Standard Time, UTC+8, no daylight saving.
    Ok(Timestamp(midnight.and_utc().timestamp_millis() - 8 * 3_600_000))
}

fn report(command: ReportCommand) -> anyhow::Result<Report> {
    let (args, kind) = match command {
        ReportCommand::Monthly(a) => (a, ReportKind::Monthly),
        ReportCommand::Subsidy(a) => (
            a.report,
            ReportKind::Subsidy {
                person: a.person.as_deref().map(|p| check_line("name", p, MAX_NAME_CHARS)).transpose()?,
            },
        ),
    };
    let format = args.format.unwrap_or(ReportFormat::Table);
    if args.out.is_none() {
        match format {
            ReportFormat::Html => return Err(ArgError::NeedsFile { format: "html" }.into()),
            ReportFormat::Xlsx => return Err(ArgError::NeedsFile { format: "xlsx" }.into()),
            _ => {}
        }
    }
    Ok(Report {
        kind,
        month: args.month.as_deref().map(fq_core::report::Month::parse).transpose()?,
        scope: args.scope.as_deref().map(AdminCode::parse).transpose()?,
        format,
        out: args.out,
    })
}

/// A due date as typed (`2026-11-10`, `2026/11/10`, `2026年11月10日`): the
/// end of that day, China time, so "by the 10th" includes the 10th.
pub(crate) fn due_date(input: &str) -> Result<fq_core::clock::Timestamp, ArgError> {
    let bad = || ArgError::Date { input: input.to_owned() };
    let s: String = input
        .trim()
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_digit(c as u32 - '０' as u32, 10).unwrap_or(c),
            '年' | '月' | '/' | '.' => '-',
            '日' => ' ',
            other => other,
        })
        .collect();
    let date = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| bad())?;
    let end = date.and_hms_milli_opt(23, 59, 59, 999).ok_or_else(bad)?;
    Ok(fq_core::clock::Timestamp(end.and_utc().timestamp_millis() - 8 * 3_600_000))
}

fn act(case: &str, action: Action) -> Result<Request, InputError> {
    Ok(Request::Act { case: reference(case)?, action })
}

fn text(what: &'static str, input: &str) -> Result<String, InputError> {
    check_text(what, input, MAX_TEXT_CHARS)
}

fn reference(input: &str) -> Result<String, InputError> {
    match input.trim() {
        "" => Err(InputError::CaseRef { input: input.to_owned() }),
        r => Ok(r.to_owned()),
    }
}

fn flags(inputs: &[String]) -> Result<Vec<RiskFlag>, InputError> {
    inputs.iter().map(|f| RiskFlag::parse(f)).collect()
}

fn parties(inputs: &[String]) -> Result<Vec<Party>, InputError> {
    inputs.iter().map(|p| Party::parse(p)).collect()
}

/// A whole number as a cadre may type it: full-width digits and spaces allowed.
fn number(what: &'static str, input: &str) -> Result<u32, ArgError> {
    let digits: String = input
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '０'..='９' => char::from_digit(c as u32 - '０' as u32, 10).unwrap_or(c),
            other => other,
        })
        .collect();
    digits.parse().map_err(|_| ArgError::Number { what, input: input.to_owned() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn due_date_is_the_end_of_that_day_in_china() {
        let t = due_date("2026年11月10日").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-10T15:59:59.999Z");
        assert_eq!(due_date(" 2026/11/10 ").unwrap(), t);
        assert!(matches!(due_date("11-10"), Err(ArgError::Date { .. })));
        assert!(due_date("2026-02-30").is_err());
    }

    #[test]
    fn number_accepts_full_width_digits() {
        assert_eq!(number("grid", "１２").unwrap(), 12);
        assert_eq!(number("grid", " 3 ").unwrap(), 3);
        assert!(matches!(number("grid", "三"), Err(ArgError::Number { what: "grid", .. })));
        assert!(number("limit", "-1").is_err());
    }

    #[test]
    fn date_is_midnight_in_china() {
        // 2026-11-01 00:00 in Beijing is 2026-10-31 16:00 UTC.
        assert_eq!(date("2026-11-01").unwrap(), Timestamp(1_793_491_200_000 - 8 * 3_600_000));
        assert_eq!(date("2026-11-01T00:00:00+08:00").unwrap(), date("2026-11-01").unwrap());
        assert!(matches!(date("11/01/2026"), Err(ArgError::Date { .. })));
    }
}
