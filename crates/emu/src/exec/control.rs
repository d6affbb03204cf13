//! Near control transfers and software interrupts: JMP Jcc CALL RET LOOP JrCXZ INT INT3 INTO
//! INT1 IRET HLT UD.

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use crate::cpu::{Cpu, Ex, Exc, ExcKind, BP, DB, OF_VEC};
use crate::decode::{Handler, Op};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    let near = matches!(ins.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64);
    Some(match ins.mnemonic() {
        M::Jmp if near => jmp_rel,
        M::Jmp if ins.op0_kind() == OpKind::Register || ins.op0_kind() == OpKind::Memory => {
            if ins.is_jmp_far_indirect() {
                return None;
            }
            jmp_indirect
        }
        M::Jo | M::Jno | M::Jb | M::Jae | M::Je | M::Jne | M::Jbe | M::Ja => jcc,
        M::Js | M::Jns | M::Jp | M::Jnp | M::Jl | M::Jge | M::Jle | M::Jg => jcc,
        M::Call if near => call_rel,
        M::Call if !ins.is_call_far_indirect() && !ins.is_call_far() => call_indirect,
        M::Ret => ret,
        M::Loop => loop_,
        M::Loope => loope,
        M::Loopne => loopne,
        M::Jcxz | M::Jecxz | M::Jrcxz => jrcxz,
        M::Int => int_n,
        M::Int3 => int3,
        M::Into => into,
        M::Int1 => int1,
        M::Hlt => hlt,
        M::Ud0 | M::Ud1 | M::Ud2 => ud,
        _ => return None,
    })
}

/// The pre-resolved target of a relative branch.
#[inline(always)]
fn branch_target(op: &Op) -> u64 {
    match op.o[0] {
        crate::decode::Opnd::Imm(t) => t,
        _ => op.ins.near_branch_target(),
    }
}

/// Masks a branch target to the operand size of the branch.
#[inline(always)]
fn target(cpu: &Cpu, size: u8, t: u64) -> u64 {
    if cpu.bitness == 64 && size >= 4 {
        if size == 4 {
            t & 0xffff_ffff
        } else {
            t
        }
    } else {
        t & crate::flags::mask(size)
    }
}

fn jmp_rel(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.next_rip = branch_target(op);
    Ok(())
}

fn jmp_indirect(cpu: &mut Cpu, op: &Op) -> Ex {
    let t = cpu.rd(op, 0, op.size)?;
    cpu.next_rip = target(cpu, op.size, t);
    Ok(())
}

fn jcc(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.flags.cond(op.cc) {
        cpu.next_rip = branch_target(op);
        cpu.block_break = true;
    }
    Ok(())
}

fn call_rel(cpu: &mut Cpu, op: &Op) -> Ex {
    let ret = cpu.next_rip;
    cpu.push(op.size, ret)?;
    cpu.next_rip = branch_target(op);
    Ok(())
}

fn call_indirect(cpu: &mut Cpu, op: &Op) -> Ex {
    let t = cpu.rd(op, 0, op.size)?;
    let ret = cpu.next_rip;
    cpu.push(op.size, ret)?;
    cpu.next_rip = target(cpu, op.size, t);
    Ok(())
}

fn ret(cpu: &mut Cpu, op: &Op) -> Ex {
    let size = match op.ins.code() {
        iced_x86::Code::Retnw | iced_x86::Code::Retnw_imm16 => 2,
        iced_x86::Code::Retnd | iced_x86::Code::Retnd_imm16 => 4,
        _ => 8,
    };
    let t = cpu.pop(size)?;
    if op.ins.op_count() > 0 {
        cpu.adjust_sp(op.ins.immediate16() as u64);
    }
    cpu.next_rip = target(cpu, size, t);
    Ok(())
}

/// Decrements the LOOP counter (its width is in `msize`) and returns whether it is non-zero.
#[inline]
fn dec_counter(cpu: &mut Cpu, op: &Op) -> bool {
    let s = op.msize;
    let c = cpu.gpr_sized(1, s).wrapping_sub(1);
    cpu.write_gpr(1, s, c);
    c & crate::flags::mask(s) != 0
}

fn loop_(cpu: &mut Cpu, op: &Op) -> Ex {
    if dec_counter(cpu, op) {
        cpu.next_rip = branch_target(op);
        cpu.block_break = true;
    }
    Ok(())
}

fn loope(cpu: &mut Cpu, op: &Op) -> Ex {
    if dec_counter(cpu, op) && cpu.flags.zf() {
        cpu.next_rip = branch_target(op);
        cpu.block_break = true;
    }
    Ok(())
}

fn loopne(cpu: &mut Cpu, op: &Op) -> Ex {
    if dec_counter(cpu, op) && !cpu.flags.zf() {
        cpu.next_rip = branch_target(op);
        cpu.block_break = true;
    }
    Ok(())
}

fn jrcxz(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.gpr_sized(1, op.msize) == 0 {
        cpu.next_rip = branch_target(op);
        cpu.block_break = true;
    }
    Ok(())
}

fn int_n(_: &mut Cpu, op: &Op) -> Ex {
    Err(Exc::software(op.ins.immediate8()))
}

fn int3(_: &mut Cpu, _: &Op) -> Ex {
    Err(Exc::software(BP))
}

fn int1(_: &mut Cpu, _: &Op) -> Ex {
    let mut e = Exc::software(DB);
    e.kind = ExcKind::Icebp;
    Err(e)
}

fn into(cpu: &mut Cpu, _: &Op) -> Ex {
    if cpu.bitness == 64 {
        return Err(Exc::ud());
    }
    if cpu.flags.of() {
        return Err(Exc::software(OF_VEC));
    }
    Ok(())
}

fn hlt(cpu: &mut Cpu, _: &Op) -> Ex {
    cpu.require_cpl0()?;
    cpu.halted = true;
    cpu.block_break = true;
    Ok(())
}

fn ud(_: &mut Cpu, _: &Op) -> Ex {
    Err(Exc::ud())
}
