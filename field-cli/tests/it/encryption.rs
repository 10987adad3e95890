//! Encryption at rest (ADR 10), tried as a thief would: the files of a data directory read
//! raw, inflated at every offset, opened with SQLite without the key; and what `fq` does
//! without a passphrase, with a wrong one, on `passphrase change` and on `fq encrypt`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress};
use fq_core::case::{AdminCode, Role};
use fq_core::clock::SystemClock;
use fq_core::ledger::{IncomingChange, InitOptions, Ledger, LedgerOptions, Tier};
use serde_json::Value;

use crate::harness::{Fq, PASSPHRASE, PASSPHRASE_ENV, VILLAGE, open_ledger, run};

/// The parties the tests write: names, ID numbers and phones that must never be readable.
pub const PARTIES: [(&str, &str, &str); 3] = [
    ("欧阳秀英", "532924198001011230", "13912345678"),
    ("司马建国", "532924197506150020", "15887654321"),
    ("诸葛春花", "532924199212310016", "18608721234"),
];

/// Every name, ID number and phone of [`PARTIES`].
pub fn needles() -> Vec<&'static str> {
    PARTIES.iter().flat_map(|(n, i, p)| [*n, *i, *p]).collect()
}

/// Writes one case per party of [`PARTIES`] with `fq`, plus a note and an edit.
pub fn write_cases(fq: &Fq) -> Vec<String> {
    let mut numbers = Vec::new();
    for (i, (name, id, phone)) in PARTIES.iter().enumerate() {
        let party = format!("{name},{id},{phone}");
        let case =
            fq.json(&["case", "new", "--category", "neighbor", "--title", &format!("第{i}件纠纷"), "--party", &party]);
        let number = case["case"]["number"].as_str().unwrap().to_owned();
        fq.json(&["case", "note", &number, &format!("{name}到场，电话{phone}")]);
        numbers.push(number);
    }
    numbers
}

/// Largest output taken from one inflate attempt: enough to hold a snapshot's text.
const INFLATE_CAP: usize = 256 * 1024;

/// Where any needle can be read in the files of `dir`: in the raw bytes, or in what a raw
/// DEFLATE or a zlib stream starting at any offset inflates to (Automerge compresses
/// snapshots with DEFLATE). Empty: nothing readable.
pub fn readable(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut out = vec![0u8; INFLATE_CAP];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for n in needles {
            if contains(&bytes, n.as_bytes()) {
                found.push(format!("{name}: {n} in the raw bytes"));
            }
        }
        for (zlib, kind) in [(false, "raw deflate"), (true, "zlib")] {
            let mut d = Decompress::new(zlib);
            for offset in 0..bytes.len() {
                // A zlib stream starts with a header whose check bits hold: skip the rest.
                if zlib
                    && (bytes[offset] & 0x0f != 8
                        || bytes
                            .get(offset + 1)
                            .is_none_or(|f| (u16::from(bytes[offset]) << 8 | u16::from(*f)) % 31 != 0))
                {
                    continue;
                }
                d.reset(zlib);
                let _ = d.decompress(&bytes[offset..], &mut out, FlushDecompress::Finish);
                let made = usize::try_from(d.total_out()).unwrap().min(out.len());
                if made < 8 {
                    continue;
                }
                for n in needles {
                    if contains(&out[..made], n.as_bytes()) {
                        found.push(format!("{name}: {n} in {kind} at offset {offset}"));
                    }
                }
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Files of `dir` that are not mode 0600, and the directory itself if it is not 0700.
pub fn loose_modes(dir: &Path) -> Vec<String> {
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut loose = Vec::new();
    if mode(dir) != 0o700 {
        loose.push(format!("{}: {:o}", dir.display(), mode(dir)));
    }
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && mode(&path) != 0o600 {
            loose.push(format!("{}: {:o}", path.display(), mode(&path)));
        }
    }
    loose
}

/// What SQLite says when it opens `file` without a key and reads it.
fn sqlite_without_key(file: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)) {
        Ok(n) => format!("opened, {n} objects"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn encryption_leaves_no_party_readable_in_any_file() {
    let fq = Fq::new();
    fq.init_mediator();
    write_cases(&fq);
    // A writer holding the ledger open keeps its -wal and -shm files on disk: read them too.
    let mut ledger = open_ledger(&fq.ledger_file());
    let id = ledger.list(&Default::default()).unwrap()[0].id;
    ledger.add_note(id, &format!("{}再次到场", PARTIES[0].0)).unwrap();
    let files: Vec<String> =
        fs::read_dir(fq.data_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.iter().any(|f| f.ends_with("-wal")), "the WAL is there to be read: {files:?}");
    let found = readable(&fq.data_dir(), &needles());
    assert!(found.is_empty(), "personal data readable: {found:?}");
    assert_eq!(sqlite_without_key(&fq.ledger_file()), "file is not a database");
    drop(ledger);
}

#[test]
fn data_dir_is_0700_and_every_file_0600() {
    let fq = Fq::new();
    fq.init_mediator();
    fq.new_case();
    let ledger = open_ledger(&fq.ledger_file());
    assert!(fq.data_dir().join("ledger.db-wal").exists() && fq.data_dir().join("ledger.db-shm").exists());
    assert_eq!(loose_modes(&fq.data_dir()), Vec::<String>::new());
    drop(ledger);
    assert_eq!(loose_modes(&fq.data_dir()), Vec::<String>::new());
}

#[test]
fn case_show_without_passphrase_exits_2_and_says_how_to_give_one() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let mut cmd = fq.command(&["case", "show", &number, "--unmasked"]);
    cmd.env_remove(PASSPHRASE_ENV);
    let out = run(cmd);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.is_empty(), "nothing shown: {out:?}");
    for how in ["终端", "--passphrase-file", "FQ_PASSPHRASE", "chmod 600"] {
        assert!(out.stderr.contains(how), "says {how}: {out:?}");
    }
    let mut cmd = fq.command(&["--json", "case", "list"]);
    cmd.env_remove(PASSPHRASE_ENV);
    assert_eq!(run(cmd).error_json()["error"]["kind"], "no-passphrase");
}

#[test]
fn case_show_with_wrong_passphrase_exits_2_with_a_chinese_message() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let mut cmd = fq.command(&["case", "show", &number]);
    cmd.env(PASSPHRASE_ENV, "不是这个口令啊");
    let out = run(cmd);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("口令不对（已连续输错 1 次，还能再试 9 次）"), "{out:?}");
    // The right one resets the count.
    assert_eq!(fq.json(&["case", "show", &number])["number"], number.as_str());
    let mut cmd = fq.command(&["--lang", "en", "case", "show", &number]);
    cmd.env(PASSPHRASE_ENV, "不是这个口令啊");
    let out = run(cmd);
    assert!(out.stderr.contains("wrong passphrase (1 wrong in a row, 9 tries left)"), "{out:?}");
}

#[test]
fn passphrase_change_rewraps_the_key_and_leaves_the_ledger_bytes() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let before = fs::read(fq.ledger_file()).unwrap();
    let key_before = fs::read(fq.data_dir().join("ledger.key")).unwrap();
    let new_file = private_file(&fq, "new-pass", "新口令：村口老槐树下");
    let out = fq.run(&["passphrase", "change", "--new-passphrase-file", new_file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("口令已更改"), "{out:?}");
    assert_eq!(fs::read(fq.ledger_file()).unwrap(), before, "the ledger file was not rewritten");
    assert_ne!(fs::read(fq.data_dir().join("ledger.key")).unwrap(), key_before, "the key was re-wrapped");
    let old = run(fq.command(&["case", "show", &number]));
    assert_eq!(old.code, 2, "the old passphrase no longer opens it: {old:?}");
    assert!(old.stderr.contains("口令不对"), "{old:?}");
    let mut cmd = fq.command(&["--passphrase-file", new_file.to_str().unwrap(), "--json", "case", "show", &number]);
    cmd.env_remove(PASSPHRASE_ENV);
    assert_eq!(run(cmd).json()["number"], number.as_str());
    assert_eq!(fs::read(fq.ledger_file()).unwrap(), before);
}

#[test]
fn passphrase_file_readable_by_others_is_refused_with_chmod_600() {
    let fq = Fq::new();
    fq.init_mediator();
    let file = private_file(&fq, "pass", PASSPHRASE);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = fq.run(&["--passphrase-file", file.to_str().unwrap(), "case", "list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(&format!("chmod 600 {}", file.display())), "{out:?}");
}

#[test]
fn init_refuses_a_six_digit_pin_and_leaves_nothing() {
    let fq = Fq::new();
    let mut cmd = fq.command(&["init", "--village", VILLAGE, "--name", "张三", "--role", "mediator"]);
    cmd.env(PASSPHRASE_ENV, "123456");
    let out = run(cmd);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("口令太简单"), "{out:?}");
    assert!(!fq.data_dir().exists(), "nothing left behind");
}

#[test]
fn encrypt_keeps_every_case_change_and_audit_record_of_a_plain_ledger() {
    let fq = Fq::new();
    // A ledger as a build before encryption made it: plain, world-readable.
    fs::create_dir_all(fq.data_dir()).unwrap();
    let init = InitOptions {
        tier: Tier::Device,
        name: "张三".into(),
        role: Role::Mediator,
        scope: AdminCode::parse(VILLAGE).unwrap(),
        grid: None,
    };
    let mut plain = Ledger::init(&fq.ledger_file(), init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    fs::set_permissions(fq.ledger_file(), fs::Permissions::from_mode(0o644)).unwrap();
    // One refused change, for the audit log.
    let junk = IncomingChange {
        case: fq_core::case::CaseId::from_bytes([7; 16]),
        bytes: vec![1, 2, 3],
        signer: None,
        signature: None,
    };
    plain.apply_changes(None, vec![junk]).unwrap();
    drop(plain);
    let numbers = write_cases(&fq);
    let warned = fq.run(&["case", "list"]);
    assert_eq!(warned.code, 0);
    assert!(warned.stderr.contains("没有加密") && warned.stderr.contains("fq encrypt"), "{warned:?}");
    assert_eq!(warned.stderr.lines().count(), 1, "one line: {warned:?}");
    assert!(!readable(&fq.data_dir(), &needles()).is_empty(), "the scan finds the parties in a plain ledger");

    let snapshot = |fq: &Fq| -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        all.insert("list".into(), fq.json(&["case", "list"]));
        all.insert("audit".into(), fq.json(&["audit", "--limit", "1000"]));
        for n in &numbers {
            all.insert(n.clone(), fq.json(&["case", "show", n, "--history", "--unmasked"]));
        }
        all
    };
    let before = snapshot(&fq);
    assert!(before["audit"]["entries"].as_array().is_some_and(|a| !a.is_empty()), "{:#}", before["audit"]);

    let out = fq.run(&["encrypt"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("台账已加密：3 件案件"), "{out:?}");
    assert_eq!(snapshot(&fq), before, "every case, change and audit record kept");
    let after = fq.run(&["case", "list"]);
    assert!(after.stderr.is_empty(), "no warning once encrypted: {after:?}");
    assert_eq!(readable(&fq.data_dir(), &needles()), Vec::<String>::new());
    assert_eq!(sqlite_without_key(&fq.ledger_file()), "file is not a database");
    assert_eq!(loose_modes(&fq.data_dir()), Vec::<String>::new());
    let again = fq.run(&["--json", "encrypt"]);
    assert_eq!(again.error_json()["error"]["kind"], "already-encrypted");
}

/// A file beside the data directory holding `text`, mode 0600.
pub fn private_file(fq: &Fq, name: &str, text: &str) -> PathBuf {
    let path = fq.path(name);
    fs::write(&path, format!("{text}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn wipe_after_sets_how_many_wrong_passphrases_erase_the_ledger() {
    let fq = Fq::new();
    let out =
        fq.run(&["--json", "init", "--village", VILLAGE, "--name", "张三", "--role", "mediator", "--wipe-after", "2"]);
    assert_eq!(out.error_json()["error"]["kind"], "invalid-number", "below 3 is refused");
    assert!(!fq.data_dir().exists());
    fq.json(&["init", "--village", VILLAGE, "--name", "张三", "--role", "mediator", "--wipe-after", "3"]);
    fq.new_case();
    let wrong = |n: u32| {
        let mut cmd = fq.command(&["case", "list"]);
        cmd.env(PASSPHRASE_ENV, format!("猜错的口令第{n}次"));
        run(cmd)
    };
    assert!(wrong(1).stderr.contains("警告：再输错 2 次"), "warned from the first try of three");
    assert!(wrong(2).stderr.contains("警告：再输错 1 次"));
    let last = wrong(3);
    assert_eq!(last.code, 2);
    assert!(last.stderr.contains("已经清除"), "{last:?}");
    assert!(!fq.ledger_file().exists() && !fq.data_dir().join("ledger.key").exists());
}
