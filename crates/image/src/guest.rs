//! The default guest's initramfs: busybox, its applet links, virtio modules and an `/init`
//! that prints a boot marker and gives the console a job-control shell.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::cpio::{CpioError, CpioWriter};

/// The line `/init` prints once the guest userland runs; tests wait for it.
pub const BOOT_MARKER: &str = "vmr-guest: init reached";

/// Modules loaded by `/init` when present: virtio devices over MMIO, vsock, and the ACPI
/// power button with its event device (busybox `acpid` turns a press into a power-off).
pub const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "evdev",
    "button",
];

/// What the default initramfs is made of besides the packages: a hash of `/init` and the module
/// list. Kept in the manifest so that a cached image from a vmr that built it otherwise is
/// built again.
pub fn recipe() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(init_script().as_bytes());
    h.update(WANTED_MODULES.join(" ").as_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The line `/init`'s power-button action prints before it powers the guest off.
pub const POWER_BUTTON_MARKER: &str = "vmr-guest: power button pressed, powering off";

/// Applets linked when the busybox binary cannot be asked for its list (`/init` then runs
/// `busybox --install -s` for the rest).
const FALLBACK_APPLETS: &[&str] = &[
    "bin/sh",
    "bin/mount",
    "bin/mkdir",
    "bin/cat",
    "bin/echo",
    "bin/hostname",
    "sbin/insmod",
    "sbin/poweroff",
    "sbin/reboot",
    "bin/setsid",
    "bin/cttyhack",
    "bin/ls",
];

/// The `/init` script. Module parameters given on the kernel command line as
/// `module.param=value` are passed to insmod (the kernel only applies them to built-in code;
/// for modules, modprobe normally does this), so `virtio_mmio.device=...` works.
pub fn init_script() -> String {
    format!(
        r#"#!/bin/sh
# vmr default guest /init (written by `vmr image pull`).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -e /bin/ls ] || /bin/busybox --install -s
hostname vmr
cmdline=$(cat /proc/cmdline)
load() {{
    params=""
    for arg in $cmdline; do
        case "$arg" in "$1".*) params="$params ${{arg#"$1".}}" ;; esac
    done
    [ -e "/lib/modules/$1.ko" ] && insmod "/lib/modules/$1.ko" $params 2>/dev/null
}}
for m in $(cat /etc/vmr/modules 2>/dev/null); do load "$m"; done
# The ACPI power button (`vmr ctl shutdown`): busybox acpid runs /etc/acpi/PWRF/00000080.
if ls /dev/input/event* >/dev/null 2>&1 && command -v acpid >/dev/null; then
    mkdir -p /etc/acpi/PWRF
    printf '#!/bin/sh\necho "{POWER_BUTTON_MARKER}" > /dev/console\nsync\npoweroff -f\n' \
        > /etc/acpi/PWRF/00000080
    chmod 755 /etc/acpi/PWRF/00000080
    acpid -c /etc/acpi -l /run/acpid.log
fi
echo "{BOOT_MARKER}"
case " $cmdline " in *" vmr.poweroff "*) poweroff -f ;; esac
setsid cttyhack sh -l
echo "vmr-guest: shell exited, powering off"
poweroff -f
"#
    )
}

const PROFILE: &str = "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nPS1='vmr# '\n";

/// What goes into the default initramfs.
pub struct GuestContents<'a> {
    /// The static busybox binary.
    pub busybox: &'a [u8],
    /// Applet paths to link to busybox (e.g. `usr/bin/wc`), from [`busybox_applets`].
    pub applets: &'a [String],
    /// `(module name, .ko bytes)` in load order.
    pub modules: &'a [(String, Vec<u8>)],
}

/// Writes the default initramfs (uncompressed newc) to `out`.
pub fn write_initramfs<W: Write>(out: W, c: &GuestContents<'_>) -> Result<W, CpioError> {
    let mut w = CpioWriter::new(out);
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc/vmr", "lib/modules", "root", "tmp"] {
        w.add_dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    for d in ["proc", "sys", "dev", "run"] {
        w.add_dir(d, 0o755)?;
    }
    w.add_char_dev("dev/console", 0o600, 5, 1)?;
    w.add_char_dev("dev/null", 0o666, 1, 3)?;
    w.add_file("bin/busybox", c.busybox, 0o755)?;
    for applet in c.applets {
        let applet = applet.trim_start_matches('/');
        if applet == "bin/busybox" {
            continue;
        }
        w.add_symlink(applet, "/bin/busybox")?;
    }
    let mut order = String::new();
    for (name, ko) in c.modules {
        w.add_file(&format!("lib/modules/{name}.ko"), ko, 0o644)?;
        order.push_str(name);
        order.push('\n');
    }
    w.add_file("etc/vmr/modules", order.as_bytes(), 0o644)?;
    w.add_file("etc/profile", PROFILE.as_bytes(), 0o644)?;
    w.add_file("init", init_script().as_bytes(), 0o755)?;
    w.finish()
}

/// Asks the busybox binary at `path` for its applets (`--list-full`); falls back to a fixed
/// core list if it cannot run (e.g. a foreign architecture).
pub fn busybox_applets(path: &Path) -> Vec<String> {
    let listed = Command::new(path)
        .arg("--list-full")
        .output()
        .ok()
        .and_then(|o| o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned()));
    let mut applets: Vec<String> = match listed {
        Some(text) => text
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_string())
            .filter(|l| !l.is_empty() && !l.contains("..") && !l.ends_with('/'))
            .collect(),
        None => Vec::new(),
    };
    if applets.is_empty() {
        applets = FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect();
    }
    // `/init` runs under /bin/sh whatever the list says.
    if !applets.iter().any(|a| a == "bin/sh") {
        applets.push("bin/sh".into());
    }
    applets.sort();
    applets.dedup();
    applets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse_newc, S_IFLNK};

    #[test]
    fn initramfs_has_init_busybox_links_and_modules() {
        let applets = vec!["bin/sh".to_string(), "usr/sbin/chroot".to_string(), "bin/busybox".into()];
        let modules = vec![("vsock".to_string(), b"ko1".to_vec()), ("virtio_mmio".into(), b"ko2".to_vec())];
        let c = GuestContents { busybox: b"BB", applets: &applets, modules: &modules };
        let raw = write_initramfs(Vec::new(), &c).unwrap();
        let entries = parse_newc(&raw).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(get("bin/busybox").data, b"BB");
        assert_eq!(get("bin/sh").data, b"/bin/busybox");
        assert_eq!(get("usr/sbin/chroot").data, b"/bin/busybox");
        assert_eq!(get("usr/sbin/chroot").mode & 0o170000, S_IFLNK);
        assert_eq!(get("etc/vmr/modules").data, b"vsock\nvirtio_mmio\n");
        assert_eq!(get("lib/modules/virtio_mmio.ko").data, b"ko2");
        assert_eq!(get("dev/console").rdev, (5, 1));
        let init = String::from_utf8(get("init").data.clone()).unwrap();
        assert!(init.starts_with("#!/bin/sh\n"));
        assert!(init.contains(BOOT_MARKER));
        assert!(init.contains("setsid cttyhack sh"));
        assert!(init.trim_end().ends_with("poweroff -f"));
        assert_eq!(get("init").mode & 0o777, 0o755);
        assert_eq!(entries.iter().filter(|e| e.name == "bin/busybox").count(), 1);
    }

    #[test]
    fn init_script_passes_module_params_in_sh() {
        // Run the module-parameter logic of /init under the host's sh with a fake insmod.
        let dir = tempfile::tempdir().unwrap();
        let script = init_script();
        let start = script.find("load() {").unwrap();
        let end = script.find("for m in").unwrap();
        let test = format!(
            "insmod() {{ echo \"insmod $*\"; }}\ncmdline='console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 vsock.x=1'\n{}\nload virtio_mmio\n",
            script[start..end].replace("/lib/modules", dir.path().to_str().unwrap())
        );
        std::fs::write(dir.path().join("virtio_mmio.ko"), b"").unwrap();
        let out = Command::new("sh").arg("-c").arg(&test).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("virtio_mmio.ko device=4K@0xd0000000:5 device=4K@0xd0001000:6"),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("x=1"));
    }

    #[test]
    fn applets_fallback_when_binary_cannot_run() {
        let applets = busybox_applets(Path::new("/nonexistent/busybox"));
        assert!(applets.contains(&"bin/sh".to_string()));
        assert!(applets.contains(&"sbin/poweroff".to_string()));
    }
}
