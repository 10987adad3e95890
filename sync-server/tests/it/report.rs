//! The county's routines at the server: `fq-server ca policy` signing the county policy, and
//! the monthly report a running server writes into its data directory by itself.

use std::path::Path;

use fq_core::clock::{Clock, SystemClock};
use fq_core::policy::SignedPolicy;
use fq_core::report::Month;
use fq_sync_server::ca::{CaCertificate, POLICY_FILE};
use serde_json::Value;

use crate::county::{County, fq_server, fq_server_json};
use crate::process::{RunSpec, ServerProcess};
use crate::schema::assert_valid;

fn roster() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/county-532924.json").to_str().unwrap().to_owned()
}

#[test]
fn ca_policy_signs_versions_that_only_grow_and_refuses_a_bad_file() {
    let county = County::new();
    let file = county.dir.path().join("policy.toml");
    std::fs::write(&file, "[deadlines]\nvillage = 10\n[routing]\ntownship_categories = [\"petition\"]\n").unwrap();
    let file = file.to_str().unwrap();
    let first = fq_server_json(&["ca", "policy", "--ca", county.ca_str(), "--file", file, "--roster", &roster()]);
    assert_eq!((first["version"].as_u64(), first["staff"].as_u64()), (Some(1), Some(1_592)));
    // Without --roster the roster of the newest policy is kept; the version goes up.
    let second = fq_server_json(&["ca", "policy", "--ca", county.ca_str(), "--file", file]);
    assert_eq!((second["version"].as_u64(), second["staff"].as_u64()), (Some(2), Some(1_592)));
    let ca = CaCertificate::from_pem(&std::fs::read_to_string(county.ca_dir().join("ca.cert.pem")).unwrap()).unwrap();
    let signed =
        SignedPolicy::from_json(&std::fs::read(county.ca_dir().join(POLICY_FILE)).unwrap(), ca.verifying_key())
            .unwrap();
    assert_eq!((signed.version(), signed.policy().deadlines.village), (2, 10));
    assert!(signed.areas().iter().any(|a| a.name == "宾居镇"));
    // A typo in the policy: nothing signed, exit 2.
    std::fs::write(county.dir.path().join("typo.toml"), "[deadlines]\nvilage = 10\n").unwrap();
    let typo = county.dir.path().join("typo.toml");
    let out = fq_server(&["ca", "policy", "--ca", county.ca_str(), "--file", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let kept = SignedPolicy::from_json(&std::fs::read(county.ca_dir().join(POLICY_FILE)).unwrap(), ca.verifying_key())
        .unwrap();
    assert_eq!(kept.version(), 2, "the CA's newest policy is untouched");
}

#[test]
fn a_running_server_writes_last_months_report_and_status_names_it() {
    let county = County::new();
    county.issue("county", "county", "532924");
    let data = county.dir.path().join("county-data");
    let server = ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_fq-server")),
        &RunSpec {
            tier: "county",
            listen: "127.0.0.1:0",
            data_dir: &data,
            bundle: &county.bundle_path("county"),
            upstream: None,
            config: None,
        },
    );
    let month = Month::of(SystemClock.now()).previous().to_string();
    let line = server.wait_log("monthly report written", |l| l["month"] == month.as_str());
    let html = std::fs::read_to_string(line["path"].as_str().unwrap()).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("矛盾纠纷统计报告"));
    let json: Value =
        serde_json::from_slice(&std::fs::read(data.join("reports").join(format!("monthly-{month}.json"))).unwrap())
            .unwrap();
    assert_valid("report-monthly.v1.schema.json", &json);
    assert_eq!(json["scope"], "532924");
    let xlsx = std::fs::read(data.join("reports").join(format!("monthly-{month}.xlsx"))).unwrap();
    assert!(xlsx.starts_with(b"PK"));
    let status = fq_server_json(&["status", "--data-dir", data.to_str().unwrap()]);
    assert_valid("server-status.v1.schema.json", &status);
    assert_eq!(status["newest_report"]["month"], month.as_str());
    let words = fq_server(&["status", "--data-dir", data.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&words.stdout).contains(&format!("newest monthly report: {month}")));
    let zh = fq_server(&["--lang", "zh", "status", "--data-dir", data.to_str().unwrap()]);
    let zh = String::from_utf8_lossy(&zh.stdout);
    assert!(zh.contains(&format!("最新的月报：{month}")) && zh.contains("县级政策："), "{zh}");
    drop(server);
}

#[test]
fn an_encrypted_server_writes_its_report_with_the_replica_key() {
    let county = County::new();
    county.issue("county", "county", "532924");
    let data = county.dir.path().join("county-data");
    let key = county.dir.path().join("county.key");
    std::fs::write(&key, "county secret: 5d1e7a3c9b2f4e60a8c1\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = ServerProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_fq-server")),
        &RunSpec {
            tier: "county",
            listen: "127.0.0.1:0",
            data_dir: &data,
            bundle: &county.bundle_path("county"),
            upstream: None,
            config: None,
        },
        &["--encrypt".as_ref(), "--key-file".as_ref(), key.as_os_str()],
    );
    let month = Month::of(SystemClock.now()).previous().to_string();
    server.wait_log("monthly report written", |l| l["month"] == month.as_str());
    let json: Value =
        serde_json::from_slice(&std::fs::read(data.join("reports").join(format!("monthly-{month}.json"))).unwrap())
            .unwrap();
    assert_valid("report-monthly.v1.schema.json", &json);
    assert_eq!(json["scope"], "532924");
    assert!(
        server.logs().iter().all(|l| l["message"] != "cannot write the monthly report; trying again in an hour"),
        "{}",
        server.dump()
    );
    let status = fq_server_json(&["status", "--data-dir", data.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert_eq!(status["newest_report"]["month"], month.as_str());
    drop(server);
}
