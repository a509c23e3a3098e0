//! Parking of idle pooled connections, end to end: a hyper server runs the [`ReverseProxy`]
//! in front of a raw app that counts its connections and requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

use super::Upstream;
use crate::proxy::{PeerIp, ReverseProxy};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An app answering `200 ok` to every request head, closing all its connections on demand.
struct App {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// Bumped to close the connections open at that moment: a connection's receiver sees a
    /// bump made while it was busy writing too (a `Notify::notify_waiters` reaches only the
    /// tasks waiting at that instant, and a close could be lost under load).
    close: Arc<watch::Sender<u64>>,
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App {
            addr: listener.local_addr().unwrap(),
            accepts: Arc::default(),
            requests: Arc::default(),
            closed: Arc::default(),
            close: Arc::new(watch::Sender::new(0)),
        };
        let (accepts, requests, closed, close) = (
            Arc::clone(&app.accepts),
            Arc::clone(&app.requests),
            Arc::clone(&app.closed),
            Arc::clone(&app.close),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepts.fetch_add(1, Ordering::SeqCst);
                let (requests, closed, close) = (
                    Arc::clone(&requests),
                    Arc::clone(&closed),
                    close.subscribe(),
                );
                tokio::spawn(serve(stream, requests, closed, close));
            }
        });
        app
    }

    /// Has the app close its open connections and waits until it has closed `total` in all.
    async fn close_connections(&self, total: usize) {
        self.close.send_modify(|generation| *generation += 1);
        wait_until("app closed", || self.closed.load(Ordering::SeqCst) == total).await;
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    mut close: watch::Receiver<u64>,
) {
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
            }
            _ = close.changed() => {
                drop(stream);
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            requests.fetch_add(1, Ordering::SeqCst);
            stream.write_all(RESPONSE).await.unwrap();
        }
    }
}

/// The proxy in front of `app`, and its pool.
async fn proxy(app: SocketAddr) -> (SocketAddr, &'static Upstream) {
    let upstream: &'static Upstream = Box::leak(Box::new(Upstream::new(app, 16)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                ReverseProxy::new(upstream, PeerIp::new(peer)).call(request.map(Into::into))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, upstream)
}

/// One request on a new client connection; the response's status line and body.
async fn get(proxy: SocketAddr) -> String {
    exchange(
        proxy,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await
}

/// Reads from `stream` into `buf` until a request head is in it, and takes the head out;
/// `None` at the end of stream first.
async fn next_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.drain(..end + 4).collect());
        }
        if stream.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const OK: &str = "HTTP/1.1 200 OK ok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_reused_on_the_same_socket() {
    let app = App::start().await;
    let (proxy, upstream) = proxy(app.addr).await;
    assert_eq!(get(proxy).await, OK);
    wait_until("parked", || upstream.parked_connections() == 1).await;
    assert_eq!(upstream.idle_connections(), 1);

    assert_eq!(get(proxy).await, OK);
    assert_eq!(
        app.accepts.load(Ordering::SeqCst),
        1,
        "the same TCP connection"
    );
    assert_eq!(app.requests.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.parked_connections(), 0);
    // Parked again after another idle second, and reused again.
    wait_until("parked again", || upstream.parked_connections() == 1).await;
    assert_eq!(get(proxy).await, OK);
    assert_eq!(app.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(app.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_closer_than_the_park_delay_keep_their_hyper_connection() {
    let app = App::start().await;
    let (proxy, upstream) = proxy(app.addr).await;
    for _ in 0..5 {
        assert_eq!(get(proxy).await, OK);
        assert_eq!(upstream.parked_connections(), 0);
    }
    assert_eq!(app.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_the_app_closes_is_dropped_and_not_handed_out() {
    let app = App::start().await;
    let (proxy, upstream) = proxy(app.addr).await;
    assert_eq!(get(proxy).await, OK);
    wait_until("parked", || upstream.parked_connections() == 1).await;

    app.close.send_modify(|generation| *generation += 1);
    wait_until("closed by the watcher", || {
        upstream.parked_connections() == 0
    })
    .await;

    assert_eq!(get(proxy).await, OK);
    assert_eq!(app.closed.load(Ordering::SeqCst), 1);
    assert_eq!(app.accepts.load(Ordering::SeqCst), 2, "a new connection");
    assert_eq!(app.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_the_close_of_a_parked_connection_is_not_lost() {
    let app = App::start().await;
    let (proxy, upstream) = proxy(app.addr).await;
    for round in 1..=5 {
        assert_eq!(get(proxy).await, OK);
        wait_until("parked", || upstream.parked_connections() == 1).await;
        app.close_connections(round).await;
        // At once: the watcher may not have seen the end of stream yet.
        assert_eq!(get(proxy).await, OK, "round {round}");
        assert_eq!(app.requests.load(Ordering::SeqCst), 2 * round);
        wait_until("next round parked", || upstream.parked_connections() == 1).await;
        app.close_connections(round + 1).await;
        wait_until("dropped", || upstream.parked_connections() == 0).await;
        app.closed.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An idle connection is not polled while it waits in the pool (its request's task drove it),
/// so one the app closes before it is parked is found closed only when the next request takes
/// it: that request comes back unwritten and goes once on a new connection, never lost or sent
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_live_connection_the_app_closed_goes_on_a_new_one() {
    let app = App::start().await;
    let (proxy, upstream) = proxy(app.addr).await;
    for round in 1..=5 {
        assert_eq!(get(proxy).await, OK);
        assert_eq!(upstream.parked_connections(), 0, "too young to park");
        app.close_connections(round).await;
        assert_eq!(get(proxy).await, OK, "round {round}");
        assert_eq!(app.requests.load(Ordering::SeqCst), 2 * round, "each once");
        assert_eq!(app.accepts.load(Ordering::SeqCst), round + 1);
        app.close_connections(round + 1).await;
        app.closed.fetch_sub(1, Ordering::SeqCst);
        app.accepts.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An app that answers before reading the request body: the connection goes back to the pool
/// only once the body is out (a task drives it there), and the next request reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_answered_before_its_upload_ended_is_pooled_after_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let uploads = Arc::new(AtomicUsize::new(0));
    let (counted, uploaded) = (Arc::clone(&accepts), Arc::clone(&uploads));
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let uploaded = Arc::clone(&uploaded);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // A head, answered at once; then its 6-byte body, read after.
                    let Some(head) = next_head(&mut stream, &mut buf).await else {
                        return;
                    };
                    let posted = head.starts_with(b"POST");
                    stream.write_all(RESPONSE).await.unwrap();
                    if posted {
                        while buf.len() < 6 {
                            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        buf.drain(..6);
                        uploaded.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let (proxy, upstream) = proxy(app).await;

    // The client sends the head, then the body only after the response is in.
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; RESPONSE.len()];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut head))
        .await
        .expect("the response before the body")
        .unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(
        upstream.idle_connections(),
        0,
        "not idle while the body is due"
    );
    client.write_all(b"upload").await.unwrap();
    wait_until("uploaded", || uploads.load(Ordering::SeqCst) == 1).await;
    wait_until("pooled", || upstream.idle_connections() == 1).await;

    assert_eq!(get(proxy).await, OK);
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "the same connection");
}

/// How [`swallowing_app`] ends a connection on the request it does not answer.
#[derive(Clone, Copy)]
enum Hangup {
    /// A plain close (FIN): the proxy reads the end of stream.
    Close,
    /// A reset (RST, lingering 0 s): the proxy's read fails.
    Reset,
}

/// An app that answers the first `answered` requests on each connection and, on the next,
/// reads its head and hangs up without answering: the keep-alive race as the proxy sees it
/// when the app closed a connection just as a request was written to it. Counts the
/// connections it accepted and the request heads it read.
async fn swallowing_app(
    answered: usize,
    hangup: Hangup,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(AtomicUsize::new(0));
    let (counted, read) = (Arc::clone(&accepts), Arc::clone(&heads));
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let read = Arc::clone(&read);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for served in 0.. {
                    if next_head(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                    read.fetch_add(1, Ordering::SeqCst);
                    if served == answered {
                        if let Hangup::Reset = hangup {
                            socket2::SockRef::from(&stream)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                        }
                        return;
                    }
                    stream.write_all(RESPONSE).await.unwrap();
                }
            });
        }
    });
    (addr, accepts, heads)
}

/// `head` (a request head ending in a blank line) on a new client connection; the response's
/// status line and body.
async fn exchange(proxy: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("a response within 10 s")
    .unwrap();
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response.rsplit("\r\n\r\n").next().unwrap_or_default();
    format!("{status} {body}")
}

/// The keep-alive race the other way round: the request was written to a pooled connection
/// and the app hung up without a byte of response. A `GET` is sent again, once, on a new
/// connection, as Go's transport does for a replayable request on a reused connection.
#[tokio::test]
async fn a_get_written_to_a_reused_connection_the_app_hung_up_goes_again_on_a_new_one() {
    for hangup in [Hangup::Close, Hangup::Reset] {
        let (app, accepts, heads) = swallowing_app(1, hangup).await;
        let (proxy, _) = proxy(app).await;
        assert_eq!(get(proxy).await, OK);
        assert_eq!(get(proxy).await, OK, "sent again");
        assert_eq!(
            heads.load(Ordering::SeqCst),
            3,
            "answered, hung up on, answered"
        );
        assert_eq!(accepts.load(Ordering::SeqCst), 2);
    }
}

/// A `POST` without a body is not idempotent: the app may have acted on it before hanging up,
/// so it is not sent again (Go's transport neither) and the client gets the `502`. With an
/// `Idempotency-Key` (or `X-Idempotency-Key`), the client said repeating it is harmless.
#[tokio::test]
async fn an_unanswered_post_goes_again_only_with_an_idempotency_key() {
    let post = "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nConnection: close\r\n";
    for (key, sent_again) in [
        ("", false),
        ("Idempotency-Key: 7\r\n", true),
        ("X-Idempotency-Key: 7\r\n", true),
    ] {
        let (app, accepts, heads) = swallowing_app(1, Hangup::Close).await;
        let (proxy, _) = proxy(app).await;
        assert_eq!(get(proxy).await, OK);
        let answer = exchange(proxy, &format!("{post}{key}\r\n")).await;
        if sent_again {
            assert_eq!(answer, OK, "{key}");
            assert_eq!(heads.load(Ordering::SeqCst), 3, "{key}");
            assert_eq!(accepts.load(Ordering::SeqCst), 2, "{key}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
            assert_eq!(heads.load(Ordering::SeqCst), 2, "once");
            assert_eq!(accepts.load(Ordering::SeqCst), 1, "no new connection");
        }
    }
}

/// A new connection that fails before answering is not a race with an idle close: the request
/// is not sent again (Go's transport retries only on a reused connection), and an app that hangs
/// up on every request is not sent it twice.
#[tokio::test]
async fn a_request_unanswered_on_a_new_connection_is_not_sent_again() {
    let (app, accepts, heads) = swallowing_app(0, Hangup::Close).await;
    let (proxy, _) = proxy(app).await;
    let answer = get(proxy).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert_eq!(heads.load(Ordering::SeqCst), 1);
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
}

/// The one retry goes on a new connection: when the app hangs up on that one too, the client
/// gets the `502` and the app saw the request twice, not more.
#[tokio::test]
async fn the_retry_is_made_once() {
    // Answers the first request on the first connection only; hangs up on everything after.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let read = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let read = Arc::clone(&read);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while next_head(&mut stream, &mut buf).await.is_some() {
                    if read.fetch_add(1, Ordering::SeqCst) > 0 {
                        return;
                    }
                    stream.write_all(RESPONSE).await.unwrap();
                }
            });
        }
    });
    let (proxy, _) = proxy(app).await;
    assert_eq!(get(proxy).await, OK);
    let answer = get(proxy).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        3,
        "the first, the request and its one retry"
    );
}

/// A pod that died (or an app that closed its idle connections) leaves every pooled connection
/// to it closed. A request that finds its pooled connection closed goes again on a dialed
/// connection, not on the next pooled one, which is closed too and would fail it with a `502`
/// although it never left (and the activator could have sent it to another pod).
#[tokio::test]
async fn the_retry_after_a_closed_pooled_connection_dials_instead_of_taking_the_next() {
    // Answers every request; the first request of each of the first two connections is answered
    // once both are in (so the pool ends up with two idle connections); closes every connection
    // open when told to.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let hang_up = Arc::new(watch::Sender::new(false));
    let both_in = Arc::new(tokio::sync::Barrier::new(2));
    let (counted, closing, hang_ups) = (
        Arc::clone(&accepts),
        Arc::clone(&closed),
        Arc::clone(&hang_up),
    );
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let gated = counted.fetch_add(1, Ordering::SeqCst) < 2;
            let (closed, mut hang_up, both_in) = (
                Arc::clone(&closing),
                hang_ups.subscribe(),
                Arc::clone(&both_in),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut gated = gated;
                loop {
                    tokio::select! {
                        head = next_head(&mut stream, &mut buf) => {
                            if head.is_none() {
                                return;
                            }
                        }
                        _ = hang_up.changed() => {
                            drop(stream);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    if std::mem::take(&mut gated) {
                        both_in.wait().await;
                    }
                    stream.write_all(RESPONSE).await.unwrap();
                }
            });
        }
    });
    let (proxy, upstream) = proxy(app).await;
    let (first, second) = tokio::join!(get(proxy), get(proxy));
    assert_eq!((first.as_str(), second.as_str()), (OK, OK));
    wait_until("both pooled", || upstream.idle_connections() == 2).await;
    hang_up.send_replace(true);
    wait_until("the app closed both", || closed.load(Ordering::SeqCst) == 2).await;

    assert_eq!(get(proxy).await, OK, "sent again on a new connection");
    assert_eq!(accepts.load(Ordering::SeqCst), 3, "one dial for the retry");
}
