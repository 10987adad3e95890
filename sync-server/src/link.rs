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
//! - The peer announces a frame that does not fit in the input budget (`crate::limits`): the
//!   reader passes nothing more on, tells the actor (which ends the session with an `Error`
//!   frame, `TooLarge` or `Busy`), and stops the stream.
//!
//! On a server, the reader follows the frame boundaries of what it reads (`FrameTracker`) and
//! charges every frame to the input budget when its length prefix arrives, before the bytes go
//! to the actor; the actor releases it once it has handled the frame's last byte.

use std::sync::Arc;
use std::time::Duration;

use fq_core::sync::session::Side;
use tokio::sync::{mpsc, oneshot};

use crate::ca::PeerIdentity;
use crate::limits::{Charge, FrameTracker};
use crate::net::{RecvStream, SendStream, VarInt, read_end};
use crate::replica::{Command, Outgoing, SessionId};

/// Bytes read from a stream at a time. A frame may be up to 1 MiB; the session's decoder
/// reassembles, and a 64 KiB read keeps one slow stream from holding much memory.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How long a finished stream waits for the peer to acknowledge the last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Application code of STOP_SENDING when the session ended on our side.
const STOP_CODE: u32 = 0;

/// Runs one session over `send`/`recv` until the stream is done both ways. `charge` is the
/// stream's account with the input budget: a server charges what peers dialing in send it; its
/// own link to the county runs without one.
pub(crate) async fn run(
    id: SessionId,
    side: Side,
    peer: PeerIdentity,
    send: SendStream,
    recv: RecvStream,
    replica: mpsc::Sender<Command>,
    charge: Option<Charge>,
) {
    let (out, queued) = mpsc::unbounded_channel();
    if replica.send(Command::Open { id, side, peer: Box::new(peer), out }).await.is_err() {
        // The actor is gone: the server is stopping.
        return;
    }
    let (stop, stopped) = oneshot::channel();
    let budget = charge.map(|c| (FrameTracker::default(), Arc::new(c)));
    tokio::join!(write(send, queued, stop), read(id, recv, replica, stopped, budget));
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

async fn read(
    id: SessionId,
    mut recv: RecvStream,
    replica: mpsc::Sender<Command>,
    mut stop: oneshot::Receiver<()>,
    mut budget: Option<(FrameTracker, Arc<Charge>)>,
) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        tokio::select! {
            r = recv.read(&mut buf) => {
                let cmd = match r {
                    Ok(Some(n)) => {
                        let bytes = buf[..n].to_vec();
                        let mut release = None;
                        if let Some((tracker, charge)) = &mut budget {
                            let tracked = tracker.feed(&bytes);
                            if let Err(over) = charge.take(tracked.charge) {
                                // Nothing more of this stream reaches the session: the actor
                                // ends it, and only then gives back what it held.
                                let held = Some(Arc::clone(charge));
                                let _ = replica.send(Command::OverBudget { id, over, held }).await;
                                let _ = recv.stop(VarInt::from_u32(STOP_CODE));
                                return;
                            }
                            release = Some((Arc::clone(charge), tracked.release));
                        }
                        Command::Input { id, bytes, release }
                    }
                    // The session keeps its unfinished frame until the actor retires it: the
                    // stream's charge goes with the command, and is given back after that.
                    Ok(None) => {
                        let reason = "the peer finished the stream".into();
                        let held = budget.take().map(|(_, charge)| charge);
                        let _ = replica.send(Command::Ended { id, reason, held }).await;
                        return;
                    }
                    Err(e) => {
                        let held = budget.take().map(|(_, charge)| charge);
                        let _ = replica.send(Command::Ended { id, reason: read_end(&e).into(), held }).await;
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
