//! The IOAPIC (82093AA-style, version 0x11, 24 pins): IOREGSEL/IOWIN at 0x00/0x10, the
//! redirection table, edge and level pins with remote IRR, EOI broadcast from the LAPICs.

use serde::{Deserialize, Serialize};

use super::lapic::{Msi, Shorthand};

pub const IOAPIC_PINS: usize = 24;
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);
const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
/// Bits the guest may write in a redirection entry (not delivery status / remote IRR).
const WRITABLE: u64 = 0xff00_0000_0001_afff;

/// Plain serde state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    pub id: u32,
    pub ioregsel: u32,
    pub redir: Vec<u64>,
    /// Input levels (bit per pin).
    pub levels: u32,
}

impl Default for IoapicState {
    fn default() -> Self {
        IoapicState { id: 0, ioregsel: 0, redir: vec![MASKED; IOAPIC_PINS], levels: 0 }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Ioapic {
    pub s: IoapicState,
}

fn message(entry: u64) -> Msi {
    Msi {
        vector: entry as u8,
        mode: ((entry >> 8) & 7) as u8,
        logical: entry & (1 << 11) != 0,
        level_triggered: entry & LEVEL != 0,
        deassert: false,
        dest: (entry >> 56) as u32,
        shorthand: Shorthand::None,
    }
}

impl Ioapic {
    pub fn new(id: u32) -> Self {
        Ioapic { s: IoapicState { id, ..Default::default() } }
    }

    fn entry(&self, pin: usize) -> u64 {
        self.s.redir.get(pin).copied().unwrap_or(MASKED)
    }

    /// Delivers pin `pin` if its level and entry say so (level pins set remote IRR).
    fn service(&mut self, pin: usize) -> Option<Msi> {
        let e = self.entry(pin);
        let high = self.s.levels & (1 << pin) != 0;
        if e & MASKED != 0 || !high || e & LEVEL == 0 || e & REMOTE_IRR != 0 {
            return None;
        }
        self.s.redir.get_mut(pin).map(|r| {
            *r |= REMOTE_IRR;
            message(e)
        })
    }

    /// Drives input `pin`; returns the message to deliver, if any.
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Option<Msi> {
        if pin >= IOAPIC_PINS {
            return None;
        }
        let was = self.s.levels & (1 << pin) != 0;
        if level {
            self.s.levels |= 1 << pin;
        } else {
            self.s.levels &= !(1 << pin);
        }
        let e = self.entry(pin);
        if e & LEVEL == 0 {
            (level && !was && e & MASKED == 0).then(|| message(e))
        } else {
            self.service(pin)
        }
    }

    /// EOI of `vector` (from a LAPIC or the EOI register): clears remote IRR of the level pins
    /// with that vector; pins still asserted are delivered again.
    pub fn eoi(&mut self, vector: u8) -> Vec<Msi> {
        let mut out = Vec::new();
        for pin in 0..self.s.redir.len().min(IOAPIC_PINS) {
            let e = self.s.redir[pin];
            if e as u8 == vector && e & LEVEL != 0 && e & REMOTE_IRR != 0 {
                self.s.redir[pin] &= !REMOTE_IRR;
                out.extend(self.service(pin));
            }
        }
        out
    }

    /// MMIO read at `offset` (32-bit registers).
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => self.s.ioregsel,
            0x10 => self.read_indirect(self.s.ioregsel),
            _ => 0,
        }
    }

    fn read_indirect(&self, sel: u32) -> u32 {
        match sel {
            0 => self.s.id << 24,
            1 => VERSION,
            2 => self.s.id << 24,
            0x10..=0x3f => {
                let e = self.entry(((sel - 0x10) / 2) as usize);
                if sel & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0xffff_ffff,
        }
    }

    /// MMIO write; returns messages to deliver (unmasking an asserted level pin, EOI).
    pub fn write(&mut self, offset: u64, v: u32) -> Vec<Msi> {
        match offset {
            0x00 => self.s.ioregsel = v & 0xff,
            0x10 => return self.write_indirect(self.s.ioregsel, v),
            0x40 => return self.eoi(v as u8),
            _ => {}
        }
        Vec::new()
    }

    fn write_indirect(&mut self, sel: u32, v: u32) -> Vec<Msi> {
        match sel {
            0 => self.s.id = (v >> 24) & 0xf,
            0x10..=0x3f => {
                let pin = ((sel - 0x10) / 2) as usize;
                let old = self.entry(pin);
                let new = if sel & 1 == 0 {
                    (old & !0xffff_ffff) | v as u64
                } else {
                    (old & 0xffff_ffff) | ((v as u64) << 32)
                };
                let mut e = (new & WRITABLE) | (old & REMOTE_IRR);
                if e & LEVEL == 0 {
                    e &= !REMOTE_IRR;
                }
                if let Some(r) = self.s.redir.get_mut(pin) {
                    *r = e;
                }
                return self.service(pin).into_iter().collect();
            }
            _ => {}
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut Ioapic, pin: u32, lo: u32, hi: u32) -> Vec<Msi> {
        io.write(0, 0x11 + 2 * pin);
        let mut out = io.write(0x10, hi);
        io.write(0, 0x10 + 2 * pin);
        out.extend(io.write(0x10, lo));
        out
    }

    #[test]
    fn id_and_version() {
        let mut io = Ioapic::new(2);
        io.write(0, 1);
        assert_eq!(io.read(0x10), 0x0017_0011);
        io.write(0, 0);
        assert_eq!(io.read(0x10), 2 << 24);
        io.write(0, 0x10);
        assert_eq!(io.read(0x10), MASKED as u32, "pins start masked");
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only_when_unmasked() {
        let mut io = Ioapic::new(0);
        assert_eq!(io.set_irq(4, true), None, "masked");
        io.set_irq(4, false);
        program(&mut io, 4, 0x31, 0x0100_0000);
        let m = io.set_irq(4, true).expect("delivered");
        assert_eq!((m.vector, m.dest, m.level_triggered, m.logical), (0x31, 1, false, false));
        assert_eq!(io.set_irq(4, true), None, "no edge");
        assert_eq!(io.set_irq(30, true), None, "no such pin");
    }

    #[test]
    fn level_pin_remote_irr_and_eoi() {
        let mut io = Ioapic::new(0);
        program(&mut io, 9, 0x8000 | 0x41, 0);
        assert!(io.set_irq(9, true).is_some());
        io.write(0, 0x10 + 18);
        assert_ne!(io.read(0x10) & REMOTE_IRR as u32, 0);
        assert_eq!(io.set_irq(9, true), None, "remote IRR blocks");
        // EOI with the line still high: delivered again.
        assert_eq!(io.eoi(0x41).len(), 1);
        io.set_irq(9, false);
        assert_eq!(io.eoi(0x41).len(), 0);
        io.write(0, 0x10 + 18);
        assert_eq!(io.read(0x10) & REMOTE_IRR as u32, 0);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = Ioapic::new(0);
        io.set_irq(3, true);
        let out = program(&mut io, 3, 0x8000 | 0x50, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, 0x50);
    }
}
