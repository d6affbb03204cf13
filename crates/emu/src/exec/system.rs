//! System instructions: CPUID RDTSC(P) RDMSR WRMSR MOV CR/DR LGDT LIDT SGDT SIDT LTR STR LLDT
//! SLDT IN OUT CLI STI CLTS LMSW SMSW INVLPG WBINVD INVD CLFLUSH SYSCALL SYSRET SWAPGS.

use iced_x86::{Code, Instruction, Mnemonic as M, Register};

use super::is_cr_dr;
use crate::cpu::*;
use crate::decode::{Handler, Op};
use crate::flags::{IF, IOPL, RF, VM};
use crate::mem::paging::canonical;
use crate::mem::Access;
use crate::msr::*;
use crate::segment::{null_segment, parse_descriptor};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Mov if is_cr_dr(ins, 0) => mov_to_crdr,
        M::Mov if is_cr_dr(ins, 1) => mov_from_crdr,
        M::Cpuid => cpuid,
        M::Rdtsc => rdtsc,
        M::Rdtscp => rdtscp,
        M::Rdmsr => rdmsr,
        M::Wrmsr => wrmsr,
        M::Lgdt | M::Lidt => lgdt_lidt,
        M::Sgdt | M::Sidt => sgdt_sidt,
        M::Ltr => ltr,
        M::Lldt => lldt,
        M::Str => str_,
        M::Sldt => sldt,
        M::In => in_,
        M::Out => out,
        M::Cli => cli,
        M::Sti => sti,
        M::Clts => clts,
        M::Lmsw => lmsw,
        M::Smsw => smsw,
        M::Invlpg => invlpg,
        M::Wbinvd | M::Invd => wbinvd,
        M::Clflush => clflush,
        M::Syscall => syscall,
        M::Sysret | M::Sysretq => sysret,
        M::Swapgs => swapgs,
        M::Lar => lar,
        M::Lsl => lsl,
        M::Verr => verr,
        M::Verw => verw,
        _ => return None,
    })
}

impl Cpu {
    /// CLI/STI privilege check: CPL > IOPL faults in protected mode. (Virtual-8086 mode is not
    /// modelled: IRET and POPF never set EFLAGS.VM.)
    pub fn check_io_privilege(&self) -> Ex {
        if self.io_privileged() {
            Ok(())
        } else {
            Err(Exc::gp(0))
        }
    }

    /// CPL <= IOPL, or not in protected mode.
    fn io_privileged(&self) -> bool {
        !self.protected() || self.cpl as u64 <= (self.flags.word & IOPL) >> 12
    }

    /// IN/OUT/INS/OUTS of `size` bytes at `port`: with CPL > IOPL the access must be allowed by
    /// the TSS I/O permission bitmap, else #GP(0) (Intel SDM vol. 1, 19.5.2). This is how
    /// `ioperm()` and `iopl()` give user space ports.
    pub fn check_io_permission(&mut self, port: u16, size: u8) -> Ex {
        if self.io_privileged() || self.io_bitmap_allows(port, size)? {
            Ok(())
        } else {
            Err(Exc::gp(0))
        }
    }

    /// Whether every bitmap bit for `port..port + size` is clear. The CPU reads the 16-bit I/O
    /// map base at TSS offset 0x66 and then two bitmap bytes (an access may straddle a byte),
    /// both within the TSS limit; a 16-bit TSS has no bitmap. These are implicit supervisor
    /// reads, so a page fault on them is delivered as such.
    fn io_bitmap_allows(&mut self, port: u16, size: u8) -> Ex<bool> {
        let tr = self.tr;
        let tss32 = !tr.s && (tr.type_ == 0x9 || tr.type_ == 0xb);
        if tr.unusable || !tss32 || tr.limit < 0x67 {
            return Ok(false);
        }
        let map_base = self.read_lin(self.wrap_lin(tr.base.wrapping_add(0x66)), 2, Access::SYS_READ)?;
        let byte = map_base + u64::from(port / 8);
        if byte + 1 > u64::from(tr.limit) {
            return Ok(false);
        }
        let bits = self.read_lin(self.wrap_lin(tr.base.wrapping_add(byte)), 2, Access::SYS_READ)?;
        let mask = ((1u64 << size.min(4)) - 1) << (port % 8);
        Ok(bits & mask == 0)
    }

    /// Writes CR0 with the architectural checks and side effects.
    pub fn write_cr0(&mut self, v: u64) -> Ex {
        let v = (v | CR0_ET) & 0xffff_ffff;
        if v & CR0_PG != 0 && v & CR0_PE == 0 || v & CR0_NW != 0 && v & CR0_CD == 0 {
            return Err(Exc::gp(0));
        }
        let enabling_pg = v & CR0_PG != 0 && self.cr0 & CR0_PG == 0;
        if enabling_pg && self.efer & EFER_LME != 0 {
            if self.cr4 & CR4_PAE == 0 {
                return Err(Exc::gp(0));
            }
            self.efer |= EFER_LMA;
        }
        if v & CR0_PG == 0 && self.cr0 & CR0_PG != 0 {
            if self.bitness == 64 {
                return Err(Exc::gp(0));
            }
            self.efer &= !EFER_LMA;
        }
        if (v ^ self.cr0) & (CR0_PG | CR0_WP | CR0_PE) != 0 {
            self.flush_tlb();
        }
        self.cr0 = v;
        self.update_mode();
        Ok(())
    }

    pub fn write_cr4(&mut self, v: u64) -> Ex {
        // VME/PVI unsupported; TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT allowed.
        const ALLOWED: u64 = 0x7fc;
        if v & !ALLOWED != 0 || (self.long_mode() && v & CR4_PAE == 0) {
            return Err(Exc::gp(0));
        }
        if (v ^ self.cr4) & (CR4_PGE | CR4_PAE | CR4_PSE) != 0 {
            self.flush_tlb();
        }
        self.cr4 = v;
        Ok(())
    }

    pub fn write_cr3(&mut self, v: u64) {
        self.cr3 = if self.long_mode() { v & 0x000f_ffff_ffff_ffff & !(1 << 63) } else { v & 0xffff_ffff };
        if self.cr4 & CR4_PGE != 0 {
            self.mem.tlb.flush_non_global();
        } else {
            self.flush_tlb();
        }
        self.block_break = true;
    }

    pub fn write_efer(&mut self, v: u64) -> Ex {
        const ALLOWED: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
        if v & !ALLOWED != 0 || (self.cr0 & CR0_PG != 0 && (v ^ self.efer) & EFER_LME != 0) {
            return Err(Exc::gp(0));
        }
        let v = (v & !EFER_LMA) | (self.efer & EFER_LMA);
        if (v ^ self.efer) & EFER_NXE != 0 {
            self.flush_tlb();
        }
        self.efer = v;
        self.block_break = true;
        Ok(())
    }

    /// RDMSR semantics; None for an MSR the model lacks.
    pub fn read_msr(&self, index: u32) -> Option<u64> {
        Some(match index {
            IA32_EFER => self.efer,
            IA32_FS_BASE => self.seg[FS].base,
            IA32_GS_BASE => self.seg[GS].base,
            IA32_TSC => self.tsc(),
            IA32_APIC_BASE => self.msr_apic_base(),
            i if crate::irqchip::lapic::X2APIC_MSRS.contains(&i) => {
                let a = self.msr.apic.as_ref().filter(|a| a.lapic.x2apic())?;
                let now = a.core.clock.now();
                return a.lapic.with(|m| m.x2apic_read(i, now));
            }
            _ => return self.msr.get(index),
        })
    }

    fn msr_apic_base(&self) -> u64 {
        let base = self.msr.raw(IA32_APIC_BASE);
        if base == 0 {
            0xfee0_0000 | (1 << 11) | if self.apic_id == 0 { 1 << 8 } else { 0 }
        } else {
            base
        }
    }

    /// IA32_APIC_BASE by WRMSR: with a LAPIC, the SDM's mode-change rules (#GP otherwise), and
    /// x2APIC mode only when CPUID advertises it.
    fn write_apic_base(&mut self, v: u64) -> Ex {
        if let Some(a) = &self.msr.apic {
            let x2 = v & crate::irqchip::APIC_BASE_EXTD != 0;
            if (x2 && !self.isa.has(crate::irqchip::CPUID_1_ECX_X2APIC)) || !a.lapic.write_apic_base(v) {
                return Err(Exc::gp(0));
            }
        }
        self.msr.restore(IA32_APIC_BASE, v);
        Ok(())
    }

    /// WRMSR semantics.
    pub fn write_msr(&mut self, index: u32, v: u64) -> Ex {
        match index {
            IA32_EFER => self.write_efer(v)?,
            IA32_FS_BASE | IA32_GS_BASE | IA32_KERNEL_GS_BASE | IA32_LSTAR | IA32_CSTAR if !canonical(v) => {
                return Err(Exc::gp(0));
            }
            IA32_FS_BASE => self.seg[FS].base = v,
            IA32_GS_BASE => self.seg[GS].base = v,
            IA32_TSC => self.set_tsc(v),
            IA32_APIC_BASE => self.write_apic_base(v)?,
            i if crate::irqchip::lapic::X2APIC_MSRS.contains(&i) => {
                let a = self.msr.apic.as_ref().filter(|a| a.lapic.x2apic()).ok_or(Exc::gp(0))?;
                let now = a.core.clock.now();
                let effect = a.lapic.with(|m| m.x2apic_write(i, v, now)).ok_or(Exc::gp(0))?;
                a.core.apply(&a.lapic, effect);
            }
            _ => {
                if !self.msr.set(index, v) {
                    return Err(Exc::gp(0));
                }
            }
        }
        Ok(())
    }
}

fn cr_dr_index(r: Register) -> (bool, usize) {
    if (Register::CR0..=Register::CR15).contains(&r) {
        (true, r as usize - Register::CR0 as usize)
    } else {
        (false, r as usize - Register::DR0 as usize)
    }
}

fn mov_from_crdr(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require_cpl0()?;
    let (is_cr, n) = cr_dr_index(op.ins.op1_register());
    let v = if is_cr {
        match n {
            0 => cpu.cr0,
            2 => cpu.cr2,
            3 => cpu.cr3,
            4 => cpu.cr4,
            // CR8 is the LAPIC's TPR[7:4] when the vCPU has a LAPIC.
            8 => cpu.msr.apic.as_ref().map_or(cpu.cr8, |a| (a.lapic.with(|m| m.r.tpr) >> 4) as u64),
            _ => return Err(Exc::ud()),
        }
    } else {
        match n {
            0..=3 | 6 | 7 => cpu.dr[n],
            4 | 5 => cpu.dr[n + 2],
            _ => return Err(Exc::ud()),
        }
    };
    cpu.wr(op, 0, op.size, v)
}

fn mov_to_crdr(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    cpu.require_cpl0()?;
    let (is_cr, n) = cr_dr_index(op.ins.op0_register());
    let v = cpu.rd(op, 1, cpu.opnd_size(op, 1))?;
    if !is_cr {
        match n {
            0..=3 => cpu.dr[n] = v,
            6 | 4 => cpu.dr[6] = (v & 0xf00f) | 0xffff_0ff0,
            7 | 5 => cpu.dr[7] = (v & 0xffff_2fff) | 0x400,
            _ => return Err(Exc::ud()),
        }
        return Ok(());
    }
    match n {
        0 => cpu.write_cr0(v)?,
        2 => cpu.cr2 = v,
        3 => cpu.write_cr3(v),
        4 => cpu.write_cr4(v)?,
        8 => {
            cpu.cr8 = v & 15;
            if let Some(a) = &cpu.msr.apic {
                a.lapic.with(|m| m.r.tpr = ((v & 15) << 4) as u32);
            }
        }
        _ => return Err(Exc::ud()),
    }
    cpu.block_break = true;
    Ok(())
}

fn cpuid(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.serialize();
    let r = crate::cpuid::lookup(&cpu.cpuid, cpu.gpr[0] as u32, cpu.gpr[1] as u32, cpu.apic_id);
    for (i, v) in [(0, r[0]), (3, r[1]), (1, r[2]), (2, r[3])] {
        cpu.gpr[i] = v as u64;
    }
    Ok(())
}

fn rdtsc(cpu: &mut Cpu, _: &Op) -> Ex {
    let t = cpu.tsc();
    cpu.gpr[0] = t & 0xffff_ffff;
    cpu.gpr[2] = t >> 32;
    Ok(())
}

fn rdtscp(cpu: &mut Cpu, op: &Op) -> Ex {
    rdtsc(cpu, op)?;
    cpu.gpr[1] = cpu.msr.raw(IA32_TSC_AUX) & 0xffff_ffff;
    Ok(())
}

fn rdmsr(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.require_cpl0()?;
    let v = cpu.read_msr(cpu.gpr[1] as u32).ok_or(Exc::gp(0))?;
    cpu.gpr[0] = v & 0xffff_ffff;
    cpu.gpr[2] = v >> 32;
    Ok(())
}

fn wrmsr(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.serialize();
    cpu.require_cpl0()?;
    let v = (cpu.gpr[0] & 0xffff_ffff) | (cpu.gpr[2] << 32);
    cpu.write_msr(cpu.gpr[1] as u32, v)?;
    cpu.block_break = true;
    Ok(())
}

fn lgdt_lidt(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    cpu.require_cpl0()?;
    let lin = cpu.mem_lin(op);
    let limit = cpu.read_lin(lin, 2, Access::READ)? as u16;
    let base = if cpu.bitness == 64 {
        cpu.read_lin(lin.wrapping_add(2), 8, Access::READ)?
    } else {
        let b = cpu.read_lin(lin.wrapping_add(2), 4, Access::READ)?;
        if op.size == 2 {
            b & 0xff_ffff
        } else {
            b
        }
    };
    if cpu.bitness == 64 && !canonical(base) {
        return Err(Exc::gp(0));
    }
    let t = vmr_hypervisor::DescriptorTable { base, limit };
    if op.ins.mnemonic() == M::Lgdt {
        cpu.gdtr = t;
    } else {
        cpu.idtr = t;
    }
    Ok(())
}

fn sgdt_sidt(cpu: &mut Cpu, op: &Op) -> Ex {
    let t = if op.ins.mnemonic() == M::Sgdt { cpu.gdtr } else { cpu.idtr };
    let lin = cpu.mem_lin(op);
    let n = if cpu.bitness == 64 { 8 } else { 4 };
    // Check both parts before writing either.
    cpu.read_lin(lin, 2, Access::WRITE)?;
    cpu.read_lin(lin.wrapping_add(2), n, Access::WRITE)?;
    cpu.write_lin(lin, 2, t.limit as u64, Access::WRITE)?;
    cpu.write_lin(lin.wrapping_add(2), n, t.base, Access::WRITE)
}

fn ltr(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    if !cpu.protected() {
        return Err(Exc::ud());
    }
    cpu.require_cpl0()?;
    let sel = cpu.rd(op, 0, 2)? as u16;
    if sel & 0xfffc == 0 || sel & 4 != 0 {
        return Err(Exc::gp(sel as u32 & 0xfffc));
    }
    let (mut s, addr) = cpu.read_system_descriptor(sel)?;
    if s.s || !(s.type_ == 9 || s.type_ == 1) {
        return Err(Exc::gp(sel as u32 & 0xfffc));
    }
    if !s.present {
        return Err(Exc::with_error(NP, sel as u32 & 0xfffc));
    }
    s.type_ |= 2;
    let raw = cpu.read_lin(addr, 8, Access::SYS_READ)?;
    cpu.write_lin(addr, 8, raw | (2 << 40), Access::SYS_WRITE)?;
    cpu.tr = s;
    Ok(())
}

fn lldt(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    if !cpu.protected() {
        return Err(Exc::ud());
    }
    cpu.require_cpl0()?;
    let sel = cpu.rd(op, 0, 2)? as u16;
    if sel & 0xfffc == 0 {
        cpu.ldtr = null_segment(sel);
        return Ok(());
    }
    let (s, _) = cpu.read_system_descriptor(sel)?;
    if s.s || s.type_ != 2 || sel & 4 != 0 {
        return Err(Exc::gp(sel as u32 & 0xfffc));
    }
    if !s.present {
        return Err(Exc::with_error(NP, sel as u32 & 0xfffc));
    }
    cpu.ldtr = s;
    Ok(())
}

fn str_(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.tr.selector as u64;
    cpu.wr(op, 0, op.size, v)
}

fn sldt(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.ldtr.selector as u64;
    cpu.wr(op, 0, op.size, v)
}

fn in_(cpu: &mut Cpu, op: &Op) -> Ex {
    let port = cpu.rd(op, 1, 2)? as u16;
    let mut buf = [0u8; 8];
    let s = op.size;
    cpu.check_io_permission(port, s)?;
    cpu.mem.pio_read(port, &mut buf[..s as usize]);
    cpu.block_break = true;
    cpu.wr(op, 0, s, u64::from_le_bytes(buf))
}

fn out(cpu: &mut Cpu, op: &Op) -> Ex {
    let port = cpu.rd(op, 0, 2)? as u16;
    let s = cpu.opnd_size(op, 1);
    cpu.check_io_permission(port, s)?;
    let v = cpu.rd(op, 1, s)?;
    cpu.mem.pio_write(port, &v.to_le_bytes()[..s as usize]);
    // Devices may have kicked the vCPU or raised an interrupt: end the block.
    cpu.block_break = true;
    Ok(())
}

fn cli(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.check_io_privilege()?;
    cpu.flags.word &= !IF;
    Ok(())
}

fn sti(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.check_io_privilege()?;
    if cpu.flags.word & IF == 0 {
        cpu.int_shadow = true;
    }
    cpu.flags.word |= IF;
    Ok(())
}

fn clts(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.require_cpl0()?;
    cpu.cr0 &= !CR0_TS;
    Ok(())
}

fn lmsw(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require_cpl0()?;
    let v = cpu.rd(op, 0, 2)?;
    // LMSW can set PE but not clear it.
    let new = (cpu.cr0 & !0xe) | (v & 0xf) | (cpu.cr0 & CR0_PE);
    cpu.write_cr0(new)
}

fn smsw(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.cr0;
    cpu.wr(op, 0, op.size, v)
}

fn invlpg(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    cpu.require_cpl0()?;
    let lin = cpu.mem_lin(op);
    cpu.mem.tlb.flush_page(lin);
    Ok(())
}

fn wbinvd(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.serialize();
    cpu.require_cpl0()
}

fn clflush(cpu: &mut Cpu, op: &Op) -> Ex {
    // Only the address check is architecturally visible.
    let lin = cpu.mem_lin(op);
    cpu.read_lin(lin, 1, Access::READ).map(|_| ())
}

fn syscall(cpu: &mut Cpu, _: &Op) -> Ex {
    if cpu.efer & EFER_SCE == 0 || cpu.bitness != 64 {
        return Err(Exc::ud());
    }
    let star = cpu.msr.raw(IA32_STAR);
    let sel = ((star >> 32) & 0xfffc) as u16;
    cpu.gpr[1] = cpu.next_rip;
    let rf = cpu.rflags();
    cpu.gpr[11] = rf & !RF;
    let cs = parse_descriptor(0x00af_9b00_0000_ffff, sel);
    let ss = parse_descriptor(0x00cf_9300_0000_ffff, sel + 8);
    cpu.seg[SS] = ss;
    cpu.set_cs(cs, 0);
    let fmask = cpu.msr.raw(IA32_FMASK);
    cpu.flags.set(rf & !fmask & !(RF | VM));
    cpu.next_rip = cpu.msr.raw(IA32_LSTAR);
    Ok(())
}

fn sysret(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.efer & EFER_SCE == 0 || cpu.bitness != 64 {
        return Err(Exc::ud());
    }
    cpu.require_cpl0()?;
    let star = cpu.msr.raw(IA32_STAR);
    let base = ((star >> 48) & 0xffff) as u16;
    let to64 = op.ins.code() == Code::Sysretq;
    let rip = if to64 { cpu.gpr[1] } else { cpu.gpr[1] & 0xffff_ffff };
    if !canonical(rip) {
        return Err(Exc::gp(0));
    }
    let cs = if to64 {
        parse_descriptor(0x00af_fb00_0000_ffff, (base + 16) | 3)
    } else {
        parse_descriptor(0x00cf_fb00_0000_ffff, base | 3)
    };
    let ss = parse_descriptor(0x00cf_f300_0000_ffff, (base + 8) | 3);
    cpu.flags.set((cpu.gpr[11] & 0x3c_7fd7) | 2);
    cpu.seg[SS] = ss;
    cpu.set_cs(cs, 3);
    cpu.next_rip = rip;
    Ok(())
}

fn swapgs(cpu: &mut Cpu, _: &Op) -> Ex {
    if cpu.bitness != 64 {
        return Err(Exc::ud());
    }
    cpu.require_cpl0()?;
    let k = cpu.msr.raw(IA32_KERNEL_GS_BASE);
    let g = cpu.seg[GS].base;
    cpu.msr.restore(IA32_KERNEL_GS_BASE, g);
    cpu.seg[GS].base = k;
    Ok(())
}

/// The descriptor `sel` names if it exists and is visible at the current CPL and the
/// selector's RPL (conforming code is always visible); None otherwise. Never faults on the
/// selector itself, only on the table read.
fn probe_descriptor(cpu: &mut Cpu, sel: u16) -> Ex<Option<u64>> {
    if !cpu.protected() || sel & 0xfffc == 0 {
        return Ok(None);
    }
    let (base, limit) = if sel & 4 != 0 {
        (cpu.ldtr.base, cpu.ldtr.limit as u64)
    } else {
        (cpu.gdtr.base, cpu.gdtr.limit as u64)
    };
    let off = (sel & !7) as u64;
    if off + 7 > limit || (sel & 4 != 0 && cpu.ldtr.unusable) {
        return Ok(None);
    }
    let raw = cpu.read_lin(cpu.wrap_lin(base.wrapping_add(off)), 8, Access::SYS_READ)?;
    let d = parse_descriptor(raw, sel);
    let conforming_code = d.s && d.type_ & 0xc == 0xc;
    if !conforming_code && (d.dpl < cpu.cpl || d.dpl < (sel & 3) as u8) {
        return Ok(None);
    }
    Ok(Some(raw))
}

/// Types LAR (`lsl == false`) or LSL accept for system descriptors.
fn system_type_ok(type_: u8, lsl: bool, long: bool) -> bool {
    match type_ {
        1 | 3 if !long => true,
        2 | 9 | 0xb => true,
        4 | 5 | 0xc if !lsl && !long => true,
        0xc if !lsl => true,
        _ => false,
    }
}

fn lar_lsl(cpu: &mut Cpu, op: &Op, lsl: bool) -> Ex {
    let sel = cpu.rd(op, 1, 2)? as u16;
    let long = cpu.long_mode();
    let found = probe_descriptor(cpu, sel)?.filter(|&raw| {
        let d = parse_descriptor(raw, sel);
        d.s || system_type_ok(d.type_, lsl, long)
    });
    let Some(raw) = found else {
        cpu.flags.set_arith(crate::flags::ZF, 0);
        return Ok(());
    };
    let v = if lsl { parse_descriptor(raw, sel).limit as u64 } else { (raw >> 32) & 0x00ff_ff00 };
    cpu.wr(op, 0, op.size, v)?;
    cpu.flags.set_arith(crate::flags::ZF, crate::flags::ZF);
    Ok(())
}

fn lar(cpu: &mut Cpu, op: &Op) -> Ex {
    lar_lsl(cpu, op, false)
}

fn lsl(cpu: &mut Cpu, op: &Op) -> Ex {
    lar_lsl(cpu, op, true)
}

fn verify(cpu: &mut Cpu, op: &Op, write: bool) -> Ex {
    let sel = cpu.rd(op, 0, 2)? as u16;
    let ok = probe_descriptor(cpu, sel)?.is_some_and(|raw| {
        let d = parse_descriptor(raw, sel);
        let code = d.type_ & 8 != 0;
        d.s && if write { !code && d.type_ & 2 != 0 } else { !code || d.type_ & 2 != 0 }
    });
    cpu.flags.set_arith(crate::flags::ZF, if ok { crate::flags::ZF } else { 0 });
    Ok(())
}

fn verr(cpu: &mut Cpu, op: &Op) -> Ex {
    verify(cpu, op, false)
}

fn verw(cpu: &mut Cpu, op: &Op) -> Ex {
    verify(cpu, op, true)
}
