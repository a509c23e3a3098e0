//! Keep-alive connections to one upstream address (the user container, or one pod).
//!
//! HTTP/1.1 connections sit in a lock-free bounded queue while idle; a connection goes back into
//! the queue the moment its response body has been read to the end, and is dropped (closed) when
//! the response is abandoned half-way, when the queue is full, or after [`IDLE_TIMEOUT`] unused.
//! A plain-text connection idle for [`PARK_DELAY`] is parked outside hyper (see [`super::parked`]):
//! a sweeper task, running only while the queue holds unparked plain-text connections, does
//! that off the request path.
//! h2c uses a single multiplexed connection, re-dialled when it closes.
//!
//! Dialing follows upstream: each attempt has a timeout starting at 50 ms and growing ×1.4 (±10 %
//! jitter) over 15 retries with a 30–60 ms pause between attempts; only dial *timeouts* are retried,
//! a refused connection fails at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::driven::{DrivenConn, Exchanged};
use super::error::ProxyError;
use super::parked::{self, ParkSlot, ParkableStream, ParkedCount, PARK_DELAY};
use crate::body::BodyError;
use crate::informational::{Sniff, UpstreamInfo};

/// How long an idle keep-alive connection is kept (Go `IdleConnTimeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// First dial attempt timeout.
const DIAL_FIRST_TIMEOUT: Duration = Duration::from_millis(50);
/// Dial retries after the first attempt, on timeouts only.
const DIAL_RETRIES: u32 = 15;
/// Most header fields accepted in an upstream HTTP/1.1 response head. Go's transport limits
/// only the head's size, not the field count; hyper's default of 100 turned apps sending many
/// `Set-Cookie`s into 502s. Matches the inbound limit ([`crate::server::ServerLimits`]).
const MAX_RESPONSE_HEADERS: usize = 500;

/// Request body type sent upstream.
pub type UpstreamRequestBody = crate::h2::IncomingBody;

/// How a request reaches its [`Upstream`]: a process-lifetime one (the queue-proxy's single user
/// container, no reference counting at all) or a shared one that is freed when the last user
/// lets go (the activator's per-pod pools, which come and go with pods).
#[derive(Clone, Debug)]
pub enum UpstreamHandle {
    /// Lives for the whole process.
    Static(&'static Upstream),
    /// Reference-counted.
    Shared(std::sync::Arc<Upstream>),
}

impl std::ops::Deref for UpstreamHandle {
    type Target = Upstream;
    #[inline]
    fn deref(&self) -> &Upstream {
        match self {
            UpstreamHandle::Static(u) => u,
            UpstreamHandle::Shared(u) => u,
        }
    }
}

impl UpstreamHandle {
    fn downgrade(&self) -> WeakHandle {
        match self {
            UpstreamHandle::Static(u) => WeakHandle::Static(u),
            UpstreamHandle::Shared(u) => WeakHandle::Shared(Arc::downgrade(u)),
        }
    }
}

/// An [`UpstreamHandle`] that does not keep a shared upstream alive (the sweeper's).
enum WeakHandle {
    Static(&'static Upstream),
    Shared(Weak<Upstream>),
}

impl WeakHandle {
    fn upgrade(&self) -> Option<UpstreamHandle> {
        match self {
            WeakHandle::Static(u) => Some(UpstreamHandle::Static(u)),
            WeakHandle::Shared(u) => u.upgrade().map(UpstreamHandle::Shared),
        }
    }
}

impl From<&'static Upstream> for UpstreamHandle {
    fn from(u: &'static Upstream) -> Self {
        UpstreamHandle::Static(u)
    }
}

impl From<std::sync::Arc<Upstream>> for UpstreamHandle {
    fn from(u: std::sync::Arc<Upstream>) -> Self {
        UpstreamHandle::Shared(u)
    }
}

/// Where a TLS upstream (the activator's system-internal TLS to queue-proxies) gets its client
/// configuration. Asked at every new connection, so a rebuilt trust pool applies to the next
/// dial without touching existing pools or connections.
pub trait UpstreamTls: Send + Sync + std::fmt::Debug {
    /// The configuration for the next handshake.
    fn client_config(&self) -> Arc<rustls::ClientConfig>;
    /// The name sent as SNI and verified against the certificate.
    fn server_name(&self) -> rustls::pki_types::ServerName<'static>;
}

/// An idle HTTP/1.1 connection in the pool.
enum Idle {
    /// A hyper connection, ready for the next request.
    Live(IdleConn),
    /// A socket parked outside hyper.
    Parked(ParkedConn),
}

struct IdleConn {
    conn: Box<DrivenConn>,
    info: Arc<UpstreamInfo>,
    /// `Some` for plain-text connections, which can be parked.
    park: Option<Arc<ParkSlot>>,
    since: Instant,
}

/// A parked connection keeps only its slot: its [`UpstreamInfo`] goes with hyper's connection (a
/// new one comes with the next), so that what stays of a burst's connections is allocated when
/// they park, packed, rather than scattered among the burst's freed memory.
struct ParkedConn {
    slot: Arc<ParkSlot>,
    since: Instant,
}

impl Idle {
    /// A parked connection whose socket is gone (closed by the app, an error or its idle time).
    fn is_dead(&self) -> bool {
        match self {
            Idle::Live(conn) => conn.conn.has_ended(),
            Idle::Parked(parked) => !parked.slot.holds_socket(),
        }
    }

    /// Drops the entry, closing a parked socket at once (a live connection closes with hyper's
    /// connection).
    fn close(self) {
        if let Idle::Parked(parked) = self {
            parked.slot.close();
        }
    }
}

/// Connections to one upstream address.
pub struct Upstream {
    addr: SocketAddr,
    /// `addr` as a `Host` value, for requests that arrive without one (HTTP/1.0).
    host: http::HeaderValue,
    idle: ArrayQueue<Idle>,
    /// A sweeper task runs (see [`Upstream::sweep_once`]).
    sweeping: AtomicBool,
    parked: ParkedCount,
    h2: Mutex<Option<h2::client::SendRequest<Bytes>>>,
    /// One dial of the shared HTTP/2 connection at a time (see [`Upstream::h2`]).
    h2_dial: tokio::sync::Mutex<H2Dials>,
    /// `Some`: every connection is TLS (no ALPN; the protocol follows the request, as Go's
    /// transport with a custom TLS dialer does).
    tls: Option<Arc<dyn UpstreamTls>>,
}

/// What the dials of an upstream's shared HTTP/2 connection left behind.
#[derive(Default)]
struct H2Dials {
    /// Dials finished so far.
    finished: u64,
    /// How the last one failed to connect, if it did.
    last_failure: Option<H2DialFailure>,
}

#[derive(Clone, Copy)]
enum H2DialFailure {
    Refused(std::io::ErrorKind),
    TimedOut,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// An HTTP/1.1 connection checked out of the pool, returned when its response completes.
pub struct Checkout {
    /// hyper's connection, driven by the request ([`super::driven`]).
    conn: Box<DrivenConn>,
    /// What the connection's IO reports of 1xx heads ([`crate::informational`]).
    info: Arc<UpstreamInfo>,
    park: Option<Arc<ParkSlot>>,
    /// Freshly dialled (not reused): a failure on it is not the keep-alive race.
    pub fresh: bool,
}

/// What [`Upstream::take_idle`] found: a connection ready for a request, a parked one, or
/// nothing.
pub struct TakenIdle(Option<Taken>);

enum Taken {
    Ready(Checkout),
    Parked(ParkedConn),
}

impl TakenIdle {
    /// The connection, when it is ready for a request now; else `self` back.
    pub fn ready(self) -> Result<Checkout, TakenIdle> {
        match self.0 {
            Some(Taken::Ready(checkout)) => Ok(checkout),
            other => Err(TakenIdle(other)),
        }
    }
}

impl Upstream {
    /// A pool for `addr` keeping at most `max_idle` idle HTTP/1.1 connections (at least 1).
    pub fn new(addr: SocketAddr, max_idle: usize) -> Self {
        Upstream {
            addr,
            host: http::HeaderValue::try_from(addr.to_string())
                .expect("an address is a valid header value"),
            idle: ArrayQueue::new(max_idle.max(1)),
            sweeping: AtomicBool::new(false),
            parked: Arc::new(AtomicUsize::new(0)),
            h2: Mutex::new(None),
            h2_dial: tokio::sync::Mutex::new(H2Dials::default()),
            tls: None,
        }
    }

    /// Like [`Self::new`], but every connection is TLS with the configuration `tls` gives at
    /// dial time.
    pub fn with_tls(addr: SocketAddr, max_idle: usize, tls: Arc<dyn UpstreamTls>) -> Self {
        let mut upstream = Upstream::new(addr, max_idle);
        upstream.tls = Some(tls);
        upstream
    }

    /// The upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream address as a `Host` header value.
    pub fn host_header(&self) -> &http::HeaderValue {
        &self.host
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Number of idle HTTP/1.1 connections (parked ones included).
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Number of idle HTTP/1.1 connections parked outside hyper.
    pub fn parked_connections(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// A new HTTP/1.1 connection, never an idle one: for the retry of a request whose pooled
    /// connection turned out closed. When the app (or its pod) went away, every idle connection
    /// to it is closed too, and the next one would fail the same way, with the request then
    /// answered `502` although it never left (the activator could have sent it to another pod);
    /// a dial fails as what it is (refused) or reaches the app if it is back.
    pub async fn dial_http1(handle: &UpstreamHandle) -> Result<Checkout, ProxyError> {
        let this: &Upstream = handle;
        this.connect_http1().await
    }

    /// The next idle HTTP/1.1 connection that needs no waiting: a live one ready for a request,
    /// or a parked one (to be resumed by [`Self::checkout_http1_after`]); expired and closed
    /// ones on the way are dropped. Synchronous: the common case needs no future of its own.
    pub fn take_idle(handle: &UpstreamHandle) -> TakenIdle {
        let this: &Upstream = handle;
        while let Some(entry) = this.idle.pop() {
            let conn = match entry {
                Idle::Live(conn) => conn,
                Idle::Parked(parked) => return TakenIdle(Some(Taken::Parked(parked))),
            };
            if conn.since.elapsed() >= IDLE_TIMEOUT || conn.conn.has_ended() {
                continue;
            }
            if conn.conn.is_ready() {
                return TakenIdle(Some(Taken::Ready(Checkout {
                    conn: conn.conn,
                    info: conn.info,
                    park: conn.park,
                    fresh: false,
                })));
            }
            // Not ready (only ready connections are pooled, so this is not expected): let a
            // task finish its exchange, then return it.
            let IdleConn {
                conn, info, park, ..
            } = conn;
            settle_then_give_back(handle.clone(), conn, info, park);
        }
        TakenIdle(None)
    }

    /// An HTTP/1.1 connection, starting from what [`Self::take_idle`] gave: a ready idle one,
    /// else a resumed parked one, else a new one.
    pub async fn checkout_http1_after(
        handle: &UpstreamHandle,
        mut taken: TakenIdle,
    ) -> Result<Checkout, ProxyError> {
        let this: &Upstream = handle;
        loop {
            match taken.0 {
                Some(Taken::Ready(checkout)) => return Ok(checkout),
                // Boxed, as dialing below: the rarer path keeps its state out of every request's.
                Some(Taken::Parked(parked)) => {
                    if let Some(checkout) = Box::pin(this.resume(parked)).await {
                        return Ok(checkout);
                    }
                }
                None => break,
            }
            taken = Self::take_idle(handle);
        }
        // Boxed: dialing (TCP, TLS, the handshake) is the rare path, and its state is larger
        // than everything else a request holds; unboxed, every request's future would carry it.
        Box::pin(this.connect_http1()).await
    }

    /// A new HTTP/1.1 connection.
    async fn connect_http1(&self) -> Result<Checkout, ProxyError> {
        let this = self;
        let stream = this.dial().await?.into_inner();
        let info = Arc::new(UpstreamInfo::default());
        let (conn, park) = match &this.tls {
            None => {
                let slot = ParkSlot::new(Arc::clone(&this.parked));
                let io = Sniff::new(
                    ParkableStream::new(stream, Arc::clone(&slot)),
                    Arc::clone(&info),
                );
                (
                    DrivenConn::plain(&http1_builder(), TokioIo::new(io)),
                    Some(slot),
                )
            }
            Some(tls) => {
                let stream = this.tls_connect(tls, stream).await?;
                let io = Sniff::new(stream, Arc::clone(&info));
                (DrivenConn::tls(&http1_builder(), TokioIo::new(io)), None)
            }
        };
        Ok(Checkout {
            conn,
            info,
            park,
            fresh: true,
        })
    }

    /// A parked connection as a new hyper connection over its socket; `None` when it is gone.
    async fn resume(&self, parked: ParkedConn) -> Option<Checkout> {
        if parked.since.elapsed() >= IDLE_TIMEOUT {
            parked.slot.close();
            return None;
        }
        let stream = parked.slot.take()?;
        let ParkedConn { slot, .. } = parked;
        let info = Arc::new(UpstreamInfo::default());
        let io = Sniff::new(
            ParkableStream::new(stream, Arc::clone(&slot)),
            Arc::clone(&info),
        );
        Some(Checkout {
            conn: DrivenConn::plain(&http1_builder(), TokioIo::new(io)),
            info,
            park: Some(slot),
            fresh: false,
        })
    }

    /// One pass of the sweeper: parks live plain-text connections idle for [`PARK_DELAY`] and
    /// ready for a request, drops expired and dead ones. Returns when the next pass is due, or
    /// `None` when no live parkable connection is left (the sweeper then stops).
    fn sweep_once(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for _ in 0..self.idle.len() {
            let Some(entry) = self.idle.pop() else {
                break;
            };
            let entry = match entry {
                Idle::Live(conn) => {
                    let idle_for = now.saturating_duration_since(conn.since);
                    if idle_for >= IDLE_TIMEOUT || conn.conn.has_ended() {
                        continue;
                    }
                    match conn.park.clone() {
                        Some(slot) if idle_for >= PARK_DELAY && conn.conn.is_ready() => {
                            slot.request(conn.since + IDLE_TIMEOUT);
                            let IdleConn {
                                conn: driven,
                                since,
                                ..
                            } = conn;
                            // hyper ends the idle connection; its shutdown hands the socket
                            // to `slot`. hyper's connection and its buffers are gone then,
                            // and the task goes on as the parked socket's (much smaller)
                            // watcher.
                            let watched = Arc::clone(&slot);
                            tokio::spawn(async move {
                                driven.finish().await;
                                if watched.holds_socket() {
                                    parked::watch(watched).await;
                                }
                            });
                            Idle::Parked(ParkedConn { slot, since })
                        }
                        Some(_) => {
                            // Too young, or still finishing its last exchange.
                            let due = if idle_for < PARK_DELAY {
                                conn.since + PARK_DELAY
                            } else {
                                now + PARK_DELAY
                            };
                            next = Some(next.map_or(due, |n| n.min(due)));
                            Idle::Live(conn)
                        }
                        None => Idle::Live(conn),
                    }
                }
                Idle::Parked(parked) => {
                    if now.saturating_duration_since(parked.since) >= IDLE_TIMEOUT {
                        parked.slot.close();
                        continue;
                    }
                    Idle::Parked(parked)
                }
            };
            if let Err(entry) = self.idle.push(entry) {
                entry.close();
            }
        }
        next
    }

    /// The shared HTTP/2 connection, ready for a new stream: the current one, or a new one if
    /// it closed (or was never opened).
    pub async fn h2(&self) -> Result<h2::client::SendRequest<Bytes>, ProxyError> {
        if let Some(ready) = self.current_h2().await {
            return Ok(ready);
        }
        // Boxed, as for HTTP/1.1: only the first request (or one after the connection closed)
        // dials.
        Box::pin(self.connect_h2()).await
    }

    /// The current shared HTTP/2 connection once it can take a stream; `None` when there is
    /// none or it closed.
    async fn current_h2(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let current = self.h2.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        current.ready().await.ok()
    }

    /// A new shared HTTP/2 connection, ready for a stream. Requests that find no connection
    /// at the same moment (a burst released by the activator) wait for one dial instead of
    /// each opening a connection of its own, as Go's HTTP/2 transport does; when that dial
    /// failed to connect, they fail the same way without dialing again.
    async fn connect_h2(&self) -> Result<h2::client::SendRequest<Bytes>, ProxyError> {
        let seen = self.h2_dial.try_lock().map(|dials| dials.finished).ok();
        let mut dials = self.h2_dial.lock().await;
        if let Some(ready) = self.current_h2().await {
            return Ok(ready);
        }
        if seen.is_none_or(|seen| seen != dials.finished) {
            match dials.last_failure {
                Some(H2DialFailure::Refused(kind)) => {
                    return Err(ProxyError::Dial(self.addr, kind.into()));
                }
                Some(H2DialFailure::TimedOut) => return Err(ProxyError::DialTimeout(self.addr)),
                None => {}
            }
        }
        let dialed = self.dial_h2().await;
        dials.finished = dials.finished.wrapping_add(1);
        dials.last_failure = match &dialed {
            Err(ProxyError::Dial(_, error)) => Some(H2DialFailure::Refused(error.kind())),
            Err(ProxyError::DialTimeout(_)) => Some(H2DialFailure::TimedOut),
            _ => None,
        };
        dialed
    }

    async fn dial_h2(&self) -> Result<h2::client::SendRequest<Bytes>, ProxyError> {
        let stream = self.dial().await?.into_inner();
        let sender = match &self.tls {
            None => crate::h2::client::handshake(stream).await,
            Some(tls) => {
                let stream = self.tls_connect(tls, stream).await?;
                crate::h2::client::handshake(stream).await
            }
        }
        .map_err(|e| ProxyError::H2Handshake(self.addr, e))?;
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        sender
            .ready()
            .await
            .map_err(|e| ProxyError::H2Handshake(self.addr, e))
    }

    /// The TLS handshake on a new TCP connection.
    async fn tls_connect(
        &self,
        tls: &Arc<dyn UpstreamTls>,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        tokio_rustls::TlsConnector::from(tls.client_config())
            .connect(tls.server_name(), stream)
            .await
            .map_err(|e| ProxyError::tls(self.addr, &e))
    }

    async fn dial(&self) -> Result<TokioIo<TcpStream>, ProxyError> {
        let mut attempt_timeout = DIAL_FIRST_TIMEOUT;
        let mut jitter = Jitter::seeded();
        for attempt in 0..=DIAL_RETRIES {
            match tokio::time::timeout(attempt_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(error)) => return Err(ProxyError::Dial(self.addr, error)),
                Err(_elapsed) if attempt < DIAL_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(30 + jitter.below(31))).await;
                    attempt_timeout = attempt_timeout.mul_f64(1.4 * (0.9 + jitter.unit() * 0.2));
                }
                Err(_elapsed) => break,
            }
        }
        Err(ProxyError::DialTimeout(self.addr))
    }
}

/// hyper's HTTP/1.1 client settings for every upstream connection.
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .title_case_headers(true)
        .max_headers(MAX_RESPONSE_HEADERS);
    builder
}

/// Returns a connection whose exchange is over to `handle`'s pool: at once when it is ready
/// for the next request, else once a task has driven it there (a request body still going out
/// after the response ended).
fn give_back(
    handle: &UpstreamHandle,
    conn: Box<DrivenConn>,
    info: Arc<UpstreamInfo>,
    park: Option<Arc<ParkSlot>>,
) {
    conn.release();
    if conn.is_ready() {
        pool_idle(handle, conn, info, park);
    } else if !conn.has_ended() {
        settle_then_give_back(handle.clone(), conn, info, park);
    }
}

/// Drives `conn` to the end of its exchange in a task of its own, then pools it.
fn settle_then_give_back(
    handle: UpstreamHandle,
    mut conn: Box<DrivenConn>,
    info: Arc<UpstreamInfo>,
    park: Option<Arc<ParkSlot>>,
) {
    tokio::spawn(async move {
        if conn.settle().await {
            pool_idle(&handle, conn, info, park);
        }
    });
}

/// Puts a ready idle connection into `handle`'s queue, starting the sweeper if it is parkable
/// and none runs.
fn pool_idle(
    handle: &UpstreamHandle,
    conn: Box<DrivenConn>,
    info: Arc<UpstreamInfo>,
    park: Option<Arc<ParkSlot>>,
) {
    let this: &Upstream = handle;
    let parkable = park.is_some();
    let conn = Idle::Live(IdleConn {
        conn,
        info,
        park,
        since: Instant::now(),
    });
    if let Err(conn) = this.idle.push(conn) {
        // Full: at most `max_idle` stay open idle, and the connection is dropped (closed),
        // unless the oldest entry is a parked connection the app has closed meanwhile.
        match this.idle.pop() {
            Some(old) if old.is_dead() => {
                old.close();
                if let Err(conn) = this.idle.push(conn) {
                    conn.close();
                }
            }
            Some(old) => {
                if let Err(old) = this.idle.push(old) {
                    old.close();
                }
                conn.close();
            }
            None => {
                if let Err(conn) = this.idle.push(conn) {
                    conn.close();
                }
            }
        }
    }
    if parkable
        && !this.sweeping.load(Ordering::Relaxed)
        && !this.sweeping.swap(true, Ordering::AcqRel)
    {
        tokio::spawn(sweep(handle.downgrade()));
    }
}

/// Parks the pool's idle plain-text connections as they reach [`PARK_DELAY`]; stops when none
/// is left to park (the next connection given back starts it again) or the pool is gone.
async fn sweep(pool: WeakHandle) {
    let mut due = Instant::now() + PARK_DELAY;
    loop {
        tokio::time::sleep_until(due).await;
        let Some(handle) = pool.upgrade() else {
            return;
        };
        match handle.sweep_once() {
            Some(next) => due = next,
            None => {
                handle.sweeping.store(false, Ordering::Release);
                return;
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        while let Some(entry) = self.idle.pop() {
            entry.close();
        }
    }
}

impl Checkout {
    /// Sends `request`; if the connection turned out to be unusable before anything was written,
    /// the request comes back in the error so it can be retried on another connection.
    ///
    /// The request is handed to the connection at once; the future drives the connection and
    /// waits for the response, so it never holds the request. A protocol upgrade's connection
    /// is not pooled again: it ends with the exchange (handing its IO to the tunnel on a
    /// `101`).
    ///
    /// Always inlined (into `forward_or_return`'s future): called, it took the request (272
    /// bytes) as an argument copied out of the caller's state before copying it into the
    /// connection (h1 callgrind: about −75 instructions per request, both proxies).
    #[inline(always)]
    pub fn send(
        self,
        upstream: &UpstreamHandle,
        request: http::Request<UpstreamRequestBody>,
        upgrade: bool,
    ) -> SendFuture {
        let Checkout {
            mut conn,
            info,
            park,
            fresh,
        } = self;
        info.exchange_started();
        let state = match conn.send(request) {
            Ok(()) => SendState::Waiting,
            Err(request) => SendState::Refused(Some(Box::new(request))),
        };
        SendFuture {
            state,
            conn: Some(ReturnToPool {
                upstream: upstream.clone(),
                conn,
                info,
                park,
                keep: !upgrade,
            }),
            fresh,
            relayed: false,
        }
    }
}

/// The response future of [`Checkout::send`]: drives the connection until the response is in,
/// relaying the 1xx heads that come before it ([`crate::informational::Relay`]'s work) and,
/// when it relayed any, holds the response until they are written.
pub struct SendFuture {
    state: SendState,
    /// The connection (`None` once the future has completed).
    conn: Option<ReturnToPool>,
    fresh: bool,
    relayed: bool,
}

enum SendState {
    /// Waiting for the response.
    Waiting,
    /// The connection refused the request outright (it was not ready: never expected for a
    /// checked-out connection). Boxed: the common states stay small to move.
    Refused(Option<Box<http::Request<UpstreamRequestBody>>>),
    /// The response (or failure), held until the relayed 1xx heads are written.
    Held { sent: Option<Exchanged> },
}

impl std::future::Future for SendFuture {
    type Output = Result<http::Response<PooledBody>, SendError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let sent = match &mut this.state {
                SendState::Refused(request) => {
                    this.conn.take();
                    return Poll::Ready(Err(SendError {
                        unsent: request.take(),
                        unanswered: None,
                        error: None,
                        fresh: this.fresh,
                    }));
                }
                SendState::Waiting => {
                    let conn = this.conn.as_mut().expect("polled after completion");
                    let polled = conn.conn.poll_response(cx);
                    crate::informational::relay_after_poll(
                        polled.is_pending(),
                        &conn.info,
                        &mut this.relayed,
                        cx,
                    );
                    let Poll::Ready(sent) = polled else {
                        return Poll::Pending;
                    };
                    if this.relayed {
                        // The 1xx heads go out before the final head.
                        this.state = SendState::Held { sent: Some(sent) };
                        continue;
                    }
                    sent
                }
                SendState::Held { sent } => {
                    std::task::ready!(crate::informational::poll_written(cx));
                    sent.take().expect("polled after completion")
                }
            };
            let mut conn = this.conn.take().expect("polled after completion");
            return Poll::Ready(match sent {
                Ok(response) => {
                    conn.keep &= response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                    Ok(response.map(|body| PooledBody::new(body, conn)))
                }
                Err(mut e) => Err(SendError {
                    unsent: e.take_message().map(Box::new),
                    unanswered: conn.conn.take_unanswered(),
                    error: Some((*e).into_error()),
                    fresh: this.fresh,
                }),
            });
        }
    }
}

/// Failure of one exchange on a checked-out connection.
#[derive(Debug)]
pub struct SendError {
    /// The request, when the connection failed before any of it was written.
    /// Boxed: rare, and inline it made every exchange's outcome 288 bytes instead of 208.
    pub unsent: Option<Box<http::Request<UpstreamRequestBody>>>,
    /// The request, rebuilt, when it was written but the connection failed before a byte of
    /// its response was read, and it had no body: the keep-alive race when the app closed the
    /// connection as the request went out. The app may have received it, so only an
    /// idempotent request may be sent again (see `proxy::is_replayable`).
    pub unanswered: Option<Box<http::Request<UpstreamRequestBody>>>,
    /// What hyper reported; `None` when the connection was not ready to take the request.
    pub error: Option<hyper::Error>,
    /// Whether the connection was new.
    pub fresh: bool,
}

/// A connection in use, and where it goes when its exchange is over.
struct ReturnToPool {
    upstream: UpstreamHandle,
    conn: Box<DrivenConn>,
    info: Arc<UpstreamInfo>,
    park: Option<Arc<ParkSlot>>,
    /// Back to the pool after the response; else (a protocol upgrade, asked for or answered)
    /// the connection ends, an upgrade taking its IO.
    keep: bool,
}

impl ReturnToPool {
    /// The response has been read to its end.
    fn done(self) {
        if self.keep {
            give_back(&self.upstream, self.conn, self.info, self.park);
        } else {
            tokio::spawn(self.conn.finish());
        }
    }
}

/// The upstream response body; drives its connection (HTTP/1.1) while it is read, and hands
/// the connection back to the pool at the end.
pub struct PooledBody {
    body: crate::h2::IncomingBody,
    back: Option<ReturnToPool>,
}

impl PooledBody {
    fn new(body: Incoming, back: ReturnToPool) -> Self {
        let body = crate::h2::IncomingBody::from(body);
        if body.is_end_stream() {
            back.done();
            return PooledBody { body, back: None };
        }
        PooledBody {
            body,
            back: Some(back),
        }
    }

    /// A body with no pooled connection behind it (h2).
    pub fn unpooled(body: crate::h2::IncomingBody) -> Self {
        PooledBody { body, back: None }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let body = &mut this.body;
        let polled = match this.back.as_mut() {
            Some(back) => {
                // What the connection's last poll read (the whole of a small body, mostly) is
                // taken without driving the connection again.
                match Pin::new(&mut *body).poll_frame(&mut back.conn.context()) {
                    Poll::Pending => back
                        .conn
                        .poll_with(cx, |_, conn_cx, _| Pin::new(&mut *body).poll_frame(conn_cx)),
                    ready => ready,
                }
            }
            None => Pin::new(&mut *body).poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) => {
                if let Some(b) = this.back.take() {
                    b.done();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.back.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling once `is_end_stream()` is true, so the connection goes
                // back as soon as the last frame is out, not on a final `None` that never comes.
                if this.body.is_end_stream() {
                    if let Some(b) = this.back.take() {
                        b.done();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Tiny xorshift generator for dial jitter (no need for a cryptographic RNG).
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0x9E37_79B9);
        Jitter(nanos | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod h2_dial_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An h2c server counting the connections it accepted; it keeps each one open.
    async fn h2c_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = ::h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok(_)) = conn.accept().await {}
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_h2_dial() {
        let (addr, accepted) = h2c_server().await;
        let upstream: &'static Upstream = Box::leak(Box::new(Upstream::new(addr, 4)));
        let callers: Vec<_> = (0..50)
            .map(|_| tokio::spawn(async move { upstream.h2().await.map(|_| ()) }))
            .collect();
        for caller in callers {
            caller.await.unwrap().expect("a ready HTTP/2 connection");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Later requests reuse it too.
        upstream.h2().await.expect("reused");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn callers_waiting_on_a_refused_h2_dial_get_its_error() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let upstream: &'static Upstream = Box::leak(Box::new(Upstream::new(addr, 4)));
        let callers: Vec<_> = (0..20)
            .map(|_| tokio::spawn(async move { upstream.h2().await.map(|_| ()) }))
            .collect();
        for caller in callers {
            match caller.await.unwrap() {
                Err(ProxyError::Dial(dialed, _)) => assert_eq!(dialed, addr),
                other => panic!("expected a dial error, got {other:?}"),
            }
        }
        // A later request dials again (and is refused again).
        assert!(matches!(upstream.h2().await, Err(ProxyError::Dial(..))));
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
