//! The report scenario (`fixtures/report-scenario.json`): 61 cases over
//! September and October 2026 in three villages of two townships of
//! Binchuan, written so that every figure of the October monthly report and
//! subsidy sheet can be counted by hand (`core/tests/it/report.rs` holds
//! those counts, with the reasoning).
//!
//! Every time is 10:00 China time unless said otherwise; deadlines and
//! follow-ups are the default policy's (village 15, township 30, county 60
//! days; visits 7 and 30 days after a settlement).
//!
//! | group | village | cases | story |
//! | --- | --- | --- | --- |
//! | SA | 双田 | 8 | recorded Sep 2–9, settled at the village 5 days later, visit 1 on time; visit 2 (due Oct 7–14): 4 on time, 2 late, 2 not made |
//! | SB | 后旗 | 4 | recorded Sep 10–13, failed Sep 16–19 |
//! | SC | 清庄 | 4 | recorded Sep 14–17, escalated Sep 17–20, accepted by the township Sep 18–21, settled there Oct 4–7 (20 days), visit 1 on time |
//! | SD | 双田 | 3 | recorded Sep 20–22 by a grid worker, untouched: overdue; supervision orders Oct 8/8/9 due Oct 15/15/16, answered Oct 12, Oct 20, never |
//! | SE | 后旗 | 2 | high risk, recorded Sep 25–26 (escalated by policy), accepted Sep 26–27, open at the township (due Oct 26–27) |
//! | SF | 清庄 | 1 | recorded Sep 28, settled Sep 30, relapsed at a visit Oct 6, settled again Oct 10, visit Oct 16 |
//! | SG | 清庄 | 4 | recorded Sep 3–6, settled 8 days later, visit 1 on time; visit 2 (due Oct 11–14): 2 on time, 1 waived, 1 not made |
//! | OA | 双田 | 10 | recorded Oct 1–10; the first 6 settled 4 days later (visit 1: 3 on time, 1 waived, 2 not made); the last 4 open (overdue), one supervised Oct 28 |
//! | OB | 后旗 | 6 | recorded Oct 2–7, escalated 2 days later; the first 3 accepted and settled at the township 10 days after recording (visit 1: 2 on time, 1 late); the last 3 still waiting (overdue) |
//! | OC | 清庄 | 5 | recorded Oct 10–14, settled 3 days later (visit 1: 3 on time, 2 not made) |
//! | OD | 清庄 | 3 | recorded Oct 15–17, failed Oct 20–22 |
//! | OE | 双田 | 2 | high risk, recorded Oct 20–21 (escalated by policy), waiting |
//! | OF | 后旗 | 3 | recorded Oct 25–27 by a grid worker, untouched |
//! | OG | 清庄 | 2 | recorded Oct 3–4, township Oct 5–6, county Oct 9–10, settled by the county Oct 15–16 (12 days), visit 1 on time |
//! | OH | 后旗 | 4 | recorded Oct 11–14, settled 2 days later (visit 1: 2 on time, 2 late) |

use super::{SampleAction, SampleCase, SampleStep};
use crate::case::{AdminCode, Category, Outcome, Party, Risk, Role};
use crate::clock::Timestamp;

/// 双田村 (宾居镇).
pub const SCENARIO_V1: &str = "532924101201";
/// 后旗村 (宾居镇).
pub const SCENARIO_V2: &str = "532924101202";
/// 清庄村 (州城镇).
pub const SCENARIO_V3: &str = "532924102201";
/// The report scenario's "now": 2026-11-03 09:00 China time, a Tuesday morning.
pub const SCENARIO_NOW: Timestamp = Timestamp(1_793_667_600_000);

// People of the Binchuan roster (fixtures/county-532924.json).
const M1: (&str, Role) = ("普学伟", Role::Mediator); // 双田 532924101201-01
const G1: (&str, Role) = ("杨成顺", Role::GridWorker); // 双田 532924101201-05, grid 1
const M2: (&str, Role) = ("周兵辉", Role::Mediator); // 后旗 532924101202-01
const G2: (&str, Role) = ("字华", Role::GridWorker); // 后旗 532924101202-03, grid 1
const M3: (&str, Role) = ("张贵国", Role::Mediator); // 清庄 532924102201-01
const O1: (&str, Role) = ("自福", Role::TownshipOfficer); // 宾居镇 532924101-01
const O2: (&str, Role) = ("周杰文", Role::TownshipOfficer); // 州城镇 532924102-01
const A: (&str, Role) = ("杨祥", Role::CountyAdmin); // 县 532924-01

/// 2026-`month`-`day` `hour`:00 China time.
fn at(month: u32, day: u32, hour: u32) -> Timestamp {
    let date = chrono::NaiveDate::from_ymd_opt(2026, month, day).and_then(|d| d.and_hms_opt(hour, 0, 0));
    Timestamp(date.map_or(0, |d| d.and_utc().timestamp_millis()) - 8 * 3_600_000)
}

/// September (9) or October (10), day `day`, 10:00.
fn d(month: u32, day: u32) -> Timestamp {
    at(month, day, 10)
}

/// A day `n` days after September 1 (so September 31 is October 1).
fn sep(n: u32) -> Timestamp {
    if n <= 30 { d(9, n) } else { d(10, n - 30) }
}

fn oct(n: u32) -> Timestamp {
    if n <= 31 { d(10, n) } else { d(11, n - 31) }
}

struct Case(SampleCase);

impl Case {
    fn new(
        group: &str,
        i: usize,
        village: &str,
        by: (&str, Role),
        category: Category,
        risk: Risk,
        at: Timestamp,
    ) -> Case {
        let grid = (by.1 == Role::GridWorker).then_some(1);
        Case(SampleCase {
            village: crate::county::known_valid(AdminCode::parse(village)),
            grid,
            recorder: by.0.to_owned(),
            recorder_role: by.1,
            category,
            title: format!("{}{group}-{}", category.zh(), i + 1),
            description: format!("报表场景{group}组第{}件：{}。", i + 1, category.zh()),
            parties: vec![Party { name: format!("当事人{group}{}", i + 1), id_number: None, phone: None }],
            risk,
            recorded_at: at,
            steps: Vec::new(),
        })
    }

    fn step(mut self, at: Timestamp, by: (&str, Role), action: SampleAction) -> Case {
        self.0.steps.push(SampleStep { at, by: by.0.to_owned(), role: by.1, action });
        self
    }

    fn note(self, at: Timestamp, by: (&str, Role)) -> Case {
        self.step(at, by, SampleAction::Note("双方到场，调解员听取诉求并做疏导工作。".into()))
    }

    fn settle(self, at: Timestamp, by: (&str, Role)) -> Case {
        self.step(at, by, SampleAction::Settle("经调解，双方自愿达成协议，当场签字。".into()))
    }

    fn visit(self, at: Timestamp, by: (&str, Role)) -> Case {
        self.step(
            at,
            by,
            SampleAction::FollowUp { outcome: Outcome::Honoured, note: Some("回访：协议已履行。".into()) },
        )
    }
}

/// The 61 cases of the report scenario, in recording order.
pub fn report_scenario() -> Vec<SampleCase> {
    let mut out: Vec<Case> = Vec::new();
    let (v1, v2, v3) = (SCENARIO_V1, SCENARIO_V2, SCENARIO_V3);
    for i in 0..8u32 {
        let c = Case::new("SA", i as usize, v1, M1, Category::Neighbor, Risk::Low, sep(2 + i))
            .note(sep(3 + i), M1)
            .settle(sep(7 + i), M1)
            .visit(sep(13 + i), M1);
        // Visit 2 is due 30 days after the settlement: October 7 + i.
        out.push(match i {
            0..4 => c.visit(oct(6 + i), M1),
            4..6 => c.visit(oct(10 + i), M1),
            _ => c,
        });
    }
    for i in 0..4u32 {
        out.push(
            Case::new("SB", i as usize, v2, M2, Category::Debt, Risk::Low, sep(10 + i)).note(sep(11 + i), M2).step(
                sep(16 + i),
                M2,
                SampleAction::Fail("双方分歧过大，调解终止，引导诉讼。".into()),
            ),
        );
    }
    for i in 0..4u32 {
        out.push(
            Case::new("SC", i as usize, v3, M3, Category::Land, Risk::Medium, sep(14 + i))
                .note(sep(15 + i), M3)
                .step(sep(17 + i), M3, SampleAction::Escalate("涉及两个村民小组，上报乡镇协调。".into()))
                .step(sep(18 + i), O2, SampleAction::AcceptEscalation)
                .note(sep(25 + i), O2)
                .settle(sep(34 + i), O2)
                .visit(sep(39 + i), O2),
        );
    }
    let orders = [
        (d(10, 8), O1, d(10, 15), Some(d(10, 12))),
        (at(10, 8, 11), O1, d(10, 15), Some(d(10, 20))),
        (d(10, 9), A, d(10, 16), None),
    ];
    for (i, (given, by, due, answer)) in orders.into_iter().enumerate() {
        let c = Case::new("SD", i, v1, G1, Category::MarriageFamily, Risk::Low, sep(20 + i as u32)).step(
            given,
            by,
            SampleAction::Supervise { instruction: "请一周内组织双方调解并报告结果。".into(), due },
        );
        out.push(match answer {
            Some(t) => c.step(t, M1, SampleAction::Respond("已组织双方见面调解，正在协商。".into())),
            None => c,
        });
    }
    for i in 0..2u32 {
        out.push(
            Case::new("SE", i as usize, v2, M2, Category::MarriageFamily, Risk::High, sep(25 + i))
                .step(sep(26 + i), O1, SampleAction::AcceptEscalation)
                .note(at(10, 2, 10 + i), O1),
        );
    }
    out.push(
        Case::new("SF", 0, v3, M3, Category::Water, Risk::Low, sep(28))
            .note(sep(29), M3)
            .settle(sep(30), M3)
            .step(
                oct(6),
                M3,
                SampleAction::FollowUp { outcome: Outcome::Relapsed, note: Some("回访发现又起争执。".into()) },
            )
            .note(oct(8), M3)
            .settle(oct(10), M3)
            .visit(oct(16), M3),
    );
    for i in 0..4u32 {
        let c = Case::new("SG", i as usize, v3, M3, Category::Forestry, Risk::Low, sep(3 + i))
            .note(sep(4 + i), M3)
            .settle(sep(11 + i), M3)
            .visit(sep(17 + i), M3);
        // Visit 2 is due October 11 + i.
        out.push(match i {
            0 | 1 => c.visit(oct(10 + i), M3).step(oct(20), M3, SampleAction::Archive),
            2 => c.step(oct(1), M3, SampleAction::WaiveFollowUps("当事人已迁往外省，无法再次回访。".into())).step(
                oct(20),
                M3,
                SampleAction::Archive,
            ),
            _ => c,
        });
    }
    for i in 0..10u32 {
        let category = if i < 5 { Category::Neighbor } else { Category::Debt };
        let c = Case::new("OA", i as usize, v1, M1, category, Risk::Low, oct(1 + i)).note(oct(2 + i), M1);
        out.push(match i {
            // Visit 1 is due 7 days after the settlement: October 12 + i.
            0..3 => c.settle(oct(5 + i), M1).visit(oct(11 + i), M1),
            3 => c.settle(oct(5 + i), M1).step(
                oct(11),
                M1,
                SampleAction::WaiveFollowUps("协议当场履行完毕，经综治中心同意免予回访。".into()),
            ),
            4 | 5 => c.settle(oct(5 + i), M1),
            6 => c.step(
                oct(28),
                O1,
                SampleAction::Supervise { instruction: "请尽快调处，逾期未结。".into(), due: oct(35) },
            ),
            _ => c,
        });
    }
    for i in 0..6u32 {
        let c = Case::new("OB", i as usize, v2, M2, Category::Labor, Risk::Medium, oct(2 + i))
            .note(oct(3 + i), M2)
            .step(oct(4 + i), M2, SampleAction::Escalate("涉及企业欠薪，村级无法调处，上报乡镇。".into()));
        out.push(match i {
            0..3 => {
                let c =
                    c.step(oct(5 + i), O1, SampleAction::AcceptEscalation).note(oct(6 + i), O1).settle(oct(12 + i), O1);
                // Visit 1 is due October 19 + i.
                if i < 2 { c.visit(oct(18 + i), O1) } else { c.visit(oct(25), O1) }
            }
            _ => c,
        });
    }
    for i in 0..5u32 {
        let c = Case::new("OC", i as usize, v3, M3, Category::Property, Risk::Low, oct(10 + i))
            .note(oct(11 + i), M3)
            .settle(oct(13 + i), M3);
        // Visit 1 is due October 20 + i.
        out.push(if i < 3 { c.visit(oct(19 + i), M3) } else { c });
    }
    for i in 0..3u32 {
        out.push(
            Case::new("OD", i as usize, v3, M3, Category::Traffic, Risk::Low, oct(15 + i)).note(oct(16 + i), M3).step(
                oct(20 + i),
                M3,
                SampleAction::Fail("肇事方拒绝赔偿，调解终止。".into()),
            ),
        );
    }
    for i in 0..2u32 {
        out.push(Case::new("OE", i as usize, v1, M1, Category::MarriageFamily, Risk::High, oct(20 + i)));
    }
    for i in 0..3u32 {
        out.push(Case::new("OF", i as usize, v2, G2, Category::Neighbor, Risk::Low, oct(25 + i)));
    }
    for i in 0..2u32 {
        out.push(
            Case::new("OG", i as usize, v3, M3, Category::Petition, Risk::Medium, oct(3 + i))
                .note(at(10, 3 + i, 15), M3)
                .step(oct(4 + i), M3, SampleAction::Escalate("当事人多次信访，上报乡镇。".into()))
                .step(oct(5 + i), O2, SampleAction::AcceptEscalation)
                .note(oct(6 + i), O2)
                .step(oct(8 + i), O2, SampleAction::Escalate("涉及县级部门职责，上报县综治中心。".into()))
                .step(oct(9 + i), A, SampleAction::AcceptEscalation)
                .note(oct(10 + i), A)
                .settle(oct(15 + i), A)
                .visit(oct(21 + i), A),
        );
    }
    for i in 0..4u32 {
        let c = Case::new("OH", i as usize, v2, M2, Category::Consumer, Risk::Low, oct(11 + i))
            .note(oct(12 + i), M2)
            .settle(oct(13 + i), M2);
        // Visit 1 is due October 20 + i.
        out.push(if i < 2 { c.visit(oct(19 + i), M2) } else { c.visit(at(10, 29, 8 + i), M2) });
    }
    let mut cases: Vec<SampleCase> = out.into_iter().map(|c| c.0).collect();
    cases.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.title.cmp(&b.title)));
    cases
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scenario_fixture_matches_generator() {
        let file = include_str!("../../../fixtures/report-scenario.json");
        assert!(
            super::super::to_json(&report_scenario()).unwrap() == file,
            "fixtures/report-scenario.json differs from the generator: run `cargo run -p fq-core --example gen_fixtures`"
        );
    }

    #[test]
    fn scenario_is_61_valid_cases_and_its_now_is_as_documented() {
        let cases = report_scenario();
        assert_eq!(cases.len(), 61);
        for c in &cases {
            c.final_state().unwrap_or_else(|e| panic!("{}: {e}", c.title));
        }
        assert_eq!(at(11, 3, 9), SCENARIO_NOW);
        assert_eq!(sep(31), d(10, 1));
    }
}
