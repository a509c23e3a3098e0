//! Layer 9 of the main chain (spec §3.8): the kubelet-probe bypass, autoscaler accounting, the
//! `K-Original-Host` rewrite and the concurrency breaker.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use knative_common::body::{attach_guard, Guarded, LocalBody};
use knative_common::breaker::{BreakerFuture, BreakerLayer, BreakerService, Execution};
use knative_common::classify::{is_kubelet_probe, is_proxied};
use knative_common::proxy::rewrite::restore_original_host;
use knative_common::stats::{InFlight, RequestStats};
use tower_layer::Layer;
use tower_service::Service;

/// See the module documentation.
#[derive(Clone, Copy)]
pub struct QueueHandlerLayer {
    stats: &'static RequestStats,
    breaker: BreakerLayer,
}

impl QueueHandlerLayer {
    /// Accounting into `stats`, admission through `breaker` (none when CC = 0).
    pub fn new(stats: &'static RequestStats, breaker: BreakerLayer) -> Self {
        QueueHandlerLayer { stats, breaker }
    }
}

impl<S> Layer<S> for QueueHandlerLayer {
    type Service = QueueHandler<S>;
    fn layer(&self, inner: S) -> Self::Service {
        QueueHandler {
            stats: self.stats,
            breaker: self.breaker.layer(inner),
        }
    }
}

/// See [`QueueHandlerLayer`].
#[derive(Clone)]
pub struct QueueHandler<S> {
    stats: &'static RequestStats,
    breaker: BreakerService<S>,
}

/// Response body of [`QueueHandler`].
pub type QueueHandlerBody<B> = Guarded<Guarded<B, Option<Execution<'static>>>, InFlight<'static>>;

impl<S, ReqB, B> Service<Request<ReqB>> for QueueHandler<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    B: LocalBody,
{
    type Response = Response<QueueHandlerBody<B>>;
    type Error = S::Error;
    type Future = QueueHandlerFuture<S, ReqB, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.breaker.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        if is_kubelet_probe(request.headers()) {
            return QueueHandlerFuture {
                future: self.breaker.call_unlimited(request),
                in_flight: None,
            };
        }
        let in_flight = self.stats.request_in(is_proxied(request.headers()));
        restore_original_host(&mut request);
        QueueHandlerFuture {
            future: self.breaker.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`QueueHandler`]; the stats "out" event fires when the response ends.
    pub struct QueueHandlerFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        future: BreakerFuture<S, ReqB, B>,
        in_flight: Option<InFlight<'static>>,
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
        let response = ready!(this.future.poll(cx))?;
        Poll::Ready(Ok(match this.in_flight.take() {
            Some(in_flight) => attach_guard(response, in_flight),
            None => response.map(Guarded::unguarded),
        }))
    }
}
