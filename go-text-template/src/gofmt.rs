//! The parts of Go's `fmt` and `strconv` that template output goes through: `Sprint`,
//! `Sprintln`, `Sprintf` and the `%v` rendering of every value the data model has.
//!
//! Everything is written straight into the output buffer; width padding is applied in place.

use std::fmt::Write as _;
use std::io::Write as _;

use super::escape::{self, push_hex, push_rune};
use super::exec::{header_names_sorted, write_canonical, ExecError, Value};

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Go's `tooLarge`: widths and precisions above this are rejected.
const MAX_WIDTH: usize = 1_000_000;

/// Formatting flags of one verb.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Flags {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    plus_v: bool,
    sharp_v: bool,
    wid: Option<usize>,
    prec: Option<usize>,
}

/// Appends `v` in decimal.
pub(super) fn write_int(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `v` as Go's `%v` does (`strconv.FormatFloat(v, 'g', -1, 64)`): the shortest digits
/// that round-trip, in exponent form (`5.1e-05`, `1e+06`) when the decimal exponent is below -4
/// or at least 6. Go's `'g'` uses 6 as the exponent threshold for the shortest representation;
/// the 21 of JavaScript and `encoding/json` does not apply to `fmt`.
pub(super) fn write_float_v(out: &mut Vec<u8>, v: f64) {
    append_float(out, v, b'g', -1);
}

/// A small fixed buffer for `core::fmt` output, so float digits need no allocation.
struct StackBuf {
    buf: [u8; 40],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Decimal digits as Go's `decimalSlice`: value = 0.d[0]d[1]… × 10^dp, no trailing zeros; zero
/// has no digits.
struct Digits<'d> {
    d: &'d [u8],
    dp: i32,
}

/// Splits Rust's `{:e}` rendering of a finite positive number ("1.2345e-5") into its digits
/// (written to `dst`, which must be at least as long as `s`; trailing zeros trimmed) and the
/// decimal point position. Returns (number of digits, dp).
fn split_exp(s: &[u8], dst: &mut [u8]) -> (usize, i32) {
    let e = s.iter().position(|&c| c == b'e').unwrap_or(s.len());
    let mut n = 0;
    for &c in &s[..e] {
        if c.is_ascii_digit() {
            dst[n] = c;
            n += 1;
        }
    }
    while n > 0 && dst[n - 1] == b'0' {
        n -= 1;
    }
    if n == 0 {
        return (0, 0);
    }
    let exp: i32 = std::str::from_utf8(s.get(e + 1..).unwrap_or(b"0"))
        .ok()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (n, exp + 1)
}

/// Go's `strconv.AppendFloat(out, v, fmt, prec, 64)` for fmt in `e E f g G b`.
pub(super) fn append_float(out: &mut Vec<u8>, v: f64, fmt: u8, prec: i32) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    let neg = v.is_sign_negative();
    let a = v.abs();
    match fmt {
        b'b' => {
            let bits = v.to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i64;
            let mut mant = bits & ((1u64 << 52) - 1);
            let e = if exp == 0 {
                -1074
            } else {
                mant |= 1u64 << 52;
                exp - 1075
            };
            if neg {
                out.push(b'-');
            }
            write_int(out, mant as i64);
            out.push(b'p');
            if e >= 0 {
                out.push(b'+');
            }
            write_int(out, e);
        }
        b'f' if prec >= 0 => {
            if neg {
                out.push(b'-');
            }
            let _ = write!(out, "{:.*}", prec as usize, a);
        }
        _ if prec < 0 => {
            // Shortest representation that round-trips (Rust's `{:e}` is shortest too).
            let mut sb = StackBuf {
                buf: [0; 40],
                len: 0,
            };
            let _ = write!(sb, "{:e}", a);
            let mut digits = [0u8; 40];
            let (nd, dp) = if a == 0.0 {
                (0, 0)
            } else {
                split_exp(&sb.buf[..sb.len], &mut digits)
            };
            let d = Digits {
                d: &digits[..nd],
                dp,
            };
            let prec = match fmt {
                b'e' | b'E' => (nd as i32 - 1).max(0),
                b'f' => (nd as i32 - dp).max(0),
                _ => nd as i32,
            };
            format_digits(out, true, neg, &d, prec, fmt);
        }
        _ => {
            // A fixed number of significant digits, correctly rounded (ties to even, as Go).
            let mut prec = prec;
            let digits = match fmt {
                b'e' | b'E' => prec + 1,
                _ => {
                    if prec == 0 {
                        prec = 1;
                    }
                    prec
                }
            };
            let s = format!("{:.*e}", (digits - 1).max(0) as usize, a);
            let mut dv = vec![0u8; s.len()];
            let (nd, dp) = if a == 0.0 {
                (0, 0)
            } else {
                split_exp(s.as_bytes(), &mut dv)
            };
            let d = Digits { d: &dv[..nd], dp };
            format_digits(out, false, neg, &d, prec, fmt);
        }
    }
}

/// Go's `formatDigits`.
fn format_digits(out: &mut Vec<u8>, shortest: bool, neg: bool, d: &Digits<'_>, prec: i32, fmt: u8) {
    match fmt {
        b'e' | b'E' => fmt_e(out, neg, d, prec, fmt),
        b'f' => fmt_f(out, neg, d, prec),
        b'g' | b'G' => {
            let nd = d.d.len() as i32;
            let mut eprec = prec;
            if eprec > nd && nd >= d.dp {
                eprec = nd;
            }
            // %e is used if the exponent from the conversion is less than -4 or greater than or
            // equal to the precision; with the shortest representation, precision 6 decides.
            if shortest {
                eprec = 6;
            }
            let exp = d.dp - 1;
            let mut prec = prec;
            if exp < -4 || exp >= eprec {
                if prec > nd {
                    prec = nd;
                }
                fmt_e(out, neg, d, prec - 1, fmt + b'e' - b'g');
                return;
            }
            if prec > d.dp {
                prec = nd;
            }
            fmt_f(out, neg, d, (prec - d.dp).max(0));
        }
        _ => {
            out.push(b'%');
            out.push(fmt);
        }
    }
}

/// Go's `fmtE`: `-d.ddddde±dd`.
fn fmt_e(out: &mut Vec<u8>, neg: bool, d: &Digits<'_>, prec: i32, fmt: u8) {
    if neg {
        out.push(b'-');
    }
    out.push(d.d.first().copied().unwrap_or(b'0'));
    if prec > 0 {
        out.push(b'.');
        let nd = d.d.len();
        let m = nd.min(prec as usize + 1);
        let mut i = 1;
        if i < m {
            out.extend_from_slice(&d.d[i..m]);
            i = m;
        }
        while i <= prec as usize {
            out.push(b'0');
            i += 1;
        }
    }
    out.push(fmt);
    let mut exp = d.dp - 1;
    if d.d.is_empty() {
        exp = 0;
    }
    if exp < 0 {
        out.push(b'-');
        exp = -exp;
    } else {
        out.push(b'+');
    }
    if exp < 10 {
        out.push(b'0');
        out.push(b'0' + exp as u8);
    } else if exp < 100 {
        out.push(b'0' + (exp / 10) as u8);
        out.push(b'0' + (exp % 10) as u8);
    } else {
        out.push(b'0' + (exp / 100) as u8);
        out.push(b'0' + (exp / 10 % 10) as u8);
        out.push(b'0' + (exp % 10) as u8);
    }
}

/// Go's `fmtF`: `-ddddddd.ddddd`.
fn fmt_f(out: &mut Vec<u8>, neg: bool, d: &Digits<'_>, prec: i32) {
    if neg {
        out.push(b'-');
    }
    let nd = d.d.len() as i32;
    if d.dp > 0 {
        let m = nd.min(d.dp);
        out.extend_from_slice(&d.d[..m as usize]);
        for _ in m..d.dp {
            out.push(b'0');
        }
    } else {
        out.push(b'0');
    }
    if prec > 0 {
        out.push(b'.');
        for i in 0..prec {
            let j = d.dp + i;
            out.push(if (0..nd).contains(&j) {
                d.d[j as usize]
            } else {
                b'0'
            });
        }
    }
}

/// Go's `fmt.Sprint` of `args` (`deref`: the template's `evalArgs`, which prints pointers as the
/// values they point to and a nil argument as `<no value>`).
pub(super) fn sprint(out: &mut Vec<u8>, args: &[Value<'_>], deref: bool) -> Result<(), ExecError> {
    let mut prev_string = false;
    let mut p = Printer::new(out, deref);
    for (i, arg) in args.iter().enumerate() {
        let nil = deref && matches!(arg, Value::Nil | Value::Invalid);
        let is_string = nil || arg.as_bytes().is_some();
        if i > 0 && !is_string && !prev_string {
            p.out.push(b' ');
        }
        if nil {
            p.out.extend_from_slice(b"<no value>");
        } else {
            p.print_arg(arg, 'v')?;
        }
        prev_string = is_string;
    }
    Ok(())
}

/// Go's `fmt.Sprintln`.
pub(super) fn sprintln(out: &mut Vec<u8>, args: &[Value<'_>]) -> Result<(), ExecError> {
    let mut p = Printer::new(out, false);
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            p.out.push(b' ');
        }
        p.print_arg(arg, 'v')?;
    }
    p.out.push(b'\n');
    Ok(())
}

/// Prints one value as a template action does (`{{.X}}`): `%v`, pointers dereferenced.
pub(super) fn print_action(out: &mut Vec<u8>, v: &Value<'_>) -> Result<(), ExecError> {
    match v {
        Value::Invalid | Value::Nil => {
            out.extend_from_slice(b"<no value>");
            Ok(())
        }
        Value::Str(s) => {
            out.extend_from_slice(s);
            Ok(())
        }
        v => Printer::new(out, true).print_arg(v, 'v'),
    }
}

/// Go's `fmt.Sprintf`.
pub(super) fn sprintf(
    out: &mut Vec<u8>,
    format: &[u8],
    args: &[Value<'_>],
    limit: usize,
) -> Result<(), ExecError> {
    let mut p = Printer::new(out, false);
    let end = format.len();
    let mut arg_num = 0;
    let mut i = 0;
    while i < end {
        let lasti = i;
        while i < end && format[i] != b'%' {
            i += 1;
        }
        if i > lasti {
            p.out.extend_from_slice(&format[lasti..i]);
        }
        if i >= end {
            break;
        }
        // Process one verb.
        i += 1;
        p.f = Flags::default();
        while i < end {
            match format[i] {
                b'#' => p.f.sharp = true,
                b'0' => p.f.zero = !p.f.minus,
                b'+' => p.f.plus = true,
                b'-' => {
                    p.f.minus = true;
                    p.f.zero = false;
                }
                b' ' => p.f.space = true,
                _ => break,
            }
            i += 1;
        }
        // Width.
        if i < end && format[i] == b'*' {
            i += 1;
            match int_from_arg(args, &mut arg_num) {
                Some(w) => {
                    if w < 0 {
                        p.f.minus = true;
                        p.f.zero = false;
                    }
                    let w = w.unsigned_abs() as usize;
                    if w > MAX_WIDTH {
                        p.out.extend_from_slice(b"%!(BADWIDTH)");
                    } else {
                        p.f.wid = Some(w);
                    }
                }
                None => p.out.extend_from_slice(b"%!(BADWIDTH)"),
            }
        } else {
            match parse_num(format, &mut i) {
                Ok(Some(w)) => p.f.wid = Some(w),
                Ok(None) => {}
                Err(()) => {
                    p.out.extend_from_slice(b"%!(NOVERB)");
                    break;
                }
            }
        }
        // Precision.
        if i < end && format[i] == b'.' {
            i += 1;
            if i < end && format[i] == b'*' {
                i += 1;
                match int_from_arg(args, &mut arg_num) {
                    Some(pr) if pr >= 0 && pr as usize <= MAX_WIDTH => p.f.prec = Some(pr as usize),
                    Some(pr) if pr < 0 => {}
                    _ => p.out.extend_from_slice(b"%!(BADPREC)"),
                }
            } else {
                match parse_num(format, &mut i) {
                    Ok(pr) => p.f.prec = Some(pr.unwrap_or(0)),
                    Err(()) => {
                        p.out.extend_from_slice(b"%!(NOVERB)");
                        break;
                    }
                }
            }
        }
        if i >= end {
            p.out.extend_from_slice(b"%!(NOVERB)");
            break;
        }
        let (verb, size) = escape::decode_rune(&format[i..]);
        let verb = char::from_u32(verb).unwrap_or('\u{FFFD}');
        i += size;
        if verb == '%' {
            p.out.push(b'%');
        } else if arg_num >= args.len() {
            p.out.extend_from_slice(b"%!");
            push_rune(p.out, u32::from(verb));
            p.out.extend_from_slice(b"(MISSING)");
        } else {
            if verb == 'v' {
                if p.f.sharp {
                    p.f.sharp = false;
                    p.f.sharp_v = true;
                }
                if p.f.plus {
                    p.f.plus = false;
                    p.f.plus_v = true;
                }
            }
            p.print_arg(&args[arg_num], verb)?;
            arg_num += 1;
        }
        if p.out.len() > limit {
            return Err(ExecError("output too large"));
        }
    }
    if arg_num < args.len() {
        p.f = Flags::default();
        p.out.extend_from_slice(b"%!(EXTRA ");
        for (k, arg) in args[arg_num..].iter().enumerate() {
            if k > 0 {
                p.out.extend_from_slice(b", ");
            }
            if matches!(arg, Value::Nil | Value::Invalid) {
                p.out.extend_from_slice(b"<nil>");
            } else {
                p.out.extend_from_slice(arg.type_name().as_bytes());
                p.out.push(b'=');
                p.print_arg(arg, 'v')?;
            }
        }
        p.out.push(b')');
    }
    Ok(())
}

/// Go's `parsenum`: `Ok(None)` without digits, `Err` when too large.
fn parse_num(format: &[u8], i: &mut usize) -> Result<Option<usize>, ()> {
    let start = *i;
    let mut n: usize = 0;
    while *i < format.len() && format[*i].is_ascii_digit() {
        if n > MAX_WIDTH {
            return Err(());
        }
        n = n * 10 + usize::from(format[*i] - b'0');
        *i += 1;
    }
    if *i == start {
        Ok(None)
    } else if n > MAX_WIDTH {
        Err(())
    } else {
        Ok(Some(n))
    }
}

/// Go's `intFromArg` for `*` widths and precisions.
fn int_from_arg(args: &[Value<'_>], arg_num: &mut usize) -> Option<i64> {
    let v = args.get(*arg_num)?;
    *arg_num += 1;
    match v {
        Value::Int(i, _) => Some(*i),
        Value::Uint8(u) => Some(i64::from(*u)),
        _ => None,
    }
}

struct Printer<'o> {
    out: &'o mut Vec<u8>,
    f: Flags,
    /// Print top-level pointers as their targets (the template's `printableValue`).
    deref: bool,
}

impl<'o> Printer<'o> {
    fn new(out: &'o mut Vec<u8>, deref: bool) -> Self {
        Printer {
            out,
            f: Flags::default(),
            deref,
        }
    }

    /// Pads `out[start..]` to the width, on the left or (with `-`) on the right.
    fn pad_from(&mut self, start: usize, zero: bool) {
        let Some(wid) = self.f.wid else {
            return;
        };
        let n = escape::rune_count(&self.out[start..]);
        if n >= wid {
            return;
        }
        let fill = if zero && !self.f.minus { b'0' } else { b' ' };
        let count = wid - n;
        if self.f.minus {
            self.out.resize(self.out.len() + count, fill);
        } else {
            self.out
                .splice(start..start, std::iter::repeat_n(fill, count));
        }
    }

    fn pad_bytes(&mut self, b: &[u8]) {
        let start = self.out.len();
        self.out.extend_from_slice(b);
        self.pad_from(start, self.f.zero);
    }

    fn bad_verb(&mut self, verb: char, v: &Value<'_>) -> Result<(), ExecError> {
        self.out.extend_from_slice(b"%!");
        push_rune(self.out, u32::from(verb));
        self.out.push(b'(');
        if matches!(v, Value::Nil | Value::Invalid) {
            self.out.extend_from_slice(b"<nil>");
        } else {
            self.out.extend_from_slice(v.type_name().as_bytes());
            self.out.push(b'=');
            self.print_value(v, 'v', 1)?;
        }
        self.out.push(b')');
        Ok(())
    }

    fn print_arg(&mut self, v: &Value<'_>, verb: char) -> Result<(), ExecError> {
        if matches!(v, Value::Nil | Value::Invalid) {
            return match verb {
                'T' | 'v' => {
                    self.pad_bytes(b"<nil>");
                    Ok(())
                }
                _ => self.bad_verb(verb, v),
            };
        }
        if verb == 'T' {
            self.pad_bytes(v.type_name().as_bytes());
            return Ok(());
        }
        self.print_value(v, verb, 0)
    }

    fn print_value(&mut self, v: &Value<'_>, verb: char, depth: usize) -> Result<(), ExecError> {
        match v {
            Value::Invalid => {
                if depth == 0 {
                    self.out.extend_from_slice(b"<invalid reflect.Value>");
                } else if verb == 'v' {
                    self.out.extend_from_slice(b"<nil>");
                } else {
                    self.bad_verb(verb, v)?;
                }
                Ok(())
            }
            Value::Nil => self.print_arg(v, verb),
            Value::Bool(b) => match verb {
                't' | 'v' => {
                    self.pad_bytes(if *b { b"true" } else { b"false" });
                    Ok(())
                }
                _ => self.bad_verb(verb, v),
            },
            Value::Int(i, _) => self.fmt_integer(*i as u64, true, verb, v),
            Value::Uint8(u) => self.fmt_integer(u64::from(*u), false, verb, v),
            Value::Float(x) => self.fmt_float(*x, verb, v),
            Value::Str(s) => self.fmt_string(s, verb, v),
            Value::String(s) => self.fmt_string(s, verb, v),
            Value::Url(u) => match verb {
                'v' | 's' | 'x' | 'X' | 'q' => self.fmt_string(u.as_bytes(), verb, v),
                _ => self.bad_verb(verb, v),
            },
            Value::Strings(list) => {
                if self.f.sharp_v {
                    if list.is_nil() {
                        self.out.extend_from_slice(b"[]string(nil)");
                        return Ok(());
                    }
                    self.out.extend_from_slice(b"[]string{");
                    for (k, s) in list.iter().enumerate() {
                        if k > 0 {
                            self.out.extend_from_slice(b", ");
                        }
                        self.fmt_string(s, verb, v)?;
                    }
                    self.out.push(b'}');
                    return Ok(());
                }
                self.out.push(b'[');
                for (k, s) in list.iter().enumerate() {
                    if k > 0 {
                        self.out.push(b' ');
                    }
                    self.fmt_string(s, verb, &Value::Str(s))?;
                }
                self.out.push(b']');
                Ok(())
            }
            Value::Header(h) => {
                let names = header_names_sorted(h);
                if self.f.sharp_v {
                    self.out.extend_from_slice(b"http.Header{");
                } else {
                    self.out.extend_from_slice(b"map[");
                }
                for (k, name) in names.iter().enumerate() {
                    if k > 0 {
                        self.out
                            .extend_from_slice(if self.f.sharp_v { b", " } else { b" " });
                    }
                    let start = self.out.len();
                    write_canonical(self.out, name.as_str());
                    if self.f.sharp_v || verb != 'v' {
                        // Format the key with the verb (quoted for %#v).
                        let key: Vec<u8> = self.out.drain(start..).collect();
                        self.fmt_string(&key, verb, &Value::Str(&key))?;
                    }
                    self.out.push(b':');
                    let list = Value::Strings(super::exec::StrList::new(h, name.as_str()));
                    self.print_value(&list, verb, depth + 1)?;
                }
                self.out.push(if self.f.sharp_v { b'}' } else { b']' });
                Ok(())
            }
            Value::Response(_) | Value::Revision(_) => self.print_struct(v, verb, depth),
            Value::Request(_) | Value::Root(_) => Err(ExecError("can't print a request value")),
        }
    }

    fn print_struct(&mut self, v: &Value<'_>, verb: char, depth: usize) -> Result<(), ExecError> {
        let (type_name, fields) = match v {
            Value::Response(_) => (
                "http.RequestLogResponse",
                ["Code", "Size", "Latency"].as_slice(),
            ),
            _ => (
                "http.RequestLogRevision",
                [
                    "Name",
                    "Namespace",
                    "Service",
                    "Configuration",
                    "PodName",
                    "PodIP",
                ]
                .as_slice(),
            ),
        };
        if depth == 0 && !self.deref {
            self.out.push(b'&');
        }
        if self.f.sharp_v {
            self.out.extend_from_slice(type_name.as_bytes());
        }
        self.out.push(b'{');
        for (k, name) in fields.iter().enumerate() {
            if k > 0 {
                self.out
                    .extend_from_slice(if self.f.sharp_v { b", " } else { b" " });
            }
            if self.f.plus_v || self.f.sharp_v {
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b':');
            }
            let fv = v.struct_field(k);
            self.print_value(&fv, verb, depth + 1)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn fmt_string(&mut self, s: &[u8], verb: char, v: &Value<'_>) -> Result<(), ExecError> {
        match verb {
            'v' if self.f.sharp_v => self.fmt_q(s),
            'v' | 's' => {
                let s = self.truncate(s);
                self.pad_bytes(s);
            }
            'x' => self.fmt_sx(s, LOWER),
            'X' => self.fmt_sx(s, UPPER),
            'q' => self.fmt_q(s),
            _ => return self.bad_verb(verb, v),
        }
        Ok(())
    }

    /// Truncates to the precision, counted in runes.
    fn truncate<'s>(&self, s: &'s [u8]) -> &'s [u8] {
        let Some(prec) = self.f.prec else {
            return s;
        };
        let mut n = 0;
        let mut i = 0;
        while i < s.len() {
            if n == prec {
                return &s[..i];
            }
            i += escape::decode_rune(&s[i..]).1;
            n += 1;
        }
        s
    }

    fn fmt_q(&mut self, s: &[u8]) {
        let s = self.truncate(s);
        let start = self.out.len();
        if self.f.sharp && escape::can_backquote(s) {
            self.out.push(b'`');
            self.out.extend_from_slice(s);
            self.out.push(b'`');
        } else {
            escape::quote(s, self.f.plus, self.out);
        }
        self.pad_from(start, self.f.zero);
    }

    /// Go's `fmtSbx` for a string.
    fn fmt_sx(&mut self, s: &[u8], digits: &[u8; 16]) {
        let mut length = s.len();
        if let Some(prec) = self.f.prec {
            length = length.min(prec);
        }
        let mut width = 2 * length;
        if width > 0 {
            if self.f.space {
                if self.f.sharp {
                    width *= 2;
                }
                width += length - 1;
            } else if self.f.sharp {
                width += 2;
            }
        } else {
            if let Some(w) = self.f.wid {
                let fill = if self.f.zero { b'0' } else { b' ' };
                self.out.resize(self.out.len() + w, fill);
            }
            return;
        }
        let fill = if self.f.zero { b'0' } else { b' ' };
        if let Some(w) = self.f.wid {
            if w > width && !self.f.minus {
                self.out.resize(self.out.len() + (w - width), fill);
            }
        }
        if self.f.sharp {
            self.out.push(b'0');
            self.out.push(if digits[10] == b'a' { b'x' } else { b'X' });
        }
        for (k, &c) in s[..length].iter().enumerate() {
            if self.f.space && k > 0 {
                self.out.push(b' ');
                if self.f.sharp {
                    self.out.push(b'0');
                    self.out.push(if digits[10] == b'a' { b'x' } else { b'X' });
                }
            }
            self.out.push(digits[usize::from(c >> 4)]);
            self.out.push(digits[usize::from(c & 0xf)]);
        }
        if let Some(w) = self.f.wid {
            if w > width && self.f.minus {
                self.out.resize(self.out.len() + (w - width), fill);
            }
        }
    }

    fn fmt_integer(
        &mut self,
        u: u64,
        signed: bool,
        verb: char,
        v: &Value<'_>,
    ) -> Result<(), ExecError> {
        match verb {
            'v' if self.f.sharp_v && !signed => {
                let sharp = self.f.sharp;
                self.f.sharp = true;
                self.integer(u, 16, signed, 'v', LOWER);
                self.f.sharp = sharp;
            }
            'v' | 'd' => self.integer(u, 10, signed, verb, LOWER),
            'b' => self.integer(u, 2, signed, verb, LOWER),
            'o' | 'O' => self.integer(u, 8, signed, verb, LOWER),
            'x' => self.integer(u, 16, signed, verb, LOWER),
            'X' => self.integer(u, 16, signed, verb, UPPER),
            'c' => {
                let start = self.out.len();
                let r = if u > 0x10FFFF { 0xFFFD } else { u as u32 };
                push_rune(self.out, r);
                self.pad_from(start, self.f.zero);
            }
            'q' => {
                let start = self.out.len();
                let r = if u > 0x10FFFF { 0xFFFD } else { u as u32 };
                escape::quote_rune(r as i32, self.f.plus, self.out);
                self.pad_from(start, self.f.zero);
            }
            'U' => {
                let start = self.out.len();
                let prec = self.f.prec.unwrap_or(4).max(4);
                self.out.extend_from_slice(b"U+");
                push_hex(self.out, u, prec, UPPER);
                if self.f.sharp && u <= 0x10FFFF && escape::is_print(u as u32) {
                    self.out.extend_from_slice(b" '");
                    push_rune(self.out, u as u32);
                    self.out.push(b'\'');
                }
                self.pad_from(start, false);
            }
            _ => return self.bad_verb(verb, v),
        }
        Ok(())
    }

    /// Go's `fmt.fmtInteger`.
    fn integer(&mut self, u: u64, base: u64, signed: bool, verb: char, digits: &[u8; 16]) {
        let negative = signed && (u as i64) < 0;
        let u = if negative {
            (u as i64).unsigned_abs()
        } else {
            u
        };
        let mut prec = 0usize;
        if let Some(p) = self.f.prec {
            prec = p;
            if p == 0 && u == 0 {
                if let Some(w) = self.f.wid {
                    self.out.resize(self.out.len() + w, b' ');
                }
                return;
            }
        } else if self.f.zero && !self.f.minus {
            if let Some(w) = self.f.wid {
                prec = w;
                if negative || self.f.plus || self.f.space {
                    prec = prec.saturating_sub(1);
                }
            }
        }
        let mut buf = [0u8; 64];
        let mut i = buf.len();
        let mut x = u;
        loop {
            i -= 1;
            buf[i] = digits[(x % base) as usize];
            x /= base;
            if x == 0 {
                break;
            }
        }
        let ndigits = buf.len() - i;
        let zeros = prec.saturating_sub(ndigits);
        let first = if zeros > 0 { b'0' } else { buf[i] };
        let start = self.out.len();
        if negative {
            self.out.push(b'-');
        } else if self.f.plus {
            self.out.push(b'+');
        } else if self.f.space {
            self.out.push(b' ');
        }
        if verb == 'O' {
            self.out.extend_from_slice(b"0o");
        }
        if self.f.sharp {
            match base {
                2 => self.out.extend_from_slice(b"0b"),
                8 if first != b'0' => self.out.push(b'0'),
                16 => {
                    self.out.push(b'0');
                    self.out.push(if digits[10] == b'a' { b'x' } else { b'X' });
                }
                _ => {}
            }
        }
        self.out.resize(self.out.len() + zeros, b'0');
        self.out.extend_from_slice(&buf[i..]);
        self.pad_from(start, false);
    }

    /// Go's `pp.fmtFloat` + `fmt.fmtFloat` (without the `#` flag).
    fn fmt_float(&mut self, x: f64, verb: char, v: &Value<'_>) -> Result<(), ExecError> {
        let (fmt, default_prec) = match verb {
            'v' => (b'g', -1),
            'b' => (b'b', -1),
            'g' => (b'g', -1),
            'G' => (b'G', -1),
            'f' | 'F' => (b'f', 6),
            'e' => (b'e', 6),
            'E' => (b'E', 6),
            _ => return self.bad_verb(verb, v),
        };
        let prec = match self.f.prec {
            Some(p) if fmt != b'b' => p as i32,
            _ => default_prec,
        };
        let start = self.out.len();
        append_float(self.out, x, fmt, prec);
        let sign = match self.out.get(start) {
            Some(&c @ (b'-' | b'+')) => {
                self.out.remove(start);
                c
            }
            _ => b'+',
        };
        let sign = if self.f.space && sign == b'+' && !self.f.plus {
            b' '
        } else {
            sign
        };
        let special = matches!(self.out.get(start), Some(b'I' | b'N'));
        if special {
            let is_nan = self.out.get(start) == Some(&b'N');
            if !(is_nan && !self.f.space && !self.f.plus) {
                self.out.insert(start, sign);
            }
            self.pad_from(start, false);
            return Ok(());
        }
        if self.f.plus || sign != b'+' {
            let len = self.out.len() - start + 1;
            if self.f.zero && !self.f.minus {
                if let Some(w) = self.f.wid {
                    if w > len {
                        self.out.insert(start, sign);
                        self.out
                            .splice(start + 1..start + 1, std::iter::repeat_n(b'0', w - len));
                        return Ok(());
                    }
                }
            }
            self.out.insert(start, sign);
            self.pad_from(start, self.f.zero);
            return Ok(());
        }
        self.pad_from(start, self.f.zero);
        Ok(())
    }
}
