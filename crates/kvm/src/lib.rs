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

/// The ioctl requests a vCPU thread makes, for its seccomp filter: running the vCPU, reading
/// its state (crash reports), and raising the legacy interrupt lines of the devices it emulates
/// (serial, i8042) on the VM.
pub fn vcpu_thread_ioctls() -> Vec<u64> {
    use kvm_bindings::*;
    use std::mem::size_of;
    const KVMIO: u64 = 0xae;
    // _IOC(dir, KVMIO, nr, size) as <asm-generic/ioctl.h> builds it.
    let ioc = |dir: u64, nr: u64, size: usize| (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr;
    let (none, write, read) = (0, 1, 2);
    vec![
        ioc(none, 0x80, 0),                             // KVM_RUN
        ioc(read, 0x81, size_of::<kvm_regs>()),         // KVM_GET_REGS
        ioc(write, 0x82, size_of::<kvm_regs>()),        // KVM_SET_REGS
        ioc(read, 0x83, size_of::<kvm_sregs>()),        // KVM_GET_SREGS
        ioc(write, 0x84, size_of::<kvm_sregs>()),       // KVM_SET_SREGS
        ioc(read | write, 0x88, size_of::<kvm_msrs>()), // KVM_GET_MSRS
        ioc(read, 0x8c, size_of::<kvm_fpu>()),          // KVM_GET_FPU
        ioc(read, 0x8e, size_of::<kvm_lapic_state>()),  // KVM_GET_LAPIC
        ioc(read, 0x98, size_of::<kvm_mp_state>()),     // KVM_GET_MP_STATE
        ioc(read, 0x9f, size_of::<kvm_vcpu_events>()),  // KVM_GET_VCPU_EVENTS
        ioc(read, 0xa1, size_of::<kvm_debugregs>()),    // KVM_GET_DEBUGREGS
        ioc(read, 0xa4, size_of::<kvm_xsave>()),        // KVM_GET_XSAVE
        ioc(read, 0xcf, size_of::<kvm_xsave>()),        // KVM_GET_XSAVE2
        ioc(read, 0xa6, size_of::<kvm_xcrs>()),         // KVM_GET_XCRS
        ioc(write, 0x61, size_of::<kvm_irq_level>()),   // KVM_IRQ_LINE
        ioc(write, 0xa5, size_of::<kvm_msi>()),         // KVM_SIGNAL_MSI
        ioc(none, 0xad, 0),                             // KVM_KVMCLOCK_CTRL (on pause)
    ]
}

#[cfg(test)]
mod ioctl_list_tests {
    #[test]
    fn vcpu_ioctls_match_the_kernel_numbers() {
        let list = super::vcpu_thread_ioctls();
        assert!(list.contains(&0xae80), "KVM_RUN");
        assert!(list.contains(&0x8090_ae81), "KVM_GET_REGS");
        assert!(list.contains(&0x4008_ae61), "KVM_IRQ_LINE");
    }
}
