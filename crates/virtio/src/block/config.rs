//! `--disk path=root.img[,readonly=on][,format=raw|qcow2][,cache=writeback|none][,serial=ID]
//! [,bw=RATE][,iops=N]`

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use vmr_block::ImageFormat;

use crate::rate_limiter::{parse_rate, RateLimiterConfig, TokenBucketConfig};

/// Longest serial the guest can read (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_MAX_LEN: usize = 20;

/// One `--disk` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// `None`: probe (a probed qcow2 may not have a backing file).
    pub format: Option<ImageFormat>,
    /// Up to 20 printable ASCII characters; `None` derives one from the image path.
    pub serial: Option<String>,
    /// `cache=none`: O_DIRECT on the image (raw only); `cache=writeback` (default): the host
    /// page cache, with guest flushes made durable by fdatasync.
    pub direct: bool,
    /// `bw=` (bytes per second) and `iops=`; the default limits nothing.
    pub rate_limiter: RateLimiterConfig,
}

/// Why a `--disk` option was rejected (one line each).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiskConfigError {
    #[error("--disk needs path=FILE")]
    MissingPath,
    #[error("--disk: '{0}' is not key=value")]
    NotKeyValue(String),
    #[error("--disk: unknown key '{0}' (expected path, readonly, format, cache, serial, bw, iops)")]
    UnknownKey(String),
    #[error("--disk: key '{0}' given twice")]
    Duplicate(String),
    #[error("--disk: readonly must be on or off, not '{0}'")]
    BadBool(String),
    #[error("--disk: cache must be writeback or none, not '{0}'")]
    BadCache(String),
    #[error("--disk: {0}")]
    BadFormat(String),
    #[error("--disk: serial must be 1 to 20 printable ASCII characters without commas")]
    BadSerial,
    #[error("--disk: {0} must be a rate per second like 1000, 512K or 10M, not '{1}'")]
    BadRate(&'static str, String),
}

fn parse_bool(v: &str) -> Result<bool, DiskConfigError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(DiskConfigError::BadBool(other.to_owned())),
    }
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut path, mut read_only, mut format, mut serial, mut direct) = (None, None, None, None, None);
        let (mut bw, mut iops) = (None, None);
        for item in s.split(',') {
            let (key, value) =
                item.split_once('=').ok_or_else(|| DiskConfigError::NotKeyValue(item.to_owned()))?;
            let dup = || DiskConfigError::Duplicate(key.to_owned());
            match key {
                "path" if path.is_none() && !value.is_empty() => path = Some(PathBuf::from(value)),
                "path" if value.is_empty() => return Err(DiskConfigError::MissingPath),
                "readonly" if read_only.is_none() => read_only = Some(parse_bool(value)?),
                "format" if format.is_none() => {
                    format = Some(value.parse().map_err(DiskConfigError::BadFormat)?)
                }
                "cache" if direct.is_none() => {
                    direct = Some(match value {
                        "none" => true,
                        "writeback" => false,
                        other => return Err(DiskConfigError::BadCache(other.to_owned())),
                    })
                }
                "serial" if serial.is_none() => {
                    let ok = !value.is_empty()
                        && value.len() <= SERIAL_MAX_LEN
                        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                    if !ok {
                        return Err(DiskConfigError::BadSerial);
                    }
                    serial = Some(value.to_owned());
                }
                "bw" if bw.is_none() => {
                    bw = Some(parse_rate(value).ok_or_else(|| DiskConfigError::BadRate("bw", value.into()))?)
                }
                "iops" if iops.is_none() => {
                    iops = Some(
                        parse_rate(value).ok_or_else(|| DiskConfigError::BadRate("iops", value.into()))?,
                    )
                }
                "path" | "readonly" | "format" | "cache" | "serial" | "bw" | "iops" => return Err(dup()),
                other => return Err(DiskConfigError::UnknownKey(other.to_owned())),
            }
        }
        Ok(DiskConfig {
            path: path.ok_or(DiskConfigError::MissingPath)?,
            read_only: read_only.unwrap_or(false),
            format,
            serial,
            direct: direct.unwrap_or(false),
            rate_limiter: RateLimiterConfig {
                bandwidth: bw.and_then(TokenBucketConfig::per_second),
                ops: iops.and_then(TokenBucketConfig::per_second),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_options() {
        let c: DiskConfig = "path=/img/root.qcow2,readonly=on,format=qcow2,serial=root-1".parse().unwrap();
        assert_eq!(
            c,
            DiskConfig {
                path: "/img/root.qcow2".into(),
                read_only: true,
                format: Some(ImageFormat::Qcow2),
                serial: Some("root-1".into()),
                direct: false,
                rate_limiter: RateLimiterConfig::default(),
            }
        );
        let c: DiskConfig = "path=a.img,bw=10M,iops=1000".parse().unwrap();
        assert_eq!(c.rate_limiter.bandwidth.unwrap().rate_per_second(), 10 << 20);
        assert_eq!(c.rate_limiter.ops.unwrap().rate_per_second(), 1000);
        let c: DiskConfig = "path=a.img".parse().unwrap();
        assert_eq!((c.read_only, c.format, c.serial, c.direct), (false, None, None, false));
        assert!("path=a.img,cache=none".parse::<DiskConfig>().unwrap().direct);
        assert!(!"path=a.img,cache=writeback".parse::<DiskConfig>().unwrap().direct);
    }

    #[test]
    fn rejects_bad_options_with_one_line_errors() {
        let cases = [
            ("readonly=on", DiskConfigError::MissingPath),
            ("path=", DiskConfigError::MissingPath),
            ("path=a,ro", DiskConfigError::NotKeyValue("ro".into())),
            ("path=a,cache=directsync", DiskConfigError::BadCache("directsync".into())),
            ("path=a,cache=none,cache=none", DiskConfigError::Duplicate("cache".into())),
            ("path=a,aio=native", DiskConfigError::UnknownKey("aio".into())),
            ("path=a,path=b", DiskConfigError::Duplicate("path".into())),
            ("path=a,readonly=maybe", DiskConfigError::BadBool("maybe".into())),
            ("path=a,serial=123456789012345678901", DiskConfigError::BadSerial),
            ("path=a,serial=", DiskConfigError::BadSerial),
            ("path=a,bw=fast", DiskConfigError::BadRate("bw", "fast".into())),
            ("path=a,iops=1.5", DiskConfigError::BadRate("iops", "1.5".into())),
            ("path=a,iops=1,iops=2", DiskConfigError::Duplicate("iops".into())),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<DiskConfig>().unwrap_err(), want, "{input}");
        }
        let e = "path=a,format=vmdk".parse::<DiskConfig>().unwrap_err().to_string();
        assert_eq!(e, "--disk: unknown image format 'vmdk' (expected raw or qcow2)");
    }
}
