//! One revision's watcher (spec §5.2, §5.5–§5.7): probes the revision's pods (or its cluster IP)
//! and turns the results into dests updates for the throttler.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use super::probe::{private_service_name, ProbeResult, Prober};
use super::MeshMode;
use crate::discovery::PrivateEndpoints;
use crate::throttler::{DestsUpdate, RevisionId, Throttler};

/// A revision's pods as Kubernetes reports them (spec §5.3), plus its private Service's
/// `clusterIP:port` (spec §5.6 step 5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dests {
    /// Ready pods (`ip:port`).
    pub ready: BTreeSet<String>,
    /// Not-ready pods (`ip:port`).
    pub not_ready: BTreeSet<String>,
    /// The private Service's `clusterIP:port`, when it exists.
    pub cluster_ip: Option<String>,
}

impl Dests {
    /// From a discovery entry.
    pub fn from_endpoints(endpoints: &PrivateEndpoints) -> Self {
        Dests {
            ready: endpoints.ready.iter().cloned().collect(),
            not_ready: endpoints.not_ready.iter().cloned().collect(),
            cluster_ip: endpoints.cluster_ip.clone(),
        }
    }

    /// No pod at all.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.not_ready.is_empty()
    }

    /// Ready ∪ not ready.
    pub fn all(&self) -> BTreeSet<String> {
        self.ready.union(&self.not_ready).cloned().collect()
    }
}

impl fmt::Display for Dests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join =
            |set: &BTreeSet<String>| set.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        write!(
            f,
            "ready [{}] notReady [{}]",
            join(&self.ready),
            join(&self.not_ready)
        )
    }
}

/// A watcher's fixed settings.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// Deadline of one round of pod probes, and of one cluster-IP probe.
    pub probe_timeout: Duration,
    /// `mesh-compatibility-mode`.
    pub mesh_mode: MeshMode,
    /// Passthrough-LB mode (`enable-mesh-pod-addressability`).
    pub passthrough_lb: bool,
    /// Trust a successful probe of a not-ready pod (spec §5.2).
    pub probe_optimisation: bool,
}

/// The result of [`RevisionWatcher::probe_pod_ips`] (spec §5.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodProbe {
    /// The healthy pods after this round.
    pub healthy: BTreeSet<String>,
    /// Whether `healthy` equals the watcher's healthy pods (nothing changed).
    pub noop: bool,
    /// Whether any probe got a non-mesh HTTP response.
    pub not_mesh: bool,
    /// The first probe error.
    pub error: Option<String>,
    /// Number of probes sent.
    pub probed: usize,
}

/// The per-revision probing state (Go `revisionWatcher`).
#[derive(Debug)]
pub struct RevisionWatcher<P> {
    id: RevisionId,
    prober: Arc<P>,
    config: WatcherConfig,
    /// `Some(<rev>-private.<ns>)` in passthrough-LB mode.
    passthrough_host: Option<String>,
    /// Pods successfully probed.
    pub healthy_pods: BTreeSet<String>,
    /// Whether the cluster IP has been probed successfully.
    pub cluster_ip_healthy: bool,
    /// False once pods proved unreachable but the cluster IP answered (sticky).
    pub pods_addressable: bool,
}

impl<P: Prober> RevisionWatcher<P> {
    /// A watcher with nothing healthy yet and pods presumed addressable.
    pub fn new(id: RevisionId, prober: Arc<P>, config: WatcherConfig) -> Self {
        let passthrough_host = config
            .passthrough_lb
            .then(|| format!("{}.{}", private_service_name(&id.name), id.namespace));
        RevisionWatcher {
            id,
            prober,
            config,
            passthrough_host,
            healthy_pods: BTreeSet::new(),
            cluster_ip_healthy: false,
            pods_addressable: true,
        }
    }

    /// Starts from what an earlier watcher of the same pods learned (lazy per-revision state:
    /// the revision was evicted while idle and its pods have not changed since): `healthy` pods,
    /// or the cluster IP when `cluster_ip` (pods then unaddressable, as that watcher found).
    pub fn resume(&mut self, healthy: BTreeSet<String>, cluster_ip: bool) {
        if cluster_ip {
            self.cluster_ip_healthy = true;
            self.pods_addressable = false;
            self.healthy_pods.clear();
        } else {
            self.healthy_pods = healthy;
        }
    }

    /// Whether the periodic re-probe is armed (spec §5.5): some pod exists, the cluster IP is not
    /// known healthy and not every pod is known healthy.
    pub fn timer_armed(&self, cur: &Dests) -> bool {
        !(cur.is_empty() || self.cluster_ip_healthy || cur.all() == self.healthy_pods)
    }

    /// Nothing can take traffic (no healthy pod, cluster IP not healthy).
    pub fn nothing_healthy(&self) -> bool {
        self.healthy_pods.is_empty() && !self.cluster_ip_healthy
    }

    async fn probe(&self, dest: &str, deadline: Instant) -> ProbeResult {
        let host = self.passthrough_host.as_deref();
        tokio::time::timeout_at(deadline, self.prober.probe(dest, host))
            .await
            .unwrap_or_else(|_| ProbeResult::timed_out())
    }

    /// `probePodIPs` (spec §5.7): probes, in parallel under one `probe_timeout` deadline, every
    /// pod not already healthy (in a mode other than `auto`, ready pods are trusted without
    /// probe). A success counts if the pod is ready or probe optimisation is on.
    pub async fn probe_pod_ips(
        &self,
        ready: &BTreeSet<String>,
        not_ready: &BTreeSet<String>,
    ) -> PodProbe {
        let all: BTreeSet<String> = ready.union(not_ready).cloned().collect();
        if self.healthy_pods == all {
            return PodProbe {
                healthy: all,
                noop: true,
                ..PodProbe::default()
            };
        }
        let mut healthy = self.healthy_pods.clone();
        if self.config.mesh_mode != MeshMode::Auto {
            healthy.extend(ready.iter().cloned());
        }
        let to_probe: Vec<&String> = all.iter().filter(|d| !healthy.contains(*d)).collect();
        let deadline = Instant::now() + self.config.probe_timeout;
        let results = join_all(
            to_probe
                .iter()
                .map(|dest| async move { (*dest, self.probe(dest, deadline).await) }),
        )
        .await;
        let mut not_mesh = false;
        let mut error = None;
        for (dest, result) in results {
            if result.ok && (ready.contains(dest) || self.config.probe_optimisation) {
                healthy.insert(dest.clone());
            }
            not_mesh |= result.not_mesh;
            if error.is_none() {
                error = result.error.map(|e| format!("{dest}: {e}"));
            }
        }
        healthy.retain(|d| all.contains(d));
        PodProbe {
            noop: healthy == self.healthy_pods,
            healthy,
            not_mesh,
            error,
            probed: to_probe.len(),
        }
    }

    /// `checkDests(cur, prev)` (spec §5.6): probes as needed and returns the update to emit, if
    /// any.
    pub async fn check_dests(&mut self, cur: &Dests, prev: &Dests) -> Option<DestsUpdate> {
        if cur.is_empty() {
            // Scaled to zero.
            self.cluster_ip_healthy = false;
            self.healthy_pods.clear();
            return Some(DestsUpdate::default());
        }
        if self.pods_addressable && self.config.mesh_mode != MeshMode::Enabled {
            // Pods that moved from ready to not ready must be probed again.
            let reprobe: Vec<&String> = prev.ready.intersection(&cur.not_ready).collect();
            if !reprobe.is_empty() {
                tracing::info!(revision = %self.id, pods = ?reprobe, "re-probing pods that became not ready");
                for pod in &reprobe {
                    self.healthy_pods.remove(*pod);
                }
            }
            let round = self.probe_pod_ips(&cur.ready, &cur.not_ready).await;
            if let Some(error) = &round.error {
                tracing::debug!(revision = %self.id, dests = %cur, error = %error, "failed probing pods");
            }
            if !round.noop || !reprobe.is_empty() {
                self.healthy_pods = round.healthy.clone();
                return Some(DestsUpdate {
                    cluster_ip_dest: None,
                    dests: round.healthy,
                });
            }
            if !round.healthy.is_empty() {
                // Nothing changed and some pod is healthy.
                return None;
            }
            if round.not_mesh {
                // A non-mesh answer: the mesh is not in the way, do not fall back.
                return None;
            }
        }
        if self.config.passthrough_lb || self.config.mesh_mode == MeshMode::Disabled {
            // Never fall back to the cluster IP.
            return None;
        }
        let Some(dest) = cur.cluster_ip.as_ref() else {
            tracing::debug!(revision = %self.id, "no private service cluster IP to fall back to");
            return None;
        };
        if self.cluster_ip_healthy {
            return Some(DestsUpdate {
                cluster_ip_dest: Some(dest.clone()),
                dests: cur.ready.clone(),
            });
        }
        let result = self
            .probe(dest, Instant::now() + self.config.probe_timeout)
            .await;
        if result.ok {
            tracing::debug!(revision = %self.id, cluster_ip = %dest, ready = cur.ready.len(), "cluster IP probed successfully");
            self.pods_addressable = false;
            self.cluster_ip_healthy = true;
            self.healthy_pods.clear();
            Some(DestsUpdate {
                cluster_ip_dest: Some(dest.clone()),
                dests: cur.ready.clone(),
            })
        } else {
            tracing::debug!(
                revision = %self.id,
                cluster_ip = %dest,
                error = result.error.as_deref().unwrap_or(""),
                "failed probing the cluster IP"
            );
            None
        }
    }
}

/// Where updates go, shared by all watchers.
#[derive(Debug)]
pub struct WatcherContext {
    /// The throttler receiving the updates.
    pub throttler: Arc<Throttler>,
    /// Re-probe period while requests wait and nothing is healthy (`None`: fast probing
    /// disabled; see [`super::fast`]).
    pub fast_probe_interval: Option<Duration>,
    /// `PROBE_FREQUENCY`.
    pub probe_frequency: Duration,
    /// Test hook: every emitted update.
    pub observer: Option<mpsc::UnboundedSender<(RevisionId, DestsUpdate)>>,
}

/// What the manager shares with one watcher task: the latest dests from discovery and the stop
/// flag behind one small lock, and one [`Notify`] for both (a revision that nobody changes costs
/// this struct, not two channels).
#[derive(Debug)]
pub struct WatcherShared {
    /// The revision.
    pub id: RevisionId,
    /// Also held while emitting: once [`WatcherShared::stop`] returns, the watcher emits
    /// nothing more.
    inbox: Mutex<Inbox>,
    /// Woken (one permit) when new dests arrive or the watcher is stopped.
    changed: Notify,
}

#[derive(Debug)]
struct Inbox {
    dests: Arc<Dests>,
    /// Bumped with every new `dests`.
    version: u64,
    stopped: bool,
}

impl WatcherShared {
    /// A watcher's handle, starting from `dests`.
    pub fn new(id: RevisionId, dests: Arc<Dests>) -> Self {
        WatcherShared {
            id,
            inbox: Mutex::new(Inbox {
                dests,
                version: 1,
                stopped: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New dests from discovery.
    pub fn set_dests(&self, dests: Arc<Dests>) {
        {
            let mut inbox = self.lock();
            inbox.dests = dests;
            inbox.version += 1;
        }
        self.changed.notify_one();
    }

    /// Stops the watcher; no update is emitted after this returns (spec §5.9).
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_one();
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Stops the watcher if `evict` (run under the inbox lock, so the watcher emits nothing in
    /// between) succeeds; returns what `evict` returned.
    pub fn stop_if<T>(&self, evict: impl FnOnce() -> Option<T>) -> Option<T> {
        let mut inbox = self.lock();
        let evicted = evict()?;
        inbox.stopped = true;
        drop(inbox);
        self.changed.notify_one();
        Some(evicted)
    }

    /// The dests if newer than version `seen` (which is then updated).
    fn newer_dests(&self, seen: &mut u64) -> Option<Arc<Dests>> {
        let inbox = self.lock();
        (inbox.version != *seen).then(|| {
            *seen = inbox.version;
            inbox.dests.clone()
        })
    }

    /// Resolves once the watcher is stopped. Wake-ups for new dests are consumed here; the
    /// loop compares versions, so none is lost.
    async fn stop_requested(&self) {
        while !self.stopped() {
            self.changed.notified().await;
        }
    }

    fn emit(&self, ctx: &WatcherContext, update: DestsUpdate) {
        let inbox = self.lock();
        if inbox.stopped {
            return;
        }
        match ctx.throttler.update_dests(&self.id, &update) {
            Ok(()) => tracing::debug!(
                revision = %self.id,
                cluster_ip = update.cluster_ip_dest.as_deref().unwrap_or(""),
                dests = ?update.dests,
                "dests updated"
            ),
            Err(error) => tracing::debug!(revision = %self.id, %error, "dests update dropped"),
        }
        drop(inbox);
        if let Some(observer) = &ctx.observer {
            let _ = observer.send((self.id.clone(), update));
        }
    }
}

/// The next tick of an armed timer; never without one.
pub(super) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The watcher loop (spec §5.5): waits for new dests, the `PROBE_FREQUENCY` tick (armed only
/// while something is left to probe) or — while nothing is healthy — fast probing's signal (see
/// [`super::fast`]), then runs `checkDests`. The initial dests count as an event.
pub async fn run<P: Prober>(
    mut watcher: RevisionWatcher<P>,
    shared: Arc<WatcherShared>,
    ctx: Arc<WatcherContext>,
) {
    let frequency = ctx.probe_frequency;
    // The timer exists only while armed: a revision whose pods are all healthy (or that has
    // none) waits on its inbox alone, and its task stays small (see below).
    let mut ticker: Option<tokio::time::Interval> = None;
    // The manager ensures the throttler before starting the watcher. Held weakly: an idle
    // revision's throttler can be evicted while this waits.
    let revision = ctx
        .throttler
        .revision(&shared.id)
        .map(|r| super::fast::WaiterSignal::new(&r));
    let mut version = 0;
    let mut cur = shared.newer_dests(&mut version).unwrap_or_default();
    let mut prev = Arc::new(Dests::default());
    let mut was_armed = false;
    let mut event = true;
    loop {
        if shared.stopped() {
            break;
        }
        if !event {
            let armed = watcher.timer_armed(&cur);
            if armed && !was_armed {
                // Probe one full period after arming, not at a stale tick.
                let mut interval = tokio::time::interval_at(Instant::now() + frequency, frequency);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticker = Some(interval);
            } else if !armed {
                ticker = None;
            }
            was_armed = armed;
            let fast = super::fast::FastProbe::new(
                ctx.fast_probe_interval,
                revision.as_ref(),
                armed && watcher.nothing_healthy(),
            );
            // Dests that arrived while the last round ran are taken at once.
            match shared.newer_dests(&mut version) {
                Some(next) => prev = std::mem::replace(&mut cur, next),
                None => {
                    tokio::select! {
                        biased;
                        () = shared.changed.notified() => {
                            // New dests or stop: both are looked at at the top of the loop.
                            match shared.newer_dests(&mut version) {
                                Some(next) if !shared.stopped() => {
                                    prev = std::mem::replace(&mut cur, next);
                                }
                                _ => continue,
                            }
                        }
                        () = tick(&mut ticker), if armed => {}
                        () = fast.due() => {}
                    }
                }
            }
        }
        event = false;
        // Boxed: the probing round's state lives on the heap only while it runs, so the task
        // of an idle revision is a few hundred bytes instead of carrying it permanently.
        let update = tokio::select! {
            biased;
            () = shared.stop_requested() => break,
            update = Box::pin(watcher.check_dests(&cur, &prev)) => update,
        };
        if let Some(update) = update {
            shared.emit(&ctx, update);
        }
    }
}
