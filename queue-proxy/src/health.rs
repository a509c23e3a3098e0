//! Layer 3 of the main chain (spec §3.3): health checks and network probes are answered here, for
//! any path and method; every other request re-arms the drain quiet period and goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use knative_common::body::{empty, text_error, text_error_bytes, text_plain, LocalBody};
use knative_common::classify::ProbeHeaders;
use knative_common::drain::Drainer;
use knative_common::headers::{first_str, K_NETWORK_HASH, K_NETWORK_PROBE, PROBE_QUEUE};
use tower_layer::Layer;
use tower_service::Service;

use crate::readiness::Readiness;

/// Body of health checks and probes while draining.
pub const SHUTTING_DOWN_BODY: &str = "shutting down\n";
/// Body of a network probe without a hash.
pub const MISSING_HASH_BODY: &str =
    "a probe request must contain a non-empty \"K-Network-Hash\" header\n";

/// See the module documentation.
#[derive(Clone, Copy)]
pub struct HealthLayer {
    drainer: &'static Drainer,
    readiness: &'static Readiness,
}

impl HealthLayer {
    /// Answers from the drain state and the user container's readiness.
    pub fn new(drainer: &'static Drainer, readiness: &'static Readiness) -> Self {
        HealthLayer { drainer, readiness }
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = Health<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Health {
            inner,
            drainer: self.drainer,
            readiness: self.readiness,
        }
    }
}

/// See [`HealthLayer`].
#[derive(Clone)]
pub struct Health<S> {
    inner: S,
    drainer: &'static Drainer,
    readiness: &'static Readiness,
}

type ReadinessCheck = Pin<Box<dyn Future<Output = bool> + Send>>;

impl<S, ReqB, B> Service<Request<ReqB>> for Health<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = HealthFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let headers = request.headers();
        let probe_headers = ProbeHeaders::of(headers);
        if probe_headers.is_health_check() {
            if self.drainer.is_draining() {
                return HealthFuture::answer(text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SHUTTING_DOWN_BODY,
                ));
            }
            let probe = first_str(headers, &K_NETWORK_PROBE);
            if probe != PROBE_QUEUE {
                let body = format!("unexpected probe header value: {probe}\n");
                return HealthFuture::answer(text_error_bytes(
                    StatusCode::BAD_REQUEST,
                    Bytes::from(body),
                ));
            }
            return HealthFuture::Probing {
                check: Box::pin(self.readiness.check()),
            };
        }
        if probe_headers.is_network_probe() {
            if self.drainer.is_draining() {
                return HealthFuture::answer(text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SHUTTING_DOWN_BODY,
                ));
            }
            let Some(hash) = headers
                .get(&K_NETWORK_HASH)
                .filter(|h| !h.is_empty())
                .cloned()
            else {
                return HealthFuture::answer(text_error(
                    StatusCode::BAD_REQUEST,
                    MISSING_HASH_BODY,
                ));
            };
            let mut response = empty(StatusCode::OK);
            response.headers_mut().insert(K_NETWORK_HASH, hash);
            return HealthFuture::answer(response);
        }
        if request.method() == Method::OPTIONS {
            return self.call_options(request);
        }
        self.drainer.on_request();
        HealthFuture::Inner {
            future: self.inner.call(request),
        }
    }
}

impl<S> Health<S> {
    /// [`Service::call`] for an `OPTIONS` request. Out of line: the target's comparison hands
    /// the request's address to another function, after which moving the request on copies it
    /// (272 bytes); in `call` that copy was made for every request.
    #[inline(never)]
    fn call_options<ReqB, B>(&mut self, request: Request<ReqB>) -> HealthFuture<S::Future, B>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
        B: LocalBody,
    {
        // Go's server answers `OPTIONS *` itself before any handler.
        if request.uri() == "*" {
            return HealthFuture::answer(empty(StatusCode::OK));
        }
        self.drainer.on_request();
        HealthFuture::Inner {
            future: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Health`].
    #[project = HealthFutureProj]
    #[allow(missing_docs)]
    pub enum HealthFuture<F, B> {
        Inner { #[pin] future: F },
        // Boxed: an answer is rare (probes), and inline it made every request's future the
        // size of the whole chain's response (472 bytes, against 360 for the inner future).
        Answer { response: Option<Box<Response<B>>> },
        Probing { check: ReadinessCheck },
    }
}

impl<F, B> HealthFuture<F, B> {
    fn answer(response: Response<B>) -> Self {
        HealthFuture::Answer {
            response: Some(Box::new(response)),
        }
    }
}

impl<F, B, E> Future for HealthFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: LocalBody,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HealthFutureProj::Inner { future } => future.poll(cx),
            HealthFutureProj::Answer { response } => {
                Poll::Ready(Ok(*response.take().expect("polled after completion")))
            }
            HealthFutureProj::Probing { check } => {
                let ready = ready!(check.as_mut().poll(cx));
                Poll::Ready(Ok(if ready {
                    text_plain(StatusCode::OK, PROBE_QUEUE)
                } else {
                    empty(StatusCode::SERVICE_UNAVAILABLE)
                }))
            }
        }
    }
}

/// Header value helper for tests.
#[allow(dead_code)]
fn header(v: &'static str) -> HeaderValue {
    HeaderValue::from_static(v)
}
