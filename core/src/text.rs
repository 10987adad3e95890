//! Free text from people and peers: refused at input if it could act on a
//! terminal, escaped at output because a peer may still send it.
//!
//! A title, a note or a party's name is typed on one device and read on many
//! others, on a township officer's or a county admin's terminal among them.
//! Control characters (ESC starts a terminal escape sequence that can clear the
//! screen or rewrite the window title; BEL, CR and backspace rewrite what was
//! shown) and the Unicode bidirectional controls (U+202E makes the rest of a
//! line read backwards, hiding what it says) have no place in a case. So:
//!
//! - at input, [`unsafe_char`] finds them: every C0 control but newline and
//!   tab (which only long text may hold), DEL, every C1 control, and the
//!   bidirectional embeddings, overrides, isolates and marks;
//! - at output, [`SafeWriter`] escapes them wherever they come from: a human
//!   sees `\u{1b}`, JSON keeps them as JSON escapes (`\u001b`), so a forged
//!   peer's text is shown for what it is and never acts on a terminal.

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether `c` may act on a terminal or reorder what is shown, and so is
/// refused at input and escaped at output. Newline and tab are not: long
/// text may hold them (single-line fields refuse them separately).
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidirectional controls: Arabic letter mark, LRM and RLM,
        // embeddings and overrides, isolates.
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        // Line and paragraph separators break a line where no newline shows.
        | '\u{2028}' | '\u{2029}')
}

/// The first character of `text` that may not be stored, with its position
/// (in characters, from 1). `multiline` allows newline and tab.
pub fn unsafe_char(text: &str, multiline: bool) -> Option<(usize, char)> {
    text.chars()
        .enumerate()
        .find(|(_, c)| is_unsafe(*c) || (!multiline && matches!(c, '\n' | '\t')))
        .map(|(i, c)| (i + 1, c))
}

/// A character as people are shown it when it cannot be shown as itself:
/// `U+001B`.
pub fn codepoint(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// `text` with every unsafe character written as `\u{…}` (human output).
/// Borrowed when there is nothing to escape, which is almost always.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// How a [`SafeWriter`] escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// For people: `\u{1b}`.
    Human,
    /// Inside JSON text: `\u001b` (a JSON escape, valid anywhere a raw
    /// character could stand, since these only ever occur inside strings).
    Json,
}

/// A writer that escapes unsafe characters in everything written through it,
/// so no text from a peer reaches a terminal as control. Written bytes must be
/// UTF-8 (split anywhere: an incomplete character waits for its rest); bytes
/// that are not UTF-8 are passed on unchanged, since they cannot form the
/// characters this escapes.
#[derive(Debug)]
pub struct SafeWriter<W: Write> {
    inner: W,
    mode: Escape,
    /// The start of a character whose remaining bytes have not been written yet.
    partial: Vec<u8>,
}

impl<W: Write> SafeWriter<W> {
    /// Escapes what is written to `inner` in `mode`.
    pub fn new(inner: W, mode: Escape) -> Self {
        Self { inner, mode, partial: Vec::new() }
    }

    /// The writer underneath.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush_partial()?;
        Ok(self.inner)
    }

    fn escaped(&self, c: char) -> String {
        match self.mode {
            Escape::Human => format!("\\u{{{:x}}}", u32::from(c)),
            Escape::Json => format!("\\u{:04x}", u32::from(c)),
        }
    }

    fn write_text(&mut self, text: &str) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if is_unsafe(c) {
                self.inner.write_all(&text.as_bytes()[start..i])?;
                let e = self.escaped(c);
                self.inner.write_all(e.as_bytes())?;
                start = i + c.len_utf8();
            }
        }
        self.inner.write_all(&text.as_bytes()[start..])
    }

    fn flush_partial(&mut self) -> io::Result<()> {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.inner.write_all(&rest)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for SafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(buf);
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.write_text(text)?;
                    rest = &[];
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // Valid by construction: from_utf8 said so up to here.
                    self.write_text(std::str::from_utf8(good).unwrap_or_default())?;
                    match e.error_len() {
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            self.partial = bad.to_vec();
                            rest = &[];
                        }
                        Some(n) => {
                            self.inner.write_all(&bad[..n])?;
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unsafe_char_finds_controls_and_bidi_overrides() {
        assert_eq!(unsafe_char("宅基地滴水纠纷", false), None);
        assert_eq!(unsafe_char("第一行\n第二行\t完", true), None);
        assert_eq!(unsafe_char("第一行\n第二行", false), Some((4, '\n')));
        for bad in ['\u{1b}', '\u{7}', '\r', '\u{8}', '\u{7f}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{200f}'] {
            let text = format!("标题{bad}x");
            assert_eq!(unsafe_char(&text, true), Some((3, bad)), "{bad:?}");
        }
    }

    #[test]
    fn escape_shows_what_it_hides() {
        assert!(matches!(escape("李四"), Cow::Borrowed("李四")));
        assert_eq!(escape("a\u{1b}]0;pwned\u{7}b\u{202e}c"), "a\\u{1b}]0;pwned\\u{7}b\\u{202e}c");
        assert_eq!(escape("多行\n文字"), "多行\n文字");
    }

    fn through(mode: Escape, chunks: &[&[u8]]) -> String {
        let mut w = SafeWriter::new(Vec::new(), mode);
        for c in chunks {
            w.write_all(c).unwrap();
        }
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn safe_writer_escapes_across_split_writes() {
        let text = "张\u{1b}[2J三\u{202e}".as_bytes();
        // Every split point, including inside multi-byte characters.
        for i in 0..=text.len() {
            let (a, b) = text.split_at(i);
            assert_eq!(through(Escape::Human, &[a, b]), "张\\u{1b}[2J三\\u{202e}", "split at {i}");
        }
        assert_eq!(through(Escape::Json, &[text]), "张\\u001b[2J三\\u202e");
    }

    #[test]
    fn safe_writer_keeps_json_valid() {
        let value = serde_json::json!({ "title": "a\u{1b}b\u{202e}c\u{85}" });
        let mut w = SafeWriter::new(Vec::new(), Escape::Json);
        serde_json::to_writer(&mut w, &value).unwrap();
        let out = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert!(!out.chars().any(is_unsafe), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, value);
    }
}
