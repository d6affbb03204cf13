//! The VMM's control API: typed requests and answers ([`VmmRequest`], [`VmmResponse`],
//! [`ApiError`]) that [`crate::Vmm`] handles, and the adapters that produce them: the
//! Firecracker-compatible HTTP router ([`router`]) and its Unix-socket server ([`server`]).

pub mod client;
mod counting;
#[doc(hidden)]
pub mod fuzzing;
pub mod router;
pub mod schema;
pub mod server;

use thiserror::Error;

use crate::VmmError;
use schema::*;

/// What a client can ask the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmRequest {
    GetInstanceInfo,
    GetVersion,
    GetVmConfig,
    GetMachineConfig,
    /// vmr extension: the totals of every device's counters (`GET /vmr/counters`).
    GetDeviceCounters,
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(DriveUpdate),
    PutNetworkInterface(NetworkInterface),
    PatchNetworkInterface(NetworkInterfaceUpdate),
    PutVsock(Vsock),
    PutEntropy(Entropy),
    PutLogger(Logger),
    PutMetrics(Metrics),
    Action(ActionType),
    Pause,
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmResponse {
    /// Done; nothing to return (HTTP 204).
    Empty,
    InstanceInfo(InstanceInfo),
    Version(VersionInfo),
    MachineConfig(MachineConfig),
    VmConfig(Box<FullVmConfig>),
    /// Counter totals by device id (`disk0`, `net0`, `vsock0`).
    DeviceCounters(std::collections::BTreeMap<String, crate::metrics::DeviceCounters>),
}

/// Why a request was refused. Every variant is one line for `fault_message`.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("Invalid request method and/or path: {method} {path}")]
    InvalidPath { method: String, path: String },
    #[error("{0}")]
    BadBody(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0} is not served by vmr (Firecracker has it; vmr does not yet)")]
    NotServed(&'static str),
    #[error("{0} is not supported yet")]
    NotSupportedYet(&'static str),
    #[error("{what} is not allowed {when}")]
    WrongState { what: &'static str, when: &'static str },
    #[error("{0}")]
    InvalidValue(String),
    #[error("cannot start the VM: {0}")]
    Start(String),
    #[error("{0}")]
    Vmm(String),
    #[error("the VMM is shutting down")]
    Gone,
}

impl ApiError {
    /// The HTTP status Firecracker answers this with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::Gone => 503,
            _ => 400,
        }
    }

    pub(crate) fn from_vmm(e: &VmmError) -> Self {
        ApiError::Vmm(crate::error_chain(e))
    }
}

pub type ApiResult = Result<VmmResponse, ApiError>;

/// A request on its way to the VMM thread, with where to send the answer.
pub struct ApiCall {
    pub request: VmmRequest,
    pub reply: Box<dyn FnOnce(ApiResult) + Send>,
}

impl std::fmt::Debug for ApiCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCall").field("request", &self.request).finish_non_exhaustive()
    }
}

/// Sends requests to a running [`crate::Vmm`] from any thread.
#[derive(Clone)]
pub struct VmmHandle {
    tx: std::sync::mpsc::Sender<crate::machine::VmEvent>,
}

impl VmmHandle {
    pub(crate) fn new(tx: std::sync::mpsc::Sender<crate::machine::VmEvent>) -> Self {
        VmmHandle { tx }
    }

    /// Queues `request`; `reply` is called on the VMM thread with the answer (or with
    /// [`ApiError::Gone`] here if the VMM has ended).
    pub fn send(&self, request: VmmRequest, reply: Box<dyn FnOnce(ApiResult) + Send>) {
        let call = ApiCall { request, reply };
        if let Err(std::sync::mpsc::SendError(event)) = self.tx.send(crate::machine::VmEvent::Api(call)) {
            if let crate::machine::VmEvent::Api(call) = event {
                (call.reply)(Err(ApiError::Gone));
            }
        }
    }

    /// Sends `request` and waits for the answer (for tests and the command line).
    pub fn call(&self, request: VmmRequest) -> ApiResult {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(request, Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap_or(Err(ApiError::Gone))
    }
}

/// (METHOD, path) pairs of an OpenAPI document in the layout of docs/api/*.yaml: paths are the
/// keys indented by two spaces under `paths:`, methods the keys indented by four under them.
/// The tests that check a router against its document (vmr's and vmrd's) read it with this.
pub fn openapi_routes(doc: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let (mut in_paths, mut path) = (false, String::new());
    for line in doc.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "put", "patch", "post", "delete"].contains(&m) {
                routes.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}
