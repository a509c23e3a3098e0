//! Keep-alive connection pools to pods, one per destination address, created on first use and
//! swept once nobody has used them for a whole sweep period (pods come and go; pools must not
//! accumulate).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use http::uri::Authority;
use knative_common::proxy::{Upstream, UpstreamHandle};
use knative_common::timeout::TimerReuse;

use crate::tls::UpstreamTrust;

/// Port of a pod's queue-proxy TLS listener (upstream's `BackendHTTPSPort`).
pub const QUEUE_TLS_PORT: u16 = 8112;
/// Port of a private Service's cluster IP in TLS mode.
pub const CLUSTER_IP_TLS_PORT: u16 = 443;

/// How often unused pools are dropped (Go's idle-connection timeout).
pub const SWEEP_PERIOD: Duration = Duration::from_secs(90);

struct DestPool {
    upstream: Arc<Upstream>,
    used: AtomicBool,
    /// `ip:port` as a URI authority (HTTP/2 requests are addressed with it), parsed once.
    authority: Option<Authority>,
}

/// A TLS pool: its connections were verified for one revision namespace only.
struct TlsDestPool {
    upstream: Arc<Upstream>,
    used: AtomicBool,
    namespace: Box<str>,
    host: Arc<str>,
}

/// System-internal TLS targets (spec §2.13, §9).
struct TlsTargets {
    trust: Arc<UpstreamTrust>,
    /// Replaces the port of pod dests (8112; tests override it).
    pod_port: u16,
    pools: DashMap<SocketAddr, TlsDestPool, crate::FastHash>,
}

/// The pools, keyed by pod (or cluster IP) address. A pool is in an `Arc` of its own so that
/// the thread's last one can be kept without the map (see [`DestPools::with_pool`]).
pub struct DestPools {
    pools: DashMap<SocketAddr, Arc<DestPool>, crate::FastHash>,
    /// These pools among all (the thread's last pool names its `DestPools`).
    id: u64,
    max_idle_per_host: usize,
    tls: Option<TlsTargets>,
    /// The runtime whose requests these pools serve, for their timers' reuse: kept here, once
    /// per worker, rather than in each connection's service (8 more bytes in every connection's
    /// task took it to a larger allocation class: 0.35 KiB more per idle connection).
    timers: OnceLock<TimerReuse>,
}

/// Source of [`DestPools::id`].
static DEST_POOLS: AtomicU64 = AtomicU64::new(0);

/// The plaintext pool this thread's requests used last.
struct LastPool {
    pools: u64,
    addr: SocketAddr,
    /// Weak: a pool the sweep drops is not kept by the cache.
    pool: Weak<DestPool>,
}

thread_local! {
    static LAST_POOL: RefCell<Option<LastPool>> = const { RefCell::new(None) };
}

/// Where a request goes in TLS mode.
pub struct TlsTarget {
    /// The pool.
    pub upstream: UpstreamHandle,
    /// `ip:port` with the TLS port.
    pub addr: SocketAddr,
    /// The same as text (the outbound `Host`).
    pub host: Arc<str>,
}

impl DestPools {
    /// Pools keeping at most `max_idle_per_host` idle connections each
    /// (`MAX_IDLE_PROXY_CONNS_PER_HOST`).
    pub fn new(max_idle_per_host: usize) -> Self {
        DestPools {
            pools: DashMap::default(),
            id: DEST_POOLS.fetch_add(1, Ordering::Relaxed),
            max_idle_per_host,
            tls: None,
            timers: OnceLock::new(),
        }
    }

    /// Requests served with these pools run on `runtime` (a worker's, or the main one for the
    /// TLS listener): their timers are reused among them.
    pub fn serve_on(&self, runtime: &tokio::runtime::Handle) {
        let _ = self.timers.set(TimerReuse::of(runtime));
    }

    /// Where the timers of requests served with these pools come from ([`DestPools::serve_on`];
    /// none: each request makes its own).
    #[inline]
    pub fn timers(&self) -> TimerReuse {
        self.timers.get().copied().unwrap_or(TimerReuse::NONE)
    }

    /// Pools for TLS mode: requests go to `pod_port` of pods (8112) or 443 of cluster IPs,
    /// verified with `trust` for the revision's namespace.
    pub fn with_tls(max_idle_per_host: usize, trust: Arc<UpstreamTrust>, pod_port: u16) -> Self {
        DestPools {
            tls: Some(TlsTargets {
                trust,
                pod_port,
                pools: DashMap::default(),
            }),
            ..DestPools::new(max_idle_per_host)
        }
    }

    /// Whether upstream connections are TLS.
    #[inline]
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TLS mode: the pool for the dest `addr` (as discovered, with its plaintext port) of a
    /// revision in `namespace`; `None` in plaintext mode. A pool is bound to the namespace its
    /// connections were verified for: a request for another namespace at the same address
    /// (an IP reused by a pod of another namespace) replaces it, so a connection verified for
    /// one namespace never carries another's request.
    pub fn get_tls(
        &self,
        addr: SocketAddr,
        cluster_ip: bool,
        namespace: &str,
    ) -> Option<TlsTarget> {
        let tls = self.tls.as_ref()?;
        let port = if cluster_ip {
            CLUSTER_IP_TLS_PORT
        } else {
            tls.pod_port
        };
        let addr = SocketAddr::new(addr.ip(), port);
        if let Some(pool) = tls.pools.get(&addr) {
            if *pool.namespace == *namespace {
                pool.used.store(true, Ordering::Relaxed);
                return Some(TlsTarget {
                    upstream: UpstreamHandle::Shared(pool.upstream.clone()),
                    addr,
                    host: pool.host.clone(),
                });
            }
        }
        let new_pool = || TlsDestPool {
            upstream: self.tls_upstream(tls, addr, namespace),
            used: AtomicBool::new(true),
            namespace: namespace.into(),
            host: addr.to_string().into(),
        };
        let mut entry = tls.pools.entry(addr).or_insert_with(new_pool);
        if *entry.namespace != *namespace {
            *entry = new_pool();
        }
        Some(TlsTarget {
            upstream: UpstreamHandle::Shared(entry.upstream.clone()),
            addr,
            host: entry.host.clone(),
        })
    }

    fn tls_upstream(&self, tls: &TlsTargets, addr: SocketAddr, namespace: &str) -> Arc<Upstream> {
        Arc::new(Upstream::with_tls(
            addr,
            self.max_idle_per_host,
            tls.trust.for_namespace(namespace),
        ))
    }

    /// The pool for `addr`.
    #[inline]
    pub fn get(&self, addr: SocketAddr) -> UpstreamHandle {
        self.with_pool(addr, |pool| UpstreamHandle::Shared(pool.upstream.clone()))
    }

    /// The pool for `addr` and `addr` as a URI authority (`None` in the impossible case that
    /// it does not parse as one).
    #[inline]
    pub fn get_with_authority(&self, addr: SocketAddr) -> (UpstreamHandle, Option<Authority>) {
        self.with_pool(addr, |pool| {
            (
                UpstreamHandle::Shared(pool.upstream.clone()),
                pool.authority.clone(),
            )
        })
    }

    /// `f` of the pool for `addr`: the one this thread used last when it is `addr`'s and still
    /// alive (no hashing, no shard lock), else the map's (which then becomes the thread's last).
    /// A pool taken from the cache just as the sweep drops it serves this request (as one a
    /// request holds during a sweep would) and is not used again.
    #[inline]
    fn with_pool<T>(&self, addr: SocketAddr, f: impl FnOnce(&DestPool) -> T) -> T {
        let last = LAST_POOL
            .try_with(|last| {
                let last = last.borrow();
                let last = last.as_ref()?;
                if last.pools != self.id || last.addr != addr {
                    return None;
                }
                last.pool.upgrade()
            })
            .ok()
            .flatten();
        let pool = match last {
            Some(pool) => pool,
            None => {
                let pool = match self.pools.get(&addr) {
                    Some(pool) => Arc::clone(&pool),
                    None => Arc::clone(&self.pools.entry(addr).or_insert_with(|| {
                        Arc::new(DestPool {
                            upstream: Arc::new(Upstream::new(addr, self.max_idle_per_host)),
                            used: AtomicBool::new(true),
                            authority: Authority::try_from(addr.to_string()).ok(),
                        })
                    })),
                };
                let _ = LAST_POOL.try_with(|last| {
                    *last.borrow_mut() = Some(LastPool {
                        pools: self.id,
                        addr,
                        pool: Arc::downgrade(&pool),
                    });
                });
                pool
            }
        };
        // A load, and a store only on the first use after a sweep (as the revision's flag).
        if !pool.used.load(Ordering::Relaxed) {
            pool.used.store(true, Ordering::Relaxed);
        }
        f(&pool)
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.pools.len() + self.tls.as_ref().map_or(0, |t| t.pools.len())
    }

    /// Whether there are no pools.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops pools not used since the previous sweep and not held by any request; their idle
    /// connections close.
    pub fn sweep(&self) {
        self.pools.retain(|_, pool| {
            pool.used.swap(false, Ordering::Relaxed) || Arc::strong_count(&pool.upstream) > 1
        });
        if let Some(tls) = &self.tls {
            tls.pools.retain(|_, pool| {
                pool.used.swap(false, Ordering::Relaxed) || Arc::strong_count(&pool.upstream) > 1
            });
        }
    }

    /// Sweeps every [`SWEEP_PERIOD`], forever.
    pub async fn run_sweeper(&self) {
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
        let (held, authority) = pools.get_with_authority(b);
        assert_eq!(authority.unwrap(), "127.0.0.1:2");
        pools.sweep(); // both were used since creation
        assert_eq!(pools.len(), 2);
        pools.sweep(); // a unused and unheld; b unused but held
        assert_eq!(pools.len(), 1);
        drop(held);
        pools.sweep();
        assert!(pools.is_empty());
    }

    /// The thread's last pool is the map's: the same pool again, a new one (in the map) once
    /// the sweep dropped it, and never another `DestPools`' pool.
    #[test]
    fn the_threads_last_pool_is_the_maps() {
        let pools = DestPools::new(4);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = pools.get(a);
        let again = pools.get(a);
        assert!(std::ptr::eq(&*first, &*again));
        drop((first, again));
        pools.sweep(); // used since creation
        assert_eq!(pools.len(), 1);
        let kept = pools.get(a); // from the cache: marks it used
        drop(kept);
        pools.sweep();
        assert_eq!(pools.len(), 1, "used through the cache, so kept");
        pools.sweep();
        assert!(pools.is_empty());
        let fresh = pools.get(a);
        assert_eq!(pools.len(), 1);
        assert!(std::ptr::eq(&*fresh, &*pools.get(a)));
        let other = DestPools::new(4);
        let theirs = other.get(a);
        assert!(!std::ptr::eq(&*fresh, &*theirs));
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn tls_pools_use_tls_ports_and_are_bound_to_a_namespace() {
        let trust = Arc::new(UpstreamTrust::new(&Default::default()));
        let pools = DestPools::with_tls(4, trust, 8112);
        assert!(DestPools::new(4)
            .get_tls("10.0.0.1:8012".parse().unwrap(), false, "a")
            .is_none());
        let pod: SocketAddr = "10.0.0.1:8012".parse().unwrap();
        let a = pools.get_tls(pod, false, "a").unwrap();
        assert_eq!(a.addr, "10.0.0.1:8112".parse().unwrap());
        assert_eq!(a.upstream.addr(), a.addr);
        let again = pools.get_tls(pod, false, "a").unwrap();
        assert!(std::ptr::eq(&*a.upstream, &*again.upstream));
        let b = pools.get_tls(pod, false, "b").unwrap();
        assert!(
            !std::ptr::eq(&*a.upstream, &*b.upstream),
            "namespace b got a's pool"
        );
        assert_eq!(pools.len(), 1, "b replaced a's pool");
        let ip6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let cluster = pools.get_tls(ip6, true, "a").unwrap();
        assert_eq!(cluster.addr, "[fd00::1]:443".parse().unwrap());
        assert_eq!(&*cluster.host, "[fd00::1]:443");
        drop((a, again, b, cluster));
        pools.sweep();
        pools.sweep();
        assert!(pools.is_empty());
    }
}
