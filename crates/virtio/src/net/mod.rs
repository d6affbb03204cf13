//! virtio-net over a tap device: `--net tap=tap0[,mac=52:54:00:12:34:56]`.
//!
//! Queues: 0 = receive, 1 = transmit. Frames carry the 12-byte virtio-net header both ways,
//! which the tap understands (IFF_VNET_HDR), so checksum and segmentation offloads pass through:
//! offered are CSUM/HOST_TSO4/HOST_TSO6 (the guest sends partial checksums and 64 KiB TSO
//! frames, the host kernel finishes them) and GUEST_CSUM/GUEST_TSO4/GUEST_TSO6 (the tap is told
//! with TUNSETOFFLOAD which of those the guest accepted). MRG_RXBUF is not offered, so a guest
//! that accepts TSO posts 64 KiB receive buffers (Linux "big packets").
//!
//! The worker waits on both queue EventFds and the tap (edge-triggered). Receive reads a frame
//! from the tap only when it can place it; with no receive buffer posted it stops reading until
//! the guest refills the queue.

mod config;
mod handler;
mod persist;
mod tap;
#[cfg(test)]
mod tests;

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::epoll::EventSet;

pub use config::NetConfig;
pub use persist::NetHost;
pub use tap::{Tap, TapError, VNET_HDR_LEN};

use crate::device::{ActivateContext, ActivateError, SavedDevice, VirtioDevice};
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterHandle};
use crate::worker::Worker;
use crate::{device_type, features as common};
use handler::NetHandler;

/// virtio-net feature bits (virtio 1.2, 5.1.3).
pub mod features {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
}

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Serializable state of a net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub tap: String,
    pub mac: [u8; 6],
    pub acked_features: u64,
}

/// Why a network card could not be set up.
#[derive(Debug, Error)]
pub enum NetDeviceError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("network rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// A virtio-net device.
pub struct Net {
    /// The tap while the device is not active (the worker owns it meanwhile).
    tap: Option<Tap>,
    tap_name: String,
    mac: [u8; 6],
    worker: Option<Worker<NetHandler>>,
    acked_features: u64,
    index: usize,
    queue_sizes: [u16; 2],
    rx_limiter: Arc<RateLimiter>,
    tx_limiter: Arc<RateLimiter>,
    metrics: Arc<crate::metrics::NetMetrics>,
}

/// TUN_F_* flags for the guest receive offloads the driver accepted.
fn tap_offloads(acked: u64) -> libc::c_uint {
    let mut flags = 0;
    if acked & features::GUEST_CSUM != 0 {
        flags |= libc::TUN_F_CSUM;
        if acked & features::GUEST_TSO4 != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & features::GUEST_TSO6 != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl Net {
    /// Opens the tap named by `config`. `index` only names the worker (`vmr-virtio-net<index>`).
    pub fn new(config: &NetConfig, index: usize) -> Result<Self, NetDeviceError> {
        let limiters = (
            Arc::new(RateLimiter::new(&config.rx_rate_limiter)?),
            Arc::new(RateLimiter::new(&config.tx_rate_limiter)?),
        );
        let tap = Tap::open(&config.tap)?;
        Ok(Self::with_tap(tap, config.mac(), index, limiters))
    }

    /// A card on an open tap with (receive, transmit) limiters.
    pub fn with_tap(
        tap: Tap,
        mac: [u8; 6],
        index: usize,
        (rx_limiter, tx_limiter): (Arc<RateLimiter>, Arc<RateLimiter>),
    ) -> Self {
        Net {
            rx_limiter,
            tx_limiter,
            metrics: Arc::default(),
            tap_name: tap.name().to_owned(),
            tap: Some(tap),
            mac,
            worker: None,
            acked_features: 0,
            index,
            queue_sizes: [QUEUE_SIZE; 2],
        }
    }

    /// This card's counters.
    pub fn metrics(&self) -> Arc<crate::metrics::NetMetrics> {
        self.metrics.clone()
    }

    /// What the VMM keeps to change the guest receive limits while the guest runs.
    pub fn rx_rate_limiter_handle(&self) -> RateLimiterHandle {
        RateLimiterHandle::new(self.rx_limiter.clone())
    }

    /// What the VMM keeps to change the guest transmit limits while the guest runs.
    pub fn tx_rate_limiter_handle(&self) -> RateLimiterHandle {
        RateLimiterHandle::new(self.tx_limiter.clone())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        common::VERSION_1
            | common::RING_EVENT_IDX
            | common::RING_INDIRECT_DESC
            | features::MAC
            | features::CSUM
            | features::HOST_TSO4
            | features::HOST_TSO6
            | features::GUEST_CSUM
            | features::GUEST_TSO4
            | features::GUEST_TSO6
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.mac, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only for virtio 1.x drivers (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 || ctx.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount { expected: 2, got: ctx.queues.len() });
        }
        let tap = self.tap.take().ok_or(ActivateError::AlreadyActive)?;
        if let Err(e) = tap.set_offload(tap_offloads(ctx.acked_features)) {
            let name = tap.name().to_owned();
            self.tap = Some(tap);
            return Err(ActivateError::Worker(std::io::Error::other(format!("{name}: {e}"))));
        }
        let tap_fd = tap.as_raw_fd();
        let tx = ctx.queues.pop().ok_or(ActivateError::QueueCount { expected: 2, got: 1 })?;
        let rx = ctx.queues.pop().ok_or(ActivateError::QueueCount { expected: 2, got: 0 })?;
        let limiters = (self.rx_limiter.clone(), self.tx_limiter.clone());
        let handler = NetHandler::new(ctx.mem, ctx.interrupt, (rx, tx), tap, limiters, self.metrics.clone());
        self.acked_features = ctx.acked_features;
        // In the order of handler::FD_TAP, FD_RX_LIMITER, FD_TX_LIMITER.
        let fds = [
            (tap_fd, EventSet::IN | EventSet::EDGE_TRIGGERED),
            (self.rx_limiter.as_raw_fd(), EventSet::IN),
            (self.tx_limiter.as_raw_fd(), EventSet::IN),
        ];
        let worker = Worker::spawn_gated(
            format!("vmr-virtio-net{}", self.index),
            ctx.queue_evts,
            &fds,
            handler,
            ctx.gate,
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.tap = Some(handler.into_tap()),
                None => tracing::error!("virtio-net worker panicked; the tap is gone until restart"),
            }
        }
        self.acked_features = 0;
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.worker.as_ref().map(|w| w.queue_states())
    }

    fn save_device(&self) -> SavedDevice {
        use vmr_hypervisor::Persist;
        SavedDevice::new(persist::KIND, &self.save())
    }
}
