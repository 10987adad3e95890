use std::sync::Arc;

use fq_core::case::{AdminCode, Category, Outcome, Party, Risk, Role, Status};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions, NewCase, Tier};
use fq_core::store::ListFilter;

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
    l.escalate(id, "村级调解未果").unwrap();
    assert_eq!(l.show(id, false).unwrap().state.status, Status::Escalated);
    // A mediator cannot accept; the case stays escalated.
    assert!(matches!(l.accept_escalation(id), Err(LedgerError::Role { .. })));
    l.settle(id, "李四改建屋檐，王五不再追究").unwrap();
    l.follow_up(id, Outcome::Honoured, Some("协议履行良好")).unwrap();
    drop(l);
    let mut l = Ledger::open_read_only(&path, c).unwrap();
    let v = l.show(id, true).unwrap();
    assert_eq!(v.state.status, Status::Settled);
    assert_eq!(v.state.follow_ups, 1);
    let history = v.history.unwrap();
    assert_eq!(history.len(), 5, "create, note, escalate, settle, follow-up");
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
    let f = ListFilter { search: Some("滴水".into()), ..Default::default() };
    assert_eq!(l.list(&f).unwrap().len(), 1);
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
