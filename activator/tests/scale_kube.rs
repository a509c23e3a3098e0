//! A benchmark, not a CI test (ignored): the activator with the Kubernetes source at cluster
//! scale, against the in-test API server (real list/watch with resourceVersions). Run with
//!
//!     cargo test --release -p activator --test scale_kube -- --ignored --nocapture
//!
//! (`SCALE_REVISIONS`, default 10000, revisions × 2 ready pods in 100 namespaces). It prints:
//! start (exec) → listening (the initial lists of every watch), idle RSS after the startup
//! probing; for 1,000 Endpoints updates spread across revisions, the activator CPU per update;
//! for 25 scaled-to-zero revisions with a request held, the time from the Endpoints update that
//! gives them a pod to the held request's answer (the capacity change seen from outside); and a
//! churn of 1,000 updates per second for 30 s: activator CPU and the p50/p99 of requests to a
//! ready revision, next to the same requests without churn.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::fake_api::*;
use support::*;

const NAMESPACES: usize = 100;

fn in_namespace(mut obj: Value, namespace: &str) -> Value {
    obj["metadata"]["namespace"] = Value::String(namespace.to_owned());
    obj
}

fn namespace_of(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// CPU seconds of every thread of `pid` (schedstat: nanoseconds).
fn cpu_seconds(pid: u32) -> f64 {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / 1e9
}

/// Waits until the activator used less than 2% of a core over one second.
async fn settle(pid: u32) {
    for _ in 0..120 {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(pid) - before < 0.02 {
            return;
        }
    }
    panic!("the activator never went idle");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Sends requests to `name` in `namespace` for `duration` (one at a time, 2 ms apart) and
/// returns the sorted latencies in ms.
async fn latencies(addr: SocketAddr, namespace: &str, name: &str, duration: Duration) -> Vec<f64> {
    let end = Instant::now() + duration;
    let mut out = Vec::new();
    while Instant::now() < end {
        let start = Instant::now();
        let resp = send(addr, rev_get("/", namespace, name)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out.sort_by(f64::total_cmp);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release -p activator --test scale_kube -- --ignored --nocapture"]
async fn kubernetes_source_at_scale() {
    let revisions: usize = std::env::var("SCALE_REVISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let (a, b) = (App::ok().await, App::ok().await);
    let pods = [a.addr, b.addr];
    for i in 0..revisions {
        let (ns, name) = (namespace_of(i), format!("rev-{i}"));
        api.put(in_namespace(revision(&name, 10), &ns));
        api.put(in_namespace(private_endpoints(&name, &pods, &[]), &ns));
    }
    // Scaled-to-zero revisions for the release measurement.
    const COLD: usize = 25;
    for j in 0..COLD {
        let name = format!("cold-{j}");
        api.put(in_namespace(revision(&name, 10), "ns-cold"));
        api.put(in_namespace(private_endpoints(&name, &[], &[]), "ns-cold"));
    }
    let stats = StatsReceiver::start().await;
    let kubeconfig = api.write_kubeconfig(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let config = ActivatorConfig::new(&stats.url())
        .without("ACTIVATOR_DISCOVERY_FILE")
        .env("KUBECONFIG", kubeconfig.display().to_string())
        .env("ACTIVATOR_LOG_LEVEL", "error");
    let started = Instant::now();
    let activator = tokio::task::spawn_blocking(move || config.start())
        .await
        .unwrap();
    let listening = started.elapsed();
    let pid = activator.pid();
    let addr = activator.addr();
    settle(pid).await;
    let idle_rss = activator.rss_kib().unwrap_or(0);

    // 1,000 Endpoints updates spread across revisions (one pod leaves, or comes back).
    let cpu_before = cpu_seconds(pid);
    for k in 0..1000usize {
        let i = (k * 7919) % revisions;
        let (ns, name) = (namespace_of(i), format!("rev-{i}"));
        let ready: &[SocketAddr] = if k.is_multiple_of(2) {
            &pods[..1]
        } else {
            &pods
        };
        api.put(in_namespace(private_endpoints(&name, ready, &[]), &ns));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle(pid).await;
    // The settle loop's idle seconds cost (almost) nothing; subtracted no further.
    let cpu_per_update_ms = (cpu_seconds(pid) - cpu_before) * 1000.0 / 1000.0;

    // Held requests released by an Endpoints update.
    let mut release_ms = Vec::new();
    for j in 0..COLD {
        let name = format!("cold-{j}");
        let held = tokio::spawn(send(addr, rev_get("/", "ns-cold", &name)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "{name}: the request was not held");
        let updated = Instant::now();
        api.put(in_namespace(
            private_endpoints(&name, &pods[..1], &[]),
            "ns-cold",
        ));
        let resp = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        release_ms.push(updated.elapsed().as_secs_f64() * 1000.0);
    }
    release_ms.sort_by(f64::total_cmp);

    // Churn: 1,000 updates per second for 30 s, with requests to a ready revision meanwhile.
    let quiet = latencies(addr, "ns-1", "rev-1", Duration::from_secs(5)).await;
    let churn_for = Duration::from_secs(30);
    let churn = async {
        let end = Instant::now() + churn_for;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut k = 0usize;
        while Instant::now() < end {
            tick.tick().await;
            let i = 2 + (k * 7919) % (revisions - 2);
            let ready: &[SocketAddr] = if k.is_multiple_of(2) {
                &pods[..1]
            } else {
                &pods
            };
            api.put(in_namespace(
                private_endpoints(&format!("rev-{i}"), ready, &[]),
                &namespace_of(i),
            ));
            k += 1;
        }
        k
    };
    let cpu_before = cpu_seconds(pid);
    let churn_started = Instant::now();
    let (updates, busy) = tokio::join!(churn, latencies(addr, "ns-1", "rev-1", churn_for));
    let churn_cpu = (cpu_seconds(pid) - cpu_before) / churn_started.elapsed().as_secs_f64();

    println!(
        "activator, Kubernetes discovery: {revisions} revisions x 2 ready pods in {NAMESPACES} namespaces"
    );
    println!(
        "  exec -> listening (initial lists)        {:8.0} ms",
        listening.as_secs_f64() * 1000.0
    );
    println!(
        "  idle RSS after startup probing           {:8.1} MB ({:.2} KiB per revision)",
        idle_rss as f64 / 1024.0,
        idle_rss as f64 / revisions as f64
    );
    println!("  CPU per Endpoints update (1,000 updates) {cpu_per_update_ms:8.3} ms");
    println!(
        "  update -> held request answered          {:8.1} ms median, {:.1} ms max ({COLD} revisions)",
        percentile(&release_ms, 0.5),
        release_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  churn {:.0} updates/s for 30 s: activator CPU {:.1}% of a core",
        updates as f64 / churn_for.as_secs_f64(),
        churn_cpu * 100.0
    );
    println!(
        "  requests to a ready revision, p50 / p99:  quiet {:.2} / {:.2} ms, churn {:.2} / {:.2} ms",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99)
    );
}
