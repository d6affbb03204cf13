//! Two- and one-operand arithmetic and logic: ADD OR ADC SBB AND SUB XOR CMP TEST INC DEC
//! NEG NOT. Flags are recorded lazily.

use iced_x86::{Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex};
use crate::decode::{Handler, Op};
use crate::flags::FlagOp;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Add => add,
        M::Or => or,
        M::Adc => adc,
        M::Sbb => sbb,
        M::And => and,
        M::Sub => sub,
        M::Xor => xor,
        M::Cmp => cmp,
        M::Test => test,
        M::Inc => inc,
        M::Dec => dec,
        M::Neg => neg,
        M::Not => not,
        _ => return None,
    })
}

fn add(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let r = a.wrapping_add(b);
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record(FlagOp::Add, s, a, b, r);
    Ok(())
}

fn adc(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let c = cpu.flags.cf();
    let r = a.wrapping_add(b).wrapping_add(c as u64);
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record_carry(FlagOp::Adc, s, a, b, r, c);
    Ok(())
}

fn sub(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let r = a.wrapping_sub(b);
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record(FlagOp::Sub, s, a, b, r);
    Ok(())
}

fn sbb(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    let c = cpu.flags.cf();
    let r = a.wrapping_sub(b).wrapping_sub(c as u64);
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record_carry(FlagOp::Sbb, s, a, b, r, c);
    Ok(())
}

fn cmp(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    cpu.flags.record(FlagOp::Sub, s, a, b, a.wrapping_sub(b));
    Ok(())
}

macro_rules! logic {
    ($name:ident, $op:tt) => {
        fn $name(cpu: &mut Cpu, op: &Op) -> Ex {
            let s = op.size;
            let a = cpu.rd_rmw(op, 0, s)?;
            let b = cpu.rd(op, 1, s)?;
            let r = a $op b;
            cpu.wr(op, 0, s, r)?;
            cpu.flags.record(FlagOp::Logic, s, 0, 0, r);
            Ok(())
        }
    };
}
logic!(and, &);
logic!(or, |);
logic!(xor, ^);

fn test(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd(op, 0, s)?;
    let b = cpu.rd(op, 1, s)?;
    cpu.flags.record(FlagOp::Logic, s, 0, 0, a & b);
    Ok(())
}

fn inc(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let r = a.wrapping_add(1);
    cpu.wr(op, 0, s, r)?;
    let c = cpu.flags.cf();
    cpu.flags.record_carry(FlagOp::Inc, s, a, 1, r, c);
    Ok(())
}

fn dec(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let r = a.wrapping_sub(1);
    cpu.wr(op, 0, s, r)?;
    let c = cpu.flags.cf();
    cpu.flags.record_carry(FlagOp::Dec, s, a, 1, r, c);
    Ok(())
}

fn neg(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    let r = 0u64.wrapping_sub(a);
    cpu.wr(op, 0, s, r)?;
    cpu.flags.record(FlagOp::Sub, s, 0, a, r);
    Ok(())
}

fn not(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let a = cpu.rd_rmw(op, 0, s)?;
    cpu.wr(op, 0, s, !a)
}
