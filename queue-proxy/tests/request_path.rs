//! The rest of the request path end to end (spec §2, §3.4, §3.5, §3.8, §3.9): upstream
//! connection pooling and the keep-alive race, `Expect: 100-continue`, HEAD, pipelining,
//! upgrade edge cases, breaker slots held by tunnels and released by departed clients,
//! dual-stack listening, timeouts over h2c.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use test_support::edges::{hinting_pod, mask_date, read_at_least};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// §3.9: keep-alive to the app. Sequential requests reuse one upstream connection.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let app = raw_app(move |mut stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            while read_head(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).cc(4).start();
    for _ in 0..20 {
        let resp = get(qp.addr(), "/").await;
        assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "20 sequential requests used {n} upstream connections"
    );
    qp.assert_healthy();
}

/// The keep-alive race: an app that closes every connection right after its response (without
/// announcing it) must not cause errors for the next requests, GET or POST with a body. Each
/// request waits for the app's close of the connection before it: a request written just as the
/// close comes (the race's second form) is sent again only when replayable, as by Go's
/// transport, and a `POST` with a body then gets the 502 with either proxy (that form has tests
/// of its own: `common/src/proxy/pool_tests.rs`).
#[tokio::test]
async fn app_closing_idle_connections_causes_no_errors() {
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    let app = raw_app(move |mut stream| {
        let counted = Arc::clone(&counted);
        async move {
            let mut buf = Vec::new();
            let Some(head) = read_head_buffered(&mut stream, &mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let Some(body) = read_exact_buffered(&mut stream, &mut buf, len).await else {
                return;
            };
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                String::from_utf8_lossy(&body)
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            // Close without `Connection: close`.
            drop(stream);
            counted.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    for i in 0..30 {
        eventually(Duration::from_secs(10), "the app's close", || async {
            (closed.load(Ordering::SeqCst) == i).then_some(())
        })
        .await;
        // The app's close has also to reach the queue-proxy's socket (its FIN, on a busy
        // machine, can lag behind the app's `close`): else the request is written on the
        // connection in the race's second form, which a POST does not survive (see above).
        eventually(
            Duration::from_secs(10),
            "the close to reach the queue-proxy",
            || async { (established_connections_to(app.port()) == 0).then_some(()) },
        )
        .await;
        let resp = if i % 2 == 0 {
            get(qp.addr(), "/").await
        } else {
            send(
                qp.addr(),
                req("POST", "/").body(full(format!("body-{i}"))).unwrap(),
            )
            .await
        };
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {resp:?}");
        if i % 2 == 1 {
            assert_eq!(resp.text(), format!("body-{i}"));
        }
    }
    qp.assert_healthy();
}

/// TCP connections to 127.0.0.1:`port` still in the ESTABLISHED state, from /proc/net/tcp
/// (Linux): a pooled connection whose peer closed moves to CLOSE_WAIT when the FIN arrives.
fn established_connections_to(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&ESTABLISHED)
        })
        .count()
}

/// curl sends `Expect: 100-continue` for large uploads: the client gets `100 Continue`, sends
/// the body, and the app receives it.
#[tokio::test]
async fn expect_100_continue_upload() {
    let app = App::start(handler(|req: http::Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        respond(StatusCode::OK, body)
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let interim = tokio::time::timeout(DEADLINE, read_head_buffered(&mut stream, &mut buf))
        .await
        .expect("an interim response")
        .expect("a head");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"hello").await.unwrap();
    let head = tokio::time::timeout(DEADLINE, read_head_buffered(&mut stream, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let body = tokio::time::timeout(DEADLINE, read_exact_buffered(&mut stream, &mut buf, 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"hello");
    qp.assert_healthy();
}

/// HEAD: headers relayed (including the length of the would-be body), no body, and the
/// connection stays usable.
#[tokio::test]
async fn head_requests_have_no_body() {
    let app = App::start(handler(|_| async { respond(StatusCode::OK, "0123456789") })).await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("both responses")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    // Pipelined: HEAD answer (no body) then the GET answer with its body.
    let heads: Vec<_> = text.match_indices("HTTP/1.1 200 OK").collect();
    assert_eq!(heads.len(), 2, "{text}");
    let between = &text[heads[0].0..heads[1].0];
    assert!(
        between.to_ascii_lowercase().contains("content-length: 10"),
        "{text}"
    );
    assert!(
        between.ends_with("\r\n\r\n"),
        "HEAD response has no body: {text}"
    );
    assert!(text.ends_with("0123456789"), "{text}");
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, http::Method::HEAD);
    qp.assert_healthy();
}

/// An app that does not speak websocket answers the upgrade request normally; the answer is
/// relayed as is.
#[tokio::test]
async fn upgrade_refused_by_app_is_relayed() {
    let app = App::start(handler(|_| async {
        respond(StatusCode::BAD_REQUEST, "no ws here")
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = send(
        qp.addr(),
        req("GET", "/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::BAD_REQUEST, "no ws here")
    );
    let seen = app.only_seen();
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(
        seen.header("connection")
            .map(|c| c.to_ascii_lowercase())
            .as_deref(),
        Some("upgrade")
    );
    qp.assert_healthy();
}

/// §3.9: a `101` switching to another protocol than requested is a 502.
#[tokio::test]
async fn upgrade_to_another_protocol_is_502() {
    let app = raw_app(|mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
                .await;
            let mut sink = [0u8; 64];
            let _ = stream.read(&mut sink).await;
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = send(
        qp.addr(),
        req("GET", "/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.text(),
        "backend tried to switch protocol \"foo\" when \"websocket\" was requested\n"
    );
    qp.assert_healthy();
}

/// §3.4/§3.8: an upgraded connection holds its breaker slot until the tunnel closes: with CC=1
/// a regular request waits while a websocket is open and proceeds once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_holds_the_breaker_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let plain_requests = Arc::new(AtomicUsize::new(0));
    let counter = plain_requests.clone();
    let app = raw_app(move |stream| {
        let counter = counter.clone();
        async move {
            let mut peek = [0u8; 512];
            let n = stream.peek(&mut peek).await.unwrap_or(0);
            if String::from_utf8_lossy(&peek[..n]).contains("GET /plain") {
                let mut stream = stream;
                if read_head(&mut stream).await.is_some() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                        .await;
                }
                return;
            }
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", qp.addr()), stream)
        .await
        .expect("websocket through the proxy");
    ws.send(Message::Text("one".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("one".into())
    );

    let addr = qp.addr();
    let plain = tokio::spawn(async move { get(addr, "/plain").await });
    // While the tunnel is open the plain request stays queued in the breaker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!plain.is_finished(), "the request must wait for the slot");
    assert_eq!(plain_requests.load(Ordering::SeqCst), 0);
    ws.send(Message::Text("two".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("two".into())
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let resp = tokio::time::timeout(DEADLINE, plain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "plain")
    );
    qp.assert_healthy();
}

/// A client that goes away cancels its request (Go cancels the request context): the breaker
/// slot is released well before the revision timeout, so the next request is served. Checked
/// for an HTTP/1.1 client that closes its connection and an h2c client that resets its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_client_releases_its_breaker_slot() {
    let gate = Gate::new();
    let g = gate.clone();
    let app = App::start(handler(move |req| {
        let g = g.clone();
        async move {
            if req.uri().path() == "/hang" {
                g.wait().await;
            }
            respond(StatusCode::OK, "ok")
        }
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).cc(1).timeout_secs(60).start();
    let addr = qp.addr();

    // HTTP/1.1: the client closes its connection while the app holds the request.
    let hanging = tokio::spawn(async move { get(addr, "/hang").await });
    eventually(DEADLINE, "the hanging request at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    hanging.abort();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(15), get(addr, "/next"))
        .await
        .expect("the slot of a departed HTTP/1.1 client is released");
    assert_eq!(resp.status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(15));

    // h2c: the client resets its stream.
    let mut h2 = h2_connect(addr).await;
    let before = app.concurrency.total();
    let request = http::Request::get(format!("http://{addr}/hang"))
        .body(empty())
        .unwrap();
    let pending = h2.send_request(request);
    let hanging = tokio::spawn(pending);
    eventually(DEADLINE, "the hanging h2 request at the app", || async {
        (app.concurrency.total() > before).then_some(())
    })
    .await;
    hanging.abort(); // drops the response future: RST_STREAM(CANCEL)
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        send_h2(
            &mut h2,
            http::Request::get(format!("http://{addr}/next"))
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .expect("the slot of a cancelled h2 stream is released");
    assert_eq!(resp.status, StatusCode::OK);
    gate.open();
    qp.assert_healthy();
}

/// §2: the main listener is dual-stack; an IPv6 client's address goes into X-Forwarded-For
/// without brackets.
#[tokio::test]
async fn ipv6_clients_are_served_and_forwarded_for_has_no_brackets() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    }
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, qp.port));
    let resp = get(v6, "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        app.only_seen().header("x-forwarded-for").as_deref(),
        Some("::1")
    );
    qp.assert_healthy();
}

/// §3.5 over h2c: 504 before the head, and the appended message after it.
#[tokio::test]
async fn timeouts_over_h2c() {
    let app = App::start(handler(|req| async move {
        if req.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx
                .send(hyper::body::Frame::data(bytes::Bytes::from_static(
                    b"partial",
                )))
                .await;
            tx.closed().await;
        });
        Response::new(body.boxed())
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).timeout_secs(1).start();
    let mut h2 = h2_connect(qp.addr()).await;
    let resp = send_h2(
        &mut h2,
        http::Request::get(format!("http://{}/hang", qp.addr()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.text(), "request timeout");
    let resp = send_h2(
        &mut h2,
        http::Request::get(format!("http://{}/stream", qp.addr()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "partialrequest timeout");
    qp.assert_healthy();
}

/// The app's early hints: a `103` with two `Link` fields (lower-case names, a stray
/// `Content-Length`), as an app writes it.
const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\
                       content-length: 0\r\nlink: </app.js>; rel=preload\r\n\r\n";
/// [`HINTS`] as Go's proxy writes it to the client: canonical names, sorted, no length.
const GO_HINTS: &str =
    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nLink: </app.js>; rel=preload\r\n\r\n";
const FINAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const GO_FINAL: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: *\r\n\r\nok";

/// §3.9 [Go default]: a `103 Early Hints` from the app reaches the client while the app is still
/// working on the final response, written as Go writes it; the final response follows intact.
#[tokio::test]
async fn early_hints_are_relayed_before_the_final_response() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = hinting_pod(HINTS, FINAL, Some(release.clone())).await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = read_at_least(&mut stream, &mut buf, GO_HINTS.len(), DEADLINE).await;
    // The app has not answered yet: the hints came on their own.
    assert_eq!(String::from_utf8_lossy(&early), GO_HINTS);
    release.add_permits(1);
    let all = read_at_least(
        &mut stream,
        &mut buf,
        GO_HINTS.len() + GO_FINAL.len(),
        DEADLINE,
    )
    .await;
    assert_eq!(mask_date(&all), format!("{GO_HINTS}{GO_FINAL}"));
    qp.assert_healthy();
}

/// Several 1xx in a row (a `102`, two `103`s, a code Go has no text for, one cut across
/// writes by the app) are relayed in order before a chunked final response; an HTTP/1.0 client
/// gets them with Go's `HTTP/1.0` status line.
#[tokio::test]
async fn several_informational_responses_are_relayed_in_order() {
    const INTERIM: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
                             Link: </a.css>\r\n\r\nHTTP/1.1 104 Custom\r\nX-B: 2\r\nx-a: 1\r\n\r\n\
                             HTTP/1.1 103 Early Hints\r\nLink: </b.css>\r\n\r\n";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let app = hinting_pod(INTERIM, CHUNKED, None).await;
    let mut qp = QpConfig::new(app.port()).start();
    let expected_interim = "HTTP/1.1 102 Processing\r\n\r\n\
                            HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                            HTTP/1.1 104 status code 104\r\nX-A: 1\r\nX-B: 2\r\n\r\n\
                            HTTP/1.1 103 Early Hints\r\nLink: </b.css>\r\n\r\n";
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        format!(
            "{expected_interim}HTTP/1.1 200 OK\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\nDate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    );
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    let text = mask_date(&raw);
    assert!(
        text.starts_with(&expected_interim.replace("HTTP/1.1 1", "HTTP/1.0 1")),
        "{text}"
    );
    assert!(text.ends_with("hello"), "{text}");
    qp.assert_healthy();
}

/// Pipelined requests each get their own hints, between the previous response's last byte and
/// their own final head.
#[tokio::test]
async fn pipelined_requests_keep_their_hints_in_place() {
    let app = hinting_pod(HINTS, FINAL, None).await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n\
          GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n\
          GET /3 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    let last = GO_FINAL.replace("Date", "Connection: close\r\nDate");
    assert_eq!(
        mask_date(&raw),
        format!("{GO_HINTS}{GO_FINAL}{GO_HINTS}{GO_FINAL}{GO_HINTS}{last}")
    );
    qp.assert_healthy();
}

/// `Expect: 100-continue` with an app that answers `100 Continue` itself and then hints: the
/// client gets one `100 Continue` (the app's, or the proxy's own when the body is first read,
/// whichever is first; never both), then the hints, sends its body, and gets the final answer.
#[tokio::test]
async fn expect_continue_with_an_app_that_sends_100_and_hints() {
    const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
                             Link: </a.css>\r\n\r\n";
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = hinting_pod(INTERIM, FINAL, Some(release.clone())).await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
    let mut buf = Vec::new();
    let early = read_at_least(&mut stream, &mut buf, interim.len(), DEADLINE).await;
    assert_eq!(String::from_utf8_lossy(&early), interim);
    stream.write_all(b"hello").await.unwrap();
    release.add_permits(1);
    let all = read_at_least(
        &mut stream,
        &mut buf,
        interim.len() + GO_FINAL.len(),
        DEADLINE,
    )
    .await;
    assert_eq!(mask_date(&all), format!("{interim}{GO_FINAL}"));
    // Nothing else (no second 100) follows.
    let more = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut [0u8; 64])).await;
    assert!(
        more.is_err(),
        "unexpected bytes after the response: {more:?}"
    );
    qp.assert_healthy();
}

/// On HTTP/2 end to end (h2c client, h2c app, as the queue-proxy mirrors the protocol), the
/// app's 1xx reach the client: each a HEADERS frame of its own on the stream, sent the moment it
/// arrives (the app still holds its final response), in order, fields as the app sent them
/// (HTTP/2 keeps them lower case) less `Content-Length` (Go's proxy drops it from 1xx), at most
/// one `100 Continue`; the final response follows intact.
#[tokio::test]
async fn informational_responses_reach_h2_clients() {
    use test_support::edges::{assert_h2_hints_relayed, h2_hinting_app, H2Exchange};
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = h2_hinting_app(release.clone()).await;
    let mut qp = QpConfig::new(app.port()).start();
    let request = http::Request::get(format!("http://{}/hints", qp.addr()))
        .body(())
        .unwrap();
    let exchange = H2Exchange::start(qp.addr(), request, b"").await;
    assert_h2_hints_relayed(exchange, &release, DEADLINE).await;
    qp.assert_healthy();
}
