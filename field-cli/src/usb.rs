//! `fq sync --to-file` and `fq sync --from-file`: sync with no network, by a file on a USB
//! stick (`docs/PROTOCOL.md`, "Sync files"; ADR 40).
//!
//! Writing reads the ledger and changes nothing: a change counts as acknowledged only when an
//! answer file says so. The file is sealed for its receiver (the township server this device
//! syncs with, or the device named by `--for`), whose key this device holds from an earlier
//! sync or file. Importing checks the whole file first (signature, receiver, every frame), so
//! a damaged, cut or misaddressed file changes nothing; importing a file twice is a no-op.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use fq_core::clock::{Clock, SystemClock};
use fq_core::sync::file::{self, FileReport, Receiver};
use fq_core::sync::session::Credentials;
use serde_json::json;

use crate::lang::Lang;
use crate::request::SyncFile;
use crate::vault::Place;

/// Why `fq sync --to-file` cannot write a file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsbError {
    /// The device does not know its township server's key (it never synced).
    #[error("no township server key known: sync once over the network first")]
    NoReceiver,
    /// `--for` names no device of an overlapping village that this device knows.
    #[error("no device {0:?} known in this village")]
    UnknownPeer(String),
}

/// Runs `fq sync --to-file` or `--from-file`.
pub(crate) fn run(out: &mut dyn Write, place: &Place, request: SyncFile, lang: Lang, json: bool) -> anyhow::Result<()> {
    let unlocked = place.unlock()?;
    let mut ledger = unlocked.open()?;
    let bundle = crate::sync::device_bundle(&ledger, place)?;
    let creds = Credentials {
        ca: bundle.ca_verifying_key(),
        own: Some((bundle.grant().clone(), bundle.signing_key().clone())),
        peer_scope_limit: None,
    };
    let now = SystemClock.now();
    match request {
        SyncFile::Write { out: path, peer } => {
            let receiver = match &peer {
                Some(subject) => {
                    file::peer_receiver(&ledger, subject)?.ok_or_else(|| UsbError::UnknownPeer(subject.clone()))?
                }
                None => file::upstream_receiver(&ledger)?.ok_or(UsbError::NoReceiver)?,
            };
            let (bytes, _) = file::write(&mut ledger, &creds, &receiver, now, entropy()?)?;
            write_new(&path, &bytes)?;
            let waiting = ledger.waiting_for(receiver.replica)?;
            written(out, lang, json, &path, &receiver, bytes.len(), waiting)
        }
        SyncFile::Read { input, answer } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let (reply, report) = file::import(&mut ledger, &creds, &bytes, now, entropy()?)?;
            if let (Some(reply), Some(path)) = (&reply, &answer) {
                write_new(path, reply)?;
            }
            let upstream = ledger.upstream()?;
            let waiting = ledger.waiting_for(upstream)?;
            imported(out, lang, json, &input, answer.as_deref().filter(|_| reply.is_some()), &report, waiting)
        }
    }
}

fn entropy() -> anyhow::Result<[u8; 72]> {
    let mut e = [0u8; 72];
    getrandom::fill(&mut e).map_err(|e| anyhow::anyhow!("no randomness from the system: {e}"))?;
    Ok(e)
}

/// Writes a file beside its final name, then renames it: a stick pulled out mid-write leaves
/// no half file under the name.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("fqs.part");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn written(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    path: &Path,
    to: &Receiver,
    size: usize,
    (urgent, normal): (i64, i64),
) -> anyhow::Result<()> {
    if json {
        let value = json!({
            "ok": true,
            "file": path.display().to_string(),
            "for": { "id": to.subject, "role": to.role.code(), "scope": to.scope.as_str() },
            "bytes": size,
            "waiting": { "urgent": urgent, "normal": normal },
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let file = path.display();
    match lang {
        Lang::Zh => {
            writeln!(out, "已写好同步文件 {file}（{size} 字节），收件方：{}（{}）", to.subject, to.scope)?;
            writeln!(out, "  等待送达的修改：紧急 {urgent} 条，一般 {normal} 条")?;
            writeln!(
                out,
                "  请把文件带到乡镇导入，再把回执文件带回，用 fq sync --from-file 导入。回执导入前，这些修改仍算未送达。"
            )?;
        }
        Lang::En => {
            writeln!(out, "Sync file {file} written ({size} bytes) for {} ({})", to.subject, to.scope)?;
            writeln!(out, "  changes waiting to be delivered: {urgent} urgent, {normal} normal")?;
            writeln!(
                out,
                "  Take the file to the township to import, bring back the answer file and import it with fq sync --from-file. Until then these changes count as not delivered."
            )?;
        }
    }
    Ok(())
}

fn imported(
    out: &mut dyn Write,
    lang: Lang,
    json: bool,
    path: &Path,
    answer: Option<&Path>,
    report: &FileReport,
    (urgent, normal): (i64, i64),
) -> anyhow::Result<()> {
    let s = &report.stats;
    if json {
        let value = json!({
            "ok": true,
            "file": path.display().to_string(),
            "replayed": report.replayed,
            "received": s.received,
            "duplicates": s.duplicates,
            "refused_here": s.refused_here,
            "refused_by_peer": report.refused.len(),
            "answer": answer.map(|a| a.display().to_string()),
            "waiting": { "urgent": urgent, "normal": normal },
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let file = path.display();
    match lang {
        Lang::Zh => {
            if report.replayed {
                writeln!(out, "同步文件 {file} 以前已经导入过，这次没有新内容。")?;
            } else {
                writeln!(out, "已导入同步文件 {file}")?;
            }
            writeln!(
                out,
                "  接收修改 {} 条（另有 {} 条本机已有），本机拒收 {} 条",
                s.received, s.duplicates, s.refused_here
            )?;
            if !report.refused.is_empty() {
                writeln!(out, "  对方拒收了本机的修改 {} 条（原因已记入审计）", report.refused.len())?;
            }
            if let Some(a) = answer {
                writeln!(out, "  回执已写到 {}，请带回给对方导入", a.display())?;
            }
            writeln!(out, "  仍等待送达的修改：紧急 {urgent} 条，一般 {normal} 条")?;
        }
        Lang::En => {
            if report.replayed {
                writeln!(out, "Sync file {file} was imported before: nothing new.")?;
            } else {
                writeln!(out, "Sync file {file} imported")?;
            }
            writeln!(
                out,
                "  received {} changes ({} already here), refused {} here",
                s.received, s.duplicates, s.refused_here
            )?;
            if !report.refused.is_empty() {
                writeln!(
                    out,
                    "  the other side refused {} of this device's changes (see the audit)",
                    report.refused.len()
                )?;
            }
            if let Some(a) = answer {
                writeln!(out, "  answer written to {}: take it back to import there", a.display())?;
            }
            writeln!(out, "  changes still waiting to be delivered: {urgent} urgent, {normal} normal")?;
        }
    }
    Ok(())
}
