//! What the user container receives and what the client gets back (spec §3.7 forwarded shim,
//! §3.8 host rewrite, §3.9 header table and response handling; checklist H3, F1–F11, the
//! `pkg/http/proxy_test.go` items) plus the autoscaler stats for proxied requests (§6, I2, I3).

mod support;

use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;

/// Sends `request` through a fresh queue-proxy in front of an `ok` app and returns the head the
/// app saw.
async fn seen_by_app(request: http::Request<TestBody>) -> Seen {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = send(qp.addr(), request).await;
    assert_eq!(resp.status, StatusCode::OK);
    qp.assert_healthy();
    app.only_seen()
}

/// H3 and the §3.9 request table in one request.
#[tokio::test]
async fn request_headers_are_rewritten_per_the_table() {
    let seen = seen_by_app(
        http::Request::get("/path")
            .header("host", "nimporte.pas")
            .header("k-original-host", "a-better-host.com")
            .header("k-proxy-request", "activator")
            .header("knative-serving-revision", "rev")
            .header("knative-serving-namespace", "ns")
            .header("connection", "keep-alive, x-drop-me")
            .header("x-drop-me", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers")
            .header("user-agent", "my-agent/1.0")
            .header("knative-serving-tag", "tag")
            .header("knative-serving-default-route", "true")
            .header("k-passthrough-lb", "true")
            .header("x-forwarded-proto", "https")
            .header("x-custom", "kept")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("host").as_deref(), Some("a-better-host.com"));
    for gone in [
        "k-original-host",
        "knative-serving-revision",
        "knative-serving-namespace",
        "connection",
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(seen.header(gone).is_none(), "{gone} must be removed: {seen:#?}");
    }
    assert_eq!(seen.header("te").as_deref(), Some("trailers"));
    assert_eq!(seen.header("user-agent").as_deref(), Some("my-agent/1.0"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    for (name, value) in [
        ("k-proxy-request", "activator"),
        ("knative-serving-tag", "tag"),
        ("knative-serving-default-route", "true"),
        ("k-passthrough-lb", "true"),
        ("x-forwarded-proto", "https"),
        ("x-custom", "kept"),
    ] {
        assert_eq!(seen.header(name).as_deref(), Some(value), "{name}");
    }
    // XFP alone synthesizes `Forwarded` (F7).
    assert_eq!(seen.header("forwarded").as_deref(), Some("proto=https"));
    assert_eq!(seen.path_and_query(), "/path");
    assert_eq!(seen.version, http::Version::HTTP_11);
}

/// Without `K-Original-Host` the inbound Host is forwarded (not the target address), and
/// `Te` values other than `trailers` are dropped.
#[tokio::test]
async fn host_is_kept_and_te_without_trailers_dropped() {
    let seen = seen_by_app(
        http::Request::get("/")
            .header("host", "example.com")
            .header("te", "gzip")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("host").as_deref(), Some("example.com"));
    assert!(seen.header("te").is_none(), "{seen:#?}");
    // An empty K-Original-Host is no rewrite.
    let seen = seen_by_app(
        http::Request::get("/")
            .header("host", "example.com")
            .header("k-original-host", "")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("host").as_deref(), Some("example.com"));
}

/// X-Forwarded-For: every inbound value joined, then the peer IP appended; F1: `Forwarded`
/// synthesized from the *inbound* XFF/XFH/XFP (without the peer).
#[tokio::test]
async fn forwarded_for_is_appended_and_forwarded_synthesized() {
    let seen = seen_by_app(
        req("GET", "/")
            .header("x-forwarded-for", "127.0.0.1, ::1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-host", "h")
            .header("x-forwarded-proto", "p")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1, ::1, 10.0.0.1, 127.0.0.1")
    );
    assert_eq!(
        seen.header("forwarded").as_deref(),
        Some("for=127.0.0.1;host=h;proto=p, for=\"[::1]\"")
    );
    assert_eq!(seen.header("x-forwarded-host").as_deref(), Some("h"));
}

/// F10/F11: an existing `Forwarded` is untouched; no X-Forwarded-* → no `Forwarded`.
#[tokio::test]
async fn existing_forwarded_is_kept_and_none_is_added_without_xff() {
    let seen = seen_by_app(
        req("GET", "/")
            .header("forwarded", "for=a, for=b")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-host", "h")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("forwarded").as_deref(), Some("for=a, for=b"));
    let seen = seen_by_app(get_req("/")).await;
    assert!(seen.header("forwarded").is_none(), "{seen:#?}");
    // No User-Agent is added when the client sent none.
    assert!(seen.header("user-agent").is_none(), "{seen:#?}");
}

/// The raw query goes upstream untouched, even with `;` and an invalid `%` escape.
#[tokio::test]
async fn raw_query_passes_untouched() {
    let seen = seen_by_app(get_req("/p/a%2Fb?a=1;b=%zz&c&d=%41")).await;
    assert_eq!(seen.path_and_query(), "/p/a%2Fb?a=1;b=%zz&c&d=%41");
}

/// Header names reach an HTTP/1 app in canonical Title-Case (Go writes them that way), checked
/// on the raw bytes the app receives.
#[tokio::test]
async fn header_names_reach_http1_app_in_title_case() {
    let heads: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let recorded = heads.clone();
    let app = raw_app(move |mut stream| {
        let recorded = recorded.clone();
        async move {
            while let Some(head) = read_head(&mut stream).await {
                recorded.lock().unwrap().push(head);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = send(
        qp.addr(),
        req("GET", "/")
            .header("x-custom-header", "v")
            .header("user-agent", "ua")
            .header("k-proxy-request", "activator")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    let head = String::from_utf8(heads.lock().unwrap()[0].clone()).unwrap();
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    for line in [
        "\r\nHost: example.com\r\n",
        "\r\nX-Custom-Header: v\r\n",
        "\r\nUser-Agent: ua\r\n",
        "\r\nK-Proxy-Request: activator\r\n",
        "\r\nX-Forwarded-For: 127.0.0.1\r\n",
    ] {
        assert!(head.contains(line), "missing {line:?} in:\n{head}");
    }
    qp.assert_healthy();
}

/// Hop-by-hop response headers (and those named in the response's `Connection`) are removed;
/// everything else, including unknown headers, is relayed.
#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let app = raw_app(|mut stream| async move {
        while read_head(&mut stream).await.is_some() {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\n\
                      Connection: X-Resp-Drop\r\n\
                      X-Resp-Drop: 1\r\n\
                      Keep-Alive: timeout=5\r\n\
                      Proxy-Connection: keep-alive\r\n\
                      Proxy-Authenticate: Basic\r\n\
                      Te: trailers\r\n\
                      Upgrade: foo\r\n\
                      X-Kept: yes\r\n\
                      Content-Type: text/plain\r\n\
                      Content-Length: 2\r\n\r\nok",
                )
                .await;
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    for gone in [
        "connection",
        "x-resp-drop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "upgrade",
    ] {
        assert!(resp.header(gone).is_none(), "{gone} must be removed: {resp:#?}");
    }
    assert_eq!(resp.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(resp.header("content-length").as_deref(), Some("2"));
    qp.assert_healthy();
}

/// Status, headers and body of the app's response are relayed as they are; QP adds no
/// Knative headers.
#[tokio::test]
async fn response_is_relayed() {
    let app = App::start(handler(|_| async {
        let mut r = respond(StatusCode::IM_A_TEAPOT, "short and stout");
        r.headers_mut()
            .insert("x-app", http::HeaderValue::from_static("1"));
        r
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!(resp.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(resp.text(), "short and stout");
    assert_eq!(resp.header("x-app").as_deref(), Some("1"));
    assert!(
        resp.headers
            .keys()
            .all(|k| !k.as_str().starts_with("knative-") && !k.as_str().starts_with("k-")),
        "{resp:#?}"
    );
    qp.assert_healthy();
}

/// H3 stats half and I2/I3: a request with `K-Proxy-Request: activator` shows up as
/// `proxied_request_count` in the protobuf `metrics.Stat` on the stats port within a report
/// period or two; health checks and network probes sent alongside are never counted.
#[tokio::test]
async fn proxied_request_is_counted_in_the_stats() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();

    // Before anything happened the stat only names the pod.
    let stat = scrape(qp.stats_addr()).await;
    assert_eq!(stat.pod_name, "rev-00001-deployment-abc");

    for _ in 0..3 {
        assert_eq!(health_check(qp.addr()).await.status, StatusCode::OK);
    }
    let probe = send(
        qp.addr(),
        req("GET", "/")
            .header("k-network-probe", "probe")
            .header("k-network-hash", "abc")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(probe.status, StatusCode::OK);
    let resp = send(
        qp.addr(),
        req("GET", "/")
            .header("host", "nimporte.pas")
            .header("k-original-host", "a-better-host.com")
            .header("k-proxy-request", "activator")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    let stats = qp.stats_addr();
    let stat = eventually(DEADLINE, "a report with the proxied request", || async move {
        let stat = scrape(stats).await;
        (stat.request_count > 0.0).then_some(stat)
    })
    .await;
    assert_eq!(stat.pod_name, "rev-00001-deployment-abc");
    assert_eq!(stat.proxied_request_count, 1.0, "{stat:?}");
    assert_eq!(stat.request_count, 1.0, "probes are not counted: {stat:?}");
    assert!(stat.process_uptime > 0.0, "{stat:?}");
    assert_eq!(stat.timestamp, 0);
    assert_eq!(
        app.only_seen().header("host").as_deref(),
        Some("a-better-host.com")
    );
    qp.assert_healthy();
}

/// S1/I3: `/metrics` answers protobuf whatever the `Accept` header, repeatedly on one keep-alive
/// connection; other paths are `404 page not found`.
#[tokio::test]
async fn metrics_endpoint_serves_protobuf_on_keep_alive() {
    use prost::Message;
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let stream = tokio::net::TcpStream::connect(qp.stats_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        stream,
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    for accept in [
        None,
        Some("something-else"),
        Some("application/protobuf"),
        Some("something/else, application/protobuf"),
    ] {
        let mut builder = req("GET", "/metrics");
        if let Some(a) = accept {
            builder = builder.header("accept", a);
        }
        let resp = collect(sender.send_request(builder.body(empty()).unwrap()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/protobuf")
        );
        let stat = Stat::decode(resp.body).unwrap();
        assert_eq!(stat.pod_name, "rev-00001-deployment-abc");
    }
    let resp = get(qp.stats_addr(), "/other").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.text(), "404 page not found\n");
    qp.assert_healthy();
}
