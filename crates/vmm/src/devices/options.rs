//! The device options as text (`path=a.img,readonly=on`): one key=value parser for `--disk`,
//! `--net` and `--vsock` (the devices take the plain typed configs it returns), and the way back
//! to text, which is also how a [`VirtioConfig`] is serialized, so a saved config reads like the
//! command line that made it.

use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use vmr_virtio::block::{DiskConfig, SERIAL_MAX_LEN};
use vmr_virtio::net::NetConfig;
use vmr_virtio::vsock::VsockConfig;

use super::VirtioConfig;

/// Why an option text was rejected; `option` is `--disk`, `--net` or `--vsock`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("{option} needs {key}")]
    Missing { option: &'static str, key: &'static str },
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

fn parse_bool(option: &'static str, key: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(bad(option, format!("{key} must be on or off, not '{other}'"))),
    }
}

/// `--disk path=FILE[,readonly=on][,format=raw|qcow2][,cache=writeback|none][,serial=ID]`
pub fn parse_disk(text: &str) -> Result<DiskConfig, OptionError> {
    const O: &str = "--disk";
    let mut disk = DiskConfig::new("");
    let mut path = None;
    for (key, value) in key_values(O, text, &["path", "readonly", "format", "cache", "serial"])? {
        match key {
            "path" if value.is_empty() => return Err(OptionError::Missing { option: O, key: "path=FILE" }),
            "path" => path = Some(PathBuf::from(value)),
            "readonly" => disk.read_only = parse_bool(O, key, value)?,
            "format" => disk.format = Some(value.parse().map_err(|e: String| bad(O, e))?),
            "cache" => {
                disk.direct = match value {
                    "none" => true,
                    "writeback" => false,
                    other => return Err(bad(O, format!("cache must be writeback or none, not '{other}'"))),
                }
            }
            _ => {
                let ok = !value.is_empty()
                    && value.len() <= SERIAL_MAX_LEN
                    && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                if !ok {
                    return Err(bad(O, "serial must be 1 to 20 printable ASCII characters without commas"));
                }
                disk.serial = Some(value.to_owned());
            }
        }
    }
    disk.path = path.ok_or(OptionError::Missing { option: O, key: "path=FILE" })?;
    Ok(disk)
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

/// `--net tap=NAME[,mac=52:54:00:12:34:56]`
pub fn parse_net(text: &str) -> Result<NetConfig, OptionError> {
    const O: &str = "--net";
    let (mut tap, mut mac) = (None, None);
    for (key, value) in key_values(O, text, &["tap", "mac"])? {
        if key == "tap" {
            if value.is_empty() || value.len() > 15 || value.contains('/') {
                return Err(bad(O, "tap name must be 1 to 15 bytes"));
            }
            tap = Some(value.to_owned());
        } else {
            mac = Some(parse_mac(value).map_err(|e| bad(O, e))?);
        }
    }
    Ok(NetConfig { tap: tap.ok_or(OptionError::Missing { option: O, key: "tap=NAME" })?, mac })
}

/// `--vsock cid=N,socket=PATH`
pub fn parse_vsock(text: &str) -> Result<VsockConfig, OptionError> {
    const O: &str = "--vsock";
    let (mut cid, mut socket) = (None, None);
    for (key, value) in key_values(O, text, &["cid", "socket"])? {
        if key == "cid" {
            let n = value.parse::<u64>().ok();
            // Linux takes u32 cids; 0..=2 are hypervisor/local/host, u32::MAX is ANY.
            let n = n.filter(|n| (3..u64::from(u32::MAX)).contains(n));
            cid =
                Some(n.ok_or_else(|| bad(O, format!("cid '{value}' is not a number from 3 to 4294967294")))?);
        } else {
            if value.is_empty() {
                return Err(bad(O, "socket path must not be empty"));
            }
            socket = Some(PathBuf::from(value));
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or(OptionError::Missing { option: O, key: "cid=N (3 or more)" })?,
        socket: socket.ok_or(OptionError::Missing { option: O, key: "socket=PATH" })?,
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
    text
}

/// `--net` text for `net` (parses back to the same config).
pub fn net_option(net: &NetConfig) -> String {
    let mut text = format!("tap={}", net.tap);
    if let Some(mac) = net.mac {
        let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(",mac={}", hex.join(":")));
    }
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

    #[test]
    fn disks_parse_full_and_minimal() {
        let c = parse_disk("path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1").unwrap();
        assert_eq!(
            c,
            DiskConfig {
                path: "/img/root.qcow2".into(),
                read_only: true,
                format: Some(ImageFormat::Qcow2),
                serial: Some("root-1".into()),
                direct: false,
            }
        );
        assert_eq!(parse_disk("path=a.img").unwrap(), DiskConfig::new("a.img"));
        assert!(parse_disk("path=a.img,cache=none").unwrap().direct);
        assert!(!parse_disk("path=a.img,cache=writeback").unwrap().direct);
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for (input, want) in [
            ("readonly=on", "--disk needs path=FILE"),
            ("path=", "--disk needs path=FILE"),
            ("path=a,ro", "--disk: 'ro' is not key=value"),
            ("path=a,cache=directsync", "--disk: cache must be writeback or none, not 'directsync'"),
            ("path=a,cache=none,cache=none", "--disk: key 'cache' given twice"),
            (
                "path=a,aio=native",
                "--disk: unknown key 'aio' (expected path, readonly, format, cache, serial)",
            ),
            ("path=a,readonly=maybe", "--disk: readonly must be on or off, not 'maybe'"),
            (
                "path=a,serial=123456789012345678901",
                "--disk: serial must be 1 to 20 printable ASCII characters without commas",
            ),
            ("path=a,format=vmdk", "--disk: unknown image format 'vmdk' (expected raw or qcow2)"),
        ] {
            assert_eq!(parse_disk(input).unwrap_err().to_string(), want, "{input}");
        }
        for (input, want) in [
            ("mac=52:54:00:12:34:56", "--net needs tap=NAME"),
            ("tap=", "--net: tap name must be 1 to 15 bytes"),
            ("tap=aaaaaaaaaaaaaaaa", "--net: tap name must be 1 to 15 bytes"),
            ("tap=t,tap=u", "--net: key 'tap' given twice"),
            ("tap=t,x=1", "--net: unknown key 'x' (expected tap, mac)"),
        ] {
            assert_eq!(parse_net(input).unwrap_err().to_string(), want, "{input}");
        }
        for mac in [
            "01:00:00:00:00:01",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:0:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert!(
                parse_net(&format!("tap=t,mac={mac}")).unwrap_err().to_string().contains("not a unicast MAC"),
                "{mac}"
            );
        }
        for (input, want) in [
            ("socket=/a", "--vsock needs cid=N (3 or more)"),
            ("cid=3", "--vsock needs socket=PATH"),
            ("cid=3,socket=", "--vsock: socket path must not be empty"),
            ("cid=3,socket=/a,x=1", "--vsock: unknown key 'x' (expected cid, socket)"),
            ("cid=3,cid=4,socket=/a", "--vsock: key 'cid' given twice"),
            ("cid", "--vsock: 'cid' is not key=value"),
        ] {
            assert_eq!(parse_vsock(input).unwrap_err().to_string(), want, "{input}");
        }
        for cid in ["0", "1", "2", "4294967295", "-3", "x", ""] {
            assert!(
                parse_vsock(&format!("cid={cid},socket=/a"))
                    .unwrap_err()
                    .to_string()
                    .contains("is not a number"),
                "{cid}"
            );
        }
        assert_eq!(parse_vsock("socket=/tmp/a,cid=4294967294").unwrap().cid, 4_294_967_294);
        assert_eq!(
            parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap().mac(),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
    }

    #[test]
    fn options_round_trip_through_text_and_json() {
        let config = VirtioConfig {
            disks: vec![
                parse_disk("path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1").unwrap(),
                parse_disk("path=data.img,cache=none").unwrap(),
            ],
            nets: vec![parse_net("tap=tap0,mac=52:54:00:ab:cd:ef").unwrap(), parse_net("tap=tap1").unwrap()],
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
        assert!(json.contains("\"path=data.img,cache=none\""), "{json}");
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
