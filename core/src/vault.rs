//! The key of an encrypted ledger: a random data key, wrapped by a key derived from the
//! user's passphrase, kept in a small file beside the ledger (`ledger.key` beside
//! `ledger.db`), with the count of wrong passphrases typed since the last right one.
//!
//! # Why a wrapped data key (ADR 10)
//! SQLCipher encrypts the ledger with a random 256-bit data key, given in its raw form
//! (`PRAGMA key = "x'…'"`), so opening pays no PBKDF2 of SQLCipher's own. The passphrase
//! only unwraps that key: Argon2id turns passphrase and salt into a wrapping key, and
//! XChaCha20-Poly1305 seals the data key under it, with the file's parameters (format, costs,
//! salt, wipe limit) as associated data, so none of them can be changed without the wrap
//! failing. Changing the passphrase rewrites this file only; the ledger's bytes stay as they
//! are.
//!
//! # The wrong-try counter
//! A wrong passphrase is counted in the key file; the right one resets the count. When the
//! count reaches the file's limit (devices: [`DEFAULT_WIPE_AFTER`]), the key file is
//! overwritten and removed, and the ledger files beside it with it: the data comes back from
//! the township after the device is set up again. Servers have no limit (a wrong key file on a
//! server is an operator's mistake, never a thief), and their key file is never written when
//! opening. The counter only stops guessing through `fq` itself: whoever copies the files
//! guesses offline, which only the Argon2id cost and the passphrase's strength slow down.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::store::{Store, StoreError};

/// The key file's name is the ledger file's with this extension (`ledger.key`).
pub const KEY_EXTENSION: &str = "key";
/// Wrong passphrases a device allows before it erases its key material.
pub const DEFAULT_WIPE_AFTER: u32 = 10;
/// The smallest wipe limit a device may set (a typo or two must not erase a phone).
pub const MIN_WIPE_AFTER: u32 = 3;
/// The largest wipe limit a device may set.
pub const MAX_WIPE_AFTER: u32 = 100;
/// How many tries before the last one the user is warned that the key will be erased.
pub const WARN_TRIES_LEFT: u32 = 3;
/// The fewest characters a passphrase may have (ADR 10).
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// The fewest digits a passphrase made only of digits may have (ADR 10).
pub const MIN_DIGIT_PASSPHRASE_CHARS: usize = 12;
/// Largest key file read: a few hundred bytes are expected.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
/// Layout version of the key file.
const KEY_FORMAT: u32 = 1;
/// Bytes of the data key (SQLCipher's raw key) and of the wrapping key.
const KEY_BYTES: usize = 32;
/// Bytes of the Argon2id salt.
const SALT_BYTES: usize = 16;
/// Bytes of an XChaCha20-Poly1305 nonce (random nonces are safe at this size).
const NONCE_BYTES: usize = 24;
/// What the associated data starts with, so a wrap is never valid for anything else.
const AAD_LABEL: &[u8] = b"fq ledger key v1";
/// The first bytes of every unencrypted SQLite file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The Argon2id costs of deriving the wrapping key: what one guess of an offline attacker
/// costs too (ADR 10 has the measurements behind [`KdfParams::DEFAULT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory per derivation, in KiB.
    pub memory_kib: u32,
    /// Passes over that memory.
    pub iterations: u32,
    /// Parallel lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter of a second here (ADR 10), within an old
    /// phone's memory, and a GPU gets few guesses per second out of each card.
    pub const DEFAULT: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, lanes: 1 };

    fn argon2(&self) -> Result<Argon2<'static>, VaultError> {
        let params = Params::new(self.memory_kib, self.iterations, self.lanes, Some(KEY_BYTES))
            .map_err(|_| VaultError::Damaged { why: "key derivation costs out of range" })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The random key that encrypts a ledger file. Wiped from memory when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<[u8; KEY_BYTES]>);

impl DataKey {
    /// A new random key from the operating system.
    pub fn generate() -> Result<Self, VaultError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(key.as_mut()).map_err(|_| VaultError::Random)?;
        Ok(Self(key))
    }

    /// The key in SQLCipher's raw-key form, `x'…'` (64 hex digits).
    pub(crate) fn sqlcipher_literal(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(2 * KEY_BYTES + 3));
        s.push_str("x'");
        s.push_str(&hex(self.0.as_ref()));
        s.push('\'');
        s
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A passphrase (or PIN) as the user typed it. Wiped from memory when dropped; never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Takes the text as it is (no trimming: spaces may be part of it).
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether it is strong enough to protect a ledger (ADR 10): at least
    /// [`MIN_PASSPHRASE_CHARS`] characters, at least [`MIN_DIGIT_PASSPHRASE_CHARS`] if it is
    /// only digits, and not one character repeated.
    pub fn check_strength(&self) -> Result<(), VaultError> {
        let chars: Vec<char> = self.0.chars().collect();
        let digits = chars.iter().all(char::is_ascii_digit);
        let min = if digits { MIN_DIGIT_PASSPHRASE_CHARS } else { MIN_PASSPHRASE_CHARS };
        let repeated = chars.windows(2).all(|w| w[0] == w[1]);
        if chars.len() < min || repeated {
            return Err(VaultError::WeakPassphrase { min_chars: MIN_PASSPHRASE_CHARS, only_digits: digits });
        }
        Ok(())
    }
}

impl PartialEq for Passphrase {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Why a key could not be made, unwrapped or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The passphrase does not unwrap the key.
    #[error("wrong passphrase ({failed} wrong in a row)")]
    WrongPassphrase {
        /// Wrong tries since the last right one, this one included.
        failed: u32,
        /// Tries left before the key is erased; `None` where nothing is ever erased.
        tries_left: Option<u32>,
    },
    /// Too many wrong passphrases: the key and the ledger files were erased just now.
    #[error("{failed} wrong passphrases in a row: the ledger's key was erased")]
    Erased {
        /// How many wrong tries it took.
        failed: u32,
    },
    /// The ledger file is encrypted but its key file is gone (erased, or not copied with it).
    #[error("the ledger is encrypted but its key file {} is missing", path.display())]
    KeyMissing {
        /// Where the key file should be.
        path: PathBuf,
    },
    /// The key file is not one this build reads, or was altered.
    #[error("the ledger's key file is damaged: {why}")]
    Damaged {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The passphrase is too weak to protect a ledger.
    #[error("the passphrase is too weak: at least {min_chars} characters, not only digits")]
    WeakPassphrase {
        /// The fewest characters allowed.
        min_chars: usize,
        /// Whether it was only digits (a PIN).
        only_digits: bool,
    },
    /// `encrypt` on a ledger that already is.
    #[error("the ledger is already encrypted")]
    AlreadyEncrypted,
    /// A wipe limit outside [`MIN_WIPE_AFTER`]..=[`MAX_WIPE_AFTER`].
    #[error("the wipe limit {0} is outside {MIN_WIPE_AFTER}..={MAX_WIPE_AFTER}")]
    WipeLimit(u32),
    /// The operating system gave no random bytes.
    #[error("no random bytes from the operating system")]
    Random,
    /// There is no ledger file to encrypt.
    #[error("no ledger file to encrypt")]
    NoLedger,
    /// Copying the ledger into an encrypted file failed; the plain file is as it was.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing a file failed.
    #[error("{op} {} failed", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VaultError + 'a {
    move |source| VaultError::Io { op, path: path.to_owned(), source }
}

/// What protects the ledger file at a path, judged from the files alone (no key needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// No ledger file.
    Absent,
    /// A plain SQLite file (made by a build before encryption, or a test): opens without a key.
    Plain,
    /// An encrypted file with its key file beside it.
    Encrypted,
    /// A file that is not plain SQLite and has no key file: its key was erased or lost.
    KeyLost,
}

/// How many wrong passphrases a key file allows before it is erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipePolicy {
    /// Erase after this many wrong tries in a row (devices).
    After(u32),
    /// Never erase, never count (servers).
    Never,
}

impl WipePolicy {
    /// A device's policy, checked against [`MIN_WIPE_AFTER`]..=[`MAX_WIPE_AFTER`].
    pub fn device(after: u32) -> Result<Self, VaultError> {
        if (MIN_WIPE_AFTER..=MAX_WIPE_AFTER).contains(&after) {
            Ok(WipePolicy::After(after))
        } else {
            Err(VaultError::WipeLimit(after))
        }
    }

    fn limit(self) -> Option<u32> {
        match self {
            WipePolicy::After(n) => Some(n),
            WipePolicy::Never => None,
        }
    }
}

/// The key file as stored (JSON, hex for bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    lanes: u32,
    salt: String,
    nonce: String,
    wrapped: String,
    /// `None`: never erased (servers).
    wipe_after: Option<u32>,
    /// Wrong tries since the last right one; not authenticated (it changes without the key).
    failed_tries: u32,
}

impl KeyFile {
    fn params(&self) -> KdfParams {
        KdfParams { memory_kib: self.memory_kib, iterations: self.iterations, lanes: self.lanes }
    }

    /// Everything the wrap depends on except the secret: a change to any of it makes the
    /// wrap fail instead of weakening it (e.g. lowering the costs or the wipe limit).
    fn associated_data(&self, salt: &[u8]) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        for n in [self.format, self.memory_kib, self.iterations, self.lanes, self.wipe_after.unwrap_or(0)] {
            aad.extend_from_slice(&n.to_be_bytes());
        }
        aad.extend_from_slice(self.kdf.as_bytes());
        aad.extend_from_slice(salt);
        aad
    }
}

/// The key file of one ledger file.
#[derive(Debug, Clone)]
pub struct Vault {
    ledger: PathBuf,
    key: PathBuf,
}

impl Vault {
    /// The vault of the ledger file at `ledger` (its key file is `ledger` with the extension
    /// [`KEY_EXTENSION`]).
    pub fn for_ledger(ledger: &Path) -> Self {
        Self { ledger: ledger.to_owned(), key: ledger.with_extension(KEY_EXTENSION) }
    }

    /// The key file's path.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// The ledger file's path.
    pub fn ledger_path(&self) -> &Path {
        &self.ledger
    }

    /// What protects the ledger file, from its first bytes and whether the key file exists.
    pub fn protection(&self) -> Result<Protection, VaultError> {
        let mut file = match File::open(&self.ledger) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Protection::Absent),
            Err(e) => return Err(io_err("reading", &self.ledger)(e)),
        };
        let mut head = Vec::with_capacity(SQLITE_HEADER.len());
        (&mut file).take(SQLITE_HEADER.len() as u64).read_to_end(&mut head).map_err(io_err("reading", &self.ledger))?;
        if head.as_slice() == SQLITE_HEADER {
            return Ok(Protection::Plain);
        }
        let has_key = self.key.try_exists().map_err(io_err("looking for", &self.key))?;
        Ok(match (head.is_empty(), has_key) {
            (_, true) => Protection::Encrypted,
            // SQLite treats an empty file as a new database: nothing to protect yet.
            (true, false) => Protection::Plain,
            (false, false) => Protection::KeyLost,
        })
    }

    /// Makes a new data key and wraps it under `passphrase` in the key file (replacing any
    /// key file there: the caller knows the ledger file is new or still plain).
    pub fn create(&self, passphrase: &Passphrase, wipe: WipePolicy, params: KdfParams) -> Result<DataKey, VaultError> {
        let key = DataKey::generate()?;
        self.write(&wrap(&key, passphrase, wipe, params)?)?;
        Ok(key)
    }

    /// Unwraps the data key with `passphrase`, counting a wrong one (and erasing the key
    /// material when the count reaches the file's limit).
    pub fn unlock(&self, passphrase: &Passphrase) -> Result<DataKey, VaultError> {
        let mut file = self.read()?;
        match unwrap(&file, passphrase) {
            Ok(key) => {
                if file.failed_tries > 0 {
                    file.failed_tries = 0;
                    self.write(&file)?;
                }
                Ok(key)
            }
            Err(VaultError::WrongPassphrase { .. }) => {
                let Some(limit) = file.wipe_after else {
                    return Err(VaultError::WrongPassphrase { failed: 1, tries_left: None });
                };
                let failed = file.failed_tries.saturating_add(1);
                if failed >= limit {
                    self.erase()?;
                    return Err(VaultError::Erased { failed });
                }
                file.failed_tries = failed;
                self.write(&file)?;
                Err(VaultError::WrongPassphrase { failed, tries_left: Some(limit - failed) })
            }
            Err(e) => Err(e),
        }
    }

    /// Wraps the same data key under a new passphrase (the old one must unlock it first):
    /// only the key file changes, never the ledger file.
    pub fn change(&self, old: &Passphrase, new: &Passphrase) -> Result<(), VaultError> {
        new.check_strength()?;
        let key = self.unlock(old)?;
        let file = self.read()?;
        let wipe = file.wipe_after.map_or(WipePolicy::Never, WipePolicy::After);
        self.write(&wrap(&key, new, wipe, file.params())?)
    }

    /// Encrypts the plain ledger file in place under a new data key wrapped by `passphrase`
    /// (`fq encrypt`, `fq-server encrypt`). The encrypted copy is written beside it and
    /// checked ([`Store::encrypt_copy`]), then renamed over it: a failure at any step
    /// leaves the plain file as it was (and no key file). The old plain file is
    /// then overwritten with zeros and removed.
    pub fn encrypt(&self, passphrase: &Passphrase, wipe: WipePolicy, params: KdfParams) -> Result<DataKey, VaultError> {
        self.sweep()?;
        match self.protection()? {
            Protection::Plain => {}
            Protection::Absent => return Err(VaultError::NoLedger),
            Protection::Encrypted => return Err(VaultError::AlreadyEncrypted),
            Protection::KeyLost => return Err(VaultError::KeyMissing { path: self.key.clone() }),
        }
        let copy = self.side_file(".encrypting");
        let _ = fs::remove_file(&copy);
        // The key file first: while the ledger file is still plain, `protection` says so
        // whatever key file lies beside it, so the rename below is the one switch.
        let key = self.create(passphrase, wipe, params)?;
        if let Err(e) = Store::encrypt_copy(&self.ledger, &copy, &key) {
            let _ = fs::remove_file(&copy);
            let _ = scrub(&self.key);
            return Err(e.into());
        }
        File::open(&copy).and_then(|f| f.sync_all()).map_err(io_err("syncing", &copy))?;
        // A second name for the plain file, to overwrite its blocks once it is replaced.
        let old = self.side_file(".plain");
        fs::hard_link(&self.ledger, &old).map_err(io_err("linking", &old))?;
        for side in ledger_files(&self.ledger).into_iter().skip(1) {
            let _ = fs::remove_file(side);
        }
        fs::rename(&copy, &self.ledger).map_err(io_err("replacing", &self.ledger))?;
        sync_dir(&self.ledger)?;
        scrub(&old)?;
        Ok(key)
    }

    /// Removes what an interrupted [`Vault::encrypt`] left: the unfinished copy, and the old
    /// plain file's second name (overwritten first if it no longer is the ledger file). Cheap
    /// when there is nothing to do; callers run it whenever they unlock.
    pub fn sweep(&self) -> Result<(), VaultError> {
        let _ = fs::remove_file(self.side_file(".encrypting"));
        let old = self.side_file(".plain");
        let Ok(old_meta) = fs::metadata(&old) else { return Ok(()) };
        let same = fs::metadata(&self.ledger).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino() == old_meta.ino() && m.dev() == old_meta.dev()
        });
        if same { fs::remove_file(&old).map_err(io_err("removing", &old)) } else { scrub(&old) }
    }

    fn side_file(&self, suffix: &str) -> PathBuf {
        let mut p = self.ledger.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// The wipe policy written in the key file.
    pub fn policy(&self) -> Result<WipePolicy, VaultError> {
        Ok(self.read()?.wipe_after.map_or(WipePolicy::Never, WipePolicy::After))
    }

    /// Overwrites the key file with zeros and removes it, then removes the ledger file and
    /// SQLite's files beside it (useless without the key). Best effort on flash storage,
    /// which may keep old blocks: what matters is that the wrap is gone from the file system.
    pub fn erase(&self) -> Result<(), VaultError> {
        scrub(&self.key)?;
        for path in ledger_files(&self.ledger) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        Ok(())
    }

    fn read(&self) -> Result<KeyFile, VaultError> {
        let file = match File::open(&self.key) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VaultError::KeyMissing { path: self.key.clone() });
            }
            Err(e) => return Err(io_err("reading", &self.key)(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_BYTES).read_to_end(&mut bytes).map_err(io_err("reading", &self.key))?;
        serde_json::from_slice(&bytes).map_err(|_| VaultError::Damaged { why: "not a key file" })
    }

    /// Replaces the key file atomically (a power cut leaves the old or the new one, whole).
    fn write(&self, file: &KeyFile) -> Result<(), VaultError> {
        let bytes = serde_json::to_vec_pretty(file).map_err(|_| VaultError::Damaged { why: "cannot encode" })?;
        write_private(&self.key, &bytes)
    }
}

/// The ledger file and the files SQLite keeps beside it.
pub fn ledger_files(ledger: &Path) -> [PathBuf; 4] {
    let side = |suffix: &str| {
        let mut p = ledger.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [ledger.to_owned(), side("-wal"), side("-shm"), side("-journal")]
}

/// Writes `bytes` to `path` atomically, readable by the owner only (0600), and syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("replacing", path))?;
    sync_dir(path)
}

/// Makes `dir` (and its parents) if missing, and makes it private (0700) either way.
pub fn private_dir(dir: &Path) -> Result<(), VaultError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("creating", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("protecting", dir))
}

/// Overwrites a file with zeros, syncs it, and removes it; a missing file is fine.
pub fn scrub(path: &Path) -> Result<(), VaultError> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    let mut f = OpenOptions::new().write(true).open(path).map_err(io_err("erasing", path))?;
    let zeros = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(&zeros[..n]).map_err(io_err("erasing", path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err("erasing", path))?;
    drop(f);
    fs::remove_file(path).map_err(io_err("removing", path))?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so a rename or removal survives a power cut.
fn sync_dir(path: &Path) -> Result<(), VaultError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", dir))
}

fn derive(passphrase: &Passphrase, salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; KEY_BYTES]>, VaultError> {
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    params
        .argon2()?
        .hash_password_into(passphrase.bytes(), salt, out.as_mut())
        .map_err(|_| VaultError::Damaged { why: "key derivation refused its parameters" })?;
    Ok(out)
}

fn wrap(key: &DataKey, passphrase: &Passphrase, wipe: WipePolicy, params: KdfParams) -> Result<KeyFile, VaultError> {
    let mut salt = [0u8; SALT_BYTES];
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut salt).map_err(|_| VaultError::Random)?;
    getrandom::fill(&mut nonce).map_err(|_| VaultError::Random)?;
    let mut file = KeyFile {
        format: KEY_FORMAT,
        kdf: "argon2id-v19".into(),
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        lanes: params.lanes,
        salt: hex(&salt),
        nonce: hex(&nonce),
        wrapped: String::new(),
        wipe_after: wipe.limit(),
        failed_tries: 0,
    };
    let kek = derive(passphrase, &salt, params)?;
    let aad = file.associated_data(&salt);
    let cipher = XChaCha20Poly1305::new(kek.as_ref().into());
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: key.0.as_ref(), aad: &aad })
        .map_err(|_| VaultError::Damaged { why: "cannot seal the key" })?;
    file.wrapped = hex(&sealed);
    Ok(file)
}

fn unwrap(file: &KeyFile, passphrase: &Passphrase) -> Result<DataKey, VaultError> {
    if file.format != KEY_FORMAT || file.kdf != "argon2id-v19" {
        return Err(VaultError::Damaged { why: "unknown key file format" });
    }
    let salt = unhex(&file.salt).filter(|s| s.len() == SALT_BYTES);
    let nonce = unhex(&file.nonce).filter(|n| n.len() == NONCE_BYTES);
    let wrapped = unhex(&file.wrapped).filter(|w| w.len() == KEY_BYTES + 16);
    let (Some(salt), Some(nonce), Some(wrapped)) = (salt, nonce, wrapped) else {
        return Err(VaultError::Damaged { why: "malformed salt, nonce or key" });
    };
    let kek = derive(passphrase, &salt, file.params())?;
    let aad = file.associated_data(&salt);
    let cipher = XChaCha20Poly1305::new(kek.as_ref().into());
    let mut plain = Zeroizing::new(
        cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &wrapped, aad: &aad })
            // A wrong passphrase and an altered file look the same to an AEAD; the parameters
            // were checked above, so the likely cause is the passphrase.
            .map_err(|_| VaultError::WrongPassphrase { failed: 0, tries_left: None })?,
    );
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&plain);
    plain.zeroize();
    Ok(DataKey(key))
}

/// How long one derivation takes with `params`: what each guess costs an attacker on this
/// machine (the bench `examples/kdf_cost.rs` prints it).
pub fn derivation_cost(params: KdfParams) -> Result<std::time::Duration, VaultError> {
    let start = std::time::Instant::now();
    derive(&Passphrase::new("correct horse battery".into()), &[7u8; SALT_BYTES], params)?;
    Ok(start.elapsed())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Cheap costs: these tests check the logic, not the strength.
    const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, lanes: 1 };

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into())
    }

    #[test]
    fn unlock_returns_the_created_key_with_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::for_ledger(&dir.path().join("ledger.db"));
        let key = v.create(&pass("门前三棵柿子树"), WipePolicy::After(10), FAST).unwrap();
        assert_eq!(v.unlock(&pass("门前三棵柿子树")).unwrap(), key);
        let mode = fs::metadata(v.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn unlock_counts_wrong_tries_and_a_right_one_resets_them() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::for_ledger(&dir.path().join("ledger.db"));
        v.create(&pass("right one 1"), WipePolicy::After(5), FAST).unwrap();
        for n in 1..=3 {
            match v.unlock(&pass("wrong one")) {
                Err(VaultError::WrongPassphrase { failed, tries_left }) => {
                    assert_eq!((failed, tries_left), (n, Some(5 - n)));
                }
                other => panic!("{other:?}"),
            }
        }
        v.unlock(&pass("right one 1")).unwrap();
        assert!(matches!(v.unlock(&pass("x")), Err(VaultError::WrongPassphrase { failed: 1, .. })));
    }

    #[test]
    fn unlock_erases_key_and_ledger_files_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.db");
        fs::write(&ledger, b"not plain sqlite, pretend ciphertext").unwrap();
        let v = Vault::for_ledger(&ledger);
        v.create(&pass("right one 1"), WipePolicy::After(3), FAST).unwrap();
        assert_eq!(v.protection().unwrap(), Protection::Encrypted);
        v.unlock(&pass("a")).unwrap_err();
        v.unlock(&pass("b")).unwrap_err();
        assert!(matches!(v.unlock(&pass("c")), Err(VaultError::Erased { failed: 3 })));
        assert!(!v.key_path().exists() && !ledger.exists());
        assert_eq!(v.protection().unwrap(), Protection::Absent);
        assert!(matches!(v.unlock(&pass("right one 1")), Err(VaultError::KeyMissing { .. })));
    }

    #[test]
    fn unlock_never_counts_on_a_server_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::for_ledger(&dir.path().join("ledger.db"));
        v.create(&pass("server key file text"), WipePolicy::Never, FAST).unwrap();
        let before = fs::read(v.key_path()).unwrap();
        for _ in 0..12 {
            assert!(matches!(v.unlock(&pass("wrong")), Err(VaultError::WrongPassphrase { tries_left: None, .. })));
        }
        assert_eq!(fs::read(v.key_path()).unwrap(), before, "a server's key file is never written on open");
    }

    #[test]
    fn change_rewraps_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::for_ledger(&dir.path().join("ledger.db"));
        let key = v.create(&pass("old passphrase"), WipePolicy::After(10), FAST).unwrap();
        assert!(matches!(v.change(&pass("old passphrase"), &pass("123")), Err(VaultError::WeakPassphrase { .. })));
        v.change(&pass("old passphrase"), &pass("new passphrase")).unwrap();
        assert!(matches!(v.unlock(&pass("old passphrase")), Err(VaultError::WrongPassphrase { .. })));
        assert_eq!(v.unlock(&pass("new passphrase")).unwrap(), key);
        assert_eq!(v.policy().unwrap(), WipePolicy::After(10));
    }

    #[test]
    fn unlock_fails_when_the_parameters_were_altered() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::for_ledger(&dir.path().join("ledger.db"));
        v.create(&pass("right one 1"), WipePolicy::After(10), FAST).unwrap();
        let text = fs::read_to_string(v.key_path()).unwrap().replace("\"wipe_after\": 10", "\"wipe_after\": 100");
        fs::write(v.key_path(), text).unwrap();
        assert!(matches!(v.unlock(&pass("right one 1")), Err(VaultError::WrongPassphrase { .. })));
    }

    #[test]
    fn protection_tells_plain_encrypted_and_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.db");
        let v = Vault::for_ledger(&ledger);
        assert_eq!(v.protection().unwrap(), Protection::Absent);
        fs::write(&ledger, b"SQLite format 3\0rest").unwrap();
        assert_eq!(v.protection().unwrap(), Protection::Plain);
        fs::write(&ledger, [0x5a; 64]).unwrap();
        assert_eq!(v.protection().unwrap(), Protection::KeyLost);
        v.create(&pass("right one 1"), WipePolicy::Never, FAST).unwrap();
        assert_eq!(v.protection().unwrap(), Protection::Encrypted);
    }

    #[test]
    fn check_strength_refuses_short_pins_and_repeats() {
        assert!(pass("123456").check_strength().is_err());
        assert!(pass("12345678901").check_strength().is_err());
        assert!(pass("123456789012").check_strength().is_ok());
        assert!(pass("aaaaaaaaaaaa").check_strength().is_err());
        assert!(pass("柿子树三棵").check_strength().is_err());
        assert!(pass("门前有3棵柿子树").check_strength().is_ok());
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
