//! Errors of the machine model.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong building a machine: bad user input (files, sizes, command line)
/// or a failure writing guest memory.
#[derive(Debug, Error)]
pub enum ArchError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {}", path.display())]
    KernelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The initrd file could not be opened or read.
    #[error("cannot read initrd {}", path.display())]
    InitrdRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has neither an ELF nor a bzImage signature.
    #[error("{} is neither an ELF vmlinux nor a bzImage", path.display())]
    NotAKernel { path: PathBuf },
    /// The file has a kernel signature but ends before the data its headers describe.
    #[error("{} is a truncated {format} kernel image: {what}", path.display())]
    TruncatedKernel { path: PathBuf, format: &'static str, what: String },
    /// The file is a kernel vmr cannot boot (wrong architecture, too old a boot protocol).
    #[error("{} cannot be booted: {reason}", path.display())]
    UnsupportedKernel { path: PathBuf, reason: String },
    /// linux-loader rejected the image.
    #[error("loading kernel {} failed", path.display())]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel needs more memory below the MMIO hole than the guest has.
    #[error(
        "guest memory ({mem_mib} MiB) is too small for the kernel, which needs memory up to {needed_end:#x}"
    )]
    MemoryTooSmallForKernel { mem_mib: u64, needed_end: u64 },
    /// Less memory than the machine's own boot structures need.
    #[error("guest memory of {size_mib} MiB is too small (at least 2 MiB needed)")]
    MemoryTooSmallForMachine { size_mib: u64 },
    /// A memory size this host cannot map.
    #[error("guest memory size {size:#x} is too large")]
    MemoryTooLarge { size: u64 },
    /// Allocating guest memory failed.
    #[error("cannot allocate {size_mib} MiB of guest memory")]
    GuestMemory {
        size_mib: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The initrd does not fit between the kernel and the highest address it may use.
    #[error("initrd ({size_mib} MiB) does not fit in {mem_mib} MiB of guest memory below {limit:#x} (kernel ends at {kernel_end:#x})")]
    InitrdTooLarge { size_mib: u64, mem_mib: u64, limit: u64, kernel_end: u64 },
    /// The kernel command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// The kernel command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The vCPU count is outside what the tables can describe.
    #[error("{vcpus} vCPUs requested; vmr supports 1 to {max}")]
    VcpuCount { vcpus: u32, max: u32 },
    /// More virtio-mmio devices than the MMIO window and IRQ list allow.
    #[error("{count} virtio-mmio devices requested; at most {max} fit")]
    TooManyVirtioDevices { count: usize, max: usize },
    /// Writing a boot structure into guest memory failed.
    #[error("writing the {what} to guest memory failed")]
    GuestWrite {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ArchError>;

/// Wraps a guest memory write error with the name of what was written.
pub(crate) fn write_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> ArchError {
    move |source| ArchError::GuestWrite { what, source }
}
