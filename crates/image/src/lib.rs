//! Guest images for vmr: `vmr image pull` assembles the default guest (a Debian kernel and a
//! busybox initramfs) and caches it; `vmr run` without `--kernel` boots it.
//!
//! Layout of the cache directory ([`default_image_dir`]):
//! `vmlinux` (ELF, PVH entry), `bzImage` (the package's vmlinuz), `initramfs.cpio.gz`,
//! `manifest.json` (package versions, sha256 and size of each file, the command line).

pub mod apt;
pub mod cpio;
pub mod deb;
pub mod guest;
pub mod modules;
pub mod progress;
pub mod vmlinux;

mod pull;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use guest::BOOT_MARKER;
pub use progress::{Progress, Silent, StderrProgress};
pub use pull::pull;

/// Kernel command line for the default guest. `reboot=k` resets through the i8042 (the
/// microVM's reset path), `panic=-1` reboots at once on a panic so the VMM exits instead of
/// hanging, `pci=off` skips probing a bus a microVM does not have; `quiet` keeps the console
/// for the guest's own output.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet";
/// The Debian meta package whose dependency names the kernel to fetch.
pub const DEFAULT_KERNEL_META: &str = "linux-image-amd64";
/// The package that provides a static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// A bootable guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Uncompressed ELF kernel with a PVH entry note.
    pub kernel: PathBuf,
    /// The same kernel as a bzImage (for the bzImage boot path).
    pub bzimage: PathBuf,
    /// gzip-compressed newc initramfs.
    pub initrd: PathBuf,
    /// Kernel command line to boot with.
    pub cmdline: String,
}

/// Options of [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Cache directory; `None` means [`default_image_dir`].
    pub dir: Option<PathBuf>,
    /// Use `.deb` files from this directory instead of apt-get.
    pub from_debs: Option<PathBuf>,
    /// Rebuild even if a complete image is cached.
    pub force: bool,
    /// Meta package resolved with `apt-cache depends` to the kernel package.
    pub kernel_meta: String,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { dir: None, from_debs: None, force: false, kernel_meta: DEFAULT_KERNEL_META.to_string() }
    }
}

/// Errors of `vmr image pull`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// apt failed or is missing.
    #[error(transparent)]
    Apt(#[from] apt::AptError),
    /// A package could not be read.
    #[error(transparent)]
    Deb(#[from] deb::DebError),
    /// The vmlinux could not be extracted.
    #[error("{path}: {source}")]
    Vmlinux {
        /// The bzImage inside the package.
        path: String,
        /// The underlying error.
        #[source]
        source: vmlinux::VmlinuxError,
    },
    /// Module dependencies could not be resolved.
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    /// Writing the initramfs failed.
    #[error("building the initramfs: {0}")]
    Cpio(#[from] cpio::CpioError),
    /// A package lacks an expected file.
    #[error("{package}: package has no {what}")]
    MissingFile {
        /// The package file.
        package: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// `--from-debs` directory lacks a package.
    #[error("no {0} .deb in {1}")]
    NoDebInDir(&'static str, PathBuf),
    /// A cache file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One cached file as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name inside the image directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256.
    pub sha256: String,
}

/// `manifest.json` of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// e.g. `linux-image-6.1.0-56-amd64`.
    pub kernel_package: String,
    /// e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// e.g. `1:1.35.0-4+deb12u1+b1`.
    pub busybox_version: String,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Whether the vmlinux has a PVH entry note.
    pub pvh: bool,
    /// Default command line.
    pub cmdline: String,
    /// vmlinux, bzImage, initramfs.
    pub files: Vec<FileRecord>,
    /// [`guest::recipe`] of the vmr that built the image: a cache built by a vmr with another
    /// `/init` or module list is built again (older vmrs ignore the field and keep using it).
    #[serde(default)]
    pub recipe: String,
}

/// Kernel file name in the image directory.
pub const VMLINUX_FILE: &str = "vmlinux";
/// bzImage file name in the image directory.
pub const BZIMAGE_FILE: &str = "bzImage";
/// Initramfs file name in the image directory.
pub const INITRD_FILE: &str = "initramfs.cpio.gz";
/// Manifest file name in the image directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `$XDG_CACHE_HOME/vmr/images/default`, else `~/.cache/vmr/images/default`.
pub fn default_image_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    xdg.filter(|p| p.is_absolute())
        .or_else(home)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vmr/images/default")
}

/// The default image if it is completely cached.
pub fn cached() -> Option<GuestImage> {
    cached_in(&default_image_dir())
}

/// The image in `dir` if its manifest exists and every file it lists is there with its size.
pub fn cached_in(dir: &Path) -> Option<GuestImage> {
    let manifest = read_manifest(dir)?;
    for f in &manifest.files {
        if std::fs::metadata(dir.join(&f.name)).ok()?.len() != f.size {
            return None;
        }
    }
    let has = |n: &str| manifest.files.iter().any(|f| f.name == n);
    if !(has(VMLINUX_FILE) && has(BZIMAGE_FILE) && has(INITRD_FILE)) {
        return None;
    }
    Some(GuestImage {
        kernel: dir.join(VMLINUX_FILE),
        bzimage: dir.join(BZIMAGE_FILE),
        initrd: dir.join(INITRD_FILE),
        cmdline: manifest.cmdline,
    })
}

/// Reads `manifest.json` in `dir`, if present and of the current format.
pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    (m.format == MANIFEST_FORMAT && m.recipe == guest::recipe()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_xdg_then_home() {
        // Environment is process-wide: keep every env-dependent assertion in this one test.
        let old_xdg = std::env::var_os("XDG_CACHE_HOME");
        std::env::set_var("XDG_CACHE_HOME", "/x/cache");
        assert_eq!(default_image_dir(), PathBuf::from("/x/cache/vmr/images/default"));
        std::env::set_var("XDG_CACHE_HOME", "relative");
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap();
        assert_eq!(default_image_dir(), home.join(".cache/vmr/images/default"));
        match old_xdg {
            Some(v) => std::env::set_var("XDG_CACHE_HOME", v),
            None => std::env::remove_var("XDG_CACHE_HOME"),
        }
    }

    #[test]
    fn cached_in_requires_complete_manifest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cached_in(dir.path()), None);
        let rec = |n: &str, size| FileRecord { name: n.into(), size, sha256: String::new() };
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            kernel_package: "k".into(),
            kernel_version: "1".into(),
            kernel_release: "r".into(),
            busybox_version: "b".into(),
            modules: vec![],
            pvh: true,
            cmdline: DEFAULT_CMDLINE.into(),
            files: vec![rec(VMLINUX_FILE, 3), rec(BZIMAGE_FILE, 2), rec(INITRD_FILE, 1)],
            recipe: guest::recipe(),
        };
        std::fs::write(dir.path().join(VMLINUX_FILE), b"abc").unwrap();
        std::fs::write(dir.path().join(BZIMAGE_FILE), b"ab").unwrap();
        std::fs::write(dir.path().join(INITRD_FILE), b"a").unwrap();
        let write = |m: &Manifest| {
            std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(m).unwrap()).unwrap()
        };
        write(&m);
        let img = cached_in(dir.path()).unwrap();
        assert_eq!(img.kernel, dir.path().join(VMLINUX_FILE));
        assert_eq!(img.cmdline, DEFAULT_CMDLINE);
        std::fs::write(dir.path().join(INITRD_FILE), b"ab").unwrap(); // size mismatch
        assert_eq!(cached_in(dir.path()), None);
        std::fs::write(dir.path().join(INITRD_FILE), b"a").unwrap();
        m.format = 99;
        write(&m);
        assert_eq!(cached_in(dir.path()), None);
        // Built by a vmr with another /init (or one that did not record it): built again.
        m.format = MANIFEST_FORMAT;
        m.recipe = "0123456789abcdef".into();
        write(&m);
        assert_eq!(cached_in(dir.path()), None);
        let mut v = serde_json::to_value(&m).unwrap();
        v.as_object_mut().unwrap().remove("recipe");
        std::fs::write(dir.path().join(MANIFEST_FILE), v.to_string()).unwrap();
        assert_eq!(cached_in(dir.path()), None);
    }
}
