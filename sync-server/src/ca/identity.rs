//! Who a certificate speaks for: subject id, role, scope and serial, and how they are written
//! into (and read back from) an X.509 certificate.
//!
//! A certificate names its holder in one SAN URI, `urn:fq:{role}:{scope}:{id}`, and repeats the
//! id as its common name. The URI is the source of truth: it is what the CA validated when it
//! signed, and what [`PeerIdentity::from_der`] reads on every accepted connection.
//!
//! Roles, division codes and the rules tying them together are the core's
//! ([`fq_core::trust::GrantRole`], [`fq_core::case::AdminCode`]): the certificate and the
//! [`fq_core::trust::Grant`] issued beside it must agree, so they share one definition.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use fq_core::case::{AdminCode, AdminLevel};
use fq_core::trust::{GrantError, GrantRole, check_subject};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_SIG_ED25519;

/// Prefix shared by every identity URI this CA writes.
const URN_PREFIX: &str = "urn:fq:";
/// RFC 5280 §4.1.2.2: serial numbers are at most 20 octets.
const MAX_SERIAL_BYTES: usize = 20;

/// Why an identifier given by a user or a peer was refused. (Roles and division codes are
/// parsed by the core and fail with [`fq_core::case::InputError`].)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The subject id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error(transparent)]
    Subject(GrantError),
    /// The serial number is not lowercase or uppercase hex of 1 to 20 bytes.
    #[error("invalid certificate serial {0:?}: expected 1-20 bytes of hex")]
    Serial(String),
}

/// The subject of a certificate (a device or server), as named in its common name and URI, and
/// in the grant issued with it. Not the core's UUID [`fq_core::case::ReplicaId`]: this is the
/// name the CA operator chose. `[A-Za-z0-9._-]{1,64}`, starting with a letter or digit (the
/// core's [`check_subject`]); never contains `:` (the URN separator).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectId(String);

impl SubjectId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SubjectId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_subject(s).map_err(ParseError::Subject)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a division code as the CA writes it: already in the core's canonical form. The
/// core's parser forgives what people type (spaces, dashes, full-width digits); a certificate
/// carries exactly what the CA validated, so anything else there is refused.
pub(crate) fn canonical_code(text: &str) -> Result<AdminCode, String> {
    let code = AdminCode::parse(text).map_err(|e| e.to_string())?;
    if code.as_str() != text {
        return Err(format!("division code {text:?} is not in canonical form"));
    }
    Ok(code)
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
        random_serial().map(|(_, serial)| serial)
    }

    /// The serial as the 16-byte big-endian number a grant carries (left-padded with zeros);
    /// `None` if it is longer than 16 bytes (never for serials this CA issues).
    pub fn to_grant_serial(&self) -> Option<[u8; 16]> {
        let pad = 16usize.checked_sub(self.0.len())?;
        let mut out = [0u8; 16];
        out[pad..].copy_from_slice(&self.0);
        Some(out)
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

/// A fresh random serial (see [`Serial::random`]) and the same serial as a grant carries it.
pub(crate) fn random_serial() -> Result<([u8; 16], Serial), getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    // The first byte is not zero, so the bytes are already the normalized serial.
    Ok((bytes, Serial(bytes.to_vec())))
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

serde_as_string!(SubjectId, Serial);

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
    /// The role in the URI does not fit its scope ([`GrantError::RoleScopeMismatch`]).
    #[error("certificate names a role its scope does not fit")]
    Scope(#[source] GrantError),
    /// The common name differs from the id in the URI.
    #[error("certificate common name {cn:?} differs from its id {id}")]
    CommonNameMismatch {
        /// Common name found (empty if none).
        cn: String,
        /// Id from the URI.
        id: SubjectId,
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
    /// Subject id (the certificate's common name and the id in its URI).
    pub id: SubjectId,
    /// Role granted by the CA.
    pub role: GrantRole,
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
pub(crate) fn identity_uri(role: GrantRole, scope: &AdminCode, id: &SubjectId) -> String {
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
    let county = canonical_code(county).map_err(IdentityError::NotCa)?;
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

fn parse_identity_uri(uri: &str) -> Result<(GrantRole, AdminCode, SubjectId), IdentityError> {
    let malformed = |reason: String| IdentityError::MalformedUri { uri: uri.to_owned(), reason };
    let rest = uri.strip_prefix(URN_PREFIX).ok_or_else(|| malformed("missing urn:fq: prefix".to_owned()))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let [role, scope, id] = parts.as_slice() else {
        return Err(malformed(format!("expected 3 parts after urn:fq:, got {}", parts.len())));
    };
    let role = GrantRole::parse(role).map_err(|e| malformed(e.to_string()))?;
    let scope = canonical_code(scope).map_err(malformed)?;
    let id: SubjectId = id.parse().map_err(|e: ParseError| malformed(e.to_string()))?;
    // The scope's own county always contains it: only the role's level can be wrong here.
    // Whether the scope lies in the CA's county is checked where the CA is known.
    role.check_scope(&scope.county(), &scope).map_err(IdentityError::Scope)?;
    Ok((role, scope, id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn subject_id_rejects_separators_and_empty() {
        let long = "x".repeat(65);
        for bad in ["", ":x", "a:b", "-lead", "a b", "é", long.as_str()] {
            assert!(bad.parse::<SubjectId>().is_err(), "{bad:?} accepted");
        }
        assert!("d07.phone_2-b".parse::<SubjectId>().is_ok());
        assert!("x".repeat(64).parse::<SubjectId>().is_ok());
    }

    #[test]
    fn canonical_code_refuses_what_only_people_may_type() {
        assert_eq!(canonical_code("532924101201").unwrap().as_str(), "532924101201");
        for bad in ["５３２９２４", "532924 101", "532924-101", "53292", "532900"] {
            assert!(canonical_code(bad).is_err(), "{bad:?} accepted");
        }
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
        assert_eq!(r.to_grant_serial().unwrap(), <[u8; 16]>::try_from(r.as_bytes()).unwrap());
        assert_eq!(a.to_grant_serial().unwrap()[13..], [0, 0x80, 1]);
        assert_eq!(a.to_grant_serial().unwrap()[..13], [0; 13]);
        assert!(Serial::from_der_integer(&[1; 17]).unwrap().to_grant_serial().is_none());
    }

    #[test]
    fn identity_uri_parse_reports_each_problem() {
        assert!(matches!(parse_identity_uri("urn:fq:mediator:532924101201"), Err(IdentityError::MalformedUri { .. })));
        assert!(matches!(parse_identity_uri("urn:fq:boss:532924101201:d07"), Err(IdentityError::MalformedUri { .. })));
        assert!(matches!(
            parse_identity_uri("urn:fq:mediator:532924101:d07"),
            Err(IdentityError::Scope(GrantError::RoleScopeMismatch { .. }))
        ));
        assert!(matches!(
            parse_identity_uri("urn:fq:mediator:532924 101201:d07"),
            Err(IdentityError::MalformedUri { .. })
        ));
        let (role, scope, id) = parse_identity_uri("urn:fq:grid-worker:532924101201:d07").unwrap();
        assert_eq!(role, GrantRole::GridWorker);
        assert_eq!(identity_uri(role, &scope, &id), "urn:fq:grid-worker:532924101201:d07");
        let (server, ..) = parse_identity_uri("urn:fq:township:532924101:tw-1").unwrap();
        assert_eq!(server, GrantRole::TownshipServer);
    }
}
