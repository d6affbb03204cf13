//! The vsock device as it takes its options (the `--vsock` text is parsed in vmr-vmm).

use std::path::PathBuf;

/// One `--vsock` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0-2 are reserved, `u32::MAX` is VMADDR_CID_ANY).
    pub cid: u64,
    /// The host Unix socket vmr listens on for `CONNECT <port>`; guest-initiated connections to
    /// host port P go to `<socket>_P`.
    pub socket: PathBuf,
}
