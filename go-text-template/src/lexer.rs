//! Splits template text into text runs and action token lists, following Go's
//! `text/template/parse` lexer (delimiters `{{` `}}`, trim markers, comments, literals).

use super::parse::{syntax_error, ParseResult};

/// Whitespace as Go's template lexer defines it.
pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

const SPACE_CHARS: &[char] = &[' ', '\t', '\r', '\n'];

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Kinds of tokens inside an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Space,
    Bool,
    Char,
    Dot,
    /// `.Name`; the text excludes the dot.
    Field,
    Ident,
    Keyword,
    Number,
    /// Double-quoted string, quotes included.
    Str,
    /// Back-quoted string, quotes included.
    RawStr,
    /// `$` or `$name`.
    Variable,
    Pipe,
    LParen,
    RParen,
    Assign,
    Declare,
    /// Any other printable ASCII character (only meaningful to report an error).
    Other,
}

/// One token inside an action.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tok<'s> {
    pub(super) kind: Kind,
    pub(super) text: &'s str,
    /// Byte offset in the template text.
    pub(super) pos: usize,
}

/// A piece of template text.
#[derive(Debug)]
pub(super) enum Piece<'s> {
    Text(&'s str),
    Action { toks: Vec<Tok<'s>>, pos: usize },
}

const KEYWORDS: &[&str] = &[
    "block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with",
];

/// Splits `src` into text and actions (comments dropped, trim markers applied).
pub(super) fn lex(src: &str) -> ParseResult<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut pos = 0;
    let mut trim_next = false;
    loop {
        let open = src[pos..].find("{{").map(|i| pos + i);
        let mut text = &src[pos..open.unwrap_or(src.len())];
        if trim_next {
            text = text.trim_start_matches(SPACE_CHARS);
        }
        let Some(open) = open else {
            if !text.is_empty() {
                pieces.push(Piece::Text(text));
            }
            return Ok(pieces);
        };
        let mut p = open + 2;
        let rest = &src[p..];
        let left_trim = rest.starts_with('-') && rest[1..].starts_with(is_space);
        if left_trim {
            text = text.trim_end_matches(SPACE_CHARS);
            p += 2;
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if src[p..].starts_with("/*") {
            let Some(close) = src[p + 2..].find("*/") else {
                return Err(syntax_error(src, open, "unclosed comment"));
            };
            let q = p + 2 + close + 2;
            match right_delim_at(src, q) {
                Some((end, trim)) => {
                    pos = end;
                    trim_next = trim;
                }
                None => {
                    return Err(syntax_error(
                        src,
                        q,
                        "comment ends before closing delimiter",
                    ))
                }
            }
            continue;
        }
        let (toks, end, trim) = lex_action(src, p)?;
        pieces.push(Piece::Action { toks, pos: open });
        pos = end;
        trim_next = trim;
    }
}

/// If a closing delimiter (`}}` or ` -}}`) starts at `p`, returns the position after it and
/// whether it trims.
fn right_delim_at(src: &str, p: usize) -> Option<(usize, bool)> {
    let rest = &src[p..];
    if rest.starts_with("}}") {
        return Some((p + 2, false));
    }
    let mut chars = rest.chars();
    if chars.next().is_some_and(is_space) && chars.as_str().starts_with("-}}") {
        return Some((p + 1 + 3, true));
    }
    None
}

fn at_terminator(src: &str, p: usize) -> bool {
    let rest = &src[p..];
    match rest.chars().next() {
        None => true,
        Some(c) if is_space(c) => true,
        Some('.' | ',' | '|' | ':' | ')' | '(') => true,
        Some(_) => rest.starts_with("}}"),
    }
}

/// Lexes the inside of an action starting at `p` (after `{{` and any left trim marker).
/// Returns the tokens, the position after the closing delimiter and whether it trims.
fn lex_action(src: &str, mut p: usize) -> ParseResult<(Vec<Tok<'_>>, usize, bool)> {
    let mut toks = Vec::new();
    let mut parens: usize = 0;
    let tok = |kind, start: usize, end: usize| Tok {
        kind,
        text: &src[start..end],
        pos: start,
    };
    loop {
        let rest = &src[p..];
        if rest.starts_with("}}") {
            if parens > 0 {
                return Err(syntax_error(src, p, "unclosed left paren"));
            }
            return Ok((toks, p + 2, false));
        }
        let Some(c) = rest.chars().next() else {
            return Err(syntax_error(src, p, "unclosed action"));
        };
        let start = p;
        if is_space(c) {
            let run = rest.len() - rest.trim_start_matches(SPACE_CHARS).len();
            let q = p + run;
            if src[q..].starts_with("-}}") {
                // " -}}": the space before the dash belongs to the trim marker.
                if parens > 0 {
                    return Err(syntax_error(src, p, "unclosed left paren"));
                }
                if run > 1 {
                    toks.push(tok(Kind::Space, start, q - 1));
                }
                return Ok((toks, q + 3, true));
            }
            toks.push(tok(Kind::Space, start, q));
            p = q;
            continue;
        }
        match c {
            '=' => {
                toks.push(tok(Kind::Assign, start, p + 1));
                p += 1;
            }
            ':' => {
                if !rest.starts_with(":=") {
                    return Err(syntax_error(src, p, "expected :="));
                }
                toks.push(tok(Kind::Declare, start, p + 2));
                p += 2;
            }
            '|' => {
                toks.push(tok(Kind::Pipe, start, p + 1));
                p += 1;
            }
            '"' => {
                p = scan_quoted(src, p, '"', "unterminated quoted string")?;
                toks.push(tok(Kind::Str, start, p));
            }
            '\'' => {
                p = scan_quoted(src, p, '\'', "unterminated character constant")?;
                toks.push(tok(Kind::Char, start, p));
            }
            '`' => {
                let Some(close) = src[p + 1..].find('`') else {
                    return Err(syntax_error(src, p, "unterminated raw quoted string"));
                };
                p = p + 1 + close + 1;
                toks.push(tok(Kind::RawStr, start, p));
            }
            '$' => {
                p = scan_alnum(src, p + 1);
                if !at_terminator(src, p) {
                    return Err(bad_char(src, p));
                }
                toks.push(tok(Kind::Variable, start, p));
            }
            '.' if src[p + 1..].starts_with(|d: char| d.is_ascii_digit()) => {
                p = scan_number(src, p)?;
                toks.push(tok(Kind::Number, start, p));
            }
            '.' => {
                let q = scan_alnum(src, p + 1);
                if q == p + 1 {
                    if !at_terminator(src, q) {
                        return Err(bad_char(src, q));
                    }
                    toks.push(tok(Kind::Dot, start, q));
                } else {
                    if !at_terminator(src, q) {
                        return Err(bad_char(src, q));
                    }
                    toks.push(tok(Kind::Field, start + 1, q));
                }
                p = q;
            }
            '+' | '-' | '0'..='9' => {
                p = scan_number(src, p)?;
                toks.push(tok(Kind::Number, start, p));
            }
            '(' => {
                parens += 1;
                toks.push(tok(Kind::LParen, start, p + 1));
                p += 1;
            }
            ')' => {
                if parens == 0 {
                    return Err(syntax_error(src, p, "unexpected right paren"));
                }
                parens -= 1;
                toks.push(tok(Kind::RParen, start, p + 1));
                p += 1;
            }
            c if is_alnum(c) => {
                p = scan_alnum(src, p);
                if !at_terminator(src, p) {
                    return Err(bad_char(src, p));
                }
                let word = &src[start..p];
                let kind = if word == "true" || word == "false" {
                    Kind::Bool
                } else if KEYWORDS.contains(&word) {
                    Kind::Keyword
                } else {
                    Kind::Ident
                };
                toks.push(tok(kind, start, p));
            }
            c if c.is_ascii() && !c.is_ascii_control() => {
                toks.push(tok(Kind::Other, start, p + 1));
                p += 1;
            }
            c => {
                return Err(syntax_error(
                    src,
                    p,
                    &format!("unrecognized character in action: U+{:04X}", u32::from(c)),
                ))
            }
        }
    }
}

fn bad_char(src: &str, p: usize) -> super::TemplateError {
    let c = src[p..].chars().next().unwrap_or('\u{0}');
    syntax_error(
        src,
        p,
        &format!("bad character U+{:04X} '{}'", u32::from(c), c),
    )
}

fn scan_alnum(src: &str, p: usize) -> usize {
    let rest = &src[p..];
    p + (rest.len() - rest.trim_start_matches(is_alnum).len())
}

/// Scans a quoted literal starting at `p` (on the opening quote); returns the position after the
/// closing quote.
fn scan_quoted(src: &str, p: usize, quote: char, unterminated: &str) -> ParseResult<usize> {
    let mut chars = src[p + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '\n')) | None => return Err(syntax_error(src, p, unterminated)),
                Some(_) => {}
            },
            '\n' => return Err(syntax_error(src, p, unterminated)),
            c if c == quote => return Ok(p + 1 + i + 1),
            _ => {}
        }
    }
    Err(syntax_error(src, p, unterminated))
}

/// Go's `scanNumber`: accepts what might be a number; the parser validates it.
fn scan_number(src: &str, p: usize) -> ParseResult<usize> {
    let b = src.as_bytes();
    let mut i = p;
    let accept = |i: &mut usize, set: &[u8]| -> bool {
        if *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
            true
        } else {
            false
        }
    };
    let accept_run = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    accept(&mut i, b"+-");
    let mut digits: &[u8] = b"0123456789_";
    if accept(&mut i, b"0") {
        if accept(&mut i, b"xX") {
            digits = b"0123456789abcdefABCDEF_";
        } else if accept(&mut i, b"oO") {
            digits = b"01234567_";
        } else if accept(&mut i, b"bB") {
            digits = b"01_";
        }
    }
    accept_run(&mut i, digits);
    if accept(&mut i, b".") {
        accept_run(&mut i, digits);
    }
    if digits.len() == 11 && accept(&mut i, b"eE") {
        accept(&mut i, b"+-");
        accept_run(&mut i, b"0123456789_");
    }
    if digits.len() == 23 && accept(&mut i, b"pP") {
        accept(&mut i, b"+-");
        accept_run(&mut i, b"0123456789_");
    }
    accept(&mut i, b"i");
    if src[i..].starts_with(is_alnum) {
        let end = i + src[i..].chars().next().map_or(0, char::len_utf8);
        return Err(syntax_error(
            src,
            p,
            &format!("bad number syntax: {:?}", &src[p..end]),
        ));
    }
    Ok(i)
}
