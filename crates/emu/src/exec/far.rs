//! Far transfers: JMP/CALL ptr16:x and m16:x, RETF, IRET. Call gates and task switches are
//! not supported (#GP), as Linux uses neither.

use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

use crate::cpu::{Cpu, Ex, Exc, CS, SS};
use crate::decode::{Handler, Op};
use crate::mem::Access;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Jmp => jmp_far,
        M::Call => call_far,
        M::Retf => retf,
        M::Iret | M::Iretd | M::Iretq => iret,
        _ => return None,
    })
}

/// Reads the far target (selector, offset, operand size in bytes).
fn far_target(cpu: &mut Cpu, op: &Op) -> Ex<(u16, u64, u8)> {
    match op.ins.op0_kind() {
        OpKind::FarBranch16 => Ok((op.ins.far_branch_selector(), op.ins.far_branch16() as u64, 2)),
        OpKind::FarBranch32 => Ok((op.ins.far_branch_selector(), op.ins.far_branch32() as u64, 4)),
        _ => {
            let size = op.msize.saturating_sub(2).clamp(2, 8);
            let lin = cpu.mem_lin(op);
            let off = cpu.read_lin(lin, size, Access::READ)?;
            let sel = cpu.read_lin(cpu.wrap_lin(lin.wrapping_add(size as u64)), 2, Access::READ)? as u16;
            Ok((sel, off, size))
        }
    }
}

/// Validates a far JMP/CALL target code segment at the current privilege.
fn enter_code_segment(cpu: &mut Cpu, sel: u16, off: u64) -> Ex {
    let cpl = cpu.cpl;
    let cs = cpu.load_cs_checked(sel, cpl)?;
    if cpu.protected() {
        let conforming = cs.type_ & 4 != 0;
        let rpl = (sel & 3) as u8;
        let ok = if conforming { cs.dpl <= cpl } else { rpl <= cpl && cs.dpl == cpl };
        if !ok {
            return Err(Exc::gp(sel as u32 & 0xfffc));
        }
    }
    cpu.set_cs(cs, cpl);
    cpu.next_rip = off;
    Ok(())
}

fn jmp_far(cpu: &mut Cpu, op: &Op) -> Ex {
    let (sel, off, _) = far_target(cpu, op)?;
    enter_code_segment(cpu, sel, off)
}

fn call_far(cpu: &mut Cpu, op: &Op) -> Ex {
    let (sel, off, size) = far_target(cpu, op)?;
    let (old_cs, ret, sp) = (cpu.seg[CS].selector, cpu.next_rip, cpu.gpr[4]);
    let saved_cs = cpu.seg[CS];
    let r = (|| {
        cpu.push(size, old_cs as u64)?;
        cpu.push(size, ret)?;
        enter_code_segment(cpu, sel, off)
    })();
    if r.is_err() {
        cpu.gpr[4] = sp;
        cpu.seg[CS] = saved_cs;
        cpu.update_mode();
    }
    r
}

fn retf(cpu: &mut Cpu, op: &Op) -> Ex {
    let size = match op.ins.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfq | Code::Retfq_imm16 => 8,
        _ => 4,
    };
    let imm = if op.ins.op_count() > 0 { op.ins.immediate16() as u64 } else { 0 };
    let off = cpu.peek(0, size)?;
    let sel = cpu.peek(size as u64, size)? as u16;
    let rpl = (sel & 3) as u8;
    if !cpu.protected() || rpl == cpu.cpl {
        let cs = cpu.load_cs_checked(sel, if cpu.protected() { rpl } else { 0 })?;
        cpu.adjust_sp(2 * size as u64 + imm);
        cpu.set_cs(cs, rpl);
        cpu.next_rip = off;
        return Ok(());
    }
    if rpl < cpu.cpl {
        return Err(Exc::gp(sel as u32 & 0xfffc));
    }
    // Return to an outer privilege level: SS:rSP follow on the stack.
    let new_sp = cpu.peek(2 * size as u64 + imm, size)?;
    let new_ss = cpu.peek(3 * size as u64 + imm, size)? as u16;
    let cs = cpu.load_cs_checked(sel, rpl)?;
    let old = (cpu.seg, cpu.cpl, cpu.gpr[4]);
    cpu.set_cs(cs, rpl);
    if let Err(e) = cpu.load_seg(SS, new_ss) {
        cpu.seg = old.0;
        cpu.update_mode();
        cpu.cpl = old.1;
        return Err(e);
    }
    cpu.set_sp(new_sp.wrapping_add(imm));
    cpu.next_rip = off;
    Ok(())
}

fn iret(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.serialize();
    let size = match op.ins.code() {
        Code::Iretw => 2,
        Code::Iretq => 8,
        _ => 4,
    };
    cpu.iret(size)
}
