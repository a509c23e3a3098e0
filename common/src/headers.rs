//! Every header name and well-known value the Knative data plane reads or writes.
//!
//! Names are lower-case `HeaderName` constants so lookups never allocate.

use http::header::HeaderName;

/// Set by the activator on every proxied request; value `activator` marks the request as proxied.
pub const K_PROXY_REQUEST: HeaderName = HeaderName::from_static("k-proxy-request");
/// Probe kind: `queue` (health check), `probe` (ingress network probe), `activator`, …
pub const K_NETWORK_PROBE: HeaderName = HeaderName::from_static("k-network-probe");
/// Hash echoed back by network probe answers.
pub const K_NETWORK_HASH: HeaderName = HeaderName::from_static("k-network-hash");
/// Marks a kubelet probe that must bypass stats and the breaker.
pub const K_KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");
/// Original Host moved aside by the activator; restored as Host by the queue-proxy.
pub const K_ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
/// Passthrough load-balancing marker (activator, mesh mode).
pub const K_PASSTHROUGH_LB: HeaderName = HeaderName::from_static("k-passthrough-lb");
/// Revision name added by the ingress.
pub const KNATIVE_SERVING_REVISION: HeaderName =
    HeaderName::from_static("knative-serving-revision");
/// Revision namespace added by the ingress.
pub const KNATIVE_SERVING_NAMESPACE: HeaderName =
    HeaderName::from_static("knative-serving-namespace");
/// Route tag (route-tag metric label).
pub const KNATIVE_SERVING_TAG: HeaderName = HeaderName::from_static("knative-serving-tag");
/// Default-route marker (route-tag metric label).
pub const KNATIVE_SERVING_DEFAULT_ROUTE: HeaderName =
    HeaderName::from_static("knative-serving-default-route");

/// RFC 7239 `Forwarded`.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// De-facto `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// De-facto `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// De-facto `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Added to every Go `http.Error` answer.
pub const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
/// Non-standard hop-by-hop header Go's reverse proxy removes.
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Hop-by-hop header (RFC 7230 §6.1).
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Sent by clients that want an h2c upgrade; never forwarded.
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// `K-Proxy-Request` value set by the activator.
pub const PROXY_REQUEST_ACTIVATOR: &str = "activator";
/// `K-Network-Probe` value of a health check aimed at the queue-proxy.
pub const PROBE_QUEUE: &str = "queue";
/// `K-Network-Probe` value of an ingress network probe.
pub const PROBE_NETWORK: &str = "probe";
/// `K-Network-Probe` value of a probe aimed at the activator.
pub const PROBE_ACTIVATOR: &str = "activator";

/// User-Agent prefix of the kubelet's probes.
pub const KUBE_PROBE_UA_PREFIX: &str = "kube-probe/";
/// User-Agent prefix of the activator's pod probes.
pub const ACTIVATOR_PROBE_UA_PREFIX: &str = "Knative-Activator-Probe";
/// User-Agent prefix of the autoscaler's probes.
pub const AUTOSCALING_PROBE_UA_PREFIX: &str = "Knative-Autoscaling-Probe";

/// Go's `http.Error` content type.
pub const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";

/// First value of a header as text, or `""` when absent or not visible ASCII.
#[inline]
pub fn first_str<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The names the proxies add to every request, with their `HeaderMap` hash worked out at
/// compile time (`HashedName`, a patch of ours to `http`): inserting one does not hash the
/// name (a few dozen instructions for each of these). Constants, used by value (moved into
/// the map, not cloned).
pub mod hashed {
    use http::header::HashedName;

    /// `X-Forwarded-For` (see [`super::X_FORWARDED_FOR`]).
    pub const X_FORWARDED_FOR: HashedName = HashedName::from_static("x-forwarded-for");
    /// `K-Original-Host` (see [`super::K_ORIGINAL_HOST`]).
    pub const K_ORIGINAL_HOST: HashedName = HashedName::from_static("k-original-host");
    /// `K-Proxy-Request` (see [`super::K_PROXY_REQUEST`]).
    pub const K_PROXY_REQUEST: HashedName = HashedName::from_static("k-proxy-request");

    #[cfg(test)]
    mod tests {
        #[test]
        fn same_names() {
            assert_eq!(super::X_FORWARDED_FOR.name(), super::super::X_FORWARDED_FOR);
            assert_eq!(super::K_ORIGINAL_HOST.name(), super::super::K_ORIGINAL_HOST);
            assert_eq!(super::K_PROXY_REQUEST.name(), super::super::K_PROXY_REQUEST);
        }
    }
}
