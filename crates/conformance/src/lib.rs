//! Conformance tests for vmr's execution backends.
//!
//! Tiny hand-assembled guests ([`guests`]) run on every backend [`backends`] returns, through
//! the backend-neutral traits only, so each backend is held to the same exact register, port
//! I/O and MMIO results. Adding a backend is one line in [`backends`].
//!
//! A backend whose host support is absent (no `/dev/kvm`) is skipped with a printed reason; a
//! backend whose host support is present but broken fails the tests.

pub mod guests;
mod machine;
mod ops;

use std::path::Path;

use vmr_hypervisor::Hypervisor;

pub use machine::*;
pub use ops::{Access, PioHook, RecordingOps, DONE_PORT};

/// Every backend that can run on this host.
///
/// Panics if `/dev/kvm` exists but cannot be opened and used by vmr: that is a broken host or
/// a bug, not a reason to skip.
pub fn backends() -> Vec<Box<dyn Hypervisor>> {
    let mut list: Vec<Box<dyn Hypervisor>> = Vec::new();
    list.extend(kvm_backend());
    list.push(Box::new(vmr_emu::EmuHypervisor::new()));
    list
}

/// Something a conformance guest needs that not every backend has yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// PIC/IOAPIC/LAPIC emulation delivering external interrupts.
    InterruptControllers,
    /// SSE instructions.
    Sse,
}

/// Why `hv` cannot run a guest needing `need` yet, or None if it can. This is the list of the
/// software CPU's known gaps (crates/emu/README.md); each entry goes when the gap closes.
/// Every backend has everything today (the software CPU's interrupt controllers arrived);
/// the next gap gets a `(name, need)` arm here.
fn missing(_hv: &dyn Hypervisor, _need: Needs) -> Option<&'static str> {
    None
}

/// Like [`for_each_backend`], skipping (with a message) backends that lack something in `needs`.
pub fn for_each_backend_needing(name: &str, needs: &[Needs], test: impl Fn(&dyn Hypervisor)) {
    for_each_backend(name, |hv| match needs.iter().find_map(|&n| missing(hv, n)) {
        Some(why) => eprintln!("{name}: skipped on the {} backend: {why}", hv.name()),
        None => test(hv),
    });
}

fn kvm_backend() -> Option<Box<dyn Hypervisor>> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("kvm backend skipped: /dev/kvm does not exist on this host");
        return None;
    }
    match vmr_kvm::Kvm::new() {
        Ok(kvm) => Some(Box::new(kvm)),
        Err(e) => panic!("/dev/kvm exists but the kvm backend cannot use it: {e}"),
    }
}

/// Runs `test` on every backend, printing which; prints a skip notice if there is none.
pub fn for_each_backend(name: &str, test: impl Fn(&dyn Hypervisor)) {
    let list = backends();
    if list.is_empty() {
        eprintln!("{name}: skipped: no execution backend is available on this host");
    }
    for hv in &list {
        eprintln!("{name}: running on the {} backend", hv.name());
        test(hv.as_ref());
    }
}

/// A [`Machine`] on `hv`, or a panic naming the backend and the step that failed.
pub fn machine(hv: &dyn Hypervisor) -> Machine {
    Machine::new(hv).unwrap_or_else(|e| panic!("cannot set up a test machine: {e}"))
}
