//! The ledger's side of sync: what a [`crate::sync::Session`] reads and
//! writes. Every write here is one transaction, like every other ledger
//! operation; a batch from a peer and the peer's new log position commit
//! together, so an acknowledged batch is never lost and never half-applied.

use sha2::{Digest as _, Sha256};

use super::{Admission, ApplyReport, IncomingChange, Ledger, LedgerError, OutgoingChange, RefuseReason, Tier};
use crate::case::{AdminCode, CaseId, ReplicaId};
use crate::doc::Hash;
use crate::store::{GrantRow, PeerRow, StoreError};
use crate::sync::wire::LogPosition;
use crate::trust::SignedGrant;

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

/// The hash a digest carries for a case: SHA-256 of its sorted heads.
pub fn heads_digest(heads: &[u8]) -> Hash {
    Sha256::digest(heads).into()
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
        let rows = self.store.log_after(after, max_rows)?;
        let exhausted = rows.len() < max_rows as usize;
        let mut batch = OutgoingBatch { changes: Vec::new(), upto: after, upto_hash: [0; 32], exhausted };
        let mut bytes = 0usize;
        for row in rows {
            let inside = AdminCode::parse(&row.village).is_ok_and(|v| scope.contains(&v))
                || crate::faults::on(crate::faults::Bug::IgnoreScope);
            let echo = skip_from.is_some() && row.received_from == skip_from;
            if inside && !echo {
                let doc = self.doc(row.case)?;
                let change = doc
                    .change_bytes(&row.hash)
                    .ok_or(StoreError::BadValue { what: "change missing from its document" })?;
                if !batch.changes.is_empty() && bytes + change.len() > max_bytes {
                    batch.exhausted = false;
                    break;
                }
                bytes += change.len();
                batch.changes.push(OutgoingChange {
                    log_seq: row.log_seq,
                    case: row.case,
                    hash: row.hash,
                    bytes: change,
                    received_from: row.received_from,
                    signer: row.signer,
                    signature: row.signature,
                    village: row.village,
                });
            }
            batch.upto = row.log_seq;
            batch.upto_hash = chain_position(row.chain);
        }
        Ok(batch)
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

    /// Records that `peer` acknowledged this ledger's log up to `upto`.
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
            };
            tx.set_peer_received(&row)?;
        }
        tx.set_peer_acked(peer.replica, upto, now)?;
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
    /// its dependencies arrive. Reads the file, not the cache.
    pub fn holds_change(&self, case: CaseId, hash: &Hash) -> Result<bool, LedgerError> {
        Ok(self.store.holds_change(case, hash)?)
    }

    /// Log rows whose change appears more than once (a healthy log has none).
    pub fn duplicate_log_rows(&self) -> Result<i64, LedgerError> {
        Ok(self.store.duplicate_log_rows()?)
    }

    /// The grant of a signing key, if this ledger holds it.
    pub fn grant(&self, signer: &[u8; 32]) -> Result<Option<GrantRow>, LedgerError> {
        Ok(self.store.grant(signer)?)
    }

    /// (case, SHA-256 of its sorted heads) for every case inside `scope`,
    /// sorted by case id.
    pub fn digest(&self, scope: &AdminCode) -> Result<Vec<(CaseId, Hash)>, LedgerError> {
        Ok(self.store.heads_within(scope)?.into_iter().map(|(id, heads)| (id, heads_digest(&heads))).collect())
    }

    /// The changes of `case` that a holder of `their_heads` lacks, with their
    /// signatures. Heads this ledger does not know are ignored (the peer is
    /// ahead there), so the answer may repeat changes the peer has: applying
    /// them is a no-op.
    pub fn changes_missing(&mut self, case: CaseId, their_heads: &[Hash]) -> Result<Vec<OutgoingChange>, LedgerError> {
        let Some(row) = self.store.case_row(case)? else { return Ok(Vec::new()) };
        let signatures = self.store.case_changes(case)?;
        let doc = self.doc(case)?;
        let known: Vec<Hash> = their_heads.iter().copied().filter(|h| doc.has_change(h)).collect();
        let changes = doc.changes_after(&known);
        Ok(changes
            .into_iter()
            .map(|(hash, bytes)| {
                let (signer, signature) = signatures
                    .iter()
                    .find(|(h, _, _)| *h == hash)
                    .map(|(_, signer, sig)| (*signer, sig.clone()))
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
            .collect())
    }
}
