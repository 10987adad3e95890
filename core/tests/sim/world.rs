//! One simulated county, driven by one seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fq_core::audit::{self, Comparison, VerifyOptions};
use fq_core::case::{AdminCode, CaseId, Category, Party, Risk, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::doc::{FieldEdit, Hash};
use fq_core::ledger::{Durability, IncomingChange, InitOptions, Ledger, LedgerError, LedgerOptions, NewCase, Tier};
use fq_core::policy::SignedPolicy;
use fq_core::store::{CaseRow, ListFilter};
use fq_core::sync::session::{Credentials, Session, SessionConfig, Side};
use fq_core::sync::wire::{self, Message};
use fq_core::trust::{Grant, GrantRole, SignedGrant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod carry;

/// Which ways of syncing a seed uses before healing (healing always runs
/// QUIC sessions down the tree).
#[derive(Debug, Clone, Copy)]
pub struct Paths {
    /// Sessions between a replica and its parent, as over QUIC.
    pub quic: bool,
    /// Sync files carried on a USB stick: to the township and back, and
    /// device to device.
    pub files: bool,
    /// Sessions between two devices whose scopes overlap (`fq serve` and
    /// `fq sync --peer` on the local network).
    pub peers: bool,
}

impl Paths {
    /// Every path.
    pub const ALL: Paths = Paths { quic: true, files: true, peers: true };
}

/// How a seed ended.
pub enum Outcome {
    /// Every invariant held.
    Passed,
    /// An invariant broke, or something panicked.
    Failed(String),
}

/// The simulated start: 2026-09-01.
const T0: i64 = 1_788_192_000_000;
const COUNTY: &str = "532924";
const DAY_MS: i64 = 86_400_000;
/// Most frames a pipe may hold in one direction before the simulation calls
/// the outbox unbounded.
const MAX_QUEUED_FRAMES: usize = 256;
/// Most changes a replica may keep waiting for dependencies mid-run.
const MAX_PENDING: i64 = 10_000;

type Sim<T> = Result<T, String>;

/// Whether `SIM_TRACE` is set: then a seed says what it does, step by step,
/// on stderr (`SIM_TRACE=1 SIM_SEED=… cargo test --release -p fq-core --test sim`).
fn trace_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SIM_TRACE").is_some())
}

/// Runs one seed; never panics (a panic is a failure with its message).
pub fn run_seed(seed: u64, paths: Paths) -> Outcome {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut w = World::new(seed, paths)?;
        let r = w.run();
        if r.is_err() && std::env::var_os("SIM_KEEP").is_some() {
            eprintln!("kept the replicas of seed {seed} in {}", w._dir.path().display());
            std::mem::forget(std::mem::replace(&mut w._dir, tempfile::tempdir().map_err(|e| e.to_string())?));
        }
        r
    }));
    match r {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(why)) => Outcome::Failed(why),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Outcome::Failed(format!("panic: {msg}"))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    County,
    Township,
    Device,
}

struct Node {
    name: String,
    kind: Kind,
    role: Role,
    scope: AdminCode,
    grant: SignedGrant,
    key: SigningKey,
    path: PathBuf,
    ledger: Option<Ledger>,
    clock: ManualClock,
    skew: i64,
    backup: Option<PathBuf>,
    /// The step the backup was taken at.
    backup_step: u64,
    seed: u64,
}

impl Node {
    fn ledger(&mut self) -> &mut Ledger {
        self.ledger.as_mut().expect("node is up")
    }

    fn open(&mut self) -> Sim<()> {
        let opts = LedgerOptions { seed: Some(self.seed), durability: Durability::Relaxed, key: None };
        self.seed = self.seed.wrapping_add(1);
        let l = Ledger::open(&self.path, Arc::new(self.clock.clone()), opts)
            .map_err(|e| format!("{}: reopen: {e}", self.name))?;
        self.ledger = Some(l);
        Ok(())
    }
}

/// One session between a child and its parent, with the frames in flight.
struct Pipe {
    child: Session,
    parent: Session,
    to_parent: VecDeque<(i64, Vec<u8>)>,
    to_child: VecDeque<(i64, Vec<u8>)>,
    /// Change hashes of each push the child side received, in order: a
    /// session answers every push with one ack, in order, so the next ack it
    /// sends is for the oldest push here. (Batch numbers cannot be used:
    /// replayed pushes of an old session reuse them.)
    at_child: VecDeque<Vec<(CaseId, Hash)>>,
    /// The same for the parent side.
    at_parent: VecDeque<Vec<(CaseId, Hash)>>,
    /// Frames of an earlier session to deliver again once this one is up.
    replay: Vec<Vec<u8>>,
    /// Policy frames of an earlier session to deliver again to the child.
    replay_policies: Vec<Vec<u8>>,
    /// Log heads each side had when its session last looked, to wake it up
    /// when its replica took new changes from elsewhere.
    heads_seen: (i64, i64),
}

struct Link {
    child: usize,
    parent: usize,
    /// Two devices meeting (the child dials, the parent listens), not a
    /// replica and its parent server.
    peer: bool,
    up: bool,
    pipes: Vec<Pipe>,
    /// Push frames the child sent on this link, for duplicate deliveries.
    sent_pushes: Vec<Vec<u8>>,
    /// Policy frames (with a signed policy) the parent sent on this link, for replays.
    sent_policies: Vec<Vec<u8>>,
}

struct World {
    rng: ChaCha8Rng,
    now: i64,
    _dir: tempfile::TempDir,
    ca: SigningKey,
    nodes: Vec<Node>,
    links: Vec<Link>,
    created: BTreeSet<CaseId>,
    /// Every change written through the ledger API, with its case's village.
    expected: BTreeMap<Hash, (CaseId, AdminCode, usize)>,
    /// Edits made on cases outside the author's scope: must be refused.
    rogue: BTreeMap<Hash, (CaseId, usize)>,
    /// Refusals senders were told about: (receiver node, change hash).
    refusals: Vec<(usize, Hash)>,
    /// Cases a device copied from outside its village.
    imported: BTreeSet<(usize, CaseId)>,
    /// The current step, and the step of the last phone replacement: a
    /// server is never restored to a backup older than a replacement (the
    /// replaced phone's changes may exist nowhere else; that double failure
    /// is outside what the protocol can repair).
    step: u64,
    last_reinstall: u64,
    /// The step at which `fq audit compare` runs mid-run against the truth.
    compare_at: u64,
    /// The newest county policy version issued (0: none yet), and its bytes.
    policy: (u64, Vec<u8>),
    /// Every policy version issued so far, as the Policy frame a parent would send with it: a
    /// replayed session may carry any of them, the older ones too.
    issued_policies: Vec<Vec<u8>>,
    /// Each node's policy version when last looked at: it may only grow
    /// (a restored backup or a new phone starts again from what it holds).
    policy_seen: Vec<u64>,
    paths: Paths,
    /// Sync files on their way (on a USB stick, in a pocket).
    files: Vec<carry::Carried>,
    /// Files delivered before, to deliver again (a stick plugged in twice).
    file_history: Vec<carry::Carried>,
    /// The step each node was last restored from a backup or reinstalled at.
    restored_at: Vec<u64>,
    /// Each device's position in its own log that its township has
    /// acknowledged, as last checked.
    acked_seen: Vec<i64>,
}

impl World {
    fn new(seed: u64, paths: Paths) -> Sim<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // On tmpfs when there is one: the simulation models crashes of the
        // process, not of the disk, so fsync only costs time here.
        let shm = std::path::Path::new("/dev/shm");
        let dir =
            if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.map_err(|e| e.to_string())?;
        let ca = SigningKey::from_bytes(&rng.random());
        let mut w = World {
            rng,
            now: T0,
            _dir: dir,
            ca,
            nodes: Vec::new(),
            links: Vec::new(),
            created: BTreeSet::new(),
            expected: BTreeMap::new(),
            rogue: BTreeMap::new(),
            refusals: Vec::new(),
            imported: BTreeSet::new(),
            step: 0,
            last_reinstall: 0,
            compare_at: 0,
            policy: (0, Vec::new()),
            issued_policies: Vec::new(),
            policy_seen: Vec::new(),
            paths,
            files: Vec::new(),
            file_history: Vec::new(),
            restored_at: Vec::new(),
            acked_seen: Vec::new(),
        };
        let county = w.add_node("county", Kind::County, GrantRole::CountyServer, COUNTY, None)?;
        w.add_node("admin", Kind::Device, GrantRole::CountyAdmin, COUNTY, Some(county))?;
        for t in 0..3 {
            let tcode = format!("{COUNTY}{:03}", 100 + t);
            let town =
                w.add_node(&format!("town{t}"), Kind::Township, GrantRole::TownshipServer, &tcode, Some(county))?;
            w.add_node(&format!("officer{t}"), Kind::Device, GrantRole::TownshipOfficer, &tcode, Some(town))?;
            for v in 0..3 {
                let vcode = format!("{tcode}{:03}", 201 + v);
                let devices = w.rng.random_range(1..=3);
                for d in 0..devices {
                    let role = if d == 0 { GrantRole::Mediator } else { GrantRole::GridWorker };
                    w.add_node(&format!("dev{t}{v}{d}"), Kind::Device, role, &vcode, Some(town))?;
                }
            }
        }
        if paths.peers {
            w.add_peer_links();
        }
        Ok(w)
    }

    fn add_node(&mut self, name: &str, kind: Kind, role: GrantRole, scope: &str, parent: Option<usize>) -> Sim<usize> {
        let key = SigningKey::from_bytes(&self.rng.random());
        let scope = AdminCode::parse(scope).map_err(|e| e.to_string())?;
        let grant = SignedGrant::issue(
            Grant {
                county: AdminCode::parse(COUNTY).map_err(|e| e.to_string())?,
                subject: name.into(),
                role,
                scope: scope.clone(),
                serial: self.rng.random(),
                public_key: key.verifying_key().to_bytes(),
                issued_at: T0,
            },
            &self.ca,
        )
        .map_err(|e| e.to_string())?;
        let skew = if kind == Kind::Device && self.rng.random_bool(0.3) {
            self.rng.random_range(-3 * DAY_MS..3 * DAY_MS)
        } else {
            0
        };
        let clock = ManualClock::new(Timestamp(self.now + skew));
        let (tier, person) = match role {
            GrantRole::CountyServer => (Tier::County, Role::CountyAdmin),
            GrantRole::TownshipServer => (Tier::Township, Role::TownshipOfficer),
            r => (Tier::Device, r.person_role().ok_or("person role")?),
        };
        let path = self._dir.path().join(format!("{name}.db"));
        let seed = self.rng.random();
        let init = InitOptions { tier, name: name.into(), role: person, scope: scope.clone(), grid: None };
        let opts = LedgerOptions { seed: Some(seed), durability: Durability::Relaxed, key: None };
        let mut ledger = Ledger::init(&path, init, Arc::new(clock.clone()), opts).map_err(|e| e.to_string())?;
        ledger.add_grant(&grant).map_err(|e| e.to_string())?;
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.into(),
            kind,
            role: person,
            scope,
            grant,
            key,
            path,
            ledger: Some(ledger),
            clock,
            skew,
            backup: None,
            backup_step: 0,
            seed: seed.wrapping_add(1_000),
        });
        if let Some(p) = parent {
            self.links.push(Link {
                child: id,
                parent: p,
                peer: false,
                up: true,
                pipes: Vec::new(),
                sent_pushes: Vec::new(),
                sent_policies: Vec::new(),
            });
        }
        self.policy_seen.push(0);
        self.restored_at.push(0);
        self.acked_seen.push(0);
        Ok(id)
    }

    fn run(&mut self) -> Sim<()> {
        let steps = self.rng.random_range(150..300u64);
        self.compare_at = self.rng.random_range(steps / 2..steps);
        for step in 0..steps {
            self.step = step;
            self.now += self.rng.random_range(50..5_000);
            self.tick_clocks();
            let roll = self.rng.random_range(0..112);
            if trace_on() {
                eprintln!("step {step} roll {roll}");
            }
            match roll {
                0..=34 => self.local_op()?,
                35..=54 => self.start_session()?,
                55..=79 => self.deliver(8)?,
                80..=83 => self.drop_session(),
                84..=87 => self.toggle_link(),
                88..=89 => self.crash_node()?,
                90..=91 => self.backup_or_restore()?,
                92 => self.reinstall_device()?,
                93..=94 => self.rogue_edit()?,
                95 => self.skew_clock(),
                96 => self.issue_policy()?,
                97..=99 => self.timeouts()?,
                100..=104 => self.write_file()?,
                _ => self.carry_file()?,
            }
            self.check_bounds()?;
            if step == self.compare_at {
                self.compare_mid_run()?;
            }
        }
        self.heal()?;
        self.check_invariants()?;
        self.check_audit()
    }

    /// `fq audit compare` on one live link, while replicas still differ: it
    /// must name exactly the cases whose digests differ, and write nothing.
    fn compare_mid_run(&mut self) -> Sim<()> {
        let live: Vec<usize> = (0..self.links.len())
            .filter(|&k| {
                let l = &self.links[k];
                !l.peer && self.nodes[l.child].ledger.is_some() && self.nodes[l.parent].ledger.is_some()
            })
            .collect();
        let Some(&k) = live.get(self.rng.random_range(0..live.len().max(1))) else { return Ok(()) };
        let (c, p) = (self.links[k].child, self.links[k].parent);
        let scope = self.nodes[c].scope.clone();
        let mine: BTreeMap<CaseId, Hash> =
            self.nodes[c].ledger().digest(&scope).map_err(|e| e.to_string())?.into_iter().collect();
        let theirs: BTreeMap<CaseId, Hash> =
            self.nodes[p].ledger().digest(&scope).map_err(|e| e.to_string())?.into_iter().collect();
        let mut truth: BTreeSet<CaseId> = mine.keys().chain(theirs.keys()).copied().collect();
        truth.retain(|case| mine.get(case) != theirs.get(case));
        let report = self.compare(c, p)?;
        let found: BTreeSet<CaseId> = report.cases.iter().map(|d| d.case).collect();
        if found != truth {
            return Err(format!(
                "compare {}→{} named {} differing cases, the digests differ on {}",
                self.nodes[c].name,
                self.nodes[p].name,
                found.len(),
                truth.len()
            ));
        }
        Ok(())
    }

    /// Runs a comparison between child `c` and parent `p` in memory.
    fn compare(&mut self, c: usize, p: usize) -> Sim<audit::CompareReport> {
        let before = (self.nodes[c].ledger().counts(), self.nodes[p].ledger().counts());
        let now = self.node_now(p);
        let child_scope = self.nodes[c].scope.clone();
        let parent_scope = self.nodes[p].scope.clone();
        let mut cmp = Comparison::new(self.nodes[c].ledger(), Some(parent_scope)).map_err(|e| e.to_string())?;
        let creds = self.creds(p, Some(child_scope));
        let mut parent = Session::new(Side::Parent, self.nodes[p].ledger(), creds, SessionConfig::default(), None, now)
            .map_err(|e| e.to_string())?;
        for _ in 0..10_000 {
            if cmp.is_done() {
                break;
            }
            while let Some(f) = cmp.poll_transmit() {
                parent.handle_input(self.nodes[p].ledger(), &f, now).map_err(|e| format!("compare: {e}"))?;
            }
            while let Some(f) = parent.poll_transmit() {
                cmp.handle_input(self.nodes[c].ledger(), &f).map_err(|e| format!("compare: {e}"))?;
            }
        }
        let after = (self.nodes[c].ledger().counts(), self.nodes[p].ledger().counts());
        if format!("{before:?}") != format!("{after:?}") {
            return Err("compare wrote to a replica".into());
        }
        cmp.report().cloned().ok_or_else(|| "compare did not finish".to_owned())
    }

    /// After healing: `verify` passes on every replica (a device that
    /// imported another village's case is told about those changes only), `compare` finds nothing between each child and its parent,
    /// every received change has a receive time, and a signature altered in
    /// the county's file is found.
    fn check_audit(&mut self) -> Sim<()> {
        // Replicas of one county hold the same changes: a signature found
        // valid at one is not checked again at the next (the memo holds
        // only valid ones, so an altered signature is always checked).
        let memo = Some(Arc::new(audit::SignatureMemo::default()));
        let with_ca = VerifyOptions { ca: Some(self.ca.verifying_key()), threads: 1, memo, ..VerifyOptions::default() };
        let quiet = |_: u64, _: u64| {};
        for i in 1..self.nodes.len() {
            let opts = &with_ca;
            let imported: BTreeSet<CaseId> = self.imported.iter().filter(|(by, _)| *by == i).map(|(_, c)| *c).collect();
            let name = self.nodes[i].name.clone();
            let r = audit::verify(self.nodes[i].ledger(), opts, &quiet).map_err(|e| format!("{name}: verify: {e}"))?;
            // An imported case's changes are not this device's own: unsigned
            // ones are another device's, signed ones may be signed by keys
            // whose grants never reached this device. Nothing else may fail.
            let unexpected = r.failures.iter().find(|f| !f.case.is_some_and(|c| imported.contains(&c)));
            if let Some(f) = unexpected.or(r.failures.first().filter(|_| !r.integrity)) {
                return Err(format!("{name}: verify failed: {} on case {:?} change {:?}", f.code, f.number, f.change));
            }
            let missing = self.nodes[i].ledger().received_without_time().map_err(|e| e.to_string())?;
            if missing > 0 {
                return Err(format!("{name}: {missing} changes received without a receive time"));
            }
        }
        for k in 0..self.links.len() {
            if self.links[k].peer {
                continue;
            }
            let (c, p) = (self.links[k].child, self.links[k].parent);
            let report = self.compare(c, p)?;
            if let Some(d) = report.cases.first() {
                return Err(format!(
                    "compare {}→{} after healing: case {:?} differs ({} lacking here, {} there)",
                    self.nodes[c].name,
                    self.nodes[p].name,
                    d.number,
                    d.here_lacks.len(),
                    d.there_lacks.len()
                ));
            }
        }
        self.tampered_county_is_caught(&with_ca)
    }

    /// Alters one signature in the county's file, as an intruder with the
    /// sqlite3 shell would: `verify` must name that change, and only it.
    fn tampered_county_is_caught(&mut self, opts: &VerifyOptions) -> Sim<()> {
        let path = self.nodes[0].path.clone();
        let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
        let row: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT log_seq, signature FROM changes WHERE signature IS NOT NULL ORDER BY log_seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let Some((seq, mut signature)) = row else { return Ok(()) };
        signature[0] ^= 0x01;
        conn.execute("UPDATE changes SET signature = ?1 WHERE log_seq = ?2", rusqlite::params![signature, seq])
            .map_err(|e| e.to_string())?;
        drop(conn);
        let r = audit::verify(self.nodes[0].ledger(), opts, &|_, _| {}).map_err(|e| e.to_string())?;
        let named: Vec<(String, Option<i64>)> = r.failures.iter().map(|f| (f.code.clone(), f.log_seq)).collect();
        if named != [("bad-signature".to_owned(), Some(seq))] {
            return Err(format!("a tampered signature at county log position {seq} went unnoticed: {named:?}"));
        }
        Ok(())
    }

    fn tick_clocks(&mut self) {
        for n in &self.nodes {
            n.clock.set(Timestamp(self.now + n.skew));
        }
    }

    fn node_now(&self, i: usize) -> Timestamp {
        Timestamp(self.now + self.nodes[i].skew)
    }

    fn devices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].kind == Kind::Device && self.nodes[i].ledger.is_some())
            .collect()
    }

    /// Records the changes a local operation wrote.
    fn record_local(&mut self, i: usize, before: i64, rogue: bool) -> Sim<()> {
        let out = self.nodes[i].ledger().changes_since(before, 1000).map_err(|e| e.to_string())?;
        for c in out {
            let village = AdminCode::parse(&c.village).map_err(|e| e.to_string())?;
            if rogue {
                self.rogue.insert(c.hash, (c.case, i));
            } else {
                self.created.insert(c.case);
                self.expected.insert(c.hash, (c.case, village, i));
            }
        }
        Ok(())
    }

    fn local_op(&mut self) -> Sim<()> {
        let devs = self.devices();
        if devs.is_empty() {
            return Ok(());
        }
        let i = devs[self.rng.random_range(0..devs.len())];
        let op = self.rng.random_range(0..10);
        let village = self.pick_village(i);
        let before = self.nodes[i].ledger().log_head().map_err(|e| e.to_string())?;
        let n = self.rng.random_range(0..1000u32);
        let scope = self.nodes[i].scope.clone();
        let cases: Vec<CaseRow> = self.nodes[i]
            .ledger()
            .list(&ListFilter { within: Some(scope), ..Default::default() })
            .map_err(|e| e.to_string())?;
        let target = (!cases.is_empty()).then(|| cases[self.rng.random_range(0..cases.len())].id);
        let l = self.nodes[i].ledger();
        let r: Result<(), LedgerError> = match (op, target) {
            (0..=2, _) | (_, None) => l
                .create_case(NewCase {
                    category: Category::ALL[n as usize % Category::ALL.len()],
                    title: format!("纠纷{n}"),
                    description: format!("情况说明{n}"),
                    parties: vec![Party { name: format!("当事人{n}"), id_number: None, phone: None }],
                    risk: if n % 10 == 0 { Risk::High } else { Risk::Low },
                    flags: Vec::new(),
                    village: Some(village),
                    grid: None,
                })
                .map(drop),
            (3, Some(c)) => l.edit(c, FieldEdit { title: Some(format!("标题{n}")), ..Default::default() }).map(drop),
            (4, Some(c)) => l
                .edit(
                    c,
                    FieldEdit {
                        risk: Some(Risk::Medium), description: Some(format!("补充{n}")), ..Default::default()
                    },
                )
                .map(drop),
            (5, Some(c)) => l.add_note(c, &format!("记录{n}")).map(drop),
            (6, Some(c)) => l.escalate(c, "需上级协调").map(drop),
            (7, Some(c)) => l.accept_escalation(c).map(drop),
            (8, Some(c)) => l.settle(c, "达成协议").map(drop),
            (_, Some(c)) => l.follow_up(c, fq_core::case::Outcome::Honoured, None).map(drop),
        };
        match r {
            Ok(()) => self.record_local(i, before, false),
            Err(e) if e.is_user_error() => Ok(()),
            Err(e) => Err(format!("{}: local operation failed: {e}", self.nodes[i].name)),
        }
    }

    /// The county issues a new policy version (other deadlines and visits);
    /// its server installs it from the CA's file, as `fq-server` does. The first time it
    /// issues two versions at once (a correction): sessions replay every version issued, so
    /// an older one reaches the replicas that hold the newer in most seeds.
    fn issue_policy(&mut self) -> Sim<()> {
        let text = format!(
            "[deadlines]\nvillage = {}\ntownship = {}\n[follow_up]\ndays = [{}]\n",
            self.rng.random_range(5..30),
            self.rng.random_range(20..60),
            self.rng.random_range(3..20)
        );
        let county = AdminCode::parse(COUNTY).map_err(|e| e.to_string())?;
        let versions = if self.issued_policies.is_empty() { 2 } else { 1 };
        for _ in 0..versions {
            let version = self.policy.0 + 1;
            let signed = SignedPolicy::sign(&county, version, Timestamp(self.now), &text, vec![], vec![], &self.ca)
                .map_err(|e| e.to_string())?;
            self.policy = (version, signed.as_bytes().to_vec());
            let frame = wire::encode(&Message::Policy {
                now: Timestamp(self.now),
                version,
                signed: Some(signed.as_bytes().to_vec()),
            })
            .map_err(|e| e.to_string())?;
            self.issued_policies.push(frame);
        }
        self.install_newest_at_county()
    }

    fn install_newest_at_county(&mut self) -> Sim<()> {
        if self.policy.0 == 0 {
            return Ok(());
        }
        let ca = self.ca.verifying_key();
        let bytes = self.policy.1.clone();
        self.nodes[0].ledger().install_policy(&bytes, &ca).map_err(|e| format!("county: install policy: {e}"))?;
        Ok(())
    }

    /// A replica's policy version never goes back (but after a restore).
    fn check_policy(&mut self, i: usize) -> Sim<()> {
        let Some(l) = &self.nodes[i].ledger else { return Ok(()) };
        let now = l.policy().version();
        if now < self.policy_seen[i] {
            return Err(format!(
                "{}'s policy went back from version {} to {now}",
                self.nodes[i].name, self.policy_seen[i]
            ));
        }
        self.policy_seen[i] = now;
        Ok(())
    }

    fn reset_policy_seen(&mut self, i: usize) {
        self.policy_seen[i] = self.nodes[i].ledger.as_ref().map_or(0, |l| l.policy().version());
    }

    fn pick_village(&mut self, i: usize) -> AdminCode {
        let scope = self.nodes[i].scope.clone();
        let code = match scope.as_str().len() {
            12 => return scope,
            9 => format!("{scope}{:03}", 201 + self.rng.random_range(0..3)),
            _ => format!("{COUNTY}{:03}{:03}", 100 + self.rng.random_range(0..3), 201 + self.rng.random_range(0..3)),
        };
        AdminCode::parse(&code).unwrap_or(scope)
    }

    /// A device copies a case of another village (as a careless import would)
    /// and edits it: the edit must be refused upstream and audited.
    fn rogue_edit(&mut self) -> Sim<()> {
        let devs: Vec<usize> =
            self.devices().into_iter().filter(|&d| self.nodes[d].scope.as_str().len() == 12).collect();
        if devs.len() < 2 {
            return Ok(());
        }
        let a = devs[self.rng.random_range(0..devs.len())];
        let b = devs[self.rng.random_range(0..devs.len())];
        if self.nodes[a].scope == self.nodes[b].scope {
            return Ok(());
        }
        // Everything b holds of the case but refused rogue edits: copying
        // those would launder them through an honest device's signature.
        let theirs: Vec<_> = self.nodes[b]
            .ledger()
            .changes_since(0, 100_000)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|c| !self.rogue.contains_key(&c.hash) && within(&self.nodes[b].scope, &c.village))
            .collect();
        let Some(case) = theirs.first().map(|c| c.case) else { return Ok(()) };
        let import: Vec<IncomingChange> = theirs.into_iter().filter(|c| c.case == case).map(Into::into).collect();
        self.nodes[a].ledger().apply_changes(None, import.clone()).map_err(|e| e.to_string())?;
        self.imported.insert((a, case));
        // The device's own ledger refuses to edit outside its village, so the
        // edit is made the way a tampered device would: elsewhere, then taken
        // in as if written here. The device signs it as its own when it syncs.
        let clock = self.nodes[a].clock.clone();
        let init = InitOptions {
            tier: Tier::Device,
            name: self.nodes[a].name.clone(),
            role: Role::CountyAdmin,
            scope: AdminCode::parse(COUNTY).map_err(|e| e.to_string())?,
            grid: None,
        };
        let opts = LedgerOptions { seed: Some(self.rng.random()), durability: Durability::Relaxed, key: None };
        let mut scratch = Ledger::init_in_memory(init, Arc::new(clock), opts).map_err(|e| e.to_string())?;
        scratch.apply_changes(None, import).map_err(|e| e.to_string())?;
        let head = scratch.log_head().map_err(|e| e.to_string())?;
        if scratch.edit(case, FieldEdit { title: Some("越权修改".into()), ..Default::default() }).is_err() {
            return Ok(());
        }
        let edit: Vec<IncomingChange> =
            scratch.changes_since(head, 10).map_err(|e| e.to_string())?.into_iter().map(Into::into).collect();
        let before = self.nodes[a].ledger().log_head().map_err(|e| e.to_string())?;
        self.nodes[a].ledger().apply_changes(None, edit).map_err(|e| e.to_string())?;
        self.record_local(a, before, true)
    }

    fn creds(&self, i: usize, peer_limit: Option<AdminCode>) -> Credentials {
        let n = &self.nodes[i];
        Credentials {
            ca: self.ca.verifying_key(),
            own: Some((n.grant.clone(), n.key.clone())),
            peer_scope_limit: peer_limit,
        }
    }

    fn start_session(&mut self) -> Sim<()> {
        if self.links.is_empty() {
            return Ok(());
        }
        let k = self.rng.random_range(0..self.links.len());
        let (c, p) = (self.links[k].child, self.links[k].parent);
        let peer = self.links[k].peer;
        if (if peer { !self.paths.peers } else { !self.paths.quic })
            || !self.links[k].up
            || self.nodes[c].ledger.is_none()
            || self.nodes[p].ledger.is_none()
            || self.links[k].pipes.len() >= 2
        {
            return Ok(());
        }
        let replay = if self.rng.random_bool(0.3) { self.links[k].sent_pushes.clone() } else { Vec::new() };
        let mut pipe = self.new_pipe(c, p, peer, replay)?;
        if self.rng.random_bool(0.3) {
            pipe.replay_policies = self.links[k].sent_policies.clone();
        }
        // Every session also hears every version the county ever issued, newest first, so the
        // older ones come last (a stale parent, a replay): a replica that holds a newer one
        // must keep it.
        pipe.replay_policies.extend(self.issued_policies.iter().rev().cloned());
        self.links[k].pipes.push(pipe);
        Ok(())
    }

    /// A session from `c` to `p`: a replica dialing its parent, or (`peer`)
    /// a device dialing another device of its area that listens.
    fn new_pipe(&mut self, c: usize, p: usize, peer: bool, replay: Vec<Vec<u8>>) -> Sim<Pipe> {
        let (cn, pn) = (self.node_now(c), self.node_now(p));
        let child_scope = self.nodes[c].scope.clone();
        // Over TLS each side knows the other's certificate; a device dials
        // its parent knowing only the county's CA.
        let cc = self.creds(c, peer.then(|| self.nodes[p].scope.clone()));
        let pc = self.creds(p, Some(child_scope));
        let cfg = SessionConfig { device_peer: peer, ..SessionConfig::default() };
        let expected = if peer {
            // A device may or may not remember the other's replica.
            let known = self.nodes[p].ledger().identity().replica;
            self.rng.random_bool(0.5).then_some(known)
        } else {
            self.nodes[c].ledger().upstream().map_err(|e| e.to_string())?
        };
        let child = Session::new(Side::Child, self.nodes[c].ledger(), cc, cfg.clone(), expected, cn)
            .map_err(|e| e.to_string())?;
        let parent =
            Session::new(Side::Parent, self.nodes[p].ledger(), pc, cfg, None, pn).map_err(|e| e.to_string())?;
        let mut pipe = Pipe {
            child,
            parent,
            to_parent: VecDeque::new(),
            to_child: VecDeque::new(),
            at_child: VecDeque::new(),
            at_parent: VecDeque::new(),
            replay,
            replay_policies: Vec::new(),
            heads_seen: (0, 0),
        };
        self.collect(&mut pipe, c, p)?;
        Ok(pipe)
    }

    /// Moves frames the sessions produced into the pipe, with delays, and
    /// checks every acknowledgement against the acknowledging ledger.
    fn collect(&mut self, pipe: &mut Pipe, c: usize, p: usize) -> Sim<()> {
        while let Some(f) = pipe.child.poll_transmit() {
            self.check_ack(&f, &mut pipe.at_child, c)?;
            let delay = self.delay();
            pipe.to_parent.push_back((self.now + delay, f));
        }
        while let Some(f) = pipe.parent.poll_transmit() {
            self.check_ack(&f, &mut pipe.at_parent, p)?;
            let delay = self.delay();
            pipe.to_child.push_back((self.now + delay, f));
        }
        while pipe.child.poll_event().is_some() {}
        while pipe.parent.poll_event().is_some() {}
        Ok(())
    }

    fn delay(&mut self) -> i64 {
        if self.rng.random_bool(0.05) { self.rng.random_range(5_000..40_000) } else { self.rng.random_range(10..800) }
    }

    /// An ack may only be sent for what its sender durably holds.
    fn check_ack(&mut self, frame: &[u8], pushes: &mut VecDeque<Vec<(CaseId, Hash)>>, at: usize) -> Sim<()> {
        let Ok(Message::Ack { refused, .. }) = wire::decode(frame.get(4..).unwrap_or(&[])) else { return Ok(()) };
        let refused_hashes: BTreeSet<Hash> = refused.iter().map(|r| r.hash).collect();
        for r in &refused {
            if r.hash != [0; 32] {
                self.refusals.push((at, r.hash));
            }
        }
        let Some(changes) = pushes.pop_front() else { return Err("an ack without a push".into()) };
        for (case, hash) in &changes {
            if refused_hashes.contains(hash) {
                continue;
            }
            let held = self.nodes[at].ledger().holds_change(*case, hash).map_err(|e| e.to_string())?;
            if !held {
                return Err(format!("change {} acknowledged but not held by {}", hex(hash), self.nodes[at].name));
            }
        }
        Ok(())
    }

    /// Delivers due frames (head of line, in order per direction).
    fn deliver(&mut self, rounds: usize) -> Sim<()> {
        for _ in 0..rounds {
            let mut moved = false;
            for k in 0..self.links.len() {
                moved |= self.deliver_link(k, false)?;
            }
            if !moved {
                break;
            }
        }
        Ok(())
    }

    /// Delivers what is due on one link; `instant` ignores delays.
    fn deliver_link(&mut self, k: usize, instant: bool) -> Sim<bool> {
        let (c, p) = (self.links[k].child, self.links[k].parent);
        let mut pipes = std::mem::take(&mut self.links[k].pipes);
        let mut moved = false;
        let mut keep = Vec::new();
        for mut pipe in pipes.drain(..) {
            let mut alive = true;
            // A replica that took changes from elsewhere wakes its sessions.
            let (ch, ph) = (self.head(c)?, self.head(p)?);
            if ch > pipe.heads_seen.0 {
                pipe.heads_seen.0 = ch;
                let now = self.node_now(c);
                alive &= pipe.child.notify_local_changes(self.nodes[c].ledger(), now).is_ok();
            }
            if ph > pipe.heads_seen.1 {
                pipe.heads_seen.1 = ph;
                let now = self.node_now(p);
                alive &= pipe.parent.notify_local_changes(self.nodes[p].ledger(), now).is_ok();
            }
            // Old frames delivered again once the new session is up.
            if !pipe.replay.is_empty() && pipe.parent.peer().is_some() {
                for f in std::mem::take(&mut pipe.replay) {
                    pipe.to_parent.push_back((self.now, f));
                }
            }
            if !pipe.replay_policies.is_empty() && pipe.child.peer().is_some() {
                for f in std::mem::take(&mut pipe.replay_policies) {
                    pipe.to_child.push_back((self.now, f));
                }
            }
            // A parent that installed a newer policy sends it on, as a server does.
            let now = self.node_now(p);
            alive &= pipe.parent.offer_policy(self.nodes[p].ledger(), now).is_ok();
            while let Some((at, _)) = pipe.to_parent.front() {
                if !instant && *at > self.now {
                    break;
                }
                let Some((_, f)) = pipe.to_parent.pop_front() else { break };
                moved = true;
                note_push(&f, &mut pipe.at_parent);
                if is_push(&f) {
                    self.links[k].sent_pushes.push(f.clone());
                    if self.links[k].sent_pushes.len() > 16 {
                        self.links[k].sent_pushes.remove(0);
                    }
                }
                let now = self.node_now(p);
                if let Err(e) = pipe.parent.handle_input(self.nodes[p].ledger(), &f, now) {
                    if instant {
                        return Err(format!("{} ended a healing session: {e}", self.nodes[p].name));
                    }
                    alive = false;
                    break;
                }
            }
            while alive && let Some((at, _)) = pipe.to_child.front() {
                if !instant && *at > self.now {
                    break;
                }
                let Some((_, f)) = pipe.to_child.pop_front() else { break };
                moved = true;
                note_push(&f, &mut pipe.at_child);
                if is_signed_policy(&f) && !self.links[k].sent_policies.contains(&f) {
                    self.links[k].sent_policies.push(f.clone());
                    if self.links[k].sent_policies.len() > 8 {
                        self.links[k].sent_policies.remove(0);
                    }
                }
                let now = self.node_now(c);
                if let Err(e) = pipe.child.handle_input(self.nodes[c].ledger(), &f, now) {
                    if instant {
                        return Err(format!("{} ended a healing session: {e}", self.nodes[c].name));
                    }
                    alive = false;
                }
            }
            self.collect(&mut pipe, c, p)?;
            self.check_policy(c)?;
            self.check_policy(p)?;
            if alive && !pipe.child.is_closed() && !pipe.parent.is_closed() {
                keep.push(pipe);
            }
        }
        self.links[k].pipes = keep;
        if self.links[k].peer && !instant {
            // Another device's acks are not the township's.
            self.check_township_acks(c, None)?;
            self.check_township_acks(p, None)?;
        }
        Ok(moved)
    }

    fn head(&mut self, i: usize) -> Sim<i64> {
        self.nodes[i].ledger().log_head().map_err(|e| e.to_string())
    }

    fn drop_session(&mut self) {
        let live: Vec<usize> = (0..self.links.len()).filter(|&k| !self.links[k].pipes.is_empty()).collect();
        if let Some(&k) = live.get(self.rng.random_range(0..live.len().max(1))) {
            let n = self.links[k].pipes.len();
            self.links[k].pipes.remove(self.rng.random_range(0..n));
        }
    }

    fn toggle_link(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let k = self.rng.random_range(0..self.links.len());
        self.links[k].up = !self.links[k].up;
        if !self.links[k].up {
            self.links[k].pipes.clear();
        }
    }

    fn drop_pipes_of(&mut self, i: usize) {
        for l in &mut self.links {
            if l.child == i || l.parent == i {
                l.pipes.clear();
            }
        }
    }

    /// A process dies: its sessions and cache go; its file stays; it comes back.
    fn crash_node(&mut self) -> Sim<()> {
        let i = self.rng.random_range(0..self.nodes.len());
        if trace_on() {
            eprintln!("crash {}", self.nodes[i].name);
        }
        self.drop_pipes_of(i);
        self.nodes[i].ledger = None;
        self.nodes[i].open()
    }

    /// A server is backed up, or restored from its older backup.
    fn backup_or_restore(&mut self) -> Sim<()> {
        let servers: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].kind != Kind::Device).collect();
        let i = servers[self.rng.random_range(0..servers.len())];
        let node = &mut self.nodes[i];
        match node.backup.clone() {
            Some(backup) if self.rng.random_bool(0.5) && node.backup_step >= self.last_reinstall => {
                node.ledger = None;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{ext}", node.path.display()));
                }
                std::fs::copy(&backup, &node.path).map_err(|e| e.to_string())?;
                self.drop_pipes_of(i);
                self.nodes[i].open()?;
                self.nodes[i].backup = None;
                // A restored county server re-reads the CA's policy file at start.
                if i == 0 {
                    self.install_newest_at_county()?;
                }
                self.reset_policy_seen(i);
                self.restored_at[i] = self.step;
                if trace_on() {
                    eprintln!("restore {}", self.nodes[i].name);
                }
                // What its children were told before the restore may be gone.
                self.forgive_acks_of_children(i)?;
                // The audit is in the file: the restore took back what it
                // recorded since the backup.
                self.refusals.retain(|(at, _)| *at != i);
            }
            _ => {
                // Closing checkpoints the WAL, so the copy is a whole database.
                node.ledger = None;
                let backup = node.path.with_extension("backup");
                std::fs::copy(&node.path, &backup).map_err(|e| e.to_string())?;
                node.backup = Some(backup);
                node.backup_step = self.step;
                self.drop_pipes_of(i);
                self.nodes[i].open()?;
            }
        }
        Ok(())
    }

    /// A phone is replaced: once its township holds everything it wrote, it
    /// starts again empty with a new replica id, under the same certificate.
    fn reinstall_device(&mut self) -> Sim<()> {
        let devs = self.devices();
        let i = devs[self.rng.random_range(0..devs.len())];
        let Some(k) = self.links.iter().position(|l| l.child == i && !l.peer) else { return Ok(()) };
        let p = self.links[k].parent;
        if self.nodes[p].ledger.is_none() {
            return Ok(());
        }
        let mine: Vec<(Hash, CaseId)> =
            self.expected.iter().filter(|(_, (_, _, by))| *by == i).map(|(h, (c, _, _))| (*h, *c)).collect();
        for (h, c) in &mine {
            if !self.nodes[p].ledger().holds_change(*c, h).map_err(|e| e.to_string())? {
                return Ok(());
            }
        }
        self.drop_pipes_of(i);
        self.last_reinstall = self.step;
        if trace_on() {
            eprintln!("reinstall {}", self.nodes[i].name);
        }
        let node = &mut self.nodes[i];
        node.ledger = None;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", node.path.display()));
        }
        let init = InitOptions {
            tier: Tier::Device,
            name: node.name.clone(),
            role: node.role,
            scope: node.scope.clone(),
            grid: None,
        };
        // A fresh seed, never used by an open of this node before or after
        // (a repeated seed would repeat actor and case ids).
        let opts =
            LedgerOptions { seed: Some(node.seed ^ 0x5eed_5eed_5eed_5eed), durability: Durability::Relaxed, key: None };
        node.seed = node.seed.wrapping_add(1);
        let mut l = Ledger::init(&node.path, init, Arc::new(node.clock.clone()), opts).map_err(|e| e.to_string())?;
        l.add_grant(&node.grant).map_err(|e| e.to_string())?;
        node.ledger = Some(l);
        self.policy_seen[i] = 0;
        self.restored_at[i] = self.step;
        self.acked_seen[i] = 0;
        // Frames the old phone sent cannot arrive for the new one.
        for l in &mut self.links {
            if l.child == i {
                l.sent_pushes.clear();
            }
        }
        // Its rogue edits and imports went with the old phone, and so did the audit of what
        // it refused (a phone refuses in sessions and files with other phones).
        self.refusals.retain(|(at, _)| *at != i);
        self.rogue.retain(|_, (_, by)| *by != i);
        self.imported.retain(|(by, _)| *by != i);
        Ok(())
    }

    fn skew_clock(&mut self) {
        let devs = self.devices();
        if let Some(&i) = devs.get(self.rng.random_range(0..devs.len().max(1))) {
            self.nodes[i].skew = self.rng.random_range(-5 * DAY_MS..5 * DAY_MS);
        }
    }

    fn timeouts(&mut self) -> Sim<()> {
        for k in 0..self.links.len() {
            let (c, p) = (self.links[k].child, self.links[k].parent);
            let (cn, pn) = (self.node_now(c), self.node_now(p));
            self.links[k]
                .pipes
                .retain_mut(|pipe| pipe.child.handle_timeout(cn).is_ok() && pipe.parent.handle_timeout(pn).is_ok());
        }
        Ok(())
    }

    fn check_bounds(&mut self) -> Sim<()> {
        for l in &self.links {
            for pipe in &l.pipes {
                if pipe.to_parent.len() > MAX_QUEUED_FRAMES || pipe.to_child.len() > MAX_QUEUED_FRAMES {
                    return Err("a session's outbox grew without bound".into());
                }
            }
        }
        // The pending tables grow slowly and reading them costs a query per
        // replica: every 10th step is often enough to see one run away.
        if !self.step.is_multiple_of(10) {
            return Ok(());
        }
        for n in &mut self.nodes {
            if let Some(l) = &n.ledger {
                let pending = l.pending_count().map_err(|e| e.to_string())?;
                if pending > MAX_PENDING {
                    return Err(format!("{} keeps {pending} pending changes", n.name));
                }
            }
        }
        Ok(())
    }

    /// Heals every link and runs clean sessions, bottom-up then top-down,
    /// until a whole pass moves nothing.
    fn heal(&mut self) -> Sim<()> {
        for l in &mut self.links {
            l.up = true;
            l.pipes.clear();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].ledger.is_none() {
                self.nodes[i].open()?;
            }
        }
        // Leaves first, so each pass carries changes one tier further. Only
        // the tree: what devices learnt from each other must travel up it.
        let mut order: Vec<usize> = (0..self.links.len()).filter(|&k| !self.links[k].peer).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(self.nodes[self.links[k].child].kind == Kind::Device));
        let mut last = Vec::new();
        for _pass in 0..8 {
            for &k in order.iter().chain(order.iter().rev()) {
                self.settle_link(k)?;
            }
            let sizes = self.sizes()?;
            if sizes == last {
                return Ok(());
            }
            last = sizes;
        }
        Err("replicas did not quiesce after 8 healing passes".into())
    }

    fn sizes(&mut self) -> Sim<Vec<[i64; 4]>> {
        self.nodes.iter_mut().map(|n| n.ledger().counts().map_err(|e| e.to_string())).collect()
    }

    fn settle_link(&mut self, k: usize) -> Sim<()> {
        let (c, p) = (self.links[k].child, self.links[k].parent);
        let pipe = self.new_pipe(c, p, false, Vec::new())?;
        self.links[k].pipes = vec![pipe];
        for _ in 0..10_000 {
            if !self.deliver_link(k, true)? {
                break;
            }
        }
        let Some(pipe) = self.links[k].pipes.first() else {
            return Err(format!("session {}→{} ended while healing", self.nodes[c].name, self.nodes[p].name));
        };
        if !(pipe.child.is_caught_up() && pipe.parent.is_caught_up()) {
            return Err(format!("session {}→{} did not catch up", self.nodes[c].name, self.nodes[p].name));
        }
        self.links[k].pipes.clear();
        Ok(())
    }

    fn rows(&mut self, i: usize, scope: &AdminCode) -> Sim<Vec<CaseRow>> {
        let mut r = self.nodes[i]
            .ledger()
            .list(&ListFilter { within: Some(scope.clone()), ..Default::default() })
            .map_err(|e| e.to_string())?;
        r.sort_by_key(|r| r.id);
        Ok(r)
    }

    fn check_invariants(&mut self) -> Sim<()> {
        let county = 0;
        // Same scope, same data: every replica against the county.
        for i in 1..self.nodes.len() {
            let scope = self.nodes[i].scope.clone();
            let mine = self.nodes[i].ledger().digest(&scope).map_err(|e| e.to_string())?;
            let top = self.nodes[county].ledger().digest(&scope).map_err(|e| e.to_string())?;
            if mine != top {
                return Err(format!(
                    "{} and the county differ within {scope}: {} vs {} cases{}",
                    self.nodes[i].name,
                    mine.len(),
                    top.len(),
                    first_difference(&mine, &top)
                ));
            }
            if self.rows(i, &scope)? != self.rows(county, &scope)? {
                return Err(format!("{} and the county project different rows within {scope}", self.nodes[i].name));
            }
            // Nothing outside a replica's scope, but what its user imported.
            let all = self.nodes[i].ledger().list(&ListFilter::default()).map_err(|e| e.to_string())?;
            let imported: BTreeSet<CaseId> = self.imported.iter().filter(|(by, _)| *by == i).map(|(_, c)| *c).collect();
            if let Some(out) = all.iter().find(|r| !within(&scope, &r.village) && !imported.contains(&r.id)) {
                return Err(format!(
                    "{} holds case {} of {} outside its scope {scope}",
                    self.nodes[i].name, out.number, out.village
                ));
            }
        }
        // Every change written is everywhere its village is in scope.
        let expected: Vec<(Hash, CaseId, AdminCode)> =
            self.expected.iter().map(|(h, (c, v, _))| (*h, *c, v.clone())).collect();
        for (hash, case, village) in &expected {
            for i in 0..self.nodes.len() {
                if self.nodes[i].scope.contains(village)
                    && !self.nodes[i].ledger().holds_change(*case, hash).map_err(|e| e.to_string())?
                {
                    return Err(format!("change {} of case {case} missing at {}", hex(hash), self.nodes[i].name));
                }
            }
        }
        // No case that nobody wrote.
        for r in self.rows(county, &AdminCode::parse(COUNTY).map_err(|e| e.to_string())?)? {
            if !self.created.contains(&r.id) {
                return Err(format!("case {} appeared that nobody wrote", r.number));
            }
        }
        // Refused edits stay refused, and every refusal is in the audit.
        let rogue: Vec<(Hash, CaseId)> = self.rogue.iter().map(|(h, (c, _))| (*h, *c)).collect();
        for (hash, case) in &rogue {
            for i in 0..self.nodes.len() {
                if self.nodes[i].kind != Kind::Device
                    && self.nodes[i].ledger().holds_change(*case, hash).map_err(|e| e.to_string())?
                {
                    return Err(format!(
                        "change {} written outside its author's scope was accepted by {}",
                        hex(hash),
                        self.nodes[i].name
                    ));
                }
            }
        }
        let refusals = std::mem::take(&mut self.refusals);
        for (at, hash) in &refusals {
            let prefix = hex(hash);
            let audit = self.nodes[*at].ledger().audit(100_000).map_err(|e| e.to_string())?;
            if !audit.iter().any(|a| a.detail.contains(&prefix)) {
                return Err(format!("refused change {prefix} is not in {}'s audit", self.nodes[*at].name));
            }
        }
        // Every replica computes with the newest policy the county issued
        // (they are all in the county: every one is entitled to it).
        for n in &mut self.nodes {
            let held = n.ledger().policy().version();
            if held != self.policy.0 {
                return Err(format!(
                    "{} computes with policy version {held}, the county issued {}",
                    n.name, self.policy.0
                ));
            }
        }
        for n in &mut self.nodes {
            let dups = n.ledger().duplicate_log_rows().map_err(|e| e.to_string())?;
            if dups > 0 {
                return Err(format!("{}: {dups} changes logged twice", n.name));
            }
            let pending = n.ledger().counts().map_err(|e| e.to_string())?[2];
            if pending > 0 {
                return Err(format!("{}: {pending} changes still pending after healing", n.name));
            }
            n.ledger().integrity_check().map_err(|e| format!("{}: {e}", n.name))?;
        }
        Ok(())
    }
}

fn within(scope: &AdminCode, village: &str) -> bool {
    AdminCode::parse(village).is_ok_and(|v| scope.contains(&v))
}

fn hex(h: &Hash) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn first_difference(a: &[(CaseId, Hash)], b: &[(CaseId, Hash)]) -> String {
    let am: BTreeMap<_, _> = a.iter().cloned().collect();
    let bm: BTreeMap<_, _> = b.iter().cloned().collect();
    for (k, v) in &am {
        if bm.get(k) != Some(v) {
            return format!(" (first: case {k})");
        }
    }
    for k in bm.keys() {
        if !am.contains_key(k) {
            return format!(" (first: case {k} missing)");
        }
    }
    String::new()
}

/// A push of any version: a version-1 Push (3), a version-2 Pack (30), or version 4's whole
/// cases of a first sync (32).
fn is_push(frame: &[u8]) -> bool {
    matches!(frame.get(5), Some(&3) | Some(&30) | Some(&32))
}

fn is_signed_policy(frame: &[u8]) -> bool {
    matches!(wire::decode(frame.get(4..).unwrap_or(&[])), Ok(Message::Policy { signed: Some(_), .. }))
}

/// Remembers the change hashes of a push about to be delivered.
fn note_push(frame: &[u8], into: &mut VecDeque<Vec<(CaseId, Hash)>>) {
    let key = |case: CaseId, bytes: &[u8]| {
        fq_core::doc::parse_change(bytes).ok().map(|c| (case, fq_core::doc::change_key(&c).0))
    };
    match wire::decode(frame.get(4..).unwrap_or(&[])) {
        Ok(Message::Push { envelopes, .. }) => {
            into.push_back(envelopes.iter().filter_map(|e| key(e.case, &e.change)).collect());
        }
        Ok(Message::Pack { runs, .. }) => {
            into.push_back(runs.iter().flat_map(|r| r.changes.iter().filter_map(|c| key(r.case, c))).collect());
        }
        Ok(Message::Cases { cases, .. }) => {
            // A document that does not load is refused whole, so it acknowledges nothing.
            let changes = cases.iter().flat_map(|c| {
                let read = fq_core::doc::document_changes(&c.document).unwrap_or_default();
                read.into_iter().map(move |(hash, _)| (c.case, hash))
            });
            into.push_back(changes.collect());
        }
        _ => {}
    }
}
