//! Clients: HTTP/1.1 and h2c (prior knowledge) over hyper's connection API, one connection per
//! exchange unless stated otherwise, and raw TCP for malformed input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{empty, BoxError, TestBody};

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

/// `GET path` with no body.
pub fn get_req(path: &str) -> Request<TestBody> {
    req("GET", path).body(empty()).unwrap()
}

/// Opens an HTTP/1.1 connection (up to 1000 response headers).
pub async fn h1_connect(addr: SocketAddr) -> Result<http1::SendRequest<TestBody>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .max_headers(1000)
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

/// `GET path` over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, get_req(path)).await
}

/// A health check as the kubelet sends it (spec §3.3).
pub async fn health_check(addr: SocketAddr) -> Resp {
    send(
        addr,
        req("GET", "/")
            .header("user-agent", "kube-probe/1.29")
            .header("k-network-probe", "queue")
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

/// Writes `bytes` on a new connection, then reads until the server closes it (or `limit`).
/// Write errors are ignored: the server may answer and close before reading everything.
pub async fn raw_exchange(addr: SocketAddr, bytes: Vec<u8>, limit: Duration) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect raw");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        // Keep the write half open (no FIN) until the exchange ends.
        write
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    out
}

/// The status line of a raw response, e.g. `HTTP/1.1 400 Bad Request`.
pub fn status_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.lines().next().unwrap_or("").to_owned()
}

/// The autoscaler's `metrics.Stat` (spec §6.3), decoded independently of the implementation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// 1
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// 2
    #[prost(double, tag = "2")]
    pub average_concurrent_requests: f64,
    /// 3
    #[prost(double, tag = "3")]
    pub average_proxied_concurrent_requests: f64,
    /// 4
    #[prost(double, tag = "4")]
    pub request_count: f64,
    /// 5
    #[prost(double, tag = "5")]
    pub proxied_request_count: f64,
    /// 6
    #[prost(double, tag = "6")]
    pub process_uptime: f64,
    /// 7
    #[prost(int64, tag = "7")]
    pub timestamp: i64,
}

/// Scrapes `/metrics` on the stats port and decodes the stat (asserting the content type).
pub async fn scrape(stats: SocketAddr) -> Stat {
    use prost::Message;
    let resp = send(
        stats,
        req("GET", "/metrics")
            .header("accept", "application/protobuf")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/protobuf")
    );
    Stat::decode(resp.body).expect("decode metrics.Stat")
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
