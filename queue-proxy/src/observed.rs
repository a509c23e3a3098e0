//! Layer 1 of the main chain (spec §3.1, §7.1–§7.3) as one stage: the server span, the HTTP
//! server metrics and the request-log line of a request, settled together when its response is
//! over.
//!
//! Each of the three is started through its own entry point ([`ServerTracing::start()`],
//! [`ServerMetrics::start()`], [`RequestLogger::capture()`]); one stage carries them in
//! one [`Observed`] value, settled by one [`MeteredFuture`] and its body, so the request and its
//! response are moved once on their way through, not once per concern.

use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Body;
use knative_common::request_log::{PendingLine, RequestLogger};
use knative_telemetry::trace::layer::record_server_status;
use knative_telemetry::trace::{ServerTracing, Span, Tracer};
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::server_metrics::ServerCompletion;
use crate::metrics::{Completion, MeteredBody, MeteredFuture, ServerMetrics};

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    spans: ServerTracing,
    metrics: ServerMetrics,
    log: RequestLogger,
}

impl ObserveLayer {
    /// The stage of one connection: server spans, metrics and request log as each is
    /// configured (each may be off).
    pub fn new(spans: ServerTracing, metrics: ServerMetrics, log: RequestLogger) -> Self {
        ObserveLayer {
            spans,
            metrics,
            log,
        }
    }
}

#[cfg(test)]
impl ObserveLayer {
    /// The stage with only server metrics on (`None`: off), as the metrics tests build it.
    pub(crate) fn metrics_only(
        metrics: Option<&'static crate::metrics::Metrics>,
        scheme: crate::metrics::UrlScheme,
        peer: std::net::SocketAddr,
    ) -> Self {
        ObserveLayer::new(
            ServerTracing::new(
                None,
                knative_telemetry::trace::ServerSpans::default(),
                peer,
                false,
            ),
            ServerMetrics::new(metrics, scheme),
            RequestLogger::new(None, peer),
        )
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// Response body of [`Observe`].
pub type ObservedBody<B> = MeteredBody<B, Observed>;

impl<S, ReqB, B> Service<Request<ReqB>> for Observe<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    ReqB: Body,
    B: Body,
{
    type Response = Response<ObservedBody<B>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, Observed>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if let Some(tracer) = self.layer.spans.tracer() {
            return self.call_traced(tracer, request);
        }
        if self.layer.log.is_on() {
            return self.call_logged(request);
        }
        let observed = self.layer.metrics.start(&request).map(Observed::measured);
        let head = request.method() == Method::HEAD;
        MeteredFuture::new(self.inner.call(request), observed, head)
    }
}

impl<S> Observe<S> {
    /// [`Service::call`] with tracing on. Out of line and taking the request by value: the
    /// span's start changes the request, after which moving it on copies it; in `call` that
    /// copy was made for every request.
    #[inline(never)]
    fn call_traced<ReqB, B>(
        &mut self,
        tracer: &'static Tracer,
        mut request: Request<ReqB>,
    ) -> MeteredFuture<S::Future, Observed>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
        ReqB: Body,
    {
        let span = self.layer.spans.start(tracer, &mut request);
        let observed = Observed::of(
            self.layer.metrics.start(&request),
            span.unwrap_or_else(Span::none),
            self.layer.log.capture(&request),
        );
        let head = request.method() == Method::HEAD;
        MeteredFuture::new(self.inner.call(request), observed, head)
    }

    /// [`Service::call`] with request logging on (tracing off), out of line for the reason
    /// given at [`Observe::call_traced`].
    #[inline(never)]
    fn call_logged<ReqB, B>(&mut self, request: Request<ReqB>) -> MeteredFuture<S::Future, Observed>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
        ReqB: Body,
    {
        let observed = Observed::of(
            self.layer.metrics.start(&request),
            Span::none(),
            self.layer.log.capture(&request),
        );
        let head = request.method() == Method::HEAD;
        MeteredFuture::new(self.inner.call(request), observed, head)
    }
}

/// What is observed of one request: its server metrics, its server span (ends when this is
/// settled) and its request-log line (written when this is settled), each when on.
#[derive(Debug)]
pub struct Observed {
    measure: Option<ServerCompletion>,
    span: Span,
    line: Option<Box<PendingLine>>,
}

impl Observed {
    /// Only the metrics.
    #[inline]
    fn measured(measure: ServerCompletion) -> Self {
        Observed {
            measure: Some(measure),
            span: Span::none(),
            line: None,
        }
    }

    /// `None` when there is nothing to observe.
    fn of(
        measure: Option<ServerCompletion>,
        span: Span,
        line: Option<Box<PendingLine>>,
    ) -> Option<Self> {
        (measure.is_some() || span.is_recording() || line.is_some()).then_some(Observed {
            measure,
            span,
            line,
        })
    }
}

impl Completion for Observed {
    fn respond(&mut self, status: StatusCode) {
        if let Some(measure) = self.measure.as_mut() {
            measure.respond(status);
        }
        record_server_status(&mut self.span, status);
        if let Some(line) = self.line.as_mut() {
            line.respond(status.as_u16());
        }
    }

    /// The metrics record `200` (as upstream's recorders for a hijacked connection); the span
    /// and the line the `101`.
    fn upgraded(&mut self, status: StatusCode) {
        if let Some(measure) = self.measure.as_mut() {
            measure.respond(StatusCode::OK);
        }
        record_server_status(&mut self.span, status);
        if let Some(line) = self.line.as_mut() {
            line.respond(status.as_u16());
        }
    }

    /// The metrics are recorded now; the span ends and the line is written when the body
    /// returns its end or is dropped, after the inner stages' bodies have released what they
    /// hold (the server span after the inner stages' spans).
    fn ended(&mut self, response_bytes: u64) -> bool {
        if let Some(measure) = self.measure.take() {
            measure.complete(response_bytes);
        }
        !self.span.is_recording() && self.line.is_none()
    }

    fn complete(self, response_bytes: u64) {
        if let Some(measure) = self.measure {
            measure.complete(response_bytes);
        }
        if let Some(line) = self.line {
            line.finish(response_bytes);
        }
    }

    /// The line is written as it stands (status `200`, no bytes: the response future was
    /// dropped or the inner stages panicked).
    fn abort(self, responded: bool) {
        if let Some(measure) = self.measure {
            measure.abort(responded);
        }
    }

    /// The line is written with the bytes sent, and status `500` if the body failed.
    fn abort_body(self, response_bytes: u64, failed: bool) {
        if let Some(measure) = self.measure {
            measure.abort_body(response_bytes, failed);
        }
        if let Some(mut line) = self.line {
            if failed {
                line.respond(500);
            }
            line.finish(response_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use knative_common::body::{LocalBody, ProxyBody};
    use knative_common::proxy::TunnelScope;

    use crate::metrics::{Metrics, Resource, UrlScheme};

    fn metrics() -> &'static Metrics {
        let env: HashMap<&str, &str> = HashMap::new();
        Box::leak(Box::new(Metrics::new(Resource::from_env(&env))))
    }

    fn stage(metrics: Option<&'static Metrics>) -> ObserveLayer {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        ObserveLayer::metrics_only(metrics, UrlScheme::Http, peer)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/")
            .header("host", "h")
            .body(Full::default())
            .unwrap()
    }

    /// The `http_server_request_duration_seconds_count` sample of `status`, if any.
    fn count(text: &str, status: u16) -> Option<String> {
        let code = format!("http_response_status_code=\"{status}\"");
        text.lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count") && l.contains(&code)
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    }

    #[tokio::test]
    async fn measures_when_the_body_has_been_sent() {
        let m = metrics();
        let app = tower::service_fn(|_: Request<Full<Bytes>>| async {
            let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"teapot")));
            *response.status_mut() = StatusCode::IM_A_TEAPOT;
            Ok::<_, Infallible>(response)
        });
        let mut svc = stage(Some(m)).layer(app);
        let response = svc.call(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(count(&m.encode(), 418), None, "recorded before the body");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"teapot");
        let text = m.encode();
        assert_eq!(count(&text, 418).as_deref(), Some("1"), "{text}");
    }

    #[tokio::test]
    async fn an_upgrade_is_measured_as_200_when_its_tunnel_closes() {
        let m = metrics();
        let upgrading = tower::service_fn(|_: Request<Full<Bytes>>| async {
            let mut down = Request::new(());
            let mut up = Response::new(());
            let scope =
                TunnelScope::start(hyper::upgrade::on(&mut down), hyper::upgrade::on(&mut up));
            let mut response = Response::new(ProxyBody::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.extensions_mut().insert(scope);
            Ok::<_, Infallible>(response)
        });
        let mut svc = stage(Some(m)).layer(upgrading);
        let response = svc.call(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        drop(response);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let text = m.encode();
        assert_eq!(count(&text, 200).as_deref(), Some("1"), "{text}");
        assert_eq!(count(&text, 101), None, "{text}");
    }

    #[test]
    fn nothing_observed_when_everything_is_off() {
        assert!(Observed::of(None, Span::none(), None).is_none());
        let observe = stage(None);
        assert!(observe.metrics.start(&get()).is_none());
        assert!(observe.log.capture(&get()).is_none());
        assert!(observe.spans.tracer().is_none());
    }
}
