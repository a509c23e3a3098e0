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
//!
//! # Cost per waiting request
//! One lock to enter and one to leave, and no allocation and no hashing in the steady state:
//! namespaces and revisions with waiting requests live in slabs, each waiting request's entry
//! names its revision's slot, and a revision remembers its slot in a hint
//! ([`FairQueue::enter`]), so only a revision's first waiting request (or its namespace's) looks
//! anything up by name. The per-revision lists are linked through the entries (newest = tail),
//! which makes leaving and displacing O(1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::FastHash;

/// End-of-list / empty marker for the slab links; also the initial revision hint.
pub(crate) const NIL: usize = usize::MAX;

/// The activator-wide cap on waiting requests, shared fairly between namespaces and revisions.
#[derive(Debug)]
pub(crate) struct FairQueue {
    max: Option<usize>,
    /// Requests waiting now (mirrors `Tenants::total`, readable without the lock).
    waiting: AtomicUsize,
    tenants: Mutex<Tenants>,
}

/// Identifies a revision (across namespaces) for as long as it has waiting requests: the
/// address of its throttler, which every waiting request keeps alive.
pub(crate) type RevisionKey = usize;

/// Everything behind the queue's one lock.
#[derive(Debug, Default)]
struct Tenants {
    total: usize,
    /// Namespaces with waiting requests: name → slot in `namespaces`.
    by_name: HashMap<String, usize, FastHash>,
    /// Revisions with waiting requests: key → slot in `revisions` (used when a hint misses).
    by_key: HashMap<RevisionKey, usize, FastHash>,
    namespaces: Slab<NamespaceQueue>,
    revisions: Slab<RevisionQueue>,
    /// One per waiting (or displaced, not yet dropped) request.
    entries: Slab<Entry>,
}

#[derive(Debug)]
struct NamespaceQueue {
    name: String,
    waiting: usize,
    /// Its revisions with waiting requests (slots in `Tenants::revisions`).
    revisions: Vec<usize>,
}

/// One revision's waiting requests: how many, and the newest (the one a displacement takes).
#[derive(Debug)]
struct RevisionQueue {
    key: RevisionKey,
    /// Slot of its namespace.
    namespace: usize,
    /// Its position in the namespace's `revisions`.
    position: usize,
    len: usize,
    tail: usize,
}

/// A waiting request's entry.
#[derive(Debug)]
enum Entry {
    /// Waiting; `prev`/`next` link the revision's requests (older / newer).
    Waiting {
        waker: Waker,
        /// Slot of its revision.
        revision: usize,
        prev: usize,
        next: usize,
    },
    /// Displaced by a newcomer (no longer counted), until its ticket is dropped.
    Displaced,
}

/// Removes `index` from `slab` (`None` if vacant); an emptied slab gives large storage back.
fn take<T>(slab: &mut Slab<T>, index: usize) -> Option<T> {
    let value = slab.try_remove(index)?;
    if slab.is_empty() && slab.capacity() > 64 {
        slab.clear();
        slab.shrink_to_fit();
    }
    Some(value)
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
    ///
    /// `hint` is the revision's own (start: [`NIL`]): the slot its waiting requests were last
    /// counted in, read and written only under the lock. A wrong or stale hint costs a lookup,
    /// never correctness (the slot's key is checked).
    pub(crate) fn enter<'a>(
        &'a self,
        namespace: &str,
        revision: RevisionKey,
        hint: &AtomicUsize,
        waker: &Waker,
    ) -> Result<Ticket<'a>, Refused> {
        let mut tenants = self.lock();
        let mut slot = tenants.find_revision(revision, hint.load(Ordering::Relaxed));
        let mut displaced = None;
        if self.max.is_some_and(|max| tenants.total >= max) {
            let max = self.max.unwrap_or(usize::MAX);
            let victim = tenants.choose_victim(max, namespace, slot)?;
            displaced = tenants.unlink_newest(victim);
            if displaced.is_none() {
                // Inconsistent counts (cannot happen): admit nobody rather than overfill.
                return Err(Refused::OverShare);
            }
            // The victim may have been this revision's last request elsewhere: look again.
            slot = tenants.find_revision(revision, slot.unwrap_or(NIL));
        } else {
            tenants.total += 1;
        }
        let slot = slot.unwrap_or_else(|| tenants.add_revision(namespace, revision));
        hint.store(slot, Ordering::Relaxed);
        let index = tenants.link(slot, waker.clone());
        self.waiting.store(tenants.total, Ordering::Relaxed);
        drop(tenants);
        if let Some(waker) = displaced {
            waker.wake();
        }
        Ok(Ticket { queue: self, index })
    }

    /// Removes the ticket's entry, uncounting it unless it was displaced (which did that).
    fn leave(&self, index: usize) {
        let mut tenants = self.lock();
        // Taken out of the slab first, then out of its lists: one slab access for the entry.
        let entry = take(&mut tenants.entries, index);
        if let Some(Entry::Waiting {
            revision,
            prev,
            next,
            ..
        }) = &entry
        {
            tenants.detach(index, *revision, *prev, *next);
            tenants.total -= 1;
            self.waiting.store(tenants.total, Ordering::Relaxed);
        }
        drop(tenants);
        drop(entry);
    }

    /// Ready with [`Refused::Displaced`] once the ticket's request was displaced; otherwise
    /// keeps the task's current waker for a displacement.
    fn poll_displaced(&self, index: usize, cx: &mut Context<'_>) -> Poll<Refused> {
        let mut tenants = self.lock();
        match tenants.entries.get_mut(index) {
            Some(Entry::Waiting { waker, .. }) => {
                // `clone_from` keeps the stored waker when it wakes the same task.
                waker.clone_from(cx.waker());
                Poll::Pending
            }
            _ => Poll::Ready(Refused::Displaced),
        }
    }
}

impl Tenants {
    /// The slot of `revision` if it has waiting requests: `hint` if that slot is its, else
    /// by key.
    fn find_revision(&self, revision: RevisionKey, hint: usize) -> Option<usize> {
        match self.revisions.get(hint) {
            Some(queue) if queue.key == revision => Some(hint),
            _ => self.by_key.get(&revision).copied(),
        }
    }

    /// A slot for `revision`, which has no waiting request yet (nor its namespace, maybe).
    fn add_revision(&mut self, namespace: &str, revision: RevisionKey) -> usize {
        let ns_slot = match self.by_name.get(namespace) {
            Some(&slot) => slot,
            None => {
                let slot = self.namespaces.insert(NamespaceQueue {
                    name: namespace.to_owned(),
                    waiting: 0,
                    revisions: Vec::new(),
                });
                self.by_name.insert(namespace.to_owned(), slot);
                slot
            }
        };
        let position = self
            .namespaces
            .get(ns_slot)
            .map_or(0, |ns| ns.revisions.len());
        let slot = self.revisions.insert(RevisionQueue {
            key: revision,
            namespace: ns_slot,
            position,
            len: 0,
            tail: NIL,
        });
        if let Some(ns) = self.namespaces.get_mut(ns_slot) {
            ns.revisions.push(slot);
        }
        self.by_key.insert(revision, slot);
        slot
    }

    /// Links a new waiting request as the newest of the revision in `slot`; returns its entry.
    fn link(&mut self, slot: usize, waker: Waker) -> usize {
        let (prev, ns_slot) = self
            .revisions
            .get(slot)
            .map_or((NIL, NIL), |rev| (rev.tail, rev.namespace));
        let index = self.entries.insert(Entry::Waiting {
            waker,
            revision: slot,
            prev,
            next: NIL,
        });
        if let Some(Entry::Waiting { next, .. }) = self.entries.get_mut(prev) {
            *next = index;
        }
        if let Some(rev) = self.revisions.get_mut(slot) {
            rev.tail = index;
            rev.len += 1;
        }
        if let Some(ns) = self.namespaces.get_mut(ns_slot) {
            ns.waiting += 1;
        }
        index
    }

    /// Takes the waiting request at `index` out of its revision's list, leaving the entry
    /// displaced, and uncounts it from the revision and the namespace (not from the total);
    /// drops emptied revisions and namespaces. Returns its waker; `None` if it was not waiting.
    fn unlink(&mut self, index: usize) -> Option<Waker> {
        let entry = self.entries.get_mut(index)?;
        if !matches!(entry, Entry::Waiting { .. }) {
            return None;
        }
        let Entry::Waiting {
            waker,
            revision,
            prev,
            next,
        } = std::mem::replace(entry, Entry::Displaced)
        else {
            return None;
        };
        self.detach(index, revision, prev, next);
        Some(waker)
    }

    /// Takes the request at `index` (whose entry is no longer waiting, or gone) out of its
    /// revision's list, linked by `prev` and `next`, and uncounts it from the revision in slot
    /// `revision` and its namespace (not from the total); drops emptied revisions and
    /// namespaces.
    fn detach(&mut self, index: usize, revision: usize, prev: usize, next: usize) {
        if let Some(Entry::Waiting { next: n, .. }) = self.entries.get_mut(prev) {
            *n = next;
        }
        if let Some(Entry::Waiting { prev: p, .. }) = self.entries.get_mut(next) {
            *p = prev;
        }
        let mut ns_slot = NIL;
        let mut emptied = false;
        if let Some(rev) = self.revisions.get_mut(revision) {
            if rev.tail == index {
                rev.tail = prev;
            }
            rev.len -= 1;
            ns_slot = rev.namespace;
            emptied = rev.len == 0;
        }
        if emptied {
            self.remove_revision(revision);
        }
        if let Some(ns) = self.namespaces.get_mut(ns_slot) {
            ns.waiting -= 1;
            if ns.waiting == 0 {
                if let Some(ns) = take(&mut self.namespaces, ns_slot) {
                    self.by_name.remove(&ns.name);
                }
            }
        }
    }

    /// Forgets the revision in `slot` (no request of it waits any more).
    fn remove_revision(&mut self, slot: usize) {
        let Some(rev) = take(&mut self.revisions, slot) else {
            return;
        };
        self.by_key.remove(&rev.key);
        let Some(ns) = self.namespaces.get_mut(rev.namespace) else {
            return;
        };
        if rev.position < ns.revisions.len() {
            ns.revisions.swap_remove(rev.position);
            if let Some(&moved) = ns.revisions.get(rev.position) {
                if let Some(moved) = self.revisions.get_mut(moved) {
                    moved.position = rev.position;
                }
            }
        }
    }

    /// Unlinks the newest waiting request of the revision in `slot` (see [`Tenants::unlink`]).
    fn unlink_newest(&mut self, slot: usize) -> Option<Waker> {
        let tail = self.revisions.get(slot)?.tail;
        self.unlink(tail)
    }

    /// The fair-share decision of the module docs, taken when `max` requests wait: the slot of
    /// the revision that gives up its newest request. `own` is the newcomer's revision's slot.
    fn choose_victim(
        &self,
        max: usize,
        namespace: &str,
        own: Option<usize>,
    ) -> Result<usize, Refused> {
        let own_ns_slot = self.by_name.get(namespace).copied();
        let own_ns = own_ns_slot.and_then(|slot| self.namespaces.get(slot));
        let namespaces = self.by_name.len() + usize::from(own_ns.is_none());
        let ns_share = max / namespaces;
        let ns_waiting = own_ns.map_or(0, |ns| ns.waiting);
        if ns_waiting < ns_share {
            // Some other namespace holds more than its share: the largest one gives up.
            let (_, queue) = self
                .namespaces
                .iter()
                .filter(|(slot, _)| Some(*slot) != own_ns_slot)
                .max_by_key(|(_, ns)| ns.waiting)
                .ok_or(Refused::OverShare)?;
            return self.largest_revision(queue, None).ok_or(Refused::OverShare);
        }
        let ns = own_ns.ok_or(Refused::OverShare)?;
        let revisions = ns.revisions.len() + usize::from(own.is_none());
        let rev_share = ns.waiting / revisions;
        let rev_waiting = own
            .and_then(|slot| self.revisions.get(slot))
            .map_or(0, |rev| rev.len);
        if rev_waiting >= rev_share {
            return Err(Refused::OverShare);
        }
        self.largest_revision(ns, own).ok_or(Refused::OverShare)
    }

    /// The slot of `ns`'s revision with the most waiting requests, other than `except`.
    fn largest_revision(&self, ns: &NamespaceQueue, except: Option<usize>) -> Option<usize> {
        ns.revisions
            .iter()
            .copied()
            .filter(|&slot| Some(slot) != except)
            .filter_map(|slot| Some((slot, self.revisions.get(slot)?.len)))
            .max_by_key(|&(_, len)| len)
            .map(|(slot, _)| slot)
    }
}

/// One admitted waiting request. Leaves the queue when dropped (a displaced one is no longer
/// counted; its entry is freed then).
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    queue: &'a FairQueue,
    /// Its entry, owned until the ticket is dropped.
    index: usize,
}

impl Ticket<'_> {
    /// Waits for `acquire` unless the request is displaced first. A slot granted at the same
    /// time as the displacement wins: the request no longer waits, so nothing is lost.
    #[cfg(test)]
    pub(crate) async fn wait<F: std::future::Future>(
        &self,
        acquire: F,
    ) -> Result<F::Output, Refused> {
        let mut acquire = std::pin::pin!(acquire);
        std::future::poll_fn(|cx: &mut Context<'_>| self.poll(acquire.as_mut(), cx)).await
    }

    /// Ready with [`Refused::Displaced`] once the request was displaced; otherwise keeps the
    /// task's current waker for a displacement. For a caller that polls its `acquire` first
    /// (a slot granted at the same time as the displacement wins, as in [`Ticket::wait`]).
    pub(crate) fn poll_displaced(&self, cx: &mut Context<'_>) -> Poll<Refused> {
        self.queue.poll_displaced(self.index, cx)
    }

    #[cfg(test)]
    fn poll<F: std::future::Future>(
        &self,
        acquire: std::pin::Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<F::Output, Refused>> {
        if let Poll::Ready(out) = acquire.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        self.poll_displaced(cx).map(Err)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Tests share one revision hint for all revisions: a hint is never trusted blindly.
    static HINT: AtomicUsize = AtomicUsize::new(NIL);

    /// `n` requests of `namespace`'s revision `revision` admitted to wait (each must be).
    fn wait_n<'a>(
        queue: &'a FairQueue,
        namespace: &str,
        revision: RevisionKey,
        n: usize,
    ) -> Vec<Ticket<'a>> {
        (0..n)
            .map(|_| {
                queue
                    .enter(namespace, revision, &HINT, Waker::noop())
                    .unwrap()
            })
            .collect()
    }

    fn holders(queue: &FairQueue) -> Vec<(String, RevisionKey, usize)> {
        let tenants = queue.lock();
        let mut out: Vec<_> = tenants
            .revisions
            .iter()
            .map(|(_, rev)| {
                let ns = tenants.namespaces.get(rev.namespace).unwrap();
                (ns.name.clone(), rev.key, rev.len)
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

    /// Nothing counted and no namespace, revision or entry left behind.
    fn assert_empty(queue: &FairQueue) {
        let tenants = queue.lock();
        assert_eq!(tenants.total, 0);
        assert!(tenants.by_name.is_empty() && tenants.by_key.is_empty());
        assert_eq!(tenants.namespaces.iter().count(), 0);
        assert_eq!(tenants.revisions.iter().count(), 0);
        assert_eq!(tenants.entries.iter().count(), 0);
    }

    /// The revisions' counts and lists agree with each other and with the namespaces' counts
    /// and the total.
    fn assert_consistent(queue: &FairQueue) {
        let tenants = queue.lock();
        let mut total = 0;
        for (ns_slot, ns) in tenants.namespaces.iter() {
            assert_eq!(tenants.by_name.get(&ns.name), Some(&ns_slot));
            let mut waiting = 0;
            for (position, &slot) in ns.revisions.iter().enumerate() {
                let rev = tenants.revisions.get(slot).unwrap();
                assert_eq!((rev.namespace, rev.position), (ns_slot, position));
                assert_eq!(tenants.by_key.get(&rev.key), Some(&slot));
                // Walk the list from the newest: `len` entries, all of this revision.
                let (mut index, mut len) = (rev.tail, 0);
                while let Some(Entry::Waiting { revision, prev, .. }) = tenants.entries.get(index) {
                    assert_eq!(*revision, slot);
                    len += 1;
                    index = *prev;
                }
                assert_eq!(len, rev.len);
                waiting += rev.len;
            }
            assert_eq!(waiting, ns.waiting);
            total += waiting;
        }
        assert_eq!(total, tenants.total);
        assert_eq!(tenants.revisions.iter().count(), tenants.by_key.len());
        assert_eq!(queue.waiting(), total);
    }

    #[test]
    fn counts_stay_exact_as_requests_leave_in_any_order() {
        let queue = FairQueue::new(Some(1000));
        let hints: Vec<AtomicUsize> = (0..6).map(|_| AtomicUsize::new(NIL)).collect();
        let namespaces = ["a", "b", "c"];
        let mut tickets: Vec<(usize, Ticket<'_>)> = (0..120)
            .map(|i| {
                let rev = i % 6;
                let ticket = queue
                    .enter(namespaces[rev % 3], rev, &hints[rev], Waker::noop())
                    .unwrap();
                (rev, ticket)
            })
            .collect();
        assert_consistent(&queue);
        // Leave from the middle, the front and the back, re-entering some in between (slots
        // of emptied revisions are reused by others).
        let mut step = 0;
        while !tickets.is_empty() {
            let at = (step * 7) % tickets.len();
            let (rev, ticket) = tickets.remove(at);
            drop(ticket);
            if step % 5 == 0 {
                let other = (rev + step) % 6;
                let ticket = queue
                    .enter(namespaces[other % 3], other, &hints[other], Waker::noop())
                    .unwrap();
                tickets.push((other, ticket));
            }
            step += 1;
            assert_consistent(&queue);
        }
        assert_empty(&queue);
    }

    #[test]
    fn the_cap_displaces_the_newest_after_slots_were_reused() {
        let queue = FairQueue::new(Some(4));
        let (h1, h2, h3) = (
            AtomicUsize::new(NIL),
            AtomicUsize::new(NIL),
            AtomicUsize::new(NIL),
        );
        // Revision 3 takes slots first and leaves: 1 and 2 reuse them, the hints of 3 go stale.
        drop(queue.enter("ns", 3, &h3, Waker::noop()).unwrap());
        let old: Vec<_> = (0..3)
            .map(|_| queue.enter("ns", 1, &h1, Waker::noop()).unwrap())
            .collect();
        let newest = queue.enter("ns", 1, &h1, Waker::noop()).unwrap();
        assert_consistent(&queue);
        // A stale hint pointing at revision 1's slot is not trusted.
        h3.store(h1.load(Ordering::Relaxed), Ordering::Relaxed);
        let newcomer = queue.enter("ns", 3, &h3, Waker::noop()).unwrap();
        assert!(is_displaced(&queue, &newest), "the newest of revision 1");
        assert!(old.iter().all(|t| !is_displaced(&queue, t)));
        assert_eq!(holders(&queue), [("ns".into(), 1, 3), ("ns".into(), 3, 1)]);
        assert_consistent(&queue);
        // Another namespace under its share displaces from the larger one: revision 1 again.
        let other = queue.enter("other", 2, &h2, Waker::noop()).unwrap();
        assert!(is_displaced(&queue, &old[2]));
        assert_eq!(queue.waiting(), 4);
        assert_consistent(&queue);
        drop((newest, newcomer, other));
        drop(old);
        assert_empty(&queue);
    }

    #[test]
    fn below_the_cap_everyone_waits() {
        let queue = FairQueue::new(Some(3));
        let tickets = wait_n(&queue, "ns", 1, 3);
        assert_eq!(queue.waiting(), 3);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
        assert_empty(&queue);
    }

    #[test]
    fn unbounded_only_counts() {
        let queue = FairQueue::new(None);
        let tickets: Vec<_> = (0..1000)
            .map(|i| queue.enter("ns", i % 7, &HINT, Waker::noop()).unwrap())
            .collect();
        assert_eq!(queue.waiting(), 1000);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
    }

    #[test]
    fn a_newcomer_displaces_the_newest_request_of_the_largest_revision() {
        let queue = FairQueue::new(Some(4));
        let noisy = wait_n(&queue, "ns", 1, 4);
        assert_eq!(
            queue.enter("ns", 1, &HINT, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        let victim = queue.enter("ns", 2, &HINT, Waker::noop()).unwrap();
        assert_eq!(queue.waiting(), 4);
        let displaced: Vec<bool> = noisy.iter().map(|t| is_displaced(&queue, t)).collect();
        assert_eq!(displaced, [false, false, false, true], "the newest one");
        assert_eq!(holders(&queue), [("ns".into(), 1, 3), ("ns".into(), 2, 1)]);
        // The second newcomer of `2` is still under the share (4 / 2 = 2).
        let _victim2 = queue.enter("ns", 2, &HINT, Waker::noop()).unwrap();
        assert_eq!(holders(&queue), [("ns".into(), 1, 2), ("ns".into(), 2, 2)]);
        assert_eq!(
            queue.enter("ns", 2, &HINT, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        assert_eq!(
            queue.enter("ns", 1, &HINT, Waker::noop()).unwrap_err(),
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
            .map(|i| queue.enter("big", i, &HINT, Waker::noop()).unwrap())
            .collect();
        let _small = wait_n(&queue, "small", 100, 3);
        assert_eq!(
            queue.enter("small", 100, &HINT, Waker::noop()).unwrap_err(),
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
            queue.enter("big", 50, &HINT, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
    }

    #[test]
    fn a_share_grows_back_when_others_drain() {
        let queue = FairQueue::new(Some(4));
        let a = wait_n(&queue, "a", 1, 2);
        let _b = wait_n(&queue, "b", 2, 2);
        assert_eq!(
            queue.enter("a", 1, &HINT, Waker::noop()).unwrap_err(),
            Refused::OverShare
        );
        drop(a);
        let _more = wait_n(&queue, "b", 2, 2);
        assert_eq!(holders(&queue), [("b".into(), 2, 4)]);
    }

    #[test]
    fn more_tenants_than_slots_refuses_newcomers() {
        let queue = FairQueue::new(Some(2));
        let _a = queue.enter("a", 1, &HINT, Waker::noop()).unwrap();
        let _b = queue.enter("b", 2, &HINT, Waker::noop()).unwrap();
        assert_eq!(
            queue.enter("c", 3, &HINT, Waker::noop()).unwrap_err(),
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
                let _older = queue.enter("ns", 1, &HINT, Waker::noop()).unwrap();
                let newest = queue.enter("ns", 1, &HINT, Waker::noop()).unwrap();
                entered_tx.send(()).unwrap();
                newest.wait(std::future::pending::<()>()).await
            })
        };
        entered_rx.await.unwrap();
        let _newcomer = queue.enter("other", 2, &HINT, Waker::noop()).unwrap();
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
        let older = queue.enter("ns", 1, &HINT, Waker::noop()).unwrap();
        let newest = queue.enter("ns", 1, &HINT, Waker::noop()).unwrap();
        let _newcomer = queue.enter("other", 2, &HINT, Waker::noop()).unwrap();
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
