//! The SQLite file of one replica: the only module that names rusqlite.
//!
//! # Tables (schema version in `PRAGMA user_version`)
//! - `meta`: key/value settings of the replica (identity, counters, policy).
//! - `cases`: one projected row per case, for queries. Lists never load documents.
//! - `docs`: the compacted Automerge snapshot and heads of each case.
//! - `changes`: one row per change this replica holds, in the replica's own
//!   append order (`log_seq`). The bytes live in the snapshot; sync reads them
//!   back from the document by hash.
//! - `pending`: changes received before their dependencies; applied when the
//!   rest arrives.
//! - `audit`: refused changes, quarantined input, merges.
//!
//! # Durability
//! WAL with `synchronous=FULL`: a committed transaction survives a crash or a
//! power cut, which is what lets the ledger (and later the sync server)
//! acknowledge an operation as soon as its transaction commits.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::case::{AdminCode, CaseId, Category, Level, ReplicaId, Risk, Status};
use crate::clock::Timestamp;
use crate::doc::Hash;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

/// How long a writer waits for another process holding the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Change hash.
    pub hash: Hash,
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

/// A held change's hash with its signer and signature, if it has them.
pub type Provenance = (Hash, Option<[u8; 32]>, Option<Vec<u8>>);

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
}

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
];

/// Prepared statements kept per connection: more than this module has.
const STATEMENT_CACHE: usize = 64;

impl Store {
    /// Opens (and for [`OpenMode::Create`], creates and migrates) a store file.
    pub fn open(path: &Path, mode: OpenMode, durability: Durability) -> Result<Self, StoreError> {
        let flags = match mode {
            OpenMode::Create => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            OpenMode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
            OpenMode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sq("open"))?;
        Self::setup(conn, mode, durability)
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
        let version: i32 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sq("read schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version });
        }
        if version == 0 && mode != OpenMode::ReadOnly {
            // Case snapshots are 1-3 KiB; 8 KiB pages waste less space around
            // them than the default 4 KiB (measured: -8% file size).
            conn.pragma_update(None, "page_size", 8192).map_err(sq("set page size"))?;
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
        let mut store = Self { conn };
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
            tx.execute_batch(sql).map_err(sq("migrate"))?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX)).map_err(sq("migrate"))?;
        }
        tx.commit().map_err(sq("commit migration"))
    }

    /// Starts the single write transaction of one ledger operation.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sq("begin"))?;
        Ok(Tx { tx })
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
            add(" AND village LIKE ?", format!("{w}%").into());
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
            .prepare_cached(
                "SELECT c.log_seq, k.id, c.hash, c.received_from, c.signer, c.signature, k.village, c.chain
                 FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE c.log_seq > ?1 ORDER BY c.log_seq LIMIT ?2",
            )
            .map_err(sq("prepare log"))?;
        let rows = stmt.query_map(params![after, limit], read_log_row).map_err(sq("read log"))?;
        rows.map(|r| r.map_err(sq("read log")).and_then(ParseLog::parse)).collect()
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

    /// Every change row of a case: hash, signer, signature.
    pub fn case_changes(&self, case: CaseId) -> Result<Vec<Provenance>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.hash, c.signer, c.signature FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                 WHERE k.id = ?1",
            )
            .map_err(sq("prepare case changes"))?;
        let rows = stmt
            .query_map([case.as_bytes()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
            })
            .map_err(sq("read case changes"))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, signer, signature) = row.map_err(sq("read case changes"))?;
            out.push((hash32(hash)?, signer.map(key32).transpose()?, signature));
        }
        Ok(out)
    }

    /// The heads of every case inside `within`, sorted by case id.
    pub fn heads_within(&self, within: &AdminCode) -> Result<Vec<(CaseId, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.id, d.heads FROM cases c JOIN docs d ON d.case_rowid = c.rowid
                 WHERE c.village LIKE ?1 ORDER BY c.id",
            )
            .map_err(sq("prepare digest"))?;
        let rows = stmt
            .query_map([format!("{within}%")], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(sq("read digest"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, heads) = row.map_err(sq("read digest"))?;
            out.push((case_id(&id)?, heads));
        }
        Ok(out)
    }

    /// What this replica knows of a peer.
    pub fn peer(&self, replica: ReplicaId) -> Result<Option<PeerRow>, StoreError> {
        peer_get(&self.conn, replica)
    }

    /// Whether a change is held: in the log of its case, or pending.
    pub fn holds_change(&self, case: CaseId, hash: &Hash) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM changes c JOIN cases k ON k.rowid = c.case_rowid
                               WHERE k.id = ?1 AND c.hash = ?2)
                     OR EXISTS(SELECT 1 FROM pending WHERE hash = ?2)",
            )
            .map_err(sq("prepare holds"))?
            .query_row(params![case.as_bytes(), hash], |r| r.get(0))
            .map_err(sq("read holds"))
    }

    /// How many log rows repeat a change already logged.
    pub fn duplicate_log_rows(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT count(*) - count(DISTINCT hash) FROM changes", [], |r| r.get(0))
            .map_err(sq("count duplicates"))
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

const CASE_COLUMNS: &str = "id, number, county, township, village, grid, level, status, category, risk, \
                            deadline, recorded_at, updated_at, title, responsible, conflicts";

fn read_case_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaseRow> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("bad {what}").into())
    };
    let id: Vec<u8> = r.get(0)?;
    let id: [u8; 16] = id.try_into().map_err(|_| bad(0, "case id"))?;
    let text = |i: usize| r.get::<_, String>(i);
    Ok(CaseRow {
        id: CaseId::from_bytes(id),
        number: text(1)?,
        county: text(2)?,
        township: text(3)?,
        village: text(4)?,
        grid: r.get(5)?,
        level: Level::parse(&text(6)?).map_err(|_| bad(6, "level"))?,
        status: Status::parse(&text(7)?).map_err(|_| bad(7, "status"))?,
        category: Category::parse(&text(8)?).map_err(|_| bad(8, "category"))?,
        risk: Risk::parse(&text(9)?).map_err(|_| bad(9, "risk"))?,
        deadline: r.get::<_, Option<i64>>(10)?.map(Timestamp),
        recorded_at: Timestamp(r.get(11)?),
        updated_at: Timestamp(r.get(12)?),
        title: text(13)?,
        responsible: r.get(14)?,
        conflicts: r.get(15)?,
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

type LogRaw = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, String, i64);

fn read_log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRaw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

trait ParseLog {
    fn parse(self) -> Result<LogEntry, StoreError>;
}

impl ParseLog for LogRaw {
    fn parse(self) -> Result<LogEntry, StoreError> {
        let (log_seq, case, hash, from, signer, signature, village, chain) = self;
        Ok(LogEntry {
            log_seq,
            case: case_id(&case)?,
            hash: hash32(hash)?,
            received_from: from.map(|f| replica_id(&f)).transpose()?,
            signer: signer.map(key32).transpose()?,
            signature,
            village,
            chain,
        })
    }
}

/// The log chain after appending `hash` to a log whose chain was `prev`.
fn chain_next(prev: i64, hash: &Hash) -> i64 {
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
    tx: rusqlite::Transaction<'a>,
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

    /// Inserts or replaces a case's projected row and snapshot; returns its local row id.
    pub fn put_case(&self, row: &CaseRow, snapshot: &[u8], heads: &[Hash]) -> Result<i64, StoreError> {
        let rowid: i64 = self
            .tx
            .prepare_cached(
                "INSERT INTO cases(id, number, county, township, village, grid, level, status, category, risk,
                                   deadline, recorded_at, updated_at, title, responsible, conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT(id) DO UPDATE SET number=excluded.number, county=excluded.county,
                   township=excluded.township, village=excluded.village, grid=excluded.grid,
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
                    row.county,
                    row.township,
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
            .prepare_cached("INSERT OR REPLACE INTO docs(case_rowid, snapshot, heads) VALUES (?1, ?2, ?3)")
            .map_err(sq("prepare snapshot"))?
            .execute(params![rowid, snapshot, heads.concat()])
            .map_err(sq("write snapshot"))?;
        Ok(rowid)
    }

    /// Appends a change to the log; returns its position.
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
                "INSERT INTO changes(hash, case_rowid, received_from, signer, signature, chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sq("prepare log"))?
            .execute(params![
                hash,
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
        self.tx.commit().map_err(sq("commit"))
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
        tx.put_case(&row(1, "宅基地滴水纠纷", Status::Mediating, Some(100)), b"x", &[]).unwrap();
        tx.put_case(&row(2, "拖欠工资", Status::Settled, None), b"x", &[]).unwrap();
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
