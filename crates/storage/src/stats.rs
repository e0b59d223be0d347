//! Histograms and counters of the disk paths, observed where the work happens (WAL write and
//! fsync, backend commit) and read by the server's `/metrics`. Lock-free: an observation is a
//! few atomic operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

/// A Prometheus-style histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: Vec<f64>,
    /// One counter per bound plus the +Inf bucket; not cumulative.
    counts: Vec<AtomicU64>,
    /// The sum of observed values, an `f64`'s bits.
    sum: AtomicU64,
}

/// What `/metrics` prints: cumulative bucket counts, the sum in seconds and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// `n` bounds starting at `start` seconds, each `factor` times the last (Prometheus's
    /// `ExponentialBuckets`, as etcd declares its histograms).
    pub fn exponential(start: f64, factor: f64, n: usize) -> Histogram {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        let counts = (0..=n).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// A duration, in seconds.
    pub fn observe(&self, d: Duration) {
        self.observe_value(d.as_secs_f64());
    }

    /// A value in the histogram's own unit (milliseconds, a TTL in seconds, ...).
    pub fn observe_value(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            buckets.push((*b, total));
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            count: total,
        }
    }
}

/// `etcd_disk_wal_fsync_duration_seconds`: every WAL fsync.
pub static WAL_FSYNC: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::exponential(0.001, 2.0, 14));
/// `etcd_disk_wal_write_duration_seconds`: every write of buffered WAL records to the file.
pub static WAL_WRITE: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::exponential(0.001, 2.0, 14));
/// `etcd_disk_wal_write_bytes_total`: bytes of WAL records written.
pub static WAL_WRITE_BYTES: AtomicU64 = AtomicU64::new(0);
/// `etcd_disk_backend_commit_duration_seconds`: every backend commit.
pub static BACKEND_COMMIT: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::exponential(0.001, 2.0, 14));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_le_inclusive() {
        let h = Histogram::exponential(0.001, 2.0, 3);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.002, 2), (0.004, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 1.0045).abs() < 1e-9);
    }
}
