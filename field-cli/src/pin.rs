//! Asking for the ledger's passphrase (PIN): from `--passphrase-file`, from `FQ_PASSPHRASE`,
//! or on the terminal without echo, in that order. With no terminal and neither of the other
//! two, nothing is asked and the command stops (exit 2) saying how to give one: a script must
//! never hang on a prompt nobody sees.

use std::fs;
use std::io::{self, IsTerminal};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fq_core::vault::Passphrase;
use zeroize::Zeroizing;

use crate::lang::Lang;

/// The environment variable that gives the passphrase (scripts, tests, `fq demo`'s children).
pub(crate) const PASSPHRASE_ENV: &str = "FQ_PASSPHRASE";
/// Largest passphrase file read.
const MAX_FILE_BYTES: u64 = 4096;

/// Why no passphrase could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    /// No terminal to ask on, and no file or variable given.
    #[error("no passphrase: no terminal to ask on, and no --passphrase-file or {PASSPHRASE_ENV}")]
    NoPassphrase,
    /// `init` or `encrypt` with no terminal and no file or variable.
    #[error("no passphrase for the new ledger: no terminal to ask on, and no --passphrase-file or {PASSPHRASE_ENV}")]
    NoChosenPassphrase,
    /// `passphrase change` with no terminal and no `--new-passphrase-file`.
    #[error("no new passphrase: no terminal to ask on, and no --new-passphrase-file")]
    NoNewPassphrase,
    /// The two typed passphrases differ.
    #[error("the two passphrases differ")]
    Mismatch,
    /// The passphrase is empty.
    #[error("the passphrase is empty")]
    Empty,
    /// The file may be read by the group or others.
    #[error("passphrase file {} is readable by others", path.display())]
    FileExposed {
        /// The file.
        path: PathBuf,
    },
    /// The file cannot be read.
    #[error("passphrase file {} cannot be read", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The terminal could not be read.
    #[error("the passphrase could not be read from the terminal")]
    Terminal(#[source] io::Error),
}

/// Where this run gets passphrases from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    file: Option<PathBuf>,
    lang: Lang,
}

impl Source {
    /// Passphrases from `--passphrase-file` if given, else the environment or the terminal.
    pub(crate) fn new(file: Option<PathBuf>, lang: Lang) -> Self {
        Self { file, lang }
    }

    /// The passphrase of an existing ledger.
    pub(crate) fn current(&self) -> Result<Passphrase, PinError> {
        if let Some(file) = &self.file {
            return read_file(file);
        }
        if let Some(p) = from_env()? {
            return Ok(p);
        }
        if !io::stdin().is_terminal() {
            return Err(PinError::NoPassphrase);
        }
        ask(self.lang.pick("请输入台账口令：", "Ledger passphrase: "))
    }

    /// The passphrase of a new ledger (`init`, `encrypt`): from the file or the environment
    /// as given, or typed twice on the terminal.
    pub(crate) fn chosen(&self) -> Result<Passphrase, PinError> {
        if let Some(file) = &self.file {
            return read_file(file);
        }
        if let Some(p) = from_env()? {
            return Ok(p);
        }
        if !io::stdin().is_terminal() {
            return Err(PinError::NoChosenPassphrase);
        }
        self.twice()
    }

    /// `passphrase change`'s new passphrase: `--new-passphrase-file`, or typed twice.
    pub(crate) fn replacement(&self, file: Option<&Path>) -> Result<Passphrase, PinError> {
        if let Some(file) = file {
            return read_file(file);
        }
        if !io::stdin().is_terminal() {
            return Err(PinError::NoNewPassphrase);
        }
        self.twice()
    }

    fn twice(&self) -> Result<Passphrase, PinError> {
        let first = self.lang.pick(
            "请设置台账口令（至少8个字，不能只用数字，例如“我家门前有3棵柿子树”）：",
            "Choose the ledger passphrase (8 characters or more, not only digits): ",
        );
        let again = self.lang.pick("请再输入一遍：", "Type it again: ");
        confirm(|prompt| rpassword::prompt_password(prompt).map(Zeroizing::new), first, again)
    }
}

/// Asks twice through `ask` and checks that both answers agree.
fn confirm(
    mut ask: impl FnMut(&str) -> io::Result<Zeroizing<String>>,
    first: &str,
    again: &str,
) -> Result<Passphrase, PinError> {
    let one = ask(first).map_err(PinError::Terminal)?;
    let two = ask(again).map_err(PinError::Terminal)?;
    if *one != *two {
        return Err(PinError::Mismatch);
    }
    non_empty(one.to_string())
}

fn ask(prompt: &str) -> Result<Passphrase, PinError> {
    let text = Zeroizing::new(rpassword::prompt_password(prompt).map_err(PinError::Terminal)?);
    non_empty(text.to_string())
}

fn from_env() -> Result<Option<Passphrase>, PinError> {
    match std::env::var(PASSPHRASE_ENV) {
        Ok(text) => non_empty(text).map(Some),
        Err(_) => Ok(None),
    }
}

/// Reads a passphrase file: owner-only (like an ssh key), one line; a final line break
/// (as `echo` or an editor leaves) is not part of the passphrase.
pub(crate) fn read_file(path: &Path) -> Result<Passphrase, PinError> {
    let err = |source| PinError::File { path: path.to_owned(), source };
    let meta = fs::metadata(path).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(PinError::FileExposed { path: path.to_owned() });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(io::Error::new(io::ErrorKind::InvalidData, "larger than a passphrase")));
    }
    let mut text = Zeroizing::new(fs::read_to_string(path).map_err(err)?);
    let trimmed = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned();
    text.clear();
    non_empty(trimmed)
}

fn non_empty(text: String) -> Result<Passphrase, PinError> {
    if text.is_empty() {
        return Err(PinError::Empty);
    }
    Ok(Passphrase::new(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answers(list: &[&str]) -> impl FnMut(&str) -> io::Result<Zeroizing<String>> {
        let mut list: Vec<String> = list.iter().rev().map(|s| (*s).to_owned()).collect();
        move |_| Ok(Zeroizing::new(list.pop().unwrap()))
    }

    #[test]
    fn confirm_accepts_the_same_passphrase_twice() {
        let p = confirm(answers(&["门前有3棵柿子树", "门前有3棵柿子树"]), "a", "b").unwrap();
        assert_eq!(p, Passphrase::new("门前有3棵柿子树".into()));
    }

    #[test]
    fn confirm_refuses_two_different_passphrases() {
        assert!(matches!(confirm(answers(&["门前有3棵柿子树", "门前有4棵柿子树"]), "a", "b"), Err(PinError::Mismatch)));
        assert!(matches!(confirm(answers(&["", ""]), "a", "b"), Err(PinError::Empty)));
    }

    #[test]
    fn read_file_drops_one_line_break_and_refuses_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        fs::write(&f, "门前有3棵柿子树 \r\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file(&f).unwrap(), Passphrase::new("门前有3棵柿子树 ".into()));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_file(&f), Err(PinError::FileExposed { .. })));
    }
}
