//! Layers 8 and 9 of the main chain (spec §3.7, §3.8): the forwarded shim
//! ([`knative_common::forwarded`]), then the kubelet-probe bypass, autoscaler accounting, the
//! `K-Original-Host` rewrite and the concurrency breaker, with the `kn.queueproxy.proxy` and
//! `kn.queueproxy.wait` spans (§7.3) when tracing is on. The shim runs here, on this stage's
//! header scan, rather than as a stage of its own that handed the request on by value (one
//! more copy of it per request).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Request, Response};
use knative_common::body::{attach_some_guard, Guarded, LocalBody};
use knative_common::breaker::{BreakerFuture, BreakerLayer, BreakerService, Permit};
use knative_common::classify::{is_proxied_value, ProbeHeaders};
use knative_common::forwarded::forwarded_value;
use knative_common::header_scan::{Present, Scan};
use knative_common::headers::FORWARDED;
use knative_common::proxy::rewrite::restore_original_host_at;
use knative_common::stats::{InFlight, RequestStats};
use knative_telemetry::trace::layer::{CarriedSpan, EndCarriedSpan};
use knative_telemetry::trace::{Scope, Span, SpanKind, Tracer};
use tower_layer::Layer;
use tower_service::Service;

/// Scope of the queue-proxy's own spans (upstream's `tp.Tracer(...)` name).
pub const QUEUE_SCOPE: Scope = Scope {
    name: "knative.dev/serving/pkg/queue",
    version: "",
};

/// Name of the span covering stats, breaker and proxy.
pub const PROXY_SPAN: &str = "kn.queueproxy.proxy";
/// Name of the span covering the wait for a breaker slot.
pub const WAIT_SPAN: &str = "kn.queueproxy.wait";

/// See the module documentation.
#[derive(Clone, Copy)]
pub struct QueueHandlerLayer {
    stats: &'static RequestStats,
    breaker: BreakerLayer,
    tracer: Option<&'static Tracer>,
}

impl QueueHandlerLayer {
    /// Accounting into `stats`, admission through `breaker` (none when CC = 0); no spans.
    pub fn new(stats: &'static RequestStats, breaker: BreakerLayer) -> Self {
        QueueHandlerLayer {
            stats,
            breaker,
            tracer: None,
        }
    }

    /// Spans from `tracer` (`None`: tracing off).
    pub fn with_tracer(mut self, tracer: Option<&'static Tracer>) -> Self {
        self.tracer = tracer;
        self
    }
}

impl<S> Layer<S> for QueueHandlerLayer {
    type Service = QueueHandler<S>;
    fn layer(&self, inner: S) -> Self::Service {
        let limited = self.breaker.breaker().is_some();
        // The wait span travels with the request and ends when the breaker lets it through.
        let inner = EndCarriedSpan::new(inner, self.tracer.is_some() && limited);
        QueueHandler {
            stats: self.stats,
            breaker: self.breaker.layer(inner),
            tracer: self.tracer,
            limited,
        }
    }
}

/// See [`QueueHandlerLayer`].
#[derive(Clone)]
pub struct QueueHandler<S> {
    stats: &'static RequestStats,
    breaker: BreakerService<EndCarriedSpan<S>>,
    tracer: Option<&'static Tracer>,
    limited: bool,
}

/// What a request holds until its response has been sent: its breaker slot, the stats "out"
/// event, then the proxy span's end (fields drop in this order, as upstream's deferred calls
/// run).
pub struct HandlerGuard {
    /// The breaker slot (held here rather than by a body wrapper of the breaker's own: one move
    /// fewer of the whole response).
    _permit: Option<Permit<'static>>,
    _in_flight: InFlight<'static>,
    _span: Option<Span>,
}

/// Response body of [`QueueHandler`].
pub type QueueHandlerBody<B> = Guarded<B, HandlerGuard>;

impl<S, ReqB, B> Service<Request<ReqB>> for QueueHandler<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    ReqB: Send + 'static,
    B: LocalBody,
{
    type Response = Response<QueueHandlerBody<B>>;
    type Error = S::Error;
    type Future = QueueHandlerFuture<EndCarriedSpan<S>, ReqB, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.breaker.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // One pass for the names and first values everything below reads.
        let scan = Scan::of(request.headers());
        let present = scan.present();
        let original_host_at = present
            .any(Present::K_ORIGINAL_HOST)
            .then(|| scan.index(Present::K_ORIGINAL_HOST));
        let forwarded = forwarded_value(&scan);
        let kubelet_probe = ProbeHeaders::from_scan(&scan).is_kubelet_probe();
        let proxied = is_proxied_value(scan.first(Present::K_PROXY_REQUEST));
        if forwarded.is_some()
            || original_host_at.is_some()
            || kubelet_probe
            || self.tracer.is_some()
        {
            let changes = Changes {
                forwarded,
                original_host_at,
                kubelet_probe,
                proxied,
            };
            return self.call_changing(request, changes);
        }
        let in_flight = self.stats.request_in(proxied);
        QueueHandlerFuture {
            future: self.breaker.call(request),
            guard: Some(HandlerGuard {
                _permit: None,
                _in_flight: in_flight,
                _span: None,
            }),
        }
    }
}

/// What [`QueueHandler::call_changing`] does to a request, from `call`'s header scan.
struct Changes {
    forwarded: Option<HeaderValue>,
    original_host_at: Option<Option<usize>>,
    kubelet_probe: bool,
    proxied: bool,
}

impl<S> QueueHandler<S> {
    /// [`Service::call`] for a request this stage changes (a `Forwarded` header, the original
    /// host, spans) or lets bypass the breaker. Out of line: changing the request hands its
    /// address to another function, after which moving it on copies it (272 bytes); in `call`
    /// that copy was made for every request.
    #[inline(never)]
    fn call_changing<ReqB, B>(
        &mut self,
        mut request: Request<ReqB>,
        changes: Changes,
    ) -> QueueHandlerFuture<EndCarriedSpan<S>, ReqB, B>
    where
        S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
        ReqB: Send + 'static,
        B: LocalBody,
    {
        // Inserting `Forwarded` moves no name: the original host's index stays good.
        if let Some(value) = changes.forwarded {
            request.headers_mut().insert(FORWARDED, value);
        }
        if changes.kubelet_probe {
            return QueueHandlerFuture {
                future: self.breaker.call_unlimited(request),
                guard: None,
            };
        }
        let span = self.tracer.map(|tracer| {
            let extensions = request.extensions_mut();
            let span = tracer.start_in(extensions, &QUEUE_SCOPE, PROXY_SPAN, SpanKind::Internal);
            if self.limited {
                // Upstream makes the wait span the request's current span: the client span
                // becomes its child.
                let wait = tracer.start_in(extensions, &QUEUE_SCOPE, WAIT_SPAN, SpanKind::Internal);
                extensions.insert(CarriedSpan(Some(wait)));
            }
            span
        });
        let in_flight = self.stats.request_in(changes.proxied);
        if let Some(at) = changes.original_host_at {
            restore_original_host_at(&mut request, at);
        }
        QueueHandlerFuture {
            future: self.breaker.call(request),
            guard: Some(HandlerGuard {
                _permit: None,
                _in_flight: in_flight,
                _span: span,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`QueueHandler`]; the stats "out" event fires, and the proxy span ends,
    /// when the response ends.
    pub struct QueueHandlerFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        future: BreakerFuture<S, ReqB, B>,
        guard: Option<HandlerGuard>,
    }
}

impl<S, ReqB, B> Future for QueueHandlerFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    type Output = Result<Response<QueueHandlerBody<B>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (response, permit) = ready!(this.future.poll_with_permit(cx))?;
        debug_assert!(this.guard.is_some() || permit.is_none());
        let guard = this.guard.take().map(|mut guard| {
            guard._permit = permit;
            guard
        });
        // `None`: a kubelet probe; it bypassed the breaker, so it holds no slot.
        Poll::Ready(Ok(attach_some_guard(response, guard)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use knative_common::body::ProxyBody;
    use knative_common::breaker::{Breaker, BreakerParams};
    use knative_telemetry::trace::export::memory::InMemoryExporter;
    use knative_telemetry::trace::{ClientSpanLayer, Sampler, SpanId};

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn leak<T>(value: T) -> &'static T {
        Box::leak(Box::new(value))
    }

    /// The user container: records request headers, answers `ok`.
    fn app(
        seen: std::sync::Arc<std::sync::Mutex<Vec<HeaderMap>>>,
    ) -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |request: Request<()>| {
            seen.lock().unwrap().push(request.headers().clone());
            async { Ok::<_, Infallible>(Response::new(ProxyBody::full(Bytes::from_static(b"ok")))) }
        })
    }

    /// Runs one request through layer 9 (+ the client span around the app) and returns the
    /// names of the exported spans in completion order and the headers the app saw.
    async fn run(
        cc: usize,
        tracer: Option<&'static Tracer>,
        exporter: &InMemoryExporter,
        request: Request<()>,
    ) -> (
        Vec<knative_telemetry::trace::export::memory::FinishedSpan>,
        HeaderMap,
    ) {
        let breaker = (cc > 0).then(|| leak(Breaker::for_container_concurrency(cc).unwrap()));
        let stats = leak(RequestStats::new());
        let seen = std::sync::Arc::default();
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let chain = ClientSpanLayer::new(tracer, target).layer(app(std::sync::Arc::clone(&seen)));
        let mut handler = QueueHandlerLayer::new(stats, BreakerLayer::new(breaker))
            .with_tracer(tracer)
            .layer(chain);
        let response = handler.call(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        if let Some(tracer) = tracer {
            tracer.force_flush().await;
        }
        let spans = exporter.spans();
        exporter.clear();
        let headers = seen.lock().unwrap()[0].clone();
        (spans, headers)
    }

    fn post() -> Request<()> {
        Request::post("/").body(()).unwrap()
    }

    #[tokio::test]
    async fn sm1_span_completion_order() {
        let exporter = InMemoryExporter::new();
        let tracer = Tracer::builder(exporter.clone())
            .sampler(Sampler::ALWAYS_ON)
            .build()
            .unwrap();
        // With a breaker: wait, client, proxy.
        let (spans, _) = run(10, Some(tracer), &exporter, post()).await;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [WAIT_SPAN, "HTTP POST", PROXY_SPAN]);
        let (wait, client, proxy) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(proxy.parent_span_id, None);
        assert_eq!(wait.parent_span_id, Some(proxy.context.span_id));
        assert_eq!(client.parent_span_id, Some(wait.context.span_id));
        assert_eq!(proxy.scope, QUEUE_SCOPE.name);
        assert_eq!(proxy.kind, SpanKind::Internal);
        assert_eq!(client.kind, SpanKind::Client);
        // Without a breaker: client, proxy.
        let (spans, headers) = run(0, Some(tracer), &exporter, post()).await;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["HTTP POST", PROXY_SPAN]);
        assert_eq!(spans[0].parent_span_id, Some(spans[1].context.span_id));
        // The app sees the client span as parent.
        assert_eq!(
            headers["traceparent"],
            spans[0].context.traceparent().to_str().unwrap()
        );
    }

    #[tokio::test]
    async fn continues_the_incoming_trace() {
        let exporter = InMemoryExporter::new();
        let tracer = Tracer::builder(exporter.clone()).build().unwrap();
        let mut request = post();
        // As layer 1 leaves it: the server span is the current span.
        let server = knative_telemetry::trace::SpanContext {
            span_id: SpanId::random(),
            remote: false,
            ..knative_telemetry::trace::SpanContext::from_headers(
                &[(
                    http::header::HeaderName::from_static("traceparent"),
                    http::HeaderValue::from_static(TRACEPARENT),
                )]
                .into_iter()
                .collect(),
            )
            .unwrap()
        };
        request
            .extensions_mut()
            .insert(knative_telemetry::trace::CurrentSpan(server.clone()));
        let (spans, headers) = run(1, Some(tracer), &exporter, request).await;
        for span in &spans {
            assert_eq!(span.context.trace_id, server.trace_id);
        }
        assert_eq!(spans[2].parent_span_id, Some(server.span_id));
        let tp = headers["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(!tp.contains("00f067aa0ba902b7"));
    }

    #[tokio::test]
    async fn kubelet_probes_get_only_a_root_client_span() {
        let exporter = InMemoryExporter::new();
        let tracer = Tracer::builder(exporter.clone()).build().unwrap();
        let request = Request::get("/")
            .header("k-kubelet-probe", "1")
            .header("traceparent", TRACEPARENT)
            .body(())
            .unwrap();
        let (spans, headers) = run(1, Some(tracer), &exporter, request).await;
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "HTTP GET");
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(
            headers["traceparent"],
            spans[0].context.traceparent().to_str().unwrap()
        );
    }

    #[tokio::test]
    async fn tracing_off_leaves_the_context_alone() {
        let exporter = InMemoryExporter::new();
        let request = Request::post("/")
            .header("traceparent", TRACEPARENT)
            .header("tracestate", "a=b")
            .header("baggage", "k=v")
            .body(())
            .unwrap();
        let (spans, headers) = run(1, None, &exporter, request).await;
        assert!(spans.is_empty());
        assert_eq!(headers["traceparent"], TRACEPARENT);
        assert_eq!(headers["tracestate"], "a=b");
        assert_eq!(headers["baggage"], "k=v");
    }

    #[tokio::test]
    async fn a_full_queue_still_ends_the_wait_span() {
        let exporter = InMemoryExporter::new();
        let tracer = Tracer::builder(exporter.clone()).build().unwrap();
        let breaker = leak(Breaker::new(BreakerParams {
            queue_depth: 1,
            max_concurrency: 1,
            initial_capacity: 1,
            max_waiting: None,
        }));
        let stats = leak(RequestStats::new());
        // One request runs, one waits: the queue is full.
        let _running = breaker.try_permit().unwrap();
        let mut waiting = Box::pin(breaker.permit());
        let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(noop).is_pending());
        let seen = std::sync::Arc::default();
        let mut handler = QueueHandlerLayer::new(stats, BreakerLayer::new(Some(breaker)))
            .with_tracer(Some(tracer))
            .layer(app(seen));
        let response = handler.call(post()).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let _ = response.into_body().collect().await;
        tracer.force_flush().await;
        let names: Vec<String> = exporter.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(names, [WAIT_SPAN, PROXY_SPAN]);
    }
}
