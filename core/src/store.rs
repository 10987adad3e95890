//! The SQLite file of one replica: the only module that names rusqlite.
//!
//! # Tables (schema version in `PRAGMA user_version`)
//! - `meta`: key/value settings of the replica (identity, counters, policy).
//! - `cases`: one projected row per case, for queries. Lists never load documents.
//! - `docs`: the compacted Automerge snapshot of each case (its heads are read
//!   from the snapshot's header).
//! - `changes`: one row per change this replica holds, in the replica's own
//!   append order (`log_seq`). The bytes and the full hash live in the
//!   snapshot; a row keeps the first [`KEY_BYTES`] bytes of the hash and the
//!   log chain, which together name one change of the case's document (see
//!   [`LogEntry::hash_key`]).
//! - `pending`: changes received before their dependencies; applied when the
//!   rest arrives.
//! - `audit`: refused changes, quarantined input, merges; since schema 4 with
//!   a stable code, the change, its signer and parameters, so that words are
//!   made at output in the reader's language (older rows keep their text).
//! - `case_events`: the lifecycle events reports and `todo` count, one row
//!   each (session notes: one row per author and month), projected from the
//!   documents like `cases` (schema 5).
//! - `case_text`: the text `case list --search` looks in besides the title,
//!   DEFLATEd when that is smaller (searched after unpacking, ADR 33).
//! - `policy`: the newest signed county policy this replica installed.
//!
//! Schema 4 (ADR 20) adds what the merge audit reads: the time this replica
//! received each change (`changes.received_sec`, unix seconds, NULL for a
//! change written here, whose own time is its receive time), the open
//! conflicts of each case (`cases.open_conflicts`, NULL until the case is next
//! written), the structured audit columns, and per peer the key of its grant
//! and the lag recorded at the end of its last session.
//!
//! # Durability
//! WAL with `synchronous=FULL`: a committed transaction survives a crash or a
//! power cut, which is what lets the ledger (and later the sync server)
//! acknowledge an operation as soon as its transaction commits.
//!
//! # Encryption (ADR 10)
//! Given a [`DataKey`], the file is a SQLCipher database keyed with the raw
//! key (`PRAGMA key = "x'…'"`, no passphrase derivation: `vault` did that
//! once), its WAL encrypted alike. A new file is made mode 0600 before SQLite
//! opens it; SQLite gives its `-wal` and `-shm` files the same mode.
//! [`Store::encrypt_copy`] turns a plain file into an encrypted one with
//! `sqlcipher_export` and checks the copy before anyone relies on it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::case::{AdminCode, CaseId, Category, EventKind, Level, ReplicaId, Risk, RiskFlag, Status};
use crate::clock::Timestamp;
use crate::doc::Hash;
use crate::vault::DataKey;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 5;

/// The `meta` key a migration sets when the projected rows of existing cases
/// must be rebuilt from their documents (new columns it cannot fill in SQL);
/// the ledger does it on its next read-write open and removes the key.
pub const META_REPROJECT: &str = "reproject";

/// How many leading bytes of a change hash a log row keeps (see
/// [`LogEntry::hash_key`]): enough to find the change among the few of its
/// case at once; the row's chain decides between changes that share them.
pub const KEY_BYTES: usize = 2;

/// The page size of a new file (an existing file keeps its own).
const PAGE_SIZE: i64 = 16_384;

/// How long a writer waits for another process holding the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Store::encrypt_copy`] waits for the plain file to be free: a
/// server still running on it keeps it busy for good, so fail fast.
const EXCLUSIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite {op} failed: {source}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer fq.
    #[error("the ledger file has schema version {found}; this fq understands up to {SCHEMA_VERSION}")]
    NewerSchema {
        /// The version in the file.
        found: i32,
    },
    /// The disk is full or refused a write (an I/O error).
    #[error("the disk is full or refused the write")]
    DiskFull,
    /// The file is not a ledger or is damaged.
    #[error("the ledger file is damaged or not an fq ledger")]
    Corrupt,
    /// A stored value does not parse.
    #[error("stored {what} is invalid")]
    BadValue {
        /// Which value.
        what: &'static str,
    },
    /// The key given does not open the file (another ledger's key, or the
    /// file is damaged).
    #[error("the key does not open this ledger file")]
    KeyRejected,
    /// Another process (a running server) has the file open.
    #[error("another program is using the ledger file")]
    InUse,
    /// The encrypted copy did not hold what the plain file holds.
    #[error("the encrypted copy differs from the ledger: {what}")]
    CopyDiffers {
        /// What differed.
        what: &'static str,
    },
    /// Creating the file failed.
    #[error("creating the ledger file failed: {0}")]
    Create(#[source] std::io::Error),
}

fn sq(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| match source.sqlite_error_code() {
        // A full disk, a file-size limit (EFBIG) and a failing card all end
        // as a refused write; to the person holding the phone they are one
        // thing: nothing was saved, make room and try again.
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure) => StoreError::DiskFull,
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => StoreError::Corrupt,
        _ => StoreError::Sqlite { op, source },
    }
}

/// How to open a store file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if missing, migrate, read and write.
    Create,
    /// The file must exist; read and write.
    ReadWrite,
    /// The file must exist; never write (safe beside a running server).
    ReadOnly,
}

/// The projected columns of one case, as lists and reports see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseRow {
    /// Case id.
    pub id: CaseId,
    /// Case number.
    pub number: String,
    /// County code.
    pub county: String,
    /// Township code.
    pub township: String,
    /// Village code.
    pub village: String,
    /// Grid.
    pub grid: Option<u32>,
    /// Handling level.
    pub level: Level,
    /// Status.
    pub status: Status,
    /// Category.
    pub category: Category,
    /// Risk.
    pub risk: Risk,
    /// Deadline of the current level, for open cases.
    pub deadline: Option<Timestamp>,
    /// When the case was recorded.
    pub recorded_at: Timestamp,
    /// Latest change time.
    pub updated_at: Timestamp,
    /// Title.
    pub title: String,
    /// Responsible person.
    pub responsible: Option<String>,
    /// How many fields hold concurrent values.
    pub conflicts: u32,
    /// Open conflicts of every kind the audit lists (fields with concurrent
    /// values, concurrent text edits, contradicting lifecycle events); `None`
    /// for a row last written before schema 4. Not part of `case list`.
    #[serde(skip)]
    pub open_conflicts: Option<u32>,
    /// When the current level's clock started (the deadline is this plus the
    /// level's days in the policy in force).
    pub since: Timestamp,
    /// The level an escalation waits at.
    pub escalated_to: Option<Level>,
    /// Risk flags.
    pub flags: Vec<RiskFlag>,
    /// Who recorded the case: their staff id when known, else their name.
    pub recorded_by: String,
    /// The responsible person's staff id, when known.
    pub responsible_id: Option<String>,
    /// When the case was last settled, while settled or archived after it.
    pub settled_at: Option<Timestamp>,
    /// Follow-up visits since that settlement.
    pub visits: u32,
    /// Whether the remaining follow-ups were waived.
    pub follow_ups_waived: bool,
    /// When the unanswered supervision order is due, if there is one.
    pub supervised_due: Option<Timestamp>,
}

/// One lifecycle event as reports read it (`case_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// What happened. Notes are projected once per author and month.
    pub kind: EventKind,
    /// Device time.
    pub at: Timestamp,
    /// The level it concerns: recorded at, escalated to, accepted at,
    /// settled or failed at.
    pub level: Option<Level>,
    /// Who: a staff id when known, else the name as written.
    pub person: Option<String>,
    /// When a supervision order is due.
    pub due: Option<Timestamp>,
}

/// Filters for [`Store::list`]; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Status.
    pub status: Option<Status>,
    /// Level.
    pub level: Option<Level>,
    /// Category.
    pub category: Option<Category>,
    /// Only cases inside this county, township or village.
    pub within: Option<AdminCode>,
    /// Risk.
    pub risk: Option<Risk>,
    /// Only open cases whose deadline is before this time.
    pub overdue_at: Option<Timestamp>,
    /// Text contained in the title, description, notes, agreements or party names.
    pub search: Option<String>,
    /// At most this many rows.
    pub limit: Option<u32>,
}

/// One entry of the replica's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in this replica's log.
    pub log_seq: i64,
    /// The case.
    pub case: CaseId,
    /// Names the change within its case's document, together with the
    /// chain: the first [`KEY_BYTES`] bytes of its hash (rows migrated from
    /// schema 2 keep 8, or all 32 where another change of the case shared
    /// those 8). A key is only ever compared with the changes of one
    /// document; of those sharing it, the row's change is the one with
    /// `chain == chain_next(prev_chain, hash)` (see [`chain_next`]).
    pub hash_key: Vec<u8>,
    /// The log's chain value at the row before (0 before the first row).
    pub prev_chain: i64,
    /// The replica it came from; `None` if written here.
    pub received_from: Option<ReplicaId>,
    /// Public key of the authoring device, if the change was signed.
    pub signer: Option<[u8; 32]>,
    /// Signature of the authoring device, if one travelled with it.
    pub signature: Option<Vec<u8>>,
    /// The case's village, for scope filtering.
    pub village: String,
    /// A running digest of the whole log up to here: the first 8 bytes of
    /// SHA-256(previous chain, big-endian || change hash). Two logs with the
    /// same chain at a position hold the same changes in the same order up
    /// to it, so a peer's saved position can be checked in one lookup (a
    /// restored backup that re-received changes in another order is caught).
    pub chain: i64,
    /// When this replica received the change, to the second (its own clock);
    /// `None` for a change written here (its own time is when it was
    /// received) and for rows logged before schema 4.
    pub received_at: Option<Timestamp>,
}

/// A change kept until its dependencies arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// Change hash.
    pub hash: Hash,
    /// The case.
    pub case: CaseId,
    /// Raw change bytes.
    pub bytes: Vec<u8>,
    /// Where it came from.
    pub received_from: Option<ReplicaId>,
    /// Public key of the authoring device.
    pub signer: Option<[u8; 32]>,
    /// Signature that travelled with it.
    pub signature: Option<Vec<u8>>,
    /// When it arrived (kept as its receive time once it is applied).
    pub received_at: Option<Timestamp>,
}

/// What a server recorded at the end of a session with a child: how far
/// apart the two were when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerLag {
    /// Changes of this replica's log in the peer's scope that the peer had
    /// not acknowledged (and that did not come from it).
    pub lacks: i64,
    /// Positions of the peer's log this replica did not hold, as far as the
    /// peer's last word on its log head says.
    pub owes: i64,
    /// When it was recorded (this replica's clock).
    pub at: Timestamp,
}

/// What this replica knows of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRow {
    /// The peer's replica id.
    pub replica: ReplicaId,
    /// Its tier code.
    pub tier: String,
    /// Its scope.
    pub scope: String,
    /// How far this replica durably holds the peer's log.
    pub their_seq: i64,
    /// The hash of the peer's change at `their_seq` (all zero at 0).
    #[serde(skip)]
    pub their_hash: Hash,
    /// How far the peer acknowledged this replica's log.
    pub acked_seq: i64,
    /// When they last synced (local clock).
    pub last_sync: Option<Timestamp>,
    /// The public key of the peer's own grant (the first grant it sent in a
    /// session), which names it: `grants` holds its subject, role and scope.
    #[serde(skip)]
    pub signer: Option<[u8; 32]>,
    /// The lag recorded at the end of the last session with it (servers).
    pub lag: Option<PeerLag>,
}

/// A verified grant this replica has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// The grant's public key.
    pub signer: [u8; 32],
    /// The CA-signed grant bytes, relayed as they are.
    pub bytes: Vec<u8>,
    /// Certificate subject.
    pub subject: String,
    /// Role code.
    pub role: String,
    /// Scope code.
    pub scope: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the audit log.
    pub seq: i64,
    /// When it was written (local clock).
    pub at: Timestamp,
    /// What kind of record (`refused`, `quarantined`, `merged`, ...).
    pub kind: String,
    /// The case concerned, if any.
    pub case: Option<CaseId>,
    /// The replica or peer concerned, if any.
    pub peer: Option<String>,
    /// Details in words (English; written for older readers and logs). Since
    /// schema 4 the words people read are made from `code` and `params`.
    pub detail: String,
    /// A stable code (the refusal reason, `conflict`); `None` on rows written
    /// before schema 4, which only have `detail`.
    pub code: Option<String>,
    /// The change concerned (hex of its hash), if any.
    pub change: Option<String>,
    /// The public key that signed the change (hex), if any.
    pub signer: Option<String>,
    /// Parameters of the record (JSON object), if any.
    pub params: Option<serde_json::Value>,
}

/// An audit record to write.
#[derive(Debug, Clone, Default)]
pub struct NewAudit<'a> {
    /// `refused`, `quarantined`, `conflict`, ...
    pub kind: &'a str,
    /// The case concerned.
    pub case: Option<CaseId>,
    /// The peer it came from (replica id text).
    pub peer: Option<&'a str>,
    /// Words for older readers and logs.
    pub detail: &'a str,
    /// The stable code.
    pub code: Option<&'a str>,
    /// The change concerned.
    pub change: Option<Hash>,
    /// Its signer.
    pub signer: Option<[u8; 32]>,
    /// Parameters, a JSON object.
    pub params: Option<serde_json::Value>,
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives a power cut. Use wherever an
    /// acknowledgement depends on it: devices and servers.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives the process crashing but maybe
    /// not a power cut. For building benchmark fixtures and scratch replicas.
    Relaxed,
}

/// A replica's SQLite file.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// Whether a group transaction is open ([`Store::begin_group`]).
    group: bool,
}

/// The schema of a new file: what [`MIGRATIONS`] leave, made directly
/// (replaying them would make columns only to drop them, which is slow).
/// `schema_matches_the_migrations` checks that the two agree.
const SCHEMA: &str = "
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE cases (
        rowid INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        number TEXT NOT NULL,
        village TEXT NOT NULL, grid INTEGER,
        level TEXT NOT NULL, status TEXT NOT NULL, category TEXT NOT NULL, risk TEXT NOT NULL,
        deadline INTEGER, recorded_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        title TEXT NOT NULL, responsible TEXT, conflicts INTEGER NOT NULL DEFAULT 0,
        open_conflicts INTEGER,
        since INTEGER NOT NULL DEFAULT 0, escalated_to TEXT, flags TEXT, recorded_by TEXT NOT NULL DEFAULT '',
        responsible_id TEXT, settled_at INTEGER, visits INTEGER NOT NULL DEFAULT 0,
        waived INTEGER NOT NULL DEFAULT 0, supervised_due INTEGER);
     CREATE TABLE docs (case_rowid INTEGER PRIMARY KEY, snapshot BLOB NOT NULL);
     CREATE TABLE changes (
        log_seq INTEGER PRIMARY KEY,
        hash_key BLOB NOT NULL,
        case_rowid INTEGER NOT NULL,
        chain INTEGER NOT NULL,
        received_from BLOB, signer BLOB, signature BLOB, received_sec INTEGER);
     CREATE INDEX changes_signed ON changes(case_rowid) WHERE signature IS NOT NULL;
     CREATE TABLE pending (
        hash BLOB PRIMARY KEY, case_id BLOB NOT NULL, bytes BLOB NOT NULL,
        received_from BLOB, signature BLOB, received_at INTEGER NOT NULL, signer BLOB) WITHOUT ROWID;
     CREATE INDEX pending_case ON pending(case_id);
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL,
        case_id BLOB, peer TEXT, detail TEXT NOT NULL,
        code TEXT, change_hash BLOB, signer BLOB, params TEXT);
     CREATE TABLE peers (
        replica BLOB PRIMARY KEY, tier TEXT NOT NULL, scope TEXT NOT NULL,
        their_seq INTEGER NOT NULL DEFAULT 0, their_hash BLOB,
        acked_seq INTEGER NOT NULL DEFAULT 0, last_sync INTEGER,
        signer BLOB, lag_lacks INTEGER, lag_owes INTEGER, lag_at INTEGER) WITHOUT ROWID;
     CREATE TABLE grants (
        signer BLOB PRIMARY KEY, bytes BLOB NOT NULL, subject TEXT NOT NULL, role TEXT NOT NULL,
        scope TEXT NOT NULL, received_at INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE case_events (
        case_rowid INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL, at INTEGER NOT NULL,
        level INTEGER, person TEXT, due INTEGER, PRIMARY KEY (case_rowid, seq)) WITHOUT ROWID;
     CREATE TABLE case_text (case_rowid INTEGER PRIMARY KEY, text BLOB NOT NULL);
     CREATE TABLE policy (
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, bytes BLOB NOT NULL,
        installed_at INTEGER NOT NULL);";

/// How older files reach [`SCHEMA`]; entry `i` takes version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE cases (
        rowid INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        number TEXT NOT NULL,
        county TEXT NOT NULL, township TEXT NOT NULL, village TEXT NOT NULL, grid INTEGER,
        level TEXT NOT NULL, status TEXT NOT NULL, category TEXT NOT NULL, risk TEXT NOT NULL,
        deadline INTEGER, recorded_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        title TEXT NOT NULL, responsible TEXT, conflicts INTEGER NOT NULL DEFAULT 0);
     CREATE INDEX cases_number ON cases(number);
     CREATE TABLE docs (case_rowid INTEGER PRIMARY KEY, snapshot BLOB NOT NULL, heads BLOB NOT NULL);
     CREATE TABLE changes (
        log_seq INTEGER PRIMARY KEY,
        hash BLOB NOT NULL,
        case_rowid INTEGER NOT NULL,
        received_from BLOB, signature BLOB);
     CREATE TABLE pending (
        hash BLOB PRIMARY KEY, case_id BLOB NOT NULL, bytes BLOB NOT NULL,
        received_from BLOB, signature BLOB, received_at INTEGER NOT NULL) WITHOUT ROWID;
     CREATE INDEX pending_case ON pending(case_id);
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL,
        case_id BLOB, peer TEXT, detail TEXT NOT NULL);",
    // 2: sync — who signed each change, peers' log positions, device grants
    "ALTER TABLE changes ADD COLUMN signer BLOB;
     ALTER TABLE changes ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE pending ADD COLUMN signer BLOB;
     CREATE INDEX changes_case ON changes(case_rowid);
     CREATE TABLE peers (
        replica BLOB PRIMARY KEY, tier TEXT NOT NULL, scope TEXT NOT NULL,
        their_seq INTEGER NOT NULL DEFAULT 0, their_hash BLOB,
        acked_seq INTEGER NOT NULL DEFAULT 0, last_sync INTEGER) WITHOUT ROWID;
     CREATE TABLE grants (
        signer BLOB PRIMARY KEY, bytes BLOB NOT NULL, subject TEXT NOT NULL, role TEXT NOT NULL,
        scope TEXT NOT NULL, received_at INTEGER NOT NULL) WITHOUT ROWID;",
    // 3: a smaller file (ADR 6). County and township are prefixes of the
    // village; heads are in the snapshot's header; a log row keeps a hash key
    // (migrated rows 8 bytes, or the full hash where another change of the
    // same case shares those 8, so nothing is lost; new rows KEY_BYTES); only
    // rows with a signature are indexed by case (recovery reads them);
    // nothing looked cases up by number.
    "DROP INDEX cases_number;
     ALTER TABLE cases DROP COLUMN county;
     ALTER TABLE cases DROP COLUMN township;
     ALTER TABLE docs DROP COLUMN heads;
     CREATE TABLE changes_v3 (
        log_seq INTEGER PRIMARY KEY,
        hash_key BLOB NOT NULL,
        case_rowid INTEGER NOT NULL,
        chain INTEGER NOT NULL,
        received_from BLOB, signer BLOB, signature BLOB);
     INSERT INTO changes_v3(log_seq, hash_key, case_rowid, chain, received_from, signer, signature)
        SELECT c.log_seq,
               CASE WHEN EXISTS(SELECT 1 FROM changes o
                                WHERE o.case_rowid = c.case_rowid AND o.hash != c.hash
                                  AND substr(o.hash, 1, 8) = substr(c.hash, 1, 8))
                    THEN c.hash ELSE substr(c.hash, 1, 8) END,
               c.case_rowid, c.chain, c.received_from, c.signer, c.signature
        FROM changes c ORDER BY c.log_seq;
     DROP TABLE changes;
     ALTER TABLE changes_v3 RENAME TO changes;
     CREATE INDEX changes_signed ON changes(case_rowid) WHERE signature IS NOT NULL;",
    // 4: the merge audit (ADR 20). Columns only, added in place: an existing
    // file keeps every row and reads NULL where nothing was recorded.
    "ALTER TABLE cases ADD COLUMN open_conflicts INTEGER;
     ALTER TABLE changes ADD COLUMN received_sec INTEGER;
     ALTER TABLE audit ADD COLUMN code TEXT;
     ALTER TABLE audit ADD COLUMN change_hash BLOB;
     ALTER TABLE audit ADD COLUMN signer BLOB;
     ALTER TABLE audit ADD COLUMN params TEXT;
     ALTER TABLE peers ADD COLUMN signer BLOB;
     ALTER TABLE peers ADD COLUMN lag_lacks INTEGER;
     ALTER TABLE peers ADD COLUMN lag_owes INTEGER;
     ALTER TABLE peers ADD COLUMN lag_at INTEGER;",
    // 5: the officers' routines (ADR 33). Columns todo and reports read
    // (the level clock's start, follow-ups, supervision, people), the events
    // reports count, the text search looks in, the county policy in force.
    // Rows of existing cases are rebuilt from their documents on the next
    // read-write open (META_REPROJECT).
    "ALTER TABLE cases ADD COLUMN since INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE cases ADD COLUMN escalated_to TEXT;
     ALTER TABLE cases ADD COLUMN flags TEXT;
     ALTER TABLE cases ADD COLUMN recorded_by TEXT NOT NULL DEFAULT '';
     ALTER TABLE cases ADD COLUMN responsible_id TEXT;
     ALTER TABLE cases ADD COLUMN settled_at INTEGER;
     ALTER TABLE cases ADD COLUMN visits INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE cases ADD COLUMN waived INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE cases ADD COLUMN supervised_due INTEGER;
     CREATE TABLE case_events (
        case_rowid INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL, at INTEGER NOT NULL,
        level INTEGER, person TEXT, due INTEGER, PRIMARY KEY (case_rowid, seq)) WITHOUT ROWID;
     CREATE TABLE case_text (case_rowid INTEGER PRIMARY KEY, text BLOB NOT NULL);
     CREATE TABLE policy (
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, bytes BLOB NOT NULL,
        installed_at INTEGER NOT NULL);
     INSERT INTO meta(key, value) SELECT 'reproject', '5' WHERE EXISTS (SELECT 1 FROM cases)
        ON CONFLICT(key) DO UPDATE SET value = excluded.value;",
];

/// Prepared statements kept per connection: more than this module has.
const STATEMENT_CACHE: usize = 64;

impl Store {
    /// Opens (and for [`OpenMode::Create`], creates and migrates) a plain store file.
    pub fn open(path: &Path, mode: OpenMode, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with_key(path, mode, durability, None)
    }

    /// Opens a store file, encrypted with `key` if one is given (a new file is
    /// then created encrypted).
    pub fn open_with_key(
        path: &Path,
        mode: OpenMode,
        durability: Durability,
        key: Option<&DataKey>,
    ) -> Result<Self, StoreError> {
        let flags = match mode {
            OpenMode::Create => {
                create_private(path)?;
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            }
            OpenMode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
            OpenMode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sq("open"))?;
        quiet(&conn)?;
        if let Some(key) = key {
            apply_key(&conn, key)?;
        }
        Self::setup(conn, mode, durability).map_err(|e| match e {
            // SQLCipher reports a wrong key as "file is not a database" on the
            // first read.
            StoreError::Corrupt if key.is_some() => StoreError::KeyRejected,
            other => other,
        })
    }

    /// Writes an encrypted copy of the plain store file `plain` to `target`
    /// (which must not exist), keyed with `key`, and checks it: SQLite's
    /// integrity check, the same number of cases, changes, pending changes
    /// and audit records, and the same log head. The plain file is only read;
    /// it is held exclusively meanwhile, so nothing writes to it during the
    /// copy, and a server still running on it makes this fail with
    /// [`StoreError::InUse`].
    pub fn encrypt_copy(plain: &Path, target: &Path, key: &DataKey) -> Result<(), StoreError> {
        let conn =
            Connection::open_with_flags(plain, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sq("open"))?;
        quiet(&conn)?;
        conn.busy_timeout(EXCLUSIVE_TIMEOUT).map_err(sq("set busy timeout"))?;
        // In WAL mode every open connection holds a shared lock on the file:
        // an exclusive lock is only granted when nobody else has it open.
        let busy = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => StoreError::InUse,
            _ => sq("lock the ledger")(e),
        };
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(busy)?;
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;").map_err(busy)?;
        let version: i32 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sq("read schema version"))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::BadValue { what: "schema version (open it once with this fq first)" });
        }
        create_private(target)?;
        let target_text = target.to_str().ok_or(StoreError::BadValue { what: "file name (not UTF-8)" })?;
        let literal = key.sqlcipher_literal();
        conn.execute("ATTACH DATABASE ?1 AS encrypted KEY ?2", [target_text, literal.as_str()])
            .map_err(sq("attach the copy"))?;
        conn.pragma_update(Some("encrypted"), "cipher_page_size", PAGE_SIZE).map_err(sq("set the page size"))?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(())).map_err(sq("export"))?;
        conn.pragma_update(Some("encrypted"), "user_version", version).map_err(sq("export"))?;
        conn.execute_batch("DETACH DATABASE encrypted").map_err(sq("detach the copy"))?;
        let original = Self { conn, group: false };
        let copy = Self::open_with_key(target, OpenMode::ReadWrite, Durability::Full, Some(key))?;
        copy.integrity_check()?;
        let cipher: String = copy
            .conn
            .query_row("PRAGMA cipher_integrity_check", [], |r| r.get(0))
            .optional()
            .map_err(sq("check"))?
            .unwrap_or_default();
        if !cipher.is_empty() {
            return Err(StoreError::CopyDiffers { what: "page authentication" });
        }
        if copy.counts()? != original.counts()? {
            return Err(StoreError::CopyDiffers { what: "counts of cases, changes or audit records" });
        }
        if copy.log_head()? != original.log_head()?
            || copy.log_chain(copy.log_head()?)? != original.log_chain(original.log_head()?)?
        {
            return Err(StoreError::CopyDiffers { what: "log head" });
        }
        Ok(())
    }

    /// Sets a `meta` value outside any ledger operation (the device's
    /// enrolment, kept inside the encrypted file).
    pub fn set_meta_now(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let tx = self.transaction()?;
        tx.set_meta(key, value)?;
        tx.commit()
    }

    /// A store in memory, for tests and the simulator.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(sq("open"))?, OpenMode::Create, Durability::Full)
    }

    fn setup(conn: Connection, mode: OpenMode, durability: Durability) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sq("set busy timeout"))?;
        // Every statement here is cached; rusqlite's default of 16 would evict
        // some of the ~30 on every busy path and parse them again.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // SQLite plans with the values bound to `LIMIT ?` and re-prepares a
        // cached statement each time that value changes: log reads bind a
        // new limit on most calls. The query planner stability guarantee
        // plans once, without looking at bound values.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(sq("fix query plans"))?;
        let version: i32 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sq("read schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version });
        }
        if version == 0 && mode != OpenMode::ReadOnly {
            // Case snapshots are 1-3 KiB and a page holds whole rows, so a
            // page wastes about half a snapshot: 16 KiB pages waste a quarter
            // of what 4 KiB pages do (ADR 6: about 100 B a case less than
            // 8 KiB, and durable edits no slower).
            conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(sq("set page size"))?;
        }
        if mode != OpenMode::ReadOnly {
            // WAL lets readers (fq beside a running server) work during writes.
            conn.pragma_update(None, "journal_mode", "WAL").map_err(sq("enable WAL"))?;
            let sync = match durability {
                Durability::Full => "FULL",
                Durability::Relaxed => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", sync).map_err(sq("set synchronous"))?;
        }
        let mut store = Self { conn, group: false };
        if version < SCHEMA_VERSION {
            if mode == OpenMode::ReadOnly {
                return Err(StoreError::BadValue { what: "schema version (open it once read-write)" });
            }
            store.migrate(version)?;
        }
        Ok(store)
    }

    fn migrate(&mut self, from: i32) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sq("begin migration"))?;
        if from == 0 {
            // A new file gets the schema the migrations end with, directly.
            tx.execute_batch(SCHEMA).map_err(sq("create schema"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sq("create schema"))?;
            return tx.commit().map_err(sq("commit migration"));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
            tx.execute_batch(sql).map_err(sq("migrate"))?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX)).map_err(sq("migrate"))?;
        }
        tx.commit().map_err(sq("commit migration"))
    }

    /// Starts the single write transaction of one ledger operation: a
    /// savepoint inside the group transaction when one is open.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        let tx = if self.group {
            Inner::Savepoint(self.conn.savepoint().map_err(sq("begin"))?)
        } else {
            Inner::Transaction(
                self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sq("begin"))?,
            )
        };
        Ok(Tx { tx })
    }

    /// Opens a group transaction: until [`Store::commit_group`], each
    /// operation's [`Tx`] is a savepoint inside it, and only the group's
    /// commit reaches the disk. A server uses it to make one durable commit
    /// (one fsync) of the work of many sessions.
    pub fn begin_group(&mut self) -> Result<(), StoreError> {
        if !self.group {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(sq("begin group"))?;
            self.group = true;
        }
        Ok(())
    }

    /// Commits the group transaction, if one is open. On error everything
    /// since [`Store::begin_group`] is rolled back.
    pub fn commit_group(&mut self) -> Result<(), StoreError> {
        if !std::mem::replace(&mut self.group, false) {
            return Ok(());
        }
        let done = self.conn.execute_batch("COMMIT").map_err(sq("commit group"));
        if done.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        done
    }

    /// Rolls the group transaction back, if one is open.
    pub fn rollback_group(&mut self) -> Result<(), StoreError> {
        if !std::mem::replace(&mut self.group, false) {
            return Ok(());
        }
        self.conn.execute_batch("ROLLBACK").map_err(sq("roll back group"))
    }

    /// A setting from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta_get(&self.conn, key)
    }

    /// Cases matching `filter`: open cases first, high risk first, then by
    /// nearest deadline and newest.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<CaseRow>, StoreError> {
        let mut sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(s) = filter.status {
            add(" AND status = ?", s.code().to_owned().into());
        }
        if let Some(l) = filter.level {
            add(" AND level = ?", l.code().to_owned().into());
        }
        if let Some(c) = filter.category {
            add(" AND category = ?", c.code().to_owned().into());
        }
        if let Some(r) = filter.risk {
            add(" AND risk = ?", r.code().to_owned().into());
        }
        if let Some(w) = &filter.within {
            // Codes are digits: every village inside `w` sorts in [w, w~).
            add(" AND village >= ?", w.to_string().into());
            add(" AND village < ?", format!("{w}~").into());
        }
        if let Some(t) = filter.overdue_at {
            add(" AND status IN ('recorded','mediating','escalated') AND deadline < ?", t.0.into());
        }
        if let Some(q) = &filter.search {
            // A substring, as typed: Chinese has no spaces between words, so
            // any run of characters may be what someone looks for. The other
            // text is kept packed (ADR 33): it is searched here, and the cases
            // it matched are handed to SQL as a JSON array.
            add(" AND (instr(title, ?) > 0", q.clone().into());
            add(" OR rowid IN (SELECT value FROM json_each(?)))", self.text_matches(q)?.into());
        }
        sql.push_str(
            " ORDER BY status IN ('recorded','mediating','escalated') DESC,
              CASE risk WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END,
              deadline IS NULL, deadline, recorded_at DESC, id",
        );
        if let Some(n) = filter.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let mut stmt = self.conn.prepare_cached(&sql).map_err(sq("prepare list"))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), read_case_row).map_err(sq("list cases"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sq("list cases"))
    }

    /// The newest signed policy this replica installed: (version, bytes).
    pub fn policy(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.conn
            .prepare_cached("SELECT version, bytes FROM policy WHERE id = 1")
            .map_err(sq("prepare policy"))?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()
            .map_err(sq("read policy"))
            .map(|p| p.map(|(v, b)| (u64::try_from(v).unwrap_or(0), b)))
    }

    /// The cases inside `within` that may need someone's attention at `now`:
    /// open cases due before `due_before`, escalations waiting at `level`,
    /// settled cases with follow-ups still to make, and cases with an
    /// unanswered supervision order. `todo` sorts and groups them.
    pub fn attention(
        &self,
        within: &AdminCode,
        due_before: Timestamp,
        level: Level,
        visits: u32,
    ) -> Result<Vec<CaseRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {CASE_COLUMNS} FROM cases
                 WHERE village >= ?1 AND village < ?2 AND (
                   (status IN ('recorded','mediating','escalated') AND deadline < ?3)
                   OR (status = 'escalated' AND escalated_to = ?4)
                   OR (status = 'settled' AND waived = 0 AND visits < ?5)
                   OR supervised_due IS NOT NULL)"
            ))
            .map_err(sq("prepare todo"))?;
        let rows = stmt
            .query_map(
                params![within.as_str(), format!("{within}~"), due_before.0, level.code(), visits],
                read_case_row,
            )
            .map_err(sq("read todo"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sq("read todo"))
    }

    /// Every case inside `within` with its projected events, in row order,
    /// handed to `each` one at a time (nothing is loaded all at once; no
    /// document is read). What reports are computed from.
    pub fn scan(&self, within: &AdminCode, mut each: impl FnMut(&CaseRow, &[EventRow])) -> Result<usize, StoreError> {
        let mut cases = self
            .conn
            .prepare(&format!(
                "SELECT rowid, {CASE_COLUMNS} FROM cases WHERE village >= ?1 AND village < ?2 ORDER BY rowid"
            ))
            .map_err(sq("prepare scan"))?;
        let mut events = self
            .conn
            .prepare("SELECT case_rowid, kind, at, level, person, due FROM case_events ORDER BY case_rowid, seq")
            .map_err(sq("prepare scan"))?;
        let mut case_rows = cases
            .query_map([within.as_str().to_owned(), format!("{within}~")], |r| {
                let rowid: i64 = r.get(0)?;
                // The case columns start at 1: read them as a row of their own.
                Ok((rowid, read_case_row_at(r, 1)?))
            })
            .map_err(sq("scan cases"))?;
        let mut event_rows = events
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .map_err(sq("scan events"))?;
        let mut pending = event_rows.next().transpose().map_err(sq("scan events"))?;
        let mut batch: Vec<EventRow> = Vec::new();
        let mut count = 0;
        while let Some(case) = case_rows.next().transpose().map_err(sq("scan cases"))? {
            let (rowid, row) = case;
            batch.clear();
            // Both run in row order: skip events of cases outside the scope,
            // take this case's.
            while let Some((r, kind, at, level, person, due)) = pending.take() {
                if r > rowid {
                    pending = Some((r, kind, at, level, person, due));
                    break;
                }
                if r == rowid
                    && let Some(kind) = event_kind(kind)
                {
                    batch.push(EventRow {
                        kind,
                        at: Timestamp(at),
                        level: level.and_then(level_of_code),
                        person,
                        due: due.map(Timestamp),
                    });
                }
                pending = event_rows.next().transpose().map_err(sq("scan events"))?;
            }
            each(&row, &batch);
            count += 1;
        }
        Ok(count)
    }

    /// The row ids of the cases whose search text holds `q`, as a JSON array.
    fn text_matches(&self, q: &str) -> Result<String, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT case_rowid, text FROM case_text").map_err(sq("prepare search"))?;
        let rows = stmt
            .query_map([], |r| {
                let rowid: i64 = r.get(0)?;
                let hit = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Blob(b) => unpack_text(b).is_some_and(|t| t.contains(q)),
                    _ => false,
                };
                Ok(hit.then_some(rowid))
            })
            .map_err(sq("search"))?;
        let mut out = String::from("[");
        for hit in rows {
            if let Some(rowid) = hit.map_err(sq("search"))? {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&rowid.to_string());
            }
        }
        out.push(']');
        Ok(out)
    }

    /// Cases whose number or id starts with `prefix` (at most `limit`).
    pub fn find(&self, prefix: &str, limit: u32) -> Result<Vec<CaseRow>, StoreError> {
        let lower = prefix.trim().to_ascii_lowercase();
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {CASE_COLUMNS} FROM cases
                 WHERE substr(number, 1, length(?1)) = ?1 OR substr(lower(hex(id)), 1, length(?2)) = ?2
                 ORDER BY number LIMIT ?3"
            ))
            .map_err(sq("prepare find"))?;
        let hex_prefix: String = lower.chars().filter(|c| *c != '-').collect();
        let rows = stmt.query_map(params![lower, hex_prefix, limit], read_case_row).map_err(sq("find case"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sq("find case"))
    }

    /// The projected row of a case.
    pub fn case_row(&self, case: CaseId) -> Result<Option<CaseRow>, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = ?1"))
            .map_err(sq("prepare case"))?
            .query_row([case.as_bytes()], read_case_row)
            .optional()
            .map_err(sq("read case"))
    }

    /// The saved document of a case.
    pub fn snapshot(&self, case: CaseId) -> Result<Option<Vec<u8>>, StoreError> {
        snapshot_get(&self.conn, case)
    }

    /// Up to `limit` log entries after position `after`, oldest first.
    pub fn log_after(&self, after: i64, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.log_seq > ?1 ORDER BY c.log_seq LIMIT ?2"
            ))
            .map_err(sq("prepare log"))?;
        let rows = stmt.query_map(params![after, limit], read_log_row).map_err(sq("read log"))?;
        rows.map(|r| r.map_err(sq("read log")).and_then(ParseLog::parse)).collect()
    }

    /// The indexes a relaying server needs to read the part of its log that
    /// lies in a child's scope without reading all of it (devices, which
    /// never relay, do without them and stay small). Idempotent.
    ///
    /// An index on `case_rowid` alone is ordered by (case_rowid, log_seq)
    /// already (`log_seq` is the rowid every index entry ends with) and seeks
    /// `case_rowid = ? AND log_seq > ?` as well, 3 bytes an entry smaller
    /// (ADR 6). It also serves recovery's reads of signed rows, so the
    /// partial `changes_signed` index is dropped beside it.
    pub fn ensure_relay_indexes(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "CREATE INDEX IF NOT EXISTS relay_cases_village ON cases(village);
                 CREATE INDEX IF NOT EXISTS relay_changes_case ON changes(case_rowid);
                 DROP INDEX IF EXISTS changes_signed;",
            )
            .map_err(sq("create relay indexes"))
    }

    /// Like [`Store::log_after`], but only the rows of cases whose village
    /// starts with `scope` (a division code), through the relay indexes.
    pub fn log_after_within(&self, after: i64, scope: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        // Village codes are digits: every code with this prefix sorts in [scope, scope~).
        let end = format!("{scope}~");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE k.village >= ?1 AND k.village < ?2 AND c.log_seq > ?3 ORDER BY c.log_seq LIMIT ?4"
            ))
            .map_err(sq("prepare log"))?;
        let rows = stmt.query_map(params![scope, end, after, limit], read_log_row).map_err(sq("read log"))?;
        rows.map(|r| r.map_err(sq("read log")).and_then(ParseLog::parse)).collect()
    }

    /// How many log rows after `after` belong to cases inside `scope` (a division code prefix).
    pub fn count_log_after_within(&self, after: i64, scope: &str) -> Result<u64, StoreError> {
        let end = format!("{scope}~");
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE k.village >= ?1 AND k.village < ?2 AND c.log_seq > ?3",
            )
            .map_err(sq("prepare log count"))?
            .query_row(params![scope, end, after], |r| r.get(0))
            .map_err(sq("count log"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Log rows after `after` of the urgent cases inside `scope` (a division
    /// code prefix), most urgent class first, oldest first within a class: 0
    /// high risk (民转刑), 1 an escalation waiting to be accepted. At most
    /// `limit` rows.
    pub fn urgent_log_after(&self, after: i64, scope: &str, limit: u32) -> Result<Vec<(u8, LogEntry)>, StoreError> {
        let end = format!("{scope}~");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS}, CASE WHEN {CRITICAL} THEN 0 ELSE 1 END AS urgency
                 FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE ({CRITICAL} OR k.status = 'escalated')
                   AND k.village >= ?1 AND k.village < ?2 AND c.log_seq > ?3
                 ORDER BY urgency, c.log_seq LIMIT ?4"
            ))
            .map_err(sq("prepare urgent log"))?;
        let rows = stmt
            .query_map(params![scope, end, after, limit], |r| Ok((read_log_row(r)?, r.get::<_, u8>(LOG_COLUMN_COUNT)?)))
            .map_err(sq("read urgent log"))?;
        rows.map(|r| {
            let (raw, urgency) = r.map_err(sq("read urgent log"))?;
            Ok((urgency, raw.parse()?))
        })
        .collect()
    }

    /// How many log rows after `after` belong to urgent cases (see
    /// [`Store::urgent_log_after`]) inside `scope`, and how many to others.
    /// Rows that came from `from` are not counted: they are that peer's own.
    pub fn waiting_after(&self, after: i64, scope: &str, from: Option<ReplicaId>) -> Result<(i64, i64), StoreError> {
        let end = format!("{scope}~");
        let from = from.map(|f| f.as_bytes().to_vec());
        self.conn
            .prepare_cached(&format!(
                "SELECT coalesce(sum({CRITICAL} OR k.status = 'escalated'), 0),
                        coalesce(sum(NOT ({CRITICAL} OR k.status = 'escalated')), 0)
                 FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.log_seq > ?1 AND k.village >= ?2 AND k.village < ?3
                   AND (?4 IS NULL OR c.received_from IS NULL OR c.received_from != ?4)"
            ))
            .map_err(sq("prepare waiting"))?
            .query_row(params![after, scope, end, from], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sq("read waiting"))
    }

    /// The log's chain value at position `seq` (see [`LogEntry::chain`]), if
    /// the log reaches that far.
    pub fn log_chain(&self, seq: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached("SELECT chain FROM changes WHERE log_seq = ?1")
            .map_err(sq("prepare log"))?
            .query_row([seq], |r| r.get(0))
            .optional()
            .map_err(sq("read log"))
    }

    /// The log rows of a case that carry a signature, oldest first: what
    /// recovery sends with the changes a peer lacks. (Rows without one, the
    /// changes written here, are not indexed by case.)
    pub fn signed_case_changes(&self, case: CaseId) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.case_rowid = (SELECT rowid FROM cases WHERE id = ?1) AND c.signature IS NOT NULL
                 ORDER BY c.log_seq"
            ))
            .map_err(sq("prepare case changes"))?;
        let rows = stmt.query_map([case.as_bytes()], read_log_row).map_err(sq("read case changes"))?;
        rows.map(|r| r.map_err(sq("read case changes")).and_then(ParseLog::parse)).collect()
    }

    /// Every log row of `case`, oldest first.
    pub fn case_log(&self, case: CaseId) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.case_rowid = (SELECT rowid FROM cases WHERE id = ?1)
                 ORDER BY c.log_seq"
            ))
            .map_err(sq("prepare case log"))?;
        let rows = stmt.query_map([case.as_bytes()], read_log_row).map_err(sq("read case log"))?;
        rows.map(|r| r.map_err(sq("read case log")).and_then(ParseLog::parse)).collect()
    }

    /// The cases inside `scope` that have changes, urgent first (high risk or 民转刑, then
    /// escalated), then the rest, oldest first (by their first change here).
    pub fn cases_urgent_first(&self, scope: &str) -> Result<Vec<CaseId>, StoreError> {
        let end = format!("{scope}~");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT k.id FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE k.village >= ?1 AND k.village < ?2
                 GROUP BY k.rowid
                 ORDER BY CASE WHEN {CRITICAL} THEN 0 WHEN k.status = 'escalated' THEN 1 ELSE 2 END,
                          min(c.log_seq)"
            ))
            .map_err(sq("prepare cases urgent first"))?;
        let rows = stmt
            .query_map(params![scope, end], |r| {
                let id: Vec<u8> = r.get(0)?;
                let id: [u8; 16] = id.try_into().map_err(|_| {
                    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "bad case id".into())
                })?;
                Ok(CaseId::from_bytes(id))
            })
            .map_err(sq("read cases"))?;
        rows.map(|r| r.map_err(sq("read cases"))).collect()
    }

    /// The snapshot of every case inside `within`, sorted by case id.
    pub fn snapshots_within(&self, within: &AdminCode) -> Result<Vec<(CaseId, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.id, d.snapshot FROM cases c JOIN docs d ON d.case_rowid = c.rowid
                 WHERE c.village >= ?1 AND c.village < ?2 ORDER BY c.id",
            )
            .map_err(sq("prepare digest"))?;
        let rows = stmt
            .query_map([within.to_string(), format!("{within}~")], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sq("read digest"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, snapshot) = row.map_err(sq("read digest"))?;
            out.push((case_id(&id)?, snapshot));
        }
        Ok(out)
    }

    /// What this replica knows of a peer.
    pub fn peer(&self, replica: ReplicaId) -> Result<Option<PeerRow>, StoreError> {
        peer_get(&self.conn, replica)
    }

    /// Whether a change waits in `pending`.
    pub fn is_pending(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM pending WHERE hash = ?1)")
            .map_err(sq("prepare holds"))?
            .query_row([hash], |r| r.get(0))
            .map_err(sq("read holds"))
    }

    /// Whether the log of `case` holds `hash`: a row whose key is a prefix of
    /// it and whose chain was computed from it (see [`LogEntry::hash_key`];
    /// rows with chain 0, from schema 1, go by their 8-byte key). Without an
    /// index by case (devices) this reads the whole log: it is a check for
    /// tests and the simulator.
    pub fn logs_change(&self, case: CaseId, hash: &Hash) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.chain,
                        coalesce((SELECT p.chain FROM changes p WHERE p.log_seq < c.log_seq
                                  ORDER BY p.log_seq DESC LIMIT 1), 0)
                 FROM changes c
                 WHERE c.case_rowid = (SELECT rowid FROM cases WHERE id = ?1)
                   AND c.hash_key = substr(?2, 1, length(c.hash_key))",
            )
            .map_err(sq("prepare holds"))?;
        let rows = stmt
            .query_map(params![case.as_bytes(), hash], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sq("read holds"))?;
        for row in rows {
            let (chain, prev) = row.map_err(sq("read holds"))?;
            if chain == 0 || chain_next(prev, hash) == chain {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The log rows whose hash key another row of the same case shares,
    /// by case: where a change may be logged twice (or two changes merely
    /// share a prefix; resolving the keys tells them apart).
    pub fn shared_key_rows(&self) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE (c.case_rowid, c.hash_key) IN
                       (SELECT case_rowid, hash_key FROM changes GROUP BY case_rowid, hash_key HAVING count(*) > 1)
                 ORDER BY c.case_rowid, c.log_seq"
            ))
            .map_err(sq("prepare shared keys"))?;
        let rows = stmt.query_map([], read_log_row).map_err(sq("read shared keys"))?;
        rows.map(|r| r.map_err(sq("read shared keys")).and_then(ParseLog::parse)).collect()
    }

    /// Every peer this replica has synced with.
    pub fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {PEER_COLUMNS} FROM peers ORDER BY replica"))
            .map_err(sq("prepare peers"))?;
        let rows = stmt.query_map([], read_peer_row).map_err(sq("read peers"))?;
        rows.map(|r| r.map_err(sq("read peers")).and_then(|r| r)).collect()
    }

    /// A grant by its public key.
    pub fn grant(&self, signer: &[u8; 32]) -> Result<Option<GrantRow>, StoreError> {
        grant_get(&self.conn, signer)
    }

    /// Every grant held, oldest first.
    pub fn grants(&self) -> Result<Vec<GrantRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT signer, bytes, subject, role, scope FROM grants ORDER BY received_at, signer")
            .map_err(sq("prepare grants"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .map_err(sq("read grants"))?;
        rows.map(|r| {
            let (signer, bytes, subject, role, scope) = r.map_err(sq("read grants"))?;
            Ok(GrantRow { signer: key32(signer)?, bytes, subject, role, scope })
        })
        .collect()
    }

    /// The highest log position.
    pub fn log_head(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("SELECT coalesce(max(log_seq), 0) FROM changes")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sq("read log head"))
    }

    /// How many changes wait for their dependencies.
    pub fn pending_count(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM pending")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sq("count pending"))
    }

    /// How many changes were written on this replica itself (no peer sent
    /// them). On a server every one of them is a fault: servers relay and
    /// never write, so no parent will take such a change.
    pub fn local_change_count(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM changes WHERE received_from IS NULL")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sq("count local changes"))
    }

    /// Counts of cases, changes, pending changes and audit records.
    pub fn counts(&self) -> Result<[i64; 4], StoreError> {
        self.conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM changes),
                        (SELECT count(*) FROM pending), (SELECT count(*) FROM audit)",
            )
            .and_then(|mut s| s.query_row([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])))
            .map_err(sq("count"))
    }

    /// The newest `limit` audit records, newest first.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_where(&[], None, limit)
    }

    /// The newest `limit` audit records of the given kinds (all kinds if
    /// none is given) written at or after `since`, newest first.
    pub fn audit_where(
        &self,
        kinds: &[&str],
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let kinds = serde_json::Value::from(kinds.to_vec()).to_string();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, at, kind, case_id, peer, detail, code, change_hash, signer, params FROM audit
                 WHERE at >= ?1 AND (json_array_length(?2) = 0 OR kind IN (SELECT value FROM json_each(?2)))
                 ORDER BY seq DESC LIMIT ?3",
            )
            .map_err(sq("prepare audit"))?;
        let rows = stmt
            .query_map(params![since.map_or(i64::MIN, |t| t.0), kinds, limit], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, Option<Vec<u8>>>(3)?, r.get(4)?, r.get(5)?),
                    (
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<Vec<u8>>>(7)?,
                        r.get::<_, Option<Vec<u8>>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ),
                ))
            })
            .map_err(sq("read audit"))?;
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut out = Vec::new();
        for row in rows {
            let ((seq, at, kind, case, peer, detail), (code, change, signer, params)) =
                row.map_err(sq("read audit"))?;
            out.push(AuditEntry {
                seq,
                at: Timestamp(at),
                kind,
                case: case.map(|c| case_id(&c)).transpose()?,
                peer,
                detail,
                code,
                change: change.map(hex),
                signer: signer.map(hex),
                // A record this build cannot read is still shown by its words.
                params: params.and_then(|p| serde_json::from_str(&p).ok()),
            });
        }
        Ok(out)
    }

    /// How many audit records of the given kinds were written at or after `since`.
    pub fn count_audit(&self, kinds: &[&str], since: Timestamp) -> Result<i64, StoreError> {
        let kinds = serde_json::Value::from(kinds.to_vec()).to_string();
        self.conn
            .prepare_cached("SELECT count(*) FROM audit WHERE at >= ?1 AND kind IN (SELECT value FROM json_each(?2))")
            .and_then(|mut s| s.query_row(params![since.0, kinds], |r| r.get(0)))
            .map_err(sq("count audit"))
    }

    /// The cases `fq audit conflicts` must look at, by row id: those with open
    /// conflicts, and those whose count is unknown (last written before
    /// schema 4), inside `within`.
    pub fn conflicted_cases(&self, within: Option<&AdminCode>) -> Result<Vec<(i64, CaseRow)>, StoreError> {
        let (low, high) = match within {
            Some(w) => (w.to_string(), format!("{w}~")),
            None => (String::new(), "~".to_owned()),
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT rowid, {CASE_COLUMNS} FROM cases
                 WHERE (conflicts > 0 OR open_conflicts IS NULL OR open_conflicts > 0)
                   AND village >= ?1 AND village < ?2
                 ORDER BY number"
            ))
            .map_err(sq("prepare conflicts"))?;
        let rows = stmt
            .query_map(params![low, high], |r| {
                let rowid: i64 = r.get(0)?;
                Ok((rowid, read_case_row_at(r, 1)?))
            })
            .map_err(sq("read conflicts"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sq("read conflicts"))
    }

    /// A case's row id and projected row.
    pub fn case_with_rowid(&self, case: CaseId) -> Result<Option<(i64, CaseRow)>, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT rowid, {CASE_COLUMNS} FROM cases WHERE id = ?1"))
            .map_err(sq("prepare case"))?
            .query_row([case.as_bytes()], |r| Ok((r.get(0)?, read_case_row_at(r, 1)?)))
            .optional()
            .map_err(sq("read case"))
    }

    /// Every log row of the given cases (by row id), in log order. On a
    /// server the relay index serves it; a device reads its (small) log.
    pub fn logs_of(&self, case_rowids: &[i64]) -> Result<Vec<LogEntry>, StoreError> {
        let ids = serde_json::Value::from(case_rowids.to_vec()).to_string();
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.case_rowid IN (SELECT value FROM json_each(?1)) ORDER BY c.log_seq"
            ))
            .map_err(sq("prepare case log"))?;
        let rows = stmt.query_map([ids], read_log_row).map_err(sq("read case log"))?;
        rows.map(|r| r.map_err(sq("read case log")).and_then(ParseLog::parse)).collect()
    }

    /// How many log rows after `after` belong to cases inside `scope` and did
    /// not come from `peer`: what `peer` still lacks of this log. A server
    /// reads it through its relay indexes.
    pub fn count_unacked(&self, after: i64, scope: &AdminCode, peer: ReplicaId) -> Result<i64, StoreError> {
        let end = format!("{scope}~");
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE k.village >= ?1 AND k.village < ?2 AND c.log_seq > ?3
                   AND (c.received_from IS NULL OR c.received_from != ?4)",
            )
            .and_then(|mut s| s.query_row(params![scope.as_str(), end, after, peer.as_bytes()], |r| r.get(0)))
            .map_err(sq("count unacknowledged"))
    }

    /// How many rows of changes received from a peer have no receive time
    /// (a health check: since schema 4 every one has).
    pub fn received_without_time(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM changes WHERE received_from IS NOT NULL AND received_sec IS NULL")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sq("count receive times"))
    }

    /// This connection's page cache setting (`PRAGMA cache_size`).
    pub fn cache_size(&self) -> Result<i64, StoreError> {
        self.conn.pragma_query_value(None, "cache_size", |r| r.get(0)).map_err(sq("read cache size"))
    }

    /// Sets this connection's page cache (`PRAGMA cache_size`: pages, or KiB if negative).
    pub fn set_cache_size(&self, value: i64) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "cache_size", value).map_err(sq("set cache size"))
    }

    /// (cases with open conflicts, open conflicts, cases whose count is not
    /// known because they were last written before schema 4).
    pub fn conflict_counts(&self) -> Result<(i64, i64, i64), StoreError> {
        self.conn
            .prepare_cached(
                "SELECT coalesce(sum(open_conflicts > 0), 0), coalesce(sum(open_conflicts), 0),
                        coalesce(sum(open_conflicts IS NULL), 0)
                 FROM cases",
            )
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
            .map_err(sq("count conflicts"))
    }

    /// Makes this connection keep up to `mib` MiB of the file in memory: a
    /// whole-file check reads the log in case order and returns to the same
    /// pages often.
    pub fn set_cache_mib(&self, mib: u32) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "cache_size", -i64::from(mib) * 1024).map_err(sq("set cache size"))
    }

    /// Every (log position, chain) of the log, in order: what `verify` checks
    /// each row's chain against (the chain of the row before it).
    pub fn log_chains(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT log_seq, chain FROM changes ORDER BY log_seq").map_err(sq("prepare chains"))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sq("read chains"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sq("read chains"))
    }

    /// Every case (or one) with its snapshot and log rows, in case row order,
    /// handed to `each` one case at a time; `each` returns false to stop.
    /// Log rows that name no case come as a case without a row. `chains` is
    /// [`Store::log_chains`], from which each row's `prev_chain` is taken.
    /// Reading is streamed: memory holds one case at a time.
    ///
    /// Made for a check of a file that may have been altered: a value of the
    /// wrong type or shape in a row is reported with its case (a case row in
    /// `row_error`, a log row in `bad_log`), never a reason to stop.
    pub fn scan_cases(
        &self,
        only: Option<CaseId>,
        chains: &[(i64, i64)],
        mut each: impl FnMut(StoredCase) -> bool,
    ) -> Result<(), StoreError> {
        let only_rowid = match only {
            Some(c) => match self.case_with_rowid(c)? {
                Some((rowid, _)) => Some(rowid),
                None => return Ok(()),
            },
            None => None,
        };
        let (low, high) = only_rowid.map_or((i64::MIN, i64::MAX), |r| (r, r));
        let mut cases = self
            .conn
            .prepare(&format!(
                "SELECT k.rowid, {CASE_COLUMNS}, d.snapshot FROM cases k LEFT JOIN docs d ON d.case_rowid = k.rowid
                 WHERE k.rowid BETWEEN ?1 AND ?2 ORDER BY k.rowid"
            ))
            .map_err(sq("prepare case scan"))?;
        let mut log = self
            .conn
            .prepare(
                "SELECT case_rowid, log_seq, hash_key, received_from, signer, signature, chain, received_sec
                 FROM changes WHERE case_rowid BETWEEN ?1 AND ?2 ORDER BY case_rowid, log_seq",
            )
            .map_err(sq("prepare log scan"))?;
        let mut case_rows = cases.query(params![low, high]).map_err(sq("scan cases"))?;
        let mut log_rows = log.query(params![low, high]).map_err(sq("scan log"))?;
        let prev_chain = |seq: i64| match chains.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) | Err(i) => i.checked_sub(1).and_then(|j| chains.get(j)).map_or(0, |(_, c)| *c),
        };
        let mut next_log = || -> Result<Option<(i64, ScannedRow)>, StoreError> {
            let Some(r) = log_rows.next().map_err(sq("scan log"))? else { return Ok(None) };
            let case_rowid: i64 = r.get(0).map_err(sq("scan log"))?;
            let log_seq: i64 = r.get(1).map_err(sq("scan log"))?;
            let raw = (|| -> Result<RawLogRow, String> {
                Ok(RawLogRow {
                    log_seq,
                    hash_key: lenient_blob(r, 2)?.ok_or("hash_key")?,
                    from: lenient_blob(r, 3)?,
                    signer: lenient_blob(r, 4)?,
                    signature: lenient_blob(r, 5)?,
                    chain: r.get::<_, i64>(6).map_err(|_| "chain")?,
                    received: r.get::<_, Option<i64>>(7).map_err(|_| "received_sec")?,
                })
            })();
            Ok(Some((case_rowid, raw.map_err(|what| (log_seq, what)))))
        };
        let mut pending_log = next_log()?;
        let mut read_case = || -> Result<Option<CaseRead>, StoreError> {
            let Some(r) = case_rows.next().map_err(sq("scan cases"))? else { return Ok(None) };
            let rowid: i64 = r.get(0).map_err(sq("scan cases"))?;
            let id = r.get::<_, Vec<u8>>(1).ok().and_then(|b| case_id(&b).ok());
            let row = read_case_row_at(r, 1).map_err(|e| e.to_string());
            // After the row id and the case's columns.
            let snapshot = lenient_blob(r, 1 + CASE_COLUMN_COUNT).unwrap_or(None);
            Ok(Some(CaseRead { rowid, id, row, snapshot }))
        };
        let mut pending_case = read_case()?;
        loop {
            let next_rowid = match (&pending_case, &pending_log) {
                (None, None) => return Ok(()),
                (Some(c), Some((l, _))) => c.rowid.min(*l),
                (Some(c), None) => c.rowid,
                (None, Some((l, _))) => *l,
            };
            let read = match pending_case.take() {
                Some(c) if c.rowid == next_rowid => {
                    pending_case = read_case()?;
                    Some(c)
                }
                other => {
                    pending_case = other;
                    None
                }
            };
            let (id, row, row_error, snapshot) = match read {
                Some(CaseRead { id, row: Ok(row), snapshot, .. }) => (Some(row.id).or(id), Some(row), None, snapshot),
                Some(CaseRead { id, row: Err(e), snapshot, .. }) => (id, None, Some(e), snapshot),
                None => (None, None, None, None),
            };
            let case = id.unwrap_or(CaseId::from_bytes([0; 16]));
            let village = row.as_ref().map(|r| r.village.clone()).unwrap_or_default();
            let mut entries = Vec::new();
            let mut bad_log = Vec::new();
            while let Some((rowid, raw)) = pending_log.take() {
                if rowid != next_rowid {
                    pending_log = Some((rowid, raw));
                    break;
                }
                match raw {
                    Ok(raw) => {
                        let (seq, prev) = (raw.log_seq, prev_chain(raw.log_seq));
                        match raw.into_entry(case, &village, prev) {
                            Ok(e) => entries.push(e),
                            Err(e) => bad_log.push((seq, e.to_string())),
                        }
                    }
                    Err(bad) => bad_log.push(bad),
                }
                pending_log = next_log()?;
            }
            let stored = StoredCase { rowid: next_rowid, id, row, row_error, snapshot, log: entries, bad_log };
            if !each(stored) {
                return Ok(());
            }
        }
    }

    /// Runs SQLite's integrity check; `Ok(())` if the file is sound.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let r: String =
            self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(sq("integrity check"))?;
        if r == "ok" { Ok(()) } else { Err(StoreError::Corrupt) }
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, so SQLite (and
/// its `-wal` and `-shm` files, which copy the mode) never make it readable
/// by others.
fn create_private(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Create(e)),
    }
}

/// Stops SQLCipher from logging to standard error: a wrong key is an error
/// the caller reports in the user's words, never a line of SQLCipher's.
fn quiet(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA cipher_log_level = NONE;").map_err(sq("silence cipher log"))
}

/// Keys the main database of `conn` (SQLCipher's raw-key form). Must come before
/// anything reads it; the page size is not stored in clear, so it is set on
/// every open (ADR 6's 16 KiB pages, as in plain files).
fn apply_key(conn: &Connection, key: &DataKey) -> Result<(), StoreError> {
    let literal = key.sqlcipher_literal();
    let sql = zeroize::Zeroizing::new(format!(
        "PRAGMA key = \"{}\"; PRAGMA cipher_page_size = {PAGE_SIZE};",
        literal.as_str()
    ));
    conn.execute_batch(&sql).map_err(sq("set the key"))
}

const CASE_COLUMNS: &str = "id, number, village, grid, level, status, category, risk, \
                            deadline, recorded_at, updated_at, title, responsible, conflicts, \
                            since, escalated_to, flags, recorded_by, responsible_id, settled_at, visits, waived, \
                            supervised_due, open_conflicts";

/// How many columns [`CASE_COLUMNS`] names.
const CASE_COLUMN_COUNT: usize = 24;

fn read_case_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaseRow> {
    read_case_row_at(r, 0)
}

/// A case row from [`CASE_COLUMNS`] starting at column `at`.
fn read_case_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<CaseRow> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(at + i, rusqlite::types::Type::Text, format!("bad {what}").into())
    };
    let id: Vec<u8> = r.get(at)?;
    let id: [u8; 16] = id.try_into().map_err(|_| bad(at, "case id"))?;
    let text = |i: usize| r.get::<_, String>(at + i);
    let village = text(2)?;
    // County and township are the 6- and 9-digit prefixes of the village.
    let prefix = |n: usize| village.get(..n).unwrap_or_default().to_owned();
    Ok(CaseRow {
        id: CaseId::from_bytes(id),
        number: text(1)?,
        county: prefix(6),
        township: prefix(9),
        grid: r.get(at + 3)?,
        level: Level::parse(&text(4)?).map_err(|_| bad(at + 4, "level"))?,
        status: Status::parse(&text(5)?).map_err(|_| bad(at + 5, "status"))?,
        category: Category::parse(&text(6)?).map_err(|_| bad(at + 6, "category"))?,
        risk: Risk::parse(&text(7)?).map_err(|_| bad(at + 7, "risk"))?,
        deadline: r.get::<_, Option<i64>>(at + 8)?.map(Timestamp),
        recorded_at: Timestamp(r.get(at + 9)?),
        updated_at: Timestamp(r.get(at + 10)?),
        title: text(11)?,
        responsible: r.get(at + 12)?,
        conflicts: r.get(at + 13)?,
        since: Timestamp(r.get(at + 14)?),
        escalated_to: r.get::<_, Option<String>>(at + 15)?.and_then(|l| Level::parse(&l).ok()),
        flags: r
            .get::<_, Option<String>>(at + 16)?
            .map(|f| f.split(',').filter_map(|c| RiskFlag::parse(c).ok()).collect())
            .unwrap_or_default(),
        recorded_by: text(17)?,
        responsible_id: r.get(at + 18)?,
        settled_at: r.get::<_, Option<i64>>(at + 19)?.map(Timestamp),
        visits: r.get(at + 20)?,
        follow_ups_waived: r.get::<_, i64>(at + 21)? != 0,
        supervised_due: r.get::<_, Option<i64>>(at + 22)?.map(Timestamp),
        open_conflicts: r.get(at + 23)?,
        village,
    })
}

/// One case as a whole-file check reads it (see [`Store::scan_cases`]).
#[derive(Debug, Clone)]
pub struct StoredCase {
    /// The case's row id (what log rows refer to it by).
    pub rowid: i64,
    /// The case id, when its row has a readable one.
    pub id: Option<CaseId>,
    /// Its projected row; `None` when log rows name a case that has none, or
    /// when the row does not read (see `row_error`).
    pub row: Option<CaseRow>,
    /// Why the row does not read, if it does not.
    pub row_error: Option<String>,
    /// Its saved document; `None` when the row has no snapshot.
    pub snapshot: Option<Vec<u8>>,
    /// Its log rows, in log order.
    pub log: Vec<LogEntry>,
    /// Log rows that do not read: (position, which value).
    pub bad_log: Vec<(i64, String)>,
}

/// A case row as [`Store::scan_cases`] reads it.
struct CaseRead {
    rowid: i64,
    id: Option<CaseId>,
    row: Result<CaseRow, String>,
    snapshot: Option<Vec<u8>>,
}

/// A BLOB column, also accepting TEXT (a hand edit with the sqlite3 shell
/// easily stores one); anything else names the column.
fn lenient_blob(r: &rusqlite::Row<'_>, i: usize) -> Result<Option<Vec<u8>>, String> {
    use rusqlite::types::ValueRef;
    match r.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
        _ => Err(r.as_ref().column_name(i).map_or_else(|_| format!("column {i}"), ToOwned::to_owned)),
    }
}

/// A log row as [`Store::scan_cases`] reads it, or (position, which value)
/// when it does not read.
type ScannedRow = Result<RawLogRow, (i64, String)>;

/// A log row as [`Store::scan_cases`] reads it, before its case is known.
#[derive(Debug)]
struct RawLogRow {
    log_seq: i64,
    hash_key: Vec<u8>,
    from: Option<Vec<u8>>,
    signer: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    chain: i64,
    received: Option<i64>,
}

impl RawLogRow {
    fn into_entry(self, case: CaseId, village: &str, prev_chain: i64) -> Result<LogEntry, StoreError> {
        (
            self.log_seq,
            case.as_bytes().to_vec(),
            self.hash_key,
            self.from,
            self.signer,
            self.signature,
            village.to_owned(),
            self.chain,
            prev_chain,
            self.received,
        )
            .parse()
    }
}

/// The small number an event kind is stored as in `case_events`.
/// The first byte of a packed search text: UTF-8 follows as it is.
const TEXT_PLAIN: u8 = 0;
/// The first byte of a packed search text: raw DEFLATE of the UTF-8 follows.
const TEXT_DEFLATE: u8 = 1;
/// Longest search text unpacked; a longer one (only a forged file could
/// hold one) is not searched.
const MAX_SEARCH_TEXT_BYTES: u64 = 8 * 1024 * 1024;

/// A case's search text as kept in `case_text`: DEFLATEd when that is
/// smaller (Chinese notes shrink by about a third), else as it is.
fn pack_text(text: &str) -> Vec<u8> {
    use std::io::Write as _;
    let plain = text.as_bytes();
    let mut z = flate2::write::DeflateEncoder::new(vec![TEXT_DEFLATE], flate2::Compression::default());
    if z.write_all(plain).is_ok()
        && let Ok(packed) = z.finish()
        && packed.len() <= plain.len()
    {
        return packed;
    }
    let mut out = Vec::with_capacity(plain.len() + 1);
    out.push(TEXT_PLAIN);
    out.extend_from_slice(plain);
    out
}

/// The text [`pack_text`] packed, or `None` if the bytes are not such.
fn unpack_text(bytes: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    use std::io::Read as _;
    match bytes.split_first()? {
        (&TEXT_PLAIN, rest) => std::str::from_utf8(rest).ok().map(std::borrow::Cow::Borrowed),
        (&TEXT_DEFLATE, rest) => {
            let mut text = String::new();
            flate2::read::DeflateDecoder::new(rest).take(MAX_SEARCH_TEXT_BYTES).read_to_string(&mut text).ok()?;
            Some(std::borrow::Cow::Owned(text))
        }
        _ => None,
    }
}

fn event_code(kind: EventKind) -> i64 {
    EventKind::ALL.iter().position(|k| *k == kind).map_or(0, |i| i64::try_from(i).unwrap_or(0) + 1)
}

fn event_kind(code: i64) -> Option<EventKind> {
    let i = usize::try_from(code.checked_sub(1)?).ok()?;
    EventKind::ALL.get(i).copied()
}

fn level_code(level: Level) -> i64 {
    Level::ALL.iter().position(|l| *l == level).map_or(0, |i| i64::try_from(i).unwrap_or(0) + 1)
}

fn level_of_code(code: i64) -> Option<Level> {
    Level::ALL.get(usize::try_from(code.checked_sub(1)?).ok()?).copied()
}

fn flags_text(flags: &[RiskFlag]) -> Option<String> {
    (!flags.is_empty()).then(|| flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(","))
}

fn case_id(b: &[u8]) -> Result<CaseId, StoreError> {
    let a: [u8; 16] = b.try_into().map_err(|_| StoreError::BadValue { what: "case id" })?;
    Ok(CaseId::from_bytes(a))
}

fn replica_id(b: &[u8]) -> Result<ReplicaId, StoreError> {
    let a: [u8; 16] = b.try_into().map_err(|_| StoreError::BadValue { what: "replica id" })?;
    Ok(ReplicaId::from_bytes(a))
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .map_err(sq("prepare meta"))?
        .query_row([key], |r| r.get(0))
        .optional()
        .map_err(sq("read meta"))
}

fn snapshot_get(conn: &Connection, case: CaseId) -> Result<Option<Vec<u8>>, StoreError> {
    conn.prepare_cached("SELECT d.snapshot FROM docs d JOIN cases c ON c.rowid = d.case_rowid WHERE c.id = ?1")
        .map_err(sq("prepare snapshot"))?
        .query_row([case.as_bytes()], |r| r.get(0))
        .optional()
        .map_err(sq("read snapshot"))
}

const PEER_COLUMNS: &str =
    "replica, tier, scope, their_seq, their_hash, acked_seq, last_sync, signer, lag_lacks, lag_owes, lag_at";

fn read_peer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<PeerRow, StoreError>> {
    let replica: Vec<u8> = r.get(0)?;
    let hash: Option<Vec<u8>> = r.get(4)?;
    let tier: String = r.get(1)?;
    let scope: String = r.get(2)?;
    let their_seq: i64 = r.get(3)?;
    let acked_seq: i64 = r.get(5)?;
    let last_sync: Option<i64> = r.get(6)?;
    let signer: Option<Vec<u8>> = r.get(7)?;
    let lag: (Option<i64>, Option<i64>, Option<i64>) = (r.get(8)?, r.get(9)?, r.get(10)?);
    Ok((|| {
        Ok(PeerRow {
            replica: replica_id(&replica)?,
            tier,
            scope,
            their_seq,
            their_hash: hash.map(hash32).transpose()?.unwrap_or([0; 32]),
            acked_seq,
            last_sync: last_sync.map(Timestamp),
            signer: signer.map(key32).transpose()?,
            lag: match lag {
                (Some(lacks), Some(owes), Some(at)) => Some(PeerLag { lacks, owes, at: Timestamp(at) }),
                _ => None,
            },
        })
    })())
}

fn peer_get(conn: &Connection, replica: ReplicaId) -> Result<Option<PeerRow>, StoreError> {
    conn.prepare_cached(&format!("SELECT {PEER_COLUMNS} FROM peers WHERE replica = ?1"))
        .map_err(sq("prepare peer"))?
        .query_row([replica.as_bytes()], read_peer_row)
        .optional()
        .map_err(sq("read peer"))?
        .transpose()
}

fn grant_get(conn: &Connection, signer: &[u8; 32]) -> Result<Option<GrantRow>, StoreError> {
    conn.prepare_cached("SELECT bytes, subject, role, scope FROM grants WHERE signer = ?1")
        .map_err(sq("prepare grant"))?
        .query_row([signer], |r| {
            Ok(GrantRow { signer: *signer, bytes: r.get(0)?, subject: r.get(1)?, role: r.get(2)?, scope: r.get(3)? })
        })
        .optional()
        .map_err(sq("read grant"))
}

/// The columns [`read_log_row`] reads, from `changes c JOIN cases k`. The
/// chain of the row before is one lookup by primary key.
const LOG_COLUMNS: &str = "c.log_seq, k.id, c.hash_key, c.received_from, c.signer, c.signature, k.village, c.chain, \
     coalesce((SELECT p.chain FROM changes p WHERE p.log_seq < c.log_seq ORDER BY p.log_seq DESC LIMIT 1), 0), \
     c.received_sec";

/// How many columns [`LOG_COLUMNS`] names.
const LOG_COLUMN_COUNT: usize = 10;

/// A case that crosses first in every push and pull: high risk, or flagged
/// 民转刑 (its flags are kept comma-separated).
const CRITICAL: &str = "(k.risk = 'high' OR (',' || coalesce(k.flags, '') || ',') LIKE '%,criminal-risk,%')";

type LogRaw = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, String, i64, i64, Option<i64>);

fn read_log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRaw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
}

trait ParseLog {
    fn parse(self) -> Result<LogEntry, StoreError>;
}

impl ParseLog for LogRaw {
    fn parse(self) -> Result<LogEntry, StoreError> {
        let (log_seq, case, hash_key, from, signer, signature, village, chain, prev_chain, received) = self;
        if hash_key.is_empty() || hash_key.len() > 32 {
            return Err(StoreError::BadValue { what: "change hash key" });
        }
        Ok(LogEntry {
            log_seq,
            case: case_id(&case)?,
            hash_key,
            prev_chain,
            received_from: from.map(|f| replica_id(&f)).transpose()?,
            signer: signer.map(key32).transpose()?,
            signature,
            village,
            chain,
            received_at: received.map(|s| Timestamp(s.saturating_mul(1000))),
        })
    }
}

/// The log chain after appending `hash` to a log whose chain was `prev`.
pub fn chain_next(prev: i64, hash: &Hash) -> i64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(prev.to_be_bytes());
    h.update(hash);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    i64::from_be_bytes(first)
}

fn hash32(v: Vec<u8>) -> Result<Hash, StoreError> {
    v.try_into().map_err(|_| StoreError::BadValue { what: "change hash" })
}

fn key32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::BadValue { what: "public key" })
}

/// The write transaction of one ledger operation. Dropped without
/// [`Tx::commit`], it rolls back and nothing is written.
#[derive(Debug)]
pub struct Tx<'a> {
    tx: Inner<'a>,
}

/// A transaction of its own, or a savepoint in a group transaction.
#[derive(Debug)]
enum Inner<'a> {
    Transaction(rusqlite::Transaction<'a>),
    Savepoint(rusqlite::Savepoint<'a>),
}

impl std::ops::Deref for Inner<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Inner::Transaction(t) => t,
            Inner::Savepoint(s) => s,
        }
    }
}

impl Tx<'_> {
    /// A setting from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta_get(&self.tx, key)
    }

    /// Writes a setting.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .map_err(sq("prepare meta"))?
            .execute([key, value])
            .map_err(sq("write meta"))?;
        Ok(())
    }

    /// The saved document of a case.
    pub fn snapshot(&self, case: CaseId) -> Result<Option<Vec<u8>>, StoreError> {
        snapshot_get(&self.tx, case)
    }

    /// How many conflicts a case's row counts open (its field conflicts for
    /// a row from before schema 4), as this transaction sees it.
    pub fn open_conflicts(&self, case: CaseId) -> Result<Option<u32>, StoreError> {
        self.tx
            .prepare_cached("SELECT coalesce(open_conflicts, conflicts) FROM cases WHERE id = ?1")
            .map_err(sq("prepare case"))?
            .query_row([case.as_bytes()], |r| r.get(0))
            .optional()
            .map_err(sq("read case"))
    }

    /// Inserts or replaces a case's projected row and snapshot; returns its
    /// local row id. (`row.county` and `row.township` are not stored: they
    /// are read back as prefixes of `row.village`.)
    pub fn put_case(&self, row: &CaseRow, snapshot: &[u8]) -> Result<i64, StoreError> {
        let rowid: i64 = self
            .tx
            .prepare_cached(
                "INSERT INTO cases(id, number, village, grid, level, status, category, risk,
                                   deadline, recorded_at, updated_at, title, responsible, conflicts,
                                   since, escalated_to, flags, recorded_by, responsible_id, settled_at, visits,
                                   waived, supervised_due, open_conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                         ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)
                 ON CONFLICT(id) DO UPDATE SET number=excluded.number, village=excluded.village, grid=excluded.grid,
                   level=excluded.level, status=excluded.status, category=excluded.category,
                   risk=excluded.risk, deadline=excluded.deadline, recorded_at=excluded.recorded_at,
                   updated_at=excluded.updated_at, title=excluded.title,
                   responsible=excluded.responsible, conflicts=excluded.conflicts,
                   since=excluded.since, escalated_to=excluded.escalated_to, flags=excluded.flags,
                   recorded_by=excluded.recorded_by, responsible_id=excluded.responsible_id,
                   settled_at=excluded.settled_at, visits=excluded.visits, waived=excluded.waived,
                   supervised_due=excluded.supervised_due,
                   open_conflicts=excluded.open_conflicts
                 RETURNING rowid",
            )
            .map_err(sq("prepare case upsert"))?
            .query_row(
                params![
                    row.id.as_bytes(),
                    row.number,
                    row.village,
                    row.grid,
                    row.level.code(),
                    row.status.code(),
                    row.category.code(),
                    row.risk.code(),
                    row.deadline.map(|d| d.0),
                    row.recorded_at.0,
                    row.updated_at.0,
                    row.title,
                    row.responsible,
                    row.conflicts,
                    row.since.0,
                    row.escalated_to.map(Level::code),
                    flags_text(&row.flags),
                    row.recorded_by,
                    row.responsible_id,
                    row.settled_at.map(|t| t.0),
                    row.visits,
                    i64::from(row.follow_ups_waived),
                    row.supervised_due.map(|t| t.0),
                    row.open_conflicts,
                ],
                |r| r.get(0),
            )
            .map_err(sq("write case"))?;
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO docs(case_rowid, snapshot) VALUES (?1, ?2)")
            .map_err(sq("prepare snapshot"))?
            .execute(params![rowid, snapshot])
            .map_err(sq("write snapshot"))?;
        Ok(rowid)
    }

    /// Replaces a case's projected events and search text.
    ///
    /// Only what changed is written: most changes add one event at the end,
    /// or none (a second note in a month already noted), and every page a
    /// durable edit dirties is one more 16 KiB write to the WAL (ADR 33).
    pub fn put_projection(&self, case_rowid: i64, events: &[EventRow], text: &str) -> Result<(), StoreError> {
        let held = self.held_events(case_rowid)?;
        let from = match held {
            Some(held) if events.starts_with(&held) => held.len(),
            _ => {
                self.tx
                    .prepare_cached("DELETE FROM case_events WHERE case_rowid = ?1")
                    .map_err(sq("prepare events"))?
                    .execute([case_rowid])
                    .map_err(sq("write events"))?;
                0
            }
        };
        let mut insert = self
            .tx
            .prepare_cached(
                "INSERT INTO case_events(case_rowid, seq, kind, at, level, person, due)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sq("prepare events"))?;
        for (seq, e) in events.iter().enumerate().skip(from) {
            insert
                .execute(params![
                    case_rowid,
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    event_code(e.kind),
                    e.at.0,
                    e.level.map(level_code),
                    e.person,
                    e.due.map(|d| d.0)
                ])
                .map_err(sq("write events"))?;
        }
        let packed = pack_text(text);
        let same: Option<bool> = self
            .tx
            .prepare_cached("SELECT text = ?2 FROM case_text WHERE case_rowid = ?1")
            .map_err(sq("prepare search text"))?
            .query_row(params![case_rowid, packed], |r| r.get(0))
            .optional()
            .map_err(sq("read search text"))?;
        if same != Some(true) {
            self.tx
                .prepare_cached("INSERT OR REPLACE INTO case_text(case_rowid, text) VALUES (?1, ?2)")
                .map_err(sq("prepare search text"))?
                .execute(params![case_rowid, packed])
                .map_err(sq("write search text"))?;
        }
        Ok(())
    }

    /// The projected events a case has now, or `None` if one of them is of
    /// a kind this build does not know (then they are all written again).
    fn held_events(&self, case_rowid: i64) -> Result<Option<Vec<EventRow>>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT kind, at, level, person, due FROM case_events WHERE case_rowid = ?1 ORDER BY seq")
            .map_err(sq("prepare events"))?;
        let rows = stmt
            .query_map([case_rowid], |r| {
                let kind = event_kind(r.get(0)?);
                let at = Timestamp(r.get(1)?);
                let level = r.get::<_, Option<i64>>(2)?.and_then(level_of_code);
                let person: Option<String> = r.get(3)?;
                let due = r.get::<_, Option<i64>>(4)?.map(Timestamp);
                Ok(kind.map(|kind| EventRow { kind, at, level, person, due }))
            })
            .map_err(sq("read events"))?;
        let mut out = Vec::new();
        for row in rows {
            match row.map_err(sq("read events"))? {
                Some(e) => out.push(e),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Keeps the newest signed policy (only ever one row).
    pub fn set_policy(&self, version: u64, bytes: &[u8], at: Timestamp) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO policy(id, version, bytes, installed_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET version = excluded.version, bytes = excluded.bytes,
                   installed_at = excluded.installed_at",
            )
            .map_err(sq("prepare policy"))?
            .execute(params![i64::try_from(version).unwrap_or(i64::MAX), bytes, at.0])
            .map_err(sq("write policy"))?;
        Ok(())
    }

    /// Recomputes the deadline of every open case from its level clock and
    /// the days per level `days` gives (a new policy): SQL only, no document
    /// is loaded.
    pub fn reproject_deadlines(&self, days: impl Fn(Level) -> i64) -> Result<usize, StoreError> {
        let day_ms = Timestamp::DAY_MS;
        let n = self
            .tx
            .prepare_cached(
                "UPDATE cases SET deadline = since + ?4 * CASE level WHEN 'village' THEN ?1 WHEN 'township' THEN ?2
                                                                  ELSE ?3 END
                 WHERE status IN ('recorded','mediating','escalated')",
            )
            .map_err(sq("prepare deadlines"))?
            .execute(params![days(Level::Village), days(Level::Township), days(Level::County), day_ms])
            .map_err(sq("write deadlines"))?;
        Ok(n)
    }

    /// Removes a setting.
    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM meta WHERE key = ?1")
            .map_err(sq("prepare meta"))?
            .execute([key])
            .map_err(sq("write meta"))?;
        Ok(())
    }

    /// Every case id, for rebuilding projections.
    pub fn case_ids(&self) -> Result<Vec<CaseId>, StoreError> {
        let mut stmt = self.tx.prepare("SELECT id FROM cases ORDER BY rowid").map_err(sq("prepare ids"))?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(sq("read ids"))?;
        rows.map(|r| r.map_err(sq("read ids")).and_then(|b| case_id(&b))).collect()
    }

    /// Appends a change to the log; returns its position. The row keeps the
    /// first [`KEY_BYTES`] bytes of `hash`; the chain is of the full hash.
    /// `received_at` is when a change from elsewhere arrived (kept to the
    /// second); `None` for a change written here.
    pub fn log_change(
        &self,
        case_rowid: i64,
        hash: &Hash,
        received_from: Option<ReplicaId>,
        signer: Option<&[u8; 32]>,
        signature: Option<&[u8]>,
        received_at: Option<Timestamp>,
    ) -> Result<i64, StoreError> {
        let prev: i64 = self
            .tx
            .prepare_cached("SELECT chain FROM changes ORDER BY log_seq DESC LIMIT 1")
            .map_err(sq("prepare log"))?
            .query_row([], |r| r.get(0))
            .optional()
            .map_err(sq("read log"))?
            .unwrap_or(0);
        let chain = chain_next(prev, hash);
        self.tx
            .prepare_cached(
                "INSERT INTO changes(hash_key, case_rowid, received_from, signer, signature, chain, received_sec)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sq("prepare log"))?
            .execute(params![
                &hash[..KEY_BYTES],
                case_rowid,
                received_from.map(|r| r.as_bytes().to_vec()),
                signer.map(|s| s.to_vec()),
                signature,
                chain,
                received_at.map(|t| t.0.div_euclid(1000))
            ])
            .map_err(sq("append log"))?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Keeps a change whose dependencies have not arrived; false if already kept.
    pub fn put_pending(&self, p: &PendingChange, at: Timestamp) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO pending(hash, case_id, bytes, received_from, signature, received_at, signer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sq("prepare pending"))?
            .execute(params![
                p.hash,
                p.case.as_bytes(),
                p.bytes,
                p.received_from.map(|r| r.as_bytes().to_vec()),
                p.signature,
                p.received_at.map_or(at.0, |t| t.0),
                p.signer.map(|s| s.to_vec())
            ])
            .map_err(sq("keep pending change"))?;
        Ok(n == 1)
    }

    /// The changes of a case waiting for dependencies.
    pub fn pending_for(&self, case: CaseId) -> Result<Vec<PendingChange>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT hash, bytes, received_from, signature, signer, received_at FROM pending WHERE case_id = ?1",
            )
            .map_err(sq("prepare pending"))?;
        let rows = stmt
            .query_map([case.as_bytes()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(sq("read pending"))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, bytes, from, signature, signer, received_at) = row.map_err(sq("read pending"))?;
            out.push(PendingChange {
                hash: hash32(hash)?,
                case,
                bytes,
                received_from: from.map(|f| replica_id(&f)).transpose()?,
                signer: signer.map(key32).transpose()?,
                signature,
                received_at: Some(Timestamp(received_at)),
            });
        }
        Ok(out)
    }

    /// Forgets a pending change once it is applied.
    pub fn remove_pending(&self, hash: &Hash) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM pending WHERE hash = ?1")
            .map_err(sq("prepare pending"))?
            .execute([hash])
            .map_err(sq("remove pending"))?;
        Ok(())
    }

    /// Writes an audit record.
    pub fn audit(&self, at: Timestamp, record: &NewAudit<'_>) -> Result<(), StoreError> {
        let params = record.params.as_ref().map(ToString::to_string);
        self.tx
            .prepare_cached(
                "INSERT INTO audit(at, kind, case_id, peer, detail, code, change_hash, signer, params)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(sq("prepare audit"))?
            .execute(params![
                at.0,
                record.kind,
                record.case.map(|c| c.as_bytes().to_vec()),
                record.peer,
                record.detail,
                record.code,
                record.change.map(|h| h.to_vec()),
                record.signer.map(|k| k.to_vec()),
                params
            ])
            .map_err(sq("write audit"))?;
        Ok(())
    }

    /// Records which grant a peer holds (the first grant it sent in a
    /// session), creating the peer's row if this is the first word of it.
    pub fn set_peer_signer(&self, peer: &PeerRow, signer: &[u8; 32]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO peers(replica, tier, scope, signer) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(replica) DO UPDATE SET signer = excluded.signer",
            )
            .map_err(sq("prepare peer"))?
            .execute(params![peer.replica.as_bytes(), peer.tier, peer.scope, signer])
            .map_err(sq("write peer"))?;
        Ok(())
    }

    /// Records the lag with a peer at the end of a session.
    pub fn set_peer_lag(&self, replica: ReplicaId, lag: &PeerLag) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE peers SET lag_lacks = ?2, lag_owes = ?3, lag_at = ?4 WHERE replica = ?1")
            .map_err(sq("prepare peer"))?
            .execute(params![replica.as_bytes(), lag.lacks, lag.owes, lag.at.0])
            .map_err(sq("write peer"))?;
        Ok(())
    }

    /// Records how far this replica holds a peer's log (and who the peer is).
    pub fn set_peer_received(&self, peer: &PeerRow) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO peers(replica, tier, scope, their_seq, their_hash, acked_seq, last_sync)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(replica) DO UPDATE SET tier = excluded.tier, scope = excluded.scope,
                   their_seq = excluded.their_seq, their_hash = excluded.their_hash,
                   last_sync = excluded.last_sync",
            )
            .map_err(sq("prepare peer"))?
            .execute(params![
                peer.replica.as_bytes(),
                peer.tier,
                peer.scope,
                peer.their_seq,
                peer.their_hash,
                peer.acked_seq,
                peer.last_sync.map(|t| t.0)
            ])
            .map_err(sq("write peer"))?;
        Ok(())
    }

    /// What this replica knows of a peer.
    pub fn peer(&self, replica: ReplicaId) -> Result<Option<PeerRow>, StoreError> {
        peer_get(&self.tx, replica)
    }

    /// Moves a peer's acknowledged position back to `seq` if it is further (never forward).
    pub fn lower_peer_acked(&self, replica: ReplicaId, seq: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE peers SET acked_seq = min(acked_seq, max(?2, 0)) WHERE replica = ?1")
            .map_err(sq("prepare peer"))?
            .execute(params![replica.as_bytes(), seq])
            .map_err(sq("write peer"))?;
        Ok(())
    }

    /// Records that a peer acknowledged this replica's log up to `seq` (never moves it back).
    pub fn set_peer_acked(&self, replica: ReplicaId, seq: i64, at: Timestamp) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE peers SET acked_seq = max(acked_seq, ?2), last_sync = ?3 WHERE replica = ?1")
            .map_err(sq("prepare peer"))?
            .execute(params![replica.as_bytes(), seq, at.0])
            .map_err(sq("write peer"))?;
        Ok(())
    }

    /// A grant by its public key.
    pub fn grant(&self, signer: &[u8; 32]) -> Result<Option<GrantRow>, StoreError> {
        grant_get(&self.tx, signer)
    }

    /// Keeps a verified grant (the first one for a key wins).
    pub fn put_grant(&self, g: &GrantRow, at: Timestamp) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO grants(signer, bytes, subject, role, scope, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sq("prepare grant"))?
            .execute(params![g.signer, g.bytes, g.subject, g.role, g.scope, at.0])
            .map_err(sq("write grant"))?;
        Ok(())
    }

    /// Makes everything in the transaction durable.
    pub fn commit(self) -> Result<(), StoreError> {
        match self.tx {
            Inner::Transaction(t) => t.commit(),
            Inner::Savepoint(s) => s.commit(),
        }
        .map_err(sq("commit"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn case_column_count_matches_the_list() {
        assert_eq!(CASE_COLUMNS.split(',').count(), CASE_COLUMN_COUNT);
        // The log's: one column is a coalesce(), with a comma of its own.
        assert_eq!(LOG_COLUMNS.split(',').count() - 1, LOG_COLUMN_COUNT);
    }

    fn row(n: u8, title: &str, status: Status, deadline: Option<i64>) -> CaseRow {
        CaseRow {
            id: CaseId::from_bytes([n; 16]),
            number: format!("532924101201-2026-abcd-{n:04}"),
            county: "532924".into(),
            township: "532924101".into(),
            village: "532924101201".into(),
            grid: Some(1),
            level: Level::Village,
            status,
            category: Category::Neighbor,
            risk: Risk::Low,
            deadline: deadline.map(Timestamp),
            recorded_at: Timestamp(1),
            updated_at: Timestamp(1),
            title: title.into(),
            responsible: None,
            conflicts: 0,
            since: Timestamp(1),
            escalated_to: None,
            flags: Vec::new(),
            recorded_by: "张三".into(),
            responsible_id: None,
            settled_at: None,
            visits: 0,
            follow_ups_waived: false,
            supervised_due: None,
            open_conflicts: Some(0),
        }
    }

    #[test]
    fn search_text_is_packed_smaller_and_found_again() {
        let notes: String = (1..=12).map(|k| format!("第{k}次调解：双方到场，李四同意加装接水槽。\n")).collect();
        for text in ["", "李四", notes.as_str()] {
            let packed = pack_text(text);
            assert!(packed.len() <= text.len() + 1, "{text:?}");
            assert_eq!(unpack_text(&packed).unwrap(), text);
        }
        assert!(pack_text(&notes).len() < notes.len() / 2, "notes compress");
        assert_eq!(unpack_text(&[]), None);
        assert_eq!(unpack_text(&[9, 1, 2]), None);
        assert_eq!(unpack_text(&[TEXT_DEFLATE, 0xff, 0xff]), None);

        let mut s = Store::open_in_memory().unwrap();
        let tx = s.transaction().unwrap();
        let a = tx.put_case(&row(1, "宅基地滴水纠纷", Status::Mediating, Some(100)), b"x").unwrap();
        let b = tx.put_case(&row(2, "拖欠工资", Status::Settled, None), b"x").unwrap();
        tx.put_projection(a, &[], &notes).unwrap();
        tx.put_projection(b, &[], "王五").unwrap();
        tx.commit().unwrap();
        let find = |q: &str| {
            s.list(&ListFilter { search: Some(q.into()), ..Default::default() })
                .unwrap()
                .into_iter()
                .map(|r| r.title)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("接水槽"), ["宅基地滴水纠纷"]);
        assert_eq!(find("王五"), ["拖欠工资"]);
        assert_eq!(find("工资"), ["拖欠工资"]);
        assert!(find("赵六").is_empty());
    }

    #[test]
    fn projected_events_are_appended_or_rewritten_as_they_changed() {
        let ev = |kind, at| EventRow { kind, at: Timestamp(at), level: Some(Level::Village), person: None, due: None };
        let mut s = Store::open_in_memory().unwrap();
        let tx = s.transaction().unwrap();
        let a = tx.put_case(&row(1, "宅基地滴水纠纷", Status::Mediating, Some(100)), b"x").unwrap();
        let mut events = vec![ev(EventKind::Recorded, 1)];
        tx.put_projection(a, &events, "").unwrap();
        events.push(ev(EventKind::Note, 2));
        tx.put_projection(a, &events, "").unwrap();
        assert_eq!(tx.held_events(a).unwrap().unwrap(), events);
        // A merge put an event before the last one: all are written again.
        events.insert(1, ev(EventKind::Escalated, 3));
        tx.put_projection(a, &events, "").unwrap();
        assert_eq!(tx.held_events(a).unwrap().unwrap(), events);
        events.truncate(1);
        tx.put_projection(a, &events, "").unwrap();
        assert_eq!(tx.held_events(a).unwrap().unwrap(), events);
        tx.commit().unwrap();
    }

    #[test]
    fn list_filters_and_orders() {
        let mut s = Store::open_in_memory().unwrap();
        let tx = s.transaction().unwrap();
        tx.put_case(&row(1, "宅基地滴水纠纷", Status::Mediating, Some(100)), b"x").unwrap();
        tx.put_case(&row(2, "拖欠工资", Status::Settled, None), b"x").unwrap();
        tx.commit().unwrap();
        let all = s.list(&ListFilter::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].title, "宅基地滴水纠纷");
        let f = ListFilter { search: Some("工资".into()), ..Default::default() };
        assert_eq!(s.list(&f).unwrap()[0].status, Status::Settled);
        let tx = s.transaction().unwrap();
        tx.put_projection(1, &[], "屋檐滴水\n李四\n双方到场").unwrap();
        tx.commit().unwrap();
        let f = ListFilter { search: Some("李四".into()), ..Default::default() };
        assert_eq!(s.list(&f).unwrap()[0].title, "宅基地滴水纠纷", "party names are searched");
        let f = ListFilter { overdue_at: Some(Timestamp(101)), ..Default::default() };
        assert_eq!(s.list(&f).unwrap().len(), 1);
        let f = ListFilter { within: Some(AdminCode::parse("532924102").unwrap()), ..Default::default() };
        assert!(s.list(&f).unwrap().is_empty());
        let f = ListFilter {
            within: Some(AdminCode::parse("532924101").unwrap()),
            status: Some(Status::Settled),
            ..Default::default()
        };
        assert_eq!(s.list(&f).unwrap().len(), 1);
        assert_eq!(s.find("532924101201-2026-abcd-0002", 5).unwrap().len(), 1);
        assert_eq!(s.find("0202", 5).unwrap().len(), 1);
    }

    #[test]
    fn dropped_transaction_writes_nothing() {
        let mut s = Store::open_in_memory().unwrap();
        {
            let tx = s.transaction().unwrap();
            tx.set_meta("k", "v").unwrap();
        }
        assert_eq!(s.meta("k").unwrap(), None);
    }

    #[test]
    fn migration_3_keeps_full_hashes_whose_prefix_a_case_shares() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        let hash = |first: u8, last: u8| {
            let mut h = [first; 32];
            h[31] = last;
            h
        };
        for (case, n) in [(1_i64, 1_u8), (2, 2)] {
            conn.execute(
                "INSERT INTO cases(rowid, id, number, county, township, village, level, status, category, risk,
                                   recorded_at, updated_at, title)
                 VALUES (?1, ?2, 'n', '532924', '532924101', '532924101201', 'village', 'recorded', 'neighbor',
                         'low', 1, 1, 't')",
                params![case, [n; 16]],
            )
            .unwrap();
            conn.execute("INSERT INTO docs(case_rowid, snapshot, heads) VALUES (?1, x'00', x'')", [case]).unwrap();
        }
        // Case 1 holds two changes with one 8-byte prefix (and one logged
        // twice); case 2 holds a change with the same prefix.
        let rows = [(1, hash(0xaa, 1), 11), (1, hash(0xaa, 2), 12), (1, hash(0xaa, 2), 13), (2, hash(0xaa, 3), 14)];
        for (case, h, chain) in rows {
            conn.execute(
                "INSERT INTO changes(hash, case_rowid, chain, signer, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![h, case, chain, (case == 2).then_some([5u8; 32]), (case == 2).then_some([6u8; 64])],
            )
            .unwrap();
        }
        let s = Store::setup(conn, OpenMode::Create, Durability::Full).unwrap();
        s.integrity_check().unwrap();
        let keys: Vec<(i64, Vec<u8>, i64)> = s
            .conn
            .prepare("SELECT log_seq, hash_key, chain FROM changes ORDER BY log_seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = vec![
            (1, hash(0xaa, 1).to_vec(), 11),
            (2, hash(0xaa, 2).to_vec(), 12),
            (3, hash(0xaa, 2).to_vec(), 13),
            (4, vec![0xaa; 8], 14),
        ];
        assert_eq!(keys, want);
        let shared: Vec<i64> = s.shared_key_rows().unwrap().iter().map(|e| e.log_seq).collect();
        assert_eq!(shared, [2, 3], "one change logged twice");
        let log = s.log_after(0, 10).unwrap();
        assert_eq!(log.iter().map(|e| e.prev_chain).collect::<Vec<_>>(), [0, 11, 12, 13]);
        let signed = s.signed_case_changes(CaseId::from_bytes([2; 16])).unwrap();
        assert_eq!((signed.len(), signed[0].signer), (1, Some([5; 32])));
        assert!(s.signed_case_changes(CaseId::from_bytes([1; 16])).unwrap().is_empty());
        let row = s.case_row(CaseId::from_bytes([1; 16])).unwrap().unwrap();
        assert_eq!((row.county.as_str(), row.township.as_str()), ("532924", "532924101"));
    }

    /// Tables, columns and indexes of a connection's schema, as SQLite
    /// reports them (not the SQL text, which `ALTER TABLE` rewrites).
    fn shape(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let objects: Vec<(String, String, String, Option<String>)> = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (kind, name, table, sql) in objects {
            let pragma = if kind == "table" { "table_xinfo" } else { "index_xinfo" };
            let columns: Vec<String> = conn
                .prepare(&format!("SELECT * FROM pragma_{pragma}('{name}')"))
                .unwrap()
                .query_map([], |r| {
                    let n = r.as_ref().column_count();
                    let cells: Vec<String> = (0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Null => "NULL".into(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                            _ => "?".into(),
                        })
                        .collect();
                    Ok(cells.join(" "))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // A partial index's condition is only in its SQL.
            let condition = sql.as_deref().and_then(|s| s.split_once(" WHERE ")).map(|(_, w)| w.trim().to_owned());
            out.push(format!("{kind} {name} on {table}: {} {condition:?}", columns.join(" | ")));
        }
        out
    }

    #[test]
    fn schema_matches_the_migrations() {
        let fresh = Store::open_in_memory().unwrap();
        let migrated = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            migrated.execute_batch(sql).unwrap();
        }
        assert_eq!(shape(&fresh.conn), shape(&migrated));
        assert_eq!(MIGRATIONS.len(), usize::try_from(SCHEMA_VERSION).unwrap());
    }

    #[test]
    fn open_rejects_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.db");
        drop(Store::open(&p, OpenMode::Create, Durability::Full).unwrap());
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(&p, OpenMode::ReadWrite, Durability::Full),
            Err(StoreError::NewerSchema { found: 99 })
        ));
    }
}
