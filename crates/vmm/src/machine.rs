//! One boot of a VM: guest memory, devices, vCPUs, and the wait for how it ends.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmr_devices::{Bus, BusDevice, IrqLine, VmExitRequest, VmExitRequester};
use vmr_hypervisor::{
    ExitKind, GuestMemory, Hypervisor, IrqChip, Vcpu, VcpuKicker, Vm, VmConfig as HvVmConfig, VmOps,
};

use crate::config::VmConfig;
use crate::console::InputSink;
use crate::devices::DeviceLimiters;
use crate::pause::PauseGate;
use crate::stats::ExitStats;
use crate::{vcpu, ExitReason, VmmError};
use vmr_virtio::rate_limiter::RateLimiterHandle;

/// What ends or changes a running machine, and the API's requests: everything the VMM's
/// thread waits for arrives on one channel.
#[derive(Debug)]
pub enum VmEvent {
    Poweroff,
    Reset,
    Crash(String),
    Signal(i32),
    ConsoleQuit,
    /// A request of the API server (or any other adapter), answered through its reply.
    Api(crate::api::ApiCall),
}

/// The channel every source of [`VmEvent`]s sends into; lives as long as the process runs VMs.
pub struct EventChannel {
    tx: Sender<VmEvent>,
    rx: Receiver<VmEvent>,
}

impl EventChannel {
    /// Creates the channel and starts turning SIGINT, SIGTERM and SIGHUP into events.
    pub fn new() -> Result<Self, VmmError> {
        let (tx, rx) = channel();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])
        .map_err(VmmError::Signals)?;
        let signal_tx = tx.clone();
        std::thread::Builder::new()
            .name("vmr-signals".into())
            .spawn(move || {
                crate::seccomp::apply_for_thread(crate::seccomp::Role::Signals);
                for sig in signals.forever() {
                    if signal_tx.send(VmEvent::Signal(sig)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| VmmError::Thread { what: "signal", source })?;
        Ok(EventChannel { tx, rx })
    }

    pub fn sender(&self) -> Sender<VmEvent> {
        self.tx.clone()
    }

    /// Waits for the next event (None once every sender is gone).
    pub(crate) fn recv(&self) -> Option<VmEvent> {
        self.rx.recv().ok()
    }

    /// A callback for the console's `Ctrl-A x`.
    pub fn quit_notifier(&self) -> Box<dyn Fn() + Send> {
        let tx = self.tx.clone();
        Box::new(move || {
            let _ = tx.send(VmEvent::ConsoleQuit);
        })
    }

    /// Drops events a previous boot left behind (its vCPUs reporting after the machine ended),
    /// keeping the user's requests (signals, `Ctrl-A x`, API calls) in order.
    pub(crate) fn drain_stale(&self) -> Vec<VmEvent> {
        let mut keep = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            if matches!(event, VmEvent::Signal(_) | VmEvent::ConsoleQuit | VmEvent::Api(_)) {
                keep.push(event);
            }
        }
        keep
    }
}

/// Routes the guest's port I/O and MMIO to the device buses, counting them.
struct MachineOps {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stats: Arc<ExitStats>,
}

impl VmOps for MachineOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        crate::metrics::metrics().vcpu.exit_io_in.inc();
        self.stats.port_access(port);
        self.pio.read(u64::from(port), data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        crate::metrics::metrics().vcpu.exit_io_out.inc();
        self.stats.port_access(port);
        self.pio.write(u64::from(port), data);
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        crate::metrics::metrics().vcpu.exit_mmio_read.inc();
        self.stats.mmio_access();
        self.mmio.read(addr, data);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        crate::metrics::metrics().vcpu.exit_mmio_write.inc();
        self.stats.mmio_access();
        self.mmio.write(addr, data);
    }
    fn exit_seen(&self, kind: ExitKind) {
        self.stats.exit(kind);
    }
}

/// Guest console output: the terminal, unbuffered so interactive use works.
struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// A built VM, ready to run once.
pub struct Machine {
    // Kept alive for as long as the vCPUs run: the backend maps it into the guest.
    memory: GuestMemory,
    vm: Arc<dyn Vm>,
    vcpus: Vec<Box<dyn Vcpu>>,
    serial: Arc<Mutex<vmr_devices::serial::Serial>>,
    stats: Arc<ExitStats>,
    handles: DeviceHandles,
}

/// The legacy devices the VMM itself acts on after boot (and saves in a snapshot).
#[derive(Clone)]
pub(crate) struct LegacyDevices {
    pub(crate) serial: Arc<Mutex<vmr_devices::serial::Serial>>,
    pub(crate) i8042: Arc<Mutex<vmr_devices::i8042::I8042>>,
    pub(crate) cmos: Arc<Mutex<vmr_devices::cmos::Cmos>>,
    pub(crate) acpi: Arc<Mutex<vmr_devices::acpi::AcpiPm>>,
    power_button: Arc<vmr_devices::acpi::PowerButton>,
}

/// Handles the VMM keeps on the machine's devices.
#[derive(Clone)]
struct DeviceHandles {
    legacy: LegacyDevices,
    /// One per disk, in `--disk` order.
    disks: Vec<Arc<vmr_virtio::block::DiskSwap>>,
    /// The rate limiter of each disk, in `--disk` order.
    disk_limiters: Vec<RateLimiterHandle>,
    /// The receive and transmit rate limiters of each network card, in `--net` order.
    net_limiters: Vec<(RateLimiterHandle, RateLimiterHandle)>,
    /// Where the virtio workers park while the VM is paused.
    workers: Arc<vmr_virtio::pause::WorkerGate>,
    /// The virtio-mmio transports in slot order.
    transports: crate::devices::Transports,
}

/// A machine whose vCPU threads run (or are parked at the pause gate).
pub struct RunningMachine {
    memory: GuestMemory,
    vm: Arc<dyn Vm>,
    vcpus: Vec<vcpu::SharedVcpu>,
    stop: Arc<AtomicBool>,
    gate: Arc<PauseGate>,
    kickers: Vec<Arc<dyn VcpuKicker>>,
    threads: Vec<JoinHandle<()>>,
    handles: DeviceHandles,
}

/// How long a pause waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl RunningMachine {
    /// Parks every vCPU at the gate and returns once all are parked: from then on the guest
    /// runs no instruction and its vCPU threads sleep.
    pub fn pause(&self) -> Result<(), VmmError> {
        // Workers first: a device finishing a request may still raise an interrupt, which a
        // parked vCPU takes after resume.
        self.handles.workers.pause();
        self.gate.close();
        self.kickers.iter().for_each(|k| k.kick());
        let running = self.threads.iter().filter(|t| !t.is_finished()).count();
        if self.gate.wait_parked(running, PAUSE_TIMEOUT) {
            return Ok(());
        }
        self.gate.open();
        self.handles.workers.resume();
        Err(VmmError::PauseTimeout(PAUSE_TIMEOUT.as_secs()))
    }

    /// Lets the parked vCPUs and device workers run again.
    pub fn resume(&self) {
        self.handles.workers.resume();
        self.gate.open();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_closed()
    }

    /// The whole machine state of a paused machine (memory apart): devices first (a device
    /// worker in the middle of a batch is waited for, and none starts another while paused),
    /// then the interrupt controllers and vCPUs.
    pub fn save_state(&self, config: &VmConfig) -> Result<crate::snapshot::MachineState, VmmError> {
        use vmr_hypervisor::Persist;
        let virtio = self.handles.transports.iter().map(|t| lock(t).state()).collect();
        let l = &self.handles.legacy;
        let legacy = crate::snapshot::LegacyState {
            serial: lock(&l.serial).save(),
            i8042: lock(&l.i8042).save(),
            cmos: lock(&l.cmos).save(),
            acpi: lock(&l.acpi).save(),
        };
        let irqchip = self.vm.irqchip_state()?;
        let vcpus = self.vcpus.iter().map(|v| vcpu::lock(v).save_state()).collect::<Result<Vec<_>, _>>()?;
        let memory = crate::snapshot::memory::layout(&self.memory);
        Ok(crate::snapshot::MachineState {
            config: config.clone(),
            drive_ids: Vec::new(),
            net_ids: Vec::new(),
            memory,
            vcpus,
            irqchip,
            legacy,
            virtio,
        })
    }

    /// Guest memory (a snapshot writes it out while the machine is paused).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Types Ctrl-Alt-Del on the guest's keyboard; false if the guest has it disabled.
    pub fn send_ctrl_alt_del(&self) -> bool {
        self.handles.legacy.i8042.lock().unwrap_or_else(|e| e.into_inner()).send_ctrl_alt_del()
    }

    /// Presses the ACPI power button (the guest decides what it does; Linux with acpid or
    /// systemd powers off).
    pub fn press_power_button(&self) {
        self.handles.legacy.power_button.press();
    }

    /// Replaces the backing image of disk `index` by `image` (already opened).
    pub fn swap_disk(
        &self,
        index: usize,
        image: Box<dyn vmr_virtio::vmr_block::DiskImage>,
        path: String,
    ) -> bool {
        match self.handles.disks.get(index) {
            Some(swap) => {
                swap.replace(image, path);
                true
            }
            None => false,
        }
    }

    /// The rate limiter of disk `index` (changed live by `PATCH /drives/{id}`).
    pub fn disk_limiter(&self, index: usize) -> Option<&RateLimiterHandle> {
        self.handles.disk_limiters.get(index)
    }

    /// The (receive, transmit) rate limiters of network card `index`.
    pub fn net_limiters(&self, index: usize) -> Option<&(RateLimiterHandle, RateLimiterHandle)> {
        self.handles.net_limiters.get(index)
    }

    /// Stops every vCPU thread (a paused machine too).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.gate.wake();
        stop_vcpus(&self.stop, &self.kickers, self.threads);
    }
}

/// Guest memory with the kernel, initrd and boot tables already written: everything about a
/// boot that does not need a backend, so bad input is reported before any backend is opened.
pub struct PreparedBoot {
    memory: GuestMemory,
    boot: vmr_arch::BootInfo,
}

impl PreparedBoot {
    /// Allocates guest memory and loads the kernel, initrd, command line and tables into it.
    pub fn new(config: &VmConfig) -> Result<Self, VmmError> {
        check_host_memory(config.memory)?;
        let memory = vmr_arch::create_guest_memory(config.memory)?;
        // The slots `Machine::build` fills, described in the DSDT.
        let virtio_mmio = vmr_arch::virtio_mmio_slots(config.virtio.count())?;
        let mut machine = vmr_arch::MachineConfig {
            vcpus: config.vcpus,
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: config.kernel_cmdline(),
            virtio_mmio,
        };
        let boot = match vmr_arch::configure_system(&memory, &machine) {
            // The hints are optional: a command line that fits only without them boots without
            // them, and one that does not fit is reported with the user's own length.
            Err(vmr_arch::ArchError::CmdlineTooLong { .. }) if machine.cmdline != config.cmdline => {
                machine.cmdline = config.cmdline.clone();
                vmr_arch::configure_system(&memory, &machine)?
            }
            other => other?,
        };
        Ok(PreparedBoot { memory, boot })
    }
}

impl Machine {
    /// Creates the VM on `hv` around a prepared boot: devices, vCPUs, boot state.
    pub fn build(
        config: &VmConfig,
        prepared: PreparedBoot,
        hv: &dyn Hypervisor,
        events: &EventChannel,
    ) -> Result<Self, VmmError> {
        let PreparedBoot { memory, boot } = prepared;
        check_host_limits(config, hv)?;
        // Images and taps first: a missing or locked image fails before anything is built.
        let virtio = crate::devices::open_devices(&config.virtio)?;
        let (disks, disk_limiters, net_limiters) = device_handles(&virtio);
        let vm = hv.create_vm(&HvVmConfig { vcpus: config.vcpus })?;
        vm.set_memory(&memory)?;

        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit = exit_requester(events.sender());
        let legacy = add_legacy_devices(&pio, vm.irqchip(), exit, config.memory, None)?;
        let serial = legacy.serial.clone();
        let workers = Arc::new(vmr_virtio::pause::WorkerGate::default());
        let transports = crate::devices::attach_devices(vm.as_ref(), &memory, &mmio, virtio, &workers)?;

        let stats = Arc::new(ExitStats::default());
        let ops: Arc<dyn VmOps> = Arc::new(MachineOps { pio, mmio, stats: stats.clone() });
        let supported = hv.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let mut vcpu = vm.create_vcpu(id, ops.clone())?;
            vcpu.set_cpuid(&vmr_arch::vcpu_cpuid(&supported, id, config.vcpus))?;
            vcpu.set_msrs(&vmr_arch::boot_msrs())?;
            let mut lapic = vcpu.lapic()?;
            vmr_arch::setup_lapic_lint(&mut lapic);
            vcpu.set_lapic(&lapic)?;
            if id == 0 {
                vcpu.set_state(&boot.bsp_state)?;
            }
            vcpus.push(vcpu);
        }
        let handles = DeviceHandles { legacy, disks, disk_limiters, net_limiters, workers, transports };
        Ok(Machine { memory, vm, vcpus, serial, stats, handles })
    }

    /// Rebuilds a machine from a snapshot: `memory` is the mapped memory file, `state` the
    /// rest (already decoded and checked against `config`). The devices are restored with
    /// their `Persist` impls, the vCPUs and interrupt controllers through the backend.
    pub fn restore(
        config: &VmConfig,
        state: &crate::snapshot::MachineState,
        memory: GuestMemory,
        hv: &dyn Hypervisor,
        events: &EventChannel,
    ) -> Result<Self, VmmError> {
        check_host_limits(config, hv)?;
        let virtio = crate::devices::restore_devices(&config.virtio, &state.virtio)?;
        let (disks, disk_limiters, net_limiters) = device_handles(&virtio);
        let vm = hv.create_vm(&HvVmConfig { vcpus: config.vcpus })?;
        vm.set_memory(&memory)?;
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit = exit_requester(events.sender());
        let legacy = add_legacy_devices(&pio, vm.irqchip(), exit, config.memory, Some(&state.legacy))?;
        let serial = legacy.serial.clone();
        let workers = Arc::new(vmr_virtio::pause::WorkerGate::default());
        let transports =
            crate::devices::attach_restored(vm.as_ref(), &memory, &mmio, virtio, &workers, &state.virtio)?;
        let stats = Arc::new(ExitStats::default());
        let ops: Arc<dyn VmOps> = Arc::new(MachineOps { pio, mmio, stats: stats.clone() });
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for (id, saved) in (0..config.vcpus).zip(&state.vcpus) {
            let mut vcpu = vm.create_vcpu(id, ops.clone())?;
            vcpu.restore_state(saved)?;
            vcpus.push(vcpu);
        }
        // After the vCPUs: the PIC's output goes to the bootstrap processor's LAPIC.
        vm.set_irqchip_state(&state.irqchip)?;
        for t in &transports {
            lock(t).resignal_interrupt();
        }
        let handles = DeviceHandles { legacy, disks, disk_limiters, net_limiters, workers, transports };
        Ok(Machine { memory, vm, vcpus, serial, stats, handles })
    }

    /// This boot's exit counters (see [`crate::stats`]).
    pub fn stats(&self) -> Arc<ExitStats> {
        self.stats.clone()
    }

    /// Where console input goes.
    pub fn console_sink(&self) -> InputSink {
        let serial = self.serial.clone();
        // Input waits in the UART's queue (up to 1 MiB) until the guest has the port open and
        // drains the 64-byte FIFO, so what is typed or piped in during boot reaches the shell;
        // past that limit, only a guest that reads nothing for 1 s loses input.
        Arc::new(move |bytes: &[u8]| {
            let mut rest = bytes;
            let mut last_progress = Instant::now();
            while !rest.is_empty() && last_progress.elapsed() < Duration::from_secs(1) {
                let taken = serial.lock().unwrap_or_else(|e| e.into_inner()).enqueue_input(rest);
                rest = &rest[taken.min(rest.len())..];
                if taken > 0 {
                    last_progress = Instant::now();
                } else {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    }

    /// Starts one thread per vCPU. The caller waits for the events that end the machine and
    /// then calls [`RunningMachine::stop`].
    pub fn start(self, events: &EventChannel) -> Result<RunningMachine, VmmError> {
        self.start_with(events, false)
    }

    /// Like [`Machine::start`]; with `paused`, every vCPU parks at the gate before it runs
    /// any guest instruction (a loaded snapshot that is not resumed yet).
    pub fn start_with(self, events: &EventChannel, paused: bool) -> Result<RunningMachine, VmmError> {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(PauseGate::default());
        if paused {
            self.handles.workers.pause();
            gate.close();
        }
        let kickers: Vec<Arc<dyn VcpuKicker>> = self.vcpus.iter().map(|v| v.kicker()).collect();
        let vcpus: Vec<vcpu::SharedVcpu> = self.vcpus.into_iter().map(|v| Arc::new(Mutex::new(v))).collect();
        let mut running = RunningMachine {
            memory: self.memory,
            vm: self.vm,
            vcpus: vcpus.clone(),
            stop: stop.clone(),
            gate: gate.clone(),
            kickers,
            threads: Vec::with_capacity(vcpus.len()),
            handles: self.handles,
        };
        for vcpu in vcpus {
            match vcpu::spawn(vcpu, stop.clone(), gate.clone(), events.sender()) {
                Ok(handle) => running.threads.push(handle),
                Err(e) => {
                    running.stop();
                    return Err(e);
                }
            }
        }
        Ok(running)
    }
}

/// How an event ends the machine, if it does.
pub(crate) fn exit_reason(event: &VmEvent) -> Option<ExitReason> {
    match event {
        VmEvent::Poweroff => Some(ExitReason::Poweroff),
        VmEvent::Reset => Some(ExitReason::Reboot),
        VmEvent::Crash(report) => Some(ExitReason::Crash(report.clone())),
        VmEvent::Signal(sig) => Some(ExitReason::Signal(*sig)),
        VmEvent::ConsoleQuit => Some(ExitReason::ConsoleQuit),
        VmEvent::Api(_) => None,
    }
}

/// Sets the stop flag and kicks every vCPU until its thread has ended.
fn stop_vcpus(stop: &AtomicBool, kickers: &[Arc<dyn VcpuKicker>], threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    for handle in threads {
        while !handle.is_finished() {
            kickers.iter().for_each(|k| k.kick());
            if Instant::now() > deadline {
                tracing::error!("a vCPU thread did not stop within 10 s; leaving it behind");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}

fn exit_requester(tx: Sender<VmEvent>) -> VmExitRequester {
    let tx = Mutex::new(tx);
    Arc::new(move |request| {
        let event = match request {
            VmExitRequest::Poweroff => VmEvent::Poweroff,
            VmExitRequest::Reset => VmEvent::Reset,
        };
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(event);
    })
}

/// Serial on COM1, i8042, CMOS RTC and the ACPI power-management device.
fn add_legacy_devices(
    pio: &Bus,
    irqchip: Arc<dyn IrqChip>,
    exit: VmExitRequester,
    memory: u64,
    saved: Option<&crate::snapshot::LegacyState>,
) -> Result<LegacyDevices, VmmError> {
    use vmr_devices::{acpi, cmos, i8042, serial as com};
    use vmr_hypervisor::Persist;
    let serial_irq = IrqLine::new(irqchip.clone(), com::COM1_IRQ);
    let kbd_irq = IrqLine::new(irqchip.clone(), i8042::I8042_IRQ);
    let below_4g = memory.min(vmr_arch::layout::MMIO_HOLE_START);
    let restore_err = |e: &dyn std::fmt::Display| VmmError::Snapshot(format!("serial port state: {e}"));
    let (serial, kbd, rtc, pm) = match saved {
        None => (
            com::Serial::new(serial_irq, Box::new(ConsoleOut)),
            i8042::I8042::new(exit.clone(), kbd_irq),
            cmos::Cmos::new(below_4g, memory - below_4g),
            acpi::AcpiPm::new(exit.clone()),
        ),
        Some(s) => (
            com::Serial::restore(com::SerialHost { irq: serial_irq, out: Box::new(ConsoleOut) }, &s.serial)
                .map_err(|e| restore_err(&e))?,
            match i8042::I8042::restore(i8042::I8042Host { exit: exit.clone(), irq: kbd_irq }, &s.i8042) {
                Ok(k) => k,
                Err(never) => match never {},
            },
            match cmos::Cmos::restore(Box::new(cmos::host_clock), &s.cmos) {
                Ok(c) => c,
                Err(never) => match never {},
            },
            match acpi::AcpiPm::restore(exit.clone(), &s.acpi) {
                Ok(a) => a,
                Err(never) => match never {},
            },
        ),
    };
    let place = |name: &'static str, dev: Arc<Mutex<dyn BusDevice>>, base: u16, len: u16| {
        pio.insert(dev, u64::from(base), u64::from(len)).map_err(|source| VmmError::Device { name, source })
    };
    let serial = Arc::new(Mutex::new(serial));
    place("serial", serial.clone(), com::COM1_PORT, com::SERIAL_PORT_LEN)?;
    let kbd = Arc::new(Mutex::new(kbd));
    place("i8042", kbd.clone(), i8042::I8042_PORT, i8042::I8042_PORT_LEN)?;
    let rtc = Arc::new(Mutex::new(rtc));
    place("cmos", rtc.clone(), cmos::CMOS_PORT, cmos::CMOS_PORT_LEN)?;
    let pm = Arc::new(Mutex::new(pm));
    place("acpi", pm.clone(), acpi::ACPI_PM_PORT, acpi::ACPI_PM_PORT_LEN)?;
    place("reset control", Arc::new(Mutex::new(acpi::ResetControl::new(exit))), acpi::RESET_CONTROL_PORT, 1)?;
    let power_button = acpi::PowerButton::new(IrqLine::new(irqchip, vmr_arch::layout::POWER_BUTTON_IRQ));
    Ok(LegacyDevices { serial, i8042: kbd, cmos: rtc, acpi: pm, power_button: Arc::new(power_button) })
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Handles = (
    Vec<Arc<vmr_virtio::block::DiskSwap>>,
    Vec<RateLimiterHandle>,
    Vec<(RateLimiterHandle, RateLimiterHandle)>,
);

/// The disk swap handles and the rate limiter handles of opened devices, in config order.
fn device_handles(virtio: &[crate::devices::OpenDevice]) -> Handles {
    let disks = virtio.iter().filter_map(|d| d.disk_swap.clone()).collect();
    let (mut disk_limiters, mut net_limiters) = (Vec::new(), Vec::new());
    for limiters in virtio.iter().filter_map(|d| d.limiters.clone()) {
        match limiters {
            DeviceLimiters::Disk(l) => disk_limiters.push(l),
            DeviceLimiters::Net { rx, tx } => net_limiters.push((rx, tx)),
        }
    }
    (disks, disk_limiters, net_limiters)
}

fn check_host_limits(config: &VmConfig, hv: &dyn Hypervisor) -> Result<(), VmmError> {
    let max = hv.max_vcpus();
    if config.vcpus > max {
        return Err(VmmError::TooManyCpus { requested: config.vcpus, max, backend: hv.name() });
    }
    Ok(())
}

/// Guest RAM is mapped lazily, but a VM larger than the host's RAM cannot run properly.
fn check_host_memory(requested: u64) -> Result<(), VmmError> {
    // SAFETY: sysconf has no memory effects.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages > 0 && page_size > 0 {
        let host = pages as u64 * page_size as u64;
        if requested > host {
            return Err(VmmError::MemoryTooLarge { requested, host });
        }
    }
    Ok(())
}
