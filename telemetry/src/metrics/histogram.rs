//! An explicit-bucket histogram on atomics: lock-free to observe (three relaxed atomic adds and a
//! compare-and-swap for the sum), readable as a [`HistogramSnapshot`] for the OTLP exporter, and
//! encodable as a Prometheus histogram through `prometheus-client`'s encoder.
//!
//! (`prometheus_client::metrics::histogram::Histogram` takes a mutex per observation and does not
//! expose its bucket counts.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Cumulative histogram with fixed upper bounds (each bucket includes its bound, as in both
/// Prometheus and OTel) plus the implicit `+Inf` bucket.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; `bounds.len() + 1` entries.
    buckets: Box<[AtomicU64]>,
    /// `f64` bits of the sum.
    sum: AtomicU64,
}

/// The values of a histogram at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, without `+Inf`.
    pub bounds: &'static [f64],
    /// Per-bucket counts, `bounds.len() + 1` entries (the last one is `+Inf`).
    pub counts: Vec<u64>,
    /// Number of observations (the sum of `counts`).
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
}

impl AtomicHistogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one value (NaN lands in the `+Inf` bucket).
    #[inline]
    pub fn observe(&self, value: f64) {
        let index = if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|bound| *bound < value)
        };
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// The current values. Buckets are read one by one, so an observation racing with the read
    /// may be in the counts and not yet in the sum (or the reverse); the count is always the sum
    /// of the bucket counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            count: counts.iter().sum(),
            counts,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.snapshot().encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl TypedMetric for HistogramSnapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect();
        encoder.encode_histogram(
            self.sum,
            self.count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [1.0, 2.0, 5.0];

    #[test]
    fn buckets_include_their_bound() {
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 2.0, 5.0, 7.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, [2, 2, 1, 2]);
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 0.5 + 1.0 + 1.5 + 2.0 + 5.0 + 7.0 + 100.0);
        assert_eq!(s.bounds, BOUNDS);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = std::sync::Arc::new(AtomicHistogram::new(&BOUNDS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        h.observe(1.5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert_eq!(s.counts[1], 40_000);
        assert_eq!(s.sum, 60_000.0);
    }
}
