//! Segment descriptors: GDT/LDT lookups and segment register loads.

use vmr_hypervisor::Segment;

use crate::cpu::{Cpu, Ex, Exc, CS, NP, SS, SS_VEC};
use crate::mem::Access;

/// Decodes an 8-byte code/data (or the low half of a system) descriptor.
pub fn parse_descriptor(raw: u64, selector: u16) -> Segment {
    let g = raw & (1 << 55) != 0;
    let mut limit = ((raw & 0xffff) | ((raw >> 32) & 0xf_0000)) as u32;
    if g {
        limit = (limit << 12) | 0xfff;
    }
    Segment {
        base: ((raw >> 16) & 0xff_ffff) | ((raw >> 32) & 0xff00_0000),
        limit,
        selector,
        type_: ((raw >> 40) & 0xf) as u8,
        s: raw & (1 << 44) != 0,
        dpl: ((raw >> 45) & 3) as u8,
        present: raw & (1 << 47) != 0,
        avl: raw & (1 << 52) != 0,
        l: raw & (1 << 53) != 0,
        db: raw & (1 << 54) != 0,
        g,
        unusable: false,
    }
}

/// An unusable (null-loaded) data segment.
pub fn null_segment(selector: u16) -> Segment {
    Segment { selector, unusable: true, ..Default::default() }
}

impl Cpu {
    /// Linear address of the descriptor for `sel`, after the table-limit check.
    fn descriptor_addr(&self, sel: u16, bytes: u64) -> Ex<u64> {
        let (base, limit) = if sel & 4 != 0 {
            if self.ldtr.unusable || !self.ldtr.present {
                return Err(Exc::gp(sel as u32 & 0xfffc));
            }
            (self.ldtr.base, self.ldtr.limit as u64)
        } else {
            (self.gdtr.base, self.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + bytes - 1 > limit {
            return Err(Exc::gp(sel as u32 & 0xfffc));
        }
        Ok(self.wrap_lin(base.wrapping_add(off)))
    }

    /// Reads the 8-byte descriptor `sel` refers to.
    pub fn read_descriptor(&mut self, sel: u16) -> Ex<u64> {
        let a = self.descriptor_addr(sel, 8)?;
        self.read_lin(a, 8, Access::SYS_READ)
    }

    /// Reads a 16-byte system descriptor (long mode TSS/LDT) and returns it parsed.
    pub fn read_system_descriptor(&mut self, sel: u16) -> Ex<(Segment, u64)> {
        let bytes = if self.long_mode() { 16 } else { 8 };
        let a = self.descriptor_addr(sel, bytes)?;
        let lo = self.read_lin(a, 8, Access::SYS_READ)?;
        let mut s = parse_descriptor(lo, sel);
        if self.long_mode() {
            let hi = self.read_lin(a.wrapping_add(8), 8, Access::SYS_READ)?;
            s.base |= (hi & 0xffff_ffff) << 32;
        }
        Ok((s, a))
    }

    /// Sets the accessed bit of the descriptor for `sel` if it is clear.
    fn mark_accessed(&mut self, sel: u16, raw: u64) -> Ex {
        if raw & (1 << 40) == 0 {
            let a = self.descriptor_addr(sel, 8)?;
            self.write_lin(a.wrapping_add(5), 1, (raw >> 40) | 1, Access::SYS_WRITE)?;
        }
        Ok(())
    }

    /// MOV/POP to a data segment register or SS (not CS).
    pub fn load_seg(&mut self, seg: usize, sel: u16) -> Ex {
        if !self.protected() {
            let s = &mut self.seg[seg % 6];
            s.selector = sel;
            s.base = (sel as u64) << 4;
            return Ok(());
        }
        let err = sel as u32 & 0xfffc;
        if sel & 0xfffc == 0 {
            if seg == SS && !(self.bitness == 64 && self.cpl < 3) {
                return Err(Exc::gp(0));
            }
            self.seg[seg % 6] = null_segment(sel);
            if seg == SS {
                self.seg[SS].dpl = self.cpl;
            }
            return Ok(());
        }
        let raw = self.read_descriptor(sel)?;
        let d = parse_descriptor(raw, sel);
        let rpl = (sel & 3) as u8;
        let code = d.type_ & 8 != 0;
        if seg == SS {
            if !d.s || code || d.type_ & 2 == 0 || rpl != self.cpl || d.dpl != self.cpl {
                return Err(Exc::gp(err));
            }
            if !d.present {
                return Err(Exc::with_error(SS_VEC, err));
            }
        } else {
            let readable = !code || d.type_ & 2 != 0;
            let conforming = code && d.type_ & 4 != 0;
            if !d.s || !readable || (!conforming && d.dpl < self.cpl.max(rpl)) {
                return Err(Exc::gp(err));
            }
            if !d.present {
                return Err(Exc::with_error(NP, err));
            }
        }
        self.mark_accessed(sel, raw)?;
        self.seg[seg % 6] = parse_descriptor(raw | (1 << 40), sel);
        Ok(())
    }

    /// Loads CS for a far transfer to privilege `new_cpl` (the caller has checked the rules
    /// for its kind of transfer); updates the execution mode.
    pub fn load_cs_checked(&mut self, sel: u16, new_cpl: u8) -> Ex<Segment> {
        let err = sel as u32 & 0xfffc;
        if !self.protected() {
            let mut s = self.seg[CS];
            s.selector = sel;
            s.base = (sel as u64) << 4;
            return Ok(s);
        }
        if sel & 0xfffc == 0 {
            return Err(Exc::gp(0));
        }
        let raw = self.read_descriptor(sel)?;
        let mut d = parse_descriptor(raw | (1 << 40), sel);
        if !d.s || d.type_ & 8 == 0 {
            return Err(Exc::gp(err));
        }
        if !d.present {
            return Err(Exc::with_error(NP, err));
        }
        self.mark_accessed(sel, raw)?;
        d.selector = (sel & !3) | new_cpl as u16;
        Ok(d)
    }

    /// Installs a CS value and recomputes the mode.
    pub fn set_cs(&mut self, mut cs: Segment, cpl: u8) {
        cs.dpl = if self.protected() { cpl } else { cs.dpl };
        self.seg[CS] = cs;
        self.update_mode();
        if self.protected() {
            self.cpl = cpl;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_code_descriptors() {
        // Linux's __KERNEL_CS (64-bit): 0x00af9b000000ffff.
        let s = parse_descriptor(0x00af_9b00_0000_ffff, 0x10);
        assert!(s.l && !s.db && s.g && s.present && s.s);
        assert_eq!((s.type_, s.dpl, s.base, s.limit), (0xb, 0, 0, 0xffff_ffff));
        // 32-bit flat data, DPL 3.
        let s = parse_descriptor(0x00cf_f300_0000_ffff, 0x2b);
        assert!(s.db && !s.l);
        assert_eq!((s.type_, s.dpl), (3, 3));
        let s = parse_descriptor(0x1200_0000_3456_0000 | (0x89u64 << 40) | 0x67, 0x40);
        assert_eq!((s.base, s.type_, s.limit), (0x1200_3456, 9, 0x67));
    }
}
