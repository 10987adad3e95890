//! Concurrent edits made on two devices are shown with every value and author.

use std::sync::Arc;

use fq_core::case::{AdminCode, Risk, Role};
use fq_core::clock::SystemClock;
use fq_core::doc::FieldEdit;
use fq_core::ledger::{IncomingChange, InitOptions, Ledger, LedgerOptions, Tier};

use crate::harness::{Fq, VILLAGE};
use crate::schema::assert_valid;

fn person(name: &str) -> InitOptions {
    InitOptions {
        tier: Tier::Device,
        name: name.into(),
        role: Role::Mediator,
        scope: AdminCode::parse(VILLAGE).unwrap(),
        grid: None,
    }
}

fn changes(from: &mut Ledger) -> Vec<IncomingChange> {
    from.changes_since(0, 1_000).unwrap().into_iter().map(IncomingChange::from).collect()
}

/// Two devices edit the title of the CLI's case while apart, then the
/// other device's changes reach the CLI's ledger file.
fn conflicting_titles(fq: &Fq) -> String {
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let clock = Arc::new(SystemClock);
    let mut here = crate::harness::open_ledger(&fq.ledger_file());
    let mut there = Ledger::init_in_memory(person("李娜"), clock, LedgerOptions::default()).unwrap();
    there.apply_changes(Some(here.identity().replica), changes(&mut here)).unwrap();
    let id = here.resolve(&number).unwrap();
    let title = |t: &str, risk| FieldEdit { title: Some(t.into()), risk: Some(risk), ..FieldEdit::default() };
    here.edit(id, title("甲方案", Risk::High)).unwrap();
    there.edit(id, title("乙方案", Risk::Medium)).unwrap();
    let report = here.apply_changes(Some(there.identity().replica), changes(&mut there)).unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    number
}

#[test]
fn case_show_lists_concurrent_edits_with_every_author() {
    let fq = Fq::new();
    let number = conflicting_titles(&fq);
    let view = fq.json(&["case", "show", &number]);
    assert_valid("case.v1.schema.json", &view);
    let conflicts = view["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{view:#}");
    assert_eq!(conflicts[0]["field"], "title");
    let mut authors: Vec<&str> =
        conflicts[0]["values"].as_array().unwrap().iter().map(|v| v["author"]["name"].as_str().unwrap()).collect();
    authors.sort_unstable();
    assert_eq!(authors, ["张三", "李娜"]);

    let card = fq.run(&["case", "show", &number]).stdout;
    let warning = card.find("⚠ 并发修改").unwrap_or_else(|| panic!("no conflict warning:\n{card}"));
    // Prominent: before the case's ordinary fields.
    assert!(warning < card.find("状态：").unwrap(), "{card}");
    for words in
        ["甲方案", "乙方案", "张三（调解员）", "李娜（调解员）", "  标题\n", "  风险等级\n", "「高」", "「中」"]
    {
        assert!(card.contains(words), "{words} missing:\n{card}");
    }
    let english = crate::language::english_words(&card, &[]);
    assert!(english.is_empty(), "English in the Chinese card: {english:?}\n{card}");
    let en = fq.run(&["--lang", "en", "case", "show", &number]).stdout;
    assert!(en.contains("⚠ Concurrent edits"), "{en}");

    let list = fq.json(&["case", "list"]);
    assert_eq!(list["cases"][0]["conflicts"], 2);
    let exported = fq.json(&["export", "--format", "json"]);
    assert_eq!(exported["cases"][0]["conflicts"], 2);
}

#[test]
fn audit_shows_conflict_records() {
    let fq = Fq::new();
    let number = conflicting_titles(&fq);
    let audit = fq.json(&["audit"]);
    assert_valid("audit.v1.schema.json", &audit);
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["kind"] == "conflict" && e["detail"].as_str().unwrap().contains(&number)),
        "{audit:#}"
    );
    let table = fq.run(&["audit"]).stdout;
    assert!(table.contains("并发修改"), "{table}");
}
