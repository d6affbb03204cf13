//! A network card as the device takes it (the `--net` text is parsed in vmr-vmm).

/// One `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// `None` derives a stable locally administered MAC from the tap name.
    pub mac: Option<[u8; 6]>,
}

impl NetConfig {
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
        let c = NetConfig { tap: "tap0".into(), mac: None };
        assert_eq!(c.mac(), c.mac());
        assert_eq!(&c.mac()[..3], &[0x52, 0x54, 0]);
        assert_ne!(c.mac(), NetConfig { tap: "tap1".into(), mac: None }.mac());
        let set = NetConfig { tap: "t".into(), mac: Some([2, 0, 0, 0, 0, 1]) };
        assert_eq!(set.mac(), [2, 0, 0, 0, 0, 1]);
    }
}
