//! Go's escapers: `text/template`'s `js`, `html`, `urlquery` and `strconv`'s quoting (for `%q`),
//! plus the UTF-8 decoding rules they rely on.

use super::unicode_tables::PRINT_RANGES;

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Go's `unicode.IsPrint` (== `strconv.IsPrint`): letters, marks, numbers, punctuation, symbols
/// and U+0020.
pub(super) fn is_print(r: u32) -> bool {
    if r < 0x80 {
        return (0x20..0x7f).contains(&r);
    }
    PRINT_RANGES
        .binary_search_by(|&(lo, hi)| {
            if hi < r {
                std::cmp::Ordering::Less
            } else if lo > r {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Go's `utf8.DecodeRune`: the rune at the start of `s` and its length; an invalid or truncated
/// sequence decodes as (U+FFFD, 1). `s` must not be empty.
pub(super) fn decode_rune(s: &[u8]) -> (u32, usize) {
    let b0 = s[0];
    if b0 < 0x80 {
        return (u32::from(b0), 1);
    }
    let need = match b0 {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (0xFFFD, 1),
    };
    if s.len() < need {
        return (0xFFFD, 1);
    }
    match std::str::from_utf8(&s[..need]) {
        Ok(st) => match st.chars().next() {
            Some(c) => (u32::from(c), need),
            None => (0xFFFD, 1),
        },
        Err(_) => (0xFFFD, 1),
    }
}

/// Number of runes Go counts in `s` (`utf8.RuneCount`: each invalid byte is one rune).
pub(super) fn rune_count(s: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < s.len() {
        i += decode_rune(&s[i..]).1;
        n += 1;
    }
    n
}

/// Appends `r` UTF-8 encoded; invalid runes (surrogates, > U+10FFFF) become U+FFFD, as Go's
/// `utf8.AppendRune`.
pub(super) fn push_rune(out: &mut Vec<u8>, r: u32) {
    let c = char::from_u32(r).unwrap_or('\u{FFFD}');
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Which escaper a `js` / `html` / `urlquery` call applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escaper {
    Js,
    Html,
    UrlQuery,
}

impl Escaper {
    /// Escapes `src` into `out`.
    pub(super) fn escape(self, src: &[u8], out: &mut Vec<u8>) {
        match self {
            Escaper::Js => js_escape(src, out),
            Escaper::Html => html_escape(src, out),
            Escaper::UrlQuery => urlquery_escape(src, out),
        }
    }

    /// Escapes, in place, the bytes `out[start..]` (written there unescaped by the caller).
    pub(super) fn escape_tail(self, out: &mut Vec<u8>, start: usize) {
        let end = out.len();
        if start >= end {
            return;
        }
        let mut i = start;
        while i < end {
            let mut window = [0u8; 4];
            let n = (end - i).min(4);
            window[..n].copy_from_slice(&out[i..i + n]);
            i += match self {
                Escaper::Js => js_unit(&window[..n], out),
                Escaper::Html => {
                    html_byte(window[0], out);
                    1
                }
                Escaper::UrlQuery => {
                    urlquery_byte(window[0], out);
                    1
                }
            };
        }
        out.drain(start..end);
    }
}

fn js_is_special(c: u8) -> bool {
    !(b' '..0x80).contains(&c) || matches!(c, b'\\' | b'\'' | b'"' | b'<' | b'>' | b'&' | b'=')
}

/// Go's `template.JSEscape`.
pub(super) fn js_escape(src: &[u8], out: &mut Vec<u8>) {
    let mut last = 0;
    let mut i = 0;
    while i < src.len() {
        if !js_is_special(src[i]) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&src[last..i]);
        i += js_unit(&src[i..], out);
        last = i;
    }
    out.extend_from_slice(&src[last..]);
}

/// Escapes the unit (one byte or one multi-byte rune) at the start of `src`; returns its length.
fn js_unit(src: &[u8], out: &mut Vec<u8>) -> usize {
    let c = src[0];
    if c < 0x80 {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'<' => out.extend_from_slice(b"\\u003C"),
            b'>' => out.extend_from_slice(b"\\u003E"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            b'=' => out.extend_from_slice(b"\\u003D"),
            c if c < b' ' => {
                out.extend_from_slice(b"\\u00");
                out.push(UPPER_HEX[usize::from(c >> 4)]);
                out.push(UPPER_HEX[usize::from(c & 0xf)]);
            }
            c => out.push(c),
        }
        return 1;
    }
    let (r, size) = decode_rune(src);
    if is_print(r) {
        // Includes an invalid byte: it decodes as U+FFFD (printable) and is copied as is.
        out.extend_from_slice(&src[..size]);
    } else {
        // fmt.Fprintf(w, "\\u%04X", r)
        out.extend_from_slice(b"\\u");
        push_hex(out, u64::from(r), 4, UPPER_HEX);
    }
    size
}

/// Appends `v` in hex with at least `min_digits` digits.
pub(super) fn push_hex(out: &mut Vec<u8>, v: u64, min_digits: usize, digits: &[u8; 16]) {
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = digits[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..min_digits {
        out.push(b'0');
    }
    out.extend_from_slice(&buf[i..]);
}

fn html_byte(c: u8, out: &mut Vec<u8>) {
    match c {
        0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
        b'"' => out.extend_from_slice(b"&#34;"),
        b'\'' => out.extend_from_slice(b"&#39;"),
        b'&' => out.extend_from_slice(b"&amp;"),
        b'<' => out.extend_from_slice(b"&lt;"),
        b'>' => out.extend_from_slice(b"&gt;"),
        c => out.push(c),
    }
}

/// Go's `template.HTMLEscape`.
pub(super) fn html_escape(src: &[u8], out: &mut Vec<u8>) {
    for &c in src {
        html_byte(c, out);
    }
}

fn urlquery_byte(c: u8, out: &mut Vec<u8>) {
    match c {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(c),
        b' ' => out.push(b'+'),
        c => {
            out.push(b'%');
            out.push(UPPER_HEX[usize::from(c >> 4)]);
            out.push(UPPER_HEX[usize::from(c & 0xf)]);
        }
    }
}

/// Go's `url.QueryEscape`.
pub(super) fn urlquery_escape(src: &[u8], out: &mut Vec<u8>) {
    for &c in src {
        urlquery_byte(c, out);
    }
}

/// Go's `strconv.appendEscapedRune` for a rune that is not an invalid byte.
fn escaped_rune(out: &mut Vec<u8>, r: u32, quote: u8, ascii_only: bool) {
    if r == u32::from(quote) || r == u32::from(b'\\') {
        out.push(b'\\');
        push_rune(out, r);
        return;
    }
    if ascii_only {
        if r < 0x80 && is_print(r) {
            out.push(r as u8);
            return;
        }
    } else if is_print(r) {
        push_rune(out, r);
        return;
    }
    match r {
        0x07 => out.extend_from_slice(b"\\a"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        0x0a => out.extend_from_slice(b"\\n"),
        0x0d => out.extend_from_slice(b"\\r"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0b => out.extend_from_slice(b"\\v"),
        r if r < u32::from(b' ') || r == 0x7f => {
            out.extend_from_slice(b"\\x");
            push_hex(out, u64::from(r), 2, LOWER_HEX);
        }
        r => {
            let r = if char::from_u32(r).is_some() {
                r
            } else {
                0xFFFD
            };
            if r < 0x10000 {
                out.extend_from_slice(b"\\u");
                push_hex(out, u64::from(r), 4, LOWER_HEX);
            } else {
                out.extend_from_slice(b"\\U");
                push_hex(out, u64::from(r), 8, LOWER_HEX);
            }
        }
    }
}

/// Go's `strconv.Quote` (`ascii_only`: `strconv.QuoteToASCII`).
pub(super) fn quote(s: &[u8], ascii_only: bool, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut i = 0;
    while i < s.len() {
        let (r, w) = decode_rune(&s[i..]);
        if w == 1 && r == 0xFFFD {
            out.extend_from_slice(b"\\x");
            push_hex(out, u64::from(s[i]), 2, LOWER_HEX);
        } else {
            escaped_rune(out, r, b'"', ascii_only);
        }
        i += w;
    }
    out.push(b'"');
}

/// Go's `strconv.QuoteRune` (`ascii_only`: `QuoteRuneToASCII`) of `rune(c)`.
pub(super) fn quote_rune(r: i32, ascii_only: bool, out: &mut Vec<u8>) {
    let r = u32::try_from(r)
        .ok()
        .filter(|&r| char::from_u32(r).is_some())
        .unwrap_or(0xFFFD);
    out.push(b'\'');
    escaped_rune(out, r, b'\'', ascii_only);
    out.push(b'\'');
}

/// Go's `strconv.CanBackquote`.
pub(super) fn can_backquote(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        let (r, w) = decode_rune(&s[i..]);
        i += w;
        if w > 1 {
            if r == 0xFEFF {
                return false;
            }
            continue;
        }
        if r == 0xFFFD {
            return false;
        }
        if (r < u32::from(b' ') && r != u32::from(b'\t')) || r == u32::from(b'`') || r == 0x7f {
            return false;
        }
    }
    true
}
