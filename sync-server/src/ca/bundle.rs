//! A bundle: everything a device or server needs to prove who it is and to check its peers,
//! in one JSON file (`schemas/bundle.v1.schema.json`, which describes format 2).
//!
//! A bundle is checked whole when it is loaded: the certificate must be signed by the bundled
//! CA, name the same id, role and scope as the bundle, and match the private key; the grant
//! must be signed by the CA key and say what the certificate says (key, subject, role, scope,
//! serial, county); the revocation list must be signed by the CA. A bundle that loads is
//! consistent.
//!
//! Format 2 added the grant. A format 1 bundle cannot be upgraded where it is loaded (only the
//! CA can sign a grant), so it is refused with a message asking for a new bundle.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use fq_core::case::AdminCode;
use fq_core::trust::{GrantError, GrantRole, MAX_GRANT_BYTES, SignedGrant};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::identity::{CaCertificate, IdentityError, PeerIdentity, Serial, SubjectId, cert_der_from_pem};
use super::revocation::{RevocationError, RevocationList, RevocationUpdate};
use super::write_secret_file;

/// Version of the bundle's JSON layout. 2: a CA-signed grant beside the certificate.
pub const BUNDLE_FORMAT: u32 = 2;
/// Largest bundle file read: a revocation list at its limit plus three PEM blocks.
pub const MAX_BUNDLE_BYTES: u64 = 8 * 1024 * 1024;

/// Why a bundle could not be loaded, checked or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing the bundle file failed.
    #[error("bundle file {path} could not be {op}")]
    Io {
        /// What was being done: `read` or `written`.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle file is {0} bytes, more than {MAX_BUNDLE_BYTES}")]
    TooLarge(u64),
    /// The text is not a bundle.
    #[error("bundle is not valid json")]
    Decode(#[source] serde_json::Error),
    /// Serializing the bundle failed.
    #[error("bundle could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// The bundle's layout version is not one this build reads.
    #[error("bundle format {0} is not supported (expected {BUNDLE_FORMAT})")]
    Format(u32),
    /// A format 1 bundle: it has no grant, so its holder's changes could not be verified.
    #[error("bundle format {0} has no grant and is no longer read; issue a new bundle with `fq-server ca issue`")]
    Outdated(u32),
    /// The `grant` field is not hex.
    #[error("bundle grant is not hex")]
    GrantEncoding,
    /// The grant is not a valid grant signed by the bundled CA.
    #[error("bundle grant is invalid")]
    Grant(#[source] GrantError),
    /// The bundle's own certificate cannot be read as an fq identity.
    #[error("bundle certificate is invalid")]
    Certificate(#[source] IdentityError),
    /// The bundled CA certificate cannot be read.
    #[error("bundle ca certificate is invalid")]
    CaCertificate(#[source] IdentityError),
    /// A field of the bundle, or of its grant, disagrees with the certificate or the CA.
    #[error("bundle {field} is {bundle} but its certificate says {certificate}")]
    Mismatch {
        /// Which field.
        field: &'static str,
        /// Value in the bundle's JSON.
        bundle: String,
        /// Value in the certificate (or the CA certificate, for `county`).
        certificate: String,
    },
    /// The certificate was not signed by the bundled CA.
    #[error("bundle certificate is not signed by the bundled ca")]
    NotSignedByCa,
    /// The private key cannot be read as a PKCS#8 Ed25519 key.
    #[error("bundle private key is invalid: {0}")]
    PrivateKey(String),
    /// The private key does not belong to the certificate.
    #[error("bundle private key does not match its certificate")]
    KeyMismatch,
    /// The bundled revocation list is not valid for the bundled CA.
    #[error("bundle revocation list is invalid")]
    Revocations(#[source] RevocationError),
}

/// The JSON layout of a bundle file; see `schemas/bundle.v1.schema.json`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    format: u32,
    id: SubjectId,
    role: GrantRole,
    scope: AdminCode,
    county: AdminCode,
    serial: Serial,
    /// The signed grant ([`SignedGrant::bytes`]), lowercase hex.
    grant: String,
    certificate_pem: String,
    private_key_pem: String,
    ca_certificate_pem: String,
    revocations: RevocationList,
}

/// Just the layout version, read before the rest so that an old bundle gets a clear message
/// instead of a complaint about a missing field.
#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

/// A device's or server's credentials: its certificate and private key, the grant issued with
/// them, the county CA, and the revocation list it last saw.
pub struct Bundle {
    file: BundleFile,
    identity: PeerIdentity,
    grant: SignedGrant,
    ca: CaCertificate,
    certificate: CertificateDer<'static>,
    private_key: PrivatePkcs8KeyDer<'static>,
    signing_key: SigningKey,
}

impl Clone for Bundle {
    fn clone(&self) -> Self {
        Self {
            file: self.file.clone(),
            identity: self.identity.clone(),
            grant: self.grant.clone(),
            ca: self.ca.clone(),
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone_key(),
            signing_key: self.signing_key.clone(),
        }
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("identity", &self.identity)
            .field("county", &self.ca.county())
            .field("revocations", &self.file.revocations.version())
            .field("private_key", &"[elided]")
            .finish()
    }
}

impl Bundle {
    /// Assembles and checks a bundle from PEM parts (used by the CA when it issues).
    pub(crate) fn from_parts(
        certificate_pem: String,
        private_key_pem: String,
        ca_certificate_pem: String,
        grant: &SignedGrant,
        revocations: RevocationList,
    ) -> Result<Self, BundleError> {
        let der = cert_der_from_pem(&certificate_pem).map_err(BundleError::Certificate)?;
        let identity = PeerIdentity::from_der(der.as_ref()).map_err(BundleError::Certificate)?;
        let ca = CaCertificate::from_pem(&ca_certificate_pem).map_err(BundleError::CaCertificate)?;
        let file = BundleFile {
            format: BUNDLE_FORMAT,
            id: identity.id.clone(),
            role: identity.role,
            scope: identity.scope.clone(),
            county: ca.county().clone(),
            serial: identity.serial.clone(),
            grant: hex::encode(&grant.bytes),
            certificate_pem,
            private_key_pem,
            ca_certificate_pem,
            revocations,
        };
        Self::check(file)
    }

    /// Reads and checks a bundle file.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let io = |source| BundleError::Io { op: "read", path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(len));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_json(&bytes)
    }

    /// Parses and checks a bundle from its JSON text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(bytes.len() as u64));
        }
        let probe: FormatProbe = serde_json::from_slice(bytes).map_err(BundleError::Decode)?;
        match probe.format {
            BUNDLE_FORMAT => {}
            1 => return Err(BundleError::Outdated(1)),
            other => return Err(BundleError::Format(other)),
        }
        let file: BundleFile = serde_json::from_slice(bytes).map_err(BundleError::Decode)?;
        Self::check(file)
    }

    /// The bundle as pretty JSON. Holds the private key: handle like the key itself.
    pub fn to_json(&self) -> Result<Vec<u8>, BundleError> {
        serde_json::to_vec_pretty(&self.file).map_err(BundleError::Encode)
    }

    /// Writes the bundle to `path`, readable by its owner only (0600), replacing the file
    /// atomically (a crash leaves the old bundle or the new one, never half of one).
    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        let bytes = self.to_json()?;
        write_secret_file(path, &bytes).map_err(|source| BundleError::Io {
            op: "written",
            path: path.to_owned(),
            source,
        })
    }

    fn check(file: BundleFile) -> Result<Self, BundleError> {
        if file.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(file.format));
        }
        let ca = CaCertificate::from_pem(&file.ca_certificate_pem).map_err(BundleError::CaCertificate)?;
        let certificate = cert_der_from_pem(&file.certificate_pem).map_err(BundleError::Certificate)?;
        let (_, x509) = x509_parser::parse_x509_certificate(certificate.as_ref())
            .map_err(|e| BundleError::Certificate(IdentityError::Der(e.to_string())))?;
        let identity = PeerIdentity::from_x509(&x509).map_err(BundleError::Certificate)?;
        if !ca.signed(&x509) {
            return Err(BundleError::NotSignedByCa);
        }
        mismatch("id", &file.id, &identity.id)?;
        mismatch("role", &file.role, &identity.role)?;
        mismatch("scope", &file.scope, &identity.scope)?;
        mismatch("serial", &file.serial, &identity.serial)?;
        mismatch("county", &file.county, ca.county())?;
        if !ca.county().contains(&identity.scope) {
            return Err(BundleError::Mismatch {
                field: "scope",
                bundle: identity.scope.to_string(),
                certificate: format!("ca county {}", ca.county()),
            });
        }
        let private_key = PrivatePkcs8KeyDer::from_pem_slice(file.private_key_pem.as_bytes())
            .map_err(|e| BundleError::PrivateKey(e.to_string()))?;
        let signing_key = SigningKey::from_pkcs8_der(private_key.secret_pkcs8_der())
            .map_err(|e| BundleError::PrivateKey(e.to_string()))?;
        if signing_key.verifying_key() != identity.public_key {
            return Err(BundleError::KeyMismatch);
        }
        let grant = check_grant(&file.grant, &ca, &identity)?;
        file.revocations.verify(&ca).map_err(BundleError::Revocations)?;
        Ok(Self { file, identity, grant, ca, certificate, private_key, signing_key })
    }

    /// The holder's identity, as its certificate states it.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The holder's subject id.
    pub fn id(&self) -> &SubjectId {
        &self.identity.id
    }

    /// The holder's role.
    pub fn role(&self) -> GrantRole {
        self.identity.role
    }

    /// The holder's scope.
    pub fn scope(&self) -> &AdminCode {
        &self.identity.scope
    }

    /// The county of the CA that issued the bundle.
    pub fn county(&self) -> &AdminCode {
        self.ca.county()
    }

    /// The certificate's serial.
    pub fn serial(&self) -> &Serial {
        &self.identity.serial
    }

    /// The holder's certificate (DER), presented in TLS.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The holder's certificate (PEM).
    pub fn certificate_pem(&self) -> &str {
        &self.file.certificate_pem
    }

    /// The holder's private key (PKCS#8 DER), for TLS.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.private_key.clone_key())
    }

    /// The county CA, the only trust anchor.
    pub fn ca(&self) -> &CaCertificate {
        &self.ca
    }

    /// The county CA's Ed25519 key: what [`SignedGrant::decode`] needs to check grants from
    /// this county.
    pub fn ca_verifying_key(&self) -> VerifyingKey {
        *self.ca.verifying_key()
    }

    /// The grant issued with the certificate: the holder's key, subject, role, scope and
    /// serial, signed by the CA for replicas that do not read X.509. Checked on load against
    /// the CA key and the certificate.
    pub fn grant(&self) -> &SignedGrant {
        &self.grant
    }

    /// The revocation list the bundle carries (checked against the CA on load).
    pub fn revocations(&self) -> &RevocationList {
        &self.file.revocations
    }

    /// Replaces the carried revocation list if `list` is signed by the CA and newer. Call
    /// [`Bundle::save`] afterwards to keep it.
    pub fn update_revocations(&mut self, list: RevocationList) -> Result<RevocationUpdate, RevocationError> {
        list.verify(&self.ca)?;
        let current = self.file.revocations.version();
        if list.version() <= current {
            return Ok(RevocationUpdate::Stale { offered: list.version(), current });
        }
        let version = list.version();
        self.file.revocations = list;
        Ok(RevocationUpdate::Installed { previous: current, version })
    }

    /// The Ed25519 secret key of the certificate; it also signs the holder's change envelopes.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The Ed25519 public key of the certificate.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.identity.public_key
    }

    /// The raw 32 bytes of the certificate's Ed25519 public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.identity.public_key.to_bytes()
    }
}

/// Decodes the bundle's grant, checks the CA signed it, and that it says what the certificate
/// says: a grant from another bundle, even from the same CA, is refused.
fn check_grant(hex_text: &str, ca: &CaCertificate, identity: &PeerIdentity) -> Result<SignedGrant, BundleError> {
    // Bounded before decoding: the bundle may be megabytes (its revocation list), a grant not.
    if hex_text.len() > 2 * MAX_GRANT_BYTES {
        return Err(BundleError::Grant(GrantError::TooLarge(hex_text.len() / 2)));
    }
    let bytes = hex::decode(hex_text).map_err(|_| BundleError::GrantEncoding)?;
    let signed = SignedGrant::decode(&bytes, ca.verifying_key()).map_err(BundleError::Grant)?;
    let grant = &signed.grant;
    mismatch("grant public key", &hex::encode(grant.public_key), &hex::encode(identity.public_key.to_bytes()))?;
    mismatch("grant subject", &grant.subject.as_str(), &identity.id.as_str())?;
    mismatch("grant role", &grant.role, &identity.role)?;
    mismatch("grant scope", &grant.scope, &identity.scope)?;
    let certificate_serial = identity.serial.to_grant_serial().map_or_else(|| identity.serial.to_string(), hex::encode);
    mismatch("grant serial", &hex::encode(grant.serial), &certificate_serial)?;
    mismatch("grant county", &grant.county, ca.county())?;
    Ok(signed)
}

fn mismatch<T: PartialEq + fmt::Display>(field: &'static str, bundle: &T, certificate: &T) -> Result<(), BundleError> {
    if bundle == certificate {
        Ok(())
    } else {
        Err(BundleError::Mismatch { field, bundle: bundle.to_string(), certificate: certificate.to_string() })
    }
}
