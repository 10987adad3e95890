//! The county's private certificate authority (`fq-server ca init|issue|revoke`).
//!
//! One CA per county; its directory holds:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.key.pem` | the CA's Ed25519 key (PKCS#8), mode 0600 |
//! | `ca.cert.pem` | the self-signed CA certificate, naming the county as `urn:fq:ca:{county}` |
//! | `issued.jsonl` | the ledger: one JSON line per certificate ever issued (serial, id, role, scope) |
//! | `revocations.json` | the current signed [`RevocationList`] (version 0, empty, after `init`) |
//! | `policy.json` | the newest signed county policy and roster ([`SignedPolicy`], `ca policy`), if any |
//!
//! Every certificate carries its holder's identity as a SAN URI `urn:fq:{role}:{scope}:{id}`
//! (plus the DNS name [`SERVER_NAME`] for servers) and has an Ed25519 key, which also signs
//! the holder's change envelopes. The CA writes the ledger line *before* it hands out a
//! certificate, so every certificate in the field can be found and revoked by id.
//!
//! Beside each certificate the CA signs a [`SignedGrant`] (see [`fq_core::trust`]) for the
//! same key, subject, role, scope and serial. Relays forward changes unchanged, so the county
//! checks each one against its author's grant with Ed25519 alone; the core never parses X.509.
//! Roles and division codes are the core's types, re-exported here.
//!
//! The CA is an offline tool run by one operator; two `issue`/`revoke` runs at the same time on
//! the same directory are not supported.

mod bundle;
mod identity;
mod revocation;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use fq_core::clock::Timestamp;
use fq_core::policy::{Area, PolicyError, SignedPolicy};
use fq_core::roster::Staff;
use fq_core::trust::Grant;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use bundle::{BUNDLE_FORMAT, Bundle, BundleError, MAX_BUNDLE_BYTES};
pub use fq_core::case::{AdminCode, AdminLevel};
pub use fq_core::trust::{GrantError, GrantRole, SignedGrant};
pub use identity::{CaCertificate, IdentityError, ParseError, PeerIdentity, Serial, SubjectId};
pub use revocation::{
    MAX_REVOCATION_LIST_BYTES, MAX_REVOKED_SERIALS, REVOCATION_FORMAT, RevocationError, RevocationHandle,
    RevocationList, RevocationUpdate,
};

/// DNS name in every server certificate; clients connect with this server name, whatever the
/// server's address (servers are found by address, not by DNS, in the field).
pub const SERVER_NAME: &str = "fq-server";
/// File name of the CA key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.cert.pem";
/// File name of the issued-certificates ledger in a CA directory.
pub const ISSUED_FILE: &str = "issued.jsonl";
/// File name of the current revocation list in a CA directory.
pub const REVOCATIONS_FILE: &str = "revocations.json";
/// File name of the newest signed county policy in a CA directory.
pub const POLICY_FILE: &str = "policy.json";

/// How long the CA certificate is valid. Re-keying a county means visiting every device.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a device or server certificate is valid (capped by the CA's own expiry).
/// Revocation, not expiry, is how a lost phone is shut out.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from this long before they are issued: a village phone whose clock
/// is a little behind must still accept a server certificate issued today.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why `ca init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory already holds a CA; it is never overwritten.
    #[error("a ca already exists in {0}")]
    AlreadyExists(PathBuf),
    /// The county code is not a 6-digit county code.
    #[error("{0} is not a county code (6 digits)")]
    NotCounty(AdminCode),
    /// Key or certificate generation failed.
    #[error("ca certificate generation failed")]
    Generate(#[source] rcgen::Error),
    /// The system random number generator failed.
    #[error("random serial generation failed: {0}")]
    Random(getrandom::Error),
    /// A file of the new CA could not be written.
    #[error("ca file {path} could not be written")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The freshly made CA could not be read back.
    #[error("new ca is unreadable")]
    Open(#[source] Box<OpenError>),
}

impl InitError {
    /// True when the operator's input was at fault (exit code 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::AlreadyExists(_) | Self::NotCounty(_))
    }
}

/// Why a CA directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory holds no CA (no key or certificate file).
    #[error("no ca in {0} (run `fq-server ca init` first)")]
    Missing(PathBuf),
    /// A CA file could not be read.
    #[error("ca file {path} could not be read")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The CA certificate is not a valid fq CA certificate.
    #[error("ca certificate is invalid")]
    Certificate(#[source] IdentityError),
    /// The CA key cannot be read as an Ed25519 PKCS#8 key.
    #[error("ca key is invalid: {0}")]
    Key(String),
    /// The CA key does not belong to the CA certificate.
    #[error("ca key does not match the ca certificate")]
    KeyMismatch,
    /// The stored revocation list is unreadable or not signed by this CA.
    #[error("ca revocation list is invalid")]
    Revocations(#[source] RevocationError),
    /// A line of the issued-certificates ledger is not valid.
    #[error("issued-certificates ledger line {line} is invalid")]
    Ledger {
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl OpenError {
    /// True when the operator's input was at fault (exit code 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Missing(_))
    }
}

/// Why `ca issue` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The CA directory could not be opened.
    #[error("cannot open ca")]
    Open(#[source] OpenError),
    /// The scope does not fit the role ([`GrantError::RoleScopeMismatch`]) or lies outside
    /// the CA's county ([`GrantError::OutsideCounty`]).
    #[error(transparent)]
    Scope(GrantError),
    /// Key or certificate generation failed.
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
    /// The system random number generator failed.
    #[error("random serial generation failed: {0}")]
    Random(getrandom::Error),
    /// The ledger could not be appended to.
    #[error("issued-certificates ledger {path} could not be written")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The grant for the new certificate could not be signed (a bug in the CA).
    #[error("grant could not be issued")]
    Grant(#[source] GrantError),
    /// The issued certificate did not make a valid bundle (a bug in the CA).
    #[error("issued bundle is invalid")]
    Bundle(#[source] BundleError),
}

impl IssueError {
    /// True when the operator's input was at fault (exit code 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Open(e) => e.is_bad_input(),
            Self::Scope(_) => true,
            _ => false,
        }
    }
}

/// Why `ca revoke` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The CA directory could not be opened, or its ledger or list read.
    #[error("cannot open ca")]
    Open(#[source] OpenError),
    /// The ledger has no certificate for this id.
    #[error("no certificate was issued to {0}")]
    UnknownId(SubjectId),
    /// The new list could not be written.
    #[error("revocation list could not be saved")]
    Save(#[source] RevocationError),
}

impl RevokeError {
    /// True when the operator's input was at fault (exit code 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Open(e) => e.is_bad_input(),
            Self::UnknownId(_) => true,
            Self::Save(_) => false,
        }
    }
}

/// Why `ca policy` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyIssueError {
    /// The CA directory could not be opened.
    #[error("cannot open ca")]
    Open(#[source] OpenError),
    /// The policy signed before, in the CA directory, is unreadable or not this CA's.
    #[error("the ca's current policy {path} is unusable")]
    Current {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PolicyError,
    },
    /// The policy text or roster is not one replicas would accept: nothing is signed.
    #[error(transparent)]
    Policy(PolicyError),
    /// The signed policy could not be written.
    #[error("signed policy {path} could not be written")]
    Save {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl PolicyIssueError {
    /// True when the operator's input was at fault (exit code 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Open(e) => e.is_bad_input(),
            Self::Policy(_) => true,
            _ => false,
        }
    }
}

/// One line of the issued-certificates ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IssuedCertificate {
    /// The certificate's serial.
    pub serial: Serial,
    /// Holder's subject id.
    pub id: SubjectId,
    /// Holder's role.
    pub role: GrantRole,
    /// Holder's scope.
    pub scope: AdminCode,
    /// When it was issued (seconds since the Unix epoch).
    pub issued_at: u64,
    /// When it expires (seconds since the Unix epoch).
    pub not_after: u64,
}

/// What `revoke` did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Revocation {
    /// Serials of the id that this call added to the list (empty if all were revoked already,
    /// in which case no new version was signed).
    pub newly_revoked: Vec<Serial>,
    /// The list in force after the call.
    pub list: RevocationList,
}

/// An opened CA directory.
pub struct CertificateAuthority {
    dir: PathBuf,
    certificate: CaCertificate,
    key: KeyPair,
    signing_key: SigningKey,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("county", self.certificate.county())
            .field("key", &"[elided]")
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a CA for `county` in `dir` (created if missing, mode 0700 then): key, self-signed
    /// certificate, empty ledger and an empty revocation list at version 0. Refuses a directory
    /// that already holds a CA key or certificate.
    pub fn init(dir: &Path, county: &AdminCode, now: SystemTime) -> Result<Self, InitError> {
        if county.level() != AdminLevel::County {
            return Err(InitError::NotCounty(county.clone()));
        }
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        if key_path.exists() || cert_path.exists() {
            return Err(InitError::AlreadyExists(dir.to_owned()));
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| InitError::Io { path, source }
        };
        if !dir.exists() {
            create_private_dir(dir).map_err(io_err(dir))?;
        }

        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(InitError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("fq county {county} CA"));
        params.distinguished_name.push(DnType::OrganizationName, "fq");
        params.subject_alt_names =
            vec![SanType::URI(Ia5String::try_from(identity::ca_uri(county)).map_err(InitError::Generate)?)];
        // Path length 0: the county CA signs devices and servers, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let serial = Serial::random().map_err(InitError::Random)?;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        let start = OffsetDateTime::from(now);
        params.not_before = start - CLOCK_SKEW_ALLOWANCE;
        params.not_after = start + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(InitError::Generate)?;

        // create_new: two concurrent inits cannot both believe they made the key.
        write_new_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                InitError::AlreadyExists(dir.to_owned())
            } else {
                InitError::Io { path: key_path.clone(), source }
            }
        })?;
        write_new_file(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io_err(&cert_path))?;
        let ledger = dir.join(ISSUED_FILE);
        write_new_file(&ledger, b"", 0o644).map_err(io_err(&ledger))?;

        let signing_key = SigningKey::from_pkcs8_der(key.serialized_der())
            .map_err(|e| InitError::Open(Box::new(OpenError::Key(e.to_string()))))?;
        let empty = RevocationList::sign(county.clone(), 0, now, BTreeSet::new(), &signing_key);
        let list_path = dir.join(REVOCATIONS_FILE);
        empty.save(&list_path).map_err(|e| match e {
            RevocationError::Io { source, .. } => InitError::Io { path: list_path.clone(), source },
            other => InitError::Open(Box::new(OpenError::Revocations(other))),
        })?;
        Self::open(dir).map_err(|e| InitError::Open(Box::new(e)))
    }

    /// Opens an existing CA directory and checks that its key matches its certificate.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        if !key_path.exists() || !cert_path.exists() {
            return Err(OpenError::Missing(dir.to_owned()));
        }
        let read =
            |path: &Path| fs::read_to_string(path).map_err(|source| OpenError::Io { path: path.to_owned(), source });
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let certificate = CaCertificate::from_pem(&cert_pem).map_err(OpenError::Certificate)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| OpenError::Key(e.to_string()))?;
        let signing_key =
            SigningKey::from_pkcs8_der(key.serialized_der()).map_err(|e| OpenError::Key(e.to_string()))?;
        if &signing_key.verifying_key() != certificate.verifying_key() {
            return Err(OpenError::KeyMismatch);
        }
        let (_, x509) = x509_parser::parse_x509_certificate(certificate.der().as_ref())
            .map_err(|e| OpenError::Certificate(IdentityError::Der(e.to_string())))?;
        let not_after = x509.validity().not_after.to_datetime();
        Ok(Self { dir: dir.to_owned(), certificate, key, signing_key, not_after })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CaCertificate {
        &self.certificate
    }

    /// The county this CA serves.
    pub fn county(&self) -> &AdminCode {
        self.certificate.county()
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The revocation list in force (read from the directory and checked against the CA).
    pub fn revocations(&self) -> Result<RevocationList, OpenError> {
        let list = RevocationList::load(&self.dir.join(REVOCATIONS_FILE)).map_err(OpenError::Revocations)?;
        list.verify(&self.certificate).map_err(OpenError::Revocations)?;
        Ok(list)
    }

    /// Every certificate this CA has issued, oldest first.
    pub fn issued(&self) -> Result<Vec<IssuedCertificate>, OpenError> {
        let path = self.dir.join(ISSUED_FILE);
        let file = File::open(&path).map_err(|source| OpenError::Io { path: path.clone(), source })?;
        let mut out = Vec::new();
        for (n, line) in io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| OpenError::Io { path: path.clone(), source })?;
            if line.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&line).map_err(|source| OpenError::Ledger { line: n + 1, source })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// Issues a certificate and a grant for `id` with `role` over `scope` and returns the
    /// holder's bundle (not yet saved). The scope must fit the role and lie inside the county.
    /// The serial is recorded in the ledger before the bundle is returned.
    pub fn issue(
        &self,
        id: &SubjectId,
        role: GrantRole,
        scope: &AdminCode,
        now: SystemTime,
    ) -> Result<Bundle, IssueError> {
        // The grant's own rules, checked before anything is generated: the certificate may only
        // say what a grant may say.
        role.check_scope(self.county(), scope).map_err(IssueError::Scope)?;
        let revocations = self.revocations().map_err(IssueError::Open)?;

        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(IssueError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id.as_str());
        params.distinguished_name.push(DnType::OrganizationName, "fq");
        let uri = identity::identity_uri(role, scope, id);
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri).map_err(IssueError::Generate)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role.is_server() {
            params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from(SERVER_NAME).map_err(IssueError::Generate)?));
            // A township server is also a client: it dials the county server.
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let (grant_serial, serial) = identity::random_serial().map_err(IssueError::Random)?;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        let start = OffsetDateTime::from(now);
        params.not_before = start - CLOCK_SKEW_ALLOWANCE;
        params.not_after = (start + LEAF_VALIDITY).min(self.not_after);

        let issuer = Issuer::from_ca_cert_der(self.certificate.der(), &self.key).map_err(IssueError::Generate)?;
        let cert = params.signed_by(&key, &issuer).map_err(IssueError::Generate)?;
        let public_key: [u8; 32] =
            key.public_key_raw().try_into().map_err(|_| IssueError::Grant(GrantError::PublicKey))?;
        let grant = Grant {
            county: self.county().clone(),
            subject: id.as_str().to_owned(),
            role,
            scope: scope.clone(),
            serial: grant_serial,
            public_key,
            issued_at: unix_millis(now),
        };
        let grant = SignedGrant::issue(grant, &self.signing_key).map_err(IssueError::Grant)?;

        let entry = IssuedCertificate {
            serial,
            id: id.clone(),
            role,
            scope: scope.clone(),
            issued_at: unix_seconds(now),
            not_after: unix_seconds(params.not_after.into()),
        };
        self.append_ledger(&entry)?;

        Bundle::from_parts(cert.pem(), key.serialize_pem(), self.certificate.pem().to_owned(), &grant, revocations)
            .map_err(IssueError::Bundle)
    }

    /// Revokes every certificate issued to `id`: signs and stores a new revocation list with
    /// the next version. If all of them were revoked already, nothing changes.
    pub fn revoke(&self, id: &SubjectId, now: SystemTime) -> Result<Revocation, RevokeError> {
        let serials: Vec<Serial> = self
            .issued()
            .map_err(RevokeError::Open)?
            .into_iter()
            .filter(|entry| &entry.id == id)
            .map(|entry| entry.serial)
            .collect();
        if serials.is_empty() {
            return Err(RevokeError::UnknownId(id.clone()));
        }
        let current = self.revocations().map_err(RevokeError::Open)?;
        let newly_revoked: Vec<Serial> = serials
            .into_iter()
            .filter(|serial| !current.contains(serial))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if newly_revoked.is_empty() {
            return Ok(Revocation { newly_revoked, list: current });
        }
        let mut all = current.serials().clone();
        all.extend(newly_revoked.iter().cloned());
        let list = RevocationList::sign(self.county().clone(), current.version() + 1, now, all, &self.signing_key);
        list.save(&self.dir.join(REVOCATIONS_FILE)).map_err(RevokeError::Save)?;
        Ok(Revocation { newly_revoked, list })
    }

    /// The newest county policy this CA signed, if any (checked against the CA).
    pub fn policy(&self) -> Result<Option<SignedPolicy>, PolicyIssueError> {
        let path = self.dir.join(POLICY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PolicyIssueError::Save { path, source }),
        };
        SignedPolicy::from_json(&bytes, self.certificate.verifying_key())
            .map(Some)
            .map_err(|source| PolicyIssueError::Current { path, source })
    }

    /// Signs a county policy with the next version (the CA's newest plus
    /// one) and keeps it in the CA directory ([`POLICY_FILE`]). `roster`
    /// (the staff and the division names) replaces the roster; `None` keeps
    /// the one of the newest policy (or none). A text or roster replicas
    /// would refuse is refused here, before anything is signed.
    pub fn sign_policy(
        &self,
        text: &str,
        roster: Option<(Vec<Staff>, Vec<Area>)>,
        now: SystemTime,
    ) -> Result<SignedPolicy, PolicyIssueError> {
        let current = self.policy()?;
        let version = current.as_ref().map_or(0, SignedPolicy::version) + 1;
        let (staff, areas) = match roster {
            Some(r) => r,
            None => current.map(|c| (c.staff().to_vec(), c.areas().to_vec())).unwrap_or_default(),
        };
        let at = Timestamp(unix_millis(now));
        let signed = SignedPolicy::sign(self.county(), version, at, text, staff, areas, &self.signing_key)
            .map_err(PolicyIssueError::Policy)?;
        let path = self.dir.join(POLICY_FILE);
        let json = signed.to_json().map_err(PolicyIssueError::Policy)?;
        replace_file(&path, &json, 0o644).map_err(|source| PolicyIssueError::Save { path, source })?;
        Ok(signed)
    }

    fn append_ledger(&self, entry: &IssuedCertificate) -> Result<(), IssueError> {
        let path = self.dir.join(ISSUED_FILE);
        let io_err = |source| IssueError::Ledger { path: path.clone(), source };
        let mut line = serde_json::to_vec(entry).map_err(|e| io_err(io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = OpenOptions::new().append(true).open(&path).map_err(io_err)?;
        file.write_all(&line).map_err(io_err)?;
        // The ledger is how a lost device is found again: it must be on disk before the
        // certificate leaves the CA.
        file.sync_all().map_err(io_err)
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes a file holding a secret (a key, a bundle): mode 0600, replaced atomically.
pub(crate) fn write_secret_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, 0o600)
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, syncs it, renames it over
/// `path` and syncs the directory: readers see the old file or the new one, never a torn one,
/// and after a power cut the new one is there if this returned.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A stale temporary file may have looser permissions; never write a secret into it.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_new_file(&tmp, bytes, mode)?;
    fs::rename(&tmp, path)?;
    sync_parent_dir(path)
}

/// Makes a rename in `path`'s directory durable (the rename is an entry of the directory).
#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates `path` (failing if it exists) with `mode`, writes `bytes` and syncs.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}
