//! Tests for the readiness prober: spec §10.10 (HP*), §10.11 (E*), §10.12 (RP*) and bad input.
//!
//! Every test talks to real servers on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::{self, Handler, HttpAction, ProbeSpec};
use super::grpc::{self, HealthCheckRequest, HealthCheckResponse, HEALTH_CHECK_PATH};
use super::http::{self as probe_http, Target};
use super::net::tcp_attempt;
use super::run::ErrorSink;
use super::tls::{client_config_with_roots, TlsClient};
use super::{AggressiveTimings, ProbeConfigError, Readiness};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type HandlerFn = dyn Fn(usize, Request<Incoming>) -> BoxFuture<Response<Body>> + Send + Sync;

const CA_DER: &[u8] = include_bytes!("testdata/ca.der");
const LEAF_DER: &[u8] = include_bytes!("testdata/leaf.der");
const LEAF_KEY_DER: &[u8] = include_bytes!("testdata/leaf.key.der");

impl Readiness {
    /// Sends run errors to a buffer instead of standard error.
    fn capture_errors(&mut self) -> Arc<Mutex<Vec<String>>> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.errors = ErrorSink::Capture(Arc::clone(&lines));
        lines
    }

    fn leak(self) -> &'static Readiness {
        Box::leak(Box::new(self))
    }

    fn successes(&self, index: usize) -> u64 {
        self.probes[index].successes.load(Ordering::SeqCst)
    }
}

fn lines(captured: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    captured.lock().unwrap().clone()
}

fn timings(window: Duration) -> AggressiveTimings {
    AggressiveTimings {
        window,
        ..AggressiveTimings::default()
    }
}

/// A readiness prober with captured error output.
fn prober(
    json: &str,
    multi: bool,
    window: Duration,
) -> (&'static Readiness, Arc<Mutex<Vec<String>>>) {
    let mut readiness =
        Readiness::from_env_with_timings(json, multi, false, timings(window)).expect("valid probe");
    let captured = readiness.capture_errors();
    (readiness.leak(), captured)
}

fn http_probe_json(port: u16, period: i32, extra: &str) -> String {
    format!(
        r#"{{"httpGet":{{"host":"127.0.0.1","port":{port},"path":"/health","scheme":"HTTP"{extra}}},"periodSeconds":{period},"timeoutSeconds":1,"successThreshold":1}}"#
    )
}

fn tcp_probe_json(port: u16, period: i32, threshold: i32) -> String {
    format!(
        r#"{{"tcpSocket":{{"host":"127.0.0.1","port":{port}}},"periodSeconds":{period},"timeoutSeconds":1,"successThreshold":{threshold}}}"#
    )
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[derive(Clone, Copy, Debug)]
enum Serve {
    Http1,
    H2c,
    /// Either, detected from the connection preface.
    Auto,
}

/// What a test server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

/// A hyper server on `127.0.0.1:0`; dropping it closes the listener.
struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: JoinHandle<()>,
}

impl TestServer {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Closes the listener and waits until it is gone.
    async fn close(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_with(
    mode: Serve,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Arc<HandlerFn>,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let seen_in_server = Arc::clone(&seen);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            let seen = Arc::clone(&seen_in_server);
            let counter = Arc::clone(&counter);
            let service = service_fn(move |request: Request<Incoming>| {
                seen.lock().unwrap().push(Seen {
                    version: request.version(),
                    path: request.uri().path().to_owned(),
                    query: request.uri().query().map(str::to_owned),
                    headers: request.headers().clone(),
                });
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let response = handler(index, request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Some(acceptor) = tls {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    return;
                }
                let io = TokioIo::new(stream);
                let _ = match mode {
                    Serve::Http1 => hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                        .map_err(|_| ()),
                    Serve::H2c => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                        .map_err(|_| ()),
                    Serve::Auto => {
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                            .map_err(|_| ())
                    }
                };
            });
        }
    });
    TestServer { port, seen, accept }
}

/// What a simple server answers.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    delay: Duration,
    location: Option<String>,
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        delay: Duration::ZERO,
        location: None,
    }
}

fn delayed(status: u16, delay: Duration) -> Reply {
    Reply {
        status,
        delay,
        location: None,
    }
}

fn redirect(code: u16, location: &str) -> Reply {
    Reply {
        status: code,
        delay: Duration::ZERO,
        location: Some(location.to_owned()),
    }
}

/// A server whose reply depends on the request index (0-based) and HTTP version.
async fn serve<F>(mode: Serve, reply: F) -> TestServer
where
    F: Fn(usize, Version) -> Reply + Send + Sync + 'static,
{
    serve_with(mode, None, simple_handler(reply)).await
}

fn simple_handler<F>(reply: F) -> Arc<HandlerFn>
where
    F: Fn(usize, Version) -> Reply + Send + Sync + 'static,
{
    Arc::new(move |index, request: Request<Incoming>| {
        let reply = reply(index, request.version());
        Box::pin(async move {
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"body")).boxed());
            *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
            if let Some(location) = reply.location {
                response.headers_mut().insert(
                    http::header::LOCATION,
                    HeaderValue::from_str(&location).unwrap(),
                );
            }
            response
        })
    })
}

async fn always(code: u16) -> TestServer {
    serve(Serve::Http1, move |_, _| status(code)).await
}

fn action(port: u16, path: &str) -> HttpAction {
    HttpAction {
        scheme: "http".to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        path: path.to_owned(),
        headers: Vec::new(),
    }
}

async fn http_attempt(
    action: &HttpAction,
    autodetect: bool,
    timeout: Duration,
) -> Result<(), String> {
    probe_http::attempt(action, autodetect, timeout, &TlsClient::default()).await
}

const SECOND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// §10.11 encoding (E*), RP1 and bad input
// ---------------------------------------------------------------------------------------------

fn tcp_spec(port: u16) -> ProbeSpec {
    ProbeSpec {
        handler: Handler::Tcp {
            host: "127.0.0.1".to_owned(),
            port,
        },
        timeout_seconds: 0,
        period_seconds: 0,
        success_threshold: 1,
    }
}

#[test]
fn e1_single_probe_decodes_to_one_identical_probe() {
    let json = r#"{"tcpSocket":{"port":"8080","host":"127.0.0.1"},"successThreshold":1,"failureThreshold":3,"periodSeconds":2,"timeoutSeconds":4,"initialDelaySeconds":5}"#;
    let probes = config::decode(json, false).unwrap();
    let expected = ProbeSpec {
        timeout_seconds: 4,
        period_seconds: 2,
        ..tcp_spec(8080)
    };
    assert_eq!(probes, vec![expected]);
}

#[test]
fn e2_array_decodes_both_probes_in_order() {
    let json = r#"[{"tcpSocket":{"port":"8080","host":"127.0.0.1"},"successThreshold":1},{"tcpSocket":{"port":"8090","host":"127.0.0.1"},"successThreshold":1}]"#;
    let probes = config::decode(json, true).unwrap();
    assert_eq!(probes, vec![tcp_spec(8080), tcp_spec(8090)]);
}

#[test]
fn e3_json_string_is_a_decode_error() {
    for multi in [false, true] {
        let error = Readiness::from_env(r#""wrongProbeObject""#, multi, false)
            .err()
            .expect("a string is not a probe");
        assert!(matches!(error, ProbeConfigError::Json { .. }), "{error:?}");
        assert!(
            error.to_string().contains("SERVING_READINESS_PROBE"),
            "{error}"
        );
    }
}

#[test]
fn e4_controller_encodings_decode() {
    let one = r#"{"tcpSocket":{"port":"8080","host":"127.0.0.1"},"successThreshold":1}"#;
    assert_eq!(config::decode(one, false).unwrap(), vec![tcp_spec(8080)]);
    let two = format!("[{one},{one}]");
    assert_eq!(
        config::decode(&two, true).unwrap(),
        vec![tcp_spec(8080), tcp_spec(8080)]
    );
}

#[test]
fn rp1_construction_keeps_definition_and_counter_starts_at_zero() {
    let json = r#"{"httpGet":{"path":"/health","port":12345,"host":"127.0.0.1","scheme":"HTTPS","httpHeaders":[{"name":"Testkey","value":"Testval"}]},"timeoutSeconds":10,"periodSeconds":2}"#;
    let readiness = Readiness::from_env(json, false, false).unwrap();
    assert_eq!(readiness.probes.len(), 1);
    assert_eq!(
        readiness.probes[0].spec,
        ProbeSpec {
            handler: Handler::Http(HttpAction {
                scheme: "https".to_owned(),
                host: "127.0.0.1".to_owned(),
                port: 12345,
                path: "/health".to_owned(),
                headers: vec![("Testkey".to_owned(), "Testval".to_owned())],
            }),
            timeout_seconds: 10,
            period_seconds: 2,
            success_threshold: 0,
        }
    );
    assert_eq!(readiness.successes(0), 0);
}

#[test]
fn grpc_and_exec_handlers_decode() {
    let probes = config::decode(
        r#"[{"grpc":{"port":9000,"service":"svc"}},{"grpc":{"port":"9001"}},{"exec":{"command":["true"]}},{"exec":null}]"#,
        true,
    )
    .unwrap();
    let handlers: Vec<Handler> = probes.into_iter().map(|p| p.handler).collect();
    assert_eq!(
        handlers,
        vec![
            Handler::Grpc {
                port: 9000,
                service: "svc".to_owned()
            },
            Handler::Grpc {
                port: 9001,
                service: String::new()
            },
            Handler::Exec,
            Handler::None,
        ]
    );
}

#[test]
fn unknown_keys_and_nulls_are_ignored() {
    let json = r#"{"future":{"x":1},"tcpSocket":{"port":81,"extra":true,"host":null},"timeoutSeconds":null,"successThreshold":2}"#;
    let probes = config::decode(json, false).unwrap();
    assert_eq!(
        probes,
        vec![ProbeSpec {
            success_threshold: 2,
            ..tcp_spec(81)
        }]
    );
}

#[test]
fn malformed_json_is_an_error() {
    for (json, multi) in [
        ("{", false),
        ("not json", false),
        ("   ", false),
        (r#"{"tcpSocket":{"port":80}} trailing"#, false),
        ("[", true),
        // Wrong shape for the mode.
        (r#"[{"tcpSocket":{"port":80}}]"#, false),
        (r#"{"tcpSocket":{"port":80}}"#, true),
        // Wrong field types.
        (r#"{"periodSeconds":"1"}"#, false),
        (r#"{"successThreshold":1.5}"#, false),
        (r#"{"httpGet":[]}"#, false),
        (r#"{"tcpSocket":[80]}"#, false),
        (r#"{"httpGet":{"httpHeaders":{"name":"a"}}}"#, false),
        (r#"{"httpGet":{"httpHeaders":["a"]}}"#, false),
        (r#"[[{"tcpSocket":{"port":80}}]]"#, true),
        (r#"["probe"]"#, true),
    ] {
        let error = Readiness::from_env(json, multi, false)
            .err()
            .unwrap_or_else(|| panic!("{json:?} (multi={multi}) should be rejected"));
        let message = error.to_string();
        assert!(message.starts_with("SERVING_READINESS_PROBE"), "{message}");
        assert!(matches!(error, ProbeConfigError::Json { .. }), "{error:?}");
    }
}

#[test]
fn bad_ports_are_rejected_with_a_clear_message() {
    for (json, expect) in [
        (r#"{"tcpSocket":{"port":70000}}"#, "out of range"),
        (r#"{"tcpSocket":{"port":-1}}"#, "out of range"),
        (r#"{"httpGet":{"port":"65536"}}"#, "out of range"),
        (
            r#"{"httpGet":{"port":18446744073709551615}}"#,
            "out of range",
        ),
        (r#"{"tcpSocket":{"port":"http"}}"#, "must be a port number"),
        (r#"{"tcpSocket":{"port":""}}"#, "must be a port number"),
        (r#"{"tcpSocket":{"port":"+80"}}"#, "must be a port number"),
        (r#"{"tcpSocket":{"port":80.5}}"#, "must be a port number"),
        (r#"{"grpc":{"port":true}}"#, "must be a port number"),
    ] {
        let error = Readiness::from_env(json, false, false)
            .err()
            .unwrap_or_else(|| panic!("{json} should be rejected"));
        let message = error.to_string();
        assert!(message.contains("SERVING_READINESS_PROBE"), "{message}");
        assert!(message.contains(expect), "{json}: {message}");
        assert!(message.contains("port"), "{message}");
    }
    // Both IntOrString forms and the edges of the range are fine.
    for json in [
        r#"{"tcpSocket":{"port":0}}"#,
        r#"{"tcpSocket":{"port":"65535"}}"#,
        r#"{"tcpSocket":{}}"#,
    ] {
        assert!(Readiness::from_env(json, false, false).is_ok(), "{json}");
    }
}

#[test]
fn scheme_and_host_defaults() {
    let probes = config::decode(r#"{"httpGet":{"port":1,"path":"x"}}"#, false).unwrap();
    assert_eq!(probes[0].handler, Handler::Http(action(1, "x")));
    let probes = config::decode(
        r#"{"httpGet":{"port":1,"scheme":"HttpS","host":"::1"}}"#,
        false,
    )
    .unwrap();
    let Handler::Http(http) = &probes[0].handler else {
        panic!("not http");
    };
    assert_eq!(http.scheme, "https");
    assert_eq!(http.host, "::1");
}

#[tokio::test]
async fn empty_variable_means_always_ready() {
    let readiness = Readiness::from_env("", false, false).unwrap().leak();
    assert!(readiness.check().await);
    let readiness = Readiness::from_env("", true, true).unwrap().leak();
    assert!(readiness.check().await);
}

#[tokio::test]
async fn empty_or_null_list_is_ready_but_null_object_is_not() {
    for json in ["[]", "null"] {
        let (readiness, _) = prober(json, true, SECOND);
        assert!(readiness.check().await, "{json}");
    }
    let (readiness, captured) = prober("null", false, SECOND);
    assert!(!readiness.check().await);
    assert_eq!(lines(&captured), vec!["no probe found".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_probe_kinds_fail_at_check_time() {
    for json in [
        "{}",
        r#"{"fooProbe":{"port":80}}"#,
        r#"{"httpGet":null,"periodSeconds":1}"#,
    ] {
        let (readiness, captured) = prober(json, false, SECOND);
        let started = Instant::now();
        assert!(!readiness.check().await, "{json}");
        assert!(
            started.elapsed() < SECOND,
            "a missing handler is not retried"
        );
        assert_eq!(lines(&captured), vec!["no probe found".to_owned()]);
    }
}

#[tokio::test]
async fn invalid_custom_header_fails_the_attempt() {
    let server = always(200).await;
    let mut bad = action(server.port, "/");
    bad.headers = vec![("bad name".to_owned(), "v".to_owned())];
    let error = http_attempt(&bad, false, SECOND).await.unwrap_err();
    assert!(error.contains("invalid probe header field name"), "{error}");
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn unsupported_scheme_fails_the_attempt() {
    let server = always(200).await;
    let mut ftp = action(server.port, "/");
    ftp.scheme = "ftp".to_owned();
    let error = http_attempt(&ftp, false, SECOND).await.unwrap_err();
    assert!(error.contains("unsupported protocol scheme"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// §10.10 single attempts (HP*)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hp1_tcp_attempt_succeeds_then_fails_after_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tcp_attempt("127.0.0.1", port, SECOND).await.unwrap();
    drop(listener);
    let error = tcp_attempt("127.0.0.1", port, SECOND).await.unwrap_err();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
}

#[tokio::test]
async fn hp2_http_path_query_and_headers() {
    let server = always(200).await;
    for path in ["/health?foo=bar", "health?foo=bar"] {
        let mut probe = action(server.port, path);
        probe.headers = vec![("Testkey".to_owned(), "Testval".to_owned())];
        http_attempt(&probe, false, SECOND).await.unwrap();
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.path, "/health");
        assert_eq!(request.query.as_deref(), Some("foo=bar"));
        assert_eq!(request.headers["testkey"], "Testval");
        let agent = request.headers["user-agent"].to_str().unwrap();
        assert!(agent.starts_with("kube-probe/"), "{agent}");
        assert_eq!(agent, "kube-probe//");
        assert_eq!(request.headers["connection"], "close");
        assert_eq!(
            request.headers["host"],
            format!("127.0.0.1:{}", server.port).as_str()
        );
        assert_eq!(request.version, Version::HTTP_11);
    }
    let port = server.port;
    server.close().await;
    let mut probe = action(port, "/health?foo=bar");
    probe.headers = vec![("Testkey".to_owned(), "Testval".to_owned())];
    assert!(http_attempt(&probe, false, SECOND).await.is_err());
}

#[tokio::test]
async fn hp2_custom_host_and_user_agent_do_not_take_effect() {
    let server = always(200).await;
    let mut probe = action(server.port, "/");
    probe.headers = vec![
        ("Host".to_owned(), "example.com".to_owned()),
        ("User-Agent".to_owned(), "mine".to_owned()),
        ("X-Multi".to_owned(), "a".to_owned()),
        ("X-Multi".to_owned(), "b".to_owned()),
    ];
    http_attempt(&probe, false, SECOND).await.unwrap();
    let seen = &server.seen()[0];
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", server.port).as_str()
    );
    let agents: Vec<_> = seen.headers.get_all("user-agent").iter().collect();
    assert_eq!(agents, vec!["kube-probe//"]);
    let multi: Vec<_> = seen.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, vec!["a", "b"]);
}

#[tokio::test]
async fn hp3_plain_http_scheme_succeeds_then_fails_after_close() {
    let server = always(200).await;
    let mut probe = action(server.port, "");
    probe.scheme = "http".to_owned();
    http_attempt(&probe, false, SECOND).await.unwrap();
    assert_eq!(server.seen()[0].path, "/");
    server.close().await;
    assert!(http_attempt(&probe, false, SECOND).await.is_err());
}

#[tokio::test]
async fn hp4_timeout_shorter_than_the_response_fails() {
    let server = serve(Serve::Http1, |_, _| delayed(200, SECOND)).await;
    let started = Instant::now();
    let error = http_attempt(&action(server.port, "/"), false, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("timeout"), "{error}");
}

#[tokio::test]
async fn hp5_not_ready_status_fails() {
    for code in [503, 500, 404, 400] {
        let server = always(code).await;
        let error = http_attempt(&action(server.port, "/"), false, SECOND)
            .await
            .unwrap_err();
        assert!(error.contains(&code.to_string()), "{error}");
    }
    for code in [200, 204, 301, 304, 399] {
        // Redirect codes without a Location are final answers.
        let server = always(code).await;
        http_attempt(&action(server.port, "/"), false, SECOND)
            .await
            .unwrap_or_else(|e| panic!("{code}: {e}"));
    }
}

#[tokio::test]
async fn hp6_connection_error_fails() {
    assert!(http_attempt(&action(0, "/"), false, SECOND).await.is_err());
    assert!(tcp_attempt("127.0.0.1", 0, SECOND).await.is_err());
    assert!(grpc::attempt(0, "", SECOND).await.is_err());
}

fn versions(server: &TestServer) -> Vec<Version> {
    server.seen().iter().map(|s| s.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_h2c_only_server_is_probed_over_h2c() {
    let server = serve(Serve::H2c, |_, _| status(200)).await;
    let mut probe = action(server.port, "/health");
    probe.headers = vec![("Testkey".to_owned(), "Testval".to_owned())];
    http_attempt(&probe, true, SECOND).await.unwrap();
    let seen = server.seen();
    assert_eq!(versions(&server), vec![Version::HTTP_2, Version::HTTP_2]);
    // Detection sends only the User-Agent; the real probe adds the custom headers.
    assert!(seen[0].headers.get("testkey").is_none());
    assert_eq!(seen[0].headers["user-agent"], "kube-probe//");
    assert_eq!(seen[1].headers["testkey"], "Testval");
    assert_eq!(seen[1].path, "/health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_http1_only_server_is_probed_over_http1() {
    let server = serve(Serve::Http1, |_, _| status(200)).await;
    let mut probe = action(server.port, "/");
    probe.headers = vec![("Testkey".to_owned(), "Testval".to_owned())];
    http_attempt(&probe, true, SECOND).await.unwrap();
    let seen = server.seen();
    // The HTTP/1.1 detection request decides; custom headers are never sent (upstream quirk).
    assert_eq!(versions(&server), vec![Version::HTTP_11]);
    assert!(seen[0].headers.get("testkey").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_both_protocols_ready_prefers_h2c() {
    let server = serve(Serve::Auto, |_, _| status(200)).await;
    http_attempt(&action(server.port, "/"), true, SECOND)
        .await
        .unwrap();
    assert_eq!(versions(&server), vec![Version::HTTP_2, Version::HTTP_2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_h2c_not_ready_but_http1_ready_succeeds_over_http1() {
    let server = serve(Serve::Auto, |_, version| {
        status(if version == Version::HTTP_2 { 503 } else { 200 })
    })
    .await;
    http_attempt(&action(server.port, "/"), true, SECOND)
        .await
        .unwrap();
    assert_eq!(versions(&server), vec![Version::HTTP_2, Version::HTTP_11]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_http1_only_not_ready_fails() {
    let server = serve(Serve::Http1, |_, _| status(503)).await;
    let error = http_attempt(&action(server.port, "/"), true, SECOND)
        .await
        .unwrap_err();
    assert!(error.contains("503"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_both_protocols_failing_fails() {
    let server = serve(Serve::Auto, |_, _| status(500)).await;
    let error = http_attempt(&action(server.port, "/"), true, SECOND)
        .await
        .unwrap_err();
    assert!(error.contains("500"), "{error}");
    assert_eq!(versions(&server), vec![Version::HTTP_2, Version::HTTP_11]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_h2c_ready_but_real_probe_not_ready_fails() {
    // Detection passes, the real request (index 1) answers 503: the attempt fails.
    let server = serve(Serve::H2c, |index, _| {
        status(if index == 0 { 200 } else { 503 })
    })
    .await;
    assert!(http_attempt(&action(server.port, "/"), true, SECOND)
        .await
        .is_err());
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp7_autodetect_via_env_flag() {
    let server = serve(Serve::H2c, |_, _| status(200)).await;
    let json = http_probe_json(server.port, 1, "");
    let readiness = Readiness::from_env(&json, false, true).unwrap().leak();
    assert!(readiness.check().await);
    assert_eq!(versions(&server), vec![Version::HTTP_2, Version::HTTP_2]);
    // Without the flag the same h2c-only server cannot be probed.
    let (readiness, _) = prober(&json, false, SECOND);
    assert!(!readiness.check().await);
}

// gRPC health server -----------------------------------------------------------------------

#[derive(Clone, Copy)]
enum GrpcReply {
    Status(i32),
    Unimplemented,
}

async fn grpc_server(reply: GrpcReply) -> (TestServer, Arc<Mutex<Vec<String>>>) {
    let services: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = Arc::clone(&services);
    let handler: Arc<HandlerFn> = Arc::new(move |_, request: Request<Incoming>| {
        let recorded = Arc::clone(&recorded);
        Box::pin(async move {
            assert_eq!(request.uri().path(), HEALTH_CHECK_PATH);
            assert_eq!(request.headers()["content-type"], "application/grpc");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body[0], 0, "uncompressed");
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            let message = HealthCheckRequest::decode(&body[5..5 + len]).unwrap();
            recorded.lock().unwrap().push(message.service);
            let mut response = match reply {
                GrpcReply::Status(status) => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let payload = HealthCheckResponse { status }.encode_to_vec();
                    Response::new(
                        Full::new(grpc::frame(&payload))
                            .with_trailers(std::future::ready(Some(Ok(trailers))))
                            .boxed(),
                    )
                }
                GrpcReply::Unimplemented => {
                    let mut response = Response::new(Full::new(Bytes::new()).boxed());
                    response
                        .headers_mut()
                        .insert("grpc-status", HeaderValue::from_static("12"));
                    response
                        .headers_mut()
                        .insert("grpc-message", HeaderValue::from_static("unknown service"));
                    response
                }
            };
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            response
        })
    });
    (serve_with(Serve::H2c, None, handler).await, services)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp8_grpc_serving_succeeds() {
    let (server, services) = grpc_server(GrpcReply::Status(1)).await;
    grpc::attempt(server.port, "", SECOND).await.unwrap();
    grpc::attempt(server.port, "my.Service", SECOND)
        .await
        .unwrap();
    assert_eq!(
        *services.lock().unwrap(),
        vec![String::new(), "my.Service".to_owned()]
    );
    let seen = server.seen();
    assert_eq!(seen[0].headers["user-agent"], "kube-probe//");
    assert_eq!(seen[0].version, Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hp8_grpc_not_serving_or_unimplemented_fails() {
    let (server, _) = grpc_server(GrpcReply::Status(2)).await;
    let error = grpc::attempt(server.port, "", SECOND).await.unwrap_err();
    assert!(error.contains("NOT_SERVING"), "{error}");
    let (server, _) = grpc_server(GrpcReply::Unimplemented).await;
    let error = grpc::attempt(server.port, "", SECOND).await.unwrap_err();
    assert!(
        error.contains("does not implement the grpc health protocol"),
        "{error}"
    );
    // A plain HTTP/1 server is not a gRPC server.
    let server = always(200).await;
    assert!(grpc::attempt(server.port, "", SECOND).await.is_err());
}

// Redirects, silent apps, TLS ---------------------------------------------------------------

#[tokio::test]
async fn redirects_are_followed_with_headers() {
    let server = serve(Serve::Http1, |index, _| match index {
        0 => redirect(302, "/next?x=1"),
        1 => redirect(307, "final"),
        _ => status(200),
    })
    .await;
    let mut probe = action(server.port, "/dir/start");
    probe.headers = vec![("Testkey".to_owned(), "Testval".to_owned())];
    http_attempt(&probe, false, SECOND).await.unwrap();
    let seen = server.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, vec!["/dir/start", "/next", "/final"]);
    assert_eq!(seen[1].query.as_deref(), Some("x=1"));
    assert!(seen.iter().all(|s| s.headers["testkey"] == "Testval"));
}

#[tokio::test]
async fn redirect_to_a_failing_page_fails() {
    let server = serve(Serve::Http1, |index, _| match index {
        0 => redirect(301, "/broken"),
        _ => status(500),
    })
    .await;
    assert!(http_attempt(&action(server.port, "/"), false, SECOND)
        .await
        .is_err());
}

#[tokio::test]
async fn redirect_loop_stops_after_ten_requests() {
    let server = serve(Serve::Http1, |_, _| redirect(302, "/again")).await;
    let error = http_attempt(&action(server.port, "/"), false, SECOND)
        .await
        .unwrap_err();
    assert!(error.contains("stopped after 10 redirects"), "{error}");
    assert_eq!(server.count(), 10);
}

#[tokio::test]
async fn redirect_to_another_port_is_followed() {
    let target = always(200).await;
    let location = format!("http://127.0.0.1:{}/elsewhere", target.port);
    let origin = serve(Serve::Http1, move |_, _| redirect(308, &location)).await;
    http_attempt(&action(origin.port, "/"), false, SECOND)
        .await
        .unwrap();
    assert_eq!(target.seen()[0].path, "/elsewhere");
}

#[test]
fn location_resolution() {
    let base = Target::from_action(&action(8080, "/a/b?q=1"));
    assert_eq!(base.path_and_query, "/a/b?q=1");
    assert_eq!(base.resolve("c").unwrap().path_and_query, "/a/c");
    assert_eq!(base.resolve("/c d").unwrap().path_and_query, "/c%20d");
    assert_eq!(base.resolve("?z=2").unwrap().path_and_query, "/a/b?z=2");
    assert_eq!(base.resolve("").unwrap(), base);
    let absolute = base.resolve("https://example.com/x#frag").unwrap();
    assert_eq!(
        (
            absolute.scheme.as_str(),
            absolute.host.as_str(),
            absolute.port,
            absolute.authority.as_str(),
            absolute.path_and_query.as_str()
        ),
        ("https", "example.com", 443, "example.com", "/x")
    );
    let relative_scheme = base.resolve("//[::1]:9/y").unwrap();
    assert_eq!(relative_scheme.host, "::1");
    assert_eq!(relative_scheme.port, 9);
    assert_eq!(relative_scheme.authority, "[::1]:9");
    assert!(base.resolve("http://").is_err());
    // A path with a fragment and odd characters still forms a valid request target.
    let odd = Target::from_action(&action(1, "he alth#frag"));
    assert_eq!(odd.path_and_query, "/he%20alth");
}

/// Accepts connections and never answers.
async fn silent_server() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_that_never_answers_fails_within_the_timeout() {
    let (port, task) = silent_server().await;
    for autodetect in [false, true] {
        let started = Instant::now();
        let error = http_attempt(&action(port, "/"), autodetect, Duration::from_millis(300))
            .await
            .unwrap_err();
        // Auto-detection makes up to two requests, each with the full timeout.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(error.contains("timeout"), "{error}");
    }
    let started = Instant::now();
    assert!(grpc::attempt(port, "", Duration::from_millis(300))
        .await
        .is_err());
    assert!(started.elapsed() < SECOND);
    // Normal mode via the run: one attempt of timeoutSeconds (1 s).
    let (readiness, captured) = prober(&http_probe_json(port, 1, ""), false, SECOND);
    let started = Instant::now();
    assert!(!readiness.check().await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(lines(&captured).len(), 1);
    task.abort();
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(LEAF_DER.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LEAF_KEY_DER.to_vec())),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn tls_server() -> TestServer {
    serve_with(
        Serve::Http1,
        Some(tls_acceptor()),
        simple_handler(|_, _| status(200)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_against_untrusted_certificate_fails() {
    let server = tls_server().await;
    let mut probe = action(server.port, "/");
    probe.scheme = "https".to_owned();
    let error = http_attempt(&probe, false, SECOND).await.unwrap_err();
    assert!(error.contains("tls"), "{error}");
    assert_eq!(server.count(), 0);
    // Through the run, as configured by the controller (scheme "HTTPS").
    let json = format!(
        r#"{{"httpGet":{{"path":"/health","port":{},"host":"127.0.0.1","scheme":"HTTPS"}},"timeoutSeconds":1,"periodSeconds":2}}"#,
        server.port
    );
    let (readiness, _) = prober(&json, false, SECOND);
    assert!(!readiness.check().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_against_trusted_certificate_succeeds() {
    let server = tls_server().await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(CA_DER.to_vec()))
        .unwrap();
    let tls = TlsClient::with_config(client_config_with_roots(roots).unwrap());
    for host in ["127.0.0.1", "localhost"] {
        let mut probe = action(server.port, "/secure");
        probe.scheme = "https".to_owned();
        probe.host = host.to_owned();
        probe_http::attempt(&probe, false, SECOND, &tls)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    assert_eq!(server.count(), 2);
    assert_eq!(server.seen()[0].path, "/secure");
    // Auto-detection: h2c against a TLS port fails, the HTTP/1.1 fallback over TLS succeeds.
    let mut probe = action(server.port, "/");
    probe.scheme = "https".to_owned();
    probe_http::attempt(&probe, true, SECOND, &tls)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// §10.12 probe runs (RP*)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rp2_normal_tcp_to_closed_port_is_not_ready() {
    let (readiness, captured) = prober(&tcp_probe_json(closed_port().await, 1, 1), false, SECOND);
    assert!(!readiness.check().await);
    assert_eq!(lines(&captured).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp3_aggressive_tcp_to_closed_port_logs_once() {
    let json = tcp_probe_json(closed_port().await, 0, 1);
    let (readiness, captured) = prober(&json, false, Duration::from_millis(150));
    let started = Instant::now();
    assert!(!readiness.check().await);
    assert!(started.elapsed() < SECOND, "{:?}", started.elapsed());
    let lines = lines(&captured);
    let aggressive: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("aggressive probe error"))
        .collect();
    assert_eq!(aggressive.len(), 1, "{lines:?}");
    assert!(
        aggressive[0].starts_with("aggressive probe error (failed "),
        "{lines:?}"
    );
    assert!(
        aggressive[0].contains(" times): dial tcp 127.0.0.1:"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp4_aggressive_http_recovers_without_error_output() {
    let server = serve(Serve::Http1, |index, _| {
        status(if index < 3 { 503 } else { 200 })
    })
    .await;
    let (readiness, captured) = prober(&http_probe_json(server.port, 0, ""), false, 5 * SECOND);
    assert!(readiness.check().await);
    assert_eq!(server.count(), 4);
    assert!(lines(&captured).is_empty(), "{:?}", lines(&captured));
}

#[tokio::test]
async fn rp5_rp6_no_handler_and_exec_are_not_ready() {
    let (readiness, captured) = prober(r#"{"periodSeconds":1}"#, false, SECOND);
    assert!(!readiness.check().await);
    assert_eq!(lines(&captured), vec!["no probe found".to_owned()]);
    let (readiness, captured) = prober(
        r#"{"exec":{"command":["sh","-c","exit 0"]},"periodSeconds":1}"#,
        false,
        SECOND,
    );
    assert!(!readiness.check().await);
    assert_eq!(
        lines(&captured),
        vec!["exec probe not supported".to_owned()]
    );
}

#[tokio::test]
async fn rp7_normal_tcp_to_live_server_is_ready() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (readiness, captured) = prober(&tcp_probe_json(port, 1, 1), false, SECOND);
    assert!(readiness.check().await);
    assert!(lines(&captured).is_empty());
    // Port given as a string works the same.
    let json = format!(r#"{{"tcpSocket":{{"port":"{port}"}},"periodSeconds":1}}"#);
    let (readiness, _) = prober(&json, false, SECOND);
    assert!(readiness.check().await);
}

fn normal_http_json(port: u16, timeout_seconds: i32) -> String {
    format!(
        r#"{{"httpGet":{{"host":"127.0.0.1","port":{port},"path":"/"}},"periodSeconds":1,"timeoutSeconds":{timeout_seconds}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp8_normal_http_outcomes() {
    let (readiness, _) = prober(&normal_http_json(closed_port().await, 1), false, SECOND);
    assert!(!readiness.check().await, "closed port");

    let server = always(400).await;
    let (readiness, _) = prober(&normal_http_json(server.port, 1), false, SECOND);
    assert!(!readiness.check().await, "400");

    let server = always(200).await;
    let (readiness, _) = prober(&normal_http_json(server.port, 1), false, SECOND);
    assert!(readiness.check().await, "200");

    let server = serve(Serve::Http1, |_, _| delayed(200, Duration::from_millis(50))).await;
    let (readiness, _) = prober(&normal_http_json(server.port, 2), false, SECOND);
    assert!(readiness.check().await, "200 after 50 ms");

    let server = serve(Serve::Http1, |_, _| delayed(200, Duration::from_secs(10))).await;
    let (readiness, _) = prober(&normal_http_json(server.port, 1), false, SECOND);
    let started = Instant::now();
    assert!(!readiness.check().await, "10 s with a 1 s timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp9_concurrent_checks_share_one_run() {
    let server = serve(Serve::Http1, |index, _| {
        delayed(
            200,
            if index == 0 {
                Duration::from_millis(200)
            } else {
                Duration::ZERO
            },
        )
    })
    .await;
    let (readiness, _) = prober(&normal_http_json(server.port, 2), false, SECOND);
    let (a, b) = tokio::join!(readiness.check(), readiness.check());
    assert!(a && b);
    assert_eq!(server.count(), 1);
    assert!(readiness.check().await);
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp9_run_survives_caller_going_away() {
    let finished = Arc::new(Notify::new());
    let completed = Arc::new(AtomicUsize::new(0));
    let (finished_in, completed_in) = (Arc::clone(&finished), Arc::clone(&completed));
    let handler: Arc<HandlerFn> = Arc::new(move |_, _| {
        let finished = Arc::clone(&finished_in);
        let completed = Arc::clone(&completed_in);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            completed.fetch_add(1, Ordering::SeqCst);
            finished.notify_one();
            Response::new(Full::new(Bytes::new()).boxed())
        })
    });
    let server = serve_with(Serve::Http1, None, handler).await;
    let (readiness, _) = prober(&normal_http_json(server.port, 2), false, SECOND);
    let caller = tokio::spawn(readiness.check());
    // Wait until the run reached the app, then abandon the caller.
    while server.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    caller.abort();
    // A check made while that run is still going joins it instead of starting another.
    let joined = tokio::spawn(readiness.check());
    tokio::time::timeout(Duration::from_secs(3), finished.notified())
        .await
        .expect("the abandoned run finished");
    assert!(joined.await.unwrap());
    assert_eq!(completed.load(Ordering::SeqCst), 1);
    assert_eq!(server.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp10_all_probes_must_pass() {
    for (first, second, expected) in [(200, 200, true), (500, 200, false), (200, 500, false)] {
        let one = always(first).await;
        let two = always(second).await;
        let json = format!(
            "[{},{}]",
            normal_http_json(one.port, 1),
            normal_http_json(two.port, 1)
        );
        let (readiness, captured) = prober(&json, true, SECOND);
        assert_eq!(readiness.check().await, expected, "{first}/{second}");
        // Both probes ran, in parallel.
        assert_eq!((one.count(), two.count()), (1, 1));
        assert_eq!(lines(&captured).len(), usize::from(!expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_failures_print_only_the_first_error() {
    let json = format!(
        r#"[{{"exec":{{}}}},{{"periodSeconds":1}},{}]"#,
        tcp_probe_json(closed_port().await, 1, 1)
    );
    let (readiness, captured) = prober(&json, true, SECOND);
    assert!(!readiness.check().await);
    assert_eq!(lines(&captured).len(), 1, "{:?}", lines(&captured));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp11_aggressive_http_retries_after_one_failure() {
    let server = serve(Serve::Http1, |index, _| {
        status(if index == 0 { 500 } else { 200 })
    })
    .await;
    let (readiness, captured) = prober(&http_probe_json(server.port, 0, ""), false, 5 * SECOND);
    assert!(readiness.check().await);
    assert_eq!(server.count(), 2);
    assert!(lines(&captured).is_empty());
}

fn aggressive_http_json(port: u16, threshold: i32, extra: &str) -> String {
    format!(
        r#"{{"httpGet":{{"host":"127.0.0.1","port":{port},"path":"/"{extra}}},"successThreshold":{threshold}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp12_aggressive_threshold_needs_consecutive_successes() {
    let server = always(200).await;
    let (readiness, _) = prober(&aggressive_http_json(server.port, 3, ""), false, 5 * SECOND);
    let started = Instant::now();
    assert!(readiness.check().await);
    assert!(server.count() >= 3);
    assert!(readiness.successes(0) >= 3);
    // Attempts are 50 ms apart.
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "{:?}",
        started.elapsed()
    );
    // The streak persists: the next run passes on its first attempt.
    let before = server.count();
    assert!(readiness.check().await);
    assert_eq!(server.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp13_a_failure_resets_the_streak() {
    let server = serve(Serve::Http1, |index, _| {
        status(if index == 1 { 500 } else { 200 })
    })
    .await;
    let extra = r#","httpHeaders":[{"name":"Testkey","value":"Testval"}]"#;
    let (readiness, _) = prober(
        &aggressive_http_json(server.port, 3, extra),
        false,
        5 * SECOND,
    );
    assert!(readiness.check().await);
    assert!(server.count() >= 5, "{}", server.count());
    assert!(server
        .seen()
        .iter()
        .all(|s| s.headers["testkey"] == "Testval"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp14_aggressive_window_shorter_than_the_app() {
    let server = serve(Serve::Http1, |_, _| delayed(200, SECOND)).await;
    let (readiness, captured) = prober(
        &http_probe_json(server.port, 0, ""),
        false,
        Duration::from_millis(50),
    );
    let started = Instant::now();
    assert!(!readiness.check().await);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(lines(&captured)[0].contains("aggressive probe error (failed 1 times)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp15_aggressive_tcp_to_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (readiness, _) = prober(&tcp_probe_json(port, 0, 1), false, 5 * SECOND);
    assert!(readiness.check().await);
    let (readiness, _) = prober(&tcp_probe_json(port, 0, 3), false, 5 * SECOND);
    assert!(readiness.check().await);
    assert!(readiness.successes(0) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp16_aggressive_without_handler_or_listener() {
    let (readiness, _) = prober("{}", false, 5 * SECOND);
    let started = Instant::now();
    assert!(!readiness.check().await);
    assert!(started.elapsed() < SECOND);
    let json = tcp_probe_json(closed_port().await, 0, 1);
    let (readiness, _) = prober(&json, false, Duration::from_millis(50));
    assert!(!readiness.check().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp17_listener_gap_resets_the_streak() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let second_accepts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&second_accepts);
    let flapping = tokio::spawn(async move {
        let _first = listener.accept().await.unwrap();
        drop(listener);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let (readiness, captured) = prober(&tcp_probe_json(port, 0, 3), false, 5 * SECOND);
    let started = Instant::now();
    assert!(readiness.check().await);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert!(readiness.successes(0) >= 3);
    assert!(second_accepts.load(Ordering::SeqCst) >= 1);
    assert!(lines(&captured).is_empty());
    flapping.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp18_normal_grpc_against_serving_server() {
    let (server, services) = grpc_server(GrpcReply::Status(1)).await;
    let json = format!(
        r#"{{"grpc":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":1}}"#,
        server.port
    );
    let (readiness, _) = prober(&json, false, SECOND);
    assert!(readiness.check().await);
    assert_eq!(*services.lock().unwrap(), vec![String::new()]);
    // Aggressive mode too.
    let json = format!(r#"{{"grpc":{{"port":{},"service":"s"}}}}"#, server.port);
    let (readiness, _) = prober(&json, false, 5 * SECOND);
    assert!(readiness.check().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_and_thresholds_do_not_panic() {
    let server = always(200).await;
    for (timeout, threshold) in [(i32::MAX, i32::MAX), (-5, -5), (0, 0)] {
        let json = format!(
            r#"{{"httpGet":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":{timeout},"successThreshold":{threshold}}}"#,
            server.port
        );
        let (readiness, _) = prober(&json, false, SECOND);
        assert!(readiness.check().await, "{json}");
        let json = tcp_probe_json(closed_port().await, 1, threshold).replace(
            "\"timeoutSeconds\":1",
            &format!("\"timeoutSeconds\":{timeout}"),
        );
        let (readiness, _) = prober(&json, false, SECOND);
        assert!(!readiness.check().await, "{json}");
    }
    // A non-positive threshold in aggressive mode behaves like 1.
    let (readiness, _) = prober(&aggressive_http_json(server.port, -1, ""), false, SECOND);
    assert!(readiness.check().await);
}
