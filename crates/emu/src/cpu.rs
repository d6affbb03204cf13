//! Architectural state of one vCPU and the helpers every handler uses.

use std::collections::HashSet;

use iced_x86::Register;
use vmr_hypervisor::{CpuidEntry, DescriptorTable, FpuState, Segment};

use crate::flags::Flags;
use crate::mem::Memory;
use crate::msr::MsrFile;

/// Segment register indices (the x86 encoding order, as iced-x86 numbers them).
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

/// CR0 bits.
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_EM: u64 = 1 << 2;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_AM: u64 = 1 << 18;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
/// CR4 bits.
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_FSGSBASE: u64 = 1 << 16;
/// EFER bits.
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// Exception vectors.
pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const BP: u8 = 3;
pub const OF_VEC: u8 = 4;
pub const BR: u8 = 5;
pub const UD: u8 = 6;
pub const NM: u8 = 7;
pub const DF_VEC: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS_VEC: u8 = 12;
pub const GP: u8 = 13;
pub const PF_VEC: u8 = 14;
pub const MF: u8 = 16;
pub const AC_VEC: u8 = 17;
pub const XM: u8 = 19;

/// An exception raised by an instruction. CR2 is already written for page faults.
///
/// Eight bytes, so that a handler's `Result<(), Exc>` comes back in a register instead of
/// through memory (every instruction returns one).
///
/// `has_error` (the niche the `Result` uses) comes first (`repr(C)`), so `Ok` is told apart by
/// one compare of the low byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Exc {
    has_error: bool,
    pub kind: ExcKind,
    pub vector: u8,
    error_code: u32,
}

/// How an [`Exc`] was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExcKind {
    /// A fault or trap of the instruction.
    Fault,
    /// INT n / INT3 / INTO: returns after the instruction, gate DPL checked.
    Soft,
    /// INT1 (ICEBP): returns after the instruction, like a hardware #DB for the DPL check.
    Icebp,
    /// Not an exception: a locked read-modify-write lost a race; run the instruction again.
    Retry,
}

impl Exc {
    pub const fn new(vector: u8) -> Self {
        Exc { vector, kind: ExcKind::Fault, has_error: false, error_code: 0 }
    }
    pub const fn with_error(vector: u8, error: u32) -> Self {
        Exc { vector, kind: ExcKind::Fault, has_error: true, error_code: error }
    }
    pub const fn software(vector: u8) -> Self {
        Exc { vector, kind: ExcKind::Soft, has_error: false, error_code: 0 }
    }
    pub const fn gp(error: u32) -> Self {
        Exc::with_error(GP, error)
    }
    pub const fn ud() -> Self {
        Exc::new(UD)
    }
    /// The locked-RMW retry signal.
    pub const fn retry() -> Self {
        Exc { vector: 0, kind: ExcKind::Retry, has_error: false, error_code: 0 }
    }
    /// The error code pushed with the exception, if it has one.
    pub const fn error(&self) -> Option<u32> {
        if self.has_error {
            Some(self.error_code)
        } else {
            None
        }
    }
    /// Raised by INT n / INT3 / INTO / INT1: returns after the instruction.
    pub const fn soft(&self) -> bool {
        matches!(self.kind, ExcKind::Soft | ExcKind::Icebp)
    }
    pub const fn is_retry(&self) -> bool {
        matches!(self.kind, ExcKind::Retry)
    }
}

/// What a handler returns.
pub type Ex<T = ()> = Result<T, Exc>;

// Every executed instruction returns an `Ex`: keep it register-sized.
const _: () = assert!(std::mem::size_of::<Ex>() == 8);

/// How a register operand maps onto the register file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegSlot {
    /// Low `size` bytes of GPR `idx`.
    Gpr {
        idx: u8,
        size: u8,
    },
    /// AH/CH/DH/BH: bits 8..16 of GPR `idx`.
    High(u8),
    Seg(u8),
    Other,
}

/// Maps an iced-x86 register to its slot.
pub fn reg_slot(r: Register) -> RegSlot {
    let n = r as u32;
    let (al, spl, ax, eax, rax, es) = (
        Register::AL as u32,
        Register::SPL as u32,
        Register::AX as u32,
        Register::EAX as u32,
        Register::RAX as u32,
        Register::ES as u32,
    );
    if (al..al + 4).contains(&n) {
        RegSlot::Gpr { idx: (n - al) as u8, size: 1 }
    } else if (al + 4..spl).contains(&n) {
        RegSlot::High((n - al - 4) as u8)
    } else if (spl..ax).contains(&n) {
        RegSlot::Gpr { idx: (n - spl + 4) as u8, size: 1 }
    } else if (ax..eax).contains(&n) {
        RegSlot::Gpr { idx: (n - ax) as u8, size: 2 }
    } else if (eax..rax).contains(&n) {
        RegSlot::Gpr { idx: (n - eax) as u8, size: 4 }
    } else if (rax..rax + 16).contains(&n) {
        RegSlot::Gpr { idx: (n - rax) as u8, size: 8 }
    } else if (es..es + 6).contains(&n) {
        RegSlot::Seg((n - es) as u8)
    } else {
        RegSlot::Other
    }
}

/// One vCPU's architectural state plus its view of guest memory.
pub struct Cpu {
    pub gpr: [u64; 16],
    /// Address (offset in CS) of the instruction being executed.
    pub rip: u64,
    /// Where execution continues after the current instruction; branches write it.
    pub next_rip: u64,
    pub flags: Flags,
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub dr: [u64; 8],
    pub msr: MsrFile,
    pub fpu: FpuState,
    pub xcr0: u64,
    /// Code size of the current mode: 16, 32 or 64.
    pub bitness: u32,
    /// Current privilege level (CS.DPL outside real mode).
    pub cpl: u8,
    pub mem: Memory,
    /// The CPUID table the guest sees; change it with [`Cpu::set_cpuid`] so that [`Cpu::isa`]
    /// follows.
    pub cpuid: Vec<CpuidEntry>,
    /// The instruction-set extensions `cpuid` advertises (those not advertised raise #UD).
    pub isa: crate::cpuid::Isa,
    pub apic_id: u32,
    /// Set by HLT; cleared by an interrupt.
    pub halted: bool,
    /// Set on triple fault.
    pub shutdown: bool,
    /// Ask the run loop to leave the current block after this instruction (mode change, code
    /// write, halt).
    pub block_break: bool,
    /// Advanced by serializing instructions, event delivery and each [`crate::Engine::run`]
    /// call: a cached block checks its code bytes against guest memory once per epoch (see
    /// `Engine::step_block`).
    pub code_epoch: u64,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub int_shadow: bool,
    /// The current instruction is a locked read-modify-write (LOCK prefix, or XCHG with
    /// memory): its memory write is a compare-and-swap against the value it read.
    pub locked: bool,
    /// Host address, size and value of the locked read, for the compare-and-swap.
    pub(crate) rmw: Option<(usize, u8, u64)>,
    /// Instructions retired.
    pub icount: u64,
    /// Addresses at which an unimplemented instruction was already logged.
    pub(crate) logged_ud: HashSet<u64>,
    /// Host TSC-like counter origin.
    pub(crate) tsc_origin: std::time::Instant,
    pub tsc_offset: u64,
}

impl Cpu {
    /// A serializing instruction (CPUID, IRET, WRMSR, MOV to CR/DR, INVLPG, LGDT/LIDT/LLDT/LTR,
    /// WBINVD/INVD) or event delivery: the instructions after it are fetched afresh. Code another
    /// vCPU or a device changed is seen from here on (the SDM's cross-modifying code protocol
    /// has the executing processor serialize before it runs modified code); the block ends.
    #[inline]
    pub fn serialize(&mut self) {
        self.code_epoch = self.code_epoch.wrapping_add(1);
        self.block_break = true;
    }

    /// A CPU in the architectural reset state (real mode at F000:FFF0) over `mem`.
    pub fn new(mem: Memory, apic_id: u32) -> Self {
        let mut cpu = Cpu {
            gpr: [0; 16],
            rip: 0xfff0,
            next_rip: 0xfff0,
            flags: Flags::default(),
            seg: [Segment::default(); 6],
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: DescriptorTable { base: 0, limit: 0xffff },
            idtr: DescriptorTable { base: 0, limit: 0xffff },
            cr0: CR0_ET | CR0_NW | CR0_CD,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            msr: MsrFile::new(apic_id),
            fpu: FpuState::default(),
            xcr0: 1,
            bitness: 16,
            cpl: 0,
            mem,
            cpuid: crate::cpuid::default_cpuid(),
            isa: crate::cpuid::Isa::all(),
            apic_id,
            halted: false,
            shutdown: false,
            block_break: false,
            code_epoch: 0,
            int_shadow: false,
            locked: false,
            rmw: None,
            icount: 0,
            logged_ud: HashSet::new(),
            tsc_origin: std::time::Instant::now(),
            tsc_offset: 0,
        };
        for (i, s) in cpu.seg.iter_mut().enumerate() {
            *s = real_mode_segment(0);
            if i == CS {
                s.selector = 0xf000;
                s.base = 0xffff_0000;
                s.type_ = 0xb;
            }
        }
        cpu.ldtr = Segment { type_: 2, present: true, limit: 0xffff, ..Default::default() };
        cpu.tr = Segment { type_: 0xb, present: true, limit: 0xffff, ..Default::default() };
        cpu
    }

    /// Replaces the CPUID table (and with it the ISA extensions instructions may use).
    pub fn set_cpuid(&mut self, entries: Vec<CpuidEntry>) {
        self.isa = crate::cpuid::Isa::of(&entries);
        self.cpuid = entries;
    }

    /// #UD unless the guest's CPUID advertises `feature` ([`crate::cpuid::Isa::has`]).
    #[inline(always)]
    pub fn require(&self, feature: u32) -> Ex {
        if self.isa.has(feature) {
            Ok(())
        } else {
            Err(Exc::ud())
        }
    }

    /// Reads a register operand, zero-extended.
    #[inline]
    pub fn read_reg(&self, r: Register) -> u64 {
        match reg_slot(r) {
            RegSlot::Gpr { idx, size } => self.gpr[idx as usize & 15] & crate::flags::mask(size),
            RegSlot::High(idx) => (self.gpr[idx as usize & 3] >> 8) & 0xff,
            RegSlot::Seg(s) => self.seg[s as usize % 6].selector as u64,
            RegSlot::Other => 0,
        }
    }

    /// Writes a general-purpose register with x86 merge rules (32-bit writes zero-extend).
    #[inline]
    pub fn write_reg(&mut self, r: Register, v: u64) {
        match reg_slot(r) {
            RegSlot::Gpr { idx, size } => self.write_gpr(idx as usize, size, v),
            RegSlot::High(idx) => {
                let g = &mut self.gpr[idx as usize & 3];
                *g = (*g & !0xff00) | ((v & 0xff) << 8);
            }
            RegSlot::Seg(_) | RegSlot::Other => {}
        }
    }

    /// Writes the low `size` bytes of GPR `idx` (32-bit writes zero-extend to 64).
    #[inline(always)]
    pub fn write_gpr(&mut self, idx: usize, size: u8, v: u64) {
        let g = &mut self.gpr[idx & 15];
        *g = match size {
            1 => (*g & !0xff) | (v & 0xff),
            2 => (*g & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
    }

    /// True in IA-32e mode (64-bit or compatibility).
    #[inline]
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// True when CR0.PE is set.
    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }

    /// Recomputes `bitness` and `cpl` after CS, CR0 or EFER changed.
    pub fn update_mode(&mut self) {
        let cs = self.seg[CS];
        self.bitness = if self.long_mode() && cs.l {
            64
        } else if self.protected() && cs.db {
            32
        } else {
            16
        };
        self.cpl = if self.protected() { cs.dpl & 3 } else { 0 };
        self.block_break = true;
    }

    /// Stack-pointer width in bytes (SS.B in legacy modes).
    #[inline]
    pub fn stack_size(&self) -> u8 {
        if self.bitness == 64 {
            8
        } else if self.seg[SS].db {
            4
        } else {
            2
        }
    }

    /// The full RFLAGS value.
    #[inline]
    pub fn rflags(&self) -> u64 {
        self.flags.get()
    }

    /// Current time-stamp counter (host monotonic clock at 1 GHz plus the guest's offset).
    pub fn tsc(&self) -> u64 {
        (self.tsc_origin.elapsed().as_nanos() as u64).wrapping_add(self.tsc_offset)
    }

    /// Writes the TSC (WRMSR 0x10) by adjusting the offset.
    pub fn set_tsc(&mut self, v: u64) {
        self.tsc_offset = v.wrapping_sub(self.tsc_origin.elapsed().as_nanos() as u64);
    }
}

/// A real-mode style segment with `selector` (base = selector * 16, 64 KiB limit).
pub fn real_mode_segment(selector: u16) -> Segment {
    Segment {
        base: (selector as u64) << 4,
        limit: 0xffff,
        selector,
        type_: 3,
        present: true,
        dpl: 0,
        db: false,
        s: true,
        l: false,
        g: false,
        avl: false,
        unusable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_slots() {
        assert_eq!(reg_slot(Register::AH), RegSlot::High(0));
        assert_eq!(reg_slot(Register::BH), RegSlot::High(3));
        assert_eq!(reg_slot(Register::SPL), RegSlot::Gpr { idx: 4, size: 1 });
        assert_eq!(reg_slot(Register::R15L), RegSlot::Gpr { idx: 15, size: 1 });
        assert_eq!(reg_slot(Register::R9W), RegSlot::Gpr { idx: 9, size: 2 });
        assert_eq!(reg_slot(Register::EDI), RegSlot::Gpr { idx: 7, size: 4 });
        assert_eq!(reg_slot(Register::R15), RegSlot::Gpr { idx: 15, size: 8 });
        assert_eq!(reg_slot(Register::GS), RegSlot::Seg(5));
        assert_eq!(reg_slot(Register::RIP), RegSlot::Other);
    }

    #[test]
    fn partial_register_writes() {
        let mut cpu = Cpu::new(Memory::empty(), 0);
        cpu.gpr[0] = 0x1122_3344_5566_7788;
        cpu.write_reg(Register::AH, 0xaa);
        assert_eq!(cpu.gpr[0], 0x1122_3344_5566_aa88);
        cpu.write_reg(Register::AX, 0xbbcc);
        assert_eq!(cpu.gpr[0], 0x1122_3344_5566_bbcc);
        cpu.write_reg(Register::EAX, 0xdead_beef);
        assert_eq!(cpu.gpr[0], 0xdead_beef);
        assert_eq!(cpu.read_reg(Register::AH), 0xbe);
    }
}
