//! The guest physical memory map of a vmr x86-64 machine.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM)
//! 0x0000_0500  boot GDT, 0x520 boot IDT
//! 0x0000_6000  PVH hvm_start_info, module list, memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  boot stack pointer (grows down)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (identity map 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP floating pointer + MP configuration table      (reserved)
//! 0x000e_0000  ACPI RSDP, then XSDT, FADT, MADT, DSDT                  (reserved)
//! 0x000f_fff0  reset-vector stub: `out 0x64, 0xfe` (i8042 reset), `hlt` (reserved)
//! 0x0010_0000  RAM: bzImage protected-mode code; ELF kernels at their p_paddr
//! 0xc000_0000  32-bit MMIO hole up to 4 GiB: virtio-mmio window at 0xd000_0000,
//!              IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB (whatever did not fit below the hole)
//! ```

use vm_memory::GuestAddress;

use crate::ArchError;
use vmr_hypervisor::GuestMemory;

/// One KiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Boot GDT (4 descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty, limit 0).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (e820-like table).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Most PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the BSP.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages) mapping 0..4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including its NUL terminator (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; everything from here to 1 MiB is reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer and configuration table (Linux scans the first KiB of the EBDA).
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI RSDP, in the BIOS area Linux scans (0xe0000..0x100000).
pub const RSDP_START: u64 = 0xe0000;
/// End of the area the ACPI tables may use.
pub const ACPI_END: u64 = RESET_VECTOR;
/// The real-mode reset vector (F000:FFF0). Linux's last-resort reboot paths (`reboot=bios`,
/// and the EFI/BIOS fallbacks it picks on hardware-reduced ACPI platforms) jump here; vmr puts
/// a stub that pulses the i8042 reset line.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Start of high memory: bzImage protected-mode code goes here, nothing of ours above.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole (3 GiB).
pub const MMIO_HOLE_START: u64 = 3 * GIB;
/// Size of the 32-bit MMIO hole (up to 4 GiB).
pub const MMIO_HOLE_SIZE: u64 = GIB;
/// First address above the MMIO hole: RAM continues here.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// Window for virtio-mmio devices inside the hole.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of each virtio-mmio device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Most virtio-mmio devices the window and the IRQ list allow.
pub const VIRTIO_MMIO_MAX_DEVICES: usize = VIRTIO_MMIO_IRQS.len();
/// IOAPIC inputs given to virtio-mmio devices, in order: 5 and up, skipping the legacy lines in
/// use (8 = RTC).
pub const VIRTIO_MMIO_IRQS: [u32; 18] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Number of IOAPIC inputs (GSIs 0..=23).
pub const IOAPIC_PINS: u32 = 24;

/// COM1 port base and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port (command/status port is 0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_CMD_PORT: u16 = 0x64;
/// i8042 keyboard IRQ.
pub const I8042_IRQ: u32 = 1;
/// CMOS/RTC index port (data port is 0x71).
pub const CMOS_PORT: u16 = 0x70;
/// The power button's interrupt (the ACPI Generic Event Device; COM2's IRQ, unused).
pub const POWER_BUTTON_IRQ: u32 = 3;
/// RTC IRQ.
pub const RTC_IRQ: u32 = 8;
/// ACPI power-management block: +0 sleep control, +1 sleep status, +2 reset register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Length of the ACPI power-management block.
pub const ACPI_PM_LEN: u16 = 3;
/// Value the guest writes to the ACPI reset register.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// ACPI sleep type (`_S5_` SLP_TYP) meaning soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// Address of virtio-mmio device `index` (0-based), or None past the window.
pub fn virtio_mmio_device(index: usize) -> Option<(GuestAddress, u32)> {
    let irq = *VIRTIO_MMIO_IRQS.get(index)?;
    Some((GuestAddress(VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE), irq))
}

/// The RAM regions of a guest with `size` bytes of memory: below the MMIO hole, and whatever
/// does not fit there from 4 GiB up.
pub fn guest_memory_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_HOLE_START {
        regions.push((GuestAddress(HIGH_RAM_START), (size - MMIO_HOLE_START) as usize));
    }
    regions
}

/// RAM below the MMIO hole for a guest of `size` bytes.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// Smallest guest memory vmr accepts (room for the boot structures and a kernel).
pub const MIN_MEMORY: u64 = 2 * MIB;

/// Allocates anonymous guest memory of `size` bytes laid out by [`guest_memory_regions`].
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, ArchError> {
    if size < MIN_MEMORY {
        return Err(ArchError::MemoryTooSmallForMachine { size_mib: size / MIB });
    }
    if usize::try_from(size).is_err() || size.checked_add(MMIO_HOLE_SIZE).is_none() {
        return Err(ArchError::MemoryTooLarge { size });
    }
    GuestMemory::from_ranges(&guest_memory_regions(size))
        .map_err(|e| ArchError::GuestMemory { size_mib: size / MIB, source: Box::new(e) })
}

/// Type of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (BIOS area, tables).
    Reserved = 2,
}

/// One entry of the guest memory map given to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

/// The memory map of a guest with `size` bytes of RAM (as laid out by
/// [`guest_memory_regions`]). RAM entries plus the reserved EBDA/BIOS entry cover exactly `size`
/// bytes.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let low = low_ram_end(size);
    let mut map = vec![E820Entry { addr: 0, size: low.min(EBDA_START), kind: E820Type::Ram }];
    if low > EBDA_START {
        let end = low.min(HIMEM_START);
        map.push(E820Entry { addr: EBDA_START, size: end - EBDA_START, kind: E820Type::Reserved });
    }
    if low > HIMEM_START {
        map.push(E820Entry { addr: HIMEM_START, size: low - HIMEM_START, kind: E820Type::Ram });
    }
    if size > MMIO_HOLE_START {
        map.push(E820Entry { addr: HIGH_RAM_START, size: size - MMIO_HOLE_START, kind: E820Type::Ram });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_map(size: u64) -> Vec<E820Entry> {
        let map = e820_map(size);
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(total, size, "e820 for {size:#x} does not add up");
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "overlap in {map:?}");
        }
        for e in &map {
            let end = e.addr + e.size;
            assert!(end <= MMIO_HOLE_START || e.addr >= HIGH_RAM_START, "{e:?} crosses the hole");
        }
        let regions = guest_memory_regions(size);
        assert_eq!(regions.iter().map(|r| r.1 as u64).sum::<u64>(), size);
        map
    }

    #[test]
    fn e820_512m() {
        let map = check_map(512 * MIB);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[2],
            E820Entry { addr: HIMEM_START, size: 512 * MIB - HIMEM_START, kind: E820Type::Ram }
        );
        assert_eq!(guest_memory_regions(512 * MIB), vec![(GuestAddress(0), 512 * MIB as usize)]);
    }

    #[test]
    fn e820_3g_fills_below_the_hole() {
        let map = check_map(3 * GIB);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
    }

    #[test]
    fn e820_4g_and_8g_skip_the_hole() {
        let map = check_map(4 * GIB);
        assert_eq!(map[3], E820Entry { addr: HIGH_RAM_START, size: GIB, kind: E820Type::Ram });
        let map = check_map(8 * GIB);
        assert_eq!(map[3], E820Entry { addr: HIGH_RAM_START, size: 5 * GIB, kind: E820Type::Ram });
        assert_eq!(
            guest_memory_regions(8 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize), (GuestAddress(HIGH_RAM_START), (5 * GIB) as usize)]
        );
    }

    #[test]
    fn tiny_memory_is_refused() {
        assert!(matches!(create_guest_memory(MIB), Err(ArchError::MemoryTooSmallForMachine { .. })));
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(vm_memory::GuestMemoryBackend::last_addr(&mem), GuestAddress(64 * MIB - 1));
    }

    #[test]
    fn virtio_slots_avoid_legacy_irqs() {
        assert_eq!(virtio_mmio_device(0), Some((GuestAddress(0xd000_0000), 5)));
        assert_eq!(virtio_mmio_device(3), Some((GuestAddress(0xd000_3000), 9)));
        assert_eq!(virtio_mmio_device(VIRTIO_MMIO_MAX_DEVICES), None);
        assert!(!VIRTIO_MMIO_IRQS.iter().any(|&i| i == COM1_IRQ || i == RTC_IRQ || i == I8042_IRQ));
    }
}
