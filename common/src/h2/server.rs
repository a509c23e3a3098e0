//! The HTTP/2 server side of a connection (h2c by prior knowledge or by upgrade, and h2 over
//! TLS), on the `h2` crate: what hyper's HTTP/2 server does (limits, a task per stream, `Date`,
//! connection-specific fields removed, `RST_STREAM` cancelling the stream's service future,
//! GOAWAY and a wait for the open streams on a graceful shutdown), plus the 1xx informational
//! responses an upstream exchange relays ([`crate::informational`]), sent on the stream the
//! moment its task sees them and always before the final response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower_service::Service;

use super::body::{content_length, IncomingBody};
use crate::body::BodyError;
use crate::informational;
use crate::park::PARK_DELAY;
use crate::server::ServerLimits;

/// hyper's HTTP/2 server defaults for what [`ServerLimits`] does not set.
const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The `h2` server settings for `limits`.
pub(crate) fn builder(limits: &ServerLimits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_reset_streams))
        .max_header_list_size(limits.h2_max_header_list_size);
    builder
}

/// Serves one HTTP/2 connection whose client preface is next on `io`, each stream in a task of
/// its own running `service`, until the client closes it or, once `shutdown` turns true, until
/// the GOAWAY sent then has let every open stream finish.
///
/// A connection that has accepted no stream for [`PARK_DELAY`] (the idle time after which HTTP/1
/// connections are parked, [`crate::park`]) and has none left open gives its buffers back
/// (`release_idle_buffers`, a method of the patched `h2`: docs/supply-chain.md): about 28 KiB
/// of write, read and HPACK buffers and the stream store, allocated again when bytes next
/// arrive or leave. One timer per connection checks this: armed at the handshake and by the
/// first stream after a release, re-armed once per [`PARK_DELAY`] while streams keep coming
/// (so the release comes 1 to 2 delays after the last stream) and off once the buffers are
/// given back. A request costs a state check, no timer operation.
pub async fn serve_connection<I, S, B>(
    io: I,
    builder: &h2::server::Builder,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible> + Clone,
    S::Future: Send + 'static,
    B: Body<Data = Bytes, Error = BodyError> + Send + 'static,
{
    let mut conn = match builder.handshake::<_, Bytes>(io).await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut draining = false;
    // The idle check (see the function docs).
    let idle = tokio::time::sleep(PARK_DELAY);
    tokio::pin!(idle);
    let mut idle_state = Idle::Fresh;
    // One shutdown wait for the connection's life, registered once: made anew for every
    // stream, it registered and removed a waiter under a lock each time. Not polled again once
    // it has completed (draining then leaves the select).
    let stop = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stop);
    // A stream was just accepted, and the connection has not been touched since.
    let mut just_accepted = false;
    loop {
        let next = if draining {
            conn.accept().await
        } else {
            // In this order, without the random start: a stop is seen before the next stream,
            // whatever the rate streams come at.
            let event = tokio::select! {
                biased;
                _ = &mut stop => Event::Stop,
                next = accept_next(&mut conn, &mut just_accepted) => Event::Next(next),
                () = &mut idle, if idle_state != Idle::Released => Event::Idle,
            };
            match event {
                Event::Next(next) => next,
                // Also when the sender is gone (the process is ending).
                Event::Stop => {
                    draining = true;
                    conn.graceful_shutdown();
                    continue;
                }
                Event::Idle => {
                    // A stream came in the last period, or streams are still open (or bytes
                    // buffered): look again later.
                    if idle_state == Idle::Busy || !conn.release_idle_buffers() {
                        idle_state = Idle::Quiet;
                        idle.as_mut()
                            .reset(tokio::time::Instant::now() + PARK_DELAY);
                    } else {
                        idle_state = Idle::Released;
                        #[cfg(test)]
                        tests::RELEASES.with(|n| n.set(n.get() + 1));
                    }
                    continue;
                }
            }
        };
        match next {
            Some(Ok((request, reply))) => {
                match idle_state {
                    Idle::Busy => {}
                    Idle::Quiet => idle_state = Idle::Busy,
                    Idle::Fresh | Idle::Released => {
                        idle_state = Idle::Quiet;
                        idle.as_mut()
                            .reset(tokio::time::Instant::now() + PARK_DELAY);
                    }
                }
                let length = content_length(request.headers());
                let request = request.map(|recv| IncomingBody::h2(recv, length));
                // Boxed, and written into its box (allocated first): tokio's `spawn` moved the
                // stream's future (548 bytes in the queue-proxy) four times on its way into the
                // task, some 340 instructions per stream; a box moves as a pointer.
                let stream = Box::write(
                    Box::new_uninit(),
                    H2Stream::new(service.clone().call(request), reply),
                );
                tokio::spawn(Box::into_pin(stream));
                just_accepted = !draining;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "HTTP/2 connection failed");
                return;
            }
            None => return,
        }
    }
}

/// The connection's next stream. Right after a stream was accepted (`just_accepted`), the
/// connection has been polled to `Pending` and its wake-ups are registered for this task
/// (`next_accepted`, a method of the patched `h2`): then only a stream already received is
/// taken, and when there is none the task waits for the connection's next wake-up instead of
/// polling it once more for nothing (a whole connection poll per stream). Otherwise the
/// connection is polled (`poll_accept`).
fn accept_next<'a, T>(
    conn: &'a mut h2::server::Connection<T, Bytes>,
    just_accepted: &'a mut bool,
) -> impl Future<Output = Option<AcceptResult>> + 'a
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        if std::mem::take(just_accepted) {
            return match conn.next_accepted() {
                Some(accepted) => Poll::Ready(Some(Ok(accepted))),
                None => Poll::Pending,
            };
        }
        conn.poll_accept(cx)
    })
}

/// What the connection gives for a stream.
type AcceptResult = Result<(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>), h2::Error>;

/// What woke the connection's loop.
enum Event<N> {
    Next(N),
    Stop,
    Idle,
}

/// The idle check of a connection: a timer armed while the connection holds its buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Armed at the handshake; no stream yet.
    Fresh,
    /// Armed by a stream, or re-armed; no stream since.
    Quiet,
    /// A stream came since the timer was armed.
    Busy,
    /// The buffers were given back; the timer is off until the next stream.
    Released,
}

pin_project! {
    /// One stream: its service future, then its response body.
    struct H2Stream<F, B> {
        reply: h2::server::SendResponse<Bytes>,
        #[pin]
        state: State<F, B>,
        continue_sent: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Service { #[pin] future: F },
        Body {
            #[pin]
            body: B,
            tx: h2::SendStream<Bytes>,
            // A chunk waiting for send capacity.
            pending: Option<super::pipe::Pending>,
        },
    }
}

impl<F, B> H2Stream<F, B> {
    fn new(future: F, reply: h2::server::SendResponse<Bytes>) -> Self {
        H2Stream {
            reply,
            state: State::Service { future },
            continue_sent: false,
        }
    }
}

impl<F, B> Future for H2Stream<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes, Error = BodyError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Service { future } => {
                    let (polled, heads) = informational::collect_for_h2(|| future.poll(cx));
                    for head in heads {
                        send_informational(this.reply, this.continue_sent, &head);
                    }
                    let Poll::Ready(Ok(response)) = polled else {
                        // The client may have reset the stream (cancelled the request): the
                        // service future is dropped with the task.
                        return match this.reply.poll_reset(cx) {
                            Poll::Ready(_) => Poll::Ready(()),
                            Poll::Pending => Poll::Pending,
                        };
                    };
                    let (parts, body) = response.into_parts();
                    let mut head = Response::from_parts(parts, ());
                    super::strip_connection_headers(head.headers_mut(), false);
                    // `contains_key` then `insert`, not `entry`: `entry` makes room for one
                    // more field first, and a map decoded from the upstream is full, so every
                    // response that has the field already would rehash its map for nothing.
                    if !head.headers().contains_key(http::header::DATE) {
                        head.headers_mut()
                            .insert(http::header::DATE, super::date::now());
                    }
                    if body.is_end_stream() {
                        if this.reply.send_response(head, true).is_err() {
                            this.reply.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                    if let Some(len) = body.size_hint().exact() {
                        if !head.headers().contains_key(http::header::CONTENT_LENGTH) {
                            head.headers_mut()
                                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                        }
                    }
                    match this.reply.send_response(head, false) {
                        // Set in place (not returned from the `match` and set after it: one
                        // move of the response body less).
                        Ok(tx) => this.state.set(State::Body {
                            body,
                            tx,
                            pending: None,
                        }),
                        Err(_) => {
                            this.reply.send_reset(h2::Reason::INTERNAL_ERROR);
                            return Poll::Ready(());
                        }
                    }
                }
                StateProj::Body { body, tx, pending } => {
                    return match super::pipe::pipe(body, tx, pending, cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Sends one relayed 1xx head on the stream; a second `100 Continue` is dropped.
#[cold]
fn send_informational(
    reply: &mut h2::server::SendResponse<Bytes>,
    continue_sent: &mut bool,
    head: &[u8],
) {
    let Some(response) = informational::h2_informational(head) else {
        return;
    };
    if response.status() == http::StatusCode::CONTINUE {
        if *continue_sent {
            return;
        }
        *continue_sent = true;
    }
    if let Err(error) = reply.send_informational(response) {
        tracing::debug!(%error, "1xx response not sent");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{oneshot, watch};

    use super::*;

    thread_local! {
        /// Idle connections that gave their buffers back, on this thread's (current-thread)
        /// test runtime.
        pub(super) static RELEASES: Cell<u64> = const { Cell::new(0) };
    }

    fn releases() -> u64 {
        RELEASES.with(Cell::get)
    }

    type TestBody = BoxBody<Bytes, BodyError>;

    /// Serves one h2c connection: `/hold` answers with a body that ends when the test sends
    /// its last chunk; any other request with its path, its `x-fill` field's length and its
    /// body's length.
    async fn server(
        hold: Option<oneshot::Receiver<Bytes>>,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let hold = Arc::new(Mutex::new(hold));
        let service = TestService(hold);
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let builder = builder(&ServerLimits::default());
            serve_connection(stream, &builder, service, stop_rx).await;
        });
        (addr, stop_tx, task)
    }

    #[derive(Clone)]
    struct TestService(Arc<Mutex<Option<oneshot::Receiver<Bytes>>>>);

    impl Service<Request<IncomingBody>> for TestService {
        type Response = Response<TestBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<IncomingBody>) -> Self::Future {
            let hold = Arc::clone(&self.0);
            Box::pin(async move {
                if req.uri().path() == "/hold" {
                    let rx = hold.lock().unwrap().take().expect("one /hold");
                    let chunk = futures_util::stream::once(async move {
                        Ok::<_, BodyError>(http_body::Frame::data(rx.await.unwrap()))
                    });
                    let body: TestBody = StreamBody::new(chunk).boxed();
                    return Ok(Response::new(body));
                }
                let fill = req.headers().get("x-fill").map_or(0, |v| v.len());
                let path = req.uri().path().to_owned();
                let length = req.into_body().collect().await.unwrap().to_bytes().len();
                let body: TestBody = Full::new(Bytes::from(format!("{path} {fill} {length}")))
                    .map_err(|never| match never {})
                    .boxed();
                Ok(Response::new(body))
            })
        }
    }

    async fn client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    /// Sends `path` with a `fill`-byte field and a `body`-byte body; returns the response text.
    async fn get(
        sender: &mut h2::client::SendRequest<Bytes>,
        path: &str,
        fill: usize,
        body: usize,
    ) -> String {
        let mut sender = sender.clone().ready().await.unwrap();
        let request = Request::post(format!("http://x{path}"))
            .header("x-fill", "a1b2".repeat(fill / 4))
            .body(())
            .unwrap();
        let (response, mut tx) = sender.send_request(request, body == 0).unwrap();
        if body > 0 {
            tx.send_data(Bytes::from(vec![b'x'; body]), true).unwrap();
        }
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut recv = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        String::from_utf8(text).unwrap()
    }

    /// Runs `test` on a current-thread runtime whose clock is paused (it advances whenever the
    /// runtime is idle), on a thread of its own, and fails if it has not finished within
    /// `limit` of real time: a regression that leaves a released connection unable to read or
    /// write would otherwise hang the test instead of failing it.
    fn paused_within(limit: std::time::Duration, test: impl Future<Output = ()> + Send + 'static) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test)));
            let _ = done_tx.send(outcome);
        });
        match done_rx.recv_timeout(limit) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the test did not finish within {limit:?} of real time"),
        }
    }

    const REAL_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

    #[test]
    fn an_idle_connection_gives_its_buffers_back_and_serves_again() {
        paused_within(REAL_TIME_LIMIT, idle_connection_gives_its_buffers_back());
    }

    async fn idle_connection_gives_its_buffers_back() {
        let (addr, _stop, _) = server(None).await;
        let mut sender = client(addr).await;
        assert_eq!(get(&mut sender, "/a", 0, 0).await, "/a 0 0");
        // Requests closer together than the park delay keep the buffers.
        for _ in 0..3 {
            tokio::time::sleep(PARK_DELAY / 2).await;
            assert_eq!(get(&mut sender, "/a", 0, 0).await, "/a 0 0");
        }
        assert_eq!(releases(), 0);
        tokio::time::sleep(PARK_DELAY * 3).await;
        assert_eq!(releases(), 1, "released once while idle");
        // After the release: a large (Huffman-coded) field, a body of several frames, a
        // response; then idle again.
        assert_eq!(
            get(&mut sender, "/b", 6000, 100_000).await,
            "/b 6000 100000"
        );
        assert_eq!(get(&mut sender, "/c", 40, 10).await, "/c 40 10");
        tokio::time::sleep(PARK_DELAY * 3).await;
        assert_eq!(releases(), 2);
        assert_eq!(get(&mut sender, "/d", 0, 0).await, "/d 0 0");
    }

    #[test]
    fn a_connection_with_an_open_stream_keeps_its_buffers() {
        paused_within(REAL_TIME_LIMIT, open_stream_keeps_buffers());
    }

    async fn open_stream_keeps_buffers() {
        let (tx, rx) = oneshot::channel();
        let (addr, _stop, _) = server(Some(rx)).await;
        let mut sender = client(addr).await;
        let held = tokio::spawn({
            let mut sender = sender.clone();
            async move { get(&mut sender, "/hold", 0, 0).await }
        });
        tokio::time::sleep(PARK_DELAY * 5).await;
        assert_eq!(releases(), 0, "a response in progress keeps the buffers");
        tx.send(Bytes::from_static(b"done")).unwrap();
        assert_eq!(held.await.unwrap(), "done");
        tokio::time::sleep(PARK_DELAY * 3).await;
        assert_eq!(releases(), 1);
        assert_eq!(get(&mut sender, "/a", 0, 0).await, "/a 0 0");
    }

    /// In real time: with the clock paused, the timeout below would fire while the socket's
    /// bytes are in flight.
    #[tokio::test]
    async fn a_released_connection_is_closed_by_a_graceful_shutdown() {
        let (addr, stop, served) = server(None).await;
        let mut sender = client(addr).await;
        assert_eq!(get(&mut sender, "/a", 0, 0).await, "/a 0 0");
        tokio::time::sleep(PARK_DELAY * 5 / 2).await;
        assert_eq!(releases(), 1);
        // The GOAWAY frames are written from a released write buffer, the client's PING answer
        // read into a released read buffer; then the connection closes.
        stop.send(true).unwrap();
        tokio::time::timeout(PARK_DELAY * 10, served)
            .await
            .expect("the connection is closed")
            .unwrap();
        drop(sender);
    }

    /// Streams opened together (their HEADERS in one write) are all served: after the first,
    /// the others are taken from the connection's queue without polling it again
    /// (`accept_next`).
    #[tokio::test]
    async fn streams_opened_in_one_write_are_all_served() {
        let (addr, _stop, _) = server(None).await;
        let sender = client(addr).await;
        for round in 0..20 {
            let requests = (0..8).map(|i| {
                let mut sender = sender.clone();
                async move { get(&mut sender, &format!("/{round}-{i}"), 0, 0).await }
            });
            let answers = futures_util::future::join_all(requests).await;
            for (i, answer) in answers.iter().enumerate() {
                assert_eq!(answer, &format!("/{round}-{i} 0 0"));
            }
        }
    }

    /// A graceful shutdown waits for the open stream, and the connection closes as soon as
    /// that stream has ended (the patched h2 wakes a connection for an ended stream only when
    /// it may have to close, as after a GOAWAY).
    #[tokio::test]
    async fn after_a_goaway_the_connection_closes_when_its_last_stream_ends() {
        let (tx, rx) = oneshot::channel();
        let (addr, stop, served) = server(Some(rx)).await;
        let mut sender = client(addr).await;
        assert_eq!(get(&mut sender, "/a", 0, 0).await, "/a 0 0");
        // The held response's head comes at once, its body when the test sends it.
        let mut ready = sender.clone().ready().await.unwrap();
        let request = Request::get("http://x/hold").body(()).unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        stop.send(true).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !served.is_finished(),
            "the open stream keeps the connection"
        );
        tx.send(Bytes::from_static(b"done")).unwrap();
        assert_eq!(body.data().await.unwrap().unwrap(), "done");
        tokio::time::timeout(std::time::Duration::from_secs(10), served)
            .await
            .expect("the connection closes once its last stream has ended")
            .unwrap();
    }

    /// A response body waiting for its next chunk stops when the client resets the stream:
    /// the copy registers for the reset before it waits (`pipe`), and the body (here holding
    /// the chunk's channel) is dropped.
    #[tokio::test]
    async fn a_response_body_waiting_for_a_chunk_stops_when_the_client_resets_the_stream() {
        let (mut tx, rx) = oneshot::channel();
        let (addr, _stop, _) = server(Some(rx)).await;
        let sender = client(addr).await;
        let mut ready = sender.clone().ready().await.unwrap();
        let request = Request::get("http://x/hold").body(()).unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let body = response.await.unwrap().into_body();
        // Let the server's stream wait for the chunk, then reset the stream (CANCEL).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!tx.is_closed());
        drop(body);
        tokio::time::timeout(std::time::Duration::from_secs(10), tx.closed())
            .await
            .expect("the reset stream's body is dropped");
    }

    /// A client connection closes once nothing can use it any more: its last `SendRequest`
    /// dropped while a stream was open, that stream's end wakes it (the patched h2 wakes a
    /// client connection for an ended stream when no other reference is left).
    #[tokio::test]
    async fn a_client_connection_without_handles_closes_when_its_last_stream_ends() {
        let (tx, rx) = oneshot::channel();
        let (addr, _stop, _) = server(Some(rx)).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = h2::client::handshake(stream).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut sender = sender.ready().await.unwrap();
        let request = Request::get("http://x/hold").body(()).unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        drop(sender);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!conn.is_finished(), "the open stream keeps the connection");
        tx.send(Bytes::from_static(b"done")).unwrap();
        let mut body = response.await.unwrap().into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        drop(body);
        tokio::time::timeout(std::time::Duration::from_secs(10), conn)
            .await
            .expect("the connection closes once its last stream has ended")
            .unwrap()
            .unwrap();
    }

    /// Whole frames of the largest allowed size are served; a frame announcing one byte more
    /// than SETTINGS_MAX_FRAME_SIZE ends the connection with a FRAME_SIZE_ERROR GOAWAY (the
    /// patched h2 cuts frames with its own splitter: vendor/h2.patch).
    #[tokio::test]
    async fn frames_up_to_the_maximum_size_pass_and_a_larger_one_is_a_frame_size_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const MAX: usize = 16_384;
        let (addr, _stop, _) = server(None).await;
        let mut sender = client(addr).await;
        // Request bodies of one, two and a half full-size DATA frames.
        for body in [MAX, 2 * MAX, MAX * 5 / 2] {
            assert_eq!(
                get(&mut sender, "/big", 0, body).await,
                format!("/big 0 {body}")
            );
        }

        let (addr, _stop, _) = server(None).await;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
        let too_big = MAX + 1;
        // A PING header announcing MAX + 1 payload bytes: refused from its header alone.
        hello.extend_from_slice(&[(too_big >> 16) as u8, (too_big >> 8) as u8, too_big as u8]);
        hello.extend_from_slice(&[6, 0, 0, 0, 0, 0]);
        raw.write_all(&hello).await.unwrap();
        let mut seen = Vec::new();
        let goaway = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            loop {
                // Frames until a GOAWAY: [len:3][type:1][flags:1][stream:4][last:4][code:4].
                let mut at = 0;
                while seen.len() >= at + 9 {
                    let len = usize::from(seen[at]) << 16
                        | usize::from(seen[at + 1]) << 8
                        | usize::from(seen[at + 2]);
                    if seen.len() < at + 9 + len {
                        break;
                    }
                    if seen[at + 3] == 7 {
                        let code = &seen[at + 13..at + 17];
                        return u32::from_be_bytes(code.try_into().unwrap());
                    }
                    at += 9 + len;
                }
                let n = raw.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed without a GOAWAY");
                seen.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a GOAWAY within 10 s");
        assert_eq!(goaway, 0x6, "FRAME_SIZE_ERROR");
    }
}
