//! The device options as text (`path=a.img,readonly=on`), the same syntax as the CLI's: how a
//! [`VirtioConfig`] is serialized, so a saved config reads like the command line that made it.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vmr_virtio::block::DiskConfig;
use vmr_virtio::net::NetConfig;
use vmr_virtio::rate_limiter::RateLimiterConfig;
use vmr_virtio::vsock::VsockConfig;

use super::VirtioConfig;

/// `--disk` text for `disk` (parses back to the same config).
pub fn disk_option(disk: &DiskConfig) -> String {
    let mut text = format!("path={}", disk.path.display());
    if disk.read_only {
        text.push_str(",readonly=on");
    }
    if let Some(format) = disk.format {
        text.push_str(&format!(",format={format}"));
    }
    if disk.direct {
        text.push_str(",cache=none");
    }
    if let Some(serial) = &disk.serial {
        text.push_str(&format!(",serial={serial}"));
    }
    text.push_str(&rate_options(&disk.rate_limiter, "bw", "iops"));
    text
}

/// `,bw=N,iops=N` for a limiter's per-second rates (what `bw=` / `iops=` made; a bucket set
/// through the API with another refill time or a burst is written as its long-run rate).
fn rate_options(limiter: &RateLimiterConfig, bw_key: &str, ops_key: &str) -> String {
    let mut text = String::new();
    if let Some(bw) = &limiter.bandwidth {
        text.push_str(&format!(",{bw_key}={}", bw.rate_per_second()));
    }
    if let Some(ops) = &limiter.ops {
        text.push_str(&format!(",{ops_key}={}", ops.rate_per_second()));
    }
    text
}

/// `--net` text for `net` (parses back to the same config).
pub fn net_option(net: &NetConfig) -> String {
    let mut text = format!("tap={}", net.tap);
    if let Some(mac) = net.mac {
        let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(",mac={}", hex.join(":")));
    }
    text.push_str(&rate_options(&net.rx_rate_limiter, "rx_bw", "rx_pps"));
    text.push_str(&rate_options(&net.tx_rate_limiter, "tx_bw", "tx_pps"));
    text
}

/// `--vsock` text for `vsock` (parses back to the same config).
pub fn vsock_option(vsock: &VsockConfig) -> String {
    format!("cid={},socket={}", vsock.cid, vsock.socket.display())
}

#[derive(Serialize, Deserialize)]
struct Repr {
    #[serde(default)]
    disks: Vec<String>,
    #[serde(default)]
    nets: Vec<String>,
    #[serde(default)]
    vsock: Option<String>,
    #[serde(default)]
    rng: bool,
}

impl Serialize for VirtioConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Repr {
            disks: self.disks.iter().map(disk_option).collect(),
            nets: self.nets.iter().map(net_option).collect(),
            vsock: self.vsock.as_ref().map(vsock_option),
            rng: self.rng,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for VirtioConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = Repr::deserialize(d)?;
        let disks =
            repr.disks.iter().map(|t| t.parse().map_err(D::Error::custom)).collect::<Result<_, _>>()?;
        let nets = repr.nets.iter().map(|t| t.parse().map_err(D::Error::custom)).collect::<Result<_, _>>()?;
        let vsock = repr.vsock.map(|t| t.parse().map_err(D::Error::custom)).transpose()?;
        Ok(VirtioConfig { disks, nets, vsock, rng: repr.rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_text_and_json() {
        let config = VirtioConfig {
            disks: vec![
                "path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1".parse().unwrap(),
                "path=data.img,cache=none,bw=10485760,iops=1000".parse().unwrap(),
            ],
            nets: vec![
                "tap=tap0,mac=52:54:00:ab:cd:ef".parse().unwrap(),
                "tap=tap1,rx_bw=1048576,tx_bw=2048,tx_pps=100".parse().unwrap(),
            ],
            vsock: Some("cid=3,socket=/run/vm1.vsock".parse().unwrap()),
            rng: true,
        };
        assert_eq!(
            disk_option(&config.disks[0]),
            "path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1"
        );
        assert_eq!(net_option(&config.nets[0]), "tap=tap0,mac=52:54:00:ab:cd:ef");
        assert_eq!(vsock_option(config.vsock.as_ref().unwrap()), "cid=3,socket=/run/vm1.vsock");
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"path=data.img,cache=none,bw=10485760,iops=1000\""), "{json}");
        assert_eq!(net_option(&config.nets[1]), "tap=tap1,rx_bw=1048576,tx_bw=2048,tx_pps=100");
        let back: VirtioConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn bad_option_text_is_a_deserialization_error() {
        let err = serde_json::from_str::<VirtioConfig>(r#"{"disks":["readonly=on"]}"#).unwrap_err();
        assert!(err.to_string().contains("--disk needs path=FILE"), "{err}");
        let empty: VirtioConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, VirtioConfig::default());
    }
}
