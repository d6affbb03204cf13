//! Backend-neutral seam between the machine model and whatever executes guest code.
//!
//! The machine model (`vmr-arch`, `vmr-devices`, `vmr-vmm`) only ever sees the traits and plain
//! state structs defined here. Backends (`vmr-kvm` for Linux KVM, `vmr-emu` for the software CPU)
//! implement them. No backend type appears in a signature of this crate.
//!
//! Port I/O and MMIO reach devices through [`VmOps`], which the backend calls while it handles an
//! access (KVM on an exit, the software CPU in the middle of an instruction), so [`VcpuExit`]
//! stays small.

mod error;
mod persist;
mod state;
pub mod thread_hooks;
mod traits;

pub use error::{HypervisorError, Result};
pub use persist::Persist;
pub use state::*;
pub use traits::*;

/// Re-exported so that every crate uses the same pinned vm-memory.
pub use vm_memory;

/// Guest physical memory as every crate of vmr sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
