//! Helpers for the HTTP/1 edge-case tests of both proxies: Go's raw answers (written out here,
//! independently of the implementation), a raw app that records the exact request heads it
//! receives, and `Date` masking for byte-exact comparisons.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::{raw_app, read_head_buffered};

/// Go's `net/http` answer to a request it cannot parse.
pub const GO_BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request";
/// Go's `net/http` answer to an HTTP/1.1 request without `Host`.
pub const GO_MISSING_HOST: &[u8] = b"HTTP/1.1 400 Bad Request: missing required Host header\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header";

/// The bytes as text with every `Date: <29 characters>` value replaced by `*`.
pub fn mask_date(raw: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    let mut from = 0;
    while let Some(at) = text[from..].find("Date: ").map(|i| from + i + 6) {
        let end = (at + 29).min(text.len());
        text.replace_range(at..end, "*");
        from = at + 1;
    }
    text
}

/// Request heads as an app received them, as text.
pub type Heads = Arc<Mutex<Vec<String>>>;

/// A raw HTTP/1 app that records each request head it receives (as text), reads a
/// `Content-Length` body if any, and answers every request with `answer`.
pub async fn recording_app(answer: &'static [u8]) -> (SocketAddr, Heads) {
    let (addr, heads, _) = recording_pod(answer).await;
    (addr, heads)
}

/// [`recording_app`] that also answers the activator's pod probes (`K-Network-Probe: queue`)
/// with `200 queue`, like a queue-proxy; their heads are recorded apart (the third value).
pub async fn recording_pod(answer: &'static [u8]) -> (SocketAddr, Heads, Heads) {
    let heads: Heads = Arc::default();
    let probes: Heads = Arc::default();
    let (recorded, probed) = (heads.clone(), probes.clone());
    let addr = raw_app(move |mut stream| {
        let (recorded, probed) = (recorded.clone(), probed.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head_buffered(&mut stream, &mut buf).await {
                let text = String::from_utf8_lossy(&head).into_owned();
                let lower = text.to_ascii_lowercase();
                if lower.contains("\r\nk-network-probe: queue\r\n") {
                    probed.lock().unwrap().push(text);
                    let probe_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue";
                    if stream.write_all(probe_answer).await.is_err() {
                        return;
                    }
                    continue;
                }
                let length = lower
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .and_then(|n| n.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                recorded.lock().unwrap().push(text);
                while buf.len() < length {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..length);
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, heads, probes)
}

/// A raw HTTP/1 app that also answers pod probes like [`recording_pod`]. To every other request
/// it writes `interim` (1xx heads) as soon as the head is in, before any body is read; then,
/// once it takes a permit of `release` (at once without one), reads a `Content-Length` body and writes
/// `answer`.
pub async fn hinting_pod(
    interim: &'static [u8],
    answer: &'static [u8],
    release: Option<Arc<tokio::sync::Semaphore>>,
) -> SocketAddr {
    raw_app(move |mut stream| {
        let release = release.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head_buffered(&mut stream, &mut buf).await {
                let lower = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if lower.contains("\r\nk-network-probe: queue\r\n") {
                    let probe_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue";
                    if stream.write_all(probe_answer).await.is_err() {
                        return;
                    }
                    continue;
                }
                if stream.write_all(interim).await.is_err() {
                    return;
                }
                if let Some(release) = &release {
                    match release.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                }
                let length = lower
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .and_then(|n| n.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                while buf.len() < length {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..length);
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// Reads from `stream` until `buf` holds at least `len` bytes or `limit` passes; returns
/// whatever is there.
pub async fn read_at_least(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    len: usize,
    limit: std::time::Duration,
) -> Vec<u8> {
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        while buf.len() < len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    buf.clone()
}

/// An HTTP/2 exchange seen frame by frame through the `h2` crate's client, which hands over
/// 1xx HEADERS frames one by one as they arrive (hyper's client drops them).
pub struct H2Exchange {
    response: h2::client::ResponseFuture,
    _send: h2::client::SendRequest<bytes::Bytes>,
}

/// The fields of an HTTP/2 message head in wire order, as `name: value` lines.
pub fn h2_fields(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(name, value)| format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

impl H2Exchange {
    /// Opens an h2c (prior knowledge) connection to `addr` and sends `request` with `body`
    /// (no DATA frame when empty).
    pub async fn start(addr: SocketAddr, request: http::Request<()>, body: &[u8]) -> Self {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect h2c");
        let (send, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut send = send.ready().await.expect("h2 ready");
        let (response, mut body_tx) = send
            .send_request(request, body.is_empty())
            .expect("h2 request");
        if !body.is_empty() {
            body_tx
                .send_data(bytes::Bytes::copy_from_slice(body), true)
                .expect("h2 body");
        }
        H2Exchange {
            response,
            _send: send,
        }
    }

    /// The next 1xx response (status and fields), or `None` when the final response came
    /// first; panics after `limit`.
    pub async fn informational(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<(u16, Vec<String>)> {
        let next = std::future::poll_fn(|cx| self.response.poll_informational(cx));
        match tokio::time::timeout(limit, next).await {
            Ok(Some(Ok(response))) => {
                Some((response.status().as_u16(), h2_fields(response.headers())))
            }
            Ok(Some(Err(error))) => panic!("h2 stream failed: {error}"),
            Ok(None) => None,
            Err(_) => panic!("no HTTP/2 response head within {limit:?}"),
        }
    }

    /// The final response: status, fields and the whole body.
    pub async fn finish(self, limit: std::time::Duration) -> (u16, Vec<String>, Vec<u8>) {
        tokio::time::timeout(limit, async move {
            let response = self.response.await.expect("h2 response");
            let status = response.status().as_u16();
            let fields = h2_fields(response.headers());
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("h2 body");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            (status, fields, bytes)
        })
        .await
        .expect("h2 exchange timed out")
    }
}

/// What a client must see of [`h2_hinting_app`] through a proxy on HTTP/2: `100`, the `103`
/// (fields as the app sent them, less `content-length`) and `102`, each while the app still
/// holds its final response (it is released only after them); not the app's second `100`;
/// then `200` with `content-length: 2`, a `date` and `ok`.
pub async fn assert_h2_hints_relayed(
    mut exchange: H2Exchange,
    release: &tokio::sync::Semaphore,
    limit: std::time::Duration,
) {
    assert_eq!(exchange.informational(limit).await, Some((100, vec![])));
    assert_eq!(
        exchange.informational(limit).await,
        Some((
            103,
            vec![
                "link: </style.css>; rel=preload".to_owned(),
                "link: </app.js>; rel=preload".to_owned(),
                "x-b: 1".to_owned()
            ]
        ))
    );
    assert_eq!(exchange.informational(limit).await, Some((102, vec![])));
    // Only now may the app answer: the hints came on their own. The second 100 is not relayed.
    release.add_permits(1);
    assert_eq!(exchange.informational(limit).await, None);
    let (status, fields, body) = exchange.finish(limit).await;
    assert_eq!(status, 200);
    assert!(
        fields.contains(&"content-length: 2".to_owned()),
        "{fields:?}"
    );
    assert!(fields.iter().any(|f| f.starts_with("date: ")), "{fields:?}");
    assert_eq!(body, b"ok");
}

/// An h2c (prior knowledge) app that answers every request with `100 Continue`, a
/// `103 Early Hints` (`link` and `x-b` fields, and a stray `content-length`), `102 Processing` and
/// a second `100`, each its own HEADERS frame, then, once it takes a permit of `release`,
/// `200` with `content-length: 2` and `ok`. Probes (`k-network-probe`) get `200 queue` at once.
pub async fn h2_hinting_app(release: Arc<tokio::sync::Semaphore>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let release = release.clone();
                    tokio::spawn(async move {
                        let ok = |status: u16| {
                            http::Response::builder().status(status).body(()).unwrap()
                        };
                        if !request.headers().contains_key("k-network-probe") {
                            let hints = http::Response::builder()
                                .status(103)
                                .header("x-b", "1")
                                .header("link", "</style.css>; rel=preload")
                                .header("content-length", "0")
                                .header("link", "</app.js>; rel=preload")
                                .body(())
                                .unwrap();
                            for head in [ok(100), hints, ok(102), ok(100)] {
                                if respond.send_informational(head).is_err() {
                                    return;
                                }
                            }
                            match release.acquire().await {
                                Ok(permit) => permit.forget(),
                                Err(_) => return,
                            }
                        }
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-length", "2")
                            .body(())
                            .unwrap();
                        if let Ok(mut body) = respond.send_response(response, false) {
                            let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
                        }
                    });
                }
            });
        }
    });
    addr
}

/// An h2c (prior knowledge) app that never answers: for each request it sends `None` on the
/// returned channel, waits for the stream to be reset and sends the reason.
pub async fn h2_reset_watching_app() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<h2::Reason>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    let tx = tx.clone();
                    let _ = tx.send(None);
                    tokio::spawn(async move {
                        if let Ok(reason) = std::future::poll_fn(|cx| respond.poll_reset(cx)).await
                        {
                            let _ = tx.send(Some(reason));
                        }
                    });
                }
            });
        }
    });
    (addr, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_masked() {
        assert_eq!(
            mask_date(b"A\r\nDate: Sat, 05 Dec 2026 19:28:02 GMT\r\n\r\nx"),
            "A\r\nDate: *\r\n\r\nx"
        );
    }
}
