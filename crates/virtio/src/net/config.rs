//! `--net tap=NAME[,mac=52:54:00:12:34:56]`

use std::str::FromStr;

use thiserror::Error;

/// One `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// `None` derives a stable locally administered MAC from the tap name.
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error("--net needs tap=NAME")]
    MissingTap,
    #[error("--net: '{0}' is not key=value")]
    NotKeyValue(String),
    #[error("--net: unknown key '{0}' (expected tap, mac)")]
    UnknownKey(String),
    #[error("--net: key '{0}' given twice")]
    Duplicate(String),
    #[error("--net: tap name must be 1 to 15 bytes")]
    BadTap,
    #[error("--net: '{0}' is not a unicast MAC address like 52:54:00:12:34:56")]
    BadMac(String),
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
                other => return Err(NetConfigError::UnknownKey(other.to_owned())),
            }
        }
        Ok(NetConfig { tap: tap.ok_or(NetConfigError::MissingTap)?, mac })
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
    }

    #[test]
    fn rejects_bad_options() {
        assert_eq!("mac=52:54:00:12:34:56".parse::<NetConfig>(), Err(NetConfigError::MissingTap));
        assert_eq!("tap=".parse::<NetConfig>(), Err(NetConfigError::BadTap));
        assert_eq!("tap=aaaaaaaaaaaaaaaa".parse::<NetConfig>(), Err(NetConfigError::BadTap));
        assert_eq!("tap=t,tap=u".parse::<NetConfig>(), Err(NetConfigError::Duplicate("tap".into())));
        assert_eq!("tap=t,x=1".parse::<NetConfig>(), Err(NetConfigError::UnknownKey("x".into())));
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
