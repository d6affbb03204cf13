//! A one-vCPU test machine on any backend: guest memory, CPU mode setup, run with a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::{GuestMemory, Hypervisor, HypervisorError, Segment, Vcpu, VcpuExit, Vm, VmConfig};

use crate::ops::RecordingOps;

/// Guest RAM of a test machine, at guest-physical 0.
pub const MEM_SIZE: usize = 2 << 20;
/// Where [`Machine::long_mode`] and [`Machine::protected_mode`] put the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Where [`Machine::long_mode`] puts the PML4 (PDPT and PD follow, one page each).
pub const PML4_ADDR: u64 = 0x9000;
/// Initial stack pointer in the protected and long mode setups.
pub const STACK_TOP: u64 = 0x8000;
/// GDT selectors of the flat 64-bit code, data and 32-bit code segments.
pub const CODE_SELECTOR: u16 = 0x8;
pub const DATA_SELECTOR: u16 = 0x10;
pub const CODE32_SELECTOR: u16 = 0x18;

/// Failures setting up a test machine (never the guest's fault: a backend or test bug).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{what} failed on the {backend} backend: {source}")]
    Backend {
        backend: &'static str,
        what: &'static str,
        #[source]
        source: HypervisorError,
    },
    #[error("guest memory: {0}")]
    Memory(String),
}

/// How a [`Machine::run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this byte to [`crate::DONE_PORT`].
    Done(u8),
    /// `run()` returned something other than the done kick.
    Exit(VcpuExit),
    /// The deadline passed; the runner kicked the vCPU out.
    TimedOut,
    /// `run()` returned an error.
    Failed(String),
}

/// One VM with one vCPU and [`MEM_SIZE`] bytes of RAM.
pub struct Machine {
    pub backend: &'static str,
    pub vm: Arc<dyn Vm>,
    pub memory: GuestMemory,
    pub ops: Arc<RecordingOps>,
    pub vcpu: Box<dyn Vcpu>,
}

impl Machine {
    /// Creates the VM, its memory and vCPU 0 with the backend's supported CPUID.
    pub fn new(hv: &dyn Hypervisor) -> Result<Machine, MachineError> {
        let backend = hv.name();
        let ctx = |what| move |source| MachineError::Backend { backend, what, source };
        let vm = hv.create_vm(&VmConfig { vcpus: 1 }).map_err(ctx("create_vm"))?;
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| MachineError::Memory(e.to_string()))?;
        vm.set_memory(&memory).map_err(ctx("set_memory"))?;
        let ops = Arc::new(RecordingOps::new());
        let mut vcpu = vm.create_vcpu(0, ops.clone()).map_err(ctx("create_vcpu"))?;
        ops.set_kicker(vcpu.kicker());
        let cpuid = hv.supported_cpuid().map_err(ctx("supported_cpuid"))?;
        vcpu.set_cpuid(&cpuid).map_err(ctx("set_cpuid"))?;
        Ok(Machine { backend, vm, memory, ops, vcpu })
    }

    fn ctx(&self, what: &'static str) -> impl FnOnce(HypervisorError) -> MachineError {
        let backend = self.backend;
        move |source| MachineError::Backend { backend, what, source }
    }

    /// Copies `bytes` into guest memory at `addr`.
    pub fn load(&self, addr: u64, bytes: &[u8]) -> Result<(), MachineError> {
        self.memory.write_slice(bytes, GuestAddress(addr)).map_err(|e| MachineError::Memory(e.to_string()))
    }

    /// Reads a little-endian u64 from guest memory.
    pub fn read_u64(&self, addr: u64) -> Result<u64, MachineError> {
        self.memory.read_obj(GuestAddress(addr)).map_err(|e| MachineError::Memory(e.to_string()))
    }

    /// Real mode, all segments based at 0, execution starting at `entry`.
    pub fn real_mode(&mut self, entry: u16) -> Result<(), MachineError> {
        let mut sregs = self.vcpu.sregs().map_err(self.ctx("sregs"))?;
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss]
        {
            seg.base = 0;
            seg.selector = 0;
        }
        self.vcpu.set_sregs(&sregs).map_err(self.ctx("set_sregs"))?;
        let regs = vmr_hypervisor::Regs { rip: u64::from(entry), rflags: 2, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(self.ctx("set_regs"))
    }

    fn write_gdt(&self) -> Result<(), MachineError> {
        // null; 64-bit code (L=1); flat data; 32-bit code (D=1), matching the selectors.
        let gdt: [u64; 4] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0x00cf_9a00_0000_ffff];
        let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.load(GDT_ADDR, &bytes)
    }

    /// 32-bit protected mode, flat 4 GiB segments, paging off.
    pub fn protected_mode(&mut self, entry: u32) -> Result<(), MachineError> {
        self.write_gdt()?;
        let mut sregs = self.vcpu.sregs().map_err(self.ctx("sregs"))?;
        sregs.cs = flat_segment(CODE32_SELECTOR, 0xb, false);
        let data = flat_segment(DATA_SELECTOR, 0x3, false);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt = vmr_hypervisor::DescriptorTable { base: GDT_ADDR, limit: 4 * 8 - 1 };
        sregs.cr0 = CR0_PE | CR0_ET;
        self.vcpu.set_sregs(&sregs).map_err(self.ctx("set_sregs"))?;
        let regs =
            vmr_hypervisor::Regs { rip: u64::from(entry), rsp: STACK_TOP, rflags: 2, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(self.ctx("set_regs"))
    }

    /// 64-bit long mode entered directly: GDT, identity-mapped first 2 MiB (one large page),
    /// SSE enabled (CR4.OSFXSR).
    pub fn long_mode(&mut self, entry: u64) -> Result<(), MachineError> {
        self.write_gdt()?;
        let (pdpt, pd) = (PML4_ADDR + 0x1000, PML4_ADDR + 0x2000);
        self.load(PML4_ADDR, &(pdpt | PTE_PRESENT | PTE_WRITE).to_le_bytes())?;
        self.load(pdpt, &(pd | PTE_PRESENT | PTE_WRITE).to_le_bytes())?;
        self.load(pd, &(PTE_PRESENT | PTE_WRITE | PTE_LARGE).to_le_bytes())?;
        let mut sregs = self.vcpu.sregs().map_err(self.ctx("sregs"))?;
        sregs.cs = flat_segment(CODE_SELECTOR, 0xb, true);
        let data = flat_segment(DATA_SELECTOR, 0x3, false);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt = vmr_hypervisor::DescriptorTable { base: GDT_ADDR, limit: 4 * 8 - 1 };
        sregs.cr3 = PML4_ADDR;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        self.vcpu.set_sregs(&sregs).map_err(self.ctx("set_sregs"))?;
        let regs = vmr_hypervisor::Regs { rip: entry, rsp: STACK_TOP, rflags: 2, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(self.ctx("set_regs"))
    }

    /// Runs until the guest writes [`crate::DONE_PORT`], `run()` returns something else, or
    /// `timeout` passes (then the vCPU is kicked and [`Outcome::TimedOut`] returned).
    pub fn run(&mut self, timeout: Duration) -> Outcome {
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let watchdog = {
            let (kicker, fired) = (self.vcpu.kicker(), fired.clone());
            std::thread::spawn(move || {
                if stopped.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                    fired.store(true, Ordering::SeqCst);
                    kicker.kick();
                }
            })
        };
        let outcome = self.run_until_event(&fired);
        drop(stop);
        let _ = watchdog.join();
        outcome
    }

    fn run_until_event(&mut self, fired: &AtomicBool) -> Outcome {
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::Interrupted) => {
                    if let Some(value) = self.ops.done() {
                        return Outcome::Done(value);
                    }
                    if fired.load(Ordering::SeqCst) {
                        return Outcome::TimedOut;
                    }
                }
                Ok(exit) => return Outcome::Exit(exit),
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
    }

    /// Runs like [`Machine::run`] and also measures the wall time taken.
    pub fn run_timed(&mut self, timeout: Duration) -> (Outcome, Duration) {
        let start = Instant::now();
        let outcome = self.run(timeout);
        (outcome, start.elapsed())
    }
}

pub const CR0_PE: u64 = 1;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;

/// A present, flat (base 0, 4 GiB) code or data segment; `long` makes a 64-bit code segment.
pub fn flat_segment(selector: u16, type_: u8, long: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: true,
        dpl: 0,
        db: !long,
        s: true,
        l: long,
        g: true,
        avl: false,
        unusable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments() {
        let code64 = flat_segment(CODE_SELECTOR, 0xb, true);
        assert!(code64.l && !code64.db);
        let data = flat_segment(DATA_SELECTOR, 0x3, false);
        assert!(!data.l && data.db && data.g);
        assert_eq!(data.limit, 0xffff_ffff);
    }
}
