//! The `vmr-hypervisor` traits on top of the interpreter: backend "emu".

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::{
    CpuidEntry, FpuState, GuestMemory, Hypervisor, HypervisorError, IoEventAddress, IrqChip, LapicState,
    MsrEntry, Regs, Result, SpecialRegs, Vcpu, VcpuExit, VcpuKicker, Vm, VmConfig, VmOps,
};

use crate::cpu::{Cpu, CR4_PAE, CR4_PGE, CR4_PSE, CS};
use crate::engine::{Engine, StopReason};
use crate::mem::Memory;
use crate::msr::IA32_APIC_BASE;

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
        Ok(Arc::new(EmuVm {
            memory: Mutex::new(None),
            irqchip: Arc::new(EmuIrqChip::default()),
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
        Ok(crate::cpuid::default_cpuid())
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Arc<dyn Vm>> {
        Ok(self.create_emu_vm(config)?)
    }
}

/// Interrupt lines as the devices drive them. The PIC/IOAPIC/LAPIC models that turn them into
/// vectors are the next milestone; until then lines are only recorded.
#[derive(Debug, Default)]
pub struct EmuIrqChip {
    lines: Mutex<[bool; 24]>,
    /// Edges seen per line (rising), for tests and the coming PIC/IOAPIC model.
    edges: Mutex<[u64; 24]>,
    /// Registered irqfds: an edge on `gsi` whenever the eventfd is written.
    irqfds: Mutex<Vec<(EventFd, u32)>>,
}

impl EmuIrqChip {
    /// Turns signalled irqfds into edges on their lines (called by vCPUs between slices).
    pub fn poll_irqfds(&self) {
        let fired: Vec<u32> = {
            let fds = self.irqfds.lock().unwrap_or_else(|e| e.into_inner());
            if fds.is_empty() {
                return;
            }
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|(fd, _)| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            // SAFETY: `pfds` is a valid array of pollfd for the duration of the call; a zero
            // timeout makes poll return immediately.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
            if n <= 0 {
                return;
            }
            pfds.iter()
                .zip(fds.iter())
                .filter(|(p, _)| p.revents & libc::POLLIN != 0)
                // Readable, so this read does not block; its value (the count) is not needed.
                .filter_map(|(_, (fd, gsi))| fd.read().ok().map(|_| *gsi))
                .collect()
        };
        for gsi in fired {
            let _ = self.pulse_irq(gsi);
        }
    }

    /// Current level of `gsi`.
    pub fn level(&self, gsi: u32) -> bool {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        l.get(gsi as usize).copied().unwrap_or(false)
    }

    /// Rising edges seen on `gsi`.
    pub fn edges(&self, gsi: u32) -> u64 {
        let e = self.edges.lock().unwrap_or_else(|e| e.into_inner());
        e.get(gsi as usize).copied().unwrap_or(0)
    }
}

impl IrqChip for EmuIrqChip {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let slot = l
            .get_mut(gsi as usize)
            .ok_or_else(|| HypervisorError::Invalid(format!("GSI {gsi} out of range 0..24")))?;
        if level && !*slot {
            let mut e = self.edges.lock().unwrap_or_else(|e| e.into_inner());
            e[gsi as usize] += 1;
        }
        *slot = level;
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

    fn create_vcpu(&self, id: u32, ops: Arc<dyn VmOps>) -> Result<Box<dyn Vcpu>> {
        let mem = self.memory.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mem = mem.ok_or_else(|| HypervisorError::Invalid("create_vcpu before set_memory".into()))?;
        let ops: Arc<dyn VmOps> = Arc::new(IoEventOps { inner: ops, events: self.ioevents.clone() });
        let memory = Memory::new(&mem, Some(ops))?;
        let mut vcpu = EmuVcpu::new(Cpu::new(memory, id), id);
        vcpu.irqchip = Some(self.irqchip.clone());
        Ok(Box::new(vcpu))
    }

    fn irqchip(&self) -> Arc<dyn IrqChip> {
        self.irqchip.clone()
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
        self.irqchip.irqfds.lock().unwrap_or_else(|e| e.into_inner()).push((fd, gsi));
        Ok(())
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

/// Sets the kick flag the run loop checks between blocks.
/// The thread currently inside [`Vcpu::run`], so a kick can wake it from a halt.
type Waiter = Arc<Mutex<Option<std::thread::Thread>>>;

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

/// How long a halted vCPU sleeps between looks at its interrupt sources (kicks wake it at
/// once).
const HALT_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// One software vCPU.
pub struct EmuVcpu {
    id: u32,
    pub engine: Engine,
    lapic: LapicState,
    irqchip: Option<Arc<EmuIrqChip>>,
    waiter: Waiter,
}

impl EmuVcpu {
    pub fn new(cpu: Cpu, id: u32) -> Self {
        EmuVcpu {
            id,
            engine: Engine::new(cpu),
            lapic: LapicState::default(),
            irqchip: None,
            waiter: Waiter::default(),
        }
    }
}

impl Vcpu for EmuVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    /// Like KVM with an in-kernel irqchip, HLT waits inside `run` (until an interrupt or a
    /// kick); `VcpuExit::Hlt` is never returned.
    fn run(&mut self) -> Result<VcpuExit> {
        *self.waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
        loop {
            if let Some(chip) = &self.irqchip {
                chip.poll_irqfds();
            }
            match self.engine.run(SLICE) {
                StopReason::Halt => {
                    if self.engine.kick.swap(false, Ordering::AcqRel) {
                        return Ok(VcpuExit::Interrupted);
                    }
                    std::thread::park_timeout(HALT_POLL);
                }
                StopReason::Shutdown => return Ok(VcpuExit::Shutdown),
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
        self.engine.cpu.cpuid = entries.to_vec();
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
        Ok(self.lapic.clone())
    }

    fn set_lapic(&mut self, lapic: &LapicState) -> Result<()> {
        if lapic.regs.len() != LapicState::SIZE {
            return Err(HypervisorError::Invalid(format!(
                "LAPIC state of {} bytes, expected {}",
                lapic.regs.len(),
                LapicState::SIZE
            )));
        }
        self.lapic = lapic.clone();
        Ok(())
    }
}
