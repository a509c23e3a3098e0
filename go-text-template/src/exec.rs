//! Executes a parsed template against one [`LogEntry`], with Go's `text/template` semantics.

use std::cell::Cell;

use http::{HeaderMap, HeaderName};

use super::escape::Escaper;
use super::gofmt;
use super::parse::{Base, Branch, Builtin, Cmd, Field, Node, Operand, Pipe, Sym, Tree};
use super::{LogEntry, RevisionInfo};

/// Upper bound on one rendered entry; a template producing more fails (like an execution error).
const MAX_OUTPUT: usize = 1 << 20;
/// Upper bound on `{{range}}` iterations per entry.
const MAX_ITERATIONS: u32 = 100_000;

/// Why executing a template failed (the text is for diagnostics only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExecError(pub(super) &'static str);

type R<T> = Result<T, ExecError>;

/// Go's `int` vs `int64`, which matters only for type names in `fmt` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntTy {
    Int,
    Int64,
}

/// A `[]string` of header values: all values of one header name, or a nil slice.
#[derive(Debug, Clone, Copy)]
pub(super) struct StrList<'a> {
    map: Option<&'a HeaderMap>,
    key: &'a str,
}

impl<'a> StrList<'a> {
    /// The values of `key` in `map` (`host` is never visible, as in Go's `Request.Header`).
    pub(super) fn new(map: &'a HeaderMap, key: &'a str) -> Self {
        if key.eq_ignore_ascii_case("host") {
            return Self::nil();
        }
        StrList {
            map: Some(map),
            key,
        }
    }

    fn nil() -> Self {
        StrList { map: None, key: "" }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let all = self.map.map(|m| m.get_all(self.key));
        all.into_iter()
            .flat_map(|g| g.into_iter().map(http::HeaderValue::as_bytes))
    }

    pub(super) fn len(&self) -> usize {
        self.iter().count()
    }

    pub(super) fn is_nil(&self) -> bool {
        self.len() == 0
    }
}

/// A template value.
#[derive(Debug, Clone)]
pub(super) enum Value<'a> {
    /// No value (a missing map key): prints `<no value>`.
    Invalid,
    /// An untyped nil (the `nil` literal, or an invalid value passed as `any`).
    Nil,
    Bool(bool),
    Int(i64, IntTy),
    Uint8(u8),
    Float(f64),
    Str(&'a [u8]),
    String(Vec<u8>),
    Strings(StrList<'a>),
    Header(&'a HeaderMap),
    /// `*url.URL`, printed via `String()`.
    Url(&'a str),
    Request(&'a LogEntry<'a>),
    Response(&'a LogEntry<'a>),
    Revision(&'a RevisionInfo),
    Root(&'a LogEntry<'a>),
}

impl<'a> Value<'a> {
    /// The bytes of a string value.
    pub(super) fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Go's `reflect.Type.String()` of the value.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Value::Invalid | Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_, IntTy::Int) => "int",
            Value::Int(_, IntTy::Int64) => "int64",
            Value::Uint8(_) => "uint8",
            Value::Float(_) => "float64",
            Value::Str(_) | Value::String(_) => "string",
            Value::Strings(_) => "[]string",
            Value::Header(_) => "http.Header",
            Value::Url(_) => "*url.URL",
            Value::Request(_) => "*http.Request",
            Value::Response(_) => "*http.RequestLogResponse",
            Value::Revision(_) => "*http.RequestLogRevision",
            Value::Root(_) => "*http.RequestLogTemplateInput",
        }
    }

    /// Field `k` of the `Response` / `Revision` structs, in declaration order.
    pub(super) fn struct_field(&self, k: usize) -> Value<'a> {
        match self {
            Value::Response(e) => match k {
                0 => Value::Int(i64::from(e.status), IntTy::Int),
                1 => Value::Int(
                    i64::try_from(e.response_size).unwrap_or(i64::MAX),
                    IntTy::Int,
                ),
                _ => Value::Float(e.latency_secs),
            },
            Value::Revision(r) => Value::Str(
                match k {
                    0 => &r.name,
                    1 => &r.namespace,
                    2 => &r.service,
                    3 => &r.configuration,
                    4 => &r.pod_name,
                    _ => &r.pod_ip,
                }
                .as_bytes(),
            ),
            _ => Value::Invalid,
        }
    }
}

/// Header names of `h` (without `host`), sorted by their canonical form as Go's `fmt` sorts
/// `http.Header` keys.
pub(super) fn header_names_sorted(h: &HeaderMap) -> Vec<&HeaderName> {
    let mut names: Vec<&HeaderName> = h.keys().filter(|n| n.as_str() != "host").collect();
    names.sort_by(|a, b| canonical_bytes(a.as_str()).cmp(canonical_bytes(b.as_str())));
    names
}

fn canonical_bytes(name: &str) -> impl Iterator<Item = u8> + '_ {
    let mut upper = true;
    name.bytes().map(move |c| {
        let r = if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        };
        upper = c == b'-';
        r
    })
}

/// Appends Go's `CanonicalMIMEHeaderKey` of a (lower-case) header name.
pub(super) fn write_canonical(out: &mut Vec<u8>, name: &str) {
    out.extend(canonical_bytes(name));
}

/// Whether `key` is in canonical form (so a Go map lookup with it can hit).
fn is_canonical(key: &[u8]) -> bool {
    canonical_bytes_of(key).eq(key.iter().copied())
}

fn canonical_bytes_of(key: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut upper = true;
    key.iter().map(move |&c| {
        let r = if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        };
        upper = c == b'-';
        r
    })
}

/// Go map lookup `header[key]`: exact (canonical) key; `None` when absent.
fn header_index<'a>(h: &'a HeaderMap, key: &[u8]) -> Option<StrList<'a>> {
    if !is_canonical(key) {
        return None;
    }
    let name = h
        .keys()
        .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(key))?;
    let list = StrList::new(h, name.as_str());
    if list.is_nil() {
        None
    } else {
        Some(list)
    }
}

/// `Header.Get`: first value of `key` (case-insensitive), or "".
fn header_get<'a>(h: &'a HeaderMap, key: &[u8]) -> &'a [u8] {
    let Ok(key) = std::str::from_utf8(key) else {
        return b"";
    };
    if key.eq_ignore_ascii_case("host") {
        return b"";
    }
    h.get(key).map_or(b"", http::HeaderValue::as_bytes)
}

/// `Header.Values`: all values of `key` (case-insensitive).
fn header_values<'a>(h: &'a HeaderMap, key: &[u8]) -> StrList<'a> {
    match h
        .keys()
        .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(key))
    {
        Some(name) => StrList::new(h, name.as_str()),
        None => StrList::nil(),
    }
}

fn header_len(h: &HeaderMap) -> usize {
    h.keys_len() - usize::from(h.contains_key("host"))
}

/// Go's `isTrue`.
fn truth(v: &Value<'_>) -> bool {
    match v {
        Value::Invalid | Value::Nil => false,
        Value::Bool(b) => *b,
        Value::Int(i, _) => *i != 0,
        Value::Uint8(u) => *u != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Strings(l) => l.len() > 0,
        Value::Header(h) => header_len(h) > 0,
        Value::Url(_)
        | Value::Request(_)
        | Value::Response(_)
        | Value::Revision(_)
        | Value::Root(_) => true,
    }
}

/// The parts of a request URL.
struct UrlParts<'a> {
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

fn split_url(u: &str) -> UrlParts<'_> {
    let mut scheme = "";
    let mut host = "";
    let mut rest = u;
    if !u.starts_with('/') {
        if let Some(i) = u.find("://") {
            if u[..i]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
            {
                scheme = &u[..i];
                let after = &u[i + 3..];
                let end = after.find(['/', '?']).unwrap_or(after.len());
                host = &after[..end];
                rest = &after[end..];
            }
        }
    }
    let (path, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    UrlParts {
        scheme,
        host,
        path,
        query,
    }
}

/// Go's `url.PathUnescape`-like decoding of `%XX` (invalid escapes are kept as they are).
fn unescape_path(p: &str) -> Value<'_> {
    if !p.contains('%') {
        return Value::Str(p.as_bytes());
    }
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Value::String(out)
}

/// Host without port (`url.URL.Hostname`).
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.find(']').map_or(rest, |i| &rest[..i]);
    }
    host.rfind(':').map_or(host, |i| &host[..i])
}

/// Port of a host (`url.URL.Port`).
fn port(host: &str) -> &str {
    let after = match host.rfind(']') {
        Some(i) => &host[i + 1..],
        None => host,
    };
    match after.rfind(':') {
        Some(i) if after[i + 1..].bytes().all(|c| c.is_ascii_digit()) => &after[i + 1..],
        _ => "",
    }
}

/// Arguments kept on the stack (more spill to the heap).
const INLINE_ARGS: usize = 8;

/// Evaluated arguments, inline when there are few.
struct Args<'a> {
    inline: [Value<'a>; INLINE_ARGS],
    n: usize,
    heap: Vec<Value<'a>>,
    spill: bool,
}

impl<'a> Args<'a> {
    fn with_capacity(n: usize) -> Self {
        Args {
            inline: std::array::from_fn(|_| Value::Invalid),
            n: 0,
            heap: if n > INLINE_ARGS {
                Vec::with_capacity(n)
            } else {
                Vec::new()
            },
            spill: n > INLINE_ARGS,
        }
    }

    fn push(&mut self, v: Value<'a>) {
        if self.spill {
            self.heap.push(v);
        } else if self.n < self.inline.len() {
            self.inline[self.n] = v;
            self.n += 1;
        } else {
            self.spill = true;
            self.heap.extend(
                self.inline
                    .iter_mut()
                    .map(|v| std::mem::replace(v, Value::Invalid)),
            );
            self.heap.push(v);
        }
    }

    fn as_slice(&self) -> &[Value<'a>] {
        if self.spill {
            &self.heap
        } else {
            &self.inline[..self.n]
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a> {
    e: &'a LogEntry<'a>,
    /// Output length at which rendering fails.
    limit: usize,
    iterations: Cell<u32>,
}

/// Renders `tree` for `entry` into `out`.
pub(super) fn execute<'a>(tree: &'a Tree, entry: &'a LogEntry<'a>, out: &mut Vec<u8>) -> R<()> {
    let ex = Exec {
        e: entry,
        limit: out.len() + MAX_OUTPUT,
        iterations: Cell::new(0),
    };
    ex.walk(&tree.nodes, &Value::Root(entry), out).map(|_| ())
}

fn wrong_args() -> ExecError {
    ExecError("wrong number of args")
}

/// Go's `notAFunction`.
fn not_a_function(args: &[Operand], fin: &Option<Value<'_>>) -> R<()> {
    if !args.is_empty() || fin.is_some() {
        return Err(ExecError("can't give argument to non-function"));
    }
    Ok(())
}

/// A value passed to a `reflect.Value` parameter must be valid.
fn check_valid(v: &Value<'_>) -> R<()> {
    match v {
        Value::Invalid => Err(ExecError("invalid value; expected reflect.Value")),
        Value::Nil => Err(ExecError("cannot assign nil to reflect.Value")),
        _ => Ok(()),
    }
}

/// A value passed to an `any` parameter: an invalid value becomes nil.
fn as_any(v: Value<'_>) -> Value<'_> {
    match v {
        Value::Invalid => Value::Nil,
        v => v,
    }
}

#[derive(Clone, Copy)]
enum Basic<'v> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'v [u8]),
    Other,
}

fn basic<'v>(v: &'v Value<'_>) -> Basic<'v> {
    match v {
        Value::Bool(b) => Basic::Bool(*b),
        Value::Int(i, _) => Basic::Int(*i),
        Value::Uint8(u) => Basic::Uint(u64::from(*u)),
        Value::Float(f) => Basic::Float(*f),
        Value::Str(s) => Basic::Str(s),
        Value::String(s) => Basic::Str(s),
        _ => Basic::Other,
    }
}

/// Go's `eq` for two values.
fn eq2(a: &Value<'_>, b: &Value<'_>) -> R<bool> {
    Ok(match (basic(a), basic(b)) {
        (Basic::Bool(x), Basic::Bool(y)) => x == y,
        (Basic::Int(x), Basic::Int(y)) => x == y,
        (Basic::Uint(x), Basic::Uint(y)) => x == y,
        (Basic::Float(x), Basic::Float(y)) => x == y,
        (Basic::Str(x), Basic::Str(y)) => x == y,
        (Basic::Int(x), Basic::Uint(y)) => x >= 0 && x as u64 == y,
        (Basic::Uint(x), Basic::Int(y)) => y >= 0 && x == y as u64,
        (Basic::Other, Basic::Other) => match (a, b) {
            (Value::Strings(x), Value::Strings(y)) => {
                if x.is_nil() || y.is_nil() {
                    x.is_nil() == y.is_nil()
                } else {
                    return Err(ExecError("non-comparable type"));
                }
            }
            (Value::Header(_), Value::Header(_)) => {
                return Err(ExecError("non-comparable type"));
            }
            (Value::Request(_), Value::Request(_))
            | (Value::Response(_), Value::Response(_))
            | (Value::Revision(_), Value::Revision(_))
            | (Value::Root(_), Value::Root(_))
            | (Value::Url(_), Value::Url(_)) => true,
            (
                Value::Request(_)
                | Value::Response(_)
                | Value::Revision(_)
                | Value::Root(_)
                | Value::Url(_),
                Value::Request(_)
                | Value::Response(_)
                | Value::Revision(_)
                | Value::Root(_)
                | Value::Url(_),
            ) => false,
            _ => return Err(ExecError("non-comparable types")),
        },
        _ => return Err(ExecError("incompatible types for comparison")),
    })
}

/// Go's `lt`.
fn lt2(a: &Value<'_>, b: &Value<'_>) -> R<bool> {
    Ok(match (basic(a), basic(b)) {
        (Basic::Int(x), Basic::Int(y)) => x < y,
        (Basic::Uint(x), Basic::Uint(y)) => x < y,
        (Basic::Float(x), Basic::Float(y)) => x < y,
        (Basic::Str(x), Basic::Str(y)) => x < y,
        (Basic::Int(x), Basic::Uint(y)) => x < 0 || (x as u64) < y,
        (Basic::Uint(x), Basic::Int(y)) => y >= 0 && x < y as u64,
        (Basic::Bool(_), Basic::Bool(_)) | (Basic::Other, _) | (_, Basic::Other) => {
            return Err(ExecError("invalid type for comparison"))
        }
        _ => return Err(ExecError("incompatible types for comparison")),
    })
}

impl<'a> Exec<'a> {
    fn walk(&self, nodes: &'a [Node], dot: &Value<'a>, out: &mut Vec<u8>) -> R<Flow> {
        for node in nodes {
            let flow = match node {
                Node::Text(t) => {
                    out.extend_from_slice(t);
                    Flow::Normal
                }
                Node::Action(pipe) => {
                    self.action(pipe, dot, out)?;
                    Flow::Normal
                }
                Node::If(b) => {
                    let v = self.eval_pipe(&b.pipe, dot)?;
                    if truth(&v) {
                        self.walk(&b.list, dot, out)?
                    } else {
                        self.walk(&b.else_list, dot, out)?
                    }
                }
                Node::With(b) => {
                    let v = self.eval_pipe(&b.pipe, dot)?;
                    if truth(&v) {
                        self.walk(&b.list, &v, out)?
                    } else {
                        self.walk(&b.else_list, dot, out)?
                    }
                }
                Node::Range(b) => self.range(b, dot, out)?,
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            };
            if out.len() > self.limit {
                return Err(ExecError("output too large"));
            }
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    fn tick(&self) -> R<()> {
        let n = self.iterations.get() + 1;
        if n > MAX_ITERATIONS {
            return Err(ExecError("too many range iterations"));
        }
        self.iterations.set(n);
        Ok(())
    }

    /// One `{{range}}` iteration; `true` to stop the loop.
    fn iterate(&self, b: &'a Branch, elem: &Value<'a>, out: &mut Vec<u8>) -> R<bool> {
        self.tick()?;
        let flow = self.walk(&b.list, elem, out)?;
        if out.len() > self.limit {
            return Err(ExecError("output too large"));
        }
        Ok(flow == Flow::Break)
    }

    fn range(&self, b: &'a Branch, dot: &Value<'a>, out: &mut Vec<u8>) -> R<Flow> {
        let v = self.eval_pipe(&b.pipe, dot)?;
        let mut ran = false;
        match &v {
            Value::Strings(list) => {
                for s in list.iter() {
                    ran = true;
                    if self.iterate(b, &Value::Str(s), out)? {
                        break;
                    }
                }
            }
            Value::Header(h) => {
                for name in header_names_sorted(h) {
                    ran = true;
                    let elem = Value::Strings(StrList::new(h, name.as_str()));
                    if self.iterate(b, &elem, out)? {
                        break;
                    }
                }
            }
            Value::Int(n, _) => {
                for i in 0..*n {
                    ran = true;
                    if self.iterate(b, &Value::Int(i, IntTy::Int), out)? {
                        break;
                    }
                }
            }
            Value::Uint8(n) => {
                for i in 0..*n {
                    ran = true;
                    if self.iterate(b, &Value::Uint8(i), out)? {
                        break;
                    }
                }
            }
            Value::Invalid | Value::Nil => {}
            _ => return Err(ExecError("range can't iterate over value")),
        }
        if !ran {
            return self.walk(&b.else_list, dot, out);
        }
        Ok(Flow::Normal)
    }

    /// `{{pipeline}}`: evaluates and prints; string-producing functions in the last stage write
    /// straight into `out`.
    fn action(&self, pipe: &'a Pipe, dot: &Value<'a>, out: &mut Vec<u8>) -> R<()> {
        let Some((last, init)) = pipe.cmds.split_last() else {
            return Err(ExecError("empty pipeline"));
        };
        let mut fin = None;
        for cmd in init {
            fin = Some(self.eval_cmd(cmd, dot, fin)?);
        }
        if let Some(Operand::Func(b)) = last.args.first() {
            if matches!(
                b,
                Builtin::Js
                    | Builtin::Html
                    | Builtin::UrlQuery
                    | Builtin::Print
                    | Builtin::Printf
                    | Builtin::Println
            ) {
                return self.write_builtin(*b, &last.args[1..], fin, dot, out);
            }
        }
        let v = self.eval_cmd(last, dot, fin)?;
        gofmt::print_action(out, &v)
    }

    fn eval_pipe(&self, pipe: &'a Pipe, dot: &Value<'a>) -> R<Value<'a>> {
        let mut fin = None;
        for cmd in &pipe.cmds {
            fin = Some(self.eval_cmd(cmd, dot, fin)?);
        }
        fin.ok_or(ExecError("empty pipeline"))
    }

    fn eval_cmd(&self, cmd: &'a Cmd, dot: &Value<'a>, fin: Option<Value<'a>>) -> R<Value<'a>> {
        let Some((first, args)) = cmd.args.split_first() else {
            return Err(ExecError("empty command"));
        };
        match first {
            Operand::Func(b) => self.call(*b, args, fin, dot),
            Operand::Chain { base, fields } => {
                let recv = self.base(base, dot)?;
                if fields.is_empty() {
                    not_a_function(args, &fin)?;
                    return Ok(recv);
                }
                self.fields(recv, fields, args, fin, dot)
            }
            Operand::Nil => {
                not_a_function(args, &fin)?;
                Err(ExecError("nil is not a command"))
            }
            lit => {
                not_a_function(args, &fin)?;
                self.eval_arg(lit, dot)
            }
        }
    }

    fn base(&self, base: &'a Base, dot: &Value<'a>) -> R<Value<'a>> {
        Ok(match base {
            Base::Dot => dot.clone(),
            Base::Root => Value::Root(self.e),
            Base::Pipe(p) => self.eval_pipe(p, dot)?,
        })
    }

    /// Go's `evalArg`, without the type check (done by each consumer).
    fn eval_arg(&self, op: &'a Operand, dot: &Value<'a>) -> R<Value<'a>> {
        Ok(match op {
            Operand::Func(b) => self.call(*b, &[], None, dot)?,
            Operand::Dot => dot.clone(),
            Operand::Nil => Value::Nil,
            Operand::Bool(b) => Value::Bool(*b),
            Operand::Int(i) => Value::Int(*i, IntTy::Int),
            Operand::Float(f) => Value::Float(*f),
            Operand::Str(s) => Value::Str(s),
            Operand::Chain { base, fields } => {
                let recv = self.base(base, dot)?;
                if fields.is_empty() {
                    recv
                } else {
                    self.fields(recv, fields, &[], None, dot)?
                }
            }
        })
    }

    fn fields(
        &self,
        recv: Value<'a>,
        fields: &'a [Field],
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Value<'a>> {
        let Some((last, init)) = fields.split_last() else {
            return Ok(recv);
        };
        let mut r = recv;
        for f in init {
            r = self.field(r, f, &[], None, dot)?;
        }
        self.field(r, last, args, fin, dot)
    }

    /// Evaluates method arguments (plus the piped value) for a method with `n` parameters.
    fn method_args(
        &self,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
        n: usize,
    ) -> R<Args<'a>> {
        if args.len() + usize::from(fin.is_some()) != n {
            return Err(wrong_args());
        }
        let mut v = Args::with_capacity(n);
        for op in args {
            v.push(self.eval_arg(op, dot)?);
        }
        if let Some(f) = fin {
            v.push(f);
        }
        Ok(v)
    }

    fn string_arg(
        &self,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Value<'a>> {
        let v = self.method_args(args, fin, dot, 1)?;
        match v.as_slice() {
            [s @ (Value::Str(_) | Value::String(_))] => Ok(s.clone()),
            _ => Err(ExecError("wrong type for value; expected string")),
        }
    }

    fn field(
        &self,
        recv: Value<'a>,
        f: &'a Field,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Value<'a>> {
        let has_args = !args.is_empty() || fin.is_some();
        let plain = |v: Value<'a>| -> R<Value<'a>> {
            if has_args {
                Err(ExecError(
                    "field has arguments but cannot be invoked as function",
                ))
            } else {
                Ok(v)
            }
        };
        let missing = Err(ExecError("can't evaluate field"));
        let s = |x: &'a str| Value::Str(x.as_bytes());
        match recv {
            Value::Invalid | Value::Nil => Ok(Value::Invalid),
            Value::Root(e) => match f.sym {
                Sym::Request => plain(Value::Request(e)),
                Sym::Response => plain(Value::Response(e)),
                Sym::Revision => plain(Value::Revision(e.revision)),
                Sym::TraceID => plain(s(e.trace_id)),
                _ => missing,
            },
            Value::Request(e) => match f.sym {
                Sym::Method => plain(s(e.method)),
                Sym::URL => plain(Value::Url(e.url)),
                Sym::Proto => plain(s(e.proto)),
                Sym::ProtoMajor => plain(Value::Int(i64::from(e.proto_major), IntTy::Int)),
                Sym::ProtoMinor => plain(Value::Int(i64::from(e.proto_minor), IntTy::Int)),
                Sym::Header => plain(Value::Header(e.headers)),
                Sym::ContentLength => plain(Value::Int(e.content_length, IntTy::Int64)),
                Sym::Host => plain(s(e.host)),
                Sym::RemoteAddr => plain(s(e.remote_addr)),
                Sym::RequestURI => plain(s(e.request_uri)),
                Sym::UserAgent | Sym::Referer => {
                    self.method_args(args, fin, dot, 0)?;
                    let name: &[u8] = if f.sym == Sym::UserAgent {
                        b"user-agent"
                    } else {
                        b"referer"
                    };
                    Ok(Value::Str(header_get(e.headers, name)))
                }
                Sym::ProtoAtLeast => {
                    let v = self.method_args(args, fin, dot, 2)?;
                    match v.as_slice() {
                        [Value::Int(maj, IntTy::Int), Value::Int(min, IntTy::Int)] => {
                            let (pmaj, pmin) = (i64::from(e.proto_major), i64::from(e.proto_minor));
                            Ok(Value::Bool(pmaj > *maj || (pmaj == *maj && pmin >= *min)))
                        }
                        _ => Err(ExecError("wrong type for value; expected int")),
                    }
                }
                _ => missing,
            },
            Value::Response(e) => match f.sym {
                Sym::Code => plain(recv.struct_field(0)),
                Sym::Size => plain(recv.struct_field(1)),
                Sym::Latency => plain(Value::Float(e.latency_secs)),
                _ => missing,
            },
            Value::Revision(_) => match f.sym {
                Sym::Name => plain(recv.struct_field(0)),
                Sym::Namespace => plain(recv.struct_field(1)),
                Sym::Service => plain(recv.struct_field(2)),
                Sym::Configuration => plain(recv.struct_field(3)),
                Sym::PodName => plain(recv.struct_field(4)),
                Sym::PodIP => plain(recv.struct_field(5)),
                _ => missing,
            },
            Value::Url(u) => {
                let parts = split_url(u);
                match f.sym {
                    Sym::Scheme => {
                        if parts.scheme.bytes().any(|c| c.is_ascii_uppercase()) {
                            plain(Value::String(
                                parts.scheme.to_ascii_lowercase().into_bytes(),
                            ))
                        } else {
                            plain(s(parts.scheme))
                        }
                    }
                    Sym::Host => plain(s(parts.host)),
                    Sym::Path => plain(unescape_path(parts.path)),
                    Sym::RawQuery => plain(s(parts.query.unwrap_or(""))),
                    Sym::Opaque => plain(s("")),
                    _ if &*f.name == "Fragment"
                        || &*f.name == "RawPath"
                        || &*f.name == "RawFragment" =>
                    {
                        plain(s(""))
                    }
                    Sym::String => {
                        self.method_args(args, fin, dot, 0)?;
                        Ok(s(u))
                    }
                    Sym::EscapedPath => {
                        self.method_args(args, fin, dot, 0)?;
                        Ok(s(parts.path))
                    }
                    Sym::RequestURI => {
                        self.method_args(args, fin, dot, 0)?;
                        let path = if parts.path.is_empty() {
                            "/"
                        } else {
                            parts.path
                        };
                        match parts.query {
                            None => Ok(s(path)),
                            Some(q) => {
                                let mut b = Vec::with_capacity(path.len() + 1 + q.len());
                                b.extend_from_slice(path.as_bytes());
                                b.push(b'?');
                                b.extend_from_slice(q.as_bytes());
                                Ok(Value::String(b))
                            }
                        }
                    }
                    Sym::Hostname => {
                        self.method_args(args, fin, dot, 0)?;
                        Ok(s(hostname(parts.host)))
                    }
                    Sym::Port => {
                        self.method_args(args, fin, dot, 0)?;
                        Ok(s(port(parts.host)))
                    }
                    _ => missing,
                }
            }
            Value::Header(h) => match f.sym {
                Sym::Get => {
                    let key = self.string_arg(args, fin, dot)?;
                    Ok(Value::Str(header_get(h, key.as_bytes().unwrap_or(b""))))
                }
                Sym::Values => {
                    let key = self.string_arg(args, fin, dot)?;
                    Ok(Value::Strings(header_values(
                        h,
                        key.as_bytes().unwrap_or(b""),
                    )))
                }
                _ if matches!(
                    &*f.name,
                    "Add" | "Set" | "Del" | "Clone" | "Write" | "WriteSubset"
                ) =>
                {
                    Err(ExecError("unsupported http.Header method"))
                }
                _ => {
                    if has_args {
                        return Err(ExecError("not a method but has arguments"));
                    }
                    Ok(header_index(h, f.name.as_bytes()).map_or(Value::Invalid, Value::Strings))
                }
            },
            _ => missing,
        }
    }

    /// Evaluates the arguments of a function taking `any` values.
    fn any_args(
        &self,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Args<'a>> {
        let mut v = Args::with_capacity(args.len() + usize::from(fin.is_some()));
        for op in args {
            v.push(as_any(self.eval_arg(op, dot)?));
        }
        if let Some(f) = fin {
            v.push(as_any(f));
        }
        Ok(v)
    }

    /// Evaluates the arguments of a function taking `reflect.Value`s.
    fn value_args(
        &self,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Args<'a>> {
        let mut v = Args::with_capacity(args.len() + usize::from(fin.is_some()));
        for op in args {
            let x = self.eval_arg(op, dot)?;
            check_valid(&x)?;
            v.push(x);
        }
        if let Some(f) = fin {
            check_valid(&f)?;
            v.push(f);
        }
        Ok(v)
    }

    /// The string-producing built-ins, written straight into `out`.
    fn write_builtin(
        &self,
        b: Builtin,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
        out: &mut Vec<u8>,
    ) -> R<()> {
        match b {
            Builtin::Js | Builtin::Html | Builtin::UrlQuery => {
                let esc = match b {
                    Builtin::Js => Escaper::Js,
                    Builtin::Html => Escaper::Html,
                    _ => Escaper::UrlQuery,
                };
                let v = self.any_args(args, fin, dot)?;
                let v = v.as_slice();
                if let [single] = v {
                    if let Some(s) = single.as_bytes() {
                        esc.escape(s, out);
                        return Ok(());
                    }
                }
                let start = out.len();
                gofmt::sprint(out, v, true)?;
                if out.len() > self.limit {
                    return Err(ExecError("output too large"));
                }
                esc.escape_tail(out, start);
                Ok(())
            }
            Builtin::Print => gofmt::sprint(out, self.any_args(args, fin, dot)?.as_slice(), false),
            Builtin::Println => gofmt::sprintln(out, self.any_args(args, fin, dot)?.as_slice()),
            Builtin::Printf => {
                let v = self.any_args(args, fin, dot)?;
                match v.as_slice() {
                    [] => Err(wrong_args()),
                    [format, rest @ ..] => match format.as_bytes() {
                        Some(f) => gofmt::sprintf(out, f, rest, self.limit),
                        None => Err(ExecError("wrong type for value; expected string")),
                    },
                }
            }
            _ => {
                let v = self.call(b, args, fin, dot)?;
                gofmt::print_action(out, &v)
            }
        }
    }

    /// Calls a built-in for its value.
    fn call(
        &self,
        b: Builtin,
        args: &'a [Operand],
        fin: Option<Value<'a>>,
        dot: &Value<'a>,
    ) -> R<Value<'a>> {
        let nargs = args.len() + usize::from(fin.is_some());
        match b {
            Builtin::And | Builtin::Or => {
                if nargs == 0 {
                    return Err(wrong_args());
                }
                let is_or = b == Builtin::Or;
                let mut last = Value::Invalid;
                for op in args {
                    let v = self.eval_arg(op, dot)?;
                    check_valid(&v)?;
                    if truth(&v) == is_or {
                        return Ok(v);
                    }
                    last = v;
                }
                if let Some(f) = fin {
                    check_valid(&f)?;
                    last = f;
                }
                Ok(last)
            }
            Builtin::Not => {
                let v = self.value_args(args, fin, dot)?;
                match v.as_slice() {
                    [x] => Ok(Value::Bool(!truth(x))),
                    _ => Err(wrong_args()),
                }
            }
            Builtin::Eq => {
                let v = self.value_args(args, fin, dot)?;
                match v.as_slice() {
                    [] => Err(wrong_args()),
                    [_] => Err(ExecError("missing argument for comparison")),
                    [first, rest @ ..] => {
                        for x in rest {
                            if eq2(first, x)? {
                                return Ok(Value::Bool(true));
                            }
                        }
                        Ok(Value::Bool(false))
                    }
                }
            }
            Builtin::Ne | Builtin::Lt | Builtin::Le | Builtin::Gt | Builtin::Ge => {
                let v = self.value_args(args, fin, dot)?;
                let [x, y] = v.as_slice() else {
                    return Err(wrong_args());
                };
                let r = match b {
                    Builtin::Ne => !eq2(x, y)?,
                    Builtin::Lt => lt2(x, y)?,
                    Builtin::Le => lt2(x, y)? || eq2(x, y)?,
                    Builtin::Gt => !(lt2(x, y)? || eq2(x, y)?),
                    _ => !lt2(x, y)?,
                };
                Ok(Value::Bool(r))
            }
            Builtin::Index => {
                let v = self.value_args(args, fin, dot)?;
                let Some((item, indexes)) = v.as_slice().split_first() else {
                    return Err(wrong_args());
                };
                let mut item = item.clone();
                for ix in indexes {
                    item = index1(item, ix)?;
                }
                Ok(item)
            }
            Builtin::Len => {
                let v = self.value_args(args, fin, dot)?;
                let [x] = v.as_slice() else {
                    return Err(wrong_args());
                };
                let n = match x {
                    Value::Str(s) => s.len(),
                    Value::String(s) => s.len(),
                    Value::Strings(l) => l.len(),
                    Value::Header(h) => header_len(h),
                    _ => return Err(ExecError("len of unsupported type")),
                };
                Ok(Value::Int(n as i64, IntTy::Int))
            }
            Builtin::Js
            | Builtin::Html
            | Builtin::UrlQuery
            | Builtin::Print
            | Builtin::Printf
            | Builtin::Println => {
                let mut buf = Vec::new();
                self.write_builtin(b, args, fin, dot, &mut buf)?;
                Ok(Value::String(buf))
            }
        }
    }
}

/// One step of Go's `index`.
fn index1<'a>(item: Value<'a>, ix: &Value<'a>) -> R<Value<'a>> {
    let int_index = |len: usize| -> R<usize> {
        let x = match ix {
            Value::Int(i, _) => *i,
            Value::Uint8(u) => i64::from(*u),
            _ => return Err(ExecError("cannot index slice/array with non-integer")),
        };
        match usize::try_from(x) {
            Ok(x) if x < len => Ok(x),
            _ => Err(ExecError("index out of range")),
        }
    };
    match item {
        Value::Strings(l) => {
            let i = int_index(l.len())?;
            Ok(l.iter().nth(i).map_or(Value::Invalid, Value::Str))
        }
        Value::Str(s) => {
            let i = int_index(s.len())?;
            Ok(Value::Uint8(s[i]))
        }
        Value::String(s) => {
            let i = int_index(s.len())?;
            Ok(Value::Uint8(s[i]))
        }
        Value::Header(h) => match ix.as_bytes() {
            Some(key) => Ok(Value::Strings(
                header_index(h, key).unwrap_or_else(StrList::nil),
            )),
            None => Err(ExecError("value has wrong type; should be string")),
        },
        Value::Invalid | Value::Nil => Err(ExecError("index of untyped nil")),
        _ => Err(ExecError("can't index item")),
    }
}
