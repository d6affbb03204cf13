//! The machine's virtio devices: opening their backends (images, taps), placing each behind a
//! virtio-mmio transport on the MMIO bus, and wiring its notifications (ioeventfd) and its
//! interrupt (irqfd).
//!
//! Devices are announced to the guest in the DSDT (`LNRO0005` entries from
//! [`vmr_arch::MachineConfig::virtio_mmio`]), not with `virtio_mmio.device=` on the command line:
//! Debian's kernels are built without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, and describing a
//! device both ways would probe it twice.
//!
//! Lifetime: the transports live on the MMIO bus, which only the vCPUs' `VmOps` hold. When the
//! machine ends, the vCPU threads end, the bus is dropped, and each transport's drop stops and
//! joins its device worker and closes its image (releasing the image lock) and tap. A rebuilt
//! machine (`--reboot restart`) therefore reopens everything from scratch.

pub mod options;

pub use vmr_virtio::block::DiskConfig;
pub use vmr_virtio::net::NetConfig;
/// Disk images: `vmr image create` is [`vmr_block::create`].
pub use vmr_virtio::vmr_block;
pub use vmr_virtio::vsock::VsockConfig;

use std::io;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::metrics::DeviceMetrics;
use vmm_sys_util::eventfd::EventFd;
use vmr_arch::{layout, MmioDeviceInfo};
use vmr_devices::{Bus, BusError};
use vmr_hypervisor::Persist;
use vmr_hypervisor::{GuestMemory, HypervisorError, IoEventAddress, Vm};
use vmr_virtio::block::{Block, BlockDeviceError, BlockHost, DiskSwap};
use vmr_virtio::net::{Net, NetDeviceError, NetHost};
use vmr_virtio::pause::WorkerGate;
use vmr_virtio::rate_limiter::RateLimiterHandle;
use vmr_virtio::rng::Rng;
use vmr_virtio::vsock::{Vsock, VsockError, VsockHost};
use vmr_virtio::{
    Interrupt, IrqTrigger, MmioHost, MmioState, MmioTransport, RestoreError, VirtioDevice, MMIO_WINDOW_SIZE,
    QUEUE_NOTIFY_OFFSET,
};

/// Why the virtio devices could not be set up (each one line, before the guest starts).
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error(transparent)]
    Disk(#[from] BlockDeviceError),
    #[error(transparent)]
    Net(#[from] NetDeviceError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("{count} virtio devices requested; the machine has room for {max}")]
    TooMany { count: usize, max: usize },
    #[error("cannot create the virtio-mmio transport of {name}: {source}")]
    Transport {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot register the {what} of {name}: {source}")]
    Register {
        what: &'static str,
        name: String,
        #[source]
        source: HypervisorError,
    },
    #[error("cannot restore {name}: {source}")]
    Restore {
        name: String,
        #[source]
        source: vmr_virtio::RestoreError,
    },
    #[error("the snapshot has {saved} virtio devices, the configuration {configured}")]
    SavedCount { saved: usize, configured: usize },
    #[error("cannot place {name} on the MMIO bus: {source}")]
    Bus {
        name: String,
        #[source]
        source: BusError,
    },
}

/// The virtio devices a VM is given, as the user asked for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtioConfig {
    /// `--disk`, in order: the first is the guest's `/dev/vda`.
    pub disks: Vec<DiskConfig>,
    /// `--net`, in order.
    pub nets: Vec<NetConfig>,
    /// `--vsock` (one per VM: the guest has one CID).
    pub vsock: Option<VsockConfig>,
    /// `--rng`.
    pub rng: bool,
}

impl VirtioConfig {
    /// Number of devices (and virtio-mmio slots) this config needs.
    pub fn count(&self) -> usize {
        self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some()) + usize::from(self.rng)
    }
}

/// A device with its backend open, not yet on a bus.
pub struct OpenDevice {
    /// What error messages and logs call it (`disk0 (root.img)`, `net0 (tap0)`, `rng0`).
    pub name: String,
    pub device: Box<dyn VirtioDevice>,
    /// For a disk: the handle its backing image is swapped through.
    pub disk_swap: Option<Arc<DiskSwap>>,
    /// For a disk or a network card: the handles its rate limiters are changed through while
    /// the guest runs (taken before the device is boxed and handed to its transport).
    pub limiters: Option<DeviceLimiters>,
}

/// The live rate limiters of one device (`PATCH /drives/{id}`, `PATCH /network-interfaces/{id}`).
#[derive(Clone, Debug)]
pub enum DeviceLimiters {
    Disk(RateLimiterHandle),
    Net { rx: RateLimiterHandle, tx: RateLimiterHandle },
}

/// Opens every backend: images (taking their locks), taps, the vsock socket. Disks come first,
/// then network cards, vsock and rng: the order of their MMIO slots. Each device's counters
/// are registered with the process's metrics as `disk<i>`, `net<i>`, `vsock0`.
pub fn open_devices(config: &VirtioConfig) -> Result<Vec<OpenDevice>, DeviceError> {
    open_or_restore(config, None)
}

/// Like [`open_devices`], each device restored from its saved state (in the same slot order)
/// with its `Persist` impl: the configuration gives the host side (image path, tap, socket).
pub fn restore_devices(config: &VirtioConfig, saved: &[MmioState]) -> Result<Vec<OpenDevice>, DeviceError> {
    if saved.len() != config.count() {
        return Err(DeviceError::SavedCount { saved: saved.len(), configured: config.count() });
    }
    open_or_restore(config, Some(saved))
}

/// Device `k`'s constructor: `new` without a snapshot, `Persist::restore` with one.
fn make<D: Persist<Error = RestoreError>>(
    saved: Option<&[MmioState]>,
    k: usize,
    kind: &str,
    name: impl Fn() -> String,
    host: D::Host,
    new: impl FnOnce(D::Host) -> Result<D, DeviceError>,
) -> Result<D, DeviceError> {
    let Some(s) = saved.and_then(|s| s.get(k)) else { return new(host) };
    let restore_err = |source| DeviceError::Restore { name: name(), source };
    let state = s.device.decode::<D::State>(kind).map_err(restore_err)?;
    D::restore(host, &state).map_err(restore_err)
}

fn open_or_restore(
    config: &VirtioConfig,
    saved: Option<&[MmioState]>,
) -> Result<Vec<OpenDevice>, DeviceError> {
    let max = layout::VIRTIO_MMIO_MAX_DEVICES;
    if config.count() > max {
        return Err(DeviceError::TooMany { count: config.count(), max });
    }
    let mut devices = Vec::with_capacity(config.count());
    let registry = crate::metrics::metrics();
    for (i, disk) in config.disks.iter().enumerate() {
        let host = BlockHost { config: disk.clone(), index: i };
        let name = || format!("disk{i} ({})", disk.path.display());
        let device: Block = make(saved, devices.len(), "virtio-blk", name, host, |h: BlockHost| {
            Ok(Block::new(&h.config, h.index)?)
        })?;
        registry.register_device(&format!("disk{i}"), DeviceMetrics::Block(device.metrics()));
        devices.push(OpenDevice {
            name: format!("disk{i} ({})", disk.path.display()),
            disk_swap: Some(device.swap_handle()),
            limiters: Some(DeviceLimiters::Disk(device.rate_limiter_handle())),
            device: Box::new(device),
        });
    }
    for (i, net) in config.nets.iter().enumerate() {
        let host = NetHost { config: net.clone(), index: i };
        let name = || format!("net{i} ({})", net.tap);
        let device: Net = make(saved, devices.len(), "virtio-net", name, host, |h: NetHost| {
            Ok(Net::new(&h.config, h.index)?)
        })?;
        registry.register_device(&format!("net{i}"), DeviceMetrics::Net(device.metrics()));
        devices.push(OpenDevice {
            name: format!("net{i} ({})", net.tap),
            limiters: Some(DeviceLimiters::Net {
                rx: device.rx_rate_limiter_handle(),
                tx: device.tx_rate_limiter_handle(),
            }),
            device: Box::new(device),
            disk_swap: None,
        });
    }
    if let Some(vsock) = &config.vsock {
        let host = VsockHost { config: vsock.clone(), index: 0 };
        let name = || format!("vsock0 (cid {})", vsock.cid);
        let device: Vsock = make(saved, devices.len(), "virtio-vsock", name, host, |h: VsockHost| {
            Ok(Vsock::new(&h.config, h.index)?)
        })?;
        registry.register_device("vsock0", DeviceMetrics::Vsock(device.metrics()));
        devices.push(OpenDevice {
            name: format!("vsock0 (cid {})", vsock.cid),
            device: Box::new(device),
            disk_swap: None,
            limiters: None,
        });
    }
    if config.rng {
        devices.push(OpenDevice {
            name: "rng0".into(),
            device: Box::new(make(
                saved,
                devices.len(),
                "virtio-rng",
                || "rng0".into(),
                0,
                |i: usize| Ok(Rng::new(i)),
            )?),
            disk_swap: None,
            limiters: None,
        });
    }
    Ok(devices)
}

/// Puts each device behind a transport in the next virtio-mmio slot: bus window, one ioeventfd
/// per queue on QueueNotify (datamatch = queue index), one irqfd on the slot's GSI. Returns the
/// slots to describe in the DSDT.
/// The transports, in slot order (a snapshot reads their state).
pub type Transports = Vec<Arc<Mutex<MmioTransport>>>;

pub fn attach_devices(
    vm: &dyn Vm,
    mem: &GuestMemory,
    mmio: &Bus,
    devices: Vec<OpenDevice>,
    gate: &Arc<WorkerGate>,
) -> Result<Transports, DeviceError> {
    attach_with_states(vm, mem, mmio, devices, gate, None)
}

/// Like [`attach_devices`], each transport restored from `saved` (same order as `devices`):
/// register file, queues, and activated devices serving again from their saved positions.
pub fn attach_restored(
    vm: &dyn Vm,
    mem: &GuestMemory,
    mmio: &Bus,
    devices: Vec<OpenDevice>,
    gate: &Arc<WorkerGate>,
    saved: &[MmioState],
) -> Result<Transports, DeviceError> {
    attach_with_states(vm, mem, mmio, devices, gate, Some(saved))
}

fn attach_with_states(
    vm: &dyn Vm,
    mem: &GuestMemory,
    mmio: &Bus,
    devices: Vec<OpenDevice>,
    gate: &Arc<WorkerGate>,
    saved: Option<&[MmioState]>,
) -> Result<Transports, DeviceError> {
    let slots = vmr_arch::virtio_mmio_slots(devices.len())
        .map_err(|_| DeviceError::TooMany { count: devices.len(), max: layout::VIRTIO_MMIO_MAX_DEVICES })?;
    let mut transports = Vec::with_capacity(slots.len());
    for (k, (dev, slot)) in devices.into_iter().zip(&slots).enumerate() {
        let place = Placement { vm, mem, mmio, slot, gate };
        transports.push(attach_one(&place, dev, saved.and_then(|s| s.get(k)))?);
    }
    Ok(transports)
}

struct Placement<'a> {
    vm: &'a dyn Vm,
    mem: &'a GuestMemory,
    mmio: &'a Bus,
    slot: &'a MmioDeviceInfo,
    gate: &'a Arc<WorkerGate>,
}

fn attach_one(
    place: &Placement<'_>,
    dev: OpenDevice,
    saved: Option<&MmioState>,
) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
    let Placement { vm, mem, mmio, slot, gate } = *place;
    let OpenDevice { name, device, .. } = dev;
    let transport_err = |source| DeviceError::Transport { name: name.clone(), source };
    let register_err =
        |what: &'static str, source| DeviceError::Register { what, name: name.clone(), source };
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(transport_err)?;
    vm.register_irqfd(&irqfd, slot.irq).map_err(|e| register_err("interrupt (irqfd)", e))?;
    let interrupt = Arc::new(Interrupt::new(IrqTrigger::EventFd(irqfd)));
    let transport = match saved {
        None => {
            let mut t = MmioTransport::new(mem.clone(), device, interrupt).map_err(transport_err)?;
            t.set_pause_gate(gate.clone());
            t
        }
        Some(state) => {
            let host = MmioHost { mem: mem.clone(), device, interrupt, gate: gate.clone() };
            MmioTransport::restore(host, state)
                .map_err(|source| DeviceError::Restore { name: name.clone(), source })?
        }
    };
    let notify = IoEventAddress::Mmio(slot.addr.0 + QUEUE_NOTIFY_OFFSET);
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(evt, notify, Some(queue as u64))
            .map_err(|e| register_err("queue notification (ioeventfd)", e))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), slot.addr.0, MMIO_WINDOW_SIZE)
        .map_err(|source| DeviceError::Bus { name: name.clone(), source })?;
    tracing::info!("virtio-mmio: {name} at {:#x}, irq {}", slot.addr.0, slot.irq);
    Ok(transport)
}

#[cfg(test)]
mod tests;
