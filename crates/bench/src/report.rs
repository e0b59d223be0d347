//! Latency statistics and etcd's benchmark report: Summary, response time histogram and
//! latency distribution, in the same shape and precision as etcd's `pkg/report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latencies (seconds) of successful requests, errors by message, and the wall time.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lats: Vec<f64>,
    pub errors: BTreeMap<String, usize>,
    pub total: Duration,
}

const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

impl Stats {
    /// Sorts the latencies; call once all results are in.
    pub fn finish(mut self, total: Duration) -> Stats {
        self.lats.sort_by(f64::total_cmp);
        self.total = total;
        self
    }

    pub fn merge(&mut self, other: Stats) {
        self.lats.extend(other.lats);
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }

    pub fn rps(&self) -> f64 {
        let secs = self.total.as_secs_f64();
        if secs > 0.0 {
            self.lats.len() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn average(&self) -> f64 {
        if self.lats.is_empty() {
            return 0.0;
        }
        self.lats.iter().sum::<f64>() / self.lats.len() as f64
    }

    pub fn stddev(&self) -> f64 {
        if self.lats.is_empty() {
            return 0.0;
        }
        let avg = self.average();
        let var =
            self.lats.iter().map(|l| (l - avg) * (l - avg)).sum::<f64>() / self.lats.len() as f64;
        var.sqrt()
    }

    /// The latency at percentile `p`, chosen as etcd chooses it.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.lats.len();
        if n == 0 {
            return 0.0;
        }
        let idx = ((p * (n as f64 + 1.0) / 100.0).ceil() as i64 - 1).clamp(0, n as i64 - 1);
        self.lats[idx as usize]
    }

    /// etcd's report text; `precise` prints full precision (`%g`) instead of `%4.4f`.
    pub fn render(&self, precise: bool) -> String {
        let f = |x: f64| {
            if precise {
                format!("{x}")
            } else {
                format!("{x:.4}")
            }
        };
        let mut s = String::new();
        if !self.lats.is_empty() {
            let (fastest, slowest) = (self.lats[0], self.lats[self.lats.len() - 1]);
            let _ = writeln!(s, "\nSummary:");
            let _ = writeln!(s, "  Total:\t{} secs.", f(self.total.as_secs_f64()));
            let _ = writeln!(s, "  Slowest:\t{} secs.", f(slowest));
            let _ = writeln!(s, "  Fastest:\t{} secs.", f(fastest));
            let _ = writeln!(s, "  Average:\t{} secs.", f(self.average()));
            let _ = writeln!(s, "  Stddev:\t{} secs.", f(self.stddev()));
            let _ = writeln!(s, "  Requests/sec:\t{}", f(self.rps()));
            s.push_str(&self.histogram(fastest, slowest, &f));
            let _ = writeln!(s, "\nLatency distribution:");
            for p in PERCENTILES {
                let v = self.percentile(p);
                if v > 0.0 {
                    let _ = writeln!(s, "  {p}% in {} secs.", f(v));
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nError distribution:");
            for (e, n) in &self.errors {
                let _ = writeln!(s, "  [{n}]\t{e}");
            }
        }
        s
    }

    /// etcd's ten equal-width buckets between fastest and slowest (plus the slowest): each
    /// bucket's upper bound and how many latencies fall in it.
    fn histogram_counts(&self, fastest: f64, slowest: f64) -> Vec<(f64, usize)> {
        const BUCKETS: usize = 10;
        let step = (slowest - fastest) / BUCKETS as f64;
        let mut bounds: Vec<f64> = (0..BUCKETS).map(|i| fastest + step * i as f64).collect();
        bounds.push(slowest);
        let mut counts = vec![0usize; bounds.len()];
        let mut b = 0;
        for &l in &self.lats {
            while l > bounds[b] && b < bounds.len() - 1 {
                b += 1;
            }
            counts[b] += 1;
        }
        bounds.into_iter().zip(counts).collect()
    }

    fn histogram(&self, fastest: f64, slowest: f64, f: &dyn Fn(f64) -> String) -> String {
        let buckets = self.histogram_counts(fastest, slowest);
        let max = buckets.iter().map(|b| b.1).max().unwrap_or(0);
        let mut s = String::from("\nResponse time histogram:\n");
        for (bound, n) in buckets {
            let bar = (n * 40).checked_div(max).unwrap_or(0);
            let _ = writeln!(s, "  {} [{n}]\t|{}", f(bound), "∎".repeat(bar));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_report_follow_etcd() {
        let mut s = Stats {
            lats: (1..=100).map(|i| i as f64 / 1000.0).collect(),
            ..Stats::default()
        };
        s.errors.insert("boom".into(), 2);
        let s = s.finish(Duration::from_secs(2));
        // etcd's index: ceil(p * (n + 1) / 100) - 1.
        assert_eq!(s.percentile(50.0), 0.051);
        assert_eq!(s.percentile(99.9), 0.100);
        assert_eq!(s.percentile(10.0), 0.011);
        assert!((s.rps() - 50.0).abs() < 1e-9);
        let text = s.render(false);
        assert!(text.contains("\nSummary:\n  Total:\t2.0000 secs.\n  Slowest:\t0.1000 secs.\n  Fastest:\t0.0010 secs.\n  Average:\t0.0505 secs.\n"), "{text}");
        assert!(text.contains("  Requests/sec:\t50.0000\n"), "{text}");
        assert!(
            text.contains("\nResponse time histogram:\n  0.0010 [1]\t|"),
            "{text}"
        );
        assert!(
            text.contains("\nLatency distribution:\n  10% in 0.0110 secs.\n"),
            "{text}"
        );
        assert!(text.contains("  99.9% in 0.1000 secs.\n"), "{text}");
        assert!(
            text.contains("\nError distribution:\n  [2]\tboom\n"),
            "{text}"
        );
        let counted: usize = s.histogram_counts(0.001, 0.1).iter().map(|b| b.1).sum();
        assert_eq!(counted, 100);
    }
}
