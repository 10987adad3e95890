//! Every `--json` output validates against its schema in `schemas/`.

use std::fs;

use serde_json::{Value, json};

use crate::harness::{Fq, ID_OK, VILLAGE};

const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");

/// A validator for `schemas/{name}`, with every other schema registered under
/// its `$id` so cross-file `$ref`s resolve offline.
pub fn validator(name: &str) -> jsonschema::Validator {
    let mut options = jsonschema::options();
    let mut root = None;
    for entry in fs::read_dir(SCHEMA_DIR).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let schema: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let id = schema["$id"].as_str().unwrap_or_else(|| panic!("{} has no $id", path.display())).to_owned();
        if path.file_name().is_some_and(|f| f == name) {
            root = Some(schema.clone());
        }
        options = options.with_resource(id, jsonschema::Resource::from_contents(schema).unwrap());
    }
    let root = root.unwrap_or_else(|| panic!("no schema {name}"));
    options.build(&root).unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"))
}

/// Fails the test with every validation error if `value` does not fit.
pub fn assert_valid(name: &str, value: &Value) {
    let v = validator(name);
    let errors: Vec<String> = v.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "{name} rejects output:\n{}\n{value:#}", errors.join("\n"));
}

#[test]
fn schemas_validate_every_json_output() {
    let fq = Fq::new();
    assert_valid("error.v1.schema.json", &fq.run(&["--json", "case", "list"]).error_json());
    assert_valid("init.v1.schema.json", &fq.init_mediator());
    let party = format!("李四,{ID_OK},13800000000");
    let created =
        fq.json(&["case", "new", "--category", "邻里", "--title", "宅基地滴水纠纷", "--party", &party, "--grid", "3"]);
    assert_valid("write-result.v1.schema.json", &created);
    fq.json(&["case", "new", "--category", "debt", "--title", "借款", "--risk", "high", "--description", "三万元"]);
    let number = created["case"]["number"].as_str().unwrap();
    assert_valid("write-result.v1.schema.json", &fq.json(&["case", "note", number, "双方到场"]));
    assert_valid("write-result.v1.schema.json", &fq.json(&["case", "assign", number, "--to", "赵六"]));
    assert_valid("write-result.v1.schema.json", &fq.json(&["case", "settle", number, "--agreement", "加装接水槽"]));
    assert_valid(
        "write-result.v1.schema.json",
        &fq.json(&["case", "confirm", number, "--court", "宾川县人民法院", "--ref", "(2026)云2924民特1号"]),
    );
    assert_valid("case-list.v1.schema.json", &fq.json(&["case", "list"]));
    assert_valid("case-list.v1.schema.json", &fq.json(&["case", "list", "--status", "archived"]));
    let shown = fq.json(&["case", "show", number]);
    assert!(shown.get("history").is_none());
    assert_valid("case.v1.schema.json", &shown);
    let with_history = fq.json(&["case", "show", number, "--history"]);
    assert_eq!(with_history["history"].as_array().unwrap().len(), 5);
    assert_valid("case.v1.schema.json", &with_history);
    assert_valid("export.v1.schema.json", &fq.json(&["export", "--format", "json"]));
    assert_valid("export.v1.schema.json", &fq.json(&["export", "--format", "json", "--unmasked"]));
    let out = fq.path("cases.csv");
    let receipt = fq.json(&["export", "--format", "csv", "--out", out.to_str().unwrap()]);
    assert_valid("export-receipt.v1.schema.json", &receipt);
    assert_valid("audit-summary.v1.schema.json", &fq.json(&["audit"]));
    assert_valid("audit.v1.schema.json", &fq.json(&["audit", "log"]));
    assert_valid("audit-conflicts.v1.schema.json", &fq.json(&["audit", "conflicts"]));
    assert_valid("audit-refused.v1.schema.json", &fq.json(&["audit", "refused", "--since", "2026-01-01"]));
    assert_valid("audit-history.v1.schema.json", &fq.json(&["audit", "history", number]));
    assert_valid("audit-verify.v1.schema.json", &fq.json(&["audit", "verify"]));
    // Verified once, the summary says when.
    assert!(fq.json(&["audit"])["last_verify"]["passed"] == true);
    for bad in [
        vec!["--json", "case", "new", "--category", "ufo", "--title", "x"],
        vec!["--json", "case", "note", "nope", "x"],
        vec!["--json", "case", "new", "--title", "missing category"],
        vec!["--json", "init", "--village", VILLAGE, "--name", "张三", "--role", "mediator"],
        vec!["--json", "case", "accept", number, "--lang", "en"],
    ] {
        assert_valid("error.v1.schema.json", &fq.run(&bad).error_json());
    }
}

#[test]
fn schemas_reject_unknown_keys_and_values() {
    let fq = Fq::new();
    fq.init_mediator();
    let case = fq.new_case();
    let number = case["number"].as_str().unwrap();
    let shown = fq.json(&["case", "show", number]);
    let check = |name: &str, value: &Value| validator(name).is_valid(value);
    assert!(check("case.v1.schema.json", &shown));
    let mut extra = shown.clone();
    extra["surprise"] = json!(1);
    assert!(!check("case.v1.schema.json", &extra), "extra key accepted");
    let mut bad_status = shown.clone();
    bad_status["status"] = json!("closed");
    assert!(!check("case.v1.schema.json", &bad_status), "unknown status accepted");
    let mut no_conflicts = shown.clone();
    no_conflicts.as_object_mut().unwrap().remove("conflicts");
    assert!(!check("case.v1.schema.json", &no_conflicts), "missing conflicts accepted");
    // A write result holds exactly a case state: show's extra keys are refused there.
    assert!(!check("write-result.v1.schema.json", &json!({ "ok": true, "case": shown })));
    assert!(check("write-result.v1.schema.json", &json!({ "ok": true, "case": case })));
    assert!(!check("error.v1.schema.json", &json!({ "error": { "kind": "oops", "message": "x" } })));
}
