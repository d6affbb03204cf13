//! A hook every thread that vmr's lower crates start (virtio device workers, the software
//! CPU's interrupt thread) calls first. The VMM points it at its seccomp filters; the crates
//! that start threads need not know about seccomp.

use std::sync::OnceLock;

static START_HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets the hook (once per process; later calls are ignored).
pub fn set_start_hook(hook: fn()) {
    let _ = START_HOOK.set(hook);
}

/// Called by a new thread before it does anything else.
pub fn thread_started() {
    if let Some(hook) = START_HOOK.get() {
        hook();
    }
}
