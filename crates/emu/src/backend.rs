//! The `vmr-hypervisor` traits on top of the interpreter: backend "emu".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::{
    CpuidEntry, FpuState, GuestMemory, Hypervisor, HypervisorError, IoEventAddress, IrqChip, IrqChipState,
    LapicState, MsrEntry, Regs, Result, SpecialRegs, Vcpu, VcpuExit, VcpuKicker, VcpuState, Vm, VmConfig,
    VmOps,
};

use crate::cpu::{real_mode_segment, Cpu, CR0_CD, CR0_ET, CR0_NW, CR4_PAE, CR4_PGE, CR4_PSE, CS};
use crate::engine::{Engine, StopReason};
use crate::irqchip::ioapic::IOAPIC_PINS;
use crate::irqchip::ops::ChipOps;
use crate::irqchip::service::Service;
use crate::irqchip::source::ApicSource;
use crate::irqchip::{IrqChipCore, LocalApic, Waiter};
use crate::mem::Memory;
use crate::msr::{ApicMsrs, IA32_APIC_BASE, IA32_TSC};

mod persist;

/// Instructions per call of the engine between checks of the VMM-visible state.
const SLICE: u64 = 1 << 20;

/// The software CPU backend.
#[derive(Debug, Default)]
pub struct EmuHypervisor;

impl EmuHypervisor {
    pub fn new() -> Self {
        EmuHypervisor
    }

    /// [`Hypervisor::create_vm`] with the concrete type (tests and tools look at the chip).
    pub fn create_emu_vm(&self, config: &VmConfig) -> Result<Arc<EmuVm>> {
        if config.vcpus == 0 || config.vcpus > self.max_vcpus() {
            return Err(HypervisorError::Invalid(format!(
                "{} vCPUs (1..={} supported)",
                config.vcpus,
                self.max_vcpus()
            )));
        }
        // The MP table and MADT give the IOAPIC the id after the processors' ids.
        Ok(Arc::new(EmuVm {
            memory: Mutex::new(None),
            irqchip: Arc::new(EmuIrqChip::new(config.vcpus)?),
            ioevents: Arc::new(Mutex::new(Vec::new())),
        }))
    }
}

impl Hypervisor for EmuHypervisor {
    fn name(&self) -> &'static str {
        "emu"
    }

    fn max_vcpus(&self) -> u32 {
        64
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let mut table = crate::cpuid::default_cpuid();
        crate::irqchip::add_cpuid(&mut table);
        Ok(table)
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>> {
        Ok(self.create_emu_vm(config)?)
    }
}

/// The VM's interrupt controllers ([`crate::irqchip`]): what devices drive through
/// `set_irq_line`/`pulse_irq` and irqfds.
pub struct EmuIrqChip {
    core: Arc<IrqChipCore>,
    service: Service,
}

impl EmuIrqChip {
    fn new(ioapic_id: u32) -> Result<Self> {
        let core =
            Arc::new(IrqChipCore::new(ioapic_id).map_err(|e| HypervisorError::os("irqchip eventfd", e))?);
        let service = Service::start(core.clone()).map_err(|e| HypervisorError::os("irqchip thread", e))?;
        Ok(EmuIrqChip { core, service })
    }

    /// The controllers themselves.
    pub fn core(&self) -> &Arc<IrqChipCore> {
        &self.core
    }

    /// Current level of `gsi`.
    pub fn level(&self, gsi: u32) -> bool {
        self.core.level(gsi)
    }

    /// Rising edges seen on `gsi`.
    pub fn edges(&self, gsi: u32) -> u64 {
        self.core.edges(gsi)
    }
}

impl IrqChip for EmuIrqChip {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        if gsi as usize >= IOAPIC_PINS {
            return Err(HypervisorError::Invalid(format!("GSI {gsi} out of range 0..24")));
        }
        self.core.set_irq(gsi, level);
        Ok(())
    }
}

type IoEvents = Arc<Mutex<Vec<(IoEventAddress, Option<u64>, EventFd)>>>;

/// A VM on the software CPU.
pub struct EmuVm {
    memory: Mutex<Option<GuestMemory>>,
    irqchip: Arc<EmuIrqChip>,
    ioevents: IoEvents,
}

impl EmuVm {
    /// The interrupt-line recorder of this VM.
    pub fn emu_irqchip(&self) -> Arc<EmuIrqChip> {
        self.irqchip.clone()
    }
}

impl Vm for EmuVm {
    fn set_memory(&self, memory: &GuestMemory) -> Result<()> {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(memory.clone());
        Ok(())
    }

    /// vCPU 0 is the bootstrap processor and runs from its reset (or VMM-set) state; the others
    /// wait for INIT/SIPI inside `run`, as KVM's application processors do.
    fn create_vcpu(&self, id: u32, ops: Arc<dyn VmOps>) -> Result<Box<dyn Vcpu>> {
        let mem = self.memory.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mem = mem.ok_or_else(|| HypervisorError::Invalid("create_vcpu before set_memory".into()))?;
        let core = self.irqchip.core.clone();
        let waiter = Waiter::default();
        let lapic = Arc::new(LocalApic::new(id, waiter.clone()));
        let ops: Arc<dyn VmOps> = Arc::new(IoEventOps { inner: ops, events: self.ioevents.clone() });
        let ops: Arc<dyn VmOps> = Arc::new(ChipOps { inner: ops, core: core.clone(), lapic: lapic.clone() });
        let memory = Memory::new(&mem, Some(ops))?;
        let mut cpu = Cpu::new(memory, id);
        cpu.tsc_origin = core.clock.origin;
        let mut table = std::mem::take(&mut cpu.cpuid);
        crate::irqchip::add_cpuid(&mut table);
        cpu.set_cpuid(table);
        cpu.msr.apic = Some(ApicMsrs { lapic: lapic.clone(), core: core.clone() });
        cpu.msr.restore(IA32_APIC_BASE, lapic.apic_base());
        let mut vcpu = EmuVcpu::new(cpu, id);
        vcpu.waiter = waiter;
        vcpu.engine.irq_flag = Some(lapic.flag.clone());
        vcpu.engine.irq = Some(Box::new(ApicSource { lapic: lapic.clone(), core: core.clone() }));
        vcpu.wait_sipi = id != 0;
        lapic.waiting_sipi.store(vcpu.wait_sipi, Ordering::Release);
        core.add_lapic(lapic.clone());
        vcpu.apic = Some(lapic);
        vcpu.core = Some(core);
        Ok(Box::new(vcpu))
    }

    fn irqchip(&self) -> Arc<dyn IrqChip> {
        self.irqchip.clone()
    }

    fn irqchip_state(&self) -> Result<IrqChipState> {
        Ok(self.irqchip.core.save_state())
    }

    fn set_irqchip_state(&self, state: &IrqChipState) -> Result<()> {
        self.irqchip.core.load_state(state).map_err(|e| HypervisorError::Invalid(e.to_string()))
    }

    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u64>) -> Result<()> {
        let fd = fd.try_clone().map_err(|e| HypervisorError::os("eventfd clone", e))?;
        self.ioevents.lock().unwrap_or_else(|e| e.into_inner()).push((addr, datamatch, fd));
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        if gsi >= 24 {
            return Err(HypervisorError::Invalid(format!("GSI {gsi} out of range 0..24")));
        }
        let fd = fd.try_clone().map_err(|e| HypervisorError::os("eventfd clone", e))?;
        self.irqchip.service.add_irqfd(fd, gsi).map_err(|e| HypervisorError::os("irqfd epoll", e))
    }
}

/// Routes writes that match a registered ioevent to its eventfd, the rest to the VMM.
struct IoEventOps {
    inner: Arc<dyn VmOps>,
    events: IoEvents,
}

impl IoEventOps {
    fn signal(&self, addr: IoEventAddress, data: &[u8]) -> bool {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        for (a, m, fd) in events.iter() {
            if *a == addr && m.is_none_or(|m| m == v) {
                // A full eventfd counter only means the device has work queued already.
                let _ = fd.write(1);
                return true;
            }
        }
        false
    }
}

impl VmOps for IoEventOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.inner.pio_read(port, data)
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.signal(IoEventAddress::Pio(port), data) {
            self.inner.pio_write(port, data)
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.inner.mmio_read(addr, data)
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.signal(IoEventAddress::Mmio(addr), data) {
            self.inner.mmio_write(addr, data)
        }
    }
}

/// Sets the kick flag the run loop checks between blocks and wakes a halted vCPU.
struct Kicker {
    flag: Arc<AtomicBool>,
    waiter: Waiter,
}

impl VcpuKicker for Kicker {
    fn kick(&self) {
        self.flag.store(true, Ordering::Release);
        if let Some(t) = self.waiter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            t.unpark();
        }
    }
}

/// How long a halted vCPU without interrupt controllers (a bare [`EmuVcpu::new`]) sleeps
/// between looks at its interrupt source.
const HALT_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// Upper bound of one sleep of a halted vCPU whose LAPIC wakes it (a safety net only: every
/// interrupt, IPI, timer and kick unparks the thread).
const HALT_SLEEP: std::time::Duration = std::time::Duration::from_millis(100);

/// One software vCPU.
pub struct EmuVcpu {
    id: u32,
    pub engine: Engine,
    /// Snapshot page of a vCPU without a LAPIC model.
    lapic_page: LapicState,
    apic: Option<Arc<LocalApic>>,
    core: Option<Arc<IrqChipCore>>,
    waiter: Waiter,
    /// Waiting for a startup IPI (application processors until INIT/SIPI).
    wait_sipi: bool,
}

impl EmuVcpu {
    pub fn new(cpu: Cpu, id: u32) -> Self {
        EmuVcpu {
            id,
            engine: Engine::new(cpu),
            lapic_page: LapicState::default(),
            apic: None,
            core: None,
            waiter: Waiter::default(),
            wait_sipi: false,
        }
    }

    /// True while the vCPU waits for INIT/SIPI.
    pub fn waiting_for_sipi(&self) -> bool {
        self.wait_sipi
    }

    fn set_wait_sipi(&mut self, wait: bool) {
        self.wait_sipi = wait;
        if let Some(a) = &self.apic {
            a.waiting_sipi.store(wait, Ordering::Release);
        }
    }

    /// Blocks until a SIPI starts the vCPU (true) or a kick arrives (false).
    fn wait_for_sipi(&mut self) -> bool {
        let Some(apic) = self.apic.clone() else { return true };
        loop {
            if self.engine.kick.swap(false, Ordering::AcqRel) {
                return false;
            }
            apic.take_init();
            if let Some(vector) = apic.take_sipi() {
                start_at_sipi(&mut self.engine, vector);
                self.set_wait_sipi(false);
                return true;
            }
            std::thread::park_timeout(HALT_SLEEP);
        }
    }

    /// INIT: the CPU returns to its reset state; an AP then waits for a SIPI, the BSP runs from
    /// the reset vector (as KVM does).
    fn handle_init(&mut self) {
        self.engine.init_pending = false;
        let bsp = self.apic.as_ref().is_some_and(|a| {
            a.take_init();
            a.apic_base() & (1 << 8) != 0
        });
        reset_cpu(&mut self.engine);
        if !bsp {
            self.set_wait_sipi(true);
        }
    }

    /// The TSC offset the LAPIC uses for TSC-deadline mode follows the CPU's.
    fn sync_tsc_offset(&self) {
        if let Some(a) = &self.apic {
            let off = self.engine.cpu.tsc_offset;
            a.with(|m| m.tsc_offset = off);
        }
    }

    fn halt(&mut self) {
        if self.apic.is_some() {
            std::thread::park_timeout(HALT_SLEEP);
        } else {
            std::thread::park_timeout(HALT_POLL);
        }
    }
}

/// The architectural INIT state (real mode at F000:FFF0; caches, MSRs and the TSC kept).
fn reset_cpu(engine: &mut Engine) {
    let c = &mut engine.cpu;
    c.gpr = [0; 16];
    c.gpr[2] = 0x600; // EDX: family 6
    c.rip = 0xfff0;
    c.next_rip = 0xfff0;
    c.flags.set(2);
    for s in c.seg.iter_mut() {
        *s = real_mode_segment(0);
    }
    c.seg[CS].selector = 0xf000;
    c.seg[CS].base = 0xffff_0000;
    c.ldtr = vmr_hypervisor::Segment { type_: 2, present: true, limit: 0xffff, ..Default::default() };
    c.tr = vmr_hypervisor::Segment { type_: 0xb, present: true, limit: 0xffff, ..Default::default() };
    c.gdtr = vmr_hypervisor::DescriptorTable { base: 0, limit: 0xffff };
    c.idtr = vmr_hypervisor::DescriptorTable { base: 0, limit: 0xffff };
    c.cr0 = CR0_ET | CR0_NW | CR0_CD;
    (c.cr2, c.cr3, c.cr4, c.cr8, c.efer) = (0, 0, 0, 0, 0);
    c.dr = [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400];
    c.halted = false;
    c.int_shadow = false;
    c.update_mode();
    c.flush_tlb();
    engine.cache.clear();
}

/// Starts an AP at the SIPI vector: real mode, CS = vector << 8, IP = 0.
fn start_at_sipi(engine: &mut Engine, vector: u8) {
    reset_cpu(engine);
    let c = &mut engine.cpu;
    c.seg[CS].selector = (vector as u16) << 8;
    c.seg[CS].base = (vector as u64) << 12;
    c.rip = 0;
    c.next_rip = 0;
    c.update_mode();
}

impl Vcpu for EmuVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    /// Like KVM with an in-kernel irqchip, HLT waits inside `run` (until an interrupt or a
    /// kick); `VcpuExit::Hlt` is never returned. An AP waits for INIT/SIPI here too.
    fn run(&mut self) -> Result<VcpuExit> {
        *self.waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
        loop {
            if self.wait_sipi && !self.wait_for_sipi() {
                return Ok(VcpuExit::Interrupted);
            }
            self.sync_tsc_offset();
            match self.engine.run(SLICE) {
                StopReason::Halt => {
                    if self.engine.kick.swap(false, Ordering::AcqRel) {
                        return Ok(VcpuExit::Interrupted);
                    }
                    self.halt();
                }
                StopReason::Shutdown => return Ok(VcpuExit::Shutdown),
                StopReason::Kicked if self.engine.init_pending => self.handle_init(),
                StopReason::Kicked => return Ok(VcpuExit::Interrupted),
                StopReason::Budget => {}
            }
        }
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        Arc::new(Kicker { flag: self.engine.kick.clone(), waiter: self.waiter.clone() })
    }

    fn regs(&self) -> Result<Regs> {
        let c = &self.engine.cpu;
        let g = &c.gpr;
        Ok(Regs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: c.rip,
            rflags: c.rflags(),
        })
    }

    fn set_regs(&mut self, r: &Regs) -> Result<()> {
        let c = &mut self.engine.cpu;
        c.gpr = [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
            r.r14, r.r15,
        ];
        c.rip = r.rip;
        c.next_rip = r.rip;
        c.flags.set(r.rflags);
        Ok(())
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        let c = &self.engine.cpu;
        Ok(SpecialRegs {
            es: c.seg[0],
            cs: c.seg[1],
            ss: c.seg[2],
            ds: c.seg[3],
            fs: c.seg[4],
            gs: c.seg[5],
            tr: c.tr,
            ldt: c.ldtr,
            gdt: c.gdtr,
            idt: c.idtr,
            cr0: c.cr0,
            cr2: c.cr2,
            cr3: c.cr3,
            cr4: c.cr4,
            cr8: c.cr8,
            efer: c.efer,
            apic_base: c.read_msr(IA32_APIC_BASE).unwrap_or(0),
        })
    }

    fn set_sregs(&mut self, s: &SpecialRegs) -> Result<()> {
        let c = &mut self.engine.cpu;
        c.seg = [s.es, s.cs, s.ss, s.ds, s.fs, s.gs];
        c.tr = s.tr;
        c.ldtr = s.ldt;
        c.gdtr = s.gdt;
        c.idtr = s.idt;
        c.cr0 = s.cr0;
        c.cr2 = s.cr2;
        c.cr3 = s.cr3;
        c.cr4 = s.cr4 & (0x7fc | CR4_PAE | CR4_PGE | CR4_PSE);
        c.cr8 = s.cr8;
        c.efer = s.efer;
        c.msr.restore(IA32_APIC_BASE, s.apic_base);
        c.update_mode();
        c.cpl = if c.protected() { c.seg[CS].dpl & 3 } else { 0 };
        c.flush_tlb();
        self.engine.cache.clear();
        Ok(())
    }

    fn fpu(&self) -> Result<FpuState> {
        Ok(self.engine.cpu.fpu)
    }

    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()> {
        self.engine.cpu.fpu = *fpu;
        Ok(())
    }

    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        self.engine.cpu.set_cpuid(entries.to_vec());
        Ok(())
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let c = &self.engine.cpu;
        indices
            .iter()
            .map(|&index| {
                c.read_msr(index).map(|data| MsrEntry { index, data }).ok_or_else(|| {
                    HypervisorError::Invalid(format!("MSR {index:#x} is not implemented by the emu backend"))
                })
            })
            .collect()
    }

    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()> {
        let c = &mut self.engine.cpu;
        for m in msrs {
            let ok = match m.index {
                crate::msr::IA32_EFER => {
                    c.efer = m.data;
                    c.update_mode();
                    c.flush_tlb();
                    true
                }
                // Every vCPU the VMM sets to the same TSC value gets the same offset, so the
                // TSCs agree (Linux checks them against each other).
                IA32_TSC if self.core.is_some() => {
                    c.tsc_offset = self.core.as_ref().map_or(0, |k| k.tsc_offset_for(m.data));
                    true
                }
                _ => c.write_msr(m.index, m.data).is_ok() || c.msr.restore(m.index, m.data),
            };
            if !ok {
                return Err(HypervisorError::Invalid(format!(
                    "MSR {:#x} is not implemented by the emu backend",
                    m.index
                )));
            }
        }
        Ok(())
    }

    fn lapic(&self) -> Result<LapicState> {
        match (&self.apic, &self.core) {
            (Some(a), Some(k)) => {
                let now = k.clock.now();
                Ok(a.with(|m| m.to_state(now)))
            }
            _ => Ok(self.lapic_page.clone()),
        }
    }

    fn save_state(&self) -> Result<VcpuState> {
        self.save_full()
    }

    fn restore_state(&mut self, state: &VcpuState) -> Result<()> {
        self.restore_full(state)
    }

    fn set_lapic(&mut self, lapic: &LapicState) -> Result<()> {
        if lapic.regs.len() != LapicState::SIZE {
            return Err(HypervisorError::Invalid(format!(
                "LAPIC state of {} bytes, expected {}",
                lapic.regs.len(),
                LapicState::SIZE
            )));
        }
        match (&self.apic, &self.core) {
            (Some(a), Some(k)) => {
                let now = k.clock.now();
                a.with(|m| m.load_state(lapic, now));
                k.timers_changed();
            }
            _ => self.lapic_page = lapic.clone(),
        }
        Ok(())
    }
}
