//! Validating `--json` output against `schemas/` (every schema registered under its `$id`, so
//! cross-file references resolve offline).

use std::fs;

use serde_json::Value;

const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");

/// Fails the test with every validation error if `value` does not fit `schemas/{name}`.
pub fn assert_valid(name: &str, value: &Value) {
    let mut options = jsonschema::options();
    let mut root = None;
    for entry in fs::read_dir(SCHEMA_DIR).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let schema: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let id = schema["$id"].as_str().unwrap().to_owned();
        if path.file_name().is_some_and(|f| f == name) {
            root = Some(schema.clone());
        }
        options = options.with_resource(id, jsonschema::Resource::from_contents(schema).unwrap());
    }
    let validator = options.build(&root.unwrap_or_else(|| panic!("no schema {name}"))).unwrap();
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "{name} rejects output:\n{}\n{value:#}", errors.join("\n"));
}
