//! The allow-lists, one per thread role, derived from `strace -ff` of vmr booting the lab's
//! Debian guest on the software CPU (2 vCPUs, disk with a rate limit, tap, vsock, rng,
//! metrics), of `tests/machine.rs` (tiny kernels: console, power-off, reset, crash, signals),
//! and of the KVM backend's code paths for the ioctls, then checked in the nested lab
//! (`tests/lab/run.sh --only "boot-vmlinux cpus-2 net-tap vsock disk-raw signals"`, which
//! found the vsock worker's FIONBIO and timer calls).
//!
//! A thread's filter is stacked on the filters of the thread that spawned it (seccomp filters
//! are inherited and all must allow a syscall), so a spawner's list must hold its children's:
//! main holds everything; a vCPU holds the device workers' (it activates devices, which
//! spawns their workers, and drops them at the end). `tests` checks these inclusions.
//!
//! To extend a role (e.g. the API server's), add names to its list here; the names are
//! libc's `SYS_*` constants.

use super::Role;

/// (name, number) pairs from libc's `SYS_<name>`.
macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64),)*]
    };
}

pub(super) type List = &'static [(&'static str, i64)];

/// Every thread: Rust's thread start and end, memory allocation, locks, signals (the kick
/// signal and signal-hook's handler run on whatever thread the signal lands), sleeping, and
/// what the seccomp message needs (write, exit_group).
pub(super) const COMMON: List = syscalls!(
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_futex,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sigaltstack,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sched_getaffinity,
    SYS_sched_yield,
    SYS_gettid,
    SYS_getpid,
    SYS_prctl,
    SYS_exit,
    SYS_exit_group,
    SYS_write,
    SYS_close,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_restart_syscall,
    SYS_getrandom,
    SYS_sendto,
    SYS_read,
    SYS_statx,
    SYS_newfstatat,
);

/// Device workers: epoll, eventfds, timerfds (rate limiters), and their backends' I/O.
pub(super) const BLOCK_WORKER: List = syscalls!(
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_timerfd_settime,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_fdatasync,
    SYS_fsync,
    SYS_fallocate,
    SYS_lseek,
    SYS_ftruncate,
);
pub(super) const NET_WORKER: List =
    syscalls!(SYS_epoll_wait, SYS_epoll_pwait, SYS_timerfd_settime, SYS_readv, SYS_writev,);
pub(super) const VSOCK_WORKER: List = syscalls!(
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_accept4,
    SYS_socket,
    SYS_connect,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_shutdown,
    SYS_fcntl,
    SYS_getsockopt,
    // The muxer's connect-timeout timer.
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
);
pub(super) const RNG_WORKER: List = syscalls!(SYS_epoll_wait, SYS_epoll_pwait);

/// vCPU threads: run the guest (KVM_RUN and friends are allowed by request number, see
/// `vcpu_ioctls`), and on the MMIO writes that activate or reset a device: create its
/// worker (clone3, epoll, eventfds, timerfds), the net offload ioctl, and on drop the vsock
/// socket's unlink.
pub(super) const VCPU: List = syscalls!(
    SYS_clone3,
    SYS_clone,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_eventfd2,
    SYS_timerfd_create,
    SYS_fcntl,
    SYS_unlink,
    SYS_tgkill,
    SYS_seccomp,
    SYS_epoll_wait,
    SYS_epoll_pwait,
);

/// The emulated interrupt controllers' thread (software CPU).
pub(super) const EMU_IRQ: List = syscalls!(SYS_epoll_wait, SYS_epoll_pwait, SYS_timerfd_settime, SYS_tgkill);

/// stdin to the serial device.
pub(super) const CONSOLE: List = syscalls!(SYS_poll, SYS_ppoll, SYS_ioctl);

/// signal-hook's iterator thread.
pub(super) const SIGNALS: List = syscalls!(SYS_recvfrom, SYS_poll, SYS_ppoll);

/// The metrics writer (appends to its file).
pub(super) const METRICS: List = syscalls!(SYS_fsync);

/// The API server (tokio's current-thread runtime with hyper): a Unix socket accepting
/// connections and serving them from an epoll loop; hyper writes answers with `writev`.
/// Checked with `strace -ff` of tests/api.rs and tests/emu_api_linux.rs.
pub(super) const API: List = syscalls!(
    SYS_writev,
    SYS_accept4,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_eventfd2,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_shutdown,
    SYS_fcntl,
    SYS_ioctl,
    SYS_openat,
    SYS_fsync,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_clone3,
    SYS_seccomp,
    SYS_tgkill,
);

/// The main thread: builds (and rebuilds, on `--reboot restart`) the machine, so it does all
/// of the above plus opening images, taps, sockets and `/dev/kvm`, mapping guest memory and
/// the terminal's modes.
pub(super) const MAIN: List = syscalls!(
    SYS_openat,
    SYS_open,
    SYS_lseek,
    SYS_ioctl,
    SYS_socket,
    SYS_socketpair,
    SYS_bind,
    SYS_listen,
    SYS_flock,
    SYS_fcntl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readlink,
    SYS_getcwd,
    SYS_access,
    SYS_sysinfo,
    SYS_prlimit64,
    SYS_rt_sigaction,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_timerfd_create,
    SYS_clone3,
    SYS_clone,
    SYS_tgkill,
    SYS_seccomp,
    SYS_unlink,
    SYS_poll,
    SYS_ppoll,
    SYS_memfd_create,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_wait4,
    SYS_kill,
    SYS_sched_setaffinity,
    SYS_uname,
    SYS_getuid,
    SYS_geteuid,
    SYS_fstatfs,
    SYS_statfs,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_pipe2,
    SYS_fsync,
    SYS_fdatasync,
    // A snapshot's state file is written under a temporary name and renamed into place.
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
);

/// The lists a role's filter allows (COMMON always; the ioctl rule of vCPUs is separate).
pub(super) fn lists(role: Role) -> Vec<List> {
    let workers = [BLOCK_WORKER, NET_WORKER, VSOCK_WORKER, RNG_WORKER];
    let mut v = vec![COMMON];
    match role {
        Role::BlockWorker => v.push(BLOCK_WORKER),
        Role::NetWorker => v.push(NET_WORKER),
        Role::VsockWorker => v.push(VSOCK_WORKER),
        Role::RngWorker => v.push(RNG_WORKER),
        Role::Vcpu => {
            v.push(VCPU);
            v.extend(workers);
        }
        Role::EmuIrq => v.push(EMU_IRQ),
        Role::Console => v.push(CONSOLE),
        Role::Signals => v.push(SIGNALS),
        Role::Metrics => v.push(METRICS),
        Role::Api => v.push(API),
        Role::Main => {
            v.extend([MAIN, VCPU, EMU_IRQ, CONSOLE, SIGNALS, METRICS, API]);
            v.extend(workers);
        }
    }
    v
}
