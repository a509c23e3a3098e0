//! Wire protocols through the proxy (spec §2 main listener, §3.4 full duplex, §3.9 protocol
//! mirroring, trailers, streaming, upgrades; integration I7, I8).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// An app that echoes every request body frame at once as `echo:<data>` and ends with
/// gRPC-style trailers (`grpc-status: 0`, `grpc-message: done`), announced with `Trailer`.
async fn echo_app() -> App {
    App::start(handler(|req: http::Request<Incoming>| async move {
        let (tx, body) = channel_body();
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.frame().await {
                // (An empty DATA frame may carry END_STREAM; there is nothing to echo.)
                if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                    let mut echoed = b"echo:".to_vec();
                    echoed.extend_from_slice(&data);
                    if tx.send(Frame::data(Bytes::from(echoed))).await.is_err() {
                        return;
                    }
                }
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("done"));
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
        let mut response = Response::new(body.boxed());
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert(
            "trailer",
            HeaderValue::from_static("grpc-status, grpc-message"),
        );
        response
    }))
    .await
}

/// Drives a full-duplex exchange: sends `n` chunks one at a time and requires each echo to come
/// back *before* the next chunk is sent; then ends the request body and expects the trailers.
async fn full_duplex_exchange(
    response: Response<Incoming>,
    tx: mpsc::Sender<Frame<Bytes>>,
    n: usize,
) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut body = response.into_body();
    let mut tx = Some(tx);
    for i in 0..n {
        let chunk = format!("message-{i}");
        tx.as_ref()
            .unwrap()
            .send(Frame::data(Bytes::from(chunk.clone())))
            .await
            .expect("request body open");
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap_or_else(|_| {
                panic!("echo of chunk {i} did not arrive while the request is open")
            })
            .expect("response body open")
            .expect("response frame");
        assert_eq!(
            frame.into_data().expect("data frame"),
            Bytes::from(format!("echo:{chunk}"))
        );
    }
    tx.take(); // end of the request body
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("response ends")
    {
        let frame = frame.expect("response frame");
        match frame.into_trailers() {
            Ok(t) => trailers = Some(t),
            Err(frame) => panic!("unexpected data after the last echo: {frame:?}"),
        }
    }
    let trailers = trailers.expect("trailers relayed");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
}

/// I7: an HTTP/1.1 client → the app sees HTTP/1.1.
#[tokio::test]
async fn http1_client_reaches_app_over_http1() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = get(qp.addr(), "/v1").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(resp.version, Version::HTTP_11);
    assert_eq!(app.only_seen().version, Version::HTTP_11);
    qp.assert_healthy();
}

/// HTTP/1.0 clients are served too (§2); upstream is still HTTP/1.1.
#[tokio::test]
async fn http10_client_is_served() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET /old HTTP/1.0\r\nHost: example.com\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        status_line(&raw).starts_with("HTTP/1.") && status_line(&raw).contains(" 200 "),
        "{text}"
    );
    assert!(text.ends_with("ok"), "{text}");
    assert_eq!(app.only_seen().version, Version::HTTP_11);
    qp.assert_healthy();
}

/// I7: an h2c prior-knowledge client → the app sees HTTP/2 (prior knowledge upstream), with the
/// authority and `K-Original-Host` rewrite applied to `:authority`.
#[tokio::test]
async fn h2c_client_reaches_app_over_h2c() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut h2 = h2_connect(qp.addr()).await;
    let uri = format!("http://{}/v2?q=1", qp.addr());
    let resp = send_h2(&mut h2, http::Request::get(&uri).body(empty()).unwrap()).await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(resp.version, Version::HTTP_2);
    let resp = send_h2(
        &mut h2,
        http::Request::get(&uri)
            .header("k-original-host", "a-better-host.com")
            .header("user-agent", "grpc-go/1.0")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.path_and_query(), "/v2?q=1");
        assert_eq!(s.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    }
    assert_eq!(
        seen[0].uri.authority().map(|a| a.as_str()),
        Some(qp.addr().to_string().as_str())
    );
    assert_eq!(
        seen[1].uri.authority().map(|a| a.as_str()),
        Some("a-better-host.com")
    );
    assert!(seen[1].header("k-original-host").is_none());
    assert_eq!(seen[1].header("user-agent").as_deref(), Some("grpc-go/1.0"));
    qp.assert_healthy();
}

/// I7 gRPC-style bidirectional streaming over h2c: request chunks and response chunks
/// interleave (each echo arrives before the next chunk is sent), and trailers arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_full_duplex_streaming_over_h2c() {
    let app = echo_app().await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut h2 = h2_connect(qp.addr()).await;
    let (tx, body) = channel_body();
    let request = http::Request::post(format!("http://{}/pkg.Service/Chat", qp.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body.boxed())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, h2.send_request(request))
        .await
        .expect("response head before the request body ends")
        .expect("h2 response");
    full_duplex_exchange(response, tx, 5).await;
    let seen = app.only_seen();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.header("te").as_deref(), Some("trailers"));
    qp.assert_healthy();
}

/// §3.4: over HTTP/1.1 the server always allows reading the request body after the response
/// started (ENABLE_HTTP_FULL_DUPLEX is a compatible no-op), and chunked trailers announced with
/// `Trailer` reach a client that sent `TE: trailers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_full_duplex_streaming_with_trailers() {
    let app = echo_app().await;
    let mut qp = QpConfig::new(app.port())
        .env("ENABLE_HTTP_FULL_DUPLEX", "true")
        .start();
    let (tx, body) = channel_body();
    let request = req("POST", "/stream")
        .header("te", "trailers")
        .body(body.boxed())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, send_streaming(qp.addr(), request))
        .await
        .expect("response head before the request body ends")
        .expect("response");
    assert_eq!(response.version(), Version::HTTP_11);
    full_duplex_exchange(response, tx, 5).await;
    assert_eq!(app.only_seen().version, Version::HTTP_11);
    qp.assert_healthy();
}

/// I8: a websocket session is tunnelled end to end (echo), and the tunnel is cut when
/// REVISION_TIMEOUT_SECONDS (2 s) has elapsed since the upgrade request, even while busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_is_cut_at_the_revision_timeout() {
    let app = raw_app(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).timeout_secs(2).start();
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", qp.addr()), stream)
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let mut echoes = 0;
    let cut_at = loop {
        let text = format!("hello {echoes}");
        if ws.send(Message::Text(text.clone())).await.is_err() {
            break start.elapsed();
        }
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(got)))) => {
                assert_eq!(got, text);
                echoes += 1;
            }
            Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
            Ok(Some(Err(_))) | Ok(None) => break start.elapsed(),
            Err(_) => panic!("the tunnel neither echoed nor closed within {DEADLINE:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the tunnel outlived the 2 s revision timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(echoes >= 3, "only {echoes} echoes before the cut");
    assert!(
        cut_at >= Duration::from_millis(1800) && cut_at < Duration::from_secs(6),
        "cut after {cut_at:?}"
    );
    qp.assert_healthy();
}

/// README "HTTP/1 edge cases": an `Upgrade: h2c` request with a body is not switched (Go would
/// buffer the body); it is served as plain HTTP/1.1 and the upgrade is not forwarded. (Bodiless
/// ones are upgraded: `http1_edges.rs`.)
#[tokio::test]
async fn upgrade_h2c_with_a_body_is_served_as_http1() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = send(
        qp.addr(),
        req("POST", "/h2c")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(full("body"))
            .unwrap(),
    )
    .await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(resp.version, Version::HTTP_11);
    let seen = app.only_seen();
    assert_eq!(seen.version, Version::HTTP_11);
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(seen.header(gone).is_none(), "{gone}: {seen:#?}");
    }
    qp.assert_healthy();
}

const BIG: u64 = 100 * 1024 * 1024;
/// Far below the 100 MiB each body carries, so buffering a body would fail the test. Freed
/// buffers count in RSS until jemalloc's background thread purges them (about a second, see
/// `.cargo/config.toml`): at this throughput that is 22–29 MiB alone, and it was 43 MiB once on
/// the loaded 2-core CI machine, when the purge lagged.
const RSS_LIMIT_KIB: u64 = 56 * 1024;

/// Samples the process's RSS every 20 ms until stopped; returns the highest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<usize>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    m.fetch_max(kib, Ordering::SeqCst);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        RssSampler { stop, max, thread }
    }

    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.thread.join().unwrap();
        (self.max.load(Ordering::SeqCst), samples)
    }
}

/// 100 MB up and 100 MB down, over HTTP/1.1 and then h2c, stream through without buffering:
/// the queue-proxy's RSS stays under 56 MiB throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_bounded_memory() {
    let app = App::start(handler(|req: http::Request<Incoming>| async move {
        if req.uri().path() == "/upload" {
            let n = count_body(req.into_body()).await.unwrap_or(0);
            respond(StatusCode::OK, n.to_string())
        } else {
            Response::new(Generated::new(BIG, false).boxed())
        }
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let sampler = RssSampler::start(qp.pid());

    let upload = req("POST", "/upload")
        .body(Generated::new(BIG, true).boxed())
        .unwrap();
    let resp = send(qp.addr(), upload).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), BIG.to_string(), "bytes the app received");

    let response = send_streaming(qp.addr(), get_req("/download"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("content-length").is_none());
    let received = tokio::time::timeout(Duration::from_secs(60), count_body(response.into_body()))
        .await
        .expect("download finished")
        .expect("download body");
    assert_eq!(received, BIG);

    // The same over h2c (flow-controlled streams on one connection).
    let mut h2 = h2_connect(qp.addr()).await;
    let upload = http::Request::post(format!("http://{}/upload", qp.addr()))
        .body(Generated::new(BIG, false).boxed())
        .unwrap();
    let resp = send_h2(&mut h2, upload).await;
    assert_eq!(
        (resp.status, resp.text()),
        (StatusCode::OK, BIG.to_string())
    );
    let download = http::Request::get(format!("http://{}/download", qp.addr()))
        .body(empty())
        .unwrap();
    let response = h2.send_request(download).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = tokio::time::timeout(Duration::from_secs(60), count_body(response.into_body()))
        .await
        .expect("h2 download finished")
        .expect("h2 download body");
    assert_eq!(received, BIG);

    let (max_kib, samples) = sampler.finish();
    assert!(samples >= 5, "too few RSS samples ({samples})");
    assert!(
        max_kib < RSS_LIMIT_KIB,
        "queue-proxy RSS peaked at {max_kib} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
    eprintln!("peak RSS {max_kib} KiB over {samples} samples");
    qp.assert_healthy();
}

/// §3.5 over HTTP/2 end to end: an exchange abandoned while the client is still sending its
/// body (the timeout answers `504`, or the client resets its stream) resets the app's stream
/// with `CANCEL` at once, instead of leaving it open until the client's body ends.
#[tokio::test]
async fn abandoned_h2_exchanges_reset_the_app_stream() {
    use test_support::edges::h2_reset_watching_app;
    let (app, mut resets) = h2_reset_watching_app().await;
    let mut qp = QpConfig::new(app.port()).timeout_secs(1).start();
    let stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = || {
        http::Request::post(format!("http://{}/upload", qp.addr()))
            .body(())
            .unwrap()
    };
    // The timeout: the client's body is still open when the 504 comes.
    let mut sender = client.clone().ready().await.unwrap();
    let (response, mut body) = sender.send_request(request(), false).unwrap();
    body.send_data(Bytes::from_static(b"part"), false).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("504 in time")
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        next_event(&mut resets).await,
        Some(None),
        "the app got the request"
    );
    assert_eq!(
        next_event(&mut resets).await,
        Some(Some(h2::Reason::CANCEL))
    );
    // The client resets its stream mid-body.
    let mut sender = client.ready().await.unwrap();
    let (response, mut body) = sender.send_request(request(), false).unwrap();
    body.send_data(Bytes::from_static(b"part"), false).unwrap();
    assert_eq!(
        next_event(&mut resets).await,
        Some(None),
        "the app got the request"
    );
    body.send_reset(h2::Reason::CANCEL);
    drop(response);
    assert_eq!(
        next_event(&mut resets).await,
        Some(Some(h2::Reason::CANCEL))
    );
    qp.assert_healthy();
}

/// The next event of an [`test_support::edges::h2_reset_watching_app`].
async fn next_event(
    events: &mut mpsc::UnboundedReceiver<Option<h2::Reason>>,
) -> Option<Option<h2::Reason>> {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("app event")
}
