//! virtio-rng (entropy device): fills the guest's writable buffers from the host's getrandom(2).

use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, Writer};

use crate::device::{ActivateContext, ActivateError, SavedDevice, VirtioDevice};
use crate::queue::Drained;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features, GuestMemory, Interrupt};

/// Queue size offered (one queue).
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given for one request (the driver asks again for more).
pub const MAX_REQUEST: usize = 64 << 10;

/// Serializable state of an rng device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub acked_features: u64,
}

fn getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most rest.len() bytes into the live buffer `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

pub(crate) struct RngHandler {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    buf: Vec<u8>,
    broken: bool,
}

impl RngHandler {
    pub(crate) fn fill(mem: &GuestMemory, buf: &mut [u8], chain: DescriptorChain<&GuestMemory>) -> u32 {
        let Ok(mut writer) = Writer::<()>::new(mem, chain) else { return 0 };
        let n = writer.available_bytes().min(buf.len());
        if !getrandom(&mut buf[..n]) || writer.write_all(&buf[..n]).is_err() {
            return 0;
        }
        n as u32
    }
}

impl QueueHandler for RngHandler {
    fn queue_states(&self, out: &mut Vec<virtio_queue::QueueState>) {
        out.clear();
        out.push(self.queue.state());
    }

    fn process_queue(&mut self, _index: usize) -> bool {
        if self.broken {
            return false;
        }
        let (mem, buf) = (&self.mem, &mut self.buf);
        match crate::queue::drain(&mut self.queue, mem, &self.interrupt, |chain| Self::fill(mem, buf, chain))
        {
            Drained::Idle | Drained::Throttled => false,
            Drained::More => true,
            Drained::Broken => {
                self.broken = true;
                false
            }
        }
    }
}

/// A virtio-rng device.
pub struct Rng {
    worker: Option<Worker<RngHandler>>,
    acked_features: u64,
    index: usize,
    queue_sizes: [u16; 1],
}

impl Rng {
    /// `index` only names the worker thread (`vmr-virtio-rng<index>`).
    pub fn new(index: usize) -> Self {
        Rng { worker: None, acked_features: 0, index, queue_sizes: [QUEUE_SIZE] }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 1 || ctx.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: ctx.queues.len() });
        }
        let handler = RngHandler {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue: ctx.queues.remove(0),
            buf: vec![0; MAX_REQUEST],
            broken: false,
        };
        self.acked_features = ctx.acked_features;
        let worker = Worker::spawn_gated(
            format!("vmr-virtio-rng{}", self.index),
            ctx.queue_evts,
            &[],
            handler,
            ctx.gate,
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
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

mod persist;
#[cfg(test)]
mod tests;
