//! The request chain through the real binary (spec §2, §11 items 1, 2, 5, 6, 10–14, 17):
//! outbound headers, revision identification, probe answers, 502s, full duplex, websockets and
//! h2c streams with trailers through activator → queue-proxy → app.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// An app that answers `echo:<request body>` with header `x-app: yes`.
async fn body_echo_app() -> App {
    App::start(handler(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut echoed = b"echo:".to_vec();
        echoed.extend_from_slice(&body);
        let mut r = respond(StatusCode::OK, echoed);
        r.headers_mut()
            .insert("x-app", HeaderValue::from_static("yes"));
        r
    }))
    .await
}

/// An activator (autoscaler connected) whose discovery file lists revision `name` (cc 0) with the
/// app at `pod` as its only ready pod; returns once a request reaches the app.
async fn activator_for(stats: &StatsReceiver, name: &str, pod: SocketAddr) -> Activator {
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 0).ready([pod])])
        .start();
    activator.wait_healthy().await;
    activator
}

/// §11 items 1, 5, 6, 10 and §2.13: the client gets the app's status, headers and body
/// unchanged; the app sees `K-Proxy-Request: activator`, `K-Original-Host` = the original Host,
/// Host = the pod's `ip:port`, no `Knative-Serving-*` / `K-Network-Hash` / hop-by-hop headers, and
/// the client IP appended to `X-Forwarded-For`; method, path, query and body unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_request_headers_and_body() {
    let stats = StatsReceiver::start().await;
    let app = body_echo_app().await;
    let activator = activator_for(&stats, "headers-00001", app.addr).await;
    let resp = send(
        activator.addr(),
        rev_req("POST", "/some/path?q=1&r=%20x", NS, "headers-00001")
            .header("x-forwarded-for", "1.2.3.4")
            .header("k-network-hash", "secret")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("knative-serving-tag", "canary")
            .header("user-agent", "integration-test")
            .body(full("hello"))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "echo:hello");
    assert_eq!(resp.header("x-app").as_deref(), Some("yes"));

    let seen = app.only_seen();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.uri.to_string(), "/some/path?q=1&r=%20x");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("host"), Some(app.addr.to_string()));
    assert_eq!(
        seen.header("k-original-host").as_deref(),
        Some("example.com")
    );
    assert_eq!(seen.header_all("k-proxy-request"), ["activator"]);
    assert_eq!(seen.header_all("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(
        seen.header("knative-serving-tag").as_deref(),
        Some("canary")
    );
    assert_eq!(
        seen.header("user-agent").as_deref(),
        Some("integration-test")
    );
    for absent in [
        "knative-serving-namespace",
        "knative-serving-revision",
        "k-network-hash",
        "x-hop",
        "accept-encoding",
    ] {
        assert_eq!(seen.header(absent), None, "{absent} must not be forwarded");
    }
    // `Connection` may only carry keep-alive semantics, never the client's hop-by-hop list.
    assert!(!seen
        .header("connection")
        .is_some_and(|c| c.contains("x-hop")));
}

/// §11 item 11: without the revision headers the revision is identified from a
/// `<name>.<ns>.svc.cluster.local` Host, with or without a port (CLUSTER_DOMAIN=cluster.local);
/// other hosts are not identified (404 with an empty name). Also over h2c, from `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_identified_from_the_host() {
    let stats = StatsReceiver::start().await;
    let app = body_echo_app().await;
    let activator = activator_for(&stats, "byhost-00001", app.addr).await;
    for host in [
        "byhost-00001.default.svc.cluster.local",
        "byhost-00001.default.svc.cluster.local:80",
    ] {
        let resp = send(
            activator.addr(),
            Request::get("/")
                .header("host", host)
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{host}: {}", resp.text());
        let seen = app.seen().pop().unwrap();
        assert_eq!(seen.header("k-original-host").as_deref(), Some(host));
    }
    let mut h2 = h2_connect(activator.h2c_addr()).await;
    let resp = send_h2(
        &mut h2,
        Request::get("http://byhost-00001.default.svc.cluster.local:81/h2")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(app.seen().pop().unwrap().version, Version::HTTP_2);
    for host in [
        "byhost-00001.default.svc.other.domain",
        "byhost-00001.default.example.com",
        "example.com",
    ] {
        let resp = send(
            activator.addr(),
            Request::get("/")
                .header("host", host)
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{host}");
        assert_eq!(
            resp.text(),
            "Error getting active endpoint: revision.serving.knative.dev \"\" not found\n"
        );
    }
    assert_eq!(app.seen_count(), 3);
}

/// §11 item 12 and §2.16: an unknown revision named by the headers → 404 with the exact body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revision_is_404() {
    let stats = StatsReceiver::start().await;
    let app = body_echo_app().await;
    let activator = activator_for(&stats, "known-00001", app.addr).await;
    let resp = send(activator.addr(), rev_get("/", "foons", "fooname")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.text(),
        "Error getting active endpoint: revision.serving.knative.dev \"fooname\" not found\n"
    );
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    // The right name in the wrong namespace is unknown too.
    let resp = send(activator.addr(), rev_get("/", "other", "known-00001")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(app.seen_count(), 0);
}

/// §11 items 13 and 14 (§2.1–§2.3): kubelet probes are answered (not passed on); requests
/// without a probe header pass through; `K-Network-Probe: activator` → 200 `activator`; other
/// values → 400 (HTML-escaped); an empty value passes through; `probe` echoes the hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_by_the_activator() {
    let stats = StatsReceiver::start().await;
    let app = body_echo_app().await;
    let activator = activator_for(&stats, "probes-00001", app.addr).await;
    let addr = activator.addr();
    let rev = |method: &str| rev_req(method, "/healthz", NS, "probes-00001");

    // Kubelet probes (User-Agent or K-Kubelet-Probe), even with revision headers: 200, empty.
    for request in [
        rev("GET")
            .header("user-agent", "kube-probe/1.30")
            .body(empty()),
        rev("POST").header("k-kubelet-probe", "1").body(empty()),
    ] {
        let resp = send(addr, request.unwrap()).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), "");
    }
    // Activator probe.
    let resp = send(
        addr,
        rev("GET")
            .header("k-network-probe", "activator")
            .header("user-agent", "Knative-Autoscaling-Probe")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "activator");
    // Other values.
    for (value, escaped) in [
        ("queue", "queue"),
        ("not-empty", "not-empty"),
        ("<b>&'\"", "&lt;b&gt;&amp;&#39;&#34;"),
    ] {
        let resp = send(
            addr,
            rev("GET")
                .header("k-network-probe", value)
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{value}");
        assert_eq!(
            resp.text(),
            format!("unexpected probe header value: \"{escaped}\"\n")
        );
    }
    // Network probe.
    let resp = send(
        addr,
        req("GET", "/")
            .header("k-network-probe", "probe")
            .header("k-network-hash", "abc123")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("k-network-hash").as_deref(), Some("abc123"));
    assert_eq!(resp.text(), "");
    let resp = send(
        addr,
        req("GET", "/")
            .header("k-network-probe", "probe")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.text(),
        "a probe request must contain a non-empty \"K-Network-Hash\" header\n"
    );
    assert_eq!(app.seen_count(), 0, "no probe reached the app");

    // Pass-through: GET and POST without the header, a non-kubelet User-Agent, an empty value.
    for request in [
        rev("GET").body(empty()),
        rev("POST").body(full("x")),
        rev("GET").header("user-agent", "curl/8.0").body(empty()),
        rev("GET").header("k-network-probe", "").body(empty()),
    ] {
        let resp = send(addr, request.unwrap()).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.header("x-app").as_deref(), Some("yes"));
    }
    assert_eq!(app.seen_count(), 4);
}

/// §11 item 2 and §2.14: a pod that was probed healthy but now refuses connections → 502 with
/// body `dial tcp <ip:port>: connect: connection refused\n`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502_dial_tcp() {
    let stats = StatsReceiver::start().await;
    let mut pod = Pod::start(body_echo_app().await, "refused-00001", 0).await;
    let activator = activator_for(&stats, "refused-00001", pod.addr()).await;
    let addr = activator.addr();
    eventually(DEADLINE, "a request through the pod", || async move {
        let r = send(addr, rev_get("/", NS, "refused-00001")).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    pod.qp.kill();
    let expected = format!("dial tcp {}: connect: connection refused\n", pod.addr());
    for i in 0..3 {
        let resp = send(addr, rev_get("/", NS, "refused-00001")).await;
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "request {i}");
        assert_eq!(resp.text(), expected, "request {i}");
        assert!(resp
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")));
    }
}

/// §11 item 17 (§2.6), scaled down: 5 rounds × 4 concurrent clients × 20 POSTs of 32 KiB on
/// keep-alive connections, echoed (full duplex) through activator → queue-proxy → app; every
/// body comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_echo_through_the_chain() {
    const ROUNDS: usize = 5;
    const CLIENTS: usize = 4;
    const POSTS: usize = 20;
    const SIZE: usize = 32 * 1024;
    let stats = StatsReceiver::start().await;
    let pod = Pod::start(echo_app().await, "duplex-00001", 0).await;
    let activator = activator_for(&stats, "duplex-00001", pod.addr()).await;
    let addr = activator.addr();
    let start = std::time::Instant::now();
    for round in 0..ROUNDS {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(async move {
                    let mut sender = h1_connect(addr).await.expect("connect");
                    for post in 0..POSTS {
                        let seed = (round * CLIENTS + client) * POSTS + post;
                        let body: Bytes = (0..SIZE)
                            .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
                            .collect::<Vec<u8>>()
                            .into();
                        let request = rev_req("POST", "/echo", NS, "duplex-00001")
                            .body(full(body.clone()))
                            .unwrap();
                        sender.ready().await.expect("connection usable");
                        let resp = tokio::time::timeout(EXCHANGE_LIMIT, async {
                            collect(sender.send_request(request).await?).await
                        })
                        .await
                        .expect("exchange in time")
                        .expect("exchange");
                        assert_eq!(resp.status, StatusCode::OK);
                        assert!(resp.body == body, "body {seed} corrupted");
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client");
        }
    }
    println!(
        "full duplex: {} POSTs of 32 KiB in {:?}",
        ROUNDS * CLIENTS * POSTS,
        start.elapsed()
    );
    assert_eq!(pod.app.seen_count(), ROUNDS * CLIENTS * POSTS);
}

/// §2.15: a websocket session through activator → queue-proxy → app echoes messages both ways
/// and closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_chain() {
    let stats = StatsReceiver::start().await;
    let ws_app = raw_app(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return; // e.g. the queue-proxy's TCP readiness probe
        };
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    })
    .await;
    let app_port = ws_app.port();
    let qp = tokio::task::spawn_blocking(move || QueueProxy::start(app_port, "ws-00001", 0))
        .await
        .unwrap();
    let activator = activator_for(&stats, "ws-00001", qp.addr()).await;

    let mut request = format!("ws://{}/ws", activator.addr())
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("knative-serving-namespace", HeaderValue::from_static(NS));
    headers.insert(
        "knative-serving-revision",
        HeaderValue::from_static("ws-00001"),
    );
    let stream = tokio::net::TcpStream::connect(activator.addr())
        .await
        .unwrap();
    let (mut ws, response) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("handshake in time")
            .expect("websocket handshake through activator and queue-proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::Text(text.clone())).await.unwrap();
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(got)))) => assert_eq!(got, text),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Binary(got)))) => assert_eq!(got, vec![0, 1, 2, 255]),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).await.unwrap();
    drop(qp);
}

/// An app that echoes every request body frame at once as `echo:<data>` and ends with
/// gRPC-style trailers (`grpc-status: 0`, `grpc-message: done`).
async fn grpc_echo_app() -> App {
    App::start(handler(|req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.frame().await {
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
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        response
    }))
    .await
}

/// §2.13/§2.14: a gRPC-style bidirectional h2c stream through activator (h2c port) →
/// queue-proxy → app: each chunk's echo arrives before the next chunk is sent, and the trailers
/// reach the client; the app sees HTTP/2 with `te: trailers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_stream_with_trailers_through_the_chain() {
    let stats = StatsReceiver::start().await;
    let pod = Pod::start(grpc_echo_app().await, "grpc-00001", 0).await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("grpc-00001", 0).h2c().ready([pod.addr()])])
        .start();
    activator.wait_healthy().await;

    for target in [activator.h2c_addr(), activator.addr()] {
        let mut h2 = h2_connect(target).await;
        let (tx, body) = channel_body();
        let request = Request::post(format!("http://{target}/pkg.Service/Chat"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("knative-serving-namespace", NS)
            .header("knative-serving-revision", "grpc-00001")
            .body(body.boxed())
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, h2.send_request(request))
            .await
            .expect("response head before the request body ends")
            .expect("h2 response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let mut body = response.into_body();
        let mut tx = Some(tx);
        for i in 0..5 {
            let chunk = format!("message-{i}");
            tx.as_ref()
                .unwrap()
                .send(Frame::data(Bytes::from(chunk.clone())))
                .await
                .expect("request body open");
            let frame = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .unwrap_or_else(|_| panic!("echo of chunk {i} did not arrive"))
                .expect("response body open")
                .expect("response frame");
            assert_eq!(
                frame.into_data().expect("data frame"),
                Bytes::from(format!("echo:{chunk}"))
            );
        }
        tx.take();
        let mut trailers = None;
        while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("response ends")
        {
            match frame.expect("response frame").into_trailers() {
                Ok(t) => trailers = Some(t),
                Err(frame) => panic!("unexpected data after the last echo: {frame:?}"),
            }
        }
        let trailers = trailers.expect("trailers relayed");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "done");
        let seen = pod.app.seen().pop().unwrap();
        assert_eq!(seen.version, Version::HTTP_2);
        assert_eq!(seen.header("te").as_deref(), Some("trailers"));
    }
    assert_eq!(pod.app.seen_count(), 2);
    tokio::time::sleep(Duration::ZERO).await;
}
