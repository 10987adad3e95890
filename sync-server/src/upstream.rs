//! A township server's link to the county: it is the child there, and dials.
//!
//! The township keeps one session with the county open for as long as the link holds: changes
//! from its devices flow up as soon as they are committed (the replica thread notifies the
//! session), and the county pushes what it gets for this township's scope down the same way.
//! When the link drops, the dialer waits and dials again: one second at first, doubling up to the
//! configured sync interval, and at once (after a second) when new local changes arrive.
//!
//! The county sends its revocation list on a unidirectional stream right after the handshake,
//! and again whenever it installs a newer one (docs/PROTOCOL.md, "Revocation lists"). The
//! dialer reads those streams beside the session, each with a size limit and a timeout, and
//! offers every list to the server's revocations: a newer list signed by the county CA is
//! installed, saved, and closes the connections it revokes; anything else is logged and
//! ignored. Nothing on those streams can end the sync session.
//!
//! Two watchdogs end a stuck link: the session's own ack timeout (20 s without an ack for a
//! push ends the session) and QUIC's idle timeout with keep-alives (a dead path ends the
//! connection). Either way the next dial resumes from the saved log positions.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fq_core::sync::session::Side;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::ca::{Bundle, MAX_REVOCATION_LIST_BYTES, RevocationHandle, RevocationList};
use crate::link;
use crate::net::{CloseCode, Connection, NetConfig, RecvStream, VarInt, client_endpoint, connection_end};
use crate::replica::{Command, SessionId};
use crate::server::{ListSource, Revocations, error_chain};

/// The first wait after a failed dial.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The shortest wait between two dials, even when changes are waiting.
const MIN_REDIAL: Duration = Duration::from_secs(1);
/// How long closing the client endpoint may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one revocation list may take to arrive once its stream is open. A real list is a
/// few kilobytes (seconds on 2G); a stream still open after this is dropped, and the county
/// sends the list again on the next connection.
pub(crate) const REVOCATION_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Unidirectional streams the county may have open to us at once: one list at a time.
pub(crate) const REVOCATION_STREAMS: u32 = 1;

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
    /// The server's revocation lists: where lists from the county are offered.
    pub revocations: Arc<Revocations>,
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
        // The county's certificate is checked against the newest list we hold, not the bundle's.
        offer_quietly(endpoint.revocations(), &self.revocations.current());
        let mut backoff = FIRST_BACKOFF;
        while !*stop.borrow() {
            match tokio::time::timeout(self.connect_timeout, endpoint.connect(self.addr)).await {
                Ok(Ok((conn, county))) => {
                    info!(upstream = %self.addr, peer = %county.id, "upstream connected");
                    backoff = FIRST_BACKOFF;
                    // Our transport grants no unidirectional streams; the county needs one to
                    // send its revocation list.
                    conn.set_max_concurrent_uni_streams(VarInt::from_u32(REVOCATION_STREAMS));
                    let lists = receive_revocations(&conn, &self.revocations, endpoint.revocations());
                    let outcome = match conn.open_bi().await {
                        Ok((send, recv)) => {
                            let id = (self.next_id)();
                            // Not raced against `conn.closed()`: a lost connection ends the
                            // link's reader, which tells the replica thread, which retires the
                            // session; dropping the link instead would leave it there. The lists
                            // are read beside it, and whatever happens to them, the link runs on.
                            let session =
                                link::run(id, Side::Child, county.clone(), send, recv, self.replica.clone(), None);
                            tokio::pin!(session);
                            tokio::select! {
                                () = &mut session => {}
                                () = lists => session.await,
                            }
                            conn.close_reason().as_ref().map_or("session ended", connection_end)
                        }
                        Err(e) => connection_end(&e),
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

/// Reads every revocation list the county sends on this connection and offers it; returns when
/// the connection ends. Never fails: a bad list is logged and the next stream is awaited.
async fn receive_revocations(conn: &Connection, revocations: &Arc<Revocations>, county_check: &RevocationHandle) {
    while let Ok(recv) = conn.accept_uni().await {
        let list = match read_list(recv).await {
            Ok(list) => list,
            Err(reason) => {
                warn!(%reason, "revocation list from upstream ignored");
                continue;
            }
        };
        match revocations.offer(list, ListSource::Upstream).await {
            Ok(_) => offer_quietly(county_check, &revocations.current()),
            Err(e) => warn!(reason = %error_chain(&e), "revocation list from upstream ignored"),
        }
    }
}

/// Reads one list from its stream: at most [`MAX_REVOCATION_LIST_BYTES`], within
/// [`REVOCATION_READ_TIMEOUT`], then parsed (not yet verified). A stream abandoned on error is
/// stopped when dropped, which gives its flow-control credit back.
pub(crate) async fn read_list(mut recv: RecvStream) -> Result<RevocationList, String> {
    let bytes = match tokio::time::timeout(REVOCATION_READ_TIMEOUT, recv.read_to_end(MAX_REVOCATION_LIST_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(format!("cannot read the stream (at most {MAX_REVOCATION_LIST_BYTES} bytes): {e}")),
        Err(_) => return Err(format!("the list did not arrive within {REVOCATION_READ_TIMEOUT:?}")),
    };
    RevocationList::from_json(&bytes).map_err(|e| error_chain(&e))
}

/// Offers `list` to a handle that needs no more than the version rule (the one the dialer
/// checks the county's certificate with); a refusal there was already reported.
fn offer_quietly(handle: &RevocationHandle, list: &RevocationList) {
    if let Err(e) = handle.update(list.clone()) {
        debug!(error = %error_chain(&e), "revocation list not taken for checking the county");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::SystemTime;

    use super::*;
    use crate::ca::{CertificateAuthority, GrantRole};
    use crate::net::{NetConfig, server_endpoint};
    use crate::server::{SendListError, send_list};

    const WAIT: Duration = Duration::from_secs(10);

    /// A county server endpoint and a township connected to it, on 127.0.0.1; the lists v0, v1.
    struct Link {
        _dir: tempfile::TempDir,
        parent: Connection,
        child: Connection,
        v: [RevocationList; 2],
        _endpoints: (crate::net::ServerEndpoint, crate::net::ClientEndpoint),
    }

    async fn link() -> Link {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = CertificateAuthority::init(&dir.path().join("ca"), &"532924".parse().unwrap(), now).unwrap();
        let county =
            ca.issue(&"county".parse().unwrap(), GrantRole::CountyServer, &"532924".parse().unwrap(), now).unwrap();
        let township = ca
            .issue(&"tw-101".parse().unwrap(), GrantRole::TownshipServer, &"532924101".parse().unwrap(), now)
            .unwrap();
        let v0 = ca.revocations().unwrap();
        ca.issue(&"d07".parse().unwrap(), GrantRole::Mediator, &"532924101201".parse().unwrap(), now).unwrap();
        let v1 = ca.revoke(&"d07".parse().unwrap(), now).unwrap().list;
        let handle = RevocationHandle::new(county.ca().clone(), v0.clone()).unwrap();
        let localhost: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let server = server_endpoint(localhost, &county, handle, &NetConfig::default()).unwrap();
        let client = client_endpoint(localhost, &township, &NetConfig::default()).unwrap();
        let addr = server.local_addr().unwrap();
        let (accepted, connected) =
            tokio::join!(async { server.accept().await.unwrap().authenticate().await.unwrap() }, client.connect(addr));
        let (child, _) = connected.unwrap();
        Link { _dir: dir, parent: accepted.0, child, v: [v0, v1], _endpoints: (server, client) }
    }

    #[tokio::test]
    async fn revocation_stream_carries_a_list_once_the_child_grants_a_stream() {
        let l = link().await;
        // A child that grants no stream (an older build) is given up on, and never sees one.
        let refused = send_list(&l.parent, &l.v[1], Duration::from_millis(300)).await;
        assert!(matches!(refused, Err(SendListError::TimedOut)), "{refused:?}");

        l.child.set_max_concurrent_uni_streams(VarInt::from_u32(REVOCATION_STREAMS));
        let (sent, received) = tokio::join!(send_list(&l.parent, &l.v[1], WAIT), async {
            read_list(l.child.accept_uni().await.unwrap()).await
        });
        sent.unwrap();
        assert_eq!(received.unwrap(), l.v[1]);

        // The next list goes on a new stream of the same connection.
        let (sent, received) = tokio::join!(send_list(&l.parent, &l.v[0], WAIT), async {
            read_list(l.child.accept_uni().await.unwrap()).await
        });
        sent.unwrap();
        assert_eq!(received.unwrap(), l.v[0]);
    }

    #[tokio::test]
    async fn read_list_refuses_garbage_and_oversize_streams() {
        let l = link().await;
        l.child.set_max_concurrent_uni_streams(VarInt::from_u32(REVOCATION_STREAMS));
        let raw = |bytes: Vec<u8>| {
            let parent = l.parent.clone();
            async move {
                let mut send = parent.open_uni().await.unwrap();
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        };
        let cases = [
            (b"\x00\xffnot json".to_vec(), "not valid json"),
            (vec![b' '; MAX_REVOCATION_LIST_BYTES + 1], "at most"),
            (b"{\"format\": 1}".to_vec(), "not valid json"),
        ];
        for (bytes, expected) in cases {
            let ((), read) = tokio::join!(raw(bytes), async {
                tokio::time::timeout(WAIT, read_list(l.child.accept_uni().await.unwrap())).await.unwrap()
            });
            let err = read.unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
