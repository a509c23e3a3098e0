//! Header and URI changes between the inbound request and the upstream one (queue-proxy §3.9,
//! activator §2.13), and hop-by-hop removal on responses.

use http::header::Entry;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};

use crate::header_scan::{self, Present};
use crate::headers::{
    hashed, HTTP2_SETTINGS, KEEP_ALIVE, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION,
    K_ORIGINAL_HOST, PROXY_CONNECTION, X_FORWARDED_FOR,
};

/// Hop-by-hop headers removed in both directions (Go's list, minus `Trailer`, which we keep so
/// that HTTP/1.1 trailers — announced by it — keep flowing).
const HOP_BY_HOP: [(Present, HeaderName); 8] = [
    (Present::CONNECTION, CONNECTION),
    (Present::PROXY_CONNECTION, PROXY_CONNECTION),
    (Present::KEEP_ALIVE, KEEP_ALIVE),
    (Present::PROXY_AUTHENTICATE, PROXY_AUTHENTICATE),
    (Present::PROXY_AUTHORIZATION, PROXY_AUTHORIZATION),
    (Present::TE, TE),
    (Present::TRANSFER_ENCODING, TRANSFER_ENCODING),
    (Present::UPGRADE, UPGRADE),
];

/// An HTTP/1.1 protocol switch the client asked for (`Connection: upgrade` + `Upgrade: X`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The `Upgrade` value, e.g. `websocket`.
    pub protocol: HeaderValue,
}

/// The client's address as it goes into `X-Forwarded-For`, computed once per connection.
#[derive(Clone, Debug)]
pub struct PeerIp(HeaderValue);

impl PeerIp {
    /// From the connection's remote address (IPv6 without brackets, as Go writes it).
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let ip = match addr.ip() {
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => std::net::IpAddr::V4(v4),
                None => std::net::IpAddr::V6(v6),
            },
            v4 => v4,
        };
        PeerIp(HeaderValue::from_str(&ip.to_string()).expect("an IP is a valid header value"))
    }

    /// The IP text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes hop-by-hop headers and every header named in `Connection`; `present` is the map's
/// scan, so only headers that are there are looked up.
fn strip_hop_by_hop(headers: &mut HeaderMap, present: Present) {
    if !present.any(Present::HOP_BY_HOP) {
        return;
    }
    if present.any(Present::CONNECTION) {
        if let Some(connection) = headers.get(CONNECTION) {
            if let Ok(named) = connection.to_str() {
                // Collect first: we cannot remove while borrowing.
                let named: Vec<HeaderName> = named
                    .split(',')
                    .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                    .collect();
                for name in named {
                    headers.remove(name);
                }
            }
        }
    }
    for (bit, name) in HOP_BY_HOP {
        if present.any(bit) {
            headers.remove(name);
        }
    }
}

/// Prepares the inbound request's headers for the upstream: hop-by-hop removal (re-adding
/// `Te: trailers` and the upgrade pair), removal of the revision headers, `X-Forwarded-For`.
/// Returns the protocol switch the client asked for, if any. An `Upgrade: h2c` request is served
/// as plain HTTP/1.1 (the upgrade is dropped, never forwarded).
pub fn prepare_request<B>(request: &mut Request<B>, peer: &PeerIp) -> Option<UpgradeRequest> {
    let (present, forwarded_for_at) =
        Present::scan_finding(request.headers(), Present::X_FORWARDED_FOR);
    prepare(request, peer, present, forwarded_for_at)
}

/// [`prepare_request`] for a caller that already scanned the headers: `present` must be
/// [`Present::scan`] of them as they are now (a bit for a name no longer there only costs a
/// lookup; a missing bit leaves that header in).
pub fn prepare_request_scanned<B>(
    request: &mut Request<B>,
    peer: &PeerIp,
    present: Present,
) -> Option<UpgradeRequest> {
    prepare(request, peer, present, None)
}

/// [`prepare_request_scanned`]; `forwarded_for_at`: where `X-Forwarded-For` stood among the
/// names when they were scanned, if known (see [`header_scan::entry_at`]).
#[inline]
fn prepare<B>(
    request: &mut Request<B>,
    peer: &PeerIp,
    present: Present,
    forwarded_for_at: Option<usize>,
) -> Option<UpgradeRequest> {
    let headers = request.headers_mut();
    if present.is_empty() {
        // The common case: nothing to remove, and no X-Forwarded-For to extend.
        headers.insert(hashed::X_FORWARDED_FOR, peer.0.clone());
        return None;
    }
    let wants_trailers =
        present.any(Present::TE) && headers.get_all(TE).iter().any(|v| has_token(v, "trailers"));
    let upgrade = if present.any(Present::CONNECTION) && present.any(Present::UPGRADE) {
        match (headers.get(CONNECTION), headers.get(UPGRADE)) {
            (Some(c), Some(u))
                if has_token(c, "upgrade") && !u.as_bytes().eq_ignore_ascii_case(b"h2c") =>
            {
                Some(UpgradeRequest {
                    protocol: u.clone(),
                })
            }
            _ => None,
        }
    } else {
        None
    };
    strip_hop_by_hop(headers, present);
    if present.any(Present::HTTP2_SETTINGS) {
        headers.remove(HTTP2_SETTINGS);
    }
    if wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = &upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, u.protocol.clone());
    }
    if present.any(Present::KNATIVE_SERVING_REVISION) {
        headers.remove(KNATIVE_SERVING_REVISION);
    }
    if present.any(Present::KNATIVE_SERVING_NAMESPACE) {
        headers.remove(KNATIVE_SERVING_NAMESPACE);
    }
    if present.any(Present::X_FORWARDED_FOR) {
        append_forwarded_for(headers, peer, forwarded_for_at);
    } else {
        headers.insert(hashed::X_FORWARDED_FOR, peer.0.clone());
    }
    upgrade
}

/// The prior `X-Forwarded-For` values joined with the peer's address into one value, in the
/// first one's place (one lookup of the name for reading and replacing them, by position when
/// `at` is where the scan found it).
fn append_forwarded_for(headers: &mut HeaderMap, peer: &PeerIp, at: Option<usize>) {
    let mut prior = match header_scan::entry_at(headers, at, &X_FORWARDED_FOR) {
        Entry::Occupied(prior) => prior,
        Entry::Vacant(vacant) => {
            vacant.insert(peer.0.clone());
            return;
        }
    };
    // Joined without checking the bytes again (`join_list`, a patch of ours: valid values and
    // `", "` make a valid value).
    let joined = HeaderValue::join_list(prior.iter(), &peer.0);
    prior.insert(joined);
}

/// Queue-proxy §3.8 step 4: a non-empty `K-Original-Host` becomes the upstream authority, and both
/// it and the old `Host` header are dropped (HTTP/2: the authority lives in the URI). `index`:
/// where the caller's scan found `K-Original-Host` among the names
/// ([`crate::header_scan::Scan::index`]), to remove it by position; `None` looks it up.
pub fn restore_original_host_at<B>(request: &mut Request<B>, index: Option<usize>) {
    let Some(original) = header_scan::remove_at(request.headers_mut(), index, &K_ORIGINAL_HOST)
    else {
        return;
    };
    if original.is_empty() {
        return;
    }
    if request.version() == Version::HTTP_2 {
        request.headers_mut().remove(HOST);
        if let Ok(authority) = Authority::try_from(original.as_bytes()) {
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.authority = Some(authority);
            parts.scheme.get_or_insert(Scheme::HTTP);
            parts
                .path_and_query
                .get_or_insert(PathAndQuery::from_static("/"));
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    } else {
        crate::header_scan::replace_host(request.headers_mut(), original);
    }
}

/// Shapes the URI for an HTTP/1.1 upstream: origin-form (`/path?query`, raw query untouched),
/// keeping the authority of an absolute-form request as `Host`.
pub fn to_origin_form<B>(request: &mut Request<B>) {
    if request.uri().authority().is_none() {
        return;
    }
    let uri = std::mem::take(request.uri_mut());
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(HOST, v);
            }
        }
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(pq);
}

/// Shapes the URI for an h2c upstream: `http://<authority><path?query>`, the authority taken from
/// the URI, else the `Host` header, else `fallback` (the upstream address, as Go's proxy does for a
/// request that names no host).
pub fn to_h2c_form<B>(
    request: &mut Request<B>,
    fallback: &HeaderValue,
) -> Result<(), &'static str> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    if parts.authority.is_none() {
        let host = request.headers().get(HOST).unwrap_or(fallback);
        parts.authority =
            Some(Authority::try_from(host.as_bytes()).map_err(|_| "invalid Host header")?);
    }
    request.headers_mut().remove(HOST);
    parts.scheme = Some(Scheme::HTTP);
    parts
        .path_and_query
        .get_or_insert(PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| "invalid request target")?;
    Ok(())
}

/// Removes hop-by-hop headers from an upstream response (a `101` keeps its upgrade pair).
pub fn prepare_response<B>(response: &mut Response<B>) {
    // The client gets our server's protocol version, whatever the app spoke (e.g. HTTP/1.0).
    *response.version_mut() = Version::HTTP_11;
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let present = Present::scan(headers);
    if switching {
        let upgrade = headers.get(UPGRADE).cloned();
        strip_hop_by_hop(headers, present);
        if let Some(u) = upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(UPGRADE, u);
        }
    } else {
        strip_hop_by_hop(headers, present);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerIp {
        PeerIp::new("10.0.0.9:5555".parse().unwrap())
    }

    #[test]
    fn removes_listed_headers_and_keeps_others() {
        let mut req = Request::builder()
            .uri("/")
            .header("connection", "keep-alive, x-drop-me")
            .header("x-drop-me", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "x")
            .header("proxy-authorization", "Basic eA==")
            .header("knative-serving-revision", "r")
            .header("knative-serving-namespace", "n")
            .header("te", "trailers, deflate")
            .header("k-proxy-request", "activator")
            .header("user-agent", "ua")
            .body(())
            .unwrap();
        assert!(prepare_request(&mut req, &peer()).is_none());
        let h = req.headers();
        for gone in [
            "connection",
            "x-drop-me",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "knative-serving-revision",
            "knative-serving-namespace",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["k-proxy-request"], "activator");
        assert_eq!(h["user-agent"], "ua");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }

    #[test]
    fn no_user_agent_is_added() {
        let mut req = Request::builder().uri("/").body(()).unwrap();
        prepare_request(&mut req, &peer());
        assert!(!req.headers().contains_key("user-agent"));
    }

    #[test]
    fn forwarded_for_joins_prior_values() {
        let mut req = Request::builder()
            .uri("/")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
            .body(())
            .unwrap();
        prepare_request(&mut req, &PeerIp::new("[::1]:80".parse().unwrap()));
        assert_eq!(
            req.headers()["x-forwarded-for"],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, ::1"
        );

        // One value, where the first one stood; an empty first value is kept as one.
        let mut req = Request::builder()
            .uri("/")
            .header("x-a", "1")
            .header("x-forwarded-for", "")
            .header("x-b", "2")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        prepare_request(&mut req, &peer());
        let fields: Vec<_> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                ("x-a", "1"),
                ("x-forwarded-for", ", 2.2.2.2, 10.0.0.9"),
                ("x-b", "2")
            ]
        );
    }

    #[test]
    fn websocket_upgrade_is_kept_and_h2c_dropped() {
        let mut ws = Request::builder()
            .uri("/")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let u = prepare_request(&mut ws, &peer()).unwrap();
        assert_eq!(u.protocol, "websocket");
        assert_eq!(ws.headers()["connection"], "Upgrade");
        assert_eq!(ws.headers()["upgrade"], "websocket");

        let mut h2c = Request::builder()
            .uri("/")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(())
            .unwrap();
        assert!(prepare_request(&mut h2c, &peer()).is_none());
        assert!(!h2c.headers().contains_key("upgrade"));
        assert!(!h2c.headers().contains_key("http2-settings"));
    }

    #[test]
    fn original_host_replaces_host() {
        let mut req = Request::builder()
            .uri("/")
            .header("host", "nimporte.pas")
            .header("k-original-host", "a-better-host.com")
            .body(())
            .unwrap();
        restore_original_host_at(&mut req, None);
        assert_eq!(req.headers()["host"], "a-better-host.com");
        assert!(!req.headers().contains_key("k-original-host"));

        let mut h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://nimporte.pas/x?y=1")
            .header("k-original-host", "a-better-host.com")
            .body(())
            .unwrap();
        restore_original_host_at(&mut h2, None);
        assert_eq!(h2.uri().to_string(), "http://a-better-host.com/x?y=1");
    }

    /// By position (the scan's) and by name, the same headers in the same order: the
    /// `X-Forwarded-For` join and the `K-Original-Host` restore, on odd inputs (repeated and
    /// mixed-case names, empty values, a removal before the join).
    #[test]
    fn positions_and_lookups_give_the_same_request() {
        let cases = [
            "host: h | x-forwarded-for: 1.1.1.1",
            "X-Forwarded-For: | connection: x-a | x-a: 1 | knative-serving-revision: r \
             | x-forwarded-for: 2.2.2.2 | k-original-host: o",
            "k-original-host: o | K-Original-Host: p | host: h | x-forwarded-for: 1.1.1.1 | x-b: 2",
            "host: h | user-agent: ua | x-forwarded-for: 127.0.0.1 | k-original-host: \
             | k-proxy-request: activator",
            "te: trailers | x-forwarded-for: 1.1.1.1 | host: h",
        ];
        for case in cases {
            let request = || {
                let mut builder = Request::builder().uri("/");
                for field in case.split(" | ") {
                    let (name, value) = field.split_once(':').unwrap();
                    builder = builder.header(name.trim(), value.trim());
                }
                builder.body(()).unwrap()
            };
            let (mut by_position, mut by_name) = (request(), request());
            let at =
                crate::header_scan::Scan::of(by_position.headers()).index(Present::K_ORIGINAL_HOST);
            restore_original_host_at(&mut by_position, at);
            restore_original_host_at(&mut by_name, None);
            assert!(by_position.headers().iter().eq(by_name.headers()), "{case}");
            prepare_request(&mut by_position, &peer());
            let present = Present::scan(by_name.headers());
            prepare_request_scanned(&mut by_name, &peer(), present);
            assert!(by_position.headers().iter().eq(by_name.headers()), "{case}");
            assert!(by_position.headers().contains_key(X_FORWARDED_FOR));
        }
    }

    #[test]
    fn raw_query_passes_untouched() {
        let mut req = Request::builder()
            .uri("http://h/p?a=1;b=%zz&c")
            .body(())
            .unwrap();
        to_origin_form(&mut req);
        assert_eq!(req.uri().to_string(), "/p?a=1;b=%zz&c");
        assert_eq!(req.headers()["host"], "h");
    }
}
