//! One token bucket on a monotonic clock (Firecracker's semantics).

use std::time::{Duration, Instant};

use super::TokenBucketConfig;

/// A bucket of `size` tokens that refills at `size / refill_time`, with a one-time burst that is
/// spent first and never refilled.
///
/// A request larger than the bucket is let through as soon as the bucket is out of debt, and
/// leaves it in debt (a negative budget): the next requests wait until the debt is refilled.
/// So the long-run rate stays `size / refill_time` whatever the request sizes, no request waits
/// for ever, and a worker woken late loses no tokens (they are lost only to a full bucket, and
/// a bucket in debt is far from full).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ns: i128,
    one_time_burst: u64,
    /// Tokens available times `refill_ns` (so refilling `elapsed_ns * size` is exact integer
    /// arithmetic, with no drift); negative while in debt.
    scaled_budget: i128,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` for a size or refill time of 0 (no limit).
    pub fn new(config: &TokenBucketConfig, now: Instant) -> Option<Self> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        let refill_ns = i128::from(config.refill_time) * 1_000_000;
        Some(TokenBucket {
            size: config.size,
            refill_ns,
            one_time_burst: config.one_time_burst.unwrap_or(0),
            scaled_budget: i128::from(config.size).saturating_mul(refill_ns),
            last_refill: now,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn capacity(&self) -> i128 {
        i128::from(self.size).saturating_mul(self.refill_ns)
    }

    fn scaled(&self, tokens: u64) -> i128 {
        i128::from(tokens).saturating_mul(self.refill_ns)
    }

    /// Tokens available now (burst not included); negative while in debt.
    pub fn budget(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.scaled_budget as f64 / self.refill_ns as f64
    }

    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        self.last_refill = now.max(self.last_refill);
        let added = i128::try_from(elapsed).unwrap_or(i128::MAX).saturating_mul(i128::from(self.size));
        self.scaled_budget = self.scaled_budget.saturating_add(added).min(self.capacity());
    }

    /// Tokens the budget must hold for a request of `tokens`: what the burst does not cover;
    /// nothing for a request larger than the bucket (it only needs the bucket out of debt).
    fn needed(&self, tokens: u64) -> u64 {
        let rest = tokens.saturating_sub(self.one_time_burst);
        if rest > self.size {
            0
        } else {
            rest
        }
    }

    /// True if `tokens` could be taken now (see [`TokenBucket::take`]), without taking them.
    pub fn can_take(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        self.scaled_budget >= self.scaled(self.needed(tokens))
    }

    /// Takes `tokens` (burst first); call only after [`TokenBucket::can_take`] said yes.
    pub fn take(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        self.scaled_budget = self.scaled_budget.saturating_sub(self.scaled(tokens - from_burst));
    }

    /// Gives back tokens taken by a request that then did not go ahead.
    pub fn give_back(&mut self, tokens: u64) {
        self.scaled_budget = self.scaled_budget.saturating_add(self.scaled(tokens)).min(self.capacity());
    }

    /// How long until `tokens` can be taken (zero if now).
    pub fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.refill(now);
        let missing = self.scaled(self.needed(tokens)) - self.scaled_budget;
        if missing <= 0 {
            return Duration::ZERO;
        }
        // Refilling adds `size` scaled units per nanosecond; round up.
        let size = i128::from(self.size);
        let ns = (missing + size - 1) / size;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: Option<u64>, refill_ms: u64, now: Instant) -> TokenBucket {
        TokenBucket::new(&TokenBucketConfig { size, one_time_burst: burst, refill_time: refill_ms }, now)
            .unwrap()
    }

    #[test]
    fn zero_size_or_refill_is_no_limit() {
        let now = Instant::now();
        let c = TokenBucketConfig { size: 0, one_time_burst: None, refill_time: 100 };
        assert!(TokenBucket::new(&c, now).is_none());
        let c = TokenBucketConfig { size: 10, one_time_burst: None, refill_time: 0 };
        assert!(TokenBucket::new(&c, now).is_none());
    }

    #[test]
    fn starts_full_and_refills_linearly() {
        let t0 = Instant::now();
        let mut b = bucket(1000, None, 1000, t0);
        assert!(b.can_take(1000, t0));
        b.take(1000, t0);
        assert!(!b.can_take(1, t0));
        // A quarter of the refill time gives a quarter of the size back.
        let t1 = t0 + Duration::from_millis(250);
        assert!(b.can_take(250, t1));
        assert!(!b.can_take(251, t1));
        assert_eq!(b.wait_for(500, t1), Duration::from_millis(250));
        // Never more than the size.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(b.budget(t2), 1000.0);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let mut b = bucket(100, Some(500), 1000, t0);
        assert!(b.can_take(600, t0));
        b.take(550, t0);
        assert_eq!(b.one_time_burst(), 0);
        assert_eq!(b.budget(t0), 50.0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!((b.budget(t1), b.one_time_burst()), (100.0, 0));
    }

    #[test]
    fn oversized_request_goes_through_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = bucket(100, None, 100, t0);
        assert!(b.can_take(300, t0), "a request above the size must not wait for ever");
        b.take(300, t0);
        assert_eq!(b.budget(t0), -200.0);
        assert!(!b.can_take(300, t0 + Duration::from_millis(199)), "still in debt");
        assert!(b.can_take(300, t0 + Duration::from_millis(200)), "out of debt: the next big one goes");
        // The debt is paid at the bucket's rate: 200 tokens = 200 ms, then a full bucket 100 ms later.
        assert!(!b.can_take(1, t0 + Duration::from_millis(150)));
        assert_eq!(b.wait_for(100, t0 + Duration::from_millis(200)), Duration::from_millis(100));
        assert!(b.can_take(300, t0 + Duration::from_millis(300)));
    }

    #[test]
    fn give_back_restores_tokens() {
        let t0 = Instant::now();
        let mut b = bucket(10, None, 1000, t0);
        b.take(10, t0);
        b.give_back(4);
        assert!(b.can_take(4, t0));
        assert!(!b.can_take(5, t0));
    }
}
