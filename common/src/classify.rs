//! Request classification predicates (queue-proxy §3.2). Header names are matched
//! case-insensitively and only the first value counts.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::header_scan::{Present, Scan};

use crate::headers::{
    ACTIVATOR_PROBE_UA_PREFIX, AUTOSCALING_PROBE_UA_PREFIX, KUBE_PROBE_UA_PREFIX, K_KUBELET_PROBE,
    K_PROXY_REQUEST, PROBE_NETWORK, PROXY_REQUEST_ACTIVATOR,
};

/// The first values of the headers that classify a request, found in one pass over the map.
///
/// Each `HeaderMap` lookup of a custom name (`k-kubelet-probe`, `k-network-probe`) hashes the
/// name byte by byte, absent or not, and a request asks several of these questions on its way
/// (metrics, request log, spans, drain): one pass over the few names a request carries answers
/// them all. Values are compared as bytes, as Go compares header strings (`strings.HasPrefix`,
/// `==`): a value with non-ASCII bytes is not treated as absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeHeaders<'a> {
    user_agent: Option<&'a HeaderValue>,
    kubelet_probe: Option<&'a HeaderValue>,
    network_probe: Option<&'a HeaderValue>,
}

impl<'a> ProbeHeaders<'a> {
    /// Scans `headers` once.
    #[inline]
    pub fn of(headers: &'a HeaderMap) -> Self {
        Self::scan_with(headers, |_, _| {})
    }

    /// Scans `headers` once (each name once, with its first value), handing every other name
    /// and its first value to `other` (e.g. to pick up more first values in the same pass).
    #[inline]
    pub fn scan_with(
        headers: &'a HeaderMap,
        mut other: impl FnMut(&'a HeaderName, &'a HeaderValue),
    ) -> Self {
        let mut found = ProbeHeaders::default();
        for (name, value) in headers.first_values() {
            // One word comparison per name (`Present::of`), where comparing the names compared
            // the bytes of every 15-byte name (`x-forwarded-for`, `k-proxy-request`, ...)
            // twice.
            let bit = Present::of(name);
            let slot = if bit == Present::USER_AGENT {
                &mut found.user_agent
            } else if bit == Present::K_KUBELET_PROBE {
                &mut found.kubelet_probe
            } else if bit == Present::K_NETWORK_PROBE {
                &mut found.network_probe
            } else {
                other(name, value);
                continue;
            };
            *slot = Some(value);
        }
        found
    }

    /// The classifying headers of a map already scanned.
    #[inline]
    pub fn from_scan(scan: &Scan<'a>) -> Self {
        ProbeHeaders {
            user_agent: scan.first(Present::USER_AGENT),
            kubelet_probe: scan.first(Present::K_KUBELET_PROBE),
            network_probe: scan.first(Present::K_NETWORK_PROBE),
        }
    }

    fn user_agent(&self) -> &'a [u8] {
        self.user_agent.map_or(&b""[..], HeaderValue::as_bytes)
    }

    /// `User-Agent` starts with `kube-probe/`.
    #[inline]
    pub fn is_kubelet_user_agent(&self) -> bool {
        self.user_agent()
            .starts_with(KUBE_PROBE_UA_PREFIX.as_bytes())
    }

    /// A health check: kubelet, activator or autoscaler probe user agent.
    #[inline]
    pub fn is_health_check(&self) -> bool {
        let ua = self.user_agent();
        ua.starts_with(KUBE_PROBE_UA_PREFIX.as_bytes())
            || ua.starts_with(ACTIVATOR_PROBE_UA_PREFIX.as_bytes())
            || ua.starts_with(AUTOSCALING_PROBE_UA_PREFIX.as_bytes())
    }

    /// An ingress network probe: `K-Network-Probe: probe`.
    #[inline]
    pub fn is_network_probe(&self) -> bool {
        self.network_probe
            .is_some_and(|v| v.as_bytes() == PROBE_NETWORK.as_bytes())
    }

    /// Kubelet UA, or a non-empty `K-Kubelet-Probe`.
    #[inline]
    pub fn is_kubelet_probe(&self) -> bool {
        self.is_kubelet_user_agent() || self.kubelet_probe.is_some_and(|v| !v.is_empty())
    }

    /// Any probe: a kubelet probe or any non-empty `K-Network-Probe`.
    #[inline]
    pub fn is_probe(&self) -> bool {
        self.is_kubelet_probe() || self.network_probe.is_some_and(|v| !v.is_empty())
    }
}

/// Only `User-Agent` looked up: what the user-agent questions need.
#[inline]
fn user_agent_only(headers: &HeaderMap) -> ProbeHeaders<'_> {
    ProbeHeaders {
        user_agent: headers.get(http::header::USER_AGENT),
        ..ProbeHeaders::default()
    }
}

/// `User-Agent` starts with `kube-probe/`.
#[inline]
pub fn is_kubelet_user_agent(headers: &HeaderMap) -> bool {
    user_agent_only(headers).is_kubelet_user_agent()
}

/// A health check: kubelet, activator or autoscaler probe user agent.
#[inline]
pub fn is_health_check(headers: &HeaderMap) -> bool {
    user_agent_only(headers).is_health_check()
}

/// An ingress network probe: `K-Network-Probe: probe`.
#[inline]
pub fn is_network_probe(headers: &HeaderMap) -> bool {
    ProbeHeaders::of(headers).is_network_probe()
}

/// Kubelet UA, or a non-empty `K-Kubelet-Probe`.
#[inline]
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    ProbeHeaders::of(headers).is_kubelet_probe()
}

/// [`is_kubelet_probe`] for a caller that already scanned the names (`present`): only the
/// names that are there are looked up.
#[inline]
pub fn is_kubelet_probe_scanned(headers: &HeaderMap, present: Present) -> bool {
    let lookup =
        |bit: Present, name: &HeaderName| present.any(bit).then(|| headers.get(name)).flatten();
    ProbeHeaders {
        user_agent: lookup(Present::USER_AGENT, &http::header::USER_AGENT),
        kubelet_probe: lookup(Present::K_KUBELET_PROBE, &K_KUBELET_PROBE),
        network_probe: None,
    }
    .is_kubelet_probe()
}

/// Any probe: a kubelet probe or any non-empty `K-Network-Probe`.
#[inline]
pub fn is_probe(headers: &HeaderMap) -> bool {
    ProbeHeaders::of(headers).is_probe()
}

/// Proxied by the activator: `K-Proxy-Request: activator` (exact, case-sensitive).
#[inline]
pub fn is_proxied(headers: &HeaderMap) -> bool {
    is_proxied_value(headers.get(&K_PROXY_REQUEST))
}

/// [`is_proxied`] of the first `K-Proxy-Request` value (e.g. from a [`Scan`]).
#[inline]
pub fn is_proxied_value(value: Option<&HeaderValue>) -> bool {
    value.is_some_and(|v| v.as_bytes() == PROXY_REQUEST_ACTIVATOR.as_bytes())
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

    /// The one-pass classification answers as the lookups would, for the first value of each
    /// name, and compares bytes as Go compares header strings: a kubelet user agent with
    /// non-ASCII bytes after the prefix is still a kubelet probe.
    #[test]
    fn one_pass_matches_first_values_and_compares_bytes() {
        let mut map = h(&[
            ("accept", "*/*"),
            ("user-agent", "curl/8"),
            ("user-agent", "kube-probe/1.29"),
            ("k-network-probe", "probe"),
            ("k-network-probe", ""),
        ]);
        let found = ProbeHeaders::of(&map);
        assert!(!found.is_health_check() && !found.is_kubelet_probe());
        assert!(found.is_network_probe() && found.is_probe());

        map.insert(
            "user-agent",
            HeaderValue::from_bytes(b"kube-probe/1.29 \xff").unwrap(),
        );
        assert!(ProbeHeaders::of(&map).is_kubelet_probe());
        assert!(is_kubelet_probe_scanned(&map, Present::scan(&map)));
        assert!(!is_kubelet_probe_scanned(&map, Present::default()));
        assert!(is_health_check(&map) && is_kubelet_user_agent(&map));

        let mut others = Vec::new();
        let map = h(&[("k-kubelet-probe", "1"), ("x-a", "1"), ("x-a", "2")]);
        let found = ProbeHeaders::scan_with(&map, |name, value| {
            others.push((name.as_str().to_owned(), value.clone()))
        });
        assert!(found.is_kubelet_probe() && !found.is_health_check());
        assert_eq!(
            others,
            [("x-a".to_owned(), HeaderValue::from_static("1"))],
            "every other name is handed on with its first value"
        );
    }
}
