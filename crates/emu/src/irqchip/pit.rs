//! The 8254 PIT (ports 0x40-0x43) and port 0x61 (channel 2 gate, speaker, channel 2 output,
//! refresh toggle). Channel 0 drives ISA IRQ 0. Counting is derived from the VM clock (`now`,
//! nanoseconds), so state only changes on port accesses and IRQ deadlines.

use serde::{Deserialize, Serialize};

/// Input clock of the 8254.
pub const PIT_HZ: u64 = 1_193_182;
const RW_LATCH: u8 = 0;
const RW_LSB: u8 = 1;
const RW_MSB: u8 = 2;
const RW_WORD0: u8 = 3;
const RW_WORD1: u8 = 4;

/// One counter: plain serde state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannel {
    /// Reload value; 0 is stored as 0x10000.
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: bool,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: bool,
    pub gate: bool,
    /// VM-clock time of the last load (or gate restart).
    pub load_time: u64,
    /// Channel 0: when IRQ 0 is raised next.
    pub irq_deadline: Option<u64>,
}

fn ticks_to_ns(t: u64) -> u64 {
    ((t as u128 * 1_000_000_000).div_ceil(PIT_HZ as u128)).min(u64::MAX as u128 / 2) as u64
}

impl PitChannel {
    fn ticks(&self, now: u64) -> u64 {
        (now.saturating_sub(self.load_time) as u128 * PIT_HZ as u128 / 1_000_000_000) as u64
    }

    fn count(&self) -> u64 {
        (self.count as u64).max(1)
    }

    fn current(&self, now: u64) -> u16 {
        let d = self.ticks(now);
        let c = self.count();
        (match self.mode {
            0 | 1 | 4 | 5 => c.wrapping_sub(d) & 0xffff,
            3 => c - (2 * d) % c,
            _ => c - d % c,
        }) as u16
    }

    /// The OUT pin.
    pub fn out(&self, now: u64) -> bool {
        let d = self.ticks(now);
        let c = self.count();
        match self.mode {
            0 => d >= c,
            1 => d < c,
            2 => !d.is_multiple_of(c) || d == 0,
            3 => d % c < c.div_ceil(2),
            _ => d == c,
        }
    }

    fn load(&mut self, v: u32, now: u64, irq: bool) {
        self.count = if v == 0 { 0x10000 } else { v };
        self.load_time = now;
        if irq {
            self.irq_deadline = Some(now + ticks_to_ns(self.count()));
        }
    }

    fn latch(&mut self, now: u64) {
        if self.count_latched == 0 {
            self.latched_count = self.current(now);
            self.count_latched = self.rw_mode;
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if self.status_latched {
            self.status_latched = false;
            return self.status;
        }
        if self.count_latched != 0 {
            let v = self.latched_count;
            return match self.count_latched {
                RW_MSB => {
                    self.count_latched = 0;
                    (v >> 8) as u8
                }
                RW_WORD0 => {
                    self.count_latched = RW_MSB;
                    v as u8
                }
                _ => {
                    self.count_latched = 0;
                    v as u8
                }
            };
        }
        let c = self.current(now);
        match self.read_state {
            RW_MSB => (c >> 8) as u8,
            RW_WORD0 => {
                self.read_state = RW_WORD1;
                c as u8
            }
            RW_WORD1 => {
                self.read_state = RW_WORD0;
                (c >> 8) as u8
            }
            _ => c as u8,
        }
    }

    fn write(&mut self, v: u8, now: u64, irq: bool) {
        match self.write_state {
            RW_LSB => self.load(v as u32, now, irq),
            RW_MSB => self.load((v as u32) << 8, now, irq),
            RW_WORD0 => {
                self.write_latch = v;
                self.write_state = RW_WORD1;
            }
            _ => {
                self.load(self.write_latch as u32 | ((v as u32) << 8), now, irq);
                self.write_state = RW_WORD0;
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate && !self.gate && matches!(self.mode, 1 | 2 | 3 | 5) {
            self.load_time = now;
        }
        self.gate = gate;
    }
}

/// The three counters plus port 0x61 state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pit {
    pub channels: [PitChannel; 3],
    pub speaker: bool,
}

impl Default for Pit {
    fn default() -> Self {
        let mut channels: [PitChannel; 3] = Default::default();
        for (i, c) in channels.iter_mut().enumerate() {
            c.mode = 3;
            c.count = 0x10000;
            c.gate = i != 2;
        }
        Pit { channels, speaker: false }
    }
}

impl Pit {
    /// Port read (0x40-0x43, 0x61).
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].read(now),
            0x61 => {
                let c2 = &self.channels[2];
                // Refresh request toggles every 15.085 us; some code waits for it to flip.
                let refresh = (now / 15_085) & 1 != 0;
                (c2.gate as u8)
                    | ((self.speaker as u8) << 1)
                    | ((refresh as u8) << 4)
                    | ((c2.out(now) as u8) << 5)
            }
            _ => 0xff,
        }
    }

    /// Port write; true if channel 0's IRQ deadline changed.
    pub fn write(&mut self, port: u16, v: u8, now: u64) -> bool {
        match port {
            0x40..=0x42 => {
                let ch = (port - 0x40) as usize;
                self.channels[ch].write(v, now, ch == 0);
                return ch == 0;
            }
            0x43 => return self.control(v, now),
            0x61 => {
                self.channels[2].set_gate(v & 1 != 0, now);
                self.speaker = v & 2 != 0;
            }
            _ => {}
        }
        false
    }

    fn control(&mut self, v: u8, now: u64) -> bool {
        let ch = (v >> 6) as usize;
        if ch == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) == 0 {
                    continue;
                }
                if v & 0x20 == 0 {
                    c.latch(now);
                }
                if v & 0x10 == 0 && !c.status_latched {
                    c.status = ((c.out(now) as u8) << 7) | (c.rw_mode << 4) | (c.mode << 1) | c.bcd as u8;
                    c.status_latched = true;
                }
            }
            return false;
        }
        let c = &mut self.channels[ch];
        let access = (v >> 4) & 3;
        if access == RW_LATCH {
            c.latch(now);
            return false;
        }
        c.rw_mode = access;
        c.read_state = access;
        c.write_state = access;
        c.mode = match (v >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        c.bcd = v & 1 != 0;
        // A new mode stops channel 0 until the count is written.
        if ch == 0 {
            c.irq_deadline = None;
            return true;
        }
        false
    }

    /// When channel 0 raises IRQ 0 next.
    pub fn irq_deadline(&self) -> Option<u64> {
        self.channels[0].irq_deadline
    }

    /// True if IRQ 0 fires at `now` (one edge; missed periods are dropped).
    pub fn tick(&mut self, now: u64) -> bool {
        let c = &mut self.channels[0];
        let Some(d) = c.irq_deadline else { return false };
        if now < d {
            return false;
        }
        c.irq_deadline = match c.mode {
            2 | 3 => {
                let period = ticks_to_ns(c.count()).max(1);
                let missed = (now - d) / period;
                Some(d + (missed + 1) * period)
            }
            _ => None,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel0_periodic_irq() {
        let mut pit = Pit::default();
        assert!(pit.write(0x43, 0x34, 0)); // ch0, lo/hi, mode 2
        pit.write(0x40, 0x9c, 0);
        assert!(pit.write(0x40, 0x2e, 0)); // 11932 ticks = 10 ms
        let d = pit.irq_deadline().unwrap();
        assert!((9_999_000..10_001_000).contains(&d), "{d}");
        assert!(!pit.tick(d - 1));
        assert!(pit.tick(d));
        let d2 = pit.irq_deadline().unwrap();
        assert_eq!(d2, 2 * d);
        assert!(pit.tick(d2 + 5 * d));
        assert_eq!(pit.irq_deadline(), Some(8 * d), "missed periods dropped");
    }

    #[test]
    fn latch_and_read_count() {
        let mut pit = Pit::default();
        pit.write(0x43, 0x30, 0); // ch0 lo/hi mode 0
        pit.write(0x40, 0x00, 0);
        pit.write(0x40, 0x10, 0); // 0x1000
        let now = ticks_to_ns(0x100);
        pit.write(0x43, 0x00, now); // latch ch0
        let lo = pit.read(0x40, now + 1_000_000);
        let hi = pit.read(0x40, now + 1_000_000);
        assert_eq!(u16::from_le_bytes([lo, hi]), 0x0f00);
        assert!(pit.tick(ticks_to_ns(0x1000)));
        assert_eq!(pit.irq_deadline(), None, "mode 0 fires once");
    }

    #[test]
    fn channel2_gate_and_out_on_port_61() {
        let mut pit = Pit::default();
        pit.write(0x61, 0, 0);
        pit.write(0x43, 0xb0, 0); // ch2 lo/hi mode 0
        pit.write(0x42, 0xff, 0);
        pit.write(0x42, 0xff, 0);
        pit.write(0x61, 1, 0); // gate high
        assert_eq!(pit.read(0x61, 1000) & 0x21, 0x01, "counting, OUT low");
        assert_eq!(pit.read(0x61, ticks_to_ns(0xffff)) & 0x20, 0x20, "terminal count");
        assert!(!pit.write(0x42, 0, 0), "channel 2 has no IRQ");
    }

    #[test]
    fn read_back_status() {
        let mut pit = Pit::default();
        pit.write(0x43, 0xb6, 0); // ch2 lo/hi mode 3
        pit.write(0x43, 0xe8, 0); // read-back status of ch2
        assert_eq!(pit.read(0x42, 0) & 0x3f, 0x36);
    }
}
