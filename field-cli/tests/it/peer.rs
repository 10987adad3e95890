//! Device to device over the local network with the real binaries (issue 12, item 2; ADR 43):
//! `fq serve` on one device and `fq sync --peer` on the other exchange cases with no server in
//! between, each receiving only what lies in its own area; what one learnt travels on to the
//! township and the county with its author's signature. Devices of another village, servers
//! given as devices and devices given as servers are refused, with nothing applied.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Fq, RUN_TIMEOUT, Run, open_ledger, run, wait_bounded};
use crate::language::english_words;
use crate::process::write_config;
use crate::schema::assert_valid;
use crate::sync::{
    CONVERGE, COUNTY, County, TOWNSHIP, VILLAGE_A, VILLAGE_B, enrolled_device, eventually, on_server, rows, status,
    sync,
};

/// A running `fq serve --listen 127.0.0.1:0`, its output read line by line as it comes.
struct Serving {
    child: Child,
    /// The address it shows, for `fq sync --peer`.
    addr: String,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Serving {
    /// Starts `fq [--json] serve --listen 127.0.0.1:0 ARGS` on `fq`'s ledger and waits (bounded)
    /// for the address it shows.
    fn start(fq: &Fq, json: bool, args: &[&str]) -> Serving {
        let mut all = if json { vec!["--json"] } else { Vec::new() };
        all.extend(["serve", "--listen", "127.0.0.1:0"]);
        all.extend_from_slice(args);
        let mut cmd = fq.command(&all);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Some(thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        let mut serving = Serving { child, addr: String::new(), lines, seen: Vec::new(), stderr };
        let first = serving.next_line();
        serving.addr = if json {
            let value: Value = serde_json::from_str(&first).unwrap();
            assert_valid("serve.v1.schema.json", &value);
            value["address"].as_str().unwrap().to_owned()
        } else {
            let (_, rest) = first.split_once("127.0.0.1:").unwrap_or_else(|| panic!("no address in {first:?}"));
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            format!("127.0.0.1:{port}")
        };
        serving
    }

    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(RUN_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(_) => {
                let _ = self.child.kill();
                let stderr = self.stderr();
                panic!("fq serve said nothing more; so far: {:?}; stderr: {stderr}", self.seen)
            }
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default()
    }

    /// Waits (bounded) for the process to end; returns how it ended and everything it printed.
    fn finish(mut self) -> Run {
        let status = wait_bounded(&mut self.child, RUN_TIMEOUT);
        self.seen.extend(self.lines.try_iter());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        let stderr = self.stderr();
        let run = Run { code: status.code().unwrap_or(-1), stdout: self.seen.join("\n"), stderr };
        assert!(!run.stderr.contains("panicked"), "fq serve panicked: {run:?}");
        run
    }

    /// Sends SIGTERM (as Ctrl-C would SIGINT) and waits for a clean end.
    fn stop(self) -> Run {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.finish()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON lines `fq --json serve` printed, each checked against its schema.
fn events(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| {
            let value: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert_valid("serve.v1.schema.json", &value);
            value
        })
        .collect()
}

/// `fq sync --peer ADDR` with the tests' connect timeout, and extra arguments first.
fn sync_peer(fq: &Fq, addr: &str, extra: &[&str]) -> Run {
    let mut args = extra.to_vec();
    args.extend(["--peer", addr]);
    sync(fq, &args)
}

fn titles(fq: &Fq) -> Vec<String> {
    let list = fq.json(&["case", "list"]);
    list["cases"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap().to_owned()).collect()
}

fn assert_chinese(run: &Run, input: &[&str]) {
    let text = format!("{}{}", run.stdout, run.stderr);
    let words = english_words(&text, input);
    assert!(words.is_empty(), "English words {words:?} in:\n{text}");
}

#[test]
fn peer_devices_of_one_village_exchange_without_a_server_and_the_county_verifies_their_signatures() {
    let county = County::new();
    let county_server = county.server("county", "county", COUNTY, None, None);
    let config = write_config(county.dir.path(), None);
    let township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&config));
    let mediator = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let grid = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    let theirs = grid.new_case()["number"].as_str().unwrap().to_owned();
    grid.json(&["case", "note", &theirs, "网格员走访了双方"]);
    mediator.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    // A case of the next village sits on the grid worker's phone (a restored backup of the
    // wrong phone): it is not the mediator's to receive.
    let next_door = Fq::new();
    next_door.json(&["init", "--village", VILLAGE_B, "--name", "王五", "--role", "mediator"]);
    next_door.json(&["case", "new", "--category", "land", "--title", "邻村的土地纠纷"]);
    {
        let mut from = open_ledger(&next_door.ledger_file());
        let mut into = open_ledger(&grid.ledger_file());
        let changes = from.changes_since(0, 100).unwrap();
        into.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
    }

    // In the village, with no server: the grid worker waits, the mediator dials.
    let serving = Serving::start(&grid, true, &["--once"]);
    let got = sync_peer(&mediator, &serving.addr, &["--json"]).json();
    assert_valid("sync-summary.v1.schema.json", &got);
    assert_eq!((got["peer"]["id"].as_str(), got["peer"]["role"].as_str()), (Some("d08"), Some("grid-worker")));
    assert_eq!((got["sent"].as_u64(), got["received"].as_u64()), (Some(1), Some(2)), "{got:#}");
    assert_eq!(got["waiting"]["normal"], 3, "the township has none of the three changes yet: {got:#}");
    let served = serving.finish();
    assert_eq!(served.code, 0, "{served:?}");
    let lines = events(&served);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let session = &lines[1];
    assert_eq!((session["event"].as_str(), session["ok"].as_bool()), (Some("session"), Some(true)), "{session:#}");
    assert_eq!((session["peer"]["id"].as_str(), session["received"].as_u64()), (Some("d07"), Some(1)));
    assert_eq!(lines[2]["sessions"], 1);
    let mut seen = titles(&mediator);
    seen.sort();
    assert_eq!(seen, ["借款纠纷", "宅基地滴水纠纷"], "only the village's cases");
    assert_eq!(grid.case_count(), 3);
    assert_eq!(status(&county.data("tw-101"))["counts"]["cases"], 0, "no server took part");

    // They meet again, in Chinese this time: each resumes where the last exchange ended.
    mediator.json(&["case", "note", &theirs, "调解员约双方周五再谈"]);
    let serving = Serving::start(&grid, false, &["--once"]);
    let again = sync_peer(&mediator, &serving.addr, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("与网格员 d08（532924101201）的设备同步完成"), "{again:?}");
    assert!(again.stdout.contains("发送修改 1 条，接收修改 0 条（另有 0 条本机已有）"), "{again:?}");
    assert_chinese(&again, &[]);
    let served = serving.finish();
    assert_eq!(served.code, 0, "{served:?}");
    assert!(served.stdout.contains("请对方运行 fq sync --peer 127.0.0.1:"), "{served:?}");
    assert!(served.stdout.contains("接收修改 1 条（另有 0 条本机已有）"), "nothing sent twice: {served:?}");
    assert_chinese(&served, &[]);

    // The mediator alone syncs with the township: the grid worker's changes go up with the
    // grid worker's signatures, relayed by the mediator.
    let up = sync(&mediator, &["--server", &township.addr.to_string()]);
    assert_eq!(up.code, 0, "{up:?}");
    let town = county.data("tw-101");
    assert_eq!(status(&town)["counts"]["cases"], 2);
    assert_eq!(status(&town)["refusals"].as_array().map_or(0, Vec::len), 0);
    let history = on_server(&town, &["audit", "history", &theirs]);
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{history:#}");
    for c in changes {
        assert_eq!(c["signature"], "valid", "{c:#}");
        assert_eq!(c["change"]["relay"]["subject"], "d07", "came through the mediator: {c:#}");
    }
    let by: Vec<&str> = changes.iter().map(|c| c["change"]["signer"]["subject"].as_str().unwrap()).collect();
    assert_eq!(by, ["d08", "d08", "d07"]);
    eventually("the county to receive the cases", CONVERGE, || rows(&county.data("county"), VILLAGE_A).len() == 2);
    let bundle = county.path("county.bundle.json");
    let mut verify = crate::harness::fq_command();
    verify.arg("--data-dir").arg(county.data("county")).args(["--json", "audit", "verify", "--bundle"]).arg(&bundle);
    let verified = run(verify).json();
    assert_valid("audit-verify.v1.schema.json", &verified);
    assert_eq!(verified["passed"], true, "{verified:#}");
    assert_eq!(verified["report"]["ca_checked"], true, "{verified:#}");
}

#[test]
fn peer_device_of_another_village_is_refused_with_nothing_applied() {
    let county = County::new();
    let grid = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    let other = enrolled_device(&county, "d09", "mediator", VILLAGE_B, "王五");
    grid.new_case();
    other.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    let serving = Serving::start(&grid, true, &["--once"]);
    let refused = sync_peer(&other, &serving.addr, &[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("与本机负责的 532924101202 不重叠") && refused.stderr.contains("本机数据没有改动"),
        "{refused:?}"
    );
    assert_chinese(&refused, &[]);
    let json = sync_peer(&other, &serving.addr, &["--json", "--lang", "en"]).error_json();
    assert_valid("error.v1.schema.json", &json);
    assert_eq!(json["error"]["kind"], "peer-refused", "{json:#}");
    assert!(json["error"]["message"].as_str().unwrap().contains("does not overlap"), "{json:#}");
    // The listener refused the connections and is still waiting; SIGTERM ends it cleanly.
    let served = serving.stop();
    assert_eq!(served.code, 0, "{served:?}");
    let lines = events(&served);
    assert!(lines.iter().any(|l| l["event"] == "refused"), "{lines:#?}");
    assert_eq!(lines.last().unwrap()["event"], "stopped", "{lines:#?}");
    assert_eq!(lines.last().unwrap()["sessions"], 0);
    assert_eq!((grid.case_count(), other.case_count()), (1, 1), "nothing applied");
}

#[test]
fn peer_and_server_addresses_are_not_mixed_up() {
    let county = County::new();
    let township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let tw = township.addr.to_string();
    let mediator = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let grid = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    mediator.new_case();
    // A server is no device.
    let not_a_device = sync_peer(&mediator, &tw, &[]);
    assert_eq!(not_a_device.code, 1, "{not_a_device:?}");
    assert!(not_a_device.stderr.contains("是同步服务器（tw-101），不是同村的设备"), "{not_a_device:?}");
    assert!(not_a_device.stderr.contains(&format!("fq sync --server {tw}")), "{not_a_device:?}");
    assert_chinese(&not_a_device, &[]);
    assert_eq!(status(&county.data("tw-101"))["counts"]["cases"], 0, "nothing went to the township");
    // A device is no server: the TLS check fails, and says what answered.
    let serving = Serving::start(&grid, false, &[]);
    let not_a_server = sync(&mediator, &["--server", &serving.addr]);
    assert_eq!(not_a_server.code, 1, "{not_a_server:?}");
    assert!(not_a_server.stderr.contains("上的是网格员的设备（证书编号 d08），不是同步服务器"), "{not_a_server:?}");
    assert!(not_a_server.stderr.contains(&format!("fq sync --peer {}", serving.addr)), "{not_a_server:?}");
    assert_chinese(&not_a_server, &[]);
    let en = sync(&mediator, &["--server", &serving.addr, "--lang", "en"]);
    assert!(en.stderr.contains("is a device (grid worker, certificate d08), not a sync server"), "{en:?}");
    // Neither mix-up is remembered as this device's server.
    assert!(!mediator.data_dir().join("sync.json").exists());
    let usage = sync(&mediator, &["--peer", &serving.addr, "--server", &tw]);
    assert_eq!(usage.code, 2, "{usage:?}");
    let served = serving.stop();
    assert_eq!(served.code, 0, "{served:?}");
    assert!(served.stdout.contains("拒绝了来自 127.0.0.1:"), "{served:?}");
    assert!(served.stdout.contains("已停止等待（共与设备同步 0 次）"), "{served:?}");
    assert_chinese(&served, &[]);
    assert_eq!((mediator.case_count(), grid.case_count()), (1, 0), "nothing applied");
}

#[test]
fn peer_serve_keeps_what_the_person_writes_between_two_exchanges() {
    let county = County::new();
    let mediator = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let grid = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    let case = grid.new_case()["number"].as_str().unwrap().to_owned();
    let serving = Serving::start(&grid, true, &[]);
    assert_eq!(sync_peer(&mediator, &serving.addr, &[]).code, 0);
    // While fq serve waits, the grid worker writes on the case with fq, and so does the mediator.
    grid.json(&["case", "note", &case, "网格员等待时记下的"]);
    mediator.json(&["case", "note", &case, "调解员记下的"]);
    let second = sync_peer(&mediator, &serving.addr, &["--json"]).json();
    assert_eq!((second["sent"].as_u64(), second["received"].as_u64()), (Some(1), Some(1)), "{second:#}");
    let served = serving.stop();
    assert_eq!(served.code, 0, "{served:?}");
    assert_eq!(events(&served).last().unwrap()["sessions"], 2);
    for fq in [&grid, &mediator] {
        let shown = fq.json(&["case", "show", &case]);
        let notes: Vec<&str> = shown["events"].as_array().unwrap().iter().filter_map(|e| e["text"].as_str()).collect();
        assert!(notes.contains(&"网格员等待时记下的") && notes.contains(&"调解员记下的"), "{notes:?}");
        assert_eq!(fq.json(&["audit", "verify"])["passed"], true);
    }
}

/// A phone revoked at the county (lost, say) is refused by a phone of its village that has
/// synced with its township since: the county's list comes down with the sync and is kept, so
/// the refusal holds where there is no server.
#[test]
fn peer_revoked_phone_is_refused_once_the_list_came_down_with_a_sync() {
    let county = County::new();
    let config = write_config(county.dir.path(), Some(&county.ca().join("revocations.json")));
    let township = county.server("tw-101", "township", TOWNSHIP, None, Some(&config));
    let tw = township.addr.to_string();
    let grid = enrolled_device(&county, "d08", "grid-worker", VILLAGE_A, "李四");
    let lost = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    lost.new_case();
    county.revoke("d07");
    township.wait_log("revocation list installed", |l| l["version"] == 1);
    assert_eq!(sync(&grid, &["--server", &tw]).code, 0);
    let kept = std::fs::read_to_string(grid.data_dir().join("revocations.json")).unwrap_or_default();
    assert!(kept.contains("\"version\":1") || kept.contains("\"version\": 1"), "the list came down: {kept}");
    drop(township);
    // No server now: the lost phone dials the grid worker's phone.
    let serving = Serving::start(&grid, true, &[]);
    let refused = sync_peer(&lost, &serving.addr, &[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    let served = serving.stop();
    let lines = events(&served);
    assert!(lines.iter().any(|l| l["event"] == "refused"), "{lines:#?}");
    assert_eq!(grid.case_count(), 0, "nothing of the revoked phone was taken");
    assert_eq!(lost.case_count(), 1);
}
