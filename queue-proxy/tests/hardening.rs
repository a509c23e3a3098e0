//! Adversarial clients against the queue-proxy's main port (README "Limits"): configurable head
//! limits, slow clients, the connection cap, HTTP/2 rapid reset and CONTINUATION floods, and
//! request smuggling attempts checked end to end at a recording app.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use test_support::attack::{self, closed_within, connect_and_send, read_frames};
use tokio::io::AsyncWriteExt;

/// The process still proxies a normal request and has not panicked or exited.
async fn assert_still_serving(qp: &mut QueueProxy) {
    let resp = get(qp.addr(), "/still-alive").await;
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    qp.assert_healthy();
}

fn head_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n").into_bytes()
}

/// `QUEUE_MAX_HEADERS` and `QUEUE_MAX_HEADER_BYTES` move the 431 thresholds; a URI longer than
/// hyper's 65534-byte request-target limit gets 414 while the head is within the size limit.
#[tokio::test]
async fn head_limits_follow_the_environment() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_MAX_HEADERS", 20)
        .env("QUEUE_MAX_HEADER_BYTES", 16384)
        .start();
    let fields = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    // Host + Connection + 18 = 20 fields: allowed; Host + 20 = 21: refused.
    let ok = raw_exchange(
        qp.addr(),
        head_with(&(fields(18) + "Connection: close\r\n")),
        DEADLINE,
    )
    .await;
    assert!(status_line(&ok).starts_with("HTTP/1.1 200"), "{ok:?}");
    let over = raw_exchange(qp.addr(), head_with(&fields(21)), DEADLINE).await;
    assert!(status_line(&over).starts_with("HTTP/1.1 431"), "{over:?}");

    let big = raw_exchange(
        qp.addr(),
        head_with(&format!("X-Big: {}\r\n", "a".repeat(20_000))),
        DEADLINE,
    )
    .await;
    assert!(status_line(&big).starts_with("HTTP/1.1 431"), "{big:?}");
    assert_eq!(app.seen_count(), 1);

    // Default limits: a 70 000-byte request target is 414.
    let mut qp2 = QpConfig::new(app.port()).start();
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "u".repeat(70_000)
    );
    let resp = raw_exchange(qp2.addr(), long.into_bytes(), DEADLINE).await;
    assert!(status_line(&resp).starts_with("HTTP/1.1 414"), "{resp:?}");
    assert_eq!(app.seen_count(), 1);
    assert_still_serving(&mut qp).await;
    assert_still_serving(&mut qp2).await;
}

/// Out-of-range or malformed limit variables stop start-up with exit 1 naming the variable.
#[test]
fn bad_limit_variables_fail_start_up() {
    for (name, value) in [
        ("QUEUE_MAX_HEADERS", "lots"),
        ("QUEUE_MAX_HEADERS", "0"),
        ("QUEUE_MAX_HEADER_BYTES", "100"),
        ("QUEUE_HEADER_READ_TIMEOUT_SECONDS", "0"),
        ("QUEUE_H2_MAX_CONCURRENT_STREAMS", "-1"),
        ("QUEUE_MAX_CONNECTIONS", "many"),
    ] {
        let exited = QpConfig::new(free_port()).env(name, value).run_to_exit();
        exited.assert_failed();
        assert!(
            exited.stderr.contains(name) || exited.stdout.contains(name),
            "{name}={value}: {exited:#?}"
        );
    }
}

/// Slowloris: with a 1 s header read timeout, a silent connection, a trickled head, a partial
/// HTTP/2 preface and an idle keep-alive connection are all closed; a normal client still gets
/// through meanwhile.
#[tokio::test]
async fn slow_clients_are_cut_at_the_header_read_timeout() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_HEADER_READ_TIMEOUT_SECONDS", 1)
        .start();
    let mut silent = connect_and_send(qp.addr(), b"").await;
    let mut partial_preface = connect_and_send(qp.addr(), b"PRI * HTTP/2.0\r\n").await;
    let mut trickle = connect_and_send(qp.addr(), b"GET / HTTP/1.1\r\n").await;
    let trickler = tokio::spawn(async move {
        // One header byte every 200 ms: never finishes within 1 s.
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if trickle.write_all(&[*b]).await.is_err() {
                return trickle;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });
    let mut idle =
        connect_and_send(qp.addr(), b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\n").await;

    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, DEADLINE).await, "silent");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        closed_within(&mut partial_preface, DEADLINE).await,
        "partial preface"
    );
    assert!(closed_within(&mut idle, DEADLINE).await, "idle keep-alive");
    let mut trickle = trickler.await.unwrap();
    assert!(closed_within(&mut trickle, DEADLINE).await, "trickled head");
    assert_eq!(app.seen_count(), 1, "{:#?}", app.seen());
    assert_still_serving(&mut qp).await;
}

/// `QUEUE_MAX_CONNECTIONS=2`: a third connection is not served while two are open, and is served
/// as soon as one of them closes.
#[tokio::test]
async fn connection_cap_pauses_accept() {
    let app = App::ok().await;
    let qp = QpConfig::new(app.port())
        .env("QUEUE_MAX_CONNECTIONS", 2)
        .start();
    let mut first = h1_connect(qp.addr()).await.unwrap();
    let mut second = h1_connect(qp.addr()).await.unwrap();
    for c in [&mut first, &mut second] {
        let resp = collect(c.send_request(get_req("/held")).await.unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
    }
    let addr = qp.addr();
    let third = tokio::spawn(async move { get(addr, "/third").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(app.seen_count(), 2);
    drop(first);
    let resp = tokio::time::timeout(DEADLINE, third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    drop(second);
}

/// The HTTP/2 SETTINGS advertise the stream and header-list limits.
#[tokio::test]
async fn h2_settings_advertise_the_limits() {
    let app = App::ok().await;
    let qp = QpConfig::new(app.port())
        .env("QUEUE_H2_MAX_CONCURRENT_STREAMS", 7)
        .start();
    let mut conn = connect_and_send(qp.addr(), &attack::client_start()).await;
    let (frames, _) = read_frames(&mut conn, DEADLINE, |f| f.kind == attack::SETTINGS).await;
    let settings = frames.last().expect("a SETTINGS frame").settings();
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 1 << 20)), "{settings:?}");
}

/// CVE-2023-44487: thousands of streams opened and cancelled at once end with GOAWAY
/// `ENHANCE_YOUR_CALM`; few of them reach the app and the proxy keeps serving.
#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let authority = qp.addr().to_string();
    let (mut read, mut write) = tokio::net::TcpStream::connect(qp.addr())
        .await
        .unwrap()
        .into_split();
    let flood = attack::rapid_reset(&authority, 5000);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&flood).await;
        write
    });
    let (frames, _) = read_frames(&mut read, DEADLINE, |f| f.kind == attack::GOAWAY).await;
    let goaway = frames.iter().find_map(|f| f.goaway_code());
    assert_eq!(goaway, Some(attack::ENHANCE_YOUR_CALM), "{frames:?}");
    writer.abort();
    assert!(app.seen_count() < 1000, "{} requests", app.seen_count());
    assert_still_serving(&mut qp).await;
}

/// CONTINUATION flood: a header block that never ends is cut once it passes the 1 MiB header
/// list limit (the connection is closed long before the attacker's 8 MiB are sent) and nothing
/// reaches the app.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let (mut read, mut write) = tokio::net::TcpStream::connect(qp.addr())
        .await
        .unwrap()
        .into_split();
    let start = attack::continuation_start(&qp.addr().to_string());
    let chunk = attack::continuation(100); // ~12 KiB per frame
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        if write.write_all(&start).await.is_err() {
            return sent;
        }
        while sent < 8 << 20 {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let (frames, closed) = read_frames(&mut read, DEADLINE, |_| false).await;
    assert!(closed, "the connection stayed open: {frames:?}");
    let sent = tokio::time::timeout(DEADLINE, writer)
        .await
        .unwrap()
        .unwrap();
    assert!(
        sent < 8 << 20,
        "the whole flood was accepted ({sent} bytes)"
    );
    assert_eq!(app.seen_count(), 0);
    assert_still_serving(&mut qp).await;
}

/// Request smuggling and parser edge cases, each followed on the same connection by a second
/// request for `/smuggled`: the app never sees that second request, the client gets exactly one
/// response, and requests whose framing is ambiguous are refused with 400 before anything reaches
/// the app. `Transfer-Encoding` plus `Content-Length` is served as chunked and the connection
/// closed (RFC 9112 §6.1, as hyper and Go do); a chunked body that turns out malformed after the
/// head went upstream aborts the exchange with 502 (as Go's proxy does).
#[tokio::test]
async fn smuggling_attempts_never_reach_the_app() {
    let app = echo_app().await;
    let mut qp = QpConfig::new(app.port()).start();
    const NEXT: &str = "GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";
    // (name, payload, refused with 400 before the app)
    let cases: &[(&str, String, bool)] = &[
        (
            "conflicting Content-Length",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{NEXT}"),
            true,
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 40\r\n\r\nhello{NEXT}"),
            true,
        ),
        (
            "Content-Length with sign",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: +5\r\n\r\nhello{NEXT}"),
            true,
        ),
        (
            "space before colon",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length : 5\r\n\r\nhello{NEXT}"),
            true,
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\r\n b\r\n\r\n{NEXT}"),
            true,
        ),
        (
            "Transfer-Encoding chunked not last",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{NEXT}"),
            true,
        ),
        (
            "Transfer-Encoding without chunked",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n{NEXT}"),
            true,
        ),
        (
            "Transfer-Encoding plus Content-Length",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{NEXT}"),
            false,
        ),
        (
            "bare LF in chunked body",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{NEXT}"),
            false,
        ),
        (
            "invalid chunk size",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{NEXT}"),
            false,
        ),
        (
            "chunk size overflow",
            format!("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n{NEXT}"),
            false,
        ),
    ];
    for (name, payload, refused) in cases {
        let before = app.seen_count();
        let response = raw_exchange(qp.addr(), payload.clone().into_bytes(), DEADLINE).await;
        let text = String::from_utf8_lossy(&response);
        if *refused {
            assert!(
                status_line(&response).starts_with("HTTP/1.1 400"),
                "{name}: {text:?}"
            );
            assert_eq!(app.seen_count(), before, "{name}: reached the app");
        }
        assert!(
            !app.seen().iter().any(|s| s.uri.path() == "/smuggled"),
            "{name}: smuggled request reached the app: {text:?}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: {text:?}");
    }
    assert_still_serving(&mut qp).await;
}
