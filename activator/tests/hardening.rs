//! Adversarial load against the activator (README "Limits"): the activator-wide cap on parked
//! requests, head limits from the environment, slow clients, and HTTP/2 floods. The activator is
//! shared by every namespace, so one client must not be able to exhaust it for the others.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use test_support::attack::{self, closed_within, connect_and_send, read_frames};
use tokio::io::AsyncWriteExt;

fn spawn_request(activator: std::net::SocketAddr, name: &str) -> tokio::task::JoinHandle<Resp> {
    let request = rev_get("/", NS, name);
    tokio::spawn(async move { send(activator, request).await })
}

/// `ACTIVATOR_MAX_QUEUED_TOTAL=4`: with three scaled-to-zero revisions and no per-revision cap,
/// requests beyond 4 parked in total get `503 pending request queue full` at once, whichever
/// revision they are for; when pods appear the parked ones are served, and the cap frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_queue_cap_spans_revisions() {
    let stats = StatsReceiver::start().await;
    let revs = [Rev::new("a", 0), Rev::new("b", 1), Rev::new("c", 10)];
    let activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_MAX_QUEUED_TOTAL", 4)
        .revisions(&revs)
        .start();
    let addr = activator.addr();
    let mut handles: Vec<_> = ["a", "b", "c", "a", "b", "c", "a", "b"]
        .iter()
        .map(|name| spawn_request(addr, name))
        .collect();
    let mut rejected = 0;
    while rejected < 4 {
        let done = eventually(DEADLINE, "a queue-full answer", || {
            std::future::ready(handles.iter().position(|h| h.is_finished()))
        })
        .await;
        let resp = handles.remove(done).await.unwrap();
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
        assert_eq!(resp.text(), "pending request queue full\n");
        rejected += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handles.iter().all(|h| !h.is_finished()));

    let app = App::ok().await;
    activator.set_revisions(&[
        Rev::new("a", 0).ready([app.addr]),
        Rev::new("b", 1).ready([app.addr]),
        Rev::new("c", 10).ready([app.addr]),
    ]);
    for handle in handles {
        let resp = tokio::time::timeout(DEADLINE, handle)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    }
    assert_eq!(app.seen_count(), 4);
    // Nothing is parked any more: the cap admits new requests again.
    let resp = send(addr, rev_get("/", NS, "a")).await;
    assert_eq!(resp.status, StatusCode::OK);
}

/// Head limits and the header read timeout come from `ACTIVATOR_*`; bad values stop start-up.
#[tokio::test]
async fn listener_limits_follow_the_environment() {
    let stats = StatsReceiver::start().await;
    let app = App::ok().await;
    let activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_MAX_HEADERS", 10)
        .env("ACTIVATOR_HEADER_READ_TIMEOUT_SECONDS", 1)
        .revisions(&[Rev::new("r", 0).ready([app.addr])])
        .start();
    let mut head = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nKnative-Serving-Namespace: {NS}\r\nKnative-Serving-Revision: r\r\n"
    );
    for i in 0..10 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let resp = raw_exchange(activator.addr(), head.into_bytes(), DEADLINE).await;
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp:?}");

    let mut silent = connect_and_send(activator.addr(), b"").await;
    let mut partial = connect_and_send(activator.h2c_addr(), b"GET / HTTP/1.1\r\n").await;
    assert!(closed_within(&mut silent, DEADLINE).await);
    assert!(closed_within(&mut partial, DEADLINE).await);
    assert_eq!(app.seen_count(), 0);
    let ok = send(activator.addr(), rev_get("/", NS, "r")).await;
    assert_eq!(ok.status, StatusCode::OK);

    for (name, value) in [
        ("ACTIVATOR_MAX_QUEUED_TOTAL", "-3"),
        ("ACTIVATOR_MAX_HEADER_BYTES", "huge"),
        ("ACTIVATOR_MAX_CONNECTIONS", "-1"),
        ("ACTIVATOR_MAX_CONCURRENT_PROBES", "many"),
    ] {
        let exited = ActivatorConfig::new(&stats.url())
            .env(name, value)
            .run_to_exit();
        exited.assert_failed();
        assert!(
            exited.stderr.contains(name) || exited.stdout.contains(name),
            "{name}={value}: {exited:#?}"
        );
    }
}

/// Rapid reset and CONTINUATION floods on the h2c port end the attacking connection; the
/// activator keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_floods_are_cut_off() {
    let stats = StatsReceiver::start().await;
    let app = App::ok().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("r", 0).ready([app.addr])])
        .start();
    let authority = activator.h2c_addr().to_string();

    let (mut read, mut write) = tokio::net::TcpStream::connect(activator.h2c_addr())
        .await
        .unwrap()
        .into_split();
    let flood = attack::rapid_reset(&authority, 5000);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&flood).await;
        write
    });
    let (frames, _) = read_frames(&mut read, DEADLINE, |f| f.kind == attack::GOAWAY).await;
    assert_eq!(
        frames.iter().find_map(|f| f.goaway_code()),
        Some(attack::ENHANCE_YOUR_CALM)
    );
    writer.abort();

    let (mut read, mut write) = tokio::net::TcpStream::connect(activator.h2c_addr())
        .await
        .unwrap()
        .into_split();
    let start = attack::continuation_start(&authority);
    let chunk = attack::continuation(100);
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let _ = write.write_all(&start).await;
        while sent < 8 << 20 && write.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let (_, closed) = read_frames(&mut read, DEADLINE, |_| false).await;
    assert!(closed);
    let sent = tokio::time::timeout(DEADLINE, writer)
        .await
        .unwrap()
        .unwrap();
    assert!(sent < 8 << 20, "{sent}");

    assert_eq!(app.seen_count(), 0);
    let ok = send(activator.addr(), rev_get("/", NS, "r")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// The noisy-neighbour scenario (README "Limits", `ACTIVATOR_MAX_QUEUED_TOTAL`): revision
/// `noisy` has no pods and fills the activator-wide cap of 100 (150 requests: 50 refused at
/// once); then `victim` (cc 1, one healthy pod, 200 ms responses) receives 5 concurrent
/// requests. `victim` is under its fair share, so its waiting requests displace `noisy`'s
/// newest and all five are served. Every refusal is counted on `/metrics` for `noisy`.
async fn noisy_neighbour(noisy_namespace: &str) {
    let stats = StatsReceiver::start().await;
    let app = App::start(test_support::app::handler(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        test_support::app::respond(StatusCode::OK, "ok")
    }))
    .await;
    let mut noisy = Rev::new("noisy", 0);
    noisy.namespace = noisy_namespace.to_owned();
    let victim = Rev::new("victim", 1).ready([app.addr]);
    let mut doc: serde_json::Value = serde_json::from_str(&document(&[noisy, victim])).unwrap();
    doc["configMaps"] = serde_json::json!({
        "config-observability": { "data": { "metrics-protocol": "prometheus" } }
    });
    let metrics_port = free_port();
    let activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_MAX_QUEUED_TOTAL", 100)
        .env("METRICS_PROMETHEUS_PORT", metrics_port)
        .env("METRICS_PROMETHEUS_HOST", "127.0.0.1")
        .discovery_text(&serde_json::to_string(&doc).unwrap())
        .start();
    activator.wait_healthy().await;
    let addr = activator.addr();
    // The victim's pod is probed and usable before the flood starts.
    assert_eq!(
        send(addr, rev_get("/", NS, "victim")).await.status,
        StatusCode::OK
    );

    let mut flood: Vec<_> = (0..150)
        .map(|_| {
            let request = rev_get("/", noisy_namespace, "noisy");
            tokio::spawn(async move { send(addr, request).await })
        })
        .collect();
    let mut noisy_refused = 0;
    while noisy_refused < 50 {
        let done = eventually(DEADLINE, "the flood's queue-full answers", || {
            std::future::ready(flood.iter().position(|h| h.is_finished()))
        })
        .await;
        let resp = flood.remove(done).await.unwrap();
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
        assert_eq!(resp.text(), "pending request queue full\n");
        noisy_refused += 1;
    }

    let victims: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send(addr, rev_get("/", NS, "victim"))))
        .collect();
    for handle in victims {
        let resp = tokio::time::timeout(DEADLINE, handle)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK, "victim: {resp:?}");
    }
    // The victim's waiting requests each displaced one of noisy's newest.
    let mut displaced = 0;
    for handle in std::mem::take(&mut flood) {
        if handle.is_finished() {
            let resp = handle.await.unwrap();
            assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
            displaced += 1;
        } else {
            flood.push(handle);
        }
    }
    assert!((1..=5).contains(&displaced), "displaced {displaced}");
    assert_eq!(
        flood.len(),
        100 - displaced,
        "noisy keeps the rest of its places"
    );

    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let expected = format!(
        "kn_revision_request_refused_total{{k8s_namespace_name=\"{noisy_namespace}\",kn_revision_name=\"noisy\","
    );
    let resp = get(metrics_addr, "/metrics").await;
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with(&expected))
        .unwrap_or_else(|| panic!("no refused counter for noisy: {text}"));
    assert!(
        line.ends_with(&format!(" {}", 50 + displaced)),
        "{line}\n{text}"
    );
    assert!(!text.contains("kn_revision_request_refused_total{k8s_namespace_name=\"default\",kn_revision_name=\"victim\""));
    // The refusals were logged, at most once per second for the revision.
    let logged = activator
        .stdout_text()
        .lines()
        .chain(activator.stderr_text().lines())
        .filter(|l| l.contains("pending request queue full: ") && l.contains("/noisy"))
        .count();
    assert!((1..=3).contains(&logged), "logged {logged} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_in_the_same_namespace_does_not_starve_others() {
    noisy_neighbour(NS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_in_another_namespace_does_not_starve_others() {
    noisy_neighbour("tenant-noisy").await;
}
