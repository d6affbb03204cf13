//! The trait every virtio device implements, independent of the transport.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::block::BlockState;
use crate::net::NetState;
use crate::rng::RngState;
use crate::vsock::VsockState;
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
    /// Plain serde state of the device (not of its in-flight queues).
    fn state(&self) -> DeviceState;
}

/// Serializable state of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Net(NetState),
    Rng(RngState),
    Vsock(VsockState),
}
