//! One Automerge document per case: the only module that builds Automerge
//! operations.
//!
//! # Document layout (schema 1)
//! ```text
//! ROOT { schema: 1, id, number, category, title, description: Text,
//!        parties: [ { name, id_number, phone } ], county, township, village,
//!        grid, risk, risk_flags: [str], responsible, responsible_id?,
//!        recorded_by, recorded_by_id?, recorded_at,
//!        events: [ { kind, at, by?, text?, to?, to_id?, court?, ref?, outcome?,
//!                    level?, rule?, due? } ] }
//! ```
//! `*_id` and `by` name a person of the county roster by staff id when the
//! writing replica could tell who was meant (`crate::roster`); names are
//! always kept as typed beside them. Keys added after schema 1 are registers
//! or event fields that older builds ignore.
//! The whole structure is created in the first change, on the recording
//! device: if two devices each created `events`, one list would be hidden.
//!
//! # Invariants
//! - Every change carries an explicit time (ms since the epoch) and a message
//!   `fq1|{op}|{role}|{name}` naming what was done and by whom. The authoring
//!   device is the first 8 bytes of the change's actor id.
//! - Status and level are never stored: they are derived from the event list
//!   in its list order, which respects causality (an event appended after
//!   seeing another comes after it, whatever the device clocks say) and
//!   orders concurrent appends the same way on every replica.
//! - Peer bytes are applied inside `catch_unwind` (Automerge 0.12 panics on some
//!   malformed input); after a panic the document must be dropped and reloaded. Such a panic
//!   is contained quietly ([`contained`], [`install_panic_hook`]): Automerge's English message
//!   reaches neither a person's terminal nor the server's log; the caller reports the refusal.

use std::cell::Cell;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, UnwindSafe, catch_unwind};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::Serialize;

use crate::case::{
    AdminCode, CaseId, CaseNumber, Category, DeviceId, EventKind, Level, Outcome, Party, Risk, RiskFlag, Role, Status,
};
use crate::clock::Timestamp;
use crate::policy::{Policy, RouteRule};
use crate::roster::StaffId;

mod timeline;

pub use timeline::{AuditConflict, ChangeEffect, ChangeNode, ConflictKind, ConflictSide, FieldChange, Timeline};

/// The document schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Largest single change accepted from a peer, after any decompression.
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;

/// Fields that hold a plain value and so can hold concurrent values.
pub const REGISTER_FIELDS: &[&str] = &["title", "category", "risk", "grid", "responsible"];

/// Why a document operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// Automerge refused an operation or bytes.
    #[error("automerge {op} failed: {source}")]
    Automerge {
        /// What was being done.
        op: &'static str,
        /// The underlying error (boxed: it is large and rare).
        source: Box<automerge::AutomergeError>,
    },
    /// A change from a peer could not be parsed.
    #[error("malformed change: {0}")]
    BadChange(String),
    /// Automerge panicked on the input; the document must be reloaded.
    #[error("automerge panicked while applying peer input")]
    Panicked,
    /// The document does not have the shape of a case.
    #[error("document is not a valid case: {0}")]
    Malformed(&'static str),
}

fn am(op: &'static str) -> impl FnOnce(automerge::AutomergeError) -> DocError {
    move |source| DocError::Automerge { op, source: Box::new(source) }
}

/// Who made a change: recorded in every change's message, and in every
/// lifecycle event by staff id when the roster knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    /// The person's name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// Their id in the county roster, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<StaffId>,
}

impl Author {
    fn message(&self, op: &str) -> String {
        format!("fq1|{op}|{}|{}", self.role.code(), self.name)
    }

    /// Parses a change message into (op, author). Unknown formats give `None`.
    fn from_message(msg: &str) -> Option<(String, Author)> {
        let mut parts = msg.splitn(4, '|');
        if parts.next()? != "fq1" {
            return None;
        }
        let op = parts.next()?.to_owned();
        let role = Role::parse(parts.next()?).ok()?;
        let name = parts.next()?.to_owned();
        Some((op, Author { name, role, id: None }))
    }
}

/// Makes a fresh actor id for a ledger opened on `device`: the device id
/// followed by 8 bytes that must never repeat (see DESIGN.md §8 on actor reuse).
pub fn actor_for(device: DeviceId, unique: [u8; 8]) -> ActorId {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(device.as_bytes());
    bytes.extend_from_slice(&unique);
    ActorId::from(bytes)
}

/// The device an actor id belongs to, if it has the fq shape.
pub fn device_of(actor: &ActorId) -> Option<DeviceId> {
    let b = actor.to_bytes();
    let d: [u8; 8] = b.get(..8)?.try_into().ok()?;
    (b.len() == 16).then_some(DeviceId::from_bytes(d))
}

/// A 32-byte change hash, the key of a change everywhere.
pub type Hash = [u8; 32];

fn hash_bytes(h: &ChangeHash) -> Hash {
    h.0
}

/// What a new case starts with.
#[derive(Debug, Clone)]
pub struct NewCaseDoc<'a> {
    /// Its id.
    pub id: CaseId,
    /// Its human number.
    pub number: &'a CaseNumber,
    /// Its village.
    pub village: &'a AdminCode,
    /// The grid inside the village, if known.
    pub grid: Option<u32>,
    /// Category.
    pub category: Category,
    /// Title.
    pub title: &'a str,
    /// Description.
    pub description: &'a str,
    /// Parties.
    pub parties: &'a [Party],
    /// Risk.
    pub risk: Risk,
    /// Risk flags.
    pub flags: &'a [RiskFlag],
    /// The level it is recorded at.
    pub level: Level,
    /// When the dispute was recorded: now, or for an imported case, when the
    /// old ledger recorded it.
    pub recorded_at: Timestamp,
}

/// Changes to plain fields; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct FieldEdit {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New category.
    pub category: Option<Category>,
    /// New risk.
    pub risk: Option<Risk>,
    /// New grid.
    pub grid: Option<u32>,
    /// Parties to add.
    pub add_parties: Vec<Party>,
    /// Risk flags to add.
    pub add_flags: Vec<RiskFlag>,
    /// Risk flags to take off.
    pub remove_flags: Vec<RiskFlag>,
}

impl FieldEdit {
    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.description.is_none()
            && self.category.is_none()
            && self.risk.is_none()
            && self.grid.is_none()
            && self.add_parties.is_empty()
            && self.add_flags.is_empty()
            && self.remove_flags.is_empty()
    }

    fn summary(&self) -> String {
        let mut f = Vec::new();
        let names = [
            (self.title.is_some(), "title"),
            (self.description.is_some(), "description"),
            (self.category.is_some(), "category"),
            (self.risk.is_some(), "risk"),
            (self.grid.is_some(), "grid"),
            (!self.add_parties.is_empty(), "parties"),
            (!self.add_flags.is_empty() || !self.remove_flags.is_empty(), "risk_flags"),
        ];
        for (set, name) in names {
            if set {
                f.push(name);
            }
        }
        format!("edit:{}", f.join(","))
    }
}

/// A lifecycle event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewEvent {
    /// A session note.
    Note(String),
    /// Name the responsible person.
    Assign {
        /// Their name.
        name: String,
        /// Their roster id, when known.
        id: Option<StaffId>,
    },
    /// Send the case up to `to`.
    Escalate {
        /// The level it goes to.
        to: Level,
        /// Why (empty when a policy rule sent it).
        reason: String,
        /// The policy rule that sent it, if it was not a person's decision.
        rule: Option<RouteRule>,
    },
    /// The upper level takes the case.
    AcceptEscalation {
        /// The level that accepts.
        level: Level,
    },
    /// Settled, with the agreement.
    Settle(String),
    /// Mediation failed.
    Fail(String),
    /// Judicial confirmation of the agreement.
    Confirm {
        /// The court.
        court: String,
        /// Its reference number.
        reference: Option<String>,
    },
    /// A follow-up visit.
    FollowUp {
        /// Honoured or relapsed.
        outcome: Outcome,
        /// What was seen.
        note: Option<String>,
    },
    /// Archive the case.
    Archive,
    /// A higher level orders action on the case by `due` (督办).
    Supervise {
        /// What to do.
        instruction: String,
        /// By when.
        due: Timestamp,
    },
    /// The handler answers the open supervision order.
    Respond(String),
    /// The remaining follow-up visits are waived, with the reason.
    WaiveFollowUps(String),
}

impl NewEvent {
    /// The kind this event is stored as.
    pub fn kind(&self) -> EventKind {
        match self {
            NewEvent::Note(_) => EventKind::Note,
            NewEvent::Assign { .. } => EventKind::Assigned,
            NewEvent::Escalate { .. } => EventKind::Escalated,
            NewEvent::AcceptEscalation { .. } => EventKind::EscalationAccepted,
            NewEvent::Settle(_) => EventKind::Settled,
            NewEvent::Fail(_) => EventKind::Failed,
            NewEvent::Confirm { .. } => EventKind::Confirmed,
            NewEvent::FollowUp { outcome: Outcome::Relapsed, .. } => EventKind::Relapsed,
            NewEvent::FollowUp { .. } => EventKind::FollowUp,
            NewEvent::Archive => EventKind::Archived,
            NewEvent::Supervise { .. } => EventKind::Supervised,
            NewEvent::Respond(_) => EventKind::Responded,
            NewEvent::WaiveFollowUps(_) => EventKind::FollowUpWaived,
        }
    }
}

/// A party as read back from a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartyView {
    /// Name.
    pub name: String,
    /// Resident ID number, as stored.
    pub id_number: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
}

/// A lifecycle event as read back, with who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    /// What happened.
    pub kind: EventKind,
    /// Device time of the event.
    pub at: Timestamp,
    /// Who recorded it (with their roster id when the writer knew it).
    pub author: Option<Author>,
    /// The device it was recorded on.
    pub device: Option<String>,
    /// Note, reason, agreement or follow-up note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Assignee, or the level escalated to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Court of a judicial confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub court: Option<String>,
    /// Court reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The assignee's roster id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_id: Option<String>,
    /// The policy rule that made an escalation (`high-risk`, `flag:criminal-risk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// When a supervision order is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due: Option<Timestamp>,
}

/// An open supervision order (督办) on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Supervision {
    /// When it was given.
    pub at: Timestamp,
    /// When it is due.
    pub due: Timestamp,
    /// What to do.
    pub instruction: String,
    /// Who gave it.
    pub by: Option<Author>,
}

/// An event that local rules would have refused but that arrived by sync,
/// concurrent with the events it contradicts: it is kept (merges never drop
/// anything) and shown, so someone can set it right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which rule it breaks: `settled-below-level`, `failed-below-level`,
    /// `archived-before-follow-ups`.
    pub rule: &'static str,
    /// When (device time of the event).
    pub at: Timestamp,
    /// Who wrote it.
    pub by: Option<Author>,
}

/// One of several values a field holds after concurrent edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictValue {
    /// The value, as text.
    pub value: String,
    /// Who wrote it.
    pub author: Option<Author>,
    /// The device it was written on.
    pub device: Option<String>,
    /// When (device time).
    pub at: Option<Timestamp>,
}

/// A field that holds concurrent values. The displayed value is Automerge's
/// deterministic winner; all values are kept until a later edit resolves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldConflict {
    /// Field path, e.g. `title` or `parties[0].phone`.
    pub field: String,
    /// Every value, winner first.
    pub values: Vec<ConflictValue>,
}

/// One change in a case's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Device time of the change.
    pub at: Timestamp,
    /// What was done (`create`, `edit:title`, `note`, ...).
    pub op: String,
    /// Who did it.
    pub author: Option<Author>,
    /// On which device.
    pub device: Option<String>,
    /// The change hash, hex.
    pub hash: String,
}

/// Everything a case document says, with status, level and deadline derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseState {
    /// Case id.
    pub id: CaseId,
    /// Case number.
    pub number: String,
    /// Category.
    pub category: Category,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Parties.
    pub parties: Vec<PartyView>,
    /// County code.
    pub county: String,
    /// Township code.
    pub township: String,
    /// Village code.
    pub village: String,
    /// Grid, if known.
    pub grid: Option<u32>,
    /// Risk.
    pub risk: Risk,
    /// Risk flags (民转刑...).
    pub flags: Vec<RiskFlag>,
    /// Responsible person (包保责任人).
    pub responsible: Option<String>,
    /// Their roster id, when known.
    pub responsible_id: Option<String>,
    /// Who recorded the case.
    pub recorded_by: String,
    /// Their roster id, when known.
    pub recorded_by_id: Option<String>,
    /// When.
    pub recorded_at: Timestamp,
    /// Derived status.
    pub status: Status,
    /// Derived handling level.
    pub level: Level,
    /// The level an escalation is waiting at, if any.
    pub escalated_to: Option<Level>,
    /// Derived deadline of the current level, for open cases.
    pub deadline: Option<Timestamp>,
    /// When the current level's clock started: the recording, the
    /// acceptance of an escalation, or a relapse.
    pub since: Timestamp,
    /// Whether a court confirmed the agreement.
    pub confirmed: bool,
    /// Follow-up visits made.
    pub follow_ups: u32,
    /// When the case was last settled, while it stays settled (or archived after it).
    pub settled_at: Option<Timestamp>,
    /// Follow-up visits made since that settlement.
    pub visits: u32,
    /// Whether the remaining follow-ups of that settlement were waived.
    pub follow_ups_waived: bool,
    /// The supervision order still to be answered, if any.
    pub supervision: Option<Supervision>,
    /// Events merged from concurrent edits that local rules would have refused.
    pub violations: Vec<Violation>,
    /// The latest change time.
    pub updated_at: Timestamp,
    /// Lifecycle events in derivation (list) order.
    pub events: Vec<EventView>,
}

/// A case document with its actor set for local edits.
#[derive(Debug)]
pub struct CaseDoc {
    doc: AutoCommit,
}

impl CaseDoc {
    /// Creates a case document; the whole structure goes into its first change.
    pub fn create(new: &NewCaseDoc<'_>, author: &Author, actor: ActorId, at: Timestamp) -> Result<Self, DocError> {
        let mut doc = AutoCommit::new().with_actor(actor);
        let d = &mut doc;
        d.put(ROOT, "schema", SCHEMA_VERSION).map_err(am("put"))?;
        d.put(ROOT, "id", new.id.to_string()).map_err(am("put"))?;
        d.put(ROOT, "number", new.number.as_str()).map_err(am("put"))?;
        d.put(ROOT, "category", new.category.code()).map_err(am("put"))?;
        d.put(ROOT, "title", new.title).map_err(am("put"))?;
        let text = d.put_object(ROOT, "description", ObjType::Text).map_err(am("put"))?;
        d.splice_text(&text, 0, 0, new.description).map_err(am("splice"))?;
        let parties = d.put_object(ROOT, "parties", ObjType::List).map_err(am("put"))?;
        for (i, p) in new.parties.iter().enumerate() {
            put_party(d, &parties, i, p)?;
        }
        d.put(ROOT, "county", new.village.county().as_str()).map_err(am("put"))?;
        let township = new.village.township().map(|t| t.to_string()).unwrap_or_default();
        d.put(ROOT, "township", township).map_err(am("put"))?;
        d.put(ROOT, "village", new.village.as_str()).map_err(am("put"))?;
        match new.grid {
            Some(g) => d.put(ROOT, "grid", i64::from(g)),
            None => d.put(ROOT, "grid", ScalarValue::Null),
        }
        .map_err(am("put"))?;
        d.put(ROOT, "risk", new.risk.code()).map_err(am("put"))?;
        let flags = d.put_object(ROOT, "risk_flags", ObjType::List).map_err(am("put"))?;
        for (i, f) in new.flags.iter().enumerate() {
            d.insert(&flags, i, f.code()).map_err(am("insert"))?;
        }
        d.put(ROOT, "responsible", ScalarValue::Null).map_err(am("put"))?;
        d.put(ROOT, "recorded_by", author.name.as_str()).map_err(am("put"))?;
        if let Some(id) = &author.id {
            d.put(ROOT, "recorded_by_id", id.as_str()).map_err(am("put"))?;
        }
        d.put(ROOT, "recorded_at", new.recorded_at.0).map_err(am("put"))?;
        let events = d.put_object(ROOT, "events", ObjType::List).map_err(am("put"))?;
        let ev = d.insert_object(&events, 0, ObjType::Map).map_err(am("insert"))?;
        d.put(&ev, "kind", EventKind::Recorded.code()).map_err(am("put"))?;
        d.put(&ev, "at", new.recorded_at.0).map_err(am("put"))?;
        d.put(&ev, "level", new.level.code()).map_err(am("put"))?;
        if let Some(id) = &author.id {
            d.put(&ev, "by", id.as_str()).map_err(am("put"))?;
        }
        let mut this = Self { doc };
        this.commit(author, "create", at);
        Ok(this)
    }

    /// An empty document that will be filled by applying a peer's changes.
    pub fn empty(actor: ActorId) -> Self {
        Self { doc: AutoCommit::new().with_actor(actor) }
    }

    /// Loads a snapshot saved by [`CaseDoc::save`], taking `actor` for any
    /// local edits. Snapshots are local data, but are still loaded inside
    /// `catch_unwind`: a corrupt file must give an error, not a crash.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, DocError> {
        let raw = unpack_snapshot(bytes)?;
        let doc = contained(|| AutoCommit::load(&raw)).map_err(|_| DocError::Panicked)?;
        let doc = doc.map_err(am("load"))?.with_actor(actor);
        Ok(Self { doc })
    }

    /// The whole document in Automerge's uncompressed encoding, as a peer takes it
    /// ([`document_changes`]).
    pub fn document(&mut self) -> Vec<u8> {
        self.doc.save_nocompress()
    }

    /// The whole document, compressed: Automerge's uncompressed encoding,
    /// DEFLATEd whole behind [`PACKED_SNAPSHOT`] (ADR 6). Automerge's own
    /// `save()` DEFLATEs each column over 256 bytes on its own, which leaves
    /// a case's many small columns raw; one stream over all of them is about
    /// a fifth smaller.
    pub fn save(&mut self) -> Vec<u8> {
        let raw = self.doc.save_nocompress();
        let mut packed = flate2::write::DeflateEncoder::new(PACKED_SNAPSHOT.to_vec(), flate2::Compression::best());
        match packed.write_all(&raw).and_then(|()| packed.finish()) {
            Ok(bytes) => bytes,
            // Writing to a Vec does not fail; should it, Automerge's own format still loads.
            Err(_) => self.doc.save(),
        }
    }

    /// The current heads, sorted.
    pub fn heads(&mut self) -> Vec<Hash> {
        let mut h: Vec<Hash> = self.doc.get_heads().iter().map(hash_bytes).collect();
        h.sort_unstable();
        h
    }

    fn commit(&mut self, author: &Author, op: &str, at: Timestamp) -> Option<Hash> {
        let opts = CommitOptions::default().with_message(author.message(op)).with_time(at.0);
        self.doc.commit_with(opts).map(|h| h.0)
    }

    /// Applies a field edit as one change. Returns `None` if nothing changed.
    pub fn edit(&mut self, edit: &FieldEdit, author: &Author, at: Timestamp) -> Result<Option<Hash>, DocError> {
        let r = self.edit_ops(edit);
        if let Err(e) = r {
            self.doc.rollback();
            return Err(e);
        }
        Ok(self.commit(author, &edit.summary(), at))
    }

    fn edit_ops(&mut self, edit: &FieldEdit) -> Result<(), DocError> {
        let d = &mut self.doc;
        if let Some(t) = &edit.title {
            d.put(ROOT, "title", t.as_str()).map_err(am("put"))?;
        }
        if let Some(text) = &edit.description {
            let obj = obj_at(d, &ROOT, "description")?;
            d.update_text(&obj, text).map_err(am("update text"))?;
        }
        if let Some(c) = edit.category {
            d.put(ROOT, "category", c.code()).map_err(am("put"))?;
        }
        if let Some(r) = edit.risk {
            d.put(ROOT, "risk", r.code()).map_err(am("put"))?;
        }
        if let Some(g) = edit.grid {
            d.put(ROOT, "grid", i64::from(g)).map_err(am("put"))?;
        }
        if !edit.add_parties.is_empty() {
            let list = obj_at(d, &ROOT, "parties")?;
            for p in &edit.add_parties {
                let n = d.length(&list);
                put_party(d, &list, n, p)?;
            }
        }
        if !edit.add_flags.is_empty() || !edit.remove_flags.is_empty() {
            let list = obj_at(d, &ROOT, "risk_flags")?;
            // Every copy of a removed flag goes (concurrent adds may have made two).
            for i in (0..d.length(&list)).rev() {
                let here = match d.get(&list, i) {
                    Ok(Some((Value::Scalar(v), _))) => v.as_str().and_then(|c| RiskFlag::parse(c).ok()),
                    _ => None,
                };
                if here.is_some_and(|f| edit.remove_flags.contains(&f)) {
                    d.delete(&list, i).map_err(am("delete"))?;
                }
            }
            let held = read_flags(d);
            for f in &edit.add_flags {
                if !held.contains(f) {
                    let n = d.length(&list);
                    d.insert(&list, n, f.code()).map_err(am("insert"))?;
                }
            }
        }
        Ok(())
    }

    /// Appends a lifecycle event as one change.
    pub fn push_event(&mut self, event: &NewEvent, author: &Author, at: Timestamp) -> Result<Hash, DocError> {
        match self.event_ops(event, at, author.id.as_ref()) {
            Ok(()) => self.commit(author, event.kind().code(), at).ok_or(DocError::Malformed("empty change")),
            Err(e) => {
                self.doc.rollback();
                Err(e)
            }
        }
    }

    fn event_ops(&mut self, event: &NewEvent, at: Timestamp, by: Option<&StaffId>) -> Result<(), DocError> {
        let d = &mut self.doc;
        let events = obj_at(d, &ROOT, "events")?;
        let n = d.length(&events);
        let ev = d.insert_object(&events, n, ObjType::Map).map_err(am("insert"))?;
        d.put(&ev, "kind", event.kind().code()).map_err(am("put"))?;
        d.put(&ev, "at", at.0).map_err(am("put"))?;
        if let Some(id) = by {
            d.put(&ev, "by", id.as_str()).map_err(am("put"))?;
        }
        if let NewEvent::Supervise { due, .. } = event {
            d.put(&ev, "due", due.0).map_err(am("put"))?;
        }
        let mut put = |k: &str, v: &str| d.put(&ev, k, v).map_err(am("put"));
        match event {
            NewEvent::Note(t)
            | NewEvent::Settle(t)
            | NewEvent::Fail(t)
            | NewEvent::Respond(t)
            | NewEvent::WaiveFollowUps(t) => put("text", t)?,
            NewEvent::Supervise { instruction, .. } => put("text", instruction)?,
            NewEvent::Assign { name, id } => {
                put("to", name)?;
                if let Some(id) = id {
                    put("to_id", id.as_str())?;
                }
            }
            NewEvent::Escalate { to, reason, rule } => {
                put("to", to.code())?;
                put("text", reason)?;
                if let Some(rule) = rule {
                    put("rule", &rule.code())?;
                }
            }
            NewEvent::AcceptEscalation { level } => put("level", level.code())?,
            NewEvent::Confirm { court, reference } => {
                put("court", court)?;
                if let Some(r) = reference {
                    put("ref", r)?;
                }
            }
            NewEvent::FollowUp { outcome, note } => {
                put("outcome", outcome.code())?;
                if let Some(n) = note {
                    put("text", n)?;
                }
            }
            NewEvent::Archive => {}
        }
        if let NewEvent::Assign { name, id } = event {
            d.put(ROOT, "responsible", name.as_str()).map_err(am("put"))?;
            match id {
                Some(id) => d.put(ROOT, "responsible_id", id.as_str()),
                None => d.put(ROOT, "responsible_id", ScalarValue::Null),
            }
            .map_err(am("put"))?;
        }
        Ok(())
    }

    /// Whether the document holds the change with this hash.
    pub fn has_change(&mut self, hash: &Hash) -> bool {
        self.doc.get_change_by_hash(&ChangeHash(*hash)).is_some()
    }

    /// The case's village code as the document holds it (empty if unset):
    /// a cheap read of one key, for scope checks on a stored document.
    pub fn village(&self) -> String {
        get_str(&self.doc, &ROOT, "village").unwrap_or_default()
    }

    /// The hash of every change in the document, in no particular order.
    /// Reads change metadata only; no change is rebuilt.
    pub fn change_hashes(&mut self) -> Vec<Hash> {
        self.doc.get_changes_meta(&[]).into_iter().map(|m| m.hash.0).collect()
    }

    /// The raw bytes of a change in this document.
    pub fn change_bytes(&mut self, hash: &Hash) -> Option<Vec<u8>> {
        self.doc.get_change_by_hash(&ChangeHash(*hash)).map(|c| c.raw_bytes().to_vec())
    }

    /// Every change of the document the holder of `heads` lacks.
    pub fn changes_after(&mut self, heads: &[Hash]) -> Vec<(Hash, Vec<u8>)> {
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        self.doc.get_changes(&heads).into_iter().map(|c| (c.hash().0, c.raw_bytes().to_vec())).collect()
    }

    /// Applies peer changes that are known to have all their dependencies.
    ///
    /// On `Err(DocError::Panicked)` the document is in an unknown state and
    /// the caller must drop it.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), DocError> {
        let doc = &mut self.doc;
        match contained(AssertUnwindSafe(|| doc.apply_changes(changes))) {
            Ok(r) => r.map_err(am("apply changes")),
            Err(_) => Err(DocError::Panicked),
        }
    }

    /// Reads the case, deriving status, level and deadline with `policy`.
    pub fn read(&mut self, policy: &Policy) -> Result<CaseState, DocError> {
        self.read_with(policy, true)
    }

    /// [`CaseDoc::read`] without who wrote each event (`author` and `device`
    /// are left empty): what a projected row is made of, at a fraction of the
    /// cost (finding an event's change walks the document's operations).
    pub fn read_for_row(&mut self, policy: &Policy) -> Result<CaseState, DocError> {
        self.read_with(policy, false)
    }

    fn read_with(&mut self, policy: &Policy, who: bool) -> Result<CaseState, DocError> {
        let events = self.events(who)?;
        let d = &self.doc;
        if get_i64(d, &ROOT, "schema") != Some(SCHEMA_VERSION) {
            return Err(DocError::Malformed("unknown schema version"));
        }
        let id = get_str(d, &ROOT, "id")
            .and_then(|s| s.parse::<CaseId>().ok())
            .ok_or(DocError::Malformed("missing case id"))?;
        let parties_obj = obj_at(d, &ROOT, "parties")?;
        let mut parties = Vec::new();
        for i in 0..d.length(&parties_obj) {
            if let Ok(Some((Value::Object(ObjType::Map), p))) = d.get(&parties_obj, i) {
                parties.push(PartyView {
                    name: get_str(d, &p, "name").unwrap_or_default(),
                    id_number: get_str(d, &p, "id_number"),
                    phone: get_str(d, &p, "phone"),
                });
            }
        }
        let description = d.text(obj_at(d, &ROOT, "description")?).map_err(am("text"))?;
        // List order, not device time: an event appended after seeing another
        // sorts after it whatever the clocks say, and concurrent appends are
        // ordered by Automerge the same way on every replica.
        let recorded_at = Timestamp(get_i64(d, &ROOT, "recorded_at").unwrap_or(0));
        let mut state = CaseState {
            id,
            number: get_str(d, &ROOT, "number").unwrap_or_default(),
            category: get_str(d, &ROOT, "category").and_then(|s| Category::parse(&s).ok()).unwrap_or(Category::Other),
            title: get_str(d, &ROOT, "title").unwrap_or_default(),
            description,
            parties,
            county: get_str(d, &ROOT, "county").unwrap_or_default(),
            township: get_str(d, &ROOT, "township").unwrap_or_default(),
            village: get_str(d, &ROOT, "village").unwrap_or_default(),
            grid: get_i64(d, &ROOT, "grid").and_then(|g| u32::try_from(g).ok()),
            risk: get_str(d, &ROOT, "risk").and_then(|s| Risk::parse(&s).ok()).unwrap_or(Risk::Medium),
            flags: read_flags(d),
            responsible: get_str(d, &ROOT, "responsible"),
            responsible_id: get_str(d, &ROOT, "responsible_id"),
            recorded_by: get_str(d, &ROOT, "recorded_by").unwrap_or_default(),
            recorded_by_id: get_str(d, &ROOT, "recorded_by_id"),
            recorded_at,
            status: Status::Recorded,
            level: Level::Village,
            escalated_to: None,
            deadline: None,
            since: recorded_at,
            confirmed: false,
            follow_ups: 0,
            settled_at: None,
            visits: 0,
            follow_ups_waived: false,
            supervision: None,
            violations: Vec::new(),
            updated_at: recorded_at,
            events: Vec::new(),
        };
        derive(&mut state, &events, policy);
        state.updated_at =
            self.doc.get_changes_meta(&[]).iter().map(|c| Timestamp(c.timestamp)).max().unwrap_or(recorded_at);
        state.events = events;
        Ok(state)
    }

    fn events(&mut self, who: bool) -> Result<Vec<EventView>, DocError> {
        let list = obj_at(&self.doc, &ROOT, "events")?;
        let mut out = Vec::new();
        for i in 0..self.doc.length(&list) {
            let Ok(Some((Value::Object(ObjType::Map), ev))) = self.doc.get(&list, i) else { continue };
            let d = &self.doc;
            let Some(kind) = get_str(d, &ev, "kind").and_then(|k| EventKind::parse(&k).ok()) else { continue };
            let to = match kind {
                EventKind::EscalationAccepted | EventKind::Recorded => get_str(d, &ev, "level"),
                _ => get_str(d, &ev, "to"),
            };
            let text = get_str(d, &ev, "text");
            let by = get_str(d, &ev, "by").and_then(|b| StaffId::parse(&b).ok());
            let (mut author, device, _) = if who { self.provenance(&ev) } else { (None, None, None) };
            if let Some(a) = author.as_mut() {
                a.id = by;
            }
            let d = &self.doc;
            out.push(EventView {
                kind,
                at: Timestamp(get_i64(d, &ev, "at").unwrap_or(0)),
                author,
                device,
                text,
                to,
                court: get_str(d, &ev, "court"),
                reference: get_str(d, &ev, "ref"),
                to_id: get_str(d, &ev, "to_id"),
                rule: get_str(d, &ev, "rule"),
                due: get_i64(d, &ev, "due").map(Timestamp),
            });
        }
        Ok(out)
    }

    /// Who wrote the operation `id`, on which device, and when.
    fn provenance(&mut self, id: &ObjId) -> (Option<Author>, Option<String>, Option<Timestamp>) {
        let device = match id {
            ObjId::Id(_, actor, _) => device_of(actor).map(|d| d.to_string()),
            ObjId::Root => None,
        };
        let Some(hash) = self.doc.hash_for_opid(id) else { return (None, device, None) };
        let Some(meta) = self.doc.get_change_meta_by_hash(&hash) else { return (None, device, None) };
        let author = meta.message.as_deref().and_then(Author::from_message).map(|(_, a)| a);
        (author, device, Some(Timestamp(meta.timestamp)))
    }

    /// Every register that holds concurrent values, with each value's author.
    pub fn conflicts(&mut self) -> Vec<FieldConflict> {
        let mut out = Vec::new();
        for field in REGISTER_FIELDS {
            self.conflict_at(&ROOT, field, field.to_string(), &mut out);
        }
        if let Ok(parties) = obj_at(&self.doc, &ROOT, "parties") {
            for i in 0..self.doc.length(&parties) {
                if let Ok(Some((_, p))) = self.doc.get(&parties, i) {
                    for key in ["name", "id_number", "phone"] {
                        self.conflict_at(&p, key, format!("parties[{i}].{key}"), &mut out);
                    }
                }
            }
        }
        out
    }

    fn conflict_at(&mut self, obj: &ObjId, key: &str, field: String, out: &mut Vec<FieldConflict>) {
        let Ok(all) = self.doc.get_all(obj, key) else { return };
        if all.len() < 2 {
            return;
        }
        let all: Vec<(String, ObjId)> = all.into_iter().map(|(v, id)| (value_text(&v), id)).collect();
        let mut values = Vec::new();
        // get_all lists values in op order; the winner Automerge shows is the last.
        for (value, id) in all.into_iter().rev() {
            let (author, device, at) = self.provenance(&id);
            values.push(ConflictValue { value, author, device, at });
        }
        out.push(FieldConflict { field, values });
    }

    /// Every change, oldest first by (time, hash), with who made it. Changes made in the same
    /// millisecond are in causal order first (a change's first operation counter is above
    /// those of everything it builds on: an edit comes before the escalation the county's
    /// routing made of it), then by hash, so every replica lists a case's history alike.
    pub fn history(&mut self) -> Vec<HistoryEntry> {
        let mut out: Vec<(u64, HistoryEntry)> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| {
                let parsed = m.message.as_deref().and_then(Author::from_message);
                let (op, author) = match parsed {
                    Some((op, a)) => (op, Some(a)),
                    None => (m.message.as_deref().unwrap_or("").to_owned(), None),
                };
                let entry = HistoryEntry {
                    at: Timestamp(m.timestamp),
                    op,
                    author,
                    device: device_of(&m.actor).map(|d| d.to_string()),
                    hash: m.hash.to_string(),
                };
                (m.start_op, entry)
            })
            .collect();
        out.sort_by(|(a_op, a), (b_op, b)| (a.at, a_op, &a.hash).cmp(&(b.at, b_op, &b.hash)));
        out.into_iter().map(|(_, entry)| entry).collect()
    }
}

/// The first bytes of a snapshot [`CaseDoc::save`] DEFLATEd whole. Automerge's
/// own documents begin with `85 6f 4a 83`, so the two never mix up, and
/// snapshots saved before (plain Automerge) still load.
pub const PACKED_SNAPSHOT: &[u8; 4] = b"fqz1";

/// Most bytes a packed snapshot may inflate to: a case is a few KiB, and a
/// corrupt or planted file must not make the ledger allocate without bound.
const MAX_SNAPSHOT_BYTES: u64 = 64 << 20;

/// A snapshot's Automerge bytes: inflated if [`CaseDoc::save`] packed it,
/// else as they are.
fn unpack_snapshot(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DocError> {
    let Some(packed) = bytes.strip_prefix(PACKED_SNAPSHOT) else {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    };
    let mut raw = Vec::with_capacity(packed.len() * 4);
    flate2::read::DeflateDecoder::new(packed)
        .take(MAX_SNAPSHOT_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|_| DocError::Malformed("a stored snapshot does not inflate"))?;
    if raw.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(DocError::Malformed("a stored snapshot inflates past 64 MiB"));
    }
    Ok(std::borrow::Cow::Owned(raw))
}

/// The heads a snapshot saved by [`CaseDoc::save`] records in its header,
/// sorted, without loading the document; `None` if the bytes are not a
/// document chunk this parser understands (then load it instead).
///
/// Automerge's document chunk (binary format spec): magic (4), checksum (4),
/// chunk type 0 (1), uLEB128 length; then the actors (uLEB128 count, each a
/// uLEB128 length and the bytes) and the heads (uLEB128 count, 32 bytes each).
/// Only the column data after them is compressed.
pub fn snapshot_heads(bytes: &[u8]) -> Option<Vec<Hash>> {
    let Some(packed) = bytes.strip_prefix(PACKED_SNAPSHOT) else {
        return match header_heads(bytes) {
            Header::Heads(h) => Some(h),
            Header::Short | Header::Invalid => None,
        };
    };
    // The header is at the start of the inflated bytes: inflate only as much
    // as it needs (a digest reads every case's heads; inflating whole
    // snapshots made it several times slower).
    let mut decoder = flate2::read::DeflateDecoder::new(packed);
    let mut raw = Vec::new();
    // A case's header (a few actors, one or two heads) is a few hundred bytes.
    let mut want: u64 = 512;
    loop {
        let read = (&mut decoder).take(want - raw.len() as u64).read_to_end(&mut raw).ok()?;
        match header_heads(&raw) {
            Header::Heads(h) => return Some(h),
            Header::Short if read > 0 && want < MAX_SNAPSHOT_BYTES => want = want.saturating_mul(8),
            Header::Short | Header::Invalid => return None,
        }
    }
}

/// What the start of a snapshot says of its heads.
enum Header {
    /// The heads, sorted.
    Heads(Vec<Hash>),
    /// The bytes end before the heads do.
    Short,
    /// Not a document chunk this parser understands.
    Invalid,
}

/// A uLEB128 at `at` in `b`, moving `at` past it.
fn uleb(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return usize::try_from(v).ok();
        }
    }
    None
}

/// The first bytes of every Automerge chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

fn header_heads(bytes: &[u8]) -> Header {
    const MAGIC: [u8; 4] = CHUNK_MAGIC;
    match (bytes.get(..4), bytes.get(8)) {
        (Some(m), Some(0)) if m == MAGIC => {}
        (Some(m), _) if m != MAGIC => return Header::Invalid,
        (Some(_), Some(_)) => return Header::Invalid,
        _ => return Header::Short,
    }
    let mut at = 9;
    let parse = |at: &mut usize| -> Option<Vec<Hash>> {
        let len = uleb(bytes, at)?;
        let end = at.checked_add(len)?;
        // Only the part of the chunk at hand: the heads come before the columns.
        let chunk = bytes.get(..end.min(bytes.len()))?;
        for _ in 0..uleb(chunk, at)? {
            let n = uleb(chunk, at)?;
            *at = at.checked_add(n)?;
        }
        let count = uleb(chunk, at)?;
        let mut heads = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let h: Hash = chunk.get(*at..at.checked_add(32)?)?.try_into().ok()?;
            heads.push(h);
            *at += 32;
        }
        heads.sort_unstable();
        Some(heads)
    };
    match parse(&mut at) {
        Some(h) => Header::Heads(h),
        // Ran out of bytes: more may help, unless the chunk itself ended.
        None => Header::Short,
    }
}

/// Most bytes of a case's document a peer may send whole (a first sync, protocol version 4).
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most changes such a document may hold.
pub const MAX_DOCUMENT_CHANGES: usize = 8192;

/// The changes of a case's whole document as a peer sent it, in the document's own order,
/// each with its hash and its bytes as a plain change chunk (what [`parse_change`] takes).
///
/// Only what fq sends is accepted: one document chunk (type 0) that ends where the bytes end,
/// with no DEFLATEd column (Automerge inflates those without a cap) and at most
/// [`MAX_DOCUMENT_CHANGES`] changes in at most [`MAX_DOCUMENT_BYTES`]. The document is loaded
/// inside `catch_unwind`: Automerge 0.12 panics on some malformed input. Loading checks that
/// the changes it rebuilds hash to the heads the document records.
pub fn document_changes(bytes: &[u8]) -> Result<Vec<(Hash, Vec<u8>)>, DocError> {
    let bad = DocError::Malformed;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(bad("a case's document is over 512 KiB"));
    }
    if bytes.get(..4) != Some(&CHUNK_MAGIC[..]) || bytes.get(8) != Some(&0) {
        return Err(bad("not a document chunk"));
    }
    let mut at = 9;
    let body = uleb(bytes, &mut at).ok_or(bad("a document's length is cut"))?;
    if at.checked_add(body) != Some(bytes.len()) {
        return Err(bad("a document with bytes before or after its chunk"));
    }
    plain_columns(bytes, &mut at).ok_or(bad("a document with compressed or unreadable columns"))?;
    let owned = bytes.to_vec();
    let doc = contained(move || automerge::Automerge::load(&owned))
        .map_err(|_| DocError::Panicked)?
        .map_err(am("load a peer's document"))?;
    let changes = doc.get_changes(&[]);
    if changes.len() > MAX_DOCUMENT_CHANGES {
        return Err(bad("a case's document holds over 8,192 changes"));
    }
    Ok(changes.iter().map(|c| (c.hash().0, c.raw_bytes().to_vec())).collect())
}

/// Walks a document chunk's actors, heads and column metadata from `at`; `None` if one is
/// cut short or any column is DEFLATEd (bit 3 of its specification).
fn plain_columns(bytes: &[u8], at: &mut usize) -> Option<()> {
    for _ in 0..uleb(bytes, at)? {
        let n = uleb(bytes, at)?;
        *at = at.checked_add(n)?;
    }
    let heads = uleb(bytes, at)?;
    *at = at.checked_add(heads.checked_mul(32)?)?;
    // The change columns, then the operation columns.
    for _ in 0..2 {
        for _ in 0..uleb(bytes, at)? {
            let spec = uleb(bytes, at)?;
            uleb(bytes, at)?;
            if spec & 0b1000 != 0 {
                return None;
            }
        }
    }
    (*at <= bytes.len()).then_some(())
}

/// Parses a peer's change, refusing what Automerge 0.12 mishandles.
///
/// Only plain change chunks (type 1) are accepted: compressed chunks
/// (type 2) inflate without a cap inside Automerge. Changes with extra bytes
/// (an author footer) are refused too: a forged footer panics Automerge and
/// fq never writes one.
pub fn parse_change(bytes: &[u8]) -> Result<Change, DocError> {
    if bytes.len() > MAX_CHANGE_BYTES {
        return Err(DocError::BadChange(format!("{} bytes is over the {MAX_CHANGE_BYTES} byte limit", bytes.len())));
    }
    // magic (4) + checksum (4) + chunk type (1)
    match bytes.get(8) {
        Some(1) => {}
        Some(2) => return Err(DocError::BadChange("compressed changes are not accepted".into())),
        _ => return Err(DocError::BadChange("not a change chunk".into())),
    }
    let owned = bytes.to_vec();
    let change = contained(move || Change::from_bytes(owned))
        .map_err(|_| DocError::BadChange("automerge panicked while parsing".into()))?
        .map_err(|e| DocError::BadChange(e.to_string()))?;
    if !change.extra_bytes().is_empty() {
        return Err(DocError::BadChange("change carries extra bytes".into()));
    }
    Ok(change)
}

/// The hash of a change from its bytes alone, without parsing it: Automerge hashes a chunk
/// as SHA-256 over everything after its magic and checksum (type, length, body). For bytes
/// that are not one well-formed change chunk the value names nothing, and the change is
/// refused when it is parsed.
pub fn chunk_hash(bytes: &[u8]) -> Hash {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes.get(8..).unwrap_or_default()).into()
}

/// The hash and dependencies of a parsed change.
pub fn change_key(change: &Change) -> (Hash, Vec<Hash>) {
    (change.hash().0, change.deps().iter().map(hash_bytes).collect())
}

/// Device time and author device of a parsed change.
pub fn change_origin(change: &Change) -> (Timestamp, Option<DeviceId>) {
    (Timestamp(change.timestamp()), device_of(change.actor_id()))
}

fn put_party(d: &mut AutoCommit, list: &ObjId, index: usize, p: &Party) -> Result<(), DocError> {
    let obj = d.insert_object(list, index, ObjType::Map).map_err(am("insert"))?;
    d.put(&obj, "name", p.name.as_str()).map_err(am("put"))?;
    if let Some(id) = &p.id_number {
        d.put(&obj, "id_number", id.as_str()).map_err(am("put"))?;
    }
    if let Some(ph) = &p.phone {
        d.put(&obj, "phone", ph.as_str()).map_err(am("put"))?;
    }
    Ok(())
}

fn obj_at(d: &AutoCommit, obj: &ObjId, key: &str) -> Result<ObjId, DocError> {
    match d.get(obj, key) {
        Ok(Some((Value::Object(_), id))) => Ok(id),
        _ => Err(DocError::Malformed("a container of the case is missing")),
    }
}

fn get_str(d: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match d.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

fn get_i64(d: &AutoCommit, obj: &ObjId, key: &str) -> Option<i64> {
    match d.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => s.as_i64(),
        _ => None,
    }
}

fn value_text(v: &Value<'_>) -> String {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            ScalarValue::Null => String::new(),
            other => other.to_string(),
        },
        Value::Object(t) => format!("<{t}>"),
    }
}

/// The risk flags a document holds, each once, in vocabulary order.
fn read_flags(d: &AutoCommit) -> Vec<RiskFlag> {
    let Ok(list) = obj_at(d, &ROOT, "risk_flags") else { return Vec::new() };
    let mut flags: Vec<RiskFlag> = (0..d.length(&list))
        .filter_map(|i| match d.get(&list, i) {
            Ok(Some((Value::Scalar(v), _))) => v.as_str().and_then(|c| RiskFlag::parse(c).ok()),
            _ => None,
        })
        .collect();
    flags.sort_unstable();
    flags.dedup();
    flags
}

/// The level of the person who wrote an event, if known.
fn author_level(e: &EventView) -> Option<Level> {
    e.author.as_ref().map(|a| a.role.level())
}

/// Derives status, level, deadline and counters from ordered events.
///
/// Total: every event list gives a state. Events that local rules refuse but
/// that arrived concurrently by sync (a settlement in the village while the
/// township was to accept the escalation) still apply, and are listed in
/// `violations`.
fn derive(state: &mut CaseState, events: &[EventView], policy: &Policy) {
    let level_of = |e: &EventView| e.to.as_deref().and_then(|s| Level::parse(s).ok());
    let mut since = state.recorded_at;
    for e in events {
        match e.kind {
            EventKind::Recorded => {
                if let Some(l) = level_of(e) {
                    state.level = l;
                }
                since = e.at;
            }
            // Naming a responsible person is not yet mediating.
            EventKind::Assigned => {}
            EventKind::Note => {
                if state.status == Status::Recorded {
                    state.status = Status::Mediating;
                }
            }
            EventKind::Escalated => {
                state.escalated_to = level_of(e).or(state.level.up());
                state.status = Status::Escalated;
            }
            EventKind::EscalationAccepted => {
                if let Some(to) = state.escalated_to.take().or(level_of(e)) {
                    state.level = to;
                }
                state.status = Status::Mediating;
                since = e.at;
            }
            EventKind::Settled | EventKind::Failed => {
                let required = state.escalated_to.map_or(state.level, |to| to.max(state.level));
                if author_level(e).is_some_and(|l| l < required) {
                    let rule = if e.kind == EventKind::Settled { "settled-below-level" } else { "failed-below-level" };
                    state.violations.push(Violation { rule, at: e.at, by: e.author.clone() });
                }
                state.escalated_to = None;
                if e.kind == EventKind::Settled {
                    state.status = Status::Settled;
                    state.settled_at = Some(e.at);
                    state.visits = 0;
                    state.follow_ups_waived = false;
                } else {
                    state.status = Status::Failed;
                    state.settled_at = None;
                }
            }
            EventKind::Confirmed => state.confirmed = true,
            EventKind::FollowUp => {
                state.follow_ups += 1;
                state.visits += 1;
            }
            EventKind::Relapsed => {
                state.follow_ups += 1;
                state.status = Status::Mediating;
                state.confirmed = false;
                state.settled_at = None;
                state.visits = 0;
                state.follow_ups_waived = false;
                since = e.at;
            }
            EventKind::Archived => {
                if state.status == Status::Settled && follow_ups_pending(state, policy) > 0 {
                    state.violations.push(Violation {
                        rule: "archived-before-follow-ups",
                        at: e.at,
                        by: e.author.clone(),
                    });
                }
                state.status = Status::Archived;
            }
            EventKind::Supervised => {
                state.supervision = Some(Supervision {
                    at: e.at,
                    due: e.due.unwrap_or(e.at),
                    instruction: e.text.clone().unwrap_or_default(),
                    by: e.author.clone(),
                });
            }
            EventKind::Responded => state.supervision = None,
            EventKind::FollowUpWaived => state.follow_ups_waived = true,
        }
    }
    state.since = since;
    state.deadline = state.status.is_open().then(|| since.plus_days(policy.deadlines.days(state.level)));
}

/// How many follow-up visits the policy still asks of a settled case (0 once
/// they are made or waived).
pub fn follow_ups_pending(state: &CaseState, policy: &Policy) -> u32 {
    if state.follow_ups_waived || state.settled_at.is_none() {
        return 0;
    }
    u32::try_from(policy.follow_up_days.len()).unwrap_or(u32::MAX).saturating_sub(state.visits)
}

thread_local! {
    /// Whether this thread is inside [`contained`]: its panics are expected and reported by the
    /// caller, not printed.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which gives Automerge bytes it may panic on, and catches the panic (see the module
/// documentation). With [`install_panic_hook`] in place the panic prints nothing.
pub fn contained<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = catch_unwind(f);
    CONTAINED.with(|c| c.set(outer));
    result
}

/// Makes the process's panic hook skip panics caught by [`contained`]; every other panic goes
/// to the hook in place before (Rust's default: the message on standard error). The binaries
/// call it first thing.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CONTAINED.with(Cell::get) {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn author(name: &str) -> Author {
        Author { name: name.into(), role: Role::Mediator, id: None }
    }

    fn new_doc(device: u8) -> CaseDoc {
        let village = AdminCode::parse("532924101201").unwrap();
        let dev = DeviceId::from_bytes([device; 8]);
        let number = CaseNumber::new(&village, 2026, dev, 1);
        let parties = [Party::parse("李四,532924198001011230,13800000000").unwrap()];
        let new = NewCaseDoc {
            id: CaseId::random(),
            number: &number,
            village: &village,
            grid: Some(3),
            category: Category::Neighbor,
            title: "宅基地滴水纠纷",
            description: "屋檐滴水落到邻居院内",
            parties: &parties,
            risk: Risk::Low,
            flags: &[],
            level: Level::Village,
            recorded_at: Timestamp(1_000),
        };
        CaseDoc::create(&new, &author("张三"), actor_for(dev, [1; 8]), Timestamp(1_000)).unwrap()
    }

    #[test]
    fn create_reads_back() {
        let mut d = new_doc(1);
        let s = d.read(&Policy::default()).unwrap();
        assert_eq!(s.title, "宅基地滴水纠纷");
        assert_eq!(s.status, Status::Recorded);
        assert_eq!(s.township, "532924101");
        assert_eq!(s.parties[0].phone.as_deref(), Some("13800000000"));
        assert_eq!(s.deadline, Some(Timestamp(1_000).plus_days(15)));
        assert_eq!(d.history().len(), 1);
    }

    #[test]
    fn snapshots_are_packed_whole_and_plain_automerge_ones_still_load() {
        let mut d = new_doc(1);
        d.push_event(&NewEvent::Note("双方到场".into()), &author("张三"), Timestamp(2_000)).unwrap();
        let packed = d.save();
        assert!(packed.starts_with(PACKED_SNAPSHOT));
        let plain = d.doc.save();
        assert!(packed.len() < plain.len(), "packed {} B, Automerge's own {} B", packed.len(), plain.len());
        let actor = || actor_for(DeviceId::from_bytes([2; 8]), [2; 8]);
        let policy = Policy::default();
        let want = d.read(&policy).unwrap();
        for bytes in [&packed, &plain] {
            let mut back = CaseDoc::load(bytes, actor()).unwrap();
            assert_eq!(back.read(&policy).unwrap(), want);
            assert_eq!(snapshot_heads(bytes), Some(d.heads()));
        }
    }

    #[test]
    fn a_peers_document_gives_its_changes_and_anything_else_is_refused_without_a_panic() {
        let mut d = new_doc(1);
        for n in 0..30 {
            let note = format!("第{n}次走访：双方到村委会，就滴水槽位置和赔偿金额再次协商。");
            d.push_event(&NewEvent::Note(note), &author("张三"), Timestamp(2_000 + n)).unwrap();
        }
        let document = d.document();
        let changes = document_changes(&document).unwrap();
        let want: Vec<Hash> = d.doc.get_changes(&[]).iter().map(|c| c.hash().0).collect();
        assert_eq!(changes.iter().map(|(h, _)| *h).collect::<Vec<_>>(), want);
        for (hash, bytes) in &changes {
            assert_eq!(&chunk_hash(bytes), hash, "each change's bytes hash to it");
            assert!(parse_change(bytes).is_ok(), "each change is a plain change chunk");
        }
        // Automerge's own save DEFLATEs the bigger columns: refused, never inflated.
        let compressed = d.doc.save();
        assert_ne!(compressed, document, "the case is big enough for a compressed column");
        assert!(matches!(document_changes(&compressed), Err(DocError::Malformed(_))));
        // Bytes after the chunk (a compressed change could hide there), or cut short.
        let mut trailing = document.clone();
        trailing.extend_from_slice(d.doc.get_changes(&[])[0].raw_bytes());
        assert!(document_changes(&trailing).is_err());
        assert!(document_changes(&document[..document.len() - 1]).is_err());
        // Every byte changed in turn: an error or changes, never a panic.
        for at in 0..document.len() {
            let mut bad = document.clone();
            bad[at] ^= 0x5a;
            let _ = document_changes(&bad);
        }
    }

    #[test]
    fn a_corrupt_or_oversized_packed_snapshot_is_an_error() {
        let actor = || actor_for(DeviceId::from_bytes([2; 8]), [2; 8]);
        let mut garbage = PACKED_SNAPSHOT.to_vec();
        garbage.extend_from_slice(b"\xff\xfe not deflate");
        assert!(matches!(CaseDoc::load(&garbage, actor()), Err(DocError::Malformed(_))));
        // 65 MiB of zeros DEFLATE to about 64 KiB: refused, not allocated.
        let mut bomb = flate2::write::DeflateEncoder::new(PACKED_SNAPSHOT.to_vec(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..65 {
            bomb.write_all(&zeros).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        assert!(matches!(CaseDoc::load(&bomb, actor()), Err(DocError::Malformed(m)) if m.contains("64 MiB")));
        assert_eq!(snapshot_heads(&bomb), None);
    }

    #[test]
    fn lifecycle_derives_status_and_level() {
        let mut d = new_doc(1);
        let a = author("张三");
        d.push_event(&NewEvent::Note("first".into()), &a, Timestamp(2_000)).unwrap();
        d.push_event(&NewEvent::Escalate { to: Level::Township, reason: "r".into(), rule: None }, &a, Timestamp(3_000))
            .unwrap();
        let s = d.read(&Policy::default()).unwrap();
        assert_eq!((s.status, s.level), (Status::Escalated, Level::Village));
        d.push_event(&NewEvent::AcceptEscalation { level: Level::Township }, &a, Timestamp(4_000)).unwrap();
        let s = d.read(&Policy::default()).unwrap();
        assert_eq!((s.status, s.level), (Status::Mediating, Level::Township));
        assert_eq!(s.deadline, Some(Timestamp(4_000).plus_days(30)));
        d.push_event(&NewEvent::Settle("agreed".into()), &a, Timestamp(5_000)).unwrap();
        let r = NewEvent::FollowUp { outcome: Outcome::Relapsed, note: None };
        d.push_event(&r, &a, Timestamp(6_000)).unwrap();
        assert_eq!(d.read(&Policy::default()).unwrap().status, Status::Mediating);
    }

    #[test]
    fn concurrent_title_edits_are_listed_with_authors() {
        let mut a = new_doc(1);
        let bytes = a.save();
        let mut b = CaseDoc::load(&bytes, actor_for(DeviceId::from_bytes([2; 8]), [2; 8])).unwrap();
        let edit = |t: &str| FieldEdit { title: Some(t.into()), ..Default::default() };
        a.edit(&edit("甲"), &author("张三"), Timestamp(2_000)).unwrap();
        b.edit(&edit("乙"), &author("李娜"), Timestamp(2_001)).unwrap();
        let from_b: Vec<Change> =
            b.changes_after(&a.heads()[..0]).into_iter().map(|(_, c)| parse_change(&c).unwrap()).collect();
        a.apply(from_b).unwrap();
        let c = a.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "title");
        let mut names: Vec<_> = c[0].values.iter().map(|v| v.author.as_ref().unwrap().name.clone()).collect();
        names.sort();
        assert_eq!(names, ["张三", "李娜"]);
    }

    #[test]
    fn snapshot_heads_match_the_loaded_document() {
        let mut a = new_doc(1);
        let mut b = CaseDoc::load(&a.save(), actor_for(DeviceId::from_bytes([2; 8]), [2; 8])).unwrap();
        a.push_event(&NewEvent::Note("甲".into()), &author("张三"), Timestamp(2_000)).unwrap();
        b.push_event(&NewEvent::Note("乙".into()), &author("李娜"), Timestamp(2_001)).unwrap();
        let from_b: Vec<Change> = b.changes_after(&[]).into_iter().map(|(_, c)| parse_change(&c).unwrap()).collect();
        a.apply(from_b).unwrap();
        let heads = a.heads();
        assert_eq!(heads.len(), 2, "two concurrent notes");
        assert_eq!(snapshot_heads(&a.save()), Some(heads.clone()));
        let mut hashes = a.change_hashes();
        hashes.sort_unstable();
        let mut all: Vec<Hash> = a.changes_after(&[]).into_iter().map(|(h, _)| h).collect();
        all.sort_unstable();
        assert_eq!((hashes.len(), &hashes), (3, &all));
        assert_eq!(snapshot_heads(b"garbage"), None);
        assert_eq!(snapshot_heads(&a.save()[..60]), None);
    }

    #[test]
    fn chunk_hash_is_the_automerge_change_hash() {
        let mut doc = new_doc(1);
        doc.push_event(&NewEvent::Note("双方到场".into()), &author("张三"), Timestamp(2_000)).unwrap();
        for (hash, bytes) in doc.changes_after(&[]) {
            assert_eq!(chunk_hash(&bytes), hash);
            assert_eq!(change_key(&parse_change(&bytes).unwrap()).0, hash);
        }
        assert_eq!(chunk_hash(b"short"), chunk_hash(b""));
    }

    #[test]
    fn parse_change_refuses_non_change_chunks() {
        assert!(parse_change(b"garbage").is_err());
        assert!(parse_change(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2, 0]).is_err());
        assert!(parse_change(&vec![0; MAX_CHANGE_BYTES + 1]).is_err());
    }
}
