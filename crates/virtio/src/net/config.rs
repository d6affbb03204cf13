//! `--net tap=NAME[,mac=52:54:00:12:34:56][,rx_bw=RATE][,rx_pps=N][,tx_bw=RATE][,tx_pps=N]`

use std::str::FromStr;

use thiserror::Error;

use crate::rate_limiter::{parse_rate, RateLimiterConfig, TokenBucketConfig};

/// One `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// `None` derives a stable locally administered MAC from the tap name.
    pub mac: Option<[u8; 6]>,
    /// Guest receive limits (`rx_bw=` bytes per second, `rx_pps=` frames per second).
    pub rx_rate_limiter: RateLimiterConfig,
    /// Guest transmit limits (`tx_bw=`, `tx_pps=`).
    pub tx_rate_limiter: RateLimiterConfig,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error("--net needs tap=NAME")]
    MissingTap,
    #[error("--net: '{0}' is not key=value")]
    NotKeyValue(String),
    #[error("--net: unknown key '{0}' (expected tap, mac, rx_bw, rx_pps, tx_bw, tx_pps)")]
    UnknownKey(String),
    #[error("--net: key '{0}' given twice")]
    Duplicate(String),
    #[error("--net: tap name must be 1 to 15 bytes")]
    BadTap,
    #[error("--net: '{0}' is not a unicast MAC address like 52:54:00:12:34:56")]
    BadMac(String),
    #[error("--net: {0} must be a rate per second like 1000, 512K or 10M, not '{1}'")]
    BadRate(String, String),
}

fn parse_mac(s: &str) -> Result<[u8; 6], NetConfigError> {
    let bad = || NetConfigError::BadMac(s.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
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

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac) = (None, None);
        // rx_bw, rx_pps, tx_bw, tx_pps
        let mut rates: [Option<u64>; 4] = [None; 4];
        const RATE_KEYS: [&str; 4] = ["rx_bw", "rx_pps", "tx_bw", "tx_pps"];
        for item in s.split(',') {
            let (key, value) =
                item.split_once('=').ok_or_else(|| NetConfigError::NotKeyValue(item.to_owned()))?;
            match key {
                "tap" if tap.is_none() => {
                    if value.is_empty() || value.len() > 15 || value.contains('/') {
                        return Err(NetConfigError::BadTap);
                    }
                    tap = Some(value.to_owned());
                }
                "mac" if mac.is_none() => mac = Some(parse_mac(value)?),
                "tap" | "mac" => return Err(NetConfigError::Duplicate(key.to_owned())),
                _ if RATE_KEYS.contains(&key) => {
                    let i = RATE_KEYS.iter().position(|k| *k == key).unwrap_or_default();
                    if rates[i].is_some() {
                        return Err(NetConfigError::Duplicate(key.to_owned()));
                    }
                    let bad = || NetConfigError::BadRate(key.to_owned(), value.to_owned());
                    rates[i] = Some(parse_rate(value).ok_or_else(bad)?);
                }
                other => return Err(NetConfigError::UnknownKey(other.to_owned())),
            }
        }
        let limiter = |bw: Option<u64>, pps: Option<u64>| RateLimiterConfig {
            bandwidth: bw.and_then(TokenBucketConfig::per_second),
            ops: pps.and_then(TokenBucketConfig::per_second),
        };
        Ok(NetConfig {
            tap: tap.ok_or(NetConfigError::MissingTap)?,
            mac,
            rx_rate_limiter: limiter(rates[0], rates[1]),
            tx_rate_limiter: limiter(rates[2], rates[3]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_mac() {
        let c: NetConfig = "tap=tap0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(c.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let c: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(c.mac(), c.mac());
        assert_eq!(&c.mac()[..3], &[0x52, 0x54, 0]);
        assert_ne!(c.mac(), "tap=tap1".parse::<NetConfig>().unwrap().mac());
        assert_eq!(c.rx_rate_limiter, RateLimiterConfig::default());
        let c: NetConfig = "tap=t,rx_bw=1M,tx_pps=100,tx_bw=2M".parse().unwrap();
        assert_eq!(c.rx_rate_limiter.bandwidth.unwrap().rate_per_second(), 1 << 20);
        assert_eq!(c.rx_rate_limiter.ops, None);
        assert_eq!(c.tx_rate_limiter.bandwidth.unwrap().rate_per_second(), 2 << 20);
        assert_eq!(c.tx_rate_limiter.ops.unwrap().rate_per_second(), 100);
    }

    #[test]
    fn rejects_bad_options() {
        assert_eq!("mac=52:54:00:12:34:56".parse::<NetConfig>(), Err(NetConfigError::MissingTap));
        assert_eq!("tap=".parse::<NetConfig>(), Err(NetConfigError::BadTap));
        assert_eq!("tap=aaaaaaaaaaaaaaaa".parse::<NetConfig>(), Err(NetConfigError::BadTap));
        assert_eq!("tap=t,tap=u".parse::<NetConfig>(), Err(NetConfigError::Duplicate("tap".into())));
        assert_eq!("tap=t,x=1".parse::<NetConfig>(), Err(NetConfigError::UnknownKey("x".into())));
        assert_eq!(
            "tap=t,rx_bw=1M,rx_bw=2M".parse::<NetConfig>(),
            Err(NetConfigError::Duplicate("rx_bw".into()))
        );
        assert_eq!(
            "tap=t,tx_pps=lots".parse::<NetConfig>(),
            Err(NetConfigError::BadRate("tx_pps".into(), "lots".into()))
        );
        for mac in [
            "01:00:00:00:00:01",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:0:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert!(
                matches!(format!("tap=t,mac={mac}").parse::<NetConfig>(), Err(NetConfigError::BadMac(_))),
                "{mac}"
            );
        }
    }
}
