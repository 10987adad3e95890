//! What a server runs with: the command line's settings, and the optional `--config` file's.
//!
//! The file is small on purpose: how often a township re-dials the county, and where the
//! county CA's revocation list lives (re-read while the server runs; the county names the CA's
//! file, townships normally none, since the county sends them its list over sync). It may be TOML or JSON
//! (`.json` files are read as JSON, anything else as TOML); unknown keys are refused so a typo
//! never silently falls back to a default.
//!
//! ```toml
//! sync_interval_secs = 300
//! revocations_file = "/var/lib/fq/ca/revocations.json"
//! revocation_poll_secs = 30
//! # The county: the CA's signed policy, sent down the tree with sync.
//! policy_file = "/var/lib/fq/ca/policy.json"
//! # Write last month's report into DIR/reports/ on the first of each month (default true).
//! monthly_reports = true
//! # Rarely needed: link tuning for unusual networks.
//! keep_alive_secs = 15
//! idle_timeout_secs = 120
//! ack_timeout_secs = 20
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fq_core::ledger::Tier;
use fq_core::sync::session::SessionConfig;
use serde::Deserialize;

use crate::net::NetConfig;

/// How often a township re-dials the county when its link is down, unless the file says.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How often the revocation list file is checked for a new version, unless the file says.
pub const DEFAULT_REVOCATION_POLL: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take before connections are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long dialing the county may take before the attempt counts as failed. A 2G handshake
/// takes a few seconds; anything near this means the link is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted sync interval: a township that syncs less than daily is offline.
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest config file read; a real one is a few lines.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Everything [`crate::server::bind`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// County or township.
    pub tier: Tier,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory of the server's replica (`ledger.db`).
    pub data_dir: PathBuf,
    /// The server's bundle file (a county or township server certificate).
    pub bundle: PathBuf,
    /// The county server's address, for a township.
    pub upstream: Option<SocketAddr>,
    /// Longest wait between dials of the county while the link is down.
    pub sync_interval: Duration,
    /// The CA's revocation list file, re-read while the server runs.
    pub revocations_file: Option<PathBuf>,
    /// How often `revocations_file` (and `policy_file`) is checked.
    pub revocation_poll: Duration,
    /// The CA's signed county policy, followed while running (the county
    /// server; townships get it from the county over sync).
    pub policy_file: Option<PathBuf>,
    /// Whether the server writes last month's report into `DIR/reports/`
    /// on the first of each month.
    pub monthly_reports: bool,
    /// QUIC transport settings.
    pub net: NetConfig,
    /// Sync session tunables (batch sizes, the 20 s ack watchdog).
    pub session: SessionConfig,
    /// Bound on a graceful shutdown.
    pub shutdown_grace: Duration,
    /// Bound on one dial of the county.
    pub connect_timeout: Duration,
}

impl ServerConfig {
    /// Settings with every default: no upstream, no revocation file.
    pub fn new(tier: Tier, listen: SocketAddr, data_dir: PathBuf, bundle: PathBuf) -> Self {
        Self {
            tier,
            listen,
            data_dir,
            bundle,
            upstream: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            revocations_file: None,
            revocation_poll: DEFAULT_REVOCATION_POLL,
            policy_file: None,
            monthly_reports: true,
            net: NetConfig::default(),
            session: SessionConfig::default(),
            shutdown_grace: SHUTDOWN_GRACE,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Applies a config file's settings on top of these.
    pub fn apply(&mut self, file: &FileConfig) {
        if let Some(secs) = file.sync_interval_secs {
            self.sync_interval = Duration::from_secs(secs);
        }
        if let Some(path) = &file.revocations_file {
            self.revocations_file = Some(path.clone());
        }
        if let Some(secs) = file.revocation_poll_secs {
            self.revocation_poll = Duration::from_secs(secs);
        }
        if let Some(path) = &file.policy_file {
            self.policy_file = Some(path.clone());
        }
        if let Some(on) = file.monthly_reports {
            self.monthly_reports = on;
        }
        if let Some(secs) = file.keep_alive_secs {
            self.net.keep_alive_interval = Duration::from_secs(secs);
        }
        if let Some(secs) = file.idle_timeout_secs {
            self.net.idle_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = file.ack_timeout_secs {
            self.session.ack_timeout_ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        }
    }
}

/// The `--config` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// Longest wait between dials of the county while the link is down (1 s to 1 day).
    pub sync_interval_secs: Option<u64>,
    /// The county CA's `revocations.json` (or a copy kept current by the operator; townships
    /// get the county's list over sync without one). A relative path is taken from the config
    /// file's directory.
    pub revocations_file: Option<PathBuf>,
    /// How often the revocation file is checked (1 s to 1 day). SIGHUP checks at once.
    pub revocation_poll_secs: Option<u64>,
    /// The CA's signed county policy (`policy.json`, from `fq-server ca policy`), for the
    /// county server to follow; checked as often as the revocation file. A relative path is
    /// taken from the config file's directory.
    pub policy_file: Option<PathBuf>,
    /// Whether to write last month's report into the data directory's `reports/` on the
    /// first of each month (default true).
    pub monthly_reports: Option<bool>,
    /// QUIC keep-alive interval (default 15 s); must be shorter than the idle timeout.
    pub keep_alive_secs: Option<u64>,
    /// QUIC idle timeout: a link silent this long is dropped (default 120 s).
    pub idle_timeout_secs: Option<u64>,
    /// The session watchdog: a push unacknowledged this long ends the session (default 20 s).
    pub ack_timeout_secs: Option<u64>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path} could not be read")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {path} is {len} bytes, more than {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not valid TOML or JSON, or has unknown keys.
    #[error("config file {path} is invalid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A value is out of range.
    #[error("config file {path}: {key} must be between {min} and {max}")]
    Range {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
}

impl FileConfig {
    /// Reads and checks a config file (`.json`: JSON, otherwise TOML).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned(), len });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let parse = |reason: String| ConfigError::Parse { path: path.to_owned(), reason };
        let mut file: FileConfig = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| parse(e.to_string()))?
        };
        let max = MAX_SYNC_INTERVAL.as_secs();
        let bounded = [
            ("sync_interval_secs", file.sync_interval_secs),
            ("revocation_poll_secs", file.revocation_poll_secs),
            ("keep_alive_secs", file.keep_alive_secs),
            ("idle_timeout_secs", file.idle_timeout_secs),
            ("ack_timeout_secs", file.ack_timeout_secs),
        ];
        for (key, value) in bounded {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                return Err(ConfigError::Range { path: path.to_owned(), key, min: 1, max });
            }
        }
        if let Some(rel) = &file.revocations_file
            && rel.is_relative()
            && let Some(dir) = path.parent()
        {
            file.revocations_file = Some(dir.join(rel));
        }
        if let Some(rel) = &file.policy_file
            && rel.is_relative()
            && let Some(dir) = path.parent()
        {
            file.policy_file = Some(dir.join(rel));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn load_reads_toml_and_json_alike() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(dir.path(), "a.toml", "sync_interval_secs = 90\nrevocations_file = \"ca/revocations.json\"\n");
        let json =
            write(dir.path(), "a.json", r#"{"sync_interval_secs": 90, "revocations_file": "ca/revocations.json"}"#);
        let a = FileConfig::load(&toml).unwrap();
        assert_eq!(a, FileConfig::load(&json).unwrap());
        assert_eq!(a.sync_interval_secs, Some(90));
        assert_eq!(a.revocations_file, Some(dir.path().join("ca/revocations.json")));
    }

    #[test]
    fn load_refuses_unknown_keys_and_zero_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let typo = write(dir.path(), "b.toml", "sync_intervall_secs = 90\n");
        assert!(matches!(FileConfig::load(&typo), Err(ConfigError::Parse { .. })));
        let zero = write(dir.path(), "c.toml", "sync_interval_secs = 0\n");
        assert!(matches!(FileConfig::load(&zero), Err(ConfigError::Range { key: "sync_interval_secs", .. })));
    }
}
