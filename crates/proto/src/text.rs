//! Text from agents made safe for an operator's terminal, and the rule for
//! a tag an agent may send.
//!
//! Why: tags, versions, facts, changes, errors and diffs come from agents
//! (and, through a managed file's diff, from whoever can write that file).
//! Printed raw, `ESC[1A ESC[2K` erases the line above on a terminal, and an
//! OSC sequence can retitle it or worse. Everything the CLI prints from
//! agents goes through [`escape`]; tags are checked on arrival
//! ([`valid_tag`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest tag the master takes from an agent, in bytes.
pub const MAX_TAG_BYTES: usize = 256;

/// `text` with every control character but newline and tab written as a
/// visible escape (`\x1b`, `\u{9b}`), so it can only print as text. A
/// backslash is left as it is: the escapes are for reading, not parsing.
pub fn escape(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if u32::from(c) < 0x80 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// May an agent send this tag? Printable (no control characters, no
/// spaces), at most [`MAX_TAG_BYTES`].
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= MAX_TAG_BYTES && !tag.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_print_as_escapes() {
        for (text, shown) in [
            ("plain text\n\twith tab", "plain text\n\twith tab"),
            ("\x1b[1A\x1b[2Kerased", "\\x1b[1A\\x1b[2Kerased"),
            ("bell\x07 cr\r del\x7f", "bell\\x07 cr\\x0d del\\x7f"),
            ("c1 \u{9b}31m", "c1 \\u{9b}31m"),
            ("ünïcode ✓", "ünïcode ✓"),
        ] {
            assert_eq!(escape(text), shown, "{text:?}");
        }
        assert!(matches!(escape("nothing to do"), Cow::Borrowed(_)));
    }

    #[test]
    fn tags_are_printable_and_bounded() {
        for (tag, valid) in [
            ("halite/beacon/web01/motd", true),
            ("", false),
            ("halite/beacon/web01/\x1b[2K", false),
            ("halite/beacon/web01/a b", false),
            ("halite/beacon/web01/\u{9b}", false),
            (&*format!("halite/beacon/web01/{}", "x".repeat(236)), true),
            (&*format!("halite/beacon/web01/{}", "x".repeat(237)), false),
        ] {
            assert_eq!(valid_tag(tag), valid, "{tag:?}");
        }
    }
}
