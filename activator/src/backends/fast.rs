//! Fast probing while requests wait (our addition; Knative re-probes only every
//! `PROBE_FREQUENCY`).
//!
//! A watcher whose revision has nothing healthy (no healthy pod, cluster IP not healthy) but pods
//! left to probe registers here as *eligible*. One poller task for the whole activator checks,
//! every `fast_probe_interval`, the throttler's [`waiting`](crate::throttler::RevisionThrottler::waiting)
//! count of every eligible revision and wakes the watchers whose revision has requests waiting;
//! they run a probe round at once. So while a request is held for a cold revision, its
//! not-yet-healthy pods are probed every `fast_probe_interval` (plus the round's own duration)
//! instead of every `PROBE_FREQUENCY`; a revision without waiting requests, or with a healthy pod
//! already, keeps Knative's cadence. The poller sleeps on a `Notify` when nothing is eligible, so
//! an idle activator has no periodic wake-ups; with eligible revisions the cost is one timer
//! wake-up per interval plus one atomic read per eligible revision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::watcher::{stop_requested, WatcherShared};
use crate::throttler::Throttler;

/// The poller's shared state.
#[derive(Debug)]
pub struct FastProbing {
    interval: Duration,
    throttler: Arc<Throttler>,
    eligible: Mutex<HashMap<u64, Arc<WatcherShared>>>,
    /// Wakes the idle poller when a watcher becomes eligible.
    wake: Notify,
}

impl FastProbing {
    /// Fast probing every `interval` (must be > 0).
    pub fn new(interval: Duration, throttler: Arc<Throttler>) -> Self {
        FastProbing {
            interval,
            throttler,
            eligible: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<WatcherShared>>> {
        self.eligible.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers or unregisters a watcher.
    pub fn set_eligible(&self, watcher: &Arc<WatcherShared>, eligible: bool) {
        if eligible {
            self.lock().insert(watcher.serial, watcher.clone());
            self.wake.notify_one();
        } else {
            self.lock().remove(&watcher.serial);
        }
    }

    /// Number of eligible watchers.
    pub fn eligible_count(&self) -> usize {
        self.lock().len()
    }

    /// Wakes every eligible watcher whose revision has waiting requests; returns whether any
    /// watcher is eligible.
    fn poll_once(&self) -> bool {
        let eligible = self.lock();
        for watcher in eligible.values() {
            let waiting = self
                .throttler
                .get(&watcher.id.namespace, &watcher.id.name)
                .is_some_and(|revision| revision.waiting() > 0);
            if waiting {
                watcher.wake.notify_one();
            }
        }
        !eligible.is_empty()
    }

    /// The poller loop, until `stop` turns true (or its sender is dropped).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let active = self.poll_once();
            tokio::select! {
                () = stop_requested(&mut stop) => return,
                () = tokio::time::sleep(self.interval), if active => {}
                () = self.wake.notified(), if !active => {}
            }
        }
    }
}
