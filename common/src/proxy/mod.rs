//! The reverse proxy: forwards a request to one upstream address over a pooled connection,
//! mirroring the inbound protocol (HTTP/1.x → HTTP/1.1, HTTP/2 → h2c prior knowledge), streaming
//! bodies both ways with no buffering, relaying trailers, and tunnelling protocol switches.

mod driven;
pub mod error;
mod parked;
pub mod pool;
pub mod rewrite;
mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::h2::IncomingBody;
use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use tower_service::Service;

pub use error::ProxyError;
pub use parked::PARK_DELAY;
pub use pool::{PooledBody, Upstream, UpstreamHandle};
pub use rewrite::{PeerIp, UpgradeRequest};
pub use tunnel::TunnelScope;

use crate::body::{text_error_bytes, ProxyBody};

/// Why [`forward_or_return`] has no response.
#[derive(Debug)]
pub struct ForwardFailure {
    /// What went wrong.
    pub error: ProxyError,
    /// The request, handed back when no connection to the upstream could be opened: nothing of
    /// it was sent, so it may go to another upstream (any method). `None` once anything may
    /// have reached the upstream, and for protocol upgrades. Boxed: rare, and inline it made
    /// every exchange's outcome (moved on each layer's way out) 344 bytes instead of 208.
    pub unsent: Option<Box<Request<IncomingBody>>>,
}

impl ForwardFailure {
    fn sent(error: ProxyError) -> Self {
        ForwardFailure {
            error,
            unsent: None,
        }
    }
}

/// Forwards `request` to `upstream` and returns the upstream response, or why there is none,
/// handing the request back when the upstream could not be reached at all (dial refused or timed
/// out): the activator then tries another pod instead of failing a request that never left it.
/// Headers must already be prepared ([`rewrite::prepare_request`]); `upgrade` is what it returned.
///
/// The handle is taken by value so that callers can build this future at once and wrap it with
/// combinators: awaiting it inside another `async` block would keep the request in both states.
/// An `async` block rather than an `async fn`, for the same reason: an `async fn` moves its
/// arguments into locals on the first poll and keeps both copies in its state.
#[allow(clippy::manual_async_fn)] // See above: not the `async fn` clippy suggests.
pub fn forward_or_return(
    upstream: UpstreamHandle,
    mut request: Request<IncomingBody>,
    upgrade: Option<UpgradeRequest>,
) -> impl Future<Output = Result<Response<ProxyBody>, ForwardFailure>> + Send {
    async move {
        if request.method() == Method::CONNECT {
            return Err(ForwardFailure::sent(ProxyError::UnsupportedConnect));
        }
        if request.version() == Version::HTTP_2 {
            rewrite::to_h2c_form(&mut request, upstream.host_header())
                .map_err(|e| ForwardFailure::sent(ProxyError::InvalidRequest(e)))?;
            if upstream.is_tls() {
                set_https(&mut request);
            }
            let sender = match upstream.h2().await {
                Ok(sender) => sender,
                Err(error) => return Err(not_reached(error, request, upgrade.is_some())),
            };
            let mut response = crate::h2::client::exchange(sender, request)
                .await
                .map_err(|e| ForwardFailure::sent(ProxyError::H2Exchange(e)))?;
            rewrite::prepare_response(&mut response);
            return Ok(response.map(|body| ProxyBody::Upstream {
                body: PooledBody::unpooled(body),
            }));
        }

        rewrite::to_origin_form(&mut request);
        // Every upstream request carries a Host: an HTTP/1.0 client may have sent none (HTTP/1.1
        // requests without one were refused by the server), and Go's proxy then names the upstream.
        if request.version() != Version::HTTP_11 && !request.headers().contains_key(HOST) {
            request
                .headers_mut()
                .insert(HOST, upstream.host_header().clone());
        }
        *request.version_mut() = Version::HTTP_11;
        // A ready idle connection is taken without a future; the rest (resuming a parked one,
        // dialing) is boxed, its state kept out of every request's future.
        let checkout = match Upstream::take_idle(&upstream).ready() {
            Ok(checkout) => checkout,
            Err(taken) => match Box::pin(Upstream::checkout_http1_after(&upstream, taken)).await {
                Ok(checkout) => checkout,
                Err(error) => return Err(not_reached(error, request, upgrade.is_some())),
            },
        };
        let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let response = match checkout.send(&upstream, request, upgrade.is_some()).await {
            Ok(response) => response,
            Err(failed) => match to_send_again(failed) {
                // Boxed: rare, and inline its state (a second request among it) made every
                // request's future larger.
                Ok(request) => {
                    Box::pin(send_on_fresh(&upstream, *request, upgrade.is_some())).await?
                }
                Err(error) => return Err(ForwardFailure::sent(error)),
            },
        };

        let mut response = response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(requested), Some(downstream)) = (upgrade, downstream_upgrade) else {
                return Err(ForwardFailure::sent(ProxyError::UpgradeMismatch {
                    requested: String::new(),
                    got: header_text(&response, UPGRADE),
                }));
            };
            let got = response.headers().get(UPGRADE);
            if !got.is_some_and(|g| {
                g.as_bytes()
                    .eq_ignore_ascii_case(requested.protocol.as_bytes())
            }) {
                return Err(ForwardFailure::sent(ProxyError::UpgradeMismatch {
                    requested: requested.protocol.to_str().unwrap_or("").to_owned(),
                    got: header_text(&response, UPGRADE),
                }));
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let scope = TunnelScope::start(downstream, upstream_upgrade);
            response.extensions_mut().insert(scope);
        }
        rewrite::prepare_response(&mut response);
        Ok(response.map(|body| ProxyBody::Upstream { body }))
    }
}

/// The keep-alive race's one retry: `request` on a new connection, dialed, not taken from the
/// pool ([`Upstream::dial_http1`]). A pod that died leaves its pooled connections closed: the
/// new connection may not open either, and then the request still never left (the activator
/// retries it on another pod).
async fn send_on_fresh(
    upstream: &UpstreamHandle,
    request: Request<IncomingBody>,
    upgrade: bool,
) -> Result<Response<PooledBody>, ForwardFailure> {
    let fresh = match Upstream::dial_http1(upstream).await {
        Ok(fresh) => fresh,
        Err(error) => return Err(not_reached(error, request, upgrade)),
    };
    fresh
        .send(upstream, request, upgrade)
        .await
        .map_err(|e| ForwardFailure::sent(exchange_error(e)))
}

/// The request of a failed exchange to send again, once, on a new connection (the keep-alive
/// race, when the app closed a pooled connection as the proxy took it), or the error to answer.
/// Only a reused connection's failure is retried, as Go's transport does:
/// - nothing of the request was written (the connection was found closed): nothing reached the
///   app, so any request goes again;
/// - the request was written, and the connection failed before a byte of the response came:
///   the app may have seen it, so only a replayable request goes again ([`is_replayable`]).
#[cold]
#[inline(never)]
#[allow(clippy::result_large_err)] // Boxed already; the error is the rare case of a rare case.
fn to_send_again(failed: pool::SendError) -> Result<Box<Request<IncomingBody>>, ProxyError> {
    match failed {
        pool::SendError {
            unsent: Some(request),
            fresh: false,
            ..
        } => Ok(request),
        pool::SendError {
            unanswered: Some(request),
            fresh: false,
            error,
            ..
        } if is_replayable(&request) => {
            tracing::debug!(
                error = error.as_ref().map(tracing::field::display),
                "reused upstream connection failed before answering; sending again"
            );
            Ok(request)
        }
        failed => Err(exchange_error(failed)),
    }
}

/// Whether a request written to a reused connection that failed before answering may be sent
/// again on a new one. Go's transport decides so (`Request.isReplayable`): it has no body (a
/// request with one is not rebuilt: [`pool::SendError::unanswered`]) and is a `GET`, `HEAD`,
/// `OPTIONS` or `TRACE`, or carries `Idempotency-Key` or `X-Idempotency-Key` (whatever its
/// method, the client said repeating it is harmless).
fn is_replayable<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || request.headers().contains_key("idempotency-key")
        || request.headers().contains_key("x-idempotency-key")
}

/// The error of a failed exchange.
fn exchange_error(failed: pool::SendError) -> ProxyError {
    failed
        .error
        .map_or(ProxyError::NotReady, ProxyError::Exchange)
}

/// The failure for an upstream that could not be reached: the request is handed back when no
/// connection was opened (dial refused or timed out) and it is not a protocol upgrade.
fn not_reached(error: ProxyError, request: Request<IncomingBody>, upgrade: bool) -> ForwardFailure {
    let unsent = matches!(error, ProxyError::Dial(..) | ProxyError::DialTimeout(..)) && !upgrade;
    ForwardFailure {
        error,
        unsent: unsent.then(|| Box::new(request)),
    }
}

/// `:scheme https` for HTTP/2 over TLS (rare path: system-internal TLS only).
fn set_https<B>(request: &mut Request<B>) {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

fn header_text<B>(response: &Response<B>, name: http::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The `502` answer for a proxy failure: the error text and a newline, as Go's `http.Error`
/// (a refused `CONNECT` also closes the connection).
pub fn bad_gateway(error: &ProxyError) -> Response<ProxyBody> {
    let mut text = error.to_string();
    text.push('\n');
    let mut response = text_error_bytes(StatusCode::BAD_GATEWAY, Bytes::from(text));
    if matches!(error, ProxyError::UnsupportedConnect) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Tower service proxying every request to one fixed upstream (the queue-proxy's user container).
#[derive(Clone, Debug)]
pub struct ReverseProxy {
    upstream: &'static Upstream,
    peer: PeerIp,
}

impl ReverseProxy {
    /// A proxy to `upstream` for requests arriving from `peer`.
    pub fn new(upstream: &'static Upstream, peer: PeerIp) -> Self {
        ReverseProxy { upstream, peer }
    }
}

/// The proxy's response future. It is boxed: the exchange is a sequence of awaits (checkout,
/// dial, send) whose future type cannot be named, and one small allocation is noise next to the
/// connection round trip it covers.
pub type ProxyFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Service<Request<IncomingBody>> for ReverseProxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<IncomingBody>) -> Self::Future {
        let upstream = UpstreamHandle::Static(self.upstream);
        let upgrade = rewrite::prepare_request(&mut request, &self.peer);
        // A combinator over `forward_or_return`'s future, not an `async` block awaiting it: one
        // state machine less holding (and copying) the request. The box is allocated first and
        // the future written into it: `Box::pin(future)` built the future (the request in it) on
        // the stack and then copied it into the allocation.
        let slot = Box::new_uninit();
        let future = Box::write(
            slot,
            forward_or_return(upstream, request, upgrade).map(|forwarded| {
                Ok(match forwarded {
                    Ok(response) => response,
                    Err(ForwardFailure { error, .. }) => {
                        tracing::debug!(%error, "upstream request failed");
                        bad_gateway(&error)
                    }
                })
            }),
        );
        Box::into_pin(future)
    }
}
