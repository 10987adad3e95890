//! The monthly report and the subsidy sheet of the report scenario
//! (`fixtures/report-scenario.json`, 61 cases, September and October 2026,
//! three villages of two townships), checked figure by figure against counts
//! made by hand from the scenario's table (`core/src/sample/scenario.rs`).
//! The reasoning behind each number is in the comment beside it.

use std::sync::Arc;

use fq_core::case::{AdminCode, Category, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::county::County;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::policy::{SignedPolicy, areas_of};
use fq_core::report::{self, Month, Monthly, Subsidy};
use fq_core::roster::Roster;
use fq_core::sample::{SCENARIO_NOW, SampleCase};

use crate::sync::ca;

pub const T1: &str = "532924101";
pub const T2: &str = "532924102";

/// The scenario as committed, not as generated now: the file is the fixture.
pub fn scenario() -> Vec<SampleCase> {
    let cases =
        fq_core::sample::load_samples(include_str!("../../../fixtures/report-scenario.json")).expect("fixture loads");
    assert_eq!(cases.len(), 61);
    cases
}

/// The county policy every replica of these tests holds: the default rules,
/// Binchuan's roster and division names, version `version`, signed by the
/// test CA.
pub fn binchuan_policy(version: u64, text: &str) -> SignedPolicy {
    let county = County::binchuan();
    let roster = Roster::from_county(&county).unwrap();
    SignedPolicy::sign(
        &AdminCode::parse("532924").unwrap(),
        version,
        Timestamp(1_790_000_000_000),
        text,
        roster.staff().to_vec(),
        areas_of(&county),
        &ca(),
    )
    .unwrap()
}

/// A county replica holding the whole scenario, replayed through the ledger API.
pub fn county_with_scenario() -> Ledger {
    let clock = ManualClock::new(SCENARIO_NOW);
    let init = InitOptions {
        tier: Tier::County,
        name: "宾川县综治中心".into(),
        role: Role::CountyAdmin,
        scope: AdminCode::parse("532924").unwrap(),
        grid: None,
    };
    let mut l =
        Ledger::init_in_memory(init, Arc::new(clock.clone()), LedgerOptions { seed: Some(5), ..Default::default() })
            .unwrap();
    l.install_policy(binchuan_policy(1, "").as_bytes(), &ca().verifying_key()).unwrap();
    for c in scenario() {
        c.replay(&mut l, &clock).unwrap_or_else(|e| panic!("{}: {e}", c.title));
    }
    clock.set(SCENARIO_NOW);
    l
}

fn october() -> Month {
    Month::new(2026, 10).unwrap()
}

fn code(s: &str) -> AdminCode {
    AdminCode::parse(s).unwrap()
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The headline figures a test compares across replicas.
pub fn monthly_of(l: &Ledger, scope: &str) -> Monthly {
    report::monthly(l, october(), Some(&code(scope)), SCENARIO_NOW).unwrap()
}

pub fn subsidy_of(l: &Ledger, scope: &str, person: Option<&str>) -> Subsidy {
    report::subsidy(l, october(), Some(&code(scope)), person, SCENARIO_NOW).unwrap()
}

#[test]
fn monthly_report_figures_match_the_hand_counts() {
    let l = county_with_scenario();
    let m = monthly_of(&l, "532924");
    assert_eq!(
        (m.month.to_string(), m.scope.as_str(), m.scope_name.as_deref()),
        ("2026-10".into(), "532924", Some("宾川县"))
    );
    // Read at the last instant of October, China time.
    assert_eq!(m.as_of.to_rfc3339(), "2026-10-31T15:59:59.999Z");
    assert_eq!(m.policy_version, 1);
    // New: OA 10 + OB 6 + OC 5 + OD 3 + OE 2 + OF 3 + OG 2 + OH 4.
    assert_eq!(m.new, 35);
    // Settled: SC 4 (Oct 4-7) + SF 1 (again, Oct 10) + OA 6 + OB 3 + OC 5 + OG 2 + OH 4.
    assert_eq!(m.settled, 25);
    // Failed: OD 3. Escalated: OB 6 + OE 2 (by policy, at recording) + OG 2 (twice each, counted once).
    assert_eq!((m.failed, m.escalated), (3, 10));
    assert_eq!(round(m.settlement_rate), round(25.0 / 28.0));
    // By category: new and settled.
    let cat = |c: Category| m.by_category[c.code()];
    assert_eq!(m.by_category.len(), Category::ALL.len(), "every category, zeros included");
    assert_eq!((cat(Category::Neighbor).new, cat(Category::Neighbor).settled), (8, 5), "OA 5 + OF 3; OA 5");
    assert_eq!((cat(Category::Debt).new, cat(Category::Debt).settled), (5, 1), "OA 5; OA's 6th");
    assert_eq!((cat(Category::Labor).new, cat(Category::Labor).settled, cat(Category::Labor).escalated), (6, 3, 6));
    assert_eq!((cat(Category::Land).new, cat(Category::Land).settled), (0, 4), "SC, recorded in September");
    assert_eq!((cat(Category::Water).settled, cat(Category::Property).settled), (1, 5));
    assert_eq!((cat(Category::Traffic).new, cat(Category::Traffic).failed), (3, 3));
    assert_eq!((cat(Category::MarriageFamily).new, cat(Category::MarriageFamily).escalated), (2, 2), "OE");
    assert_eq!((cat(Category::Petition).settled, cat(Category::Consumer).settled), (2, 4));
    // By township: 宾居镇 (双田, 后旗) and 州城镇 (清庄).
    assert_eq!(m.by_area.len(), 2);
    let (a, b) = (&m.by_area[0], &m.by_area[1]);
    assert_eq!((a.code.as_str(), a.name.as_deref()), (T1, Some("宾居镇")));
    // 宾居镇: new OA 10 + OE 2 + OB 6 + OF 3 + OH 4; settled OA 6 + OB 3 + OH 4; escalated OB 6 + OE 2;
    // overdue SD 3 + SE 2 + OA 4 + OB 3.
    assert_eq!((a.counts.new, a.counts.settled, a.counts.failed, a.counts.escalated, a.overdue), (25, 13, 0, 8, 12));
    // 州城镇: new OC 5 + OD 3 + OG 2; settled SC 4 + SF 1 + OC 5 + OG 2; failed OD 3; escalated OG 2.
    assert_eq!((b.code.as_str(), b.name.as_deref()), (T2, Some("州城镇")));
    assert_eq!((b.counts.new, b.counts.settled, b.counts.failed, b.counts.escalated, b.overdue), (10, 12, 3, 2, 0));
    // Medians: village [2,2,2,2,3,3,3,3,3,4,4,4,4,4,4,12] -> 3; township [10,10,10,20,20,20,20] -> 20;
    // county [12,12] -> 12.
    let med = m.median_days_to_settle;
    assert_eq!((med.village, med.township, med.county), (Some(3.0), Some(20.0), Some(12.0)));
    // 16 of the 25 settlements at the village, 16 + 7 within the township.
    assert_eq!((round(m.settled_in_village_share), round(m.settled_in_township_share)), (0.64, 0.92));
    // Overdue on October 31: SD 3 (due Oct 5-7), SE 2 (township, due Oct 26-27), OA 4 (due Oct 22-25),
    // OB 3 waiting for the township (village deadline Oct 20-22).
    assert_eq!(m.overdue, 12);
    let days: Vec<i64> = m.overdue_cases.iter().map(|c| c.days_overdue.unwrap()).collect();
    assert_eq!(days, [26, 25, 24, 11, 10, 9, 9, 8, 7, 6, 5, 4]);
    let first: Vec<&str> = m.overdue_cases.iter().take(3).map(|c| c.title.as_str()).collect();
    assert_eq!(first, ["婚姻家庭纠纷SD-1", "婚姻家庭纠纷SD-2", "婚姻家庭纠纷SD-3"]);
    // High risk open: SE 2 (at the township) + OE 2 (waiting for it).
    assert_eq!(m.high_risk, 4);
    let mut high: Vec<&str> = m.high_risk_cases.iter().map(|c| c.title.as_str()).collect();
    high.sort_unstable();
    assert_eq!(high, ["婚姻家庭纠纷OE-1", "婚姻家庭纠纷OE-2", "婚姻家庭纠纷SE-1", "婚姻家庭纠纷SE-2"]);
    // Follow-ups due in October: SA visit 2 (8: 4 on time, 2 late, 2 not made), SC 4 on time,
    // SF 2 on time (the relapse was a visit, and the second settlement's first), SG visit 2 (2 on time,
    // 1 waived, 1 not made), OA 6 (3 on time, 1 waived, 2 not made), OB 3 (2 on time, 1 late),
    // OC 5 (3 on time, 2 not made), OG 2 on time, OH 4 (2 on time, 2 late).
    let f = m.follow_up;
    assert_eq!((f.due, f.on_time, f.late, f.missed, f.waived, f.relapses), (38, 24, 5, 7, 2, 1));
    assert_eq!(f.compliance.map(round), Some(round(24.0 / 36.0)));
    // Supervision: SD 3 orders (Oct 8, 8, 9) + OA's Oct 28; answered Oct 12 and Oct 20; of the three
    // due in October, one answered late, one never.
    let s = m.supervision;
    assert_eq!((s.supervised, s.answered, s.overdue_answers), (4, 2, 2));
    // September: new SA 8 + SB 4 + SC 4 + SD 3 + SE 2 + SF 1 + SG 4; settled SA 8 + SF 1 + SG 4; failed SB 4;
    // escalated SC 4 + SE 2; nothing overdue yet on September 30.
    let p = &m.previous;
    assert_eq!(
        (p.month.to_string(), p.new, p.settled, p.failed, p.escalated, p.overdue),
        ("2026-09".into(), 26, 13, 4, 6, 0)
    );
    assert_eq!(round(p.settlement_rate), round(13.0 / 17.0));
    let c = &m.change;
    assert_eq!((c.new, c.settled, c.failed, c.escalated, c.overdue), (9, 12, -1, 4, 12));
    assert_eq!(round(c.settlement_rate), round(25.0 / 28.0 - 13.0 / 17.0));
}

#[test]
fn monthly_report_of_a_township_counts_its_villages() {
    let l = county_with_scenario();
    let m = monthly_of(&l, T1);
    assert_eq!((m.new, m.settled, m.failed, m.escalated, m.overdue, m.high_risk), (25, 13, 0, 8, 12, 4));
    let areas: Vec<(&str, u32, u32, u32, u32)> = m
        .by_area
        .iter()
        .map(|a| (a.code.as_str(), a.counts.new, a.counts.settled, a.counts.escalated, a.overdue))
        .collect();
    // 双田: new OA 10 + OE 2, settled OA 6, escalated OE 2, overdue SD 3 + OA 4.
    // 后旗: new OB 6 + OF 3 + OH 4, settled OB 3 + OH 4, escalated OB 6, overdue SE 2 + OB 3.
    assert_eq!(areas, [("532924101201", 12, 6, 2, 7), ("532924101202", 13, 7, 6, 5)]);
    assert_eq!(m.by_area[0].name.as_deref(), Some("双田村委会"));
}

#[test]
fn subsidy_counts_each_persons_cases_once() {
    let l = county_with_scenario();
    let s = subsidy_of(&l, "532924", None);
    let row = |name: &str| {
        let p = s.people.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} missing: {:?}", s.people));
        (p.person.as_str(), p.recorded, p.mediated, p.settled, p.followed_up)
    };
    // 普学伟 (双田 mediator): recorded OA 10 + OE 2; notes on OA 10; settled OA 6;
    // visits SA 6 (4 on time + 2 late) + OA 3.
    assert_eq!(row("普学伟"), ("532924101201-01", 12, 10, 6, 9));
    // 周兵辉 (后旗): recorded OB 6 + OH 4; notes OB 6 + OH 4; settled OH 4; visits OH 4.
    assert_eq!(row("周兵辉"), ("532924101202-01", 10, 10, 4, 4));
    // 字华 (后旗 grid worker): recorded OF 3.
    assert_eq!(row("字华"), ("532924101202-03", 3, 0, 0, 0));
    // 张贵国 (清庄): recorded OC 5 + OD 3 + OG 2; notes SF 1 + OC 5 + OD 3 + OG 2; settled SF 1 + OC 5;
    // visits SF 1 (relapse and visit, one case) + SG 2 + OC 3.
    assert_eq!(row("张贵国"), ("532924102201-01", 10, 11, 6, 6));
    // 自福 (宾居镇 officer): notes SE 2 + OB 3; settled OB 3; visits OB 3.
    assert_eq!(row("自福"), ("532924101-01", 0, 5, 3, 3));
    // 周杰文 (州城镇 officer): notes OG 2; settled SC 4; visits SC 4.
    assert_eq!(row("周杰文"), ("532924102-01", 0, 2, 4, 4));
    // 杨祥 (county admin): notes OG 2; settled OG 2; visits OG 2.
    assert_eq!(row("杨祥"), ("532924-01", 0, 2, 2, 2));
    assert_eq!(s.people.len(), 7, "杨成顺 did nothing in October: {:?}", s.people);
    assert!(s.people.iter().all(|p| p.matched), "everyone is in the roster");
    let t = s.totals;
    // Recorded = the month's new cases; settled = the month's settlements; followed up = 28 cases visited.
    assert_eq!((t.recorded, t.mediated, t.settled, t.followed_up), (35, 40, 25, 28));
    // One person, with the cases behind each count.
    let one = subsidy_of(&l, "532924", Some("532924101201-01"));
    assert_eq!(one.people.len(), 1);
    let cases = one.people[0].cases.as_ref().unwrap();
    assert_eq!(
        (cases.recorded.len(), cases.mediated.len(), cases.settled.len(), cases.followed_up.len()),
        (12, 10, 6, 9)
    );
    assert_eq!(
        subsidy_of(&l, "532924", Some("普学伟")).people,
        one.people,
        "a name the roster knows once is as good as an id"
    );
}

#[test]
fn report_formats_carry_the_same_figures() {
    let l = county_with_scenario();
    let m = monthly_of(&l, "532924");
    let json: serde_json::Value = serde_json::to_value(&m).unwrap();
    for key in ["month", "scope", "new", "settled", "failed", "escalated", "settlement_rate", "overdue", "by_category"]
    {
        assert!(json.get(key).is_some(), "{key} missing");
    }
    assert_eq!(json["by_category"]["neighbor"]["new"], 8);
    let html = report::html::monthly(&m, fq_core::lang::Lang::Zh).unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg") && html.contains("宾居镇"),
        "{}",
        &html[..200]
    );
    assert!(html.contains("邻里纠纷") && html.contains("小事不出村"), "in Chinese");
    for fetch in ["src=", "href=", "url(", "@import", "<script"] {
        assert!(!html.contains(fetch), "the report loads nothing: {fetch}");
    }
    let xlsx = report::sheet::monthly_xlsx(&m, fq_core::lang::Lang::Zh).unwrap();
    assert!(xlsx.starts_with(b"PK"), "an xlsx file is a zip");
    let csv = report::sheet::monthly_csv(&m, fq_core::lang::Lang::En).unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let settled = rows
        .records()
        .map(Result::unwrap)
        .find(|r| &r[0] == "summary" && r[1].ends_with("2026-10") && &r[2] == "settled")
        .unwrap();
    assert_eq!(&settled[3], "25");
    let s = subsidy_of(&l, "532924", None);
    let html = report::html::subsidy(&s, fq_core::lang::Lang::Zh).unwrap();
    assert!(html.contains("普学伟") && html.contains("532924101201-01"));
    let csv = report::sheet::subsidy_csv(&s, fq_core::lang::Lang::Zh).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("532924101201-01,普学伟,调解员,532924101201,12,10,6,9")), "{csv}");
    assert!(report::sheet::subsidy_xlsx(&s, fq_core::lang::Lang::Zh).unwrap().starts_with(b"PK"));
}

#[test]
fn report_text_from_cases_cannot_add_markup_or_formulas() {
    let clock = ManualClock::new(SCENARIO_NOW);
    let init = InitOptions {
        tier: Tier::Device,
        name: "普学伟".into(),
        role: Role::Mediator,
        scope: code("532924101201"),
        grid: None,
    };
    let mut l = Ledger::init_in_memory(init, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
    clock.set(Timestamp(SCENARIO_NOW.0 - 40 * Timestamp::DAY_MS));
    let mut c = crate::ledger::new_case("<script>alert(1)</script>");
    c.risk = fq_core::case::Risk::High;
    l.create_case(c).unwrap();
    let mut c = crate::ledger::new_case("=HYPERLINK(\"x\")");
    c.risk = fq_core::case::Risk::High;
    l.create_case(c).unwrap();
    clock.set(SCENARIO_NOW);
    let m =
        report::monthly(&l, Month::of(Timestamp(SCENARIO_NOW.0 - 40 * Timestamp::DAY_MS)), None, SCENARIO_NOW).unwrap();
    assert_eq!(m.high_risk, 2);
    let html = report::html::monthly(&m, fq_core::lang::Lang::Zh).unwrap();
    assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"));
    let csv = report::sheet::monthly_csv(&m, fq_core::lang::Lang::Zh).unwrap();
    assert!(csv.contains("'=HYPERLINK") && !csv.contains(",=HYPERLINK"), "{csv}");
}
