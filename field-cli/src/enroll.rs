//! Enrolment: the county's certificate bundle on this device.
//!
//! A bundle (from `fq-server ca issue`) holds the device's certificate and key, its CA-signed
//! grant and the county CA. `fq init --bundle` takes the ledger's role and area from it;
//! `fq enroll --bundle` adds one to a device already in use, if its area covers the ledger's.
//! Either way the grant goes into the ledger (so the device's own changes can be checked
//! against it) and the bundle, private key included, is kept inside the ledger file, which is
//! encrypted (ADR 10): never in clear on disk. `fq sync` reads it from there. Builds before
//! encryption copied it to `DIR/bundle.json`; such a copy is still read until `fq encrypt`
//! takes it into the ledger and removes it.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fq_core::case::Role;
use fq_core::ledger::{Identity, InitOptions, Ledger, Tier};
use fq_sync_server::ca::{Bundle, BundleError, GrantRole, RevocationError, RevocationList};

use crate::request::Init;

/// The bundle's file name inside the data directory, as builds before encryption kept it.
pub(crate) const BUNDLE_FILE: &str = "bundle.json";
/// The newest county revocation list this device has seen (from any bundle
/// it took, or a list file given to `enroll`/`init`), inside the data
/// directory. Signed public data, not a secret.
pub(crate) const REVOCATIONS_FILE: &str = "revocations.json";

/// Why a bundle does not fit, or is not there.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrollError {
    /// No bundle in the ledger (nor in the data directory).
    #[error("this device is not enrolled: no bundle in the ledger in {}", dir.display())]
    NotEnrolled {
        /// The data directory.
        dir: PathBuf,
    },
    /// The bundle file is unreadable or not a valid bundle.
    #[error("bundle file {} is invalid", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BundleError,
    },
    /// A server's bundle, not a device's.
    #[error("bundle {id} is for a {role} server, not a device")]
    ServerBundle {
        /// Its subject.
        id: String,
        /// Its role.
        role: GrantRole,
    },
    /// `--role` or `--village` says something else than the bundle.
    #[error("the bundle says {field} {bundle}, but {given} was given")]
    Disagrees {
        /// `role` or `village`.
        field: &'static str,
        /// What the bundle says.
        bundle: String,
        /// What was given.
        given: String,
    },
    /// The bundle's certificate is on the county's revocation list.
    #[error("certificate {id} (serial {serial}) is revoked (revocation list version {version})")]
    Revoked {
        /// The bundle's subject.
        id: String,
        /// Its serial.
        serial: String,
        /// The list that revokes it.
        version: u64,
    },
    /// A revocation list file given with `--revocations` is unreadable or not the county CA's.
    #[error("revocation list {} is invalid", path.display())]
    BadRevocations {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: RevocationError,
    },
    /// The bundle's area does not cover the ledger's.
    #[error("the bundle's area {bundle} does not cover this device's area {ledger}")]
    OutsideScope {
        /// The bundle's scope.
        bundle: String,
        /// The ledger's scope.
        ledger: String,
    },
}

/// Reads and checks a bundle file.
pub(crate) fn load(path: &Path) -> Result<Bundle, EnrollError> {
    Bundle::load(path).map_err(|source| EnrollError::Invalid { path: path.to_owned(), source })
}

/// The bundle installed on this device: the one kept in the ledger, else a clear copy in
/// `dir` left by a build before encryption.
pub(crate) fn installed(ledger: &Ledger, dir: &Path) -> anyhow::Result<Bundle> {
    if let Some(text) = ledger.enrolment()? {
        let kept = Bundle::from_json(text.as_bytes())
            .map_err(|source| EnrollError::Invalid { path: dir.join(LEDGER_IN_DIR), source })?;
        return Ok(kept);
    }
    Ok(legacy(dir)?)
}

/// What [`EnrollError::Invalid`] names when the bundle kept in the ledger is the bad one.
const LEDGER_IN_DIR: &str = "ledger.db";

fn legacy(dir: &Path) -> Result<Bundle, EnrollError> {
    let path = dir.join(BUNDLE_FILE);
    match Bundle::load(&path) {
        Ok(bundle) => Ok(bundle),
        Err(BundleError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err(EnrollError::NotEnrolled { dir: dir.to_owned() })
        }
        Err(source) => Err(EnrollError::Invalid { path, source }),
    }
}

/// The person's role a device bundle grants.
fn person_role(bundle: &Bundle) -> Result<Role, EnrollError> {
    bundle
        .role()
        .person_role()
        .ok_or_else(|| EnrollError::ServerBundle { id: bundle.id().to_string(), role: bundle.role() })
}

/// The ledger `fq init --bundle` creates: role and area from the bundle, which `--role` and
/// `--village` must agree with if they are given.
pub(crate) fn init_options(init: &Init, bundle: &Bundle) -> Result<InitOptions, EnrollError> {
    let role = person_role(bundle)?;
    if let Some(given) = init.role
        && given != role
    {
        return Err(EnrollError::Disagrees {
            field: "role",
            bundle: role.code().to_owned(),
            given: given.code().to_owned(),
        });
    }
    if let Some(given) = &init.scope
        && given != bundle.scope()
    {
        return Err(EnrollError::Disagrees {
            field: "village",
            bundle: bundle.scope().to_string(),
            given: given.to_string(),
        });
    }
    Ok(InitOptions {
        tier: Tier::Device,
        name: init.name.clone(),
        role,
        scope: bundle.scope().clone(),
        grid: init.grid,
    })
}

/// Checks that `bundle` may serve the ledger of `identity`: a device bundle whose area covers
/// the ledger's (for village roles: the same village).
pub(crate) fn check_fits(bundle: &Bundle, identity: &Identity) -> Result<(), EnrollError> {
    person_role(bundle)?;
    if !bundle.scope().contains(&identity.scope) {
        return Err(EnrollError::OutsideScope {
            bundle: bundle.scope().to_string(),
            ledger: identity.scope.to_string(),
        });
    }
    Ok(())
}

/// The newest revocation list of the bundle's CA among what this device
/// knows: the bundle's own, the one kept in `dir`, and `extra` (a list file
/// the county handed over with the bundle). A kept list that no longer
/// verifies is ignored; an `extra` that does not verify is an error.
pub(crate) fn newest_revocations(
    bundle: &Bundle,
    dir: &Path,
    extra: Option<&Path>,
) -> Result<RevocationList, EnrollError> {
    let mut newest = bundle.revocations().clone();
    let kept = RevocationList::load(&dir.join(REVOCATIONS_FILE)).ok().filter(|l| l.verify(bundle.ca()).is_ok());
    let given = match extra {
        Some(path) => Some(
            RevocationList::load(path)
                .and_then(|l| l.verify(bundle.ca()).map(|()| l))
                .map_err(|source| EnrollError::BadRevocations { path: path.to_owned(), source })?,
        ),
        None => None,
    };
    for list in kept.into_iter().chain(given) {
        if list.version() > newest.version() {
            newest = list;
        }
    }
    Ok(newest)
}

/// Refuses a bundle whose certificate the county has revoked, as far as this
/// device knows (see [`newest_revocations`]): a revoked phone's bundle must
/// not be set up again on another device. A device that knows no newer list
/// learns it from its township, which refuses a revoked certificate at once.
pub(crate) fn check_not_revoked(bundle: &Bundle, list: &RevocationList) -> Result<(), EnrollError> {
    if list.contains(bundle.serial()) {
        return Err(EnrollError::Revoked {
            id: bundle.id().to_string(),
            serial: bundle.serial().to_string(),
            version: list.version(),
        });
    }
    Ok(())
}

/// Adds the bundle's grant to the ledger, keeps the bundle inside the ledger file (at `path`)
/// and `revocations`, the newest list known, beside it; returns the ledger file.
pub(crate) fn install(
    path: &Path,
    ledger: &mut Ledger,
    bundle: &Bundle,
    revocations: &RevocationList,
) -> anyhow::Result<PathBuf> {
    ledger.add_grant(bundle.grant())?;
    keep(ledger, bundle)?;
    if let Some(dir) = path.parent() {
        revocations.save(&dir.join(REVOCATIONS_FILE))?;
    }
    Ok(path.to_owned())
}

/// Keeps the bundle (with its private key) inside the ledger file.
pub(crate) fn keep(ledger: &mut Ledger, bundle: &Bundle) -> anyhow::Result<()> {
    let bytes = bundle.to_json()?;
    let text = String::from_utf8(bytes).context("the bundle is not UTF-8 JSON")?;
    ledger.save_enrolment(&text)?;
    Ok(())
}
