//! The activator's request chain (spec §2): probe answers, revision identification, the
//! concurrency reporter hook, per-revision timeouts, and the activation handler (throttler lease,
//! then the reverse proxy to the chosen pod).

pub mod inbound;
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
use futures_util::FutureExt;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use knative_common::body::{
    attach_guard, empty, text_error, text_error_bytes, Guarded, LocalBody, ProxyBody,
};
use knative_common::drain::{InFlightCounter, InFlightGuard};
use knative_common::h2::IncomingBody;
use knative_common::header_scan::{self, Present};
use knative_common::headers::{
    hashed, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION, K_NETWORK_HASH, K_PASSTHROUGH_LB,
    PROXY_REQUEST_ACTIVATOR,
};
use knative_common::proxy::{bad_gateway, forward_or_return, rewrite, PeerIp};
use knative_common::timeout::{TimeoutBody, TimeoutFuture, Timeouts};
use knative_telemetry::metrics::{MeteredBody, MeteredFuture};
use knative_telemetry::trace::Span;
use tower_service::Service;

use crate::discovery::RevisionSpec;
use crate::observability::{spans, ActiveGuard, Observability, Observed, RevisionMetrics};
use crate::reporter::{AutoscalerConnection, ConcurrencyReporter, InFlightReport};
use crate::throttler::{Lease, Throttler, ThrottlerError};
use inbound::{text, Inbound, NameAt, RevisionAt};
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
    /// Set on the first SIGTERM/SIGINT.
    pub terminating: AtomicBool,
    /// Requests in flight (for shutdown).
    pub in_flight: InFlightCounter,
    /// The cluster domain, for `<rev>.<ns>.svc.<domain>` hosts.
    pub cluster_domain: String,
    /// `enable-mesh-pod-addressability` (passthrough LB, spec §2.13): outbound Host
    /// `<rev>-private.<ns>` and `K-Passthrough-Lb: true`.
    pub passthrough_lb: bool,
    /// Metrics and request log (stages 4, 7–9).
    pub observability: &'static Observability,
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
    pools: &'static DestPools,
    peer: PeerIp,
    remote: std::net::SocketAddr,
}

impl ActivatorService {
    /// The chain for a connection from `peer`, proxying through `pools`: the pools of the
    /// worker thread that serves the connection, so that its requests and the upstream
    /// connections they take stay on that thread.
    pub fn new(
        state: &'static ActivatorState,
        pools: &'static DestPools,
        peer: std::net::SocketAddr,
    ) -> Self {
        ActivatorService {
            state,
            pools,
            peer: PeerIp::new(peer),
            remote: peer,
        }
    }
}

/// What the proxied response body holds until it ends: the throttler slot, the
/// `kn.revision.request.active` count and the spans of the proxying (dropped in field order:
/// the client span ends before `activator_proxy`).
pub struct ProxyHold {
    _lease: Lease,
    _active: Option<ActiveGuard>,
    _client_span: Option<Span>,
    _proxy_span: Option<Span>,
}

/// See [`ProxyHold`].
pub type ProxyGuards = Option<ProxyHold>;

/// What a request holds, outside the timeout stage, until its response has been sent: the
/// concurrency report's "out" event, then the in-flight count (dropped in field order). One
/// guard for both: one move of the response less than a guard each.
pub struct RequestHold {
    _report: InFlightReport,
    _in_flight: InFlightGuard,
}

/// The response body of the activation path, with every per-request guard.
pub type InnerBody = Guarded<TimeoutBody<Guarded<ProxyBody, ProxyGuards>>, RequestHold>;

/// The response body of the chain: [`InnerBody`], observed (metrics, request log) when on.
pub type ActivatorBody = MeteredBody<InnerBody, Observed>;

/// Response future of [`ActivatorService`].
pub type ActivatorFuture =
    Pin<Box<dyn Future<Output = Result<Response<ActivatorBody>, Infallible>> + Send>>;

impl Service<Request<IncomingBody>> for ActivatorService {
    type Response = Response<ActivatorBody>;
    type Error = Infallible;
    type Future = ActivatorFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<IncomingBody>) -> Self::Future {
        let state = self.state;
        // One pass over the headers for the probe stages, identification and the proxying.
        let inbound = Inbound::scan(request.headers());
        if let Some(answer) = probes::respond(&inbound, || state.health()) {
            return Box::pin(std::future::ready(Ok(answer)));
        }
        let seen = Seen {
            present: inbound.present,
            host: inbound.host.is_some(),
        };
        let revision_at = inbound.revision_at;
        // Stage 4 (OTel server instrumentation) sits before revision identification upstream;
        // identifying first lets one observation carry the revision labels (stage 7) and the
        // request log (stage 8) without a second lookup. Requests for unknown revisions are
        // measured without revision labels and never logged, as upstream.
        let (namespace, name) = identify(&inbound, request.uri(), &state.cluster_domain);
        let revision = (state.revisions)(namespace, name);
        let Some(revision) = revision else {
            let body = format!(
                "Error getting active endpoint: revision.serving.knative.dev \"{name}\" not found\n"
            );
            strip_network_hash(&mut request, seen.present);
            let observed = state
                .observability
                .observe(&mut request, None, None, self.remote);
            let response: Response<InnerBody> =
                text_error_bytes(StatusCode::NOT_FOUND, Bytes::from(body));
            return Box::pin(MeteredFuture::new(
                std::future::ready(Ok(response)),
                observed,
                request.method() == http::Method::HEAD,
            ));
        };
        // The response future's box is allocated before the work that leads to the future, and
        // the future written into it at the end: `Box::pin(future)` built the future (the
        // request in it) on the stack and then copied it into the allocation.
        let slot = Box::new_uninit();
        strip_network_hash(&mut request, seen.present);
        let metrics = state.observability.revision_metrics(&revision);
        let observed = state.observability.observe(
            &mut request,
            Some(&revision),
            metrics.clone(),
            self.remote,
        );
        let head = request.method() == http::Method::HEAD;
        // The request is prepared here, where it stands: prepared in `handle`, it was copied
        // into `handle`'s own place first.
        let present = make_room(request.headers_mut(), seen.present, revision_at);
        // Nothing since the scan changed a tracked name (only `K-Network-Hash` may have gone).
        let upgrade = rewrite::prepare_request_scanned(&mut request, &self.peer, present);
        // `handle` directly (no wrapping async block, which would store the request twice in
        // every queued request's future).
        let handled = handle(state, self.pools, request, upgrade, revision, metrics, seen);
        // Its output made out of line (`OutOfLine`): made inline, it was built aside and copied.
        let future = Box::write(slot, MeteredFuture::out_of_line(handled, observed, head));
        Box::into_pin(future)
    }
}

/// Stage 2's stripping of `K-Network-Hash` from a request that is not a probe (spec §2.2).
#[inline]
fn strip_network_hash<B>(request: &mut Request<B>, present: Present) {
    if present.any(Present::K_NETWORK_HASH) {
        request.headers_mut().remove(&K_NETWORK_HASH);
    }
}

/// What the scan of the inbound headers saw that the proxying needs: the tracked names
/// (stripping and rewriting look up only those that are there) and whether `Host` was there.
#[derive(Clone, Copy, Debug)]
struct Seen {
    present: Present,
    host: bool,
}

impl Seen {
    /// For a request already rewritten once (the retry): every lookup is made.
    const UNKNOWN: Seen = Seen {
        present: Present::K_ORIGINAL_HOST,
        host: true,
    };
}

/// Revision namespace and name from the `Knative-Serving-*` headers, else from a
/// `<name>.<namespace>.svc.<cluster-domain>[:port]` host (the request target's authority, else
/// the `Host` header; spec §2.5).
pub fn identify<'a>(
    inbound: &Inbound<'a>,
    uri: &'a http::Uri,
    cluster_domain: &str,
) -> (&'a str, &'a str) {
    let namespace = text(inbound.namespace);
    let name = text(inbound.revision);
    if !namespace.is_empty() && !name.is_empty() {
        return (namespace, name);
    }
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| inbound.host.and_then(|h| h.to_str().ok()))
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

/// Stages 10–12 for one request, its headers prepared ([`make_room`],
/// [`rewrite::prepare_request_scanned`], which gave `upgrade`). Not an `async fn`: an
/// `async fn` keeps its arguments (the request among them) in its state beside the futures it
/// awaits, and every request waiting in the throttler carries that state. Here the timeout
/// stage's future (and, inside it, the boxed activation) is created at once, and only it and
/// two guards are carried.
#[inline(always)]
fn handle(
    state: &'static ActivatorState,
    pools: &'static DestPools,
    request: Request<IncomingBody>,
    upgrade: Option<rewrite::UpgradeRequest>,
    revision: Arc<RevisionSpec>,
    metrics: Option<Arc<RevisionMetrics>>,
    seen: Seen,
) -> impl Future<Output = Result<Response<InnerBody>, Infallible>> + Send + use<> {
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
    let start = tokio::time::Instant::now();
    let timers = pools.timers();
    let activation = Activation {
        state,
        pools,
        revision,
        metrics,
        seen,
    };
    // A combinator, not an `async` block: awaiting a captured future would keep it twice.
    TimeoutFuture::new(
        start,
        activation.run(request, upgrade),
        timeouts,
        TIMEOUT_BODY,
        timers,
    )
    .map(move |timed| {
        let response = match timed {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let hold = RequestHold {
            _report: report,
            _in_flight: in_flight,
        };
        Ok(attach_guard(response, hold))
    })
}

/// Stage 12: wait for capacity, then proxy to the leased pod (spec §2.12–§2.15).
struct Activation {
    state: &'static ActivatorState,
    pools: &'static DestPools,
    revision: Arc<RevisionSpec>,
    metrics: Option<Arc<RevisionMetrics>>,
    /// What the scan of the inbound headers saw.
    seen: Seen,
}

impl Activation {
    /// Beyond upstream: when the connection to the leased pod cannot even be opened (refused or
    /// timed out: typically a pod that died a moment ago and is still listed), nothing was sent,
    /// so the request waits for discovery to drop that pod (at most [`UNREACHABLE_POD_WAIT`])
    /// and is leased and sent once more, instead of failing with the 502 upstream gives. A
    /// second failure gives that 502 (same text as upstream).
    ///
    /// Written so that a request waiting in the throttler is held once, in a small future
    /// (10,000 waiting requests: README "Memory per connection"): the request stays in this
    /// future's captured slot while [`Activation::lease`] borrows it (an `async fn` taking it
    /// would keep a second copy), and the proxying and the rare retry, whose futures are
    /// large, are boxed once they start. The future itself is not boxed: it lives in the
    /// service's response future, one allocation per request for both.
    ///
    /// `request`'s headers are prepared already ([`rewrite::prepare_request_scanned`], which
    /// gave `upgrade`).
    fn run(
        self,
        request: Request<IncomingBody>,
        upgrade: Option<rewrite::UpgradeRequest>,
    ) -> impl Future<Output = Result<ActivationResponse, Infallible>> + Send + use<> {
        let this = self;
        async move {
            let leased = match this.lease(&request).await {
                Ok(leased) => leased,
                Err(refused) => return Ok(refused.response()),
            };
            // The retry's future is made (boxed) before it is awaited, so that the outcome it
            // comes from is not kept beside it.
            let retry = match this.forward(leased, request, upgrade, this.seen).await {
                Forwarded::Done(response) => return Ok(response),
                Forwarded::Unreached {
                    request,
                    dest,
                    error,
                } => Box::pin(this.retry(*request, dest, error)),
            };
            Ok(retry.await)
        }
    }
}

/// Headers the activator adds to a request before proxying it (see [`make_room`]).
const UPSTREAM_HEADERS_ADDED: usize = 4;

/// Makes room in `headers` for what is added on the way (`X-Forwarded-For`, `K-Original-Host`,
/// `K-Proxy-Request`, `Host`) in one step: an HTTP/2 request's map is sized for the fields it
/// arrived with and would otherwise grow (rehash) up to three times. When the revision headers
/// are the only ones [`rewrite::prepare_request_scanned`] would remove, they are removed first
/// (the same removals in the same order), so that a map they filled is reallocated empty rather
/// than rehashed; returns what is left of `present`. They are removed by position (`at`, from
/// the scan; no lookup), each as `HeaderMap::remove` does it: the last name moves into the
/// removed one's place.
#[inline]
fn make_room(headers: &mut http::HeaderMap, present: Present, at: RevisionAt) -> Present {
    const REVISION: Present = Present::KNATIVE_SERVING_REVISION;
    const NAMESPACE: Present = Present::KNATIVE_SERVING_NAMESPACE;
    let present = if present.any(REVISION | NAMESPACE)
        && !present.any(Present::HOP_BY_HOP | Present::HTTP2_SETTINGS)
    {
        let mut namespace_at = at.namespace;
        if present.any(REVISION) {
            let last = headers.keys_len().checked_sub(1);
            remove_scanned(headers, at.revision, &KNATIVE_SERVING_REVISION);
            if let (Some(namespace), Some(revision)) = (namespace_at.as_mut(), at.revision) {
                if Some(namespace.index) == last {
                    // The last name took the revision header's place.
                    namespace.index = revision.index;
                }
            }
        }
        if present.any(NAMESPACE) {
            remove_scanned(headers, namespace_at, &KNATIVE_SERVING_NAMESPACE);
        }
        present.without(REVISION | NAMESPACE)
    } else {
        present
    };
    headers.reserve(UPSTREAM_HEADERS_ADDED);
    present
}

/// `headers.remove(name)` for a name the scan found (`at`): taken by position when the name
/// there is still the one found (told by where its bytes are: no comparison of them), else by
/// name. The same map after either way.
#[inline]
fn remove_scanned(headers: &mut http::HeaderMap, at: Option<NameAt>, name: &http::HeaderName) {
    let index = at
        .filter(|at| {
            headers
                .keys()
                .nth(at.index)
                .is_some_and(|found| at.is(found))
        })
        .map(|at| at.index);
    match index.and_then(|index| headers.entry_at(index)) {
        Some(entry) => drop(entry.remove()),
        None => drop(headers.remove(name)),
    }
}

/// How long a request whose pod refused the connection waits for discovery to drop that pod
/// before it is tried once more (see [`Activation::run`]).
const UNREACHABLE_POD_WAIT: Duration = Duration::from_secs(1);

/// How often that wait checks the revision's destinations.
const UNREACHABLE_POD_POLL: Duration = Duration::from_millis(5);

/// The response of the activation path.
type ActivationResponse = Response<Guarded<ProxyBody, ProxyGuards>>;

/// A pod leased for one request, and the request's `active` count.
struct Leased {
    lease: Lease,
    active: Option<ActiveGuard>,
}

/// Why [`Activation::lease`] gave no pod.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// The revision's (or the activator's) queue is full: 503.
    QueueFull,
    /// The throttler failed otherwise: 500.
    Failed,
}

impl Refused {
    fn response(self) -> ActivationResponse {
        match self {
            Refused::QueueFull => text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "pending request queue full\n",
            ),
            Refused::Failed => empty(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// The outcome of proxying to a leased pod.
enum Forwarded {
    /// A response for the client (the pod's, or the activator's own error).
    Done(ActivationResponse),
    /// No connection to the leased pod could be opened; nothing of the request was sent (boxed,
    /// as the proxy hands it back: inline it made every outcome the size of a request).
    Unreached {
        request: Box<Request<IncomingBody>>,
        dest: String,
        error: knative_common::proxy::ProxyError,
    },
}

impl Activation {
    /// Waits for capacity and leases a pod (stage 12), or says why not (the response is made by
    /// the caller: a small outcome, written and moved on every request).
    async fn lease(&self, request: &Request<IncomingBody>) -> Result<Leased, Refused> {
        let id = &self.revision.id;
        // `kn.revision.request.queued` while waiting (§2.12), then `active` until the response
        // has been sent.
        let queued = self.metrics.as_ref().map(|m| m.queued());
        let mut try_span = self
            .state
            .observability
            .tracer()
            .map(|t| spans::throttler_try(t, request));
        match self
            .state
            .throttler
            .try_acquire_by(&id.namespace, &id.name)
            .await
        {
            Ok(lease) => Ok(Leased {
                lease,
                active: queued.map(|q| q.activate()),
            }),
            Err(ThrottlerError::QueueFull) => {
                drop(queued);
                if let Some(metrics) = &self.metrics {
                    metrics.refused();
                }
                if let Some(span) = try_span.as_mut() {
                    spans::failed(span, &ThrottlerError::QueueFull);
                }
                Err(Refused::QueueFull)
            }
            Err(error) => {
                drop(queued);
                if let Some(span) = try_span.as_mut() {
                    spans::failed(span, &error);
                }
                tracing::warn!(%error, "knative.dev/key" = %id, "throttler failed");
                Err(Refused::Failed)
            }
        }
    }

    /// Proxies `request` to the leased pod (stages 13–15). The headers are set now, and the
    /// returned future is the proxy's own with a combinator holding the lease and spans until
    /// the response (no `async` state keeping a second copy of the request), boxed (large; see
    /// [`Activation::run`]). The box is allocated first and the future written into it:
    /// `Box::pin(forward(..))` in the caller built the future on the stack and copied its
    /// 1,128 bytes into the allocation.
    fn forward(
        &self,
        leased: Leased,
        mut request: Request<IncomingBody>,
        upgrade: Option<rewrite::UpgradeRequest>,
        seen: Seen,
    ) -> Pin<Box<impl Future<Output = Forwarded> + Send + 'static>> {
        let slot = Box::new_uninit();
        let id = &self.revision.id;
        let Leased { lease, active } = leased;
        let Some(addr) = lease.socket_addr() else {
            tracing::error!(dest = lease.dest(), "leased destination is not an ip:port");
            let future = Box::write(
                slot,
                futures_util::future::Either::Left(std::future::ready(Forwarded::Done(
                    Guarded::full_response(StatusCode::BAD_GATEWAY),
                ))),
            );
            return Box::into_pin(future);
        };
        // System-internal TLS (spec §2.13): the pod's 8112 or the cluster IP's 443, over TLS
        // verified for the revision's namespace.
        let upstream = match self
            .pools
            .get_tls(addr, lease.is_cluster_ip(), &id.namespace)
        {
            None if request.version() == Version::HTTP_2 => {
                let (upstream, authority) = self.pools.get_with_authority(addr);
                let dest = Dest {
                    text: lease.dest(),
                    host: None,
                    authority: authority.as_ref(),
                };
                direct_to(&mut request, dest, seen);
                upstream
            }
            None => {
                let upstream = self.pools.get(addr);
                let dest = Dest {
                    text: lease.dest(),
                    host: Some(upstream.host_header()),
                    authority: None,
                };
                direct_to(&mut request, dest, seen);
                upstream
            }
            Some(target) => {
                direct_to(&mut request, Dest::text(&target.host), seen);
                target.upstream
            }
        };
        if self.state.passthrough_lb {
            passthrough_lb(&mut request, &id.namespace, &id.name);
        }
        let (mut client_span, proxy_span) = match self.state.observability.tracer() {
            Some(t) => {
                let (client, proxy) = spans::proxy_spans(t, &mut request, addr);
                (Some(client), Some(proxy))
            }
            None => (None, None),
        };
        let forwarded = forward_or_return(upstream, request, upgrade).map(move |forwarded| {
            match forwarded {
                Ok(response) => {
                    if let Some(span) = client_span.as_mut() {
                        spans::record_client_status(span, response.status().as_u16());
                    }
                    let hold = ProxyHold {
                        _lease: lease,
                        _active: active,
                        _client_span: client_span,
                        _proxy_span: proxy_span,
                    };
                    Forwarded::Done(attach_guard(response, Some(hold)))
                }
                Err(failure) => {
                    if let Some(span) = client_span.as_mut() {
                        spans::failed(span, &failure.error);
                    }
                    tracing::debug!(error = %failure.error, dest = lease.dest(), "proxying to the pod failed");
                    match failure.unsent {
                        Some(request) => Forwarded::Unreached {
                            request,
                            dest: lease.dest().to_owned(),
                            error: failure.error,
                        },
                        None => {
                            Forwarded::Done(bad_gateway(&failure.error).map(Guarded::unguarded))
                        }
                    }
                }
            }
        });
        Box::into_pin(Box::write(
            slot,
            futures_util::future::Either::Right(forwarded),
        ))
    }

    /// The one retry after the leased pod could not be reached: waits for discovery to drop
    /// `dest`, then leases and proxies again; a second unreachable pod gives the 502. An
    /// upgrade is not carried over (its handle went with the first attempt).
    async fn retry(
        &self,
        request: Request<IncomingBody>,
        dest: String,
        error: knative_common::proxy::ProxyError,
    ) -> ActivationResponse {
        tracing::debug!(%error, dest, "pod unreachable; retrying once elsewhere");
        self.wait_until_unlisted(&dest).await;
        let leased = match self.lease(&request).await {
            Ok(leased) => leased,
            Err(refused) => return refused.response(),
        };
        match self.forward(leased, request, None, Seen::UNKNOWN).await {
            Forwarded::Done(response) => response,
            Forwarded::Unreached { error, .. } => bad_gateway(&error).map(Guarded::unguarded),
        }
    }

    /// Waits until `dest` is no longer one of the revision's destinations, or
    /// [`UNREACHABLE_POD_WAIT`] has passed.
    async fn wait_until_unlisted(&self, dest: &str) {
        let id = &self.revision.id;
        let deadline = tokio::time::Instant::now() + UNREACHABLE_POD_WAIT;
        while tokio::time::Instant::now() < deadline {
            let Some(revision) = self.state.throttler.get(&id.namespace, &id.name) else {
                return;
            };
            if revision.dest_in_flight(dest).is_none() {
                return;
            }
            tokio::time::sleep(UNREACHABLE_POD_POLL).await;
        }
    }
}

/// Where [`direct_to`] addresses a request: `ip:port`, with the same as a `Host` value and as a
/// URI authority when the pool has them (each used only when it is `text` byte for byte; else
/// made from `text`, with a copy and a validation).
#[derive(Clone, Copy)]
struct Dest<'a> {
    text: &'a str,
    host: Option<&'a HeaderValue>,
    authority: Option<&'a http::uri::Authority>,
}

impl<'a> Dest<'a> {
    fn text(text: &'a str) -> Self {
        Dest {
            text,
            host: None,
            authority: None,
        }
    }

    fn host(self) -> Option<HeaderValue> {
        match self.host.filter(|v| v.as_bytes() == self.text.as_bytes()) {
            Some(value) => Some(value.clone()),
            None => HeaderValue::from_str(self.text).ok(),
        }
    }

    fn authority(self) -> Option<http::uri::Authority> {
        match self.authority.filter(|a| a.as_str() == self.text) {
            Some(authority) => Some(authority.clone()),
            None => http::uri::Authority::try_from(self.text).ok(),
        }
    }
}

/// Spec §2.13: the original host moves to `K-Original-Host` (unless already there), the
/// request is addressed to the pod, and marked as proxied by the activator. `seen`: whether
/// `Host` and `K-Original-Host` are there (the lookups for absent ones are skipped; the headers
/// end in the same order either way).
///
/// An HTTP/2 request goes upstream over HTTP/2 addressed by its URI, which gets the pod's
/// authority; the `Host` header is dropped on the way ([`rewrite::to_h2c_form`]), so none is
/// set here unless the authority cannot be made.
fn direct_to(request: &mut Request<IncomingBody>, dest: Dest<'_>, seen: Seen) {
    if request.version() == Version::HTTP_2 {
        let original = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        mark_proxied(request.headers_mut(), original, seen);
        let authority = dest.authority();
        let addressed = authority.is_some_and(|authority| {
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.authority = Some(authority);
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts
                .path_and_query
                .get_or_insert(http::uri::PathAndQuery::from_static("/"));
            match http::Uri::from_parts(parts) {
                Ok(uri) => {
                    *request.uri_mut() = uri;
                    true
                }
                Err(_) => false,
            }
        });
        if !addressed {
            if let Some(host) = dest.host() {
                request.headers_mut().insert(HOST, host);
            }
        }
        return;
    }
    let mut host = dest.host();
    let original = if !seen.host {
        None
    } else if let Some(value) = host.take() {
        // Replaces `Host` where it stands and gives the original (no lookup when it is first).
        header_scan::replace_host(request.headers_mut(), value)
    } else {
        request.headers().get(HOST).cloned()
    };
    let headers = request.headers_mut();
    mark_proxied(headers, original, seen);
    if let Some(host) = host {
        headers.insert(HOST, host);
    }
}

/// `K-Original-Host` (unless already there) and `K-Proxy-Request: activator`.
#[inline]
fn mark_proxied(headers: &mut http::HeaderMap, original: Option<HeaderValue>, seen: Seen) {
    if let Some(original) = original {
        // The names' hashes are worked out at compile time (`hashed`).
        if !seen.present.any(Present::K_ORIGINAL_HOST) {
            headers.insert(hashed::K_ORIGINAL_HOST, original);
        } else if let http::header::Entry::Vacant(vacant) = headers.entry(hashed::K_ORIGINAL_HOST) {
            // One lookup of the name for "unless already there" and the insert.
            vacant.insert(original);
        }
    }
    // A `const`: the value's check runs at compile time.
    const ACTIVATOR: HeaderValue = HeaderValue::from_static(PROXY_REQUEST_ACTIVATOR);
    headers.insert(hashed::K_PROXY_REQUEST, ACTIVATOR);
}

/// Passthrough-LB mode (spec §2.13, §11 item 7): the mesh routes by Host, so the request is
/// addressed to the revision's private Service and marked with `K-Passthrough-Lb: true`.
fn passthrough_lb<B>(request: &mut Request<B>, namespace: &str, name: &str) {
    let host = format!(
        "{}.{namespace}",
        crate::backends::private_service_name(name)
    );
    if request.version() == Version::HTTP_2 {
        if let Ok(authority) = http::uri::Authority::try_from(host.as_str()) {
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.authority = Some(authority);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    if let Ok(value) = HeaderValue::try_from(host) {
        request.headers_mut().insert(HOST, value);
    }
    request
        .headers_mut()
        .append(K_PASSTHROUGH_LB, HeaderValue::from_static("true"));
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
    fn passthrough_lb_addresses_the_private_service() {
        let mut request = Request::get("/").body(()).unwrap();
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("10.0.0.1:8012"));
        passthrough_lb(&mut request, "real-namespace", "real-name");
        assert_eq!(request.headers()[HOST], "real-name-private.real-namespace");
        assert_eq!(request.headers()[K_PASSTHROUGH_LB], "true");

        let mut h2 = Request::get("http://10.0.0.1:8013/x?y")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        passthrough_lb(&mut h2, "ns", "rev");
        assert_eq!(h2.uri().to_string(), "http://rev-private.ns/x?y");
    }

    /// A request with `fields`, in that order.
    fn request_with(fields: &[(&'static str, &'static str)]) -> Request<()> {
        let mut request = Request::get("/").body(()).unwrap();
        for (name, value) in fields {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        request
    }

    /// `request`'s fields, in order.
    fn listed(request: &Request<()>) -> Vec<(String, String)> {
        request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    /// Removing the revision headers ahead (to reallocate the map empty) leaves the upstream
    /// request's headers exactly as the shared preparation alone does, order included.
    #[test]
    fn making_room_changes_no_header() {
        let peer = PeerIp::new("10.0.0.9:5555".parse().unwrap());
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("host", "h"),
                ("knative-serving-namespace", "ns"),
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("x-b", "2"),
            ],
            &[
                ("knative-serving-revision", "rev"),
                ("knative-serving-namespace", "ns"),
            ],
            &[
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("x-b", "2"),
            ],
            &[
                ("knative-serving-namespace", "ns"),
                ("connection", "x-a"),
                ("x-a", "1"),
                ("te", "trailers"),
                ("knative-serving-revision", "rev"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            &[("x-forwarded-for", "1.2.3.4"), ("x-b", "2")],
            &[
                ("knative-serving-namespace", "ns"),
                ("host", "h"),
                ("knative-serving-revision", "rev"),
                ("x-a", "1"),
            ],
            &[("knative-serving-revision", "rev"), ("host", "h")],
            &[
                ("host", "h"),
                ("knative-serving-namespace", "ns"),
                ("knative-serving-revision", "rev"),
            ],
            &[("knative-serving-namespace", "ns")],
            &[
                ("knative-serving-revision", "rev"),
                ("x-a", "1"),
                ("x-a", "2"),
            ],
            &[
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("knative-serving-namespace", "ns"),
                ("x-b", "2"),
            ],
            &[
                ("knative-serving-namespace", "ns"),
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("x-b", "2"),
                ("x-c", "3"),
            ],
            // The namespace header last: removing the revision header moves it.
            &[
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("x-b", "2"),
                ("knative-serving-namespace", "ns"),
            ],
            &[
                ("Knative-Serving-Revision", "rev"),
                ("knative-serving-namespace", ""),
                ("KNATIVE-SERVING-REVISION", "rev2"),
                ("x-b", "2"),
                ("knative-serving-namespace", "ns2"),
            ],
        ];
        for fields in cases {
            let request = || request_with(fields);
            let mut plain = request();
            let present = Present::scan(plain.headers());
            rewrite::prepare_request_scanned(&mut plain, &peer, present);
            // By the positions the scan found, and (stale or unknown positions) by name.
            for known in [true, false] {
                let mut roomy = request();
                let at = if known {
                    Inbound::scan(roomy.headers()).revision_at
                } else {
                    RevisionAt::default()
                };
                let left = make_room(roomy.headers_mut(), present, at);
                assert!(
                    !left.any(Present::KNATIVE_SERVING_REVISION)
                        || present.any(Present::HOP_BY_HOP)
                );
                rewrite::prepare_request_scanned(&mut roomy, &peer, left);
                assert_eq!(listed(&plain), listed(&roomy), "{fields:?}");
                assert!(roomy.headers().capacity() >= roomy.headers().len() + 3);
            }
        }
    }

    /// Positions the scan found, then made stale by a removal (as stripping `K-Network-Hash`
    /// does: the last name takes the removed one's place), remove the same headers as names do.
    #[test]
    fn stale_positions_remove_the_same_headers() {
        let peer = PeerIp::new("10.0.0.9:5555".parse().unwrap());
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("k-network-hash", "h"),
                ("x-a", "1"),
                ("knative-serving-namespace", "ns"),
                ("knative-serving-revision", "rev"),
            ],
            &[
                ("k-network-hash", "h"),
                ("knative-serving-revision", "rev"),
                ("x-a", "1"),
                ("knative-serving-namespace", "ns"),
            ],
            &[
                ("x-a", "1"),
                ("knative-serving-revision", "rev"),
                ("k-network-hash", "h"),
                ("knative-serving-namespace", "ns"),
                ("x-b", "2"),
            ],
        ];
        for fields in cases {
            let mut request = request_with(fields);
            let mut plain = request_with(fields);
            let at = Inbound::scan(request.headers()).revision_at;
            let present = Present::scan(request.headers()).without(Present::K_NETWORK_HASH);
            request.headers_mut().remove(&K_NETWORK_HASH);
            plain.headers_mut().remove(&K_NETWORK_HASH);
            let left = make_room(request.headers_mut(), present, at);
            rewrite::prepare_request_scanned(&mut request, &peer, left);
            rewrite::prepare_request_scanned(&mut plain, &peer, present);
            assert_eq!(listed(&plain), listed(&request), "{fields:?}");
            assert!(!request.headers().contains_key(&KNATIVE_SERVING_REVISION));
            assert!(!request.headers().contains_key(&KNATIVE_SERVING_NAMESPACE));
        }
    }

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
