//! `fq-server status`: what a server's replica holds, read from its file without disturbing it.
//!
//! The ledger is opened read-only (SQLite WAL lets a reader in beside the running server), so
//! an operator can look at a live server: its identity, how much it holds, every peer it has
//! synced with and how far, and the newest refusals from its audit log.

use std::path::Path;
use std::sync::Arc;

use fq_core::audit::Names;
use fq_core::clock::{SystemClock, Timestamp};
use fq_core::ledger::{Identity, Ledger, LedgerError};
use fq_core::store::{AuditEntry, PeerLag};
use fq_core::vault::DataKey;
use serde::Serialize;

use crate::server::LEDGER_FILE;

/// How many audit records are scanned for refusals.
const AUDIT_SCAN: u32 = 500;
/// How many refusals a status report lists.
pub const MAX_REFUSALS_SHOWN: usize = 20;

/// A server replica's state (`schemas/server-status.v1.schema.json`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Who the replica belongs to.
    pub identity: Identity,
    /// How much it holds.
    pub counts: Counts,
    /// The last position of its own change log.
    pub log_head: i64,
    /// Every peer it has synced with, most recent first.
    pub peers: Vec<PeerStatus>,
    /// The newest refused or quarantined changes, newest first.
    pub refusals: Vec<AuditEntry>,
    /// The county policy version this replica computes with (0: the built-in default).
    pub policy_version: u64,
    /// The newest monthly report written into `DIR/reports/`, if any.
    pub newest_report: Option<crate::report::MonthlyFiles>,
    /// When this report was made (ms since the epoch).
    pub generated_at: Timestamp,
}

/// Row counts of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Cases.
    pub cases: i64,
    /// Changes held.
    pub changes: i64,
    /// Changes waiting for their dependencies.
    pub pending: i64,
    /// Audit records.
    pub audit: i64,
}

/// One peer, as the replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Its replica id.
    pub replica: String,
    /// `device`, `township` or `county`.
    pub tier: String,
    /// Its scope.
    pub scope: String,
    /// How far this replica holds the peer's log.
    pub their_seq: i64,
    /// How far the peer has acknowledged this replica's log.
    pub acked_seq: i64,
    /// When they last synced (ms since the epoch), if ever.
    pub last_sync: Option<Timestamp>,
    /// The certificate id the peer presented (its grant's subject), if known.
    pub subject: Option<String>,
    /// For a child: what it still lacked and owed when its last session
    /// ended (ADR 23).
    pub lag: Option<PeerLag>,
}

/// Reads the status of the plain replica in `data_dir`.
pub fn read(data_dir: &Path) -> Result<Status, LedgerError> {
    read_with_key(data_dir, None)
}

/// Reads the status of the replica in `data_dir`, with its data key if it is encrypted.
pub fn read_with_key(data_dir: &Path, key: Option<&DataKey>) -> Result<Status, LedgerError> {
    let clock = Arc::new(SystemClock);
    let ledger = Ledger::open_read_only_with_key(&data_dir.join(LEDGER_FILE), clock, key)?;
    let [cases, changes, pending, audit] = ledger.counts()?;
    let names = Names::of(&ledger)?;
    let mut peers: Vec<PeerStatus> = ledger
        .peers()?
        .into_iter()
        .map(|p| PeerStatus {
            replica: p.replica.to_string(),
            subject: names.replica(p.replica).subject,
            tier: p.tier,
            scope: p.scope,
            their_seq: p.their_seq,
            acked_seq: p.acked_seq,
            last_sync: p.last_sync,
            lag: p.lag,
        })
        .collect();
    peers.sort_by(|a, b| b.last_sync.cmp(&a.last_sync).then_with(|| a.replica.cmp(&b.replica)));
    let refusals = ledger
        .audit(AUDIT_SCAN)?
        .into_iter()
        .filter(|e| e.kind == "refused" || e.kind == "quarantined")
        .take(MAX_REFUSALS_SHOWN)
        .collect();
    Ok(Status {
        identity: ledger.identity().clone(),
        counts: Counts { cases, changes, pending, audit },
        log_head: ledger.log_head()?,
        peers,
        refusals,
        policy_version: ledger.policy().version(),
        newest_report: crate::report::newest(data_dir),
        generated_at: ledger.now(),
    })
}
