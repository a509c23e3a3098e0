//! [`RevisionTable`]: the revisions of a snapshot, cheap to copy and to change one entry of.
//!
//! A source publishes a new [`Snapshot`](super::Snapshot) for every burst of changes. With one
//! plain map, each publication would copy every revision: O(revisions) per Endpoints update in a
//! 10,000-revision cluster. The table is split into [`SHARDS`] copy-on-write shards chosen by a
//! hash of (namespace, name): cloning the table copies [`SHARDS`] pointers, and changing one
//! revision copies only its shard (about `revisions / SHARDS` entries) if an older snapshot
//! still shares it. Lookups take the namespace and name as borrowed strings, as the request
//! path has them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::throttler::RevisionId;
use crate::FastHash;

use super::RevisionEntry;

/// Number of shards: at 10,000 revisions a change copies about 40 entries; an empty table
/// costs a few kilobytes.
pub const SHARDS: usize = 256;

/// namespace → name → entry.
type Shard = HashMap<String, HashMap<String, RevisionEntry, FastHash>, FastHash>;

/// The revisions of a snapshot, keyed by (namespace, name). See the module docs.
#[derive(Clone, Debug)]
pub struct RevisionTable {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl Default for RevisionTable {
    fn default() -> Self {
        RevisionTable {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            len: 0,
        }
    }
}

/// The shard of (namespace, name): a fixed hash, so every table agrees.
fn shard_of(namespace: &str, name: &str) -> usize {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x6b6e_6174_6976_6521).build_hasher();
    namespace.hash(&mut hasher);
    name.hash(&mut hasher);
    // Truncation is the point: any bits of the hash pick the shard.
    (hasher.finish() as usize) % SHARDS
}

impl RevisionTable {
    /// An empty table.
    pub fn new() -> Self {
        RevisionTable::default()
    }

    /// Inserts or replaces the entry of `entry.spec.id`; returns the previous one.
    pub fn insert(&mut self, entry: RevisionEntry) -> Option<RevisionEntry> {
        let id = &entry.spec.id;
        let shard = Arc::make_mut(&mut self.shards[shard_of(&id.namespace, &id.name)]);
        let names = match shard.get_mut(id.namespace.as_str()) {
            Some(names) => names,
            None => shard.entry(id.namespace.clone()).or_default(),
        };
        let previous = names.insert(id.name.clone(), entry);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the revision; returns its entry.
    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<RevisionEntry> {
        let index = shard_of(namespace, name);
        // Look before copying a shared shard for nothing.
        self.shards[index].get(namespace)?.get(name)?;
        let shard = Arc::make_mut(&mut self.shards[index]);
        let names = shard.get_mut(namespace)?;
        let removed = names.remove(name);
        if names.is_empty() {
            shard.remove(namespace);
        }
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The revision's entry, looked up with borrowed strings (no allocation).
    pub fn get(&self, namespace: &str, name: &str) -> Option<&RevisionEntry> {
        self.shards[shard_of(namespace, name)]
            .get(namespace)?
            .get(name)
    }

    /// The entry of `id`.
    pub fn get_id(&self, id: &RevisionId) -> Option<&RevisionEntry> {
        self.get(&id.namespace, &id.name)
    }

    /// Number of revisions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RevisionEntry> {
        self.shards
            .iter()
            .flat_map(|shard| shard.values())
            .flat_map(|names| names.values())
    }
}

impl PartialEq for RevisionTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self
                .shards
                .iter()
                .zip(&other.shards)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl Eq for RevisionTable {}

impl FromIterator<RevisionEntry> for RevisionTable {
    fn from_iter<I: IntoIterator<Item = RevisionEntry>>(entries: I) -> Self {
        let mut table = RevisionTable::new();
        for entry in entries {
            table.insert(entry);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RevisionSpec;

    fn entry(ns: &str, name: &str, cc: u32) -> RevisionEntry {
        let mut spec = RevisionSpec::new(RevisionId::new(ns, name));
        spec.container_concurrency = cc;
        RevisionEntry::new(spec)
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut table = RevisionTable::new();
        assert!(table.insert(entry("a", "r1", 1)).is_none());
        assert!(table.insert(entry("b", "r1", 2)).is_none());
        assert_eq!(table.len(), 2);
        assert_eq!(table.get("a", "r1").unwrap().spec.container_concurrency, 1);
        assert_eq!(
            table
                .insert(entry("a", "r1", 3))
                .unwrap()
                .spec
                .container_concurrency,
            1
        );
        assert_eq!(table.len(), 2);
        assert!(table.get("a", "r2").is_none());
        assert!(table.remove("a", "nope").is_none());
        assert_eq!(
            table.remove("a", "r1").unwrap().spec.container_concurrency,
            3
        );
        assert_eq!(table.len(), 1);
        assert!(table.get("a", "r1").is_none());
        assert_eq!(table.iter().count(), 1);
    }

    #[test]
    fn a_change_copies_one_shard_and_leaves_the_old_table_alone() {
        let table: RevisionTable = (0..1000)
            .map(|i| entry("ns", &format!("r{i}"), 1))
            .collect();
        let mut next = table.clone();
        next.insert(entry("ns", "r7", 9));
        let changed = next
            .shards
            .iter()
            .zip(&table.shards)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(changed, 1);
        assert_eq!(table.get("ns", "r7").unwrap().spec.container_concurrency, 1);
        assert_eq!(next.get("ns", "r7").unwrap().spec.container_concurrency, 9);
        assert_ne!(table, next);
        next.insert(entry("ns", "r7", 1));
        assert_eq!(table, next, "equal by content");
        // Removing something absent copies nothing.
        let mut same = table.clone();
        same.remove("ns", "absent");
        assert!(same
            .shards
            .iter()
            .zip(&table.shards)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
    }
}
