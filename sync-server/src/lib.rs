//! `fq-sync-server`: the township and county servers of the fq case ledger, and the county's
//! certificate authority.
//!
//! # Layout
//!
//! - [`ca`]: the county's private CA. Issues Ed25519 certificates that name a holder's subject
//!   id, role and scope (`urn:fq:{role}:{scope}:{id}`) and, beside each, a CA-signed
//!   [`fq_core::trust::SignedGrant`] saying the same for replicas that do not read X.509; keeps
//!   the ledger of issued serials, signs versioned revocation lists, and reads and writes
//!   [`ca::Bundle`] files (a holder's certificate, key, grant, CA and revocation list).
//!   [`ca::PeerIdentity`] reads the identity back from a peer's certificate.
//! - [`net`]: QUIC endpoints with mutual TLS (the only module that names quinn). Builds the
//!   rustls and transport configurations (tuned for 2G), and hands out connections only after
//!   the peer's identity was read and its serial checked against the revocation list in force.
//! - [`config`]: what a server runs with: command-line settings and the `--config` file
//!   (TOML or JSON: sync interval, the revocation list file to follow, the limits), and the
//!   memory bound its limits give ([`config::ServerConfig::memory_bound`]).
//! - [`limits`]: what one peer, and all peers together, may make a server hold: connections in
//!   total and per certificate, and the input budget that every frame is charged to from its
//!   length prefix until it is handled.
//! - [`server`]: `fq-server run`: [`server::bind`] opens the replica and the endpoint,
//!   [`server::Server::run`] accepts connections until its shutdown future completes, then shuts
//!   down gracefully. Also follows the revocation list file while running, sends the list in
//!   force to child servers on a unidirectional stream, and keeps the newest list it installed
//!   in its data directory ([`server::SAVED_REVOCATIONS_FILE`]).
//! - `replica` (private): the one thread that owns the server's [`fq_core::ledger::Ledger`] and
//!   every [`fq_core::sync::session::Session`]; connection tasks send it bytes, it sends back
//!   frames, commits their work in groups, and tells every session once per group when the
//!   log grew.
//! - `link` (private): one session's QUIC stream, between the network and the replica thread;
//!   follows the frame boundaries of what it reads and charges them to the input budget.
//! - `policy` (private): the county server follows the CA's signed policy file and hands it to
//!   the replica thread, which installs it and sends it down to every child (ADR 30).
//! - `upstream` (private): a township's link to the county: dial, keep the session open,
//!   re-dial with backoff; beside the session, take the revocation lists the county sends.
//! - [`client`]: a device's sync: [`client::dial`] (touches nothing local), then
//!   [`client::Dialed::sync`] runs a session to the end, dialing once more if the link breaks
//!   on the way; [`client::sync_once`] does both. `fq sync` is a thin shell over it.
//!   [`client::dial_peer`] dials another device of the same area instead (`fq sync --peer`).
//! - [`peer`]: a device waiting for another device of its area on the local network
//!   (`fq serve`, ADR 43): [`peer::listen`], then [`peer::serve_peers`] runs one
//!   device-to-device session at a time, with the device's ledger opened for each session.
//! - [`report`]: last month's report (HTML, xlsx, JSON) written into `DIR/reports/` on the
//!   first of each month, and the newest one found for `status`.
//! - [`import`]: `fq-server import`: a sync file from a village handed to the running server
//!   over a Unix socket in its data directory; the replica thread answers it after its commit.
//! - [`status`]: `fq-server status`: a server replica's identity, counts, peers and refusals,
//!   read-only beside the running server.
//! - [`journal`]: the log: JSON with stable English event names, or a human line in the
//!   operator's language (every event and field has its Chinese words).
//! - `main.rs`, `cli.rs`, `message.rs` (the binary, not this library): the `fq-server` clap
//!   shell; its help, usage mistakes, errors and output in Chinese (the default) or English.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::SystemTime;
//! use fq_core::trust::SignedGrant;
//! use fq_sync_server::ca::{CertificateAuthority, GrantRole, PeerIdentity};
//!
//! let dir = tempfile::tempdir()?;
//! let ca = CertificateAuthority::init(&dir.path().join("ca"), &"532924".parse()?, SystemTime::now())?;
//! let id = "d07".parse()?;
//! let bundle = ca.issue(&id, GrantRole::Mediator, &"532924101201".parse()?, SystemTime::now())?;
//! let peer = PeerIdentity::from_der(bundle.certificate_der())?;
//! assert_eq!(peer.uri(), "urn:fq:mediator:532924101201:d07");
//! assert_eq!(peer.public_key, bundle.signing_key().verifying_key());
//! // The grant says the same, checked with the CA's Ed25519 key alone.
//! let grant = SignedGrant::decode(&bundle.grant().bytes, &bundle.ca_verifying_key())?;
//! assert_eq!(grant.grant.public_key, peer.public_key.to_bytes());
//! # Ok(()) }
//! ```
//!
//! # Invariants
//!
//! - Every accepted connection, including resumed TLS sessions and 0-RTT, has been checked
//!   against the current revocation list before the server reads a byte from it.
//! - A revocation list is trusted only if the county CA signed it, and a list never replaces a
//!   newer one, whoever sent it (a file, the county server, a saved copy). Nothing a parent
//!   sends on a revocation stream can end a sync session.
//! - The CA records a certificate in its ledger before handing it out, so every certificate in
//!   the field can be revoked by id.
//! - A bundle that loads carries a grant signed by its CA for exactly its certificate's key,
//!   subject, role, scope and serial.
//! - Only the replica thread touches a server's ledger; nothing else holds it, so no SQLite
//!   connection is ever shared between threads.
//! - A server never accepts a child whose certificate scope lies outside its own, and limits
//!   every session to the scope the peer's certificate names.
//! - Device to device, each side takes the other only if it is another person's device, not
//!   revoked, whose scope contains or lies in its own, and sends only what lies in both.
//! - A device's changes are acknowledged only after the server committed them (the session's
//!   rule); a server killed at any moment keeps every acknowledged change.
//! - What one certificate can make the server hold is bounded ([`limits`]): at most
//!   `max_connections_per_peer` connections of `max_streams` sessions each, and its share of
//!   the input budget for unfinished frames.
//! - A restarted server resets its predecessor's connections: its stateless-reset key lives in
//!   the data directory ([`server::RESET_KEY_FILE`]).
#![warn(missing_docs)]

pub mod ca;
pub mod client;
pub mod config;
pub mod import;
pub mod journal;
pub mod limits;
mod link;
pub mod net;
pub mod peer;
mod policy;
mod replica;
pub mod report;
pub mod server;
pub mod signal;
pub mod status;
mod upstream;
