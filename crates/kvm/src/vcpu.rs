//! A KVM vCPU: the run loop, device-access dispatch to [`VmOps`], and register state.

use std::sync::Arc;

use kvm_bindings::{kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use vmr_hypervisor::{
    CpuidEntry, ExitKind, FpuState, HypervisorError, LapicState, MsrEntry, Regs, Result, SpecialRegs, Vcpu,
    VcpuExit, VcpuKicker, VmOps,
};

use crate::convert;
use crate::kick::{KickShared, KvmKicker};
use crate::xsave::{self, XsaveAccess};

/// What one `KVM_RUN` asks of the run loop.
enum Step {
    /// Handled (port I/O, MMIO) or harmless: enter the guest again.
    Continue,
    /// Return this to the caller.
    Exit(VcpuExit),
    /// `KVM_EXIT_INTERNAL_ERROR`: details are in the `kvm_run` page.
    Internal,
    /// `EINTR`/`EAGAIN`: a kick or another signal.
    Interrupted,
    Failed(kvm_ioctls::Error),
}

/// One KVM vCPU. Created by [`crate::KvmVm`]; run it on its own thread.
pub struct KvmVcpu {
    id: u32,
    fd: VcpuFd,
    /// The `kvm_run` page of `fd`, to read the port I/O access size that kvm-ioctls does not
    /// pass on. Valid for as long as `fd`.
    run_page: *const kvm_run,
    ops: Arc<dyn VmOps>,
    kick: Arc<KickShared>,
    xsave: XsaveAccess,
}

impl KvmVcpu {
    pub(crate) fn new(id: u32, mut fd: VcpuFd, ops: Arc<dyn VmOps>, xsave: XsaveAccess) -> Self {
        let run_page: *mut kvm_run = fd.get_kvm_run();
        // SAFETY: `run_page` points to the live kvm_run mapping of `fd`; only the field address
        // is computed.
        let immediate_exit = unsafe { std::ptr::addr_of_mut!((*run_page).immediate_exit) };
        KvmVcpu { id, fd, run_page, ops, kick: Arc::new(KickShared::new(immediate_exit)), xsave }
    }

    fn run_once(&mut self) -> Step {
        self.kick.set_in_kvm_run(true);
        let exit = self.fd.run();
        self.kick.set_in_kvm_run(false);
        self.ops.exit_seen(exit_kind(&exit));
        match exit {
            Ok(KvmExit::IoIn(port, data)) => {
                // SAFETY: `run_page` is `fd`'s page and this exit is KVM_EXIT_IO.
                let width = pio_width(unsafe { pio_access_size(self.run_page) }, data.len());
                data.chunks_mut(width).for_each(|chunk| self.ops.pio_read(port, chunk));
            }
            Ok(KvmExit::IoOut(port, data)) => {
                // SAFETY: `run_page` is `fd`'s page and this exit is KVM_EXIT_IO.
                let width = pio_width(unsafe { pio_access_size(self.run_page) }, data.len());
                data.chunks(width).for_each(|chunk| self.ops.pio_write(port, chunk));
            }
            Ok(KvmExit::MmioRead(addr, data)) => self.ops.mmio_read(addr, data),
            Ok(KvmExit::MmioWrite(addr, data)) => self.ops.mmio_write(addr, data),
            Ok(KvmExit::Hlt) => return Step::Exit(VcpuExit::Hlt),
            Ok(KvmExit::Shutdown) => return Step::Exit(VcpuExit::Shutdown),
            Ok(KvmExit::SystemEvent(kind, data)) => return Step::Exit(system_event(kind, data)),
            Ok(KvmExit::InternalError) => return Step::Internal,
            Ok(KvmExit::FailEntry(reason, cpu)) => {
                return Step::Exit(VcpuExit::InternalError(format!(
                    "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY): hardware entry failure reason \
                     {reason:#x} on host cpu {cpu}"
                )))
            }
            Ok(KvmExit::MemoryFault { flags, gpa, size }) => {
                return Step::Exit(VcpuExit::InternalError(format!(
                    "KVM memory fault at guest physical {gpa:#x} (size {size:#x}, flags {flags:#x})"
                )))
            }
            Ok(KvmExit::Intr) => return Step::Interrupted,
            Ok(KvmExit::IrqWindowOpen) => {}
            Ok(other) => {
                return Step::Exit(VcpuExit::InternalError(format!("unexpected KVM exit: {other:?}")))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Step::Interrupted,
            Err(e) => return Step::Failed(e),
        }
        Step::Continue
    }

    /// Text for `KVM_EXIT_INTERNAL_ERROR`, with suberror and the data words KVM gave.
    fn internal_error_text(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // union member; the struct is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data.get(..ndata).unwrap_or(&[]).to_vec();
        let rip = self.fd.get_regs().map(|r| r.rip).ok();
        internal_error_message(internal.suberror, &data, rip)
    }

    fn run_loop(&mut self) -> Result<VcpuExit> {
        loop {
            match self.run_once() {
                Step::Continue => {}
                Step::Exit(exit) => return Ok(exit),
                Step::Internal => return Ok(VcpuExit::InternalError(self.internal_error_text())),
                // A signal that was not our kick (a profiler, a debugger): enter the guest again.
                Step::Interrupted if self.kick.take_kick() => return Ok(VcpuExit::Interrupted),
                Step::Interrupted => {}
                Step::Failed(e) => return Err(HypervisorError::os("KVM_RUN", e)),
            }
        }
    }
}

/// The statistics kind of one `KVM_RUN` result.
fn exit_kind(exit: &std::result::Result<KvmExit, kvm_ioctls::Error>) -> ExitKind {
    match exit {
        Ok(KvmExit::IoIn(..)) => ExitKind::PioIn,
        Ok(KvmExit::IoOut(..)) => ExitKind::PioOut,
        Ok(KvmExit::MmioRead(..)) => ExitKind::MmioRead,
        Ok(KvmExit::MmioWrite(..)) => ExitKind::MmioWrite,
        Ok(KvmExit::Hlt) => ExitKind::Hlt,
        Ok(KvmExit::Intr) => ExitKind::Interrupted,
        Ok(KvmExit::IrqWindowOpen) => ExitKind::IrqWindow,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitKind::Interrupted,
        _ => ExitKind::Other,
    }
}

/// Width of each access of the current `KVM_EXIT_IO` (string I/O batches `count` of them).
///
/// # Safety
/// `run_page` must point to a live `kvm_run` page whose last exit was `KVM_EXIT_IO`.
unsafe fn pio_access_size(run_page: *const kvm_run) -> usize {
    // SAFETY: per the contract `io` is the active union member of a live page. The data slice
    // kvm-ioctls hands out lies past the kvm_run header, so this read does not overlap it.
    let size = unsafe { std::ptr::addr_of!((*run_page).__bindgen_anon_1.io.size).read_volatile() };
    usize::from(size)
}

/// The width to split a `KVM_EXIT_IO` data block of `len` bytes into: the access size, or the
/// whole block if KVM reported a size that does not divide it.
fn pio_width(size: usize, len: usize) -> usize {
    if len.checked_rem(size) != Some(0) {
        len.max(1)
    } else {
        size
    }
}

fn system_event(kind: u32, data: &[u64]) -> VcpuExit {
    match kind {
        KVM_SYSTEM_EVENT_RESET => VcpuExit::SystemReset,
        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::SystemPoweroff,
        _ => VcpuExit::InternalError(format!("unhandled KVM system event {kind} (data {data:x?})")),
    }
}

/// The instruction bytes of an emulation failure, when KVM included them: `data[0]` is a
/// flags word, then a byte count and up to 15 bytes packed little-endian in `data[1..3]`.
fn emulation_failure_bytes(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    let flags = *data.first()?;
    if suberror != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
        || flags & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0
    {
        return None;
    }
    let packed: Vec<u8> = data.get(1..3)?.iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = usize::from(packed[0]).min(packed.len() - 1);
    Some(packed[1..=len].to_vec())
}

pub(crate) fn internal_error_message(suberror: u32, data: &[u64], rip: Option<u64>) -> String {
    let at = rip.map(|rip| format!(" at rip {rip:#x}")).unwrap_or_default();
    if let Some(bytes) = emulation_failure_bytes(suberror, data) {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return format!(
            "KVM internal error: instruction emulation failed{at} on bytes [{}] (suberror {suberror})",
            hex.join(" ")
        );
    }
    let what = match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "exit while delivering an event",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected hardware exit reason",
        _ => "unknown suberror",
    };
    format!("KVM internal error: {what}{at} (suberror {suberror}, data {data:x?})")
}

fn os<E: Into<std::io::Error>>(op: &'static str) -> impl FnOnce(E) -> HypervisorError {
    move |e| HypervisorError::os(op, e)
}

struct LeaveRun(Arc<KickShared>);

impl Drop for LeaveRun {
    fn drop(&mut self) {
        self.0.leave_run();
    }
}

// SAFETY: `run_page` points into the mapping owned by `fd`, which moves with the vCPU; it is
// only used by the thread that owns the vCPU.
unsafe impl Send for KvmVcpu {}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn resumed_after_pause(&mut self) -> Result<()> {
        match self.fd.kvmclock_ctrl() {
            Ok(()) => Ok(()),
            // EINVAL: the guest has not enabled kvmclock on this vCPU; nothing to tell it.
            Err(e) if e.errno() == libc::EINVAL => Ok(()),
            Err(e) => Err(HypervisorError::os("KVM_KVMCLOCK_CTRL", e)),
        }
    }

    fn run(&mut self) -> Result<VcpuExit> {
        self.kick.enter_run().map_err(os("unblocking the vCPU kick signal"))?;
        // Forget this thread when run() ends, even by a panic in a VmOps callback: a kicker
        // must never signal a thread that has left run() (it may have exited).
        let _leave = LeaveRun(self.kick.clone());
        self.run_loop()
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        Arc::new(KvmKicker { shared: self.kick.clone() })
    }

    fn regs(&self) -> Result<Regs> {
        Ok(convert::regs_from_kvm(&self.fd.get_regs().map_err(os("KVM_GET_REGS"))?))
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<()> {
        self.fd.set_regs(&convert::regs_to_kvm(regs)).map_err(os("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        Ok(convert::sregs_from_kvm(&self.fd.get_sregs().map_err(os("KVM_GET_SREGS"))?))
    }

    fn set_sregs(&mut self, sregs: &SpecialRegs) -> Result<()> {
        let base = self.fd.get_sregs().map_err(os("KVM_GET_SREGS"))?;
        self.fd.set_sregs(&convert::sregs_to_kvm(sregs, &base)).map_err(os("KVM_SET_SREGS"))
    }

    /// Read from the XSAVE area: KVM_GET_FPU does not report MXCSR.
    fn fpu(&self) -> Result<FpuState> {
        xsave::read_fpu(&self.fd, self.xsave)
    }

    /// Written through the XSAVE area: KVM_SET_FPU ignores MXCSR.
    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()> {
        xsave::write_fpu(&self.fd, self.xsave, fpu)
    }

    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        let kvm_entries: Vec<_> = entries.iter().map(convert::cpuid_to_kvm).collect();
        let cpuid = CpuId::from_entries(&kvm_entries)
            .map_err(|e| HypervisorError::Invalid(format!("{} CPUID entries: {e:?}", entries.len())))?;
        self.fd.set_cpuid2(&cpuid).map_err(os("KVM_SET_CPUID2"))
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let entries: Vec<_> =
            indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| HypervisorError::Invalid(format!("{} MSRs: {e:?}", indices.len())))?;
        let read = self.fd.get_msrs(&mut msrs).map_err(os("KVM_GET_MSRS"))?;
        if let Some(bad) = indices.get(read) {
            return Err(HypervisorError::Invalid(format!("KVM cannot read MSR {bad:#x}")));
        }
        Ok(msrs.as_slice().iter().map(convert::msr_from_kvm).collect())
    }

    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()> {
        let entries: Vec<_> = msrs.iter().map(convert::msr_to_kvm).collect();
        let kvm_msrs = Msrs::from_entries(&entries)
            .map_err(|e| HypervisorError::Invalid(format!("{} MSRs: {e:?}", msrs.len())))?;
        let written = self.fd.set_msrs(&kvm_msrs).map_err(os("KVM_SET_MSRS"))?;
        if let Some(bad) = msrs.get(written) {
            return Err(HypervisorError::Invalid(format!(
                "KVM refused MSR {:#x} = {:#x}",
                bad.index, bad.data
            )));
        }
        Ok(())
    }

    fn lapic(&self) -> Result<LapicState> {
        Ok(convert::lapic_from_kvm(&self.fd.get_lapic().map_err(os("KVM_GET_LAPIC"))?))
    }

    fn set_lapic(&mut self, lapic: &LapicState) -> Result<()> {
        let klapic = convert::lapic_to_kvm(lapic).ok_or_else(|| {
            HypervisorError::Invalid(format!(
                "LAPIC state is {} bytes, expected {}",
                lapic.regs.len(),
                LapicState::SIZE
            ))
        })?;
        self.fd.set_lapic(&klapic).map_err(os("KVM_SET_LAPIC"))
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Runs before `fd` (and its kvm_run mapping) is dropped: kickers stop touching it.
        self.kick.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_pio_is_split_by_access_size() {
        assert_eq!(pio_width(1, 14), 1);
        assert_eq!(pio_width(2, 8), 2);
        assert_eq!(pio_width(4, 4), 4);
        assert_eq!(pio_width(4, 6), 6);
        assert_eq!(pio_width(0, 0), 1);
    }

    #[test]
    fn system_events_map_to_exits() {
        assert_eq!(system_event(KVM_SYSTEM_EVENT_RESET, &[]), VcpuExit::SystemReset);
        assert_eq!(system_event(KVM_SYSTEM_EVENT_SHUTDOWN, &[0]), VcpuExit::SystemPoweroff);
        match system_event(kvm_bindings::KVM_SYSTEM_EVENT_CRASH, &[7]) {
            VcpuExit::InternalError(text) => assert!(text.contains("system event 3"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn internal_error_text_has_details() {
        let text = internal_error_message(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, &[0, 0xabcd], None);
        assert!(text.contains("emulation failed"), "{text}");
        assert!(text.contains("suberror 1"), "{text}");
        assert!(text.contains("abcd"), "{text}");
        let text = internal_error_message(99, &[], Some(0x1000));
        assert!(text.contains("unknown suberror at rip 0x1000"), "{text}");
    }

    #[test]
    fn emulation_failure_shows_instruction_bytes() {
        // As this host's KVM reported `movq xmm2, rax`: 15 bytes, the first five shown here.
        let data = [1, 0x8949_d06e_0f48_660f, 0x49ef_0000_00f0_bae2, 0x1000];
        let text = internal_error_message(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, &data, Some(0x4029));
        assert!(text.contains("at rip 0x4029 on bytes [66 48 0f 6e d0 49 89 e2"), "{text}");
        // A hostile byte count cannot read past the packed bytes.
        let bytes = emulation_failure_bytes(1, &[1, 0xff, 0]).unwrap();
        assert_eq!(bytes.len(), 15);
        assert!(emulation_failure_bytes(1, &[1]).is_none());
        assert!(emulation_failure_bytes(2, &data).is_none());
    }
}
