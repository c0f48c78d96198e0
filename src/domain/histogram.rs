//! A Prometheus histogram kept in atomics: observed on one thread, rendered by `/metrics` on another.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Cumulative bucket counts over fixed upper bounds (seconds), the `+Inf` count and the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations ≤ `bounds[i]`; the last one counts every observation (`+Inf`).
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, secs: f64) {
        let secs = secs.max(0.0);
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            if secs <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
        self.counts[self.bounds.len()].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// `(upper bound, cumulative count)` for each bucket, `+Inf` last (as `f64::INFINITY`).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
    }

    pub fn count(&self) -> u64 {
        self.counts[self.bounds.len()].load(Relaxed)
    }

    /// Sum of the observations, in seconds.
    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_counts_everything() {
        let h = Histogram::new(&[0.1, 1.0]);
        for s in [0.05, 0.5, 0.5, 7.0] {
            h.observe(s);
        }
        let b: Vec<(f64, u64)> = h.buckets().collect();
        assert_eq!(b, vec![(0.1, 1), (1.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 8.05).abs() < 1e-6);
    }
}
