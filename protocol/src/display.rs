//! Showing text that came from someone else: message text, names, node ids, file names.
//!
//! Such text is chosen by a stranger, a modified client or a malicious node, and a terminal
//! obeys what it prints: `ESC [1A ESC [2K` erases the line above (a "key changed" warning), OSC
//! sequences retitle the window or plant hyperlinks, and bidi overrides make `exe.txt` read as
//! `txt.exe`. Every user interface shows foreign text only through [`line`] or [`block`], which
//! replace each such character by a visible stand-in, so what is shown is inert and a reader can
//! see that something was there.

use std::borrow::Cow;
use std::fmt::Write;

/// What [`block`] puts at the start of every line after the first, so that no line of foreign
/// text can pass for a line of the program's own output.
pub const CONTINUATION: &str = "  ┆ ";

/// Whether a character must not reach a terminal as it is: C0 and C1 controls and DEL (cursor
/// moves, colours, OSC, bells), bidi embeddings, overrides, isolates and marks (reordering what
/// the reader sees), zero-width and invisible formatting characters (hiding differences between
/// two names), and the line and paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidi: marks, embeddings and overrides, isolates, the Arabic letter mark.
        | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{61c}'
        // Zero-width and invisible characters, the byte order mark.
        | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{ad}'
        | '\u{180e}' | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}'
        // Line and paragraph separators, and interlinear annotation.
        | '\u{2028}' | '\u{2029}' | '\u{fff9}'..='\u{fffb}'
        // Tag characters (invisible, used to smuggle text).
        | '\u{e0000}'..='\u{e007f}'
    )
}

fn stand_in(out: &mut String, c: char) {
    match c {
        // The Unicode control pictures: ␛ for ESC, ␀ for NUL, …
        '\u{0}'..='\u{1f}' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
        '\u{7f}' => out.push('␡'),
        _ => {
            let _ = write!(out, "<U+{:04X}>", c as u32);
        }
    }
}

/// Foreign text as one inert line: every unsafe character, newlines and tabs included, becomes
/// a visible stand-in. For names, node ids, file names and anything shown in a single line.
pub fn line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            stand_in(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Foreign text that may span lines (a message): newlines are kept, but every line after the
/// first begins with [`CONTINUATION`]; `\r\n` counts as one newline, a tab becomes spaces, and
/// every other unsafe character becomes a visible stand-in as in [`line`].
pub fn block(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                out.push('\n');
                out.push_str(CONTINUATION);
            }
            '\t' => out.push_str("    "),
            c if is_unsafe(c) => stand_in(&mut out, c),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        assert!(matches!(line("hello, wörld 👋"), Cow::Borrowed(_)));
        assert!(matches!(block("hello"), Cow::Borrowed(_)));
    }

    #[test]
    fn escape_sequences_cannot_reach_the_terminal() {
        // The reproduction: move up a line, erase it, return to the start.
        let attack = "\u{1b}[1A\u{1b}[2K\rall is well";
        let shown = line(attack);
        assert_eq!(shown, "␛[1A␛[2K␍all is well");
        assert!(!shown.chars().any(is_unsafe));
        // OSC 8 hyperlink and window title, terminated by BEL or ST (a C1 byte).
        let osc = "\u{1b}]0;pwned\u{7}\u{1b}]8;;http://x\u{9c}click";
        assert!(!line(osc).chars().any(|c| c.is_control()));
        assert!(!block(osc).chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_become_visible() {
        // "invoice\u{202e}fdp.exe" reads as "invoiceexe.pdf" on screen.
        assert_eq!(line("invoice\u{202e}fdp.exe"), "invoice<U+202E>fdp.exe");
        assert_eq!(line("b\u{200b}ob"), "b<U+200B>ob");
        assert_eq!(line("\u{2066}x\u{2069}"), "<U+2066>x<U+2069>");
    }

    #[test]
    fn a_message_keeps_its_lines_but_cannot_forge_one() {
        let text = "hi\r\nWARNING: the key of bob changed\tok";
        assert_eq!(
            block(text),
            format!("hi\n{CONTINUATION}WARNING: the key of bob changed    ok")
        );
        // In one line, the newline itself is shown.
        assert_eq!(line("a\nb"), "a␊b");
    }

    #[test]
    fn every_char_class_is_neutralised() {
        for c in (0u32..0x11_0000).filter_map(char::from_u32) {
            let s = c.to_string();
            for shown in [line(&s), block(&s)] {
                let bad = shown.chars().any(|d| is_unsafe(d) && d != '\n');
                assert!(!bad, "U+{:04X} survived", c as u32);
            }
        }
    }
}
