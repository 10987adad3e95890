//! The ledger in the data directory, locked and unlocked (ADR 10).
//!
//! A device's ledger (`DIR/ledger.db`) is encrypted; its data key is wrapped by the user's
//! passphrase in `DIR/ledger.key` (`fq_core::vault`). Every command that opens the ledger
//! comes through here: it asks for the passphrase only if the ledger is encrypted, unwraps
//! the key once, and opens the ledger with it (read-only or read-write) as often as the
//! command needs. A plain ledger from a build before encryption still opens, with a
//! one-line warning on standard error that says to run `fq encrypt`.
//!
//! Here too: `fq init` (creating the ledger encrypted, in a private directory),
//! `fq encrypt` (a plain ledger into an encrypted one, taking in a clear `bundle.json`), and
//! `fq passphrase change`, with what they print.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions, Tier};
use fq_core::text::escape;
use fq_core::vault::{
    self as core_vault, DEFAULT_WIPE_AFTER, DataKey, KdfParams, Protection, Vault, VaultError, WipePolicy,
};
use serde_json::json;

use crate::command::{LEDGER_FILE, clock};
use crate::enroll;
use crate::lang::Lang;
use crate::pin;
use crate::render::json_line;

/// Why a ledger cannot be set up or encrypted here, beyond what the core says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// `init` where an encrypted ledger (or what is left of one) already is.
    #[error("a ledger already exists in {}", dir.display())]
    Exists {
        /// The data directory.
        dir: PathBuf,
    },
    /// `passphrase change` on a ledger that is not encrypted.
    #[error("the ledger is not encrypted")]
    Plain,
    /// `encrypt` on a server's directory: that is `fq-server encrypt`'s job.
    #[error("this is a {tier} server's ledger: use fq-server encrypt")]
    ServerLedger {
        /// The server's tier code.
        tier: &'static str,
    },
}

/// The data directory of this run and where its passphrases come from.
#[derive(Debug)]
pub(crate) struct Place {
    dir: PathBuf,
    vault: Vault,
    source: pin::Source,
    lang: Lang,
    json: bool,
}

/// A ledger whose key (if it has one) is unwrapped: it can be opened as often as needed.
#[derive(Debug)]
pub(crate) struct Unlocked {
    path: PathBuf,
    key: Option<DataKey>,
}

impl Unlocked {
    /// Opens it for reading and writing: only a device's, and only after a read-only look that
    /// writes nothing (`fq` never opens a server's file for writing, ADR 25).
    pub(crate) fn open(&self) -> anyhow::Result<Ledger> {
        crate::command::check_device(self.open_read_only()?.identity(), &self.path)?;
        let opts = LedgerOptions { key: self.key.clone(), ..Default::default() };
        Ledger::open(&self.path, clock(), opts).with_context(|| format!("opening {}", self.path.display()))
    }

    /// Opens it for reading only (safe beside a running server).
    pub(crate) fn open_read_only(&self) -> anyhow::Result<Ledger> {
        Ledger::open_read_only_with_key(&self.path, clock(), self.key.as_ref())
            .with_context(|| format!("opening {} read-only", self.path.display()))
    }
}

/// What `fq encrypt` did.
#[derive(Debug)]
struct Encrypted {
    cases: i64,
    changes: i64,
    audit: i64,
    /// A clear `bundle.json` was taken into the ledger and removed.
    bundle_taken: bool,
    /// The ledger already was encrypted (only the bundle was taken in).
    already: bool,
}

impl Place {
    /// The ledger in `dir`, with passphrases from `file` (`--passphrase-file`) or the usual
    /// places.
    pub(crate) fn new(dir: &Path, file: Option<PathBuf>, lang: Lang, json: bool) -> Self {
        let path = dir.join(LEDGER_FILE);
        Self { dir: dir.to_owned(), vault: Vault::for_ledger(&path), source: pin::Source::new(file, lang), lang, json }
    }

    /// The ledger file.
    pub(crate) fn ledger_path(&self) -> &Path {
        self.vault.ledger_path()
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unwraps the ledger's key, asking for the passphrase if it is encrypted; warns once if
    /// it is not.
    pub(crate) fn unlock(&self) -> anyhow::Result<Unlocked> {
        let path = self.ledger_path().to_owned();
        match self.vault.protection()? {
            Protection::Absent => Err(LedgerError::NotInitialized.into()),
            Protection::KeyLost => Err(VaultError::KeyMissing { path: self.vault.key_path().to_owned() }.into()),
            Protection::Plain => {
                // Servers may run plain (`--encrypt` is their operator's choice); a device
                // should not.
                let device = Ledger::open_read_only(&path, clock()).is_ok_and(|l| l.identity().tier == Tier::Device);
                if device {
                    self.warn_plain();
                }
                Ok(Unlocked { path, key: None })
            }
            Protection::Encrypted => {
                // A plain copy left by an `fq encrypt` cut short must not outlive it.
                self.vault.sweep()?;
                let passphrase = self.source.current()?;
                let key = self.vault.unlock(&passphrase)?;
                Ok(Unlocked { path, key: Some(key) })
            }
        }
    }

    /// The one-line warning of a plain ledger, on standard error.
    fn warn_plain(&self) {
        let message = self.lang.pick(
            "警告：本机台账没有加密，手机丢失会泄露当事人信息。请运行 fq encrypt 加密（会要求设置口令）。",
            "warning: this ledger is not encrypted; a lost device would reveal the parties' personal data. Run fq encrypt (it asks for a passphrase).",
        );
        let mut err = io::stderr().lock();
        // A warning that cannot be written changes nothing about the command.
        let _ = if self.json {
            writeln!(err, "{}", json!({ "warning": { "kind": "plain-ledger", "message": message } }))
        } else {
            writeln!(err, "{message}")
        };
    }

    /// Creates the encrypted ledger of `fq init`, touching the disk only once the input is
    /// known good and a passphrase was given; a refused init leaves nothing behind.
    pub(crate) fn create(&self, init: InitOptions, wipe_after: Option<u32>) -> anyhow::Result<Ledger> {
        let path = self.ledger_path().to_owned();
        if fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            // An init cut short before SQLite wrote anything: nothing to keep.
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        match self.vault.protection()? {
            Protection::Absent => {}
            Protection::Plain => {
                if let Ok(existing) = Ledger::open_read_only(&path, clock()) {
                    let id = existing.identity();
                    return Err(
                        LedgerError::AlreadyInitialized { name: id.name.clone(), scope: id.scope.to_string() }.into()
                    );
                }
                return Err(LockError::Exists { dir: self.dir.clone() }.into());
            }
            Protection::Encrypted | Protection::KeyLost => {
                return Err(LockError::Exists { dir: self.dir.clone() }.into());
            }
        }
        let wipe = WipePolicy::device(wipe_after.unwrap_or(DEFAULT_WIPE_AFTER))?;
        // The ledger checks the code against the role only while it creates the file: run
        // the same checks on a throwaway ledger in memory first.
        Ledger::init_in_memory(init.clone(), clock(), LedgerOptions::default())?;
        let passphrase = self.source.chosen()?;
        passphrase.check_strength()?;
        let dir_existed = self.dir.exists();
        core_vault::private_dir(&self.dir)?;
        let made =
            self.vault.create(&passphrase, wipe, KdfParams::DEFAULT).map_err(anyhow::Error::from).and_then(|key| {
                let opts = LedgerOptions { key: Some(key), ..Default::default() };
                Ledger::init(&path, init, clock(), opts).with_context(|| format!("creating {}", path.display()))
            });
        if made.is_err() {
            for file in core_vault::ledger_files(&path) {
                let _ = fs::remove_file(file);
            }
            let _ = fs::remove_file(self.vault.key_path());
            if !dir_existed {
                // Only removes the directory if it is still empty.
                let _ = fs::remove_dir(&self.dir);
            }
        }
        made
    }

    /// `fq encrypt`: the plain ledger into an encrypted one, and a clear `bundle.json` into
    /// the ledger.
    pub(crate) fn encrypt(&self, out: &mut dyn Write, wipe_after: Option<u32>) -> anyhow::Result<()> {
        let wipe = WipePolicy::device(wipe_after.unwrap_or(DEFAULT_WIPE_AFTER))?;
        let legacy = self.dir.join(enroll::BUNDLE_FILE);
        let bundle = if legacy.exists() { Some(enroll::load(&legacy)?) } else { None };
        let done = match self.vault.protection()? {
            Protection::Absent => return Err(LedgerError::NotInitialized.into()),
            Protection::KeyLost => {
                return Err(VaultError::KeyMissing { path: self.vault.key_path().to_owned() }.into());
            }
            Protection::Encrypted => {
                if bundle.is_none() {
                    return Err(VaultError::AlreadyEncrypted.into());
                }
                let mut ledger = self.unlock()?.open()?;
                if let Some(b) = &bundle {
                    enroll::check_fits(b, ledger.identity())?;
                    enroll::keep(&mut ledger, b)?;
                }
                summary(&ledger, true, true)?
            }
            Protection::Plain => {
                // Opening it read-write first brings an older file to the current schema
                // and proves it is a ledger this fq can copy.
                let ledger = Ledger::open(self.ledger_path(), clock(), LedgerOptions::default())
                    .with_context(|| format!("opening {}", self.ledger_path().display()))?;
                if ledger.identity().tier != Tier::Device {
                    return Err(LockError::ServerLedger { tier: ledger.identity().tier.code() }.into());
                }
                if let Some(b) = &bundle {
                    enroll::check_fits(b, ledger.identity())?;
                }
                drop(ledger);
                let passphrase = self.source.chosen()?;
                passphrase.check_strength()?;
                core_vault::private_dir(&self.dir)?;
                let key = self.vault.encrypt(&passphrase, wipe, KdfParams::DEFAULT)?;
                let unlocked = Unlocked { path: self.ledger_path().to_owned(), key: Some(key) };
                let mut ledger = unlocked.open()?;
                if let Some(b) = &bundle {
                    enroll::keep(&mut ledger, b)?;
                }
                summary(&ledger, bundle.is_some(), false)?
            }
        };
        if bundle.is_some() {
            // The key is inside the encrypted ledger now: the clear copy goes.
            core_vault::scrub(&legacy)?;
        }
        self.protect_files()?;
        self.print_encrypted(out, &done)
    }

    /// `fq passphrase change`: the old passphrase, then the new one; only the key file is
    /// rewritten.
    pub(crate) fn change(&self, out: &mut dyn Write, new_file: Option<&Path>) -> anyhow::Result<()> {
        match self.vault.protection()? {
            Protection::Absent => return Err(LedgerError::NotInitialized.into()),
            Protection::Plain => return Err(LockError::Plain.into()),
            Protection::KeyLost => {
                return Err(VaultError::KeyMissing { path: self.vault.key_path().to_owned() }.into());
            }
            Protection::Encrypted => {}
        }
        let old = self.source.current()?;
        // Check the old one before asking for the new one twice. A server's key file is
        // changed by its operator with fq-server, never here.
        let key = self.vault.unlock(&old)?;
        let unlocked = Unlocked { path: self.ledger_path().to_owned(), key: Some(key) };
        crate::command::check_device(unlocked.open_read_only()?.identity(), self.ledger_path())?;
        let new = self.source.replacement(new_file)?;
        self.vault.change(&old, &new)?;
        if self.json {
            return json_line(out, &json!({ "ok": true, "key_file": self.vault.key_path().to_string_lossy() }));
        }
        writeln!(
            out,
            "{}",
            self.lang.pick(
                "口令已更改：以后打开台账请用新口令。台账数据没有重写。",
                "The passphrase is changed: open the ledger with the new one from now on. The ledger's data was not rewritten."
            )
        )?;
        Ok(())
    }

    /// Makes the data directory 0700 and every file fq keeps in it 0600 (files made by
    /// older builds were 0644).
    fn protect_files(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        core_vault::private_dir(&self.dir)?;
        for entry in fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("protecting {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    fn print_encrypted(&self, out: &mut dyn Write, done: &Encrypted) -> anyhow::Result<()> {
        if self.json {
            return json_line(
                out,
                &json!({
                    "ok": true,
                    "already_encrypted": done.already,
                    "cases": done.cases,
                    "changes": done.changes,
                    "audit_records": done.audit,
                    "bundle_taken_in": done.bundle_taken,
                    "key_file": self.vault.key_path().to_string_lossy(),
                }),
            );
        }
        let shown = self.dir.display().to_string();
        let dir = escape(&shown);
        let text = match (self.lang, done.already) {
            (Lang::Zh, false) => format!(
                "台账已加密：{} 件案件、{} 条修改、{} 条审计记录都已保留（{dir}）。以后打开台账要输入口令。",
                done.cases, done.changes, done.audit
            ),
            (Lang::En, false) => format!(
                "The ledger is encrypted: all {} cases, {} changes and {} audit records kept ({dir}). Opening it now asks for the passphrase.",
                done.cases, done.changes, done.audit
            ),
            (Lang::Zh, true) => format!("台账早已加密（{dir}）。"),
            (Lang::En, true) => format!("The ledger was already encrypted ({dir})."),
        };
        writeln!(out, "{text}")?;
        if done.bundle_taken {
            writeln!(
                out,
                "{}",
                self.lang.pick(
                    "证书包（含本机私钥）已存入加密台账，明文的 bundle.json 已删除。",
                    "The certificate bundle (with the device's private key) is now inside the encrypted ledger; the clear bundle.json was removed."
                )
            )?;
        }
        Ok(())
    }
}

fn summary(ledger: &Ledger, bundle_taken: bool, already: bool) -> anyhow::Result<Encrypted> {
    let [cases, changes, _pending, audit] = ledger.counts()?;
    Ok(Encrypted { cases, changes, audit, bundle_taken, already })
}
