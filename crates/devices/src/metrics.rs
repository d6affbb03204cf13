//! Counters devices update and the VMM reports (Firecracker-style metrics).
//!
//! Devices own their counters (an `Arc` of a group defined with [`metric_group!`]) and bump
//! them with relaxed atomics, never taking a lock on the I/O path. The VMM's metrics registry
//! reads the totals and writes the deltas since its last flush; per-device totals are also
//! readable as plain structs ([`metric_group!`]'s snapshot type).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The total since the counter was made.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Minimum, maximum and sum of durations (microseconds) and how many, since the last `take`.
#[derive(Debug)]
pub struct LatencyAggregate {
    min_us: AtomicU64,
    max_us: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyAggregate {
    fn default() -> Self {
        LatencyAggregate {
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// What a [`LatencyAggregate`] held over one flush period (all 0 when nothing was recorded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub min_us: u64,
    pub max_us: u64,
    pub sum_us: u64,
    pub count: u64,
}

impl LatencySummary {
    /// Combines two periods (or two devices' periods).
    pub fn merge(self, other: LatencySummary) -> LatencySummary {
        match (self.count, other.count) {
            (0, _) => other,
            (_, 0) => self,
            _ => LatencySummary {
                min_us: self.min_us.min(other.min_us),
                max_us: self.max_us.max(other.max_us),
                sum_us: self.sum_us + other.sum_us,
                count: self.count + other.count,
            },
        }
    }
}

impl LatencyAggregate {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.min_us.fetch_min(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the period's figures and starts a new period.
    pub fn take(&self) -> LatencySummary {
        let count = self.count.swap(0, Ordering::Relaxed);
        let sum_us = self.sum_us.swap(0, Ordering::Relaxed);
        let min_us = self.min_us.swap(u64::MAX, Ordering::Relaxed);
        let max_us = self.max_us.swap(0, Ordering::Relaxed);
        if count == 0 {
            return LatencySummary::default();
        }
        LatencySummary { min_us, max_us, sum_us, count }
    }
}

/// Defines a group of [`Counter`]s (`$name`, all fields public) and a plain serde snapshot of
/// their totals (`$snapshot`), with `fields()` listing (name, counter) for the metrics writer.
#[macro_export]
macro_rules! metric_group {
    ($(#[$meta:meta])* $name:ident, $snapshot:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $crate::metrics::Counter,)*
        }

        /// Totals of the counters, as a plain struct.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct $snapshot {
            $(pub $field: u64,)*
        }

        impl $name {
            /// (name, counter) for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, &$crate::metrics::Counter)> {
                vec![$((stringify!($field), &self.$field),)*]
            }

            /// The totals now.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot { $($field: self.$field.get(),)* }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    metric_group!(TestGroup, TestSnapshot { a, b });

    #[test]
    fn counters_and_groups() {
        let g = TestGroup::default();
        g.a.inc();
        g.b.add(41);
        g.b.inc();
        assert_eq!(g.snapshot(), TestSnapshot { a: 1, b: 42 });
        let names: Vec<_> = g.fields().iter().map(|(n, c)| (*n, c.get())).collect();
        assert_eq!(names, [("a", 1), ("b", 42)]);
    }

    #[test]
    fn latency_aggregate_takes_and_resets() {
        let l = LatencyAggregate::default();
        assert_eq!(l.take(), LatencySummary::default());
        l.record(Duration::from_micros(30));
        l.record(Duration::from_micros(10));
        l.record(Duration::from_micros(20));
        let s = l.take();
        assert_eq!(s, LatencySummary { min_us: 10, max_us: 30, sum_us: 60, count: 3 });
        assert_eq!(l.take(), LatencySummary::default());
        let other = LatencySummary { min_us: 5, max_us: 6, sum_us: 11, count: 2 };
        assert_eq!(s.merge(other), LatencySummary { min_us: 5, max_us: 30, sum_us: 71, count: 5 });
        assert_eq!(LatencySummary::default().merge(other), other);
    }
}
