//! Criterion benches of the request-path pieces every request pays for: breaker admission
//! (uncontended and contended), the stats accounting, request classification, and the header
//! rewrite (hop-by-hop removal, X-Forwarded-For, forwarded shim, Host restore).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Version};
use knative_common::breaker::Breaker;
use knative_common::classify;
use knative_common::forwarded;
use knative_common::header_scan::{Present, Scan};
use knative_common::headers::FORWARDED;
use knative_common::proxy::rewrite::{
    prepare_request, restore_original_host_at, to_origin_form, PeerIp,
};
use knative_common::stats::RequestStats;

fn breaker(c: &mut Criterion) {
    let b = Breaker::for_container_concurrency(10).expect("valid breaker");
    c.bench_function("breaker/uncontended admit+execute+release", |bench| {
        bench.iter(|| {
            let permit = b.try_permit().expect("slot");
            black_box(&permit);
        })
    });

    let shared: &'static Breaker = Box::leak(Box::new(
        Breaker::for_container_concurrency(10).expect("valid"),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let contender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = black_box(shared.try_permit());
            }
        })
    };
    c.bench_function(
        "breaker/contended (2 threads) admit+execute+release",
        |bench| {
            bench.iter(|| {
                let _ = black_box(shared.try_permit());
            })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = contender.join();
}

fn stats(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let stats = RequestStats::new();
    c.bench_function("stats/request in+out", |bench| {
        bench.iter(|| {
            let in_flight = stats.request_in(black_box(false));
            drop(in_flight);
        })
    });
    c.bench_function("stats/report", |bench| {
        bench.iter(|| black_box(stats.report()))
    });
}

fn typical_request() -> Request<()> {
    Request::builder()
        .version(Version::HTTP_11)
        .uri("/api/items?id=42")
        .header("host", "hello.default.example.com")
        .header("user-agent", "wrk/4.2")
        .header("accept", "*/*")
        .header("k-proxy-request", "activator")
        .header("k-original-host", "hello.default.example.com")
        .header("knative-serving-revision", "hello-00001")
        .header("knative-serving-namespace", "default")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "https")
        .body(())
        .expect("valid request")
}

fn headers(c: &mut Criterion) {
    let peer = PeerIp::new("10.4.5.6:4321".parse().expect("addr"));
    c.bench_function("headers/classify", |bench| {
        let req = typical_request();
        bench.iter(|| {
            let h = black_box(req.headers());
            black_box((
                classify::is_health_check(h),
                classify::is_network_probe(h),
                classify::is_kubelet_probe(h),
                classify::is_proxied(h),
            ))
        })
    });
    c.bench_function("headers/presence scan", |bench| {
        let req = typical_request();
        bench.iter(|| black_box(Present::scan(black_box(req.headers()))))
    });
    c.bench_function(
        "headers/full rewrite (shim+host+hop-by-hop+xff+uri)",
        |bench| {
            bench.iter_batched(
                typical_request,
                |mut req| {
                    // As the queue-proxy's handler does: one scan, `Forwarded` from it, and
                    // `K-Original-Host` removed where the scan found it.
                    let scan = Scan::of(req.headers());
                    let original_host_at = scan.index(Present::K_ORIGINAL_HOST);
                    if let Some(value) = forwarded::forwarded_value(&scan) {
                        req.headers_mut().insert(FORWARDED, value);
                    }
                    restore_original_host_at(&mut req, original_host_at);
                    black_box(prepare_request(&mut req, &peer));
                    to_origin_form(&mut req);
                    req
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, breaker, stats, headers);
criterion_main!(benches);
