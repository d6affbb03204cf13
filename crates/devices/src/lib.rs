//! Devices of the platform and the bus that routes guest accesses to them.
//!
//! Each device lives in its own folder. Devices never see a backend: they get an [`IrqLine`]
//! to raise interrupts and a [`VmExitRequester`] to ask for power-off or reset.

mod bus;

pub mod acpi;
pub mod cmos;
pub mod i8042;
pub mod metrics;
pub mod serial;
#[cfg(test)]
mod test_util;

pub use bus::{Bus, BusDevice, BusError};

use std::sync::Arc;

use vmr_hypervisor::IrqChip;

/// What a device may ask of the VMM about the whole machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExitRequest {
    /// The guest powered the machine off (ACPI sleep state S5).
    Poweroff,
    /// The guest asked for a reset (i8042 pulse, ACPI reset register, port 0xcf9).
    Reset,
}

/// Called by a device when the guest asks for power-off or reset.
pub type VmExitRequester = Arc<dyn Fn(VmExitRequest) + Send + Sync>;

/// One interrupt input of the VM's interrupt controllers, as a device sees it.
#[derive(Clone)]
pub struct IrqLine {
    chip: Arc<dyn IrqChip>,
    gsi: u32,
}

impl IrqLine {
    pub fn new(chip: Arc<dyn IrqChip>, gsi: u32) -> Self {
        IrqLine { chip, gsi }
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Drives a level-triggered line.
    pub fn set_level(&self, level: bool) {
        // An error here means the backend rejected a GSI the machine model chose; nothing the
        // guest can cause, so log-free best effort is correct.
        let _ = self.chip.set_irq_line(self.gsi, level);
    }

    /// Signals an edge-triggered interrupt.
    pub fn pulse(&self) {
        let _ = self.chip.pulse_irq(self.gsi);
    }
}
