//! Listeners: dual-stack binding, the accept loop, HTTP/1.1 + h2c on one port, HTTP/1.1 + HTTP/2
//! over TLS ([`serve_tls`]), explicit limits, and graceful shutdown (stop accepting, close idle
//! keep-alive connections, GOAWAY on HTTP/2, wait for in-progress exchanges).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use crate::body::LocalBody;
use crate::env::{optional_int, Env, EnvError};
use crate::go_answers::{self, ConnShared, GoAnswers, Http1Check};
use crate::h2::IncomingBody;
use crate::h2c_upgrade::{self, H2cHandover, H2cRequest, Injected};
use crate::informational::ConnScope;

/// Protocols a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.x only (admin, metrics).
    Http1,
    /// HTTP/1.x and h2c with prior knowledge on the same port.
    Http1AndH2c,
}

/// Per-listener limits. Defaults follow Go's `net/http` where upstream relies on them; the ones
/// Go leaves unbounded (connections, the wait for the first byte, HTTP/2 resets) get explicit
/// bounds here. README "Limits" lists each with its behaviour at the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time allowed to read a request head (Go `ReadHeaderTimeout`). It also bounds the wait for
    /// a new connection's first bytes (HTTP/1 head or HTTP/2 preface) and, because hyper restarts
    /// it as soon as a response is finished, the idle time of an HTTP/1 keep-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (Go's `DefaultMaxHeaderBytes`, 1 MiB); more gets `431`.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request head; more gets `431`.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection (Go's default, 250).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client but not yet accepted (rapid-reset protection): beyond
    /// it the connection is closed with GOAWAY `ENHANCE_YOUR_CALM`.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset because of client protocol errors over a connection's
    /// life (the second rapid-reset variant): beyond it GOAWAY `ENHANCE_YOUR_CALM`.
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/2 header list size (the h2 analogue of `max_header_bytes`; it also bounds a
    /// CONTINUATION sequence, whose decoding h2 stops once it is exceeded).
    pub h2_max_header_list_size: u32,
    /// Open connections per listener, 0 = unbounded. At the limit the accept loop pauses: new
    /// connections wait in the kernel's listen backlog (1024) until one closes.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 1 << 20,
            max_headers: 500,
            h2_max_concurrent_streams: 250,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_max_header_list_size: 1 << 20,
            max_connections: 10_000,
        }
    }
}

/// The environment variable names of the operator-tunable [`ServerLimits`] of one binary (see
/// [`limit_vars!`](crate::limit_vars)).
#[derive(Clone, Copy, Debug)]
pub struct LimitVars {
    /// [`ServerLimits::header_read_timeout`], whole seconds (at least 1).
    pub header_read_timeout_seconds: &'static str,
    /// [`ServerLimits::max_header_bytes`] (at least 8192: hyper's smallest read buffer).
    pub max_header_bytes: &'static str,
    /// [`ServerLimits::max_headers`] (at least 1).
    pub max_headers: &'static str,
    /// [`ServerLimits::h2_max_concurrent_streams`] (at least 1).
    pub h2_max_concurrent_streams: &'static str,
    /// [`ServerLimits::max_connections`] (0 = unbounded).
    pub max_connections: &'static str,
}

/// [`LimitVars`] named `<PREFIX>HEADER_READ_TIMEOUT_SECONDS`, `<PREFIX>MAX_HEADER_BYTES`,
/// `<PREFIX>MAX_HEADERS`, `<PREFIX>H2_MAX_CONCURRENT_STREAMS` and `<PREFIX>MAX_CONNECTIONS`.
#[macro_export]
macro_rules! limit_vars {
    ($prefix:literal) => {
        $crate::server::LimitVars {
            header_read_timeout_seconds: concat!($prefix, "HEADER_READ_TIMEOUT_SECONDS"),
            max_header_bytes: concat!($prefix, "MAX_HEADER_BYTES"),
            max_headers: concat!($prefix, "MAX_HEADERS"),
            h2_max_concurrent_streams: concat!($prefix, "H2_MAX_CONCURRENT_STREAMS"),
            max_connections: concat!($prefix, "MAX_CONNECTIONS"),
        }
    };
}

/// Largest accepted `*_HEADER_READ_TIMEOUT_SECONDS` (a day; keeps the timer arithmetic finite).
const MAX_HEADER_READ_TIMEOUT_SECONDS: u64 = 86_400;
/// hyper's smallest read buffer; a smaller head limit cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

impl ServerLimits {
    /// The defaults with the operator overrides named by `vars` applied; a value that is not a
    /// number or is out of range is an error naming the variable.
    pub fn from_env(env: &dyn Env, vars: &LimitVars) -> Result<ServerLimits, EnvError> {
        let d = ServerLimits::default();
        let timeout: u64 = ranged(
            env,
            vars.header_read_timeout_seconds,
            d.header_read_timeout.as_secs(),
            1..=MAX_HEADER_READ_TIMEOUT_SECONDS,
            "a whole number of seconds from 1 to 86400",
        )?;
        Ok(ServerLimits {
            header_read_timeout: Duration::from_secs(timeout),
            max_header_bytes: ranged(
                env,
                vars.max_header_bytes,
                d.max_header_bytes,
                MIN_HEADER_BYTES..=(64 << 20),
                "a byte count from 8192 to 67108864",
            )?,
            max_headers: ranged(
                env,
                vars.max_headers,
                d.max_headers,
                1..=100_000,
                "a header count from 1 to 100000",
            )?,
            h2_max_concurrent_streams: ranged(
                env,
                vars.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams,
                1..=100_000,
                "a stream count from 1 to 100000",
            )?,
            max_connections: ranged(
                env,
                vars.max_connections,
                d.max_connections,
                0..=10_000_000,
                "a connection count (0 = unbounded)",
            )?,
            ..d
        })
    }
}

fn ranged<T>(
    env: &dyn Env,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<T, EnvError>
where
    T: std::str::FromStr + PartialOrd + ToString,
{
    let value: T = optional_int(env, name, default, expected)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(EnvError::Invalid {
            name,
            value: value.to_string(),
            expected,
        })
    }
}

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("failed to listen on port {port}: {source}")]
pub struct BindError {
    /// The port.
    pub port: u16,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Binds `port` on every address, IPv6 and IPv4 (one dual-stack socket; IPv4 only where the host
/// has no IPv6).
pub fn bind_dual_stack(port: u16) -> Result<TcpListener, BindError> {
    let error = |source| BindError { port, source };
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let listener = match bind_socket(v6, true) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(error(e)),
        Err(_) => {
            bind_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false).map_err(error)?
        }
    };
    TcpListener::from_std(listener).map_err(error)
}

/// Binds `port` on every address like [`bind_dual_stack`], `count` times, every socket with
/// `SO_REUSEPORT`: one listening socket per worker thread, the kernel spreading new connections
/// across them (a connection then lives on the worker that accepted it). They are returned as
/// std listeners because each worker must register its own with its runtime
/// (`tokio::net::TcpListener::from_std` inside that runtime). One socket is bound without
/// `SO_REUSEPORT`, as [`bind_dual_stack`] binds it. Port 0 binds the later sockets to the port
/// the first one got.
pub fn bind_dual_stack_shared(
    port: u16,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let reuse_port = count > 1;
    let error = |source| BindError { port, source };
    let bind_one = |port: u16| -> std::io::Result<std::net::TcpListener> {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        match bind_socket_with(v6, true, reuse_port) {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
            Err(_) => bind_socket_with(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                false,
                reuse_port,
            ),
        }
    };
    let first = bind_one(port).map_err(error)?;
    let port = first.local_addr().map_err(error)?.port();
    let mut listeners = vec![first];
    for _ in 1..count.max(1) {
        listeners.push(bind_one(port).map_err(error)?);
    }
    Ok(listeners)
}

/// Binds exactly `addr` (tests and local runs that want loopback only).
pub fn bind_addr(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let std = bind_socket(addr, false).map_err(|source| BindError {
        port: addr.port(),
        source,
    })?;
    TcpListener::from_std(std).map_err(|source| BindError {
        port: addr.port(),
        source,
    })
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> std::io::Result<std::net::TcpListener> {
    bind_socket_with(addr, dual_stack, false)
}

fn bind_socket_with(
    addr: SocketAddr,
    dual_stack: bool,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if dual_stack && addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Adapts a cloneable tower service (always ready) to hyper's `&self` service interface. On
/// HTTP/1 it first applies Go's server rules ([`go_answers::check_http1`]) and, where enabled,
/// the h2c upgrade ([`h2c_upgrade`]); those answers come from here, with an empty body.
///
/// The connection's one copy of the service is called through a `RefCell` (hyper's HTTP/1
/// server calls it from the connection's task, one request at a time, and never while a call
/// runs): a copy for each request, made and dropped around the call, cost the queue-proxy
/// about 105 instructions per request (`measure.py qp 0 10000`: 18,121 → 18,014).
#[derive(Clone, Debug)]
pub struct HyperService<S> {
    inner: RefCell<S>,
    conn: Arc<ConnShared>,
    h2c: Option<Arc<H2cServer>>,
}

/// The HTTP/2 server an h2c upgrade continues on (one per listener).
#[derive(Debug)]
struct H2cServer {
    builder: h2::server::Builder,
    shutdown: watch::Receiver<bool>,
}

impl H2cServer {
    fn new(limits: &ServerLimits, shutdown: watch::Receiver<bool>) -> Self {
        H2cServer {
            builder: crate::h2::server::builder(limits),
            shutdown,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`HyperService`]'s response future.
    #[project = ServedProj]
    #[allow(missing_docs)]
    pub enum Served<F, B> {
        /// The service's answer.
        Inner { #[pin] future: F },
        /// An answer of the listener's own (small: the response is built when polled, so the
        /// future stays the size of the service's).
        Local { answer: Option<LocalAnswer>, body: std::marker::PhantomData<fn() -> B> },
    }
}

impl<F, B> Served<F, B> {
    fn local(answer: LocalAnswer) -> Self {
        Served::Local {
            answer: Some(answer),
            body: std::marker::PhantomData,
        }
    }
}

impl<F, B> std::future::Future for Served<F, B>
where
    F: std::future::Future<Output = Result<Response<B>, Infallible>>,
    B: LocalBody,
{
    type Output = Result<Response<B>, Infallible>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            ServedProj::Inner { future } => future.poll(cx),
            ServedProj::Local { answer, .. } => std::task::Poll::Ready(Ok(answer
                .take()
                .expect("polled after completion")
                .response())),
        }
    }
}

/// The answers a listener gives by itself, with an empty body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAnswer {
    /// HTTP/1.1 without `Host`: `400` and close (its head is replaced by Go's bytes on its way
    /// out, `GoAnswers`).
    MissingHost,
    /// An h2c upgrade: `101`.
    SwitchingToH2c,
    /// An h2c upgrade with a bad `HTTP2-Settings`: Go's empty `500`.
    BadH2cSettings,
}

impl LocalAnswer {
    fn response<B: LocalBody>(self) -> Response<B> {
        use http::header::{CONNECTION, UPGRADE};
        use http::HeaderValue;
        let mut response = Response::new(B::empty());
        let headers = response.headers_mut();
        *response.status_mut() = match self {
            LocalAnswer::MissingHost => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                http::StatusCode::BAD_REQUEST
            }
            LocalAnswer::SwitchingToH2c => {
                headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
                headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
                http::StatusCode::SWITCHING_PROTOCOLS
            }
            LocalAnswer::BadH2cSettings => http::StatusCode::INTERNAL_SERVER_ERROR,
        };
        response
    }
}

impl<S> HyperService<S> {
    fn new(inner: S, conn: Arc<ConnShared>, h2c: Option<Arc<H2cServer>>) -> Self {
        HyperService {
            inner: RefCell::new(inner),
            conn,
            h2c,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: LocalBody,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Served<S::Future, B>;

    #[inline]
    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if request.version() <= http::Version::HTTP_11 {
            self.conn.request_started(request.version());
            if go_answers::check_http1(&mut request) == Http1Check::MissingHost {
                self.conn.answer_missing_host();
                return Served::local(LocalAnswer::MissingHost);
            }
            if let Some(h2c) = &self.h2c {
                if request.version() == http::Version::HTTP_11 && may_upgrade(&request) {
                    if let Some(answer) = self.h2c_upgrade(h2c, &mut request) {
                        return Served::local(answer);
                    }
                }
            }
        }
        Served::Inner {
            future: self
                .inner
                .borrow_mut()
                .call(request.map(IncomingBody::from)),
        }
    }
}

/// Whether an HTTP/1.1 request from hyper's server may carry `Upgrade`, without a header lookup:
/// hyper gives every such request an upgrade handle (`OnUpgrade`, as it does for `CONNECT`), so
/// a request without one has no `Upgrade` (`h2c_upgrade::classify` looks it up for the rest).
#[inline]
fn may_upgrade<B>(request: &Request<B>) -> bool {
    let handle = request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some();
    debug_assert!(handle || !request.headers().contains_key(http::header::UPGRADE));
    handle
}

impl<S, B> HyperService<S>
where
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: LocalBody,
{
    /// Go's h2c handler: `101` and HTTP/2 from here on, the request being stream 1.
    #[inline(never)]
    fn h2c_upgrade(
        &self,
        h2c: &Arc<H2cServer>,
        request: &mut Request<Incoming>,
    ) -> Option<LocalAnswer> {
        match h2c_upgrade::classify(request) {
            H2cRequest::No => None,
            H2cRequest::BadSettings => Some(LocalAnswer::BadH2cSettings),
            H2cRequest::Upgrade => {
                let stream_one = h2c_upgrade::stream_one_frames(request);
                let on_upgrade = hyper::upgrade::on(request);
                let service = self.clone();
                let h2c = Arc::clone(h2c);
                let handover = self.conn.take_h2c_handover();
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let io = Injected::new(TokioIo::new(upgraded), stream_one);
                    // The slot and the watcher are held until the connection ends: the graceful
                    // shutdown waits for it.
                    let _handover = handover;
                    crate::h2::server::serve_connection(
                        io,
                        &h2c.builder,
                        service.inner.into_inner(),
                        h2c.shutdown.clone(),
                    )
                    .await;
                });
                Some(LocalAnswer::SwitchingToH2c)
            }
        }
    }
}

/// The HTTP/1 settings with `limits` applied, for hyper's HTTP/1 builder and hyper-util's auto
/// builder alike (plain-text HTTP/1 connections are served by the former, parked while idle:
/// [`crate::park`]; TLS connections by the latter).
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
            // Canonical header case on responses and trailers, as Go writes them.
            .title_case_headers(true)
            .max_buf_size($limits.max_header_bytes.max(8192))
            .max_headers($limits.max_headers)
            .keep_alive(true)
    };
}

/// The builder of plain-text HTTP/1 connections ([`crate::park::serve_http1`]).
fn http1_builder(limits: &ServerLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    http1_settings!(builder, limits);
    builder
}

/// The HTTP/1 builder of TLS connections ([`serve_tls`]; their HTTP/2 is served by
/// [`crate::h2::server`]).
fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    http1_settings!(builder.http1(), limits);
    builder
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each with the service
/// `make_service(remote address)` returns; then shuts every connection down gracefully and returns
/// when they are all closed.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    protocols: Protocols,
    limits: ServerLimits,
    make_service: M,
    shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: LocalBody,
{
    let slots = ConnectionSlots::new(limits.max_connections);
    serve_with_slots(listener, protocols, limits, slots, make_service, shutdown).await;
}

/// [`serve`] with the connection cap taken from `slots` rather than from
/// [`ServerLimits::max_connections`]: several listeners (the `SO_REUSEPORT` sockets of one port,
/// one per worker thread) share one cap by sharing their slots.
pub async fn serve_with_slots<M, S, B>(
    listener: TcpListener,
    protocols: Protocols,
    limits: ServerLimits,
    slots: ConnectionSlots,
    make_service: M,
    shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: LocalBody,
{
    let h1_builder = Arc::new(http1_builder(&limits));
    let h2c = (protocols == Protocols::Http1AndH2c)
        .then(|| Arc::new(H2cServer::new(&limits, shutdown.clone())));
    let h2_builder = Arc::new(crate::h2::server::builder(&limits));
    let first_bytes_timeout = limits.header_read_timeout;
    accept_until_stopped(
        listener,
        slots,
        &shutdown,
        |stream, remote, slot, graceful| {
            let watcher = graceful.watcher();
            // On h2c listeners the slot (and a second watcher) wait in the connection's state
            // for an upgrade to take them over; otherwise the task holds the slot.
            let (conn, slot) = match h2c {
                Some(_) => {
                    let handover = H2cHandover {
                        watcher: graceful.watcher(),
                        slot,
                    };
                    (Arc::new(ConnShared::with_h2c_handover(handover)), None)
                }
                None => (Arc::new(ConnShared::default()), slot),
            };
            let service = HyperService::new(
                make_service(canonical_peer(remote)),
                Arc::clone(&conn),
                h2c.clone(),
            );
            let h1_builder = Arc::clone(&h1_builder);
            let h2_builder = Arc::clone(&h2_builder);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let stream = if protocols == Protocols::Http1AndH2c {
                    tokio::select! {
                        read = read_preface(stream, first_bytes_timeout) => match read {
                            Some(stream) => stream,
                            None => return,
                        },
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                } else {
                    // hyper's own header-read timer starts at once on HTTP/1-only listeners.
                    Prefixed::new(stream)
                };
                if stream.is_h2() {
                    // A task of its own, sized to the HTTP/2 connection: this one is sized by
                    // the HTTP/1 branch, and holding the connection here, boxed or inline,
                    // would add one to the other for every idle h2c connection. It holds what
                    // this task held for the connection's life: the graceful shutdown's
                    // watcher, the connection slot and the connection's shared state.
                    let inner = service.inner.into_inner();
                    tokio::spawn(async move {
                        let _held = (watcher, slot, conn);
                        crate::h2::server::serve_connection(stream, &h2_builder, inner, shutdown)
                            .await;
                    });
                } else {
                    // Held until the connection ends: the graceful shutdown waits for it.
                    let _watcher = watcher;
                    let _slot = slot;
                    let io = GoAnswers::new(stream, Arc::clone(&conn), true);
                    let served = crate::park::serve_http1(io, &h1_builder, service, shutdown);
                    ConnScope::new(served, conn).await;
                }
            });
        },
    )
    .await;
}

/// The accept loop [`serve`] and [`serve_tls`] share: waits for a connection slot
/// ([`ServerLimits::max_connections`]), accepts, and hands the connection to `on_accept` with its
/// slot and the graceful shutdown to take watchers from, until `shutdown` turns true; then closes
/// the listener and waits for every watched connection to finish its graceful shutdown.
async fn accept_until_stopped<F>(
    listener: TcpListener,
    slots: ConnectionSlots,
    shutdown: &watch::Receiver<bool>,
    mut on_accept: F,
) where
    F: FnMut(
        tokio::net::TcpStream,
        SocketAddr,
        Option<tokio::sync::OwnedSemaphorePermit>,
        &GracefulShutdown,
    ),
{
    let graceful = GracefulShutdown::new();
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    loop {
        // A slot first, then a connection; slots shared by several listeners are taken after
        // the accept instead (see [`ConnectionSlots::shared`]).
        let early_slot = if slots.accept_first {
            None
        } else {
            tokio::select! {
                slot = slots.acquire() => slot,
                _ = &mut stop => break,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let slot = if slots.accept_first {
                    tokio::select! {
                        slot = slots.acquire() => slot,
                        _ = &mut stop => break,
                    }
                } else {
                    early_slot
                };
                let _ = stream.set_nodelay(true);
                // The watcher is taken before any handshake so that the graceful shutdown also
                // waits for connections still negotiating.
                on_accept(stream, remote, slot, &graceful);
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A listener's connection cap ([`ServerLimits::max_connections`]); clones share the cap.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    semaphore: Option<Arc<tokio::sync::Semaphore>>,
    accept_first: bool,
}

impl ConnectionSlots {
    /// At most `max` connections at once (0 = unbounded) on one listener: at the cap, accepting
    /// pauses and new connections wait in the kernel's listen backlog.
    pub fn new(max: usize) -> Self {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS);
        ConnectionSlots {
            semaphore: (max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max))),
            accept_first: false,
        }
    }

    /// At most `max` connections at once across the listeners that share (clones of) these
    /// slots, such as the `SO_REUSEPORT` sockets of one port. Each listener accepts a connection
    /// before it waits for a slot: a listener waiting for a slot with nothing to accept could
    /// otherwise take the slot a connection queued on another socket is waiting for. At the cap
    /// each listener holds at most one accepted connection unserved; the others wait in the
    /// backlog.
    pub fn shared(max: usize) -> Self {
        ConnectionSlots {
            accept_first: true,
            ..ConnectionSlots::new(max)
        }
    }

    /// Waits for a free slot; the permit is held by the connection's task until it ends.
    async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.semaphore {
            // The semaphore is never closed, so this only fails in theory.
            Some(semaphore) => Arc::clone(semaphore).acquire_owned().await.ok(),
            None => None,
        }
    }
}

/// The HTTP/2 client preface; hyper-util's auto builder compares a connection's first bytes with
/// it to tell HTTP/2 from HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a new connection's first bytes until they can no longer be (or fully are) the HTTP/2
/// preface, within `limit`, and hands them back in front of the stream. hyper-util waits for
/// those bytes with no timeout at all, so a client that connects and sends nothing (or a few
/// bytes of a preface) would otherwise hold its connection forever. `None`: the client closed,
/// failed, or was too slow; the connection is dropped.
async fn read_preface<S>(mut stream: S, limit: Duration) -> Option<Prefixed<S>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 24];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                return None;
            }
            len += n;
            if buf[..len] != H2_PREFACE[..len] {
                break;
            }
        }
        Some(())
    };
    tokio::time::timeout(limit, read).await.ok().flatten()?;
    Some(Prefixed {
        prefix: buf,
        start: 0,
        end: len as u8,
        inner: stream,
    })
}

pin_project_lite::pin_project! {
    /// A stream with up to 24 already-read bytes replayed in front of it.
    struct Prefixed<S> {
        prefix: [u8; 24],
        start: u8,
        end: u8,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// Whether the connection started with the HTTP/2 preface.
    fn is_h2(&self) -> bool {
        usize::from(self.end) == H2_PREFACE.len() && self.prefix == *H2_PREFACE
    }

    fn new(inner: S) -> Self {
        Prefixed {
            prefix: [0; 24],
            start: 0,
            end: 0,
            inner,
        }
    }
}

impl<S: crate::park::PollReadReady> crate::park::PollReadReady for Prefixed<S> {
    fn poll_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.start < self.end {
            return std::task::Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Prefixed<S> {
    #[inline]
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.start < *this.end {
            let pending = &this.prefix[usize::from(*this.start)..usize::from(*this.end)];
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            *this.start += n as u8;
            return std::task::Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Prefixed<S> {
    #[inline]
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// [`serve`] over TLS: each accepted connection does its TLS handshake (bounded by
/// `limits.header_read_timeout`) in its own task, then speaks HTTP/1.1 or HTTP/2: ALPN `h2`
/// clients send the HTTP/2 preface, which is detected, as it is from clients that negotiated no
/// ALPN (Go sends the preface over TLS without ALPN). When `shutdown` turns true the listener
/// closes, handshakes still in progress are abandoned, and established connections are shut down
/// gracefully (GOAWAY on HTTP/2); returns when they are all closed.
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: ServerLimits,
    make_service: M,
    shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: LocalBody,
{
    let builder = Arc::new(connection_builder(&limits));
    let h2_builder = Arc::new(crate::h2::server::builder(&limits));
    let handshake_timeout = limits.header_read_timeout;
    accept_until_stopped(
        listener,
        ConnectionSlots::new(limits.max_connections),
        &shutdown,
        |stream, remote, slot, graceful| {
            let watcher = graceful.watcher();
            let conn = Arc::new(ConnShared::default());
            let service = HyperService::new(make_service(remote), Arc::clone(&conn), None);
            let acceptor = acceptor.clone();
            let builder = Arc::clone(&builder);
            let h2_builder = Arc::clone(&h2_builder);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%remote, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                let stream = tokio::select! {
                    read = read_preface(stream, handshake_timeout) => match read {
                        Some(stream) => stream,
                        None => return,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                if stream.is_h2() {
                    let _watcher = watcher;
                    crate::h2::server::serve_connection(
                        stream,
                        &h2_builder,
                        service.inner.into_inner(),
                        shutdown,
                    )
                    .await;
                    return;
                }
                let io = GoAnswers::new(stream, Arc::clone(&conn), true);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let _ = ConnScope::new(watcher.watch(connection), conn).await;
            });
        },
    )
    .await;
}

/// A future that resolves when `shutdown` turns true (for `select!`s outside [`serve`]).
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The peer as Go reports it: an IPv4 client of a dual-stack socket is `a.b.c.d:port`, not
/// `[::ffff:a.b.c.d]:port`.
pub fn canonical_peer(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const VARS: LimitVars = crate::limit_vars!("T_");

    #[test]
    fn limits_from_env() {
        let empty: HashMap<&str, &str> = HashMap::new();
        assert_eq!(
            ServerLimits::from_env(&empty, &VARS).unwrap(),
            ServerLimits::default()
        );
        let env: HashMap<&str, &str> = [
            ("T_HEADER_READ_TIMEOUT_SECONDS", "5"),
            ("T_MAX_HEADER_BYTES", "65536"),
            ("T_MAX_HEADERS", "50"),
            ("T_H2_MAX_CONCURRENT_STREAMS", "10"),
            ("T_MAX_CONNECTIONS", "0"),
        ]
        .into();
        let limits = ServerLimits::from_env(&env, &VARS).unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(limits.max_header_bytes, 65536);
        assert_eq!(limits.max_headers, 50);
        assert_eq!(limits.h2_max_concurrent_streams, 10);
        assert_eq!(limits.max_connections, 0);
        for (name, value) in [
            ("T_HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("T_HEADER_READ_TIMEOUT_SECONDS", "86401"),
            ("T_MAX_HEADER_BYTES", "8191"),
            ("T_MAX_HEADERS", "x"),
            ("T_H2_MAX_CONCURRENT_STREAMS", "0"),
            ("T_MAX_CONNECTIONS", "-1"),
        ] {
            let env: HashMap<&str, &str> = [(name, value)].into();
            match ServerLimits::from_env(&env, &VARS) {
                Err(EnvError::Invalid { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }

    /// Reads everything `read_preface` hands on.
    async fn replay(input: &'static [u8], limit: Duration) -> Option<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut stream = read_preface(server, limit).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        Some(out)
    }

    #[tokio::test]
    async fn preface_bytes_are_replayed() {
        let limit = Duration::from_secs(5);
        let h1: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(replay(h1, limit).await.as_deref(), Some(h1));
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        assert_eq!(replay(h2, limit).await.as_deref(), Some(h2));
        // A short request that mismatches the preface early is handed on as is.
        assert_eq!(replay(b"P", limit).await, None, "EOF inside the preface");
        assert_eq!(replay(b"PO", limit).await.as_deref(), Some(&b"PO"[..]));
        assert_eq!(replay(b"", limit).await, None);
    }

    #[tokio::test]
    async fn silent_and_slow_prefaces_time_out() {
        let (_client, server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        assert!(read_preface(server, Duration::from_millis(50))
            .await
            .is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP").await.unwrap();
        assert!(read_preface(server, Duration::from_millis(50))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn connection_slots_bound_and_free() {
        let slots = ConnectionSlots::new(1);
        let first = slots.acquire().await;
        assert!(first.is_some());
        let second = tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await;
        assert!(second.is_err(), "a second slot was granted");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), slots.acquire()).await;
        assert!(third.unwrap().is_some());
        assert!(ConnectionSlots::new(0).acquire().await.is_none());
    }
}
