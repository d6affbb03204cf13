//! End-to-end tests of `configure_system` with fabricated kernels, and (if
//! `VMR_TEST_KERNEL_DIR` is set) with real Debian kernels.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::layout::{CMDLINE_START, MIB, PVH_INFO_START, ZERO_PAGE_START};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A file in a per-test temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(bytes: &[u8]) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmr-arch-test-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const ELF_LOAD_ADDR: u64 = 0x100_0000;
const PVH_ENTRY: u32 = 0x100_0040;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A minimal x86-64 ELF: one PT_LOAD of 0x100 bytes at 16 MiB (memsz 0x2000), optionally a
/// PT_NOTE with the Xen PVH entry note.
pub(crate) fn tiny_elf(pvh: bool) -> Vec<u8> {
    let mut f = vec![0u8; 0x1100];
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes());
    put(&mut f, 18, &62u16.to_le_bytes());
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &ELF_LOAD_ADDR.to_le_bytes());
    put(&mut f, 32, &64u64.to_le_bytes());
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &(1 + pvh as u16).to_le_bytes());
    // PT_LOAD
    let ph = 64;
    put(&mut f, ph, &1u32.to_le_bytes());
    for (off, v) in [(8, 0x1000u64), (16, ELF_LOAD_ADDR), (24, ELF_LOAD_ADDR), (32, 0x100), (40, 0x2000)] {
        put(&mut f, ph + off, &v.to_le_bytes());
    }
    if pvh {
        let ph = 64 + 56;
        put(&mut f, ph, &4u32.to_le_bytes());
        put(&mut f, ph + 8, &0x200u64.to_le_bytes());
        put(&mut f, ph + 32, &20u64.to_le_bytes());
        put(&mut f, 0x200, &4u32.to_le_bytes());
        put(&mut f, 0x204, &4u32.to_le_bytes());
        put(&mut f, 0x208, &18u32.to_le_bytes());
        put(&mut f, 0x20c, b"Xen\0");
        put(&mut f, 0x210, &PVH_ENTRY.to_le_bytes());
    }
    f[0x1000..0x1100].fill(0x90);
    f
}

/// A minimal bzImage header (protocol 2.15, 64-bit entry) with a 4 KiB payload.
pub(crate) fn tiny_bzimage() -> Vec<u8> {
    let mut f = vec![0u8; 1024 + 4096];
    f[0x1f1] = 1; // setup_sects
    put(&mut f, 0x1f4, &(4096u32 / 16).to_le_bytes());
    put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &0x020fu16.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    put(&mut f, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut f, 0x22c, &0x7fff_ffffu32.to_le_bytes());
    put(&mut f, 0x230, &0x20_0000u32.to_le_bytes());
    f[0x234] = 1;
    put(&mut f, 0x236, &1u16.to_le_bytes());
    put(&mut f, 0x238, &2047u32.to_le_bytes());
    put(&mut f, 0x258, &0x100_0000u64.to_le_bytes());
    put(&mut f, 0x260, &0x40_0000u32.to_le_bytes());
    f[1024..].fill(0xcc);
    f
}

fn config(kernel: &Path, initrd: Option<&Path>, vcpus: u32) -> MachineConfig {
    MachineConfig {
        vcpus,
        kernel: kernel.into(),
        initrd: initrd.map(Into::into),
        cmdline: "console=ttyS0 panic=-1".into(),
        virtio_mmio: vec![],
    }
}

#[test]
fn pvh_elf_boots_through_start_info() {
    let kernel = TempFile::new(&tiny_elf(true));
    let initrd = TempFile::new(&[0xab; 10_000]);
    let mem = create_guest_memory(128 * MIB).unwrap();
    let boot = configure_system(&mem, &config(&kernel.0, Some(&initrd.0), 2)).unwrap();
    assert_eq!(boot.protocol, BootProtocol::Pvh);
    assert_eq!(boot.kernel.entry, GuestAddress(u64::from(PVH_ENTRY)));
    assert_eq!(boot.bsp_state.regs.rip, u64::from(PVH_ENTRY));
    assert_eq!(boot.bsp_state.regs.rbx, PVH_INFO_START);
    let mut code = [0u8; 4];
    mem.read_slice(&mut code, GuestAddress(ELF_LOAD_ADDR)).unwrap();
    assert_eq!(code, [0x90; 4]);
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, boot.rsdp.0);
    assert_eq!(info.memmap_entries as usize, boot.e820.len());
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    let rd = boot.initrd.unwrap();
    assert_eq!((module.paddr, module.size), (rd.addr.0, 10_000));
    assert_eq!(rd.addr.0 % 4096, 0);
    assert!(rd.addr.0 + rd.size <= 128 * MIB && rd.addr.0 >= ELF_LOAD_ADDR + 0x2000);
    let last: hvm_memmap_table_entry =
        mem.read_obj(GuestAddress(info.memmap_paddr + 24 * (info.memmap_entries as u64 - 1))).unwrap();
    assert_eq!(last.addr + last.size, 128 * MIB);
    let mut stub = [0u8; 8];
    mem.read_slice(&mut stub, GuestAddress(layout::RESET_VECTOR)).unwrap();
    assert_eq!(stub, crate::regs::RESET_STUB);
    let mut cmdline = vec![0u8; 23];
    mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START)).unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 panic=-1\0");
}

#[test]
fn virtio_slots_reach_the_dsdt() {
    let slots = virtio_mmio_slots(3).unwrap();
    assert_eq!(slots[2], MmioDeviceInfo { addr: GuestAddress(0xd000_2000), len: 0x1000, irq: 7 });
    assert!(virtio_mmio_slots(layout::VIRTIO_MMIO_MAX_DEVICES + 1).is_err());
    let kernel = TempFile::new(&tiny_elf(true));
    let mem = create_guest_memory(64 * MIB).unwrap();
    let mut cfg = config(&kernel.0, None, 1);
    cfg.virtio_mmio = virtio_mmio_slots(layout::VIRTIO_MMIO_MAX_DEVICES).unwrap();
    configure_system(&mem, &cfg).unwrap();
    let mut acpi = vec![0u8; (layout::ACPI_END - layout::RSDP_START) as usize];
    mem.read_slice(&mut acpi, GuestAddress(layout::RSDP_START)).unwrap();
    let count = acpi.windows(8).filter(|w| w == b"LNRO0005").count();
    assert_eq!(count, layout::VIRTIO_MMIO_MAX_DEVICES);
}

#[test]
fn elf_without_pvh_note_uses_the_64bit_entry() {
    let kernel = TempFile::new(&tiny_elf(false));
    let mem = create_guest_memory(64 * MIB).unwrap();
    let boot = configure_system(&mem, &config(&kernel.0, None, 1)).unwrap();
    assert_eq!(boot.protocol, BootProtocol::Linux64);
    assert_eq!(boot.bsp_state.regs.rip, ELF_LOAD_ADDR);
    assert_eq!(boot.bsp_state.regs.rsi, ZERO_PAGE_START);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.boot_flag }, 0xaa55);
    assert_eq!({ params.hdr.type_of_loader }, 0xff);
    assert_eq!({ params.hdr.ramdisk_size }, 0);
}

#[test]
fn bzimage_boots_through_boot_params() {
    let kernel = TempFile::new(&tiny_bzimage());
    let initrd = TempFile::new(&vec![7u8; 3 * MIB as usize]);
    let mem = create_guest_memory(256 * MIB).unwrap();
    let boot = configure_system(&mem, &config(&kernel.0, Some(&initrd.0), 4)).unwrap();
    assert_eq!(boot.protocol, BootProtocol::Linux64);
    assert_eq!(boot.kernel.format, KernelFormat::BzImage);
    assert_eq!(boot.bsp_state.regs.rip, 0x10_0200);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.type_of_loader }, 0xff);
    assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ params.hdr.version }, 0x020f);
    assert_eq!({ params.acpi_rsdp_addr }, boot.rsdp.0);
    assert_eq!(params.e820_entries as usize, boot.e820.len());
    let rd = boot.initrd.unwrap();
    assert_eq!({ params.hdr.ramdisk_image } as u64, rd.addr.0);
    assert_eq!({ params.hdr.ramdisk_size } as u64, 3 * MIB);
    assert_eq!(rd.addr.0 + rd.size, 256 * MIB, "initrd placed as high as possible");
    assert!(rd.addr.0 >= 0x100_0000 + 0x40_0000, "initrd above the kernel's decompression area");
    let mut payload = [0u8; 2];
    mem.read_slice(&mut payload, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(payload, [0xcc, 0xcc]);
}

#[test]
fn garbage_and_truncated_kernels_are_named() {
    let mem = create_guest_memory(64 * MIB).unwrap();
    let garbage = TempFile::new(&[0x42; 4096]);
    let err = configure_system(&mem, &config(&garbage.0, None, 1)).unwrap_err();
    assert_eq!(err.to_string(), format!("{} is neither an ELF vmlinux nor a bzImage", garbage.0.display()));
    let empty = TempFile::new(&[]);
    assert!(matches!(configure_system(&mem, &config(&empty.0, None, 1)), Err(ArchError::NotAKernel { .. })));
    let elf = tiny_elf(true);
    let cut = TempFile::new(&elf[..0x1010]);
    let err = configure_system(&mem, &config(&cut.0, None, 1)).unwrap_err();
    assert!(matches!(err, ArchError::TruncatedKernel { format: "ELF", .. }), "{err}");
    let short = TempFile::new(&elf[..40]);
    assert!(matches!(
        configure_system(&mem, &config(&short.0, None, 1)),
        Err(ArchError::TruncatedKernel { .. })
    ));
    let bz = tiny_bzimage();
    let cut = TempFile::new(&bz[..2048]);
    let err = configure_system(&mem, &config(&cut.0, None, 1)).unwrap_err();
    assert!(matches!(err, ArchError::TruncatedKernel { format: "bzImage", .. }), "{err}");
    let missing = Path::new("/nonexistent/vmlinux");
    let err = configure_system(&mem, &config(missing, None, 1)).unwrap_err();
    assert_eq!(err.to_string(), "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn size_limits_are_reported() {
    let kernel = TempFile::new(&tiny_bzimage());
    let mem = create_guest_memory(16 * MIB).unwrap();
    let err = configure_system(&mem, &config(&kernel.0, None, 1)).unwrap_err();
    assert!(matches!(err, ArchError::MemoryTooSmallForKernel { .. }), "{err}");
    let elf = TempFile::new(&tiny_elf(true));
    let big = TempFile::new(&vec![0u8; 40 * MIB as usize]);
    let mem = create_guest_memory(48 * MIB).unwrap();
    let err = configure_system(&mem, &config(&elf.0, Some(&big.0), 1)).unwrap_err();
    assert!(
        err.to_string().starts_with("initrd (40 MiB) does not fit in 48 MiB of guest memory below 0x3000000"),
        "{err}"
    );
    let mut cfg = config(&elf.0, None, 1);
    cfg.cmdline = "x".repeat(3000);
    assert!(matches!(configure_system(&mem, &cfg), Err(ArchError::CmdlineTooLong { len: 3000, max: 2047 })));
    assert!(matches!(configure_system(&mem, &config(&elf.0, None, 0)), Err(ArchError::VcpuCount { .. })));
    assert!(matches!(configure_system(&mem, &config(&elf.0, None, 255)), Err(ArchError::VcpuCount { .. })));
}

#[test]
fn initrd_placement_respects_limits() {
    // Below initrd_addr_max, page aligned, above the kernel.
    let addr = loader::place_initrd(5000, 0x200_0000, 0x800_0000, 512 * MIB).unwrap();
    assert_eq!(addr, GuestAddress((0x800_0000 - 5000) & !0xfff));
    assert!(loader::place_initrd(0x600_0001, 0x200_0000, 0x800_0000, 512 * MIB).is_err());
    assert!(loader::place_initrd(u64::MAX, 0, 0x800_0000, 512 * MIB).is_err());
    let bz = TempFile::new(&tiny_bzimage());
    let mem = create_guest_memory(4 * GIB).unwrap();
    let kernel = loader::load_kernel(&mem, &bz.0).unwrap();
    assert_eq!(loader::initrd_limit(&kernel, 4 * GIB), 0x8000_0000, "initrd_addr_max + 1");
    let elf = TempFile::new(&tiny_elf(true));
    let kernel = loader::load_kernel(&mem, &elf.0).unwrap();
    assert_eq!(loader::initrd_limit(&kernel, 4 * GIB), layout::MMIO_HOLE_START);
}

use crate::layout::GIB;

/// Real kernels, if `VMR_TEST_KERNEL_DIR` holds `vmlinuz` or `bzImage` and/or `vmlinux` (ELF)
/// (tests/run.sh points it at the default guest image).
#[test]
fn real_kernels_load() {
    let Some(dir) = std::env::var_os("VMR_TEST_KERNEL_DIR") else {
        eprintln!("VMR_TEST_KERNEL_DIR not set; skipping");
        return;
    };
    let dir = PathBuf::from(dir);
    let mem = create_guest_memory(512 * MIB).unwrap();
    let bz = ["vmlinuz", "bzImage"].iter().map(|n| dir.join(n)).find(|p| p.exists());
    if let Some(bz) = bz {
        let boot = configure_system(&mem, &config(&bz, None, 2)).unwrap();
        assert_eq!(boot.kernel.format, KernelFormat::BzImage);
        let hdr = boot.kernel.setup_header.unwrap();
        assert!({ hdr.version } >= 0x020c);
        assert!({ hdr.init_size } > 0);
    }
    let elf = dir.join("vmlinux");
    if elf.exists() {
        let boot = configure_system(&mem, &config(&elf, None, 2)).unwrap();
        assert_eq!(boot.kernel.format, KernelFormat::Elf);
        assert_eq!(boot.protocol, BootProtocol::Pvh, "Debian vmlinux has a PVH note");
        assert!(boot.kernel.entry.0 < 1 << 32);
        // Every PT_LOAD segment is in guest memory byte for byte (the zero pages skipped by the
        // sparse loader included), into fresh memory.
        let mem = create_guest_memory(512 * MIB).unwrap();
        configure_system(&mem, &config(&elf, None, 2)).unwrap();
        let file = std::fs::read(&elf).unwrap();
        let u64_at = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap());
        let (phoff, phnum) = (u64_at(0x20) as usize, u16::from_le_bytes([file[0x38], file[0x39]]) as usize);
        let mut segments = 0;
        for i in 0..phnum {
            let ph = phoff + i * 56;
            if u32::from_le_bytes(file[ph..ph + 4].try_into().unwrap()) != 1 {
                continue;
            }
            let (offset, paddr, filesz) =
                (u64_at(ph + 8) as usize, u64_at(ph + 0x18), u64_at(ph + 0x20) as usize);
            let mut back = vec![0u8; filesz];
            mem.read_slice(&mut back, GuestAddress(paddr)).unwrap();
            assert!(back == file[offset..offset + filesz], "segment {i} differs");
            segments += 1;
        }
        assert!(segments > 0);
    }
}
