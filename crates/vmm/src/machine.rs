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
use crate::stats::ExitStats;
use crate::{vcpu, ExitReason, VmmError};

/// What ends or changes a running machine.
#[derive(Debug)]
pub enum VmEvent {
    Poweroff,
    Reset,
    Crash(String),
    Signal(i32),
    ConsoleQuit,
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

    /// A callback for the console's `Ctrl-A x`.
    pub fn quit_notifier(&self) -> Box<dyn Fn() + Send> {
        let tx = self.tx.clone();
        Box::new(move || {
            let _ = tx.send(VmEvent::ConsoleQuit);
        })
    }

    /// Drops events a previous boot left behind (its vCPUs reporting after the machine ended),
    /// keeping the user's requests.
    fn drain_stale(&self) -> Option<VmEvent> {
        let mut keep = None;
        while let Ok(event) = self.rx.try_recv() {
            if matches!(event, VmEvent::Signal(_) | VmEvent::ConsoleQuit) {
                keep = Some(event);
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
    _memory: GuestMemory,
    _vm: Arc<dyn Vm>,
    vcpus: Vec<Box<dyn Vcpu>>,
    serial: Arc<Mutex<vmr_devices::serial::Serial>>,
    stats: Arc<ExitStats>,
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
        let vm = hv.create_vm(&HvVmConfig { vcpus: config.vcpus })?;
        vm.set_memory(&memory)?;

        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit = exit_requester(events.sender());
        let serial = add_legacy_devices(&pio, vm.irqchip(), exit, config.memory)?;
        crate::devices::attach_devices(vm.as_ref(), &memory, &mmio, virtio)?;

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
        Ok(Machine { _memory: memory, _vm: vm, vcpus, serial, stats })
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

    /// Runs the vCPUs until the guest or the user ends the machine; stops every vCPU thread
    /// before returning.
    pub fn run(self, events: &EventChannel) -> Result<ExitReason, VmmError> {
        if let Some(VmEvent::Signal(sig)) = events.drain_stale() {
            return Ok(ExitReason::Signal(sig));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let kickers: Vec<Arc<dyn VcpuKicker>> = self.vcpus.iter().map(|v| v.kicker()).collect();
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        for vcpu in self.vcpus {
            match vcpu::spawn(vcpu, stop.clone(), events.sender()) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let reason = match spawn_error {
            Some(e) => Err(e),
            None => Ok(wait_for_end(&events.rx)),
        };
        stop_vcpus(&stop, &kickers, threads);
        reason
    }
}

fn wait_for_end(rx: &Receiver<VmEvent>) -> ExitReason {
    match rx.recv() {
        Ok(VmEvent::Poweroff) => ExitReason::Poweroff,
        Ok(VmEvent::Reset) => ExitReason::Reboot,
        Ok(VmEvent::Crash(report)) => ExitReason::Crash(report),
        Ok(VmEvent::Signal(sig)) => ExitReason::Signal(sig),
        Ok(VmEvent::ConsoleQuit) => ExitReason::ConsoleQuit,
        // Every sender is gone: nothing can end the machine any more; treat as power-off.
        Err(_) => ExitReason::Poweroff,
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
) -> Result<Arc<Mutex<vmr_devices::serial::Serial>>, VmmError> {
    let serial = Arc::new(Mutex::new(vmr_devices::serial::Serial::new(
        IrqLine::new(irqchip.clone(), vmr_devices::serial::COM1_IRQ),
        Box::new(ConsoleOut),
    )));
    let place = |name: &'static str, dev: Arc<Mutex<dyn BusDevice>>, base: u16, len: u16| {
        pio.insert(dev, u64::from(base), u64::from(len)).map_err(|source| VmmError::Device { name, source })
    };
    use vmr_devices::{acpi, cmos, i8042, serial as com};
    place("serial", serial.clone(), com::COM1_PORT, com::SERIAL_PORT_LEN)?;
    let kbd = i8042::I8042::new(exit.clone(), IrqLine::new(irqchip.clone(), i8042::I8042_IRQ));
    place("i8042", Arc::new(Mutex::new(kbd)), i8042::I8042_PORT, i8042::I8042_PORT_LEN)?;
    let below_4g = memory.min(vmr_arch::layout::MMIO_HOLE_START);
    let rtc = cmos::Cmos::new(below_4g, memory - below_4g);
    place("cmos", Arc::new(Mutex::new(rtc)), cmos::CMOS_PORT, cmos::CMOS_PORT_LEN)?;
    place(
        "acpi",
        Arc::new(Mutex::new(acpi::AcpiPm::new(exit.clone()))),
        acpi::ACPI_PM_PORT,
        acpi::ACPI_PM_PORT_LEN,
    )?;
    place("reset control", Arc::new(Mutex::new(acpi::ResetControl::new(exit))), acpi::RESET_CONTROL_PORT, 1)?;
    Ok(serial)
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
