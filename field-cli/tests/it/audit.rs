//! `fq audit` on real replicas: the real `fq` and `fq-server` binaries, real
//! QUIC on 127.0.0.1, real SQLite files. What the issue asks to see: a
//! conflict seen at the township and the county with both authors and
//! resolved by the county admin's own replica; tampering named by `verify`;
//! the changes a restored township lacks named by `compare`; names, not
//! UUIDs, and Chinese by default, in every human output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Fq, Run, fq_command, open_ledger, open_ledger_read_only, run};
use crate::process::write_config;
use crate::schema::assert_valid;
use crate::sync::{
    CONVERGE, COUNTY, County, TOWNSHIP, VILLAGE_A, VILLAGE_B, enrolled_device, eventually, fq_server_run, status,
    sync_json,
};

/// `fq --data-dir DIR [--lang en] audit ARGS`, for people.
fn audit_text(data: &Path, lang: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(data);
    if let Some(l) = lang {
        cmd.args(["--lang", l]);
    }
    cmd.arg("audit").args(args);
    run(cmd)
}

/// `fq --data-dir DIR --json audit ARGS`: the exit code and stdout, checked
/// against `schema`.
fn audit_json(data: &Path, schema: &str, args: &[&str]) -> (i32, Value) {
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(data).args(["--json", "audit"]).args(args);
    let out = run(cmd);
    let value: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
    assert_valid(schema, &value);
    if out.code != 0 {
        let err: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("stderr ({e}): {out:?}"));
        assert_valid("error.v1.schema.json", &err);
        assert_eq!(err["error"]["kind"], "audit-findings", "{out:?}");
    }
    (out.code, value)
}

/// Whether `text` holds something shaped like a UUID (8-4-4-4-12 hex digits).
fn has_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    let hex = |c: u8| c.is_ascii_hexdigit();
    let groups = [8, 4, 4, 4, 12];
    (0..b.len()).any(|start| {
        let mut at = start;
        for (i, n) in groups.iter().enumerate() {
            if at + n > b.len() || !b[at..at + n].iter().all(|c| hex(*c)) {
                return false;
            }
            at += n;
            if i < 4 {
                if b.get(at) != Some(&b'-') {
                    return false;
                }
                at += 1;
            }
        }
        true
    })
}

/// A human output in the default language: names, not UUIDs, and Chinese
/// with no English word in it.
fn assert_for_people(out: &Run) {
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!has_uuid(&text), "a bare UUID in output for people:\n{text}");
    {
        assert!(text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "not Chinese:\n{text}");
        // Commands to type stay as they are typed.
        let mut words = text.to_lowercase();
        for command in
            ["fq audit conflicts", "fq audit refused", "fq audit verify", "fq audit history", "fq audit resolve"]
        {
            words = words.replace(command, "");
        }
        for english in [" the ", " case ", "change", "conflict", "verified", "received", "signature", "missing"] {
            assert!(!words.contains(english), "English {english:?} in Chinese output:\n{text}");
        }
    }
}

fn numbers(conflicts: &Value) -> Vec<String> {
    conflicts["cases"].as_array().unwrap().iter().map(|c| c["number"].as_str().unwrap().to_owned()).collect()
}

/// The (kind, field, sorted authors, sorted relays) of each conflict of the one case listed.
fn sides(conflicts: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    conflicts["cases"][0]["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut authors: Vec<String> = c["sides"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["change"]["author"]["name"].as_str().unwrap().to_owned())
                .collect();
            authors.sort();
            let mut relays: Vec<String> = c["sides"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    assert!(s["change"]["received_at"].is_i64(), "{s:#}");
                    s["change"]["relay"]["subject"].as_str().unwrap_or("").to_owned()
                })
                .collect();
            relays.sort();
            (c["kind"].as_str().unwrap().to_owned(), c["field"].as_str().unwrap().to_owned(), authors, relays)
        })
        .collect()
}

#[test]
fn audit_a_conflict_is_seen_at_township_and_county_and_resolved_by_the_county_admin() {
    let county = County::new();
    let county_server = county.server("county", "county", COUNTY, None, None);
    let config = write_config(county.dir.path(), None);
    let township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&config));
    let tw = township.addr.to_string();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let b = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李娜");
    let number = a.new_case()["number"].as_str().unwrap().to_owned();
    sync_json(&a, &["--server", &tw]);
    sync_json(&b, &["--server", &tw]);
    // Both edit the same field and the same description, each offline.
    a.json(&["case", "edit", &number, "--title", "甲方案", "--description", "屋檐滴水落到邻居院内，已协商"]);
    b.json(&["case", "edit", &number, "--title", "乙方案", "--description", "邻居院内积水严重"]);
    sync_json(&a, &[]);
    sync_json(&b, &[]);

    let (town_data, county_data) = (county.data("tw-101"), county.data("county"));
    eventually("the county to see both edits", CONVERGE, || {
        audit_json(&county_data, "audit-conflicts.v1.schema.json", &["conflicts"]).1["count"] == 2
    });
    for (data, via) in [(&town_data, ["d07", "d08"]), (&county_data, ["tw-101", "tw-101"])] {
        let (code, found) = audit_json(data, "audit-conflicts.v1.schema.json", &["conflicts"]);
        assert_eq!((code, numbers(&found)), (1, vec![number.clone()]));
        let both = vec!["张三".to_owned(), "李娜".to_owned()];
        let via: Vec<String> = via.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            sides(&found),
            [
                ("field".into(), "title".into(), both.clone(), via.clone()),
                ("text".into(), "description".into(), both.clone(), via.clone())
            ],
            "{}",
            data.display()
        );
        let text = audit_text(data, None, &["conflicts"]);
        assert_eq!(text.code, 1);
        for words in ["甲方案", "乙方案", "张三（调解员）", "李娜（网格员）", "本机收到", "当前显示", &number]
        {
            assert!(text.stdout.contains(words), "{words} missing:\n{}", text.stdout);
        }
        assert_for_people(&text);
        let en = audit_text(data, Some("en"), &["conflicts"]);
        assert!(en.stdout.contains("values written concurrently") && en.stdout.contains("(Mediator)"), "{en:?}");
    }
    let summary = audit_text(&county_data, None, &[]);
    assert_eq!(summary.code, 1, "open conflicts: {summary:?}");
    assert!(summary.stdout.contains("未解决的冲突：1 件案件共 2 处"), "{}", summary.stdout);
    assert_for_people(&summary);

    // The county admin's own replica resolves both; a server's replica refuses to write.
    let admin = enrolled_device(&county, "admin", "county-admin", COUNTY, "王县长");
    sync_json(&admin, &["--server", &county_server.addr.to_string()]);
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(&county_data).args(["--json", "audit", "resolve", &number, "--field", "title"]);
    cmd.args(["--value", "丙方案"]);
    let refused = run(cmd).error_json();
    assert_eq!(refused["error"]["kind"], "server-replica");
    let done = admin.json(&["audit", "resolve", &number, "--field", "title", "--value", "丙方案"]);
    assert_valid("audit-resolve.v1.schema.json", &done);
    let out = admin.run(&["audit", "resolve", &number, "--field", "description", "--value", "双方同意加装接水槽"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("已解决案件") && out.stdout.contains("案情描述"), "{out:?}");
    let again = admin.run(&["--json", "audit", "resolve", &number, "--field", "title", "--value", "丁方案"]);
    assert_eq!((again.code, again.error_json()["error"]["kind"].as_str()), (2, Some("no-conflict")));
    sync_json(&admin, &[]);
    eventually("the resolution to reach the township", CONVERGE, || {
        audit_json(&town_data, "audit-conflicts.v1.schema.json", &["conflicts"]).0 == 0
    });
    sync_json(&a, &[]);
    sync_json(&b, &[]);

    // Every replica agrees, and every history keeps both old values and who resolved them.
    let replicas: Vec<PathBuf> =
        vec![a.data_dir(), b.data_dir(), town_data.clone(), county_data.clone(), admin.data_dir()];
    let show = |data: &Path| -> Value {
        let mut cmd = fq_command();
        cmd.arg("--data-dir").arg(data).args(["--json", "case", "show", &number, "--history"]);
        run(cmd).json()
    };
    let reference = show(&county_data);
    assert_eq!(reference["title"], "丙方案");
    for data in &replicas {
        assert_eq!(show(data), reference, "{} differs", data.display());
        assert_eq!(audit_json(data, "audit-conflicts.v1.schema.json", &["conflicts"]).0, 0);
        let (code, h) = audit_json(data, "audit-history.v1.schema.json", &["history", &number]);
        assert_eq!(code, 0, "{h:#}");
        let resolving: Vec<&Value> = h["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["resolves"].as_array().unwrap().iter().any(|f| f == "title"))
            .collect();
        assert_eq!(resolving.len(), 1, "{h:#}");
        assert_eq!(resolving[0]["change"]["author"]["name"], "王县长");
        if *data == admin.data_dir() {
            assert_eq!(resolving[0]["change"]["written_here"], true);
        } else {
            assert_eq!(resolving[0]["change"]["signer"]["subject"], "admin", "{}", data.display());
        }
        let title = resolving[0]["fields"].as_array().unwrap().iter().find(|f| f["field"] == "title").unwrap();
        let mut old: Vec<(String, String)> = title["old"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (s["value"].as_str().unwrap().to_owned(), s["change"]["author"]["name"].as_str().unwrap().to_owned())
            })
            .collect();
        old.sort();
        assert_eq!(old, [("乙方案".into(), "李娜".into()), ("甲方案".into(), "张三".into())], "{}", data.display());
        let text = audit_text(data, None, &["history", &number]);
        assert_eq!(text.code, 0);
        for words in
            ["「乙方案」(李娜（网格员）)", "「甲方案」(张三（调解员）)", "王县长（县级管理员）", "这条修改解决了冲突"]
        {
            assert!(text.stdout.contains(words), "{words} missing at {}:\n{}", data.display(), text.stdout);
        }
        assert_for_people(&text);
    }

    // The county sees each child's lag without dialing it.
    let s = status(&county_data);
    let peers = s["peers"].as_array().unwrap();
    let tw_peer = peers.iter().find(|p| p["subject"] == "tw-101").unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(tw_peer["lag"]["lacks"], 0, "{s:#}");
    let (_, summary) = audit_json(&county_data, "audit-summary.v1.schema.json", &[]);
    let children: Vec<&str> =
        summary["summary"]["peers"].as_array().unwrap().iter().filter_map(|p| p["who"]["subject"].as_str()).collect();
    assert!(children.contains(&"tw-101") && children.contains(&"admin"), "{summary:#}");
    let text = audit_text(&county_data, None, &[]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("下级 tw-101（乡镇服务器）") && text.stdout.contains("最近一次同步追平或结束时"),
        "{}",
        text.stdout
    );
    assert_for_people(&text);
    let log = audit_text(&town_data, None, &["log"]);
    assert!(log.stdout.contains("并发修改后出现冲突") && log.stdout.contains(&number), "{}", log.stdout);
    assert_for_people(&log);
    let (_, raw) = audit_json(&town_data, "audit.v1.schema.json", &["log"]);
    assert!(raw["entries"].as_array().unwrap().iter().any(|e| e["code"] == "conflict"), "{raw:#}");
}

/// A copy of a stopped server's ledger in a directory of its own, altered by `sql`.
fn tampered_copy(from: &Path, to: &Path, sql: impl FnOnce(&rusqlite::Connection)) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal"] {
        let file = from.join(format!("ledger.db{suffix}"));
        if file.exists() {
            std::fs::copy(&file, to.join(format!("ledger.db{suffix}"))).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(to.join("ledger.db")).unwrap();
    sql(&conn);
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
}

#[test]
fn audit_verify_names_each_tampering_and_refused_names_sender_and_author() {
    let county = County::new();
    let mut township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let first = a.new_case()["number"].as_str().unwrap().to_owned();
    a.json(&["case", "note", &first, "双方到场"]);
    let second = a.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"])["case"]["number"]
        .as_str()
        .unwrap()
        .to_owned();
    // A case of village B lands on A's phone as if A wrote it; A signs it when it syncs.
    let b = Fq::new();
    b.json(&["init", "--village", VILLAGE_B, "--name", "李四", "--role", "mediator"]);
    b.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    {
        let mut from = open_ledger(&b.ledger_file());
        let mut into = open_ledger(&a.ledger_file());
        let changes = from.changes_since(0, 100).unwrap();
        into.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
    }
    let summary = sync_json(&a, &["--server", &township.addr.to_string()]);
    assert_eq!(summary["refused"]["count"], 1, "{summary:#}");

    let town = county.data("tw-101");
    let bundle = county.path("tw-101.bundle.json");
    let bundle = bundle.to_str().unwrap();
    let (code, refused) = audit_json(&town, "audit-refused.v1.schema.json", &["refused"]);
    assert_eq!(code, 1);
    let r = &refused["refused"][0];
    assert_eq!((r["reason"].as_str(), r["sender"]["subject"].as_str()), (Some("out-of-scope"), Some("d07")));
    assert_eq!(r["author"]["subject"], "d07");
    let text = audit_text(&town, None, &["refused"]);
    for words in ["d07（调解员）", "作者的区域（532924101201）不包括案件所在的村（532924101202）"]
    {
        assert!(text.stdout.contains(words), "{words} missing:\n{}", text.stdout);
    }
    assert_for_people(&text);
    assert!(audit_text(&town, Some("en"), &["refused"]).stdout.contains("does not cover the case's village"));

    // The real replicas pass, with the CA checked.
    let (code, ok) = audit_json(&town, "audit-verify.v1.schema.json", &["verify", "--bundle", bundle]);
    assert_eq!((code, &ok["report"]["ca_checked"]), (0, &Value::Bool(true)), "{ok:#}");
    assert_eq!(ok["report"]["signatures"], 3);
    assert_eq!(audit_json(&a.data_dir(), "audit-verify.v1.schema.json", &["verify"]).0, 1, "A holds B's import");
    let text = audit_text(&town, None, &["verify", "--bundle", bundle]);
    assert!(text.stdout.contains("全部通过"), "{text:?}");
    assert_for_people(&text);

    // Each alteration, made on a copy of the stopped township's file, is named.
    township.signal("TERM");
    township.wait_exit(Duration::from_secs(20)).expect("the township stops");
    let case_rowid = |c: &rusqlite::Connection, number: &str| -> i64 {
        c.query_row("SELECT rowid FROM cases WHERE number = ?1", [number], |r| r.get(0)).unwrap()
    };
    let check = |name: &str, named: &str, sql: &dyn Fn(&rusqlite::Connection), expect: &[(&str, &str)]| {
        let copy = county.path(name);
        tampered_copy(&town, &copy, |c| sql(c));
        let (code, r) = audit_json(&copy, "audit-verify.v1.schema.json", &["verify", "--bundle", bundle]);
        assert_eq!((code, &r["passed"]), (1, &Value::Bool(false)), "{name}: {r:#}");
        let failures = r["report"]["failures"].as_array().unwrap();
        for (code, number) in expect {
            assert!(
                failures.iter().any(|f| f["code"] == *code && f["number"] == *number),
                "{name}: no {code} for {number}: {r:#}"
            );
        }
        assert!(failures.iter().all(|f| f["number"].is_string()), "{name}: every failure names its case: {r:#}");
        let text = audit_text(&copy, None, &["verify", "--bundle", bundle]);
        assert_eq!(text.code, 1);
        assert!(text.stdout.contains("发现") && text.stdout.contains(named), "{name}:\n{}", text.stdout);
        assert_for_people(&text);
        failures.clone()
    };
    let flipped = check(
        "flipped-change",
        &first,
        &|c| {
            let id = case_rowid(c, &first);
            let mut snap: Vec<u8> =
                c.query_row("SELECT snapshot FROM docs WHERE case_rowid = ?1", [id], |r| r.get(0)).unwrap();
            let mid = snap.len() / 2;
            snap[mid] ^= 0x20;
            c.execute("UPDATE docs SET snapshot = ?1 WHERE case_rowid = ?2", rusqlite::params![snap, id]).unwrap();
        },
        &[],
    );
    assert!(
        flipped.iter().any(|f| f["number"] == first.as_str()
            && matches!(f["code"].as_str(), Some("damaged-document" | "log-row-unresolved" | "change-not-in-log"))),
        "{flipped:#?}"
    );
    let signature = check(
        "flipped-signature",
        &second,
        &|c| {
            let id = case_rowid(c, &second);
            let (seq, mut sig): (i64, Vec<u8>) = c
                .query_row("SELECT log_seq, signature FROM changes WHERE case_rowid = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            sig[5] ^= 0x01;
            c.execute("UPDATE changes SET signature = ?1 WHERE log_seq = ?2", rusqlite::params![sig, seq]).unwrap();
        },
        &[("bad-signature", &second)],
    );
    assert!(signature[0]["change"].is_string() && signature[0]["log_seq"].is_i64());
    check(
        "edited-row",
        &first,
        &|c| {
            c.execute("UPDATE cases SET title = '已调解完毕' WHERE number = ?1", [&first]).unwrap();
        },
        &[("projection-mismatch", &first)],
    );
    let removed = check(
        "removed-grant",
        &first,
        &|c| {
            c.execute("DELETE FROM grants WHERE subject = 'd07'", []).unwrap();
        },
        &[("no-grant", &first), ("no-grant", &second)],
    );
    assert_eq!(removed.len(), 3, "every change the grant signed, each named: {removed:#?}");
    assert!(removed.iter().all(|f| f["change"].is_string()));
}

#[test]
fn audit_compare_names_what_a_restored_township_lacks_and_nothing_after_it_syncs() {
    let county = County::new();
    let county_server = county.server("county", "county", COUNTY, None, None);
    let config = write_config(county.dir.path(), None);
    let mut township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&config));
    let tw = township.addr.to_string();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let x = a.new_case()["number"].as_str().unwrap().to_owned();
    sync_json(&a, &["--server", &tw]);
    let county_data = county.data("county");
    let held = |data: &Path| -> u64 {
        let mut cmd = fq_command();
        cmd.arg("--data-dir").arg(data).args(["--json", "case", "list"]);
        run(cmd).json()["count"].as_u64().unwrap()
    };
    eventually("the county to hold the case", CONVERGE, || held(&county_data) == 1);

    // The township is backed up, then works on: a note on X and a new case Y reach the county.
    let town = county.data("tw-101");
    township.signal("TERM");
    township.wait_exit(Duration::from_secs(20)).expect("the township stops");
    let backup = county.path("tw-101-backup");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::copy(town.join("ledger.db"), backup.join("ledger.db")).unwrap();
    let mut township = county.start("tw-101", "township", &tw, Some(county_server.addr), Some(&config));
    let before = open_ledger_read_only(&a.ledger_file()).log_head().unwrap();
    a.json(&["case", "note", &x, "双方到场"]);
    let y = a.json(&["case", "new", "--category", "debt", "--title", "拖欠工资"])["case"]["number"]
        .as_str()
        .unwrap()
        .to_owned();
    sync_json(&a, &[]);
    eventually("the county to hold the new work", CONVERGE, || held(&county_data) == 2);
    let lost: Vec<String> = open_ledger_read_only(&a.ledger_file())
        .changes_since(before, 100)
        .unwrap()
        .iter()
        .map(|c| fq_core::audit::hex(&c.hash))
        .collect();
    assert_eq!(lost.len(), 2);

    // Restored from the older copy, and not running: compare with the county names exactly those.
    township.signal("TERM");
    township.wait_exit(Duration::from_secs(20)).expect("the township stops");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(town.join(format!("ledger.db{suffix}")));
    }
    std::fs::copy(backup.join("ledger.db"), town.join("ledger.db")).unwrap();
    let bundle = county.path("tw-101.bundle.json");
    let args = ["compare", "--server", &county_server.addr.to_string(), "--bundle", bundle.to_str().unwrap()];
    let (code, r) = audit_json(&town, "audit-compare.v1.schema.json", &args);
    assert_eq!((code, &r["same"]), (1, &Value::Bool(false)), "{r:#}");
    let mut lacked: Vec<String> = r["report"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            assert!(c["there_lacks"].as_array().unwrap().is_empty(), "the county lacks nothing: {c:#}");
            c["here_lacks"].as_array().unwrap().iter().map(|l| l["hash"].as_str().unwrap().to_owned())
        })
        .collect();
    lacked.sort();
    let mut want = lost.clone();
    want.sort();
    assert_eq!(lacked, want, "exactly the changes made after the backup: {r:#}");
    let numbers: Vec<&str> =
        r["report"]["cases"].as_array().unwrap().iter().filter_map(|c| c["number"].as_str()).collect();
    assert!(numbers.contains(&x.as_str()) && numbers.contains(&y.as_str()), "{r:#}");
    assert!(r["report"]["bytes_in"].as_u64().unwrap() < 10_000, "{r:#}");
    let text = audit_text(&town, None, &args);
    assert_eq!(text.code, 1);
    for words in ["本机缺 1 条", "本机没有这件案件", "张三（调解员）", "调解记录", &x, &y] {
        assert!(text.stdout.contains(words), "{words} missing:\n{}", text.stdout);
    }
    assert_for_people(&text);
    let en = audit_text(&town, Some("en"), &args);
    assert!(en.stdout.contains("missing here (1)"), "{en:?}");

    // Running again, the township recovers from the county by digest; then nothing differs.
    let _township = county.start("tw-101", "township", &tw, Some(county_server.addr), Some(&config));
    eventually("the restored township to catch up", CONVERGE, || held(&town) == 2);
    eventually("compare to find nothing", CONVERGE, || audit_json(&town, "audit-compare.v1.schema.json", &args).0 == 0);
    let text = audit_text(&town, None, &args);
    assert!(text.stdout.contains("完全一致"), "{text:?}");
    // A device compares with its township, with its own certificate, read-only on both sides.
    let before = std::fs::read(a.ledger_file()).unwrap();
    let (code, r) = audit_json(&a.data_dir(), "audit-compare.v1.schema.json", &["compare"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read(a.ledger_file()).unwrap(), before, "compare wrote nothing on the device");
    let status_out = fq_server_run(&["status", "--data-dir", town.to_str().unwrap(), "--json"]);
    assert_eq!(status_out.code, 0);
}
