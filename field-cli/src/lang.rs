//! The user's language: the core's rule (`fq_core::lang`), read by clap.
//!
//! Users are village cadres in China: Chinese is the default whenever the
//! environment does not name another language (see `fq_core::lang`). Error
//! texts live in `message`; labels of the core's vocabularies come from the
//! core itself (`zh()` / `en()`).

pub(crate) use fq_core::lang::{Lang, choices};

/// clap's parser for `--lang`.
pub(crate) fn parse(text: &str) -> Result<Lang, String> {
    text.parse().map_err(|_| format!("{text:?}: zh | en"))
}
