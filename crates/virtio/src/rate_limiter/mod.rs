//! Rate limiting for block and network devices: Firecracker's token buckets.
//!
//! The configuration types here are the JSON bodies of Firecracker's API (`rate_limiter` in
//! `PUT /drives/{id}`, `rx_rate_limiter` / `tx_rate_limiter` in `PUT /network-interfaces/{id}`)
//! and of its config file, so the API, the config file and the devices share one type.

mod bucket;

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::timerfd::TimerFd;

pub use bucket::TokenBucket;

/// One token bucket: `size` tokens (bytes or operations) refilled over `refill_time` ms, plus an
/// initial extra credit of `one_time_burst` tokens that is never refilled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to `size`.
    pub refill_time: u64,
}

/// A device's limits: bytes per refill period and operations per refill period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RateLimiterConfigError {
    #[error("rate limiter {0}: refill_time must be greater than 0 ms")]
    ZeroRefillTime(&'static str),
}

impl RateLimiterConfig {
    /// Checks the values the JSON types cannot: a bucket with a size refills in a non-zero time.
    /// A bucket of size 0 means "no limit" (as in Firecracker).
    pub fn validate(&self) -> Result<(), RateLimiterConfigError> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = bucket {
                if b.size > 0 && b.refill_time == 0 {
                    return Err(RateLimiterConfigError::ZeroRefillTime(name));
                }
            }
        }
        Ok(())
    }
}

/// How often the buckets made from a per-second rate (`bw=`, `iops=` on the command line)
/// refill: an eighth of a second keeps the burst a device may take at once small, and divides
/// every rate in K, M or G exactly.
const CLI_REFILL_MS: u64 = 125;

impl TokenBucketConfig {
    /// A bucket that lets `rate` tokens per second through (`None` for 0: no limit), refilled
    /// every 125 ms (every second for rates that are not a multiple of 8, so the rate is exact).
    pub fn per_second(rate: u64) -> Option<Self> {
        let refill_time = if rate % 8 == 0 { CLI_REFILL_MS } else { 1000 };
        (rate > 0).then(|| TokenBucketConfig {
            size: rate.saturating_mul(refill_time) / 1000,
            one_time_burst: None,
            refill_time,
        })
    }

    /// The long-run rate of this bucket in tokens per second (0: no limit).
    pub fn rate_per_second(&self) -> u64 {
        if self.refill_time == 0 {
            return 0;
        }
        (u128::from(self.size) * 1000 / u128::from(self.refill_time)).min(u128::from(u64::MAX)) as u64
    }
}

/// The limits of one device queue (a disk, or one direction of a network card): a bandwidth
/// bucket (bytes) and an operations bucket (requests or frames), and a timer that becomes
/// readable when a throttled request may go ahead.
///
/// The device's worker polls [`RateLimiter::timer_fd`] with its queues; a throttled request
/// stays in the ring (the guest sees lower throughput, never an error) until the timer fires.
/// Shared (`Arc`) between the worker and the [`RateLimiterHandle`]s the VMM uses to change the
/// limits while the guest runs.
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
    timer: Mutex<TimerFd>,
    timer_fd: RawFd,
}

#[derive(Default)]
struct Buckets {
    config: RateLimiterConfig,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl Buckets {
    fn new(config: &RateLimiterConfig, now: Instant) -> Self {
        Buckets {
            config: *config,
            bandwidth: config.bandwidth.as_ref().and_then(|c| TokenBucket::new(c, now)),
            ops: config.ops.as_ref().and_then(|c| TokenBucket::new(c, now)),
        }
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimiter({:?})", self.config())
    }
}

impl RateLimiter {
    /// A limiter with `config` (both buckets full); an empty config limits nothing.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        config.validate()?;
        // SAFETY: timerfd_create takes no pointers; the result is checked before use.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(RateLimiterError::Timer(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new timerfd this function owns; TimerFd takes it over.
        let timer = unsafe { TimerFd::from_raw_fd(fd) };
        Ok(RateLimiter {
            buckets: Mutex::new(Buckets::new(config, Instant::now())),
            timer_fd: timer.as_raw_fd(),
            timer: Mutex::new(timer),
        })
    }

    /// No limit (the default of every device).
    pub fn unlimited() -> Result<Self, RateLimiterError> {
        Self::new(&RateLimiterConfig::default())
    }

    /// The configuration in force.
    pub fn config(&self) -> RateLimiterConfig {
        self.lock().config
    }

    /// True if neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        let b = self.lock();
        b.bandwidth.is_none() && b.ops.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one operation and `bytes` of bandwidth if both buckets have them, and returns true.
    /// Otherwise takes nothing, arms the timer for when they will be there, and returns false:
    /// the caller leaves the request queued and tries again when the timer fires.
    pub fn consume(&self, bytes: u64) -> bool {
        let now = Instant::now();
        let mut b = self.lock();
        let Buckets { bandwidth, ops, .. } = &mut *b;
        let wait_bw = bandwidth.as_mut().map_or(Duration::ZERO, |k| k.wait_for(bytes, now));
        let wait_ops = ops.as_mut().map_or(Duration::ZERO, |k| k.wait_for(1, now));
        let wait = wait_bw.max(wait_ops);
        if wait.is_zero() {
            if let Some(k) = bandwidth {
                k.take(bytes, now);
            }
            if let Some(k) = ops {
                k.take(1, now);
            }
            return true;
        }
        drop(b);
        // At least 1 ms: a shorter timer would mostly wake the worker to find too few tokens.
        self.arm(wait.max(Duration::from_millis(1)));
        false
    }

    fn arm(&self, after: Duration) {
        let mut timer = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = timer.reset(after, None) {
            tracing::error!("rate limiter: cannot arm its timer: {e}");
        }
    }

    /// The fd the worker polls (readable when throttled requests may be retried).
    pub fn timer_fd(&self) -> RawFd {
        self.timer_fd
    }

    /// Acknowledges the timer (call when [`RateLimiter::timer_fd`] was readable).
    pub fn timer_fired(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer from our own non-blocking timerfd.
        unsafe { libc::read(self.timer_fd, buf.as_mut_ptr().cast(), buf.len()) };
    }

    /// Replaces the limits; the buckets start full. Throttled requests are retried at once
    /// (through the timer), so removing a limit takes effect immediately.
    pub fn update(&self, config: &RateLimiterConfig) -> Result<(), RateLimiterError> {
        config.validate()?;
        *self.lock() = Buckets::new(config, Instant::now());
        self.arm(Duration::from_nanos(1));
        Ok(())
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer_fd
    }
}

/// What the VMM holds to change a device's limits while the guest runs (thread-safe, cheap to
/// clone). `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` end here.
#[derive(Clone, Debug)]
pub struct RateLimiterHandle(Arc<RateLimiter>);

impl RateLimiterHandle {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimiterHandle(limiter)
    }

    /// Replaces the limits of the device.
    pub fn update(&self, config: &RateLimiterConfig) -> Result<(), RateLimiterError> {
        self.0.update(config)
    }

    /// The limits in force.
    pub fn config(&self) -> RateLimiterConfig {
        self.0.config()
    }
}

#[derive(Debug, Error)]
pub enum RateLimiterError {
    #[error(transparent)]
    Config(#[from] RateLimiterConfigError),
    #[error("cannot create the rate limiter's timer: {0}")]
    Timer(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_json_round_trips() {
        let json = r#"{"bandwidth":{"size":1048576,"one_time_burst":2097152,"refill_time":1000},"ops":{"size":100,"refill_time":100}}"#;
        let c: RateLimiterConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.bandwidth.unwrap().one_time_burst, Some(2 << 20));
        assert_eq!(c.ops.unwrap().one_time_burst, None);
        assert_eq!(serde_json::to_string(&c).unwrap(), json);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_zero_refill_are_refused() {
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bw":{}}"#).is_err());
        let c: RateLimiterConfig = serde_json::from_str(r#"{"ops":{"size":5,"refill_time":0}}"#).unwrap();
        assert_eq!(c.validate(), Err(RateLimiterConfigError::ZeroRefillTime("ops")));
    }

    fn bw(size: u64, refill_time: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig { size, one_time_burst: None, refill_time }),
            ops: None,
        }
    }

    fn timer_readable(l: &RateLimiter, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: l.timer_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on our stack.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
    }

    #[test]
    fn per_second_buckets() {
        let b = TokenBucketConfig::per_second(10 << 20).unwrap();
        assert_eq!((b.size, b.refill_time, b.rate_per_second()), (10 << 17, 125, 10 << 20));
        let b = TokenBucketConfig::per_second(1001).unwrap();
        assert_eq!((b.size, b.refill_time, b.rate_per_second()), (1001, 1000, 1001));
        assert_eq!(TokenBucketConfig::per_second(0), None);
    }

    #[test]
    fn throttled_consume_arms_the_timer_for_when_tokens_return() {
        let l = RateLimiter::new(&bw(1000, 100)).unwrap();
        assert!(l.consume(1000));
        let start = Instant::now();
        assert!(!l.consume(500), "the bucket is empty");
        assert!(timer_readable(&l, 2000), "the timer never fired");
        let waited = start.elapsed();
        // 500 of 1000 tokens in a 100 ms refill: 50 ms.
        assert!(waited >= Duration::from_millis(45), "{waited:?}");
        l.timer_fired();
        assert!(!timer_readable(&l, 0), "acknowledged");
        assert!(l.consume(500));
    }

    #[test]
    fn ops_bucket_limits_requests_whatever_their_size() {
        let ops = TokenBucketConfig { size: 2, one_time_burst: None, refill_time: 1000 };
        let l = RateLimiter::new(&RateLimiterConfig { bandwidth: None, ops: Some(ops) }).unwrap();
        assert!(l.consume(1 << 30));
        assert!(l.consume(0));
        assert!(!l.consume(0));
    }

    #[test]
    fn update_replaces_the_limits_and_wakes_the_worker() {
        let l = Arc::new(RateLimiter::new(&bw(100, 1000)).unwrap());
        let handle = RateLimiterHandle::new(l.clone());
        assert!(l.consume(100));
        assert!(!l.consume(100));
        l.timer_fired();
        handle.update(&RateLimiterConfig::default()).unwrap();
        assert!(l.is_unlimited());
        assert!(timer_readable(&l, 1000), "a throttled worker must retry after an update");
        assert!(l.consume(1 << 40));
        let bad = bw(5, 0);
        assert!(matches!(handle.update(&bad), Err(RateLimiterError::Config(_))));
        assert_eq!(handle.config(), RateLimiterConfig::default());
        handle.update(&bw(10, 1000)).unwrap();
        assert_eq!(handle.config(), bw(10, 1000));
        assert!(!l.consume(11) || !l.consume(1), "the new limit holds");
    }

    #[test]
    fn update_is_thread_safe_while_a_worker_consumes() {
        let l = Arc::new(RateLimiter::new(&bw(1 << 20, 10)).unwrap());
        let handle = RateLimiterHandle::new(l.clone());
        let worker = std::thread::spawn(move || (0..20_000).filter(|_| l.consume(64)).count());
        for i in 0..200 {
            handle.update(&bw(1 << (10 + i % 10), 10)).unwrap();
        }
        assert!(worker.join().unwrap() > 0);
    }
}
