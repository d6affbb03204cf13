//! MUL IMUL DIV IDIV (with #DE on zero divisor and quotient overflow).

use iced_x86::{Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex, Exc, DE};
use crate::decode::{Handler, Op};
use crate::flags::mask;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Mul => mul,
        M::Imul if ins.op_count() == 1 => imul1,
        M::Imul => imul_n,
        M::Div => div,
        M::Idiv => idiv,
        _ => return None,
    })
}

#[inline(always)]
fn sext(v: u64, size: u8) -> i128 {
    let sh = 64 - size as u32 * 8;
    (((v << sh) as i64) >> sh) as i128
}

/// Flags after a multiply: CF=OF=`overflow`; SF/ZF/PF from the low half (undefined by the
/// manuals, this matches what current CPUs report most often), AF=0. Recorded lazily.
#[inline(always)]
fn mul_flags(cpu: &mut Cpu, low: u64, size: u8, overflow: bool) {
    cpu.flags.record_explicit(size, low, overflow, overflow);
}

/// Writes a double-width product to AX or rDX:rAX.
fn write_wide(cpu: &mut Cpu, size: u8, lo: u64, hi: u64) {
    if size == 1 {
        cpu.write_gpr(0, 2, (lo & 0xff) | ((hi & 0xff) << 8));
    } else {
        cpu.write_gpr(0, size, lo);
        cpu.write_gpr(2, size, hi);
    }
}

fn mul(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let b = cpu.rd(op, 0, s)?;
    let a = cpu.gpr_sized(0, s);
    let p = a as u128 * b as u128;
    let bits = s as u32 * 8;
    let lo = p as u64 & mask(s);
    let hi = (p >> bits) as u64 & mask(s);
    write_wide(cpu, s, lo, hi);
    mul_flags(cpu, lo, s, hi != 0);
    Ok(())
}

fn imul1(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let b = sext(cpu.rd(op, 0, s)?, s);
    let a = sext(cpu.gpr_sized(0, s), s);
    let p = a * b;
    let bits = s as u32 * 8;
    let lo = p as u64 & mask(s);
    let hi = (p >> bits) as u64 & mask(s);
    write_wide(cpu, s, lo, hi);
    mul_flags(cpu, lo, s, sext(lo, s) != p);
    Ok(())
}

fn imul_n(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let (a, b) = if op.ins.op_count() == 3 {
        (cpu.rd(op, 1, s)?, cpu.rd(op, 2, s)?)
    } else {
        (cpu.rd(op, 0, s)?, cpu.rd(op, 1, s)?)
    };
    let p = sext(a, s) * sext(b, s);
    let lo = p as u64 & mask(s);
    cpu.wr(op, 0, s, lo)?;
    mul_flags(cpu, lo, s, sext(lo, s) != p);
    Ok(())
}

/// Reads the double-width dividend.
fn dividend(cpu: &Cpu, size: u8) -> u128 {
    if size == 1 {
        (cpu.gpr[0] & 0xffff) as u128
    } else {
        let bits = size as u32 * 8;
        ((cpu.gpr_sized(2, size) as u128) << bits) | cpu.gpr_sized(0, size) as u128
    }
}

/// Writes quotient and remainder (AL/AH or rAX/rDX).
fn write_qr(cpu: &mut Cpu, size: u8, q: u64, r: u64) {
    if size == 1 {
        cpu.write_gpr(0, 2, (q & 0xff) | ((r & 0xff) << 8));
    } else {
        cpu.write_gpr(0, size, q);
        cpu.write_gpr(2, size, r);
    }
}

fn div(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let d = cpu.rd(op, 0, s)? as u128;
    if d == 0 {
        return Err(Exc::new(DE));
    }
    let n = dividend(cpu, s);
    let q = n / d;
    if q > mask(s) as u128 {
        return Err(Exc::new(DE));
    }
    write_qr(cpu, s, q as u64, (n % d) as u64);
    Ok(())
}

fn idiv(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let d = sext(cpu.rd(op, 0, s)?, s);
    if d == 0 {
        return Err(Exc::new(DE));
    }
    let bits = s as u32 * 8;
    let raw = dividend(cpu, s);
    let sh = 128 - 2 * bits;
    let n = ((raw << sh) as i128) >> sh;
    let q = n.wrapping_div(d);
    let r = n.wrapping_rem(d);
    let max = (1i128 << (bits - 1)) - 1;
    if q > max || q < -max - 1 {
        return Err(Exc::new(DE));
    }
    write_qr(cpu, s, q as u64, r as u64);
    Ok(())
}
