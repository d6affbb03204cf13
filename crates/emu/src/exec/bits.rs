//! Bit instructions: BT BTS BTR BTC BSF BSR (TZCNT/LZCNT encodings run as BSF/BSR, as on
//! CPUs without BMI1/ABM, which the CPUID model does not advertise) POPCNT.

use iced_x86::{Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::{mask, ARITH, CF, ZF};
use crate::mem::Access;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Bt => bt,
        M::Bts => bts,
        M::Btr => btr,
        M::Btc => btc,
        M::Bsf | M::Tzcnt => bsf,
        M::Bsr | M::Lzcnt => bsr,
        M::Popcnt => popcnt,
        _ => return None,
    })
}

/// Where a BTx operates: a register operand or a linear address, and the bit number.
enum Target {
    Reg,
    Mem(u64),
}

fn target(cpu: &mut Cpu, op: &Op) -> Ex<(Target, u32)> {
    let s = op.size;
    let bits = s as u64 * 8;
    let src = cpu.rd(op, 1, s)?;
    if op.o[0] != Opnd::Mem {
        return Ok((Target::Reg, (src & (bits - 1)) as u32));
    }
    if let Opnd::Imm(_) = op.o[1] {
        return Ok((Target::Mem(cpu.mem_lin(op)), (src & (bits - 1)) as u32));
    }
    // Register bit offsets are signed and may reach outside the operand.
    let sh = 64 - bits as u32;
    let off = ((src << sh) as i64) >> sh;
    let byte_adj = (off >> bits.trailing_zeros()) * s as i64;
    let ea = cpu.ea(op).wrapping_add(byte_adj as u64) & op.m.amask;
    Ok((Target::Mem(cpu.lin(op.m.seg as usize, ea)), (off as u64 & (bits - 1)) as u32))
}

/// Runs a BTx: `f` maps (old value, bit mask) to the new value, or None for BT.
fn bt_common(cpu: &mut Cpu, op: &Op, f: Option<fn(u64, u64) -> u64>) -> Ex {
    let s = op.size;
    let (t, bit) = target(cpu, op)?;
    let acc = if f.is_some() { Access::WRITE } else { Access::READ };
    let v = match t {
        Target::Reg => cpu.rd(op, 0, s)?,
        Target::Mem(lin) => cpu.read_lin(lin, s, acc)?,
    };
    let m = 1u64 << bit;
    if let Some(f) = f {
        let nv = f(v, m) & mask(s);
        match t {
            Target::Reg => cpu.wr(op, 0, s, nv)?,
            Target::Mem(lin) => cpu.write_lin(lin, s, nv, Access::WRITE)?,
        }
    }
    cpu.flags.set_arith(CF, if v & m != 0 { CF } else { 0 });
    Ok(())
}

fn bt(cpu: &mut Cpu, op: &Op) -> Ex {
    bt_common(cpu, op, None)
}

fn bts(cpu: &mut Cpu, op: &Op) -> Ex {
    bt_common(cpu, op, Some(|v, m| v | m))
}

fn btr(cpu: &mut Cpu, op: &Op) -> Ex {
    bt_common(cpu, op, Some(|v, m| v & !m))
}

fn btc(cpu: &mut Cpu, op: &Op) -> Ex {
    bt_common(cpu, op, Some(|v, m| v ^ m))
}

/// BSF/BSR: ZF=1 and the destination untouched for a zero source.
fn scan(cpu: &mut Cpu, op: &Op, reverse: bool) -> Ex {
    let s = op.size;
    let v = cpu.rd(op, 1, s)?;
    if v == 0 {
        cpu.flags.set_arith(ZF, ZF);
        return Ok(());
    }
    let idx = if reverse { 63 - v.leading_zeros() } else { v.trailing_zeros() };
    cpu.wr(op, 0, s, idx as u64)?;
    cpu.flags.set_arith(ZF, 0);
    Ok(())
}

fn bsf(cpu: &mut Cpu, op: &Op) -> Ex {
    scan(cpu, op, false)
}

fn bsr(cpu: &mut Cpu, op: &Op) -> Ex {
    scan(cpu, op, true)
}

fn popcnt(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(crate::cpuid::POPCNT)?;
    let s = op.size;
    let v = cpu.rd(op, 1, s)?;
    cpu.wr(op, 0, s, v.count_ones() as u64)?;
    cpu.flags.set_arith(ARITH, if v == 0 { ZF } else { 0 });
    Ok(())
}
