//! Memory per idle keep-alive connection and after a burst (issue 17; README "Memory"): idle
//! HTTP/1 connections are parked without hyper's buffers, idle h2c connections give h2's
//! buffers back, and jemalloc gives freed pages back.
//! Alone in its test binary so that no other test's connections skew the figures. Connection
//! counts stay below a 1024-descriptor limit (test process and activator alike).

mod support;

use std::time::Duration;

use support::*;
use test_support::conn_memory::{
    assert_idle_connections_small, assert_memory_goes_back, roundtrip, Wire,
};

const REV: &str = "mem-00001";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: activator\r\n\
    Knative-Serving-Namespace: default\r\nKnative-Serving-Revision: mem-00001\r\n\r\n";
const IDLE: usize = 500;
/// Release build at 5,000 connections: ~2.7 KiB each (benches/conn_memory.sh); debug builds
/// are larger. A regression to hyper's buffers held while idle (~19 KiB each in a release
/// build, more in a debug one) fails.
const PER_CONNECTION_LIMIT_KIB: u64 = 14;
/// h2c, idle buffers given back (patched h2, released after 1 s idle): ~5.7 KiB each in a release
/// build at 5,000 connections, ~6.9 KiB in a debug build at 500. A regression to h2's buffers
/// held while idle (~18 KiB each in a release build, ~17.8 KiB in a debug one) fails.
const H2C_PER_CONNECTION_LIMIT_KIB: u64 = 13;
const H2C_HEADERS: &[(&str, &str)] = &[
    ("knative-serving-namespace", "default"),
    ("knative-serving-revision", REV),
];
const BURST: usize = 400;
/// RSS allowed above the idle figure once a burst has ended.
const AFTER_BURST_LIMIT_KIB: u64 = 8 * 1024;
/// Parking takes 1 s of idleness and jemalloc's purge about 1 s more; generous for CI.
const SETTLE: Duration = Duration::from_secs(30);

async fn start(stats: &StatsReceiver, app: &App) -> Activator {
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(REV, 0).ready([app.addr])])
        .start();
    activator.wait_healthy().await;
    // The pod is probed before it gets traffic: wait for the first answered request.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let addr = activator.addr();
        // A panic (a non-200 answer) ends only this spawned attempt.
        let answered = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::time::timeout(Duration::from_secs(2), roundtrip(&mut stream, REQUEST)).await
        });
        if answered.await.map(|r| r.is_ok()).unwrap_or(false) {
            return activator;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pod never got traffic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_small_and_bursts_give_memory_back() {
    let stats = StatsReceiver::start().await;
    let app = App::ok().await;

    let activator = start(&stats, &app).await;
    let idle = assert_idle_connections_small(
        activator.addr(),
        activator.pid(),
        Wire::H1(REQUEST),
        IDLE,
        PER_CONNECTION_LIMIT_KIB,
        SETTLE,
    )
    .await;
    drop(idle);
    drop(activator);

    let activator = start(&stats, &app).await;
    let idle = assert_idle_connections_small(
        activator.addr(),
        activator.pid(),
        Wire::H2c(H2C_HEADERS),
        IDLE,
        H2C_PER_CONNECTION_LIMIT_KIB,
        SETTLE,
    )
    .await;
    drop(idle);
    drop(activator);

    let activator = start(&stats, &app).await;
    assert_memory_goes_back(
        activator.addr(),
        activator.pid(),
        REQUEST,
        BURST,
        AFTER_BURST_LIMIT_KIB,
        SETTLE,
    )
    .await;
}

/// `ACTIVATOR_MAX_CONNECTIONS=2`: parked keep-alive connections keep their slots (a third
/// connection waits), serve their next request, and free their slot when they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_keep_their_connection_slots() {
    let stats = StatsReceiver::start().await;
    let app = App::ok().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(REV, 0).ready([app.addr])])
        .env("ACTIVATOR_MAX_CONNECTIONS", 2)
        .start();
    activator.wait_healthy().await;
    let request = || rev_req("GET", "/", NS, REV).body(empty()).unwrap();
    let mut first = h1_connect(activator.addr()).await.unwrap();
    let mut second = h1_connect(activator.addr()).await.unwrap();
    for c in [&mut first, &mut second] {
        let resp = collect(c.send_request(request()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, http::StatusCode::OK);
    }
    // Idle well past the park delay (1 s): both connections are parked by now.
    tokio::time::sleep(knative_common::park::PARK_DELAY * 3).await;
    let addr = activator.addr();
    let third = tokio::spawn(async move {
        let mut c = h1_connect(addr).await.unwrap();
        let req = rev_req("GET", "/third", NS, REV).body(empty()).unwrap();
        collect(c.send_request(req).await.unwrap()).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!third.is_finished(), "a third connection was served");
    let resp = collect(second.send_request(request()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.status,
        http::StatusCode::OK,
        "a parked connection serves again"
    );
    drop(first);
    let resp = tokio::time::timeout(DEADLINE, third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, http::StatusCode::OK);
}
