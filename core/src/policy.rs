//! The county policy (县级政策): deadlines per level (限时办结), the
//! follow-up schedule after a settlement (回访), and routing rules (分流),
//! with the county roster beside it.
//!
//! The county admin writes the policy as a small TOML file ([`Policy::parse`]);
//! the county CA signs it with a version that only grows ([`SignedPolicy::sign`]),
//! and it travels down the tree inside sync sessions (a `Policy` frame after
//! the hellos, `docs/PROTOCOL.md`), so it reaches every township and every
//! device, over any transport. Every replica computes with the newest policy
//! it holds; until one arrives, with [`Policy::default`].
//!
//! # Signed encoding, version 1
//!
//! Canonical: one signed policy has exactly one encoding, and
//! [`SignedPolicy::decode`] refuses any other (it re-encodes what it parsed
//! and compares). Integers are big-endian; a `short` string is a one-byte
//! length and that many bytes of UTF-8; `long` text is a four-byte length.
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `fqP1` |
//! | 1 + 6 | `county`: the county code |
//! | 8 | `version`: u64, at least 1 |
//! | 8 | `issued_at`: i64, ms since the epoch |
//! | 4 + n | `text`: the policy's TOML, at most [`MAX_POLICY_TEXT_BYTES`] |
//! | 4 | `staff` count, at most [`MAX_STAFF`] |
//! | … | each: `id` short, `name` short, `role` u8 (1 grid worker, 2 mediator, 3 township officer, 4 county admin), `scope` short, `grid` u16 (0: none) |
//! | 4 | `areas` count, at most [`MAX_AREAS`] |
//! | … | each: `code` short, `name` short: the names of the county, its townships and villages, for reports |
//! | 64 | Ed25519 signature by the county CA over `b"fq policy v1\0"` and every byte above |
//!
//! # Invariants
//! - A [`SignedPolicy`] made by [`SignedPolicy::sign`] or
//!   [`SignedPolicy::decode`] holds a policy text that parses, a roster that
//!   [`Roster::new`] accepts, and the CA's signature over exactly those bytes.
//! - No input makes [`SignedPolicy::decode`] or [`Policy::parse`] panic, and
//!   nothing is allocated from a claimed size before it is checked against
//!   the bytes that are there.

use std::fmt::Write as _;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::case::{AdminCode, AdminLevel, Category, Level, Risk, RiskFlag, Role};
use crate::clock::Timestamp;
use crate::roster::{MAX_STAFF, Roster, RosterError, Staff, StaffId};

/// Version of the JSON file form of a signed policy.
pub const POLICY_FORMAT: u32 = 1;
/// Longest policy text (TOML), in bytes: a real one is under a kilobyte.
pub const MAX_POLICY_TEXT_BYTES: usize = 64 * 1024;
/// Largest signed policy, roster included, in bytes: it must fit one sync
/// frame (1 MiB) with room to spare. A county of 3,500 staff takes ~160 KB.
pub const MAX_POLICY_BYTES: usize = 768 * 1024;
/// The most follow-up visits a policy may schedule after one settlement.
pub const MAX_FOLLOW_UPS: usize = 6;
/// The longest deadline or follow-up delay a policy may set, in days.
pub const MAX_POLICY_DAYS: u32 = 365;
/// Most named divisions a policy may carry (a county has a few hundred).
pub const MAX_AREAS: usize = 5_000;

/// A division's name, as the county writes it (宾居镇), for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    /// Its code.
    pub code: AdminCode,
    /// Its name.
    pub name: String,
}

/// The names of a county's divisions: the county, its townships and villages.
pub fn areas_of(county: &crate::county::County) -> Vec<Area> {
    let mut out = vec![Area { code: county.code.clone(), name: county.name.clone() }];
    for t in &county.townships {
        out.push(Area { code: t.code.clone(), name: t.name.clone() });
        out.extend(t.villages.iter().map(|v| Area { code: v.code.clone(), name: v.name.clone() }));
    }
    out
}

const MAGIC: &[u8; 4] = b"fqP1";
/// Domain separation: a policy signature can never pass for a grant's or a
/// revocation list's, though the same CA key makes all three.
const CONTEXT: &[u8] = b"fq policy v1\0";
const SIGNATURE_BYTES: usize = 64;

/// Why a policy text or a signed policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The TOML does not parse, has an unknown key, or a value of the wrong type.
    #[error("policy text does not parse: {0}")]
    Toml(String),
    /// A value is out of range (a deadline of 0 days, visits out of order...).
    #[error("policy value {key} is invalid: {reason}")]
    Value {
        /// The key, e.g. `deadlines.village`.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The signed bytes are longer than [`MAX_POLICY_BYTES`] (or the text than
    /// [`MAX_POLICY_TEXT_BYTES`]).
    #[error("signed policy is {0} bytes, more than allowed")]
    TooLarge(usize),
    /// The bytes are not a signed policy (bad magic, truncated, trailing
    /// bytes, a field out of range, a non-canonical encoding).
    #[error("signed policy is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with the county CA's key: forged,
    /// altered, or signed by another county.
    #[error("policy version {version} is not signed by the county ca")]
    BadSignature {
        /// The version it claims.
        version: u64,
    },
    /// The roster inside is inconsistent.
    #[error("policy roster: {0}")]
    Roster(#[from] RosterError),
    /// The JSON file form does not parse.
    #[error("policy file is not valid: {0}")]
    Json(String),
}

/// Days a level has to settle a case (限时办结).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// Days a village has (default 15).
    pub village: u32,
    /// Days a township has (default 30).
    pub township: u32,
    /// Days the county has (default 60).
    pub county: u32,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { village: 15, township: 30, county: 60 }
    }
}

impl Deadlines {
    /// The days `level` has.
    pub fn days(&self, level: Level) -> i64 {
        i64::from(match level {
            Level::Village => self.village,
            Level::Township => self.township,
            _ => self.county,
        })
    }
}

/// How the county routes cases (分流).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routing {
    /// A high-risk case recorded (or found high risk) at the village goes to
    /// the township at once.
    pub high_risk_to_township: bool,
    /// Cases carrying any of these flags go to the township at once
    /// (default: 民转刑).
    pub flags_to_township: Vec<RiskFlag>,
    /// A village case past its village deadline is flagged for escalation.
    pub flag_overdue_village: bool,
    /// Cases of these categories start at the township level.
    pub township_categories: Vec<Category>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            high_risk_to_township: true,
            flags_to_township: vec![RiskFlag::CriminalRisk],
            flag_overdue_village: true,
            township_categories: Vec::new(),
        }
    }
}

/// Why a case goes to the township at once, by policy: stored in the
/// escalation event, so every replica shows the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRule {
    /// It is high risk.
    HighRisk,
    /// It carries this flag.
    Flag(RiskFlag),
}

impl RouteRule {
    /// The code kept in the event (`high-risk`, `flag:criminal-risk`).
    pub fn code(self) -> String {
        match self {
            RouteRule::HighRisk => "high-risk".to_owned(),
            RouteRule::Flag(f) => format!("flag:{}", f.code()),
        }
    }

    /// Reads a code kept in an event.
    pub fn parse(code: &str) -> Option<RouteRule> {
        match code.strip_prefix("flag:") {
            Some(flag) => RiskFlag::parse(flag).ok().map(RouteRule::Flag),
            None => (code == "high-risk").then_some(RouteRule::HighRisk),
        }
    }
}

impl Routing {
    /// The rule that sends a village case with this risk and these flags to
    /// the township at once, if any.
    pub fn rule_for(&self, risk: Risk, flags: &[RiskFlag]) -> Option<RouteRule> {
        if self.high_risk_to_township && risk == Risk::High {
            return Some(RouteRule::HighRisk);
        }
        flags.iter().find(|f| self.flags_to_township.contains(f)).map(|f| RouteRule::Flag(*f))
    }

    /// The level a new case of `category` starts at, when recorded at `level`.
    pub fn start_level(&self, category: Category, level: Level) -> Level {
        if level == Level::Village && self.township_categories.contains(&category) { Level::Township } else { level }
    }
}

/// The county policy: what every replica computes deadlines, follow-ups and
/// routing with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Days per level.
    pub deadlines: Deadlines,
    /// Days after a settlement on which follow-up visits are due (default 7 and 30).
    pub follow_up_days: Vec<u32>,
    /// Routing rules.
    pub routing: Routing,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { deadlines: Deadlines::default(), follow_up_days: vec![7, 30], routing: Routing::default() }
    }
}

/// The TOML as written, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    deadlines: Option<DeadlinesFile>,
    follow_up: Option<FollowUpFile>,
    routing: Option<RoutingFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadlinesFile {
    village: Option<u32>,
    township: Option<u32>,
    county: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowUpFile {
    days: Option<Vec<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    high_risk_to_township: Option<bool>,
    flags_to_township: Option<Vec<RiskFlag>>,
    flag_overdue_village: Option<bool>,
    township_categories: Option<Vec<Category>>,
}

impl Policy {
    /// Parses a policy file. Every key may be left out (it keeps its
    /// default); an unknown key is an error, so a typo never silently falls
    /// back to a default.
    ///
    /// ```
    /// let p = fq_core::policy::Policy::parse("[deadlines]\nvillage = 10\n[follow_up]\ndays = [3, 14, 60]\n")?;
    /// assert_eq!((p.deadlines.village, p.deadlines.township), (10, 30));
    /// assert_eq!(p.follow_up_days, [3, 14, 60]);
    /// # Ok::<(), fq_core::policy::PolicyError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_TEXT_BYTES {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Toml(one_line(&e.to_string())))?;
        let mut p = Policy::default();
        if let Some(d) = file.deadlines {
            p.deadlines.village = d.village.unwrap_or(p.deadlines.village);
            p.deadlines.township = d.township.unwrap_or(p.deadlines.township);
            p.deadlines.county = d.county.unwrap_or(p.deadlines.county);
        }
        if let Some(days) = file.follow_up.and_then(|f| f.days) {
            p.follow_up_days = days;
        }
        if let Some(r) = file.routing {
            let d = Routing::default();
            p.routing = Routing {
                high_risk_to_township: r.high_risk_to_township.unwrap_or(d.high_risk_to_township),
                flags_to_township: r.flags_to_township.unwrap_or(d.flags_to_township),
                flag_overdue_village: r.flag_overdue_village.unwrap_or(d.flag_overdue_village),
                township_categories: r.township_categories.unwrap_or(d.township_categories),
            };
        }
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), PolicyError> {
        let day = |key, v: u32| {
            if v == 0 || v > MAX_POLICY_DAYS {
                Err(PolicyError::Value { key, reason: "days must be 1 to 365" })
            } else {
                Ok(())
            }
        };
        day("deadlines.village", self.deadlines.village)?;
        day("deadlines.township", self.deadlines.township)?;
        day("deadlines.county", self.deadlines.county)?;
        if self.follow_up_days.len() > MAX_FOLLOW_UPS {
            return Err(PolicyError::Value { key: "follow_up.days", reason: "at most 6 visits" });
        }
        for d in &self.follow_up_days {
            day("follow_up.days", *d)?;
        }
        if self.follow_up_days.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PolicyError::Value { key: "follow_up.days", reason: "visits must be in increasing order" });
        }
        Ok(())
    }

    /// The policy as a TOML file, with every key: what `fq policy show`
    /// offers as a starting point for the next version.
    pub fn to_toml(&self) -> String {
        let list = |v: Vec<&str>| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let days: Vec<String> = self.follow_up_days.iter().map(u32::to_string).collect();
        let mut out = String::new();
        let _ = write!(
            out,
            "[deadlines]\nvillage = {}\ntownship = {}\ncounty = {}\n\n[follow_up]\ndays = [{}]\n\n[routing]\n\
             high_risk_to_township = {}\nflags_to_township = [{}]\nflag_overdue_village = {}\ntownship_categories = [{}]\n",
            self.deadlines.village,
            self.deadlines.township,
            self.deadlines.county,
            days.join(", "),
            self.routing.high_risk_to_township,
            list(self.routing.flags_to_township.iter().map(|f| f.code()).collect()),
            self.routing.flag_overdue_village,
            list(self.routing.township_categories.iter().map(|c| c.code()).collect()),
        );
        out
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A policy and roster signed by the county CA, with a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    county: AdminCode,
    version: u64,
    issued_at: Timestamp,
    text: String,
    roster: Vec<Staff>,
    areas: Vec<Area>,
    signature: [u8; SIGNATURE_BYTES],
    policy: Policy,
    bytes: Vec<u8>,
}

impl SignedPolicy {
    /// Signs a policy text, roster and division names with the CA key. The
    /// text must parse and the roster be consistent: the CA never signs what
    /// replicas would refuse.
    pub fn sign(
        county: &AdminCode,
        version: u64,
        issued_at: Timestamp,
        text: &str,
        roster: Vec<Staff>,
        areas: Vec<Area>,
        ca_key: &SigningKey,
    ) -> Result<SignedPolicy, PolicyError> {
        if county.level() != AdminLevel::County {
            return Err(PolicyError::Malformed("county code"));
        }
        if version == 0 {
            return Err(PolicyError::Malformed("version 0 is the built-in default"));
        }
        let policy = Policy::parse(text)?;
        Roster::new(roster.clone())?;
        check_areas(county, &areas)?;
        let body = encode_body(county, version, issued_at, text, &roster, &areas)?;
        let signature = ca_key.sign(&signed_message(&body)).to_bytes();
        let mut bytes = body;
        bytes.extend_from_slice(&signature);
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(bytes.len()));
        }
        Ok(SignedPolicy {
            county: county.clone(),
            version,
            issued_at,
            text: text.to_owned(),
            roster,
            areas,
            signature,
            policy,
            bytes,
        })
    }

    /// Reads signed bytes and checks the CA's signature. Anything that fails
    /// is to be refused, whoever sent it.
    pub fn decode(bytes: &[u8], ca: &VerifyingKey) -> Result<SignedPolicy, PolicyError> {
        let p = Self::decode_unverified(bytes)?;
        let body = &bytes[..bytes.len() - SIGNATURE_BYTES];
        ca.verify_strict(&signed_message(body), &Signature::from_bytes(&p.signature))
            .map_err(|_| PolicyError::BadSignature { version: p.version })?;
        Ok(p)
    }

    /// Reads signed bytes without checking the signature: for a policy this
    /// replica verified when it installed it and kept in its own file.
    pub fn decode_unverified(bytes: &[u8]) -> Result<SignedPolicy, PolicyError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(bytes.len()));
        }
        let mut r = Reader { buf: bytes };
        if r.take(4)? != MAGIC {
            return Err(PolicyError::Malformed("magic"));
        }
        let county = AdminCode::parse(r.short()?).map_err(|_| PolicyError::Malformed("county"))?;
        if county.level() != AdminLevel::County {
            return Err(PolicyError::Malformed("county"));
        }
        let version = u64::from_be_bytes(r.array()?);
        if version == 0 {
            return Err(PolicyError::Malformed("version"));
        }
        let issued_at = Timestamp(i64::from_be_bytes(r.array()?));
        let len = r.u32()? as usize;
        if len > MAX_POLICY_TEXT_BYTES {
            return Err(PolicyError::TooLarge(len));
        }
        let text = std::str::from_utf8(r.take(len)?).map_err(|_| PolicyError::Malformed("text"))?.to_owned();
        let count = r.u32()? as usize;
        // An entry takes at least 1 + 1 + 1 + 1 + 2 bytes: a count the rest
        // cannot hold is refused before anything is sized from it.
        if count > MAX_STAFF || count > r.buf.len() / 6 {
            return Err(PolicyError::Malformed("staff count"));
        }
        let mut roster = Vec::with_capacity(count);
        for _ in 0..count {
            let id = StaffId::parse(r.short()?).map_err(|_| PolicyError::Malformed("staff id"))?;
            let name = r.short()?.to_owned();
            let role = role_from_tag(r.u8()?).ok_or(PolicyError::Malformed("staff role"))?;
            let scope = AdminCode::parse(r.short()?).map_err(|_| PolicyError::Malformed("staff scope"))?;
            let grid = u16::from_be_bytes(r.array()?);
            roster.push(Staff { id, name, role, scope, grid: (grid != 0).then_some(u32::from(grid)) });
        }
        let count = r.u32()? as usize;
        if count > MAX_AREAS || count > r.buf.len() / 2 {
            return Err(PolicyError::Malformed("area count"));
        }
        let mut areas = Vec::with_capacity(count);
        for _ in 0..count {
            let code = AdminCode::parse(r.short()?).map_err(|_| PolicyError::Malformed("area code"))?;
            areas.push(Area { code, name: r.short()?.to_owned() });
        }
        let signature: [u8; SIGNATURE_BYTES] = r.array()?;
        if !r.buf.is_empty() {
            return Err(PolicyError::Malformed("trailing bytes"));
        }
        // One policy, one encoding: re-encoding what was read must give the
        // same bytes (a non-canonical copy could carry a different meaning
        // under the same signature).
        let body = encode_body(&county, version, issued_at, &text, &roster, &areas)?;
        if body.as_slice() != &bytes[..bytes.len() - SIGNATURE_BYTES] {
            return Err(PolicyError::Malformed("not the canonical encoding"));
        }
        let policy = Policy::parse(&text)?;
        Roster::new(roster.clone())?;
        check_areas(&county, &areas)?;
        Ok(SignedPolicy { county, version, issued_at, text, roster, areas, signature, policy, bytes: bytes.to_vec() })
    }

    /// The county that signed it.
    pub fn county(&self) -> &AdminCode {
        &self.county
    }

    /// Its version; a higher version replaces a lower one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the CA signed it.
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// The policy text, as the county wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The roster's entries.
    pub fn staff(&self) -> &[Staff] {
        &self.roster
    }

    /// The names of the county's divisions.
    pub fn areas(&self) -> &[Area] {
        &self.areas
    }

    /// The signed bytes, as sent and stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file form: JSON for people and tools, trusted only through the
    /// signature over the canonical bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, PolicyError> {
        let file = PolicyJson {
            format: POLICY_FORMAT,
            county: self.county.clone(),
            version: self.version,
            issued_at: self.issued_at.0,
            policy: self.text.clone(),
            roster: self.roster.clone(),
            areas: self.areas.clone(),
            signature: hex(&self.signature),
        };
        serde_json::to_vec_pretty(&file).map_err(|e| PolicyError::Json(e.to_string()))
    }

    /// Reads the file form and checks the signature (through [`SignedPolicy::decode`]).
    pub fn from_json(json: &[u8], ca: &VerifyingKey) -> Result<SignedPolicy, PolicyError> {
        Self::decode(&Self::json_to_bytes(json)?, ca)
    }

    /// The signed bytes the file form stands for, unverified.
    pub fn json_to_bytes(json: &[u8]) -> Result<Vec<u8>, PolicyError> {
        if json.len() > 4 * MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(json.len()));
        }
        let file: PolicyJson = serde_json::from_slice(json).map_err(|e| PolicyError::Json(one_line(&e.to_string())))?;
        if file.format != POLICY_FORMAT {
            return Err(PolicyError::Json(format!("format {} (expected {POLICY_FORMAT})", file.format)));
        }
        let signature = unhex(&file.signature).ok_or(PolicyError::Malformed("signature"))?;
        let mut bytes = encode_body(
            &file.county,
            file.version,
            Timestamp(file.issued_at),
            &file.policy,
            &file.roster,
            &file.areas,
        )?;
        bytes.extend_from_slice(&signature);
        Ok(bytes)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyJson {
    format: u32,
    county: AdminCode,
    version: u64,
    issued_at: i64,
    policy: String,
    roster: Vec<Staff>,
    #[serde(default)]
    areas: Vec<Area>,
    signature: String,
}

/// Division names must lie in the county, each code named once.
fn check_areas(county: &AdminCode, areas: &[Area]) -> Result<(), PolicyError> {
    if areas.len() > MAX_AREAS {
        return Err(PolicyError::Malformed("too many areas"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in areas {
        let name_ok = crate::case::check_line("name", &a.name, 50).is_ok_and(|n| n == a.name);
        if !county.contains(&a.code) || !seen.insert(&a.code) || !name_ok {
            return Err(PolicyError::Malformed("an area outside the county, named twice, or badly named"));
        }
    }
    Ok(())
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(body);
    m
}

fn encode_body(
    county: &AdminCode,
    version: u64,
    issued_at: Timestamp,
    text: &str,
    roster: &[Staff],
    areas: &[Area],
) -> Result<Vec<u8>, PolicyError> {
    if text.len() > MAX_POLICY_TEXT_BYTES {
        return Err(PolicyError::TooLarge(text.len()));
    }
    if roster.len() > MAX_STAFF {
        return Err(PolicyError::Roster(RosterError::TooMany(roster.len())));
    }
    let mut out = Vec::with_capacity(64 + text.len() + roster.len() * 48);
    out.extend_from_slice(MAGIC);
    short(&mut out, county.as_str())?;
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&issued_at.0.to_be_bytes());
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&u32::try_from(roster.len()).unwrap_or(u32::MAX).to_be_bytes());
    for s in roster {
        short(&mut out, s.id.as_str())?;
        short(&mut out, &s.name)?;
        out.push(role_tag(s.role));
        short(&mut out, s.scope.as_str())?;
        let grid = s.grid.map_or(Ok(0), u16::try_from).map_err(|_| PolicyError::Malformed("staff grid"))?;
        out.extend_from_slice(&grid.to_be_bytes());
    }
    if areas.len() > MAX_AREAS {
        return Err(PolicyError::Malformed("too many areas"));
    }
    out.extend_from_slice(&u32::try_from(areas.len()).unwrap_or(u32::MAX).to_be_bytes());
    for a in areas {
        short(&mut out, a.code.as_str())?;
        short(&mut out, &a.name)?;
    }
    Ok(out)
}

fn short(out: &mut Vec<u8>, text: &str) -> Result<(), PolicyError> {
    let len = u8::try_from(text.len()).map_err(|_| PolicyError::Malformed("a name or code over 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn role_tag(role: Role) -> u8 {
    match role {
        Role::GridWorker => 1,
        Role::Mediator => 2,
        Role::TownshipOfficer => 3,
        _ => 4,
    }
}

fn role_from_tag(tag: u8) -> Option<Role> {
    match tag {
        1 => Some(Role::GridWorker),
        2 => Some(Role::Mediator),
        3 => Some(Role::TownshipOfficer),
        4 => Some(Role::CountyAdmin),
        _ => None,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PolicyError> {
        if self.buf.len() < n {
            return Err(PolicyError::Malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PolicyError> {
        self.take(N)?.try_into().map_err(|_| PolicyError::Malformed("truncated"))
    }

    fn u8(&mut self) -> Result<u8, PolicyError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PolicyError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn short(&mut self) -> Result<&'a str, PolicyError> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| PolicyError::Malformed("text is not utf-8"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; SIGNATURE_BYTES]> {
    let t = text.trim();
    if t.len() != 2 * SIGNATURE_BYTES || !t.is_ascii() {
        return None;
    }
    let mut out = [0u8; SIGNATURE_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The policy a replica computes with: the newest signed one it holds, or the
/// built-in default (version 0, no roster).
#[derive(Debug, Clone, Default)]
pub struct PolicyInForce {
    signed: Option<SignedPolicy>,
    policy: Policy,
    roster: Roster,
}

impl PolicyInForce {
    /// The policy of a signed one (its roster checked already).
    pub fn from_signed(signed: SignedPolicy) -> Result<PolicyInForce, PolicyError> {
        let roster = Roster::new(signed.roster.clone())?;
        Ok(PolicyInForce { policy: signed.policy.clone(), roster, signed: Some(signed) })
    }

    /// Its version: 0 for the built-in default.
    pub fn version(&self) -> u64 {
        self.signed.as_ref().map_or(0, SignedPolicy::version)
    }

    /// The rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The roster (empty until a signed policy brought one).
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The name of a division, if the policy named it.
    pub fn area_name(&self, code: &str) -> Option<&str> {
        self.signed.as_ref()?.areas.iter().find(|a| a.code.as_str() == code).map(|a| a.name.as_str())
    }

    /// The signed policy, unless this is the default.
    pub fn signed(&self) -> Option<&SignedPolicy> {
        self.signed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn county() -> AdminCode {
        AdminCode::parse("532924").unwrap()
    }

    fn roster() -> Vec<Staff> {
        let id = StaffId::parse("532924101201-01").unwrap();
        vec![Staff { scope: id.area().unwrap(), id, name: "张三".into(), role: Role::Mediator, grid: None }]
    }

    fn areas() -> Vec<Area> {
        vec![
            Area { code: county(), name: "宾川县".into() },
            Area { code: AdminCode::parse("532924101").unwrap(), name: "宾居镇".into() },
        ]
    }

    #[test]
    fn policy_parse_keeps_defaults_and_refuses_typos_and_nonsense() {
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
        let p =
            Policy::parse("[routing]\ntownship_categories = [\"petition\", \"民族宗教\"]\nflags_to_township = []\n")
                .unwrap();
        assert_eq!(p.routing.township_categories, [Category::Petition, Category::EthnicReligious]);
        assert!(p.routing.flags_to_township.is_empty() && p.routing.high_risk_to_township);
        assert!(matches!(Policy::parse("[deadlines]\nvilage = 3"), Err(PolicyError::Toml(_))));
        assert!(matches!(Policy::parse("[deadlines]\nvillage = 0"), Err(PolicyError::Value { .. })));
        assert!(matches!(Policy::parse("[follow_up]\ndays = [30, 7]"), Err(PolicyError::Value { .. })));
        assert!(matches!(Policy::parse("[routing]\nflags_to_township = [\"ufo\"]"), Err(PolicyError::Toml(_))));
        let p = Policy::parse("[deadlines]\nvillage = 9\n").unwrap();
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p, "to_toml round-trips");
    }

    #[test]
    fn signed_policy_round_trips_and_refuses_forgery() {
        let s = SignedPolicy::sign(
            &county(),
            3,
            Timestamp(1_000),
            "[deadlines]\nvillage = 10\n",
            roster(),
            areas(),
            &key(1),
        )
        .unwrap();
        let back = SignedPolicy::decode(s.as_bytes(), &key(1).verifying_key()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.policy().deadlines.village, 10);
        assert_eq!(back.areas(), areas());
        let outside = vec![Area { code: AdminCode::parse("530102").unwrap(), name: "五华区".into() }];
        assert!(SignedPolicy::sign(&county(), 1, Timestamp(0), "", vec![], outside, &key(1)).is_err());
        let json = s.to_json().unwrap();
        assert_eq!(SignedPolicy::from_json(&json, &key(1).verifying_key()).unwrap(), s);
        // Another CA.
        assert!(matches!(
            SignedPolicy::decode(s.as_bytes(), &key(2).verifying_key()),
            Err(PolicyError::BadSignature { version: 3 })
        ));
        // Every flipped bit is refused.
        for i in 0..s.as_bytes().len() {
            let mut b = s.as_bytes().to_vec();
            b[i] ^= 0x10;
            assert!(SignedPolicy::decode(&b, &key(1).verifying_key()).is_err(), "bit flip at {i} accepted");
        }
        // A forged version in the file form.
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["version"] = 4.into();
        let forged = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            SignedPolicy::from_json(&forged, &key(1).verifying_key()),
            Err(PolicyError::BadSignature { version: 4 })
        ));
        // Truncated and extended.
        assert!(SignedPolicy::decode(&s.as_bytes()[..40], &key(1).verifying_key()).is_err());
        let mut long = s.as_bytes().to_vec();
        long.push(0);
        assert!(SignedPolicy::decode(&long, &key(1).verifying_key()).is_err());
    }

    #[test]
    fn sign_refuses_what_replicas_would_refuse() {
        assert!(
            SignedPolicy::sign(&county(), 1, Timestamp(0), "[deadlines]\nvillage = -1", vec![], vec![], &key(1))
                .is_err()
        );
        assert!(SignedPolicy::sign(&county(), 0, Timestamp(0), "", vec![], vec![], &key(1)).is_err());
        let mut twice = roster();
        twice.extend(roster());
        assert!(matches!(
            SignedPolicy::sign(&county(), 1, Timestamp(0), "", twice, vec![], &key(1)),
            Err(PolicyError::Roster(RosterError::DuplicateId(_)))
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = SignedPolicy::decode(&bytes, &key(1).verifying_key());
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = SignedPolicy::decode(&with_magic, &key(1).verifying_key());
        }
    }
}
