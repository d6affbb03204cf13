//! The trait every virtio device implements, independent of the transport.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use crate::{GuestMemory, Interrupt};

/// Everything a device needs to start serving its queues.
pub struct ActivateContext {
    pub mem: GuestMemory,
    pub interrupt: Arc<Interrupt>,
    /// One entry per queue the device declared, each validated against `mem` and ready.
    pub queues: Vec<Queue>,
    /// The EventFd signalled when the driver notifies the queue of the same index.
    pub queue_evts: Vec<EventFd>,
    /// Features the driver accepted (a subset of [`VirtioDevice::device_features`]).
    pub acked_features: u64,
    /// Where the device's worker parks while the VM is paused.
    pub gate: Arc<crate::pause::WorkerGate>,
}

#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device was activated twice without a reset")]
    AlreadyActive,
    #[error("cannot start the device worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// A virtio device, as the transport drives it.
///
/// The transport calls `activate` once the driver set DRIVER_OK, from the vCPU thread; the
/// device then serves its queues on its own thread until `reset` (or drop).
pub trait VirtioDevice: Send {
    /// The virtio device id ([`crate::device_type`]).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn device_features(&self) -> u64;
    /// Reads device config space at `offset` (any offset and width; past the end reads zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (ignored where the device has nothing writable).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving (joins the worker) and returns to the state before `activate`.
    fn reset(&mut self);
    /// Positions of the queues the active device serves, between two batches of its worker
    /// (None while the device is not active).
    fn queue_states(&self) -> Option<Vec<QueueState>>;
    /// The device's own state for a snapshot: its `Persist::State` (see the device's
    /// `persist.rs`), tagged with its kind so that a restore names a mismatch.
    fn save_device(&self) -> SavedDevice;
}

/// One device's state as a snapshot carries it; the VMM restores it with the `Persist` impl
/// of the device its configuration names (no enum of every device here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// `virtio-blk`, `virtio-net`, `virtio-vsock`, `virtio-rng`.
    pub kind: String,
    pub state: serde_json::Value,
}

impl SavedDevice {
    pub fn new(kind: &str, state: &impl Serialize) -> Self {
        // Plain structs of strings and numbers: serializing them cannot fail.
        SavedDevice {
            kind: kind.into(),
            state: serde_json::to_value(state).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The state as `T`, if this is a `kind` device.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T, RestoreError> {
        if self.kind != kind {
            return Err(RestoreError::Kind { expected: kind.into(), found: self.kind.clone() });
        }
        serde_json::from_value(self.state.clone())
            .map_err(|e| RestoreError::Invalid(format!("{kind} state: {e}")))
    }
}

/// Why a device cannot be restored from a snapshot (one line each).
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("the snapshot has a {found} device where the configuration has a {expected}")]
    Kind { expected: String, found: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Backend(String),
}
