//! SSE3 integer/move forms (MOVDDUP MOVSHDUP MOVSLDUP LDDQU) and SSSE3 (PSHUFB PHADD/PHSUB
//! W/D/SW PMADDUBSW PMULHRSW PSIGN B/W/D PABS B/W/D PALIGNR) on XMM registers and, for SSSE3,
//! on MMX registers. The SSE3 float forms (ADDSUB, HADD, HSUB) run on the host
//! (`sse_float.rs`); FISTTP is an x87 instruction (`x87.rs`).
//!
//! Each form first checks that the guest's CPUID advertises its extension (#UD otherwise),
//! then the SSE (or MMX) state rules of `sse.rs`/`sse_mmx.rs`. 128-bit memory operands must be
//! 16-byte aligned except for LDDQU; MOVDDUP reads 64 bits, the MMX forms 64, neither aligned.

use iced_x86::{Instruction, Mnemonic as M};

use super::fpu::sse_check;
use super::sse::{dst, src, xmm};
use super::sse_mmx::{self, mreg};
use crate::cpu::{Cpu, Ex};
use crate::cpuid::{SSE3, SSSE3};
use crate::decode::{Handler, Op};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    if ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Movddup | M::Movshdup | M::Movsldup | M::Lddqu => sse3_move,
        M::Palignr => palignr,
        m if ssse3_op(m, &[0; 16], &[0; 16], 16).is_some() => ssse3_binary,
        _ => return None,
    })
}

/// MOVDDUP (low quadword twice), MOVSHDUP (odd dwords twice), MOVSLDUP (even dwords twice),
/// LDDQU (an unaligned 128-bit load).
fn sse3_move(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(SSE3)?;
    sse_check(cpu)?;
    let m = op.ins.mnemonic();
    let s = src(cpu, op, 1, m != M::Lddqu)?;
    let d = |i: u32| super::sse::lane(s, 4, i) as u128;
    let r = match m {
        M::Movddup => (s & u64::MAX as u128) | (s << 64),
        M::Movshdup => d(1) | d(1) << 32 | d(3) << 64 | d(3) << 96,
        M::Movsldup => d(0) | d(0) << 32 | d(2) << 64 | d(2) << 96,
        _ => s,
    };
    dst(cpu, op, 0, r, 16, false)
}

/// The operands of an SSSE3 form as byte vectors of `n` bytes (16 for XMM, 8 for MMX, which
/// enters MMX state first): (destination, source).
fn operands(cpu: &mut Cpu, op: &Op) -> Ex<([u8; 16], [u8; 16], usize)> {
    cpu.require(SSSE3)?;
    if mreg(&op.ins, 0).is_some() {
        sse_mmx::enter(cpu)?;
        let b = sse_mmx::src(cpu, op, 1)?;
        let a = sse_mmx::src(cpu, op, 0)?;
        return Ok(((a as u128).to_le_bytes(), (b as u128).to_le_bytes(), 8));
    }
    sse_check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    Ok((xmm(cpu, op, 0).to_le_bytes(), b.to_le_bytes(), 16))
}

fn write_back(cpu: &mut Cpu, op: &Op, r: [u8; 16], n: usize) -> Ex {
    let v = u128::from_le_bytes(r);
    if n == 8 {
        sse_mmx::dst(cpu, op, 0, v as u64, 8)
    } else {
        dst(cpu, op, 0, v, 16, false)
    }
}

fn ssse3_binary(cpu: &mut Cpu, op: &Op) -> Ex {
    let (a, b, n) = operands(cpu, op)?;
    let r = ssse3_op(op.ins.mnemonic(), &a, &b, n).ok_or_else(crate::cpu::Exc::ud)?;
    write_back(cpu, op, r, n)
}

/// PALIGNR: the destination:source pair (source low) shifted right by imm8 bytes.
fn palignr(cpu: &mut Cpu, op: &Op) -> Ex {
    let (a, b, n) = operands(cpu, op)?;
    let imm = op.ins.immediate(2) as usize;
    let mut r = [0u8; 16];
    for (i, x) in r.iter_mut().take(n).enumerate() {
        let k = i + imm;
        *x = if k < n {
            b[k]
        } else if k < 2 * n {
            a[k - n]
        } else {
            0
        };
    }
    write_back(cpu, op, r, n)
}

fn w(v: &[u8; 16], i: usize) -> i16 {
    i16::from_le_bytes([v[2 * i], v[2 * i + 1]])
}

fn dw(v: &[u8; 16], i: usize) -> i32 {
    i32::from_le_bytes([v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]])
}

/// Builds a vector of `n / size` lanes of `size` bytes from `f(lane index)`.
fn lanes(n: usize, size: usize, f: impl Fn(usize) -> i64) -> [u8; 16] {
    let mut r = [0u8; 16];
    for i in 0..n / size {
        r[i * size..(i + 1) * size].copy_from_slice(&f(i).to_le_bytes()[..size]);
    }
    r
}

/// Horizontal add/subtract of adjacent pairs: the destination's pairs give the low half of the
/// result, the source's the high half.
fn horizontal(a: &[u8; 16], b: &[u8; 16], n: usize, size: usize, f: impl Fn(i64, i64) -> i64) -> [u8; 16] {
    let get = |v: &[u8; 16], i: usize| if size == 2 { w(v, i) as i64 } else { dw(v, i) as i64 };
    let half = n / size / 2;
    lanes(n, size, |i| {
        let (v, k) = if i < half { (a, i) } else { (b, i - half) };
        f(get(v, 2 * k), get(v, 2 * k + 1))
    })
}

fn sat16(v: i64) -> i64 {
    v.clamp(i16::MIN as i64, i16::MAX as i64)
}

/// The SSSE3 binary forms on `n`-byte vectors (`a` destination, `b` source); `None` for other
/// mnemonics.
fn ssse3_op(m: M, a: &[u8; 16], b: &[u8; 16], n: usize) -> Option<[u8; 16]> {
    let sign = |x: i64, s: i64| match s.signum() {
        -1 => x.wrapping_neg(),
        0 => 0,
        _ => x,
    };
    Some(match m {
        M::Pshufb => {
            let mut r = [0u8; 16];
            for i in 0..n {
                r[i] = if b[i] & 0x80 != 0 { 0 } else { a[b[i] as usize & (n - 1)] };
            }
            r
        }
        M::Phaddw => horizontal(a, b, n, 2, |x, y| x + y),
        M::Phaddd => horizontal(a, b, n, 4, |x, y| x + y),
        M::Phaddsw => horizontal(a, b, n, 2, |x, y| sat16(x + y)),
        M::Phsubw => horizontal(a, b, n, 2, |x, y| x - y),
        M::Phsubd => horizontal(a, b, n, 4, |x, y| x - y),
        M::Phsubsw => horizontal(a, b, n, 2, |x, y| sat16(x - y)),
        M::Pmaddubsw => lanes(n, 2, |i| {
            let p = |k: usize| a[k] as i64 * b[k] as i8 as i64;
            sat16(p(2 * i) + p(2 * i + 1))
        }),
        M::Pmulhrsw => lanes(n, 2, |i| (((w(a, i) as i64 * w(b, i) as i64) >> 14) + 1) >> 1),
        M::Psignb => lanes(n, 1, |i| sign(a[i] as i8 as i64, b[i] as i8 as i64)),
        M::Psignw => lanes(n, 2, |i| sign(w(a, i) as i64, w(b, i) as i64)),
        M::Psignd => lanes(n, 4, |i| sign(dw(a, i) as i64, dw(b, i) as i64)),
        M::Pabsb => lanes(n, 1, |i| (b[i] as i8 as i64).abs()),
        M::Pabsw => lanes(n, 2, |i| (w(b, i) as i64).abs()),
        M::Pabsd => lanes(n, 4, |i| (dw(b, i) as i64).abs()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pshufb_zeroes_and_indexes_modulo_width() {
        let a: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        let mut b = [0u8; 16];
        b[0] = 0x80;
        b[1] = 0x1f; // index 15 (xmm) or 7 (mm)
        b[2] = 3;
        let r = ssse3_op(M::Pshufb, &a, &b, 16).unwrap();
        assert_eq!(&r[..3], &[0, 0x1f, 0x13]);
        let r = ssse3_op(M::Pshufb, &a, &b, 8).unwrap();
        assert_eq!(&r[..3], &[0, 0x17, 0x13]);
        assert_eq!(&r[8..], &[0; 8]);
    }

    #[test]
    fn horizontal_adds_take_pairs_from_both() {
        let a = lanes(16, 2, |i| i as i64);
        let b = lanes(16, 2, |i| 100 * i as i64);
        let r = ssse3_op(M::Phaddw, &a, &b, 16).unwrap();
        assert_eq!(r, lanes(16, 2, |i| [1, 5, 9, 13, 100, 500, 900, 1300][i]));
        let sat = lanes(16, 2, |_| 0x7000);
        assert_eq!(ssse3_op(M::Phaddsw, &sat, &sat, 16).unwrap(), lanes(16, 2, |_| 0x7fff));
    }

    #[test]
    fn abs_of_the_minimum_wraps() {
        let b = lanes(16, 1, |_| -128);
        assert_eq!(ssse3_op(M::Pabsb, &[0; 16], &b, 16).unwrap(), [0x80; 16]);
    }
}
