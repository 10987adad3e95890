//! The monthly figures (月汇总) and the subsidy sheet (以案定补), computed from
//! the projected rows and events of a replica (`Store::scan`): no case
//! document is loaded, so a county of 100,000 cases is read in about a second.
//!
//! Every figure is defined once, here, and every replica computes it the
//! same way from the same data, so a county and its townships agree:
//!
//! - **new**: cases recorded in the month;
//! - **settled / failed / escalated**: cases with a settlement, a failure, an
//!   escalation (to any level) in the month, each case once;
//! - **settlement rate**: settled ÷ (settled + failed) in the month (0 when
//!   neither happened);
//! - **median days to settle**, per level: from the recording to the
//!   settlement, for the month's settlements at that level;
//! - **小事不出村 / 大事不出乡**: the share of the month's settlements made
//!   at the village, and at the village or the township;
//! - **overdue**: cases open at the end of the month (or now, for the
//!   current month) whose deadline under the policy in force had passed,
//!   replayed from their events as they stood then; **high risk**: high-risk
//!   cases open then;
//! - **follow-up compliance**: visits whose due date (settlement + the
//!   policy's days) fell in the month: made by the due date (on time), made
//!   later (late), not made (missed), waived; compliance = on time ÷ (due −
//!   waived); **relapses** in the month;
//! - **supervision**: orders given in the month, answers given in the month,
//!   and orders due in the month not answered by their due date;
//! - the same figures for the previous month, and the change.
//!
//! The subsidy sheet counts, per person, the distinct cases they recorded,
//! mediated (wrote a session note on), settled and followed up in the month.
//! Events live in the merged case documents, each once however many devices
//! and relays carried it, so the counts are exact on every replica. People
//! are matched to the roster by staff id, or by a name only one person in the
//! roster has (or only one near the case).
//!
//! Formats: [`Monthly`] and [`Subsidy`] serialize to the JSON of
//! `schemas/report-monthly.v1.schema.json` and `report-subsidy.v1.schema.json`;
//! [`html`] makes the one-file offline report with SVG charts, [`sheet`] the
//! xlsx workbook and the CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::case::{AdminCode, CaseId, Category, EventKind, InputError, Level, Risk, Role, Status};
use crate::clock::Timestamp;
use crate::ledger::{Ledger, LedgerError};
use crate::policy::{Policy, PolicyInForce};
use crate::store::{CaseRow, EventRow};

pub mod html;
pub mod sheet;

/// Milliseconds China Standard Time is ahead of UTC: months begin at local midnight.
const CST_MS: i64 = 8 * 3_600_000;

/// A calendar month in China Standard Time (`2026-10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    /// The month `year`-`month` (1 to 12).
    pub fn new(year: i32, month: u32) -> Option<Month> {
        ((1..=12).contains(&month) && (1970..=9999).contains(&year)).then_some(Month { year, month })
    }

    /// Parses `2026-10` (also `2026/10`, `2026.10`, `2026年10月`, full-width digits).
    pub fn parse(input: &str) -> Result<Month, InputError> {
        let bad = || InputError::Vocabulary { what: "month", input: input.to_owned() };
        let s: String = input
            .trim()
            .chars()
            .map(|c| match c {
                '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
                '年' | '/' | '.' => '-',
                '月' => ' ',
                other => other,
            })
            .collect();
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        let year = y.trim().parse::<i32>().map_err(|_| bad())?;
        let month = m.trim().parse::<u32>().map_err(|_| bad())?;
        Month::new(year, month).ok_or_else(bad)
    }

    /// The month `t` falls in, in China time.
    pub fn of(t: Timestamp) -> Month {
        let d = Timestamp(t.0 + CST_MS).to_utc().map(|d| (d.year(), d.month())).unwrap_or((1970, 1));
        Month { year: d.0, month: d.1 }
    }

    /// Its first instant: the 1st at 00:00 China time.
    pub fn start(self) -> Timestamp {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        Timestamp(date.map_or(0, |d| d.and_utc().timestamp_millis()) - CST_MS)
    }

    /// The first instant of the next month.
    pub fn end(self) -> Timestamp {
        self.next().start()
    }

    /// The month before.
    pub fn previous(self) -> Month {
        if self.month == 1 { Month { year: self.year - 1, month: 12 } } else { Month { month: self.month - 1, ..self } }
    }

    /// The month after.
    pub fn next(self) -> Month {
        if self.month == 12 { Month { year: self.year + 1, month: 1 } } else { Month { month: self.month + 1, ..self } }
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u32 {
        self.month
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The replica could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A chart could not be drawn.
    #[error("chart: {0}")]
    Chart(String),
    /// The workbook could not be written.
    #[error("xlsx: {0}")]
    Sheet(String),
    /// The JSON or CSV could not be written.
    #[error("{0}")]
    Encode(String),
}

/// Counts of one category or area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Recorded in the month.
    pub new: u32,
    /// Settled in the month.
    pub settled: u32,
    /// Failed in the month.
    pub failed: u32,
    /// Escalated in the month.
    pub escalated: u32,
}

/// One area of a report (townships of a county, villages of a township).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AreaFigures {
    /// Its code.
    pub code: String,
    /// Its name, if the county policy names it.
    pub name: Option<String>,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Overdue at the end of the month.
    pub overdue: u32,
}

/// Median days from recording to settlement, per level (`null`: no settlement there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Medians {
    /// Settled at the village.
    pub village: Option<f64>,
    /// Settled at the township.
    pub township: Option<f64>,
    /// Settled at the county.
    pub county: Option<f64>,
}

/// A case in a report's list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseLine {
    /// Its id.
    pub id: CaseId,
    /// Its number.
    pub number: String,
    /// Its title.
    pub title: String,
    /// Its village.
    pub village: String,
    /// Its category.
    pub category: Category,
    /// Its risk.
    pub risk: Risk,
    /// The level handling it then.
    pub level: Level,
    /// Its deadline then.
    pub deadline: Option<Timestamp>,
    /// Whole days past the deadline then (overdue list only).
    pub days_overdue: Option<i64>,
    /// The responsible person.
    pub responsible: Option<String>,
}

/// Follow-up visits whose due date fell in the month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FollowUps {
    /// Visits due.
    pub due: u32,
    /// Made by the due date.
    pub on_time: u32,
    /// Made after it.
    pub late: u32,
    /// Not made (by the end of the month).
    pub missed: u32,
    /// Waived (免予回访).
    pub waived: u32,
    /// On time ÷ (due − waived); `null` when nothing was due.
    pub compliance: Option<f64>,
    /// Relapses (反弹) reported in the month.
    pub relapses: u32,
}

/// Supervision (督办) in the month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Supervision {
    /// Orders given.
    pub supervised: u32,
    /// Answers given.
    pub answered: u32,
    /// Orders due in the month that were not answered by their due date.
    pub overdue_answers: u32,
}

/// The headline figures of a month, for the comparison with the previous one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The month.
    pub month: Month,
    /// New cases.
    pub new: u32,
    /// Settled.
    pub settled: u32,
    /// Failed.
    pub failed: u32,
    /// Escalated.
    pub escalated: u32,
    /// Settled ÷ (settled + failed).
    pub settlement_rate: f64,
    /// Overdue at its end.
    pub overdue: u32,
}

/// This month minus the previous one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// New cases.
    pub new: i64,
    /// Settled.
    pub settled: i64,
    /// Failed.
    pub failed: i64,
    /// Escalated.
    pub escalated: i64,
    /// Settlement rate (a difference of fractions).
    pub settlement_rate: f64,
    /// Overdue.
    pub overdue: i64,
}

/// The monthly report (月汇总、月研判).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Monthly {
    /// Always `monthly`.
    pub report: &'static str,
    /// The month.
    pub month: Month,
    /// The division reported on.
    pub scope: String,
    /// Its name, if the policy names it.
    pub scope_name: Option<String>,
    /// The instant the month's state is read at: its end, or now for the current month.
    pub as_of: Timestamp,
    /// When the report was made.
    pub generated_at: Timestamp,
    /// The county policy version deadlines and follow-ups were computed with.
    pub policy_version: u64,
    /// Cases recorded in the month.
    pub new: u32,
    /// Cases settled in the month.
    pub settled: u32,
    /// Cases whose mediation failed in the month.
    pub failed: u32,
    /// Cases escalated in the month.
    pub escalated: u32,
    /// Settled ÷ (settled + failed), 0 to 1 (0 when neither).
    pub settlement_rate: f64,
    /// Per category code, every category.
    pub by_category: BTreeMap<&'static str, Counts>,
    /// Per area one level below the scope.
    pub by_area: Vec<AreaFigures>,
    /// Median days to settle per level.
    pub median_days_to_settle: Medians,
    /// Share of the month's settlements made at the village (小事不出村).
    pub settled_in_village_share: f64,
    /// Share made at the village or the township (大事不出乡).
    pub settled_in_township_share: f64,
    /// Cases overdue at `as_of`.
    pub overdue: u32,
    /// Those cases, most overdue first.
    pub overdue_cases: Vec<CaseLine>,
    /// High-risk cases open at `as_of`.
    pub high_risk: u32,
    /// Those cases.
    pub high_risk_cases: Vec<CaseLine>,
    /// Follow-up visits due in the month, and relapses.
    pub follow_up: FollowUps,
    /// Supervision in the month.
    pub supervision: Supervision,
    /// The previous month's headline figures.
    pub previous: Summary,
    /// This month minus the previous.
    pub change: Change,
}

/// The cases one person counts for in a column of the subsidy sheet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PersonCases {
    /// Recorded.
    pub recorded: Vec<String>,
    /// Mediated (a session note).
    pub mediated: Vec<String>,
    /// Settled.
    pub settled: Vec<String>,
    /// Followed up.
    pub followed_up: Vec<String>,
}

/// One person of the subsidy sheet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonFigures {
    /// Their staff id, or the name as written when the roster cannot tell who it is.
    pub person: String,
    /// Whether `person` is a staff id of the roster.
    pub matched: bool,
    /// Their name.
    pub name: String,
    /// Their role, from the roster.
    pub role: Option<Role>,
    /// Where they work, from the roster.
    pub area: Option<String>,
    /// Distinct cases recorded in the month.
    pub recorded: u32,
    /// Distinct cases with a session note of theirs in the month.
    pub mediated: u32,
    /// Distinct cases they settled in the month.
    pub settled: u32,
    /// Distinct cases they visited for a follow-up in the month.
    pub followed_up: u32,
    /// The case numbers behind each count (only when one person is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cases: Option<PersonCases>,
}

/// The subsidy sheet (以案定补): per person, the cases handled in a month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subsidy {
    /// Always `subsidy`.
    pub report: &'static str,
    /// The month.
    pub month: Month,
    /// The division reported on.
    pub scope: String,
    /// Its name, if the policy names it.
    pub scope_name: Option<String>,
    /// The instant events are counted up to.
    pub as_of: Timestamp,
    /// When the sheet was made.
    pub generated_at: Timestamp,
    /// The county policy (roster) version people were matched with.
    pub policy_version: u64,
    /// Everyone who handled a case, staff ids first.
    pub people: Vec<PersonFigures>,
    /// The sums of the columns (a case handled by two people counts for each).
    pub totals: Totals,
}

/// Column sums of the subsidy sheet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Recorded.
    pub recorded: u32,
    /// Mediated.
    pub mediated: u32,
    /// Settled.
    pub settled: u32,
    /// Followed up.
    pub followed_up: u32,
}

/// A time window: `[start, end)`, read as it stood at `as_of`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Timestamp,
    end: Timestamp,
    as_of: Timestamp,
}

impl Window {
    fn of(month: Month, now: Timestamp) -> Window {
        let (start, end) = (month.start(), month.end());
        // The month's state is read at its last instant, or now if it is running.
        Window { start, end, as_of: Timestamp(now.0.min(end.0 - 1)) }
    }

    /// Whether an event at `t` falls in the window, as known at `as_of`.
    fn holds(&self, t: Timestamp) -> bool {
        t >= self.start && t < self.end && t <= self.as_of
    }
}

/// Where a case stood at an instant, replayed from its events.
struct Then {
    open: bool,
    level: Level,
    since: Timestamp,
}

fn state_at(row: &CaseRow, events: &[EventRow], t: Timestamp) -> Then {
    let mut status = Status::Recorded;
    let mut level = Level::Village;
    let mut since = row.recorded_at;
    for e in events.iter().filter(|e| e.at <= t) {
        match e.kind {
            EventKind::Recorded => {
                level = e.level.unwrap_or(level);
                since = e.at;
            }
            EventKind::Escalated => status = Status::Escalated,
            EventKind::EscalationAccepted => {
                level = e.level.unwrap_or(level);
                status = Status::Mediating;
                since = e.at;
            }
            EventKind::Settled => status = Status::Settled,
            EventKind::Failed => status = Status::Failed,
            EventKind::Relapsed => {
                status = Status::Mediating;
                since = e.at;
            }
            EventKind::Archived => status = Status::Archived,
            EventKind::Note if status == Status::Recorded => status = Status::Mediating,
            _ => {}
        }
    }
    Then { open: row.recorded_at <= t && status.is_open(), level, since }
}

/// Everything counted for one window.
#[derive(Default)]
struct Tally {
    new: u32,
    settled: u32,
    failed: u32,
    escalated: u32,
    by_category: BTreeMap<&'static str, Counts>,
    by_area: BTreeMap<String, (Counts, u32)>,
    settle_days: [Vec<f64>; 3],
    settled_at: [u32; 3],
    overdue: Vec<CaseLine>,
    high_risk: Vec<CaseLine>,
    follow_up: FollowUps,
    supervision: Supervision,
}

fn level_index(level: Level) -> usize {
    match level {
        Level::Village => 0,
        Level::Township => 1,
        _ => 2,
    }
}

fn line(row: &CaseRow, level: Level, deadline: Option<Timestamp>, days_overdue: Option<i64>) -> CaseLine {
    CaseLine {
        id: row.id,
        number: row.number.clone(),
        title: row.title.clone(),
        village: row.village.clone(),
        category: row.category,
        risk: row.risk,
        level,
        deadline,
        days_overdue,
        responsible: row.responsible.clone(),
    }
}

impl Tally {
    fn add(&mut self, row: &CaseRow, events: &[EventRow], w: &Window, policy: &Policy, area: &str) {
        let mut counts = Counts::default();
        if w.holds(row.recorded_at) {
            counts.new = 1;
        }
        // The month's last settlement decides the level it counts at.
        let settled = events.iter().rfind(|e| e.kind == EventKind::Settled && w.holds(e.at));
        if let Some(e) = settled {
            counts.settled = 1;
            let i = level_index(e.level.unwrap_or(Level::Village));
            self.settled_at[i] += 1;
            let days = (e.at.0 - row.recorded_at.0) as f64 / Timestamp::DAY_MS as f64;
            self.settle_days[i].push(days.max(0.0));
        }
        if events.iter().any(|e| e.kind == EventKind::Failed && w.holds(e.at)) {
            counts.failed = 1;
        }
        if events.iter().any(|e| e.kind == EventKind::Escalated && w.holds(e.at)) {
            counts.escalated = 1;
        }
        self.new += counts.new;
        self.settled += counts.settled;
        self.failed += counts.failed;
        self.escalated += counts.escalated;
        let c = self.by_category.entry(row.category.code()).or_default();
        add_counts(c, counts);
        let then = state_at(row, events, w.as_of);
        let mut overdue = 0;
        if then.open {
            let deadline = then.since.plus_days(policy.deadlines.days(then.level));
            if deadline < w.as_of {
                overdue = 1;
                let days = (w.as_of.0 - deadline.0) / Timestamp::DAY_MS;
                self.overdue.push(line(row, then.level, Some(deadline), Some(days)));
            }
            if row.risk == Risk::High {
                self.high_risk.push(line(row, then.level, Some(deadline), None));
            }
        }
        if counts != Counts::default() || overdue > 0 {
            let a = self.by_area.entry(area.to_owned()).or_default();
            add_counts(&mut a.0, counts);
            a.1 += overdue;
        }
        self.follow_ups(events, w, policy);
        self.supervise(events, w);
    }

    fn follow_ups(&mut self, events: &[EventRow], w: &Window, policy: &Policy) {
        let relapses = events.iter().filter(|e| e.kind == EventKind::Relapsed && w.holds(e.at)).count();
        self.follow_up.relapses += u32::try_from(relapses).unwrap_or(u32::MAX);
        // Each settlement's schedule: the visits after it (a relapse is a
        // visit that reopens the case and ends the schedule), and a waiver.
        let known: Vec<&EventRow> = events.iter().filter(|e| e.at <= w.as_of).collect();
        for (i, s) in known.iter().enumerate().filter(|(_, e)| e.kind == EventKind::Settled) {
            let mut visits = Vec::new();
            let mut waived = false;
            let mut reopened = None;
            for e in &known[i + 1..] {
                match e.kind {
                    EventKind::FollowUp => visits.push(e.at),
                    EventKind::Relapsed => {
                        visits.push(e.at);
                        reopened = Some(e.at);
                        break;
                    }
                    EventKind::FollowUpWaived => waived = true,
                    EventKind::Settled | EventKind::Failed => break,
                    _ => {}
                }
            }
            for (k, days) in policy.follow_up_days.iter().enumerate() {
                let due = s.at.plus_days(i64::from(*days));
                if !w.holds(due) {
                    continue;
                }
                match visits.get(k) {
                    Some(v) if *v <= due => self.follow_up.on_time += 1,
                    Some(_) => self.follow_up.late += 1,
                    // The case reopened before this visit fell due: none is owed.
                    None if reopened.is_some_and(|r| r <= due) => continue,
                    None if waived => self.follow_up.waived += 1,
                    None => self.follow_up.missed += 1,
                }
                self.follow_up.due += 1;
            }
        }
    }

    fn supervise(&mut self, events: &[EventRow], w: &Window) {
        for (i, e) in events.iter().enumerate() {
            match e.kind {
                EventKind::Supervised => {
                    if w.holds(e.at) {
                        self.supervision.supervised += 1;
                    }
                    let due = e.due.unwrap_or(e.at);
                    if w.holds(due) {
                        // Answered by its due date? The first answer after it.
                        let answer = events[i + 1..].iter().find(|r| r.kind == EventKind::Responded).map(|r| r.at);
                        if answer.is_none_or(|a| a > due) {
                            self.supervision.overdue_answers += 1;
                        }
                    }
                }
                EventKind::Responded if w.holds(e.at) => self.supervision.answered += 1,
                _ => {}
            }
        }
    }

    fn rate(&self) -> f64 {
        let concluded = self.settled + self.failed;
        if concluded == 0 { 0.0 } else { f64::from(self.settled) / f64::from(concluded) }
    }

    fn summary(&self, month: Month) -> Summary {
        Summary {
            month,
            new: self.new,
            settled: self.settled,
            failed: self.failed,
            escalated: self.escalated,
            settlement_rate: self.rate(),
            overdue: u32::try_from(self.overdue.len()).unwrap_or(u32::MAX),
        }
    }
}

fn add_counts(into: &mut Counts, c: Counts) {
    into.new += c.new;
    into.settled += c.settled;
    into.failed += c.failed;
    into.escalated += c.escalated;
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let m = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    Some((m * 10.0).round() / 10.0)
}

fn share(part: u32, whole: u32) -> f64 {
    if whole == 0 { 0.0 } else { f64::from(part) / f64::from(whole) }
}

/// The code of the area one level below `scope` that `village` lies in.
fn area_of(village: &str, scope: &AdminCode) -> String {
    let len = match scope.as_str().len() {
        6 => 9,
        _ => 12,
    };
    village.get(..len).unwrap_or(village).to_owned()
}

/// The change of a rate (a fraction) from one month to the next, for people:
/// in percentage points, which a "%" would misstate (`+12.8个百分点`,
/// `+12.8 points`).
pub fn rate_change_text(change: f64, lang: crate::lang::Lang) -> String {
    let points = change * 100.0;
    match lang {
        crate::lang::Lang::Zh => format!("{points:+.1}个百分点"),
        crate::lang::Lang::En => format!("{points:+.1} points"),
    }
}

/// The monthly report of `scope` (the replica's own by default) for `month`,
/// read as it stood at the month's end (or `now`, while it runs).
pub fn monthly(
    ledger: &Ledger,
    month: Month,
    scope: Option<&AdminCode>,
    now: Timestamp,
) -> Result<Monthly, LedgerError> {
    let scope = scope.cloned().unwrap_or_else(|| ledger.identity().scope.clone());
    let in_force: &PolicyInForce = ledger.policy();
    let policy = in_force.policy();
    let this = Window::of(month, now);
    let before = Window::of(month.previous(), now);
    let mut cur = Tally::default();
    let mut prev = Tally::default();
    ledger.scan(&scope, |row, events| {
        let area = area_of(&row.village, &scope);
        cur.add(row, events, &this, policy, &area);
        prev.add(row, events, &before, policy, &area);
    })?;
    let mut by_category = BTreeMap::new();
    for c in Category::ALL {
        by_category.insert(c.code(), cur.by_category.get(c.code()).copied().unwrap_or_default());
    }
    let by_area = std::mem::take(&mut cur.by_area)
        .into_iter()
        .map(|(code, (counts, overdue))| AreaFigures {
            name: in_force.area_name(&code).map(str::to_owned),
            code,
            counts,
            overdue,
        })
        .collect();
    let [mut v, mut t, mut c] = std::mem::take(&mut cur.settle_days);
    let medians = Medians { village: median(&mut v), township: median(&mut t), county: median(&mut c) };
    let [at_village, at_township, _] = cur.settled_at;
    let now_summary = cur.summary(month);
    let previous = prev.summary(month.previous());
    let mut overdue_cases = std::mem::take(&mut cur.overdue);
    overdue_cases.sort_by(|a, b| b.days_overdue.cmp(&a.days_overdue).then_with(|| a.number.cmp(&b.number)));
    let mut high_risk_cases = std::mem::take(&mut cur.high_risk);
    high_risk_cases.sort_by(|a, b| a.deadline.cmp(&b.deadline).then_with(|| a.number.cmp(&b.number)));
    let mut follow_up = cur.follow_up;
    let owed = follow_up.due - follow_up.waived;
    follow_up.compliance = (owed > 0).then(|| f64::from(follow_up.on_time) / f64::from(owed));
    let diff = |a: u32, b: u32| i64::from(a) - i64::from(b);
    Ok(Monthly {
        report: "monthly",
        month,
        scope_name: in_force.area_name(scope.as_str()).map(str::to_owned),
        scope: scope.to_string(),
        as_of: this.as_of,
        generated_at: now,
        policy_version: in_force.version(),
        new: cur.new,
        settled: cur.settled,
        failed: cur.failed,
        escalated: cur.escalated,
        settlement_rate: cur.rate(),
        by_category,
        by_area,
        median_days_to_settle: medians,
        settled_in_village_share: share(at_village, cur.settled),
        settled_in_township_share: share(at_village + at_township, cur.settled),
        overdue: now_summary.overdue,
        overdue_cases,
        high_risk: u32::try_from(high_risk_cases.len()).unwrap_or(u32::MAX),
        high_risk_cases,
        follow_up,
        supervision: cur.supervision,
        change: Change {
            new: diff(now_summary.new, previous.new),
            settled: diff(now_summary.settled, previous.settled),
            failed: diff(now_summary.failed, previous.failed),
            escalated: diff(now_summary.escalated, previous.escalated),
            settlement_rate: now_summary.settlement_rate - previous.settlement_rate,
            overdue: diff(now_summary.overdue, previous.overdue),
        },
        previous,
    })
}

/// Distinct case numbers per column for one person.
#[derive(Default)]
struct Columns {
    recorded: BTreeSet<String>,
    mediated: BTreeSet<String>,
    settled: BTreeSet<String>,
    followed_up: BTreeSet<String>,
}

/// The subsidy sheet of `scope` for `month`; with `person` (a staff id or
/// a name), only that person, with the cases behind each count.
pub fn subsidy(
    ledger: &Ledger,
    month: Month,
    scope: Option<&AdminCode>,
    person: Option<&str>,
    now: Timestamp,
) -> Result<Subsidy, LedgerError> {
    let scope = scope.cloned().unwrap_or_else(|| ledger.identity().scope.clone());
    let in_force = ledger.policy();
    let roster = in_force.roster();
    let w = Window::of(month, now);
    let mut people: BTreeMap<(bool, String), (String, Columns)> = BTreeMap::new();
    ledger.scan(&scope, |row, events| {
        for e in events.iter().filter(|e| w.holds(e.at)) {
            let Some(written) = e.person.as_deref() else { continue };
            let (matched, key, name) = match roster.identify(written, &row.village) {
                Some(s) => (true, s.id.to_string(), s.name.clone()),
                None => (false, written.to_owned(), written.to_owned()),
            };
            let entry = people.entry((!matched, key)).or_insert_with(|| (name, Columns::default()));
            let column = match e.kind {
                EventKind::Recorded => &mut entry.1.recorded,
                EventKind::Note => &mut entry.1.mediated,
                EventKind::Settled => &mut entry.1.settled,
                EventKind::FollowUp | EventKind::Relapsed => &mut entry.1.followed_up,
                _ => continue,
            };
            column.insert(row.number.clone());
        }
    })?;
    let wanted = person.map(|p| match roster.lookup(p) {
        crate::roster::Lookup::One(s) => s.id.to_string(),
        _ => p.trim().to_owned(),
    });
    let n = |s: &BTreeSet<String>| u32::try_from(s.len()).unwrap_or(u32::MAX);
    let mut totals = Totals::default();
    let mut out = Vec::new();
    for ((unmatched, key), (name, cols)) in people {
        if wanted.as_ref().is_some_and(|w| w != &key && w != &name) {
            continue;
        }
        let staff =
            if unmatched { None } else { crate::roster::StaffId::parse(&key).ok().and_then(|id| roster.get(&id)) };
        let figures = PersonFigures {
            matched: !unmatched,
            name,
            role: staff.map(|s| s.role),
            area: staff.map(|s| s.scope.to_string()),
            recorded: n(&cols.recorded),
            mediated: n(&cols.mediated),
            settled: n(&cols.settled),
            followed_up: n(&cols.followed_up),
            cases: wanted.is_some().then(|| PersonCases {
                recorded: cols.recorded.iter().cloned().collect(),
                mediated: cols.mediated.iter().cloned().collect(),
                settled: cols.settled.iter().cloned().collect(),
                followed_up: cols.followed_up.iter().cloned().collect(),
            }),
            person: key,
        };
        totals.recorded += figures.recorded;
        totals.mediated += figures.mediated;
        totals.settled += figures.settled;
        totals.followed_up += figures.followed_up;
        out.push(figures);
    }
    Ok(Subsidy {
        report: "subsidy",
        month,
        scope_name: in_force.area_name(scope.as_str()).map(str::to_owned),
        scope: scope.to_string(),
        as_of: w.as_of,
        generated_at: now,
        policy_version: in_force.version(),
        people: out,
        totals,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn month_parses_as_typed_and_starts_at_midnight_in_china() {
        for s in ["2026-10", " 2026/10 ", "2026年10月", "２０２６-１０", "2026.10"] {
            assert_eq!(Month::parse(s).unwrap(), Month::new(2026, 10).unwrap(), "{s}");
        }
        for bad in ["2026-13", "2026", "10-2026x", "", "2026-0"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        let m = Month::new(2026, 10).unwrap();
        // 2026-10-01T00:00+08:00 is 2026-09-30T16:00Z.
        assert_eq!(m.start().to_rfc3339(), "2026-09-30T16:00:00.000Z");
        assert_eq!(m.end(), Month::new(2026, 11).unwrap().start());
        assert_eq!(Month::new(2026, 1).unwrap().previous(), Month::new(2025, 12).unwrap());
        assert_eq!(Month::of(Timestamp(m.start().0 - 1)), Month::new(2026, 9).unwrap());
        assert_eq!(Month::of(m.start()), m);
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
