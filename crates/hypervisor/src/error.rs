use thiserror::Error;

/// Errors a backend reports through the neutral traits.
#[derive(Debug, Error)]
pub enum HypervisorError {
    /// The backend cannot be used on this host (missing device, no permission, unsuitable).
    #[error("{0}")]
    Unavailable(String),
    /// The backend lacks a capability vmr needs.
    #[error("the {backend} backend lacks a capability vmr needs: {what}")]
    MissingCapability { backend: &'static str, what: String },
    /// A request was out of range (a vCPU index, a memory slot, a register value).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An operation of the backend failed; `op` names it.
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl HypervisorError {
    /// Wraps an OS error with the name of the operation that failed.
    pub fn os(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        HypervisorError::Os { op, source: source.into() }
    }
}

pub type Result<T> = std::result::Result<T, HypervisorError>;
