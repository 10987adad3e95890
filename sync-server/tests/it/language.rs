//! `fq-server` in Chinese under `LANG=C.UTF-8` (the default of servers and containers), and in
//! English with `--lang en`: every command's output, its errors, its help and its human log
//! are searched for English words that should have been translated. Codes, ids, paths,
//! numbers, option and command names are allowed.

use std::path::Path;
use std::process::{Command, Output};

use fq_sync_server::client::sync_once;
use tokio::time::timeout;

use crate::restart::{start_logging_to, stop};
use crate::server::{device, new_case, options};

const FQ_SERVER: &str = env!("CARGO_BIN_EXE_fq-server");

/// `fq-server ARGS` under `LANG=C.UTF-8`, nothing else naming a language.
fn zh(args: &[&str]) -> Output {
    Command::new(FQ_SERVER)
        .args(args)
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Words that are not English even if written in Latin letters: command and option names,
/// codes, file names and a few names of things (signals, protocols, units).
const ALLOWED: &[&str] = &[
    "fq",
    "fq-server",
    "run",
    "status",
    "import",
    "ca",
    "init",
    "issue",
    "revoke",
    "policy",
    "policy.json",
    "deadlines",
    "village",
    "follow_up",
    "days",
    "routing",
    "high_risk_to_township",
    "flags_to_township",
    "flag_overdue_village",
    "township_categories",
    "human",
    "json",
    "county|township",
    "encrypt",
    "sync",
    "systemctl",
    "reload",
    "ledger.db",
    "ca.key.pem",
    "reset.key",
    "revocations_file",
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
    "RUST_LOG",
    "LANG",
    "POSIX",
    "C.UTF-8",
    "JSON",
    "TOML",
    "UDP",
    "DNS",
    "QUIC",
    "IP",
    "MiB",
    "docs",
    "OPERATIONS.md",
    "zh",
    "en",
    "mediator",
    "grid-worker",
    "township-officer",
    "county-admin",
    "county",
    "township",
    "net.core.rmem_max",
    "tw-101",
    "d07",
    "d08",
    "nobody",
    "city",
    "statsu",
    "boss",
    "fq-sync",
    "RFC",
    "UTF-8",
    "sync_intervall_secs",
    "somewhere",
];

/// The English words in `text`: runs of three or more Latin letters in a token that is none of
/// the allowed words, no path, no option, no number, no hex (serials, replica ids, hashes).
fn english_words(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let tokens = text.split(|c: char| c.is_whitespace() || !c.is_ascii() || c == '=');
    for token in tokens {
        let token = token.trim_matches(|c: char| c.is_ascii_punctuation() && !matches!(c, '-' | '_'));
        let token = token.trim_start_matches(['<', '[']).trim_end_matches(['>', ']']);
        if token.is_empty()
            || token.contains('/')
            || token.starts_with('-')
            || ALLOWED.contains(&token)
            || token.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, '-' | ':' | '.'))
            || is_time(token)
        {
            continue;
        }
        let longest = token.split(|c: char| !c.is_ascii_alphabetic()).map(str::len).max().unwrap_or(0);
        if longest >= 3 {
            found.push(token.to_owned());
        }
    }
    found
}

/// `2026-12-06T21:51:31.423028Z` or `2026-12-06T21:51:31+00:00`.
fn is_time(token: &str) -> bool {
    token.len() >= 19 && token.chars().all(|c| c.is_ascii_digit() || "-:.T+Z".contains(c))
}

fn assert_chinese(what: &str, text: &str) {
    let words = english_words(text);
    assert!(words.is_empty(), "{what}: untranslated English {words:?} in:\n{text}");
    assert!(text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{what}: no Chinese in:\n{text}");
}

/// Help in Chinese has no English words (option names and codes aside).
fn assert_chinese_help(what: &str, text: &str) {
    let words = english_words(text);
    assert!(words.is_empty(), "{what}: English in the Chinese help: {words:?}\n{text}");
    assert!(text.contains("用法："), "{what}: {text}");
}

#[tokio::test]
async fn server_speaks_chinese_under_c_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (ca, tw, d07) = (path("ca"), path("tw-101.json"), path("d07.json"));
    let policy = path("policy.toml");
    std::fs::write(&policy, "[deadlines]\nvillage = 10\n").unwrap();
    let typo_policy = path("typo-policy.toml");
    std::fs::write(&typo_policy, "[deadlines]\nvilage = 10\n").unwrap();
    let roster =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/county-532924.json").to_str().unwrap().to_owned();

    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["status", "--help"],
        &["import", "--help"],
        &["ca", "--help"],
        &["ca", "init", "--help"],
        &["ca", "issue", "--help"],
        &["ca", "revoke", "--help"],
        &["ca", "policy", "--help"],
        &["encrypt", "--help"],
    ] {
        let out = zh(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_chinese_help(&format!("{args:?}"), &text(&out.stdout));
    }

    // What the commands print.
    for args in [
        &["ca", "init", "--dir", &ca, "--county", "532924"][..],
        &["ca", "issue", "--ca", &ca, "--id", "tw-101", "--role", "township", "--scope", "532924101", "--out", &tw],
        &["ca", "issue", "--ca", &ca, "--id", "d07", "--role", "mediator", "--scope", "532924101201", "--out", &d07],
        &[
            "ca",
            "issue",
            "--ca",
            &ca,
            "--id",
            "d08",
            "--role",
            "mediator",
            "--scope",
            "532924101201",
            "--out",
            &path("d08.json"),
        ],
        &["ca", "revoke", "--ca", &ca, "--id", "d08"],
        &["ca", "policy", "--ca", &ca, "--file", &policy, "--roster", &roster],
    ] {
        let out = zh(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert_chinese(&format!("{args:?}"), &text(&out.stdout));
    }

    // Mistakes, each with its exit code.
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "sync_intervall_secs = 5\n").unwrap();
    let data = path("tw");
    for (args, code) in [
        (&["run", "--tier", "city", "--listen", "0.0.0.0:4433", "--data-dir", &data, "--bundle", &tw][..], 2),
        (&["statsu"], 2),
        (&["run", "--tier", "township"], 2),
        (&["run", "--tier", "township", "--listen", "somewhere", "--data-dir", &data, "--bundle", &tw], 2),
        (&["run", "--tier", "township", "--listen", "127.0.0.1:0", "--data-dir", &data, "--bundle", &d07], 2),
        (&["run", "--tier", "county", "--listen", "127.0.0.1:0", "--data-dir", &data, "--bundle", &tw], 2),
        (
            &[
                "run",
                "--tier",
                "township",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data,
                "--bundle",
                &tw,
                "--config",
                config.to_str().unwrap(),
            ],
            2,
        ),
        (&["status", "--data-dir", &path("nothing-here")], 2),
        (&["ca", "init", "--dir", &ca, "--county", "532924"], 2),
        (&["ca", "init", "--dir", &path("ca2"), "--county", "5329241"], 2),
        (&["ca", "revoke", "--ca", &ca, "--id", "nobody"], 2),
        (&["ca", "revoke", "--ca", &path("no-ca"), "--id", "d07"], 2),
        (&["ca", "policy", "--ca", &ca, "--file", &typo_policy], 2),
        (&["ca", "policy", "--ca", &ca, "--file", &policy, "--roster", &policy], 2),
        (&["ca", "policy", "--ca", &ca, "--file", &path("no-such.toml")], 2),
        (&["ca", "issue", "--ca", &ca, "--id", "x1", "--role", "boss", "--scope", "532924", "--out", &path("x")], 2),
        (
            &[
                "ca",
                "issue",
                "--ca",
                &ca,
                "--id",
                "x1",
                "--role",
                "mediator",
                "--scope",
                "532924101",
                "--out",
                &path("x"),
            ],
            2,
        ),
        (
            &[
                "ca",
                "issue",
                "--ca",
                &ca,
                "--id",
                "d07",
                "--role",
                "mediator",
                "--scope",
                "532924101201",
                "--out",
                &d07,
            ],
            2,
        ),
    ] {
        let out = zh(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out.stderr));
        assert_chinese(&format!("{args:?}"), &text(&out.stderr));
    }

    // The human log of a server that serves a device, then stops.
    let log = dir.path().join("zh.log");
    let (mut child, addr) = start_logging_to(Path::new(&data), Path::new(&tw), "human", &log, &[("LANG", "C.UTF-8")]);
    let bundle = fq_sync_server::ca::Bundle::load(Path::new(&d07)).unwrap();
    let mut ledger = device(&bundle);
    ledger.create_case(new_case("中文日志")).unwrap();
    timeout(std::time::Duration::from_secs(30), sync_once(&mut ledger, &bundle, addr, &options(), |_| {}))
        .await
        .unwrap()
        .unwrap();
    stop(&mut child);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("开始监听") && logged.contains("同步会话结束") && logged.contains("已关闭"), "{logged}");
    for line in logged.lines() {
        assert_chinese("the human log", line);
    }

    // Status, with a peer.
    let out = zh(&["status", "--data-dir", &data]);
    assert_eq!(out.status.code(), Some(0));
    assert_chinese("status", &text(&out.stdout));

    // --lang en is still English, whatever the locale.
    let en = zh(&["status", "--data-dir", &data, "--lang", "en"]);
    assert!(text(&en.stdout).contains("township server tw-101") && text(&en.stdout).contains("peers:"));
    let en = zh(&["--lang", "en", "ca", "revoke", "--ca", &ca, "--id", "nobody"]);
    assert!(text(&en.stderr).contains("no certificate was issued to nobody"), "{}", text(&en.stderr));
    let en = zh(&["run", "--tier", "city", "--lang", "en"]);
    assert!(text(&en.stderr).contains("invalid value 'city'"), "{}", text(&en.stderr));
    let log = dir.path().join("en.log");
    let (mut child, _) = start_logging_to(
        Path::new(&data),
        Path::new(&tw),
        "human",
        &log,
        &[("LANG", "C.UTF-8"), ("LC_ALL", "en_US.UTF-8")],
    );
    stop(&mut child);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("INFO listening") && logged.contains("shutdown complete"), "{logged}");
}
