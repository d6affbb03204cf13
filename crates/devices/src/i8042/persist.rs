//! Snapshot state of the PS/2 controller: command byte, status, output queue.

use std::convert::Infallible;

use vmr_hypervisor::Persist;

use super::{I8042State, I8042};
use crate::{IrqLine, VmExitRequester};

/// What the host gives a restored controller: the reset requester and IRQ 1.
pub struct I8042Host {
    pub exit: VmExitRequester,
    pub irq: IrqLine,
}

impl Persist for I8042 {
    type State = I8042State;
    type Host = I8042Host;
    type Error = Infallible;

    fn save(&self) -> I8042State {
        self.state()
    }

    /// An over-long output queue is truncated (the guest loses keys, never more).
    fn restore(host: I8042Host, state: &I8042State) -> Result<Self, Infallible> {
        Ok(I8042::from_state(state, host.exit, host.irq))
    }
}
