//! The reverse proxy: forwards a request to one upstream address over a pooled connection,
//! mirroring the inbound protocol (HTTP/1.x → HTTP/1.1, HTTP/2 → h2c prior knowledge), streaming
//! bodies both ways with no buffering, relaying trailers, and tunnelling protocol switches.

pub mod error;
pub mod pool;
pub mod rewrite;
mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::UPGRADE;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tower_service::Service;

pub use error::ProxyError;
pub use pool::{PooledBody, Upstream, UpstreamHandle};
pub use rewrite::{PeerIp, UpgradeRequest};
pub use tunnel::TunnelScope;

use crate::body::{text_error_bytes, ProxyBody};

/// Forwards `request` to `upstream` and returns the upstream response, or why there is none.
/// Headers must already be prepared ([`rewrite::prepare_request`]); `upgrade` is what it returned.
pub async fn forward(
    upstream: &UpstreamHandle,
    mut request: Request<Incoming>,
    upgrade: Option<UpgradeRequest>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if request.version() == Version::HTTP_2 {
        rewrite::to_h2c_form(&mut request).map_err(ProxyError::InvalidRequest)?;
        if upstream.is_tls() {
            set_https(&mut request);
        }
        let mut sender = upstream.h2().await?;
        let mut response = sender
            .send_request(request)
            .await
            .map_err(ProxyError::Exchange)?;
        rewrite::prepare_response(&mut response);
        return Ok(response.map(|body| ProxyBody::Upstream {
            body: PooledBody::unpooled(body),
        }));
    }

    rewrite::to_origin_form(&mut request);
    *request.version_mut() = Version::HTTP_11;
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

    let checkout = Upstream::checkout_http1(upstream).await?;
    let response = match checkout.send(upstream, request, upgrade.is_some()).await {
        Ok(response) => response,
        // The keep-alive race: the idle connection was closed before a byte of the request was
        // written. Nothing reached the app, so one retry on a new connection is safe for any method.
        Err(pool::SendError {
            unsent: Some(request),
            fresh: false,
            ..
        }) => {
            let fresh = Upstream::checkout_http1(upstream).await?;
            fresh
                .send(upstream, request, upgrade.is_some())
                .await
                .map_err(|e| ProxyError::Exchange(e.error))?
        }
        Err(e) => return Err(ProxyError::Exchange(e.error)),
    };

    let mut response = response;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(requested), Some(downstream)) = (upgrade, downstream_upgrade) else {
            return Err(ProxyError::UpgradeMismatch {
                requested: String::new(),
                got: header_text(&response, UPGRADE),
            });
        };
        let got = response.headers().get(UPGRADE);
        if !got.is_some_and(|g| {
            g.as_bytes()
                .eq_ignore_ascii_case(requested.protocol.as_bytes())
        }) {
            return Err(ProxyError::UpgradeMismatch {
                requested: requested.protocol.to_str().unwrap_or("").to_owned(),
                got: header_text(&response, UPGRADE),
            });
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let scope = TunnelScope::start(downstream, upstream_upgrade);
        response.extensions_mut().insert(scope);
    }
    rewrite::prepare_response(&mut response);
    Ok(response.map(|body| ProxyBody::Upstream { body }))
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

/// The `502` answer for a proxy failure: the error text and a newline, as Go's `http.Error`.
pub fn bad_gateway(error: &ProxyError) -> Response<ProxyBody> {
    let mut text = error.to_string();
    text.push('\n');
    text_error_bytes(StatusCode::BAD_GATEWAY, Bytes::from(text))
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

impl Service<Request<Incoming>> for ReverseProxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let upstream = UpstreamHandle::Static(self.upstream);
        let upgrade = rewrite::prepare_request(&mut request, &self.peer);
        Box::pin(async move {
            Ok(match forward(&upstream, request, upgrade).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(%error, "upstream request failed");
                    bad_gateway(&error)
                }
            })
        })
    }
}
