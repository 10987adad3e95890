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
//! - `audit`: refused changes, quarantined input, merges.
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

use crate::case::{AdminCode, CaseId, Category, Level, ReplicaId, Risk, Status};
use crate::clock::Timestamp;
use crate::doc::Hash;
use crate::vault::DataKey;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;

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
    /// Text contained in the title.
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
    /// Details in words.
    pub detail: String,
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
        title TEXT NOT NULL, responsible TEXT, conflicts INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE docs (case_rowid INTEGER PRIMARY KEY, snapshot BLOB NOT NULL);
     CREATE TABLE changes (
        log_seq INTEGER PRIMARY KEY,
        hash_key BLOB NOT NULL,
        case_rowid INTEGER NOT NULL,
        chain INTEGER NOT NULL,
        received_from BLOB, signer BLOB, signature BLOB);
     CREATE INDEX changes_signed ON changes(case_rowid) WHERE signature IS NOT NULL;
     CREATE TABLE pending (
        hash BLOB PRIMARY KEY, case_id BLOB NOT NULL, bytes BLOB NOT NULL,
        received_from BLOB, signature BLOB, received_at INTEGER NOT NULL, signer BLOB) WITHOUT ROWID;
     CREATE INDEX pending_case ON pending(case_id);
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL,
        case_id BLOB, peer TEXT, detail TEXT NOT NULL);
     CREATE TABLE peers (
        replica BLOB PRIMARY KEY, tier TEXT NOT NULL, scope TEXT NOT NULL,
        their_seq INTEGER NOT NULL DEFAULT 0, their_hash BLOB,
        acked_seq INTEGER NOT NULL DEFAULT 0, last_sync INTEGER) WITHOUT ROWID;
     CREATE TABLE grants (
        signer BLOB PRIMARY KEY, bytes BLOB NOT NULL, subject TEXT NOT NULL, role TEXT NOT NULL,
        scope TEXT NOT NULL, received_at INTEGER NOT NULL) WITHOUT ROWID;";

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
            add(" AND instr(title, ?) > 0", q.clone().into());
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

    /// Log rows after `after` of the urgent cases inside `scope` (a division
    /// code prefix), most urgent class first, oldest first within a class: 0
    /// high risk (民转刑), 1 an escalation waiting to be accepted. At most
    /// `limit` rows.
    pub fn urgent_log_after(&self, after: i64, scope: &str, limit: u32) -> Result<Vec<(u8, LogEntry)>, StoreError> {
        let end = format!("{scope}~");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS}, CASE WHEN k.risk = 'high' THEN 0 ELSE 1 END AS urgency
                 FROM cases k JOIN changes c ON c.case_rowid = k.rowid
                 WHERE (k.risk = 'high' OR k.status = 'escalated')
                   AND k.village >= ?1 AND k.village < ?2 AND c.log_seq > ?3
                 ORDER BY urgency, c.log_seq LIMIT ?4"
            ))
            .map_err(sq("prepare urgent log"))?;
        let rows = stmt
            .query_map(params![scope, end, after, limit], |r| Ok((read_log_row(r)?, r.get::<_, u8>(9)?)))
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
            .prepare_cached(
                "SELECT coalesce(sum(k.risk = 'high' OR k.status = 'escalated'), 0),
                        coalesce(sum(NOT (k.risk = 'high' OR k.status = 'escalated')), 0)
                 FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.log_seq > ?1 AND k.village >= ?2 AND k.village < ?3
                   AND (?4 IS NULL OR c.received_from IS NULL OR c.received_from != ?4)",
            )
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
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, at, kind, case_id, peer, detail FROM audit ORDER BY seq DESC LIMIT ?1")
            .map_err(sq("prepare audit"))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, Option<Vec<u8>>>(3)?, r.get(4)?, r.get(5)?))
            })
            .map_err(sq("read audit"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, kind, case, peer, detail) = row.map_err(sq("read audit"))?;
            out.push(AuditEntry {
                seq,
                at: Timestamp(at),
                kind,
                case: case.map(|c| case_id(&c)).transpose()?,
                peer,
                detail,
            });
        }
        Ok(out)
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
                            deadline, recorded_at, updated_at, title, responsible, conflicts";

fn read_case_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaseRow> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("bad {what}").into())
    };
    let id: Vec<u8> = r.get(0)?;
    let id: [u8; 16] = id.try_into().map_err(|_| bad(0, "case id"))?;
    let text = |i: usize| r.get::<_, String>(i);
    let village = text(2)?;
    // County and township are the 6- and 9-digit prefixes of the village.
    let prefix = |n: usize| village.get(..n).unwrap_or_default().to_owned();
    Ok(CaseRow {
        id: CaseId::from_bytes(id),
        number: text(1)?,
        county: prefix(6),
        township: prefix(9),
        grid: r.get(3)?,
        level: Level::parse(&text(4)?).map_err(|_| bad(4, "level"))?,
        status: Status::parse(&text(5)?).map_err(|_| bad(5, "status"))?,
        category: Category::parse(&text(6)?).map_err(|_| bad(6, "category"))?,
        risk: Risk::parse(&text(7)?).map_err(|_| bad(7, "risk"))?,
        deadline: r.get::<_, Option<i64>>(8)?.map(Timestamp),
        recorded_at: Timestamp(r.get(9)?),
        updated_at: Timestamp(r.get(10)?),
        title: text(11)?,
        responsible: r.get(12)?,
        conflicts: r.get(13)?,
        village,
    })
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

const PEER_COLUMNS: &str = "replica, tier, scope, their_seq, their_hash, acked_seq, last_sync";

fn read_peer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<PeerRow, StoreError>> {
    let replica: Vec<u8> = r.get(0)?;
    let hash: Option<Vec<u8>> = r.get(4)?;
    let tier: String = r.get(1)?;
    let scope: String = r.get(2)?;
    let their_seq: i64 = r.get(3)?;
    let acked_seq: i64 = r.get(5)?;
    let last_sync: Option<i64> = r.get(6)?;
    Ok((|| {
        Ok(PeerRow {
            replica: replica_id(&replica)?,
            tier,
            scope,
            their_seq,
            their_hash: hash.map(hash32).transpose()?.unwrap_or([0; 32]),
            acked_seq,
            last_sync: last_sync.map(Timestamp),
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
     coalesce((SELECT p.chain FROM changes p WHERE p.log_seq < c.log_seq ORDER BY p.log_seq DESC LIMIT 1), 0)";

type LogRaw = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, String, i64, i64);

fn read_log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRaw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

trait ParseLog {
    fn parse(self) -> Result<LogEntry, StoreError>;
}

impl ParseLog for LogRaw {
    fn parse(self) -> Result<LogEntry, StoreError> {
        let (log_seq, case, hash_key, from, signer, signature, village, chain, prev_chain) = self;
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

    /// Inserts or replaces a case's projected row and snapshot; returns its
    /// local row id. (`row.county` and `row.township` are not stored: they
    /// are read back as prefixes of `row.village`.)
    pub fn put_case(&self, row: &CaseRow, snapshot: &[u8]) -> Result<i64, StoreError> {
        let rowid: i64 = self
            .tx
            .prepare_cached(
                "INSERT INTO cases(id, number, village, grid, level, status, category, risk,
                                   deadline, recorded_at, updated_at, title, responsible, conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT(id) DO UPDATE SET number=excluded.number, village=excluded.village, grid=excluded.grid,
                   level=excluded.level, status=excluded.status, category=excluded.category,
                   risk=excluded.risk, deadline=excluded.deadline, recorded_at=excluded.recorded_at,
                   updated_at=excluded.updated_at, title=excluded.title,
                   responsible=excluded.responsible, conflicts=excluded.conflicts
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

    /// Appends a change to the log; returns its position. The row keeps the
    /// first [`KEY_BYTES`] bytes of `hash`; the chain is of the full hash.
    pub fn log_change(
        &self,
        case_rowid: i64,
        hash: &Hash,
        received_from: Option<ReplicaId>,
        signer: Option<&[u8; 32]>,
        signature: Option<&[u8]>,
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
                "INSERT INTO changes(hash_key, case_rowid, received_from, signer, signature, chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sq("prepare log"))?
            .execute(params![
                &hash[..KEY_BYTES],
                case_rowid,
                received_from.map(|r| r.as_bytes().to_vec()),
                signer.map(|s| s.to_vec()),
                signature,
                chain
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
                at.0,
                p.signer.map(|s| s.to_vec())
            ])
            .map_err(sq("keep pending change"))?;
        Ok(n == 1)
    }

    /// The changes of a case waiting for dependencies.
    pub fn pending_for(&self, case: CaseId) -> Result<Vec<PendingChange>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT hash, bytes, received_from, signature, signer FROM pending WHERE case_id = ?1")
            .map_err(sq("prepare pending"))?;
        let rows = stmt
            .query_map([case.as_bytes()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .map_err(sq("read pending"))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, bytes, from, signature, signer) = row.map_err(sq("read pending"))?;
            out.push(PendingChange {
                hash: hash32(hash)?,
                case,
                bytes,
                received_from: from.map(|f| replica_id(&f)).transpose()?,
                signer: signer.map(key32).transpose()?,
                signature,
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
    pub fn audit(
        &self,
        at: Timestamp,
        kind: &str,
        case: Option<CaseId>,
        peer: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("INSERT INTO audit(at, kind, case_id, peer, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(sq("prepare audit"))?
            .execute(params![at.0, kind, case.map(|c| c.as_bytes().to_vec()), peer, detail])
            .map_err(sq("write audit"))?;
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

    /// Records that a peer acknowledged this replica's log up to `seq`.
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
        }
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
