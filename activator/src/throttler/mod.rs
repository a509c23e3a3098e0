//! The throttler (spec §3, §4): per revision, a breaker whose capacity follows the revision's
//! healthy backends, pod trackers limiting each pod to its container concurrency, pod subsetting
//! across activators and a load-balancing policy.
//!
//! - [`Throttler`]: the registry keyed by [`RevisionId`] — create/remove revisions, apply dests and
//!   activator updates, and [`Throttler::try_acquire`] a [`Lease`] on the request path;
//! - [`RevisionThrottler`]: one revision (settings fixed at creation; capacity computation §3.3);
//! - [`Breaker`]: the finite breaker with dynamic capacity (§3.2); [`InfiniteBreaker`]: the cc = 0
//!   gate (§3.4).
//!
//! Typical use:
//! ```
//! # use activator::throttler::*;
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! # rt.block_on(async {
//! let throttler = Throttler::new();
//! let id = RevisionId::new("default", "hello-00001");
//! throttler.ensure_revision(&id, RevisionSettings { container_concurrency: 1, ..Default::default() });
//! throttler.update_dests(&id, &DestsUpdate {
//!     cluster_ip_dest: None,
//!     dests: ["10.0.0.1:8012".to_string()].into(),
//! })?;
//! let lease = throttler.try_acquire(&id).await?; // waits while capacity is 0
//! assert_eq!(lease.dest(), "10.0.0.1:8012");
//! drop(lease); // at the end of the response body
//! # Ok::<(), ThrottlerError>(())
//! # }).unwrap();
//! ```

mod fair;
mod infinite;
mod policy;
mod revision;
mod subset;
mod tracker;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use crate::FastHash;
use futures_util::future::Either;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};

use tokio::sync::mpsc;

pub use infinite::InfiniteBreaker;
pub use knative_common::breaker::{
    Acquire, Breaker, BreakerParams, Permit, QueueFull, MAX_CAPACITY,
};
pub use revision::{Lease, RevisionThrottler};

/// A revision: (namespace, name). Displays as `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionId {
    /// Namespace.
    pub namespace: String,
    /// Revision name.
    pub name: String,
}

impl RevisionId {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RevisionId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The revision's serving protocol (from its serving container's first port name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1 (port name anything but `h2c`); public Endpoints port name `http`.
    #[default]
    Http1,
    /// h2c (port named `h2c`); public Endpoints port name `http2`.
    H2c,
}

impl Protocol {
    /// The public Endpoints port name whose addresses are this revision's activators.
    pub fn port_name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::H2c => "http2",
        }
    }
}

/// Per-revision settings, fixed when the revision's throttler is created (spec §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionSettings {
    /// `spec.containerConcurrency` (nil → 0). 0 = infinite breaker + power-of-two choices; 1–3 =
    /// first available; ≥ 4 = round robin.
    pub container_concurrency: u32,
    /// Serving protocol.
    pub protocol: Protocol,
    /// Optional cap on requests *waiting* for a revision slot (running ones not counted); beyond it
    /// [`Throttler::try_acquire`] fails with [`ThrottlerError::QueueFull`]. `None` (Knative's
    /// behavior) = effectively unbounded (`Q + M` = 10000 + 2^31−1).
    pub max_queued: Option<usize>,
}

/// A dests update from the revision backends manager (spec §5.10).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestsUpdate {
    /// `Some("clusterIP:port")` to route through the cluster IP (`None` or `Some("")`: pod routing).
    pub cluster_ip_dest: Option<String>,
    /// Pod routing: the healthy pods' `ip:port`; cluster-IP routing: the K8s-ready endpoints (only
    /// their count matters); scaled to zero: empty.
    pub dests: BTreeSet<String>,
}

/// Errors of the throttler.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThrottlerError {
    /// No throttler exists for the revision (holds the revision *name*).
    #[error("revision.serving.knative.dev \"{0}\" not found")]
    RevisionNotFound(String),
    /// The revision's queue is full.
    #[error("pending request queue full")]
    QueueFull,
}

type Revisions = HashMap<String, HashMap<String, Arc<RevisionThrottler>, FastHash>, FastHash>;

/// The settings of a revision known to discovery, or `None` for an unknown one (see
/// [`Throttler::enable_activation`]).
pub type RevisionLookup = dyn Fn(&str, &str) -> Option<RevisionSettings> + Send + Sync;

/// Creation of a revision's throttler by its first request (lazy per-revision state).
struct Activation {
    lookup: Box<RevisionLookup>,
    /// Told the id of every throttler so created (the backends manager starts its watcher).
    created: mpsc::UnboundedSender<RevisionId>,
}

impl fmt::Debug for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activation").finish_non_exhaustive()
    }
}

/// The registry of revision throttlers, keyed by namespace then name so that lookups borrow the
/// caller's strings (one read lock, two hash lookups, no allocation). The request path's lookup
/// ([`Throttler::try_acquire_by`]) first tries the revision it found last on this thread (see
/// [`Throttler::lookup`]).
#[derive(Debug)]
pub struct Throttler {
    revisions: RwLock<Revisions>,
    gate: Arc<fair::FairQueue>,
    activation: OnceLock<Activation>,
    /// This registry among all (the thread's cached revision names its registry).
    registry: u64,
    /// Bumped, under the write lock, before a throttler is taken out of the registry (eviction,
    /// removal): a revision cached at an older generation is looked up again.
    generation: AtomicU64,
}

/// Source of [`Throttler::registry`].
static REGISTRIES: AtomicU64 = AtomicU64::new(0);

/// The revision this thread's request path found last (see [`Throttler::lookup`]).
struct LastRevision {
    registry: u64,
    /// The registry's generation when it was found (under the read lock).
    generation: u64,
    /// Weak: a cached revision must not count as a user (eviction tests the strong count).
    revision: Weak<RevisionThrottler>,
}

thread_local! {
    static LAST_REVISION: RefCell<Option<LastRevision>> = const { RefCell::new(None) };
}

impl Default for Throttler {
    fn default() -> Self {
        Throttler::with_max_queued_total(None)
    }
}

impl Throttler {
    /// An empty registry.
    pub fn new() -> Self {
        Throttler::default()
    }

    /// An empty registry whose revisions together park at most `max` waiting requests (`None` =
    /// unbounded), shared fairly between namespaces and revisions (see `fair.rs`): beyond it
    /// [`Throttler::try_acquire`] fails with [`ThrottlerError::QueueFull`] for a tenant holding
    /// its share, and a smaller tenant's request displaces the newest waiting request of the
    /// largest one (which then fails the same way).
    pub fn with_max_queued_total(max: Option<usize>) -> Self {
        Throttler {
            revisions: RwLock::default(),
            gate: Arc::new(fair::FairQueue::new(max)),
            activation: OnceLock::new(),
            registry: REGISTRIES.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// Lazy per-revision state: from now on a request for a revision without a throttler
    /// creates it when `lookup` knows the revision (with the settings it returns), and the id is
    /// sent on `created` (once per creation). Without this a request for such a revision fails
    /// with [`ThrottlerError::RevisionNotFound`]. Returns false if activation was already on.
    pub fn enable_activation(
        &self,
        lookup: Box<RevisionLookup>,
        created: mpsc::UnboundedSender<RevisionId>,
    ) -> bool {
        self.activation.set(Activation { lookup, created }).is_ok()
    }

    /// The revision's throttler created for a request (see [`Throttler::enable_activation`]).
    fn activate(&self, namespace: &str, name: &str) -> Option<Arc<RevisionThrottler>> {
        let activation = self.activation.get()?;
        let settings = (activation.lookup)(namespace, name)?;
        let id = RevisionId::new(namespace, name);
        let (revision, created) = self.ensure(&id, settings);
        if created {
            // The manager may be gone at shutdown; the throttler then serves without updates.
            let _ = activation.created.send(id);
        }
        Some(revision)
    }

    /// Removes the revision's throttler if the registry holds the only reference to it: no
    /// request waits for it or holds a lease, nobody else looks at it. Requests obtain
    /// references from the registry under its lock, or from a thread's cached `Weak` checked
    /// against the generation this bumps first (see [`Throttler::lookup`]), so none can start
    /// using it after the check (the revision's watcher holds a `Weak` and only reads through
    /// it). Returns the removed throttler (then held by the caller alone).
    pub fn evict_if_unused(&self, id: &RevisionId) -> Option<Arc<RevisionThrottler>> {
        let mut revisions = self
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let names = revisions.get_mut(id.namespace.as_str())?;
        let revision = names.get(id.name.as_str())?;
        // Invalidate the cached lookups, then look at the count: a lookup that took a reference
        // without seeing the new generation has its reference counted here (two SeqCst fences,
        // each between a write and a read of the other side's location: see `lookup`).
        self.generation.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if Arc::strong_count(revision) != 1 {
            return None;
        }
        let removed = names.remove(id.name.as_str());
        if names.is_empty() {
            revisions.remove(id.namespace.as_str());
        }
        removed
    }

    /// Requests waiting for a revision slot now, across all revisions.
    pub fn queued(&self) -> usize {
        self.gate.waiting()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revisions> {
        self.revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gets the revision's throttler, creating it with `settings` if missing (settings of an
    /// existing throttler are never changed).
    pub fn ensure_revision(
        &self,
        id: &RevisionId,
        settings: RevisionSettings,
    ) -> Arc<RevisionThrottler> {
        self.ensure(id, settings).0
    }

    /// [`Throttler::ensure_revision`], telling whether this call created it.
    fn ensure(
        &self,
        id: &RevisionId,
        settings: RevisionSettings,
    ) -> (Arc<RevisionThrottler>, bool) {
        if let Some(existing) = self.get(&id.namespace, &id.name) {
            return (existing, false);
        }
        let mut revisions = self
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut created = false;
        let revision = revisions
            .entry(id.namespace.clone())
            .or_default()
            .entry(id.name.clone())
            .or_insert_with(|| {
                created = true;
                Arc::new(RevisionThrottler::with_gate(
                    id.clone(),
                    settings,
                    Arc::clone(&self.gate),
                ))
            })
            .clone();
        (revision, created)
    }

    /// Removes the revision's throttler (spec §3.7). Requests holding leases keep their reference;
    /// later lookups and updates fail with [`ThrottlerError::RevisionNotFound`]. Returns whether it
    /// existed.
    pub fn remove_revision(&self, id: &RevisionId) -> bool {
        let mut revisions = self
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(names) = revisions.get_mut(id.namespace.as_str()) else {
            return false;
        };
        if !names.contains_key(id.name.as_str()) {
            return false;
        }
        // Cached lookups see it gone from now on (see `lookup`).
        self.generation.fetch_add(1, Ordering::SeqCst);
        let removed = names.remove(id.name.as_str()).is_some();
        if names.is_empty() {
            revisions.remove(id.namespace.as_str());
        }
        removed
    }

    /// The revision's throttler, looked up with borrowed strings.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<RevisionThrottler>> {
        self.read().get(namespace)?.get(name).cloned()
    }

    /// [`Throttler::get`] for the request path: the revision this thread found last, when it is
    /// the one asked for and the registry's generation has not moved since; else the registry
    /// (which then becomes the thread's last revision). No lock and no hashing when it is.
    ///
    /// Why a cached revision is still in the registry when this returns it: it was found there
    /// at generation `g`, and anything that takes a throttler out bumps the generation under the
    /// write lock before it does (eviction: before it tests the strong count). This takes its
    /// reference (the `Weak` upgraded: a write of the strong count), then, after a SeqCst fence,
    /// reads the generation; eviction bumps the generation, then, after a SeqCst fence, reads
    /// the strong count. Of two SeqCst fences one comes first: if this one does, eviction sees
    /// the reference and gives up (the next idle sweep looks again); if eviction's does, this
    /// sees the new generation, drops its reference and takes the registry's lock (where the
    /// eviction, holding the write lock, is waited for).
    fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<RevisionThrottler>> {
        let cached = LAST_REVISION
            .try_with(|last| {
                let last = last.borrow();
                let last = last.as_ref()?;
                if last.registry != self.registry
                    || last.generation != self.generation.load(Ordering::Relaxed)
                {
                    return None;
                }
                let revision = last.revision.upgrade()?;
                let id = revision.id();
                if id.name != name || id.namespace != namespace {
                    return None;
                }
                fence(Ordering::SeqCst);
                (self.generation.load(Ordering::Relaxed) == last.generation).then_some(revision)
            })
            .ok()
            .flatten();
        if cached.is_some() {
            return cached;
        }
        let (revision, generation) = {
            let revisions = self.read();
            let revision = revisions.get(namespace)?.get(name)?.clone();
            // Only bumped under the write lock: stable while the read lock is held.
            (revision, self.generation.load(Ordering::Relaxed))
        };
        let _ = LAST_REVISION.try_with(|last| {
            *last.borrow_mut() = Some(LastRevision {
                registry: self.registry,
                generation,
                revision: Arc::downgrade(&revision),
            });
        });
        Some(revision)
    }

    /// The revision's throttler.
    pub fn revision(&self, id: &RevisionId) -> Option<Arc<RevisionThrottler>> {
        self.get(&id.namespace, &id.name)
    }

    fn require(&self, id: &RevisionId) -> Result<Arc<RevisionThrottler>, ThrottlerError> {
        self.revision(id)
            .ok_or_else(|| ThrottlerError::RevisionNotFound(id.name.clone()))
    }

    /// Applies a dests update (spec §3.6); updates of one revision are serialized.
    pub fn update_dests(
        &self,
        id: &RevisionId,
        update: &DestsUpdate,
    ) -> Result<(), ThrottlerError> {
        self.require(id)?.update_dests(update);
        Ok(())
    }

    /// Applies the healthy activator IPs of the revision's public Endpoints (spec §3.8): only when
    /// `self_ip` is among them; see [`RevisionThrottler::update_activators`]. Returns whether the
    /// activator count or index changed.
    pub fn update_activators<S: AsRef<str>>(
        &self,
        id: &RevisionId,
        public_endpoint_ips: &[S],
        self_ip: &str,
    ) -> Result<bool, ThrottlerError> {
        Ok(self
            .require(id)?
            .update_activators(public_endpoint_ips, self_ip))
    }

    /// Try (spec §3.5) for the revision: waits for capacity, picks a dest and returns a [`Lease`]
    /// holding the slots. The lookup happens now; the returned future is `'static` and may be
    /// dropped at any time (e.g. by a timeout) without leaking anything.
    pub fn try_acquire(
        &self,
        id: &RevisionId,
    ) -> impl Future<Output = Result<Lease, ThrottlerError>> + Send + 'static {
        self.try_acquire_by(&id.namespace, &id.name)
    }

    /// [`Throttler::try_acquire`] with borrowed namespace and name.
    pub fn try_acquire_by(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Lease, ThrottlerError>> + Send + 'static {
        let found = self
            .lookup(namespace, name)
            .or_else(|| self.activate(namespace, name));
        // A lease at once when no wait is needed: no future of `acquire` is made or polled. A
        // wait is `acquire`'s own future (no `async` layer around it to resume on every poll).
        match found.map(RevisionThrottler::lease_now) {
            Some(Ok(lease)) => Either::Left(std::future::ready(Ok(lease))),
            Some(Err(revision)) => Either::Right(revision.acquire()),
            None => Either::Left(std::future::ready(Err(ThrottlerError::RevisionNotFound(
                name.to_owned(),
            )))),
        }
    }

    /// Number of revisions.
    pub fn len(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    /// Whether there are no revisions.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// All revision ids (unordered).
    pub fn revision_ids(&self) -> Vec<RevisionId> {
        self.read()
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |name| RevisionId::new(ns, name)))
            .collect()
    }
}
