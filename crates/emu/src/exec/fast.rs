//! Handlers specialised at decode time for the hottest operand forms: MOV, ADD, SUB, AND, OR,
//! XOR, CMP, TEST, INC, DEC with register/immediate/memory operands of a fixed size, LEA,
//! MOVZX, PUSH/POP of a register, SHL/SHR/SAR of a 32/64-bit register by an immediate. The
//! operation and the operand size are const generics, so each handler is a straight line
//! without the generic operand matching of `Cpu::rd`/`wr`.
//! They must behave exactly like the generic handlers they replace (same reads, writes,
//! access kinds, fault order and lazy-flag records); everything else keeps the generic path.

use iced_x86::{Instruction, Mnemonic as Mn};

use crate::cpu::{Cpu, Ex};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::{mask, FlagOp};
use crate::mem::Access;

const ADD: u8 = 0;
const SUB: u8 = 1;
const AND: u8 = 2;
const OR: u8 = 3;
const XOR: u8 = 4;
const CMP: u8 = 5;
const TEST: u8 = 6;

/// Source operand forms.
const R: u8 = 0;
const I: u8 = 1;
const M: u8 = 2;

/// GPR number of operand `i` (decode guarantees it is a GPR for the handlers using it).
#[inline(always)]
fn gi(op: &Op, i: usize) -> usize {
    op.g[i % 3] as usize & 15
}

#[inline(always)]
fn imm(op: &Op, i: usize) -> u64 {
    match op.o[i % 3] {
        Opnd::Imm(v) => v,
        _ => 0,
    }
}

/// Reads the source operand (index 1) of form `SRC` at size `S`.
#[inline(always)]
fn src<const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex<u64> {
    Ok(match SRC {
        R => cpu.gpr[gi(op, 1)] & mask(S),
        I => imm(op, 1) & mask(S),
        _ => {
            let lin = cpu.mem_lin(op);
            cpu.read_lin(lin, S, Access::READ)?
        }
    })
}

/// Result and lazy-flag record of ALU operation `K`.
#[inline(always)]
fn alu_op<const K: u8, const S: u8>(cpu: &mut Cpu, a: u64, b: u64) -> u64 {
    let (fop, r) = match K {
        ADD => (FlagOp::Add, a.wrapping_add(b)),
        SUB | CMP => (FlagOp::Sub, a.wrapping_sub(b)),
        AND | TEST => (FlagOp::Logic, a & b),
        OR => (FlagOp::Logic, a | b),
        _ => (FlagOp::Logic, a ^ b),
    };
    if fop == FlagOp::Logic {
        cpu.flags.record(FlagOp::Logic, S, 0, 0, r);
    } else {
        cpu.flags.record(fop, S, a, b, r);
    }
    r
}

/// `K reg, SRC` at size `S`.
fn alu_r<const K: u8, const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let b = src::<SRC, S>(cpu, op)?;
    let r = alu_op::<K, S>(cpu, a, b);
    if K != CMP && K != TEST {
        cpu.write_gpr(d, S, r);
    }
    Ok(())
}

/// `K [mem], SRC` (SRC is R or I) at size `S`.
fn alu_m<const K: u8, const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let lin = cpu.mem_lin(op);
    let b = src::<SRC, S>(cpu, op)?;
    if K == CMP || K == TEST {
        let a = cpu.read_lin(lin, S, Access::READ)?;
        alu_op::<K, S>(cpu, a, b);
        return Ok(());
    }
    let a = cpu.read_lin(lin, S, Access::WRITE)?;
    let (fop, r) = match K {
        ADD => (FlagOp::Add, a.wrapping_add(b)),
        SUB => (FlagOp::Sub, a.wrapping_sub(b)),
        AND => (FlagOp::Logic, a & b),
        OR => (FlagOp::Logic, a | b),
        _ => (FlagOp::Logic, a ^ b),
    };
    cpu.write_lin(lin, S, r, Access::WRITE)?;
    if fop == FlagOp::Logic {
        cpu.flags.record(FlagOp::Logic, S, 0, 0, r);
    } else {
        cpu.flags.record(fop, S, a, b, r);
    }
    Ok(())
}

/// `MOV reg, SRC`.
fn mov_r<const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = src::<SRC, S>(cpu, op)?;
    cpu.write_gpr(gi(op, 0), S, v);
    Ok(())
}

/// `MOV [mem], SRC` (R or I).
fn mov_m<const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = src::<SRC, S>(cpu, op)?;
    let lin = cpu.mem_lin(op);
    cpu.write_lin(lin, S, v, Access::WRITE)
}

/// `INC reg` / `DEC reg` (CF kept).
fn incdec_r<const DEC: bool, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let (fop, r) = if DEC { (FlagOp::Dec, a.wrapping_sub(1)) } else { (FlagOp::Inc, a.wrapping_add(1)) };
    cpu.write_gpr(d, S, r);
    let c = cpu.flags.cf();
    cpu.flags.record_carry(fop, S, a, 1, r, c);
    Ok(())
}

const SHL: u8 = 0;
const SHR: u8 = 1;
const SAR: u8 = 2;

/// `SHL/SHR/SAR reg, imm` at size `S` (4 or 8): like `shift::{shl,shr,sar}`, flags lazy.
fn shift_ri<const K: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let c = (imm(op, 1) & if S == 8 { 63 } else { 31 }) as u32;
    if c == 0 {
        // No flags change, but a 32-bit destination is still zero-extended.
        cpu.write_gpr(d, S, a);
        return Ok(());
    }
    let top = S as u32 * 8 - 1;
    let (r, cf, of) = match K {
        SHL => {
            let r = (a << c) & mask(S);
            let cf = (a >> (top + 1 - c)) & 1 != 0;
            (r, cf, c == 1 && ((r >> top) & 1 != 0) != cf)
        }
        SHR => (a >> c, (a >> (c - 1)) & 1 != 0, c == 1 && (a >> top) & 1 != 0),
        _ => {
            let sh = 63 - top;
            let sa = ((a << sh) as i64) >> sh;
            ((sa >> c) as u64 & mask(S), (sa >> (c - 1)) & 1 != 0, false)
        }
    };
    cpu.write_gpr(d, S, r);
    cpu.flags.record_explicit(S, r, cf, of);
    Ok(())
}

/// `ROL/ROR reg, imm` at size `S` (2, 4 or 8): like `shift::{rol,ror}`. They change CF and OF
/// only, so their flags cannot be recorded lazily over the previous ones; with `DEAD` (the next
/// op overwrites every arithmetic flag and cannot fault: [`flags_dead_after`]) they are not
/// computed at all, which is what makes rotate-heavy code (hashes, ciphers) cheap.
fn rot_ri<const LEFT: bool, const DEAD: bool, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let c = (imm(op, 1) & if S == 8 { 63 } else { 31 }) as u32;
    if c == 0 {
        cpu.write_gpr(d, S, a);
        return Ok(());
    }
    let bits = S as u32 * 8;
    let n = c % bits;
    let r = match (n, LEFT) {
        (0, _) => a,
        (_, true) => ((a << n) | (a >> (bits - n))) & mask(S),
        _ => ((a >> n) | (a << (bits - n))) & mask(S),
    };
    cpu.write_gpr(d, S, r);
    if !DEAD {
        let sign = crate::flags::sign_bit(S);
        let (cf, of) = if LEFT {
            let cf = r & 1 != 0;
            (cf, (r & sign != 0) ^ cf)
        } else {
            let cf = r & sign != 0;
            (cf, cf ^ (r & (sign >> 1) != 0))
        };
        use crate::flags::{CF, OF};
        cpu.flags.set_arith(CF | OF, if cf { CF } else { 0 } | if of { OF } else { 0 });
    }
    Ok(())
}

/// `LEA reg, [mem]`.
fn lea<const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let ea = cpu.ea(op);
    cpu.write_gpr(gi(op, 0), S, ea);
    Ok(())
}

/// `MOVZX reg, [mem]` (source size `op.msize`).
fn movzx_m<const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let lin = cpu.mem_lin(op);
    let v = cpu.read_lin(lin, op.msize.clamp(1, 8), Access::READ)?;
    cpu.write_gpr(gi(op, 0), S, v);
    Ok(())
}

/// `MOVZX reg, reg` (source size `SS`).
fn movzx_r<const SS: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.gpr[gi(op, 1)] & mask(SS);
    cpu.write_gpr(gi(op, 0), S, v);
    Ok(())
}

fn push_r<const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.gpr[gi(op, 0)] & mask(S);
    cpu.push(S, v)
}

fn pop_r<const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.peek(0, S)?;
    cpu.adjust_sp(S as u64);
    cpu.write_gpr(gi(op, 0), S, v);
    Ok(())
}

/// Sign-extends the low `S` bytes of `v`.
#[inline(always)]
fn sx<const S: u8>(v: u64) -> i64 {
    let sh = 64 - S as u32 * 8;
    ((v << sh) as i64) >> sh
}

/// `IMUL reg, SRC` (`THREE` false) or `IMUL reg, SRC, imm` (`THREE` true), SRC a register or
/// memory, at size `S` (2, 4 or 8): like `muldiv::imul_n`.
fn imul_r<const SRC: u8, const THREE: bool, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let (a, b) = if THREE {
        (src::<SRC, S>(cpu, op)?, imm(op, 2) & mask(S))
    } else {
        (cpu.gpr[d] & mask(S), src::<SRC, S>(cpu, op)?)
    };
    let p = sx::<S>(a) as i128 * sx::<S>(b) as i128;
    let lo = p as u64 & mask(S);
    let of = sx::<S>(lo) as i128 != p;
    cpu.write_gpr(d, S, lo);
    cpu.flags.record_explicit(S, lo, of, of);
    Ok(())
}

/// `ADC/SBB reg, SRC` at size `S`: like `alu::{adc,sbb}`.
fn adc_r<const SBB: bool, const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let b = src::<SRC, S>(cpu, op)?;
    let c = cpu.flags.cf();
    let (fop, r) = if SBB {
        (FlagOp::Sbb, a.wrapping_sub(b).wrapping_sub(c as u64))
    } else {
        (FlagOp::Adc, a.wrapping_add(b).wrapping_add(c as u64))
    };
    cpu.write_gpr(d, S, r);
    cpu.flags.record_carry(fop, S, a, b, r, c);
    Ok(())
}

/// `SETcc reg8` / `SETcc [mem]`: like `data::setcc`.
fn setcc<const DST: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.flags.cond(op.cc) as u64;
    if DST == R {
        cpu.write_gpr(gi(op, 0), 1, v);
        Ok(())
    } else {
        let lin = cpu.mem_lin(op);
        cpu.write_lin(lin, 1, v, Access::WRITE)
    }
}

/// `CMOVcc reg, SRC` at size `S`: the source is read either way; a 32-bit destination is
/// zero-extended even when the condition is false (like `data::cmovcc`).
fn cmovcc<const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = src::<SRC, S>(cpu, op)?;
    let d = gi(op, 0);
    let v = if cpu.flags.cond(op.cc) { v } else { cpu.gpr[d] };
    cpu.write_gpr(d, S, v);
    Ok(())
}

/// `MOVSX/MOVSXD reg, SRC` from `SS` to `S` bytes.
fn movsx<const SRC: u8, const SS: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = src::<SRC, SS>(cpu, op)?;
    cpu.write_gpr(gi(op, 0), S, sx::<SS>(v) as u64);
    Ok(())
}

/// `Jcc rel` with condition `CC` (the condition evaluation folds to the flag test).
fn jcc<const CC: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.flags.cond(CC) {
        cpu.next_rip = imm(op, 0);
        // Blocks run on past a conditional branch: a taken one leaves the block.
        cpu.block_break = true;
    }
    Ok(())
}

/// The `jcc` instantiation for condition code `cc` (0..=15).
fn jcc_for(cc: u8) -> Option<Handler> {
    Some(match cc {
        0 => jcc::<0>,
        1 => jcc::<1>,
        2 => jcc::<2>,
        3 => jcc::<3>,
        4 => jcc::<4>,
        5 => jcc::<5>,
        6 => jcc::<6>,
        7 => jcc::<7>,
        8 => jcc::<8>,
        9 => jcc::<9>,
        10 => jcc::<10>,
        11 => jcc::<11>,
        12 => jcc::<12>,
        13 => jcc::<13>,
        14 => jcc::<14>,
        15 => jcc::<15>,
        _ => return None,
    })
}

/// One of the `$f::<..., S>` instantiations for the run-time size `$s`.
macro_rules! sized {
    ($s:expr, $f:ident $(, $c:expr)*) => {
        match $s {
            1 => $f::<$({ $c },)* 1> as Handler,
            2 => $f::<$({ $c },)* 2> as Handler,
            4 => $f::<$({ $c },)* 4> as Handler,
            8 => $f::<$({ $c },)* 8> as Handler,
            _ => return None,
        }
    };
}

/// The ALU instantiation for run-time operation `$k`.
macro_rules! alu_kind {
    ($k:expr, $s:expr, $f:ident, $src:expr) => {
        match $k {
            ADD => sized!($s, $f, ADD, $src),
            SUB => sized!($s, $f, SUB, $src),
            AND => sized!($s, $f, AND, $src),
            OR => sized!($s, $f, OR, $src),
            XOR => sized!($s, $f, XOR, $src),
            CMP => sized!($s, $f, CMP, $src),
            _ => sized!($s, $f, TEST, $src),
        }
    };
}

/// Form of operand `i`: register of size `s`, immediate, memory, or None for anything else.
fn form(op: &Op, i: usize, s: u8) -> Option<u8> {
    match op.o[i] {
        Opnd::Gpr { size, .. } if size == s => Some(R),
        Opnd::Imm(_) => Some(I),
        Opnd::Mem => Some(M),
        _ => None,
    }
}

/// A specialised handler for `ins` decoded as `op`, or None to keep the generic one. Only
/// GPR, immediate and memory operands qualify (MOV to/from segment, control or debug
/// registers resolve to other operand kinds and keep their handlers).
pub(crate) fn specialise(ins: &Instruction, op: &Op) -> Option<Handler> {
    if op.locked || ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    if ins.is_jcc_short_or_near() {
        return match op.o[0] {
            Opnd::Imm(_) => jcc_for(op.cc),
            _ => None,
        };
    }
    let s = op.size;
    let k = match ins.mnemonic() {
        Mn::Add => ADD,
        Mn::Sub => SUB,
        Mn::And => AND,
        Mn::Or => OR,
        Mn::Xor => XOR,
        Mn::Cmp => CMP,
        Mn::Test => TEST,
        Mn::Mov if ins.op_count() == 2 => return mov(op, s),
        Mn::Inc | Mn::Dec if form(op, 0, s) == Some(R) => {
            return Some(if ins.mnemonic() == Mn::Dec {
                sized!(s, incdec_r, true)
            } else {
                sized!(s, incdec_r, false)
            });
        }
        Mn::Lea if form(op, 0, s) == Some(R) && op.o[1] == Opnd::Mem => return Some(sized!(s, lea)),
        Mn::Movzx => return movzx(op, s),
        Mn::Shl | Mn::Sal | Mn::Shr | Mn::Sar => return shift(ins, op, s),
        Mn::Rol | Mn::Ror => return rotate(ins, op, s, false),
        Mn::Push if form(op, 0, s) == Some(R) && matches!(s, 2 | 4 | 8) => return Some(sized!(s, push_r)),
        Mn::Pop if form(op, 0, s) == Some(R) && matches!(s, 2 | 4 | 8) => return Some(sized!(s, pop_r)),
        Mn::Imul => return imul(ins, op, s),
        Mn::Adc | Mn::Sbb => return adc(ins, op, s),
        Mn::Movsx | Mn::Movsxd => return movsx_for(op, s),
        m if super::data::is_setcc(m) => {
            return match op.o[0] {
                Opnd::Gpr { size: 1, .. } => Some(setcc::<R>),
                Opnd::Mem => Some(setcc::<M>),
                _ => None,
            };
        }
        m if super::data::is_cmovcc(m) => {
            return match (form(op, 0, s)?, form(op, 1, s)?, s) {
                (R, R, 2 | 4 | 8) => Some(sized!(s, cmovcc, R)),
                (R, M, 2 | 4 | 8) => Some(sized!(s, cmovcc, M)),
                _ => None,
            };
        }
        _ => return None,
    };
    if ins.op_count() != 2 {
        return None;
    }
    Some(match (form(op, 0, s)?, form(op, 1, s)?) {
        (R, R) => alu_kind!(k, s, alu_r, R),
        (R, I) => alu_kind!(k, s, alu_r, I),
        (R, M) => alu_kind!(k, s, alu_r, M),
        (M, R) => alu_kind!(k, s, alu_m, R),
        (M, I) => alu_kind!(k, s, alu_m, I),
        _ => return None,
    })
}

fn imul(ins: &Instruction, op: &Op, s: u8) -> Option<Handler> {
    if form(op, 0, s)? != R || !matches!(s, 2 | 4 | 8) {
        return None;
    }
    Some(match (ins.op_count(), form(op, 1, s)?) {
        (2, R) => sized!(s, imul_r, R, false),
        (2, M) => sized!(s, imul_r, M, false),
        (3, R) if matches!(op.o[2], Opnd::Imm(_)) => sized!(s, imul_r, R, true),
        (3, M) if matches!(op.o[2], Opnd::Imm(_)) => sized!(s, imul_r, M, true),
        _ => return None,
    })
}

fn adc(ins: &Instruction, op: &Op, s: u8) -> Option<Handler> {
    if ins.op_count() != 2 || form(op, 0, s)? != R {
        return None;
    }
    let sbb = ins.mnemonic() == Mn::Sbb;
    Some(match (form(op, 1, s)?, sbb) {
        (R, false) => sized!(s, adc_r, false, R),
        (I, false) => sized!(s, adc_r, false, I),
        (M, false) => sized!(s, adc_r, false, M),
        (R, true) => sized!(s, adc_r, true, R),
        (I, true) => sized!(s, adc_r, true, I),
        _ => sized!(s, adc_r, true, M),
    })
}

fn movsx_for(op: &Op, s: u8) -> Option<Handler> {
    if form(op, 0, s) != Some(R) || !matches!(s, 2 | 4 | 8) {
        return None;
    }
    let (src, ss) = match op.o[1] {
        Opnd::Mem => (M, op.msize),
        Opnd::Gpr { size, .. } => (R, size),
        _ => return None,
    };
    if ss >= s {
        return None;
    }
    Some(match (src, ss) {
        (R, 1) => sized!(s, movsx, R, 1),
        (R, 2) => sized!(s, movsx, R, 2),
        (R, 4) => sized!(s, movsx, R, 4),
        (M, 1) => sized!(s, movsx, M, 1),
        (M, 2) => sized!(s, movsx, M, 2),
        (M, 4) => sized!(s, movsx, M, 4),
        _ => return None,
    })
}

fn shift(ins: &Instruction, op: &Op, s: u8) -> Option<Handler> {
    if ins.op_count() != 2 || form(op, 0, s)? != R || !matches!(op.o[1], Opnd::Imm(_)) {
        return None;
    }
    Some(match (ins.mnemonic(), s) {
        (Mn::Shr, 4) => shift_ri::<SHR, 4>,
        (Mn::Shr, 8) => shift_ri::<SHR, 8>,
        (Mn::Sar, 4) => shift_ri::<SAR, 4>,
        (Mn::Sar, 8) => shift_ri::<SAR, 8>,
        (_, 4) => shift_ri::<SHL, 4>,
        (_, 8) => shift_ri::<SHL, 8>,
        _ => return None,
    })
}

fn rotate(ins: &Instruction, op: &Op, s: u8, dead: bool) -> Option<Handler> {
    if ins.op_count() != 2 || form(op, 0, s)? != R || !matches!(op.o[1], Opnd::Imm(_)) {
        return None;
    }
    Some(match (ins.mnemonic() == Mn::Rol, dead) {
        (true, false) => sized!(s, rot_ri, true, false),
        (true, true) => sized!(s, rot_ri, true, true),
        (false, false) => sized!(s, rot_ri, false, false),
        (false, true) => sized!(s, rot_ri, false, true),
    })
}

/// Whether `next` overwrites all six arithmetic flags without reading them and cannot fault
/// (register and immediate operands only), so the flags of the op before it are never seen:
/// not by a later instruction, not by an exception handler.
fn flags_dead_after(next: &Op) -> bool {
    let writes_all =
        matches!(next.ins.mnemonic(), Mn::Add | Mn::Sub | Mn::And | Mn::Or | Mn::Xor | Mn::Cmp | Mn::Test);
    writes_all
        && !next.locked
        && next.ins.op_count() == 2
        && matches!(next.o[0], Opnd::Gpr { .. })
        && matches!(next.o[1], Opnd::Gpr { .. } | Opnd::Imm(_))
}

/// For a ROL/ROR op followed by `next`: the handler that skips its flags, if they are dead.
pub(crate) fn rotate_without_flags(op: &Op, next: &Op) -> Option<Handler> {
    // The register-by-immediate forms `specialise` gave `rot_ri` (others keep their handler).
    if !matches!(op.ins.mnemonic(), Mn::Rol | Mn::Ror)
        || op.locked
        || op.ins.has_rep_prefix()
        || op.ins.has_repne_prefix()
        || !flags_dead_after(next)
    {
        return None;
    }
    rotate(&op.ins, op, op.size, true)
}

fn mov(op: &Op, s: u8) -> Option<Handler> {
    Some(match (form(op, 0, s)?, form(op, 1, s)?) {
        (R, R) => sized!(s, mov_r, R),
        (R, I) => sized!(s, mov_r, I),
        (R, M) => sized!(s, mov_r, M),
        (M, R) => sized!(s, mov_m, R),
        (M, I) => sized!(s, mov_m, I),
        _ => return None,
    })
}

fn movzx(op: &Op, s: u8) -> Option<Handler> {
    if form(op, 0, s) != Some(R) || !matches!(s, 2 | 4 | 8) {
        return None;
    }
    match op.o[1] {
        Opnd::Mem if matches!(op.msize, 1 | 2) => Some(sized!(s, movzx_m)),
        Opnd::Gpr { size: 1, .. } => Some(sized!(s, movzx_r, 1)),
        Opnd::Gpr { size: 2, .. } => Some(sized!(s, movzx_r, 2)),
        _ => None,
    }
}

mod fused;
pub(crate) use fused::fuse_jcc;

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions};

    use super::specialise;
    use crate::decode::make_op;

    /// Whether the first instruction `build` assembles gets a specialised handler.
    fn fast(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> bool {
        let mut a = CodeAssembler::new(64).unwrap();
        build(&mut a).unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        let ins = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE).decode();
        specialise(&ins, &make_op(&ins, 64)).is_some()
    }

    #[test]
    fn hot_forms_are_specialised() {
        assert!(fast(|a| a.mov(rax, rbx)));
        assert!(fast(|a| a.mov(ecx, 5)));
        assert!(fast(|a| a.mov(rdx, qword_ptr(rsi + rcx * 8 + 16))));
        assert!(fast(|a| a.mov(byte_ptr(rdi), al)));
        assert!(fast(|a| a.mov(dword_ptr(rsp + 8), 7)));
        assert!(fast(|a| a.add(rax, rcx)));
        assert!(fast(|a| a.add(rax, qword_ptr(rbx))));
        assert!(fast(|a| a.add(qword_ptr(rbx), 1)));
        assert!(fast(|a| a.sub(esp, 0x20)));
        assert!(fast(|a| a.cmp(dword_ptr(rax), 5)));
        assert!(fast(|a| a.test(al, 1)));
        assert!(fast(|a| a.xor(eax, eax)));
        assert!(fast(|a| a.dec(ecx)));
        assert!(fast(|a| a.lea(rax, qword_ptr(rbx + rcx * 4 + 1))));
        assert!(fast(|a| a.movzx(eax, byte_ptr(rsi))));
        assert!(fast(|a| a.movzx(eax, cx)));
        assert!(fast(|a| a.push(rbp)));
        assert!(fast(|a| a.pop(r12)));
        assert!(fast(|a| a.shl(rax, 3)));
        assert!(fast(|a| a.shr(r9d, 1)));
        assert!(fast(|a| a.sar(rdx, 63)));
        assert!(fast(|a| a.imul_2(rax, rbx)));
        assert!(fast(|a| a.imul_2(ecx, dword_ptr(rsi))));
        assert!(fast(|a| a.imul_3(r8, qword_ptr(rdi + 8), 0x61c8_8647)));
        assert!(fast(|a| a.adc(rdx, rcx)));
        assert!(fast(|a| a.sbb(eax, 0)));
        assert!(fast(|a| a.movsx(rax, byte_ptr(rsi))));
        assert!(fast(|a| a.movsxd(rax, ecx)));
        assert!(fast(|a| a.sete(al)));
        assert!(fast(|a| a.setb(byte_ptr(rdi))));
        assert!(fast(|a| a.cmovne(eax, ecx)));
        assert!(fast(|a| a.cmovg(rax, qword_ptr(rbx))));
        let mut a = CodeAssembler::new(64).unwrap();
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        a.jne(l).unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        let ins = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE).decode();
        assert!(specialise(&ins, &make_op(&ins, 64)).is_some());
    }

    /// A rotate whose flags the next instruction overwrites skips them; the registers and the
    /// flags after the pair are those of the two instructions run the generic way.
    #[test]
    fn rotates_skip_flags_only_when_the_next_op_overwrites_them() {
        use crate::cpu::Cpu;
        use crate::decode::{decode_block, make_op, Key};
        use crate::mem::Memory;

        let key = Key { rip: 0x1000, phys: 0x1000, bits: 64 };
        let block_of = |f: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| {
            let mut a = CodeAssembler::new(64).unwrap();
            f(&mut a).unwrap();
            a.nop().unwrap();
            let bytes = a.assemble(0x1000).unwrap();
            (decode_block(&bytes, &key).unwrap(), bytes)
        };
        type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;
        let dead: [Build; 5] = [
            |a| {
                a.ror(eax, 7)?;
                a.xor(eax, ebx)
            },
            |a| {
                a.rol(rax, 13)?;
                a.add(rax, 5)
            },
            |a| {
                a.ror(ax, 8)?;
                a.cmp(ax, bx)
            },
            |a| {
                a.rol(eax, 1)?;
                a.test(eax, eax)
            },
            |a| {
                a.ror(rax, 0)?;
                a.and(ecx, 3)
            },
        ];
        let live: [Build; 4] = [
            |a| {
                a.ror(eax, 7)?;
                a.adc(eax, ebx)
            },
            |a| {
                a.rol(rax, 13)?;
                a.inc(rax)
            },
            |a| {
                a.ror(eax, 3)?;
                a.xor(eax, dword_ptr(rbx))
            },
            |a| {
                a.rol(eax, 3)?;
                a.mov(ecx, eax)
            },
        ];
        for (i, f) in dead.iter().chain(live.iter()).enumerate() {
            let (block, bytes) = block_of(f);
            let rot = &block.ops[0];
            let generic = make_op(&rot.ins, 64);
            let skips = rot.exec as usize != generic.exec as usize;
            assert_eq!(skips, i < dead.len(), "case {i}: {:?}", rot.ins.mnemonic());
            if i >= dead.len() {
                continue;
            }
            // Same registers and flags as the generic, one-at-a-time execution.
            let mut d = iced_x86::Decoder::with_ip(64, &bytes, 0x1000, iced_x86::DecoderOptions::NONE);
            let singles: Vec<_> = (0..2).map(|_| make_op(&d.decode(), 64)).collect();
            for (x, y, fl) in
                [(0x8000_0001u64, 3u64, 0u64), (0x1234_5678_9abc_def0, 0xffff, 0x8d5), (1, 1, 1)]
            {
                let (mut c1, mut c2) = (Cpu::new(Memory::empty(), 0), Cpu::new(Memory::empty(), 0));
                for c in [&mut c1, &mut c2] {
                    c.gpr[0] = x;
                    c.gpr[3] = y;
                    c.flags.set(fl | 2);
                }
                for op in &block.ops[..2] {
                    c1.next_rip = op.ins.next_ip();
                    (op.exec)(&mut c1, op).unwrap();
                }
                for op in &singles {
                    c2.next_rip = op.ins.next_ip();
                    (op.exec)(&mut c2, op).unwrap();
                }
                assert_eq!(c1.gpr, c2.gpr, "case {i}");
                assert_eq!(c1.flags.get(), c2.flags.get(), "case {i}");
            }
        }
    }

    #[test]
    fn other_forms_keep_the_generic_handler() {
        assert!(!fast(|a| a.lock().add(qword_ptr(rbx), rax)));
        assert!(!fast(|a| a.xchg(qword_ptr(rbx), rax)));
        assert!(!fast(|a| a.mov(ah, 1)));
        assert!(!fast(|a| a.sete(ah)));
        assert!(!fast(|a| a.imul(rcx)));
        assert!(!fast(|a| a.mov(ds, ax)));
        assert!(!fast(|a| a.mov(rax, cr3)));
        assert!(!fast(|a| a.adc(qword_ptr(rbx), rax)));
        assert!(!fast(|a| a.movsx(ax, ah)));
        assert!(!fast(|a| a.push(fs)));
        assert!(!fast(|a| a.movzx(eax, ah)));
        assert!(!fast(|a| a.shl(rax, cl)));
        assert!(!fast(|a| a.shr(qword_ptr(rbx), 2)));
        assert!(!fast(|a| a.sar(ax, 2)));
    }
}
