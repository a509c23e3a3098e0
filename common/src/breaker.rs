//! The concurrency breaker: at most `capacity` requests execute at once, at most `queue_depth`
//! more wait for a slot, and anything beyond that is refused at once.
//!
//! Admission is one atomic compare-and-swap on the count of admitted requests (waiting plus
//! executing). Execution slots are a tokio [`Semaphore`], which is FIFO-fair and wakes exactly as
//! many waiters as permits are released. The uncontended path takes a permit with a single CAS and
//! allocates nothing; only a request that really has to wait boxes its wait future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::{Semaphore, SemaphorePermit};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{attach_guard, text_error, Guarded, LocalBody};

/// Body of the 503 sent when the queue is full (Go `http.Error`, hence the newline).
pub const QUEUE_FULL_BODY: &str = "pending request queue full\n";

/// Why a breaker could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BreakerError {
    /// The queue must hold at least one request.
    #[error("queue depth must be greater than 0, got {0}")]
    ZeroQueueDepth(usize),
    /// Initial capacity cannot exceed the maximum.
    #[error("initial capacity {initial} exceeds max concurrency {max}")]
    CapacityAboveMax {
        /// Requested initial capacity.
        initial: usize,
        /// Maximum concurrency.
        max: usize,
    },
}

/// Counts admitted requests and hands out execution slots.
#[derive(Debug)]
pub struct Breaker {
    /// Requests admitted and not yet finished (waiting + executing).
    admitted: AtomicUsize,
    /// `capacity + queue_depth`.
    max_admitted: usize,
    slots: Semaphore,
    capacity: usize,
}

/// A request's place in the breaker; released when dropped.
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a Breaker,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.breaker.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request holds while it executes: its admission and its execution slot.
#[derive(Debug)]
pub struct Execution<'a> {
    _slot: SemaphorePermit<'a>,
    _admission: Admission<'a>,
}

impl Breaker {
    /// A breaker with `capacity` execution slots and room for `queue_depth` waiting requests.
    pub fn new(queue_depth: usize, capacity: usize) -> Result<Self, BreakerError> {
        if queue_depth == 0 {
            return Err(BreakerError::ZeroQueueDepth(queue_depth));
        }
        Ok(Breaker {
            admitted: AtomicUsize::new(0),
            max_admitted: capacity + queue_depth,
            slots: Semaphore::new(capacity),
            capacity,
        })
    }

    /// The queue-proxy's breaker for `containerConcurrency = cc` (cc > 0): queue depth `10 × cc`.
    pub fn for_container_concurrency(cc: usize) -> Result<Self, BreakerError> {
        Breaker::new(cc.saturating_mul(10), cc)
    }

    /// Execution capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests currently admitted (waiting or executing).
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Admits a request unless the breaker is full.
    #[inline]
    pub fn try_admit(&self) -> Option<Admission<'_>> {
        let mut current = self.admitted.load(Ordering::Relaxed);
        loop {
            if current >= self.max_admitted {
                return None;
            }
            match self.admitted.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Admission { breaker: self }),
                Err(seen) => current = seen,
            }
        }
    }

    /// Takes an execution slot without waiting.
    #[inline]
    pub fn try_execute<'a>(
        &'a self,
        admission: Admission<'a>,
    ) -> Result<Execution<'a>, Admission<'a>> {
        match self.slots.try_acquire() {
            Ok(slot) => Ok(Execution {
                _slot: slot,
                _admission: admission,
            }),
            Err(_) => Err(admission),
        }
    }

    /// Waits for an execution slot (FIFO). Dropping the future leaves the queue.
    pub async fn execute<'a>(&'a self, admission: Admission<'a>) -> Execution<'a> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the breaker's semaphore is never closed");
        Execution {
            _slot: slot,
            _admission: admission,
        }
    }
}

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
            execution: None,
        }
    }
}

/// A request waiting for a slot: one allocation that waits, then hands back the slot, the
/// request and the service to call.
type Queued<S, ReqB> = Pin<Box<dyn Future<Output = (Execution<'static>, Request<ReqB>, S)> + Send>>;

impl<S, ReqB, B> Service<Request<ReqB>> for BreakerService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    ReqB: Send + 'static,
    B: LocalBody,
{
    type Response = Response<Guarded<B, Option<Execution<'static>>>>;
    type Error = S::Error;
    type Future = BreakerFuture<S, ReqB, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Some(breaker) = self.breaker else {
            return BreakerFuture::Running {
                future: self.inner.call(request),
                execution: None,
            };
        };
        let Some(admission) = breaker.try_admit() else {
            return BreakerFuture::Rejected {
                response: Some(Box::new(text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    QUEUE_FULL_BODY,
                ))),
            };
        };
        match breaker.try_execute(admission) {
            Ok(execution) => BreakerFuture::Running {
                future: self.inner.call(request),
                execution: Some(execution),
            },
            Err(admission) => {
                let inner = self.inner.clone();
                BreakerFuture::Waiting {
                    queued: Box::pin(async move {
                        let slot = breaker
                            .slots
                            .acquire()
                            .await
                            .expect("the breaker's semaphore is never closed");
                        let execution = Execution {
                            _slot: slot,
                            _admission: admission,
                        };
                        (execution, request, inner)
                    }),
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`BreakerService`].
    ///
    /// The rare states are boxed: a queued request (its request and a service, in the one
    /// allocation that waits for the slot) and a refusal (its response) took about 300 bytes
    /// more than a running exchange, in every request's future whether it waited or not.
    #[project = BreakerFutureProj]
    #[allow(missing_docs)]
    pub enum BreakerFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
    {
        /// Refused: the queue is full.
        Rejected { response: Option<Box<Response<Guarded<B, Option<Execution<'static>>>>>> },
        /// Queued for a slot.
        Waiting { queued: Queued<S, ReqB> },
        /// Executing; the slot is released when the response body ends.
        Running { #[pin] future: S::Future, execution: Option<Execution<'static>> },
    }
}

impl<S, ReqB, B> Future for BreakerFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    type Output = Result<Response<Guarded<B, Option<Execution<'static>>>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                BreakerFutureProj::Rejected { response } => {
                    return Poll::Ready(Ok(*response.take().expect("polled after completion")))
                }
                BreakerFutureProj::Waiting { queued } => {
                    let (execution, request, mut inner) = ready!(queued.as_mut().poll(cx));
                    let future = inner.call(request);
                    self.set(BreakerFuture::Running {
                        future,
                        execution: Some(execution),
                    });
                }
                BreakerFutureProj::Running { future, execution } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(attach_guard(response, execution.take())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_queue_depth() {
        assert_eq!(
            Breaker::new(0, 1).unwrap_err(),
            BreakerError::ZeroQueueDepth(0)
        );
    }

    #[test]
    fn admission_is_bounded_by_capacity_plus_queue() {
        let b = Breaker::new(1, 1).unwrap();
        let first = b.try_admit().expect("first admitted");
        let second = b.try_admit().expect("second admitted (queued)");
        assert!(b.try_admit().is_none(), "third must be refused");
        drop(first);
        assert!(b.try_admit().is_some());
        drop(second);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn slot_is_exclusive_until_released() {
        let b = Breaker::new(1, 1).unwrap();
        let running = b.try_execute(b.try_admit().unwrap()).ok().unwrap();
        let waiting = b.try_admit().unwrap();
        let waiting = b.try_execute(waiting).expect_err("no free slot");
        drop(running);
        assert!(b.try_execute(waiting).is_ok());
    }

    #[tokio::test]
    async fn releasing_a_slot_wakes_exactly_one_waiter() {
        let b: &'static Breaker = Box::leak(Box::new(Breaker::new(10, 1).unwrap()));
        let held = b.try_execute(b.try_admit().unwrap()).ok().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let exec = b.execute(b.try_admit().unwrap()).await;
                tx.send(i).unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                drop(exec);
            }));
            // Let this waiter queue up before the next one is spawned.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "nobody runs while the slot is held");
        drop(held);
        // FIFO: waiters run in arrival order, one at a time.
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, vec![0, 1, 2]);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaks_nothing() {
        let b: &'static Breaker = Box::leak(Box::new(Breaker::new(2, 1).unwrap()));
        let held = b.try_execute(b.try_admit().unwrap()).ok().unwrap();
        for _ in 0..2 {
            let wait = b.execute(b.try_admit().unwrap());
            let timed_out = tokio::time::timeout(std::time::Duration::from_millis(5), wait).await;
            assert!(timed_out.is_err());
        }
        assert_eq!(b.in_flight(), 1);
        drop(held);
        assert_eq!(b.in_flight(), 0);
        assert!(b.try_execute(b.try_admit().unwrap()).is_ok());
    }
}
