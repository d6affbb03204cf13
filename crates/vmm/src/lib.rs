//! The VMM: turns a [`VmConfig`] into a running machine and reports how it ended.
//!
//! Threads: the caller's thread builds the machine and then waits for [`VmEvent`]s; one thread
//! per vCPU runs guest code; a console thread reads stdin; a signal thread turns SIGINT/SIGTERM
//! into events. See `docs/ARCHITECTURE.md`.

mod accel;
pub mod api;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod devices;
mod error;
pub mod logger;
mod machine;
pub mod metrics;
mod pause;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
mod vcpu;
mod vmm;

pub use accel::{select_backend, BackendChoice};
pub use config::{Accel, RebootPolicy, VmConfig};
pub use error::VmmError;
pub use machine::Machine;
pub use vmm::{version_line, Vmm, FIRECRACKER_COMPAT_VERSION, VERSION};

/// The kernel command line used when the user gives a kernel but no command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Most vCPUs the API accepts (Firecracker's limit).
pub const MAX_API_VCPUS: u32 = 32;

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

/// Runs the VM described by `config` until it ends, applying the reboot policy: `vmr run`
/// without an API socket, a thin adapter over [`Vmm`].
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    config.validate()?;
    confine()?;
    let mut vmm = Vmm::from_config(config)?;
    vmm.start_configured()?;
    vmm.run()
}

/// Applies the main thread's seccomp filter (if filtering is on) and has every thread started
/// from here on apply its role's, stacked on main's. Every mode calls it once its input is
/// read: `vmr run` (with or without `--api-sock`), `vmr --api-sock`, `vmr --config-file`.
pub fn confine() -> Result<(), VmmError> {
    seccomp::install_thread_hook();
    seccomp::try_apply(seccomp::Role::Main)?;
    Ok(())
}

/// "outer: inner: innermost", skipping a source whose text the outer message already holds.
pub fn error_chain(e: &dyn std::error::Error) -> String {
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
