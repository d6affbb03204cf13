//! Faulting in the guest memory the loader is about to fill, in one system call.
//!
//! Loading a kernel writes tens of MiB into fresh anonymous memory. Faulted in page by page,
//! that is one exception per 4 KiB, which is cheap on bare metal but not under nested or
//! emulated virtualisation. `MADV_POPULATE_WRITE` (Linux 5.14) makes the range resident in one
//! call: natively it took loading the 60 MiB of the generic Debian vmlinux + initramfs from
//! ~190 ms to ~90 ms (medians of 6, a busy host). Asking for transparent huge pages as well
//! (`MADV_HUGEPAGE`) took it to 30 ms natively, but in the nested lab it made start-up 4-6 s
//! slower once memory was fragmented (the host compacts memory to find huge pages), so guest
//! RAM keeps the host's default. Only what the loader writes right after becomes resident, so the guest's memory footprint
//! does not change. Kernels without it refuse the call and pages fault in as before.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmr_hypervisor::GuestMemory;

const PAGE_SIZE: usize = 4096;

/// Makes `[start, start + len)` of guest RAM resident and writable; parts outside RAM are
/// skipped. Returns false if the host refused (nothing is wrong then, only slower).
pub fn prefault(mem: &GuestMemory, start: GuestAddress, len: u64) -> bool {
    let end = start.0.saturating_add(len);
    let mut populated = true;
    for region in mem.iter() {
        let region_start = region.start_addr().0;
        let region_end = region_start.saturating_add(region.len());
        let (from, to) = (start.0.max(region_start), end.min(region_end));
        if from >= to {
            continue;
        }
        let Ok(host) = region.get_host_address(MemoryRegionAddress(from - region_start)) else {
            populated = false;
            continue;
        };
        // The region's mapping starts on a page boundary, so aligning down stays inside it.
        let offset = host as usize % PAGE_SIZE;
        let Ok(bytes) = usize::try_from(to - from) else {
            populated = false;
            continue;
        };
        // SAFETY: `[host - offset, host + bytes)` lies inside the region's live mapping (checked
        // against the region bounds above); MADV_POPULATE_WRITE only faults pages in, it does
        // not change their contents.
        let rc = unsafe { libc::madvise(host.sub(offset).cast(), bytes + offset, libc::MADV_POPULATE_WRITE) };
        populated &= rc == 0;
    }
    populated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{create_guest_memory, MIB};

    /// Resident pages of `[addr, addr + len)` of guest RAM, from mincore(2).
    fn resident_pages(mem: &GuestMemory, addr: u64, len: usize) -> usize {
        let host = mem.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = vec![0u8; len / PAGE_SIZE];
        // SAFETY: the range is inside guest RAM's mapping (page aligned); `vec` has one byte
        // per page.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn the_range_becomes_resident_and_nothing_else() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(resident_pages(&mem, 8 * MIB, MIB as usize), 0, "fresh memory is not resident");
        if !prefault(&mem, GuestAddress(8 * MIB + 100), MIB - 200) {
            eprintln!("MADV_POPULATE_WRITE unsupported on this host; nothing to check");
            return;
        }
        assert_eq!(resident_pages(&mem, 8 * MIB, MIB as usize), 256);
        assert_eq!(resident_pages(&mem, 16 * MIB, MIB as usize), 0, "outside the range");
    }

    #[test]
    fn ranges_past_ram_are_skipped() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        prefault(&mem, GuestAddress(63 * MIB), 100 * MIB);
        prefault(&mem, GuestAddress(u64::MAX - 10), 100);
        prefault(&mem, GuestAddress(0), 0);
    }
}
