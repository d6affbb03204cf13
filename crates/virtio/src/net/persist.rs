//! Snapshot state of a virtio-net card: the tap it was on, the MAC the guest knows and the
//! features it accepted. Frames in flight between the tap and the rings are not kept (a network
//! drops them; TCP resends).

use vmr_hypervisor::Persist;

use super::{Net, NetConfig, NetState};
use crate::RestoreError;

pub(crate) const KIND: &str = "virtio-net";

/// What the host gives a restored card: its configuration (the tap may be another one, as
/// Firecracker's `network_overrides` allow) and its index.
pub struct NetHost {
    pub config: NetConfig,
    pub index: usize,
}

impl Persist for Net {
    type State = NetState;
    type Host = NetHost;
    type Error = RestoreError;

    fn save(&self) -> NetState {
        NetState { tap: self.tap_name.clone(), mac: self.mac, acked_features: self.acked_features }
    }

    /// The guest keeps its MAC whatever tap the card is on now.
    fn restore(host: NetHost, state: &NetState) -> Result<Self, RestoreError> {
        let config = NetConfig { mac: Some(state.mac), ..host.config };
        Net::new(&config, host.index).map_err(|e| RestoreError::Backend(e.to_string()))
    }
}
