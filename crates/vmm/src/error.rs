use thiserror::Error;

use crate::config::ConfigError;

/// Everything that can stop the VMM before or while it runs a guest.
#[derive(Debug, Error)]
pub enum VmmError {
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NoAccelerator(String),
    #[error(transparent)]
    Hypervisor(#[from] vmr_hypervisor::HypervisorError),
    #[error(transparent)]
    Arch(#[from] vmr_arch::ArchError),
    #[error("cannot place device {name}: {source}")]
    Device {
        name: &'static str,
        #[source]
        source: vmr_devices::BusError,
    },
    #[error("--cpus {requested}: this host's {backend} allows at most {max} vCPUs")]
    TooManyCpus { requested: u32, max: u32, backend: &'static str },
    #[error("--memory {} MiB: this host has only {} MiB of RAM", .requested >> 20, .host >> 20)]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("cannot start a {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Devices(#[from] crate::devices::DeviceError),
    #[error("the vCPUs did not pause within {0} s; the VM keeps running")]
    PauseTimeout(u64),
    #[error("no execution backend was opened")]
    NoBackend,
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Snapshot(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}
