//! Rate limiting for block and network devices: Firecracker's token buckets.
//!
//! The configuration types here are the JSON bodies of Firecracker's API (`rate_limiter` in
//! `PUT /drives/{id}`, `rx_rate_limiter` / `tx_rate_limiter` in `PUT /network-interfaces/{id}`)
//! and of its config file, so the API, the config file and the devices share one type.

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}
