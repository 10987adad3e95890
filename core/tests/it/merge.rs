use std::sync::Arc;

use fq_core::case::{CaseId, Role};
use fq_core::clock::ManualClock;
use fq_core::doc::FieldEdit;
use fq_core::ledger::{IncomingChange, Ledger, LedgerOptions};
use fq_core::store::ListFilter;
use proptest::prelude::*;

use crate::ledger::{T0, init, new_case, out_to_in};

fn exchange(from: &mut Ledger, to: &mut Ledger) -> fq_core::ledger::ApplyReport {
    let changes: Vec<IncomingChange> = from.changes_since(0, 100_000).unwrap().into_iter().map(out_to_in).collect();
    to.apply_changes(Some(from.identity().replica), changes).unwrap()
}

fn pair(clock: &ManualClock) -> (Ledger, Ledger) {
    let c = Arc::new(clock.clone());
    let a = Ledger::init_in_memory(
        init(Role::GridWorker, "532924101201", "张三", clock),
        c.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    let b = Ledger::init_in_memory(init(Role::Mediator, "532924101201", "李娜", clock), c, LedgerOptions::default())
        .unwrap();
    (a, b)
}

#[test]
fn merge_shows_both_values_of_a_concurrent_edit() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = pair(&clock);
    let s = a.create_case(new_case("宅基地滴水纠纷")).unwrap();
    assert_eq!(exchange(&mut a, &mut b).applied, 1);
    clock.advance_ms(1_000);
    a.edit(s.id, FieldEdit { title: Some("宅基地滴水及排水沟纠纷".into()), ..Default::default() }).unwrap();
    clock.advance_ms(1_000);
    b.edit(s.id, FieldEdit { title: Some("相邻屋檐滴水纠纷".into()), ..Default::default() }).unwrap();
    b.add_note(s.id, "第一次调解").unwrap();
    exchange(&mut a, &mut b);
    exchange(&mut b, &mut a);
    for l in [&mut a, &mut b] {
        let v = l.show(s.id, true).unwrap();
        assert_eq!(v.conflicts.len(), 1, "{:?}", v.conflicts);
        let c = &v.conflicts[0];
        assert_eq!(c.field, "title");
        let mut seen: Vec<(String, String)> =
            c.values.iter().map(|v| (v.value.clone(), v.author.as_ref().unwrap().name.clone())).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("宅基地滴水及排水沟纠纷".to_owned(), "张三".to_owned()),
                ("相邻屋檐滴水纠纷".to_owned(), "李娜".to_owned())
            ]
        );
        assert!(c.values.iter().all(|v| v.device.is_some() && v.at.is_some()));
        assert_eq!(v.state.title, c.values[0].value, "the shown value is listed first");
        assert_eq!(l.list(&ListFilter::default()).unwrap()[0].conflicts, 1);
    }
    assert_eq!(a.heads(s.id).unwrap(), b.heads(s.id).unwrap());
    assert!(a.audit(10).unwrap().iter().any(|e| e.kind == "conflict"));
    // A later write resolves the conflict.
    a.edit(s.id, FieldEdit { title: Some("相邻屋檐滴水纠纷".into()), ..Default::default() }).unwrap();
    assert!(a.conflicts(s.id).unwrap().is_empty());
}

#[test]
fn apply_refuses_garbage_and_keeps_the_rest() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = pair(&clock);
    let s = a.create_case(new_case("债务纠纷")).unwrap();
    let mut changes: Vec<IncomingChange> = a.changes_since(0, 100).unwrap().into_iter().map(out_to_in).collect();
    changes.push(IncomingChange { case: s.id, bytes: b"not a change".to_vec(), signer: None, signature: None });
    let mut flipped = changes[0].bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    changes.push(IncomingChange { case: s.id, bytes: flipped, signer: None, signature: None });
    // A real change filed under the wrong case id.
    changes.push(IncomingChange {
        case: CaseId::random(),
        bytes: changes[0].bytes.clone(),
        signer: None,
        signature: None,
    });
    let r = b.apply_changes(None, changes).unwrap();
    assert_eq!(r.applied, 1);
    assert_eq!(r.refused.len(), 3, "{:?}", r.refused);
    assert_eq!(b.audit(10).unwrap().iter().filter(|e| e.kind == "refused" || e.kind == "quarantined").count(), 3);
    assert_eq!(b.list(&ListFilter::default()).unwrap().len(), 1);
}

/// A change that rewrites a case's village (a crafted one: no ledger call
/// does it) would move the case out of the scope whose rules admitted it.
/// It is quarantined and audited, the case keeps its village, and a new case
/// arriving in the same batch is still applied.
#[test]
fn apply_quarantines_a_change_that_moves_a_case_to_another_village() {
    use automerge::transaction::Transactable;

    let clock = ManualClock::new(T0);
    let (mut a, mut b) = pair(&clock);
    let s = a.create_case(new_case("宅基地纠纷")).unwrap();
    let history: Vec<IncomingChange> = a.changes_since(0, 100).unwrap().into_iter().map(out_to_in).collect();
    assert_eq!(b.apply_changes(None, history.clone()).unwrap().applied, 1);

    let mut forged = automerge::AutoCommit::new();
    let parsed: Vec<automerge::Change> =
        history.iter().map(|c| fq_core::doc::parse_change(&c.bytes).unwrap()).collect();
    forged.apply_changes(parsed).unwrap();
    forged.put(automerge::ROOT, "village", "532924102201").unwrap();
    let moved = forged.get_last_local_change().unwrap().raw_bytes().to_vec();

    let other = a.create_case(new_case("债务纠纷")).unwrap();
    let mut batch: Vec<IncomingChange> = a.changes_since(1, 100).unwrap().into_iter().map(out_to_in).collect();
    batch.push(IncomingChange { case: s.id, bytes: moved, signer: None, signature: None });
    let r = b.apply_changes(None, batch).unwrap();
    assert_eq!(r.applied, 1, "the other case's change is applied");
    assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
    assert_eq!(r.refused[0].reason, fq_core::ledger::RefuseReason::Quarantined);
    assert!(r.refused[0].detail.contains("another village"), "{}", r.refused[0].detail);
    let rows = b.list(&ListFilter::default()).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|row| row.id == other.id));
    assert!(rows.iter().all(|row| row.village == "532924101201"), "a case moved: {rows:?}");
    assert!(b.audit(10).unwrap().iter().any(|e| e.kind == "quarantined"));
}

#[test]
fn apply_keeps_changes_until_their_dependencies_arrive() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = pair(&clock);
    let s = a.create_case(new_case("林地纠纷")).unwrap();
    a.add_note(s.id, "一").unwrap();
    a.add_note(s.id, "二").unwrap();
    let all: Vec<IncomingChange> = a.changes_since(0, 100).unwrap().into_iter().map(out_to_in).collect();
    let r = b.apply_changes(None, all[1..].to_vec()).unwrap();
    assert_eq!((r.applied, r.pending), (0, 2));
    assert!(b.list(&ListFilter::default()).unwrap().is_empty(), "nothing shown before the case exists");
    assert_eq!(b.changes_since(0, 100).unwrap().len(), 0, "pending changes are not relayed");
    let r = b.apply_changes(None, all.clone()).unwrap();
    assert_eq!(r.applied, 3);
    assert_eq!(b.counts().unwrap()[2], 0, "pending table drained");
    assert_eq!(a.heads(s.id).unwrap(), b.heads(s.id).unwrap());
    let r = b.apply_changes(None, all).unwrap();
    assert_eq!((r.applied, r.duplicates), (0, 3));
}

/// Changes from three devices that edit shared cases, some concurrently.
fn workload(ops: &[(u8, u8, u8)]) -> (Vec<IncomingChange>, usize) {
    let clock = ManualClock::new(T0);
    let c = Arc::new(clock.clone());
    let mut ls: Vec<Ledger> = ["甲", "乙", "丙"]
        .iter()
        .map(|n| {
            Ledger::init_in_memory(init(Role::Mediator, "532924101201", n, &clock), c.clone(), LedgerOptions::default())
                .unwrap()
        })
        .collect();
    let first = ls[0].create_case(new_case("初始案件")).unwrap();
    let mut cases = vec![first.id];
    for &(who, what, arg) in ops {
        clock.advance_ms(1_000 + i64::from(arg));
        let i = usize::from(who % 3);
        let case = cases[usize::from(arg) % cases.len()];
        let l = &mut ls[i];
        let known = l.resolve(&case.to_string()).is_ok();
        match (what % 6, known) {
            (0, _) => cases.push(l.create_case(new_case(&format!("案件{arg}"))).unwrap().id),
            (1, true) => {
                drop(l.edit(case, FieldEdit { title: Some(format!("标题{who}-{arg}")), ..Default::default() }))
            }
            (2, true) => drop(l.add_note(case, &format!("记录{arg}"))),
            (3, true) => {
                drop(l.edit(case, FieldEdit { description: Some(format!("描述{arg}")), ..Default::default() }))
            }
            (4, true) => drop(l.settle(case, "和解")),
            (5, _) => {
                let j = (i + 1 + usize::from(arg % 2)) % 3;
                let (x, y) = if i < j {
                    let (p, q) = ls.split_at_mut(j);
                    (&mut p[i], &mut q[0])
                } else {
                    let (p, q) = ls.split_at_mut(i);
                    (&mut q[0], &mut p[j])
                };
                exchange(x, y);
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    for l in &mut ls {
        all.extend(l.changes_since(0, 100_000).unwrap().into_iter().map(out_to_in));
    }
    let mut unique: Vec<_> = all.iter().map(|c| c.bytes.clone()).collect();
    unique.sort();
    unique.dedup();
    (all, unique.len())
}

fn replay(
    changes: &[IncomingChange],
    order: &[usize],
    chunk: usize,
) -> (Vec<serde_json::Value>, Vec<fq_core::store::CaseRow>) {
    let clock = ManualClock::new(T0);
    let mut l = Ledger::init_in_memory(
        init(Role::CountyAdmin, "532924", "县", &clock),
        Arc::new(clock),
        LedgerOptions::default(),
    )
    .unwrap();
    let ordered: Vec<IncomingChange> = order.iter().map(|&i| changes[i % changes.len()].clone()).collect();
    for batch in ordered.chunks(chunk.max(1)) {
        let r = l.apply_changes(None, batch.to_vec()).unwrap();
        assert!(r.refused.is_empty(), "{:?}", r.refused);
    }
    // Every change, once, so that the set is complete whatever the order was.
    l.apply_changes(None, changes.to_vec()).unwrap();
    let mut rows = l.list(&ListFilter::default()).unwrap();
    rows.sort_by_key(|r| r.id);
    let docs = rows
        .iter()
        .map(|r| {
            let heads = l.heads(r.id).unwrap();
            let v = l.show(r.id, true).unwrap();
            serde_json::json!({ "heads": heads.iter().map(|h| h.to_vec()).collect::<Vec<_>>(), "view": v })
        })
        .collect();
    (docs, rows)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Applying the same set of changes in any order, in any batches, with
    /// duplicates, gives identical documents and identical projected rows.
    #[test]
    fn apply_is_independent_of_order_and_duplicates(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 5..40),
        order_a in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
        order_b in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
        chunk_a in 1usize..7,
        chunk_b in 1usize..7,
    ) {
        let (changes, unique) = workload(&ops);
        let idx = |o: &[prop::sample::Index]| o.iter().map(|i| i.index(changes.len())).collect::<Vec<_>>();
        let (docs_a, rows_a) = replay(&changes, &idx(&order_a), chunk_a);
        let (docs_b, rows_b) = replay(&changes, &idx(&order_b), chunk_b);
        prop_assert_eq!(&rows_a, &rows_b);
        prop_assert_eq!(&docs_a, &docs_b);
        let held: usize = docs_a.iter().map(|d| d["view"]["history"].as_array().map_or(0, Vec::len)).sum();
        prop_assert_eq!(held, unique, "every distinct change is held exactly once");
    }
}
