//! Translation of one decoded block to host code (iced-x86's code assembler).
//!
//! Register use: `rbx` = `&mut Cpu`, `r12` = `&mut Ctx`, `r13` = the TLB entries (all
//! callee-saved, so interpreted ops and slow paths keep them); rax, rcx, rdx, rsi, rdi, r8-r10
//! are scratch within one op. Nothing guest-visible stays in a host register between ops.

use std::mem::offset_of;

use iced_x86::code_asm::*;
use iced_x86::Mnemonic as Mn;

use super::{
    jit_cf, jit_cond, jit_op, jit_op_locked, jit_read, jit_write, CodeCache, Ctx, JitError, BREAK, FAULT,
};
use crate::cpu::{Cpu, FS, GS};
use crate::decode::{Op, Opnd};
use crate::flags::{FlagOp, Flags, Lazy};
use crate::mem::tlb::TlbEntry;

// The TLB index arithmetic below assumes 32-byte entries.
const _: () = assert!(std::mem::size_of::<TlbEntry>() == 32);

const fn gpr(i: u8) -> i32 {
    (offset_of!(Cpu, gpr) + 8 * (i as usize & 15)) as i32
}
const RIP: i32 = offset_of!(Cpu, rip) as i32;
const NEXT_RIP: i32 = offset_of!(Cpu, next_rip) as i32;
const ICOUNT: i32 = offset_of!(Cpu, icount) as i32;
const BLOCK_BREAK: i32 = offset_of!(Cpu, block_break) as i32;
const LAZY: usize = offset_of!(Cpu, flags) + offset_of!(Flags, lazy);
const L_OP: i32 = (LAZY + offset_of!(Lazy, op)) as i32;
const L_SIZE: i32 = (LAZY + offset_of!(Lazy, size)) as i32;
const L_CIN: i32 = (LAZY + offset_of!(Lazy, carry_in)) as i32;
const L_A: i32 = (LAZY + offset_of!(Lazy, a)) as i32;
const L_B: i32 = (LAZY + offset_of!(Lazy, b)) as i32;
const L_RES: i32 = (LAZY + offset_of!(Lazy, res)) as i32;
const C_TLB: i32 = offset_of!(Ctx, tlb) as i32;
const C_NEED_R: i32 = offset_of!(Ctx, need_r) as i32;
const C_NEED_W: i32 = offset_of!(Ctx, need_w) as i32;
const C_VAL: i32 = offset_of!(Ctx, val) as i32;
const C_CHAIN: i32 = offset_of!(Ctx, chain) as i32;
const C_KICK: i32 = offset_of!(Ctx, kick) as i32;
const C_IRQ: i32 = offset_of!(Ctx, irq) as i32;
const C_LIMIT: i32 = offset_of!(Ctx, limit) as i32;
const INT_SHADOW: i32 = offset_of!(Cpu, int_shadow) as i32;
const E_TAG: i32 = offset_of!(TlbEntry, tag) as i32;
const E_HOST: i32 = offset_of!(TlbEntry, host) as i32;
const E_PERM: i32 = offset_of!(TlbEntry, perm) as i32;

fn seg_base(s: usize) -> i32 {
    (offset_of!(Cpu, seg)
        + s * std::mem::size_of::<vmr_hypervisor::Segment>()
        + offset_of!(vmr_hypervisor::Segment, base)) as i32
}

/// The ALU operations translated natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alu {
    Add,
    Sub,
    And,
    Or,
    Xor,
    Cmp,
    Test,
}

impl Alu {
    fn of(m: Mn) -> Option<Alu> {
        Some(match m {
            Mn::Add => Alu::Add,
            Mn::Sub => Alu::Sub,
            Mn::And => Alu::And,
            Mn::Or => Alu::Or,
            Mn::Xor => Alu::Xor,
            Mn::Cmp => Alu::Cmp,
            Mn::Test => Alu::Test,
            _ => return None,
        })
    }
    fn writes(self) -> bool {
        !matches!(self, Alu::Cmp | Alu::Test)
    }
    fn flag_op(self) -> FlagOp {
        match self {
            Alu::Add => FlagOp::Add,
            Alu::Sub | Alu::Cmp => FlagOp::Sub,
            _ => FlagOp::Logic,
        }
    }
}

/// A source operand: a GPR, an immediate, or the memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Reg(u8),
    Imm(u64),
    Mem,
}

/// How one op is translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `MOV reg, src`.
    Mov {
        d: u8,
        src: Src,
        s: u8,
    },
    /// `MOV [mem], src`: a register (Ok) or an immediate (Err).
    Store {
        src: Result<u8, u64>,
        s: u8,
    },
    Lea {
        d: u8,
        s: u8,
    },
    /// `ALU reg, src`, with the Jcc fused after it (condition, target) if any.
    Alu {
        k: Alu,
        d: u8,
        src: Src,
        s: u8,
        jcc: Option<(u8, u64)>,
    },
    /// `INC/DEC reg` (CF kept: read from the lazy flags), with a fused Jcc that does not read
    /// CF, if any.
    IncDec {
        dec: bool,
        d: u8,
        s: u8,
        jcc: Option<(u8, u64)>,
    },
    /// A direct `JMP rel` (the block goes on at the target, or leaves for it if last).
    Jmp {
        target: u64,
    },
    /// A `Jcc rel` not fused with the op before it: the condition from the lazy flags.
    Jcc {
        cc: u8,
        target: u64,
    },
    /// `PUSH reg` / `POP reg` of a 64-bit register in 64-bit code.
    Push {
        r: u8,
    },
    Pop {
        d: u8,
    },
    /// `MOVZX/MOVSX/MOVSXD reg, src` from `from` bytes (src a register or memory).
    Ext {
        d: u8,
        src: Src,
        from: u8,
        s: u8,
        signed: bool,
    },
    /// `SHL/SHR/SAR reg, imm` (`k` 0, 1, 2), count already masked.
    Shift {
        k: u8,
        d: u8,
        c: u8,
        s: u8,
    },
    /// A call of the interpreter handler.
    Call,
}

impl Form {
    /// The form of `op` (only 32- and 64-bit operand sizes are translated natively: 8- and
    /// 16-bit destinations merge into the register and stay with the interpreter).
    fn of(op: &Op) -> Form {
        let s = op.size;
        if op.ins.mnemonic() == Mn::Jmp && !op.locked {
            if let (Opnd::Imm(target), iced_x86::FlowControl::UnconditionalBranch) =
                (op.o[0], op.ins.flow_control())
            {
                return Form::Jmp { target };
            }
        }
        if op.ins.is_jcc_short_or_near() && op.ins.len() == op.len as usize && op.cc <= 15 {
            if let Opnd::Imm(target) = op.o[0] {
                return Form::Jcc { cc: op.cc, target };
            }
        }
        if op.locked || op.ins.has_rep_prefix() || op.ins.has_repne_prefix() || !matches!(s, 4 | 8) {
            return Form::Call;
        }
        let fused = op.ins.len() != op.len as usize;
        let reg = |i: usize| match op.o[i] {
            Opnd::Gpr { idx, size } if size == s => Some(idx & 15),
            _ => None,
        };
        let src = |i: usize| match op.o[i] {
            Opnd::Gpr { idx, size } if size == s => Some(Src::Reg(idx & 15)),
            Opnd::Imm(v) => Some(Src::Imm(v)),
            Opnd::Mem => Some(Src::Mem),
            _ => None,
        };
        let m = op.ins.mnemonic();
        let two = op.ins.op_count() == 2;
        let code64 = op.ins.code_size() == iced_x86::CodeSize::Code64;
        match m {
            Mn::Push | Mn::Pop if code64 && s == 8 && op.ins.op_count() == 1 => {
                return match (m, reg(0)) {
                    (Mn::Push, Some(r)) => Form::Push { r },
                    (Mn::Pop, Some(d)) => Form::Pop { d },
                    _ => Form::Call,
                };
            }
            Mn::Movzx | Mn::Movsx | Mn::Movsxd if two && !fused => {
                let (src, from) = match op.o[1] {
                    Opnd::Gpr { idx, size } => (Src::Reg(idx & 15), size),
                    Opnd::Mem => (Src::Mem, op.msize),
                    _ => return Form::Call,
                };
                return match (reg(0), from) {
                    (Some(d), 1 | 2 | 4) if from < s => Form::Ext { d, src, from, s, signed: m != Mn::Movzx },
                    _ => Form::Call,
                };
            }
            Mn::Shl | Mn::Sal | Mn::Shr | Mn::Sar if two && !fused => {
                let k = match m {
                    Mn::Shr => 1,
                    Mn::Sar => 2,
                    _ => 0,
                };
                return match (reg(0), op.o[1]) {
                    (Some(d), Opnd::Imm(c)) => Form::Shift { k, d, c: (c & (s as u64 * 8 - 1)) as u8, s },
                    _ => Form::Call,
                };
            }
            _ => {}
        }
        let form = match (m, fused) {
            (Mn::Mov, false) if two => match (op.o[0], src(1)) {
                (Opnd::Mem, Some(Src::Reg(r))) => Some(Form::Store { src: Ok(r), s }),
                (Opnd::Mem, Some(Src::Imm(x))) => Some(Form::Store { src: Err(x), s }),
                (_, Some(src)) => reg(0).map(|d| Form::Mov { d, src, s }),
                _ => None,
            },
            (Mn::Lea, false) if two && op.o[1] == Opnd::Mem => reg(0).map(|d| Form::Lea { d, s }),
            (Mn::Inc | Mn::Dec, _) if op.ins.op_count() == 1 => {
                let jcc = match (fused, op.o[2]) {
                    (false, _) => None,
                    // CF comes from before the INC/DEC: the host's is not the guest's.
                    (true, Opnd::Imm(t)) if op.cc <= 15 && !matches!(op.cc >> 1, 1 | 3) => Some((op.cc, t)),
                    _ => return Form::Call,
                };
                reg(0).map(|d| Form::IncDec { dec: m == Mn::Dec, d, s, jcc })
            }
            (m, _) if two => {
                let jcc = match (fused, op.o[2]) {
                    (false, _) => None,
                    (true, Opnd::Imm(t)) if op.cc <= 15 => Some((op.cc, t)),
                    _ => return Form::Call,
                };
                match (Alu::of(m), reg(0), src(1)) {
                    // A fused op with a memory source stays interpreted (rare in hot code).
                    (Some(k), Some(d), Some(src)) if !(fused && src == Src::Mem) => {
                        Some(Form::Alu { k, d, src, s, jcc })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        form.unwrap_or(Form::Call)
    }

    /// Never faults and never reads the flags.
    fn quiet(self) -> bool {
        match self {
            Form::Mov { src, .. } | Form::Ext { src, .. } => src != Src::Mem,
            Form::Lea { .. } | Form::Jmp { .. } | Form::Shift { c: 0, .. } => true,
            _ => false,
        }
    }

    /// Overwrites every arithmetic flag before it can fault or leave the block.
    fn kills_flags(self) -> bool {
        matches!(self, Form::Alu { src: Src::Reg(_) | Src::Imm(_), .. } | Form::Shift { .. })
    }
}

/// A finished translation.
pub struct Translation {
    pub entry: u64,
    pub native: usize,
    pub called: usize,
}

/// Out-of-line exits, emitted after the body.
enum Exit {
    /// Op at `ip` faulted after `retired` instructions: RIP = ip, status FAULT.
    Fault { at: CodeLabel, ip: u64, retired: u64 },
    /// Leave with RIP = `rip` (or `Cpu::next_rip` if None) after `retired` instructions; a
    /// branch (`chain`, not a block break) to the block's start may go round again instead.
    Leave { at: CodeLabel, rip: Option<u64>, retired: u64, chain: bool },
    /// Status in eax from `jit_op`: FAULT or BREAK.
    Status { at: CodeLabel, fault: CodeLabel, brk: CodeLabel },
    /// A slow memory access: rax = linear address, r8 = value to write (writes); on success the
    /// read value is in rax and execution resumes at `back`.
    Slow { at: CodeLabel, back: CodeLabel, fault: CodeLabel, size: u8, write: bool },
}

struct Emitter {
    a: CodeAssembler,
    exits: Vec<Exit>,
    epilogue: CodeLabel,
    /// The block's first op (after the prologue) and its RIP: a branch back to it goes round
    /// again in translated code (see `Ctx::chain`).
    top: CodeLabel,
    start: u64,
}

fn asm_err(e: IcedError) -> JitError {
    JitError::Asm(e.to_string())
}

/// Translates `ops` into `cache`.
pub fn translate(ops: &[Op], cache: &mut CodeCache) -> Result<Translation, JitError> {
    let forms: Vec<Form> = ops.iter().map(Form::of).collect();
    let mut e = Emitter::new()?;
    e.body(ops, &forms).map_err(asm_err)?;
    let place = |cache: &CodeCache, e: &mut Emitter| -> Result<Option<(u64, Vec<u8>)>, JitError> {
        // Assemble for the next free address; the size is known only afterwards.
        let Some(at) = cache.next_addr(0) else { return Ok(None) };
        let code = e.a.assemble(at).map_err(asm_err)?;
        Ok(cache.next_addr(code.len()).map(|_| (at, code)))
    };
    let (at, code) = match place(cache, &mut e)? {
        Some(x) => x,
        None => {
            cache.flush();
            place(cache, &mut e)?.ok_or(JitError::TooBig(0))?
        }
    };
    let entry = cache.push(&code).ok_or(JitError::TooBig(code.len()))?;
    debug_assert_eq!(entry, at);
    let native = forms.iter().filter(|f| **f != Form::Call).count();
    Ok(Translation { entry, native, called: forms.len() - native })
}

impl Emitter {
    fn new() -> Result<Emitter, JitError> {
        let mut a = CodeAssembler::new(64).map_err(asm_err)?;
        let (epilogue, top) = (a.create_label(), a.create_label());
        Ok(Emitter { a, exits: Vec::new(), epilogue, top, start: 0 })
    }

    fn body(&mut self, ops: &[Op], forms: &[Form]) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.push(rbx)?;
        a.push(r12)?;
        a.push(r13)?;
        a.mov(rbx, rdi)?;
        a.mov(r12, rsi)?;
        a.mov(r13, qword_ptr(r12 + C_TLB))?;
        self.start = ops[0].ins.ip();
        let mut top = self.top;
        self.a.set_label(&mut top)?;
        let mut retired = 0u64;
        for (i, (op, &form)) in ops.iter().zip(forms).enumerate() {
            let flags_dead = forms[i + 1..].iter().find(|f| !f.quiet()).is_some_and(|f| f.kills_flags());
            retired += self.op(op, form, retired, flags_dead)?;
        }
        // The block ran to its end.
        let last = ops.len() - 1;
        let rip = match forms[last] {
            Form::Call => None,
            Form::Jmp { target } => Some(target),
            _ => Some(ops[last].ins.next_ip()),
        };
        // After an interpreted op only a conditional branch (a fused compare with memory, say)
        // goes round again: other control transfers may change CPL and with it `Ctx::need_*`.
        let chain = rip.is_some() || ops[last].ins.flow_control() == iced_x86::FlowControl::ConditionalBranch;
        self.leave(rip, retired, chain)?;
        self.tails()?;
        Ok(())
    }

    /// Emits one op; returns how many instructions it retires statically.
    fn op(&mut self, op: &Op, form: Form, retired: u64, flags_dead: bool) -> Result<u64, IcedError> {
        match form {
            Form::Call => {
                let fault = self.exit_fault(op.ins.ip(), retired);
                let a = &mut self.a;
                a.mov(rdi, rbx)?;
                a.mov(rsi, r12)?;
                a.mov(rdx, op as *const Op as u64)?;
                let f = if op.locked { jit_op_locked as *const () } else { jit_op as *const () };
                a.mov(rax, f as u64)?;
                a.call(rax)?;
                let (st, brk) = (a.create_label(), self.exit_leave(None, retired + 1, false));
                self.exits.push(Exit::Status { at: st, fault, brk });
                self.a.test(eax, eax)?;
                self.a.jnz(st)?;
                return Ok(1);
            }
            Form::Mov { d, src, s } => {
                self.load_src(op, src, s, retired)?;
                self.put(d, s)?;
            }
            Form::Lea { d, s } => {
                self.ea(op)?;
                self.put(d, s)?;
            }
            // Nothing to do: the next op is the target's (or the block ends there).
            Form::Jmp { .. } => return Ok(1),
            Form::Push { r } => {
                // Like `Cpu::push`: the value (RSP's old value for PUSH RSP), the write, RSP.
                let fault = self.exit_fault(op.ins.ip(), retired);
                self.a.mov(r8, qword_ptr(rbx + gpr(r)))?;
                self.a.mov(rax, qword_ptr(rbx + gpr(4)))?;
                self.a.sub(rax, 8)?;
                self.access(8, true, fault)?;
                self.a.sub(qword_ptr(rbx + gpr(4)), 8)?;
            }
            Form::Pop { d } => {
                // Like `pop_r`: the read, RSP, then the register (POP RSP keeps the value).
                let fault = self.exit_fault(op.ins.ip(), retired);
                self.a.mov(rax, qword_ptr(rbx + gpr(4)))?;
                self.access(8, false, fault)?;
                self.a.add(qword_ptr(rbx + gpr(4)), 8)?;
                self.a.mov(qword_ptr(rbx + gpr(d)), rcx)?;
            }
            Form::Ext { d, src, from, s, signed } => {
                match src {
                    Src::Reg(r) => match from {
                        1 => self.a.movzx(ecx, byte_ptr(rbx + gpr(r)))?,
                        2 => self.a.movzx(ecx, word_ptr(rbx + gpr(r)))?,
                        _ => self.a.mov(ecx, dword_ptr(rbx + gpr(r)))?,
                    },
                    _ => self.load_src(op, src, from, retired)?,
                }
                if signed {
                    match from {
                        1 => self.a.movsx(rcx, cl)?,
                        2 => self.a.movsx(rcx, cx)?,
                        _ => self.a.movsxd(rcx, ecx)?,
                    }
                }
                self.put(d, s)?;
            }
            Form::Shift { k, d, c, s } => self.shift(k, d, c, s, flags_dead)?,
            Form::Jcc { cc, target } => {
                let taken = self.exit_leave(Some(target), retired + 1, true);
                let a = &mut self.a;
                a.mov(rdi, rbx)?;
                a.mov(esi, cc as u32)?;
                a.mov(rax, jit_cond as *const () as u64)?;
                a.call(rax)?;
                a.test(eax, eax)?;
                a.jnz(taken)?;
                return Ok(1);
            }
            Form::IncDec { dec, d, s, jcc } => {
                self.incdec(dec, d, s, flags_dead && jcc.is_none())?;
                if let Some((cc, target)) = jcc {
                    let taken = self.exit_leave(Some(target), retired + 2, true);
                    self.jcc(cc, taken)?;
                    return Ok(2);
                }
            }
            Form::Store { src, s } => {
                // Like the interpreter: source, then address, then the write.
                match (src, s) {
                    (Err(x), 4) => self.a.mov(r8d, x as u32)?,
                    (Err(x), _) => self.a.mov(r8, x)?,
                    (Ok(r), 4) => self.a.mov(r8d, dword_ptr(rbx + gpr(r)))?,
                    (Ok(r), _) => self.a.mov(r8, qword_ptr(rbx + gpr(r)))?,
                }
                let fault = self.exit_fault(op.ins.ip(), retired);
                self.lin(op)?;
                self.access(s, true, fault)?;
            }
            Form::Alu { k, d, src, s, jcc } => {
                self.load_src(op, src, s, retired)?;
                self.alu(k, d, s, flags_dead, jcc)?;
                if let Some((cc, target)) = jcc {
                    let taken = self.exit_leave(Some(target), retired + 2, true);
                    self.jcc(cc, taken)?;
                    return Ok(2);
                }
            }
        }
        if matches!(
            form,
            Form::Store { .. }
                | Form::Push { .. }
                | Form::Pop { .. }
                | Form::Mov { src: Src::Mem, .. }
                | Form::Alu { src: Src::Mem, .. }
                | Form::Ext { src: Src::Mem, .. }
        ) {
            // A slow access to MMIO or to a page holding code asks to leave the block.
            let brk = self.exit_leave(Some(op.ins.next_ip()), retired + 1, false);
            self.a.cmp(byte_ptr(rbx + BLOCK_BREAK), 0)?;
            self.a.jne(brk)?;
        }
        Ok(1)
    }

    /// `SHL/SHR/SAR reg d, c` like `shift_ri`: CF the last bit out (the host's), OF only for
    /// a count of 1 (the host's then), recorded as `FlagOp::Explicit` unless `dead`.
    fn shift(&mut self, k: u8, d: u8, c: u8, s: u8, dead: bool) -> Result<(), IcedError> {
        let a = &mut self.a;
        if s == 4 {
            a.mov(eax, dword_ptr(rbx + gpr(d)))?;
        } else {
            a.mov(rax, qword_ptr(rbx + gpr(d)))?;
        }
        if c != 0 {
            let c = c as u32;
            match (k, s) {
                (0, 4) => a.shl(eax, c)?,
                (1, 4) => a.shr(eax, c)?,
                (_, 4) => a.sar(eax, c)?,
                (0, _) => a.shl(rax, c)?,
                (1, _) => a.shr(rax, c)?,
                _ => a.sar(rax, c)?,
            }
            if !dead {
                a.setc(r8b)?;
                if c == 1 {
                    a.seto(r9b)?;
                } else {
                    a.mov(r9d, 0u32)?;
                }
                a.mov(byte_ptr(rbx + L_OP), FlagOp::Explicit as u32)?;
                a.mov(byte_ptr(rbx + L_SIZE), s as u32)?;
                a.mov(byte_ptr(rbx + L_CIN), r8b)?;
                a.movzx(r9d, r9b)?;
                a.mov(qword_ptr(rbx + L_A), 0)?;
                a.mov(qword_ptr(rbx + L_B), r9)?;
                a.mov(qword_ptr(rbx + L_RES), rax)?;
            }
        }
        // A 32-bit destination is zero-extended, even for a count of 0.
        a.mov(qword_ptr(rbx + gpr(d)), rax)
    }

    /// Loads source `src` of `op` (masked to `s` bytes) into rcx; memory goes through the TLB.
    fn load_src(&mut self, op: &Op, src: Src, s: u8, retired: u64) -> Result<(), IcedError> {
        match (src, s) {
            (Src::Reg(r), 4) => self.a.mov(ecx, dword_ptr(rbx + gpr(r))),
            (Src::Reg(r), _) => self.a.mov(rcx, qword_ptr(rbx + gpr(r))),
            (Src::Imm(x), 4) => self.a.mov(ecx, x as u32),
            (Src::Imm(x), _) => self.a.mov(rcx, x),
            (Src::Mem, _) => {
                let fault = self.exit_fault(op.ins.ip(), retired);
                self.lin(op)?;
                self.access(s, false, fault)
            }
        }
    }

    /// Writes rcx to GPR `d` at size `s` (4: zero-extended, as a 32-bit write does).
    fn put(&mut self, d: u8, s: u8) -> Result<(), IcedError> {
        if s == 4 {
            self.a.mov(ecx, ecx)?;
        }
        self.a.mov(qword_ptr(rbx + gpr(d)), rcx)
    }

    /// `k reg d, rcx` at size `s`: the result to the register, the lazy flag record as the
    /// interpreter's `alu_op` makes it (unless the next flag writer overwrites it first), and
    /// the host flags left set for a fused Jcc.
    fn alu(&mut self, k: Alu, d: u8, s: u8, dead: bool, jcc: Option<(u8, u64)>) -> Result<(), IcedError> {
        let a = &mut self.a;
        if s == 4 {
            a.mov(eax, dword_ptr(rbx + gpr(d)))?;
            a.mov(edx, eax)?;
            match k {
                Alu::Add => a.add(edx, ecx)?,
                Alu::Sub | Alu::Cmp => a.sub(edx, ecx)?,
                Alu::And | Alu::Test => a.and(edx, ecx)?,
                Alu::Or => a.or(edx, ecx)?,
                Alu::Xor => a.xor(edx, ecx)?,
            }
        } else {
            a.mov(rax, qword_ptr(rbx + gpr(d)))?;
            a.mov(rdx, rax)?;
            match k {
                Alu::Add => a.add(rdx, rcx)?,
                Alu::Sub | Alu::Cmp => a.sub(rdx, rcx)?,
                Alu::And | Alu::Test => a.and(rdx, rcx)?,
                Alu::Or => a.or(rdx, rcx)?,
                Alu::Xor => a.xor(rdx, rcx)?,
            }
        }
        // MOVs below leave the host flags alone (the fused Jcc reads them).
        if k.writes() {
            a.mov(qword_ptr(rbx + gpr(d)), rdx)?;
        }
        if !dead || jcc.is_some() {
            let fop = k.flag_op();
            a.mov(byte_ptr(rbx + L_OP), fop as u32)?;
            a.mov(byte_ptr(rbx + L_SIZE), s as u32)?;
            a.mov(byte_ptr(rbx + L_CIN), 0u32)?;
            a.mov(qword_ptr(rbx + L_RES), rdx)?;
            if fop == FlagOp::Logic {
                a.mov(qword_ptr(rbx + L_A), 0)?;
                a.mov(qword_ptr(rbx + L_B), 0)?;
            } else {
                a.mov(qword_ptr(rbx + L_A), rax)?;
                a.mov(qword_ptr(rbx + L_B), rcx)?;
            }
        }
        Ok(())
    }

    /// `INC/DEC reg d` at size `s`, recording the flags as `incdec_r` does (CF from the
    /// current lazy flags) unless they are `dead`.
    fn incdec(&mut self, dec: bool, d: u8, s: u8, dead: bool) -> Result<(), IcedError> {
        let a = &mut self.a;
        if !dead {
            a.mov(rdi, rbx)?;
            a.mov(rax, jit_cf as *const () as u64)?;
            a.call(rax)?;
            a.mov(r8d, eax)?;
        }
        if s == 4 {
            a.mov(eax, dword_ptr(rbx + gpr(d)))?;
            a.mov(edx, eax)?;
            if dec {
                a.dec(edx)?
            } else {
                a.inc(edx)?
            }
        } else {
            a.mov(rax, qword_ptr(rbx + gpr(d)))?;
            a.mov(rdx, rax)?;
            if dec {
                a.dec(rdx)?
            } else {
                a.inc(rdx)?
            }
        }
        a.mov(qword_ptr(rbx + gpr(d)), rdx)?;
        if !dead {
            let fop = if dec { FlagOp::Dec } else { FlagOp::Inc };
            a.mov(byte_ptr(rbx + L_OP), fop as u32)?;
            a.mov(byte_ptr(rbx + L_SIZE), s as u32)?;
            a.mov(byte_ptr(rbx + L_CIN), r8b)?;
            a.mov(qword_ptr(rbx + L_A), rax)?;
            a.mov(qword_ptr(rbx + L_B), 1)?;
            a.mov(qword_ptr(rbx + L_RES), rdx)?;
        }
        Ok(())
    }

    fn jcc(&mut self, cc: u8, l: CodeLabel) -> Result<(), IcedError> {
        let a = &mut self.a;
        match cc {
            0 => a.jo(l),
            1 => a.jno(l),
            2 => a.jb(l),
            3 => a.jae(l),
            4 => a.je(l),
            5 => a.jne(l),
            6 => a.jbe(l),
            7 => a.ja(l),
            8 => a.js(l),
            9 => a.jns(l),
            10 => a.jp(l),
            11 => a.jnp(l),
            12 => a.jl(l),
            13 => a.jge(l),
            14 => a.jle(l),
            _ => a.jg(l),
        }
    }

    /// The effective address of `op`'s memory operand into rax (`Cpu::ea`).
    fn ea(&mut self, op: &Op) -> Result<(), IcedError> {
        let m = op.m;
        let a = &mut self.a;
        a.mov(rax, m.disp)?;
        if m.base < 16 {
            a.add(rax, qword_ptr(rbx + gpr(m.base)))?;
        }
        if m.index < 16 {
            a.mov(rdx, qword_ptr(rbx + gpr(m.index)))?;
            if m.scale > 0 {
                a.shl(rdx, m.scale as u32)?;
            }
            a.add(rax, rdx)?;
        }
        match m.amask {
            0xffff => a.movzx(eax, ax)?,
            0xffff_ffff => a.mov(eax, eax)?,
            _ => {}
        }
        // LEA keeps the value in rcx, like a loaded source.
        a.mov(rcx, rax)
    }

    /// The linear address of `op`'s memory operand into rax (`Cpu::mem_lin`; the block's code
    /// size is fixed, segment bases are read now).
    fn lin(&mut self, op: &Op) -> Result<(), IcedError> {
        self.ea(op)?;
        let seg = op.m.seg as usize % 6;
        let bits64 = op.ins.code_size() == iced_x86::CodeSize::Code64;
        if bits64 {
            if seg == FS || seg == GS {
                self.a.add(rax, qword_ptr(rbx + seg_base(seg)))?;
            }
        } else {
            self.a.add(rax, qword_ptr(rbx + seg_base(seg)))?;
            self.a.mov(eax, eax)?;
        }
        Ok(())
    }

    /// A data access of `s` bytes at linear rax: TLB probe inline, slow path out of line.
    /// Reads leave the value (zero-extended) in rcx; writes store r8.
    fn access(&mut self, s: u8, write: bool, fault: CodeLabel) -> Result<(), IcedError> {
        let (slow, back) = (self.a.create_label(), self.a.create_label());
        let need = if write { C_NEED_W } else { C_NEED_R };
        let a = &mut self.a;
        a.mov(rcx, rax)?;
        a.shr(rcx, 12)?;
        a.mov(edx, ecx)?;
        a.and(edx, 1023)?;
        a.shl(rdx, 5)?;
        a.add(rdx, r13)?;
        a.lea(rcx, qword_ptr(rcx + rcx + 1))?;
        a.cmp(qword_ptr(rdx + E_TAG), rcx)?;
        a.jne(slow)?;
        a.mov(r9b, byte_ptr(r12 + need))?;
        a.mov(r10b, byte_ptr(rdx + E_PERM))?;
        a.and(r10b, r9b)?;
        a.cmp(r10b, r9b)?;
        a.jne(slow)?;
        a.mov(ecx, eax)?;
        a.and(ecx, 0xfff)?;
        a.cmp(ecx, 0x1000 - s as u32)?;
        a.ja(slow)?;
        a.mov(rdx, qword_ptr(rdx + E_HOST))?;
        a.test(rdx, rdx)?;
        a.jz(slow)?;
        match (write, s) {
            (true, 4) => a.mov(dword_ptr(rdx + rcx), r8d)?,
            (true, _) => a.mov(qword_ptr(rdx + rcx), r8)?,
            (false, 1) => a.movzx(ecx, byte_ptr(rdx + rcx))?,
            (false, 2) => a.movzx(ecx, word_ptr(rdx + rcx))?,
            (false, 4) => a.mov(ecx, dword_ptr(rdx + rcx))?,
            (false, _) => a.mov(rcx, qword_ptr(rdx + rcx))?,
        }
        a.set_label(&mut { back })?;
        self.exits.push(Exit::Slow { at: slow, back, fault, size: s, write });
        Ok(())
    }

    fn exit_fault(&mut self, ip: u64, retired: u64) -> CodeLabel {
        let at = self.a.create_label();
        self.exits.push(Exit::Fault { at, ip, retired });
        at
    }

    fn exit_leave(&mut self, rip: Option<u64>, retired: u64, chain: bool) -> CodeLabel {
        let at = self.a.create_label();
        self.exits.push(Exit::Leave { at, rip, retired, chain });
        at
    }

    /// Sets RIP and the retired count, status OK, and returns; with `chain`, a branch to the
    /// block's start goes round again if the engine would run this block next anyway.
    fn leave(&mut self, rip: Option<u64>, retired: u64, chain: bool) -> Result<(), IcedError> {
        if chain && rip.is_none_or(|r| r == self.start) {
            return self.leave_or_loop(rip, retired);
        }
        let a = &mut self.a;
        match rip {
            Some(r) => a.mov(rax, r)?,
            None => a.mov(rax, qword_ptr(rbx + NEXT_RIP))?,
        }
        a.mov(qword_ptr(rbx + RIP), rax)?;
        if retired > 0 {
            a.add(qword_ptr(rbx + ICOUNT), retired as i32)?;
        }
        a.xor(eax, eax)?;
        a.jmp(self.epilogue)
    }

    /// The engine's checks between blocks, inline: if the kick and interrupt flags are clear,
    /// the instruction limit is not reached and no interrupt shadow is pending, go round again.
    fn leave_or_loop(&mut self, rip: Option<u64>, retired: u64) -> Result<(), IcedError> {
        let mut out = self.a.create_label();
        let a = &mut self.a;
        if retired > 0 {
            a.add(qword_ptr(rbx + ICOUNT), retired as i32)?;
        }
        if rip.is_none() {
            a.mov(rax, self.start)?;
            a.cmp(qword_ptr(rbx + NEXT_RIP), rax)?;
            a.jne(out)?;
        }
        a.cmp(byte_ptr(r12 + C_CHAIN), 0)?;
        a.je(out)?;
        a.mov(rax, qword_ptr(r12 + C_KICK))?;
        a.cmp(byte_ptr(rax), 0)?;
        a.jne(out)?;
        a.mov(rax, qword_ptr(r12 + C_IRQ))?;
        a.cmp(byte_ptr(rax), 0)?;
        a.jne(out)?;
        a.mov(rax, qword_ptr(r12 + C_LIMIT))?;
        a.cmp(qword_ptr(rbx + ICOUNT), rax)?;
        a.jae(out)?;
        a.cmp(byte_ptr(rbx + INT_SHADOW), 0)?;
        a.jne(out)?;
        a.jmp(self.top)?;
        a.set_label(&mut out)?;
        match rip {
            Some(r) => a.mov(rax, r)?,
            None => a.mov(rax, qword_ptr(rbx + NEXT_RIP))?,
        }
        a.mov(qword_ptr(rbx + RIP), rax)?;
        a.xor(eax, eax)?;
        a.jmp(self.epilogue)
    }

    /// The out-of-line exits and the epilogue.
    fn tails(&mut self) -> Result<(), IcedError> {
        for x in std::mem::take(&mut self.exits) {
            match x {
                Exit::Fault { mut at, ip, retired } => {
                    self.a.set_label(&mut at)?;
                    self.a.mov(rax, ip)?;
                    self.a.mov(qword_ptr(rbx + RIP), rax)?;
                    if retired > 0 {
                        self.a.add(qword_ptr(rbx + ICOUNT), retired as i32)?;
                    }
                    self.a.mov(eax, FAULT as u32)?;
                    self.a.jmp(self.epilogue)?;
                }
                Exit::Leave { mut at, rip, retired, chain } => {
                    self.a.set_label(&mut at)?;
                    self.leave(rip, retired, chain)?;
                }
                Exit::Status { mut at, fault, brk } => {
                    self.a.set_label(&mut at)?;
                    self.a.cmp(eax, BREAK as u32)?;
                    self.a.je(brk)?;
                    self.a.jmp(fault)?;
                }
                Exit::Slow { mut at, back, fault, size, write } => {
                    let a = &mut self.a;
                    a.set_label(&mut at)?;
                    a.mov(rdi, rbx)?;
                    a.mov(rsi, r12)?;
                    a.mov(rdx, rax)?;
                    a.mov(ecx, size as u32)?;
                    let f =
                        if write { jit_write as *const () as usize } else { jit_read as *const () as usize };
                    a.mov(rax, f as u64)?;
                    a.call(rax)?;
                    a.test(eax, eax)?;
                    a.jnz(fault)?;
                    if !write {
                        a.mov(rcx, qword_ptr(r12 + C_VAL))?;
                    }
                    a.jmp(back)?;
                }
            }
        }
        let a = &mut self.a;
        a.set_label(&mut self.epilogue)?;
        a.pop(r13)?;
        a.pop(r12)?;
        a.pop(rbx)?;
        a.ret()
    }
}
