//! The concurrency breaker (spec §3.2, §3.8): at most `capacity` requests execute at once, a
//! bounded number more wait for a slot, anything beyond is refused at once. One breaker serves
//! both binaries: the activator's revision breaker (cc > 0) and every pod tracker's breaker,
//! with a capacity that changes at runtime, and the queue-proxy's containerConcurrency breaker
//! ([`Breaker::for_container_concurrency`], fixed capacity), which [`BreakerLayer`] puts in
//! front of the user container.
//!
//! # Counters
//! - `pending`: requests inside the breaker (waiting or running), hard limit `Q + M`, taken with one
//!   compare-and-swap on admission.
//! - execution slots: `in_flight` and `capacity` packed into one `AtomicU64` (capacity in the high
//!   32 bits, in-flight in the low 32), so a slot is taken with one CAS against a consistent
//!   capacity. Capacity is clamped to `M ≤ 2^31−1`, and in-flight never exceeds the largest capacity
//!   ever set, so neither half overflows into the other.
//!
//! # Waiting, and why wake-ups are exact
//! Requests that find no free slot join a FIFO list (a slab with index links behind a mutex that is
//! only taken on the slow path). A freed slot is *handed over*: whoever frees capacity (a release,
//! a capacity increase, a granted waiter that is cancelled) takes the slot on behalf of the head
//! waiter with the same CAS as the fast path, marks it granted and wakes it (a release that finds
//! waiters passes its own slot on under the lock, without giving it back and taking it again). A
//! waiter is therefore only ever woken when it already owns a slot: growing the capacity by `k`
//! wakes at most `k` waiters, a release wakes at most one, and nobody wakes up to find the slot
//! gone (no re-check loops, no spinning). A waiter dropped after being granted hands its slot to
//! the next waiter, so a consumed wake-up is never lost.
//!
//! Lost wake-ups between the fast path and the list are excluded by a Dekker-style handshake on the
//! `waiting` counter (all `SeqCst`): a waiter increments `waiting` under the lock *before* retrying
//! the CAS; a releaser decrements `in_flight` *before* reading `waiting`. Either the waiter's retry
//! sees the freed slot, or the releaser sees the waiter and (taking the lock, hence after the waiter
//! is linked) grants it.
//!
//! Newcomers may take a free slot before queued waiters are served (spec: "waiting is roughly FIFO
//! but newcomers may barge"). Shrinking the capacity below `in_flight` evicts nobody; new requests
//! simply wait until enough slots are released.
//!
//! # Whom a freed slot goes to
//! The head waiter, unless one of the next [`LOOKAHEAD`] − 1 waiters runs on the worker thread
//! that frees the slot ([`crate::worker`]) and the head is not on it: then that one. (Only the
//! activator marks its threads as workers; in the queue-proxy every waiter counts as local and
//! the order is FIFO.) Waking a
//! task of another worker costs a system call on each side (an eventfd write, an `epoll_wait`
//! that returns for it), and at a small containerConcurrency every request waits for a slot, so
//! with strict FIFO about half the grants of a two-worker activator crossed threads (measured:
//! 0.5 eventfd writes per request at cc=10). A head passed over this way counts it, and after
//! [`MAX_SKIPS`] it is granted whatever runs where: no waiter waits more than that many grants
//! longer than under FIFO, and the order among one worker's waiters stays FIFO. Outside the
//! workers (tests, the main runtime) every waiter counts as local, so the order is FIFO.
//!
//! With a look-ahead of 4 and 4 skips, about one grant in five still crossed threads at cc=10
//! with two workers (0.18 eventfd writes per h2c request): the skip bound, not the look-ahead,
//! was what forced them. At 8 and 8 the activator makes 2.25 system calls per h2c request
//! instead of 2.50 and 0.41 context switches instead of 0.49 (h2load, 10 connections × 10
//! streams), and 4.85–4.92 instead of 5.02 per HTTP/1.1 request; at 30,000 grants a second,
//! 8 grants are about a quarter of a millisecond of extra wait at most for the head.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

mod service;

pub use service::{BreakerFuture, BreakerLayer, BreakerService, WithPermit, QUEUE_FULL_BODY};

/// The largest capacity a breaker can have: `2^31 − 1` (Go's `revisionMaxConcurrency`).
pub const MAX_CAPACITY: u32 = i32::MAX as u32;

/// How many waiters a single grant pass wakes before dropping the lock to wake them.
const WAKE_BATCH: usize = 16;

/// How many waiters from the head a grant looks at for one of its own worker (module docs).
const LOOKAHEAD: usize = 8;

/// How many grants may pass over the head waiter before it is granted regardless (module docs).
const MAX_SKIPS: u8 = 8;

/// End-of-list / empty marker for the slab links.
const NIL: usize = usize::MAX;

/// Parameters of a [`Breaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerParams {
    /// `Q`: how many requests may wait beyond `max_concurrency` (the `pending` limit is `Q + M`).
    pub queue_depth: usize,
    /// `M`: the largest capacity; clamped to [`MAX_CAPACITY`].
    pub max_concurrency: u32,
    /// `C0`: the initial capacity; clamped to `max_concurrency`.
    pub initial_capacity: u32,
    /// Optional extra cap on the number of requests *waiting* for a slot (not counting running
    /// ones); a request that would have to wait beyond it fails with [`QueueFull`]. `None` = only
    /// the `Q + M` limit applies.
    pub max_waiting: Option<usize>,
}

impl BreakerParams {
    /// The revision breaker (cc > 0): `Q = 10000`, `M = 2^31−1`, `C0 = 0` — effectively unbounded.
    pub fn revision(max_waiting: Option<usize>) -> Self {
        BreakerParams {
            queue_depth: 10_000,
            max_concurrency: MAX_CAPACITY,
            initial_capacity: 0,
            max_waiting,
        }
    }

    /// The queue-proxy's breaker for `containerConcurrency = cc`: `Q = 10 × cc`, `M = C0 = cc`
    /// (the capacity never changes).
    pub fn container_concurrency(cc: u32) -> Self {
        BreakerParams {
            queue_depth: (cc as usize).saturating_mul(10),
            max_concurrency: cc,
            initial_capacity: cc,
            max_waiting: None,
        }
    }

    /// A pod tracker's breaker: `Q = 10000`, `M = cc`, `C0 = cc`.
    pub fn pod(cc: u32) -> Self {
        BreakerParams {
            queue_depth: 10_000,
            max_concurrency: cc,
            initial_capacity: cc,
            max_waiting: None,
        }
    }
}

/// The breaker's queue is full ("pending request queue full").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pending request queue full")]
pub struct QueueFull;

/// Why the queue-proxy's breaker could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BreakerError {
    /// containerConcurrency 0 means no breaker at all.
    #[error("CONTAINER_CONCURRENCY must be greater than 0 for a breaker")]
    ZeroConcurrency,
    /// Above the largest capacity a breaker can have.
    #[error("CONTAINER_CONCURRENCY {0} exceeds the largest breaker capacity, {MAX_CAPACITY}")]
    TooLarge(usize),
}

/// What [`Breaker::enter`] decided for a request.
#[derive(Debug)]
pub enum Entry<'a> {
    /// A slot was free: the request runs now.
    Run(Permit<'a>),
    /// Admitted, but no slot is free: the future yields the permit when one is handed over.
    Wait(Acquire<'a>),
    /// The queue is full.
    Full,
}

/// A breaker with a `pending` limit and a dynamic number of execution slots. See the module docs.
///
/// Public use goes through RAII [`Permit`]s ([`Breaker::try_permit`], [`Breaker::permit`],
/// [`Breaker::enter`]); the low-level API ([`Breaker::try_reserve`], [`Breaker::acquire`] then
/// [`Breaker::release`]) leaves releasing to the caller (the activator's throttler's owned
/// leases).
#[derive(Debug)]
pub struct Breaker {
    pending: AtomicUsize,
    max_pending: usize,
    max_concurrency: u32,
    max_waiting: usize,
    /// `capacity << 32 | in_flight`.
    slots: AtomicU64,
    /// Waiters announced (under the lock) or linked in the list.
    waiting: AtomicUsize,
    waiters: Mutex<WaitList>,
}

/// An execution slot plus its `pending` entry; both are released on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.breaker.release();
    }
}

fn capacity_of(slots: u64) -> u32 {
    (slots >> 32) as u32
}

fn in_flight_of(slots: u64) -> u32 {
    slots as u32
}

fn pack(capacity: u32, in_flight: u32) -> u64 {
    (u64::from(capacity) << 32) | u64::from(in_flight)
}

/// Decrements without wrapping below zero.
fn decrement(counter: &AtomicUsize) {
    let _ = counter.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
}

impl Breaker {
    /// A breaker with the given parameters.
    pub fn new(params: BreakerParams) -> Self {
        let max_concurrency = params.max_concurrency.min(MAX_CAPACITY);
        let capacity = params.initial_capacity.min(max_concurrency);
        Breaker {
            pending: AtomicUsize::new(0),
            max_pending: params.queue_depth.saturating_add(max_concurrency as usize),
            max_concurrency,
            max_waiting: params.max_waiting.unwrap_or(usize::MAX),
            slots: AtomicU64::new(pack(capacity, 0)),
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(WaitList::default()),
        }
    }

    /// The queue-proxy's breaker for `containerConcurrency = cc` (cc > 0): [`BreakerParams::container_concurrency`].
    pub fn for_container_concurrency(cc: usize) -> Result<Self, BreakerError> {
        match u32::try_from(cc) {
            Ok(0) => Err(BreakerError::ZeroConcurrency),
            Ok(cc) if cc <= MAX_CAPACITY => {
                Ok(Breaker::new(BreakerParams::container_concurrency(cc)))
            }
            _ => Err(BreakerError::TooLarge(cc)),
        }
    }

    /// Current capacity (number of execution slots).
    pub fn capacity(&self) -> u32 {
        capacity_of(self.slots.load(SeqCst))
    }

    /// Execution slots in use.
    pub fn in_flight(&self) -> u32 {
        in_flight_of(self.slots.load(SeqCst))
    }

    /// Requests inside the breaker (waiting or running).
    pub fn pending(&self) -> usize {
        self.pending.load(SeqCst)
    }

    /// Requests queued for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().len
    }

    /// Sets the capacity (clamped to `M`). Growing by `k` hands a slot to — and wakes — up to `k`
    /// waiters; shrinking below `in_flight` evicts nobody.
    pub fn set_capacity(&self, capacity: u64) {
        let capacity = u32::try_from(capacity)
            .unwrap_or(u32::MAX)
            .min(self.max_concurrency);
        let previous = self
            .slots
            .fetch_update(SeqCst, SeqCst, |s| Some(pack(capacity, in_flight_of(s))))
            .unwrap_or_else(|s| s);
        if capacity > capacity_of(previous) && self.waiting.load(SeqCst) > 0 {
            self.grant();
        }
    }

    /// Try-reserve (pod trackers): takes a `pending` entry and a slot without waiting. On success
    /// the caller owns both and must call [`Breaker::release`] exactly once.
    #[inline]
    pub fn try_reserve(&self) -> bool {
        if !self.admit() {
            return false;
        }
        if self.try_take() {
            return true;
        }
        decrement(&self.pending);
        false
    }

    /// Try-reserve returning an RAII permit: a `pending` entry and a slot without waiting.
    pub fn try_permit(&self) -> Option<Permit<'_>> {
        // Not `then_some`: building a `Permit` eagerly would release on drop when reserve failed.
        if self.try_reserve() {
            Some(Permit { breaker: self })
        } else {
            None
        }
    }

    /// Acquire (revision breaker): fails at once with [`QueueFull`] if `pending` is at its limit
    /// (or the optional waiting cap is reached), otherwise waits for a slot. On `Ok` the caller owns
    /// a `pending` entry and a slot and must call [`Breaker::release`] exactly once. Dropping the
    /// future before it completes leaves the queue and leaks nothing.
    pub fn acquire(&self) -> Acquire<'_> {
        Acquire {
            breaker: self,
            state: AcquireState::Start,
        }
    }

    /// Acquire returning an RAII permit: fails at once with [`QueueFull`] if `pending` is at its
    /// limit (or the optional waiting cap is reached), otherwise waits for a slot. Dropping the
    /// future before it completes leaves the queue and leaks nothing.
    pub async fn permit(&self) -> Result<Permit<'_>, QueueFull> {
        self.acquire().await?;
        Ok(Permit { breaker: self })
    }

    /// Admits a request and takes a slot if one is free, without waiting: the queue-proxy's
    /// entry, which refuses a request at once when the queue is full and builds its wait only
    /// when it has to wait. Same admission as [`Breaker::acquire`] (newcomers may barge).
    #[inline]
    pub fn enter(&self) -> Entry<'_> {
        if !self.admit() {
            return Entry::Full;
        }
        if self.try_take() {
            return Entry::Run(Permit { breaker: self });
        }
        Entry::Wait(Acquire {
            breaker: self,
            state: AcquireState::Admitted,
        })
    }

    /// Releases a slot and its `pending` entry (see `try_reserve`, `acquire`);
    /// if a waiter is queued and the slot is really free (capacity not shrunk below), the slot is
    /// handed to it.
    pub fn release(&self) {
        if self.waiting.load(SeqCst) > 0 && self.hand_over() {
            return;
        }
        self.give_back_slot();
        decrement(&self.pending);
        if self.waiting.load(SeqCst) > 0 {
            self.grant();
        }
    }

    /// [`Breaker::release`] when requests wait: the releasing request's slot goes straight to
    /// the waiter [`WaitList::grant_next`] chooses, without leaving `in_flight` (the slot a
    /// release would free and the grant take again at once). Not when the capacity was shrunk
    /// below `in_flight`: then the slot goes away and nobody is granted, as in
    /// [`Breaker::grant`]. Returns whether the slot was handed over (and its `pending` entry
    /// released).
    ///
    /// Waiters are linked, and counted in `waiting`, under the lock: one that is not linked
    /// yet has not retried its slot and will either take it or be seen by the release's
    /// second look at `waiting`.
    fn hand_over(&self) -> bool {
        let worker = crate::worker::current();
        let mut list = self.lock();
        let slots = self.slots.load(SeqCst);
        if list.len == 0 || in_flight_of(slots) == 0 || in_flight_of(slots) > capacity_of(slots) {
            return false;
        }
        let Some(waker) = list.grant_next(worker) else {
            return false;
        };
        // Every change of `waiting` happens under the lock, and the granted waiter was
        // counted: no underflow.
        self.waiting.fetch_sub(1, SeqCst);
        drop(list);
        decrement(&self.pending);
        waker.wake();
        true
    }

    fn lock(&self) -> MutexGuard<'_, WaitList> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a `pending` entry unless the `Q + M` limit is reached.
    #[inline]
    fn admit(&self) -> bool {
        self.pending
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max_pending).then(|| n + 1))
            .is_ok()
    }

    /// Takes an execution slot if `in_flight < capacity`.
    #[inline]
    fn try_take(&self) -> bool {
        self.slots
            .fetch_update(SeqCst, SeqCst, |s| {
                (in_flight_of(s) < capacity_of(s)).then(|| s + 1)
            })
            .is_ok()
    }

    /// Returns an execution slot (never below zero), without granting.
    fn give_back_slot(&self) {
        let _ = self
            .slots
            .fetch_update(SeqCst, SeqCst, |s| (in_flight_of(s) > 0).then(|| s - 1));
    }

    /// Hands free slots to queued waiters, in FIFO order, one slot per waiter, and wakes them.
    ///
    /// A release frees one slot, so the usual case grants one waiter: that takes one lock and
    /// no batch; only when a second slot is free too (a capacity increase) do the batches run.
    fn grant(&self) {
        let worker = crate::worker::current();
        let mut list = self.lock();
        let Some(first) = self.grant_one(&mut list, worker) else {
            return;
        };
        let second = self.grant_one(&mut list, worker);
        drop(list);
        first.wake();
        if let Some(second) = second {
            second.wake();
            self.grant_batches(worker);
        }
    }

    /// Hands one free slot to the waiter [`WaitList::grant_next`] chooses and returns its waker;
    /// `None` when nobody waits or no slot is free.
    #[inline]
    fn grant_one(&self, list: &mut WaitList, worker: u32) -> Option<Waker> {
        if list.len == 0 || !self.try_take() {
            return None;
        }
        let Some(waker) = list.grant_next(worker) else {
            // Inconsistent list (cannot happen): return the slot and stop.
            self.give_back_slot();
            return None;
        };
        // Every change of `waiting` happens under the lock, and the granted waiter was
        // counted: no underflow.
        self.waiting.fetch_sub(1, SeqCst);
        Some(waker)
    }

    /// [`Breaker::grant`] for many free slots: wakes up to [`WAKE_BATCH`] waiters per lock.
    #[cold]
    fn grant_batches(&self, worker: u32) {
        loop {
            let mut wakers: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut granted = 0;
            {
                let mut list = self.lock();
                while granted < WAKE_BATCH {
                    let Some(waker) = self.grant_one(&mut list, worker) else {
                        break;
                    };
                    if let Some(slot) = wakers.get_mut(granted) {
                        *slot = Some(waker);
                    }
                    granted += 1;
                }
            }
            for waker in wakers.iter_mut().filter_map(Option::take) {
                waker.wake();
            }
            if granted < WAKE_BATCH {
                return;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcquireState {
    Start,
    /// `pending` taken and the fast path tried ([`Breaker::enter`]): queue up on the first poll.
    Admitted,
    Queued(usize),
    Done,
}

/// Future of the crate-internal `Breaker::acquire` (and behind [`Breaker::permit`]).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a> {
    breaker: &'a Breaker,
    state: AcquireState,
}

impl<'a> Acquire<'a> {
    /// An admitted request that found no free slot: joins the wait list (or takes a slot that
    /// was freed meanwhile, or fails when the optional waiting cap is reached).
    // Always: outlined, it cost the activator's lease 33 instructions per waiting request
    // (`measure.py act 10 10000`).
    #[inline(always)]
    fn queue_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), QueueFull>> {
        let breaker = self.breaker;
        let mut list = breaker.lock();
        breaker.waiting.fetch_add(1, SeqCst);
        if breaker.try_take() {
            decrement(&breaker.waiting);
            self.state = AcquireState::Done;
            return Poll::Ready(Ok(()));
        }
        if list.len >= breaker.max_waiting {
            decrement(&breaker.waiting);
            drop(list);
            decrement(&breaker.pending);
            self.state = AcquireState::Done;
            return Poll::Ready(Err(QueueFull));
        }
        let index = list.push_back(cx.waker().clone(), crate::worker::current());
        self.state = AcquireState::Queued(index);
        Poll::Pending
    }

    /// Polls the wait of [`Breaker::enter`] and returns the [`Permit`] that owns the slot and
    /// the `pending` entry when it completes.
    #[inline]
    pub fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Result<Permit<'a>, QueueFull>> {
        match Pin::new(&mut *self).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Permit {
                breaker: self.breaker,
            })),
            Poll::Ready(Err(full)) => Poll::Ready(Err(full)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Future for Acquire<'_> {
    type Output = Result<(), QueueFull>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let breaker = this.breaker;
        match this.state {
            AcquireState::Start => {
                if !breaker.admit() {
                    this.state = AcquireState::Done;
                    return Poll::Ready(Err(QueueFull));
                }
                if breaker.try_take() {
                    this.state = AcquireState::Done;
                    return Poll::Ready(Ok(()));
                }
                this.queue_up(cx)
            }
            AcquireState::Admitted => this.queue_up(cx),
            AcquireState::Queued(index) => {
                let mut list = breaker.lock();
                match list.slots.get_mut(index) {
                    Some(Slot::Waiting { waker, .. }) => {
                        // `clone_from` keeps the stored waker when it wakes the same task.
                        waker.clone_from(cx.waker());
                        Poll::Pending
                    }
                    Some(Slot::Granted) => {
                        list.free(index);
                        this.state = AcquireState::Done;
                        Poll::Ready(Ok(()))
                    }
                    // Cannot happen: a queued waiter's slot is only freed by the waiter itself.
                    _ => {
                        drop(list);
                        decrement(&breaker.pending);
                        this.state = AcquireState::Done;
                        Poll::Ready(Err(QueueFull))
                    }
                }
            }
            AcquireState::Done => Poll::Ready(Err(QueueFull)),
        }
    }
}

impl Drop for Acquire<'_> {
    /// Inline: an acquire is usually dropped done, which needs nothing (the call alone cost
    /// 20 instructions per waiting request).
    #[inline]
    fn drop(&mut self) {
        match self.state {
            AcquireState::Start | AcquireState::Done => {}
            AcquireState::Admitted => decrement(&self.breaker.pending),
            AcquireState::Queued(index) => self.leave_queue(index),
        }
    }
}

impl Acquire<'_> {
    /// Dropped while queued: leaves the list, or passes on a slot granted meanwhile.
    #[cold]
    #[inline(never)]
    fn leave_queue(&self, index: usize) {
        let breaker = self.breaker;
        let mut list = breaker.lock();
        match list.slots.get(index) {
            Some(Slot::Waiting { .. }) => {
                let _ = list.unlink(index);
                list.free(index);
                decrement(&breaker.waiting);
                drop(list);
                decrement(&breaker.pending);
            }
            Some(Slot::Granted) => {
                // We were handed a slot (and woken) but are gone: pass it on.
                list.free(index);
                drop(list);
                breaker.release();
            }
            _ => {}
        }
    }
}

/// A slot of the waiter slab.
#[derive(Debug)]
enum Slot {
    /// Unused; `next_free` links the free list.
    Vacant { next_free: usize },
    /// Queued; `prev`/`next` link the FIFO.
    Waiting {
        waker: Waker,
        /// The worker thread the waiter runs on ([`crate::worker`]).
        worker: u32,
        /// Grants that passed this waiter over while it was the head.
        skipped: u8,
        prev: usize,
        next: usize,
    },
    /// Unlinked and owning an execution slot, until its waiter observes it (poll) or drops.
    Granted,
}

/// FIFO of waiters: a slab with index links, O(1) push, grant and cancellation.
#[derive(Debug)]
struct WaitList {
    slots: Vec<Slot>,
    free_head: usize,
    head: usize,
    tail: usize,
    /// Linked (waiting) entries.
    len: usize,
    /// Entries not vacant (waiting or granted).
    occupied: usize,
}

impl Default for WaitList {
    fn default() -> Self {
        WaitList {
            slots: Vec::new(),
            free_head: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            occupied: 0,
        }
    }
}

impl WaitList {
    /// Appends a waiter running on `worker`; returns its slot index.
    fn push_back(&mut self, waker: Waker, worker: u32) -> usize {
        let entry = Slot::Waiting {
            waker,
            worker,
            skipped: 0,
            prev: self.tail,
            next: NIL,
        };
        let index = match self.slots.get_mut(self.free_head) {
            Some(vacant) => {
                let index = self.free_head;
                self.free_head = match vacant {
                    Slot::Vacant { next_free } => *next_free,
                    _ => NIL,
                };
                *vacant = entry;
                index
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        match self.slots.get_mut(self.tail) {
            Some(Slot::Waiting { next, .. }) => *next = index,
            _ => self.head = index,
        }
        self.tail = index;
        self.len += 1;
        self.occupied += 1;
        index
    }

    /// Unlinks the waiter a slot freed on `worker` goes to (module docs: the head, or a later
    /// waiter of `worker` within [`LOOKAHEAD`]), marks it granted and returns its waker.
    fn grant_next(&mut self, worker: u32) -> Option<Waker> {
        let chosen = self.choose(worker);
        let waker = self.unlink(chosen)?;
        if let Some(slot) = self.slots.get_mut(chosen) {
            *slot = Slot::Granted;
        }
        Some(waker)
    }

    /// The index [`Self::grant_next`] grants; counts a skip on the head it passes over.
    fn choose(&mut self, worker: u32) -> usize {
        let head = self.head;
        let mut next = match self.slots.get(head) {
            Some(Slot::Waiting {
                worker: w,
                skipped,
                next,
                ..
            }) if *w != worker && *skipped < MAX_SKIPS => *next,
            _ => return head,
        };
        for _ in 1..LOOKAHEAD {
            let Some(Slot::Waiting {
                worker: w, next: n, ..
            }) = self.slots.get(next)
            else {
                break;
            };
            if *w == worker {
                if let Some(Slot::Waiting { skipped, .. }) = self.slots.get_mut(head) {
                    *skipped += 1;
                }
                return next;
            }
            next = *n;
        }
        head
    }

    /// Unlinks a waiting entry (leaving it `Granted` until freed or overwritten) and returns its
    /// waker; `None` if the entry is not waiting.
    fn unlink(&mut self, index: usize) -> Option<Waker> {
        let slot = self.slots.get_mut(index)?;
        let (waker, prev, next) = match std::mem::replace(slot, Slot::Granted) {
            Slot::Waiting {
                waker, prev, next, ..
            } => (waker, prev, next),
            other => {
                *slot = other;
                return None;
            }
        };
        match self.slots.get_mut(prev) {
            Some(Slot::Waiting { next: n, .. }) => *n = next,
            _ => self.head = next,
        }
        match self.slots.get_mut(next) {
            Some(Slot::Waiting { prev: p, .. }) => *p = prev,
            _ => self.tail = prev,
        }
        self.len = self.len.saturating_sub(1);
        Some(waker)
    }

    /// Returns an unlinked entry to the free list; drops the storage when nothing is occupied.
    fn free(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if matches!(slot, Slot::Vacant { .. }) {
            return;
        }
        *slot = Slot::Vacant {
            next_free: self.free_head,
        };
        self.free_head = index;
        self.occupied = self.occupied.saturating_sub(1);
        if self.occupied == 0 {
            self.slots.clear();
            if self.slots.capacity() > 64 {
                self.slots.shrink_to_fit();
            }
            self.free_head = NIL;
            self.head = NIL;
            self.tail = NIL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts how often it was woken.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A manually polled acquire with its own counting waker.
    struct Probe<'a> {
        future: Pin<Box<Acquire<'a>>>,
        count: Arc<CountingWaker>,
        waker: Waker,
    }

    impl<'a> Probe<'a> {
        fn new(b: &'a Breaker) -> Self {
            let count = Arc::new(CountingWaker::default());
            let waker = Waker::from(count.clone());
            Probe {
                future: Box::pin(b.acquire()),
                count,
                waker,
            }
        }
        fn poll(&mut self) -> Poll<Result<(), QueueFull>> {
            let mut cx = Context::from_waker(&self.waker);
            self.future.as_mut().poll(&mut cx)
        }
        fn wakes(&self) -> usize {
            self.count.0.load(SeqCst)
        }
    }

    fn breaker(q: usize, m: u32, c0: u32) -> Breaker {
        Breaker::new(BreakerParams {
            queue_depth: q,
            max_concurrency: m,
            initial_capacity: c0,
            max_waiting: None,
        })
    }

    #[test]
    fn try_reserve_respects_capacity_and_releases() {
        let b = Breaker::new(BreakerParams::pod(2));
        assert_eq!(b.capacity(), 2);
        let p1 = b.try_permit().expect("first");
        let p2 = b.try_permit().expect("second");
        assert!(b.try_permit().is_none(), "cc reached");
        assert_eq!((b.in_flight(), b.pending()), (2, 2));
        drop(p1);
        assert!(b.try_permit().is_some());
        drop(p2);
        assert_eq!((b.in_flight(), b.pending()), (0, 0));
    }

    #[test]
    fn pending_limit_is_q_plus_m() {
        let b = breaker(1, 1, 1);
        let mut running = Probe::new(&b);
        assert!(matches!(running.poll(), Poll::Ready(Ok(()))));
        let mut queued = Probe::new(&b);
        assert!(queued.poll().is_pending());
        let mut refused = Probe::new(&b);
        assert!(matches!(refused.poll(), Poll::Ready(Err(QueueFull))));
        assert_eq!(QueueFull.to_string(), "pending request queue full");
        drop(queued);
        assert_eq!(b.pending(), 1);
        b.release();
        assert_eq!((b.in_flight(), b.pending()), (0, 0));
    }

    #[test]
    fn max_waiting_caps_the_queue_not_the_running() {
        let b = Breaker::new(BreakerParams::revision(Some(1)));
        b.set_capacity(2);
        let mut r1 = Probe::new(&b);
        let mut r2 = Probe::new(&b);
        assert!(r1.poll().is_ready() && r2.poll().is_ready());
        let mut w1 = Probe::new(&b);
        assert!(w1.poll().is_pending());
        let mut w2 = Probe::new(&b);
        assert!(matches!(w2.poll(), Poll::Ready(Err(QueueFull))));
        assert_eq!((b.pending(), b.waiting()), (3, 1));
        b.release();
        assert!(matches!(w1.poll(), Poll::Ready(Ok(()))));
        b.release();
        b.release();
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (0, 0, 0));
    }

    #[test]
    fn revision_breaker_starts_closed_and_is_effectively_unbounded() {
        let b = Breaker::new(BreakerParams::revision(None));
        assert_eq!(b.capacity(), 0);
        assert_eq!(b.max_pending, 10_000 + MAX_CAPACITY as usize);
        b.set_capacity(u64::MAX);
        assert_eq!(b.capacity(), MAX_CAPACITY, "clamped to M");
    }

    #[test]
    fn growth_by_k_wakes_exactly_k_waiters_in_fifo_order() {
        let b = Breaker::new(BreakerParams::revision(None));
        let mut probes: Vec<Probe> = (0..5).map(|_| Probe::new(&b)).collect();
        for p in &mut probes {
            assert!(p.poll().is_pending());
        }
        b.set_capacity(3);
        let wakes: Vec<usize> = probes.iter().map(Probe::wakes).collect();
        assert_eq!(wakes, vec![1, 1, 1, 0, 0]);
        for p in probes.iter_mut().take(3) {
            assert!(matches!(p.poll(), Poll::Ready(Ok(()))));
        }
        assert!(probes[3].poll().is_pending() && probes[4].poll().is_pending());
        assert_eq!((b.in_flight(), b.waiting()), (3, 2));
        // Same capacity again: nobody woken.
        b.set_capacity(3);
        assert_eq!(probes[3].wakes() + probes[4].wakes(), 0);
        // A release wakes exactly one.
        b.release();
        assert_eq!((probes[3].wakes(), probes[4].wakes()), (1, 0));
        assert!(probes[3].poll().is_ready());
        for _ in 0..3 {
            b.release();
        }
        assert_eq!(probes[4].wakes(), 1);
        assert!(probes[4].poll().is_ready());
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (0, 0, 0));
    }

    #[test]
    fn shrinking_below_in_flight_evicts_nobody_and_wakes_nobody() {
        let b = breaker(10, 10, 2);
        assert!(b.try_reserve() && b.try_reserve());
        let mut w1 = Probe::new(&b);
        let mut w2 = Probe::new(&b);
        assert!(w1.poll().is_pending() && w2.poll().is_pending());
        b.set_capacity(1);
        assert_eq!((b.in_flight(), b.capacity()), (2, 1));
        b.release(); // 1 in flight, capacity 1: still full.
        assert_eq!(w1.wakes() + w2.wakes(), 0);
        b.release(); // 0 in flight: one slot.
        assert_eq!((w1.wakes(), w2.wakes()), (1, 0));
        assert!(w1.poll().is_ready() && w2.poll().is_pending());
        assert_eq!(b.in_flight(), 1);
        b.set_capacity(2);
        assert_eq!(w2.wakes(), 1);
        assert!(w2.poll().is_ready());
        b.release();
        b.release();
        assert_eq!((b.in_flight(), b.pending()), (0, 0));
    }

    #[test]
    fn cancelled_granted_waiter_passes_its_wake_up_on() {
        let b = breaker(10, 10, 1);
        assert!(b.try_reserve());
        let mut a = Probe::new(&b);
        let mut c = Probe::new(&b);
        assert!(a.poll().is_pending() && c.poll().is_pending());
        b.release();
        assert_eq!((a.wakes(), c.wakes()), (1, 0), "slot handed to the head");
        drop(a); // granted but never polled again
        assert_eq!(c.wakes(), 1, "wake-up passed on");
        assert!(matches!(c.poll(), Poll::Ready(Ok(()))));
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (1, 1, 0));
        b.release();
        assert_eq!((b.in_flight(), b.pending()), (0, 0));
    }

    #[test]
    fn cancelled_waiting_waiter_leaves_the_queue() {
        let b = breaker(10, 10, 0);
        let mut ws: Vec<Probe> = (0..3).map(|_| Probe::new(&b)).collect();
        for w in &mut ws {
            assert!(w.poll().is_pending());
        }
        let middle = ws.remove(1);
        drop(middle);
        assert_eq!((b.waiting(), b.pending()), (2, 2));
        b.set_capacity(1);
        assert_eq!((ws[0].wakes(), ws[1].wakes()), (1, 0));
        drop(ws.remove(0)); // granted, dropped: passes to the last one
        assert_eq!(ws[0].wakes(), 1);
        assert!(ws[0].poll().is_ready());
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (0, 0, 0));
        assert!(b.lock().slots.is_empty(), "slab storage released");
    }

    #[test]
    fn repolling_with_a_new_waker_replaces_it() {
        let b = breaker(10, 10, 0);
        let mut w = Probe::new(&b);
        assert!(w.poll().is_pending());
        let other = Arc::new(CountingWaker::default());
        let other_waker = Waker::from(other.clone());
        let mut cx = Context::from_waker(&other_waker);
        assert!(w.future.as_mut().poll(&mut cx).is_pending());
        b.set_capacity(1);
        assert_eq!((w.wakes(), other.0.load(SeqCst)), (0, 1));
        assert!(w.poll().is_ready());
        b.release();
    }

    #[test]
    fn many_waiters_are_granted_across_batches() {
        let b = breaker(100, 100, 0);
        let mut ws: Vec<Probe> = (0..40).map(|_| Probe::new(&b)).collect();
        for w in &mut ws {
            assert!(w.poll().is_pending());
        }
        b.set_capacity(37);
        let woken = ws.iter().filter(|w| w.wakes() == 1).count();
        assert_eq!(woken, 37);
        assert!(ws.iter().take(37).all(|w| w.wakes() == 1));
        assert_eq!(b.in_flight(), 37);
    }

    /// Queues one waiter per entry of `workers`, each pushed from that worker, behind a breaker
    /// of capacity 1 whose slot is held; returns the breaker's waiters in queue order.
    fn queued_on<'a>(b: &'a Breaker, workers: &[u32]) -> Vec<Probe<'a>> {
        assert!(b.try_reserve(), "the held slot");
        workers
            .iter()
            .map(|&worker| {
                crate::worker::enter(worker);
                let mut w = Probe::new(b);
                assert!(w.poll().is_pending());
                w
            })
            .collect()
    }

    /// Frees the held slot from `worker` and returns which waiter got it; that waiter then holds
    /// the slot.
    fn release_from(b: &Breaker, ws: &mut [Probe<'_>], worker: u32) -> usize {
        crate::worker::enter(worker);
        let before: Vec<usize> = ws.iter().map(Probe::wakes).collect();
        b.release();
        let woken: Vec<usize> = (0..ws.len())
            .filter(|&i| ws[i].wakes() > before[i])
            .collect();
        assert_eq!(woken.len(), 1, "one waiter woken per release");
        assert!(ws[woken[0]].poll().is_ready());
        woken[0]
    }

    #[test]
    fn a_freed_slot_goes_to_a_waiter_of_the_same_worker_first() {
        let b = breaker(10, 1, 1);
        let mut ws = queued_on(&b, &[1, 0, 0, 1]);
        assert_eq!(release_from(&b, &mut ws, 0), 1, "worker 0's first waiter");
        assert_eq!(release_from(&b, &mut ws, 0), 2);
        assert_eq!(
            release_from(&b, &mut ws, 0),
            0,
            "none of worker 0 left: the head"
        );
        assert_eq!(release_from(&b, &mut ws, 1), 3);
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (0, 0, 0));
    }

    #[test]
    fn a_head_is_passed_over_at_most_max_skips_times() {
        let skips = usize::from(MAX_SKIPS);
        // The head on worker 1, then more of worker 0's waiters than it may be passed over for.
        let mut workers = vec![1];
        workers.resize(skips + 3, 0);
        let b = breaker(20, 1, 1);
        let mut ws = queued_on(&b, &workers);
        let order: Vec<usize> = (0..workers.len())
            .map(|_| release_from(&b, &mut ws, 0))
            .collect();
        assert_eq!(order[skips], 0, "the head after {skips} skips: {order:?}");
        let mut rest: Vec<usize> = order.iter().copied().filter(|&i| i != 0).collect();
        let sorted = {
            let mut v = rest.clone();
            v.sort_unstable();
            v
        };
        assert_eq!(rest, sorted, "FIFO among one worker's waiters: {order:?}");
        rest.dedup();
        assert_eq!(rest.len(), workers.len() - 1);
        b.release();
    }

    #[test]
    fn only_the_first_waiters_are_looked_at() {
        let b = breaker(10, 1, 1);
        let mut far = vec![1; LOOKAHEAD];
        far.push(0);
        let mut ws = queued_on(&b, &far);
        assert_eq!(
            release_from(&b, &mut ws, 0),
            0,
            "worker 0's waiter is beyond the lookahead"
        );
        assert_eq!(release_from(&b, &mut ws, 0), LOOKAHEAD, "now within it");
        for _ in 1..LOOKAHEAD {
            release_from(&b, &mut ws, 0);
        }
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (0, 0, 0));
    }

    #[test]
    fn outside_the_workers_the_order_is_fifo() {
        let b = breaker(10, 1, 1);
        let no = crate::worker::NO_WORKER;
        let mut ws = queued_on(&b, &[no, no, no]);
        let order: Vec<usize> = (0..3).map(|_| release_from(&b, &mut ws, no)).collect();
        assert_eq!(order, [0, 1, 2]);
        b.release();
    }

    #[test]
    fn enter_runs_waits_or_refuses_and_a_dropped_wait_leaks_nothing() {
        let b = Breaker::new(BreakerParams::container_concurrency(1));
        assert_eq!((b.capacity(), b.max_pending), (1, 11));
        let Entry::Run(running) = b.enter() else {
            panic!("a free slot runs")
        };
        let mut waits: Vec<Acquire> = (0..10)
            .map(|_| match b.enter() {
                Entry::Wait(wait) => wait,
                other => panic!("queued, not {other:?}"),
            })
            .collect();
        assert!(matches!(b.enter(), Entry::Full));
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (11, 1, 0));
        // Admitted but never polled: dropping it gives the `pending` entry back.
        drop(waits.pop());
        assert_eq!(b.pending(), 10);
        // Polled: queued, FIFO, and handed the slot on release.
        let count = Arc::new(CountingWaker::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for wait in &mut waits {
            assert!(wait.poll_permit(&mut cx).is_pending());
        }
        assert_eq!(b.waiting(), 9);
        drop(running);
        assert_eq!(count.0.load(SeqCst), 1, "exactly one woken");
        let Poll::Ready(Ok(permit)) = waits[0].poll_permit(&mut cx) else {
            panic!("the head has the slot")
        };
        assert!(waits[1].poll_permit(&mut cx).is_pending());
        drop(waits);
        assert_eq!((b.pending(), b.in_flight(), b.waiting()), (1, 1, 0));
        drop(permit);
        assert_eq!((b.pending(), b.in_flight()), (0, 0));
    }

    #[test]
    fn release_on_an_empty_closed_breaker_does_not_underflow() {
        let b = breaker(1, 1, 0);
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.capacity()), (0, 0, 0));
    }

    #[test]
    fn release_without_slot_does_not_underflow() {
        let b = breaker(1, 1, 1);
        b.release();
        assert_eq!((b.in_flight(), b.pending(), b.capacity()), (0, 0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acquire_never_exceeds_capacity() {
        let b = Arc::new(breaker(10_000, 4, 4));
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (b, running, max) = (b.clone(), running.clone(), max.clone());
                tokio::spawn(async move {
                    let permit = b.permit().await.expect("admitted");
                    let now = running.fetch_add(1, SeqCst) + 1;
                    max.fetch_max(now, SeqCst);
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    running.fetch_sub(1, SeqCst);
                    drop(permit);
                })
            })
            .collect();
        // Capacity changes while requests flow.
        for c in [1, 3, 2, 4] {
            b.set_capacity(c);
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert!(max.load(SeqCst) <= 4);
        assert_eq!((b.in_flight(), b.pending(), b.waiting()), (0, 0, 0));
    }
}
