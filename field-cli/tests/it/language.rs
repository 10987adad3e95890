//! The language follows --lang, then LC_ALL / LC_MESSAGES / LANG, and is
//! Chinese when no locale is set at all or the locale is C, POSIX or C.UTF-8.

use crate::harness::{Fq, run};

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
