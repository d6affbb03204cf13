//! The VMM: turns a [`VmConfig`] into a running machine and reports how it ended.
//!
//! Threads: the caller's thread builds the machine and then waits for [`VmEvent`]s; one thread
//! per vCPU runs guest code; a console thread reads stdin; a signal thread turns SIGINT/SIGTERM
//! into events. See `docs/ARCHITECTURE.md`.

mod accel;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod devices;
mod error;
pub mod logger;
mod machine;
pub mod metrics;
pub mod seccomp;
pub mod stats;
mod vcpu;

pub use accel::{select_backend, BackendChoice};
pub use config::{Accel, RebootPolicy, VmConfig};
pub use error::VmmError;
pub use machine::Machine;

/// vmr's exit code after a guest `poweroff` (or `Ctrl-A x`).
pub const EXIT_POWEROFF: i32 = 0;
/// vmr's exit code for an error of the VMM or of its input.
pub const EXIT_ERROR: i32 = 1;
/// vmr's exit code after a guest `reboot` with `--reboot exit` (the default).
pub const EXIT_REBOOT: i32 = 2;
/// vmr's exit code when the guest crashed the machine (triple fault, backend internal error).
pub const EXIT_GUEST_CRASH: i32 = 3;

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    Poweroff,
    /// The guest rebooted (and the policy was to exit).
    Reboot,
    /// The guest crashed the machine; the text names the vCPU, the cause and its registers.
    Crash(String),
    /// vmr was asked to stop by this signal.
    Signal(i32),
    /// The user typed the console escape `Ctrl-A x`.
    ConsoleQuit,
}

impl ExitReason {
    /// The process exit code documented in the README.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Poweroff | ExitReason::ConsoleQuit => EXIT_POWEROFF,
            ExitReason::Reboot => EXIT_REBOOT,
            ExitReason::Crash(_) => EXIT_GUEST_CRASH,
            ExitReason::Signal(sig) => 128 + sig,
        }
    }
}

/// Runs the VM described by `config` until it ends, applying the reboot policy.
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    config.validate()?;
    // Every thread from here on runs under its role's filter, stacked on main's.
    seccomp::install_thread_hook();
    seccomp::try_apply(seccomp::Role::Main)?;
    let events = machine::EventChannel::new()?;
    let mut backend: Option<BackendChoice> = None;
    let mut console: Option<console::ConsoleInput> = None;
    let mut _raw = None;
    loop {
        let boot_started = std::time::Instant::now();
        // Kernel, initrd and sizes are checked before a backend is opened, so bad input gets
        // its own error whatever the host offers.
        let prepared = machine::PreparedBoot::new(config)?;
        let load = boot_started.elapsed();
        let backend = match &backend {
            Some(b) => b,
            None => {
                let b = select_backend(config.accel)?;
                eprintln!("vmr: accelerator: {} ({})", b.hypervisor.name(), b.reason);
                backend.insert(b)
            }
        };
        let machine = Machine::build(config, prepared, backend.hypervisor.as_ref(), &events)?;
        let console = console.get_or_insert_with(|| console::ConsoleInput::start(events.quit_notifier()));
        _raw.get_or_insert_with(console::RawModeGuard::new);
        console.set_sink(Some(machine.console_sink()));
        let stats = machine.stats();
        let mut times = stats::BootTimes {
            start: stats::since_process_start(),
            load,
            setup: boot_started.elapsed(),
            ..Default::default()
        };
        let run_started = std::time::Instant::now();
        let reason = machine.run(&events)?;
        console.set_sink(None);
        if stats::enabled() {
            // `\r`: the terminal may still be in raw mode.
            times.run = run_started.elapsed();
            eprintln!("{}\r", stats.line(&times));
        }
        match (reason, config.reboot) {
            (ExitReason::Reboot, RebootPolicy::Restart) => {
                eprintln!("\r\nvmr: guest rebooted; restarting the VM\r");
                continue;
            }
            (reason, _) => return Ok(reason),
        }
    }
}
