//! Activation end to end: scale from zero with the autoscaler poke (spec §6.1, §2.12), rollouts
//! (spec §3.6, §5.6), revision timeouts while queued (spec §2.11) and the queue cap.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// Sends `GET /?id=<id>` for the revision on its own HTTP/1.1 connection (kept pending by the
/// activator until a pod is ready) and returns the response.
fn spawn_request(
    activator: std::net::SocketAddr,
    name: &str,
    id: usize,
) -> tokio::task::JoinHandle<Resp> {
    let request = rev_req("GET", &format!("/?id={id}"), NS, name)
        .header("x-request-id", id.to_string())
        .body(empty())
        .unwrap();
    tokio::spawn(async move { send(activator, request).await })
}

/// An app that answers `id=<x-request-id>` after `delay`.
async fn id_app(delay: Duration) -> App {
    App::start(handler(
        move |req: http::Request<hyper::body::Incoming>| async move {
            let id = req
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            tokio::time::sleep(delay).await;
            respond(StatusCode::OK, format!("id={id}"))
        },
    ))
    .await
}

/// Waits for the first stat message of revision `NS/name` and checks it is the poke; returns how
/// long after `sent` it arrived.
async fn poke_latency(stats: &StatsReceiver, name: &str, sent: Instant) -> Duration {
    let (at, message) = stats
        .wait_for(DEADLINE, &format!("the poke for {name}"), |s| {
            s.messages_for(NS, name).into_iter().next()
        })
        .await;
    let stat = message.stat.expect("the poke carries a stat");
    assert_eq!(
        stat,
        knative_common::stats::Stat {
            pod_name: POD_NAME.to_owned(),
            average_concurrent_requests: 1.0,
            request_count: 1.0,
            ..Default::default()
        },
        "the poke for {name}"
    );
    at.saturating_duration_since(sent)
}

/// Scale from zero (spec §6.1 poke, §2.12, §3.2, §5): requests for a revision without pods are
/// held, the autoscaler is poked at once with `{1, 1}`, and when a pod (app behind a real
/// queue-proxy, cc 2) appears in discovery every held request is served exactly once with at most
/// cc in flight at the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_from_zero_end_to_end() {
    const HELD: usize = 20;
    // Build the queue-proxy before anything is timed: held requests wait at most DEADLINE, and a
    // cold `cargo build` inside the test (fresh CI target directory) can take longer than that.
    tokio::task::spawn_blocking(queue_proxy_bin)
        .await
        .expect("build the queue-proxy");
    let stats = StatsReceiver::start().await;
    let warmups = ["poke-a", "poke-b", "poke-c"];
    let mut revs: Vec<Rev> = warmups.iter().map(|n| Rev::new(n, 2)).collect();
    revs.push(Rev::new("hello-00001", 2));
    let mut activator = ActivatorConfig::new(&stats.url()).revisions(&revs).start();
    activator.wait_healthy().await;
    let addr = activator.addr();

    // Poke latency, measured from just before the first request of each revision is sent.
    let mut latencies = Vec::new();
    let mut parked = Vec::new();
    for name in warmups {
        let sent = Instant::now();
        // These revisions never get a pod: their requests stay held until aborted at the end, so
        // they must not panic when the client's exchange limit expires.
        let request = rev_req("GET", "/?id=0", NS, name).body(empty()).unwrap();
        parked.push(tokio::spawn(async move { try_send(addr, request).await }));
        latencies.push(poke_latency(&stats, name, sent).await);
    }

    // 20 concurrent requests for hello-00001, all held.
    let sent = Instant::now();
    let held: Vec<_> = (0..HELD)
        .map(|id| spawn_request(addr, "hello-00001", id))
        .collect();
    latencies.push(poke_latency(&stats, "hello-00001", sent).await);
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    println!("poke latency: median {median:?}, all {latencies:?}");
    assert!(
        median < Duration::from_millis(50),
        "the autoscaler poke took {median:?} (median of {latencies:?}); spec §6.1 sends it \
         immediately on the first request"
    );

    // Every request has been counted in (poke + per-second reports), and none was answered.
    stats
        .wait_for(DEADLINE, "all 20 requests counted in the stats", |s| {
            (s.requests_counted(NS, "hello-00001") >= HELD as f64).then_some(())
        })
        .await;
    assert_eq!(stats.requests_counted(NS, "hello-00001"), HELD as f64);
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a request was answered before any pod existed"
    );

    // A pod appears: app (20 ms per request) behind a queue-proxy with cc 2.
    let pod = Pod::start(id_app(Duration::from_millis(20)).await, "hello-00001", 2).await;
    let listed = Instant::now();
    let mut with_pod = revs.clone();
    with_pod[3] = Rev::new("hello-00001", 2).ready([pod.addr()]);
    activator.set_revisions(&with_pod);
    for (id, handle) in held.into_iter().enumerate() {
        let resp = tokio::time::timeout(DEADLINE, handle)
            .await
            .unwrap_or_else(|_| panic!("held request {id} was not released"))
            .expect("request task");
        assert_eq!(resp.status, StatusCode::OK, "request {id}: {}", resp.text());
        assert_eq!(resp.text(), format!("id={id}"));
    }
    println!(
        "20 held requests served {:?} after the pod was listed",
        listed.elapsed()
    );

    let mut ids: Vec<usize> = pod
        .app
        .seen()
        .iter()
        .map(|s| s.header("x-request-id").unwrap().parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..HELD).collect::<Vec<_>>(),
        "each request exactly once"
    );
    assert!(
        pod.app.concurrency.max() <= 2,
        "the app saw {} requests at once with containerConcurrency 2",
        pod.app.concurrency.max()
    );
    assert!(stats.bad_frames().is_empty(), "{:?}", stats.bad_frames());
    for p in parked {
        p.abort();
    }
    activator.assert_healthy();
    let mut pod = pod;
    pod.qp.assert_healthy();
}

/// Rollout (spec §3.6, §5.6): under continuous load (600 requests over 3 s, at most 8 in flight)
/// the discovery file replaces pod A by a new pod C. No request fails, C takes traffic, and once
/// the switch is applied A gets nothing beyond the requests already leased to it (at most cc).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_replaces_a_pod_without_failures() {
    const TOTAL: usize = 600;
    const WORKERS: usize = 8;
    const SPACING: Duration = Duration::from_millis(5);
    let stats = StatsReceiver::start().await;
    let name = "roll-00001";
    let (p1, p2, c) = tokio::join!(
        async { Pod::start(id_app(Duration::from_millis(10)).await, name, 2).await },
        async { Pod::start(id_app(Duration::from_millis(10)).await, name, 2).await },
        async { Pod::start(id_app(Duration::from_millis(10)).await, name, 2).await },
    );
    // First-available packs requests onto the lowest-sorted dest: make that one A, so that A is
    // guaranteed traffic before the switch.
    let (a, b) = if p1.addr().to_string() < p2.addr().to_string() {
        (p1, p2)
    } else {
        (p2, p1)
    };
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 2).ready([a.addr(), b.addr()])])
        .start();
    let addr = activator.addr();
    // Both pods probed healthy before the load starts.
    eventually(DEADLINE, "the first request to succeed", || async move {
        let r = send(addr, rev_get("/", NS, name)).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;

    let start = tokio::time::Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut sender = h1_connect(addr).await.expect("connect");
                let mut failures = Vec::new();
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if k >= TOTAL {
                        return failures;
                    }
                    tokio::time::sleep_until(start + SPACING * k as u32).await;
                    let request = rev_req("GET", "/", NS, name)
                        .header("x-request-id", k.to_string())
                        .body(empty())
                        .unwrap();
                    let outcome = async {
                        sender.ready().await?;
                        collect(sender.send_request(request).await?).await
                    };
                    match tokio::time::timeout(EXCHANGE_LIMIT, outcome).await {
                        Ok(Ok(r))
                            if r.status == StatusCode::OK && r.text() == format!("id={k}") => {}
                        Ok(Ok(r)) => failures.push(format!("#{k}: {} {}", r.status, r.text())),
                        Ok(Err(e)) => {
                            failures.push(format!("#{k}: {e}"));
                            sender = h1_connect(addr).await.expect("reconnect");
                        }
                        Err(_) => failures.push(format!("#{k}: timed out")),
                    }
                }
            })
        })
        .collect();

    // Mid-way: replace A by C.
    tokio::time::sleep_until(start + SPACING * (TOTAL / 2) as u32).await;
    let a_before_switch = a.app.concurrency.total();
    activator.set_revisions(&[Rev::new(name, 2).ready([b.addr(), c.addr()])]);
    eventually(DEADLINE, "the new pod C to receive traffic", || {
        std::future::ready((c.app.concurrency.total() > 0).then_some(()))
    })
    .await;
    let a_at_switch = a.app.concurrency.total();

    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    let elapsed = start.elapsed();
    let (na, nb, nc) = (
        a.app.concurrency.total(),
        b.app.concurrency.total(),
        c.app.concurrency.total(),
    );
    println!(
        "rollout: {TOTAL} requests in {elapsed:?}; A {na} (at switch {a_at_switch}), B {nb}, C {nc}"
    );
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert_eq!(
        na + nb + nc,
        TOTAL + 1,
        "every request reached exactly one app"
    );
    assert!(a_before_switch > 0, "A got no traffic before the switch");
    assert!(
        na <= a_at_switch + 2,
        "A received {} requests after C started taking traffic (only the ≤ 2 already leased \
         to it may arrive late)",
        na - a_at_switch
    );
    assert!(nc > 0);
}

/// Spec §2.11: a request queued for a revision without pods longer than its `timeoutSeconds`
/// (2 s) gets `504` with body exactly `activator request timeout` (queueing counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_times_out_with_504() {
    let stats = StatsReceiver::start().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("slow-00001", 1).timeout(2)])
        .start();
    let start = Instant::now();
    let resp = send(activator.addr(), rev_get("/", NS, "slow-00001")).await;
    let elapsed = start.elapsed();
    println!("504 after {elapsed:?}");
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.text(), "activator request timeout");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "504 after {elapsed:?}, expected ~2 s"
    );
}

/// `ACTIVATOR_MAX_QUEUED_PER_REVISION=5` (our option; spec §2.12 queue-full answer): with no
/// pods, 8 concurrent requests → 3 get `503 pending request queue full\n` at once, the other 5
/// wait and are served when a pod appears. For a finite (cc 2) and the infinite (cc 0) breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cap_rejects_the_excess_with_503() {
    let stats = StatsReceiver::start().await;
    let revs = [Rev::new("capped-finite", 2), Rev::new("capped-infinite", 0)];
    let activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_MAX_QUEUED_PER_REVISION", 5)
        .revisions(&revs)
        .start();
    let addr = activator.addr();
    let mut waiting = Vec::new();
    for rev in &revs {
        let start = Instant::now();
        let mut handles: Vec<_> = (0..8)
            .map(|id| spawn_request(addr, &rev.name, id))
            .collect();
        let mut rejected = 0;
        while rejected < 3 {
            let done = eventually(DEADLINE, "a queue-full answer", || {
                std::future::ready(handles.iter().position(|h| h.is_finished()))
            })
            .await;
            let resp = handles.remove(done).await.expect("request task");
            assert_eq!(
                resp.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                resp.text()
            );
            assert_eq!(resp.text(), "pending request queue full\n");
            assert!(resp
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")));
            rejected += 1;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(2),
            "{}: the 3 rejections took {elapsed:?}",
            rev.name
        );
        waiting.push(handles);
    }
    // Nothing else is answered while there is no pod.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for handles in &waiting {
        assert_eq!(handles.iter().filter(|h| h.is_finished()).count(), 0);
    }
    let app = id_app(Duration::ZERO).await;
    activator.set_revisions(&[
        Rev::new("capped-finite", 2).ready([app.addr]),
        Rev::new("capped-infinite", 0).ready([app.addr]),
    ]);
    for handle in waiting.into_iter().flatten() {
        let resp = tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("queued request served")
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    assert_eq!(app.seen_count(), 10);
}

/// Lazy per-revision state end to end (`ACTIVATOR_REVISION_IDLE_TIMEOUT`): with a 20 ms idle
/// timeout the revision's throttler and watcher are dropped between bursts and re-created by
/// the next request, sometimes while requests of a burst are still arriving. Every request is
/// answered by the app, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_eviction_with_requests_arriving_loses_and_duplicates_nothing() {
    const NAME: &str = "idle-00001";
    let pod = Pod::start(id_app(Duration::ZERO).await, NAME, 0).await;
    let stats = StatsReceiver::start().await;
    let activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_REVISION_IDLE_TIMEOUT", "20ms")
        .revisions(&[Rev::new(NAME, 0).ready([pod.addr()])])
        .start();
    activator.wait_healthy().await;
    let mut sent = 0;
    for round in 0..12 {
        let burst: Vec<_> = (0..10)
            .map(|i| {
                sent += 1;
                let id = sent;
                let addr = activator.addr();
                let task = tokio::spawn(async move {
                    // Spread over about one sweep period.
                    tokio::time::sleep(Duration::from_millis(i)).await;
                    spawn_request(addr, NAME, id).await.unwrap()
                });
                (id, task)
            })
            .collect();
        for (id, task) in burst {
            let resp = task.await.unwrap();
            assert_eq!(resp.status, StatusCode::OK, "request {id}: {}", resp.text());
            assert_eq!(resp.text(), format!("id={id}"));
        }
        if round % 2 == 0 {
            // Quiet for more than one and a half idle timeouts: evicted meanwhile.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    // The revision was (re)created several times, and no request reached the app twice.
    activator.wait_log("watching revision", 4).await;
    let mut seen: Vec<usize> = pod
        .app
        .seen()
        .iter()
        .filter_map(|s| s.header("x-request-id"))
        .map(|id| id.parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=sent).collect::<Vec<_>>());
}
