//! Test helpers shared by the device tests.

use std::collections::HashMap;
use std::sync::Mutex;

use vmr_hypervisor::{IrqChip, Result};

/// An IrqChip that records line levels and counts rising edges per GSI.
#[derive(Default)]
pub(crate) struct RecordingIrqChip {
    state: Mutex<HashMap<u32, (bool, usize)>>,
}

impl RecordingIrqChip {
    /// Rising edges seen on `gsi`.
    pub(crate) fn pulses(&self, gsi: u32) -> usize {
        self.state.lock().unwrap().get(&gsi).map_or(0, |s| s.1)
    }
}

impl IrqChip for RecordingIrqChip {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        let entry = state.entry(gsi).or_default();
        if level && !entry.0 {
            entry.1 += 1;
        }
        entry.0 = level;
        Ok(())
    }
}
