//! A township server's link to the county: it is the child there, and dials.
//!
//! The township keeps one session with the county open for as long as the link holds: changes
//! from its devices flow up as soon as they are committed (the replica thread notifies the
//! session), and the county pushes what it gets for this township's scope down the same way.
//! When the link drops, the dialer waits and dials again: one second at first, doubling up to the
//! configured sync interval, and at once (after a second) when new local changes arrive.
//!
//! Two watchdogs end a stuck link: the session's own ack timeout (20 s without an ack for a
//! push ends the session) and QUIC's idle timeout with keep-alives (a dead path ends the
//! connection). Either way the next dial resumes from the saved log positions.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fq_core::sync::session::Side;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::ca::Bundle;
use crate::link;
use crate::net::{CloseCode, NetConfig, client_endpoint};
use crate::replica::{Command, SessionId};
use crate::server::error_chain;

/// The first wait after a failed dial.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The shortest wait between two dials, even when changes are waiting.
const MIN_REDIAL: Duration = Duration::from_secs(1);
/// How long closing the client endpoint may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the dialer needs.
pub(crate) struct Upstream {
    /// The county server.
    pub addr: SocketAddr,
    /// The township server's bundle (it presents the same certificate as a client).
    pub bundle: Bundle,
    /// Transport settings.
    pub net: NetConfig,
    /// Bound on one dial.
    pub connect_timeout: Duration,
    /// Longest wait between dials.
    pub max_wait: Duration,
    /// The replica thread.
    pub replica: mpsc::Sender<Command>,
    /// Woken when the local log grows.
    pub wake: Arc<Notify>,
    /// Session numbers, shared with the server's connections.
    pub next_id: Arc<dyn Fn() -> SessionId + Send + Sync>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Dials, runs the session, waits, dials again; until `stop` turns true.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let bind: SocketAddr = match self.addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = match client_endpoint(bind, &self.bundle, &self.net) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot set up the upstream endpoint; not syncing with the county");
                return;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        while !*stop.borrow() {
            match tokio::time::timeout(self.connect_timeout, endpoint.connect(self.addr)).await {
                Ok(Ok((conn, county))) => {
                    info!(upstream = %self.addr, peer = %county.id, "upstream connected");
                    backoff = FIRST_BACKOFF;
                    let outcome = match conn.open_bi().await {
                        Ok((send, recv)) => {
                            let id = (self.next_id)();
                            // Not raced against `conn.closed()`: a lost connection ends the
                            // link's reader, which tells the replica thread, which retires the
                            // session; dropping the link instead would leave it there.
                            link::run(id, Side::Child, county.clone(), send, recv, self.replica.clone()).await;
                            conn.close_reason().map_or_else(|| "session ended".to_owned(), |e| e.to_string())
                        }
                        Err(e) => e.to_string(),
                    };
                    let code = if *stop.borrow() { CloseCode::ShuttingDown } else { CloseCode::Done };
                    code.close(&conn);
                    info!(upstream = %self.addr, peer = %county.id, reason = %outcome, "upstream disconnected");
                }
                Ok(Err(e)) => warn!(upstream = %self.addr, reason = %error_chain(&e), "upstream unreachable"),
                Err(_) => {
                    warn!(upstream = %self.addr, after = ?self.connect_timeout, "upstream unreachable: no answer")
                }
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.wake.notified() => tokio::time::sleep(MIN_REDIAL).await,
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(self.max_wait.max(FIRST_BACKOFF));
        }
        endpoint.close();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    }
}
