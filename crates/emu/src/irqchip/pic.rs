//! The 8259A PIC pair (master 0x20/0x21, slave 0xa0/0xa1 cascaded on IRQ2) with the ELCR
//! (0x4d0/0x4d1): ICW1-4, OCW2 (EOI, specific EOI, rotation), OCW3 (IRR/ISR read, poll, special
//! mask), auto-EOI, IMR. Its INTR output goes to the BSP's LINT0.

use serde::{Deserialize, Serialize};

/// One 8259A: plain serde state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicChip {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_isr: bool,
    pub poll: bool,
    pub special_mask: bool,
    pub init_state: u8,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub special_fully_nested: bool,
    pub init4: bool,
    pub single: bool,
    pub elcr: u8,
    pub elcr_mask: u8,
}

impl PicChip {
    fn new(elcr_mask: u8) -> Self {
        PicChip { elcr_mask, ..Default::default() }
    }

    fn reset(&mut self) {
        let (elcr, elcr_mask) = (self.elcr, self.elcr_mask);
        *self = PicChip { elcr, elcr_mask, ..Default::default() };
    }

    fn set_irq(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << (irq & 7);
        if self.elcr & mask != 0 {
            // Level triggered.
            if level {
                self.irr |= mask;
                self.last_irr |= mask;
            } else {
                self.irr &= !mask;
                self.last_irr &= !mask;
            }
        } else if level {
            if self.last_irr & mask == 0 {
                self.irr |= mask;
            }
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    /// Highest-priority bit of `mask` as a priority number (0 = highest), 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0u8;
        while mask & (1 << ((p.wrapping_add(self.priority_add)) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The IRQ this chip would raise now, if any.
    fn output(&self) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        let mut isr = self.isr;
        if self.special_mask {
            isr &= !self.imr;
        }
        if self.special_fully_nested {
            isr &= !(1 << 2); // the slave's line on the master
        }
        let cur = self.priority(isr);
        (p < cur).then_some((p + self.priority_add) & 7)
    }

    fn intack(&mut self, irq: u8) {
        let mask = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        if self.elcr & mask == 0 {
            self.irr &= !mask;
        }
    }

    fn write(&mut self, addr: u8, v: u8) {
        if addr & 1 == 0 {
            if v & 0x10 != 0 {
                self.reset();
                self.init_state = 1;
                self.init4 = v & 1 != 0;
                self.single = v & 2 != 0;
            } else if v & 0x08 != 0 {
                if v & 0x04 != 0 {
                    self.poll = true;
                }
                if v & 0x02 != 0 {
                    self.read_isr = v & 1 != 0;
                }
                if v & 0x40 != 0 {
                    self.special_mask = v & 0x20 != 0;
                }
            } else {
                self.ocw2(v);
            }
            return;
        }
        match self.init_state {
            0 => self.imr = v,
            1 => {
                self.irq_base = v & 0xf8;
                self.init_state = if self.single {
                    if self.init4 {
                        3
                    } else {
                        0
                    }
                } else {
                    2
                };
            }
            2 => self.init_state = if self.init4 { 3 } else { 0 },
            _ => {
                self.special_fully_nested = v & 0x10 != 0;
                self.auto_eoi = v & 0x02 != 0;
                self.init_state = 0;
            }
        }
    }

    fn ocw2(&mut self, v: u8) {
        match v >> 5 {
            0 | 4 => self.rotate_on_auto_eoi = v >> 7 != 0,
            1 | 5 => {
                let p = self.priority(self.isr);
                if p != 8 {
                    let irq = (p + self.priority_add) & 7;
                    self.isr &= !(1 << irq);
                    if v >> 5 == 5 {
                        self.priority_add = (irq + 1) & 7;
                    }
                }
            }
            3 => self.isr &= !(1 << (v & 7)),
            6 => self.priority_add = ((v & 7) + 1) & 7,
            7 => {
                let irq = v & 7;
                self.isr &= !(1 << irq);
                self.priority_add = (irq + 1) & 7;
            }
            _ => {}
        }
    }
}

/// The cascaded pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic {
    pub chips: [PicChip; 2],
}

impl Default for Pic {
    fn default() -> Self {
        // IRQ 0, 1, 2, 8 and 13 are always edge triggered.
        Pic { chips: [PicChip::new(0xf8), PicChip::new(0xde)] }
    }
}

impl Pic {
    /// Recomputes the cascade (slave INTR on master IRQ2); returns the master's INTR level.
    fn update(&mut self) -> bool {
        // The cascade line follows the slave's INTR as a level.
        if self.chips[1].output().is_some() {
            self.chips[0].irr |= 1 << 2;
        } else {
            self.chips[0].irr &= !(1 << 2);
        }
        self.chips[0].output().is_some()
    }

    /// Drives ISA `irq` (0-15); returns the INTR level afterwards.
    pub fn set_irq(&mut self, irq: u32, level: bool) -> bool {
        if irq < 16 {
            self.chips[(irq >> 3) as usize].set_irq(irq as u8 & 7, level);
        }
        self.update()
    }

    /// INTR level.
    pub fn intr(&self) -> bool {
        self.chips[0].output().is_some()
    }

    /// Interrupt acknowledge cycle: the vector for the CPU (spurious 7/15 if the request went
    /// away) and the INTR level afterwards.
    pub fn intack(&mut self) -> (u8, bool) {
        let vector = match self.chips[0].output() {
            Some(irq) => {
                self.chips[0].intack(irq);
                if irq == 2 {
                    let slave = match self.chips[1].output() {
                        Some(s) => {
                            self.chips[1].intack(s);
                            s
                        }
                        None => 7,
                    };
                    self.chips[1].irq_base.wrapping_add(slave)
                } else {
                    self.chips[0].irq_base.wrapping_add(irq)
                }
            }
            None => self.chips[0].irq_base.wrapping_add(7),
        };
        (vector, self.update())
    }

    fn poll_read(&mut self, chip: usize) -> u8 {
        match self.chips[chip].output() {
            Some(irq) => {
                self.chips[chip].intack(irq);
                if chip == 1 {
                    self.chips[0].isr &= !(1 << 2);
                }
                0x80 | irq
            }
            None => 0,
        }
    }

    /// Port read (0x20/0x21/0xa0/0xa1/0x4d0/0x4d1); returns the value and the INTR level.
    pub fn read(&mut self, port: u16) -> (u8, bool) {
        let v = match port {
            0x4d0 => self.chips[0].elcr,
            0x4d1 => self.chips[1].elcr,
            _ => {
                let chip = usize::from(port >= 0xa0);
                let c = &mut self.chips[chip];
                if c.poll {
                    c.poll = false;
                    self.poll_read(chip)
                } else if port & 1 == 0 {
                    if c.read_isr {
                        c.isr
                    } else {
                        c.irr
                    }
                } else {
                    c.imr
                }
            }
        };
        (v, self.update())
    }

    /// Port write; returns the INTR level afterwards.
    pub fn write(&mut self, port: u16, v: u8) -> bool {
        match port {
            0x4d0 | 0x4d1 => {
                let c = &mut self.chips[usize::from(port == 0x4d1)];
                c.elcr = v & c.elcr_mask;
            }
            _ => self.chips[usize::from(port >= 0xa0)].write(port as u8, v),
        }
        self.update()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual BIOS/Linux init: vectors 0x20/0x28, cascade on 2, 8086 mode.
    fn init(pic: &mut Pic, auto_eoi: bool) {
        for (cmd, data, base, casc) in [(0x20, 0x21, 0x20, 4), (0xa0, 0xa1, 0x28, 2)] {
            pic.write(cmd, 0x11);
            pic.write(data, base);
            pic.write(data, casc);
            pic.write(data, if auto_eoi { 3 } else { 1 });
            pic.write(data, 0);
        }
    }

    #[test]
    fn master_irq_acknowledge_and_eoi() {
        let mut pic = Pic::default();
        init(&mut pic, false);
        assert!(pic.set_irq(1, true));
        assert_eq!(pic.intack(), (0x21, false));
        assert_eq!(pic.chips[0].isr, 2);
        // A lower-priority request waits for the EOI.
        assert!(!pic.set_irq(4, true));
        assert!(pic.write(0x20, 0x20), "non-specific EOI lets IRQ4 through");
        assert_eq!(pic.intack().0, 0x24);
    }

    #[test]
    fn slave_irq_through_cascade() {
        let mut pic = Pic::default();
        init(&mut pic, false);
        assert!(pic.set_irq(12, true));
        assert_eq!(pic.intack().0, 0x2c);
        assert_eq!((pic.chips[0].isr, pic.chips[1].isr), (4, 0x10));
    }

    #[test]
    fn masking_edge_and_auto_eoi() {
        let mut pic = Pic::default();
        init(&mut pic, true);
        pic.write(0x21, 0xff);
        assert!(!pic.set_irq(3, true), "masked");
        assert!(pic.write(0x21, 0), "unmasking shows the latched edge");
        assert_eq!(pic.intack(), (0x23, false));
        assert_eq!(pic.chips[0].isr, 0, "auto-EOI");
        assert!(!pic.set_irq(3, true), "still high: no new edge");
        pic.set_irq(3, false);
        assert!(pic.set_irq(3, true));
    }

    #[test]
    fn level_mode_via_elcr_and_reads() {
        let mut pic = Pic::default();
        init(&mut pic, false);
        pic.write(0x4d1, 0xff);
        assert_eq!(pic.read(0x4d1).0, 0xde);
        assert!(pic.set_irq(10, true));
        assert!(!pic.set_irq(10, false), "level released");
        pic.write(0x20, 0x0a); // OCW3: read ISR
        assert_eq!(pic.read(0x20).0, 0);
        pic.set_irq(0, true);
        pic.write(0x20, 0x0c); // poll
        assert_eq!(pic.read(0x20).0, 0x80);
        assert_eq!(pic.intack().0, 0x27, "spurious when nothing is pending");
    }
}
