//! Who may write what, checked with Ed25519 alone: CA-signed grants and change signatures.
//!
//! The county CA gives every device and server an X.509 certificate for mutual TLS. That
//! proves who is at the other end of a connection, but relays (township servers) forward
//! changes written by others, so the county must check every change back to the device that
//! wrote it, long after that device's TLS connection is gone. This crate is sans-io and does
//! not parse X.509, so next to each certificate the CA issues a [`Grant`]: a compact
//! statement "key K belongs to subject S, who holds role R over division C in county N",
//! signed by the CA's Ed25519 key. A replica that knows its county CA's public key checks a
//! grant with [`SignedGrant::decode`] and a change with [`verify_change`].
//!
//! # Grant encoding, version 1
//!
//! Canonical and versioned: one grant has exactly one encoding, and [`SignedGrant::decode`]
//! refuses any other (it re-encodes what it parsed and compares). Integers are big-endian;
//! strings are ASCII with a one-byte length before them.
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `fqG1` ([`GRANT_MAGIC`]) |
//! | 1 + 6 | `county`: length, then the 6-digit county code |
//! | 1 + 1..=64 | `subject`: length, then the certificate's id, `[A-Za-z0-9._-]`, first a letter or digit |
//! | 1 | `role`: 1 grid-worker, 2 mediator, 3 township-officer, 4 county-admin, 5 township, 6 county |
//! | 1 + 6/9/12 | `scope`: length, then the division code |
//! | 16 | `serial`: the certificate serial as a 16-byte unsigned number |
//! | 32 | `public_key`: the holder's Ed25519 public key |
//! | 8 | `issued_at`: i64, milliseconds since the Unix epoch |
//! | 64 | Ed25519 signature by the CA key over `b"fq grant v1\0"` followed by every byte above |
//!
//! A grant is about 150 bytes; anything above [`MAX_GRANT_BYTES`] is refused unread.
//!
//! # Invariants
//!
//! - A [`SignedGrant`] made by [`SignedGrant::issue`] or [`SignedGrant::decode`] holds a grant
//!   that passed [`Grant::check`], and bytes that are the canonical encoding of that grant
//!   followed by the CA's signature. (Its fields are public for reading; one built by hand
//!   carries no such promise.)
//! - Every signature is over a message that starts with its own context string (`fq grant
//!   v1\0`, `fq change v1\0`; the CA's revocation lists use `fq revocation list v1\0`), so a
//!   signature made for one purpose never verifies as another, even with the same key.
//! - Verification uses `verify_strict`: no malleable signatures, no small-order keys.
//! - No input makes [`SignedGrant::decode`] or [`verify_change`] panic.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::case::{AdminCode, AdminLevel, InputError, Role};

/// The first four bytes of every version-1 grant.
pub const GRANT_MAGIC: &[u8; 4] = b"fqG1";
/// Largest encoded grant [`SignedGrant::decode`] looks at. A real one is about 150 bytes; the
/// bound keeps a hostile peer from making us copy or hash much.
pub const MAX_GRANT_BYTES: usize = 4096;
/// Longest subject (certificate id) a grant may name, in bytes: it travels with every grant.
pub const MAX_SUBJECT_BYTES: usize = 64;
/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// Domain separation for the CA's signature over a grant.
const GRANT_CONTEXT: &[u8] = b"fq grant v1\0";
/// Domain separation for a device's signature over a change hash.
const CHANGE_CONTEXT: &[u8] = b"fq change v1\0";
/// Domain separation for a device's signature over a run of its changes to one case.
const RUN_CONTEXT: &[u8] = b"fq run v1\0";

/// What a certificate holder is: a person's device with a role that authors changes, or a
/// server that relays them.
///
/// Deliberately exhaustive: authorization code must decide about every role, and a new role
/// is a new grant version anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantRole {
    /// A grid worker's device (网格员). Scope: a village.
    GridWorker,
    /// A village mediator's device (人民调解员). Scope: a village.
    Mediator,
    /// A township officer's device (乡镇综治中心). Scope: a township.
    TownshipOfficer,
    /// A county administrator's device (县综治中心). Scope: the county.
    CountyAdmin,
    /// A township server. Relays changes, never authors them. Scope: a township.
    TownshipServer,
    /// The county server. Relays changes, never authors them. Scope: the county.
    CountyServer,
}

impl GrantRole {
    /// Every role, people first.
    pub const ALL: [GrantRole; 6] = [
        GrantRole::GridWorker,
        GrantRole::Mediator,
        GrantRole::TownshipOfficer,
        GrantRole::CountyAdmin,
        GrantRole::TownshipServer,
        GrantRole::CountyServer,
    ];

    /// The stable code used in certificates, bundles and on the CA's command line.
    pub fn code(self) -> &'static str {
        match self {
            GrantRole::GridWorker => "grid-worker",
            GrantRole::Mediator => "mediator",
            GrantRole::TownshipOfficer => "township-officer",
            GrantRole::CountyAdmin => "county-admin",
            GrantRole::TownshipServer => "township",
            GrantRole::CountyServer => "county",
        }
    }

    /// Parses a stable code, exactly as [`GrantRole::code`] writes it. Unlike the forgiving
    /// vocabulary parsers in [`crate::case`], this one reads certificates: no labels, no case
    /// folding.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        Self::ALL
            .into_iter()
            .find(|role| role.code() == input)
            .ok_or_else(|| InputError::Vocabulary { what: "role", input: input.to_owned() })
    }

    /// The administrative level the role's scope must be.
    pub fn scope_level(self) -> AdminLevel {
        match self {
            GrantRole::GridWorker | GrantRole::Mediator => AdminLevel::Village,
            GrantRole::TownshipOfficer | GrantRole::TownshipServer => AdminLevel::Township,
            GrantRole::CountyAdmin | GrantRole::CountyServer => AdminLevel::County,
        }
    }

    /// The person's role for a device; `None` for a server, which never authors changes.
    pub fn person_role(self) -> Option<Role> {
        match self {
            GrantRole::GridWorker => Some(Role::GridWorker),
            GrantRole::Mediator => Some(Role::Mediator),
            GrantRole::TownshipOfficer => Some(Role::TownshipOfficer),
            GrantRole::CountyAdmin => Some(Role::CountyAdmin),
            GrantRole::TownshipServer | GrantRole::CountyServer => None,
        }
    }

    /// True for the township and county servers (they accept connections and relay).
    pub fn is_server(self) -> bool {
        self.person_role().is_none()
    }

    /// Checks that `county` is a county code, that `scope` is at this role's level, and that
    /// it lies inside `county`.
    pub fn check_scope(self, county: &AdminCode, scope: &AdminCode) -> Result<(), GrantError> {
        if county.level() != AdminLevel::County {
            return Err(GrantError::NotCounty(county.clone()));
        }
        if scope.level() != self.scope_level() {
            return Err(GrantError::RoleScopeMismatch { role: self, scope: scope.clone() });
        }
        if !county.contains(scope) {
            return Err(GrantError::OutsideCounty { scope: scope.clone(), county: county.clone() });
        }
        Ok(())
    }

    /// The byte that stands for the role in a grant. Zero is never used, so a zeroed buffer
    /// is not a valid role.
    fn tag(self) -> u8 {
        match self {
            GrantRole::GridWorker => 1,
            GrantRole::Mediator => 2,
            GrantRole::TownshipOfficer => 3,
            GrantRole::CountyAdmin => 4,
            GrantRole::TownshipServer => 5,
            GrantRole::CountyServer => 6,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.tag() == tag)
    }
}

impl fmt::Display for GrantRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for GrantRole {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for GrantRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for GrantRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a grant subject (a certificate id): 1 to [`MAX_SUBJECT_BYTES`] characters from
/// `[A-Za-z0-9._-]`, the first a letter or digit (so it is never mistaken for an option, a
/// hidden file or a path). It never contains `:`, the separator of the certificate's URI.
pub fn check_subject(subject: &str) -> Result<(), GrantError> {
    let first_ok = subject.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let all_ok = subject.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && all_ok && subject.len() <= MAX_SUBJECT_BYTES {
        Ok(())
    } else {
        Err(GrantError::Subject(subject.to_owned()))
    }
}

/// Why a grant was refused, at issue or at decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The encoded grant is longer than [`MAX_GRANT_BYTES`]; refused before it is parsed.
    #[error("grant is {0} bytes, more than {MAX_GRANT_BYTES}")]
    TooLarge(usize),
    /// The bytes do not start with [`GRANT_MAGIC`]: not a grant, or a version this build
    /// does not read.
    #[error("not an fq grant v1 (bad magic)")]
    Magic,
    /// The bytes end inside a field (or inside the signature).
    #[error("grant is truncated in its {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A field is not in its one canonical form.
    #[error("grant {field} is malformed: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The role byte names no role this build knows.
    #[error("grant role tag {0} is unknown")]
    UnknownRole(u8),
    /// A division code in the grant is not a valid code.
    #[error("grant {field} is invalid")]
    AdminCode {
        /// `county` or `scope`.
        field: &'static str,
        /// Why the code was refused.
        #[source]
        source: InputError,
    },
    /// The signature does not verify with the CA key: made by another CA, or altered since.
    #[error("grant is not signed by this ca")]
    BadSignature,
    /// The subject is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid subject {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit")]
    Subject(String),
    /// The county is not a 6-digit county code.
    #[error("{0} is not a county code (6 digits)")]
    NotCounty(AdminCode),
    /// The scope is not at the level the role needs.
    #[error("role {role} needs a {}, got {scope}", scope_text(.role.scope_level()))]
    RoleScopeMismatch {
        /// The role.
        role: GrantRole,
        /// The scope that does not fit it.
        scope: AdminCode,
    },
    /// The scope lies outside the grant's county.
    #[error("scope {scope} is outside county {county}")]
    OutsideCounty {
        /// The scope.
        scope: AdminCode,
        /// The county.
        county: AdminCode,
    },
    /// The public key is not a valid Ed25519 point, or a small-order (weak) one that would
    /// let anyone forge the holder's signatures.
    #[error("grant public key is not a usable ed25519 key")]
    PublicKey,
}

fn scope_text(level: AdminLevel) -> &'static str {
    match level {
        AdminLevel::County => "county scope (6 digits)",
        AdminLevel::Township => "township scope (9 digits)",
        AdminLevel::Village => "village scope (12 digits)",
    }
}

/// Why a change signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signer's public key is not a valid Ed25519 point.
    #[error("signer public key is not a valid ed25519 key")]
    PublicKey,
    /// The signature does not verify over this change hash with this key (another key,
    /// another hash, a signature made for another purpose, or altered bytes).
    #[error("change signature does not verify")]
    Invalid,
}

/// A CA's statement that a public key belongs to a subject with a role over a scope.
///
/// A bare `Grant` is only a claim; it is trusted once it is inside a [`SignedGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The county of the issuing CA.
    pub county: AdminCode,
    /// The certificate's id (see [`check_subject`]).
    pub subject: String,
    /// What the holder is.
    pub role: GrantRole,
    /// The division the role applies to: inside `county`, at [`GrantRole::scope_level`].
    pub scope: AdminCode,
    /// The certificate's serial, the key into the revocation list.
    pub serial: [u8; 16],
    /// The holder's Ed25519 public key, which signs its changes.
    pub public_key: [u8; 32],
    /// When the CA issued it, in milliseconds since the Unix epoch.
    pub issued_at: i64,
}

impl Grant {
    /// Checks the grant's invariants: the subject's characters, a county code for `county`,
    /// a scope inside it at the role's level, and a usable public key.
    pub fn check(&self) -> Result<(), GrantError> {
        check_subject(&self.subject)?;
        self.role.check_scope(&self.county, &self.scope)?;
        self.verifying_key().map(drop)
    }

    /// The holder's key, if it is a valid and not small-order Ed25519 point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, GrantError> {
        match VerifyingKey::from_bytes(&self.public_key) {
            Ok(key) if !key.is_weak() => Ok(key),
            _ => Err(GrantError::PublicKey),
        }
    }

    /// The canonical bytes before the signature. Only called on grants whose strings fit a
    /// one-byte length (checked, or just parsed with one).
    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.subject.len());
        out.extend_from_slice(GRANT_MAGIC);
        push_short(&mut out, self.county.as_str());
        push_short(&mut out, &self.subject);
        out.push(self.role.tag());
        push_short(&mut out, self.scope.as_str());
        out.extend_from_slice(&self.serial);
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out
    }
}

fn push_short(out: &mut Vec<u8>, text: &str) {
    out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(text.as_bytes());
}

/// What the CA signs: the grant context, then the grant's body.
fn grant_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(GRANT_CONTEXT.len() + body.len());
    message.extend_from_slice(GRANT_CONTEXT);
    message.extend_from_slice(body);
    message
}

/// A grant together with its signed encoding, as made by [`SignedGrant::issue`] or
/// [`SignedGrant::decode`].
///
/// The fields are public for reading. Treat them as read-only: a `SignedGrant` assembled or
/// edited by hand is not verified by anyone, and its `bytes` may not say what its `grant`
/// says. Trust a grant from a peer only through [`SignedGrant::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGrant {
    /// What the CA granted.
    pub grant: Grant,
    /// The signed canonical encoding of `grant`, as stored in bundles and sent to peers.
    pub bytes: Vec<u8>,
}

impl SignedGrant {
    /// Checks `grant` ([`Grant::check`]) and signs its canonical encoding with the CA's key.
    /// Only the county CA calls this.
    pub fn issue(grant: Grant, ca_key: &SigningKey) -> Result<SignedGrant, GrantError> {
        grant.check()?;
        Ok(Self::sign_unchecked(grant, ca_key))
    }

    fn sign_unchecked(grant: Grant, ca_key: &SigningKey) -> SignedGrant {
        let mut bytes = grant.encode_body();
        let signature = ca_key.sign(&grant_message(&bytes));
        bytes.extend_from_slice(&signature.to_bytes());
        SignedGrant { grant, bytes }
    }

    /// Parses `bytes` as a grant signed by the CA whose key is `ca`, and checks its
    /// invariants. Refuses input longer than [`MAX_GRANT_BYTES`] before reading it, any
    /// encoding but the canonical one, and any signature but the CA's. Never panics.
    pub fn decode(bytes: &[u8], ca: &VerifyingKey) -> Result<SignedGrant, GrantError> {
        if bytes.len() > MAX_GRANT_BYTES {
            return Err(GrantError::TooLarge(bytes.len()));
        }
        let body_len = bytes.len().checked_sub(SIGNATURE_BYTES).ok_or(GrantError::Truncated { field: "signature" })?;
        let (body, signature) = bytes.split_at(body_len);
        let grant = parse_body(body)?;
        // Re-encoding catches every other spelling of the same grant (a non-canonical code,
        // trailing bytes), so one grant has exactly one accepted encoding.
        if grant.encode_body() != body {
            return Err(GrantError::Malformed { field: "grant", reason: "not in canonical form" });
        }
        let signature: [u8; SIGNATURE_BYTES] =
            signature.try_into().map_err(|_| GrantError::Truncated { field: "signature" })?;
        ca.verify_strict(&grant_message(body), &Signature::from_bytes(&signature))
            .map_err(|_| GrantError::BadSignature)?;
        grant.check()?;
        Ok(SignedGrant { grant, bytes: bytes.to_vec() })
    }

    /// The grant.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The signed encoding, as stored in bundles and sent to peers.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The public key a grant's bytes name, read without checking anything else:
/// only for finding a grant already verified and stored, whose stored bytes
/// must then be equal byte for byte (a session resends grants the receiver
/// holds; checking the CA's signature again would cost as much as a change's).
pub fn claimed_key(bytes: &[u8]) -> Option<[u8; 32]> {
    let body_len = bytes.len().min(MAX_GRANT_BYTES).checked_sub(SIGNATURE_BYTES)?;
    parse_body(bytes.get(..body_len)?).ok().map(|g| g.public_key)
}

/// Reads fields off the front of a byte string, failing instead of panicking at its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], GrantError> {
        if self.rest.len() < n {
            return Err(GrantError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], GrantError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn short_str(&mut self, field: &'static str) -> Result<&'a str, GrantError> {
        let [len] = self.array::<1>(field)?;
        let bytes = self.take(usize::from(len), field)?;
        std::str::from_utf8(bytes).map_err(|_| GrantError::Malformed { field, reason: "not utf-8" })
    }

    fn admin_code(&mut self, field: &'static str) -> Result<AdminCode, GrantError> {
        let text = self.short_str(field)?;
        AdminCode::parse(text).map_err(|source| GrantError::AdminCode { field, source })
    }
}

fn parse_body(body: &[u8]) -> Result<Grant, GrantError> {
    let mut reader = Reader { rest: body };
    if reader.take(GRANT_MAGIC.len(), "magic").map_err(|_| GrantError::Magic)? != GRANT_MAGIC {
        return Err(GrantError::Magic);
    }
    let county = reader.admin_code("county")?;
    let subject = reader.short_str("subject")?.to_owned();
    let [tag] = reader.array::<1>("role")?;
    let role = GrantRole::from_tag(tag).ok_or(GrantError::UnknownRole(tag))?;
    let scope = reader.admin_code("scope")?;
    let serial = reader.array::<16>("serial")?;
    let public_key = reader.array::<32>("public key")?;
    let issued_at = i64::from_be_bytes(reader.array::<8>("issued at")?);
    if !reader.rest.is_empty() {
        return Err(GrantError::Malformed { field: "grant", reason: "bytes after the last field" });
    }
    Ok(Grant { county, subject, role, scope, serial, public_key, issued_at })
}

/// The message a change signature covers: the change context, then the change hash.
fn change_message(hash: &[u8; 32]) -> [u8; CHANGE_CONTEXT.len() + 32] {
    let mut message = [0u8; CHANGE_CONTEXT.len() + 32];
    message[..CHANGE_CONTEXT.len()].copy_from_slice(CHANGE_CONTEXT);
    message[CHANGE_CONTEXT.len()..].copy_from_slice(hash);
    message
}

/// Signs the 32-byte hash of an Automerge change with the author's key, for its envelope.
pub fn sign_change(key: &SigningKey, hash: &[u8; 32]) -> [u8; 64] {
    key.sign(&change_message(hash)).to_bytes()
}

/// Checks that `signature` was made by [`sign_change`] over `hash` with the key whose public
/// half is `public_key`. Strict: refuses malleable signatures and small-order keys.
pub fn verify_change(public_key: &[u8; 32], hash: &[u8; 32], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| SignatureError::PublicKey)?;
    verify_change_with(&key, hash, signature)
}

/// [`verify_change`] with the key already decompressed: a batch signed by one
/// author decompresses its key once.
pub fn verify_change_with(key: &VerifyingKey, hash: &[u8; 32], signature: &[u8; 64]) -> Result<(), SignatureError> {
    key.verify_strict(&change_message(hash), &Signature::from_bytes(signature)).map_err(|_| SignatureError::Invalid)
}

/// What a run signature covers: the context, the case, the number of changes and their hashes
/// in sorted order (so the order they travel in does not matter).
fn run_message(case: &[u8; 16], hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut sorted = hashes.to_vec();
    sorted.sort_unstable();
    let mut message = Vec::with_capacity(RUN_CONTEXT.len() + 16 + 4 + 32 * sorted.len());
    message.extend_from_slice(RUN_CONTEXT);
    message.extend_from_slice(case);
    message.extend_from_slice(&u32::try_from(sorted.len()).unwrap_or(u32::MAX).to_be_bytes());
    sorted.iter().for_each(|h| message.extend_from_slice(h));
    message
}

/// Signs a run: several changes of one case, by one author, under one signature (protocol
/// version 2). The signature covers every hash, so each change stays verifiable back to its
/// author, as long as the run travels whole.
pub fn sign_run(key: &SigningKey, case: &[u8; 16], hashes: &[[u8; 32]]) -> [u8; 64] {
    key.sign(&run_message(case, hashes)).to_bytes()
}

/// Checks a run signature made by [`sign_run`] over `case` and exactly `hashes` (in any order).
pub fn verify_run_with(
    key: &VerifyingKey,
    case: &[u8; 16],
    hashes: &[[u8; 32]],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    key.verify_strict(&run_message(case, hashes), &Signature::from_bytes(signature))
        .map_err(|_| SignatureError::Invalid)
}

/// Checks what is kept beside a held change of `case` (its `signature` column) against its
/// author's key: a single signature; the head of a signed run, whose signature covers the
/// run; or a member of a run, vouched for by its head, which `head_of` finds among the case's
/// changes signed by the same key (its kept blob) and which must list the member.
pub fn check_provenance(
    key: &VerifyingKey,
    case: &[u8; 16],
    hash: &[u8; 32],
    blob: &[u8],
    head_of: &dyn Fn(&[u8; 32]) -> Option<Vec<u8>>,
) -> Result<(), SignatureError> {
    match Provenance::from_blob(blob).ok_or(SignatureError::Invalid)? {
        Provenance::Single(sig) => verify_change_with(key, hash, &sig),
        Provenance::RunHead { signature, mut others } => {
            others.push(*hash);
            verify_run_with(key, case, &others, &signature)
        }
        Provenance::RunMember { head } => {
            let head_blob = head_of(&head).ok_or(SignatureError::Invalid)?;
            match Provenance::from_blob(&head_blob) {
                Some(Provenance::RunHead { ref others, .. }) if others.contains(hash) => {
                    check_provenance(key, case, &head, &head_blob, &|_| None)
                }
                _ => Err(SignatureError::Invalid),
            }
        }
    }
}

/// How a held change is vouched for, as kept beside it (the `signature` column, and the
/// `signature` of a change in transit inside the ledger).
///
/// | bytes | meaning |
/// | --- | --- |
/// | 64 | [`Provenance::Single`]: a signature over this change's hash ([`sign_change`]) |
/// | 64 + 32 × n, n ≥ 1 | [`Provenance::RunHead`]: a run signature ([`sign_run`]) over this change and the `n` others listed (sorted) |
/// | 32 | [`Provenance::RunMember`]: covered by the run whose head is the change with this hash, in the same case |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// One change, one signature.
    Single([u8; 64]),
    /// The change that carries a run's signature, and the run's other changes.
    RunHead {
        /// The run signature.
        signature: [u8; 64],
        /// The hashes of the run's other changes, sorted.
        others: Vec<[u8; 32]>,
    },
    /// A change covered by a run's signature, kept with its head.
    RunMember {
        /// The hash of the run's head.
        head: [u8; 32],
    },
}

impl Provenance {
    /// Reads a stored blob; `None` for any other length.
    pub fn from_blob(blob: &[u8]) -> Option<Self> {
        match blob.len() {
            32 => Some(Provenance::RunMember { head: blob.try_into().ok()? }),
            64 => Some(Provenance::Single(blob.try_into().ok()?)),
            n if n > 64 && (n - 64) % 32 == 0 => {
                let (sig, rest) = blob.split_at(64);
                let others: Vec<[u8; 32]> = rest.chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
                Some(Provenance::RunHead { signature: sig.try_into().ok()?, others })
            }
            _ => None,
        }
    }

    /// The blob to store.
    pub fn to_blob(&self) -> Vec<u8> {
        match self {
            Provenance::Single(sig) => sig.to_vec(),
            Provenance::RunHead { signature, others } => {
                let mut out = Vec::with_capacity(64 + 32 * others.len());
                out.extend_from_slice(signature);
                others.iter().for_each(|h| out.extend_from_slice(h));
                out
            }
            Provenance::RunMember { head } => head.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn code(s: &str) -> AdminCode {
        AdminCode::parse(s).unwrap()
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn grant(role: GrantRole, scope: &str) -> Grant {
        Grant {
            county: code("532924"),
            subject: "d07".to_owned(),
            role,
            scope: code(scope),
            serial: [0x42; 16],
            public_key: key(7).verifying_key().to_bytes(),
            issued_at: 1_767_225_600_000,
        }
    }

    fn mediator() -> Grant {
        grant(GrantRole::Mediator, "532924101201")
    }

    #[test]
    fn grant_round_trips_through_issue_and_decode() {
        let ca = key(1);
        let cases = [
            (GrantRole::GridWorker, "532924101201"),
            (GrantRole::Mediator, "532924101202"),
            (GrantRole::TownshipOfficer, "532924101"),
            (GrantRole::CountyAdmin, "532924"),
            (GrantRole::TownshipServer, "532924102"),
            (GrantRole::CountyServer, "532924"),
        ];
        for (role, scope) in cases {
            let issued = SignedGrant::issue(grant(role, scope), &ca).unwrap();
            assert!(issued.as_bytes().len() < 200);
            let decoded = SignedGrant::decode(issued.as_bytes(), &ca.verifying_key()).unwrap();
            assert_eq!(decoded, issued);
            assert_eq!(decoded.grant(), &grant(role, scope));
        }
    }

    #[test]
    fn grant_encoding_follows_the_documented_layout() {
        let g = mediator();
        let signed = SignedGrant::issue(g.clone(), &key(1)).unwrap();
        let mut expected = b"fqG1".to_vec();
        expected.extend_from_slice(b"\x06532924\x03d07\x02\x0c532924101201");
        expected.extend_from_slice(&g.serial);
        expected.extend_from_slice(&g.public_key);
        expected.extend_from_slice(&1_767_225_600_000_i64.to_be_bytes());
        let (body, signature) = signed.as_bytes().split_at(expected.len());
        assert_eq!(body, expected);
        assert_eq!(signature.len(), SIGNATURE_BYTES);
        let mut message = b"fq grant v1\0".to_vec();
        message.extend_from_slice(body);
        key(1).verifying_key().verify_strict(&message, &Signature::from_bytes(signature.try_into().unwrap())).unwrap();
    }

    #[test]
    fn grant_decode_refuses_another_ca() {
        let signed = SignedGrant::issue(mediator(), &key(1)).unwrap();
        assert_eq!(SignedGrant::decode(signed.as_bytes(), &key(2).verifying_key()), Err(GrantError::BadSignature));
    }

    #[test]
    fn grant_decode_refuses_every_single_bit_flip() {
        let ca = key(1).verifying_key();
        let bytes = SignedGrant::issue(mediator(), &key(1)).unwrap().as_bytes().to_vec();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SignedGrant::decode(&flipped, &ca).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn grant_decode_refuses_truncation_extension_and_oversize() {
        let ca = key(1).verifying_key();
        let bytes = SignedGrant::issue(mediator(), &key(1)).unwrap().as_bytes().to_vec();
        for len in 0..bytes.len() {
            assert!(SignedGrant::decode(&bytes[..len], &ca).is_err(), "prefix of {len} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SignedGrant::decode(&longer, &ca).is_err());
        let huge = vec![0u8; MAX_GRANT_BYTES + 1];
        assert_eq!(SignedGrant::decode(&huge, &ca), Err(GrantError::TooLarge(MAX_GRANT_BYTES + 1)));
    }

    #[test]
    fn grant_role_scope_mismatch_refused_at_issue_and_decode() {
        let ca = key(1);
        let bad = [
            (grant(GrantRole::Mediator, "532924101"), "role mediator needs a village scope (12 digits), got 532924101"),
            (grant(GrantRole::TownshipServer, "532924"), "role township needs a township scope (9 digits)"),
            (grant(GrantRole::CountyAdmin, "532924101201"), "role county-admin needs a county scope (6 digits)"),
            (grant(GrantRole::Mediator, "532925101201"), "outside county 532924"),
            (Grant { subject: "a:b".into(), ..mediator() }, "invalid subject"),
            (Grant { subject: String::new(), ..mediator() }, "invalid subject"),
            (Grant { county: code("532924101"), ..mediator() }, "not a county code"),
            (Grant { public_key: [0; 32], ..mediator() }, "public key"),
        ];
        for (grant, message) in bad {
            let err = SignedGrant::issue(grant.clone(), &ca).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
            // A CA that skipped the check still cannot get the grant accepted.
            let forged = SignedGrant::sign_unchecked(grant, &ca);
            assert_eq!(SignedGrant::decode(forged.as_bytes(), &ca.verifying_key()).unwrap_err(), err);
        }
    }

    #[test]
    fn grant_role_codes_round_trip_and_map_to_person_roles() {
        for role in GrantRole::ALL {
            assert_eq!(GrantRole::parse(role.code()).unwrap(), role);
            assert_eq!(GrantRole::from_tag(role.tag()), Some(role));
            assert_eq!(role.is_server(), matches!(role, GrantRole::TownshipServer | GrantRole::CountyServer));
            if let Some(person) = role.person_role() {
                assert_eq!(person.code(), role.code());
                assert_eq!(person.scope_level(), role.scope_level());
            }
        }
        assert_eq!(GrantRole::from_tag(0), None);
        let err = GrantRole::parse("boss").unwrap_err();
        assert_eq!(err.to_string(), "unknown role \"boss\"");
        assert!(GrantRole::parse("Mediator").is_err(), "certificate codes are exact");
        assert_eq!(serde_json::to_string(&GrantRole::TownshipServer).unwrap(), "\"township\"");
        assert_eq!(serde_json::from_str::<GrantRole>("\"county\"").unwrap(), GrantRole::CountyServer);
    }

    #[test]
    fn change_signature_round_trips() {
        let author = key(9);
        let hash = [0xab; 32];
        let signature = sign_change(&author, &hash);
        verify_change(&author.verifying_key().to_bytes(), &hash, &signature).unwrap();
    }

    #[test]
    fn change_signature_refused_over_another_hash_key_or_purpose() {
        let author = key(9);
        let public = author.verifying_key().to_bytes();
        let signature = sign_change(&author, &[0xab; 32]);
        assert_eq!(verify_change(&public, &[0xac; 32], &signature), Err(SignatureError::Invalid));
        let other = key(10).verifying_key().to_bytes();
        assert_eq!(verify_change(&other, &[0xab; 32], &signature), Err(SignatureError::Invalid));
        // A plain signature over the hash (as a careless caller might make) is not a change
        // signature, and a change signature is not a plain one.
        let plain = author.sign(&[0xab; 32]).to_bytes();
        assert_eq!(verify_change(&public, &[0xab; 32], &plain), Err(SignatureError::Invalid));
        assert!(author.verifying_key().verify_strict(&[0xab; 32], &Signature::from_bytes(&signature)).is_err());
        // Not a curve point (y = 2 has no x on edwards25519).
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert_eq!(verify_change(&off_curve, &[0xab; 32], &signature), Err(SignatureError::PublicKey));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn grant_decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SignedGrant::decode(&bytes, &key(1).verifying_key());
        }

        #[test]
        fn grant_decode_never_panics_behind_valid_magic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut input = GRANT_MAGIC.to_vec();
            input.extend_from_slice(&bytes);
            prop_assert!(SignedGrant::decode(&input, &key(1).verifying_key()).is_err());
        }

        #[test]
        fn grant_decode_refuses_mutated_grants(index in 0usize..200, value in any::<u8>()) {
            let bytes = SignedGrant::issue(mediator(), &key(1)).unwrap().as_bytes().to_vec();
            let index = index % bytes.len();
            prop_assume!(bytes[index] != value);
            let mut mutated = bytes;
            mutated[index] = value;
            prop_assert!(SignedGrant::decode(&mutated, &key(1).verifying_key()).is_err());
        }
    }
}
