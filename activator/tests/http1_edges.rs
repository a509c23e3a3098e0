//! HTTP/1 edge cases through the real activator, answered as upstream's Go activator answers
//! them (README "HTTP/1 edge cases"), checked on the exact bytes the pod and the client receive.

mod support;

use std::net::SocketAddr;

use support::*;
use test_support::attack::{self, read_frames};
use test_support::edges::{mask_date, recording_pod, GO_BAD_REQUEST, GO_MISSING_HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const REV: &str = "edge-00001";
const REV_HEADERS: &str =
    "Knative-Serving-Namespace: default\r\nKnative-Serving-Revision: edge-00001\r\n";

/// An activator routing revision `edge-00001` (cc 0) to `pod`, healthy.
async fn activator_for(stats: &StatsReceiver, pod: SocketAddr) -> Activator {
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(REV, 0).ready([pod])])
        .start();
    activator.wait_healthy().await;
    activator
}

fn request(line: &str, extra: &str) -> Vec<u8> {
    format!("{line}\r\n{REV_HEADERS}{extra}\r\n").into_bytes()
}

/// HTTP/1.0 without `Host` is served (the pod gets `Host` = its address); HTTP/1.1 without
/// `Host` gets Go's `400` and the close; an absolute-form target's authority is the original
/// host. The pod's probes and the proxied requests are written in canonical case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_and_header_case() {
    let stats = StatsReceiver::start().await;
    let (pod, heads, probes) = recording_pod(OK).await;
    let mut activator = activator_for(&stats, pod).await;

    let raw = raw_exchange(activator.addr(), request("GET /old HTTP/1.0", ""), DEADLINE).await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nDate: *\r\n\r\nok"
    );
    let raw = raw_exchange(
        activator.addr(),
        request("GET /new HTTP/1.1", "Connection: close\r\n"),
        DEADLINE,
    )
    .await;
    assert_eq!(raw, GO_MISSING_HOST);
    let raw = raw_exchange(
        activator.addr(),
        request(
            "GET http://other.example/abs?q=1 HTTP/1.1",
            "Host: x\r\nConnection: close\r\n",
        ),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nDate: *\r\n\r\nok"
    );
    assert_eq!(
        heads.lock().unwrap().as_slice(),
        [
            format!(
                "GET /old HTTP/1.1\r\nX-Forwarded-For: 127.0.0.1\r\n\
                 K-Proxy-Request: activator\r\nHost: {pod}\r\n\r\n"
            ),
            format!(
                "GET /abs?q=1 HTTP/1.1\r\nHost: {pod}\r\nX-Forwarded-For: 127.0.0.1\r\n\
                 K-Original-Host: other.example\r\nK-Proxy-Request: activator\r\n\r\n"
            ),
        ]
    );
    let probe = probes.lock().unwrap()[0].clone();
    assert!(
        probe.starts_with(&format!(
            "GET /healthz HTTP/1.1\r\nHost: {pod}\r\nK-Network-Probe: queue\r\nUser-Agent: "
        )),
        "{probe}"
    );
    activator.assert_healthy();
}

/// `CONNECT` gets upstream's `502` with its length and the close, and never reaches the pod;
/// malformed requests get Go's `400` byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_malformed_requests() {
    let stats = StatsReceiver::start().await;
    let (pod, heads, _) = recording_pod(OK).await;
    let mut activator = activator_for(&stats, pod).await;
    let raw = raw_exchange(
        activator.addr(),
        request(
            "CONNECT other.example:443 HTTP/1.1",
            "Host: other.example:443\r\n",
        ),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 40\r\n\
         Date: *\r\n\r\nclient sent unsupported CONNECT request\n"
    );
    for bad in [
        request("GET / HTTP/1.1", "Host: a\r\nX Bad: 1\r\n"),
        request("GET / HTTP/1.1", "Host: a\r\nContent-Length: x\r\n"),
    ] {
        let raw = raw_exchange(activator.addr(), bad, DEADLINE).await;
        assert_eq!(raw, GO_BAD_REQUEST);
    }
    assert!(heads.lock().unwrap().is_empty());
    activator.assert_healthy();
}

/// Response header names and trailers in canonical case; a 502 (the pod closes without
/// answering) with `Content-Length`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_case_and_error_framing() {
    let stats = StatsReceiver::start().await;
    let (pod, _, _) = recording_pod(
        b"HTTP/1.1 200 OK\r\nx-custom-thing: v\r\ntrailer: x-trail\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\nx-trail: t\r\n\r\n",
    )
    .await;
    let mut activator = activator_for(&stats, pod).await;
    let raw = raw_exchange(
        activator.addr(),
        request(
            "GET / HTTP/1.1",
            "Host: a\r\nTE: trailers\r\nConnection: close\r\n",
        ),
        DEADLINE,
    )
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 200 OK\r\nX-Custom-Thing: v\r\nTrailer: x-trail\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\
         Date: *\r\n\r\n2\r\nok\r\n0\r\nX-Trail: t\r\n\r\n"
    );

    // A pod that passes its probe, then drops every request unanswered.
    let dropping = raw_app(|mut stream| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head_buffered(&mut stream, &mut buf).await {
            if !String::from_utf8_lossy(&head).contains("K-Network-Probe: queue") {
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    activator.set_revisions(&[Rev::new(REV, 0).ready([dropping])]);
    let raw = eventually(DEADLINE, "a 502 from the dropping pod", || {
        let addr = activator.addr();
        async move {
            let raw = raw_exchange(
                addr,
                request("GET / HTTP/1.1", "Host: a\r\nConnection: close\r\n"),
                DEADLINE,
            )
            .await;
            status_line(&raw).contains("502").then_some(raw)
        }
    })
    .await;
    assert_eq!(
        mask_date(&raw),
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 4\r\n\
         Date: *\r\n\r\nEOF\n"
    );
    activator.assert_healthy();
}

/// The h2c upgrade on the activator's port: `101`, then the request is stream 1 of an HTTP/2
/// connection, proxied to the pod over h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade() {
    let stats = StatsReceiver::start().await;
    let app = App::start(handler(|req| async move {
        respond(
            http::StatusCode::OK,
            format!("{:?} {}", req.version(), req.uri().path()),
        )
    }))
    .await;
    let mut activator = activator_for(&stats, app.addr).await;
    let mut stream = tokio::net::TcpStream::connect(activator.addr())
        .await
        .unwrap();
    stream
        .write_all(&request(
            "GET /up HTTP/1.1",
            "Host: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        ))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head_buffered(&mut stream, &mut buf).await.unwrap();
    assert_eq!(
        mask_date(&head),
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nDate: *\r\n\r\n"
    );
    stream.write_all(&attack::client_start()).await.unwrap();
    let mut reader = (&buf[..]).chain(&mut stream);
    let (frames, _) = read_frames(&mut reader, DEADLINE, |f| {
        f.kind == attack::DATA && f.stream == 1 && f.flags & attack::END_STREAM != 0
    })
    .await;
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == attack::DATA && f.stream == 1)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), "HTTP/2.0 /up", "{frames:?}");
    let seen = app.only_seen();
    assert_eq!(
        seen.header("k-original-host").as_deref(),
        Some("example.com")
    );
    activator.assert_healthy();
}

/// 1xx informational responses from the pod are relayed as upstream's Go activator relays them
/// (its proxy's `Got1xxResponse`): a `103` reaches the client while the pod still works on the
/// final response, several in a row keep their order, pipelined requests keep theirs in place,
/// and with `Expect: 100-continue` the client gets exactly one `100 Continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_relayed() {
    use std::sync::Arc;
    use std::time::Duration;
    use test_support::edges::{hinting_pod, read_at_least};
    const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
                             link: </a.css>; rel=preload\r\ncontent-length: 0\r\n\r\n\
                             HTTP/1.1 102 Processing\r\n\r\n";
    const GO_INTERIM: &str = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
                              Link: </a.css>; rel=preload\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n";
    const GO_OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: *\r\n\r\nok";
    let stats = StatsReceiver::start().await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let pod = hinting_pod(INTERIM, OK, Some(release.clone())).await;
    let mut activator = activator_for(&stats, pod).await;

    // Expect: 100-continue, the pod's 100 and hints come before the body is sent.
    let mut stream = tokio::net::TcpStream::connect(activator.addr())
        .await
        .unwrap();
    stream
        .write_all(&request(
            "POST /upload HTTP/1.1",
            "Host: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n",
        ))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = read_at_least(&mut stream, &mut buf, GO_INTERIM.len(), DEADLINE).await;
    assert_eq!(String::from_utf8_lossy(&early), GO_INTERIM);
    stream.write_all(b"hello").await.unwrap();
    release.add_permits(1);
    let all = read_at_least(
        &mut stream,
        &mut buf,
        GO_INTERIM.len() + GO_OK.len(),
        DEADLINE,
    )
    .await;
    assert_eq!(mask_date(&all), format!("{GO_INTERIM}{GO_OK}"));
    let more = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut [0u8; 64])).await;
    assert!(
        more.is_err(),
        "unexpected bytes after the response: {more:?}"
    );

    // Pipelined GETs (no Expect: the pod's own 100 is relayed too, as Go relays any 1xx).
    release.add_permits(2);
    let raw = raw_exchange(
        activator.addr(),
        [
            request("GET /1 HTTP/1.1", "Host: a\r\n"),
            request("GET /2 HTTP/1.1", "Host: a\r\nConnection: close\r\n"),
        ]
        .concat(),
        DEADLINE,
    )
    .await;
    let last = GO_OK.replace("Date", "Connection: close\r\nDate");
    assert_eq!(
        mask_date(&raw),
        format!("{GO_INTERIM}{GO_OK}{GO_INTERIM}{last}")
    );
    activator.assert_healthy();
}

/// On HTTP/2 end to end (h2c client → activator → queue-proxy → h2c app, the protocol mirrored
/// at each hop), the app's 1xx reach the client: HEADERS frames of their own on the stream,
/// each sent while the app still holds its final response, in order, fields as the app sent
/// them less `Content-Length` (Go's proxy drops it from 1xx), at most one `100 Continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_reach_h2_clients() {
    use std::sync::Arc;
    use test_support::edges::{assert_h2_hints_relayed, h2_hinting_app, H2Exchange};
    const H2_REV: &str = "hints-00001";
    let stats = StatsReceiver::start().await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = h2_hinting_app(release.clone()).await;
    let mut qp =
        tokio::task::spawn_blocking(move || QueueProxy::start_with_env(app.port(), H2_REV, 0, &[]))
            .await
            .unwrap();
    let mut activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(H2_REV, 0).h2c().ready([qp.addr()])])
        .start();
    activator.wait_healthy().await;
    let request = http::Request::get(format!("http://{}/hints", activator.h2c_addr()))
        .header("knative-serving-namespace", "default")
        .header("knative-serving-revision", H2_REV)
        .body(())
        .unwrap();
    let exchange = H2Exchange::start(activator.h2c_addr(), request, b"").await;
    assert_h2_hints_relayed(exchange, &release, DEADLINE).await;
    activator.assert_healthy();
    qp.assert_healthy();
}
