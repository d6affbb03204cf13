//! Exception and interrupt delivery through the IVT/IDT in all three modes, IST and TSS stack
//! switches, double and triple faults, and IRET.

use crate::cpu::*;
use crate::flags::{AC, IF, NT, RF, TF, VM};
use crate::mem::Access;
use crate::segment::parse_descriptor;

/// How an event reached the CPU (decides the return address and the gate DPL check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A fault or abort: returns to the faulting instruction.
    Exception,
    /// INT n / INT3 / INTO: returns after the instruction, gate DPL must be >= CPL.
    Software,
    /// An external interrupt (PIC/APIC): returns to the next instruction to execute.
    External,
}

fn contributory(v: u8) -> bool {
    matches!(v, DE | TS | NP | SS_VEC | GP)
}

impl Cpu {
    /// Delivers an exception raised while executing the instruction at `rip`, handling the
    /// double-fault and triple-fault rules. A triple fault sets `shutdown`.
    pub fn raise(&mut self, exc: Exc) {
        let (kind, ret) =
            if exc.soft() { (EventKind::Software, self.next_rip) } else { (EventKind::Exception, self.rip) };
        let kind = if exc.kind == ExcKind::Icebp { EventKind::External } else { kind };
        let Err(second) = self.deliver(exc.vector, exc.error(), kind, ret) else { return };
        let first = exc.vector;
        if first == DF_VEC {
            self.triple_fault();
            return;
        }
        let df = (contributory(first) && contributory(second.vector))
            || (first == PF_VEC && (contributory(second.vector) || second.vector == PF_VEC));
        let r = if df {
            self.deliver(DF_VEC, Some(0), EventKind::Exception, ret)
        } else {
            // Benign combination: the second exception is delivered instead.
            self.deliver(second.vector, second.error(), EventKind::Exception, ret).or_else(|third| {
                if contributory(third.vector) || third.vector == PF_VEC {
                    self.deliver(DF_VEC, Some(0), EventKind::Exception, ret)
                } else {
                    Err(third)
                }
            })
        };
        if r.is_err() {
            self.triple_fault();
        }
    }

    fn triple_fault(&mut self) {
        tracing::warn!(rip = format_args!("{:#x}", self.rip), "software CPU: triple fault, shutting down");
        self.shutdown = true;
        self.block_break = true;
    }

    /// Delivers an external interrupt `vector` (the caller checked IF and the shadow).
    pub fn interrupt(&mut self, vector: u8) {
        self.halted = false;
        let ret = self.rip;
        if let Err(e) = self.deliver(vector, None, EventKind::External, ret) {
            self.raise(e);
        }
    }

    /// Transfers control through the IVT/IDT. On error nothing architectural has changed
    /// except memory already written on the new stack.
    pub fn deliver(&mut self, vector: u8, error: Option<u32>, kind: EventKind, ret: u64) -> Ex {
        self.serialize();
        self.halted = false;
        if !self.protected() {
            return self.deliver_real(vector, ret);
        }
        let ext = (kind != EventKind::Software) as u32;
        let gate_err = (vector as u32) * 8 + 2 + ext;
        let entry = if self.long_mode() { 16 } else { 8 };
        if (vector as u64 + 1) * entry - 1 > self.idtr.limit as u64 {
            return Err(Exc::gp(gate_err));
        }
        let addr = self.wrap_lin(self.idtr.base.wrapping_add(vector as u64 * entry));
        let lo = self.read_lin(addr, 8, Access::SYS_READ)?;
        let hi = if self.long_mode() { self.read_lin(addr.wrapping_add(8), 8, Access::SYS_READ)? } else { 0 };
        let gtype = ((lo >> 40) & 0xf) as u8;
        let dpl = ((lo >> 45) & 3) as u8;
        let valid = if self.long_mode() {
            matches!(gtype, 0xe | 0xf)
        } else {
            matches!(gtype, 0x6 | 0x7 | 0xe | 0xf)
        };
        if !valid {
            return Err(Exc::gp(gate_err));
        }
        if kind == EventKind::Software && dpl < self.cpl {
            return Err(Exc::gp(gate_err));
        }
        if lo & (1 << 47) == 0 {
            return Err(Exc::with_error(NP, gate_err));
        }
        let sel = ((lo >> 16) & 0xffff) as u16;
        let mut offset = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000);
        if self.long_mode() {
            offset |= (hi & 0xffff_ffff) << 32;
        }
        let gate = Gate {
            sel,
            offset,
            trap: gtype & 1 != 0,
            size: if gtype & 8 != 0 { 4 } else { 2 },
            ist: (lo >> 32) as u8 & 7,
        };
        self.deliver_gate(gate, error, ret)
    }

    fn deliver_real(&mut self, vector: u8, ret: u64) -> Ex {
        let addr = self.idtr.base.wrapping_add(vector as u64 * 4) & 0xffff_ffff;
        if vector as u64 * 4 + 3 > self.idtr.limit as u64 {
            return Err(Exc::gp(0));
        }
        let ip = self.read_lin(addr, 2, Access::SYS_READ)?;
        let cs = self.read_lin(addr.wrapping_add(2), 2, Access::SYS_READ)? as u16;
        let flags = self.rflags();
        let (sp, old_cs) = (self.gpr[4], self.seg[CS].selector);
        let pushed =
            self.push(2, flags).and_then(|_| self.push(2, old_cs as u64)).and_then(|_| self.push(2, ret));
        if let Err(e) = pushed {
            self.gpr[4] = sp;
            return Err(e);
        }
        self.flags.set(flags & !(IF | TF | AC | RF));
        self.seg[CS].selector = cs;
        self.seg[CS].base = (cs as u64) << 4;
        self.rip = ip;
        self.next_rip = ip;
        Ok(())
    }

    fn deliver_gate(&mut self, g: Gate, error: Option<u32>, ret: u64) -> Ex {
        let mut cs = self.load_cs_checked(g.sel, 0)?;
        let conforming = cs.type_ & 4 != 0;
        let new_cpl = if conforming { self.cpl } else { cs.dpl };
        cs.selector = (g.sel & !3) | new_cpl as u16;
        if new_cpl > self.cpl || (self.long_mode() && (!cs.l || cs.db)) {
            return Err(Exc::gp(g.sel as u32 & 0xfffc));
        }
        let old_flags = self.rflags();
        let (old_ss, old_sp, old_cs) = (self.seg[SS], self.gpr[4], self.seg[CS].selector);
        let size = if self.long_mode() { 8 } else { g.size };
        let switch = new_cpl < self.cpl;
        let (new_ss, mut sp) = if self.long_mode() {
            let sp = if g.ist != 0 {
                self.read_lin(self.tr.base.wrapping_add(0x24 + 8 * (g.ist as u64 - 1)), 8, Access::SYS_READ)?
            } else if switch {
                self.read_lin(self.tr.base.wrapping_add(4 + 8 * new_cpl as u64), 8, Access::SYS_READ)?
            } else {
                self.gpr[4]
            };
            let ss = if switch { crate::segment::null_segment(new_cpl as u16) } else { old_ss };
            (ss, sp & !0xf)
        } else if switch {
            let base = self.tr.base.wrapping_add(4 + 8 * new_cpl as u64);
            let sp = self.read_lin(self.wrap_lin(base), 4, Access::SYS_READ)?;
            let sel = self.read_lin(self.wrap_lin(base.wrapping_add(4)), 2, Access::SYS_READ)? as u16;
            let raw = self.read_descriptor(sel)?;
            let ss = parse_descriptor(raw, sel);
            if !ss.present || (sel & 3) as u8 != new_cpl || ss.dpl != new_cpl {
                return Err(Exc::with_error(TS, sel as u32 & 0xfffc));
            }
            (ss, sp)
        } else {
            (old_ss, self.gpr[4])
        };
        let mut frame = [0u64; 6];
        let mut n = 0;
        let mut put = |v: u64| {
            frame[n] = v;
            n += 1;
        };
        if switch || self.long_mode() {
            put(old_ss.selector as u64);
            put(old_sp);
        }
        put(old_flags);
        put(old_cs as u64);
        put(ret);
        if let Some(e) = error {
            put(e as u64);
        }
        // Write the frame on the new stack (as the supervisor when switching).
        let sp_mask = if self.long_mode() {
            u64::MAX
        } else if new_ss.db {
            0xffff_ffff
        } else {
            0xffff
        };
        for &v in &frame[..n] {
            sp = sp.wrapping_sub(size as u64) & sp_mask;
            let lin = self.wrap_lin(if self.long_mode() { sp } else { new_ss.base.wrapping_add(sp) });
            let acc = if switch { Access::SYS_WRITE } else { Access::WRITE };
            self.write_lin(lin, size, v, acc)?;
        }
        self.seg[SS] = new_ss;
        self.set_cs(cs, new_cpl);
        self.write_gpr(4, if sp_mask == 0xffff { 2 } else { 8 }, sp);
        let mut f = old_flags & !(TF | NT | RF | VM);
        if !g.trap {
            f &= !IF;
        }
        self.flags.set(f);
        self.rip = g.offset;
        self.next_rip = g.offset;
        Ok(())
    }

    /// IRET with operand size `size`.
    pub fn iret(&mut self, size: u8) -> Ex {
        if !self.protected() {
            let ip = self.peek(0, size)?;
            let cs = self.peek(size as u64, size)? as u16;
            let f = self.peek(2 * size as u64, size)?;
            self.adjust_sp(3 * size as u64);
            let old = self.rflags();
            let mask = crate::flags::mask(size) & !(VM | crate::flags::VIF | crate::flags::VIP);
            self.flags.set((old & !mask) | (f & mask));
            self.seg[CS].selector = cs;
            self.seg[CS].base = (cs as u64) << 4;
            self.next_rip = ip;
            self.block_break = true;
            return Ok(());
        }
        if self.flags.word & NT != 0 {
            return Err(Exc::gp(0));
        }
        let ip = self.peek(0, size)?;
        let sel = self.peek(size as u64, size)? as u16;
        let f = self.peek(2 * size as u64, size)?;
        let rpl = (sel & 3) as u8;
        if rpl < self.cpl {
            return Err(Exc::gp(sel as u32 & 0xfffc));
        }
        let outer = rpl > self.cpl || self.long_mode();
        let (sp, ss) = if outer {
            (self.peek(3 * size as u64, size)?, self.peek(4 * size as u64, size)? as u16)
        } else {
            (0, 0)
        };
        let cs = self.load_cs_checked(sel, rpl)?;
        let conforming = cs.type_ & 4 != 0;
        if (!conforming && cs.dpl != rpl) || (conforming && cs.dpl > rpl) {
            return Err(Exc::gp(sel as u32 & 0xfffc));
        }
        let saved = (self.seg, self.cpl, self.gpr[4], self.flags);
        self.write_flags_checked(f, size);
        let cpl0 = self.cpl;
        if outer {
            self.cpl = rpl;
            let r = if ss & 0xfffc == 0 && self.long_mode() && rpl < 3 && cs.l {
                self.seg[SS] = crate::segment::null_segment(ss);
                self.seg[SS].dpl = rpl;
                Ok(())
            } else {
                self.load_seg(SS, ss)
            };
            if let Err(e) = r {
                (self.seg, self.cpl, self.gpr[4], self.flags) = saved;
                self.cpl = cpl0;
                return Err(e);
            }
            self.set_cs(cs, rpl);
            self.write_gpr(4, if size == 2 { 2 } else { 8 }, sp);
            if !self.seg[SS].db && !self.long_mode() {
                self.write_gpr(4, 2, sp);
            }
        } else {
            self.adjust_sp(3 * size as u64);
            self.set_cs(cs, rpl);
        }
        self.next_rip = if size == 2 { ip & 0xffff } else { ip };
        self.block_break = true;
        Ok(())
    }
}

/// A decoded interrupt/trap gate.
struct Gate {
    sel: u16,
    offset: u64,
    trap: bool,
    /// 2 for 16-bit gates, 4 for 32-bit (and 64-bit) gates.
    size: u8,
    ist: u8,
}
