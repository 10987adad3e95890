//! Every error in words a village cadre can act on, with its exit code.
//!
//! This is the one place that turns errors into text: each `InputError` and
//! `LedgerError` variant gets a message in Chinese and English that names the
//! problem (quoting the offending input) and says what to do, a stable
//! kebab-case `kind` for `--json`, and an exit code (2: the user can fix it,
//! 1: something failed). Core `reason` strings are fixed English phrases; they
//! are translated here, and an unknown one is shown as it is.

use std::ffi::OsString;
use std::io::{self, Write};

use fq_core::audit::{CompareError, ResolveError, ResolveFailed};
use fq_core::case::{Category, EventKind, InputError, Level, Outcome, Risk, Role, Status};
use fq_core::ledger::{LedgerError, Tier};
use fq_core::store::StoreError;
use fq_core::sync::session::SessionError;
use fq_core::sync::wire::ErrorCode;
use fq_core::text::{Escape, SafeWriter, escape};
use fq_core::vault::{MAX_WIPE_AFTER, MIN_WIPE_AFTER, VaultError, WARN_TRIES_LEFT};
use fq_sync_server::ca::BundleError;
use fq_sync_server::client::SyncError;
use fq_sync_server::net::{AcceptError, CloseCode, ConnectError, ConnectionError, EndpointError, PeerMismatch};
use serde::Serialize;

use crate::audit::{Findings, findings_words};
use crate::command::WriteRefused;
use crate::enroll::EnrollError;
use crate::import::{CellProblem, ImportError, RowProblem};
use crate::lang::{Lang, choices};
use crate::peer::PeerError;
use crate::pin::PinError;
use crate::request::{ArgError, TextFileProblem};
use crate::sync::AddressError;
use crate::usb::UsbError;
use crate::vault::LockError;
use fq_core::sync::file::FileError;

/// Exit code of a failure that is not the user's to fix.
pub(crate) const EXIT_FAILURE: i32 = 1;
/// Exit code of bad usage or bad input.
pub(crate) const EXIT_USAGE: i32 = 2;

/// The stable code of a problem, printed as `kind` with `--json`. The list
/// is `schemas/error.v1.schema.json`'s enum (a test keeps them equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    Usage,
    Failure,
    NoDataDir,
    InvalidNumber,
    NotInitialized,
    AlreadyInitialized,
    CaseNotFound,
    AmbiguousCase,
    OutOfScope,
    InvalidTransition,
    RoleNotAllowed,
    ReadOnly,
    ServerReplica,
    DamagedCase,
    NewerLedger,
    DiskFull,
    DamagedLedger,
    StorageFailure,
    InvalidDivisionCode,
    InvalidIdNumber,
    InvalidPhone,
    UnsafeText,
    UnknownCategory,
    UnknownValue,
    InvalidParty,
    InvalidText,
    InvalidCaseReference,
    InvalidInput,
    NotEnrolled,
    InvalidBundle,
    BundleMismatch,
    BundleRevoked,
    NoServer,
    InvalidAddress,
    ServerUnreachable,
    ServerRefused,
    SyncFailed,
    BelowLevel,
    FollowUpsPending,
    SuperviseLevel,
    NoSupervision,
    NoFollowUps,
    AmbiguousPerson,
    UnknownPerson,
    PolicyRefused,
    DuplicateCase,
    InvalidImport,
    InvalidDate,
    NeedsFile,
    ReportFailed,
    ServerNameNotFound,
    NoPassphrase,
    PassphraseMismatch,
    PassphraseFile,
    WrongPassphrase,
    KeyErased,
    KeyMissing,
    DamagedKey,
    WeakPassphrase,
    NotEncrypted,
    AlreadyEncrypted,
    LedgerInUse,
    KeyRejected,
    EncryptionFailed,
    ServerLedger,
    AuditFindings,
    UnknownField,
    NoConflict,
    CompareUnsupported,
    NotParent,
    SyncFileDamaged,
    SyncFileWrongReceiver,
    SyncFileNoReceiver,
    SyncFileUnauthorized,
    PeerUnreachable,
    PeerRefused,
    ListenFailed,
}

impl Kind {
    /// Every kind.
    #[cfg(test)]
    const ALL: &[Kind] = &[
        Kind::Usage,
        Kind::Failure,
        Kind::NoDataDir,
        Kind::InvalidNumber,
        Kind::NotInitialized,
        Kind::AlreadyInitialized,
        Kind::CaseNotFound,
        Kind::AmbiguousCase,
        Kind::OutOfScope,
        Kind::InvalidTransition,
        Kind::RoleNotAllowed,
        Kind::ReadOnly,
        Kind::ServerReplica,
        Kind::DamagedCase,
        Kind::NewerLedger,
        Kind::DiskFull,
        Kind::DamagedLedger,
        Kind::StorageFailure,
        Kind::InvalidDivisionCode,
        Kind::InvalidIdNumber,
        Kind::InvalidPhone,
        Kind::UnsafeText,
        Kind::UnknownCategory,
        Kind::UnknownValue,
        Kind::InvalidParty,
        Kind::InvalidText,
        Kind::InvalidCaseReference,
        Kind::InvalidInput,
        Kind::NotEnrolled,
        Kind::InvalidBundle,
        Kind::BundleMismatch,
        Kind::BundleRevoked,
        Kind::NoServer,
        Kind::InvalidAddress,
        Kind::ServerUnreachable,
        Kind::ServerRefused,
        Kind::SyncFailed,
        Kind::BelowLevel,
        Kind::FollowUpsPending,
        Kind::SuperviseLevel,
        Kind::NoSupervision,
        Kind::NoFollowUps,
        Kind::AmbiguousPerson,
        Kind::UnknownPerson,
        Kind::PolicyRefused,
        Kind::DuplicateCase,
        Kind::InvalidImport,
        Kind::InvalidDate,
        Kind::NeedsFile,
        Kind::ReportFailed,
        Kind::ServerNameNotFound,
        Kind::NoPassphrase,
        Kind::PassphraseMismatch,
        Kind::PassphraseFile,
        Kind::WrongPassphrase,
        Kind::KeyErased,
        Kind::KeyMissing,
        Kind::DamagedKey,
        Kind::WeakPassphrase,
        Kind::NotEncrypted,
        Kind::AlreadyEncrypted,
        Kind::LedgerInUse,
        Kind::KeyRejected,
        Kind::EncryptionFailed,
        Kind::ServerLedger,
        Kind::AuditFindings,
        Kind::UnknownField,
        Kind::NoConflict,
        Kind::CompareUnsupported,
        Kind::NotParent,
        Kind::SyncFileDamaged,
        Kind::SyncFileWrongReceiver,
        Kind::SyncFileNoReceiver,
        Kind::SyncFileUnauthorized,
        Kind::PeerUnreachable,
        Kind::PeerRefused,
        Kind::ListenFailed,
    ];
}

/// An error as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Problem {
    /// What kind of problem.
    pub kind: Kind,
    /// The text in the user's language.
    pub message: String,
    /// The process exit code.
    #[serde(skip)]
    pub exit: i32,
}

impl Problem {
    fn user(kind: Kind, message: String) -> Self {
        Self { kind, message, exit: EXIT_USAGE }
    }

    fn failure(kind: Kind, message: String) -> Self {
        Self { kind, message, exit: EXIT_FAILURE }
    }
}

/// Prints an error of a command and returns the exit code. A broken pipe (the
/// reader went away, as with `fq case list | head`) is not an error: exit 0.
pub(crate) fn report(err: &anyhow::Error, lang: Lang, json: bool) -> i32 {
    if is_broken_pipe(err) {
        return 0;
    }
    let problem = describe(err, lang);
    print(&problem, json);
    problem.exit
}

/// Prints a clap error (usage, or `--help`/`--version`) and returns the exit
/// code: 0 for help and version, 2 for every usage error. Help is printed in
/// the user's language (see `cli::command`); usage errors are put into words
/// here, in Chinese from clap's error kind and context, in English by clap.
pub(crate) fn report_usage(err: &clap::Error, args: &[OsString], lang: Lang) -> i32 {
    use clap::error::ErrorKind;
    let json = args.iter().any(|a| a == "--json");
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = write!(io::stdout(), "{}", crate::cli::localize_help(&err.render().to_string(), lang));
            return 0;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand if !json => {
            let lead = lang.pick("还要写明做什么，可以用的命令如下：", "say what to do; the commands are:");
            let help = crate::cli::localize_help(&err.render().to_string(), lang);
            let _ = write!(SafeWriter::new(io::stderr().lock(), Escape::Human), "{lead}\n\n{help}");
            return EXIT_USAGE;
        }
        _ => {}
    }
    let path = command_path(args);
    let message = match lang {
        Lang::Zh => format!("命令写法不对：{}请运行 {path} --help 查看用法。", usage_zh(err)),
        Lang::En => {
            // clap's own first paragraph, on one line: "the following required
            // arguments were not provided: --category <CODE>".
            let rendered = err.to_string();
            let first = rendered.split("\n\n").next().unwrap_or_default();
            let first = first.trim().strip_prefix("error:").unwrap_or(first);
            let detail = first.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("the command is not written correctly: {detail}. Run {path} --help to see how to use it.")
        }
    };
    print(&Problem::user(Kind::Usage, message), json);
    EXIT_USAGE
}

/// The subcommands named in `args` (`fq case new`), to point at their help.
fn command_path(args: &[OsString]) -> String {
    let mut cmd = crate::cli::command(Lang::Zh);
    let mut path = vec!["fq".to_owned()];
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned());
    while let Some(word) = words.next() {
        if word == "--data-dir" || word == "--lang" {
            words.next();
            continue;
        }
        if word.starts_with('-') {
            continue;
        }
        match cmd.find_subcommand(&word) {
            Some(sub) => {
                path.push(word);
                cmd = sub.clone();
            }
            None => break,
        }
    }
    path.join(" ")
}

/// A clap usage error in Chinese, from its kind and context: what was wrong,
/// ending with a full stop.
fn usage_zh(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let get = |kind: ContextKind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) if !v.is_empty() => Some(v.join("、")),
        Some(ContextValue::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let arg = get(ContextKind::InvalidArg).unwrap_or_default();
    let value = get(ContextKind::InvalidValue).unwrap_or_default();
    let suggestion = get(ContextKind::SuggestedSubcommand)
        .or_else(|| get(ContextKind::SuggestedArg))
        .or_else(|| get(ContextKind::SuggestedValue))
        .map(|s| format!("是不是要写“{s}”？"))
        .unwrap_or_default();
    match err.kind() {
        ErrorKind::InvalidSubcommand => {
            let sub = get(ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("没有“{sub}”这个命令。{suggestion}")
        }
        ErrorKind::UnknownArgument => format!("没有“{arg}”这个选项。{suggestion}"),
        ErrorKind::MissingRequiredArgument => format!("缺少必填的 {arg}。"),
        ErrorKind::MissingSubcommand => "还要写明做什么（哪个命令）。".to_owned(),
        ErrorKind::InvalidValue => {
            let valid = get(ContextKind::ValidValue).map(|v| format!("可以填写：{v}。")).unwrap_or_default();
            if value.is_empty() {
                format!("{arg} 后面要写一个值。{valid}")
            } else {
                format!("{arg} 的值“{value}”不对。{valid}{suggestion}")
            }
        }
        ErrorKind::ValueValidation => format!("{arg} 的值“{value}”不对。"),
        ErrorKind::ArgumentConflict => {
            let other = get(ContextKind::PriorArg).unwrap_or_default();
            format!("{arg} 和 {other} 不能同时使用，只写其中一个。")
        }
        ErrorKind::NoEquals => format!("{arg} 的值要用等号写在后面，例如 {arg}=值。"),
        ErrorKind::TooManyValues | ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues => {
            format!("{arg} 后面写的值的个数不对。")
        }
        ErrorKind::InvalidUtf8 => "参数里有不是 UTF-8 编码的字符。".to_owned(),
        _ => String::new(),
    }
}

fn print(problem: &Problem, json: bool) {
    // Messages quote input, which may hold control characters (a case
    // reference pasted from elsewhere): escaped like everything printed.
    let mut err = SafeWriter::new(io::stderr().lock(), if json { Escape::Json } else { Escape::Human });
    // Nothing more can be done if standard error itself is gone.
    let _ = if json {
        let value = serde_json::json!({ "error": problem });
        writeln!(err, "{value}")
    } else {
        writeln!(err, "{}", problem.message)
    };
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// The problem behind an error: the first error in its chain that `fq` has
/// words for, else a generic failure showing the whole chain.
pub(crate) fn describe(err: &anyhow::Error, lang: Lang) -> Problem {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<PinError>() {
            return pin(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<VaultError>() {
            return vault(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<LockError>() {
            return lock(e, lang);
        }
        if let Some(f) = cause.downcast_ref::<Findings>() {
            return Problem::failure(Kind::AuditFindings, findings_words(lang, f));
        }
        if let Some(e) = cause.downcast_ref::<ResolveFailed>() {
            return match e {
                ResolveFailed::Resolve(r) => resolve(r, lang),
                ResolveFailed::Ledger(l) => ledger(l, lang, err),
                _ => Problem::failure(
                    Kind::Failure,
                    match lang {
                        Lang::Zh => format!("操作失败：{err:#}"),
                        Lang::En => format!("the operation failed: {err:#}"),
                    },
                ),
            };
        }
        if let Some(e) = cause.downcast_ref::<EnrollError>() {
            return enroll(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<WriteRefused>() {
            return write_refused(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<FileError>() {
            return sync_file(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<UsbError>() {
            return usb(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<AddressError>() {
            return address(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<PeerError>() {
            return peer(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<SyncError>() {
            return sync(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<LedgerError>() {
            return ledger(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<InputError>() {
            return input(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<ArgError>() {
            return arg(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store(e, lang, err);
        }
        if let Some(e) = cause.downcast_ref::<ImportError>() {
            return import(e, lang);
        }
        if let Some(e) = cause.downcast_ref::<fq_core::report::ReportError>() {
            if let fq_core::report::ReportError::Ledger(l) = e {
                return ledger(l, lang, err);
            }
            return Problem::failure(
                Kind::ReportFailed,
                match lang {
                    Lang::Zh => format!("报表生成失败：{err:#}。请把这条信息报给县综治中心。"),
                    Lang::En => format!("the report could not be made: {err:#}. Report this to the county centre."),
                },
            );
        }
    }
    let message = match lang {
        Lang::Zh => format!("操作失败：{err:#}"),
        Lang::En => format!("the operation failed: {err:#}"),
    };
    Problem::failure(Kind::Failure, message)
}

/// The words for a ledger error; `whole` is the full chain, shown for failures.
pub(crate) fn ledger(e: &LedgerError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    let exit = if e.is_user_error() { EXIT_USAGE } else { EXIT_FAILURE };
    let (kind, message) = match e {
        LedgerError::Input(i) => return input(i, lang),
        LedgerError::NotInitialized => (
            Kind::NotInitialized,
            if zh {
                "这里还没有台账：请先运行 fq init 建立台账（例如 fq init --village 12位村代码 --name 姓名 --role mediator），\
                 或用 --data-dir 指向已有的台账目录。"
                    .to_owned()
            } else {
                "there is no ledger here yet: run fq init first (e.g. fq init --village <12-digit village code> \
                 --name <name> --role mediator), or point --data-dir at an existing ledger."
                    .to_owned()
            },
        ),
        LedgerError::AlreadyInitialized { name, scope } => (
            Kind::AlreadyInitialized,
            if zh {
                format!(
                    "这里已经有台账了（使用人：{name}，区划：{scope}），不能重复建立。要另建台账，请用 --data-dir 指定另一个目录。"
                )
            } else {
                format!(
                    "a ledger already exists here (for {name}, area {scope}); it cannot be set up twice. \
                     To make another one, give a different --data-dir."
                )
            },
        ),
        LedgerError::CaseNotFound { reference } => (
            Kind::CaseNotFound,
            if zh {
                format!("找不到案件“{reference}”：请核对案件编号，或运行 fq case list 查看已有的案件。")
            } else {
                format!("no case matches \"{reference}\": check the case number, or run fq case list to see the cases.")
            },
        ),
        LedgerError::AmbiguousCase { reference, candidates } => (
            Kind::AmbiguousCase,
            if zh {
                format!("“{reference}”对应多件案件：{}。请多写几位编号。", candidates.join("、"))
            } else {
                format!("\"{reference}\" matches several cases: {}. Type more of the number.", candidates.join(", "))
            },
        ),
        LedgerError::OutOfScope { what, code, scope } => (
            Kind::OutOfScope,
            if zh {
                let what = match *what {
                    "village" => "村",
                    "case village" => "案件所在村",
                    _ => "区划",
                };
                format!(
                    "{what}“{code}”不在您负责的区域（{scope}）内，不能在本机登记或修改。请交给该村的网格员或调解员，或上报乡镇。"
                )
            } else {
                format!(
                    "{what} {code} is outside your area ({scope}); it cannot be recorded or changed on this device. \
                     Hand it to that village's grid worker or mediator, or escalate it to the township."
                )
            },
        ),
        LedgerError::Transition { action, number, status } => {
            (Kind::InvalidTransition, transition(lang, action, number, status))
        }
        LedgerError::Role { role, action } => (
            Kind::RoleNotAllowed,
            match (*action, zh) {
                ("accept an escalation", true) => {
                    format!("{}不能接收上报的案件：上报的案件由乡镇或县级人员接收。", role.zh())
                }
                ("accept an escalation", false) => format!(
                    "a {} cannot accept an escalated case: township or county staff accept escalations.",
                    role.en().to_lowercase()
                ),
                ("supervise", true) => format!("{}不能督办：督办由乡镇综治中心或县里发出。", role.zh()),
                ("supervise", false) => format!(
                    "a {} cannot supervise: supervision orders come from the township or the county.",
                    role.en().to_lowercase()
                ),
                (_, true) => format!("{}不能执行此操作。", role.zh()),
                (other, false) => format!("a {} cannot {other}.", role.en().to_lowercase()),
            },
        ),
        LedgerError::BelowLevel { action, number, level } => (
            Kind::BelowLevel,
            match lang {
                Lang::Zh => format!(
                    "案件 {number} 已上报或由{}办理，不能在本级{}：应由{}处理（上级尚未接收时也是如此）。什么也没有写入。",
                    level.zh(),
                    if *action == "settle" { "登记调解成功" } else { "登记调解失败" },
                    level.zh()
                ),
                Lang::En => format!(
                    "case {number} was sent to, or is handled at, the {} level: it cannot be {} below it (even before that level                      accepts it). Nothing was written.",
                    level.en().to_lowercase(),
                    if *action == "settle" { "settled" } else { "marked failed" }
                ),
            },
        ),
        LedgerError::FollowUpsPending { number, pending } => (
            Kind::FollowUpsPending,
            match lang {
                Lang::Zh => format!(
                    "案件 {number} 还有 {pending} 次回访没有做，不能归档：请先回访（fq case followup），或写明理由免予回访（fq case waive {number} --reason 理由）。什么也没有写入。"
                ),
                Lang::En => format!(
                    "case {number} still owes {pending} follow-up visit(s) and cannot be archived: make them (fq case followup)                      or waive them with a reason (fq case waive {number} --reason TEXT). Nothing was written."
                ),
            },
        ),
        LedgerError::SuperviseLevel { number, case_level, own_level } => (
            Kind::SuperviseLevel,
            match lang {
                Lang::Zh => format!(
                    "案件 {number} 由{}办理，{}不能督办：督办由上级发出（乡镇督办村级案件，县里可督办所有案件）。",
                    case_level.zh(),
                    own_level.zh()
                ),
                Lang::En => format!(
                    "case {number} is handled at the {} level; the {} level cannot supervise it: supervision comes from above                      (a township on its villages' cases, the county on any case).",
                    case_level.en().to_lowercase(),
                    own_level.en().to_lowercase()
                ),
            },
        ),
        LedgerError::NoSupervision { number } => (
            Kind::NoSupervision,
            match lang {
                Lang::Zh => format!("案件 {number} 没有待回复的督办。"),
                Lang::En => format!("case {number} has no supervision order to answer."),
            },
        ),
        LedgerError::NoFollowUps { number } => (
            Kind::NoFollowUps,
            match lang {
                Lang::Zh => format!("案件 {number} 没有待做的回访，不需要免予回访。"),
                Lang::En => format!("case {number} owes no follow-up visit; there is nothing to waive."),
            },
        ),
        LedgerError::AmbiguousPerson { input, candidates } => {
            let list: Vec<String> = candidates
                .iter()
                .map(|c| match lang {
                    Lang::Zh => format!("{}（{}，{}）", c.id, lang.label(c.role), c.scope),
                    Lang::En => format!("{} ({}, {})", c.id, lang.label(c.role), c.scope),
                })
                .collect();
            (
                Kind::AmbiguousPerson,
                match lang {
                    Lang::Zh => {
                        format!("花名册里有 {} 人叫“{input}”：{}。请改写人员编号。", candidates.len(), list.join("、"))
                    }
                    Lang::En => format!(
                        "{} people in the roster are called \"{input}\": {}. Give the staff id instead.",
                        candidates.len(),
                        list.join(", ")
                    ),
                },
            )
        }
        LedgerError::UnknownPerson { input } => (
            Kind::UnknownPerson,
            match lang {
                Lang::Zh => format!("县花名册里没有“{input}”：请核对姓名，或填写人员编号（如 532924101201-01）。"),
                Lang::En => format!(
                    "\"{input}\" is not in the county roster: check the name, or give a staff id (e.g. 532924101201-01)."
                ),
            },
        ),
        LedgerError::Policy(p) => (
            Kind::PolicyRefused,
            match lang {
                Lang::Zh => format!("县级政策没有采用：{p}。仍按原来的政策执行。"),
                Lang::En => format!("the county policy was not installed: {p}. The one in force stays."),
            },
        ),
        LedgerError::DuplicateNumber { number } => (
            Kind::DuplicateCase,
            match lang {
                Lang::Zh => format!("编号为“{number}”的案件已经在台账里了（这份表格可能导入过）：什么也没有导入。"),
                Lang::En => format!(
                    "a case numbered \"{number}\" is already in the ledger (the file may have been imported before): nothing was imported."
                ),
            },
        ),
        LedgerError::ReadOnly => (
            Kind::ReadOnly,
            lang.pick("台账以只读方式打开，不能修改。", "the ledger is open read-only and cannot be changed.")
                .to_owned(),
        ),
        LedgerError::Store(s) => return store(s, lang, whole),
        LedgerError::Doc(_) => (Kind::DamagedCase, damaged_case(lang, whole)),
        other => (
            Kind::Failure,
            if zh {
                format!("操作失败：{other}（{whole:#}）")
            } else {
                format!("the operation failed: {whole:#}")
            },
        ),
    };
    Problem { kind, message, exit }
}

/// The words for a write `fq` refuses to make.
fn write_refused(e: &WriteRefused, lang: Lang) -> Problem {
    match e {
        WriteRefused::ServerReplica { dir, tier, name, scope } => {
            let tier_zh = if *tier == Tier::County { "县" } else { "乡镇" };
            Problem::user(
                Kind::ServerReplica,
                match lang {
                    Lang::Zh => format!(
                        "{} 是{tier_zh}服务器 {name}（{scope}）的数据目录，不能在这里修改：服务器只转发各台设备的修改，自己写的修改上级不会接收，数据就对不上了。\
                         请在设备上修改后同步；乡镇干部、县级管理员请用自己的台账修改（fq init --bundle 本人的证书包），再与服务器同步。\
                         查看这里的数据可以用只读命令，例如 fq case list、fq case show。什么也没有写入。",
                        dir.display()
                    ),
                    Lang::En => format!(
                        "{} is the data directory of the {} server {name} ({scope}); it cannot be changed here: a server relays \
                         what devices wrote, and its parent refuses anything a server wrote itself, so the data would no longer \
                         agree. Make the change on a device and sync it; township officers and county admins use their own ledger \
                         (fq init --bundle with their own bundle) and sync it with the server. Read-only commands such as \
                         fq case list and fq case show work here. Nothing was written.",
                        dir.display(),
                        tier.code()
                    ),
                },
            )
        }
    }
}

fn damaged_case(lang: Lang, whole: &anyhow::Error) -> String {
    match lang {
        Lang::Zh => format!("案件数据读写出错，可能已损坏：{whole:#}。请把这条信息报给县综治中心。"),
        Lang::En => format!(
            "a case document could not be read or written and may be damaged: {whole:#}. Report this to the county centre."
        ),
    }
}

fn store(e: &StoreError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    match e {
        StoreError::NewerSchema { found } => Problem::failure(
            Kind::NewerLedger,
            if zh {
                format!("台账文件是新版 fq 写的（格式版本 {found}），本机的 fq 太旧，请先升级 fq。")
            } else {
                format!("the ledger file was written by a newer fq (format {found}); upgrade fq on this device first.")
            },
        ),
        StoreError::DiskFull => Problem::failure(
            Kind::DiskFull,
            lang.pick(
                "存储空间已满，没有保存：请清理手机或电脑的存储空间后再试。",
                "the disk is full and nothing was saved: free some space and try again.",
            )
            .to_owned(),
        ),
        StoreError::KeyRejected => Problem::failure(
            Kind::KeyRejected,
            lang.pick(
                "密钥打不开这个台账文件：密钥文件和台账不是一套，或台账已损坏。请不要删除任何文件，联系县综治中心。",
                "the key does not open this ledger file: the key file belongs to another ledger, or the ledger is damaged. Delete nothing and contact the county centre.",
            )
            .to_owned(),
        ),
        StoreError::InUse => Problem::failure(
            Kind::LedgerInUse,
            lang.pick(
                "台账正被另一个程序使用（例如正在运行的服务器）：请先停止它再重试。台账没有改动。",
                "another program (a running server?) is using the ledger: stop it and try again. Nothing was changed.",
            )
            .to_owned(),
        ),
        StoreError::CopyDiffers { what } => Problem::failure(
            Kind::EncryptionFailed,
            if zh {
                let what = match *what {
                    "page authentication" => "页面校验不通过",
                    "log head" => "修改日志的末尾不同",
                    _ => "案件、修改或审计记录的数量不同",
                };
                format!("加密后的副本和原台账不一致（{what}），已放弃加密，原台账没有改动。请把这条信息报给县综治中心。")
            } else {
                format!("the encrypted copy differs from the ledger ({what}); encryption was abandoned and the ledger is unchanged. Report this to the county centre.")
            },
        ),
        StoreError::Corrupt => Problem::failure(
            Kind::DamagedLedger,
            lang.pick(
                "台账文件已损坏或不是 fq 台账：请不要再写入，联系县综治中心从上级服务器恢复。",
                "the ledger file is damaged or is not an fq ledger: stop writing to it and ask the county centre to restore it from the server.",
            )
            .to_owned(),
        ),
        _ => Problem::failure(
            Kind::StorageFailure,
            if zh {
                format!("读写台账文件失败：{whole:#}。如果另一个程序正在使用台账，请稍后再试。")
            } else {
                format!("reading or writing the ledger file failed: {whole:#}. If another program is using the ledger, try again later.")
            },
        ),
    }
}

/// The words for a passphrase that could not be had.
fn pin(e: &PinError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    match e {
        PinError::NoPassphrase => Problem::user(
            Kind::NoPassphrase,
            lang.pick(
                "台账已加密，需要口令，但这里没有终端可以输入口令：请在终端里运行；脚本可以用 --passphrase-file 文件 \
                 指定口令文件（文件须只有本人能读：chmod 600 文件），或设置环境变量 FQ_PASSPHRASE。",
                "the ledger is encrypted and needs its passphrase, but there is no terminal to ask on: run this in a \
                 terminal, or (scripts) give --passphrase-file FILE (readable by you only: chmod 600 FILE), or set FQ_PASSPHRASE.",
            )
            .to_owned(),
        ),
        PinError::NoChosenPassphrase => Problem::user(
            Kind::NoPassphrase,
            lang.pick(
                "台账要加密，需要设置口令，但这里没有终端可以输入：请在终端里运行（会让您输入两遍）；脚本可以用 \
                 --passphrase-file 文件（文件须只有本人能读：chmod 600 文件）或环境变量 FQ_PASSPHRASE 给出口令。什么都没有建立。",
                "the ledger is encrypted and needs a passphrase, but there is no terminal to ask on: run this in a terminal \
                 (it asks twice), or (scripts) give --passphrase-file FILE (readable by you only: chmod 600 FILE) or set \
                 FQ_PASSPHRASE. Nothing was set up.",
            )
            .to_owned(),
        ),
        PinError::NoNewPassphrase => Problem::user(
            Kind::NoPassphrase,
            lang.pick(
                "没有终端可以输入新口令：请在终端里运行，或用 --new-passphrase-file 文件 指定新口令（文件须只有本人能读）。口令没有改。",
                "there is no terminal to type the new passphrase on: run this in a terminal, or give --new-passphrase-file FILE \
                 (readable by you only). The passphrase was not changed.",
            )
            .to_owned(),
        ),
        PinError::Mismatch => Problem::user(
            Kind::PassphraseMismatch,
            lang.pick("两次输入的口令不一样，什么都没有改。请重新运行。", "the two passphrases differ; nothing was changed. Run it again.")
                .to_owned(),
        ),
        PinError::Empty => Problem::user(
            Kind::PassphraseMismatch,
            lang.pick("口令不能为空。", "the passphrase is empty.").to_owned(),
        ),
        PinError::FileExposed { path } => {
            let path = escape(&path.display().to_string()).into_owned();
            Problem::user(
                Kind::PassphraseFile,
                if zh {
                    format!("口令文件 {path} 别人也能读：请先运行 chmod 600 {path}，只让自己能读，再重试。")
                } else {
                    format!("the passphrase file {path} is readable by others: run chmod 600 {path} first, then try again.")
                },
            )
        }
        PinError::File { path, source } => {
            let path = escape(&path.display().to_string()).into_owned();
            Problem::user(
                Kind::PassphraseFile,
                if zh {
                    // The system's reason is in English: the path and the fix say enough.
                    let _ = source;
                    format!("读不到口令文件 {path}：请核对文件名，以及文件是否存在、是否不超过一行。")
                } else {
                    format!("cannot read the passphrase file {path} ({source}): check the name.")
                },
            )
        }
        PinError::Terminal(_) => Problem::failure(
            Kind::Failure,
            if zh { format!("从终端读取口令失败：{whole:#}") } else { format!("reading the passphrase failed: {whole:#}") },
        ),
    }
}

/// The words for the ledger's key: a wrong passphrase, an erased or missing key.
fn vault(e: &VaultError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    match e {
        VaultError::WrongPassphrase { failed, tries_left } => Problem::user(
            Kind::WrongPassphrase,
            match (tries_left, zh) {
                (None, true) => "口令（密钥文件）不对，打不开台账。请核对口令，或 --passphrase-file 指定的文件。".to_owned(),
                (None, false) => {
                    "wrong passphrase (or key file): the ledger cannot be opened. Check it, or the file given with --passphrase-file."
                        .to_owned()
                }
                (Some(left), true) if *left <= WARN_TRIES_LEFT => format!(
                    "口令不对（已连续输错 {failed} 次）。警告：再输错 {left} 次，本机台账的密钥和数据将被清除，\
                     之后只能用证书包重新建立台账、从乡镇服务器同步回来。"
                ),
                (Some(left), false) if *left <= WARN_TRIES_LEFT => format!(
                    "wrong passphrase ({failed} wrong in a row). Warning: after {left} more wrong tries the ledger's key and data \
                     on this device are erased; it then has to be set up again from its bundle and synced back from the township."
                ),
                (Some(left), true) => format!("口令不对（已连续输错 {failed} 次，还能再试 {left} 次）。请核对后重新输入。"),
                (Some(left), false) => {
                    format!("wrong passphrase ({failed} wrong in a row, {left} tries left). Check it and try again.")
                }
            },
        ),
        VaultError::Erased { failed } => Problem::user(
            Kind::KeyErased,
            if zh {
                format!(
                    "口令连续输错 {failed} 次，本机台账的密钥和数据已经清除。请用县里发的证书包重新建立台账\
                     （fq init --bundle 证书包文件 --name 姓名），再运行 fq sync 从乡镇服务器取回本村的案件。"
                )
            } else {
                format!(
                    "{failed} wrong passphrases in a row: the ledger's key and data on this device were erased. Set the device up \
                     again from its bundle (fq init --bundle BUNDLE_FILE --name NAME), then run fq sync to bring the village's \
                     cases back from the township."
                )
            },
        ),
        VaultError::KeyMissing { path } => {
            let path = escape(&path.display().to_string()).into_owned();
            Problem::user(
                Kind::KeyMissing,
                if zh {
                    format!(
                        "台账已加密，但它的密钥文件 {path} 不见了（可能因口令输错太多次已被清除），台账打不开。\
                         请把这个数据目录移走，用证书包重新建立台账（fq init --bundle），再运行 fq sync 从乡镇服务器取回案件。"
                    )
                } else {
                    format!(
                        "the ledger is encrypted but its key file {path} is gone (erased after too many wrong passphrases?), so it \
                         cannot be opened. Move this data directory away, set up again from the bundle (fq init --bundle), and run \
                         fq sync to bring the cases back from the township."
                    )
                },
            )
        }
        VaultError::Damaged { why } => Problem::failure(
            Kind::DamagedKey,
            if zh {
                "台账的密钥文件已损坏，台账打不开。请不要删除任何文件，联系县综治中心。".to_owned()
            } else {
                format!("the ledger's key file is damaged ({why}); the ledger cannot be opened. Delete nothing and contact the county centre.")
            },
        ),
        VaultError::WeakPassphrase { .. } => Problem::user(
            Kind::WeakPassphrase,
            lang.pick(
                "口令太简单，偷到手机的人可以很快试出来：至少要8个字，不能只用数字（只用数字至少12位）。\
                 可以用一句自己记得住、别人猜不到的话，例如“我家门前有3棵柿子树”。",
                "the passphrase is too weak: someone holding a stolen phone could try every one quickly. Use at least 8 characters, \
                 not only digits (12 or more if only digits): a sentence only you would say, e.g. \"3 persimmon trees by my door\".",
            )
            .to_owned(),
        ),
        VaultError::AlreadyEncrypted => Problem::user(
            Kind::AlreadyEncrypted,
            lang.pick("台账已经加密了，不用再加密。", "the ledger is already encrypted.").to_owned(),
        ),
        VaultError::WipeLimit(n) => Problem::user(
            Kind::InvalidNumber,
            if zh {
                format!("--wipe-after 要填 {MIN_WIPE_AFTER} 到 {MAX_WIPE_AFTER} 之间的数，不能是 {n}。")
            } else {
                format!("--wipe-after must be between {MIN_WIPE_AFTER} and {MAX_WIPE_AFTER}, not {n}.")
            },
        ),
        VaultError::NoLedger => ledger(&LedgerError::NotInitialized, lang, whole),
        VaultError::Store(s) => store(s, lang, whole),
        _ => Problem::failure(
            Kind::Failure,
            if zh { format!("处理台账密钥失败：{whole:#}") } else { format!("handling the ledger's key failed: {whole:#}") },
        ),
    }
}

/// The words for a ledger that cannot be set up or encrypted here.
fn lock(e: &LockError, lang: Lang) -> Problem {
    match e {
        LockError::Exists { dir } => {
            let dir = escape(&dir.display().to_string()).into_owned();
            Problem::user(
                Kind::AlreadyInitialized,
                match lang {
                    Lang::Zh => format!("{dir} 里已经有台账了（已加密），不能重复建立。要另建台账，请用 --data-dir 指定另一个目录。"),
                    Lang::En => format!(
                        "{dir} already holds a ledger (encrypted); it cannot be set up twice. To make another one, give a different --data-dir."
                    ),
                },
            )
        }
        LockError::Plain => Problem::user(
            Kind::NotEncrypted,
            lang.pick(
                "台账还没有加密，没有口令可改：请先运行 fq encrypt 加密台账（会要求设置口令）。",
                "the ledger is not encrypted, so it has no passphrase to change: run fq encrypt first (it asks for one).",
            )
            .to_owned(),
        ),
        LockError::ServerLedger { tier } => Problem::user(
            Kind::ServerLedger,
            match lang {
                Lang::Zh => format!(
                    "这是{}服务器的台账：请在服务器上停止 fq-server，再用 fq-server encrypt --data-dir 目录 --key-file 密钥文件 加密。",
                    if *tier == "county" { "县级" } else { "乡镇" }
                ),
                Lang::En => format!(
                    "this is a {tier} server's ledger: stop fq-server and run fq-server encrypt --data-dir DIR --key-file FILE on the server."
                ),
            },
        ),
    }
}

fn arg(e: &ArgError, lang: Lang) -> Problem {
    match e {
        ArgError::Number { what, input } => {
            let what = match (*what, lang) {
                ("grid", Lang::Zh) => "网格编号",
                ("limit", Lang::Zh) => "数量",
                ("wipe-after", Lang::Zh) => "输错次数上限",
                (_, Lang::Zh) => "数字",
                (w, Lang::En) => w,
            };
            Problem::user(
                Kind::InvalidNumber,
                match lang {
                    Lang::Zh => format!("{what}“{input}”不对：请填写一个整数，例如 3。"),
                    Lang::En => format!("{what} \"{input}\" is not valid: give a whole number, e.g. 3."),
                },
            )
        }
        ArgError::Date { input } => Problem::user(
            Kind::InvalidDate,
            match lang {
                Lang::Zh => format!("日期“{input}”不对：请写成 2026-11-10 这样的年-月-日。"),
                Lang::En => format!("date \"{input}\" is not valid: write it as year-month-day, e.g. 2026-11-10."),
            },
        ),
        ArgError::NeedsFile { format } => Problem::user(
            Kind::NeedsFile,
            match lang {
                Lang::Zh => format!("{format} 格式的报表要写入文件：请加上 --out 文件名，例如 --out 报表.{format}。"),
                Lang::En => format!("a {format} report goes into a file: add --out FILE, e.g. --out report.{format}."),
            },
        ),
        ArgError::MissingRoleOrVillage => Problem::user(
            Kind::Usage,
            lang.pick(
                "建立台账需要 --role 和 --village，或者用 --bundle 指定县里发的证书包。",
                "fq init needs --role and --village, or a certificate bundle from the county with --bundle.",
            )
            .to_owned(),
        ),
        ArgError::NoDataDir => Problem::user(
            Kind::NoDataDir,
            lang.pick(
                "找不到存放台账的目录：请用 --data-dir 指定目录，或设置环境变量 FQ_DATA_DIR。",
                "cannot find a directory for the ledger: give --data-dir or set FQ_DATA_DIR.",
            )
            .to_owned(),
        ),
        ArgError::MissingText { what } => Problem::user(
            Kind::InvalidText,
            match lang {
                Lang::Zh => {
                    format!("没有填写{}：请直接写在命令里，或用文件给出（- 表示从标准输入读）。", field_words_zh(what))
                }
                Lang::En => {
                    format!("no {what} given: write it in the command, or give a file (- reads standard input).")
                }
            },
        ),
        ArgError::TextFile { what, path, problem } => {
            let file = if path.as_os_str() == "-" {
                lang.pick("标准输入", "standard input").to_owned()
            } else {
                path.display().to_string()
            };
            let (zh, en) = match problem {
                TextFileProblem::Unreadable => {
                    ("读不出来，请检查文件名和权限", "cannot be read; check the name and permissions")
                }
                TextFileProblem::NotUtf8 => (
                    "不是 UTF-8 编码的纯文本，请用记事本“另存为”UTF-8 格式后再试",
                    "is not UTF-8 plain text; save it as UTF-8 text (e.g. Save As in Notepad) and try again",
                ),
                TextFileProblem::TooBig => {
                    ("太大了，一段文字最多两万字", "is too big: a text holds at most 20,000 characters")
                }
            };
            Problem::user(
                Kind::InvalidText,
                match lang {
                    Lang::Zh => format!("用来填写{}的{file}{zh}。什么也没有写入。", field_words_zh(what)),
                    Lang::En => format!("{file}, given for the {what}, {en}. Nothing was written."),
                },
            )
        }
    }
}

/// The Chinese name of an import column.
fn column_zh(column: &str) -> &'static str {
    crate::export::CSV_HEADER.iter().find(|(_, en)| *en == column).map_or("列", |(zh, _)| zh)
}

/// One bad cell of an import, in words.
fn row_words(lang: Lang, r: &RowProblem) -> String {
    let col = match lang {
        Lang::Zh => format!("第 {} 行“{}”", r.line, column_zh(r.column)),
        Lang::En => format!("line {}, {}", r.line, r.column),
    };
    let what = match &r.problem {
        CellProblem::Empty => lang.pick("没有填写，这一列必须填", "is empty; this column is required").to_owned(),
        CellProblem::Date => match lang {
            Lang::Zh => format!("“{}”不是日期，请写成 2026-10-01 或 2026-10-01 09:30", r.value),
            Lang::En => format!("\"{}\" is not a date; write 2026-10-01 or 2026-10-01 09:30", r.value),
        },
        CellProblem::Number => match lang {
            Lang::Zh => format!("“{}”不是整数", r.value),
            Lang::En => format!("\"{}\" is not a whole number", r.value),
        },
        CellProblem::OutsideArea { scope } => match lang {
            Lang::Zh => format!("村代码 {} 不在本台账的区域（{scope}）内", r.value),
            Lang::En => format!("village {} is outside this ledger's area ({scope})", r.value),
        },
        CellProblem::Repeated { first } => match lang {
            Lang::Zh => format!("编号“{}”与第 {first} 行重复", r.value),
            Lang::En => format!("number \"{}\" repeats line {first}", r.value),
        },
        CellProblem::Input(e) => input(e, lang).message,
        CellProblem::Person(e) => {
            let whole = anyhow::anyhow!("{e}");
            ledger(e, lang, &whole).message
        }
    };
    match lang {
        Lang::Zh => format!("{col}：{what}"),
        Lang::En => format!("{col}: {what}"),
    }
}

/// The words for a file `fq case import` refused. Nothing was imported.
fn import(e: &ImportError, lang: Lang) -> Problem {
    let message = match e {
        ImportError::File { path, problem } => {
            let (zh, en) = match problem {
                TextFileProblem::Unreadable => {
                    ("读不出来，请检查文件名和权限", "cannot be read; check the name and permissions")
                }
                TextFileProblem::NotUtf8 => (
                    "不是 UTF-8 编码，请在 Excel 或 WPS 里“另存为”CSV UTF-8 格式后再试",
                    "is not UTF-8; save it as \"CSV UTF-8\" in Excel or WPS and try again",
                ),
                TextFileProblem::TooBig => ("太大了，超过 64MB", "is larger than 64 MB"),
            };
            match lang {
                Lang::Zh => format!("文件 {}{zh}。什么也没有导入。", path.display()),
                Lang::En => format!("the file {} {en}. Nothing was imported.", path.display()),
            }
        }
        ImportError::NotCsv { path, line } => match lang {
            Lang::Zh => format!("{} 第 {line} 行不是 CSV 格式（可能引号不配对）。什么也没有导入。", path.display()),
            Lang::En => {
                format!("{} is not CSV at line {line} (an unmatched quote?). Nothing was imported.", path.display())
            }
        },
        ImportError::Empty { path } => match lang {
            Lang::Zh => format!("{} 里没有案件。", path.display()),
            Lang::En => format!("{} holds no cases.", path.display()),
        },
        ImportError::UnknownColumn { name } => {
            let cols: Vec<&str> = crate::export::CSV_HEADER.iter().map(|(zh, en)| lang.pick(zh, en)).collect();
            match lang {
                Lang::Zh => {
                    format!("表头里的“{name}”不是可以导入的列。可以用的列：{}。什么也没有导入。", cols.join("、"))
                }
                Lang::En => format!(
                    "\"{name}\" is not a column that can be imported. The columns: {}. Nothing was imported.",
                    cols.join(", ")
                ),
            }
        }
        ImportError::MissingColumn { name } => match lang {
            Lang::Zh => format!("表格缺少“{}”列，每件案件都要有。什么也没有导入。", column_zh(name)),
            Lang::En => format!("the file has no {name} column, which every case needs. Nothing was imported."),
        },
        ImportError::Rows { rows, more } => {
            let lines: Vec<String> = rows.iter().map(|r| format!("  {}", row_words(lang, r))).collect();
            let more = match (lang, *more) {
                (_, 0) => String::new(),
                (Lang::Zh, n) => format!("\n  另有 {n} 处问题未列出。"),
                (Lang::En, n) => format!("\n  and {n} more."),
            };
            match lang {
                Lang::Zh => format!("表格有 {} 处要改，什么也没有导入：\n{}{more}", rows.len(), lines.join("\n")),
                Lang::En => {
                    format!("the file needs {} fixes; nothing was imported:\n{}{more}", rows.len(), lines.join("\n"))
                }
            }
        }
    };
    Problem::user(Kind::InvalidImport, message)
}

/// The words for a bundle that is missing or does not fit.
fn enroll(e: &EnrollError, lang: Lang) -> Problem {
    let zh = lang == Lang::Zh;
    match e {
        EnrollError::NotEnrolled { .. } => Problem::user(
            Kind::NotEnrolled,
            lang.pick(
                "本机还没有登记，不能同步：先用 fq enroll --bundle 登记本机（证书包向县综治中心申领）。",
                "this device is not enrolled and cannot sync: run fq enroll --bundle BUNDLE_FILE first (the county centre issues bundles).",
            )
            .to_owned(),
        ),
        EnrollError::Invalid { path, source } => Problem::user(
            Kind::InvalidBundle,
            if zh {
                format!("证书包 {} 无法使用：{}。请向县综治中心重新申领证书包。", path.display(), bundle_problem_zh(source))
            } else {
                format!("the bundle {} cannot be used: {source}. Ask the county centre for a new one.", path.display())
            },
        ),
        EnrollError::ServerBundle { id, role } => Problem::user(
            Kind::BundleMismatch,
            if zh {
                format!("证书包 {id} 是服务器用的（{role}），不能装在设备上。请使用发给本机使用人的证书包。")
            } else {
                format!("bundle {id} is a {role} server's, not a device's. Use the bundle issued for this device's user.")
            },
        ),
        EnrollError::Disagrees { field, bundle, given } => Problem::user(
            Kind::BundleMismatch,
            match (zh, *field) {
                (true, "role") => format!("证书包写的角色是 {bundle}，但命令里写的是 {given}。可以不写 --role，角色以证书包为准。"),
                (true, _) => format!("证书包写的区划是 {bundle}，但命令里写的是 {given}。可以不写 --village，区划以证书包为准。"),
                (false, f) => format!("the bundle says {f} {bundle}, but {given} was given; leave --{f} out, the bundle decides."),
            },
        ),
        EnrollError::OutsideScope { bundle, ledger } => Problem::user(
            Kind::BundleMismatch,
            if zh {
                format!("证书包的区划 {bundle} 不包括本机台账的区划 {ledger}，不能用于本机。请申领本村（本区域）的证书包。")
            } else {
                format!("the bundle's area {bundle} does not cover this device's area {ledger}. Ask for a bundle for this area.")
            },
        ),
        EnrollError::Revoked { id, serial, version } => Problem::user(
            Kind::BundleRevoked,
            if zh {
                format!(
                    "证书 {id}（序列号 {serial}）已被县里吊销（吊销清单第 {version} 版），不能再登记：这通常是丢失或更换过的手机的证书。\
                     请向县综治中心申领一份新的证书包。什么也没有写入。"
                )
            } else {
                format!(
                    "certificate {id} (serial {serial}) was revoked by the county (revocation list version {version}) and cannot \
                     be enrolled: it is usually the certificate of a lost or replaced phone. Ask the county centre for a new \
                     bundle. Nothing was written."
                )
            },
        ),
        EnrollError::BadRevocations { path, .. } => Problem::user(
            Kind::InvalidBundle,
            if zh {
                format!("吊销清单文件 {} 读不出来，或不是本县证书中心签发的：请向县综治中心要一份新的吊销清单。", path.display())
            } else {
                format!(
                    "revocation list {} cannot be read or was not signed by this county's CA: ask the county centre for a current one.",
                    path.display()
                )
            },
        ),
    }
}

/// What is wrong with a bundle file, in Chinese.
fn bundle_problem_zh(e: &BundleError) -> String {
    match e {
        BundleError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => "找不到这个文件".to_owned(),
        BundleError::Io { .. } => "文件读不出来（请检查文件名和权限）".to_owned(),
        BundleError::TooLarge(_) => "文件太大，不是证书包".to_owned(),
        BundleError::Decode(_) | BundleError::GrantEncoding => "文件内容不是证书包（可能拷贝时损坏了）".to_owned(),
        BundleError::Format(v) | BundleError::Outdated(v) => format!("证书包是旧格式（第 {v} 版），本机的 fq 不再读取"),
        BundleError::Grant(_) | BundleError::Certificate(_) | BundleError::Mismatch { .. } => {
            "证书包里的证书或授权无效，或前后不一致".to_owned()
        }
        BundleError::CaCertificate(_) | BundleError::NotSignedByCa => "证书不是本县证书中心签发的".to_owned(),
        BundleError::PrivateKey(_) | BundleError::KeyMismatch => "证书包里的私钥无效或与证书不符".to_owned(),
        BundleError::Revocations(_) => "证书包里的吊销清单无效".to_owned(),
        _ => "证书包无法读取".to_owned(),
    }
}

/// The words for a sync file that was refused. A refused file changes nothing.
fn sync_file(e: &FileError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let unchanged = lang.pick("本机数据没有改动。", "Nothing on this device was changed.");
    match e {
        FileError::NotAFile
        | FileError::TooLarge(_)
        | FileError::Damaged(_)
        | FileError::Frames(_)
        | FileError::Decrypt => Problem::user(
            Kind::SyncFileDamaged,
            match lang {
                Lang::Zh => format!(
                    "这个同步文件已损坏或不完整（可能没有拷完，或被改动过），整个文件都不导入。请让对方重新生成文件再拷一次。{unchanged}"
                ),
                Lang::En => format!(
                    "this sync file is damaged or incomplete (cut short while copying, or altered): none of it is imported. Ask for the file to be written and copied again. {unchanged}"
                ),
            },
        ),
        FileError::WrongReceiver { intended } => Problem::user(
            Kind::SyncFileWrongReceiver,
            match lang {
                Lang::Zh => format!(
                    "这个同步文件不是给本设备（或本服务器）的，是给另一方（密钥 {intended}）的，不能导入。请把它交给对的乡镇或设备。{unchanged}"
                ),
                Lang::En => format!(
                    "this sync file is not for this device or server but for another one (key {intended}): it cannot be imported. Take it to the right township or device. {unchanged}"
                ),
            },
        ),
        FileError::NotOurAnswer => Problem::user(
            Kind::SyncFileWrongReceiver,
            match lang {
                Lang::Zh => format!(
                    "这个回执答复的不是本机写的同步文件（可能是换机前旧手机写的文件的回执），不能导入：里面的确认说的是另一台手机的记录。请在本机重新写同步文件（fq sync --to-file）带去乡镇，或有网络时直接同步。{unchanged}"
                ),
                Lang::En => format!(
                    "this answer is not for a sync file this device wrote (it may answer a file the phone this one replaced wrote), so it cannot be imported: its acknowledgements are about another phone's records. Write a new sync file on this device (fq sync --to-file) and take it to the township, or sync over the network. {unchanged}"
                ),
            },
        ),
        FileError::Sender(_) | FileError::Unauthorized { .. } => Problem::user(
            Kind::SyncFileUnauthorized,
            match lang {
                Lang::Zh => {
                    format!("这个同步文件的发送方不是本县证书中心认可的、可以和本设备同步的一方，不能导入。{unchanged}")
                }
                Lang::En => format!(
                    "the sender of this sync file is not one this county's CA lets sync with this device: it cannot be imported. {unchanged}"
                ),
            },
        ),
        _ => Problem::failure(
            Kind::SyncFailed,
            match lang {
                Lang::Zh => format!("导入或写出同步文件没有成功。{unchanged}"),
                Lang::En => format!("the sync file could not be handled: {whole:#}. {unchanged}"),
            },
        ),
    }
}

fn usb(e: &UsbError, lang: Lang) -> Problem {
    match e {
        UsbError::NoReceiver => Problem::failure(
            Kind::SyncFileNoReceiver,
            lang.pick(
                "本设备还不知道乡镇服务器的密钥，写不了给它的同步文件：请先在有网络的地方用 fq sync --server 同步一次（例如在乡镇领证书时）。本机数据没有改动。",
                "this device does not know its township server's key yet, so it cannot seal a file for it: sync once over the network first (fq sync --server), e.g. when the bundle is handed over. Nothing on this device was changed.",
            )
            .to_owned(),
        ),
        UsbError::UnknownPeer(id) => Problem::user(
            Kind::SyncFileNoReceiver,
            match lang {
                Lang::Zh => format!("本设备不认识同村的设备“{id}”（还没有收到过它的修改或文件），写不了给它的同步文件。本机数据没有改动。"),
                Lang::En => format!("this device does not know a device \"{id}\" of its village (it has had none of its changes or files yet), so it cannot seal a file for it. Nothing on this device was changed."),
            },
        ),
    }
}

fn address(e: &AddressError, lang: Lang) -> Problem {
    match e {
        AddressError::NoServer => Problem::user(
            Kind::NoServer,
            lang.pick(
                "不知道同步到哪台服务器：第一次同步请用 --server 写明服务器地址，例如 fq sync --server 10.0.0.5:4433。",
                "no server to sync with: the first time, give its address, e.g. fq sync --server 10.0.0.5:4433.",
            )
            .to_owned(),
        ),
        AddressError::Invalid { input } => Problem::user(
            Kind::InvalidAddress,
            match lang {
                Lang::Zh => format!("地址“{input}”不对：请写成 地址:端口，例如 10.0.0.5:4433。"),
                Lang::En => format!("address \"{input}\" is not valid: write HOST:PORT, e.g. 10.0.0.5:4433."),
            },
        ),
        // A failure, not bad input: the same name works once the network's name service does.
        AddressError::NameNotFound { host } => Problem::failure(
            Kind::ServerNameNotFound,
            match lang {
                Lang::Zh => format!(
                    "找不到服务器“{host}”：查不到这个名字对应的地址。请检查服务器地址有没有写错，或者本机网络的域名解析（DNS）是否正常；也可以直接用服务器的 IP 地址，例如 fq sync --server 10.0.0.5:4433。本机数据没有改动。"
                ),
                Lang::En => format!(
                    "cannot find the server \"{host}\": the name does not resolve to an address. Check that the address is spelled right and that this network's name service (DNS) works, or use the server's IP address, e.g. fq sync --server 10.0.0.5:4433. Nothing on this device was changed."
                ),
            },
        ),
    }
}

/// The words for a failed sync. Every one says whether local data changed. No text from the
/// server or from the network library reaches Chinese output: the server's reasons travel as
/// stable codes ([`ErrorCode`], [`CloseCode`]) and are told here in the user's words; the
/// English particulars stay in English output.
fn sync(e: &SyncError, lang: Lang, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    let unchanged = lang.pick("本机数据没有改动。", "Nothing on this device was changed.");
    let kept = lang.pick(
        "已经同步成功的部分都已保存，下次同步会从断开处继续。",
        "Whatever was synced before the break is kept; the next sync carries on from there.",
    );
    match e {
        SyncError::Unreachable { addr, after } => Problem::failure(
            Kind::ServerUnreachable,
            if zh {
                format!("连不上同步服务器 {addr}（等了 {} 秒没有回应）：请检查网络信号和服务器地址后再试。{unchanged}", after.as_secs())
            } else {
                format!("cannot reach the sync server {addr} (no answer within {} s): check the signal and the address, then try again. {unchanged}", after.as_secs())
            },
        ),
        SyncError::Busy { addr } => Problem::failure(
            Kind::ServerUnreachable,
            if zh {
                format!("同步服务器 {addr} 现在太忙（同时连接的设备已满）或正在重启，拒绝了连接：请过几分钟再同步。{unchanged}")
            } else {
                format!("the sync server {addr} refused the connection: it is too busy (full) or restarting. Sync again in a few minutes. {unchanged}")
            },
        ),
        e if e.is_unreachable() => Problem::failure(
            Kind::ServerUnreachable,
            if zh {
                format!("连不上同步服务器：连接没有建立起来。请检查网络信号和服务器地址后再试。{unchanged}")
            } else {
                format!("cannot reach the sync server: {whole:#}. Check the signal and the address, then try again. {unchanged}")
            },
        ),
        SyncError::Refused { code: Some(CloseCode::Revoked), .. } => Problem::failure(
            Kind::ServerRefused,
            lang.pick(
                "服务器拒绝了本机：本机的证书已被吊销（例如设备挂失后）。请联系县综治中心重新办理证书。",
                "the server refused this device: its certificate has been revoked (e.g. after the device was reported lost). Contact the county centre for a new one.",
            )
            .to_owned(),
        ),
        SyncError::Refused { code: Some(CloseCode::ShuttingDown), .. }
        | SyncError::Server { code: ErrorCode::ShuttingDown, .. } => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("服务器正在关闭维护，请过几分钟再同步。{kept}")
            } else {
                format!("the server is shutting down for maintenance; sync again in a few minutes. {kept}")
            },
        ),
        SyncError::Refused { code: Some(CloseCode::TooManyConnections), .. } => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("同一证书连到服务器的连接太多，服务器关闭了较早的一个：请确认没有别的设备在用本机的证书（证书包不能复制给别人），然后再同步一次。{kept}")
            } else {
                format!("too many connections to the server with this certificate, and it closed an older one: make sure no other device uses this device's certificate (a bundle must not be copied), then sync again. {kept}")
            },
        ),
        SyncError::Connect { source: ConnectError::OutOfScope { server_scope, own_scope, .. }, .. } => Problem::failure(
            Kind::ServerRefused,
            if zh {
                format!(
                    "这台服务器负责 {server_scope}，不负责本机的区域 {own_scope}：村里的设备同步到本乡镇的服务器，县级人员同步到县服务器。请核对服务器地址。{unchanged}"
                )
            } else {
                format!(
                    "that server serves {server_scope}, not this device's area {own_scope}: village devices sync with their township's server, county staff with the county server. Check the address. {unchanged}"
                )
            },
        ),
        SyncError::Connect { addr, source: ConnectError::NotAServer { id, role } } if !role.is_server() => {
            let role = role.person_role().map_or("", |r| lang.label(r));
            Problem::failure(
                Kind::ServerRefused,
                if zh {
                    format!(
                        "{addr} 上的是{role}的设备（证书编号 {id}），不是同步服务器：与同村设备直接同步请用 fq sync --peer {addr}；与乡镇同步请核对服务器地址。{unchanged}"
                    )
                } else {
                    format!(
                        "{addr} is a device ({}, certificate {id}), not a sync server: to sync with a device of the village use fq sync --peer {addr}; to sync with the township check the server's address. {unchanged}",
                        role.to_lowercase()
                    )
                },
            )
        }
        SyncError::Refused { code: Some(CloseCode::WrongPeer), reason } => Problem::failure(
            Kind::ServerRefused,
            if zh {
                format!("服务器不接受本机（本机不属于它负责的区域）：请核对服务器地址，村里的设备同步到本乡镇的服务器。{unchanged}")
            } else {
                format!("the server does not take this device ({reason}): check the address; village devices sync with their township's server. {unchanged}")
            },
        ),
        e if e.is_trust_failure() => Problem::failure(
            Kind::ServerRefused,
            if zh {
                format!(
                    "无法和服务器建立安全连接：服务器的证书不是本县颁发的，或者服务器不接受本机的证书。请核对服务器地址，或联系县综治中心。{unchanged}"
                )
            } else {
                format!(
                    "no secure connection with the server: its certificate is not from this county's CA, or it does not accept this device's certificate ({whole:#}). Check the address, or contact the county centre. {unchanged}"
                )
            },
        ),
        SyncError::Session(SessionError::TimedOut { ms }) => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("服务器 {} 秒没有确认收到，同步中断（网络可能不稳定）。{kept}请稍后再试。", ms / 1000)
            } else {
                format!("the server did not acknowledge for {} s and the sync stopped (the link may be unstable). {kept} Try again later.", ms / 1000)
            },
        ),
        SyncError::Server { code, text } => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("同步中断：{}{kept}", server_code_zh(*code))
            } else {
                format!("the sync stopped: the server ended the session ({}: {text}). {kept}", server_code_en(*code))
            },
        ),
        SyncError::Stalled(after) => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("服务器 {} 秒没有任何回应，同步中断（网络可能断了）。{kept}请稍后再试。", after.as_secs())
            } else {
                format!("the server went silent for {} s and the sync stopped (the link may be down). {kept} Try again later.", after.as_secs())
            },
        ),
        SyncError::Ledger(l) => ledger(l, lang, whole),
        SyncError::Compare(CompareError::Ledger(l)) => ledger(l, lang, whole),
        SyncError::Compare(CompareError::NotSupported(_)) => Problem::failure(
            Kind::CompareUnsupported,
            lang.pick(
                "上级服务器的 fq-server 版本太旧，不支持比对：请先升级上级服务器。双方数据都没有改动。",
                "the parent server's fq-server is too old to answer a comparison: upgrade it first. Nothing was changed on either side.",
            )
            .to_owned(),
        ),
        SyncError::Compare(CompareError::NotParent { claimed, own }) => Problem::failure(
            Kind::NotParent,
            match lang {
                Lang::Zh => format!(
                    "这台服务器（{claimed}）不是本台账（{own}）的上级：设备与本乡镇的服务器比对，乡镇服务器与县服务器比对。双方数据都没有改动。"
                ),
                Lang::En => format!(
                    "that server ({claimed}) is not the parent of this replica ({own}): a device compares with its township's server, a township with the county's. Nothing was changed."
                ),
            },
        ),
        _ => Problem::failure(
            Kind::SyncFailed,
            if zh {
                format!("同步中断：{}{kept}请稍后再试。", sync_cause_zh(e))
            } else {
                format!("the sync stopped: {whole:#}. {kept} Try again later.")
            },
        ),
    }
}

/// The words for a failed device-to-device sync (`fq sync --peer`, `fq serve`).
fn peer(e: &PeerError, lang: Lang, whole: &anyhow::Error) -> Problem {
    match e {
        PeerError::Sync { addr, source } => peer_sync(source, lang, addr, whole),
        PeerError::Served { peer } => Problem::failure(
            Kind::SyncFailed,
            match lang {
                Lang::Zh => format!("与设备 {peer} 的同步没有完成（原因见上）。已经同步成功的部分都已保存。"),
                Lang::En => {
                    format!("the sync with the device {peer} did not complete (see above). What was synced is kept.")
                }
            },
        ),
        PeerError::Listen { addr, source } => Problem::failure(
            Kind::ListenFailed,
            match (lang, source) {
                (Lang::Zh, EndpointError::Bind { .. }) => format!(
                    "无法在 {addr} 上等待连接：这个端口可能已被别的程序占用，或者这不是本机的地址。请换一个端口再试，例如 fq serve --listen 0.0.0.0:4434。本机数据没有改动。"
                ),
                (Lang::Zh, _) => format!(
                    "无法在 {addr} 上等待连接：本机的证书包不能用于设备之间直接同步。请联系县综治中心。本机数据没有改动。"
                ),
                (Lang::En, _) => format!(
                    "cannot wait for devices on {addr}: {whole:#}. If the port is taken, try another, e.g. fq serve --listen 0.0.0.0:4434. Nothing on this device was changed."
                ),
            },
        ),
    }
}

/// The words for a device-to-device sync that failed on the dialing side; `addr` is the
/// address given. Like [`sync`], every one says whether local data changed, and no text from
/// the other device reaches Chinese output.
fn peer_sync(e: &SyncError, lang: Lang, addr: &str, whole: &anyhow::Error) -> Problem {
    let zh = lang == Lang::Zh;
    let unchanged = lang.pick("本机数据没有改动。", "Nothing on this device was changed.");
    let check = lang.pick(
        "请确认两台设备连在同一个无线网或手机热点上，对方已经运行 fq serve，并且地址就是它显示的那个。",
        "Check that both devices are on the same Wi-Fi or phone hotspot, that the other one runs fq serve, and that the address is the one it shows.",
    );
    let refused = |message: String| Problem::failure(Kind::PeerRefused, message);
    match e {
        SyncError::Unreachable { after, .. } => Problem::failure(
            Kind::PeerUnreachable,
            if zh {
                format!("连不上设备 {addr}（等了 {} 秒没有回应）。{check}{unchanged}", after.as_secs())
            } else {
                format!(
                    "cannot reach the device at {addr} (no answer within {} s). {check} {unchanged}",
                    after.as_secs()
                )
            },
        ),
        SyncError::Busy { .. } => Problem::failure(
            Kind::PeerUnreachable,
            if zh {
                format!(
                    "设备 {addr} 拒绝了连接（它可能正在结束 fq serve）：请对方重新运行 fq serve 后再试。{unchanged}"
                )
            } else {
                format!(
                    "the device at {addr} refused the connection (it may be stopping fq serve): ask for fq serve to be run again, then retry. {unchanged}"
                )
            },
        ),
        e if e.is_unreachable() => Problem::failure(
            Kind::PeerUnreachable,
            if zh {
                format!("连不上设备 {addr}：连接没有建立起来。{check}{unchanged}")
            } else {
                format!("cannot reach the device at {addr}: {whole:#}. {check} {unchanged}")
            },
        ),
        SyncError::Connect { source: ConnectError::Peer(mismatch), .. } => refused(match (lang, mismatch) {
            (Lang::Zh, PeerMismatch::NotADevice { id, .. }) => format!(
                "{addr} 上的是同步服务器（{id}），不是同村的设备：与服务器同步请用 fq sync --server {addr}。{unchanged}"
            ),
            (Lang::En, PeerMismatch::NotADevice { id, .. }) => format!(
                "{addr} is a sync server ({id}), not a device of the village: to sync with it use fq sync --server {addr}. {unchanged}"
            ),
            (Lang::Zh, PeerMismatch::NoOverlap { id, peer_scope, own_scope }) => format!(
                "对方设备 {id} 负责 {peer_scope}，与本机负责的 {own_scope} 不重叠：只有同一个村的设备（或负责本村所在乡镇的设备）之间才能直接同步。{unchanged}"
            ),
            (Lang::En, PeerMismatch::NoOverlap { id, peer_scope, own_scope }) => format!(
                "the device {id} covers {peer_scope}, which does not overlap this device's {own_scope}: only devices of one village (or of the township around it) sync directly. {unchanged}"
            ),
            (Lang::Zh, PeerMismatch::SameDevice { id }) => format!(
                "{addr} 上用的是本机自己的证书（{id}）：请写另一台设备运行 fq serve 时显示的地址；如果那台设备用的是复制来的证书包，请联系县综治中心。{unchanged}"
            ),
            (Lang::En, PeerMismatch::SameDevice { id }) => format!(
                "{addr} presents this device's own certificate ({id}): give the address another device's fq serve shows; if that device uses a copy of this bundle, contact the county centre. {unchanged}"
            ),
            (Lang::Zh, _) => format!("对方设备不能与本机直接同步。{unchanged}"),
            (Lang::En, _) => format!("the device at {addr} cannot sync with this one: {whole:#}. {unchanged}"),
        }),
        SyncError::Connect { source: ConnectError::Revoked { id, .. }, .. } => refused(if zh {
            format!("对方设备 {id} 的证书已被县里吊销（例如手机挂失），不能与它同步。{unchanged}")
        } else {
            format!(
                "the certificate of the device {id} has been revoked by the county (e.g. a lost phone): do not sync with it. {unchanged}"
            )
        }),
        SyncError::Refused { code: Some(CloseCode::Revoked), .. } => refused(if zh {
            format!(
                "对方设备拒绝了本机：本机的证书已被吊销（例如设备挂失后）。请联系县综治中心重新办理证书。{unchanged}"
            )
        } else {
            format!(
                "the other device refused this one: this device's certificate has been revoked (e.g. after it was reported lost). Contact the county centre for a new one. {unchanged}"
            )
        }),
        SyncError::Refused { code: Some(CloseCode::WrongPeer), .. } => refused(if zh {
            format!("对方设备不接受本机：两台设备负责的区域不重叠（不是同一个村的设备）。{unchanged}")
        } else {
            format!(
                "the other device does not take this one: the areas the two cover do not overlap (not devices of one village). {unchanged}"
            )
        }),
        e if e.is_trust_failure() => refused(if zh {
            format!(
                "无法和设备 {addr} 建立安全连接：对方的证书不是本县颁发的，或者对方不接受本机的证书。只有本县登记过的设备之间才能直接同步。{unchanged}"
            )
        } else {
            format!(
                "no secure connection with the device at {addr}: its certificate is not from this county's CA, or it does not accept this device's ({whole:#}). Only devices enrolled in this county sync directly. {unchanged}"
            )
        }),
        SyncError::Ledger(l) => ledger(l, lang, whole),
        other => {
            let mut problem = peer_failure(other, lang);
            if lang == Lang::En {
                problem.message = format!("{} ({whole:#})", problem.message);
            }
            problem
        }
    }
}

/// The words for a device-to-device session that broke off, on either side: what was
/// acknowledged before is kept.
pub(crate) fn peer_failure(e: &SyncError, lang: Lang) -> Problem {
    let zh = lang == Lang::Zh;
    let kept = lang.pick(
        "已经同步成功的部分都已保存，下次同步会从断开处继续。",
        "Whatever was synced before the break is kept; the next sync carries on from there.",
    );
    let message = match e {
        SyncError::Refused { code: Some(CloseCode::ShuttingDown), .. }
        | SyncError::Server { code: ErrorCode::ShuttingDown, .. } => {
            if zh {
                format!("对方结束了等待（fq serve 已停止），同步中断。{kept}")
            } else {
                format!("the other device stopped fq serve and the sync stopped. {kept}")
            }
        }
        SyncError::Session(SessionError::TimedOut { ms }) => {
            if zh {
                format!("对方设备 {} 秒没有确认收到，同步中断（两台设备可能离得太远）。{kept}", ms / 1000)
            } else {
                format!(
                    "the other device did not acknowledge for {} s and the sync stopped (the devices may be too far apart). {kept}",
                    ms / 1000
                )
            }
        }
        SyncError::Stalled(after) => {
            if zh {
                format!(
                    "对方设备 {} 秒没有任何回应，同步中断（两台设备可能离得太远，或网络断了）。{kept}",
                    after.as_secs()
                )
            } else {
                format!(
                    "the other device went silent for {} s and the sync stopped (the devices may be too far apart, or the network is down). {kept}",
                    after.as_secs()
                )
            }
        }
        SyncError::Server { code, .. } => {
            let why = match (lang, code) {
                (Lang::Zh, ErrorCode::Unauthorized) => "对方设备认为两台设备的区域不符，不与本机同步。",
                (Lang::En, ErrorCode::Unauthorized) => {
                    "the other device finds the two areas do not fit and will not sync."
                }
                (Lang::Zh, ErrorCode::BadFrame | ErrorCode::UnsupportedVersion) => {
                    "两台设备的 fq 版本不兼容，请都更新到最新版本。"
                }
                (Lang::En, ErrorCode::BadFrame | ErrorCode::UnsupportedVersion) => {
                    "the two devices' fq versions do not fit: update both."
                }
                (Lang::Zh, ErrorCode::Internal) => "对方设备内部出错（例如无法保存）。",
                (Lang::En, ErrorCode::Internal) => "the other device failed inside (e.g. it could not save).",
                (Lang::Zh, _) => "对方设备结束了同步。",
                (Lang::En, _) => "the other device ended the sync.",
            };
            if zh { format!("同步中断：{why}{kept}") } else { format!("the sync stopped: {why} {kept}") }
        }
        SyncError::Ledger(_) => {
            if zh {
                format!("本机台账读写出错，同步中断。{kept}")
            } else {
                format!("this device's ledger failed and the sync stopped. {kept}")
            }
        }
        _ => {
            let why = match e {
                SyncError::Lost(_) | SyncError::Refused { .. } => lang.pick("连接断开了", "the connection was lost"),
                SyncError::Session(_) => {
                    lang.pick("对方发来的数据有误，本机结束了同步", "the other device sent something this one refuses")
                }
                SyncError::Endpoint(_) => lang.pick("本机的网络无法使用", "this device's network cannot be used"),
                _ => lang.pick("连接出了问题", "the link failed"),
            };
            if zh { format!("同步中断：{why}。{kept}") } else { format!("the sync stopped: {why}. {kept}") }
        }
    };
    Problem::failure(Kind::SyncFailed, message)
}

/// Why `fq serve` refused a connection: a stable code (for `--json`) and words.
pub(crate) fn accept_words(e: &AcceptError, lang: Lang) -> (&'static str, String) {
    let zh = lang == Lang::Zh;
    match e {
        AcceptError::Revoked { id, .. } => (
            "revoked",
            if zh {
                format!("设备 {id} 的证书已被县里吊销，不与它同步。")
            } else {
                format!("the certificate of the device {id} is revoked; no sync with it.")
            },
        ),
        AcceptError::Peer(PeerMismatch::NotADevice { id, .. }) => (
            "not-a-device",
            if zh {
                format!("{id} 是服务器，不是同村的设备。")
            } else {
                format!("{id} is a server, not a device of the village.")
            },
        ),
        AcceptError::Peer(PeerMismatch::NoOverlap { id, peer_scope, own_scope }) => (
            "other-area",
            if zh {
                format!("设备 {id} 负责 {peer_scope}，与本机负责的 {own_scope} 不重叠（不是同一个村的设备）。")
            } else {
                format!("the device {id} covers {peer_scope}, which does not overlap this device's {own_scope} (not a device of this village).")
            },
        ),
        AcceptError::Peer(PeerMismatch::SameDevice { id }) => (
            "same-device",
            if zh {
                format!("对方用的是本机自己的证书（{id}）；如果那是复制来的证书包，请联系县综治中心。")
            } else {
                format!("it presents this device's own certificate ({id}); if that is a copied bundle, contact the county centre.")
            },
        ),
        AcceptError::Handshake(ConnectionError::TimedOut) => (
            "handshake",
            lang.pick("对方没有完成连接（超时）。", "the other side did not complete the connection (timed out).").to_owned(),
        ),
        AcceptError::Handshake(_) | AcceptError::NoCertificate => (
            "handshake",
            lang.pick(
                "没有建立起安全连接：对方的证书不是本县颁发的，或者对方把本机当成了服务器（用 fq sync --server 连过来的）。",
                "no secure connection: its certificate is not from this county's CA, or it took this device for a server (it dialed with fq sync --server).",
            )
            .to_owned(),
        ),
        AcceptError::OutsideCounty { scope, .. } => (
            "other-area",
            if zh { format!("对方负责 {scope}，不在本县。") } else { format!("it covers {scope}, outside this county.") },
        ),
        _ => (
            "bad-identity",
            lang.pick("对方的证书中没有有效的身份。", "its certificate names no valid identity.").to_owned(),
        ),
    }
}

/// What the server meant by an error code, in Chinese, with what to do.
fn server_code_zh(code: ErrorCode) -> String {
    match code {
        ErrorCode::BadFrame => {
            "服务器读不懂本机发去的数据（数据格式错误）。请把 fq 更新到最新版本；如果还不行，请联系县综治中心。"
                .to_owned()
        }
        ErrorCode::UnsupportedVersion => "本机的 fq 与服务器的版本不兼容，请把 fq 更新到最新版本。".to_owned(),
        ErrorCode::Unauthorized => {
            "服务器认为本机无权同步这些数据（证书与本机的区域不符）。请联系县综治中心核对证书。".to_owned()
        }
        ErrorCode::TooLarge => {
            "本机一次发去的数据超出了服务器的限制。请再同步一次；如果反复出现，请联系县综治中心。".to_owned()
        }
        ErrorCode::Internal => "服务器内部出错（例如无法保存）。请稍后再同步。".to_owned(),
        ErrorCode::ShuttingDown => "服务器正在关闭维护，请过几分钟再同步。".to_owned(),
        ErrorCode::Busy => "服务器现在太忙，请过几分钟再同步。".to_owned(),
        ErrorCode::Other(n) => {
            format!("服务器结束了同步（代码 {n}）。请稍后再同步；如果反复出现，请把 fq 更新到最新版本。")
        }
    }
}

/// The stable name of an error code, for English output.
fn server_code_en(code: ErrorCode) -> String {
    match code {
        ErrorCode::BadFrame => "bad-frame".to_owned(),
        ErrorCode::UnsupportedVersion => "unsupported-version".to_owned(),
        ErrorCode::Unauthorized => "unauthorized".to_owned(),
        ErrorCode::TooLarge => "too-large".to_owned(),
        ErrorCode::Internal => "internal".to_owned(),
        ErrorCode::ShuttingDown => "shutting-down".to_owned(),
        ErrorCode::Busy => "busy".to_owned(),
        ErrorCode::Other(n) => format!("code {n}"),
    }
}

/// Why a sync stopped, in Chinese, for the failures that have no sentence of their own.
fn sync_cause_zh(e: &SyncError) -> String {
    match e {
        SyncError::Lost(_) => "与服务器的连接断开了（自动重连一次也没有成功）。".to_owned(),
        SyncError::Refused { code: Some(code), .. } => format!("服务器关闭了连接（代码 {}）。", code.code()),
        SyncError::Refused { code: None, .. } => "服务器关闭了连接。".to_owned(),
        SyncError::Session(_) => "服务器发来的数据有误，本机结束了同步。".to_owned(),
        SyncError::Endpoint(_) => "本机的网络无法使用。".to_owned(),
        _ => "连接出了问题（用 --lang en 可以看到英文的详细原因）。".to_owned(),
    }
}

/// The words for a conflict `fq audit resolve` cannot settle.
fn resolve(e: &ResolveError, lang: Lang) -> Problem {
    match e {
        ResolveError::UnknownField(field) => Problem::user(
            Kind::UnknownField,
            match lang {
                Lang::Zh => format!(
                    "没有“{field}”这个字段。可以解决冲突的字段：title（标题）、category（类别）、risk（风险）、grid（网格）、responsible（责任人）、description（案情描述）、agreement（调解协议）、status（办理状态）、parties[序号].name/id_number/phone（当事人，序号从0开始）。"
                ),
                Lang::En => format!(
                    "there is no field \"{field}\". Fields that can be resolved: title, category, risk, grid, responsible, description, agreement, status, parties[N].name/id_number/phone (N from 0)."
                ),
            },
        ),
        ResolveError::NoConflict { field, number } => Problem::user(
            Kind::NoConflict,
            match lang {
                Lang::Zh => format!(
                    "案件 {number} 的{}没有未解决的冲突，不需要解决：先运行 fq audit conflicts --case {number} 查看；要改内容请用 fq case edit。",
                    crate::audit::field_label(lang, field)
                ),
                Lang::En => format!(
                    "case {number} has no open conflict on {field}: see fq audit conflicts --case {number}; to change it anyway use fq case edit."
                ),
            },
        ),
        ResolveError::NotASide { value, choices } => Problem::user(
            Kind::InvalidInput,
            match lang {
                Lang::Zh => format!("“{value}”不是相互矛盾的办理事件之一，可以选：{}。", choices.join("、")),
                Lang::En => format!("\"{value}\" is not one of the conflicting events; choose one of: {}.", choices.join(", ")),
            },
        ),
        ResolveError::ServerReplica => Problem::user(
            Kind::ServerReplica,
            lang.pick(
                "这是服务器的台账，服务器只转发、不写入：请在本人的设备或县级管理员的台账上解决冲突，再同步。",
                "this is a server's replica; servers relay and never write: resolve it on your own device or admin replica, then sync.",
            )
            .to_owned(),
        ),
        _ => Problem::user(Kind::InvalidInput, e.to_string()),
    }
}

/// The words for bad input.
pub(crate) fn input(e: &InputError, lang: Lang) -> Problem {
    let zh = lang == Lang::Zh;
    let (kind, message) = match e {
        InputError::AdminCode { input, reason } => (
            Kind::InvalidDivisionCode,
            if zh {
                format!(
                    "行政区划代码“{input}”不正确：{}。区划代码是6位（县）、9位（乡镇）或12位（村/社区）数字，请核对后重新输入。",
                    code_reason_zh(reason)
                )
            } else {
                format!(
                    "division code \"{input}\" is not valid: {reason}. A division code has 6 (county), 9 (township) \
                     or 12 (village/community) digits; please check it and enter it again."
                )
            },
        ),
        InputError::IdNumber { input, reason } => (
            Kind::InvalidIdNumber,
            if zh {
                format!("身份证号码“{input}”不正确：{}，请核对后重新输入。", id_reason_zh(reason))
            } else {
                format!(
                    "ID number \"{input}\" is not valid: {}; please check it and enter it again.",
                    id_reason_en(reason)
                )
            },
        ),
        InputError::Phone { input, reason } => (
            Kind::InvalidPhone,
            if zh {
                format!(
                    "电话号码“{input}”不正确：{}。手机号是11位、以13到19开头；座机要带区号，例如 0872-1234567。请核对后重新输入。",
                    phone_reason_zh(reason)
                )
            } else {
                format!(
                    "phone number \"{input}\" is not valid: {reason}. A mobile number has 11 digits starting with 13 to 19; \
                     a landline needs its area code, e.g. 0872-1234567. Please check it and enter it again."
                )
            },
        ),
        InputError::UnsafeText { what, position, character } => (
            Kind::UnsafeText,
            if zh {
                format!(
                    "{}的第{position}个字符（{}）是不可见的控制字符或换行，可能是从别处复制来的，不能保存：请删掉它后重新输入。",
                    field_words_zh(what),
                    fq_core::text::codepoint(*character)
                )
            } else {
                format!(
                    "the {what} cannot be saved: character {position} ({}) is an invisible control character or a line break, \
                     perhaps copied from elsewhere. Delete it and enter the text again.",
                    fq_core::text::codepoint(*character)
                )
            },
        ),
        InputError::PartyPart { input, part } => (
            Kind::InvalidParty,
            if zh {
                format!(
                    "当事人“{input}”中的“{part}”既不是身份证号（18位，或旧的15位），也不是电话号码（11位手机号，或带区号的座机号）。\
                     请核对；也可以写明是哪一项，例如 --party \"name=李四,id=532924198001011230,phone=13800000000\"。"
                )
            } else {
                format!(
                    "in party \"{input}\", \"{part}\" is neither an ID number (18 characters, or 15 on an old card) nor a phone \
                     number (an 11-digit mobile, or a landline with its area code). Check it; you can also say which is which, \
                     e.g. --party \"name=Li Si,id=532924198001011230,phone=13800000000\"."
                )
            },
        ),
        InputError::Category { input } => (
            Kind::UnknownCategory,
            if zh {
                format!(
                    "没有“{input}”这个纠纷类别。可以填写的类别（代码或中文名都可以）：{}。",
                    choices(lang, Category::ALL)
                )
            } else {
                format!(
                    "unknown category \"{input}\". Use one of these codes (or labels): {}.",
                    choices(lang, Category::ALL)
                )
            },
        ),
        InputError::Vocabulary { what, input } => (Kind::UnknownValue, vocabulary(lang, what, input)),
        InputError::Party { input, reason } => (
            Kind::InvalidParty,
            if zh {
                format!(
                    "当事人“{input}”写法不对：{}。格式是“姓名,身份证号,电话”，身份证号和电话可以不填，例如 --party \"李四,532924198001011230,13800000000\"。",
                    party_reason_zh(reason)
                )
            } else {
                format!(
                    "party \"{input}\" is not written correctly: {reason}. Write \"NAME,ID_NUMBER,PHONE\"; the ID number \
                     and phone may be left out, e.g. --party \"Li Si,532924198001011230,13800000000\"."
                )
            },
        ),
        InputError::Text { what, reason } => (Kind::InvalidText, text(lang, what, reason)),
        InputError::CaseRef { input } => (
            Kind::InvalidCaseReference,
            if zh {
                format!("案件编号“{input}”不对：请填写案件编号（如 532924101201-2026-d07a-0001）或它的开头几位。")
            } else {
                format!(
                    "case reference \"{input}\" is not valid: give a case number (e.g. 532924101201-2026-d07a-0001) or its first characters."
                )
            },
        ),
        other => (
            Kind::InvalidInput,
            if zh {
                format!("输入不正确：{other}。请核对后重新输入。")
            } else {
                format!("invalid input: {other}; please check it and enter it again.")
            },
        ),
    };
    Problem::user(kind, message)
}

fn code_reason_zh(reason: &str) -> &str {
    match reason {
        "it is empty" => "没有填写",
        "it must contain only digits" => "只能包含数字",
        "it must have 6 (county), 9 (township) or 12 (village) digits" => "位数不对",
        "the first two digits are not a province" => "前两位不是省份代码",
        "the county part (digits 5-6) is 00" => "县的部分（第5-6位）是00",
        "the township part (digits 7-9) is 000" => "乡镇的部分（第7-9位）是000",
        "the village part (digits 10-12) is 000" => "村的部分（第10-12位）是000",
        "this role works in one village: give a 12-digit village code" => {
            "这个角色在一个村工作，请填写12位的村（社区）代码"
        }
        "this role works in a township: give a 9-digit township code" => "这个角色在乡镇工作，请填写9位的乡镇代码",
        "this role works for the county: give a 6-digit county code" => "这个角色在县里工作，请填写6位的县代码",
        "your area is not a village: say which village the case is in (--village)" => {
            "您的区域不是一个村，请用 --village 写明案件所在的村（12位代码）"
        }
        "a case belongs to a 12-digit village code" => "案件要登记到一个村，请填写12位的村（社区）代码",
        other => other,
    }
}

fn phone_reason_zh(reason: &str) -> &str {
    match reason {
        "it must contain only digits" => "只能包含数字",
        "a mobile number has 11 digits and starts with 13 to 19" => "手机号应为11位，以13到19开头",
        "a landline needs its area code, e.g. 0872-1234567" => "座机号要带区号",
        "a landline is its area code and 7 or 8 digits, e.g. 0872-1234567" => "座机号是区号加7位或8位号码",
        other => other,
    }
}

fn id_reason_zh(reason: &str) -> &str {
    match reason {
        "it must have 18 characters (or 15 for an old card)" => "应为18位（旧身份证为15位）",
        "the old 15-character number has only digits" => "旧的15位身份证号只能是数字",
        "the first 17 characters must be digits" => "前17位必须是数字",
        "the last character does not match the checksum" => "最后一位校验码不对",
        "the birth date inside it is not a real date" => "其中的出生日期不是真实的日期",
        other => other,
    }
}

fn id_reason_en(reason: &str) -> &str {
    match reason {
        "the last character does not match the checksum" => "the check digit at the end does not match",
        other => other,
    }
}

fn party_reason_zh(reason: &str) -> &str {
    match reason {
        "use at most NAME,ID_NUMBER,PHONE" => "最多只能写姓名、身份证号、电话三项",
        "the name is empty or too long" => "姓名没有填写或太长（最多50个字）",
        "two ID numbers given" => "写了两个身份证号",
        "two phone numbers given" => "写了两个电话号码",
        other => other,
    }
}

fn vocabulary(lang: Lang, what: &str, input: &str) -> String {
    let (zh_what, valid) = match what {
        "risk" => ("风险等级", choices(lang, Risk::ALL)),
        "level" => ("办理级别", choices(lang, Level::ALL)),
        "status" => ("案件状态", choices(lang, Status::ALL)),
        "event kind" => ("事件类型", choices(lang, EventKind::ALL)),
        "role" => ("角色", choices(lang, Role::ALL)),
        "outcome" => ("回访结果", choices(lang, Outcome::ALL)),
        "replica id" => ("副本编号", String::new()),
        "device id" => ("设备编号", String::new()),
        "risk flag" => ("风险标记", choices(lang, fq_core::case::RiskFlag::ALL)),
        "staff id" => ("人员编号", String::new()),
        "month" => ("月份", lang.pick("例如 2026-10", "e.g. 2026-10").to_owned()),
        _ => ("值", String::new()),
    };
    match (lang, valid.is_empty()) {
        (Lang::Zh, false) => format!("{zh_what}“{input}”不对。可以填写：{valid}。"),
        (Lang::Zh, true) => format!("{zh_what}“{input}”不对，请核对后重新输入。"),
        (Lang::En, false) => format!("unknown {what} \"{input}\". Use one of: {valid}."),
        (Lang::En, true) => format!("invalid {what} \"{input}\"; please check it and enter it again."),
    }
}

/// The Chinese name of a text field the core names in English.
fn field_words_zh(what: &str) -> &'static str {
    match what {
        "title" => "标题",
        "description" => "案情描述",
        "note" => "记录内容",
        "assignee" => "责任人姓名",
        "reason" => "理由",
        "agreement" => "调解协议内容",
        "court" => "法院名称",
        "reference" => "文书编号",
        "name" => "姓名",
        "party name" => "当事人姓名",
        "parties" => "当事人",
        "edit" => "修改内容",
        _ => "内容",
    }
}

fn text(lang: Lang, what: &str, reason: &str) -> String {
    let zh_what = field_words_zh(what);
    match (lang, reason) {
        (Lang::Zh, "it is empty") => format!("{zh_what}不能为空，请填写后重新输入。"),
        (Lang::Zh, "it is too long") => format!("{zh_what}太长了，请精简后重新输入。"),
        (Lang::Zh, "too many parties") => "当事人太多了（一件案件最多64人），请核对。".to_owned(),
        (Lang::Zh, "nothing to change was given") => {
            "没有要修改的内容：请用 --title、--description、--category、--risk、--grid 或 --add-party 写明要改什么。"
                .to_owned()
        }
        (Lang::Zh, other) => format!("{zh_what}不正确：{other}。"),
        (Lang::En, "it is empty") => format!("the {what} is empty; please fill it in."),
        (Lang::En, "it is too long") => format!("the {what} is too long; please shorten it."),
        (Lang::En, "too many parties") => "too many parties (at most 64 on one case); please check.".to_owned(),
        (Lang::En, "nothing to change was given") => {
            "nothing to change was given: say what to change with --title, --description, --category, --risk, \
             --grid or --add-party."
                .to_owned()
        }
        (Lang::En, other) => format!("invalid {what}: {other}."),
    }
}

/// "Cannot settle case X: it is 已归档" with what to do about it.
fn transition(lang: Lang, action: &str, number: &str, status: &str) -> String {
    let zh = lang == Lang::Zh;
    let status_words = match Status::parse(status) {
        Ok(s) => lang.label(s).to_owned(),
        Err(_) if status.starts_with("already at the county") => lang
            .pick("已在县级办理，不能再往上报（矛盾不上交）", "already handled by the county, the top level")
            .to_owned(),
        Err(_) => status.to_owned(),
    };
    let (zh_action, hint_zh, hint_en) = match action {
        "add a note to" => ("添加调解记录", "已归档的案件不能再修改", "an archived case cannot be changed"),
        "assign" => ("指派责任人", "已归档的案件不能再修改", "an archived case cannot be changed"),
        "edit" => ("修改", "已归档的案件不能再修改", "an archived case cannot be changed"),
        "escalate" => (
            "上报",
            "只有已受理、调解中或调解失败的案件才能上报",
            "only a recorded, mediating or failed case can be escalated",
        ),
        "accept" => (
            "接收",
            "只有上报到您这一级、正在等待接收的案件才能接收",
            "only a case escalated to your level and waiting there can be accepted",
        ),
        "settle" => (
            "登记调解成功",
            "只有正在办理的案件（已受理、调解中、已上报）才能登记调解成功",
            "only an open case (recorded, mediating, escalated) can be settled",
        ),
        "fail" => (
            "登记调解失败",
            "只有正在办理的案件（已受理、调解中、已上报）才能登记调解失败",
            "only an open case (recorded, mediating, escalated) can be marked failed",
        ),
        "confirm" => (
            "登记司法确认",
            "只有调解成功的案件才能登记司法确认",
            "only a settled case can get a judicial confirmation",
        ),
        "follow up" => ("登记回访", "只有调解成功的案件才能回访", "only a settled case can be followed up"),
        "archive" => ("归档", "只有调解成功或调解失败的案件才能归档", "only a settled or failed case can be archived"),
        "supervise" => ("督办", "已归档的案件不能督办", "an archived case cannot be supervised"),
        "waive follow-ups of" => ("免予回访", "只有调解成功的案件才有回访", "only a settled case has follow-up visits"),
        _ => ("办理", "请先运行 fq case show 查看案件情况", "run fq case show to see where the case stands"),
    };
    if zh {
        format!("案件 {number} 现在的状态是“{status_words}”，不能{zh_action}：{hint_zh}。")
    } else {
        format!("cannot {action} case {number}: it is {status_words}; {hint_en}.")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fq_core::case::{AdminCode, IdNumber, Party};

    fn zh_en(e: InputError) -> (Problem, Problem) {
        (input(&e, Lang::Zh), input(&e, Lang::En))
    }

    #[test]
    fn input_bad_checksum_names_number_and_fix() {
        let (zh, en) = zh_en(IdNumber::parse("532924198001011231").unwrap_err());
        assert_eq!(zh.message, "身份证号码“532924198001011231”不正确：最后一位校验码不对，请核对后重新输入。");
        assert_eq!(
            en.message,
            "ID number \"532924198001011231\" is not valid: the check digit at the end does not match; please check it and enter it again."
        );
        assert_eq!((zh.kind, zh.exit), (Kind::InvalidIdNumber, EXIT_USAGE));
    }

    #[test]
    fn input_every_core_reason_is_translated() {
        let codes = ["", "53292", "53292a", "002924", "532900", "532924000", "532924101000"];
        for c in codes {
            let e = AdminCode::parse(c).unwrap_err();
            let InputError::AdminCode { reason, .. } = &e else { panic!("{e}") };
            assert_ne!(code_reason_zh(reason), *reason, "untranslated: {reason}");
        }
        for id in ["1", "53292419800101123a", "532924198001011231", "532924198013011238"] {
            let e = IdNumber::parse(id).unwrap_err();
            let InputError::IdNumber { reason, .. } = &e else { panic!("{e}") };
            assert_ne!(id_reason_zh(reason), *reason, "untranslated: {reason}");
        }
        for p in [",1", "a,b,c,d", "a,13800000000,13900000000"] {
            let e = Party::parse(p).unwrap_err();
            let InputError::Party { reason, .. } = &e else { panic!("{e}") };
            assert_ne!(party_reason_zh(reason), *reason, "untranslated: {reason}");
        }
    }

    #[test]
    fn input_unknown_category_lists_every_label() {
        let (zh, _) = zh_en(Category::parse("ufo").unwrap_err());
        assert!(zh.message.contains("“ufo”"));
        for c in Category::ALL {
            assert!(zh.message.contains(c.zh()), "{} missing", c.zh());
        }
    }

    #[test]
    fn transition_says_current_status_in_words() {
        let zh = transition(Lang::Zh, "archive", "n-1", "mediating");
        assert!(zh.contains("调解中") && zh.contains("不能归档"), "{zh}");
        let en = transition(Lang::En, "follow up", "n-1", "recorded");
        assert!(en.contains("it is Recorded"), "{en}");
    }

    #[test]
    fn describe_finds_ledger_error_under_context() {
        let err = anyhow::Error::from(LedgerError::NotInitialized).context("opening /x/ledger.db");
        let p = describe(&err, Lang::Zh);
        assert_eq!((p.kind, p.exit), (Kind::NotInitialized, EXIT_USAGE));
        assert!(p.message.contains("先运行 fq init"));
    }

    #[test]
    fn kind_list_matches_error_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/error.v1.schema.json")))
                .unwrap();
        let listed = &schema["properties"]["error"]["properties"]["kind"]["enum"];
        let ours = serde_json::to_value(Kind::ALL).unwrap();
        assert_eq!(listed, &ours);
    }

    #[test]
    fn sync_unreachable_is_a_failure_that_says_nothing_changed() {
        let addr = "10.0.0.5:4433".parse().unwrap();
        let err = anyhow::Error::from(SyncError::Unreachable { addr, after: std::time::Duration::from_secs(15) });
        let p = describe(&err, Lang::Zh);
        assert_eq!((p.kind, p.exit), (Kind::ServerUnreachable, EXIT_FAILURE));
        assert!(
            p.message.contains("连不上同步服务器 10.0.0.5:4433") && p.message.contains("本机数据没有改动"),
            "{}",
            p.message
        );
        let err = anyhow::Error::from(EnrollError::NotEnrolled { dir: "/x".into() });
        let p = describe(&err, Lang::Zh);
        assert_eq!((p.kind, p.exit), (Kind::NotEnrolled, EXIT_USAGE));
        assert!(p.message.contains("先用 fq enroll --bundle 登记本机"));
    }

    #[test]
    fn sync_words_never_show_the_servers_text_in_chinese() {
        let codes = [
            ErrorCode::BadFrame,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Unauthorized,
            ErrorCode::TooLarge,
            ErrorCode::Internal,
            ErrorCode::ShuttingDown,
            ErrorCode::Busy,
            ErrorCode::Other(99),
        ];
        let english = |text: &str| text.split(|c: char| !c.is_ascii_alphabetic()).any(|w| w.len() >= 3 && w != "fq");
        for code in codes {
            let err = anyhow::Error::from(SyncError::Server { code, text: "the server could not save".into() });
            let zh = describe(&err, Lang::Zh);
            assert!(!english(&zh.message), "English in {code:?}: {}", zh.message);
            if code != ErrorCode::ShuttingDown {
                // English output keeps the server's own words for the operator.
                let en = describe(&err, Lang::En);
                assert!(en.message.contains("the server could not save"), "{}", en.message);
            }
        }
        let lost = [
            SyncError::Lost("reset by peer".into()),
            SyncError::Refused { code: None, reason: "goodbye".into() },
            SyncError::Refused { code: Some(CloseCode::TooManyConnections), reason: "too many".into() },
            SyncError::Busy { addr: "10.0.0.5:4433".parse().unwrap() },
            SyncError::Stalled(std::time::Duration::from_secs(60)),
        ];
        for e in lost {
            let zh = describe(&anyhow::Error::from(e), Lang::Zh);
            assert!(!english(&zh.message), "English in {}", zh.message);
        }
    }

    #[test]
    fn vault_wrong_passphrase_warns_before_the_last_tries() {
        let wrong = |left: u32| {
            let e = VaultError::WrongPassphrase { failed: 10 - left, tries_left: Some(left) };
            describe(&anyhow::Error::from(e).context("opening /x/ledger.db"), Lang::Zh)
        };
        assert!(wrong(5).message.contains("还能再试 5 次"), "{}", wrong(5).message);
        assert!(wrong(3).message.contains("警告：再输错 3 次"), "{}", wrong(3).message);
        assert_eq!((wrong(1).kind, wrong(1).exit), (Kind::WrongPassphrase, EXIT_USAGE));
        let erased = describe(&anyhow::Error::from(VaultError::Erased { failed: 10 }), Lang::Zh);
        assert_eq!((erased.kind, erased.exit), (Kind::KeyErased, EXIT_USAGE));
        assert!(
            erased.message.contains("fq init --bundle") && erased.message.contains("fq sync"),
            "{}",
            erased.message
        );
        let none = describe(&anyhow::Error::from(PinError::NoPassphrase), Lang::Zh);
        assert_eq!((none.kind, none.exit), (Kind::NoPassphrase, EXIT_USAGE));
    }

    #[test]
    fn report_broken_pipe_exits_zero() {
        let err = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing the list");
        assert_eq!(report(&err, Lang::En, false), 0);
    }
}
