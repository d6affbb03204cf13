//! Snapshot state of the ACPI power-management block (sleep status). The Generic Event
//! Device's power button holds no state between presses.

use std::convert::Infallible;

use vmr_hypervisor::Persist;

use super::{AcpiPm, AcpiPmState};
use crate::VmExitRequester;

impl Persist for AcpiPm {
    type State = AcpiPmState;
    type Host = VmExitRequester;
    type Error = Infallible;

    fn save(&self) -> AcpiPmState {
        self.state()
    }

    fn restore(exit: VmExitRequester, state: &AcpiPmState) -> Result<Self, Infallible> {
        Ok(AcpiPm::from_state(state, exit))
    }
}
