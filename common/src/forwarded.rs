//! The forwarded shim (queue-proxy §3.7): synthesizes an RFC 7239 `Forwarded` header from the
//! de-facto `X-Forwarded-*` headers when the request has none.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request};

use crate::header_scan::Present;
use crate::headers::{first_str, FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// The de-facto headers the shim builds `Forwarded` from.
const ANY_X_FORWARDED: Present = Present::X_FORWARDED_FOR
    .union(Present::X_FORWARDED_PROTO)
    .union(Present::X_FORWARDED_HOST);

/// The `Forwarded` value to set, or `None` to leave the request unchanged.
pub fn synthesize(headers: &HeaderMap) -> Option<String> {
    synthesize_scanned(headers, Present::scan(headers))
}

/// Adds the `Forwarded` header [`synthesize`] gives, if any. `present`: [`Present::scan`] of the
/// headers. The queue-proxy calls this from its handler stage (spec §3.7's shim), on the scan
/// that stage makes anyway.
#[inline]
pub fn add_forwarded<B>(request: &mut Request<B>, present: Present) {
    if present.any(ANY_X_FORWARDED) {
        add_forwarded_slow(request.headers_mut(), present);
    }
}

#[inline(never)]
fn add_forwarded_slow(headers: &mut HeaderMap, present: Present) {
    if let Some(value) = synthesize_scanned(headers, present) {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(FORWARDED, value);
        }
    }
}

fn synthesize_scanned(headers: &HeaderMap, present: Present) -> Option<String> {
    if !present.any(ANY_X_FORWARDED) {
        return None;
    }
    if present.any(Present::FORWARDED) && !first_str(headers, &FORWARDED).is_empty() {
        return None;
    }
    // Go's header parsing drops surrounding spaces and tabs; h2 clients can still send them.
    // Without the trim a whitespace-only `X-Forwarded-For` gave an empty `Forwarded` (fuzz find).
    let xff = first_trimmed(headers, present, Present::X_FORWARDED_FOR, &X_FORWARDED_FOR);
    let proto = first_trimmed(
        headers,
        present,
        Present::X_FORWARDED_PROTO,
        &X_FORWARDED_PROTO,
    );
    let host = first_trimmed(
        headers,
        present,
        Present::X_FORWARDED_HOST,
        &X_FORWARDED_HOST,
    );
    if xff.is_empty() && proto.is_empty() && host.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(xff.len() + proto.len() + host.len() + 24);
    let mut nodes = if xff.is_empty() {
        None
    } else {
        Some(xff.split(',').map(str::trim))
    };
    if let Some(first) = nodes.as_mut().and_then(Iterator::next) {
        if !first.is_empty() {
            push_node(&mut out, first);
        }
    }
    if !host.is_empty() {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str("host=");
        out.push_str(host);
    }
    if !proto.is_empty() {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str("proto=");
        out.push_str(proto);
    }
    for node in nodes.into_iter().flatten() {
        // An empty first element is skipped rather than written as a leading ", " (spec F9).
        if !out.is_empty() {
            out.push_str(", ");
        }
        push_node(&mut out, node);
    }
    Some(out)
}

/// `first_str` of `name` without surrounding spaces and tabs; not looked up when `present` (the
/// scan of `headers`) lacks its `bit` (`first_str` would give "").
fn first_trimmed<'a>(
    headers: &'a HeaderMap,
    present: Present,
    bit: Present,
    name: &HeaderName,
) -> &'a str {
    if !present.any(bit) {
        return "";
    }
    first_str(headers, name).trim_matches(&[' ', '\t'][..])
}

fn push_node(out: &mut String, node: &str) {
    out.push_str("for=");
    if node.contains(':') {
        out.push_str("\"[");
        out.push_str(node);
        out.push_str("]\"");
    } else {
        out.push_str(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(xff: &str, xfh: &str, xfp: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", xff),
            ("x-forwarded-host", xfh),
            ("x-forwarded-proto", xfp),
        ] {
            if !value.is_empty() {
                h.insert(name, HeaderValue::from_str(value).unwrap());
            }
        }
        synthesize(&h)
    }

    #[test]
    fn upstream_examples() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            case("127.0.0.1, ::1", "h", "p"),
            s("for=127.0.0.1;host=h;proto=p, for=\"[::1]\"")
        );
        assert_eq!(
            case("127.0.0.1", "h", "p"),
            s("for=127.0.0.1;host=h;proto=p")
        );
        assert_eq!(
            case("127.0.0.1, ::1", "", ""),
            s("for=127.0.0.1, for=\"[::1]\"")
        );
        assert_eq!(
            case("127.0.0.1, ::1", "", "p"),
            s("for=127.0.0.1;proto=p, for=\"[::1]\"")
        );
        assert_eq!(
            case("127.0.0.1, ::1", "h", ""),
            s("for=127.0.0.1;host=h, for=\"[::1]\"")
        );
        assert_eq!(case("", "h", ""), s("host=h"));
        assert_eq!(case("", "", "p"), s("proto=p"));
        assert_eq!(case("", "h", "p"), s("host=h;proto=p"));
        assert_eq!(case(",,,", "", ""), s("for=, for=, for="));
        assert_eq!(case("", "", ""), None);
    }

    #[test]
    fn existing_forwarded_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=a, for=b"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(synthesize(&h), None);
    }

    /// Fuzz regression: whitespace-only values are absent values, never an empty `Forwarded`.
    #[test]
    fn whitespace_only_values_give_no_header() {
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("\t"));
            assert_eq!(synthesize(&h), None, "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(" 1.2.3.4 "));
        assert_eq!(synthesize(&h).as_deref(), Some("for=1.2.3.4"));
    }
}
