//! Kernel and initrd loading: ELF vmlinux (PVH entry or 64-bit entry) and bzImage.
//!
//! The format is detected from the content, never from the file name. Header fields are checked
//! against the file length and the guest memory size before linux-loader copies anything, so a
//! truncated file or a too-small guest gets a precise error instead of a generic read failure.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::GuestMemory;

use crate::error::{write_err, ArchError, Result};
use crate::layout::{low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MIB};
use crate::prefault::prefault;
use crate::sparse::SparseReader;

const PAGE_SIZE: u64 = 4096;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
/// bzImage `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// initrd_addr_max for boot protocols before 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// The container format of a kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF vmlinux.
    Elf,
    /// A self-decompressing bzImage.
    BzImage,
}

/// How the BSP enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = `boot_params`.
    Linux64,
}

/// Where a kernel was loaded and how to start it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The detected format.
    pub format: KernelFormat,
    /// The entry protocol to use.
    pub protocol: BootProtocol,
    /// Guest physical address of the entry point.
    pub entry: GuestAddress,
    /// First address past everything the kernel occupies while booting (for a bzImage: its
    /// decompression area); the initrd goes above it.
    pub kernel_end: u64,
    /// The bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
}

/// Guest placement of a loaded initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest physical address (page aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Detects the kernel format from the first bytes of the file.
pub fn detect_format(image: &[u8]) -> Option<KernelFormat> {
    if image.get(..4) == Some(&ELF_MAGIC[..]) {
        return Some(KernelFormat::Elf);
    }
    let boot_flag = read_u16(image, 0x1fe)?;
    let magic = read_u32(image, 0x202)?;
    (boot_flag == BOOT_FLAG && magic == BZIMAGE_MAGIC).then_some(KernelFormat::BzImage)
}

/// Loads the kernel at `path` into `mem`: an ELF at its physical addresses (PVH entry if it has
/// the note, else its 64-bit entry), a bzImage's protected-mode part at 1 MiB.
///
/// Only the headers are read into VMM memory; segments go from the file into guest memory
/// through a 64 KiB buffer, so loading a 60+ MiB vmlinux costs no heap (it would count against
/// the VMM's memory overhead), and an ELF's zero pages are not written at all. `mem` must be
/// fresh (all zero), as [`crate::create_guest_memory`] makes it.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel> {
    let read_err = |source| ArchError::KernelRead { path: path.into(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut head = read_head(&mut file, HEAD_SIZE).map_err(read_err)?;
    let mem_size = crate::memory_size(mem);
    let format = detect_format(&head).ok_or_else(|| ArchError::NotAKernel { path: path.into() })?;
    if format == KernelFormat::Elf {
        // The program header table may lie past the first block.
        if let Some(end) = elf_phdr_end(&head).filter(|&end| end > head.len() as u64 && end <= MAX_ELF_HEAD) {
            file.seek(SeekFrom::Start(0)).map_err(read_err)?;
            head = read_head(&mut file, end).map_err(read_err)?;
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let image = KernelFile { head: &head, len, file: &mut file };
    match format {
        KernelFormat::Elf => load_elf(mem, mem_size, path, image),
        KernelFormat::BzImage => load_bzimage(mem, mem_size, path, image),
    }
}

/// How much of a kernel file is read to detect and check it.
const HEAD_SIZE: u64 = 64 * 1024;
/// An ELF whose program headers end beyond this is refused as malformed.
const MAX_ELF_HEAD: u64 = 1 << 20;

/// The headers of a kernel file, its length, and the file to load the rest from.
struct KernelFile<'a> {
    head: &'a [u8],
    len: u64,
    file: &'a mut File,
}

fn read_head(file: &mut File, size: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    file.take(size).read_to_end(&mut head)?;
    Ok(head)
}

/// End offset of an ELF's program header table, from its header.
fn elf_phdr_end(head: &[u8]) -> Option<u64> {
    let phoff = read_u64(head, 0x20)?;
    let phnum = u64::from(read_u16(head, 0x38)?);
    phnum.checked_mul(56)?.checked_add(phoff)
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Checks an ELF's headers against the file and the memory; returns the end of its segments.
fn check_elf(image: &[u8], file_len: u64, path: &Path, mem_size: u64) -> Result<u64> {
    let truncated = |what: String| ArchError::TruncatedKernel { path: path.into(), format: "ELF", what };
    let unsupported =
        |reason: &str| ArchError::UnsupportedKernel { path: path.into(), reason: reason.into() };
    if image.len() < 64 {
        return Err(truncated("the ELF header is incomplete".into()));
    }
    if image[4] != 2 || image[5] != 1 || read_u16(image, 18) != Some(62) {
        return Err(unsupported("not a little-endian 64-bit x86-64 ELF"));
    }
    let phoff = read_u64(image, 0x20).unwrap_or(0);
    let phentsize = u64::from(read_u16(image, 0x36).unwrap_or(0));
    let phnum = u64::from(read_u16(image, 0x38).unwrap_or(0));
    if phentsize != 56 || phnum == 0 {
        return Err(unsupported("the ELF has no usable program headers"));
    }
    let table_end = phnum.checked_mul(56).and_then(|n| n.checked_add(phoff));
    if table_end.is_none_or(|end| end > file_len) {
        return Err(truncated("the program header table lies past the end of the file".into()));
    }
    let mut kernel_end = 0u64;
    for i in 0..phnum {
        let ph = (phoff + i * 56) as usize;
        let field = |off: usize| read_u64(image, ph + off).unwrap_or(0);
        if read_u32(image, ph) != Some(1) {
            continue; // only PT_LOAD segments occupy memory
        }
        let (offset, paddr, filesz, memsz) = (field(8), field(0x18), field(0x20), field(0x28));
        if offset.checked_add(filesz).is_none_or(|end| end > file_len) {
            return Err(truncated(format!("segment {i} lies past the end of the file")));
        }
        if paddr < HIMEM_START {
            return Err(unsupported("a segment loads below 1 MiB, over the boot structures"));
        }
        let end =
            paddr.checked_add(memsz.max(filesz)).ok_or_else(|| unsupported("segment address overflows"))?;
        kernel_end = kernel_end.max(end);
    }
    if kernel_end == 0 {
        return Err(unsupported("the ELF has no loadable segment"));
    }
    if kernel_end > low_ram_end(mem_size) {
        return Err(ArchError::MemoryTooSmallForKernel { mem_mib: mem_size / MIB, needed_end: kernel_end });
    }
    Ok(kernel_end)
}

fn load_elf(mem: &GuestMemory, mem_size: u64, path: &Path, kernel: KernelFile) -> Result<LoadedKernel> {
    let kernel_end = check_elf(kernel.head, kernel.len, path, mem_size)?;
    // Half of a vmlinux's segments are zero pages: they stay untouched (see `sparse`).
    let mut reader = SparseReader::new(kernel.file);
    let result = Elf::load(mem, None, &mut reader, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| ArchError::KernelLoad { path: path.into(), source })?;
    let (protocol, entry) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (BootProtocol::Pvh, addr),
        _ => (BootProtocol::Linux64, result.kernel_load),
    };
    Ok(LoadedKernel { format: KernelFormat::Elf, protocol, entry, kernel_end, setup_header: None })
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    let align = align.max(1);
    v.checked_add(align - 1).map(|x| x / align * align)
}

fn load_bzimage(mem: &GuestMemory, mem_size: u64, path: &Path, kernel: KernelFile) -> Result<LoadedKernel> {
    let image = kernel.head;
    let truncated = |what: String| ArchError::TruncatedKernel { path: path.into(), format: "bzImage", what };
    let unsupported = |reason: String| ArchError::UnsupportedKernel { path: path.into(), reason };
    let version = read_u16(image, 0x206).ok_or_else(|| truncated("the setup header is incomplete".into()))?;
    if image.len() < 0x268 {
        return Err(truncated("the setup header is incomplete".into()));
    }
    let xloadflags = read_u16(image, 0x236).unwrap_or(0);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(format!(
            "boot protocol {version:#x} has no 64-bit entry point (2.12+ needed)"
        )));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(read_u32(image, 0x1f4).unwrap_or(0));
    let expected = (setup_sects + 1) * 512 + syssize * 16;
    if kernel.len < expected {
        return Err(truncated(format!("{} bytes, the header describes {expected}", kernel.len)));
    }
    let kernel_alignment = u64::from(read_u32(image, 0x230).unwrap_or(0));
    let pref_address = read_u64(image, 0x258).unwrap_or(0);
    let init_size = u64::from(read_u32(image, 0x260).unwrap_or(0));
    // A relocatable kernel decompresses at the load address aligned up, but never below its
    // preferred address; it needs init_size bytes from there.
    let run_addr = align_up(HIMEM_START, kernel_alignment).unwrap_or(HIMEM_START).max(pref_address);
    let kernel_end = run_addr.saturating_add(init_size).max(HIMEM_START.saturating_add(kernel.len));
    if kernel_end > low_ram_end(mem_size) {
        return Err(ArchError::MemoryTooSmallForKernel { mem_mib: mem_size / MIB, needed_end: kernel_end });
    }
    prefault(mem, GuestAddress(HIMEM_START), kernel.len);
    let result = BzImage::load(mem, None, kernel.file, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| ArchError::KernelLoad { path: path.into(), source })?;
    let entry = GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET);
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        protocol: BootProtocol::Linux64,
        entry,
        kernel_end,
        setup_header: result.setup_header,
    })
}

/// Highest address (exclusive) the kernel allows for the initrd.
pub fn initrd_limit(kernel: &LoadedKernel, mem_size: u64) -> u64 {
    let low_end = low_ram_end(mem_size);
    match &kernel.setup_header {
        Some(hdr) => {
            let max =
                if hdr.version >= 0x0203 { u64::from(hdr.initrd_addr_max) } else { DEFAULT_INITRD_ADDR_MAX };
            low_end.min(max.saturating_add(1))
        }
        None => low_end,
    }
}

/// Chooses the initrd address: as high as possible below `limit`, page aligned, above
/// `kernel_end`.
pub fn place_initrd(size: u64, kernel_end: u64, limit: u64, mem_size: u64) -> Result<GuestAddress> {
    let too_large = || ArchError::InitrdTooLarge {
        size_mib: size.div_ceil(MIB),
        mem_mib: mem_size / MIB,
        limit,
        kernel_end,
    };
    let start = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    let lowest = align_up(kernel_end, PAGE_SIZE).ok_or_else(too_large)?;
    if start < lowest {
        return Err(too_large());
    }
    Ok(GuestAddress(start))
}

/// Loads the initrd at `path` as high as the kernel allows.
pub fn load_initrd(mem: &GuestMemory, path: &Path, kernel: &LoadedKernel) -> Result<InitrdInfo> {
    let read_err = |source| ArchError::InitrdRead { path: path.into(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let mem_size = crate::memory_size(mem);
    let addr = place_initrd(size, kernel.kernel_end, initrd_limit(kernel, mem_size), mem_size)?;
    // Straight from the file into guest memory: no copy of the initrd on the VMM's heap.
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    prefault(mem, addr, size);
    mem.read_exact_volatile_from(addr, &mut file, len).map_err(write_err("initrd"))?;
    Ok(InitrdInfo { addr, size })
}

/// Most bytes (with the NUL) of command line this kernel accepts.
pub fn cmdline_max(kernel: &LoadedKernel) -> usize {
    match &kernel.setup_header {
        Some(hdr) if hdr.version >= 0x0206 && hdr.cmdline_size > 0 => {
            CMDLINE_MAX_SIZE.min(hdr.cmdline_size as usize + 1)
        }
        _ => CMDLINE_MAX_SIZE,
    }
}

/// Checks and writes the NUL-terminated command line at [`CMDLINE_START`].
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<()> {
    if cmdline.as_bytes().contains(&0) {
        return Err(ArchError::CmdlineNul);
    }
    if cmdline.len() + 1 > max {
        return Err(ArchError::CmdlineTooLong { len: cmdline.len(), max: max - 1 });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START)).map_err(write_err("kernel command line"))
}
