//! Running the real `fq` binary with bounded waits.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fq_core::clock::SystemClock;
use fq_core::ledger::{Ledger, LedgerOptions};
use fq_core::vault::{DEFAULT_WIPE_AFTER, DataKey, KdfParams, Passphrase, Protection, Vault, WipePolicy};
use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const FQ: &str = env!("CARGO_BIN_EXE_fq");
/// Longest any single `fq` run may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// A village code inside Binchuan county (532924).
pub const VILLAGE: &str = "532924101201";
/// A valid resident ID number, and the same with a wrong check digit.
pub const ID_OK: &str = "532924198001011230";
pub const ID_BAD_CHECKSUM: &str = "532924198001011231";
/// Locale variables `fq` reads; cleared so tests do not depend on the machine.
pub const LOCALE_VARS: [&str; 3] = ["LANG", "LC_ALL", "LC_MESSAGES"];
/// The passphrase every test ledger is made with (`FQ_PASSPHRASE` in [`fq_command`]).
pub const PASSPHRASE: &str = "测试口令：门前有3棵柿子树";
/// The variable `fq` reads a passphrase from.
pub const PASSPHRASE_ENV: &str = "FQ_PASSPHRASE";

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON, after checking the run succeeded.
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "fq failed: {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Stderr as JSON (the `{"error":..}` of a failed `--json` run).
    pub fn error_json(&self) -> Value {
        assert_ne!(self.code, 0, "fq succeeded: {self:?}");
        serde_json::from_str(self.stderr.trim()).unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {self:?}"))
    }
}

/// A command for `fq` with no locale and no `FQ_DATA_DIR` from the machine, and the tests'
/// passphrase in `FQ_PASSPHRASE` (standard input is no terminal, so nothing is asked).
pub fn fq_command() -> Command {
    let mut cmd = Command::new(FQ);
    for v in LOCALE_VARS {
        cmd.env_remove(v);
    }
    cmd.env_remove("FQ_DATA_DIR");
    cmd.env(PASSPHRASE_ENV, PASSPHRASE);
    cmd.stdin(Stdio::null());
    cmd
}

/// The data key of the ledger file at `ledger`, if `fq` made it encrypted (with [`PASSPHRASE`]).
pub fn key_for(ledger: &Path) -> Option<DataKey> {
    let vault = Vault::for_ledger(ledger);
    (vault.protection().unwrap() == Protection::Encrypted)
        .then(|| vault.unlock(&Passphrase::new(PASSPHRASE.into())).unwrap())
}

/// The data key of a new device ledger at `ledger`, wrapped with [`PASSPHRASE`] as `fq init`
/// wraps it (same derivation, same wrong-try limit), for a test that builds a device's ledger
/// through the core: [`fq_core::ledger::Ledger::init`] with it creates the file encrypted.
pub fn new_device_key(ledger: &Path) -> DataKey {
    fq_core::vault::private_dir(ledger.parent().unwrap()).unwrap();
    let wipe = WipePolicy::device(DEFAULT_WIPE_AFTER).unwrap();
    Vault::for_ledger(ledger).create(&Passphrase::new(PASSPHRASE.into()), wipe, KdfParams::DEFAULT).unwrap()
}

/// Opens a ledger file `fq` made (encrypted or not) through the core, read-write.
pub fn open_ledger(ledger: &Path) -> Ledger {
    Ledger::open(ledger, Arc::new(SystemClock), LedgerOptions { key: key_for(ledger), ..Default::default() }).unwrap()
}

/// Opens a ledger file `fq` made (encrypted or not) through the core, read-only.
pub fn open_ledger_read_only(ledger: &Path) -> Ledger {
    Ledger::open_read_only_with_key(ledger, Arc::new(SystemClock), key_for(ledger).as_ref()).unwrap()
}

/// Waits for `child` at most `limit`; kills it and fails the test after that.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fq did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a command to completion (bounded), capturing its output. Every run
/// is checked for a panic message: no input may make `fq` panic.
pub fn run(mut cmd: Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = wait_bounded(&mut child, RUN_TIMEOUT);
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(out_reader.join().unwrap()).unwrap(),
        stderr: String::from_utf8(err_reader.join().unwrap()).unwrap(),
    };
    assert!(!run.stderr.contains("panicked"), "fq panicked: {run:?}");
    assert!(matches!(run.code, 0..=2), "unexpected exit code: {run:?}");
    run
}

/// A temporary place with one data directory in it (created by `fq init`).
#[derive(Debug)]
pub struct Fq {
    root: TempDir,
}

impl Fq {
    pub fn new() -> Self {
        Self { root: tempfile::tempdir().unwrap() }
    }

    /// The data directory (`--data-dir`); it does not exist before `init`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn ledger_file(&self) -> PathBuf {
        self.data_dir().join("ledger.db")
    }

    /// A scratch path next to the data directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = fq_command();
        cmd.arg("--data-dir").arg(self.data_dir()).args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.command(args))
    }

    /// Runs with `--json`, checks success, returns stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all).json()
    }

    /// `fq init` as the mediator 张三 of the test village.
    pub fn init_mediator(&self) -> Value {
        self.json(&["init", "--village", VILLAGE, "--name", "张三", "--role", "mediator"])
    }

    /// The issue's `case new`; returns the case state.
    pub fn new_case(&self) -> Value {
        let party = format!("李四,{ID_OK},13800000000");
        let out = self.json(&[
            "case",
            "new",
            "--category",
            "neighbor",
            "--title",
            "宅基地滴水纠纷",
            "--party",
            &party,
            "--party",
            "王五",
        ]);
        out["case"].clone()
    }

    /// How many cases `case list` shows.
    pub fn case_count(&self) -> u64 {
        self.json(&["case", "list"])["count"].as_u64().unwrap()
    }
}
