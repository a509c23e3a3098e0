//! Stages 1–3 of the activator chain (spec §2.1–§2.3): kubelet health, ingress network probes and
//! activator probes, answered before any revision lookup.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use knative_common::body::{empty, text_error, text_error_bytes, text_plain, LocalBody};
use knative_common::headers::{K_NETWORK_HASH, PROBE_ACTIVATOR, PROBE_NETWORK};

use super::inbound::{text, Inbound};

/// Why the activator is not healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unhealthy {
    /// A SIGTERM/SIGINT arrived.
    Terminating,
    /// The autoscaler websocket is not connected.
    AutoscalerUnreachable,
}

/// Body when draining.
pub const SIGTERM_BODY: &str = "received SIGTERM from kubelet\n";
/// Body while the autoscaler connection is down.
pub const NOT_CONNECTED_BODY: &str = "connection has not yet been established\n";
/// Body of a network probe without a hash.
pub const MISSING_HASH_BODY: &str =
    "a probe request must contain a non-empty \"K-Network-Hash\" header\n";

/// Answers the request if it is a probe; otherwise strips `K-Network-Hash` and returns `None`.
pub fn answer<B: LocalBody>(
    headers: &mut HeaderMap,
    health: impl FnOnce() -> Result<(), Unhealthy>,
) -> Option<Response<B>> {
    let inbound = Inbound::scan(headers);
    if let Some(response) = respond(&inbound, health) {
        return Some(response);
    }
    if inbound.network_hash.is_some() {
        headers.remove(&K_NETWORK_HASH);
    }
    None
}

/// [`answer`] from a scan of the headers, without the stripping (the caller strips
/// `K-Network-Hash` when the scan saw it and this returns `None`).
#[inline]
pub fn respond<B: LocalBody>(
    inbound: &Inbound<'_>,
    health: impl FnOnce() -> Result<(), Unhealthy>,
) -> Option<Response<B>> {
    if inbound.is_kubelet_probe() {
        return Some(match health() {
            Ok(()) => empty(StatusCode::OK),
            Err(Unhealthy::Terminating) => {
                text_error(StatusCode::INTERNAL_SERVER_ERROR, SIGTERM_BODY)
            }
            Err(Unhealthy::AutoscalerUnreachable) => {
                text_error(StatusCode::INTERNAL_SERVER_ERROR, NOT_CONNECTED_BODY)
            }
        });
    }
    let probe = text(inbound.network_probe);
    if probe.is_empty() {
        return None;
    }
    if probe == PROBE_NETWORK {
        let Some(hash) = inbound.network_hash.filter(|h| !h.is_empty()).cloned() else {
            return Some(text_error(StatusCode::BAD_REQUEST, MISSING_HASH_BODY));
        };
        let mut response = empty(StatusCode::OK);
        response.headers_mut().insert(K_NETWORK_HASH, hash);
        return Some(response);
    }
    if probe == PROBE_ACTIVATOR {
        return Some(text_plain(StatusCode::OK, PROBE_ACTIVATOR));
    }
    let body = format!(
        "unexpected probe header value: \"{}\"\n",
        html_escape(probe)
    );
    Some(text_error_bytes(StatusCode::BAD_REQUEST, Bytes::from(body)))
}

/// Go's `html.EscapeString`: `<`, `>`, `&`, `'` and `"`.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use knative_common::body::ProxyBody;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    async fn run(
        pairs: &[(&'static str, &'static str)],
        health: Result<(), Unhealthy>,
    ) -> Option<(StatusCode, String)> {
        let mut h = headers(pairs);
        let response: Response<ProxyBody> = answer(&mut h, || health)?;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Some((status, String::from_utf8(body.to_vec()).unwrap()))
    }

    /// Spec §11 item 13.
    #[tokio::test]
    async fn kubelet_health() {
        assert_eq!(run(&[("user-agent", "curl")], Ok(())).await, None);
        assert_eq!(
            run(&[("user-agent", "kube-probe/1.29")], Ok(())).await,
            Some((StatusCode::OK, String::new()))
        );
        assert_eq!(
            run(
                &[("user-agent", "kube-probe/1.29")],
                Err(Unhealthy::Terminating)
            )
            .await,
            Some((StatusCode::INTERNAL_SERVER_ERROR, SIGTERM_BODY.into()))
        );
        assert_eq!(
            run(
                &[("k-kubelet-probe", "1")],
                Err(Unhealthy::AutoscalerUnreachable)
            )
            .await,
            Some((StatusCode::INTERNAL_SERVER_ERROR, NOT_CONNECTED_BODY.into()))
        );
    }

    /// Spec §11 item 14 and §2.2.
    #[tokio::test]
    async fn probe_headers() {
        assert_eq!(run(&[], Ok(())).await, None);
        assert_eq!(
            run(&[("k-network-probe", "activator")], Ok(())).await,
            Some((StatusCode::OK, "activator".into()))
        );
        assert_eq!(
            run(&[("k-network-probe", "queue")], Ok(())).await,
            Some((
                StatusCode::BAD_REQUEST,
                "unexpected probe header value: \"queue\"\n".into()
            ))
        );
        assert_eq!(
            run(&[("k-network-probe", "<b>")], Ok(())).await,
            Some((
                StatusCode::BAD_REQUEST,
                "unexpected probe header value: \"&lt;b&gt;\"\n".into()
            ))
        );
        assert_eq!(run(&[("k-network-probe", "")], Ok(())).await, None);
        assert_eq!(
            run(&[("k-network-probe", "probe")], Ok(())).await,
            Some((StatusCode::BAD_REQUEST, MISSING_HASH_BODY.into()))
        );
        let mut h = headers(&[("k-network-probe", "probe"), ("k-network-hash", "abc")]);
        let r: Response<ProxyBody> = answer(&mut h, || Ok(())).unwrap();
        assert_eq!(r.headers()["k-network-hash"], "abc");
        // Not a probe: the hash is stripped before proxying.
        let mut h = headers(&[("k-network-hash", "abc")]);
        assert!(answer::<ProxyBody>(&mut h, || Ok(())).is_none());
        assert!(!h.contains_key("k-network-hash"));
    }
}
