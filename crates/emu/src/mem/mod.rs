//! Guest memory as the software CPU sees it.
//!
//! - [`phys`]: guest physical memory. RAM regions are accessed through host pointers taken once
//!   at setup; everything else goes to the VMM's [`vmr_hypervisor::VmOps`] as MMIO.
//! - [`tlb`]: the software TLB, a direct-mapped cache of linear page -> physical page + host
//!   pointer + permissions.
//! - [`paging`]: page-table walks (4-level, PAE, legacy 2-level), A/D bits, page faults.
//! - [`access`]: linear-address reads and writes used by instruction handlers.

pub mod access;
pub mod paging;
pub mod phys;
pub mod tlb;

pub use access::Access;
pub use phys::Memory;
