//! A userspace UDP relay that makes a bad link on 127.0.0.1: seeded loss, one-way delay, a rate
//! limit with a bounded queue, and outages, all changeable while it runs. This kernel has no
//! `tc netem` and the tests have no root (DESIGN.md §8), so a device is pointed at the relay
//! instead of at its server.
//!
//! ```text
//!  device ──udp──▶ front (relay.addr()) ─┬─ up line ─▶ mapping socket ──udp──▶ server
//!  device ◀──udp── front ◀── down line ──┴─────────── mapping socket ◀──udp── server
//! ```
//!
//! - Every datagram is judged once, when it reaches the relay: dropped while the link is out,
//!   dropped with the loss probability (one seeded RNG per direction, so a given sequence of
//!   datagrams always loses the same ones), dropped when the queue in front of the rate limit is
//!   full; otherwise it is scheduled for delivery at `serialisation end + delay`.
//! - Each direction is one FIFO line: a datagram is never delivered before the one queued ahead
//!   of it, even when the delay knob is lowered meanwhile (a real link does not reorder).
//! - An outage also drops what is already on the line when it comes due: a cut link loses the
//!   packets in flight.
//! - The client address is learned from the datagrams that reach the front socket. Each new
//!   client address gets its own socket towards the server (a NAT mapping), so a device that
//!   re-dials from a new port is a new flow to the server, as it would be behind a carrier NAT.
//!   The rate limit and queues belong to the link and are shared by all mappings.
//! - Everything is bounded: at most [`MAX_MAPPINGS`] mappings, [`LINE_CAPACITY`] datagrams
//!   on each line, and every task stops when the [`Relay`] is dropped or shut down.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest datagram relayed: quinn's datagrams stay under 1,500 bytes, but a buffer for the
/// largest UDP payload costs nothing and never truncates.
const MAX_DATAGRAM_BYTES: usize = 64 * 1024;
/// Datagrams waiting on one direction's line (in the delay or the rate-limit queue); more are
/// dropped as a full router buffer would.
pub const LINE_CAPACITY: usize = 8192;
/// Client addresses remembered at once; the oldest mapping is closed to make room.
pub const MAX_MAPPINGS: usize = 64;
/// Bytes the queue in front of a rate limit may hold before it drops (tail drop), by default.
pub const DEFAULT_QUEUE_BYTES: u64 = 64 * 1024;

/// What the link does to datagrams right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSettings {
    /// Probability that a datagram is lost, each way (clamped to 0..=1).
    pub loss: f64,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Bandwidth of each direction in bytes per second; `None`: unlimited.
    pub rate_bytes_per_sec: Option<u64>,
    /// Bytes that may wait for the rate limit before datagrams are dropped.
    pub queue_bytes: u64,
    /// Everything is dropped, including what is already on the line.
    pub outage: bool,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            rate_bytes_per_sec: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            outage: false,
        }
    }
}

/// Counters since the relay started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams put on a line (not dropped on arrival).
    pub queued: u64,
    /// Datagrams delivered to the server.
    pub forwarded_up: u64,
    /// Datagrams delivered to the client.
    pub forwarded_down: u64,
    /// Bytes delivered to the server.
    pub bytes_up: u64,
    /// Bytes delivered to the client.
    pub bytes_down: u64,
    /// Datagrams dropped by the loss probability.
    pub dropped_loss: u64,
    /// Datagrams dropped because the link was out (on arrival or while on the line).
    pub dropped_outage: u64,
    /// Datagrams dropped because a queue was full.
    pub dropped_queue: u64,
}

impl RelayStats {
    /// Every datagram dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_outage + self.dropped_queue
    }
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    forwarded_up: AtomicU64,
    forwarded_down: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_outage: AtomicU64,
    dropped_queue: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            queued: get(&self.queued),
            forwarded_up: get(&self.forwarded_up),
            forwarded_down: get(&self.forwarded_down),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            dropped_loss: get(&self.dropped_loss),
            dropped_outage: get(&self.dropped_outage),
            dropped_queue: get(&self.dropped_queue),
        }
    }
}

/// The knobs and counters, shared by the relay's tasks and every [`LinkControl`].
#[derive(Debug)]
struct Shared {
    // std Mutex: held only to read or write the settings, never across an await.
    settings: Mutex<LinkSettings>,
    counters: Counters,
}

impl Shared {
    fn settings(&self) -> LinkSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outage(&self) -> bool {
        self.settings().outage
    }
}

/// A handle on a running relay's knobs and counters; cheap to clone, usable from any thread
/// and from synchronous callbacks (a sync's progress callback cuts the link mid-upload).
#[derive(Debug, Clone)]
pub struct LinkControl {
    shared: Arc<Shared>,
}

impl LinkControl {
    /// The settings in force.
    pub fn settings(&self) -> LinkSettings {
        self.shared.settings()
    }

    /// Replaces every setting at once.
    pub fn set(&self, settings: LinkSettings) {
        *self.shared.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    fn update(&self, f: impl FnOnce(&mut LinkSettings)) {
        f(&mut self.shared.settings.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Sets the loss probability of each direction.
    pub fn set_loss(&self, loss: f64) {
        self.update(|s| s.loss = loss);
    }

    /// Sets the one-way delay.
    pub fn set_delay(&self, delay: Duration) {
        self.update(|s| s.delay = delay);
    }

    /// Sets each direction's bandwidth (`None`: unlimited).
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.update(|s| s.rate_bytes_per_sec = bytes_per_sec);
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_outage(&self, outage: bool) {
        self.update(|s| s.outage = outage);
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        self.shared.counters.snapshot()
    }
}

/// Where a datagram on a line goes.
#[derive(Debug)]
struct Scheduled {
    due: Instant,
    bytes: Vec<u8>,
    /// The socket to send from: a mapping's socket (up) or the front socket (down).
    from: Arc<UdpSocket>,
    to: SocketAddr,
}

/// Up (client to server) or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}

/// One direction of the link: its RNG, its rate-limit clock, and its FIFO line.
#[derive(Debug)]
struct Line {
    way: Way,
    state: Mutex<LineState>,
    tx: mpsc::Sender<Scheduled>,
}

#[derive(Debug)]
struct LineState {
    rng: ChaCha8Rng,
    /// When the rate limit has finished serialising everything queued so far.
    busy_until: Instant,
    /// When the last datagram queued is due: later ones are never due before it.
    last_due: Instant,
}

impl Line {
    fn new(way: Way, seed: u64) -> (Arc<Line>, mpsc::Receiver<Scheduled>) {
        let (tx, rx) = mpsc::channel(LINE_CAPACITY);
        let now = Instant::now();
        let state = LineState { rng: ChaCha8Rng::seed_from_u64(seed), busy_until: now, last_due: now };
        (Arc::new(Line { way, state: Mutex::new(state), tx }), rx)
    }

    /// Judges one datagram that reached the relay and puts it on the line, or drops it.
    fn offer(&self, shared: &Shared, bytes: Vec<u8>, from: Arc<UdpSocket>, to: SocketAddr) {
        let s = shared.settings();
        let counters = &shared.counters;
        let due = {
            let mut line = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            // The RNG is drawn for every datagram, so which ones are lost depends only on the
            // seed and the order they arrived in, not on the other knobs.
            let lost = line.rng.random_bool(if s.loss.is_nan() { 0.0 } else { s.loss.clamp(0.0, 1.0) });
            if s.outage {
                Counters::bump(&counters.dropped_outage, 1);
                return;
            }
            if lost {
                Counters::bump(&counters.dropped_loss, 1);
                return;
            }
            let now = Instant::now();
            let sent = match s.rate_bytes_per_sec {
                Some(rate) if rate > 0 => {
                    let start = line.busy_until.max(now);
                    let backlog = (start - now).as_secs_f64() * rate as f64;
                    if backlog + bytes.len() as f64 > s.queue_bytes as f64 {
                        Counters::bump(&counters.dropped_queue, 1);
                        return;
                    }
                    let done = start + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                    line.busy_until = done;
                    done
                }
                _ => now,
            };
            let due = (sent + s.delay).max(line.last_due);
            line.last_due = due;
            due
        };
        if self.tx.try_send(Scheduled { due, bytes, from, to }).is_ok() {
            Counters::bump(&counters.queued, 1);
        } else {
            Counters::bump(&counters.dropped_queue, 1);
        }
    }

    /// Delivers what is on the line, in order, each when it is due.
    async fn deliver(self: Arc<Self>, shared: Arc<Shared>, mut rx: mpsc::Receiver<Scheduled>) {
        let counters = &shared.counters;
        let (forwarded, bytes) = match self.way {
            Way::Up => (&counters.forwarded_up, &counters.bytes_up),
            Way::Down => (&counters.forwarded_down, &counters.bytes_down),
        };
        while let Some(d) = rx.recv().await {
            tokio::time::sleep_until(d.due).await;
            if shared.outage() {
                Counters::bump(&counters.dropped_outage, 1);
                continue;
            }
            // A send error (the receiver's port is gone) is a lost datagram, like on a real link.
            if d.from.send_to(&d.bytes, d.to).await.is_ok() {
                Counters::bump(forwarded, 1);
                Counters::bump(bytes, d.bytes.len() as u64);
            }
        }
    }
}

/// A running relay between one client (learned from its datagrams) and `target`.
///
/// Dropping it stops every task it started; [`Relay::shutdown`] also waits for them.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    control: LinkControl,
    tasks: JoinSet<()>,
}

impl Relay {
    /// Binds the front socket on 127.0.0.1:0 and starts relaying to `target` with a perfect
    /// link; `seed` fixes which datagrams are lost.
    pub async fn start(target: SocketAddr, seed: u64) -> io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared { settings: Mutex::new(LinkSettings::default()), counters: Counters::default() });
        let (up, up_rx) = Line::new(Way::Up, seed);
        let (down, down_rx) = Line::new(Way::Down, seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(&up).deliver(Arc::clone(&shared), up_rx));
        tasks.spawn(Arc::clone(&down).deliver(Arc::clone(&shared), down_rx));
        tasks.spawn(front_loop(front, target, Arc::clone(&shared), up, down));
        Ok(Relay { addr, target, control: LinkControl { shared }, tasks })
    }

    /// The address the client should dial instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The knobs and counters.
    pub fn control(&self) -> &LinkControl {
        &self.control
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        self.control.stats()
    }

    /// Stops every task and waits until they are gone.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One client address: its socket towards the server, and the task reading that socket.
struct Mapping {
    socket: Arc<UdpSocket>,
    reader: tokio::task::AbortHandle,
    born: u64,
}

/// Reads the front socket: each datagram from a client goes up through that client's mapping
/// (made on first sight). The mappings' reader tasks live in this task's `JoinSet`, so they
/// stop with it.
async fn front_loop(front: Arc<UdpSocket>, target: SocketAddr, shared: Arc<Shared>, up: Arc<Line>, down: Arc<Line>) {
    let mut mappings: BTreeMap<SocketAddr, Mapping> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut born = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        tokio::select! {
            received = front.recv_from(&mut buf) => {
                // An error here is an ICMP "port unreachable" from an earlier send to a client
                // that has gone: not fatal for the relay.
                let Ok((n, client)) = received else { continue };
                if !mappings.contains_key(&client) {
                    if mappings.len() >= MAX_MAPPINGS
                        && let Some(oldest) = mappings.iter().min_by_key(|(_, m)| m.born).map(|(a, _)| *a)
                        && let Some(evicted) = mappings.remove(&oldest)
                    {
                        evicted.reader.abort();
                    }
                    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                    let socket = Arc::new(socket);
                    let reader = tasks.spawn(back_loop(
                        Arc::clone(&socket),
                        target,
                        client,
                        Arc::clone(&front),
                        Arc::clone(&shared),
                        Arc::clone(&down),
                    ));
                    born += 1;
                    mappings.insert(client, Mapping { socket, reader, born });
                }
                if let Some(m) = mappings.get(&client) {
                    up.offer(&shared, buf[..n].to_vec(), Arc::clone(&m.socket), target);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Reads one mapping's socket: what the server sends goes down to that mapping's client.
async fn back_loop(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    client: SocketAddr,
    front: Arc<UdpSocket>,
    shared: Arc<Shared>,
    down: Arc<Line>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        if from == target {
            down.offer(&shared, buf[..n].to_vec(), Arc::clone(&front), client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bound on any single wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    /// A UDP echo server on 127.0.0.1; stops when the returned set is dropped.
    async fn echo() -> (SocketAddr, JoinSet<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        (addr, tasks)
    }

    /// A UDP sink that records the first byte pair (a sequence number) of what it receives.
    async fn sink() -> (SocketAddr, Arc<Mutex<Vec<u16>>>, JoinSet<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                if n >= 2 {
                    record.lock().unwrap().push(u16::from_be_bytes([buf[0], buf[1]]));
                }
            }
        });
        (addr, seen, tasks)
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Receives one datagram, or `None` after `limit`.
    async fn recv_within(socket: &UdpSocket, limit: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        match tokio::time::timeout(limit, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Waits (bounded) until the relay's counters satisfy `done`.
    async fn wait_stats(relay: &Relay, done: impl Fn(&RelayStats) -> bool) -> RelayStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = relay.stats();
            if done(&s) || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn relay_forwards_everything_in_order_at_zero_loss() {
        let (server, _echo) = echo().await;
        let relay = Relay::start(server, 1).await.unwrap();
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();
        for i in 0..200u16 {
            c.send(&i.to_be_bytes()).await.unwrap();
        }
        for i in 0..200u16 {
            let got = recv_within(&c, WAIT).await.expect("every datagram comes back");
            assert_eq!(got, i.to_be_bytes(), "datagrams come back in the order sent");
        }
        // The relay counts a delivery after its send returns: the echo may be here first.
        let s = wait_stats(&relay, |s| s.forwarded_down == 200).await;
        assert_eq!((s.forwarded_up, s.forwarded_down, s.dropped()), (200, 200, 0), "{s:?}");
        assert_eq!((s.bytes_up, s.bytes_down), (400, 400));
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn relay_drops_everything_at_full_loss_and_during_an_outage() {
        let (server, _echo) = echo().await;
        let relay = Relay::start(server, 2).await.unwrap();
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();

        relay.control().set_loss(1.0);
        for _ in 0..50 {
            c.send(b"lost").await.unwrap();
        }
        assert_eq!(recv_within(&c, Duration::from_millis(300)).await, None);
        let s = wait_stats(&relay, |s| s.dropped_loss == 50).await;
        assert_eq!((s.dropped_loss, s.forwarded_up), (50, 0), "{s:?}");

        relay.control().set_loss(0.0);
        relay.control().set_outage(true);
        for _ in 0..50 {
            c.send(b"cut").await.unwrap();
        }
        assert_eq!(recv_within(&c, Duration::from_millis(300)).await, None);
        let s = wait_stats(&relay, |s| s.dropped_outage == 50).await;
        assert_eq!((s.dropped_outage, s.forwarded_up), (50, 0), "{s:?}");

        // The link comes back: the next datagram goes through both ways.
        relay.control().set_outage(false);
        c.send(b"back").await.unwrap();
        assert_eq!(recv_within(&c, WAIT).await.as_deref(), Some(&b"back"[..]));
    }

    #[tokio::test]
    async fn relay_outage_drops_datagrams_already_on_the_line() {
        let (server, _echo) = echo().await;
        let relay = Relay::start(server, 3).await.unwrap();
        relay.control().set_delay(Duration::from_millis(300));
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();
        c.send(b"in flight").await.unwrap();
        let s = wait_stats(&relay, |s| s.queued == 1).await;
        assert_eq!(s.queued, 1, "the datagram is on the line: {s:?}");
        relay.control().set_outage(true);
        let s = wait_stats(&relay, |s| s.dropped_outage == 1).await;
        assert_eq!((s.dropped_outage, s.forwarded_up), (1, 0), "{s:?}");
    }

    #[tokio::test]
    async fn relay_delays_each_way_without_reordering() {
        let (server, _echo) = echo().await;
        let relay = Relay::start(server, 4).await.unwrap();
        let delay = Duration::from_millis(150);
        relay.control().set_delay(delay);
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();
        let started = Instant::now();
        c.send(&0u16.to_be_bytes()).await.unwrap();
        // Lower the delay once the first datagram is on the line: the later ones may not
        // overtake it.
        wait_stats(&relay, |s| s.queued == 1).await;
        relay.control().set_delay(Duration::ZERO);
        for i in 1..20u16 {
            c.send(&i.to_be_bytes()).await.unwrap();
        }
        for i in 0..20u16 {
            let got = recv_within(&c, WAIT).await.expect("every datagram comes back");
            assert_eq!(got, i.to_be_bytes(), "no datagram overtakes an earlier one");
            if i == 0 {
                // Only a lower bound: a loaded machine may add time, never remove it.
                assert!(started.elapsed() >= delay, "the first datagram came back after {:?}", started.elapsed());
            }
        }
        // A round trip at 150 ms each way takes at least 300 ms.
        relay.control().set_delay(delay);
        let started = Instant::now();
        c.send(b"ping").await.unwrap();
        assert_eq!(recv_within(&c, WAIT).await.as_deref(), Some(&b"ping"[..]));
        assert!(started.elapsed() >= 2 * delay, "round trip took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn relay_rate_limit_spaces_datagrams_and_drops_past_the_queue() {
        let (server, seen, _sink) = sink().await;
        let relay = Relay::start(server, 5).await.unwrap();
        // 10 KB/s and room for 5 KB in the queue: of 20 datagrams of 1,000 bytes sent at once,
        // about 5 wait and the rest are dropped.
        relay.control().set(LinkSettings {
            rate_bytes_per_sec: Some(10_000),
            queue_bytes: 5_000,
            ..LinkSettings::default()
        });
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();
        let started = Instant::now();
        for i in 0..20u16 {
            let mut d = vec![0u8; 1000];
            d[..2].copy_from_slice(&i.to_be_bytes());
            c.send(&d).await.unwrap();
        }
        let s = wait_stats(&relay, |s| s.forwarded_up + s.dropped_queue == 20).await;
        assert_eq!(s.forwarded_up + s.dropped_queue, 20, "{s:?}");
        assert!((4..=6).contains(&s.forwarded_up), "{s:?}");
        // The last one delivered left the queue no sooner than its serialisation allows.
        let min = Duration::from_millis(100 * (s.forwarded_up - 1));
        assert!(started.elapsed() >= min, "{:?} < {min:?}", started.elapsed());
        let seen = seen.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    }

    /// Sends `n` numbered datagrams one by one through a relay with `seed` at 50% loss and
    /// returns the numbers that arrived.
    async fn survivors(seed: u64, n: u16) -> Vec<u16> {
        let (server, seen, _sink) = sink().await;
        let relay = Relay::start(server, seed).await.unwrap();
        relay.control().set_loss(0.5);
        let c = client().await;
        c.connect(relay.addr()).await.unwrap();
        for i in 0..n {
            c.send(&i.to_be_bytes()).await.unwrap();
        }
        wait_stats(&relay, |s| s.forwarded_up + s.dropped_loss == u64::from(n)).await;
        // The last delivery may still be between the relay and the sink.
        let deadline = Instant::now() + WAIT;
        while seen.lock().unwrap().len() as u64 != relay.stats().forwarded_up && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn relay_loss_is_deterministic_for_a_seed() {
        let a = survivors(42, 400).await;
        let b = survivors(42, 400).await;
        let c = survivors(43, 400).await;
        assert_eq!(a, b, "the same seed loses the same datagrams");
        assert_ne!(a, c, "another seed loses others");
        assert!((120..=280).contains(&a.len()), "about half survive: {}", a.len());
    }

    #[tokio::test]
    async fn relay_gives_each_client_address_its_own_mapping() {
        let (server, _echo) = echo().await;
        let relay = Relay::start(server, 6).await.unwrap();
        let first = client().await;
        let second = client().await;
        first.connect(relay.addr()).await.unwrap();
        second.connect(relay.addr()).await.unwrap();
        first.send(b"one").await.unwrap();
        second.send(b"two").await.unwrap();
        assert_eq!(recv_within(&first, WAIT).await.as_deref(), Some(&b"one"[..]));
        assert_eq!(recv_within(&second, WAIT).await.as_deref(), Some(&b"two"[..]));
    }
}
