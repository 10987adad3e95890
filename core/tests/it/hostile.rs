//! Hostile input at the ledger's door: arbitrary and mutated change bytes,
//! Automerge's known panics (a forged author footer, compressed chunks), and
//! every input kept in `fixtures/hostile/`. Nothing panics, nothing is
//! written but refusals, and the ledger stays readable.

use std::sync::Arc;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Author, AutoCommit, ROOT};
use fq_core::case::{CaseId, Role};
use fq_core::clock::ManualClock;
use fq_core::ledger::{IncomingChange, Ledger, LedgerOptions, RefuseReason};
use fq_core::store::ListFilter;
use proptest::prelude::*;

use crate::ledger::{T0, init, new_case};

fn ledger() -> Ledger {
    let clock = ManualClock::new(T0);
    Ledger::init_in_memory(
        init(Role::Mediator, "532924101201", "张三", &clock),
        Arc::new(clock),
        LedgerOptions::default(),
    )
    .unwrap()
}

/// A ledger with one case, and that case's changes.
fn seeded() -> (Ledger, Vec<IncomingChange>) {
    let mut l = ledger();
    let s = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    l.add_note(s.id, "第一次调解").unwrap();
    let changes = l.changes_since(0, 100).unwrap().into_iter().map(Into::into).collect();
    (l, changes)
}

fn offer(l: &mut Ledger, case: CaseId, bytes: Vec<u8>) -> fq_core::ledger::ApplyReport {
    l.apply_changes(None, vec![IncomingChange { case, bytes, signer: None, signature: None }]).unwrap()
}

fn still_sound(l: &mut Ledger) {
    l.integrity_check().unwrap();
    for row in l.list(&ListFilter::default()).unwrap() {
        l.show(row.id, true).unwrap();
    }
}

#[test]
fn hostile_author_footer_is_refused_before_automerge_sees_it() {
    // fq never writes author footers; a forged one panics Automerge 0.12.
    let mut doc = AutoCommit::new().with_author(Some(Author::from(b"forged".to_vec())));
    doc.put(ROOT, "title", "x").unwrap();
    doc.commit_with(CommitOptions::default().with_time(1));
    let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let mut l = ledger();
    let r = offer(&mut l, CaseId::random(), bytes);
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].reason, RefuseReason::Malformed);
    assert!(r.refused[0].detail.contains("extra bytes"), "{}", r.refused[0].detail);
}

#[test]
fn hostile_compressed_chunk_is_refused_without_inflating() {
    // Automerge inflates compressed chunks without a cap (DESIGN.md §8).
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "description", "滴水".repeat(500)).unwrap();
    doc.commit_with(CommitOptions::default().with_time(1));
    let mut change = doc.get_last_local_change().unwrap();
    let compressed = change.bytes().to_vec();
    assert_eq!(compressed.get(8), Some(&2), "automerge compressed the change");
    let mut l = ledger();
    let r = offer(&mut l, CaseId::random(), compressed);
    assert_eq!(r.refused.len(), 1);
    assert!(r.refused[0].detail.contains("compressed"), "{}", r.refused[0].detail);
    // A "bomb": a compressed header claiming a huge body, with nothing behind it.
    let mut bomb = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    bomb.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let r = offer(&mut l, CaseId::random(), bomb);
    assert_eq!(r.refused.len(), 1);
}

#[test]
fn hostile_regression_inputs_never_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hostile");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (mut l, good) = seeded();
        let case = good[0].case;
        let r = offer(&mut l, case, bytes);
        assert_eq!(r.applied, 0, "{} was applied", path.display());
        still_sound(&mut l);
        n += 1;
    }
    assert!(n >= 3, "the hostile fixtures are missing");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Arbitrary bytes are refused as malformed; nothing panics or is written.
    #[test]
    fn hostile_arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (mut l, good) = seeded();
        let before = l.counts().unwrap()[..2].to_vec();
        let r = offer(&mut l, good[0].case, bytes);
        prop_assert_eq!(r.applied, 0);
        prop_assert_eq!(l.counts().unwrap()[..2].to_vec(), before);
        still_sound(&mut l);
    }

    /// Valid changes with bytes flipped, inserted or removed never panic the
    /// ledger (Automerge panics are caught and the input quarantined), and
    /// the ledger stays readable.
    #[test]
    fn hostile_mutated_changes_never_panic(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let (_, good) = seeded();
        let original = &good[which.index(good.len())];
        let mut bytes = original.bytes.clone();
        for (at, value, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if !bytes.is_empty() => {
                    let last = bytes.len() - 1;
                    bytes[i.min(last)] ^= value | 1;
                }
                1 => bytes.insert(i.min(bytes.len()), value),
                _ if !bytes.is_empty() => {
                    let last = bytes.len() - 1;
                    bytes.remove(i.min(last));
                }
                _ => {}
            }
        }
        let mut fresh = ledger();
        let r = fresh.apply_changes(None, vec![IncomingChange { bytes, ..original.clone() }]).unwrap();
        prop_assert!(r.applied + r.refused.len() + r.pending + r.duplicates == 1);
        still_sound(&mut fresh);
    }
}

/// A panic Automerge raises on hostile bytes is caught and reported by the caller as a
/// refusal; with the binaries' panic hook its English message reaches no terminal and no log.
/// Any other panic still prints. Checked in a child process of this test binary, whose
/// standard error is read.
#[test]
fn hostile_contained_panic_prints_nothing_and_any_other_panic_still_does() {
    if std::env::var_os("FQ_CONTAINED_PANIC_CHILD").is_some() {
        fq_core::doc::install_panic_hook();
        let caught = fq_core::doc::contained(|| panic!("inside automerge: bad footer"));
        assert!(caught.is_err());
        panic!("an ordinary panic");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hostile::hostile_contained_panic_prints_nothing_and_any_other_panic_still_does"])
        .args(["--nocapture", "--test-threads=1"])
        .env("FQ_CONTAINED_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child's ordinary panic fails it");
    assert!(!err.contains("inside automerge"), "a contained panic printed: {err}");
    assert!(err.contains("an ordinary panic"), "an ordinary panic must still print: {err}");
}
