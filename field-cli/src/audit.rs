//! `fq audit`: the merge audit for township officers and county admins
//! (`docs/AUDIT.md`). Runs `fq_core::audit` on a device's or a server's data
//! directory and shows the result: sentences and tables for people (Chinese
//! by default), `schemas/audit-*.v1.schema.json` for programs.
//!
//! Everything but `resolve` opens the ledger read-only, so it works beside a
//! running server. Exit codes: 0 when all is well, 1 when the audit found
//! something to act on (open conflicts, a failed check, a difference, a
//! refusal, a bad signature; the summary when it shows open conflicts or a
//! failed last verify), 2 on bad usage.
//!
//! Text from other replicas (names, titles, values) goes through a
//! [`SafeWriter`]: control characters are shown escaped, never acted on.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fq_core::audit::{
    self, CaseConflicts, CaseHistory, ClockFlag, CompareReport, ConflictFilter, ConflictView, HistoryItem, Provenance,
    RefusalView, SideView, SignatureState, Summary, VerifyOptions, VerifyReport, Who,
};
use fq_core::case::{EventKind, Role};
use fq_core::clock::Timestamp;
use fq_core::doc::{Author, ConflictKind};
use fq_core::ledger::{Ledger, Tier};
use fq_core::store::AuditEntry;
use fq_core::text::{Escape, SafeWriter};
use fq_sync_server::ca::Bundle;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::lang::Lang;
use crate::render::{self, bytes, field_name, json_line, mask_id, minute, table};
use crate::request::Audit;
use crate::vault::Place;
use crate::{enroll, sync};

/// Where the outcome of the last whole-replica verify is kept, beside the ledger.
pub(crate) const VERIFY_FILE: &str = "audit-verify.json";

/// The audit found something to act on: the report was printed; the exit code is 1.
#[derive(Debug, thiserror::Error)]
#[error("the audit found {count} {what}")]
pub(crate) struct Findings {
    /// What was found: `conflicts`, `failures`, `differences`, `refusals`, `problems`.
    pub what: &'static str,
    /// How many.
    pub count: u64,
}

/// The outcome of the last whole verify, kept in [`VERIFY_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LastVerify {
    /// When it ran.
    pub checked_at: Timestamp,
    /// Whether every check passed.
    pub passed: bool,
    /// Failures found.
    pub failures: u64,
    /// Cases checked.
    pub cases: u64,
    /// Whether grants were checked against the county CA.
    pub ca_checked: bool,
}

/// Runs one `fq audit` command on the ledger of `place` (unlocked first, if encrypted).
pub(crate) fn run(out: &mut dyn Write, place: &Place, request: Audit, lang: Lang, json: bool) -> anyhow::Result<()> {
    let dir = place.dir();
    let unlocked = place.unlock()?;
    let open_read_only = || unlocked.open_read_only();
    let mode = if json { Escape::Json } else { Escape::Human };
    let mut out = SafeWriter::new(out, mode);
    let out: &mut dyn Write = &mut out;
    match request {
        Audit::Summary => {
            let ledger = open_read_only()?;
            let s = audit::summary(&ledger)?;
            let last = last_verify(dir);
            summary(out, lang, json, &s, last.as_ref())?;
            let failed_verify = last.as_ref().is_some_and(|l| !l.passed);
            if s.open_conflicts > 0 || failed_verify {
                let count = u64::try_from(s.open_conflicts).unwrap_or(0) + u64::from(failed_verify);
                return Err(Findings { what: "problems", count }.into());
            }
            Ok(())
        }
        Audit::Conflicts { case, since } => {
            let mut ledger = open_read_only()?;
            let case = case.map(|c| ledger.resolve(&c)).transpose()?;
            let found = audit::conflicts(&mut ledger, &ConflictFilter { case, since })?;
            conflicts(out, lang, json, &found)?;
            let count: usize = found.iter().map(|c| c.conflicts.len()).sum();
            if count > 0 {
                return Err(Findings { what: "conflicts", count: count as u64 }.into());
            }
            Ok(())
        }
        Audit::Resolve { case, field, value } => {
            // A server's replica only relays: refused before it is opened for writing.
            if open_read_only()?.identity().tier != Tier::Device {
                return Err(audit::ResolveFailed::Resolve(audit::ResolveError::ServerReplica).into());
            }
            let mut ledger = unlocked.open()?;
            let id = ledger.resolve(&case)?;
            let done = audit::resolve(&mut ledger, id, &field, &value)?;
            if json {
                return json_line(out, &json!({ "ok": true, "resolved": done }));
            }
            let field = field_label(lang, &done.field);
            let written = match done.field.as_str() {
                "status" => event_words(lang, &done.value, None),
                other => self::value(lang, other, &done.value, false),
            };
            match lang {
                Lang::Zh => writeln!(
                    out,
                    "已解决案件 {} 的 {field} 冲突：写入「{}」。同步后各级都会看到这个值，原来的各个值仍记录在 fq audit history 中。",
                    done.number,
                    clip(&written, 80)
                )?,
                Lang::En => writeln!(
                    out,
                    "Resolved the {field} conflict of case {}: wrote \"{}\". Once synced every tier shows it; the earlier values stay in fq audit history.",
                    done.number,
                    clip(&written, 80)
                )?,
            }
            Ok(())
        }
        Audit::History { case, skew_ms, unmasked } => {
            let mut ledger = open_read_only()?;
            let id = ledger.resolve(&case)?;
            let h = audit::history(&mut ledger, id, skew_ms)?;
            history(out, lang, json, &h, unmasked)?;
            let bad = h
                .changes
                .iter()
                .filter(|c| !matches!(c.signature, SignatureState::Valid | SignatureState::WrittenHere))
                .count();
            if bad > 0 {
                return Err(Findings { what: "signature problems", count: bad as u64 }.into());
            }
            Ok(())
        }
        Audit::Verify { case, bundle } => {
            let ledger = open_read_only()?;
            let case = case.map(|c| ledger.resolve(&c)).transpose()?;
            let ca = match bundle {
                Some(file) => Some(enroll::load(&file)?.ca_verifying_key()),
                None => enroll::installed(&ledger, dir).ok().map(|b| b.ca_verifying_key()),
            };
            let bar = progress_bar(json);
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            bar.set_message(lang.pick("校验中", "verifying").to_owned());
            let report = audit::verify(&ledger, &VerifyOptions { case, ca, threads: 0, memo: None }, &progress)?;
            bar.finish_and_clear();
            if report.whole {
                remember_verify(dir, &report);
            }
            verify(out, lang, json, &report, ledger.identity().tier)?;
            if !report.passed() {
                let count = report.failures.len() as u64 + u64::from(!report.integrity);
                return Err(Findings { what: "failures", count }.into());
            }
            Ok(())
        }
        Audit::Compare { server, bundle } => {
            let report = compare_with_parent(dir, open_read_only()?, server, bundle, lang, json)?;
            compare(out, lang, json, &report)?;
            if !report.same() {
                return Err(Findings { what: "differences", count: report.cases.len() as u64 }.into());
            }
            Ok(())
        }
        Audit::Refused { since } => {
            let ledger = open_read_only()?;
            let list = audit::refused(&ledger, since)?;
            refused(out, lang, json, &list)?;
            if !list.is_empty() {
                return Err(Findings { what: "refusals", count: list.len() as u64 }.into());
            }
            Ok(())
        }
        Audit::Log { limit } => {
            let ledger = open_read_only()?;
            let names = audit::Names::of(&ledger)?;
            log(out, lang, json, &ledger, &names, &ledger.audit(limit)?)
        }
    }
}

fn last_verify(dir: &Path) -> Option<LastVerify> {
    let bytes = std::fs::read(dir.join(VERIFY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps the outcome beside the ledger for the summary. A directory that
/// cannot be written (a server's, read by another user) just has no record.
fn remember_verify(dir: &Path, r: &VerifyReport) {
    let last = LastVerify {
        checked_at: r.checked_at,
        passed: r.passed(),
        failures: r.failures.len() as u64,
        cases: r.cases,
        ca_checked: r.ca_checked,
    };
    let Ok(bytes) = serde_json::to_vec(&last) else { return };
    let tmp = dir.join(format!("{VERIFY_FILE}.tmp"));
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(VERIFY_FILE));
    }
}

fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {wide_bar} {pos}/{len}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Dials the parent with the device's bundle (or `--bundle`) and compares.
fn compare_with_parent(
    dir: &Path,
    mut ledger: Ledger,
    server: Option<String>,
    bundle: Option<PathBuf>,
    lang: Lang,
    json: bool,
) -> anyhow::Result<CompareReport> {
    let bundle: Bundle = match bundle {
        Some(file) => enroll::load(&file)?,
        None => enroll::installed(&ledger, dir)?,
    };
    if ledger.identity().tier == Tier::Device {
        enroll::check_fits(&bundle, ledger.identity())?;
    }
    let text = match server {
        Some(s) => s,
        None => sync::remembered(dir).ok_or(sync::AddressError::NoServer)?,
    };
    let addr = sync::resolve(&text)?;
    let runtime = sync::runtime()?;
    let bar = progress_bar(json);
    bar.set_message(match lang {
        Lang::Zh => format!("正在与 {text} 比对…"),
        Lang::En => format!("comparing with {text}…"),
    });
    let options = sync::options();
    let result = runtime.block_on(async {
        let dialed = fq_sync_server::client::dial(&bundle, addr, &options).await?;
        dialed.compare(&mut ledger).await
    });
    bar.finish_and_clear();
    Ok(result?)
}

// ---------------------------------------------------------------------------
// Words.

/// A person, as a change names them: `张三（调解员）`.
fn person(lang: Lang, a: Option<&Author>) -> String {
    render::author(lang, a)
}

/// A role code of a grant (people's roles and the two servers) in words.
fn role_words(lang: Lang, code: &str) -> String {
    match code {
        "township" => lang.pick("乡镇服务器", "township server").to_owned(),
        "county" => lang.pick("县服务器", "county server").to_owned(),
        other => Role::parse(other).map_or_else(|_| other.to_owned(), |r| lang.label(r).to_owned()),
    }
}

fn tier_words(lang: Lang, code: &str) -> &'static str {
    match code {
        "township" => lang.pick("乡镇服务器", "township server"),
        "county" => lang.pick("县服务器", "county server"),
        _ => lang.pick("设备", "device"),
    }
}

/// The four hex digits of a device id that case numbers use.
fn short(device: &str) -> &str {
    device.get(..4).unwrap_or(device)
}

/// A replica or a certificate: `d07（调解员）`, `tw-101（乡镇服务器）`, or
/// `设备 9f3a` when nothing more is known.
fn who(lang: Lang, w: &Who) -> String {
    let role = w
        .role
        .as_deref()
        .map(|r| role_words(lang, r))
        .or_else(|| w.tier.as_deref().map(|t| tier_words(lang, t).to_owned()));
    match (&w.subject, role, &w.device) {
        (Some(s), Some(r), _) => format!("{s}{}", lang.paren(&r)),
        (Some(s), None, _) => s.clone(),
        (None, Some(r), Some(d)) => format!("{r} {}", short(d)),
        (None, None, Some(d)) => format!("{} {}", lang.pick("设备", "device"), short(d)),
        _ => lang.pick("（未知）", "(unknown)").to_owned(),
    }
}

/// A field's name, for the audit's fields too.
pub(crate) fn field_label(lang: Lang, field: &str) -> String {
    let zh = match field {
        "description" => "案情描述",
        "agreement" => "调解协议",
        "status" => "办理状态",
        f if f.starts_with("parties[") && !f.contains('.') => {
            let n = f.trim_start_matches("parties[").trim_end_matches(']').parse::<usize>().map_or(0, |i| i + 1);
            return match lang {
                Lang::Zh => format!("第{n}个当事人"),
                Lang::En => format!("party {n} ({field})"),
            };
        }
        _ => return field_name(lang, field),
    };
    match lang {
        Lang::Zh => zh.to_owned(),
        Lang::En => field.to_owned(),
    }
}

/// Text cut to `max` characters for a line.
fn clip(text: &str, max: usize) -> String {
    let one_line: String = text.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max).collect();
    cut.push('…');
    cut
}

/// A value as people are shown it: codes in words, ID numbers masked unless asked.
fn value(lang: Lang, field: &str, v: &str, unmasked: bool) -> String {
    match field {
        "category" => fq_core::case::Category::parse(v).map_or_else(|_| clip(v, 120), |c| lang.label(c).to_owned()),
        "risk" => fq_core::case::Risk::parse(v).map_or_else(|_| clip(v, 120), |r| lang.label(r).to_owned()),
        f if f.ends_with("id_number") && !unmasked => mask_id(v),
        _ => clip(v, 120),
    }
}

/// A lifecycle event kind (with its text) in words.
fn event_words(lang: Lang, kind: &str, detail: Option<&str>) -> String {
    let label = EventKind::parse(kind).map_or_else(|_| kind.to_owned(), |k| lang.label(k).to_owned());
    match detail {
        Some(d) if !d.is_empty() => {
            let d = fq_core::case::Level::parse(d).map_or_else(|_| clip(d, 60), |l| lang.label(l).to_owned());
            format!("{label}{}{d}", lang.pick("：", ": "))
        }
        _ => label,
    }
}

/// Where a change comes from: `张三（调解员），设备 d07（9f3a），设备时间 …，本机收到 …，经 …`.
fn origin(lang: Lang, p: &Provenance) -> String {
    let mut parts = vec![person(lang, p.author.as_ref())];
    let device = p.device.as_deref().map(short).unwrap_or("?");
    let dev = lang.pick("设备", "device");
    match p.signer.as_ref().and_then(|s| s.subject.as_deref()) {
        Some(cert) => parts.push(format!("{dev} {cert}{}", lang.paren(device))),
        None => parts.push(format!("{dev} {device}")),
    }
    parts.push(format!("{}{}", lang.pick("设备时间 ", "device time "), minute(p.device_time)));
    let received = match (p.written_here, p.received_at) {
        (true, _) => lang.pick("在本机写入", "written here").to_owned(),
        (false, Some(at)) => format!("{}{}", lang.pick("本机收到 ", "received here "), minute(at)),
        (false, None) => {
            lang.pick("收到时间未记录（升级前收到）", "receive time not recorded (before the upgrade)").to_owned()
        }
    };
    parts.push(received);
    if let Some(relay) = &p.relay {
        parts.push(format!("{}{}", lang.pick("经 ", "via "), who(lang, relay)));
    }
    parts.join(lang.pick("，", ", "))
}

// ---------------------------------------------------------------------------
// The summary.

fn summary(out: &mut dyn Write, lang: Lang, json: bool, s: &Summary, last: Option<&LastVerify>) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "summary": s, "last_verify": last }));
    }
    let id = &s.identity;
    let what = match id.tier {
        Tier::Device => format!("{}{}", id.name, lang.paren(lang.label(id.role))),
        t => format!("{} {}", tier_words(lang, t.code()), id.name),
    };
    let device = match id.tier {
        Tier::Device => format!("{}{}", lang.pick("，设备 ", ", device "), short(&id.replica.device().to_string())),
        _ => String::new(),
    };
    match lang {
        Lang::Zh => {
            writeln!(out, "合并审计概要：{what}，区划 {}{device}", id.scope)?;
            writeln!(out, "  案件 {} 件，修改 {} 条，等待前置修改的 {} 条", s.cases, s.changes, s.pending)?;
        }
        Lang::En => {
            writeln!(out, "Merge audit summary: {what}, area {}{device}", id.scope)?;
            writeln!(out, "  {} cases, {} changes, {} waiting for earlier changes", s.cases, s.changes, s.pending)?;
        }
    }
    match (lang, s.open_conflicts) {
        (Lang::Zh, 0) => writeln!(out, "  未解决的冲突：无")?,
        (Lang::En, 0) => writeln!(out, "  open conflicts: none")?,
        (Lang::Zh, n) => {
            writeln!(out, "  ⚠ 未解决的冲突：{} 件案件共 {n} 处（用 fq audit conflicts 查看）", s.conflicted_cases)?
        }
        (Lang::En, n) => {
            writeln!(out, "  ⚠ open conflicts: {n} in {} cases (see fq audit conflicts)", s.conflicted_cases)?
        }
    }
    if s.uncounted_cases > 0 {
        match lang {
            Lang::Zh => writeln!(
                out,
                "    另有 {} 件案件在升级前写入、尚未统计冲突（fq audit conflicts 会逐件检查）",
                s.uncounted_cases
            )?,
            Lang::En => writeln!(
                out,
                "    {} cases were written before the upgrade and are not counted yet (fq audit conflicts checks them)",
                s.uncounted_cases
            )?,
        }
    }
    match lang {
        Lang::Zh => writeln!(
            out,
            "  近30天拒收的修改：{} 条{}",
            s.refusals_30d,
            if s.refusals_30d > 0 { "（用 fq audit refused 查看）" } else { "" }
        )?,
        Lang::En => writeln!(
            out,
            "  changes refused in the last 30 days: {}{}",
            s.refusals_30d,
            if s.refusals_30d > 0 { " (see fq audit refused)" } else { "" }
        )?,
    }
    let verify_line = match (lang, last) {
        (Lang::Zh, None) => "  上次校验：还没有校验过（运行 fq audit verify）".to_owned(),
        (Lang::En, None) => "  last verify: never (run fq audit verify)".to_owned(),
        (Lang::Zh, Some(l)) if l.passed => format!("  上次校验：{}，{} 件案件全部通过", minute(l.checked_at), l.cases),
        (Lang::En, Some(l)) if l.passed => {
            format!("  last verify: {}, all {} cases passed", minute(l.checked_at), l.cases)
        }
        (Lang::Zh, Some(l)) => format!(
            "  ⚠ 上次校验：{}，发现 {} 处问题（重新运行 fq audit verify 查看）",
            minute(l.checked_at),
            l.failures
        ),
        (Lang::En, Some(l)) => format!(
            "  ⚠ last verify: {}, {} problems found (run fq audit verify again to see them)",
            minute(l.checked_at),
            l.failures
        ),
    };
    writeln!(out, "{verify_line}")?;
    if s.peers.is_empty() {
        writeln!(out, "  {}", lang.pick("还没有和任何节点同步过", "no peer has synced yet"))?;
        return Ok(());
    }
    writeln!(out, "  {}", lang.pick("各节点：", "peers:"))?;
    for p in &s.peers {
        let side = if p.parent { lang.pick("上级", "parent") } else { lang.pick("下级", "child") };
        let when = p.last_sync.map_or_else(|| lang.pick("从未", "never").to_owned(), minute);
        let mut line = match lang {
            Lang::Zh => format!("    {side} {}：最近同步 {when}", who(lang, &p.who)),
            Lang::En => format!("    {side} {}: last sync {when}", who(lang, &p.who)),
        };
        if let Some(n) = p.unsent {
            line.push_str(&match lang {
                Lang::Zh => format!("，本机还有 {n} 条修改未被它确认"),
                Lang::En => format!(", {n} of our changes not yet acknowledged by it"),
            });
        }
        if let Some(lag) = &p.lag {
            line.push_str(&match lang {
                Lang::Zh => format!(
                    "；最近一次同步追平或结束时（{}）它还缺本机 {} 条修改、还欠本机 {} 条",
                    minute(lag.at),
                    lag.lacks,
                    lag.owes
                ),
                Lang::En => format!(
                    "; when its last session caught up or ended ({}) it lacked {} of our changes and owed us {}",
                    minute(lag.at),
                    lag.lacks,
                    lag.owes
                ),
            });
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Conflicts.

fn conflicts(out: &mut dyn Write, lang: Lang, json: bool, found: &[CaseConflicts]) -> anyhow::Result<()> {
    if json {
        let count: usize = found.iter().map(|c| c.conflicts.len()).sum();
        return json_line(out, &json!({ "cases": found, "count": count }));
    }
    if found.is_empty() {
        writeln!(out, "{}", lang.pick("没有未解决的冲突。", "No open conflicts."))?;
        return Ok(());
    }
    for case in found {
        match lang {
            Lang::Zh => writeln!(out, "案件 {}「{}」（{}）", case.number, case.title, case.village)?,
            Lang::En => writeln!(out, "Case {} \"{}\" ({})", case.number, case.title, case.village)?,
        }
        for c in &case.conflicts {
            conflict(out, lang, c, false)?;
        }
        let example = case.conflicts.first().map(|c| c.field.as_str()).unwrap_or("title");
        match lang {
            Lang::Zh => {
                writeln!(out, "  核实后解决：fq audit resolve {} --field {example} --value 正确的值\n", case.number)?
            }
            Lang::En => writeln!(
                out,
                "  Once checked, resolve it: fq audit resolve {} --field {example} --value THE_RIGHT_VALUE\n",
                case.number
            )?,
        }
    }
    let count: usize = found.iter().map(|c| c.conflicts.len()).sum();
    match lang {
        Lang::Zh => writeln!(out, "共 {} 件案件、{count} 处冲突。", found.len())?,
        Lang::En => writeln!(out, "{count} conflicts in {} case(s).", found.len())?,
    }
    Ok(())
}

fn side_value(lang: Lang, kind: ConflictKind, field: &str, s: &SideView) -> String {
    match kind {
        ConflictKind::Lifecycle if field == "status" => event_words(lang, &s.value, s.detail.as_deref()),
        ConflictKind::Lifecycle => format!("「{}」", clip(s.detail.as_deref().unwrap_or(&s.value), 120)),
        _ => format!("「{}」", value(lang, field, &s.value, false)),
    }
}

fn conflict(out: &mut dyn Write, lang: Lang, c: &ConflictView, resolved_view: bool) -> anyhow::Result<()> {
    let name = field_label(lang, &c.field);
    let head = match (lang, c.kind) {
        (Lang::Zh, ConflictKind::Field) => format!("{name}：{} 个并发写入的值", c.sides.len()),
        (Lang::En, ConflictKind::Field) => format!("{name}: {} values written concurrently", c.sides.len()),
        (Lang::Zh, ConflictKind::Text) => {
            format!("{name}：{} 人同时修改，合并后的文字可能谁也没写过", c.sides.len())
        }
        (Lang::En, ConflictKind::Text) => {
            format!("{name}: edited by {} people at once; the merged text may be nobody's", c.sides.len())
        }
        (Lang::Zh, ConflictKind::Lifecycle) if c.field == "status" => format!("{name}：相互矛盾的办理事件"),
        (Lang::En, ConflictKind::Lifecycle) if c.field == "status" => {
            format!("{name}: lifecycle events that contradict each other")
        }
        (Lang::Zh, ConflictKind::Lifecycle) => format!("{name}：同时登记了不同的调解协议"),
        (Lang::En, ConflictKind::Lifecycle) => format!("{name}: different agreements recorded at once"),
    };
    let mark = if c.open { "⚠ " } else { "" };
    writeln!(out, "  {mark}{head}")?;
    if c.kind == ConflictKind::Text
        && let Some(shown) = &c.shown
    {
        let label =
            if c.open { lang.pick("现在显示", "shown now") } else { lang.pick("解决后为", "resolved to") };
        writeln!(out, "    {label}{}「{}」", lang.pick("：", ": "), clip(shown, 120))?;
    }
    for (i, s) in c.sides.iter().enumerate() {
        let origin = s.change.as_ref().map(|p| origin(lang, p)).unwrap_or_default();
        let shown = if s.shown && !resolved_view { lang.pick("  ← 当前显示", "  ← shown") } else { "" };
        writeln!(out, "    {}. {}  {origin}{shown}", i + 1, side_value(lang, c.kind, &c.field, s))?;
    }
    if let Some(by) = &c.resolved_by {
        match lang {
            Lang::Zh => {
                writeln!(out, "    已由 {} 于 {} 解决", person(lang, by.author.as_ref()), minute(by.device_time))?
            }
            Lang::En => {
                writeln!(out, "    resolved by {} at {}", person(lang, by.author.as_ref()), minute(by.device_time))?
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// History.

fn signature_words(lang: Lang, s: SignatureState) -> &'static str {
    match s {
        SignatureState::Valid => lang.pick("签名有效", "signature valid"),
        SignatureState::Invalid => lang.pick("⚠ 签名无效", "⚠ signature does not verify"),
        SignatureState::NoGrant => lang.pick("⚠ 签名设备没有授权记录", "⚠ signed by a key with no grant here"),
        SignatureState::WrittenHere => lang.pick("本机写入（同步时签名）", "written here (signed when sent)"),
        SignatureState::NotThisDevice => lang.pick(
            "⚠ 记为本机写入，却是别的设备做的（导入的）",
            "⚠ logged as written here but made on another device (imported)",
        ),
        SignatureState::Unsigned => lang.pick("⚠ 收到时没有签名", "⚠ received without a signature"),
        SignatureState::NotLogged => lang.pick("⚠ 日志里没有这条修改", "⚠ no log row names this change"),
    }
}

fn clock_words(lang: Lang, flag: ClockFlag) -> String {
    match flag {
        ClockFlag::AfterReceipt { by_ms } => match lang {
            Lang::Zh => format!(
                "⚠ 设备时间比本机收到的时间还晚 {}：该设备的时钟不准（设备离线不会造成这种情况）",
                span(lang, by_ms)
            ),
            Lang::En => format!(
                "⚠ the device time is {} after it was received here: that device's clock is wrong (being offline cannot cause this)",
                span(lang, by_ms)
            ),
        },
        ClockFlag::BeforeItsOwnDependency { by_ms } => match lang {
            Lang::Zh => format!("⚠ 设备时间比同一设备之前的修改还早 {}：该设备的时钟被往回调过", span(lang, by_ms)),
            Lang::En => format!(
                "⚠ the device time is {} before an earlier change of the same device: its clock was set back",
                span(lang, by_ms)
            ),
        },
    }
}

/// A duration for people: `61 分钟`, `3 小时`, `2 天`.
fn span(lang: Lang, ms: i64) -> String {
    let minutes = ms / 60_000;
    match (lang, minutes) {
        (Lang::Zh, m) if m < 120 => format!("{m} 分钟"),
        (Lang::En, m) if m < 120 => format!("{m} minutes"),
        (Lang::Zh, m) if m < 48 * 60 => format!("{} 小时", m / 60),
        (Lang::En, m) if m < 48 * 60 => format!("{} hours", m / 60),
        (Lang::Zh, m) => format!("{} 天", m / (24 * 60)),
        (Lang::En, m) => format!("{} days", m / (24 * 60)),
    }
}

fn op_words(lang: Lang, item: &HistoryItem) -> String {
    let op = item.op.as_str();
    if op == "create" {
        return lang.pick("登记案件", "recorded the case").to_owned();
    }
    if op.starts_with("edit:") {
        return lang.pick("修改", "edited").to_owned();
    }
    EventKind::parse(op).map_or_else(|_| op.to_owned(), |k| lang.label(k).to_owned())
}

fn history(out: &mut dyn Write, lang: Lang, json: bool, h: &CaseHistory, unmasked: bool) -> anyhow::Result<()> {
    if json {
        return json_line(out, h);
    }
    let minutes = h.skew_ms / 60_000;
    match lang {
        Lang::Zh => writeln!(
            out,
            "案件 {}「{}」（{}）的完整经过，共 {} 条修改（设备时间与收到时间相差超过 {minutes} 分钟且无法用离线解释的，标 ⚠）",
            h.number,
            h.title,
            h.village,
            h.changes.len()
        )?,
        Lang::En => writeln!(
            out,
            "The full timeline of case {} \"{}\" ({}), {} changes (⚠ where the device time and the receive time differ by more than {minutes} minutes in a way being offline cannot explain)",
            h.number,
            h.title,
            h.village,
            h.changes.len()
        )?,
    }
    for (i, c) in h.changes.iter().enumerate() {
        writeln!(out, "{:>3}. {}  {}", i + 1, op_words(lang, c), signature_words(lang, c.signature))?;
        writeln!(out, "     {}", origin(lang, &c.change))?;
        if let Some(flag) = c.clock {
            writeln!(out, "     {}", clock_words(lang, flag))?;
        }
        for e in &c.events {
            writeln!(out, "     {}", render::event(lang, e))?;
        }
        for f in &c.fields {
            let new =
                f.new.as_deref().map(|v| format!("「{}」", value(lang, &f.field, v, unmasked))).unwrap_or_default();
            let old: Vec<String> = f
                .old
                .iter()
                .map(|s| {
                    let by = s.change.as_ref().map(|p| person(lang, p.author.as_ref()));
                    match by {
                        Some(by) => format!("「{}」({by})", value(lang, &f.field, &s.value, unmasked)),
                        None => format!("「{}」", value(lang, &f.field, &s.value, unmasked)),
                    }
                })
                .collect();
            let name = field_label(lang, &f.field);
            let arrow =
                if old.is_empty() { String::new() } else { format!("{} → ", old.join(lang.pick(" 和 ", " and "))) };
            writeln!(out, "     {name}{}{arrow}{new}", lang.pick("：", ": "))?;
        }
        if !c.resolves.is_empty() {
            let fields: Vec<String> = c.resolves.iter().map(|f| field_label(lang, f)).collect();
            match lang {
                Lang::Zh => writeln!(out, "     ✓ 这条修改解决了冲突：{}", fields.join("、"))?,
                Lang::En => writeln!(out, "     ✓ this change resolved the conflict on {}", fields.join(", "))?,
            }
        }
    }
    if !h.conflicts.is_empty() {
        writeln!(out, "{}", lang.pick("冲突（包括已解决的）：", "Conflicts (resolved ones too):"))?;
        for c in &h.conflicts {
            conflict(out, lang, c, !c.open)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Verify.

fn failure_words(lang: Lang, f: &audit::Failure) -> String {
    let p = &f.params;
    let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
    match (lang, f.code.as_str()) {
        (Lang::Zh, "bad-signature") => {
            format!("签名无效：这条修改在签名之后被改动过，或签名本身被改过（签名设备 {}）", s("subject"))
        }
        (Lang::En, "bad-signature") => format!(
            "bad signature: the change or its signature was altered after it was signed (signer {})",
            s("subject")
        ),
        (Lang::Zh, "no-grant") => "签名设备的授权记录不见了（grants 表里没有它的证书授权）".to_owned(),
        (Lang::En, "no-grant") => "the signer's grant is missing (no grant for its key in the grants table)".to_owned(),
        (Lang::Zh, "grant-not-from-ca") => format!("证书授权 {} 不是本县根证书签发的，或被改动过", s("subject")),
        (Lang::En, "grant-not-from-ca") => {
            format!("grant {} is not signed by this county's CA, or was altered", s("subject"))
        }
        (Lang::Zh, "grant-unreadable") => "签名设备的授权记录无法读取".to_owned(),
        (Lang::En, "grant-unreadable") => "the signer's grant cannot be read".to_owned(),
        (Lang::Zh, "unsigned-received") => "从别处收到的修改没有签名".to_owned(),
        (Lang::En, "unsigned-received") => "a change received from elsewhere carries no signature".to_owned(),
        (Lang::Zh, "not-this-device") => {
            format!("记为本机写入，却是另一台设备（{}）做的：可能是导入的", short(&s("device")))
        }
        (Lang::En, "not-this-device") => {
            format!("logged as written here, but made on another device ({}): an import?", short(&s("device")))
        }
        (Lang::Zh, "written-on-server") => "服务器台账里有本机写入的修改：服务器只转发，不应写入".to_owned(),
        (Lang::En, "written-on-server") => {
            "a change written on a server's replica: servers relay, they never write".to_owned()
        }
        (Lang::Zh, "server-authored") => format!("修改由服务器证书 {} 签名：服务器只转发，不能写", s("subject")),
        (Lang::En, "server-authored") => {
            format!("signed by the server certificate {}: servers relay, they never write", s("subject"))
        }
        (Lang::Zh, "out-of-scope") => {
            format!("作者 {}（区域 {}）无权修改村 {} 的案件", s("subject"), s("scope"), s("village"))
        }
        (Lang::En, "out-of-scope") => {
            format!("author {} (area {}) may not write in village {}", s("subject"), s("scope"), s("village"))
        }
        (Lang::Zh, "role-cannot-accept") => format!("{} 无权在这一级接收上报的案件", s("subject")),
        (Lang::En, "role-cannot-accept") => format!("{} may not accept an escalation at that level", s("subject")),
        (Lang::Zh, "damaged-document") => "案件文档已损坏，无法读取：存储的修改已和日志对不上".to_owned(),
        (Lang::En, "damaged-document") => {
            "the case document is damaged and does not load: the stored changes no longer match the log".to_owned()
        }
        (Lang::Zh, "heads-mismatch") => "案件文档的头部记录和其中的修改对不上".to_owned(),
        (Lang::En, "heads-mismatch") => {
            "the document's recorded heads are not those of the changes it holds".to_owned()
        }
        (Lang::Zh, "log-row-unresolved") => "日志行指向的修改在案件文档里找不到：文档或日志被改过".to_owned(),
        (Lang::En, "log-row-unresolved") => {
            "a log row names no change of the case's document: the document or the log was altered".to_owned()
        }
        (Lang::Zh, "duplicate-log-row") => "同一条修改在日志里记了两次".to_owned(),
        (Lang::En, "duplicate-log-row") => "the same change is logged twice".to_owned(),
        (Lang::Zh, "change-not-in-log") => "案件文档里有一条修改，日志里却没有".to_owned(),
        (Lang::En, "change-not-in-log") => "the document holds a change that no log row names".to_owned(),
        (Lang::Zh, "missing-document") => "案件列表里有这件案件，但它的文档不见了".to_owned(),
        (Lang::En, "missing-document") => "the case is listed but its document is missing".to_owned(),
        (Lang::Zh, "log-rows-without-case") => "日志里有修改指向一件不存在的案件".to_owned(),
        (Lang::En, "log-rows-without-case") => "log rows name a case that does not exist".to_owned(),
        (Lang::Zh, "unreadable-log-row") => format!("日志行的 {} 被改成了无法读取的值", s("value")),
        (Lang::En, "unreadable-log-row") => format!("a log row's {} holds a value that cannot be read", s("value")),
        (Lang::Zh, "unreadable-case-row") => "案件列表中这一行被改成了无法读取的值".to_owned(),
        (Lang::En, "unreadable-case-row") => "the case's list row holds a value that cannot be read".to_owned(),
        (Lang::Zh, "projection-mismatch") => format!("案件列表显示的内容与案件文档不一致：{}", columns(lang, p)),
        (Lang::En, "projection-mismatch") => {
            format!("the case list shows something else than the document: {}", columns(lang, p))
        }
        (Lang::Zh, "integrity-check-failed") => "SQLite 数据库完整性检查未通过：文件已损坏".to_owned(),
        (Lang::En, "integrity-check-failed") => "SQLite's integrity check failed: the file is damaged".to_owned(),
        (_, other) => other.to_owned(),
    }
}

fn columns(lang: Lang, p: &serde_json::Value) -> String {
    let list: Vec<String> = p["columns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    let column = c["column"].as_str().unwrap_or("");
                    let name = field_label(lang, column);
                    match lang {
                        Lang::Zh => format!(
                            "{name} 列表为「{}」、文档为「{}」",
                            clip(c["stored"].as_str().unwrap_or(""), 40),
                            clip(c["document"].as_str().unwrap_or(""), 40)
                        ),
                        Lang::En => format!(
                            "{name} is \"{}\" in the list, \"{}\" in the document",
                            clip(c["stored"].as_str().unwrap_or(""), 40),
                            clip(c["document"].as_str().unwrap_or(""), 40)
                        ),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    list.join(lang.pick("；", "; "))
}

fn check_words(lang: Lang, c: audit::Check) -> &'static str {
    match c {
        audit::Check::Signature => lang.pick("签名", "signatures"),
        audit::Check::Authority => lang.pick("权限", "authority"),
        audit::Check::Chain => lang.pick("哈希链", "hash chain"),
        audit::Check::Projection => lang.pick("案件列表", "case list"),
        audit::Check::Integrity => lang.pick("数据库完整性", "database integrity"),
    }
}

fn verify(out: &mut dyn Write, lang: Lang, json: bool, r: &VerifyReport, tier: Tier) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "passed": r.passed(), "report": r }));
    }
    let what =
        if r.whole { lang.pick("整个台账", "the whole replica") } else { lang.pick("一件案件", "one case") };
    match lang {
        Lang::Zh => writeln!(
            out,
            "校验{what}：{} 件案件、{} 条修改、{} 个签名，用时 {:.1} 秒",
            r.cases,
            r.changes,
            r.signatures,
            r.elapsed_ms as f64 / 1000.0
        )?,
        Lang::En => writeln!(
            out,
            "Verified {what}: {} cases, {} changes, {} signatures in {:.1} s",
            r.cases,
            r.changes,
            r.signatures,
            r.elapsed_ms as f64 / 1000.0
        )?,
    }
    let checks = [
        audit::Check::Signature,
        audit::Check::Authority,
        audit::Check::Chain,
        audit::Check::Projection,
        audit::Check::Integrity,
    ];
    let line: Vec<String> = checks
        .iter()
        .map(|c| {
            let ok = !r.failures.iter().any(|f| f.check == *c) && (*c != audit::Check::Integrity || r.integrity);
            format!("{} {}", if ok { "✓" } else { "✗" }, check_words(lang, *c))
        })
        .collect();
    writeln!(out, "  {}", line.join("  "))?;
    if !r.ca_checked {
        let hint = if tier == Tier::Device {
            lang.pick(
                "  注意：本机没有证书包，证书授权没有对照县级根证书核对（fq enroll 登记后即可核对）。",
                "  Note: no bundle here, so grants were not checked against the county CA (enroll with fq enroll to check them).",
            )
        } else {
            lang.pick(
                "  注意：证书授权没有对照县级根证书核对；用 --bundle 指定本服务器的证书包即可核对。",
                "  Note: grants were not checked against the county CA; give this server's bundle with --bundle to check them.",
            )
        };
        writeln!(out, "{hint}")?;
    }
    if r.passed() {
        writeln!(out, "{}", lang.pick("全部通过。", "Everything passed."))?;
        return Ok(());
    }
    match lang {
        Lang::Zh => writeln!(out, "✗ 发现 {} 处问题：", r.failures.len())?,
        Lang::En => writeln!(out, "✗ {} problems found:", r.failures.len())?,
    }
    for f in &r.failures {
        let mut place = Vec::new();
        if let Some(n) = &f.number {
            place.push(format!("{}{n}", lang.pick("案件 ", "case ")));
        }
        if let Some(c) = &f.change {
            place.push(format!("{}{}", lang.pick("修改 ", "change "), c.get(..16).unwrap_or(c)));
        }
        if let Some(seq) = f.log_seq {
            place.push(match lang {
                Lang::Zh => format!("日志第 {seq} 条"),
                Lang::En => format!("log position {seq}"),
            });
        }
        let place = if place.is_empty() {
            String::new()
        } else {
            format!("{}{}", place.join(lang.pick("，", ", ")), lang.pick("：", ": "))
        };
        writeln!(out, "  [{}] {place}{}", check_words(lang, f.check), failure_words(lang, f))?;
    }
    writeln!(
        out,
        "{}",
        lang.pick(
            "请勿再向这个台账写入，把这份结果报给县综治中心；可从上级服务器重新同步恢复。",
            "Stop writing to this replica and report this to the county centre; it can be restored by syncing from its parent.",
        )
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Compare.

fn change_line(lang: Lang, c: &audit::ChangeSummary) -> String {
    let op = if c.op == "create" {
        lang.pick("登记案件", "recorded the case").to_owned()
    } else if let Some(fields) = c.op.strip_prefix("edit:") {
        let names: Vec<String> = fields.split(',').map(|f| field_label(lang, f)).collect();
        format!("{}{}", lang.pick("修改：", "edited: "), names.join(lang.list_sep()))
    } else {
        EventKind::parse(&c.op).map_or_else(|_| c.op.clone(), |k| lang.label(k).to_owned())
    };
    let device = c.device.as_deref().map(short).unwrap_or("?");
    format!(
        "{}  {op}  {}  {}{device}  ({})",
        minute(c.device_time),
        person(lang, c.author.as_ref()),
        lang.pick("设备 ", "device "),
        c.hash.get(..16).unwrap_or(&c.hash)
    )
}

fn compare(out: &mut dyn Write, lang: Lang, json: bool, r: &CompareReport) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "same": r.same(), "report": r }));
    }
    let parent = match (&r.parent_tier, &r.parent_scope) {
        (Some(t), Some(s)) => format!("{}{}", tier_words(lang, t.code()), lang.paren(s)),
        _ => lang.pick("上级", "the parent").to_owned(),
    };
    match lang {
        Lang::Zh => writeln!(
            out,
            "与{parent}比对区划 {} 内的案件（本机 {} 件）：{}（流量：发送 {}，接收 {}；双方都没有改动）",
            r.scope,
            r.cases_here,
            if r.same() { "完全一致".to_owned() } else { format!("{} 件不一致", r.cases.len()) },
            bytes(r.bytes_out),
            bytes(r.bytes_in)
        )?,
        Lang::En => writeln!(
            out,
            "Compared the cases of {} (here: {}) with {parent}: {} (traffic: {} sent, {} received; nothing changed on either side)",
            r.scope,
            r.cases_here,
            if r.same() { "identical".to_owned() } else { format!("{} cases differ", r.cases.len()) },
            bytes(r.bytes_out),
            bytes(r.bytes_in)
        )?,
    }
    for d in &r.cases {
        let number = d.number.clone().unwrap_or_else(|| lang.pick("（编号未知）", "(number unknown)").to_owned());
        let title = d.title.as_deref().map(|t| match lang {
            Lang::Zh => format!("「{t}」"),
            Lang::En => format!(" \"{t}\""),
        });
        match lang {
            Lang::Zh => writeln!(out, "  案件 {number}{}", title.unwrap_or_default())?,
            Lang::En => writeln!(out, "  Case {number}{}", title.unwrap_or_default())?,
        }
        if !d.held_here {
            writeln!(out, "    {}", lang.pick("本机没有这件案件", "this replica does not hold the case"))?;
        }
        if !d.held_there {
            writeln!(out, "    {}", lang.pick("上级没有这件案件", "the parent does not hold the case"))?;
        }
        if !d.here_lacks.is_empty() {
            match lang {
                Lang::Zh => writeln!(out, "    本机缺 {} 条：", d.here_lacks.len())?,
                Lang::En => writeln!(out, "    missing here ({}):", d.here_lacks.len())?,
            }
            for c in &d.here_lacks {
                writeln!(out, "      {}", change_line(lang, c))?;
            }
        }
        if !d.there_lacks.is_empty() {
            match lang {
                Lang::Zh => writeln!(out, "    上级缺 {} 条：", d.there_lacks.len())?,
                Lang::En => writeln!(out, "    missing at the parent ({}):", d.there_lacks.len())?,
            }
            for c in &d.there_lacks {
                writeln!(out, "      {}", change_line(lang, c))?;
            }
        }
    }
    if !r.same() {
        writeln!(
            out,
            "{}",
            lang.pick(
                "同步（fq sync，或等待服务器自动同步）后再比对，应当完全一致。",
                "After a sync (fq sync, or the servers' own link) a new comparison should find nothing.",
            )
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Refusals and the raw log.

fn reason_words(lang: Lang, r: &RefusalView) -> String {
    let p = r.params.clone().unwrap_or_default();
    let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
    let why = s("why");
    match (lang, r.reason.as_deref(), why.as_str()) {
        (_, None, _) => r.detail.clone(),
        (Lang::Zh, Some("out-of-scope"), _) => {
            format!("作者的区域（{}）不包括案件所在的村（{}）", s("scope"), s("village"))
        }
        (Lang::En, Some("out-of-scope"), _) => {
            format!("the author's area ({}) does not cover the case's village ({})", s("scope"), s("village"))
        }
        (Lang::Zh, Some("bad-signature"), "unsigned") => "没有签名".to_owned(),
        (Lang::En, Some("bad-signature"), "unsigned") => "not signed".to_owned(),
        (Lang::Zh, Some("bad-signature"), _) => "签名无效（修改或签名被改动过）".to_owned(),
        (Lang::En, Some("bad-signature"), _) => {
            "the signature does not verify (the change or its signature was altered)".to_owned()
        }
        (Lang::Zh, Some("unknown-signer"), _) => "签名设备没有授权记录（同步时授权还没到）".to_owned(),
        (Lang::En, Some("unknown-signer"), _) => {
            "signed by a key with no grant here (its grant had not arrived)".to_owned()
        }
        (Lang::Zh, Some("role"), "server-wrote") => format!("由服务器 {} 写的：服务器只转发，不能写", s("subject")),
        (Lang::En, Some("role"), "server-wrote") => {
            format!("written by the server {}: servers relay, they never write", s("subject"))
        }
        (Lang::Zh, Some("role"), _) => "作者的角色无权写入".to_owned(),
        (Lang::En, Some("role"), _) => "the author's role may not write it".to_owned(),
        (Lang::Zh, Some("quarantined"), "another-case") => "已隔离：这条修改属于另一件案件".to_owned(),
        (Lang::En, Some("quarantined"), "another-case") => "quarantined: the change belongs to another case".to_owned(),
        (Lang::Zh, Some("quarantined"), "moves-village") => {
            format!("已隔离：这条修改会把案件移到别的村（{}）", s("village"))
        }
        (Lang::En, Some("quarantined"), "moves-village") => {
            format!("quarantined: the change would move the case to another village ({})", s("village"))
        }
        (Lang::Zh, Some("quarantined"), _) => "已隔离：无法合并（数据异常）".to_owned(),
        (Lang::En, Some("quarantined"), _) => "quarantined: it cannot be merged (abnormal data)".to_owned(),
        (Lang::Zh, Some("malformed"), _) => "数据格式不对".to_owned(),
        (Lang::En, Some("malformed"), _) => "malformed change".to_owned(),
        (_, Some(other), _) => other.to_owned(),
    }
}

fn refused(out: &mut dyn Write, lang: Lang, json: bool, list: &[RefusalView]) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "refused": list, "count": list.len() }));
    }
    if list.is_empty() {
        writeln!(out, "{}", lang.pick("没有被拒收的修改。", "No change was refused."))?;
        return Ok(());
    }
    let mut t = table();
    t.set_header(match lang {
        Lang::Zh => ["时间", "案件", "发送方", "作者（签名证书）", "原因"],
        Lang::En => ["Time", "Case", "Sent by", "Author (signing certificate)", "Reason"],
    });
    for r in list {
        let case = r.number.clone().unwrap_or_else(|| lang.pick("（本机没有此案件）", "(not held here)").to_owned());
        t.add_row([
            minute(r.at),
            case,
            r.sender.as_ref().map(|w| who(lang, w)).unwrap_or_default(),
            r.author.as_ref().map(|w| who(lang, w)).unwrap_or_default(),
            reason_words(lang, r),
        ]);
    }
    writeln!(out, "{t}")?;
    match lang {
        Lang::Zh => writeln!(out, "共 {} 条。被拒收的修改没有进入本台账，也不会再转发。", list.len())?,
        Lang::En => writeln!(out, "{} in all. Refused changes are not in this replica and go no further.", list.len())?,
    }
    Ok(())
}

fn log(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    ledger: &Ledger,
    names: &audit::Names,
    entries: &[AuditEntry],
) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "entries": entries, "count": entries.len() }));
    }
    if entries.is_empty() {
        writeln!(
            out,
            "{}",
            lang.pick(
                "没有审计记录：没有被拒收的修改，也没有并发冲突。",
                "No audit records: nothing refused, no conflicts."
            )
        )?;
        return Ok(());
    }
    let mut t = table();
    t.set_header(match lang {
        Lang::Zh => ["时间", "类型", "案件", "来源", "详情"],
        Lang::En => ["Time", "Kind", "Case", "From", "Detail"],
    });
    for e in entries {
        let kind = match (lang, e.kind.as_str()) {
            (Lang::Zh, "refused") => "拒收",
            (Lang::Zh, "quarantined") => "隔离",
            (Lang::Zh, "conflict") => "并发修改",
            (Lang::Zh, "merged") => "合并",
            (Lang::Zh, "workflow") => "流程冲突",
            (_, other) => other,
        };
        let case = e.case.and_then(|c| ledger.case_row(c).ok().flatten()).map(|r| r.number).unwrap_or_default();
        let from = e.peer.as_deref().and_then(|p| names.replica_text(p)).map(|w| who(lang, &w)).unwrap_or_default();
        let detail = match (e.code.as_deref(), &e.params) {
            (Some("conflict"), Some(p)) => {
                let fields: Vec<String> = p["fields"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|f| f.as_str()).map(|f| field_label(lang, f)).collect())
                    .unwrap_or_default();
                format!(
                    "{}{}",
                    lang.pick("并发修改后出现冲突：", "concurrent edits now disagree on "),
                    fields.join(lang.list_sep())
                )
            }
            (Some("workflow"), Some(p)) => {
                let rule = render::violation_words(lang, p["rule"].as_str().unwrap_or_default());
                match p["by"].as_str() {
                    Some(by) => format!("{rule}{}", lang.paren(by)),
                    None => rule.to_owned(),
                }
            }
            (Some(_), _) => {
                let view = RefusalView {
                    at: e.at,
                    kind: e.kind.clone(),
                    case: e.case,
                    number: None,
                    sender: None,
                    author: None,
                    change: e.change.clone(),
                    reason: e.code.clone(),
                    params: e.params.clone(),
                    detail: e.detail.clone(),
                };
                reason_words(lang, &view)
            }
            // Written before schema 4: only the words kept then.
            (None, _) => e.detail.clone(),
        };
        t.add_row([minute(e.at), kind.to_owned(), case, from, detail]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}

/// The words for a finding of the audit (exit 1; the report was printed).
pub(crate) fn findings_words(lang: Lang, f: &Findings) -> String {
    let n = f.count;
    match (lang, f.what) {
        (Lang::Zh, "conflicts") => format!("发现 {n} 处未解决的冲突。"),
        (Lang::Zh, "failures") => format!("校验发现 {n} 处问题。"),
        (Lang::Zh, "differences") => format!("与上级有 {n} 件案件不一致。"),
        (Lang::Zh, "refusals") => format!("有 {n} 条被拒收的修改。"),
        (Lang::Zh, "signature problems") => format!("有 {n} 条修改的签名有问题。"),
        (Lang::Zh, _) => format!("审计发现 {n} 个需要处理的问题。"),
        (Lang::En, "conflicts") => format!("{n} open conflicts found."),
        (Lang::En, "failures") => format!("verify found {n} problems."),
        (Lang::En, "differences") => format!("{n} cases differ from the parent."),
        (Lang::En, "refusals") => format!("{n} changes were refused."),
        (Lang::En, "signature problems") => format!("{n} changes have signature problems."),
        (Lang::En, _) => format!("the audit found {n} problems to look at."),
    }
}
