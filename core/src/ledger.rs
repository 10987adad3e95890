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
    AdminCode, AdminLevel, CaseId, CaseNumber, Category, InputError, Level, MAX_PARTIES, MAX_TEXT_CHARS,
    MAX_TITLE_CHARS, Outcome, Party, ReplicaId, Risk, Role, Status, check_line, check_text,
};
use crate::clock::{Clock, Timestamp};
use crate::doc::{
    self, Author, CaseDoc, CaseState, DeadlinePolicy, DocError, FieldConflict, FieldEdit, Hash, HistoryEntry,
    NewCaseDoc, NewEvent,
};
use crate::faults::{self, Bug};
use crate::store::{AuditEntry, CaseRow, ListFilter, OpenMode, PendingChange, Store, StoreError, Tx};
use crate::trust::{self, GrantRole};
use crate::vault::DataKey;

mod replica;

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

/// A replica's case ledger.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    clock: Arc<dyn Clock>,
    identity: Identity,
    actor: ActorId,
    rng: ChaCha8Rng,
    policy: DeadlinePolicy,
    read_only: bool,
    operator: Author,
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
        let operator = Author { name: identity.name.clone(), role: identity.role };
        Ok(Self {
            operator,
            store,
            clock,
            identity,
            actor,
            rng,
            policy: DeadlinePolicy::default(),
            read_only,
            cache: BTreeMap::new(),
            tick: 0,
        })
    }

    /// Who this ledger belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The deadline policy in force.
    pub fn policy(&self) -> &DeadlinePolicy {
        &self.policy
    }

    /// The ledger's clock reading now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
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
        self.operator = Author { name, role };
        Ok(())
    }

    fn check_writable(&self) -> Result<(), LedgerError> {
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
    pub fn create_case(&mut self, new: NewCase) -> Result<CaseState, LedgerError> {
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
        let now = self.clock.now();
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
        let level = self.operator.role.level();
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
            level,
        };
        let mut doc = CaseDoc::create(&fresh, &author, self.actor.clone(), now)?;
        let state = doc.read(&self.policy)?;
        let hashes = doc.heads();
        let rowid = put_doc(&tx, &mut doc, &state)?;
        for h in &hashes {
            tx.log_change(rowid, h, None, None, None)?;
        }
        tx.commit()?;
        self.cache_put(id, doc);
        Ok(state)
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

    /// Lists cases; reads only projected rows.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<CaseRow>, LedgerError> {
        Ok(self.store.list(filter)?)
    }

    /// A case with its conflicts and, if asked, its full history.
    pub fn show(&mut self, case: CaseId, history: bool) -> Result<CaseView, LedgerError> {
        let policy = self.policy;
        let doc = self.doc(case)?;
        let state = doc.read(&policy)?;
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
        self.modify(case, |state, doc, author, now| {
            if state.status == Status::Archived {
                return Err(transition("edit", state));
            }
            if state.parties.len() + edit.add_parties.len() > MAX_PARTIES {
                return Err(InputError::Text { what: "parties", reason: "too many parties" }.into());
            }
            Ok(doc.edit(&edit, author, now)?)
        })
    }

    /// Adds a mediation session note.
    pub fn add_note(&mut self, case: CaseId, text: &str) -> Result<CaseState, LedgerError> {
        let text = check_text("note", text, MAX_TEXT_CHARS)?;
        self.event(case, "add a note to", NewEvent::Note(text), |s| s.status != Status::Archived)
    }

    /// Names the responsible person (包保责任人).
    pub fn assign(&mut self, case: CaseId, to: &str) -> Result<CaseState, LedgerError> {
        let to = check_line("assignee", to, 50)?;
        self.event(case, "assign", NewEvent::Assign(to), |s| s.status != Status::Archived)
    }

    /// Sends a case up one level.
    pub fn escalate(&mut self, case: CaseId, reason: &str) -> Result<CaseState, LedgerError> {
        let reason = check_text("reason", reason, MAX_TEXT_CHARS)?;
        self.check_writable()?;
        let policy = self.policy;
        let state = self.doc(case)?.read(&policy)?;
        let Some(to) = state.level.up() else {
            return Err(LedgerError::Transition {
                action: "escalate",
                number: state.number,
                status: "already at the county, the top level (矛盾不上交)".into(),
            });
        };
        self.event(case, "escalate", NewEvent::Escalate { to, reason }, |s| {
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

    /// Records a settlement with its agreement.
    pub fn settle(&mut self, case: CaseId, agreement: &str) -> Result<CaseState, LedgerError> {
        let agreement = check_text("agreement", agreement, MAX_TEXT_CHARS)?;
        self.event(case, "settle", NewEvent::Settle(agreement), |s| s.status.is_open())
    }

    /// Records that mediation failed.
    pub fn fail(&mut self, case: CaseId, reason: &str) -> Result<CaseState, LedgerError> {
        let reason = check_text("reason", reason, MAX_TEXT_CHARS)?;
        self.event(case, "fail", NewEvent::Fail(reason), |s| s.status.is_open())
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

    /// Archives a closed case.
    pub fn archive(&mut self, case: CaseId) -> Result<CaseState, LedgerError> {
        self.event(case, "archive", NewEvent::Archive, |s| matches!(s.status, Status::Settled | Status::Failed))
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
            Ok(Some(doc.push_event(&event, author, now)?))
        })
    }

    /// Runs one local change on a case in one transaction.
    fn modify(
        &mut self,
        case: CaseId,
        op: impl FnOnce(&CaseState, &mut CaseDoc, &Author, Timestamp) -> Result<Option<Hash>, LedgerError>,
    ) -> Result<CaseState, LedgerError> {
        self.check_writable()?;
        let policy = self.policy;
        let now = self.clock.now();
        let author = self.author();
        let mut doc = self.take_doc(case)?;
        let before = doc.read(&policy)?;
        if let Err(e) = self.check_scope("case village", &before.village) {
            self.cache_put(case, doc);
            return Err(e);
        }
        let result = (|| {
            let Some(hash) = op(&before, &mut doc, &author, now)? else {
                return Ok(before.clone());
            };
            let tx = self.store.transaction()?;
            let state = doc.read(&policy)?;
            let rowid = put_doc(&tx, &mut doc, &state)?;
            tx.log_change(rowid, &hash, None, None, None)?;
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
        let policy = self.policy;
        for row in &rows {
            let bytes = self.store.snapshot(row.id)?.ok_or(StoreError::BadValue { what: "missing snapshot" })?;
            let state = CaseDoc::load(&bytes, self.actor.clone())?.read(&policy)?;
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

/// The projected row of a case state.
fn project(state: &CaseState, conflicts: usize) -> CaseRow {
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
    }
}

/// Saves a document and its projected row; returns the case's row id.
fn put_doc(tx: &Tx<'_>, doc: &mut CaseDoc, state: &CaseState) -> Result<i64, LedgerError> {
    let conflicts = doc.conflicts().len();
    let snapshot = doc.save();
    Ok(tx.put_case(&project(state, conflicts), &snapshot)?)
}

struct Candidate {
    hash: Hash,
    deps: Vec<Hash>,
    change: automerge::Change,
    bytes: Vec<u8>,
    signer: Option<[u8; 32]>,
    signature: Option<Vec<u8>>,
    received_from: Option<ReplicaId>,
    from_pending: bool,
    /// The author's scope, from its grant (signed admission only).
    scope: Option<AdminCode>,
}

/// Everything [`apply_case`] needs besides the case's changes.
struct ApplyCtx<'a, 't> {
    tx: &'a Tx<'t>,
    admission: Admission,
    actor: &'a ActorId,
    policy: &'a DeadlinePolicy,
    from: Option<ReplicaId>,
    now: Timestamp,
    peer: Option<&'a str>,
    /// Signers already looked up in this batch: their grant's role and
    /// scope, and their decompressed key (a push is mostly one author's).
    signers: std::cell::RefCell<Vec<Signer>>,
}

/// The verified heads of signed runs in one case's batch: head hash → (signer, the other
/// members, the author's scope or why the run is refused).
type RunHeads =
    BTreeMap<Hash, ([u8; 32], std::collections::BTreeSet<Hash>, Result<Option<AdminCode>, (RefuseReason, String)>)>;

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
    grant: Result<(VerifyingKey, Option<AdminCode>), (RefuseReason, String)>,
}

impl ApplyCtx<'_, '_> {
    fn refuse(
        &self,
        report: &mut ApplyReport,
        case: CaseId,
        hash: Option<Hash>,
        reason: RefuseReason,
        detail: String,
    ) -> Result<(), LedgerError> {
        let kind = if reason == RefuseReason::Quarantined { "quarantined" } else { "refused" };
        let hex = hash.map(|h| h.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>());
        let text = match hex {
            Some(h) => format!("change {h}: {} ({detail})", reason.code()),
            None => format!("{} ({detail})", reason.code()),
        };
        self.tx.audit(self.now, kind, Some(case), self.peer, &text)?;
        report.refused.push(Refusal { case, hash, reason, detail });
        Ok(())
    }

    /// The grant of `signer`, looked up once per batch.
    fn signer_grant(&self, signer: &[u8; 32]) -> Result<(VerifyingKey, Option<AdminCode>), (RefuseReason, String)> {
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
    fn admit(&self, c: &Candidate, case: CaseId, runs: &RunHeads) -> Result<Option<AdminCode>, (RefuseReason, String)> {
        if self.admission == Admission::Open || faults::on(Bug::IgnoreScope) {
            return Ok(None);
        }
        let (Some(signer), Some(blob)) = (&c.signer, &c.signature) else {
            return Err((RefuseReason::BadSignature, "the change is not signed".into()));
        };
        let provenance = trust::Provenance::from_blob(blob)
            .ok_or_else(|| (RefuseReason::BadSignature, format!("a signature of {} bytes", blob.len())))?;
        match provenance {
            trust::Provenance::Single(sig) => {
                let (key, scope) = self.signer_grant(signer)?;
                trust::verify_change_with(&key, &c.hash, &sig)
                    .map_err(|e| (RefuseReason::BadSignature, e.to_string()))?;
                Ok(scope)
            }
            trust::Provenance::RunHead { signature, others } => {
                let (key, scope) = self.signer_grant(signer)?;
                let mut hashes = others;
                hashes.push(c.hash);
                trust::verify_run_with(&key, case.as_bytes(), &hashes, &signature)
                    .map_err(|e| (RefuseReason::BadSignature, format!("run {e}")))?;
                Ok(scope)
            }
            trust::Provenance::RunMember { head } => match runs.get(&head) {
                Some((head_signer, members, Ok(scope))) if head_signer == signer && members.contains(&c.hash) => {
                    Ok(scope.clone())
                }
                Some((_, _, Err(e))) => Err(e.clone()),
                _ => Err((RefuseReason::BadSignature, "its run's signature did not come with it".into())),
            },
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
            let members: std::collections::BTreeSet<Hash> = others.into_iter().collect();
            // The first good copy of a head wins, as for any change.
            if heads.get(&c.hash).is_none_or(|(_, _, v)| v.is_err()) {
                heads.insert(c.hash, (*signer, members, verdict));
            }
        }
        heads
    }

    /// The grant of a signing key: its decompressed key and its scope, or why
    /// changes it signed are refused.
    fn grant_of(&self, signer: &[u8; 32]) -> Result<(VerifyingKey, Option<AdminCode>), (RefuseReason, String)> {
        let grant = match self.tx.grant(signer) {
            Ok(Some(g)) => g,
            Ok(None) => return Err((RefuseReason::UnknownSigner, "no grant for the signing key".into())),
            Err(e) => return Err((RefuseReason::UnknownSigner, e.to_string())),
        };
        let key = VerifyingKey::from_bytes(signer)
            .map_err(|_| (RefuseReason::BadSignature, trust::SignatureError::PublicKey.to_string()))?;
        let role = GrantRole::parse(&grant.role).map_err(|e| (RefuseReason::Role, e.to_string()))?;
        if role.is_server() {
            return Err((RefuseReason::Role, format!("{} is a server; servers relay but never write", grant.subject)));
        }
        let scope = AdminCode::parse(&grant.scope).map_err(|e| (RefuseReason::UnknownSigner, e.to_string()))?;
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
                from_pending: true,
                scope: None,
            });
        }
    }
    for c in incoming {
        let change = match doc::parse_change(&c.bytes) {
            Ok(change) => change,
            Err(e) => {
                cx.refuse(report, case, None, RefuseReason::Malformed, e.to_string())?;
                continue;
            }
        };
        let (hash, deps) = doc::change_key(&change);
        let known = doc.as_mut().is_some_and(|d| d.has_change(&hash));
        // The same change may come signed by someone else than a copy that is
        // already waiting (a careless import re-signs changes): keep both
        // copies until scope has been checked, then the first good one wins.
        let same_copy = candidates.iter().any(|k| k.hash == hash && k.signer == c.signer);
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
            Err((reason, detail)) => {
                if c.from_pending {
                    tx.remove_pending(&c.hash)?;
                }
                cx.refuse(report, case, Some(c.hash), reason, detail)?;
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
                cx.refuse(report, case, Some(c.hash), RefuseReason::OutOfScope, detail)?;
            } else if kept.iter().any(|k| k.hash == c.hash) {
                report.duplicates += 1;
            } else {
                kept.push(c);
            }
        }
        admitted = kept;
    } else {
        // Village unknown yet: keep one copy of each change waiting.
        let mut kept: Vec<Candidate> = Vec::with_capacity(admitted.len());
        for c in admitted {
            if kept.iter().any(|k| k.hash == c.hash) {
                report.duplicates += 1;
            } else {
                kept.push(c);
            }
        }
        admitted = kept;
    }
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
    for c in &waiting {
        if !c.from_pending {
            let p = PendingChange {
                hash: c.hash,
                case,
                bytes: c.bytes.clone(),
                received_from: c.received_from,
                signer: c.signer,
                signature: c.signature.clone(),
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
    let conflicts_before = doc.as_mut().map_or(0, |d| d.conflicts().len());
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
            let applied = target.apply(changes).and_then(|_| target.read(cx.policy));
            (target, applied)
        }
    };
    let problem = match &applied {
        Ok(state) if state.id != case => {
            Some((RefuseReason::Quarantined, "the change belongs to another case".to_owned()))
        }
        Ok(state) if before_village.as_ref().is_some_and(|v| v != &state.village) => {
            Some((RefuseReason::Quarantined, "the change moves the case to another village".to_owned()))
        }
        Ok(state) => {
            ready.iter().find(|c| c.scope.as_ref().is_some_and(|scope| !within(scope, &state.village))).map(|c| {
                let scope = c.scope.as_ref().map(ToString::to_string).unwrap_or_default();
                (RefuseReason::OutOfScope, format!("village {} is outside the author's area {scope}", state.village))
            })
        }
        Err(e) => Some((RefuseReason::Quarantined, format!("cannot apply: {e}"))),
    };
    if let Some((reason, detail)) = problem {
        // Refuse the whole group: the document may be half-changed, so it is
        // reloaded from the last commit. Authors of the same case share its
        // village, so one bad author rarely travels with good ones; those are
        // reported too and will be accepted when resent alone.
        for c in &ready {
            if c.from_pending {
                tx.remove_pending(&c.hash)?;
            }
            cx.refuse(report, case, Some(c.hash), reason, detail.clone())?;
        }
        let reloaded = match tx.snapshot(case)? {
            Some(bytes) if had_doc => Some(CaseDoc::load(&bytes, cx.actor.clone())?),
            _ => None,
        };
        return Ok(reloaded);
    }
    let state = applied?;
    let rowid = put_doc(tx, &mut target, &state)?;
    for c in &ready {
        tx.log_change(rowid, &c.hash, c.received_from, c.signer.as_ref(), c.signature.as_deref())?;
        if c.from_pending {
            tx.remove_pending(&c.hash)?;
        }
        report.applied += 1;
    }
    let conflicts: Vec<String> = target.conflicts().into_iter().map(|c| c.field).collect();
    if conflicts.len() > conflicts_before {
        let detail = format!("case {}: concurrent edits now disagree on {}", state.number, conflicts.join(", "));
        tx.audit(cx.now, "conflict", Some(case), cx.peer, &detail)?;
    }
    Ok(Some(target))
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
    let state = doc.read(cx.policy).ok()?;
    Some(Scratch { doc, state, applied: known })
}

fn within(scope: &AdminCode, village: &str) -> bool {
    AdminCode::parse(village).is_ok_and(|v| scope.contains(&v))
}
