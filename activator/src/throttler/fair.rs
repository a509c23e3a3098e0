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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::FastHash;

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

#[derive(Debug, Default)]
struct Tenants {
    total: usize,
    next_ticket: u64,
    namespaces: HashMap<String, NamespaceQueue, FastHash>,
}

#[derive(Debug, Default)]
struct NamespaceQueue {
    waiting: usize,
    revisions: HashMap<RevisionKey, RevisionQueue, FastHash>,
}

/// One revision's waiting requests, oldest first (tickets increase).
#[derive(Debug, Default)]
struct RevisionQueue {
    waiters: VecDeque<(u64, Arc<Displacement>)>,
}

/// Set when the request was displaced by a newcomer of a smaller tenant.
#[derive(Debug, Default)]
struct Displacement {
    displaced: AtomicBool,
    waker: AtomicWaker,
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
    /// newest request of a larger tenant if the cap is reached; see the module docs.
    pub(crate) fn enter<'a>(
        &'a self,
        namespace: &'a str,
        revision: RevisionKey,
    ) -> Result<Ticket<'a>, Refused> {
        let mut tenants = self.lock();
        if self.max.is_some_and(|max| tenants.total >= max) {
            let max = self.max.unwrap_or(usize::MAX);
            let victim = tenants.choose_victim(max, namespace, revision)?;
            tenants.displace(victim);
        } else {
            tenants.total += 1;
        }
        let ticket = tenants.next_ticket;
        tenants.next_ticket += 1;
        let displacement = Arc::new(Displacement::default());
        let ns = match tenants.namespaces.get_mut(namespace) {
            Some(ns) => ns,
            None => tenants.namespaces.entry(namespace.to_owned()).or_default(),
        };
        ns.waiting += 1;
        ns.revisions
            .entry(revision)
            .or_default()
            .waiters
            .push_back((ticket, Arc::clone(&displacement)));
        self.waiting.store(tenants.total, Ordering::Relaxed);
        drop(tenants);
        Ok(Ticket {
            queue: self,
            revision,
            ticket,
            displacement,
            namespace,
        })
    }

    fn leave(&self, namespace: &str, revision: RevisionKey, ticket: u64) {
        let mut tenants = self.lock();
        let Some(ns) = tenants.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(rev) = ns.revisions.get_mut(&revision) else {
            return;
        };
        // Usually the oldest (served first), so the search ends at the front.
        let Ok(index) = rev.waiters.binary_search_by_key(&ticket, |(t, _)| *t) else {
            return;
        };
        rev.waiters.remove(index);
        if rev.waiters.is_empty() {
            ns.revisions.remove(&revision);
        }
        ns.waiting -= 1;
        if ns.waiting == 0 {
            tenants.namespaces.remove(namespace);
        }
        tenants.total -= 1;
        self.waiting.store(tenants.total, Ordering::Relaxed);
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
        let rev_waiting = ns.revisions.get(&revision).map_or(0, |r| r.waiters.len());
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

    /// Removes the victim's newest waiting request and wakes it. The total is unchanged: the
    /// newcomer takes the place.
    fn displace(&mut self, victim: Victim) {
        let Some(ns) = self.namespaces.get_mut(&victim.namespace) else {
            return;
        };
        let Some(rev) = ns.revisions.get_mut(&victim.revision) else {
            return;
        };
        let Some((_, displacement)) = rev.waiters.pop_back() else {
            return;
        };
        if rev.waiters.is_empty() {
            ns.revisions.remove(&victim.revision);
        }
        ns.waiting -= 1;
        if ns.waiting == 0 {
            self.namespaces.remove(&victim.namespace);
        }
        displacement.displaced.store(true, Ordering::Release);
        displacement.waker.wake();
    }
}

impl NamespaceQueue {
    /// The revision with the most waiting requests, other than `except`.
    fn largest_revision(&self, except: Option<RevisionKey>) -> Option<RevisionKey> {
        self.revisions
            .iter()
            .filter(|(key, _)| Some(**key) != except)
            .max_by_key(|(_, rev)| rev.waiters.len())
            .map(|(key, _)| *key)
    }
}

/// One admitted waiting request. Leaves the queue when dropped (unless it was displaced, which
/// already removed it).
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    queue: &'a FairQueue,
    /// The revision's own namespace text (the ticket lives no longer than the wait for its
    /// revision), not a copy per waiting request.
    namespace: &'a str,
    revision: RevisionKey,
    ticket: u64,
    displacement: Arc<Displacement>,
}

impl Ticket<'_> {
    /// Waits for `acquire` unless the request is displaced first. A slot granted at the same
    /// time as the displacement wins: the request no longer waits, so nothing is lost.
    #[cfg(test)]
    pub(crate) async fn wait<F: Future>(&self, acquire: F) -> Result<F::Output, Refused> {
        let mut acquire = std::pin::pin!(acquire);
        std::future::poll_fn(|cx: &mut Context<'_>| self.poll(acquire.as_mut(), cx)).await
    }

    /// [`Ticket::wait`] for an `acquire` that the caller polled in this same task poll and found
    /// pending: the first poll here only registers for displacement, since `acquire` already
    /// holds the task's waker (a slot granted in between wakes the task, which polls again).
    pub(crate) async fn wait_pending<F: Future>(&self, acquire: F) -> Result<F::Output, Refused> {
        let mut acquire = std::pin::pin!(acquire);
        let mut just_polled = true;
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if std::mem::take(&mut just_polled) {
                return self.poll_displaced(cx).map(Err);
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
        self.poll_displaced(cx).map(Err)
    }

    /// Ready with [`Refused::Displaced`] once displaced; registers the task otherwise.
    fn poll_displaced(&self, cx: &mut Context<'_>) -> Poll<Refused> {
        self.displacement.waker.register(cx.waker());
        if self.displacement.displaced.load(Ordering::Acquire) {
            return Poll::Ready(Refused::Displaced);
        }
        Poll::Pending
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.displacement.displaced.load(Ordering::Acquire) {
            self.queue.leave(self.namespace, self.revision, self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(queue: &FairQueue) -> Vec<(String, RevisionKey, usize)> {
        let tenants = queue.lock();
        let mut out: Vec<_> = tenants
            .namespaces
            .iter()
            .flat_map(|(ns, q)| {
                q.revisions
                    .iter()
                    .map(move |(rev, r)| (ns.clone(), *rev, r.waiters.len()))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn below_the_cap_everyone_waits() {
        let queue = FairQueue::new(Some(3));
        let tickets: Vec<_> = (0..3).map(|_| queue.enter("ns", 1).unwrap()).collect();
        assert_eq!(queue.waiting(), 3);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
        assert!(queue.lock().namespaces.is_empty(), "no state left behind");
    }

    #[test]
    fn unbounded_only_counts() {
        let queue = FairQueue::new(None);
        let tickets: Vec<_> = (0..1000)
            .map(|i| queue.enter("ns", i % 7).unwrap())
            .collect();
        assert_eq!(queue.waiting(), 1000);
        drop(tickets);
        assert_eq!(queue.waiting(), 0);
    }

    #[test]
    fn a_newcomer_displaces_the_newest_request_of_the_largest_revision() {
        let queue = FairQueue::new(Some(4));
        let noisy: Vec<_> = (0..4).map(|_| queue.enter("ns", 1).unwrap()).collect();
        assert_eq!(queue.enter("ns", 1).unwrap_err(), Refused::OverShare);
        let victim = queue.enter("ns", 2).unwrap();
        assert_eq!(queue.waiting(), 4);
        let displaced: Vec<bool> = noisy
            .iter()
            .map(|t| t.displacement.displaced.load(Ordering::Acquire))
            .collect();
        assert_eq!(displaced, [false, false, false, true], "the newest one");
        assert_eq!(holders(&queue), [("ns".into(), 1, 3), ("ns".into(), 2, 1)]);
        // The second newcomer of `2` is still under the share (4 / 2 = 2).
        let _victim2 = queue.enter("ns", 2).unwrap();
        assert_eq!(holders(&queue), [("ns".into(), 1, 2), ("ns".into(), 2, 2)]);
        assert_eq!(queue.enter("ns", 2).unwrap_err(), Refused::OverShare);
        assert_eq!(queue.enter("ns", 1).unwrap_err(), Refused::OverShare);
        drop(victim);
        drop(noisy);
        assert_eq!(holders(&queue), [("ns".into(), 2, 1)]);
        assert_eq!(queue.waiting(), 1);
    }

    #[test]
    fn namespaces_share_before_revisions() {
        // One namespace with many revisions gets no more than a namespace with one.
        let queue = FairQueue::new(Some(6));
        let _many: Vec<_> = (0..6).map(|i| queue.enter("big", i).unwrap()).collect();
        let _small: Vec<_> = (0..3).map(|_| queue.enter("small", 100).unwrap()).collect();
        assert_eq!(queue.enter("small", 100).unwrap_err(), Refused::OverShare);
        let counts: usize = holders(&queue)
            .iter()
            .filter(|(ns, _, _)| ns == "big")
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(counts, 3);
        assert_eq!(queue.waiting(), 6);
        // Inside `big`, a revision with nothing waiting still under the namespace's share of
        // revisions is refused: the namespace is at its share and its 3 revisions hold 1 each.
        assert_eq!(queue.enter("big", 50).unwrap_err(), Refused::OverShare);
    }

    #[test]
    fn a_share_grows_back_when_others_drain() {
        let queue = FairQueue::new(Some(4));
        let a: Vec<_> = (0..2).map(|_| queue.enter("a", 1).unwrap()).collect();
        let _b: Vec<_> = (0..2).map(|_| queue.enter("b", 1).unwrap()).collect();
        assert_eq!(queue.enter("a", 1).unwrap_err(), Refused::OverShare);
        drop(a);
        let _more: Vec<_> = (0..2).map(|_| queue.enter("b", 1).unwrap()).collect();
        assert_eq!(holders(&queue), [("b".into(), 1, 4)]);
    }

    #[test]
    fn more_tenants_than_slots_refuses_newcomers() {
        let queue = FairQueue::new(Some(2));
        let _a = queue.enter("a", 1).unwrap();
        let _b = queue.enter("b", 1).unwrap();
        assert_eq!(queue.enter("c", 1).unwrap_err(), Refused::OverShare);
        assert_eq!(queue.waiting(), 2);
    }

    #[tokio::test]
    async fn a_displaced_waiter_is_woken_with_refused() {
        let queue = Arc::new(FairQueue::new(Some(2)));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let _older = queue.enter("ns", 1).unwrap();
                let newest = queue.enter("ns", 1).unwrap();
                entered_tx.send(()).unwrap();
                newest.wait(std::future::pending::<()>()).await
            })
        };
        entered_rx.await.unwrap();
        let _newcomer = queue.enter("other", 2).unwrap();
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
        let older = queue.enter("ns", 1).unwrap();
        let newest = queue.enter("ns", 1).unwrap();
        let _newcomer = queue.enter("other", 2).unwrap();
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
