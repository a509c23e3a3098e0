//! Builds the template tree from the lexer's pieces, with Go's `text/template/parse` rules.

use super::lexer::{self, Kind, Piece, Tok};
use super::TemplateError;

pub(super) type ParseResult<T> = Result<T, TemplateError>;

/// Maximum nesting of blocks and parentheses; keeps parsing and execution recursion bounded.
const MAX_DEPTH: usize = 100;

/// A parsed template.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) nodes: Vec<Node>,
}

#[derive(Debug)]
pub(super) enum Node {
    Text(Box<[u8]>),
    Action(Pipe),
    If(Box<Branch>),
    With(Box<Branch>),
    Range(Box<Branch>),
    Break,
    Continue,
}

#[derive(Debug)]
pub(super) struct Branch {
    pub(super) pipe: Pipe,
    pub(super) list: Vec<Node>,
    pub(super) else_list: Vec<Node>,
}

/// `cmd | cmd | …`
#[derive(Debug)]
pub(super) struct Pipe {
    pub(super) cmds: Vec<Cmd>,
}

/// A command: its first word, then arguments.
#[derive(Debug)]
pub(super) struct Cmd {
    pub(super) args: Vec<Operand>,
}

#[derive(Debug)]
pub(super) enum Operand {
    Func(Builtin),
    Dot,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<[u8]>),
    /// `.A.B` (base dot), `$` / `$.A` (base root), `(pipe)` / `(pipe).A`.
    Chain {
        base: Base,
        fields: Box<[Field]>,
    },
}

#[derive(Debug)]
pub(super) enum Base {
    Dot,
    Root,
    Pipe(Box<Pipe>),
}

/// A field (or method) name, pre-resolved to a symbol.
#[derive(Debug)]
pub(super) struct Field {
    pub(super) sym: Sym,
    pub(super) name: Box<str>,
}

/// The template built-in functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    And,
    Or,
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Html,
    Js,
    UrlQuery,
    Index,
    Len,
    Print,
    Printf,
    Println,
}

impl Builtin {
    fn lookup(name: &str) -> Option<Builtin> {
        Some(match name {
            "and" => Builtin::And,
            "or" => Builtin::Or,
            "not" => Builtin::Not,
            "eq" => Builtin::Eq,
            "ne" => Builtin::Ne,
            "lt" => Builtin::Lt,
            "le" => Builtin::Le,
            "gt" => Builtin::Gt,
            "ge" => Builtin::Ge,
            "html" => Builtin::Html,
            "js" => Builtin::Js,
            "urlquery" => Builtin::UrlQuery,
            "index" => Builtin::Index,
            "len" => Builtin::Len,
            "print" => Builtin::Print,
            "printf" => Builtin::Printf,
            "println" => Builtin::Println,
            _ => return None,
        })
    }
}

macro_rules! syms {
    ($($name:ident),* $(,)?) => {
        /// Field and method names the data model knows.
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Sym { $($name,)* Other }
        impl Sym {
            fn lookup(name: &str) -> Sym {
                match name { $(stringify!($name) => Sym::$name,)* _ => Sym::Other }
            }
        }
    };
}

syms!(
    // root
    Request,
    Response,
    Revision,
    TraceID,
    // *http.Request
    Method,
    URL,
    Proto,
    ProtoMajor,
    ProtoMinor,
    Header,
    ContentLength,
    Host,
    RemoteAddr,
    RequestURI,
    UserAgent,
    Referer,
    ProtoAtLeast,
    // response
    Code,
    Size,
    Latency,
    // revision
    Name,
    Namespace,
    Service,
    Configuration,
    PodName,
    PodIP,
    // http.Header
    Get,
    Values,
    // *url.URL
    Scheme,
    Opaque,
    Path,
    RawQuery,
    Fragment,
    String,
    EscapedPath,
    Hostname,
    Port,
);

/// A syntax error at byte offset `pos` of `src`.
pub(super) fn syntax_error(src: &str, pos: usize, message: &str) -> TemplateError {
    let (line, col) = line_col(src, pos);
    TemplateError::Syntax {
        line,
        col,
        message: message.to_owned(),
    }
}

fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(src.len());
    while !src.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Parses `src` (already ending with the newline upstream appends).
pub(super) fn parse(src: &str) -> ParseResult<Tree> {
    let pieces = lexer::lex(src)?;
    let mut p = Parser {
        src,
        pieces,
        idx: 0,
        depth: 0,
        range_depth: 0,
    };
    let (nodes, end) = p.list()?;
    match end {
        Stop::Eof => Ok(Tree { nodes }),
        Stop::End(pos) => Err(syntax_error(src, pos, "unexpected {{end}}")),
        Stop::Else(pos, _) => Err(syntax_error(src, pos, "unexpected {{else}}")),
    }
}

/// What terminated a list.
enum Stop<'s> {
    Eof,
    End(usize),
    /// `{{else}}`, or `{{else if …}}` / `{{else with …}}` with the keyword and the remaining tokens.
    Else(usize, Option<(Tok<'s>, Vec<Tok<'s>>)>),
}

struct Parser<'s> {
    src: &'s str,
    pieces: Vec<Piece<'s>>,
    idx: usize,
    depth: usize,
    range_depth: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctl {
    If,
    With,
    Range,
}

impl<'s> Parser<'s> {
    fn err(&self, pos: usize, msg: &str) -> TemplateError {
        syntax_error(self.src, pos, msg)
    }

    fn unsupported(&self, pos: usize, what: &str) -> TemplateError {
        let (line, col) = line_col(self.src, pos);
        TemplateError::Unsupported {
            line,
            col,
            what: what.to_owned(),
        }
    }

    fn enter(&mut self, pos: usize) -> ParseResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(pos, "template nesting too deep"));
        }
        Ok(())
    }

    /// Parses nodes until EOF, `{{end}}` or `{{else}}`.
    fn list(&mut self) -> ParseResult<(Vec<Node>, Stop<'s>)> {
        let mut nodes = Vec::new();
        while self.idx < self.pieces.len() {
            let i = self.idx;
            self.idx += 1;
            let (toks, pos) = match &mut self.pieces[i] {
                Piece::Text(t) => {
                    nodes.push(Node::Text(t.as_bytes().into()));
                    continue;
                }
                Piece::Action { toks, pos } => (std::mem::take(toks), *pos),
            };
            let toks = strip_spaces(&toks);
            let Some(first) = toks.first().copied() else {
                // `{{}}` / `{{ }}`
                return Err(self.err(pos, "missing value for command"));
            };
            if first.kind != Kind::Keyword {
                nodes.push(Node::Action(self.pipeline_all(toks, "command", pos)?));
                continue;
            }
            let rest = strip_spaces(&toks[1..]);
            match first.text {
                "end" => {
                    self.expect_empty(rest, "end")?;
                    return Ok((nodes, Stop::End(first.pos)));
                }
                "else" => {
                    if let Some(kw) = rest.first() {
                        if kw.kind == Kind::Keyword && (kw.text == "if" || kw.text == "with") {
                            return Ok((
                                nodes,
                                Stop::Else(first.pos, Some((*kw, rest[1..].to_vec()))),
                            ));
                        }
                    }
                    self.expect_empty(rest, "else")?;
                    return Ok((nodes, Stop::Else(first.pos, None)));
                }
                "if" => nodes.push(Node::If(Box::new(self.branch(Ctl::If, first, rest)?))),
                "with" => nodes.push(Node::With(Box::new(self.branch(Ctl::With, first, rest)?))),
                "range" => nodes.push(Node::Range(Box::new(self.branch(
                    Ctl::Range,
                    first,
                    rest,
                )?))),
                "break" | "continue" => {
                    if self.range_depth == 0 {
                        return Err(self.err(
                            first.pos,
                            &format!("{{{{{}}}}} outside {{{{range}}}}", first.text),
                        ));
                    }
                    self.expect_empty(rest, first.text)?;
                    nodes.push(if first.text == "break" {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                "template" | "define" | "block" => {
                    return Err(self.unsupported(first.pos, &format!("{{{{{}}}}}", first.text)))
                }
                // "nil": a command whose value is nil
                _ => nodes.push(Node::Action(self.pipeline_all(toks, "command", pos)?)),
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn expect_empty(&self, rest: &[Tok<'s>], what: &str) -> ParseResult<()> {
        match rest.first() {
            None => Ok(()),
            Some(t) => Err(self.err(t.pos, &format!("unexpected {:?} in {}", t.text, what))),
        }
    }

    /// `{{if pipe}} list [{{else}} list] {{end}}` and friends; `kw` is the keyword token and
    /// `rest` the tokens after it.
    fn branch(&mut self, ctl: Ctl, kw: Tok<'s>, rest: &[Tok<'s>]) -> ParseResult<Branch> {
        self.enter(kw.pos)?;
        let context = match ctl {
            Ctl::If => "if",
            Ctl::With => "with",
            Ctl::Range => "range",
        };
        let pipe = self.pipeline_all(rest, context, kw.pos)?;
        // `{{break}}`/`{{continue}}` belong to the range body, not to its `{{else}}`.
        let in_range = usize::from(ctl == Ctl::Range);
        self.range_depth += in_range;
        let listed = self.list();
        self.range_depth -= in_range;
        let (list, end) = listed?;
        let else_list = match end {
            Stop::Eof => return Err(self.err(self.src.len(), "unexpected EOF")),
            Stop::End(_) => Vec::new(),
            Stop::Else(_, None) => {
                let (else_list, end2) = self.list()?;
                match end2 {
                    Stop::End(_) => else_list,
                    Stop::Eof => return Err(self.err(self.src.len(), "unexpected EOF")),
                    Stop::Else(pos, _) => return Err(self.err(pos, "expected end; found {{else}}")),
                }
            }
            Stop::Else(_, Some((kw2, toks))) => {
                let nested = match (ctl, kw2.text) {
                    (Ctl::If, "if") => Node::If(Box::new(self.branch(Ctl::If, kw2, &toks)?)),
                    (Ctl::With, "with") => {
                        Node::With(Box::new(self.branch(Ctl::With, kw2, &toks)?))
                    }
                    _ => {
                        return Err(self.err(kw2.pos, &format!("unexpected {:?} in else", kw2.text)))
                    }
                };
                vec![nested]
            }
        };
        self.depth -= 1;
        Ok(Branch {
            pipe,
            list,
            else_list,
        })
    }

    /// Parses a whole token slice as one pipeline.
    fn pipeline_all(&mut self, toks: &[Tok<'s>], context: &str, pos: usize) -> ParseResult<Pipe> {
        let mut i = 0;
        let pipe = self.pipeline(toks, &mut i, context, pos)?;
        if let Some(t) = toks.get(i) {
            return Err(self.err(t.pos, &format!("unexpected {:?} in {}", t.text, context)));
        }
        Ok(pipe)
    }

    /// Parses a pipeline from `toks[*i..]` up to the end or a `)`, which is left unconsumed.
    fn pipeline(
        &mut self,
        toks: &[Tok<'s>],
        i: &mut usize,
        context: &str,
        pos: usize,
    ) -> ParseResult<Pipe> {
        skip_spaces(toks, i);
        // Declarations: `$x :=`, `$x =`, `$i, $e :=`.
        if let Some(t) = toks.get(*i) {
            if t.kind == Kind::Variable {
                let mut j = *i + 1;
                skip_spaces(toks, &mut j);
                if let Some(n) = toks.get(j) {
                    if matches!(n.kind, Kind::Declare | Kind::Assign)
                        || (n.kind == Kind::Other && n.text == ",")
                    {
                        return Err(self.unsupported(t.pos, "variable declaration or assignment"));
                    }
                }
            }
        }
        let mut cmds = Vec::new();
        loop {
            skip_spaces(toks, i);
            match toks.get(*i) {
                None => break,
                Some(t) if t.kind == Kind::RParen => break,
                Some(t) if is_term_start(t) => cmds.push(self.command(toks, i)?),
                Some(t) => {
                    return Err(self.err(t.pos, &format!("unexpected {:?} in {}", t.text, context)))
                }
            }
        }
        if cmds.is_empty() {
            let at = toks.get(*i).map_or(pos, |t| t.pos);
            return Err(self.err(at, &format!("missing value for {}", context)));
        }
        for (n, c) in cmds.iter().enumerate().skip(1) {
            if matches!(
                c.args[0],
                Operand::Bool(_)
                    | Operand::Dot
                    | Operand::Nil
                    | Operand::Int(_)
                    | Operand::Float(_)
                    | Operand::Str(_)
            ) {
                return Err(self.err(
                    pos,
                    &format!("non executable command in pipeline stage {}", n + 1),
                ));
            }
        }
        Ok(Pipe { cmds })
    }

    /// One command: operands separated by spaces, up to `|` (consumed), `)` or the end.
    fn command(&mut self, toks: &[Tok<'s>], i: &mut usize) -> ParseResult<Cmd> {
        let mut args = Vec::new();
        loop {
            skip_spaces(toks, i);
            if let Some(op) = self.operand(toks, i)? {
                args.push(op);
            }
            match toks.get(*i) {
                Some(t) if t.kind == Kind::Space => {
                    *i += 1;
                    continue;
                }
                None => {}
                Some(t) if t.kind == Kind::RParen => {}
                Some(t) if t.kind == Kind::Pipe => *i += 1,
                Some(t) => {
                    return Err(self.err(t.pos, &format!("unexpected {:?} in operand", t.text)))
                }
            }
            break;
        }
        if args.is_empty() {
            let at = toks.get(i.saturating_sub(1)).map_or(0, |t| t.pos);
            return Err(self.err(at, "empty command"));
        }
        Ok(Cmd { args })
    }

    /// A term followed by any `.Field`s directly attached to it.
    fn operand(&mut self, toks: &[Tok<'s>], i: &mut usize) -> ParseResult<Option<Operand>> {
        let Some(t) = toks.get(*i).copied() else {
            return Ok(None);
        };
        let term = match t.kind {
            Kind::Ident => {
                *i += 1;
                match Builtin::lookup(t.text) {
                    Some(b) => Operand::Func(b),
                    None if t.text == "call" || t.text == "slice" => {
                        return Err(self.unsupported(t.pos, &format!("function {:?}", t.text)))
                    }
                    None => {
                        let (line, col) = line_col(self.src, t.pos);
                        return Err(TemplateError::UndefinedFunction {
                            line,
                            col,
                            name: t.text.to_owned(),
                        });
                    }
                }
            }
            Kind::Dot => {
                *i += 1;
                Operand::Dot
            }
            Kind::Keyword if t.text == "nil" => {
                *i += 1;
                Operand::Nil
            }
            Kind::Variable => {
                *i += 1;
                if t.text != "$" {
                    return Err(self.err(t.pos, &format!("undefined variable {:?}", t.text)));
                }
                Operand::Chain {
                    base: Base::Root,
                    fields: Box::new([]),
                }
            }
            Kind::Field => {
                // Fields directly following are merged below.
                Operand::Chain {
                    base: Base::Dot,
                    fields: Box::new([]),
                }
            }
            Kind::Bool => {
                *i += 1;
                Operand::Bool(t.text == "true")
            }
            Kind::Number | Kind::Char => {
                *i += 1;
                self.number(t)?
            }
            Kind::Str | Kind::RawStr => {
                *i += 1;
                Operand::Str(self.unquote(t)?)
            }
            Kind::LParen => {
                self.enter(t.pos)?;
                *i += 1;
                let pipe = self.pipeline(toks, i, "parenthesized pipeline", t.pos)?;
                match toks.get(*i) {
                    Some(r) if r.kind == Kind::RParen => *i += 1,
                    _ => return Err(self.err(t.pos, "unclosed left paren")),
                }
                self.depth -= 1;
                Operand::Chain {
                    base: Base::Pipe(Box::new(pipe)),
                    fields: Box::new([]),
                }
            }
            _ => return Ok(None),
        };
        let mut fields = Vec::new();
        while let Some(f) = toks.get(*i) {
            if f.kind != Kind::Field {
                break;
            }
            *i += 1;
            fields.push(Field {
                sym: Sym::lookup(f.text),
                name: f.text.into(),
            });
        }
        if fields.is_empty() {
            return Ok(Some(term));
        }
        Ok(Some(match term {
            Operand::Chain { base, .. } => Operand::Chain {
                base,
                fields: fields.into_boxed_slice(),
            },
            Operand::Func(b) => Operand::Chain {
                base: Base::Pipe(Box::new(Pipe {
                    cmds: vec![Cmd {
                        args: vec![Operand::Func(b)],
                    }],
                })),
                fields: fields.into_boxed_slice(),
            },
            _ => return Err(self.err(t.pos, &format!("unexpected . after term {:?}", t.text))),
        }))
    }

    fn number(&self, t: Tok<'s>) -> ParseResult<Operand> {
        if t.kind == Kind::Char {
            let bytes = unquote_go(t.text, '\'').ok_or_else(|| {
                self.err(t.pos, &format!("malformed character constant: {}", t.text))
            })?;
            // A character constant is exactly one rune.
            let s = std::str::from_utf8(&bytes).ok();
            let mut chars = s.map(str::chars);
            return match chars.as_mut().and_then(Iterator::next) {
                Some(c) if chars.as_mut().and_then(Iterator::next).is_none() => {
                    Ok(Operand::Int(i64::from(u32::from(c))))
                }
                _ if bytes.len() == 1 => Ok(Operand::Int(i64::from(bytes[0]))),
                _ => Err(self.err(t.pos, &format!("malformed character constant: {}", t.text))),
            };
        }
        let text = t.text;
        if text.ends_with('i') {
            return Err(self.unsupported(t.pos, "a complex number"));
        }
        let lower = text.to_ascii_lowercase();
        let unsigned = lower.trim_start_matches(['+', '-']);
        let is_hex = unsigned.starts_with("0x");
        if is_hex && (lower.contains('.') || lower.contains('p')) {
            return Err(self.unsupported(t.pos, "a hexadecimal floating-point number"));
        }
        if let Some(v) = parse_go_int(text) {
            return match v {
                Some(v) => Ok(Operand::Int(v)),
                None => Err(self.err(t.pos, &format!("{} overflows int", text))),
            };
        }
        if !is_hex {
            if let Some(f) = parse_go_float(text) {
                if lower.contains('.') || lower.contains('e') {
                    return Ok(Operand::Float(f));
                }
                // Like Go, an integral float constant such as `08` is an int.
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    return Ok(Operand::Int(f as i64));
                }
                return Err(self.err(t.pos, &format!("{} overflows int", text)));
            }
        }
        Err(self.err(t.pos, &format!("illegal number syntax: {:?}", text)))
    }

    fn unquote(&self, t: Tok<'s>) -> ParseResult<Box<[u8]>> {
        if t.kind == Kind::RawStr {
            let inner = &t.text[1..t.text.len() - 1];
            return Ok(inner.bytes().filter(|&b| b != b'\r').collect());
        }
        unquote_go(t.text, '"')
            .map(Vec::into_boxed_slice)
            .ok_or_else(|| self.err(t.pos, "invalid syntax"))
    }
}

fn is_term_start(t: &Tok<'_>) -> bool {
    match t.kind {
        Kind::Bool
        | Kind::Char
        | Kind::Dot
        | Kind::Field
        | Kind::Ident
        | Kind::Number
        | Kind::RawStr
        | Kind::Str
        | Kind::Variable
        | Kind::LParen => true,
        Kind::Keyword => t.text == "nil",
        _ => false,
    }
}

fn skip_spaces(toks: &[Tok<'_>], i: &mut usize) {
    while toks.get(*i).is_some_and(|t| t.kind == Kind::Space) {
        *i += 1;
    }
}

fn strip_spaces<'a, 's>(toks: &'a [Tok<'s>]) -> &'a [Tok<'s>] {
    let start = toks
        .iter()
        .position(|t| t.kind != Kind::Space)
        .unwrap_or(toks.len());
    let end = toks
        .iter()
        .rposition(|t| t.kind != Kind::Space)
        .map_or(start, |i| i + 1);
    &toks[start..end]
}

/// Go's `strconv.ParseInt(text, 0, 64)`: `None` if the text is not an integer literal,
/// `Some(None)` if it is one that overflows `int64`.
fn parse_go_int(text: &str) -> Option<Option<i64>> {
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    if digits.is_empty() || !underscores_ok(digits, prefixed) {
        return None;
    }
    let mut v: u128 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)?;
        v = v * u128::from(radix) + u128::from(d);
        if v > u128::from(u64::MAX) + 1 {
            return Some(None);
        }
    }
    let v = if neg { -(v as i128) } else { v as i128 };
    Some(i64::try_from(v).ok())
}

/// Go's rule: underscores only between digits, or right after a base prefix.
fn underscores_ok(digits: &str, prefixed: bool) -> bool {
    if !digits.contains('_') {
        return true;
    }
    let b = digits.as_bytes();
    if b[b.len() - 1] == b'_' {
        return false;
    }
    let mut prev_digit = prefixed;
    for &c in b {
        if c == b'_' {
            if !prev_digit {
                return false;
            }
            prev_digit = false;
        } else {
            prev_digit = true;
        }
    }
    true
}

/// Go's `strconv.ParseFloat(text, 64)` for decimal literals (underscores between digits allowed).
fn parse_go_float(text: &str) -> Option<f64> {
    let cleaned: String;
    let s = if text.contains('_') {
        let body = text.trim_start_matches(['+', '-']);
        // An underscore must sit between digits.
        let b = body.as_bytes();
        for (k, &c) in b.iter().enumerate() {
            if c == b'_'
                && !(k > 0
                    && b[k - 1].is_ascii_digit()
                    && b.get(k + 1).is_some_and(u8::is_ascii_digit))
            {
                return None;
            }
        }
        cleaned = text.replace('_', "");
        cleaned.as_str()
    } else {
        text
    };
    let body = s.trim_start_matches(['+', '-']);
    if body.starts_with(['i', 'I', 'n', 'N']) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Go's `strconv.Unquote` for `"…"` and `'…'` literals; the result may be invalid UTF-8 (`\xff`).
pub(super) fn unquote_go(text: &str, quote: char) -> Option<Vec<u8>> {
    let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == quote || c == '\n' {
            return None;
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = chars.next()?;
        match e {
            'a' => out.push(7),
            'b' => out.push(8),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '\\' => out.push(b'\\'),
            '\'' | '"' => {
                if e != quote {
                    return None;
                }
                out.push(e as u8);
            }
            'x' => {
                let v = hex_digits(&mut chars, 2)?;
                out.push(v as u8);
            }
            'u' | 'U' => {
                let v = hex_digits(&mut chars, if e == 'u' { 4 } else { 8 })?;
                let c = char::from_u32(v)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + chars.next()?.to_digit(8)?;
                }
                if v > 255 {
                    return None;
                }
                out.push(v as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex_digits(chars: &mut std::str::Chars<'_>, n: usize) -> Option<u32> {
    let mut v: u32 = 0;
    for _ in 0..n {
        v = v.checked_mul(16)? + chars.next()?.to_digit(16)?;
    }
    Some(v)
}
