//! A county CA on disk, driven through the real `fq-server` binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use fq_sync_server::ca::{Bundle, REVOCATIONS_FILE, RevocationList};
use tempfile::TempDir;

/// Runs the built `fq-server` with `args`, in English (these tests read its English words;
/// `language.rs` tests the Chinese ones).
pub fn fq_server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fq-server"))
        .args(args)
        .env("LANG", "en_US.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .output()
        .expect("fq-server runs")
}

/// Runs `fq-server` and asserts it succeeded; returns its stdout parsed as JSON.
pub fn fq_server_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = fq_server(&all);
    assert!(out.status.success(), "fq-server {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints one json object")
}

/// A temporary directory holding one county CA and the bundles issued from it.
pub struct County {
    pub dir: TempDir,
    /// The CA directory, as the CLI argument.
    ca: String,
}

impl County {
    /// A new CA for county 532924.
    pub fn new() -> Self {
        Self::with_code("532924")
    }

    /// A new CA for `code`.
    pub fn with_code(code: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca").to_str().unwrap().to_owned();
        fq_server_json(&["ca", "init", "--dir", &ca, "--county", code]);
        Self { dir, ca }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_str(&self) -> &str {
        &self.ca
    }

    pub fn bundle_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.bundle.json"))
    }

    /// Issues a bundle through the CLI and loads it; `file` names the bundle file.
    pub fn issue_as(&self, file: &str, id: &str, role: &str, scope: &str) -> Bundle {
        let out = self.bundle_path(file);
        fq_server_json(&[
            "ca",
            "issue",
            "--ca",
            self.ca_str(),
            "--id",
            id,
            "--role",
            role,
            "--scope",
            scope,
            "--out",
            out.to_str().unwrap(),
        ]);
        Bundle::load(&out).unwrap()
    }

    pub fn issue(&self, id: &str, role: &str, scope: &str) -> Bundle {
        self.issue_as(id, id, role, scope)
    }

    /// Revokes `id` through the CLI and returns the list now in force.
    pub fn revoke(&self, id: &str) -> RevocationList {
        fq_server_json(&["ca", "revoke", "--ca", self.ca_str(), "--id", id]);
        self.revocations()
    }

    pub fn revocations(&self) -> RevocationList {
        RevocationList::load(&self.ca_dir().join(REVOCATIONS_FILE)).unwrap()
    }
}
