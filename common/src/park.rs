//! Idle HTTP/1 keep-alive connections parked outside hyper.
//!
//! A hyper HTTP/1 server connection holds an 8 KiB write buffer and an 8–16 KiB read buffer for
//! its whole life, idle or not, plus its dispatcher state: about 20 KiB of resident memory per
//! idle keep-alive connection (nginx: about 1 KiB). Here each connection is served by a hyper
//! connection only while it is busy. When hyper has been waiting [`PARK_DELAY`] for the next
//! request head with no byte arriving and nothing left to flush, the connection is parked: hyper
//! is told that the client closed its side (a read of 0 bytes, which at that point hyper takes as
//! a clean close), its shutdown of the socket is skipped, and the socket comes back through
//! hyper's `into_parts` with any bytes hyper had read but not parsed. Only the socket, the
//! service and a few words of state stay; the task waits for the socket to become readable
//! (without a buffer) and then serves it with a new hyper connection.
//!
//! Nothing the client sees changes:
//! - the keep-alive idle time and the head read time stay one deadline: the deadline hyper armed
//!   when it started waiting for the head is carried into the next hyper connection's first head
//!   timer, and it also ends the parked wait (connection closed, no response, as hyper does);
//! - bytes of a head that arrived in part (a slow client, or a pipelined head cut by a read)
//!   are kept and replayed to the next hyper connection before the socket;
//! - a graceful shutdown closes a parked connection at once, as hyper closes an idle one;
//! - a connection with response bytes still unflushed (a client that does not read) is not
//!   parked.
//!
//! The hook is hyper's header-read timer ([`ParkTimer`]): hyper creates it exactly when it starts
//! waiting for a request head and drops it when the head is parsed, so the park delay costs no
//! timer of its own; the socket wrapper ([`ParkIo`]) adds a relaxed atomic store per read and
//! write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::Timer as _;

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// How long hyper waits for a next request head before the connection is parked. Long enough
/// that a client sending request after request on one connection keeps its hyper connection
/// (re-creating one costs a few allocations), short enough that idle pools shrink quickly.
pub const PARK_DELAY: Duration = Duration::from_secs(1);

/// A socket whose readability can be awaited without reading (and so without a buffer).
pub trait PollReadReady {
    /// Ready when a read would not block (data, end of stream or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl PollReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// What the timer, the socket wrapper and the serving loop of one connection share.
#[derive(Debug)]
struct ParkState {
    /// When this connection started; the base of `carried_deadline`.
    base: Instant,
    /// The timer decided to park: the next read returns end of stream.
    park_now: AtomicBool,
    /// End of stream was returned for parking: skip the socket shutdown.
    parking: AtomicBool,
    /// Response bytes were written and not yet flushed.
    unflushed: AtomicBool,
    /// Bytes were read since hyper started waiting for the current head.
    read_in_wait: AtomicBool,
    /// The head deadline to carry into the next hyper connection, in nanoseconds after `base`
    /// plus one (0: none).
    carried_deadline: AtomicU64,
    /// The waker of the socket's last read that found nothing. hyper's server does not read
    /// again until the waker it reads with is woken (`Buffered::poll_read_from_io` in
    /// `vendor/hyper`): parking wakes this one, not only the task.
    read_waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl ParkState {
    fn new() -> Self {
        ParkState {
            base: Instant::now(),
            park_now: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            read_in_wait: AtomicBool::new(false),
            carried_deadline: AtomicU64::new(0),
            read_waker: std::sync::Mutex::new(None),
        }
    }

    fn carry(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.carried_deadline.store(nanos + 1, Ordering::Relaxed);
    }

    fn take_carried(&self) -> Option<Instant> {
        match self.carried_deadline.swap(0, Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }

    fn peek_carried(&self) -> Option<Instant> {
        match self.carried_deadline.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }
}

/// hyper's HTTP/1 timer for one connection: tokio sleeps whose head-read timer also parks the
/// connection after [`PARK_DELAY`] (see the module docs).
#[derive(Clone, Debug)]
struct ParkTimer {
    state: Arc<ParkState>,
    delay: Duration,
}

/// When a head-read timer wakes first and when it completes (see [`ParkTimer::plan`]).
struct Plan {
    deadline: Instant,
    parking: bool,
    first: Instant,
}

impl ParkTimer {
    /// A head wait ending at `deadline` starts now: when its timer wakes first (the park time,
    /// unless the deadline comes first) and when it completes.
    fn plan(&self, deadline: Instant) -> Plan {
        // The first head timer of a resumed connection ends at the deadline of the wait that
        // was parked, not later.
        let deadline = match self.state.take_carried() {
            Some(carried) => carried.min(deadline),
            None => deadline,
        };
        self.state.read_in_wait.store(false, Ordering::Relaxed);
        let park_at = self.now() + self.delay;
        let parking = park_at < deadline;
        let first = if parking { park_at } else { deadline };
        Plan {
            deadline,
            parking,
            first,
        }
    }

    fn sleep_at(&self, deadline: Instant) -> ParkSleep {
        let plan = self.plan(deadline);
        ParkSleep {
            sleep: tokio::time::sleep_until(plan.first.into()),
            deadline: plan.deadline,
            parking: plan.parking,
            state: Arc::clone(&self.state),
        }
    }
}

impl hyper::rt::Timer for ParkTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep {
            sleep: tokio::time::sleep(duration),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        #[cfg(test)]
        tests::HEAD_TIMERS_MADE.with(|made| made.set(made.get() + 1));
        Box::pin(self.sleep_at(deadline))
    }

    /// The patched hyper keeps a connection's head-read timer between heads and resets it for
    /// each: the tokio timer inside is moved, which for a later time is an atomic update of the
    /// registered entry (no allocation, no timer-wheel insert or removal).
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ParkSleep>() {
            Some(park) => {
                let plan = self.plan(new_deadline);
                let this = park.project();
                *this.deadline = plan.deadline;
                // A park time a little early (the wake set for the previous head, later than
                // now) is kept: the connection then parks up to `delay / 8` sooner, which no
                // client sees, and a busy connection's timer is not moved for every request.
                let current = this.sleep.deadline().into_std();
                let keep = *this.parking
                    && plan.parking
                    && current <= plan.first
                    && plan.first - current < self.delay / 8;
                *this.parking = plan.parking;
                if !keep {
                    this.sleep.reset(plan.first.into());
                }
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        // tokio's clock, as hyper-util's timer, so that paused-time tests see one clock.
        tokio::time::Instant::now().into_std()
    }
}

pin_project_lite::pin_project! {
    /// A sleep that is not a head-read timer (hyper uses none on HTTP/1 server connections
    /// today; kept correct for any it may add).
    struct PlainSleep {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for PlainSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

pin_project_lite::pin_project! {
    /// hyper's head-read timer: first wakes at the park time (unless the deadline comes first),
    /// then at the head deadline, which is the only time it completes.
    struct ParkSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        deadline: Instant,
        parking: bool,
        state: Arc<ParkState>,
    }
}

impl Future for ParkSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            if !*this.parking {
                return Poll::Ready(());
            }
            let state = &**this.state;
            if state.unflushed.load(Ordering::Relaxed) || state.read_in_wait.load(Ordering::Relaxed)
            {
                // A client that is not reading its response, or one sending a head slowly:
                // look again later (a head that is arriving is usually complete by then).
                let again = tokio::time::Instant::now().into_std() + PARK_DELAY;
                if again < *this.deadline {
                    state.read_in_wait.store(false, Ordering::Relaxed);
                    this.sleep.as_mut().reset(again.into());
                    continue;
                }
            } else {
                // hyper polls this timer right after a read of the socket found nothing: the
                // next read (on the wake-ups below: that read's waker, which hyper's server
                // waits on before it reads again, and the task's) ends the stream and parks
                // the connection.
                state.carry(*this.deadline);
                state.park_now.store(true, Ordering::Relaxed);
                let read_waker = state
                    .read_waker
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(waker) = read_waker.as_ref() {
                    waker.wake_by_ref();
                }
                drop(read_waker);
                cx.waker().wake_by_ref();
            }
            *this.parking = false;
            this.sleep.as_mut().reset((*this.deadline).into());
        }
    }
}

impl hyper::rt::Sleep for ParkSleep {}

/// The socket as hyper sees it: replays bytes kept from a previous hyper connection, notes
/// reads and unflushed writes, and ends the stream when the timer parks the connection.
#[derive(Debug)]
struct ParkIo<S> {
    inner: S,
    leftover: Bytes,
    state: Arc<ParkState>,
    /// The waker last stored in `state.read_waker` (compared without the lock).
    read_waker: Option<std::task::Waker>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ParkIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.park_now.load(Ordering::Relaxed) {
            this.state.park_now.store(false, Ordering::Relaxed);
            this.state.parking.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            this.state.read_in_wait.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) else {
            if !this
                .read_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                this.read_waker = Some(cx.waker().clone());
                *this
                    .state
                    .read_waker
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = this.read_waker.clone();
            }
            return Poll::Pending;
        };
        read?;
        if buf.filled().len() > before {
            this.state.read_in_wait.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParkIo<S> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.state.unflushed.store(true, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.state.unflushed.store(true, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket once its own write buffer is empty.
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.state.unflushed.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one HTTP/1 connection with `builder`'s settings (its timer is replaced by the parking
/// one; `header_read_timeout` must be set), parking it whenever it idles (module docs), until
/// the client closes, an error, an upgrade, the head deadline, or `shutdown` (graceful: an
/// exchange in progress finishes, an idle or parked connection closes at once).
pub fn serve_http1<S, Svc>(
    stream: S,
    builder: &http1::Builder,
    service: Svc,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + PollReadReady + Unpin + Send + 'static,
    Svc: HttpService<Incoming>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Svc::ResBody: 'static,
    <Svc::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = Arc::new(ParkState::new());
    let mut builder = builder.clone();
    builder.timer(ParkTimer {
        state: Arc::clone(&state),
        delay: PARK_DELAY,
    });
    serve_parked(stream, builder, state, service, shutdown)
}

async fn serve_parked<S, Svc>(
    stream: S,
    builder: http1::Builder,
    state: Arc<ParkState>,
    service: Svc,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + PollReadReady + Unpin + Send + 'static,
    Svc: HttpService<Incoming>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Svc::ResBody: 'static,
    <Svc::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = ParkIo {
        inner: stream,
        leftover: Bytes::new(),
        state: Arc::clone(&state),
        read_waker: None,
    };
    let mut service = service;
    loop {
        // Boxed so that a parked connection's task does not keep room for hyper's state.
        let mut conn = Box::pin(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let seen = shutdown.clone();
        tokio::select! {
            biased;
            _ = conn.as_mut() => {}
            () = CheapStop::new(stop_requested(&mut shutdown), seen) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                return;
            }
        }
        if !state.parking.swap(false, Ordering::Relaxed) {
            return; // closed, failed, timed out or upgraded
        }
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            return;
        };
        #[cfg(test)]
        tests::PARKS.with(|parks| parks.set(parks.get() + 1));
        io = parts.io.into_inner();
        service = parts.service;
        if !parts.read_buf.is_empty() {
            // Part of a head: copied, so that hyper's read buffer is freed.
            let mut kept = Vec::with_capacity(parts.read_buf.len() + io.leftover.len());
            kept.extend_from_slice(&parts.read_buf);
            kept.extend_from_slice(&io.leftover);
            io.leftover = Bytes::from(kept);
        }
        drop(parts.read_buf);
        let Some(deadline) = state.peek_carried() else {
            return;
        };
        let readable = std::future::poll_fn(|cx| io.inner.poll_read_ready(cx));
        tokio::select! {
            ready = readable => if ready.is_err() { return },
            () = tokio::time::sleep_until(deadline.into()) => return,
            () = stop_requested(&mut shutdown) => return,
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pin_project_lite::pin_project! {
    /// `wait` (a [`stop_requested`] future), polled again only when the channel may have caused
    /// the wake-up. It shares its task with the connection, whose wake-ups (several per request)
    /// would otherwise re-poll the channel's wait each time (a read lock and the `Notify`
    /// waiter's lock); here such a poll is one version check. `wait` is polled when nothing
    /// is registered yet, when the task's waker changed, and when `seen` (a clone of the
    /// channel's receiver) reports a new value or a closed channel.
    struct CheapStop<F> {
        #[pin]
        wait: F,
        seen: watch::Receiver<bool>,
        waker: Option<std::task::Waker>,
    }
}

impl<F> CheapStop<F> {
    fn new(wait: F, seen: watch::Receiver<bool>) -> Self {
        CheapStop {
            wait,
            seen,
            waker: None,
        }
    }
}

impl<F: Future<Output = ()>> Future for CheapStop<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            && matches!(this.seen.has_changed(), Ok(false))
        {
            return Poll::Pending;
        }
        // Marked before `wait` looks at the channel: a value sent from here on shows as new
        // at the next poll.
        this.seen.mark_unchanged();
        if this.wait.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        match this.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => *this.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Request, Response};
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    thread_local! {
        /// Connections parked by tasks of this thread's (current-thread) test runtime.
        pub(super) static PARKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        /// Head-read timers made by this thread's connections (each then reset per head).
        pub(super) static HEAD_TIMERS_MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn cheap_stop_resolves_on_stop_and_only_then() {
        let (tx, mut rx) = watch::channel(false);
        let seen = rx.clone();
        let mut stop = Box::pin(CheapStop::new(stop_requested(&mut rx), seen));
        for _ in 0..3 {
            assert!(poll_once(&mut stop).is_pending());
        }
        tx.send(false).unwrap();
        assert!(poll_once(&mut stop).is_pending());
        tx.send(true).unwrap();
        assert!(poll_once(&mut stop).is_ready());
    }

    #[tokio::test]
    async fn cheap_stop_is_woken_by_the_stop_and_by_a_dropped_sender() {
        for drop_sender in [false, true] {
            let (tx, mut rx) = watch::channel(false);
            let seen = rx.clone();
            let sender = tokio::spawn(async move {
                tokio::task::yield_now().await;
                if drop_sender {
                    drop(tx);
                } else {
                    tx.send(true).unwrap();
                }
            });
            tokio::time::timeout(
                Duration::from_secs(10),
                CheapStop::new(stop_requested(&mut rx), seen),
            )
            .await
            .expect("the stop wakes the waiting task");
            sender.await.unwrap();
        }
    }

    fn parks() -> u64 {
        PARKS.with(|parks| parks.get())
    }

    /// Serves `/` with "ok" on a loopback listener, each connection through [`serve_http1`]
    /// with `delay` as the park delay; returns the address and the number of hyper
    /// connections created so far (one per serve and resume).
    async fn server(
        header_timeout: Duration,
    ) -> (std::net::SocketAddr, watch::Sender<bool>, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let served = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&served);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut builder = http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let counter = Arc::clone(&counter);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "{} {n}",
                            req.uri().path()
                        )))))
                    }
                });
                tokio::spawn(serve_http1(stream, &builder, service, stop_rx.clone()));
            }
        });
        (addr, stop_tx, served)
    }

    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let mut text = String::new();
        while !text.contains("\r\n\r\n") || !text.ends_with(|c: char| c.is_ascii_digit()) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {text:?}");
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        text
    }

    /// The connection idle since `idle_from` was closed at its head deadline `timeout` later
    /// (within the test runtime's paused clock, less than a second after it).
    fn assert_closed_at_deadline(idle_from: tokio::time::Instant, timeout: Duration) {
        let waited = idle_from.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parked_connection_serves_the_next_request() {
        let (addr, _stop, _) = server(Duration::from_secs(60)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut client).await.ends_with("/a 1"));
        assert_eq!(parks(), 0);
        tokio::time::sleep(PARK_DELAY * 5).await;
        assert_eq!(parks(), 1, "parked once while idle");
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let text = read_response(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("/b 2"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_split_across_a_park_is_kept() {
        let (addr, _stop, _) = server(Duration::from_secs(60)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        // A pipelined second request cut in the middle of its head, then a long pause.
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo")
            .await
            .unwrap();
        assert!(read_response(&mut client).await.ends_with("/a 1"));
        tokio::time::sleep(PARK_DELAY * 5).await;
        assert_eq!(parks(), 1, "parked with part of a head");
        client.write_all(b"st: x\r\n\r\n").await.unwrap();
        assert!(read_response(&mut client).await.ends_with("/b 2"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_survives_parking() {
        let timeout = Duration::from_secs(10);
        let (addr, _stop, _) = server(timeout).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut client).await;
        let idle_from = tokio::time::Instant::now();
        // Parked after PARK_DELAY, woken by part of a head at 6 s, closed at the original 10 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"GET /b HT").await.unwrap();
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "closed without a response");
        // Idle after the response, then again with the stalled part of the head kept.
        assert_eq!(parks(), 2);
        assert_closed_at_deadline(idle_from, timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn one_head_timer_serves_a_connections_requests() {
        // The kept timer is reset for each head: one made per hyper connection, and after a
        // run of requests it still parks the connection and still ends the idle wait at the
        // deadline counted from the last response.
        let timeout = Duration::from_secs(10);
        let (addr, _stop, _) = server(timeout).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        for i in 1..=5 {
            client
                .write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(read_response(&mut client)
                .await
                .ends_with(&format!("/r {i}")));
            tokio::time::sleep(PARK_DELAY / 2).await;
        }
        assert_eq!(parks(), 0, "never idle for the park delay");
        assert_eq!(HEAD_TIMERS_MADE.with(|made| made.get()), 1);
        let idle_from = tokio::time::Instant::now() - PARK_DELAY / 2;
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "closed at the head deadline");
        assert_eq!(parks(), 1);
        assert_closed_at_deadline(idle_from, timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_a_parked_connection() {
        let (addr, stop, _) = server(Duration::from_secs(60)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut client).await;
        tokio::time::sleep(PARK_DELAY * 3).await;
        assert_eq!(parks(), 1);
        stop.send(true).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }
}
