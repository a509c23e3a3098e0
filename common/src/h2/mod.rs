//! HTTP/2 driven with the `h2` crate directly rather than through hyper, so that 1xx
//! informational responses can be relayed on HTTP/2 (hyper keeps h2's `send_informational`
//! private): the server side of h2c and TLS h2 connections ([`server`]), the client side of
//! upstream HTTP/2 connections ([`client`]), the body type the
//! request path receives from either protocol ([`body`]), the copy of a body onto a stream
//! (`pipe`), and the cached `Date` value (`date`).

pub mod body;
pub mod client;
mod date;
mod pipe;
pub mod server;

pub use body::IncomingBody;

/// The connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2), removed from messages that
/// go out on HTTP/2 as hyper removes them, along with the fields `Connection` names
/// (`request`: a request, which keeps `TE: trailers`).
pub(crate) fn strip_connection_headers(headers: &mut http::HeaderMap, request: bool) {
    // Usually there is none: one pass over the names, no hashing.
    if headers.keys().any(is_connection_specific) {
        remove_connection_headers(headers, request);
    }
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");

fn is_connection_specific(name: &http::HeaderName) -> bool {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .contains(name)
}

#[cold]
#[inline(never)]
fn remove_connection_headers(headers: &mut http::HeaderMap, request: bool) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    if let http::header::Entry::Occupied(entry) = headers.entry(CONNECTION) {
        let (_, values) = entry.remove_entry_mult();
        let values: Vec<_> = values.collect();
        for value in values {
            if let Ok(text) = value.to_str() {
                for name in text.split(',') {
                    headers.remove(name.trim());
                }
            }
        }
    }
    for name in [TRANSFER_ENCODING, UPGRADE, KEEP_ALIVE, PROXY_CONNECTION] {
        headers.remove(name);
    }
    // A request may say `TE: trailers` (gRPC does), nothing else; a response no `TE` at all.
    if !request || headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn connection_specific_fields_are_removed() {
        let mut headers = map(&[
            ("connection", "x-a"),
            ("connection", "x-b, x-c"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("x-d", "4"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "foo"),
            ("te", "trailers"),
        ]);
        super::strip_connection_headers(&mut headers, true);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-d"], "a request keeps TE: trailers");
        super::strip_connection_headers(&mut headers, false);
        assert_eq!(headers.len(), 1, "a response has no TE");
        let mut headers = map(&[("te", "gzip")]);
        super::strip_connection_headers(&mut headers, true);
        assert!(headers.is_empty());
    }
}
