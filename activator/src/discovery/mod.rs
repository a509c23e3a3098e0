//! Discovery: what the activator knows about revisions — their settings (spec §3.1), their private
//! endpoints (pods, cluster IP; spec §5.1) and their public endpoints (activators; spec §3.8).
//!
//! A source (the [`FileSource`] here; a Kubernetes source later) publishes immutable
//! [`Snapshot`]s through a [`SnapshotCell`]; consumers either [`DiscoverySource::subscribe`] to
//! every change (the backends manager, [`crate::backends`]) or look one revision up on the request
//! path with [`DiscoverySource::revision`] (one read lock, two hash lookups with borrowed strings,
//! no allocation).
//!
//! ```
//! # use activator::discovery::*;
//! # use activator::throttler::RevisionId;
//! let snapshot = Snapshot::new([RevisionEntry::new(RevisionSpec::new(RevisionId::new("default", "hello-00001")))]);
//! let cell = SnapshotCell::new();
//! cell.publish(snapshot);
//! assert!(cell.revision("default", "hello-00001").is_some());
//! assert!(cell.revision("default", "nope").is_none());
//! ```

mod document;
mod file;
pub mod system;
mod table;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::watch;

use crate::throttler::{Protocol, RevisionId, RevisionSettings};

pub use document::{
    parse_document, parse_document_cached, parse_document_delta, DocumentCache, DocumentDelta,
    DocumentError,
};
pub use file::{FileSource, FileStatus, DEFAULT_POLL_INTERVAL};
pub use system::{ConfigMapObject, SecretObject, SystemObjects};
pub use table::RevisionTable;

/// `timeoutSeconds` when the revision does not set it (Knative's `revision-timeout-seconds`).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// Largest accepted `containerConcurrency` (Knative's default `container-concurrency-max-limit`).
pub const MAX_CONTAINER_CONCURRENCY: u32 = 1000;

/// A revision's settings (spec §3.1 and the timeouts of §2.11). Revisions are immutable in
/// Knative: the throttler keeps the settings it was created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionSpec {
    /// (namespace, name).
    pub id: RevisionId,
    /// `spec.containerConcurrency` (0 = unlimited).
    pub container_concurrency: u32,
    /// `spec.timeoutSeconds` (default [`DEFAULT_TIMEOUT_SECONDS`]).
    pub timeout_seconds: u64,
    /// `spec.responseStartTimeoutSeconds`.
    pub response_start_timeout_seconds: Option<u64>,
    /// `spec.idleTimeoutSeconds`.
    pub idle_timeout_seconds: Option<u64>,
    /// Serving protocol (HTTP/1 or h2c).
    pub protocol: Protocol,
    /// Label `serving.knative.dev/service` (may be empty).
    pub service: String,
    /// Label `serving.knative.dev/configuration` (may be empty).
    pub configuration: String,
    /// Probe optimisation (spec §5.2): trust a successful queue-proxy probe of a pod Kubernetes
    /// still lists as not ready. `true` unless the serving container has an exec readiness probe
    /// or a startup probe (or a sidecar has a startup probe).
    pub probe_optimisation: bool,
}

impl RevisionSpec {
    /// A spec with Knative's defaults: cc 0, timeout 300 s, HTTP/1, probe optimisation on.
    pub fn new(id: RevisionId) -> Self {
        RevisionSpec {
            id,
            container_concurrency: 0,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            protocol: Protocol::Http1,
            service: String::new(),
            configuration: String::new(),
            probe_optimisation: true,
        }
    }

    /// The throttler settings for this revision (`max_queued` is the activator-wide option).
    pub fn throttler_settings(&self, max_queued: Option<usize>) -> RevisionSettings {
        RevisionSettings {
            container_concurrency: self.container_concurrency,
            protocol: self.protocol,
            max_queued,
        }
    }
}

/// The revision's private endpoints (its pods) and private Service (spec §5.1, §5.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrivateEndpoints {
    /// Pods Kubernetes reports ready, as `ip:port` (IPv6 bracketed).
    pub ready: Vec<String>,
    /// Pods Kubernetes reports not ready, as `ip:port`.
    pub not_ready: Vec<String>,
    /// `clusterIP:port` of the private Service (its `http`/`http2` *service* port); `None` when
    /// the Service is missing or has no cluster IP (no cluster-IP fallback then).
    pub cluster_ip: Option<String>,
}

impl PrivateEndpoints {
    /// No pods at all (scaled to zero).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.not_ready.is_empty()
    }
}

/// The revision's public endpoints: the activators fronting it (spec §3.8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicEndpoints {
    /// Ready addresses (plain IPs) of the public Endpoints' subsets whose port is the revision's
    /// `http`/`http2` port.
    pub activator_ips: Vec<String>,
}

/// Everything known about one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionEntry {
    /// Settings.
    pub spec: Arc<RevisionSpec>,
    /// Pods and private Service.
    pub private: PrivateEndpoints,
    /// Activators.
    pub public: PublicEndpoints,
}

impl RevisionEntry {
    /// An entry without endpoints.
    pub fn new(spec: RevisionSpec) -> Self {
        RevisionEntry {
            spec: Arc::new(spec),
            private: PrivateEndpoints::default(),
            public: PublicEndpoints::default(),
        }
    }
}

/// An immutable view of all revisions, plus the system namespace's ConfigMaps and Secrets.
/// Cloning it is cheap (see [`RevisionTable`]), so sources derive the next snapshot from the
/// last one by changing only what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    revisions: RevisionTable,
    /// ConfigMaps and Secrets of the system namespace.
    system: Arc<SystemObjects>,
}

impl Snapshot {
    /// A snapshot of `entries`, keyed by `spec.id` (a later duplicate replaces an earlier one;
    /// sources reject duplicates before).
    pub fn new(entries: impl IntoIterator<Item = RevisionEntry>) -> Self {
        Snapshot {
            revisions: entries.into_iter().collect(),
            system: Arc::default(),
        }
    }

    /// This snapshot with `system` as its system-namespace objects.
    pub fn with_system(mut self, system: impl Into<Arc<SystemObjects>>) -> Self {
        self.system = system.into();
        self
    }

    /// The system namespace's ConfigMaps and Secrets.
    pub fn system(&self) -> &Arc<SystemObjects> {
        &self.system
    }

    /// All revisions, in no particular order.
    pub fn revisions(&self) -> impl Iterator<Item = &RevisionEntry> {
        self.revisions.iter()
    }

    /// One revision.
    pub fn get(&self, id: &RevisionId) -> Option<&RevisionEntry> {
        self.revisions.get_id(id)
    }

    /// The revision's settings, looked up with borrowed strings (no allocation).
    pub fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        self.revisions
            .get(namespace, name)
            .map(|entry| entry.spec.clone())
    }

    /// Sets (inserts or replaces) one revision's entry.
    pub fn set(&mut self, entry: RevisionEntry) {
        self.revisions.insert(entry);
    }

    /// Removes one revision.
    pub fn remove(&mut self, id: &RevisionId) -> Option<RevisionEntry> {
        self.revisions.remove(&id.namespace, &id.name)
    }

    /// Number of revisions.
    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    /// Whether there are no revisions.
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// The revisions whose entries differ between `self` and `next` (added, changed or
    /// removed): O(revisions), for sources that rebuild the whole state anyway (the file
    /// source re-parses its file).
    pub fn changed_revisions(&self, next: &Snapshot) -> HashSet<RevisionId> {
        let mut changed: HashSet<RevisionId> = next
            .revisions()
            .filter(|entry| self.get(&entry.spec.id) != Some(*entry))
            .map(|entry| entry.spec.id.clone())
            .collect();
        changed.extend(
            self.revisions()
                .filter(|entry| next.get(&entry.spec.id).is_none())
                .map(|entry| entry.spec.id.clone()),
        );
        changed
    }
}

/// What changed between the snapshots a [`ChangeFeed`] consumer has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Anything may have changed: reconcile every revision (the first snapshot, a relist).
    All,
    /// Only these revisions changed (added, changed or removed); possibly none, when only the
    /// system objects did.
    Revisions(HashSet<RevisionId>),
}

impl Default for Changes {
    fn default() -> Self {
        Changes::Revisions(HashSet::new())
    }
}

impl Changes {
    fn merge(&mut self, more: &Changes) {
        match (&mut *self, more) {
            (Changes::All, _) => {}
            (_, Changes::All) => *self = Changes::All,
            (Changes::Revisions(ids), Changes::Revisions(more)) => {
                ids.extend(more.iter().cloned());
            }
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        matches!(self, Changes::Revisions(ids) if ids.is_empty())
    }
}

/// The changes accumulated for each feed, and the lock that orders publications with takes.
#[derive(Debug, Default)]
struct Feeds {
    pending: Vec<Weak<Mutex<Changes>>>,
}

/// Where a source publishes its snapshots: a `watch` channel (every consumer sees the latest
/// snapshot; intermediate ones may be skipped) plus the "synced" flag. Sources embed one.
///
/// Consumers that follow revisions one by one (the backends manager) take a [`ChangeFeed`]:
/// it accumulates the changed revisions of every publication, including skipped ones, so a
/// change to one revision is applied to that revision alone.
#[derive(Debug)]
pub struct SnapshotCell {
    tx: watch::Sender<Arc<Snapshot>>,
    synced: AtomicBool,
    feeds: Arc<Mutex<Feeds>>,
    /// Changes with every publication: a number no other cell's generation ever takes (see
    /// [`SnapshotCell::revision`]'s cache).
    generation: AtomicU64,
}

/// Source of [`SnapshotCell`] generations, unique across all cells of the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// The revision this thread looked up last, with the generation of the cell it was found
    /// in (at the lookup or before). A connection's requests mostly name one revision, so the
    /// request path usually finds it here without the snapshot's lock and two string-keyed
    /// map lookups.
    static LAST_REVISION: RefCell<Option<(u64, Arc<RevisionSpec>)>> = const { RefCell::new(None) };
}

impl Default for SnapshotCell {
    fn default() -> Self {
        SnapshotCell::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SnapshotCell {
    /// An empty, not yet synced cell.
    pub fn new() -> Self {
        SnapshotCell {
            tx: watch::Sender::new(Arc::new(Snapshot::default())),
            synced: AtomicBool::new(false),
            feeds: Arc::default(),
            generation: AtomicU64::new(next_generation()),
        }
    }

    /// Publishes `snapshot` as a whole (subscribers are woken only if it differs from the
    /// current one; feeds get [`Changes::All`]) and marks the cell synced. Returns whether it
    /// differed. O(revisions): for tests and first loads; sources publish with
    /// [`SnapshotCell::publish_changes`].
    pub fn publish(&self, snapshot: Snapshot) -> bool {
        let changed = *self.tx.borrow().as_ref() != snapshot;
        if changed {
            self.publish_changes(snapshot, Changes::All);
        }
        self.synced.store(true, Ordering::Release);
        changed
    }

    /// Publishes `snapshot`, in which `changes` are what differs from the current one (plus,
    /// possibly, the system objects), and marks the cell synced. Subscribers are woken unless
    /// nothing changed at all. Returns whether anything changed.
    pub fn publish_changes(&self, snapshot: Snapshot, changes: Changes) -> bool {
        let system_changed = self.tx.borrow().system != snapshot.system;
        let changed = system_changed || !changes.is_empty();
        if changed {
            let mut feeds = lock(&self.feeds);
            feeds.pending.retain(|feed| match feed.upgrade() {
                Some(pending) => {
                    lock(&pending).merge(&changes);
                    true
                }
                None => false,
            });
            self.tx.send_replace(Arc::new(snapshot));
            // After the snapshot: a lookup that read the old generation may have cached a
            // revision of the new snapshot under it, never the reverse.
            self.generation.store(next_generation(), Ordering::Release);
        }
        self.synced.store(true, Ordering::Release);
        changed
    }

    /// A receiver whose current value is the latest snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// A feed of snapshots with the revisions changed since the last one taken; its first
    /// [`ChangeFeed::take`] returns the current snapshot with [`Changes::All`].
    pub fn subscribe_changes(&self) -> ChangeFeed {
        let pending = Arc::new(Mutex::new(Changes::All));
        let mut feeds = lock(&self.feeds);
        feeds.pending.push(Arc::downgrade(&pending));
        let rx = self.tx.subscribe();
        drop(feeds);
        ChangeFeed {
            rx,
            pending,
            feeds: Arc::clone(&self.feeds),
        }
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// The revision's settings from the latest snapshot (no allocation). The revision found
    /// last on this thread is kept with the cell's generation, and given again while no
    /// publication has happened since; otherwise a read lock and the snapshot's maps.
    pub fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        let generation = self.generation.load(Ordering::Acquire);
        LAST_REVISION
            .try_with(|last| {
                if let Some((cached, spec)) = &*last.borrow() {
                    if *cached == generation
                        && spec.id.name == name
                        && spec.id.namespace == namespace
                    {
                        return Some(Arc::clone(spec));
                    }
                }
                let found = self.tx.borrow().revision(namespace, name)?;
                *last.borrow_mut() = Some((generation, Arc::clone(&found)));
                Some(found)
            })
            // The thread is ending (its locals are gone): no cache.
            .unwrap_or_else(|_| self.tx.borrow().revision(namespace, name))
    }

    /// Whether a first complete snapshot has been published.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Snapshots plus the revisions that changed since the last take (see [`SnapshotCell`]).
#[derive(Debug)]
pub struct ChangeFeed {
    rx: watch::Receiver<Arc<Snapshot>>,
    pending: Arc<Mutex<Changes>>,
    feeds: Arc<Mutex<Feeds>>,
}

impl ChangeFeed {
    /// The latest snapshot and everything changed since the previous take, without waiting.
    /// Taken under the publication lock, so the changes always match the snapshot.
    pub fn take(&mut self) -> (Arc<Snapshot>, Changes) {
        let _publications = lock(&self.feeds);
        let changes = std::mem::take(&mut *lock(&self.pending));
        let snapshot = self.rx.borrow_and_update().clone();
        (snapshot, changes)
    }

    /// A receiver of the latest snapshot that leaves this feed's changes untouched (for lookups
    /// between takes).
    pub fn reader(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// Waits for the next publication, then [`ChangeFeed::take`]s. `None` once the source is
    /// gone.
    pub async fn changed(&mut self) -> Option<(Arc<Snapshot>, Changes)> {
        self.rx.changed().await.ok()?;
        Some(self.take())
    }

    /// A feed whose source is the snapshot `snapshot` alone (tests and fixed setups): one take
    /// of everything, then nothing more.
    pub fn fixed(snapshot: Snapshot) -> ChangeFeed {
        let cell = SnapshotCell::new();
        cell.publish(snapshot);
        let feed = cell.subscribe_changes();
        drop(cell);
        feed
    }
}

/// A discovery source. The file source implements it; the Kubernetes source will too.
pub trait DiscoverySource: Send + Sync {
    /// A receiver of the snapshots (its current value is the latest).
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// A feed of snapshots with the revisions each change touched.
    fn subscribe_changes(&self) -> ChangeFeed;

    /// Whether the first complete snapshot has been published (readiness).
    fn synced(&self) -> bool;

    /// The latest snapshot.
    fn current(&self) -> Arc<Snapshot> {
        self.subscribe().borrow().clone()
    }

    /// The revision's settings, for the request path.
    fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        self.current().revision(namespace, name)
    }
}

/// Errors of discovery sources (fatal at startup).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The file could not be read.
    #[error("cannot read discovery file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is invalid.
    #[error("invalid discovery file {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the revision and field.
        source: DocumentError,
    },
    /// Started outside a Tokio runtime.
    #[error("discovery must be started inside a Tokio runtime")]
    NoRuntime,
}
