//! The activator's request chain (spec §2): probe answers, revision identification, the
//! concurrency reporter hook, per-revision timeouts, and the activation handler (throttler lease,
//! then the reverse proxy to the chosen pod).

pub mod pools;
pub mod probes;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use knative_common::body::{
    attach_guard, empty, text_error, text_error_bytes, Guarded, LocalBody, ProxyBody,
};
use knative_common::drain::{InFlightCounter, InFlightGuard};
use knative_common::headers::{
    first_str, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION, K_ORIGINAL_HOST,
    K_PROXY_REQUEST,
};
use knative_common::proxy::{bad_gateway, forward, rewrite, PeerIp};
use knative_common::timeout::{TimeoutBody, TimeoutLayer, Timeouts};
use tower_layer::Layer;
use tower_service::Service;

use crate::discovery::RevisionSpec;
use crate::reporter::{AutoscalerConnection, ConcurrencyReporter, InFlightReport};
use crate::throttler::{Lease, Throttler, ThrottlerError};
use pools::DestPools;
use probes::Unhealthy;

/// Body of the 504 the timeout stage writes.
pub const TIMEOUT_BODY: &str = "activator request timeout";

/// Finds a revision's settings by namespace and name.
pub type RevisionLookup = dyn Fn(&str, &str) -> Option<Arc<RevisionSpec>> + Send + Sync;

/// Everything the request path shares.
pub struct ActivatorState {
    /// Per-revision throttlers.
    pub throttler: Arc<Throttler>,
    /// Revision settings from discovery.
    pub revisions: Arc<RevisionLookup>,
    /// Concurrency accounting for the autoscaler.
    pub reporter: Arc<ConcurrencyReporter>,
    /// The autoscaler websocket (health depends on it).
    pub autoscaler: Arc<AutoscalerConnection>,
    /// Connection pools to pods.
    pub pools: Arc<DestPools>,
    /// Set on the first SIGTERM/SIGINT.
    pub terminating: AtomicBool,
    /// Requests in flight (for shutdown).
    pub in_flight: InFlightCounter,
    /// The cluster domain, for `<rev>.<ns>.svc.<domain>` hosts.
    pub cluster_domain: String,
}

impl ActivatorState {
    fn health(&self) -> Result<(), Unhealthy> {
        if self.terminating.load(Ordering::Acquire) {
            Err(Unhealthy::Terminating)
        } else if !self.autoscaler.is_connected() {
            Err(Unhealthy::AutoscalerUnreachable)
        } else {
            Ok(())
        }
    }
}

/// The activator's service for one connection.
#[derive(Clone)]
pub struct ActivatorService {
    state: &'static ActivatorState,
    peer: PeerIp,
}

impl ActivatorService {
    /// The chain for a connection from `peer`.
    pub fn new(state: &'static ActivatorState, peer: std::net::SocketAddr) -> Self {
        ActivatorService {
            state,
            peer: PeerIp::new(peer),
        }
    }
}

/// The response body of the activation path, with every per-request guard.
pub type ActivatorBody = Guarded<
    Guarded<TimeoutBody<Guarded<ProxyBody, Option<Lease>>>, Option<InFlightReport>>,
    Option<InFlightGuard>,
>;

/// Response future of [`ActivatorService`].
pub type ActivatorFuture =
    Pin<Box<dyn Future<Output = Result<Response<ActivatorBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for ActivatorService {
    type Response = Response<ActivatorBody>;
    type Error = Infallible;
    type Future = ActivatorFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let state = self.state;
        if let Some(answer) = probes::answer(request.headers_mut(), || state.health()) {
            return Box::pin(std::future::ready(Ok(answer)));
        }
        let peer = self.peer.clone();
        Box::pin(async move { Ok(handle(state, peer, request).await) })
    }
}

/// Revision namespace and name from the `Knative-Serving-*` headers, else from a
/// `<name>.<namespace>.svc.<cluster-domain>[:port]` host (spec §2.5).
pub fn identify<'a>(request: &'a Request<Incoming>, cluster_domain: &str) -> (&'a str, &'a str) {
    let headers = request.headers();
    let namespace = first_str(headers, &KNATIVE_SERVING_NAMESPACE);
    let name = first_str(headers, &KNATIVE_SERVING_REVISION);
    if !namespace.is_empty() && !name.is_empty() {
        return (namespace, name);
    }
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    identify_host(host, cluster_domain).unwrap_or((namespace, name))
}

fn identify_host<'a>(host: &'a str, cluster_domain: &str) -> Option<(&'a str, &'a str)> {
    let mut parts = host.splitn(4, '.');
    let (name, namespace, svc, domain) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let domain = domain.rsplit_once(':').map_or(domain, |(d, _)| d);
    (svc == "svc" && domain == cluster_domain).then_some((namespace, name))
}

async fn handle(
    state: &'static ActivatorState,
    peer: PeerIp,
    request: Request<Incoming>,
) -> Response<ActivatorBody> {
    let (namespace, name) = identify(&request, &state.cluster_domain);
    let Some(revision) = (state.revisions)(namespace, name) else {
        let body = format!(
            "Error getting active endpoint: revision.serving.knative.dev \"{name}\" not found\n"
        );
        return text_error_bytes(StatusCode::NOT_FOUND, Bytes::from(body));
    };
    let in_flight = state.in_flight.enter();
    let report = state.reporter.handle_in(&revision.id);
    let timeouts = Timeouts {
        total: Duration::from_secs(revision.timeout_seconds.max(1)),
        response_start: revision
            .response_start_timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        idle: revision
            .idle_timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    };
    let activation = Activation {
        state,
        peer,
        revision,
    };
    let response = match TimeoutLayer::new(timeouts, TIMEOUT_BODY)
        .layer(activation)
        .call(request)
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = attach_guard(response, Some(report));
    attach_guard(response, Some(in_flight))
}

/// Stage 12: wait for capacity, then proxy to the leased pod (spec §2.12–§2.15).
#[derive(Clone)]
struct Activation {
    state: &'static ActivatorState,
    peer: PeerIp,
    revision: Arc<RevisionSpec>,
}

impl Service<Request<Incoming>> for Activation {
    type Response = Response<Guarded<ProxyBody, Option<Lease>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.activate(request).await) })
    }
}

impl Activation {
    async fn activate(
        self,
        mut request: Request<Incoming>,
    ) -> Response<Guarded<ProxyBody, Option<Lease>>> {
        let id = &self.revision.id;
        let lease = match self
            .state
            .throttler
            .try_acquire_by(&id.namespace, &id.name)
            .await
        {
            Ok(lease) => lease,
            Err(ThrottlerError::QueueFull) => {
                return text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "pending request queue full\n",
                )
            }
            Err(error) => {
                tracing::warn!(%error, revision = %id, "throttler failed");
                return empty(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        let Some(addr) = lease.socket_addr() else {
            tracing::error!(dest = lease.dest(), "leased destination is not an ip:port");
            return Guarded::full_response(StatusCode::BAD_GATEWAY);
        };
        let upgrade = rewrite::prepare_request(&mut request, &self.peer);
        direct_to(&mut request, lease.dest());
        let upstream = self.state.pools.get(addr);
        // Boxed: the proxy's future is large, and without the box every request *queued* in the
        // throttler above would carry its full size (10,000 queued requests: ~30 MB of a debug
        // build's 72 MB resident set).
        match Box::pin(forward(&upstream, request, upgrade)).await {
            Ok(response) => attach_guard(response, Some(lease)),
            Err(error) => {
                tracing::debug!(%error, dest = lease.dest(), "proxying to the pod failed");
                bad_gateway(&error).map(Guarded::unguarded)
            }
        }
    }
}

/// Spec §2.13: the original host moves to `K-Original-Host` (unless already there), the
/// request is addressed to the pod, and marked as proxied by the activator.
fn direct_to(request: &mut Request<Incoming>, dest: &str) {
    let original = match request.version() {
        Version::HTTP_2 => request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        _ => request.headers().get(HOST).cloned(),
    };
    let headers = request.headers_mut();
    if !headers.contains_key(&K_ORIGINAL_HOST) {
        if let Some(original) = original {
            headers.insert(K_ORIGINAL_HOST, original);
        }
    }
    headers.insert(K_PROXY_REQUEST, HeaderValue::from_static("activator"));
    if let Ok(dest_value) = HeaderValue::from_str(dest) {
        headers.insert(HOST, dest_value);
    }
    if request.version() == Version::HTTP_2 {
        if let Ok(authority) = http::uri::Authority::try_from(dest) {
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.authority = Some(authority);
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts
                .path_and_query
                .get_or_insert(http::uri::PathAndQuery::from_static("/"));
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
}

/// Helper: an empty response of a guarded body type.
trait FullResponse: Sized {
    fn full_response(status: StatusCode) -> Response<Self>;
}

impl<B: LocalBody> FullResponse for B {
    fn full_response(status: StatusCode) -> Response<Self> {
        empty(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_identification() {
        assert_eq!(
            identify_host("name.ns.svc.cluster.local", "cluster.local"),
            Some(("ns", "name"))
        );
        assert_eq!(
            identify_host("name.ns.svc.cluster.local:80", "cluster.local"),
            Some(("ns", "name"))
        );
        assert_eq!(
            identify_host("name.ns.svc.other.domain", "cluster.local"),
            None
        );
        assert_eq!(identify_host("name.ns.example.com", "cluster.local"), None);
        assert_eq!(identify_host("localhost", "cluster.local"), None);
    }
}
