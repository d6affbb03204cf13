//! The device options as text (`path=a.img,readonly=on`): one key=value parser for `--disk`,
//! `--net` and `--vsock` (sizes and rates go through [`crate::config::parse_size`]); the devices
//! take the plain typed configs it returns. The way back to text is also how a [`VirtioConfig`]
//! is serialized, so a saved config reads like the command line that made it.

use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use vmr_virtio::block::{DiskConfig, SERIAL_MAX_LEN};
use vmr_virtio::net::NetConfig;
use vmr_virtio::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use vmr_virtio::vsock::VsockConfig;

use super::VirtioConfig;
use crate::config::parse_size;

/// Why an option text was rejected (one line); `option` is `--disk`, `--net` or `--vsock`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("{option} needs {what}")]
    Missing { option: &'static str, what: &'static str },
    #[error("{option}: '{item}' is not key=value")]
    NotKeyValue { option: &'static str, item: String },
    #[error("{option}: unknown key '{key}' (expected {expected})")]
    UnknownKey { option: &'static str, key: String, expected: String },
    #[error("{option}: key '{key}' given twice")]
    Duplicate { option: &'static str, key: String },
    #[error("{option}: {what}")]
    BadValue { option: &'static str, what: String },
}

/// Splits `text` into key=value pairs, each key one of `keys` and given at most once.
fn key_values<'a>(
    option: &'static str,
    text: &'a str,
    keys: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, OptionError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in text.split(',') {
        let (key, value) =
            item.split_once('=').ok_or_else(|| OptionError::NotKeyValue { option, item: item.to_owned() })?;
        if !keys.contains(&key) {
            return Err(OptionError::UnknownKey { option, key: key.to_owned(), expected: keys.join(", ") });
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(OptionError::Duplicate { option, key: key.to_owned() });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn bad(option: &'static str, what: impl Into<String>) -> OptionError {
    OptionError::BadValue { option, what: what.into() }
}

fn parse_bool(option: &'static str, key: &str, value: &str) -> Result<bool, OptionError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(bad(option, format!("{key} must be on or off, not '{other}'"))),
    }
}

/// A per-second rate (`bw=10M`, `iops=1000`; 0 limits nothing): a bucket refilled so that
/// `rate` tokens go through per second.
fn parse_rate(
    option: &'static str,
    key: &str,
    value: &str,
) -> Result<Option<TokenBucketConfig>, OptionError> {
    let rate = parse_size(value, 0).ok_or_else(|| {
        bad(option, format!("{key} must be a rate per second like 1000, 512K or 10M, not '{value}'"))
    })?;
    Ok(TokenBucketConfig::per_second(rate))
}

/// `--disk path=FILE[,readonly=on][,format=raw|qcow2][,cache=writeback|none][,serial=ID]
/// [,bw=RATE][,iops=N]`
pub fn parse_disk(text: &str) -> Result<DiskConfig, OptionError> {
    const O: &str = "--disk";
    const KEYS: [&str; 7] = ["path", "readonly", "format", "cache", "serial", "bw", "iops"];
    let missing_path = OptionError::Missing { option: O, what: "path=FILE" };
    let mut disk = DiskConfig::new("");
    let mut path = None;
    for (key, value) in key_values(O, text, &KEYS)? {
        match key {
            "path" if value.is_empty() => return Err(missing_path),
            "path" => path = Some(PathBuf::from(value)),
            "readonly" => disk.read_only = parse_bool(O, key, value)?,
            "format" => disk.format = Some(value.parse().map_err(|e: String| bad(O, e))?),
            "cache" => disk.direct = parse_cache(value)?,
            "serial" => disk.serial = Some(parse_serial(value)?),
            "bw" => disk.rate_limiter.bandwidth = parse_rate(O, key, value)?,
            _ => disk.rate_limiter.ops = parse_rate(O, key, value)?,
        }
    }
    disk.path = path.ok_or(missing_path)?;
    Ok(disk)
}

/// `cache=none` is O_DIRECT (true), `cache=writeback` the host page cache.
fn parse_cache(value: &str) -> Result<bool, OptionError> {
    match value {
        "none" => Ok(true),
        "writeback" => Ok(false),
        other => Err(bad("--disk", format!("cache must be writeback or none, not '{other}'"))),
    }
}

fn parse_serial(value: &str) -> Result<String, OptionError> {
    let ok = !value.is_empty()
        && value.len() <= SERIAL_MAX_LEN
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !ok {
        return Err(bad("--disk", "serial must be 1 to 20 printable ASCII characters without commas"));
    }
    Ok(value.to_owned())
}

/// A host tap name (`--net tap=`, the API's `host_dev_name`): what Linux's IFNAMSIZ allows.
pub fn check_tap_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains('/') {
        return Err("tap name must be 1 to 15 bytes".into());
    }
    Ok(())
}

/// `52:54:00:12:34:56` (unicast): `--net mac=` and the API's `guest_mac`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let err = || format!("'{text}' is not a unicast MAC address like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
        *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(err());
    }
    Ok(mac)
}

/// `--net tap=NAME[,mac=52:54:00:12:34:56][,rx_bw=RATE][,rx_pps=N][,tx_bw=RATE][,tx_pps=N]`
pub fn parse_net(text: &str) -> Result<NetConfig, OptionError> {
    const O: &str = "--net";
    const KEYS: [&str; 6] = ["tap", "mac", "rx_bw", "rx_pps", "tx_bw", "tx_pps"];
    let mut net = NetConfig::new("");
    let mut tap = None;
    for (key, value) in key_values(O, text, &KEYS)? {
        match key {
            "tap" => {
                check_tap_name(value).map_err(|e| bad(O, e))?;
                tap = Some(value.to_owned());
            }
            "mac" => net.mac = Some(parse_mac(value).map_err(|e| bad(O, e))?),
            "rx_bw" => net.rx_rate_limiter.bandwidth = parse_rate(O, key, value)?,
            "rx_pps" => net.rx_rate_limiter.ops = parse_rate(O, key, value)?,
            "tx_bw" => net.tx_rate_limiter.bandwidth = parse_rate(O, key, value)?,
            _ => net.tx_rate_limiter.ops = parse_rate(O, key, value)?,
        }
    }
    net.tap = tap.ok_or(OptionError::Missing { option: O, what: "tap=NAME" })?;
    Ok(net)
}

/// A guest context id (`--vsock cid=`, the API's `guest_cid`): Linux takes u32 cids; 0..=2 are
/// hypervisor/local/host and u32::MAX is VMADDR_CID_ANY.
pub fn check_vsock_cid(cid: u64) -> Result<u64, String> {
    if (3..u64::from(u32::MAX)).contains(&cid) {
        Ok(cid)
    } else {
        Err(format!("cid '{cid}' is not a number from 3 to 4294967294"))
    }
}

/// `--vsock cid=N,socket=PATH`
pub fn parse_vsock(text: &str) -> Result<VsockConfig, OptionError> {
    const O: &str = "--vsock";
    let (mut cid, mut socket) = (None, None);
    for (key, value) in key_values(O, text, &["cid", "socket"])? {
        if key == "cid" {
            let not_a_cid = || bad(O, format!("cid '{value}' is not a number from 3 to 4294967294"));
            let n = value.parse::<u64>().map_err(|_| not_a_cid())?;
            cid = Some(check_vsock_cid(n).map_err(|_| not_a_cid())?);
        } else if value.is_empty() {
            return Err(bad(O, "socket path must not be empty"));
        } else {
            socket = Some(PathBuf::from(value));
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or(OptionError::Missing { option: O, what: "cid=N (3 or more)" })?,
        socket: socket.ok_or(OptionError::Missing { option: O, what: "socket=PATH" })?,
    })
}

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
            repr.disks.iter().map(|t| parse_disk(t).map_err(D::Error::custom)).collect::<Result<_, _>>()?;
        let nets =
            repr.nets.iter().map(|t| parse_net(t).map_err(D::Error::custom)).collect::<Result<_, _>>()?;
        let vsock = repr.vsock.map(|t| parse_vsock(&t).map_err(D::Error::custom)).transpose()?;
        Ok(VirtioConfig { disks, nets, vsock, rng: repr.rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmr_virtio::vmr_block::ImageFormat;

    fn err<T: std::fmt::Debug>(r: Result<T, OptionError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn disks_parse_full_and_minimal() {
        let c = parse_disk("path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1").unwrap();
        let want = DiskConfig {
            read_only: true,
            format: Some(ImageFormat::Qcow2),
            serial: Some("root-1".into()),
            ..DiskConfig::new("/img/root.qcow2")
        };
        assert_eq!(c, want);
        let c = parse_disk("path=a.img,bw=10M,iops=1000").unwrap();
        assert_eq!(c.rate_limiter.bandwidth.unwrap().rate_per_second(), 10 << 20);
        assert_eq!(c.rate_limiter.ops.unwrap().rate_per_second(), 1000);
        assert_eq!(parse_disk("path=a.img,bw=4k,iops=0").unwrap().rate_limiter.ops, None);
        assert_eq!(parse_disk("path=a.img").unwrap(), DiskConfig::new("a.img"));
        assert!(parse_disk("path=a.img,cache=none").unwrap().direct);
        assert!(!parse_disk("path=a.img,cache=writeback").unwrap().direct);
    }

    #[test]
    fn bad_disks_are_one_line_errors() {
        for (input, want) in [
            ("readonly=on", "--disk needs path=FILE"),
            ("path=", "--disk needs path=FILE"),
            ("path=a,ro", "--disk: 'ro' is not key=value"),
            ("path=a,cache=directsync", "--disk: cache must be writeback or none, not 'directsync'"),
            ("path=a,cache=none,cache=none", "--disk: key 'cache' given twice"),
            (
                "path=a,aio=native",
                "--disk: unknown key 'aio' (expected path, readonly, format, cache, serial, bw, iops)",
            ),
            ("path=a,path=b", "--disk: key 'path' given twice"),
            ("path=a,readonly=maybe", "--disk: readonly must be on or off, not 'maybe'"),
            (
                "path=a,serial=123456789012345678901",
                "--disk: serial must be 1 to 20 printable ASCII characters without commas",
            ),
            ("path=a,serial=", "--disk: serial must be 1 to 20 printable ASCII characters without commas"),
            ("path=a,bw=fast", "--disk: bw must be a rate per second like 1000, 512K or 10M, not 'fast'"),
            ("path=a,iops=1.5", "--disk: iops must be a rate per second like 1000, 512K or 10M, not '1.5'"),
            ("path=a,iops=1,iops=2", "--disk: key 'iops' given twice"),
            ("path=a,format=vmdk", "--disk: unknown image format 'vmdk' (expected raw or qcow2)"),
        ] {
            assert_eq!(err(parse_disk(input)), want, "{input}");
        }
    }

    #[test]
    fn nets_parse_with_mac_and_limits() {
        let c = parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(c.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(parse_net("tap=tap0").unwrap(), NetConfig::new("tap0"));
        let c = parse_net("tap=t,rx_bw=1M,tx_pps=100,tx_bw=2M").unwrap();
        assert_eq!(c.rx_rate_limiter.bandwidth.unwrap().rate_per_second(), 1 << 20);
        assert_eq!(c.rx_rate_limiter.ops, None);
        assert_eq!(c.tx_rate_limiter.bandwidth.unwrap().rate_per_second(), 2 << 20);
        assert_eq!(c.tx_rate_limiter.ops.unwrap().rate_per_second(), 100);
    }

    #[test]
    fn bad_nets_are_one_line_errors() {
        for (input, want) in [
            ("mac=52:54:00:12:34:56", "--net needs tap=NAME"),
            ("tap=", "--net: tap name must be 1 to 15 bytes"),
            ("tap=aaaaaaaaaaaaaaaa", "--net: tap name must be 1 to 15 bytes"),
            ("tap=t,tap=u", "--net: key 'tap' given twice"),
            ("tap=t,x=1", "--net: unknown key 'x' (expected tap, mac, rx_bw, rx_pps, tx_bw, tx_pps)"),
            ("tap=t,rx_bw=1M,rx_bw=2M", "--net: key 'rx_bw' given twice"),
            (
                "tap=t,tx_pps=lots",
                "--net: tx_pps must be a rate per second like 1000, 512K or 10M, not 'lots'",
            ),
        ] {
            assert_eq!(err(parse_net(input)), want, "{input}");
        }
        for mac in [
            "01:00:00:00:00:01",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:0:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            let want = format!("--net: '{mac}' is not a unicast MAC address like 52:54:00:12:34:56");
            assert_eq!(err(parse_net(&format!("tap=t,mac={mac}"))), want);
        }
    }

    #[test]
    fn vsock_options_parse_and_fail_in_one_line() {
        let c = parse_vsock("cid=3,socket=/run/vm1.vsock").unwrap();
        assert_eq!(c, VsockConfig { cid: 3, socket: "/run/vm1.vsock".into() });
        assert_eq!(parse_vsock("socket=/tmp/a,cid=4294967294").unwrap().cid, 4_294_967_294);
        for (input, want) in [
            ("socket=/a", "--vsock needs cid=N (3 or more)"),
            ("cid=3", "--vsock needs socket=PATH"),
            ("cid=3,socket=", "--vsock: socket path must not be empty"),
            ("cid=3,socket=/a,x=1", "--vsock: unknown key 'x' (expected cid, socket)"),
            ("cid=3,cid=4,socket=/a", "--vsock: key 'cid' given twice"),
            ("cid", "--vsock: 'cid' is not key=value"),
        ] {
            assert_eq!(err(parse_vsock(input)), want, "{input}");
        }
        for cid in ["0", "1", "2", "4294967295", "-3", "x", ""] {
            let want = format!("--vsock: cid '{cid}' is not a number from 3 to 4294967294");
            assert_eq!(err(parse_vsock(&format!("cid={cid},socket=/a"))), want);
        }
    }

    #[test]
    fn options_round_trip_through_text_and_json() {
        let config = VirtioConfig {
            disks: vec![
                parse_disk("path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1").unwrap(),
                parse_disk("path=data.img,cache=none,bw=10485760,iops=1000").unwrap(),
            ],
            nets: vec![
                parse_net("tap=tap0,mac=52:54:00:ab:cd:ef").unwrap(),
                parse_net("tap=tap1,rx_bw=1048576,tx_bw=2048,tx_pps=100").unwrap(),
            ],
            vsock: Some(parse_vsock("cid=3,socket=/run/vm1.vsock").unwrap()),
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
