//! Stack instructions: PUSH POP PUSHF POPF PUSHA POPA ENTER LEAVE, and the push/pop helpers.

use iced_x86::{Code, Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex, Exc, SS};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::{self, AC, ID, IF, IOPL, NT, RF, VIF, VIP, VM};
use crate::mem::Access;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Push => push,
        M::Pop => pop,
        M::Pushf | M::Pushfd | M::Pushfq => pushf,
        M::Popf | M::Popfd | M::Popfq => popf,
        M::Pusha | M::Pushad => pusha,
        M::Popa | M::Popad => popa,
        M::Enter => enter,
        M::Leave => leave,
        _ => return None,
    })
}

impl Cpu {
    /// Stack pointer masked to the stack width.
    #[inline(always)]
    fn sp_masked(&self, v: u64) -> u64 {
        v & flags::mask(self.stack_size())
    }

    /// Writes RSP/ESP/SP according to the stack width.
    #[inline(always)]
    pub fn set_sp(&mut self, v: u64) {
        let s = self.stack_size();
        self.write_gpr(4, s, v);
    }

    /// Adds `n` to the stack pointer (RET imm16, LEAVE and friends).
    #[inline(always)]
    pub fn adjust_sp(&mut self, n: u64) {
        let v = self.gpr[4].wrapping_add(n);
        self.set_sp(v);
    }

    /// Pushes `size` bytes.
    #[inline(always)]
    pub fn push(&mut self, size: u8, v: u64) -> Ex {
        let sp = self.sp_masked(self.gpr[4].wrapping_sub(size as u64));
        let lin = self.lin(SS, sp);
        self.write_lin(lin, size, v, Access::WRITE)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Pops `size` bytes.
    #[inline(always)]
    pub fn pop(&mut self, size: u8) -> Ex<u64> {
        let v = self.peek(0, size)?;
        self.adjust_sp(size as u64);
        Ok(v)
    }

    /// Reads `size` bytes at stack offset `off` without popping.
    #[inline(always)]
    pub fn peek(&mut self, off: u64, size: u8) -> Ex<u64> {
        let sp = self.sp_masked(self.gpr[4].wrapping_add(off));
        let lin = self.lin(SS, sp);
        self.read_lin(lin, size, Access::READ)
    }

    /// Applies a POPF/IRET value to RFLAGS under the CPL/IOPL rules. `size` is the operand size.
    pub fn write_flags_checked(&mut self, v: u64, size: u8) {
        let old = self.rflags();
        let mut changeable = flags::ARITH | flags::TF | flags::DF | NT | AC | ID;
        if self.cpl == 0 {
            changeable |= IOPL;
        }
        if self.cpl as u64 <= (old & IOPL) >> 12 {
            changeable |= IF;
        }
        changeable &= flags::mask(size);
        let new = (old & !changeable) | (v & changeable);
        self.flags.set(new & !(RF | VM | VIF | VIP) | (old & (VM | VIF | VIP)));
    }
}

fn push(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let v = match op.o[0] {
        // PUSH imm: sign-extended immediate, PUSH sreg: the selector zero-extended.
        Opnd::Imm(v) => v,
        _ => cpu.rd(op, 0, s)?,
    };
    cpu.push(s, v)
}

fn pop(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    if let Opnd::Seg(seg) = op.o[0] {
        let v = cpu.peek(0, s)?;
        cpu.load_seg(seg as usize, v as u16)?;
        cpu.adjust_sp(s as u64);
        if seg as usize == SS {
            cpu.int_shadow = true;
        }
        return Ok(());
    }
    let v = cpu.peek(0, s)?;
    let old_sp = cpu.gpr[4];
    cpu.adjust_sp(s as u64);
    // A memory destination addressed through RSP uses the incremented value.
    if let Err(e) = cpu.wr(op, 0, s, v) {
        cpu.gpr[4] = old_sp;
        return Err(e);
    }
    Ok(())
}

fn pushf(cpu: &mut Cpu, op: &Op) -> Ex {
    let f = cpu.rflags() & !(RF | VM);
    cpu.push(op.size, f)
}

fn popf(cpu: &mut Cpu, op: &Op) -> Ex {
    let v = cpu.pop(op.size)?;
    cpu.write_flags_checked(v, op.size);
    cpu.block_break = true;
    Ok(())
}

fn pusha(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.bitness == 64 {
        return Err(Exc::ud());
    }
    let s = if op.ins.code() == Code::Pushaw { 2 } else { 4 };
    let sp = cpu.gpr[4];
    for i in 0..8 {
        let v = if i == 4 { sp } else { cpu.gpr[i] };
        if let Err(e) = cpu.push(s, v) {
            cpu.gpr[4] = sp;
            return Err(e);
        }
    }
    Ok(())
}

fn popa(cpu: &mut Cpu, op: &Op) -> Ex {
    if cpu.bitness == 64 {
        return Err(Exc::ud());
    }
    let s = if op.ins.code() == Code::Popaw { 2 } else { 4 };
    let mut vals = [0u64; 8];
    for (i, v) in vals.iter_mut().enumerate() {
        *v = cpu.peek((7 - i as u64) * s as u64, s)?;
    }
    for (i, v) in vals.iter().enumerate() {
        if i != 4 {
            cpu.write_gpr(i, s, *v);
        }
    }
    cpu.adjust_sp(8 * s as u64);
    Ok(())
}

fn enter(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let alloc = op.ins.immediate16() as u64;
    let level = (op.ins.immediate8_2nd() & 31) as u64;
    let bp = cpu.gpr[5];
    let sp0 = cpu.gpr[4];
    let res = (|| {
        cpu.push(s, bp)?;
        let frame = cpu.gpr[4];
        for i in 1..level {
            let lin = cpu.lin(SS, bp.wrapping_sub(i * s as u64) & flags::mask(cpu.stack_size()));
            let v = cpu.read_lin(lin, s, Access::READ)?;
            cpu.push(s, v)?;
        }
        if level > 0 {
            cpu.push(s, frame)?;
        }
        let new_sp = cpu.gpr[4].wrapping_sub(alloc);
        // Touch the new stack top so a fault happens before any register changes.
        let lin = cpu.lin(SS, new_sp & flags::mask(cpu.stack_size()));
        cpu.read_lin(lin, 1, Access::WRITE)?;
        cpu.write_gpr(5, s, frame);
        cpu.set_sp(new_sp);
        Ok(())
    })();
    if res.is_err() {
        cpu.gpr[4] = sp0;
        cpu.gpr[5] = bp;
    }
    res
}

fn leave(cpu: &mut Cpu, op: &Op) -> Ex {
    let s = op.size;
    let old = cpu.gpr[4];
    let bp = cpu.gpr[5];
    cpu.set_sp(bp);
    match cpu.pop(s) {
        Ok(v) => {
            cpu.write_gpr(5, s, v);
            Ok(())
        }
        Err(e) => {
            cpu.gpr[4] = old;
            Err(e)
        }
    }
}
