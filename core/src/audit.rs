//! The merge audit: what township officers and county admins run to trust the
//! merge (`fq audit`, `docs/AUDIT.md`).
//!
//! Every function here reads a replica, a device's or a server's, and never
//! writes to it, except [`resolve`], which writes one ordinary change on a
//! replica that may write (a device, or an officer's or admin's own replica).
//!
//! - [`summary`]: one screen: cases, changes, open conflicts, refusals in the
//!   last 30 days, per-peer lag.
//! - [`conflicts`]: every open conflict (fields with several values,
//!   concurrent text edits, contradicting lifecycle events), each side with
//!   its author, device, device time and the time this replica received it.
//! - [`history`]: the full timeline of one case, every change with its
//!   provenance, signature, clock check and what it changed (old and new values).
//! - [`verify`]: the whole replica: signatures against grants, authority,
//!   the hash chain, projections, SQLite's integrity (see [`verify`]'s module).
//! - [`refused`]: every change this replica refused, with who sent it and why.
//! - [`Comparison`]: this replica against its parent, read-only, over the
//!   sync protocol's inspection messages (ADR 22).
//!
//! Results name things the way people know them: case numbers, certificate
//! ids (grant subjects), device ids and people's names, never bare UUIDs; the
//! words are made by the reader (`fq` renders them in Chinese or English from
//! the codes here).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::case::{AdminCode, CaseId, EventKind, Level, ReplicaId, Role};
use crate::clock::Timestamp;
use crate::doc::{AuditConflict, Author, ChangeNode, ConflictKind, ConflictSide, EventView, FieldEdit, Hash, NewEvent};
use crate::ledger::{Identity, Ledger, LedgerError, Tier, resolve_key};
use crate::store::{AuditEntry, CaseRow, GrantRow, LogEntry, PeerLag, PeerRow, StoreError};
use crate::trust::{self, GrantRole};

mod compare;
mod verify;

pub use compare::{
    CaseDiff, ChangeSummary, CompareError, CompareReport, Comparison, bucket_of, bucket_sums, cases_in_buckets,
    change_lists, sum_bits,
};
pub use verify::{Check, Failure, SignatureMemo, VerifyOptions, VerifyReport, verify};

/// How far a device time may be from the receive time before the history
/// flags it, unless `fq audit history --skew` says otherwise.
pub const DEFAULT_SKEW_MS: i64 = 10 * 60 * 1000;

/// How far back [`summary`] counts refusals.
pub const REFUSAL_WINDOW_MS: i64 = 30 * Timestamp::DAY_MS;

/// Who a replica or a signing key is, as far as this replica knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Who {
    /// The certificate id (the grant's subject, e.g. `d07`, `tw-101`).
    pub subject: Option<String>,
    /// The grant's role code (`mediator`, `township`...).
    pub role: Option<String>,
    /// The grant's division.
    pub scope: Option<String>,
    /// The replica's tier (`device`, `township`, `county`), when it is a peer.
    pub tier: Option<String>,
    /// The device id (16 hex digits), when it is a replica.
    pub device: Option<String>,
}

/// Names replicas and signing keys from the grants and peers this replica holds.
#[derive(Debug, Clone, Default)]
pub struct Names {
    grants: BTreeMap<[u8; 32], GrantRow>,
    peers: BTreeMap<ReplicaId, PeerRow>,
}

impl Names {
    /// Everything `ledger` knows of grants and peers.
    pub fn of(ledger: &Ledger) -> Result<Self, LedgerError> {
        let store = ledger.store();
        let grants = store.grants()?.into_iter().map(|g| (g.signer, g)).collect();
        let peers = store.peers()?.into_iter().map(|p| (p.replica, p)).collect();
        Ok(Names { grants, peers })
    }

    /// The grant of a signing key.
    pub fn grant(&self, signer: &[u8; 32]) -> Option<&GrantRow> {
        self.grants.get(signer)
    }

    /// Who holds a signing key.
    pub fn signer(&self, signer: &[u8; 32]) -> Who {
        match self.grants.get(signer) {
            Some(g) => Who {
                subject: Some(g.subject.clone()),
                role: Some(g.role.clone()),
                scope: Some(g.scope.clone()),
                ..Who::default()
            },
            None => Who::default(),
        }
    }

    /// Who a replica is: its grant if it ever sent one, its tier and scope
    /// if it ever synced, and always its device id.
    pub fn replica(&self, replica: ReplicaId) -> Who {
        let peer = self.peers.get(&replica);
        let mut who = peer.and_then(|p| p.signer.as_ref()).map(|s| self.signer(s)).unwrap_or_default();
        who.tier = peer.map(|p| p.tier.clone());
        if who.scope.is_none() {
            who.scope = peer.map(|p| p.scope.clone());
        }
        who.device = Some(replica.device().to_string());
        who
    }

    /// Who a replica named by its id text (as the audit table keeps it) is.
    pub fn replica_text(&self, text: &str) -> Option<Who> {
        text.parse::<ReplicaId>().ok().map(|r| self.replica(r))
    }
}

/// What this replica knows of one change: who, where, when, through whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// The change hash, hex.
    pub hash: String,
    /// Who made it and in which role, as the change says.
    pub author: Option<Author>,
    /// The device that made it (16 hex digits).
    pub device: Option<String>,
    /// The certificate that signed it, when it came signed.
    pub signer: Option<Who>,
    /// The device's time when it was made.
    pub device_time: Timestamp,
    /// When this replica received it (for a change written here, when it was
    /// written); `None` when it was logged before receive times were kept.
    pub received_at: Option<Timestamp>,
    /// Whether it was written on this replica.
    pub written_here: bool,
    /// The replica it came from, when it was received.
    pub relay: Option<Who>,
    /// Its position in this replica's log; `None` when no log row names it.
    pub log_seq: Option<i64>,
}

/// What a change's signature says, checked here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureState {
    /// It verifies against its signer's grant.
    Valid,
    /// It does not verify.
    Invalid,
    /// Signed by a key this replica holds no grant for.
    NoGrant,
    /// Written on this device, unsigned until it is sent (the device signs on push).
    WrittenHere,
    /// Logged as written here, but its actor is another device's (an import).
    NotThisDevice,
    /// Received without a signature.
    Unsigned,
    /// No log row names the change.
    NotLogged,
}

/// A device time that does not fit the receive time, in a way a device
/// being offline cannot explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ClockFlag {
    /// The change says it was made after this replica received it.
    AfterReceipt {
        /// By how much (ms).
        by_ms: i64,
    },
    /// The change says it was made before a change of the same device that
    /// it builds on: that device's clock went back.
    BeforeItsOwnDependency {
        /// By how much (ms).
        by_ms: i64,
    },
}

/// One side of a conflict as the audit shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideView {
    /// The value (for text: that side's text; for lifecycle: the event kind).
    pub value: String,
    /// A lifecycle event's text (agreement, reason) or level.
    pub detail: Option<String>,
    /// Whether this is the value the case shows now.
    pub shown: bool,
    /// The change that wrote it, when known.
    pub change: Option<Provenance>,
}

/// A conflict as the audit shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictView {
    /// What kind.
    pub kind: ConflictKind,
    /// The field (`title`, `parties[0].phone`, `description`, `agreement`, `status`).
    pub field: String,
    /// What the case shows now.
    pub shown: Option<String>,
    /// Whether it is still open.
    pub open: bool,
    /// The change that resolved it, when resolved.
    pub resolved_by: Option<Provenance>,
    /// Every side.
    pub sides: Vec<SideView>,
}

/// The open conflicts of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseConflicts {
    /// The case.
    pub case: CaseId,
    /// Its number.
    pub number: String,
    /// Its title.
    pub title: String,
    /// Its village.
    pub village: String,
    /// Its open conflicts.
    pub conflicts: Vec<ConflictView>,
}

/// Which conflicts [`conflicts`] lists.
#[derive(Debug, Clone, Default)]
pub struct ConflictFilter {
    /// Only this case.
    pub case: Option<CaseId>,
    /// Only conflicts with a side made or received at or after this time.
    pub since: Option<Timestamp>,
}

/// One change in a case's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryItem {
    /// Who, where, when, through whom.
    pub change: Provenance,
    /// What it did (`create`, `edit:title`, `note`...), as it says.
    pub op: String,
    /// Its signature, checked here.
    pub signature: SignatureState,
    /// A clock that does not fit, if any.
    pub clock: Option<ClockFlag>,
    /// Fields it wrote, with the old values (and who wrote them) and the new.
    pub fields: Vec<FieldView>,
    /// Lifecycle events it recorded.
    pub events: Vec<EventView>,
    /// The conflicts it resolved, by field.
    pub resolves: Vec<String>,
}

/// A field a change wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldView {
    /// The field.
    pub field: String,
    /// The values before; several when the change resolved a conflict.
    pub old: Vec<SideView>,
    /// The value after.
    pub new: Option<String>,
}

/// The full timeline of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseHistory {
    /// The case.
    pub case: CaseId,
    /// Its number.
    pub number: String,
    /// Its title.
    pub title: String,
    /// Its village.
    pub village: String,
    /// The skew allowed between device and receive time (ms).
    pub skew_ms: i64,
    /// Every change, each after those it builds on.
    pub changes: Vec<HistoryItem>,
    /// Every conflict the case ever had that is still visible in its
    /// history, open or resolved.
    pub conflicts: Vec<ConflictView>,
}

/// A refused or quarantined change, as [`refused`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalView {
    /// When it was refused (this replica's clock).
    pub at: Timestamp,
    /// `refused` or `quarantined`.
    pub kind: String,
    /// The case it claimed.
    pub case: Option<CaseId>,
    /// That case's number, if this replica holds it.
    pub number: Option<String>,
    /// The replica that sent it.
    pub sender: Option<Who>,
    /// Who signed it (its author's certificate).
    pub author: Option<Who>,
    /// The change, hex.
    pub change: Option<String>,
    /// The reason code (`out-of-scope`, `bad-signature`...); `None` for
    /// records written before schema 4, which only have `detail`.
    pub reason: Option<String>,
    /// The reason's parameters.
    pub params: Option<serde_json::Value>,
    /// The record's words as written (English, for logs and older records).
    pub detail: String,
}

/// One peer in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    /// Who it is.
    pub who: Who,
    /// Whether it is this replica's parent (it dials it) or a child.
    pub parent: bool,
    /// When they last synced.
    pub last_sync: Option<Timestamp>,
    /// How far this replica holds its log.
    pub their_seq: i64,
    /// How far it acknowledged this replica's log.
    pub acked_seq: i64,
    /// What a server recorded at the end of the last session with this child.
    pub lag: Option<PeerLag>,
    /// For a parent: changes this replica has that the parent has not
    /// acknowledged, counted now.
    pub unsent: Option<i64>,
}

/// The one-screen summary of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Whose replica.
    pub identity: Identity,
    /// Cases held.
    pub cases: i64,
    /// Changes held.
    pub changes: i64,
    /// Changes waiting for their dependencies.
    pub pending: i64,
    /// Cases with open conflicts.
    pub conflicted_cases: i64,
    /// Open conflicts, all kinds.
    pub open_conflicts: i64,
    /// Cases last written before conflicts were counted (schema 4): not in
    /// the two counts above; `fq audit conflicts` looks at them.
    pub uncounted_cases: i64,
    /// Changes refused or quarantined in the last 30 days.
    pub refusals_30d: i64,
    /// Every peer.
    pub peers: Vec<PeerView>,
    /// When this summary was made.
    pub generated_at: Timestamp,
}

/// The one-screen summary.
pub fn summary(ledger: &Ledger) -> Result<Summary, LedgerError> {
    let store = ledger.store();
    let [cases, changes, pending, _] = store.counts()?;
    let (conflicted_cases, open_conflicts, uncounted_cases) = store.conflict_counts()?;
    let now = ledger.now();
    let refusals_30d = store.count_audit(&["refused", "quarantined"], Timestamp(now.0 - REFUSAL_WINDOW_MS))?;
    let names = Names::of(ledger)?;
    let me = ledger.identity().clone();
    let mut peers = Vec::new();
    for p in store.peers()? {
        let parent = p.tier != Tier::Device.code()
            && AdminCode::parse(&p.scope).is_ok_and(|s| s.contains(&me.scope) && s != me.scope)
            || (p.tier != Tier::Device.code() && me.tier == Tier::Device && p.scope == me.scope.as_str());
        let unsent = if parent { Some(store.count_unacked(p.acked_seq, &me.scope, p.replica)?) } else { None };
        peers.push(PeerView {
            who: names.replica(p.replica),
            parent,
            last_sync: p.last_sync,
            their_seq: p.their_seq,
            acked_seq: p.acked_seq,
            lag: p.lag,
            unsent,
        });
    }
    peers.sort_by(|a, b| b.parent.cmp(&a.parent).then(b.last_sync.cmp(&a.last_sync)));
    Ok(Summary {
        identity: me,
        cases,
        changes,
        pending,
        conflicted_cases,
        open_conflicts,
        uncounted_cases,
        refusals_30d,
        peers,
        generated_at: now,
    })
}

/// A case's log rows by the change they name, resolved against its document.
struct CaseLog {
    case: CaseId,
    rows: BTreeMap<Hash, LogEntry>,
}

impl CaseLog {
    fn read(ledger: &mut Ledger, rowid: i64, case: CaseId) -> Result<Self, LedgerError> {
        let entries = ledger.store().logs_of(&[rowid])?;
        Self::from_entries(ledger, case, entries)
    }

    fn from_entries(ledger: &mut Ledger, case: CaseId, entries: Vec<LogEntry>) -> Result<Self, LedgerError> {
        let hashes = ledger.case_doc(case)?.change_hashes();
        let rows = entries.into_iter().filter_map(|e| Some((resolve_key(&hashes, &e)?, e))).collect();
        Ok(CaseLog { case, rows })
    }
}

/// Reads what the audit needs of one case: its log and timeline.
struct CaseReader<'a> {
    names: &'a Names,
    own_device: crate::case::DeviceId,
    log: CaseLog,
    nodes: BTreeMap<Hash, ChangeNode>,
}

impl CaseReader<'_> {
    fn provenance(&self, hash: &Hash) -> Option<Provenance> {
        let node = self.nodes.get(hash)?;
        let row = self.log.rows.get(hash);
        let written_here = row.is_some_and(|r| r.received_from.is_none());
        let received_at = match row {
            Some(r) if r.received_from.is_none() && r.received_at.is_none() => Some(node.at),
            Some(r) => r.received_at,
            None => None,
        };
        Some(Provenance {
            hash: hex(hash),
            author: node.author.clone(),
            device: node.device.map(|d| d.to_string()),
            signer: row.and_then(|r| r.signer.as_ref()).map(|s| self.names.signer(s)),
            device_time: node.at,
            received_at,
            written_here,
            relay: row.and_then(|r| r.received_from).map(|r| self.names.replica(r)),
            log_seq: row.map(|r| r.log_seq),
        })
    }

    fn side(&self, s: &ConflictSide, shown: bool) -> SideView {
        SideView {
            value: s.value.clone(),
            detail: s.detail.clone(),
            shown,
            change: s.hash.as_ref().and_then(|h| self.provenance(h)),
        }
    }

    fn conflict(&self, c: &AuditConflict) -> ConflictView {
        let sides = c
            .sides
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let shown = match c.kind {
                    ConflictKind::Field => i == 0,
                    ConflictKind::Text => false,
                    ConflictKind::Lifecycle => c.shown.as_deref() == Some(s.value.as_str()),
                };
                self.side(s, shown)
            })
            .collect();
        ConflictView {
            kind: c.kind,
            field: c.field.clone(),
            shown: c.shown.clone(),
            open: c.is_open(),
            resolved_by: c.resolved_by.as_ref().and_then(|h| self.provenance(h)),
            sides,
        }
    }

    fn signature(&self, hash: &Hash, node: &ChangeNode) -> SignatureState {
        let Some(row) = self.log.rows.get(hash) else { return SignatureState::NotLogged };
        match (&row.signer, &row.signature) {
            (Some(signer), Some(signature)) => {
                if self.names.grant(signer).is_none() {
                    return SignatureState::NoGrant;
                }
                let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(signer) else { return SignatureState::Invalid };
                let head_of = |h: &Hash| {
                    let r = self.log.rows.get(h).filter(|r| r.signer.as_ref() == Some(signer))?;
                    r.signature.clone()
                };
                if trust::check_provenance(&key, self.log.case.as_bytes(), hash, signature, &head_of).is_ok() {
                    SignatureState::Valid
                } else {
                    SignatureState::Invalid
                }
            }
            _ if row.received_from.is_some() => SignatureState::Unsigned,
            _ if node.device == Some(self.own_device) => SignatureState::WrittenHere,
            _ => SignatureState::NotThisDevice,
        }
    }

    fn clock(&self, hash: &Hash, node: &ChangeNode, skew_ms: i64) -> Option<ClockFlag> {
        if let Some(received) = self.provenance(hash).and_then(|p| p.received_at)
            && node.at.0 > received.0.saturating_add(skew_ms)
        {
            return Some(ClockFlag::AfterReceipt { by_ms: node.at.0 - received.0 });
        }
        node.deps
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.device.is_some() && d.device == node.device && d.at.0 > node.at.0.saturating_add(skew_ms))
            .map(|d| ClockFlag::BeforeItsOwnDependency { by_ms: d.at.0 - node.at.0 })
            .next()
    }
}

fn reader<'a>(ledger: &mut Ledger, names: &'a Names, log: CaseLog, timeline: &crate::doc::Timeline) -> CaseReader<'a> {
    CaseReader {
        names,
        own_device: ledger.identity().replica.device(),
        log,
        nodes: timeline.nodes.iter().map(|n| (n.hash, n.clone())).collect(),
    }
}

/// Every open conflict, case by case (cases in number order).
pub fn conflicts(ledger: &mut Ledger, filter: &ConflictFilter) -> Result<Vec<CaseConflicts>, LedgerError> {
    let names = Names::of(ledger)?;
    let candidates = match filter.case {
        Some(case) => ledger.store().case_with_rowid(case)?.into_iter().collect(),
        None => ledger.store().conflicted_cases(None)?,
    };
    let mut out = Vec::new();
    // Log rows are read a chunk of cases at a time: one pass of a device's
    // unindexed log serves many cases.
    for chunk in candidates.chunks(256) {
        let rowids: Vec<i64> = chunk.iter().map(|(r, _)| *r).collect();
        let mut by_case: BTreeMap<CaseId, Vec<LogEntry>> = BTreeMap::new();
        for e in ledger.store().logs_of(&rowids)? {
            by_case.entry(e.case).or_default().push(e);
        }
        for (_, row) in chunk {
            let doc = ledger.case_doc(row.id)?;
            let timeline = doc.timeline();
            let open: Vec<AuditConflict> =
                doc.audit_conflicts(&timeline).into_iter().filter(AuditConflict::is_open).collect();
            if open.is_empty() {
                continue;
            }
            let log = CaseLog::from_entries(ledger, row.id, by_case.remove(&row.id).unwrap_or_default())?;
            let r = reader(ledger, &names, log, &timeline);
            let views: Vec<ConflictView> = open
                .iter()
                .map(|c| r.conflict(c))
                .filter(|c| {
                    filter.since.is_none_or(|since| {
                        c.sides
                            .iter()
                            .filter_map(|s| s.change.as_ref())
                            .any(|p| p.device_time >= since || p.received_at.is_some_and(|at| at >= since))
                    })
                })
                .collect();
            if !views.is_empty() {
                out.push(case_conflicts(row, views));
            }
        }
    }
    Ok(out)
}

fn case_conflicts(row: &CaseRow, conflicts: Vec<ConflictView>) -> CaseConflicts {
    CaseConflicts {
        case: row.id,
        number: row.number.clone(),
        title: row.title.clone(),
        village: row.village.clone(),
        conflicts,
    }
}

/// The full timeline of one case: every change, each after those it builds
/// on, with its provenance, signature, clock check and effect; and every
/// conflict its history shows, open or resolved.
pub fn history(ledger: &mut Ledger, case: CaseId, skew_ms: i64) -> Result<CaseHistory, LedgerError> {
    let names = Names::of(ledger)?;
    let (rowid, row) = ledger
        .store()
        .case_with_rowid(case)?
        .ok_or_else(|| LedgerError::CaseNotFound { reference: case.to_string() })?;
    let log = CaseLog::read(ledger, rowid, case)?;
    let policy = ledger.policy().policy().clone();
    let doc = ledger.case_doc(case)?;
    let timeline = doc.timeline();
    let all = doc.audit_conflicts(&timeline);
    let events = doc.read(&policy)?.events;
    let effects: Vec<_> = (0..timeline.nodes.len()).map(|i| doc.effects(&timeline, i)).collect();
    let r = reader(ledger, &names, log, &timeline);
    let mut changes = Vec::with_capacity(timeline.nodes.len());
    for (node, effect) in timeline.nodes.iter().zip(effects) {
        let Some(change) = r.provenance(&node.hash) else { continue };
        let fields: Vec<FieldView> = effect
            .fields
            .iter()
            .map(|f| FieldView {
                field: f.field.clone(),
                old: f.old.iter().map(|s| r.side(s, false)).collect(),
                new: f.new.clone(),
            })
            .collect();
        let mut resolves: Vec<String> = fields.iter().filter(|f| f.old.len() > 1).map(|f| f.field.clone()).collect();
        resolves.extend(all.iter().filter(|c| c.resolved_by == Some(node.hash)).map(|c| c.field.clone()));
        resolves.dedup();
        changes.push(HistoryItem {
            op: node.op.clone(),
            signature: r.signature(&node.hash, node),
            clock: r.clock(&node.hash, node, skew_ms),
            fields,
            events: effect.events.iter().filter_map(|&e| events.get(e).cloned()).collect(),
            resolves,
            change,
        });
    }
    // Field conflicts the history resolved: each is the old values of the
    // change that replaced them.
    let mut conflicts: Vec<ConflictView> = all.iter().map(|c| r.conflict(c)).collect();
    for item in &changes {
        for f in item.fields.iter().filter(|f| f.old.len() > 1) {
            conflicts.push(ConflictView {
                kind: ConflictKind::Field,
                field: f.field.clone(),
                shown: f.new.clone(),
                open: false,
                resolved_by: Some(item.change.clone()),
                sides: f.old.clone(),
            });
        }
    }
    Ok(CaseHistory { case, number: row.number, title: row.title, village: row.village, skew_ms, changes, conflicts })
}

/// Every refused or quarantined change recorded at or after `since`, newest first.
pub fn refused(ledger: &Ledger, since: Option<Timestamp>) -> Result<Vec<RefusalView>, LedgerError> {
    let names = Names::of(ledger)?;
    let store = ledger.store();
    let mut numbers: BTreeMap<CaseId, Option<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for e in store.audit_where(&["refused", "quarantined"], since, u32::MAX)? {
        let number = match e.case {
            Some(c) => match numbers.get(&c) {
                Some(n) => n.clone(),
                None => {
                    let n = store.case_row(c)?.map(|r| r.number);
                    numbers.insert(c, n.clone());
                    n
                }
            },
            None => None,
        };
        out.push(refusal(&names, e, number));
    }
    Ok(out)
}

fn refusal(names: &Names, e: AuditEntry, number: Option<String>) -> RefusalView {
    let author = e.signer.as_deref().and_then(unhex32).map(|k| names.signer(&k));
    RefusalView {
        at: e.at,
        kind: e.kind,
        case: e.case,
        number,
        sender: e.peer.as_deref().and_then(|p| names.replica_text(p)),
        author,
        change: e.change,
        reason: e.code,
        params: e.params,
        detail: e.detail,
    }
}

/// What [`resolve`] may set, parsed from `--field` and `--value`.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// A register: `title`, `category`, `risk`, `grid`, `responsible`.
    Field(FieldEdit),
    /// Who is responsible (written as an assignment, like `case assign`).
    Responsible(String),
    /// A party's name, ID number or phone.
    Party {
        /// Which party (from 0).
        index: usize,
        /// `name`, `id_number` or `phone`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// The description.
    Description(String),
    /// The agreement: a settlement recorded again with this text.
    Agreement(String),
    /// The status: the lifecycle event of that kind among the conflicting
    /// ones, recorded again after all of them.
    Status(EventKind),
}

/// Why `fq audit resolve` cannot do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The field names nothing that can hold a conflict.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// The field has no open conflict in this case.
    #[error("field {field} of case {number} has no open conflict")]
    NoConflict {
        /// The field.
        field: String,
        /// The case.
        number: String,
    },
    /// A status that none of the conflicting events has.
    #[error("status {value:?} is not one of the conflicting events ({})", choices.join(", "))]
    NotASide {
        /// What was given.
        value: String,
        /// What may be given.
        choices: Vec<String>,
    },
    /// A server's replica only relays: it never writes.
    #[error("a server's replica cannot write; resolve on an officer's or admin's own replica")]
    ServerReplica,
}

/// Settles a conflict by writing a new value as an ordinary change, made by
/// whoever runs it (the replica's operator), signed when it is sent like
/// any other. Only where the field has an open conflict.
pub fn resolve(ledger: &mut Ledger, case: CaseId, field: &str, value: &str) -> Result<ResolveOutcome, ResolveFailed> {
    if ledger.identity().tier != Tier::Device {
        return Err(ResolveError::ServerReplica.into());
    }
    ledger.check_writable()?;
    let (_, row) = ledger
        .store()
        .case_with_rowid(case)?
        .ok_or_else(|| LedgerError::CaseNotFound { reference: case.to_string() })?;
    let doc = ledger.case_doc(case)?;
    let timeline = doc.timeline();
    let open: Vec<AuditConflict> = doc.audit_conflicts(&timeline).into_iter().filter(AuditConflict::is_open).collect();
    let field = field.trim();
    let Some(conflict) = open.iter().find(|c| c.field == field) else {
        if parse_field(field, value).is_err() {
            return Err(ResolveError::UnknownField(field.to_owned()).into());
        }
        return Err(ResolveError::NoConflict { field: field.to_owned(), number: row.number }.into());
    };
    let resolution = parse_field(field, value)?;
    let state = match resolution {
        Resolution::Field(edit) => ledger.edit(case, edit)?,
        Resolution::Description(text) => {
            ledger.edit(case, FieldEdit { description: Some(text), ..FieldEdit::default() })?
        }
        Resolution::Responsible(to) => {
            // A name from the roster where there is one (asks when it is ambiguous).
            ledger.assign(case, &to)?
        }
        Resolution::Party { index, key, value } => {
            let value = match key {
                "id_number" => crate::case::IdNumber::parse(&value)?.as_str().to_owned(),
                "phone" => crate::case::Phone::parse(&value)?.as_str().to_owned(),
                _ => crate::case::check_line("party name", &value, 50)?,
            };
            ledger
                .modify(case, |_, doc, author, now| Ok(vec![doc.set_party_field(index, key, &value, author, now)?]))?
        }
        Resolution::Agreement(text) => {
            let text = crate::case::check_text("agreement", &text, crate::case::MAX_TEXT_CHARS)?;
            ledger
                .modify(case, |_, doc, author, now| Ok(vec![doc.push_event(&NewEvent::Settle(text), author, now)?]))?
        }
        Resolution::Status(kind) => {
            let side =
                conflict.sides.iter().find(|s| s.value == kind.code()).ok_or_else(|| ResolveError::NotASide {
                    value: kind.code().to_owned(),
                    choices: conflict.sides.iter().map(|s| s.value.clone()).collect(),
                })?;
            let event = event_again(kind, side.detail.clone(), ledger.identity().role);
            ledger.modify(case, |_, doc, author, now| Ok(vec![doc.push_event(&event, author, now)?]))?
        }
    };
    Ok(ResolveOutcome { case, number: state.number, field: field.to_owned(), value: value.to_owned() })
}

/// What [`resolve`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolveOutcome {
    /// The case.
    pub case: CaseId,
    /// Its number.
    pub number: String,
    /// The field resolved.
    pub field: String,
    /// The value written.
    pub value: String,
}

/// Why [`resolve`] failed: the request, or the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveFailed {
    /// The request does not fit the case.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<StoreError> for ResolveFailed {
    fn from(e: StoreError) -> Self {
        ResolveFailed::Ledger(LedgerError::Store(e))
    }
}

impl From<crate::case::InputError> for ResolveFailed {
    fn from(e: crate::case::InputError) -> Self {
        ResolveFailed::Ledger(LedgerError::Input(e))
    }
}

impl From<crate::doc::DocError> for ResolveFailed {
    fn from(e: crate::doc::DocError) -> Self {
        ResolveFailed::Ledger(LedgerError::Doc(e))
    }
}

/// The lifecycle event that records `kind` again, with the payload of the
/// conflicting event (`detail`: its text or level).
fn event_again(kind: EventKind, detail: Option<String>, role: Role) -> NewEvent {
    let text = detail.clone().unwrap_or_default();
    match kind {
        EventKind::Escalated => {
            let to = detail.as_deref().and_then(|d| Level::parse(d).ok()).unwrap_or(Level::Township);
            NewEvent::Escalate { to, reason: text, rule: None }
        }
        EventKind::EscalationAccepted => NewEvent::AcceptEscalation {
            level: detail.as_deref().and_then(|d| Level::parse(d).ok()).unwrap_or(role.level()),
        },
        EventKind::Failed => NewEvent::Fail(text),
        EventKind::Relapsed => NewEvent::FollowUp { outcome: crate::case::Outcome::Relapsed, note: detail },
        EventKind::Archived => NewEvent::Archive,
        _ => NewEvent::Settle(text),
    }
}

/// Reads `--field` and `--value`.
pub fn parse_field(field: &str, value: &str) -> Result<Resolution, ResolveFailed> {
    let field = field.trim();
    let edit = |f: FieldEdit| Ok(Resolution::Field(f));
    match field {
        "title" => edit(FieldEdit { title: Some(value.to_owned()), ..FieldEdit::default() }),
        "category" => edit(FieldEdit { category: Some(crate::case::Category::parse(value)?), ..FieldEdit::default() }),
        "risk" => edit(FieldEdit { risk: Some(crate::case::Risk::parse(value)?), ..FieldEdit::default() }),
        "grid" => {
            let grid = value
                .trim()
                .parse::<u32>()
                .map_err(|_| crate::case::InputError::Vocabulary { what: "grid", input: value.to_owned() })?;
            edit(FieldEdit { grid: Some(grid), ..FieldEdit::default() })
        }
        "responsible" => Ok(Resolution::Responsible(value.to_owned())),
        "description" => Ok(Resolution::Description(value.to_owned())),
        "agreement" => Ok(Resolution::Agreement(value.to_owned())),
        "status" => Ok(Resolution::Status(EventKind::parse(value)?)),
        f => {
            let party = f.strip_prefix("parties[").and_then(|rest| rest.split_once("]."));
            let Some((index, key)) = party else { return Err(ResolveError::UnknownField(f.to_owned()).into()) };
            let index: usize = index.parse().map_err(|_| ResolveError::UnknownField(f.to_owned()))?;
            let key = match key {
                "name" => "name",
                "id_number" => "id_number",
                "phone" => "phone",
                _ => return Err(ResolveError::UnknownField(f.to_owned()).into()),
            };
            Ok(Resolution::Party { index, key, value: value.to_owned() })
        }
    }
}

/// Hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// The key of a grant, decoded once, for checking many signatures.
pub(crate) fn grant_key(g: &GrantRow) -> Option<(VerifyingKey, GrantRole, Option<AdminCode>)> {
    let key = VerifyingKey::from_bytes(&g.signer).ok()?;
    let role = GrantRole::parse(&g.role).ok()?;
    Some((key, role, AdminCode::parse(&g.scope).ok()))
}
