//! Shifts and rotates: SHL/SAL SHR SAR ROL ROR RCL RCR SHLD SHRD. SHL/SHR/SAR record
//! their flags lazily ([`FlagOp::Explicit`](crate::flags::FlagOp::Explicit)); the others compute
//! them eagerly.

use iced_x86::{Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex};
use crate::decode::{Handler, Op};
use crate::flags::{mask, parity, sign_bit, ARITH, CF, OF, PF, SF, ZF};

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Shl | M::Sal => shl,
        M::Shr => shr,
        M::Sar => sar,
        M::Rol => rol,
        M::Ror => ror,
        M::Rcl => rcl,
        M::Rcr => rcr,
        M::Shld => shld,
        M::Shrd => shrd,
        _ => return None,
    })
}

/// The shift count (operand 1, or implicit 1), masked as the hardware does.
#[inline(always)]
fn count(cpu: &mut Cpu, op: &Op, idx: usize) -> Ex<u32> {
    let c = if op.ins.op_count() as usize > idx { cpu.rd(op, idx, 1)? } else { 1 };
    Ok((c & if op.size == 8 { 63 } else { 31 }) as u32)
}

/// SF, ZF and PF of `r` at `size` bytes.
#[inline(always)]
fn szp(r: u64, size: u8) -> u64 {
    let r = r & mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    if parity(r) {
        f |= PF;
    }
    f
}

#[inline(always)]
fn bit(v: u64, n: u32) -> bool {
    n < 64 && (v >> n) & 1 != 0
}

fn shl(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    let r = if c >= 64 { 0 } else { a << c } & mask(s);
    let cf = c <= bits && bit(a, bits - c);
    cpu.wr(op, 0, s, r)?;
    let of = c == 1 && ((r & sign_bit(s) != 0) ^ cf);
    cpu.flags.record_explicit(s, r, cf, of);
    Ok(())
}

fn shr(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let r = if c >= 64 { 0 } else { a >> c };
    let cf = bit(a, c - 1);
    cpu.wr(op, 0, s, r)?;
    let of = c == 1 && a & sign_bit(s) != 0;
    cpu.flags.record_explicit(s, r, cf, of);
    Ok(())
}

fn sar(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let sh = 64 - s as u32 * 8;
    let sa = ((a << sh) as i64) >> sh;
    let r = (sa >> c.min(63)) as u64;
    let cf = ((sa >> (c - 1).min(63)) & 1) != 0;
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record_explicit(s, r, cf, false);
    Ok(())
}

fn rol(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    let n = c % bits;
    let r = if n == 0 { a } else { ((a << n) | (a >> (bits - n))) & mask(s) };
    cpu.wr(op, 0, s, r)?;
    let cf = r & 1 != 0;
    let of = (r & sign_bit(s) != 0) ^ cf;
    cpu.flags.set_arith(CF | OF, if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

fn ror(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    let n = c % bits;
    let r = if n == 0 { a } else { ((a >> n) | (a << (bits - n))) & mask(s) };
    cpu.wr(op, 0, s, r)?;
    let cf = r & sign_bit(s) != 0;
    let of = cf ^ (r & (sign_bit(s) >> 1) != 0);
    cpu.flags.set_arith(CF | OF, if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

/// Rotates the (bits+1)-bit value CF:a left by `n`.
fn rcl_value(a: u64, cf: bool, bits: u32, n: u32) -> (u64, bool) {
    let w = bits + 1;
    let v = (a as u128 & ((1u128 << bits) - 1)) | ((cf as u128) << bits);
    let n = n % w;
    let full = (1u128 << w) - 1;
    let r = if n == 0 { v } else { ((v << n) | (v >> (w - n))) & full };
    ((r & ((1u128 << bits) - 1)) as u64, (r >> bits) & 1 != 0)
}

fn rcl(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let (r, cf) = rcl_value(a, cpu.flags.cf(), s as u32 * 8, c);
    cpu.wr(op, 0, s, r)?;
    let of = (r & sign_bit(s) != 0) ^ cf;
    cpu.flags.set_arith(CF | OF, if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

fn rcr(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let c = count(cpu, op, 1)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    let cf_in = cpu.flags.cf();
    let n = c % (bits + 1);
    // Rotating right by n is rotating left by (bits+1-n).
    let (r, cf) = rcl_value(a, cf_in, bits, (bits + 1 - n) % (bits + 1));
    cpu.wr(op, 0, s, r)?;
    let of = (r & sign_bit(s) != 0) ^ (r & (sign_bit(s) >> 1) != 0);
    cpu.flags.set_arith(CF | OF, if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

/// Operand `a` then `b` then (for 16-bit, where counts may exceed the width) `a` again, as
/// one wide value, and its width in bits.
fn concat_hi(a: u64, b: u64, bits: u32) -> (u128, u32) {
    if bits == 16 {
        (((a as u128) << 32) | ((b as u128) << 16) | a as u128, 48)
    } else {
        (((a as u128) << bits) | b as u128, 2 * bits)
    }
}

fn shld(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let c = count(cpu, op, 2)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    let (cat, total) = concat_hi(a, b, bits);
    let r = ((cat << c) >> (total - bits)) as u64 & mask(s);
    let cf = ((cat << (c - 1)) >> (total - 1)) & 1 != 0;
    cpu.wr(op, 0, s, r)?;
    let of = (r ^ a) & sign_bit(s) != 0;
    cpu.flags.set_arith(ARITH, szp(r, s) | if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

fn shrd(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let c = count(cpu, op, 2)?;
    if c == 0 {
        // No flags change, but a 32-bit register destination is still zero-extended.
        return cpu.wr(op, 0, s, a);
    }
    let bits = s as u32 * 8;
    // b:a (16-bit: a:b:a), shifted right.
    let (cat, _) = concat_hi(a, b, bits);
    let cat = if bits == 16 { cat } else { ((b as u128) << bits) | a as u128 };
    let r = (cat >> c) as u64 & mask(s);
    let cf = (cat >> (c - 1)) & 1 != 0;
    cpu.wr(op, 0, s, r)?;
    let of = (r ^ a) & sign_bit(s) != 0;
    cpu.flags.set_arith(ARITH, szp(r, s) | if cf { CF } else { 0 } | if of { OF } else { 0 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rcl_value;

    #[test]
    fn rcl_through_carry() {
        assert_eq!(rcl_value(0x80, false, 8, 1), (0x00, true));
        assert_eq!(rcl_value(0x00, true, 8, 1), (0x01, false));
        assert_eq!(rcl_value(0x01, false, 8, 9), (0x01, false));
        assert_eq!(rcl_value(1 << 63, false, 64, 1), (0, true));
    }
}
