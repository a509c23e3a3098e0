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
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeouts: self.timeouts,
            message: self.message,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    timeouts: Timeouts,
    message: &'static str,
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
        TimeoutFuture::new(start, self.inner.call(request), timeouts, self.message)
    }
}

impl<F> TimeoutFuture<F> {
    /// The timers of one request started at `start` (taken before the request was handed on),
    /// around the inner response `future`: what [`TimeoutService::call_with`] makes, for a
    /// caller that builds the inner future itself (e.g. from a handler it owns, with no
    /// service to clone).
    pub fn new(start: Instant, future: F, timeouts: Timeouts, message: &'static str) -> Self {
        TimeoutFuture {
            future: Some(future),
            clock: Clock::new(start, timeouts),
            sleep: None,
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

    /// Earliest moment a timer can fire once the head was written at/after `last_write`.
    fn body_deadline(&self, last_write: Instant) -> Instant {
        match self.idle {
            Some(idle) => self.total_deadline.min(last_write + idle),
            None => self.total_deadline,
        }
    }
}

pin_project! {
    /// Response future of [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        future: Option<F>,
        clock: Clock,
        #[pin]
        sleep: Option<Sleep>,
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
                return Poll::Ready(Ok(response.map(TimeoutBody::local)));
            }
            // The response head is the first write (its time matters to the idle timer only).
            let written = if clock.idle.is_some() {
                Instant::now()
            } else {
                clock.start
            };
            return Poll::Ready(Ok(
                response.map(|body| TimeoutBody::running(body, clock, written, this.message))
            ));
        }
        if this.sleep.is_none() {
            let deadline = this.clock.head_deadline();
            this.sleep.set(Some(sleep_until(deadline)));
        }
        ready!(this.sleep.as_pin_mut().expect("just set").poll(cx));
        // Timed out before the head: cancel the inner work and answer 504.
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
        // Boxed: most bodies end without ever waiting (no timer), and the response, with this
        // body inside, is moved by every layer it passes on its way out.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

#[derive(Debug)]
enum BodyState {
    /// No timers (a locally generated body).
    Unlimited,
    /// Streaming the inner body under the clock.
    Running {
        clock: Clock,
        last_write: Instant,
        message: &'static str,
    },
    /// A timer fired: the message is appended next.
    Appending { message: &'static str },
    /// Ended (after the message, or the inner end).
    Done,
}

impl<B> TimeoutBody<B> {
    fn running(body: B, clock: Clock, written: Instant, message: &'static str) -> Self {
        TimeoutBody {
            body,
            state: BodyState::Running {
                clock,
                last_write: written,
                message,
            },
            sleep: None,
        }
    }

    fn local(body: B) -> Self {
        TimeoutBody {
            body,
            state: BodyState::Unlimited,
            sleep: None,
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
                    clock,
                    last_write,
                    message,
                } => {
                    if let Poll::Ready(frame) = this.body.as_mut().poll_frame(cx) {
                        match &frame {
                            Some(Ok(f)) if f.is_data() && clock.idle.is_some() => {
                                *last_write = Instant::now();
                                if let Some(sleep) = this.sleep.as_mut() {
                                    sleep.as_mut().reset(clock.body_deadline(*last_write));
                                }
                            }
                            None => *this.state = BodyState::Done,
                            _ => {}
                        }
                        return Poll::Ready(frame);
                    }
                    let deadline = clock.body_deadline(*last_write);
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
                    ready!(sleep.as_mut().poll(cx));
                    let now = Instant::now();
                    if now < clock.total_deadline
                        && clock.idle.is_some_and(|idle| now < *last_write + idle)
                    {
                        // A write happened meanwhile: sleep for the rest of the idle window.
                        sleep.as_mut().reset(clock.body_deadline(*last_write));
                        continue;
                    }
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
        let body = TimeoutBody::running(body, clock, Instant::now(), "request timeout");
        let bytes = body.collect().await.unwrap().to_bytes();
        (StatusCode::OK, String::from_utf8(bytes.to_vec()).unwrap())
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
