//! What a VM is made of, as the user asked for it.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::devices::VirtioConfig;

/// Which execution backend runs the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` can run unmodified guests, the software CPU otherwise.
    #[default]
    Auto,
    Kvm,
    Emu,
}

impl FromStr for Accel {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "emu" | "tcg" => Ok(Accel::Emu),
            _ => Err(ConfigError::Accel(s.to_string())),
        }
    }
}

/// What a guest-initiated reboot does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootPolicy {
    /// vmr ends with [`crate::EXIT_REBOOT`].
    #[default]
    Exit,
    /// The VM is rebuilt from the same configuration and booted again.
    Restart,
}

impl FromStr for RebootPolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exit" => Ok(RebootPolicy::Exit),
            "restart" => Ok(RebootPolicy::Restart),
            _ => Err(ConfigError::Reboot(s.to_string())),
        }
    }
}

/// A whole VM definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub accel: Accel,
    pub reboot: RebootPolicy,
    /// Disks, network cards and the entropy device (virtio-mmio).
    #[serde(default)]
    pub virtio: VirtioConfig,
    /// Add vmr's kernel command-line hints (`pci=off`, see [`crate::cmdline`]) where the
    /// command line does not set their keys.
    #[serde(default = "default_true")]
    pub cmdline_hints: bool,
}

fn default_true() -> bool {
    true
}

impl VmConfig {
    pub const DEFAULT_MEMORY: u64 = 512 << 20;
    /// Below this Linux cannot even decompress itself.
    pub const MIN_MEMORY: u64 = 16 << 20;

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::Cpus("0: a VM needs at least one vCPU".into()));
        }
        if self.memory < Self::MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory));
        }
        Ok(())
    }

    /// The command line the guest kernel gets: `cmdline` plus the hints, if enabled.
    pub fn kernel_cmdline(&self) -> String {
        if self.cmdline_hints {
            crate::cmdline::with_hints(&self.cmdline)
        } else {
            self.cmdline.clone()
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid --accel '{0}': expected auto, kvm or emu")]
    Accel(String),
    #[error("invalid --reboot '{0}': expected exit or restart")]
    Reboot(String),
    #[error("invalid --cpus {0}")]
    Cpus(String),
    #[error("invalid memory size '{0}': expected a number with an optional K, M, G or T suffix, e.g. 512M")]
    MemorySyntax(String),
    #[error("guest memory of {} MiB is too small: vmr needs at least 16 MiB", .0 >> 20)]
    MemoryTooSmall(u64),
}

/// Parses `512M`, `4G`, `1024` (MiB when no suffix, as QEMU's `-m`), `2GiB`.
pub fn parse_memory_size(text: &str) -> Result<u64, ConfigError> {
    parse_size(text, 20).filter(|v| *v > 0).ok_or_else(|| ConfigError::MemorySyntax(text.to_string()))
}

/// The one size parser, for every size and rate option (`--memory`, `vmr image create`,
/// `--disk bw=`, `--net rx_bw=`, ...): a number with an optional K, M, G or T suffix (powers of
/// 1024; `k`, `KiB` and `KB` too). A bare number counts units of `1 << unit_shift` bytes.
/// `None` for anything else or an overflow; zero is the caller's to refuse.
pub fn parse_size(text: &str, unit_shift: u32) -> Option<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let value: u64 = number.parse().ok()?;
    let shift = match suffix.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => unit_shift,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    value.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("512"), Ok(512 << 20));
        assert_eq!(parse_memory_size("4G"), Ok(4 << 30));
        assert_eq!(parse_memory_size("4g"), Ok(4 << 30));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory_size("65536K"), Ok(64 << 20));
        assert!(parse_memory_size("").is_err());
        assert!(parse_memory_size("0").is_err());
        assert!(parse_memory_size("12Q").is_err());
        assert!(parse_memory_size("-1G").is_err());
        assert!(parse_memory_size("99999999999999T").is_err());
        assert_eq!(parse_size("1048576", 0), Some(1 << 20));
        assert_eq!(parse_size("64M", 0), Some(64 << 20));
        assert_eq!(parse_size("4k", 0), Some(4096));
        assert_eq!(parse_size("0", 0), Some(0));
        for bad in ["", "M", "1.5G", "-1", "12Q", "99999999999G"] {
            assert_eq!(parse_size(bad, 0), None, "{bad}");
        }
    }

    fn sample() -> VmConfig {
        VmConfig {
            kernel: "k".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory: 256 << 20,
            accel: Accel::Kvm,
            reboot: RebootPolicy::Exit,
            virtio: VirtioConfig::default(),
            cmdline_hints: true,
        }
    }

    #[test]
    fn validation() {
        let mut c = sample();
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 1;
        c.memory = 1 << 20;
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(1 << 20)));
    }

    #[test]
    fn cmdline_hints_can_be_turned_off() {
        let mut c = VmConfig { cmdline: "console=ttyS0".into(), ..sample() };
        assert_eq!(c.kernel_cmdline(), "console=ttyS0 pci=off");
        c.cmdline_hints = false;
        assert_eq!(c.kernel_cmdline(), "console=ttyS0");
    }
}
