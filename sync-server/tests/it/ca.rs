//! The county CA: init, issue, revoke through the real binary; identities read back from
//! certificates; grants checked against their certificates; bundles, grants and revocation
//! lists refused when not genuine.

use std::os::unix::fs::PermissionsExt;

use ed25519_dalek::{Signer, Verifier};
use fq_core::trust::{GrantError, GrantRole, SignedGrant, sign_change, verify_change};
use fq_sync_server::ca::{
    BundleError, CA_KEY_FILE, CaCertificate, IdentityError, PeerIdentity, RevocationError, RevocationHandle,
    RevocationList, RevocationUpdate,
};
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519, SanType};

use crate::county::{County, fq_server, fq_server_json};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn issue_round_trips_identity_through_certificate() {
    let county = County::new();
    assert_eq!(mode(&county.ca_dir().join(CA_KEY_FILE)), 0o600);
    let cases = [
        ("county-1", "county", "532924"),
        ("tw-101", "township", "532924101"),
        ("m.101201", "mediator", "532924101201"),
        ("g_7", "grid-worker", "532924101202"),
        ("officer-3", "township-officer", "532924102"),
        ("admin", "county-admin", "532924"),
    ];
    for (id, role, scope) in cases {
        let out = county.bundle_path(id);
        let printed = fq_server_json(&[
            "ca",
            "issue",
            "--ca",
            county.ca_str(),
            "--id",
            id,
            "--role",
            role,
            "--scope",
            scope,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(mode(&out), 0o600, "bundle of {id} must be private");
        let bundle = fq_sync_server::ca::Bundle::load(&out).unwrap();

        let peer = PeerIdentity::from_der(bundle.certificate_der().as_ref()).unwrap();
        assert_eq!(peer.id.as_str(), id);
        assert_eq!(peer.role, GrantRole::parse(role).unwrap());
        assert_eq!(peer.scope.as_str(), scope);
        assert_eq!(peer.serial.to_string(), printed["serial"].as_str().unwrap());
        assert_eq!(peer.serial.as_bytes().len(), 16);
        assert_eq!(peer.uri(), format!("urn:fq:{role}:{scope}:{id}"));
        assert_eq!(&peer, bundle.identity());
        assert_eq!(bundle.county().as_str(), "532924");
        assert_eq!(printed["id"], id);
        assert_eq!(printed["role"], role);
        assert_eq!(printed["scope"], scope);

        // The certificate's key is the envelope-signing key: what the bundle's SigningKey signs
        // verifies with the public key read from the certificate.
        assert_eq!(peer.public_key, bundle.signing_key().verifying_key());
        assert_eq!(bundle.public_key_bytes(), peer.public_key.to_bytes());
        let signature = bundle.signing_key().sign(b"change hash");
        peer.public_key.verify(b"change hash", &signature).unwrap();
    }
    let ledger = std::fs::read_to_string(county.ca_dir().join("issued.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), cases.len());
}

#[test]
fn issue_refuses_role_that_does_not_fit_scope_with_exit_2() {
    let county = County::new();
    let cases = [
        ("mediator", "532924101", "role mediator needs a village scope"),
        ("grid-worker", "532924", "role grid-worker needs a village scope"),
        ("township", "532924101201", "role township needs a township scope"),
        ("township-officer", "532924", "role township-officer needs a township scope"),
        ("county", "532924101", "role county needs a county scope"),
        ("county-admin", "532924101201", "role county-admin needs a county scope"),
    ];
    for (role, scope, message) in cases {
        let out_path = county.bundle_path(role);
        let out = fq_server(&[
            "ca",
            "issue",
            "--ca",
            county.ca_str(),
            "--id",
            "x1",
            "--role",
            role,
            "--scope",
            scope,
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{role} {scope}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
        assert!(!out_path.exists(), "no bundle may be written for {role} {scope}");
    }
    let ledger = std::fs::read_to_string(county.ca_dir().join("issued.jsonl")).unwrap();
    assert_eq!(ledger, "", "refused requests must not reach the ledger");
}

#[test]
fn issue_refuses_bad_scope_text_and_scope_outside_county_with_exit_2() {
    let county = County::new();
    let out_path = county.bundle_path("x");
    let cases = [
        ("mediator", "532925101201", "scope 532925101201 is outside county 532924"),
        ("township", "532925101", "scope 532925101 is outside county 532924"),
        ("county-admin", "532925", "scope 532925 is outside county 532924"),
        ("mediator", "53292410120", "invalid division code \"53292410120\": it must have 6 (county), 9"),
        ("mediator", "53292410120x", "invalid division code \"53292410120x\": it must contain only digits"),
        ("township", "532900101", "the county part (digits 5-6) is 00"),
        ("boss", "532924101201", "unknown role \"boss\": expected grid-worker, mediator, township-officer"),
    ];
    for (role, scope, message) in cases {
        let out = fq_server(&[
            "ca",
            "issue",
            "--ca",
            county.ca_str(),
            "--id",
            "x1",
            "--role",
            role,
            "--scope",
            scope,
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{role} {scope}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
        assert!(!out_path.exists());
    }
}

#[test]
fn issue_refuses_existing_bundle_file_and_missing_ca_with_exit_2() {
    let county = County::new();
    county.issue("d07", "mediator", "532924101201");
    let existing = county.bundle_path("d07");
    let before = std::fs::read(&existing).unwrap();
    let args = |ca: &str| {
        fq_server(&[
            "ca",
            "issue",
            "--ca",
            ca,
            "--id",
            "d07",
            "--role",
            "mediator",
            "--scope",
            "532924101201",
            "--out",
            existing.to_str().unwrap(),
        ])
    };
    let out = args(county.ca_str());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&existing).unwrap(), before);

    let missing = county.dir.path().join("no-ca");
    std::fs::remove_file(&existing).unwrap();
    let out = args(missing.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no ca in"), "{}", stderr(&out));
}

#[test]
fn init_refuses_existing_ca_and_non_county_code_with_exit_2() {
    let county = County::new();
    let key = county.ca_dir().join(CA_KEY_FILE);
    let before = std::fs::read(&key).unwrap();
    let out = fq_server(&["ca", "init", "--dir", county.ca_str(), "--county", "532924"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("a ca already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&key).unwrap(), before, "the ca key must not change");

    let other = county.dir.path().join("township-ca");
    let out = fq_server(&["ca", "init", "--dir", other.to_str().unwrap(), "--county", "532924101"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a county code"), "{}", stderr(&out));
}

#[test]
fn revoke_signs_every_serial_of_the_id_into_a_newer_list() {
    let county = County::new();
    let ca = CaCertificate::from_pem(&std::fs::read_to_string(county.ca_dir().join("ca.cert.pem")).unwrap()).unwrap();
    let first = county.issue_as("d07-a", "d07", "mediator", "532924101201");
    let second = county.issue_as("d07-b", "d07", "mediator", "532924101201");
    let other = county.issue("d08", "grid-worker", "532924101201");
    let initial = county.revocations();
    assert_eq!(initial.version(), 0);
    assert!(initial.serials().is_empty());
    initial.verify(&ca).unwrap();

    let printed = fq_server_json(&["ca", "revoke", "--ca", county.ca_str(), "--id", "d07"]);
    assert_eq!(printed["changed"], true);
    assert_eq!(printed["revocation_version"], 1);
    assert_eq!(printed["revoked"].as_array().unwrap().len(), 2);
    let list = county.revocations();
    list.verify(&ca).unwrap();
    assert_eq!(list.version(), 1);
    assert!(list.contains(first.serial()));
    assert!(list.contains(second.serial()));
    assert!(!list.contains(other.serial()));

    // Revoking again changes nothing and signs no new version.
    let printed = fq_server_json(&["ca", "revoke", "--ca", county.ca_str(), "--id", "d07"]);
    assert_eq!(printed["changed"], false);
    assert_eq!(county.revocations(), list);

    let list = county.revoke("d08");
    assert_eq!(list.version(), 2);
    assert_eq!(list.serials().len(), 3);
    list.verify(&ca).unwrap();

    // Bundles issued after a revocation carry the list in force.
    let later = county.issue("d09", "mediator", "532924101201");
    assert_eq!(later.revocations(), &list);

    let out = fq_server(&["ca", "revoke", "--ca", county.ca_str(), "--id", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no certificate was issued to nobody"));
}

#[test]
fn revocation_list_not_signed_by_the_ca_is_rejected() {
    let county = County::new();
    let device = county.issue("d07", "mediator", "532924101201");
    let ca = device.ca().clone();
    // Another CA claiming the same county: its lists must not be trusted by ours.
    let impostor = County::new();
    impostor.issue("d07", "mediator", "532924101201");
    let forged = impostor.revoke("d07");
    assert!(matches!(forged.verify(&ca), Err(RevocationError::BadSignature { version: 1 })));

    let handle = RevocationHandle::new(ca.clone(), county.revocations()).unwrap();
    assert!(handle.update(forged).is_err());
    assert_eq!(handle.current().version(), 0, "a forged list must not be installed");

    // A genuine list altered after signing: a higher version, or a serial dropped.
    let genuine = county.revoke("d07");
    let mut json: serde_json::Value = serde_json::from_slice(&genuine.to_json().unwrap()).unwrap();
    json["version"] = 99.into();
    let bumped = RevocationList::from_json(json.to_string().as_bytes()).unwrap();
    assert!(matches!(bumped.verify(&ca), Err(RevocationError::BadSignature { version: 99 })));
    json["version"] = 1.into();
    json["serials"] = serde_json::json!([]);
    let emptied = RevocationList::from_json(json.to_string().as_bytes()).unwrap();
    assert!(matches!(emptied.verify(&ca), Err(RevocationError::BadSignature { .. })));

    // A list from another county's CA names its own county.
    let neighbour = County::with_code("532925");
    assert!(matches!(neighbour.revocations().verify(&ca), Err(RevocationError::WrongCounty { .. })));

    genuine.verify(&ca).unwrap();
    assert!(matches!(handle.update(genuine), Ok(RevocationUpdate::Installed { previous: 0, version: 1 })));
    assert!(handle.is_revoked(device.serial()));
}

#[test]
fn revocation_handle_never_replaces_a_newer_list_with_an_older_one() {
    let county = County::new();
    let d07 = county.issue("d07", "mediator", "532924101201");
    let d08 = county.issue("d08", "mediator", "532924101201");
    let v0 = county.revocations();
    let v1 = county.revoke("d07");
    let v2 = county.revoke("d08");
    assert_eq!((v0.version(), v1.version(), v2.version()), (0, 1, 2));

    let handle = RevocationHandle::new(d07.ca().clone(), v0.clone()).unwrap();
    assert_eq!(handle.update(v2.clone()).unwrap(), RevocationUpdate::Installed { previous: 0, version: 2 });
    for older in [v1, v0, v2.clone()] {
        let offered = older.version();
        assert_eq!(handle.update(older).unwrap(), RevocationUpdate::Stale { offered, current: 2 });
        assert_eq!(*handle.current(), v2);
        assert!(handle.is_revoked(d07.serial()) && handle.is_revoked(d08.serial()));
    }

    // The same rule holds for the list a device keeps in its bundle.
    let mut bundle = county.issue("d09", "mediator", "532924101201");
    assert_eq!(bundle.revocations().version(), 2);
    let stale = bundle.update_revocations(county.revocations()).unwrap();
    assert!(matches!(stale, RevocationUpdate::Stale { .. }));
}

#[test]
fn bundle_load_rejects_edited_or_mismatched_bundles() {
    let county = County::new();
    let d07 = county.issue("d07", "mediator", "532924101201");
    let d08 = county.issue("d08", "mediator", "532924101201");
    let foreign = County::new().issue("d07", "mediator", "532924101201");
    let json = |b: &fq_sync_server::ca::Bundle| -> serde_json::Value {
        serde_json::from_slice(&b.to_json().unwrap()).unwrap()
    };
    let load = |v: &serde_json::Value| fq_sync_server::ca::Bundle::from_json(v.to_string().as_bytes());

    let mut promoted = json(&d07);
    promoted["role"] = "county-admin".into();
    promoted["scope"] = "532924".into();
    assert!(matches!(load(&promoted), Err(BundleError::Mismatch { field: "role", .. })));

    let mut wrong_key = json(&d07);
    wrong_key["private_key_pem"] = json(&d08)["private_key_pem"].clone();
    assert!(matches!(load(&wrong_key), Err(BundleError::KeyMismatch)));

    let mut wrong_ca = json(&foreign);
    wrong_ca["ca_certificate_pem"] = json(&d07)["ca_certificate_pem"].clone();
    wrong_ca["revocations"] = json(&d07)["revocations"].clone();
    assert!(matches!(load(&wrong_ca), Err(BundleError::NotSignedByCa)));

    let mut future = json(&d07);
    future["format"] = 3.into();
    assert!(matches!(load(&future), Err(BundleError::Format(3))));

    // Saving and loading keeps everything.
    let path = county.bundle_path("copy");
    d07.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let again = fq_sync_server::ca::Bundle::load(&path).unwrap();
    assert_eq!(again.identity(), d07.identity());
    assert_eq!(again.to_json().unwrap(), d07.to_json().unwrap());
}

#[test]
fn bundle_grant_decodes_with_ca_key_and_matches_certificate() {
    let county = County::new();
    let before = std::time::SystemTime::now();
    let cases = [
        ("d07", "grid-worker", "532924101201"),
        ("m.101201", "mediator", "532924101201"),
        ("officer-3", "township-officer", "532924102"),
        ("admin", "county-admin", "532924"),
        ("tw-101", "township", "532924101"),
        ("county-1", "county", "532924"),
    ];
    for (id, role, scope) in cases {
        let bundle = county.issue(id, role, scope);
        let ca_key = bundle.ca_verifying_key();
        assert_eq!(&ca_key, bundle.ca().verifying_key());
        let decoded = SignedGrant::decode(&bundle.grant().bytes, &ca_key).unwrap();
        assert_eq!(&decoded, bundle.grant());
        let grant = &decoded.grant;
        let peer = bundle.identity();
        assert_eq!(grant.public_key, peer.public_key.to_bytes());
        assert_eq!(grant.subject, id);
        assert_eq!(grant.role, peer.role);
        assert_eq!(grant.role.code(), role);
        assert_eq!(grant.role.is_server(), matches!(role, "township" | "county"));
        assert_eq!(grant.scope.as_str(), scope);
        assert_eq!(grant.county.as_str(), "532924");
        assert_eq!(grant.serial.as_slice(), peer.serial.as_bytes());
        let issued = std::time::UNIX_EPOCH + std::time::Duration::from_millis(grant.issued_at as u64);
        assert!(issued >= before - std::time::Duration::from_secs(1), "{id} issued_at {}", grant.issued_at);
        assert!(issued <= std::time::SystemTime::now());

        // What the device signs with its bundle key verifies against its grant alone.
        let hash = [7u8; 32];
        let signature = sign_change(bundle.signing_key(), &hash);
        verify_change(&grant.public_key, &hash, &signature).unwrap();
    }
    // Another county's CA key does not vouch for this county's grants.
    let other = County::with_code("532925").issue("d07", "mediator", "532925101201");
    let ours = county.issue("d08", "mediator", "532924101201");
    assert_eq!(SignedGrant::decode(&ours.grant().bytes, &other.ca_verifying_key()), Err(GrantError::BadSignature));
}

#[test]
fn bundle_load_rejects_grant_of_another_device() {
    let county = County::new();
    let d07 = county.issue("d07", "mediator", "532924101201");
    let d08 = county.issue("d08", "mediator", "532924101201");
    // Same id, same role and scope, a second certificate: only key and serial differ.
    let d07_again = county.issue_as("d07-again", "d07", "mediator", "532924101201");
    let foreign = County::new().issue("d07", "mediator", "532924101201");
    let json = |b: &fq_sync_server::ca::Bundle| -> serde_json::Value {
        serde_json::from_slice(&b.to_json().unwrap()).unwrap()
    };
    let with_grant = |grant: serde_json::Value| {
        let mut v = json(&d07);
        v["grant"] = grant;
        fq_sync_server::ca::Bundle::from_json(v.to_string().as_bytes())
    };

    let err = with_grant(json(&d08)["grant"].clone()).unwrap_err();
    assert!(matches!(err, BundleError::Mismatch { field: "grant public key", .. }), "got {err:?}");
    let err = with_grant(json(&d07_again)["grant"].clone()).unwrap_err();
    assert!(matches!(err, BundleError::Mismatch { field: "grant public key", .. }), "got {err:?}");
    let err = with_grant(json(&foreign)["grant"].clone()).unwrap_err();
    assert!(matches!(err, BundleError::Grant(GrantError::BadSignature)), "got {err:?}");
    assert!(err.to_string().contains("grant"), "{err}");

    // Altered by one bit, cut short, not hex, or missing.
    let mut bytes = d07.grant().bytes.clone();
    bytes[10] ^= 1;
    assert!(matches!(with_grant(hex::encode(&bytes).into()), Err(BundleError::Grant(_))));
    let short = &d07.grant().bytes[..d07.grant().bytes.len() - 1];
    assert!(matches!(with_grant(hex::encode(short).into()), Err(BundleError::Grant(_))));
    assert!(matches!(with_grant("zz".into()), Err(BundleError::GrantEncoding)));
    let huge = "00".repeat(fq_core::trust::MAX_GRANT_BYTES + 1);
    assert!(matches!(with_grant(huge.into()), Err(BundleError::Grant(GrantError::TooLarge(_)))));
    let mut missing = json(&d07);
    missing.as_object_mut().unwrap().remove("grant");
    assert!(matches!(
        fq_sync_server::ca::Bundle::from_json(missing.to_string().as_bytes()),
        Err(BundleError::Decode(_))
    ));

    with_grant(json(&d07)["grant"].clone()).unwrap();
}

#[test]
fn bundle_load_refuses_format_1_with_reissue_hint() {
    let county = County::new();
    let d07 = county.issue("d07", "mediator", "532924101201");
    let mut old: serde_json::Value = serde_json::from_slice(&d07.to_json().unwrap()).unwrap();
    old["format"] = 1.into();
    old.as_object_mut().unwrap().remove("grant");
    let path = county.bundle_path("old");
    std::fs::write(&path, old.to_string()).unwrap();
    let err = fq_sync_server::ca::Bundle::load(&path).unwrap_err();
    assert!(matches!(err, BundleError::Outdated(1)), "got {err:?}");
    assert!(err.to_string().contains("fq-server ca issue"), "{err}");
}

#[test]
fn issue_refuses_invalid_subject_id_with_exit_2() {
    let county = County::new();
    for id in ["a:b", ".x", ""] {
        let out_path = county.bundle_path("bad-id");
        let out = fq_server(&[
            "ca",
            "issue",
            "--ca",
            county.ca_str(),
            "--id",
            id,
            "--role",
            "mediator",
            "--scope",
            "532924101201",
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{id:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid subject"), "{}", stderr(&out));
        assert!(!out_path.exists());
    }
}

/// Signs a certificate with a fresh key and returns its DER; `sans` are URIs unless they
/// start with `dns:`.
fn certificate_with(cn: &str, sans: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.strip_prefix("dns:") {
            Some(dns) => SanType::DnsName(Ia5String::try_from(dns).unwrap()),
            None => SanType::URI(Ia5String::try_from(*san).unwrap()),
        })
        .collect();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn peer_identity_reports_missing_or_malformed_uri() {
    let ok = certificate_with("d07", &["urn:fq:mediator:532924101201:d07", "dns:x"]);
    let peer = PeerIdentity::from_der(&ok).unwrap();
    assert_eq!(peer.id.as_str(), "d07");

    type Case<'a> = (&'a str, &'a [&'a str], fn(&IdentityError) -> bool);
    let cases: [Case; 7] = [
        ("d07", &[], |e| matches!(e, IdentityError::MissingSan)),
        ("d07", &["dns:fq-server"], |e| matches!(e, IdentityError::MissingUri)),
        ("d07", &["https://example.invalid/d07"], |e| matches!(e, IdentityError::MissingUri)),
        ("d07", &["urn:fq:mediator:5329:d07"], |e| matches!(e, IdentityError::MalformedUri { .. })),
        ("d07", &["urn:fq:mediator:532924101201:d07:extra"], |e| matches!(e, IdentityError::MalformedUri { .. })),
        ("d07", &["urn:fq:mediator:532924101201:d07", "urn:fq:county-admin:532924:d07"], |e| {
            matches!(e, IdentityError::MultipleUris(2))
        }),
        ("d08", &["urn:fq:mediator:532924101201:d07"], |e| matches!(e, IdentityError::CommonNameMismatch { .. })),
    ];
    for (cn, sans, expected) in cases {
        let err = PeerIdentity::from_der(&certificate_with(cn, sans)).unwrap_err();
        assert!(expected(&err), "{cn} {sans:?}: got {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert!(matches!(PeerIdentity::from_der(b"not a certificate"), Err(IdentityError::Der(_))));
}

#[test]
fn bundle_file_matches_its_json_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../schemas/bundle.v1.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let county = County::new();
    county.issue("d07", "mediator", "532924101201");
    county.revoke("d07");
    for (id, role, scope) in [("d08", "grid-worker", "532924101201"), ("tw-1", "township", "532924101")] {
        county.issue(id, role, scope);
        let text = std::fs::read_to_string(county.bundle_path(id)).unwrap();
        let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&bundle).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{id}: {errors:?}");
        assert_eq!(bundle["revocations"]["serials"].as_array().unwrap().len(), 1);

        let mut bad = bundle.clone();
        bad["role"] = "boss".into();
        assert!(!validator.is_valid(&bad));
        let mut bad = bundle.clone();
        bad["unexpected"] = true.into();
        assert!(!validator.is_valid(&bad));
        let mut bad = bundle.clone();
        bad.as_object_mut().unwrap().remove("grant");
        assert!(!validator.is_valid(&bad), "grant is required");
        let mut bad = bundle.clone();
        bad["grant"] = "ABCD".into();
        assert!(!validator.is_valid(&bad), "grant is lowercase hex");
        let mut bad = bundle.clone();
        bad["format"] = 1.into();
        assert!(!validator.is_valid(&bad), "the schema describes format 2");
    }
}
