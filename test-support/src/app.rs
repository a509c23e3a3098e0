//! In-process user containers: a hyper server (HTTP/1.1 + h2c, upgrades allowed) with a per-test
//! handler that records every request head and the concurrency it sees, and raw-TCP servers for
//! byte-level behaviour (header case, resets).
//!
//! Apps answer the activator's pod probe (`K-Network-Probe: queue`) with `200 queue`, like a
//! queue-proxy, so an activator's discovery may point straight at them; probes are neither
//! recorded nor counted. (A queue-proxy answers that probe itself, so apps behind one never see it.)

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Error type of test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of test-app responses and client requests.
pub type TestBody = BoxBody<Bytes, BoxError>;
/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A response with `status` and a fixed body.
pub fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// A request head as the app saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: http::Method,
    /// Request target (path and query as received; absolute for h2).
    pub uri: http::Uri,
    /// Protocol version.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
}

impl Seen {
    /// The path and raw query.
    pub fn path_and_query(&self) -> String {
        self.uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default()
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// Current and highest number of handler invocations in progress.
#[derive(Debug, Default)]
pub struct Concurrency {
    current: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
    /// Handlers running now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
    /// Most handlers ever running at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    /// Handler invocations so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

struct Leave(Arc<Concurrency>);
impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A gate handlers can wait on until the test opens it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(watch::Sender::new(false)))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }
    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
    /// Opens the gate for every current and future waiter.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

/// A request handler of a test app.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<TestBody>> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Whether `req` is the activator's pod probe (`K-Network-Probe: queue`).
fn is_pod_probe<B>(req: &Request<B>) -> bool {
    req.headers()
        .get("k-network-probe")
        .is_some_and(|v| v == "queue")
}

/// A user container served by hyper (HTTP/1.1 and h2c prior knowledge, upgrades allowed) on
/// `127.0.0.1:<ephemeral>`. It stops with the test's runtime.
#[derive(Clone)]
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Concurrency of the handler.
    pub concurrency: Arc<Concurrency>,
}

impl App {
    /// Starts an app answering with `handler` (and answering pod probes with `200 queue`).
    pub async fn start(handler: Handler) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let concurrency: Arc<Concurrency> = Arc::default();
        let app = App {
            addr,
            seen: seen.clone(),
            concurrency: concurrency.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (handler, seen, concurrency) =
                    (handler.clone(), seen.clone(), concurrency.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let fut = if is_pod_probe(&req) {
                        Box::pin(async { respond(StatusCode::OK, "queue") })
                            as BoxFuture<Response<TestBody>>
                    } else {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        concurrency.enter();
                        let leave = Leave(concurrency.clone());
                        let inner = handler(req);
                        Box::pin(async move {
                            let response = inner.await;
                            drop(leave);
                            response
                        })
                    };
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                tokio::spawn(async move {
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(20_000);
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        app
    }

    /// An app answering every request with `200` and body `ok`.
    pub async fn ok() -> App {
        App::start(handler(|_| async { respond(StatusCode::OK, "ok") })).await
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request head seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests seen so far.
    pub fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The only request head seen (panics unless exactly one request arrived).
    pub fn only_seen(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one request at the app: {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }
}

/// A server handing each accepted TCP connection to `on_conn` (raw byte-level apps).
pub async fn raw_app<F, Fut>(on_conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw app");
    let addr = listener.local_addr().expect("raw app addr");
    let on_conn = Arc::new(on_conn);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let on_conn = on_conn.clone();
            tokio::spawn(async move { on_conn(stream).await });
        }
    });
    addr
}

/// Reads from `stream` until the end of an HTTP head (`\r\n\r\n`); returns the head bytes
/// (including the blank line) or `None` on EOF/error first. Bytes read past the head are lost:
/// use [`read_head_buffered`] when something follows the head.
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    read_head_buffered(stream, &mut Vec::new()).await
}

/// [`read_head`] keeping whatever was read past the head in `buf` (which may already hold the
/// start of the head from a previous read).
pub async fn read_head_buffered(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some(std::mem::replace(buf, rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads exactly `n` bytes, taking them from `buf` first.
pub async fn read_exact_buffered(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        let got = stream.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    let rest = buf.split_off(n);
    Some(std::mem::replace(buf, rest))
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Closes `stream` with a TCP reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let std = stream.into_std().expect("into_std");
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .expect("set_linger");
    drop(std);
}

/// A streaming body fed through a channel; ends when every sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

/// A channel body and its sender.
pub fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

impl ChannelBody {
    /// As a [`TestBody`].
    pub fn boxed(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

/// A body of `len` bytes generated in `chunk`-sized pieces (never held in memory at once).
pub struct Generated {
    remaining: u64,
    chunk: Bytes,
    exact: bool,
}

impl Generated {
    /// `len` bytes of `b'x'`, announced with an exact size if `exact` (so `Content-Length` is
    /// set), else streamed with unknown length (chunked).
    pub fn new(len: u64, exact: bool) -> Self {
        Generated {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            exact,
        }
    }

    /// As a [`TestBody`].
    pub fn boxed(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a whole body, counting bytes without keeping them.
pub async fn count_body<B>(mut body: B) -> Result<u64, B::Error>
where
    B: Body + Unpin,
    B::Data: bytes::Buf,
{
    use bytes::Buf;
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.remaining() as u64;
        }
    }
    Ok(n)
}

/// An app echoing every request body back as it streams in (full duplex: the response starts
/// before the request body ends).
pub async fn echo_app() -> App {
    App::start(handler(|req: Request<Incoming>| async move {
        let body = req.into_body().map_err(BoxError::from).boxed();
        Response::new(body)
    }))
    .await
}
