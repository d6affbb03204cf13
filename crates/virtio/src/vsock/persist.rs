//! Snapshot state of the vsock device: the guest's CID and the host socket path. Connections do
//! not survive a snapshot (their host ends belong to the old process): the restored device
//! starts without any, as Firecracker's does.

use vmr_hypervisor::Persist;

use super::{Vsock, VsockConfig, VsockState};
use crate::RestoreError;

pub(crate) const KIND: &str = "virtio-vsock";

/// What the host gives a restored device: its configuration (the socket path may be another
/// one, Firecracker's vsock override) and its index.
pub struct VsockHost {
    pub config: VsockConfig,
    pub index: usize,
}

impl Persist for Vsock {
    type State = VsockState;
    type Host = VsockHost;
    type Error = RestoreError;

    fn save(&self) -> VsockState {
        VsockState { cid: self.cid, socket: self.socket_path.clone(), acked_features: self.acked_features }
    }

    fn restore(host: VsockHost, state: &VsockState) -> Result<Self, RestoreError> {
        if host.config.cid != state.cid {
            return Err(RestoreError::Mismatch(format!(
                "the guest's vsock CID is {}, the configuration has {}",
                state.cid, host.config.cid
            )));
        }
        Vsock::new(&host.config, host.index).map_err(|e| RestoreError::Backend(e.to_string()))
    }
}
