//! The x86-64 machine model of vmr: memory map, kernel/initrd loading (ELF with PVH or 64-bit
//! entry, bzImage), boot structures (zero page or PVH start_info, e820), MP and ACPI tables,
//! initial vCPU state and per-vCPU CPUID.
//!
//! Backend-neutral: only `vmr-hypervisor` state types appear in the API. Typical use:
//!
//! 1. [`layout::create_guest_memory`] and hand the memory to the backend.
//! 2. [`configure_system`] writes everything into guest memory and returns a [`BootInfo`].
//! 3. For every vCPU: `set_cpuid(&vcpu_cpuid(..))`, `set_msrs(&boot_msrs())`,
//!    [`setup_lapic_lint`] on its LAPIC; for the BSP also `set_state(&boot.bsp_state)`.

pub mod acpi;
pub mod cpuid;
mod error;
pub mod layout;
pub mod loader;
pub mod mptable;
mod prefault;
pub mod regs;
mod sparse;
mod zeropage;

use std::path::PathBuf;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmr_hypervisor::{GuestMemory, VcpuState};

pub use acpi::MmioDeviceInfo;
pub use cpuid::vcpu_cpuid;
pub use error::{ArchError, Result};
pub use layout::{create_guest_memory, guest_memory_regions, E820Entry, E820Type};
pub use loader::{BootProtocol, InitrdInfo, KernelFormat, LoadedKernel};
pub use regs::{boot_msrs, boot_vcpu_state, setup_lapic_lint};
pub use sparse::is_zero;

/// Most vCPUs the tables describe (8-bit xAPIC ids, one id for the IOAPIC).
pub const MAX_VCPUS: u32 = 254;

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct MachineConfig {
    /// Number of vCPUs (1..=[`MAX_VCPUS`]).
    pub vcpus: u32,
    /// Kernel image (ELF vmlinux or bzImage, detected by content).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// virtio-mmio transports to describe in the DSDT (see [`layout::virtio_mmio_device`]).
    pub virtio_mmio: Vec<MmioDeviceInfo>,
}

/// What the VMM needs after [`configure_system`].
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// Entry protocol chosen for the kernel.
    pub protocol: BootProtocol,
    /// Kernel placement and entry point.
    pub kernel: LoadedKernel,
    /// Where the initrd went, if any.
    pub initrd: Option<InitrdInfo>,
    /// The memory map given to the guest.
    pub e820: Vec<E820Entry>,
    /// Address of the ACPI RSDP.
    pub rsdp: GuestAddress,
    /// Initial state of the BSP (vCPU 0); APs keep their reset state.
    pub bsp_state: VcpuState,
}

/// The first `count` virtio-mmio slots of the layout (address, 4 KiB window, IRQ), ready for
/// [`MachineConfig::virtio_mmio`]. Describe devices either here (DSDT, `LNRO0005`) or with
/// `virtio_mmio.device=` on the command line, not both.
pub fn virtio_mmio_slots(count: usize) -> Result<Vec<MmioDeviceInfo>> {
    (0..count)
        .map(|i| {
            let (addr, irq) = layout::virtio_mmio_device(i)
                .ok_or(ArchError::TooManyVirtioDevices { count, max: layout::VIRTIO_MMIO_MAX_DEVICES })?;
            Ok(MmioDeviceInfo { addr, len: layout::VIRTIO_MMIO_SIZE, irq })
        })
        .collect()
}

/// Total bytes of RAM in `mem`.
pub fn memory_size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Loads kernel and initrd, writes the command line, MP table, ACPI tables, the zero page or
/// PVH start_info with the e820 map, the boot GDT and page tables and the reset-vector stub;
/// returns the BSP entry state.
/// `mem` must have been made by [`create_guest_memory`].
pub fn configure_system(mem: &GuestMemory, config: &MachineConfig) -> Result<BootInfo> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(ArchError::VcpuCount { vcpus: config.vcpus, max: MAX_VCPUS });
    }
    if config.virtio_mmio.len() > layout::VIRTIO_MMIO_MAX_DEVICES {
        let max = layout::VIRTIO_MMIO_MAX_DEVICES;
        return Err(ArchError::TooManyVirtioDevices { count: config.virtio_mmio.len(), max });
    }
    let mem_size = memory_size(mem);
    let kernel = loader::load_kernel(mem, &config.kernel)?;
    loader::write_cmdline(mem, &config.cmdline, loader::cmdline_max(&kernel))?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, &kernel)?),
        None => None,
    };
    mptable::setup_mptable(mem, config.vcpus)?;
    let rsdp = acpi::create_acpi_tables(mem, config.vcpus, &config.virtio_mmio)?;
    let e820 = layout::e820_map(mem_size);
    let boot = zeropage::BootStructures {
        kernel: &kernel,
        initrd,
        e820: &e820,
        rsdp,
        cmdline_len: config.cmdline.len(),
    };
    match kernel.protocol {
        BootProtocol::Pvh => zeropage::write_pvh_start_info(mem, &boot)?,
        BootProtocol::Linux64 => zeropage::write_boot_params(mem, &boot)?,
    }
    regs::write_boot_tables(mem, kernel.protocol)?;
    regs::write_reset_stub(mem)?;
    let bsp_state = boot_vcpu_state(kernel.protocol, kernel.entry);
    Ok(BootInfo { protocol: kernel.protocol, kernel, initrd, e820, rsdp, bsp_state })
}

#[cfg(test)]
mod tests;
