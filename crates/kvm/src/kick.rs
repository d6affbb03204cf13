//! Kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! A kick sets `immediate_exit` in the vCPU's `kvm_run` page (so the next `KVM_RUN` returns
//! `EINTR` at once) and, if the vCPU thread is inside `KVM_RUN` right now, sends it
//! [`kick_signal`] (a no-op handler) to force it out of guest mode, even out of an in-kernel HLT.
//! Both happen under one mutex that the vCPU also takes to record its thread and to consume the
//! kick, so no kick is lost between the two. When the vCPU is dropped it detaches the `kvm_run`
//! pointer under the same mutex: a kick after that is a no-op.
//!
//! `immediate_exit` is written from the kicking thread while the vCPU thread may be inside
//! kvm-ioctls' `run()`, which holds a `&mut kvm_run`; like Cloud Hypervisor and Firecracker we
//! accept that the kernel-shared page is written concurrently, and only ever touch this one
//! byte, atomically, from our side.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};
use vmr_hypervisor::VcpuKicker;

/// Offset from `SIGRTMIN` of the signal used to kick vCPU threads. The VMM must not use it for
/// anything else; `run()` unblocks it on the calling thread.
pub const KICK_SIGNAL_OFFSET: i32 = 1;

/// The signal sent to a vCPU thread to kick it out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for [`kick_signal`] once per process. Without a handler the
/// default action of a real-time signal would kill the process.
pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static RESULT: OnceLock<Option<i32>> = OnceLock::new();
    let failed =
        RESULT.get_or_init(|| register_signal_handler(kick_signal(), noop_handler).err().map(|e| e.errno()));
    match failed {
        None => Ok(()),
        Some(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
    }
}

struct KickState {
    /// `immediate_exit` byte of the vCPU's `kvm_run` page; null once the vCPU is dropped.
    immediate_exit: *mut u8,
    /// The thread inside [`crate::KvmVcpu::run`], if any.
    thread: Option<libc::pthread_t>,
    /// A kick not yet consumed by a `run()` return.
    pending: bool,
    /// The last thread on which the kick signal was unblocked.
    unblocked_on: Option<libc::pthread_t>,
}

/// Shared between a vCPU and its kickers.
pub(crate) struct KickShared {
    state: Mutex<KickState>,
    /// True while the vCPU thread is in (or about to enter) the `KVM_RUN` ioctl.
    in_kvm_run: AtomicBool,
}

// SAFETY: the raw pointer is only dereferenced under `state`'s mutex, and only while the vCPU
// (which owns the mapping) is alive: `detach` nulls it, under the mutex, before the mapping goes.
unsafe impl Send for KickShared {}
// SAFETY: as above.
unsafe impl Sync for KickShared {}

impl KickShared {
    /// `immediate_exit` must point into a live `kvm_run` mapping that outlives this value or
    /// until [`KickShared::detach`] is called.
    pub(crate) fn new(immediate_exit: *mut u8) -> Self {
        KickShared {
            state: Mutex::new(KickState { immediate_exit, thread: None, pending: false, unblocked_on: None }),
            in_kvm_run: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, KickState> {
        // A poisoned lock only means another thread panicked while holding it; the state is
        // still consistent (every update is a single store).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_immediate_exit(state: &KickState, value: u8) {
        if state.immediate_exit.is_null() {
            return;
        }
        // SAFETY: non-null means the vCPU and its kvm_run mapping are alive (see `detach`), and
        // the byte is only accessed atomically by us; the kernel reads it on KVM_RUN entry.
        let byte = unsafe { AtomicU8::from_ptr(state.immediate_exit) };
        byte.store(value, Ordering::SeqCst);
    }

    /// Called by the vCPU thread when `run()` starts. Makes sure the kick signal is not
    /// blocked on this thread (once per thread), else a kick could not reach it in the guest.
    pub(crate) fn enter_run(&self) -> std::io::Result<()> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut state = self.lock();
        if state.unblocked_on != Some(me) {
            unblock_signal(kick_signal()).map_err(|e| std::io::Error::other(e.to_string()))?;
            state.unblocked_on = Some(me);
        }
        state.thread = Some(me);
        Ok(())
    }

    /// Called by the vCPU thread when `run()` returns.
    pub(crate) fn leave_run(&self) {
        self.lock().thread = None;
    }

    pub(crate) fn set_in_kvm_run(&self, value: bool) {
        self.in_kvm_run.store(value, Ordering::SeqCst);
    }

    /// Consumes a pending kick: returns true (and clears `immediate_exit`) if there was one.
    pub(crate) fn take_kick(&self) -> bool {
        let mut state = self.lock();
        if !state.pending {
            return false;
        }
        state.pending = false;
        Self::set_immediate_exit(&state, 0);
        true
    }

    /// Called from the vCPU's `Drop`, before the `kvm_run` mapping is unmapped.
    pub(crate) fn detach(&self) {
        let mut state = self.lock();
        state.immediate_exit = std::ptr::null_mut();
        state.thread = None;
    }

    fn kick(&self) {
        let mut state = self.lock();
        if state.immediate_exit.is_null() {
            return;
        }
        state.pending = true;
        Self::set_immediate_exit(&state, 1);
        if let Some(thread) = state.thread {
            if self.in_kvm_run.load(Ordering::SeqCst) {
                // SAFETY: `thread` is inside run() (it clears `thread` under this lock before
                // leaving), so it is a live thread; the signal's handler is installed.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
        }
    }
}

/// The [`VcpuKicker`] of a KVM vCPU. Cheap to clone through `Arc`, safe after the vCPU is gone.
pub(crate) struct KvmKicker {
    pub(crate) shared: std::sync::Arc<KickShared>,
}

impl VcpuKicker for KvmKicker {
    fn kick(&self) {
        self.shared.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn kick_sets_and_take_clears_immediate_exit() {
        let mut byte = Box::new(0u8);
        let shared = Arc::new(KickShared::new(&mut *byte as *mut u8));
        let kicker = KvmKicker { shared: shared.clone() };
        assert!(!shared.take_kick());
        kicker.kick();
        kicker.kick();
        // SAFETY: reading our own box; no other thread runs.
        assert_eq!(unsafe { std::ptr::read_volatile(&*byte) }, 1);
        assert!(shared.take_kick());
        assert_eq!(unsafe { std::ptr::read_volatile(&*byte) }, 0);
        // Two kicks before one return are consumed by that return.
        assert!(!shared.take_kick());
    }

    #[test]
    fn kick_after_detach_is_a_noop() {
        let mut byte = Box::new(0u8);
        let shared = Arc::new(KickShared::new(&mut *byte as *mut u8));
        let kicker = KvmKicker { shared: shared.clone() };
        shared.detach();
        drop(byte);
        kicker.kick();
        assert!(!shared.take_kick());
    }

    #[test]
    fn enter_run_unblocks_the_kick_signal() {
        use vmm_sys_util::signal::{block_signal, get_blocked_signals};
        std::thread::spawn(|| {
            block_signal(kick_signal()).unwrap();
            let mut byte = 0u8;
            let shared = KickShared::new(&mut byte);
            shared.enter_run().unwrap();
            assert!(!get_blocked_signals().unwrap().contains(&kick_signal()));
            shared.leave_run();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn handler_installs_once() {
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
        // A kick signal to ourselves must not kill the process.
        // SAFETY: sending a signal with an installed no-op handler to the current thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), kick_signal()) };
    }
}
