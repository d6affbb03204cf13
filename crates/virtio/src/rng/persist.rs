//! Snapshot state of the entropy device: only the features the driver accepted.

use vmr_hypervisor::Persist;

use super::{Rng, RngState};
use crate::RestoreError;

pub(crate) const KIND: &str = "virtio-rng";

impl Persist for Rng {
    type State = RngState;
    /// The device index (names the worker thread).
    type Host = usize;
    type Error = RestoreError;

    fn save(&self) -> RngState {
        RngState { acked_features: self.acked_features }
    }

    fn restore(index: usize, _state: &RngState) -> Result<Self, RestoreError> {
        Ok(Rng::new(index))
    }
}
