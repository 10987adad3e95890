//! Sync by file with the real binaries (issue 12): `fq sync --to-file` on a device with no
//! network, `fq-server import` into the running township server, `fq sync --from-file` with
//! the answer; and each kind of file the township refuses, with nothing of it applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Fq, ID_OK, Run};
use crate::process::{ServerProcess, write_config};
use crate::sync::{
    COUNTY, County, TOWNSHIP, VILLAGE_A, VILLAGE_B, bulk_changes, enrolled_device, eventually, file_bytes,
    fq_server_run, rows, status, sync,
};

/// `fq-server import --data-dir DATA FILE --answer ANSWER`, with extra arguments first.
fn import(data: &Path, file: &Path, answer: &Path, extra: &[&str]) -> Run {
    let mut args = extra.to_vec();
    args.extend(["import", "--data-dir", data.to_str().unwrap(), file.to_str().unwrap()]);
    args.extend(["--answer", answer.to_str().unwrap()]);
    fq_server_run(&args)
}

/// A township with no county, and a mediator of village A who synced once over the network
/// (as when the bundle is handed over at the office), so it knows the township's key.
struct Office {
    county: County,
    township: ServerProcess,
    device: Fq,
}

impl Office {
    fn new() -> Self {
        let county = County::new();
        let township = county.server("tw-101", "township", TOWNSHIP, None, None);
        let device = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
        let first = sync(&device, &["--server", &township.addr.to_string()]);
        assert_eq!(first.code, 0, "{first:?}");
        Office { county, township, device }
    }

    fn data(&self) -> PathBuf {
        self.county.data("tw-101")
    }

    fn cases_on_township(&self) -> u64 {
        status(&self.data())["counts"]["cases"].as_u64().unwrap()
    }

    /// `fq sync --to-file` on the device; returns the file.
    fn write_file(&self, name: &str) -> PathBuf {
        let out = self.device.path(name);
        let wrote = self.device.json(&["sync", "--to-file", out.to_str().unwrap()]);
        assert_eq!(wrote["ok"], true, "{wrote}");
        out
    }

    /// Imports a damaged copy of the device's file and checks that nothing of it was applied.
    fn refuses_whole(&self, bytes: &[u8], lang: &[&str], words: &str) {
        let bad = self.device.path("bad.fqs");
        std::fs::write(&bad, bytes).unwrap();
        let answer = self.device.path("answer.fqs");
        let before = self.cases_on_township();
        let refused = import(&self.data(), &bad, &answer, lang);
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(refused.stderr.contains(words), "{refused:?}");
        assert_eq!(self.cases_on_township(), before, "nothing applied");
        assert!(!answer.exists(), "no answer for a refused file");
    }
}

#[test]
fn usb_round_trip_reaches_the_county_and_brings_the_village_down() {
    let county = County::new();
    let county_server = county.server("county", "county", COUNTY, None, None);
    let config = write_config(county.dir.path(), None);
    let township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&config));
    let tw = township.addr.to_string();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let b = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    // At the township office: one sync over the network teaches the device the township's key.
    assert_eq!(sync(&a, &["--server", &tw]).code, 0);
    b.new_case();
    assert_eq!(sync(&b, &["--server", &tw]).code, 0);
    // Then a village day with no signal: 20 cases, 50 edits.
    a.new_case();
    bulk_changes(&a.ledger_file(), VILLAGE_A, 10, 2);
    bulk_changes(&a.ledger_file(), VILLAGE_A, 9, 1);
    let first = a.json(&["case", "list"])["cases"][0]["id"].as_str().unwrap().to_owned();
    a.json(&["case", "note", &first, "双方同意再谈一次"]);
    let out = a.path("d07.fqs");
    let wrote = a.json(&["sync", "--to-file", out.to_str().unwrap()]);
    assert_eq!(wrote["waiting"]["normal"], 50, "{wrote}");
    let bytes = file_bytes(&out);
    assert!(!bytes.windows(ID_OK.len()).any(|w| w == ID_OK.as_bytes()), "no ID number in the clear");
    // Chinese by default: what to do next.
    let text = a.run(&["sync", "--to-file", a.path("again.fqs").to_str().unwrap()]);
    assert!(text.stdout.contains("请把文件带到乡镇导入"), "{text:?}");

    let answer = a.path("answer.fqs");
    let done = import(&county.data("tw-101"), &out, &answer, &["--json"]);
    assert_eq!(done.code, 0, "{done:?}");
    let done = done.json();
    assert_eq!(done["received"], 50, "{done}");
    assert_eq!(done["replayed"], false, "{done}");
    eprintln!("village day (20 cases, 50 edits): file {} B, answer {} B", bytes.len(), file_bytes(&answer).len());
    assert_eq!(rows(&county.data("tw-101"), VILLAGE_A).len(), 21);
    eventually("the county to receive the cases", Duration::from_secs(60), || {
        rows(&county.data("county"), VILLAGE_A).len() == 21
    });

    let back = a.json(&["sync", "--from-file", answer.to_str().unwrap()]);
    assert_eq!(back["waiting"]["urgent"], 0, "{back}");
    assert_eq!(back["waiting"]["normal"], 0, "nothing pending: {back}");
    assert_eq!(back["received"], 1, "the other device's case came down: {back}");
    assert_eq!(a.case_count(), 21);
    // Nothing is waiting any more: the next file for the township is empty of changes.
    let next = a.json(&["sync", "--to-file", a.path("next.fqs").to_str().unwrap()]);
    assert_eq!(next["waiting"]["normal"], 0, "{next}");
    let text = a.run(&["sync", "--from-file", answer.to_str().unwrap(), "--lang", "en"]);
    assert!(text.stdout.contains("imported before"), "{text:?}");
}

#[test]
fn usb_file_with_a_flipped_byte_is_refused_whole() {
    let office = Office::new();
    office.device.new_case();
    let mut bytes = file_bytes(&office.write_file("d07.fqs"));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    office.refuses_whole(&bytes, &[], "已损坏或不完整");
    // The device refuses a damaged answer the same way: its change stays waiting.
    let file = office.device.path("d07.fqs");
    let answer = office.device.path("answer.fqs");
    assert_eq!(import(&office.data(), &file, &answer, &[]).code, 0);
    let mut back = file_bytes(&answer);
    let last = back.len() - 1;
    back[last] ^= 0x80;
    std::fs::write(&answer, &back).unwrap();
    let refused = office.device.run(&["sync", "--from-file", answer.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("已损坏或不完整") && refused.stderr.contains("本机数据没有改动"), "{refused:?}");
    let still = office.device.json(&["sync", "--to-file", office.device.path("again.fqs").to_str().unwrap()]);
    assert_eq!(still["waiting"]["normal"], 1, "{still}");
}

#[test]
fn usb_truncated_file_is_refused_whole_and_a_stopped_server_is_named() {
    let office = Office::new();
    office.device.new_case();
    let file = office.write_file("d07.fqs");
    let bytes = file_bytes(&file);
    office.refuses_whole(&bytes[..bytes.len() - 10], &["--lang", "en"], "damaged or incomplete");
    office.refuses_whole(&bytes[..bytes.len() / 3], &[], "已损坏或不完整");
    // With the server stopped, the operator is told to start it; nothing is written.
    let Office { county, township, device } = office;
    drop(township);
    let answer = device.path("answer.fqs");
    let stopped = import(&county.data("tw-101"), &file, &answer, &[]);
    assert_eq!(stopped.code, 1, "{stopped:?}");
    assert!(stopped.stderr.contains("没有正在运行的服务器") && stopped.stderr.contains("启动"), "{stopped:?}");
    assert!(!answer.exists());
}

#[test]
fn usb_replayed_file_is_a_no_op() {
    let office = Office::new();
    office.device.new_case();
    let file = office.write_file("d07.fqs");
    let data = office.data();
    let answer = office.device.path("answer.fqs");
    let first = import(&data, &file, &answer, &["--json"]).json();
    assert_eq!(first["received"], 1, "{first}");
    let again = import(&data, &file, &office.device.path("answer2.fqs"), &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("以前已经导入过"), "{again:?}");
    assert_eq!(office.cases_on_township(), 1);
    // The answer imported twice on the device: the second time changes nothing.
    let back = office.device.json(&["sync", "--from-file", answer.to_str().unwrap()]);
    assert_eq!(back["waiting"]["normal"], 0, "{back}");
    let twice = office.device.json(&["sync", "--from-file", answer.to_str().unwrap()]);
    assert_eq!(twice["replayed"], true, "{twice}");
    assert_eq!(twice["received"], 0, "{twice}");
    assert_eq!(office.device.case_count(), 1);
}

#[test]
fn usb_file_for_another_township_is_refused() {
    let office = Office::new();
    let elsewhere = office.county.server("tw-102", "township", "532924102", None, None);
    office.device.new_case();
    let file = office.write_file("d07.fqs");
    let answer = office.device.path("answer.fqs");
    let refused = import(&office.county.data("tw-102"), &file, &answer, &[]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("不是给本服务器的"), "{refused:?}");
    assert_eq!(status(&office.county.data("tw-102"))["counts"]["cases"], 0, "nothing applied");
    assert!(!answer.exists());
    drop(elsewhere);
}

#[test]
fn usb_file_carrying_a_change_outside_the_authors_scope_applies_none_of_it() {
    let office = Office::new();
    // A case of village B lands in A's ledger (a restored backup of the wrong phone...);
    // A signs it when it writes the file.
    let b = Fq::new();
    b.json(&["init", "--village", VILLAGE_B, "--name", "李四", "--role", "mediator"]);
    b.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    let mut from = crate::harness::open_ledger(&b.ledger_file());
    let mut into = crate::harness::open_ledger(&office.device.ledger_file());
    let changes = from.changes_since(0, 100).unwrap();
    into.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
    drop((from, into));
    let file = office.write_file("d07.fqs");
    let answer = office.device.path("answer.fqs");
    let done = import(&office.data(), &file, &answer, &[]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.contains("超出了发送设备的负责范围"), "{done:?}");
    let s = status(&office.data());
    assert_eq!(s["counts"]["cases"], 0, "nothing applied: {s:#}");
    assert!(s["refusals"][0]["detail"].as_str().unwrap().contains("out-of-scope"), "{s:#}");
    // The answer tells the device, which stops offering the change.
    let back = office.device.json(&["sync", "--from-file", answer.to_str().unwrap()]);
    assert_eq!(back["refused_by_peer"], 1, "{back}");
    assert_eq!(back["waiting"]["normal"], 0, "{back}");
}

#[test]
fn usb_file_goes_device_to_device_and_on_to_the_township() {
    let office = Office::new();
    let tw = office.township.addr.to_string();
    let grid = enrolled_device(&office.county, "d08", "grid-worker", VILLAGE_A, "李四");
    grid.new_case();
    assert_eq!(sync(&grid, &["--server", &tw]).code, 0);
    // The mediator learns the grid worker's key with its case.
    assert_eq!(sync(&office.device, &[]).code, 0);
    // They meet in the village with no signal.
    office.device.new_case();
    let file = office.device.path("for-d08.fqs");
    let wrote = office.device.json(&["sync", "--to-file", file.to_str().unwrap(), "--for", "d08"]);
    assert_eq!(wrote["for"]["id"], "d08", "{wrote}");
    let back = grid.path("back.fqs");
    let took = grid.json(&["sync", "--from-file", file.to_str().unwrap(), "--answer", back.to_str().unwrap()]);
    assert_eq!(took["received"], 1, "{took}");
    assert_eq!(grid.case_count(), 2);
    let acked = office.device.json(&["sync", "--from-file", back.to_str().unwrap()]);
    assert_eq!(acked["refused_by_peer"], 0, "{acked}");
    // The grid worker carries the mediator's case on to the township, its signature intact.
    assert_eq!(office.cases_on_township(), 1);
    assert_eq!(sync(&grid, &[]).code, 0);
    assert_eq!(office.cases_on_township(), 2);
    assert_eq!(status(&office.data())["refusals"].as_array().map_or(0, Vec::len), 0);
}
