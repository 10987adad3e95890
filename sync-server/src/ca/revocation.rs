//! The county's revocation list: which certificate serials are refused, signed by the CA key.
//!
//! The list travels as JSON (in bundles, and later down the tree with sync) but is trusted only
//! through its signature: an Ed25519 signature by the CA key over a canonical byte string
//! (see [`RevocationList::signed_bytes`]), never over the JSON text. Versions only grow: the CA
//! bumps the version on every change, and a [`RevocationHandle`] installs a list only if it is
//! newer than the one it holds, so a replayed old list can never un-revoke a device.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey};
use fq_core::case::AdminCode;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::{CaCertificate, Serial};

/// Version of the JSON layout of a revocation list.
pub const REVOCATION_FORMAT: u32 = 1;
/// Most serials a list may hold. A county has a few thousand devices; a list this long means
/// a bug or an attack, and refusing it bounds the memory a peer can make us spend.
pub const MAX_REVOKED_SERIALS: usize = 100_000;
/// Largest JSON text accepted for a list (100k serials of 16 bytes in hex fit in about 4 MiB).
pub const MAX_REVOCATION_LIST_BYTES: usize = 4 * 1024 * 1024;
/// Domain separation: a signature over a revocation list can never be mistaken for a
/// signature over a change envelope made with the same kind of key.
const SIGNING_CONTEXT: &[u8] = b"fq revocation list v1\0";

/// Why a revocation list was refused or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The list's layout version is not one this build reads.
    #[error("revocation list format {0} is not supported (expected {REVOCATION_FORMAT})")]
    Format(u32),
    /// The list was issued for another county than the CA it was checked against.
    #[error("revocation list is for county {list}, ca is for county {ca}")]
    WrongCounty {
        /// County named in the list.
        list: AdminCode,
        /// County of the CA.
        ca: AdminCode,
    },
    /// The signature does not verify with the CA key: not made by this CA, or altered since.
    #[error("revocation list version {version} is not signed by the ca")]
    BadSignature {
        /// Version the (untrusted) list claims.
        version: u64,
    },
    /// More serials than [`MAX_REVOKED_SERIALS`].
    #[error("revocation list holds {0} serials, more than {MAX_REVOKED_SERIALS}")]
    TooManySerials(usize),
    /// The JSON text is longer than [`MAX_REVOCATION_LIST_BYTES`].
    #[error("revocation list is {0} bytes, more than {MAX_REVOCATION_LIST_BYTES}")]
    TooLarge(usize),
    /// The JSON text is not a revocation list.
    #[error("revocation list is not valid json: {0}")]
    Decode(#[source] serde_json::Error),
    /// Serializing the list failed.
    #[error("revocation list could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// Reading or writing the list's file failed.
    #[error("revocation list file {path} could not be {op}")]
    Io {
        /// What was being done: `read` or `written`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A signed list of revoked certificate serials with a version that only grows.
///
/// Obtained from JSON ([`RevocationList::from_json`]) it is untrusted until
/// [`RevocationList::verify`] succeeds against the county CA; [`RevocationHandle::update`] does
/// that for you.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    format: u32,
    county: AdminCode,
    version: u64,
    /// Seconds since the Unix epoch when the CA signed this version.
    issued_at: u64,
    serials: BTreeSet<Serial>,
    #[serde(with = "signature_hex")]
    signature: Signature,
}

impl RevocationList {
    /// Signs a list with the CA key. Only the CA (see [`crate::ca::CertificateAuthority`]) calls
    /// this; everyone else receives lists.
    pub(crate) fn sign(
        county: AdminCode,
        version: u64,
        issued_at: SystemTime,
        serials: BTreeSet<Serial>,
        ca_key: &SigningKey,
    ) -> Self {
        let issued_at = issued_at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let mut list = Self {
            format: REVOCATION_FORMAT,
            county,
            version,
            issued_at,
            serials,
            signature: Signature::from_bytes(&[0; 64]),
        };
        list.signature = ca_key.sign(&list.signed_bytes());
        list
    }

    /// The list's version; a list with a higher version replaces one with a lower version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The revoked serials.
    pub fn serials(&self) -> &BTreeSet<Serial> {
        &self.serials
    }

    /// True if `serial` is revoked by this list.
    pub fn contains(&self, serial: &Serial) -> bool {
        self.serials.contains(serial)
    }

    /// The county whose CA signed the list.
    pub fn county(&self) -> &AdminCode {
        &self.county
    }

    /// When the CA signed this version (to the second).
    pub fn issued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.issued_at)
    }

    /// Checks that the county CA signed exactly this list. A list that fails is to be ignored,
    /// whoever sent it.
    pub fn verify(&self, ca: &CaCertificate) -> Result<(), RevocationError> {
        if self.format != REVOCATION_FORMAT {
            return Err(RevocationError::Format(self.format));
        }
        if &self.county != ca.county() {
            return Err(RevocationError::WrongCounty { list: self.county.clone(), ca: ca.county().clone() });
        }
        if self.serials.len() > MAX_REVOKED_SERIALS {
            return Err(RevocationError::TooManySerials(self.serials.len()));
        }
        ca.verifying_key()
            .verify_strict(&self.signed_bytes(), &self.signature)
            .map_err(|_| RevocationError::BadSignature { version: self.version })
    }

    /// The canonical bytes the CA signs: a context string, then every field in a fixed order
    /// with fixed-width big-endian integers and length-prefixed strings, serials in ascending
    /// byte order. JSON is not canonical (key order, spacing, escapes), so it is never signed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.serials.len() * 17);
        out.extend_from_slice(SIGNING_CONTEXT);
        out.extend_from_slice(&self.format.to_be_bytes());
        push_short(&mut out, self.county.as_str().as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        // `verify` refuses lists above MAX_REVOKED_SERIALS before this count could overflow.
        let count = u32::try_from(self.serials.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for serial in &self.serials {
            push_short(&mut out, serial.as_bytes());
        }
        out
    }

    /// Parses a list from JSON (untrusted until [`RevocationList::verify`]). Refuses text longer
    /// than [`MAX_REVOCATION_LIST_BYTES`] before parsing it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RevocationError> {
        if bytes.len() > MAX_REVOCATION_LIST_BYTES {
            return Err(RevocationError::TooLarge(bytes.len()));
        }
        let list: Self = serde_json::from_slice(bytes).map_err(RevocationError::Decode)?;
        if list.serials.len() > MAX_REVOKED_SERIALS {
            return Err(RevocationError::TooManySerials(list.serials.len()));
        }
        Ok(list)
    }

    /// The list as pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, RevocationError> {
        serde_json::to_vec_pretty(self).map_err(RevocationError::Encode)
    }

    /// The list as compact JSON, the form a parent server sends its child servers (no
    /// indentation: every byte counts on 2G). Refuses a list whose text would be longer than
    /// [`MAX_REVOCATION_LIST_BYTES`], which no receiver would accept.
    pub fn to_compact_json(&self) -> Result<Vec<u8>, RevocationError> {
        let bytes = serde_json::to_vec(self).map_err(RevocationError::Encode)?;
        if bytes.len() > MAX_REVOCATION_LIST_BYTES {
            return Err(RevocationError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Reads a list from a JSON file (untrusted until [`RevocationList::verify`]). Refuses a
    /// file longer than [`MAX_REVOCATION_LIST_BYTES`] without reading it.
    pub fn load(path: &Path) -> Result<Self, RevocationError> {
        let io = |source| RevocationError::Io { op: "read", path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_REVOCATION_LIST_BYTES as u64 {
            return Err(RevocationError::TooLarge(usize::try_from(len).unwrap_or(usize::MAX)));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_json(&bytes)
    }

    /// Writes the list as JSON to `path` (mode 0644) atomically and durably: a temporary file
    /// beside it, synced, renamed over it, and the directory synced. A reader, or a server
    /// restarted after a power cut, finds the old list or the new one, never a torn file.
    pub fn save(&self, path: &Path) -> Result<(), RevocationError> {
        let bytes = self.to_json()?;
        super::replace_file(path, &bytes, 0o644).map_err(|source| RevocationError::Io {
            op: "written",
            path: path.to_owned(),
            source,
        })
    }
}

/// Appends `bytes` with a one-byte length. Only used for county codes (6 bytes) and serials
/// (at most 20 bytes), both validated on parse.
fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

mod signature_hex {
    use super::*;

    pub(super) fn serialize<S: Serializer>(sig: &Signature, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(sig.to_bytes()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes of hex"))?;
        Ok(Signature::from_bytes(&bytes))
    }
}

/// What [`RevocationHandle::update`] did with an offered list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationUpdate {
    /// The list was newer and is now in force.
    Installed {
        /// Version that was in force before.
        previous: u64,
        /// Version now in force.
        version: u64,
    },
    /// The list was not newer than the one in force and was ignored.
    Stale {
        /// Version offered.
        offered: u64,
        /// Version in force (unchanged).
        current: u64,
    },
}

/// The revocation list in force, shared by every connection of a server and swapped in place
/// when a newer list arrives: new connections see the new list without a restart.
///
/// Cloning gives another handle to the same list.
#[derive(Debug, Clone)]
pub struct RevocationHandle {
    ca: Arc<CaCertificate>,
    // std RwLock: held only to clone or swap an Arc, never across an await.
    current: Arc<RwLock<Arc<RevocationList>>>,
}

impl RevocationHandle {
    /// A handle holding `list`, which must be signed by `ca`.
    pub fn new(ca: CaCertificate, list: RevocationList) -> Result<Self, RevocationError> {
        list.verify(&ca)?;
        Ok(Self { ca: Arc::new(ca), current: Arc::new(RwLock::new(Arc::new(list))) })
    }

    /// The list in force now.
    pub fn current(&self) -> Arc<RevocationList> {
        // A poisoned lock still holds a whole Arc (a swap cannot be half done): keep using it.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// True if the list in force revokes `serial`.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.current().contains(serial)
    }

    /// The CA that lists must be signed by.
    pub fn ca(&self) -> &CaCertificate {
        &self.ca
    }

    /// Offers a list from anywhere (the CA directory, a parent server, a bundle). It is
    /// installed only if the CA signed it and its version is higher than the one in force;
    /// an older or equal version is ignored ([`RevocationUpdate::Stale`]), a forged one refused.
    pub fn update(&self, list: RevocationList) -> Result<RevocationUpdate, RevocationError> {
        list.verify(&self.ca)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let previous = current.version();
        if list.version() <= previous {
            return Ok(RevocationUpdate::Stale { offered: list.version(), current: previous });
        }
        let version = list.version();
        *current = Arc::new(list);
        Ok(RevocationUpdate::Installed { previous, version })
    }
}
