//! Memory per idle keep-alive connection and after a burst (issue 17; README "Memory"): idle
//! HTTP/1 connections are parked without hyper's buffers, idle h2c connections give h2's
//! buffers back, and jemalloc gives freed pages back.
//! Alone in its test binary so that no other test's connections skew the figures. Connection
//! counts stay below a 1024-descriptor limit (test process and queue-proxy alike).

mod support;

use std::time::Duration;

use support::*;
use test_support::conn_memory::{assert_idle_connections_small, assert_memory_goes_back, Wire};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: qp\r\n\r\n";
const IDLE: usize = 500;
/// Release build at 5,000 connections: ~4.5 KiB each (benches/conn_memory.sh); debug builds
/// are larger (~10 KiB at 500). A regression to hyper's buffers held while idle (~20 KiB each
/// in a release build, more in a debug one) fails.
const PER_CONNECTION_LIMIT_KIB: u64 = 14;
/// h2c, idle buffers given back (patched h2, released after 1 s idle): ~7.2 KiB each in a release
/// build at 5,000 connections, ~8.1 KiB in a debug build at 500. A regression to h2's buffers
/// held while idle (~18 KiB each in a release build, ~19.4 KiB in a debug one) fails.
const H2C_PER_CONNECTION_LIMIT_KIB: u64 = 13;
const BURST: usize = 400;
/// RSS allowed above the idle figure once a burst has ended.
const AFTER_BURST_LIMIT_KIB: u64 = 8 * 1024;
/// The same at CC=0, where the pool to the app keeps all `BURST` connections idle.
const AFTER_BURST_POOL_LIMIT_KIB: u64 = 4 * 1024;
/// Parking takes 1 s of idleness and jemalloc's purge about 1 s more; generous for CI.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_small_and_bursts_give_memory_back() {
    let app = App::ok().await;

    let qp = QpConfig::new(app.port()).start();
    let idle = assert_idle_connections_small(
        qp.addr(),
        qp.pid(),
        Wire::H1(REQUEST),
        IDLE,
        PER_CONNECTION_LIMIT_KIB,
        SETTLE,
    )
    .await;
    drop(idle);
    drop(qp);

    let qp = QpConfig::new(app.port()).start();
    let idle = assert_idle_connections_small(
        qp.addr(),
        qp.pid(),
        Wire::H2c(&[]),
        IDLE,
        H2C_PER_CONNECTION_LIMIT_KIB,
        SETTLE,
    )
    .await;
    drop(idle);
    drop(qp);

    // CC=100: the pool keeps at most 100 idle connections to the app after the burst.
    let qp = QpConfig::new(app.port()).cc(100).start();
    assert_memory_goes_back(
        qp.addr(),
        qp.pid(),
        REQUEST,
        BURST,
        AFTER_BURST_LIMIT_KIB,
        SETTLE,
    )
    .await;
    drop(qp);

    // CC=0: the pool keeps every connection of the burst (up to 1000) open to the app; parked,
    // they cost a socket and a few hundred bytes each instead of hyper's buffers (~20 KiB each
    // in a release build, more in a debug one: 400 of them alone would break the bound).
    let qp = QpConfig::new(app.port()).start();
    assert_memory_goes_back(
        qp.addr(),
        qp.pid(),
        REQUEST,
        BURST,
        AFTER_BURST_POOL_LIMIT_KIB,
        SETTLE,
    )
    .await;
}
