//! A small HTTP/1.1 client (hyper-util's pooled client) for the harness, the demo and the tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A complete response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connect, write or read failed.
    #[error("{0}")]
    Transport(String),
    /// No complete response within the limit.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// A pooled HTTP/1.1 client with a per-request time limit.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    limit: Duration,
}

impl HttpClient {
    /// A client whose requests give up after `limit`.
    pub fn new(limit: Duration) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { inner, limit }
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Reply, ClientError> {
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Transport(chain(&e)))?;
            let (head, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError::Transport(chain(&e)))?
                .to_bytes();
            Ok(Reply {
                status: head.status,
                headers: head.headers,
                body,
            })
        };
        tokio::time::timeout(self.limit, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.limit))?
    }

    /// `GET http://<addr><path>` with extra `headers`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let mut builder = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send(request).await
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
