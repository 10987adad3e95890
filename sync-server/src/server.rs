//! The township and county server: accept loop, connection tasks, graceful shutdown.
//!
//! [`bind`] checks the bundle, opens (or creates) the server's replica and binds the endpoint;
//! [`Server::run`] serves until the `shutdown` future completes. [`serve`] does both. Tests
//! bind to `127.0.0.1:0`, read [`Server::local_addr`] and run the server in-process.
//!
//! Each accepted connection is authenticated by [`crate::net`] (certificate chain, revocation
//! list in force), then checked here against the server's own scope: a device or township
//! server must lie inside it, and only a county takes a township server as its child. Each
//! bidirectional stream the client opens is one sync session (the private `link` module), run by the
//! replica thread (the private `replica` module).
//!
//! Revocation lists: a server starts with the newest of its bundle's list, the copy saved in its
//! data directory ([`SAVED_REVOCATIONS_FILE`]) and the config's `revocations_file`; while it runs
//! it follows that file and, on a township, the lists its county sends down (the private
//! `upstream` module). Every newer list, whatever its source, goes through one place: it is
//! installed, the connections it revokes are closed, it is saved to the data directory, and it
//! is sent to every connected child server on a unidirectional stream (docs/PROTOCOL.md,
//! "Revocation lists"). Devices are never sent lists.
//!
//! Limits (`crate::limits`): every connection attempt takes one of
//! [`crate::limits::Limits::max_connections`] slots before its handshake, or is refused at
//! once; an authenticated connection past its certificate's
//! [`crate::limits::Limits::max_connections_per_peer`] closes that certificate's oldest one
//! ([`CloseCode::TooManyConnections`]); and every stream of a peer dialing in charges what it
//! sends to the input budget.
//!
//! Restarts: the QUIC stateless-reset key is kept in the data directory ([`RESET_KEY_FILE`]),
//! so a restarted server resets its predecessor's connections as soon as their next packet
//! arrives, and their peers dial again at once instead of waiting for an idle timeout.
//!
//! Shutdown: stop accepting; the replica thread finishes the command it is on (a batch being
//! applied commits and its ack is sent), drops what is queued behind it, and closes every
//! session with an `Error` frame "shutting down"; then the upstream dialer stops, connections
//! are given [`ServerConfig::shutdown_grace`] to flush, and are closed with
//! [`CloseCode::ShuttingDown`]; the endpoint gets a moment to send the closes
//! ([`CLOSE_FLUSH`]). The whole takes about a second, so a restart finds the port free.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fq_core::case::Role;
use fq_core::clock::SystemClock;
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions, Tier};
use fq_core::sync::session::Side;
use fq_core::vault::{DataKey, KdfParams, Protection, Vault, VaultError, WipePolicy};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::ca::{
    Bundle, BundleError, GrantRole, PeerIdentity, RevocationError, RevocationHandle, RevocationList, RevocationUpdate,
    SubjectId,
};
use crate::config::ServerConfig;
use crate::limits::{Charge, InputBudget};
use crate::net::{
    CloseCode, Connection, ConnectionError, EndpointError, Handshake, RESET_KEY_BYTES, ResetKey, ServerEndpoint,
    VarInt, WriteError, connection_end, server_endpoint,
};
use crate::policy::{hangup_signal, recv_hangup, stamp};
use crate::replica::{Command, OwnCredentials, ReplicaHandle};
use crate::{link, upstream};

/// The replica's file name inside the data directory.
pub const LEDGER_FILE: &str = "ledger.db";
/// The file, inside the data directory, holding the newest revocation list the server has
/// installed (from any source), so that a restart never forgets a revocation.
pub const SAVED_REVOCATIONS_FILE: &str = "revocations.json";
/// How long sending the revocation list to a child server may take, from opening the stream to
/// the child's acknowledgement of the last byte. A real list is a few kilobytes; a child that
/// does not take it in this time (an older build that grants no unidirectional stream) is
/// sent the next list when there is one.
pub const REVOCATION_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// The file, inside the data directory, holding the server's QUIC stateless-reset key
/// ([`ResetKey`]): 32 random bytes, mode 0600, made on first run and kept across restarts.
pub const RESET_KEY_FILE: &str = "reset.key";
/// How long a handshake may take before its connection slot is given back. A 2G handshake
/// takes seconds, with retransmissions perhaps ten.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the endpoint is given, at shutdown, to send the connections' closes.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(200);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The bundle file is unreadable or invalid.
    #[error("server bundle {path}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BundleError,
    },
    /// The bundle is not a server bundle of the tier asked for.
    #[error("bundle {id} is for role {role}; --tier {tier} needs a {wanted} server bundle")]
    WrongBundle {
        /// The bundle's subject.
        id: String,
        /// Its role.
        role: GrantRole,
        /// The tier asked for.
        tier: &'static str,
        /// The role that tier needs.
        wanted: GrantRole,
    },
    /// `--upstream` on a county server, which has no parent.
    #[error("a county server has no upstream; --upstream is for township servers")]
    UpstreamOnCounty,
    /// The data directory holds the replica of another server.
    #[error(
        "{path} belongs to a {tier} replica for {scope}, but the bundle is a {bundle_tier} server for {bundle_scope}"
    )]
    ReplicaMismatch {
        /// The ledger file.
        path: PathBuf,
        /// Its tier.
        tier: &'static str,
        /// Its scope.
        scope: String,
        /// The tier asked for.
        bundle_tier: &'static str,
        /// The bundle's scope.
        bundle_scope: String,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be opened, created or updated.
    #[error("replica {path}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// The ledger's error.
        #[source]
        source: LedgerError,
    },
    /// The replica's encryption does not match `--encrypt`, or its key cannot be unwrapped.
    #[error("replica {path}: {problem}")]
    Encryption {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong.
        problem: EncryptionProblem,
    },
    /// The replica's key could not be made or unwrapped.
    #[error("replica key {path}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: VaultError,
    },
    /// The revocation list file named in the config is unreadable or not from this CA.
    #[error("revocation list {path}")]
    Revocations {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: RevocationError,
    },
    /// The bundle's own revocation list is invalid.
    #[error("bundle revocation list is invalid")]
    BundleRevocations(#[source] RevocationError),
    /// The QUIC endpoint could not be set up.
    #[error("cannot listen on {addr}")]
    Endpoint {
        /// The address.
        addr: SocketAddr,
        /// The endpoint's error.
        #[source]
        source: EndpointError,
    },
    /// The stateless-reset key in the data directory could not be read or made.
    #[error("reset key {path}")]
    ResetKey {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The replica thread could not be started.
    #[error("cannot start the replica thread")]
    Thread(#[source] std::io::Error),
    /// The replica thread died while serving (a bug): what was acknowledged is on disk, the
    /// rest the peers send again once the server is restarted.
    #[error("the replica thread stopped unexpectedly (see the log above); restart the server, peers will resend")]
    ReplicaDied,
}

impl ServeError {
    /// True when the operator's input (arguments, bundle, data directory) was at fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Bundle { .. }
                | Self::WrongBundle { .. }
                | Self::UpstreamOnCounty
                | Self::ReplicaMismatch { .. }
                | Self::Encryption { .. }
                | Self::Key { source: VaultError::WrongPassphrase { .. } | VaultError::KeyMissing { .. }, .. }
        )
    }
}

/// How a replica's encryption and `--encrypt` disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptionProblem {
    /// The replica is plain but `--encrypt` was given.
    #[error(
        "the replica is not encrypted yet: stop the server and run fq-server encrypt --data-dir DIR --key-file FILE"
    )]
    NotYetEncrypted,
    /// The replica is encrypted but no `--encrypt --key-file` was given.
    #[error("the replica is encrypted: run with --encrypt --key-file FILE")]
    NeedsKey,
}

/// A bound server, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    bundle: Bundle,
    ledger: Ledger,
    endpoint: ServerEndpoint,
    revocations: RevocationHandle,
    local_addr: SocketAddr,
    /// The replica's data key (`None` for a plain replica): the monthly reports read the
    /// replica with it.
    key: Option<DataKey>,
}

/// Checks the bundle, opens or creates the replica in `config.data_dir`, and binds the
/// endpoint. Nothing is served until [`Server::run`]. Call it inside a tokio runtime (the
/// endpoint's socket is registered with the runtime it is bound in).
pub fn bind(mut config: ServerConfig) -> Result<Server, ServeError> {
    let bundle =
        Bundle::load(&config.bundle).map_err(|source| ServeError::Bundle { path: config.bundle.clone(), source })?;
    let wanted = match config.tier {
        Tier::County => GrantRole::CountyServer,
        _ => GrantRole::TownshipServer,
    };
    if bundle.role() != wanted {
        return Err(ServeError::WrongBundle {
            id: bundle.id().to_string(),
            role: bundle.role(),
            tier: config.tier.code(),
            wanted,
        });
    }
    if config.tier == Tier::County && config.upstream.is_some() {
        return Err(ServeError::UpstreamOnCounty);
    }
    let (ledger, key) = open_replica(&config, &bundle)?;
    let key_path = config.data_dir.join(RESET_KEY_FILE);
    config.net.reset_key =
        Some(reset_key(&key_path).map_err(|source| ServeError::ResetKey { path: key_path.clone(), source })?);
    let revocations = initial_revocations(&config, &bundle)?;
    let endpoint = server_endpoint(config.listen, &bundle, revocations.clone(), &config.net)
        .map_err(|source| ServeError::Endpoint { addr: config.listen, source })?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|e| ServeError::Endpoint { addr: config.listen, source: bind_error(config.listen, e) })?;
    Ok(Server { config, bundle, ledger, endpoint, revocations, local_addr, key })
}

/// [`bind`], then [`Server::run`] until `shutdown` completes.
pub async fn serve(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    bind(config)?.run(shutdown).await
}

fn bind_error(addr: SocketAddr, source: std::io::Error) -> EndpointError {
    EndpointError::Bind { addr, source }
}

/// The server's stateless-reset key: the one in `path`, or a new one saved there (mode 0600,
/// written atomically) on first run. A file of the wrong size (damaged) is replaced with a
/// warning: the only cost is that this once, the predecessor's connections are not reset.
pub fn reset_key(path: &Path) -> std::io::Result<ResetKey> {
    match std::fs::read(path) {
        Ok(bytes) => {
            if let Ok(bytes) = <[u8; RESET_KEY_BYTES]>::try_from(bytes.as_slice()) {
                return Ok(ResetKey::from_bytes(bytes));
            }
            warn!(path = %path.display(), len = bytes.len(), "reset key damaged; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = ResetKey::generate().map_err(std::io::Error::other)?;
    crate::ca::write_secret_file(path, key.as_bytes())?;
    info!(path = %path.display(), "reset key created");
    Ok(key)
}

/// The revocation list to start with: the newest of the bundle's, the saved copy in the data
/// directory and the config's `revocations_file` (the version rule of
/// [`RevocationHandle::update`], so an older file never un-revokes what a newer one revoked).
/// A bad `revocations_file` stops the start (the operator named it); a bad saved copy does not.
fn initial_revocations(config: &ServerConfig, bundle: &Bundle) -> Result<RevocationHandle, ServeError> {
    let handle = RevocationHandle::new(bundle.ca().clone(), bundle.revocations().clone())
        .map_err(ServeError::BundleRevocations)?;
    load_saved_revocations(&config.data_dir.join(SAVED_REVOCATIONS_FILE), &handle);
    if let Some(path) = &config.revocations_file {
        let update = RevocationList::load(path)
            .and_then(|list| handle.update(list))
            .map_err(|source| ServeError::Revocations { path: path.clone(), source })?;
        debug!(?update, path = %path.display(), "revocation list read");
    }
    Ok(handle)
}

/// Offers the list saved in the data directory, if there is one. A file that cannot be read,
/// is not a list, or is not signed by the county CA is reported and left alone: the server
/// starts with the other lists, and the next list it installs replaces the file.
fn load_saved_revocations(path: &Path, handle: &RevocationHandle) {
    if !path.exists() {
        return;
    }
    match RevocationList::load(path).and_then(|list| handle.update(list)) {
        Ok(update) => info!(path = %path.display(), ?update, "saved revocation list read"),
        Err(e) => warn!(
            path = %path.display(),
            error = %error_chain(&e),
            "saved revocation list unusable; ignoring it and starting with the bundle's and the config's lists"
        ),
    }
}

/// Where newer revocation lists are saved: [`SAVED_REVOCATIONS_FILE`] in the data directory,
/// unless that is the very file the config follows (a county whose data directory is the CA
/// directory): the CA writes that file, and the server must never overwrite it.
fn saved_revocations_path(config: &ServerConfig) -> Option<PathBuf> {
    let saved = config.data_dir.join(SAVED_REVOCATIONS_FILE);
    let followed = config.revocations_file.as_deref().and_then(|p| p.canonicalize().ok());
    let same =
        followed.is_some() && config.data_dir.canonicalize().ok().map(|d| d.join(SAVED_REVOCATIONS_FILE)) == followed;
    (!same).then_some(saved)
}

/// The replica's data key (`None` for a plain replica), checking that the replica's
/// encryption matches `--encrypt`. On first run with `--encrypt` the data directory is made
/// private and a new key is wrapped by the key file's secret. A server's key is never erased
/// on a wrong key file (ADR 10): that is an operator's mistake, not a thief.
fn replica_key(config: &ServerConfig, path: &Path) -> Result<Option<DataKey>, ServeError> {
    let vault = Vault::for_ledger(path);
    let key_err = |source| ServeError::Key { path: vault.key_path().to_owned(), source };
    let mismatch = |problem| ServeError::Encryption { path: path.to_owned(), problem };
    let protection = vault.protection().map_err(key_err)?;
    match (protection, &config.encryption) {
        (Protection::Absent, None) => {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|source| ServeError::DataDir { path: config.data_dir.clone(), source })?;
            Ok(None)
        }
        (Protection::Plain, None) => Ok(None),
        (Protection::Absent, Some(secret)) => {
            fq_core::vault::private_dir(&config.data_dir).map_err(key_err)?;
            let key = vault.create(secret, WipePolicy::Never, KdfParams::DEFAULT).map_err(key_err)?;
            Ok(Some(key))
        }
        (Protection::Encrypted, Some(secret)) => {
            vault.sweep().map_err(key_err)?;
            Ok(Some(vault.unlock(secret).map_err(key_err)?))
        }
        (Protection::Plain, Some(_)) => Err(mismatch(EncryptionProblem::NotYetEncrypted)),
        (Protection::Encrypted, None) => Err(mismatch(EncryptionProblem::NeedsKey)),
        (Protection::KeyLost, _) => Err(key_err(VaultError::KeyMissing { path: vault.key_path().to_owned() })),
    }
}

/// Opens the replica, or creates it on first run from the bundle's identity; with its data key
/// if it is encrypted.
fn open_replica(config: &ServerConfig, bundle: &Bundle) -> Result<(Ledger, Option<DataKey>), ServeError> {
    let path = config.data_dir.join(LEDGER_FILE);
    let ledger_err = |source| ServeError::Ledger { path: path.clone(), source };
    let clock = Arc::new(SystemClock);
    let key = replica_key(config, &path)?;
    let mut ledger = if path.exists() {
        Ledger::open(&path, clock, LedgerOptions { key: key.clone(), ..Default::default() }).map_err(ledger_err)?
    } else {
        let role = match config.tier {
            Tier::County => Role::CountyAdmin,
            _ => Role::TownshipOfficer,
        };
        let init = InitOptions {
            tier: config.tier,
            name: bundle.id().to_string(),
            role,
            scope: bundle.scope().clone(),
            grid: None,
        };
        let ledger = Ledger::init(&path, init, clock, LedgerOptions { key: key.clone(), ..Default::default() })
            .map_err(ledger_err)?;
        info!(path = %path.display(), tier = config.tier.code(), scope = %bundle.scope(), "replica created");
        ledger
    };
    let id = ledger.identity();
    if id.tier != config.tier || &id.scope != bundle.scope() {
        return Err(ServeError::ReplicaMismatch {
            path,
            tier: id.tier.code(),
            scope: id.scope.to_string(),
            bundle_tier: config.tier.code(),
            bundle_scope: bundle.scope().to_string(),
        });
    }
    ledger.add_grant(bundle.grant()).map_err(ledger_err)?;
    Ok((ledger, key))
}

/// Connections being served, by number, with their certificate serial: a revocation list that
/// arrives while they run closes the revoked ones.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    // std Mutex: held only to insert, remove or scan, never across an await.
    live: Mutex<BTreeMap<u64, (PeerIdentity, Connection)>>,
}

impl Connections {
    /// Adds a connection; if its certificate now holds more than `per_peer`, closes (and
    /// removes) the oldest ones of that certificate and returns how many.
    fn insert(&self, id: u64, peer: PeerIdentity, connection: Connection, per_peer: usize) -> usize {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let serial = peer.serial.clone();
        live.insert(id, (peer, connection));
        // Ids grow with time, so the map's order is oldest first.
        let mine: Vec<u64> = live.iter().filter(|(_, (p, _))| p.serial == serial).map(|(id, _)| *id).collect();
        let excess = mine.len().saturating_sub(per_peer.max(1));
        for old in &mine[..excess] {
            if let Some((_, connection)) = live.remove(old) {
                CloseCode::TooManyConnections.close(&connection);
            }
        }
        excess
    }

    fn remove(&self, id: u64) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// Closes every connection whose certificate `list` revokes; returns their subjects.
    fn close_revoked(&self, list: &RevocationList) -> Vec<String> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = Vec::new();
        for (peer, connection) in live.values() {
            if list.contains(&peer.serial) {
                CloseCode::Revoked.close(connection);
                closed.push(peer.id.to_string());
            }
        }
        closed
    }
}

/// Where a newer revocation list came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListSource {
    /// The config's `revocations_file`.
    File,
    /// The parent server, over the sync connection.
    Upstream,
}

impl ListSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::File => "revocations_file",
            Self::Upstream => "upstream",
        }
    }
}

/// The one place a running server installs revocation lists, from whichever source: the
/// version rule ([`RevocationHandle::update`]), closing the connections a new list revokes,
/// telling the tasks that send lists to child servers, and saving the list to the data
/// directory.
#[derive(Debug)]
pub(crate) struct Revocations {
    handle: RevocationHandle,
    saved: Option<PathBuf>,
    connections: Arc<Connections>,
    in_force: watch::Sender<Arc<RevocationList>>,
    // The version last written to `saved`. std Mutex: held only inside a blocking task, so that
    // two saves never interleave and the file always ends with the newest list.
    saved_version: Mutex<Option<u64>>,
}

impl Revocations {
    /// Follows `handle`; saves newer lists to `saved` (if any); closes revoked `connections`.
    pub(crate) fn new(handle: RevocationHandle, saved: Option<PathBuf>, connections: Arc<Connections>) -> Self {
        let (in_force, _) = watch::channel(handle.current());
        Self { handle, saved, connections, in_force, saved_version: Mutex::new(None) }
    }

    /// The list in force.
    pub(crate) fn current(&self) -> Arc<RevocationList> {
        self.handle.current()
    }

    /// The list in force now and every newer one, as it is installed.
    fn subscribe(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.in_force.subscribe()
    }

    /// Offers `list`: installed only if the county CA signed it and it is newer than the list in
    /// force. A newer list closes every open connection it revokes, is handed to the child
    /// servers' senders, and is saved; an older or equal one changes nothing; a forged one is
    /// an error (the caller logs it).
    pub(crate) async fn offer(
        self: &Arc<Self>,
        list: RevocationList,
        source: ListSource,
    ) -> Result<RevocationUpdate, RevocationError> {
        let update = self.handle.update(list)?;
        let RevocationUpdate::Installed { previous, version } = update else {
            debug!(source = source.as_str(), ?update, "revocation list is not newer; ignored");
            return Ok(update);
        };
        let current = self.handle.current();
        info!(
            previous,
            version,
            revoked = current.serials().len(),
            source = source.as_str(),
            "revocation list installed"
        );
        for id in self.connections.close_revoked(&current) {
            warn!(peer = %id, "connection closed: certificate revoked");
        }
        // Two offers may overtake each other between `update` and here: never go back.
        self.in_force.send_if_modified(|held| {
            let newer = current.version() > held.version();
            if newer {
                *held = Arc::clone(&current);
            }
            newer
        });
        self.save().await;
        Ok(update)
    }

    /// Saves the list in force (not the one just offered: another may have overtaken it) to the
    /// data directory, off the async threads. A failure is logged; the list stays in force.
    async fn save(self: &Arc<Self>) {
        let Some(path) = self.saved.clone() else { return };
        let this = Arc::clone(self);
        let saved = tokio::task::spawn_blocking(move || this.save_blocking(&path)).await;
        match saved {
            Ok(Ok(Some(version))) => debug!(version, "revocation list saved"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot save the revocation list; it is in force until a restart")
            }
            Err(e) => warn!(error = %e, "cannot save the revocation list; it is in force until a restart"),
        }
    }

    fn save_blocking(&self, path: &Path) -> Result<Option<u64>, RevocationError> {
        let mut saved = self.saved_version.lock().unwrap_or_else(PoisonError::into_inner);
        let list = self.handle.current();
        if saved.is_some_and(|v| v >= list.version()) {
            return Ok(None);
        }
        list.save(path)?;
        *saved = Some(list.version());
        Ok(Some(list.version()))
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    own: PeerIdentity,
    tier: Tier,
    replica: tokio::sync::mpsc::Sender<Command>,
    connections: Arc<Connections>,
    revocations: Arc<Revocations>,
    next_id: AtomicU64,
    grace: Duration,
    /// Connections (handshakes included) being served now.
    slots: AtomicUsize,
    max_connections: usize,
    max_per_peer: usize,
    budget: Arc<InputBudget>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot, if one is free.
    fn slot(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_connections).then_some(n + 1));
        taken.ok().map(|_| Slot(Arc::clone(self)))
    }
}

/// One of the server's connection slots, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (bounded by
    /// [`ServerConfig::shutdown_grace`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server { config, bundle, ledger, endpoint, revocations, local_addr, key } = self;
        let wake = Arc::new(Notify::new());
        let own = OwnCredentials {
            ca: bundle.ca_verifying_key(),
            grant: bundle.grant().clone(),
            key: bundle.signing_key().clone(),
        };
        let replica =
            ReplicaHandle::spawn(ledger, own, config.session.clone(), Arc::clone(&wake)).map_err(ServeError::Thread)?;
        let connections = Arc::new(Connections::default());
        let revocations =
            Arc::new(Revocations::new(revocations, saved_revocations_path(&config), Arc::clone(&connections)));
        let shared = Arc::new(Shared {
            own: bundle.identity().clone(),
            tier: config.tier,
            replica: replica.sender(),
            connections,
            revocations: Arc::clone(&revocations),
            next_id: AtomicU64::new(1),
            grace: config.shutdown_grace,
            slots: AtomicUsize::new(0),
            max_connections: config.limits.max_connections,
            max_per_peer: config.limits.max_connections_per_peer,
            budget: Arc::new(InputBudget::new(
                config.limits.input_budget_bytes,
                config.limits.input_budget_per_peer_bytes,
            )),
        });
        let bound = config.memory_bound();
        info!(
            addr = %local_addr,
            tier = config.tier.code(),
            id = %bundle.id(),
            scope = %bundle.scope(),
            upstream = config.upstream.map(|a| a.to_string()),
            max_connections = config.limits.max_connections,
            max_connections_per_peer = config.limits.max_connections_per_peer,
            memory_bound_mib = bound.server.div_ceil(crate::limits::MIB),
            "listening"
        );
        let (stop_tx, stop) = watch::channel(false);
        let mut background = JoinSet::new();
        if let Some(addr) = config.upstream {
            let link = upstream::Upstream {
                addr,
                bundle: bundle.clone(),
                net: config.net.clone(),
                connect_timeout: config.connect_timeout,
                max_wait: config.sync_interval,
                replica: replica.sender(),
                revocations: Arc::clone(&revocations),
                wake: Arc::clone(&wake),
                next_id: {
                    let shared = Arc::clone(&shared);
                    Arc::new(move || shared.next_id())
                },
            };
            background.spawn(link.run(stop.clone()));
        }
        background.spawn(crate::import::listen(config.data_dir.clone(), replica.sender(), stop.clone()));
        background.spawn(watch_revocations(
            config.revocations_file.clone(),
            config.revocation_poll,
            revocations,
            stop.clone(),
        ));
        background.spawn(crate::policy::follow(
            config.policy_file.clone(),
            config.revocation_poll,
            replica.sender(),
            stop.clone(),
        ));
        if config.monthly_reports {
            background.spawn(crate::report::monthly(config.data_dir.clone(), config.report_lang, key, stop.clone()));
        }

        let mut connections = JoinSet::new();
        let mut replica_died = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = replica.stopped() => {
                    error!("the replica thread stopped unexpectedly; nothing can be synced, so the server stops");
                    replica_died = true;
                    break;
                }
                handshake = endpoint.accept() => match handshake {
                    Some(handshake) => match shared.slot() {
                        Some(slot) => {
                            connections.spawn(connection(handshake, slot, Arc::clone(&shared), stop.clone()));
                        }
                        None => {
                            warn!(
                                remote = %handshake.remote_address(),
                                limit = shared.max_connections,
                                "connection refused: server full"
                            );
                            handshake.refuse();
                        }
                    },
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        info!(connections = connections.len(), "shutting down");
        endpoint.stop_accepting();
        // The replica finishes the command it is on (a batch being applied commits and is
        // acknowledged), then closes every session; only then are the connections told, so
        // that their grace goes to sending those last frames.
        replica.shutdown().await;
        let _ = stop_tx.send(true);
        let grace = config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
            while background.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            debug!(?grace, "connections did not finish in time; closing them");
        }
        endpoint.close_with(CloseCode::ShuttingDown);
        // Long enough to send the closes; a peer that misses its close is reset by the next
        // server, or times out.
        let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
        connections.abort_all();
        background.abort_all();
        if replica_died {
            return Err(ServeError::ReplicaDied);
        }
        info!("shutdown complete");
        Ok(())
    }
}

/// Why a child is refused even though its certificate is good: its scope must lie inside
/// ours, and the only server a server takes as a child is a township server at the county.
fn admit(own: &PeerIdentity, tier: Tier, peer: &PeerIdentity) -> Result<(), String> {
    if !own.scope.contains(&peer.scope) {
        return Err(format!("scope {} is outside this server's {}", peer.scope, own.scope));
    }
    if peer.role.is_server() && !(tier == Tier::County && peer.role == GrantRole::TownshipServer) {
        return Err(format!("a {} server cannot be a child of this {} server", peer.role, tier.code()));
    }
    Ok(())
}

async fn connection(handshake: Handshake, _slot: Slot, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let remote = handshake.remote_address();
    if *stop.borrow() {
        handshake.refuse();
        return;
    }
    let (conn, peer) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake.authenticate()).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            warn!(%remote, reason = %error_chain(&e), "connection refused");
            return;
        }
        Err(_) => {
            warn!(%remote, reason = "handshake timed out", "connection refused");
            return;
        }
    };
    if let Err(reason) = admit(&shared.own, shared.tier, &peer) {
        warn!(%remote, peer = %peer.id, role = %peer.role, scope = %peer.scope, %reason, "connection refused");
        CloseCode::WrongPeer.close(&conn);
        return;
    }
    let conn_id = shared.next_id();
    info!(%remote, peer = %peer.id, role = %peer.role, scope = %peer.scope, "connection accepted");
    let evicted = shared.connections.insert(conn_id, peer.clone(), conn.clone(), shared.max_per_peer);
    if evicted > 0 {
        warn!(
            peer = %peer.id,
            serial = %peer.serial,
            limit = shared.max_per_peer,
            closed = evicted,
            "connection limit per certificate reached; oldest connection closed"
        );
    }
    // Every peer takes the list: a server checks its children, a device checks the other device
    // when two sync directly (ADR 43). A device is sent a list only once it names a revoked
    // certificate: an empty one would only cost it bytes on 2G.
    let only_if_any = !peer.role.is_server();
    let sender =
        tokio::spawn(send_revocations(conn.clone(), shared.revocations.subscribe(), peer.id.clone(), only_if_any));
    let mut streams = JoinSet::new();
    let ended = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let id = shared.next_id();
                    let charge = Charge::new(Arc::clone(&shared.budget), peer.serial.clone());
                    streams.spawn(link::run(id, Side::Parent, peer.clone(), send, recv, shared.replica.clone(), Some(charge)));
                }
                Err(e) => break connection_end(&e),
            },
            _ = stop.changed() => break "server shutting down",
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    if *stop.borrow() {
        // The replica has closed the sessions; give their last frames time to go out.
        let _ = tokio::time::timeout(shared.grace, async { while streams.join_next().await.is_some() {} }).await;
        streams.abort_all();
    } else {
        // The connection is gone, so every stream's reader ends and tells the replica thread;
        // aborting one instead would leave its session behind there.
        while streams.join_next().await.is_some() {}
    }
    shared.connections.remove(conn_id);
    sender.abort();
    if *stop.borrow() {
        CloseCode::ShuttingDown.close(&conn);
    }
    info!(%remote, peer = %peer.id, reason = %ended, "connection closed");
}

/// Sends the list in force to a child on a new unidirectional stream, at once and again each
/// time a newer list is installed, until the connection ends; with `only_if_any`, a list that
/// revokes nothing is not sent. A list the child does not take in time is logged and not
/// retried: the next list, or the next connection, sends it.
async fn send_revocations(
    conn: Connection,
    mut in_force: watch::Receiver<Arc<RevocationList>>,
    peer: SubjectId,
    only_if_any: bool,
) {
    loop {
        let list = Arc::clone(&in_force.borrow_and_update());
        let version = list.version();
        if !(only_if_any && list.serials().is_empty()) {
            match send_list(&conn, &list, REVOCATION_SEND_TIMEOUT).await {
                Ok(()) => debug!(%peer, version, "revocation list sent"),
                Err(SendListError::Open(_)) => return,
                Err(SendListError::TimedOut) => {
                    warn!(%peer, version, after = ?REVOCATION_SEND_TIMEOUT, "revocation list not taken in time")
                }
                Err(e) => warn!(%peer, version, error = %error_chain(&e), "revocation list not sent"),
            }
        }
        tokio::select! {
            changed = in_force.changed() => if changed.is_err() { return },
            _ = conn.closed() => return,
        }
    }
}

/// Why a revocation list did not reach a child server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendListError {
    /// The list could not be encoded within the size limit.
    #[error("cannot encode the list")]
    Encode(#[source] RevocationError),
    /// No stream could be opened: the connection is gone.
    #[error("cannot open a stream")]
    Open(#[source] ConnectionError),
    /// Writing failed (the connection broke, or the child stopped the stream).
    #[error("cannot write the list")]
    Write(#[source] WriteError),
    /// The child stopped the stream before reading it all (it refused the list).
    #[error("the child stopped the stream with code {0}")]
    Stopped(VarInt),
    /// The stream was lost before the child acknowledged the last byte.
    #[error("the stream was lost: {0}")]
    Lost(String),
    /// The child granted no stream, or did not take the list, in time.
    #[error("not taken in time")]
    TimedOut,
}

/// Application code of a stream reset because the list was not taken in time.
const LIST_ABANDONED: u32 = 1;

/// One list on one stream: its compact JSON, then the end of the stream; returns once the child
/// has acknowledged every byte, or after `limit`. A list abandoned half way is reset, never
/// finished, so the child can never read a truncated one as whole.
pub(crate) async fn send_list(conn: &Connection, list: &RevocationList, limit: Duration) -> Result<(), SendListError> {
    let deadline = tokio::time::Instant::now() + limit;
    let bytes = list.to_compact_json().map_err(SendListError::Encode)?;
    let mut send = tokio::time::timeout_at(deadline, conn.open_uni())
        .await
        .map_err(|_| SendListError::TimedOut)?
        .map_err(SendListError::Open)?;
    let sent = tokio::time::timeout_at(deadline, async {
        send.write_all(&bytes).await.map_err(SendListError::Write)?;
        // Cannot fail on a stream not yet finished or reset; `stopped` reports what went wrong.
        let _ = send.finish();
        match send.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(SendListError::Stopped(code)),
            Err(e) => Err(SendListError::Lost(e.to_string())),
        }
    })
    .await;
    sent.unwrap_or_else(|_| {
        let _ = send.reset(VarInt::from_u32(LIST_ABANDONED));
        Err(SendListError::TimedOut)
    })
}

/// Re-reads the revocation list file when it changes (checked every `poll`, and at once on
/// SIGHUP) and offers it to `revocations`. Without a file, SIGHUP is only logged (so a reload
/// never kills the server).
async fn watch_revocations(
    path: Option<PathBuf>,
    poll: Duration,
    revocations: Arc<Revocations>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = path.as_deref().and_then(stamp);
    let mut hangup = hangup_signal();
    loop {
        let forced = tokio::select! {
            () = tokio::time::sleep(poll) => false,
            () = recv_hangup(&mut hangup) => true,
            _ = stop.changed() => return,
        };
        let Some(path) = &path else {
            if forced {
                info!("SIGHUP: no revocations_file in the config; nothing to reload");
            }
            continue;
        };
        let now = stamp(path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let list = match RevocationList::load(path) {
            Ok(list) => list,
            Err(e) => {
                warn!(path = %path.display(), error = %error_chain(&e), "cannot read the revocation list; keeping the one in force");
                continue;
            }
        };
        if let Err(e) = revocations.offer(list, ListSource::File).await {
            warn!(path = %path.display(), error = %error_chain(&e), "revocation list refused");
        }
    }
}

/// An error and its causes on one line, for the log.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ca::{CertificateAuthority, PeerIdentity, Serial, SubjectId};
    use std::time::SystemTime;

    fn peer(role: GrantRole, scope: &str) -> PeerIdentity {
        PeerIdentity {
            id: "x".parse::<SubjectId>().unwrap(),
            role,
            scope: scope.parse().unwrap(),
            serial: "01".parse::<Serial>().unwrap(),
            public_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key(),
        }
    }

    #[test]
    fn admit_takes_children_inside_the_scope_only() {
        let township = peer(GrantRole::TownshipServer, "532924101");
        assert!(admit(&township, Tier::Township, &peer(GrantRole::Mediator, "532924101201")).is_ok());
        assert!(admit(&township, Tier::Township, &peer(GrantRole::TownshipOfficer, "532924101")).is_ok());
        assert!(admit(&township, Tier::Township, &peer(GrantRole::Mediator, "532924102201")).is_err());
        assert!(admit(&township, Tier::Township, &peer(GrantRole::CountyAdmin, "532924")).is_err());
        assert!(admit(&township, Tier::Township, &peer(GrantRole::TownshipServer, "532924101")).is_err());
        let county = peer(GrantRole::CountyServer, "532924");
        assert!(admit(&county, Tier::County, &peer(GrantRole::TownshipServer, "532924101")).is_ok());
        assert!(admit(&county, Tier::County, &peer(GrantRole::CountyAdmin, "532924")).is_ok());
        assert!(admit(&county, Tier::County, &peer(GrantRole::CountyServer, "532924")).is_err());
    }

    /// A CA with a township bundle and two revoked devices: lists v0 (empty), v1, v2.
    struct Lists {
        _dir: tempfile::TempDir,
        config: ServerConfig,
        bundle: Bundle,
        v: [RevocationList; 3],
    }

    fn lists() -> Lists {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = CertificateAuthority::init(&dir.path().join("ca"), &"532924".parse().unwrap(), now).unwrap();
        let bundle = ca
            .issue(&"tw-101".parse().unwrap(), GrantRole::TownshipServer, &"532924101".parse().unwrap(), now)
            .unwrap();
        let v0 = ca.revocations().unwrap();
        let revoke = |id: &str| {
            ca.issue(&id.parse().unwrap(), GrantRole::Mediator, &"532924101201".parse().unwrap(), now).unwrap();
            ca.revoke(&id.parse().unwrap(), now).unwrap().list
        };
        let v1 = revoke("d07");
        let v2 = revoke("d08");
        let data = dir.path().join("tw");
        std::fs::create_dir_all(&data).unwrap();
        let config =
            ServerConfig::new(Tier::Township, "127.0.0.1:0".parse().unwrap(), data, dir.path().join("tw.bundle.json"));
        Lists { _dir: dir, config, bundle, v: [v0, v1, v2] }
    }

    impl Lists {
        fn saved(&self) -> PathBuf {
            self.config.data_dir.join(SAVED_REVOCATIONS_FILE)
        }

        fn follow(&mut self, list: &RevocationList) {
            let path = self.config.data_dir.with_file_name("followed.json");
            list.save(&path).unwrap();
            self.config.revocations_file = Some(path);
        }

        fn start_version(&self) -> u64 {
            initial_revocations(&self.config, &self.bundle).unwrap().current().version()
        }
    }

    #[test]
    fn initial_revocations_take_the_newest_of_bundle_saved_copy_and_file() {
        let mut l = lists();
        assert_eq!(l.start_version(), 0, "only the bundle's list");
        l.v[2].clone().save(&l.saved()).unwrap();
        assert_eq!(l.start_version(), 2, "the saved copy");
        let v1 = l.v[1].clone();
        l.follow(&v1);
        assert_eq!(l.start_version(), 2, "an older revocations_file must not un-revoke");
        l.v[1].clone().save(&l.saved()).unwrap();
        let v2 = l.v[2].clone();
        l.follow(&v2);
        assert_eq!(l.start_version(), 2, "a newer revocations_file wins over the saved copy");
    }

    #[test]
    fn initial_revocations_ignore_a_corrupt_or_forged_saved_copy() {
        let mut l = lists();
        let v1 = l.v[1].clone();
        l.follow(&v1);
        std::fs::write(l.saved(), b"{\"format\": 1, \"truncated").unwrap();
        assert_eq!(l.start_version(), 1, "a torn saved copy: start with the file's list");
        // A newer version that un-revokes everyone, with the old signature: not the CA's.
        let mut forged: serde_json::Value = serde_json::from_slice(&l.v[2].to_json().unwrap()).unwrap();
        forged["version"] = 7.into();
        forged["serials"] = serde_json::json!([]);
        std::fs::write(l.saved(), forged.to_string()).unwrap();
        assert_eq!(l.start_version(), 1, "a forged saved copy is never used");
        // Another CA's list for the same county.
        let other = tempfile::tempdir().unwrap();
        let other = CertificateAuthority::init(other.path(), &"532924".parse().unwrap(), SystemTime::now()).unwrap();
        other.revocations().unwrap().save(&l.saved()).unwrap();
        l.config.revocations_file = None;
        assert_eq!(l.start_version(), 0);
    }

    #[test]
    fn initial_revocations_refuse_an_unreadable_revocations_file() {
        let mut l = lists();
        let path = l.config.data_dir.with_file_name("followed.json");
        std::fs::write(&path, b"not json").unwrap();
        l.config.revocations_file = Some(path);
        let err = initial_revocations(&l.config, &l.bundle).unwrap_err();
        assert!(matches!(err, ServeError::Revocations { .. }), "{err:?}");
    }

    #[test]
    fn saved_revocations_path_is_never_the_file_the_config_follows() {
        let mut l = lists();
        assert_eq!(saved_revocations_path(&l.config), Some(l.saved()));
        let v1 = l.v[1].clone();
        l.follow(&v1);
        assert_eq!(saved_revocations_path(&l.config), Some(l.saved()));
        v1.save(&l.saved()).unwrap();
        l.config.revocations_file = Some(l.config.data_dir.join(".").join(SAVED_REVOCATIONS_FILE));
        assert_eq!(saved_revocations_path(&l.config), None);
    }

    #[tokio::test]
    async fn offer_installs_saves_and_never_goes_back() {
        let l = lists();
        let handle = RevocationHandle::new(l.bundle.ca().clone(), l.v[0].clone()).unwrap();
        let revocations = Arc::new(Revocations::new(handle, Some(l.saved()), Arc::default()));
        let mut in_force = revocations.subscribe();
        let saved = || RevocationList::load(&l.saved()).unwrap();

        let update = revocations.offer(l.v[2].clone(), ListSource::Upstream).await.unwrap();
        assert_eq!(update, RevocationUpdate::Installed { previous: 0, version: 2 });
        assert_eq!(saved(), l.v[2]);
        assert!(in_force.has_changed().unwrap());
        assert_eq!(in_force.borrow_and_update().version(), 2);

        let update = revocations.offer(l.v[1].clone(), ListSource::Upstream).await.unwrap();
        assert_eq!(update, RevocationUpdate::Stale { offered: 1, current: 2 });
        let mut forged: serde_json::Value = serde_json::from_slice(&l.v[2].to_json().unwrap()).unwrap();
        forged["version"] = 3.into();
        forged["serials"] = serde_json::json!([]);
        let forged = RevocationList::from_json(forged.to_string().as_bytes()).unwrap();
        assert!(matches!(
            revocations.offer(forged, ListSource::Upstream).await,
            Err(RevocationError::BadSignature { version: 3 })
        ));
        assert_eq!(revocations.current().version(), 2);
        assert_eq!(saved(), l.v[2], "neither an older nor a forged list reaches the saved copy");
        assert!(!in_force.has_changed().unwrap(), "nor the child servers");
    }
}
