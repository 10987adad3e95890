//! The county's roster of staff (花名册): who may be named as the person
//! responsible for a case, who recorded it, and who did each thing to it.
//!
//! Every grid worker, mediator, township officer and county admin has a stable
//! [`StaffId`] made of the division they work in and a number there
//! (`532924101201-03`), so the id alone says where a person works and two
//! people who share a name (common in a county) are still told apart.
//!
//! The roster reaches replicas with the county policy ([`crate::policy`]).
//! A replica without one (a standalone village device) keeps names as they
//! were typed; once a roster arrives, [`Roster::identify`] matches those names
//! to staff when reports and `todo` read them, so nothing typed offline is
//! lost or has to be re-entered.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::case::{AdminCode, InputError, Role};
use crate::county::County;

/// Longest staff id, in bytes (a 12-digit village code, a dash, 4 digits).
pub const MAX_STAFF_ID_BYTES: usize = 17;
/// Most staff a roster may list: a county has a few thousand (seed 002:
/// 1,570 grid workers and 1,861 mediators); more means a mistake or an attack.
pub const MAX_STAFF: usize = 20_000;

/// A person's stable id in the county roster: the division code they work
/// in, a dash, and their number there (`532924101201-03`, `532924101-01`,
/// `532924-01`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StaffId(String);

impl StaffId {
    /// The id of the `number`-th person (from 1) of a division.
    pub fn new(area: &AdminCode, number: u32) -> StaffId {
        StaffId(format!("{area}-{number:02}"))
    }

    /// Parses an id as typed: the division code and a number of 1 to 4 digits.
    pub fn parse(input: &str) -> Result<StaffId, InputError> {
        let bad = || InputError::Vocabulary { what: "staff id", input: input.to_owned() };
        let s = input.trim();
        let (area, number) = s.rsplit_once('-').ok_or_else(bad)?;
        let area = AdminCode::parse(area).map_err(|_| bad())?;
        if area.as_str() != s.split('-').next().unwrap_or_default()
            || number.is_empty()
            || number.len() > 4
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        Ok(StaffId(format!("{area}-{number}")))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The division the person works in.
    pub fn area(&self) -> Option<AdminCode> {
        AdminCode::parse(self.0.split('-').next()?).ok()
    }
}

impl fmt::Display for StaffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StaffId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for StaffId {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<StaffId> for String {
    fn from(id: StaffId) -> String {
        id.0
    }
}

/// One person of the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staff {
    /// Their stable id.
    pub id: StaffId,
    /// Their name as the county writes it.
    pub name: String,
    /// Their job.
    pub role: Role,
    /// Where they work: a village for grid workers and mediators, a township
    /// for township officers, the county for county admins.
    pub scope: AdminCode,
    /// The grid a grid worker walks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<u32>,
}

/// Why a roster was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// Two people share an id.
    #[error("staff id {0} is used twice")]
    DuplicateId(StaffId),
    /// A person's id does not name the division they work in.
    #[error("staff id {id} does not lie in {scope}, where the person works")]
    IdOutsideScope {
        /// The id.
        id: StaffId,
        /// Their division.
        scope: AdminCode,
    },
    /// A person's division is not at their role's level.
    #[error("{id} is a {role} but works in {scope}")]
    RoleScope {
        /// The id.
        id: StaffId,
        /// Their role.
        role: Role,
        /// Their division.
        scope: AdminCode,
    },
    /// A name that is empty, too long or holds control characters.
    #[error("the name of {0} is empty, too long or holds control characters")]
    BadName(StaffId),
    /// More people than [`MAX_STAFF`].
    #[error("the roster lists {0} people, more than {MAX_STAFF}")]
    TooMany(usize),
}

/// What a name or id typed by a user names in the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Exactly one person.
    One(&'a Staff),
    /// Several people share the name: the user must give an id.
    Several(Vec<&'a Staff>),
    /// Nobody.
    Nobody,
}

/// The county's staff, looked up by id and by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    staff: Vec<Staff>,
    by_id: BTreeMap<StaffId, usize>,
    by_name: BTreeMap<String, Vec<usize>>,
}

impl Roster {
    /// A roster of these people, checked: unique ids, each inside the
    /// division the person works in, each division at the role's level.
    pub fn new(staff: Vec<Staff>) -> Result<Roster, RosterError> {
        if staff.len() > MAX_STAFF {
            return Err(RosterError::TooMany(staff.len()));
        }
        let mut by_id = BTreeMap::new();
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, s) in staff.iter().enumerate() {
            if crate::case::check_line("name", &s.name, 50).map_or(true, |n| n != s.name) {
                return Err(RosterError::BadName(s.id.clone()));
            }
            if s.id.area().as_ref() != Some(&s.scope) {
                return Err(RosterError::IdOutsideScope { id: s.id.clone(), scope: s.scope.clone() });
            }
            if s.scope.level() != s.role.scope_level() {
                return Err(RosterError::RoleScope { id: s.id.clone(), role: s.role, scope: s.scope.clone() });
            }
            if by_id.insert(s.id.clone(), i).is_some() {
                return Err(RosterError::DuplicateId(s.id.clone()));
            }
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        Ok(Roster { staff, by_id, by_name })
    }

    /// Everyone in a county description: its admins, its townships'
    /// officers, and every village's grid workers and mediators.
    pub fn from_county(county: &County) -> Result<Roster, RosterError> {
        let mut staff = Vec::with_capacity(county.people_count() + county.admins.len());
        let person = |p: &crate::county::Person, scope: &AdminCode| Staff {
            id: p.id.clone(),
            name: p.name.clone(),
            role: p.role,
            scope: scope.clone(),
            grid: p.grid,
        };
        staff.extend(county.admins.iter().map(|p| person(p, &county.code)));
        for t in &county.townships {
            staff.extend(t.officers.iter().map(|p| person(p, &t.code)));
            for v in &t.villages {
                staff.extend(v.people.iter().map(|p| person(p, &v.code)));
            }
        }
        Roster::new(staff)
    }

    /// Everyone, in roster order.
    pub fn staff(&self) -> &[Staff] {
        &self.staff
    }

    /// Whether the roster lists nobody (no roster has arrived yet).
    pub fn is_empty(&self) -> bool {
        self.staff.is_empty()
    }

    /// How many people it lists.
    pub fn len(&self) -> usize {
        self.staff.len()
    }

    /// The person with this id.
    pub fn get(&self, id: &StaffId) -> Option<&Staff> {
        self.by_id.get(id).map(|&i| &self.staff[i])
    }

    /// Everyone with exactly this name.
    pub fn named(&self, name: &str) -> Vec<&Staff> {
        self.by_name.get(name.trim()).map(|v| v.iter().map(|&i| &self.staff[i]).collect()).unwrap_or_default()
    }

    /// What a user's input names: a staff id, or a name. A name that several
    /// people share is [`Lookup::Several`] even when one of them works
    /// nearby: people type whom they mean, and a wrong guess would pay the
    /// wrong person.
    pub fn lookup(&self, input: &str) -> Lookup<'_> {
        if let Ok(id) = StaffId::parse(input) {
            return self.get(&id).map_or(Lookup::Nobody, Lookup::One);
        }
        match self.named(input).as_slice() {
            [] => Lookup::Nobody,
            [one] => Lookup::One(one),
            several => Lookup::Several(several.to_vec()),
        }
    }

    /// The person a name or id written on a case in `village` stands for,
    /// when it can be told: an id of the roster; a name only one person in
    /// the roster has; or a name shared by several of whom exactly one works
    /// where the case is (its village, its township or the county, nearest
    /// first). Names typed on a device before the roster arrived are matched
    /// this way when they are read.
    pub fn identify(&self, written: &str, village: &str) -> Option<&Staff> {
        if let Ok(id) = StaffId::parse(written) {
            return self.get(&id);
        }
        let named = self.named(written);
        if named.len() <= 1 {
            return named.first().copied();
        }
        let levels = [12usize, 9, 6];
        for len in levels {
            let Some(area) = village.get(..len) else { continue };
            let here: Vec<&Staff> = named.iter().copied().filter(|s| s.scope.as_str() == area).collect();
            match here.as_slice() {
                [one] => return Some(one),
                [] => continue,
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn staff(id: &str, name: &str, role: Role) -> Staff {
        let id = StaffId::parse(id).unwrap();
        Staff { scope: id.area().unwrap(), id, name: name.into(), role, grid: None }
    }

    #[test]
    fn staff_id_parses_and_names_its_area() {
        let id = StaffId::parse(" 532924101201-03 ").unwrap();
        assert_eq!(id.as_str(), "532924101201-03");
        assert_eq!(id.area().unwrap().as_str(), "532924101201");
        assert_eq!(StaffId::new(&AdminCode::parse("532924").unwrap(), 1).as_str(), "532924-01");
        for bad in ["532924101201", "532924101201-", "532924101201-12345", "5329-01", "张三", "532924101201-0a"] {
            assert!(StaffId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roster_refuses_duplicates_and_ids_outside_their_area() {
        let a = staff("532924101201-01", "张三", Role::Mediator);
        assert!(matches!(Roster::new(vec![a.clone(), a.clone()]), Err(RosterError::DuplicateId(_))));
        let mut b = staff("532924101201-02", "李四", Role::Mediator);
        b.scope = AdminCode::parse("532924101202").unwrap();
        assert!(matches!(Roster::new(vec![b]), Err(RosterError::IdOutsideScope { .. })));
        let c = staff("532924101-01", "王五", Role::Mediator);
        assert!(matches!(Roster::new(vec![c]), Err(RosterError::RoleScope { .. })));
    }

    #[test]
    fn lookup_and_identify_tell_shared_names_apart() {
        let r = Roster::new(vec![
            staff("532924101201-01", "张三", Role::Mediator),
            staff("532924102201-01", "张三", Role::Mediator),
            staff("532924101-01", "李娜", Role::TownshipOfficer),
        ])
        .unwrap();
        assert!(matches!(r.lookup("张三"), Lookup::Several(v) if v.len() == 2));
        assert!(matches!(r.lookup("532924102201-01"), Lookup::One(s) if s.name == "张三"));
        assert!(matches!(r.lookup("李娜"), Lookup::One(_)));
        assert_eq!(r.lookup("王五"), Lookup::Nobody);
        assert_eq!(r.identify("张三", "532924102201").unwrap().id.as_str(), "532924102201-01");
        assert_eq!(r.identify("张三", "532924103201"), None, "two namesakes, neither nearby");
        assert_eq!(r.identify("李娜", "532924109201").unwrap().id.as_str(), "532924101-01");
        assert!(r.identify("532924101201-01", "532924999201").is_some(), "an id is an id anywhere");
    }

    #[test]
    fn binchuan_roster_has_an_id_for_everyone() {
        let county = County::binchuan();
        let r = Roster::from_county(&county).unwrap();
        assert_eq!(r.len(), county.people_count() + county.admins.len() + county.officer_count());
        assert!(r.staff().iter().any(|s| s.role == Role::TownshipOfficer));
        assert!(r.staff().iter().any(|s| s.role == Role::CountyAdmin));
    }
}
