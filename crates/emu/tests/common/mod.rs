//! Tiny-guest harness shared by the integration tests: guest memory, a port/MMIO recorder,
//! a flat long-mode setup (identity-mapped 1 GiB, GDT, TSS, IDT) and a real-mode setup.

#![allow(dead_code)]

pub mod fuzz_cpu;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::CodeAssembler;
use vmr_emu::cpu::{
    real_mode_segment, Cpu, CR0_ET, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE,
};
use vmr_emu::mem::Memory;
use vmr_emu::segment::parse_descriptor;
use vmr_emu::{Engine, StopReason};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::{DescriptorTable, GuestMemory, VmOps};

/// Writing any value to this port ends the guest run.
pub const DONE_PORT: u16 = 0xf4;
pub const GDT: u64 = 0x500;
pub const PML4: u64 = 0x1000;
pub const IDT: u64 = 0x4000;
pub const TSS: u64 = 0x5000;
pub const STACK_TOP: u64 = 0x9000;
pub const CODE: u64 = 0x10000;
pub const MEM_SIZE: usize = 4 << 20;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const CODE32: u16 = 0x18;
pub const USER_DS: u16 = 0x23;
pub const USER_CS: u16 = 0x2b;
pub const TSS_SEL: u16 = 0x30;

/// Records port and MMIO writes; a write to [`DONE_PORT`] kicks the vCPU.
pub struct TestOps {
    pub pio: Mutex<Vec<(u16, u64)>>,
    pub mmio: Mutex<Vec<(u64, u64)>>,
    pub kick: Mutex<Option<Arc<AtomicBool>>>,
    /// A device doing DMA: a write to port `.0` stores `.2` at guest physical `.1`, straight
    /// into guest memory (the CPU is not told), once.
    pub dma: Mutex<Option<(u16, u64, Vec<u8>)>>,
    pub mem: Mutex<Option<GuestMemory>>,
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl VmOps for TestOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(if port == 0x80 { 0x5a } else { 0xff });
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.lock().unwrap().push((port, le(data)));
        let mut dma = self.dma.lock().unwrap();
        if dma.as_ref().is_some_and(|d| d.0 == port) {
            let (_, gpa, bytes) = dma.take().unwrap();
            let mem = self.mem.lock().unwrap();
            mem.as_ref().unwrap().write_slice(&bytes, GuestAddress(gpa)).unwrap();
        }
        drop(dma);
        if port == DONE_PORT {
            if let Some(k) = self.kick.lock().unwrap().as_ref() {
                k.store(true, Ordering::SeqCst);
            }
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let v = addr.wrapping_mul(3).to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = v[i % 8];
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.lock().unwrap().push((addr, le(data)));
    }
}

pub struct Guest {
    pub engine: Engine,
    pub mem: GuestMemory,
    pub ops: Arc<TestOps>,
}

impl Guest {
    pub fn new() -> Guest {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let ops = Arc::new(TestOps {
            pio: Mutex::new(Vec::new()),
            mmio: Mutex::new(Vec::new()),
            kick: Mutex::new(None),
            dma: Mutex::new(None),
            mem: Mutex::new(Some(mem.clone())),
        });
        let memory = Memory::new(&mem, Some(ops.clone() as Arc<dyn VmOps>)).unwrap();
        let engine = Engine::new(Cpu::new(memory, 0));
        *ops.kick.lock().unwrap() = Some(engine.kick.clone());
        Guest { engine, mem, ops }
    }

    pub fn cpu(&mut self) -> &mut Cpu {
        &mut self.engine.cpu
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
    }

    pub fn write_u64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
        u64::from_le_bytes(b)
    }

    /// Assembles `f` for `bitness` at `gpa` and stores it there.
    pub fn asm(&self, bitness: u32, gpa: u64, f: impl FnOnce(&mut CodeAssembler)) -> usize {
        let mut a = CodeAssembler::new(bitness).unwrap();
        f(&mut a);
        let bytes = a.assemble(gpa).unwrap();
        self.write(gpa, &bytes);
        bytes.len()
    }

    /// Identity-maps the first 1 GiB with 2 MiB pages and enters 64-bit mode at CPL 0 with
    /// RIP=`CODE`, RSP=`STACK_TOP`.
    pub fn long_mode(&mut self) {
        let gdt: [u64; 8] = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00cf_9b00_0000_ffff,
            0x00cf_f300_0000_ffff,
            0x00af_fb00_0000_ffff,
            // 64-bit TSS at TSS, limit 0x67.
            0x0000_8900_0000_0067 | ((TSS & 0xff_ffff) << 16),
            0,
        ];
        for (i, d) in gdt.iter().enumerate() {
            self.write_u64(GDT + 8 * i as u64, *d);
        }
        self.write_u64(PML4, 0x2000 | 3);
        self.write_u64(0x2000, 0x3000 | 3);
        for i in 0..512u64 {
            self.write_u64(0x3000 + 8 * i, (i << 21) | 0x83);
        }
        // TSS: RSP0 and IST1.
        self.write_u64(TSS + 4, 0x7000);
        self.write_u64(TSS + 0x24, 0x6000);
        self.long_mode_regs();
    }

    /// The register part of [`Guest::long_mode`] (tables already in memory).
    pub fn long_mode_regs(&mut self) {
        let gdt1 = 0x00af_9b00_0000_ffff;
        let gdt2 = 0x00cf_9300_0000_ffff;
        let gdt6 = 0x0000_8900_0000_0067 | ((TSS & 0xff_ffff) << 16);
        let c = self.cpu();
        c.cr0 = CR0_PE | CR0_PG | CR0_ET | CR0_WP;
        c.cr4 = CR4_PAE;
        c.cr3 = PML4;
        c.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE;
        c.gdtr = DescriptorTable { base: GDT, limit: 8 * 8 - 1 };
        c.idtr = DescriptorTable { base: IDT, limit: 0xfff };
        let cs = parse_descriptor(gdt1, KERNEL_CS);
        let ds = parse_descriptor(gdt2, KERNEL_DS);
        c.seg = [ds, cs, ds, ds, ds, ds];
        let mut tr = parse_descriptor(gdt6, TSS_SEL);
        tr.type_ = 0xb;
        c.tr = tr;
        c.rip = CODE;
        c.gpr[4] = STACK_TOP;
        c.update_mode();
        c.flush_tlb();
        assert_eq!(c.bitness, 64);
    }

    /// Flat 32-bit protected mode without paging at CPL 0, RIP=`CODE`, IDT at `idt` (the GDT
    /// of [`Guest::long_mode`] must be in memory).
    pub fn protected_mode_flat(&mut self, idt: u64) {
        let c = self.cpu();
        c.cr0 = CR0_PE | CR0_ET;
        c.cr4 = 0;
        c.efer = 0;
        c.cr3 = 0;
        c.gdtr = DescriptorTable { base: GDT, limit: 63 };
        c.idtr = DescriptorTable { base: idt, limit: 0x7ff };
        let code32 = parse_descriptor(0x00cf_9b00_0000_ffff, CODE32);
        let ds = parse_descriptor(0x00cf_9300_0000_ffff, KERNEL_DS);
        c.seg = [ds, code32, ds, ds, ds, ds];
        c.rip = CODE;
        c.update_mode();
        c.flush_tlb();
    }

    /// Real mode from any mode: paging and protection off, data segments at 0, CS=0x1000, IP=0
    /// (`CODE`), the IVT at 0. SP is left to the caller.
    pub fn real_mode_reset(&mut self) {
        let c = self.cpu();
        c.cr0 = CR0_ET;
        c.cr4 = 0;
        c.efer = 0;
        c.gdtr = DescriptorTable { base: GDT, limit: 63 };
        c.idtr = DescriptorTable { base: 0, limit: 0x3ff };
        c.seg = [real_mode_segment(0); 6];
        c.seg[1] = real_mode_segment(0x1000);
        c.rip = 0;
        c.update_mode();
        c.flush_tlb();
    }

    /// Real mode at 0000:`CODE` (CS=0x1000, IP=0), SP=0x9000.
    pub fn real_mode(&mut self, cs: u16, ip: u16) {
        let c = self.cpu();
        c.seg[1].selector = cs;
        c.seg[1].base = (cs as u64) << 4;
        c.rip = ip as u64;
        c.gpr[4] = 0x9000;
        c.idtr = DescriptorTable { base: 0, limit: 0x3ff };
        c.update_mode();
        assert_eq!(c.bitness, 16);
    }

    /// Points IDT vector `vec` (64-bit gate) at `handler`.
    pub fn set_gate64(&self, vec: u8, handler: u64, ist: u8, dpl: u8) {
        let lo = (handler & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | ((ist as u64 & 7) << 32)
            | (0x8eu64 << 40)
            | ((dpl as u64 & 3) << 45)
            | ((handler >> 16 & 0xffff) << 48);
        self.write_u64(IDT + 16 * vec as u64, lo);
        self.write_u64(IDT + 16 * vec as u64 + 8, handler >> 32);
    }

    /// Runs until the done port is written, HLT, or shutdown.
    pub fn run(&mut self) -> StopReason {
        self.engine.run(50_000_000)
    }

    /// Values written to `port`, in order.
    pub fn port_writes(&self, port: u16) -> Vec<u64> {
        self.ops.pio.lock().unwrap().iter().filter(|(p, _)| *p == port).map(|(_, v)| *v).collect()
    }
}

/// xorshift64: the seeded generator of the randomised tests (each adds its own helpers).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks that `fuzz/seeds/cpu/NAME` holds exactly each generated seed; with
/// `VMR_WRITE_FUZZ_SEEDS` set, writes them first (regeneration).
pub fn check_seed_files(seeds: impl IntoIterator<Item = (&'static str, Vec<u8>)>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cpu");
    for (name, data) in seeds {
        let path = dir.join(name);
        if std::env::var_os("VMR_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &data).unwrap();
        }
        assert!(
            std::fs::read(&path).unwrap_or_default() == data,
            "{} differs from the generator",
            path.display()
        );
    }
}

/// Random cases per form in the differential tests: `VMR_EMU_DIFF_CASES`, default 2000.
pub fn diff_cases() -> usize {
    std::env::var("VMR_EMU_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}
