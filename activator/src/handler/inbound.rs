//! One pass over an inbound request's headers: the values the probe and identification stages
//! read, and which of the names the proxying acts on are there ([`Present`]). Each of the ~8
//! lookups it replaces would hash the header name (custom names such as
//! `knative-serving-namespace` cost about a hundred instructions each to hash).

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue};
use knative_common::header_scan::Present;
use knative_common::headers::KUBE_PROBE_UA_PREFIX;

/// The first value of each header the probe and identification stages read (what
/// `HeaderMap::get` gives), and the tracked names present.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inbound<'a> {
    /// Tracked names present (see [`Present`]).
    pub present: Present,
    /// `Host`.
    pub host: Option<&'a HeaderValue>,
    /// `User-Agent`.
    pub user_agent: Option<&'a HeaderValue>,
    /// `K-Kubelet-Probe`.
    pub kubelet_probe: Option<&'a HeaderValue>,
    /// `K-Network-Probe`.
    pub network_probe: Option<&'a HeaderValue>,
    /// `K-Network-Hash`.
    pub network_hash: Option<&'a HeaderValue>,
    /// `Knative-Serving-Namespace`.
    pub namespace: Option<&'a HeaderValue>,
    /// `Knative-Serving-Revision`.
    pub revision: Option<&'a HeaderValue>,
    /// Where `Knative-Serving-Namespace` and `Knative-Serving-Revision` stand among the map's
    /// names (`HeaderMap::entry_at`), when present.
    pub revision_at: RevisionAt,
}

/// Where the two `Knative-Serving-*` headers stand among a map's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionAt {
    /// `Knative-Serving-Namespace`.
    pub namespace: Option<NameAt>,
    /// `Knative-Serving-Revision`.
    pub revision: Option<NameAt>,
}

/// Where a name stood among a map's names when it was scanned, and which bytes spelled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAt {
    /// Its index (`HeaderMap::entry_at`).
    pub index: usize,
    /// The address and length of the name's bytes in the map.
    spelling: (usize, usize),
}

impl NameAt {
    /// `name`, found at `index` of a map.
    #[inline]
    pub fn new(index: usize, name: &HeaderName) -> Self {
        let text = name.as_str();
        NameAt {
            index,
            spelling: (text.as_ptr() as usize, text.len()),
        }
    }

    /// Whether `name`, a name of the map scanned (which may have lost names since, but gained
    /// none), is the one found: spelled by the same bytes at the same address. Another name
    /// of the map cannot be, while the one found is in it (two names of a map differ and none
    /// is empty); if it was removed, the names left were all in the map with it. No comparison
    /// of the bytes.
    #[inline]
    pub fn is(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        (text.as_ptr() as usize, text.len()) == self.spelling
    }
}

impl<'a> Inbound<'a> {
    /// Scans `headers` once.
    #[inline]
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut inbound = Inbound::default();
        // One item per name, with its first value.
        for (index, (name, value)) in headers.first_values().enumerate() {
            if *name == HOST {
                inbound.host = Some(value);
                continue;
            }
            let bit = Present::of(name);
            if bit.is_empty() {
                continue;
            }
            inbound.present = inbound.present | bit;
            let slot = match bit {
                Present::USER_AGENT => &mut inbound.user_agent,
                Present::K_KUBELET_PROBE => &mut inbound.kubelet_probe,
                Present::K_NETWORK_PROBE => &mut inbound.network_probe,
                Present::K_NETWORK_HASH => &mut inbound.network_hash,
                Present::KNATIVE_SERVING_NAMESPACE => {
                    inbound.revision_at.namespace = Some(NameAt::new(index, name));
                    &mut inbound.namespace
                }
                Present::KNATIVE_SERVING_REVISION => {
                    inbound.revision_at.revision = Some(NameAt::new(index, name));
                    &mut inbound.revision
                }
                _ => continue,
            };
            *slot = Some(value);
        }
        inbound
    }

    /// `knative_common::classify::is_kubelet_probe`: a `kube-probe/` user agent or a non-empty
    /// `K-Kubelet-Probe`.
    #[inline]
    pub fn is_kubelet_probe(&self) -> bool {
        self.user_agent
            .is_some_and(|v| v.as_bytes().starts_with(KUBE_PROBE_UA_PREFIX.as_bytes()))
            || self.kubelet_probe.is_some_and(|v| !v.is_empty())
    }
}

/// A header value as text, or `""` when absent or not visible ASCII (as
/// `knative_common::headers::first_str`).
#[inline]
pub fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use knative_common::classify::is_kubelet_probe;
    use knative_common::headers::first_str;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        headers
    }

    /// Every value is what `HeaderMap::get` gives (the first of repeated names), and `present`
    /// is `Present::scan`.
    #[test]
    fn same_as_lookups() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "h"), ("x-other", "1")],
            &[
                ("Knative-Serving-Namespace", "ns"),
                ("knative-serving-revision", "rev"),
                ("knative-serving-namespace", "second"),
                ("host", "a"),
                ("host", "b"),
            ],
            &[
                ("user-agent", "kube-probe/1.29"),
                ("k-kubelet-probe", ""),
                ("k-network-probe", "probe"),
                ("k-network-hash", "abc"),
                ("k-network-hash", "def"),
                ("connection", "close"),
                ("k-original-host", "o"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            &[
                ("user-agent", "Knative-Activator-Probe"),
                ("k-kubelet-probe", "1"),
            ],
            &[("user-agent", "kube-probe/\u{e9}")],
        ];
        for pairs in cases {
            let headers = map(pairs);
            let inbound = Inbound::scan(&headers);
            assert_eq!(inbound.present, Present::scan(&headers), "{pairs:?}");
            let expect = |name: &str| headers.get(name);
            assert_eq!(inbound.host, expect("host"), "{pairs:?}");
            assert_eq!(inbound.user_agent, expect("user-agent"), "{pairs:?}");
            assert_eq!(
                inbound.kubelet_probe,
                expect("k-kubelet-probe"),
                "{pairs:?}"
            );
            assert_eq!(
                inbound.network_probe,
                expect("k-network-probe"),
                "{pairs:?}"
            );
            assert_eq!(inbound.network_hash, expect("k-network-hash"), "{pairs:?}");
            assert_eq!(
                inbound.namespace,
                expect("knative-serving-namespace"),
                "{pairs:?}"
            );
            assert_eq!(
                inbound.revision,
                expect("knative-serving-revision"),
                "{pairs:?}"
            );
            assert_eq!(
                inbound.is_kubelet_probe(),
                is_kubelet_probe(&headers),
                "{pairs:?}"
            );
            assert_eq!(
                text(inbound.user_agent),
                first_str(&headers, &http::header::USER_AGENT)
            );
            let position = |name: &str| headers.keys().position(|k| k == name);
            let at = |found: Option<NameAt>| {
                found.map(|at| {
                    let name = headers.keys().nth(at.index).unwrap();
                    assert!(at.is(name), "{pairs:?}");
                    assert!(
                        headers.keys().filter(|k| at.is(k)).count() == 1,
                        "{pairs:?}"
                    );
                    at.index
                })
            };
            assert_eq!(
                at(inbound.revision_at.namespace),
                position("knative-serving-namespace"),
                "{pairs:?}"
            );
            assert_eq!(
                at(inbound.revision_at.revision),
                position("knative-serving-revision"),
                "{pairs:?}"
            );
        }
    }
}
