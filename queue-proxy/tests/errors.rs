//! Failures on either side of the proxy (spec §2 server limits, §3.9 errors, §3.10 catalogue):
//! upstream refusals and resets, malformed and oversized requests. After each, the process is
//! still serving and never panicked.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use support::*;
use tokio::io::AsyncWriteExt;

/// The process still proxies a normal request and has not panicked or exited.
async fn assert_still_serving(qp: &mut QueueProxy) {
    let resp = get(qp.addr(), "/still-alive").await;
    assert_ne!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{resp:?}");
    qp.assert_healthy();
}

/// §3.9: nothing listens on USER_PORT → `502` with Go's dial error text and a newline.
#[tokio::test]
async fn app_down_is_502_with_dial_error() {
    let user_port = free_port();
    let mut qp = QpConfig::new(user_port).start();
    for _ in 0..2 {
        let resp = get(qp.addr(), "/").await;
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            resp.text(),
            format!("dial tcp 127.0.0.1:{user_port}: connect: connection refused\n")
        );
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            resp.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    // Also over h2c.
    let mut h2 = h2_connect(qp.addr()).await;
    let resp = send_h2(
        &mut h2,
        http::Request::get(format!("http://{}/", qp.addr()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.text(),
        format!("dial tcp 127.0.0.1:{user_port}: connect: connection refused\n")
    );
    qp.assert_healthy();
}

/// The app resets the connection after reading the request, before any response byte → 502
/// with an error text ending in a newline.
#[tokio::test]
async fn reset_before_head_is_502() {
    let app = raw_app(|mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            reset(stream);
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{resp:?}");
    let text = resp.text();
    assert!(text.ends_with('\n') && text.len() > 1, "{text:?}");
    // A clean close before the head (EOF) is a 502 as well.
    let app = raw_app(|mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let mut qp2 = QpConfig::new(app.port()).start();
    let resp = get(qp2.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{resp:?}");
    qp.assert_healthy();
    qp2.assert_healthy();
}

/// An app that sends a head and part of the body, then resets the connection.
async fn reset_mid_body_app(head: &'static [u8]) -> std::net::SocketAddr {
    raw_app(move |mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            let _ = stream.write_all(head).await;
            let _ = stream.flush().await;
            // Let the proxy relay the head and first bytes before the reset.
            tokio::time::sleep(Duration::from_millis(200)).await;
            reset(stream);
        }
    })
    .await
}

/// §3.9: an error while streaming the body after the head was sent aborts the client's
/// response (no clean end), for a Content-Length body and for a chunked one (HTTP/1.1 app that
/// resets its connection).
#[tokio::test]
async fn reset_mid_body_aborts_the_response() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n"[..],
    ] {
        let app = reset_mid_body_app(head).await;
        let mut qp = QpConfig::new(app.port()).start();
        let response = send_streaming(qp.addr(), get_req("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = tokio::time::timeout(DEADLINE, collect(response))
            .await
            .expect("the response ends one way or another");
        assert!(
            body.is_err(),
            "an aborted body must not end cleanly: {body:?}"
        );
        qp.assert_healthy();
    }
}

/// The same over h2c: the app's stream fails after the head and some data (hyper resets the
/// stream) → the client's stream is reset too, not ended cleanly.
#[tokio::test]
async fn h2_stream_error_mid_body_resets_the_client_stream() {
    let app = App::start(handler(|req| async move {
        if req.uri().path() != "/" {
            return respond(StatusCode::OK, "ok");
        }
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Frame::data(Bytes::from_static(b"partial"))).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(tx);
        });
        // The channel body ends cleanly when the sender drops; make it fail instead.
        let failing = body.boxed().with_trailers(async {
            Some(Err::<http::HeaderMap, BoxError>(
                "app failed mid-body".into(),
            ))
        });
        http::Response::new(BodyExt::boxed(failing))
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut h2 = h2_connect(qp.addr()).await;
    let response = h2
        .send_request(
            http::Request::get(format!("http://{}/", qp.addr()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(DEADLINE, collect(response))
        .await
        .expect("the h2 response ends one way or another");
    assert!(body.is_err(), "an aborted h2 body must be reset: {body:?}");
    // Same failure towards an HTTP/1.1 client.
    let response = send_streaming(qp.addr(), get_req("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(DEADLINE, collect(response))
        .await
        .expect("the response ends one way or another");
    assert!(
        body.is_err(),
        "an aborted body must not end cleanly: {body:?}"
    );
    assert_still_serving(&mut qp).await;
}

/// Malformed requests are refused by the server with 400 and nothing reaches the app.
#[tokio::test]
async fn malformed_requests_are_400() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\nBad Header: v\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Ctl: a\x01b\r\n\r\n"[..],
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        &b"GET /\x7f HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
    ] {
        let response = raw_exchange(qp.addr(), raw.to_vec(), DEADLINE).await;
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400"),
            "{:?} → {:?}",
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(&response)
        );
    }
    assert!(app.seen().is_empty(), "{:#?}", app.seen());
    assert_still_serving(&mut qp).await;
}

/// §2: request heads over the limit (1 MiB, or too many fields) → 431.
#[tokio::test]
async fn oversized_heads_are_431() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();

    let mut big = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', (1 << 20) + 16 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let response = raw_exchange(qp.addr(), big, DEADLINE).await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );

    let mut many = b"GET / HTTP/1.1\r\nHost: example.com\r\n".to_vec();
    for i in 0..1000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let response = raw_exchange(qp.addr(), many, DEADLINE).await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );

    // A large but allowed head (100 KiB) is proxied.
    let resp = send(
        qp.addr(),
        req("GET", "/")
            .header("x-large", "b".repeat(100 * 1024))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        app.only_seen().header("x-large").map(|v| v.len()),
        Some(100 * 1024)
    );
    assert_still_serving(&mut qp).await;
}

/// Garbage on the h2c preface path and abrupt client disconnects mid-request do not hurt the
/// process.
#[tokio::test]
async fn abrupt_clients_do_not_hurt() {
    let gate = Gate::new();
    let g = gate.clone();
    let app = App::start(handler(move |_| {
        let g = g.clone();
        async move {
            g.wait().await;
            respond(StatusCode::OK, "ok")
        }
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    // A broken h2 preface.
    let _ = raw_exchange(
        qp.addr(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ngarbage-garbage-garbage".to_vec(),
        Duration::from_secs(5),
    )
    .await;
    // Clients that go away while their request waits at the app and in the breaker queue.
    for _ in 0..3 {
        let addr = qp.addr();
        let pending = tokio::spawn(async move { get(addr, "/abandoned").await });
        eventually(DEADLINE, "the request at the app", || async {
            (app.concurrency.total() > 0).then_some(())
        })
        .await;
        pending.abort();
    }
    // Half a request body, then the client disappears.
    let _ = raw_exchange(
        qp.addr(),
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\nhalf".to_vec(),
        Duration::from_millis(300),
    )
    .await;
    gate.open();
    // The breaker slot held by the abandoned requests came back.
    let resp = get(qp.addr(), "/after").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    qp.assert_healthy();
}
