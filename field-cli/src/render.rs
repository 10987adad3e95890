//! What `fq` prints: plain sentences, tables and case cards for people, and
//! stable snake_case JSON for programs (`--json`, shapes in `schemas/`).
//!
//! Times are shown to people in China Standard Time (UTC+8, no daylight
//! saving), the time every user and report works in; JSON keeps the core's
//! milliseconds since the epoch.
//!
//! Personal data: people see ID numbers masked unless they ask with
//! `--unmasked`. JSON of `case show` and of write commands carries them in
//! full: it is read by programs on the owner's own device, which already holds
//! the unmasked ledger. Exports, which leave the device, mask them (see `export`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;

use chrono::{DateTime, FixedOffset};
use comfy_table::{ContentArrangement, Table, presets};
use fq_core::case::{Category, EventKind, IdNumber, Level, Outcome, Risk};
use fq_core::clock::Timestamp;
use fq_core::doc::{Author, CaseState, EventView, FieldConflict, HistoryEntry, PartyView};
use fq_core::ledger::{CaseView, Identity};
use fq_core::store::CaseRow;
use fq_core::sync::session::PolicyOutcome;
use fq_core::sync::wire::RefuseReason;
use fq_sync_server::ca::{Bundle, PeerIdentity};
use fq_sync_server::client::SyncReport;
use fq_sync_server::net::{AcceptError, PeerMismatch};
use fq_sync_server::peer::{PeerEvent, PeerSession};
use serde::Serialize;
use serde_json::json;

use crate::lang::Lang;
use crate::request::Action;

/// China Standard Time, in seconds east of UTC.
const CST_OFFSET_SECS: i32 = 8 * 3600;

/// A time as a China Standard Time date-time.
pub(crate) fn cst(t: Timestamp) -> Option<DateTime<FixedOffset>> {
    let offset = FixedOffset::east_opt(CST_OFFSET_SECS)?;
    t.to_utc().map(|u| u.with_timezone(&offset))
}

/// `2026-11-21` in China time.
pub(crate) fn date(t: Timestamp) -> String {
    cst(t).map_or_else(|| t.0.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// `2026-11-21 13:04` in China time.
pub(crate) fn minute(t: Timestamp) -> String {
    cst(t).map_or_else(|| t.0.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string())
}

/// An ID number with its middle hidden. Numbers that do not parse (written by
/// an older or foreign replica) are hidden the same way, never shown in full.
pub(crate) fn mask_id(id: &str) -> String {
    if let Ok(n) = IdNumber::parse(id) {
        return n.masked();
    }
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let (head, rest) = chars.split_at(4);
    let (middle, tail) = rest.split_at(rest.len() - 4);
    format!("{}{}{}", head.iter().collect::<String>(), "*".repeat(middle.len()), tail.iter().collect::<String>())
}

/// Writes one value as a line of compact JSON.
pub(crate) fn json_line(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    // Through io::Error, so a closed pipe is recognised as one.
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// After `fq init`.
pub(crate) fn initialized(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    id: &Identity,
    dir: &Path,
) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "ok": true, "identity": id, "data_dir": dir.to_string_lossy() }));
    }
    let role = lang.label(id.role);
    match lang {
        Lang::Zh => writeln!(out, "已建立台账：{}（{role}），区划 {}，保存在 {}", id.name, id.scope, dir.display())?,
        Lang::En => writeln!(out, "Ledger set up for {} ({role}), area {}, in {}", id.name, id.scope, dir.display())?,
    }
    Ok(())
}

/// After `fq enroll` (and the enrolment part of `fq init --bundle`).
pub(crate) fn enrolled(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    id: &Identity,
    bundle: &Bundle,
    file: &Path,
) -> anyhow::Result<()> {
    if json {
        return json_line(
            out,
            &json!({
                "ok": true,
                "identity": id,
                "certificate": {
                    "id": bundle.id().as_str(),
                    "role": bundle.role().code(),
                    "scope": bundle.scope().as_str(),
                    "county": bundle.county().as_str(),
                    "serial": bundle.serial().to_string(),
                },
                "bundle": file.to_string_lossy(),
            }),
        );
    }
    match lang {
        Lang::Zh => writeln!(
            out,
            "本机已登记：证书 {}（{}，区划 {}），证书包保存在 {}。现在可以用 fq sync --server 地址 同步。",
            bundle.id(),
            bundle.role(),
            bundle.scope(),
            file.display()
        )?,
        Lang::En => writeln!(
            out,
            "Device enrolled: certificate {} ({}, area {}), bundle kept in {}. Sync with fq sync --server ADDR.",
            bundle.id(),
            bundle.role(),
            bundle.scope(),
            file.display()
        )?,
    }
    Ok(())
}

/// The stable code of a refusal reason, as `--json` writes it.
pub(crate) fn refusal_code(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::Malformed => "malformed",
        RefuseReason::BadSignature => "bad-signature",
        RefuseReason::UnknownSigner => "unknown-signer",
        RefuseReason::OutOfScope => "out-of-scope",
        RefuseReason::Role => "role",
        RefuseReason::Revoked => "revoked",
        RefuseReason::Quarantined => "quarantined",
        RefuseReason::Other => "other",
    }
}

/// A refusal reason in words.
pub(crate) fn refusal_words(lang: Lang, reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::Malformed => lang.pick("数据格式不对", "malformed change"),
        RefuseReason::BadSignature => lang.pick("签名无效", "bad signature"),
        RefuseReason::UnknownSigner => lang.pick("签名设备未登记", "signed by an unknown device"),
        RefuseReason::OutOfScope => lang.pick("案件不在本机负责的区域内", "case outside the author's area"),
        RefuseReason::Role => lang.pick("角色无权修改", "the author's role may not write it"),
        RefuseReason::Revoked => lang.pick("证书已被吊销", "certificate revoked"),
        RefuseReason::Quarantined => lang.pick("已隔离待查", "quarantined"),
        RefuseReason::Other => lang.pick("其他原因", "other reason"),
    }
}

/// Whom `fq sync` synced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncedWith {
    /// The township (or county) server.
    Server,
    /// Another device of the area (`fq sync --peer`).
    Device,
}

/// A device as people read it, from its certificate: `调解员 d07（532924101201）`,
/// `d07 (mediator, 532924101201)`. Certificates carry no person's name.
pub(crate) fn device_words(lang: Lang, peer: &PeerIdentity) -> String {
    let role = match peer.role.person_role() {
        Some(role) => lang.label(role),
        None => lang.pick("服务器", "server"),
    };
    match lang {
        Lang::Zh => format!("{role} {}（{}）", peer.id, peer.scope),
        Lang::En => format!("{} ({}, {})", peer.id, role.to_lowercase(), peer.scope),
    }
}

/// `fq sync`'s summary, with the server or a device: sentences, or
/// `schemas/sync-summary.v1.schema.json`.
pub(crate) fn sync_summary(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    address: &str,
    report: &SyncReport,
    (urgent, normal): (i64, i64),
    with: SyncedWith,
) -> anyhow::Result<()> {
    let s = &report.stats;
    let device = with == SyncedWith::Device;
    let mut by_reason: BTreeMap<&'static str, (RefuseReason, u64)> = BTreeMap::new();
    for r in &report.refused {
        by_reason.entry(refusal_code(r.reason)).or_insert((r.reason, 0)).1 += 1;
    }
    if json {
        let groups: Vec<_> = by_reason
            .iter()
            .map(|(code, (reason, count))| json!({ "reason": code, "count": count, "message": refusal_words(lang, *reason) }))
            .collect();
        let changes: Vec<_> = report
            .refused
            .iter()
            .map(|r| {
                json!({
                    "case": r.case,
                    "hash": r.hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    "reason": refusal_code(r.reason),
                    "detail": r.text,
                })
            })
            .collect();
        let other = json!({
            "address": address,
            "id": report.server.id.as_str(),
            "role": report.server.role.code(),
            "scope": report.server.scope.as_str(),
        });
        let mut value = json!({
            "ok": true,
            "sent": s.sent,
            "received": s.received,
            "duplicates": s.duplicates,
            "refused": { "count": report.refused.len(), "by_reason": groups, "changes": changes },
            "refused_here": s.refused_here,
            "policy": report.policy.as_ref().map(policy_json),
            "clock_offset_ms": report.peer_minus_ours_ms.map(|o| -o),
            "bytes": { "sent": s.bytes_out, "received": s.bytes_in },
            "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            "waiting": { "urgent": urgent, "normal": normal },
        });
        value[if device { "peer" } else { "server" }] = other;
        return json_line(out, &value);
    }
    let server = &report.server.id;
    let secs = report.elapsed.as_secs_f64();
    match (lang, device) {
        (Lang::Zh, false) => writeln!(out, "同步完成（服务器 {server}，{address}，用时 {secs:.1} 秒）")?,
        (Lang::En, false) => writeln!(out, "Sync complete (server {server}, {address}, {secs:.1} s)")?,
        (Lang::Zh, true) => {
            writeln!(out, "与{}的设备同步完成（{address}，用时 {secs:.1} 秒）", device_words(lang, &report.server))?
        }
        (Lang::En, true) => {
            writeln!(out, "Sync with device {} complete ({address}, {secs:.1} s)", device_words(lang, &report.server))?
        }
    }
    match lang {
        Lang::Zh => {
            writeln!(out, "  发送修改 {} 条，接收修改 {} 条（另有 {} 条本机已有）", s.sent, s.received, s.duplicates)?
        }
        Lang::En => {
            writeln!(out, "  sent {} changes, received {} ({} already here)", s.sent, s.received, s.duplicates)?
        }
    }
    if urgent + normal > 0 {
        match (lang, device) {
            (Lang::Zh, false) => {
                writeln!(out, "  ⚠ 仍有修改未送达服务器：紧急 {urgent} 条，一般 {normal} 条；请稍后再同步")?
            }
            (Lang::En, false) => writeln!(
                out,
                "  ⚠ changes not yet delivered to the server: {urgent} urgent, {normal} normal; sync again later"
            )?,
            // Handing changes to a device delivers nothing to the township: say what is left.
            (Lang::Zh, true) => writeln!(
                out,
                "  本机仍有修改等待送达乡镇：紧急 {urgent} 条，一般 {normal} 条；有网络时用 fq sync 同步（对方同步时也会带上本机的修改）"
            )?,
            (Lang::En, true) => writeln!(
                out,
                "  changes of this device still waiting for the township: {urgent} urgent, {normal} normal; sync with fq sync when there is a network (the other device carries them too when it syncs)"
            )?,
        }
    }
    if !report.refused.is_empty() {
        match (lang, device) {
            (Lang::Zh, false) => writeln!(out, "  ⚠ 服务器拒收 {} 条修改：", report.refused.len())?,
            (Lang::En, false) => writeln!(out, "  ⚠ the server refused {} changes:", report.refused.len())?,
            (Lang::Zh, true) => writeln!(out, "  ⚠ 对方设备拒收 {} 条修改：", report.refused.len())?,
            (Lang::En, true) => writeln!(out, "  ⚠ the other device refused {} changes:", report.refused.len())?,
        }
        for (reason, count) in by_reason.values() {
            match lang {
                Lang::Zh => writeln!(out, "    {}：{count} 条", refusal_words(lang, *reason))?,
                Lang::En => writeln!(out, "    {}: {count}", refusal_words(lang, *reason))?,
            }
        }
        writeln!(
            out,
            "  {}",
            lang.pick(
                "被拒收的修改不会上报；请把这些案件交给负责该区域的人员，或联系乡镇核实。",
                "refused changes do not go further; hand those cases to whoever covers that area, or check with the township."
            )
        )?;
    }
    if s.refused_here > 0 {
        match (lang, device) {
            (Lang::Zh, false) => writeln!(out, "  本机拒收服务器发来的修改 {} 条（见 fq audit）", s.refused_here)?,
            (Lang::En, false) => {
                writeln!(out, "  {} changes from the server were refused here (see fq audit)", s.refused_here)?
            }
            (Lang::Zh, true) => writeln!(out, "  本机拒收对方设备发来的修改 {} 条（见 fq audit）", s.refused_here)?,
            (Lang::En, true) => {
                writeln!(out, "  {} changes from the other device were refused here (see fq audit)", s.refused_here)?
            }
        }
    }
    match &report.policy {
        Some(PolicyOutcome::Installed { version, .. }) => match lang {
            Lang::Zh => {
                writeln!(out, "  县级政策已更新到第 {version} 版，期限和回访按新政策计算（fq policy show 查看）")?
            }
            Lang::En => {
                writeln!(out, "  county policy updated to version {version}; deadlines follow it (see fq policy show)")?
            }
        },
        Some(PolicyOutcome::Refused { claimed, .. }) => match lang {
            Lang::Zh => writeln!(
                out,
                "  ⚠ {}发来的县级政策（第 {claimed} 版）没有县里的有效签名，已拒收，仍按原政策执行",
                if device { "对方设备" } else { "服务器" }
            )?,
            Lang::En => writeln!(
                out,
                "  ⚠ the county policy the {} sent (version {claimed}) is not signed by the county; refused, the old one stays",
                if device { "other device" } else { "server" }
            )?,
        },
        _ => {}
    }
    if let Some(peer_minus_ours) = report.peer_minus_ours_ms
        && peer_minus_ours.abs() > fq_core::ledger::CLOCK_SKEW_TOLERANCE_MS
    {
        let minutes = peer_minus_ours.unsigned_abs() / 60_000;
        let (h, m) = (minutes / 60, minutes % 60);
        let ahead = peer_minus_ours < 0;
        let zh_span = if h > 0 { format!("{h}小时{m}分钟") } else { format!("{m}分钟") };
        let en_span = format!("{}{m} min", if h > 0 { format!("{h} h ") } else { String::new() });
        match (lang, device) {
            (Lang::Zh, false) => writeln!(
                out,
                "  ⚠ 本机时钟比服务器{}{zh_span}，请调整手机时间。在调好之前，期限和登记时间按服务器时间校正计算。",
                if ahead { "快" } else { "慢" },
            )?,
            (Lang::En, false) => writeln!(
                out,
                "  ⚠ this device's clock is {en_span} {} the server's: set the phone's time. Until then deadlines and times are corrected to the server's.",
                if ahead { "ahead of" } else { "behind" }
            )?,
            // Neither device is the authority on the time: nothing is corrected.
            (Lang::Zh, true) => writeln!(
                out,
                "  ⚠ 本机时钟比对方设备{}{zh_span}：请核对两台手机的时间，时间不对的那台请调好。",
                if ahead { "快" } else { "慢" },
            )?,
            (Lang::En, true) => writeln!(
                out,
                "  ⚠ this device's clock is {en_span} {} the other device's: check both phones' time and set the wrong one.",
                if ahead { "ahead of" } else { "behind" }
            )?,
        }
    }
    match lang {
        Lang::Zh => writeln!(out, "  流量：发送 {}，接收 {}", bytes(s.bytes_out), bytes(s.bytes_in))?,
        Lang::En => writeln!(out, "  traffic: {} sent, {} received", bytes(s.bytes_out), bytes(s.bytes_in))?,
    }
    Ok(())
}

/// A certificate's identity as `--json` writes it.
fn identity_json(peer: &PeerIdentity) -> serde_json::Value {
    json!({ "id": peer.id.as_str(), "role": peer.role.code(), "scope": peer.scope.as_str() })
}

/// `fq serve` is waiting: the address and the certificate id to tell the other device
/// (`schemas/serve.v1.schema.json`, one JSON object a line).
pub(crate) fn serving(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    addr: SocketAddr,
    me: &PeerIdentity,
) -> anyhow::Result<()> {
    if json {
        json_line(out, &json!({ "event": "listening", "address": addr.to_string(), "device": identity_json(me) }))?;
        out.flush()?;
        return Ok(());
    }
    let known = !addr.ip().is_unspecified();
    let (id, scope) = (&me.id, &me.scope);
    let role = me.role.person_role().map_or("", |r| lang.label(r));
    match lang {
        Lang::Zh => {
            if known {
                writeln!(out, "正在等待同村设备连接：本机地址 {addr}，证书编号 {id}（{role}，{scope}）")?;
                writeln!(
                    out,
                    "  请对方运行 fq sync --peer {addr}（两台设备要连在同一个无线网或手机热点上）。同时按 Ctrl 和 C 键结束。"
                )?;
            } else {
                let port = addr.port();
                writeln!(out, "正在等待同村设备连接：端口 {port}，本机证书编号 {id}（{role}，{scope}）")?;
                writeln!(
                    out,
                    "  本机的地址请在手机的无线网设置里查看，再请对方运行 fq sync --peer 本机地址:{port}（两台设备要连在同一个无线网或手机热点上）。同时按 Ctrl 和 C 键结束。"
                )?;
            }
        }
        Lang::En => {
            if known {
                writeln!(
                    out,
                    "Waiting for a device of the village at {addr}; this device's certificate: {id} ({}, {scope})",
                    role.to_lowercase()
                )?;
                writeln!(
                    out,
                    "  On the other device run fq sync --peer {addr} (both must be on the same Wi-Fi or phone hotspot). Press Ctrl-C to stop."
                )?;
            } else {
                let port = addr.port();
                writeln!(
                    out,
                    "Waiting for a device of the village on port {port}; this device's certificate: {id} ({}, {scope})",
                    role.to_lowercase()
                )?;
                writeln!(
                    out,
                    "  Find this device's address in its Wi-Fi settings, then run fq sync --peer ADDRESS:{port} on the other device (both must be on the same Wi-Fi or phone hotspot). Press Ctrl-C to stop."
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// One connection `fq serve` handled: a session with a device, or a connection it refused.
pub(crate) fn peer_event(out: &mut dyn Write, lang: Lang, json: bool, event: &PeerEvent) -> anyhow::Result<()> {
    match event {
        PeerEvent::Session(session) => peer_session(out, lang, json, session)?,
        PeerEvent::Refused { addr, error } => {
            let (code, words) = crate::message::accept_words(error, lang);
            if json {
                let peer = match error {
                    AcceptError::Revoked { id, .. }
                    | AcceptError::Peer(
                        PeerMismatch::NotADevice { id, .. }
                        | PeerMismatch::SameDevice { id }
                        | PeerMismatch::NoOverlap { id, .. },
                    ) => Some(id.as_str()),
                    _ => None,
                };
                json_line(
                    out,
                    &json!({ "event": "refused", "address": addr.to_string(), "peer": peer, "reason": code, "message": words }),
                )?;
            } else {
                match lang {
                    Lang::Zh => writeln!(out, "拒绝了来自 {addr} 的连接：{words}")?,
                    Lang::En => writeln!(out, "Refused a connection from {addr}: {words}")?,
                }
            }
        }
        PeerEvent::Interrupted { peer, addr } => {
            if json {
                let mut peer_json = identity_json(peer);
                peer_json["address"] = json!(addr.to_string());
                json_line(out, &json!({ "event": "interrupted", "peer": peer_json }))?;
            } else {
                let who = device_words(lang, peer);
                match lang {
                    Lang::Zh => writeln!(
                        out,
                        "与{who}的设备（{addr}）的同步被中断：本机停止了等待。已确认的修改都已保存，请对方再运行一次 fq sync --peer，会从断开处继续。"
                    )?,
                    Lang::En => writeln!(
                        out,
                        "The sync with {who}'s device ({addr}) was cut short: this device stopped serving. Everything acknowledged is kept; ask the other person to run fq sync --peer again, and it carries on from there."
                    )?,
                }
            }
        }
        _ => {}
    }
    out.flush()?;
    Ok(())
}

fn peer_session(out: &mut dyn Write, lang: Lang, json: bool, session: &PeerSession) -> anyhow::Result<()> {
    let s = &session.stats;
    let failure = session.result.as_ref().err().map(|e| crate::message::peer_failure(e, lang));
    if json {
        let mut peer = identity_json(&session.peer);
        peer["address"] = json!(session.addr.to_string());
        return json_line(
            out,
            &json!({
                "event": "session",
                "ok": failure.is_none(),
                "peer": peer,
                "sent": s.sent,
                "received": s.received,
                "duplicates": s.duplicates,
                "refused": session.refused.len(),
                "refused_here": s.refused_here,
                "elapsed_ms": u64::try_from(session.elapsed.as_millis()).unwrap_or(u64::MAX),
                "error": failure,
            }),
        );
    }
    let who = device_words(lang, &session.peer);
    let addr = session.addr;
    let secs = session.elapsed.as_secs_f64();
    match (lang, &failure) {
        (Lang::Zh, None) => writeln!(
            out,
            "已与{who}的设备同步（{addr}，用时 {secs:.1} 秒）：发送修改 {} 条，接收修改 {} 条（另有 {} 条本机已有）",
            s.sent, s.received, s.duplicates
        )?,
        (Lang::En, None) => writeln!(
            out,
            "Synced with device {who} from {addr} in {secs:.1} s: sent {} changes, received {} ({} already here)",
            s.sent, s.received, s.duplicates
        )?,
        (Lang::Zh, Some(problem)) => writeln!(out, "与{who}的设备（{addr}）同步没有完成：{}", problem.message)?,
        (Lang::En, Some(problem)) => {
            writeln!(out, "The sync with device {who} from {addr} did not complete: {}", problem.message)?
        }
    }
    if !session.refused.is_empty() {
        match lang {
            Lang::Zh => {
                writeln!(out, "  ⚠ 对方设备拒收本机的修改 {} 条（原因已记入对方的审计）", session.refused.len())?
            }
            Lang::En => writeln!(
                out,
                "  ⚠ the other device refused {} of this device's changes (see its audit)",
                session.refused.len()
            )?,
        }
    }
    if s.refused_here > 0 {
        match lang {
            Lang::Zh => writeln!(out, "  本机拒收对方设备发来的修改 {} 条（见 fq audit）", s.refused_here)?,
            Lang::En => {
                writeln!(out, "  {} changes from the other device were refused here (see fq audit)", s.refused_here)?
            }
        }
    }
    Ok(())
}

/// `fq serve` stopped (Ctrl-C, SIGTERM, or `--once` after its session).
pub(crate) fn serve_stopped(out: &mut dyn Write, lang: Lang, json: bool, sessions: u32) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "event": "stopped", "sessions": sessions }));
    }
    match lang {
        Lang::Zh => writeln!(out, "已停止等待（共与设备同步 {sessions} 次）")?,
        Lang::En => writeln!(out, "Stopped waiting ({sessions} sessions with devices)")?,
    }
    Ok(())
}

/// A policy outcome as `--json` writes it.
fn policy_json(p: &PolicyOutcome) -> serde_json::Value {
    match p {
        PolicyOutcome::Installed { previous, version } => {
            json!({ "outcome": "installed", "previous": previous, "version": version })
        }
        PolicyOutcome::Stale { offered, current } => {
            json!({ "outcome": "stale", "offered": offered, "version": current })
        }
        PolicyOutcome::Refused { claimed, reason } => {
            json!({ "outcome": "refused", "offered": claimed, "reason": reason })
        }
    }
}

/// A byte count for people: `812 B`, `12.4 KB`, `3.1 MB`.
pub(crate) fn bytes(n: u64) -> String {
    const KB: f64 = 1024.0;
    let f = n as f64;
    if f < KB {
        format!("{n} B")
    } else if f < KB * KB {
        format!("{:.1} KB", f / KB)
    } else {
        format!("{:.1} MB", f / (KB * KB))
    }
}

/// What a write command did, for its confirmation line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Written<'a> {
    Recorded,
    Edited,
    Acted(&'a Action),
}

/// The one-line confirmation of a write command (or `{"ok":true,"case":..}`).
pub(crate) fn written(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    what: Written<'_>,
    s: &CaseState,
) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "ok": true, "case": s }));
    }
    let n = &s.number;
    let status = lang.label(s.status);
    let level = lang.label(s.level);
    let line = match (lang, what) {
        (Lang::Zh, Written::Recorded) => format!("已记录案件 {n}「{}」，状态：{status}", s.title),
        (Lang::En, Written::Recorded) => format!("Recorded case {n} \"{}\", status: {status}", s.title),
        (Lang::Zh, Written::Edited) => format!("已修改案件 {n}「{}」", s.title),
        (Lang::En, Written::Edited) => format!("Edited case {n} \"{}\"", s.title),
        (lang, Written::Acted(action)) => {
            let done = acted(lang, action, s);
            match lang {
                Lang::Zh => format!("{done}，当前状态：{status}（{level}）"),
                Lang::En => format!("{done}; status now: {status} ({level})"),
            }
        }
    };
    writeln!(out, "{line}")?;
    if matches!(what, Written::Recorded) && s.risk == Risk::High {
        let hint = match lang {
            Lang::Zh => format!("⚠ 高风险案件：请立即上报乡镇（fq case escalate {n} --reason ...）"),
            Lang::En => format!("⚠ High risk: escalate it to the township at once (fq case escalate {n} --reason ...)"),
        };
        writeln!(out, "{hint}")?;
    }
    Ok(())
}

fn acted(lang: Lang, action: &Action, s: &CaseState) -> String {
    let n = &s.number;
    let (zh, en) = match action {
        Action::Note(_) => (format!("已为案件 {n} 添加调解记录"), format!("Added a note to case {n}")),
        Action::Assign(to) => (format!("已将案件 {n} 指派给 {to}"), format!("Assigned case {n} to {to}")),
        Action::Escalate(_) => {
            let (to_zh, to_en) = s.escalated_to.map_or(("", ""), |l| (l.zh(), l.en()));
            (format!("已将案件 {n} 上报到{to_zh}"), format!("Escalated case {n} to {to_en}"))
        }
        Action::Accept => (format!("已接收案件 {n}"), format!("Accepted case {n}")),
        Action::Settle(_) => (format!("案件 {n} 已登记调解成功"), format!("Recorded the settlement of case {n}")),
        Action::Fail(_) => (format!("案件 {n} 已登记调解失败"), format!("Recorded that mediation failed on case {n}")),
        Action::Confirm { court, .. } => (
            format!("案件 {n} 已登记司法确认（{court}）"),
            format!("Recorded judicial confirmation of case {n} ({court})"),
        ),
        Action::FollowUp { outcome: Outcome::Relapsed, .. } => (
            format!("已为案件 {n} 登记回访（反弹），案件重新进入调解"),
            format!("Recorded a follow-up of case {n} (relapsed); the case is reopened"),
        ),
        Action::FollowUp { outcome, .. } => (
            format!("已为案件 {n} 登记回访（{}）", outcome.zh()),
            format!("Recorded a follow-up of case {n} ({})", outcome.en().to_lowercase()),
        ),
        Action::Archive => (format!("案件 {n} 已归档"), format!("Archived case {n}")),
        Action::Supervise { due, .. } => (
            format!("已督办案件 {n}，限 {} 前回复", date(*due)),
            format!("Supervision order given on case {n}, to be answered by {}", date(*due)),
        ),
        Action::Respond(_) => (format!("已回复案件 {n} 的督办"), format!("Answered the supervision order of case {n}")),
        Action::Waive(_) => (format!("案件 {n} 已免予回访"), format!("Waived the remaining follow-ups of case {n}")),
    };
    match lang {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

pub(crate) fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// `case list`: a table, or `{"cases":[..],"count":n}`.
pub(crate) fn case_list(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    rows: &[CaseRow],
    now: Timestamp,
) -> anyhow::Result<()> {
    if json {
        return json_line(out, &json!({ "cases": rows, "count": rows.len() }));
    }
    if rows.is_empty() {
        writeln!(out, "{}", lang.pick("没有符合条件的案件。", "No cases match."))?;
        return Ok(());
    }
    let mut t = table();
    t.set_header(match lang {
        Lang::Zh => ["编号", "标题", "类别", "状态", "级别", "风险", "期限", "责任人"],
        Lang::En => ["Number", "Title", "Category", "Status", "Level", "Risk", "Deadline", "Responsible"],
    });
    for r in rows {
        let mut title = r.title.clone();
        if r.conflicts > 0 {
            title = format!("⚠ {title}");
        }
        t.add_row([
            r.number.clone(),
            title,
            lang.label(r.category).to_owned(),
            lang.label(r.status).to_owned(),
            lang.label(r.level).to_owned(),
            lang.label(r.risk).to_owned(),
            deadline(lang, r.deadline, r.status.is_open(), now),
            r.responsible.clone().unwrap_or_default(),
        ]);
    }
    writeln!(out, "{t}")?;
    let overdue = rows.iter().filter(|r| is_overdue(r.deadline, r.status.is_open(), now)).count();
    match lang {
        Lang::Zh => writeln!(out, "共 {} 件，其中已超期 {overdue} 件。", rows.len())?,
        Lang::En => writeln!(out, "{} cases, {overdue} overdue.", rows.len())?,
    }
    Ok(())
}

fn is_overdue(deadline: Option<Timestamp>, open: bool, now: Timestamp) -> bool {
    open && deadline.is_some_and(|d| d < now)
}

fn deadline(lang: Lang, deadline: Option<Timestamp>, open: bool, now: Timestamp) -> String {
    match deadline {
        None => String::new(),
        Some(d) if is_overdue(Some(d), open, now) => format!("{} {}", date(d), lang.pick("已超期", "overdue")),
        Some(d) => date(d),
    }
}

pub(crate) fn author(lang: Lang, a: Option<&Author>) -> String {
    match a {
        Some(a) => match lang {
            Lang::Zh => format!("{}（{}）", a.name, lang.label(a.role)),
            Lang::En => format!("{} ({})", a.name, lang.label(a.role)),
        },
        None => lang.pick("（未知）", "(unknown)").to_owned(),
    }
}

/// `case show`: a readable card, or the `CaseView` as JSON.
pub(crate) fn case_card(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    view: &CaseView,
    unmasked: bool,
    now: Timestamp,
) -> anyhow::Result<()> {
    if json {
        return json_line(out, view);
    }
    let s = &view.state;
    let zh = lang == Lang::Zh;
    let rule = "─".repeat(48);
    match lang {
        Lang::Zh => writeln!(out, "案件 {}「{}」", s.number, s.title)?,
        Lang::En => writeln!(out, "Case {} \"{}\"", s.number, s.title)?,
    }
    writeln!(out, "{rule}")?;
    if !view.conflicts.is_empty() {
        conflicts(out, lang, &view.conflicts, unmasked)?;
        writeln!(out, "{rule}")?;
    }
    let field = |zh_label: &str, en_label: &str| if zh { format!("{zh_label}：") } else { format!("{en_label}: ") };
    let section = |zh_label: &str, en_label: &str| if zh { format!("{zh_label}：") } else { format!("{en_label}:") };
    let escalated = s.escalated_to.map(|l| match lang {
        Lang::Zh => format!("（等待{}接收）", lang.label(l)),
        Lang::En => format!(" (waiting for the {} level)", lang.label(l).to_lowercase()),
    });
    writeln!(out, "{}{}{}", field("状态", "Status"), lang.label(s.status), escalated.unwrap_or_default())?;
    writeln!(out, "{}{}", field("级别", "Level"), lang.label(s.level))?;
    writeln!(out, "{}{}", field("类别", "Category"), lang.label(s.category))?;
    writeln!(out, "{}{}", field("风险", "Risk"), lang.label(s.risk))?;
    if !s.flags.is_empty() {
        let flags: Vec<&str> = s.flags.iter().map(|f| lang.label(*f)).collect();
        writeln!(out, "{}{}", field("风险标记", "Risk flags"), flags.join(lang.list_sep()))?;
    }
    if let Some(sv) = &s.supervision {
        writeln!(
            out,
            "{}{}{}{}",
            field("督办", "Supervision"),
            sv.instruction,
            lang.pick("，限 ", ", by "),
            date(sv.due)
        )?;
    }
    for v in &s.violations {
        let rule = violation_words(lang, v.rule);
        writeln!(
            out,
            "{}{rule}{}",
            lang.pick("⚠ 并发的流程冲突：", "⚠ Concurrent events broke a rule: "),
            lang.paren(&minute(v.at))
        )?;
    }
    let grid = s.grid.map(|g| if zh { format!("，第 {g} 网格") } else { format!(", grid {g}") }).unwrap_or_default();
    writeln!(out, "{}{}{grid}", field("所在村", "Village"), s.village)?;
    if let Some(r) = &s.responsible {
        writeln!(out, "{}{r}", field("责任人", "Responsible"))?;
    }
    writeln!(out, "{}{}{}{}", field("登记", "Recorded"), s.recorded_by, lang.pick("，", ", "), minute(s.recorded_at))?;
    if let Some(d) = s.deadline {
        writeln!(out, "{}{}", field("办结期限", "Deadline"), deadline(lang, Some(d), s.status.is_open(), now))?;
    }
    if s.confirmed {
        writeln!(out, "{}", lang.pick("已经司法确认", "Judicially confirmed"))?;
    }
    if s.follow_ups > 0 {
        writeln!(out, "{}{}", field("回访次数", "Follow-ups"), s.follow_ups)?;
    }
    writeln!(out, "{}", section("当事人", "Parties"))?;
    if s.parties.is_empty() {
        writeln!(out, "  {}", lang.pick("（无）", "(none)"))?;
    }
    for (i, p) in s.parties.iter().enumerate() {
        writeln!(out, "  {}. {}", i + 1, party(lang, p, unmasked))?;
    }
    if !s.description.is_empty() {
        writeln!(out, "{}", section("案情", "Description"))?;
        for line in s.description.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, "{}", section("办理经过", "Events"))?;
    for e in &s.events {
        writeln!(out, "  {}  {}  {}", minute(e.at), event(lang, e), author(lang, e.author.as_ref()))?;
    }
    if let Some(history) = &view.history {
        writeln!(out, "{}", section("修改记录", "History"))?;
        for h in history {
            writeln!(out, "  {}", history_line(lang, h))?;
        }
    }
    Ok(())
}

fn party(lang: Lang, p: &PartyView, unmasked: bool) -> String {
    let mut line = p.name.clone();
    if let Some(id) = &p.id_number {
        let shown = if unmasked { id.clone() } else { mask_id(id) };
        line.push_str(&format!("  {}{shown}", lang.pick("身份证 ", "ID ")));
    }
    if let Some(phone) = &p.phone {
        line.push_str(&format!("  {}{phone}", lang.pick("电话 ", "phone ")));
    }
    line
}

/// Concurrent edits, every value with its author, device and time. Printed
/// near the top of the card: a cadre must see them before trusting a field.
fn conflicts(out: &mut dyn Write, lang: Lang, all: &[FieldConflict], unmasked: bool) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}",
        lang.pick(
            "⚠ 并发修改：下面的内容在不同设备上被同时改过，现在显示的是第1个值。请核实后用 fq case edit 填写正确的值。",
            "⚠ Concurrent edits: these fields were changed on different devices at the same time; the first value is shown. \
             Check with the people involved and set the right value with fq case edit.",
        )
    )?;
    for c in all {
        writeln!(out, "  {}", field_name(lang, &c.field))?;
        for (i, v) in c.values.iter().enumerate() {
            let device = v.device.as_deref().unwrap_or("?");
            let at = v.at.map(minute).unwrap_or_default();
            let value = if c.field.ends_with("id_number") && !unmasked {
                mask_id(&v.value)
            } else {
                field_value(lang, &c.field, &v.value)
            };
            let shown = if i == 0 { lang.pick("  ← 当前显示", "  ← shown") } else { "" };
            let dev = lang.pick("设备", "device");
            writeln!(out, "    {}. 「{value}」 {} {dev} {device} {at}{shown}", i + 1, author(lang, v.author.as_ref()))?;
        }
    }
    Ok(())
}

/// A field of a case in words: `title` is 标题 / "title", `parties[0].phone`
/// is 第1个当事人的电话 / "party 1's phone". An unknown field (from a newer
/// replica) is shown as the document names it.
pub(crate) fn field_name(lang: Lang, field: &str) -> String {
    let (zh, en) = match field {
        "title" => ("标题", "title"),
        "description" => ("案情描述", "description"),
        "category" => ("类别", "category"),
        "risk" => ("风险等级", "risk"),
        "grid" => ("网格", "grid"),
        "responsible" => ("责任人", "responsible person"),
        "parties" => ("当事人", "parties"),
        "agreement" => ("调解协议", "agreement"),
        "risk_flags" => ("风险标记", "risk flags"),
        f if f.starts_with("parties[") => {
            let (part_zh, part_en) = match f.rsplit('.').next() {
                Some("name") => ("姓名", "name"),
                Some("id_number") => ("身份证号", "ID number"),
                Some("phone") => ("电话", "phone"),
                _ => ("信息", "details"),
            };
            let index: String = f.chars().skip_while(|c| *c != '[').skip(1).take_while(|c| *c != ']').collect();
            let n = index.parse::<usize>().map_or(0, |i| i + 1);
            return match lang {
                Lang::Zh => format!("第{n}个当事人的{part_zh}"),
                Lang::En => format!("party {n}'s {part_en}"),
            };
        }
        other => (other, other),
    };
    lang.pick(zh, en).to_owned()
}

/// A field's value in words: vocabulary codes (`high`, `neighbor`) as their
/// labels; anything else as it is.
pub(crate) fn field_value(lang: Lang, field: &str, value: &str) -> String {
    let label = match field {
        "risk" => Risk::parse(value).ok().map(|r| lang.label(r)),
        "category" => Category::parse(value).ok().map(|c| lang.label(c)),
        _ => None,
    };
    label.map_or_else(|| value.to_owned(), str::to_owned)
}

fn level_label(lang: Lang, code: Option<&str>) -> String {
    code.and_then(|c| Level::parse(c).ok()).map_or_else(String::new, |l| lang.label(l).to_owned())
}

pub(crate) fn event(lang: Lang, e: &EventView) -> String {
    let label = lang.label(e.kind);
    let sep = lang.pick("：", ": ");
    let text = e.text.as_deref().map(|t| format!("{sep}{t}")).unwrap_or_default();
    match e.kind {
        EventKind::Recorded | EventKind::EscalationAccepted => {
            let level = level_label(lang, e.to.as_deref());
            if level.is_empty() { label.to_owned() } else { format!("{label}{}", lang.paren(&level)) }
        }
        EventKind::Escalated => {
            let level = level_label(lang, e.to.as_deref());
            let text = if e.text.as_deref().is_some_and(|t| !t.is_empty()) { text } else { String::new() };
            let rule = e.rule.as_deref().and_then(fq_core::policy::RouteRule::parse).map(|r| rule_words(lang, r));
            let rule = rule.map(|r| lang.paren(&r)).unwrap_or_default();
            match lang {
                Lang::Zh => format!("上报到{level}{rule}{text}"),
                Lang::En => format!("Escalated to {level}{rule}{text}"),
            }
        }
        EventKind::Supervised => {
            let due = e.due.map(|d| lang.paren(&format!("{}{}", lang.pick("限 ", "by "), date(d)))).unwrap_or_default();
            format!("{label}{due}{text}")
        }
        EventKind::Assigned => format!("{label}{sep}{}", e.to.as_deref().unwrap_or("")),
        EventKind::Confirmed => {
            let court = e.court.as_deref().unwrap_or("");
            let reference = e.reference.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
            format!("{label}{sep}{court}{reference}")
        }
        EventKind::FollowUp => format!("{label}{}{text}", lang.paren(lang.label(Outcome::Honoured))),
        EventKind::Relapsed => {
            format!("{}{}{text}", lang.label(EventKind::FollowUp), lang.paren(lang.label(Outcome::Relapsed)))
        }
        _ => format!("{label}{text}"),
    }
}

/// A workflow rule that concurrent events broke, in words.
pub(crate) fn violation_words(lang: Lang, rule: &str) -> &'static str {
    match (lang, rule) {
        (Lang::Zh, "settled-below-level") => "上级尚未接收时在下级登记了调解成功",
        (Lang::Zh, "failed-below-level") => "上级尚未接收时在下级登记了调解失败",
        (Lang::Zh, _) => "回访未做完就归档",
        (Lang::En, "settled-below-level") => "settled below the level it was sent to",
        (Lang::En, "failed-below-level") => "marked failed below the level it was sent to",
        (Lang::En, _) => "archived before its follow-ups",
    }
}

/// Why the county policy sent a case up.
pub(crate) fn rule_words(lang: Lang, rule: fq_core::policy::RouteRule) -> String {
    match (lang, rule) {
        (Lang::Zh, fq_core::policy::RouteRule::HighRisk) => "按县级政策：高风险案件立即上报".into(),
        (Lang::En, fq_core::policy::RouteRule::HighRisk) => "county policy: high risk goes up at once".into(),
        (Lang::Zh, fq_core::policy::RouteRule::Flag(f)) => format!("按县级政策：{}立即上报", f.zh()),
        (Lang::En, fq_core::policy::RouteRule::Flag(f)) => {
            format!("county policy: {} goes up at once", f.en().to_lowercase())
        }
    }
}

/// A change's op (`create`, `note`, `edit:title,risk`) in words.
fn op_words(lang: Lang, op: &str) -> String {
    if op == "create" {
        return lang.pick("登记案件", "recorded the case").to_owned();
    }
    if let Some(fields) = op.strip_prefix("edit:") {
        let names: Vec<String> = fields.split(',').map(|f| field_name(lang, f)).collect();
        return format!("{}{}", lang.pick("修改：", "edited: "), names.join(lang.list_sep()));
    }
    match EventKind::parse(op) {
        Ok(k) => lang.label(k).to_owned(),
        Err(_) => op.to_owned(),
    }
}

fn history_line(lang: Lang, h: &HistoryEntry) -> String {
    let device = h.device.as_deref().unwrap_or("?");
    let dev = lang.pick("设备", "device");
    format!("{}  {}  {}  {dev} {device}", minute(h.at), op_words(lang, &h.op), author(lang, h.author.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_id_hides_the_middle_of_any_text() {
        assert_eq!(mask_id("532924198001011230"), "5329**********1230");
        assert_eq!(mask_id("12345678901"), "1234***8901");
        assert_eq!(mask_id("1234"), "****");
    }

    #[test]
    fn date_is_in_china_time() {
        // 2026-01-01T20:00Z is already the 2nd in Beijing.
        let t =
            Timestamp(chrono::DateTime::parse_from_rfc3339("2026-01-01T20:00:00Z").map_or(0, |d| d.timestamp_millis()));
        assert_eq!(date(t), "2026-01-02");
        assert_eq!(minute(t), "2026-01-02 04:00");
    }

    #[test]
    fn bytes_reads_like_a_person_would() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(12_700), "12.4 KB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MB");
    }

    #[test]
    fn op_words_translates_edits() {
        assert_eq!(op_words(Lang::Zh, "edit:title,risk"), "修改：标题、风险等级");
        assert_eq!(op_words(Lang::Zh, "edit:description,parties"), "修改：案情描述、当事人");
        assert_eq!(op_words(Lang::En, "edit:title,parties"), "edited: title, parties");
        assert_eq!(field_name(Lang::Zh, "parties[1].phone"), "第2个当事人的电话");
        assert_eq!(field_value(Lang::Zh, "risk", "high"), "高");
        assert_eq!(field_value(Lang::En, "category", "neighbor"), "Neighbour");
        assert_eq!(op_words(Lang::Zh, "note"), "调解记录");
        assert_eq!(op_words(Lang::En, "create"), "recorded the case");
    }
}
