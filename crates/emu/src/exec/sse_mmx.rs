//! MMX register forms (MMX, the SSE "MMX extensions" and the SSE2 forms on MM registers):
//! moves, the packed integer operations of `sse.rs` on 64 bits, shifts, PSHUFW, PMOVMSKB,
//! PEXTRW/PINSRW, MASKMOVQ, MOVNTQ, MOVQ2DQ/MOVDQ2Q. The conversions CVTPI2PS/CVT(T)PS2PI/
//! CVTPI2PD/CVT(T)PD2PI run on the host and are in `sse_float.rs`.
//!
//! MMi is the mantissa of physical x87 register i. Every MMX instruction checks CR0.EM (#UD),
//! CR0.TS (#NM) and a pending x87 exception (#MF with CR0.NE), then sets TOP to 0 and all tags
//! valid; a written MM register gets the exponent/sign field 0xffff. `fpr` holds ST(0)..ST(7),
//! so after TOP is 0, MMi is `fpr[i]`.

use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

use super::fpu::{pending_check, sse_check, x87_check};
use super::sse::{binary_op, lane, shift_lanes, xreg};
use crate::cpu::{Cpu, Ex, Exc, CR0_EM};
use crate::decode::{Handler, Op};
use crate::mem::Access;

/// The MM register number of operand `i`.
pub(super) fn mreg(ins: &Instruction, i: u32) -> Option<usize> {
    if ins.op_kind(i) != OpKind::Register {
        return None;
    }
    let r = ins.op_register(i);
    (Register::MM0..=Register::MM7)
        .contains(&r)
        .then(|| (r as usize).wrapping_sub(Register::MM0 as usize) & 7)
}

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    let any_mm = (0..ins.op_count()).any(|i| mreg(ins, i).is_some());
    if !any_mm || ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Cvtpi2ps | M::Cvtps2pi | M::Cvttps2pi | M::Cvtpi2pd | M::Cvtpd2pi | M::Cvttpd2pi => return None,
        M::Movd | M::Movq | M::Movntq => mov,
        M::Movq2dq | M::Movdq2q => mov_xmm,
        M::Pshufw => pshufw,
        M::Pmovmskb => pmovmskb,
        M::Pextrw => pextrw,
        M::Pinsrw => pinsrw,
        M::Maskmovq => maskmovq,
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => shift,
        M::Punpckhbw | M::Punpckhwd | M::Punpckhdq | M::Packsswb | M::Packssdw | M::Packuswb => binary,
        m if binary_op(m, 0, 0).is_some() => binary,
        _ => return None,
    })
}

/// The MMX exception checks and the switch to MMX state (TOP 0, all registers valid).
pub(super) fn enter(cpu: &mut Cpu) -> Ex {
    if cpu.cr0 & CR0_EM != 0 {
        return Err(Exc::ud());
    }
    x87_check(cpu)?;
    pending_check(cpu)?;
    let f = &mut cpu.fpu;
    f.fpr.rotate_left((8 - (f.fsw as usize >> 11 & 7)) & 7);
    f.fsw &= !(7 << 11);
    f.ftwx = 0xff;
    Ok(())
}

pub(super) fn mm(cpu: &Cpu, i: usize) -> u64 {
    let r = &cpu.fpu.fpr[i & 7];
    u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]])
}

pub(super) fn set_mm(cpu: &mut Cpu, i: usize, v: u64) {
    let r = &mut cpu.fpu.fpr[i & 7];
    r[..8].copy_from_slice(&v.to_le_bytes());
    r[8..10].copy_from_slice(&[0xff, 0xff]);
}

/// Reads operand `i`: an MM or XMM register (low 64 bits), a GPR, memory of the instruction's
/// memory size (at most 8 bytes), or an immediate.
pub(super) fn src(cpu: &mut Cpu, op: &Op, i: u32) -> Ex<u64> {
    if let Some(m) = mreg(&op.ins, i) {
        return Ok(mm(cpu, m));
    }
    if let Some(x) = xreg(&op.ins, i) {
        return Ok(u128::from_le_bytes(cpu.fpu.xmm[x]) as u64);
    }
    match op.ins.op_kind(i) {
        OpKind::Memory => {
            let lin = cpu.mem_lin(op);
            let n = op.ins.memory_size().size().clamp(1, 8);
            let mut b = [0u8; 8];
            cpu.read_bytes(lin, &mut b[..n], Access::READ)?;
            Ok(u64::from_le_bytes(b))
        }
        OpKind::Register => cpu.rd(op, i as usize, 8),
        _ => Ok(op.ins.immediate(i)),
    }
}

/// Writes operand `i` (MM register, GPR or memory) with `size` bytes of `v`.
pub(super) fn dst(cpu: &mut Cpu, op: &Op, i: u32, v: u64, size: u8) -> Ex {
    if let Some(m) = mreg(&op.ins, i) {
        set_mm(cpu, m, v);
        return Ok(());
    }
    let size = if op.ins.op_kind(i) == OpKind::Memory { size } else { cpu.opnd_size(op, i as usize) };
    cpu.wr(op, i as usize, size, v)
}

/// MOVD/MOVQ/MOVNTQ between MM registers, GPRs and memory (MOVD zero-extends into MM).
fn mov(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let size = if op.ins.mnemonic() == M::Movd { 4 } else { 8 };
    let v = src(cpu, op, 1)? & if size == 4 { 0xffff_ffff } else { u64::MAX };
    dst(cpu, op, 0, v, size)
}

/// MOVQ2DQ xmm, mm (zero-extends) and MOVDQ2Q mm, xmm (SSE2: also the SSE checks).
fn mov_xmm(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    enter(cpu)?;
    let v = src(cpu, op, 1)?;
    match xreg(&op.ins, 0) {
        Some(x) => cpu.fpu.xmm[x] = (v as u128).to_le_bytes(),
        None => dst(cpu, op, 0, v, 8)?,
    }
    Ok(())
}

/// The packed operations of `sse.rs` on 64 bits. Lane-wise results are the low half of the
/// 128-bit ones; the high unpacks take the high halves of both operands, and the packs read
/// the destination and source as one 128-bit vector.
fn binary(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let b = src(cpu, op, 1)? as u128;
    let a = src(cpu, op, 0)? as u128;
    let m = op.ins.mnemonic();
    let r = match m {
        M::Punpckhbw => binary_op(M::Punpcklbw, a >> 32, b >> 32),
        M::Punpckhwd => binary_op(M::Punpcklwd, a >> 32, b >> 32),
        M::Punpckhdq => binary_op(M::Punpckldq, a >> 32, b >> 32),
        M::Packsswb | M::Packssdw | M::Packuswb => binary_op(m, a | b << 64, 0),
        _ => binary_op(m, a, b),
    }
    .ok_or_else(Exc::ud)?;
    dst(cpu, op, 0, r as u64, 8)
}

fn shift(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let count = src(cpu, op, 1)?;
    let r = shift_lanes(op.ins.mnemonic(), src(cpu, op, 0)? as u128, count);
    dst(cpu, op, 0, r as u64, 8)
}

fn pshufw(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let s = src(cpu, op, 1)? as u128;
    let imm = op.ins.immediate(2) as u32;
    let r = (0..4).fold(0u64, |r, i| r | lane(s, 2, (imm >> (2 * i)) & 3) << (16 * i));
    dst(cpu, op, 0, r, 8)
}

fn pmovmskb(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let s = src(cpu, op, 1)?;
    let r = (0..8).fold(0u64, |r, i| r | ((s >> (8 * i + 7)) & 1) << i);
    dst(cpu, op, 0, r, 4)
}

fn pextrw(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let s = src(cpu, op, 1)?;
    let n = op.ins.immediate(2) & 3;
    dst(cpu, op, 0, (s >> (16 * n)) & 0xffff, 4)
}

fn pinsrw(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let v = src(cpu, op, 1)? & 0xffff;
    let n = op.ins.immediate(2) & 3;
    let d = src(cpu, op, 0)?;
    dst(cpu, op, 0, (d & !(0xffff << (16 * n))) | (v << (16 * n)), 8)
}

/// MASKMOVQ: the bytes of operand 1 whose byte in operand 2 has bit 7 set go to seg:rDI.
fn maskmovq(cpu: &mut Cpu, op: &Op) -> Ex {
    enter(cpu)?;
    let (data, mask) = (src(cpu, op, 1)?.to_le_bytes(), src(cpu, op, 2)?.to_le_bytes());
    let lin = cpu.lin(op.m.seg as usize, cpu.gpr[7] & op.m.amask);
    for i in 0..8 {
        if mask[i] & 0x80 != 0 {
            cpu.write_bytes(lin.wrapping_add(i as u64), &data[i..i + 1], Access::WRITE)?;
        }
    }
    Ok(())
}
