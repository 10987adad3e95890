//! The merge audit on real ledgers: conflicts with their provenance, a
//! case's history through a resolution, verify against tampering with the
//! file, and compare over the inspection messages, with nothing written.

use std::path::Path;
use std::sync::Arc;

use fq_core::audit::{self, CompareReport, Comparison, ConflictFilter, SignatureState, VerifyOptions};
use fq_core::case::{AdminCode, CaseId, Role};
use fq_core::clock::{Clock, ManualClock, Timestamp};
use fq_core::doc::{ConflictKind, FieldEdit};
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::sync::session::{Session, SessionConfig, Side};
use fq_core::trust::GrantRole;

use crate::ledger::{T0, new_case};
use crate::sync::{Node, ca, creds, node, sync};

const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";

/// A node whose ledger is a file (so a test can tamper with it).
fn file_node(dir: &Path, clock: &ManualClock, seed: u8, subject: &str, role: GrantRole, scope: &str) -> Node {
    let mut n = node(clock, seed, subject, role, scope);
    let (tier, person) = match role {
        GrantRole::TownshipServer => (Tier::Township, Role::TownshipOfficer),
        GrantRole::CountyServer => (Tier::County, Role::CountyAdmin),
        r => (Tier::Device, r.person_role().unwrap()),
    };
    let init =
        InitOptions { tier, name: subject.into(), role: person, scope: AdminCode::parse(scope).unwrap(), grid: None };
    let path = dir.join(format!("{subject}.db"));
    n.ledger = Ledger::init(&path, init, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
    n.ledger.add_grant(&n.grant).unwrap();
    n
}

/// What a replica holds, to check that an inspection wrote nothing.
fn footprint(l: &Ledger) -> String {
    format!("{:?} {:?} {:?}", l.counts().unwrap(), l.log_head().unwrap(), l.peers().unwrap())
}

/// Runs `fq audit compare`'s exchange between a child and its parent in memory.
fn compare(child: &mut Node, parent: &mut Node, now: Timestamp) -> CompareReport {
    let (child_before, parent_before) = (footprint(&child.ledger), footprint(&parent.ledger));
    let child_scope = child.ledger.identity().scope.to_string();
    let parent_scope = parent.ledger.identity().scope.clone();
    let mut c = Comparison::new(&child.ledger, Some(parent_scope)).unwrap();
    let mut p = Session::new(
        Side::Parent,
        &parent.ledger,
        creds(parent, Some(&child_scope)),
        SessionConfig::default(),
        None,
        now,
    )
    .unwrap();
    while !c.is_done() {
        let mut moved = false;
        while let Some(f) = c.poll_transmit() {
            moved = true;
            p.handle_input(&mut parent.ledger, &f, now).unwrap();
        }
        while let Some(f) = p.poll_transmit() {
            moved = true;
            c.handle_input(&mut child.ledger, &f).unwrap();
        }
        assert!(moved || c.is_done(), "the comparison stalled");
    }
    assert!(p.is_inspection());
    assert_eq!(footprint(&child.ledger), child_before, "the child wrote something");
    assert_eq!(footprint(&parent.ledger), parent_before, "the parent wrote something");
    c.report().unwrap().clone()
}

fn hashes(list: &[audit::ChangeSummary]) -> Vec<String> {
    let mut h: Vec<String> = list.iter().map(|c| c.hash.clone()).collect();
    h.sort();
    h
}

#[test]
fn compare_lists_the_changes_each_side_lacks_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "tw-101", GrantRole::TownshipServer, TOWNSHIP);
    let mut a = node(&clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let mut b = node(&clock, 4, "d08", GrantRole::GridWorker, VILLAGE);
    let x = a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    sync(&mut a, &mut town, clock.now());
    sync(&mut b, &mut town, clock.now());
    assert!(compare(&mut a, &mut town, clock.now()).same());
    // Apart: a notes X and records Y; b notes X and syncs.
    clock.advance_ms(60_000);
    a.ledger.add_note(x.id, "双方到场").unwrap();
    let y = a.ledger.create_case(new_case("拖欠工资")).unwrap();
    b.ledger.add_note(x.id, "李四不同意").unwrap();
    sync(&mut b, &mut town, clock.now());
    let a_note = a.ledger.changes_since(1, 1).unwrap()[0].hash;
    let b_note = b.ledger.changes_since(0, 100).unwrap().last().unwrap().hash;
    let hex = |h: &[u8; 32]| audit::hex(h);

    let report = compare(&mut a, &mut town, clock.now());
    assert_eq!(report.cases.len(), 2, "{report:#?}");
    let on_x = report.cases.iter().find(|c| c.case == x.id).unwrap();
    assert_eq!(hashes(&on_x.here_lacks), [hex(&b_note)]);
    assert_eq!(hashes(&on_x.there_lacks), [hex(&a_note)]);
    assert_eq!(on_x.here_lacks[0].author.as_ref().unwrap().name, "d08");
    assert_eq!(on_x.number.as_deref(), Some(x.number.as_str()));
    let on_y = report.cases.iter().find(|c| c.case == y.id).unwrap();
    assert!(on_y.held_here && !on_y.held_there && on_y.here_lacks.is_empty());
    assert_eq!(on_y.there_lacks.len(), 1);
    // The wire carried sums, two buckets' digests and two change lists.
    assert!(report.bytes_in < 4_000, "{} bytes", report.bytes_in);

    sync(&mut a, &mut town, clock.now());
    assert!(compare(&mut a, &mut town, clock.now()).same());
}

#[test]
fn compare_says_an_older_parent_does_not_answer_inspections() {
    let clock = ManualClock::new(T0);
    let mut a = node(&clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let mut c = Comparison::new(&a.ledger, None).unwrap();
    assert!(c.poll_transmit().is_some(), "the inspection request");
    // What this build's decoder says about a kind it does not know, as an older parent would.
    let old = fq_core::sync::wire::encode(&fq_core::sync::wire::Message::Error {
        code: fq_core::sync::wire::ErrorCode::BadFrame,
        text: "bad frame from peer: unknown message kind 9".into(),
    })
    .unwrap();
    let err = c.handle_input(&mut a.ledger, &old).unwrap_err();
    assert!(matches!(err, audit::CompareError::NotSupported(_)), "{err}");
}

#[test]
fn conflicts_and_history_keep_every_value_author_and_receive_time_through_a_resolution() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "tw-101", GrantRole::TownshipServer, TOWNSHIP);
    let mut a = node(&clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let mut b = node(&clock, 4, "d08", GrantRole::GridWorker, VILLAGE);
    let x = a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    sync(&mut a, &mut town, clock.now());
    sync(&mut b, &mut town, clock.now());
    clock.advance_ms(60_000);
    let edit = |title: &str, desc: &str| FieldEdit {
        title: Some(title.into()),
        description: Some(desc.into()),
        ..FieldEdit::default()
    };
    a.ledger.edit(x.id, edit("甲方案", "屋檐滴水落到邻居院内，已协商")).unwrap();
    b.ledger.edit(x.id, edit("乙方案", "邻居院内积水严重")).unwrap();
    clock.advance_ms(120_000);
    let received = clock.now();
    sync(&mut a, &mut town, clock.now());
    sync(&mut b, &mut town, clock.now());

    let all = audit::conflicts(&mut town.ledger, &ConflictFilter::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].number, x.number);
    let kinds: Vec<(ConflictKind, &str)> = all[0].conflicts.iter().map(|c| (c.kind, c.field.as_str())).collect();
    assert_eq!(kinds, [(ConflictKind::Field, "title"), (ConflictKind::Text, "description")]);
    let title = &all[0].conflicts[0];
    assert_eq!(title.sides.iter().filter(|s| s.shown).count(), 1);
    let mut who: Vec<(String, Option<String>, Option<String>)> = title
        .sides
        .iter()
        .map(|s| {
            let p = s.change.as_ref().unwrap();
            assert_eq!(p.received_at, Some(Timestamp(received.0 / 1000 * 1000)), "received at the township");
            (s.value.clone(), p.signer.as_ref().unwrap().subject.clone(), p.relay.as_ref().unwrap().subject.clone())
        })
        .collect();
    who.sort();
    assert_eq!(
        who,
        [
            ("乙方案".into(), Some("d08".into()), Some("d08".into())),
            ("甲方案".into(), Some("d07".into()), Some("d07".into()))
        ],
        "each value with its signer and the device it came from"
    );
    // The same conflicts on a device, with no --since match before them.
    let later = ConflictFilter { since: Some(Timestamp(clock.now().0 + 1)), ..ConflictFilter::default() };
    assert!(audit::conflicts(&mut town.ledger, &later).unwrap().is_empty());

    // A county admin's own replica resolves both, and syncs through the county.
    let mut county = node(&clock, 1, "county", GrantRole::CountyServer, "532924");
    let mut admin = node(&clock, 5, "admin", GrantRole::CountyAdmin, "532924");
    sync(&mut town, &mut county, clock.now());
    sync(&mut admin, &mut county, clock.now());
    assert!(matches!(
        audit::resolve(&mut county.ledger, x.id, "title", "丙方案"),
        Err(audit::ResolveFailed::Resolve(audit::ResolveError::ServerReplica))
    ));
    assert!(matches!(
        audit::resolve(&mut admin.ledger, x.id, "risk", "high"),
        Err(audit::ResolveFailed::Resolve(audit::ResolveError::NoConflict { .. }))
    ));
    assert!(matches!(
        audit::resolve(&mut admin.ledger, x.id, "colour", "red"),
        Err(audit::ResolveFailed::Resolve(audit::ResolveError::UnknownField(_)))
    ));
    audit::resolve(&mut admin.ledger, x.id, "title", "丙方案").unwrap();
    audit::resolve(&mut admin.ledger, x.id, "description", "双方同意加装接水槽").unwrap();
    sync(&mut admin, &mut county, clock.now());
    sync(&mut town, &mut county, clock.now());
    assert!(audit::conflicts(&mut town.ledger, &ConflictFilter::default()).unwrap().is_empty());

    let h = audit::history(&mut town.ledger, x.id, audit::DEFAULT_SKEW_MS).unwrap();
    assert_eq!(h.changes.len(), 5);
    assert!(h.changes.iter().all(|c| c.signature == SignatureState::Valid), "{h:#?}");
    assert!(h.changes.iter().all(|c| c.clock.is_none()));
    let resolving = h.changes.iter().find(|c| c.resolves.contains(&"title".to_owned())).unwrap();
    assert_eq!(resolving.change.author.as_ref().unwrap().name, "admin");
    assert_eq!(resolving.change.relay.as_ref().unwrap().subject.as_deref(), Some("county"));
    let title = resolving.fields.iter().find(|f| f.field == "title").unwrap();
    let mut old: Vec<&str> = title.old.iter().map(|s| s.value.as_str()).collect();
    old.sort_unstable();
    assert_eq!((old, title.new.as_deref()), (vec!["乙方案", "甲方案"], Some("丙方案")));
    let text = h.conflicts.iter().find(|c| c.kind == ConflictKind::Text).unwrap();
    assert!(!text.open);
    assert_eq!(text.sides.len(), 2);
    assert!(h.conflicts.iter().any(|c| c.field == "title" && !c.open && c.sides.len() == 2));
}

#[test]
fn history_flags_a_change_made_after_it_was_received() {
    let clock = ManualClock::new(T0);
    let device_clock = ManualClock::new(Timestamp(T0.0 + 3_600_000));
    let mut town = node(&clock, 2, "tw-101", GrantRole::TownshipServer, TOWNSHIP);
    let mut a = node(&device_clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let x = a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    sync(&mut a, &mut town, clock.now());
    let h = audit::history(&mut town.ledger, x.id, audit::DEFAULT_SKEW_MS).unwrap();
    assert!(
        matches!(h.changes[0].clock, Some(audit::ClockFlag::AfterReceipt { by_ms }) if by_ms >= 3_599_000),
        "{:?}",
        h.changes[0].clock
    );
    let lenient = audit::history(&mut town.ledger, x.id, 2 * 3_600_000).unwrap();
    assert!(lenient.changes[0].clock.is_none());
}

#[test]
fn verify_passes_on_synced_replicas_and_names_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut town = file_node(dir.path(), &clock, 2, "tw-101", GrantRole::TownshipServer, TOWNSHIP);
    let mut a = file_node(dir.path(), &clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let x = a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    a.ledger.add_note(x.id, "双方到场").unwrap();
    let y = a.ledger.create_case(new_case("拖欠工资")).unwrap();
    sync(&mut a, &mut town, clock.now());
    let opts = VerifyOptions { ca: Some(ca().verifying_key()), ..VerifyOptions::default() };
    let progress = |_: u64, _: u64| {};
    for l in [&town.ledger, &a.ledger] {
        let r = audit::verify(l, &opts, &progress).unwrap();
        assert!(r.passed(), "{r:#?}");
        assert_eq!((r.cases, r.changes), (2, 3));
    }
    assert_eq!(audit::verify(&town.ledger, &opts, &progress).unwrap().signatures, 3);
    drop(town);
    let file = dir.path().join("tw-101.db");
    let tampered = |name: &str, sql: &dyn Fn(&rusqlite::Connection)| -> audit::VerifyReport {
        let copy = dir.path().join(format!("{name}.db"));
        std::fs::copy(&file, &copy).unwrap();
        let conn = rusqlite::Connection::open(&copy).unwrap();
        sql(&conn);
        drop(conn);
        let l = Ledger::open_read_only(&copy, Arc::new(clock.clone())).unwrap();
        let r = audit::verify(&l, &opts, &progress).unwrap();
        assert!(!r.passed(), "{name}: tampering went unnoticed");
        r
    };
    let rowid = |conn: &rusqlite::Connection, case: CaseId| -> i64 {
        conn.query_row("SELECT rowid FROM cases WHERE id = ?1", [case.as_bytes()], |r| r.get(0)).unwrap()
    };
    let codes = |r: &audit::VerifyReport| -> Vec<(String, Option<String>)> {
        r.failures.iter().map(|f| (f.code.clone(), f.number.clone())).collect()
    };

    let r = tampered("snapshot", &|c| {
        let id = rowid(c, x.id);
        let mut snap: Vec<u8> =
            c.query_row("SELECT snapshot FROM docs WHERE case_rowid = ?1", [id], |r| r.get(0)).unwrap();
        let mid = snap.len() / 2;
        snap[mid] ^= 0x01;
        c.execute("UPDATE docs SET snapshot = ?1 WHERE case_rowid = ?2", rusqlite::params![snap, id]).unwrap();
    });
    assert!(r.failures.iter().all(|f| f.number.as_deref() == Some(x.number.as_str())), "{r:#?}");
    assert!(
        r.failures.iter().any(|f| matches!(f.code.as_str(), "damaged-document" | "log-row-unresolved")),
        "{:?}",
        codes(&r)
    );

    let r = tampered("signature", &|c| {
        let id = rowid(c, y.id);
        let (seq, mut sig): (i64, Vec<u8>) = c
            .query_row("SELECT log_seq, signature FROM changes WHERE case_rowid = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        sig[10] ^= 0xff;
        c.execute("UPDATE changes SET signature = ?1 WHERE log_seq = ?2", rusqlite::params![sig, seq]).unwrap();
    });
    assert_eq!(codes(&r), [("bad-signature".into(), Some(y.number.clone()))]);
    assert!(r.failures[0].change.is_some() && r.failures[0].log_seq.is_some());

    let r = tampered("row", &|c| {
        c.execute("UPDATE cases SET title = '已调解完毕' WHERE id = ?1", [x.id.as_bytes()]).unwrap();
    });
    assert_eq!(codes(&r), [("projection-mismatch".into(), Some(x.number.clone()))]);
    assert_eq!(r.failures[0].params["columns"][0]["column"], "title");

    // Values a hand edit leaves in the wrong shape are failures, not a stop.
    let r = tampered("text", &|c| {
        c.execute("UPDATE changes SET signature = 'forged' WHERE log_seq = 1", []).unwrap();
        c.execute("UPDATE cases SET status = 'done' WHERE id = ?1", [y.id.as_bytes()]).unwrap();
    });
    assert_eq!(r.cases, 2);
    let mut found: Vec<&str> = r.failures.iter().map(|f| f.code.as_str()).collect();
    found.sort_unstable();
    assert_eq!(found, ["bad-signature", "unreadable-case-row"], "{r:#?}");
    assert!(r.failures.iter().all(|f| f.number.is_some()), "named even when the row does not read: {r:#?}");

    let r = tampered("grant", &|c| {
        c.execute("DELETE FROM grants WHERE subject = 'd07'", []).unwrap();
    });
    assert_eq!(r.failures.len(), 3, "every change the grant signed: {:?}", codes(&r));
    assert!(r.failures.iter().all(|f| f.code == "no-grant" && f.change.is_some()));
}

#[test]
fn a_server_records_what_a_child_lacks_and_owes() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "tw-101", GrantRole::TownshipServer, TOWNSHIP);
    let mut a = node(&clock, 3, "d07", GrantRole::Mediator, VILLAGE);
    let mut b = node(&clock, 4, "d08", GrantRole::GridWorker, VILLAGE);
    a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let (_, parent) = sync(&mut a, &mut town, clock.now());
    let a_id = a.ledger.identity().replica;
    let lag = town.ledger.record_lag(a_id, parent.peer_log_head().unwrap()).unwrap().unwrap();
    assert_eq!((lag.lacks, lag.owes), (0, 0));
    // b writes two changes that reach the township; a has not synced since,
    // and wrote one more itself.
    let y = b.ledger.create_case(new_case("拖欠工资")).unwrap();
    b.ledger.add_note(y.id, "约定下周再谈").unwrap();
    sync(&mut b, &mut town, clock.now());
    a.ledger.create_case(new_case("水渠纠纷")).unwrap();
    let lag = town.ledger.record_lag(a_id, a.ledger.log_head().unwrap()).unwrap().unwrap();
    assert_eq!((lag.lacks, lag.owes), (2, 1));
    let peer = town.ledger.peer(a_id).unwrap().unwrap();
    assert_eq!(peer.lag, Some(lag));
    // The summary names the peer by its certificate, not its replica id.
    let s = audit::summary(&town.ledger).unwrap();
    let p = s.peers.iter().find(|p| p.who.subject.as_deref() == Some("d07")).unwrap();
    assert_eq!(p.lag, Some(lag));
    assert!(!p.parent);
}
