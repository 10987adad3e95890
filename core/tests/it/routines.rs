//! The officers' routines on real ledgers: the county policy travelling down
//! the tree, the workflow rules, people from the roster, search, supervision,
//! `todo`, the clock-skew defence, the import, and the same report figures on
//! every replica after sync.

use std::sync::Arc;

use fq_core::case::{AdminCode, Category, Level, Outcome, Party, Risk, RiskFlag, Role, Status};
use fq_core::clock::{Clock, ManualClock, Timestamp};
use fq_core::doc::FieldEdit;
use fq_core::ledger::{
    ImportedCase, InitOptions, Ledger, LedgerError, LedgerOptions, NewCase, PolicyInstall, Tier, TimeSource,
};
use fq_core::sample::{SCENARIO_NOW, SampleAction};
use fq_core::store::ListFilter;
use fq_core::sync::session::{Event, PolicyOutcome, Session, SessionConfig, Side};
use fq_core::sync::wire::{self, Message};
use fq_core::todo::{self, Group, Tag};
use fq_core::trust::GrantRole;

use crate::ledger::{T0, new_case};
use crate::report::{T1, T2, binchuan_policy, monthly_of, scenario, subsidy_of};
use crate::sync::{Node, ca, node, sync};

const DAY: i64 = Timestamp::DAY_MS;

fn code(s: &str) -> AdminCode {
    AdminCode::parse(s).unwrap()
}

fn device(role: Role, scope: &str, name: &str, clock: &ManualClock) -> Ledger {
    let init = InitOptions { tier: Tier::Device, name: name.into(), role, scope: code(scope), grid: None };
    Ledger::init_in_memory(init, Arc::new(clock.clone()), LedgerOptions::default()).unwrap()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

// ---- the county policy ----------------------------------------------------

#[test]
fn policy_change_at_the_county_reaches_a_device_through_its_township_and_moves_its_deadlines() {
    let clock = ManualClock::new(T0);
    let mut county = node(&clock, 1, "county", GrantRole::CountyServer, "532924");
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "d07", GrantRole::Mediator, "532924101201");
    let case = dev.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    assert_eq!(case.deadline, Some(T0.plus_days(15)), "the built-in default: 15 days at the village");
    assert_eq!(dev.ledger.policy().version(), 0);
    // The county installs version 1 (village cases get 10 days), as its server does from the CA's file.
    let v1 = binchuan_policy(1, "[deadlines]\nvillage = 10\n");
    let ca = ca().verifying_key();
    assert_eq!(
        county.ledger.install_policy(v1.as_bytes(), &ca).unwrap(),
        PolicyInstall::Installed { previous: 0, version: 1 }
    );
    // Township first, then the device: each session carries it one tier down.
    let (mut child, _) = sync(&mut town, &mut county, clock.now());
    assert!(events(&mut child).contains(&Event::Policy(PolicyOutcome::Installed { previous: 0, version: 1 })));
    let (mut child, _) = sync(&mut dev, &mut town, clock.now());
    assert!(events(&mut child).contains(&Event::Policy(PolicyOutcome::Installed { previous: 0, version: 1 })));
    assert_eq!(dev.ledger.policy().version(), 1);
    assert_eq!(dev.ledger.policy().policy().deadlines.village, 10);
    let row = dev.ledger.list(&ListFilter::default()).unwrap().remove(0);
    assert_eq!(row.deadline, Some(T0.plus_days(10)), "the device's open case now has 10 days");
    assert_eq!(dev.ledger.show(case.id, false).unwrap().state.deadline, Some(T0.plus_days(10)));
    // The roster came with it: the device's user is matched when they are in it.
    assert_eq!(dev.ledger.policy().roster().len(), fq_core::county::County::binchuan().people_count() + 22);
    // A second session sends nothing new (the device holds version 1).
    let (mut child, _) = sync(&mut dev, &mut town, clock.now());
    assert!(!events(&mut child).iter().any(|e| matches!(e, Event::Policy(_))));
}

/// A parent's `Policy` frame carrying `bytes`, as a forged or replayed one would arrive.
fn policy_frame(version: u64, bytes: Vec<u8>, now: Timestamp) -> Vec<u8> {
    wire::encode(&Message::Policy { now, version, signed: Some(bytes) }).unwrap()
}

#[test]
fn policy_that_is_forged_unsigned_older_or_foreign_is_refused_and_never_installed() {
    let clock = ManualClock::new(T0);
    let mut county = node(&clock, 1, "county", GrantRole::CountyServer, "532924");
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let ca = ca().verifying_key();
    county.ledger.install_policy(binchuan_policy(2, "[deadlines]\nvillage = 12\n").as_bytes(), &ca).unwrap();
    let (mut child, _) = sync(&mut town, &mut county, clock.now());
    assert!(events(&mut child).iter().any(|e| matches!(e, Event::Policy(PolicyOutcome::Installed { .. }))));
    // Forged: version 9 signed by another key.
    let other = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let county_code = code("532924");
    let forged =
        fq_core::policy::SignedPolicy::sign(&county_code, 9, T0, "[deadlines]\nvillage = 99\n", vec![], vec![], &other)
            .unwrap();
    // Unsigned: the signature bytes zeroed. Older: version 1, properly signed.
    let mut unsigned = binchuan_policy(8, "").as_bytes().to_vec();
    let n = unsigned.len();
    unsigned[n - 64..].fill(0);
    let older = binchuan_policy(1, "[deadlines]\nvillage = 3\n");
    let before = town.ledger.counts().unwrap();
    for (bytes, version) in [(forged.as_bytes().to_vec(), 9), (unsigned, 8), (older.as_bytes().to_vec(), 1)] {
        let mut s = Session::new(
            Side::Child,
            &town.ledger,
            crate::sync::creds(&town, None),
            SessionConfig::default(),
            None,
            T0,
        )
        .unwrap();
        // Complete the hellos by hand, then deliver the frame.
        let parent_hello = wire::encode(&Message::Hello {
            replica: county.ledger.identity().replica,
            tier: Tier::County,
            scope: county_code.clone(),
            log_head: 0,
            have: wire::LogPosition::START,
            min_version: 1,
            max_version: 1,
        })
        .unwrap();
        s.handle_input(&mut town.ledger, &parent_hello, T0).unwrap();
        s.handle_input(&mut town.ledger, &policy_frame(version, bytes, T0), T0).unwrap();
        let outcome = events(&mut s).into_iter().find_map(|e| match e {
            Event::Policy(o) => Some(o),
            _ => None,
        });
        match outcome {
            Some(PolicyOutcome::Refused { claimed, .. }) => assert_eq!(claimed, version),
            Some(PolicyOutcome::Stale { offered: 1, current: 2 }) => assert_eq!(version, 1),
            other => panic!("version {version}: {other:?}"),
        }
        assert!(!s.is_closed(), "a bad policy never ends the session");
        assert_eq!(town.ledger.policy().version(), 2);
        assert_eq!(town.ledger.policy().policy().deadlines.village, 12);
    }
    assert_eq!(town.ledger.counts().unwrap(), before, "nothing written");
    // Another county's policy, properly signed by the same CA, is refused too.
    let other_county =
        fq_core::policy::SignedPolicy::sign(&code("530102"), 5, T0, "", vec![], vec![], &crate::sync::ca()).unwrap();
    assert!(matches!(town.ledger.install_policy(other_county.as_bytes(), &ca), Err(LedgerError::Policy(_))));
    assert_eq!(town.ledger.policy().version(), 2);
}

// ---- workflow rules -------------------------------------------------------

fn mediator(clock: &ManualClock) -> Ledger {
    device(Role::Mediator, "532924101201", "张三", clock)
}

#[test]
fn settle_is_refused_below_the_level_a_case_was_sent_to_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let c = l.create_case(new_case("山林界址纠纷")).unwrap();
    l.escalate(c.id, "涉及两村").unwrap();
    let before = l.counts().unwrap();
    let e = l.settle(c.id, "已和解").unwrap_err();
    assert!(matches!(&e, LedgerError::BelowLevel { action: "settle", level: Level::Township, .. }), "{e:?}");
    assert!(e.is_user_error());
    assert_eq!(l.counts().unwrap(), before);
    assert_eq!(l.show(c.id, false).unwrap().state.status, Status::Escalated);
}

#[test]
fn fail_is_refused_below_the_level_a_case_was_sent_to_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let c = l.create_case(new_case("山林界址纠纷")).unwrap();
    l.escalate(c.id, "涉及两村").unwrap();
    let before = l.counts().unwrap();
    assert!(matches!(l.fail(c.id, "调解不成"), Err(LedgerError::BelowLevel { action: "fail", .. })));
    assert_eq!(l.counts().unwrap(), before);
    // The township may, without accepting first.
    l.set_operator("李娜", Role::TownshipOfficer).unwrap();
    assert_eq!(l.fail(c.id, "调解不成").unwrap().status, Status::Failed);
}

#[test]
fn archive_is_refused_before_follow_ups_are_made_or_waived_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let c = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    l.settle(c.id, "已和解").unwrap();
    l.follow_up(c.id, Outcome::Honoured, None).unwrap();
    let before = l.counts().unwrap();
    let e = l.archive(c.id).unwrap_err();
    assert!(matches!(e, LedgerError::FollowUpsPending { pending: 1, .. }), "{e:?}");
    assert_eq!(l.counts().unwrap(), before);
    // Waived with a reason, it may be archived.
    assert!(matches!(l.waive_follow_ups(c.id, "  "), Err(LedgerError::Input(_))));
    l.waive_follow_ups(c.id, "当事人已外出务工").unwrap();
    assert!(matches!(l.waive_follow_ups(c.id, "再次"), Err(LedgerError::NoFollowUps { .. })));
    assert_eq!(l.archive(c.id).unwrap().status, Status::Archived);
    // A failed case owes no follow-up.
    let f = l.create_case(new_case("债务纠纷")).unwrap();
    l.fail(f.id, "调解不成").unwrap();
    l.archive(f.id).unwrap();
}

#[test]
fn concurrent_contradicting_events_still_merge_and_the_audit_shows_them() {
    // A grid worker escalates; a mediator of the same village, who has not
    // seen it, settles. Both events survive; where the settlement comes after
    // the escalation in the merged list, it broke the rule, and the township's
    // audit says so. Which comes first is Automerge's deterministic choice,
    // so several seeds are tried and at least one must show each order.
    let mut violated = 0;
    let mut clean = 0;
    for seed in 1..=8u64 {
        let clock = ManualClock::new(T0);
        let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
        let mut a = node(&clock, 3, "d07", GrantRole::GridWorker, "532924101201");
        let mut b = node(&clock, 4, "d08", GrantRole::Mediator, "532924101201");
        a.ledger = Ledger::init_in_memory(
            InitOptions {
                tier: Tier::Device,
                name: "杨成顺".into(),
                role: Role::GridWorker,
                scope: code("532924101201"),
                grid: Some(1),
            },
            Arc::new(clock.clone()),
            LedgerOptions { seed: Some(seed), ..Default::default() },
        )
        .unwrap();
        a.ledger.add_grant(&a.grant).unwrap();
        let c = a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
        sync(&mut a, &mut town, clock.now());
        sync(&mut b, &mut town, clock.now());
        clock.advance_ms(60_000);
        a.ledger.escalate(c.id, "需乡镇协调").unwrap();
        b.ledger.settle(c.id, "双方已和解").unwrap();
        sync(&mut a, &mut town, clock.now());
        sync(&mut b, &mut town, clock.now());
        sync(&mut a, &mut town, clock.now());
        let on_town = town.ledger.show(c.id, false).unwrap().state;
        let on_a = a.ledger.show(c.id, false).unwrap().state;
        assert_eq!((on_town.status, &on_town.violations), (on_a.status, &on_a.violations), "replicas agree");
        let kinds: Vec<_> = on_town.events.iter().map(|e| e.kind.code()).collect();
        assert!(kinds.contains(&"escalated") && kinds.contains(&"settled"), "both kept: {kinds:?}");
        let audit = town.ledger.audit(100).unwrap();
        let noted = audit.iter().any(|e| e.kind == "workflow" && e.detail.contains("settled-below-level"));
        if on_town.violations.iter().any(|v| v.rule == "settled-below-level") {
            assert!(noted, "{audit:?}");
            violated += 1;
        } else {
            assert!(!noted);
            clean += 1;
        }
    }
    assert!(violated > 0 && clean > 0, "each order seen: {violated} violating, {clean} not");
}

// ---- routing --------------------------------------------------------------

#[test]
fn high_risk_and_flagged_village_cases_go_to_the_township_at_once() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let mut high = new_case("持刀威胁");
    high.risk = Risk::High;
    let h = l.create_case(high).unwrap();
    assert_eq!((h.status, h.escalated_to), (Status::Escalated, Some(Level::Township)));
    let rule = h.events.iter().find(|e| e.kind.code() == "escalated").and_then(|e| e.rule.clone());
    assert_eq!(rule.as_deref(), Some("high-risk"));
    // Flagged later: the edit and the escalation land together.
    let c = l.create_case(new_case("家庭矛盾")).unwrap();
    assert_eq!(c.status, Status::Recorded);
    let edited = l.edit(c.id, FieldEdit { add_flags: vec![RiskFlag::CriminalRisk], ..Default::default() }).unwrap();
    assert_eq!((edited.status, edited.flags.as_slice()), (Status::Escalated, &[RiskFlag::CriminalRisk][..]));
    // A flag the policy does not route stays put.
    let g = l.create_case(new_case("群体性纠纷")).unwrap();
    let g = l.edit(g.id, FieldEdit { add_flags: vec![RiskFlag::Group], ..Default::default() }).unwrap();
    assert_eq!(g.status, Status::Recorded);
    // Named categories start at the township, under a policy that names them.
    let clock2 = ManualClock::new(T0);
    let mut county = node(&clock2, 1, "county", GrantRole::CountyServer, "532924");
    let mut town = node(&clock2, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock2, 3, "d07", GrantRole::Mediator, "532924101201");
    let text = "[routing]\ntownship_categories = [\"petition\"]\n";
    county.ledger.install_policy(binchuan_policy(1, text).as_bytes(), &ca().verifying_key()).unwrap();
    sync(&mut town, &mut county, clock2.now());
    sync(&mut dev, &mut town, clock2.now());
    let mut p = new_case("上访诉求");
    p.category = Category::Petition;
    let p = dev.ledger.create_case(p).unwrap();
    assert_eq!((p.level, p.deadline), (Level::Township, Some(T0.plus_days(30))));
    assert!(matches!(dev.ledger.settle(p.id, "x"), Err(LedgerError::BelowLevel { .. })));
}

// ---- people ---------------------------------------------------------------

#[test]
fn assign_takes_a_name_or_a_staff_id_and_asks_when_a_name_is_shared() {
    let clock = ManualClock::new(T0);
    let mut l = device(Role::Mediator, "532924101201", "普学伟", &clock);
    let c = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    // No roster yet: names are kept as typed.
    assert_eq!(l.assign(c.id, "王大妈").unwrap().responsible.as_deref(), Some("王大妈"));
    l.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    assert_eq!(l.operator().id.as_ref().map(|i| i.as_str()), Some("532924101201-01"), "the user is found");
    // A unique name.
    let s = l.assign(c.id, "林敏梅").unwrap();
    assert_eq!((s.responsible.as_deref(), s.responsible_id.as_deref()), (Some("林敏梅"), Some("532924101201-02")));
    // A staff id.
    let s = l.assign(c.id, "532924101202-01").unwrap();
    assert_eq!((s.responsible.as_deref(), s.responsible_id.as_deref()), (Some("周兵辉"), Some("532924101202-01")));
    // A name two people share: refused, with both.
    let county = fq_core::county::County::binchuan();
    let roster = fq_core::roster::Roster::from_county(&county).unwrap();
    // (one that nobody of this village or township bears, else the place tells them apart)
    let elsewhere = |s: &&fq_core::roster::Staff| !s.scope.as_str().starts_with("532924101");
    let shared = roster
        .staff()
        .iter()
        .find(|s| roster.named(&s.name).len() > 1 && roster.named(&s.name).iter().all(elsewhere))
        .unwrap()
        .name
        .clone();
    let before = l.counts().unwrap();
    match l.assign(c.id, &shared) {
        Err(LedgerError::AmbiguousPerson { candidates, .. }) => assert!(candidates.len() >= 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(l.assign(c.id, "查无此人"), Err(LedgerError::UnknownPerson { .. })));
    assert_eq!(l.counts().unwrap(), before);
}

#[test]
fn assign_takes_a_shared_name_as_the_one_who_works_where_the_case_is() {
    let clock = ManualClock::new(T0);
    let mut l = device(Role::CountyAdmin, "532924", "杨祥", &clock);
    l.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    let county = fq_core::county::County::binchuan();
    let roster = fq_core::roster::Roster::from_county(&county).unwrap();
    // A name three people of the county bear, one of them in each of three villages.
    let named = roster.named("姚玉");
    assert_eq!(named.len(), 3, "the roster changed: pick another shared name");
    for s in named {
        let mut new = new_case("宅基地滴水纠纷");
        new.village = Some(s.scope.clone());
        let c = l.create_case(new).unwrap();
        let got = l.assign(c.id, "姚玉").unwrap();
        assert_eq!(got.responsible_id.as_deref(), Some(s.id.as_str()), "a case of {}", s.scope);
    }
    // Outside those villages and their townships the name is still ambiguous.
    let mut new = new_case("宅基地滴水纠纷");
    new.village = Some(code("532924101201"));
    let c = l.create_case(new).unwrap();
    assert!(matches!(l.assign(c.id, "姚玉"), Err(LedgerError::AmbiguousPerson { .. })));
}

#[test]
fn names_typed_before_the_roster_arrived_are_matched_in_the_subsidy_sheet() {
    let clock = ManualClock::new(SCENARIO_NOW);
    let mut l = device(Role::Mediator, "532924101201", "普学伟", &clock);
    clock.set(Timestamp(SCENARIO_NOW.0 - 10 * DAY));
    l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    clock.set(SCENARIO_NOW);
    let month = fq_core::report::Month::of(Timestamp(SCENARIO_NOW.0 - 10 * DAY));
    let before = fq_core::report::subsidy(&l, month, None, None, SCENARIO_NOW).unwrap();
    assert_eq!((before.people[0].person.as_str(), before.people[0].matched), ("普学伟", false));
    l.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    let after = fq_core::report::subsidy(&l, month, None, None, SCENARIO_NOW).unwrap();
    assert_eq!((after.people[0].person.as_str(), after.people[0].matched), ("532924101201-01", true));
}

// ---- search ---------------------------------------------------------------

#[test]
fn search_looks_in_descriptions_notes_agreements_and_party_names_not_id_numbers() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let mut a = new_case("宅基地纠纷");
    a.description = "东户屋檐滴水落入西户院内".into();
    a.parties = vec![Party::parse("李四,532924198001011230,13800000000").unwrap()];
    let a = l.create_case(a).unwrap();
    let mut b = new_case("借款纠纷");
    b.description = "借款三万元未还".into();
    b.parties = vec![Party::parse("赵六").unwrap()];
    let b = l.create_case(b).unwrap();
    l.add_note(b.id, "双方到场，约定分期还款").unwrap();
    l.settle(b.id, "赵六于年底前归还全部借款").unwrap();
    let found = |q: &str| {
        let mut ids: Vec<_> = l
            .list(&ListFilter { search: Some(q.into()), ..Default::default() })
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(found("宅基地"), [a.id], "title");
    assert_eq!(found("屋檐滴水"), [a.id], "description, as typed");
    assert_eq!(found("李四"), [a.id], "party name");
    assert_eq!(found("分期还款"), [b.id], "session note");
    assert_eq!(found("年底前归还"), [b.id], "agreement");
    assert!(found("532924198001011230").is_empty(), "never ID numbers");
    assert!(found("13800000000").is_empty(), "nor phones");
    assert!(found("不存在的字").is_empty());
}

// ---- supervision ----------------------------------------------------------

#[test]
fn supervision_is_given_from_above_and_shows_in_todo_until_answered() {
    let clock = ManualClock::new(T0);
    let mut l = mediator(&clock);
    let c = l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let due = T0.plus_days(7);
    assert!(matches!(l.supervise(c.id, "一周内调处", due), Err(LedgerError::Role { .. })), "not from the village");
    assert!(matches!(l.respond(c.id, "已处理"), Err(LedgerError::NoSupervision { .. })));
    l.set_operator("自福", Role::TownshipOfficer).unwrap();
    let s = l.supervise(c.id, "一周内调处", due).unwrap();
    assert_eq!(s.supervision.as_ref().map(|o| o.due), Some(due));
    l.set_operator("张三", Role::Mediator).unwrap();
    let t = todo::todo(&l, None).unwrap();
    let item = t.items.iter().find(|i| i.case.id == c.id).unwrap();
    assert_eq!(item.group, Group::Supervision);
    assert!(item.tags.contains(&Tag::Supervised));
    l.respond(c.id, "已组织双方调解").unwrap();
    assert!(todo::todo(&l, None).unwrap().items.iter().all(|i| i.case.id != c.id), "answered: gone");
    // A township does not supervise a case at its own level; the county supervises any.
    l.set_operator("自福", Role::TownshipOfficer).unwrap();
    l.escalate(c.id, "上报").unwrap();
    l.accept_escalation(c.id).unwrap();
    assert!(matches!(l.supervise(c.id, "x", due), Err(LedgerError::SuperviseLevel { .. })));
    l.set_operator("杨祥", Role::CountyAdmin).unwrap();
    l.supervise(c.id, "县级督办", due).unwrap();
}

// ---- todo -----------------------------------------------------------------

/// A replica of `tier` over `scope` holding the scenario's cases in it.
fn scenario_replica(tier: Tier, role: Role, scope: &str, name: &str) -> Ledger {
    let clock = ManualClock::new(SCENARIO_NOW);
    let init = InitOptions { tier, name: name.into(), role, scope: code(scope), grid: None };
    let mut l =
        Ledger::init_in_memory(init, Arc::new(clock.clone()), LedgerOptions { seed: Some(9), ..Default::default() })
            .unwrap();
    l.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    for c in scenario().iter().filter(|c| code(scope).contains(&c.village)) {
        c.replay(&mut l, &clock).unwrap_or_else(|e| panic!("{}: {e}", c.title));
    }
    clock.set(SCENARIO_NOW);
    l.set_operator(name, role).unwrap();
    l
}

fn titles(t: &todo::Todo, group: Group) -> Vec<String> {
    t.items.iter().filter(|i| i.group == group).map(|i| i.case.title.clone()).collect()
}

#[test]
fn todo_on_a_township_replica_lists_the_whole_area_in_order() {
    let l = scenario_replica(Tier::Township, Role::TownshipOfficer, T1, "宾居镇综治中心");
    let t = todo::todo(&l, None).unwrap();
    assert!(!t.personal && t.level == Level::Township && t.now == SCENARIO_NOW);
    // Overdue: high risk first (SE), then by deadline; OA-7 and OB-6 share theirs (Oct 22), number decides.
    assert_eq!(
        titles(&t, Group::Overdue),
        [
            "婚姻家庭纠纷SE-1",
            "婚姻家庭纠纷SE-2",
            "婚姻家庭纠纷SD-1",
            "婚姻家庭纠纷SD-2",
            "婚姻家庭纠纷SD-3",
            "劳资纠纷OB-4",
            "劳资纠纷OB-5",
            "债务纠纷OA-7",
            "劳资纠纷OB-6",
            "债务纠纷OA-8",
            "债务纠纷OA-9",
            "债务纠纷OA-10",
        ]
    );
    // Due within 3 days: the two high-risk cases waiting at the township (village deadline Nov 4-5).
    assert_eq!(titles(&t, Group::DueSoon), ["婚姻家庭纠纷OE-1", "婚姻家庭纠纷OE-2"]);
    // Visits due: SA-7/8 (2nd, due Oct 13-14), OA-5/6 (1st, Oct 16-17), OA-1/2 (2nd, Nov 4-5).
    assert_eq!(
        titles(&t, Group::FollowUp),
        ["邻里纠纷SA-7", "邻里纠纷SA-8", "邻里纠纷OA-5", "债务纠纷OA-6", "邻里纠纷OA-1", "邻里纠纷OA-2"]
    );
    let visits: Vec<Option<u32>> = t.items.iter().filter(|i| i.group == Group::FollowUp).map(|i| i.visit).collect();
    assert_eq!(visits, [Some(2), Some(2), Some(1), Some(1), Some(2), Some(2)]);
    assert!(titles(&t, Group::Accept).is_empty() && titles(&t, Group::Supervision).is_empty(), "all placed above");
    let tags = |title: &str| t.items.iter().find(|i| i.case.title == title).unwrap().tags.clone();
    assert_eq!(tags("婚姻家庭纠纷SD-1"), [Tag::EscalateNow], "past its village deadline");
    assert_eq!(tags("婚姻家庭纠纷SD-3"), [Tag::EscalateNow, Tag::Supervised], "its order is unanswered");
    assert_eq!(tags("劳资纠纷OB-4"), [Tag::WaitingForYou]);
    assert_eq!(tags("婚姻家庭纠纷OE-1"), [Tag::WaitingForYou]);
    // --scope narrows to a village; outside the replica's area is refused.
    let one = todo::todo(&l, Some(&code("532924101202"))).unwrap();
    assert!(one.items.iter().all(|i| i.case.village == "532924101202") && !one.items.is_empty());
    assert!(matches!(todo::todo(&l, Some(&code(T2))), Err(LedgerError::OutOfScope { .. })));
}

#[test]
fn todo_on_a_device_covers_its_user_and_the_unassigned_cases_of_its_area() {
    let mut l = scenario_replica(Tier::Device, Role::Mediator, "532924101201", "普学伟");
    let t = todo::todo(&l, None).unwrap();
    assert!(t.personal && t.user.as_deref() == Some("普学伟"));
    assert_eq!(
        titles(&t, Group::Overdue),
        [
            "婚姻家庭纠纷SD-1",
            "婚姻家庭纠纷SD-2",
            "婚姻家庭纠纷SD-3",
            "债务纠纷OA-7",
            "债务纠纷OA-8",
            "债务纠纷OA-9",
            "债务纠纷OA-10"
        ]
    );
    assert_eq!(titles(&t, Group::DueSoon), ["婚姻家庭纠纷OE-1", "婚姻家庭纠纷OE-2"]);
    assert_eq!(t.items.len(), 15);
    // A case someone else is responsible for leaves this user's list.
    let sd1 = l
        .resolve(&l.list(&ListFilter { search: Some("SD-1".into()), ..Default::default() }).unwrap()[0].number)
        .unwrap();
    l.assign(sd1, "林敏梅").unwrap();
    let t = todo::todo(&l, None).unwrap();
    assert!(!titles(&t, Group::Overdue).contains(&"婚姻家庭纠纷SD-1".to_owned()));
    // Another user of the same device sees that case.
    l.set_operator("林敏梅", Role::Mediator).unwrap();
    assert!(titles(&todo::todo(&l, None).unwrap(), Group::Overdue).contains(&"婚姻家庭纠纷SD-1".to_owned()));
}

// ---- clock skew -----------------------------------------------------------

#[test]
fn a_device_clock_found_off_at_sync_is_corrected_and_says_so() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let dev_clock = ManualClock::new(Timestamp(T0.0 + 3 * 3_600_000));
    let mut dev = node(&dev_clock, 3, "d07", GrantRole::Mediator, "532924101201");
    assert_eq!(dev.ledger.time_source(), TimeSource::Local);
    // The device's clock is 3 hours fast: the session measures it against the township's.
    let mut c = Session::new(
        Side::Child,
        &dev.ledger,
        crate::sync::creds(&dev, None),
        SessionConfig::default(),
        None,
        dev_clock.now(),
    )
    .unwrap();
    let mut p = Session::new(
        Side::Parent,
        &town.ledger,
        crate::sync::creds(&town, Some("532924101201")),
        SessionConfig::default(),
        None,
        clock.now(),
    )
    .unwrap();
    for _ in 0..100 {
        let mut moved = false;
        while let Some(f) = c.poll_transmit() {
            moved = true;
            p.handle_input(&mut town.ledger, &f, clock.now()).unwrap();
        }
        while let Some(f) = p.poll_transmit() {
            moved = true;
            c.handle_input(&mut dev.ledger, &f, dev_clock.now()).unwrap();
        }
        if !moved {
            break;
        }
    }
    assert!(c.is_caught_up());
    let offset = events(&mut c).into_iter().find_map(|e| match e {
        Event::PeerClock { peer_minus_ours_ms } => Some(peer_minus_ours_ms),
        _ => None,
    });
    assert_eq!(offset, Some(-3 * 3_600_000));
    assert!(matches!(dev.ledger.time_source(), TimeSource::Corrected { offset_ms, .. } if offset_ms == 3 * 3_600_000));
    assert_eq!(dev.ledger.now(), T0, "the device computes with the township's time");
    let case = dev.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    assert_eq!(case.recorded_at, T0, "and writes it");
    // A clock within 10 minutes is left alone.
    let mut ok = node(&clock, 4, "d08", GrantRole::Mediator, "532924101201");
    ok.ledger.note_parent_clock(Timestamp(T0.0 - 60_000), T0).unwrap();
    assert_eq!(ok.ledger.time_source(), TimeSource::Local);
}

// ---- import ---------------------------------------------------------------

#[test]
fn import_brings_in_all_cases_with_their_history_or_none() {
    let clock = ManualClock::new(SCENARIO_NOW);
    let mut l = device(Role::CountyAdmin, "532924", "杨祥", &clock);
    let case = |title: &str, village: &str| NewCase {
        category: Category::Neighbor,
        title: title.into(),
        description: String::new(),
        parties: vec![Party::parse("李四").unwrap()],
        risk: Risk::Low,
        flags: vec![],
        village: Some(code(village)),
        grid: None,
    };
    let sept = Timestamp(SCENARIO_NOW.0 - 45 * DAY);
    let rows = vec![
        ImportedCase {
            old_number: Some("BC-2026-001".into()),
            case: case("旧台账一", "532924101201"),
            recorded_at: sept,
            status: Status::Settled,
            level: Level::Township,
            updated_at: Timestamp(sept.0 + 5 * DAY),
            responsible: None,
        },
        ImportedCase {
            old_number: Some("BC-2026-002".into()),
            case: case("旧台账二", "532924102201"),
            recorded_at: sept,
            status: Status::Mediating,
            level: Level::Village,
            updated_at: sept,
            responsible: None,
        },
    ];
    let done = l.import_cases(rows.clone()).unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].status, done[0].level, done[0].recorded_at), (Status::Settled, Level::Township, sept));
    assert!(done[0].description.contains("BC-2026-001"));
    let m = fq_core::report::monthly(&l, fq_core::report::Month::of(sept), None, SCENARIO_NOW).unwrap();
    assert_eq!((m.new, m.settled), (2, 1), "counted in the month the old ledger recorded them");
    // The same file again: refused as a whole, nothing written.
    let before = l.counts().unwrap();
    assert!(matches!(l.import_cases(rows), Err(LedgerError::DuplicateNumber { .. })));
    assert_eq!(l.counts().unwrap(), before);
    // A case outside the area refuses the whole import.
    let mut v = device(Role::Mediator, "532924101201", "普学伟", &clock);
    let outside = ImportedCase {
        old_number: None,
        case: case("越界", "532924102201"),
        recorded_at: sept,
        status: Status::Recorded,
        level: Level::Village,
        updated_at: sept,
        responsible: None,
    };
    let inside = ImportedCase { case: case("本村", "532924101201"), ..outside.clone() };
    assert!(matches!(v.import_cases(vec![inside, outside]), Err(LedgerError::OutOfScope { .. })));
    assert_eq!(v.list(&ListFilter::default()).unwrap().len(), 0);
}

// ---- the same figures on every replica ------------------------------------

/// Which node of the tree acts for a step: the village's device, its
/// township officer's, or the county admin's.
fn actor(nodes: &[(String, Node)], role: Role, village: &AdminCode) -> usize {
    let key = match role {
        Role::GridWorker | Role::Mediator => village.to_string(),
        Role::TownshipOfficer => format!("officer{}", village.as_str().get(..9).unwrap_or_default()),
        _ => "admin".to_owned(),
    };
    nodes.iter().position(|(k, _)| *k == key).unwrap()
}

#[test]
fn reports_agree_on_the_county_and_on_its_townships_after_sync() {
    let clock = ManualClock::new(T0);
    let mut county = node(&clock, 1, "county", GrantRole::CountyServer, "532924");
    let mut towns = [
        node(&clock, 2, "binju", GrantRole::TownshipServer, T1),
        node(&clock, 3, "zhoucheng", GrantRole::TownshipServer, T2),
    ];
    let mut nodes: Vec<(String, Node)> = vec![
        ("532924101201".into(), node(&clock, 11, "d-201", GrantRole::Mediator, "532924101201")),
        ("532924101202".into(), node(&clock, 12, "d-202", GrantRole::Mediator, "532924101202")),
        ("532924102201".into(), node(&clock, 13, "d-221", GrantRole::Mediator, "532924102201")),
        (format!("officer{T1}"), node(&clock, 21, "o-101", GrantRole::TownshipOfficer, T1)),
        (format!("officer{T2}"), node(&clock, 22, "o-102", GrantRole::TownshipOfficer, T2)),
        ("admin".into(), node(&clock, 31, "admin", GrantRole::CountyAdmin, "532924")),
    ];
    county.ledger.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    let town_of = |n: &Node| -> Option<usize> {
        let s = n.ledger.identity().scope.to_string();
        (s.len() > 6).then(|| usize::from(!s.starts_with(T1)))
    };
    // Up from a node to the county, and down from the county to one.
    fn up(n: &mut Node, towns: &mut [Node; 2], county: &mut Node, t: Option<usize>, now: Timestamp) {
        match t {
            Some(t) => {
                sync(n, &mut towns[t], now);
                sync(&mut towns[t], county, now);
            }
            None => {
                sync(n, county, now);
            }
        }
    }
    fn down(n: &mut Node, towns: &mut [Node; 2], county: &mut Node, t: Option<usize>, now: Timestamp) {
        match t {
            Some(t) => {
                sync(&mut towns[t], county, now);
                sync(n, &mut towns[t], now);
            }
            None => {
                sync(n, county, now);
            }
        }
    }
    for n in &mut nodes {
        let t = town_of(&n.1);
        down(&mut n.1, &mut towns, &mut county, t, T0);
    }
    for case in scenario() {
        // Each step on the replica of whoever takes it; the case moves (up,
        // then down) only when the next step is on another replica.
        let mut at = actor(&nodes, case.recorder_role, &case.village);
        clock.set(case.recorded_at);
        let l = &mut nodes[at].1.ledger;
        l.set_operator(&case.recorder, case.recorder_role).unwrap();
        let id = l
            .create_case(NewCase {
                category: case.category,
                title: case.title.clone(),
                description: case.description.clone(),
                parties: case.parties.clone(),
                risk: case.risk,
                flags: vec![],
                village: Some(case.village.clone()),
                grid: case.grid,
            })
            .unwrap()
            .id;
        for step in &case.steps {
            let next = actor(&nodes, step.role, &case.village);
            if next != at {
                let t = town_of(&nodes[at].1);
                up(&mut nodes[at].1, &mut towns, &mut county, t, step.at);
                let t = town_of(&nodes[next].1);
                down(&mut nodes[next].1, &mut towns, &mut county, t, step.at);
                at = next;
            }
            clock.set(step.at);
            let l = &mut nodes[at].1.ledger;
            l.set_operator(&step.by, step.role).unwrap();
            let done = match &step.action {
                SampleAction::Note(t) => l.add_note(id, t),
                SampleAction::Escalate(r) => l.escalate(id, r),
                SampleAction::AcceptEscalation => l.accept_escalation(id),
                SampleAction::Settle(a) => l.settle(id, a),
                SampleAction::Fail(r) => l.fail(id, r),
                SampleAction::FollowUp { outcome, note } => l.follow_up(id, *outcome, note.as_deref()),
                SampleAction::Archive => l.archive(id),
                SampleAction::Supervise { instruction, due } => l.supervise(id, instruction, *due),
                SampleAction::Respond(n) => l.respond(id, n),
                SampleAction::WaiveFollowUps(r) => l.waive_follow_ups(id, r),
                other => panic!("not in the scenario: {other:?}"),
            };
            done.unwrap_or_else(|e| panic!("{} {}: {e}", case.title, step.action.code()));
        }
        let t = town_of(&nodes[at].1);
        up(&mut nodes[at].1, &mut towns, &mut county, t, clock.now());
    }
    // Everything settles down the tree.
    for (i, t) in towns.iter_mut().enumerate() {
        sync(t, &mut county, SCENARIO_NOW);
        assert_eq!(t.ledger.policy().version(), 1, "township {i} holds the county's policy");
    }
    clock.set(SCENARIO_NOW);
    let whole = monthly_of(&county.ledger, "532924");
    assert_eq!((whole.new, whole.settled, whole.overdue), (35, 25, 12), "the same as one ledger replaying it all");
    let mut sums = (0, 0, 0, 0, 0);
    for (t, scope) in towns.iter().zip([T1, T2]) {
        let mut on_county = monthly_of(&county.ledger, scope);
        let mut on_town = monthly_of(&t.ledger, scope);
        // Figures only: the documents' own times are the same, the replicas' files are not.
        on_county.generated_at = on_town.generated_at;
        for (a, b) in on_county.overdue_cases.iter_mut().zip(on_town.overdue_cases.iter_mut()) {
            assert_eq!(a.number, b.number);
        }
        assert_eq!(on_county, on_town, "township {scope}");
        assert_eq!(subsidy_of(&county.ledger, scope, None), subsidy_of(&t.ledger, scope, None));
        sums = (
            sums.0 + on_town.new,
            sums.1 + on_town.settled,
            sums.2 + on_town.failed,
            sums.3 + on_town.escalated,
            sums.4 + on_town.overdue,
        );
    }
    assert_eq!(
        sums,
        (whole.new, whole.settled, whole.failed, whole.escalated, whole.overdue),
        "the union is the county"
    );
    assert_eq!(
        subsidy_of(&county.ledger, "532924", None).totals,
        crate::report::subsidy_of(&crate::report::county_with_scenario(), "532924", None).totals
    );
}
