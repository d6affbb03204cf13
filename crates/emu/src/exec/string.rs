//! String instructions MOVS STOS LODS CMPS SCAS INS OUTS, with REP/REPE/REPNE.
//!
//! A REP instruction runs at most [`CHUNK`] iterations per execution and then restarts itself,
//! so the run loop can take interrupts and kicks in the middle of a long copy, as hardware does.

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use crate::cpu::{Cpu, Ex, ES};
use crate::decode::{Handler, Op};
use crate::flags::{mask, FlagOp};
use crate::mem::tlb::P_WFAST;
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
        cpu.check_io_permission(cpu.gpr[2] as u16, elem_size(op))?;
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
    // Forward REP MOVS/STOS with 64-bit addresses (Linux's memcpy, memset, clear_page): whole
    // pages at a time through host pointers. What the bulk path leaves (an element straddling
    // pages, MMIO, a page holding decoded code, overlapping copies) goes element by element.
    // The bulk path is tried again after each element done singly (the first write to a
    // clean page, for one, goes the slow way to set its dirty bit).
    let fast = cpu.bitness == 64 && a == 8 && delta == es && matches!(kind, Kind::Movs | Kind::Stos);
    let conditional = matches!(kind, Kind::Cmps | Kind::Scas);
    let want_zf = ins.has_rep_prefix();
    let mut n = 0;
    loop {
        if fast && bulk(cpu, op, kind, es, &mut n)? {
            return Ok(());
        }
        let c = cpu.gpr_sized(1, a);
        if c == 0 {
            return Ok(());
        }
        if n >= CHUNK {
            resume_later(cpu, op);
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

/// Ends this execution of a REP instruction after [`CHUNK`] elements: RIP stays on it, so
/// the run loop looks at interrupts and kicks and then runs it again.
fn resume_later(cpu: &mut Cpu, op: &Op) {
    cpu.next_rip = op.ins.ip();
    cpu.block_break = true;
}

/// The page-at-a-time part of a forward 64-bit REP MOVS/STOS of `es`-byte elements (`done`
/// counts the elements of this execution, against [`CHUNK`]). Returns
/// true when the instruction is finished or yields (RCX = 0, or [`CHUNK`] elements done: RIP
/// stays and the run loop comes back), false when the next element needs the per-element
/// path. Faults come in the order the element loop raises them (source before destination),
/// with RSI/RDI/RCX counting the elements done, as REP's restart rules ask.
fn bulk(cpu: &mut Cpu, op: &Op, kind: Kind, es: u64, done: &mut u64) -> Ex<bool> {
    loop {
        let c = cpu.gpr[1];
        if c == 0 {
            return Ok(true);
        }
        if *done >= CHUNK {
            resume_later(cpu, op);
            return Ok(true);
        }
        let di = cpu.lin(ES, cpu.gpr[7]);
        let mut n = c.min(CHUNK - *done).min((0x1000 - (di & 0xfff)) / es);
        let mut src = 0;
        if kind == Kind::Movs {
            let si = cpu.lin(op.m.seg as usize, cpu.gpr[6]);
            n = n.min((0x1000 - (si & 0xfff)) / es);
            if n == 0 {
                return Ok(false);
            }
            let (_, host) = cpu.translate_page(si, Access::READ)?;
            if host == 0 {
                return Ok(false);
            }
            src = host + (si & 0xfff) as usize;
        }
        if n == 0 {
            return Ok(false);
        }
        let e = cpu.translate(di, Access::WRITE)?;
        if e.perm & P_WFAST == 0 {
            return Ok(false);
        }
        let dst = e.host + (di & 0xfff) as usize;
        let len = (n * es) as usize;
        if kind == Kind::Movs {
            // Element-wise forward copying of overlapping ranges differs from memmove.
            if src < dst + len && dst < src + len {
                return Ok(false);
            }
            // SAFETY: both ranges lie inside mapped RAM pages (host pointers from the TLB, the
            // length bounded by the page ends above) and do not overlap (checked).
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
            cpu.gpr[6] = cpu.gpr[6].wrapping_add(len as u64);
        } else {
            let v = cpu.gpr[0].to_le_bytes();
            // SAFETY: `dst..dst + len` lies inside a mapped, fast-writable RAM page (above).
            let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
            for chunk in out.chunks_exact_mut(es as usize) {
                chunk.copy_from_slice(&v[..es as usize]);
            }
        }
        cpu.gpr[7] = cpu.gpr[7].wrapping_add(len as u64);
        cpu.gpr[1] = c - n;
        *done += n;
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
