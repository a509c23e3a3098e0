//! Keep-alive connection pools to pods, one per destination address, created on first use and
//! swept once nobody has used them for a whole sweep period (pods come and go; pools must not
//! accumulate).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use knative_common::proxy::{Upstream, UpstreamHandle};

/// How often unused pools are dropped (Go's idle-connection timeout).
pub const SWEEP_PERIOD: Duration = Duration::from_secs(90);

struct DestPool {
    upstream: Arc<Upstream>,
    used: AtomicBool,
}

/// The pools, keyed by pod (or cluster IP) address.
pub struct DestPools {
    pools: DashMap<SocketAddr, DestPool>,
    max_idle_per_host: usize,
}

impl DestPools {
    /// Pools keeping at most `max_idle_per_host` idle connections each
    /// (`MAX_IDLE_PROXY_CONNS_PER_HOST`).
    pub fn new(max_idle_per_host: usize) -> Self {
        DestPools {
            pools: DashMap::new(),
            max_idle_per_host,
        }
    }

    /// The pool for `addr`.
    #[inline]
    pub fn get(&self, addr: SocketAddr) -> UpstreamHandle {
        if let Some(pool) = self.pools.get(&addr) {
            pool.used.store(true, Ordering::Relaxed);
            return UpstreamHandle::Shared(pool.upstream.clone());
        }
        let pool = self.pools.entry(addr).or_insert_with(|| DestPool {
            upstream: Arc::new(Upstream::new(addr, self.max_idle_per_host)),
            used: AtomicBool::new(true),
        });
        UpstreamHandle::Shared(pool.upstream.clone())
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether there are no pools.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Drops pools not used since the previous sweep and not held by any request; their idle
    /// connections close.
    pub fn sweep(&self) {
        self.pools.retain(|_, pool| {
            pool.used.swap(false, Ordering::Relaxed) || Arc::strong_count(&pool.upstream) > 1
        });
    }

    /// Sweeps every [`SWEEP_PERIOD`], forever.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_PERIOD);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_pools_are_swept_and_held_ones_kept() {
        let pools = DestPools::new(4);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        drop(pools.get(a));
        let held = pools.get(b);
        pools.sweep(); // both were used since creation
        assert_eq!(pools.len(), 2);
        pools.sweep(); // a unused and unheld; b unused but held
        assert_eq!(pools.len(), 1);
        drop(held);
        pools.sweep();
        assert!(pools.is_empty());
    }
}
