//! virtio-blk over a [`DiskImage`] (raw file, block device, qcow2).
//!
//! Offered: VERSION_1, EVENT_IDX, INDIRECT_DESC, SEG_MAX, BLK_SIZE, FLUSH, and either RO or
//! DISCARD + WRITE_ZEROES. Flush completes only after [`DiskImage::flush`] (metadata written,
//! then fdatasync), so a write the guest flushed survives a SIGKILL of the VMM.

mod config;
mod persist;
pub(crate) mod request;
mod swap;
#[cfg(test)]
mod tests;

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue};
use vmr_block::{BlockError, DiskImage, OpenOptions, SECTOR_SIZE};

pub use config::{DiskConfig, SERIAL_MAX_LEN};
pub use persist::BlockHost;
pub use swap::DiskSwap;

use crate::device::{ActivateContext, ActivateError, SavedDevice, VirtioDevice};
use crate::metrics::BlockMetrics;
use crate::queue::Drained;
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterHandle};
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features as common, GuestMemory, Interrupt};
use request::{Executor, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};

/// virtio-blk feature bits (virtio 1.2, 5.2.3).
pub mod features {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Queue size offered (one queue).
pub const QUEUE_SIZE: u16 = 256;
pub(crate) const SERIAL_LEN: usize = SERIAL_MAX_LEN;
/// Size of the config space we expose (through write_zeroes_may_unmap).
const CONFIG_LEN: usize = 60;

#[derive(Debug, Error)]
pub enum BlockDeviceError {
    #[error(transparent)]
    Image(#[from] BlockError),
    #[error("disk rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// Serializable state of a block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub path: String,
    pub read_only: bool,
    pub serial: String,
    pub capacity_sectors: u64,
    pub acked_features: u64,
}

/// Serves the queue on the worker thread.
/// How long the worker polls the ring for more requests after serving some (see
/// [`crate::queue::drain_lingering`]): batches a guest's queue-depth-N submissions into fewer
/// kicks and interrupts.
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

struct BlockHandler {
    mem: GuestMemory,
    interrupt: std::sync::Arc<Interrupt>,
    queue: Queue,
    executor: Executor,
    limiter: Arc<RateLimiter>,
    broken: bool,
    swap: std::sync::Arc<DiskSwap>,
}

impl QueueHandler for BlockHandler {
    fn process_queue(&mut self, _index: usize) -> bool {
        if self.broken {
            return false;
        }
        if let Some((disk, path)) = self.swap.take() {
            tracing::info!("virtio-blk: now serving {path}");
            self.executor.disk = disk;
        }
        let (mem, executor, limiter) = (&self.mem, &mut self.executor, &self.limiter);
        let serve = |chain: DescriptorChain<&GuestMemory>| {
            // A throttled request stays in the ring; the limiter's timer brings the worker back.
            if !limiter.consume(Executor::data_len(mem, &chain)) {
                executor.metrics().counters.rate_limiter_throttled_events.inc();
                return None;
            }
            Some(executor.execute(mem, chain))
        };
        match crate::queue::drain_lingering(&mut self.queue, mem, &self.interrupt, LINGER, serve) {
            Drained::Idle | Drained::Throttled => false,
            Drained::More => true,
            Drained::Broken => {
                self.broken = true;
                false
            }
        }
    }

    /// The rate limiter's timer: throttled requests may go ahead.
    fn process_fd(&mut self, _index: usize) -> bool {
        self.limiter.timer_fired();
        self.process_queue(0)
    }

    fn queue_states(&self, out: &mut Vec<virtio_queue::QueueState>) {
        out.clear();
        out.push(self.queue.state());
    }
}

/// A virtio-blk device.
pub struct Block {
    /// The image while the device is not active (the worker owns it meanwhile).
    disk: Option<Box<dyn DiskImage>>,
    worker: Option<Worker<BlockHandler>>,
    path: String,
    read_only: bool,
    capacity_sectors: u64,
    serial: [u8; SERIAL_LEN],
    acked_features: u64,
    index: usize,
    queue_sizes: [u16; 1],
    swap: std::sync::Arc<DiskSwap>,
    limiter: Arc<RateLimiter>,
    metrics: Arc<BlockMetrics>,
}

/// A stable default serial: "vmr" and 16 hex digits of the FNV-1a hash of the image path.
pub fn default_serial(path: &Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("vmr{hash:016x}")
}

impl Block {
    /// Opens the image named by `config` (taking its lock). `index` only names the worker thread
    /// (`vmr-virtio-blk<index>`).
    pub fn new(config: &DiskConfig, index: usize) -> Result<Self, BlockDeviceError> {
        let options =
            OpenOptions { read_only: config.read_only, format: config.format, direct: config.direct };
        let disk = vmr_block::open(&config.path, &options)?;
        let serial = config.serial.clone().unwrap_or_else(|| default_serial(&config.path));
        let limiter = Arc::new(RateLimiter::new(&config.rate_limiter)?);
        Ok(Self::with_disk(disk, config.path.display().to_string(), &serial, index, limiter))
    }

    /// Wraps an already opened image.
    pub fn with_disk(
        disk: Box<dyn DiskImage>,
        path: String,
        serial: &str,
        index: usize,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        let mut id = [0u8; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let capacity_sectors = disk.len() / SECTOR_SIZE;
        Block {
            swap: DiskSwap::new(capacity_sectors),
            read_only: disk.is_read_only(),
            capacity_sectors,
            disk: Some(disk),
            worker: None,
            path,
            serial: id,
            acked_features: 0,
            index,
            queue_sizes: [QUEUE_SIZE],
            limiter,
            metrics: Arc::default(),
        }
    }

    /// The handle the VMM swaps the image through.
    pub fn swap_handle(&self) -> std::sync::Arc<DiskSwap> {
        self.swap.clone()
    }

    /// Takes a swapped-in image while no worker runs.
    fn take_swapped(&mut self) {
        if let Some((disk, path)) = self.swap.take() {
            self.disk = Some(disk);
            self.path = path;
        }
        self.capacity_sectors = self.swap.capacity_sectors();
    }

    /// This disk's counters (they live as long as any holder, across resets).
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// What the VMM keeps to change this disk's limits while the guest runs.
    pub fn rate_limiter_handle(&self) -> RateLimiterHandle {
        RateLimiterHandle::new(self.limiter.clone())
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.swap.capacity_sectors().to_le_bytes());
        // seg_max: a chain holds the header and the status besides the data segments.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard alignment: 4 KiB
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        let base = common::VERSION_1
            | common::RING_EVENT_IDX
            | common::RING_INDIRECT_DESC
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH;
        if self.read_only {
            base | features::RO
        } else {
            base | features::DISCARD | features::WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable (CONFIG_WCE is not offered).
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 || ctx.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: ctx.queues.len() });
        }
        self.take_swapped();
        let disk = self.disk.take().ok_or(ActivateError::AlreadyActive)?;
        self.swap.set_interrupt(Some(ctx.interrupt.clone()));
        let handler = BlockHandler {
            swap: self.swap.clone(),
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue: ctx.queues.remove(0),
            executor: Executor::new(disk, self.serial, ctx.acked_features, self.metrics.clone()),
            limiter: self.limiter.clone(),
            broken: false,
        };
        self.acked_features = ctx.acked_features;
        let fds = [(self.limiter.as_raw_fd(), vmm_sys_util::epoll::EventSet::IN)];
        let name = format!("vmr-virtio-blk{}", self.index);
        match Worker::spawn_gated(name, ctx.queue_evts, &fds, handler, ctx.gate) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => Err(ActivateError::Worker(e)),
        }
    }

    fn reset(&mut self) {
        self.swap.set_interrupt(None);
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.disk = Some(handler.executor.disk),
                None => tracing::error!("virtio-blk worker panicked; the disk is gone until restart"),
            }
        }
        self.take_swapped();
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
