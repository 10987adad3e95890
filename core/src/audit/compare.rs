//! `fq audit compare`: this replica against its parent, read-only, over the
//! sync protocol (ADR 22, `docs/PROTOCOL.md` "Inspection").
//!
//! Sans-io, like [`crate::sync::session::Session`]: the caller owns the
//! stream, feeds [`Comparison::handle_input`] and sends what
//! [`Comparison::poll_transmit`] returns. The parent's side is the session's
//! inspection state.
//!
//! Only differing cases cost bytes. Cases are put in buckets by the first
//! bits of their id, enough bits for about 16 cases a bucket; each side sums
//! each bucket (the first 8 bytes of SHA-256 over its cases' id and heads
//! hash), the child asks for the sums (8 bytes a bucket), then for the case
//! digests of the buckets that differ (48 bytes a case), then for the change
//! lists of the cases that differ (about 90 bytes a change). Two county
//! replicas of 100,000 cases that differ in 100 cases exchange about 64 KiB
//! of sums, 60 KiB of digests and the changes of those 100 cases.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::hex;
use crate::case::{AdminCode, CaseId, DeviceId};
use crate::clock::Timestamp;
use crate::doc::{Author, Hash};
use crate::faults::{self, Bug};
use crate::ledger::{Ledger, LedgerError, PeerInfo, Tier};
use crate::sync::wire::{
    self, DecodeError, EncodeError, ErrorCode, FrameDecoder, ListedChange, MAX_LISTED_CHANGES, MAX_QUERY_BUCKETS,
    MAX_QUERY_CASES, MAX_SUM_BITS, Message,
};

/// About this many cases per bucket: fewer buckets cost fewer sums, fewer
/// cases per bucket cost fewer digests when a bucket differs.
const CASES_PER_BUCKET: usize = 16;

/// How many bits of case id bucket `cases` cases (at most [`MAX_SUM_BITS`]).
pub fn sum_bits(cases: usize) -> u8 {
    let buckets = cases.div_ceil(CASES_PER_BUCKET).max(1);
    let bits = usize::BITS - (buckets - 1).leading_zeros();
    u8::try_from(bits).unwrap_or(MAX_SUM_BITS).min(MAX_SUM_BITS)
}

/// The bucket of a case: the first `bits` bits of its id.
pub fn bucket_of(case: &CaseId, bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    let b = case.as_bytes();
    let top = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    top >> (32 - u32::from(bits.min(MAX_SUM_BITS)))
}

/// The sum of every bucket at `bits`, from a digest (case id, heads hash) in
/// case id order.
pub fn bucket_sums(digest: &[(CaseId, Hash)], bits: u8) -> Vec<[u8; 8]> {
    let bits = bits.min(MAX_SUM_BITS);
    let mut hashers: Vec<Option<Sha256>> = (0..1usize << bits).map(|_| None).collect();
    for (case, heads) in digest {
        if let Some(slot) = hashers.get_mut(bucket_of(case, bits) as usize) {
            let h = slot.get_or_insert_with(Sha256::new);
            h.update(case.as_bytes());
            h.update(heads);
        }
    }
    hashers
        .into_iter()
        .map(|h| {
            let mut sum = [0u8; 8];
            if let Some(h) = h {
                sum.copy_from_slice(&h.finalize()[..8]);
            }
            sum
        })
        .collect()
}

/// The digest entries of the given buckets, as a parent answers a cases query.
pub fn cases_in_buckets(digest: &[(CaseId, Hash)], bits: u8, buckets: &BTreeSet<u32>) -> Vec<(CaseId, Hash)> {
    let mut out: Vec<(CaseId, Hash)> =
        digest.iter().filter(|(case, _)| buckets.contains(&bucket_of(case, bits))).copied().collect();
    if faults::on(Bug::CompareDropsCases) {
        // The injected bug: the last case of each listed bucket goes missing.
        let mut last: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, (case, _)) in out.iter().enumerate() {
            last.insert(bucket_of(case, bits), i);
        }
        let drop: BTreeSet<usize> = last.into_values().collect();
        out = out.into_iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, e)| e).collect();
    }
    out
}

/// The change lists a parent answers for one case: its changes if it holds
/// the case inside `scope`, else one empty list (it shows nothing outside
/// the child's scope).
pub fn change_lists(ledger: &mut Ledger, case: CaseId, scope: &AdminCode) -> Result<Vec<Message>, LedgerError> {
    let row = ledger.store().case_row(case)?;
    let inside = row.as_ref().is_some_and(|r| AdminCode::parse(&r.village).is_ok_and(|v| scope.contains(&v)));
    let Some(row) = row.filter(|_| inside) else {
        return Ok(vec![Message::ChangeList { case, number: String::new(), changes: Vec::new() }]);
    };
    let listed = listed_changes(ledger, case)?;
    let mut out: Vec<Message> = listed
        .chunks(MAX_LISTED_CHANGES)
        .map(|chunk| Message::ChangeList { case, number: row.number.clone(), changes: chunk.to_vec() })
        .collect();
    if out.is_empty() {
        out.push(Message::ChangeList { case, number: row.number, changes: Vec::new() });
    }
    Ok(out)
}

/// Every change of a case, as an inspection lists it.
fn listed_changes(ledger: &mut Ledger, case: CaseId) -> Result<Vec<ListedChange>, LedgerError> {
    let timeline = ledger.case_doc(case)?.timeline();
    Ok(timeline
        .nodes
        .into_iter()
        .map(|n| {
            let message = match &n.author {
                Some(a) => format!("fq1|{}|{}|{}", n.op, a.role.code(), a.name),
                None => n.op.clone(),
            };
            ListedChange {
                hash: n.hash,
                at: n.at.0,
                device: n.device.map_or([0; 8], |d| *d.as_bytes()),
                message: wire::clip_text(&message),
            }
        })
        .collect())
}

/// One change as the comparison names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeSummary {
    /// The change hash, hex.
    pub hash: String,
    /// Its device time.
    pub device_time: Timestamp,
    /// Who made it and in which role, as it says.
    pub author: Option<Author>,
    /// The device that made it (16 hex digits).
    pub device: Option<String>,
    /// What was done (`create`, `edit:title`, `note`...).
    pub op: String,
}

/// A case the two replicas hold differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseDiff {
    /// The case.
    pub case: CaseId,
    /// Its number (from whichever side holds it).
    pub number: Option<String>,
    /// Its title here, when held here.
    pub title: Option<String>,
    /// Whether this replica holds the case.
    pub held_here: bool,
    /// Whether the parent holds it.
    pub held_there: bool,
    /// Changes the parent holds and this replica lacks.
    pub here_lacks: Vec<ChangeSummary>,
    /// Changes this replica holds and the parent lacks.
    pub there_lacks: Vec<ChangeSummary>,
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompareReport {
    /// The parent, as its hello says.
    pub parent_tier: Option<Tier>,
    /// The parent's division.
    pub parent_scope: Option<String>,
    /// The division compared (this replica's).
    pub scope: String,
    /// Cases this replica holds in it.
    pub cases_here: u64,
    /// The bucket width used.
    pub bits: u8,
    /// Buckets whose sums differed.
    pub buckets_differing: u64,
    /// Every case held differently, in case id order.
    pub cases: Vec<CaseDiff>,
    /// Bytes of frames sent.
    pub bytes_out: u64,
    /// Bytes of frames received.
    pub bytes_in: u64,
}

impl CompareReport {
    /// Whether the two replicas hold the same in this replica's division.
    pub fn same(&self) -> bool {
        self.cases.is_empty()
    }
}

/// Why a comparison failed. Nothing was written on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// The parent sent bytes that do not decode.
    #[error("bad frame from the parent: {0}")]
    Decode(#[from] DecodeError),
    /// The parent sent a message out of turn.
    #[error("unexpected {0} message from the parent")]
    Unexpected(&'static str),
    /// The parent does not know inspections (an older build).
    #[error("the parent does not answer inspections (an older fq-server): {0}")]
    NotSupported(String),
    /// The parent ended the inspection.
    #[error("the parent ended the inspection: {code:?}: {text}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        text: String,
    },
    /// The parent is not this replica's parent (its scope does not cover this one).
    #[error("the peer ({claimed}) is not the parent of this replica ({own})")]
    NotParent {
        /// What it said it is.
        claimed: String,
        /// This replica's division.
        own: String,
    },
    /// No common protocol version.
    #[error("the parent speaks protocol versions {min}..={max}")]
    Version {
        /// Its oldest.
        min: u8,
        /// Its newest.
        max: u8,
    },
    /// The local ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A query could not be encoded (a bug).
    #[error("cannot encode a query: {0}")]
    Encode(#[from] EncodeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Sums,
    Cases,
    Changes,
    Done,
}

/// This replica's side of a comparison with its parent.
#[derive(Debug)]
pub struct Comparison {
    phase: Phase,
    scope: AdminCode,
    scope_limit: Option<AdminCode>,
    bits: u8,
    mine: BTreeMap<CaseId, Hash>,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    parent: Option<PeerInfo>,
    differing: BTreeSet<u32>,
    theirs: BTreeMap<CaseId, Hash>,
    outstanding: usize,
    asked: Vec<CaseId>,
    lists: BTreeMap<CaseId, (String, Vec<ListedChange>)>,
    report: Option<CompareReport>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Comparison {
    /// Starts a comparison of `ledger`'s division with its parent; the first
    /// frame (the inspection request) is ready to send. `scope_limit` is what
    /// the parent's certificate allows it to hold.
    pub fn new(ledger: &Ledger, scope_limit: Option<AdminCode>) -> Result<Self, CompareError> {
        let me = ledger.identity();
        let mine: BTreeMap<CaseId, Hash> = ledger.digest(&me.scope)?.into_iter().collect();
        let mut c = Comparison {
            phase: Phase::Hello,
            scope: me.scope.clone(),
            scope_limit,
            bits: sum_bits(mine.len()),
            mine,
            decoder: FrameDecoder::new(),
            transmit: VecDeque::new(),
            parent: None,
            differing: BTreeSet::new(),
            theirs: BTreeMap::new(),
            outstanding: 0,
            asked: Vec::new(),
            lists: BTreeMap::new(),
            report: None,
            bytes_in: 0,
            bytes_out: 0,
        };
        c.send(&Message::Inspect {
            replica: me.replica,
            tier: me.tier,
            scope: me.scope.clone(),
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::PROTOCOL_VERSION,
        })?;
        Ok(c)
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let f = self.transmit.pop_front()?;
        self.bytes_out += f.len() as u64;
        Some(f)
    }

    /// Whether the comparison is over (see [`Comparison::report`]).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What it found, once done.
    pub fn report(&self) -> Option<&CompareReport> {
        self.report.as_ref()
    }

    /// Bytes sent and received so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_out, self.bytes_in)
    }

    /// Feeds bytes received from the parent.
    pub fn handle_input(&mut self, ledger: &mut Ledger, bytes: &[u8]) -> Result<(), CompareError> {
        self.bytes_in += bytes.len() as u64;
        self.decoder.push(bytes)?;
        while let Some(msg) = self.decoder.next()? {
            if self.phase == Phase::Done {
                break;
            }
            self.handle(ledger, msg)?;
        }
        Ok(())
    }

    fn send(&mut self, msg: &Message) -> Result<(), CompareError> {
        self.transmit.push_back(wire::encode(msg)?);
        Ok(())
    }

    fn handle(&mut self, ledger: &mut Ledger, msg: Message) -> Result<(), CompareError> {
        match (self.phase, msg) {
            (_, Message::Error { code, text }) => {
                self.phase = Phase::Done;
                if code == ErrorCode::BadFrame && text.contains("unknown message kind") {
                    return Err(CompareError::NotSupported(text));
                }
                Err(CompareError::Refused { code, text })
            }
            (Phase::Hello, Message::Hello { replica, tier, scope, min_version, max_version, .. }) => {
                if wire::negotiate_version(min_version, max_version).is_none() {
                    return Err(CompareError::Version { min: min_version, max: max_version });
                }
                let allowed = self.scope_limit.as_ref().is_none_or(|l| l.contains(&scope));
                if !allowed || tier == Tier::Device || !scope.contains(&self.scope) {
                    return Err(CompareError::NotParent {
                        claimed: format!("{} {scope}", tier.code()),
                        own: self.scope.to_string(),
                    });
                }
                self.parent = Some(PeerInfo { replica, tier, scope });
                self.phase = Phase::Sums;
                self.send(&Message::SumsQuery { bits: self.bits })
            }
            (Phase::Sums, Message::Sums { bits, sums }) => {
                if bits != self.bits {
                    return Err(CompareError::Unexpected("sums"));
                }
                let digest: Vec<(CaseId, Hash)> = self.mine.iter().map(|(c, h)| (*c, *h)).collect();
                let ours = bucket_sums(&digest, bits);
                self.differing =
                    (0u32..).zip(ours.iter().zip(&sums)).filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
                if self.differing.is_empty() {
                    return self.finish(ledger);
                }
                self.phase = Phase::Cases;
                let buckets: Vec<u32> = self.differing.iter().copied().collect();
                for chunk in buckets.chunks(MAX_QUERY_BUCKETS) {
                    self.outstanding += 1;
                    self.send(&Message::CasesQuery { bits, buckets: chunk.to_vec() })?;
                }
                Ok(())
            }
            (Phase::Cases, Message::Digest { last, entries, .. }) => {
                for (case, hash) in entries {
                    if self.differing.contains(&bucket_of(&case, self.bits)) {
                        self.theirs.insert(case, hash);
                    }
                }
                if last {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                if self.outstanding > 0 {
                    return Ok(());
                }
                let mut cases: BTreeSet<CaseId> = self.theirs.keys().copied().collect();
                cases.extend(self.mine.keys().filter(|c| self.differing.contains(&bucket_of(c, self.bits))));
                self.asked = cases.into_iter().filter(|c| self.mine.get(c) != self.theirs.get(c)).collect();
                if self.asked.is_empty() {
                    return self.finish(ledger);
                }
                self.phase = Phase::Changes;
                let asked = self.asked.clone();
                for chunk in asked.chunks(MAX_QUERY_CASES) {
                    self.outstanding += 1;
                    self.send(&Message::ChangesQuery { cases: chunk.to_vec() })?;
                }
                Ok(())
            }
            (Phase::Changes, Message::ChangeList { case, number, changes }) => {
                let entry = self.lists.entry(case).or_insert_with(|| (number.clone(), Vec::new()));
                if entry.0.is_empty() {
                    entry.0 = number;
                }
                entry.1.extend(changes);
                Ok(())
            }
            (Phase::Changes, Message::Done { .. }) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                if self.outstanding == 0 { self.finish(ledger) } else { Ok(()) }
            }
            (_, other) => Err(CompareError::Unexpected(other.name())),
        }
    }

    /// Builds the report from the change lists: per differing case, what
    /// each side lacks.
    fn finish(&mut self, ledger: &mut Ledger) -> Result<(), CompareError> {
        let mut cases = Vec::new();
        for case in std::mem::take(&mut self.asked) {
            let (number_there, theirs) = self.lists.remove(&case).unwrap_or_default();
            let held_here = self.mine.contains_key(&case);
            let (title, number_here, mine) = if held_here {
                let row = ledger.store().case_row(case).map_err(LedgerError::from)?;
                let nodes = ledger.case_doc(case)?.timeline().nodes;
                let mine: Vec<ChangeSummary> = nodes
                    .into_iter()
                    .map(|n| ChangeSummary {
                        hash: hex(&n.hash),
                        device_time: n.at,
                        author: n.author,
                        device: n.device.map(|d| d.to_string()),
                        op: n.op,
                    })
                    .collect();
                (row.as_ref().map(|r| r.title.clone()), row.map(|r| r.number), mine)
            } else {
                (None, None, Vec::new())
            };
            let theirs: Vec<ChangeSummary> = theirs.into_iter().map(summary_of).collect();
            let have: BTreeSet<&str> = mine.iter().map(|c| c.hash.as_str()).collect();
            let they_have: BTreeSet<&str> = theirs.iter().map(|c| c.hash.as_str()).collect();
            let here_lacks: Vec<ChangeSummary> =
                theirs.iter().filter(|c| !have.contains(c.hash.as_str())).cloned().collect();
            let there_lacks: Vec<ChangeSummary> =
                mine.iter().filter(|c| !they_have.contains(c.hash.as_str())).cloned().collect();
            let held_there = !theirs.is_empty();
            if here_lacks.is_empty() && there_lacks.is_empty() {
                // The digests differed but the changes agree (only possible
                // while one side still waits for a dependency): not a difference.
                continue;
            }
            cases.push(CaseDiff {
                case,
                number: number_here.or(Some(number_there).filter(|n| !n.is_empty())),
                title,
                held_here,
                held_there,
                here_lacks,
                there_lacks,
            });
        }
        self.report = Some(CompareReport {
            parent_tier: self.parent.as_ref().map(|p| p.tier),
            parent_scope: self.parent.as_ref().map(|p| p.scope.to_string()),
            scope: self.scope.to_string(),
            cases_here: self.mine.len() as u64,
            bits: self.bits,
            buckets_differing: self.differing.len() as u64,
            cases,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
        });
        self.phase = Phase::Done;
        Ok(())
    }
}

fn summary_of(c: ListedChange) -> ChangeSummary {
    let mut parts = c.message.splitn(4, '|');
    let (op, author) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("fq1"), Some(op), Some(role), Some(name)) => (
            op.to_owned(),
            crate::case::Role::parse(role).ok().map(|role| Author { name: name.to_owned(), role, id: None }),
        ),
        _ => (c.message.clone(), None),
    };
    let device = (c.device != [0; 8]).then(|| DeviceId::from_bytes(c.device).to_string());
    ChangeSummary { hash: hex(&c.hash), device_time: Timestamp(c.at), author, device, op }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_bits_aims_at_sixteen_cases_a_bucket() {
        assert_eq!(sum_bits(0), 0);
        assert_eq!(sum_bits(16), 0);
        assert_eq!(sum_bits(17), 1);
        assert_eq!(sum_bits(100_000), 13);
        assert_eq!(sum_bits(10_000_000), MAX_SUM_BITS);
    }

    #[test]
    fn bucket_of_takes_the_leading_bits() {
        let case = CaseId::from_bytes([0b1010_0000, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bucket_of(&case, 0), 0);
        assert_eq!(bucket_of(&case, 3), 0b101);
        assert_eq!(bucket_of(&case, 16), 0xa0ff);
    }

    #[test]
    fn bucket_sums_differ_only_where_a_case_differs() {
        let a: Vec<(CaseId, Hash)> = (0u8..40).map(|i| (CaseId::from_bytes([i * 6; 16]), [i; 32])).collect();
        let mut b = a.clone();
        b[7].1 = [99; 32];
        let (sa, sb) = (bucket_sums(&a, 4), bucket_sums(&b, 4));
        let differ: Vec<usize> = (0..16).filter(|&i| sa[i] != sb[i]).collect();
        assert_eq!(differ, [bucket_of(&a[7].0, 4) as usize]);
        assert_eq!(sa[15], [0; 8], "an empty bucket sums to zero");
    }
}
