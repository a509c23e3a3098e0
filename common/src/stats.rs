//! Request accounting for the autoscaler (queue-proxy §6, activator §6.2) and its protobuf wire
//! format (`metrics.Stat`, `WireStatMessage(s)`).
//!
//! The time-weighted average concurrency over a window `[t0, t1]` is
//! `c0·(t1−t0) + Σ_in (t1−t_in) − Σ_out (t1−t_out)`, where `c0` is the concurrency at `t0`. So each
//! event only adds its timestamp and a count to a few atomics; no lock, no shared "last change"
//! timestamp. Events go into one of two banks; the reporter flips the bank, waits for the writers
//! still inside the old one (a handful of instructions), and reads it. Sums of timestamps are kept
//! modulo 2⁶⁴: the result is exact because the true integral is small.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `metrics.Stat`, as scraped from the queue-proxy's port 9090 and sent by the activator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// Pod that produced the stat.
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// Average concurrent requests over the window (all requests).
    #[prost(double, tag = "2")]
    pub average_concurrent_requests: f64,
    /// Average concurrent requests proxied by the activator.
    #[prost(double, tag = "3")]
    pub average_proxied_concurrent_requests: f64,
    /// Requests that arrived in the window, per reporting second.
    #[prost(double, tag = "4")]
    pub request_count: f64,
    /// Proxied requests that arrived in the window, per reporting second.
    #[prost(double, tag = "5")]
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    #[prost(double, tag = "6")]
    pub process_uptime: f64,
    /// Unix seconds (never set by the queue-proxy).
    #[prost(int64, tag = "7")]
    pub timestamp: i64,
}

/// One revision's stat, as the activator sends it to the autoscaler.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessage {
    /// Revision namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// Revision name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The stat.
    #[prost(message, optional, tag = "3")]
    pub stat: Option<Stat>,
}

/// A batch of [`WireStatMessage`]s (one websocket frame).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessages {
    /// The messages.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<WireStatMessage>,
}

#[derive(Default)]
struct Bank {
    writers: AtomicUsize,
    arrivals: AtomicU64,
    arrival_ns: AtomicU64,
    departures: AtomicU64,
    departure_ns: AtomicU64,
    proxied_arrivals: AtomicU64,
    proxied_arrival_ns: AtomicU64,
    proxied_departures: AtomicU64,
    proxied_departure_ns: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Snapshot {
    arrivals: u64,
    arrival_ns: u64,
    departures: u64,
    departure_ns: u64,
    proxied_arrivals: u64,
    proxied_arrival_ns: u64,
    proxied_departures: u64,
    proxied_departure_ns: u64,
}

impl Bank {
    fn take(&self) -> Snapshot {
        let t = |a: &AtomicU64| a.swap(0, Ordering::AcqRel);
        Snapshot {
            arrivals: t(&self.arrivals),
            arrival_ns: t(&self.arrival_ns),
            departures: t(&self.departures),
            departure_ns: t(&self.departure_ns),
            proxied_arrivals: t(&self.proxied_arrivals),
            proxied_arrival_ns: t(&self.proxied_arrival_ns),
            proxied_departures: t(&self.proxied_departures),
            proxied_departure_ns: t(&self.proxied_departure_ns),
        }
    }
}

/// One window's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    /// Time-weighted average concurrency.
    pub average_concurrency: f64,
    /// Time-weighted average proxied concurrency.
    pub average_proxied_concurrency: f64,
    /// Arrivals in the window.
    pub request_count: f64,
    /// Proxied arrivals in the window.
    pub proxied_request_count: f64,
}

struct ReporterState {
    window_start: u64,
    concurrency: u64,
    proxied_concurrency: u64,
}

/// Lock-free request accounting; see the module documentation.
pub struct RequestStats {
    origin: Instant,
    current: AtomicUsize,
    banks: [Bank; 2],
    reporter: Mutex<ReporterState>,
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStats").finish_non_exhaustive()
    }
}

impl Default for RequestStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Records the departure of a request when dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a RequestStats,
    proxied: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.record(false, self.proxied);
    }
}

/// [`InFlight`] that owns what keeps the stats alive (an `Arc` or a wrapper of one): records the
/// departure when dropped, then drops `owner`. For a guard that must be `'static` without a
/// self-referential allocation around the stats' owner.
#[derive(Debug)]
pub struct OwnedInFlight<O: Deref<Target = RequestStats>> {
    owner: O,
    proxied: bool,
}

impl<O: Deref<Target = RequestStats>> Drop for OwnedInFlight<O> {
    fn drop(&mut self) {
        self.owner.record(false, self.proxied);
    }
}

impl RequestStats {
    /// [`RequestStats::request_in`] on the stats `owner` points to, with a guard owning it.
    #[inline]
    pub fn request_in_owned<O: Deref<Target = RequestStats>>(
        owner: O,
        proxied: bool,
    ) -> OwnedInFlight<O> {
        owner.record(true, proxied);
        OwnedInFlight { owner, proxied }
    }

    /// Accounting starting now.
    pub fn new() -> Self {
        RequestStats {
            origin: Instant::now(),
            current: AtomicUsize::new(0),
            banks: [Bank::default(), Bank::default()],
            reporter: Mutex::new(ReporterState {
                window_start: 0,
                concurrency: 0,
                proxied_concurrency: 0,
            }),
        }
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Records an arrival; the returned guard records the departure.
    #[inline]
    pub fn request_in(&self, proxied: bool) -> InFlight<'_> {
        self.record(true, proxied);
        InFlight {
            stats: self,
            proxied,
        }
    }

    #[inline]
    fn record(&self, arrival: bool, proxied: bool) {
        loop {
            let index = self.current.load(Ordering::SeqCst);
            let bank = &self.banks[index];
            bank.writers.fetch_add(1, Ordering::SeqCst);
            if self.current.load(Ordering::SeqCst) != index {
                bank.writers.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let now = self.now_ns();
            let (count, sum, p_count, p_sum) = if arrival {
                (
                    &bank.arrivals,
                    &bank.arrival_ns,
                    &bank.proxied_arrivals,
                    &bank.proxied_arrival_ns,
                )
            } else {
                (
                    &bank.departures,
                    &bank.departure_ns,
                    &bank.proxied_departures,
                    &bank.proxied_departure_ns,
                )
            };
            count.fetch_add(1, Ordering::Relaxed);
            sum.fetch_add(now, Ordering::Relaxed);
            if proxied {
                p_count.fetch_add(1, Ordering::Relaxed);
                p_sum.fetch_add(now, Ordering::Relaxed);
            }
            bank.writers.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    }

    /// Closes the current window and returns its figures.
    pub fn report(&self) -> Report {
        let mut state = self.reporter.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.fetch_xor(1, Ordering::SeqCst);
        let bank = &self.banks[old];
        while bank.writers.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        let s = bank.take();
        let end = self.now_ns().max(state.window_start);
        let window = end - state.window_start;
        let integral = |c0: u64, n_in: u64, s_in: u64, n_out: u64, s_out: u64| -> f64 {
            let v = c0
                .wrapping_mul(window)
                .wrapping_add(n_in.wrapping_mul(end))
                .wrapping_sub(s_in)
                .wrapping_sub(n_out.wrapping_mul(end))
                .wrapping_add(s_out) as i64;
            v.max(0) as f64
        };
        let total = integral(
            state.concurrency,
            s.arrivals,
            s.arrival_ns,
            s.departures,
            s.departure_ns,
        );
        let proxied = integral(
            state.proxied_concurrency,
            s.proxied_arrivals,
            s.proxied_arrival_ns,
            s.proxied_departures,
            s.proxied_departure_ns,
        );
        let average = |x: f64| if window == 0 { 0.0 } else { x / window as f64 };
        state.concurrency = (state.concurrency + s.arrivals).saturating_sub(s.departures);
        state.proxied_concurrency =
            (state.proxied_concurrency + s.proxied_arrivals).saturating_sub(s.proxied_departures);
        state.window_start = end;
        Report {
            average_concurrency: average(total),
            average_proxied_concurrency: average(proxied),
            request_count: s.arrivals as f64,
            proxied_request_count: s.proxied_arrivals as f64,
        }
    }
}

impl Report {
    /// The `Stat` for this report over a reporting `period` (counts are divided by it,
    /// concurrencies are not).
    pub fn to_stat(&self, pod_name: &str, period: Duration, uptime: Duration) -> Stat {
        let period = period.as_secs_f64();
        Stat {
            pod_name: pod_name.to_owned(),
            average_concurrent_requests: self.average_concurrency,
            average_proxied_concurrent_requests: self.average_proxied_concurrency,
            request_count: self.request_count / period,
            proxied_request_count: self.proxied_request_count / period,
            process_uptime: uptime.as_secs_f64(),
            timestamp: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn stat_encoding_matches_the_spec_example() {
        let stat = Stat {
            pod_name: "p".into(),
            request_count: 1.0,
            ..Default::default()
        };
        assert_eq!(
            stat.encode_to_vec(),
            vec![0x0a, 0x01, 0x70, 0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]
        );
    }

    #[test]
    fn golden_upstream_body_decodes() {
        let body = [
            0x0a, 0x05, 0x70, 0x6f, 0x64, 0x2d, 0x31, 0x31, 0x34, 0xbe, 0x0e, 0x20, 0x0c, 0x40,
            0x58, 0x40,
        ];
        let stat = Stat::decode(&body[..]).unwrap();
        assert_eq!(stat.pod_name, "pod-1");
        assert!((stat.process_uptime - 97.000740065).abs() < 1e-9);
        assert_eq!(stat.encode_to_vec(), body.to_vec());
    }

    #[test]
    fn report_to_stat_divides_counts_by_the_period() {
        let r = Report {
            average_concurrency: 3.0,
            average_proxied_concurrency: 2.0,
            request_count: 39.0,
            proxied_request_count: 15.0,
        };
        let s = r.to_stat("pod", Duration::from_secs(10), Duration::ZERO);
        assert_eq!(
            (
                s.average_concurrent_requests,
                s.average_proxied_concurrent_requests
            ),
            (3.0, 2.0)
        );
        assert_eq!((s.request_count, s.proxied_request_count), (3.9, 1.5));
        let s = r.to_stat("pod", Duration::from_secs(2), Duration::ZERO);
        assert_eq!((s.request_count, s.proxied_request_count), (19.5, 7.5));
    }

    #[tokio::test(start_paused = true)]
    async fn time_weighted_concurrency() {
        let stats = RequestStats::new();
        // Two requests for the whole second, one proxied request for half of it.
        let a = stats.request_in(false);
        let b = stats.request_in(false);
        let p = stats.request_in(true);
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(p);
        tokio::time::advance(Duration::from_millis(500)).await;
        let r = stats.report();
        assert!((r.average_concurrency - 2.5).abs() < 1e-6, "{r:?}");
        assert!((r.average_proxied_concurrency - 0.5).abs() < 1e-6, "{r:?}");
        assert_eq!((r.request_count, r.proxied_request_count), (3.0, 1.0));
        // Next window: still two in flight, no arrivals.
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = stats.report();
        assert!((r.average_concurrency - 2.0).abs() < 1e-6, "{r:?}");
        assert_eq!(r.request_count, 0.0);
        drop((a, b));
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = stats.report();
        assert!(r.average_concurrency < 1e-6, "{r:?}");
    }
}
