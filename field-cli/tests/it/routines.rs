//! The officers' routines through the `fq` binary: `todo`, the reports in every
//! format, `policy show`, supervision, the import, and a county policy that
//! reaches a device through real `fq-server` processes.
//!
//! The report scenario (`fixtures/report-scenario.json`) is replayed into a
//! ledger file through the core, as the county's replica would hold it; `fq`
//! then reads it with "now" fixed by `FQ_NOW` (2026-11-03 09:00 China time).

use std::path::Path;
use std::sync::Arc;

use fq_core::case::{AdminCode, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::county::County;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::policy::{SignedPolicy, areas_of};
use fq_core::roster::Roster;
use fq_core::sample::{SCENARIO_NOW, load_samples};
use serde_json::Value;

use crate::harness::{Fq, Run, new_device_key, run};
use crate::schema::assert_valid;

/// `FQ_NOW` of these tests: the scenario's Tuesday morning.
const NOW: &str = "2026-11-03T09:00:00+08:00";

/// A ledger file of `tier` over `scope` at `fq`'s data directory, holding the
/// scenario's cases in that scope and the Binchuan roster (policy version 1).
/// A device's is encrypted with the tests' passphrase, as `fq init` makes it; a
/// server's is plain (a server run without `--encrypt`), which `fq` reads as it is.
fn scenario_ledger(fq: &Fq, tier: Tier, role: Role, scope: &str, name: &str) {
    std::fs::create_dir_all(fq.data_dir()).unwrap();
    let key = (tier == Tier::Device).then(|| new_device_key(&fq.ledger_file()));
    let clock = ManualClock::new(SCENARIO_NOW);
    let init = InitOptions { tier, name: name.into(), role, scope: AdminCode::parse(scope).unwrap(), grid: None };
    let mut l = Ledger::init(
        &fq.ledger_file(),
        init,
        Arc::new(clock.clone()),
        LedgerOptions { seed: Some(3), key, ..Default::default() },
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let county = County::binchuan();
    let policy = SignedPolicy::sign(
        &AdminCode::parse("532924").unwrap(),
        1,
        Timestamp(1_790_000_000_000),
        "",
        Roster::from_county(&county).unwrap().staff().to_vec(),
        areas_of(&county),
        &key,
    )
    .unwrap();
    l.install_policy(policy.as_bytes(), &key.verifying_key()).unwrap();
    let cases = load_samples(include_str!("../../../fixtures/report-scenario.json")).unwrap();
    let within = AdminCode::parse(scope).unwrap();
    for c in cases.iter().filter(|c| within.contains(&c.village)) {
        c.replay(&mut l, &clock).unwrap();
    }
}

fn at_now(fq: &Fq, args: &[&str]) -> Run {
    let mut cmd = fq.command(args);
    cmd.env("FQ_NOW", NOW);
    run(cmd)
}

fn json_at_now(fq: &Fq, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    at_now(fq, &all).json()
}

fn titles(todo: &Value, group: &str) -> Vec<String> {
    todo["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["group"] == group)
        .map(|i| i["case"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn todo_on_a_township_replica_gives_the_expected_order() {
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::Township, Role::TownshipOfficer, "532924101", "宾居镇综治中心");
    let todo = json_at_now(&fq, &["todo"]);
    assert_valid("todo.v1.schema.json", &todo);
    assert_eq!((todo["personal"].as_bool(), todo["level"].as_str()), (Some(false), Some("township")));
    assert_eq!(
        titles(&todo, "overdue"),
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
    assert_eq!(titles(&todo, "due-soon"), ["婚姻家庭纠纷OE-1", "婚姻家庭纠纷OE-2"]);
    assert_eq!(
        titles(&todo, "follow-up"),
        ["邻里纠纷SA-7", "邻里纠纷SA-8", "邻里纠纷OA-5", "债务纠纷OA-6", "邻里纠纷OA-1", "邻里纠纷OA-2"]
    );
    // In words, on a server's replica read beside the server (read-only).
    let human = at_now(&fq, &["todo"]);
    assert_eq!(human.code, 0, "{human:?}");
    for words in [
        "今日待办：宾居镇 532924101 全区域",
        "一、已超期（12）",
        "二、3天内到期（2）",
        "三、该回访（6）",
        "应上报乡镇",
        "等待本级接收",
        "第2次回访",
        "共 20 件",
    ] {
        assert!(human.stdout.contains(words), "{words} missing:\n{}", human.stdout);
    }
    let village = json_at_now(&fq, &["todo", "--scope", "532924101202"]);
    assert!(village["items"].as_array().unwrap().iter().all(|i| i["case"]["village"] == "532924101202"));
    let outside = at_now(&fq, &["--json", "todo", "--scope", "532924102"]);
    assert_eq!((outside.code, outside.error_json()["error"]["kind"].as_str()), (2, Some("out-of-scope")));
}

#[test]
fn todo_on_a_device_is_its_users_work() {
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::Device, Role::Mediator, "532924101201", "普学伟");
    let todo = json_at_now(&fq, &["todo"]);
    assert_eq!((todo["personal"].as_bool(), todo["user"].as_str()), (Some(true), Some("普学伟")));
    assert_eq!(todo["items"].as_array().unwrap().len(), 15);
    assert_eq!(titles(&todo, "overdue")[..3], ["婚姻家庭纠纷SD-1", "婚姻家庭纠纷SD-2", "婚姻家庭纠纷SD-3"]);
    let human = at_now(&fq, &["todo"]);
    assert!(human.stdout.contains("今日待办：普学伟（双田村委会 532924101201）"), "{}", human.stdout);
}

#[test]
fn report_monthly_gives_the_same_figures_in_every_format() {
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::County, Role::CountyAdmin, "532924", "宾川县综治中心");
    let m = json_at_now(&fq, &["report", "monthly", "--month", "2026-10"]);
    assert_valid("report-monthly.v1.schema.json", &m);
    let figures =
        |v: &Value| ["new", "settled", "failed", "escalated", "overdue", "high_risk"].map(|k| v[k].as_u64().unwrap());
    assert_eq!(figures(&m), [35, 25, 3, 10, 12, 4]);
    assert!((m["settlement_rate"].as_f64().unwrap() - 25.0 / 28.0).abs() < 1e-9);
    assert_eq!(m["by_category"]["neighbor"]["new"], 8);
    // The default month is the one before "now".
    assert_eq!(json_at_now(&fq, &["report", "monthly"])["month"], "2026-10");
    // CSV (long form), a file with a BOM for Excel.
    let csv_file = fq.path("十月.csv");
    let receipt = json_at_now(
        &fq,
        &["report", "monthly", "--month", "2026-10", "--format", "csv", "--out", csv_file.to_str().unwrap()],
    );
    assert_valid("report-receipt.v1.schema.json", &receipt);
    let csv = std::fs::read_to_string(&csv_file).unwrap();
    assert!(csv.starts_with('\u{feff}'));
    assert!(csv.contains("概要,合计 2026-10,调解成功,25") && csv.contains("地区,宾居镇（532924101）,超期,12"), "{csv}");
    // HTML: one file, charts, Chinese labels, nothing fetched.
    let html_file = fq.path("十月.html");
    let out = at_now(
        &fq,
        &["report", "monthly", "--month", "2026-10", "--format", "html", "--out", html_file.to_str().unwrap()],
    );
    assert!(out.stdout.contains("已生成2026年10月月度统计报表"), "{out:?}");
    let html = std::fs::read_to_string(&html_file).unwrap();
    assert!(html.contains("<svg") && html.contains("宾川县 2026年10月矛盾纠纷统计报告") && html.contains("小事不出村"));
    assert!(!html.contains("src=") && !html.contains("href="));
    // xlsx: a zip holding the workbook.
    let xlsx_file = fq.path("十月.xlsx");
    at_now(&fq, &["report", "monthly", "--month", "2026-10", "--format", "xlsx", "--out", xlsx_file.to_str().unwrap()]);
    let xlsx = std::fs::read(&xlsx_file).unwrap();
    assert!(xlsx.starts_with(b"PK") && xlsx.len() > 4_000);
    // The table on screen.
    let table = at_now(&fq, &["report", "monthly", "--month", "2026-10"]);
    for words in ["宾川县（532924） 2026年10月矛盾纠纷统计", "调解成功率", "89.3%", "小事不出村：64.0%", "超期案件"]
    {
        assert!(table.stdout.contains(words), "{words}:\n{}", table.stdout);
    }
    // A township's part, and a part outside the replica refused.
    assert_eq!(
        figures(&json_at_now(&fq, &["report", "monthly", "--month", "2026-10", "--scope", "532924102"]))[..3],
        [10, 12, 3]
    );
    let bad = at_now(&fq, &["--json", "report", "monthly", "--format", "html"]);
    assert_eq!((bad.code, bad.error_json()["error"]["kind"].as_str()), (2, Some("needs-file")));
    let bad = at_now(&fq, &["--json", "report", "monthly", "--month", "十三月"]);
    assert_eq!((bad.code, bad.error_json()["error"]["kind"].as_str()), (2, Some("unknown-value")));
}

#[test]
fn report_subsidy_counts_people_and_expands_one() {
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::County, Role::CountyAdmin, "532924", "宾川县综治中心");
    let s = json_at_now(&fq, &["report", "subsidy", "--month", "2026-10"]);
    assert_valid("report-subsidy.v1.schema.json", &s);
    let t = &s["totals"];
    assert_eq!(
        [&t["recorded"], &t["mediated"], &t["settled"], &t["followed_up"]].map(|v| v.as_u64().unwrap()),
        [35, 40, 25, 28]
    );
    let one = json_at_now(&fq, &["report", "subsidy", "--month", "2026-10", "--person", "532924101201-01"]);
    assert_valid("report-subsidy.v1.schema.json", &one);
    assert_eq!(one["people"].as_array().unwrap().len(), 1);
    assert_eq!(one["people"][0]["cases"]["settled"].as_array().unwrap().len(), 6);
    let human = at_now(&fq, &["report", "subsidy", "--month", "2026-10", "--person", "普学伟"]);
    assert!(human.stdout.contains("532924101201-01") && human.stdout.contains("调解成功："), "{}", human.stdout);
    let file = fq.path("以案定补.xlsx");
    at_now(&fq, &["report", "subsidy", "--month", "2026-10", "--format", "xlsx", "--out", file.to_str().unwrap()]);
    assert!(std::fs::read(&file).unwrap().starts_with(b"PK"));
}

#[test]
fn policy_show_names_the_version_and_rules_in_force() {
    let fq = Fq::new();
    fq.init_mediator();
    let default = fq.json(&["policy", "show"]);
    assert_valid("policy.v1.schema.json", &default);
    assert_eq!((default["version"].as_u64(), default["default"].as_bool()), (Some(0), Some(true)));
    assert_eq!(default["policy"]["deadlines"]["village"], 15);
    let words = fq.run(&["policy", "show"]);
    assert!(words.stdout.contains("还没有收到县级政策") && words.stdout.contains("村级 15 天"), "{}", words.stdout);
    let county = Fq::new();
    scenario_ledger(&county, Tier::County, Role::CountyAdmin, "532924", "宾川县综治中心");
    let shown = county.json(&["policy", "show"]);
    assert_valid("policy.v1.schema.json", &shown);
    assert_eq!((shown["version"].as_u64(), shown["roster"].as_u64()), (Some(1), Some(1_592)));
    let words = county.run(&["policy", "show"]);
    assert!(words.stdout.contains("县级政策第 1 版（宾川县 532924"), "{}", words.stdout);
}

#[test]
fn supervision_is_ordered_answered_and_refused_from_the_village() {
    let admin = Fq::new();
    admin.json(&["init", "--village", "532924", "--name", "杨祥", "--role", "county-admin"]);
    let number = admin.json(&[
        "case",
        "new",
        "--category",
        "water",
        "--title",
        "灌溉用水纠纷",
        "--village",
        "532924101201",
    ])["case"]["number"]
        .as_str()
        .unwrap()
        .to_owned();
    let given = admin.json(&["case", "supervise", &number, "--instruction", "一周内组织调解", "--due", "2026-12-01"]);
    assert_valid("write-result.v1.schema.json", &given);
    assert_eq!(given["case"]["supervision"]["instruction"], "一周内组织调解");
    let todo = admin.json(&["todo"]);
    assert!(todo["items"].as_array().unwrap().iter().any(|i| i["case"]["number"] == number.as_str()
        && i["tags"].as_array().unwrap().contains(&Value::from("supervised"))));
    let answered = admin.json(&["case", "respond", &number, "--note", "已组织双方调解"]);
    assert!(answered["case"]["supervision"].is_null());
    let again = admin.run(&["--json", "case", "respond", &number, "--note", "再次"]);
    assert_eq!((again.code, again.error_json()["error"]["kind"].as_str()), (2, Some("no-supervision")));
    let bad_date = admin.run(&["--json", "case", "supervise", &number, "--instruction", "x", "--due", "下周"]);
    assert_eq!(bad_date.error_json()["error"]["kind"], "invalid-date");
    let village = Fq::new();
    village.init_mediator();
    let n = village.new_case()["number"].as_str().unwrap().to_owned();
    let refused = village.run(&["--json", "case", "supervise", &n, "--instruction", "x", "--due", "2026-12-01"]);
    assert_eq!((refused.code, refused.error_json()["error"]["kind"].as_str()), (2, Some("role-not-allowed")));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn import_checks_every_row_first_and_names_the_bad_ones() {
    let fq = Fq::new();
    fq.json(&["init", "--village", "532924101", "--name", "自福", "--role", "township-officer"]);
    let good = fq.path("旧台账.csv");
    write(
        &good,
        "\u{feff}编号,村代码,网格,类别代码,类别,标题,状态,级别,风险等级,登记时间,更新时间,办结期限,责任人,当事人,并发冲突\n\
         BJ-001,532924101201,1,neighbor,邻里纠纷,宅基地滴水纠纷,调解成功,村级,低,2026-09-03T10:00:00+08:00,2026-09-10 10:00,,,李四;王五,0\n\
         BJ-002,532924101202,,debt,债务纠纷,借款纠纷,调解中,乡镇级,中,2026-09-05,2026-09-20,,,赵六,0\n",
    );
    let bad = fq.path("有错的台账.csv");
    write(
        &bad,
        "number,village,category,title,status,recorded_at\n\
         A1,532924101201,neighbor,宅基地纠纷,settled,2026-09-03\n\
         A2,532924102201,neighbor,越界纠纷,settled,2026-09-03\n\
         A3,532924101201,ufo,,settled,九月三日\n",
    );
    let refused = fq.run(&["--json", "case", "import", bad.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    let err = refused.error_json();
    assert_eq!(err["error"]["kind"], "invalid-import");
    assert_eq!(fq.case_count(), 0, "nothing imported");
    let words = fq.run(&["case", "import", bad.to_str().unwrap()]);
    for needle in [
        "第 3 行“村代码”",
        "不在本台账的区域",
        "第 4 行“类别代码”",
        "ufo",
        "第 4 行“标题”",
        "第 4 行“登记时间”",
        "什么也没有导入",
    ] {
        assert!(words.stderr.contains(needle), "{needle} missing:\n{}", words.stderr);
    }
    let done = fq.json(&["case", "import", good.to_str().unwrap()]);
    assert_valid("import.v1.schema.json", &done);
    assert_eq!(done["count"], 2);
    let list = fq.json(&["case", "list"]);
    assert_eq!(list["count"], 2);
    let settled = list["cases"].as_array().unwrap().iter().find(|c| c["title"] == "宅基地滴水纠纷").unwrap().clone();
    assert_eq!(
        (settled["status"].as_str(), settled["recorded_at"].as_i64()),
        (Some("settled"), Some(1_788_400_800_000))
    );
    let other = list["cases"].as_array().unwrap().iter().find(|c| c["title"] == "借款纠纷").unwrap().clone();
    assert_eq!((other["status"].as_str(), other["level"].as_str()), (Some("mediating"), Some("township")));
    let twice = fq.run(&["--json", "case", "import", good.to_str().unwrap()]);
    assert_eq!((twice.code, twice.error_json()["error"]["kind"].as_str()), (2, Some("duplicate-case")));
    assert_eq!(fq.case_count(), 2);
}

#[test]
fn search_finds_party_names_and_notes_from_the_command_line() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    fq.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    fq.json(&["case", "note", &number, "双方同意加装接水槽"]);
    let found = |q: &str| fq.json(&["case", "list", "--search", q])["count"].as_u64().unwrap();
    assert_eq!(found("王五"), 1, "a party name");
    assert_eq!(found("接水槽"), 1, "a note");
    assert_eq!(found(crate::harness::ID_OK), 0, "never an ID number");
}

#[test]
fn routines_write_nothing_into_a_server_replica_and_read_it() {
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::Township, Role::TownshipOfficer, "532924101", "宾居镇综治中心");
    let number = json_at_now(&fq, &["case", "list", "--limit", "1"])["cases"][0]["number"].as_str().unwrap().to_owned();
    let sheet = fq.path("旧台账.csv");
    write(&sheet, "编号,村代码,类别代码,标题,登记时间\nBJ-9,532924101201,neighbor,宅基地纠纷,2026-09-03\n");
    let before = std::fs::read(fq.ledger_file()).unwrap();
    for args in [
        &["case", "supervise", &number, "--instruction", "一周内调处", "--due", "2026-12-01"][..],
        &["case", "respond", &number, "--note", "已调处"],
        &["case", "waive", &number, "--reason", "当事人外出"],
        &["case", "import", sheet.to_str().unwrap()],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let refused = at_now(&fq, &all);
        assert_eq!(
            (refused.code, refused.error_json()["error"]["kind"].as_str()),
            (2, Some("server-replica")),
            "{args:?}"
        );
        let words = at_now(&fq, args);
        assert!(words.stderr.contains("服务器") && words.stderr.contains("什么也没有写入"), "{args:?}: {words:?}");
    }
    assert_eq!(std::fs::read(fq.ledger_file()).unwrap(), before, "the server's file was written");
    // The read commands work on it (read-only, beside a running server).
    for args in
        [&["todo"][..], &["policy", "show"], &["report", "monthly", "--month", "2026-10"], &["report", "subsidy"]]
    {
        let read = at_now(&fq, args);
        assert_eq!(read.code, 0, "{args:?}: {read:?}");
    }
}

/// Headless Chromium, if this machine has it (`.ci/run` installs Debian's
/// `chromium` and `fonts-noto-cjk`, and sets `FQ_REQUIRE_CHROMIUM=1` so that
/// a missing browser fails there instead of skipping).
fn chromium() -> Option<std::path::PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("FQ_REQUIRE_CHROMIUM").is_none(),
            "FQ_REQUIRE_CHROMIUM is set but no chromium is on PATH"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium fonts-noto-cjk)");
    }
    found
}

/// Renders `page` with headless Chromium into a PNG of `width`×`height`; returns its bytes.
fn screenshot(chromium: &Path, page: &Path, png: &Path, width: u32, height: u32) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("--window-size={width},{height}"))
    .arg(format!("file://{}", page.display()));
    let out = run(cmd);
    assert_eq!(out.code, 0, "chromium failed: {out:?}");
    std::fs::read(png).unwrap()
}

/// The HTML report as a person sees it: Chromium renders it, and its Chinese
/// labels are drawn with a CJK font. A label in the report's font stack must
/// render differently from characters no font has (which every browser draws
/// as the same empty box): if the Chinese were boxes, the two would match.
#[test]
fn report_html_renders_in_headless_chromium_with_chinese_glyphs() {
    let Some(chromium) = chromium() else { return };
    let fq = Fq::new();
    scenario_ledger(&fq, Tier::County, Role::CountyAdmin, "532924", "宾川县综治中心");
    let html_file = fq.path("report.html");
    let out = at_now(
        &fq,
        &["report", "monthly", "--month", "2026-10", "--format", "html", "--out", html_file.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let png = screenshot(&chromium, &html_file, &fq.path("report.png"), 1280, 2000);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank page compresses to a few KB; the report's charts and tables do not.
    assert!(png.len() > 50_000, "the rendered report is nearly empty: {} bytes", png.len());
    let label = |text: &str, name: &str| {
        let page = fq.path(&format!("{name}.html"));
        std::fs::write(
            &page,
            format!(
                "<!doctype html><meta charset=utf-8><body style=\"margin:0;background:#fff\">\
                 <svg width=300 height=60><text x=4 y=40 font-size=32 \
                 style='font-family:{}'>{text}</text></svg>",
                fq_core::report::html::CJK_FONTS.replace('"', "&quot;")
            ),
        )
        .unwrap();
        screenshot(&chromium, &page, &fq.path(&format!("{name}.png")), 320, 80)
    };
    let chinese = label("调解成功率", "chinese");
    let boxes = label("\u{e000}\u{e001}\u{e002}\u{e003}\u{e004}", "boxes");
    assert_ne!(chinese, boxes, "Chinese labels render as boxes: install a CJK font (fonts-noto-cjk)");
}
