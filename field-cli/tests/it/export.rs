//! `fq export`: as many rows as cases, ID numbers masked unless asked.

use std::fs;

use crate::harness::{Fq, ID_OK};
use crate::schema::assert_valid;

const HEADER_ZH: [&str; 15] = [
    "编号",
    "村代码",
    "网格",
    "类别代码",
    "类别",
    "标题",
    "状态",
    "级别",
    "风险等级",
    "登记时间",
    "更新时间",
    "办结期限",
    "责任人",
    "当事人",
    "并发冲突",
];

const HEADER_EN: [&str; 15] = [
    "number",
    "village",
    "grid",
    "category",
    "category_label",
    "title",
    "status",
    "level",
    "risk",
    "recorded_at",
    "updated_at",
    "deadline",
    "responsible",
    "parties",
    "conflicts",
];

fn three_cases(fq: &Fq) {
    fq.init_mediator();
    fq.new_case();
    fq.json(&["case", "new", "--category", "debt", "--title", "借款, \"三万\"", "--grid", "2"]);
    let n = fq.json(&["case", "new", "--category", "water", "--title", "灌溉", "--party", "甲", "--party", "乙"]);
    let number = n["case"]["number"].as_str().unwrap().to_owned();
    fq.json(&["case", "settle", &number, "--agreement", "轮流灌溉"]);
}

fn csv_rows(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    (header, rows)
}

#[test]
fn export_csv_has_one_row_per_case() {
    let fq = Fq::new();
    three_cases(&fq);
    let run = fq.run(&["export", "--format", "csv"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (header, rows) = csv_rows(&run.stdout);
    assert_eq!(header, HEADER_ZH);
    assert_eq!(rows.len() as u64, fq.case_count());
    let debt = rows.iter().find(|r| r[3] == "debt").unwrap();
    assert_eq!((debt[4].as_str(), debt[5].as_str(), debt[2].as_str()), ("债务纠纷", "借款, \"三万\"", "2"));
    let water = rows.iter().find(|r| r[3] == "water").unwrap();
    assert_eq!((water[6].as_str(), water[13].as_str(), water[11].as_str()), ("调解成功", "甲;乙", ""));
    // In English: the stable codes.
    let (header, rows) = csv_rows(&fq.run(&["--lang", "en", "export", "--format", "csv"]).stdout);
    assert_eq!(header, HEADER_EN);
    let water = rows.iter().find(|r| r[3] == "water").unwrap();
    assert_eq!((water[4].as_str(), water[6].as_str(), water[7].as_str()), ("Water", "settled", "village"));
    assert!(rows.iter().all(|r| r[9].ends_with("+08:00")), "{rows:?}");
    assert!(!run.stdout.contains(ID_OK));

    // To a file: complete, with a byte order mark for Excel, same rows.
    let out = fq.path("cases.csv");
    let receipt = fq.json(&["export", "--format", "csv", "--out", out.to_str().unwrap()]);
    assert_eq!(receipt["count"], 3);
    let file = fs::read_to_string(&out).unwrap();
    let body = file.strip_prefix('\u{feff}').expect("no byte order mark");
    assert_eq!(csv_rows(body).1.len(), 3);
}

#[test]
fn export_json_masks_id_numbers_unless_unmasked() {
    let fq = Fq::new();
    three_cases(&fq);
    let masked = fq.json(&["export", "--format", "json"]);
    assert_valid("export.v1.schema.json", &masked);
    assert_eq!(masked["count"], 3);
    assert_eq!(masked["cases"].as_array().unwrap().len() as u64, fq.case_count());
    assert_eq!(masked["masked"], true);
    let text = masked.to_string();
    assert!(!text.contains(ID_OK) && text.contains("5329**********1230"), "{text}");
    let full = fq.json(&["export", "--format", "json", "--unmasked"]);
    assert_eq!(full["masked"], false);
    assert!(full.to_string().contains(ID_OK));

    let out = fq.path("cases.json");
    let run = fq.run(&["export", "--format", "json", "--out", out.to_str().unwrap()]);
    assert!(run.stdout.contains("已导出 3 件案件"), "{run:?}");
    let file: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["cases"], masked["cases"]);
}

#[test]
fn export_to_missing_directory_fails_without_panic() {
    let fq = Fq::new();
    three_cases(&fq);
    let out = fq.path("no/such/dir/cases.csv");
    let run = fq.run(&["--json", "export", "--format", "csv", "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_valid("error.v1.schema.json", &run.error_json());
    assert!(!out.exists());
}
