//! The three request timers end to end (spec §3.5; checklist T1–T8 adapted to whole seconds,
//! the unit of the env vars).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Frame;
use support::*;
use tokio::sync::mpsc;

const TIMEOUT_BODY: &str = "request timeout";

/// An app that never answers (waits on a gate nobody opens).
async fn silent_app() -> (App, Gate) {
    let gate = Gate::new();
    let g = gate.clone();
    let app = App::start(handler(move |_| {
        let g = g.clone();
        async move {
            g.wait().await;
            respond(StatusCode::OK, "too late")
        }
    }))
    .await;
    (app, gate)
}

/// An app that answers `200` at once with a streamed body: `chunks[i]` is sent `gaps[i]` after
/// the previous one; after the last chunk the body ends only if `end` is true, else it stays
/// open (silence) for a long time.
async fn streaming_app(chunks: Vec<(u64, &'static str)>, end: bool) -> App {
    App::start(handler(move |_| {
        let chunks = chunks.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for (gap_ms, chunk) in chunks {
                    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                    if tx.send(Frame::data(Bytes::from(chunk))).await.is_err() {
                        return;
                    }
                }
                if !end {
                    // Keep the body open; the sender is dropped only when the proxy goes away.
                    tx.closed().await;
                }
            });
            Response::new(body.boxed())
        }
    }))
    .await
}

fn assert_timeout_504(resp: &Resp) {
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{resp:?}");
    assert_eq!(resp.text(), TIMEOUT_BODY, "no trailing newline");
}

fn assert_between(elapsed: Duration, min_ms: u64, max_ms: u64) {
    assert!(
        elapsed >= Duration::from_millis(min_ms) && elapsed < Duration::from_millis(max_ms),
        "elapsed {elapsed:?} not in [{min_ms} ms, {max_ms} ms)"
    );
}

/// T1: a fast answer passes with every timer armed.
#[tokio::test]
async fn fast_response_passes_all_timers() {
    let app = App::start(handler(|_| async { respond(StatusCode::OK, "hi") })).await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(5)
        .env("REVISION_RESPONSE_START_TIMEOUT_SECONDS", 5)
        .env("REVISION_IDLE_TIMEOUT_SECONDS", 5)
        .start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "hi"));
    qp.assert_healthy();
}

/// T8 (first half): the total timeout before the response head → `504 request timeout`, and
/// the upstream request is abandoned (its connection closed).
#[tokio::test]
async fn total_timeout_before_head_is_504_and_cancels_upstream() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let app = raw_app(move |mut stream| {
        let closed_tx = closed_tx.clone();
        async move {
            use tokio::io::AsyncReadExt;
            if read_head(&mut stream).await.is_none() {
                return;
            }
            // Never answer; report when the proxy hangs up.
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = closed_tx.send(Instant::now());
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).timeout_secs(1).start();
    let start = Instant::now();
    let resp = get(qp.addr(), "/").await;
    assert_timeout_504(&resp);
    assert_between(start.elapsed(), 900, 5000);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let closed = tokio::time::timeout(DEADLINE, closed_rx.recv())
        .await
        .expect("upstream connection closed after the timeout")
        .unwrap();
    assert!(closed >= start);
    qp.assert_healthy();
}

/// T2: response-start timeout before any write → 504.
#[tokio::test]
async fn response_start_timeout_before_head_is_504() {
    let (app, _gate) = silent_app().await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_RESPONSE_START_TIMEOUT_SECONDS", 1)
        .start();
    let start = Instant::now();
    assert_timeout_504(&get(qp.addr(), "/").await);
    assert_between(start.elapsed(), 900, 5000);
    qp.assert_healthy();
}

/// T4: the response head satisfies the response-start timer; a body that arrives after it
/// has passed is delivered in full.
#[tokio::test]
async fn response_start_is_satisfied_by_the_head() {
    let app = streaming_app(vec![(0, "response started"), (2000, " and finished")], true).await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_RESPONSE_START_TIMEOUT_SECONDS", 1)
        .start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "response started and finished");
    qp.assert_healthy();
}

/// T5: idle timeout with nothing written at all → 504.
#[tokio::test]
async fn idle_timeout_before_head_is_504() {
    let (app, _gate) = silent_app().await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_IDLE_TIMEOUT_SECONDS", 1)
        .start();
    let start = Instant::now();
    assert_timeout_504(&get(qp.addr(), "/").await);
    assert_between(start.elapsed(), 900, 5000);
    qp.assert_healthy();
}

/// T6: writes more frequent than the idle timeout keep the response alive past it.
#[tokio::test]
async fn steady_writes_keep_the_idle_timer_quiet() {
    let app = streaming_app(
        vec![
            (0, "foo"),
            (400, "bar"),
            (400, "baz"),
            (400, "qux"),
            (400, "test"),
        ],
        true,
    )
    .await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_IDLE_TIMEOUT_SECONDS", 1)
        .start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "foobarbazquxtest");
    qp.assert_healthy();
}

/// T7: idle timeout after the first write → status stays 200, `request timeout` is appended to
/// the chunked body, and the response ends cleanly.
#[tokio::test]
async fn idle_timeout_after_first_write_appends_and_ends() {
    let app = streaming_app(vec![(0, "foo")], false).await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_IDLE_TIMEOUT_SECONDS", 1)
        .start();
    let start = Instant::now();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "foorequest timeout");
    assert_eq!(resp.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_between(start.elapsed(), 900, 5000);
    qp.assert_healthy();
}

/// T8 (second half): the total timeout after the head appends the message.
#[tokio::test]
async fn total_timeout_after_first_write_appends_and_ends() {
    let app = streaming_app(vec![(0, "partial response")], false).await;
    let mut qp = QpConfig::new(app.port()).timeout_secs(2).start();
    let start = Instant::now();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "partial responserequest timeout");
    assert_between(start.elapsed(), 1800, 6000);
    qp.assert_healthy();
}

/// §3.5 quirk: with a `Content-Length` from the app, the appended message cannot fit the
/// announced length, so the client sees a broken (not cleanly ended) response.
#[tokio::test]
async fn timeout_after_head_with_content_length_breaks_the_response() {
    let app = App::start(handler(|_| async {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx
                .send(Frame::data(Bytes::from_static(b"0123456789")))
                .await;
            tx.closed().await;
        });
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("100"));
        r
    }))
    .await;
    let mut qp = QpConfig::new(app.port())
        .timeout_secs(30)
        .env("REVISION_IDLE_TIMEOUT_SECONDS", 1)
        .start();
    let response = send_streaming(qp.addr(), get_req("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "100");
    let body = tokio::time::timeout(DEADLINE, collect(response))
        .await
        .expect("the response ends");
    assert!(body.is_err(), "a short body must not end cleanly: {body:?}");
    qp.assert_healthy();
}

/// §3.5: the timers start before the breaker, so time spent queued counts. With CC=1 and a
/// 2 s revision timeout, a request queued behind a hung one times out ~2 s after *it* arrived
/// (not 2 s after it got the slot, which would be ~4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_time_counts_toward_the_total_timeout() {
    let (app, _gate) = silent_app().await;
    let mut qp = QpConfig::new(app.port()).cc(1).timeout_secs(2).start();
    let addr = qp.addr();
    let first = tokio::spawn(async move { get(addr, "/first").await });
    eventually(DEADLINE, "the first request at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    let start = Instant::now();
    let second = get(addr, "/second").await;
    assert_timeout_504(&second);
    assert_between(start.elapsed(), 1500, 3300);
    assert_timeout_504(&first.await.unwrap());
    qp.assert_healthy();
}
