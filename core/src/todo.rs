//! `fq todo`: the day's work of whoever holds this replica, in order.
//!
//! 1. overdue cases (a village case past its village deadline is flagged for
//!    escalation, as the county policy says);
//! 2. cases due within [`DUE_SOON_DAYS`] days;
//! 3. follow-up visits due (the policy's schedule after a settlement), or due
//!    within those days;
//! 4. escalations waiting for this replica's level to accept them;
//! 5. supervision orders (督办) waiting for an answer;
//!
//! each case once, in the first group it belongs to, high risk first within
//! a group, then the nearest date. A case with an open supervision order is
//! tagged wherever it stands.
//!
//! On a device it covers the cases its user recorded or is responsible for,
//! and the cases of the device's area that nobody is responsible for; the
//! escalations of group 4 are the whole area's. On a township or county
//! replica it covers the whole area (or the part asked for).
//!
//! Read from projected rows only (`Store::attention`): no document is loaded.
//! "Now" is the replica's corrected time ([`Ledger::now`]); [`Todo::time`]
//! says which clock it came from.

use serde::Serialize;

use crate::case::{AdminCode, Level, Risk, Status};
use crate::clock::Timestamp;
use crate::ledger::{Ledger, LedgerError, Tier, TimeSource};
use crate::store::CaseRow;

/// "Due soon" means within this many days.
pub const DUE_SOON_DAYS: i64 = 3;

/// The groups of the list, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Open and past its deadline.
    Overdue,
    /// Open and due within [`DUE_SOON_DAYS`] days.
    DueSoon,
    /// A follow-up visit due (or due within those days).
    FollowUp,
    /// Escalated to this level, waiting to be accepted.
    Accept,
    /// A supervision order waiting for an answer.
    Supervision,
}

/// Something worth knowing about an item besides its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tag {
    /// A village case past its village deadline: the policy flags it for escalation.
    EscalateNow,
    /// Escalated to this replica's level and not yet accepted.
    WaitingForYou,
    /// A supervision order is open on it.
    Supervised,
}

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// Its group.
    pub group: Group,
    /// The date that puts it there: the deadline, the visit's due date, or
    /// the supervision order's.
    pub due: Option<Timestamp>,
    /// Which follow-up visit is due (1 for the first), for group 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visit: Option<u32>,
    /// What else to know.
    pub tags: Vec<Tag>,
    /// The case.
    pub case: CaseRow,
}

/// The list, and what it was computed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Todo {
    /// The time it was computed for.
    pub now: Timestamp,
    /// Where that time came from (a device clock found off at its last sync is corrected).
    pub time: TimeSource,
    /// The area covered.
    pub scope: AdminCode,
    /// The level whose escalations are listed (group 4).
    pub level: Level,
    /// Whether the list is one person's (a device) or the whole area's (a server).
    pub personal: bool,
    /// Whose list it is, on a device.
    pub user: Option<String>,
    /// The county policy version deadlines and visits come from.
    pub policy_version: u64,
    /// The work, in order.
    pub items: Vec<Item>,
}

/// The day's work on `ledger`, optionally narrowed to `scope` (which must
/// lie inside the replica's).
pub fn todo(ledger: &Ledger, scope: Option<&AdminCode>) -> Result<Todo, LedgerError> {
    let id = ledger.identity();
    let scope = match scope {
        Some(s) if id.scope.contains(s) => s.clone(),
        Some(s) => {
            return Err(LedgerError::OutOfScope { what: "area", code: s.to_string(), scope: id.scope.to_string() });
        }
        None => id.scope.clone(),
    };
    let level = match id.tier {
        Tier::County => Level::County,
        Tier::Township => Level::Township,
        Tier::Device => id.role.level(),
    };
    let personal = id.tier == Tier::Device;
    let operator = ledger.operator();
    let (name, staff) = (operator.name.clone(), operator.id.as_ref().map(|s| s.to_string()));
    let mine = |r: &CaseRow| {
        !personal
            || r.responsible.is_none()
            || r.responsible.as_deref() == Some(name.as_str())
            || r.recorded_by == name
            || staff.as_deref().is_some_and(|s| r.recorded_by == s || r.responsible_id.as_deref() == Some(s))
    };
    let now = ledger.now();
    let soon = now.plus_days(DUE_SOON_DAYS);
    let policy = ledger.policy().policy();
    let mut items = Vec::new();
    for row in ledger.attention(&scope, soon, level)? {
        let mut tags = Vec::new();
        let waiting = row.status == Status::Escalated && row.escalated_to == Some(level);
        if waiting {
            tags.push(Tag::WaitingForYou);
        }
        if row.supervised_due.is_some() {
            tags.push(Tag::Supervised);
        }
        let open = row.status.is_open();
        let deadline = row.deadline.filter(|_| open);
        let visit =
            (row.status == Status::Settled && !row.follow_ups_waived).then_some(row.settled_at).flatten().and_then(
                |s| policy.follow_up_days.get(usize::try_from(row.visits).ok()?).map(|d| s.plus_days(i64::from(*d))),
            );
        let placed = if mine(&row) {
            match (deadline, visit) {
                (Some(d), _) if d < now => Some((Group::Overdue, Some(d))),
                (Some(d), _) if d < soon => Some((Group::DueSoon, Some(d))),
                (_, Some(v)) if v < soon => Some((Group::FollowUp, Some(v))),
                _ => None,
            }
        } else {
            None
        };
        let placed = placed
            .or_else(|| waiting.then_some((Group::Accept, deadline)))
            .or_else(|| row.supervised_due.filter(|_| mine(&row)).map(|d| (Group::Supervision, Some(d))));
        let Some((group, due)) = placed else { continue };
        if group == Group::Overdue
            && policy.routing.flag_overdue_village
            && row.level == Level::Village
            && row.status != Status::Escalated
        {
            tags.insert(0, Tag::EscalateNow);
        }
        let visit = (group == Group::FollowUp).then_some(row.visits + 1);
        items.push(Item { group, due, visit, tags, case: row });
    }
    items.sort_by(|a, b| {
        (a.group, a.case.risk != Risk::High, a.due, &a.case.number).cmp(&(
            b.group,
            b.case.risk != Risk::High,
            b.due,
            &b.case.number,
        ))
    });
    Ok(Todo {
        now,
        time: ledger.time_source(),
        scope,
        level,
        personal,
        user: personal.then(|| name.clone()),
        policy_version: ledger.policy().version(),
        items,
    })
}
