//! Restarts and shutdowns of the real `fq-server`: the stateless-reset key survives restarts, a
//! restarted server resets its predecessor's connections at once, SIGTERM frees the port for an
//! immediate restart, and logs written to a file or a pipe carry no terminal escapes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fq_core::sync::wire::{self, ErrorCode, Message};
use fq_sync_server::client::sync_once;
use fq_sync_server::net::{CloseCode, ConnectionError, client_endpoint};
use fq_sync_server::server::RESET_KEY_FILE;
use tokio::time::timeout;

use crate::county::County;
use crate::process::{RunSpec, ServerProcess};
use crate::server::{device, new_case, options};

const FQ_SERVER: &str = env!("CARGO_BIN_EXE_fq-server");
const TOWNSHIP: &str = "532924101";
const VILLAGE: &str = "532924101201";
/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(30);

/// A township of `county` on `listen`, with its data in `data` (JSON logs, bounded waits).
fn township(county: &County, data: &Path, listen: &str) -> ServerProcess {
    let bundle = county.bundle_path("tw-101");
    if !bundle.exists() {
        county.issue("tw-101", "township", TOWNSHIP);
    }
    ServerProcess::start(
        Path::new(FQ_SERVER),
        &RunSpec { tier: "township", listen, data_dir: data, bundle: &bundle, upstream: None, config: None },
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn reset_key_is_made_once_and_kept_across_restarts() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tw");
    let key = data.join(RESET_KEY_FILE);
    let mut server = township(&county, &data, "127.0.0.1:0");
    server.wait_log("reset key created", |_| true);
    let first = std::fs::read(&key).unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(mode(&key), 0o600, "the reset key is a secret");
    let addr = server.addr.to_string();
    server.signal("TERM");
    server.wait_exit(WAIT).expect("exits after SIGTERM");

    let mut again = township(&county, &data, &addr);
    assert_eq!(std::fs::read(&key).unwrap(), first, "a restart keeps the key");
    assert!(again.logs().iter().all(|l| l["message"] != "reset key created"), "{}", again.dump());
    again.signal("KILL");
    again.wait_exit(WAIT).unwrap();

    // A damaged key (a torn copy from a backup) is replaced, with a warning.
    std::fs::write(&key, b"short").unwrap();
    let replaced = township(&county, &data, &addr);
    replaced.wait_log("reset key damaged; making a new one", |l| l["len"] == 5);
    let new = std::fs::read(&key).unwrap();
    assert_eq!(new.len(), 32);
    assert_ne!(new, first);
}

/// A device's connection to a township that is killed and restarted on the same address is
/// reset by the new process as soon as the device's next packet arrives (a keep-alive every
/// 500 ms here): with a random key per process it would wait for its idle timeout (5 s here,
/// 120 s in the field) and end as timed out.
#[tokio::test]
async fn restarted_server_resets_its_predecessors_connections() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tw");
    let mut server = township(&county, &data, "127.0.0.1:0");
    let addr = server.addr;
    let bundle = county.issue("d07", "mediator", VILLAGE);
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), &bundle, &options().net).unwrap();
    let (conn, _) = timeout(WAIT, endpoint.connect(addr)).await.unwrap().unwrap();
    // The device's connection is established at both ends (the server confirmed the handshake)
    // before the kill: until then the device still retransmits its handshake in long-header
    // packets, which no server answers with a stateless reset, and the test would race the
    // server reading the device's Finished (slower while it writes its first monthly report).
    let confirmed = Instant::now();
    while conn.stats().frame_rx.handshake_done == 0 {
        assert!(confirmed.elapsed() < WAIT, "the server never confirmed the handshake");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.signal("KILL");
    server.wait_exit(WAIT).unwrap();
    let _restarted = township(&county, &data, &addr.to_string());
    let closed = timeout(WAIT, conn.closed()).await.expect("the old connection ends");
    assert!(matches!(closed, ConnectionError::Reset), "expected a stateless reset, got {closed:?}");
}

/// SIGTERM with a device connected: the process exits (bounded wait), the device is told the
/// server is shutting down, and a new server binds the same port at once and serves.
#[tokio::test]
async fn sigterm_exits_and_frees_the_port_for_an_immediate_restart() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tw");
    let mut server = township(&county, &data, "127.0.0.1:0");
    let addr = server.addr;
    let bundle = county.issue("d07", "mediator", VILLAGE);
    let mut ledger = device(&bundle);
    ledger.create_case(new_case("关机前")).unwrap();
    timeout(WAIT, sync_once(&mut ledger, &bundle, addr, &options(), |_| {})).await.unwrap().unwrap();
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), &bundle, &options().net).unwrap();
    let (held, _) = timeout(WAIT, endpoint.connect(addr)).await.unwrap().unwrap();

    server.signal("TERM");
    let status = server.wait_exit(WAIT).expect("fq-server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}; logs:\n{}", server.dump());
    server.wait_log("shutdown complete", |_| true);
    let closed = timeout(WAIT, held.closed()).await.unwrap();
    match closed {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(CloseCode::from_code(close.error_code), Some(CloseCode::ShuttingDown))
        }
        other => panic!("the device was not told the server is shutting down: {other:?}"),
    }

    // The very next moment, on the same port.
    let again = township(&county, &data, &addr.to_string());
    assert_eq!(again.addr, addr);
    ledger.create_case(new_case("重启后")).unwrap();
    let report = timeout(WAIT, sync_once(&mut ledger, &bundle, addr, &options(), |_| {})).await.unwrap().unwrap();
    assert_eq!(report.stats.sent, 1);
}

/// A `fq-server run` whose standard error goes to `log` (a file), not a terminal.
pub fn start_logging_to(
    data: &Path,
    bundle: &Path,
    format: &str,
    log: &Path,
    env: &[(&str, &str)],
) -> (Child, SocketAddr) {
    let mut cmd = Command::new(FQ_SERVER);
    cmd.args(["run", "--tier", "township", "--listen", "127.0.0.1:0", "--log-format", format])
        .arg("--data-dir")
        .arg(data)
        .arg("--bundle")
        .arg(bundle)
        .env_remove("NO_COLOR")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env("RUST_LOG", "info,fq_sync_server=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = listening_addr(&text) {
            break addr;
        }
        assert!(start.elapsed() < WAIT, "fq-server never said where it listens:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, addr)
}

/// The address in the "listening" line of a human (either language) or JSON log.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return (v["message"] == "listening").then(|| v["addr"].as_str()?.parse().ok()).flatten();
        }
        let rest = line.split(" addr=").nth(1).or_else(|| line.split(" 地址=").nth(1))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit successfully.
pub fn stop(child: &mut Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(start.elapsed() < WAIT, "fq-server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Human and JSON logs written to a file hold no ESC byte, not even when a peer sends one in
/// the reason it ends its session with (the log escapes it).
#[tokio::test]
async fn logs_carry_no_escape_bytes_when_not_on_a_terminal() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    county.issue("tw-101", "township", TOWNSHIP);
    let bundle = county.issue("d07", "mediator", VILLAGE);
    for format in ["human", "json"] {
        let log: PathBuf = dir.path().join(format!("{format}.log"));
        let data = dir.path().join(format!("tw-{format}"));
        let (mut child, addr) = start_logging_to(&data, &county.bundle_path("tw-101"), format, &log, &[]);
        let mut ledger = device(&bundle);
        ledger.create_case(new_case("日志")).unwrap();
        timeout(WAIT, sync_once(&mut ledger, &bundle, addr, &options(), |_| {})).await.unwrap().unwrap();
        // A peer ends a session with a reason holding terminal escapes.
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), &bundle, &options().net).unwrap();
        let (conn, _) = timeout(WAIT, endpoint.connect(addr)).await.unwrap().unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = {
            let creds = fq_core::sync::session::Credentials {
                ca: bundle.ca_verifying_key(),
                own: Some((bundle.grant().clone(), bundle.signing_key().clone())),
                peer_scope_limit: None,
            };
            let mut s = fq_core::sync::session::Session::new(
                fq_core::sync::session::Side::Child,
                &ledger,
                creds,
                Default::default(),
                None,
                fq_core::clock::Clock::now(&fq_core::clock::SystemClock),
            )
            .unwrap();
            s.poll_transmit().unwrap()
        };
        let error =
            wire::encode(&Message::Error { code: ErrorCode::Internal, text: "bye\u{1b}[2J\u{7}".into() }).unwrap();
        send.write_all(&[hello, error].concat()).await.unwrap();
        let _ = send.finish();
        let _ = timeout(WAIT, recv.read_to_end(1 << 20)).await;
        conn.close(0u32.into(), b"");
        let start = Instant::now();
        while !std::fs::read_to_string(&log).unwrap().contains("bye") {
            assert!(start.elapsed() < WAIT, "the peer's reason never reached the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop(&mut child);
        let bytes = std::fs::read(&log).unwrap();
        assert!(!bytes.contains(&0x1b), "{format} log holds an ESC byte:\n{}", String::from_utf8_lossy(&bytes));
        assert!(!bytes.contains(&0x07), "{format} log holds a BEL byte");
        let text = String::from_utf8(bytes).unwrap();
        match format {
            "human" => assert!(text.contains("bye\\u{1b}[2J\\u{7}"), "{text}"),
            _ => assert!(text.contains("bye\\u001b[2J\\u0007"), "{text}"),
        }
    }
}

/// A township's link to a county that is killed and restarted ends at the township's next
/// packet (a keep-alive, 1 s here) with a stateless reset, and the township dials again. The
/// idle timeout is 120 s, as in the field: without the reset the link would stay dead past the
/// harness's 60 s bound.
#[test]
fn township_link_notices_a_restarted_county_at_once() {
    let county = County::new();
    let dir = tempfile::tempdir().unwrap();
    county.issue("county", "county", "532924");
    county.issue("tw-101", "township", TOWNSHIP);
    let config =
        crate::process::write_config_text(dir.path(), "link.toml", "keep_alive_secs = 1\nsync_interval_secs = 2\n");
    let county_data = dir.path().join("county");
    let county_bundle = county.bundle_path("county");
    let spec = |listen| RunSpec {
        tier: "county",
        listen,
        data_dir: &county_data,
        bundle: &county_bundle,
        upstream: None,
        config: None,
    };
    let mut county_server = ServerProcess::start(Path::new(FQ_SERVER), &spec("127.0.0.1:0"));
    let county_addr = county_server.addr;
    let township = ServerProcess::start(
        Path::new(FQ_SERVER),
        &RunSpec {
            tier: "township",
            listen: "127.0.0.1:0",
            data_dir: &dir.path().join("tw"),
            bundle: &county.bundle_path("tw-101"),
            upstream: Some(county_addr),
            config: Some(&config),
        },
    );
    township.wait_log("session caught up", |l| l["peer"] == "county");
    county_server.signal("KILL");
    county_server.wait_exit(WAIT).unwrap();
    let listen = county_addr.to_string();
    let _county_again = ServerProcess::start(Path::new(FQ_SERVER), &spec(&listen));
    township.wait_log("upstream disconnected", |l| l["reason"] == "reset by the peer");
    let start = Instant::now();
    while township.logs().iter().filter(|l| l["message"] == "upstream connected").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "the township never dialed again:\n{}", township.dump());
        std::thread::sleep(Duration::from_millis(50));
    }
}
