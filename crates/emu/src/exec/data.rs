//! Data movement and flag manipulation: MOV MOVZX MOVSX LEA XCHG XADD CMPXCHG(8B/16B) CBW..CQO
//! BSWAP SETcc CMOVcc LAHF SAHF CLC STC CMC CLD STD XLAT and the NOP family.

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use super::{is_cr_dr, is_nop};
use crate::cpu::{Cpu, Ex, Exc, SS};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::{self, FlagOp, AF, CF, DF, PF, SF, ZF};
use crate::mem::Access;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    let m = ins.mnemonic();
    if is_nop(m) {
        return Some(nop);
    }
    Some(match m {
        M::Mov if is_cr_dr(ins, 0) || is_cr_dr(ins, 1) => return None,
        M::Mov if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() => {
            mov_to_sreg
        }
        M::Mov | M::Movnti => mov,
        M::Movzx => movzx,
        M::Movsx | M::Movsxd => movsx,
        M::Lea => lea,
        M::Xchg => xchg,
        M::Xadd => xadd,
        M::Cmpxchg => cmpxchg,
        M::Cmpxchg8b => cmpxchg8b,
        M::Cmpxchg16b => cmpxchg16b,
        M::Cbw | M::Cwde | M::Cdqe => cbw,
        M::Cwd | M::Cdq | M::Cqo => cwd,
        M::Bswap => bswap,
        m if is_setcc(m) => setcc,
        m if is_cmovcc(m) => cmovcc,
        M::Lahf => lahf,
        M::Sahf => sahf,
        M::Clc => clc,
        M::Stc => stc,
        M::Cmc => cmc,
        M::Cld => cld,
        M::Std => std_,
        M::Xlatb => xlat,
        _ => return None,
    })
}

fn nop(_: &mut Cpu, _: &Op) -> Ex {
    Ok(())
}

fn mov(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let v = cpu.rd(op, 1, s)?;
    cpu.wr(op, 0, s, v)
}

fn mov_to_sreg(cpu: &mut Cpu, op: &Op) -> Ex {
    let Opnd::Seg(seg) = op.o[0] else { return Err(Exc::ud()) };
    if seg as usize == crate::cpu::CS {
        return Err(Exc::ud());
    }
    let sel = cpu.rd(op, 1, 2)? as u16;
    cpu.load_seg(seg as usize, sel)?;
    if seg as usize == SS {
        cpu.int_shadow = true;
    }
    Ok(())
}

fn movzx(cpu: &mut Cpu, op: &Op) -> Ex {
    let ss = cpu.opnd_size(op, 1);
    let v = cpu.rd(op, 1, ss)?;
    cpu.wr(op, 0, op.size, v)
}

fn movsx(cpu: &mut Cpu, op: &Op) -> Ex {
    let ss = cpu.opnd_size(op, 1);
    let v = cpu.rd(op, 1, ss)?;
    let shift = 64 - ss as u32 * 8;
    cpu.wr(op, 0, op.size, (((v << shift) as i64) >> shift) as u64)
}

fn lea(cpu: &mut Cpu, op: &Op) -> Ex {
    let ea = cpu.ea(op);
    cpu.wr(op, 0, op.size, ea)
}

fn xchg(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd_rmw(op, 1, s)?;
    cpu.wr(op, 0, s, b)?;
    cpu.wr(op, 1, s, a)
}

fn xadd(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let r = a.wrapping_add(b);
    if op.o[0] == Opnd::Mem {
        // Memory first: a locked write that loses a race must leave registers untouched.
        cpu.wr(op, 0, s, r)?;
        cpu.wr(op, 1, s, a)?;
    } else {
        // Register form: when both operands are the same register the sum wins.
        cpu.wr(op, 1, s, a)?;
        cpu.wr(op, 0, s, r)?;
    }
    cpu.flags.record(FlagOp::Add, s, a, b, r);
    Ok(())
}

fn cmpxchg(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let dst = cpu.rd_rmw(op, 0, s)?;
    let src = cpu.rd(op, 1, s)?;
    let acc = cpu.gpr_sized(0, s);
    if acc == dst {
        cpu.wr(op, 0, s, src)?;
    } else {
        // The destination is written back even on failure (locked RMW semantics).
        cpu.wr(op, 0, s, dst)?;
        cpu.write_gpr(0, s, dst);
    }
    cpu.flags.record(FlagOp::Sub, s, acc, dst, acc.wrapping_sub(dst));
    Ok(())
}

fn cmpxchg8b(cpu: &mut Cpu, op: &Op) -> Ex {
    let lin = cpu.mem_lin(op);
    let cur = cpu.read_lin(lin, 8, Access::WRITE)?;
    let expect = (cpu.gpr[0] & 0xffff_ffff) | (cpu.gpr[2] << 32);
    let eq = cur == expect;
    if eq {
        let new = (cpu.gpr[3] & 0xffff_ffff) | (cpu.gpr[1] << 32);
        cpu.write_lin(lin, 8, new, Access::WRITE)?;
    } else {
        cpu.write_lin(lin, 8, cur, Access::WRITE)?;
        cpu.write_gpr(0, 4, cur);
        cpu.write_gpr(2, 4, cur >> 32);
    }
    cpu.flags.set_arith(ZF, if eq { ZF } else { 0 });
    Ok(())
}

/// Atomic 16-byte compare-and-swap on host memory; returns the value found.
///
/// # Safety
/// `p` must be 16-byte aligned and point at 16 writable bytes.
unsafe fn cas16(p: *mut u8, old: u128, new: u128) -> u128 {
    let (mut lo, mut hi) = (old as u64, (old >> 64) as u64);
    // SAFETY: the caller guarantees `p`; RBX is reserved by LLVM, so the new low half is
    // swapped into it around the instruction and restored after.
    unsafe {
        std::arch::asm!(
            "xchg rbx, {nb}",
            "lock cmpxchg16b [{p}]",
            "xchg rbx, {nb}",
            p = in(reg) p,
            nb = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") lo,
            inout("rdx") hi,
        );
    }
    (lo as u128) | ((hi as u128) << 64)
}

fn cmpxchg16b(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(crate::cpuid::CX16)?;
    let lin = cpu.mem_lin(op);
    if lin & 15 != 0 {
        return Err(Exc::gp(0));
    }
    if cpu.locked {
        let (gpa, host) = cpu.translate_page(lin, Access::WRITE)?;
        if host != 0 && !cpu.mem.is_code_page(gpa) {
            let expect = (cpu.gpr[0] as u128) | ((cpu.gpr[2] as u128) << 64);
            let new = (cpu.gpr[3] as u128) | ((cpu.gpr[1] as u128) << 64);
            // SAFETY: `lin` is 16-byte aligned, so the 16 bytes lie in the RAM page at `host`.
            let cur = unsafe { cas16((host + (lin & 0xfff) as usize) as *mut u8, expect, new) };
            let eq = cur == expect;
            if !eq {
                cpu.gpr[0] = cur as u64;
                cpu.gpr[2] = (cur >> 64) as u64;
            }
            cpu.flags.set_arith(ZF, if eq { ZF } else { 0 });
            return Ok(());
        }
    }
    let mut buf = [0u8; 16];
    cpu.read_bytes(lin, &mut buf, Access::WRITE)?;
    let cur = u128::from_le_bytes(buf);
    let expect = (cpu.gpr[0] as u128) | ((cpu.gpr[2] as u128) << 64);
    let eq = cur == expect;
    let new = if eq { (cpu.gpr[3] as u128) | ((cpu.gpr[1] as u128) << 64) } else { cur };
    cpu.write_bytes(lin, &new.to_le_bytes(), Access::WRITE)?;
    if !eq {
        cpu.gpr[0] = cur as u64;
        cpu.gpr[2] = (cur >> 64) as u64;
    }
    cpu.flags.set_arith(ZF, if eq { ZF } else { 0 });
    Ok(())
}

fn cbw(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let half = s as u32 * 4;
    let v = cpu.gpr[0] << (64 - half);
    cpu.write_gpr(0, s, ((v as i64) >> (64 - half)) as u64);
    Ok(())
}

fn cwd(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let neg = cpu.gpr[0] & flags::sign_bit(s) != 0;
    cpu.write_gpr(2, s, if neg { u64::MAX } else { 0 });
    Ok(())
}

fn bswap(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.rd(op, 0, op.size)?;
    let r = match op.size {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        _ => 0,
    };
    cpu.wr(op, 0, op.size, r)
}

/// SETcc, any condition (also used by `fast::specialise`).
pub(super) fn is_setcc(m: M) -> bool {
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

/// CMOVcc, any condition (also used by `fast::specialise`).
pub(super) fn is_cmovcc(m: M) -> bool {
    matches!(
        m,
        M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
    )
}

fn setcc(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.flags.cond(op.cc) as u64;
    cpu.wr(op, 0, 1, v)
}

fn cmovcc(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let src = cpu.rd(op, 1, s)?;
    let v = if cpu.flags.cond(op.cc) { src } else { cpu.rd(op, 0, s)? };
    cpu.wr(op, 0, s, v)
}

/// LAHF/SAHF in 64-bit mode need CPUID 0x8000_0001 ECX.LAHF_LM (#UD otherwise).
fn lahf_check(cpu: &Cpu) -> Ex {
    if cpu.bitness == 64 {
        cpu.require(crate::cpuid::Isa::LAHF64)?;
    }
    Ok(())
}

fn lahf(cpu: &mut Cpu, _: &Op) -> Ex {
    lahf_check(cpu)?;
    let f = cpu.rflags() & 0xff;
    let g = &mut cpu.gpr[0];
    *g = (*g & !0xff00) | (f << 8);
    Ok(())
}

fn sahf(cpu: &mut Cpu, _: &Op) -> Ex {
    lahf_check(cpu)?;
    let ah = (cpu.gpr[0] >> 8) & 0xff;
    cpu.flags.set_arith(SF | ZF | AF | PF | CF, ah);
    Ok(())
}

fn clc(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.flags.set_arith(CF, 0);
    Ok(())
}

fn stc(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.flags.set_arith(CF, CF);
    Ok(())
}

fn cmc(cpu: &mut Cpu, _: &Op) -> Ex {
    let c = cpu.flags.cf();
    cpu.flags.set_arith(CF, if c { 0 } else { CF });
    Ok(())
}

fn cld(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.flags.word &= !DF;
    Ok(())
}

fn std_(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.flags.word |= DF;
    Ok(())
}

fn xlat(cpu: &mut Cpu, op: &Op) -> Ex {
    let ea = (cpu.gpr[3].wrapping_add(cpu.gpr[0] & 0xff)) & op.m.amask;
    let v = cpu.read_seg(op.m.seg as usize, ea, 1)?;
    cpu.write_gpr(0, 1, v);
    Ok(())
}
