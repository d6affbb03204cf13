//! vmr-emu: a software x86-64 CPU behind the `vmr-hypervisor` traits.
//!
//! Layout:
//! - [`cpu`]: architectural state (registers, segments, control registers, MSRs) and modes.
//! - [`flags`]: lazily computed arithmetic flags.
//! - [`mem`]: guest physical memory (host pointers per RAM region, MMIO through `VmOps`),
//!   4-level paging with a software TLB, and linear-address reads/writes.
//! - [`decode`]: decoding with iced-x86 into cached per-page blocks of [`decode::Op`]s.
//! - [`exec`]: instruction handlers, one file per area.
//! - [`interrupt`]: exception and interrupt delivery, IRET, double/triple faults.
//! - [`engine`]: the run loop tying cache and CPU together.
//! - [`jit`]: the translator tier (hot blocks to host code), off unless `VMR_EMU_JIT=1`.
//! - [`backend`]: the `Hypervisor`/`Vm`/`Vcpu` implementation ("emu").

pub mod backend;
pub mod cpu;
pub mod cpuid;
pub mod decode;
pub mod engine;
mod error;
pub mod exec;
pub mod flags;
pub mod interrupt;
pub mod irqchip;
pub mod jit;
pub mod mem;
pub mod msr;
pub mod segment;

pub use backend::{EmuHypervisor, EmuVcpu, EmuVm};
pub use engine::{Engine, StopReason};
pub use error::EmuError;
