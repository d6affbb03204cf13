//! vmrd: keeps VM definitions and storage pools in a state directory and runs each VM as its
//! own `vmr` process, supervised through the VM's API socket. Served on a Unix socket as a
//! REST/JSON API (`docs/api/vmrd.yaml`); the `vmr` CLI's virsh-like verbs are its client.

pub mod api;
mod api_nets;
mod api_pools;
pub mod def;
pub mod net;
pub mod pool;
pub mod state;
pub mod vm;
mod vms;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use state::default_state_dir;
pub use vms::{VmDisk, VmInfo, VmSummary};

/// One error type for the daemon; each kind maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// An unknown VM, pool or volume (404).
    #[error("{0}")]
    NotFound(String),
    /// A duplicate name, or an operation the current state forbids (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

/// How vmrd runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub state_dir: PathBuf,
    /// The API socket (default: `vmrd.sock` in the state directory).
    pub socket: Option<PathBuf>,
    /// The `vmr` binary VMs run with.
    pub vmr: PathBuf,
    /// Backend for VMs whose definition does not say.
    pub accel: String,
    /// A console log is rotated past this size.
    pub console_log_max: u64,
}

/// The daemon's shared state: the state directory and the lock every change takes, so that
/// concurrent clients cannot interleave two changes.
pub struct Daemon {
    pub opts: Options,
    pub state: state::StateDir,
    lock: Mutex<()>,
}

impl Daemon {
    pub fn open(opts: Options) -> Result<Arc<Daemon>, DaemonError> {
        let (state, recovered) = state::StateDir::open(&opts.state_dir)?;
        if recovered > 0 {
            tracing::info!("vmrd: finished or undid {recovered} interrupted operation(s)");
        }
        Ok(Arc::new(Daemon { opts, state, lock: Mutex::new(()) }))
    }

    /// Holds the state lock for one change.
    pub(crate) fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.opts.socket.clone().unwrap_or_else(|| self.state.socket())
    }
}

/// Runs vmrd until SIGTERM/SIGINT: serves the API, starts autostart VMs, rotates console logs.
/// VMs keep running when it ends.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    let daemon = Daemon::open(opts)?;
    let _instance = api::take_instance_lock(&daemon)?;
    let listener = api::bind(&daemon.socket_path())?;
    eprintln!("vmrd: serving {} (state in {})", daemon.socket_path().display(), daemon.state.root.display());
    let d = daemon.clone();
    std::thread::Builder::new().name("vmrd-autostart".into()).spawn(move || d.autostart_all())?;
    let d = daemon.clone();
    std::thread::Builder::new().name("vmrd-logs".into()).spawn(move || loop {
        d.rotate_console_logs();
        d.unplug_stopped();
        std::thread::sleep(Duration::from_secs(2));
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(api::serve(daemon.clone(), listener));
    let _ = std::fs::remove_file(daemon.socket_path());
    result
}
