//! Bad input: exit 2, a message naming the problem in both languages, and
//! nothing written.

use fq_core::case::Category;

use crate::harness::{Fq, ID_BAD_CHECKSUM, VILLAGE};

/// Runs `args` in Chinese and in English; both must exit 2 and quote `needle`.
fn refused_in_both_languages(fq: &Fq, args: &[&str], needle: &str) -> (String, String) {
    let mut out = Vec::new();
    for lang in ["zh", "en"] {
        let mut all = vec!["--lang", lang];
        all.extend_from_slice(args);
        let run = fq.run(&all);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        assert!(run.stderr.contains(needle), "{lang} message does not name {needle:?}: {}", run.stderr);
        out.push(run.stderr);
    }
    let en = out.pop().unwrap_or_default();
    (out.pop().unwrap_or_default(), en)
}

#[test]
fn init_wrong_division_code_exits_2_and_writes_nothing() {
    let fq = Fq::new();
    let (zh, en) = refused_in_both_languages(
        &fq,
        &["init", "--village", "5329241012", "--name", "张三", "--role", "mediator"],
        "5329241012",
    );
    assert!(zh.contains("6位") && zh.contains("12位"), "{zh}");
    assert!(en.contains("6 (county)") && en.contains("12 (village"), "{en}");
    assert!(!fq.data_dir().exists(), "init left {} behind", fq.data_dir().display());
    // A well-formed code of the wrong level for the role is refused by the ledger's own rule.
    let (zh, _) = refused_in_both_languages(
        &fq,
        &["init", "--village", "532924101", "--name", "张三", "--role", "mediator"],
        "532924101",
    );
    assert!(zh.contains("12位的村"), "{zh}");
    assert!(!fq.ledger_file().exists());
    assert!(!fq.data_dir().exists());
}

#[test]
fn init_on_existing_ledger_exits_2_and_says_so() {
    let fq = Fq::new();
    fq.init_mediator();
    let again = fq.run(&["init", "--village", VILLAGE, "--name", "李娜", "--role", "grid-worker"]);
    assert_eq!(again.code, 2);
    // The ledger is encrypted: whose it is cannot be read without its passphrase, and init
    // never tries one (that would be a guess the wrong-try counter does not see).
    assert!(again.stderr.contains("已经有台账") && again.stderr.contains("已加密"), "{}", again.stderr);
    assert_eq!(fq.json(&["case", "list"])["count"], 0);
}

#[test]
fn init_township_officer_takes_township_code() {
    let fq = Fq::new();
    let out = fq.json(&["init", "--village", "５３２９２４１０１", "--name", "王乡长", "--role", "乡镇干部"]);
    assert_eq!(out["identity"]["scope"], "532924101");
    assert_eq!(out["identity"]["role"], "township-officer");
    // Its area is not a village: a case must say which village it is in.
    let run = fq.run(&["case", "new", "--category", "debt", "--title", "欠款"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--village"), "{}", run.stderr);
    let ok = fq.json(&["case", "new", "--category", "debt", "--title", "欠款", "--village", VILLAGE]);
    assert_eq!(ok["case"]["level"], "township");
    let outside = fq.run(&["case", "new", "--category", "debt", "--title", "欠款", "--village", "532924102201"]);
    assert_eq!(outside.code, 2);
    assert!(
        outside.stderr.contains("532924102201") && outside.stderr.contains("不在您负责的区域"),
        "{}",
        outside.stderr
    );
}

#[test]
fn case_new_bad_id_checksum_records_nothing() {
    let fq = Fq::new();
    fq.init_mediator();
    fq.new_case();
    let party = format!("李四,{ID_BAD_CHECKSUM},13800000000");
    let (zh, en) = refused_in_both_languages(
        &fq,
        &["case", "new", "--category", "neighbor", "--title", "x", "--party", &party],
        ID_BAD_CHECKSUM,
    );
    assert_eq!(zh.trim(), format!("身份证号码“{ID_BAD_CHECKSUM}”不正确：最后一位校验码不对，请核对后重新输入。"));
    assert!(en.contains("check digit"), "{en}");
    assert_eq!(fq.case_count(), 1);
}

#[test]
fn case_new_unknown_category_lists_valid_ones() {
    let fq = Fq::new();
    fq.init_mediator();
    let (zh, en) = refused_in_both_languages(&fq, &["case", "new", "--category", "ufo", "--title", "x"], "ufo");
    for c in Category::ALL {
        assert!(zh.contains(c.zh()), "{} missing from {zh}", c.zh());
        assert!(en.contains(c.code()), "{} missing from {en}", c.code());
    }
    assert_eq!(fq.case_count(), 0);
}

#[test]
fn case_note_unknown_case_exits_2_naming_it() {
    let fq = Fq::new();
    fq.init_mediator();
    refused_in_both_languages(
        &fq,
        &["case", "note", "532924101201-2026-ffff-9999", "x"],
        "532924101201-2026-ffff-9999",
    );
    let err = fq.run(&["--json", "case", "note", "nope", "x"]).error_json();
    assert_eq!(err["error"]["kind"], "case-not-found");
}

#[test]
fn case_new_bad_phone_and_grid_exit_2() {
    let fq = Fq::new();
    fq.init_mediator();
    refused_in_both_languages(
        &fq,
        &["case", "new", "--category", "debt", "--title", "x", "--party", "李四,12ab"],
        "12ab",
    );
    refused_in_both_languages(&fq, &["case", "new", "--category", "debt", "--title", "x", "--grid", "三"], "三");
    refused_in_both_languages(&fq, &["case", "new", "--category", "debt", "--title", "x", "--risk", "huge"], "huge");
    let blank = fq.run(&["--json", "case", "new", "--category", "debt", "--title", "  "]);
    assert_eq!(blank.error_json()["error"]["kind"], "invalid-text");
    assert_eq!(fq.case_count(), 0);
}

#[test]
fn read_only_commands_without_ledger_create_nothing() {
    let fq = Fq::new();
    for args in [vec!["case", "list"], vec!["case", "show", "x"], vec!["export", "--format", "csv"], vec!["audit"]] {
        let run = fq.run(&args);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("先运行 fq init"), "{}", run.stderr);
    }
    let note = fq.run(&["--json", "case", "note", "x", "y"]);
    assert_eq!(note.error_json()["error"]["kind"], "not-initialized");
    assert!(!fq.data_dir().exists());
}

#[test]
fn usage_errors_exit_2_with_and_without_json() {
    let fq = Fq::new();
    let human = fq.run(&["case", "new", "--title", "x"]);
    assert_eq!(human.code, 2);
    assert!(human.stderr.contains("--category"), "{}", human.stderr);
    let json = fq.run(&["--json", "case", "frobnicate"]);
    assert_eq!(json.code, 2);
    assert_eq!(json.error_json()["error"]["kind"], "usage");
    let help = fq.run(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("case"), "{help:?}");
}

/// Terminal controls and bidirectional overrides are refused at input, in a title and in a
/// party's name, and nothing is written.
#[test]
fn case_new_refuses_control_characters_and_bidi_overrides() {
    let fq = Fq::new();
    fq.init_mediator();
    let hostile = ["\u{1b}[2J", "\u{7}", "\u{1b}]0;pwned\u{7}", "\u{202e}", "\u{9b}31m", "a\rb"];
    for bad in hostile {
        let title = format!("滴水{bad}纠纷");
        let run = fq.run(&["--json", "case", "new", "--category", "neighbor", "--title", &title]);
        assert_eq!(run.code, 2, "{bad:?}: {run:?}");
        assert_eq!(run.error_json()["error"]["kind"], "unsafe-text", "{run:?}");
        let party = format!("李{bad}四,13800000000");
        let run = fq.run(&["case", "new", "--category", "neighbor", "--title", "滴水", "--party", &party]);
        assert_eq!(run.code, 2, "{bad:?}: {run:?}");
        assert!(run.stderr.contains("控制字符"), "{run:?}");
        assert!(!run.stderr.contains('\u{1b}') && !run.stderr.contains('\u{202e}'), "echoed raw: {run:?}");
    }
    // Newlines and tabs are fine in long text, not in a title.
    let run = fq.run(&["case", "new", "--category", "neighbor", "--title", "甲\n乙"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(fq.case_count(), 0);
    let ok =
        fq.json(&["case", "new", "--category", "neighbor", "--title", "滴水", "--description", "第一行\n\t第二行"]);
    assert_eq!(ok["case"]["description"], "第一行\n\t第二行");
}

/// `--party` never reads one field as another: 16 digits or 5 digits are errors naming them,
/// and the keyed form says which is which.
#[test]
fn case_new_party_input_is_strict() {
    let fq = Fq::new();
    fq.init_mediator();
    for bad in ["李四,5329241980010112", "李四,12345", "name=李四,phone=12345"] {
        let run = fq.run(&["case", "new", "--category", "debt", "--title", "借款", "--party", bad]);
        assert_eq!(run.code, 2, "{bad}: {run:?}");
    }
    assert_eq!(fq.case_count(), 0);
    let case = fq.json(&[
        "case",
        "new",
        "--category",
        "debt",
        "--title",
        "借款",
        "--party",
        "name=李四,phone=(0872)7654321,id=53292480010112 3",
    ])["case"]
        .clone();
    assert_eq!(case["parties"][0]["phone"], "0872-7654321");
    assert_eq!(case["parties"][0]["id_number"], "532924800101123");
}

/// Long text comes from a file or standard input; a file that is not UTF-8 is refused.
#[test]
fn long_text_comes_from_a_file_or_stdin() {
    use std::io::Write;
    let fq = Fq::new();
    fq.init_mediator();
    let file = fq.path("案情.txt");
    std::fs::write(&file, "\u{feff}两户相邻，屋檐滴水。\r\n雨季积水。\n").unwrap();
    let case = fq.json(&[
        "case",
        "new",
        "--category",
        "neighbor",
        "--title",
        "滴水",
        "--description-file",
        file.to_str().unwrap(),
    ])["case"]
        .clone();
    assert_eq!(case["description"], "两户相邻，屋檐滴水。\n雨季积水。");
    let number = case["number"].as_str().unwrap().to_owned();
    let long = "调解记录。".repeat(2_000);
    let mut cmd = fq.command(&["--json", "case", "note", &number, "--file", "-"]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(long.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = fq.json(&["case", "show", &number]);
    assert_eq!(shown["events"][1]["text"], long);
    let gbk = fq.path("gbk.txt");
    std::fs::write(&gbk, [0xc0u8, 0xee, 0xcb, 0xc4]).unwrap();
    let run = fq.run(&["case", "settle", &number, "--agreement-file", gbk.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("UTF-8"), "{run:?}");
    assert_eq!(fq.json(&["case", "show", &number])["status"], "mediating");
}

/// A write command on a server's data directory is refused, and the file is not touched.
#[test]
fn write_commands_on_a_server_replica_are_refused() {
    use std::sync::Arc;
    let fq = Fq::new();
    std::fs::create_dir_all(fq.data_dir()).unwrap();
    let init = fq_core::ledger::InitOptions {
        tier: fq_core::ledger::Tier::Township,
        name: "tw-101".into(),
        role: fq_core::case::Role::TownshipOfficer,
        scope: fq_core::case::AdminCode::parse("532924101").unwrap(),
        grid: None,
    };
    let clock = Arc::new(fq_core::clock::SystemClock);
    drop(fq_core::ledger::Ledger::init(&fq.ledger_file(), init, clock, Default::default()).unwrap());
    let before = std::fs::read(fq.ledger_file()).unwrap();
    let run = fq.run(&["--json", "case", "new", "--category", "neighbor", "--title", "滴水", "--village", VILLAGE]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.error_json()["error"]["kind"], "server-replica");
    assert!(!run.stderr.contains("warning"), "a server's plain replica is not a phone to encrypt: {run:?}");
    let run = fq.run(&["case", "new", "--category", "neighbor", "--title", "滴水", "--village", VILLAGE]);
    assert!(run.stderr.contains("服务器") && run.stderr.contains("什么也没有写入"), "{run:?}");
    assert_eq!(std::fs::read(fq.ledger_file()).unwrap(), before, "the server's file was written");
    // Reading works.
    assert_eq!(fq.case_count(), 0);
}
