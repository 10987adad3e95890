//! `fq-server`: the township and county server of the fq case ledger, and the county CA tool.
//!
//! Chinese by default (the locale rule of [`fq_core::lang`]: `C`, `POSIX`, `C.UTF-8` and no
//! locale all mean Chinese), English with `--lang en`: help, usage mistakes (`cli`, `message`),
//! what each command prints (here), every error (`message`) and the human log
//! ([`fq_sync_server::journal`]). `--json` output and JSON logs keep their stable English keys.
//! Everything printed goes through [`SafeWriter`], so no text from a peer acts on a terminal.
//!
//! Exit codes: 0 ok (also after a graceful shutdown on SIGTERM/SIGINT), 1 failure, 2 bad usage
//! or bad input.

mod cli;
mod message;

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fq_core::case::InputError;
use fq_core::county::County;
use fq_core::lang::Lang;
use fq_core::ledger::Tier;
use fq_core::roster::Roster;
use fq_core::text::{Escape, SafeWriter};
use fq_core::vault::{KdfParams, Passphrase, Protection, Vault, WipePolicy};
use fq_sync_server::ca::{AdminCode, CA_CERT_FILE, CertificateAuthority, GrantRole, POLICY_FILE, SubjectId};
use fq_sync_server::config::{FileConfig, ServerConfig};
use fq_sync_server::journal::{self, LogFormat};
use fq_sync_server::server;
use fq_sync_server::status::{self, Status};
use serde_json::json;

use crate::cli::{
    CaCommand, Cli, CliCommand, EncryptArgs, ImportArgs, InitArgs, IssueArgs, LogFormatArg, PolicyArgs, RevokeArgs,
    RunArgs, StatusArgs, TierArg,
};
use crate::message::{role_words, tier_words};

/// How long the async runtime may take to wind down once the server has stopped: tasks still
/// running then (a dial of the county) are dropped, so the process never outlives its socket.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    fq_core::doc::install_panic_hook();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match cli::parse(&args) {
        Ok(cli) => cli,
        Err(err) => return ExitCode::from(message::report_usage(&err, &args)),
    };
    let lang = cli.lang.unwrap_or_else(Lang::from_env);
    match run(cli, lang) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(message::report(&err, lang)),
    }
}

/// Input the CLI itself refuses (the library's errors classify themselves with
/// `is_bad_input`). The words are in `message`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadInput {
    /// An address that is not `IP:PORT`.
    #[error("{arg}: {value:?} is not an address (IP:PORT)")]
    Address {
        /// The option.
        arg: &'static str,
        /// What was given.
        value: String,
    },
    /// A division code the core refused.
    #[error("{arg}: {source}")]
    Code {
        /// The option.
        arg: &'static str,
        /// Why.
        #[source]
        source: InputError,
    },
    /// An id that is not a valid subject.
    #[error("invalid subject {value:?}")]
    Subject {
        /// What was given.
        value: String,
    },
    /// A role that is not one of the CA's.
    #[error("unknown role {value:?}")]
    Role {
        /// What was given.
        value: String,
    },
    /// `ca issue --out` names an existing file.
    #[error("{} already exists", path.display())]
    OutExists {
        /// The file.
        path: PathBuf,
    },
    /// A key file readable by its group or others.
    #[error("key file {} is readable by its group or others", path.display())]
    KeyFileOpen {
        /// The file.
        path: PathBuf,
    },
    /// A key file larger than any key.
    #[error("key file {} is larger than a key", path.display())]
    KeyFileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A key file holding too short a secret.
    #[error("key file {} holds fewer than {min} characters", path.display())]
    KeyFileTooShort {
        /// The file.
        path: PathBuf,
        /// The fewest characters.
        min: usize,
    },
    /// `status` on an encrypted replica without `--key-file`.
    #[error("the replica in {} is encrypted: give its key file with --key-file", dir.display())]
    ReplicaEncrypted {
        /// The data directory.
        dir: PathBuf,
    },
    /// `ca issue --out` names a file in a directory that does not exist.
    #[error("directory of {} does not exist", path.display())]
    OutDirMissing {
        /// The file.
        path: PathBuf,
    },
    /// A policy or county file `ca policy` cannot read.
    #[error("cannot read {}", path.display())]
    InputFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A policy or county file larger than any real one.
    #[error("{} is larger than any policy or county file", path.display())]
    InputTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A policy or county file that is not UTF-8 text.
    #[error("{} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// `ca policy --roster` names a file that is not a county file.
    #[error("{} is not a county file: {reason}", path.display())]
    NotCountyFile {
        /// The file.
        path: PathBuf,
        /// Why (the core's words).
        reason: String,
    },
    /// `ca policy --roster` names a county file whose staff ids do not fit together.
    #[error("the roster in {} is inconsistent: {reason}", path.display())]
    RosterInconsistent {
        /// The file.
        path: PathBuf,
        /// Why (the core's words).
        reason: String,
    },
}

fn address(arg: &'static str, value: &str) -> Result<SocketAddr, BadInput> {
    value.trim().parse().map_err(|_| BadInput::Address { arg, value: value.to_owned() })
}

fn code(arg: &'static str, value: &str) -> Result<AdminCode, BadInput> {
    AdminCode::parse(value).map_err(|source| BadInput::Code { arg, source })
}

fn run(cli: Cli, lang: Lang) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let out = Output { lang, json: cli.json };
    match cli.command {
        CliCommand::Run(args) => run_server(args, lang),
        CliCommand::Status(args) => show_status(&args, out),
        CliCommand::Import(args) => import_file(&args, out),
        CliCommand::Ca(CaCommand::Init(args)) => ca_init(&args, now, out),
        CliCommand::Ca(CaCommand::Issue(args)) => ca_issue(&args, now, out),
        CliCommand::Ca(CaCommand::Revoke(args)) => ca_revoke(&args, now, out),
        CliCommand::Ca(CaCommand::Policy(args)) => ca_policy(&args, now, out),
        CliCommand::Encrypt(args) => encrypt(&args, out),
    }
}

/// How results are printed: the language, and JSON or sentences.
#[derive(Debug, Clone, Copy)]
struct Output {
    lang: Lang,
    json: bool,
}

impl Output {
    fn zh(self) -> bool {
        self.lang == Lang::Zh
    }

    /// Prints `value` with `--json`, else the sentence: escaped either way.
    fn report(self, value: &serde_json::Value, human: &str) -> anyhow::Result<()> {
        let mut out = SafeWriter::new(io::stdout().lock(), if self.json { Escape::Json } else { Escape::Human });
        if self.json {
            serde_json::to_writer(&mut out, value).context("cannot write json output")?;
            writeln!(out).context("cannot write output")?;
        } else {
            writeln!(out, "{human}").context("cannot write output")?;
        }
        out.flush().context("cannot write output")
    }
}

/// Largest policy or county file read by `ca policy`.
const MAX_INPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn read_input(path: &Path) -> Result<String, BadInput> {
    let unreadable = |source| BadInput::InputFile { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > MAX_INPUT_FILE_BYTES {
        return Err(BadInput::InputTooLarge { path: path.to_owned() });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    String::from_utf8(bytes).map_err(|_| BadInput::NotText { path: path.to_owned() })
}

fn ca_policy(args: &PolicyArgs, now: SystemTime, out: Output) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    let roster = match &args.roster {
        Some(path) => {
            let county = County::load(&read_input(path)?)
                .map_err(|e| BadInput::NotCountyFile { path: path.clone(), reason: e.to_string() })?;
            let roster = Roster::from_county(&county)
                .map_err(|e| BadInput::RosterInconsistent { path: path.clone(), reason: e.to_string() })?;
            Some((roster.staff().to_vec(), fq_core::policy::areas_of(&county)))
        }
        None => None,
    };
    let ca = open_ca(&args.ca)?;
    let signed = ca.sign_policy(&text, roster, now).with_context(|| format!("cannot sign {}", args.file.display()))?;
    let kept = args.ca.join(POLICY_FILE);
    if let Some(file) = &args.out {
        let bytes = signed.to_json().map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let human = if out.zh() {
        format!(
            "已签发县级政策第 {} 版（县 {}，花名册 {} 人），保存在 {}",
            signed.version(),
            signed.county(),
            signed.staff().len(),
            kept.display()
        )
    } else {
        format!(
            "signed county policy version {} for county {} ({} staff in the roster) to {}",
            signed.version(),
            signed.county(),
            signed.staff().len(),
            kept.display()
        )
    };
    out.report(
        &json!({
            "command": "ca policy",
            "county": signed.county(),
            "version": signed.version(),
            "staff": signed.staff().len(),
            "policy_file": kept,
            "out": args.out,
        }),
        &human,
    )
}

fn ca_init(args: &InitArgs, now: SystemTime, out: Output) -> anyhow::Result<()> {
    let county = code("--county", &args.county)?;
    let ca = CertificateAuthority::init(&args.dir, &county, now)
        .with_context(|| format!("cannot create ca in {}", args.dir.display()))?;
    let list = ca.revocations().context("cannot read the new revocation list")?;
    let human = if out.zh() {
        format!(
            "已在 {} 为县 {} 建立证书中心。请把这个目录（尤其是 ca.key.pem）离线备份：密钥丢失后无法重建。",
            args.dir.display(),
            ca.county()
        )
    } else {
        format!("created ca for county {} in {}", ca.county(), args.dir.display())
    };
    out.report(
        &json!({
            "command": "ca init",
            "dir": args.dir,
            "county": ca.county(),
            "ca_certificate": args.dir.join(CA_CERT_FILE),
            "revocation_version": list.version(),
        }),
        &human,
    )
}

fn ca_issue(args: &IssueArgs, now: SystemTime, out: Output) -> anyhow::Result<()> {
    let id: SubjectId = args.id.parse().map_err(|_| BadInput::Subject { value: args.id.clone() })?;
    let role = GrantRole::parse(&args.role).map_err(|_| BadInput::Role { value: args.role.clone() })?;
    let scope = code("--scope", &args.scope)?;
    if args.out.exists() {
        return Err(BadInput::OutExists { path: args.out.clone() }.into());
    }
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(BadInput::OutDirMissing { path: args.out.clone() }.into());
    }
    let ca = open_ca(&args.ca)?;
    let bundle = ca.issue(&id, role, &scope, now).with_context(|| format!("cannot issue a certificate for {id}"))?;
    bundle.save(&args.out).with_context(|| format!("certificate {} was recorded but not saved", bundle.serial()))?;
    let human = if out.zh() {
        format!(
            "已为 {} 签发{}证书，区域 {}（证书序号 {}），证书包：{}。证书包里有私钥：请当面或用U盘交付，不要用电子邮件发送。",
            bundle.id(),
            role_words(bundle.role(), out.lang),
            bundle.scope(),
            bundle.serial(),
            args.out.display()
        )
    } else {
        format!(
            "issued {} certificate for {} over {} (serial {}) to {}",
            bundle.role(),
            bundle.id(),
            bundle.scope(),
            bundle.serial(),
            args.out.display()
        )
    };
    out.report(
        &json!({
            "command": "ca issue",
            "id": bundle.id(),
            "role": bundle.role(),
            "scope": bundle.scope(),
            "county": bundle.county(),
            "serial": bundle.serial(),
            "bundle": args.out,
            "revocation_version": bundle.revocations().version(),
        }),
        &human,
    )
}

fn ca_revoke(args: &RevokeArgs, now: SystemTime, out: Output) -> anyhow::Result<()> {
    let id: SubjectId = args.id.parse().map_err(|_| BadInput::Subject { value: args.id.clone() })?;
    let ca = open_ca(&args.ca)?;
    let revocation = ca.revoke(&id, now).with_context(|| format!("cannot revoke {id}"))?;
    let version = revocation.list.version();
    let serials: Vec<String> = revocation.newly_revoked.iter().map(ToString::to_string).collect();
    let human = match (out.lang, serials.is_empty()) {
        (Lang::Zh, true) => format!("{id} 的证书早已吊销，吊销列表仍是第 {version} 版。"),
        (Lang::Zh, false) => format!(
            "已吊销 {id} 的 {} 个证书（{}），吊销列表现在是第 {version} 版。请在县服务器上运行 systemctl reload fq-server，让它立即生效；乡镇服务器会从县服务器收到新列表。",
            serials.len(),
            serials.join("、")
        ),
        (Lang::En, true) => format!("{id} was already revoked; revocation list stays at version {version}"),
        (Lang::En, false) => format!(
            "revoked {} certificate(s) of {id} ({}); revocation list is now version {version}",
            serials.len(),
            serials.join(", ")
        ),
    };
    out.report(
        &json!({
            "command": "ca revoke",
            "id": id,
            "revoked": revocation.newly_revoked,
            "changed": !revocation.newly_revoked.is_empty(),
            "revocation_version": version,
        }),
        &human,
    )
}

fn run_server(args: RunArgs, lang: Lang) -> anyhow::Result<()> {
    let listen = address("--listen", &args.listen)?;
    let upstream = args.upstream.as_deref().map(|a| address("--upstream", a)).transpose()?;
    let file = args.config.as_deref().map(FileConfig::load).transpose()?;
    let format = match args.log_format {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
    };
    journal::install(format, lang)?;
    let tier = match args.tier {
        TierArg::County => Tier::County,
        TierArg::Township => Tier::Township,
    };
    let mut config = ServerConfig::new(tier, listen, args.data_dir, args.bundle);
    config.upstream = upstream;
    config.report_lang = lang;
    if let Some(key) = &args.key_file {
        config.encryption = Some(read_key_file(key)?);
    }
    if let Some(file) = &file {
        config.apply(file);
    }
    if tier == Tier::Township && config.upstream.is_none() {
        tracing::warn!("no --upstream: this township server will not sync with the county");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        // Registered before the server binds: a SIGTERM right after "listening" must shut
        // down gracefully, not kill the process with the default action.
        let signal = fq_sync_server::signal::shutdown().context("cannot listen for SIGTERM and SIGINT")?;
        let shutdown = async move {
            let name = signal.await;
            tracing::info!(signal = name, "signal received");
        };
        let server = server::bind(config)?;
        server.run(shutdown).await.map_err(anyhow::Error::from)
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    served
}

/// `fq-server import`: the file goes to the running server over its import socket; the answer
/// it returns (after its commit) is written beside its final name, then renamed.
fn import_file(args: &ImportArgs, out: Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let done = runtime.block_on(fq_sync_server::import::import(&args.data_dir, &bytes))?;
    let mut tmp = args.answer.clone().into_os_string();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &done.answer).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.answer).with_context(|| format!("writing {}", args.answer.display()))?;
    let mut w = SafeWriter::new(io::stdout().lock(), if out.json { Escape::Json } else { Escape::Human });
    let (file, answer, size) = (args.file.display(), args.answer.display(), done.answer.len());
    if out.json {
        let value = json!({
            "ok": true,
            "file": file.to_string(),
            "replayed": done.replayed,
            "received": done.received,
            "duplicates": done.duplicates,
            "refused": done.refused,
            "answer": answer.to_string(),
            "answer_bytes": size,
        });
        writeln!(w, "{value}").context("cannot write output")?;
        return w.flush().context("cannot write output");
    }
    let (received, duplicates, refused) = (done.received, done.duplicates, done.refused);
    match out.lang {
        Lang::Zh => {
            if done.replayed {
                writeln!(w, "同步文件 {file} 以前已经导入过，这次没有新内容；回执重新写了一份。")
            } else {
                writeln!(w, "已导入同步文件 {file}：接收修改 {received} 条（另有 {duplicates} 条服务器已有）。")
            }
            .context("cannot write output")?;
            if refused > 0 {
                writeln!(w, "  有 {refused} 条修改超出了发送设备的负责范围，没有接收（已记入审计，回执会告诉设备）。")
                    .context("cannot write output")?;
            }
            writeln!(w, "  回执（{size} 字节）已写到 {answer}：请拷到U盘带回村里，用 fq sync --from-file 导入。")
        }
        Lang::En => {
            if done.replayed {
                writeln!(w, "Sync file {file} was imported before: nothing new; the answer was written again.")
            } else {
                writeln!(w, "Sync file {file} imported: {received} changes received ({duplicates} already here).")
            }
            .context("cannot write output")?;
            if refused > 0 {
                writeln!(w, "  {refused} changes lie outside the sending device's area and were refused (audited; the answer tells the device).")
                    .context("cannot write output")?;
            }
            writeln!(w, "  The answer ({size} bytes) is in {answer}: copy it to the USB stick, take it back to the village and import it with fq sync --from-file.")
        }
    }
    .context("cannot write output")?;
    w.flush().context("cannot write output")
}

fn show_status(args: &StatusArgs, out: Output) -> anyhow::Result<()> {
    let ledger = args.data_dir.join(server::LEDGER_FILE);
    let key = match &args.key_file {
        Some(file) => {
            let secret = read_key_file(file)?;
            let vault = Vault::for_ledger(&ledger);
            Some(vault.unlock(&secret).with_context(|| format!("replica key {}", vault.key_path().display()))?)
        }
        None if Vault::for_ledger(&ledger).protection()? == Protection::Encrypted => {
            return Err(BadInput::ReplicaEncrypted { dir: args.data_dir.clone() }.into());
        }
        None => None,
    };
    let status = status::read_with_key(&args.data_dir, key.as_ref())
        .with_context(|| format!("server data directory {}", args.data_dir.display()))?;
    let mut w = SafeWriter::new(io::stdout().lock(), if out.json { Escape::Json } else { Escape::Human });
    if out.json {
        serde_json::to_writer(&mut w, &status).context("cannot write json output")?;
        writeln!(w).context("cannot write output")?;
    } else {
        write_status(&mut w, &status, out.lang).context("cannot write output")?;
    }
    w.flush().context("cannot write output")
}

fn write_status(out: &mut impl Write, s: &Status, lang: Lang) -> io::Result<()> {
    let id = &s.identity;
    let c = &s.counts;
    if lang == Lang::En {
        writeln!(out, "{} server {} ({}), replica {}", id.tier.code(), id.name, id.scope, id.replica)?;
        writeln!(
            out,
            "cases {}, changes {} (log head {}), pending {}, audit records {}",
            c.cases, c.changes, s.log_head, c.pending, c.audit
        )?;
    } else {
        writeln!(out, "{}服务器 {}（{}），副本 {}", tier_words(id.tier.code(), lang), id.name, id.scope, id.replica)?;
        writeln!(
            out,
            "案件 {} 件，修改 {} 条（日志到第 {} 条），等待依赖的修改 {} 条，审计记录 {} 条",
            c.cases, c.changes, s.log_head, c.pending, c.audit
        )?;
    }
    if s.peers.is_empty() {
        writeln!(out, "{}", lang.pick("还没有对端同步过", "no peer has synced yet"))?;
    } else {
        writeln!(out, "{}", lang.pick("对端：", "peers:"))?;
        for p in &s.peers {
            let when = p.last_sync.map_or_else(|| lang.pick("从未", "never").to_owned(), |t| t.to_rfc3339());
            match lang {
                Lang::En => writeln!(
                    out,
                    "  {} {} {}: holds their log to {}, they acknowledged ours to {}, last sync {when}",
                    p.tier, p.scope, p.replica, p.their_seq, p.acked_seq
                )?,
                Lang::Zh => writeln!(
                    out,
                    "  {} {} {}：本服务器收到对方日志到第 {} 条，对方确认收到本服务器日志到第 {} 条，最近同步 {when}",
                    tier_words(&p.tier, lang),
                    p.scope,
                    p.replica,
                    p.their_seq,
                    p.acked_seq
                )?,
            }
            if let Some(lag) = &p.lag {
                match lang {
                    Lang::En => writeln!(
                        out,
                        "    when its last session ended or caught up ({}): it lacked {} of our changes, owed us {}",
                        lag.at.to_rfc3339(),
                        lag.lacks,
                        lag.owes
                    )?,
                    Lang::Zh => writeln!(
                        out,
                        "    最近一次同步追平或结束时（{}）：它还缺本服务器 {} 条修改，还欠本服务器 {} 条",
                        lag.at.to_rfc3339(),
                        lag.lacks,
                        lag.owes
                    )?,
                }
            }
        }
    }
    match lang {
        Lang::En => writeln!(out, "county policy version {}", s.policy_version)?,
        Lang::Zh if s.policy_version == 0 => writeln!(out, "县级政策：尚未收到，按内置的默认规定计算")?,
        Lang::Zh => writeln!(out, "县级政策：第 {} 版", s.policy_version)?,
    }
    match (&s.newest_report, lang) {
        (Some(r), Lang::En) => writeln!(
            out,
            "newest monthly report: {} ({}, {}, {})",
            r.month,
            r.html.display(),
            r.xlsx.display(),
            r.json.display()
        )?,
        (Some(r), Lang::Zh) => writeln!(
            out,
            "最新的月报：{}（{}、{}、{}）",
            r.month,
            r.html.display(),
            r.xlsx.display(),
            r.json.display()
        )?,
        (None, _) => writeln!(out, "{}", lang.pick("还没有生成过月报", "no monthly report written yet"))?,
    }
    if !s.refusals.is_empty() {
        writeln!(out, "{}", lang.pick("最近的拒收：", "recent refusals:"))?;
        for r in &s.refusals {
            let case = r.case.map(|c| c.to_string()).unwrap_or_default();
            let peer = r.peer.as_deref().unwrap_or("-");
            match lang {
                Lang::En => writeln!(out, "  {} {} case {case} from {peer}: {}", r.at.to_rfc3339(), r.kind, r.detail)?,
                Lang::Zh => writeln!(
                    out,
                    "  {} {} 案件 {case} 来自 {peer}：{}",
                    r.at.to_rfc3339(),
                    audit_kind_zh(&r.kind),
                    refusal_zh(&r.detail)
                )?,
            }
        }
    }
    Ok(())
}

/// An audit record's kind in Chinese.
fn audit_kind_zh(kind: &str) -> &str {
    match kind {
        "refused" => "拒收",
        "quarantined" => "隔离",
        other => other,
    }
}

/// A refusal's detail (`change 1a2b…: out-of-scope (…)`) in Chinese: the change and the reason
/// code's words; the English particulars are left to `--lang en` and `--json`.
fn refusal_zh(detail: &str) -> String {
    let (change, rest) = match detail.strip_prefix("change ").and_then(|d| d.split_once(": ")) {
        Some((hash, rest)) => (Some(hash), rest),
        None => (None, detail),
    };
    let code = rest.split(" (").next().unwrap_or(rest);
    let words = match code {
        "malformed" => "数据无法解析",
        "bad-signature" => "签名不对",
        "unknown-signer" => "签名者的授权还没有收到",
        "out-of-scope" => "超出了作者负责的区域",
        "role" => "作者的角色无权这样修改",
        "revoked" => "作者的证书已被吊销",
        "quarantined" => "无法安全应用，已隔离",
        _ => "其他原因（详情用 --lang en 查看）",
    };
    match change {
        Some(hash) => format!("修改 {hash}：{words}"),
        None => words.to_owned(),
    }
}

fn open_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    CertificateAuthority::open(dir).with_context(|| format!("ca directory {}", dir.display()))
}

/// The fewest characters a server's key file may hold: it is made by a machine
/// (`head -c 32 /dev/urandom | base64`), so it can be long.
const MIN_KEY_FILE_CHARS: usize = 16;
/// The largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Reads a server's key file: readable by the service user only (like an ssh key), one line;
/// a final line break is not part of the secret.
fn read_key_file(path: &Path) -> anyhow::Result<Passphrase> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(BadInput::KeyFileOpen { path: path.to_owned() }.into());
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(BadInput::KeyFileTooLarge { path: path.to_owned() }.into());
    }
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("key file {}", path.display()))?);
    let secret = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if secret.chars().count() < MIN_KEY_FILE_CHARS {
        return Err(BadInput::KeyFileTooShort { path: path.to_owned(), min: MIN_KEY_FILE_CHARS }.into());
    }
    Ok(Passphrase::new(secret.to_owned()))
}

/// `fq-server encrypt`: the plain replica into an encrypted one, checked before it replaces
/// the plain file (which a failure leaves as it was).
fn encrypt(args: &EncryptArgs, out: Output) -> anyhow::Result<()> {
    let secret = read_key_file(&args.key_file)?;
    let path = args.data_dir.join(server::LEDGER_FILE);
    let vault = Vault::for_ledger(&path);
    if vault.protection()? == Protection::Plain {
        // Brings an older file to the current schema before it is copied.
        drop(
            fq_core::ledger::Ledger::open(&path, std::sync::Arc::new(fq_core::clock::SystemClock), Default::default())
                .with_context(|| format!("replica {}", path.display()))?,
        );
    }
    vault
        .encrypt(&secret, WipePolicy::Never, KdfParams::DEFAULT)
        .with_context(|| format!("encrypting replica {}", path.display()))?;
    // Replicas made before encryption were 0755/0644.
    fq_core::vault::private_dir(&args.data_dir)?;
    let human = if out.zh() {
        format!(
            "服务器台账 {} 已加密；以后运行服务器时请加上 --encrypt --key-file {}",
            path.display(),
            args.key_file.display()
        )
    } else {
        format!(
            "replica {} is encrypted; run the server with --encrypt --key-file {}",
            path.display(),
            args.key_file.display()
        )
    };
    out.report(
        &json!({ "ok": true, "ledger": path.display().to_string(), "key_file": vault.key_path().display().to_string() }),
        &human,
    )
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}
