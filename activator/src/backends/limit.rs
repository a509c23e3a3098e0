//! A bound on pod probes in flight across all revisions.
//!
//! Every revision's watcher probes its pods in parallel. At startup in a large cluster (say
//! 10,000 revisions with 2 pods each) that would open 20,000 connections at once: a SYN burst
//! the activator's own file-descriptor limit and the node's conntrack table feel before any pod
//! does. [`LimitedProber`] lets at most [`BackendSettings::max_concurrent_probes`] probes run at
//! once; the others wait for a slot, oldest first (Tokio's semaphore is fair). Waiting for a slot
//! counts against the probe round's deadline, as a slow answer would: a probe that cannot start
//! in time is a failed probe and is retried at the next `PROBE_FREQUENCY` tick, so a backlog
//! drains at the rate the limit allows instead of piling up.
//!
//! [`BackendSettings::max_concurrent_probes`]: super::BackendSettings::max_concurrent_probes

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::probe::{ProbeResult, Prober};

/// `prober` with at most `limit` probes in flight (0 = no limit).
#[derive(Debug)]
pub struct LimitedProber<P> {
    inner: Arc<P>,
    slots: Option<Semaphore>,
}

impl<P> LimitedProber<P> {
    /// Wraps `inner`; `limit` 0 means unlimited.
    pub fn new(inner: Arc<P>, limit: usize) -> Self {
        LimitedProber {
            inner,
            slots: (limit > 0).then(|| Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
        }
    }
}

impl<P: Prober> Prober for LimitedProber<P> {
    async fn probe(&self, dest: &str, passthrough_host: Option<&str>) -> ProbeResult {
        let _slot = match &self.slots {
            Some(slots) => match slots.acquire().await {
                Ok(slot) => Some(slot),
                // Never closed; treat as a failed probe rather than panic.
                Err(_) => return ProbeResult::transport_error("probe limiter closed"),
            },
            None => None,
        };
        self.inner.probe(dest, passthrough_host).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts probes in flight and remembers the highest count.
    #[derive(Debug, Default)]
    struct Counting {
        now: AtomicUsize,
        max: AtomicUsize,
        total: AtomicUsize,
    }

    impl Prober for Counting {
        async fn probe(&self, _dest: &str, _host: Option<&str>) -> ProbeResult {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.total.fetch_add(1, Ordering::SeqCst);
            ProbeResult::success()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_limit_probes_run_at_once() {
        let inner = Arc::new(Counting::default());
        let limited = Arc::new(LimitedProber::new(inner.clone(), 8));
        let probes: Vec<_> = (0..200)
            .map(|i| {
                let limited = limited.clone();
                tokio::spawn(async move { limited.probe(&format!("10.0.0.{i}:8012"), None).await })
            })
            .collect();
        for probe in probes {
            assert!(probe.await.unwrap().ok);
        }
        assert_eq!(inner.total.load(Ordering::SeqCst), 200);
        assert_eq!(inner.max.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let inner = Arc::new(Counting::default());
        let limited = Arc::new(LimitedProber::new(inner.clone(), 0));
        let probes: Vec<_> = (0..50)
            .map(|_| {
                let limited = limited.clone();
                tokio::spawn(async move { limited.probe("10.0.0.1:8012", None).await })
            })
            .collect();
        for probe in probes {
            probe.await.unwrap();
        }
        assert_eq!(inner.max.load(Ordering::SeqCst), 50);
    }
}
