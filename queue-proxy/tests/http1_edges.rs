//! HTTP/1 edge cases answered as upstream's Go server and proxy answer them (README "HTTP/1 edge
//! cases"), checked on the exact bytes the app and the client receive: requests without `Host`,
//! absolute-form targets, `CONNECT`, malformed requests, header-name case, error framing and
//! the h2c upgrade.

mod support;

use support::*;
use test_support::attack::{self, read_frames};
use test_support::edges::{mask_date, recording_app, GO_BAD_REQUEST, GO_MISSING_HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The app's answer in the recording app: `200`, `Content-Length: 2`, body `ok`.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An HTTP/1.0 request without `Host` reaches the app with `Host` set to the app's address
/// (upstream's Go proxy names the upstream); the client gets an HTTP/1.0 answer and the close.
#[tokio::test]
async fn http10_without_host_gets_the_upstream_address_as_host() {
    let (app, heads) = recording_app(OK).await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(qp.addr(), b"GET /old HTTP/1.0\r\n\r\n".to_vec(), DEADLINE).await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nDate: *\r\n\r\nok"
    );
    assert_eq!(
        heads.lock().unwrap().as_slice(),
        [format!(
            "GET /old HTTP/1.1\r\nX-Forwarded-For: 127.0.0.1\r\nHost: {app}\r\n\r\n"
        )]
    );
    qp.assert_healthy();
}

/// An HTTP/1.1 request without `Host` gets Go's own `400` byte for byte and the connection is
/// closed; nothing reaches the app, not even a request pipelined behind it.
#[tokio::test]
async fn http11_without_host_gets_gos_400_and_close() {
    let (app, heads) = recording_app(OK).await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(raw, GO_MISSING_HOST);
    assert!(heads.lock().unwrap().is_empty());
    qp.assert_healthy();
}

/// An absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2): the app gets the
/// origin-form target and `Host: other.example`.
#[tokio::test]
async fn absolute_form_authority_replaces_host() {
    let (app, heads) = recording_app(OK).await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET http://other.example/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nDate: *\r\n\r\nok"
    );
    assert_eq!(
        heads.lock().unwrap().as_slice(),
        ["GET /abs?q=1 HTTP/1.1\r\nHost: other.example\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"]
    );
    qp.assert_healthy();
}

/// `CONNECT` is never forwarded: `502` with upstream's text, sent with its length, and the
/// connection is closed.
#[tokio::test]
async fn connect_is_refused() {
    let (app, heads) = recording_app(OK).await;
    let mut qp = QpConfig::new(app.port()).start();
    for target in ["other.example:443", "/"] {
        let raw = raw_exchange(
            qp.addr(),
            format!("CONNECT {target} HTTP/1.1\r\nHost: other.example:443\r\n\r\n").into_bytes(),
            DEADLINE,
        )
        .await;
        assert_eq!(
            mask_date(&raw),
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 40\r\n\
             Date: *\r\n\r\nclient sent unsupported CONNECT request\n",
            "{target}"
        );
    }
    assert!(heads.lock().unwrap().is_empty());
    qp.assert_healthy();
}

/// Requests hyper cannot read get Go's `400` (and an oversized head Go's `431`) byte for byte,
/// and the connection is closed. An app's own `400` of the same shape is relayed untouched.
#[tokio::test]
async fn malformed_requests_get_gos_answers() {
    let (app, heads) =
        recording_app(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_MAX_HEADER_BYTES", 16384)
        .start();
    for bad in [
        "GET / HTTP/1.1\r\nHost: a\r\nX Bad: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Bad(: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    ] {
        let raw = raw_exchange(qp.addr(), bad.as_bytes().to_vec(), DEADLINE).await;
        assert_eq!(
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(GO_BAD_REQUEST),
            "{bad:?}"
        );
    }
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let raw = raw_exchange(qp.addr(), big.into_bytes(), DEADLINE).await;
    assert_eq!(
        String::from_utf8_lossy(&raw),
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Connection: close\r\n\r\n431 Request Header Fields Too Large"
    );
    assert!(heads.lock().unwrap().is_empty());

    // The app's own empty 400 on a closing connection looks like hyper's automatic one, and
    // is still relayed as the app sent it.
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\nDate: *\r\n\r\n"
    );
    assert_eq!(heads.lock().unwrap().len(), 1);
    qp.assert_healthy();
}

/// Header names go out in canonical case on HTTP/1.1 responses and chunked trailers (the app
/// writes them in lower case), as Go writes them.
#[tokio::test]
async fn response_headers_and_trailers_are_title_case() {
    let (app, heads) = recording_app(
        b"HTTP/1.1 200 OK\r\nx-custom-thing: v\r\ntrailer: x-trail\r\n\
          transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-trail: t\r\n\r\n",
    )
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\nx-lower: 1\r\nconnection: close\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 200 OK\r\nX-Custom-Thing: v\r\nTrailer: x-trail\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\nDate: *\r\n\r\n2\r\nok\r\n0\r\nX-Trail: t\r\n\r\n"
    );
    assert_eq!(
        heads.lock().unwrap().as_slice(),
        ["GET / HTTP/1.1\r\nHost: a\r\nX-Lower: 1\r\nTe: trailers\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"]
    );
    qp.assert_healthy();
}

/// Fixed-text answers (a `502` for an unreachable app, a probe answer) go out with
/// `Content-Length`, not chunked.
#[tokio::test]
async fn fixed_answers_have_a_content_length() {
    let port = free_port();
    let mut qp = QpConfig::new(port).start();
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    let text = format!("dial tcp 127.0.0.1:{port}: connect: connection refused\n");
    assert_eq!(
        mask_date(&raw),
        format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: {}\r\n\
             Date: *\r\n\r\n{text}",
            text.len()
        )
    );
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nK-Network-Probe: probe\r\nConnection: close\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    let raw = mask_date(&raw);
    assert!(raw.contains("\r\nContent-Length: "), "{raw}");
    assert!(!raw.contains("Transfer-Encoding"), "{raw}");
    qp.assert_healthy();
}

/// `Upgrade: h2c` with `HTTP2-Settings` (what `curl --http2` sends): `101`, then HTTP/2 with
/// the request answered as stream 1; the connection goes on serving HTTP/2 streams.
#[tokio::test]
async fn h2c_upgrade_answers_the_request_as_stream_one() {
    let app = App::start(handler(|req| async move {
        respond(
            http::StatusCode::OK,
            format!(
                "{} {}",
                req.version() == http::Version::HTTP_2,
                req.uri().path()
            ),
        )
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /up?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom: v\r\n\
              Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
              HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head_buffered(&mut stream, &mut buf).await.unwrap();
    assert_eq!(
        mask_date(&head),
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nDate: *\r\n\r\n"
    );
    // The server's SETTINGS may already follow the 101: it is read from `buf` first.
    stream.write_all(&attack::client_start()).await.unwrap();
    let mut reader = (&buf[..]).chain(&mut stream);
    let (frames, _) = read_frames(&mut reader, DEADLINE, |f| {
        f.kind == attack::DATA && f.stream == 1 && f.flags & attack::END_STREAM != 0
    })
    .await;
    let first = &frames[0];
    assert_eq!(
        (first.kind, first.stream),
        (attack::SETTINGS, 0),
        "{frames:?}"
    );
    let headers = frames
        .iter()
        .find(|f| f.kind == attack::HEADERS && f.stream == 1)
        .expect("stream 1 response headers");
    // `:status: 200` is static-table entry 8.
    assert_eq!(headers.payload[0], 0x88, "{frames:?}");
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == attack::DATA && f.stream == 1)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(body, b"true /up");
    let seen = app.only_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri.to_string(), "http://example.com/up?x=1");
    assert_eq!(seen.header("x-custom").as_deref(), Some("v"));
    assert!(seen.header("upgrade").is_none() && seen.header("http2-settings").is_none());

    // Stream 3 on the same connection.
    let mut block = attack::get_block("example.com");
    block[2] = 0x04; // :path literal, indexed name (4) instead of the static `/`
    block.truncate(2);
    block.extend_from_slice(&[0x04, 7]);
    block.extend_from_slice(b"/second");
    block.extend_from_slice(&[0x01, 11]);
    block.extend_from_slice(b"example.com");
    drop(reader);
    stream
        .write_all(&attack::frame(
            attack::HEADERS,
            attack::END_HEADERS | attack::END_STREAM,
            3,
            &block,
        ))
        .await
        .unwrap();
    let (frames, _) = read_frames(&mut stream, DEADLINE, |f| {
        f.kind == attack::DATA && f.stream == 3 && f.flags & attack::END_STREAM != 0
    })
    .await;
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == attack::DATA && f.stream == 3)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(body, b"true /second");
    qp.assert_healthy();
}

/// An HTTP/2 request without `:authority` (or `Host`) goes upstream with the app's address as
/// its authority.
#[tokio::test]
async fn h2_request_without_authority_gets_the_upstream_address() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    let mut bytes = attack::client_start();
    // :method GET, :scheme http, :path / (static table), nothing else.
    bytes.extend(attack::frame(
        attack::HEADERS,
        attack::END_HEADERS | attack::END_STREAM,
        1,
        &[0x82, 0x86, 0x84],
    ));
    stream.write_all(&bytes).await.unwrap();
    let (frames, _) = read_frames(&mut stream, DEADLINE, |f| {
        f.kind == attack::DATA && f.stream == 1 && f.flags & attack::END_STREAM != 0
    })
    .await;
    let headers = frames
        .iter()
        .find(|f| f.kind == attack::HEADERS && f.stream == 1)
        .expect("a response");
    assert_eq!(headers.payload[0], 0x88, "200: {frames:?}");
    let seen = app.only_seen();
    assert_eq!(
        seen.uri.authority().map(|a| a.to_string()),
        Some(format!("127.0.0.1:{}", app.port()))
    );
    qp.assert_healthy();
}

/// An upgrade request with a body is served as plain HTTP/1.1 (not upgraded); one with a bad
/// `HTTP2-Settings` gets Go's empty `500`.
#[tokio::test]
async fn h2c_upgrade_edge_cases() {
    let (app, heads) = recording_app(OK).await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nhi"
            .to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nDate: *\r\n\r\nok"
    );
    assert_eq!(
        heads.lock().unwrap().as_slice(),
        ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"]
    );
    let raw = raw_exchange(
        qp.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: !!\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\nDate: *\r\n\r\n"
    );
    assert_eq!(heads.lock().unwrap().len(), 1);
    qp.assert_healthy();
}

/// At shutdown an upgraded h2c connection is drained like a prior-knowledge one: it gets GOAWAY,
/// its stream in progress completes, and the process exits 0 once it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_h2c_connection_is_drained() {
    let slow = App::start(handler(|_req| async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        respond(http::StatusCode::OK, "slow but complete")
    }))
    .await;
    let mut qp = QpConfig::new(slow.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    let mut stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /slow HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head_buffered(&mut stream, &mut buf).await.unwrap();
    assert!(status_line(&head).starts_with("HTTP/1.1 101"), "{head:?}");
    stream.write_all(&attack::client_start()).await.unwrap();
    eventually(DEADLINE, "the request at the app", || {
        std::future::ready((slow.seen_count() == 1).then_some(()))
    })
    .await;
    qp.sigterm();
    let mut reader = (&buf[..]).chain(&mut stream);
    let (frames, _) = read_frames(&mut reader, DEADLINE, |f| {
        f.kind == attack::DATA && f.stream == 1 && f.flags & attack::END_STREAM != 0
    })
    .await;
    assert!(
        frames.iter().any(|f| f.kind == attack::GOAWAY),
        "GOAWAY at shutdown: {frames:?}"
    );
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == attack::DATA && f.stream == 1)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(body, b"slow but complete");
    // h2's graceful close waits for the client's PING acknowledgement, which this raw client
    // never sends: closing the connection ends it.
    drop(reader);
    drop(stream);
    let exit = qp.wait_exit(DEADLINE).expect("exits after the drain");
    assert_eq!(exit.code(), Some(0));
}
