//! Clients: HTTP/1.1 and h2c (prior knowledge) over hyper's connection API, one connection per
//! exchange unless stated otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::app::{empty, BoxError, TestBody};

/// Limit for a single exchange in the helpers below.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// A complete response.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Version.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// A request builder for `path` with `Host: example.com` (HTTP/1.1 clients always send a Host).
pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.com")
}

/// A request builder for `path` naming the revision with the ingress headers
/// `Knative-Serving-Namespace` / `Knative-Serving-Revision` (spec §2.5).
pub fn rev_req(method: &str, path: &str, namespace: &str, name: &str) -> http::request::Builder {
    req(method, path)
        .header("knative-serving-namespace", namespace)
        .header("knative-serving-revision", name)
}

/// `GET path` for the revision, with no body.
pub fn rev_get(path: &str, namespace: &str, name: &str) -> Request<TestBody> {
    rev_req("GET", path, namespace, name).body(empty()).unwrap()
}

/// Opens an HTTP/1.1 connection.
pub async fn h1_connect(addr: SocketAddr) -> Result<http1::SendRequest<TestBody>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `request` over a new HTTP/1.1 connection and returns the streaming response.
pub async fn send_streaming(
    addr: SocketAddr,
    request: Request<TestBody>,
) -> Result<Response<Incoming>, BoxError> {
    let mut sender = h1_connect(addr).await?;
    Ok(sender.send_request(request).await?)
}

/// Reads a whole response.
pub async fn collect(response: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends `request` over a new HTTP/1.1 connection and reads the whole response.
pub async fn try_send(addr: SocketAddr, request: Request<TestBody>) -> Result<Resp, BoxError> {
    tokio::time::timeout(EXCHANGE_LIMIT, async {
        collect(send_streaming(addr, request).await?).await
    })
    .await
    .map_err(|_| BoxError::from("exchange timed out"))?
}

/// [`try_send`], panicking on transport errors.
pub async fn send(addr: SocketAddr, request: Request<TestBody>) -> Resp {
    let what = format!("{} {}", request.method(), request.uri());
    try_send(addr, request)
        .await
        .unwrap_or_else(|e| panic!("{what} to {addr} failed: {e}"))
}

/// A kubelet probe (`User-Agent: kube-probe/…`, spec §2.1).
pub async fn kubelet_probe(addr: SocketAddr) -> Resp {
    send(
        addr,
        req("GET", "/")
            .header("user-agent", "kube-probe/1.30")
            .body(empty())
            .unwrap(),
    )
    .await
}

/// An h2c (prior knowledge) connection.
pub async fn h2_connect(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect h2c");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends one request on an h2c connection and reads the whole response.
pub async fn send_h2(
    sender: &mut http2::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> Resp {
    tokio::time::timeout(EXCHANGE_LIMIT, async {
        let response = sender.send_request(request).await.expect("h2 request");
        collect(response).await.expect("h2 body")
    })
    .await
    .expect("h2 exchange timed out")
}
