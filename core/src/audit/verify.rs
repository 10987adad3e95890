//! `fq audit verify`: is this replica what its changes say it is?
//!
//! For every case (one at a time, streamed from the file, checked on every
//! core), and then for the file:
//! - **signature**: every change received from elsewhere carries its author's
//!   signature, it verifies (`verify_strict`) against the author's grant, and
//!   the grant is signed by the county CA (when the CA key is known: from the
//!   device's bundle, or `--bundle`). A device's own changes are unsigned
//!   until it pushes them (the session signs them): they must be made by this
//!   device (their actor starts with its device id).
//! - **authority**: the grant that signed a change is a person's, its scope
//!   covers the case's village, and an escalation is accepted only by the
//!   level it was sent to.
//! - **chain**: the case's document loads, its heads are those of the
//!   changes it holds, every log row names one of them by key and chain
//!   (ADR 5, 6: the chain of each row is computed from the full hash and the
//!   row before, so the whole log is re-derived), no change is logged twice,
//!   and no change is in the document without a log row.
//! - **projection**: the `cases` row lists and reports read is what the
//!   document says.
//! - **integrity**: SQLite's `integrity_check`.
//!
//! A failure names the case and the change; one bad case or row never stops
//! the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::{grant_key, hex};
use crate::case::{AdminCode, CaseId, DeviceId, EventKind, Level};
use crate::clock::Timestamp;
use crate::doc::{self, CaseDoc, Hash};
use crate::faults::{self, Bug};
use crate::ledger::{Ledger, LedgerError, Tier, projection, resolve_key};
use crate::policy::Policy;
use crate::store::{CaseRow, StoredCase};
use crate::trust::{self, GrantRole, SignedGrant};

/// Cases queued between the reader and the checkers: enough to keep every
/// core busy, few enough that memory holds a handful of cases.
const QUEUE_CASES: usize = 64;
/// Memory for SQLite's page cache while the file is read in case order.
const VERIFY_CACHE_MIB: u32 = 256;

/// What [`verify`] checks.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this case (the file's integrity is still checked).
    pub case: Option<CaseId>,
    /// The county CA's key: grants are checked against it when known.
    pub ca: Option<VerifyingKey>,
    /// Threads checking cases (0: one per core).
    pub threads: usize,
    /// Signatures already found valid by an earlier run in this process, to
    /// share between runs over replicas that hold the same changes (the
    /// simulator verifies a county's replicas one after the other).
    pub memo: Option<Arc<SignatureMemo>>,
}

/// Signatures (key, message, signature) and grants (CA, bytes) already
/// found valid. Checking one is a pure function of those bytes, so a memo
/// of the valid ones changes no answer; anything not in it is checked.
#[derive(Debug, Default)]
pub struct SignatureMemo {
    valid: Mutex<BTreeSet<[u8; 32]>>,
}

impl SignatureMemo {
    fn key(parts: &[&[u8]]) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        h.finalize().into()
    }

    fn holds(&self, key: &[u8; 32]) -> bool {
        self.valid.lock().is_ok_and(|set| set.contains(key))
    }

    fn remember(&self, key: [u8; 32]) {
        if let Ok(mut set) = self.valid.lock() {
            set.insert(key);
        }
    }
}

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// A signature or a grant.
    Signature,
    /// Who may write what.
    Authority,
    /// Documents, log rows and the hash chain.
    Chain,
    /// A projected `cases` row.
    Projection,
    /// SQLite's integrity check.
    Integrity,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Which check.
    pub check: Check,
    /// What failed (`bad-signature`, `no-grant`, `damaged-document`,
    /// `log-row-unresolved`, `change-not-in-log`, `projection-mismatch`...).
    pub code: String,
    /// The case, when one is concerned.
    pub case: Option<CaseId>,
    /// Its number, when its row is readable.
    pub number: Option<String>,
    /// The change (hex of its hash), when one is concerned.
    pub change: Option<String>,
    /// The log position, when a log row is concerned.
    pub log_seq: Option<i64>,
    /// Details (the signer, the columns that differ...).
    pub params: serde_json::Value,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Cases checked.
    pub cases: u64,
    /// Changes checked.
    pub changes: u64,
    /// Signatures verified.
    pub signatures: u64,
    /// Whether grants were checked against the county CA.
    pub ca_checked: bool,
    /// Whether the whole replica was checked (not `--case`).
    pub whole: bool,
    /// Whether SQLite's integrity check passed.
    pub integrity: bool,
    /// Every failure, case by case.
    pub failures: Vec<Failure>,
    /// When the check ran (this replica's clock).
    pub checked_at: Timestamp,
    /// How long it took.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.integrity
    }
}

/// A grant as the checkers use it.
#[derive(Debug, Clone)]
struct GrantCheck {
    key: Option<VerifyingKey>,
    role: Option<GrantRole>,
    scope: Option<AdminCode>,
    subject: String,
}

/// What every checker shares.
struct Context {
    grants: BTreeMap<[u8; 32], GrantCheck>,
    policy: Policy,
    own_device: DeviceId,
    server: bool,
    actor: automerge::ActorId,
    /// The injected bug, read on the calling thread (switches are per thread).
    skip_signatures: bool,
    memo: Option<Arc<SignatureMemo>>,
}

/// What one case gave.
#[derive(Default)]
struct CaseResult {
    changes: u64,
    signatures: u64,
    failures: Vec<Failure>,
}

/// Checks the replica (or one case of it, and the file). Reads only; calls
/// `progress(done, total)` as cases are checked.
pub fn verify(
    ledger: &Ledger,
    opts: &VerifyOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport, LedgerError> {
    let started = Instant::now();
    let store = ledger.store();
    let cache = store.cache_size()?;
    store.set_cache_mib(VERIFY_CACHE_MIB)?;
    let report = verify_with(ledger, opts, progress, started);
    // The connection may go on serving (a simulator's replica): give back the memory.
    store.set_cache_size(cache)?;
    report
}

fn verify_with(
    ledger: &Ledger,
    opts: &VerifyOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    started: Instant,
) -> Result<VerifyReport, LedgerError> {
    let store = ledger.store();
    let mut failures = Vec::new();
    let mut grants = BTreeMap::new();
    for g in store.grants()? {
        let decoded = grant_key(&g);
        if let Some(ca) = &opts.ca {
            let memo_key = SignatureMemo::key(&[
                b"grant",
                ca.as_bytes(),
                &g.bytes,
                &g.signer,
                g.subject.as_bytes(),
                g.role.as_bytes(),
                g.scope.as_bytes(),
            ]);
            let sound = opts.memo.as_ref().is_some_and(|m| m.holds(&memo_key))
                || SignedGrant::decode(&g.bytes, ca).is_ok_and(|s| {
                    s.grant.public_key == g.signer
                        && s.grant.subject == g.subject
                        && s.grant.role.code() == g.role
                        && s.grant.scope.as_str() == g.scope
                });
            if sound && let Some(m) = &opts.memo {
                m.remember(memo_key);
            }
            if !sound {
                failures.push(Failure {
                    check: Check::Signature,
                    code: "grant-not-from-ca".into(),
                    case: None,
                    number: None,
                    change: None,
                    log_seq: None,
                    params: serde_json::json!({ "subject": g.subject, "signer": hex(&g.signer) }),
                });
            }
        }
        grants.insert(
            g.signer,
            GrantCheck {
                key: decoded.as_ref().map(|d| d.0),
                role: decoded.as_ref().map(|d| d.1),
                scope: decoded.and_then(|d| d.2),
                subject: g.subject.clone(),
            },
        );
    }
    let id = ledger.identity();
    let cx = Context {
        grants,
        policy: ledger.policy().policy().clone(),
        own_device: id.replica.device(),
        server: id.tier != Tier::Device,
        actor: ledger.actor().clone(),
        skip_signatures: faults::on(Bug::VerifySkipsSignatures),
        memo: opts.memo.clone(),
    };
    let total = match opts.case {
        Some(_) => 1,
        None => u64::try_from(store.counts()?[0]).unwrap_or(0),
    };
    let chains = store.log_chains()?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    };
    let (mut cases, mut changes, mut signatures) = (0u64, 0u64, 0u64);
    let (work_tx, work_rx) = mpsc::sync_channel::<StoredCase>(QUEUE_CASES);
    let work_rx = std::sync::Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::channel::<CaseResult>();
    let scanned = std::thread::scope(|s| -> Result<(), LedgerError> {
        for _ in 0..threads.max(1) {
            let done_tx = done_tx.clone();
            let (cx, work_rx) = (&cx, &work_rx);
            s.spawn(move || {
                loop {
                    // The lock is held only to take the next case.
                    let next = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(case) = next else { return };
                    if done_tx.send(check_case(cx, case)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut take = |r: CaseResult| {
            cases += 1;
            changes += r.changes;
            signatures += r.signatures;
            failures.extend(r.failures);
            progress(cases, total.max(cases));
        };
        let scan = store.scan_cases(opts.case, &chains, |case| {
            while let Ok(r) = done_rx.try_recv() {
                take(r);
            }
            work_tx.send(case).is_ok()
        });
        drop(work_tx);
        for r in done_rx {
            take(r);
        }
        Ok(scan?)
    });
    scanned?;
    let integrity = store.integrity_check().is_ok();
    if !integrity {
        failures.push(Failure {
            check: Check::Integrity,
            code: "integrity-check-failed".into(),
            case: None,
            number: None,
            change: None,
            log_seq: None,
            params: serde_json::json!({}),
        });
    }
    failures.sort_by(|a, b| (&a.number, a.log_seq, a.check).cmp(&(&b.number, b.log_seq, b.check)));
    Ok(VerifyReport {
        cases,
        changes,
        signatures,
        ca_checked: opts.ca.is_some(),
        whole: opts.case.is_none(),
        integrity,
        failures,
        checked_at: ledger.now(),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Checks one case; never fails: whatever is wrong becomes a failure.
fn check_case(cx: &Context, stored: StoredCase) -> CaseResult {
    let mut out = CaseResult { changes: (stored.log.len() + stored.bad_log.len()) as u64, ..CaseResult::default() };
    // The document is loaded first: it names the case when its row does not read.
    let (mut doc, load_error) = match stored.snapshot.as_ref().map(|s| CaseDoc::load(s, cx.actor.clone())) {
        Some(Ok(d)) => (Some(d), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let number = match (&stored.row, doc.as_mut()) {
        (Some(r), _) => Some(r.number.clone()),
        (None, Some(d)) => d.read(&cx.policy).ok().map(|s| s.number),
        (None, None) => None,
    };
    let case = stored.row.as_ref().map(|r| r.id).or(stored.id);
    let fail = |out: &mut CaseResult, check: Check, code: &str, change: Option<&Hash>, log_seq: Option<i64>, params| {
        out.failures.push(Failure {
            check,
            code: code.into(),
            case,
            number: number.clone(),
            change: change.map(|h| hex(h)),
            log_seq,
            params,
        });
    };
    for (seq, what) in &stored.bad_log {
        fail(&mut out, Check::Chain, "unreadable-log-row", None, Some(*seq), serde_json::json!({ "value": what }));
    }
    let row = stored.row;
    if row.is_none() {
        match &stored.row_error {
            Some(error) => {
                let params = serde_json::json!({ "error": error });
                fail(&mut out, Check::Projection, "unreadable-case-row", None, None, params);
            }
            None => {
                let seqs: Vec<i64> = stored.log.iter().map(|e| e.log_seq).collect();
                let first = seqs.first().copied();
                let params = serde_json::json!({ "log_seqs": seqs });
                fail(&mut out, Check::Chain, "log-rows-without-case", None, first, params);
                return out;
            }
        }
    }
    let Some(snapshot) = stored.snapshot else {
        fail(&mut out, Check::Chain, "missing-document", None, None, serde_json::json!({}));
        return out;
    };
    let Some(mut doc) = doc else {
        let params = serde_json::json!({ "error": load_error.unwrap_or_default() });
        fail(&mut out, Check::Chain, "damaged-document", None, None, params);
        return out;
    };
    let heads = doc.heads();
    if doc::snapshot_heads(&snapshot).is_some_and(|h| h != heads) {
        fail(&mut out, Check::Chain, "heads-mismatch", None, None, serde_json::json!({}));
    }
    let timeline = doc.timeline();
    let hashes: Vec<Hash> = timeline.nodes.iter().map(|n| n.hash).collect();
    let devices: BTreeMap<Hash, Option<DeviceId>> = timeline.nodes.iter().map(|n| (n.hash, n.device)).collect();
    let village = AdminCode::parse(&row.as_ref().map_or_else(|| doc.village(), |r| r.village.clone())).ok();
    let mut logged: BTreeSet<Hash> = BTreeSet::new();
    let mut signer_of: BTreeMap<Hash, [u8; 32]> = BTreeMap::new();
    // Each log row's change, resolved once.
    let resolved: Vec<Option<Hash>> = stored.log.iter().map(|e| resolve_key(&hashes, e)).collect();
    // What is kept beside each signed change, for the members of signed runs.
    let kept: BTreeMap<Hash, (&[u8; 32], &[u8])> = stored
        .log
        .iter()
        .zip(&resolved)
        .filter_map(|(e, h)| Some(((*h)?, (e.signer.as_ref()?, e.signature.as_deref()?))))
        .collect();
    let case_bytes = case.map_or([0; 16], |c| *c.as_bytes());
    for (entry, resolved) in stored.log.iter().zip(resolved) {
        let Some(hash) = resolved else {
            let params = serde_json::json!({ "key": hex(&entry.hash_key) });
            fail(&mut out, Check::Chain, "log-row-unresolved", None, Some(entry.log_seq), params);
            continue;
        };
        if !logged.insert(hash) {
            fail(&mut out, Check::Chain, "duplicate-log-row", Some(&hash), Some(entry.log_seq), serde_json::json!({}));
            continue;
        }
        match (&entry.signer, &entry.signature) {
            (Some(signer), Some(signature)) => {
                signer_of.insert(hash, *signer);
                let Some(grant) = cx.grants.get(signer) else {
                    let params = serde_json::json!({ "signer": hex(signer) });
                    fail(&mut out, Check::Signature, "no-grant", Some(&hash), Some(entry.log_seq), params);
                    continue;
                };
                let who = serde_json::json!({ "subject": grant.subject });
                if !cx.skip_signatures {
                    out.signatures += 1;
                    let memo_key = SignatureMemo::key(&[b"change", signer, &hash, signature]);
                    let ok = cx.memo.as_ref().is_some_and(|m| m.holds(&memo_key))
                        || grant.key.as_ref().is_some_and(|key| {
                            let head_of =
                                |h: &Hash| kept.get(h).filter(|(s, _)| *s == signer).map(|(_, blob)| blob.to_vec());
                            trust::check_provenance(key, &case_bytes, &hash, signature, &head_of).is_ok()
                        });
                    if ok && let Some(m) = &cx.memo {
                        m.remember(memo_key);
                    }
                    if !ok {
                        fail(
                            &mut out,
                            Check::Signature,
                            "bad-signature",
                            Some(&hash),
                            Some(entry.log_seq),
                            who.clone(),
                        );
                    }
                }
                match (grant.role, &grant.scope, &village) {
                    (Some(role), _, _) if role.is_server() => {
                        fail(&mut out, Check::Authority, "server-authored", Some(&hash), Some(entry.log_seq), who);
                    }
                    (Some(_), Some(scope), Some(v)) if !scope.contains(v) => {
                        let params = serde_json::json!({ "subject": grant.subject, "scope": scope.as_str(), "village": v.as_str() });
                        fail(&mut out, Check::Authority, "out-of-scope", Some(&hash), Some(entry.log_seq), params);
                    }
                    (None, _, _) | (_, None, _) => {
                        fail(&mut out, Check::Authority, "grant-unreadable", Some(&hash), Some(entry.log_seq), who);
                    }
                    _ => {}
                }
            }
            _ if entry.received_from.is_some() => {
                let params = serde_json::json!({ "from": entry.received_from.map(|r| r.device().to_string()) });
                fail(&mut out, Check::Signature, "unsigned-received", Some(&hash), Some(entry.log_seq), params);
            }
            _ if cx.server => {
                fail(
                    &mut out,
                    Check::Authority,
                    "written-on-server",
                    Some(&hash),
                    Some(entry.log_seq),
                    serde_json::json!({}),
                );
            }
            _ => {
                let device = devices.get(&hash).copied().flatten();
                if device != Some(cx.own_device) {
                    let params = serde_json::json!({ "device": device.map(|d| d.to_string()) });
                    fail(&mut out, Check::Signature, "not-this-device", Some(&hash), Some(entry.log_seq), params);
                }
            }
        }
    }
    for h in hashes.iter().filter(|h| !logged.contains(*h)) {
        fail(&mut out, Check::Chain, "change-not-in-log", Some(h), None, serde_json::json!({}));
    }
    let state = doc.read_for_row(&cx.policy);
    // An escalation is accepted by the level it was sent to (finding each
    // event's change costs a walk, so only when the case has an acceptance).
    let accepted = state.as_ref().is_ok_and(|s| s.events.iter().any(|e| e.kind == EventKind::EscalationAccepted));
    let events = if accepted { doc.lifecycle(&timeline) } else { Vec::new() };
    for (kind, level, hash) in events {
        let (EventKind::EscalationAccepted, Some(hash)) = (kind, hash) else { continue };
        let Some(grant) = signer_of.get(&hash).and_then(|s| cx.grants.get(s)) else { continue };
        let level = level.as_deref().and_then(|l| Level::parse(l).ok());
        let allowed = grant.role.and_then(GrantRole::person_role).map(|r| r.level());
        if level.is_some() && allowed.is_some() && level != allowed {
            let params = serde_json::json!({ "subject": grant.subject, "level": level.map(Level::code) });
            fail(&mut out, Check::Authority, "role-cannot-accept", Some(&hash), None, params);
        }
    }
    match state {
        Ok(state) => {
            let Some(row) = row else { return out };
            let want = projection(&mut doc, &timeline, &state);
            let differs = differing_columns(&row, &want);
            if !differs.is_empty() {
                let params = serde_json::json!({ "columns": differs });
                fail(&mut out, Check::Projection, "projection-mismatch", None, None, params);
            }
        }
        Err(e) => {
            fail(&mut out, Check::Chain, "damaged-document", None, None, serde_json::json!({ "error": e.to_string() }));
        }
    }
    out
}

/// The columns of a stored row that differ from what the document gives,
/// with both values.
fn differing_columns(stored: &CaseRow, want: &CaseRow) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut check = |column: &str, have: String, should: String| {
        if have != should {
            out.push(serde_json::json!({ "column": column, "stored": have, "document": should }));
        }
    };
    check("id", stored.id.to_string(), want.id.to_string());
    check("number", stored.number.clone(), want.number.clone());
    check("village", stored.village.clone(), want.village.clone());
    check("grid", format!("{:?}", stored.grid), format!("{:?}", want.grid));
    check("level", stored.level.code().into(), want.level.code().into());
    check("status", stored.status.code().into(), want.status.code().into());
    check("category", stored.category.code().into(), want.category.code().into());
    check("risk", stored.risk.code().into(), want.risk.code().into());
    check("deadline", format!("{:?}", stored.deadline.map(|d| d.0)), format!("{:?}", want.deadline.map(|d| d.0)));
    check("recorded_at", stored.recorded_at.0.to_string(), want.recorded_at.0.to_string());
    check("updated_at", stored.updated_at.0.to_string(), want.updated_at.0.to_string());
    check("title", stored.title.clone(), want.title.clone());
    check("responsible", format!("{:?}", stored.responsible), format!("{:?}", want.responsible));
    check("conflicts", stored.conflicts.to_string(), want.conflicts.to_string());
    // Rows written before schema 4 have no count yet; that is not a mismatch.
    if let Some(open) = stored.open_conflicts {
        check("open_conflicts", open.to_string(), want.open_conflicts.unwrap_or(0).to_string());
    }
    out
}
