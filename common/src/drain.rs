//! The drain state machine (queue-proxy §5.1), shared by SIGTERM and `/wait-for-drain`.
//!
//! [`Drainer::drain`] enters *draining* and blocks every caller until a quiet period passes with no
//! regular request; [`Drainer::on_request`] (called for every regular request, one relaxed atomic
//! load when not draining) pushes the end of the quiet period back. [`Drainer::reset`] cancels a
//! drain and releases every waiter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The queue-proxy's quiet period.
pub const QUEUE_PROXY_QUIET_PERIOD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Draining(u64),
    Drained,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Drainer {
    quiet: Duration,
    origin: Instant,
    /// True from the start of a drain until a reset (stays true after the drain finished).
    draining: AtomicBool,
    /// Nanoseconds since `origin` of the last regular request seen while draining.
    last_request: AtomicU64,
    phase: watch::Sender<Phase>,
    epochs: AtomicU64,
}

impl Drainer {
    /// A drainer with the given quiet period.
    pub fn new(quiet: Duration) -> Self {
        Drainer {
            quiet,
            origin: Instant::now(),
            draining: AtomicBool::new(false),
            last_request: AtomicU64::new(0),
            phase: watch::Sender::new(Phase::Idle),
            epochs: AtomicU64::new(0),
        }
    }

    /// Whether a drain has started (and not been reset).
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records a regular request: while draining, the quiet period restarts from now.
    #[inline]
    pub fn on_request(&self) {
        if self.is_draining() {
            self.touch();
        }
    }

    fn touch(&self) {
        let nanos = self.origin.elapsed().as_nanos() as u64;
        self.last_request.fetch_max(nanos, Ordering::AcqRel);
    }

    fn quiet_until(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last_request.load(Ordering::Acquire)) + self.quiet
    }

    /// Starts a drain (or joins the running one) and waits until it finishes or is reset.
    /// Returns at once if a drain already finished.
    pub async fn drain(&'static self) {
        let mut rx = self.phase.subscribe();
        let mut started = None;
        self.phase.send_if_modified(|phase| {
            if *phase != Phase::Idle {
                return false;
            }
            let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
            self.touch();
            self.draining.store(true, Ordering::Release);
            *phase = Phase::Draining(epoch);
            started = Some(epoch);
            true
        });
        if let Some(epoch) = started {
            tokio::spawn(self.quiet_timer(epoch));
        }
        let current = *rx.borrow_and_update();
        let Phase::Draining(epoch) = current else {
            return;
        };
        let _ = rx.wait_for(|p| *p != Phase::Draining(epoch)).await;
    }

    async fn quiet_timer(&'static self, epoch: u64) {
        loop {
            tokio::time::sleep_until(self.quiet_until()).await;
            if *self.phase.borrow() != Phase::Draining(epoch) {
                return;
            }
            if Instant::now() >= self.quiet_until() {
                self.phase.send_if_modified(|p| {
                    if *p == Phase::Draining(epoch) {
                        *p = Phase::Drained;
                        true
                    } else {
                        false
                    }
                });
                return;
            }
        }
    }

    /// Cancels a drain: every blocked [`Drainer::drain`] returns, health checks pass again, and a
    /// later drain waits a full quiet period. No-op when no drain is active.
    pub fn reset(&self) {
        self.phase.send_if_modified(|p| {
            if *p == Phase::Idle {
                return false;
            }
            *p = Phase::Idle;
            self.draining.store(false, Ordering::Release);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(quiet_ms: u64) -> &'static Drainer {
        Box::leak(Box::new(Drainer::new(Duration::from_millis(quiet_ms))))
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_the_quiet_period_and_requests_rearm_it() {
        let d = leak(1000);
        assert!(!d.is_draining());
        let start = Instant::now();
        let waiter = tokio::spawn(d.drain());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(d.is_draining());
        d.on_request();
        waiter.await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(1600));
        assert!(d.is_draining(), "stays draining after completion");
        // A drain after completion returns at once.
        let again = Instant::now();
        d.drain().await;
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_all_return() {
        let d = leak(100);
        let a = tokio::spawn(d.drain());
        let b = tokio::spawn(d.drain());
        a.await.unwrap();
        b.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reset_releases_waiters_and_a_new_drain_waits_in_full() {
        let d = leak(1000);
        let waiter = tokio::spawn(d.drain());
        tokio::time::sleep(Duration::from_millis(10)).await;
        d.reset();
        waiter.await.unwrap();
        assert!(!d.is_draining());
        d.reset(); // harmless
        let start = Instant::now();
        d.drain().await;
        assert!(start.elapsed() >= Duration::from_millis(1000));
    }
}

/// Counts requests inside the proxying stages (queue-proxy §3.4): read at shutdown to wait for
/// in-flight work, websockets and h2c streams included.
#[derive(Debug, Default)]
pub struct InFlightCounter {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Decrements the [`InFlightCounter`] when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    counter: &'static InFlightCounter,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.counter.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.counter.idle.notify_waiters();
        }
    }
}

impl InFlightCounter {
    /// Counts one request until the guard drops.
    #[inline]
    pub fn enter(&'static self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard { counter: self }
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight, or `limit` passes; returns whether it reached zero.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.current() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.current() == 0;
            }
        }
    }
}

/// Tower layer counting requests in an [`InFlightCounter`] until their response ends.
#[derive(Clone, Copy, Debug)]
pub struct TrackInFlightLayer {
    counter: &'static InFlightCounter,
}

impl TrackInFlightLayer {
    /// Layer over a process-lifetime counter.
    pub fn new(counter: &'static InFlightCounter) -> Self {
        TrackInFlightLayer { counter }
    }
}

impl<S> tower_layer::Layer<S> for TrackInFlightLayer {
    type Service = TrackInFlight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TrackInFlight {
            inner,
            counter: self.counter,
        }
    }
}

/// See [`TrackInFlightLayer`].
#[derive(Clone, Debug)]
pub struct TrackInFlight<S> {
    inner: S,
    counter: &'static InFlightCounter,
}

impl<S, R, B> tower_service::Service<R> for TrackInFlight<S>
where
    S: tower_service::Service<R, Response = http::Response<B>>,
{
    type Response = http::Response<crate::body::Guarded<B, InFlightGuard>>;
    type Error = S::Error;
    type Future = crate::body::GuardedFuture<S::Future, InFlightGuard>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let guard = self.counter.enter();
        crate::body::GuardedFuture::new(self.inner.call(request), Some(guard))
    }
}
