//! The county server follows the CA's signed policy file (`policy_file` in the config, the
//! CA directory's `policy.json` from `fq-server ca policy`): at start, whenever the file
//! changes (checked every `revocation_poll`), and at once on SIGHUP.
//!
//! The file is only a carrier: the replica thread installs a policy only if the county CA
//! signed it and it is newer than the one in force ([`fq_core::ledger::Ledger::install_policy`]),
//! then sends it to every child connected, and every later session carries it down the tree
//! (`docs/PROTOCOL.md`, "Policy"). A forged, unsigned or older file is logged and ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fq_core::policy::SignedPolicy;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::replica::Command;

/// Largest policy file read: the JSON form of the largest signed policy, with room.
const MAX_POLICY_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Offers the policy file to the replica thread at start and whenever it changes, until `stop`.
pub(crate) async fn follow(
    path: Option<PathBuf>,
    poll: Duration,
    replica: mpsc::Sender<Command>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(path) = path else { return };
    let mut seen = None;
    let mut hangup = hangup_signal();
    loop {
        let now = stamp(&path);
        if now != seen {
            seen = now;
            offer(&path, &replica).await;
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = recv_hangup(&mut hangup) => seen = None,
            _ = stop.changed() => return,
        }
    }
}

/// Reads the file and hands it to the replica thread, which logs what became of it.
async fn offer(path: &Path, replica: &mpsc::Sender<Command>) {
    let read = std::fs::metadata(path).and_then(|m| {
        if m.len() > MAX_POLICY_FILE_BYTES {
            Err(std::io::Error::other("the file is larger than any policy"))
        } else {
            std::fs::read(path)
        }
    });
    let bytes = match read
        .map_err(|e| e.to_string())
        .and_then(|b| SignedPolicy::json_to_bytes(&b).map_err(|e| e.to_string()))
    {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the policy file; keeping the policy in force");
            return;
        }
    };
    let (reply, answer) = oneshot::channel();
    if replica.send(Command::InstallPolicy { bytes, reply }).await.is_err() {
        return;
    }
    if let Ok(result) = answer.await {
        debug!(path = %path.display(), ?result, "policy file offered");
    }
}

/// When the file was last changed, and its size: enough to notice a new version.
pub(crate) fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = ();

#[cfg(unix)]
pub(crate) fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
pub(crate) fn hangup_signal() -> Hangup {}

#[cfg(unix)]
pub(crate) async fn recv_hangup(signal: &mut Hangup) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
pub(crate) async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
}
