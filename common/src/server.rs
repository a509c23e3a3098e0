//! Listeners: dual-stack binding, the accept loop, HTTP/1.1 + h2c on one port, HTTP/1.1 + HTTP/2
//! over TLS ([`serve_tls`]), explicit limits, and graceful shutdown (stop accepting, close idle
//! keep-alive connections, GOAWAY on HTTP/2, wait for in-progress exchanges).

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

use crate::body::BodyError;

/// Protocols a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.x only (admin, metrics).
    Http1,
    /// HTTP/1.x and h2c with prior knowledge on the same port.
    Http1AndH2c,
}

/// Per-listener limits. Defaults follow Go's `net/http` where upstream relies on them.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time allowed to read a request head (Go `ReadHeaderTimeout`).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (Go's `DefaultMaxHeaderBytes`, 1 MiB).
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request head; more gets `431`.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection (Go's default, 250).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client but not yet accepted (rapid-reset protection).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 header list size (the h2 analogue of `max_header_bytes`).
    pub h2_max_header_list_size: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 1 << 20,
            max_headers: 500,
            h2_max_concurrent_streams: 250,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_header_list_size: 1 << 20,
        }
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
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if dual_stack && addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Adapts a cloneable tower service (always ready) to hyper's `&self` service interface: each
/// request gets its own copy, which for our stages is a few pointers.
#[derive(Clone, Debug)]
pub struct HyperService<S>(pub S);

impl<S, B> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = S::Future;

    #[inline]
    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.0.clone().call(request)
    }
}

/// The per-connection HTTP builder for `protocols` with `limits` applied (shared by [`serve`] and
/// [`serve_tls`]).
fn connection_builder(protocols: Protocols, limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http1 {
        builder = builder.http1_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_header_list_size(limits.h2_max_header_list_size);
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
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error = BodyError> + Send + 'static,
{
    let builder = connection_builder(protocols, &limits);
    let graceful = GracefulShutdown::new();

    let stop = stopped(shutdown);
    tokio::pin!(stop);
    {
        loop {
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
                    let _ = stream.set_nodelay(true);
                    let service = HyperService(make_service(canonical_peer(remote)));
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                _ = &mut stop => break,
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
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
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error = BodyError> + Send + 'static,
{
    let builder = Arc::new(connection_builder(Protocols::Http1AndH2c, &limits));
    let graceful = GracefulShutdown::new();

    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = HyperService(make_service(remote));
                // Taken before the handshake so that `graceful.shutdown()` also waits for it.
                let watcher = graceful.watcher();
                let acceptor = acceptor.clone();
                let builder = Arc::clone(&builder);
                let mut shutdown = shutdown.clone();
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
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
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
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
