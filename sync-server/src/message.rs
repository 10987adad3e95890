//! Every error of `fq-server` in words an operator can act on, with its exit code.
//!
//! The one place (like `fq`'s `message`) where errors become text: each error the binary can
//! meet gets a sentence in Chinese and in English that names what failed (quoting the input or
//! the file) and says what to do. A cause this module has no words for (a library's or the
//! operating system's text) is never shown inside Chinese: the Chinese sentence points to
//! `--lang en`, which shows the whole chain.

use std::ffi::OsString;
use std::io::{self, Write};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use fq_core::case::InputError;
use fq_core::lang::Lang;
use fq_core::ledger::LedgerError;
use fq_core::policy::PolicyError;
use fq_core::store::StoreError;
use fq_core::trust::GrantError;
use fq_core::vault::VaultError;
use fq_sync_server::ca::{
    BundleError, GrantRole, InitError, IssueError, OpenError, PolicyIssueError, RevocationError, RevokeError,
};
use fq_sync_server::config::ConfigError;
use fq_sync_server::journal::InstallError;
use fq_sync_server::net::EndpointError;
use fq_sync_server::server::{EncryptionProblem, ServeError};

use crate::BadInput;

/// Exit code of a failure that is not the operator's to fix.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code of bad usage or bad input.
pub(crate) const EXIT_USAGE: u8 = 2;

/// Prints a clap error (a usage mistake, or `--help`/`--version`) and returns the exit code:
/// 0 for help and version, 2 for every usage error. In Chinese the mistake is told in Chinese
/// from clap's own facts (which argument, which value, what was expected), never in clap's
/// English words.
pub(crate) fn report_usage(err: &clap::Error, args: &[OsString]) -> u8 {
    let lang = Lang::from_args(args);
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = write!(io::stdout().lock(), "{}", crate::cli::localize_help(&err.render().to_string(), lang));
        return 0;
    }
    let mut out = io::stderr().lock();
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        if lang == Lang::Zh {
            let _ =
                writeln!(out, "缺少要做的事：请写明命令，例如 fq-server run、fq-server status 或 fq-server ca init。");
        }
        let _ = write!(out, "{}", crate::cli::localize_help(&err.render().to_string(), lang));
        return EXIT_USAGE;
    }
    let _ = match lang {
        Lang::Zh => writeln!(out, "{}", fq_core::text::escape(&usage_zh(err))),
        Lang::En => write!(out, "{}", err.render()),
    };
    EXIT_USAGE
}

/// A usage mistake in Chinese, from clap's context.
fn usage_zh(err: &clap::Error) -> String {
    let get = |kind| err.get(kind).map(context_text).unwrap_or_default();
    // clap names an argument with its value's placeholder (`--tier <TIER>`): the name is enough.
    let arg = without_placeholders(&get(ContextKind::InvalidArg));
    let value = get(ContextKind::InvalidValue);
    let valid = get(ContextKind::ValidValue);
    let suggested = [ContextKind::SuggestedArg, ContextKind::SuggestedSubcommand, ContextKind::SuggestedValue]
        .into_iter()
        .map(get)
        .find(|s| !s.is_empty())
        .map(|s| format!("您是不是要写 {s}？"))
        .unwrap_or_default();
    let what = match err.kind() {
        ErrorKind::InvalidValue if value.is_empty() => format!("参数 {arg} 缺少值。"),
        ErrorKind::InvalidValue => {
            let choices = if valid.is_empty() { String::new() } else { format!("可以写：{valid}。") };
            format!("参数 {arg} 的值“{value}”不对。{choices}")
        }
        ErrorKind::UnknownArgument => format!("没有参数“{arg}”。{suggested}"),
        ErrorKind::InvalidSubcommand => {
            let sub = get(ContextKind::InvalidSubcommand);
            let choices = if valid.is_empty() { String::new() } else { format!("可用的命令：{valid}。") };
            format!("没有“{sub}”这个命令。{suggested}{choices}")
        }
        ErrorKind::MissingRequiredArgument => format!("缺少必填的参数：{arg}。"),
        ErrorKind::MissingSubcommand => "缺少命令：请写明要做什么。".to_owned(),
        ErrorKind::ArgumentConflict => {
            format!("参数 {arg} 不能和 {} 一起使用。", without_placeholders(&get(ContextKind::PriorArg)))
        }
        ErrorKind::TooManyValues | ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues => {
            format!("参数 {arg} 的值的个数不对。")
        }
        ErrorKind::NoEquals => format!("参数 {arg} 的值要用等号写，例如 {arg}=值。"),
        ErrorKind::ValueValidation => format!("参数 {arg} 的值“{value}”不对。"),
        ErrorKind::InvalidUtf8 => "参数里有无法识别的字符（不是 UTF-8）。".to_owned(),
        _ => "命令写法不对。".to_owned(),
    };
    format!("命令写法不对：{what}用法见 fq-server --help。")
}

/// `--tier <TIER>、--listen <ADDR>` as `--tier、--listen`.
fn without_placeholders(text: &str) -> String {
    text.split('、').map(|a| a.split_whitespace().next().unwrap_or_default()).collect::<Vec<_>>().join("、")
}

/// A clap context value as text: lists joined with the Chinese list separator.
fn context_text(value: &ContextValue) -> String {
    match value {
        ContextValue::Strings(items) => items.join("、"),
        ContextValue::StyledStrs(items) => items.iter().map(ToString::to_string).collect::<Vec<_>>().join("、"),
        other => other.to_string(),
    }
}

/// Prints an error of a command in the operator's language and returns the exit code.
pub(crate) fn report(err: &anyhow::Error, lang: Lang) -> u8 {
    let (text, code) = describe(err, lang);
    let _ = writeln!(io::stderr().lock(), "fq-server: {}", fq_core::text::escape(&text));
    code
}

/// The words and exit code for an error: the first error in its chain this module knows.
pub(crate) fn describe(err: &anyhow::Error, lang: Lang) -> (String, u8) {
    for cause in err.chain() {
        let found = if let Some(e) = cause.downcast_ref::<BadInput>() {
            Some((bad_input(e, lang), EXIT_USAGE))
        } else if let Some(e) = cause.downcast_ref::<ServeError>() {
            Some((serve(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<ConfigError>() {
            Some((config(e, lang), EXIT_USAGE))
        } else if let Some(e) = cause.downcast_ref::<InitError>() {
            Some((init(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<IssueError>() {
            Some((issue(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<RevokeError>() {
            Some((revoke(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<PolicyIssueError>() {
            Some((policy_issue(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<OpenError>() {
            Some((open_ca(e, lang), if e.is_bad_input() { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<VaultError>() {
            Some(vault(e, lang))
        } else if let Some(e) = cause.downcast_ref::<LedgerError>() {
            let user = matches!(e, LedgerError::NotInitialized);
            Some((status_ledger(e, lang), if user { EXIT_USAGE } else { EXIT_FAILURE }))
        } else if let Some(e) = cause.downcast_ref::<fq_sync_server::import::ImportError>() {
            Some(import_words(e, lang))
        } else if let Some(e) = cause.downcast_ref::<InstallError>() {
            Some((with_detail(lang, "无法设置日志输出。", "cannot set up logging", &e.to_string()), EXIT_FAILURE))
        } else {
            cause.downcast_ref::<io::Error>().map(|e| {
                let text = match lang {
                    Lang::Zh => format!("无法写出结果：{}。", io_words(e, lang)),
                    Lang::En => format!("cannot write the output: {e}"),
                };
                (text, EXIT_FAILURE)
            })
        };
        if let Some((text, code)) = found {
            return match lang {
                // The English chain adds the files and causes the sentence may not name.
                Lang::En => (format!("{text} ({err:#})"), code),
                Lang::Zh => (text, code),
            };
        }
    }
    match lang {
        Lang::Zh => ("操作失败（用 --lang en 可以看到英文的详细原因）。".to_owned(), EXIT_FAILURE),
        Lang::En => (format!("{err:#}"), EXIT_FAILURE),
    }
}

/// A Chinese sentence that has no words for its cause, or the English one with the cause.
fn with_detail(lang: Lang, zh: &str, en: &str, detail: &str) -> String {
    match lang {
        Lang::Zh => format!("{zh}（用 --lang en 可以看到英文的详细原因）"),
        Lang::En => format!("{en}: {detail}"),
    }
}

/// `fq-server import`: the server's reasons reach Chinese output as sentences of their kind,
/// never as the English text the replica thread logged.
fn import_words(e: &fq_sync_server::import::ImportError, lang: Lang) -> (String, u8) {
    use fq_sync_server::import::{ImportError, Refusal};
    let zh = lang == Lang::Zh;
    match e {
        ImportError::NotRunning { dir } => (
            if zh {
                format!(
                    "台账目录 {} 上没有正在运行的服务器，同步文件没有导入，也没有写回执。请先启动服务器（systemctl start fq-server，或 fq-server run），再导入一次。",
                    dir.display()
                )
            } else {
                format!(
                    "no server is running on {}: nothing was imported and no answer was written. Start the server (systemctl start fq-server, or fq-server run), then import the file again.",
                    dir.display()
                )
            },
            EXIT_FAILURE,
        ),
        ImportError::PathTooLong { len, .. } => (
            if zh {
                format!(
                    "台账目录的路径太长（导入用的套接字路径有 {len} 字节，最多只能 {} 字节），服务器无法在那里接收导入，同步文件没有导入。请把台账目录放到较短的路径下，或建一个短路径的符号链接指向它，用它启动服务器和导入。",
                    fq_sync_server::import::MAX_SOCKET_PATH_BYTES
                )
            } else {
                format!(
                    "the data directory's path is too long for the import socket ({len} bytes, at most {}): the server cannot take imports there and nothing was imported. Move the data directory to a shorter path, or start the server and import through a short symlink to it.",
                    fq_sync_server::import::MAX_SOCKET_PATH_BYTES
                )
            },
            EXIT_FAILURE,
        ),
        ImportError::NotAServer { dir } => (
            if zh {
                format!(
                    "{} 不是服务器的台账目录：请用 --data-dir 写服务器运行时用的目录（和 fq-server run 的一样）。",
                    dir.display()
                )
            } else {
                format!(
                    "{} is not a server's data directory: give --data-dir the directory the server runs on (as for fq-server run)",
                    dir.display()
                )
            },
            EXIT_USAGE,
        ),
        ImportError::Refused { kind, reason } => {
            let nothing = lang
                .pick("整个文件都没有导入，也没有写回执。", "Nothing of it was imported and no answer was written.");
            let (zh_text, en_text, code) = match kind {
                Refusal::Damaged => (
                    "这个同步文件已损坏或不完整（可能没有拷完，或被改动过）。请在村里的设备上用 fq sync --to-file 重新写一份，再拷过来。",
                    "this sync file is damaged or incomplete (cut short while copying, or altered). Write it again on the village device with fq sync --to-file and copy it again.",
                    EXIT_USAGE,
                ),
                Refusal::WrongReceiver => (
                    "这个同步文件不是给本服务器的（是给另一个乡镇或另一台设备的）。请把它交给设备所属的乡镇导入。",
                    "this sync file is not for this server (it is for another township or device). Take it to the device's own township.",
                    EXIT_USAGE,
                ),
                Refusal::Unauthorized => (
                    "这个同步文件的发送方不能和本服务器同步（证书不是本县签发的，或不在本乡镇范围内）。请核对设备的证书。",
                    "the sender of this sync file may not sync with this server (its certificate is not from this county, or not within this township). Check the device's certificate.",
                    EXIT_USAGE,
                ),
                Refusal::AnAnswer => (
                    "这是一个回执文件，应当带回村里在设备上用 fq sync --from-file 导入，不是在服务器上导入。",
                    "this is an answer file: import it on the village device with fq sync --from-file, not on the server.",
                    EXIT_USAGE,
                ),
                _ => (
                    "服务器导入这个同步文件时出错（详见服务器日志），请稍后再导入一次。",
                    "the server failed while importing this sync file (see its log); import it again later.",
                    EXIT_FAILURE,
                ),
            };
            let text = if zh { format!("{zh_text}{nothing}") } else { format!("{en_text} {nothing} ({reason})") };
            (text, code)
        }
        _ => (
            lang.pick(
                "和服务器之间传送同步文件时出错（服务器可能正在停止），请再导入一次。",
                "handing the file to the server failed (it may be stopping); import it again",
            )
            .to_owned(),
            EXIT_FAILURE,
        ),
    }
}

fn bad_input(e: &BadInput, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        BadInput::Address { arg, value } => {
            if zh {
                format!("{arg} 的地址“{value}”不对：请写成 IP地址:端口，例如 0.0.0.0:4433 或 10.20.0.1:4433。")
            } else {
                format!("{arg}: \"{value}\" is not an address; write IP:PORT, e.g. 0.0.0.0:4433 or 10.20.0.1:4433.")
            }
        }
        BadInput::Code { arg, source } => input(arg, source, lang),
        BadInput::Subject { value } => {
            if zh {
                format!("编号“{value}”不对：编号由1-64个英文字母、数字或 . _ - 组成，以字母或数字开头，例如 d07。")
            } else {
                format!(
                    "id \"{value}\" is not valid: use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit, e.g. d07."
                )
            }
        }
        BadInput::Role { value } => {
            let codes: Vec<String> = GrantRole::ALL
                .iter()
                .map(|r| match lang {
                    Lang::Zh => format!("{}（{}）", r.code(), role_words(*r, lang)),
                    Lang::En => r.code().to_owned(),
                })
                .collect();
            if zh {
                format!("没有角色“{value}”。可以写：{}。", codes.join("、"))
            } else {
                format!("unknown role \"{value}\": expected {}.", codes.join(", "))
            }
        }
        BadInput::OutExists { path } => {
            if zh {
                format!("{} 已经存在：不会覆盖已有的证书包，请换一个文件名。", path.display())
            } else {
                format!("{} already exists; refusing to overwrite a bundle: choose another file name.", path.display())
            }
        }
        BadInput::OutDirMissing { path } => {
            if zh {
                format!("{} 所在的目录不存在：请先建立该目录，或换一个位置。", path.display())
            } else {
                format!("directory of {} does not exist: create it first, or write elsewhere.", path.display())
            }
        }
        BadInput::KeyFileOpen { path } => {
            if zh {
                format!(
                    "密钥文件 {} 同组或其他用户也能读：请运行 chmod 600 {}，并把它交给运行服务器的账户（chown）。",
                    path.display(),
                    path.display()
                )
            } else {
                format!(
                    "key file {} is readable by its group or others: run chmod 600 {} (and chown it to the service user).",
                    path.display(),
                    path.display()
                )
            }
        }
        BadInput::KeyFileTooLarge { path } => {
            if zh {
                format!("{} 太大了，不是密钥文件：请检查 --key-file。", path.display())
            } else {
                format!("{} is larger than a key: check --key-file.", path.display())
            }
        }
        BadInput::KeyFileTooShort { path, min } => {
            if zh {
                format!(
                    "密钥文件 {} 里的密钥不到 {min} 个字符：请用 head -c 32 /dev/urandom | base64 > 文件 生成一个。",
                    path.display()
                )
            } else {
                format!(
                    "key file {} holds fewer than {min} characters: make one with head -c 32 /dev/urandom | base64 > FILE.",
                    path.display()
                )
            }
        }
        BadInput::InputFile { path, source } => {
            if zh {
                format!("无法读取 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot read {}: {source}.", path.display())
            }
        }
        BadInput::InputTooLarge { path } => {
            if zh {
                format!("{} 太大了，不是政策文件或县文件：请检查 --file 和 --roster。", path.display())
            } else {
                format!("{} is larger than any policy or county file: check --file and --roster.", path.display())
            }
        }
        BadInput::NotText { path } => {
            if zh {
                format!("{} 不是 UTF-8 编码的文本：请用 UTF-8 保存后再试。", path.display())
            } else {
                format!("{} is not UTF-8 text: save it as UTF-8 and try again.", path.display())
            }
        }
        BadInput::NotCountyFile { path, reason } => {
            if zh {
                format!(
                    "{} 不是有效的县文件（格式见 fixtures/county-532924.json；用 --lang en 可以看到英文的详细原因）。",
                    path.display()
                )
            } else {
                format!("{} is not a county file: {reason}.", path.display())
            }
        }
        BadInput::RosterInconsistent { path, reason } => {
            if zh {
                format!(
                    "{} 里的花名册前后不一致（例如人员编号重复或不属于所在的村）：请改正后再签发（用 --lang en 可以看到英文的详细原因）。",
                    path.display()
                )
            } else {
                format!("the roster in {} is inconsistent: {reason}.", path.display())
            }
        }
        BadInput::ReplicaEncrypted { dir } => {
            if zh {
                format!("{} 里的服务器台账是加密的：请用 --key-file 给出它的密钥文件。", dir.display())
            } else {
                format!("the replica in {} is encrypted: give its key file with --key-file.", dir.display())
            }
        }
    }
}

/// An encrypted replica's key problem, in words.
fn vault(e: &VaultError, lang: Lang) -> (String, u8) {
    let zh = lang == Lang::Zh;
    match e {
        VaultError::WrongPassphrase { .. } => (
            lang.pick(
                "密钥文件打不开这个加密台账：请确认 --key-file 是这台服务器当初用的那个文件。",
                "the key file does not open this encrypted replica: check that --key-file is the file this server was set up with.",
            )
            .to_owned(),
            EXIT_USAGE,
        ),
        VaultError::KeyMissing { path } => (
            if zh {
                format!("台账是加密的，但它的密钥文件 {} 不见了：请从备份中恢复它（与 ledger.db 一起备份）。", path.display())
            } else {
                format!("the replica is encrypted but its key file {} is missing: restore it from the backup made with ledger.db.", path.display())
            },
            EXIT_USAGE,
        ),
        VaultError::AlreadyEncrypted => (
            lang.pick("台账已经是加密的，不需要再加密。", "the replica is already encrypted.").to_owned(),
            EXIT_USAGE,
        ),
        VaultError::NoLedger => (
            lang.pick(
                "这个目录里没有服务器台账（ledger.db）：请检查 --data-dir。",
                "there is no replica (ledger.db) in this directory: check --data-dir.",
            )
            .to_owned(),
            EXIT_USAGE,
        ),
        VaultError::WeakPassphrase { .. } => (
            lang.pick(
                "密钥文件里的密钥太弱：请用 head -c 32 /dev/urandom | base64 > 文件 生成一个。",
                "the key in the key file is too weak: make one with head -c 32 /dev/urandom | base64 > FILE.",
            )
            .to_owned(),
            EXIT_USAGE,
        ),
        VaultError::Store(StoreError::InUse) => (
            lang.pick(
                "台账正被别的程序使用（服务器还在运行？）：请先停止服务器（systemctl stop fq-server）再试。什么也没有改动。",
                "another program is using the ledger (is the server still running?): stop the server first (systemctl stop fq-server) and try again. Nothing was changed.",
            )
            .to_owned(),
            EXIT_FAILURE,
        ),
        VaultError::Damaged { .. } => (
            lang.pick(
                "台账的密钥文件（ledger.key）已损坏：请从备份中恢复 ledger.key 和 ledger.db。",
                "the replica's key file (ledger.key) is damaged: restore ledger.key and ledger.db from the backup.",
            )
            .to_owned(),
            EXIT_FAILURE,
        ),
        other => (
            with_detail(lang, "加密台账的密钥处理失败。", "the replica's key could not be handled", &other.to_string()),
            EXIT_FAILURE,
        ),
    }
}

/// A division code the core refused, in words.
fn input(arg: &str, e: &InputError, lang: Lang) -> String {
    match (e, lang) {
        (InputError::AdminCode { input, reason }, Lang::Zh) => {
            format!(
                "{arg} 的区划代码“{input}”不对：{}。区划代码是6位（县）、9位（乡镇）或12位（村）数字。",
                code_reason_zh(reason)
            )
        }
        (InputError::AdminCode { input, reason }, Lang::En) => {
            format!(
                "{arg}: division code \"{input}\" is not valid: {reason}. A code has 6 (county), 9 (township) or 12 (village) digits."
            )
        }
        (_, Lang::Zh) => format!("{arg} 的值不对（用 --lang en 可以看到英文的详细原因）。"),
        (other, Lang::En) => format!("{arg}: {other}"),
    }
}

fn code_reason_zh(reason: &str) -> &'static str {
    match reason {
        "it is empty" => "没有填写",
        "it must contain only digits" => "只能包含数字",
        "it must have 6 (county), 9 (township) or 12 (village) digits" => "位数不对",
        "the first two digits are not a province" => "前两位不是省份代码",
        "the county part (digits 5-6) is 00" => "县的部分（第5-6位）是00",
        "the township part (digits 7-9) is 000" => "乡镇的部分（第7-9位）是000",
        "the village part (digits 10-12) is 000" => "村的部分（第10-12位）是000",
        _ => "格式不对",
    }
}

/// A role's words.
pub(crate) fn role_words(role: GrantRole, lang: Lang) -> &'static str {
    match role {
        GrantRole::GridWorker => lang.pick("网格员", "grid worker"),
        GrantRole::Mediator => lang.pick("调解员", "mediator"),
        GrantRole::TownshipOfficer => lang.pick("乡镇干部", "township officer"),
        GrantRole::CountyAdmin => lang.pick("县级管理员", "county admin"),
        GrantRole::TownshipServer => lang.pick("乡镇服务器", "township server"),
        GrantRole::CountyServer => lang.pick("县服务器", "county server"),
    }
}

/// A tier's words (`county`, `township`, `device`).
pub(crate) fn tier_words(code: &str, lang: Lang) -> &str {
    match code {
        "county" => lang.pick("县", "county"),
        "township" => lang.pick("乡镇", "township"),
        "device" => lang.pick("设备", "device"),
        other => other,
    }
}

/// An operating system error, in words.
fn io_words(e: &io::Error, lang: Lang) -> String {
    if lang == Lang::En {
        return e.to_string();
    }
    match e.raw_os_error() {
        Some(28) => return "磁盘已满".to_owned(),
        Some(30) => return "文件系统是只读的".to_owned(),
        _ => {}
    }
    let words = match e.kind() {
        io::ErrorKind::NotFound => "找不到该文件或目录",
        io::ErrorKind::PermissionDenied => "没有权限（请检查文件的属主和权限，或换有权限的用户运行）",
        io::ErrorKind::AlreadyExists => "已经存在",
        io::ErrorKind::AddrInUse => "该地址和端口已被占用（可能另一个 fq-server 正在运行）",
        io::ErrorKind::AddrNotAvailable => "本机没有这个地址",
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => "内容无效或不完整",
        io::ErrorKind::NotADirectory => "路径中有一部分不是目录",
        io::ErrorKind::IsADirectory => "这是一个目录，不是文件",
        io::ErrorKind::ReadOnlyFilesystem => "文件系统是只读的",
        io::ErrorKind::StorageFull => "磁盘已满",
        _ => {
            return match e.raw_os_error() {
                Some(code) => format!("系统错误（错误号 {code}）"),
                None => "系统错误".to_owned(),
            };
        }
    };
    words.to_owned()
}

fn serve(e: &ServeError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        ServeError::Bundle { path, source } => {
            if zh {
                format!("无法使用证书包 {}：{}", path.display(), bundle_words(source, lang))
            } else {
                format!("cannot use the bundle {}: {}", path.display(), bundle_words(source, lang))
            }
        }
        ServeError::WrongBundle { id, role, tier, wanted } => {
            if zh {
                format!(
                    "证书包 {id} 是{}的证书，而 --tier {tier} 需要{}的证书包：请换用正确的证书包，或改正 --tier。",
                    role_words(*role, lang),
                    role_words(*wanted, lang)
                )
            } else {
                format!(
                    "bundle {id} is for a {}; --tier {tier} needs a {} bundle: use the right bundle or fix --tier.",
                    role_words(*role, lang),
                    role_words(*wanted, lang)
                )
            }
        }
        ServeError::UpstreamOnCounty => lang
            .pick(
                "县服务器没有上级：--upstream 只用于乡镇服务器，请去掉它。",
                "a county server has no upstream: --upstream is for township servers; leave it out.",
            )
            .to_owned(),
        ServeError::ReplicaMismatch { path, tier, scope, bundle_tier, bundle_scope } => {
            if zh {
                format!(
                    "{} 是{}（{scope}）的台账，而证书包是{}服务器（{bundle_scope}）的：一个数据目录只能服务同一层级、同一区域。请换用正确的 --data-dir 或证书包。",
                    path.display(),
                    tier_words(tier, lang),
                    tier_words(bundle_tier, lang)
                )
            } else {
                format!(
                    "{} holds the replica of a {tier} server for {scope}, but the bundle is a {bundle_tier} server's for {bundle_scope}: a data directory serves one tier and scope. Use the right --data-dir or bundle.",
                    path.display()
                )
            }
        }
        ServeError::DataDir { path, source } => {
            if zh {
                format!("无法建立数据目录 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot create the data directory {}: {source}", path.display())
            }
        }
        ServeError::Ledger { path, source } => {
            if zh {
                format!("无法打开或建立台账 {}：{}", path.display(), ledger_words(source, lang))
            } else {
                format!("cannot open or create the replica {}: {}", path.display(), ledger_words(source, lang))
            }
        }
        ServeError::Revocations { path, source } => {
            if zh {
                format!(
                    "配置中的吊销列表文件 {} 无法使用：{}请检查 revocations_file 的设置。",
                    path.display(),
                    revocation_words(source, lang)
                )
            } else {
                format!(
                    "the revocation list {} named in the config cannot be used: {} Check revocations_file.",
                    path.display(),
                    revocation_words(source, lang)
                )
            }
        }
        ServeError::BundleRevocations(source) => {
            if zh {
                format!("证书包里的吊销列表无效：{}请向县综治中心重新申领证书包。", revocation_words(source, lang))
            } else {
                format!(
                    "the bundle's revocation list is invalid: {} Ask the county centre for a new bundle.",
                    revocation_words(source, lang)
                )
            }
        }
        ServeError::Endpoint { addr, source } => match source {
            EndpointError::Bind { source, .. } => {
                if zh {
                    format!("无法在 {addr} 上监听：{}。", io_words(source, lang))
                } else {
                    format!("cannot listen on {addr}: {source}")
                }
            }
            other => with_detail(
                lang,
                &format!("无法在 {addr} 上建立安全连接端点（证书包可能有问题）。"),
                &format!("cannot set up the endpoint on {addr}"),
                &other.to_string(),
            ),
        },
        ServeError::ResetKey { path, source } => {
            if zh {
                format!(
                    "无法读取或建立连接重置密钥 {}：{}。请检查数据目录的权限。",
                    path.display(),
                    io_words(source, lang)
                )
            } else {
                format!("cannot read or create the reset key {}: {source}. Check the data directory's permissions.", path.display())
            }
        }
        ServeError::Thread(source) => {
            if zh {
                format!("无法启动台账线程：{}。", io_words(source, lang))
            } else {
                format!("cannot start the replica thread: {source}")
            }
        }
        ServeError::ReplicaDied => lang
            .pick(
                "台账线程意外停止（见上面的日志）：请重启服务器，已确认的修改都已保存，对端会重发其余的。",
                "the replica thread stopped unexpectedly (see the log above): restart the server; what was acknowledged is saved, and peers resend the rest.",
            )
            .to_owned(),
        ServeError::Encryption { path, problem } => match (problem, zh) {
            (EncryptionProblem::NotYetEncrypted, true) => format!(
                "服务器台账 {} 还没有加密：请先停止服务器，运行 fq-server encrypt --data-dir 目录 --key-file 密钥文件，再用 --encrypt 启动。",
                path.display()
            ),
            (EncryptionProblem::NotYetEncrypted, false) => format!(
                "replica {} is not encrypted yet: stop the server, run fq-server encrypt --data-dir DIR --key-file FILE, then start it with --encrypt.",
                path.display()
            ),
            (_, true) => format!("服务器台账 {} 是加密的：请用 --encrypt --key-file 密钥文件 启动。", path.display()),
            (_, false) => format!("replica {} is encrypted: run with --encrypt --key-file FILE.", path.display()),
        },
        ServeError::Key { source, .. } => vault(source, lang).0,
        _ => with_detail(lang, "服务器无法启动。", "the server cannot start", &e.to_string()),
    }
}

fn bundle_words(e: &BundleError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        BundleError::Io { source, .. } => {
            if zh {
                format!("无法读取该文件（{}）。请检查路径和权限。", io_words(source, lang))
            } else {
                format!("the file cannot be read ({source}). Check the path and permissions.")
            }
        }
        BundleError::Outdated(_) => lang
            .pick(
                "这是旧格式的证书包，已不再使用：请用 fq-server ca issue 重新签发。",
                "this is an old-format bundle that is no longer read: issue a new one with fq-server ca issue.",
            )
            .to_owned(),
        _ => lang
            .pick(
                "它不是完整有效的证书包（可能已损坏或被改动）。请向县综治中心重新申领。",
                "it is not a complete, valid bundle (damaged or altered). Ask the county centre for a new one.",
            )
            .to_owned(),
    }
}

fn revocation_words(e: &RevocationError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        RevocationError::Io { source, .. } => {
            if zh {
                format!("无法读取该文件（{}）。", io_words(source, lang))
            } else {
                format!("the file cannot be read ({source}).")
            }
        }
        RevocationError::WrongCounty { list, ca } => {
            if zh {
                format!("它是县 {list} 的列表，而证书中心属于县 {ca}。")
            } else {
                format!("it is county {list}'s list, but the CA is county {ca}'s.")
            }
        }
        RevocationError::BadSignature { .. } => lang
            .pick("它不是本县证书中心签发的（或已被改动）。", "it is not signed by this county's CA (or was altered).")
            .to_owned(),
        _ => lang.pick("它不是有效的吊销列表。", "it is not a valid revocation list.").to_owned(),
    }
}

fn ledger_words(e: &LedgerError, lang: Lang) -> String {
    match e {
        LedgerError::Store(StoreError::NewerSchema { .. }) => lang
            .pick("该台账是更新版本的 fq 建立的，请升级 fq-server。", "it was made by a newer fq; upgrade fq-server.")
            .to_owned(),
        LedgerError::Store(StoreError::DiskFull) => {
            lang.pick("磁盘已满，请腾出空间后再启动。", "the disk is full; free some space and start again.").to_owned()
        }
        LedgerError::Store(StoreError::Corrupt) => lang
            .pick(
                "文件已损坏或不是 fq 的台账。请从备份恢复（见 docs/OPERATIONS.md 第6节）。",
                "the file is damaged or not an fq ledger. Restore it from a backup (docs/OPERATIONS.md §6).",
            )
            .to_owned(),
        LedgerError::NotInitialized => lang.pick("这里没有台账。", "there is no ledger here.").to_owned(),
        LedgerError::Store(StoreError::InUse) => lang
            .pick(
                "台账正被别的程序使用，请稍后再试（或先停止正在使用它的程序）。",
                "another program is using the ledger; try again later (or stop the program using it).",
            )
            .to_owned(),
        other => match lang {
            Lang::Zh => "台账读写失败（用 --lang en 可以看到英文的详细原因）。".to_owned(),
            Lang::En => format!("{other}."),
        },
    }
}

fn status_ledger(e: &LedgerError, lang: Lang) -> String {
    match e {
        LedgerError::NotInitialized => lang
            .pick(
                "这个目录里没有服务器的台账（ledger.db）：请检查 --data-dir，它应是 fq-server run 使用的数据目录。",
                "there is no server replica (ledger.db) in this directory: check --data-dir; it is the directory fq-server run uses.",
            )
            .to_owned(),
        other => match lang {
            Lang::Zh => format!("无法读取服务器台账：{}", ledger_words(other, lang)),
            Lang::En => format!("cannot read the server's replica: {}", ledger_words(other, lang)),
        },
    }
}

fn config(e: &ConfigError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        ConfigError::Io { path, source } => {
            if zh {
                format!("无法读取配置文件 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot read the config file {}: {source}", path.display())
            }
        }
        ConfigError::TooLarge { path, len } => {
            if zh {
                format!(
                    "配置文件 {} 有 {len} 字节，太大了：真正的配置文件只有几行。请检查 --config 是否指错了文件。",
                    path.display()
                )
            } else {
                format!(
                    "the config file {} is {len} bytes, too large for a config: check that --config names the right file.",
                    path.display()
                )
            }
        }
        ConfigError::Parse { path, reason, line } => {
            let at = line.map(|n| lang.pick(&format!("第 {n} 行"), &format!("line {n}")).to_owned());
            let unknown = reason
                .strip_prefix("unknown field `")
                .or_else(|| reason.find("unknown field `").map(|i| &reason[i + "unknown field `".len()..]))
                .and_then(|rest| rest.split('`').next());
            match (lang, unknown) {
                (Lang::Zh, Some(key)) => format!(
                    "配置文件 {}{}有不认识的设置项“{key}”：请检查拼写，可用的设置项见 docs/OPERATIONS.md。",
                    path.display(),
                    at.map(|a| format!(" {a} ")).unwrap_or_default()
                ),
                (Lang::Zh, None) => format!(
                    "配置文件 {}{}写得不对，不是有效的 TOML 或 JSON：请对照 docs/OPERATIONS.md 检查。",
                    path.display(),
                    at.map(|a| format!(" {a} ")).unwrap_or_default()
                ),
                (Lang::En, _) => format!(
                    "the config file {} is invalid{}: {reason}. See docs/OPERATIONS.md for the settings.",
                    path.display(),
                    at.map(|a| format!(" at {a}")).unwrap_or_default()
                ),
            }
        }
        ConfigError::Range { path, key, min, max } => {
            if zh {
                format!("配置文件 {} 中 {key} 的值要在 {min} 到 {max} 之间。", path.display())
            } else {
                format!("the config file {}: {key} must be between {min} and {max}.", path.display())
            }
        }
        other => with_detail(lang, "配置文件无法使用。", "the config file cannot be used", &other.to_string()),
    }
}

fn init(e: &InitError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        InitError::AlreadyExists(dir) => {
            if zh {
                format!(
                    "{} 里已经有证书中心了：不会覆盖它（它的密钥无法重建）。要签发证书请用 fq-server ca issue。",
                    dir.display()
                )
            } else {
                format!(
                    "a CA already exists in {}; it is never overwritten (its key cannot be re-created). Use fq-server ca issue to issue certificates.",
                    dir.display()
                )
            }
        }
        InitError::NotCounty(code) => {
            if zh {
                format!("{code} 不是县的代码：--county 要写6位的县代码，例如 532924。")
            } else {
                format!("{code} is not a county code: --county takes a 6-digit county code, e.g. 532924.")
            }
        }
        InitError::Io { path, source } => {
            if zh {
                format!("无法写入证书中心的文件 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot write the CA file {}: {source}", path.display())
            }
        }
        other => with_detail(lang, "无法建立证书中心。", "cannot create the CA", &other.to_string()),
    }
}

fn open_ca(e: &OpenError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        OpenError::Missing(dir) => {
            if zh {
                format!("{} 里没有证书中心：请检查 --ca 的目录，或先用 fq-server ca init 建立。", dir.display())
            } else {
                format!("no CA in {}: check --ca, or create one first with fq-server ca init.", dir.display())
            }
        }
        OpenError::Io { path, source } => {
            if zh {
                format!("无法读取证书中心的文件 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot read the CA file {}: {source}", path.display())
            }
        }
        other => with_detail(
            lang,
            "证书中心的文件已损坏或被改动：请从离线备份恢复证书中心目录。",
            "the CA's files are damaged or altered: restore the CA directory from its offline backup",
            &other.to_string(),
        ),
    }
}

fn issue(e: &IssueError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        IssueError::Open(open) => open_ca(open, lang),
        IssueError::Scope(GrantError::RoleScopeMismatch { role, scope }) => {
            let digits = match role.scope_level() {
                fq_core::case::AdminLevel::County => 6,
                fq_core::case::AdminLevel::Township => 9,
                fq_core::case::AdminLevel::Village => 12,
            };
            if zh {
                format!("{}的区域要写{digits}位的区划代码，而 {scope} 不是：请改正 --scope。", role_words(*role, lang))
            } else {
                format!(
                    "a {} needs a {digits}-digit division code, and {scope} is not one: fix --scope.",
                    role_words(*role, lang)
                )
            }
        }
        IssueError::Scope(GrantError::OutsideCounty { scope, county }) => {
            if zh {
                format!("{scope} 不在本县 {county} 之内：本证书中心只为本县签发证书。")
            } else {
                format!("{scope} is outside county {county}: this CA issues certificates for its own county only.")
            }
        }
        IssueError::Ledger { path, source } => {
            if zh {
                format!("无法写入签发记录 {}：{}。证书没有签发。", path.display(), io_words(source, lang))
            } else {
                format!("cannot write the issued-certificates ledger {}: {source}. Nothing was issued.", path.display())
            }
        }
        other => with_detail(lang, "无法签发证书。", "cannot issue the certificate", &other.to_string()),
    }
}

fn policy_issue(e: &PolicyIssueError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        PolicyIssueError::Open(open) => open_ca(open, lang),
        PolicyIssueError::Current { path, .. } => {
            if zh {
                format!(
                    "证书中心里现有的县级政策 {} 无法使用（已损坏，或不是本证书中心签发的）：请从离线备份恢复它。没有签发新的政策。",
                    path.display()
                )
            } else {
                format!(
                    "the CA's current policy {} is unusable (damaged, or not signed by this CA): restore it from the offline backup. Nothing was signed.",
                    path.display()
                )
            }
        }
        PolicyIssueError::Policy(p) => policy_words(p, lang),
        PolicyIssueError::Save { path, source } => {
            if zh {
                format!("无法保存签好的政策 {}：{}。", path.display(), io_words(source, lang))
            } else {
                format!("cannot save the signed policy {}: {source}", path.display())
            }
        }
        other => with_detail(lang, "无法签发县级政策。", "cannot sign the county policy", &other.to_string()),
    }
}

/// Why a policy text or roster was refused, in words. Nothing was signed.
fn policy_words(e: &PolicyError, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    match e {
        PolicyError::Toml(reason) => {
            if zh {
                "政策文件写得不对：不是有效的 TOML，或有不认识的设置项、类型不对的值。可写的设置项见 docs/OPERATIONS.md（用 --lang en 可以看到英文的详细原因）。没有签发。".to_owned()
            } else {
                format!(
                    "the policy file does not parse: {reason}. See docs/OPERATIONS.md for the keys. Nothing was signed."
                )
            }
        }
        PolicyError::Value { key, reason } => {
            if zh {
                format!("政策文件中 {key} 的值不对（例如天数为0，或回访日期顺序不对）。没有签发。")
            } else {
                format!("policy value {key} is invalid: {reason}. Nothing was signed.")
            }
        }
        PolicyError::TooLarge(len) => {
            if zh {
                format!("签好的政策有 {len} 字节，超过了允许的大小：请精简政策文件或花名册。没有签发。")
            } else {
                format!(
                    "the signed policy would be {len} bytes, more than allowed: shorten the policy or roster. Nothing was signed."
                )
            }
        }
        PolicyError::Roster(_) => lang
            .pick(
                "花名册前后不一致（用 --lang en 可以看到英文的详细原因）。没有签发。",
                &format!("{e}. Nothing was signed."),
            )
            .to_owned(),
        other => with_detail(lang, "县级政策无法签发。", "the county policy cannot be signed", &other.to_string()),
    }
}

fn revoke(e: &RevokeError, lang: Lang) -> String {
    match e {
        RevokeError::Open(open) => open_ca(open, lang),
        RevokeError::UnknownId(id) => match lang {
            Lang::Zh => format!("从来没有给 {id} 签发过证书：请检查 --id（编号区分大小写）。"),
            Lang::En => format!("no certificate was issued to {id}: check --id (ids are case-sensitive)."),
        },
        other => with_detail(
            lang,
            "无法保存新的吊销列表，吊销没有生效。",
            "the new revocation list could not be saved; nothing was revoked",
            &other.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fq_sync_server::import::{ImportError, Refusal};

    /// A Latin word of four letters or more outside option and command names and paths.
    fn has_latin_word(text: &str) -> bool {
        const NAMES: &[&str] = &[
            "fq-server",
            "init",
            "issue",
            "revoke",
            "status",
            "nobody",
            "boss",
            "ledger.db",
            "grid-worker",
            "mediator",
            "township-officer",
            "county-admin",
            "township",
            "county",
            "systemctl",
            "start",
            "sync",
        ];
        text.split(|c: char| c.is_whitespace() || !c.is_ascii())
            .filter(|token| !token.starts_with('-') && !token.contains('/') && !NAMES.contains(token))
            .flat_map(|token| token.split(|c: char| !c.is_ascii_alphabetic()))
            .any(|w| w.len() >= 4)
    }

    #[test]
    fn describe_speaks_chinese_without_english_words() {
        let errors: Vec<anyhow::Error> = vec![
            ServeError::UpstreamOnCounty.into(),
            ServeError::ReplicaDied.into(),
            RevokeError::UnknownId("nobody".parse().unwrap()).into(),
            InitError::AlreadyExists("/x/ca".into()).into(),
            LedgerError::NotInitialized.into(),
            BadInput::Role { value: "boss".into() }.into(),
            anyhow::anyhow!("something no one has words for"),
            ImportError::NotRunning { dir: "/var/lib/fq".into() }.into(),
            ImportError::NotAServer { dir: "/var/lib/fq".into() }.into(),
            ImportError::PathTooLong { path: "/var/lib/fq/import.sock".into(), len: 140 }.into(),
            ImportError::Refused { kind: Refusal::Damaged, reason: "the file is damaged".into() }.into(),
            ImportError::Refused { kind: Refusal::WrongReceiver, reason: "for another replica".into() }.into(),
            ImportError::Refused { kind: Refusal::Unauthorized, reason: "may not sync".into() }.into(),
            ImportError::Refused { kind: Refusal::AnAnswer, reason: "an answer".into() }.into(),
            ImportError::Refused { kind: Refusal::Failed, reason: "disk full".into() }.into(),
        ];
        for err in &errors {
            let (zh, _) = describe(err, Lang::Zh);
            assert!(!has_latin_word(&zh), "English in {zh:?}");
            let (en, _) = describe(err, Lang::En);
            assert!(en.is_ascii() || en.contains("nobody"), "{en}");
        }
        let (zh, code) = describe(&BadInput::Role { value: "boss".into() }.into(), Lang::Zh);
        assert_eq!(code, EXIT_USAGE);
        assert!(zh.contains("mediator（调解员）"), "{zh}");
    }

    #[test]
    fn usage_zh_names_the_argument_and_the_choices() {
        let err = crate::cli::parse(&["fq-server".into(), "run".into(), "--tier".into(), "city".into()]).unwrap_err();
        let text = usage_zh(&err);
        assert!(text.contains("--tier") && text.contains("city") && text.contains("county、township"), "{text}");
        let err = crate::cli::parse(&["fq-server".into(), "statsu".into()]).unwrap_err();
        let text = usage_zh(&err);
        assert!(text.contains("没有“statsu”这个命令") && text.contains("status"), "{text}");
    }
}
