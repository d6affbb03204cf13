//! Snapshot state of the 16550: registers, receive FIFO, the THR-empty latch and pending error
//! and modem-status bits, and host input still queued for the FIFO.

use std::io::Write;

use vmr_hypervisor::Persist;

use super::{Serial, SerialError, SerialState};
use crate::IrqLine;

/// What the host gives a restored UART: its interrupt line and where guest output goes.
pub struct SerialHost {
    pub irq: IrqLine,
    pub out: Box<dyn Write + Send>,
}

impl Persist for Serial {
    type State = SerialState;
    type Host = SerialHost;
    type Error = SerialError;

    fn save(&self) -> SerialState {
        self.state()
    }

    fn restore(host: SerialHost, state: &SerialState) -> Result<Self, SerialError> {
        Serial::from_state(state, host.irq, host.out)
    }
}
