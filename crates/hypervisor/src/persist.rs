//! Saving and restoring a component's state (snapshots now; live migration next).
//!
//! Each device implements [`Persist`] in a `persist.rs` of its own folder: `save` gives a plain
//! serde struct (no host handles in it), `restore` builds the component again from that struct
//! plus what only the host can give (guest memory, an opened image, a tap, an interrupt line).
//! Nothing here knows which backend runs the guest, so a state saved on one backend is the same
//! data another backend is given.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A component whose state leaves the process and comes back.
pub trait Persist: Sized {
    /// The plain state (serde; versioned by the snapshot section that carries it).
    type State: Serialize + DeserializeOwned;
    /// What the host provides on restore (handles that cannot be serialized).
    type Host;
    /// Why a state cannot be restored (hostile or inconsistent input: one line, never a panic).
    type Error: std::error::Error;

    /// The component's state now (the VM is paused: nothing changes it meanwhile).
    fn save(&self) -> Self::State;

    /// Builds the component from `state` and what the host gives.
    fn restore(host: Self::Host, state: &Self::State) -> Result<Self, Self::Error>;
}
