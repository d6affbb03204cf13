//! Saving and restoring a transport: register file, queue configuration, queue positions of
//! an activated device. Restoring checks everything against the device and guest memory first
//! (a snapshot file is hostile input): a queue whose rings lie outside guest memory, a size the
//! device does not offer, positions further apart than the ring is long, or features the device
//! never offered are refused with one line, and the device is only activated once all is known
//! to be good.

use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};

use super::{MmioState, MmioTransport, QueueConfigState};
use crate::device::{RestoreError, VirtioDevice};
use crate::{status, GuestMemory, Interrupt};

/// What the host gives a restored transport: guest memory, the device (already restored from
/// its own state), its interrupt and the pause gate of the machine's workers.
pub struct MmioHost {
    pub mem: GuestMemory,
    pub device: Box<dyn VirtioDevice>,
    pub interrupt: Arc<Interrupt>,
    pub gate: Arc<crate::pause::WorkerGate>,
}

const KNOWN_STATUS: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

fn invalid(msg: String) -> RestoreError {
    RestoreError::Invalid(msg)
}

impl MmioTransport {
    /// Each queue's register values and, for an activated device, where its worker is.
    pub(super) fn queue_config_states(&self) -> Vec<QueueConfigState> {
        let live = if self.activated { self.device.queue_states() } else { None };
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let pos = live.as_ref().and_then(|l| l.get(i)).copied().unwrap_or_else(|| q.state());
                QueueConfigState {
                    max_size: q.max_size(),
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail: pos.next_avail,
                    next_used: pos.next_used,
                }
            })
            .collect()
    }

    /// See [`Interrupt::resignal`].
    pub fn resignal_interrupt(&self) {
        self.interrupt.resignal();
    }

    /// Rebuilds a transport from [`MmioTransport::state`]; an activated device starts serving
    /// its queues from the saved positions.
    pub fn restore(host: MmioHost, state: &MmioState) -> Result<Self, RestoreError> {
        let MmioHost { mem, device, interrupt, gate } = host;
        check_registers(device.as_ref(), state)?;
        let event_idx = state.driver_features & crate::features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, q) in state.queues.iter().enumerate() {
            queues.push(restore_queue(i, q, &mem, state.activated, event_idx)?);
        }
        let mut t = MmioTransport::new(mem, device, interrupt)
            .map_err(|e| RestoreError::Backend(format!("virtio-mmio transport: {e}")))?;
        t.set_pause_gate(gate);
        t.queues = queues;
        t.status = state.status & KNOWN_STATUS;
        t.driver_features = state.driver_features;
        t.device_features_select = state.device_features_select;
        t.driver_features_select = state.driver_features_select;
        t.queue_select = state.queue_select;
        t.config_generation = state.config_generation;
        t.interrupt.restore_status(state.interrupt_status);
        if state.activated {
            t.activate();
            if !t.activated {
                return Err(RestoreError::Backend(format!(
                    "the restored {} device could not be activated (see the log)",
                    state.device.kind
                )));
            }
        }
        Ok(t)
    }
}

fn check_registers(device: &dyn VirtioDevice, state: &MmioState) -> Result<(), RestoreError> {
    if state.device_type != device.device_type() {
        return Err(invalid(format!(
            "virtio device type {} in the snapshot, {} in the configuration",
            state.device_type,
            device.device_type()
        )));
    }
    let maxes = device.queue_max_sizes();
    if state.queues.len() != maxes.len() {
        return Err(invalid(format!(
            "{}: {} queues in the snapshot, the device has {}",
            state.device.kind,
            state.queues.len(),
            maxes.len()
        )));
    }
    if let Some((i, q)) = state.queues.iter().enumerate().find(|(i, q)| q.max_size != maxes[*i]) {
        return Err(invalid(format!(
            "{}: queue {i} of maximum size {}, expected {}",
            state.device.kind, q.max_size, maxes[i]
        )));
    }
    if state.driver_features & !device.device_features() != 0 {
        return Err(invalid(format!(
            "{}: driver features {:#x} include some the device does not offer ({:#x})",
            state.device.kind,
            state.driver_features,
            device.device_features()
        )));
    }
    let live = status::FEATURES_OK | status::DRIVER_OK;
    if state.activated && state.status & live != live {
        return Err(invalid(format!("{}: activated with status {:#x}", state.device.kind, state.status)));
    }
    Ok(())
}

/// One queue, checked: size, ring addresses inside guest memory (when ready), and the device's
/// position no further from the used index than the ring is long.
fn restore_queue(
    i: usize,
    q: &QueueConfigState,
    mem: &GuestMemory,
    activated: bool,
    event_idx: bool,
) -> Result<Queue, RestoreError> {
    let size_ok = q.size.is_power_of_two() && q.size <= q.max_size;
    if !size_ok {
        return Err(invalid(format!("queue {i}: size {} (maximum {})", q.size, q.max_size)));
    }
    if q.next_avail.wrapping_sub(q.next_used) > q.size {
        return Err(invalid(format!(
            "queue {i}: next available index {} is {} entries past the next used {} in a ring of {}",
            q.next_avail,
            q.next_avail.wrapping_sub(q.next_used),
            q.next_used,
            q.size
        )));
    }
    let state = QueueState {
        max_size: q.max_size,
        next_avail: q.next_avail,
        next_used: q.next_used,
        event_idx_enabled: event_idx,
        size: q.size,
        ready: q.ready,
        desc_table: q.desc_table,
        avail_ring: q.avail_ring,
        used_ring: q.used_ring,
    };
    let queue = Queue::try_from(state).map_err(|e| invalid(format!("queue {i}: {e}")))?;
    if (q.ready || activated) && !queue.is_valid(mem) {
        return Err(invalid(format!(
            "queue {i}: rings at {:#x}/{:#x}/{:#x} (size {}) are not inside guest memory or misaligned",
            q.desc_table, q.avail_ring, q.used_ring, q.size
        )));
    }
    Ok(queue)
}
