//! A case's timeline, as the merge audit reads it: which changes were made
//! without seeing each other, what each change did to the case, and the
//! conflicts concurrent changes left (ADR 21).
//!
//! Three kinds of conflict are found, all from the document alone, so every
//! replica holding the same changes finds the same ones:
//! - **field**: a register (`title`, `risk`, a party's phone...) holds several
//!   values because concurrent changes each wrote one. Automerge shows one and
//!   keeps the others; a later write replaces them all.
//! - **text**: concurrent changes both edited the description. Automerge
//!   merges the two edits character by character into one text that neither
//!   author wrote; nothing is lost, but the result may read as nonsense.
//! - **lifecycle**: concurrent lifecycle events that contradict each other (a
//!   village settles while the township escalates), and concurrent settlements
//!   with different agreements (`agreement`). Both events are kept (ADR 2);
//!   the derived status follows the one the list puts last.
//!
//! A text or lifecycle conflict is *resolved* by a later change that saw every
//! side of it (all its sides are ancestors of that change) and edited the
//! description again, or recorded a lifecycle event again. A field conflict is
//! open while the register holds several values; once a later write replaced
//! them, the change that did it shows, in [`CaseDoc::effects`], every value it
//! replaced.
//!
//! Concurrency is decided on the change graph, never on device times (which
//! are skewed in the field): `a` happened before `b` when `a` is an ancestor
//! of `b`; two changes neither of which is an ancestor of the other are
//! concurrent.

use std::collections::BTreeMap;

use automerge::{ChangeHash, ObjId, ObjType, ROOT, ReadDoc, Value};
use serde::Serialize;

use automerge::transaction::Transactable;

use super::{Author, CaseDoc, DocError, Hash, REGISTER_FIELDS, device_of, get_str, obj_at, value_text};
use crate::case::{DeviceId, EventKind};
use crate::clock::Timestamp;

/// One change of a case, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeNode {
    /// Its hash.
    #[serde(skip)]
    pub hash: Hash,
    /// The changes it was made on top of.
    #[serde(skip)]
    pub deps: Vec<Hash>,
    /// Its device time.
    pub at: Timestamp,
    /// The device that made it (the first 8 bytes of its actor).
    #[serde(skip)]
    pub device: Option<DeviceId>,
    /// What was done (`create`, `edit:title`, `note`, ...), as its message says.
    pub op: String,
    /// Who did it, as its message says.
    pub author: Option<Author>,
}

/// Every change of a case in an order where each comes after its
/// dependencies, with who saw what.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The changes, each after its dependencies.
    pub nodes: Vec<ChangeNode>,
    index: BTreeMap<Hash, usize>,
    /// For each node, the set of its strict ancestors (one bit per node).
    ancestors: Vec<Vec<u64>>,
    linear: bool,
}

impl Timeline {
    /// The position of a change in [`Timeline::nodes`].
    pub fn position(&self, hash: &Hash) -> Option<usize> {
        self.index.get(hash).copied()
    }

    /// Whether `a` is a strict ancestor of `b` (`b` was made after seeing `a`).
    pub fn before(&self, a: usize, b: usize) -> bool {
        self.ancestors.get(b).and_then(|bits| bits.get(a / 64)).is_some_and(|w| w & (1 << (a % 64)) != 0)
    }

    /// Whether `a` and `b` were made without either seeing the other.
    pub fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.before(a, b) && !self.before(b, a)
    }

    /// Whether any two changes are concurrent.
    pub fn has_concurrency(&self) -> bool {
        !self.linear
    }

    /// The changes directly before `i` (its dependencies), as heads.
    fn deps_heads(&self, i: usize) -> Vec<ChangeHash> {
        self.nodes.get(i).map(|n| n.deps.iter().map(|h| ChangeHash(*h)).collect()).unwrap_or_default()
    }

    /// The state right after `i`, as heads.
    fn own_heads(&self, i: usize) -> Vec<ChangeHash> {
        self.nodes.get(i).map(|n| vec![ChangeHash(n.hash)]).unwrap_or_default()
    }
}

/// What kind of conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// A register with several values.
    Field,
    /// Concurrent edits of a text (the description).
    Text,
    /// Contradicting lifecycle events, or concurrent different agreements.
    Lifecycle,
}

/// One side of a conflict: a value and the change that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictSide {
    /// The value: a register's value, that side's whole text, or the
    /// lifecycle event's kind code.
    pub value: String,
    /// For a lifecycle event: its text (agreement, reason) or the level it names.
    pub detail: Option<String>,
    /// Who wrote it.
    pub author: Option<Author>,
    /// The device it was written on.
    pub device: Option<String>,
    /// When (device time).
    pub at: Option<Timestamp>,
    /// The change that wrote it.
    #[serde(skip)]
    pub hash: Option<Hash>,
}

/// A conflict the merge audit lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditConflict {
    /// What kind.
    pub kind: ConflictKind,
    /// The field: a register path (`title`, `parties[0].phone`), `description`,
    /// `agreement` or `status`.
    pub field: String,
    /// Every side, the one shown first for fields; in list order for lifecycle events.
    pub sides: Vec<ConflictSide>,
    /// What the case shows now: the register's shown value, the merged text,
    /// or the derived status's event kind.
    pub shown: Option<String>,
    /// The change that resolved it; `None` while it is open.
    #[serde(skip)]
    pub resolved_by: Option<Hash>,
}

impl AuditConflict {
    /// Whether nobody has resolved it yet.
    pub fn is_open(&self) -> bool {
        self.resolved_by.is_none()
    }
}

/// A value a change replaced, with who had written it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The field (`title`, `description`, `parties[1]`, `parties[0].phone`).
    pub field: String,
    /// The values before: several when the change resolved a conflict.
    pub old: Vec<ConflictSide>,
    /// The value after (`None`: the field was removed or emptied).
    pub new: Option<String>,
}

/// What one change did to a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeEffect {
    /// Fields it wrote, with their old and new values.
    pub fields: Vec<FieldChange>,
    /// The lifecycle events it recorded, by position in the event list.
    pub events: Vec<usize>,
}

/// Lifecycle events that set the status (ADR 2): two of them made without
/// seeing each other contradict when their kinds differ.
fn sets_status(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Escalated
            | EventKind::EscalationAccepted
            | EventKind::Settled
            | EventKind::Failed
            | EventKind::Relapsed
            | EventKind::Archived
    )
}

/// A lifecycle event with the change that recorded it.
struct EventNode {
    kind: EventKind,
    text: Option<String>,
    level: Option<String>,
    node: Option<usize>,
}

/// Groups of pairwise-related members (union-find over small sets).
fn clusters(pairs: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &(a, b) in pairs {
        let ga = groups.iter().position(|g| g.contains(&a));
        let gb = groups.iter().position(|g| g.contains(&b));
        match (ga, gb) {
            (Some(x), Some(y)) if x != y => {
                let (lo, hi) = (x.min(y), x.max(y));
                let moved = groups.remove(hi);
                groups[lo].extend(moved);
            }
            (Some(_), Some(_)) => {}
            (Some(x), None) => groups[x].push(b),
            (None, Some(y)) => groups[y].push(a),
            (None, None) => groups.push(vec![a, b]),
        }
    }
    for g in &mut groups {
        g.sort_unstable();
        g.dedup();
    }
    groups
}

impl CaseDoc {
    /// Every change of the document, each after its dependencies, with who
    /// saw what. Reads change metadata only.
    pub fn timeline(&mut self) -> Timeline {
        let metas = self.doc.get_changes_meta(&[]);
        let mut raw: Vec<ChangeNode> = metas
            .into_iter()
            .map(|m| {
                let parsed = m.message.as_deref().and_then(Author::from_message);
                let (op, author) = match parsed {
                    Some((op, a)) => (op, Some(a)),
                    None => (m.message.as_deref().unwrap_or("").to_owned(), None),
                };
                ChangeNode {
                    hash: m.hash.0,
                    deps: m.deps.iter().map(|d| d.0).collect(),
                    at: Timestamp(m.timestamp),
                    device: device_of(&m.actor),
                    op,
                    author,
                }
            })
            .collect();
        // Kahn's order: Automerge lists changes causally already, but the
        // audit must not depend on it. Ties keep Automerge's order.
        let known: BTreeMap<Hash, usize> = raw.iter().enumerate().map(|(i, n)| (n.hash, i)).collect();
        let mut placed = vec![false; raw.len()];
        let mut order: Vec<usize> = Vec::with_capacity(raw.len());
        let mut at: BTreeMap<Hash, usize> = BTreeMap::new();
        while order.len() < raw.len() {
            let before = order.len();
            for (i, n) in raw.iter().enumerate() {
                if !placed[i] && n.deps.iter().all(|d| at.contains_key(d) || !known.contains_key(d)) {
                    placed[i] = true;
                    at.insert(n.hash, order.len());
                    order.push(i);
                }
            }
            if order.len() == before {
                // A cycle cannot come out of Automerge; place the rest as listed.
                for (i, p) in placed.iter_mut().enumerate() {
                    if !*p {
                        *p = true;
                        at.insert(raw[i].hash, order.len());
                        order.push(i);
                    }
                }
            }
        }
        let mut slots: Vec<Option<ChangeNode>> = raw.drain(..).map(Some).collect();
        let nodes: Vec<ChangeNode> = order.iter().filter_map(|&i| slots.get_mut(i).and_then(Option::take)).collect();
        let words = nodes.len().div_ceil(64);
        let mut ancestors: Vec<Vec<u64>> = Vec::with_capacity(nodes.len());
        let mut linear = true;
        for (i, n) in nodes.iter().enumerate() {
            let mut bits = vec![0u64; words];
            for d in &n.deps {
                if let Some(&j) = at.get(d) {
                    bits[j / 64] |= 1 << (j % 64);
                    for (w, a) in bits.iter_mut().zip(&ancestors[j]) {
                        *w |= *a;
                    }
                }
            }
            // Linear: each change builds on exactly the one before it.
            let on_previous = i == 0 || (n.deps.len() == 1 && at.get(&n.deps[0]) == Some(&(i - 1)));
            linear &= on_previous;
            ancestors.push(bits);
        }
        Timeline { nodes, index: at, ancestors, linear }
    }

    /// How many conflicts of every kind are open (what `cases.open_conflicts`
    /// holds). Cheap when the history has no concurrent changes.
    pub fn open_conflict_count(&mut self) -> usize {
        self.open_conflict_fields().len()
    }

    /// The open conflicts of every kind, by kind and field. Field conflicts
    /// come first, as [`CaseDoc::conflicts`] lists them.
    pub fn open_conflict_fields(&mut self) -> Vec<(ConflictKind, String)> {
        let timeline = self.timeline();
        self.open_conflict_fields_with(&timeline)
    }

    /// [`CaseDoc::open_conflict_fields`] with the document's timeline already read.
    pub fn open_conflict_fields_with(&mut self, timeline: &Timeline) -> Vec<(ConflictKind, String)> {
        // Without two changes made apart there is nothing to disagree on.
        if !timeline.has_concurrency() {
            return Vec::new();
        }
        let mut out: Vec<(ConflictKind, String)> =
            self.conflicts().into_iter().map(|c| (ConflictKind::Field, c.field)).collect();
        {
            out.extend(
                self.text_conflicts(timeline).into_iter().filter(AuditConflict::is_open).map(|c| (c.kind, c.field)),
            );
            out.extend(
                self.lifecycle_conflicts(timeline)
                    .into_iter()
                    .filter(AuditConflict::is_open)
                    .map(|c| (c.kind, c.field)),
            );
        }
        out
    }

    /// Every conflict: the open field conflicts, and every text and lifecycle
    /// conflict the history holds, open or resolved.
    pub fn audit_conflicts(&mut self, timeline: &Timeline) -> Vec<AuditConflict> {
        let mut out = self.field_conflicts();
        if !timeline.has_concurrency() {
            return out;
        }
        out.extend(self.text_conflicts(timeline));
        out.extend(self.lifecycle_conflicts(timeline));
        out
    }

    /// The open field conflicts, with the change behind each value.
    fn field_conflicts(&mut self) -> Vec<AuditConflict> {
        let mut out = Vec::new();
        let mut paths: Vec<(ObjId, &str, String)> =
            REGISTER_FIELDS.iter().map(|f| (ROOT, *f, (*f).to_owned())).collect();
        if let Ok(parties) = obj_at(&self.doc, &ROOT, "parties") {
            for i in 0..self.doc.length(&parties) {
                if let Ok(Some((_, p))) = self.doc.get(&parties, i) {
                    for key in ["name", "id_number", "phone"] {
                        paths.push((p.clone(), key, format!("parties[{i}].{key}")));
                    }
                }
            }
        }
        for (obj, key, field) in paths {
            let Ok(all) = self.doc.get_all(&obj, key) else { continue };
            if all.len() < 2 {
                continue;
            }
            let all: Vec<(String, ObjId)> = all.into_iter().map(|(v, id)| (value_text(&v), id)).collect();
            // get_all lists values in op order; the one Automerge shows is the last.
            let sides: Vec<ConflictSide> = all.into_iter().rev().map(|(v, id)| self.side(v, None, &id)).collect();
            let shown = sides.first().map(|s| s.value.clone());
            out.push(AuditConflict { kind: ConflictKind::Field, field, sides, shown, resolved_by: None });
        }
        out
    }

    /// A side written by the operation `id`.
    fn side(&mut self, value: String, detail: Option<String>, id: &ObjId) -> ConflictSide {
        let hash = self.doc.hash_for_opid(id).map(|h| h.0);
        let (author, device, at) = self.provenance(id);
        ConflictSide { value, detail, author, device, at, hash }
    }

    /// A side made by change `i` of the timeline.
    fn node_side(timeline: &Timeline, i: usize, value: String, detail: Option<String>) -> ConflictSide {
        let n = timeline.nodes.get(i);
        ConflictSide {
            value,
            detail,
            author: n.and_then(|n| n.author.clone()),
            device: n.and_then(|n| n.device).map(|d| d.to_string()),
            at: n.map(|n| n.at),
            hash: n.map(|n| n.hash),
        }
    }

    /// Which changes edited the description: its text right after each
    /// differs from its text right before. The first change creates it.
    ///
    /// Comparing texts costs a walk of the text per change, so only changes
    /// that may have edited it are compared: fq's own edits say so in their
    /// message (`edit:…description…`), and a change whose message is not
    /// fq's is always compared.
    fn description_edits(&mut self, timeline: &Timeline) -> Vec<bool> {
        let Ok(text) = obj_at(&self.doc, &ROOT, "description") else { return vec![false; timeline.nodes.len()] };
        (0..timeline.nodes.len())
            .map(|i| {
                let node = &timeline.nodes[i];
                let may_edit =
                    node.author.is_none() || (node.op.starts_with("edit:") && node.op.contains("description"));
                if node.deps.is_empty() || !may_edit {
                    return false;
                }
                let before = self.doc.text_at(&text, &timeline.deps_heads(i));
                let after = self.doc.text_at(&text, &timeline.own_heads(i));
                matches!((before, after), (Ok(b), Ok(a)) if a != b)
            })
            .collect()
    }

    fn text_conflicts(&mut self, timeline: &Timeline) -> Vec<AuditConflict> {
        let edits = self.description_edits(timeline);
        let editors: Vec<usize> = (0..edits.len()).filter(|&i| edits[i]).collect();
        let mut pairs = Vec::new();
        for (x, &a) in editors.iter().enumerate() {
            for &b in &editors[x + 1..] {
                if timeline.concurrent(a, b) {
                    pairs.push((a, b));
                }
            }
        }
        let Ok(text) = obj_at(&self.doc, &ROOT, "description") else { return Vec::new() };
        let mut out = Vec::new();
        for group in clusters(&pairs) {
            let resolved_by = editors
                .iter()
                .copied()
                .find(|&c| group.iter().all(|&m| timeline.before(m, c)))
                .map(|c| timeline.nodes[c].hash);
            let sides = group
                .iter()
                .map(|&m| {
                    let value = self.doc.text_at(&text, &timeline.own_heads(m)).unwrap_or_default();
                    Self::node_side(timeline, m, value, None)
                })
                .collect();
            let shown = match resolved_by {
                Some(r) => self.doc.text_at(&text, &[ChangeHash(r)]).ok(),
                None => self.doc.text(&text).ok(),
            };
            out.push(AuditConflict {
                kind: ConflictKind::Text,
                field: "description".into(),
                sides,
                shown,
                resolved_by,
            });
        }
        out
    }

    /// The lifecycle events with the change that recorded each (only for the
    /// events that set the status when `status_only`: finding an event's
    /// change walks the document's operations).
    fn event_nodes(&mut self, timeline: &Timeline, status_only: bool) -> Vec<EventNode> {
        let Ok(list) = obj_at(&self.doc, &ROOT, "events") else { return Vec::new() };
        let mut out = Vec::new();
        for i in 0..self.doc.length(&list) {
            let Ok(Some((Value::Object(ObjType::Map), ev))) = self.doc.get(&list, i) else { continue };
            let Some(kind) = get_str(&self.doc, &ev, "kind").and_then(|k| EventKind::parse(&k).ok()) else {
                continue;
            };
            let node = if status_only && !sets_status(kind) {
                None
            } else {
                self.doc.hash_for_opid(&ev).and_then(|h| timeline.position(&h.0))
            };
            let level = match kind {
                EventKind::EscalationAccepted | EventKind::Recorded => get_str(&self.doc, &ev, "level"),
                _ => get_str(&self.doc, &ev, "to"),
            };
            out.push(EventNode { kind, text: get_str(&self.doc, &ev, "text"), level, node });
        }
        out
    }

    fn lifecycle_conflicts(&mut self, timeline: &Timeline) -> Vec<AuditConflict> {
        let events = self.event_nodes(timeline, true);
        let status: Vec<(usize, &EventNode)> =
            events.iter().enumerate().filter(|(_, e)| sets_status(e.kind) && e.node.is_some()).collect();
        let mut contradictions = Vec::new();
        let mut agreements = Vec::new();
        for (x, &(a, ea)) in status.iter().enumerate() {
            for &(b, eb) in &status[x + 1..] {
                let (Some(na), Some(nb)) = (ea.node, eb.node) else { continue };
                if !timeline.concurrent(na, nb) {
                    continue;
                }
                if ea.kind != eb.kind {
                    contradictions.push((a, b));
                } else if ea.kind == EventKind::Settled && ea.text != eb.text {
                    agreements.push((a, b));
                }
            }
        }
        let mut out = Vec::new();
        for (field, pairs) in [("status", contradictions), ("agreement", agreements)] {
            for group in clusters(&pairs) {
                let members: Vec<usize> = group.iter().filter_map(|&e| events[e].node).collect();
                // A later lifecycle event that saw every side settles it.
                let resolved_by = status
                    .iter()
                    .filter_map(|(_, e)| e.node)
                    .find(|&c| members.iter().all(|&m| timeline.before(m, c)))
                    .map(|c| timeline.nodes[c].hash);
                let sides: Vec<ConflictSide> = group
                    .iter()
                    .filter_map(|&e| {
                        let ev = &events[e];
                        let detail = ev.text.clone().or_else(|| ev.level.clone());
                        Some(Self::node_side(timeline, ev.node?, ev.kind.code().to_owned(), detail))
                    })
                    .collect();
                // The derived status follows the side the list puts last (ADR 2).
                let shown = group.iter().max().map(|&e| {
                    let ev = &events[e];
                    if field == "agreement" { ev.text.clone().unwrap_or_default() } else { ev.kind.code().to_owned() }
                });
                out.push(AuditConflict {
                    kind: ConflictKind::Lifecycle,
                    field: field.to_owned(),
                    sides,
                    shown,
                    resolved_by,
                });
            }
        }
        out
    }

    /// The lifecycle events in list order: kind, the level an acceptance or
    /// escalation names, and the change that recorded each.
    pub fn lifecycle(&mut self, timeline: &Timeline) -> Vec<(EventKind, Option<String>, Option<Hash>)> {
        self.event_nodes(timeline, false)
            .into_iter()
            .map(|e| (e.kind, e.level, e.node.and_then(|n| timeline.nodes.get(n)).map(|n| n.hash)))
            .collect()
    }

    /// Sets one field of a party (`name`, `id_number`, `phone`) as one change;
    /// `fq audit resolve` settles a party field's conflict with it.
    pub fn set_party_field(
        &mut self,
        index: usize,
        key: &str,
        value: &str,
        author: &Author,
        at: Timestamp,
    ) -> Result<Hash, DocError> {
        let r = (|| {
            let parties = obj_at(&self.doc, &ROOT, "parties")?;
            let Ok(Some((Value::Object(ObjType::Map), party))) = self.doc.get(&parties, index) else {
                return Err(DocError::Malformed("no such party"));
            };
            self.doc.put(&party, key, value).map_err(|e| DocError::Automerge { op: "put", source: Box::new(e) })
        })();
        match r {
            Ok(()) => self
                .commit(author, &format!("edit:parties[{index}].{key}"), at)
                .ok_or(DocError::Malformed("empty change")),
            Err(e) => {
                self.doc.rollback();
                Err(e)
            }
        }
    }

    /// What change `i` of `timeline` did: every field it wrote with the
    /// values it replaced (several when it resolved a conflict) and the
    /// lifecycle events it recorded.
    pub fn effects(&mut self, timeline: &Timeline, i: usize) -> ChangeEffect {
        let Some(me) = timeline.nodes.get(i).map(|n| n.hash) else {
            return ChangeEffect { fields: Vec::new(), events: Vec::new() };
        };
        let before = timeline.deps_heads(i);
        let after = timeline.own_heads(i);
        let root = before.is_empty();
        let mut fields = Vec::new();
        let mut paths: Vec<(ObjId, &str, String)> =
            REGISTER_FIELDS.iter().map(|f| (ROOT, *f, (*f).to_owned())).collect();
        let mut added_parties = Vec::new();
        if let Ok(parties) = obj_at(&self.doc, &ROOT, "parties") {
            for p in 0..self.doc.length_at(&parties, &after) {
                let Ok(Some((_, obj))) = self.doc.get_at(&parties, p, &after) else { continue };
                if self.doc.hash_for_opid(&obj).is_some_and(|h| h.0 == me) {
                    added_parties.push((p, obj));
                } else {
                    for key in ["name", "id_number", "phone"] {
                        paths.push((obj.clone(), key, format!("parties[{p}].{key}")));
                    }
                }
            }
        }
        for (obj, key, field) in paths {
            let Ok(now) = self.doc.get_all_at(&obj, key, &after) else { continue };
            let Some((value, _)) = now.iter().find(|(_, id)| self.doc.hash_for_opid(id).is_some_and(|h| h.0 == me))
            else {
                continue;
            };
            let new = Some(value_text(value)).filter(|v| !v.is_empty());
            let old: Vec<(String, ObjId)> = if root {
                Vec::new()
            } else {
                match self.doc.get_all_at(&obj, key, &before) {
                    Ok(all) => all.into_iter().rev().map(|(v, id)| (value_text(&v), id)).collect(),
                    Err(_) => Vec::new(),
                }
            };
            let old: Vec<ConflictSide> =
                old.into_iter().filter(|(v, _)| !v.is_empty()).map(|(v, id)| self.side(v, None, &id)).collect();
            if old.is_empty() && new.is_none() {
                // An empty field set up by the first change: nothing to show.
                continue;
            }
            fields.push(FieldChange { field, old, new });
        }
        if let Ok(text) = obj_at(&self.doc, &ROOT, "description") {
            let was = if root { Ok(String::new()) } else { self.doc.text_at(&text, &before) };
            if let (Ok(was), Ok(is)) = (was, self.doc.text_at(&text, &after))
                && was != is
            {
                let old = if was.is_empty() {
                    Vec::new()
                } else {
                    vec![ConflictSide { value: was, detail: None, author: None, device: None, at: None, hash: None }]
                };
                fields.push(FieldChange { field: "description".into(), old, new: Some(is) });
            }
        }
        for (p, obj) in added_parties {
            let name = get_str(&self.doc, &obj, "name");
            fields.push(FieldChange { field: format!("parties[{p}]"), old: Vec::new(), new: name });
        }
        let events = self
            .event_nodes(timeline, false)
            .iter()
            .enumerate()
            .filter(|(_, e)| e.node == Some(i))
            .map(|(at, _)| at)
            .collect();
        ChangeEffect { fields, events }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::case::{AdminCode, CaseId, CaseNumber, Category, Level, Risk, Role};
    use crate::doc::{FieldEdit, NewCaseDoc, NewEvent, actor_for, parse_change};

    fn author(name: &str, role: Role) -> Author {
        Author { name: name.into(), role, id: None }
    }

    fn case() -> CaseDoc {
        let village = AdminCode::parse("532924101201").unwrap();
        let dev = DeviceId::from_bytes([1; 8]);
        let number = CaseNumber::new(&village, 2026, dev, 1);
        let new = NewCaseDoc {
            id: CaseId::random(),
            number: &number,
            village: &village,
            grid: None,
            category: Category::Neighbor,
            title: "宅基地滴水纠纷",
            description: "屋檐滴水落到邻居院内",
            parties: &[],
            risk: Risk::Low,
            flags: &[],
            level: Level::Village,
            recorded_at: Timestamp(1_000),
        };
        CaseDoc::create(&new, &author("张三", Role::Mediator), actor_for(dev, [1; 8]), Timestamp(1_000)).unwrap()
    }

    fn fork(d: &mut CaseDoc, device: u8) -> CaseDoc {
        CaseDoc::load(&d.save(), actor_for(DeviceId::from_bytes([device; 8]), [device; 8])).unwrap()
    }

    fn merge(into: &mut CaseDoc, from: &mut CaseDoc) {
        let changes = from.changes_after(&[]).into_iter().map(|(_, c)| parse_change(&c).unwrap()).collect();
        into.apply(changes).unwrap();
    }

    #[test]
    fn timeline_knows_what_was_concurrent() {
        let mut a = case();
        assert!(!a.timeline().has_concurrency());
        let mut b = fork(&mut a, 2);
        a.push_event(&NewEvent::Note("甲".into()), &author("张三", Role::Mediator), Timestamp(2_000)).unwrap();
        b.push_event(&NewEvent::Note("乙".into()), &author("李娜", Role::GridWorker), Timestamp(1_500)).unwrap();
        merge(&mut a, &mut b);
        let t = a.timeline();
        assert!(t.has_concurrency());
        assert_eq!(t.nodes.len(), 3);
        assert!(t.before(0, 1) && t.before(0, 2) && t.concurrent(1, 2));
        assert_eq!(a.open_conflict_count(), 0, "two notes do not conflict");
    }

    #[test]
    fn concurrent_description_edits_are_a_text_conflict_until_rewritten() {
        let mut a = case();
        let mut b = fork(&mut a, 2);
        let desc = |t: &str| FieldEdit { description: Some(t.into()), ..Default::default() };
        a.edit(&desc("屋檐滴水落到邻居院内，已协商"), &author("张三", Role::Mediator), Timestamp(2_000)).unwrap();
        b.edit(&desc("邻居院内积水严重"), &author("李娜", Role::GridWorker), Timestamp(2_100)).unwrap();
        merge(&mut a, &mut b);
        let t = a.timeline();
        let all = a.audit_conflicts(&t);
        let text: Vec<&AuditConflict> = all.iter().filter(|c| c.kind == ConflictKind::Text).collect();
        assert_eq!(text.len(), 1, "{all:#?}");
        let mut sides: Vec<&str> = text[0].sides.iter().map(|s| s.value.as_str()).collect();
        sides.sort_unstable();
        assert_eq!(sides, ["屋檐滴水落到邻居院内，已协商", "邻居院内积水严重"]);
        assert!(text[0].is_open());
        assert_eq!(a.open_conflict_count(), 1);
        // Someone who saw both writes the description again: resolved, and
        // the change shows the merged text it replaced.
        a.edit(&desc("双方同意加装接水槽"), &author("王县长", Role::CountyAdmin), Timestamp(3_000)).unwrap();
        let t = a.timeline();
        let text: Vec<AuditConflict> =
            a.audit_conflicts(&t).into_iter().filter(|c| c.kind == ConflictKind::Text).collect();
        assert_eq!(text.len(), 1);
        assert!(!text[0].is_open());
        assert_eq!(a.open_conflict_count(), 0);
        let last = t.nodes.len() - 1;
        let effect = a.effects(&t, last);
        assert_eq!(effect.fields[0].field, "description");
        assert_eq!(effect.fields[0].new.as_deref(), Some("双方同意加装接水槽"));
    }

    #[test]
    fn a_resolved_field_conflict_keeps_both_values_in_the_resolving_change() {
        let mut a = case();
        let mut b = fork(&mut a, 2);
        let title = |t: &str| FieldEdit { title: Some(t.into()), ..Default::default() };
        a.edit(&title("甲方案"), &author("张三", Role::Mediator), Timestamp(2_000)).unwrap();
        b.edit(&title("乙方案"), &author("李娜", Role::GridWorker), Timestamp(2_100)).unwrap();
        merge(&mut a, &mut b);
        assert_eq!(a.open_conflict_count(), 1);
        a.edit(&title("丙方案"), &author("王县长", Role::CountyAdmin), Timestamp(3_000)).unwrap();
        assert_eq!(a.open_conflict_count(), 0);
        let t = a.timeline();
        let effect = a.effects(&t, t.nodes.len() - 1);
        let f = &effect.fields[0];
        assert_eq!((f.field.as_str(), f.new.as_deref()), ("title", Some("丙方案")));
        let mut old: Vec<(String, String)> =
            f.old.iter().map(|s| (s.value.clone(), s.author.as_ref().unwrap().name.clone())).collect();
        old.sort();
        assert_eq!(old, [("乙方案".into(), "李娜".into()), ("甲方案".into(), "张三".into())]);
    }

    #[test]
    fn settled_in_the_village_while_escalated_is_a_lifecycle_conflict() {
        let mut a = case();
        let mut b = fork(&mut a, 2);
        a.push_event(&NewEvent::Settle("李四加装接水槽".into()), &author("张三", Role::Mediator), Timestamp(2_000))
            .unwrap();
        let up = NewEvent::Escalate { to: Level::Township, reason: "涉及宅基地界址".into(), rule: None };
        b.push_event(&up, &author("李娜", Role::GridWorker), Timestamp(2_100)).unwrap();
        merge(&mut a, &mut b);
        let t = a.timeline();
        let all = a.audit_conflicts(&t);
        let life: Vec<&AuditConflict> = all.iter().filter(|c| c.kind == ConflictKind::Lifecycle).collect();
        assert_eq!(life.len(), 1, "{all:#?}");
        assert_eq!(life[0].field, "status");
        let mut kinds: Vec<&str> = life[0].sides.iter().map(|s| s.value.as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["escalated", "settled"]);
        assert_eq!(a.open_conflict_count(), 1);
        // The township, having seen both, accepts the escalation.
        a.push_event(
            &NewEvent::AcceptEscalation { level: Level::Township },
            &author("赵乡长", Role::TownshipOfficer),
            Timestamp(3_000),
        )
        .unwrap();
        assert_eq!(a.open_conflict_count(), 0);
        let t = a.timeline();
        let effect = a.effects(&t, t.nodes.len() - 1);
        assert_eq!(effect.events.len(), 1);
    }
}
