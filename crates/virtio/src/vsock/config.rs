//! The vsock device's options, plain typed (the `--vsock` text is parsed in vmr-vmm's
//! configuration, `vmr_vmm::devices::options`).

use std::path::PathBuf;

/// One vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0-2 are reserved, `u32::MAX` is VMADDR_CID_ANY).
    pub cid: u64,
    /// The host Unix socket vmr listens on for `CONNECT <port>`; guest-initiated connections to
    /// host port P go to `<socket>_P`.
    pub socket: PathBuf,
}
