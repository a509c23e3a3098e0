//! Lazy per-revision state (see `backends/lazy.rs`): created by the first request, evicted when
//! idle and unused, re-created seeded with what the last watcher knew.

use super::*;

const IDLE: Duration = Duration::from_secs(60);

fn lazy_settings() -> BackendSettings {
    BackendSettings {
        revision_idle_timeout: Some(IDLE),
        ..settings()
    }
}

async fn lease(throttler: &Throttler) -> crate::throttler::Lease {
    timeout(Duration::from_secs(5), throttler.try_acquire(&id()))
        .await
        .expect("no lease within 5 s")
        .expect("lease")
}

#[tokio::test(start_paused = true)]
async fn a_revision_nobody_requests_has_no_throttler_and_no_probe() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], None)),
        prober.clone(),
        lazy_settings(),
    );
    h.none_within(Duration::from_secs(5)).await;
    assert!(h.throttler.is_empty());
    assert_eq!(prober.calls(), 0);

    // The first request creates it, its pods are probed, and it is served.
    let first = lease(&h.throttler).await;
    assert_eq!(first.dest(), P1);
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert_eq!(prober.calls(), 1);
    drop(first);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_revision_is_evicted_and_comes_back_without_a_probe() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut e = entry(NAME, Protocol::Http1, private(&[P1], &[], None));
    e.public.activator_ips = vec!["10.0.0.1".into(), "10.0.0.2".into()];
    let mut h = Harness::start(Snapshot::new([e]), prober.clone(), lazy_settings());
    drop(lease(&h.throttler).await);
    assert_eq!(h.next_for_default().await, pods(&[P1]));

    // Requests within the idle timeout keep it.
    for _ in 0..3 {
        tokio::time::sleep(IDLE / 2).await;
        drop(lease(&h.throttler).await);
    }
    assert!(h.throttler.revision(&id()).is_some());
    // Between one and one and a half idle timeouts of quiet: gone.
    tokio::time::sleep(IDLE + IDLE / 2 + Duration::from_millis(10)).await;
    assert!(h.throttler.revision(&id()).is_none());

    // Back: routed at once from the seed (no probe), activators applied again.
    let again = lease(&h.throttler).await;
    assert_eq!(again.dest(), P1);
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert_eq!(prober.calls(), 1);
    let revision = h.throttler.revision(&id()).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (revision.activator_count(), revision.activator_index()),
        (2, 0)
    );
    h.none_within(Duration::from_secs(1)).await;
    drop(again);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_seed_is_dropped_when_the_pods_change_while_evicted() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], None)),
        prober.clone(),
        lazy_settings(),
    );
    drop(lease(&h.throttler).await);
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    tokio::time::sleep(IDLE * 2).await;
    assert!(h.throttler.revision(&id()).is_none());

    // P1 left, P2 came: no update while unused, and the next request probes P2.
    h.publish(one(private(&[P2], &[], None)));
    h.none_within(Duration::from_secs(1)).await;
    let next = lease(&h.throttler).await;
    assert_eq!(next.dest(), P2);
    assert_eq!(h.next_for_default().await, pods(&[P2]));
    assert_eq!((prober.calls_to(P1), prober.calls_to(P2)), (1, 1));
    drop(next);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_revision_in_use_is_never_evicted() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], None)),
        prober.clone(),
        lazy_settings(),
    );
    // A long request (a lease held for ten idle timeouts).
    let held = lease(&h.throttler).await;
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    let revision = h.throttler.revision(&id()).unwrap();
    tokio::time::sleep(IDLE * 10).await;
    assert!(Arc::ptr_eq(
        &h.throttler.revision(&id()).unwrap(),
        &revision
    ));
    // A request waiting for a slot (cc 1, the only slot held) keeps it too.
    let waiting = tokio::spawn({
        let throttler = h.throttler.clone();
        async move {
            throttler
                .try_acquire(&id())
                .await
                .map(|l| l.dest().to_owned())
        }
    });
    drop(revision);
    tokio::time::sleep(IDLE * 3).await;
    assert!(h.throttler.revision(&id()).is_some());
    drop(held);
    assert_eq!(waiting.await.unwrap().unwrap(), P1);
    tokio::time::sleep(IDLE * 2).await;
    assert!(h.throttler.revision(&id()).is_none());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_revision_removed_from_discovery_after_its_first_request_is_dropped() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], None)),
        prober.clone(),
        lazy_settings(),
    );
    drop(lease(&h.throttler).await);
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.publish(Snapshot::default());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(h.throttler.is_empty());
    assert!(matches!(
        h.throttler.try_acquire(&id()).await,
        Err(crate::throttler::ThrottlerError::RevisionNotFound(_))
    ));
    h.stop().await;
}

/// Requests keep arriving, in bursts separated by more than the idle timeout, while the
/// revision is evicted and re-created many times: every request gets exactly one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_with_requests_arriving_loses_and_duplicates_nothing() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut e = entry(NAME, Protocol::Http1, private(&[P1], &[], None));
    Arc::make_mut(&mut e.spec).container_concurrency = 0;
    let mut h = Harness::start(
        Snapshot::new([e]),
        prober.clone(),
        BackendSettings {
            revision_idle_timeout: Some(Duration::from_millis(2)),
            ..settings()
        },
    );
    let served = Arc::new(AtomicUsize::new(0));
    let mut total = 0;
    for round in 0..60u64 {
        let requests = 20 + (round % 7) as usize;
        total += requests;
        let tasks: Vec<_> = (0..requests)
            .map(|i| {
                let throttler = h.throttler.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    // Spread over the sweep period so some arrive during an eviction.
                    tokio::time::sleep(Duration::from_micros((i as u64 * 97) % 1500)).await;
                    let lease = timeout(Duration::from_secs(10), throttler.try_acquire(&id()))
                        .await
                        .expect("a request was lost")
                        .expect("lease");
                    assert_eq!(lease.dest(), P1);
                    served.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // Quiet for longer than the idle timeout (1–1.5 × 2 ms) every other round.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    }
    assert_eq!(served.load(Ordering::Relaxed), total);
    // Evictions did happen: each re-creation applied its seed (one update each).
    let mut updates = 0;
    while h.updates.try_recv().is_ok() {
        updates += 1;
    }
    assert!(updates > 5, "only {updates} activations in 60 rounds");
    // All from seeds but the first: pods were probed once.
    assert_eq!(prober.calls_to(P1), 1);
    h.stop().await;
}
