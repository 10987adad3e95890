//! The ledger's side of sync: what a [`crate::sync::Session`] reads and
//! writes. Every write here is one transaction, like every other ledger
//! operation; a batch from a peer and the peer's new log position commit
//! together, so an acknowledged batch is never lost and never half-applied.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest as _, Sha256};

use super::{Admission, ApplyReport, IncomingChange, Ledger, LedgerError, OutgoingChange, RefuseReason, Tier};
use crate::case::{AdminCode, CaseId, ReplicaId};
use crate::doc::{self, CaseDoc, Hash};
use crate::store::{GrantRow, LogEntry, PeerLag, PeerRow, StoreError, chain_next};
use crate::sync::wire::{CaseDocument, LogPosition, Vouch, Voucher};
use crate::trust::{Provenance, SignedGrant};

/// A bounded run of this ledger's log, for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingBatch {
    /// The changes for the peer, oldest first.
    pub changes: Vec<OutgoingChange>,
    /// The last log position read, including positions filtered out.
    pub upto: i64,
    /// The log's chain value at `upto` (see [`chain_position`]).
    pub upto_hash: Hash,
    /// Whether the log was read to its end.
    pub exhausted: bool,
}

/// Who a peer is, as its hello says (and its certificate confirms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its replica id.
    pub replica: ReplicaId,
    /// Its tier.
    pub tier: Tier,
    /// Its scope.
    pub scope: AdminCode,
}

/// A log position's check value on the wire: the 8-byte chain value
/// (big-endian), zero-padded to 32 bytes.
pub fn chain_position(chain: i64) -> Hash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&chain.to_be_bytes());
    h
}

/// The key a signed run is remembered by among change hashes: its head's
/// hash with the first byte flipped, which no change of the same batch has
/// (a collision would need a SHA-256 preimage).
pub fn run_key(head: &Hash) -> Hash {
    let mut key = *head;
    key[0] ^= 0xff;
    key
}

/// The `meta` key recording an imported sync file.
fn file_key(sender: &ReplicaId, id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("file/{sender}/{hex}")
}

/// The hash a digest carries for a case: SHA-256 of its sorted heads.
pub fn heads_digest(heads: &[u8]) -> Hash {
    Sha256::digest(heads).into()
}

/// The change hashes of each document a log read has looked at, listed once
/// per read.
pub(super) type DocHashes = HashMap<CaseId, Vec<Hash>>;

/// Which of a document's changes (`hashes`) a log row names (ADR 6).
///
/// The key (a hash prefix) picks the candidates; the row's chain, computed
/// from the full hash when the row was appended, must then fit:
/// `chain == chain_next(prev_chain, hash)`. A wrong change fits both with
/// odds of 2^-80, so a short key is enough, and a shared key (a 2-byte key is
/// shared in about one case in 350 of 20 changes) costs one more hash.
/// Keys are only ever compared with the changes of the row's own case.
///
/// Deliberate pairs: someone who writes two changes into a case and knows
/// `prev_chain` could search for a pair that fits the same key and chain
/// (2^40 tries for 2-byte keys). Such changes come from a peer, so their rows
/// are signed, and the signature, over the full hash, picks the right one
/// (only the author's own changes could be at stake anyway). A row written
/// here has no signature, but a change made to fit it would have to match a
/// given 80-bit value: 2^80 tries. Rows from schema 1 have chain 0, which
/// fits no hash; they keep 8-byte keys and are matched by key alone.
pub(crate) fn resolve_key(hashes: &[Hash], row: &LogEntry) -> Option<Hash> {
    let mut found: Vec<&Hash> = hashes.iter().filter(|h| h.starts_with(&row.hash_key)).collect();
    if row.chain != 0 {
        found.retain(|h| chain_next(row.prev_chain, h) == row.chain);
    }
    if found.len() > 1
        && let (Some(signer), Some(signature)) = (&row.signer, &row.signature)
        && let Ok(signature) = <&[u8; 64]>::try_from(signature.as_slice())
    {
        found.retain(|h| crate::trust::verify_change(signer, h, signature).is_ok());
    }
    match found.as_slice() {
        [h] => Some(**h),
        _ => None,
    }
}

impl Ledger {
    /// The change a log row names, with its bytes from the case's document.
    pub(super) fn log_entry_change(
        &mut self,
        row: LogEntry,
        listed: &mut DocHashes,
    ) -> Result<OutgoingChange, LedgerError> {
        let missing = || StoreError::BadValue { what: "change missing from its document" };
        let doc = self.doc(row.case)?;
        let hashes = listed.entry(row.case).or_insert_with(|| doc.change_hashes());
        let hash = resolve_key(hashes, &row).ok_or_else(missing)?;
        let bytes = doc.change_bytes(&hash).ok_or_else(missing)?;
        Ok(OutgoingChange {
            log_seq: row.log_seq,
            case: row.case,
            hash,
            bytes,
            received_from: row.received_from,
            signer: row.signer,
            signature: row.signature,
            village: row.village,
        })
    }
}

impl Ledger {
    /// Reads this ledger's log after `after` for a peer: at most `max_rows`
    /// log rows and about `max_bytes` of change bytes (always at least one
    /// change). Changes outside `scope` and changes that came from the peer
    /// itself are skipped, but still counted in `upto`.
    pub fn outgoing(
        &mut self,
        after: i64,
        scope: &AdminCode,
        skip_from: Option<ReplicaId>,
        max_rows: u32,
        max_bytes: usize,
    ) -> Result<OutgoingBatch, LedgerError> {
        // A server pushing to a child with a narrower scope reads only that
        // scope's rows (through its relay indexes): reading the whole log for
        // every device that connects made each session cost the log's size.
        let narrow = self.identity.tier != Tier::Device && scope != &self.identity.scope;
        let rows = if narrow {
            self.store.log_after_within(after, scope.as_str(), max_rows)?
        } else {
            self.store.log_after(after, max_rows)?
        };
        let exhausted = rows.len() < max_rows as usize;
        let mut batch = OutgoingBatch { changes: Vec::new(), upto: after, upto_hash: [0; 32], exhausted };
        let mut bytes = 0usize;
        let mut listed = DocHashes::new();
        let mut emitted: BTreeSet<Hash> = BTreeSet::new();
        for row in rows {
            let inside = AdminCode::parse(&row.village).is_ok_and(|v| scope.contains(&v))
                || crate::faults::on(crate::faults::Bug::IgnoreScope);
            let echo = skip_from.is_some() && row.received_from == skip_from;
            let (seq, chain) = (row.log_seq, row.chain);
            if inside && !echo {
                let change = self.log_entry_change(row, &mut listed)?;
                // A change of a signed run goes with its whole run (members, then head).
                let in_run = change.signature.as_ref().is_some_and(|b| b.len() != 64);
                let mut trial = if in_run { emitted.clone() } else { BTreeSet::new() };
                let group = if in_run {
                    self.complete_runs(vec![change], &mut trial)?
                } else if emitted.contains(&change.hash) {
                    Vec::new()
                } else {
                    trial.insert(change.hash);
                    vec![change]
                };
                let size: usize = group.iter().map(|c| c.bytes.len()).sum();
                if !batch.changes.is_empty() && bytes + size > max_bytes {
                    batch.exhausted = false;
                    break;
                }
                if in_run {
                    emitted = trial;
                } else {
                    emitted.extend(trial);
                }
                bytes += size;
                batch.changes.extend(group);
            }
            batch.upto = seq;
            batch.upto_hash = chain_position(chain);
        }
        if narrow && batch.exhausted {
            // Every row after `after` was looked at: those not returned lie
            // outside the scope, so the batch reaches the log's head.
            let head = self.store.log_head()?;
            if head > batch.upto
                && let Some(chain) = self.store.log_chain(head)?
            {
                batch.upto = head;
                batch.upto_hash = chain_position(chain);
            }
        }
        Ok(batch)
    }

    /// The changes after `after` of the urgent cases inside `scope` — high
    /// risk (民转刑) first, then escalations waiting to be accepted, oldest
    /// first in each — for a peer, skipping what came from it (`skip_from`).
    /// At most `max_rows` log rows are read; runs go whole.
    pub fn urgent_outgoing(
        &mut self,
        after: i64,
        scope: &AdminCode,
        skip_from: Option<ReplicaId>,
        max_rows: u32,
    ) -> Result<Vec<OutgoingChange>, LedgerError> {
        let rows = self.store.urgent_log_after(after, scope.as_str(), max_rows)?;
        let mut listed = DocHashes::new();
        let mut emitted = BTreeSet::new();
        let mut out = Vec::new();
        for (_, row) in rows {
            if skip_from.is_some() && row.received_from == skip_from {
                continue;
            }
            let change = self.log_entry_change(row, &mut listed)?;
            out.extend(self.complete_runs(vec![change], &mut emitted)?);
        }
        Ok(out)
    }

    /// Changes still waiting to reach `peer` (this replica's parent, usually):
    /// log rows after the position it acknowledged, except those it sent us,
    /// counted as (urgent, other). What `fq sync` shows as still to go up.
    pub fn waiting_for(&self, peer: Option<ReplicaId>) -> Result<(i64, i64), LedgerError> {
        let acked = match peer {
            Some(p) => self.store.peer(p)?.map_or(0, |r| r.acked_seq),
            None => 0,
        };
        Ok(self.store.waiting_after(acked, self.identity.scope.as_str(), peer)?)
    }

    /// What a log position is checked by: the log's chain value at `seq`
    /// (see [`chain_position`]); position 0 has the all-zero value.
    pub fn log_hash(&self, seq: i64) -> Result<Option<Hash>, LedgerError> {
        if seq == 0 {
            return Ok(Some([0; 32]));
        }
        Ok(self.store.log_chain(seq)?.map(chain_position))
    }

    /// What this ledger knows of a peer.
    pub fn peer(&self, replica: ReplicaId) -> Result<Option<PeerRow>, LedgerError> {
        Ok(self.store.peer(replica)?)
    }

    /// The parent this replica synced with last (a township or county
    /// server), whose log position a child's hello carries.
    pub fn upstream(&self) -> Result<Option<ReplicaId>, LedgerError> {
        let peers = self.store.peers()?;
        let mine = self.identity.scope.clone();
        Ok(peers
            .into_iter()
            .filter(|p| p.tier != Tier::Device.code() && AdminCode::parse(&p.scope).is_ok_and(|s| s.contains(&mine)))
            .max_by_key(|p| p.last_sync)
            .map(|p| p.replica))
    }

    /// Every peer this ledger has synced with.
    pub fn peers(&self) -> Result<Vec<PeerRow>, LedgerError> {
        Ok(self.store.peers()?)
    }

    /// Applies a batch from a peer under signed admission and records, in the
    /// same transaction, that this ledger now holds the peer's log up to
    /// `upto` (`None`: a recovery batch, which moves no position). A batch
    /// with a change from an unknown signer moves no position either: the
    /// grant may still come, and the batch must then be sent again.
    pub fn apply_from_peer(
        &mut self,
        peer: &PeerInfo,
        changes: Vec<IncomingChange>,
        upto: Option<LogPosition>,
    ) -> Result<ApplyReport, LedgerError> {
        let now = self.clock.now();
        let known = self.store.peer(peer.replica)?;
        let row = PeerRow {
            replica: peer.replica,
            tier: peer.tier.code().to_owned(),
            scope: peer.scope.to_string(),
            their_seq: upto.map_or_else(|| known.as_ref().map_or(0, |k| k.their_seq), |p| p.seq),
            their_hash: upto.map_or_else(|| known.as_ref().map_or([0; 32], |k| k.their_hash), |p| p.hash),
            acked_seq: known.as_ref().map_or(0, |k| k.acked_seq),
            last_sync: Some(now),
            signer: None,
            lag: None,
        };
        self.apply_with(Some(peer.replica), changes, Admission::Signed, |tx, report| {
            // A change from a signer whose grant has not arrived yet may be
            // fine once it does: keep the old position so it is sent again.
            let transient = report.refused.iter().any(|r| r.reason == RefuseReason::UnknownSigner);
            if transient {
                return Ok(());
            }
            Ok(tx.set_peer_received(&row)?)
        })
    }

    /// Takes back what `peer` acknowledged of this ledger's log beyond `holds`: it says it
    /// holds only that much now (it was restored from a backup since). Never moves forward.
    pub fn lower_ack(&mut self, peer: ReplicaId, holds: i64) -> Result<(), LedgerError> {
        self.check_writable()?;
        let tx = self.store.transaction()?;
        tx.lower_peer_acked(peer, holds)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that `peer` acknowledged this ledger's log up to `upto` (never moves it back).
    pub fn record_ack(&mut self, peer: &PeerInfo, upto: i64) -> Result<(), LedgerError> {
        self.check_writable()?;
        let now = self.clock.now();
        let tx = self.store.transaction()?;
        if tx.peer(peer.replica)?.is_none() {
            let row = PeerRow {
                replica: peer.replica,
                tier: peer.tier.code().to_owned(),
                scope: peer.scope.to_string(),
                their_seq: 0,
                their_hash: [0; 32],
                acked_seq: 0,
                last_sync: Some(now),
                signer: None,
                lag: None,
            };
            tx.set_peer_received(&row)?;
        }
        tx.set_peer_acked(peer.replica, upto, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that `peer` holds the grant of `signer` (its own grant, the
    /// first it sent in a session), so the audit can name it. Writes only
    /// when that is news.
    pub fn record_peer_grant(&mut self, peer: &PeerInfo, signer: &[u8; 32]) -> Result<(), LedgerError> {
        self.check_writable()?;
        if self.store.peer(peer.replica)?.is_some_and(|p| p.signer.as_ref() == Some(signer)) {
            return Ok(());
        }
        let row = PeerRow {
            replica: peer.replica,
            tier: peer.tier.code().to_owned(),
            scope: peer.scope.to_string(),
            their_seq: 0,
            their_hash: [0; 32],
            acked_seq: 0,
            last_sync: None,
            signer: Some(*signer),
            lag: None,
        };
        let tx = self.store.transaction()?;
        tx.set_peer_signer(&row, signer)?;
        tx.commit()?;
        Ok(())
    }

    /// Records, at the end of a session with a child, how far apart the two
    /// were: the changes of this ledger in the child's scope the child has
    /// not acknowledged (leaving out those that came from it), and the
    /// positions of its log not held here, from `peer_log_head` (the child's
    /// last word on its log head). A peer never seen before is skipped.
    pub fn record_lag(&mut self, peer: ReplicaId, peer_log_head: i64) -> Result<Option<PeerLag>, LedgerError> {
        self.check_writable()?;
        let Some(row) = self.store.peer(peer)? else { return Ok(None) };
        let scope = AdminCode::parse(&row.scope).map_err(LedgerError::Input)?;
        let lacks = self.store.count_unacked(row.acked_seq, &scope, peer)?;
        let lag = PeerLag { lacks, owes: peer_log_head.saturating_sub(row.their_seq).max(0), at: self.clock.now() };
        let tx = self.store.transaction()?;
        tx.set_peer_lag(peer, &lag)?;
        tx.commit()?;
        Ok(Some(lag))
    }

    /// Records that a session with `peer` just caught up: nothing was
    /// missing either way at that moment. No count is needed (one cheap
    /// write, made each time a long-lived session catches up).
    pub fn record_caught_up(&mut self, peer: ReplicaId) -> Result<(), LedgerError> {
        self.check_writable()?;
        let lag = PeerLag { lacks: 0, owes: 0, at: self.clock.now() };
        let tx = self.store.transaction()?;
        tx.set_peer_lag(peer, &lag)?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps a grant verified against the county CA; returns what it says.
    pub fn add_grant(&mut self, grant: &SignedGrant) -> Result<GrantRow, LedgerError> {
        self.check_writable()?;
        let g = &grant.grant;
        let row = GrantRow {
            signer: g.public_key,
            bytes: grant.bytes.clone(),
            subject: g.subject.clone(),
            role: g.role.code().to_owned(),
            scope: g.scope.to_string(),
        };
        if self.store.grant(&row.signer)?.is_some() {
            return Ok(row);
        }
        let now = self.clock.now();
        let tx = self.store.transaction()?;
        tx.put_grant(&row, now)?;
        tx.commit()?;
        Ok(row)
    }

    /// Whether this ledger durably holds a change: applied, or kept until
    /// its dependencies arrive. Reads the file (the log and the pending
    /// table), not the cache.
    pub fn holds_change(&self, case: CaseId, hash: &Hash) -> Result<bool, LedgerError> {
        Ok(self.store.is_pending(hash)? || self.store.logs_change(case, hash)?)
    }

    /// Log rows whose change appears more than once (a healthy log has none).
    /// Only rows whose key another row of the case shares are resolved,
    /// against the case's saved snapshot.
    pub fn duplicate_log_rows(&self) -> Result<i64, LedgerError> {
        let mut duplicates = 0;
        let mut case: Option<(CaseId, Vec<Hash>, Vec<Hash>)> = None;
        for row in self.store.shared_key_rows()? {
            if case.as_ref().is_none_or(|(id, _, _)| *id != row.case) {
                let snapshot =
                    self.store.snapshot(row.case)?.ok_or(StoreError::BadValue { what: "missing snapshot" })?;
                let hashes = CaseDoc::load(&snapshot, self.actor.clone())?.change_hashes();
                case = Some((row.case, hashes, Vec::new()));
            }
            let Some((_, hashes, seen)) = case.as_mut() else { continue };
            if let Some(hash) = resolve_key(hashes, &row) {
                if seen.contains(&hash) {
                    duplicates += 1;
                } else {
                    seen.push(hash);
                }
            }
        }
        Ok(duplicates)
    }

    /// How many changes received from a peer were logged without a receive
    /// time (a healthy ledger of schema 4 has none).
    pub fn received_without_time(&self) -> Result<i64, LedgerError> {
        Ok(self.store.received_without_time()?)
    }

    /// Every grant this ledger holds, oldest first.
    pub fn grants(&self) -> Result<Vec<GrantRow>, LedgerError> {
        Ok(self.store.grants()?)
    }

    /// Whether this ledger imported the sync file `id` from `sender` before.
    pub fn file_seen(&self, sender: &ReplicaId, id: &[u8; 16]) -> Result<bool, LedgerError> {
        Ok(self.store.meta(&file_key(sender, id))?.is_some())
    }

    /// Records that the sync file `id` from `sender` was imported (`fq sync
    /// --from-file` says so when it comes again).
    pub fn note_file(&mut self, sender: &ReplicaId, id: &[u8; 16]) -> Result<(), LedgerError> {
        self.check_writable()?;
        let now = self.clock.now();
        Ok(self.store.set_meta_now(&file_key(sender, id), &now.0.to_string())?)
    }

    /// The grant of a signing key, if this ledger holds it.
    pub fn grant(&self, signer: &[u8; 32]) -> Result<Option<GrantRow>, LedgerError> {
        Ok(self.store.grant(signer)?)
    }

    /// (case, SHA-256 of its sorted heads) for every case inside `scope`,
    /// sorted by case id. The heads are read from each snapshot's header;
    /// a snapshot that header parsing does not understand is loaded.
    pub fn digest(&self, scope: &AdminCode) -> Result<Vec<(CaseId, Hash)>, LedgerError> {
        let mut out = Vec::new();
        for (id, snapshot) in self.store.snapshots_within(scope)? {
            let heads = match doc::snapshot_heads(&snapshot) {
                Some(h) => h,
                None => CaseDoc::load(&snapshot, self.actor.clone())?.heads(),
            };
            out.push((id, heads_digest(&heads.concat())));
        }
        Ok(out)
    }

    /// The cases inside `scope` that a child's first sync sends whole, urgent first, then
    /// the rest, oldest first (protocol version 4, [`Ledger::case_document`]).
    pub(crate) fn cases_urgent_first(&self, scope: &AdminCode) -> Result<Vec<CaseId>, LedgerError> {
        Ok(self.store.cases_urgent_first(scope.as_str())?)
    }

    /// `case` whole, for a child's first sync: its document and what vouches for each of its
    /// changes, in the document's order, with the changes' hashes in that order. `None` when
    /// the case must go change by change instead: a change of it was written here (only a
    /// push signs those) or came from `skip_from` (a side never sends a peer its own changes),
    /// a kept signature is unreadable or names a change outside the case, or the case is over
    /// the limits of a document.
    pub(crate) fn case_document(
        &mut self,
        case: CaseId,
        skip_from: Option<crate::case::ReplicaId>,
    ) -> Result<Option<(CaseDocument, Vec<Hash>)>, LedgerError> {
        let rows = self.store.case_log(case)?;
        if rows.iter().any(|r| r.received_from.is_none() || (skip_from.is_some() && r.received_from == skip_from)) {
            return Ok(None);
        }
        let doc = self.doc(case)?;
        let hashes = doc.change_hashes();
        let document = doc.document();
        let Ok(order) = doc::document_changes(&document) else { return Ok(None) };
        let place: HashMap<Hash, u16> =
            order.iter().enumerate().filter_map(|(i, (h, _))| Some((*h, u16::try_from(i).ok()?))).collect();
        // Each change's signer and kept signature, by hash.
        let mut kept = HashMap::with_capacity(rows.len());
        for row in rows {
            if let Some(h) = resolve_key(&hashes, &row) {
                kept.insert(h, (row.signer, row.signature));
            }
        }
        let mut vouchers = Vec::with_capacity(order.len());
        for (hash, _) in &order {
            let Some((signer, blob)) = kept.get(hash) else { return Ok(None) };
            let vouch = match blob.as_deref().map(Provenance::from_blob) {
                None => Vouch::Unsigned,
                Some(None) => return Ok(None),
                Some(Some(Provenance::Single(sig))) => Vouch::Single(sig),
                Some(Some(Provenance::RunHead { signature, others })) => {
                    let Some(others) = others.iter().map(|o| place.get(o).copied()).collect() else {
                        return Ok(None);
                    };
                    Vouch::RunHead { signature, others }
                }
                Some(Some(Provenance::RunMember { head })) => match place.get(&head) {
                    Some(&head) => Vouch::RunMember { head },
                    None => return Ok(None),
                },
            };
            vouchers.push(Voucher { signer: *signer, vouch });
        }
        let hashes = order.into_iter().map(|(h, _)| h).collect();
        Ok(Some((CaseDocument { case, document, vouchers }, hashes)))
    }

    /// Writes to the audit that what `peer` sent of `case` was refused before any of it could
    /// be read as changes (a case's document that does not load): the reason the sync shows.
    pub(crate) fn refuse_input(
        &mut self,
        peer: &PeerInfo,
        case: CaseId,
        reason: RefuseReason,
        detail: &str,
    ) -> Result<super::Refusal, LedgerError> {
        self.check_writable()?;
        let now = self.clock.now();
        let from = peer.replica.to_string();
        let text = format!("{} ({detail})", reason.code());
        let tx = self.store.transaction()?;
        let record = crate::store::NewAudit {
            kind: "refused",
            case: Some(case),
            peer: Some(&from),
            detail: &text,
            code: Some(reason.code()),
            params: Some(serde_json::json!({ "error": detail })),
            ..crate::store::NewAudit::default()
        };
        tx.audit(now, &record)?;
        tx.commit()?;
        Ok(super::Refusal { case, hash: None, reason, detail: detail.to_owned() })
    }

    /// `changes` with every change of a signed run replaced by its whole run
    /// (the members, then the head). A run goes whole even where some of its
    /// changes went out before (in another run, or alone): its signature
    /// covers exactly its set. `emitted` holds the changes and run heads
    /// already given out and grows with these. A run whose head or a member
    /// this ledger cannot find (it never should) leaves the change alone: the
    /// receiver then refuses it as unsigned, and audits it.
    pub(crate) fn complete_runs(
        &mut self,
        changes: Vec<OutgoingChange>,
        emitted: &mut BTreeSet<Hash>,
    ) -> Result<Vec<OutgoingChange>, LedgerError> {
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            let head = match change.signature.as_deref().and_then(Provenance::from_blob) {
                Some(Provenance::RunHead { .. }) => Some(change.hash),
                Some(Provenance::RunMember { head }) => Some(head),
                _ => None,
            };
            let Some(head) = head else {
                if emitted.insert(change.hash) {
                    out.push(change);
                }
                continue;
            };
            // A run is known by its head; the key is kept apart from change hashes.
            let key = run_key(&head);
            if emitted.contains(&key) {
                continue;
            }
            match self.run_changes(&change, head)? {
                Some(run) => {
                    emitted.insert(key);
                    for c in run {
                        emitted.insert(c.hash);
                        out.push(c);
                    }
                }
                None => {
                    emitted.insert(change.hash);
                    out.push(change);
                }
            }
        }
        Ok(out)
    }

    /// The whole run whose head is `head`, in the case of `like`: its members
    /// (provenance: member of `head`), then the head with its run signature.
    fn run_changes(&mut self, like: &OutgoingChange, head: Hash) -> Result<Option<Vec<OutgoingChange>>, LedgerError> {
        let case = like.case;
        let signed = self.store.signed_case_changes(case)?;
        let doc = self.doc(case)?;
        let hashes = doc.change_hashes();
        let Some(row) = signed.into_iter().find(|r| resolve_key(&hashes, r) == Some(head)) else { return Ok(None) };
        let Some(Provenance::RunHead { others, .. }) = row.signature.as_deref().and_then(Provenance::from_blob) else {
            return Ok(None);
        };
        let mut run = Vec::with_capacity(others.len() + 1);
        for member in others.iter().chain(std::iter::once(&head)) {
            let Some(bytes) = doc.change_bytes(member) else { return Ok(None) };
            let signature =
                if *member == head { row.signature.clone() } else { Some(Provenance::RunMember { head }.to_blob()) };
            run.push(OutgoingChange {
                log_seq: if *member == head { row.log_seq } else { 0 },
                case,
                hash: *member,
                bytes,
                received_from: row.received_from,
                signer: row.signer,
                signature,
                village: like.village.clone(),
            });
        }
        Ok(Some(run))
    }

    /// The changes of `case` that a holder of `their_heads` lacks, with their
    /// signatures. Heads this ledger does not know are ignored (the peer is
    /// ahead there), so the answer may repeat changes the peer has: applying
    /// them is a no-op.
    pub fn changes_missing(&mut self, case: CaseId, their_heads: &[Hash]) -> Result<Vec<OutgoingChange>, LedgerError> {
        let Some(row) = self.store.case_row(case)? else { return Ok(Vec::new()) };
        let signed = self.store.signed_case_changes(case)?;
        let doc = self.doc(case)?;
        let hashes = doc.change_hashes();
        let signatures: Vec<(Hash, LogEntry)> =
            signed.into_iter().filter_map(|r| Some((resolve_key(&hashes, &r)?, r))).collect();
        let known: Vec<Hash> = their_heads.iter().copied().filter(|h| doc.has_change(h)).collect();
        let changes = doc.changes_after(&known);
        let missing: Vec<OutgoingChange> = changes
            .into_iter()
            .map(|(hash, bytes)| {
                let (signer, signature) = signatures
                    .iter()
                    .find(|(h, _)| *h == hash)
                    .map(|(_, r)| (r.signer, r.signature.clone()))
                    .unwrap_or((None, None));
                OutgoingChange {
                    log_seq: 0,
                    case,
                    hash,
                    bytes,
                    received_from: None,
                    signer,
                    signature,
                    village: row.village.clone(),
                }
            })
            .collect();
        // A signed run goes whole, even where the peer holds part of it.
        self.complete_runs(missing, &mut BTreeSet::new())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(hash_key: &[u8], prev_chain: i64, chain: i64) -> LogEntry {
        LogEntry {
            log_seq: 2,
            case: CaseId::from_bytes([1; 16]),
            hash_key: hash_key.to_vec(),
            prev_chain,
            received_from: None,
            signer: None,
            signature: None,
            village: "532924101201".into(),
            chain,
            received_at: None,
        }
    }

    #[test]
    fn a_shared_prefix_is_settled_by_the_chain_then_the_signature() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let mut a = [0xaa; 32];
        let mut b = [0xaa; 32];
        a[31] = 1;
        b[31] = 2;
        let other = [0xbb; 32];
        let hashes = [other, a, b];
        // The key finds the candidates; the chain must fit.
        assert_eq!(resolve_key(&hashes, &row(&other[..2], 5, chain_next(5, &other))), Some(other));
        assert_eq!(resolve_key(&hashes, &row(&other[..2], 5, chain_next(6, &other))), None, "wrong chain");
        assert_eq!(resolve_key(&hashes, &row(&[0xcc; 2], 5, 0)), None);
        // A row from schema 1 (chain 0) goes by its 8-byte key alone.
        assert_eq!(resolve_key(&hashes, &row(&other[..8], 5, 0)), Some(other));
        // A shared key: the chain, computed from the full hash, decides.
        assert_eq!(resolve_key(&hashes, &row(&a[..2], 5, chain_next(5, &a))), Some(a));
        assert_eq!(resolve_key(&hashes, &row(&b[..8], 5, chain_next(5, &b))), Some(b));
        assert_eq!(resolve_key(&hashes, &row(&a[..8], 5, 0)), None, "ambiguous, never a guess");
        // If the chain cannot tell (chain 0), a signature can.
        let mut signed = row(&b[..8], 5, 0);
        signed.signer = Some(key.verifying_key().to_bytes());
        signed.signature = Some(crate::trust::sign_change(&key, &b).to_vec());
        assert_eq!(resolve_key(&hashes, &signed), Some(b));
        // A full 32-byte key (kept by the migration) names one change.
        assert_eq!(resolve_key(&hashes, &row(&a, 5, 0)), Some(a));
    }
}
