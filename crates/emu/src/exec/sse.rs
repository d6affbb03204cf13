//! SSE/SSE2 integer, logical, shuffle and move forms (the set Linux and glibc's baseline
//! x86-64 string functions use). XMM registers live in `cpu.fpu.xmm`; every form checks
//! CR4.OSFXSR/CR0.EM (#UD) and CR0.TS (#NM). 128-bit memory operands of non-`U` forms must be
//! 16-byte aligned (#GP(0)). MMX-register forms are in `sse_mmx.rs`.

use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

use super::fpu::sse_check;
use crate::cpu::{Cpu, Ex, Exc};
use crate::decode::{Handler, Op};
use crate::mem::Access;

/// True when operand `i` is an XMM register.
pub(super) fn xreg(ins: &Instruction, i: u32) -> Option<usize> {
    if ins.op_kind(i) != OpKind::Register {
        return None;
    }
    let r = ins.op_register(i);
    (Register::XMM0..=Register::XMM15)
        .contains(&r)
        .then(|| (r as usize).wrapping_sub(Register::XMM0 as usize) & 15)
}

/// True when `ins` has an MMX or XMM register operand (such instructions are all SSE/MMX).
pub(super) fn has_vector_operand(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|i| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            (Register::XMM0..=Register::XMM15).contains(&r) || (Register::MM0..=Register::MM7).contains(&r)
        }
    })
}

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    // MMX register forms are not implemented; YMM/ZMM (VEX/EVEX) neither.
    let any_mm = (0..ins.op_count()).any(|i| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            (Register::MM0..=Register::MM7).contains(&r)
                || (r.is_vector_register() && !(Register::XMM0..=Register::XMM15).contains(&r))
        }
    });
    if any_mm || ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Movaps | M::Movapd | M::Movdqa | M::Movntdq | M::Movntps | M::Movntpd => mov_aligned,
        M::Movups | M::Movupd | M::Movdqu => mov_unaligned,
        M::Movd | M::Movq => movdq,
        M::Movss | M::Movsd => movs_scalar,
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd | M::Movhlps | M::Movlhps => movlh,
        M::Pmovmskb | M::Movmskps | M::Movmskpd => movmsk,
        M::Maskmovdqu => maskmovdqu,
        M::Pextrw => pextrw,
        M::Pinsrw => pinsrw,
        M::Pshufd | M::Pshuflw | M::Pshufhw | M::Shufps | M::Shufpd => shuffle,
        M::Pslldq | M::Psrldq => byte_shift,
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => bit_shift,
        m if binary_op(m, 0, 0).is_some() => binary,
        _ => return None,
    })
}

/// Reads a source operand (XMM, GPR, memory of the instruction's memory size, immediate) as
/// a 128-bit value; `align` requires 16-byte alignment of a 16-byte memory operand.
pub(super) fn src(cpu: &mut Cpu, op: &Op, i: u32, align: bool) -> Ex<u128> {
    if let Some(x) = xreg(&op.ins, i) {
        return Ok(u128::from_le_bytes(cpu.fpu.xmm[x]));
    }
    match op.ins.op_kind(i) {
        OpKind::Memory => {
            let lin = cpu.mem_lin(op);
            let n = op.ins.memory_size().size().min(16);
            if align && n == 16 && lin & 15 != 0 {
                return Err(Exc::gp(0));
            }
            let mut b = [0u8; 16];
            cpu.read_bytes(lin, &mut b[..n], Access::READ)?;
            Ok(u128::from_le_bytes(b))
        }
        OpKind::Register => Ok(cpu.rd(op, i as usize, 8)? as u128),
        _ => Ok(op.ins.immediate(i) as u128),
    }
}

/// Writes `v` to operand `i`: an XMM register gets all 128 bits, a GPR `size` bytes
/// (zero-extended by the register rules), memory `size` bytes.
pub(super) fn dst(cpu: &mut Cpu, op: &Op, i: u32, v: u128, size: usize, align: bool) -> Ex {
    if let Some(x) = xreg(&op.ins, i) {
        cpu.fpu.xmm[x] = v.to_le_bytes();
        return Ok(());
    }
    match op.ins.op_kind(i) {
        OpKind::Memory => {
            let lin = cpu.mem_lin(op);
            if align && size == 16 && lin & 15 != 0 {
                return Err(Exc::gp(0));
            }
            let b = v.to_le_bytes();
            cpu.write_bytes(lin, &b[..size.min(16)], Access::WRITE)
        }
        _ => cpu.wr(op, i as usize, size.min(8) as u8, v as u64),
    }
}

pub(super) fn xmm(cpu: &Cpu, op: &Op, i: u32) -> u128 {
    xreg(&op.ins, i).map_or(0, |x| u128::from_le_bytes(cpu.fpu.xmm[x]))
}

fn mov_aligned(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let v = src(cpu, op, 1, true)?;
    dst(cpu, op, 0, v, 16, true)
}

fn mov_unaligned(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let v = src(cpu, op, 1, false)?;
    dst(cpu, op, 0, v, 16, false)
}

/// MASKMOVDQU: the bytes of operand 1 whose byte in operand 2 has bit 7 set go to
/// seg:rDI (DS unless overridden, address size from the encoding), byte runs one write each;
/// no bytes selected, no access. A fault part way is restartable (the writes are idempotent).
fn maskmovdqu(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let (data, mask) = (xmm(cpu, op, 1).to_le_bytes(), xmm(cpu, op, 2).to_le_bytes());
    let lin = cpu.lin(op.m.seg as usize, cpu.gpr[7] & op.m.amask);
    let mut i = 0;
    while i < 16 {
        if mask[i] & 0x80 == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < 16 && mask[i] & 0x80 != 0 {
            i += 1;
        }
        cpu.write_bytes(lin.wrapping_add(start as u64), &data[start..i], Access::WRITE)?;
    }
    Ok(())
}

/// MOVD/MOVQ in all directions: a value moved into an XMM register is zero-extended.
fn movdq(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let size = if op.ins.mnemonic() == M::Movd { 4 } else { 8 };
    let m = if size == 4 { 0xffff_ffffu128 } else { u64::MAX as u128 };
    let v = src(cpu, op, 1, false)? & m;
    dst(cpu, op, 0, v, size, false)
}

/// MOVSS/MOVSD: register to register merges the low element; a load zeroes the rest.
fn movs_scalar(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let size = if op.ins.mnemonic() == M::Movss { 4 } else { 8 };
    let m = if size == 4 { 0xffff_ffffu128 } else { u64::MAX as u128 };
    let v = src(cpu, op, 1, false)? & m;
    if xreg(&op.ins, 0).is_some() && xreg(&op.ins, 1).is_some() {
        let d = xmm(cpu, op, 0);
        return dst(cpu, op, 0, (d & !m) | v, 16, false);
    }
    dst(cpu, op, 0, v, size, false)
}

/// MOVLPS/MOVLPD/MOVHPS/MOVHPD (loads merge, stores take the half), MOVHLPS, MOVLHPS.
fn movlh(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let lo = u64::MAX as u128;
    let high = matches!(op.ins.mnemonic(), M::Movhps | M::Movhpd);
    let s = src(cpu, op, 1, false)?;
    if xreg(&op.ins, 0).is_none() {
        // Store of one half.
        let v = if high { s >> 64 } else { s & lo };
        return dst(cpu, op, 0, v, 8, false);
    }
    let d = xmm(cpu, op, 0);
    let r = match op.ins.mnemonic() {
        M::Movhlps => (d & !lo) | (s >> 64),
        M::Movlhps => (d & lo) | (s << 64),
        _ if high => (d & lo) | ((s & lo) << 64),
        _ => (d & !lo) | (s & lo),
    };
    dst(cpu, op, 0, r, 16, false)
}

fn movmsk(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let s = xmm(cpu, op, 1);
    let lane = match op.ins.mnemonic() {
        M::Pmovmskb => 1,
        M::Movmskps => 4,
        _ => 8,
    };
    let mut r = 0u64;
    for i in 0..16 / lane {
        r |= (((s >> (lane * 8 * (i + 1) - 1)) & 1) as u64) << i;
    }
    let size = cpu.opnd_size(op, 0);
    cpu.wr(op, 0, size, r)
}

fn pextrw(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let s = xmm(cpu, op, 1);
    let n = (op.ins.immediate(2) & 7) as u32;
    let v = ((s >> (16 * n)) & 0xffff) as u64;
    let size = cpu.opnd_size(op, 0);
    cpu.wr(op, 0, size, v)
}

fn pinsrw(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let v = src(cpu, op, 1, false)? & 0xffff;
    let n = (op.ins.immediate(2) & 7) as u32;
    let d = xmm(cpu, op, 0);
    dst(cpu, op, 0, (d & !(0xffffu128 << (16 * n))) | (v << (16 * n)), 16, false)
}

pub(super) fn lane(v: u128, bytes: u32, i: u32) -> u64 {
    let bits = bytes * 8;
    ((v >> (bits * i)) & ((1u128 << bits) - 1)) as u64
}

fn shuffle(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let s = src(cpu, op, 1, true)?;
    let imm = op.ins.immediate(2) as u32;
    let d = xmm(cpu, op, 0);
    let sel = |i: u32| (imm >> (2 * i)) & 3;
    let r = match op.ins.mnemonic() {
        M::Pshufd => (0..4).fold(0u128, |r, i| r | (lane(s, 4, sel(i)) as u128) << (32 * i)),
        M::Pshuflw => {
            let lo = (0..4).fold(0u128, |r, i| r | (lane(s, 2, sel(i)) as u128) << (16 * i));
            (s & !(u64::MAX as u128)) | lo
        }
        M::Pshufhw => {
            let hi = (0..4).fold(0u128, |r, i| r | (lane(s, 2, 4 + sel(i)) as u128) << (16 * (i + 4)));
            (s & u64::MAX as u128) | hi
        }
        M::Shufps => {
            let a = (0..2).fold(0u128, |r, i| r | (lane(d, 4, sel(i)) as u128) << (32 * i));
            (2..4).fold(a, |r, i| r | (lane(s, 4, sel(i)) as u128) << (32 * i))
        }
        _ => (lane(d, 8, imm & 1) as u128) | (lane(s, 8, (imm >> 1) & 1) as u128) << 64,
    };
    dst(cpu, op, 0, r, 16, false)
}

fn byte_shift(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let n = op.ins.immediate(1);
    let d = xmm(cpu, op, 0);
    let r = match (n, op.ins.mnemonic()) {
        (16.., _) => 0,
        (n, M::Pslldq) => d << (8 * n),
        (n, _) => d >> (8 * n),
    };
    dst(cpu, op, 0, r, 16, false)
}

fn bit_shift(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let count = if op.ins.op_kind(1) == OpKind::Memory || xreg(&op.ins, 1).is_some() {
        src(cpu, op, 1, true)? as u64
    } else {
        op.ins.immediate(1)
    };
    let r = shift_lanes(op.ins.mnemonic(), xmm(cpu, op, 0), count);
    dst(cpu, op, 0, r, 16, false)
}

/// PSLL/PSRL/PSRA W/D/Q of every lane of `d` by `count` (XMM and MMX forms alike): logical
/// shifts by the lane width or more give 0, arithmetic ones fill with the sign.
pub(super) fn shift_lanes(m: M, d: u128, count: u64) -> u128 {
    let (bytes, kind) = match m {
        M::Psllw => (2, 0),
        M::Pslld => (4, 0),
        M::Psllq => (8, 0),
        M::Psrlw => (2, 1),
        M::Psrld => (4, 1),
        M::Psrlq => (8, 1),
        M::Psraw => (2, 2),
        _ => (4, 2),
    };
    let bits = bytes * 8;
    map_lanes(d, 0, bytes, |a, _| match kind {
        0 if count < bits as u64 => a << count,
        1 if count < bits as u64 => a >> count,
        2 => (sext(a, bits) >> count.min(bits as u64 - 1)) as u64,
        _ => 0,
    })
}

pub(super) fn sext(v: u64, bits: u32) -> i64 {
    ((v << (64 - bits)) as i64) >> (64 - bits)
}

/// Applies `f` lane by lane (`bytes` per lane); results are truncated to the lane.
pub(super) fn map_lanes(a: u128, b: u128, bytes: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let bits = bytes * 8;
    let m = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    (0..16 / bytes)
        .fold(0u128, |r, i| r | ((f(lane(a, bytes, i), lane(b, bytes, i)) & m) as u128) << (bits * i))
}

/// Interleaves the low (or high) halves of `a` and `b` in `bytes`-sized lanes.
fn unpack(a: u128, b: u128, bytes: u32, high: bool) -> u128 {
    let n = 8 / bytes;
    let base = if high { n } else { 0 };
    let bits = bytes * 8;
    (0..n).fold(0u128, |r, i| {
        let x = (lane(a, bytes, base + i) as u128) << (bits * 2 * i);
        let y = (lane(b, bytes, base + i) as u128) << (bits * (2 * i + 1));
        r | x | y
    })
}

/// Saturating packs of `a` then `b` (lanes of `bytes`) into lanes of half the size.
fn pack(a: u128, b: u128, bytes: u32, signed: bool) -> u128 {
    let bits = bytes * 4;
    let (lo, hi) =
        if signed { (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1) } else { (0, (1i64 << bits) - 1) };
    let n = 16 / bytes;
    let m = (1u128 << bits) - 1;
    (0..2 * n).fold(0u128, |r, i| {
        let v = if i < n { lane(a, bytes, i) } else { lane(b, bytes, i - n) };
        let s = sext(v, bytes * 8).clamp(lo, hi) as u128 & m;
        r | s << (bits * i)
    })
}

/// The packed binary operations `dst = f(dst, src)`; `None` for mnemonics not in this group.
pub(super) fn binary_op(m: M, a: u128, b: u128) -> Option<u128> {
    let eq = |x: u64, y: u64| if x == y { u64::MAX } else { 0 };
    let gt = |bits: u32| move |x: u64, y: u64| if sext(x, bits) > sext(y, bits) { u64::MAX } else { 0 };
    Some(match m {
        M::Pand | M::Andps | M::Andpd => a & b,
        M::Por | M::Orps | M::Orpd => a | b,
        M::Pxor | M::Xorps | M::Xorpd => a ^ b,
        M::Pandn | M::Andnps | M::Andnpd => !a & b,
        M::Paddb => map_lanes(a, b, 1, u64::wrapping_add),
        M::Paddw => map_lanes(a, b, 2, u64::wrapping_add),
        M::Paddd => map_lanes(a, b, 4, u64::wrapping_add),
        M::Paddq => map_lanes(a, b, 8, u64::wrapping_add),
        M::Psubb => map_lanes(a, b, 1, u64::wrapping_sub),
        M::Psubw => map_lanes(a, b, 2, u64::wrapping_sub),
        M::Psubd => map_lanes(a, b, 4, u64::wrapping_sub),
        M::Psubq => map_lanes(a, b, 8, u64::wrapping_sub),
        M::Paddusb => map_lanes(a, b, 1, |x, y| (x + y).min(0xff)),
        M::Paddusw => map_lanes(a, b, 2, |x, y| (x + y).min(0xffff)),
        M::Psubusb | M::Psubusw => map_lanes(a, b, if m == M::Psubusb { 1 } else { 2 }, u64::saturating_sub),
        M::Pcmpeqb => map_lanes(a, b, 1, eq),
        M::Pcmpeqw => map_lanes(a, b, 2, eq),
        M::Pcmpeqd => map_lanes(a, b, 4, eq),
        M::Pcmpgtb => map_lanes(a, b, 1, gt(8)),
        M::Pcmpgtw => map_lanes(a, b, 2, gt(16)),
        M::Pcmpgtd => map_lanes(a, b, 4, gt(32)),
        M::Pminub => map_lanes(a, b, 1, u64::min),
        M::Pmaxub => map_lanes(a, b, 1, u64::max),
        M::Pminsw => map_lanes(a, b, 2, |x, y| if sext(x, 16) < sext(y, 16) { x } else { y }),
        M::Pmaxsw => map_lanes(a, b, 2, |x, y| if sext(x, 16) > sext(y, 16) { x } else { y }),
        M::Pavgb => map_lanes(a, b, 1, |x, y| (x + y + 1) >> 1),
        M::Pavgw => map_lanes(a, b, 2, |x, y| (x + y + 1) >> 1),
        M::Pmullw => map_lanes(a, b, 2, u64::wrapping_mul),
        M::Pmulhw => map_lanes(a, b, 2, |x, y| ((sext(x, 16) * sext(y, 16)) >> 16) as u64),
        M::Pmulhuw => map_lanes(a, b, 2, |x, y| (x * y) >> 16),
        M::Pmuludq => map_lanes(a, b, 8, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        M::Pmaddwd => map_lanes(a, b, 4, |x, y| {
            let lo = sext(x & 0xffff, 16) * sext(y & 0xffff, 16);
            let hi = sext(x >> 16, 16) * sext(y >> 16, 16);
            (lo as i32).wrapping_add(hi as i32) as u32 as u64
        }),
        M::Psadbw => map_lanes(a, b, 8, |x, y| {
            (0..8).map(|i| ((x >> (8 * i)) as u8).abs_diff((y >> (8 * i)) as u8) as u64).sum()
        }),
        M::Paddsb => map_lanes(a, b, 1, |x, y| (sext(x, 8) + sext(y, 8)).clamp(-128, 127) as u64),
        M::Paddsw => map_lanes(a, b, 2, |x, y| (sext(x, 16) + sext(y, 16)).clamp(-32768, 32767) as u64),
        M::Psubsb => map_lanes(a, b, 1, |x, y| (sext(x, 8) - sext(y, 8)).clamp(-128, 127) as u64),
        M::Psubsw => map_lanes(a, b, 2, |x, y| (sext(x, 16) - sext(y, 16)).clamp(-32768, 32767) as u64),
        M::Punpcklbw => unpack(a, b, 1, false),
        M::Punpcklwd => unpack(a, b, 2, false),
        M::Punpckldq | M::Unpcklps => unpack(a, b, 4, false),
        M::Punpcklqdq | M::Unpcklpd => unpack(a, b, 8, false),
        M::Punpckhbw => unpack(a, b, 1, true),
        M::Punpckhwd => unpack(a, b, 2, true),
        M::Punpckhdq | M::Unpckhps => unpack(a, b, 4, true),
        M::Punpckhqdq | M::Unpckhpd => unpack(a, b, 8, true),
        M::Packsswb => pack(a, b, 2, true),
        M::Packssdw => pack(a, b, 4, true),
        M::Packuswb => pack(a, b, 2, false),
        _ => return None,
    })
}

fn binary(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let a = xmm(cpu, op, 0);
    let r = binary_op(op.ins.mnemonic(), a, b).ok_or_else(Exc::ud)?;
    dst(cpu, op, 0, r, 16, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_interleaves_low_bytes() {
        let a = 0x0f0e0d0c0b0a09080706050403020100u128;
        let b = 0x1f1e1d1c1b1a19181716151413121110u128;
        assert_eq!(unpack(a, b, 1, false), 0x17071606150514041303120211011000);
        assert_eq!(unpack(a, b, 8, true), 0x1f1e1d1c1b1a19180f0e0d0c0b0a0908);
    }

    #[test]
    fn pack_saturates() {
        let a = map_lanes(0, 0, 2, |_, _| 0x8000); // -32768 in every word
        let b = map_lanes(0, 0, 2, |_, _| 0x0100); // 256 in every word
        assert_eq!(pack(a, b, 2, true), 0x7f7f7f7f7f7f7f7f_8080808080808080);
        assert_eq!(pack(a, b, 2, false), 0xffffffffffffffff_0000000000000000);
    }

    #[test]
    fn compare_and_minmax() {
        let a = 0x80u128 | 0x01 << 8;
        let b = 0x7fu128 | 0x01 << 8;
        assert_eq!(binary_op(M::Pcmpgtb, a, b).unwrap() & 0xffff, 0);
        assert_eq!(binary_op(M::Pcmpeqb, a, b).unwrap() & 0xffff, 0xff00);
        assert_eq!(binary_op(M::Pminub, a, b).unwrap() & 0xffff, 0x017f);
    }
}
