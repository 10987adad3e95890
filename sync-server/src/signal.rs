//! Stopping on a signal, for `fq-server run` and `fq serve` alike.

use std::future::Future;

/// Registers for SIGTERM and SIGINT (Ctrl-C) now, and returns a future that completes on
/// either with its name. Registering early matters: a SIGTERM that arrives right after
/// "listening" must shut down gracefully, not kill the process with the default action.
#[cfg(unix)]
pub fn shutdown() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Completes on Ctrl-C, with its name.
#[cfg(not(unix))]
pub fn shutdown() -> std::io::Result<impl Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}
