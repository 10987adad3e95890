//! `fq serve` and `fq sync --peer`: two devices of one area (the grid worker and the mediator
//! of a village) exchange cases over the local network with no server (ADR 43).
//!
//! `fq serve` unlocks the ledger and waits on `--listen` (every network of the device by
//! default), opening the ledger for each session only; it prints the address and its
//! certificate id to tell the other device, then one line per connection. `fq sync --peer ADDR` on the other device dials it, runs one
//! device-to-device session and prints the usual summary. Each side checks the other's
//! certificate against the county CA and the newest revocation list it knows, and takes it
//! only if it is another person's device whose area contains, or lies in, its own; each then
//! sends only what lies in both areas. Nothing of the remembered server address changes: the
//! position reached with the other device is kept in the ledger's peer table, under the
//! replica its certificate's key names, so the next exchange resumes from there.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use anyhow::Context;
use fq_sync_server::ca::{Bundle, RevocationHandle};
use fq_sync_server::client::{self, SyncError};
use fq_sync_server::net::EndpointError;
use fq_sync_server::peer::{self, PeerEvent, ServeOptions};

use crate::enroll;
use crate::lang::Lang;
use crate::render::{self, SyncedWith};
use crate::sync;
use crate::vault::Place;

/// Where `fq serve` waits when `--listen` is not given: every network of the device.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Why a device-to-device sync failed; `message` words it for a device, not a server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// `fq sync --peer`: dialing the device, or the session with it, failed.
    #[error("sync with the device at {addr} failed")]
    Sync {
        /// The address given.
        addr: String,
        /// Why.
        #[source]
        source: SyncError,
    },
    /// `fq serve --once`: the one session failed (its line said why).
    #[error("the session with device {peer} did not complete")]
    Served {
        /// The dialing device's certificate id.
        peer: String,
    },
    /// `fq serve` could not wait on the address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: EndpointError,
    },
}

/// The bundle, after the checks every sync makes, and the newest revocation list this device
/// knows (from its bundle, or one handed over since): device to device, no server stands
/// between the two to refuse a revoked certificate.
fn credentials(ledger: &fq_core::ledger::Ledger, place: &Place) -> anyhow::Result<(Bundle, RevocationHandle)> {
    let bundle = sync::device_bundle(ledger, place)?;
    let list = enroll::newest_revocations(&bundle, place.dir(), None)?;
    let handle = RevocationHandle::new(bundle.ca().clone(), list).context("the revocation list is not the county's")?;
    Ok((bundle, handle))
}

/// `fq sync --peer ADDR`.
pub(crate) fn sync(out: &mut dyn Write, place: &Place, text: &str, lang: Lang, json: bool) -> anyhow::Result<()> {
    let unlocked = place.unlock()?;
    let (bundle, revocations) = credentials(&unlocked.open_read_only()?, place)?;
    let addr = sync::resolve(text)?;
    let runtime = sync::runtime()?;
    let bar = sync::progress_bar(json);
    bar.set_message(match lang {
        Lang::Zh => format!("正在连接设备 {text}…"),
        Lang::En => format!("connecting to the device at {text}…"),
    });
    let failed = |source| PeerError::Sync { addr: text.to_owned(), source };
    let dialed = match runtime.block_on(client::dial_peer(&bundle, revocations, addr, &sync::options())) {
        Ok(d) => d,
        Err(e) => {
            bar.finish_and_clear();
            return Err(failed(e).into());
        }
    };
    let mut ledger = unlocked.open()?;
    let report = runtime.block_on(dialed.sync(&mut ledger, |p| sync::show(&bar, lang, p)));
    bar.finish_and_clear();
    let report = report.map_err(failed)?;
    // What the township has still not acknowledged: a device passes changes on, it does not
    // acknowledge them for the township.
    let waiting = ledger.waiting_for(ledger.upstream()?)?;
    render::sync_summary(out, lang, json, text, &report, waiting, SyncedWith::Device)
}

/// `fq serve [--listen ADDR] [--once]`.
pub(crate) fn serve(
    out: &mut dyn Write,
    place: &Place,
    listen: Option<&str>,
    once: bool,
    lang: Lang,
    json: bool,
) -> anyhow::Result<()> {
    let unlocked = place.unlock()?;
    let (bundle, revocations) = credentials(&unlocked.open_read_only()?, place)?;
    let bind = sync::resolve(listen.unwrap_or(DEFAULT_LISTEN))?;
    let runtime = sync::runtime()?;
    runtime.block_on(async {
        // Registered before binding: Ctrl-C or SIGTERM right after the address is shown must
        // end the listener cleanly, not kill the process mid-session.
        let signal = fq_sync_server::signal::shutdown().context("cannot listen for SIGTERM and SIGINT")?;
        let shutdown = async move {
            signal.await;
        };
        let listener = peer::listen(bind, &bundle, revocations, &ServeOptions::default())
            .map_err(|source| PeerError::Listen { addr: bind, source })?;
        let local = listener.local_addr().context("reading the listening address")?;
        render::serving(out, lang, json, shown_address(local), listener.identity())?;
        let mut last_failure = None;
        let mut shown = Ok(());
        // A bar while a session runs (on a terminal, not with --json), cleared before its line.
        let mut running: Option<(indicatif::ProgressBar, String)> = None;
        // The ledger is opened for each session only (the passphrase was asked once, above):
        // between exchanges the person keeps using fq on this device.
        let sessions = peer::serve_peers(
            &listener,
            || unlocked.open(),
            once,
            shutdown,
            |event| {
                match event {
                    PeerEvent::Started { peer, .. } => {
                        let bar = sync::spinner(json);
                        let who = render::device_words(lang, peer);
                        sync::show_serving(&bar, lang, &who, None);
                        running = Some((bar, who));
                        return;
                    }
                    PeerEvent::Progress(stats) => {
                        if let Some((bar, who)) = &running {
                            sync::show_serving(bar, lang, who, Some(stats));
                        }
                        return;
                    }
                    PeerEvent::Session(s) => {
                        last_failure = s.result.as_ref().err().map(|_| s.peer.id.to_string());
                    }
                    _ => {}
                }
                if let Some((bar, _)) = running.take() {
                    bar.finish_and_clear();
                }
                if shown.is_ok() {
                    shown = render::peer_event(out, lang, json, event);
                }
            },
        )
        .await?;
        shown?;
        render::serve_stopped(out, lang, json, sessions)?;
        match last_failure {
            // With --once the exit code says how the one session went (its words are above).
            Some(peer) if once => Err(PeerError::Served { peer }.into()),
            _ => Ok(()),
        }
    })
}

/// The address to tell the other device. A listener on every network shows the address this
/// device would use to reach a local network, found by asking the system for a route (no
/// packet is sent); with no route it shows the wildcard, and the person reads the address in
/// the phone's Wi-Fi settings.
fn shown_address(local: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 168, 0, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match routed {
        Ok(addr) if !addr.ip().is_unspecified() && !addr.ip().is_loopback() => SocketAddr::new(addr.ip(), local.port()),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), local.port()),
    }
}
