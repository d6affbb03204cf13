//! Snapshot state of the CMOS: index register and the 128 bytes of RAM. The clock is the
//! host's (the guest's RTC reads wall time after a restore, as after any pause).

use std::convert::Infallible;

use vmr_hypervisor::Persist;

use super::{Clock, Cmos, CmosState};

impl Persist for Cmos {
    type State = CmosState;
    type Host = Clock;
    type Error = Infallible;

    fn save(&self) -> CmosState {
        self.state()
    }

    /// Missing RAM bytes read as zero, extra ones are dropped, the index is masked.
    fn restore(clock: Clock, state: &CmosState) -> Result<Self, Infallible> {
        Ok(Cmos::from_state(state, clock))
    }
}
