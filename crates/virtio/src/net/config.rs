//! A network card as the device takes it: plain typed options (the `--net` text is parsed in
//! vmr-vmm's configuration, `vmr_vmm::devices::options`).

use crate::rate_limiter::RateLimiterConfig;

/// One network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// `None` derives a stable locally administered MAC from the tap name.
    pub mac: Option<[u8; 6]>,
    /// Guest receive limits (bytes and frames per second).
    pub rx_rate_limiter: RateLimiterConfig,
    /// Guest transmit limits.
    pub tx_rate_limiter: RateLimiterConfig,
}

impl NetConfig {
    /// A card on tap `tap` with a derived MAC and no limits.
    pub fn new(tap: impl Into<String>) -> Self {
        NetConfig {
            tap: tap.into(),
            mac: None,
            rx_rate_limiter: RateLimiterConfig::default(),
            tx_rate_limiter: RateLimiterConfig::default(),
        }
    }

    /// The MAC the guest sees: the configured one, or 52:54:00 plus a hash of the tap name.
    pub fn mac(&self) -> [u8; 6] {
        self.mac.unwrap_or_else(|| {
            let h =
                self.tap.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            let b = h.to_le_bytes();
            [0x52, 0x54, 0x00, b[0], b[1], b[2]]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_unicast_and_differ_per_tap() {
        let c = NetConfig::new("tap0");
        assert_eq!(c.mac(), c.mac());
        assert_eq!(&c.mac()[..3], &[0x52, 0x54, 0]);
        assert_ne!(c.mac(), NetConfig::new("tap1").mac());
        let set = NetConfig { mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), ..NetConfig::new("t") };
        assert_eq!(set.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    }
}
