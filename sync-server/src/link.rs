//! One sync session's stream, between the network and the replica actor.
//!
//! A link is the two halves of one bidirectional QUIC stream: a reader that forwards every
//! chunk to the actor, and a writer that writes what the actor queues for the session. Both
//! run until the stream is done in both directions:
//!
//! - The peer finishes its side (a device that is caught up): the reader reports the end, the
//!   actor retires the session and tells the writer to finish ours.
//! - The actor ends the session (a bad frame, a timeout, shutting down): the writer writes the
//!   last frames (the `Error`), finishes, and asks the reader to stop. The reader then sends
//!   STOP_SENDING, which also gives the stream's flow-control credit back: a stream left half
//!   read would leak it (DESIGN.md §8).

use std::time::Duration;

use fq_core::sync::session::Side;
use tokio::sync::{mpsc, oneshot};

use crate::ca::PeerIdentity;
use crate::net::{RecvStream, SendStream, VarInt};
use crate::replica::{Command, Outgoing, SessionId};

/// Bytes read from a stream at a time. A frame may be up to 1 MiB; the session's decoder
/// reassembles, and a 64 KiB read keeps one slow stream from holding much memory.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How long a finished stream waits for the peer to acknowledge the last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Application code of STOP_SENDING when the session ended on our side.
const STOP_CODE: u32 = 0;

/// Runs one session over `send`/`recv` until the stream is done both ways.
pub(crate) async fn run(
    id: SessionId,
    side: Side,
    peer: PeerIdentity,
    send: SendStream,
    recv: RecvStream,
    replica: mpsc::Sender<Command>,
) {
    let (out, queued) = mpsc::unbounded_channel();
    if replica.send(Command::Open { id, side, peer: Box::new(peer), out }).await.is_err() {
        // The actor is gone: the server is stopping.
        return;
    }
    let (stop, stopped) = oneshot::channel();
    tokio::join!(write(send, queued, stop), read(id, recv, replica, stopped));
}

async fn write(mut send: SendStream, mut queued: mpsc::UnboundedReceiver<Outgoing>, stop_reader: oneshot::Sender<()>) {
    while let Some(out) = queued.recv().await {
        match out {
            Outgoing::Frame(frame) => {
                if send.write_all(&frame).await.is_err() {
                    break;
                }
            }
            Outgoing::Finish => break,
        }
    }
    let _ = send.finish();
    let _ = stop_reader.send(());
    // Let the last frame (an ack, an error) reach the peer before the connection may close.
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
}

async fn read(id: SessionId, mut recv: RecvStream, replica: mpsc::Sender<Command>, mut stop: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        tokio::select! {
            r = recv.read(&mut buf) => {
                let cmd = match r {
                    Ok(Some(n)) => Command::Input { id, bytes: buf[..n].to_vec() },
                    Ok(None) => {
                        let _ = replica.send(Command::Ended { id, reason: "the peer finished the stream".into() }).await;
                        return;
                    }
                    Err(e) => {
                        let _ = replica.send(Command::Ended { id, reason: e.to_string() }).await;
                        return;
                    }
                };
                if replica.send(cmd).await.is_err() {
                    return;
                }
            }
            _ = &mut stop => {
                let _ = recv.stop(VarInt::from_u32(STOP_CODE));
                return;
            }
        }
    }
}
