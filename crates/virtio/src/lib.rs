//! virtio devices for vmr: the virtio-mmio transport (virtio 1.x, register layout version 2),
//! virtio-blk over raw and qcow2 images ([`vmr_block`]), virtio-net over a tap, and virtio-rng.
//!
//! # Shape
//!
//! - [`VirtioDevice`] is what a device implements: type, features, config space, `activate`
//!   with guest memory, queues and an [`Interrupt`], `reset`, and a plain serde state.
//! - [`MmioTransport`] wraps one device and implements [`vmr_devices::BusDevice`] for a
//!   [`MMIO_WINDOW_SIZE`] window. It owns one [`EventFd`](vmm_sys_util::eventfd::EventFd) per
//!   queue: the integrator registers each as an ioeventfd on `base + 0x50` with the queue index as
//!   datamatch; a QueueNotify write that still reaches the bus (software CPU, no ioeventfd) signals
//!   the same EventFd, so the device code is identical on both backends.
//! - [`Interrupt`] sets InterruptStatus bits and either writes an irqfd EventFd (KVM) or drives an
//!   [`vmr_devices::IrqLine`] (software CPU).
//!
//! # Integration (what the VMM calls)
//!
//! ```text
//! // 1. Build devices from plain typed configs (vmr-vmm parses the command-line text):
//! let disk = DiskConfig { read_only: true, ..DiskConfig::new("root.img") };
//! let blk = vmr_virtio::block::Block::new(&disk, 0)?;        // opens + locks the image
//! let net = vmr_virtio::net::Net::new(&NetConfig::new("tap0"), 0)?;  // opens the tap
//! let rng = vmr_virtio::rng::Rng::new(0);
//! let vsock = vmr_virtio::vsock::Vsock::new(&VsockConfig { cid: 3, socket: "/run/v.sock".into() }, 0)?;
//! // 2. Per device: interrupt, transport, bus, ioeventfds, cmdline.
//! let (base, gsi) = vmr_arch::layout::virtio_mmio_device(i)?;
//! let irqfd = EventFd::new(EFD_NONBLOCK)?;
//! vm.register_irqfd(&irqfd, gsi)?;                                 // KVM
//! let interrupt = Arc::new(Interrupt::new(IrqTrigger::EventFd(irqfd)));
//! //   (software CPU: Interrupt::new(IrqTrigger::Line(IrqLine::new(vm.irqchip(), gsi))))
//! let t = MmioTransport::new(mem.clone(), Box::new(blk), interrupt)?;
//! for (q, evt) in t.queue_evts().iter().enumerate() {
//!     vm.register_ioevent(evt, IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), Some(q as u64))?;
//! }
//! mmio_bus.insert(Arc::new(Mutex::new(t)), base, MMIO_WINDOW_SIZE)?;
//! cmdline.push(cmdline_fragment(base, gsi));   // "virtio_mmio.device=4K@0xd0000000:5"
//! // 3. Shutdown: drop the bus (the transports): each joins its worker thread.
//! ```
//!
//! `vmr image create` is [`vmr_block::create`] (re-exported here as `vmr_virtio::vmr_block`).
//!
//! # Threading
//!
//! Each activated device runs one worker thread (`vmr-virtio-blk0`, `vmr-virtio-net0`,
//! `vmr-virtio-rng0`, `vmr-virtio-vsock0`; the number is the `index` given at construction) that
//! waits with epoll on its queue EventFds, a stop EventFd and, for net, the tap (for vsock, an
//! epoll fd holding its sockets). The vCPU thread only writes an EventFd (or KVM does,
//! for ioeventfd), so a slow disk never stalls a vCPU, and one device's hang or hostile guest
//! queue cannot delay another device. One thread per device rather than a shared event loop
//! (rust-vmm `event-manager`) because the block device does blocking file I/O (fdatasync can take
//! milliseconds) that would stall every other device on a shared loop, and because the thread
//! count stays small (a few devices per VM). The worker stops when the guest resets the device,
//! and when the device (its transport) is dropped; both join the thread.
//!
//! # Hostile guests
//!
//! Descriptor chains are walked with rust-vmm `virtio-queue`, which bounds chains by the queue
//! size (loops end), checks every address against guest memory and rejects an available index
//! more than a queue size ahead. A malformed request gets an error status; a broken ring marks the
//! device `DEVICE_NEEDS_RESET` and stops its processing. Nothing here panics on guest input.

pub mod block;
mod device;
#[doc(hidden)]
pub mod fuzzing;
mod interrupt;
pub mod metrics;
pub mod mmio;
pub mod net;
pub mod pause;
mod queue;
pub mod rate_limiter;
pub mod rng;
#[cfg(test)]
mod testutil;
pub mod vsock;
mod worker;

pub use device::{ActivateContext, ActivateError, RestoreError, SavedDevice, VirtioDevice};
pub use interrupt::{Interrupt, IrqTrigger};
pub use mmio::{
    cmdline_fragment, MmioHost, MmioState, MmioTransport, QueueConfigState, MMIO_WINDOW_SIZE,
    QUEUE_NOTIFY_OFFSET,
};

/// Disk images (raw, qcow2), re-exported for `vmr image create` and custom disks.
pub use vmr_block;

/// Guest memory as devices see it.
pub use vmr_hypervisor::GuestMemory;

/// Device type ids (virtio 1.2, 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Feature bits shared by all devices (virtio 1.2, 6).
pub mod features {
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Copies the part of `config` at `offset` into `data`; bytes past the end read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
