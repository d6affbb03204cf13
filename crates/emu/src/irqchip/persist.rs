//! The chip's state in the backend-neutral form of `vmr_hypervisor` ([`IrqChipState`]): times
//! are relative (elapsed since a load, left until a deadline), so a state taken in one process
//! loads in another whose VM clock started elsewhere.

use vmr_hypervisor::{IoapicState as IoapicNeutral, IrqChipState, PicChipState, PitChannelState, PitState};

use super::ioapic::IOAPIC_PINS;
use super::pic::PicChip;
use super::pit::PitChannel;
use super::{lock, IrqChipCore};

/// Why a saved chip state cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ChipStateError {
    #[error("IOAPIC state has {got} redirection entries, the chip has {expected} pins")]
    IoapicPins { got: usize, expected: usize },
    #[error("PIT channel {channel}: mode {mode} does not exist (0 to 5)")]
    PitMode { channel: usize, mode: u8 },
}

fn pic_out(c: &PicChip) -> PicChipState {
    PicChipState {
        last_irr: c.last_irr,
        irr: c.irr,
        imr: c.imr,
        isr: c.isr,
        priority_add: c.priority_add,
        irq_base: c.irq_base,
        read_reg_select: c.read_isr,
        poll: c.poll,
        special_mask: c.special_mask,
        init_state: c.init_state,
        auto_eoi: c.auto_eoi,
        rotate_on_auto_eoi: c.rotate_on_auto_eoi,
        special_fully_nested_mode: c.special_fully_nested,
        init4: c.init4,
        single: c.single,
        elcr: c.elcr,
        elcr_mask: c.elcr_mask,
    }
}

fn pic_in(s: &PicChipState) -> PicChip {
    PicChip {
        last_irr: s.last_irr,
        irr: s.irr,
        imr: s.imr,
        isr: s.isr,
        priority_add: s.priority_add & 7,
        irq_base: s.irq_base & 0xf8,
        read_isr: s.read_reg_select,
        poll: s.poll,
        special_mask: s.special_mask,
        // ICW2..ICW4 are expected in states 1..3; anything else restarts nothing.
        init_state: if s.init_state <= 3 { s.init_state } else { 0 },
        auto_eoi: s.auto_eoi,
        rotate_on_auto_eoi: s.rotate_on_auto_eoi,
        special_fully_nested: s.special_fully_nested_mode,
        init4: s.init4,
        single: s.single,
        elcr: s.elcr & s.elcr_mask,
        elcr_mask: s.elcr_mask,
    }
}

fn pit_out(c: &PitChannel, now: u64) -> PitChannelState {
    PitChannelState {
        count: c.count,
        latched_count: c.latched_count,
        count_latched: c.count_latched,
        status_latched: c.status_latched,
        status: c.status,
        read_state: c.read_state,
        write_state: c.write_state,
        write_latch: c.write_latch,
        rw_mode: c.rw_mode,
        mode: c.mode,
        bcd: c.bcd,
        gate: c.gate,
        elapsed_ns: now.saturating_sub(c.load_time),
        irq_in_ns: c.irq_deadline.map(|d| d.saturating_sub(now)),
    }
}

/// The VM clock of a fresh process may be younger than the time a counter had been running:
/// such a counter restarts at `now` (its phase is lost, which only a guest timing the PIT sees).
fn pit_in(s: &PitChannelState, now: u64) -> PitChannel {
    PitChannel {
        count: s.count.clamp(1, 0x10000),
        latched_count: s.latched_count,
        count_latched: s.count_latched,
        status_latched: s.status_latched,
        status: s.status,
        read_state: s.read_state.min(4),
        write_state: s.write_state.min(4),
        write_latch: s.write_latch,
        rw_mode: s.rw_mode & 3,
        mode: s.mode,
        bcd: s.bcd,
        gate: s.gate,
        load_time: now.saturating_sub(s.elapsed_ns),
        irq_deadline: s.irq_in_ns.map(|left| now.saturating_add(left.min(u64::MAX / 4))),
    }
}

impl IrqChipCore {
    /// IOAPIC, PIC pair and PIT as [`IrqChipState`].
    pub fn save_state(&self) -> IrqChipState {
        let now = self.clock.now();
        let ioapic = lock(&self.ioapic).s.clone();
        let pic = lock(&self.pic).chips.clone();
        let pit = lock(&self.pit).clone();
        IrqChipState {
            pic: [pic_out(&pic[0]), pic_out(&pic[1])],
            ioapic: IoapicNeutral {
                id: ioapic.id,
                ioregsel: ioapic.ioregsel,
                redirection: ioapic.redir,
                levels: ioapic.levels,
            },
            pit: PitState {
                channels: [
                    pit_out(&pit.channels[0], now),
                    pit_out(&pit.channels[1], now),
                    pit_out(&pit.channels[2], now),
                ],
                speaker: pit.speaker,
            },
        }
    }

    /// Loads a saved state (checked first: nothing changes on an error).
    pub fn load_state(&self, s: &IrqChipState) -> Result<(), ChipStateError> {
        if s.ioapic.redirection.len() != IOAPIC_PINS {
            return Err(ChipStateError::IoapicPins {
                got: s.ioapic.redirection.len(),
                expected: IOAPIC_PINS,
            });
        }
        for (channel, c) in s.pit.channels.iter().enumerate() {
            if c.mode > 5 {
                return Err(ChipStateError::PitMode { channel, mode: c.mode });
            }
        }
        let now = self.clock.now();
        {
            let mut io = lock(&self.ioapic);
            io.s.id = s.ioapic.id & 0xf;
            io.s.ioregsel = s.ioapic.ioregsel & 0xff;
            io.s.redir = s.ioapic.redirection.clone();
            io.s.levels = s.ioapic.levels & ((1u64 << IOAPIC_PINS) - 1) as u32;
        }
        {
            let mut lines = lock(&self.lines);
            for (pin, slot) in lines.iter_mut().enumerate() {
                slot.0 = s.ioapic.levels & (1 << pin) != 0;
            }
        }
        let intr = {
            let mut pic = lock(&self.pic);
            pic.chips = [pic_in(&s.pic[0]), pic_in(&s.pic[1])];
            pic.intr()
        };
        {
            let mut pit = lock(&self.pit);
            for (c, saved) in pit.channels.iter_mut().zip(&s.pit.channels) {
                *c = pit_in(saved, now);
            }
            pit.speaker = s.pit.speaker;
        }
        self.route_intr(intr);
        self.timers_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_state_round_trips_and_times_stay_relative() {
        let chip = IrqChipCore::new(0).unwrap();
        chip.pio_write(0x43, 0x34); // channel 0, mode 2, lobyte/hibyte
        chip.pio_write(0x40, 0x00);
        chip.pio_write(0x40, 0x10);
        chip.ioapic_write(0x00, 0x10);
        chip.ioapic_write(0x10, 0x31);
        let saved = chip.save_state();
        assert_eq!(saved.pit.channels[0].mode, 2);
        assert_eq!(saved.pit.channels[0].count, 0x1000);
        assert_eq!(saved.ioapic.redirection[0] & 0xff, 0x31);
        let other = IrqChipCore::new(0).unwrap();
        other.load_state(&saved).unwrap();
        let again = other.save_state();
        assert_eq!(again.pic, saved.pic);
        assert_eq!(again.ioapic, saved.ioapic);
        assert_eq!(again.pit.channels[0].count, 0x1000);
        let left = again.pit.channels[0].irq_in_ns.unwrap();
        assert!(left <= saved.pit.channels[0].irq_in_ns.unwrap() + 1_000_000, "deadline is relative");
    }

    #[test]
    fn hostile_chip_state_is_refused() {
        let chip = IrqChipCore::new(0).unwrap();
        let mut s = chip.save_state();
        s.ioapic.redirection.truncate(3);
        assert!(chip.load_state(&s).unwrap_err().to_string().contains("3 redirection entries"));
        let mut s = chip.save_state();
        s.pit.channels[1].mode = 9;
        assert!(chip.load_state(&s).is_err());
    }
}
