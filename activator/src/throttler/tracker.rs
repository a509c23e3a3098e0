//! Pod trackers (spec §3.1, §3.2, §4): one per healthy pod (or for the cluster IP), tracking how
//! many requests this activator has in flight to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;

use knative_common::breaker::{Breaker, BreakerParams};

/// A destination and its in-flight accounting.
///
/// - cc > 0: a [`Breaker`] with `Q = 10000`, `M = cc`, `C0 = cc`, used with try-reserve;
/// - cc = 0 and the cluster-IP tracker: no breaker (reserve always succeeds, capacity reported as 1);
///   cc = 0 trackers count requests in `weight` for the power-of-two-choices policy.
#[derive(Debug)]
pub(crate) struct PodTracker {
    dest: Box<str>,
    addr: Option<SocketAddr>,
    breaker: Option<Breaker>,
    weight: AtomicU32,
}

impl PodTracker {
    /// A tracker for `dest` in a revision with container concurrency `cc`.
    pub(crate) fn new(dest: &str, cc: u32) -> Self {
        PodTracker {
            dest: dest.into(),
            addr: dest.parse().ok(),
            breaker: (cc > 0).then(|| Breaker::new(BreakerParams::pod(cc))),
            weight: AtomicU32::new(0),
        }
    }

    /// A tracker without a breaker (the cluster IP, or any dest of a cc = 0 revision).
    pub(crate) fn unlimited(dest: &str) -> Self {
        PodTracker::new(dest, 0)
    }

    /// The `host:port` this tracker routes to.
    pub(crate) fn dest(&self) -> &str {
        &self.dest
    }

    /// `dest` parsed as a socket address, if it is one.
    pub(crate) fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Takes a slot without waiting (always succeeds without a breaker).
    #[inline]
    pub(crate) fn try_reserve(&self) -> bool {
        self.breaker.as_ref().is_none_or(Breaker::try_reserve)
    }

    /// Releases a slot taken with [`PodTracker::try_reserve`].
    pub(crate) fn release(&self) {
        if let Some(b) = &self.breaker {
            b.release();
        }
    }

    /// Capacity: the breaker's, or 1 without a breaker.
    pub(crate) fn capacity(&self) -> u64 {
        self.breaker.as_ref().map_or(1, |b| u64::from(b.capacity()))
    }

    /// Resets the breaker's capacity (no-op without a breaker).
    pub(crate) fn set_capacity(&self, capacity: u32) {
        if let Some(b) = &self.breaker {
            b.set_capacity(u64::from(capacity));
        }
    }

    /// Requests in flight to this dest: breaker slots in use, or the p2c weight.
    pub(crate) fn in_flight(&self) -> u64 {
        match &self.breaker {
            Some(b) => u64::from(b.in_flight()),
            None => u64::from(self.weight()),
        }
    }

    /// The power-of-two-choices weight.
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(SeqCst)
    }

    pub(crate) fn increase_weight(&self) {
        self.weight.fetch_add(1, SeqCst);
    }

    pub(crate) fn decrease_weight(&self) {
        let _ = self
            .weight
            .fetch_update(SeqCst, SeqCst, |w| w.checked_sub(1));
    }
}

/// How a [`TrackerSlot`] holds its tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// A breaker slot taken with try-reserve (cc > 0).
    Reserved,
    /// A p2c weight increment (cc = 0).
    Weighted,
    /// The cluster-IP tracker: nothing to release.
    ClusterIp,
}

/// A picked tracker plus what was taken on it; released on drop.
#[derive(Debug)]
pub(crate) struct TrackerSlot {
    tracker: Arc<PodTracker>,
    kind: SlotKind,
}

impl TrackerSlot {
    /// Wraps a tracker on which `kind` was already taken.
    pub(crate) fn new(tracker: Arc<PodTracker>, kind: SlotKind) -> Self {
        TrackerSlot { tracker, kind }
    }

    pub(crate) fn tracker(&self) -> &Arc<PodTracker> {
        &self.tracker
    }

    pub(crate) fn kind(&self) -> SlotKind {
        self.kind
    }
}

impl Drop for TrackerSlot {
    fn drop(&mut self) {
        match self.kind {
            SlotKind::Reserved => self.tracker.release(),
            SlotKind::Weighted => self.tracker.decrease_weight(),
            SlotKind::ClusterIp => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_tracker_always_reserves_and_reports_capacity_one() {
        let t = PodTracker::unlimited("10.0.0.1:8012");
        assert_eq!(t.socket_addr(), Some("10.0.0.1:8012".parse().unwrap()));
        for _ in 0..100 {
            assert!(t.try_reserve());
        }
        assert_eq!(t.capacity(), 1);
        t.release();
        t.set_capacity(5);
        assert_eq!(t.capacity(), 1);
    }

    #[test]
    fn pod_tracker_limits_to_cc() {
        let t = Arc::new(PodTracker::new("[2001:db8::1]:8012", 2));
        assert!(t.socket_addr().is_some());
        assert_eq!(t.capacity(), 2);
        let a = t
            .try_reserve()
            .then(|| TrackerSlot::new(t.clone(), SlotKind::Reserved));
        let b = t
            .try_reserve()
            .then(|| TrackerSlot::new(t.clone(), SlotKind::Reserved));
        assert!(a.is_some() && b.is_some());
        assert!(!t.try_reserve());
        assert_eq!(t.in_flight(), 2);
        drop(a);
        assert!(t.try_reserve());
        t.release();
        drop(b);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn weight_never_underflows() {
        let t = PodTracker::new("ip", 0);
        assert_eq!(t.socket_addr(), None);
        t.decrease_weight();
        assert_eq!(t.weight(), 0);
        t.increase_weight();
        let slot = TrackerSlot::new(Arc::new(t), SlotKind::Weighted);
        assert_eq!(slot.tracker().weight(), 1);
        let tracker = slot.tracker().clone();
        drop(slot);
        assert_eq!(tracker.weight(), 0);
    }
}
