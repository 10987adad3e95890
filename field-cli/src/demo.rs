//! `fq demo`: a guided story on real ledgers in a temporary directory.
//!
//! It builds a village from the county fixture, gives two people of that
//! village a device each, and walks them through a dispute with no signal:
//! both record and work the case offline, both change the same field, and
//! when the devices meet their changes merge. The concurrent edit is shown
//! with both values and their authors, then resolved, and the two replicas
//! are shown to hold the same case.
//!
//! Everything goes through the real `fq-core` ledger on real SQLite files;
//! the devices exchange changes with `changes_since` / `apply_changes`, the
//! same functions sync uses.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fq_core::case::{AdminCode, Category, Outcome, Party, Risk, Role};
use fq_core::clock::{Clock, ManualClock, SystemClock, Timestamp};
use fq_core::county::County;
use fq_core::doc::{CaseState, FieldEdit};
use fq_core::ledger::{IncomingChange, InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::sample::binchuan_samples;
use fq_core::store::ListFilter;
use serde_json::json;

use crate::lang::Lang;

/// The village the story happens in (宾居镇双田村委会 in the fixture).
const VILLAGE: &str = "532924101201";
/// One minute, in milliseconds.
const MINUTE_MS: i64 = 60_000;

/// Prints one line of the narrative in the user's language (nothing in JSON mode).
struct Narrator {
    lang: Lang,
    json: bool,
}

impl Narrator {
    fn say(&self, zh: &str, en: &str) {
        if !self.json {
            println!("{}", if self.lang == Lang::Zh { zh } else { en });
        }
    }

    fn step(&self, n: u32, zh: &str, en: &str) {
        if !self.json {
            println!();
        }
        self.say(&format!("【第{n}步】{zh}"), &format!("[Step {n}] {en}"));
    }
}

/// Runs the demo.
pub(crate) fn run(lang: Lang, json: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("fq-demo-").tempdir().context("cannot create a temporary directory")?;
    let n = Narrator { lang, json };
    let summary = story(dir.path(), &n)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

fn story(dir: &Path, n: &Narrator) -> Result<serde_json::Value> {
    let county = County::binchuan();
    let code = AdminCode::parse(VILLAGE)?;
    let village = county.village(&code).context("the demo village is missing from the county fixture")?;
    let township = county.township(&code.township().context("village code has a township")?).context("township")?;
    let grid_worker = village.people.iter().find(|p| p.role == Role::GridWorker).context("no grid worker")?;
    let mediator = village.people.iter().find(|p| p.role == Role::Mediator).context("no mediator")?;

    n.say(
        &format!(
            "枫桥式案件台账演示：{}{}{}。全县 {} 个乡镇、{} 个村（社区）、{} 名网格员和调解员（虚构）。",
            county.name,
            township.name,
            village.name,
            county.townships.len(),
            county.villages().count(),
            county.people_count()
        ),
        &format!(
            "fq demo: {} / {} / {}. The county has {} townships, {} villages and {} grid workers and mediators (fictional).",
            county.name,
            township.name,
            village.name,
            county.townships.len(),
            county.villages().count(),
            county.people_count()
        ),
    );
    n.say(&format!("数据目录：{}", dir.display()), &format!("Data directory: {}", dir.display()));

    // Both devices share one story clock that starts now and moves forward.
    let clock = ManualClock::new(SystemClock.now());
    let c: Arc<ManualClock> = Arc::new(clock.clone());
    let device = |name: &str, role: Role, grid: Option<u32>, sub: &str| -> Result<Ledger> {
        let opts = InitOptions { tier: Tier::Device, name: name.into(), role, scope: code.clone(), grid };
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)?;
        Ok(Ledger::init(&path.join("ledger.db"), opts, c.clone(), LedgerOptions::default())?)
    };
    let mut a = device(&grid_worker.name, Role::GridWorker, grid_worker.grid, "device-a")?;
    let mut b = device(&mediator.name, Role::Mediator, None, "device-b")?;

    n.step(
        1,
        &format!(
            "两台设备：网格员{}（第{}网格）的手机 A，调解员{}的手机 B。",
            grid_worker.name,
            grid_worker.grid.unwrap_or(1),
            mediator.name
        ),
        &format!(
            "Two devices: phone A of grid worker {} (grid {}), phone B of mediator {}.",
            grid_worker.name,
            grid_worker.grid.unwrap_or(1),
            mediator.name
        ),
    );

    // The mediator's phone already holds the village's earlier cases.
    let history: Vec<_> = binchuan_samples().into_iter().filter(|s| s.village == code).collect();
    let now = clock.now();
    for s in &history {
        s.replay(&mut b, &clock)?;
    }
    clock.set(now);
    b.set_operator(&mediator.name, Role::Mediator)?;
    n.say(
        &format!("手机 B 上已有本村历史案件 {} 件（来自样例数据，按原时间逐步重放）。", history.len()),
        &format!(
            "Phone B already holds the village's {} earlier cases (sample data, replayed step by step).",
            history.len()
        ),
    );

    n.step(
        2,
        "没有信号。网格员在走访中发现一起宅基地滴水纠纷，在手机 A 上登记。",
        "No signal. On the weekly walk the grid worker finds a dispute over eaves dripping and records it on phone A.",
    );
    let case = a.create_case(NewCase {
        category: Category::Neighbor,
        title: "宅基地滴水纠纷".into(),
        description: "东户新建房屋屋檐伸出，雨水滴入西户院内，双方多次争吵。".into(),
        parties: vec![Party::parse("李四,532924198001011230,17000001234")?, Party::parse("王五,17000005678")?],
        risk: Risk::Low,
        village: None,
        grid: None,
    })?;
    print_case_line(n, &case);

    n.step(
        3,
        "两台手机在村委会相遇，通过本地交换合并变更。",
        "The two phones meet at the village office and merge their changes.",
    );
    let (sent_ab, sent_ba) = (exchange(&mut a, &mut b)?, exchange(&mut b, &mut a)?);
    n.say(
        &format!("A→B 合并 {sent_ab} 条变更，B→A 合并 {sent_ba} 条变更。"),
        &format!("A→B merged {sent_ab} changes, B→A merged {sent_ba} changes."),
    );

    n.step(
        4,
        "两人各自离线工作：都觉得标题不准确，同时改了标题；网格员把风险调为“中”，调解员记录了第一次调解。",
        "Both work offline: each thinks the title is wrong and changes it; the grid worker raises the risk to medium, the mediator logs the first session.",
    );
    clock.advance_ms(2 * 60 * MINUTE_MS);
    a.edit(
        case.id,
        FieldEdit {
            title: Some("宅基地滴水及排水沟纠纷".into()), risk: Some(Risk::Medium), ..Default::default()
        },
    )?;
    clock.advance_ms(25 * MINUTE_MS);
    b.edit(case.id, FieldEdit { title: Some("相邻房屋屋檐滴水纠纷".into()), ..Default::default() })?;
    clock.advance_ms(30 * MINUTE_MS);
    b.add_note(case.id, "双方到村委会，李四同意加装接水槽，王五要求赔偿院墙修补费用。")?;
    b.assign(case.id, &mediator.name)?;

    n.step(5, "再次相遇并合并。", "They meet again and merge.");
    let (sent_ab, sent_ba) = (exchange(&mut a, &mut b)?, exchange(&mut b, &mut a)?);
    n.say(
        &format!("A→B 合并 {sent_ab} 条变更，B→A 合并 {sent_ba} 条变更。"),
        &format!("A→B merged {sent_ab} changes, B→A merged {sent_ba} changes."),
    );
    let view = a.show(case.id, false)?;
    if view.conflicts.is_empty() {
        bail!("the concurrent title edit did not show as a conflict");
    }
    n.say(
        "⚠ 发现并发修改：同一字段有两个值，两个值都保留，谁改的、何时改的都记录在案：",
        "⚠ Concurrent edit found: one field holds two values; both are kept, with who wrote each and when:",
    );
    for conflict in &view.conflicts {
        for (i, v) in conflict.values.iter().enumerate() {
            let who = v.author.as_ref().map(|a| author_label(n.lang, a)).unwrap_or_default();
            let at = v.at.map(local_time).unwrap_or_default();
            let device = v.device.as_deref().map(|d| &d[..4]).unwrap_or("?");
            let shown = if i == 0 { if n.lang == Lang::Zh { "（当前显示）" } else { " (shown)" } } else { "" };
            n.say(
                &format!(
                    "  {}: “{}”{} — {} 设备 {} 于 {}",
                    field_label(&conflict.field),
                    v.value,
                    shown,
                    who,
                    device,
                    at
                ),
                &format!("  {}: \"{}\"{} — {} on device {} at {}", conflict.field, v.value, shown, who, device, at),
            );
        }
    }

    n.step(
        6,
        "调解员看到冲突，决定采用一个标题；调解成功，签订协议；一周后回访。",
        "The mediator sees the conflict and settles on one title; the mediation succeeds; a follow-up visit a week later.",
    );
    clock.advance_ms(60 * MINUTE_MS);
    b.edit(case.id, FieldEdit { title: Some("相邻房屋屋檐滴水纠纷".into()), ..Default::default() })?;
    clock.advance_ms(24 * 60 * MINUTE_MS);
    b.settle(case.id, "李四于十日内加装接水槽并修补院墙，王五不再追究。双方签字。")?;
    exchange(&mut b, &mut a)?;
    clock.advance_ms(7 * 24 * 60 * MINUTE_MS);
    a.follow_up(case.id, Outcome::Honoured, Some("接水槽已安装，双方关系缓和。"))?;
    exchange(&mut a, &mut b)?;
    exchange(&mut b, &mut a)?;

    n.step(7, "合并后的结果（两台手机一致）：", "The merged result (identical on both phones):");
    let va = a.show(case.id, true)?;
    let vb = b.show(case.id, true)?;
    let (ha, hb) = (a.heads(case.id)?, b.heads(case.id)?);
    if ha != hb || va.state != vb.state {
        bail!("the two devices disagree after merging");
    }
    print_case_line(n, &va.state);
    for e in &va.state.events {
        let who = e.author.as_ref().map(|a| a.name.as_str()).unwrap_or("?");
        let to = match e.kind {
            fq_core::case::EventKind::Recorded => None,
            _ => e.to.as_deref(),
        };
        let text = e.text.as_deref().or(to).unwrap_or("");
        n.say(
            &format!("  {} {} {} {}", local_time(e.at), e.kind.zh(), who, text),
            &format!("  {} {} {} {}", local_time(e.at), e.kind.en(), who, text),
        );
    }
    let rows_a = a.list(&ListFilter::default())?;
    let rows_b = b.list(&ListFilter::default())?;
    let case_count = |rows: &[fq_core::store::CaseRow]| rows.iter().filter(|r| r.id == case.id).count();
    n.say(
        &format!(
            "手机 A 有 {} 件、手机 B 有 {} 件案件（含本村历史案件）；本案在两台手机上的文档版本（heads）完全相同，冲突已解决：{}。",
            rows_a.len(),
            rows_b.len(),
            if va.conflicts.is_empty() { "是" } else { "否" }
        ),
        &format!(
            "Phone A holds {} cases, phone B {} (with the village's history); this case has identical document heads on both, conflict resolved: {}.",
            rows_a.len(),
            rows_b.len(),
            va.conflicts.is_empty()
        ),
    );
    if case_count(&rows_a) != 1 || case_count(&rows_b) != 1 {
        bail!("the case is missing from a device");
    }
    n.say(
        "\n下一步：与乡镇、县级服务器的同步（fq sync）完成后将加入本演示。",
        "\nNext: sync with the township and county servers (fq sync) joins this demo when sync lands.",
    );

    Ok(json!({
        "village": VILLAGE,
        "devices": [a.identity(), b.identity()],
        "history_cases": history.len(),
        "case": va.state,
        "conflict_seen": view.conflicts,
        "conflicts_after": va.conflicts,
        "identical": true,
        "cases_on_a": rows_a.len(),
        "cases_on_b": rows_b.len(),
    }))
}

/// Sends everything `from` holds to `to`; returns how many changes were new to `to`.
fn exchange(from: &mut Ledger, to: &mut Ledger) -> Result<usize> {
    let changes: Vec<IncomingChange> = from.changes_since(0, u32::MAX)?.into_iter().map(IncomingChange::from).collect();
    let report = to.apply_changes(Some(from.identity().replica), changes)?;
    if !report.refused.is_empty() {
        bail!("{} changes were refused", report.refused.len());
    }
    Ok(report.applied)
}

fn print_case_line(n: &Narrator, s: &CaseState) {
    n.say(
        &format!(
            "  {}「{}」{} · {} · 风险{} · {}",
            s.number,
            s.title,
            s.category.zh(),
            s.status.zh(),
            s.risk.zh(),
            s.level.zh()
        ),
        &format!(
            "  {} \"{}\" {} · {} · risk {} · {}",
            s.number,
            s.title,
            s.category.en(),
            s.status.en(),
            s.risk.en(),
            s.level.en()
        ),
    );
}

fn field_label(field: &str) -> &str {
    match field {
        "title" => "标题",
        "risk" => "风险",
        "category" => "类别",
        "responsible" => "责任人",
        "grid" => "网格",
        other => other,
    }
}

fn author_label(lang: Lang, a: &fq_core::doc::Author) -> String {
    match lang {
        Lang::Zh => format!("{}（{}）", a.name, a.role.zh()),
        Lang::En => format!("{} ({})", a.name, a.role.en()),
    }
}

/// China Standard Time, to the minute.
fn local_time(t: Timestamp) -> String {
    Timestamp(t.0 + 8 * 3_600_000)
        .to_utc()
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| t.to_string())
}
