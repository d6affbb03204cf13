//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the deterministic
//! random-input test below (which runs in every `cargo test`). Not part of the stable API.
//!
//! Each entry point turns arbitrary bytes into guest memory and a queue or register traffic,
//! then runs the device code synchronously (no worker thread) so every run is deterministic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmr_block::{BlockError, DiskImage, ImageFormat};
use vmr_devices::BusDevice;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

use crate::block::request::Executor;
use crate::device::{ActivateContext, ActivateError, SavedDevice, VirtioDevice};
use crate::queue::Drained;
use crate::rng::RngState;
use crate::{features, GuestMemory, Interrupt, IrqTrigger, MmioTransport};

/// Guest memory size of a fuzz run.
const MEM: usize = 64 << 10;

fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
    let n = data.len().min(MEM);
    let _ = mem.write_slice(&data[..n], GuestAddress(0));
    mem
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))))
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([data.get(i).copied().unwrap_or(0), data.get(i + 1).copied().unwrap_or(0)])
}

/// A queue whose configuration comes from the first 8 bytes of `data` (addresses may point
/// anywhere in or just past guest memory). None if virtio-queue rejects it.
fn queue(data: &[u8], mem: &GuestMemory) -> Option<Queue> {
    let size = 1u16 << (data.first().copied().unwrap_or(0) % 9);
    let addr = |i| u64::from(u16_at(data, i)) * 2;
    let state = QueueState {
        max_size: 256,
        size,
        ready: true,
        event_idx_enabled: data.get(1).is_some_and(|b| b & 1 != 0),
        desc_table: addr(2) & !15,
        avail_ring: addr(4) & !1,
        used_ring: addr(6) & !3,
        next_avail: 0,
        next_used: 0,
    };
    let q = Queue::try_from(state).ok()?;
    q.is_valid(mem).then_some(q)
}

/// An in-memory disk for fuzzing (no files).
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
}

impl MemDisk {
    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, BlockError> {
        let out = || BlockError::OutOfRange { offset, len: len as u64, size: self.data.len() as u64 };
        let start = usize::try_from(offset).map_err(|_| out())?;
        let end = start.checked_add(len).filter(|&e| e <= self.data.len()).ok_or_else(out)?;
        Ok(start..end)
    }
}

impl DiskImage for MemDisk {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let r = self.range(offset, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> Result<(), BlockError> {
        let len = usize::try_from(len).map_err(|_| BlockError::ReadOnly)?;
        let r = self.range(offset, len)?;
        self.data[r].fill(0);
        Ok(())
    }
}

/// virtio-blk: arbitrary guest memory and queue, requests executed against a 64 KiB disk.
pub fn blk(data: &[u8]) {
    blk_run(data);
}

/// [`blk`], returning the guest memory afterwards (None if the queue was rejected), so the
/// seed tests can check what the device wrote.
fn blk_run(data: &[u8]) -> Option<GuestMemory> {
    let mem = memory(data);
    let mut q = queue(data, &mem)?;
    let flags = data.get(1).copied().unwrap_or(0);
    let disk = Box::new(MemDisk { data: vec![0; 64 << 10], read_only: flags & 2 != 0 });
    let acked = features::VERSION_1 | crate::block::features::DISCARD | crate::block::features::WRITE_ZEROES;
    let mut executor = Executor::new(disk, *b"fuzz-serial-0123456\0", acked, Arc::default());
    let irq = interrupt();
    for _ in 0..2 {
        let serve = |chain: virtio_queue::DescriptorChain<&GuestMemory>| {
            // What the rate limiter is charged is computed from the same hostile chain.
            let _ = Executor::data_len(&mem, &chain);
            executor.execute(&mem, chain)
        };
        if crate::queue::drain(&mut q, &mem, &irq, serve) == Drained::Broken {
            break;
        }
    }
    Some(mem)
}

/// virtio-rng: arbitrary guest memory and queue.
pub fn rng(data: &[u8]) {
    let mem = memory(data);
    let Some(mut q) = queue(data, &mem) else { return };
    let irq = interrupt();
    let mut buf = vec![0u8; crate::rng::MAX_REQUEST];
    crate::queue::drain(&mut q, &mem, &irq, |chain| crate::rng::RngHandler::fill(&mem, &mut buf, chain));
}

/// virtio-vsock: arbitrary guest memory, transmit queue (config from the first 8 bytes) and
/// receive queue (the next 8), through a live muxer whose listening socket is in the temp dir
/// (guest connects find no `_PORT` listener and are refused).
pub fn vsock(data: &[u8]) {
    use crate::vsock::handler::{receive_chain, transmit_chain};
    let mem = memory(data);
    let Some(mut tx) = queue(data, &mem) else { return };
    let Some(mut rx) = queue(data.get(8..).unwrap_or(&[]), &mem) else { return };
    let Some(mut muxer) = crate::vsock::fuzz_muxer(3) else { return };
    let irq = interrupt();
    let mut buf = Vec::new();
    for _ in 0..2 {
        let (m, b) = (&mut muxer, &mut buf);
        if crate::queue::drain(&mut tx, &mem, &irq, |chain| transmit_chain(&mem, m, b, chain))
            == Drained::Broken
        {
            return;
        }
        for _ in 0..crate::queue::BUDGET {
            let chain = match rx.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(_) => return,
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let Some(len) = receive_chain(&mem, &mut muxer, &mut buf, chain) else {
                rx.go_to_previous_position();
                break;
            };
            if rx.add_used(&mem, head, len).is_err() {
                return;
            }
        }
    }
}

/// A device that serves its queue synchronously inside `activate` (rng semantics), so the
/// transport fuzzer needs no threads.
struct SyncRng {
    sizes: [u16; 1],
}

impl VirtioDevice for SyncRng {
    fn device_type(&self) -> u32 {
        crate::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn device_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut q = ctx.queues.pop().ok_or(ActivateError::QueueCount { expected: 1, got: 0 })?;
        let mut buf = vec![0u8; 4096];
        let mem = &ctx.mem;
        crate::queue::drain(&mut q, mem, &ctx.interrupt, |chain| {
            crate::rng::RngHandler::fill(mem, &mut buf, chain)
        });
        Ok(())
    }
    fn reset(&mut self) {}
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        None
    }
    fn save_device(&self) -> SavedDevice {
        SavedDevice::new("virtio-rng", &RngState::default())
    }
}

/// The driver init sequence up to DRIVER_OK, with the queue size and ring addresses from
/// `cfg`, so that the fuzzer reaches activation and queue processing, not only the registers.
fn guided_init(t: &mut MmioTransport, cfg: &[u8]) {
    let mut w = |offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
    w(0x70, 1);
    w(0x70, 3);
    w(0x24, 1);
    w(0x20, 1); // VERSION_1
    w(0x24, 0);
    w(0x20, u32::from(cfg.first().copied().unwrap_or(0) & 1) << 29); // maybe EVENT_IDX
    w(0x70, 0xb);
    w(0x30, 0);
    w(0x38, 1 << (cfg.get(1).copied().unwrap_or(0) % 9));
    for (i, reg) in [0x80u64, 0x90, 0xa0].into_iter().enumerate() {
        w(reg, u32::from(u16_at(cfg, 2 + 2 * i)) * 2);
    }
    w(0x44, 1);
    w(0x70, 0xf);
}

/// virtio-mmio: register reads and writes decoded from `data` (6 bytes each: offset and kind,
/// value), with the same bytes as guest memory. If the first byte is odd, the driver init
/// sequence runs first with ring placement taken from the next bytes.
pub fn mmio(data: &[u8]) {
    mmio_run(data);
}

/// [`mmio`], returning the transport afterwards (for the seed tests).
fn mmio_run(data: &[u8]) -> Option<MmioTransport> {
    let mem = memory(data);
    let mut t = MmioTransport::new(mem, Box::new(SyncRng { sizes: [256] }), interrupt()).ok()?;
    if data.first().is_some_and(|b| b & 1 != 0) {
        guided_init(&mut t, data.get(1..9).unwrap_or(&[]));
    }
    for op in data.get(9..).unwrap_or(&[]).chunks_exact(6) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]])) % 0x1100;
        let value = [op[2], op[3], op[4], op[5]];
        let width = [1usize, 2, 4, 4, 8][usize::from(op[1] >> 5) % 5];
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&value);
        if op[0] & 1 == 0 {
            t.write(offset & !3, &value);
        } else if op[1] & 0x10 != 0 {
            t.write(offset, &buf[..width]);
        } else {
            t.read(offset, &mut buf[..width]);
        }
    }
    Some(t)
}

pub mod seeds;

#[cfg(test)]
mod tests {
    /// Deterministic random-input runs of every fuzz entry point (the fallback when cargo-fuzz
    /// is not available, and a regression guard in every `cargo test`).
    fn run(target: fn(&[u8]), iterations: usize, seed: u64) {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..iterations {
            let len = (next() % 4096) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards plausible rings: small sizes and addresses in the first pages.
            if data.len() >= 8 {
                data[0] %= 5;
                for i in [2usize, 4, 6] {
                    data[i + 1] &= 0x07;
                }
            }
            target(&data);
        }
    }

    #[test]
    fn blk_random_inputs() {
        run(super::blk, 3000, 0x1234_5678_9abc_def1);
    }

    #[test]
    fn rng_random_inputs() {
        run(super::rng, 3000, 0x0fed_cba9_8765_4321);
    }

    #[test]
    fn vsock_random_inputs() {
        run(super::vsock, 2000, 0x7777_1111_2222_9999);
    }

    #[test]
    fn mmio_random_inputs() {
        run(super::mmio, 1000, 0x5555_aaaa_3333_cccc);
    }
}
