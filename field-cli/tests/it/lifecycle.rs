//! The issue's sequence and the lifecycle of a case, through `--json`.

use std::sync::Arc;

use fq_core::case::{AdminCode, Category, Risk, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use serde_json::Value;

use crate::harness::{Fq, ID_OK, VILLAGE};

fn kinds(case: &Value) -> Vec<String> {
    case["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn issue_sequence_records_and_lists_case() {
    let fq = Fq::new();
    let init = fq.init_mediator();
    assert_eq!(init["identity"]["name"], "张三");
    assert_eq!(init["identity"]["tier"], "device");
    assert_eq!(init["identity"]["scope"], VILLAGE);
    let case = fq.new_case();
    let number = case["number"].as_str().unwrap();
    assert!(number.starts_with(&format!("{VILLAGE}-")), "{number}");
    assert_eq!(case["parties"][0]["id_number"], ID_OK);
    assert_eq!(case["parties"][1]["name"], "王五");
    let list = fq.json(&["case", "list"]);
    assert_eq!(list["count"], 1);
    assert_eq!(list["cases"][0]["number"], number);
    assert_eq!(list["cases"][0]["status"], "recorded");
    let human = fq.run(&["case", "list"]);
    assert_eq!(human.code, 0);
    assert!(human.stdout.contains(number) && human.stdout.contains("邻里纠纷"), "{}", human.stdout);
    let created = fq.run(&["case", "new", "--category", "neighbor", "--title", "宅基地滴水纠纷"]);
    assert!(created.stdout.starts_with("已记录案件 ") && created.stdout.contains("「宅基地滴水纠纷」"), "{created:?}");
}

#[test]
fn case_lifecycle_by_number_and_uuid_prefix_survives_reopening() {
    let fq = Fq::new();
    fq.init_mediator();
    let case = fq.new_case();
    let number = case["number"].as_str().unwrap().to_owned();
    let id = case["id"].as_str().unwrap().to_owned();
    let by_number = &number[..number.len() - 2];
    let by_uuid = &id[..8];

    let noted = fq.json(&["case", "note", by_number, "双方到场，初步沟通"])["case"].clone();
    assert_eq!(noted["status"], "mediating");
    let settled = fq.json(&["case", "settle", by_number, "--agreement", "王五加装接水槽"])["case"].clone();
    assert_eq!(settled["status"], "settled");
    let followed =
        fq.json(&["case", "followup", by_uuid, "--outcome", "honoured", "--note", "履行良好"])["case"].clone();
    assert_eq!((followed["status"].as_str(), followed["follow_ups"].as_u64()), (Some("settled"), Some(1)));

    // Every command above reopened the ledger; read it back both ways.
    let a = fq.json(&["case", "show", by_number, "--history"]);
    let b = fq.json(&["case", "show", by_uuid, "--history"]);
    assert_eq!(a, b);
    assert_eq!(a["id"], id.as_str());
    assert_eq!(kinds(&a), ["recorded", "note", "settled", "follow-up"]);
    assert_eq!(a["events"][1]["text"], "双方到场，初步沟通");
    assert_eq!(a["events"][2]["text"], "王五加装接水槽");
    for e in a["events"].as_array().unwrap() {
        assert_eq!((e["author"]["name"].as_str(), e["author"]["role"].as_str()), (Some("张三"), Some("mediator")));
    }
    let history = a["history"].as_array().unwrap();
    let ops: Vec<&str> = history.iter().map(|h| h["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "note", "settled", "follow-up"]);
    assert!(history.iter().all(|h| h["author"]["name"] == "张三" && h["device"].is_string()));

    let card = fq.run(&["case", "show", by_number, "--history"]);
    for words in ["调解成功", "调解记录：双方到场，初步沟通", "回访次数：1", "张三（调解员）", "修改记录"]
    {
        assert!(card.stdout.contains(words), "{words} missing from:\n{}", card.stdout);
    }
    // The policy's second visit is due: archiving waits for it, or a waiver with a reason.
    let early = fq.run(&["--json", "case", "archive", by_number]);
    assert_eq!((early.code, early.error_json()["error"]["kind"].as_str()), (2, Some("follow-ups-pending")));
    let waived = fq.run(&["case", "waive", by_number, "--reason", "当事人已外出务工"]);
    assert!(waived.stdout.contains("免予回访"), "{waived:?}");
    let archived = fq.run(&["case", "archive", by_number]);
    assert!(archived.stdout.contains("已归档"), "{archived:?}");
    // A second case goes up; the village can neither accept nor settle it.
    let other = fq.new_case()["number"].as_str().unwrap().to_owned();
    let escalated = fq.json(&["case", "escalate", &other, "--reason", "村里调不动"])["case"].clone();
    assert_eq!(
        (escalated["status"].as_str(), escalated["escalated_to"].as_str()),
        (Some("escalated"), Some("township"))
    );
    let refused = fq.run(&["--json", "case", "accept", &other]);
    assert_eq!(refused.code, 2);
    assert_eq!(refused.error_json()["error"]["kind"], "role-not-allowed");
    let refused = fq.run(&["--json", "case", "settle", &other, "--agreement", "和解"]);
    assert_eq!((refused.code, refused.error_json()["error"]["kind"].as_str()), (2, Some("below-level")));
}

#[test]
fn case_show_masks_id_numbers_unless_unmasked() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let masked = fq.run(&["case", "show", &number]);
    assert!(masked.stdout.contains("5329**********1230") && !masked.stdout.contains(ID_OK), "{}", masked.stdout);
    let full = fq.run(&["case", "show", &number, "--unmasked"]);
    assert!(full.stdout.contains(ID_OK), "{}", full.stdout);
    assert_eq!(fq.json(&["case", "show", &number])["parties"][0]["id_number"], ID_OK);
}

#[test]
fn case_transition_refused_names_current_status() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let zh = fq.run(&["case", "archive", &number]);
    assert_eq!(zh.code, 2);
    assert!(zh.stderr.contains("已受理") && zh.stderr.contains(&number), "{}", zh.stderr);
    let en = fq.run(&["--lang", "en", "case", "followup", &number, "--outcome", "relapsed"]);
    assert_eq!(en.code, 2);
    assert!(en.stderr.contains("it is Recorded"), "{}", en.stderr);
    assert_eq!(fq.json(&["case", "show", &number])["events"].as_array().unwrap().len(), 1);
}

#[test]
fn case_reference_ambiguous_prefix_lists_candidates() {
    let fq = Fq::new();
    fq.init_mediator();
    let a = fq.new_case()["number"].as_str().unwrap().to_owned();
    let b = fq.new_case()["number"].as_str().unwrap().to_owned();
    let run = fq.run(&["--json", "case", "note", VILLAGE, "x"]);
    assert_eq!(run.code, 2);
    let err = run.error_json();
    assert_eq!(err["error"]["kind"], "ambiguous-case");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains(&a) && message.contains(&b), "{message}");
}

#[test]
fn case_edit_changes_fields_and_refuses_empty_edit() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let edited = fq.json(&[
        "case",
        "edit",
        &number,
        "--title",
        "滴水纠纷",
        "--risk",
        "高",
        "--category",
        "住房建设",
        "--add-party",
        "赵六,13900000000",
    ])["case"]
        .clone();
    assert_eq!((edited["title"].as_str(), edited["risk"].as_str()), (Some("滴水纠纷"), Some("high")));
    assert_eq!(edited["category"], "housing");
    assert_eq!(edited["parties"].as_array().unwrap().len(), 3);
    // Found high risk at the village: the county policy sends it to the township at once.
    assert_eq!((edited["status"].as_str(), edited["escalated_to"].as_str()), (Some("escalated"), Some("township")));
    let empty = fq.run(&["--json", "case", "edit", &number]);
    assert_eq!(empty.code, 2);
    assert_eq!(empty.error_json()["error"]["kind"], "invalid-text");
    let history = fq.json(&["case", "show", &number, "--history"])["history"].clone();
    let ops: Vec<&str> = history.as_array().unwrap().iter().map(|h| h["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "edit:title,category,risk,parties", "escalated"]);
}

#[test]
fn case_list_filters_by_risk_status_village_search() {
    let fq = Fq::new();
    fq.init_mediator();
    fq.new_case();
    fq.json(&["case", "new", "--category", "debt", "--title", "借款三万", "--risk", "high"]);
    let count = |args: &[&str]| {
        let mut all = vec!["case", "list"];
        all.extend_from_slice(args);
        fq.json(&all)["count"].as_u64().unwrap()
    };
    assert_eq!(count(&[]), 2);
    assert_eq!(count(&["--risk", "high"]), 1);
    assert_eq!(count(&["--category", "债务"]), 1);
    // The high-risk case went to the township at once (county policy).
    assert_eq!(count(&["--status", "recorded"]), 1);
    assert_eq!(count(&["--status", "escalated"]), 1);
    assert_eq!(count(&["--status", "settled"]), 0);
    assert_eq!(count(&["--village", "532924101"]), 2);
    assert_eq!(count(&["--village", "532924102"]), 0);
    assert_eq!(count(&["--search", "借款"]), 1);
    assert_eq!(count(&["--limit", "1"]), 1);
    assert_eq!(count(&["--overdue"]), 0);
    // High risk first.
    assert_eq!(fq.json(&["case", "list"])["cases"][0]["risk"], "high");
}

#[test]
fn case_list_overdue_marks_cases_past_deadline() {
    let fq = Fq::new();
    std::fs::create_dir_all(fq.data_dir()).unwrap();
    // Written by the core with a clock in 2020, so the 15-day village deadline has long passed.
    let clock = Arc::new(ManualClock::new(Timestamp(1_577_836_800_000)));
    let init = InitOptions {
        tier: Tier::Device,
        name: "张三".into(),
        role: Role::Mediator,
        scope: AdminCode::parse(VILLAGE).unwrap(),
        grid: None,
    };
    let mut ledger = Ledger::init(&fq.ledger_file(), init, clock, LedgerOptions::default()).unwrap();
    let old = NewCase {
        category: Category::Water,
        title: "灌溉用水纠纷".into(),
        description: String::new(),
        parties: Vec::new(),
        risk: Risk::Medium,
        flags: Vec::new(),
        village: None,
        grid: None,
    };
    ledger.create_case(old).unwrap();
    drop(ledger);
    fq.new_case();
    let overdue = fq.json(&["case", "list", "--overdue"]);
    assert_eq!(overdue["count"], 1);
    assert_eq!(overdue["cases"][0]["title"], "灌溉用水纠纷");
    let table = fq.run(&["case", "list"]);
    assert!(table.stdout.contains("2020-01-16 已超期"), "{}", table.stdout);
    assert!(table.stdout.contains("其中已超期 1 件"), "{}", table.stdout);
}
