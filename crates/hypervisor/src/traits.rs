//! The traits every execution backend implements.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{
    CpuidEntry, FpuState, GuestMemory, HypervisorError, IrqChipState, LapicState, MsrEntry, Regs, Result,
    SpecialRegs, VcpuState,
};

/// Device access callbacks, called by the backend while it handles a guest access.
///
/// `data.len()` is the access width (1, 2, 4 or 8 bytes; larger for string/SSE MMIO on the
/// software CPU). Reads of unclaimed addresses must fill `data` (all ones, like an open bus).
/// Implementations must never panic on any address or value: both come from the guest.
pub trait VmOps: Send + Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// Called once per exit from guest mode to the VMM, before the exit is handled, by
    /// backends that have such exits (KVM); for statistics (`VMR_STATS`), so it must be cheap.
    fn exit_seen(&self, _kind: ExitKind) {}
}

/// What made a vCPU leave guest mode for the VMM, for exit statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
    Hlt,
    /// A signal or kick (`EINTR`) or `KVM_EXIT_INTR`.
    Interrupted,
    IrqWindow,
    /// Anything else: shutdown, system events, errors.
    Other,
}

impl ExitKind {
    pub const COUNT: usize = 8;
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::PioIn,
        ExitKind::PioOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Interrupted,
        ExitKind::IrqWindow,
        ExitKind::Other,
    ];

    /// Position in [`ExitKind::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short name used in the statistics line.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PioIn => "pio_in",
            ExitKind::PioOut => "pio_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Interrupted => "intr",
            ExitKind::IrqWindow => "irq_window",
            ExitKind::Other => "other",
        }
    }
}

/// Why [`Vcpu::run`] returned. Port I/O and MMIO never appear here: the backend handles them
/// through [`VmOps`] and keeps running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// The vCPU was kicked ([`VcpuKicker::kick`]) and left guest mode.
    Interrupted,
    /// The guest executed HLT and the backend does not wait for interrupts itself.
    Hlt,
    /// The guest shut the CPU down (triple fault).
    Shutdown,
    /// The guest asked for a system reset through a backend mechanism.
    SystemReset,
    /// The guest asked for power-off through a backend mechanism.
    SystemPoweroff,
    /// The backend could not continue running the guest; the text says why.
    InternalError(String),
}

/// Asks a vCPU thread to leave guest mode. Cloneable across threads.
pub trait VcpuKicker: Send + Sync {
    /// After `kick`, the current or next [`Vcpu::run`] returns [`VcpuExit::Interrupted`] promptly
    /// (the request is consumed by that return).
    fn kick(&self);
}

/// Where an ioeventfd listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u16),
    Mmio(u64),
}

/// One virtual CPU. Created and run on its own thread.
pub trait Vcpu: Send {
    /// The vCPU index (also its initial APIC id).
    fn id(&self) -> u32;
    /// Runs guest code until an event the VMM must act on.
    fn run(&mut self) -> Result<VcpuExit>;
    /// A handle other threads use to interrupt [`Vcpu::run`].
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
    /// Called on the vCPU's thread after the VMM held it paused, before it runs again: a
    /// backend with a paravirtual clock tells the guest, so its watchdogs do not take the
    /// pause for a hang (KVM: `KVM_KVMCLOCK_CTRL`). Nothing to do by default.
    fn resumed_after_pause(&mut self) -> Result<()> {
        Ok(())
    }

    fn regs(&self) -> Result<Regs>;
    fn set_regs(&mut self, regs: &Regs) -> Result<()>;
    fn sregs(&self) -> Result<SpecialRegs>;
    fn set_sregs(&mut self, sregs: &SpecialRegs) -> Result<()>;
    fn fpu(&self) -> Result<FpuState>;
    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()>;
    /// Sets the CPUID table the guest sees on this vCPU.
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()>;
    /// Reads the given MSRs; unknown ones are an error.
    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>>;
    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()>;
    fn lapic(&self) -> Result<LapicState>;
    fn set_lapic(&mut self, lapic: &LapicState) -> Result<()>;

    /// Reads the whole architectural state (`msr_indices` chooses which MSRs).
    fn state(&self, msr_indices: &[u32]) -> Result<VcpuState> {
        Ok(VcpuState {
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: self.fpu()?,
            msrs: self.msrs(msr_indices)?,
            lapic: Some(self.lapic()?),
            ..Default::default()
        })
    }

    /// Everything a snapshot needs to put this vCPU back exactly: registers, FPU, every MSR
    /// the backend keeps, LAPIC, TSC, run state and CPUID. The vCPU is not running.
    fn save_state(&self) -> Result<VcpuState> {
        Err(HypervisorError::Invalid("this backend cannot save vCPU state for a snapshot yet".into()))
    }

    /// Restores what [`Vcpu::save_state`] returned (possibly on another backend).
    fn restore_state(&mut self, _state: &VcpuState) -> Result<()> {
        Err(HypervisorError::Invalid("this backend cannot restore vCPU state from a snapshot yet".into()))
    }

    /// Restores state read by [`Vcpu::state`] or built by the machine model.
    fn set_state(&mut self, state: &VcpuState) -> Result<()> {
        self.set_sregs(&state.sregs)?;
        self.set_regs(&state.regs)?;
        self.set_fpu(&state.fpu)?;
        if !state.msrs.is_empty() {
            self.set_msrs(&state.msrs)?;
        }
        if let Some(lapic) = &state.lapic {
            self.set_lapic(lapic)?;
        }
        Ok(())
    }
}

/// The interrupt controllers of a VM (PIC, IOAPIC; LAPICs are per vCPU).
pub trait IrqChip: Send + Sync {
    /// Drives interrupt input `gsi` (0-23 on the IOAPIC, 0-15 also on the PIC) to `level`.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()>;

    /// Raises and lowers an edge-triggered line.
    fn pulse_irq(&self, gsi: u32) -> Result<()> {
        self.set_irq_line(gsi, true)?;
        self.set_irq_line(gsi, false)
    }
}

/// Options fixed when a VM is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub vcpus: u32,
}

/// One virtual machine: memory, vCPUs, interrupt controllers.
pub trait Vm: Send + Sync {
    /// Makes guest memory visible to the guest. Called once, before vCPUs run.
    fn set_memory(&self, memory: &GuestMemory) -> Result<()>;
    /// Creates vCPU `id`; device accesses it makes are handed to `ops`.
    fn create_vcpu(&self, id: u32, ops: Arc<dyn VmOps>) -> Result<Box<dyn Vcpu>>;
    /// The VM's interrupt controllers.
    fn irqchip(&self) -> Arc<dyn IrqChip>;
    /// Signals `fd` on a guest write to `addr` (instead of calling [`VmOps`]); with
    /// `datamatch`, only when the written value equals it.
    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u64>) -> Result<()>;
    /// Raises (edge) interrupt `gsi` whenever `fd` is written.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// The VM-wide interrupt controllers and timers, for a snapshot (the VM is paused).
    fn irqchip_state(&self) -> Result<IrqChipState> {
        Err(HypervisorError::Invalid("this backend cannot save its interrupt controllers yet".into()))
    }
    /// Loads what [`Vm::irqchip_state`] returned, before any vCPU runs.
    fn set_irqchip_state(&self, _state: &IrqChipState) -> Result<()> {
        Err(HypervisorError::Invalid("this backend cannot restore its interrupt controllers yet".into()))
    }
}

/// An execution backend (KVM, the software CPU).
pub trait Hypervisor: Send + Sync {
    /// Short name as used by `--accel` ("kvm", "emu").
    fn name(&self) -> &'static str;
    /// Most vCPUs one VM may have.
    fn max_vcpus(&self) -> u32;
    /// The CPUID leaves this backend can present to a guest, before the machine model
    /// normalises them per vCPU.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>>;
}
