//! Initial vCPU state: segments, control registers, boot page tables, MSRs, LAPIC LINT pins.

use vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::{
    DescriptorTable, FpuState, GuestMemory, LapicState, MsrEntry, Regs, Segment, SpecialRegs, VcpuState,
};

use crate::error::{write_err, Result};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    RESET_VECTOR, ZERO_PAGE_START,
};
use crate::loader::BootProtocol;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// IA32_APIC_BASE of the BSP: default base, enabled (bit 11), BSP (bit 8).
const APIC_BASE_BSP: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);

/// MSR indices written at boot.
pub mod msr_index {
    /// IA32_TIME_STAMP_COUNTER.
    pub const IA32_TSC: u32 = 0x10;
    /// IA32_SYSENTER_CS.
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SYSCALL_MASK (SFMASK).
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs every vCPU gets at boot, as Linux expects them (as Firecracker's list): SYSENTER
/// and SYSCALL MSRs zero, TSC zero, fast strings enabled, MTRRs enabled with write-back default.
pub fn boot_msrs() -> Vec<MsrEntry> {
    use msr_index::*;
    let zero = [
        IA32_SYSENTER_CS,
        IA32_SYSENTER_ESP,
        IA32_SYSENTER_EIP,
        STAR,
        CSTAR,
        KERNEL_GS_BASE,
        SYSCALL_MASK,
        LSTAR,
        IA32_TSC,
    ];
    let mut msrs: Vec<MsrEntry> = zero.iter().map(|&index| MsrEntry { index, data: 0 }).collect();
    msrs.push(MsrEntry { index: IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING });
    msrs.push(MsrEntry { index: MTRR_DEF_TYPE, data: MTRR_ENABLE_WB });
    msrs
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LVT LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS would. Call on every vCPU
/// with its current LAPIC state, then write it back. A short register page is left alone.
pub fn setup_lapic_lint(lapic: &mut LapicState) {
    if lapic.regs.len() < APIC_LVT_LINT1 + 4 {
        return;
    }
    let lint0 = lapic.reg(APIC_LVT_LINT0);
    lapic.set_reg(APIC_LVT_LINT0, set_delivery_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic.reg(APIC_LVT_LINT1);
    lapic.set_reg(APIC_LVT_LINT1, set_delivery_mode(lint1, APIC_MODE_NMI));
}

/// Builds a GDT descriptor from flags (access byte | flags nibble << 12), base and limit.
pub(crate) const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
}

/// The boot GDT for a protocol: null, code, data, TSS.
pub(crate) fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    match protocol {
        BootProtocol::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xffff_ffff),
            gdt_entry(0xc093, 0, 0xffff_ffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
        BootProtocol::Linux64 => {
            [0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)]
        }
    }
}

/// The hidden part of a segment register loaded from GDT slot `index`.
pub(crate) fn segment_from_gdt(entry: u64, index: u16) -> Segment {
    let bit = |n: u32| (entry >> n) & 1 == 1;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(55);
    let present = bit(47);
    Segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g { (raw_limit << 12) | 0xfff } else { raw_limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: !present,
    }
}

/// Writes the boot GDT and an empty IDT; for [`BootProtocol::Linux64`] also the identity page
/// tables mapping the first 4 GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemory, protocol: BootProtocol) -> Result<()> {
    let gdt: Vec<u8> = boot_gdt(protocol).iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(BOOT_GDT_START)).map_err(write_err("boot GDT"))?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(write_err("boot IDT"))?;
    if protocol == BootProtocol::Linux64 {
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(write_err("boot PML4"))?;
        let pdpt: Vec<u8> = (0..4u64).flat_map(|i| ((PDE_START + i * 0x1000) | 0x03).to_le_bytes()).collect();
        mem.write_slice(&pdpt, GuestAddress(PDPTE_START)).map_err(write_err("boot PDPT"))?;
        // 2048 entries of 2 MiB: present, writable, page size.
        let pd: Vec<u8> = (0..2048u64).flat_map(|i| ((i << 21) | 0x83).to_le_bytes()).collect();
        mem.write_slice(&pd, GuestAddress(PDE_START)).map_err(write_err("boot page directories"))?;
    }
    Ok(())
}

/// Real-mode code at the reset vector: `mov al, 0xfe; out 0x64, al; cli; hlt; jmp $-2`.
pub(crate) const RESET_STUB: [u8; 8] = [0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfd];

/// Writes [`RESET_STUB`] at the reset vector, so a guest that jumps to the BIOS to reboot
/// (Linux does on hardware-reduced ACPI without EFI, after `reboot`) resets the VM through the
/// i8042 instead of running zeroed memory for ever.
pub fn write_reset_stub(mem: &GuestMemory) -> Result<()> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR)).map_err(write_err("reset-vector stub"))
}

/// The boot processor's state to enter the kernel at `entry` with `protocol`: PVH = 32-bit flat
/// protected mode, paging off, EBX = start_info; Linux64 = long mode on the identity map,
/// RSI = boot_params. Includes [`boot_msrs`] and default FPU state; `lapic` is None (apply
/// [`setup_lapic_lint`] to the vCPU's own LAPIC state).
pub fn boot_vcpu_state(protocol: BootProtocol, entry: GuestAddress) -> VcpuState {
    let gdt = boot_gdt(protocol);
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    let ldt = Segment { limit: 0xffff, type_: 2, present: true, ..Default::default() };
    let mut sregs = SpecialRegs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tss,
        ldt,
        gdt: DescriptorTable { base: BOOT_GDT_START, limit: (gdt.len() * 8 - 1) as u16 },
        idt: DescriptorTable { base: BOOT_IDT_START, limit: 7 },
        cr0: CR0_PE | CR0_ET,
        apic_base: APIC_BASE_BSP,
        ..Default::default()
    };
    let mut regs = Regs { rip: entry.0, rflags: 0x2, ..Default::default() };
    match protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::Linux64 => {
            sregs.cr0 |= CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    VcpuState { regs, sregs, fpu: FpuState::default(), msrs: boot_msrs(), lapic: None, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trips_into_segments() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.selector, code64.type_, code64.l, code64.db, code64.g),
            (8, 0xb, true, false, true)
        );
        assert_eq!((code64.limit, code64.base, code64.present, code64.s), (0xffff_ffff, 0, true, true));
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xffff_ffff), 1);
        assert!(code32.db && !code32.l);
        assert_eq!(code32.limit, 0xffff_ffff);
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.type_, tss.s, tss.g), (0x67, 0xb, false, false));
        let based = segment_from_gdt(gdt_entry(0x93, 0x1234_5678, 0xabcde), 2);
        assert_eq!((based.base, based.limit), (0x1234_5678, 0xabcde));
    }

    #[test]
    fn pvh_state_follows_the_abi() {
        let s = boot_vcpu_state(BootProtocol::Pvh, GuestAddress(0x1234_5678));
        assert_eq!(s.regs.rip, 0x1234_5678);
        assert_eq!(s.regs.rbx, PVH_INFO_START);
        assert_eq!(s.sregs.cr0 & CR0_PG, 0);
        assert_eq!(s.sregs.cr0 & CR0_PE, CR0_PE);
        assert_eq!(s.sregs.efer, 0);
        assert!(s.sregs.cs.db && !s.sregs.cs.l);
        assert_eq!(s.sregs.tr.limit, 0x67);
        assert_eq!(s.fpu.fcw, 0x37f);
        assert_eq!(s.fpu.mxcsr, 0x1f80);
    }

    #[test]
    fn long_mode_state_and_tables() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let s = boot_vcpu_state(BootProtocol::Linux64, GuestAddress(0x100200));
        assert_eq!(s.sregs.efer, EFER_LME | EFER_LMA);
        assert!(s.sregs.cs.l);
        assert_eq!(s.regs.rsi, ZERO_PAGE_START);
        assert_eq!(s.sregs.cr3, PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3, (PDE_START + 0x3000) | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 2047 * 8)).unwrap();
        assert_eq!(last, (2047 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(0xa09b, 0, 0xfffff));
    }

    #[test]
    fn msrs_and_lint() {
        let msrs = boot_msrs();
        assert!(msrs.contains(&MsrEntry { index: msr_index::IA32_MISC_ENABLE, data: 1 }));
        assert!(msrs.contains(&MsrEntry { index: msr_index::IA32_TSC, data: 0 }));
        let mut lapic = LapicState::default();
        lapic.set_reg(APIC_LVT_LINT0, 0x1_0700);
        setup_lapic_lint(&mut lapic);
        assert_eq!(lapic.reg(APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic.reg(APIC_LVT_LINT1), 0x400);
        let mut short = LapicState { regs: vec![0; 16] };
        setup_lapic_lint(&mut short);
        assert_eq!(short.regs, vec![0; 16]);
    }
}
