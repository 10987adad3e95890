//! `fq-server import`: a sync file handed to the running server (docs/OPERATIONS.md, "Sync
//! files from villages without a network"; ADR 41).
//!
//! The replica thread owns the server's ledger (one writer), so the importing command does not
//! open it: the running server listens on a Unix socket in its data directory
//! ([`IMPORT_SOCKET`], mode 0600, so only the operator's account can use it), and
//! `fq-server import` hands the file over that socket. The replica thread imports it like a
//! session from the file's sender (every signature, grant and scope checked), commits, and only
//! then returns the answer file, which is a durable promise like an ack.
//!
//! On the socket: the request is a `u32` length and the file; the reply a status byte, a `u32`
//! length and a body. Status 0: the file was imported; the body is three `u32` counts
//! (changes received, already held, refused as outside the sender's scope), a replay byte
//! (1: the file was imported before) and the answer file. Any other status is a
//! [`Refusal`]'s code and the body an English reason for the log: nothing of the file was
//! applied and there is no answer.
//!
//! When no server is running on the directory, `fq-server import` does not open the stopped
//! replica itself; it says so and asks the operator to start the server (ADR 41).

use std::path::{Path, PathBuf};

use fq_core::sync::file::{FileError, FileReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::replica::{Command, Outgoing};

/// The socket's file name inside the data directory.
pub const IMPORT_SOCKET: &str = "import.sock";
/// Largest file taken over the socket (a sync file's own limit).
const MAX_REQUEST_BYTES: usize = fq_core::sync::file::MAX_FILE_BYTES;
/// Largest reply read back: the answer file and its counts.
const MAX_REPLY_BYTES: usize = fq_core::sync::file::MAX_FILE_BYTES + 13;

/// Why the server refused a file. Nothing of a refused file is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a sync file, cut short, altered, or too large.
    Damaged,
    /// Sealed for another replica (another township, or a device).
    WrongReceiver,
    /// The sender's certificate is not from this county, or may not sync with this server.
    Unauthorized,
    /// The file is itself an answer: it goes back to the device, not to the server.
    AnAnswer,
    /// The server failed while importing it, or is stopping.
    Failed,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::Damaged => 1,
            Refusal::WrongReceiver => 2,
            Refusal::Unauthorized => 3,
            Refusal::AnAnswer => 4,
            Refusal::Failed => 5,
        }
    }

    fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::Damaged,
            2 => Refusal::WrongReceiver,
            3 => Refusal::Unauthorized,
            4 => Refusal::AnAnswer,
            _ => Refusal::Failed,
        }
    }

    /// The kind of refusal a [`FileError`] is.
    pub fn of(e: &FileError) -> Refusal {
        match e {
            FileError::NotAFile
            | FileError::TooLarge(_)
            | FileError::Damaged(_)
            | FileError::Decrypt
            | FileError::Frames(_) => Refusal::Damaged,
            FileError::WrongReceiver { .. } => Refusal::WrongReceiver,
            FileError::Sender(_) | FileError::Unauthorized { .. } => Refusal::Unauthorized,
            // A server writes no files, so an answer is never to one of its own.
            FileError::NotOurAnswer => Refusal::AnAnswer,
            _ => Refusal::Failed,
        }
    }
}

/// What the server did with an imported file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Changes newly applied.
    pub received: u32,
    /// Changes the server already held.
    pub duplicates: u32,
    /// Changes refused (outside the sender's scope), audited on the server; the answer tells
    /// the device.
    pub refused: u32,
    /// The file was imported before: nothing new (the answer is written again).
    pub replayed: bool,
    /// The answer file, sealed for the sender.
    pub answer: Vec<u8>,
}

/// Why an import over the socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// No server is running on that data directory (no socket, or nobody listening).
    #[error("no server is running on {dir}")]
    NotRunning {
        /// The data directory.
        dir: PathBuf,
    },
    /// The socket's path is longer than a Unix socket address holds
    /// ([`MAX_SOCKET_PATH_BYTES`]): no server can listen there.
    #[error("the import socket's path {path} is {len} bytes, more than a Unix socket allows")]
    PathTooLong {
        /// The socket's path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The directory holds no server replica at all.
    #[error("{dir} is not a server's data directory")]
    NotAServer {
        /// The data directory.
        dir: PathBuf,
    },
    /// The server refused the file; nothing of it was applied.
    #[error("the server refused the file: {reason}")]
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// The server's reason, in English (as logged).
        reason: String,
    },
    /// Reading or writing the socket failed.
    #[error("talking to the server failed")]
    Io(#[from] std::io::Error),
}

/// The reply frame the replica thread sends for an imported file (status 0, counts, answer).
pub(crate) fn accepted_frame(report: &FileReport, answer: &[u8]) -> Vec<u8> {
    let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    let mut f = Vec::with_capacity(14 + answer.len());
    f.push(0);
    f.extend(count(report.stats.received));
    f.extend(count(report.stats.duplicates));
    f.extend(count(report.stats.refused_here));
    f.push(u8::from(report.replayed));
    f.extend_from_slice(answer);
    f
}

/// The reply frame for a refused file.
pub(crate) fn refused_frame(kind: Refusal, reason: &str) -> Vec<u8> {
    let mut f = vec![kind.code()];
    f.extend_from_slice(reason.as_bytes());
    f
}

/// Listens on the data directory's socket until `stop`; each connection is one import.
pub(crate) async fn listen(dir: PathBuf, replica: mpsc::Sender<Command>, mut stop: watch::Receiver<bool>) {
    let path = dir.join(IMPORT_SOCKET);
    // A socket file left by a server that was killed: nobody listens on it any more.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the import socket; fq-server import will not work");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let replica = replica.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, replica).await {
                            warn!(error = %e, "an import over the socket failed");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "import socket accept failed"),
            },
            _ = stop.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn serve(mut stream: UnixStream, replica: mpsc::Sender<Command>) -> std::io::Result<()> {
    let len = usize::try_from(stream.read_u32().await?).unwrap_or(usize::MAX);
    if len > MAX_REQUEST_BYTES {
        let f = refused_frame(Refusal::Damaged, "the file is larger than a sync file may be");
        return reply(&mut stream, &f).await;
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    let (out, mut answers) = mpsc::unbounded_channel();
    if replica.send(Command::Import { bytes, out }).await.is_err() {
        return reply(&mut stream, &refused_frame(Refusal::Failed, "the server is stopping")).await;
    }
    while let Some(o) = answers.recv().await {
        if let Outgoing::Frame(frame) = o {
            info!(status = frame.first().copied().unwrap_or(0), bytes = frame.len(), "sync file answered");
            return reply(&mut stream, &frame).await;
        }
    }
    reply(&mut stream, &refused_frame(Refusal::Failed, "the server stopped before answering")).await
}

async fn reply(stream: &mut UnixStream, frame: &[u8]) -> std::io::Result<()> {
    let (status, body) = frame.split_first().map_or((Refusal::Failed.code(), &[][..]), |(s, b)| (*s, b));
    stream.write_u8(status).await?;
    stream.write_u32(u32::try_from(body.len()).unwrap_or(u32::MAX)).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Hands `file` to the server running on `dir` and returns what it did, with its answer file.
pub async fn import(dir: &Path, file: &[u8]) -> Result<Imported, ImportError> {
    let path = dir.join(IMPORT_SOCKET);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(ImportError::PathTooLong { path, len });
    }
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(_) if !dir.join(crate::server::LEDGER_FILE).exists() => {
            return Err(ImportError::NotAServer { dir: dir.to_owned() });
        }
        Err(_) => return Err(ImportError::NotRunning { dir: dir.to_owned() }),
    };
    stream.write_u32(u32::try_from(file.len()).unwrap_or(u32::MAX)).await?;
    stream.write_all(file).await?;
    let status = stream.read_u8().await?;
    let len = usize::try_from(stream.read_u32().await?).unwrap_or(usize::MAX);
    if len > MAX_REPLY_BYTES {
        return Err(ImportError::Io(std::io::Error::other("the server's reply is too large")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    if status != 0 {
        let reason = String::from_utf8_lossy(&body).into_owned();
        return Err(ImportError::Refused { kind: Refusal::from_code(status), reason });
    }
    let short = || ImportError::Io(std::io::Error::other("the server's reply is cut short"));
    let (counts, answer) = body.split_at_checked(13).ok_or_else(short)?;
    let count = |i: usize| {
        counts.get(i * 4..i * 4 + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes).unwrap_or(0)
    };
    Ok(Imported {
        received: count(0),
        duplicates: count(1),
        refused: count(2),
        replayed: counts.get(12) == Some(&1),
        answer: answer.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_data_directory_too_deep_for_a_socket_is_named_not_taken_for_a_stopped_server() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("县综治中心".repeat(8));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join(crate::server::LEDGER_FILE), b"").unwrap();
        match import(&deep, b"").await {
            Err(ImportError::PathTooLong { len, .. }) => assert!(len > MAX_SOCKET_PATH_BYTES),
            other => panic!("expected PathTooLong, got {other:?}"),
        }
        // A short one that nobody listens on is a stopped server.
        let short = dir.path().join("tw");
        std::fs::create_dir_all(&short).unwrap();
        std::fs::write(short.join(crate::server::LEDGER_FILE), b"").unwrap();
        assert!(matches!(import(&short, b"").await, Err(ImportError::NotRunning { .. })));
    }
}
