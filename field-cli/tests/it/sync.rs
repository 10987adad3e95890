//! `fq sync` against real `fq-server` processes on 127.0.0.1: three tiers converging,
//! refusals, a township killed mid-upload, unreachable servers, enrolment mistakes.
//!
//! `fq-server` is found next to the `fq` binary under test; `cargo test --workspace` builds
//! every binary of the workspace before running tests.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fq_core::clock::SystemClock;
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{FQ, Fq, Run, fq_command, run, wait_bounded};
use crate::process::{RunSpec, ServerProcess, write_config, write_config_text};
use crate::schema::assert_valid;

pub(crate) const COUNTY: &str = "532924";
pub(crate) const TOWNSHIP: &str = "532924101";
pub(crate) const VILLAGE_A: &str = "532924101201";
pub(crate) const VILLAGE_B: &str = "532924101202";
/// Bound on waiting for changes to travel between servers.
pub(crate) const CONVERGE: Duration = Duration::from_secs(60);
/// `fq sync`'s dial bound in these tests (the default is 15 s).
const CONNECT_TIMEOUT_MS: &str = "3000";

/// `fq-server`, next to `fq`.
pub(crate) fn fq_server() -> PathBuf {
    let path = Path::new(FQ).with_file_name(format!("fq-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p fq-sync-server`; `cargo test --workspace` does)",
        path.display()
    );
    path
}

pub(crate) fn fq_server_run(args: &[&str]) -> Run {
    let mut cmd = Command::new(fq_server());
    cmd.args(args).stdin(Stdio::null());
    run(cmd)
}

/// A county CA in a temporary directory, driven through `fq-server ca`.
pub(crate) struct County {
    pub(crate) dir: TempDir,
}

impl County {
    pub(crate) fn new() -> Self {
        let county = County { dir: tempfile::tempdir().unwrap() };
        let ca = county.ca();
        let out = fq_server_run(&["ca", "init", "--dir", ca.to_str().unwrap(), "--county", COUNTY]);
        assert_eq!(out.code, 0, "{out:?}");
        county
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a bundle; returns its file.
    pub(crate) fn issue(&self, id: &str, role: &str, scope: &str) -> PathBuf {
        let out_file = self.path(&format!("{id}.bundle.json"));
        let out = fq_server_run(&[
            "ca",
            "issue",
            "--ca",
            self.ca().to_str().unwrap(),
            "--id",
            id,
            "--role",
            role,
            "--scope",
            scope,
            "--out",
            out_file.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        out_file
    }

    pub(crate) fn revoke(&self, id: &str) {
        let out = fq_server_run(&["ca", "revoke", "--ca", self.ca().to_str().unwrap(), "--id", id]);
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// A server of `tier` with its own data directory under the county's temp dir.
    pub(crate) fn server(
        &self,
        id: &str,
        tier: &str,
        scope: &str,
        upstream: Option<SocketAddr>,
        config: Option<&Path>,
    ) -> ServerProcess {
        let bundle = self.path(&format!("{id}.bundle.json"));
        if !bundle.exists() {
            self.issue(id, tier, scope);
        }
        self.start(id, tier, "127.0.0.1:0", upstream, config)
    }

    pub(crate) fn start(
        &self,
        id: &str,
        tier: &str,
        listen: &str,
        upstream: Option<SocketAddr>,
        config: Option<&Path>,
    ) -> ServerProcess {
        let data = self.path(&format!("{id}-data"));
        let bundle = self.path(&format!("{id}.bundle.json"));
        ServerProcess::start(
            &fq_server(),
            &RunSpec { tier, listen, data_dir: &data, bundle: &bundle, upstream, config },
        )
    }

    pub(crate) fn data(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}-data"))
    }
}

/// `fq init --bundle` for a device; returns it.
pub(crate) fn enrolled_device(county: &County, id: &str, role: &str, scope: &str, name: &str) -> Fq {
    let bundle = county.issue(id, role, scope);
    let fq = Fq::new();
    let out = fq.json(&["init", "--bundle", bundle.to_str().unwrap(), "--name", name]);
    assert_eq!(out["identity"]["scope"], scope);
    fq
}

/// `fq sync` with the test's connect timeout.
pub(crate) fn sync(fq: &Fq, args: &[&str]) -> Run {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    let mut cmd = fq.command(&all);
    cmd.env("FQ_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS);
    run(cmd)
}

pub(crate) fn sync_json(fq: &Fq, args: &[&str]) -> Value {
    let mut all = vec!["--json", "sync"];
    all.extend_from_slice(args);
    let mut cmd = fq.command(&all);
    cmd.env("FQ_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS);
    let summary = run(cmd).json();
    assert_valid("sync-summary.v1.schema.json", &summary);
    summary
}

/// `fq --json ARGS` on a server's data directory (read-only commands, beside the running server).
pub(crate) fn on_server(data: &Path, args: &[&str]) -> Value {
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(data).arg("--json").args(args);
    run(cmd).json()
}

pub(crate) fn status(data: &Path) -> Value {
    let out = fq_server_run(&["status", "--data-dir", data.to_str().unwrap(), "--json"]);
    let value: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status ({e}): {out:?}"));
    assert_valid("server-status.v1.schema.json", &value);
    value
}

/// Polls `check` every 100 ms until it is true; fails the test after `limit`.
pub(crate) fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The case list rows of a replica inside `within`, by id.
pub(crate) fn rows(data: &Path, within: &str) -> BTreeMap<String, Value> {
    let list = on_server(data, &["case", "list", "--village", within]);
    list["cases"].as_array().unwrap().iter().map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone())).collect()
}

fn has_note(show: &Value, text: &str) -> bool {
    show["events"].as_array().unwrap().iter().any(|e| e["text"] == text)
}

#[test]
fn sync_three_tiers_converge_through_real_servers() {
    let county = County::new();
    let county_server = county.server("county", "county", COUNTY, None, None);
    let config = write_config(county.dir.path(), None);
    let township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&config));
    let tw = township.addr.to_string();

    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let b_bundle = county.issue("d08", "grid-worker", VILLAGE_B);
    let b = Fq::new();
    // --role and --village may be given with a bundle, if they agree with it.
    b.json(&[
        "init",
        "--bundle",
        b_bundle.to_str().unwrap(),
        "--name",
        "李四",
        "--role",
        "grid-worker",
        "--village",
        VILLAGE_B,
    ]);
    let case_a = a.new_case()["number"].as_str().unwrap().to_owned();
    let case_b = b.json(&["case", "new", "--category", "land", "--title", "山林界址纠纷"])["case"]["number"]
        .as_str()
        .unwrap()
        .to_owned();
    a.json(&["case", "note", &case_a, "第一次调解"]);

    let first = sync_json(&a, &["--server", &tw]);
    assert_eq!((first["sent"].as_u64(), first["refused"]["count"].as_u64()), (Some(2), Some(0)), "{first:#}");
    assert_eq!(first["server"]["id"], "tw-101");
    // The device ended its stream right behind its Done (ADR 46): the township still saw its
    // session through, with nothing of its own left unacknowledged.
    let ended = township.wait_log("session ended", |l| l["peer"] == "d07");
    assert_eq!(ended["caught_up"], true, "{ended}");
    let out = sync(&b, &["--server", &tw]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("同步完成"), "{out:?}");

    // The township relays both cases to the county on its own.
    eventually("the county to hold both cases", CONVERGE, || {
        on_server(&county.data("county"), &["case", "list"])["count"] == 2
    });

    // A county admin, syncing with the county server, adds a note to village A's case.
    let admin = enrolled_device(&county, "admin", "county-admin", COUNTY, "王县长");
    let got = sync_json(&admin, &["--server", &county_server.addr.to_string()]);
    assert_eq!(got["received"], 3, "{got:#}");
    admin.json(&["case", "note", &case_a, "县级意见：依法依规处理"]);
    assert_eq!(sync_json(&admin, &[])["sent"], 1, "the address is remembered");

    // It flows down to the township, and the device gets it on its next sync.
    eventually("the note to reach the township", CONVERGE, || {
        has_note(&on_server(&county.data("tw-101"), &["case", "show", &case_a]), "县级意见：依法依规处理")
    });
    let down = sync_json(&a, &[]);
    assert_eq!(down["received"], 1, "{down:#}");
    assert!(has_note(&a.json(&["case", "show", &case_a]), "县级意见：依法依规处理"));
    sync_json(&b, &[]);

    // Every replica holds exactly its scope, and agrees on it.
    let (a_dir, b_dir) = (a.data_dir(), b.data_dir());
    for (scope, device) in [(VILLAGE_A, &a_dir), (VILLAGE_B, &b_dir)] {
        let mine = rows(device, scope);
        assert_eq!(mine.len(), 1, "{scope}");
        assert_eq!(rows(device, COUNTY), mine, "a village device holds only its village");
        assert_eq!(rows(&county.data("tw-101"), scope), mine, "township, {scope}");
        assert_eq!(rows(&county.data("county"), scope), mine, "county, {scope}");
        assert_eq!(rows(&admin.data_dir(), scope), mine, "county admin, {scope}");
    }
    for replica in [county.data("tw-101"), county.data("county"), admin.data_dir()] {
        for (number, device) in [(&case_a, &a_dir), (&case_b, &b_dir)] {
            let theirs = on_server(&replica, &["case", "show", number, "--history"]);
            let ours = on_server(device, &["case", "show", number, "--history"]);
            assert_eq!(theirs, ours, "{} differs on {number}", replica.display());
        }
    }
    let s = status(&county.data("county"));
    let tiers: Vec<&str> = s["peers"].as_array().unwrap().iter().map(|p| p["tier"].as_str().unwrap()).collect();
    assert!(tiers.contains(&"township") && tiers.contains(&"device"), "{s:#}");
}

#[test]
fn sync_reports_a_change_outside_the_device_scope_and_the_server_audits_it() {
    let county = County::new();
    let township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    a.new_case();
    // A case of village B, written on another device, lands in A's ledger as if A wrote it
    // (an import, a restored backup of the wrong phone...). A signs it when it syncs.
    let b = Fq::new();
    b.json(&["init", "--village", VILLAGE_B, "--name", "李四", "--role", "mediator"]);
    b.json(&["case", "new", "--category", "debt", "--title", "借款纠纷"]);
    let mut from = crate::harness::open_ledger(&b.ledger_file());
    let mut into = crate::harness::open_ledger(&a.ledger_file());
    let changes = from.changes_since(0, 100).unwrap();
    into.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
    drop((from, into));

    let summary = sync_json(&a, &["--server", &township.addr.to_string()]);
    assert_eq!(summary["sent"], 2, "{summary:#}");
    assert_eq!(summary["refused"]["count"], 1, "{summary:#}");
    assert_eq!(summary["refused"]["by_reason"][0]["reason"], "out-of-scope");
    assert_eq!(summary["refused"]["by_reason"][0]["count"], 1);
    assert_eq!(summary["refused"]["changes"][0]["reason"], "out-of-scope");
    // A refused change is answered: nothing is left waiting for the township.
    assert_eq!((summary["waiting"]["urgent"].as_i64(), summary["waiting"]["normal"].as_i64()), (Some(0), Some(0)));

    let s = status(&county.data("tw-101"));
    assert_eq!(s["counts"]["cases"], 1, "only the case inside the device's scope: {s:#}");
    let refusals = s["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{s:#}");
    assert!(refusals[0]["detail"].as_str().unwrap().contains("out-of-scope"), "{s:#}");
    // In words, grouped by reason, in Chinese by default and in English on request.
    let out = sync(&a, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let en = sync(&a, &["--lang", "en"]);
    assert!(en.stdout.contains("Sync complete"), "{en:?}");
    drop(township);
}

/// Adds `cases` cases of `notes + 1` changes each to the device ledger at `path`, quickly: they
/// are written in memory and imported in one transaction, as this device's own.
pub(crate) fn bulk_changes(path: &Path, scope: &str, cases: usize, notes: usize) {
    let clock = Arc::new(SystemClock);
    let mut scratch = Ledger::init_in_memory(
        InitOptions {
            tier: Tier::Device,
            name: "张三".into(),
            role: fq_core::case::Role::Mediator,
            scope: fq_core::case::AdminCode::parse(scope).unwrap(),
            grid: None,
        },
        clock.clone(),
        LedgerOptions::default(),
    )
    .unwrap();
    for i in 0..cases {
        let c = scratch
            .create_case(NewCase {
                category: fq_core::case::Category::Neighbor,
                title: format!("批量案件 {i}"),
                description: String::new(),
                parties: Vec::new(),
                risk: fq_core::case::Risk::Low,
                flags: Vec::new(),
                village: None,
                grid: None,
            })
            .unwrap();
        for n in 0..notes {
            scratch.add_note(c.id, &format!("第{n}次调解")).unwrap();
        }
    }
    let changes = scratch.changes_since(0, u32::MAX).unwrap();
    let mut device = crate::harness::open_ledger(path);
    device.apply_changes(None, changes.into_iter().map(Into::into).collect()).unwrap();
}

#[test]
fn sync_completes_after_the_township_is_killed_mid_upload() {
    let county = County::new();
    let mut township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let addr = township.addr;
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    bulk_changes(&a.ledger_file(), VILLAGE_A, 200, 9);
    let mut upload = a.command(&["sync", "--server", &addr.to_string()]);
    upload.stdout(Stdio::null()).stderr(Stdio::null());
    let mut upload = upload.spawn().unwrap();

    // Kill the township the moment the device has recorded the first
    // acknowledgement, while the later batches are still on their way.
    township.wait_log("changes applied", |l| l["peer"] == "d07");
    let device_acked = || {
        let device = crate::harness::open_ledger_read_only(&a.ledger_file());
        device.peers().unwrap().iter().map(|p| p.acked_seq).max().unwrap_or(0)
    };
    let start = Instant::now();
    while device_acked() == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the device never recorded an acknowledgement");
        thread::sleep(Duration::from_millis(2));
    }
    township.signal("KILL");
    township.wait_exit(Duration::from_secs(10)).expect("SIGKILL ends the server");
    // The device lost its server; it would give up by itself (ack watchdog), a person sooner.
    let _ = upload.kill();
    wait_bounded(&mut upload, Duration::from_secs(10));

    // Everything the township acknowledged is on its disk.
    let held = status(&county.data("tw-101"))["counts"]["changes"].as_i64().unwrap();
    let acked = device_acked();
    assert!(held >= acked, "township holds {held} changes but had acknowledged {acked}");
    assert!(held > 0 && acked > 0, "the first batch was committed and acknowledged (held {held}, acked {acked})");
    eprintln!("killed mid-upload: township held {held} of 2000 changes, device saw {acked} acknowledged");

    // Restarted on the same address, the township takes the rest.
    let township = county.start("tw-101", "township", &addr.to_string(), None, None);
    assert_eq!(township.addr, addr);
    let summary = sync_json(&a, &[]);
    assert_eq!(summary["refused"]["count"], 0, "{summary:#}");
    assert_eq!(
        status(&county.data("tw-101"))["counts"]["changes"],
        2000,
        "the township holds every change exactly once"
    );
    assert_eq!(rows(&county.data("tw-101"), VILLAGE_A), rows(&a.data_dir(), VILLAGE_A));
    assert_eq!(rows(&a.data_dir(), VILLAGE_A).len(), 200);
}

/// Issue 6: the township is killed (SIGKILL) and restarted on its address while a device's
/// `fq sync` uploads. The restarted township resets the old connection as soon as the device's
/// next packet arrives, `fq sync` dials once more by itself and resumes from the acknowledged
/// position: it completes (no 60 s stall; the harness would kill it at 60 s), nothing
/// acknowledged is lost, and every change is on the township exactly once.
#[test]
fn sync_completes_across_a_township_restart_without_a_second_command() {
    let county = County::new();
    let mut township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let addr = township.addr;
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    bulk_changes(&a.ledger_file(), VILLAGE_A, 300, 9);
    let out = a.data_dir().with_file_name("sync.out");
    let err = a.data_dir().with_file_name("sync.err");
    let mut upload = a.command(&["--json", "sync", "--server", &addr.to_string()]);
    upload
        .env("FQ_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut upload = upload.spawn().unwrap();

    township.wait_log("changes applied", |l| l["peer"] == "d07");
    // The key is unwrapped once: every look at the device's ledger would pay Argon2 again.
    let key = crate::harness::key_for(&a.ledger_file());
    let device_acked = || {
        let device = Ledger::open_read_only_with_key(&a.ledger_file(), Arc::new(SystemClock), key.as_ref()).unwrap();
        device.peers().unwrap().iter().map(|p| p.acked_seq).max().unwrap_or(0)
    };
    eventually("the device's first acknowledgement", Duration::from_secs(20), || device_acked() > 0);
    township.signal("KILL");
    township.wait_exit(Duration::from_secs(10)).expect("SIGKILL ends the server");
    let acked = device_acked();
    assert!(acked < 3_000, "the upload was over before the kill ({acked} acknowledged)");
    let restarted = county.start("tw-101", "township", &addr.to_string(), None, None);

    let exit = wait_bounded(&mut upload, crate::harness::RUN_TIMEOUT);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(exit.success(), "fq sync failed across the restart: {exit:?}\n{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_valid("sync-summary.v1.schema.json", &summary);
    assert_eq!(summary["refused"]["count"], 0, "{summary:#}");
    // The device came back to the new process by itself.
    restarted.wait_log("session started", |l| l["peer"] == "d07");
    let held = status(&county.data("tw-101"));
    assert_eq!(held["counts"]["changes"], 3_000, "every change exactly once: {held:#}");
    assert!(held["counts"]["changes"].as_i64().unwrap() >= acked);
    assert_eq!(rows(&county.data("tw-101"), VILLAGE_A), rows(&a.data_dir(), VILLAGE_A));
}

/// Issue 6: a server name that cannot be looked up is not a "bad address" but its own message.
#[test]
fn sync_to_a_name_that_cannot_be_found_says_so() {
    let county = County::new();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let before = file_bytes(&a.ledger_file());
    let out = sync(&a, &["--server", "nosuchhost.invalid:4433"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("找不到服务器“nosuchhost.invalid”")
            && out.stderr.contains("域名解析（DNS）")
            && out.stderr.contains("IP 地址"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("地址:端口"), "not told as a format mistake: {out:?}");
    let json = a.run(&["--json", "sync", "--server", "nosuchhost.invalid:4433"]).error_json();
    assert_eq!(json["error"]["kind"], "server-name-not-found");
    assert_valid("error.v1.schema.json", &json);
    let en = a.run(&["--lang", "en", "sync", "--server", "nosuchhost.invalid:4433"]);
    assert!(en.stderr.contains("cannot find the server \"nosuchhost.invalid\""), "{en:?}");
    assert_eq!(file_bytes(&a.ledger_file()), before, "nothing on the device changed");
    assert!(!a.data_dir().join("sync.json").exists(), "a name that was never found is not remembered");
}

pub(crate) fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn sync_to_an_unreachable_server_fails_in_bounded_time_and_changes_nothing() {
    let county = County::new();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    a.new_case();
    // A UDP port that swallows every packet: a server that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let before = (file_bytes(&a.ledger_file()), a.case_count());
    let start = Instant::now();
    let out = sync(&a, &["--server", &addr]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert!(out.stderr.contains("连不上同步服务器") && out.stderr.contains("本机数据没有改动"), "{out:?}");
    let json = {
        let mut cmd = a.command(&["--json", "sync", "--server", &addr]);
        cmd.env("FQ_CONNECT_TIMEOUT_MS", "500");
        run(cmd).error_json()
    };
    assert_eq!(json["error"]["kind"], "server-unreachable");
    assert_eq!((file_bytes(&a.ledger_file()), a.case_count()), before, "the ledger is untouched");
    assert!(!a.data_dir().join("sync.json").exists(), "an address that never answered is not remembered");
}

#[test]
fn sync_and_enroll_say_what_to_do_when_the_device_is_not_ready() {
    let county = County::new();
    let fq = Fq::new();
    fq.init_mediator();
    let out = sync(&fq, &["--server", "127.0.0.1:9"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("先用 fq enroll --bundle 登记本机"), "{out:?}");
    let json = fq.run(&["--json", "sync"]).error_json();
    assert_eq!(json["error"]["kind"], "not-enrolled");
    assert_valid("error.v1.schema.json", &json);

    // A bundle for another village does not fit; one for this village does.
    let wrong = county.issue("d09", "mediator", VILLAGE_B);
    let out = fq.run(&["--json", "enroll", "--bundle", wrong.to_str().unwrap()]);
    assert_eq!((out.code, out.error_json()["error"]["kind"].as_str()), (2, Some("bundle-mismatch")), "{out:?}");
    let server_bundle = county.issue("tw-101", "township", TOWNSHIP);
    let out = fq.run(&["enroll", "--bundle", server_bundle.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    let right = county.issue("d07", "mediator", crate::harness::VILLAGE);
    let enrolled = fq.json(&["enroll", "--bundle", right.to_str().unwrap()]);
    assert_valid("enroll.v1.schema.json", &enrolled);
    assert_eq!(enrolled["certificate"]["id"], "d07");
    // The bundle, private key included, is kept inside the encrypted ledger, never in clear.
    assert_eq!(enrolled["bundle"], fq.ledger_file().to_str().unwrap());
    assert!(!fq.data_dir().join("bundle.json").exists());

    // Enrolled, but no server was ever given.
    let json = fq.run(&["--json", "sync"]).error_json();
    assert_eq!(json["error"]["kind"], "no-server");
    let out = fq.run(&["sync", "--server", "not an address"]);
    assert_eq!(out.code, 2, "{out:?}");

    // init --bundle refuses a --role that disagrees with the bundle, and creates nothing.
    let other = Fq::new();
    let out = other.run(&["init", "--bundle", right.to_str().unwrap(), "--name", "张三", "--role", "grid-worker"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!other.ledger_file().exists());
    // And plain init still needs --role and --village.
    let out = other.run(&["init", "--name", "张三"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!other.ledger_file().exists());
    let init = other.json(&["init", "--bundle", right.to_str().unwrap(), "--name", "张三"]);
    assert_valid("init.v1.schema.json", &init);
    assert_eq!(init["identity"]["role"], "mediator");
}

#[test]
fn sync_is_refused_for_revoked_and_foreign_certificates() {
    let county = County::new();
    let config = write_config(county.dir.path(), Some(&county.ca().join("revocations.json")));
    let township = county.server("tw-101", "township", TOWNSHIP, None, Some(&config));
    let tw = township.addr.to_string();

    // A device certified by another county's CA, for the same village.
    let foreign = County::new();
    let stranger = enrolled_device(&foreign, "d07", "mediator", VILLAGE_A, "冒名者");
    stranger.new_case();
    let out = sync(&stranger, &["--server", &tw]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("不是本县颁发"), "{out:?}");
    let json = stranger.run(&["--json", "sync", "--server", &tw]).error_json();
    assert_eq!(json["error"]["kind"], "server-refused");

    // A county admin's device belongs with the county server, not a township's.
    let admin = enrolled_device(&county, "admin", "county-admin", COUNTY, "王县长");
    let out = sync(&admin, &["--server", &tw]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("不负责本机的区域"), "{out:?}");

    // A genuine device syncs, then is revoked (lost phone); the running township follows the
    // CA's revocation list file and refuses it from then on.
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    a.new_case();
    assert_eq!(sync(&a, &["--server", &tw]).code, 0);
    county.revoke("d07");
    township.wait_log("revocation list installed", |l| l["version"] == 1);
    a.new_case();
    let out = sync(&a, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("吊销"), "{out:?}");
    let en = sync(&a, &["--lang", "en"]);
    assert!(en.stderr.contains("revoked"), "{en:?}");
    assert_eq!(status(&county.data("tw-101"))["counts"]["cases"], 1, "nothing from the revoked device got in");
}

/// Issue 4: the township is killed twenty times while a device uploads; after
/// each kill everything it acknowledged is on its disk and the file is sound,
/// and the upload completes in the end with every change exactly once.
#[test]
fn sync_survives_twenty_township_kills_during_ingest() {
    const KILLS: usize = 20;
    let county = County::new();
    let township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let addr = township.addr;
    drop(township);
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    // 24 batches of 512 changes: more than one batch per kill.
    bulk_changes(&a.ledger_file(), VILLAGE_A, 1_230, 9);
    let total = 12_300;
    let mut kills = 0;
    for _ in 0..KILLS {
        let mut township = county.start("tw-101", "township", &addr.to_string(), None, None);
        let mut upload = a.command(&["sync", "--server", &addr.to_string()]);
        upload.env("FQ_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS).stdout(Stdio::null()).stderr(Stdio::null());
        let mut upload = upload.spawn().unwrap();
        // Kill the moment the township commits a batch of this upload.
        let applied = township.wait_log_for("changes applied", Duration::from_secs(20), |l| l["peer"] == "d07");
        township.signal("KILL");
        township.wait_exit(Duration::from_secs(10)).expect("SIGKILL ends the server");
        let _ = upload.kill();
        wait_bounded(&mut upload, Duration::from_secs(10));
        if applied.is_none() {
            break; // nothing left to ingest
        }
        kills += 1;
        let township_ledger =
            Ledger::open_read_only(&county.data("tw-101").join("ledger.db"), Arc::new(SystemClock)).unwrap();
        township_ledger.integrity_check().unwrap();
        let held = township_ledger.counts().unwrap()[1];
        let device = crate::harness::open_ledger_read_only(&a.ledger_file());
        let acked = device.peers().unwrap().iter().map(|p| p.acked_seq).max().unwrap_or(0);
        assert!(held >= acked, "kill {kills}: township holds {held} changes but had acknowledged {acked}");
        assert_eq!(township_ledger.duplicate_log_rows().unwrap(), 0);
    }
    assert!(kills >= KILLS / 2, "only {kills} kills landed during ingest");
    let _township = county.start("tw-101", "township", &addr.to_string(), None, None);
    let summary = sync_json(&a, &[]);
    assert_eq!(summary["refused"]["count"], 0, "{summary:#}");
    let s = status(&county.data("tw-101"));
    assert_eq!(s["counts"]["changes"], total, "every change exactly once: {s:#}");
    assert_eq!(rows(&county.data("tw-101"), VILLAGE_A), rows(&a.data_dir(), VILLAGE_A));
}

/// A forged device (one that skips `fq`'s input checks) sends a case whose title and party
/// name hold a clear-screen, a window-title rewrite (OSC ... BEL) and a right-to-left
/// override. The township keeps the data as sent, and a person reading it there sees the
/// characters escaped, never acted on; `--json` keeps them as JSON escapes.
#[test]
fn sync_a_forged_peers_control_characters_are_printed_escaped_on_the_township() {
    use fq_core::case::{AdminCode, CaseNumber, Category, Level, Party, Risk};
    use fq_core::doc::{Author, CaseDoc, NewCaseDoc, actor_for};

    let county = County::new();
    let township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let title = "滴水\u{1b}[2J\u{1b}]0;pwned\u{7}纠纷\u{202e}txt.exe";
    let name = "李\u{1b}[31m四";
    {
        let mut device = crate::harness::open_ledger(&a.ledger_file());
        let village = AdminCode::parse(VILLAGE_A).unwrap();
        let own = device.identity().replica.device();
        let number = CaseNumber::new(&village, 2026, own, 99);
        let party = Party { name: name.into(), id_number: None, phone: None };
        let new = NewCaseDoc {
            id: fq_core::case::CaseId::random(),
            number: &number,
            village: &village,
            grid: None,
            category: Category::Neighbor,
            title,
            description: "\u{1b}[2J",
            parties: std::slice::from_ref(&party),
            risk: Risk::Low,
            flags: &[],
            level: Level::Village,
            recorded_at: device.now(),
        };
        let author = Author { name: "张三".into(), role: fq_core::case::Role::Mediator, id: None };
        let mut doc = CaseDoc::create(&new, &author, actor_for(own, [7; 8]), device.now()).unwrap();
        let forged = doc
            .changes_after(&[])
            .into_iter()
            .map(|(_, bytes)| fq_core::ledger::IncomingChange { case: new.id, bytes, signer: None, signature: None })
            .collect();
        let report = device.apply_changes(None, forged).unwrap();
        assert_eq!(report.applied, 1, "{report:?}");
    }
    let summary = sync_json(&a, &["--server", &township.addr.to_string()]);
    assert_eq!((summary["sent"].as_u64(), summary["refused"]["count"].as_u64()), (Some(1), Some(0)), "{summary:#}");

    let mut cmd = fq_command();
    cmd.env("LANG", "C.UTF-8").arg("--data-dir").arg(county.data("tw-101")).args(["case", "list"]);
    let list = run(cmd);
    assert_eq!(list.code, 0, "{list:?}");
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(!list.stdout.contains(raw), "{raw:?} reached the terminal: {list:?}");
    }
    assert!(list.stdout.contains("滴水\\u{1b}[2J\\u{1b}]0;pwned\\u{7}纠纷\\u{202e}txt.exe"), "{}", list.stdout);
    let number =
        on_server(&county.data("tw-101"), &["case", "list"])["cases"][0]["number"].as_str().unwrap().to_owned();
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(county.data("tw-101")).args(["case", "show", &number]);
    let card = run(cmd).stdout;
    assert!(!card.contains('\u{1b}') && card.contains("李\\u{1b}[31m四"), "{card}");
    // JSON: escaped as JSON, and the text is exactly what was sent.
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(county.data("tw-101")).args(["--json", "case", "show", &number]);
    let shown = run(cmd);
    assert!(!shown.stdout.contains('\u{202e}') && !shown.stdout.contains('\u{1b}'), "{shown:?}");
    let view: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!((view["title"].as_str(), view["parties"][0]["name"].as_str()), (Some(title), Some(name)));
}

/// A revoked certificate's bundle is refused by `enroll` and `init --bundle` when the device
/// knows the list that revokes it: from a newer bundle it took, or the county's list file
/// handed over with the bundle.
#[test]
fn enroll_refuses_a_revoked_bundle() {
    let county = County::new();
    let lost = county.issue("d07", "mediator", VILLAGE_A);
    county.revoke("d07");
    // The replacement phone's bundle carries the list that revokes the lost one.
    let replacement = enrolled_device(&county, "d07b", "mediator", VILLAGE_A, "张三");
    let out = replacement.run(&["--json", "enroll", "--bundle", lost.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_json()["error"]["kind"], "bundle-revoked");
    let out = replacement.run(&["enroll", "--bundle", lost.to_str().unwrap()]);
    assert!(out.stderr.contains("已被县里吊销") && out.stderr.contains("什么也没有写入"), "{out:?}");
    // A new device given the CA's list with the old bundle.
    let fresh = Fq::new();
    let list = county.ca().join("revocations.json");
    let out = fresh.run(&[
        "init",
        "--bundle",
        lost.to_str().unwrap(),
        "--revocations",
        list.to_str().unwrap(),
        "--name",
        "张三",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!fresh.ledger_file().exists(), "a refused init leaves nothing");
    // A list from another county's CA is no list at all.
    let foreign = County::new();
    let forged = foreign.ca().join("revocations.json");
    let out = fresh.run(&[
        "--json",
        "init",
        "--bundle",
        lost.to_str().unwrap(),
        "--revocations",
        forged.to_str().unwrap(),
        "--name",
        "张三",
    ]);
    assert_eq!(out.error_json()["error"]["kind"], "invalid-bundle", "{out:?}");
}

/// The county's policy file, signed by `fq-server ca policy` with the Binchuan roster.
fn sign_policy(county: &County, text: &str) -> Run {
    let file = county.path("policy.toml");
    std::fs::write(&file, text).unwrap();
    let roster = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/county-532924.json");
    fq_server_run(&[
        "ca",
        "policy",
        "--ca",
        county.ca().to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--roster",
        roster.to_str().unwrap(),
    ])
}

fn deadline_days(fq: &Fq) -> i64 {
    let row = fq.json(&["case", "list"])["cases"][0].clone();
    (row["deadline"].as_i64().unwrap() - row["since"].as_i64().unwrap()) / 86_400_000
}

#[test]
fn sync_carries_a_county_policy_change_through_the_township_to_a_device() {
    let county = County::new();
    let signed = sign_policy(&county, "[deadlines]\nvillage = 10\n");
    assert_eq!(signed.code, 0, "{signed:?}");
    assert!(signed.stdout.contains("已签发县级政策第 1 版") && signed.stdout.contains("花名册 1592 人"), "{signed:?}");
    let policy_file = county.ca().join("policy.json");
    let config = write_config_text(
        county.dir.path(),
        "county.toml",
        &format!("policy_file = {:?}\nrevocation_poll_secs = 1\n", policy_file.to_str().unwrap()),
    );
    let county_server = county.server("county", "county", COUNTY, None, Some(&config));
    county_server.wait_log("county policy installed", |l| l["version"] == 1);
    let tw_config = write_config(county.dir.path(), None);
    let township = county.server("tw-101", "township", TOWNSHIP, Some(county_server.addr), Some(&tw_config));
    township.wait_log("county policy installed", |l| l["version"] == 1 && l["source"] == "upstream");

    // A device with a case under the built-in default (15 days at the village).
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "普学伟");
    a.new_case();
    assert_eq!(deadline_days(&a), 15);
    let summary = sync_json(&a, &["--server", &township.addr.to_string()]);
    assert_eq!(
        (summary["policy"]["outcome"].as_str(), summary["policy"]["version"].as_u64()),
        (Some("installed"), Some(1))
    );
    assert_eq!(a.json(&["policy", "show"])["version"], 1);
    assert_eq!(deadline_days(&a), 10, "the device's deadlines follow the county's policy");

    // Version 2 at the county reaches the township over its open link, and the device at its next sync.
    let signed = sign_policy(&county, "[deadlines]\nvillage = 20\n");
    assert!(signed.stdout.contains("第 2 版"), "{signed:?}");
    county_server.wait_log("county policy installed", |l| l["version"] == 2);
    township.wait_log("county policy installed", |l| l["version"] == 2 && l["source"] == "upstream");
    let out = sync(&a, &[]);
    assert!(out.stdout.contains("县级政策已更新到第 2 版"), "{out:?}");
    assert_eq!(deadline_days(&a), 20);

    // A forged file (version 3, the old signature) is refused and logged; version 2 stays.
    let mut forged: Value = serde_json::from_slice(&std::fs::read(&policy_file).unwrap()).unwrap();
    forged["version"] = 3.into();
    forged["policy"] = "[deadlines]\nvillage = 1\n".into();
    std::fs::write(&policy_file, serde_json::to_vec(&forged).unwrap()).unwrap();
    county_server.wait_log("county policy refused; the one in force stays", |_| true);
    let again = sync_json(&a, &[]);
    assert!(again["policy"].is_null(), "nothing newer to send: {again:#}");
    assert_eq!((a.json(&["policy", "show"])["version"].as_u64(), deadline_days(&a)), (Some(2), 20));
    // The township too still computes with version 2.
    assert_eq!(on_server(&county.data("tw-101"), &["policy", "show"])["version"], 2);
}

/// The village's case list of a replica: ids and numbers.
fn case_ids(fq: &Fq) -> Vec<String> {
    let list = fq.json(&["case", "list", "--village", VILLAGE_A]);
    let mut ids: Vec<String> =
        list["cases"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[test]
fn sync_brings_the_village_back_after_wrong_passphrases_erase_the_device() {
    let county = County::new();
    let township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let tw = township.addr.to_string();
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    let other = enrolled_device(&county, "d09", "grid-worker", VILLAGE_A, "王五");
    crate::encryption::write_cases(&a);
    other.json(&["case", "new", "--category", "land", "--title", "山林界址纠纷"]);
    assert_eq!(sync(&a, &["--server", &tw]).code, 0);
    assert_eq!(sync(&other, &["--server", &tw]).code, 0);
    let before = case_ids(&a);
    assert_eq!(before.len(), 3, "the first device wrote 3 cases");
    let village = case_ids(&other);
    assert_eq!(village.len(), 4, "the village holds every case of both devices");

    // A thief tries passphrases: warned before the last tries, then the key is gone.
    for n in 1..=10 {
        let mut cmd = a.command(&["case", "list"]);
        cmd.env(crate::harness::PASSPHRASE_ENV, format!("猜一个口令{n}"));
        let out = run(cmd);
        assert_eq!(out.code, 2, "try {n}: {out:?}");
        assert!(out.stdout.is_empty(), "try {n} shows nothing: {out:?}");
        let left = 10 - n;
        match n {
            1..=6 => assert!(out.stderr.contains(&format!("还能再试 {left} 次")), "try {n}: {out:?}"),
            7..=9 => assert!(out.stderr.contains(&format!("警告：再输错 {left} 次")), "try {n} warns: {out:?}"),
            _ => assert!(out.stderr.contains("已经清除") && out.stderr.contains("fq init --bundle"), "{out:?}"),
        }
    }
    for gone in ["ledger.key", "ledger.db", "ledger.db-wal"] {
        assert!(!a.data_dir().join(gone).exists(), "{gone} erased");
    }
    let out = a.run(&["--json", "case", "list"]);
    assert_eq!(out.error_json()["error"]["kind"], "not-initialized", "even the right passphrase opens nothing");

    // The user sets the phone up again from its bundle and syncs: the village comes back.
    let bundle = county.path("d07.bundle.json");
    a.json(&["init", "--bundle", bundle.to_str().unwrap(), "--name", "张三"]);
    let back = sync_json(&a, &[]);
    assert!(back["received"].as_u64().unwrap() >= 4, "{back:#}");
    assert_eq!(case_ids(&a), village, "every case of the village is back");
    for number in a.json(&["case", "list"])["cases"].as_array().unwrap().iter().map(|c| c["number"].clone()) {
        let number = number.as_str().unwrap();
        let here = a.json(&["case", "show", number, "--history"]);
        assert_eq!(here, other.json(&["case", "show", number, "--history"]), "{number} is whole");
    }
}

#[test]
fn encrypted_township_serves_and_its_key_file_opens_it_for_fq() {
    let county = County::new();
    county.issue("tw-101", "township", TOWNSHIP);
    let key = county.path("tw-101.key");
    std::fs::write(&key, "tw-101 secret: 7f3a9c0e5b214d68a1c2\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let data = county.data("tw-101");
    let bundle = county.path("tw-101.bundle.json");
    let run_args = |data: &Path| {
        vec![
            "run".to_owned(),
            "--tier".into(),
            "township".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--bundle".into(),
            bundle.to_str().unwrap().into(),
            "--encrypt".into(),
            "--key-file".into(),
            key.to_str().unwrap().into(),
        ]
    };
    let args = run_args(&data);
    let refused = fq_server_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains(&format!("chmod 600 {}", key.display())), "{refused:?}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let spec = RunSpec {
        tier: "township",
        listen: "127.0.0.1:0",
        data_dir: &data,
        bundle: &bundle,
        upstream: None,
        config: None,
    };
    let township =
        ServerProcess::start_with(&fq_server(), &spec, &["--encrypt".as_ref(), "--key-file".as_ref(), key.as_os_str()]);
    let tw = township.addr.to_string();

    // A device as a build before encryption left it: a plain ledger and a clear bundle.json.
    let a = Fq::new();
    std::fs::create_dir_all(a.data_dir()).unwrap();
    let device_bundle = fq_sync_server::ca::Bundle::load(&county.issue("d07", "mediator", VILLAGE_A)).unwrap();
    let init = InitOptions {
        tier: Tier::Device,
        name: "张三".into(),
        role: fq_core::case::Role::Mediator,
        scope: fq_core::case::AdminCode::parse(VILLAGE_A).unwrap(),
        grid: None,
    };
    let mut plain = Ledger::init(&a.ledger_file(), init, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
    plain.add_grant(device_bundle.grant()).unwrap();
    drop(plain);
    device_bundle.save(&a.data_dir().join("bundle.json")).unwrap();
    let numbers = crate::encryption::write_cases(&a);
    let first = sync(&a, &["--server", &tw]);
    assert_eq!(first.code, 0, "a plain device still syncs with its clear bundle: {first:?}");
    assert!(first.stderr.contains("fq encrypt"), "and is told to encrypt: {first:?}");

    // fq reads the running encrypted server with the key file, and only with it.
    let with_key = |args: &[&str]| {
        let mut cmd = fq_command();
        cmd.env_remove(crate::harness::PASSPHRASE_ENV);
        cmd.arg("--data-dir").arg(&data).arg("--passphrase-file").arg(&key).arg("--json").args(args);
        run(cmd)
    };
    eventually("the township to hold the cases", CONVERGE, || with_key(&["case", "list"]).json()["count"] == 3);
    let shown = with_key(&["case", "show", &numbers[0], "--unmasked"]).json();
    assert_eq!(shown["parties"][0]["name"], crate::encryption::PARTIES[0].0);
    let key_before = std::fs::read(data.join("ledger.key")).unwrap();
    let wrong = run({
        let mut cmd = fq_command();
        cmd.arg("--data-dir").arg(&data).args(["case", "list"]);
        cmd
    });
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert_eq!(std::fs::read(data.join("ledger.key")).unwrap(), key_before, "a server never counts or erases");
    let st =
        fq_server_run(&["status", "--data-dir", data.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "--json"]);
    assert_eq!(st.code, 0, "{st:?}");
    assert_eq!(serde_json::from_str::<Value>(&st.stdout).unwrap()["counts"]["cases"], 3, "{st:?}");
    let no_key = fq_server_run(&["status", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(no_key.code, 2, "{no_key:?}");
    assert!(no_key.stderr.contains("--key-file"), "{no_key:?}");
    let needles = crate::encryption::needles();
    assert_eq!(crate::encryption::readable(&data, &needles), Vec::<String>::new(), "the running server's files");
    assert_eq!(crate::encryption::loose_modes(&data), Vec::<String>::new());

    // fq encrypt takes the clear bundle into the device's encrypted ledger; sync reads it there.
    let out = a.run(&["encrypt"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("bundle.json 已删除"), "{out:?}");
    assert!(!a.data_dir().join("bundle.json").exists());
    let again = sync(&a, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.is_empty(), "no warning once encrypted: {again:?}");
    assert_eq!(crate::encryption::readable(&a.data_dir(), &needles), Vec::<String>::new());
}

#[test]
fn fq_server_encrypt_migrates_a_stopped_plain_replica_and_refuses_a_running_one() {
    let county = County::new();
    let mut township = county.server("tw-101", "township", TOWNSHIP, None, None);
    let a = enrolled_device(&county, "d07", "mediator", VILLAGE_A, "张三");
    crate::encryption::write_cases(&a);
    assert_eq!(sync(&a, &["--server", &township.addr.to_string()]).code, 0);
    let data = county.data("tw-101");
    let key = county.path("tw-101.key");
    std::fs::write(&key, "tw-101 secret: 0b8e2f4c6a1d3e5f7a9c\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let encrypt =
        || fq_server_run(&["encrypt", "--data-dir", data.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    let before = on_server(&data, &["case", "list"]);
    let busy = encrypt();
    assert_eq!(busy.code, 1, "refused while the server runs: {busy:?}");
    assert!(busy.stderr.contains("台账正被别的程序使用"), "{busy:?}");
    assert!(!data.join("ledger.key").exists(), "nothing changed");
    township.signal("TERM");
    township.wait_exit(Duration::from_secs(30)).expect("the township stops");
    let done = encrypt();
    assert_eq!(done.code, 0, "{done:?}");
    let mut cmd = fq_command();
    cmd.arg("--data-dir").arg(&data).arg("--passphrase-file").arg(&key).args(["--json", "case", "list"]);
    assert_eq!(run(cmd).json(), before, "every case kept");
    assert_eq!(crate::encryption::readable(&data, &crate::encryption::needles()), Vec::<String>::new());
    // It now runs only with its key.
    let spec = RunSpec {
        tier: "township",
        listen: "127.0.0.1:0",
        data_dir: &data,
        bundle: &county.path("tw-101.bundle.json"),
        upstream: None,
        config: None,
    };
    let plain_run = fq_server_run(&[
        "run",
        "--tier",
        "township",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--bundle",
        spec.bundle.to_str().unwrap(),
    ]);
    assert_eq!(plain_run.code, 2, "{plain_run:?}");
    assert!(plain_run.stderr.contains("--encrypt --key-file"), "{plain_run:?}");
    let again =
        ServerProcess::start_with(&fq_server(), &spec, &["--encrypt".as_ref(), "--key-file".as_ref(), key.as_os_str()]);
    assert_eq!(sync(&a, &["--server", &again.addr.to_string()]).code, 0);
}
