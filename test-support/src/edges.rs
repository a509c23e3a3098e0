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
