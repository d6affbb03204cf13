use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::{IrqChip, Vcpu, VmOps};

use super::*;

/// Records what the devices register; everything else is unused by the wiring.
#[derive(Default)]
struct RecordingVm {
    ioevents: Mutex<Vec<(IoEventAddress, Option<u64>, EventFd)>>,
    irqfds: Mutex<Vec<(u32, EventFd)>>,
}

struct NoChip;
impl IrqChip for NoChip {
    fn set_irq_line(&self, _gsi: u32, _level: bool) -> vmr_hypervisor::Result<()> {
        Ok(())
    }
}

impl Vm for RecordingVm {
    fn set_memory(&self, _memory: &GuestMemory) -> vmr_hypervisor::Result<()> {
        Ok(())
    }
    fn create_vcpu(&self, _id: u32, _ops: Arc<dyn VmOps>) -> vmr_hypervisor::Result<Box<dyn Vcpu>> {
        Err(HypervisorError::Invalid("no vCPUs in this test".into()))
    }
    fn irqchip(&self) -> Arc<dyn IrqChip> {
        Arc::new(NoChip)
    }
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> vmr_hypervisor::Result<()> {
        self.ioevents.lock().unwrap().push((addr, datamatch, fd.try_clone().unwrap()));
        Ok(())
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> vmr_hypervisor::Result<()> {
        self.irqfds.lock().unwrap().push((gsi, fd.try_clone().unwrap()));
        Ok(())
    }
}

fn memory() -> GuestMemory {
    vmr_arch::create_guest_memory(32 << 20).unwrap()
}

fn raw_disk(dir: &tempfile::TempDir, name: &str) -> DiskConfig {
    let path = dir.path().join(name);
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    DiskConfig::new(path)
}

fn read32(bus: &Bus, addr: u64) -> u32 {
    let mut data = [0u8; 4];
    bus.read(addr, &mut data);
    u32::from_le_bytes(data)
}

fn write32(bus: &Bus, addr: u64, value: u32) {
    bus.write(addr, &value.to_le_bytes());
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

/// Waits up to 5 s for `threads_named(prefix)` to become `want` (a new thread names itself
/// once it runs).
fn wait_threads(prefix: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = threads_named(prefix);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn devices_get_slots_in_order_with_ioeventfds_and_irqfds() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = VsockConfig { cid: 3, socket: dir.path().join("v.sock") };
    let config = VirtioConfig {
        disks: vec![raw_disk(&dir, "a.img"), raw_disk(&dir, "b.img")],
        nets: vec![],
        vsock: Some(vsock),
        rng: true,
    };
    let (vm, mem, bus) = (RecordingVm::default(), memory(), Bus::new());
    let devices = open_devices(&config).unwrap();
    assert_eq!(devices.len(), 4);
    assert!(devices[0].name.starts_with("disk0 (") && devices[0].name.ends_with("a.img)"));
    let transports = attach_devices(&vm, &mem, &bus, devices, &Default::default()).unwrap();
    assert_eq!(transports.len(), 4);
    let slots = vmr_arch::virtio_mmio_slots(4).unwrap();

    let irqs: Vec<u32> = vm.irqfds.lock().unwrap().iter().map(|(gsi, _)| *gsi).collect();
    assert_eq!(irqs, slots.iter().map(|s| s.irq).collect::<Vec<_>>());
    let ioevents = vm.ioevents.lock().unwrap();
    // QueueNotify of each slot, datamatch = queue index: blk 1 queue, blk 1, vsock 3, rng 1.
    let notify: Vec<_> = ioevents.iter().map(|(a, d, _)| (*a, *d)).collect();
    let at = |slot: usize, q: u64| (IoEventAddress::Mmio(slots[slot].addr.0 + 0x50), Some(q));
    assert_eq!(notify, [at(0, 0), at(1, 0), at(2, 0), at(2, 1), at(2, 2), at(3, 0)]);

    // Each window answers with the virtio magic and its device type (blk 2, vsock 19, rng 4).
    let types: Vec<u32> = slots.iter().map(|s| read32(&bus, s.addr.0 + 8)).collect();
    assert_eq!(types, [2, 2, 19, 4]);
    assert!(slots.iter().all(|s| read32(&bus, s.addr.0) == 0x7472_6976));
}

#[test]
fn an_attached_disk_holds_its_lock_until_the_bus_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = VirtioConfig { disks: vec![raw_disk(&dir, "root.img")], ..Default::default() };
    let (vm, mem, bus) = (RecordingVm::default(), memory(), Bus::new());
    attach_devices(&vm, &mem, &bus, open_devices(&config).unwrap(), &Default::default()).unwrap();
    let err = open_devices(&config).err().expect("a second open of a locked image must fail");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(bus);
    // What a rebuilt machine does after a reboot.
    assert_eq!(open_devices(&config).unwrap().len(), 1);
}

#[test]
fn an_activated_device_worker_ends_with_the_bus() {
    let (vm, mem, bus) = (RecordingVm::default(), memory(), Bus::new());
    let config = VirtioConfig { rng: true, ..Default::default() };
    // The returned transports are dropped at once: the bus holds the only other reference.
    attach_devices(&vm, &mem, &bus, open_devices(&config).unwrap(), &Default::default()).unwrap();
    let slot = vmr_arch::virtio_mmio_slots(1).unwrap()[0].addr.0;
    let before = threads_named("vmr-virtio-rng");
    // The driver's side of virtio 1.2, 3.1.1, with one 16-entry queue at 1 MiB.
    write32(&bus, slot + 0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    write32(&bus, slot + 0x24, 1);
    write32(&bus, slot + 0x20, 1); // VERSION_1 (bit 32)
    write32(&bus, slot + 0x70, 1 | 2 | 8); // FEATURES_OK
    assert_eq!(read32(&bus, slot + 0x70) & 8, 8, "features refused");
    write32(&bus, slot + 0x30, 0);
    write32(&bus, slot + 0x38, 16);
    for (reg, addr) in [(0x80, 0x10_0000u32), (0x90, 0x10_1000), (0xa0, 0x10_2000)] {
        write32(&bus, slot + reg, addr);
    }
    write32(&bus, slot + 0x44, 1);
    write32(&bus, slot + 0x70, 1 | 2 | 8 | 4); // DRIVER_OK: the worker starts
    assert_eq!(read32(&bus, slot + 0x70), 1 | 2 | 8 | 4, "device needs reset");
    assert_eq!(wait_threads("vmr-virtio-rng", before + 1), before + 1);
    drop(bus);
    // Dropping joins the worker: it is gone at once, no waiting.
    assert_eq!(threads_named("vmr-virtio-rng"), before);
}

#[test]
fn setup_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let config = VirtioConfig { disks: vec![DiskConfig::new(&missing)], ..Default::default() };
    let err = open_devices(&config).err().unwrap().to_string();
    assert!(err.contains("missing.img") && !err.contains('\n'), "{err}");

    let corrupt = dir.path().join("bad.qcow2");
    std::fs::write(&corrupt, b"QFI\xfbgarbage-that-is-no-header").unwrap();
    let config = VirtioConfig {
        disks: vec![DiskConfig {
            format: Some(vmr_virtio::vmr_block::ImageFormat::Qcow2),
            ..DiskConfig::new(&corrupt)
        }],
        ..Default::default()
    };
    let err = open_devices(&config).err().unwrap().to_string();
    assert!(err.contains("bad.qcow2") && !err.contains('\n'), "{err}");

    let many = VirtioConfig { disks: vec![raw_disk(&dir, "x.img"); 19], ..Default::default() };
    let err = open_devices(&many).err().unwrap();
    assert!(matches!(err, DeviceError::TooMany { count: 19, max: 18 }), "{err}");
}
