//! A process killed at any moment loses no operation it reported committed.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use fq_core::store::{Durability, OpenMode, Store};

use crate::harness::{Fq, RUN_TIMEOUT, wait_bounded};

/// Notes attempted; each run is killed after a pseudo-random delay.
const ATTEMPTS: u64 = 30;
/// Longest delay before the kill; a `case note` takes about 25 ms here.
const MAX_KILL_DELAY_MS: u64 = 40;

/// A small fixed-seed generator: the same delays on every run of the test.
fn delays(mut state: u64) -> impl Iterator<Item = u64> {
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % (MAX_KILL_DELAY_MS + 1)
    })
}

#[test]
fn case_note_killed_at_random_loses_no_committed_note() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    let mut committed = BTreeSet::new();
    let mut killed = 0;
    for (i, delay) in (0..ATTEMPTS).zip(delays(0x5329_2410_1201)) {
        let text = format!("note-{i:02}");
        let mut child =
            fq.command(&["case", "note", &number, &text]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            killed += 1;
        }
        let status = wait_bounded(&mut child, RUN_TIMEOUT);
        if status.success() {
            committed.insert(text);
        }
    }
    eprintln!("{} of {ATTEMPTS} notes reported committed, {killed} runs killed", committed.len());
    // The ledger still takes writes after the kills.
    fq.json(&["case", "note", &number, "after"]);
    committed.insert("after".to_owned());

    let shown = fq.json(&["case", "show", &number, "--history"]);
    let notes: BTreeSet<String> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "note")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = committed.difference(&notes).collect();
    assert!(lost.is_empty(), "committed notes lost: {lost:?}");
    assert!(notes.iter().all(|n| n == "after" || n.starts_with("note-")), "{notes:?}");
    assert_eq!(fq.case_count(), 1);

    let ledger = crate::harness::open_ledger_read_only(&fq.ledger_file());
    ledger.integrity_check().unwrap();
    let [cases, changes, pending, _audit] = ledger.counts().unwrap();
    assert_eq!((cases, pending), (1, 0));
    // The change log holds exactly the changes in the document: create + each note.
    let history = shown["history"].as_array().unwrap().len();
    assert_eq!(changes, i64::try_from(history).unwrap());
    assert_eq!(history, 1 + notes.len());
}

#[test]
fn read_only_commands_work_while_another_process_writes() {
    let fq = Fq::new();
    fq.init_mediator();
    let number = fq.new_case()["number"].as_str().unwrap().to_owned();
    // Another writer (a sync server, say) holds the write lock with uncommitted changes.
    let mut store = Store::open_with_key(
        &fq.ledger_file(),
        OpenMode::ReadWrite,
        Durability::Full,
        crate::harness::key_for(&fq.ledger_file()).as_ref(),
    )
    .unwrap();
    let tx = store.transaction().unwrap();
    tx.set_meta("uncommitted", "yes").unwrap();
    assert_eq!(fq.case_count(), 1);
    assert_eq!(fq.json(&["case", "show", &number])["number"], number.as_str());
    assert_eq!(fq.json(&["export", "--format", "json"])["count"], 1);
    fq.json(&["audit"]);
    drop(tx);
}

/// Issue 4: a full disk (here a file-size limit) gives a clear error, exit 1,
/// and damages nothing already written.
#[test]
fn case_writes_on_a_full_disk_fail_clearly_and_keep_what_was_saved() {
    let fq = Fq::new();
    fq.init_mediator();
    let mut saved = 0;
    for _ in 0..3 {
        fq.new_case();
        saved += 1;
    }
    let before = fq.json(&["case", "list"])["count"].as_u64().unwrap();
    assert_eq!(before, saved);
    // A file-size limit just above the ledger's size: the next big write fails
    // with EFBIG (SIGXFSZ ignored, as a full disk fails a write with ENOSPC).
    let size: u64 =
        std::fs::read_dir(fq.data_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).max().unwrap();
    let limit_blocks = size / 512 + 8;
    // Varied characters: snapshots are DEFLATEd, and a repeated phrase would
    // compress to nothing and never reach the limit.
    let mut x: u32 = 12345;
    let long: String = (0..8_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            char::from_u32(0x4E00 + (x >> 16) % 0x5000).unwrap_or('字')
        })
        .collect();
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_blocks}; exec \"$0\" --data-dir \"$1\" --lang zh case new --category debt --title 借款纠纷 --description \"$2\""
    );
    let mut failed = None;
    for _ in 0..20 {
        let mut cmd = Command::new("sh");
        cmd.env(crate::harness::PASSPHRASE_ENV, crate::harness::PASSPHRASE);
        cmd.arg("-c").arg(&script).arg(crate::harness::FQ).arg(fq.data_dir()).arg(&long);
        let out = crate::harness::run(cmd);
        assert!(!out.stderr.contains("panicked"), "{out:?}");
        if out.code != 0 {
            failed = Some(out);
            break;
        }
        saved += 1;
    }
    let out = failed.expect("the file-size limit was never hit");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("存储空间已满"), "a clear message: {out:?}");
    // Without the limit, everything saved before is there and the file is sound.
    let after = fq.json(&["case", "list"])["count"].as_u64().unwrap();
    assert_eq!(after, saved);
    let l = crate::harness::open_ledger_read_only(&fq.ledger_file());
    l.integrity_check().unwrap();
    fq.new_case();
}
