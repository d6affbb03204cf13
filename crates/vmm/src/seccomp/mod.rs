//! Seccomp: every vmr thread runs under an allow-list filter for its role (see [`lists`]),
//! built with seccompiler and on by default in every mode (`vmr run`, `vmr --api-sock`,
//! `vmr --config-file`); `--seccomp=off` (or Firecracker's `--no-seccomp`) turns it off.
//!
//! A syscall outside the list traps (`SECCOMP_RET_TRAP`): the SIGSYS handler writes one line
//! naming the thread and the syscall to stderr and ends the process with exit code 159
//! (128 + SIGSYS), e.g.
//! `vmr: seccomp: thread vmr-vcpu0 made syscall socket (41), which its filter does not allow`.
//!
//! Threads apply their filter themselves, first thing: the VMM's threads call
//! [`apply_for_thread`]; the device workers (vmr-virtio) and the software CPU's interrupt
//! thread (vmr-emu) call the start hook of `vmr_hypervisor::thread_hooks`, which
//! [`install_thread_hook`] points here. Filters stack on the spawner's (see [`lists`]).

mod lists;
mod names;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use thiserror::Error;

/// Exit code after a forbidden syscall: 128 + SIGSYS, as if the signal had killed vmr.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// What a thread does, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The thread that builds and supervises the machine (and spawns all others).
    Main,
    Api,
    Vcpu,
    BlockWorker,
    NetWorker,
    VsockWorker,
    RngWorker,
    Console,
    Signals,
    EmuIrq,
    Metrics,
}

impl Role {
    /// The role of a thread by its name (`vmr-virtio-blk0` -> BlockWorker); `None` for names
    /// vmr does not give.
    pub fn from_thread_name(name: &str) -> Option<Role> {
        let role = match name {
            n if n.starts_with("vmr-vcpu") => Role::Vcpu,
            n if n.starts_with("vmr-virtio-blk") => Role::BlockWorker,
            n if n.starts_with("vmr-virtio-net") => Role::NetWorker,
            n if n.starts_with("vmr-virtio-vsock") => Role::VsockWorker,
            n if n.starts_with("vmr-virtio-rng") => Role::RngWorker,
            n if n.starts_with("vmr-emu-irq") => Role::EmuIrq,
            "vmr-console" => Role::Console,
            "vmr-signals" => Role::Signals,
            "vmr-metrics" => Role::Metrics,
            n if n.starts_with("vmr-api") => Role::Api,
            _ => return None,
        };
        Some(role)
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of {role:?}: {source}")]
    Build {
        role: Role,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot apply the seccomp filter of {role:?}: {source}")]
    Apply {
        role: Role,
        #[source]
        source: seccompiler::Error,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns filtering on (the default) or off for the threads that start afterwards.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

thread_local! {
    /// The thread's name for the SIGSYS message (read in the handler, which may not allocate).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Builds `role`'s filter: its lists allowed, anything else traps. vCPUs get `ioctl` only for
/// the KVM requests they make, the tap offload set on device activation and FIONBIO; vsock
/// workers only FIONBIO; other threads
/// that open files after start (glibc reads /proc and /sys files for its allocator) may
/// `openat` read-only.
pub fn filter(role: Role) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { role, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for list in lists::lists(role) {
        for &(_, nr) in list {
            rules.insert(nr, Vec::new());
        }
    }
    // Rust's set_nonblocking is ioctl(FIONBIO): the vsock worker sets it on the sockets it
    // accepts and connects (and the worker's filter stacks on its vCPU's).
    let requests = match role {
        Role::Vcpu => {
            let mut r = vmr_kvm::vcpu_thread_ioctls();
            r.extend([libc::TUNSETOFFLOAD as u64, libc::FIONBIO]);
            Some(r)
        }
        Role::VsockWorker => Some(vec![libc::FIONBIO]),
        _ => None,
    };
    if let Some(requests) = requests {
        let ioctl = requests
            .into_iter()
            .map(|r| arg_is(1, r).and_then(|c| SeccompRule::new(vec![c])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(build)?;
        rules.insert(libc::SYS_ioctl, ioctl);
    }
    if !rules.contains_key(&libc::SYS_openat) {
        let read_only = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
        let rule = arg_is(2, read_only).and_then(|c| SeccompRule::new(vec![c])).map_err(build)?;
        rules.insert(libc::SYS_openat, vec![rule]);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    filter.try_into().map_err(build)
}

fn arg_is(index: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    let len = if value > u64::from(u32::MAX) { SeccompCmpArgLen::Qword } else { SeccompCmpArgLen::Dword };
    SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)
}

/// Applies `role`'s filter to the calling thread (if filtering is on). A filter that cannot be
/// applied is a fatal error: a VMM that serves a guest unconfined when confinement was asked
/// for is worse than one that stops.
pub fn apply_for_thread(role: Role) {
    if let Err(e) = try_apply(role) {
        eprintln!("vmr: error: {e}");
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(crate::EXIT_ERROR) };
    }
}

/// [`apply_for_thread`], returning the error.
pub fn try_apply(role: Role) -> Result<(), SeccompError> {
    if !is_enabled() {
        return Ok(());
    }
    install_sigsys_handler();
    remember_thread_name();
    let program = filter(role)?;
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Apply { role, source })
}

/// Points the start hook of the device workers and the emulator's threads here.
pub fn install_thread_hook() {
    vmr_hypervisor::thread_hooks::set_start_hook(on_thread_start);
}

fn on_thread_start() {
    let name = std::thread::current().name().map(str::to_owned).unwrap_or_default();
    match Role::from_thread_name(&name) {
        Some(role) => apply_for_thread(role),
        // A thread vmr does not know keeps its spawner's filter.
        None => tracing::debug!("seccomp: no role for thread '{name}'"),
    }
}

fn remember_thread_name() {
    let mut buf = [0u8; 16];
    if let Some(name) = std::thread::current().name() {
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    } else {
        buf[..4].copy_from_slice(b"main");
    }
    THREAD_NAME.with(|c| c.set(buf));
}

fn install_sigsys_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler of the SA_SIGINFO signature is valid;
        // `on_sigsys` only calls async-signal-safe functions (write, _exit).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        }
    });
}

/// A fixed buffer the SIGSYS message is formatted into (no allocation in a signal handler).
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl std::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The line written when a filter stops a thread.
pub(crate) fn trap_message(thread: &str, nr: i64) -> LineBufText {
    use std::fmt::Write;
    let mut line = LineBuf { buf: [0; 256], len: 0 };
    let _ = write!(
        line,
        "\r\nvmr: seccomp: thread {thread} made syscall {} ({nr}), which its filter does not allow; \
         stopping (--seccomp=off turns filtering off)\n",
        names::name(nr)
    );
    LineBufText(line)
}

pub(crate) struct LineBufText(LineBuf);

impl LineBufText {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0.buf[..self.0.len]
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills `_sigsys` in the siginfo union: `_call_addr` (a
    // pointer) at offset 16, then `_syscall` (int) at offset 24 on x86-64.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let name = THREAD_NAME.with(|c| c.get());
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let thread = std::str::from_utf8(&name[..len]).unwrap_or("?");
    let line = trap_message(thread, i64::from(nr));
    let bytes = line.as_bytes();
    // SAFETY: write and _exit are async-signal-safe; every filter allows them.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_SECCOMP);
    }
}
