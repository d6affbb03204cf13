//! The Linux KVM backend of vmr.
//!
//! The only crate of vmr that talks to kvm-ioctls / kvm-bindings. It implements the
//! backend-neutral traits of `vmr-hypervisor` ([`Hypervisor`], [`vmr_hypervisor::Vm`],
//! [`vmr_hypervisor::Vcpu`], [`vmr_hypervisor::VcpuKicker`], [`vmr_hypervisor::IrqChip`]) and
//! converts KVM's register structs to and from the plain state structs.
//!
//! ```no_run
//! use vmr_hypervisor::{Hypervisor, VmConfig};
//! vmr_kvm::can_run_unmodified_guests().expect("a KVM that boots Linux");
//! let kvm = vmr_kvm::Kvm::new()?;
//! let vm = kvm.create_vm(&VmConfig { vcpus: 1 })?;
//! # Ok::<(), vmr_hypervisor::HypervisorError>(())
//! ```

mod convert;
mod host;
mod kick;
mod vcpu;
mod vm;
mod xsave;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;
use vmr_hypervisor::{CpuidEntry, Hypervisor, HypervisorError, Result, Vm, VmConfig};

pub use host::{can_run_unmodified_guests, HostCheckError};
pub use kick::{kick_signal, KICK_SIGNAL_OFFSET};
pub use vcpu::KvmVcpu;
pub use vm::{KvmIrqChip, KvmVm, IDENTITY_MAP_ADDRESS, TSS_ADDRESS};

/// The capabilities vmr relies on, with the names KVM's documentation uses.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::Xsave, "KVM_CAP_XSAVE"),
];

/// An open `/dev/kvm` that offers everything vmr needs.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks its API version and capabilities.
    ///
    /// Every error is one line naming the problem and the fix. This does not tell whether the
    /// KVM can boot Linux: see [`can_run_unmodified_guests`].
    pub fn new() -> Result<Kvm> {
        Kvm::with_path(Path::new("/dev/kvm"))
    }

    /// As [`Kvm::new`], with another device node.
    pub fn with_path(path: &Path) -> Result<Kvm> {
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            HypervisorError::Invalid(format!("KVM device path {} contains a NUL byte", path.display()))
        })?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&cpath).map_err(|e| open_error(path, e.errno()))?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION as i32 {
            return Err(HypervisorError::Unavailable(format!(
                "{} speaks KVM API version {version}, vmr needs version {KVM_API_VERSION}",
                path.display()
            )));
        }
        if let Some((_, name)) = REQUIRED_CAPS.iter().find(|(cap, _)| !kvm.check_extension(*cap)) {
            return Err(HypervisorError::MissingCapability { backend: "kvm", what: (*name).to_string() });
        }
        Ok(Kvm { kvm })
    }
}

/// The one-line error for a failed open of the KVM device.
fn open_error(path: &Path, errno: i32) -> HypervisorError {
    let dev = path.display();
    let text = match errno {
        libc::ENOENT => {
            format!("{dev} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or use --accel emu)")
        }
        libc::EACCES | libc::EPERM => format!(
            "permission denied opening {dev}: add your user to the 'kvm' group (then log in again) or run \
             as root, or use --accel emu"
        ),
        libc::ENXIO | libc::ENODEV => {
            format!("{dev} has no KVM driver behind it (load kvm_intel/kvm_amd, or use --accel emu)")
        }
        _ => format!("cannot open {dev}: {}", std::io::Error::from_raw_os_error(errno)),
    };
    HypervisorError::Unavailable(text)
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn max_vcpus(&self) -> u32 {
        u32::try_from(self.kvm.get_max_vcpus()).unwrap_or(u32::MAX)
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid =
            self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(vm::os("KVM_GET_SUPPORTED_CPUID"))?;
        let mut entries: Vec<CpuidEntry> = cpuid.as_slice().iter().map(convert::cpuid_from_kvm).collect();
        // KVM emulates the TSC-deadline timer in its LAPIC but leaves the CPUID bit to user
        // space (KVM_GET_SUPPORTED_CPUID omits it): set it when the capability is there, as
        // QEMU and Firecracker do, so Linux skips LAPIC timer calibration.
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            set_tsc_deadline(&mut entries);
        }
        Ok(entries)
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>> {
        let max = self.max_vcpus();
        if config.vcpus == 0 || config.vcpus > max {
            return Err(HypervisorError::Invalid(format!(
                "{} vCPUs requested; this KVM supports 1 to {max}",
                config.vcpus
            )));
        }
        let fd = self.kvm.create_vm().map_err(vm::os("KVM_CREATE_VM"))?;
        Ok(Arc::new(KvmVm::new(fd, config, self.kvm.get_nr_memslots())?))
    }
}

/// Sets CPUID.1:ECX[24] (TSC-deadline) in `entries`.
fn set_tsc_deadline(entries: &mut [CpuidEntry]) {
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= 1 << 24;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_bit_is_set_on_leaf_1_only() {
        let mut v = vec![
            CpuidEntry { function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0x8000_0001, edx: 0 },
            CpuidEntry { function: 7, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 },
        ];
        set_tsc_deadline(&mut v);
        assert_eq!(v[0].ecx, 0x8100_0001);
        assert_eq!(v[1].ecx, 0);
    }

    #[test]
    fn missing_device_message() {
        let err = Kvm::with_path(Path::new("/nonexistent/kvm")).err().expect("must fail").to_string();
        assert!(err.contains("/nonexistent/kvm does not exist"), "{err}");
        assert!(err.contains("--accel emu"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn permission_message_names_the_fix() {
        let err = open_error(Path::new("/dev/kvm"), libc::EACCES).to_string();
        assert!(err.contains("permission denied"), "{err}");
        assert!(err.contains("'kvm' group"), "{err}");
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn not_a_kvm_device() {
        // /dev/null opens but answers no KVM ioctl: the API version check must catch it.
        let err = Kvm::with_path(Path::new("/dev/null")).err().expect("must fail").to_string();
        assert!(err.contains("API version"), "{err}");
    }

    #[test]
    fn kvm_opens_where_present() {
        if !Path::new("/dev/kvm").exists() {
            eprintln!("skipped: /dev/kvm does not exist");
            return;
        }
        let kvm = Kvm::new().expect("/dev/kvm exists, so opening it must work");
        assert!(kvm.max_vcpus() >= 1);
        let cpuid = kvm.supported_cpuid().unwrap();
        assert!(cpuid.iter().any(|e| e.function == 0));
        if kvm.kvm.check_extension(Cap::TscDeadlineTimer) {
            let l1 = cpuid.iter().find(|e| e.function == 1).expect("leaf 1");
            assert_ne!(l1.ecx & (1 << 24), 0, "KVM has the TSC-deadline timer: CPUID must say so");
        }
        assert!(kvm.create_vm(&VmConfig { vcpus: 0 }).is_err());
    }
}
