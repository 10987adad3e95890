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
//! # What peers may make the server hold (crate::limits; OPERATIONS.md derives the bound).
//! max_connections = 256
//! max_connections_per_peer = 4
//! max_streams_per_connection = 2
//! input_budget_mib = 128
//! input_budget_per_peer_mib = 4
//! ```
//!
//! [`ServerConfig::memory_bound`] turns the limits into the most memory the server can be made
//! to hold.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fq_core::vault::Passphrase;
use std::time::Duration;

use fq_core::lang::Lang;
use fq_core::ledger::Tier;
use fq_core::sync::session::SessionConfig;
use fq_core::sync::wire::{MAX_CHANGE_BYTES, MAX_FRAME_BYTES};
use serde::{Deserialize, Serialize};

use crate::limits::{Limits, MIB};
use crate::net::{CONNECTION_RECEIVE_WINDOW_BYTES, NetConfig, STREAM_RECEIVE_WINDOW_BYTES};

/// How often a township re-dials the county when its link is down, unless the file says.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How often the revocation list file is checked for a new version, unless the file says.
pub const DEFAULT_REVOCATION_POLL: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take, from the moment the batch being applied has
/// committed, before connections are cut: long enough for the last acks and the "shutting down"
/// frames to leave, short enough that a restart never finds the port still taken.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(700);
/// How long dialing the county may take before the attempt counts as failed. A 2G handshake
/// takes a few seconds; anything near this means the link is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted sync interval: a township that syncs less than daily is offline.
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest config file read; a real one is a few lines.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Most `max_connections` a config may ask for.
const MAX_CONNECTIONS_LIMIT: u64 = 65_536;
/// Most `max_connections_per_peer` a config may ask for.
const MAX_CONNECTIONS_PER_PEER_LIMIT: u64 = 64;
/// Most `max_streams_per_connection` a config may ask for.
const MAX_STREAMS_LIMIT: u64 = 16;
/// Most MiB an input budget may be.
const MAX_BUDGET_MIB: u64 = 64 * 1024;
/// The defaults of the budgets, in MiB, for the checks of the file.
const DEFAULT_BUDGET_MIB: u64 = (crate::limits::DEFAULT_INPUT_BUDGET_BYTES / MIB) as u64;
const DEFAULT_PER_PEER_MIB: u64 = (crate::limits::DEFAULT_INPUT_BUDGET_PER_PEER_BYTES / MIB) as u64;

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
    /// The language of those reports (`fq-server run --lang`; by default the locale's,
    /// [`Lang::from_env`]).
    pub report_lang: Lang,
    /// QUIC transport settings.
    pub net: NetConfig,
    /// Sync session tunables (batch sizes, the 20 s ack watchdog).
    pub session: SessionConfig,
    /// Bound on a graceful shutdown.
    pub shutdown_grace: Duration,
    /// Bound on one dial of the county.
    pub connect_timeout: Duration,
    /// What peers may make the server hold.
    pub limits: Limits,
    /// The secret of `--encrypt --key-file`: the replica is encrypted at rest with a data key
    /// wrapped by it (ADR 10). `None`: a plain replica.
    pub encryption: Option<Passphrase>,
}

/// Bytes a connection or a stream costs the server besides its buffers: quinn's connection state
/// and TLS session, the tasks that serve it, and a sync session's state. Measured on this
/// machine (`memory_bound_holds_under_one_certificate_flooding_half_sent_frames` prints the
/// figures; about 40 KiB a connection): rounded up.
pub const CONNECTION_OVERHEAD_BYTES: usize = 128 * 1024;
/// See [`CONNECTION_OVERHEAD_BYTES`]: one session's state, its decoder's empty buffers and its
/// channels.
pub const SESSION_OVERHEAD_BYTES: usize = 32 * 1024;
/// Resident memory of a server that serves nobody: code, the async runtime, SQLite's page
/// cache and the ledger's document cache. Measured at start-up on this machine (about 20 MB),
/// rounded up; a ledger with a bigger page cache adds to it.
pub const BASELINE_BYTES: usize = 48 * MIB;
/// How many times the input budget counts in the bound: the bytes themselves; a digest's entries,
/// which may take twice their wire size while a session collects them; and the allocator's free
/// blocks that a decoder leaves behind as it grows a frame's buffer by doubling (measured under
/// the issue's attack: the server grew by up to about three times the frames it held).
pub const INPUT_BUDGET_FACTOR: usize = 3;
/// Bytes of a change envelope besides the change: case id, flags, signer, signature, length.
const ENVELOPE_OVERHEAD_BYTES: usize = 16 + 1 + 32 + 64 + 4;
/// Bytes of a push frame besides its envelopes.
const PUSH_FIXED_BYTES: usize = 4 + 2 + 8 + 1 + 8 + 32 + 4;

/// The most memory a server can be made to hold, from its limits (docs/OPERATIONS.md,
/// "Limits", shows the derivation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MemoryBound {
    /// One connection, its buffers and sessions, besides the input budget.
    pub per_connection: usize,
    /// What one certificate can make the server hold: its connections and its budget share.
    pub per_peer: usize,
    /// The whole server: the baseline, every connection, the budget, the replica's queue.
    pub server: usize,
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
            report_lang: Lang::from_env(),
            net: NetConfig::default(),
            session: SessionConfig::default(),
            shutdown_grace: SHUTDOWN_GRACE,
            connect_timeout: CONNECT_TIMEOUT,
            limits: Limits::default(),
            encryption: None,
        }
    }

    /// The most memory peers can make this server hold, from its limits and buffer sizes:
    ///
    /// - a connection: QUIC's receive buffers (its streams' windows, at most the connection's
    ///   window), per stream the chunk a reader holds while the replica thread is busy, what a
    ///   session sends and the peer has not acknowledged (at most `max_in_flight` pushes), and
    ///   the state of the connection and its sessions;
    /// - the input budget, [`INPUT_BUDGET_FACTOR`] times;
    /// - the replica thread's command queue, every slot a full read chunk.
    pub fn memory_bound(&self) -> MemoryBound {
        let streams = usize::try_from(self.net.max_streams).unwrap_or(usize::MAX);
        let window = usize::try_from(STREAM_RECEIVE_WINDOW_BYTES).unwrap_or(usize::MAX);
        let connection_window = usize::try_from(CONNECTION_RECEIVE_WINDOW_BYTES).unwrap_or(usize::MAX);
        let receive = streams.saturating_mul(window).min(connection_window);
        let s = &self.session;
        let push = s
            .max_batch_bytes
            .max(MAX_CHANGE_BYTES)
            .saturating_add(
                usize::try_from(s.max_batch_rows).unwrap_or(usize::MAX).saturating_mul(ENVELOPE_OVERHEAD_BYTES),
            )
            .saturating_add(PUSH_FIXED_BYTES)
            .min(MAX_FRAME_BYTES + 4);
        let per_stream = crate::link::READ_CHUNK_BYTES
            .saturating_add(SESSION_OVERHEAD_BYTES)
            .saturating_add(s.max_in_flight.saturating_mul(push));
        let per_connection =
            CONNECTION_OVERHEAD_BYTES.saturating_add(receive).saturating_add(streams.saturating_mul(per_stream));
        let l = &self.limits;
        let per_peer = l
            .max_connections_per_peer
            .saturating_mul(per_connection)
            .saturating_add(l.input_budget_per_peer_bytes.saturating_mul(INPUT_BUDGET_FACTOR));
        let queue = crate::replica::COMMAND_QUEUE.saturating_mul(crate::link::READ_CHUNK_BYTES);
        let server = BASELINE_BYTES
            .saturating_add(l.max_connections.saturating_mul(per_connection))
            .saturating_add(l.input_budget_bytes.saturating_mul(INPUT_BUDGET_FACTOR))
            .saturating_add(queue);
        MemoryBound { per_connection, per_peer, server }
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
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = file.max_connections {
            self.limits.max_connections = size(n);
        }
        if let Some(n) = file.max_connections_per_peer {
            self.limits.max_connections_per_peer = size(n);
        }
        if let Some(n) = file.max_streams_per_connection {
            self.net.max_streams = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(mib) = file.input_budget_mib {
            self.limits.input_budget_bytes = size(mib).saturating_mul(MIB);
        }
        if let Some(mib) = file.input_budget_per_peer_mib {
            self.limits.input_budget_per_peer_bytes = size(mib).saturating_mul(MIB);
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
    /// Connections the server holds at once, handshakes included (default 256).
    pub max_connections: Option<u64>,
    /// Connections one certificate may hold at once; a new one past it closes the oldest
    /// (default 4).
    pub max_connections_per_peer: Option<u64>,
    /// Sync sessions one connection may run at once (default 2).
    pub max_streams_per_connection: Option<u64>,
    /// MiB of unfinished input all peers together may make the server hold (default 128).
    pub input_budget_mib: Option<u64>,
    /// MiB of unfinished input one certificate may make the server hold (default 4, at least 1:
    /// a frame may be 1 MiB).
    pub input_budget_per_peer_mib: Option<u64>,
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
        /// The line it points at (from 1), when it knows.
        line: Option<usize>,
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
        let parse = |reason: String, line| ConfigError::Parse { path: path.to_owned(), reason, line };
        let mut file: FileConfig = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            serde_json::from_str(&text).map_err(|e| parse(e.to_string(), Some(e.line()).filter(|l| *l > 0)))?
        } else {
            toml::from_str(&text).map_err(|e| {
                let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
                parse(e.message().to_owned(), line)
            })?
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
        let per_peer = file.input_budget_per_peer_mib.unwrap_or(DEFAULT_PER_PEER_MIB);
        let limits = [
            ("max_connections", file.max_connections, 1, MAX_CONNECTIONS_LIMIT),
            ("max_connections_per_peer", file.max_connections_per_peer, 1, MAX_CONNECTIONS_PER_PEER_LIMIT),
            ("max_streams_per_connection", file.max_streams_per_connection, 1, MAX_STREAMS_LIMIT),
            ("input_budget_per_peer_mib", file.input_budget_per_peer_mib, 1, MAX_BUDGET_MIB),
            ("input_budget_mib", file.input_budget_mib, per_peer.clamp(1, MAX_BUDGET_MIB), MAX_BUDGET_MIB),
        ];
        for (key, value, min, max) in limits {
            if let Some(v) = value
                && !(min..=max).contains(&v)
            {
                return Err(ConfigError::Range { path: path.to_owned(), key, min, max });
            }
        }
        if file.input_budget_mib.is_none() && per_peer > DEFAULT_BUDGET_MIB && file.input_budget_per_peer_mib.is_some()
        {
            return Err(ConfigError::Range {
                path: path.to_owned(),
                key: "input_budget_per_peer_mib",
                min: 1,
                max: DEFAULT_BUDGET_MIB,
            });
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
    fn load_reads_limits_and_refuses_a_share_larger_than_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let text = "max_connections = 64\nmax_connections_per_peer = 2\nmax_streams_per_connection = 1\n\
                    input_budget_mib = 16\ninput_budget_per_peer_mib = 2\n";
        let mut config = ServerConfig::new(Tier::County, "127.0.0.1:0".parse().unwrap(), dir.path().into(), "b".into());
        let before = config.memory_bound();
        config.apply(&FileConfig::load(&write(dir.path(), "l.toml", text)).unwrap());
        assert_eq!(config.limits.max_connections, 64);
        assert_eq!(config.limits.max_connections_per_peer, 2);
        assert_eq!(config.net.max_streams, 1);
        assert_eq!(config.limits.input_budget_bytes, 16 * MIB);
        assert_eq!(config.limits.input_budget_per_peer_bytes, 2 * MIB);
        let after = config.memory_bound();
        assert!(after.server < before.server && after.per_peer < before.per_peer, "{before:?} {after:?}");
        let wide = write(dir.path(), "w.toml", "input_budget_mib = 4\ninput_budget_per_peer_mib = 8\n");
        assert!(matches!(FileConfig::load(&wide), Err(ConfigError::Range { key: "input_budget_mib", .. })));
        let none = write(dir.path(), "n.toml", "max_streams_per_connection = 0\n");
        assert!(matches!(FileConfig::load(&none), Err(ConfigError::Range { key: "max_streams_per_connection", .. })));
    }

    #[test]
    fn memory_bound_of_the_defaults_is_what_operations_md_says() {
        let config = ServerConfig::new(Tier::County, "127.0.0.1:0".parse().unwrap(), "d".into(), "b".into());
        let bound = config.memory_bound();
        // docs/OPERATIONS.md, "Limits": keep the two in step.
        assert_eq!(bound.per_connection, 3_188_972, "{bound:?}");
        assert_eq!(bound.per_peer.div_ceil(MIB), 25, "{bound:?}");
        assert_eq!(bound.server.div_ceil(MIB), 1_227, "{bound:?}");
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
