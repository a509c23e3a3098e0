//! Request classification predicates (queue-proxy §3.2). Header names are matched
//! case-insensitively and only the first value counts.

use http::HeaderMap;

use crate::headers::{
    first_str, ACTIVATOR_PROBE_UA_PREFIX, AUTOSCALING_PROBE_UA_PREFIX, KUBE_PROBE_UA_PREFIX,
    K_KUBELET_PROBE, K_NETWORK_PROBE, K_PROXY_REQUEST, PROBE_NETWORK, PROXY_REQUEST_ACTIVATOR,
};

#[inline]
fn user_agent(headers: &HeaderMap) -> &str {
    first_str(headers, &http::header::USER_AGENT)
}

/// `User-Agent` starts with `kube-probe/`.
#[inline]
pub fn is_kubelet_user_agent(headers: &HeaderMap) -> bool {
    user_agent(headers).starts_with(KUBE_PROBE_UA_PREFIX)
}

/// A health check: kubelet, activator or autoscaler probe user agent.
#[inline]
pub fn is_health_check(headers: &HeaderMap) -> bool {
    let ua = user_agent(headers);
    ua.starts_with(KUBE_PROBE_UA_PREFIX)
        || ua.starts_with(ACTIVATOR_PROBE_UA_PREFIX)
        || ua.starts_with(AUTOSCALING_PROBE_UA_PREFIX)
}

/// An ingress network probe: `K-Network-Probe: probe`.
#[inline]
pub fn is_network_probe(headers: &HeaderMap) -> bool {
    first_str(headers, &K_NETWORK_PROBE) == PROBE_NETWORK
}

/// Kubelet UA, or a non-empty `K-Kubelet-Probe`.
#[inline]
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    is_kubelet_user_agent(headers) || headers.get(&K_KUBELET_PROBE).is_some_and(|v| !v.is_empty())
}

/// Any probe: a kubelet probe or any non-empty `K-Network-Probe`.
#[inline]
pub fn is_probe(headers: &HeaderMap) -> bool {
    is_kubelet_probe(headers) || headers.get(&K_NETWORK_PROBE).is_some_and(|v| !v.is_empty())
}

/// Proxied by the activator: `K-Proxy-Request: activator` (exact, case-sensitive).
#[inline]
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers
        .get(&K_PROXY_REQUEST)
        .is_some_and(|v| v.as_bytes() == PROXY_REQUEST_ACTIVATOR.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn predicates() {
        assert!(is_health_check(&h(&[("user-agent", "kube-probe/1.29")])));
        assert!(is_health_check(&h(&[(
            "user-agent",
            "Knative-Activator-Probe"
        )])));
        assert!(is_health_check(&h(&[(
            "user-agent",
            "Knative-Autoscaling-Probe"
        )])));
        assert!(!is_health_check(&h(&[("k-kubelet-probe", "1")])));
        assert!(is_kubelet_probe(&h(&[("k-kubelet-probe", "1")])));
        assert!(!is_kubelet_probe(&h(&[("k-kubelet-probe", "")])));
        assert!(is_network_probe(&h(&[("k-network-probe", "probe")])));
        assert!(!is_network_probe(&h(&[("k-network-probe", "Probe")])));
        assert!(is_probe(&h(&[("k-network-probe", "anything")])));
        assert!(is_proxied(&h(&[("k-proxy-request", "activator")])));
        assert!(!is_proxied(&h(&[("k-proxy-request", "Activator")])));
        assert!(!is_proxied(&h(&[
            ("k-proxy-request", "x"),
            ("k-proxy-request", "activator")
        ])));
    }
}
