//! ACPI power management for a hardware-reduced platform, matching the FADT that vmr-arch
//! writes: an I/O block at [`ACPI_PM_PORT`] with the sleep control register (+0), the sleep
//! status register (+1) and the reset register (+2). Also the port 0xCF9 reset control
//! register ([`ResetControl`]).
//!
//! Linux powers off by writing `SLP_TYPx << 2 | SLP_EN` to sleep control with the `_S5_` value
//! 5, and resets by writing the FADT's RESET_VALUE to the reset register.

mod cf9;
mod persist;

pub use cf9::{ResetControl, RESET_CONTROL_PORT};

use serde::{Deserialize, Serialize};

use crate::{BusDevice, VmExitRequest, VmExitRequester};

/// First port of the block.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Length of the block.
pub const ACPI_PM_PORT_LEN: u16 = 3;
/// The value that resets the machine when written to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYP meaning soft-off (S5), as the DSDT's `_S5_` says.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET_REGISTER: u64 = 2;
const SLP_EN: u8 = 0x20;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const WAK_STS: u8 = 0x80;

/// Saved state of the power-management block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// Sleep status register (write-one-to-clear).
    pub sleep_status: u8,
}

/// The ACPI power-management block. Insert on the PIO bus at [`ACPI_PM_PORT`], length
/// [`ACPI_PM_PORT_LEN`].
pub struct AcpiPm {
    state: AcpiPmState,
    exit: VmExitRequester,
}

impl AcpiPm {
    /// A block that asks `exit` for power-off (S5) and reset.
    pub fn new(exit: VmExitRequester) -> Self {
        Self::from_state(&AcpiPmState::default(), exit)
    }

    /// Restores from [`AcpiPm::state`].
    pub fn from_state(state: &AcpiPmState, exit: VmExitRequester) -> Self {
        AcpiPm { state: state.clone(), exit }
    }

    /// The block's state, for snapshots.
    pub fn state(&self) -> AcpiPmState {
        self.state.clone()
    }

    fn write_sleep_control(&mut self, value: u8) {
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
            (self.exit)(VmExitRequest::Poweroff);
        }
        // Other sleep states are not offered by the DSDT; a guest asking for them is ignored.
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), SLEEP_STATUS) = (data.first_mut(), offset) {
            *first = self.state.sleep_status;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL => self.write_sleep_control(value),
            SLEEP_STATUS => self.state.sleep_status &= !(value & WAK_STS),
            RESET_REGISTER if value == ACPI_RESET_VALUE => (self.exit)(VmExitRequest::Reset),
            _ => {}
        }
    }
}

/// The ACPI power button: a press is an edge on the Generic Event Device's interrupt, whose
/// `_EVT` method (in the DSDT vmr-arch writes) notifies the `PWRB` device. Needs no port: the
/// event has one source, so the method has nothing to read.
pub struct PowerButton {
    irq: crate::IrqLine,
}

impl PowerButton {
    /// A button on `irq` (vmr-arch's `POWER_BUTTON_IRQ`).
    pub fn new(irq: crate::IrqLine) -> Self {
        PowerButton { irq }
    }

    /// Presses (and releases) the button.
    pub fn press(&self) {
        self.irq.pulse();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    pub(crate) fn recorder() -> (VmExitRequester, Arc<Mutex<Vec<VmExitRequest>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        (Arc::new(move |r| sink.lock().unwrap().push(r)), log)
    }

    #[test]
    fn a_press_is_one_edge_on_the_button_interrupt() {
        let chip = Arc::new(crate::test_util::RecordingIrqChip::default());
        let button = PowerButton::new(crate::IrqLine::new(chip.clone(), 3));
        button.press();
        button.press();
        assert_eq!(chip.pulses(3), 2);
    }

    #[test]
    fn linux_poweroff_and_reset() {
        let (exit, log) = recorder();
        let mut pm = AcpiPm::new(exit);
        // acpi_hw_extended_sleep: clear WAK_STS, then SLP_TYP=5 | SLP_EN.
        pm.write(SLEEP_STATUS, &[WAK_STS]);
        pm.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(*log.lock().unwrap(), vec![VmExitRequest::Poweroff]);
        pm.write(RESET_REGISTER, &[ACPI_RESET_VALUE]);
        assert_eq!(log.lock().unwrap().last(), Some(&VmExitRequest::Reset));
    }

    #[test]
    fn other_values_do_nothing() {
        let (exit, log) = recorder();
        let mut pm = AcpiPm::new(exit);
        pm.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not offered
        pm.write(RESET_REGISTER, &[0x02]);
        for offset in [3u64, 4, 0x1000, u64::MAX] {
            let mut b = [0xffu8; 8];
            pm.read(offset, &mut b);
            assert_eq!(b, [0; 8]);
            pm.write(offset, &[ACPI_RESET_VALUE]);
        }
        pm.write(0, &[]);
        pm.read(1, &mut []);
        assert!(log.lock().unwrap().is_empty());
        let state = AcpiPmState { sleep_status: WAK_STS | 1 };
        let json = serde_json::to_string(&state).unwrap();
        let mut pm = AcpiPm::from_state(&serde_json::from_str(&json).unwrap(), Arc::new(|_| {}));
        pm.write(SLEEP_STATUS, &[WAK_STS]);
        let mut b = [0u8];
        pm.read(SLEEP_STATUS, &mut b);
        assert_eq!(b[0], 1);
        assert_eq!(pm.state().sleep_status, 1);
    }
}
