//! What the user container receives and what the client gets back (spec §3.7 forwarded shim,
//! §3.8 host rewrite, §3.9 header table and response handling; checklist H3, F1–F11 and the
//! `pkg/http/proxy_test.go` items).

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
        assert!(
            seen.header(gone).is_none(),
            "{gone} must be removed: {seen:#?}"
        );
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
        assert!(
            resp.header(gone).is_none(),
            "{gone} must be removed: {resp:#?}"
        );
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

/// Apps may send many response headers (e.g. a pile of `Set-Cookie`); Go's transport has no
/// per-field count limit, only a size limit, so 300 fields are relayed.
#[tokio::test]
async fn many_response_headers_are_relayed() {
    let app = raw_app(|mut stream| async move {
        while read_head(&mut stream).await.is_some() {
            let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..300 {
                reply.extend_from_slice(format!("Set-Cookie: c{i}=v{i}\r\n").as_bytes());
            }
            reply.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            let _ = stream.write_all(&reply).await;
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let resp = get(qp.addr(), "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 300);
    qp.assert_healthy();
}

/// Paths go upstream as received: double slashes and encoded bytes are not normalised, and an
/// absolute-form request target becomes origin-form with its authority as `Host`.
#[tokio::test]
async fn request_targets_pass_unnormalised() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    for (sent, expected) in [
        ("//double//slash/", "//double//slash/"),
        ("/a/../b/./c", "/a/../b/./c"),
        ("/%7Euser/%2e%2E/x", "/%7Euser/%2e%2E/x"),
    ] {
        let raw = raw_exchange(
            qp.addr(),
            format!("GET {sent} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
                .into_bytes(),
            DEADLINE,
        )
        .await;
        assert!(
            status_line(&raw).contains(" 200 "),
            "{sent}: {}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(app.seen().last().unwrap().path_and_query(), expected);
    }
    let raw = raw_exchange(
        qp.addr(),
        b"GET http://absolute.example/x?y=1 HTTP/1.1\r\nHost: absolute.example\r\nConnection: close\r\n\r\n"
            .to_vec(),
        DEADLINE,
    )
    .await;
    assert!(
        status_line(&raw).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let seen = app.seen().last().unwrap().clone();
    assert_eq!(seen.uri.to_string(), "/x?y=1");
    assert_eq!(seen.header("host").as_deref(), Some("absolute.example"));
    qp.assert_healthy();
}
