//! W3C Trace Context: trace and span ids, span contexts, and the `traceparent` header, parsed and
//! written exactly as Go's `propagation.TraceContext` does.
//!
//! `tracestate` and `baggage` are never rewritten: the proxy forwards them as received. The
//! `tracestate` of an incoming context is kept (unparsed) only to be reported on exported spans.

use std::fmt;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use super::rng;

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage` (W3C Baggage).
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Length of a version-00 `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// The sampled bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A 16-byte trace id; all zeros is invalid.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; all zeros is invalid.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The invalid (all-zero) id.
    pub const INVALID: TraceId = TraceId([0; 16]);

    /// Whether any byte is non-zero.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    /// A new random, valid id.
    #[inline]
    pub fn random() -> Self {
        loop {
            let hi = rng::next_u64().to_be_bytes();
            let lo = rng::next_u64().to_be_bytes();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&hi);
            id[8..].copy_from_slice(&lo);
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// The invalid (all-zero) id.
    pub const INVALID: SpanId = SpanId([0; 8]);

    /// Whether any byte is non-zero.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    /// A new random, valid id.
    #[inline]
    pub fn random() -> Self {
        loop {
            let id = rng::next_u64();
            if id != 0 {
                return SpanId(id.to_be_bytes());
            }
        }
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    // Only ASCII hex digits were written.
    String::from_utf8(out).unwrap_or_default()
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_string(&self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_string(&self.0))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The identity of a span as it propagates: ids, the sampled flag, whether it came from another
/// process, and the (unparsed) `tracestate` that travels with the trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanContext {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// The sampled flag (the only trace flag the propagator keeps).
    pub sampled: bool,
    /// Extracted from an incoming request rather than created here.
    pub remote: bool,
    /// The first `tracestate` value of the request the trace entered this process with.
    pub trace_state: Option<HeaderValue>,
}

/// The fields of a valid `traceparent` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// Version byte (`00`–`fe`).
    pub version: u8,
    /// Trace id (valid).
    pub trace_id: TraceId,
    /// Parent span id (valid).
    pub span_id: SpanId,
    /// Trace flags as sent (only the sampled bit is kept when propagating).
    pub flags: u8,
}

fn hex_digit(b: u8) -> Option<u8> {
    // Upper-case digits are rejected, as in Go's propagator.
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Go's `extractPart`: cuts the next `-`-separated part off `rest` and decodes it as exactly
/// `N` bytes of lower-case hex.
fn extract_part<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (part, left) = match rest.iter().position(|&b| b == b'-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &b""[..]),
    };
    *rest = left;
    if part.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in part.chunks_exact(2).enumerate() {
        out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value as Go's `propagation.TraceContext` does: lower-case hex only;
/// version `ff` is invalid; version `00` allows no trailing data and flags up to `02`; later
/// versions may carry more `-`-separated data; the ids must not be all zeros.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let mut rest = value;
    let [version] = extract_part::<1>(&mut rest)?;
    if version == 0xff {
        return None;
    }
    let trace_id = TraceId(extract_part::<16>(&mut rest)?);
    let span_id = SpanId(extract_part::<8>(&mut rest)?);
    let [flags] = extract_part::<1>(&mut rest)?;
    if version == 0 && (!rest.is_empty() || flags > 2) {
        return None;
    }
    if !trace_id.is_valid() || !span_id.is_valid() {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id,
        span_id,
        flags,
    })
}

impl SpanContext {
    /// The remote context carried by `headers` (first `traceparent` and `tracestate` values), or
    /// `None` when there is none or it is invalid.
    pub fn from_headers(headers: &HeaderMap) -> Option<SpanContext> {
        let parent = parse_traceparent(headers.get(&TRACEPARENT)?.as_bytes())?;
        Some(SpanContext {
            trace_id: parent.trace_id,
            span_id: parent.span_id,
            sampled: parent.flags & FLAG_SAMPLED != 0,
            remote: true,
            trace_state: headers.get(&TRACESTATE).cloned(),
        })
    }

    /// Whether both ids are valid.
    pub fn is_valid(&self) -> bool {
        self.trace_id.is_valid() && self.span_id.is_valid()
    }

    /// The trace flags byte (`01` when sampled).
    pub fn flags(&self) -> u8 {
        if self.sampled {
            FLAG_SAMPLED
        } else {
            0
        }
    }

    /// The version-00 `traceparent` text of this context.
    pub fn traceparent_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id.0);
        write_hex(&mut out[36..52], &self.span_id.0);
        write_hex(&mut out[53..55], &[self.flags()]);
        out
    }

    /// The `traceparent` header value of this context.
    pub fn traceparent(&self) -> HeaderValue {
        let bytes = self.traceparent_bytes();
        HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Writes this context into `headers` as `traceparent` (replacing any value), as Go's
    /// propagator does when the request leaves the process. `tracestate` and `baggage` are left as
    /// they are.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if self.is_valid() {
            headers.insert(TRACEPARENT, self.traceparent());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tp(s: &str) -> Option<TraceParent> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn valid_traceparent() {
        let p = tp(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(p.trace_id.to_string(), TRACE);
        assert_eq!(p.span_id.to_string(), SPAN);
        assert_eq!(p.flags, 1);
        assert_eq!(p.version, 0);
        let p = tp(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert_eq!(p.flags, 0);
        // The "random" flag of level 2 is accepted (and later dropped).
        assert_eq!(tp(&format!("00-{TRACE}-{SPAN}-02")).unwrap().flags, 2);
        // Future versions may carry more data and other flags.
        let p = tp(&format!("cc-{TRACE}-{SPAN}-09-what-the-future-holds")).unwrap();
        assert_eq!((p.version, p.flags), (0xcc, 9));
        // Go's quirk: a trailing dash after the flags leaves nothing to reject.
        assert!(tp(&format!("00-{TRACE}-{SPAN}-01-")).is_some());
    }

    #[test]
    fn invalid_traceparent() {
        for bad in [
            "".to_owned(),
            "invalid".to_owned(),
            "00".to_owned(),
            "00-".to_owned(),
            format!("00-{TRACE}"),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-03"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0-{TRACE}-{SPAN}-01"),
            format!("000-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}x-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}g-{SPAN}-01", &TRACE[1..]),
            format!("00_{TRACE}_{SPAN}_01"),
            format!(" 00-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01 "),
            "00-é-".to_owned(),
        ] {
            assert_eq!(tp(&bad), None, "{bad:?}");
        }
        // Arbitrary bytes never panic.
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = parse_traceparent(&junk);
        }
    }

    #[test]
    fn format_round_trips() {
        let value = format!("00-{TRACE}-{SPAN}-01");
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(&value).unwrap());
        headers.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        let ctx = SpanContext::from_headers(&headers).unwrap();
        assert!(ctx.remote && ctx.sampled);
        assert_eq!(ctx.trace_state.as_ref().unwrap(), "a=b");
        assert_eq!(ctx.traceparent(), value.as_str());
        // Flags are reduced to the sampled bit; the version becomes 00.
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_str(&format!("01-{TRACE}-{SPAN}-03-x")).unwrap(),
        );
        let ctx = SpanContext::from_headers(&headers).unwrap();
        assert_eq!(ctx.traceparent(), value.as_str());
        let unsampled = SpanContext {
            sampled: false,
            ..ctx
        };
        assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn inject_replaces_traceparent_only() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static("junk"));
        headers.append(TRACEPARENT, HeaderValue::from_static("more junk"));
        headers.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        headers.insert(BAGGAGE, HeaderValue::from_static("user=1"));
        let ctx = SpanContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled: true,
            ..Default::default()
        };
        ctx.inject(&mut headers);
        let values: Vec<_> = headers.get_all(&TRACEPARENT).iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].as_bytes(), &ctx.traceparent_bytes()[..]);
        assert_eq!(headers[&TRACESTATE], "k=v");
        assert_eq!(headers[&BAGGAGE], "user=1");
        // An invalid context injects nothing.
        let mut empty = HeaderMap::new();
        SpanContext::default().inject(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert!(a.is_valid() && b.is_valid());
        assert_ne!(a, b);
        assert_ne!(SpanId::random(), SpanId::random());
    }
}
