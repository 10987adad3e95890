//! Who a certificate speaks for: replica id, role, scope and serial, and how they are written
//! into (and read back from) an X.509 certificate.
//!
//! A certificate names its holder in one SAN URI, `urn:fq:{role}:{scope}:{id}`, and repeats the
//! id as its common name. The URI is the source of truth: it is what the CA validated when it
//! signed, and what [`PeerIdentity::from_der`] reads on every accepted connection.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_SIG_ED25519;

/// Prefix shared by every identity URI this CA writes.
const URN_PREFIX: &str = "urn:fq:";
/// Longest replica id accepted: it travels in every envelope, keep it short.
const MAX_REPLICA_ID_BYTES: usize = 64;
/// RFC 5280 §4.1.2.2: serial numbers are at most 20 octets.
const MAX_SERIAL_BYTES: usize = 20;

/// Why an identifier, role or scope given by a user or a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The replica id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid replica id {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit")]
    ReplicaId(String),
    /// The role is not one of the known roles.
    #[error("unknown role {0:?}: expected county, township, mediator, grid-worker, township-officer or county-admin")]
    Role(String),
    /// The administrative code is not 6, 9 or 12 ASCII digits.
    #[error("invalid administrative code {0:?}: expected 6, 9 or 12 digits")]
    AdminCode(String),
    /// The serial number is not lowercase or uppercase hex of 1 to 20 bytes.
    #[error("invalid certificate serial {0:?}: expected 1-20 bytes of hex")]
    Serial(String),
}

/// A replica's id (device or server), as named in its certificate. `[A-Za-z0-9._-]{1,64}`,
/// starting with a letter or digit; never contains `:` (the URN separator).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ReplicaId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        let all_ok = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if first_ok && all_ok && s.len() <= MAX_REPLICA_ID_BYTES {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::ReplicaId(s.to_owned()))
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Level of an administrative division, told by the length of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminLevel {
    /// 6 digits, e.g. `532924`.
    County,
    /// 9 digits, e.g. `532924101`.
    Township,
    /// 12 digits, e.g. `532924101201`.
    Village,
}

impl AdminLevel {
    /// Number of digits of a code at this level.
    pub fn digits(self) -> usize {
        match self {
            Self::County => 6,
            Self::Township => 9,
            Self::Village => 12,
        }
    }
}

impl fmt::Display for AdminLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::County => "county",
            Self::Township => "township",
            Self::Village => "village",
        })
    }
}

/// An administrative division code (county, township or village): 6, 9 or 12 ASCII digits.
/// A code contains another when it is a prefix of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminCode(String);

impl AdminCode {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// County, township or village, by length.
    pub fn level(&self) -> AdminLevel {
        match self.0.len() {
            6 => AdminLevel::County,
            9 => AdminLevel::Township,
            _ => AdminLevel::Village,
        }
    }

    /// True if `other` is this division or lies inside it.
    pub fn contains(&self, other: &AdminCode) -> bool {
        other.0.starts_with(&self.0)
    }

    /// The county (first 6 digits) this division belongs to.
    pub fn county(&self) -> AdminCode {
        Self(self.0[..6].to_owned())
    }
}

impl FromStr for AdminCode {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if matches!(s.len(), 6 | 9 | 12) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::AdminCode(s.to_owned()))
        }
    }
}

impl fmt::Display for AdminCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a certificate holder may do; each role belongs to one administrative level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The county server (runs the CA). Scope: a county.
    County,
    /// A township server. Scope: a township.
    Township,
    /// A village mediator's device. Scope: a village.
    Mediator,
    /// A grid worker's device. Scope: a village.
    GridWorker,
    /// A township officer's device. Scope: a township.
    TownshipOfficer,
    /// A county administrator's device. Scope: a county.
    CountyAdmin,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 6] =
        [Role::County, Role::Township, Role::Mediator, Role::GridWorker, Role::TownshipOfficer, Role::CountyAdmin];

    /// The name used in certificates, bundles and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::County => "county",
            Self::Township => "township",
            Self::Mediator => "mediator",
            Self::GridWorker => "grid-worker",
            Self::TownshipOfficer => "township-officer",
            Self::CountyAdmin => "county-admin",
        }
    }

    /// The administrative level this role's scope must have.
    pub fn scope_level(self) -> AdminLevel {
        match self {
            Self::County | Self::CountyAdmin => AdminLevel::County,
            Self::Township | Self::TownshipOfficer => AdminLevel::Township,
            Self::Mediator | Self::GridWorker => AdminLevel::Village,
        }
    }

    /// True for the tiers that run `fq-server` (and so accept connections).
    pub fn is_server(self) -> bool {
        matches!(self, Self::County | Self::Township)
    }
}

impl FromStr for Role {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| ParseError::Role(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate serial number, as the unsigned big-endian bytes of the DER integer with leading
/// zero bytes removed (so the same serial always compares equal, however it was encoded).
/// Written as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// A fresh random serial of exactly 16 bytes. The top bit of the first byte is cleared (DER
    /// integers are signed, the serial must be positive) and the byte is never zero (so the
    /// encoding keeps 16 bytes): about 126 bits of randomness.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 1;
        }
        Ok(Self(bytes.to_vec()))
    }

    /// A serial from the content bytes of a DER INTEGER (as `x509-parser`'s `raw_serial`).
    pub fn from_der_integer(raw: &[u8]) -> Result<Self, ParseError> {
        let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        let bytes = &raw[start..];
        if bytes.is_empty() || bytes.len() > MAX_SERIAL_BYTES {
            return Err(ParseError::Serial(hex::encode(raw)));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The serial's bytes, without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = hex::decode(s).map_err(|_| ParseError::Serial(s.to_owned()))?;
        Self::from_der_integer(&raw).map_err(|_| ParseError::Serial(s.to_owned()))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_string!(ReplicaId, AdminCode, Role, Serial);

/// Why a certificate could not be read as an fq identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The PEM text holds no certificate, or more than one.
    #[error("certificate pem is invalid: {0}")]
    Pem(String),
    /// The bytes are not an X.509 certificate.
    #[error("certificate is not valid der: {0}")]
    Der(String),
    /// The certificate has no subject alternative name extension, or it cannot be read.
    #[error("certificate has no readable subject alternative name")]
    MissingSan,
    /// The certificate names no `urn:fq:` URI.
    #[error("certificate has no urn:fq: uri in its subject alternative name")]
    MissingUri,
    /// The certificate names more than one `urn:fq:` URI: ambiguous, refused.
    #[error("certificate has {0} urn:fq: uris, expected one")]
    MultipleUris(usize),
    /// The identity URI does not have the form `urn:fq:{role}:{scope}:{id}` with valid parts.
    #[error("identity uri {uri:?} is malformed: {reason}")]
    MalformedUri {
        /// The URI as found in the certificate.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The role in the URI does not fit the length of its scope.
    #[error("role {role} needs a {needs} scope, got {scope}")]
    RoleScopeMismatch {
        /// Role named in the certificate.
        role: Role,
        /// Scope named in the certificate.
        scope: AdminCode,
        /// Level the role needs.
        needs: AdminLevel,
    },
    /// The common name differs from the id in the URI.
    #[error("certificate common name {cn:?} differs from its id {id}")]
    CommonNameMismatch {
        /// Common name found (empty if none).
        cn: String,
        /// Id from the URI.
        id: ReplicaId,
    },
    /// The key is not Ed25519.
    #[error("certificate key is not ed25519 ({algorithm})")]
    UnsupportedKey {
        /// OID of the key algorithm found.
        algorithm: String,
    },
    /// The serial number is empty or longer than 20 bytes.
    #[error("certificate serial is invalid")]
    Serial,
    /// A CA certificate was expected but this one is not a CA, or names no county.
    #[error("not an fq ca certificate: {0}")]
    NotCa(String),
}

/// The identity a peer proved in the TLS handshake, read from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// Replica id (the certificate's common name and the id in its URI).
    pub id: ReplicaId,
    /// Role granted by the CA.
    pub role: Role,
    /// Administrative division the role applies to.
    pub scope: AdminCode,
    /// Certificate serial, the key into the revocation list.
    pub serial: Serial,
    /// The certificate's Ed25519 key; the same key signs the holder's change envelopes.
    pub public_key: VerifyingKey,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Does not check the signature chain: the TLS
    /// layer did that (or [`crate::ca::Bundle::load`] does it for local bundles).
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Der(e.to_string()))?;
        Self::from_x509(&cert)
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>) -> Result<Self, IdentityError> {
        let uri = single_fq_uri(cert)?;
        let (role, scope, id) = parse_identity_uri(&uri)?;
        let cn = cert.subject().iter_common_name().next().and_then(|attr| attr.as_str().ok()).unwrap_or_default();
        if cn != id.as_str() {
            return Err(IdentityError::CommonNameMismatch { cn: cn.to_owned(), id });
        }
        let serial = Serial::from_der_integer(cert.raw_serial()).map_err(|_| IdentityError::Serial)?;
        let public_key = ed25519_key(cert)?;
        Ok(Self { id, role, scope, serial, public_key })
    }

    /// The `urn:fq:{role}:{scope}:{id}` URI this identity is written as.
    pub fn uri(&self) -> String {
        identity_uri(self.role, &self.scope, &self.id)
    }
}

/// The county CA's certificate: the trust anchor of every connection and the key that signs
/// revocation lists. Names its county in a `urn:fq:ca:{county}` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
    pem: String,
    county: AdminCode,
    key: VerifyingKey,
}

impl CaCertificate {
    /// Reads a CA certificate from PEM text holding exactly one certificate.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der = cert_der_from_pem(pem)?;
        Self::from_der(der.as_ref())
    }

    /// Reads a CA certificate from DER.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Der(e.to_string()))?;
        if !cert.is_ca() {
            return Err(IdentityError::NotCa("basic constraints do not allow signing".into()));
        }
        let county = ca_county(&cert)?;
        let key = ed25519_key(&cert)?;
        let der = CertificateDer::from(der.to_vec());
        let pem = pem_encode("CERTIFICATE", der.as_ref());
        Ok(Self { der, pem, county, key })
    }

    /// The certificate as DER, for root stores.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate as PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The county this CA serves; every scope it signs lies inside it.
    pub fn county(&self) -> &AdminCode {
        &self.county
    }

    /// The CA's Ed25519 key, which verifies certificates and revocation lists.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// True if `cert` carries a valid signature by this CA's key.
    pub(crate) fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        match x509_parser::parse_x509_certificate(self.der.as_ref()) {
            Ok((_, ca)) => cert.verify_signature(Some(ca.public_key())).is_ok(),
            Err(_) => false,
        }
    }
}

/// The one certificate in `pem`, as DER.
pub(crate) fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let first = certs
        .next()
        .ok_or_else(|| IdentityError::Pem("no certificate found".into()))?
        .map_err(|e| IdentityError::Pem(e.to_string()))?;
    if certs.next().is_some() {
        return Err(IdentityError::Pem("more than one certificate".into()));
    }
    Ok(first)
}

/// PEM text for `der` under `label`, with 64-column base64 lines (RFC 7468).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// Builds `urn:fq:{role}:{scope}:{id}`.
pub(crate) fn identity_uri(role: Role, scope: &AdminCode, id: &ReplicaId) -> String {
    format!("{URN_PREFIX}{role}:{scope}:{id}")
}

/// The URI a CA certificate carries to name its county.
pub(crate) fn ca_uri(county: &AdminCode) -> String {
    format!("{URN_PREFIX}ca:{county}")
}

/// Reads the county from a CA certificate's `urn:fq:ca:{county}` URI.
pub(crate) fn ca_county(cert: &X509Certificate<'_>) -> Result<AdminCode, IdentityError> {
    let uri = single_fq_uri(cert)?;
    let county = uri
        .strip_prefix(URN_PREFIX)
        .and_then(|rest| rest.strip_prefix("ca:"))
        .ok_or_else(|| IdentityError::NotCa(format!("uri {uri:?} names no county")))?;
    let county: AdminCode = county.parse().map_err(|e: ParseError| IdentityError::NotCa(e.to_string()))?;
    if county.level() != AdminLevel::County {
        return Err(IdentityError::NotCa(format!("{county} is not a county code")));
    }
    Ok(county)
}

/// The Ed25519 public key of a certificate.
pub(crate) fn ed25519_key(cert: &X509Certificate<'_>) -> Result<VerifyingKey, IdentityError> {
    let spki = cert.public_key();
    let unsupported = || IdentityError::UnsupportedKey { algorithm: spki.algorithm.algorithm.to_id_string() };
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(unsupported());
    }
    let bytes: [u8; 32] = spki.subject_public_key.data.as_ref().try_into().map_err(|_| unsupported())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| unsupported())
}

fn single_fq_uri(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    let san =
        cert.subject_alternative_name().map_err(|_| IdentityError::MissingSan)?.ok_or(IdentityError::MissingSan)?;
    // A set: the same URI written twice is still one identity.
    let uris: BTreeSet<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URN_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    let mut iter = uris.iter();
    match (iter.next(), uris.len()) {
        (Some(uri), 1) => Ok((*uri).to_owned()),
        (None, _) => Err(IdentityError::MissingUri),
        (Some(_), n) => Err(IdentityError::MultipleUris(n)),
    }
}

fn parse_identity_uri(uri: &str) -> Result<(Role, AdminCode, ReplicaId), IdentityError> {
    let malformed = |reason: String| IdentityError::MalformedUri { uri: uri.to_owned(), reason };
    let rest = uri.strip_prefix(URN_PREFIX).ok_or_else(|| malformed("missing urn:fq: prefix".to_owned()))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let [role, scope, id] = parts.as_slice() else {
        return Err(malformed(format!("expected 3 parts after urn:fq:, got {}", parts.len())));
    };
    let role: Role = role.parse().map_err(|e: ParseError| malformed(e.to_string()))?;
    let scope: AdminCode = scope.parse().map_err(|e: ParseError| malformed(e.to_string()))?;
    let id: ReplicaId = id.parse().map_err(|e: ParseError| malformed(e.to_string()))?;
    if role.scope_level() != scope.level() {
        return Err(IdentityError::RoleScopeMismatch { needs: role.scope_level(), role, scope });
    }
    Ok((role, scope, id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn admin_code_rejects_wrong_lengths_and_non_digits() {
        for bad in ["", "53292", "5329241", "53292410a", "５３２９２４", "5329241012013"] {
            assert!(bad.parse::<AdminCode>().is_err(), "{bad:?} accepted");
        }
        let village: AdminCode = "532924101201".parse().unwrap();
        assert_eq!(village.level(), AdminLevel::Village);
        assert_eq!(village.county().as_str(), "532924");
        assert!(village.county().contains(&village));
        assert!(!village.contains(&village.county()));
    }

    #[test]
    fn replica_id_rejects_separators_and_empty() {
        let long = "x".repeat(65);
        for bad in ["", ":x", "a:b", "-lead", "a b", "é", long.as_str()] {
            assert!(bad.parse::<ReplicaId>().is_err(), "{bad:?} accepted");
        }
        assert!("d07.phone_2-b".parse::<ReplicaId>().is_ok());
    }

    #[test]
    fn role_round_trips_through_text() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn serial_normalizes_leading_zeros() {
        let a = Serial::from_der_integer(&[0, 0, 0x80, 1]).unwrap();
        let b: Serial = "8001".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "8001");
        assert!(Serial::from_der_integer(&[0, 0]).is_err());
        assert!(Serial::from_der_integer(&[1; 21]).is_err());
        let r = Serial::random().unwrap();
        assert_eq!(r.as_bytes().len(), 16);
        assert!(r.as_bytes()[0] & 0x80 == 0);
    }

    #[test]
    fn identity_uri_parse_reports_each_problem() {
        assert!(matches!(parse_identity_uri("urn:fq:mediator:532924101201"), Err(IdentityError::MalformedUri { .. })));
        assert!(matches!(parse_identity_uri("urn:fq:boss:532924101201:d07"), Err(IdentityError::MalformedUri { .. })));
        assert!(matches!(
            parse_identity_uri("urn:fq:mediator:532924101:d07"),
            Err(IdentityError::RoleScopeMismatch { .. })
        ));
        let (role, scope, id) = parse_identity_uri("urn:fq:grid-worker:532924101201:d07").unwrap();
        assert_eq!(role, Role::GridWorker);
        assert_eq!(identity_uri(role, &scope, &id), "urn:fq:grid-worker:532924101201:d07");
    }
}
