//! The file discovery source: a JSON document (format in [`super::parse_document`]) re-read
//! whenever its content changes.
//!
//! Change detection polls the file's content every `poll_interval` (no inotify: works the same on
//! every file system, including ConfigMap volumes whose symlinks are swapped). A valid new content
//! is published as a new [`Snapshot`](super::Snapshot); an invalid one is logged with the reason
//! (revision and field) and the previous snapshot is kept; a file that disappears keeps the
//! previous snapshot too. Each distinct problem is logged once, not at every poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::throttler::RevisionId;

use super::{
    parse_document_cached, parse_document_delta, ChangeFeed, Changes, DiscoveryError,
    DiscoverySource, DocumentCache, RevisionSpec, Snapshot, SnapshotCell,
};

/// How often the file is re-read when the caller has no preference.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest poll interval (a zero interval would spin).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// What the file source has seen, for diagnostics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStatus {
    /// Successful loads, the initial one included.
    pub loads: u64,
    /// Why the latest content read was rejected (`None` once a valid content is loaded).
    pub last_error: Option<String>,
    /// Whether the file is currently missing.
    pub missing: bool,
}

/// The file discovery source. Created by [`FileSource::start`]; its polling task stops at
/// shutdown or when the last `Arc` is dropped.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    cell: SnapshotCell,
    status: Mutex<FileStatus>,
    /// The last document's revisions by JSON text: unchanged ones are not parsed again.
    cache: Mutex<DocumentCache>,
}

impl FileSource {
    /// Loads `path` (any failure is returned: startup should treat it as fatal), publishes the
    /// first snapshot, then polls the file every `poll_interval` (clamped to ≥ 1 ms) until
    /// `shutdown` turns true. Must be called inside a Tokio runtime.
    pub fn start(
        path: impl Into<PathBuf>,
        poll_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<FileSource>, DiscoveryError> {
        let path = path.into();
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
        let bytes = std::fs::read(&path).map_err(|source| DiscoveryError::Read {
            path: path.clone(),
            source,
        })?;
        let mut cache = DocumentCache::default();
        let snapshot = parse_document_cached(&bytes, &mut cache).map_err(|source| {
            DiscoveryError::Invalid {
                path: path.clone(),
                source,
            }
        })?;
        tracing::info!(
            path = %path.display(),
            revisions = snapshot.len(),
            "discovery file loaded"
        );
        let source = Arc::new(FileSource {
            path,
            cell: SnapshotCell::new(),
            status: Mutex::new(FileStatus {
                loads: 1,
                ..FileStatus::default()
            }),
            cache: Mutex::new(cache),
        });
        source.cell.publish(snapshot);
        runtime.spawn(poll(
            Arc::downgrade(&source),
            bytes,
            poll_interval.max(MIN_POLL_INTERVAL),
            shutdown,
        ));
        Ok(source)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A receiver of the snapshots (its current value is the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.cell.subscribe()
    }

    /// A feed of snapshots with the revisions each reload changed.
    pub fn subscribe_changes(&self) -> ChangeFeed {
        self.cell.subscribe_changes()
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.cell.current()
    }

    /// The revision's settings from the latest valid content (no allocation).
    pub fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        self.cell.revision(namespace, name)
    }

    /// Always true once started (the initial load must succeed).
    pub fn synced(&self) -> bool {
        self.cell.synced()
    }

    /// Loads, last error, presence.
    pub fn status(&self) -> FileStatus {
        self.lock_status().clone()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, DocumentCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, FileStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one read of the file; `last_seen` is the content last processed.
    fn on_read(
        &self,
        read: std::io::Result<Vec<u8>>,
        last_seen: &mut Vec<u8>,
        read_error: &mut Option<String>,
    ) {
        let path = self.path.display();
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut status = self.lock_status();
                if !status.missing {
                    status.missing = true;
                    tracing::warn!(
                        path = %path,
                        "discovery file disappeared; keeping the previous revisions"
                    );
                }
                return;
            }
            Err(error) => {
                let message = error.to_string();
                if read_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        path = %path,
                        error = %message,
                        "cannot read the discovery file; keeping the previous revisions"
                    );
                    *read_error = Some(message);
                }
                return;
            }
        };
        *read_error = None;
        {
            let mut status = self.lock_status();
            if status.missing {
                status.missing = false;
                tracing::info!(path = %path, "discovery file is back");
            }
        }
        if bytes == *last_seen {
            return;
        }
        let parsed = parse_document_delta(&bytes, &mut self.lock_cache());
        *last_seen = bytes;
        match parsed {
            Ok(delta) => {
                // Only the revisions whose JSON changed were parsed; of those, only the ones
                // whose entries differ are published as changed, and the next snapshot is the
                // current one with them replaced (unchanged shards stay shared).
                let mut snapshot = (*self.cell.current()).clone();
                let mut changed_ids = std::collections::HashSet::new();
                let mut removed = delta.removed;
                if delta.whole {
                    let named: std::collections::HashSet<&RevisionId> =
                        delta.parsed.iter().map(|entry| &entry.spec.id).collect();
                    removed = snapshot
                        .revisions()
                        .map(|entry| &entry.spec.id)
                        .filter(|id| !named.contains(id))
                        .cloned()
                        .collect();
                }
                for entry in delta.parsed {
                    if snapshot.get(&entry.spec.id) != Some(&entry) {
                        changed_ids.insert(entry.spec.id.clone());
                        snapshot.set(entry);
                    }
                }
                for id in removed {
                    if snapshot.remove(&id).is_some() {
                        changed_ids.insert(id);
                    }
                }
                let snapshot = snapshot.with_system(delta.system);
                let revisions = snapshot.len();
                let changed_revisions = changed_ids.len();
                let changed = self
                    .cell
                    .publish_changes(snapshot, Changes::Revisions(changed_ids));
                let mut status = self.lock_status();
                status.loads = status.loads.saturating_add(1);
                status.last_error = None;
                tracing::info!(
                    path = %path,
                    revisions,
                    changed,
                    changed_revisions,
                    "discovery file reloaded"
                );
            }
            Err(error) => {
                tracing::error!(
                    path = %path,
                    error = %error,
                    "invalid discovery file; keeping the previous revisions"
                );
                self.lock_status().last_error = Some(error.to_string());
            }
        }
    }
}

impl DiscoverySource for FileSource {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.cell.subscribe()
    }

    fn subscribe_changes(&self) -> ChangeFeed {
        self.cell.subscribe_changes()
    }

    fn synced(&self) -> bool {
        self.cell.synced()
    }

    fn current(&self) -> Arc<Snapshot> {
        self.cell.current()
    }

    fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        self.cell.revision(namespace, name)
    }
}

async fn poll(
    source: Weak<FileSource>,
    mut last_seen: Vec<u8>,
    poll_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + poll_interval, poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut read_error = None;
    loop {
        tokio::select! {
            () = shutdown_requested(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let Some(path) = source.upgrade().map(|s| s.path.clone()) else {
            return;
        };
        let read = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
            Ok(read) => read,
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        let Some(source) = source.upgrade() else {
            return;
        };
        source.on_read(read, &mut last_seen, &mut read_error);
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
