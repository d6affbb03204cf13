//! Command-line parsing and dispatch.

use std::error::Error;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmr_image::{PullOptions, StderrProgress};
use vmr_vmm::config::parse_memory_size;
use vmr_vmm::{Accel, ExitReason, RebootPolicy, VmConfig, EXIT_ERROR};

#[derive(Parser)]
#[command(name = "vmr", version, about = "Run Linux virtual machines on KVM, or on vmr's software CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Assemble the default guest (Debian kernel + busybox initramfs) into the cache.
    Pull(PullArgs),
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
}

/// The kernel command line used when the user gives a kernel but no `--cmdline`.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Parses the command line, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; everything else is exit code 1 (2 means reboot).
            return if e.use_stderr() { EXIT_ERROR } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Image(ImageCommand::Pull(args)) => image_pull(args),
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
    };
    let reason = vmr_vmm::run(&config)?;
    vmr_vmm::console::restore_terminal();
    match &reason {
        ExitReason::Poweroff | ExitReason::ConsoleQuit => {}
        ExitReason::Reboot => eprintln!("vmr: guest rebooted (exit code {})", reason.exit_code()),
        ExitReason::Crash(report) => eprintln!("vmr: guest crashed: {report}"),
        ExitReason::Signal(sig) => eprintln!("vmr: stopped by signal {sig}"),
    }
    Ok(reason.exit_code())
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

/// "outer: inner: innermost", skipping a source whose text the outer message already holds.
fn error_chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
