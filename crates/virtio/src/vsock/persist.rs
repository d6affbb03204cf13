//! Snapshot state of the vsock device: the guest's CID and the host socket path. Connections do
//! not survive a snapshot (their host ends belong to the old process): the restored device
//! starts without any and, as Firecracker's does, tells the guest so with a transport reset
//! event when it is activated again.

use std::io::Write;
use std::time::Duration;

use virtio_queue::{Queue, Writer};
use vmr_hypervisor::Persist;

use super::{Vsock, VsockConfig, VsockState};
use crate::{GuestMemory, Interrupt, RestoreError};

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
        let mut vsock =
            Vsock::new(&host.config, host.index).map_err(|e| RestoreError::Backend(e.to_string()))?;
        vsock.reset_pending = true;
        Ok(vsock)
    }
}

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2, 5.10.6.4): the driver drops every connection
/// and reads the CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts one TRANSPORT_RESET event in the first buffer of the event queue (Linux keeps some
/// posted there); without a buffer the guest is not told, as with Firecracker.
pub(super) fn send_transport_reset(event: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt) {
    let mut sent = false;
    crate::queue::drain_lingering(event, mem, interrupt, Duration::ZERO, |chain| {
        if std::mem::replace(&mut sent, true) {
            return None;
        }
        let Ok(mut writer) = Writer::<()>::new(mem, chain) else { return Some(0) };
        Some(if writer.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).is_ok() { 4 } else { 0 })
    });
    if !sent {
        tracing::warn!("virtio-vsock: no event buffer to tell the guest its connections were reset");
    }
}
