//! `fq sync`: one sync with the township (or county) server, with a progress bar and a summary.
//!
//! The order keeps a failed sync harmless: everything is checked first (a ledger, a bundle
//! that fits it, a server address), then the server is dialed, and only once it answered is
//! the ledger opened for writing. An unreachable server leaves the device's data untouched.
//! The passphrase is asked for once, before dialing; the certificate bundle is read from the
//! encrypted ledger. The address used is remembered in `DIR/sync.json` (mode 0600) for the
//! next `fq sync`.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fq_core::sync::session::Stats;
use fq_sync_server::client::{self, Progress, SyncOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::enroll;
use crate::lang::Lang;
use crate::render;
use crate::vault::Place;

/// Where the last server address is kept, inside the data directory.
pub(crate) const SERVER_FILE: &str = "sync.json";
/// Environment variable that bounds dialing, in milliseconds (default 15 s).
pub(crate) const CONNECT_TIMEOUT_ENV: &str = "FQ_CONNECT_TIMEOUT_MS";
/// How often the spinner moves while nothing else does.
const TICK: Duration = Duration::from_millis(120);

/// Input `fq sync` refuses before dialing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AddressError {
    /// No `--server` and none remembered.
    #[error("no server address: give --server ADDR")]
    NoServer,
    /// The address is not written as `HOST:PORT`.
    #[error("invalid address {input:?}: expected HOST:PORT")]
    Invalid {
        /// What was given.
        input: String,
    },
    /// The address is a well-formed name that the name service (DNS) could not turn into an
    /// address: a typing mistake, or a network whose DNS does not work.
    #[error("server name {host:?} could not be found (name lookup failed)")]
    NameNotFound {
        /// The name.
        host: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    server: String,
}

/// Runs `fq sync` on the ledger in `dir`.
pub(crate) fn run(
    out: &mut dyn Write,
    place: &Place,
    server: Option<String>,
    lang: Lang,
    json: bool,
) -> anyhow::Result<()> {
    let dir = place.dir();
    let unlocked = place.unlock()?;
    let bundle = {
        let ledger = unlocked.open_read_only()?;
        device_bundle(&ledger, place)?
    };
    let text = match server {
        Some(s) => s,
        None => remembered(dir).ok_or(AddressError::NoServer)?,
    };
    let addr = resolve(&text)?;
    let options = options();
    let runtime = runtime()?;
    let bar = progress_bar(json);
    bar.set_message(match lang {
        Lang::Zh => format!("正在连接服务器 {text}…"),
        Lang::En => format!("connecting to {text}…"),
    });
    let dialed = runtime.block_on(client::dial(&bundle, addr, &options));
    let dialed = match dialed {
        Ok(d) => d,
        Err(e) => {
            bar.finish_and_clear();
            return Err(e.into());
        }
    };
    remember(dir, &text)?;
    let mut ledger = unlocked.open()?;
    let report = runtime.block_on(dialed.sync(&mut ledger, |p| show(&bar, lang, p)));
    bar.finish_and_clear();
    let report = report?;
    // A newer revocation list from the county, through the township: kept, so that `fq serve`
    // and `fq sync --peer` refuse a revoked phone even where there is no server (ADR 43).
    if let Some(list) = &report.revocations
        && list.version() > enroll::newest_revocations(&bundle, dir, None)?.version()
    {
        list.save(&dir.join(enroll::REVOCATIONS_FILE))?;
    }
    // What the server has still not acknowledged (refused changes stay here).
    let waiting = ledger.waiting_for(ledger.upstream()?)?;
    render::sync_summary(out, lang, json, &text, &report, waiting, render::SyncedWith::Server)
}

/// The checks every sync of a device makes before it touches the network: the ledger is a
/// device's, not a server replica's; its bundle is installed and fits the ledger. Returns the
/// bundle.
pub(crate) fn device_bundle(
    ledger: &fq_core::ledger::Ledger,
    place: &Place,
) -> anyhow::Result<fq_sync_server::ca::Bundle> {
    crate::command::check_device(ledger.identity(), place.ledger_path())?;
    let bundle = enroll::installed(ledger, place.dir())?;
    enroll::check_fits(&bundle, ledger.identity())?;
    Ok(bundle)
}

/// The single-threaded runtime a sync runs on: the device owns its ledger, so one thread.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the network runtime")
}

/// Dialing and watchdog settings; `FQ_CONNECT_TIMEOUT_MS` bounds dialing (tests set it low).
pub(crate) fn options() -> SyncOptions {
    let mut options = SyncOptions::default();
    if let Some(ms) = std::env::var(CONNECT_TIMEOUT_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok())
        && ms > 0
    {
        options.connect_timeout = Duration::from_millis(ms);
    }
    options
}

pub(crate) fn resolve(text: &str) -> Result<SocketAddr, AddressError> {
    let invalid = || AddressError::Invalid { input: text.to_owned() };
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let name_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(name_char) || host.starts_with(['-', '.']) {
        return Err(invalid());
    }
    let not_found = || AddressError::NameNotFound { host: host.to_owned() };
    (host, port).to_socket_addrs().map_err(|_| not_found())?.next().ok_or_else(not_found)
}

pub(crate) fn remembered(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(SERVER_FILE)).ok()?;
    let saved: Remembered = serde_json::from_slice(&bytes).ok()?;
    Some(saved.server).filter(|s| !s.trim().is_empty())
}

fn remember(dir: &Path, server: &str) -> anyhow::Result<()> {
    let path = dir.join(SERVER_FILE);
    let bytes = serde_json::to_vec(&Remembered { server: server.to_owned() })?;
    // Owner-only like every file in the data directory: it says where this device syncs.
    fq_core::vault::write_private(&path, &bytes).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn progress_bar(json: bool) -> ProgressBar {
    bar_with(json, "{spinner} {msg} {wide_bar}")
}

/// A spinner with words only, for work whose total is not known (`fq serve`'s sessions).
pub(crate) fn spinner(json: bool) -> ProgressBar {
    bar_with(json, "{spinner} {msg}")
}

fn bar_with(json: bool, template: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(TICK);
    bar
}

/// `fq serve`'s bar while a device's session runs: who, and the changes each way so far
/// (`None`: just started).
pub(crate) fn show_serving(bar: &ProgressBar, lang: Lang, who: &str, stats: Option<&Stats>) {
    let (sent, got) = stats.map_or((0, 0), |s| (s.sent, s.received));
    bar.set_message(match lang {
        Lang::Zh => format!("正在与{who}的设备同步：已发送 {sent} 条，已接收 {got} 条修改"),
        Lang::En => format!("syncing with {who}'s device: {sent} changes sent, {got} received"),
    });
}

/// The bar follows what dominates the sync: the changes this device sends, or, when the server
/// has more to bring (a new or replaced phone's first sync), the bytes received and about how
/// many are left (the server's count of changes to come at the bytes a change has cost so far).
pub(crate) fn show(bar: &ProgressBar, lang: Lang, p: &Progress) {
    let again = p.reconnects > 0;
    if p.to_receive > p.to_send && p.to_receive > 0 {
        let left_changes = p.to_receive.saturating_sub(p.received);
        let per_change = p.bytes_in.checked_div(p.received).unwrap_or(0);
        let left = left_changes.saturating_mul(per_change);
        bar.set_length(p.bytes_in.saturating_add(left).max(1));
        bar.set_position(p.bytes_in);
        let (done, left) = (render::bytes(p.bytes_in), render::bytes(left));
        let (got, of) = (p.received, p.to_receive);
        bar.set_message(match (lang, again) {
            (Lang::Zh, false) => format!("正在接收：{got}/{of} 条修改，已收 {done}，约剩 {left}"),
            (Lang::Zh, true) => format!("重新连上后继续接收：{got}/{of} 条修改，已收 {done}，约剩 {left}"),
            (Lang::En, false) => format!("receiving: {got}/{of} changes, {done} in, about {left} left"),
            (Lang::En, true) => format!("reconnected, receiving on: {got}/{of} changes, {done} in, about {left} left"),
        });
        return;
    }
    bar.set_length(p.to_send);
    bar.set_position(p.sent);
    let (sent, of, got) = (p.sent, p.to_send, p.received);
    bar.set_message(match (lang, again) {
        (Lang::Zh, false) => format!("同步中：已发送 {sent}/{of} 条，已接收 {got} 条修改"),
        (Lang::Zh, true) => format!("连接断开后已重新连上，继续同步：已发送 {sent}/{of} 条，已接收 {got} 条修改"),
        (Lang::En, false) => format!("syncing: {sent}/{of} changes sent, {got} received"),
        (Lang::En, true) => format!("reconnected after the link broke, syncing on: {sent}/{of} sent, {got} received"),
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resolve_reads_addresses_and_refuses_junk() {
        assert_eq!(resolve("10.0.0.5:4433").unwrap(), "10.0.0.5:4433".parse().unwrap());
        assert_eq!(resolve("[::1]:4433").unwrap(), "[::1]:4433".parse().unwrap());
        assert!(matches!(resolve("10.0.0.5"), Err(AddressError::Invalid { .. })));
        assert!(matches!(resolve("not an address"), Err(AddressError::Invalid { .. })));
        assert!(matches!(resolve("host:port"), Err(AddressError::Invalid { .. })));
        assert!(matches!(resolve(":4433"), Err(AddressError::Invalid { .. })));
        assert_eq!(resolve("localhost:4433").unwrap().port(), 4433);
    }

    #[test]
    fn resolve_tells_a_name_that_cannot_be_found_from_a_bad_address() {
        // `.invalid` never resolves (RFC 2606), with or without a network.
        let err = resolve("nosuchhost.invalid:4433").unwrap_err();
        assert!(matches!(&err, AddressError::NameNotFound { host } if host == "nosuchhost.invalid"), "{err:?}");
    }

    #[test]
    fn remembered_survives_a_round_trip_and_ignores_junk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remembered(dir.path()), None);
        remember(dir.path(), "10.0.0.5:4433").unwrap();
        assert_eq!(remembered(dir.path()).as_deref(), Some("10.0.0.5:4433"));
        std::fs::write(dir.path().join(SERVER_FILE), b"{oops").unwrap();
        assert_eq!(remembered(dir.path()), None);
    }
}
