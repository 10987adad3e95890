//! The user's language and the words of the interface.
//!
//! Users are village cadres in China: Chinese is the default whenever the
//! environment does not say otherwise, and every word the CLI prints exists in
//! Chinese and English. Error texts live in `message`; labels of the core's
//! vocabularies come from the core itself (`zh()` / `en()`).

use std::ffi::OsString;

use fq_core::case::{Category, EventKind, Level, Outcome, Risk, Role, Status};

/// The language of everything `fq` prints for people (not `--json` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// 中文 (default).
    Zh,
    /// English.
    En,
}

/// Locale variables in POSIX precedence order: the first one set wins.
const LOCALE_VARS: [&str; 3] = ["LC_ALL", "LC_MESSAGES", "LANG"];

impl Lang {
    /// The language the environment asks for: `zh_*` gives Chinese, any other
    /// locale English, and no locale at all Chinese (the users are in China and
    /// many phones and containers set none).
    pub(crate) fn from_env() -> Lang {
        let locale = LOCALE_VARS.iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        match locale {
            None => Lang::Zh,
            Some(v) if v.trim().to_ascii_lowercase().starts_with("zh") => Lang::Zh,
            Some(_) => Lang::En,
        }
    }

    /// The language named by `--lang` among raw arguments, else the
    /// environment's. Used when clap itself refused the arguments and so could
    /// not tell us.
    pub(crate) fn from_args(args: &[OsString]) -> Lang {
        let mut it = args.iter().map(|a| a.to_string_lossy());
        while let Some(arg) = it.next() {
            let value = match arg.strip_prefix("--lang") {
                Some("") => it.next().map(|v| v.into_owned()),
                Some(rest) => rest.strip_prefix('=').map(str::to_owned),
                None => None,
            };
            match value.as_deref().map(str::trim) {
                Some("zh") => return Lang::Zh,
                Some("en") => return Lang::En,
                _ => {}
            }
        }
        Lang::from_env()
    }

    /// Picks the text in this language.
    pub(crate) fn pick<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// The label of a core vocabulary value in this language.
    pub(crate) fn label(self, value: impl Label) -> &'static str {
        match self {
            Lang::Zh => value.zh(),
            Lang::En => value.en(),
        }
    }

    /// `（text）` in Chinese, ` (text)` in English.
    pub(crate) fn paren(self, text: &str) -> String {
        match self {
            Lang::Zh => format!("（{text}）"),
            Lang::En => format!(" ({text})"),
        }
    }

    /// A list separator: `、` in Chinese, `, ` in English.
    pub(crate) fn list_sep(self) -> &'static str {
        self.pick("、", ", ")
    }
}

/// A core vocabulary value with Chinese and English labels.
pub(crate) trait Label: Copy {
    /// The stable code.
    fn code(self) -> &'static str;
    /// The Chinese label.
    fn zh(self) -> &'static str;
    /// The English label.
    fn en(self) -> &'static str;
}

macro_rules! label {
    ($($t:ty),+) => {
        $(impl Label for $t {
            fn code(self) -> &'static str { <$t>::code(self) }
            fn zh(self) -> &'static str { <$t>::zh(self) }
            fn en(self) -> &'static str { <$t>::en(self) }
        })+
    };
}

label!(Category, Status, Level, Risk, EventKind, Role, Outcome);

/// Every value of a vocabulary as `code（label）`, for "you can type one of" hints.
pub(crate) fn choices<T: Label>(lang: Lang, all: &[T]) -> String {
    let items: Vec<String> = all
        .iter()
        .map(|v| match lang {
            Lang::Zh => format!("{}（{}）", v.code(), v.zh()),
            Lang::En => format!("{} ({})", v.code(), v.en()),
        })
        .collect();
    items.join(lang.list_sep())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn from_args_reads_both_spellings() {
        assert_eq!(Lang::from_args(&args(&["fq", "--lang", "en", "case"])), Lang::En);
        assert_eq!(Lang::from_args(&args(&["fq", "--lang=zh", "case"])), Lang::Zh);
    }

    #[test]
    fn choices_lists_every_category_with_its_label() {
        let text = choices(Lang::Zh, Category::ALL);
        assert!(text.contains("neighbor（邻里纠纷）"), "{text}");
        assert_eq!(text.matches('（').count(), Category::ALL.len());
    }
}
