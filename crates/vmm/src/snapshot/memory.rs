//! The memory file: guest RAM regions back to back, in guest-address order, written sparse
//! (an all-zero page is a hole: no disk block) and mapped back privately (pages load when the
//! guest first touches them, writes stay in the process), so a restore costs the same for a
//! 256 MiB guest as for a 4 GiB one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vmr_hypervisor::vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use vmr_hypervisor::GuestMemory;

use super::SnapshotError;

/// Granularity of the zero test (and of holes).
pub const PAGE: usize = 4096;

/// One RAM region and where it lies in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// The layout of guest memory in the memory file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    pub regions: Vec<MemoryRegion>,
}

impl MemoryLayout {
    /// Bytes the memory file holds.
    pub fn file_len(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }
}

/// The layout of `mem`: regions in guest-address order, packed in the file.
pub fn layout(mem: &GuestMemory) -> MemoryLayout {
    let mut offset = 0;
    let regions = mem
        .iter()
        .map(|r| {
            let region = MemoryRegion { guest_addr: r.start_addr().0, size: r.len(), file_offset: offset };
            offset += r.len();
            region
        })
        .collect();
    MemoryLayout { regions }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |e| SnapshotError::Io(format!("{what}: {e}"))
}

/// Writes guest memory to `path`: the file gets its full length, and only pages that hold a
/// non-zero byte are written (consecutive ones in one write). Returns the bytes written.
pub fn save(mem: &GuestMemory, path: &Path) -> Result<u64, SnapshotError> {
    let file = File::create(path).map_err(io(format!("cannot create {}", path.display())))?;
    let layout = layout(mem);
    file.set_len(layout.file_len()).map_err(io(format!("cannot size {}", path.display())))?;
    let mut written = 0;
    for (r, l) in mem.iter().zip(&layout.regions) {
        let len = usize::try_from(r.len()).map_err(|_| SnapshotError::Io("region too large".into()))?;
        // SAFETY: the region maps `len` bytes at `as_ptr()` for as long as `mem` lives; the VM is
        // paused and its device workers parked, so nothing writes the bytes while they are read
        // (a concurrent write would only make the copy stale, never unsound for plain bytes).
        let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr() as *const u8, len) };
        written += write_sparse(&file, bytes, l.file_offset, path)?;
    }
    Ok(written)
}

fn write_sparse(file: &File, bytes: &[u8], base: u64, path: &Path) -> Result<u64, SnapshotError> {
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    let pages = bytes.len().div_ceil(PAGE);
    for p in 0..=pages {
        let zero = p == pages || vmr_arch::is_zero(&bytes[p * PAGE..((p + 1) * PAGE).min(bytes.len())]);
        match (zero, run) {
            (false, None) => run = Some(p),
            (true, Some(start)) => {
                let (from, to) = (start * PAGE, (p * PAGE).min(bytes.len()));
                file.write_all_at(&bytes[from..to], base + from as u64)
                    .map_err(io(format!("cannot write {}", path.display())))?;
                written += (to - from) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Maps the memory file as guest memory, privately: nothing is read until the guest touches a
/// page, and the guest's writes never reach the file.
pub fn map(path: &Path, layout: &MemoryLayout) -> Result<GuestMemory, SnapshotError> {
    let file = File::open(path).map_err(io(format!("cannot open the memory file {}", path.display())))?;
    let have = file.metadata().map_err(io(format!("cannot stat {}", path.display())))?.len();
    if have != layout.file_len() {
        return Err(SnapshotError::Invalid(format!(
            "the memory file {} has {have} bytes, the snapshot's guest memory {}",
            path.display(),
            layout.file_len()
        )));
    }
    let mut regions = Vec::with_capacity(layout.regions.len());
    for r in &layout.regions {
        let size = usize::try_from(r.size).map_err(|_| SnapshotError::Invalid("region too large".into()))?;
        let fd = file.try_clone().map_err(io("cannot duplicate the memory file".into()))?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(fd, r.file_offset)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| SnapshotError::Io(format!("cannot map {}: {e}", path.display())))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| SnapshotError::Invalid(format!("region at {:#x} overflows", r.guest_addr)))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| SnapshotError::Invalid(format!("guest memory: {e}")))
}
