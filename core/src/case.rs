//! Domain types of a dispute case: identifiers, division codes, categories,
//! parties and lifecycle vocabulary.
//!
//! Everything here validates on construction, so a value of these types is
//! known to be well formed wherever it travels. Parsers are forgiving about
//! what a village cadre may type (full-width digits, spaces, Chinese labels)
//! and strict about what they keep.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a piece of user or peer input was refused.
///
/// Each variant names the problem and carries the offending input, so the
/// CLI can tell a user exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A division code that is not 6, 9 or 12 digits, or has an empty level.
    #[error("invalid division code {input:?}: {reason}")]
    AdminCode {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A resident ID number that is malformed or fails its checksum.
    #[error("invalid resident id number {input:?}: {reason}")]
    IdNumber {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A phone number that is neither a mainland mobile number nor a
    /// landline with its area code.
    #[error("invalid phone number {input:?}: {reason}")]
    Phone {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A category that is neither a code nor a label in [`Category::ALL`].
    #[error("unknown category {input:?}")]
    Category {
        /// What was given.
        input: String,
    },
    /// A value outside a fixed vocabulary (risk, level, role, outcome...).
    #[error("unknown {what} {input:?}")]
    Vocabulary {
        /// Which vocabulary.
        what: &'static str,
        /// What was given.
        input: String,
    },
    /// A party given as text that does not split into name, id number, phone.
    #[error("invalid party {input:?}: {reason}")]
    Party {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A required text that is empty or too long.
    #[error("invalid {what}: {reason}")]
    Text {
        /// Which field.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Text holding a character that could act on a terminal or reorder
    /// what is shown (see [`crate::text`]), or a line break in a one-line
    /// field.
    #[error("invalid {what}: character {position} is {}", crate::text::codepoint(*.character))]
    UnsafeText {
        /// Which field.
        what: &'static str,
        /// Where, in characters from 1.
        position: usize,
        /// The character.
        character: char,
    },
    /// A part of a party that is neither an ID number nor a phone number.
    #[error("invalid party {input:?}: {part:?} is neither an ID number nor a phone number")]
    PartyPart {
        /// The whole party as given.
        input: String,
        /// The part that is neither.
        part: String,
    },
    /// A case number or case id that does not parse.
    #[error("invalid case reference {input:?}")]
    CaseRef {
        /// What was given.
        input: String,
    },
}

/// Maps ASCII and full-width digits to ASCII and drops spaces and dashes a
/// user may type inside a code ("5329 2410 1201", "５３２９２４").
fn normalize_digits(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            other => other,
        })
        .collect()
}

/// The identity of a case: a random UUID chosen by the device that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CaseId(uuid::Uuid);

impl CaseId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The id made of these 16 bytes (as stored and sent on the wire).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for CaseId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim()).map(Self).map_err(|_| InputError::CaseRef { input: s.to_owned() })
    }
}

/// Identity of a replica: a device, a township server or a county server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(uuid::Uuid);

impl ReplicaId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The id made of these 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The device id under which this replica authors changes.
    pub fn device(&self) -> DeviceId {
        let mut d = [0u8; 8];
        d.copy_from_slice(&self.0.as_bytes()[..8]);
        DeviceId(d)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for ReplicaId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| InputError::Vocabulary { what: "replica id", input: s.to_owned() })
    }
}

/// The device that authored a change: the first 8 bytes of its replica id.
///
/// Every Automerge actor id starts with the authoring device's id, so the
/// device is known for every operation in a document without a lookup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub(crate) [u8; 8]);

impl DeviceId {
    /// Length of a device id in bytes.
    pub const LEN: usize = 8;

    /// The id made of these bytes.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Four hex digits used inside case numbers (`d07a`).
    pub fn short(&self) -> String {
        format!("{:02x}{:02x}", self.0[0], self.0[1])
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for DeviceId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InputError::Vocabulary { what: "device id", input: s.to_owned() };
        let s = s.trim();
        if s.len() != 16 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 8];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// A national statistical division code: 6 digits for a county, 9 for a
/// township, 12 for a village or community.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AdminCode(String);

/// The level of the administrative hierarchy a code names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminLevel {
    /// 县 — 6 digits.
    County,
    /// 乡镇/街道 — 9 digits.
    Township,
    /// 村/社区 — 12 digits.
    Village,
}

impl AdminCode {
    /// Parses a code, accepting full-width digits and spaces.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let s = normalize_digits(input);
        let err = |reason| InputError::AdminCode { input: input.to_owned(), reason };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("it must contain only digits"));
        }
        if !matches!(s.len(), 6 | 9 | 12) {
            return Err(err("it must have 6 (county), 9 (township) or 12 (village) digits"));
        }
        if s[..2] < *"11" || s[..2] > *"82" {
            return Err(err("the first two digits are not a province"));
        }
        if &s[4..6] == "00" {
            return Err(err("the county part (digits 5-6) is 00"));
        }
        if s.len() >= 9 && &s[6..9] == "000" {
            return Err(err("the township part (digits 7-9) is 000"));
        }
        if s.len() == 12 && &s[9..12] == "000" {
            return Err(err("the village part (digits 10-12) is 000"));
        }
        Ok(Self(s))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which level this code names.
    pub fn level(&self) -> AdminLevel {
        match self.0.len() {
            6 => AdminLevel::County,
            9 => AdminLevel::Township,
            _ => AdminLevel::Village,
        }
    }

    /// The county this code lies in (itself for a county).
    pub fn county(&self) -> AdminCode {
        Self(self.0[..6].to_owned())
    }

    /// The township this code lies in, if it is a township or village.
    pub fn township(&self) -> Option<AdminCode> {
        (self.0.len() >= 9).then(|| Self(self.0[..9].to_owned()))
    }

    /// Whether `other` lies inside this division (or is this division).
    pub fn contains(&self, other: &AdminCode) -> bool {
        other.0.starts_with(&self.0)
    }
}

impl fmt::Display for AdminCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AdminCode {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AdminCode {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AdminCode> for String {
    fn from(c: AdminCode) -> String {
        c.0
    }
}

/// A human case number made offline without coordination:
/// `{village code}-{yyyy}-{device short id}-{seq}`, e.g. `532924101201-2026-d07a-0042`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CaseNumber(String);

impl CaseNumber {
    /// Builds the number for the `seq`-th case a device records in `year`.
    pub fn new(village: &AdminCode, year: i32, device: DeviceId, seq: u32) -> Self {
        Self(format!("{village}-{year:04}-{}-{seq:04}", device.short()))
    }

    /// Parses and checks the four parts of a case number.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let bad = || InputError::CaseRef { input: input.to_owned() };
        let s = input.trim();
        let parts: Vec<&str> = s.split('-').collect();
        let [village, year, device, seq] = parts[..] else {
            return Err(bad());
        };
        let village = AdminCode::parse(village).map_err(|_| bad())?;
        let digits = |p: &str, n| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
        let hex = device.len() == 4 && device.bytes().all(|b| b.is_ascii_hexdigit());
        if village.level() != AdminLevel::Village || !digits(year, 4) || !hex || seq.len() < 4 {
            return Err(bad());
        }
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// The text of the number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn vocabulary_error(what: &'static str, input: &str) -> InputError {
    match what {
        "category" => InputError::Category { input: input.to_owned() },
        _ => InputError::Vocabulary { what, input: input.to_owned() },
    }
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $zh:literal, $en:literal $(, $alias:literal)* ; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in display order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable code used in storage, on the wire and on the command line.
            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code,)+ }
            }

            /// The Chinese label.
            pub fn zh(self) -> &'static str {
                match self { $($name::$variant => $zh,)+ }
            }

            /// The English label.
            pub fn en(self) -> &'static str {
                match self { $($name::$variant => $en,)+ }
            }

            /// Parses a code, a Chinese or English label or a known alias,
            /// ignoring case and surrounding spaces.
            pub fn parse(input: &str) -> Result<Self, InputError> {
                let s = input.trim().to_lowercase().replace('_', "-");
                $(
                    if s == $code || s == $zh || s == $en.to_lowercase() $(|| s == $alias)* {
                        return Ok($name::$variant);
                    }
                )+
                Err(vocabulary_error($what, input))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }

        impl FromStr for $name {
            type Err = InputError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// The kind of dispute, as named in county statistics.
    Category, "category" {
        /// 邻里纠纷
        Neighbor = "neighbor", "邻里纠纷", "Neighbour", "neighbour", "邻里";
        /// 婚姻家庭纠纷
        MarriageFamily = "marriage-family", "婚姻家庭纠纷", "Marriage and family", "family", "婚姻家庭";
        /// 婚恋纠纷
        Romance = "romance", "婚恋纠纷", "Romance", "婚恋";
        /// 债务纠纷
        Debt = "debt", "债务纠纷", "Debt", "债务";
        /// 继承纠纷
        Inheritance = "inheritance", "继承纠纷", "Inheritance", "继承";
        /// 劳资纠纷
        Labor = "labor", "劳资纠纷", "Labour and wages", "labour", "wages", "劳资";
        /// 医患纠纷
        Medical = "medical", "医患纠纷", "Medical", "医患";
        /// 土地资源纠纷
        Land = "land", "土地资源纠纷", "Land and resources", "土地资源", "土地";
        /// 农村土地经营纠纷
        LandContract = "land-contract", "农村土地经营纠纷", "Rural land contracting", "农村土地经营";
        /// 住房建设纠纷
        Housing = "housing", "住房建设纠纷", "Housing and construction", "住房建设";
        /// 物业纠纷
        Property = "property", "物业纠纷", "Property management", "物业";
        /// 交通事故纠纷
        Traffic = "traffic", "交通事故纠纷", "Traffic accident", "交通事故";
        /// 消费纠纷
        Consumer = "consumer", "消费纠纷", "Consumer", "消费";
        /// 水事纠纷
        Water = "water", "水事纠纷", "Water", "水事";
        /// 林草纠纷
        Forestry = "forestry", "林草纠纷", "Forestry and grassland", "林草";
        /// 环境纠纷
        Environment = "environment", "环境纠纷", "Environment", "环境";
        /// 民族宗教纠纷
        EthnicReligious = "ethnic-religious", "民族宗教纠纷", "Ethnic and religious", "民族宗教";
        /// 信访相关纠纷
        Petition = "petition", "信访相关纠纷", "Petition-related", "信访";
        /// 其他纠纷
        Other = "other", "其他纠纷", "Other", "其他";
    }
}

vocabulary! {
    /// Risk of the dispute turning violent or criminal (民转刑).
    Risk, "risk" {
        /// 低
        Low = "low", "低", "Low", "低风险";
        /// 中
        Medium = "medium", "中", "Medium", "中风险";
        /// 高: must reach the township at once.
        High = "high", "高", "High", "高风险";
    }
}

vocabulary! {
    /// The level at which a case is being handled.
    Level, "level" {
        /// 村级
        Village = "village", "村级", "Village", "村";
        /// 乡镇级
        Township = "township", "乡镇级", "Township", "乡镇";
        /// 县级
        County = "county", "县级", "County", "县";
    }
}

impl Level {
    /// The next level up, if any. Nothing goes above the county (矛盾不上交).
    pub fn up(self) -> Option<Level> {
        match self {
            Level::Village => Some(Level::Township),
            Level::Township => Some(Level::County),
            _ => None,
        }
    }
}

vocabulary! {
    /// Where a case stands, derived from its lifecycle events.
    Status, "status" {
        /// 已受理: recorded, no mediation yet.
        Recorded = "recorded", "已受理", "Recorded";
        /// 调解中
        Mediating = "mediating", "调解中", "Mediating";
        /// 已上报，待上级接收
        Escalated = "escalated", "已上报", "Escalated", "待接收";
        /// 调解成功
        Settled = "settled", "调解成功", "Settled", "已调解";
        /// 调解失败
        Failed = "failed", "调解失败", "Failed";
        /// 已归档
        Archived = "archived", "已归档", "Archived", "归档";
    }
}

impl Status {
    /// Whether the case still needs work and so can be overdue.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Recorded | Status::Mediating | Status::Escalated)
    }
}

vocabulary! {
    /// What a lifecycle event records.
    EventKind, "event kind" {
        /// 排查/受理: the case was recorded.
        Recorded = "recorded", "受理", "Recorded";
        /// 调解记录: a session note.
        Note = "note", "调解记录", "Note";
        /// 指派: a responsible person (包保责任人) was named.
        Assigned = "assigned", "指派", "Assigned";
        /// 上报: sent up one level.
        Escalated = "escalated", "上报", "Escalated";
        /// 上级接收: the upper level took the case.
        EscalationAccepted = "escalation-accepted", "上级接收", "Escalation accepted";
        /// 调解成功, with the agreement.
        Settled = "settled", "调解成功", "Settled";
        /// 调解失败
        Failed = "failed", "调解失败", "Failed";
        /// 司法确认 by a court.
        Confirmed = "confirmed", "司法确认", "Judicial confirmation";
        /// 回访: the agreement is being honoured.
        FollowUp = "follow-up", "回访", "Follow-up";
        /// 反弹: the dispute came back; the case reopens.
        Relapsed = "relapsed", "反弹", "Relapsed";
        /// 归档/挂账销号
        Archived = "archived", "归档", "Archived";
        /// 督办: a higher level orders action on the case by a date.
        Supervised = "supervised", "督办", "Supervision order";
        /// 督办回复: the handler answers a supervision order.
        Responded = "responded", "督办回复", "Supervision answered";
        /// 免予回访: the remaining follow-up visits are waived, with a reason.
        FollowUpWaived = "follow-up-waived", "免予回访", "Follow-ups waived";
    }
}

vocabulary! {
    /// A warning sign on a case beside its risk level (风险标记). The county
    /// policy routes some of them to the township at once.
    RiskFlag, "risk flag" {
        /// 民转刑: threats, violence, a family breaking apart: the dispute may turn criminal.
        CriminalRisk = "criminal-risk", "民转刑风险", "Risk of turning criminal", "民转刑";
        /// 群体性: many people on one side, a crowd may gather.
        Group = "group", "群体性风险", "Group dispute", "群体性";
        /// 个人极端: a party threatens self-harm or extreme acts.
        Extreme = "extreme", "个人极端风险", "Risk of extreme acts", "个人极端", "极端";
    }
}

vocabulary! {
    /// The job of the person using a replica; it decides the scope of their edits.
    Role, "role" {
        /// 网格员: one grid in one village.
        GridWorker = "grid-worker", "网格员", "Grid worker";
        /// 人民调解员: one village.
        Mediator = "mediator", "调解员", "Mediator", "人民调解员";
        /// 乡镇综治中心: one township.
        TownshipOfficer = "township-officer", "乡镇干部", "Township officer", "综治中心";
        /// 县综治中心: the whole county.
        CountyAdmin = "county-admin", "县级管理员", "County admin";
    }
}

impl Role {
    /// The administrative level this role's scope must be.
    pub fn scope_level(self) -> AdminLevel {
        match self {
            Role::GridWorker | Role::Mediator => AdminLevel::Village,
            Role::TownshipOfficer => AdminLevel::Township,
            _ => AdminLevel::County,
        }
    }

    /// The case level this role works at.
    pub fn level(self) -> Level {
        match self {
            Role::GridWorker | Role::Mediator => Level::Village,
            Role::TownshipOfficer => Level::Township,
            _ => Level::County,
        }
    }
}

vocabulary! {
    /// The result of a follow-up visit (回访).
    Outcome, "outcome" {
        /// 履行良好
        Honoured = "honoured", "履行良好", "Honoured", "honored", "履行";
        /// 反弹
        Relapsed = "relapsed", "反弹", "Relapsed";
    }
}

/// The longest free text the ledger accepts in one field, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// The most parties a case may list.
pub const MAX_PARTIES: usize = 64;

/// Checks a free-text field (a description, a note, an agreement): not
/// blank, not longer than `max` characters, and no character that could act
/// on a terminal (newlines and tabs are kept). Windows line ends become `\n`.
pub fn check_text(what: &'static str, text: &str, max: usize) -> Result<String, InputError> {
    checked(what, &text.replace("\r\n", "\n"), max, true)
}

/// Checks a one-line field (a title, a name, a court): like [`check_text`],
/// and no line break or tab either.
pub fn check_line(what: &'static str, text: &str, max: usize) -> Result<String, InputError> {
    checked(what, text, max, false)
}

fn checked(what: &'static str, text: &str, max: usize, multiline: bool) -> Result<String, InputError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(InputError::Text { what, reason: "it is empty" });
    }
    if t.chars().count() > max {
        return Err(InputError::Text { what, reason: "it is too long" });
    }
    if let Some((position, character)) = crate::text::unsafe_char(t, multiline) {
        return Err(InputError::UnsafeText { what, position, character });
    }
    Ok(t.to_owned())
}

/// A resident identity card number (居民身份证号码): the 18-character
/// number with a valid GB 11643 check character, or the old 15-digit number
/// (issued before 1999, no check character), each with a real birth date.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdNumber(String);

impl IdNumber {
    /// Parses and checks the number; accepts a lowercase `x`, full-width
    /// digits and spaces.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let s = normalize_digits(input).to_ascii_uppercase();
        let err = |reason| InputError::IdNumber { input: input.to_owned(), reason };
        let n = s.chars().count();
        if n != 18 && n != 15 {
            return Err(err("it must have 18 characters (or 15 for an old card)"));
        }
        let digits = if n == 18 { 17 } else { 15 };
        if !s.is_ascii() || !s.as_bytes()[..digits].iter().all(u8::is_ascii_digit) {
            return Err(err(if n == 18 {
                "the first 17 characters must be digits"
            } else {
                "the old 15-character number has only digits"
            }));
        }
        let bytes = s.as_bytes();
        if n == 18 {
            const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
            const CHECK: &[u8; 11] = b"10X98765432";
            let sum: u32 = bytes[..17].iter().zip(WEIGHTS).map(|(b, w)| u32::from(b - b'0') * w).sum();
            if bytes[17] != CHECK[(sum % 11) as usize] {
                return Err(err("the last character does not match the checksum"));
            }
        }
        // The birth date: YYYYMMDD from the 7th character, or YYMMDD (19YY) on old cards.
        let (y, m, d) = if n == 18 { (&s[6..10], &s[10..12], &s[12..14]) } else { (&s[6..8], &s[8..10], &s[10..12]) };
        let year = y.parse::<i32>().map(|y| if n == 15 { 1900 + y } else { y }).unwrap_or(0);
        let date = chrono::NaiveDate::from_ymd_opt(year, m.parse().unwrap_or(0), d.parse().unwrap_or(0));
        if date.is_none() || !(1900..=2100).contains(&year) {
            return Err(err("the birth date inside it is not a real date"));
        }
        Ok(Self(s))
    }

    /// The 18 (or 15) characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with its middle hidden, for lists and exports (`5329**********1230`).
    pub fn masked(&self) -> String {
        let n = self.0.len();
        format!("{}{}{}", &self.0[..4], "*".repeat(n - 8), &self.0[n - 4..])
    }
}

impl TryFrom<String> for IdNumber {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<IdNumber> for String {
    fn from(c: IdNumber) -> String {
        c.0
    }
}

/// A phone number in mainland China: a mobile number (11 digits, `1[3-9]…`,
/// stored without a `+86` prefix) or a landline with its area code, stored as
/// `0872-1234567`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    /// Parses a phone number, dropping spaces, dashes and brackets around an
    /// area code, and a `+86` or `0086` prefix.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let err = |reason| InputError::Phone { input: input.to_owned(), reason };
        let s: String = normalize_digits(input).chars().filter(|c| !matches!(c, '(' | ')' | '（' | '）')).collect();
        let s = s.strip_prefix("+86").or_else(|| s.strip_prefix("0086")).unwrap_or(&s);
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("it must contain only digits"));
        }
        let b = s.as_bytes();
        if b[0] == b'1' {
            if b.len() != 11 || !(b'3'..=b'9').contains(&b[1]) {
                return Err(err("a mobile number has 11 digits and starts with 13 to 19"));
            }
            return Ok(Self(s.to_owned()));
        }
        if b[0] != b'0' {
            return Err(err("a landline needs its area code, e.g. 0872-1234567"));
        }
        // Area codes are 010 and 02x (3 digits) or 0xxx (4 digits); the local
        // number has 7 or 8 digits and does not start with 0.
        let area = if s.starts_with("010") || s.starts_with("02") { 3 } else { 4 };
        let local = &s[area.min(s.len())..];
        if !(7..=8).contains(&local.len()) || local.starts_with('0') {
            return Err(err("a landline is its area code and 7 or 8 digits, e.g. 0872-1234567"));
        }
        Ok(Self(format!("{}-{local}", &s[..area])))
    }

    /// The number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Phone> for String {
    fn from(c: Phone) -> String {
        c.0
    }
}

/// A party to the dispute (当事人). Personal data: handle with care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Full name.
    pub name: String,
    /// Resident ID number, if the party gave it.
    pub id_number: Option<IdNumber>,
    /// Phone number, if the party gave it.
    pub phone: Option<Phone>,
}

impl Party {
    /// Parses a party as typed on the command line, in either form:
    ///
    /// - `NAME[,ID_NUMBER][,PHONE]`: the parts after the name are told apart
    ///   by what they are, and each must be a valid ID number or a valid phone
    ///   number: the two never look alike (15 or 18 characters against 11
    ///   digits starting with 1, or 0 and an area code), so nothing is guessed,
    ///   and a part that is neither is an error naming both;
    /// - `name=NAME,id=ID_NUMBER,phone=PHONE` (also `姓名=`, `身份证=`,
    ///   `电话=`/`手机=`), in any order, each key at most once.
    ///
    /// Chinese commas are accepted as separators.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let err = |reason| InputError::Party { input: input.to_owned(), reason };
        let parts: Vec<&str> = input.split([',', '，']).map(str::trim).collect();
        if parts.iter().any(|p| p.contains(['=', '＝'])) {
            return Self::parse_keyed(input, &parts);
        }
        if parts.len() > 3 {
            return Err(err("use at most NAME,ID_NUMBER,PHONE"));
        }
        let name = party_name(input, parts[0])?;
        let mut party = Party { name, id_number: None, phone: None };
        for part in parts[1..].iter().filter(|p| !p.is_empty()) {
            let digits = normalize_digits(part);
            let id_shaped = matches!(digits.chars().count(), 15 | 18)
                && digits.chars().take(15).all(|c| c.is_ascii_digit())
                && !digits.starts_with(['0', '1', '+']);
            if id_shaped {
                if party.id_number.is_some() {
                    return Err(err("two ID numbers given"));
                }
                party.id_number = Some(IdNumber::parse(part)?);
            } else if Phone::parse(part).is_ok() {
                if party.phone.is_some() {
                    return Err(err("two phone numbers given"));
                }
                party.phone = Phone::parse(part).ok();
            } else {
                return Err(InputError::PartyPart { input: input.to_owned(), part: (*part).to_owned() });
            }
        }
        Ok(party)
    }

    fn parse_keyed(input: &str, parts: &[&str]) -> Result<Self, InputError> {
        let err = |reason| InputError::Party { input: input.to_owned(), reason };
        let (mut name, mut id_number, mut phone) = (None, None, None);
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once(['=', '＝']) else {
                return Err(err("write every part as key=value: name=…,id=…,phone=…"));
            };
            let value = value.trim();
            let slot_taken = match key.trim().to_lowercase().as_str() {
                "name" | "姓名" => name.replace(party_name(input, value)?).is_some(),
                "id" | "id_number" | "身份证" | "身份证号" => {
                    id_number.replace(IdNumber::parse(value)?).is_some()
                }
                "phone" | "电话" | "手机" => phone.replace(Phone::parse(value)?).is_some(),
                _ => return Err(err("the keys are name, id and phone")),
            };
            if slot_taken {
                return Err(err("a key is given twice"));
            }
        }
        let name = name.ok_or_else(|| err("the name is empty or too long"))?;
        Ok(Party { name, id_number, phone })
    }
}

/// A party's name: one line, 1 to 50 characters.
fn party_name(input: &str, name: &str) -> Result<String, InputError> {
    match check_line("party name", name, 50) {
        Ok(n) => Ok(n),
        Err(e @ InputError::UnsafeText { .. }) => Err(e),
        Err(_) => Err(InputError::Party { input: input.to_owned(), reason: "the name is empty or too long" }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn admin_code_derives_parents() {
        let v = AdminCode::parse("532924101201").unwrap();
        assert_eq!(v.level(), AdminLevel::Village);
        assert_eq!(v.county().as_str(), "532924");
        assert_eq!(v.township().unwrap().as_str(), "532924101");
        assert!(v.county().contains(&v));
        assert!(!v.contains(&v.county()));
        assert_eq!(AdminCode::parse("５３２９２４ 101").unwrap().as_str(), "532924101");
    }

    #[test]
    fn admin_code_rejects_malformed() {
        for bad in ["", "53292", "5329241012", "53292410120a", "002924", "532900", "532924000", "532924101000"] {
            assert!(AdminCode::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn id_number_checks_checksum() {
        assert!(IdNumber::parse("532924198001011230").is_ok());
        assert!(IdNumber::parse("11010519491231002x").is_ok());
        let e = IdNumber::parse("532924198001011231").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(IdNumber::parse("53292419800101123").is_err());
        assert_eq!(IdNumber::parse("532924198001011230").unwrap().masked(), "5329**********1230");
    }

    #[test]
    fn party_parse_tells_parts_apart() {
        let p = Party::parse("李四,532924198001011230,13800000000").unwrap();
        assert_eq!(p.name, "李四");
        assert_eq!(p.id_number.unwrap().as_str(), "532924198001011230");
        assert_eq!(p.phone.unwrap().as_str(), "13800000000");
        let p = Party::parse("王五，13900000000").unwrap();
        assert!(p.id_number.is_none());
        assert!(Party::parse("王五,532924198001011231").is_err());
        assert!(Party::parse(",138").is_err());
    }

    #[test]
    fn party_parse_never_reads_one_field_as_the_other() {
        // 16 digits: neither an ID number nor a phone, and said so.
        let e = Party::parse("李四,5329241980010112").unwrap_err();
        assert!(matches!(&e, InputError::PartyPart { part, .. } if part == "5329241980010112"), "{e:?}");
        assert!(matches!(Party::parse("李四,12345"), Err(InputError::PartyPart { .. })));
        // The keyed form says which is which.
        let p = Party::parse("name=李四,phone=0872-1234567,id=532924198001011230").unwrap();
        assert_eq!((p.name.as_str(), p.phone.unwrap().as_str()), ("李四", "0872-1234567"));
        assert_eq!(p.id_number.unwrap().as_str(), "532924198001011230");
        let p = Party::parse("姓名=王五，手机=13900000000").unwrap();
        assert_eq!(p.phone.unwrap().as_str(), "13900000000");
        assert!(matches!(Party::parse("name=李四,phone=12345"), Err(InputError::Phone { .. })));
        assert!(matches!(Party::parse("name=李四,id=13900000000"), Err(InputError::IdNumber { .. })));
        assert!(Party::parse("name=李四,name=王五").is_err());
        assert!(Party::parse("phone=13900000000").is_err(), "a party needs a name");
        assert!(matches!(Party::parse("李\u{1b}[2J四"), Err(InputError::UnsafeText { .. })));
    }

    #[test]
    fn phone_takes_mobiles_and_landlines_with_area_codes() {
        for (input, stored) in [
            ("13800000000", "13800000000"),
            ("+86 138 0000 0000", "13800000000"),
            ("１３８００００００００", "13800000000"),
            ("0872-1234567", "0872-1234567"),
            ("(0872)12345678", "0872-12345678"),
            ("010-12345678", "010-12345678"),
            ("02112345678", "021-12345678"),
        ] {
            assert_eq!(Phone::parse(input).unwrap().as_str(), stored, "{input}");
        }
        for bad in
            ["12345", "1234567", "12800000000", "138000000001", "1234567890", "0872-123", "0872-01234567", "电话"]
        {
            assert!(matches!(Phone::parse(bad), Err(InputError::Phone { .. })), "{bad} accepted");
        }
    }

    #[test]
    fn id_number_takes_old_cards_and_checks_the_birth_date() {
        assert_eq!(IdNumber::parse("532924800101123").unwrap().masked(), "5329*******1123");
        assert!(IdNumber::parse("532924801301123").is_err(), "month 13");
        assert!(IdNumber::parse("53292480010112X").is_err(), "no check character on old cards");
        // 1981 is not a leap year: 19810229 is not a date, whatever the checksum.
        let e = IdNumber::parse("532924198102290017").unwrap_err();
        assert!(e.to_string().contains("not a real date") || e.to_string().contains("checksum"), "{e}");
        assert!(IdNumber::parse("5329241980010112").is_err());
    }

    #[test]
    fn check_text_refuses_terminal_controls() {
        assert_eq!(check_text("note", " 第一行\r\n第二行 ", 100).unwrap(), "第一行\n第二行");
        for bad in ["a\u{1b}[2Jb", "a\u{7}", "a\u{202e}b", "a\u{9b}b"] {
            assert!(matches!(check_text("note", bad, 100), Err(InputError::UnsafeText { .. })), "{bad:?}");
        }
        assert!(matches!(check_line("title", "a\nb", 100), Err(InputError::UnsafeText { position: 2, .. })));
    }

    #[test]
    fn category_parses_codes_and_labels() {
        assert_eq!(Category::parse("neighbor").unwrap(), Category::Neighbor);
        assert_eq!(Category::parse("邻里纠纷").unwrap(), Category::Neighbor);
        assert_eq!(Category::parse(" Neighbour ").unwrap(), Category::Neighbor);
        assert_eq!(Category::parse("marriage_family").unwrap(), Category::MarriageFamily);
        assert!(matches!(Category::parse("ufo"), Err(InputError::Category { .. })));
        for c in Category::ALL {
            assert_eq!(Category::parse(c.code()).unwrap(), *c);
            assert_eq!(Category::parse(c.zh()).unwrap(), *c);
        }
        assert_eq!(Category::ALL.len(), 19);
    }

    #[test]
    fn case_number_round_trips() {
        let v = AdminCode::parse("532924101201").unwrap();
        let n = CaseNumber::new(&v, 2026, DeviceId([0xd0, 0x7a, 0, 0, 0, 0, 0, 0]), 42);
        assert_eq!(n.as_str(), "532924101201-2026-d07a-0042");
        assert_eq!(CaseNumber::parse(n.as_str()).unwrap(), n);
        assert!(CaseNumber::parse("532924101-2026-d07a-0042").is_err());
    }
}
