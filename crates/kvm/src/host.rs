//! Host checks: is the KVM of this machine one that can run an unmodified Linux guest?

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why this host's KVM cannot run unmodified guests (each one line, with advice).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HostCheckError {
    #[error("{} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or use --accel emu)", .0.display())]
    NoDevice(PathBuf),
    #[error(
        "{} is served by kvm_pvm, which emulates every guest instruction and cannot boot Linux; use --accel emu",
        .0.display()
    )]
    KvmPvm(PathBuf),
    #[error(
        "{} exists but the CPU has no vmx/svm flag (no hardware virtualization): this KVM cannot run \
         unmodified guests; use --accel emu",
        .0.display()
    )]
    NoHardwareVirtualization(PathBuf),
}

impl HostCheckError {
    /// The reason without the advice to use the software CPU (for `--accel auto`, which takes
    /// that advice itself).
    pub fn reason(&self) -> String {
        match self {
            HostCheckError::NoDevice(dev) => {
                format!("{} does not exist: this host has no KVM", dev.display())
            }
            HostCheckError::KvmPvm(dev) => format!(
                "{} is served by kvm_pvm, which emulates every guest instruction and cannot boot Linux",
                dev.display()
            ),
            HostCheckError::NoHardwareVirtualization(dev) => {
                format!(
                    "{} exists but the CPU has no vmx/svm flag (no hardware virtualization)",
                    dev.display()
                )
            }
        }
    }
}

/// Where the checks look; a struct so tests can point them at fake files.
pub(crate) struct HostPaths<'a> {
    pub kvm_dev: &'a Path,
    pub kvm_pvm_module: &'a Path,
    pub cpuinfo: &'a Path,
}

impl HostPaths<'static> {
    pub(crate) fn system() -> Self {
        HostPaths {
            kvm_dev: Path::new("/dev/kvm"),
            kvm_pvm_module: Path::new("/sys/module/kvm_pvm"),
            cpuinfo: Path::new("/proc/cpuinfo"),
        }
    }
}

/// Tells whether this host's `/dev/kvm` can run unmodified guests (Linux, firmware).
///
/// Returns `Err` with a one-line reason when `/dev/kvm` is missing, when it is served by the
/// `kvm_pvm` module (which emulates every guest instruction and cannot boot Linux), or when the
/// CPU has neither the `vmx` nor the `svm` flag. The VMM uses this for `--accel auto` and to
/// refuse `--accel kvm` for Linux guests; tiny hand-made guests still run on such a KVM.
pub fn can_run_unmodified_guests() -> Result<(), HostCheckError> {
    check_host(&HostPaths::system())
}

pub(crate) fn check_host(paths: &HostPaths<'_>) -> Result<(), HostCheckError> {
    if !paths.kvm_dev.exists() {
        return Err(HostCheckError::NoDevice(paths.kvm_dev.to_path_buf()));
    }
    if paths.kvm_pvm_module.exists() {
        return Err(HostCheckError::KvmPvm(paths.kvm_dev.to_path_buf()));
    }
    // Without /proc/cpuinfo we cannot tell; assume the KVM is real rather than refuse it.
    let Ok(cpuinfo) = std::fs::read_to_string(paths.cpuinfo) else {
        return Ok(());
    };
    if !cpu_has_virtualization(&cpuinfo) {
        return Err(HostCheckError::NoHardwareVirtualization(paths.kvm_dev.to_path_buf()));
    }
    Ok(())
}

/// True if some `flags` line of a `/proc/cpuinfo` text lists `vmx` or `svm`.
pub(crate) fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        dir: std::path::PathBuf,
    }

    impl Fake {
        fn new(name: &str, dev: bool, pvm: bool, cpuinfo: Option<&str>) -> Fake {
            let dir = std::env::temp_dir().join(format!("vmr-kvm-host-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            if dev {
                std::fs::write(dir.join("kvm"), b"").unwrap();
            }
            if pvm {
                std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
            }
            if let Some(text) = cpuinfo {
                std::fs::write(dir.join("cpuinfo"), text).unwrap();
            }
            Fake { dir }
        }

        fn check(&self) -> Result<(), String> {
            self.check_typed().map_err(|e| e.to_string())
        }

        fn check_typed(&self) -> Result<(), HostCheckError> {
            check_host(&HostPaths {
                kvm_dev: &self.dir.join("kvm"),
                kvm_pvm_module: &self.dir.join("kvm_pvm"),
                cpuinfo: &self.dir.join("cpuinfo"),
            })
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const AMD: &str =
        "processor\t: 0\nflags\t\t: fpu vme de pse svm lm\n\nprocessor\t: 1\nflags\t\t: fpu svm\n";
    const NO_VIRT: &str = "processor\t: 0\nflags\t\t: fpu vme de pse lm hypervisor\n";

    #[test]
    fn flags_detection() {
        assert!(cpu_has_virtualization(AMD));
        assert!(cpu_has_virtualization("flags : a b vmx c\n"));
        assert!(!cpu_has_virtualization(NO_VIRT));
        // `svm` in another field or as part of a longer flag does not count.
        assert!(!cpu_has_virtualization("model name : svm cpu\nflags : svm_lock vmxx\n"));
    }

    #[test]
    fn missing_device_is_reported() {
        let err = Fake::new("nodev", false, false, Some(AMD)).check().unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("--accel emu"), "{err}");
    }

    #[test]
    fn errors_are_typed_and_the_reason_has_no_advice() {
        let fake = Fake::new("typed", true, true, Some(AMD));
        let err = fake.check_typed().unwrap_err();
        assert_eq!(err, HostCheckError::KvmPvm(fake.dir.join("kvm")));
        assert!(!err.reason().contains("--accel"), "{}", err.reason());
        assert!(err.reason().contains("kvm_pvm"));
    }

    #[test]
    fn kvm_pvm_is_refused() {
        let err = Fake::new("pvm", true, true, Some(AMD)).check().unwrap_err();
        assert!(err.contains("kvm_pvm"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn no_vmx_svm_is_refused() {
        let err = Fake::new("novirt", true, false, Some(NO_VIRT)).check().unwrap_err();
        assert!(err.contains("vmx/svm"), "{err}");
    }

    #[test]
    fn real_kvm_is_accepted() {
        assert_eq!(Fake::new("real", true, false, Some(AMD)).check(), Ok(()));
        assert_eq!(Fake::new("nocpuinfo", true, false, None).check(), Ok(()));
    }
}
