//! App faults seen through the queue-proxy, each checked for the status the client gets and for
//! how many times the app saw the request: never twice for a POST, never lost without an error.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw app counting request heads, doing `after_head` with each connection after reading one.
async fn counting_app<F, Fut>(after_head: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let heads = Arc::new(AtomicUsize::new(0));
    let counter = heads.clone();
    let after_head = Arc::new(after_head);
    let addr = raw_app(move |mut stream| {
        let counter = counter.clone();
        let after_head = after_head.clone();
        async move {
            if read_head(&mut stream).await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
                after_head(stream).await;
            }
        }
    })
    .await;
    (addr, heads)
}

fn post(id: usize) -> http::Request<TestBody> {
    req("POST", "/write")
        .header("x-request-id", id.to_string())
        .body(full(format!("payload-{id}")))
        .unwrap()
}

/// The app closes every keep-alive connection right after its response (an app whose idle
/// timeout is shorter than the proxy's, upstream knative/serving#12414). A series of POSTs all
/// succeed and each reaches the app exactly once: a pooled connection found closed is never
/// reused, and a request that could not be written on one is retried once on a new connection.
#[tokio::test]
async fn keep_alive_close_race_loses_and_duplicates_nothing() {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = raw_app(move |mut stream| {
        let record = record.clone();
        async move {
            let mut buf = Vec::new();
            let Some(head) = read_head_buffered(&mut stream, &mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let id = head
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap_or("?")
                .trim()
                .to_owned();
            record.lock().unwrap().push(id);
            // Corked: the response and the close leave in one segment, so the proxy has the
            // connection's end by the time it has the response. Without it, a test thread
            // preempted between the write and the close (a loaded machine) let the proxy write
            // the next POST into a connection that then closed under it; that POST must then
            // be a 502, not retried, as nothing tells the proxy whether the app read it.
            let _ = socket2::SockRef::from(&stream).set_cork(true);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            // Close at once, leaving the proxy with a keep-alive connection that is gone.
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    for id in 0..40 {
        let resp = send(qp.addr(), post(id)).await;
        assert_eq!(resp.status, StatusCode::OK, "request {id}: {resp:?}");
        if id % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected);
    qp.assert_healthy();
}

/// The app resets the connection after reading a POST's head: 502, and the POST was not
/// retried (the app saw it once).
#[tokio::test]
async fn reset_after_head_is_502_and_not_retried() {
    let (addr, heads) = counting_app(|stream| async move { reset(stream) }).await;
    let mut qp = QpConfig::new(addr.port()).start();
    let resp = send(qp.addr(), post(1)).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{resp:?}");
    assert_eq!(heads.load(Ordering::SeqCst), 1);
    qp.assert_healthy();
}

/// The app accepts and reads the request but never answers: 504 at the revision timeout, sent
/// once; the app's connection is closed by the proxy.
#[tokio::test]
async fn silent_app_times_out_with_504() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, heads) = counting_app(move |mut stream| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = [0u8; 1024];
            // Hold the connection until the proxy gives up on it.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = closed_tx.send(());
        }
    })
    .await;
    let mut qp = QpConfig::new(addr.port()).timeout_secs(1).start();
    let started = std::time::Instant::now();
    let resp = send(qp.addr(), post(1)).await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{resp:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(heads.load(Ordering::SeqCst), 1);
    tokio::time::timeout(DEADLINE, closed_rx.recv())
        .await
        .expect("the proxy closed the app connection");
    qp.assert_healthy();
}

/// The app crashes half-way through a response: the client's body fails (no clean end), the app
/// saw the POST once, and the next request is served on a new connection.
#[tokio::test]
async fn crash_mid_response_aborts_and_is_not_retried() {
    let (addr, heads) = counting_app(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            .await;
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    })
    .await;
    let mut qp = QpConfig::new(addr.port()).start();
    let response = send_streaming(qp.addr(), post(1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(DEADLINE, collect(response))
        .await
        .expect("the body ends one way or another");
    assert!(body.is_err(), "{body:?}");
    assert_eq!(heads.load(Ordering::SeqCst), 1);
    let again = send_streaming(qp.addr(), post(2)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(heads.load(Ordering::SeqCst), 2);
    qp.assert_healthy();
}
