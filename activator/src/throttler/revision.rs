//! The per-revision throttler (spec §3.1, §3.3, §3.5–§3.8): the revision breaker, the pod trackers,
//! this activator's assigned subset, the capacity computation and the request-path `try`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;

use super::fair::{self, FairQueue, Refused, Ticket};
use super::infinite::InfiniteBreaker;
use super::policy::Policy;
use super::subset::{assign_slice, infer_index};
use super::tracker::{PodTracker, SlotKind, TrackerSlot};
use super::{DestsUpdate, Protocol, RevisionId, RevisionSettings, ThrottlerError};
use knative_common::breaker::{Breaker, BreakerParams, QueueFull, MAX_CAPACITY};

/// Pause between attempts when the revision slot was obtained but no pod slot (spec §3.5 step 3).
const RETRY_BACKOFF: Duration = Duration::from_millis(1);

/// At most one log line per revision per this interval about refused requests.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Milliseconds since the first call, plus one (0 means "never" in the refusal log clock).
fn monotonic_millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// The revision breaker: finite (cc > 0) or infinite (cc = 0).
#[derive(Debug)]
pub(super) enum RevisionBreaker {
    Finite(Breaker),
    Infinite(InfiniteBreaker),
}

impl RevisionBreaker {
    /// The breaker's own future, without an `async` layer around it (one state machine less
    /// to resume on every poll of a waiting request).
    fn acquire(&self) -> impl Future<Output = Result<(), QueueFull>> + '_ {
        match self {
            RevisionBreaker::Finite(b) => Either::Left(b.acquire()),
            RevisionBreaker::Infinite(b) => Either::Right(b.acquire()),
        }
    }

    fn release(&self) {
        if let RevisionBreaker::Finite(b) = self {
            b.release();
        }
    }

    /// Whether a slot is there for the taking without waiting: an open infinite breaker (cc =
    /// 0; nothing to take or release). A finite breaker's slot is left to its
    /// [`RevisionBreaker::acquire`], whose first poll takes a free one at once: tried here too,
    /// a full breaker (the common case under load) would be tried twice.
    #[inline]
    fn open_now(&self) -> bool {
        match self {
            RevisionBreaker::Finite(_) => false,
            RevisionBreaker::Infinite(b) => b.is_open(),
        }
    }

    pub(super) fn set_capacity(&self, capacity: u64) {
        match self {
            RevisionBreaker::Finite(b) => b.set_capacity(capacity),
            RevisionBreaker::Infinite(b) => b.set_capacity(capacity),
        }
    }

    fn capacity(&self) -> u64 {
        match self {
            RevisionBreaker::Finite(b) => u64::from(b.capacity()),
            RevisionBreaker::Infinite(b) => b.capacity(),
        }
    }
}

/// What the request path reads (under the read lock).
#[derive(Debug, Default)]
struct Routing {
    /// This activator's subset of the pods, sorted by dest.
    assigned: Vec<Arc<PodTracker>>,
    cluster_ip: Option<Arc<PodTracker>>,
}

/// What only updates touch; its mutex serializes updates of one revision.
#[derive(Debug)]
pub(super) struct Control {
    /// All healthy pods, sorted by dest (byte-wise).
    pub(super) pods: Vec<Arc<PodTracker>>,
    pub(super) cluster_ip: Option<Arc<PodTracker>>,
    pub(super) num_activators: u32,
    pub(super) activator_index: i32,
    pub(super) backend_count: i64,
}

/// One revision's throttler. Created by [`super::Throttler::ensure_revision`]; its settings never
/// change afterwards.
#[derive(Debug)]
pub struct RevisionThrottler {
    id: RevisionId,
    settings: RevisionSettings,
    pub(super) breaker: RevisionBreaker,
    policy: Policy,
    routing: RwLock<Routing>,
    control: Mutex<Control>,
    /// The activator-wide cap on waiting requests, shared fairly by all revisions.
    gate: Arc<FairQueue>,
    /// Where `gate` counts this revision's waiting requests (see [`FairQueue::enter`]).
    gate_hint: AtomicUsize,
    /// When a refused request was last logged ([`monotonic_millis`]; 0 = never).
    refusal_logged_at: AtomicU64,
    /// Notified (`notify_one`) whenever a request starts to wait for a revision slot. In its own
    /// allocation so that the revision's watcher can wait on it without keeping the revision
    /// alive (idle revisions are evicted only when nothing else holds them).
    waiter_arrived: Arc<tokio::sync::Notify>,
    /// Set by every request, cleared by the backends manager's idle sweep
    /// ([`RevisionThrottler::take_touched`]).
    touched: AtomicBool,
}

/// Target capacity of the revision breaker (spec §3.3 step 3, Go `calculateCapacity`).
///
/// `backend_count` is signed like Go's (callers pass the dests count; tests pass −1 for "unknown").
pub(crate) fn calculate_capacity(
    cc: u32,
    backend_count: i64,
    num_trackers: u64,
    activator_count: u32,
) -> u64 {
    let cc = u64::from(cc);
    let mut target = if num_trackers > 0 {
        // Direct pod routing: the subset already splits the pods between activators.
        cc.saturating_mul(num_trackers)
    } else {
        let total = u64::try_from(backend_count).map_or(0, |b| cc.saturating_mul(b));
        if total > 0 {
            (total / u64::from(activator_count.max(1))).max(1)
        } else {
            0
        }
    };
    if backend_count > 0 && (cc == 0 || target > u64::from(MAX_CAPACITY)) {
        target = u64::from(MAX_CAPACITY);
    }
    target
}

impl RevisionThrottler {
    /// A throttler for `id` with no backends yet (capacity 0: requests queue).
    pub fn new(id: RevisionId, settings: RevisionSettings) -> Self {
        RevisionThrottler::with_gate(id, settings, Arc::new(FairQueue::new(None)))
    }

    /// [`RevisionThrottler::new`] counting its waiting requests against a shared `gate`.
    pub(super) fn with_gate(
        id: RevisionId,
        settings: RevisionSettings,
        gate: Arc<FairQueue>,
    ) -> Self {
        let cc = settings.container_concurrency;
        let breaker = if cc == 0 {
            RevisionBreaker::Infinite(InfiniteBreaker::new(settings.max_queued))
        } else {
            RevisionBreaker::Finite(Breaker::new(BreakerParams::revision(settings.max_queued)))
        };
        RevisionThrottler {
            id,
            settings,
            breaker,
            policy: Policy::for_cc(cc),
            routing: RwLock::new(Routing::default()),
            control: Mutex::new(Control {
                pods: Vec::new(),
                cluster_ip: None,
                num_activators: 0,
                activator_index: -1,
                backend_count: 0,
            }),
            gate,
            gate_hint: AtomicUsize::new(fair::NIL),
            refusal_logged_at: AtomicU64::new(0),
            waiter_arrived: Arc::new(tokio::sync::Notify::new()),
            // Creation counts as use: a revision is evicted only after a whole idle period.
            touched: AtomicBool::new(true),
        }
    }

    /// Try (spec §3.5): waits for a revision slot (while the capacity is 0 or all slots are taken),
    /// then picks a dest — the cluster IP if set, else a pod by the LB policy, taking a slot on it.
    /// If no pod has room, the revision slot is released and the attempt repeated after a yield
    /// (first time) or a 1 ms pause — never a hot spin, and an empty pod list is just "none".
    ///
    /// The returned [`Lease`] holds both slots until dropped. Dropping the future at any point
    /// leaks nothing. Fails only with [`ThrottlerError::QueueFull`].
    pub async fn acquire(self: Arc<Self>) -> Result<Lease, ThrottlerError> {
        // A load, and a store only on the first request after a sweep: the flag's cache line
        // stays shared between cores on a busy revision.
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
        let mut attempt: u32 = 0;
        loop {
            self.wait_for_slot().await?;
            // No await point until the slot is either in a Lease or released.
            if let Some(tracker) = self.pick() {
                return Ok(Lease {
                    tracker,
                    _revision: RevisionSlot(self),
                });
            }
            self.breaker.release();
            if attempt == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// [`RevisionThrottler::acquire`]'s first attempt when it needs no wait (an open infinite
    /// breaker, see [`RevisionBreaker::open_now`]) and a dest is picked. Gives the throttler
    /// back otherwise (nothing held), for `acquire`, which makes the same attempt first. The
    /// request path's common case at cc = 0 without the futures of `acquire` and its wait.
    pub fn lease_now(self: Arc<Self>) -> Result<Lease, Arc<Self>> {
        if !self.breaker.open_now() {
            return Err(self);
        }
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
        match self.pick() {
            Some(tracker) => Ok(Lease {
                tracker,
                _revision: RevisionSlot(self),
            }),
            None => Err(self),
        }
    }

    /// Takes a revision slot. A request that has to wait counts against the activator-wide
    /// [`FairQueue`] while it waits (only then: the fast path touches no shared state), and may
    /// be refused or displaced there when the cap is reached.
    fn wait_for_slot(&self) -> SlotWait<'_, impl Future<Output = Result<(), QueueFull>> + '_> {
        SlotWait {
            revision: self,
            ticket: None,
            acquire: self.breaker.acquire(),
        }
    }

    /// The error for a refused request, logged at most once per [`REFUSAL_LOG_INTERVAL`] per
    /// revision. `fair` is the activator-wide cap's reason; `None` is the revision's own cap.
    fn refuse(&self, fair: Option<Refused>) -> ThrottlerError {
        let now = monotonic_millis();
        let last = self.refusal_logged_at.load(Ordering::Relaxed);
        let interval = u64::try_from(REFUSAL_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .refusal_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let reason = match fair {
                None => "the revision's waiting requests are at ACTIVATOR_MAX_QUEUED_PER_REVISION",
                Some(Refused::OverShare) => {
                    "ACTIVATOR_MAX_QUEUED_TOTAL reached and the revision holds its fair share"
                }
                Some(Refused::Displaced) => {
                    "ACTIVATOR_MAX_QUEUED_TOTAL reached; a waiting request gave its place to a smaller tenant"
                }
            };
            tracing::warn!(
                "knative.dev/key" = %self.id,
                waiting_total = self.gate.waiting(),
                "pending request queue full: {reason}"
            );
        }
        ThrottlerError::QueueFull
    }

    /// Picks a dest under the read lock (spec §3.5 step 2).
    #[inline]
    fn pick(&self) -> Option<TrackerSlot> {
        let routing = self.routing.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(cluster_ip) = &routing.cluster_ip {
            return Some(TrackerSlot::new(cluster_ip.clone(), SlotKind::ClusterIp));
        }
        self.policy.pick(&routing.assigned)
    }

    pub(super) fn lock_control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a dests update (spec §3.6). Pod trackers are reused by dest string, so their
    /// in-flight counts survive; a cluster-IP update drops all pod trackers. Identical repeated
    /// updates are harmless.
    pub fn update_dests(&self, update: &DestsUpdate) {
        let mut control = self.lock_control();
        let backend_count = i64::try_from(update.dests.len()).unwrap_or(i64::MAX);
        match update.cluster_ip_dest.as_deref().filter(|d| !d.is_empty()) {
            None => {
                // `BTreeSet<String>` iterates in byte-wise order: the list stays sorted.
                let previous = std::mem::take(&mut control.pods);
                control.pods = update
                    .dests
                    .iter()
                    .map(|dest| {
                        previous
                            .binary_search_by(|t| t.dest().cmp(dest))
                            .ok()
                            .and_then(|i| previous.get(i).cloned())
                            .unwrap_or_else(|| {
                                Arc::new(PodTracker::new(dest, self.settings.container_concurrency))
                            })
                    })
                    .collect();
                control.cluster_ip = None;
            }
            Some(dest) => {
                control.pods = Vec::new();
                let reuse = control.cluster_ip.as_ref().filter(|t| t.dest() == dest);
                control.cluster_ip = Some(match reuse {
                    Some(tracker) => tracker.clone(),
                    None => Arc::new(PodTracker::unlimited(dest)),
                });
            }
        }
        let has_target = control.cluster_ip.is_some() || !control.pods.is_empty();
        self.update_capacity(&mut control, if has_target { backend_count } else { 0 });
    }

    /// Applies the revision's healthy activator IPs from its public Endpoints (spec §3.8; the
    /// caller picks the subsets whose port is named [`RevisionThrottler::port_name`]). If `self_ip`
    /// is not among them nothing changes; otherwise the IPs are sorted (byte-wise) and
    /// deduplicated, and count/index stored — recomputing the capacity if either changed.
    /// Returns whether anything changed.
    pub fn update_activators<S: AsRef<str>>(&self, ips: &[S], self_ip: &str) -> bool {
        let mut sorted: Vec<&str> = ips.iter().map(AsRef::as_ref).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let index = infer_index(&sorted, self_ip);
        if index < 0 {
            return false;
        }
        let count = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
        let mut control = self.lock_control();
        if control.num_activators == count && control.activator_index == index {
            return false;
        }
        control.num_activators = count;
        control.activator_index = index;
        let backend_count = control.backend_count;
        self.update_capacity(&mut control, backend_count);
        true
    }

    /// Recomputes the assignment and the revision capacity (spec §3.3, Go `updateCapacity`).
    /// Runs with the control lock held, so capacity updates never interleave.
    pub(super) fn update_capacity(&self, control: &mut Control, backend_count: i64) {
        let cc = self.settings.container_concurrency;
        let assigned = if control.cluster_ip.is_some() {
            Vec::new()
        } else if cc > 0 {
            for tracker in &control.pods {
                tracker.set_capacity(cc);
            }
            assign_slice(
                &control.pods,
                control.activator_index,
                control.num_activators,
            )
        } else {
            control.pods.clone()
        };
        let num_trackers = u64::try_from(assigned.len()).unwrap_or(u64::MAX);
        {
            let mut routing = self.routing.write().unwrap_or_else(PoisonError::into_inner);
            routing.assigned = assigned;
            routing.cluster_ip = control.cluster_ip.clone();
        }
        let target = calculate_capacity(cc, backend_count, num_trackers, control.num_activators);
        tracing::debug!(
            revision = %self.id,
            capacity = target,
            backends = backend_count,
            index = control.activator_index,
            activators = control.num_activators,
            "throttler capacity updated"
        );
        control.backend_count = backend_count;
        self.breaker.set_capacity(target);
    }

    /// The revision.
    pub fn id(&self) -> &RevisionId {
        &self.id
    }

    /// The settings it was created with.
    pub fn settings(&self) -> RevisionSettings {
        self.settings
    }

    /// `spec.containerConcurrency`.
    pub fn container_concurrency(&self) -> u32 {
        self.settings.container_concurrency
    }

    /// `http` or `http2`: the name of the public Endpoints port whose addresses are activators.
    pub fn port_name(&self) -> &'static str {
        self.settings.protocol.port_name()
    }

    /// The serving protocol.
    pub fn protocol(&self) -> Protocol {
        self.settings.protocol
    }

    /// Whether the revision breaker is the infinite (cc = 0) one.
    pub fn is_infinite(&self) -> bool {
        matches!(self.breaker, RevisionBreaker::Infinite(_))
    }

    /// Revision breaker capacity (infinite breaker: 0 closed, 1 open).
    pub fn capacity(&self) -> u64 {
        self.breaker.capacity()
    }

    /// Revision slots in use (cc > 0; always 0 for the infinite breaker).
    pub fn in_flight(&self) -> u64 {
        match &self.breaker {
            RevisionBreaker::Finite(b) => u64::from(b.in_flight()),
            RevisionBreaker::Infinite(_) => 0,
        }
    }

    /// Notified whenever a request starts to wait for a revision slot (fast probing of a
    /// revision with nothing healthy starts then; a stale permit only causes one early probe).
    pub fn waiter_arrived(&self) -> &Arc<tokio::sync::Notify> {
        &self.waiter_arrived
    }

    /// Whether a request asked for a slot since the last call (which clears the mark).
    pub fn take_touched(&self) -> bool {
        self.touched.swap(false, Ordering::Relaxed)
    }

    /// Requests waiting for a revision slot.
    pub fn waiting(&self) -> usize {
        match &self.breaker {
            RevisionBreaker::Finite(b) => b.waiting(),
            RevisionBreaker::Infinite(b) => b.waiting(),
        }
    }

    fn routing(&self) -> std::sync::RwLockReadGuard<'_, Routing> {
        self.routing.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Dests of this activator's assigned pods, in order (sorted).
    pub fn assigned_dests(&self) -> Vec<String> {
        self.routing()
            .assigned
            .iter()
            .map(|t| t.dest().to_owned())
            .collect()
    }

    /// Capacities of the assigned pod trackers, in `assigned_dests` order (cc = 0: all 1).
    pub fn assigned_capacities(&self) -> Vec<u64> {
        self.routing()
            .assigned
            .iter()
            .map(|t| t.capacity())
            .collect()
    }

    /// Dests of all healthy pods (sorted).
    pub fn pod_dests(&self) -> Vec<String> {
        self.lock_control()
            .pods
            .iter()
            .map(|t| t.dest().to_owned())
            .collect()
    }

    /// The cluster-IP dest, when routing through the cluster IP.
    pub fn cluster_ip_dest(&self) -> Option<String> {
        self.routing()
            .cluster_ip
            .as_ref()
            .map(|t| t.dest().to_owned())
    }

    /// Requests this activator has in flight to an assigned pod (`None` if not assigned).
    pub fn dest_in_flight(&self, dest: &str) -> Option<u64> {
        self.routing()
            .assigned
            .iter()
            .find(|t| t.dest() == dest)
            .map(|t| t.in_flight())
    }

    /// Number of activators for this revision (0 until known).
    pub fn activator_count(&self) -> u32 {
        self.lock_control().num_activators
    }

    /// This activator's index among them (−1 until known).
    pub fn activator_index(&self) -> i32 {
        self.lock_control().activator_index
    }

    /// The backend count of the last capacity update.
    pub fn backend_count(&self) -> i64 {
        self.lock_control().backend_count
    }
}

pin_project_lite::pin_project! {
    /// [`RevisionThrottler::wait_for_slot`]: the breaker's future and, once the request has to
    /// wait, its ticket in the gate, in one poll function for the whole wait (no `async` state
    /// machine around them to resume on every poll). The first `Pending` of the breaker admits
    /// the request to the gate with the task's waker (and returns at once: the breaker has that
    /// waker too); later polls look at the displacement only while the slot is still not
    /// granted. Dropped while waiting, it leaves the gate, then the breaker's queue.
    struct SlotWait<'a, A> {
        revision: &'a RevisionThrottler,
        // Field order is drop order: the ticket goes before the breaker's wait.
        ticket: Option<Ticket<'a>>,
        // The future of `RevisionBreaker::acquire`.
        #[pin]
        acquire: A,
    }
}

impl<A: Future<Output = Result<(), QueueFull>>> Future for SlotWait<'_, A> {
    type Output = Result<(), ThrottlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let revision = *this.revision;
        let outcome = if let Poll::Ready(acquired) = this.acquire.poll(cx) {
            acquired.map_err(|QueueFull| None)
        } else {
            match this.ticket {
                Some(ticket) => match ticket.poll_displaced(cx) {
                    Poll::Ready(refused) => Err(Some(refused)),
                    Poll::Pending => return Poll::Pending,
                },
                None => match revision.gate.enter(
                    &revision.id.namespace,
                    std::ptr::from_ref(revision) as usize,
                    &revision.gate_hint,
                    cx.waker(),
                ) {
                    Ok(entered) => {
                        *this.ticket = Some(entered);
                        revision.waiter_arrived.notify_one();
                        return Poll::Pending;
                    }
                    Err(refused) => Err(Some(refused)),
                },
            }
        };
        // Done waiting: leave the gate now.
        *this.ticket = None;
        Poll::Ready(outcome.map_err(|fair| revision.refuse(fair)))
    }
}

/// Owns one revision-breaker slot.
#[derive(Debug)]
struct RevisionSlot(Arc<RevisionThrottler>);

impl Drop for RevisionSlot {
    fn drop(&mut self) {
        self.0.breaker.release();
    }
}

/// A granted request: the dest to proxy to, holding the revision slot and the pod slot (or p2c
/// weight) until dropped — the pod slot is released first, then the revision slot. Attach it to
/// the response body so the slots are held until the response ends.
pub struct Lease {
    // Field order is drop order: the tracker slot goes before the revision slot.
    tracker: TrackerSlot,
    _revision: RevisionSlot,
}

impl Lease {
    /// The `host:port` to send the request to.
    pub fn dest(&self) -> &str {
        self.tracker.tracker().dest()
    }

    /// [`Lease::dest`] as a socket address (parsed once per tracker), if it is one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.tracker.tracker().socket_addr()
    }

    /// Whether the dest is the revision's cluster IP (no per-pod limit applies).
    pub fn is_cluster_ip(&self) -> bool {
        self.tracker.kind() == SlotKind::ClusterIp
    }

    /// The revision this lease belongs to.
    pub fn revision(&self) -> &RevisionId {
        &self._revision.0.id
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("revision", self.revision())
            .field("dest", &self.dest())
            .field("is_cluster_ip", &self.is_cluster_ip())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(cc: u32) -> RevisionThrottler {
        RevisionThrottler::new(
            RevisionId::new("test-namespace", "test-revision"),
            RevisionSettings {
                container_concurrency: cc,
                ..RevisionSettings::default()
            },
        )
    }

    /// Go `makeTrackers`: dests "0", "1", … .
    fn make_trackers(n: usize, cc: u32) -> Vec<Arc<PodTracker>> {
        (0..n)
            .map(|i| Arc::new(PodTracker::new(&i.to_string(), cc)))
            .collect()
    }

    /// Go `TestThrottlerUpdateCapacity`: set trackers/activators, call `updateCapacity(backends)`.
    fn capacity_with(
        cc: u32,
        backends: i64,
        activators: u32,
        index: i32,
        pods: usize,
    ) -> (u64, RevisionThrottler) {
        let rt = rev(cc);
        {
            let mut control = rt.lock_control();
            control.num_activators = activators;
            control.activator_index = index;
            control.pods = make_trackers(pods, cc);
            rt.update_capacity(&mut control, backends);
        }
        (rt.capacity(), rt)
    }

    /// §11 item 29 (cc 10, no trackers).
    #[test]
    fn item29_capacity_table() {
        assert_eq!(capacity_with(10, 1, 0, 0, 0).0, 10);
        assert_eq!(capacity_with(10, 10, 0, 0, 0).0, 100);
        assert_eq!(capacity_with(10, 100, 0, 0, 0).0, 1000);
        assert_eq!(capacity_with(10, 10, 5, 0, 0).0, 20);
        assert_eq!(capacity_with(10, 10, 200, 0, 0).0, 1);
        assert_eq!(capacity_with(10, 0, 200, 0, 0).0, 0);
    }

    /// §11 item 30 (cc 0: infinite breaker).
    #[test]
    fn item30_infinite_breaker_capacity() {
        assert_eq!(capacity_with(0, 0, 0, 0, 0).0, 0);
        assert_eq!(capacity_with(0, 1, 0, 0, 0).0, 1);
        assert_eq!(capacity_with(0, 10, 0, 0, 0).0, 1);
        assert_eq!(capacity_with(0, 0, 200, 0, 0).0, 0);
        assert_eq!(capacity_with(0, 1, 200, 0, 0).0, 1);
    }

    /// §11 item 31 (with trackers).
    #[test]
    fn item31_capacity_with_trackers() {
        assert_eq!(capacity_with(10, 0, 1, 0, 1).0, 10);
        assert_eq!(capacity_with(10, -1, 1, 0, 2).0, 20);
        assert_eq!(capacity_with(10, -1, 2, 0, 2).0, 10);
        assert_eq!(capacity_with(10, -1, 2, 0, 3).0, 20);
        assert_eq!(capacity_with(10, -1, 2, 1, 3).0, 10);
        assert_eq!(capacity_with(1, 5, 2, 0, 5).0, 3);
        assert_eq!(capacity_with(1, 5, 2, 1, 5).0, 2);
        let (capacity, rt) = capacity_with(0, 1, 2, 1, 3);
        assert_eq!(capacity, 1);
        assert_eq!(
            rt.assigned_dests(),
            vec!["0", "1", "2"],
            "cc 0: no subsetting"
        );
    }

    /// §11 item 32.
    #[test]
    fn item32_capacity_clamps_to_max() {
        let over = u64::from(MAX_CAPACITY) + 5;
        assert_eq!(calculate_capacity(0, 1, over, 1), u64::from(MAX_CAPACITY));
        // And cc > 0 products above the maximum clamp too.
        assert_eq!(
            calculate_capacity(1000, 10, u64::from(MAX_CAPACITY), 1),
            u64::from(MAX_CAPACITY)
        );
        assert_eq!(
            calculate_capacity(u32::MAX, i64::MAX, u64::MAX, 0),
            u64::from(MAX_CAPACITY)
        );
        // Without backends the target is not clamped, but the breaker clamps to M.
        let rt = rev(1000);
        rt.breaker
            .set_capacity(calculate_capacity(1000, 0, over, 1));
        assert_eq!(rt.capacity(), u64::from(MAX_CAPACITY));
    }

    fn update(dests: &[&str]) -> DestsUpdate {
        DestsUpdate {
            cluster_ip_dest: None,
            dests: dests.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// §11 item 36.
    #[test]
    fn item36_pod_assignment_finite() {
        let rt = rev(42);
        assert!(rt.update_activators(&["a0", "a1", "a2", "a3"], "a0"));
        rt.update_dests(&update(&["ip4", "ip3", "ip5", "ip2", "ip1", "ip0"]));
        assert_eq!(rt.pod_dests().len(), 6);
        assert_eq!(rt.assigned_dests(), vec!["ip0", "ip4"]);
        assert_eq!(rt.capacity(), 84);
        assert_eq!(rt.assigned_capacities(), vec![42, 42]);
        rt.update_dests(&update(&[]));
        assert!(rt.pod_dests().is_empty() && rt.assigned_dests().is_empty());
        assert_eq!(rt.capacity(), 0);
    }

    /// §11 item 37.
    #[test]
    fn item37_pod_assignment_infinite() {
        let rt = rev(0);
        rt.update_dests(&update(&["ip3", "ip2", "ip1"]));
        assert_eq!(rt.pod_dests().len(), 3);
        assert_eq!(rt.assigned_dests().len(), 3);
        assert_eq!(rt.capacity(), 1);
        assert_eq!(rt.assigned_capacities()[0], 1);
        rt.update_dests(&update(&[]));
        assert!(rt.pod_dests().is_empty() && rt.assigned_dests().is_empty());
        assert_eq!(rt.capacity(), 0);
    }

    /// §11 item 40.
    #[test]
    fn item40_cc0_uses_the_infinite_breaker() {
        assert!(rev(0).is_infinite());
        assert!(!rev(1).is_infinite());
    }

    /// §11 item 44, breaker part: assignment leaves tracker breakers alone.
    #[test]
    fn item44_assign_slice_leaves_tracker_capacity_untouched() {
        let trackers = make_trackers(3, 5);
        for t in &trackers {
            t.set_capacity(0);
        }
        let got = assign_slice(&trackers, 1, 2);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].dest(), "1");
        assert_eq!(got[0].capacity(), 0);
    }

    #[test]
    fn trackers_are_reused_across_updates() {
        let rt = rev(2);
        rt.update_dests(&update(&["b:1", "a:1"]));
        let a = rt.lock_control().pods[0].clone();
        assert_eq!(a.dest(), "a:1");
        assert!(a.try_reserve());
        rt.update_dests(&update(&["c:1", "a:1"]));
        let again = rt.lock_control().pods[0].clone();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(
            rt.dest_in_flight("a:1"),
            Some(1),
            "in-flight count survived"
        );
        assert_eq!(rt.assigned_dests(), vec!["a:1", "c:1"]);
        a.release();
    }

    #[test]
    fn byte_wise_sorting_not_numeric() {
        let rt = rev(1);
        rt.update_dests(&update(&["10.0.0.9:80", "10.0.0.10:80", "9.0.0.1:80"]));
        assert_eq!(
            rt.assigned_dests(),
            vec!["10.0.0.10:80", "10.0.0.9:80", "9.0.0.1:80"]
        );
    }

    #[test]
    fn cluster_ip_capacity_divides_by_activators() {
        let rt = rev(10);
        rt.update_activators(&["1.1.1.2", "1.1.1.1", "1.1.1.3"], "1.1.1.2");
        assert_eq!((rt.activator_count(), rt.activator_index()), (3, 1));
        rt.update_dests(&DestsUpdate {
            cluster_ip_dest: Some("129.0.0.1:80".into()),
            dests: ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect(),
        });
        assert_eq!(rt.capacity(), 40 / 3);
        assert_eq!(rt.cluster_ip_dest().as_deref(), Some("129.0.0.1:80"));
        assert!(rt.assigned_dests().is_empty() && rt.pod_dests().is_empty());
        // Empty cluster-IP string means pod routing.
        rt.update_dests(&DestsUpdate {
            cluster_ip_dest: Some(String::new()),
            dests: ["a"].iter().map(|s| s.to_string()).collect(),
        });
        assert_eq!(rt.cluster_ip_dest(), None);
        assert_eq!(rt.capacity(), 10);
    }

    #[test]
    fn update_activators_ignores_sets_without_self_and_duplicates() {
        let rt = rev(1);
        assert!(!rt.update_activators(&["1.1.1.1"], "2.2.2.2"));
        assert_eq!((rt.activator_count(), rt.activator_index()), (0, -1));
        assert!(rt.update_activators(&["2.2.2.2", "1.1.1.1", "2.2.2.2"], "2.2.2.2"));
        assert_eq!((rt.activator_count(), rt.activator_index()), (2, 1));
        assert!(
            !rt.update_activators(&["1.1.1.1", "2.2.2.2"], "2.2.2.2"),
            "no change"
        );
        // Self missing: keep the previous values.
        assert!(!rt.update_activators(&["3.3.3.3"], "2.2.2.2"));
        assert_eq!((rt.activator_count(), rt.activator_index()), (2, 1));
        let empty: [&str; 0] = [];
        assert!(!rt.update_activators(&empty, "2.2.2.2"));
    }
}
