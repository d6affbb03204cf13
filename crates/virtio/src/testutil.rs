//! A test driver: drives an [`MmioTransport`] through its registers as the Linux virtio-mmio
//! driver does, with rings laid out by virtio-queue's `MockSplitQueue` in real guest memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;
use vmr_devices::BusDevice;
use vmr_hypervisor::vm_memory::{Address, Bytes, GuestAddress};

use crate::{features, status, GuestMemory, Interrupt, IrqTrigger, MmioTransport, VirtioDevice};

pub(crate) const MEM_SIZE: usize = 32 << 20;
/// Where test data buffers live (the rings are at 0).
pub(crate) const DATA: u64 = 0x10_0000;
/// Distance of a queue's used ring from its descriptor table.
pub(crate) const USED_OFFSET: u64 = 0x8000;
pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;

pub(crate) fn memory() -> &'static GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    Box::leak(Box::new(mem))
}

pub(crate) struct Harness {
    pub mem: &'static GuestMemory,
    pub transport: MmioTransport,
    pub queues: Vec<MockSplitQueue<'static, GuestMemory>>,
    pub irqfd: EventFd,
    pub qsize: u16,
    avail_idx: Vec<u16>,
    /// The queue the ring helpers act on.
    sel: usize,
}

impl Harness {
    pub(crate) fn new(device: Box<dyn VirtioDevice>, qsize: u16) -> Self {
        let mem = memory();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(IrqTrigger::EventFd(irqfd.try_clone().unwrap())));
        let n = device.queue_max_sizes().len();
        let transport = MmioTransport::new(mem.clone(), device, interrupt).unwrap();
        // Rings of queue i at i * 64 KiB (data buffers start at 1 MiB).
        let queues =
            (0..n).map(|i| MockSplitQueue::create(mem, GuestAddress(i as u64 * 0x1_0000), qsize)).collect();
        Harness { mem, transport, queues, irqfd, qsize, avail_idx: vec![0; n], sel: 0 }
    }

    /// The used ring of the selected queue. (MockSplitQueue places its used ring over the end of
    /// its available ring, so the harness puts it at a fixed distance of its own.)
    pub(crate) fn used_addr(&self) -> GuestAddress {
        self.queue().desc_table_addr().unchecked_add(USED_OFFSET)
    }

    /// The queue the ring helpers act on.
    pub(crate) fn queue(&self) -> &MockSplitQueue<'static, GuestMemory> {
        &self.queues[self.sel]
    }

    /// Makes the ring helpers act on queue `i`.
    pub(crate) fn select(&mut self, i: usize) {
        self.sel = i;
    }

    pub(crate) fn rd(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub(crate) fn wr(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    pub(crate) fn device_features(&mut self) -> u64 {
        self.wr(0x14, 0);
        let lo = self.rd(0x10);
        self.wr(0x14, 1);
        let hi = self.rd(0x10);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Negotiates `features` and returns the status read back after FEATURES_OK.
    pub(crate) fn negotiate(&mut self, features: u64) -> u32 {
        self.wr(0x70, status::ACKNOWLEDGE);
        self.wr(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(0x24, 0);
        self.wr(0x20, features as u32);
        self.wr(0x24, 1);
        self.wr(0x20, (features >> 32) as u32);
        self.wr(0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        self.rd(0x70)
    }

    /// Sets up every queue of the device.
    pub(crate) fn setup_queue(&mut self) {
        self.setup_queue_with_size(u32::from(self.qsize));
    }

    /// Sets up every queue of the device, writing `size` to QueueNum (a hostile driver may
    /// write any value).
    pub(crate) fn setup_queue_with_size(&mut self, size: u32) {
        for i in 0..self.queues.len() {
            let q = &self.queues[i];
            let (d, a, u) = (q.desc_table_addr().0, q.avail_addr().0, q.desc_table_addr().0 + USED_OFFSET);
            self.wr(0x30, i as u32);
            self.wr(0x38, size);
            for (reg, addr) in [(0x80, d), (0x90, a), (0xa0, u)] {
                self.wr(reg, addr as u32);
                self.wr(reg + 4, (addr >> 32) as u32);
            }
            self.wr(0x44, 1);
        }
    }

    /// The whole driver init sequence; returns the final status.
    pub(crate) fn init(&mut self, features: u64) -> u32 {
        let st = self.negotiate(features);
        assert_ne!(st & status::FEATURES_OK, 0, "features {features:#x} refused");
        self.setup_queue();
        self.wr(0x70, st | status::DRIVER_OK);
        self.rd(0x70)
    }

    pub(crate) fn init_default(&mut self) -> u32 {
        self.init(features::VERSION_1)
    }

    pub(crate) fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.queue().desc_table().store(index, d).unwrap();
    }

    /// Writes a chain of (addr, len, flags) at descriptor indexes `first..` and makes it available.
    pub(crate) fn add_chain(&mut self, first: u16, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = first + i as u16;
            let next_flag = if i + 1 < descs.len() { F_NEXT } else { 0 };
            self.set_desc(idx, addr, len, flags | next_flag, idx + 1);
        }
        self.push_avail(first);
    }

    pub(crate) fn push_avail(&mut self, head: u16) {
        let idx = self.avail_idx[self.sel];
        self.queue().avail().ring().ref_at((idx % self.qsize) as usize).unwrap().store(u16::to_le(head));
        self.avail_idx[self.sel] = idx.wrapping_add(1);
        self.queue().avail().idx().store(u16::to_le(idx.wrapping_add(1)));
    }

    /// Sets the available index directly (hostile tests).
    pub(crate) fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx[self.sel] = idx;
        self.queue().avail().idx().store(u16::to_le(idx));
    }

    /// QueueNotify through the bus (the no-ioeventfd fallback).
    pub(crate) fn kick(&mut self) {
        self.wr(0x50, self.sel as u32);
    }

    pub(crate) fn used_idx(&self) -> u16 {
        self.mem.read_obj::<u16>(self.used_addr().unchecked_add(2)).unwrap()
    }

    /// (id, len) of used ring entry `i`.
    pub(crate) fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_addr().unchecked_add(4 + 8 * u64::from(i % self.qsize));
        (self.mem.read_obj(at).unwrap(), self.mem.read_obj(at.unchecked_add(4)).unwrap())
    }

    /// Waits until the used index reaches `n`; false on timeout.
    pub(crate) fn wait_used(&self, n: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.used_idx() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Waits until the device reports DEVICE_NEEDS_RESET; false on timeout.
    pub(crate) fn wait_needs_reset(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.rd(0x70) & status::DEVICE_NEEDS_RESET != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub(crate) fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub(crate) fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}
