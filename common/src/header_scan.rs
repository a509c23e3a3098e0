//! Which of the headers the data plane acts on a header map holds, found in one pass over its
//! names.
//!
//! A `HeaderMap` lookup hashes the name; for the custom names Knative uses (`k-network-probe`,
//! `knative-serving-revision`, `x-forwarded-for`, …) that costs more than comparing a name of the
//! map against a short list, and a typical request carries far fewer headers than the ~40 lookups
//! the request path would otherwise make. The request path scans once per stage and looks up (or
//! removes) only what the scan found.

use http::header::{HeaderName, HOST};
use http::{HeaderMap, HeaderValue};

/// A set of the header names below; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u32);

macro_rules! known_headers {
    ($($(#[$doc:meta])* $constant:ident = $bit:literal, $name:literal;)*) => {
        impl Present {
            $($(#[$doc])* pub const $constant: Present = Present(1 << $bit);)*
        }

        /// The bit of `name`, or 0 for a name not tracked here.
        #[inline]
        fn bit_of(name: &HeaderName) -> u32 {
            match name.as_str() {
                $($name => 1 << $bit,)*
                _ => 0,
            }
        }
    };
}

known_headers! {
    /// `Connection`.
    CONNECTION = 0, "connection";
    /// `Proxy-Connection`.
    PROXY_CONNECTION = 1, "proxy-connection";
    /// `Keep-Alive`.
    KEEP_ALIVE = 2, "keep-alive";
    /// `Proxy-Authenticate`.
    PROXY_AUTHENTICATE = 3, "proxy-authenticate";
    /// `Proxy-Authorization`.
    PROXY_AUTHORIZATION = 4, "proxy-authorization";
    /// `TE`.
    TE = 5, "te";
    /// `Transfer-Encoding`.
    TRANSFER_ENCODING = 6, "transfer-encoding";
    /// `Upgrade`.
    UPGRADE = 7, "upgrade";
    /// `HTTP2-Settings`.
    HTTP2_SETTINGS = 8, "http2-settings";
    /// `Knative-Serving-Revision`.
    KNATIVE_SERVING_REVISION = 9, "knative-serving-revision";
    /// `Knative-Serving-Namespace`.
    KNATIVE_SERVING_NAMESPACE = 10, "knative-serving-namespace";
    /// `Forwarded`.
    FORWARDED = 11, "forwarded";
    /// `X-Forwarded-For`.
    X_FORWARDED_FOR = 12, "x-forwarded-for";
    /// `X-Forwarded-Proto`.
    X_FORWARDED_PROTO = 13, "x-forwarded-proto";
    /// `X-Forwarded-Host`.
    X_FORWARDED_HOST = 14, "x-forwarded-host";
    /// `User-Agent`.
    USER_AGENT = 15, "user-agent";
    /// `K-Network-Probe`.
    K_NETWORK_PROBE = 16, "k-network-probe";
    /// `K-Kubelet-Probe`.
    K_KUBELET_PROBE = 17, "k-kubelet-probe";
    /// `K-Proxy-Request`.
    K_PROXY_REQUEST = 18, "k-proxy-request";
    /// `K-Original-Host`.
    K_ORIGINAL_HOST = 19, "k-original-host";
    /// `K-Network-Hash`.
    K_NETWORK_HASH = 20, "k-network-hash";
}

impl Present {
    /// The hop-by-hop headers removed in both directions.
    pub const HOP_BY_HOP: Present = Present(
        Present::CONNECTION.0
            | Present::PROXY_CONNECTION.0
            | Present::KEEP_ALIVE.0
            | Present::PROXY_AUTHENTICATE.0
            | Present::PROXY_AUTHORIZATION.0
            | Present::TE.0
            | Present::TRANSFER_ENCODING.0
            | Present::UPGRADE.0,
    );
    /// The headers the forwarded shim reads.
    pub const FORWARDED_FAMILY: Present = Present(
        Present::FORWARDED.0
            | Present::X_FORWARDED_FOR.0
            | Present::X_FORWARDED_PROTO.0
            | Present::X_FORWARDED_HOST.0,
    );

    /// The tracked names `headers` holds.
    #[inline]
    pub fn scan(headers: &HeaderMap) -> Present {
        Present(headers.keys().fold(0, |bits, name| bits | bit_of(name)))
    }

    /// The bit of one name (empty for a name not tracked here), for a caller that walks the
    /// map itself (e.g. to pick up values in the same pass).
    #[inline]
    pub fn of(name: &HeaderName) -> Present {
        Present(bit_of(name))
    }

    /// Whether any name of `names` is present.
    #[inline]
    pub fn any(self, names: Present) -> bool {
        self.0 & names.0 != 0
    }

    /// Whether no tracked name is present.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// These names but those of `names` (e.g. once the caller removed them).
    #[inline]
    pub const fn without(self, names: Present) -> Present {
        Present(self.0 & !names.0)
    }

    /// `self | names`, usable in a `const`.
    #[inline]
    pub const fn union(self, names: Present) -> Present {
        Present(self.0 | names.0)
    }
}

impl std::ops::BitOr for Present {
    type Output = Present;
    fn bitor(self, other: Present) -> Present {
        self.union(other)
    }
}

/// `headers.contains_key(HOST)`, answered without hashing when `Host` is the first name: user
/// agents send it first (RFC 9110 §7.2), and a parsed map keeps its names in arrival order.
#[inline]
pub fn has_host(headers: &HeaderMap) -> bool {
    headers.keys().next() == Some(&HOST) || headers.contains_key(HOST)
}

/// `headers.insert(HOST, value)` (the `Host` values replaced where the first one stands, the
/// first returned), without hashing when `Host` is the first name and has one value.
#[inline]
pub fn replace_host(headers: &mut HeaderMap, value: HeaderValue) -> Option<HeaderValue> {
    let mut fields = headers.iter_mut();
    if let Some((name, first)) = fields.next() {
        if *name == HOST && fields.next().is_none_or(|(next, _)| *next != HOST) {
            return Some(std::mem::replace(first, value));
        }
    }
    headers.insert(HOST, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_exactly_the_tracked_names_present() {
        let mut headers = HeaderMap::new();
        assert!(Present::scan(&headers).is_empty());
        headers.insert("x-other", HeaderValue::from_static("1"));
        headers.insert(http::header::HOST, HeaderValue::from_static("h"));
        assert!(Present::scan(&headers).is_empty());
        headers.append("TE", HeaderValue::from_static("trailers"));
        headers.insert("K-Network-Probe", HeaderValue::from_static("queue"));
        let present = Present::scan(&headers);
        assert!(present.any(Present::TE));
        assert!(present.any(Present::HOP_BY_HOP));
        assert!(present.any(Present::K_NETWORK_PROBE));
        assert!(!present.any(Present::CONNECTION | Present::FORWARDED_FAMILY));
        let rest = present.without(Present::TE | Present::CONNECTION);
        assert!(!rest.any(Present::TE) && rest.any(Present::K_NETWORK_PROBE));
    }

    /// `has_host` and `replace_host` agree with `contains_key` and `insert` (value returned,
    /// names and values in the same order after) wherever `Host` stands, however many times.
    #[test]
    fn host_shortcuts_agree_with_lookups() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "a")],
            &[("host", "a"), ("accept", "*/*")],
            &[("host", "a"), ("host", "b"), ("accept", "*/*")],
            &[("host", "a"), ("accept", "*/*"), ("host", "b")],
            &[("accept", "*/*"), ("host", "a")],
            &[("accept", "*/*"), ("x-a", "1"), ("host", "a"), ("x-b", "2")],
            &[("accept", "*/*"), ("x-host", "a")],
            &[("x-a", "1"), ("x-a", "2"), ("host", "a")],
        ];
        for pairs in cases {
            let map = || {
                let mut headers = HeaderMap::new();
                for (name, value) in *pairs {
                    headers.append(*name, HeaderValue::from_static(value));
                }
                headers
            };
            let (mut by_insert, mut by_replace) = (map(), map());
            assert_eq!(
                has_host(&by_replace),
                by_insert.contains_key(HOST),
                "{pairs:?}"
            );
            let new = HeaderValue::from_static("10.0.0.1:8012");
            assert_eq!(
                replace_host(&mut by_replace, new.clone()),
                by_insert.insert(HOST, new),
                "{pairs:?}"
            );
            let fields = |h: &HeaderMap| {
                h.iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(fields(&by_replace), fields(&by_insert), "{pairs:?}");
        }
    }

    #[test]
    fn every_tracked_name_has_its_own_bit() {
        let names = [
            "connection",
            "proxy-connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "knative-serving-revision",
            "knative-serving-namespace",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "user-agent",
            "k-network-probe",
            "k-kubelet-probe",
            "k-proxy-request",
            "k-original-host",
            "k-network-hash",
        ];
        let mut seen = 0u32;
        for name in names {
            let bit = bit_of(&HeaderName::from_static(name));
            assert_eq!(bit.count_ones(), 1, "{name}");
            assert_eq!(seen & bit, 0, "{name} shares a bit");
            seen |= bit;
        }
        assert_eq!(seen.count_ones() as usize, names.len());
    }
}
