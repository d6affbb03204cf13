//! The run loop's view of a vCPU's LAPIC ([`InterruptSource`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{IrqChipCore, LocalApic, FLAG_MASKABLE};
use crate::engine::{InterruptSource, IrqEvent};

/// Interrupts for one vCPU: its LAPIC, and the PIC through LINT0 (ExtINT).
pub struct ApicSource {
    pub lapic: Arc<LocalApic>,
    pub core: Arc<IrqChipCore>,
}

impl InterruptSource for ApicSource {
    fn pending(&self) -> bool {
        self.lapic.flag.load(Ordering::Acquire) & FLAG_MASKABLE != 0
    }

    fn acknowledge(&mut self) -> Option<u8> {
        // ExtINT bypasses the APIC's priority logic: the PIC answers the acknowledge cycle.
        if self.lapic.extint_wanted() {
            if let Some(v) = self.core.pic_intack() {
                return Some(v);
            }
        }
        self.lapic.with(|m| m.acknowledge())
    }

    fn take_event(&mut self, if_set: bool) -> Option<IrqEvent> {
        let (init, nmi) = self.lapic.with(|m| {
            if m.r.pending_init {
                (true, false)
            } else {
                (false, std::mem::take(&mut m.r.pending_nmi))
            }
        });
        if init {
            return Some(IrqEvent::Init);
        }
        if nmi {
            return Some(IrqEvent::Nmi);
        }
        if if_set {
            self.acknowledge().map(IrqEvent::Vector)
        } else {
            None
        }
    }
}
