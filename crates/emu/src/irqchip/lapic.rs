//! The local APIC register model (xAPIC MMIO layout, and the x2APIC MSR interface at
//! 0x800-0x8ff): priorities, IRR/ISR/TMR, EOI, the ICR, the LVT entries and the timer in
//! one-shot, periodic and TSC-deadline modes.
//!
//! Pure state: time comes in as `now` (nanoseconds on the VM clock, which is also the TSC at
//! [`super::TSC_HZ`] minus the vCPU's TSC offset), so every rule is unit-testable with a fake
//! clock. What a write means for other parts of the machine comes back as a [`WriteEffect`].

use serde::{Deserialize, Serialize};
use vmr_hypervisor::LapicState;

use super::LAPIC_TICK_NS;

pub const REG_ID: u32 = 0x20;
pub const REG_VERSION: u32 = 0x30;
pub const REG_TPR: u32 = 0x80;
pub const REG_APR: u32 = 0x90;
pub const REG_PPR: u32 = 0xa0;
pub const REG_EOI: u32 = 0xb0;
pub const REG_LDR: u32 = 0xd0;
pub const REG_DFR: u32 = 0xe0;
pub const REG_SVR: u32 = 0xf0;
pub const REG_ISR: u32 = 0x100;
pub const REG_TMR: u32 = 0x180;
pub const REG_IRR: u32 = 0x200;
pub const REG_ESR: u32 = 0x280;
pub const REG_ICR_LO: u32 = 0x300;
pub const REG_ICR_HI: u32 = 0x310;
pub const REG_LVT_TIMER: u32 = 0x320;
pub const REG_LVT_LINT0: u32 = 0x350;
pub const REG_LVT_LINT1: u32 = 0x360;
pub const REG_LVT_ERROR: u32 = 0x370;
pub const REG_TMICT: u32 = 0x380;
pub const REG_TMCCT: u32 = 0x390;
pub const REG_TDCR: u32 = 0x3e0;
/// x2APIC only: SELF IPI (MSR 0x83f).
pub const REG_SELF_IPI: u32 = 0x3f0;
/// The x2APIC MSRs: register `offset` of the xAPIC page is MSR `X2APIC_MSRS.start + offset/16`.
pub const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0x8ff;

/// Version 0x14 (integrated APIC), max LVT entry 5 (timer..error, CMCI absent).
pub const VERSION: u32 = 0x14 | (5 << 16);
pub const LVT_MASKED: u32 = 1 << 16;
const SVR_ENABLE: u32 = 1 << 8;
/// LVT index of each register 0x320..0x370.
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
/// Writable bits per LVT entry (timer, thermal, perf, LINT0, LINT1, error).
const LVT_MASKS: [u32; 6] = [0x700ff, 0x107ff, 0x107ff, 0x1a7ff, 0x1a7ff, 0x100ff];
const TIMER_MODE_PERIODIC: u32 = 1 << 17;
const TIMER_MODE_DEADLINE: u32 = 2 << 17;
const TIMER_MODE_MASK: u32 = 3 << 17;

/// Delivery modes (ICR, LVT, IOAPIC redirection entries).
pub const DM_FIXED: u8 = 0;
pub const DM_LOWEST: u8 = 1;
pub const DM_SMI: u8 = 2;
pub const DM_NMI: u8 = 4;
pub const DM_INIT: u8 = 5;
pub const DM_SIPI: u8 = 6;
pub const DM_EXTINT: u8 = 7;

/// ICR destination shorthand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    All,
    AllButSelf,
}

/// An interrupt message on the APIC bus (from an ICR write or an IOAPIC pin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    pub vector: u8,
    pub mode: u8,
    pub logical: bool,
    pub level_triggered: bool,
    /// INIT level de-assert (ICR level bit clear with level trigger): ignored by targets.
    pub deassert: bool,
    /// 8 bits from xAPIC senders and the IOAPIC, 32 from an x2APIC ICR.
    pub dest: u32,
    pub shorthand: Shorthand,
}

/// What a register write asks of the rest of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    /// EOI of a level-triggered vector: the IOAPIC clears remote IRR for it.
    LevelEoi(u8),
    /// An IPI to route (the sender's id is the caller's).
    Ipi(Msi),
    /// The timer deadline changed.
    Timer,
}

/// The architectural registers plus timer bookkeeping: a plain serde struct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapicRegs {
    pub id: u32,
    pub tpr: u32,
    pub ldr: u32,
    pub dfr: u32,
    pub svr: u32,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    pub esr: u32,
    pub icr_lo: u32,
    pub icr_hi: u32,
    pub lvt: [u32; 6],
    pub timer_initial: u32,
    pub timer_divide: u32,
    /// VM-clock time the count was (re)loaded, or the current period began.
    pub timer_start: u64,
    /// One-shot timer already fired for this load.
    pub timer_fired: bool,
    /// IA32_TSC_DEADLINE (guest TSC units); 0 = disarmed.
    pub tsc_deadline: u64,
    /// INIT/SIPI/NMI events not yet taken by the vCPU.
    pub pending_init: bool,
    pub pending_sipi: Option<u8>,
    pub pending_nmi: bool,
    /// x2APIC mode (IA32_APIC_BASE.EXTD): registers are MSRs, the ID is 32 bits, the LDR is
    /// derived from it, the ICR destination is 32 bits.
    #[serde(default)]
    pub x2apic: bool,
}

impl LapicRegs {
    /// The power-up / INIT state for APIC `id`.
    pub fn new(id: u32) -> Self {
        LapicRegs {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            icr_lo: 0,
            icr_hi: 0,
            lvt: [LVT_MASKED; 6],
            timer_initial: 0,
            timer_divide: 0,
            timer_start: 0,
            timer_fired: true,
            tsc_deadline: 0,
            pending_init: false,
            pending_sipi: None,
            pending_nmi: false,
            x2apic: false,
        }
    }
}

fn bit(v: &[u32; 8], vec: u8) -> bool {
    v[(vec >> 5) as usize] & (1 << (vec & 31)) != 0
}

fn set_bit(v: &mut [u32; 8], vec: u8, on: bool) {
    let w = &mut v[(vec >> 5) as usize];
    if on {
        *w |= 1 << (vec & 31);
    } else {
        *w &= !(1 << (vec & 31));
    }
}

fn highest(v: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| v[i] != 0).map(|i| (i as u32 * 32 + 31 - v[i].leading_zeros()) as u8)
}

/// One local APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    pub r: LapicRegs,
    /// TSC offset of the owning vCPU (guest TSC = VM clock + offset), for TSC-deadline mode.
    pub tsc_offset: u64,
}

impl Lapic {
    pub fn new(id: u32) -> Self {
        Lapic { r: LapicRegs::new(id), tsc_offset: 0 }
    }

    pub fn software_enabled(&self) -> bool {
        self.r.svr & SVR_ENABLE != 0
    }

    /// Processor priority: the higher of TPR and the class of the highest in-service vector.
    pub fn ppr(&self) -> u32 {
        let isrv = highest(&self.r.isr).map_or(0, |v| v as u32);
        if self.r.tpr & 0xf0 >= isrv & 0xf0 {
            self.r.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// The vector the CPU would take now (ignoring RFLAGS.IF), if any.
    pub fn deliverable(&self) -> Option<u8> {
        let v = highest(&self.r.irr)?;
        (v as u32 & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// Interrupt acknowledge: the deliverable vector moves from IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.deliverable()?;
        set_bit(&mut self.r.irr, v, false);
        set_bit(&mut self.r.isr, v, true);
        Some(v)
    }

    /// A fixed interrupt arrives; false if dropped (APIC software-disabled, illegal vector).
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if vector < 16 {
            self.r.esr |= 1 << 6; // received illegal vector
            return false;
        }
        if !self.software_enabled() {
            return false;
        }
        set_bit(&mut self.r.irr, vector, true);
        set_bit(&mut self.r.tmr, vector, level_triggered);
        true
    }

    /// LINT0 takes the PIC's INTR (ExtINT, unmasked), or the APIC is bypassed altogether.
    pub fn accepts_extint(&self, hw_enabled: bool) -> bool {
        let lint0 = self.r.lvt[LVT_LINT0];
        !hw_enabled || (lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == DM_EXTINT as u32)
    }

    /// A level on LINT1: NMI delivery when programmed so (the only use machines make of it).
    pub fn lint1_nmi(&mut self) {
        let lint1 = self.r.lvt[LVT_LINT1];
        if lint1 & LVT_MASKED == 0 && (lint1 >> 8) & 7 == DM_NMI as u32 {
            self.r.pending_nmi = true;
        }
    }

    fn eoi(&mut self) -> WriteEffect {
        let Some(v) = highest(&self.r.isr) else { return WriteEffect::None };
        set_bit(&mut self.r.isr, v, false);
        if bit(&self.r.tmr, v) {
            set_bit(&mut self.r.tmr, v, false);
            WriteEffect::LevelEoi(v)
        } else {
            WriteEffect::None
        }
    }

    fn timer_mode(&self) -> u32 {
        self.r.lvt[LVT_TIMER] & TIMER_MODE_MASK
    }

    fn divide(&self) -> u64 {
        let v = self.r.timer_divide;
        let code = (v & 3) | ((v & 8) >> 1);
        1 << ((code + 1) & 7)
    }

    fn period_ns(&self) -> u64 {
        (self.r.timer_initial as u64).saturating_mul(self.divide() * LAPIC_TICK_NS)
    }

    /// When the timer fires next on the VM clock, if it is armed.
    pub fn timer_deadline(&self) -> Option<u64> {
        match self.timer_mode() {
            TIMER_MODE_DEADLINE => (self.r.tsc_deadline != 0)
                .then(|| self.r.tsc_deadline.wrapping_sub(self.tsc_offset).min(i64::MAX as u64)),
            _ if self.r.timer_initial == 0 || self.r.timer_fired => None,
            _ => Some(self.r.timer_start.saturating_add(self.period_ns())),
        }
    }

    /// Fires the timer if its deadline passed: the LVT vector goes to IRR (unless masked).
    /// Returns true if an interrupt was accepted.
    pub fn timer_tick(&mut self, now: u64) -> bool {
        let Some(deadline) = self.timer_deadline() else { return false };
        if now < deadline {
            return false;
        }
        match self.timer_mode() {
            TIMER_MODE_DEADLINE => self.r.tsc_deadline = 0,
            TIMER_MODE_PERIODIC => {
                // Missed periods are dropped rather than delivered in a burst.
                let period = self.period_ns().max(1);
                let periods = (now - self.r.timer_start) / period;
                self.r.timer_start = self.r.timer_start.saturating_add(periods.saturating_mul(period));
            }
            _ => self.r.timer_fired = true,
        }
        let lvt = self.r.lvt[LVT_TIMER];
        lvt & LVT_MASKED == 0 && self.accept(lvt as u8, false)
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == TIMER_MODE_DEADLINE || self.r.timer_initial == 0 {
            return 0;
        }
        if self.timer_mode() != TIMER_MODE_PERIODIC && self.r.timer_fired {
            return 0;
        }
        let tick = self.divide() * LAPIC_TICK_NS;
        let elapsed = now.saturating_sub(self.r.timer_start) / tick;
        let initial = self.r.timer_initial as u64;
        if self.timer_mode() == TIMER_MODE_PERIODIC {
            (initial - elapsed % initial) as u32
        } else {
            initial.saturating_sub(elapsed) as u32
        }
    }

    /// Writes IA32_TSC_DEADLINE (ignored outside TSC-deadline mode, like hardware).
    pub fn set_tsc_deadline(&mut self, v: u64) {
        if self.timer_mode() == TIMER_MODE_DEADLINE {
            self.r.tsc_deadline = v;
        }
    }

    /// Reads the 32-bit register at `offset` in the 4 KiB page.
    pub fn read(&self, offset: u32, now: u64) -> u32 {
        let idx = |base: u32| ((offset - base) >> 4) as usize;
        match offset {
            REG_ID => self.r.id << 24,
            REG_VERSION => VERSION,
            REG_TPR => self.r.tpr,
            REG_APR => 0,
            REG_PPR => self.ppr(),
            REG_LDR => self.r.ldr,
            REG_DFR => self.r.dfr,
            REG_SVR => self.r.svr,
            0x100..=0x170 => self.r.isr[idx(REG_ISR)],
            0x180..=0x1f0 => self.r.tmr[idx(REG_TMR)],
            0x200..=0x270 => self.r.irr[idx(REG_IRR)],
            REG_ESR => self.r.esr,
            REG_ICR_LO => self.r.icr_lo & !(1 << 12),
            REG_ICR_HI => self.r.icr_hi,
            0x320..=0x370 => self.r.lvt[idx(REG_LVT_TIMER)],
            REG_TMICT => self.r.timer_initial,
            REG_TMCCT => self.current_count(now),
            REG_TDCR => self.r.timer_divide,
            _ => 0,
        }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&mut self, offset: u32, v: u32, now: u64) -> WriteEffect {
        match offset {
            REG_ID => self.r.id = v >> 24,
            REG_TPR => self.r.tpr = v & 0xff,
            REG_EOI => return self.eoi(),
            REG_LDR => self.r.ldr = v & 0xff00_0000,
            REG_DFR => self.r.dfr = v | 0x0fff_ffff,
            REG_SVR => self.write_svr(v),
            REG_ESR => self.r.esr = 0,
            REG_ICR_LO => {
                self.r.icr_lo = v & !(1 << 12);
                return WriteEffect::Ipi(self.icr_message());
            }
            REG_ICR_HI => self.r.icr_hi = v & 0xff00_0000,
            0x320..=0x370 => return self.write_lvt(((offset - REG_LVT_TIMER) >> 4) as usize, v),
            REG_TMICT => {
                if self.timer_mode() != TIMER_MODE_DEADLINE {
                    self.r.timer_initial = v;
                    self.r.timer_start = now;
                    self.r.timer_fired = false;
                }
                return WriteEffect::Timer;
            }
            REG_TDCR => {
                // Keep the count where it is: rebase the start on the new divider.
                let count = self.current_count(now);
                self.r.timer_divide = v & 0xb;
                if count != 0 && self.r.timer_initial != 0 {
                    let consumed = (self.r.timer_initial - count.min(self.r.timer_initial)) as u64;
                    self.r.timer_start = now.saturating_sub(consumed * self.divide() * LAPIC_TICK_NS);
                }
                return WriteEffect::Timer;
            }
            _ => {}
        }
        WriteEffect::None
    }

    fn write_svr(&mut self, v: u32) {
        self.r.svr = v & 0x11ff;
        if !self.software_enabled() {
            for l in &mut self.r.lvt {
                *l |= LVT_MASKED;
            }
        }
    }

    fn write_lvt(&mut self, idx: usize, v: u32) -> WriteEffect {
        let Some(&mask) = LVT_MASKS.get(idx) else { return WriteEffect::None };
        let mut v = v & mask;
        if !self.software_enabled() {
            v |= LVT_MASKED;
        }
        let old_mode = self.timer_mode();
        self.r.lvt[idx] = v;
        if idx == LVT_TIMER && old_mode != self.timer_mode() {
            // A mode change disarms the timer (SDM 10.5.4.1).
            self.r.timer_initial = 0;
            self.r.timer_fired = true;
            self.r.tsc_deadline = 0;
        }
        if idx == LVT_TIMER {
            WriteEffect::Timer
        } else {
            WriteEffect::None
        }
    }

    fn icr_message(&self) -> Msi {
        let lo = self.r.icr_lo;
        let shorthand = match (lo >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::All,
            _ => Shorthand::AllButSelf,
        };
        let level_triggered = lo & (1 << 15) != 0;
        Msi {
            vector: lo as u8,
            mode: ((lo >> 8) & 7) as u8,
            logical: lo & (1 << 11) != 0,
            level_triggered,
            deassert: level_triggered && lo & (1 << 14) == 0,
            dest: if self.r.x2apic { self.r.icr_hi } else { self.r.icr_hi >> 24 },
            shorthand,
        }
    }

    /// The x2APIC logical ID: cluster (ID[31:4]) in bits 31:16, one bit of 16 for ID[3:0].
    fn x2apic_ldr(&self) -> u32 {
        ((self.r.id >> 4) << 16) | (1 << (self.r.id & 0xf))
    }

    /// Whether a message with destination `dest` (physical or logical) targets this APIC.
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        if self.r.x2apic {
            // 0xffffffff is the broadcast; logical destinations are cluster + bitmap.
            let ldr = self.x2apic_ldr();
            return dest == u32::MAX
                || if logical {
                    dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0
                } else {
                    dest == self.r.id
                };
        }
        let dest = dest as u8;
        if !logical {
            return dest == 0xff || dest as u32 == self.r.id & 0xff;
        }
        if dest == 0xff {
            return true;
        }
        let ldr = (self.r.ldr >> 24) as u8;
        if self.r.dfr >> 28 == 0xf {
            ldr & dest != 0
        } else {
            ldr >> 4 == dest >> 4 && ldr & dest & 0xf != 0
        }
    }

    /// INIT: every register back to its reset value except the APIC id and the mode (an INIT
    /// leaves IA32_APIC_BASE alone).
    pub fn init_reset(&mut self) {
        let (id, x2apic) = (self.r.id, self.r.x2apic);
        self.r = LapicRegs::new(id);
        self.r.x2apic = x2apic;
    }

    /// RDMSR of x2APIC register `msr`; `None` (#GP) for write-only, absent and reserved ones
    /// (EOI, SELF IPI, DFR, APR, the ICR's old high half, CMCI).
    pub fn x2apic_read(&self, msr: u32, now: u64) -> Option<u64> {
        let off = msr.checked_sub(*X2APIC_MSRS.start())? << 4;
        Some(match off {
            REG_ID => self.r.id as u64,
            REG_LDR => self.x2apic_ldr() as u64,
            REG_ICR_LO => (self.r.icr_lo & !(1 << 12)) as u64 | (self.r.icr_hi as u64) << 32,
            REG_VERSION | REG_TPR | REG_PPR | REG_SVR | REG_ESR | REG_TMICT | REG_TMCCT | REG_TDCR => {
                self.read(off, now) as u64
            }
            0x100..=0x270 | 0x320..=0x370 => self.read(off, now) as u64,
            _ => return None,
        })
    }

    /// WRMSR of x2APIC register `msr`; `None` (#GP) for read-only and absent registers, a
    /// non-zero high half (except the ICR), a non-zero EOI or ESR write, and reserved bits of
    /// TPR and SELF IPI. LVT, SVR and TDCR reserved bits are dropped as on the xAPIC page.
    pub fn x2apic_write(&mut self, msr: u32, v: u64, now: u64) -> Option<WriteEffect> {
        let off = msr.checked_sub(*X2APIC_MSRS.start())? << 4;
        let lo = v as u32;
        if off != REG_ICR_LO && v >> 32 != 0 {
            return None;
        }
        Some(match off {
            REG_TPR if lo <= 0xff => self.write(off, lo, now),
            REG_EOI | REG_ESR if lo == 0 => self.write(off, lo, now),
            REG_SVR | REG_TMICT | REG_TDCR | 0x320..=0x370 => self.write(off, lo, now),
            REG_ICR_LO => {
                self.r.icr_lo = lo & !(1 << 12);
                self.r.icr_hi = (v >> 32) as u32;
                WriteEffect::Ipi(self.icr_message())
            }
            REG_SELF_IPI if lo <= 0xff => WriteEffect::Ipi(Msi {
                vector: lo as u8,
                mode: DM_FIXED,
                logical: false,
                level_triggered: false,
                deassert: false,
                dest: self.r.id,
                shorthand: Shorthand::SelfOnly,
            }),
            _ => return None,
        })
    }

    /// The register page in the layout `LapicState` (and KVM) use.
    pub fn to_state(&self, now: u64) -> LapicState {
        let mut s = LapicState::default();
        for off in (0x20..0x400).step_by(0x10) {
            if off != REG_EOI {
                s.set_reg(off as usize, self.read(off, now));
            }
        }
        s
    }

    /// Loads a register page (snapshot restore, the VMM's LINT setup); the timer restarts
    /// from the page's current count.
    pub fn load_state(&mut self, s: &LapicState, now: u64) {
        let reg = |off: u32| s.reg(off as usize);
        let r = &mut self.r;
        r.id = reg(REG_ID) >> 24;
        r.tpr = reg(REG_TPR) & 0xff;
        r.ldr = reg(REG_LDR) & 0xff00_0000;
        r.dfr = reg(REG_DFR) | 0x0fff_ffff;
        r.svr = reg(REG_SVR) & 0x11ff;
        for i in 0..8 {
            r.isr[i] = reg(REG_ISR + 0x10 * i as u32);
            r.tmr[i] = reg(REG_TMR + 0x10 * i as u32);
            r.irr[i] = reg(REG_IRR + 0x10 * i as u32);
        }
        r.esr = reg(REG_ESR);
        r.icr_lo = reg(REG_ICR_LO) & !(1 << 12);
        r.icr_hi = reg(REG_ICR_HI) & 0xff00_0000;
        for (i, l) in r.lvt.iter_mut().enumerate() {
            *l = reg(REG_LVT_TIMER + 0x10 * i as u32) & LVT_MASKS[i];
        }
        r.timer_divide = reg(REG_TDCR) & 0xb;
        r.timer_initial = reg(REG_TMICT);
        let count = reg(REG_TMCCT).min(r.timer_initial);
        r.timer_fired = count == 0;
        let consumed = (r.timer_initial - count) as u64;
        let tick = self.divide() * LAPIC_TICK_NS;
        self.r.timer_start = now.saturating_sub(consumed * tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> Lapic {
        let mut l = Lapic::new(0);
        l.write(REG_SVR, 0x1ff, 0);
        l
    }

    #[test]
    fn priority_and_eoi() {
        let mut l = enabled();
        assert!(l.accept(0x31, false));
        assert!(l.accept(0x52, true));
        assert_eq!(l.acknowledge(), Some(0x52));
        assert_eq!(l.ppr(), 0x50);
        // 0x31 is below the in-service class.
        assert_eq!(l.deliverable(), None);
        assert_eq!(l.write(REG_EOI, 0, 0), WriteEffect::LevelEoi(0x52));
        assert_eq!(l.deliverable(), Some(0x31));
        l.write(REG_TPR, 0x40, 0);
        assert_eq!(l.deliverable(), None, "TPR class 4 blocks vector 0x31");
        l.write(REG_TPR, 0x20, 0);
        assert_eq!(l.acknowledge(), Some(0x31));
        assert_eq!(l.write(REG_EOI, 0, 0), WriteEffect::None, "edge vector: no IOAPIC EOI");
        assert_eq!(l.read(REG_ISR + 0x10, 0), 0);
    }

    #[test]
    fn disabled_apic_drops_fixed_and_masks_lvts() {
        let mut l = Lapic::new(1);
        assert!(!l.accept(0x40, false));
        l.write(REG_LVT_TIMER, 0x30, 0);
        assert_eq!(l.read(REG_LVT_TIMER, 0), 0x10030);
        let mut l = enabled();
        assert!(!l.accept(5, false), "vectors below 16 are illegal");
        assert_eq!(l.read(REG_ESR, 0), 1 << 6);
        l.write(REG_SVR, 0xff, 0);
        assert_eq!(l.read(REG_LVT_LINT0, 0) & LVT_MASKED, LVT_MASKED);
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        let mut l = enabled();
        l.write(REG_TDCR, 0xb, 0); // divide by 1
        l.write(REG_LVT_TIMER, 0x40, 0);
        assert_eq!(l.write(REG_TMICT, 1000, 100), WriteEffect::Timer);
        assert_eq!(l.timer_deadline(), Some(100 + 1000 * LAPIC_TICK_NS));
        assert_eq!(l.read(REG_TMCCT, 100 + 10 * LAPIC_TICK_NS), 990);
        assert!(!l.timer_tick(100 + 999 * LAPIC_TICK_NS));
        assert!(l.timer_tick(100 + 1000 * LAPIC_TICK_NS));
        assert_eq!(l.read(REG_TMCCT, 200 + 1000 * LAPIC_TICK_NS), 0);
        assert_eq!(l.timer_deadline(), None);
        assert_eq!(l.acknowledge(), Some(0x40));
    }

    #[test]
    fn periodic_timer_with_divider() {
        let mut l = enabled();
        l.write(REG_TDCR, 0x3, 0); // divide by 16
        l.write(REG_LVT_TIMER, TIMER_MODE_PERIODIC | 0x41, 0);
        l.write(REG_TMICT, 10, 0);
        let period = 10 * 16 * LAPIC_TICK_NS;
        assert_eq!(l.timer_deadline(), Some(period));
        assert_eq!(l.read(REG_TMCCT, period / 2), 5);
        assert!(l.timer_tick(period));
        assert_eq!(l.timer_deadline(), Some(2 * period));
        // Three periods late: one interrupt, next deadline in the future.
        assert!(l.timer_tick(5 * period + 1));
        assert_eq!(l.timer_deadline(), Some(6 * period));
    }

    #[test]
    fn masked_timer_fires_without_interrupt() {
        let mut l = enabled();
        l.write(REG_LVT_TIMER, LVT_MASKED | 0x40, 0);
        l.write(REG_TMICT, 1, 0);
        assert!(!l.timer_tick(u64::MAX / 2));
        assert_eq!(l.timer_deadline(), None);
        assert_eq!(l.deliverable(), None);
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut l = enabled();
        l.tsc_offset = 1000;
        l.set_tsc_deadline(5000);
        assert_eq!(l.timer_deadline(), None, "ignored outside deadline mode");
        l.write(REG_LVT_TIMER, TIMER_MODE_DEADLINE | 0x42, 0);
        l.write(REG_TMICT, 77, 0);
        assert_eq!(l.read(REG_TMICT, 0), 0, "TMICT ignored in deadline mode");
        l.set_tsc_deadline(5000);
        assert_eq!(l.timer_deadline(), Some(4000));
        assert!(!l.timer_tick(3999));
        assert!(l.timer_tick(4000));
        assert_eq!(l.r.tsc_deadline, 0);
        assert_eq!(l.acknowledge(), Some(0x42));
    }

    #[test]
    fn icr_messages_and_destinations() {
        let mut l = enabled();
        l.write(REG_ICR_HI, 0x0300_0000, 0);
        let WriteEffect::Ipi(m) = l.write(REG_ICR_LO, 0x000c_4500, 0) else { panic!("no IPI") };
        assert_eq!((m.mode, m.shorthand, m.deassert), (DM_INIT, Shorthand::AllButSelf, false));
        let WriteEffect::Ipi(m) = l.write(REG_ICR_LO, 0x0000_0630, 0) else { panic!("no IPI") };
        assert_eq!((m.mode, m.vector, m.dest, m.shorthand), (DM_SIPI, 0x30, 3, Shorthand::None));
        let WriteEffect::Ipi(m) = l.write(REG_ICR_LO, 0x0000_8500, 0) else { panic!("no IPI") };
        assert!(m.deassert);
        let mut t = Lapic::new(2);
        assert!(t.matches(2, false) && t.matches(0xff, false) && !t.matches(3, false));
        t.write(REG_LDR, 0x0400_0000, 0);
        assert!(t.matches(0x06, true) && !t.matches(0x01, true));
        t.write(REG_DFR, 0x0fff_ffff, 0); // cluster model
        t.write(REG_LDR, 0x2100_0000, 0);
        assert!(t.matches(0x23, true) && !t.matches(0x13, true) && !t.matches(0x22, true));
    }

    #[test]
    fn x2apic_msr_interface() {
        let msr = |off: u32| 0x800 + (off >> 4);
        let mut l = Lapic::new(0x25);
        l.r.x2apic = true;
        assert_eq!(l.x2apic_write(msr(REG_SVR), 0x1ff, 0), Some(WriteEffect::None));
        assert_eq!(l.x2apic_read(msr(REG_ID), 0), Some(0x25));
        assert_eq!(l.x2apic_read(msr(REG_LDR), 0), Some(0x2_0020), "cluster 2, bit 5");
        assert_eq!(l.x2apic_write(msr(REG_LDR), 1, 0), None, "LDR is read-only");
        assert_eq!(l.x2apic_write(msr(REG_ID), 1, 0), None, "ID is read-only");
        assert_eq!(l.x2apic_read(msr(REG_DFR), 0), None, "no DFR");
        assert_eq!(l.x2apic_read(msr(REG_ICR_HI), 0), None, "no ICR high half");
        assert_eq!(l.x2apic_read(msr(REG_EOI), 0), None, "EOI is write-only");
        assert_eq!(l.x2apic_read(msr(REG_SELF_IPI), 0), None, "SELF IPI is write-only");
        assert_eq!(l.x2apic_read(0x82f, 0), None, "no CMCI");
        assert_eq!(l.x2apic_write(msr(REG_EOI), 1, 0), None, "EOI takes 0 only");
        assert_eq!(l.x2apic_write(msr(REG_TPR), 0x100, 0), None, "TPR reserved bits");
        assert_eq!(l.x2apic_write(msr(REG_TPR), 1 << 32, 0), None, "high half of a 32-bit register");
        assert_eq!(l.x2apic_write(msr(REG_TPR), 0x30, 0), Some(WriteEffect::None));
        assert_eq!(l.x2apic_read(msr(REG_PPR), 0), Some(0x30));
        // A 64-bit ICR: 32-bit destination, fixed, physical.
        let Some(WriteEffect::Ipi(m)) = l.x2apic_write(msr(REG_ICR_LO), 0x0000_0123_0000_0041, 0) else {
            panic!("no IPI")
        };
        assert_eq!((m.vector, m.dest, m.logical, m.shorthand), (0x41, 0x123, false, Shorthand::None));
        assert_eq!(l.x2apic_read(msr(REG_ICR_LO), 0), Some(0x0000_0123_0000_0041));
        let Some(WriteEffect::Ipi(m)) = l.x2apic_write(msr(REG_SELF_IPI), 0x52, 0) else { panic!("no IPI") };
        assert_eq!((m.vector, m.shorthand), (0x52, Shorthand::SelfOnly));
        assert_eq!(l.x2apic_write(msr(REG_SELF_IPI), 0x152, 0), None);
        // Destinations: exact 32-bit ID, 0xffffffff broadcast, cluster logical.
        assert!(l.matches(0x25, false) && l.matches(u32::MAX, false) && !l.matches(0xff, false));
        assert!(l.matches(0x2_0020, true) && l.matches(0x2_ffff, true));
        assert!(!l.matches(0x3_0020, true) && !l.matches(0x2_0010, true));
        // The timer through MSRs; INIT keeps the mode.
        assert_eq!(l.x2apic_write(msr(REG_TMICT), 500, 0), Some(WriteEffect::Timer));
        assert_eq!(l.x2apic_read(msr(REG_TMICT), 0), Some(500));
        assert_eq!(l.x2apic_write(msr(REG_TMCCT), 1, 0), None, "current count is read-only");
        l.init_reset();
        assert!(l.r.x2apic);
        assert_eq!(l.x2apic_read(msr(REG_TMICT), 0), Some(0));
    }

    #[test]
    fn state_page_round_trip() {
        let mut l = enabled();
        l.write(REG_TPR, 0x20, 0);
        l.write(REG_LVT_LINT0, 0x700, 0);
        l.write(REG_TDCR, 0xb, 0);
        l.write(REG_TMICT, 1000, 0);
        l.accept(0x77, true);
        let s = l.to_state(100 * LAPIC_TICK_NS);
        assert_eq!(s.reg(REG_TMCCT as usize), 900);
        let mut m = Lapic::new(0);
        m.load_state(&s, 500 * LAPIC_TICK_NS);
        assert_eq!(m.to_state(500 * LAPIC_TICK_NS), s);
        assert_eq!(m.timer_deadline(), Some(1400 * LAPIC_TICK_NS));
        assert_eq!(m.deliverable(), Some(0x77));
        assert!(m.accepts_extint(true));
    }
}
