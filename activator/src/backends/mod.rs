//! The revision backends manager (spec §5): turns discovery snapshots into throttler state.
//!
//! Discovery publishes which revisions each change touched ([`ChangeFeed`]); the manager
//! reconciles those alone, and every revision only on the first snapshot or a relist. For
//! every revision it reconciles:
//! - the throttler is ensured with the revision's settings (spec §3.7; a revision that leaves the
//!   snapshot is removed from the throttler — requests holding leases keep their reference);
//! - the activator set of its public endpoints is applied with this activator's `POD_IP`
//!   (spec §3.8);
//! - a watcher task probes its pods with the queue-proxy health check and emits dests updates
//!   (healthy pods, or the cluster IP plus the ready count) to the throttler (spec §5.5–§5.10).
//!   Pods that leave the healthy set get no new requests; the throttler keeps the slots of
//!   in-flight requests until their leases drop.
//!
//! Fast probing (our addition, see [`fast`]): while a revision has requests waiting and nothing
//! healthy, its not-yet-healthy pods are re-probed every [`BackendSettings::fast_probe_interval`]
//! (default 10 ms) instead of every `PROBE_FREQUENCY` (200 ms), so a held request reaches a pod
//! within a few milliseconds of its queue-proxy answering `queue`. It is driven by the
//! revision's throttler signalling a waiting request, not by a scan of all revisions.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use activator::backends::*;
//! # use activator::discovery::FileSource;
//! # use activator::throttler::Throttler;
//! # async fn wire(shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), Box<dyn std::error::Error>> {
//! let source = FileSource::start("/etc/activator/revisions.json", std::time::Duration::from_millis(100), shutdown.clone())?;
//! let throttler = Arc::new(Throttler::new());
//! let settings = BackendSettings {
//!     probe_timeout: parse_go_duration("300ms")?,
//!     self_ip: "10.0.0.7".into(),
//!     ..BackendSettings::default()
//! };
//! let task = BackendsManager::spawn(source.subscribe_changes(), throttler, settings, shutdown);
//! task.await?; // after shutdown turned true
//! # Ok(()) }
//! ```

mod duration;
mod fast;
mod lazy;
mod limit;
mod probe;
mod watcher;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::discovery::{
    ChangeFeed, Changes, PrivateEndpoints, PublicEndpoints, RevisionEntry, RevisionSpec, Snapshot,
};
use crate::throttler::{DestsUpdate, RevisionId, Throttler};

pub use duration::{parse_go_duration, DurationError};
pub use limit::LimitedProber;
pub use probe::{private_service_name, probe_queue, HttpProber, ProbeResult, Prober, PROBE_PATH};
pub use watcher::{Dests, PodProbe, RevisionWatcher, WatcherConfig};

use watcher::{WatcherContext, WatcherShared};

/// `PROBE_TIMEOUT` default.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// `PROBE_FREQUENCY` default.
pub const DEFAULT_PROBE_FREQUENCY: Duration = Duration::from_millis(200);
/// Default re-probe interval while requests wait and nothing is healthy.
pub const DEFAULT_FAST_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Default bound on pod probes in flight across all revisions
/// (`ACTIVATOR_MAX_CONCURRENT_PROBES`; see [`LimitedProber`]).
pub const DEFAULT_MAX_CONCURRENT_PROBES: usize = 256;
/// Shortest `PROBE_FREQUENCY` honoured (a zero period would spin).
const MIN_PROBE_FREQUENCY: Duration = Duration::from_millis(1);

/// `mesh-compatibility-mode` of `config-network` (spec §5.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MeshMode {
    /// Probe pods; fall back to the cluster IP when no pod is healthy and no non-mesh response
    /// was seen.
    #[default]
    Auto,
    /// Never probe pods; always route through the cluster IP.
    Enabled,
    /// Probe only not-ready pods (ready ones are trusted); never fall back to the cluster IP.
    Disabled,
}

impl MeshMode {
    /// Parses the configmap value (case-insensitive); unknown values mean `auto`, as in Go.
    pub fn from_config(value: &str) -> MeshMode {
        if value.eq_ignore_ascii_case("enabled") {
            MeshMode::Enabled
        } else if value.eq_ignore_ascii_case("disabled") {
            MeshMode::Disabled
        } else {
            MeshMode::Auto
        }
    }
}

/// Settings of the backends manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    /// `PROBE_TIMEOUT`: deadline of one round of pod probes and of one cluster-IP probe.
    pub probe_timeout: Duration,
    /// `PROBE_FREQUENCY`: re-probe period while some pod is not known healthy (≥ 1 ms).
    pub probe_frequency: Duration,
    /// Re-probe period while requests wait for a revision with nothing healthy; zero disables
    /// fast probing (Knative's behavior).
    pub fast_probe_interval: Duration,
    /// `mesh-compatibility-mode`.
    pub mesh_mode: MeshMode,
    /// `enable-mesh-pod-addressability` (passthrough LB): probes carry `Host:
    /// <rev>-private.<ns>` and `K-Passthrough-Lb: true`; never fall back to the cluster IP.
    pub passthrough_lb: bool,
    /// This activator's `POD_IP` (its index among a revision's activators, spec §3.8).
    pub self_ip: String,
    /// Optional cap on requests waiting per revision (see
    /// [`RevisionSettings::max_queued`](crate::throttler::RevisionSettings::max_queued)).
    pub max_queued: Option<usize>,
    /// Pod probes in flight at most, across all revisions (0 = unbounded).
    pub max_concurrent_probes: usize,
    /// Lazy per-revision state (see [`lazy`]): `Some(idle)` creates a revision's throttler and
    /// watcher on its first request and drops them once it has had no request for `idle`;
    /// `None` keeps both for every known revision from the start (Knative's model).
    pub revision_idle_timeout: Option<Duration>,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            probe_frequency: DEFAULT_PROBE_FREQUENCY,
            fast_probe_interval: DEFAULT_FAST_PROBE_INTERVAL,
            mesh_mode: MeshMode::Auto,
            passthrough_lb: false,
            self_ip: String::new(),
            max_queued: None,
            max_concurrent_probes: DEFAULT_MAX_CONCURRENT_PROBES,
            revision_idle_timeout: None,
        }
    }
}

/// The revision backends manager.
#[derive(Debug)]
pub struct BackendsManager;

impl BackendsManager {
    /// Applies the current snapshot at once (so every revision in it has a throttler when this
    /// returns), then follows `source` until `shutdown` turns true; the returned task ends after
    /// every watcher has stopped. Must be called inside a Tokio runtime.
    pub fn spawn(
        source: ChangeFeed,
        throttler: Arc<Throttler>,
        settings: BackendSettings,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        Self::spawn_with(
            source,
            throttler,
            settings,
            shutdown,
            Arc::new(HttpProber),
            None,
        )
    }

    /// [`BackendsManager::spawn`] with another prober and an observer of every emitted update.
    pub(crate) fn spawn_with<P: Prober>(
        mut source: ChangeFeed,
        throttler: Arc<Throttler>,
        settings: BackendSettings,
        shutdown: watch::Receiver<bool>,
        prober: Arc<P>,
        observer: Option<mpsc::UnboundedSender<(RevisionId, DestsUpdate)>>,
    ) -> JoinHandle<()> {
        let prober = Arc::new(LimitedProber::new(prober, settings.max_concurrent_probes));
        let created = settings.revision_idle_timeout.map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let reader = source.reader();
            let max_queued = settings.max_queued;
            throttler.enable_activation(
                Box::new(move |namespace: &str, name: &str| {
                    let spec = reader.borrow().revision(namespace, name)?;
                    Some(spec.throttler_settings(max_queued))
                }),
                tx,
            );
            rx
        });
        let mut manager = Manager::new(throttler, settings, prober, observer);
        let (snapshot, changes) = source.take();
        manager.apply_changes(&snapshot, changes);
        tokio::spawn(manager.run(source, created, shutdown))
    }
}

struct WatcherHandle {
    shared: Arc<WatcherShared>,
    spec: Arc<RevisionSpec>,
    private: PrivateEndpoints,
    public: PublicEndpoints,
    task: JoinHandle<()>,
    /// Lazy mode: sweeps in a row that found no request.
    idle_sweeps: u8,
}

struct Manager<P> {
    throttler: Arc<Throttler>,
    settings: BackendSettings,
    prober: Arc<P>,
    ctx: Arc<WatcherContext>,
    /// Eager mode: every known revision; lazy mode: the revisions in use.
    watchers: HashMap<RevisionId, WatcherHandle>,
    /// Lazy mode: what evicted revisions' watchers knew (see [`lazy`]).
    seeds: HashMap<RevisionId, lazy::Seed>,
}

impl<P: Prober> Manager<P> {
    fn new(
        throttler: Arc<Throttler>,
        mut settings: BackendSettings,
        prober: Arc<P>,
        observer: Option<mpsc::UnboundedSender<(RevisionId, DestsUpdate)>>,
    ) -> Self {
        settings.probe_frequency = settings.probe_frequency.max(MIN_PROBE_FREQUENCY);
        // POD_IP is compared with the (canonical) activator IPs as a string.
        if let Ok(ip) = settings.self_ip.trim().parse::<IpAddr>() {
            settings.self_ip = ip.to_string();
        }
        let ctx = Arc::new(WatcherContext {
            throttler: throttler.clone(),
            fast_probe_interval: (!settings.fast_probe_interval.is_zero())
                .then_some(settings.fast_probe_interval),
            probe_frequency: settings.probe_frequency,
            observer,
        });
        Manager {
            throttler,
            settings,
            prober,
            ctx,
            watchers: HashMap::new(),
            seeds: HashMap::new(),
        }
    }

    fn lazy(&self) -> bool {
        self.settings.revision_idle_timeout.is_some()
    }

    /// `created`: lazy mode's receiver of revisions whose throttler a request created.
    async fn run(
        mut self,
        mut source: ChangeFeed,
        mut created: Option<mpsc::UnboundedReceiver<RevisionId>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let reader = source.reader();
        let mut sweeps = self.settings.revision_idle_timeout.map(|idle| {
            let period = (idle / u32::from(lazy::IDLE_SWEEPS)).max(MIN_PROBE_FREQUENCY);
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut source_open = true;
        loop {
            tokio::select! {
                () = shutdown_requested(&mut shutdown) => break,
                changed = source.changed(), if source_open => match changed {
                    Some((snapshot, changes)) => self.apply_changes(&snapshot, changes),
                    // The source is gone: keep the last state until shutdown.
                    None => source_open = false,
                },
                Some(id) = recv(&mut created) => {
                    let snapshot = reader.borrow().clone();
                    self.activate(&id, &snapshot);
                }
                // No sweeps in eager mode (`None` never ticks).
                () = watcher::tick(&mut sweeps) => self.sweep(),
            }
        }
        self.stop().await;
    }

    /// Lazy mode: a request created the revision's throttler; start its watcher (seeded with
    /// what an earlier one knew, when still valid).
    fn activate(&mut self, id: &RevisionId, snapshot: &Snapshot) {
        if self.watchers.contains_key(id) {
            return;
        }
        match snapshot.get(id) {
            Some(entry) => self.apply_entry(entry),
            None => {
                // Left discovery since the request looked it up.
                self.seeds.remove(id);
                self.throttler.remove_revision(id);
            }
        }
    }

    /// Lazy mode: evicts the revisions that had no request for [`lazy::IDLE_SWEEPS`] sweeps and
    /// that nothing holds (see [`lazy`]).
    fn sweep(&mut self) {
        let mut idle = Vec::new();
        for (id, handle) in &mut self.watchers {
            match self.throttler.revision(id) {
                Some(revision) if revision.take_touched() => handle.idle_sweeps = 0,
                _ => {
                    handle.idle_sweeps = handle.idle_sweeps.saturating_add(1);
                    if handle.idle_sweeps >= lazy::IDLE_SWEEPS {
                        idle.push(id.clone());
                    }
                }
            }
        }
        for id in idle {
            let Some(handle) = self.watchers.get(&id) else {
                continue;
            };
            // The watcher's inbox lock is taken before the registry's (as when it emits), and
            // held across the eviction, so that it emits nothing after its throttler is gone.
            let throttler = &self.throttler;
            let evicted = handle.shared.stop_if(|| {
                throttler
                    .evict_if_unused(&id)
                    .map(Some)
                    // Its throttler is already gone: only the watcher is left to stop.
                    .or_else(|| throttler.revision(&id).is_none().then_some(None))
            });
            let Some(revision) = evicted else {
                continue; // in use after all: the next sweeps look again
            };
            let Some(handle) = self.watchers.remove(&id) else {
                continue;
            };
            tracing::debug!(revision = %id, "idle revision evicted");
            if let Some(seed) = revision.and_then(|r| lazy::Seed::of_evicted(&r, &handle.private)) {
                self.seeds.insert(id, seed);
            }
        }
    }

    /// Lazy mode: drops the seed of a revision not in use whose endpoints changed (or that left).
    fn check_seed(&mut self, id: &RevisionId, entry: Option<&RevisionEntry>) {
        if let Some(seed) = self.seeds.get(id) {
            if !entry.is_some_and(|entry| seed.matches(&entry.private)) {
                self.seeds.remove(id);
            }
        }
    }

    /// Applies a publication: every revision when `changes` is [`Changes::All`], else only the
    /// revisions it names (a change to one revision touches nothing of the others).
    fn apply_changes(&mut self, snapshot: &Snapshot, changes: Changes) {
        match changes {
            Changes::All => self.apply(snapshot),
            Changes::Revisions(ids) => {
                for id in ids {
                    match snapshot.get(&id) {
                        Some(entry) => self.apply_changed(entry),
                        None => self.remove(&id),
                    }
                }
            }
        }
    }

    /// Reconciles watchers and throttlers with every revision of `snapshot`.
    fn apply(&mut self, snapshot: &Snapshot) {
        for entry in snapshot.revisions() {
            self.apply_changed(entry);
        }
        let gone: Vec<RevisionId> = self
            .watchers
            .keys()
            .chain(self.seeds.keys())
            .filter(|id| snapshot.get(id).is_none())
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// A revision's entry changed (or is listed again): reconciled if in use (always in eager
    /// mode); in lazy mode an unused revision only has its seed checked.
    fn apply_changed(&mut self, entry: &RevisionEntry) {
        if self.lazy() && !self.watchers.contains_key(&entry.spec.id) {
            self.check_seed(&entry.spec.id, Some(entry));
        } else {
            self.apply_entry(entry);
        }
    }

    /// Reconciles one revision's watcher and throttler with its entry.
    fn apply_entry(&mut self, entry: &RevisionEntry) {
        let id = &entry.spec.id;
        let desired = entry.spec.throttler_settings(self.settings.max_queued);
        let revision = self.throttler.ensure_revision(id, desired);
        let (spec_changed, public_changed) = match self.watchers.get_mut(id) {
            Some(handle) => {
                if handle.private != entry.private {
                    handle.private = entry.private.clone();
                    handle
                        .shared
                        .set_dests(Arc::new(Dests::from_endpoints(&entry.private)));
                }
                let spec_changed = handle.spec != entry.spec;
                handle.spec = entry.spec.clone();
                let public_changed = handle.public != entry.public;
                handle.public = entry.public.clone();
                (spec_changed, public_changed)
            }
            None => {
                tracing::info!(revision = %id, pods = %entry.private, "watching revision");
                let handle = self.start_watcher(id, entry);
                self.watchers.insert(id.clone(), handle);
                (true, true)
            }
        };
        if spec_changed && revision.settings() != desired {
            tracing::warn!(
                revision = %id,
                "revision settings changed; the throttler keeps the settings it was created \
                 with (revisions are immutable: remove the revision and add it again)"
            );
        }
        if public_changed {
            let _ = self.throttler.update_activators(
                id,
                &entry.public.activator_ips,
                &self.settings.self_ip,
            );
        }
    }

    /// The revision left discovery: its watcher stops, then its throttler goes.
    fn remove(&mut self, id: &RevisionId) {
        self.seeds.remove(id);
        let Some(handle) = self.watchers.remove(id) else {
            // Lazy mode: a request may have created its throttler meanwhile.
            self.throttler.remove_revision(id);
            return;
        };
        tracing::info!(revision = %id, "revision removed");
        // Stopped first: no update for the revision after this (spec §5.9).
        handle.shared.stop();
        self.throttler.remove_revision(id);
    }

    fn start_watcher(&mut self, id: &RevisionId, entry: &RevisionEntry) -> WatcherHandle {
        let shared = Arc::new(WatcherShared::new(
            id.clone(),
            Arc::new(Dests::from_endpoints(&entry.private)),
        ));
        let mut watcher = RevisionWatcher::new(
            id.clone(),
            self.prober.clone(),
            WatcherConfig {
                probe_timeout: self.settings.probe_timeout,
                mesh_mode: self.settings.mesh_mode,
                passthrough_lb: self.settings.passthrough_lb,
                probe_optimisation: entry.spec.probe_optimisation,
            },
        );
        if let Some(seed) = self
            .seeds
            .remove(id)
            .filter(|seed| seed.matches(&entry.private))
        {
            let (update, healthy, cluster_ip) = seed.resume(&entry.private);
            watcher.resume(healthy, cluster_ip);
            // Applied before the watcher runs: waiting requests go at once.
            let _ = self.throttler.update_dests(id, &update);
            if let Some(observer) = &self.ctx.observer {
                let _ = observer.send((id.clone(), update));
            }
        }
        let task = tokio::spawn(watcher::run(watcher, shared.clone(), self.ctx.clone()));
        WatcherHandle {
            shared,
            spec: entry.spec.clone(),
            private: entry.private.clone(),
            public: entry.public.clone(),
            task,
            idle_sweeps: 0,
        }
    }

    /// Stops every watcher and waits for them.
    async fn stop(mut self) {
        let handles: Vec<WatcherHandle> = self.watchers.drain().map(|(_, h)| h).collect();
        for handle in &handles {
            handle.shared.stop();
        }
        for handle in handles {
            let _ = handle.task.await;
        }
    }
}

/// The next revision a request created; never without a receiver (eager mode) or once closed.
async fn recv(created: &mut Option<mpsc::UnboundedReceiver<RevisionId>>) -> Option<RevisionId> {
    match created {
        Some(rx) => match rx.recv().await {
            Some(id) => Some(id),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves once `true` is observed; never if the sender is dropped first.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
