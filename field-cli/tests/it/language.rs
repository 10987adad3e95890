//! The language follows --lang, then LC_ALL / LC_MESSAGES / LANG, and is
//! Chinese when no locale is set at all or the locale is C, POSIX or C.UTF-8.

use crate::harness::{Fq, ID_OK, VILLAGE, run};

/// The message of `case list` on a missing ledger, with these locale variables.
fn message(env: &[(&str, &str)], args: &[&str]) -> String {
    let fq = Fq::new();
    let mut cmd = fq.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(cmd);
    assert_eq!(out.code, 2, "{out:?}");
    out.stderr
}

const ZH: &str = "先运行 fq init";
const EN: &str = "run fq init first";

#[test]
fn lang_defaults_to_chinese_without_locale() {
    assert!(message(&[], &["case", "list"]).contains(ZH));
}

#[test]
fn lang_follows_locale_variables_in_posix_order() {
    assert!(message(&[("LANG", "en_US.UTF-8")], &["case", "list"]).contains(EN));
    assert!(message(&[("LANG", "fr_FR.UTF-8")], &["case", "list"]).contains(EN));
    // The neutral locales of servers and containers mean Chinese.
    for neutral in ["C.UTF-8", "C", "POSIX"] {
        assert!(message(&[("LANG", neutral)], &["case", "list"]).contains(ZH), "{neutral}");
    }
    assert!(message(&[("LANG", "zh_CN.UTF-8")], &["case", "list"]).contains(ZH));
    assert!(message(&[("LANG", "zh_CN.UTF-8"), ("LC_ALL", "en_GB.UTF-8")], &["case", "list"]).contains(EN));
    assert!(message(&[("LANG", "en_US.UTF-8"), ("LC_MESSAGES", "zh_TW.UTF-8")], &["case", "list"]).contains(ZH));
}

#[test]
fn lang_option_overrides_locale() {
    assert!(message(&[("LANG", "zh_CN.UTF-8")], &["--lang", "en", "case", "list"]).contains(EN));
    assert!(message(&[("LC_ALL", "en_US.UTF-8")], &["case", "list", "--lang", "zh"]).contains(ZH));
}

#[test]
fn data_dir_comes_from_fq_data_dir_variable() {
    let fq = Fq::new();
    let mut cmd = crate::harness::fq_command();
    cmd.env("FQ_DATA_DIR", fq.data_dir()).args([
        "--json",
        "init",
        "--village",
        "532924101201",
        "--name",
        "张三",
        "--role",
        "mediator",
    ]);
    assert_eq!(run(cmd).json()["data_dir"], fq.data_dir().to_str().unwrap());
    assert!(fq.ledger_file().exists());
}

/// The commands of `fq`: allowed right after `fq` or another command word.
const COMMAND_WORDS: [&str; 43] = [
    "fq",
    "demo",
    "serve",
    "encrypt",
    "passphrase",
    "change",
    "init",
    "enroll",
    "sync",
    "case",
    "new",
    "list",
    "show",
    "edit",
    "note",
    "assign",
    "escalate",
    "accept",
    "settle",
    "fail",
    "confirm",
    "followup",
    "archive",
    "export",
    "audit",
    "conflicts",
    "resolve",
    "history",
    "verify",
    "compare",
    "refused",
    "log",
    "todo",
    "report",
    "monthly",
    "subsidy",
    "policy",
    "supervise",
    "respond",
    "waive",
    "import",
    "followups",
    "reports",
];

/// Words that are names, not English prose: formats, the locale names, a key.
const NAMES: [&str; 19] = [
    "Ctrl",
    "FQ_DATA_DIR",
    "FQ_PASSPHRASE",
    "UTF",
    "Excel",
    "WPS",
    "CSV",
    "JSON",
    "POSIX",
    "QUIC",
    "json",
    "csv",
    "zh",
    "en",
    "table",
    "html",
    "xlsx",
    "HTML",
    "SVG",
];

/// The stable codes people may type (categories, statuses, roles...): allowed
/// only where they are offered as input, i.e. right before their label
/// (`neighbor（邻里纠纷）`) or right after an option (`--role mediator`).
fn codes() -> std::collections::BTreeSet<&'static str> {
    use fq_core::case::{Category, EventKind, Level, Outcome, Risk, RiskFlag, Role, Status};
    Category::ALL
        .iter()
        .map(|c| c.code())
        .chain(RiskFlag::ALL.iter().map(|f| f.code()))
        .chain(Status::ALL.iter().map(|s| s.code()))
        .chain(Level::ALL.iter().map(|l| l.code()))
        .chain(Risk::ALL.iter().map(|r| r.code()))
        .chain(Role::ALL.iter().map(|r| r.code()))
        .chain(Outcome::ALL.iter().map(|o| o.code()))
        .chain(EventKind::ALL.iter().map(|e| e.code()))
        // The fields `fq audit resolve --field` takes.
        .chain(["title", "description", "category", "risk", "grid", "responsible", "parties", "agreement", "status"])
        .collect()
}

/// The English words in `text` that a Chinese reader should have seen in
/// Chinese: runs of three or more ASCII letters that are not options
/// (`--title`), paths, addresses or `key=value` hints, hexadecimal ids,
/// command words after `fq`, names of formats, codes offered as input, or the
/// user's own `input`.
pub(crate) fn english_words(text: &str, input: &[&str]) -> Vec<String> {
    let codes = codes();
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-_./=:@'+|[]".contains(c);
    let mut found = Vec::new();
    let mut prev = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(is_token_char) {
        // What stands before the token on its line: nothing (a listing of
        // commands) or an opening quote (a suggested command).
        let before = rest[..start].rsplit('\n').next().unwrap_or_default();
        let listed = before.trim().is_empty() || before.ends_with('“');
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_token_char(c)).unwrap_or(tail.len());
        let token = &tail[..end];
        let next = tail[end..].chars().next();
        rest = &tail[end..];
        let word = token.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let letters = token.chars().filter(char::is_ascii_alphabetic).count();
        let hex = token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        let marked = token.starts_with('-') || token.contains(['/', '.', '=', ':', '@', '|']);
        let command =
            COMMAND_WORDS.contains(&word) && (word == "fq" || listed || COMMAND_WORDS.contains(&prev.as_str()));
        let offered = codes.contains(word) && (matches!(next, Some('（' | '(')) || prev.starts_with("--"));
        let ok = letters < 3
            || hex
            || marked
            || command
            || offered
            || NAMES.contains(&word)
            || input.iter().any(|i| !word.is_empty() && i.contains(word));
        if !ok {
            found.push(token.to_owned());
        }
        prev = token.to_owned();
    }
    found
}

#[test]
fn english_words_finds_untranslated_codes_and_fields() {
    assert_eq!(english_words("修改：description、风险 (risk)", &[]), ["description", "risk"]);
    assert_eq!(english_words("1. 「high」 张三（调解员）", &[]), ["high"]);
    assert_eq!(english_words("同步中断：the server ended the session (Internal)", &[]).len(), 6);
    assert!(english_words("请运行 fq case list 查看；写 --role mediator，或 neighbor（邻里纠纷）", &[]).is_empty());
    assert!(english_words("证书包 /tmp/a.json：532924101201-2026-d07a-0001", &[]).is_empty());
}

#[test]
fn chinese_output_of_every_command_has_no_english_words() {
    let fq = Fq::new();
    let zh = |args: &[&str]| {
        let mut cmd = fq.command(args);
        cmd.env("LANG", "C.UTF-8");
        run(cmd)
    };
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut check = |args: &[&str], input: &[&str]| {
        let out = zh(args);
        let text = format!("{}{}", out.stdout, out.stderr);
        let words = english_words(&text, input);
        if !words.is_empty() {
            seen.push((args.join(" "), words.join(" ")));
        }
        out
    };
    // Help of every command.
    for path in [
        "",
        "init",
        "enroll",
        "sync",
        "serve",
        "case",
        "case new",
        "case list",
        "case show",
        "case edit",
        "case note",
        "case assign",
        "case escalate",
        "case accept",
        "case settle",
        "case fail",
        "case confirm",
        "case followup",
        "case archive",
        "case supervise",
        "case respond",
        "case waive",
        "case import",
        "export",
        "audit",
        "audit conflicts",
        "audit resolve",
        "audit history",
        "audit verify",
        "audit compare",
        "audit refused",
        "audit log",
        "todo",
        "report",
        "report monthly",
        "report subsidy",
        "policy",
        "policy show",
    ] {
        let mut args: Vec<&str> = path.split_whitespace().collect();
        args.push("--help");
        check(&args, &[]);
    }
    // The demo: the whole story, in Chinese under the containers' default locale.
    let demo = check(&["demo"], &[]);
    assert_eq!(demo.code, 0, "{demo:?}");
    assert!(demo.stdout.contains("演示完成"), "{demo:?}");
    // Before a ledger exists, and a case's whole life.
    check(&["case", "list"], &[]);
    check(&["init", "--village", VILLAGE, "--name", "张三", "--role", "mediator"], &[]);
    let party = format!("李四,{ID_OK},13800000000");
    check(
        &["case", "new", "--category", "neighbor", "--title", "宅基地滴水纠纷", "--party", &party, "--risk", "high"],
        &[],
    );
    let number = fq.json(&["case", "list"])["cases"][0]["number"].as_str().unwrap().to_owned();
    let n = number.as_str();
    for args in [
        &["case", "list"][..],
        &["case", "edit", n, "--title", "新标题", "--description", "描述", "--risk", "medium", "--category", "water"],
        &["case", "note", n, "双方到场"],
        &["case", "assign", n, "--to", "李娜"],
        &["case", "escalate", n, "--reason", "需乡镇协调"],
        &["case", "accept", n],
        &["case", "settle", n, "--agreement", "双方签字"],
        &["case", "confirm", n, "--court", "宾川县人民法院", "--ref", "（2026）云2924民特1号"],
        &["case", "followup", n, "--outcome", "honoured", "--note", "已履行"],
        &["case", "show", n, "--history"],
        &["audit"],
        &["audit", "conflicts"],
        &["audit", "history", n],
        &["audit", "verify"],
        &["audit", "refused"],
        &["audit", "log"],
        &["audit", "resolve", n, "--field", "title", "--value", "x"],
        &["case", "archive", n],
        &["case", "list", "--overdue"],
    ] {
        check(args, &[]);
    }
    // The officers' routines.
    for args in [
        &["todo"][..],
        &["policy", "show"],
        &["report", "monthly"],
        &["report", "monthly", "--month", "2026-10", "--format", "csv"],
        &["report", "subsidy"],
        &["report", "subsidy", "--person", "张三"],
    ] {
        let run = check(args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
    }
    let html = fq.path("月报.html");
    assert_eq!(check(&["report", "monthly", "--format", "html", "--out", html.to_str().unwrap()], &[]).code, 0);
    let number2 = fq.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"])["case"]["number"]
        .as_str()
        .unwrap()
        .to_owned();
    let n2 = number2.as_str();
    for args in [
        &["case", "supervise", n2, "--instruction", "一周内调处", "--due", "2026-12-01"][..],
        &["case", "respond", n2, "--note", "已调处"],
        &["case", "respond", n2, "--note", "再次回复"],
        &["case", "settle", n2, "--agreement", "已和解"],
        &["case", "archive", n2],
        &["case", "waive", n2, "--reason", "当事人外出"],
        &["case", "show", n2],
        &["todo", "--scope", "532924102"],
    ] {
        check(args, &[]);
    }
    let bad = fq.path("旧台账.csv");
    std::fs::write(&bad, "编号,村代码,类别代码,标题,登记时间\nX1,532924102201,ufo,,十月\n").unwrap();
    let run = check(&["case", "import", bad.to_str().unwrap()], &["ufo"]);
    assert_eq!(run.code, 2, "{run:?}");
    // The CSV keeps the category code in its own column.
    check(&["export", "--format", "csv"], &["water", "debt"]);
    let out = fq.path("cases.csv");
    check(&["export", "--format", "csv", "--out", out.to_str().unwrap()], &[]);
    // Mistakes.
    for (args, input) in [
        (&["case", "note", "nope", "x"][..], &["nope"][..]),
        (&["case", "new", "--category", "ufo", "--title", "x"], &["ufo"]),
        (&["case", "new", "--category", "debt", "--title", "x", "--party", "李四,5329241980010112"], &[]),
        (&["case", "new", "--category", "debt", "--title", "x", "--party", "李四,12345"], &[]),
        (&["case", "new", "--category", "debt", "--title", "x", "--party", "李四,532924198001011231"], &[]),
        (&["case", "new", "--category", "debt", "--title", "a\u{1b}[2Jb"], &[]),
        (&["case", "new", "--category", "debt", "--title", "x", "--risk", "huge"], &["huge"]),
        (&["case", "nwe"], &["nwe"]),
        (&["case", "new", "--title", "x"], &[]),
        (&["case", "list", "--limit", "many"], &["many"]),
        (&["export", "--format", "xml"], &["xml"]),
        (&["case"], &[]),
        (&["sync"], &[]),
        (&["enroll", "--bundle", "missing.json"], &["missing"]),
        (&["init", "--village", VILLAGE, "--name", "张三", "--role", "mediator"], &[]),
        (&["report", "monthly", "--month", "2026-13"], &[]),
        (&["report", "monthly", "--format", "xlsx"], &[]),
        (&["case", "supervise", "nope", "--instruction", "x", "--due", "明天"], &["nope"]),
        (&["case", "new", "--category", "debt", "--title", "x", "--flag", "ufo"], &["ufo"]),
    ] {
        let run = check(args, input);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    assert!(seen.is_empty(), "English words in Chinese output:\n{}", {
        let lines: Vec<String> = seen.iter().map(|(cmd, words)| format!("fq {cmd}: {words}")).collect();
        lines.join("\n")
    });
}
