//! Lazy per-revision state (our addition; Knative keeps a throttler and a probing goroutine for
//! every revision it knows).
//!
//! With `ACTIVATOR_REVISION_IDLE_TIMEOUT` set (default 60 s), a revision known to discovery
//! costs only its discovery entry until a request arrives for it:
//! - the first request creates its throttler ([`Throttler::enable_activation`]) and tells the
//!   manager, which starts its watcher: pods are probed when first needed, not at startup;
//! - every sweep (each half idle timeout) reads and clears the throttler's touched mark; after
//!   two sweeps in a row without a request (so between one and one and a half idle timeouts
//!   of quiet) the revision is evicted: its watcher stops and its throttler leaves the
//!   registry, but only if the registry holds the sole reference ([`Throttler::evict_if_unused`]):
//!   a request that waits, holds a lease or has just looked the throttler up keeps it, and a
//!   request arriving after the eviction creates a fresh one. No request is lost or sent twice;
//! - what the watcher had learned is kept as a [`Seed`] (healthy pods, or cluster-IP routing)
//!   as long as the revision's private endpoints do not change, so the next first request is
//!   routed at once instead of waiting for a probe round, as it would be with Knative's
//!   ever-running watcher (which never re-probes a healthy pod whose endpoints are unchanged).

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use crate::discovery::PrivateEndpoints;
use crate::throttler::{DestsUpdate, RevisionThrottler};

#[cfg(doc)]
use crate::throttler::Throttler;

/// Sweeps without a request before a revision is evicted.
pub(super) const IDLE_SWEEPS: u8 = 2;

/// What an evicted revision's watcher knew, valid while the private endpoints hash the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seed {
    endpoints: u64,
    /// Healthy pods (`ip:port`), empty when routing through the cluster IP.
    healthy: Box<[String]>,
    cluster_ip: bool,
}

/// A fingerprint of the private endpoints (ready and not-ready pods, cluster IP).
pub(super) fn endpoints_fingerprint(private: &PrivateEndpoints) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    private.hash(&mut hasher);
    hasher.finish()
}

impl Seed {
    /// The seed of a revision evicted with `private` as its endpoints; `None` when it had
    /// nothing healthy (the next watcher probes anyway).
    pub(super) fn of_evicted(
        revision: &RevisionThrottler,
        private: &PrivateEndpoints,
    ) -> Option<Seed> {
        let cluster_ip = revision.cluster_ip_dest().is_some();
        let healthy = if cluster_ip {
            Vec::new()
        } else {
            revision.pod_dests()
        };
        (cluster_ip || !healthy.is_empty()).then(|| Seed {
            endpoints: endpoints_fingerprint(private),
            healthy: healthy.into_boxed_slice(),
            cluster_ip,
        })
    }

    /// Whether the seed still describes `private`.
    pub(super) fn matches(&self, private: &PrivateEndpoints) -> bool {
        self.endpoints == endpoints_fingerprint(private)
    }

    /// The dests update to apply at once, and the watcher's starting state (healthy pods,
    /// cluster-IP routing) for the unchanged endpoints `private`.
    pub(super) fn resume(
        self,
        private: &PrivateEndpoints,
    ) -> (DestsUpdate, BTreeSet<String>, bool) {
        let healthy: BTreeSet<String> = self.healthy.into_vec().into_iter().collect();
        let update = if self.cluster_ip {
            DestsUpdate {
                cluster_ip_dest: private.cluster_ip.clone(),
                dests: private.ready.iter().cloned().collect(),
            }
        } else {
            DestsUpdate {
                cluster_ip_dest: None,
                dests: healthy.clone(),
            }
        };
        (update, healthy, self.cluster_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttler::{RevisionId, RevisionSettings};

    fn endpoints(ready: &[&str]) -> PrivateEndpoints {
        PrivateEndpoints {
            ready: ready.iter().map(|s| (*s).to_owned()).collect(),
            not_ready: Vec::new(),
            cluster_ip: Some("10.96.0.1:80".into()),
        }
    }

    fn throttler() -> RevisionThrottler {
        RevisionThrottler::new(
            RevisionId::new("ns", "rev"),
            RevisionSettings {
                container_concurrency: 1,
                ..RevisionSettings::default()
            },
        )
    }

    #[test]
    fn seed_keeps_healthy_pods_while_endpoints_are_unchanged() {
        let private = endpoints(&["10.0.0.1:8012", "10.0.0.2:8012"]);
        let revision = throttler();
        revision.update_dests(&DestsUpdate {
            cluster_ip_dest: None,
            dests: ["10.0.0.1:8012".to_owned()].into(),
        });
        let seed = Seed::of_evicted(&revision, &private).expect("a healthy pod");
        assert!(seed.matches(&private));
        assert!(!seed.matches(&endpoints(&["10.0.0.1:8012"])));
        let (update, healthy, cluster_ip) = seed.resume(&private);
        assert_eq!(update.cluster_ip_dest, None);
        assert_eq!(update.dests, healthy);
        assert_eq!(healthy, ["10.0.0.1:8012".to_owned()].into());
        assert!(!cluster_ip);
    }

    #[test]
    fn seed_of_cluster_ip_routing_routes_through_the_cluster_ip_again() {
        let private = endpoints(&["10.0.0.1:8012", "10.0.0.2:8012"]);
        let revision = throttler();
        revision.update_dests(&DestsUpdate {
            cluster_ip_dest: Some("10.96.0.1:80".into()),
            dests: private.ready.iter().cloned().collect(),
        });
        let (update, healthy, cluster_ip) = Seed::of_evicted(&revision, &private)
            .expect("cluster IP")
            .resume(&private);
        assert_eq!(update.cluster_ip_dest.as_deref(), Some("10.96.0.1:80"));
        assert_eq!(update.dests.len(), 2);
        assert!(healthy.is_empty() && cluster_ip);
    }

    #[test]
    fn nothing_healthy_leaves_no_seed() {
        assert_eq!(
            Seed::of_evicted(&throttler(), &endpoints(&["10.0.0.1:8012"])),
            None
        );
    }
}
