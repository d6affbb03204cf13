//! Lazily computed arithmetic flags.
//!
//! Arithmetic instructions record their operands, result and kind in [`Lazy`] instead of
//! computing CF/PF/AF/ZF/SF/OF. The flags are materialised only when something reads them
//! (a `jcc`, `pushf`, an interrupt), which most of the time is never.

/// RFLAGS bits.
pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const IOPL: u64 = 3 << 12;
pub const NT: u64 = 1 << 14;
pub const RF: u64 = 1 << 16;
pub const VM: u64 = 1 << 17;
pub const AC: u64 = 1 << 18;
pub const VIF: u64 = 1 << 19;
pub const VIP: u64 = 1 << 20;
pub const ID: u64 = 1 << 21;
/// The six arithmetic status flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Bit 1 always reads as one.
pub const FIXED1: u64 = 1 << 1;

/// Which operation produced the pending flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagOp {
    /// Flags are materialised in the RFLAGS word.
    None,
    Add,
    Adc,
    Sub,
    Sbb,
    /// AND/OR/XOR/TEST: CF=OF=0, AF=0.
    Logic,
    /// INC: like ADD 1, CF preserved in `carry_in`.
    Inc,
    /// DEC: like SUB 1, CF preserved in `carry_in`.
    Dec,
    /// Shifts and multiplies: SF/ZF/PF from `res`, CF = `carry_in`, OF = bit 0 of `b`, AF = 0.
    /// The instruction works out CF and OF itself (they are cheap there); the rest stays lazy.
    Explicit,
}

/// Pending flag computation: `res = a op b (+/- carry_in)` at `size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Lazy {
    pub op: FlagOp,
    pub size: u8,
    pub carry_in: bool,
    pub a: u64,
    pub b: u64,
    pub res: u64,
}

impl Default for Lazy {
    fn default() -> Self {
        Lazy { op: FlagOp::None, size: 8, carry_in: false, a: 0, b: 0, res: 0 }
    }
}

/// All-ones mask of `size` bytes.
#[inline(always)]
pub fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Sign bit of `size` bytes.
#[inline(always)]
pub fn sign_bit(size: u8) -> u64 {
    1u64 << (size as u32 * 8 - 1)
}

/// Even parity of the low byte, as PF reports it.
#[inline(always)]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

impl Lazy {
    #[inline(always)]
    fn cf(&self) -> bool {
        let m = mask(self.size);
        let (a, b, r) = (self.a & m, self.b & m, self.res & m);
        match self.op {
            FlagOp::Add => r < a,
            FlagOp::Adc => {
                if self.carry_in {
                    r <= a
                } else {
                    r < a
                }
            }
            FlagOp::Sub => a < b,
            FlagOp::Sbb => {
                if self.carry_in {
                    a <= b
                } else {
                    a < b
                }
            }
            FlagOp::Logic => false,
            FlagOp::Inc | FlagOp::Dec | FlagOp::Explicit => self.carry_in,
            FlagOp::None => false,
        }
    }

    #[inline(always)]
    fn of(&self) -> bool {
        let s = sign_bit(self.size);
        let (a, b, r) = (self.a, self.b, self.res);
        match self.op {
            FlagOp::Add | FlagOp::Adc | FlagOp::Inc => ((a ^ r) & (b ^ r) & s) != 0,
            FlagOp::Sub | FlagOp::Sbb | FlagOp::Dec => ((a ^ b) & (a ^ r) & s) != 0,
            FlagOp::Explicit => self.b & 1 != 0,
            FlagOp::Logic | FlagOp::None => false,
        }
    }

    /// Materialises the six arithmetic flags.
    #[inline]
    pub fn compute(&self) -> u64 {
        let m = mask(self.size);
        let r = self.res & m;
        let mut f = 0;
        if self.cf() {
            f |= CF;
        }
        if parity(r) {
            f |= PF;
        }
        if !matches!(self.op, FlagOp::Logic | FlagOp::Explicit) && ((self.a ^ self.b ^ self.res) & 0x10) != 0
        {
            f |= AF;
        }
        if r == 0 {
            f |= ZF;
        }
        if r & sign_bit(self.size) != 0 {
            f |= SF;
        }
        if self.of() {
            f |= OF;
        }
        f
    }
}

/// Flag state of a CPU: the RFLAGS word plus a pending lazy computation.
#[derive(Clone, Copy, Debug)]
pub struct Flags {
    /// RFLAGS; the arithmetic bits are valid only when `lazy.op == FlagOp::None`.
    pub word: u64,
    pub lazy: Lazy,
}

impl Default for Flags {
    fn default() -> Self {
        Flags { word: FIXED1, lazy: Lazy::default() }
    }
}

impl Flags {
    /// The full RFLAGS value.
    #[inline]
    pub fn get(&self) -> u64 {
        if self.lazy.op == FlagOp::None {
            self.word
        } else {
            (self.word & !ARITH) | self.lazy.compute()
        }
    }

    /// Replaces RFLAGS wholesale (reserved bits forced to their fixed values).
    #[inline]
    pub fn set(&mut self, v: u64) {
        self.word = (v & 0x003f_7fd5) | FIXED1;
        self.lazy.op = FlagOp::None;
    }

    /// Makes the arithmetic bits of `word` valid.
    #[inline]
    pub fn materialize(&mut self) {
        if self.lazy.op != FlagOp::None {
            self.word = self.get();
            self.lazy.op = FlagOp::None;
        }
    }

    /// Sets the arithmetic flags selected by `which` to `values`, leaving the others.
    #[inline]
    pub fn set_arith(&mut self, which: u64, values: u64) {
        self.materialize();
        self.word = (self.word & !which) | (values & which);
    }

    #[inline(always)]
    pub fn record(&mut self, op: FlagOp, size: u8, a: u64, b: u64, res: u64) {
        self.lazy = Lazy { op, size, carry_in: false, a, b, res };
    }

    #[inline(always)]
    pub fn record_carry(&mut self, op: FlagOp, size: u8, a: u64, b: u64, res: u64, carry_in: bool) {
        self.lazy = Lazy { op, size, carry_in, a, b, res };
    }

    /// Records a result whose CF and OF the instruction computed itself (shifts, multiplies):
    /// SF/ZF/PF come from `res` at `size` when read, AF reads as 0.
    #[inline(always)]
    pub fn record_explicit(&mut self, size: u8, res: u64, cf: bool, of: bool) {
        self.lazy = Lazy { op: FlagOp::Explicit, size, carry_in: cf, a: 0, b: of as u64, res };
    }

    #[inline(always)]
    pub fn cf(&self) -> bool {
        if self.lazy.op == FlagOp::None {
            self.word & CF != 0
        } else {
            self.lazy.cf()
        }
    }

    #[inline(always)]
    pub fn zf(&self) -> bool {
        if self.lazy.op == FlagOp::None {
            self.word & ZF != 0
        } else {
            self.lazy.res & mask(self.lazy.size) == 0
        }
    }

    #[inline(always)]
    pub fn sf(&self) -> bool {
        if self.lazy.op == FlagOp::None {
            self.word & SF != 0
        } else {
            self.lazy.res & sign_bit(self.lazy.size) != 0
        }
    }

    #[inline(always)]
    pub fn of(&self) -> bool {
        if self.lazy.op == FlagOp::None {
            self.word & OF != 0
        } else {
            self.lazy.of()
        }
    }

    #[inline(always)]
    pub fn pf(&self) -> bool {
        if self.lazy.op == FlagOp::None {
            self.word & PF != 0
        } else {
            parity(self.lazy.res)
        }
    }

    #[inline(always)]
    pub fn df(&self) -> bool {
        self.word & DF != 0
    }

    #[inline(always)]
    pub fn if_(&self) -> bool {
        self.word & IF != 0
    }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc opcodes).
    #[inline(always)]
    pub fn cond(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.pf(),
            6 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        };
        r ^ (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_flags() {
        let mut f = Flags::default();
        f.record(FlagOp::Add, 1, 0xff, 1, 0x100);
        let v = f.get();
        assert_eq!(v & (CF | ZF | AF | PF | SF | OF), CF | ZF | AF | PF);
        f.record(FlagOp::Add, 1, 0x7f, 1, 0x80);
        assert_eq!(f.get() & (CF | ZF | SF | OF), SF | OF);
    }

    #[test]
    fn sub_and_conditions() {
        let mut f = Flags::default();
        f.record(FlagOp::Sub, 4, 1, 2, 1u64.wrapping_sub(2));
        assert!(f.cf() && f.sf() && !f.zf() && !f.of());
        assert!(f.cond(0x2)); // jb
        assert!(f.cond(0xc)); // jl
        assert!(!f.cond(0x7)); // ja
        f.record(FlagOp::Sub, 8, 5, 5, 0);
        assert!(f.cond(0x4) && f.cond(0x6) && f.cond(0xe) && !f.cond(0xc));
    }

    #[test]
    fn inc_keeps_carry_and_set_masks_reserved() {
        let mut f = Flags::default();
        f.record_carry(FlagOp::Inc, 2, 0x7fff, 1, 0x8000, true);
        assert!(f.cf() && f.of() && f.sf());
        f.set(u64::MAX);
        assert_eq!(f.get() & (1 << 3 | 1 << 5 | 1 << 15 | 1 << 22), 0);
        assert_eq!(f.get() & FIXED1, FIXED1);
    }

    #[test]
    fn explicit_cf_of_and_lazy_szp() {
        let mut f = Flags::default();
        f.set(AF | ZF);
        f.record_explicit(2, 0x1_8003, true, false);
        assert_eq!(f.get() & ARITH, CF | SF | PF);
        assert!(f.cf() && !f.of() && f.sf() && !f.zf() && f.pf());
        assert!(f.cond(0xc) && !f.cond(0x0)); // jl (SF != OF), jo
        f.record_explicit(4, 0x1_0000_0000, false, true);
        assert_eq!(f.get() & ARITH, ZF | PF | OF);
        assert!(f.cond(0x0) && f.cond(0x4) && !f.cond(0x2));
    }
}
