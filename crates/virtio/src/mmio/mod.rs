//! virtio-mmio transport, virtio 1.x "modern" register layout (MMIO version 2).
//!
//! Integrator's view:
//! ```text
//! let transport = MmioTransport::new(mem.clone(), Box::new(device), Arc::new(interrupt))?;
//! for (i, evt) in transport.queue_evts().iter().enumerate() {
//!     vm.register_ioevent(evt, IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), Some(i as u64))?;
//! }
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
//! cmdline.push(cmdline_fragment(base, gsi));
//! ```

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmr_devices::BusDevice;

use crate::device::{ActivateContext, SavedDevice, VirtioDevice};
use crate::{features, status, GuestMemory, Interrupt};

/// Size of the register window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify: where the per-queue ioeventfds listen (datamatch = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("vmr\0" little-endian); nothing keys on it.
const VENDOR_ID: u32 = 0x0072_6d76;
const CONFIG_OFFSET: u64 = 0x100;

/// The kernel command line fragment announcing a device: `virtio_mmio.device=4K@0xd0000000:5`.
pub fn cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Queue configuration as the driver wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfigState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// Where the device goes on in the available ring (free-running, as in the ring).
    #[serde(default)]
    pub next_avail: u16,
    /// Where the device writes its next used entry.
    #[serde(default)]
    pub next_used: u16,
}

/// Serializable transport state: the register file, each queue's configuration and, for an
/// activated device, the positions its worker reached, and the device's own state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub queue_select: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub queues: Vec<QueueConfigState>,
    pub device: SavedDevice,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    /// Per queue: the last QueueNum the driver wrote was invalid (virtio-queue keeps the
    /// previous size then), so QueueReady is refused until a valid one is written.
    bad_size: Vec<bool>,
    status: u32,
    driver_features: u64,
    device_features_select: u32,
    driver_features_select: u32,
    queue_select: u32,
    config_generation: u32,
    activated: bool,
    gate: Arc<crate::pause::WorkerGate>,
}

fn new_queues(device: &dyn VirtioDevice) -> io::Result<Vec<Queue>> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string())))
        .collect()
}

impl MmioTransport {
    /// Wraps `device`. Creates one notification EventFd per queue.
    pub fn new(
        mem: GuestMemory,
        device: Box<dyn VirtioDevice>,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Self> {
        let queues = new_queues(device.as_ref())?;
        let queue_evts =
            (0..queues.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<io::Result<_>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            bad_size: vec![false; queues.len()],
            queues,
            status: 0,
            driver_features: 0,
            device_features_select: 0,
            driver_features_select: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
            gate: Default::default(),
        })
    }

    /// Makes the device's worker park at `gate` while the VM is paused.
    pub fn set_pause_gate(&mut self, gate: Arc<crate::pause::WorkerGate>) {
        self.gate = gate;
    }

    /// The EventFds to register as ioeventfds: index `i` on `base + QUEUE_NOTIFY_OFFSET` with
    /// datamatch `i` (a 4-byte write).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt (InterruptStatus and trigger).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The status register as the driver reads it.
    pub fn device_status(&self) -> u32 {
        let broken = if self.interrupt.needs_reset() { status::DEVICE_NEEDS_RESET } else { 0 };
        self.status | broken
    }

    /// The state a snapshot stores; see `persist.rs`.
    pub fn state(&self) -> MmioState {
        MmioState {
            device_type: self.device.device_type(),
            status: self.device_status(),
            driver_features: self.driver_features,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            queue_select: self.queue_select,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            activated: self.activated,
            queues: self.queue_config_states(),
            device: self.device.save_device(),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        let configurable = self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        if !configurable {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// A queue address half may change only while the queue is not ready.
    fn set_queue_addr(&mut self, write: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue_mut() {
            if !q.ready() {
                write(q);
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = self.device.device_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.device_status(),
            // No shared memory regions: length reads as -1 (virtio 1.2, 4.2.2).
            0x0b0 | 0x0b4 => u32::MAX,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_select = v,
            0x020 => self.write_driver_features(v),
            0x024 => self.driver_features_select = v,
            0x030 => self.queue_select = v,
            0x038 => self.write_queue_num(v),
            0x044 => self.write_queue_ready(v),
            QUEUE_NOTIFY_OFFSET => self.notify(v),
            0x064 => self.interrupt.ack(v),
            0x070 => self.write_status(v),
            0x080 => self.set_queue_addr(|q| q.set_desc_table_address(Some(v), None)),
            0x084 => self.set_queue_addr(|q| q.set_desc_table_address(None, Some(v))),
            0x090 => self.set_queue_addr(|q| q.set_avail_ring_address(Some(v), None)),
            0x094 => self.set_queue_addr(|q| q.set_avail_ring_address(None, Some(v))),
            0x0a0 => self.set_queue_addr(|q| q.set_used_ring_address(Some(v), None)),
            0x0a4 => self.set_queue_addr(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!("virtio-mmio: write {v:#x} to unknown register {offset:#x} ignored"),
        }
    }

    /// QueueNum. virtio-queue ignores sizes that are zero, above the maximum or not a power of
    /// two; the transport remembers that one was written so that QueueReady is refused rather
    /// than running the ring at a size the driver did not lay out. Ignored while the queue is
    /// ready, like the ring addresses.
    fn write_queue_num(&mut self, v: u32) {
        let sel = self.queue_select as usize;
        let Some(q) = self.selected_queue_mut() else { return };
        if q.ready() {
            return;
        }
        let valid = u16::try_from(v).is_ok_and(|n| n.is_power_of_two() && n <= q.max_size());
        if valid {
            q.set_size(v as u16);
        } else {
            tracing::debug!("virtio-mmio: invalid queue size {v}: the queue cannot be made ready");
        }
        if let Some(bad) = self.bad_size.get_mut(sel) {
            *bad = !valid;
        }
    }

    /// QueueReady: 1 makes the queue ready unless its size is invalid (it then reads back 0).
    fn write_queue_ready(&mut self, v: u32) {
        let bad = self.bad_size.get(self.queue_select as usize).copied().unwrap_or(true);
        if let Some(q) = self.selected_queue_mut() {
            q.set_ready(v == 1 && !bad);
        }
    }

    /// Software fallback for ioeventfd: a QueueNotify write that reached the bus.
    fn notify(&self, index: u32) {
        if let Some(evt) = self.queue_evts.get(index as usize) {
            let _ = evt.write(1);
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let negotiating = self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        if !negotiating {
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits; anything else (or NEEDS_RESET, a device bit) is ignored.
        if v & self.status != self.status || v & status::DEVICE_NEEDS_RESET != 0 {
            tracing::debug!("virtio-mmio: status {v:#x} after {:#x} ignored", self.status);
            return;
        }
        let added = v & !self.status;
        let mut new = v;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver reads the status back and sees FEATURES_OK missing.
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                return;
            }
            self.status = new;
            self.activate();
            return;
        }
        self.status = new;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.device_features();
        self.status & status::DRIVER != 0
            && self.driver_features & !offered == 0
            && self.driver_features & features::VERSION_1 != 0
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            if !q.ready() || !q.is_valid(&self.mem) {
                tracing::warn!("virtio-mmio: DRIVER_OK with an unready or invalid queue");
                self.interrupt.set_needs_reset();
                return;
            }
            // The transport keeps its copy for the register file; the device gets its own.
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(q) => queues.push(q),
                Err(_) => {
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let queue_evts = match self.queue_evts.iter().map(EventFd::try_clone).collect::<io::Result<Vec<_>>>()
        {
            Ok(evts) => evts,
            Err(e) => {
                tracing::error!("virtio-mmio: cannot clone queue EventFds: {e}");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            queue_evts,
            acked_features: self.driver_features,
            gate: self.gate.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!("virtio-mmio: activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// Device reset (status 0): stops the device and clears the register file.
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.fill(false);
        self.status = 0;
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.interrupt.reset();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        // Registers are 32-bit, naturally aligned; other accesses read zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

mod persist;
#[cfg(test)]
mod tests;

pub use persist::MmioHost;
