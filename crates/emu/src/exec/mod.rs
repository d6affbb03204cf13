//! Instruction handlers, one file per area, and the table that picks one per instruction.

mod alu;
mod bits;
mod control;
mod data;
mod far;
pub(crate) mod fast;
mod fpu;
mod muldiv;
mod shift;
mod sse;
mod sse41;
mod sse42;
#[cfg(target_arch = "x86_64")]
mod sse_float;
mod sse_mmx;
mod ssse3;
mod stack;
mod string;
mod system;
#[cfg(target_arch = "x86_64")]
mod x87;
mod x87_env;

use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

use crate::cpu::{Cpu, Ex, Exc};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::mask;
use crate::mem::Access;

/// Picks the handler for `ins` (called once per decode).
pub fn handler_for(ins: &Instruction) -> Handler {
    if ins.is_invalid() {
        return invalid;
    }
    if sse::has_vector_operand(ins) {
        // The SSE3+ modules first: SSE4.1's PEXTRW r/m16 shares its mnemonic with SSE2's.
        let h = ssse3::handler(ins)
            .or_else(|| sse41::handler(ins))
            .or_else(|| sse42::handler(ins))
            .or_else(|| sse::handler(ins))
            .or_else(|| sse_mmx::handler(ins));
        #[cfg(target_arch = "x86_64")]
        let h = h.or_else(|| sse_float::handler(ins));
        return h.unwrap_or(unimplemented_insn);
    }
    if ins.mnemonic() == M::Crc32 {
        return sse42::handler(ins).unwrap_or(unimplemented_insn);
    }
    // CVT(T)SS2SI/CVT(T)SD2SI with a memory source have no vector register operand.
    #[cfg(target_arch = "x86_64")]
    if matches!(ins.mnemonic(), M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si) {
        return sse_float::handler(ins).unwrap_or(unimplemented_insn);
    }
    if let Some(h) = alu::handler(ins).or_else(|| data::handler(ins)).or_else(|| control::handler(ins)) {
        return h;
    }
    if let Some(h) = shift::handler(ins)
        .or_else(|| muldiv::handler(ins))
        .or_else(|| bits::handler(ins))
        .or_else(|| stack::handler(ins))
        .or_else(|| string::handler(ins))
        .or_else(|| system::handler(ins))
        .or_else(|| far::handler(ins))
        .or_else(|| fpu::handler(ins))
        .or_else(|| x87_env::handler(ins))
    {
        return h;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(h) = x87::handler(ins) {
        return h;
    }
    unimplemented_insn
}

/// True when operand `i` of `ins` is a control or debug register.
pub(crate) fn is_cr_dr(ins: &Instruction, i: u32) -> bool {
    ins.op_kind(i) == OpKind::Register && {
        let r = ins.op_register(i);
        (Register::CR0..=Register::CR15).contains(&r) || (Register::DR0..=Register::DR15).contains(&r)
    }
}

/// Mnemonics that do nothing architecturally visible on this CPU model.
pub(crate) fn is_nop(m: M) -> bool {
    matches!(
        m,
        M::Nop
            | M::Pause
            | M::Lfence
            | M::Sfence
            | M::Mfence
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Prefetch
            | M::Endbr64
            | M::Endbr32
    )
}

fn invalid(_: &mut Cpu, _: &Op) -> Ex {
    Err(Exc::ud())
}

fn unimplemented_insn(cpu: &mut Cpu, op: &Op) -> Ex {
    let lin = cpu.lin(crate::cpu::CS, op.ins.ip());
    if cpu.logged_ud.len() < 4096 && cpu.logged_ud.insert(lin) {
        let mut bytes = [0u8; 15];
        let n = (op.len as usize).min(15);
        let shown = cpu.read_bytes(lin, &mut bytes[..n], Access::EXEC).is_ok();
        tracing::warn!(
            rip = format_args!("{:#x}", op.ins.ip()),
            bytes = format_args!("{:02x?}", if shown { &bytes[..n] } else { &[] }),
            mnemonic = ?op.ins.mnemonic(),
            "software CPU: unimplemented instruction, raising #UD"
        );
    }
    Err(Exc::ud())
}

impl Cpu {
    /// Effective address (offset within the segment) of the memory operand.
    #[inline(always)]
    pub fn ea(&self, op: &Op) -> u64 {
        let m = &op.m;
        let mut a = m.disp;
        if m.base < 16 {
            a = a.wrapping_add(self.gpr[m.base as usize]);
        }
        if m.index < 16 {
            a = a.wrapping_add(self.gpr[m.index as usize] << m.scale);
        }
        a & m.amask
    }

    /// Linear address of the memory operand.
    #[inline(always)]
    pub fn mem_lin(&self, op: &Op) -> u64 {
        self.lin(op.m.seg as usize, self.ea(op))
    }

    /// Reads operand `i`; memory operands are read with `size` bytes.
    #[inline(always)]
    pub fn rd(&mut self, op: &Op, i: usize, size: u8) -> Ex<u64> {
        match op.o[i % 3] {
            Opnd::Gpr { idx, size: s } => Ok(self.gpr[idx as usize & 15] & mask(s)),
            Opnd::High(idx) => Ok((self.gpr[idx as usize & 3] >> 8) & 0xff),
            Opnd::Imm(v) => Ok(v & mask(size)),
            Opnd::Mem => {
                let lin = self.mem_lin(op);
                self.read_lin(lin, size, Access::READ)
            }
            Opnd::Seg(s) => Ok(self.seg[s as usize % 6].selector as u64),
            Opnd::None | Opnd::Other => Ok(0),
        }
    }

    /// Reads operand `i` that will be written back (memory is checked for write access).
    #[inline(always)]
    pub fn rd_rmw(&mut self, op: &Op, i: usize, size: u8) -> Ex<u64> {
        if op.o[i % 3] == Opnd::Mem {
            let lin = self.mem_lin(op);
            self.read_lin(lin, size, Access::WRITE)
        } else {
            self.rd(op, i, size)
        }
    }

    /// Writes operand `i` (register merge rules apply).
    #[inline(always)]
    pub fn wr(&mut self, op: &Op, i: usize, size: u8, v: u64) -> Ex {
        match op.o[i % 3] {
            Opnd::Gpr { idx, size: s } => {
                self.write_gpr(idx as usize, s, v);
                Ok(())
            }
            Opnd::High(idx) => {
                let g = &mut self.gpr[idx as usize & 3];
                *g = (*g & !0xff00) | ((v & 0xff) << 8);
                Ok(())
            }
            Opnd::Mem => {
                let lin = self.mem_lin(op);
                self.write_lin(lin, size, v, Access::WRITE)
            }
            Opnd::Seg(_) | Opnd::Imm(_) | Opnd::None | Opnd::Other => Ok(()),
        }
    }

    /// Size in bytes of operand `i` (register width or memory operand size).
    #[inline(always)]
    pub fn opnd_size(&self, op: &Op, i: usize) -> u8 {
        match op.o[i % 3] {
            Opnd::Gpr { size, .. } => size,
            Opnd::High(_) => 1,
            Opnd::Seg(_) => 2,
            Opnd::Mem => op.msize.clamp(1, 8),
            _ => op.size,
        }
    }

    /// Value of GPR `idx` masked to `size` bytes.
    #[inline(always)]
    pub fn gpr_sized(&self, idx: usize, size: u8) -> u64 {
        self.gpr[idx & 15] & mask(size)
    }

    /// Requires CPL 0 (#GP(0) otherwise).
    #[inline]
    pub fn require_cpl0(&self) -> Ex {
        if self.cpl != 0 {
            return Err(Exc::gp(0));
        }
        Ok(())
    }
}
