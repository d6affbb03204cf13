//! Command-line parsing and dispatch.

use std::error::Error;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmr_image::{PullOptions, StderrProgress};
use vmr_vmm::api::schema::FullVmConfig;
use vmr_vmm::api::server::ApiServer;
use vmr_vmm::config::{parse_memory_size, parse_size};
use vmr_vmm::devices::options::{parse_disk, parse_net, parse_vsock};
use vmr_vmm::devices::vmr_block::{self, ImageFormat};
use vmr_vmm::devices::{DiskConfig, NetConfig, VirtioConfig, VsockConfig};
use vmr_vmm::{Accel, ExitReason, RebootPolicy, VmConfig, Vmm, EXIT_ERROR};

#[derive(Parser)]
#[command(
    name = "vmr",
    disable_version_flag = true,
    about = "Run Linux virtual machines on KVM, or on vmr's software CPU",
    after_help = "Without a command, vmr is a VMM served over the API: `vmr --api-sock PATH` waits to be \
                  configured (Firecracker's API), `vmr --config-file FILE` boots from Firecracker's config file."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    service: ServiceArgs,
    /// vmrd's socket, for the VM, pool and volume commands (default: $VMRD_SOCKET, else
    /// vmrd.sock in the state directory).
    #[arg(long, global = true, value_name = "PATH")]
    connect: Option<PathBuf>,
    /// Print the version in Firecracker's form and exit: `vmr v<Firecracker API level>+vmr.<vmr version>`.
    #[arg(short = 'V', long)]
    version: bool,
}

/// The VMM as a service (no command): Firecracker's command line.
#[derive(clap::Args)]
struct ServiceArgs {
    /// Serve Firecracker's API on this Unix socket (it must not exist).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Boot from a JSON file in Firecracker's config-file schema.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// With --config-file: serve no API.
    #[arg(long, conflicts_with = "api_sock", requires = "config_file")]
    no_api: bool,
    /// The instance id `GET /` reports.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Execution backend: auto, kvm or emu.
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    accel: Accel,
    /// Seccomp filters on every vmr thread (the API server's included): on (default) or off.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    seccomp: String,
    /// Firecracker's spelling of --seccomp=off.
    #[arg(long, conflicts_with = "seccomp")]
    no_seccomp: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM with its serial console on this terminal (Ctrl-A x quits).
    ///
    /// Exit codes: 0 guest powered off (or Ctrl-A x), 1 error, 2 guest rebooted,
    /// 3 guest crashed (triple fault or backend error), 128+N stopped by signal N.
    Run(RunArgs),
    /// Manage guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Control a running vmr through its API socket.
    Ctl(crate::ctl::CtlArgs),
    /// Run vmrd: keep VM definitions and storage pools, run each VM as its own vmr process.
    #[command(alias = "vmrd")]
    Daemon(crate::manage::DaemonArgs),
    #[command(flatten)]
    Manage(crate::manage::Verb),
    /// Restore a VM from a snapshot (`vmr ctl snapshot create`, `PUT /snapshot/create`) and
    /// run it with its serial console on this terminal. Exit codes as for `vmr run`.
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The snapshot's state file.
    #[arg(long, value_name = "FILE")]
    snapshot: PathBuf,
    /// The snapshot's memory file (mapped privately: the file is never written).
    #[arg(long, value_name = "FILE")]
    mem: PathBuf,
    /// Run the guest at once; otherwise it waits paused for `vmr ctl resume` (needs --api-sock).
    #[arg(long)]
    resume: bool,
    /// Serve Firecracker's API for the restored VM on a Unix socket (it must not exist).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Execution backend: auto, kvm or emu (KVM cannot restore snapshots yet).
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    accel: Accel,
    /// Seccomp filters on every vmr thread: on (default) or off.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    seccomp: String,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Assemble the default guest (Debian kernel + busybox initramfs) into the cache.
    Pull(PullArgs),
    /// Create a disk image: raw, qcow2, or a qcow2 overlay over a backing image.
    Create(CreateArgs),
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Image format: raw or qcow2 (default: qcow2 with --backing, raw otherwise).
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    format: Option<ImageFormat>,
    /// Backing image of a qcow2 overlay (a relative name is relative to FILE's folder).
    #[arg(short = 'b', long = "backing", value_name = "BASE")]
    backing: Option<PathBuf>,
    /// The new image (must not exist).
    file: PathBuf,
    /// Virtual size in bytes, or with a K, M, G or T suffix; default with --backing: its size.
    #[arg(value_parser = parse_image_size, required_unless_present = "backing")]
    size: Option<u64>,
}

#[derive(clap::Args)]
struct PullArgs {
    /// Rebuild even if the image is cached.
    #[arg(long)]
    force: bool,
    /// Take the .deb packages from this directory instead of apt-get.
    #[arg(long, value_name = "DIR")]
    from_debs: Option<PathBuf>,
    /// Cache directory (default: ~/.cache/vmr/images/default).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel: ELF vmlinux (PVH entry) or bzImage. Default: the default guest image.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (initramfs).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u32,
    /// Guest memory, e.g. 512M or 4G (MiB without a suffix).
    #[arg(long, default_value = "512M", value_parser = parse_memory_size, value_name = "SIZE")]
    memory: u64,
    /// Execution backend: auto, kvm or emu.
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    accel: Accel,
    /// What a guest reboot does: exit (code 2) or restart the VM.
    #[arg(long, default_value = "exit", value_name = "POLICY")]
    reboot: RebootPolicy,
    /// A virtio disk: path=FILE[,readonly=on][,format=raw|qcow2][,cache=writeback|none][,serial=ID] (repeatable;
    /// the first is the guest's /dev/vda).
    #[arg(long = "disk", value_name = "OPTIONS", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// A virtio network card on a tap: tap=NAME[,mac=52:54:00:12:34:56] (repeatable).
    #[arg(long = "net", value_name = "OPTIONS", value_parser = parse_net)]
    nets: Vec<NetConfig>,
    /// A virtio-vsock device: cid=N,socket=PATH (Firecracker's convention: host clients send
    /// "CONNECT <port>" on PATH; guest connections to host port P go to PATH_P).
    #[arg(long, value_name = "OPTIONS", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// A virtio entropy device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Also serve Firecracker's API for this VM on a Unix socket (it must not exist).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Append Firecracker-style metrics (one JSON line of counter changes) to PATH every 60 s
    /// and when the VM ends.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Seccomp filters on every vmr thread: on (default) or off (for debugging; a syscall
    /// outside a thread's list otherwise stops vmr with a line naming thread and syscall).
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    seccomp: String,
    /// Pass the kernel command line exactly as given, without vmr's hints (`pci=off`).
    #[arg(long)]
    no_cmdline_hints: bool,
}

use vmr_vmm::DEFAULT_CMDLINE;

/// Parses the command line, runs the command, returns the process exit code.
pub fn main() -> i32 {
    // Installed as `vmrd` (a link to vmr): the daemon.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == "vmrd") {
        argv.insert(1, "daemon".into());
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; everything else is exit code 1 (2 means reboot).
            return if e.use_stderr() { EXIT_ERROR } else { 0 };
        }
    };
    if cli.version {
        println!("{}", vmr_vmm::version_line());
        return 0;
    }
    let result = match cli.command {
        Some(Command::Run(args)) => run(args),
        Some(Command::Image(ImageCommand::Pull(args))) => image_pull(args),
        Some(Command::Image(ImageCommand::Create(args))) => image_create(args),
        Some(Command::Ctl(args)) => crate::ctl::run(args),
        Some(Command::Daemon(args)) => crate::manage::daemon(args),
        Some(Command::Manage(verb)) => crate::manage::run(verb, cli.connect),
        Some(Command::Restore(args)) => restore(args),
        None => service(cli.service),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            vmr_vmm::console::restore_terminal();
            eprintln!("vmr: error: {}", error_chain(e.as_ref()));
            EXIT_ERROR
        }
    }
}

fn run(args: RunArgs) -> Result<i32, Box<dyn Error>> {
    let (kernel, initrd, default_cmdline) = match args.kernel {
        Some(kernel) => (kernel, args.initrd, DEFAULT_CMDLINE.to_string()),
        None => {
            // The default guest, assembled on first use.
            let image = vmr_image::pull(&PullOptions::default(), &StderrProgress::new())?;
            (image.kernel, args.initrd.or(Some(image.initrd)), image.cmdline)
        }
    };
    let config = VmConfig {
        kernel,
        initrd,
        cmdline: args.cmdline.unwrap_or(default_cmdline),
        vcpus: args.cpus,
        memory: args.memory,
        accel: args.accel,
        reboot: args.reboot,
        virtio: VirtioConfig { disks: args.disks, nets: args.nets, vsock: args.vsock, rng: args.rng },
        cmdline_hints: !args.no_cmdline_hints,
    };
    vmr_vmm::seccomp::set_enabled(args.seccomp == "on");
    if let Some(path) = &args.metrics_path {
        vmr_vmm::metrics::metrics().init(path)?;
        vmr_vmm::metrics::start_periodic_flush()?;
    }
    let reason = match &args.api_sock {
        None => vmr_vmm::run(&config)?,
        Some(sock) => {
            config.validate()?;
            vmr_vmm::confine()?;
            let mut vmm = Vmm::from_config(&config)?;
            let _server = ApiServer::start(sock, vmm.handle())?;
            vmm.start_configured()?;
            vmm.run()?
        }
    };
    if args.metrics_path.is_some() {
        vmr_vmm::metrics::metrics().flush()?;
    }
    report_end(&reason);
    Ok(reason.exit_code())
}

/// `vmr restore`: a VMM whose first request is the snapshot load.
fn restore(args: RestoreArgs) -> Result<i32, Box<dyn Error>> {
    if !args.resume && args.api_sock.is_none() {
        return Err("without --resume the restored VM waits paused: give --api-sock to resume it".into());
    }
    vmr_vmm::seccomp::set_enabled(args.seccomp == "on");
    vmr_vmm::confine()?;
    let mut vmm = Vmm::new(args.accel, None)?;
    let load = vmr_vmm::api::schema::SnapshotLoadParams {
        snapshot_path: args.snapshot.display().to_string(),
        mem_file_path: Some(args.mem.display().to_string()),
        resume_vm: args.resume,
        ..Default::default()
    };
    vmm.handle_request(vmr_vmm::api::VmmRequest::LoadSnapshot(load))?;
    let _server = match &args.api_sock {
        Some(sock) => Some(ApiServer::start(sock, vmm.handle())?),
        None => None,
    };
    let reason = vmm.run()?;
    report_end(&reason);
    Ok(reason.exit_code())
}

/// `vmr --api-sock PATH` and `vmr --config-file FILE`: the VMM driven by Firecracker's API or
/// config file.
fn service(args: ServiceArgs) -> Result<i32, Box<dyn Error>> {
    if args.api_sock.is_none() && args.config_file.is_none() {
        return Err(
            "nothing to do: give a command (see vmr --help), --api-sock PATH or --config-file FILE".into()
        );
    }
    let file = match &args.config_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file: FullVmConfig =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(file)
        }
        None => None,
    };
    vmr_vmm::seccomp::set_enabled(args.seccomp == "on" && !args.no_seccomp);
    vmr_vmm::confine()?;
    let mut vmm = Vmm::new(args.accel, args.id)?;
    if let Some(file) = file {
        let name = args.config_file.as_deref().unwrap_or(std::path::Path::new("")).display().to_string();
        vmm.apply_config_file(file).map_err(|e| format!("{name}: {e}"))?;
    }
    let _server = match &args.api_sock {
        Some(sock) => Some(ApiServer::start(sock, vmm.handle())?),
        None => None,
    };
    if args.config_file.is_some() {
        vmm.start_configured()?;
    }
    let reason = vmm.run()?;
    report_end(&reason);
    Ok(reason.exit_code())
}

fn report_end(reason: &ExitReason) {
    vmr_vmm::console::restore_terminal();
    match reason {
        ExitReason::Poweroff | ExitReason::ConsoleQuit => {}
        ExitReason::Reboot => eprintln!("vmr: guest rebooted (exit code {})", reason.exit_code()),
        ExitReason::Crash(report) => eprintln!("vmr: guest crashed: {report}"),
        ExitReason::Signal(sig) => eprintln!("vmr: stopped by signal {sig}"),
    }
}

fn image_pull(args: PullArgs) -> Result<i32, Box<dyn Error>> {
    let opts =
        PullOptions { dir: args.dir, from_debs: args.from_debs, force: args.force, ..Default::default() };
    let image = vmr_image::pull(&opts, &StderrProgress::new())?;
    println!("kernel  {}", image.kernel.display());
    println!("initrd  {}", image.initrd.display());
    println!("cmdline {}", image.cmdline);
    Ok(0)
}

fn image_create(args: CreateArgs) -> Result<i32, Box<dyn Error>> {
    let default = if args.backing.is_some() { ImageFormat::Qcow2 } else { ImageFormat::Raw };
    let format = args.format.unwrap_or(default);
    vmr_block::create(&args.file, format, args.size, args.backing.as_deref())?;
    Ok(0)
}

/// An image size: bytes, or a number with a K, M, G or T suffix (powers of 1024).
fn parse_image_size(text: &str) -> Result<u64, String> {
    parse_size(text, 0)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("'{text}' is not a size like 10G, 512M or 1048576"))
}

fn error_chain(e: &dyn Error) -> String {
    vmr_vmm::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes() {
        assert_eq!(parse_image_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_image_size("64M"), Ok(64 << 20));
        assert_eq!(parse_image_size("10G"), Ok(10 << 30));
        assert_eq!(parse_image_size("2GiB"), Ok(2 << 30));
        for bad in ["", "0", "1.5G", "12Q", "-1", "99999999999T"] {
            assert!(parse_image_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_options_reach_the_vm_config() {
        let cli = Cli::try_parse_from([
            "vmr",
            "run",
            "--kernel",
            "k",
            "--disk",
            "path=a.img,readonly=on",
            "--disk",
            "path=b.qcow2",
            "--net",
            "tap=tap0",
            "--rng",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else { panic!("not run") };
        assert_eq!(args.disks.len(), 2);
        assert!(args.disks[0].read_only);
        assert_eq!(args.nets[0].tap, "tap0");
        assert!(args.rng);
        assert!(!args.no_cmdline_hints, "hints are on by default");
        let cli = Cli::try_parse_from(["vmr", "run", "--kernel", "k", "--no-cmdline-hints"]).unwrap();
        let Some(Command::Run(args)) = cli.command else { panic!("not run") };
        assert!(args.no_cmdline_hints);
        let err = Cli::try_parse_from(["vmr", "run", "--disk", "readonly=on"]).err().unwrap().to_string();
        assert!(err.contains("--disk needs path=FILE"), "{err}");
    }

    #[test]
    fn seccomp_and_metrics_options() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["vmr", "run", "--kernel", "k"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let Some(Command::Run(args)) = parse(&[]).unwrap().command else { panic!("not run") };
        assert_eq!((args.seccomp.as_str(), args.metrics_path), ("on", None));
        let Some(Command::Run(args)) = parse(&["--seccomp=off", "--metrics-path", "m.json"]).unwrap().command
        else {
            panic!("not run")
        };
        assert_eq!((args.seccomp.as_str(), args.metrics_path), ("off", Some(PathBuf::from("m.json"))));
        assert!(parse(&["--seccomp=maybe"]).is_err());
        let err = parse(&["--disk", "path=a.img,bw=fast"]).err().unwrap().to_string();
        assert!(err.contains("bw must be a rate per second"), "{err}");
    }

    #[test]
    fn image_create_needs_a_size_or_a_backing_file() {
        assert!(Cli::try_parse_from(["vmr", "image", "create", "x.img"]).is_err());
        assert!(Cli::try_parse_from(["vmr", "image", "create", "-b", "base.raw", "x.qcow2"]).is_ok());
        assert!(Cli::try_parse_from(["vmr", "image", "create", "-f", "qcow2", "x.qcow2", "1G"]).is_ok());
    }
}
