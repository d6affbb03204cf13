use thiserror::Error;

/// Errors of the software CPU that are the VMM's problem, not the guest's.
#[derive(Debug, Error)]
pub enum EmuError {
    /// Guest memory could not be used (no regions, or a region without a host mapping).
    #[error("guest memory is unusable: {0}")]
    Memory(String),
    /// A register value handed in by the VMM is not representable.
    #[error("invalid vCPU state: {0}")]
    InvalidState(String),
}

impl From<EmuError> for vmr_hypervisor::HypervisorError {
    fn from(e: EmuError) -> Self {
        vmr_hypervisor::HypervisorError::Invalid(e.to_string())
    }
}
