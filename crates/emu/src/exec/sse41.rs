//! SSE4.1 integer, blend, insert/extract and test forms: PMULLD PMULDQ PMIN/PMAX SB/UW/SD/UD
//! PCMPEQQ PACKUSDW BLENDPS/PD PBLENDW BLENDVPS/PD PBLENDVB INSERTPS EXTRACTPS PINSR B/D/Q
//! PEXTR B/W/D/Q PMOVSX/PMOVZX MPSADBW PHMINPOSUW PTEST MOVNTDQA. The float forms (DPPS/DPPD,
//! ROUND*) run on the host (`sse_float.rs`).
//!
//! Every form checks CPUID.SSE4_1 (#UD), then the SSE state rules; 128-bit memory operands must
//! be 16-byte aligned (#GP(0)); the narrower ones (PMOVSX/ZX, INSERTPS, PINSR*, PEXTR*,
//! EXTRACTPS) need not be.

use iced_x86::{Code, Instruction, Mnemonic as M};

use super::fpu::sse_check;
use super::sse::{dst, lane, map_lanes, sext, src, xmm};
use crate::cpu::{Cpu, Ex, Exc};
use crate::cpuid::SSE41;
use crate::decode::{Handler, Op};
use crate::flags::{ARITH, CF, ZF};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    if ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Blendps | M::Blendpd | M::Pblendw => blend_imm,
        M::Blendvps | M::Blendvpd | M::Pblendvb => blend_var,
        M::Insertps => insertps,
        M::Pinsrb | M::Pinsrd | M::Pinsrq => pinsr,
        M::Pextrb | M::Pextrd | M::Pextrq | M::Extractps => pextr,
        M::Pextrw if matches!(ins.code(), Code::Pextrw_r32m16_xmm_imm8 | Code::Pextrw_r64m16_xmm_imm8) => {
            pextr
        }
        M::Pmovsxbw | M::Pmovsxbd | M::Pmovsxbq | M::Pmovsxwd | M::Pmovsxwq | M::Pmovsxdq => pmov,
        M::Pmovzxbw | M::Pmovzxbd | M::Pmovzxbq | M::Pmovzxwd | M::Pmovzxwq | M::Pmovzxdq => pmov,
        M::Mpsadbw => mpsadbw,
        M::Phminposuw => phminposuw,
        M::Ptest => ptest,
        M::Movntdqa => movntdqa,
        m if binary_op(m, 0, 0).is_some() => binary,
        _ => return None,
    })
}

fn check(cpu: &Cpu) -> Ex {
    cpu.require(SSE41)?;
    sse_check(cpu)
}

/// The lane-wise binary forms `dst = f(dst, src)`; `None` for other mnemonics.
fn binary_op(m: M, a: u128, b: u128) -> Option<u128> {
    let pick = |bits: u32, signed: bool, max: bool| {
        move |x: u64, y: u64| {
            let lt = if signed { sext(x, bits) < sext(y, bits) } else { x < y };
            if lt != max {
                x
            } else {
                y
            }
        }
    };
    Some(match m {
        M::Pmulld => map_lanes(a, b, 4, u64::wrapping_mul),
        M::Pmuldq => {
            map_lanes(a, b, 8, |x, y| (sext(x & 0xffff_ffff, 32) * sext(y & 0xffff_ffff, 32)) as u64)
        }
        M::Pminsb => map_lanes(a, b, 1, pick(8, true, false)),
        M::Pmaxsb => map_lanes(a, b, 1, pick(8, true, true)),
        M::Pminuw => map_lanes(a, b, 2, pick(16, false, false)),
        M::Pmaxuw => map_lanes(a, b, 2, pick(16, false, true)),
        M::Pminsd => map_lanes(a, b, 4, pick(32, true, false)),
        M::Pmaxsd => map_lanes(a, b, 4, pick(32, true, true)),
        M::Pminud => map_lanes(a, b, 4, pick(32, false, false)),
        M::Pmaxud => map_lanes(a, b, 4, pick(32, false, true)),
        M::Pcmpeqq => map_lanes(a, b, 8, |x, y| if x == y { u64::MAX } else { 0 }),
        M::Packusdw => (0..8).fold(0u128, |r, i| {
            let v = if i < 4 { lane(a, 4, i) } else { lane(b, 4, i - 4) };
            r | (sext(v, 32).clamp(0, 0xffff) as u128) << (16 * i)
        }),
        _ => return None,
    })
}

fn binary(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let r = binary_op(op.ins.mnemonic(), xmm(cpu, op, 0), b).ok_or_else(Exc::ud)?;
    dst(cpu, op, 0, r, 16, false)
}

/// Each lane of `bytes` bytes comes from `b` where bit `i` of `sel` is set, else from `a`.
fn select(a: u128, b: u128, bytes: u32, sel: u32) -> u128 {
    let bits = bytes * 8;
    let m = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    (0..16 / bytes).fold(0u128, |r, i| {
        let from = if sel >> i & 1 != 0 { b } else { a };
        r | (from & (m << (bits * i)))
    })
}

fn lane_bytes(m: M) -> u32 {
    match m {
        M::Blendps | M::Blendvps => 4,
        M::Blendpd | M::Blendvpd => 8,
        M::Pblendw => 2,
        _ => 1,
    }
}

/// BLENDPS/BLENDPD/PBLENDW: lanes picked by the immediate.
fn blend_imm(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let sel = op.ins.immediate(2) as u32;
    let r = select(xmm(cpu, op, 0), b, lane_bytes(op.ins.mnemonic()), sel);
    dst(cpu, op, 0, r, 16, false)
}

/// BLENDVPS/BLENDVPD/PBLENDVB: lanes picked by the sign bit of each lane of XMM0.
fn blend_var(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let bytes = lane_bytes(op.ins.mnemonic());
    let mask = u128::from_le_bytes(cpu.fpu.xmm[0]);
    let sel = (0..16 / bytes).fold(0u32, |s, i| s | ((mask >> (bytes * 8 * (i + 1) - 1)) as u32 & 1) << i);
    let r = select(xmm(cpu, op, 0), b, bytes, sel);
    dst(cpu, op, 0, r, 16, false)
}

/// INSERTPS: one dword (from the source register's lane imm[7:6], or m32) into lane imm[5:4],
/// then the lanes in imm[3:0] zeroed.
fn insertps(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let imm = op.ins.immediate(2) as u32;
    let s = src(cpu, op, 1, false)?;
    let v = if super::sse::xreg(&op.ins, 1).is_some() {
        lane(s, 4, imm >> 6 & 3)
    } else {
        s as u64 & 0xffff_ffff
    };
    let at = 32 * (imm >> 4 & 3);
    let mut r = (xmm(cpu, op, 0) & !(0xffff_ffffu128 << at)) | (v as u128) << at;
    r = select(r, 0, 4, imm & 15);
    dst(cpu, op, 0, r, 16, false)
}

/// Lane size in bytes of PINSR*/PEXTR*/EXTRACTPS.
fn elem(m: M) -> u32 {
    match m {
        M::Pinsrb | M::Pextrb => 1,
        M::Pextrw => 2,
        M::Pinsrd | M::Pextrd | M::Extractps => 4,
        _ => 8,
    }
}

/// PINSRB/PINSRD/PINSRQ xmm, r/m, imm8: the low bytes of the GPR or the memory operand into
/// lane imm8 (modulo the lane count).
fn pinsr(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let bytes = elem(op.ins.mnemonic());
    let bits = bytes * 8;
    let m = if bits == 64 { u64::MAX as u128 } else { (1u128 << bits) - 1 };
    let v = src(cpu, op, 1, false)? & m;
    let at = bits * (op.ins.immediate(2) as u32 % (16 / bytes));
    let r = (xmm(cpu, op, 0) & !(m << at)) | v << at;
    dst(cpu, op, 0, r, 16, false)
}

/// PEXTRB/PEXTRW/PEXTRD/PEXTRQ/EXTRACTPS r/m, xmm, imm8: lane imm8 to memory, or zero-extended
/// to the whole GPR.
fn pextr(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let bytes = elem(op.ins.mnemonic());
    let v = lane(xmm(cpu, op, 1), bytes, op.ins.immediate(2) as u32 % (16 / bytes));
    dst(cpu, op, 0, v as u128, bytes as usize, false)
}

/// PMOVSX/PMOVZX: the low source lanes widened (sign- or zero-extended).
fn pmov(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let s = src(cpu, op, 1, false)?;
    let (from, to, signed) = match op.ins.mnemonic() {
        M::Pmovsxbw => (1, 2, true),
        M::Pmovsxbd => (1, 4, true),
        M::Pmovsxbq => (1, 8, true),
        M::Pmovsxwd => (2, 4, true),
        M::Pmovsxwq => (2, 8, true),
        M::Pmovsxdq => (4, 8, true),
        M::Pmovzxbw => (1, 2, false),
        M::Pmovzxbd => (1, 4, false),
        M::Pmovzxbq => (1, 8, false),
        M::Pmovzxwd => (2, 4, false),
        M::Pmovzxwq => (2, 8, false),
        _ => (4, 8, false),
    };
    let r = (0..16 / to).fold(0u128, |r, i| {
        let v = lane(s, from, i);
        let v = if signed { sext(v, from * 8) as u64 } else { v };
        let m = if to == 8 { u64::MAX } else { (1u64 << (to * 8)) - 1 };
        r | ((v & m) as u128) << (to * 8 * i)
    });
    dst(cpu, op, 0, r, 16, false)
}

/// MPSADBW: eight sums of absolute differences between the 4-byte source block imm[1:0] and
/// the eight overlapping 4-byte destination blocks from byte 4*imm[2].
fn mpsadbw(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let b = src(cpu, op, 1, true)?.to_le_bytes();
    let a = xmm(cpu, op, 0).to_le_bytes();
    let imm = op.ins.immediate(2) as usize;
    let (blk1, blk2) = (4 * (imm >> 2 & 1), 4 * (imm & 3));
    let r = (0..8).fold(0u128, |r, i| {
        let sad: u32 = (0..4).map(|j| a[blk1 + i + j].abs_diff(b[blk2 + j]) as u32).sum();
        r | (sad as u128) << (16 * i)
    });
    dst(cpu, op, 0, r, 16, false)
}

/// PHMINPOSUW: the smallest unsigned word and its (lowest) index; the rest zero.
fn phminposuw(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let s = src(cpu, op, 1, true)?;
    let (idx, min) = (0..8).map(|i| (i, lane(s, 2, i))).min_by_key(|&(i, v)| (v, i)).unwrap_or((0, 0));
    dst(cpu, op, 0, min as u128 | (idx as u128) << 16, 16, false)
}

/// PTEST: ZF when dst AND src is zero, CF when (NOT dst) AND src is zero; AF OF PF SF cleared.
fn ptest(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let a = xmm(cpu, op, 0);
    let f = if a & b == 0 { ZF } else { 0 } | if !a & b == 0 { CF } else { 0 };
    cpu.flags.set_arith(ARITH, f);
    Ok(())
}

/// MOVNTDQA: an aligned 128-bit load (the non-temporal hint means nothing here).
fn movntdqa(cpu: &mut Cpu, op: &Op) -> Ex {
    check(cpu)?;
    let v = src(cpu, op, 1, true)?;
    dst(cpu, op, 0, v, 16, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blends_select_lanes() {
        let (a, b) = (0x1111_2222_3333_4444_5555_6666_7777_8888u128, u128::MAX);
        assert_eq!(select(a, b, 4, 0b0101), 0x1111_2222_ffff_ffff_5555_6666_ffff_ffff);
        assert_eq!(select(a, b, 8, 0b10), 0xffff_ffff_ffff_ffff_5555_6666_7777_8888);
    }

    #[test]
    fn packusdw_saturates_to_unsigned() {
        let a = (0xffff_ffffu128) | (0x1_0000u128 << 32) | (5u128 << 64);
        let r = binary_op(M::Packusdw, a, 0).unwrap();
        assert_eq!(r & 0xffff_ffff_ffff, 0x0005_ffff_0000);
    }
}
