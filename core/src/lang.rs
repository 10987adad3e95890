//! The language people read fq in: Chinese by default, English on request.
//!
//! The users are village cadres and county staff in China. Chinese is the
//! default whenever the environment does not name another language: no locale
//! at all (many phones, services and containers), and the neutral `C`,
//! `POSIX` and `C.UTF-8` locales (the default of most servers and container
//! images) all mean Chinese. Only a locale that names another language
//! (`en_US.UTF-8`, `fr_FR`) switches to English, the one other language fq
//! speaks. Both binaries (`fq`, `fq-server`) read it the same way; a
//! `--lang` option wins over the environment.
//!
//! The labels of the core's vocabularies (categories, statuses, roles, ...)
//! come from the vocabularies themselves (`zh()` / `en()`); [`Label`] lets a
//! caller pick the one for a [`Lang`].

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

use crate::case::{Category, EventKind, Level, Outcome, Risk, RiskFlag, Role, Status};

/// The language of everything fq prints for people (never of `--json` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    /// 中文, the default.
    Zh,
    /// English.
    En,
}

/// Locale variables in POSIX precedence order: the first one set wins.
pub const LOCALE_VARS: [&str; 3] = ["LC_ALL", "LC_MESSAGES", "LANG"];

/// A `--lang` value that is neither `zh` nor `en`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language {0:?}: use zh or en")]
pub struct UnknownLang(pub String);

impl FromStr for Lang {
    type Err = UnknownLang;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zh" | "zh-cn" | "zh_cn" | "cn" | "中文" => Ok(Lang::Zh),
            "en" | "en-us" | "en_us" | "english" => Ok(Lang::En),
            _ => Err(UnknownLang(s.to_owned())),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        })
    }
}

impl Lang {
    /// The language a locale string asks for: `zh*`, an empty value and the
    /// neutral `C`, `POSIX` and `C.*` locales give Chinese; a locale naming
    /// any other language gives English.
    pub fn from_locale(locale: &str) -> Lang {
        let l = locale.trim();
        let name = l.split(['.', '@']).next().unwrap_or_default();
        if name.is_empty() || name == "C" || name == "POSIX" || name.to_ascii_lowercase().starts_with("zh") {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    /// The language the environment asks for ([`LOCALE_VARS`] in POSIX
    /// order, the first set and non-empty one decides; none set: Chinese).
    pub fn from_env() -> Lang {
        let locale = LOCALE_VARS.iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        locale.map_or(Lang::Zh, |l| Lang::from_locale(&l))
    }

    /// The language named by `--lang` among raw arguments, else the
    /// environment's. For when the argument parser itself refused the
    /// arguments and so could not tell.
    pub fn from_args(args: &[OsString]) -> Lang {
        let mut it = args.iter().map(|a| a.to_string_lossy());
        while let Some(arg) = it.next() {
            let value = match arg.strip_prefix("--lang") {
                Some("") => it.next().map(|v| v.into_owned()),
                Some(rest) => rest.strip_prefix('=').map(str::to_owned),
                None => None,
            };
            if let Some(lang) = value.and_then(|v| v.parse().ok()) {
                return lang;
            }
        }
        Lang::from_env()
    }

    /// Picks the text in this language.
    pub fn pick<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// The label of a vocabulary value in this language.
    pub fn label(self, value: impl Label) -> &'static str {
        match self {
            Lang::Zh => value.zh(),
            Lang::En => value.en(),
        }
    }

    /// The half of a two-language text written `中文 / English` (one ` / `
    /// between the halves, as the command lines' help texts are) for this
    /// language; a text without the separator is returned whole.
    pub fn half(self, text: &str) -> &str {
        match text.split_once(" / ") {
            Some((zh, en)) => self.pick(zh, en).trim(),
            None => text,
        }
    }

    /// `（text）` in Chinese, ` (text)` in English.
    pub fn paren(self, text: &str) -> String {
        match self {
            Lang::Zh => format!("（{text}）"),
            Lang::En => format!(" ({text})"),
        }
    }

    /// A list separator: `、` in Chinese, `, ` in English.
    pub fn list_sep(self) -> &'static str {
        self.pick("、", ", ")
    }
}

/// A vocabulary value with a stable code and Chinese and English labels.
pub trait Label: Copy {
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

label!(Category, Status, Level, Risk, RiskFlag, EventKind, Role, Outcome);

/// Every value of a vocabulary as `code（label）`, for "you can type one of" hints.
pub fn choices<T: Label>(lang: Lang, all: &[T]) -> String {
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
    fn from_locale_takes_neutral_locales_as_chinese() {
        for l in ["", "C", "POSIX", "C.UTF-8", "C.utf8", "zh_CN.UTF-8", "zh_TW", "zh_CN.GB18030@stroke"] {
            assert_eq!(Lang::from_locale(l), Lang::Zh, "{l:?}");
        }
        for l in ["en_US.UTF-8", "en_GB", "fr_FR.UTF-8", "de_DE@euro"] {
            assert_eq!(Lang::from_locale(l), Lang::En, "{l:?}");
        }
    }

    #[test]
    fn half_keeps_the_text_of_one_language() {
        assert_eq!(Lang::Zh.half("显示帮助 / Show this help"), "显示帮助");
        assert_eq!(Lang::En.half("显示帮助 / Show this help"), "Show this help");
        assert_eq!(Lang::En.half("zh|en"), "zh|en");
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
