//! String instructions MOVS STOS LODS CMPS SCAS INS OUTS, with REP/REPE/REPNE.
//!
//! A REP instruction runs at most [`CHUNK`] iterations per execution and then restarts itself,
//! so the run loop can take interrupts and kicks in the middle of a long copy, as hardware does.

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use crate::cpu::{Cpu, Ex, ES};
use crate::decode::{Handler, Op};
use crate::flags::{mask, FlagOp};
use crate::mem::Access;

const CHUNK: u64 = 16384;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    // MOVSD/CMPSD are also SSE mnemonics: only the forms with string operands are ours.
    let string = (0..ins.op_count()).any(|i| {
        matches!(
            ins.op_kind(i),
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    });
    if !string {
        return None;
    }
    Some(match ins.mnemonic() {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => movs,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => stos,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => lods,
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => cmps,
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => scas,
        M::Insb | M::Insw | M::Insd => ins_,
        M::Outsb | M::Outsw | M::Outsd => outs,
        _ => return None,
    })
}

/// Element size: the memory operand's size (operand 0 is DX for OUTS, AL.. for LODS).
#[inline(always)]
fn elem_size(op: &Op) -> u8 {
    op.msize.clamp(1, 8)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

/// One iteration; returns false when a REPE/REPNE condition ends the loop.
#[inline(always)]
fn step(cpu: &mut Cpu, op: &Op, kind: Kind, a: u8, delta: u64) -> Ex<bool> {
    let s = elem_size(op);
    let seg = op.m.seg as usize;
    let si = cpu.gpr_sized(6, a);
    let di = cpu.gpr_sized(7, a);
    match kind {
        Kind::Movs => {
            let v = cpu.read_seg(seg, si, s)?;
            let lin = cpu.lin(ES, di);
            cpu.write_lin(lin, s, v, Access::WRITE)?;
        }
        Kind::Stos => {
            let lin = cpu.lin(ES, di);
            let v = cpu.gpr[0];
            cpu.write_lin(lin, s, v, Access::WRITE)?;
        }
        Kind::Lods => {
            let v = cpu.read_seg(seg, si, s)?;
            cpu.write_gpr(0, s, v);
        }
        Kind::Cmps => {
            let x = cpu.read_seg(seg, si, s)?;
            let lin = cpu.lin(ES, di);
            let y = cpu.read_lin(lin, s, Access::READ)?;
            cpu.flags.record(FlagOp::Sub, s, x, y, x.wrapping_sub(y));
        }
        Kind::Scas => {
            let lin = cpu.lin(ES, di);
            let y = cpu.read_lin(lin, s, Access::READ)?;
            let x = cpu.gpr_sized(0, s);
            cpu.flags.record(FlagOp::Sub, s, x, y, x.wrapping_sub(y));
        }
        Kind::Ins => {
            let lin = cpu.lin(ES, di);
            // Probe the destination before touching the device.
            cpu.read_lin(lin, s, Access::WRITE)?;
            let mut buf = [0u8; 8];
            cpu.mem.pio_read(cpu.gpr[2] as u16, &mut buf[..s as usize]);
            cpu.write_lin(lin, s, u64::from_le_bytes(buf), Access::WRITE)?;
        }
        Kind::Outs => {
            let v = cpu.read_seg(seg, si, s)?;
            cpu.mem.pio_write(cpu.gpr[2] as u16, &v.to_le_bytes()[..s as usize]);
        }
    }
    if matches!(kind, Kind::Movs | Kind::Lods | Kind::Cmps | Kind::Outs) {
        cpu.write_gpr(6, a, si.wrapping_add(delta));
    }
    if matches!(kind, Kind::Movs | Kind::Stos | Kind::Cmps | Kind::Scas | Kind::Ins) {
        cpu.write_gpr(7, a, di.wrapping_add(delta));
    }
    Ok(true)
}

fn run(cpu: &mut Cpu, op: &Op, kind: Kind) -> Ex {
    if matches!(kind, Kind::Ins | Kind::Outs) {
        cpu.check_io_privilege()?;
        cpu.block_break = true;
    }
    let a = match op.m.amask {
        0xffff => 2,
        0xffff_ffff => 4,
        _ => 8,
    };
    let es = elem_size(op) as u64;
    let delta = if cpu.flags.df() { es.wrapping_neg() } else { es };
    let ins = &op.ins;
    if !ins.has_rep_prefix() && !ins.has_repne_prefix() {
        step(cpu, op, kind, a, delta)?;
        return Ok(());
    }
    let conditional = matches!(kind, Kind::Cmps | Kind::Scas);
    let want_zf = ins.has_rep_prefix();
    let mut n = 0;
    loop {
        let c = cpu.gpr_sized(1, a);
        if c == 0 {
            return Ok(());
        }
        if n == CHUNK {
            // Resume later: RIP stays on this instruction.
            cpu.next_rip = cpu.rip;
            cpu.block_break = true;
            return Ok(());
        }
        step(cpu, op, kind, a, delta)?;
        cpu.write_gpr(1, a, c.wrapping_sub(1) & mask(a));
        n += 1;
        if conditional && cpu.flags.zf() != want_zf {
            return Ok(());
        }
    }
}

fn movs(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Movs)
}
fn stos(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Stos)
}
fn lods(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Lods)
}
fn cmps(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Cmps)
}
fn scas(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Scas)
}
fn ins_(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Ins)
}
fn outs(cpu: &mut Cpu, op: &Op) -> Ex {
    run(cpu, op, Kind::Outs)
}
