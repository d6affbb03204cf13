//! The boot information handed to the kernel: Linux `boot_params` (zero page) or PVH
//! `hvm_start_info`, both with the e820 memory map, command line, initrd and RSDP.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::GuestMemory;

use crate::error::{write_err, Result};
use crate::layout::{
    E820Entry, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::loader::{InitrdInfo, LoadedKernel};

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// kernel_alignment given to ELF kernels booted through boot_params (as Firecracker).
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Everything the boot information structures describe.
pub(crate) struct BootStructures<'a> {
    pub kernel: &'a LoadedKernel,
    pub initrd: Option<InitrdInfo>,
    pub e820: &'a [E820Entry],
    pub rsdp: GuestAddress,
    pub cmdline_len: usize,
}

/// Writes `boot_params` at [`ZERO_PAGE_START`] for the 64-bit Linux boot protocol.
pub(crate) fn write_boot_params(mem: &GuestMemory, boot: &BootStructures) -> Result<()> {
    let mut params = boot_params::default();
    match boot.kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT,
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = boot.cmdline_len as u32;
    if let Some(initrd) = boot.initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = boot.rsdp.0;
    for (slot, e) in params.e820_table.iter_mut().zip(boot.e820) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind as u32 };
    }
    params.e820_entries = boot.e820.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START)).map_err(write_err("boot_params (zero page)"))
}

/// Writes `hvm_start_info`, the module list (the initrd) and the memory map for PVH.
pub(crate) fn write_pvh_start_info(mem: &GuestMemory, boot: &BootStructures) -> Result<()> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: boot.rsdp.0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: boot.e820.len().min(crate::layout::PVH_MEMMAP_MAX_ENTRIES) as u32,
        ..Default::default()
    };
    if let Some(initrd) = boot.initrd {
        let module = hvm_modlist_entry { paddr: initrd.addr.0, size: initrd.size, ..Default::default() };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START)).map_err(write_err("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    for (i, e) in boot.e820.iter().take(info.memmap_entries as usize).enumerate() {
        let entry = hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind as u32, reserved: 0 };
        let addr =
            GuestAddress(PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64);
        mem.write_obj(entry, addr).map_err(write_err("PVH memory map"))?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START)).map_err(write_err("PVH start_info"))
}
