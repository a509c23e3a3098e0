//! Per-revision concurrency accounting and the 1 s report (spec §6.1, §6.2).
//!
//! Each revision seen by this activator has an entry holding a lock-free
//! [`RequestStats`] window accumulator, the `firstRequest` flag and a counter of the requests
//! holding the entry. The hot path for a known revision takes one shard read lock of a
//! [`DashMap`] and bumps two atomics; only the first request for a revision takes a shard write
//! lock (and sends the poke).
//!
//! The entry counter packs two numbers in one `u64`: the low 32 bits count the requests in flight
//! (`refs`), the high 32 bits count (wrapping) the arrivals. Arrivals bump it while holding a shard
//! lock, and the report deletes an idle entry only under the shard write lock if the counter is
//! unchanged since before the window was cut and no request holds the entry — so neither a request
//! between entry creation and its "in" event (§11 item 26) nor one that came and went while the
//! report was being cut is lost.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use knative_common::stats::{OwnedInFlight, RequestStats, Stat, WireStatMessage, WireStatMessages};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};

use super::RevisionId;

/// The report period (§6.1).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// One arrival: `refs + 1` and `arrivals + 1`.
const ARRIVAL: u64 = (1 << 32) | 1;
const REFS_MASK: u64 = 0xffff_ffff;

type Sink = Box<dyn Fn(WireStatMessages) + Send + Sync>;
type Observer = Box<dyn Fn(&RevisionId, f64) + Send + Sync>;

/// Accounting for one revision.
#[derive(Debug)]
struct RevisionStats {
    /// The revision (what a thread's cached entry is compared with).
    id: RevisionId,
    stats: RequestStats,
    /// 1 until the first report after creation, which subtracts the poke.
    first_request: AtomicBool,
    /// `arrivals << 32 | refs`, see the module documentation.
    state: AtomicU64,
}

impl RevisionStats {
    fn new(id: RevisionId) -> Self {
        RevisionStats {
            id,
            stats: RequestStats::new(),
            first_request: AtomicBool::new(true),
            state: AtomicU64::new(ARRIVAL),
        }
    }
}

/// A request's reference on its entry: reads as the entry's stats, and decrements `refs` when
/// dropped (after the "out" event: [`OwnedInFlight`] records it before dropping its owner).
struct Held(Arc<RevisionStats>);

impl std::ops::Deref for Held {
    type Target = RequestStats;

    fn deref(&self) -> &RequestStats {
        &self.0.stats
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Guard for one request counted by [`ConcurrencyReporter::handle_in`]; dropping it records the
/// request's "out" event.
///
/// Keep it for the whole request: throttler wait, proxying and streaming of the response body
/// (§2.10). It is `Send + Sync + 'static`, so it can be moved into a response body. It holds the
/// entry's `Arc` itself (no allocation per request).
pub struct InFlightReport {
    _in_flight: OwnedInFlight<Held>,
}

impl InFlightReport {
    /// Records the "in" event on an entry whose `refs` already counts this request.
    fn new(entry: Arc<RevisionStats>) -> Self {
        InFlightReport {
            _in_flight: RequestStats::request_in_owned(Held(entry), false),
        }
    }
}

impl std::fmt::Debug for InFlightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightReport").finish_non_exhaustive()
    }
}

/// Per-revision concurrency reporter (§6.1); see the module documentation.
///
/// Batches go to the sink given to [`ConcurrencyReporter::new`]: the poke batch synchronously
/// from [`handle_in`](Self::handle_in), the periodic batch from [`tick`](Self::tick). The sink must
/// not block (e.g. [`AutoscalerConnection::send`](super::AutoscalerConnection::send) or an
/// unbounded channel).
pub struct ConcurrencyReporter {
    pod_name: String,
    sink: Sink,
    observer: Option<Observer>,
    entries: DashMap<RevisionId, Arc<RevisionStats>, crate::FastHash>,
    /// This reporter among all (a thread's cached entry names its reporter).
    reporter: u64,
    /// Bumped, under the shard's write lock, before an entry is tested for deletion: an entry
    /// cached at an older generation is looked up again (see [`ConcurrencyReporter::cached`]).
    generation: AtomicU64,
}

/// Source of [`ConcurrencyReporter::reporter`].
static REPORTERS: AtomicU64 = AtomicU64::new(0);

/// The entry this thread's requests found last (see [`ConcurrencyReporter::cached`]).
struct LastEntry {
    reporter: u64,
    /// The reporter's generation when it was found (under its shard's read lock).
    generation: u64,
    entry: Arc<RevisionStats>,
}

thread_local! {
    static LAST_ENTRY: RefCell<Option<LastEntry>> = const { RefCell::new(None) };
}

impl std::fmt::Debug for ConcurrencyReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyReporter")
            .field("pod_name", &self.pod_name)
            .field("revisions", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl ConcurrencyReporter {
    /// A reporter whose stats carry `pod_name` (`POD_NAME`) and whose batches go to `sink`.
    pub fn new(
        pod_name: impl Into<String>,
        sink: impl Fn(WireStatMessages) + Send + Sync + 'static,
    ) -> Self {
        ConcurrencyReporter {
            pod_name: pod_name.into(),
            sink: Box::new(sink),
            observer: None,
            entries: DashMap::default(),
            reporter: REPORTERS.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// A reporter sending its batches on `tx` (batches are dropped once the receiver is gone).
    pub fn with_channel(
        pod_name: impl Into<String>,
        tx: UnboundedSender<WireStatMessages>,
    ) -> Self {
        Self::new(pod_name, move |batch| {
            let _ = tx.send(batch);
        })
    }

    /// Calls `observer(revision, adjusted_concurrency)` for every message of every tick: the hook
    /// for the `kn.revision.request.concurrency` gauge (§6.1, §7.1). The observer looks up the
    /// revision's labels itself and skips revisions no longer in the cache.
    pub fn with_concurrency_observer(
        mut self,
        observer: impl Fn(&RevisionId, f64) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The pod name put in every stat.
    pub fn pod_name(&self) -> &str {
        &self.pod_name
    }

    /// Number of revisions currently tracked.
    pub fn tracked_revisions(&self) -> usize {
        self.entries.len()
    }

    /// Counts a request for `rev` ("in" event now); the guard records the "out" event.
    ///
    /// The first request for a revision (or the first after an idle window deleted its entry)
    /// sends the poke batch `{pod_name, average_concurrent_requests: 1, request_count: 1}`
    /// before returning.
    pub fn handle_in(&self, rev: &RevisionId) -> InFlightReport {
        let (entry, poke) = self.get_or_create(rev);
        if let Some(poke) = poke {
            (self.sink)(poke);
        }
        InFlightReport::new(entry)
    }

    /// First half of [`handle_in`](Self::handle_in): finds or creates the entry and takes a
    /// reference on it; returns the poke batch if the entry was created.
    fn get_or_create(&self, rev: &RevisionId) -> (Arc<RevisionStats>, Option<WireStatMessages>) {
        if let Some(entry) = self.cached(rev) {
            return (entry, None);
        }
        // Fast path. `map` consumes the shard guard, so no lock is held past this statement.
        let existing = self.entries.get(rev).map(|entry| {
            entry.state.fetch_add(ARRIVAL, Ordering::AcqRel);
            // Only bumped under a shard's write lock: this entry was in the map at it.
            (
                Arc::clone(entry.value()),
                self.generation.load(Ordering::Relaxed),
            )
        });
        if let Some((entry, generation)) = existing {
            let _ = LAST_ENTRY.try_with(|last| {
                *last.borrow_mut() = Some(LastEntry {
                    reporter: self.reporter,
                    generation,
                    entry: Arc::clone(&entry),
                });
            });
            return (entry, None);
        }
        let created = match self.entries.entry(rev.clone()) {
            MapEntry::Occupied(o) => {
                o.get().state.fetch_add(ARRIVAL, Ordering::AcqRel);
                return (Arc::clone(o.get()), None);
            }
            MapEntry::Vacant(v) => {
                let entry = Arc::new(RevisionStats::new(rev.clone()));
                v.insert(Arc::clone(&entry));
                entry
            }
        };
        let poke = WireStatMessages {
            messages: vec![self.message(rev, 1.0, 1.0)],
        };
        (created, Some(poke))
    }

    /// The entry this thread's requests found last, with this arrival counted on it, when it is
    /// `rev`'s and no deletion test has happened since (no lock, no hashing).
    ///
    /// Why the arrival is then never lost: the entry was in the map at the cached generation, and
    /// [`report`](Self::report) bumps the generation (under the shard's write lock) before it
    /// tests an entry's counter for deletion. This adds the arrival to the counter, then, after a
    /// SeqCst fence, reads the generation; the test bumps the generation, then, after a SeqCst
    /// fence, reads the counter. Of two SeqCst fences one comes first: if this one does, the
    /// test sees the arrival (the counter's arrivals never go back) and keeps the entry; if the
    /// test's does, this sees the new generation, takes the arrival back and looks the revision
    /// up in the map.
    fn cached(&self, rev: &RevisionId) -> Option<Arc<RevisionStats>> {
        LAST_ENTRY
            .try_with(|last| {
                let last = last.borrow();
                let last = last.as_ref()?;
                if last.reporter != self.reporter
                    || last.generation != self.generation.load(Ordering::Relaxed)
                    || last.entry.id != *rev
                {
                    return None;
                }
                last.entry.state.fetch_add(ARRIVAL, Ordering::AcqRel);
                fence(Ordering::SeqCst);
                if self.generation.load(Ordering::Relaxed) != last.generation {
                    last.entry.state.fetch_sub(ARRIVAL, Ordering::AcqRel);
                    return None;
                }
                Some(Arc::clone(&last.entry))
            })
            .ok()
            .flatten()
    }

    fn message(&self, rev: &RevisionId, concurrency: f64, count: f64) -> WireStatMessage {
        WireStatMessage {
            namespace: rev.namespace.clone(),
            name: rev.name.clone(),
            stat: Some(Stat {
                pod_name: self.pod_name.clone(),
                average_concurrent_requests: concurrency,
                request_count: count,
                ..Stat::default()
            }),
        }
    }

    /// Cuts the window of every revision and returns one message each (§6.1), without sending.
    ///
    /// `average_concurrent_requests = max(avg − firstRequest, 0)`,
    /// `request_count = count − firstRequest`; entries whose raw average concurrency was 0 are
    /// deleted afterwards unless a request holds them or arrived meanwhile.
    pub fn report(&self) -> Vec<WireStatMessage> {
        // Snapshot the entries so no shard lock is held while cutting windows.
        let entries: Vec<(RevisionId, Arc<RevisionStats>)> = self
            .entries
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        let mut msgs = Vec::with_capacity(entries.len());
        for (rev, entry) in entries {
            let before = entry.state.load(Ordering::Acquire);
            let report = entry.stats.report();
            let first = if entry.first_request.swap(false, Ordering::AcqRel) {
                1.0
            } else {
                0.0
            };
            let concurrency = (report.average_concurrency - first).max(0.0);
            let count = report.request_count - first;
            msgs.push(self.message(&rev, concurrency, count));
            if report.average_concurrency == 0.0 && before & REFS_MASK == 0 {
                self.entries.remove_if(&rev, |_, current| {
                    // Cached entries are looked up again from now on (see `cached`).
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    Arc::ptr_eq(current, &entry) && current.state.load(Ordering::Acquire) == before
                });
            }
        }
        msgs
    }

    /// One reporting tick: [`report`](Self::report), feed the observer, and send the messages as
    /// one batch (nothing is sent when no revision is tracked).
    pub fn tick(&self) {
        let messages = self.report();
        if let Some(observer) = &self.observer {
            for msg in &messages {
                let concurrency = msg
                    .stat
                    .as_ref()
                    .map_or(0.0, |s| s.average_concurrent_requests);
                observer(
                    &RevisionId::new(msg.namespace.clone(), msg.name.clone()),
                    concurrency,
                );
            }
        }
        if !messages.is_empty() {
            (self.sink)(WireStatMessages { messages });
        }
    }

    /// Ticks every `period` (first tick one period from now; late ticks are skipped, like Go's
    /// ticker). Never returns: spawn it and abort the task (or drop the future) to stop.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let period = period.clamp(
            Duration::from_millis(1),
            Duration::from_secs(365 * 24 * 3600),
        );
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            self.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::time::advance;

    const POD: &str = "the-best-activator";

    fn rev(name: &str) -> RevisionId {
        RevisionId::new("test", name)
    }

    fn reporter() -> (
        Arc<ConcurrencyReporter>,
        UnboundedReceiver<WireStatMessages>,
    ) {
        let (tx, rx) = unbounded_channel();
        (Arc::new(ConcurrencyReporter::with_channel(POD, tx)), rx)
    }

    /// `(name, concurrency, count)` of one message.
    type Flat = (String, f64, f64);

    fn flat(msg: &WireStatMessage) -> Flat {
        let stat = msg.stat.as_ref().expect("stat present");
        assert_eq!(stat.pod_name, POD);
        assert_eq!(msg.namespace, "test");
        assert_eq!(
            (
                stat.average_proxied_concurrent_requests,
                stat.proxied_request_count,
                stat.process_uptime,
                stat.timestamp
            ),
            (0.0, 0.0, 0.0, 0)
        );
        (
            msg.name.clone(),
            stat.average_concurrent_requests,
            stat.request_count,
        )
    }

    /// All batches received so far, each flattened.
    fn batches(rx: &mut UnboundedReceiver<WireStatMessages>) -> Vec<Vec<Flat>> {
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.push(batch.messages.iter().map(flat).collect());
        }
        out
    }

    /// All messages received so far, sorted by revision name (stable), like the Go test.
    fn sorted_messages(rx: &mut UnboundedReceiver<WireStatMessages>) -> Vec<Flat> {
        let mut all: Vec<Flat> = batches(rx).into_iter().flatten().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn m(name: &str, c: f64, n: f64) -> Flat {
        (name.to_owned(), c, n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // §11 item 18.
    #[tokio::test(start_paused = true)]
    async fn scale_from_zero_pokes_each_revision_immediately() {
        let (cr, mut rx) = reporter();
        let _a = cr.handle_in(&rev("rev1"));
        let _b = cr.handle_in(&rev("rev2"));
        assert_eq!(
            batches(&mut rx),
            vec![vec![m("rev1", 1.0, 1.0)], vec![m("rev2", 1.0, 1.0)]]
        );
    }

    // §11 item 19.
    #[tokio::test(start_paused = true)]
    async fn in_and_out() {
        let (cr, mut rx) = reporter();
        let r = cr.handle_in(&rev("rev1"));
        advance(ms(1)).await;
        drop(r);
        let r = cr.handle_in(&rev("rev1"));
        advance(ms(1)).await;
        drop(r);
        cr.tick();
        assert_eq!(
            batches(&mut rx),
            vec![vec![m("rev1", 1.0, 1.0)], vec![m("rev1", 0.0, 1.0)]]
        );
    }

    // §11 item 20.
    #[tokio::test(start_paused = true)]
    async fn scale_to_two() {
        let (cr, mut rx) = reporter();
        let _a = cr.handle_in(&rev("rev1"));
        let _b = cr.handle_in(&rev("rev1"));
        advance(ms(1)).await;
        cr.tick();
        advance(ms(1)).await;
        cr.tick();
        assert_eq!(
            batches(&mut rx),
            vec![
                vec![m("rev1", 1.0, 1.0)],
                vec![m("rev1", 1.0, 1.0)],
                vec![m("rev1", 2.0, 0.0)]
            ]
        );
    }

    // §11 item 21.
    #[tokio::test(start_paused = true)]
    async fn scale_from_zero_after_idle_tick_pokes_again() {
        let (cr, mut rx) = reporter();
        let r = cr.handle_in(&rev("rev1"));
        advance(ms(1)).await;
        drop(r);
        cr.tick(); // a zero stat, but the window was not idle: the entry stays
        assert_eq!(cr.tracked_revisions(), 1);
        advance(ms(1)).await;
        cr.tick(); // nothing happened: the entry goes
        assert_eq!(cr.tracked_revisions(), 0);
        advance(ms(1)).await;
        let _r = cr.handle_in(&rev("rev1"));
        assert_eq!(
            batches(&mut rx),
            vec![
                vec![m("rev1", 1.0, 1.0)],
                vec![m("rev1", 0.0, 0.0)],
                vec![m("rev1", 0.0, 0.0)],
                vec![m("rev1", 1.0, 1.0)]
            ]
        );
    }

    // §11 item 22.
    #[tokio::test(start_paused = true)]
    async fn multiple_revisions_one_tick_one_batch() {
        let (cr, mut rx) = reporter();
        let _guards: Vec<_> = ["rev1", "rev2", "rev3"]
            .iter()
            .map(|n| cr.handle_in(&rev(n)))
            .collect();
        cr.tick();
        let got = batches(&mut rx);
        assert_eq!(got.len(), 4, "three pokes and one tick batch: {got:?}");
        assert_eq!(got[3].len(), 3);
        let mut tick = got[3].clone();
        tick.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tick,
            vec![
                m("rev1", 0.0, 0.0),
                m("rev2", 0.0, 0.0),
                m("rev3", 0.0, 0.0)
            ]
        );
        // In flight, so not deleted despite the zero-length window.
        assert_eq!(cr.tracked_revisions(), 3);
    }

    // §11 item 23.
    #[tokio::test(start_paused = true)]
    async fn interleaved_requests() {
        let (cr, mut rx) = reporter();
        let a = cr.handle_in(&rev("rev1"));
        let b = cr.handle_in(&rev("rev1"));
        advance(ms(1)).await;
        drop(b);
        advance(ms(1)).await;
        drop(a);
        cr.tick();
        assert_eq!(
            sorted_messages(&mut rx),
            vec![m("rev1", 1.0, 1.0), m("rev1", 0.5, 1.0)]
        );
    }

    // §11 item 24.
    #[tokio::test(start_paused = true)]
    async fn run_loop_reports_every_period() {
        let (cr, mut rx) = reporter();
        let task = tokio::spawn(Arc::clone(&cr).run(REPORT_INTERVAL));
        tokio::task::yield_now().await;
        let _guards: Vec<_> = (0..3).map(|_| cr.handle_in(&rev("rev1"))).collect();
        let poke = rx.recv().await.expect("poke");
        assert_eq!(
            poke.messages.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 1.0, 1.0)]
        );
        let start = Instant::now();
        let report = rx.recv().await.expect("report");
        assert_eq!(start.elapsed(), REPORT_INTERVAL);
        assert_eq!(
            report.messages.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 2.0, 2.0)]
        );
        let report = rx.recv().await.expect("second report");
        assert_eq!(
            report.messages.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 3.0, 0.0)]
        );
        task.abort();
    }

    // §11 item 25.
    #[tokio::test(start_paused = true)]
    async fn handler_path_completed_requests() {
        let (cr, mut rx) = reporter();
        for _ in 0..3 {
            drop(cr.handle_in(&rev("rev1")));
        }
        advance(REPORT_INTERVAL).await;
        cr.tick();
        assert_eq!(
            batches(&mut rx),
            vec![vec![m("rev1", 1.0, 1.0)], vec![m("rev1", 0.0, 2.0)]]
        );
    }

    // §11 item 26.
    #[tokio::test(start_paused = true)]
    async fn report_between_creation_and_in_event_keeps_the_entry() {
        let (cr, mut rx) = reporter();
        // 1. Request in, first half: the entry exists (refs = 1) but no "in" event yet.
        let (entry, poke) = cr.get_or_create(&rev("rev1"));
        assert!(poke.is_some());
        // 2. A report now must not delete the entry.
        advance(Duration::from_secs(1)).await;
        let racing = cr.report();
        assert_eq!(
            racing.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 0.0, -1.0)]
        );
        assert_eq!(cr.tracked_revisions(), 1);
        // 3. Second half: the "in" event (Go clamps its earlier timestamp to the window start).
        let guard = InFlightReport::new(entry);
        // 4. Request out a second later.
        advance(Duration::from_secs(1)).await;
        drop(guard);
        // 5. Not a negative report.
        let got = cr.report();
        assert_eq!(
            got.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 1.0, 1.0)]
        );
        // 6. It keeps working: request 2.5 s – 3 s, report at 3 s.
        advance(ms(500)).await;
        let guard = cr.handle_in(&rev("rev1"));
        advance(ms(500)).await;
        drop(guard);
        let got = cr.report();
        assert_eq!(
            got.iter().map(flat).collect::<Vec<_>>(),
            vec![m("rev1", 0.5, 1.0)]
        );
        // Only the original poke was ever sent: the entry was never recreated.
        assert!(batches(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn arrival_during_report_prevents_deletion() {
        let (cr, mut rx) = reporter();
        drop(cr.handle_in(&rev("rev1")));
        advance(REPORT_INTERVAL).await;
        cr.tick(); // window had no concurrency time and the entry is idle: deleted
        assert_eq!(cr.tracked_revisions(), 0);
        drop(cr.handle_in(&rev("rev1"))); // pokes again
                                          // Simulate the gap between cutting a window and deleting: a request comes and goes
                                          // after the state was sampled. The changed counter keeps the entry.
        let entry = Arc::clone(cr.entries.get(&rev("rev1")).unwrap().value());
        let before = entry.state.load(Ordering::Acquire);
        drop(cr.handle_in(&rev("rev1")));
        cr.entries.remove_if(&rev("rev1"), |_, current| {
            current.state.load(Ordering::Acquire) == before
        });
        assert_eq!(cr.tracked_revisions(), 1);
        assert_eq!(batches(&mut rx).len(), 3);
    }

    // §11 item 27.
    #[tokio::test(start_paused = true)]
    async fn concurrency_gauge_observer() {
        let (tx, mut rx) = unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let cr = Arc::new(
            ConcurrencyReporter::with_channel(POD, tx).with_concurrency_observer(move |r, c| {
                sink.lock().unwrap().push((r.to_string(), c));
            }),
        );
        let _guards: Vec<_> = (0..4).map(|_| cr.handle_in(&rev("rev1"))).collect();
        advance(ms(1)).await;
        cr.tick();
        assert_eq!(*seen.lock().unwrap(), vec![("test/rev1".to_owned(), 3.0)]);
        advance(ms(1)).await;
        cr.tick();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("test/rev1".to_owned(), 3.0), ("test/rev1".to_owned(), 4.0)]
        );
        assert_eq!(batches(&mut rx).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_map_sends_nothing() {
        let (cr, mut rx) = reporter();
        cr.tick();
        assert!(batches(&mut rx).is_empty());
    }

    #[test]
    fn guard_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<InFlightReport>();
        check::<ConcurrencyReporter>();
    }

    /// A request counted through the thread's cached entry is counted on the entry in the map:
    /// deletions racing with it (a thread cutting windows without pause) never take an entry a
    /// request holds, and a request after a deletion gets a new entry.
    #[test]
    fn cached_entry_races_with_deletion() {
        let (tx, _rx) = unbounded_channel();
        let cr = Arc::new(ConcurrencyReporter::with_channel(POD, tx));
        let stop = Arc::new(AtomicBool::new(false));
        let cutter = {
            let (cr, stop) = (Arc::clone(&cr), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    cr.report();
                }
            })
        };
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let cr = Arc::clone(&cr);
                std::thread::spawn(move || {
                    let mut created = 0;
                    for _ in 0..20_000 {
                        let (entry, poke) = cr.get_or_create(&rev("a"));
                        created += usize::from(poke.is_some());
                        let report = InFlightReport::new(Arc::clone(&entry));
                        let current = cr.entries.get(&rev("a")).expect("deleted while held");
                        assert!(Arc::ptr_eq(current.value(), &entry));
                        drop(current);
                        drop(report);
                    }
                    created
                })
            })
            .collect();
        let created: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, Ordering::Release);
        cutter.join().unwrap();
        assert!(created >= 1);
        for e in cr.entries.iter() {
            assert_eq!(e.state.load(Ordering::Acquire) & REFS_MASK, 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_balance_out() {
        let (tx, _rx) = unbounded_channel();
        let cr = Arc::new(ConcurrencyReporter::with_channel(POD, tx));
        let ticker = {
            let cr = Arc::clone(&cr);
            tokio::spawn(async move {
                for _ in 0..50 {
                    cr.tick();
                    tokio::task::yield_now().await;
                }
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let cr = Arc::clone(&cr);
                tokio::spawn(async move {
                    for j in 0..2000 {
                        let g = cr.handle_in(&rev(&format!("rev{}", (i + j) % 3)));
                        if j % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                        drop(g);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        ticker.await.unwrap();
        for e in cr.entries.iter() {
            assert_eq!(e.state.load(Ordering::Acquire) & REFS_MASK, 0);
        }
        // Idle now: two ticks clear everything.
        cr.tick();
        cr.tick();
        assert_eq!(cr.tracked_revisions(), 0);
    }
}
