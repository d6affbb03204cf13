//! VM definitions: a short TOML file, checked completely before anything is saved.
//!
//! ```toml
//! name = "web1"
//! vcpus = 2
//! memory = "512M"
//! autostart = true
//! # kernel = "/boot/vmlinux"   (with initrd and cmdline; absent: the default guest)
//! [[disk]]
//! volume = "default/web1-root"   # pool/volume; with size: created at define time
//! size = "2G"
//! format = "qcow2"
//! [[disk]]
//! path = "/srv/data.img"
//! readonly = true
//! ```

use serde::{Deserialize, Serialize};
use vmr_vmm::config::{parse_memory_size, parse_size};

use crate::DaemonError;

/// A VM definition as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    pub name: String,
    #[serde(default = "one")]
    pub vcpus: u32,
    /// With a K/M/G/T suffix; MiB without.
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// auto, kvm or emu; absent: vmrd's own `--accel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// The guest CID of a virtio-vsock device (its host socket is in the VM's run folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default, rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskDef>,
    #[serde(default, rename = "nic", skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicDef>,
}

/// A network card on a vmrd network (vmrd makes its tap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicDef {
    pub network: String,
    /// Default: derived from the VM's name and the card's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One disk: a pool volume or a host path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDef {
    /// `pool/volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// With `volume`: create the volume with this size when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// raw or qcow2 (probed from the content when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default)]
    pub readonly: bool,
}

fn one() -> u32 {
    1
}
fn default_memory() -> String {
    "512M".into()
}

/// Longest VM, pool or volume name.
const MAX_NAME: usize = 64;

/// A VM, pool or volume name: letters, digits, `-`, `_`, `.`, not starting with `.`.
pub fn check_name(kind: &str, name: &str) -> Result<(), DaemonError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(DaemonError::Invalid(format!(
            "{kind} name '{name}': use 1-{MAX_NAME} letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(())
}

/// Splits `pool/volume`.
pub fn split_volume(spec: &str) -> Result<(&str, &str), DaemonError> {
    let (pool, vol) = spec
        .split_once('/')
        .ok_or_else(|| DaemonError::Invalid(format!("volume '{spec}': write it as pool/volume")))?;
    check_name("pool", pool)?;
    check_name("volume", vol)?;
    Ok((pool, vol))
}

/// A size with K/M/G/T suffix (bytes without), at least 1 byte and a multiple of 512.
pub fn parse_disk_size(text: &str) -> Result<u64, DaemonError> {
    parse_size(text, 0).filter(|s| *s > 0 && s % 512 == 0).ok_or_else(|| {
        DaemonError::Invalid(format!("size '{text}': a multiple of 512 bytes, like 10G or 512M"))
    })
}

impl VmDef {
    /// Parses and checks a definition; errors name the line, column and field.
    pub fn parse(text: &str) -> Result<VmDef, DaemonError> {
        let def: VmDef = toml::from_str(text).map_err(|e| DaemonError::Invalid(toml_error(text, &e)))?;
        def.check()?;
        Ok(def)
    }

    pub fn memory_bytes(&self) -> u64 {
        parse_memory_size(&self.memory).unwrap_or(0)
    }

    fn check(&self) -> Result<(), DaemonError> {
        check_name("VM", &self.name)?;
        let bad = |msg: String| Err(DaemonError::Invalid(format!("VM {}: {msg}", self.name)));
        if !(1..=254).contains(&self.vcpus) {
            return bad(format!("vcpus = {}: must be 1 to 254", self.vcpus));
        }
        if parse_memory_size(&self.memory).is_err() {
            return bad(format!("memory = '{}': a size like 512M or 2G", self.memory));
        }
        if self.kernel.is_none() && self.initrd.is_some() {
            return bad("initrd needs a kernel (the default guest brings its own)".into());
        }
        if let Some(accel) = &self.accel {
            if !["auto", "kvm", "emu"].contains(&accel.as_str()) {
                return bad(format!("accel = '{accel}': auto, kvm or emu"));
            }
        }
        if let Some(cid) = self.vsock_cid {
            if cid < 3 {
                return bad(format!("vsock_cid = {cid}: guest CIDs start at 3"));
            }
        }
        for (i, nic) in self.nics.iter().enumerate() {
            check_name("network", &nic.network)
                .map_err(|e| DaemonError::Invalid(format!("VM {}: nic {}: {e}", self.name, i + 1)))?;
            if let Some(mac) = &nic.mac {
                vmr_vmm::devices::options::parse_net(&format!("tap=x,mac={mac}"))
                    .map_err(|e| DaemonError::Invalid(format!("VM {}: nic {}: {e}", self.name, i + 1)))?;
            }
        }
        for (i, disk) in self.disks.iter().enumerate() {
            disk.check()
                .map_err(|e| DaemonError::Invalid(format!("VM {}: disk {}: {e}", self.name, i + 1)))?;
        }
        Ok(())
    }
}

impl DiskDef {
    fn check(&self) -> Result<(), String> {
        match (&self.volume, &self.path) {
            (Some(v), None) => split_volume(v).map(drop).map_err(|e| e.to_string())?,
            (None, Some(p)) if p.starts_with('/') => {}
            (None, Some(p)) => return Err(format!("path '{p}' must be absolute")),
            _ => return Err("give exactly one of volume = \"pool/volume\" or path = \"/file\"".into()),
        }
        if let Some(size) = &self.size {
            if self.volume.is_none() {
                return Err("size creates a volume: it needs volume = \"pool/volume\"".into());
            }
            parse_disk_size(size).map_err(|e| e.to_string())?;
        }
        if let Some(format) = &self.format {
            if format != "raw" && format != "qcow2" {
                return Err(format!("format '{format}': raw or qcow2"));
            }
        }
        Ok(())
    }
}

/// One line: where in the file, and what is wrong.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_definition_parses_with_defaults() {
        let def =
            VmDef::parse("name = \"web1\"\n[[disk]]\nvolume = \"default/web1\"\nsize = \"1G\"\n").unwrap();
        assert_eq!((def.vcpus, def.memory_bytes(), def.autostart), (1, 512 << 20, false));
        assert_eq!(def.disks[0].volume.as_deref(), Some("default/web1"));
        // Round trip: dumpconfig prints what define reads back.
        assert_eq!(VmDef::parse(&toml::to_string(&def).unwrap()).unwrap(), def);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let err = VmDef::parse("name = \"a\"\nvcpus = 2\ncolour = \"red\"\n").unwrap_err().to_string();
        assert!(err.starts_with("line 3, column 1: unknown field `colour`"), "{err}");
        let err = VmDef::parse("name = \"a\"\nvcpus = \"two\"\n").unwrap_err().to_string();
        assert!(err.starts_with("line 2, column 9:") && err.contains("u32"), "{err}");
        let err = VmDef::parse("name = \"a\"\nmemory = \"lots\"\n").unwrap_err().to_string();
        assert!(err.contains("memory = 'lots'"), "{err}");
        let err = VmDef::parse("name = \"a b\"\n").unwrap_err().to_string();
        assert!(err.contains("VM name 'a b'"), "{err}");
        let err = VmDef::parse("name = \"a\"\n[[disk]]\nvolume = \"nopool\"\n").unwrap_err().to_string();
        assert!(err.contains("disk 1") && err.contains("pool/volume"), "{err}");
        let err =
            VmDef::parse("name = \"a\"\n[[disk]]\npath = \"/x\"\nsize = \"1G\"\n").unwrap_err().to_string();
        assert!(err.contains("size creates a volume"), "{err}");
        assert!(VmDef::parse("vcpus = 1\n").unwrap_err().to_string().contains("missing field `name`"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_disk_size("64M").unwrap(), 64 << 20);
        for bad in ["0", "1000", "x", ""] {
            assert!(parse_disk_size(bad).is_err(), "{bad}");
        }
    }
}
