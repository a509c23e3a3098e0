//! End-to-end tests on the local stack: the real activator (file discovery), the autoscaler
//! stand-in and real queue-proxies in front of the sample app, all on free loopback ports.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use local_stack::client::HttpClient;
use local_stack::process::signal;
use local_stack::stack::REVISION_HOST;
use local_stack::{EventKind, Stack};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(60))
}

/// Every instance's app saw at most `cc` concurrent requests.
async fn assert_cc_held(stack: &Stack, client: &HttpClient) -> u64 {
    let cc = u64::from(stack.config().cc);
    let mut total = 0;
    for instance in stack.ready_instances() {
        let (_, highest, served) = app_counters(client, instance.app_addr).await;
        assert!(
            highest <= cc,
            "{}: {highest} concurrent requests with cc {cc}",
            instance.name
        );
        total += served;
    }
    total
}

#[tokio::test]
async fn scale_from_zero_with_100_concurrent_first_requests() {
    let mut config = config("from-zero");
    config.scaling.initial_scale = 0;
    let dir = config.run_dir.clone();
    let stack = Stack::start(config).await.expect("stack starts");
    assert!(stack.instances().is_empty(), "starts at zero");
    let client = client();
    let started = Instant::now();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (client, addr) = (client.clone(), stack.activator_addr());
            tokio::spawn(async move {
                let request = http::Request::get(format!("http://{addr}/sleep?ms=50"))
                    .header(REVISION_HEADERS[0].0, REVISION_HEADERS[0].1)
                    .header(REVISION_HEADERS[1].0, REVISION_HEADERS[1].1)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                client.send(request).await
            })
        })
        .collect();
    for request in requests {
        let reply = request
            .await
            .unwrap()
            .expect("every first request gets a response");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let elapsed = started.elapsed();
    let events = stack.events();
    let first_scale = events.iter().find_map(|e| match &e.kind {
        EventKind::Scaled {
            from: 0, trigger, ..
        } => Some(*trigger),
        _ => None,
    });
    assert_eq!(
        first_scale,
        Some("poke"),
        "the activator's poke woke the revision"
    );
    let served = assert_cc_held(&stack, &client).await;
    assert_eq!(served, 100, "every request reached an app exactly once");
    eprintln!("100 cold requests in {elapsed:?}");
    stack.shutdown().await.expect("clean shutdown");
    assert_no_orphans(&dir).await;
}

#[tokio::test]
async fn burst_above_capacity_queues_and_nothing_fails() {
    let mut config = config("burst");
    config.scaling.max_scale = 1; // capacity stays cc = 2
    let dir = config.run_dir.clone();
    let stack = Stack::start(config).await.expect("stack starts");
    let client = client();
    let started = Instant::now();
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let client = client.clone();
            let stack = &stack;
            async move { get(&client, stack, "/sleep?ms=100").await }
        })
        .collect();
    let replies = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    for reply in replies {
        let reply = reply.expect("a response");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // 30 requests of 100 ms, 2 at a time: they must have queued (≥ 15 × 100 ms).
    assert!(
        elapsed >= Duration::from_millis(1400),
        "no queueing? {elapsed:?}"
    );
    assert_eq!(assert_cc_held(&stack, &client).await, 30);
    stack.shutdown().await.expect("clean shutdown");
    assert_no_orphans(&dir).await;
}

#[tokio::test]
async fn scale_to_zero_and_back() {
    let mut config = config("to-zero");
    config.scaling.stable_window = Duration::from_secs(1);
    config.scaling.scale_to_zero_grace = Duration::from_secs(1);
    let dir = config.run_dir.clone();
    let stack = Stack::start(config).await.expect("stack starts");
    let client = client();
    assert_eq!(
        get(&client, &stack, "/").await.unwrap().status,
        StatusCode::OK
    );

    let zero = |s: &Stack| s.instances().is_empty().then_some(());
    stack
        .wait_until(DEADLINE, "scale to zero", zero)
        .await
        .unwrap();
    let discovery = std::fs::read_to_string(stack.discovery_file()).unwrap();
    assert!(
        !discovery.contains("127.0.0.1:"),
        "no pods listed:\n{discovery}"
    );
    let stopped = |s: &Stack| {
        s.events().iter().find_map(|e| match &e.kind {
            EventKind::InstanceStopped { graceful, .. } => Some(*graceful),
            _ => None,
        })
    };
    assert_eq!(
        stack.wait_until(DEADLINE, "a stop", stopped).await,
        Ok(true),
        "graceful drain"
    );

    let reply = get(&client, &stack, "/")
        .await
        .expect("a response from zero");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("x-instance"),
        Some("hello-00001-2"),
        "a new instance answered"
    );

    stack
        .wait_until(DEADLINE, "scale to zero again", zero)
        .await
        .unwrap();
    let downs = stack
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Scaled { to: 0, .. }))
        .count();
    assert_eq!(downs, 2);
    stack.shutdown().await.expect("clean shutdown");
    assert_no_orphans(&dir).await;
}

/// One request of the SIGKILL test's load.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    status: Option<StatusCode>,
    body: String,
    instance: Option<String>,
}

#[tokio::test]
async fn instance_killed_under_load() {
    let mut config = config("sigkill");
    config.scaling.initial_scale = 2;
    config.scaling.max_scale = 2;
    let dir = config.run_dir.clone();
    let stack = Arc::new(Stack::start(config).await.expect("stack starts"));
    let client = client();
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stack, outcomes) = (client.clone(), stack.clone(), outcomes.clone());
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let started = Instant::now();
                    let reply = get(&client, &stack, "/sleep?ms=500").await;
                    let failed = !matches!(&reply, Ok(r) if r.status == StatusCode::OK);
                    outcomes.lock().unwrap().push(match reply {
                        Ok(r) => Outcome {
                            started,
                            status: Some(r.status),
                            body: r.text(),
                            instance: r.header("x-instance").map(str::to_owned),
                        },
                        Err(e) => Outcome {
                            started,
                            status: None,
                            body: e,
                            instance: None,
                        },
                    });
                    if failed {
                        // A client backs off after an error.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();

    // Kill an instance that is serving requests right now.
    let victim = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut busy = None;
        for i in stack.ready_instances() {
            if app_counters(&client, i.app_addr).await.0 > 0 {
                busy = Some(i);
                break;
            }
        }
        if let Some(i) = busy {
            break i;
        }
        assert!(
            Instant::now() < stop_at,
            "no instance ever had a request in flight"
        );
    };
    let killed_at = Instant::now();
    signal(victim.queue_pid, libc::SIGKILL);
    signal(victim.app_pid, libc::SIGKILL);
    let died = |s: &Stack| {
        s.events().iter().find_map(|e| match &e.kind {
            EventKind::InstanceDied { name, .. } if *name == victim.name => Some(e.at),
            _ => None,
        })
    };
    let died_at = stack
        .wait_until(DEADLINE, "the death to be noticed", died)
        .await
        .unwrap();
    assert!(!std::fs::read_to_string(stack.discovery_file())
        .unwrap()
        .contains(&victim.queue_addr.to_string()));
    for worker in workers {
        worker.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    // A request leased to the dead instance after the kill cannot connect (a pooled connection
    // to it is found closed, and the dial that follows is refused): nothing was sent, so the
    // activator waits for discovery to drop the instance and sends it elsewhere. Only the
    // requests in flight on the instance when it died fail.
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != Some(StatusCode::OK))
        .collect();
    for o in &failed {
        assert_eq!(o.status, Some(StatusCode::BAD_GATEWAY), "only 502s: {o:?}");
        assert!(
            o.started <= killed_at,
            "only requests in flight at the kill fail, not one answered {:?}: {o:?}",
            o.body
        );
    }
    let in_flight = failed.len();
    assert!(
        in_flight >= 1,
        "the killed instance's in-flight requests fail: {outcomes:#?}"
    );
    // What failed, for the failure messages: the body, and how long before the kill it started.
    let failures: Vec<String> = failed
        .iter()
        .map(|o| {
            let before = killed_at.saturating_duration_since(o.started);
            format!("{:?}, started {before:?} before the kill", o.body)
        })
        .collect();
    assert!(
        in_flight <= 2,
        "at most cc requests were in flight there: {failures:#?}"
    );
    let late: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started > died_at + Duration::from_millis(500))
        .collect();
    assert!(!late.is_empty(), "load continued after the death");
    for o in late {
        assert_eq!(o.status, Some(StatusCode::OK), "{o:?}");
        assert_ne!(
            o.instance.as_deref(),
            Some(victim.name.as_str()),
            "traffic moved"
        );
    }
    eprintln!(
        "killed {}; stand-in noticed after {:?}: {in_flight} in-flight 502s ({failures:?}), {} requests",
        victim.name,
        died_at.saturating_duration_since(killed_at),
        outcomes.len()
    );
    let stack = Arc::try_unwrap(stack).ok().expect("workers are done");
    stack.shutdown().await.expect("clean shutdown");
    assert_no_orphans(&dir).await;
}

/// The next data frame of `body`.
async fn next_data(body: &mut hyper::body::Incoming) -> Bytes {
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("a frame in time")
        .expect("the stream goes on")
        .expect("no stream error");
    frame.into_data().expect("a data frame")
}

#[tokio::test]
async fn websocket_and_h2c_stream_through_both_proxies() {
    let config = config("streams");
    let dir = config.run_dir.clone();
    let stack = Stack::start(config).await.expect("stack starts");
    assert_eq!(stack.ready_instances().len(), 1);

    // Websocket: activator -> queue-proxy -> app, upgraded end to end.
    let mut request = format!("ws://{}/ws", stack.activator_addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", http::HeaderValue::from_static(REVISION_HOST));
    let tcp = tokio::net::TcpStream::connect(stack.activator_addr())
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("websocket handshake through both proxies");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["one", "two", "three"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    // The app answers the close; then the tunnel ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);

    // gRPC-style bidirectional stream over h2c: each message is echoed before the next is sent.
    let tcp = tokio::net::TcpStream::connect(stack.activator_addr())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )));
    let request = http::Request::post(format!("http://{REVISION_HOST}/grpc-echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(REVISION_HEADERS[0].0, REVISION_HEADERS[0].1)
        .header(REVISION_HEADERS[1].0, REVISION_HEADERS[1].1)
        .body(body)
        .unwrap();
    let response = sender.send_request(request);
    tx.send(Ok(Frame::data(Bytes::from_static(b"message-1"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    assert_eq!(&next_data(&mut body).await[..], b"message-1");
    tx.send(Ok(Frame::data(Bytes::from_static(b"message-2"))))
        .await
        .unwrap();
    assert_eq!(&next_data(&mut body).await[..], b"message-2");
    drop(tx);
    let trailers = loop {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(trailers) = frame.into_trailers() {
            break trailers;
        }
    };
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    drop(sender);

    stack.shutdown().await.expect("clean shutdown");
    assert_no_orphans(&dir).await;
}

#[tokio::test]
async fn bad_input_is_reported_and_leaves_nothing_behind() {
    // An occupied port given explicitly is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut c = config("port");
    c.activator_port = Some(port);
    let error = Stack::start(c).await.err().expect("refused").to_string();
    assert!(
        error.contains(&format!("port {port}")) && error.contains("in use"),
        "{error}"
    );

    // A missing build says how to build.
    let mut c = config("missing");
    c.bin_dir = run_dir("no-binaries");
    let error = Stack::start(c).await.err().expect("refused").to_string();
    assert!(error.contains("cargo build"), "{error}");

    // An app that cannot start: reported, and nothing keeps running (the activator included).
    let mut c = config("bad-app");
    c.app = Some("/bin/false".into());
    let dir = c.run_dir.clone();
    let error = Stack::start(c).await.err().expect("refused").to_string();
    assert!(
        error.contains("sample app did not start") && error.contains("exit code 1"),
        "{error}"
    );
    assert_no_orphans(&dir).await;
}

#[tokio::test]
async fn binary_stops_everything_on_ctrl_c() {
    let _ = bin_dir();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_knative-local"))
        .args(["--no-build", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = child.wait_with_output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "--port 0 is rejected");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--port"));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_knative-local"))
        .args(["--no-build", "--initial-scale", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let banner = async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while stdout.read_line(&mut line).await.unwrap() > 0 {
            seen.push_str(&line);
            if line.contains("Ctrl-C stops everything") {
                return;
            }
            line.clear();
        }
        panic!("no banner:\n{seen}");
    };
    tokio::time::timeout(Duration::from_secs(60), banner)
        .await
        .expect("the stack starts");
    let run = seen
        .lines()
        .find_map(|l| {
            l.strip_prefix("Logs")
                .map(|r| r.trim().trim_end_matches("/*.log").to_owned())
        })
        .expect("the banner names the log directory");
    let run = std::path::PathBuf::from(run);
    let activator: std::net::SocketAddr = seen
        .lines()
        .find_map(|l| {
            l.strip_prefix("Activator")?
                .trim()
                .strip_prefix("http://")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("the banner names the activator's address");
    assert_eq!(
        processes_logging_to(&run).len(),
        5,
        "activator + 2 × (app + queue-proxy)"
    );
    signal(pid, libc::SIGINT);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_no_orphans(&run).await;
    assert!(
        std::net::TcpStream::connect(activator).is_err(),
        "the activator's port is free again"
    );
}
