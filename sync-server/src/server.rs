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
//! Shutdown: stop accepting; stop the upstream dialer; the replica thread finishes the command
//! it is on (a batch being applied commits and its ack is queued), then closes every session
//! with an `Error` frame "shutting down"; connections are given [`ServerConfig::shutdown_grace`]
//! to flush, then closed with [`CloseCode::ShuttingDown`]; the endpoint waits idle (bounded).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use fq_core::case::Role;
use fq_core::clock::SystemClock;
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions, Tier};
use fq_core::sync::session::Side;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::ca::{Bundle, BundleError, GrantRole, PeerIdentity, RevocationError, RevocationHandle, RevocationList};
use crate::config::ServerConfig;
use crate::net::{CloseCode, Connection, EndpointError, Handshake, ServerEndpoint, server_endpoint};
use crate::replica::{Command, OwnCredentials, ReplicaHandle};
use crate::{link, upstream};

/// The replica's file name inside the data directory.
pub const LEDGER_FILE: &str = "ledger.db";

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
    /// The replica thread could not be started.
    #[error("cannot start the replica thread")]
    Thread(#[source] std::io::Error),
}

impl ServeError {
    /// True when the operator's input (arguments, bundle, data directory) was at fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Bundle { .. } | Self::WrongBundle { .. } | Self::UpstreamOnCounty | Self::ReplicaMismatch { .. }
        )
    }
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
}

/// Checks the bundle, opens or creates the replica in `config.data_dir`, and binds the
/// endpoint. Nothing is served until [`Server::run`]. Call it inside a tokio runtime (the
/// endpoint's socket is registered with the runtime it is bound in).
pub fn bind(config: ServerConfig) -> Result<Server, ServeError> {
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
    let ledger = open_replica(&config, &bundle)?;
    let revocations = RevocationHandle::new(bundle.ca().clone(), bundle.revocations().clone())
        .map_err(ServeError::BundleRevocations)?;
    if let Some(path) = &config.revocations_file {
        let list = RevocationList::load(path)
            .and_then(|list| revocations.update(list))
            .map_err(|source| ServeError::Revocations { path: path.clone(), source })?;
        debug!(?list, "revocation list read");
    }
    let endpoint = server_endpoint(config.listen, &bundle, revocations.clone(), &config.net)
        .map_err(|source| ServeError::Endpoint { addr: config.listen, source })?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|e| ServeError::Endpoint { addr: config.listen, source: bind_error(config.listen, e) })?;
    Ok(Server { config, bundle, ledger, endpoint, revocations, local_addr })
}

/// [`bind`], then [`Server::run`] until `shutdown` completes.
pub async fn serve(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    bind(config)?.run(shutdown).await
}

fn bind_error(addr: SocketAddr, source: std::io::Error) -> EndpointError {
    EndpointError::Bind { addr, source }
}

/// Opens the replica, or creates it on first run from the bundle's identity.
fn open_replica(config: &ServerConfig, bundle: &Bundle) -> Result<Ledger, ServeError> {
    let path = config.data_dir.join(LEDGER_FILE);
    let ledger_err = |source| ServeError::Ledger { path: path.clone(), source };
    let clock = Arc::new(SystemClock);
    let mut ledger = if path.exists() {
        Ledger::open(&path, clock, LedgerOptions::default()).map_err(ledger_err)?
    } else {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServeError::DataDir { path: config.data_dir.clone(), source })?;
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
        let ledger = Ledger::init(&path, init, clock, LedgerOptions::default()).map_err(ledger_err)?;
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
    Ok(ledger)
}

/// Connections being served, by number, with their certificate serial: a revocation list that
/// arrives while they run closes the revoked ones.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    // std Mutex: held only to insert, remove or scan, never across an await.
    live: Mutex<BTreeMap<u64, (PeerIdentity, Connection)>>,
}

impl Connections {
    fn insert(&self, id: u64, peer: PeerIdentity, connection: Connection) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(id, (peer, connection));
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

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    own: PeerIdentity,
    tier: Tier,
    replica: tokio::sync::mpsc::Sender<Command>,
    connections: Connections,
    next_id: AtomicU64,
    grace: Duration,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
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
        let Server { config, bundle, ledger, endpoint, revocations, local_addr } = self;
        let wake = Arc::new(Notify::new());
        let own = OwnCredentials {
            ca: bundle.ca_verifying_key(),
            grant: bundle.grant().clone(),
            key: bundle.signing_key().clone(),
        };
        let replica =
            ReplicaHandle::spawn(ledger, own, config.session.clone(), Arc::clone(&wake)).map_err(ServeError::Thread)?;
        let shared = Arc::new(Shared {
            own: bundle.identity().clone(),
            tier: config.tier,
            replica: replica.sender(),
            connections: Connections::default(),
            next_id: AtomicU64::new(1),
            grace: config.shutdown_grace,
        });
        info!(
            addr = %local_addr,
            tier = config.tier.code(),
            id = %bundle.id(),
            scope = %bundle.scope(),
            upstream = config.upstream.map(|a| a.to_string()),
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
                wake: Arc::clone(&wake),
                next_id: {
                    let shared = Arc::clone(&shared);
                    Arc::new(move || shared.next_id())
                },
            };
            background.spawn(link.run(stop.clone()));
        }
        background.spawn(watch_revocations(
            config.revocations_file.clone(),
            config.revocation_poll,
            revocations,
            Arc::clone(&shared),
            stop.clone(),
        ));

        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                handshake = endpoint.accept() => match handshake {
                    Some(handshake) => {
                        connections.spawn(connection(handshake, Arc::clone(&shared), stop.clone()));
                    }
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        info!(connections = connections.len(), "shutting down");
        endpoint.stop_accepting();
        let _ = stop_tx.send(true);
        // The replica finishes the command it is on, then closes every session.
        replica.shutdown().await;
        let grace = config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
            while background.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(?grace, "connections did not finish in time; closing them");
        }
        endpoint.close_with(CloseCode::ShuttingDown);
        if tokio::time::timeout(grace, endpoint.wait_idle()).await.is_err() {
            warn!(?grace, "endpoint did not go idle in time");
        }
        connections.abort_all();
        background.abort_all();
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

async fn connection(handshake: Handshake, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let remote = handshake.remote_address();
    if *stop.borrow() {
        handshake.refuse();
        return;
    }
    let (conn, peer) = match handshake.authenticate().await {
        Ok(accepted) => accepted,
        Err(e) => {
            warn!(%remote, reason = %error_chain(&e), "connection refused");
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
    shared.connections.insert(conn_id, peer.clone(), conn.clone());
    let mut streams = JoinSet::new();
    let ended = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let id = shared.next_id();
                    streams.spawn(link::run(id, Side::Parent, peer.clone(), send, recv, shared.replica.clone()));
                }
                Err(e) => break e.to_string(),
            },
            _ = stop.changed() => break "server shutting down".to_owned(),
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
    if *stop.borrow() {
        CloseCode::ShuttingDown.close(&conn);
    }
    info!(%remote, peer = %peer.id, reason = %ended, "connection closed");
}

/// Re-reads the revocation list file when it changes (checked every `poll`, and at once on
/// SIGHUP); installs a newer list and closes the connections it revokes. Without a file, SIGHUP
/// is only logged (so a reload never kills the server).
async fn watch_revocations(
    path: Option<PathBuf>,
    poll: Duration,
    handle: RevocationHandle,
    shared: Arc<Shared>,
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
        match handle.update(list) {
            Ok(crate::ca::RevocationUpdate::Installed { previous, version }) => {
                info!(previous, version, revoked = handle.current().serials().len(), "revocation list installed");
                for id in shared.connections.close_revoked(&handle.current()) {
                    warn!(peer = %id, "connection closed: certificate revoked");
                }
            }
            Ok(_) => debug!("revocation list unchanged"),
            Err(e) => warn!(path = %path.display(), error = %error_chain(&e), "revocation list refused"),
        }
    }
}

/// When the file was last changed, and its size: enough to notice a new version.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn recv_hangup(signal: &mut Hangup) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
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
    use crate::ca::{PeerIdentity, Serial, SubjectId};

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
}
