use std::sync::Arc;

use fq_core::case::{AdminCode, Category, Outcome, Party, Risk, Role, Status};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions, NewCase, Tier, chain_position};
use fq_core::store::{ListFilter, chain_next};

pub const T0: Timestamp = Timestamp(1_790_000_000_000);

pub fn init(role: Role, scope: &str, name: &str, clock: &ManualClock) -> InitOptions {
    let _ = clock;
    InitOptions { tier: Tier::Device, name: name.into(), role, scope: AdminCode::parse(scope).unwrap(), grid: None }
}

pub fn new_case(title: &str) -> NewCase {
    NewCase {
        category: Category::Neighbor,
        title: title.into(),
        description: "屋檐滴水落到邻居院内".into(),
        parties: vec![Party::parse("李四,532924198001011230,13800000000").unwrap(), Party::parse("王五").unwrap()],
        risk: Risk::Low,
        flags: Vec::new(),
        village: None,
        grid: Some(2),
    }
}

#[test]
fn ledger_lifecycle_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::new(T0);
    let c: Arc<ManualClock> = Arc::new(clock.clone());
    let id = {
        let mut l = Ledger::init(
            &path,
            init(Role::Mediator, "532924101201", "张三", &clock),
            c.clone(),
            LedgerOptions::default(),
        )
        .unwrap();
        let s = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
        assert!(s.number.starts_with("532924101201-"));
        clock.advance_ms(60_000);
        l.add_note(s.id, "双方到场，初步沟通").unwrap();
        s.id
    };
    let mut l = Ledger::open(&path, c.clone(), LedgerOptions::default()).unwrap();
    clock.advance_ms(60_000);
    l.settle(id, "李四改建屋檐，王五不再追究").unwrap();
    l.follow_up(id, Outcome::Honoured, Some("协议履行良好")).unwrap();
    let other = l.create_case(new_case("山林界址纠纷")).unwrap();
    l.escalate(other.id, "村级调解未果").unwrap();
    assert_eq!(l.show(other.id, false).unwrap().state.status, Status::Escalated);
    // A mediator cannot accept; the case stays escalated.
    assert!(matches!(l.accept_escalation(other.id), Err(LedgerError::Role { .. })));
    drop(l);
    let mut l = Ledger::open_read_only(&path, c).unwrap();
    let v = l.show(id, true).unwrap();
    assert_eq!(v.state.status, Status::Settled);
    assert_eq!(v.state.follow_ups, 1);
    let history = v.history.unwrap();
    assert_eq!(history.len(), 4, "create, note, settle, follow-up");
    assert!(history.iter().all(|h| h.author.as_ref().unwrap().name == "张三"));
    // Two opens wrote under two different actors, but one device.
    let devices: std::collections::BTreeSet<_> = history.iter().map(|h| h.device.clone()).collect();
    assert_eq!(devices.len(), 1);
    assert!(matches!(l.add_note(id, "x"), Err(LedgerError::ReadOnly)));
    l.integrity_check().unwrap();
}

#[test]
fn ledger_refuses_bad_transitions_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let mut l = Ledger::init_in_memory(
        init(Role::Mediator, "532924101201", "张三", &clock),
        Arc::new(clock.clone()),
        LedgerOptions::default(),
    )
    .unwrap();
    let s = l.create_case(new_case("拖欠工资")).unwrap();
    let before = l.counts().unwrap();
    assert!(matches!(l.archive(s.id), Err(LedgerError::Transition { .. })));
    assert!(matches!(l.confirm(s.id, "宾川县人民法院", None), Err(LedgerError::Transition { .. })));
    assert!(l.add_note(s.id, "   ").is_err());
    assert_eq!(l.counts().unwrap(), before);
    // Outside the mediator's village.
    let mut other = new_case("越界");
    other.village = Some(AdminCode::parse("532924102201").unwrap());
    assert!(matches!(l.create_case(other), Err(LedgerError::OutOfScope { .. })));
    assert_eq!(l.counts().unwrap(), before);
}

#[test]
fn ledger_lists_with_filters() {
    let clock = ManualClock::new(T0);
    let mut l = Ledger::init_in_memory(
        init(Role::Mediator, "532924101201", "张三", &clock),
        Arc::new(clock.clone()),
        LedgerOptions::default(),
    )
    .unwrap();
    let a = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let mut high = new_case("持刀威胁");
    high.risk = Risk::High;
    high.category = Category::MarriageFamily;
    let b = l.create_case(high).unwrap();
    l.settle(a.id, "已和解").unwrap();
    let all = l.list(&ListFilter::default()).unwrap();
    assert_eq!(all[0].id, b.id, "open high-risk cases come first");
    let f = ListFilter { status: Some(Status::Settled), ..Default::default() };
    assert_eq!(l.list(&f).unwrap().len(), 1);
    let f = ListFilter { category: Some(Category::MarriageFamily), ..Default::default() };
    assert_eq!(l.list(&f).unwrap()[0].title, "持刀威胁");
    clock.advance_ms(16 * 86_400_000);
    let f = ListFilter { overdue_at: Some(l.now()), ..Default::default() };
    let overdue = l.list(&f).unwrap();
    assert_eq!(overdue.len(), 1, "settled cases are never overdue");
    assert_eq!(overdue[0].id, b.id);
    let f = ListFilter { search: Some("宅基地".into()), ..Default::default() };
    assert_eq!(l.list(&f).unwrap().len(), 1);
    let f = ListFilter { search: Some("滴水".into()), ..Default::default() };
    assert_eq!(l.list(&f).unwrap().len(), 2, "both descriptions say it");
    assert_eq!(
        l.resolve(&a.number[..a.number.len() - 1]).map_err(|e| e.to_string()).err().map(|e| e.contains("several")),
        Some(true)
    );
    assert_eq!(l.resolve(&a.number).unwrap(), a.id);
    assert_eq!(l.resolve(&a.id.to_string()[..8]).unwrap(), a.id);
    assert!(matches!(l.resolve("532924101201-2026-ffff-9999"), Err(LedgerError::CaseNotFound { .. })));
}

#[test]
fn escalation_is_accepted_by_the_township_and_stops_at_the_county() {
    let clock = ManualClock::new(T0);
    let c = Arc::new(clock.clone());
    let mut village = Ledger::init_in_memory(
        init(Role::Mediator, "532924101201", "张三", &clock),
        c.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    let mut township = Ledger::init_in_memory(
        init(Role::TownshipOfficer, "532924101", "赵乡", &clock),
        c.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    let s = village.create_case(new_case("水渠纠纷")).unwrap();
    village.escalate(s.id, "涉及两村").unwrap();
    township
        .apply_changes(
            Some(village.identity().replica),
            village.changes_since(0, 1000).unwrap().into_iter().map(out_to_in).collect(),
        )
        .unwrap();
    let st = township.accept_escalation(s.id).unwrap();
    assert_eq!((st.status, st.level), (Status::Mediating, fq_core::case::Level::Township));
    township.escalate(s.id, "需县级协调").unwrap();
    township.set_operator("钱县", Role::CountyAdmin).unwrap();
    let st = township.accept_escalation(s.id).unwrap();
    assert_eq!(st.level, fq_core::case::Level::County);
    let e = township.escalate(s.id, "再上交").unwrap_err();
    assert!(e.to_string().contains("top level"), "{e}");
}

pub fn out_to_in(o: fq_core::ledger::OutgoingChange) -> fq_core::ledger::IncomingChange {
    o.into()
}

/// Every committed sample case replays through the real ledger API and ends
/// in the status and level its script says.
#[test]
fn sample_cases_replay_to_their_final_states() {
    let clock = ManualClock::new(T0);
    let opts = InitOptions {
        tier: Tier::County,
        name: "宾川县矛盾纠纷调处中心".into(),
        role: Role::CountyAdmin,
        scope: AdminCode::parse("532924").unwrap(),
        grid: None,
    };
    let mut l = Ledger::init_in_memory(opts, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
    let samples = fq_core::sample::binchuan_samples();
    assert_eq!(samples.len(), 240);
    for s in &samples {
        let expected = s.final_state().unwrap();
        let got = s.replay(&mut l, &clock).unwrap_or_else(|e| panic!("{}: {e}", s.title));
        assert_eq!((got.status, got.level), (expected.status, expected.level), "{}", s.title);
        assert_eq!((got.title.as_str(), got.risk), (expected.title.as_str(), expected.risk));
    }
    assert_eq!(l.list(&ListFilter::default()).unwrap().len(), 240);
}

/// Schema 2, as `store` created it before ADR 6 (its migrations 1 and 2).
const SCHEMA_V2: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE cases (
       rowid INTEGER PRIMARY KEY,
       id BLOB NOT NULL UNIQUE,
       number TEXT NOT NULL,
       county TEXT NOT NULL, township TEXT NOT NULL, village TEXT NOT NULL, grid INTEGER,
       level TEXT NOT NULL, status TEXT NOT NULL, category TEXT NOT NULL, risk TEXT NOT NULL,
       deadline INTEGER, recorded_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
       title TEXT NOT NULL, responsible TEXT, conflicts INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX cases_number ON cases(number);
    CREATE TABLE docs (case_rowid INTEGER PRIMARY KEY, snapshot BLOB NOT NULL, heads BLOB NOT NULL);
    CREATE TABLE changes (
       log_seq INTEGER PRIMARY KEY,
       hash BLOB NOT NULL,
       case_rowid INTEGER NOT NULL,
       received_from BLOB, signature BLOB);
    CREATE TABLE pending (
       hash BLOB PRIMARY KEY, case_id BLOB NOT NULL, bytes BLOB NOT NULL,
       received_from BLOB, signature BLOB, received_at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX pending_case ON pending(case_id);
    CREATE TABLE audit (
       seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL,
       case_id BLOB, peer TEXT, detail TEXT NOT NULL);
    ALTER TABLE changes ADD COLUMN signer BLOB;
    ALTER TABLE changes ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pending ADD COLUMN signer BLOB;
    CREATE INDEX changes_case ON changes(case_rowid);
    CREATE TABLE peers (
       replica BLOB PRIMARY KEY, tier TEXT NOT NULL, scope TEXT NOT NULL,
       their_seq INTEGER NOT NULL DEFAULT 0, their_hash BLOB,
       acked_seq INTEGER NOT NULL DEFAULT 0, last_sync INTEGER) WITHOUT ROWID;
    CREATE TABLE grants (
       signer BLOB PRIMARY KEY, bytes BLOB NOT NULL, subject TEXT NOT NULL, role TEXT NOT NULL,
       scope TEXT NOT NULL, received_at INTEGER NOT NULL) WITHOUT ROWID;
    PRAGMA user_version = 2;";

/// ADR 6: a schema-2 file (full hashes, heads, county and township columns)
/// upgrades in place and keeps its cases, its log positions and their
/// chains, and the signatures recovery sends; the log then goes on.
#[test]
fn a_schema_2_ledger_migrates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c: Arc<ManualClock> = Arc::new(clock.clone());
    let scope = AdminCode::parse("532924101201").unwrap();
    // The content, written by this build: two local cases and one received.
    let now_path = dir.path().join("now.db");
    let mut now = Ledger::init(
        &now_path,
        init(Role::Mediator, "532924101201", "张三", &clock),
        c.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    let mut other = Ledger::init_in_memory(
        init(Role::Mediator, "532924101201", "李娜", &clock),
        c.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    let a = now.create_case(new_case("宅基地滴水纠纷")).unwrap();
    clock.advance_ms(1_000);
    now.add_note(a.id, "双方到场").unwrap();
    let b = other.create_case(new_case("拖欠工资")).unwrap();
    clock.advance_ms(1_000);
    other.add_note(b.id, "约定下周再谈").unwrap();
    let from = other.identity().replica;
    now.apply_changes(Some(from), other.changes_since(0, 100).unwrap().into_iter().map(out_to_in).collect()).unwrap();
    clock.advance_ms(1_000);
    now.add_note(b.id, "已回访").unwrap();
    now.create_case(new_case("水渠纠纷")).unwrap();
    // Received rows carry a signature in the old file (the content is not
    // checked again; recovery must just send it along).
    let mut log = now.changes_since(0, 1_000).unwrap();
    for o in log.iter_mut().filter(|o| o.received_from.is_some()) {
        o.signer = Some([7; 32]);
        o.signature = Some(vec![9; 64]);
    }
    assert_eq!(log.len(), 6);
    let chains: Vec<_> = (1..=6).map(|s| now.log_hash(s).unwrap().unwrap()).collect();
    let digest = now.digest(&scope).unwrap();
    let rows = now.list(&ListFilter::default()).unwrap();
    drop(now);

    // The same content in a schema-2 file.
    let old_path = dir.path().join("v2.db");
    let old = rusqlite::Connection::open(&old_path).unwrap();
    old.pragma_update(None, "page_size", 8192).unwrap();
    old.execute_batch(SCHEMA_V2).unwrap();
    old.execute("ATTACH ?1 AS now", [now_path.to_str().unwrap()]).unwrap();
    old.execute_batch(
        "INSERT INTO meta SELECT key, value FROM now.meta;
         INSERT INTO cases(rowid, id, number, county, township, village, grid, level, status, category, risk,
                           deadline, recorded_at, updated_at, title, responsible, conflicts)
            SELECT rowid, id, number, substr(village, 1, 6), substr(village, 1, 9), village, grid, level, status,
                   category, risk, deadline, recorded_at, updated_at, title, responsible, conflicts FROM now.cases;
         INSERT INTO docs(case_rowid, snapshot, heads) SELECT case_rowid, snapshot, x'' FROM now.docs;
         INSERT INTO changes(log_seq, hash, case_rowid, received_from, signature, signer, chain)
            SELECT log_seq, hash_key, case_rowid, received_from, signature, signer, chain FROM now.changes;",
    )
    .unwrap();
    old.execute("DETACH now", []).unwrap();
    let snapshots: Vec<(i64, Vec<u8>)> = old
        .prepare("SELECT case_rowid, snapshot FROM docs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (rowid, snapshot) in snapshots {
        let heads = fq_core::doc::snapshot_heads(&snapshot).unwrap().concat();
        old.execute("UPDATE docs SET heads = ?1 WHERE case_rowid = ?2", rusqlite::params![heads, rowid]).unwrap();
    }
    for o in &log {
        old.execute(
            "UPDATE changes SET hash = ?1, signer = ?2, signature = ?3 WHERE log_seq = ?4",
            rusqlite::params![o.hash, o.signer, o.signature, o.log_seq],
        )
        .unwrap();
    }
    drop(old);

    // Opening migrates; everything reads back as before.
    let mut l = Ledger::open(&old_path, c.clone(), LedgerOptions::default()).unwrap();
    l.integrity_check().unwrap();
    assert_eq!(l.changes_since(0, 1_000).unwrap(), log);
    for (seq, chain) in (1..).zip(&chains) {
        assert_eq!(l.log_hash(seq).unwrap().as_ref(), Some(chain), "position {seq}");
    }
    assert_eq!(l.digest(&scope).unwrap(), digest);
    // Schema 5 rebuilds the rows of existing cases from their documents on
    // the first read-write open, so the columns schemas 4 and 5 added (open
    // conflicts, the level clock, people) are filled in: every row reads
    // back exactly as this build wrote it.
    let migrated = l.list(&ListFilter::default()).unwrap();
    assert!(migrated.iter().all(|r| r.open_conflicts == Some(0)));
    assert_eq!(migrated, rows);
    assert_eq!(rows[0].township, "532924101");
    // Recovery still sends the signatures of received changes.
    let missing = l.changes_missing(b.id, &[]).unwrap();
    assert_eq!(missing.len(), 3);
    assert_eq!(missing.iter().filter(|m| m.signer == Some([7; 32])).count(), 2);
    // The log goes on from the migrated chain.
    clock.advance_ms(1_000);
    l.add_note(a.id, "再次回访").unwrap();
    let next = l.changes_since(6, 10).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].log_seq, 7);
    let prev = i64::from_be_bytes(chains[5][..8].try_into().unwrap());
    assert_eq!(l.log_hash(7).unwrap(), Some(chain_position(chain_next(prev, &next[0].hash))));
    assert!(l.holds_change(a.id, &next[0].hash).unwrap());
    assert!(log.iter().all(|o| l.holds_change(o.case, &o.hash).unwrap()), "migrated rows hold their changes");
    assert!(!l.holds_change(b.id, &next[0].hash).unwrap(), "another case's change");
    assert!(!l.holds_change(a.id, &[0; 32]).unwrap());
    assert_eq!(l.duplicate_log_rows().unwrap(), 0);
    drop(l);
    let file = rusqlite::Connection::open(&old_path).unwrap();
    let version: i64 = file.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    let keys: Vec<i64> = file
        .prepare("SELECT length(hash_key) FROM changes")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Migrated rows keep 8-byte keys; the new one has the short key.
    let schema = i64::from(fq_core::store::SCHEMA_VERSION);
    assert_eq!((version, keys), (schema, vec![8, 8, 8, 8, 8, 8, i64::try_from(fq_core::store::KEY_BYTES).unwrap()]));
    // Schema 4 and later keep receive times from then on: migrated rows have none.
    let received: Vec<Option<i64>> = file
        .prepare("SELECT received_sec FROM changes ORDER BY log_seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(received, [None; 7], "only changes received after the migration get a receive time");
}
