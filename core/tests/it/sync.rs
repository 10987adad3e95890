//! The sync session between real ledgers, in memory: frames are moved by
//! hand, so every interleaving is under the test's control.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fq_core::case::{AdminCode, Role};
use fq_core::clock::{Clock, ManualClock, Timestamp};
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::store::ListFilter;
use fq_core::sync::session::{Credentials, Event, Session, SessionConfig, Side};
use fq_core::trust::{Grant, GrantRole, SignedGrant};

use crate::ledger::{T0, new_case};
use fq_core::case::CaseId;
use fq_core::ledger::{IncomingChange, PeerInfo};
use fq_core::trust::{Provenance, sign_change, sign_run};

const COUNTY: &str = "532924";

pub struct Node {
    pub ledger: Ledger,
    pub key: SigningKey,
    pub grant: SignedGrant,
}

pub fn ca() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub fn node(clock: &ManualClock, seed: u8, subject: &str, role: GrantRole, scope: &str) -> Node {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let grant = SignedGrant::issue(
        Grant {
            county: AdminCode::parse(COUNTY).unwrap(),
            subject: subject.into(),
            role,
            scope: AdminCode::parse(scope).unwrap(),
            serial: [seed; 16],
            public_key: key.verifying_key().to_bytes(),
            issued_at: T0.0,
        },
        &ca(),
    )
    .unwrap();
    let (tier, person) = match role {
        GrantRole::TownshipServer => (Tier::Township, Role::TownshipOfficer),
        GrantRole::CountyServer => (Tier::County, Role::CountyAdmin),
        r => (Tier::Device, r.person_role().unwrap()),
    };
    let init =
        InitOptions { tier, name: subject.into(), role: person, scope: AdminCode::parse(scope).unwrap(), grid: None };
    let mut ledger = Ledger::init_in_memory(init, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
    ledger.add_grant(&grant).unwrap();
    Node { ledger, key, grant }
}

pub fn creds(n: &Node, peer_limit: Option<&str>) -> Credentials {
    Credentials {
        ca: ca().verifying_key(),
        own: Some((n.grant.clone(), n.key.clone())),
        peer_scope_limit: peer_limit.map(|s| AdminCode::parse(s).unwrap()),
    }
}

/// Opens a session between `child` and `parent`, the child naming the parent it last synced
/// with; nothing is exchanged yet.
pub fn open(child: &Node, parent: &Node, now: Timestamp) -> (Session, Session) {
    let child_scope = child.ledger.identity().scope.to_string();
    let upstream = child.ledger.upstream().unwrap();
    let c =
        Session::new(Side::Child, &child.ledger, creds(child, None), SessionConfig::default(), upstream, now).unwrap();
    let p = Session::new(
        Side::Parent,
        &parent.ledger,
        creds(parent, Some(&child_scope)),
        SessionConfig::default(),
        None,
        now,
    )
    .unwrap();
    (c, p)
}

/// Runs one session between `child` and `parent` until both are caught up.
/// Returns the two sessions for inspection.
pub fn sync(child: &mut Node, parent: &mut Node, now: Timestamp) -> (Session, Session) {
    let (mut c, mut p) = open(child, parent, now);
    drive(&mut c, child, &mut p, parent, now);
    (c, p)
}

/// Moves frames between two open sessions until neither has more to say;
/// both must then be caught up.
pub fn drive(c: &mut Session, child: &mut Node, p: &mut Session, parent: &mut Node, now: Timestamp) {
    for _ in 0..10_000 {
        let mut moved = false;
        while let Some(f) = c.poll_transmit() {
            moved = true;
            p.handle_input(&mut parent.ledger, &f, now).unwrap();
        }
        while let Some(f) = p.poll_transmit() {
            moved = true;
            c.handle_input(&mut child.ledger, &f, now).unwrap();
        }
        if !moved {
            break;
        }
    }
    assert!(c.is_caught_up() && p.is_caught_up(), "sessions did not converge");
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn rows(l: &Ledger) -> Vec<fq_core::store::CaseRow> {
    let mut r = l.list(&ListFilter::default()).unwrap();
    r.sort_by_key(|r| r.id);
    r
}

#[test]
fn sync_three_tiers_converge_within_scope() {
    let clock = ManualClock::new(T0);
    let mut county = node(&clock, 1, "county", GrantRole::CountyServer, COUNTY);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev_a = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut dev_b = node(&clock, 4, "dev-b", GrantRole::GridWorker, "532924101202");
    let mut admin = node(&clock, 5, "admin", GrantRole::CountyAdmin, COUNTY);
    let a = dev_a.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let mut other = new_case("山林界址纠纷");
    other.village = Some(AdminCode::parse("532924101202").unwrap());
    dev_b.ledger.create_case(other).unwrap();
    dev_a.ledger.escalate(a.id, "需乡镇协调").unwrap();
    sync(&mut dev_a, &mut town, clock.now());
    sync(&mut dev_b, &mut town, clock.now());
    assert_eq!(rows(&town.ledger).len(), 2);
    sync(&mut town, &mut county, clock.now());
    assert_eq!(rows(&county.ledger), rows(&town.ledger));
    // A county admin's decision reaches the village through both tiers.
    sync(&mut admin, &mut county, clock.now());
    admin.ledger.add_note(a.id, "县级意见：依法依规处理").unwrap();
    sync(&mut admin, &mut county, clock.now());
    sync(&mut town, &mut county, clock.now());
    let (_, mut p) = sync(&mut dev_a, &mut town, clock.now());
    assert!(events(&mut p).iter().any(|e| matches!(e, Event::Acked { .. })));
    let note = dev_a.ledger.show(a.id, false).unwrap();
    assert!(note.state.events.iter().any(|e| e.text.as_deref() == Some("县级意见：依法依规处理")));
    // Each replica holds exactly its scope, identical to the others.
    assert_eq!(rows(&dev_a.ledger).len(), 1, "a village device gets only its village");
    assert_eq!(dev_a.ledger.heads(a.id).unwrap(), county.ledger.heads(a.id).unwrap());
    let scope = AdminCode::parse("532924101201").unwrap();
    assert_eq!(dev_a.ledger.digest(&scope).unwrap(), county.ledger.digest(&scope).unwrap());
    assert_eq!(town.ledger.digest(&scope).unwrap(), county.ledger.digest(&scope).unwrap());
}

#[test]
fn sync_refuses_changes_outside_the_authors_scope_and_audits_them() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    // A device whose grant covers village 201 but whose ledger (tampered)
    // records a case in village 202.
    let mut rogue = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut honest = node(&clock, 9, "dev-x", GrantRole::Mediator, "532924101202");
    let mut elsewhere = new_case("越界案件");
    elsewhere.village = Some(AdminCode::parse("532924101202").unwrap());
    let c = honest.ledger.create_case(elsewhere).unwrap();
    let bytes = honest.ledger.changes_since(0, 10).unwrap();
    rogue.ledger.apply_changes(None, bytes.into_iter().map(Into::into).collect()).unwrap();
    let (mut child, _) = sync(&mut rogue, &mut town, clock.now());
    let refused: Vec<_> = events(&mut child)
        .into_iter()
        .flat_map(|e| match e {
            Event::Acked { refused, .. } => refused,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].reason, fq_core::sync::wire::RefuseReason::OutOfScope);
    assert_eq!(child.stats().refused_by_peer, 1);
    assert!(town.ledger.resolve(&c.id.to_string()).is_err());
    assert!(town.ledger.audit(10).unwrap().iter().any(|a| a.kind == "refused"));
}

#[test]
fn sync_resent_batch_after_lost_ack_changes_nothing() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let c = dev.ledger.create_case(new_case("债务纠纷")).unwrap();
    dev.ledger.add_note(c.id, "一").unwrap();
    let now = clock.now();
    let child_creds = creds(&dev, None);
    let mut child = Session::new(Side::Child, &dev.ledger, child_creds, SessionConfig::default(), None, now).unwrap();
    let mut parent = Session::new(
        Side::Parent,
        &town.ledger,
        creds(&town, Some("532924101201")),
        SessionConfig::default(),
        None,
        now,
    )
    .unwrap();
    // Hellos cross; then the grant and the push reach the parent, and its
    // acknowledgement is lost.
    let hello = child.poll_transmit().unwrap();
    parent.handle_input(&mut town.ledger, &hello, now).unwrap();
    for f in std::iter::from_fn(|| parent.poll_transmit()).collect::<Vec<_>>() {
        child.handle_input(&mut dev.ledger, &f, now).unwrap();
    }
    let mut frames = vec![hello];
    frames.extend(std::iter::from_fn(|| child.poll_transmit()));
    assert!(frames.len() >= 3, "hello, grant, push");
    for f in &frames[1..] {
        parent.handle_input(&mut town.ledger, f, now).unwrap();
    }
    while parent.poll_transmit().is_some() {}
    let before = (town.ledger.counts().unwrap(), town.ledger.heads(c.id).unwrap());
    // The child resends the same push (same batch) on a new session.
    let mut again = Session::new(
        Side::Parent,
        &town.ledger,
        creds(&town, Some("532924101201")),
        SessionConfig::default(),
        None,
        now,
    )
    .unwrap();
    for f in &frames {
        again.handle_input(&mut town.ledger, f, now).unwrap();
    }
    let received: Vec<Event> = events(&mut again).into_iter().filter(|e| matches!(e, Event::Received { .. })).collect();
    assert_eq!(received, vec![Event::Received { applied: 0, duplicates: 2, pending: 0, refused: 0 }]);
    assert_eq!((town.ledger.counts().unwrap(), town.ledger.heads(c.id).unwrap()), before);
}

#[test]
fn sync_recovers_by_digest_after_a_server_restore() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    // The township keeps its ledger on disk so it can be backed up and restored.
    let path = dir.path().join("town.db");
    let init = InitOptions {
        tier: Tier::Township,
        name: "binju".into(),
        role: Role::TownshipOfficer,
        scope: AdminCode::parse("532924101").unwrap(),
        grid: None,
    };
    town.ledger = Ledger::init(&path, init, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
    town.ledger.add_grant(&town.grant.clone()).unwrap();
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut officer = node(&clock, 6, "officer", GrantRole::TownshipOfficer, "532924101");
    let first = dev.ledger.create_case(new_case("第一件")).unwrap();
    sync(&mut dev, &mut town, clock.now());
    // Back up the township.
    let reopen = |town: &mut Node| {
        let l = Ledger::open(&path, Arc::new(clock.clone()), LedgerOptions::default()).unwrap();
        town.ledger = l;
    };
    town.ledger = Ledger::init_in_memory(
        InitOptions {
            tier: Tier::Township,
            name: "x".into(),
            role: Role::TownshipOfficer,
            scope: AdminCode::parse("532924101").unwrap(),
            grid: None,
        },
        Arc::new(clock.clone()),
        LedgerOptions::default(),
    )
    .unwrap();
    let backup = dir.path().join("backup.db");
    std::fs::copy(&path, &backup).unwrap();
    reopen(&mut town);
    // More work flows through the township after the backup.
    let second = dev.ledger.create_case(new_case("第二件")).unwrap();
    sync(&mut dev, &mut town, clock.now());
    sync(&mut officer, &mut town, clock.now());
    officer.ledger.add_note(first.id, "乡镇意见").unwrap();
    sync(&mut officer, &mut town, clock.now());
    sync(&mut dev, &mut town, clock.now());
    assert!(dev.ledger.show(first.id, false).unwrap().state.events.len() == 2);
    // The township's disk dies; it is restored from the backup. Its log is
    // now shorter than what the device and the officer hold of it.
    drop(std::mem::replace(
        &mut town.ledger,
        Ledger::init_in_memory(
            InitOptions {
                tier: Tier::Township,
                name: "y".into(),
                role: Role::TownshipOfficer,
                scope: AdminCode::parse("532924101").unwrap(),
                grid: None,
            },
            Arc::new(clock.clone()),
            LedgerOptions::default(),
        )
        .unwrap(),
    ));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    std::fs::copy(&backup, &path).unwrap();
    reopen(&mut town);
    assert!(town.ledger.resolve(&second.id.to_string()).is_err(), "the restore lost the second case");
    let (_, mut parent) = sync(&mut dev, &mut town, clock.now());
    sync(&mut officer, &mut town, clock.now());
    // The device held more of the township's log than the township has: the
    // township noticed and recovered by digest.
    assert!(std::iter::from_fn(|| parent.poll_event()).any(|e| matches!(e, Event::Recovered { .. })));
    let scope = AdminCode::parse("532924101201").unwrap();
    assert_eq!(town.ledger.digest(&scope).unwrap(), dev.ledger.digest(&scope).unwrap());
    assert_eq!(town.ledger.digest(&scope).unwrap().len(), 2);
    assert_eq!(town.ledger.heads(first.id).unwrap(), officer.ledger.heads(first.id).unwrap());
    // And new work after the restore still flows.
    dev.ledger.add_note(second.id, "恢复后").unwrap();
    sync(&mut dev, &mut town, clock.now());
    sync(&mut officer, &mut town, clock.now());
    assert_eq!(officer.ledger.heads(second.id).unwrap(), dev.ledger.heads(second.id).unwrap());
}

#[test]
fn sync_ends_the_session_on_garbage_and_keeps_the_ledger() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let before = town.ledger.counts().unwrap();
    let mut p =
        Session::new(Side::Parent, &town.ledger, creds(&town, None), SessionConfig::default(), None, clock.now())
            .unwrap();
    let e = p.handle_input(&mut town.ledger, &[0, 0, 0, 5, 1, 99, 0, 0, 0], clock.now()).unwrap_err();
    assert!(e.to_string().contains("frame"), "{e}");
    assert!(p.is_closed());
    let reply = p.poll_transmit().expect("an error frame");
    let mut d = fq_core::sync::wire::FrameDecoder::new();
    d.push(&reply).unwrap();
    assert!(matches!(d.next().unwrap(), Some(fq_core::sync::wire::Message::Error { .. })));
    // An oversize length prefix is refused before the body arrives.
    let mut p =
        Session::new(Side::Parent, &town.ledger, creds(&town, None), SessionConfig::default(), None, clock.now())
            .unwrap();
    assert!(p.handle_input(&mut town.ledger, &[0xff, 0xff, 0xff, 0xff], clock.now()).is_err());
    assert_eq!(town.ledger.counts().unwrap(), before);
}

#[test]
fn sync_watchdog_ends_a_session_whose_push_is_never_acked() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    dev.ledger.create_case(new_case("债务纠纷")).unwrap();
    let now = clock.now();
    let mut child =
        Session::new(Side::Child, &dev.ledger, creds(&dev, None), SessionConfig::default(), None, now).unwrap();
    let mut parent =
        Session::new(Side::Parent, &town.ledger, creds(&town, None), SessionConfig::default(), None, now).unwrap();
    // Only the hello exchange gets through; the push and everything after is lost.
    let hello = child.poll_transmit().unwrap();
    parent.handle_input(&mut town.ledger, &hello, now).unwrap();
    let replies: Vec<_> = std::iter::from_fn(|| parent.poll_transmit()).collect();
    for r in &replies {
        child.handle_input(&mut dev.ledger, r, now).unwrap();
    }
    let deadline = child.poll_timeout().expect("a push is in flight");
    assert!(child.handle_timeout(Timestamp(deadline.0 - 1)).is_ok());
    assert!(child.handle_timeout(deadline).is_err());
    assert!(child.is_closed());
}

/// One direction of a slow link: frames cross one after another at `rate`
/// bytes a second, then take `latency_ms` more.
struct SlowLink {
    rate: i64,
    latency_ms: i64,
    free_at: i64,
    queue: std::collections::VecDeque<(i64, Vec<u8>)>,
}

impl SlowLink {
    fn new(rate: i64, latency_ms: i64) -> Self {
        SlowLink { rate, latency_ms, free_at: 0, queue: Default::default() }
    }

    fn send(&mut self, now: i64, frame: Vec<u8>) {
        let start = self.free_at.max(now);
        self.free_at = start + i64::try_from(frame.len()).unwrap() * 1000 / self.rate;
        self.queue.push_back((self.free_at + self.latency_ms, frame));
    }

    fn next_arrival(&self) -> Option<i64> {
        self.queue.front().map(|(at, _)| *at)
    }
}

/// What happened to a backlog sent over a [`SlowLink`] both ways.
struct SlowSync {
    caught_up_after_ms: Option<i64>,
    timed_out: Option<String>,
    largest_push: usize,
}

/// A device with `notes` notes behind a link of `rate` bytes a second syncs
/// with a township, in virtual time, until both are caught up or a watchdog
/// ends the session.
fn sync_over_slow_link(notes: usize, rate: i64, cfg: SessionConfig) -> SlowSync {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let case = dev.ledger.create_case(new_case("宅基地边界纠纷")).unwrap().id;
    // Words that differ from note to note (a pseudo-random draw of CJK characters): version 2
    // compresses a push whole, and 200 copies of one sentence would cross in no time.
    let mut seed: u32 = 0x2545_f491;
    for i in 0..notes {
        let words: String = (0..48)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                char::from_u32(0x4e00 + (seed >> 16) % 0x5000).unwrap_or('调')
            })
            .collect();
        dev.ledger.add_note(case, &format!("第{i}次走访：{words}")).unwrap();
    }
    let start = T0.0;
    let mut child = Session::new(Side::Child, &dev.ledger, creds(&dev, None), cfg.clone(), None, T0).unwrap();
    let mut parent = Session::new(Side::Parent, &town.ledger, creds(&town, None), cfg, None, T0).unwrap();
    let (mut up, mut down) = (SlowLink::new(rate, 300), SlowLink::new(rate, 300));
    let mut now = start;
    let mut largest_push = 0;
    for _ in 0..100_000 {
        while let Some(f) = child.poll_transmit() {
            largest_push = largest_push.max(f.len());
            up.send(now, f);
        }
        while let Some(f) = parent.poll_transmit() {
            down.send(now, f);
        }
        if child.is_caught_up() && parent.is_caught_up() {
            return SlowSync { caught_up_after_ms: Some(now - start), timed_out: None, largest_push };
        }
        let timers = [child.poll_timeout(), parent.poll_timeout()].into_iter().flatten().map(|t| t.0);
        let arrivals = [up.next_arrival(), down.next_arrival()].into_iter().flatten();
        let Some(next) = timers.chain(arrivals).min() else { break };
        now = next.max(now);
        let at = Timestamp(now);
        for (session, ledger) in [(&mut child, &mut dev.ledger), (&mut parent, &mut town.ledger)] {
            if let Err(e) = session.handle_timeout(at) {
                return SlowSync { caught_up_after_ms: None, timed_out: Some(e.to_string()), largest_push };
            }
            let _ = ledger;
        }
        while up.next_arrival().is_some_and(|t| t <= now) {
            let (_, f) = up.queue.pop_front().unwrap();
            parent.handle_input(&mut town.ledger, &f, at).unwrap();
        }
        while down.next_arrival().is_some_and(|t| t <= now) {
            let (_, f) = down.queue.pop_front().unwrap();
            child.handle_input(&mut dev.ledger, &f, at).unwrap();
        }
    }
    SlowSync { caught_up_after_ms: None, timed_out: None, largest_push }
}

/// A mediator back from two weeks without signal, on GPRS in a weak cell
/// (2 KB/s, 300 ms each way): the backlog takes about a minute to cross.
/// Pushes start small and follow the link, and the watchdog allows for a
/// push's bytes at the slowest rate, so the session never times out. Sized
/// as before (one push up to 512 KiB, 20 s to ack it) the same sync trips the
/// watchdog and, resent, would trip it forever.
#[test]
fn sync_a_backlog_crosses_a_gprs_link_without_tripping_the_watchdog() {
    let rate = 2_000;
    let done = sync_over_slow_link(400, rate, SessionConfig::default());
    assert_eq!(done.timed_out, None, "the watchdog ended the session");
    let took = done.caught_up_after_ms.expect("the sessions did not catch up");
    eprintln!("caught up after {took} ms of virtual time; largest push {} B", done.largest_push);
    assert!(took > 30_000, "the backlog should take tens of seconds at {rate} B/s, took {took} ms");
    assert!(
        done.largest_push <= 2 * SessionConfig::default().first_batch_bytes,
        "a push of {} bytes on a link that never allowed more than the first size",
        done.largest_push
    );

    let unadapted = SessionConfig {
        first_batch_bytes: SessionConfig::default().max_batch_bytes,
        slowest_link_bytes_per_sec: u32::MAX,
        ..SessionConfig::default()
    };
    let old = sync_over_slow_link(400, rate, unadapted);
    assert!(old.timed_out.is_some(), "one big push should have tripped the 20 s watchdog");
}

/// A server commits the work of many sessions as one group: each operation
/// stays atomic (a failed one leaves nothing), nothing is visible or durable
/// before the group commits, and a rolled-back group leaves nothing either,
/// not even in the writer's cached documents.
#[test]
fn group_commit_keeps_operations_atomic_and_shows_nothing_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::new(T0);
    let c: Arc<ManualClock> = Arc::new(clock.clone());
    let init = crate::ledger::init(Role::Mediator, "532924101201", "张三", &clock);
    let mut l = Ledger::init(&path, init, c.clone(), LedgerOptions::default()).unwrap();
    let first = l.create_case(new_case("第一件")).unwrap();
    let reader = Ledger::open_read_only(&path, c.clone()).unwrap();
    let notes = |r: &mut Ledger| r.show(first.id, true).unwrap().history.unwrap().len();
    let mut reader = reader;
    assert_eq!(notes(&mut reader), 1);

    l.begin_group().unwrap();
    let second = l.create_case(new_case("第二件")).unwrap();
    l.add_note(first.id, "组内的记录").unwrap();
    // A refused operation inside the group takes back only its own writes.
    assert!(l.accept_escalation(first.id).is_err());
    assert_eq!(l.list(&ListFilter::default()).unwrap().len(), 2, "the writer sees its own group");
    assert_eq!(reader.list(&ListFilter::default()).unwrap().len(), 1, "nothing shows before the commit");
    l.commit_group().unwrap();
    assert_eq!(reader.list(&ListFilter::default()).unwrap().len(), 2);
    // (A read-only ledger caches documents it has shown: a fresh one reads the note.)
    let mut fresh = Ledger::open_read_only(&path, c.clone()).unwrap();
    assert_eq!(notes(&mut fresh), 2);

    l.begin_group().unwrap();
    l.add_note(second.id, "会被撤回").unwrap();
    l.create_case(new_case("第三件")).unwrap();
    l.rollback_group().unwrap();
    assert_eq!(l.list(&ListFilter::default()).unwrap().len(), 2);
    assert_eq!(l.show(second.id, true).unwrap().history.unwrap().len(), 1, "the cached document forgot the note");
    drop(l);
    let mut l = Ledger::open(&path, c, LedgerOptions::default()).unwrap();
    assert_eq!(l.list(&ListFilter::default()).unwrap().len(), 2);
    assert_eq!(l.show(second.id, true).unwrap().history.unwrap().len(), 1);
    l.integrity_check().unwrap();
}

/// The load generator's device (two cases, then eighteen one-field edits and
/// notes) made through the ledger API, as `sync-server/benches/loadgen.rs`
/// makes it.
fn loadgen_device(dev: &mut Node, edits: usize) {
    use fq_core::case::{Category, Risk};
    use fq_core::doc::FieldEdit;
    use fq_core::ledger::NewCase;
    let cases = edits.div_ceil(10).max(1).min(edits);
    let mut ids = Vec::new();
    for c in 0..cases {
        let case = dev
            .ledger
            .create_case(NewCase {
                category: Category::Neighbor,
                title: format!("宅基地滴水纠纷 {c}"),
                description: "两户因房屋滴水檐位置发生争执，经网格员上报。".into(),
                parties: Vec::new(),
                risk: Risk::Low,
                flags: Vec::new(),
                village: None,
                grid: None,
            })
            .unwrap();
        ids.push(case.id);
    }
    let mut risks = vec![Risk::Low; ids.len()];
    for e in 0..edits - cases {
        let c = e % ids.len();
        match e % 3 {
            0 => dev
                .ledger
                .edit(ids[c], FieldEdit { title: Some(format!("宅基地滴水纠纷（第{e}稿）")), ..FieldEdit::default() }),
            1 => dev.ledger.add_note(ids[c], "第二次调解：双方到场，初步达成意向"),
            _ => {
                risks[c] = if risks[c] == Risk::Low { Risk::Medium } else { Risk::Low };
                dev.ledger.edit(ids[c], FieldEdit { risk: Some(risks[c]), ..FieldEdit::default() })
            }
        }
        .unwrap();
    }
}

/// Issue 12's budget: a device's 20 edits (2 cases, 18 edits) cross in at most
/// 160 bytes of sync frames per edit, both ways, every change still signed
/// (one run signature per case) and checked by the township.
#[test]
fn sync_of_twenty_edits_costs_under_160_bytes_per_edit() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    loadgen_device(&mut dev, 20);
    let (c, _) = sync(&mut dev, &mut town, clock.now());
    let stats = c.stats();
    assert_eq!(stats.sent, 20);
    let per_edit = (stats.bytes_out + stats.bytes_in) as f64 / 20.0;
    eprintln!("20 edits: {} B up, {} B down, {per_edit:.0} B per edit", stats.bytes_out, stats.bytes_in);
    assert!(per_edit <= 160.0, "{per_edit:.0} B per edit");
    assert_eq!(town.ledger.counts().unwrap()[1], 20, "the township holds every change");

    // One more edit to an existing case, the whole session counted.
    let case = rows(&dev.ledger)[0].id;
    dev.ledger.add_note(case, "第三次调解：双方签字").unwrap();
    let (c, _) = sync(&mut dev, &mut town, clock.now());
    let one = c.stats().bytes_out + c.stats().bytes_in;
    eprintln!("one edit, whole session: {} B up, {} B down = {one} B", c.stats().bytes_out, c.stats().bytes_in);
    assert_eq!(c.stats().sent, 1);
}

/// Issue 12: over a link that breaks every 5 s (64 kbit/s, 300 ms each way),
/// a high-risk case recorded last reaches the township in the first exchange
/// that completes, before ordinary cases recorded earlier. In virtual time:
/// each break ends the session, and the next one starts from the positions
/// saved at every ack.
#[test]
fn sync_sends_a_high_risk_case_first_over_a_link_that_breaks_every_five_seconds() {
    use fq_core::case::Risk;
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut seed: u32 = 7;
    let mut words = |n: usize| -> String {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                char::from_u32(0x4e00 + (seed >> 16) % 0x5000).unwrap_or('调')
            })
            .collect()
    };
    let mut ordinary = Vec::new();
    for i in 0..40 {
        let mut case = new_case(&format!("邻里纠纷{i}"));
        case.description = words(200);
        ordinary.push(dev.ledger.create_case(case).unwrap().id);
    }
    let mut urgent = new_case("扬言报复，民转刑风险");
    urgent.risk = Risk::High;
    let urgent = dev.ledger.create_case(urgent).unwrap().id;

    let rate = 8_000;
    let mut now = T0.0;
    let mut arrived: Vec<fq_core::case::CaseId> = Vec::new();
    let mut exchanges = 0;
    for _session in 0..40 {
        let broken_at = now + 5_000;
        let at = Timestamp(now);
        let upstream = dev.ledger.upstream().unwrap();
        let mut child =
            Session::new(Side::Child, &dev.ledger, creds(&dev, None), SessionConfig::default(), upstream, at).unwrap();
        let mut parent = Session::new(
            Side::Parent,
            &town.ledger,
            creds(&town, Some("532924101201")),
            SessionConfig::default(),
            None,
            at,
        )
        .unwrap();
        let (mut up, mut down) = (SlowLink::new(rate, 300), SlowLink::new(rate, 300));
        up.free_at = now;
        down.free_at = now;
        loop {
            while let Some(f) = child.poll_transmit() {
                up.send(now, f);
            }
            while let Some(f) = parent.poll_transmit() {
                down.send(now, f);
            }
            if child.is_caught_up() && parent.is_caught_up() {
                break;
            }
            let Some(next) = [up.next_arrival(), down.next_arrival()].into_iter().flatten().min() else { break };
            if next > broken_at {
                now = broken_at;
                break;
            }
            now = next.max(now);
            let at = Timestamp(now);
            while up.next_arrival().is_some_and(|t| t <= now) {
                let (_, f) = up.queue.pop_front().unwrap();
                parent.handle_input(&mut town.ledger, &f, at).unwrap();
                for e in std::iter::from_fn(|| parent.poll_event()) {
                    if matches!(e, Event::Received { applied, .. } if applied > 0) {
                        exchanges += 1;
                        for row in rows(&town.ledger) {
                            if !arrived.contains(&row.id) {
                                arrived.push(row.id);
                            }
                        }
                    }
                }
            }
            while down.next_arrival().is_some_and(|t| t <= now) {
                let (_, f) = down.queue.pop_front().unwrap();
                child.handle_input(&mut dev.ledger, &f, at).unwrap();
            }
        }
        if arrived.len() == 41 {
            break;
        }
        now += 1_000; // redial
    }
    assert_eq!(arrived.len(), 41, "every case reached the township");
    assert!(exchanges > 1, "the backlog took several exchanges");
    assert_eq!(arrived.first(), Some(&urgent), "the high-risk case came in the first completed exchange");
    let urgent_at = arrived.iter().position(|c| *c == urgent).unwrap();
    let first_ordinary = arrived.iter().position(|c| *c == ordinary[0]).unwrap();
    assert!(urgent_at < first_ordinary, "recorded last, it arrived before the cases recorded first");
}

/// Regression (simulator seeds 3655733423352523290 and 5209195425396659436):
/// an edit made while urgent changes still wait for room in flight re-reads
/// the urgent cases. Added to the queue instead of replacing it, that read
/// put the waiting changes in it twice; the next push carried both copies
/// in one run, the township refused the run's signature, and the log push
/// after it acknowledged a position past changes the township never held.
#[test]
fn sync_an_edit_while_urgent_changes_wait_sends_each_once_and_acks_only_what_is_held() {
    use fq_core::case::Risk;
    let clock = ManualClock::new(T0);
    let now = clock.now();
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let ordinary = dev.ledger.create_case(new_case("邻里纠纷")).unwrap().id;
    let mut urgent = new_case("扬言报复，民转刑风险");
    urgent.risk = Risk::High;
    let urgent = dev.ledger.create_case(urgent).unwrap().id;
    for i in 0..5 {
        dev.ledger.add_note(urgent, &format!("第{i}次走访：当事人情绪激动")).unwrap();
    }
    // One push in flight, each first push one change: the urgent queue waits.
    let cfg = SessionConfig { max_in_flight: 1, first_batch_bytes: 1, ..SessionConfig::default() };
    let mut c = Session::new(Side::Child, &dev.ledger, creds(&dev, None), cfg.clone(), None, now).unwrap();
    let mut p = Session::new(Side::Parent, &town.ledger, creds(&town, Some("532924101201")), cfg, None, now).unwrap();
    // Hellos both ways: the child's first urgent push is queued, unacknowledged.
    while let Some(f) = c.poll_transmit() {
        p.handle_input(&mut town.ledger, &f, now).unwrap();
    }
    while let Some(f) = p.poll_transmit() {
        c.handle_input(&mut dev.ledger, &f, now).unwrap();
    }
    // An edit while urgent changes wait: the session reads the urgent cases again.
    dev.ledger.add_note(ordinary, "双方同意再次调解").unwrap();
    c.notify_local_changes(&mut dev.ledger, now).unwrap();
    drive(&mut c, &mut dev, &mut p, &mut town, now);
    let town_id = town.ledger.identity().replica;
    let acked = dev.ledger.peer(town_id).unwrap().expect("the township acknowledged").acked_seq;
    let head = dev.ledger.log_head().unwrap();
    assert_eq!(acked, head, "the township acknowledged the whole log");
    for change in dev.ledger.changes_since(0, 1_000).unwrap() {
        assert!(
            town.ledger.holds_change(change.case, &change.hash).unwrap(),
            "change {} at {} acknowledged but not held by the township",
            change.hash.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>(),
            change.log_seq
        );
    }
    assert_eq!(c.stats().refused_by_peer, 0, "the township refused a change");
}

/// Device to device (ADR 43): a township officer's device and the mediator's of one of its
/// villages. Each gets only what lies in both scopes, and the dialing device does not take the
/// other device's clock for the time: only a parent server corrects it.
#[test]
fn sync_device_peer_sends_only_the_shared_scope_and_leaves_each_clock_alone() {
    let clock = ManualClock::new(T0);
    let mut officer = node(&clock, 6, "officer", GrantRole::TownshipOfficer, "532924101");
    let mut mediator = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut here = new_case("本村的纠纷");
    here.village = Some(AdminCode::parse("532924101201").unwrap());
    officer.ledger.create_case(here).unwrap();
    let mut next_door = new_case("邻村的纠纷");
    next_door.village = Some(AdminCode::parse("532924101202").unwrap());
    officer.ledger.create_case(next_door).unwrap();
    mediator.ledger.create_case(new_case("调解员记录的纠纷")).unwrap();
    let config = SessionConfig { device_peer: true, ..SessionConfig::default() };
    let mut c =
        Session::new(Side::Child, &mediator.ledger, creds(&mediator, Some("532924101")), config.clone(), None, T0)
            .unwrap();
    let mut p =
        Session::new(Side::Parent, &officer.ledger, creds(&officer, Some("532924101201")), config, None, T0).unwrap();
    // The officer's phone runs an hour ahead.
    let ahead = Timestamp(T0.0 + 3_600_000);
    for _ in 0..1_000 {
        let mut moved = false;
        while let Some(f) = c.poll_transmit() {
            moved = true;
            p.handle_input(&mut officer.ledger, &f, ahead).unwrap();
        }
        while let Some(f) = p.poll_transmit() {
            moved = true;
            c.handle_input(&mut mediator.ledger, &f, T0).unwrap();
        }
        if !moved {
            break;
        }
    }
    assert!(c.is_caught_up() && p.is_caught_up(), "sessions did not converge");
    let titles: Vec<String> = rows(&mediator.ledger).into_iter().map(|r| r.title).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(!titles.iter().any(|t| t == "邻村的纠纷"), "{titles:?}");
    assert_eq!(rows(&officer.ledger).len(), 3);
    assert_eq!(mediator.ledger.time_source(), fq_core::ledger::TimeSource::Local);
    assert!(events(&mut c).iter().any(|e| matches!(e, Event::PeerClock { .. })));
}

#[test]
fn sync_tells_a_new_device_how_many_changes_are_coming() {
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut grid = node(&clock, 3, "dev-a", GrantRole::GridWorker, "532924101201");
    let mut elsewhere = node(&clock, 5, "dev-c", GrantRole::GridWorker, "532924101202");
    for i in 0..4 {
        grid.ledger.create_case(new_case(&format!("本村纠纷{i}"))).unwrap();
    }
    elsewhere.ledger.create_case(new_case("邻村纠纷")).unwrap();
    sync(&mut grid, &mut town, clock.now());
    sync(&mut elsewhere, &mut town, clock.now());
    // A new phone of the first village: the township counts what lies in its village only.
    let mut fresh = node(&clock, 4, "dev-b", GrantRole::Mediator, "532924101201");
    let (c, _) = sync(&mut fresh, &mut town, clock.now());
    assert_eq!(c.stats().to_receive, 4, "the township's count of what the new phone lacks");
    assert_eq!(c.stats().received, 4);
    // Once caught up, nothing more is coming.
    let (again, _) = sync(&mut fresh, &mut town, clock.now());
    assert_eq!(again.stats().to_receive, 0);
}

/// Hands every frame `from` has queued to `to`; returns how many there were.
fn deliver(from: &mut Session, to: &mut Session, ledger: &mut Ledger, now: Timestamp) -> usize {
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| from.poll_transmit()).collect();
    for f in &frames {
        to.handle_input(ledger, f, now).unwrap();
    }
    frames.len()
}

/// ADR 46: a device's Done goes right behind its pushes, so after one exchange (its hello, the
/// township's answer) it has nothing more to send and may finish its stream; the township is
/// caught up on reading the pushes and the Done, and the device once the acks come. When the
/// township has changes for the device, the device acknowledges them before it finishes.
#[test]
fn sync_a_device_has_nothing_more_to_send_after_one_exchange() {
    let clock = ManualClock::new(T0);
    let now = clock.now();
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    loadgen_device(&mut dev, 20);
    let (mut c, mut p) = open(&dev, &town, now);
    deliver(&mut c, &mut p, &mut town.ledger, now); // hello
    deliver(&mut p, &mut c, &mut dev.ledger, now); // hello, grant, outlook, done
    assert!(c.is_finished_sending(), "the pushes and the Done are queued: nothing more will be needed");
    assert!(!c.is_caught_up(), "not one push is acknowledged yet");
    deliver(&mut c, &mut p, &mut town.ledger, now);
    assert!(p.is_caught_up(), "the township holds everything the device had, and knows it");
    assert_eq!(town.ledger.counts().unwrap()[1], 20);
    deliver(&mut p, &mut c, &mut dev.ledger, now); // policy, acks
    assert!(c.is_caught_up());
    assert_eq!(c.stats().sent, 20);
    assert!(c.poll_transmit().is_none(), "the device owes nothing");

    // Another device's case for this one: its acks are queued before it may finish.
    let mut other = node(&clock, 4, "dev-b", GrantRole::GridWorker, "532924101201");
    other.ledger.create_case(new_case("邻里纠纷")).unwrap();
    sync(&mut other, &mut town, now);
    let (mut c, mut p) = open(&dev, &town, now);
    deliver(&mut c, &mut p, &mut town.ledger, now);
    deliver(&mut p, &mut c, &mut dev.ledger, now); // hello, grant, the push, done
    assert_eq!(c.stats().received, 1);
    assert!(c.is_finished_sending());
    assert!(deliver(&mut c, &mut p, &mut town.ledger, now) > 0, "the ack goes before the stream ends");
    assert!(p.is_caught_up(), "the township's push is acknowledged");
}

/// `part`, one author's consecutive changes to `case`, as a run signed by `author`: its
/// members, then its head (a run of one: a change signature).
fn signed_run(author: &Node, case: CaseId, part: &[fq_core::ledger::OutgoingChange]) -> Vec<IncomingChange> {
    let hashes: Vec<[u8; 32]> = part.iter().map(|c| c.hash).collect();
    let head = *hashes.last().unwrap();
    let mut others = hashes[..hashes.len() - 1].to_vec();
    others.sort_unstable();
    let head_provenance = if others.is_empty() {
        Provenance::Single(sign_change(&author.key, &head))
    } else {
        Provenance::RunHead { signature: sign_run(&author.key, case.as_bytes(), &hashes), others }
    };
    part.iter()
        .map(|c| {
            let provenance = if c.hash == head { head_provenance.clone() } else { Provenance::RunMember { head } };
            IncomingChange {
                case,
                bytes: c.bytes.clone(),
                signer: Some(author.key.verifying_key().to_bytes()),
                signature: Some(provenance.to_blob()),
            }
        })
        .collect()
}

/// A case of a mediator's phone with a start and three notes, and a township and county that
/// hold the phone's grant.
fn four_changes_of_a_phone(clock: &ManualClock) -> (Node, Node, Node, CaseId, Vec<fq_core::ledger::OutgoingChange>) {
    let county = node(clock, 1, "county", GrantRole::CountyServer, COUNTY);
    let mut town = node(clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev = node(clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let case = dev.ledger.create_case(new_case("宅基地滴水纠纷")).unwrap().id;
    for note in ["第一次调解", "第二次调解", "第三次调解"] {
        dev.ledger.add_note(case, note).unwrap();
    }
    let changes = dev.ledger.changes_since(0, 100).unwrap();
    assert_eq!(changes.len(), 4, "the case has a start and three notes");
    town.ledger.add_grant(&dev.grant).unwrap();
    (county, town, dev, case, changes)
}

fn phone_peer(dev: &Node) -> PeerInfo {
    PeerInfo {
        replica: dev.ledger.identity().replica,
        tier: Tier::Device,
        scope: AdminCode::parse("532924101201").unwrap(),
    }
}

/// The township passes `case` on to the county, which must get every change of it.
fn county_gets_the_whole_case(
    town: &mut Node,
    county: &mut Node,
    case: CaseId,
    changes: &[fq_core::ledger::OutgoingChange],
    now: Timestamp,
) {
    let (_, p) = sync(town, county, now);
    assert_eq!(p.stats().refused_here, 0, "the county refused a change");
    for c in changes {
        assert!(county.ledger.holds_change(case, &c.hash).unwrap(), "the county lacks a change of the case");
    }
}

/// Regression (simulator seed 435058155385633252): one change can head two good runs of its
/// author, signed by two pushes that began at different positions. A township first got the
/// short run [3, 4] from a phone that had it device to device; it waited for the case's start.
/// Then the author's own push brought the long run [1, 2, 3, 4]. The head's waiting copy used
/// to win, so changes 1 and 2 were refused as "run-unsigned" and 3 and 4 waited for ever. Now
/// the copy of the head that vouches for every member is kept, and the county, one tier up,
/// gets the whole case with its signatures.
#[test]
fn sync_a_waiting_run_then_its_authors_longer_run_are_both_taken_and_passed_on() {
    let clock = ManualClock::new(T0);
    let (mut county, mut town, dev, case, changes) = four_changes_of_a_phone(&clock);
    let phone = phone_peer(&dev);
    let short = town.ledger.apply_from_peer(&phone, signed_run(&dev, case, &changes[2..]), None).unwrap();
    assert_eq!((short.applied, short.pending, short.refused.len()), (0, 2, 0), "the short run waits");
    let long = town.ledger.apply_from_peer(&phone, signed_run(&dev, case, &changes), None).unwrap();
    assert!(long.refused.is_empty(), "nothing of the long run is refused: {:?}", long.refused);
    assert_eq!(long.applied, changes.len(), "the whole case is taken");
    assert_eq!(town.ledger.pending_count().unwrap(), 0, "nothing waits");
    county_gets_the_whole_case(&mut town, &mut county, case, &changes, clock.now());
}

/// The same change in two runs that do not nest: [3, 4] waits, then a push split
/// differently brings [1, 2, 3] and 4 alone. Every copy kept is vouched for, and the county
/// gets the whole case.
#[test]
fn sync_runs_split_differently_by_two_pushes_are_taken_and_passed_on() {
    let clock = ManualClock::new(T0);
    let (mut county, mut town, dev, case, changes) = four_changes_of_a_phone(&clock);
    let phone = phone_peer(&dev);
    let first = town.ledger.apply_from_peer(&phone, signed_run(&dev, case, &changes[2..]), None).unwrap();
    assert_eq!(first.pending, 2, "the run [3, 4] waits for the case's start");
    let mut again = signed_run(&dev, case, &changes[..3]);
    again.extend(signed_run(&dev, case, &changes[3..]));
    let second = town.ledger.apply_from_peer(&phone, again, None).unwrap();
    assert!(second.refused.is_empty(), "nothing is refused: {:?}", second.refused);
    assert_eq!(second.applied, changes.len(), "the whole case is taken");
    assert_eq!(town.ledger.pending_count().unwrap(), 0, "nothing waits");
    county_gets_the_whole_case(&mut town, &mut county, case, &changes, clock.now());
}

/// Issue 12, item 5: a new device's first sync takes its village's cases whole, as their
/// documents, with every signature kept and checked: changes signed alone and in runs, by two
/// authors, an urgent case first. The device holds every change, refuses none, and keeps
/// provenance the county would accept when it passes them on.
#[test]
fn sync_first_sync_of_a_new_device_takes_whole_cases_with_their_signatures() {
    use fq_core::case::Risk;
    let clock = ManualClock::new(T0);
    let mut town = node(&clock, 2, "binju", GrantRole::TownshipServer, "532924101");
    let mut dev_a = node(&clock, 3, "dev-a", GrantRole::Mediator, "532924101201");
    let mut dev_c = node(&clock, 5, "dev-c", GrantRole::GridWorker, "532924101201");
    let mut cases = Vec::new();
    for i in 0..12 {
        cases.push(dev_a.ledger.create_case(new_case(&format!("邻里纠纷{i}"))).unwrap().id);
    }
    // Runs: several changes of one author to a case in one push.
    for (i, case) in cases.iter().enumerate() {
        for n in 0..(i % 4) {
            dev_a.ledger.add_note(*case, &format!("第{n}次走访")).unwrap();
        }
    }
    sync(&mut dev_a, &mut town, clock.now());
    // Another author edits some of them, one change per push (signed alone).
    sync(&mut dev_c, &mut town, clock.now());
    for case in &cases[..3] {
        dev_c.ledger.add_note(*case, "网格员补充情况").unwrap();
        sync(&mut dev_c, &mut town, clock.now());
    }
    let mut urgent = new_case("扬言报复，民转刑风险");
    urgent.risk = Risk::High;
    let urgent = dev_c.ledger.create_case(urgent).unwrap().id;
    sync(&mut dev_c, &mut town, clock.now());

    let mut fresh = node(&clock, 9, "dev-new", GrantRole::Mediator, "532924101201");
    let (c, p) = sync(&mut fresh, &mut town, clock.now());
    assert_eq!(p.stats().whole_cases, 13, "the township sent every case whole (12, and the urgent one)");
    assert_eq!(c.stats().whole_cases, 13);
    assert_eq!(c.stats().refused_here, 0, "the new device refused nothing");
    let everything = town.ledger.changes_since(0, 10_000).unwrap();
    for change in &everything {
        assert!(fresh.ledger.holds_change(change.case, &change.hash).unwrap(), "a change did not arrive");
    }
    assert_eq!(rows(&fresh.ledger).len(), 13);
    assert!(rows(&fresh.ledger).iter().any(|r| r.id == urgent));
    // What the new device keeps vouches for every change: it passes them on to another
    // device, which checks every signature again.
    let mut other = node(&clock, 10, "dev-other", GrantRole::GridWorker, "532924101201");
    let config = SessionConfig { device_peer: true, ..SessionConfig::default() };
    let now = clock.now();
    let mut c2 =
        Session::new(Side::Child, &other.ledger, creds(&other, Some("532924101201")), config.clone(), None, now)
            .unwrap();
    let mut p2 =
        Session::new(Side::Parent, &fresh.ledger, creds(&fresh, Some("532924101201")), config, None, now).unwrap();
    drive(&mut c2, &mut other, &mut p2, &mut fresh, now);
    assert_eq!(p2.stats().whole_cases, 0, "a device sends change by change");
    assert_eq!(c2.stats().refused_here, 0, "the other device refused a change the new one passed on");
    for change in &everything {
        assert!(other.ledger.holds_change(change.case, &change.hash).unwrap(), "a relayed change was refused");
    }
}
