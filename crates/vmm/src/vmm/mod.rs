//! [`Vmm`]: the one request handler. It owns the VM's lifecycle (Not started -> Running <->
//! Paused -> ended) and answers typed [`VmmRequest`]s; the HTTP server, the command line and the
//! config file are adapters that turn their input into those requests.
//!
//! The VMM runs on one thread (the caller's) and waits on one channel for both the API's calls
//! and the machine's events (power-off, reset, crash, signals), so a request is never handled
//! while the machine is half torn down, and a vCPU never waits for the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmr_virtio::block::DiskConfig;
use vmr_virtio::net::NetConfig;
use vmr_virtio::vsock::VsockConfig;

use crate::api::schema::*;
use crate::api::{ApiError, ApiResult, VmmHandle, VmmRequest, VmmResponse};
use crate::devices::options::{check_tap_name, check_vsock_cid, parse_mac};
use crate::machine::{self, EventChannel, Machine, PreparedBoot, RunningMachine, VmEvent};
use crate::{console, select_backend, BackendChoice, ExitReason, RebootPolicy, VmConfig, VmmError};

/// vmr's own version (`GET /` `vmm_version`, `GET /version` `vmr_version`, `vmr --version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Firecracker release whose API vmr follows (request and config-file bodies, e.g.
/// `machine-config`'s `huge_pages`, added in Firecracker 1.7): what `GET /version` reports as
/// `firecracker_version` and what `vmr --version` puts where Firecracker puts its version.
/// Clients gate on it: Kata's Go runtime refuses a Firecracker older than 0.21.1, so vmr's own
/// 0.1.0 there would be refused.
pub const FIRECRACKER_COMPAT_VERSION: &str = "1.7.0";

/// `vmr --version`: one line in Firecracker's form (`<name> v<semver>`), the Firecracker API
/// level as the version and vmr's own as semver build metadata (which comparisons ignore),
/// e.g. `vmr v1.7.0+vmr.0.1.0`.
pub fn version_line() -> String {
    format!("vmr v{FIRECRACKER_COMPAT_VERSION}+vmr.{VERSION}")
}

/// One disk with the Firecracker attributes vmr keeps for `GET /vm/config`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DriveEntry {
    id: String,
    disk: DiskConfig,
    root: bool,
    partuuid: Option<String>,
    cache_type: Option<String>,
    io_engine: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NetEntry {
    id: String,
    net: NetConfig,
}

/// The VMM: configuration, then one running machine.
pub struct Vmm {
    events: EventChannel,
    id: String,
    config: VmConfig,
    boot_source: bool,
    drives: Vec<DriveEntry>,
    nets: Vec<NetEntry>,
    logger: Option<Logger>,
    backend: Option<BackendChoice>,
    running: Option<RunningMachine>,
    console: Option<console::ConsoleInput>,
    raw_mode: Option<console::RawModeGuard>,
    /// The running boot's exit counters and start-up times (`VMR_STATS=1`).
    boot_stats: Option<(Arc<crate::stats::ExitStats>, crate::stats::BootTimes, Instant)>,
}

impl Vmm {
    /// A VMM with no VM yet: Firecracker's defaults (1 vCPU, 128 MiB), waiting for requests.
    pub fn new(accel: crate::Accel, id: Option<String>) -> Result<Self, VmmError> {
        let config = VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory: 128 << 20,
            accel,
            reboot: RebootPolicy::Exit,
            virtio: Default::default(),
            cmdline_hints: true,
        };
        let mut vmm = Vmm {
            events: EventChannel::new()?,
            id: id.unwrap_or_else(|| "anonymous-instance".into()),
            config,
            boot_source: false,
            drives: Vec::new(),
            nets: Vec::new(),
            logger: None,
            backend: None,
            running: None,
            console: None,
            raw_mode: None,
            boot_stats: None,
        };
        vmm.boot_source = false;
        Ok(vmm)
    }

    /// A VMM configured from vmr's own [`VmConfig`] (the command line), not started yet.
    /// Disks are `disk0`, `disk1`, ... and network cards `net0`, ... for the API.
    pub fn from_config(config: &VmConfig) -> Result<Self, VmmError> {
        let mut vmm = Vmm::new(config.accel, None)?;
        vmm.config = VmConfig { virtio: Default::default(), ..config.clone() };
        vmm.boot_source = true;
        vmm.drives = config.virtio.disks.iter().enumerate().map(|(i, disk)| drive_entry(i, disk)).collect();
        vmm.nets = config
            .virtio
            .nets
            .iter()
            .enumerate()
            .map(|(i, net)| NetEntry { id: format!("net{i}"), net: net.clone() })
            .collect();
        vmm.config.virtio.vsock = config.virtio.vsock.clone();
        vmm.config.virtio.rng = config.virtio.rng;
        Ok(vmm)
    }

    /// Boots the configured VM (the command line's and the config file's `InstanceStart`),
    /// with the VMM's own error rather than the API's.
    pub fn start_configured(&mut self) -> Result<(), VmmError> {
        let config = self.effective_config().map_err(|e| VmmError::Api(e.to_string()))?;
        self.boot(&config)
    }

    /// A handle other threads (the API server) send requests through.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle::new(self.events.sender())
    }

    /// Serves requests and machine events until the VM ends (or, with no VM, until a signal).
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        loop {
            let Some(event) = self.events.recv() else { return Ok(ExitReason::Poweroff) };
            if let Some(reason) = self.dispatch(event)? {
                self.stop_machine();
                if let Some(c) = &self.console {
                    c.set_sink(None);
                }
                return Ok(reason);
            }
        }
    }

    /// Handles one event; returns how the VMM ends if it does.
    fn dispatch(&mut self, event: VmEvent) -> Result<Option<ExitReason>, VmmError> {
        if let VmEvent::Api(call) = event {
            let answer = self.handle_request(call.request);
            (call.reply)(answer);
            return Ok(None);
        }
        let Some(reason) = machine::exit_reason(&event) else { return Ok(None) };
        let user_asked = matches!(reason, ExitReason::Signal(_) | ExitReason::ConsoleQuit);
        if self.running.is_none() && !user_asked {
            // A late report of a machine that has already been stopped.
            return Ok(None);
        }
        if reason == ExitReason::Reboot && self.config.reboot == RebootPolicy::Restart {
            eprintln!("\r\nvmr: guest rebooted; restarting the VM\r");
            self.stop_machine();
            for kept in self.events.drain_stale() {
                if let Some(reason) = self.dispatch(kept)? {
                    return Ok(Some(reason));
                }
            }
            // The current configuration: a drive swapped through the API stays swapped.
            let config = self.effective_config().map_err(|e| VmmError::Api(e.to_string()))?;
            self.boot(&config)?;
            return Ok(None);
        }
        Ok(Some(reason))
    }

    /// Answers one request (the whole API goes through here).
    pub fn handle_request(&mut self, request: VmmRequest) -> ApiResult {
        use VmmRequest as R;
        match request {
            R::GetInstanceInfo => Ok(VmmResponse::InstanceInfo(self.instance_info())),
            R::GetVersion => Ok(VmmResponse::Version(VersionInfo {
                firecracker_version: FIRECRACKER_COMPAT_VERSION.into(),
                vmr_version: VERSION.into(),
            })),
            R::GetVmConfig => Ok(VmmResponse::VmConfig(Box::new(self.full_config()))),
            R::GetMachineConfig => Ok(VmmResponse::MachineConfig(self.machine_config())),
            R::GetDeviceCounters => Ok(VmmResponse::DeviceCounters(self.device_counters())),
            R::PutMachineConfig(mc) => self.before_boot("PUT /machine-config")?.set_machine(mc),
            R::PatchMachineConfig(update) => {
                let vmm = self.before_boot("PATCH /machine-config")?;
                let mc = vmm.machine_config();
                vmm.set_machine(MachineConfig {
                    vcpu_count: update.vcpu_count.unwrap_or(mc.vcpu_count),
                    mem_size_mib: update.mem_size_mib.unwrap_or(mc.mem_size_mib),
                    smt: update.smt.unwrap_or(mc.smt),
                    track_dirty_pages: update.track_dirty_pages.unwrap_or(mc.track_dirty_pages),
                    cpu_template: update.cpu_template.or(mc.cpu_template),
                    huge_pages: update.huge_pages.or(mc.huge_pages),
                })
            }
            R::PutBootSource(b) => self.before_boot("PUT /boot-source")?.set_boot_source(b),
            R::PutDrive(d) => self.before_boot("PUT /drives")?.put_drive(d),
            R::PatchDrive(d) => self.patch_drive(d),
            R::PutNetworkInterface(n) => self.before_boot("PUT /network-interfaces")?.put_net(n),
            R::PatchNetworkInterface(n) => self.patch_net(n),
            R::PutVsock(v) => self.before_boot("PUT /vsock")?.put_vsock(v),
            R::PutEntropy(e) => {
                let vmm = self.before_boot("PUT /entropy")?;
                reject_rate_limiter(&e.rate_limiter, "the entropy device's rate_limiter")?;
                vmm.config.virtio.rng = true;
                Ok(VmmResponse::Empty)
            }
            R::PutLogger(l) => self.before_boot("PUT /logger")?.put_logger(l),
            R::PutMetrics(m) => {
                self.before_boot("PUT /metrics")?;
                let path = std::path::Path::new(&m.metrics_path);
                crate::metrics::metrics().init(path).map_err(|e| ApiError::InvalidValue(e.to_string()))?;
                crate::metrics::start_periodic_flush().map_err(|e| ApiError::Vmm(e.to_string()))?;
                Ok(VmmResponse::Empty)
            }
            R::Action(action) => self.action(action),
            R::Pause => self.pause(),
            R::Resume => self.resume(),
            R::CreateSnapshot(p) => self.create_snapshot(p),
            R::LoadSnapshot(p) => self.load_snapshot(p),
        }
    }

    fn state(&self) -> InstanceState {
        match &self.running {
            None => InstanceState::NotStarted,
            Some(m) if m.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.id.clone(),
            state: self.state(),
            vmm_version: VERSION.into(),
            app_name: "vmr".into(),
        }
    }

    /// Firecracker refuses configuration changes once the microVM started.
    fn before_boot(&mut self, what: &'static str) -> Result<&mut Self, ApiError> {
        if self.running.is_some() {
            return Err(ApiError::WrongState { what, when: "after the VM has started" });
        }
        Ok(self)
    }

    fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.config.vcpus,
            mem_size_mib: self.config.memory >> 20,
            ..MachineConfig::default()
        }
    }

    fn set_machine(&mut self, mc: MachineConfig) -> ApiResult {
        if !(1..=crate::MAX_API_VCPUS).contains(&mc.vcpu_count) {
            return Err(ApiError::InvalidValue(format!(
                "vcpu_count {} is out of range: 1 to {}",
                mc.vcpu_count,
                crate::MAX_API_VCPUS
            )));
        }
        let memory = mc.mem_size_mib.checked_mul(1 << 20).filter(|m| *m >= VmConfig::MIN_MEMORY);
        let Some(memory) = memory.filter(|_| mc.mem_size_mib <= 1 << 30) else {
            return Err(ApiError::InvalidValue(format!(
                "mem_size_mib {} is out of range: vmr needs at least 16 MiB",
                mc.mem_size_mib
            )));
        };
        if mc.smt {
            return Err(ApiError::NotSupportedYet("smt: true"));
        }
        if mc.track_dirty_pages {
            return Err(ApiError::NotSupportedYet("track_dirty_pages: true (needed for snapshots)"));
        }
        if mc.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(ApiError::NotSupportedYet("cpu_template other than \"None\""));
        }
        if mc.huge_pages.as_deref().is_some_and(|t| t != "None") {
            return Err(ApiError::NotSupportedYet("huge_pages other than \"None\""));
        }
        self.config.vcpus = mc.vcpu_count;
        self.config.memory = memory;
        Ok(VmmResponse::Empty)
    }

    fn set_boot_source(&mut self, b: BootSource) -> ApiResult {
        if b.kernel_image_path.is_empty() {
            return Err(ApiError::InvalidValue("kernel_image_path must not be empty".into()));
        }
        self.config.kernel = b.kernel_image_path.into();
        self.config.initrd = b.initrd_path.map(PathBuf::from);
        self.config.cmdline = b.boot_args.unwrap_or_else(|| crate::DEFAULT_CMDLINE.into());
        self.boot_source = true;
        Ok(VmmResponse::Empty)
    }

    fn put_drive(&mut self, d: Drive) -> ApiResult {
        check_id(&d.drive_id, "drive_id")?;
        if d.socket.is_some() {
            return Err(ApiError::NotServed("a vhost-user drive (socket)"));
        }
        let rate_limiter = checked_limiter(d.rate_limiter)?;
        let Some(path) = d.path_on_host.filter(|p| !p.is_empty()) else {
            return Err(ApiError::InvalidValue(format!("drive {}: path_on_host is required", d.drive_id)));
        };
        match d.cache_type.as_deref() {
            None | Some("Unsafe") | Some("Writeback") => {}
            Some(other) => {
                return Err(ApiError::InvalidValue(format!(
                    "cache_type '{other}': expected Unsafe or Writeback"
                )))
            }
        }
        match d.io_engine.as_deref() {
            None | Some("Sync") | Some("Async") => {}
            Some(other) => {
                return Err(ApiError::InvalidValue(format!("io_engine '{other}': expected Sync or Async")))
            }
        }
        if d.is_root_device && self.drives.iter().any(|e| e.root && e.id != d.drive_id) {
            return Err(ApiError::InvalidValue("a root device is already configured".into()));
        }
        let disk = DiskConfig {
            path: path.into(),
            read_only: d.is_read_only.unwrap_or(false),
            format: None,
            serial: None,
            direct: false,
            rate_limiter,
        };
        let entry = DriveEntry {
            id: d.drive_id,
            disk,
            root: d.is_root_device,
            partuuid: d.partuuid,
            cache_type: d.cache_type,
            io_engine: d.io_engine,
        };
        match self.drives.iter_mut().find(|e| e.id == entry.id) {
            Some(existing) => *existing = entry,
            None => self.drives.push(entry),
        }
        // The root device is the guest's /dev/vda: first in MMIO slot order.
        self.drives.sort_by_key(|e| !e.root);
        Ok(VmmResponse::Empty)
    }

    fn patch_drive(&mut self, d: DriveUpdate) -> ApiResult {
        if self.running.is_none() {
            return Err(ApiError::WrongState { what: "PATCH /drives", when: "before the VM has started" });
        }
        let Some(index) = self.drives.iter().position(|e| e.id == d.drive_id) else {
            return Err(ApiError::InvalidValue(format!("no drive with drive_id {}", d.drive_id)));
        };
        // Checked before anything changes: a refused request leaves the drive as it was.
        let limiter = patched_limiter(&self.drives[index].disk.rate_limiter, d.rate_limiter)?;
        if let Some(path) = d.path_on_host {
            self.swap_drive(index, path)?;
        }
        if let Some(limiter) = limiter {
            let m = self.running_machine("PATCH /drives")?;
            let handle = m.disk_limiter(index).ok_or_else(|| not_attached("drive", &d.drive_id))?;
            handle.update(&limiter).map_err(|e| ApiError::InvalidValue(e.to_string()))?;
            self.drives[index].disk.rate_limiter = limiter;
        }
        Ok(VmmResponse::Empty)
    }

    /// Opens `path` with drive `index`'s options and makes it the drive's backing image.
    fn swap_drive(&mut self, index: usize, path: String) -> Result<(), ApiError> {
        let entry = &self.drives[index];
        let options = vmr_virtio::vmr_block::OpenOptions {
            read_only: entry.disk.read_only,
            format: None,
            direct: entry.disk.direct,
        };
        let image = vmr_virtio::vmr_block::open(std::path::Path::new(&path), &options)
            .map_err(|e| ApiError::InvalidValue(format!("drive {}: {}", entry.id, crate::error_chain(&e))))?;
        let m = self.running_machine("PATCH /drives")?;
        if !m.swap_disk(index, image, path.clone()) {
            return Err(not_attached("drive", &self.drives[index].id));
        }
        self.drives[index].disk.path = path.into();
        Ok(())
    }

    fn put_net(&mut self, n: NetworkInterface) -> ApiResult {
        check_id(&n.iface_id, "iface_id")?;
        let rx_rate_limiter = checked_limiter(n.rx_rate_limiter)?;
        let tx_rate_limiter = checked_limiter(n.tx_rate_limiter)?;
        check_tap_name(&n.host_dev_name)
            .map_err(|e| ApiError::InvalidValue(format!("host_dev_name: {e}")))?;
        let mac = n.guest_mac.as_deref().map(parse_mac).transpose();
        let mac = mac.map_err(|e| ApiError::InvalidValue(format!("guest_mac: {e}")))?;
        let net = NetConfig { tap: n.host_dev_name, mac, rx_rate_limiter, tx_rate_limiter };
        let entry = NetEntry { id: n.iface_id, net };
        match self.nets.iter_mut().find(|e| e.id == entry.id) {
            Some(existing) => *existing = entry,
            None => self.nets.push(entry),
        }
        Ok(VmmResponse::Empty)
    }

    fn patch_net(&mut self, n: NetworkInterfaceUpdate) -> ApiResult {
        if self.running.is_none() {
            return Err(ApiError::WrongState {
                what: "PATCH /network-interfaces",
                when: "before the VM has started",
            });
        }
        let Some(index) = self.nets.iter().position(|e| e.id == n.iface_id) else {
            return Err(ApiError::InvalidValue(format!("no network interface with iface_id {}", n.iface_id)));
        };
        let entry = &self.nets[index];
        let rx = patched_limiter(&entry.net.rx_rate_limiter, n.rx_rate_limiter)?;
        let tx = patched_limiter(&entry.net.tx_rate_limiter, n.tx_rate_limiter)?;
        let m = self.running_machine("PATCH /network-interfaces")?;
        let (rx_handle, tx_handle) =
            m.net_limiters(index).cloned().ok_or_else(|| not_attached("network interface", &n.iface_id))?;
        if let Some(rx) = rx {
            rx_handle.update(&rx).map_err(|e| ApiError::InvalidValue(e.to_string()))?;
            self.nets[index].net.rx_rate_limiter = rx;
        }
        if let Some(tx) = tx {
            tx_handle.update(&tx).map_err(|e| ApiError::InvalidValue(e.to_string()))?;
            self.nets[index].net.tx_rate_limiter = tx;
        }
        Ok(VmmResponse::Empty)
    }

    fn put_vsock(&mut self, v: Vsock) -> ApiResult {
        let cid = check_vsock_cid(u64::from(v.guest_cid))
            .map_err(|e| ApiError::InvalidValue(format!("guest_cid: {e}")))?;
        if v.uds_path.is_empty() {
            return Err(ApiError::InvalidValue("uds_path must not be empty".into()));
        }
        self.config.virtio.vsock = Some(VsockConfig { cid, socket: v.uds_path.into() });
        Ok(VmmResponse::Empty)
    }

    fn put_logger(&mut self, l: Logger) -> ApiResult {
        let level = l.level.as_deref().unwrap_or("Warning");
        let path = l.log_path.as_deref().map(std::path::Path::new);
        let (show_level, show_origin) = (l.show_level.unwrap_or(false), l.show_log_origin.unwrap_or(false));
        crate::logger::init_logger(path, level, show_level, show_origin)
            .map_err(|e| ApiError::InvalidValue(e.to_string()))?;
        self.logger = Some(l);
        Ok(VmmResponse::Empty)
    }

    fn action(&mut self, action: ActionType) -> ApiResult {
        match action {
            ActionType::InstanceStart => self.start(),
            ActionType::SendCtrlAltDel => {
                let m = self.running_machine("SendCtrlAltDel")?;
                if !m.send_ctrl_alt_del() {
                    return Err(ApiError::InvalidValue("the guest has its keyboard disabled".into()));
                }
                Ok(VmmResponse::Empty)
            }
            ActionType::FlushMetrics => {
                crate::metrics::metrics().flush().map_err(|e| ApiError::InvalidValue(e.to_string()))?;
                Ok(VmmResponse::Empty)
            }
            ActionType::PowerButton => {
                self.running_machine("vmr:PowerButton")?.press_power_button();
                Ok(VmmResponse::Empty)
            }
        }
    }

    fn running_machine(&self, what: &'static str) -> Result<&RunningMachine, ApiError> {
        self.running.as_ref().ok_or(ApiError::WrongState { what, when: "before the VM has started" })
    }

    fn pause(&mut self) -> ApiResult {
        let m = self.running_machine("Pausing the VM")?;
        if !m.is_paused() {
            m.pause().map_err(|e| ApiError::from_vmm(&e))?;
        }
        Ok(VmmResponse::Empty)
    }

    fn resume(&mut self) -> ApiResult {
        let m = self.running_machine("Resuming the VM")?;
        m.resume();
        Ok(VmmResponse::Empty)
    }

    /// The configuration the machine is built from: vmr's [`VmConfig`] with the drives (root
    /// first, with `root=` on the command line as Firecracker adds it) and network cards.
    fn effective_config(&self) -> Result<VmConfig, ApiError> {
        if !self.boot_source {
            return Err(ApiError::Start("no boot source: PUT /boot-source first".into()));
        }
        let mut config = self.config.clone();
        config.virtio.disks = self.drives.iter().map(|e| e.disk.clone()).collect();
        config.virtio.nets = self.nets.iter().map(|e| e.net.clone()).collect();
        if let Some(root) = self.drives.iter().find(|e| e.root) {
            let device = match &root.partuuid {
                Some(uuid) => format!("PARTUUID={uuid}"),
                None => "/dev/vda".into(),
            };
            let mode = if root.disk.read_only { "ro" } else { "rw" };
            if !config.cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
                config.cmdline = format!("{} root={device} {mode}", config.cmdline).trim().to_string();
            }
        }
        Ok(config)
    }

    /// `InstanceStart`.
    fn start(&mut self) -> ApiResult {
        if self.running.is_some() {
            return Err(ApiError::WrongState { what: "InstanceStart", when: "after the VM has started" });
        }
        let config = self.effective_config()?;
        self.boot(&config).map_err(|e| ApiError::Start(crate::error_chain(&e)))?;
        Ok(VmmResponse::Empty)
    }

    /// Builds the machine from `config` and starts its vCPUs.
    fn boot(&mut self, config: &VmConfig) -> Result<(), VmmError> {
        let boot_started = Instant::now();
        config.validate()?;
        // Kernel, initrd and sizes are checked before a backend is opened, so bad input gets
        // its own error whatever the host offers.
        let prepared = PreparedBoot::new(config)?;
        let load = boot_started.elapsed();
        if self.backend.is_none() {
            let b = select_backend(config.accel)?;
            eprintln!("vmr: accelerator: {} ({})", b.hypervisor.name(), b.reason);
            self.backend = Some(b);
        }
        let hv = self.backend.as_ref().map(|b| b.hypervisor.clone()).ok_or(VmmError::NoBackend)?;
        let machine = Machine::build(config, prepared, hv.as_ref(), &self.events)?;
        let quit = self.events.quit_notifier();
        let console = self.console.get_or_insert_with(|| console::ConsoleInput::start(quit));
        self.raw_mode.get_or_insert_with(console::RawModeGuard::new);
        console.set_sink(Some(machine.console_sink()));
        let stats = machine.stats();
        self.running = Some(machine.start(&self.events)?);
        let times = crate::stats::BootTimes {
            start: crate::stats::since_process_start(),
            load,
            setup: boot_started.elapsed(),
            ..Default::default()
        };
        self.boot_stats = Some((stats, times, Instant::now()));
        Ok(())
    }

    /// Stops the running machine, if any, and prints its statistics line with `VMR_STATS=1`.
    fn stop_machine(&mut self) {
        if let Some(m) = self.running.take() {
            m.stop();
        }
        if let Some((stats, mut times, run_started)) = self.boot_stats.take() {
            if crate::stats::enabled() {
                times.run = run_started.elapsed();
                // `\r`: the terminal may still be in raw mode.
                eprintln!("{}\r", stats.line(&times));
            }
        }
    }

    /// Counter totals of the devices, by the ids the API gave them (`drive_id`, `iface_id`;
    /// `disk0`, `net0`, ... for devices from the command line) and `vsock0`.
    fn device_counters(&self) -> std::collections::BTreeMap<String, crate::metrics::DeviceCounters> {
        let mut counters = crate::metrics::metrics().device_counters();
        let renames = self.drives.iter().enumerate().map(|(i, e)| (format!("disk{i}"), &e.id));
        let renames = renames.chain(self.nets.iter().enumerate().map(|(i, e)| (format!("net{i}"), &e.id)));
        let mut out = std::collections::BTreeMap::new();
        for (registered, id) in renames {
            if let Some(c) = counters.remove(&registered) {
                out.insert(id.clone(), c);
            }
        }
        // vsock0, and nothing of a device the configuration no longer names.
        out.extend(counters.into_iter().filter(|(k, _)| k.starts_with("vsock")));
        out
    }

    /// Firecracker's view of the whole configuration (`GET /vm/config`).
    pub fn full_config(&self) -> FullVmConfig {
        let boot_source = self.boot_source.then(|| BootSource {
            kernel_image_path: self.config.kernel.display().to_string(),
            boot_args: Some(self.config.cmdline.clone()),
            initrd_path: self.config.initrd.as_ref().map(|p| p.display().to_string()),
        });
        FullVmConfig {
            boot_source,
            machine_config: Some(self.machine_config()),
            drives: self.drives.iter().enumerate().map(|(i, e)| self.fc_drive(i, e)).collect(),
            network_interfaces: self
                .nets
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let live = self.running.as_ref().and_then(|m| m.net_limiters(i));
                    let (rx, tx) = match live {
                        Some((rx, tx)) => (rx.config(), tx.config()),
                        None => (e.net.rx_rate_limiter, e.net.tx_rate_limiter),
                    };
                    NetworkInterface {
                        iface_id: e.id.clone(),
                        host_dev_name: e.net.tap.clone(),
                        guest_mac: e.net.mac.map(format_mac),
                        rx_rate_limiter: shown_limiter(&rx),
                        tx_rate_limiter: shown_limiter(&tx),
                    }
                })
                .collect(),
            vsock: self.config.virtio.vsock.as_ref().map(|v| Vsock {
                guest_cid: v.cid as u32,
                uds_path: v.socket.display().to_string(),
                vsock_id: None,
            }),
            entropy: self.config.virtio.rng.then(Entropy::default),
            logger: self.logger.clone(),
            ..FullVmConfig::default()
        }
    }

    /// A drive as `GET /vm/config` shows it; a running drive's limiter is read from the device.
    fn fc_drive(&self, index: usize, e: &DriveEntry) -> Drive {
        let live = self.running.as_ref().and_then(|m| m.disk_limiter(index)).map(|h| h.config());
        Drive {
            drive_id: e.id.clone(),
            path_on_host: Some(e.disk.path.display().to_string()),
            is_root_device: e.root,
            is_read_only: Some(e.disk.read_only),
            partuuid: e.partuuid.clone(),
            cache_type: e.cache_type.clone(),
            io_engine: e.io_engine.clone(),
            rate_limiter: shown_limiter(&live.unwrap_or(e.disk.rate_limiter)),
            socket: None,
        }
    }

    /// Applies a Firecracker config file (the same requests the API would send, in the order
    /// Firecracker applies them).
    pub fn apply_config_file(&mut self, file: FullVmConfig) -> Result<(), ApiError> {
        if file.mmds_config.is_some() {
            return Err(ApiError::NotServed("mmds-config (MMDS)"));
        }
        if file.balloon.is_some() {
            return Err(ApiError::NotServed("balloon"));
        }
        if file.cpu_config.is_some() {
            return Err(ApiError::NotServed("cpu-config"));
        }
        let mut requests = Vec::new();
        requests.extend(file.logger.map(VmmRequest::PutLogger));
        requests.extend(file.metrics.map(VmmRequest::PutMetrics));
        requests.extend(file.machine_config.map(VmmRequest::PutMachineConfig));
        let boot = file
            .boot_source
            .ok_or_else(|| ApiError::InvalidValue("the config file has no boot-source".into()))?;
        requests.push(VmmRequest::PutBootSource(boot));
        requests.extend(file.drives.into_iter().map(VmmRequest::PutDrive));
        requests.extend(file.network_interfaces.into_iter().map(VmmRequest::PutNetworkInterface));
        requests.extend(file.vsock.map(VmmRequest::PutVsock));
        requests.extend(file.entropy.map(VmmRequest::PutEntropy));
        for request in requests {
            self.handle_request(request)?;
        }
        Ok(())
    }
}

fn drive_entry(i: usize, disk: &DiskConfig) -> DriveEntry {
    DriveEntry {
        id: format!("disk{i}"),
        disk: disk.clone(),
        root: false,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Ids name devices in paths and logs: Firecracker allows alphanumerics and `_`; vmr also `-`.
fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidValue(format!("{field} '{id}': expected 1 to 64 letters, digits, '_' or '-'")))
    }
}

/// A limiter given at configuration time, checked (refill times) for the device.
fn checked_limiter(
    limiter: Option<vmr_virtio::rate_limiter::RateLimiterConfig>,
) -> Result<vmr_virtio::rate_limiter::RateLimiterConfig, ApiError> {
    let limiter = limiter.unwrap_or_default();
    limiter.validate().map_err(|e| ApiError::InvalidValue(e.to_string()))?;
    Ok(limiter)
}

/// The limiter a `PATCH` leaves in force, or `None` if it changes nothing. As in Firecracker,
/// a bucket the update names replaces the current one (size 0 removes the limit) and a bucket it
/// leaves out stays as it is.
fn patched_limiter(
    current: &vmr_virtio::rate_limiter::RateLimiterConfig,
    update: Option<vmr_virtio::rate_limiter::RateLimiterConfig>,
) -> Result<Option<vmr_virtio::rate_limiter::RateLimiterConfig>, ApiError> {
    let Some(update) = update else { return Ok(None) };
    let enabled = |b: Option<vmr_virtio::rate_limiter::TokenBucketConfig>| b.filter(|b| b.size > 0);
    let limiter = vmr_virtio::rate_limiter::RateLimiterConfig {
        bandwidth: if update.bandwidth.is_some() { enabled(update.bandwidth) } else { current.bandwidth },
        ops: if update.ops.is_some() { enabled(update.ops) } else { current.ops },
    };
    limiter.validate().map_err(|e| ApiError::InvalidValue(e.to_string()))?;
    Ok(Some(limiter))
}

/// A limiter as `GET /vm/config` shows it: none when nothing is limited.
fn shown_limiter(
    limiter: &vmr_virtio::rate_limiter::RateLimiterConfig,
) -> Option<vmr_virtio::rate_limiter::RateLimiterConfig> {
    (*limiter != Default::default()).then_some(*limiter)
}

/// The entropy device has no limiter: a limit that would do something is refused rather than
/// ignored.
fn reject_rate_limiter(
    limiter: &Option<vmr_virtio::rate_limiter::RateLimiterConfig>,
    what: &'static str,
) -> Result<(), ApiError> {
    let limits = |b: &Option<vmr_virtio::rate_limiter::TokenBucketConfig>| b.is_some_and(|b| b.size > 0);
    match limiter {
        Some(l) if limits(&l.bandwidth) || limits(&l.ops) => Err(ApiError::NotSupportedYet(what)),
        _ => Ok(()),
    }
}

fn not_attached(what: &str, id: &str) -> ApiError {
    ApiError::InvalidValue(format!("{what} {id} is not attached to the running VM"))
}

mod snapshot;
#[cfg(test)]
mod tests;
