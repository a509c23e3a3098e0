//! Fast probing while requests wait (our addition; Knative re-probes only every
//! `PROBE_FREQUENCY`).
//!
//! A watcher whose revision has nothing healthy (no healthy pod, cluster IP not healthy) but
//! pods left to probe is *eligible*. While its revision has requests waiting in the throttler,
//! it re-probes every `fast_probe_interval` (default 10 ms) instead of every `PROBE_FREQUENCY`,
//! so a held request reaches a pod within a few milliseconds of its queue-proxy answering
//! `queue`. With nothing waiting it sleeps until the throttler signals that a request started
//! to wait ([`RevisionThrottler::waiter_arrived`]), and probes at once.
//!
//! Everything is driven by the revision's own events: nothing scans the revisions
//! periodically, so the cost does not grow with the number of revisions whose pods are
//! unhealthy (crash-looping pods in thousands of revisions cost nothing until a request waits
//! for one of them).

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::Notify;

use crate::throttler::RevisionThrottler;

/// What a watcher keeps of its revision's throttler for fast probing: a weak reference (an
/// idle revision can be evicted while its watcher waits) and the throttler's
/// [`RevisionThrottler::waiter_arrived`] signal.
#[derive(Debug)]
pub(super) struct WaiterSignal {
    revision: Weak<RevisionThrottler>,
    arrived: std::sync::Arc<Notify>,
}

impl WaiterSignal {
    pub(super) fn new(revision: &std::sync::Arc<RevisionThrottler>) -> Self {
        WaiterSignal {
            revision: std::sync::Arc::downgrade(revision),
            arrived: revision.waiter_arrived().clone(),
        }
    }

    fn waiting(&self) -> usize {
        self.revision.upgrade().map_or(0, |r| r.waiting())
    }
}

/// One wait of an eligible-or-not watcher for its next fast probe.
#[derive(Debug)]
pub(super) struct FastProbe<'a> {
    /// `Some` only when fast probing is enabled, the revision is known and the watcher is
    /// eligible.
    active: Option<(Duration, &'a WaiterSignal)>,
}

impl<'a> FastProbe<'a> {
    /// `interval`: `None` when fast probing is disabled.
    pub(super) fn new(
        interval: Option<Duration>,
        revision: Option<&'a WaiterSignal>,
        eligible: bool,
    ) -> Self {
        FastProbe {
            active: match (interval, revision) {
                (Some(interval), Some(revision)) if eligible => Some((interval, revision)),
                _ => None,
            },
        }
    }

    /// Resolves when the next fast probe round is due; never when inactive.
    pub(super) async fn due(self) {
        let Some((interval, revision)) = self.active else {
            return std::future::pending().await;
        };
        if revision.waiting() > 0 {
            tokio::time::sleep(interval).await;
        } else {
            // A request arriving between the check and this wait leaves a permit behind
            // (`notify_one`), so it is not missed.
            revision.arrived.notified().await;
        }
    }
}
