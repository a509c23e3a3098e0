//! [`BreakerLayer`]: the queue-proxy's containerConcurrency breaker as a tower layer.
//!
//! A request that finds a free slot runs at once; one that must wait keeps the breaker's named
//! wait future ([`Acquire`]) in its response future, with its request and a clone of the inner
//! service in one allocation, and calls the service when the slot is handed over.
//!
//! Why the request and service are boxed: inline they made every request's future about 300
//! bytes larger, and the future is moved from layer to layer on every request: at
//! containerConcurrency 0, which never waits, that cost 288 instructions per request in
//! `memcpy` (`measure.py qp 0 10000`: 18,756 against 18,468), more than the allocation costs
//! the requests that wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Acquire, Breaker, Entry, Permit};
use crate::body::{attach_guard, text_error, Guarded, LocalBody};

/// Body of the 503 sent when the queue is full (Go `http.Error`, hence the newline).
pub const QUEUE_FULL_BODY: &str = "pending request queue full\n";

/// Tower layer that puts a [`Breaker`] in front of the inner service. `None` = unlimited (CC 0).
#[derive(Clone, Copy, Debug)]
pub struct BreakerLayer {
    breaker: Option<&'static Breaker>,
}

impl BreakerLayer {
    /// Layer over a process-lifetime breaker, or a pass-through when `None`.
    pub fn new(breaker: Option<&'static Breaker>) -> Self {
        BreakerLayer { breaker }
    }

    /// The breaker, if requests are limited at all.
    pub fn breaker(&self) -> Option<&'static Breaker> {
        self.breaker
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker,
        }
    }
}

/// See [`BreakerLayer`].
#[derive(Clone, Debug)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Option<&'static Breaker>,
}

impl<S> BreakerService<S> {
    /// Calls the inner service directly, bypassing the breaker (kubelet probes, spec §3.8 step 1).
    pub fn call_unlimited<ReqB, B>(&mut self, request: Request<ReqB>) -> BreakerFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
    {
        BreakerFuture::Running {
            future: self.inner.call(request),
            permit: None,
        }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for BreakerService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    B: LocalBody,
{
    type Response = Response<Guarded<B, Option<Permit<'static>>>>;
    type Error = S::Error;
    type Future = BreakerFuture<S, ReqB, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Some(breaker) = self.breaker else {
            return BreakerFuture::Running {
                future: self.inner.call(request),
                permit: None,
            };
        };
        match breaker.enter() {
            Entry::Run(permit) => BreakerFuture::Running {
                future: self.inner.call(request),
                permit: Some(permit),
            },
            Entry::Wait(acquire) => BreakerFuture::Waiting {
                acquire,
                queued: Some(Box::write(Box::new_uninit(), (request, self.inner.clone()))),
            },
            Entry::Full => BreakerFuture::rejected(),
        }
    }
}

pin_project! {
    /// Response future of [`BreakerService`].
    ///
    /// The rare states' bulk is boxed (module docs): a refusal's response, a waiting request
    /// and its service.
    #[project = BreakerFutureProj]
    #[allow(missing_docs)]
    pub enum BreakerFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
    {
        /// Refused: the queue is full.
        Rejected { response: Option<Box<Response<B>>> },
        /// Queued for a slot, with the request and the service to call once it has one.
        Waiting { acquire: Acquire<'static>, queued: Option<Box<(Request<ReqB>, S)>> },
        /// Executing; the slot is released when the response body ends.
        Running { #[pin] future: S::Future, permit: Option<Permit<'static>> },
    }
}

impl<S, ReqB, B> BreakerFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>>,
    B: LocalBody,
{
    #[cold]
    fn rejected() -> Self {
        BreakerFuture::Rejected {
            response: Some(Box::new(text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                QUEUE_FULL_BODY,
            ))),
        }
    }
}

/// A response and the breaker slot its request holds (`None`: none), as
/// [`BreakerFuture::poll_with_permit`] gives them.
pub type WithPermit<B> = (Response<B>, Option<Permit<'static>>);

impl<S, ReqB, B> BreakerFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    /// The response with the slot's permit beside it (`None`: no slot held), for a caller that
    /// keeps the permit with guards of its own: one body wrapper fewer, and so one move fewer of
    /// the whole response on its way out. [`Future::poll`] attaches it to the body.
    pub fn poll_with_permit(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<WithPermit<B>, S::Error>> {
        loop {
            match self.as_mut().project() {
                BreakerFutureProj::Running { future, permit } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok((response, permit.take())));
                }
                BreakerFutureProj::Waiting { acquire, queued } => {
                    // The queue-proxy's breaker has no waiting cap: a wait only ends with a slot.
                    let Ok(permit) = ready!(acquire.poll_permit(cx)) else {
                        self.set(BreakerFuture::rejected());
                        continue;
                    };
                    let future = {
                        let mut queued = queued.take().expect("polled after completion");
                        let request = queued.0;
                        queued.1.call(request)
                    };
                    self.set(BreakerFuture::Running {
                        future,
                        permit: Some(permit),
                    });
                }
                BreakerFutureProj::Rejected { response } => {
                    let response = *response.take().expect("polled after completion");
                    return Poll::Ready(Ok((response, None)));
                }
            }
        }
    }
}

impl<S, ReqB, B> Future for BreakerFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    type Output = Result<Response<Guarded<B, Option<Permit<'static>>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (response, permit) = ready!(self.poll_with_permit(cx))?;
        Poll::Ready(Ok(attach_guard(response, permit)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use crate::body::ProxyBody;

    use super::*;

    fn leak<T>(value: T) -> &'static T {
        Box::leak(Box::new(value))
    }

    /// An app that answers its request's number after `delay` and records how many requests
    /// it runs at once.
    #[derive(Clone)]
    struct App {
        delay: Duration,
        running: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
    }

    type AppFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    impl Service<Request<u32>> for App {
        type Response = Response<ProxyBody>;
        type Error = Infallible;
        type Future = AppFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<u32>) -> AppFuture {
            let (running, max, delay) = (self.running.clone(), self.max.clone(), self.delay);
            Box::pin(async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                max.fetch_max(now, SeqCst);
                tokio::time::sleep(delay).await;
                running.fetch_sub(1, SeqCst);
                Ok(Response::new(ProxyBody::full(Bytes::from(
                    request.into_body().to_string(),
                ))))
            })
        }
    }

    fn app(delay: Duration, running: Arc<AtomicUsize>, max: Arc<AtomicUsize>) -> App {
        App {
            delay,
            running,
            max,
        }
    }

    /// Polls `future` once.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    #[test]
    fn container_concurrency_breaker() {
        let b = Breaker::for_container_concurrency(3).unwrap();
        assert_eq!((b.capacity(), b.max_pending), (3, 33));
        assert_eq!(
            Breaker::for_container_concurrency(0).unwrap_err(),
            super::super::BreakerError::ZeroConcurrency
        );
        assert!(Breaker::for_container_concurrency(usize::MAX).is_err());
    }

    #[tokio::test]
    async fn full_queue_is_refused_with_503_and_probes_bypass() {
        let b = leak(Breaker::for_container_concurrency(1).unwrap());
        let (running, max) = (Arc::default(), Arc::default());
        let mut svc =
            BreakerLayer::new(Some(b)).layer(app(Duration::from_millis(50), running, max));
        // One runs, ten wait (queue depth 10 × cc): all admitted.
        let admitted: Vec<_> = (0..11).map(|i| svc.call(Request::new(i))).collect();
        assert_eq!((b.pending(), b.in_flight()), (11, 1));
        let refused = svc.call(Request::new(99)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], QUEUE_FULL_BODY.as_bytes());
        // A probe passes a full breaker.
        let probe = svc.call_unlimited(Request::new(7)).await.unwrap();
        assert_eq!(probe.status(), StatusCode::OK);
        drop(probe);
        // The admitted ones all complete, in order, one at a time.
        let mut tasks = Vec::new();
        for future in admitted {
            tasks.push(tokio::spawn(async move {
                let response = future.await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), Bytes::from(i.to_string()));
        }
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_body_ends() {
        let b = leak(Breaker::for_container_concurrency(2).unwrap());
        let (running, max) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let mut svc = BreakerLayer::new(Some(b)).layer(app(Duration::ZERO, running, max.clone()));
        let first = svc.call(Request::new(1)).await.unwrap();
        let second = svc.call(Request::new(2)).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let mut third = Box::pin(svc.call(Request::new(3)));
        assert!(poll_once(&mut third).is_pending());
        assert_eq!(b.waiting(), 1);
        drop(first);
        let third = third.await.unwrap();
        drop((second, third));
        assert_eq!((b.pending(), b.in_flight()), (0, 0));
        assert!(max.load(SeqCst) <= 2);
    }

    #[tokio::test]
    async fn a_request_that_times_out_while_queued_leaves_the_queue() {
        let b = leak(Breaker::for_container_concurrency(1).unwrap());
        let (running, max) = (Arc::default(), Arc::default());
        let mut svc = BreakerLayer::new(Some(b)).layer(app(Duration::ZERO, running, max));
        let held = svc.call(Request::new(0)).await.unwrap();
        for i in 1..4 {
            // Queued, polled (so linked in the wait list), then dropped by the timeout.
            let waited = tokio::time::timeout(Duration::from_millis(5), svc.call(Request::new(i)));
            assert!(waited.await.is_err());
            // Dropped before its first poll: still admitted only.
            drop(svc.call(Request::new(i)));
        }
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (1, 1, 0));
        drop(held);
        assert_eq!((b.pending(), b.in_flight()), (0, 0));
        let next = svc.call(Request::new(5)).await.unwrap();
        assert_eq!(b.in_flight(), 1);
        drop(next);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_never_exceed_cc() {
        let b = leak(Breaker::for_container_concurrency(3).unwrap());
        let (running, max) = (Arc::default(), Arc::<AtomicUsize>::default());
        let svc =
            BreakerLayer::new(Some(b)).layer(app(Duration::from_millis(1), running, max.clone()));
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let response = svc.call(Request::new(i)).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(max.load(SeqCst) <= 3);
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (0, 0, 0));
    }
}
