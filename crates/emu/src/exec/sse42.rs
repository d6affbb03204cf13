//! SSE4.2: the string compares PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM (what glibc's
//! `strcmp`, `strchr`, `strspn`, `strstr` ... variants use), PCMPGTQ, and CRC32 (a GPR
//! instruction: CRC-32C, Castagnoli polynomial, bit-reflected, no pre/post inversion).
//!
//! PCMPxSTRx follows SDM vol. 2 "PCMPxSTRx" and vol. 1 12.10 (Table 4-7 for the element-pair
//! overrides of invalid elements). Their memory operand need not be aligned (unlike the other
//! 128-bit SSE forms): the hardware takes it unaligned.

use iced_x86::{Instruction, Mnemonic as M};

use super::fpu::sse_check;
use super::sse::{dst, lane, sext, src, xmm};
use crate::cpu::{Cpu, Ex};
use crate::cpuid::SSE42;
use crate::decode::{Handler, Op};
use crate::flags::{mask, ARITH, CF, OF, SF, ZF};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    if ins.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Pcmpestri | M::Pcmpestrm | M::Pcmpestri64 | M::Pcmpestrm64 | M::Pcmpistri | M::Pcmpistrm => {
            pcmpstr
        }
        M::Pcmpgtq => pcmpgtq,
        M::Crc32 => crc32,
        _ => return None,
    })
}

fn pcmpgtq(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(SSE42)?;
    sse_check(cpu)?;
    let b = src(cpu, op, 1, true)?;
    let a = xmm(cpu, op, 0);
    let r = super::sse::map_lanes(a, b, 8, |x, y| if (x as i64) > (y as i64) { u64::MAX } else { 0 });
    dst(cpu, op, 0, r, 16, false)
}

/// CRC32 r32/r64, r/m8/16/32/64: the destination's low 32 bits updated with the source's
/// bytes, least significant first; the result is zero-extended into the destination.
fn crc32(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(SSE42)?;
    let n = cpu.opnd_size(op, 1);
    let data = cpu.rd(op, 1, n)?;
    let crc = crc32c_update(cpu.gpr_sized(op.g[0] as usize, 4) as u32, data, n);
    let size = cpu.opnd_size(op, 0);
    cpu.wr(op, 0, size, crc as u64)
}

/// CRC-32C of the low `n` bytes of `data` (least significant first) onto `crc`.
fn crc32c_update(mut crc: u32, data: u64, n: u8) -> u32 {
    for i in 0..n {
        crc ^= (data >> (8 * i)) as u8 as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// The decoded imm8 of a string compare.
#[derive(Clone, Copy)]
struct Ctl {
    /// Elements per operand: 16 bytes or 8 words.
    n: u32,
    signed: bool,
    /// 0 equal any, 1 ranges, 2 equal each, 3 equal ordered.
    agg: u32,
    /// 0/2 positive, 1 negative, 3 masked negative.
    pol: u32,
    /// Index: most significant bit instead of least; mask: expanded to elements.
    msb: bool,
}

impl Ctl {
    fn new(imm: u32) -> Ctl {
        Ctl {
            n: if imm & 1 != 0 { 8 } else { 16 },
            signed: imm & 2 != 0,
            agg: imm >> 2 & 3,
            pol: imm >> 4 & 3,
            msb: imm & 0x40 != 0,
        }
    }

    fn elem(&self, v: u128, i: u32) -> i64 {
        let bytes = 16 / self.n;
        let x = lane(v, bytes, i);
        if self.signed {
            sext(x, bytes * 8)
        } else {
            x as i64
        }
    }

    /// Length of an implicit (NUL-terminated) string in `v`.
    fn implicit_len(&self, v: u128) -> u32 {
        (0..self.n).find(|&i| lane(v, 16 / self.n, i) == 0).unwrap_or(self.n)
    }

    /// Length of an explicit string: |reg| (64-bit with REX.W), at most `n`.
    fn explicit_len(&self, reg: u64, wide: bool) -> u32 {
        let abs = if wide { (reg as i64).unsigned_abs() } else { (reg as i32).unsigned_abs() as u64 };
        abs.min(self.n as u64) as u32
    }
}

/// IntRes2 of a string compare of `a` (xmm1, length `la`) with `b` (xmm2/m128, length `lb`).
fn compare(c: &Ctl, a: u128, la: u32, b: u128, lb: u32) -> u32 {
    let n = c.n;
    // BoolRes[i][j] for a[i] against b[j], with the overrides for invalid elements.
    let pair = |i: u32, j: u32, cmp: &dyn Fn(i64, i64) -> bool| -> bool {
        match (i < la, j < lb) {
            (true, true) => cmp(c.elem(a, i), c.elem(b, j)),
            (false, false) => c.agg >= 2,
            (false, true) => c.agg == 3,
            (true, false) => false,
        }
    };
    let eq = |x: i64, y: i64| x == y;
    let mut res = 0u32;
    for j in 0..n {
        let bit = match c.agg {
            0 => (0..n).any(|i| pair(i, j, &eq)),
            1 => (0..n).step_by(2).any(|i| {
                pair(i, j, &|lo: i64, x: i64| x >= lo) && pair(i + 1, j, &|hi: i64, x: i64| x <= hi)
            }),
            2 => pair(j, j, &eq),
            _ => (0..n - j).all(|i| pair(i, j + i, &eq)),
        };
        res |= (bit as u32) << j;
    }
    let all = (1u32 << n) - 1;
    match c.pol {
        1 => !res & all,
        3 => res ^ ((1u32 << lb) - 1),
        _ => res,
    }
}

/// PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM: the compare of [`compare`], then an index in ECX
/// or a mask in XMM0, and CF (result non-zero), ZF (xmm2's string ends inside it), SF (xmm1's
/// string does), OF (result bit 0); AF and PF cleared.
fn pcmpstr(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(SSE42)?;
    sse_check(cpu)?;
    let m = op.ins.mnemonic();
    let c = Ctl::new(op.ins.immediate(2) as u32);
    let b = src(cpu, op, 1, false)?;
    let a = xmm(cpu, op, 0);
    let (la, lb) = if matches!(m, M::Pcmpestri | M::Pcmpestrm | M::Pcmpestri64 | M::Pcmpestrm64) {
        let wide = matches!(m, M::Pcmpestri64 | M::Pcmpestrm64);
        (c.explicit_len(cpu.gpr[0], wide), c.explicit_len(cpu.gpr[2], wide))
    } else {
        (c.implicit_len(a), c.implicit_len(b))
    };
    let res = compare(&c, a, la, b, lb);
    if matches!(m, M::Pcmpestri | M::Pcmpestri64 | M::Pcmpistri) {
        let idx = match (res, c.msb) {
            (0, _) => c.n,
            (r, true) => 31 - r.leading_zeros(),
            (r, false) => r.trailing_zeros(),
        };
        cpu.gpr[1] = idx as u64;
    } else {
        let out = if c.msb {
            let bytes = 16 / c.n;
            (0..c.n).fold(0u128, |v, i| {
                v | if res >> i & 1 != 0 { (mask(bytes as u8) as u128) << (bytes * 8 * i) } else { 0 }
            })
        } else {
            res as u128
        };
        cpu.fpu.xmm[0] = out.to_le_bytes();
    }
    let f = if res != 0 { CF } else { 0 }
        | if lb < c.n { ZF } else { 0 }
        | if la < c.n { SF } else { 0 }
        | if res & 1 != 0 { OF } else { 0 };
    cpu.flags.set_arith(ARITH, f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &[u8]) -> u128 {
        let mut b = [0u8; 16];
        b[..text.len()].copy_from_slice(text);
        u128::from_le_bytes(b)
    }

    #[test]
    fn equal_any_finds_a_set_member() {
        let c = Ctl::new(0x00);
        let (a, b) = (s(b"xz"), s(b"abcz"));
        assert_eq!(compare(&c, a, c.implicit_len(a), b, c.implicit_len(b)), 1 << 3);
    }

    #[test]
    fn ranges_and_ordered() {
        let c = Ctl::new(0x04); // ranges, unsigned bytes
        let (a, b) = (s(b"az"), s(b"Ab9q"));
        assert_eq!(compare(&c, a, 2, b, 4), 0b1010);
        let c = Ctl::new(0x0c); // equal ordered: substring "bc" in "abcbc"
        let (a, b) = (s(b"bc"), s(b"abcbc"));
        assert_eq!(compare(&c, a, 2, b, 5), 0b01010);
        // A whole match at 11, and a needle running off the end of the register matches at
        // the tail.
        let b = s(b"0123456789abcdeb");
        assert_eq!(compare(&c, a, 2, b, 16), 1 << 11 | 1 << 15);
    }

    #[test]
    fn masked_negative_inverts_only_valid_elements() {
        let c = Ctl::new(0x38); // equal each, masked negative
        let (a, b) = (s(b"abcd"), s(b"abxd"));
        assert_eq!(compare(&c, a, 4, b, 4), 0b0100 | 0xfff0);
    }

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value of "123456789" (with the usual pre/post inversion).
        let crc = b"123456789".iter().fold(!0u32, |c, &b| crc32c_update(c, b as u64, 1));
        assert_eq!(!crc, 0xe306_9283);
        // Eight bytes at once are the same as one at a time.
        let word = u64::from_le_bytes(*b"12345678");
        let bytes = b"12345678".iter().fold(7u32, |c, &b| crc32c_update(c, b as u64, 1));
        assert_eq!(crc32c_update(7, word, 8), bytes);
    }
}
