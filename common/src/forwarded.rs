//! The forwarded shim (queue-proxy §3.7): synthesizes an RFC 7239 `Forwarded` header from the
//! de-facto `X-Forwarded-*` headers when the request has none.

use http::{HeaderMap, HeaderValue};

use crate::header_scan::{Present, Scan};

/// The de-facto headers the shim builds `Forwarded` from.
const ANY_X_FORWARDED: Present = Present::X_FORWARDED_FOR
    .union(Present::X_FORWARDED_PROTO)
    .union(Present::X_FORWARDED_HOST);

/// Longest value written on the stack; a longer one (a long `X-Forwarded-For` chain) is
/// written into a heap buffer first.
const STACK_VALUE: usize = 256;

/// The `Forwarded` value to set, or `None` to leave the request unchanged.
pub fn synthesize(headers: &HeaderMap) -> Option<String> {
    // The value is visible ASCII (see `write_value`).
    forwarded_value(&Scan::of(headers)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The `Forwarded` value to set for the headers `scan` describes, or `None` to leave them
/// unchanged. The queue-proxy calls this from its handler stage (spec §3.7's shim), on the scan
/// that stage makes anyway, and inserts the value under [`crate::headers::FORWARDED`].
#[inline]
pub fn forwarded_value(scan: &Scan<'_>) -> Option<HeaderValue> {
    if scan.present().any(ANY_X_FORWARDED) {
        forwarded_value_slow(scan)
    } else {
        None
    }
}

#[inline(never)]
fn forwarded_value_slow(scan: &Scan<'_>) -> Option<HeaderValue> {
    // A request that has a (readable, non-empty) `Forwarded` keeps it.
    if let Some(forwarded) = scan.first(Present::FORWARDED) {
        if !forwarded.is_empty() && is_visible(forwarded.as_bytes()) {
            return None;
        }
    }
    // Go's header parsing drops surrounding spaces and tabs; h2 clients can still send them.
    // Without the trim a whitespace-only `X-Forwarded-For` gave an empty `Forwarded` (fuzz find).
    let xff = field(scan.first(Present::X_FORWARDED_FOR));
    let proto = field(scan.first(Present::X_FORWARDED_PROTO));
    let host = field(scan.first(Present::X_FORWARDED_HOST));
    if xff.is_empty() && proto.is_empty() && host.is_empty() {
        return None;
    }
    // Per node at most `, for="[` `]"` around it, and at most a node per byte of `xff` (a comma
    // each); `;host=`, `;proto=`. The exact node count is only worth a pass over `xff` when
    // that bound is too long for the stack.
    let bound = |nodes: usize| xff.len() + 10 * nodes + host.len() + proto.len() + 13;
    // One allocation, of the value's size (`from_bytes` copies it into an exact `Bytes`).
    let value = if bound(xff.len() + 1) <= STACK_VALUE {
        let mut buf = [0; STACK_VALUE];
        let len = write_value(&mut buf, xff, host, proto);
        HeaderValue::from_bytes(&buf[..len])
    } else {
        let commas = xff.iter().filter(|&&b| b == b',').count();
        let mut buf = vec![0; bound(commas + 1)];
        let len = write_value(&mut buf, xff, host, proto);
        HeaderValue::from_bytes(&buf[..len])
    };
    value.ok()
}

/// Whether `bytes` are visible ASCII or tabs (what `HeaderValue::to_str` accepts).
#[inline]
fn is_visible(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(32) < 95) | (b == b'\t'))
    })
}

/// A value as the shim reads it: trimmed, and empty unless visible ASCII.
#[inline]
fn field(value: Option<&HeaderValue>) -> &[u8] {
    match value {
        Some(value) if is_visible(value.as_bytes()) => trim(value.as_bytes()),
        _ => b"",
    }
}

/// `bytes` without surrounding spaces and tabs (the only whitespace a visible-ASCII value holds).
#[inline]
fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Writes the `Forwarded` value into `buf` (long enough: see the bound above) and returns its
/// length: the first node of `xff` with `host` and `proto`, then the other nodes, one `for=`
/// each (an IPv6 node quoted and bracketed). All of it is visible ASCII: the inputs are
/// visible-ASCII values and the rest literals.
fn write_value(buf: &mut [u8], xff: &[u8], host: &[u8], proto: &[u8]) -> usize {
    let mut out = Out { buf, len: 0 };
    let (first, rest) = match xff.iter().position(|&b| b == b',') {
        Some(comma) => (trim(&xff[..comma]), Some(&xff[comma + 1..])),
        None => (xff, None),
    };
    if !first.is_empty() {
        out.node(first);
    }
    if !host.is_empty() {
        out.push(if out.len == 0 { b"host=" } else { b";host=" });
        out.push(host);
    }
    if !proto.is_empty() {
        out.push(if out.len == 0 { b"proto=" } else { b";proto=" });
        out.push(proto);
    }
    for node in rest.into_iter().flat_map(|rest| rest.split(|&b| b == b',')) {
        // An empty first element is skipped rather than written as a leading ", " (spec F9).
        if out.len != 0 {
            out.push(b", ");
        }
        out.node(trim(node));
    }
    out.len
}

/// A cursor writing into a buffer known to be long enough.
struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Out<'_> {
    #[inline]
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    #[inline]
    fn node(&mut self, node: &[u8]) {
        if node.contains(&b':') {
            self.push(b"for=\"[");
            self.push(node);
            self.push(b"]\"");
        } else {
            self.push(b"for=");
            self.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::FORWARDED;
    use http::Request;

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

    /// The straightforward form of the shim (split, trim, push into a `String`; what this
    /// module did before writing the value in one pass), as a reference.
    fn reference(headers: &HeaderMap) -> Option<String> {
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if !first("forwarded").is_empty() {
            return None;
        }
        let trimmed = |name| first(name).trim_matches(&[' ', '\t'][..]);
        let (xff, proto, host) = (
            trimmed("x-forwarded-for"),
            trimmed("x-forwarded-proto"),
            trimmed("x-forwarded-host"),
        );
        if xff.is_empty() && proto.is_empty() && host.is_empty() {
            return None;
        }
        let node = |out: &mut String, node: &str| {
            if node.contains(':') {
                out.push_str(&format!("for=\"[{node}]\""));
            } else {
                out.push_str(&format!("for={node}"));
            }
        };
        let mut out = String::new();
        let mut nodes = (!xff.is_empty()).then(|| xff.split(',').map(str::trim));
        if let Some(first) = nodes.as_mut().and_then(Iterator::next) {
            if !first.is_empty() {
                node(&mut out, first);
            }
        }
        for (key, value) in [("host", host), ("proto", proto)] {
            if !value.is_empty() {
                if !out.is_empty() {
                    out.push(';');
                }
                out.push_str(&format!("{key}={value}"));
            }
        }
        for n in nodes.into_iter().flatten() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            node(&mut out, n);
        }
        Some(out)
    }

    /// The one-pass writer gives the reference's value for odd inputs: several
    /// `X-Forwarded-For` lines, commas, spaces and tabs, IPv6, empty and non-ASCII values, an
    /// existing `Forwarded`, and chains long enough for the heap buffer.
    #[test]
    fn one_pass_matches_reference() {
        let long = (0..40)
            .map(|i| format!("10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let long6 = (0..30)
            .map(|i| format!("2001:db8::{i}"))
            .collect::<Vec<_>>()
            .join(",");
        // Around the stack buffer's bound: nodes of nothing, of `:` (written `for="[:]"`).
        let edges: Vec<String> = [8, 10, 11, 12, 20, 21, 22, 23, 30]
            .iter()
            .flat_map(|&n| {
                [
                    ",".repeat(n),
                    ":,".repeat(n),
                    format!(" {}:", ":,".repeat(n)),
                ]
            })
            .collect();
        let mut xffs: Vec<&[u8]> = vec![
            b"",
            b" ",
            b"\t",
            b",",
            b",,,",
            b" , ",
            b"1.2.3.4",
            b" 1.2.3.4 ",
            b"::1",
            b"[::1]:80",
            b"a,b",
            b"a, b ,c",
            b",a",
            b"a,",
            b" ,\t::1",
            b"1.1.1.1,\t2.2.2.2",
            b"x:y, z",
            b"caf\xc3\xa9, 1.1.1.1",
            b"\x80",
            long.as_bytes(),
            long6.as_bytes(),
        ];
        xffs.extend(edges.iter().map(String::as_bytes));
        let protos: &[&[u8]] = &[b"", b"https", b" http\t", b"\xff", b" "];
        let hosts: &[&[u8]] = &[b"", b"h", b" example.com:8080 ", b"a,b"];
        let forwardeds: &[Option<&[u8]>] = &[None, Some(b""), Some(b"for=x"), Some(b"\x80")];
        let mut cases = 0;
        for (i, xff) in xffs.iter().enumerate() {
            // None, one or two `X-Forwarded-For` lines (the second from further on the list).
            for lines in 0..3 {
                for proto in protos {
                    for host in hosts {
                        for forwarded in forwardeds {
                            let mut h = HeaderMap::new();
                            h.append("x-other", HeaderValue::from_static("1"));
                            if lines > 0 {
                                h.append("x-forwarded-for", HeaderValue::from_bytes(xff).unwrap());
                            }
                            if lines > 1 {
                                let second = xffs[(i + 7) % xffs.len()];
                                h.append(
                                    "x-forwarded-for",
                                    HeaderValue::from_bytes(second).unwrap(),
                                );
                            }
                            for (name, value) in [
                                ("x-forwarded-proto", Some(*proto)),
                                ("x-forwarded-host", Some(*host)),
                                ("forwarded", *forwarded),
                            ] {
                                if let Some(value) = value.filter(|v| !v.is_empty()) {
                                    h.append(name, HeaderValue::from_bytes(value).unwrap());
                                }
                            }
                            if *forwarded == Some(b"") {
                                h.append("forwarded", HeaderValue::from_static(""));
                            }
                            assert_eq!(synthesize(&h), reference(&h), "{h:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 1000);
    }

    /// Inserting what `forwarded_value` gives (as the queue-proxy's handler does) sets what
    /// `synthesize` gives.
    #[test]
    fn forwarded_value_inserts_the_value() {
        let mut req = Request::builder()
            .header("x-forwarded-for", "1.2.3.4, ::1")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        if let Some(value) = forwarded_value(&Scan::of(req.headers())) {
            req.headers_mut().insert(FORWARDED, value);
        }
        assert_eq!(
            req.headers()["forwarded"],
            "for=1.2.3.4;proto=https, for=\"[::1]\""
        );
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
