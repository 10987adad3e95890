//! The façade a device, a server or a test works through.
//!
//! Every operation is one SQLite transaction: it loads the case document,
//! makes one Automerge change, saves the snapshot, re-projects the row and
//! appends the change to the log, then commits. If anything fails, nothing
//! is written and the cached document is dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use automerge::ActorId;
use ed25519_dalek::VerifyingKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::case::{
    AdminCode, AdminLevel, CaseId, CaseNumber, Category, EventKind, InputError, Level, MAX_PARTIES, MAX_TEXT_CHARS,
    MAX_TITLE_CHARS, Outcome, Party, ReplicaId, Risk, RiskFlag, Role, Status, check_line, check_text,
};
use crate::clock::{Clock, Timestamp};
use crate::doc::{
    self, Author, CaseDoc, CaseState, ConflictKind, DocError, FieldConflict, FieldEdit, Hash, HistoryEntry, NewCaseDoc,
    NewEvent,
};
use crate::faults::{self, Bug};
use crate::policy::{Policy, PolicyError, PolicyInForce, SignedPolicy};
use crate::roster::{Lookup, Staff, StaffId};
use crate::store::{
    AuditEntry, CaseRow, EventRow, ListFilter, META_REPROJECT, NewAudit, OpenMode, PendingChange, Store, StoreError, Tx,
};
use crate::trust::{self, GrantRole};
use crate::vault::DataKey;

mod replica;

pub(crate) use replica::resolve_key;
pub use replica::{OutgoingBatch, PeerInfo, chain_position, heads_digest, run_key};

/// How many case documents a ledger keeps loaded (about 20 KiB each).
const DOC_CACHE_CASES: usize = 256;

/// What kind of replica a ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// A field device used by one person.
    Device,
    /// A township server.
    Township,
    /// The county server.
    County,
}

impl Tier {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Township => "township",
            Tier::County => "county",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        [Tier::Device, Tier::Township, Tier::County].into_iter().find(|t| t.code() == s)
    }
}

/// Who a replica belongs to and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// This replica's id; kept for the life of the file.
    pub replica: ReplicaId,
    /// Device, township server or county server.
    pub tier: Tier,
    /// The person (for a device) or the server's name.
    pub name: String,
    /// The person's role.
    pub role: Role,
    /// The division this replica covers.
    pub scope: AdminCode,
    /// The grid, for a grid worker.
    pub grid: Option<u32>,
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Device or server.
    pub tier: Tier,
    /// The person or server name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// Their division.
    pub scope: AdminCode,
    /// Their grid.
    pub grid: Option<u32>,
}

/// Knobs for opening a ledger.
#[derive(Debug, Clone, Default)]
pub struct LedgerOptions {
    /// Seed for actor ids and case ids. `None` draws from the OS; the
    /// simulator sets it so runs replay exactly.
    pub seed: Option<u64>,
    /// How hard each commit waits for the disk.
    pub durability: Durability,
    /// The key of an encrypted ledger file (`vault` unwraps it); `None` for a
    /// plain file. [`Ledger::init`] with a key creates the file encrypted.
    pub key: Option<DataKey>,
}

pub use crate::store::Durability;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The user or a peer gave invalid input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// No ledger has been set up at this place.
    #[error("no ledger here; run `fq init` first")]
    NotInitialized,
    /// `init` on a ledger that already exists.
    #[error("a ledger already exists here for {name} ({scope})")]
    AlreadyInitialized {
        /// Its owner.
        name: String,
        /// Its scope.
        scope: String,
    },
    /// No case matches the reference.
    #[error("no case matches {reference:?}")]
    CaseNotFound {
        /// What was given.
        reference: String,
    },
    /// Several cases match the reference.
    #[error("{reference:?} matches several cases: {}", candidates.join(", "))]
    AmbiguousCase {
        /// What was given.
        reference: String,
        /// The matching case numbers.
        candidates: Vec<String>,
    },
    /// The case or division is outside what this replica's owner may touch.
    #[error("{what} {code} is outside your area {scope}")]
    OutOfScope {
        /// What was out of scope.
        what: &'static str,
        /// Its code.
        code: String,
        /// The allowed scope.
        scope: String,
    },
    /// The action does not fit the case's current state.
    #[error("cannot {action} case {number}: it is {status}")]
    Transition {
        /// What was tried.
        action: &'static str,
        /// The case.
        number: String,
        /// Its current status (or a short reason).
        status: String,
    },
    /// The role may not do this.
    #[error("a {role} cannot {action}")]
    Role {
        /// The role.
        role: Role,
        /// What was tried.
        action: &'static str,
    },
    /// Settling or failing a case below the level that handles it, or that
    /// it was escalated to and that has not accepted it yet.
    #[error("cannot {action} case {number} below the {} level, which it is at or was sent to", level.code())]
    BelowLevel {
        /// `settle` or `fail`.
        action: &'static str,
        /// The case.
        number: String,
        /// The level that must do it.
        level: Level,
    },
    /// Archiving a settled case whose follow-up visits are not all made or waived.
    #[error("cannot archive case {number}: {pending} follow-up visits are still due")]
    FollowUpsPending {
        /// The case.
        number: String,
        /// Visits still due.
        pending: u32,
    },
    /// Supervising a case from a level not above the case's.
    #[error("cannot supervise case {number} at the {} level from the {} level", case_level.code(), own_level.code())]
    SuperviseLevel {
        /// The case.
        number: String,
        /// The case's level.
        case_level: Level,
        /// The supervisor's level.
        own_level: Level,
    },
    /// Answering a supervision order on a case that has none open.
    #[error("case {number} has no supervision order to answer")]
    NoSupervision {
        /// The case.
        number: String,
    },
    /// Waiving follow-ups of a case that owes none.
    #[error("case {number} has no follow-up visits to waive")]
    NoFollowUps {
        /// The case.
        number: String,
    },
    /// A person's name that several people in the roster share.
    #[error("{input:?} names several people: {}", candidates.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "))]
    AmbiguousPerson {
        /// What was typed.
        input: String,
        /// Everyone it may mean.
        candidates: Vec<Staff>,
    },
    /// A name or staff id the roster does not list.
    #[error("{input:?} is not in the county roster")]
    UnknownPerson {
        /// What was typed.
        input: String,
    },
    /// A county policy that is not installed: forged, unsigned, for another
    /// county, or unreadable.
    #[error("policy refused: {0}")]
    Policy(#[from] PolicyError),
    /// A case number already in the ledger (an import of cases it holds).
    #[error("case number {number} is already in the ledger")]
    DuplicateNumber {
        /// The number.
        number: String,
    },
    /// The ledger was opened read-only.
    #[error("the ledger is open read-only")]
    ReadOnly,
    /// The SQLite file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The case document failed.
    #[error(transparent)]
    Doc(#[from] DocError),
}

impl LedgerError {
    /// Whether the error is the user's to fix (bad input or usage): exit code 2.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, LedgerError::Store(_) | LedgerError::Doc(_))
    }
}

/// What a new case starts with.
#[derive(Debug, Clone)]
pub struct NewCase {
    /// Category.
    pub category: Category,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Parties.
    pub parties: Vec<Party>,
    /// Risk.
    pub risk: Risk,
    /// Risk flags (民转刑...).
    pub flags: Vec<RiskFlag>,
    /// Village; defaults to the ledger's own village.
    pub village: Option<AdminCode>,
    /// Grid; defaults to the ledger owner's grid.
    pub grid: Option<u32>,
}

/// A case as `show` presents it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    /// Everything the document says.
    #[serde(flatten)]
    pub state: CaseState,
    /// Fields holding concurrent values.
    pub conflicts: Vec<FieldConflict>,
    /// Every change, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

/// A change leaving this ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingChange {
    /// Position in this ledger's log.
    pub log_seq: i64,
    /// The case.
    pub case: CaseId,
    /// Change hash.
    pub hash: Hash,
    /// Raw change bytes.
    pub bytes: Vec<u8>,
    /// Where this ledger got it (`None`: written here).
    pub received_from: Option<ReplicaId>,
    /// The authoring device's public key, if the change came signed.
    pub signer: Option<[u8; 32]>,
    /// The authoring device's signature, if one travelled with it.
    pub signature: Option<Vec<u8>>,
    /// The case's village.
    pub village: String,
}

/// A change arriving from another ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingChange {
    /// The case it claims to belong to.
    pub case: CaseId,
    /// Raw change bytes.
    pub bytes: Vec<u8>,
    /// The authoring device's public key.
    pub signer: Option<[u8; 32]>,
    /// The authoring device's signature, kept and relayed unchanged.
    pub signature: Option<Vec<u8>>,
}

impl From<OutgoingChange> for IncomingChange {
    /// What one ledger sends is what the other receives, provenance intact.
    fn from(c: OutgoingChange) -> Self {
        IncomingChange { case: c.case, bytes: c.bytes, signer: c.signer, signature: c.signature }
    }
}

/// How strictly [`Ledger::apply_changes`] admits changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accept well-formed changes without signatures: two ledgers of one
    /// owner, tests, imports.
    Open,
    /// Sync: every change must be signed by a device whose grant this ledger
    /// holds, and the case's village must lie inside that grant's scope.
    Signed,
}

/// Why a change was refused on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RefuseReason {
    /// The bytes are not an acceptable Automerge change.
    Malformed,
    /// No signature, or one that does not verify.
    BadSignature,
    /// Signed by a key with no known grant.
    UnknownSigner,
    /// The case lies outside the author's scope.
    OutOfScope,
    /// The author's role may not write changes (servers only relay).
    Role,
    /// Automerge refused or panicked on it, or it names another case.
    Quarantined,
}

impl RefuseReason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            RefuseReason::Malformed => "malformed",
            RefuseReason::BadSignature => "bad-signature",
            RefuseReason::UnknownSigner => "unknown-signer",
            RefuseReason::OutOfScope => "out-of-scope",
            RefuseReason::Role => "role",
            RefuseReason::Quarantined => "quarantined",
        }
    }
}

/// A change refused on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The case it claimed.
    pub case: CaseId,
    /// Its hash, if it parsed.
    #[serde(skip)]
    pub hash: Option<Hash>,
    /// Why, as a code.
    pub reason: RefuseReason,
    /// Why, in words.
    pub detail: String,
}

/// What [`Ledger::apply_changes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Changes newly applied.
    pub applied: usize,
    /// Changes already held.
    pub duplicates: usize,
    /// Changes kept until their dependencies arrive.
    pub pending: usize,
    /// Changes refused, with reasons (also written to the audit).
    pub refused: Vec<Refusal>,
}

/// What [`Ledger::install_policy`] did with an offered policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyInstall {
    /// It was newer and is now in force; the deadlines of open cases were
    /// recomputed with it.
    Installed {
        /// The version in force before.
        previous: u64,
        /// The version now in force.
        version: u64,
    },
    /// It was not newer than the one in force and was ignored.
    Stale {
        /// The version offered.
        offered: u64,
        /// The version in force.
        current: u64,
    },
}

/// A device clock off by more than this from its server's, at a sync, is
/// corrected (and `fq sync` warns about it). Below it, clocks agree well
/// enough for deadlines counted in days.
pub const CLOCK_SKEW_TOLERANCE_MS: i64 = 10 * 60 * 1000;

/// Which clock a ledger's "now" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum TimeSource {
    /// This replica's own clock: a server's, or a device clock that agreed
    /// with its server at the last sync (or never synced).
    Local,
    /// A device clock found off at its last sync, corrected by what it was off.
    Corrected {
        /// How far ahead of the server the device clock was (negative: behind), in ms.
        offset_ms: i64,
        /// When that was measured (corrected time).
        measured_at: Timestamp,
    },
}

/// A person named on a case: someone of the roster, or (with no roster yet)
/// a name as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The name.
    pub name: String,
    /// Their roster id, when known.
    pub id: Option<StaffId>,
}

/// A case brought in from a spreadsheet (`fq case import`), checked.
#[derive(Debug, Clone)]
pub struct ImportedCase {
    /// Its number in the old ledger, kept in the description; `None` if it had none.
    pub old_number: Option<String>,
    /// The case as it starts.
    pub case: NewCase,
    /// When the old ledger recorded it.
    pub recorded_at: Timestamp,
    /// Where it stands now.
    pub status: Status,
    /// The level handling it.
    pub level: Level,
    /// When it last changed in the old ledger (the time of its status).
    pub updated_at: Timestamp,
    /// The responsible person, if any.
    pub responsible: Option<Named>,
}

/// A replica's case ledger.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    clock: Arc<dyn Clock>,
    identity: Identity,
    actor: ActorId,
    rng: ChaCha8Rng,
    policy: Arc<PolicyInForce>,
    read_only: bool,
    operator: Author,
    /// Device clock minus server clock found at the last sync, if over
    /// [`CLOCK_SKEW_TOLERANCE_MS`], and when.
    clock_offset: Option<(i64, Timestamp)>,
    cache: BTreeMap<CaseId, (CaseDoc, u64)>,
    tick: u64,
}

const META_REPLICA: &str = "replica_id";
const META_TIER: &str = "tier";
const META_NAME: &str = "name";
const META_ROLE: &str = "role";
const META_SCOPE: &str = "scope";
const META_GRID: &str = "grid";
const META_CREATED: &str = "created_at";
/// Device clock minus its server's at the last sync: `OFFSET_MS@MEASURED_AT`.
const META_CLOCK_OFFSET: &str = "clock_offset";
/// The device's enrolment (its certificate bundle, private key included):
/// kept inside the ledger file, so it is encrypted with it (ADR 10).
const META_ENROLMENT: &str = "enrolment";

impl Ledger {
    /// Creates a new ledger file at `path` for the given owner.
    pub fn init(
        path: &Path,
        init: InitOptions,
        clock: Arc<dyn Clock>,
        opts: LedgerOptions,
    ) -> Result<Self, LedgerError> {
        let store = Store::open_with_key(path, OpenMode::Create, opts.durability, opts.key.as_ref())?;
        Self::init_store(store, init, clock, opts)
    }

    /// Creates a new ledger in memory (tests, simulator).
    pub fn init_in_memory(init: InitOptions, clock: Arc<dyn Clock>, opts: LedgerOptions) -> Result<Self, LedgerError> {
        Self::init_store(Store::open_in_memory()?, init, clock, opts)
    }

    fn init_store(
        mut store: Store,
        init: InitOptions,
        clock: Arc<dyn Clock>,
        opts: LedgerOptions,
    ) -> Result<Self, LedgerError> {
        if let Some(existing) = read_identity(&store)? {
            return Err(LedgerError::AlreadyInitialized { name: existing.name, scope: existing.scope.to_string() });
        }
        let name = check_line("name", &init.name, 50)?;
        let expected = match init.tier {
            Tier::Device => init.role.scope_level(),
            Tier::Township => AdminLevel::Township,
            Tier::County => AdminLevel::County,
        };
        if init.scope.level() != expected {
            return Err(InputError::AdminCode {
                input: init.scope.to_string(),
                reason: match expected {
                    AdminLevel::Village => "this role works in one village: give a 12-digit village code",
                    AdminLevel::Township => "this role works in a township: give a 9-digit township code",
                    AdminLevel::County => "this role works for the county: give a 6-digit county code",
                },
            }
            .into());
        }
        let mut rng = seeded(opts.seed);
        let replica = ReplicaId::from_bytes(rng.random());
        let tx = store.transaction()?;
        tx.set_meta(META_REPLICA, &replica.to_string())?;
        tx.set_meta(META_TIER, init.tier.code())?;
        tx.set_meta(META_NAME, &name)?;
        tx.set_meta(META_ROLE, init.role.code())?;
        tx.set_meta(META_SCOPE, init.scope.as_str())?;
        if let Some(g) = init.grid {
            tx.set_meta(META_GRID, &g.to_string())?;
        }
        tx.set_meta(META_CREATED, &clock.now().0.to_string())?;
        tx.commit()?;
        Self::from_store(store, clock, Some(rng), false)
    }

    /// Opens an existing ledger file. Each open writes under a fresh actor id.
    pub fn open(path: &Path, clock: Arc<dyn Clock>, opts: LedgerOptions) -> Result<Self, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::NotInitialized);
        }
        let store = Store::open_with_key(path, OpenMode::ReadWrite, opts.durability, opts.key.as_ref())?;
        Self::from_store(store, clock, Some(seeded(opts.seed)), false)
    }

    /// Opens an existing plain ledger file for reading only (safe beside a running server).
    pub fn open_read_only(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        Self::open_read_only_with_key(path, clock, None)
    }

    /// Opens an existing ledger file for reading only, with its key if it is encrypted.
    pub fn open_read_only_with_key(
        path: &Path,
        clock: Arc<dyn Clock>,
        key: Option<&DataKey>,
    ) -> Result<Self, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::NotInitialized);
        }
        let store = Store::open_with_key(path, OpenMode::ReadOnly, Durability::Full, key)?;
        Self::from_store(store, clock, None, true)
    }

    /// The device's enrolment as it was saved ([`Ledger::save_enrolment`]), if any.
    pub fn enrolment(&self) -> Result<Option<String>, LedgerError> {
        Ok(self.store.meta(META_ENROLMENT)?)
    }

    /// Keeps the device's enrolment (its certificate bundle, with its private
    /// key) inside the ledger file, replacing an earlier one. The ledger does
    /// not read it; `fq sync` does.
    pub fn save_enrolment(&mut self, bundle: &str) -> Result<(), LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        Ok(self.store.set_meta_now(META_ENROLMENT, bundle)?)
    }

    fn from_store(
        store: Store,
        clock: Arc<dyn Clock>,
        rng: Option<ChaCha8Rng>,
        read_only: bool,
    ) -> Result<Self, LedgerError> {
        let identity = read_identity(&store)?.ok_or(LedgerError::NotInitialized)?;
        if identity.tier != Tier::Device && !read_only {
            store.ensure_relay_indexes()?;
        }
        let mut rng = rng.unwrap_or_else(|| seeded(Some(0)));
        let actor = doc::actor_for(identity.replica.device(), rng.random());
        // A stored policy was verified when it was installed; one this build
        // cannot read (damaged) leaves the default in force until the next
        // sync brings a good copy.
        let policy = match store.policy()? {
            Some((_, bytes)) => {
                SignedPolicy::decode_unverified(&bytes).and_then(PolicyInForce::from_signed).unwrap_or_default()
            }
            None => PolicyInForce::default(),
        };
        let clock_offset = store.meta(META_CLOCK_OFFSET)?.and_then(|v| {
            let (offset, at) = v.split_once('@')?;
            Some((offset.parse().ok()?, Timestamp(at.parse().ok()?)))
        });
        let mut operator = Author { name: identity.name.clone(), role: identity.role, id: None };
        operator.id = who(&policy, &operator.name, &identity.scope);
        let mut ledger = Self {
            operator,
            store,
            clock,
            identity,
            actor,
            rng,
            policy: Arc::new(policy),
            read_only,
            clock_offset: clock_offset.filter(|(o, _): &(i64, Timestamp)| o.abs() > CLOCK_SKEW_TOLERANCE_MS),
            cache: BTreeMap::new(),
            tick: 0,
        };
        if !read_only && ledger.store.meta(META_REPROJECT)?.is_some() {
            ledger.reproject_all()?;
        }
        Ok(ledger)
    }

    /// Rebuilds every case's projected row, events and search text from its
    /// document (after a migration added columns SQL cannot fill).
    fn reproject_all(&mut self) -> Result<(), LedgerError> {
        let policy = Arc::clone(&self.policy);
        let tx = self.store.transaction()?;
        for id in tx.case_ids()? {
            let bytes = tx.snapshot(id)?.ok_or(StoreError::BadValue { what: "missing snapshot" })?;
            let mut doc = CaseDoc::load(&bytes, self.actor.clone())?;
            let state = doc.read(policy.policy())?;
            put_doc(&tx, &mut doc, &state)?;
        }
        tx.delete_meta(META_REPROJECT)?;
        tx.commit()?;
        Ok(())
    }

    /// Who this ledger belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The file underneath, for the audit's reads (which only `store` turns
    /// into SQL).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A case's document, through the cache.
    pub(crate) fn case_doc(&mut self, case: CaseId) -> Result<&mut CaseDoc, LedgerError> {
        self.doc(case)
    }

    /// The actor id documents are loaded with (never used to write by a
    /// read-only ledger).
    pub(crate) fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// The county policy in force, with its roster.
    pub fn policy(&self) -> &PolicyInForce {
        &self.policy
    }

    /// The time now: the replica's clock, corrected on a device whose clock
    /// was found off at its last sync (see [`Ledger::time_source`]).
    pub fn now(&self) -> Timestamp {
        let raw = self.clock.now();
        match self.clock_offset {
            Some((offset, _)) => Timestamp(raw.0.saturating_sub(offset)),
            None => raw,
        }
    }

    /// Where [`Ledger::now`] comes from, so that what is computed with it can say so.
    pub fn time_source(&self) -> TimeSource {
        match self.clock_offset {
            Some((offset_ms, measured_at)) => TimeSource::Corrected { offset_ms, measured_at },
            None => TimeSource::Local,
        }
    }

    /// Records the parent's clock as a sync saw it: `parent_now` from the
    /// parent, `local_now` this replica's own clock reading when it arrived.
    /// A device whose clock is off by more than [`CLOCK_SKEW_TOLERANCE_MS`]
    /// corrects its time from then on (servers keep their own: they are the
    /// trusted clocks receive times are stamped with). Returns the offset.
    pub fn note_parent_clock(&mut self, parent_now: Timestamp, local_now: Timestamp) -> Result<i64, LedgerError> {
        let offset = local_now.0.saturating_sub(parent_now.0);
        if self.identity.tier != Tier::Device || self.read_only {
            return Ok(offset);
        }
        let skewed = offset.abs() > CLOCK_SKEW_TOLERANCE_MS;
        let before = self.clock_offset;
        self.clock_offset = skewed.then_some((offset, parent_now));
        if before.is_some() || skewed {
            let tx = self.store.transaction()?;
            match self.clock_offset {
                Some((o, at)) => tx.set_meta(META_CLOCK_OFFSET, &format!("{o}@{}", at.0))?,
                None => tx.delete_meta(META_CLOCK_OFFSET)?,
            }
            tx.commit()?;
        }
        Ok(offset)
    }

    /// Installs a county policy signed by the CA whose key is `ca`, if it is
    /// newer than the one in force: it is kept in the file, and every open
    /// case's deadline is recomputed with it (in SQL; no document is loaded).
    /// A forged, unsigned or other county's policy is an error; an older or
    /// equal version is [`PolicyInstall::Stale`]. Nothing is written unless
    /// it is installed.
    pub fn install_policy(
        &mut self,
        bytes: &[u8],
        ca: &ed25519_dalek::VerifyingKey,
    ) -> Result<PolicyInstall, LedgerError> {
        self.check_writable()?;
        let signed = SignedPolicy::decode(bytes, ca)?;
        if signed.county() != &self.identity.scope.county() {
            return Err(PolicyError::Malformed("the policy is for another county").into());
        }
        let current = self.policy.version();
        let older_accepted = faults::on(Bug::AcceptOlderPolicy) && signed.version() != current;
        if signed.version() <= current && !older_accepted {
            return Ok(PolicyInstall::Stale { offered: signed.version(), current });
        }
        let version = signed.version();
        let in_force = PolicyInForce::from_signed(signed)?;
        let now = self.now();
        let tx = self.store.transaction()?;
        tx.set_policy(version, bytes, now)?;
        let deadlines = in_force.policy().deadlines;
        tx.reproject_deadlines(|l| deadlines.days(l))?;
        tx.commit()?;
        self.policy = Arc::new(in_force);
        self.operator.id = who(&self.policy, &self.operator.name, &self.identity.scope);
        // Cached documents are still right; their rows were updated above.
        Ok(PolicyInstall::Installed { previous: current, version })
    }

    /// The person a name or staff id typed by a user stands for: with a
    /// roster, exactly one person of it (a shared name must be given as an
    /// id); with none yet, the name as typed.
    pub fn person(&self, input: &str) -> Result<Named, LedgerError> {
        person_in(&self.policy, input, None)
    }

    /// Like [`Ledger::person`], for a case in `village`: a name several
    /// people share is that of the one who works there (the village, else
    /// its township, else the county), if exactly one does. A township
    /// officer assigning a case to 姚玉 means the 姚玉 of that case's village.
    pub fn person_at(&self, input: &str, village: &AdminCode) -> Result<Named, LedgerError> {
        person_in(&self.policy, input, Some(village.as_str()))
    }

    /// Who is using this replica, with their roster id once it is known.
    pub fn operator(&self) -> &Author {
        &self.operator
    }

    fn author(&self) -> Author {
        self.operator.clone()
    }

    /// Changes who is using this replica from now on (phones are shared in
    /// villages). Later changes are authored under this name and role.
    ///
    /// The name and role are what the change records; they grant nothing:
    /// the replica's scope still bounds every edit, and peers authorize a
    /// change by the certificate of the device that signed it.
    pub fn set_operator(&mut self, name: &str, role: Role) -> Result<(), LedgerError> {
        let name = check_line("name", name, 50)?;
        let id = who(&self.policy, &name, &self.identity.scope);
        self.operator = Author { name, role, id };
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<(), LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        Ok(())
    }

    fn check_scope(&self, what: &'static str, code: &str) -> Result<(), LedgerError> {
        let inside = AdminCode::parse(code).map(|c| self.identity.scope.contains(&c)).unwrap_or(false);
        if inside {
            Ok(())
        } else {
            Err(LedgerError::OutOfScope { what, code: code.to_owned(), scope: self.identity.scope.to_string() })
        }
    }

    /// Records a new case.
    ///
    /// The county policy applies: a case of a category it names starts at the
    /// township, and a high-risk or flagged case recorded at the village is
    /// escalated to the township at once (a second change, by the same person).
    pub fn create_case(&mut self, new: NewCase) -> Result<CaseState, LedgerError> {
        self.create_inner(new, None)
    }

    /// Creates a case; `imported_at` is an old ledger's recording time (no
    /// routing then: that ledger already says where the case stands).
    fn create_inner(&mut self, new: NewCase, imported_at: Option<Timestamp>) -> Result<CaseState, LedgerError> {
        self.check_writable()?;
        let title = check_line("title", &new.title, MAX_TITLE_CHARS)?;
        let description = match new.description.trim() {
            "" => String::new(),
            d => check_text("description", d, MAX_TEXT_CHARS)?,
        };
        if new.parties.len() > MAX_PARTIES {
            return Err(InputError::Text { what: "parties", reason: "too many parties" }.into());
        }
        let village = match (new.village, self.identity.scope.level()) {
            (Some(v), _) => v,
            (None, AdminLevel::Village) => self.identity.scope.clone(),
            (None, _) => {
                return Err(InputError::AdminCode {
                    input: self.identity.scope.to_string(),
                    reason: "your area is not a village: say which village the case is in (--village)",
                }
                .into());
            }
        };
        if village.level() != AdminLevel::Village {
            return Err(InputError::AdminCode {
                input: village.to_string(),
                reason: "a case belongs to a 12-digit village code",
            }
            .into());
        }
        self.check_scope("village", village.as_str())?;
        let grid = new.grid.or(self.identity.grid);
        let now = imported_at.unwrap_or_else(|| self.now());
        let id = CaseId::from_bytes(self.rng.random());
        let author = self.author();
        let tx = self.store.transaction()?;
        // Ids are 128 random bits; a repeat means the randomness is broken
        // (a cloned seed). Refuse rather than overwrite a case.
        if tx.snapshot(id)?.is_some() {
            return Err(StoreError::BadValue { what: "new case id (already in use)" }.into());
        }
        let year = now.year_cst();
        let seq_key = format!("case_seq/{year}");
        let seq = tx.meta(&seq_key)?.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0) + 1;
        tx.set_meta(&seq_key, &seq.to_string())?;
        let number = CaseNumber::new(&village, year, self.identity.replica.device(), seq);
        let policy = Arc::clone(&self.policy);
        // Named categories start at the township (county policy).
        let level = match imported_at {
            // An old ledger's case starts at the village and is walked up to its level.
            Some(_) => Level::Village,
            None => policy.policy().routing.start_level(new.category, self.operator.role.level()),
        };
        let mut flags = new.flags.clone();
        flags.sort_unstable();
        flags.dedup();
        let fresh = NewCaseDoc {
            id,
            number: &number,
            village: &village,
            grid,
            category: new.category,
            title: &title,
            description: &description,
            parties: &new.parties,
            risk: new.risk,
            flags: &flags,
            level,
            recorded_at: now,
        };
        let mut doc = CaseDoc::create(&fresh, &author, self.actor.clone(), now)?;
        let mut hashes = doc.heads();
        // A high-risk or flagged village case goes to the township at once:
        // its escalation is a second change of the same transaction.
        let state = doc.read(policy.policy())?;
        if imported_at.is_none()
            && let Some(hash) = route(&mut doc, &state, policy.policy(), &author, now)?
        {
            hashes.push(hash);
        }
        let state = doc.read(policy.policy())?;
        let (rowid, _) = put_doc(&tx, &mut doc, &state)?;
        for h in &hashes {
            tx.log_change(rowid, h, None, None, None, None)?;
        }
        tx.commit()?;
        self.cache_put(id, doc);
        Ok(state)
    }

    /// Brings in cases from an old ledger (a county's spreadsheets), all or
    /// none: every case is created, then walked to its status with events
    /// dated as the old ledger says, in one transaction. Refuses (writing
    /// nothing) a case outside this replica's area, or whose old number is
    /// already the number of a case here (the same file imported twice).
    pub fn import_cases(&mut self, cases: Vec<ImportedCase>) -> Result<Vec<CaseState>, LedgerError> {
        self.check_writable()?;
        for c in &cases {
            let village = c.case.village.clone().unwrap_or_else(|| self.identity.scope.clone());
            self.check_scope("village", village.as_str())?;
            if let Some(old) = &c.old_number {
                // An fq number already here (an fq export read back), or an
                // old number an earlier import kept (the same file twice).
                let here = self.store.find(old, 1)?.iter().any(|r| &r.number == old);
                let marker = ListFilter { search: Some(imported_marker(old)), limit: Some(1), ..Default::default() };
                if here || !self.store.list(&marker)?.is_empty() {
                    return Err(LedgerError::DuplicateNumber { number: old.clone() });
                }
            }
        }
        self.begin_group()?;
        let mut result = Ok(Vec::with_capacity(cases.len()));
        for c in cases {
            match self.import_one(c) {
                Ok(state) => {
                    if let Ok(out) = result.as_mut() {
                        out.push(state);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(out) => {
                self.commit_group()?;
                Ok(out)
            }
            Err(e) => {
                self.rollback_group()?;
                Err(e)
            }
        }
    }

    fn import_one(&mut self, c: ImportedCase) -> Result<CaseState, LedgerError> {
        let mut new = c.case;
        if let Some(old) = &c.old_number {
            let note = imported_marker(old);
            new.description = if new.description.is_empty() { note } else { format!("{}\n{note}", new.description) };
        }
        // The case's own times are the old ledger's: the recording, then its
        // status. Policy routing is not applied: the old ledger already says
        // where the case stands.
        let recorded = c.recorded_at;
        let state = self.create_inner(new, Some(recorded))?;
        let id = state.id;
        let at = c.updated_at.max(recorded);
        let mut state = state;
        if let Some(person) = c.responsible {
            state = self.event_at(id, NewEvent::Assign { name: person.name, id: person.id }, recorded)?;
        }
        let mut level = state.level;
        while level < c.level {
            let Some(up) = level.up() else { break };
            let reason = "原台账记录：已上报".to_owned();
            self.event_at(id, NewEvent::Escalate { to: up, reason, rule: None }, recorded)?;
            state = self.event_at(id, NewEvent::AcceptEscalation { level: up }, recorded)?;
            level = up;
        }
        let text = |s: &str| format!("原台账记录：{s}");
        match c.status {
            Status::Recorded => {}
            Status::Mediating => state = self.event_at(id, NewEvent::Note(text("调解中")), at)?,
            Status::Escalated => {
                if let Some(up) = level.up() {
                    let event = NewEvent::Escalate { to: up, reason: text("已上报"), rule: None };
                    state = self.event_at(id, event, at)?;
                }
            }
            Status::Settled => state = self.event_at(id, NewEvent::Settle(text("调解成功")), at)?,
            Status::Failed => state = self.event_at(id, NewEvent::Fail(text("调解失败")), at)?,
            _ => {
                self.event_at(id, NewEvent::Settle(text("调解成功")), at)?;
                self.event_at(id, NewEvent::WaiveFollowUps(text("已归档")), at)?;
                state = self.event_at(id, NewEvent::Archive, at)?;
            }
        }
        Ok(state)
    }

    /// Appends an event dated `at` (an import).
    fn event_at(&mut self, case: CaseId, event: NewEvent, at: Timestamp) -> Result<CaseState, LedgerError> {
        self.modify(case, |_, doc, author, _| Ok(vec![doc.push_event(&event, author, at)?]))
    }

    /// Finds a case by number, id, or a unique prefix of either.
    pub fn resolve(&self, reference: &str) -> Result<CaseId, LedgerError> {
        let r = reference.trim();
        if r.is_empty() {
            return Err(InputError::CaseRef { input: reference.to_owned() }.into());
        }
        if let Ok(id) = r.parse::<CaseId>()
            && self.store.case_row(id)?.is_some()
        {
            return Ok(id);
        }
        let found = self.store.find(r, 11)?;
        match found.as_slice() {
            [] => Err(LedgerError::CaseNotFound { reference: r.to_owned() }),
            [one] => Ok(one.id),
            many => {
                if let Some(exact) = many.iter().find(|c| c.number == r.to_ascii_lowercase()) {
                    return Ok(exact.id);
                }
                Err(LedgerError::AmbiguousCase {
                    reference: r.to_owned(),
                    candidates: many.iter().take(10).map(|c| c.number.clone()).collect(),
                })
            }
        }
    }

    /// The projected row of a case, if this ledger holds it.
    pub fn case_row(&self, case: CaseId) -> Result<Option<CaseRow>, LedgerError> {
        Ok(self.store.case_row(case)?)
    }

    /// Lists cases; reads only projected rows.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<CaseRow>, LedgerError> {
        Ok(self.store.list(filter)?)
    }

    /// Every case inside `within` with its projected events, one at a time:
    /// what reports are computed from (no document is loaded).
    pub fn scan(&self, within: &AdminCode, each: impl FnMut(&CaseRow, &[EventRow])) -> Result<usize, LedgerError> {
        Ok(self.store.scan(within, each)?)
    }

    /// The cases inside `within` that may need attention by `due_before`
    /// (see `crate::todo`): read from projected rows only.
    pub fn attention(
        &self,
        within: &AdminCode,
        due_before: Timestamp,
        level: Level,
    ) -> Result<Vec<CaseRow>, LedgerError> {
        let visits = u32::try_from(self.policy.policy().follow_up_days.len()).unwrap_or(u32::MAX);
        Ok(self.store.attention(within, due_before, level, visits)?)
    }

    /// A case with its conflicts and, if asked, its full history.
    pub fn show(&mut self, case: CaseId, history: bool) -> Result<CaseView, LedgerError> {
        let policy = Arc::clone(&self.policy);
        let doc = self.doc(case)?;
        let state = doc.read(policy.policy())?;
        let conflicts = doc.conflicts();
        let history = history.then(|| doc.history());
        Ok(CaseView { state, conflicts, history })
    }

    /// The heads of a case document, sorted.
    pub fn heads(&mut self, case: CaseId) -> Result<Vec<Hash>, LedgerError> {
        Ok(self.doc(case)?.heads())
    }

    /// Fields of a case that hold concurrent values, with every value's author.
    pub fn conflicts(&mut self, case: CaseId) -> Result<Vec<FieldConflict>, LedgerError> {
        Ok(self.doc(case)?.conflicts())
    }

    /// Edits plain fields of a case.
    pub fn edit(&mut self, case: CaseId, edit: FieldEdit) -> Result<CaseState, LedgerError> {
        let mut edit = edit;
        if let Some(t) = &edit.title {
            edit.title = Some(check_line("title", t, MAX_TITLE_CHARS)?);
        }
        if let Some(d) = &edit.description {
            edit.description = Some(check_text("description", d, MAX_TEXT_CHARS)?);
        }
        if edit.is_empty() {
            return Err(InputError::Text { what: "edit", reason: "nothing to change was given" }.into());
        }
        let policy = Arc::clone(&self.policy);
        self.modify(case, |state, doc, author, now| {
            if state.status == Status::Archived {
                return Err(transition("edit", state));
            }
            if state.parties.len() + edit.add_parties.len() > MAX_PARTIES {
                return Err(InputError::Text { what: "parties", reason: "too many parties" }.into());
            }
            let mut hashes: Vec<Hash> = doc.edit(&edit, author, now)?.into_iter().collect();
            // Found high risk, or flagged, at the village: to the township at
            // once (county policy), in the same transaction.
            let after = doc.read(policy.policy())?;
            hashes.extend(route(doc, &after, policy.policy(), author, now)?);
            Ok(hashes)
        })
    }

    /// Adds a mediation session note.
    pub fn add_note(&mut self, case: CaseId, text: &str) -> Result<CaseState, LedgerError> {
        let text = check_text("note", text, MAX_TEXT_CHARS)?;
        self.event(case, "add a note to", NewEvent::Note(text), |s| s.status != Status::Archived)
    }

    /// Names the responsible person (包保责任人): someone of the county
    /// roster, by name or staff id (a shared name must be given as an id),
    /// or, with no roster yet, a name as typed.
    pub fn assign(&mut self, case: CaseId, to: &str) -> Result<CaseState, LedgerError> {
        let to = check_line("assignee", to, 50)?;
        let policy = Arc::clone(&self.policy);
        self.modify(case, |state, doc, author, now| {
            if state.status == Status::Archived {
                return Err(transition("assign", state));
            }
            let person = person_in(&policy, &to, Some(state.village.as_str()))?;
            Ok(vec![doc.push_event(&NewEvent::Assign { name: person.name, id: person.id }, author, now)?])
        })
    }

    /// Sends a case up one level.
    pub fn escalate(&mut self, case: CaseId, reason: &str) -> Result<CaseState, LedgerError> {
        let reason = check_text("reason", reason, MAX_TEXT_CHARS)?;
        self.check_writable()?;
        let policy = Arc::clone(&self.policy);
        let state = self.doc(case)?.read(policy.policy())?;
        let Some(to) = state.level.up() else {
            return Err(LedgerError::Transition {
                action: "escalate",
                number: state.number,
                status: "already at the county, the top level (矛盾不上交)".into(),
            });
        };
        self.event(case, "escalate", NewEvent::Escalate { to, reason, rule: None }, |s| {
            matches!(s.status, Status::Recorded | Status::Mediating | Status::Failed)
        })
    }

    /// The upper level takes an escalated case.
    pub fn accept_escalation(&mut self, case: CaseId) -> Result<CaseState, LedgerError> {
        let level = self.operator.role.level();
        if level == Level::Village {
            return Err(LedgerError::Role { role: self.operator.role, action: "accept an escalation" });
        }
        self.event(case, "accept", NewEvent::AcceptEscalation { level }, |s| {
            s.status == Status::Escalated && s.escalated_to == Some(level)
        })
    }

    /// Records a settlement with its agreement. Only the level handling the
    /// case, or the level it was escalated to (accepted or not), or one above,
    /// may settle it: a village cannot close what it sent to the township.
    pub fn settle(&mut self, case: CaseId, agreement: &str) -> Result<CaseState, LedgerError> {
        let agreement = check_text("agreement", agreement, MAX_TEXT_CHARS)?;
        self.conclude(case, "settle", NewEvent::Settle(agreement))
    }

    /// Records that mediation failed; the same level rule as [`Ledger::settle`].
    pub fn fail(&mut self, case: CaseId, reason: &str) -> Result<CaseState, LedgerError> {
        let reason = check_text("reason", reason, MAX_TEXT_CHARS)?;
        self.conclude(case, "fail", NewEvent::Fail(reason))
    }

    fn conclude(&mut self, case: CaseId, action: &'static str, event: NewEvent) -> Result<CaseState, LedgerError> {
        let own = self.operator.role.level();
        self.modify(case, |state, doc, author, now| {
            if !state.status.is_open() {
                return Err(transition(action, state));
            }
            let required = state.escalated_to.map_or(state.level, |to| to.max(state.level));
            if own < required {
                return Err(LedgerError::BelowLevel { action, number: state.number.clone(), level: required });
            }
            Ok(vec![doc.push_event(&event, author, now)?])
        })
    }

    /// Orders action on a case by `due` (督办): a township on its villages'
    /// cases, the county on any case.
    pub fn supervise(&mut self, case: CaseId, instruction: &str, due: Timestamp) -> Result<CaseState, LedgerError> {
        let instruction = check_text("instruction", instruction, MAX_TEXT_CHARS)?;
        let own = self.operator.role.level();
        if own == Level::Village {
            return Err(LedgerError::Role { role: self.operator.role, action: "supervise" });
        }
        let event = NewEvent::Supervise { instruction, due };
        self.modify(case, |state, doc, author, now| {
            if state.status == Status::Archived {
                return Err(transition("supervise", state));
            }
            if own <= state.level && own != Level::County {
                return Err(LedgerError::SuperviseLevel {
                    number: state.number.clone(),
                    case_level: state.level,
                    own_level: own,
                });
            }
            Ok(vec![doc.push_event(&event, author, now)?])
        })
    }

    /// Answers the open supervision order of a case.
    pub fn respond(&mut self, case: CaseId, note: &str) -> Result<CaseState, LedgerError> {
        let note = check_text("note", note, MAX_TEXT_CHARS)?;
        self.modify(case, |state, doc, author, now| {
            if state.supervision.is_none() {
                return Err(LedgerError::NoSupervision { number: state.number.clone() });
            }
            Ok(vec![doc.push_event(&NewEvent::Respond(note.clone()), author, now)?])
        })
    }

    /// Waives the follow-up visits a settled case still owes, with the
    /// reason (the parties moved away, the agreement was fulfilled at once).
    pub fn waive_follow_ups(&mut self, case: CaseId, reason: &str) -> Result<CaseState, LedgerError> {
        let reason = check_text("reason", reason, MAX_TEXT_CHARS)?;
        let policy = Arc::clone(&self.policy);
        self.modify(case, |state, doc, author, now| {
            if state.status != Status::Settled {
                return Err(transition("waive follow-ups of", state));
            }
            if doc::follow_ups_pending(state, policy.policy()) == 0 {
                return Err(LedgerError::NoFollowUps { number: state.number.clone() });
            }
            Ok(vec![doc.push_event(&NewEvent::WaiveFollowUps(reason.clone()), author, now)?])
        })
    }

    /// Records judicial confirmation of the agreement by a court.
    pub fn confirm(&mut self, case: CaseId, court: &str, reference: Option<&str>) -> Result<CaseState, LedgerError> {
        let court = check_line("court", court, 100)?;
        let reference = reference.map(|r| check_line("reference", r, 100)).transpose()?;
        self.event(case, "confirm", NewEvent::Confirm { court, reference }, |s| s.status == Status::Settled)
    }

    /// Records a follow-up visit; a relapse reopens the case.
    pub fn follow_up(&mut self, case: CaseId, outcome: Outcome, note: Option<&str>) -> Result<CaseState, LedgerError> {
        let note = note.map(|n| check_text("note", n, MAX_TEXT_CHARS)).transpose()?;
        self.event(case, "follow up", NewEvent::FollowUp { outcome, note }, |s| s.status == Status::Settled)
    }

    /// Archives a closed case: a failed one, or a settled one whose
    /// follow-up visits are all made or waived (county policy).
    pub fn archive(&mut self, case: CaseId) -> Result<CaseState, LedgerError> {
        let policy = Arc::clone(&self.policy);
        self.modify(case, |state, doc, author, now| {
            if !matches!(state.status, Status::Settled | Status::Failed) {
                return Err(transition("archive", state));
            }
            let pending = doc::follow_ups_pending(state, policy.policy());
            if pending > 0 {
                return Err(LedgerError::FollowUpsPending { number: state.number.clone(), pending });
            }
            Ok(vec![doc.push_event(&NewEvent::Archive, author, now)?])
        })
    }

    fn event(
        &mut self,
        case: CaseId,
        action: &'static str,
        event: NewEvent,
        allowed: impl FnOnce(&CaseState) -> bool,
    ) -> Result<CaseState, LedgerError> {
        self.modify(case, |state, doc, author, now| {
            if !allowed(state) {
                return Err(transition(action, state));
            }
            Ok(vec![doc.push_event(&event, author, now)?])
        })
    }

    /// Runs one local change on a case in one transaction.
    pub(crate) fn modify(
        &mut self,
        case: CaseId,
        op: impl FnOnce(&CaseState, &mut CaseDoc, &Author, Timestamp) -> Result<Vec<Hash>, LedgerError>,
    ) -> Result<CaseState, LedgerError> {
        self.check_writable()?;
        let policy = Arc::clone(&self.policy);
        let now = self.now();
        let author = self.author();
        let mut doc = self.take_doc(case)?;
        let before = doc.read(policy.policy())?;
        if let Err(e) = self.check_scope("case village", &before.village) {
            self.cache_put(case, doc);
            return Err(e);
        }
        let result = (|| {
            // Usually one change; two when a routing rule followed an edit.
            let hashes = op(&before, &mut doc, &author, now)?;
            if hashes.is_empty() {
                return Ok(before.clone());
            }
            let tx = self.store.transaction()?;
            let state = doc.read(policy.policy())?;
            let (rowid, _) = put_doc(&tx, &mut doc, &state)?;
            for h in &hashes {
                tx.log_change(rowid, h, None, None, None, None)?;
            }
            tx.commit()?;
            Ok(state)
        })();
        // Only a document whose change was committed goes back in the cache;
        // otherwise it holds an unsaved change and must be reloaded.
        if result.is_ok() {
            self.cache_put(case, doc);
        }
        result
    }

    fn doc(&mut self, case: CaseId) -> Result<&mut CaseDoc, LedgerError> {
        let doc = self.take_doc(case)?;
        self.cache_put(case, doc);
        self.tick += 1;
        let tick = self.tick;
        let entry = self.cache.get_mut(&case).ok_or(LedgerError::CaseNotFound { reference: case.to_string() })?;
        entry.1 = tick;
        Ok(&mut entry.0)
    }

    fn take_doc(&mut self, case: CaseId) -> Result<CaseDoc, LedgerError> {
        if let Some((doc, _)) = self.cache.remove(&case) {
            return Ok(doc);
        }
        let bytes = self.store.snapshot(case)?.ok_or(LedgerError::CaseNotFound { reference: case.to_string() })?;
        Ok(CaseDoc::load(&bytes, self.actor.clone())?)
    }

    fn cache_put(&mut self, case: CaseId, doc: CaseDoc) {
        self.tick += 1;
        if self.cache.len() >= DOC_CACHE_CASES
            && let Some(oldest) = self.cache.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
        {
            self.cache.remove(&oldest);
        }
        self.cache.insert(case, (doc, self.tick));
    }

    /// Up to `limit` changes after log position `after`, oldest first, with
    /// their bytes read back from the case documents.
    pub fn changes_since(&mut self, after: i64, limit: u32) -> Result<Vec<OutgoingChange>, LedgerError> {
        let entries = self.store.log_after(after, limit)?;
        let mut listed = replica::DocHashes::new();
        entries.into_iter().map(|e| self.log_entry_change(e, &mut listed)).collect()
    }

    /// How many changes this ledger's log holds after position `after` in cases inside
    /// `scope` (what a session from that position would offer, echoes included).
    pub fn count_changes_after(&self, after: i64, scope: &AdminCode) -> Result<u64, LedgerError> {
        Ok(self.store.count_log_after_within(after, scope.as_str())?)
    }

    /// The highest position in this ledger's change log.
    pub fn log_head(&self) -> Result<i64, LedgerError> {
        Ok(self.store.log_head()?)
    }

    /// Applies changes from another replica in one transaction.
    ///
    /// Duplicates are ignored, changes whose dependencies are missing are
    /// kept until they arrive, and malformed or mismatched changes are
    /// refused and written to the audit. Nothing is reported applied unless
    /// it is committed.
    pub fn apply_changes(
        &mut self,
        from: Option<ReplicaId>,
        changes: Vec<IncomingChange>,
    ) -> Result<ApplyReport, LedgerError> {
        self.apply_with(from, changes, Admission::Open, |_, _| Ok(()))
    }

    /// [`Ledger::apply_changes`] with an admission policy, running `also`
    /// inside the same transaction before it commits (sync records the
    /// peer's log position there, so position and changes commit together).
    pub(crate) fn apply_with(
        &mut self,
        from: Option<ReplicaId>,
        changes: Vec<IncomingChange>,
        admission: Admission,
        also: impl FnOnce(&Tx<'_>, &ApplyReport) -> Result<(), LedgerError>,
    ) -> Result<ApplyReport, LedgerError> {
        self.check_writable()?;
        let now = self.clock.now();
        let peer = from.map(|f| f.to_string());
        let mut by_case: BTreeMap<CaseId, Vec<IncomingChange>> = BTreeMap::new();
        for c in changes {
            by_case.entry(c.case).or_default().push(c);
        }
        let mut report = ApplyReport::default();
        let mut touched = Vec::new();
        let tx = self.store.transaction()?;
        let cx = ApplyCtx {
            tx: &tx,
            admission,
            actor: &self.actor,
            policy: &self.policy,
            from,
            now,
            peer: peer.as_deref(),
            signers: std::cell::RefCell::new(Vec::new()),
        };
        for (case, incoming) in by_case {
            let cached = self.cache.remove(&case).map(|(d, _)| d);
            let outcome = apply_case(&cx, case, cached, incoming, &mut report);
            match outcome {
                Ok(Some(doc)) => touched.push((case, doc)),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        also(&tx, &report)?;
        if faults::on(Bug::AckBeforeCommit) {
            // The injected bug: report success, but the transaction rolls back.
            return Ok(report);
        }
        tx.commit()?;
        for (case, doc) in touched {
            self.cache_put(case, doc);
        }
        Ok(report)
    }

    /// The newest audit records, newest first.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        Ok(self.store.audit(limit)?)
    }

    /// Counts of cases, changes, pending changes and audit records.
    pub fn counts(&self) -> Result<[i64; 4], LedgerError> {
        Ok(self.store.counts()?)
    }

    /// Opens a group transaction: the operations that follow are savepoints in
    /// it and reach the disk together, with one durable commit, at
    /// [`Ledger::commit_group`]. Until that returns `Ok`, nothing they wrote
    /// is durable, and nothing of it may be acknowledged to anyone.
    pub fn begin_group(&mut self) -> Result<(), LedgerError> {
        self.check_writable()?;
        Ok(self.store.begin_group()?)
    }

    /// Commits the group transaction. On error it was rolled back, and the
    /// cached documents, which may hold what was lost, are dropped.
    pub fn commit_group(&mut self) -> Result<(), LedgerError> {
        let done = self.store.commit_group();
        if done.is_err() {
            self.cache.clear();
        }
        Ok(done?)
    }

    /// Rolls the group transaction back and drops the cached documents.
    pub fn rollback_group(&mut self) -> Result<(), LedgerError> {
        self.cache.clear();
        Ok(self.store.rollback_group()?)
    }

    /// Changes a server replica holds that were written on it rather than
    /// received: servers relay and never write, so its parent refuses them and
    /// the two replicas stay different until the replica is rebuilt
    /// (docs/OPERATIONS.md, "A change written on a server"). Always 0 on a
    /// device, whose own changes are its job.
    pub fn unrelayable_local_changes(&self) -> Result<i64, LedgerError> {
        if self.identity.tier == Tier::Device {
            return Ok(0);
        }
        Ok(self.store.local_change_count()?)
    }

    /// How many received changes wait for their dependencies.
    pub fn pending_count(&self) -> Result<i64, LedgerError> {
        Ok(self.store.pending_count()?)
    }

    /// Runs SQLite's integrity check.
    pub fn integrity_check(&self) -> Result<(), LedgerError> {
        Ok(self.store.integrity_check()?)
    }

    /// Every case in full, for export. Loads documents one at a time.
    pub fn export(
        &mut self,
        filter: &ListFilter,
        mut each: impl FnMut(&CaseRow, CaseState),
    ) -> Result<usize, LedgerError> {
        let rows = self.store.list(filter)?;
        let policy = Arc::clone(&self.policy);
        for row in &rows {
            let bytes = self.store.snapshot(row.id)?.ok_or(StoreError::BadValue { what: "missing snapshot" })?;
            let state = CaseDoc::load(&bytes, self.actor.clone())?.read(policy.policy())?;
            each(row, state);
        }
        Ok(rows.len())
    }
}

fn transition(action: &'static str, state: &CaseState) -> LedgerError {
    LedgerError::Transition { action, number: state.number.clone(), status: state.status.code().to_owned() }
}

fn seeded(seed: Option<u64>) -> ChaCha8Rng {
    match seed {
        Some(s) => ChaCha8Rng::seed_from_u64(s),
        None => {
            let mut s = [0u8; 32];
            // getrandom only fails on exotic platforms; fall back to the clock there.
            if getrandom::fill(&mut s).is_err() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                s[..16].copy_from_slice(&t.to_le_bytes());
            }
            ChaCha8Rng::from_seed(s)
        }
    }
}

fn read_identity(store: &Store) -> Result<Option<Identity>, LedgerError> {
    let Some(replica) = store.meta(META_REPLICA)? else { return Ok(None) };
    let bad = |what| LedgerError::Store(StoreError::BadValue { what });
    let get = |k: &str, what| store.meta(k).map_err(LedgerError::from).and_then(|v| v.ok_or_else(|| bad(what)));
    Ok(Some(Identity {
        replica: replica.parse().map_err(|_| bad("replica id"))?,
        tier: Tier::parse(&get(META_TIER, "tier")?).ok_or_else(|| bad("tier"))?,
        name: get(META_NAME, "name")?,
        role: Role::parse(&get(META_ROLE, "role")?).map_err(|_| bad("role"))?,
        scope: AdminCode::parse(&get(META_SCOPE, "scope")?).map_err(|_| bad("scope"))?,
        grid: store.meta(META_GRID)?.and_then(|g| g.parse().ok()),
    }))
}

/// The projected row of a case state, with its open conflicts: of fields
/// (`conflicts`) and of every kind the audit lists (`open`).
pub(crate) fn project(state: &CaseState, conflicts: usize, open: usize) -> CaseRow {
    CaseRow {
        id: state.id,
        number: state.number.clone(),
        county: state.county.clone(),
        township: state.township.clone(),
        village: state.village.clone(),
        grid: state.grid,
        level: state.level,
        status: state.status,
        category: state.category,
        risk: state.risk,
        deadline: state.deadline,
        recorded_at: state.recorded_at,
        updated_at: state.updated_at,
        title: state.title.clone(),
        responsible: state.responsible.clone(),
        conflicts: u32::try_from(conflicts).unwrap_or(u32::MAX),
        since: state.since,
        escalated_to: state.escalated_to,
        flags: state.flags.clone(),
        recorded_by: state.recorded_by_id.clone().unwrap_or_else(|| state.recorded_by.clone()),
        responsible_id: state.responsible_id.clone(),
        settled_at: state.settled_at,
        visits: state.visits,
        follow_ups_waived: state.follow_ups_waived,
        supervised_due: state.supervision.as_ref().map(|s| s.due),
        open_conflicts: Some(u32::try_from(open).unwrap_or(u32::MAX)),
    }
}

/// The projected row a document gives (what `verify` compares a stored row
/// with), from its timeline already read.
pub(crate) fn projection(doc: &mut CaseDoc, timeline: &doc::Timeline, state: &CaseState) -> CaseRow {
    let open = doc.open_conflict_fields_with(timeline);
    let fields = open.iter().filter(|(k, _)| *k == ConflictKind::Field).count();
    project(state, fields, open.len())
}

/// What an imported case's description keeps of its old number, and what a
/// second import of the same file is recognised by.
fn imported_marker(old: &str) -> String {
    format!("（原台账编号：{old}）")
}

/// The month a time falls in, in China Standard Time, as one number.
fn cst_month(t: Timestamp) -> i64 {
    use chrono::Datelike;
    Timestamp(t.0 + 8 * 3_600_000).to_utc().map_or(0, |d| i64::from(d.year()) * 12 + i64::from(d.month0()))
}

/// The events reports count: the recording and every status event with the
/// level it concerns and who did it; session notes once per author and month
/// (what "mediated" counts), not each one, to keep the projection small.
fn project_events(state: &CaseState) -> Vec<EventRow> {
    let level_of = |e: &doc::EventView| e.to.as_deref().and_then(|l| Level::parse(l).ok());
    let person =
        |e: &doc::EventView| e.author.as_ref().map(|a| a.id.as_ref().map_or(a.name.clone(), |i| i.to_string()));
    let mut out = Vec::with_capacity(state.events.len());
    let mut noted: Vec<(Option<String>, i64)> = Vec::new();
    let mut level = Level::Village;
    let mut escalated_to: Option<Level> = None;
    for e in &state.events {
        let row = |level: Option<Level>| EventRow { kind: e.kind, at: e.at, level, person: person(e), due: e.due };
        match e.kind {
            EventKind::Recorded => {
                level = level_of(e).unwrap_or(level);
                let who = state.recorded_by_id.clone().unwrap_or_else(|| state.recorded_by.clone());
                out.push(EventRow { kind: e.kind, at: e.at, level: Some(level), person: Some(who), due: None });
            }
            EventKind::Note => {
                let key = (person(e), cst_month(e.at));
                if !noted.contains(&key) {
                    noted.push(key);
                    out.push(row(Some(escalated_to.unwrap_or(level))));
                }
            }
            EventKind::Escalated => {
                escalated_to = level_of(e).or(level.up());
                out.push(row(escalated_to));
            }
            EventKind::EscalationAccepted => {
                level = escalated_to.take().or(level_of(e)).unwrap_or(level);
                out.push(row(Some(level)));
            }
            EventKind::Settled | EventKind::Failed => {
                out.push(row(Some(level)));
                escalated_to = None;
            }
            EventKind::Assigned | EventKind::Confirmed => {}
            _ => out.push(row(Some(level))),
        }
    }
    out
}

/// What `case list --search` looks in besides the title: the description,
/// party names (not ID numbers or phones), session notes and agreements.
fn search_text(state: &CaseState) -> String {
    let mut text = state.description.clone();
    for p in &state.parties {
        text.push('\n');
        text.push_str(&p.name);
    }
    for e in &state.events {
        if matches!(e.kind, EventKind::Note | EventKind::Settled)
            && let Some(t) = &e.text
        {
            text.push('\n');
            text.push_str(t);
        }
    }
    text
}

/// Saves a document, its projected row, events and search text; returns the
/// case's row id and its open conflicts.
fn put_doc(
    tx: &Tx<'_>,
    doc: &mut CaseDoc,
    state: &CaseState,
) -> Result<(i64, Vec<(ConflictKind, String)>), LedgerError> {
    let open = doc.open_conflict_fields();
    let fields = open.iter().filter(|(k, _)| *k == ConflictKind::Field).count();
    let snapshot = doc.save();
    let rowid = tx.put_case(&project(state, fields, open.len()), &snapshot)?;
    tx.put_projection(rowid, &project_events(state), &search_text(state))?;
    Ok((rowid, open))
}

/// The policy's routing rule for a village case that is open, not waiting
/// for an escalation, and high risk or flagged: escalates it to the township
/// as one change by `author`. `None` if no rule applies.
fn route(
    doc: &mut CaseDoc,
    state: &CaseState,
    policy: &Policy,
    author: &Author,
    now: Timestamp,
) -> Result<Option<Hash>, LedgerError> {
    let routable = state.level == Level::Village && matches!(state.status, Status::Recorded | Status::Mediating);
    let Some(rule) = routable.then(|| policy.routing.rule_for(state.risk, &state.flags)).flatten() else {
        return Ok(None);
    };
    let event = NewEvent::Escalate { to: Level::Township, reason: String::new(), rule: Some(rule) };
    Ok(Some(doc.push_event(&event, author, now)?))
}

/// The roster id of the person a replica's user name stands for, in `scope`.
/// The person `input` names under `policy`'s roster (see [`Ledger::person`]
/// and [`Ledger::person_at`]).
fn person_in(policy: &PolicyInForce, input: &str, village: Option<&str>) -> Result<Named, LedgerError> {
    let name = check_line("name", input, 50)?;
    let roster = policy.roster();
    if roster.is_empty() {
        return Ok(Named { name, id: None });
    }
    match roster.lookup(&name) {
        Lookup::One(s) => Ok(Named { name: s.name.clone(), id: Some(s.id.clone()) }),
        Lookup::Several(v) => match village.and_then(|at| roster.identify(&name, at)) {
            Some(s) => Ok(Named { name: s.name.clone(), id: Some(s.id.clone()) }),
            None => Err(LedgerError::AmbiguousPerson { input: name, candidates: v.into_iter().cloned().collect() }),
        },
        Lookup::Nobody => Err(LedgerError::UnknownPerson { input: name }),
    }
}

fn who(policy: &PolicyInForce, name: &str, scope: &AdminCode) -> Option<StaffId> {
    policy.roster().identify(name, scope.as_str()).map(|s| s.id.clone())
}

struct Candidate {
    hash: Hash,
    deps: Vec<Hash>,
    change: automerge::Change,
    bytes: Vec<u8>,
    signer: Option<[u8; 32]>,
    signature: Option<Vec<u8>>,
    received_from: Option<ReplicaId>,
    /// When it arrived here (a pending change: when it first arrived).
    received_at: Timestamp,
    from_pending: bool,
    /// The author's scope, from its grant (signed admission only).
    scope: Option<AdminCode>,
}

/// Everything [`apply_case`] needs besides the case's changes.
struct ApplyCtx<'a, 't> {
    tx: &'a Tx<'t>,
    admission: Admission,
    actor: &'a ActorId,
    policy: &'a PolicyInForce,
    from: Option<ReplicaId>,
    now: Timestamp,
    peer: Option<&'a str>,
    /// Signers already looked up in this batch: their grant's role and
    /// scope, and their decompressed key (a push is mostly one author's).
    signers: std::cell::RefCell<Vec<Signer>>,
}

/// The heads of signed runs in one case's batch: head hash → every copy of it, each with
/// its signer, the run's other members and the author's scope or why the run is refused.
/// One change can head two runs of its author: the runs of two pushes that began at
/// different positions ([4, 7, 8, 9] and [7, 8, 9]), both signed and both good.
type RunHeads = BTreeMap<Hash, Vec<RunCopy>>;

/// One copy of a run's head, as [`ApplyCtx::run_heads`] checked it.
struct RunCopy {
    signer: [u8; 32],
    members: std::collections::BTreeSet<Hash>,
    verdict: Result<Option<AdminCode>, Why>,
}

/// Which run a candidate belongs to (its head's hash), if it came in a signed run.
fn run_of(c: &Candidate) -> Option<Hash> {
    match c.signature.as_deref().and_then(trust::Provenance::from_blob)? {
        trust::Provenance::RunHead { .. } => Some(c.hash),
        trust::Provenance::RunMember { head } => Some(head),
        trust::Provenance::Single(_) => None,
    }
}

/// What [`ApplyCtx::admit`] learnt of one signing key.
struct Signer {
    public: [u8; 32],
    grant: Result<(VerifyingKey, Option<AdminCode>), Why>,
}

/// Why a change was refused, for the audit record: the reason and the
/// parameters its words are made from at output (`detail` is the English
/// text kept for logs and older readers).
#[derive(Clone)]
struct Why {
    reason: RefuseReason,
    detail: String,
    params: serde_json::Value,
}

impl Why {
    fn new(reason: RefuseReason, detail: impl Into<String>) -> Self {
        Why { reason, detail: detail.into(), params: serde_json::json!({}) }
    }

    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let Some(map) = self.params.as_object_mut() {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

impl ApplyCtx<'_, '_> {
    fn refuse(
        &self,
        report: &mut ApplyReport,
        case: CaseId,
        change: (Option<Hash>, Option<[u8; 32]>),
        why: Why,
    ) -> Result<(), LedgerError> {
        let (hash, signer) = change;
        let Why { reason, detail, params } = why;
        let kind = if reason == RefuseReason::Quarantined { "quarantined" } else { "refused" };
        let hex = hash.map(|h| h.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>());
        let text = match hex {
            Some(h) => format!("change {h}: {} ({detail})", reason.code()),
            None => format!("{} ({detail})", reason.code()),
        };
        let record = NewAudit {
            kind,
            case: Some(case),
            peer: self.peer,
            detail: &text,
            code: Some(reason.code()),
            change: hash,
            signer,
            params: Some(params),
        };
        self.tx.audit(self.now, &record)?;
        report.refused.push(Refusal { case, hash, reason, detail });
        Ok(())
    }

    /// The grant of `signer`, looked up once per batch.
    fn signer_grant(&self, signer: &[u8; 32]) -> Result<(VerifyingKey, Option<AdminCode>), Why> {
        let mut signers = self.signers.borrow_mut();
        let known = match signers.iter().position(|s| &s.public == signer) {
            Some(i) => &signers[i],
            None => {
                signers.push(Signer { public: *signer, grant: self.grant_of(signer) });
                &signers[signers.len() - 1]
            }
        };
        known.grant.clone()
    }

    /// Checks signature, grant and role; returns the author's scope. A change
    /// of a signed run is admitted when its run's head, in `runs`, verified
    /// and lists it.
    fn admit(&self, c: &Candidate, case: CaseId, runs: &RunHeads) -> Result<Option<AdminCode>, Why> {
        if self.admission == Admission::Open || faults::on(Bug::IgnoreScope) {
            return Ok(None);
        }
        let (Some(signer), Some(blob)) = (&c.signer, &c.signature) else {
            return Err(Why::new(RefuseReason::BadSignature, "the change is not signed").with("why", "unsigned"));
        };
        let provenance = trust::Provenance::from_blob(blob).ok_or_else(|| {
            Why::new(RefuseReason::BadSignature, format!("a signature of {} bytes", blob.len()))
                .with("why", "signature-length")
        })?;
        match provenance {
            trust::Provenance::Single(sig) => {
                let (key, scope) = self.signer_grant(signer)?;
                trust::verify_change_with(&key, &c.hash, &sig)
                    .map_err(|e| Why::new(RefuseReason::BadSignature, e.to_string()).with("why", "does-not-verify"))?;
                Ok(scope)
            }
            trust::Provenance::RunHead { signature, others } => {
                let (key, scope) = self.signer_grant(signer)?;
                let mut hashes = others;
                hashes.push(c.hash);
                trust::verify_run_with(&key, case.as_bytes(), &hashes, &signature).map_err(|e| {
                    Why::new(RefuseReason::BadSignature, format!("run {e}")).with("why", "does-not-verify")
                })?;
                Ok(scope)
            }
            trust::Provenance::RunMember { head } => {
                let copies = runs.get(&head).map(Vec::as_slice).unwrap_or_default();
                let listed = copies.iter().filter(|r| &r.signer == signer && r.members.contains(&c.hash));
                let mut refused = None;
                for copy in listed {
                    match &copy.verdict {
                        Ok(scope) => return Ok(scope.clone()),
                        Err(e) => refused = refused.or_else(|| Some(e.clone())),
                    }
                }
                Err(refused.unwrap_or_else(|| {
                    Why::new(RefuseReason::BadSignature, "its run's signature did not come with it")
                        .with("why", "run-unsigned")
                }))
            }
        }
    }

    /// Verifies the head of every signed run among `candidates` once.
    fn run_heads(&self, case: CaseId, candidates: &[Candidate]) -> RunHeads {
        let mut heads = RunHeads::new();
        if self.admission == Admission::Open {
            return heads;
        }
        for c in candidates {
            let (Some(signer), Some(blob)) = (&c.signer, &c.signature) else { continue };
            let Some(trust::Provenance::RunHead { others, .. }) = trust::Provenance::from_blob(blob) else { continue };
            let verdict = self.admit(c, case, &RunHeads::new());
            let members = others.into_iter().collect();
            heads.entry(c.hash).or_default().push(RunCopy { signer: *signer, members, verdict });
        }
        heads
    }

    /// The grant of a signing key: its decompressed key and its scope, or why
    /// changes it signed are refused.
    fn grant_of(&self, signer: &[u8; 32]) -> Result<(VerifyingKey, Option<AdminCode>), Why> {
        let grant = match self.tx.grant(signer) {
            Ok(Some(g)) => g,
            Ok(None) => {
                return Err(
                    Why::new(RefuseReason::UnknownSigner, "no grant for the signing key").with("why", "no-grant")
                );
            }
            Err(e) => return Err(Why::new(RefuseReason::UnknownSigner, e.to_string()).with("why", "grant-unreadable")),
        };
        let key = VerifyingKey::from_bytes(signer).map_err(|_| {
            Why::new(RefuseReason::BadSignature, trust::SignatureError::PublicKey.to_string()).with("why", "bad-key")
        })?;
        let role = GrantRole::parse(&grant.role)
            .map_err(|e| Why::new(RefuseReason::Role, e.to_string()).with("why", "unknown-role"))?;
        if role.is_server() {
            let detail = format!("{} is a server; servers relay but never write", grant.subject);
            return Err(Why::new(RefuseReason::Role, detail)
                .with("why", "server-wrote")
                .with("subject", grant.subject));
        }
        let scope = AdminCode::parse(&grant.scope)
            .map_err(|e| Why::new(RefuseReason::UnknownSigner, e.to_string()).with("why", "grant-unreadable"))?;
        Ok((key, Some(scope)))
    }
}

/// Applies one case's incoming changes inside the batch transaction.
/// Returns the updated document, or `None` if there is none yet.
fn apply_case(
    cx: &ApplyCtx<'_, '_>,
    case: CaseId,
    cached: Option<CaseDoc>,
    incoming: Vec<IncomingChange>,
    report: &mut ApplyReport,
) -> Result<Option<CaseDoc>, LedgerError> {
    let tx = cx.tx;
    let snapshot = if cached.is_some() { None } else { tx.snapshot(case)? };
    let mut doc = match (cached, snapshot) {
        (Some(d), _) => Some(d),
        (None, Some(bytes)) => Some(CaseDoc::load(&bytes, cx.actor.clone())?),
        (None, None) => None,
    };
    // Changes already waiting for this case come first, so a resent one is
    // recognised as a duplicate and leaves the pending table when applied.
    let mut candidates: Vec<Candidate> = Vec::new();
    for p in tx.pending_for(case)? {
        if let Ok(change) = doc::parse_change(&p.bytes) {
            let (hash, deps) = doc::change_key(&change);
            candidates.push(Candidate {
                hash,
                deps,
                change,
                bytes: p.bytes,
                signer: p.signer,
                signature: p.signature,
                received_from: p.received_from,
                received_at: p.received_at.unwrap_or(cx.now),
                from_pending: true,
                scope: None,
            });
        }
    }
    for c in incoming {
        let change = match doc::parse_change(&c.bytes) {
            Ok(change) => change,
            Err(e) => {
                let why = Why::new(RefuseReason::Malformed, e.to_string()).with("error", e.to_string());
                cx.refuse(report, case, (None, c.signer), why)?;
                continue;
            }
        };
        let (hash, deps) = doc::change_key(&change);
        let known = doc.as_mut().is_some_and(|d| d.has_change(&hash));
        // The same change may come signed by someone else than a copy that is
        // already waiting (a careless import re-signs changes), or by its author
        // in another run: keep both copies until signatures and scope have been
        // checked, then `choose_copies` keeps one.
        let same_copy = candidates.iter().any(|k| k.hash == hash && k.signer == c.signer && k.signature == c.signature);
        if (known || same_copy) && !faults::on(Bug::SkipDuplicateCheck) {
            report.duplicates += 1;
            continue;
        }
        candidates.push(Candidate {
            hash,
            deps,
            change,
            bytes: c.bytes,
            signer: c.signer,
            signature: c.signature,
            received_from: cx.from,
            received_at: cx.now,
            from_pending: false,
            scope: None,
        });
    }
    // Signatures and grants; a run's signature is checked once, at its head.
    let runs = cx.run_heads(case, &candidates);
    let mut admitted = Vec::with_capacity(candidates.len());
    for mut c in candidates {
        match cx.admit(&c, case, &runs) {
            Ok(scope) => {
                c.scope = scope;
                admitted.push(c);
            }
            Err(why) => {
                if c.from_pending {
                    tx.remove_pending(&c.hash)?;
                }
                cx.refuse(report, case, (Some(c.hash), c.signer), why)?;
            }
        }
    }
    // Scope, change by change, before anything is applied: only the copies
    // whose author may write in the case's village go on. The village is the
    // document's, or for a new case what its first changes say.
    let mut scratch = None;
    let village = match doc.as_mut() {
        Some(d) => Some(d.village()),
        None => {
            scratch = scratch_case(cx, &admitted);
            scratch.as_ref().map(|s| s.state.village.clone())
        }
    };
    if let Some(village) = &village {
        let mut kept: Vec<Candidate> = Vec::with_capacity(admitted.len());
        for c in admitted {
            let outside = c.scope.as_ref().is_some_and(|scope| !within(scope, village));
            if outside {
                if c.from_pending {
                    tx.remove_pending(&c.hash)?;
                }
                let scope = c.scope.as_ref().map(ToString::to_string).unwrap_or_default();
                let detail = format!("village {village} is outside the author's area {scope}");
                let why =
                    Why::new(RefuseReason::OutOfScope, detail).with("village", village.as_str()).with("scope", scope);
                cx.refuse(report, case, (Some(c.hash), c.signer), why)?;
            } else {
                kept.push(c);
            }
        }
        admitted = kept;
    }
    // One copy of each change goes on (without a village yet: waits).
    let (mut admitted, unsure) = choose_copies(tx, admitted, cx.admission != Admission::Open, report)?;
    // Order the changes whose dependencies are present, in dependency order.
    // A signed run is applied whole or waits whole, so that a replica never
    // holds part of a run it could not pass on with its signature.
    let mut held_back: std::collections::BTreeSet<Hash> = std::collections::BTreeSet::new();
    let (ready, waiting) = loop {
        let mut ready: Vec<Candidate> = Vec::new();
        let mut waiting: Vec<Candidate> = admitted;
        loop {
            let before = waiting.len();
            let mut still = Vec::new();
            for c in waiting {
                let no_doc_yet = doc.is_none() && ready.is_empty();
                let dep_ok =
                    |h: &Hash| ready.iter().any(|r| &r.hash == h) || doc.as_mut().is_some_and(|d| d.has_change(h));
                let ok = if no_doc_yet { c.deps.is_empty() } else { c.deps.iter().all(dep_ok) };
                let held = run_of(&c).is_some_and(|r| held_back.contains(&r));
                if ok && !held { ready.push(c) } else { still.push(c) }
            }
            waiting = still;
            if waiting.len() == before || waiting.is_empty() {
                break;
            }
        }
        let newly: Vec<Hash> = waiting
            .iter()
            .filter_map(run_of)
            .filter(|r| !held_back.contains(r) && ready.iter().any(|c| run_of(c) == Some(*r)))
            .collect();
        if newly.is_empty() {
            break (ready, waiting);
        }
        held_back.extend(newly);
        admitted = ready.into_iter().chain(waiting).collect();
    };
    let waiting: Vec<Candidate> = waiting.into_iter().chain(unsure).collect();
    for c in &waiting {
        if !c.from_pending {
            let p = PendingChange {
                hash: c.hash,
                case,
                bytes: c.bytes.clone(),
                received_from: c.received_from,
                signer: c.signer,
                signature: c.signature.clone(),
                received_at: Some(c.received_at),
            };
            if !faults::on(Bug::DropMissingDeps) {
                tx.put_pending(&p, cx.now)?;
            }
            report.pending += 1;
        }
    }
    if ready.is_empty() {
        return Ok(doc);
    }
    let had_doc = doc.is_some();
    // What the case had open before, as its row counted it (rows from before
    // schema 4: its field conflicts).
    let conflicts_before = tx.open_conflicts(case)?.unwrap_or(0);
    let violations_before = match doc.as_mut() {
        Some(d) => d.read(cx.policy.policy()).map_or(0, |s| s.violations.len()),
        None => 0,
    };
    let before_village = doc.as_mut().map(|d| d.village());
    // A new case whose changes all passed: the scratch document already holds exactly them
    // (the same changes make the same document in any order), so they are not applied again.
    let reuse = scratch
        .filter(|s| !had_doc && s.applied.len() == ready.len() && ready.iter().all(|c| s.applied.contains(&c.hash)));
    let (mut target, applied) = match reuse {
        Some(s) => (s.doc, Ok(s.state)),
        None => {
            let mut target = doc.take().unwrap_or_else(|| CaseDoc::empty(cx.actor.clone()));
            let changes: Vec<automerge::Change> = ready.iter().map(|c| c.change.clone()).collect();
            let applied = target.apply(changes).and_then(|_| target.read(cx.policy.policy()));
            (target, applied)
        }
    };
    let problem = match &applied {
        Ok(state) if state.id != case => {
            Some(Why::new(RefuseReason::Quarantined, "the change belongs to another case").with("why", "another-case"))
        }
        Ok(state) if before_village.as_ref().is_some_and(|v| v != &state.village) => Some(
            Why::new(RefuseReason::Quarantined, "the change moves the case to another village")
                .with("why", "moves-village")
                .with("village", state.village.as_str()),
        ),
        Ok(state) => {
            ready.iter().find(|c| c.scope.as_ref().is_some_and(|scope| !within(scope, &state.village))).map(|c| {
                let scope = c.scope.as_ref().map(ToString::to_string).unwrap_or_default();
                let detail = format!("village {} is outside the author's area {scope}", state.village);
                Why::new(RefuseReason::OutOfScope, detail).with("village", state.village.as_str()).with("scope", scope)
            })
        }
        Err(e) => Some(
            Why::new(RefuseReason::Quarantined, format!("cannot apply: {e}"))
                .with("why", "cannot-apply")
                .with("error", e.to_string()),
        ),
    };
    if let Some(why) = problem {
        // Refuse the whole group: the document may be half-changed, so it is
        // reloaded from the last commit. Authors of the same case share its
        // village, so one bad author rarely travels with good ones; those are
        // reported too and will be accepted when resent alone.
        for c in &ready {
            if c.from_pending {
                tx.remove_pending(&c.hash)?;
            }
            cx.refuse(report, case, (Some(c.hash), c.signer), why.clone())?;
        }
        let reloaded = match tx.snapshot(case)? {
            Some(bytes) if had_doc => Some(CaseDoc::load(&bytes, cx.actor.clone())?),
            _ => None,
        };
        return Ok(reloaded);
    }
    let state = applied?;
    let (rowid, conflicts) = put_doc(tx, &mut target, &state)?;
    for c in &ready {
        let received = (!faults::on(Bug::NoReceiveTime)).then_some(c.received_at);
        tx.log_change(rowid, &c.hash, c.received_from, c.signer.as_ref(), c.signature.as_deref(), received)?;
        if c.from_pending {
            tx.remove_pending(&c.hash)?;
        }
        report.applied += 1;
    }
    if conflicts.len() > conflicts_before as usize {
        let fields: Vec<&str> = conflicts.iter().map(|(_, f)| f.as_str()).collect();
        let detail = format!("case {}: concurrent edits now disagree on {}", state.number, fields.join(", "));
        let params = serde_json::json!({
            "number": state.number,
            "fields": fields,
            "kinds": conflicts.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        });
        let record = NewAudit {
            kind: "conflict",
            case: Some(case),
            peer: cx.peer,
            detail: &detail,
            code: Some("conflict"),
            params: Some(params),
            ..NewAudit::default()
        };
        tx.audit(cx.now, &record)?;
    }
    // Concurrent lifecycle events that contradict each other (settled in the
    // village while the township was to accept it): both are kept, and the
    // audit says so.
    for v in state.violations.iter().skip(violations_before) {
        let by = v.by.as_ref().map(|a| format!(" by {} ({})", a.name, a.role.code())).unwrap_or_default();
        let detail =
            format!("case {}: {}{by} at {}, concurrent with the events it contradicts", state.number, v.rule, v.at);
        let params = serde_json::json!({
            "number": state.number,
            "rule": v.rule,
            "at": v.at.0,
            "by": v.by.as_ref().map(|a| &a.name),
            "role": v.by.as_ref().map(|a| a.role.code()),
        });
        let record = NewAudit {
            kind: "workflow",
            case: Some(case),
            peer: cx.peer,
            detail: &detail,
            code: Some("workflow"),
            params: Some(params),
            ..NewAudit::default()
        };
        tx.audit(cx.now, &record)?;
    }
    Ok(Some(target))
}

/// One copy of each change, where several came: a copy waiting here and one sent again, or
/// the same change in two runs of its author (two pushes that began at different positions).
/// The copies kept must leave the provenance whole: every member of a run kept is listed by
/// the copy of its head kept, or this replica could not pass the member on with a signature.
///
/// A run's head is kept in the copy whose run lists the most members that came (the longer
/// run); any other change in its first copy that is vouched for: by its own signature, as a
/// head, or as a member listed by the head kept. A change of which no copy is vouched for
/// that way (`checked`: signatures are checked here) comes back apart, to wait. Copies not
/// kept count as duplicates, and a waiting copy replaced by a new one leaves the waiting table.
fn choose_copies(
    tx: &Tx<'_>,
    candidates: Vec<Candidate>,
    checked: bool,
    report: &mut ApplyReport,
) -> Result<(Vec<Candidate>, Vec<Candidate>), LedgerError> {
    let mut copies: BTreeMap<Hash, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        copies.entry(c.hash).or_default().push(i);
    }
    if copies.len() == candidates.len() {
        return Ok((candidates, Vec::new()));
    }
    let provenance: Vec<Option<trust::Provenance>> =
        candidates.iter().map(|c| c.signature.as_deref().and_then(trust::Provenance::from_blob)).collect();
    let lists = |i: usize, member: &Hash, signer: Option<[u8; 32]>| {
        candidates[i].signer == signer
            && matches!(&provenance[i], Some(trust::Provenance::RunHead { others, .. }) if others.contains(member))
    };
    // Heads first: the copy that vouches for the most members present.
    let mut kept: BTreeMap<Hash, usize> = BTreeMap::new();
    for (hash, at) in &copies {
        let heads = at.iter().copied().filter(|&i| matches!(provenance[i], Some(trust::Provenance::RunHead { .. })));
        let covered = |i: usize| {
            let members = candidates.iter().enumerate().filter(|(j, m)| {
                matches!(&provenance[*j], Some(trust::Provenance::RunMember { head }) if head == hash)
                    && lists(i, &m.hash, m.signer)
            });
            members.map(|(_, m)| m.hash).collect::<std::collections::BTreeSet<_>>().len()
        };
        let heads: Vec<usize> = heads.collect();
        let best = match heads.as_slice() {
            [one] => Some(*one),
            _ => heads.iter().copied().max_by_key(|&i| (covered(i), std::cmp::Reverse(i))),
        };
        if let Some(best) = best {
            kept.insert(*hash, best);
        }
    }
    let mut unsure_at = std::collections::BTreeSet::new();
    for (hash, at) in &copies {
        if kept.contains_key(hash) {
            continue;
        }
        let vouched = |i: &usize| match &provenance[*i] {
            Some(trust::Provenance::RunMember { head }) if checked => {
                kept.get(head).is_some_and(|&h| lists(h, hash, candidates[*i].signer))
            }
            _ => true,
        };
        let choice = match at.iter().find(|i| vouched(i)) {
            Some(&i) => i,
            None => {
                unsure_at.insert(at[0]);
                at[0]
            }
        };
        kept.insert(*hash, choice);
    }
    let mut chosen = Vec::with_capacity(copies.len());
    let mut unsure = Vec::new();
    let keep: std::collections::BTreeSet<usize> = kept.values().copied().collect();
    let replaced: std::collections::BTreeSet<Hash> =
        kept.values().filter(|&&i| !candidates[i].from_pending).map(|&i| candidates[i].hash).collect();
    for (i, c) in candidates.into_iter().enumerate() {
        if unsure_at.contains(&i) {
            unsure.push(c);
        } else if keep.contains(&i) {
            chosen.push(c);
        } else {
            if c.from_pending && replaced.contains(&c.hash) {
                tx.remove_pending(&c.hash)?;
            }
            report.duplicates += 1;
        }
    }
    Ok((chosen, unsure))
}

/// A new case built from its first changes before scope is checked: the
/// village they give it decides whose changes may stay.
struct Scratch {
    doc: CaseDoc,
    state: CaseState,
    /// The changes applied to `doc`.
    applied: Vec<Hash>,
}

/// Applies a new case's changes whose dependencies are all among them to a
/// scratch document. `None` if they do not make a case.
fn scratch_case(cx: &ApplyCtx<'_, '_>, admitted: &[Candidate]) -> Option<Scratch> {
    let mut known: Vec<Hash> = Vec::new();
    let mut order: Vec<automerge::Change> = Vec::new();
    let mut rest: Vec<&Candidate> = admitted.iter().collect();
    loop {
        let before = rest.len();
        rest.retain(|c| {
            let ready = if known.is_empty() { c.deps.is_empty() } else { c.deps.iter().all(|d| known.contains(d)) };
            if ready && !known.contains(&c.hash) {
                known.push(c.hash);
                order.push(c.change.clone());
                false
            } else {
                !ready
            }
        });
        if rest.len() == before || rest.is_empty() {
            break;
        }
    }
    if order.is_empty() {
        return None;
    }
    let mut doc = CaseDoc::empty(cx.actor.clone());
    doc.apply(order).ok()?;
    let state = doc.read(cx.policy.policy()).ok()?;
    Some(Scratch { doc, state, applied: known })
}

fn within(scope: &AdminCode, village: &str) -> bool {
    AdminCode::parse(village).is_ok_and(|v| scope.contains(&v))
}
