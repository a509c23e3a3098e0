//! Fair sharing of the activator-wide cap on waiting requests (`ACTIVATOR_MAX_QUEUED_TOTAL`).
//!
//! The activator is shared by every tenant of the cluster. A plain counter would let whoever
//! fills the cap first take all of it: one scaled-to-zero revision flooded with requests would
//! make every other revision's cold start answer `503`. The cap is therefore shared in two
//! levels, namespaces first, then the revisions of a namespace:
//!
//! - While fewer than `cap` requests wait, every waiting request is admitted.
//! - When the cap is reached, a newcomer's namespace is compared with its fair share,
//!   `cap ÷ namespaces with waiting requests` (the newcomer's own namespace counted). Under it,
//!   the newcomer is admitted and the namespace holding the most waiting requests gives one up.
//! - A namespace at or over its share competes inside itself: its revision's share is
//!   `waiting in the namespace ÷ its revisions with waiting requests` (the newcomer's revision
//!   counted). Under it, the newcomer is admitted and the namespace's revision holding the most
//!   gives one up; otherwise the newcomer is refused.
//!
//! A revision that gives a request up loses its *newest* waiting request: the one that would
//! have been served last, exactly as if it had been refused on arrival. Its older requests
//! keep their place, so a revision's FIFO order is never disturbed. The displaced request
//! answers `503 pending request queue full`, like a refused one.
//!
//! Only requests that actually wait are tracked here: a request that gets a revision slot at
//! once never takes the lock. Choosing whom to displace scans the namespaces with waiting
//! requests and the revisions of one namespace; both are bounded by the cap and the scan only
//! happens once the cap is reached.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::FastHash;

/// End-of-list / empty marker for the slab links.
const NIL: usize = usize::MAX;

/// The activator-wide cap on waiting requests, shared fairly between namespaces and revisions.
#[derive(Debug)]
pub(crate) struct FairQueue {
    max: Option<usize>,
    /// Requests waiting now (mirrors `Tenants::total`, readable without the lock).
    waiting: AtomicUsize,
    tenants: Mutex<Tenants>,
}

/// Identifies a revision inside one namespace for as long as it has waiting requests: the
/// address of its throttler, which every waiting request keeps alive.
pub(crate) type RevisionKey = usize;

/// Everything behind the queue's one lock.
///
/// Every waiting request has an entry in one slab; a revision's entries are linked oldest to
/// newest (`prev` towards the older), so admitting, leaving and displacing the newest are O(1)
/// without a per-request allocation.
#[derive(Debug)]
struct Tenants {
    total: usize,
    namespaces: HashMap<String, NamespaceQueue, FastHash>,
    entries: Vec<Entry>,
    free_head: usize,
    /// Entries not vacant (waiting or displaced).
    occupied: usize,
}

impl Default for Tenants {
    fn default() -> Self {
        Tenants {
            total: 0,
            namespaces: HashMap::default(),
            entries: Vec::new(),
            free_head: NIL,
            occupied: 0,
        }
    }
}

#[derive(Debug, Default)]
struct NamespaceQueue {
    waiting: usize,
    revisions: HashMap<RevisionKey, RevisionQueue, FastHash>,
}

/// One revision's waiting requests: how many, and the newest (the one a displacement takes).
#[derive(Debug)]
struct RevisionQueue {
    len: usize,
    tail: usize,
}

impl Default for RevisionQueue {
    fn default() -> Self {
        RevisionQueue { len: 0, tail: NIL }
    }
}

/// A slot of the waiting requests' slab.
#[derive(Debug)]
enum Entry {
    /// Unused; `next_free` links the free list.
    Vacant { next_free: usize },
    /// Waiting; `prev`/`next` link the revision's requests (older / newer).
    Waiting {
        waker: Waker,
        prev: usize,
        next: usize,
    },
    /// Displaced by a newcomer (no longer counted), until its ticket is dropped.
    Displaced,
}

/// Why a request may not wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The cap is reached and the request's namespace and revision hold their fair share.
    OverShare,
    /// The request was waiting and gave its place up to a smaller tenant.
    Displaced,
}

impl FairQueue {
    /// A queue admitting `max` waiting requests in all (`None` = unbounded, only counted).
    pub(crate) fn new(max: Option<usize>) -> Self {
        FairQueue {
            max,
            waiting: AtomicUsize::new(0),
            tenants: Mutex::default(),
        }
    }

    /// Requests waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Tenants> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one more waiting request of `namespace`'s revision `revision`, displacing the
    /// newest request of a larger tenant if the cap is reached; see the module docs. A
    /// displacement wakes `waker` (the waiting task's; `FairQueue::poll_displaced` replaces it).
    pub(crate) fn enter<'a>(
        &'a self,
        namespace: &'a str,
        revision: RevisionKey,
        waker: &Waker,
    ) -> Result<Ticket<'a>, Refused> {
        let mut tenants = self.lock();
        let mut displaced = None;
        if self.max.is_some_and(|max| tenants.total >= max) {
            let max = self.max.unwrap_or(usize::MAX);
            let victim = tenants.choose_victim(max, namespace, revision)?;
            displaced = tenants.displace(&victim);
            if displaced.is_none() {
                // Inconsistent counts (cannot happen): admit nobody rather than overfill.
                return Err(Refused::OverShare);
            }
        } else {
            tenants.total += 1;
        }
        let index = tenants.insert(namespace, revision, waker.clone());
        self.waiting.store(tenants.total, Ordering::Relaxed);
        drop(tenants);
        if let Some(waker) = displaced {
            waker.wake();
        }
        Ok(Ticket {
            queue: self,
            revision,
            index,
            namespace,
        })
    }

    /// Removes the ticket's entry, uncounting it unless it was displaced (which did that).
    fn leave(&self, namespace: &str, revision: RevisionKey, index: usize) {
        let mut tenants = self.lock();
        let waker = tenants.unlink(namespace, revision, index);
        if waker.is_some() {
            tenants.total -= 1;
            self.waiting.store(tenants.total, Ordering::Relaxed);
        }
        tenants.free(index);
        drop(tenants);
        drop(waker);
    }

    /// Ready with [`Refused::Displaced`] once the ticket's request was displaced; otherwise
    /// keeps the task's current waker for a displacement.
    fn poll_displaced(&self, index: usize, cx: &mut Context<'_>) -> Poll<Refused> {
        let mut tenants = self.lock();
        match tenants.entries.get_mut(index) {
            Some(Entry::Waiting { waker, .. }) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                Poll::Pending
            }
            _ => Poll::Ready(Refused::Displaced),
        }
    }
}

/// The revision that gives up its newest waiting request.
#[derive(Debug)]
struct Victim {
    namespace: String,
    revision: RevisionKey,
}

impl Tenants {
    /// The fair-share decision of the module docs, taken when `max` requests wait.
    fn choose_victim(
        &self,
        max: usize,
        namespace: &str,
        revision: RevisionKey,
    ) -> Result<Victim, Refused> {
        let own_ns = self.namespaces.get(namespace);
        let namespaces = self.namespaces.len() + usize::from(own_ns.is_none());
        let ns_share = max / namespaces;
        let ns_waiting = own_ns.map_or(0, |ns| ns.waiting);
        if ns_waiting < ns_share {
            // Some other namespace holds more than its share: the largest one gives up.
            let (victim_ns, queue) = self
                .namespaces
                .iter()
                .filter(|(name, _)| name.as_str() != namespace)
                .max_by_key(|(_, ns)| ns.waiting)
                .ok_or(Refused::OverShare)?;
            let revision = queue.largest_revision(None).ok_or(Refused::OverShare)?;
            return Ok(Victim {
                namespace: victim_ns.clone(),
                revision,
            });
        }
        let ns = own_ns.ok_or(Refused::OverShare)?;
        let revisions = ns.revisions.len() + usize::from(!ns.revisions.contains_key(&revision));
        let rev_share = ns.waiting / revisions;
        let rev_waiting = ns.revisions.get(&revision).map_or(0, |r| r.len);
        if rev_waiting >= rev_share {
            return Err(Refused::OverShare);
        }
        let victim = ns
            .largest_revision(Some(revision))
            .ok_or(Refused::OverShare)?;
        Ok(Victim {
            namespace: namespace.to_owned(),
            revision: victim,
        })
    }

    /// Marks the victim's newest waiting request displaced and returns its waker (to be woken
    /// once the lock is dropped). The total is unchanged: the newcomer takes the place.
    fn displace(&mut self, victim: &Victim) -> Option<Waker> {
        let tail = self
            .namespaces
            .get(&victim.namespace)?
            .revisions
            .get(&victim.revision)?
            .tail;
        self.unlink(&victim.namespace, victim.revision, tail)
    }

    /// Links a new waiting request as its revision's newest; returns its slab index.
    fn insert(&mut self, namespace: &str, revision: RevisionKey, waker: Waker) -> usize {
        let ns = match self.namespaces.get_mut(namespace) {
            Some(ns) => ns,
            None => self.namespaces.entry(namespace.to_owned()).or_default(),
        };
        ns.waiting += 1;
        let rev = ns.revisions.entry(revision).or_default();
        let prev = rev.tail;
        let entry = Entry::Waiting {
            waker,
            prev,
            next: NIL,
        };
        self.occupied += 1;
        let index = match self.entries.get_mut(self.free_head) {
            Some(vacant) => {
                let index = self.free_head;
                self.free_head = match vacant {
                    Entry::Vacant { next_free } => *next_free,
                    _ => NIL,
                };
                *vacant = entry;
                index
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        rev.tail = index;
        rev.len += 1;
        if let Some(Entry::Waiting { next, .. }) = self.entries.get_mut(prev) {
            *next = index;
        }
        index
    }

    /// Takes the waiting request at `index` out of its revision's list, leaving the entry
    /// displaced, and uncounts it from the revision and the namespace (not from the total);
    /// drops emptied revisions and namespaces. Returns its waker; `None` if it was not waiting.
    fn unlink(&mut self, namespace: &str, revision: RevisionKey, index: usize) -> Option<Waker> {
        let entry = self.entries.get_mut(index)?;
        if !matches!(entry, Entry::Waiting { .. }) {
            return None;
        }
        let Entry::Waiting { waker, prev, next } = std::mem::replace(entry, Entry::Displaced)
        else {
            return None;
        };
        if let Some(Entry::Waiting { next: n, .. }) = self.entries.get_mut(prev) {
            *n = next;
        }
        if let Some(Entry::Waiting { prev: p, .. }) = self.entries.get_mut(next) {
            *p = prev;
        }
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            if let Some(rev) = ns.revisions.get_mut(&revision) {
                if rev.tail == index {
                    rev.tail = prev;
                }
                rev.len -= 1;
                if rev.len == 0 {
                    ns.revisions.remove(&revision);
                }
            }
            ns.waiting -= 1;
            if ns.waiting == 0 {
                self.namespaces.remove(namespace);
            }
        }
        Some(waker)
    }

    /// Returns an entry to the free list; drops the storage when no entry is in use.
    fn free(&mut self, index: usize) {
        let Some(entry) = self.entries.get_mut(index) else {
            return;
        };
        if matches!(entry, Entry::Vacant { .. }) {
            return;
        }
        *entry = Entry::Vacant {
            next_free: self.free_head,
        };
        self.free_head = index;
        self.occupied -= 1;
        if self.occupied == 0 {
            self.entries.clear();
            if self.entries.capacity() > 64 {
                self.entries.shrink_to_fit();
            }
            self.free_head = NIL;
        }
    }
}

impl NamespaceQueue {
    /// The revision with the most waiting requests, other than `except`.
    fn largest_revision(&self, except: Option<RevisionKey>) -> Option<RevisionKey> {
        self.revisions
            .iter()
            .filter(|(key, _)| Some(**key) != except)
            .max_by_key(|(_, rev)| rev.len)
            .map(|(key, _)| *key)
    }
}

/// One admitted waiting request. Leaves the queue when dropped (a displaced one is no longer
/// counted; its entry is freed then).
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    queue: &'a FairQueue,
    /// The revision's own namespace text (the ticket lives no longer than the wait for its
    /// revision), not a copy per waiting request.
    namespace: &'a str,
    revision: RevisionKey,
    /// Its entry in the slab, owned until the ticket is dropped.
    index: usize,
}

impl Ticket<'_> {
    /// Waits for `acquire` unless the request is displaced first. A slot granted at the same
    /// time as the displacement wins: the request no longer waits, so nothing is lost.
    #[cfg(test)]
    pub(crate) async fn wait<F: Future>(&self, acquire: F) -> Result<F::Output, Refused> {
        let mut acquire = std::pin::pin!(acquire);
        std::future::poll_fn(|cx: &mut Context<'_>| self.poll(acquire.as_mut(), cx)).await
    }

    /// [`Ticket::wait`] for an `acquire` that the caller polled in this same task poll, just
    /// before [`FairQueue::enter`] with the task's waker, and found pending: the first poll
    /// here does nothing (a slot granted or a displacement in between wakes the task, which
    /// polls again), and later ones look at the displacement only while `acquire` is pending.
    pub(crate) async fn wait_pending<F: Future>(&self, acquire: F) -> Result<F::Output, Refused> {
        let mut acquire = std::pin::pin!(acquire);
        let mut just_polled = true;
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if std::mem::take(&mut just_polled) {
                return Poll::Pending;
            }
            self.poll(acquire.as_mut(), cx)
        })
        .await
    }

    fn poll<F: Future>(
        &self,
        acquire: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<F::Output, Refused>> {
        if let Poll::Ready(out) = acquire.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        self.queue.poll_displaced(self.index, cx).map(Err)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.namespace, self.revision, self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn holders(queue: &FairQueue) -> Vec<(String, RevisionKey, usize)> {
        let tenants = queue.lock();
        let mut out: Vec<_> = tenants
            .namespaces
            .iter()
            .flat_map(|(ns, q)| {
                q.revisions
                    .iter()
                    .map(move |(rev, r)| (ns.clone(), *rev, r.len))
            })
            .collect();
        out.sort();
        out
    }

    fn is_displaced(queue: &FairQueue, ticket: &Ticket<'_>) -> bool {
        matches!(
            queue.lock().entries.get(ticket.index),
            Some(Entry::Displaced)
        )
    }

    #[test]
    fn below_the_cap_everyone_waits() {
        let queue = FairQueue::new(Some(3));
        let tickets: Vec<_> = (0..3)
            .map(|_| queue.enter("ns", 1, Waker::noop()).unwrap())
            .collect();
        assert_eq!(queue.waiting(), 3);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
        assert!(queue.lock().namespaces.is_empty(), "no state left behind");
    }

    #[test]
    fn unbounded_only_counts() {
        let queue = FairQueue::new(None);
        let tickets: Vec<_> = (0..1000)
            .map(|i| queue.enter("ns", i % 7, Waker::noop()).unwrap())
            .collect();
        assert_eq!(queue.waiting(), 1000);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
    }

    #[test]
    fn a_newcomer_displaces_the_newest_request_of_the_largest_revision() {
        let queue = FairQueue::new(Some(4));
        let noisy: Vec<_> = (0..4)
            .map(|_| queue.enter("ns", 1, Waker::noop()).unwrap())
            .collect();
        assert_eq!(
            queue.enter("ns", 1, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        let victim = queue.enter("ns", 2, Waker::noop()).unwrap();
        assert_eq!(queue.waiting(), 4);
        let displaced: Vec<bool> = noisy.iter().map(|t| is_displaced(&queue, t)).collect();
        assert_eq!(displaced, [false, false, false, true], "the newest one");
        assert_eq!(holders(&queue), [("ns".into(), 1, 3), ("ns".into(), 2, 1)]);
        // The second newcomer of `2` is still under the share (4 / 2 = 2).
        let _victim2 = queue.enter("ns", 2, Waker::noop()).unwrap();
        assert_eq!(holders(&queue), [("ns".into(), 1, 2), ("ns".into(), 2, 2)]);
        assert_eq!(
            queue.enter("ns", 2, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        assert_eq!(
            queue.enter("ns", 1, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        drop(victim);
        drop(noisy);
        assert_eq!(holders(&queue), [("ns".into(), 2, 1)]);
        assert_eq!(queue.waiting(), 1);
    }

    #[test]
    fn namespaces_share_before_revisions() {
        // One namespace with many revisions gets no more than a namespace with one.
        let queue = FairQueue::new(Some(6));
        let _many: Vec<_> = (0..6)
            .map(|i| queue.enter("big", i, Waker::noop()).unwrap())
            .collect();
        let _small: Vec<_> = (0..3)
            .map(|_| queue.enter("small", 100, Waker::noop()).unwrap())
            .collect();
        assert_eq!(
            queue.enter("small", 100, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        let counts: usize = holders(&queue)
            .iter()
            .filter(|(ns, _, _)| ns == "big")
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(counts, 3);
        assert_eq!(queue.waiting(), 6);
        // Inside `big`, a revision with nothing waiting still under the namespace's share of
        // revisions is refused: the namespace is at its share and its 3 revisions hold 1 each.
        assert_eq!(
            queue.enter("big", 50, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
    }

    #[test]
    fn a_share_grows_back_when_others_drain() {
        let queue = FairQueue::new(Some(4));
        let a: Vec<_> = (0..2)
            .map(|_| queue.enter("a", 1, Waker::noop()).unwrap())
            .collect();
        let _b: Vec<_> = (0..2)
            .map(|_| queue.enter("b", 1, Waker::noop()).unwrap())
            .collect();
        assert_eq!(
            queue.enter("a", 1, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        drop(a);
        let _more: Vec<_> = (0..2)
            .map(|_| queue.enter("b", 1, Waker::noop()).unwrap())
            .collect();
        assert_eq!(holders(&queue), [("b".into(), 1, 4)]);
    }

    #[test]
    fn more_tenants_than_slots_refuses_newcomers() {
        let queue = FairQueue::new(Some(2));
        let _a = queue.enter("a", 1, Waker::noop()).unwrap();
        let _b = queue.enter("b", 1, Waker::noop()).unwrap();
        assert_eq!(
            queue.enter("c", 1, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        assert_eq!(queue.waiting(), 2);
    }

    #[tokio::test]
    async fn a_displaced_waiter_is_woken_with_refused() {
        let queue = Arc::new(FairQueue::new(Some(2)));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let _older = queue.enter("ns", 1, Waker::noop()).unwrap();
                let newest = queue.enter("ns", 1, Waker::noop()).unwrap();
                entered_tx.send(()).unwrap();
                newest.wait(std::future::pending::<()>()).await
            })
        };
        entered_rx.await.unwrap();
        let _newcomer = queue.enter("other", 2, Waker::noop()).unwrap();
        assert_eq!(waiter.await.unwrap(), Err(Refused::Displaced));
        assert_eq!(
            queue.waiting(),
            1,
            "the newcomer; the waiter's older ticket dropped"
        );
    }

    #[tokio::test]
    async fn a_granted_slot_wins_over_displacement() {
        let queue = FairQueue::new(Some(2));
        let older = queue.enter("ns", 1, Waker::noop()).unwrap();
        let newest = queue.enter("ns", 1, Waker::noop()).unwrap();
        let _newcomer = queue.enter("other", 2, Waker::noop()).unwrap();
        assert_eq!(newest.wait(std::future::ready(7)).await, Ok(7));
        drop(newest);
        assert_eq!(
            queue.waiting(),
            2,
            "the displaced ticket is not removed twice"
        );
        drop(older);
        assert_eq!(queue.waiting(), 1);
    }
}
