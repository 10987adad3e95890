//! A real `fq-server run` process for tests: JSON logs collected as they come, every wait
//! bounded, and the process killed when the guard drops.
//!
//! Shared with `fq-field`'s tests (included there with `#[path]`), so it names no binary
//! itself: callers pass the path of `fq-server`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound on waiting for a server to say something.
pub const LOG_WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Lines {
    lines: Vec<Value>,
    closed: bool,
}

/// A running `fq-server run`; killed (SIGKILL) on drop if still running.
pub struct ServerProcess {
    child: Child,
    /// The address it listens on, from its "listening" log line.
    pub addr: SocketAddr,
    logs: Arc<(Mutex<Lines>, Condvar)>,
}

/// Arguments of `fq-server run` for a server in `data_dir` with `bundle`.
pub struct RunSpec<'a> {
    pub tier: &'a str,
    pub listen: &'a str,
    pub data_dir: &'a Path,
    pub bundle: &'a Path,
    pub upstream: Option<SocketAddr>,
    pub config: Option<&'a Path>,
}

impl ServerProcess {
    /// Starts `binary run ...` with JSON logs and waits (bounded) for it to listen.
    pub fn start(binary: &Path, spec: &RunSpec<'_>) -> Self {
        Self::start_with(binary, spec, &[])
    }

    /// [`ServerProcess::start`] with more `run` arguments (e.g. `--encrypt --key-file FILE`).
    pub fn start_with(binary: &Path, spec: &RunSpec<'_>, more: &[&std::ffi::OsStr]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(["--tier", spec.tier, "--listen", spec.listen, "--log-format", "json"])
            .arg("--data-dir")
            .arg(spec.data_dir)
            .arg("--bundle")
            .arg(spec.bundle);
        if let Some(up) = spec.upstream {
            cmd.args(["--upstream", &up.to_string()]);
        }
        if let Some(config) = spec.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(more);
        cmd.env("RUST_LOG", "info,fq_sync_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("fq-server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                let (lock, cv) = &*sink;
                lock.lock().unwrap().lines.push(value);
                cv.notify_all();
            }
            let (lock, cv) = &*sink;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let mut server = ServerProcess { child, addr: "0.0.0.0:0".parse().unwrap(), logs };
        let listening = server.wait_log("listening", |_| true);
        server.addr = listening["addr"].as_str().expect("listening line has addr").parse().unwrap();
        server
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.0.lock().unwrap().lines.clone()
    }

    /// Waits (bounded) for a log line with this message that also satisfies `pred`.
    pub fn wait_log(&self, message: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_for(message, LOG_WAIT, pred)
            .unwrap_or_else(|| panic!("fq-server never logged {message:?} within {LOG_WAIT:?}; logs:\n{}", self.dump()))
    }

    /// Like [`ServerProcess::wait_log`], but returns `None` after `limit`.
    pub fn wait_log_for(&self, message: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.logs;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(found) = lines.lines.iter().find(|l| l["message"] == message && pred(l)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if lines.closed || now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The logs as text, for failure messages.
    pub fn dump(&self) -> String {
        self.logs().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to this process (by its id): "KILL" through std, others (e.g. "TERM")
    /// with kill(1).
    pub fn signal(&mut self, signal: &str) {
        if signal == "KILL" {
            self.child.kill().unwrap();
            return;
        }
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config file enabling the revocation list at `revocations` (checked every second) and a
/// short sync interval, written into `dir`.
pub fn write_config(dir: &Path, revocations: Option<&Path>) -> PathBuf {
    let path = dir.join("server.toml");
    let mut text = String::from("sync_interval_secs = 2\nrevocation_poll_secs = 1\n");
    if let Some(r) = revocations {
        text.push_str(&format!("revocations_file = {:?}\n", r.to_str().unwrap()));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A config file named `name` in `dir` holding `text`.
pub fn write_config_text(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
