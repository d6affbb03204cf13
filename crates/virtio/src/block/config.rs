//! A disk as the device takes it: plain typed options. The text forms (`--disk`, a saved
//! config) are parsed in vmr-vmm's configuration (`vmr_vmm::devices::options`).

use std::path::PathBuf;

use vmr_block::ImageFormat;

use crate::rate_limiter::RateLimiterConfig;

/// Longest serial the guest can read (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_MAX_LEN: usize = 20;

/// One disk.
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
    /// Bandwidth (bytes per second) and operations limits; the default limits nothing.
    pub rate_limiter: RateLimiterConfig,
}

impl DiskConfig {
    /// A writable disk on `path`: format probed, serial derived, host page cache, no limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            read_only: false,
            format: None,
            serial: None,
            direct: false,
            rate_limiter: RateLimiterConfig::default(),
        }
    }
}
