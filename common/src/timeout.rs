//! Request timeouts (queue-proxy spec §3.5, activator §2.11).
//!
//! Three timers start when the request enters this stage, so time spent queued in the breaker
//! counts:
//! - **total**: always armed;
//! - **response-start**: fires only if nothing at all has been written toward the client;
//! - **idle**: fires when the gap since the last write (initially: since the start) reaches it.
//!
//! Before the response head is written any of them answers `504` with the configured body and
//! drops the inner future (which cancels the upstream request or the breaker wait). After the head
//! went out, total and idle *append* the message to the body and end it cleanly, as upstream does;
//! response-start is then satisfied. Upgraded connections have no body: the tunnel is cut at the
//! total deadline (documented Knative behaviour); the idle/response-start interaction with tunnels
//! is a Go accident we do not copy.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{text_plain, BodyError, LocalBody};
use crate::proxy::TunnelScope;

/// The three per-request limits; `None` disables response-start / idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Total time for the whole request, body included.
    pub total: Duration,
    /// Maximum time until the response head is written.
    pub response_start: Option<Duration>,
    /// Maximum gap between writes toward the client.
    pub idle: Option<Duration>,
}

/// Tower layer enforcing [`Timeouts`], answering with `message` (`request timeout` in the
/// queue-proxy, `activator request timeout` in the activator).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeouts: Timeouts,
    message: &'static str,
}

impl TimeoutLayer {
    /// Layer with fixed timeouts.
    pub fn new(timeouts: Timeouts, message: &'static str) -> Self {
        TimeoutLayer { timeouts, message }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    /// Called for each connection, from the runtime that serves it ([`TimerReuse::current`]).
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeouts: self.timeouts,
            message: self.message,
            timers: TimerReuse::current(),
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    timeouts: Timeouts,
    message: &'static str,
    timers: TimerReuse,
}

/// Request timers kept for reuse: each thread keeps the last few timers its requests gave back.
///
/// A new tokio timer is inserted into the timer wheel when first polled and removed from it when
/// dropped (a lock of the time driver each time), and every request arms one as it waits for its
/// response. A timer given back stays registered: the next request moves its deadline later,
/// which is an atomic update of the registered entry (or not even that: [`REARM_SLACK`]). Timers
/// are kept per thread and for one runtime at a time (the one whose requests last gave some
/// back), so a timer is only reused by requests of the runtime it belongs to.
///
/// A timer is given back only from a poll of its request (the response head ready, the body at
/// its end), after one more poll with a no-op waker: the waker of the task that waited on it, and
/// with it that task's allocation, is released then, not when the timer is next reused (see
/// `Timer::give_back`). A request dropped unfinished (cancelled, or its runtime shutting down)
/// drops its timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerReuse(Option<tokio::runtime::Id>);

impl TimerReuse {
    /// Reuse among the requests of the runtime this is called from; none outside a runtime.
    pub fn current() -> Self {
        TimerReuse(tokio::runtime::Handle::try_current().ok().map(|h| h.id()))
    }

    /// Reuse among the requests of `runtime`.
    pub fn of(runtime: &tokio::runtime::Handle) -> Self {
        TimerReuse(Some(runtime.id()))
    }

    /// No reuse: each request makes its own timer.
    pub const NONE: TimerReuse = TimerReuse(None);
}

/// Timers a thread keeps: at most this many, enough for the requests one thread has in flight
/// under load to find one. A spare holds no waker, only itself (a 128-byte allocation, and its
/// entry in the timer wheel until its deadline passes): 7 KiB a thread when all are kept.
const SPARE_TIMERS: usize = 64;

struct SpareTimers {
    runtime: Option<tokio::runtime::Id>,
    sleeps: Vec<Pin<Box<Armed>>>,
}

pin_project! {
    /// A timer, and the waker it was last polled with while it stayed pending (the data and
    /// vtable addresses `Waker::will_wake` compares; `WAKER_NONE` when unknown). Kept in the
    /// timer's allocation, not in [`Timer`]: 16 more bytes in every request's future cost the
    /// queue-proxy 90 instructions per request in moves (`measure.py qp 0 10000`).
    struct Armed {
        #[pin]
        sleep: Sleep,
        polled_with: (usize, usize),
    }
}

thread_local! {
    static SPARES: std::cell::RefCell<SpareTimers> = const {
        std::cell::RefCell::new(SpareTimers {
            runtime: None,
            sleeps: Vec::new(),
        })
    };
}

impl SpareTimers {
    fn take(runtime: tokio::runtime::Id) -> Option<Pin<Box<Armed>>> {
        SPARES
            .try_with(|spares| {
                let mut spares = spares.try_borrow_mut().ok()?;
                if spares.runtime != Some(runtime) {
                    return None;
                }
                spares.sleeps.pop()
            })
            .ok()
            .flatten()
    }

    fn put(runtime: tokio::runtime::Id, sleep: Pin<Box<Armed>>) {
        let _ = SPARES.try_with(|spares| {
            let Ok(mut spares) = spares.try_borrow_mut() else {
                return;
            };
            if spares.runtime != Some(runtime) {
                // Another runtime's timers (tests run one runtime after another): dropped.
                spares.sleeps.clear();
                spares.runtime = Some(runtime);
            }
            if spares.sleeps.len() < SPARE_TIMERS {
                spares.sleeps.push(sleep);
            }
        });
    }
}

/// How much earlier than a request's deadline a reused timer may stay armed. Moving a registered
/// tokio timer costs a clock conversion and an atomic update; a timer left armed a little early
/// wakes, finds the deadline not reached and is moved then, so a deadline still fires on time.
const REARM_SLACK: Duration = Duration::from_secs(1);

/// A request's timer: none until it is needed, then a spare one or a new one; given back to the
/// spares when the request is over ([`Timer::give_back`]), dropped if it is dropped unfinished.
struct Timer {
    sleep: Option<Pin<Box<Armed>>>,
    reuse: TimerReuse,
}

/// [`Armed::polled_with`] when not known.
const WAKER_NONE: (usize, usize) = (0, 0);

/// The addresses `Waker::will_wake` compares.
fn waker_key(waker: &std::task::Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl Timer {
    fn new(reuse: TimerReuse) -> Self {
        Timer { sleep: None, reuse }
    }

    /// Ready once `deadline` has passed. The timer is moved only when it is armed later than
    /// `deadline`, or more than [`REARM_SLACK`] earlier.
    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let armed = match &mut self.sleep {
            Some(armed) => armed,
            empty => empty.insert(match self.reuse.0.and_then(SpareTimers::take) {
                Some(spare) => spare,
                None => {
                    #[cfg(test)]
                    tests::TIMERS_MADE.with(|made| made.set(made.get() + 1));
                    // The new timer belongs to the runtime polling it: given back only if that
                    // is the one whose spares it would join (a check only when one is made).
                    if self.reuse.0.is_some() && self.reuse != TimerReuse::current() {
                        self.reuse = TimerReuse::NONE;
                    }
                    Box::pin(Armed {
                        sleep: sleep_until(deadline),
                        polled_with: WAKER_NONE,
                    })
                }
            }),
        };
        let mut armed = armed.as_mut().project();
        let key = waker_key(cx.waker());
        loop {
            let at = armed.sleep.deadline();
            if at > deadline || at + REARM_SLACK <= deadline {
                armed.sleep.as_mut().reset(deadline);
            } else if *armed.polled_with == key && !armed.sleep.is_elapsed() {
                // Polled again before it fired (the request's task woken for something else: a
                // breaker slot, the upstream's answer), still armed for this deadline, and with
                // a waker that wakes the task tokio's timer holds: its poll would only store
                // that waker again (80 instructions per waiting request at CC=10).
                return Poll::Pending;
            }
            // Out of coop budget, tokio's `Sleep` returns `Pending` without giving its entry
            // the waker (it only asks the task to yield): such a poll must not count as
            // registered, or the next one would be skipped and the timer never wake the task.
            let registers = tokio::task::coop::has_budget_remaining();
            if armed.sleep.as_mut().poll(cx).is_pending() {
                *armed.polled_with = if registers { key } else { WAKER_NONE };
                return Poll::Pending;
            }
            *armed.polled_with = WAKER_NONE;
            if armed.sleep.deadline() >= deadline || Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // Woken early: armed for a time before the deadline.
            armed.sleep.as_mut().reset(deadline);
        }
    }

    /// Gives the timer back to this thread's spares. Called only while a task of the timer's
    /// runtime is being polled (so its time driver is running: tokio panics when a timer of a
    /// shut-down driver is polled).
    ///
    /// The timer still holds the waker it was last polled with (tokio stores it at each poll,
    /// before looking whether the timer fired, and only a firing takes it out): the task of the
    /// request that waited, which would stay allocated as long as the spare does. One poll with
    /// a no-op waker replaces it (about 80 instructions). The poll is unconstrained: out of coop
    /// budget, tokio returns before storing the waker.
    fn give_back(&mut self) {
        if let (Some(mut armed), Some(runtime)) = (self.sleep.take(), self.reuse.0) {
            let mut noop = Context::from_waker(std::task::Waker::noop());
            let spare = armed.as_mut().project();
            let _ = std::pin::pin!(tokio::task::coop::unconstrained(spare.sleep)).poll(&mut noop);
            *spare.polled_with = WAKER_NONE;
            SpareTimers::put(runtime, armed);
        }
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("armed", &self.sleep.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> TimeoutService<S> {
    /// Starts the timers for one request with explicit limits (the activator takes them from the
    /// revision) and calls the inner service.
    pub fn call_with<ReqB, B>(
        &mut self,
        request: Request<ReqB>,
        timeouts: Timeouts,
    ) -> TimeoutFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
    {
        let start = Instant::now();
        TimeoutFuture::new(
            start,
            self.inner.call(request),
            timeouts,
            self.message,
            self.timers,
        )
    }
}

impl<F> TimeoutFuture<F> {
    /// The timers of one request started at `start` (taken before the request was handed on),
    /// around the inner response `future`: what [`TimeoutService::call_with`] makes, for a
    /// caller that builds the inner future itself (e.g. from a handler it owns, with no
    /// service to clone). `timers`: where its timer may come from and go back to.
    pub fn new(
        start: Instant,
        future: F,
        timeouts: Timeouts,
        message: &'static str,
        timers: TimerReuse,
    ) -> Self {
        TimeoutFuture {
            future: Some(future),
            clock: Clock::new(start, timeouts),
            timer: Timer::new(timers),
            message,
        }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for TimeoutService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: LocalBody,
{
    type Response = Response<TimeoutBody<B>>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let timeouts = self.timeouts;
        self.call_with(request, timeouts)
    }
}

/// Deadlines of one request.
#[derive(Clone, Copy, Debug)]
struct Clock {
    total_deadline: Instant,
    response_start_deadline: Option<Instant>,
    idle: Option<Duration>,
    start: Instant,
}

impl Clock {
    fn new(start: Instant, t: Timeouts) -> Self {
        Clock {
            total_deadline: start + t.total,
            response_start_deadline: t.response_start.map(|d| start + d),
            idle: t.idle,
            start,
        }
    }

    /// Earliest moment a timer can fire before anything was written.
    fn head_deadline(&self) -> Instant {
        let mut deadline = self.total_deadline;
        if let Some(rs) = self.response_start_deadline {
            deadline = deadline.min(rs);
        }
        if let Some(idle) = self.idle {
            deadline = deadline.min(self.start + idle);
        }
        deadline
    }
}

/// Earliest moment a timer can fire once the head was written at/after `last_write`.
fn body_deadline(total_deadline: Instant, idle: Option<Duration>, last_write: Instant) -> Instant {
    match idle {
        Some(idle) => total_deadline.min(last_write + idle),
        None => total_deadline,
    }
}

pin_project! {
    /// Response future of [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        future: Option<F>,
        clock: Clock,
        timer: Timer,
        message: &'static str,
    }
}

impl<F, B, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: LocalBody,
{
    type Output = Result<Response<TimeoutBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let inner = this
            .future
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        if let Poll::Ready(result) = inner.poll(cx) {
            let response = result?;
            let clock = *this.clock;
            if let Some(scope) = response.extensions().get::<TunnelScope>() {
                scope.set_deadline(clock.total_deadline.into_std());
            }
            // A locally built answer (a 502's text, ...) is written at once and keeps its exact
            // length, so it goes out with `Content-Length` as upstream's do.
            if response.body().is_fixed() {
                this.timer.give_back();
                return Poll::Ready(Ok(response.map(TimeoutBody::local)));
            }
            // The response head is the first write (its time matters to the idle timer only).
            let written = if clock.idle.is_some() {
                Instant::now()
            } else {
                clock.start
            };
            // The body's timer, when it needs one, is the one that waited for the head (given
            // back when the body ends).
            let timer = Timer {
                sleep: this.timer.sleep.take(),
                reuse: this.timer.reuse,
            };
            return Poll::Ready(Ok(response.map(|body| {
                TimeoutBody::running(body, clock, written, this.message, timer)
            })));
        }
        ready!(this.timer.poll_until(this.clock.head_deadline(), cx));
        // Timed out before the head: cancel the inner work and answer 504.
        this.timer.give_back();
        this.future.set(None);
        Poll::Ready(Ok(
            text_plain(StatusCode::GATEWAY_TIMEOUT, this.message).map(TimeoutBody::local)
        ))
    }
}

pin_project! {
    /// Response body that enforces the total and idle timers while streaming.
    pub struct TimeoutBody<B> {
        #[pin]
        body: B,
        state: BodyState,
        // Boxed (inside): most bodies end without ever waiting, and the response, with this body
        // inside, is moved by every layer it passes on its way out.
        timer: Timer,
    }
}

#[derive(Debug)]
enum BodyState {
    /// No timers (a locally generated body).
    Unlimited,
    /// Streaming the inner body under the total and idle timers (what of the [`Clock`] the
    /// body needs: every byte here is moved with the response through each layer).
    Running {
        total_deadline: Instant,
        idle: Option<Duration>,
        last_write: Instant,
        message: &'static str,
    },
    /// A timer fired: the message is appended next.
    Appending { message: &'static str },
    /// Ended (after the message, or the inner end).
    Done,
}

impl<B> TimeoutBody<B> {
    fn running(
        body: B,
        clock: Clock,
        written: Instant,
        message: &'static str,
        timer: Timer,
    ) -> Self {
        TimeoutBody {
            body,
            state: BodyState::Running {
                total_deadline: clock.total_deadline,
                idle: clock.idle,
                last_write: written,
                message,
            },
            timer,
        }
    }

    fn local(body: B) -> Self {
        TimeoutBody {
            body,
            state: BodyState::Unlimited,
            timer: Timer::new(TimerReuse::NONE),
        }
    }
}

impl<B: LocalBody> LocalBody for TimeoutBody<B> {
    fn full(bytes: Bytes) -> Self {
        TimeoutBody::local(B::full(bytes))
    }
    #[inline]
    fn is_fixed(&self) -> bool {
        matches!(self.state, BodyState::Unlimited) && self.body.is_fixed()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        loop {
            match this.state {
                BodyState::Unlimited => return this.body.poll_frame(cx),
                BodyState::Done => return Poll::Ready(None),
                BodyState::Appending { message } => {
                    let message = *message;
                    *this.state = BodyState::Done;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        message.as_bytes(),
                    )))));
                }
                BodyState::Running {
                    total_deadline,
                    idle,
                    last_write,
                    message,
                } => {
                    if let Poll::Ready(frame) = this.body.as_mut().poll_frame(cx) {
                        match &frame {
                            // The timer follows when the body next waits.
                            Some(Ok(f)) if f.is_data() && idle.is_some() => {
                                *last_write = Instant::now();
                            }
                            None => *this.state = BodyState::Done,
                            _ => {}
                        }
                        // At the end (hyper stops polling a body once it says so, and drops
                        // it), the timer goes back to the spares from here.
                        if this.timer.sleep.is_some()
                            && (matches!(this.state, BodyState::Done) || this.body.is_end_stream())
                        {
                            this.timer.give_back();
                        }
                        return Poll::Ready(frame);
                    }
                    let deadline = body_deadline(*total_deadline, *idle, *last_write);
                    ready!(this.timer.poll_until(deadline, cx));
                    this.timer.give_back();
                    *this.state = BodyState::Appending { message };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            BodyState::Unlimited => self.body.is_end_stream(),
            BodyState::Done => true,
            BodyState::Appending { .. } => false,
            BodyState::Running { .. } => self.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Unlimited => self.body.size_hint(),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Appending { message } => SizeHint::with_exact(message.len() as u64),
            // A running body may grow by the message; only the lower bound is certain. A
            // Content-Length the upstream sent is still forwarded as a header: if the message
            // is appended, the length mismatch closes the connection, as in upstream.
            _ => {
                let inner = self.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower());
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::ProxyBody;
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::task::Waker;

    fn timeouts(total_ms: u64, rs_ms: Option<u64>, idle_ms: Option<u64>) -> Timeouts {
        Timeouts {
            total: Duration::from_millis(total_ms),
            response_start: rs_ms.map(Duration::from_millis),
            idle: idle_ms.map(Duration::from_millis),
        }
    }

    /// A service answering after `delay` with a body produced by `body`.
    #[derive(Clone)]
    struct Delayed<F: Fn() -> ProxyBody + Clone> {
        delay: Duration,
        body: F,
    }

    impl<F: Fn() -> ProxyBody + Clone + Send + 'static> Service<Request<()>> for Delayed<F> {
        type Response = Response<ProxyBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            let (delay, body) = (self.delay, self.body.clone());
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(body()))
            })
        }
    }

    async fn run<F: Fn() -> ProxyBody + Clone + Send + 'static>(
        t: Timeouts,
        delay_ms: u64,
        body: F,
    ) -> (StatusCode, String) {
        let mut svc = TimeoutLayer::new(t, "request timeout").layer(Delayed {
            delay: Duration::from_millis(delay_ms),
            body,
        });
        let response = svc.call(Request::new(())).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn hi() -> ProxyBody {
        ProxyBody::full(Bytes::from_static(b"hi"))
    }

    thread_local! {
        /// Timers made for requests (not taken from the spares) on this thread.
        pub(super) static TIMERS_MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Answers 504 after `delay_ms` of upstream time against a total timeout of `total_ms`,
    /// and returns how long that took.
    async fn timed_out_after(total_ms: u64, delay_ms: u64) -> Duration {
        let start = Instant::now();
        let (status, body) = run(timeouts(total_ms, None, None), delay_ms, hi).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::GATEWAY_TIMEOUT, "request timeout")
        );
        Instant::now() - start
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_fires_at_each_requests_deadline() {
        let before = timers_made();
        let made = || timers_made() - before;
        // The first request's timer, armed for 1 s from its start, is given back when it ends.
        assert_eq!(
            run(timeouts(1000, None, None), 10, hi).await.0,
            StatusCode::OK
        );
        assert_eq!(made(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Reused while armed (310 ms) early: it wakes early and is moved to the deadline.
        let waited = timed_out_after(1000, 5000).await;
        assert!(waited >= Duration::from_millis(1000), "{waited:?}");
        assert!(waited <= Duration::from_millis(1001), "{waited:?}");
        // Reused while armed later than a shorter deadline: moved before waiting.
        let waited = timed_out_after(200, 5000).await;
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited <= Duration::from_millis(201), "{waited:?}");
        assert_eq!(made(), 1, "one timer for the three requests");
    }

    /// A task's waker whose clones can be counted (`Arc::strong_count`).
    struct Task;

    impl std::task::Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    fn task() -> (Arc<Task>, Waker) {
        let task = Arc::new(Task);
        let waker = Waker::from(Arc::clone(&task));
        (task, waker)
    }

    fn timers_made() -> usize {
        TIMERS_MADE.with(|made| made.get())
    }

    /// A service answering "hi" after 10 ms, with a total timeout of 1 s.
    fn ten_ms_service() -> TimeoutService<Delayed<fn() -> ProxyBody>> {
        TimeoutLayer::new(timeouts(1000, None, None), "request timeout").layer(Delayed {
            delay: Duration::from_millis(10),
            body: hi,
        })
    }

    /// Spare timers of this thread for the current runtime.
    fn spares() -> usize {
        let runtime = TimerReuse::current().0;
        SPARES.with(|spares| {
            let spares = spares.borrow();
            if spares.runtime == runtime {
                spares.sleeps.len()
            } else {
                0
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_timer_keeps_no_waker_of_a_finished_request() {
        let made = timers_made();
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut call = Box::pin(ten_ms_service().call(Request::new(())));
        // Waiting for the head: the request timer (and the handler's sleep) hold the waker.
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert!(Arc::strong_count(&task) >= 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Poll::Ready(Ok(response)) = call.as_mut().poll(&mut cx) else {
            panic!("no response")
        };
        drop((call, response, waker));
        assert_eq!(spares(), 1, "the timer was given back");
        assert_eq!(
            Arc::strong_count(&task),
            1,
            "a spare timer holds the finished task"
        );
        // And the spare serves the next request.
        assert_eq!(
            run(timeouts(1000, None, None), 10, hi).await.0,
            StatusCode::OK
        );
        assert_eq!(timers_made() - made, 1);
    }

    // A body that is never a local answer, as an upstream body.
    impl LocalBody for Trickle {
        fn full(_: Bytes) -> Self {
            unreachable!("never a local answer")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_gives_its_timer_back_without_the_waker() {
        let made = timers_made();
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let upstream = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(Response::new(Trickle {
                chunks: vec!["a", "b"],
                gap: Duration::from_millis(50),
                sleep: Box::pin(sleep_until(Instant::now())),
            }))
        };
        let t = timeouts(1000, None, Some(100));
        let reuse = TimerReuse::current();
        let mut call = Box::pin(TimeoutFuture::new(Instant::now(), upstream, t, "x", reuse));
        assert!(call.as_mut().poll(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Poll::Ready(Ok(response)) = call.as_mut().poll(&mut cx) else {
            panic!("no response")
        };
        drop(call);
        let mut body = response.into_body();
        let mut frame = || Pin::new(&mut body).poll_frame(&mut cx).map(|f| f.is_some());
        assert_eq!(frame(), Poll::Ready(true));
        // Waiting for the next chunk on the timer that waited for the head.
        assert_eq!(frame(), Poll::Pending);
        assert_eq!(spares(), 0);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(frame(), Poll::Ready(true));
        assert_eq!(frame(), Poll::Ready(false));
        assert_eq!(spares(), 1, "the timer was given back at the end");
        drop((body, waker));
        assert_eq!(
            Arc::strong_count(&task),
            1,
            "a spare timer holds the finished task"
        );
        assert_eq!(timers_made() - made, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_drops_its_timer() {
        let (task, waker) = task();
        let mut call = Box::pin(ten_ms_service().call(Request::new(())));
        assert!(call
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop((call, waker));
        assert_eq!(spares(), 0);
        assert_eq!(Arc::strong_count(&task), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_handler_passes() {
        assert_eq!(
            run(timeouts(1000, Some(1000), Some(1000)), 1, hi).await,
            (StatusCode::OK, "hi".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn response_start_fires_before_head() {
        assert_eq!(
            run(timeouts(10_000, Some(50), None), 100, hi).await,
            (StatusCode::GATEWAY_TIMEOUT, "request timeout".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_when_nothing_is_written() {
        assert_eq!(
            run(timeouts(10_000, None, Some(1)), 100, hi).await,
            (StatusCode::GATEWAY_TIMEOUT, "request timeout".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn total_fires_before_head() {
        assert_eq!(
            run(timeouts(50, None, None), 100, hi).await,
            (StatusCode::GATEWAY_TIMEOUT, "request timeout".into())
        );
    }

    /// A body that yields `chunks`, each after `gap`.
    struct Trickle {
        chunks: Vec<&'static str>,
        gap: Duration,
        sleep: Pin<Box<Sleep>>,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            ready!(self.sleep.as_mut().poll(cx));
            let gap = self.gap;
            self.sleep.as_mut().reset(Instant::now() + gap);
            let chunk = self.chunks.remove(0);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
        }
    }

    async fn stream(t: Timeouts, chunks: Vec<&'static str>, gap_ms: u64) -> (StatusCode, String) {
        let gap = Duration::from_millis(gap_ms);
        let body = Trickle {
            chunks,
            gap,
            sleep: Box::pin(sleep_until(Instant::now())),
        };
        let clock = Clock::new(Instant::now(), t);
        let body = TimeoutBody::running(
            body,
            clock,
            Instant::now(),
            "request timeout",
            Timer::new(TimerReuse::NONE),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        (StatusCode::OK, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// A timer first polled when the task's coop budget is spent is not registered by that
    /// poll (tokio only asks the task to yield); the next poll, with the same waker, must
    /// register it, or the deadline passes without waking anyone.
    #[tokio::test(start_paused = true)]
    async fn a_timer_polled_out_of_budget_still_fires() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut timer = Timer::new(TimerReuse::NONE);
        let mut first = true;
        let fired = std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                // Spend the budget within this poll, then poll the timer.
                while tokio::task::coop::has_budget_remaining() {
                    let spend = std::pin::pin!(tokio::task::coop::consume_budget());
                    let _ = spend.poll(cx);
                }
                assert!(timer.poll_until(deadline, cx).is_pending());
                return Poll::Pending;
            }
            timer.poll_until(deadline, cx)
        });
        tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("the timer fires at its deadline");
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_writes_keep_idle_timer_quiet() {
        let (_, body) = stream(
            timeouts(10_000, None, Some(100)),
            vec!["foo", "bar", "baz", "test"],
            99,
        )
        .await;
        assert_eq!(body, "foobarbaztest");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_first_write_appends_and_ends() {
        let (_, body) = stream(timeouts(10_000, None, Some(100)), vec!["foo", "bar"], 101).await;
        assert_eq!(body, "foorequest timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn total_after_first_write_appends_and_ends() {
        let (_, body) = stream(
            timeouts(150, None, None),
            vec!["partial response", "x", "y"],
            100,
        )
        .await;
        assert_eq!(body, "partial responsexrequest timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn response_start_is_ignored_after_the_head() {
        let (_, body) = stream(
            timeouts(10_000, Some(10), None),
            vec!["response started", " and finished"],
            50,
        )
        .await;
        assert_eq!(body, "response started and finished");
    }
}
