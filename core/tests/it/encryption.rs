//! Encrypted ledger files (ADR 10): SQLCipher with a raw data key, the copy that `fq encrypt`
//! makes of a plain file, and what a wrong or missing key does.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use fq_core::case::Role;
use fq_core::clock::ManualClock;
use fq_core::ledger::{Ledger, LedgerError, LedgerOptions};
use fq_core::store::{Durability, OpenMode, Store, StoreError};
use fq_core::vault::{DataKey, KdfParams, Passphrase, Protection, Vault, WipePolicy};

use crate::ledger::{T0, init, new_case};

const VILLAGE: &str = "532924101201";
/// Cheap derivation: these tests are about the files, not the cost.
const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, lanes: 1 };

fn keyed(key: &DataKey) -> LedgerOptions {
    LedgerOptions { key: Some(key.clone()), ..Default::default() }
}

#[test]
fn encrypted_ledger_opens_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::new(T0);
    let key = DataKey::generate().unwrap();
    let id = {
        let mut l =
            Ledger::init(&path, init(Role::Mediator, VILLAGE, "张三", &clock), Arc::new(clock.clone()), keyed(&key))
                .unwrap();
        l.create_case(new_case("宅基地滴水纠纷")).unwrap().id
    };
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a new ledger file is private");
    let head = std::fs::read(&path).unwrap();
    assert_ne!(&head[..16], b"SQLite format 3\0");
    let mut l = Ledger::open_read_only_with_key(&path, Arc::new(clock.clone()), Some(&key)).unwrap();
    assert_eq!(l.show(id, false).unwrap().state.title, "宅基地滴水纠纷");
    drop(l);
    let other = DataKey::generate().unwrap();
    assert!(matches!(
        Ledger::open(&path, Arc::new(clock.clone()), keyed(&other)),
        Err(LedgerError::Store(StoreError::KeyRejected))
    ));
    assert!(matches!(Ledger::open_read_only(&path, Arc::new(clock)), Err(LedgerError::Store(StoreError::Corrupt))));
}

#[test]
fn encrypt_copy_keeps_everything_and_refuses_a_file_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("ledger.db");
    let clock = ManualClock::new(T0);
    let mut l = Ledger::init(
        &plain,
        init(Role::Mediator, VILLAGE, "张三", &clock),
        Arc::new(clock.clone()),
        LedgerOptions::default(),
    )
    .unwrap();
    for i in 0..5 {
        let s = l.create_case(new_case(&format!("第{i}件"))).unwrap();
        l.add_note(s.id, "双方到场").unwrap();
    }
    let key = DataKey::generate().unwrap();
    let copy = dir.path().join("ledger.db.encrypting");
    assert!(matches!(Store::encrypt_copy(&plain, &copy, &key), Err(StoreError::InUse)), "a ledger open elsewhere");
    let _ = std::fs::remove_file(&copy);
    let counts = l.counts().unwrap();
    let head = l.log_head().unwrap();
    drop(l);
    Store::encrypt_copy(&plain, &copy, &key).unwrap();
    let store = Store::open_with_key(&copy, OpenMode::ReadOnly, Durability::Full, Some(&key)).unwrap();
    assert_eq!(store.counts().unwrap(), counts);
    assert_eq!(store.log_head().unwrap(), head);
    assert_eq!(Vault::for_ledger(&plain).protection().unwrap(), Protection::Plain, "the plain file is untouched");
}

#[test]
fn vault_key_opens_the_ledger_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let vault = Vault::for_ledger(&path);
    let pass = Passphrase::new("门前有3棵柿子树".into());
    let key = vault.create(&pass, WipePolicy::After(10), FAST).unwrap();
    let clock = ManualClock::new(T0);
    let mut l =
        Ledger::init(&path, init(Role::Mediator, VILLAGE, "张三", &clock), Arc::new(clock.clone()), keyed(&key))
            .unwrap();
    l.save_enrolment("{\"bundle\":1}").unwrap();
    drop(l);
    assert_eq!(vault.protection().unwrap(), Protection::Encrypted);
    let key = vault.unlock(&pass).unwrap();
    let l = Ledger::open_read_only_with_key(&path, Arc::new(clock), Some(&key)).unwrap();
    assert_eq!(l.enrolment().unwrap().as_deref(), Some("{\"bundle\":1}"));
}

#[test]
fn vault_encrypt_failing_leaves_the_plain_file_and_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::new(T0);
    let mut l = Ledger::init(
        &path,
        init(Role::Mediator, VILLAGE, "张三", &clock),
        Arc::new(clock.clone()),
        LedgerOptions::default(),
    )
    .unwrap();
    l.create_case(new_case("宅基地滴水纠纷")).unwrap();
    let vault = Vault::for_ledger(&path);
    let pass = Passphrase::new("门前有3棵柿子树".into());
    // The ledger is still open (a running server): the copy is refused, nothing changes.
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        vault.encrypt(&pass, WipePolicy::Never, FAST),
        Err(fq_core::vault::VaultError::Store(StoreError::InUse))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!vault.key_path().exists(), "no key file left");
    assert_eq!(vault.protection().unwrap(), Protection::Plain);
    drop(l);
    let key = vault.encrypt(&pass, WipePolicy::Never, FAST).unwrap();
    assert_eq!(vault.protection().unwrap(), Protection::Encrypted);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n == "ledger.db" || n == "ledger.key"), "no copy or old file left: {names:?}");
    let l = Ledger::open_read_only_with_key(&path, Arc::new(clock), Some(&key)).unwrap();
    assert_eq!(l.counts().unwrap()[0], 1);
}
