//! Reading a kernel or initrd into fresh guest memory without touching its zero pages.
//!
//! Half of the 57 MiB a Debian vmlinux loads is zeros (`.bss` and friends are stored in the
//! file). Fresh anonymous guest memory already reads as zero, so writing those pages only costs
//! page allocation, zeroing and the copy, and makes them resident before the guest needs them.
//! [`SparseReader`] stands in for the file under linux-loader: it reads through a small bounce
//! buffer and copies only the guest pages that are not all zero, faulting each run of them in
//! with one `MADV_POPULATE_WRITE` first (see `prefault`). In the nested lab that removes most
//! of the loader's time (`load_ms`, docs/BENCHMARKS.md), and the guest starts with 27 MiB less
//! resident memory.
//!
//! The destination must be fresh memory (all zero), which `create_guest_memory` gives.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PAGE_SIZE: usize = 4096;
/// The bounce buffer: small, because it counts in the VMM's own memory.
const CHUNK: usize = 64 * 1024;

/// A file read for loading into fresh guest memory (see the module documentation).
pub struct SparseReader<'a> {
    file: &'a mut File,
    buf: Vec<u8>,
    /// Bytes copied into guest memory and bytes skipped as zero pages, for tests and stats.
    pub copied: u64,
    pub skipped: u64,
}

impl<'a> SparseReader<'a> {
    pub fn new(file: &'a mut File) -> Self {
        SparseReader { file, buf: vec![0; CHUNK], copied: 0, skipped: 0 }
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for SparseReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Whether `bytes` are all zero, 64 bytes at a time (the loop the compiler vectorises). Also
/// what the snapshot writer uses to leave zero pages as holes.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        let any = block
            .chunks_exact(8)
            .fold(0u64, |acc, w| acc | u64::from_ne_bytes(w.try_into().unwrap_or([0xff; 8])));
        if any != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

impl ReadVolatile for SparseReader<'_> {
    /// Fills as much of `dst` as the file has (vm-memory does not call again for the rest).
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        dst: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < dst.len() {
            let want = (dst.len() - done).min(CHUNK);
            let got = self.fill(want)?;
            if got == 0 {
                break;
            }
            self.copy_nonzero(&dst.subslice(done, got)?, got)?;
            done += got;
        }
        Ok(done)
    }
}

impl SparseReader<'_> {
    /// Reads up to `want` bytes into the buffer; fewer only at the end of the file.
    fn fill(&mut self, want: usize) -> Result<usize, VolatileMemoryError> {
        let mut got = 0;
        while got < want {
            match self.file.read(&mut self.buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VolatileMemoryError::IOError(e)),
            }
        }
        Ok(got)
    }

    /// Copies the first `len` buffered bytes to `dst` except the guest pages they leave zero.
    fn copy_nonzero<B: BitmapSlice>(
        &mut self,
        dst: &VolatileSlice<B>,
        len: usize,
    ) -> Result<(), VolatileMemoryError> {
        // Pieces end on the destination's page boundaries, so a skipped piece is a whole guest
        // page (or the part of one this read covers).
        let base = dst.ptr_guard_mut().as_ptr() as usize;
        let piece_end = |off: usize| ((base + off + PAGE_SIZE) & !(PAGE_SIZE - 1)) - base;
        let mut off = 0;
        while off < len {
            let mut end = piece_end(off).min(len);
            if is_zero(&self.buf[off..end]) {
                self.skipped += (end - off) as u64;
                off = end;
                continue;
            }
            // A run of non-zero pages: faulted in with one call, then copied.
            while end < len {
                let next = piece_end(end).min(len);
                if is_zero(&self.buf[end..next]) {
                    break;
                }
                end = next;
            }
            let run = dst.subslice(off, end - off)?;
            populate(run.ptr_guard_mut().as_ptr(), end - off);
            run.copy_from(&self.buf[off..end]);
            self.copied += (end - off) as u64;
            off = end;
        }
        Ok(())
    }
}

/// Faults `[ptr, ptr + len)` in for writing in one system call (best effort).
fn populate(ptr: *mut u8, len: usize) {
    let start = ptr as usize & !(PAGE_SIZE - 1);
    let span = ptr as usize + len - start;
    // SAFETY: the range lies in a live guest-memory mapping (a subslice of the destination,
    // widened down to its page start, which is in the same mapping because mappings are page
    // aligned); MADV_POPULATE_WRITE only faults pages in, it does not change their contents.
    unsafe { libc::madvise(start as *mut libc::c_void, span, libc::MADV_POPULATE_WRITE) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{create_guest_memory, MIB};
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    fn resident_pages(mem: &vmr_hypervisor::GuestMemory, addr: u64, len: usize) -> Vec<bool> {
        let host = mem.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = vec![0u8; len / PAGE_SIZE];
        // SAFETY: the range is inside guest RAM's mapping (page aligned); one byte per page.
        assert_eq!(unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) }, 0);
        vec.iter().map(|&b| b & 1 != 0).collect()
    }

    /// Pages: data, zero, zero, data, data, zero, then a data tail of 100 bytes: 3 chunks' worth
    /// with the runs crossing the 64 KiB chunk boundary.
    fn image() -> Vec<u8> {
        let mut v = Vec::new();
        for (i, kind) in [1, 0, 0, 1, 1, 0].iter().cycle().take(40).enumerate() {
            let fill = if *kind == 1 { (i as u8).wrapping_mul(37) | 1 } else { 0 };
            v.extend(std::iter::repeat_n(fill, PAGE_SIZE));
        }
        v.extend([7u8; 100]);
        v
    }

    fn load(addr: u64) -> (vmr_hypervisor::GuestMemory, Vec<u8>, u64, u64) {
        let data = image();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mem = create_guest_memory(64 * MIB).unwrap();
        let mut reader = SparseReader::new(&mut file);
        mem.read_exact_volatile_from(GuestAddress(addr), &mut reader, data.len()).unwrap();
        let (copied, skipped) = (reader.copied, reader.skipped);
        (mem, data, copied, skipped)
    }

    #[test]
    fn content_is_the_file_and_zero_pages_stay_untouched() {
        let addr = 16 * MIB;
        let (mem, data, copied, skipped) = load(addr);
        // Residency first: reading a zero page back maps the shared zero page, which mincore
        // counts as resident.
        let resident = resident_pages(&mem, addr, data.len().div_ceil(PAGE_SIZE) * PAGE_SIZE);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert!(back == data, "guest memory differs from the file");
        assert_eq!(copied + skipped, data.len() as u64);
        let zero_pages = data.chunks(PAGE_SIZE).filter(|p| p.iter().all(|&b| b == 0)).count();
        assert_eq!(skipped, (zero_pages * PAGE_SIZE) as u64);
        for (i, page) in data.chunks(PAGE_SIZE).enumerate() {
            let zero = page.iter().all(|&b| b == 0);
            assert_eq!(resident[i], !zero, "page {i} (zero: {zero}) residency");
        }
    }

    #[test]
    fn an_unaligned_destination_gets_the_same_bytes() {
        let addr = 16 * MIB + 1234;
        let (mem, data, copied, skipped) = load(addr);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert!(back == data, "guest memory differs from the file");
        assert_eq!(copied + skipped, data.len() as u64);
        // Pieces end on guest page boundaries: a zero file page straddles two guest pages,
        // whose other parts are data, so less is skipped than with an aligned destination.
        assert!(skipped < (data.len() / 2) as u64, "skipped {skipped}");
    }

    #[test]
    fn zero_test_sees_a_single_byte() {
        let mut page = vec![0u8; PAGE_SIZE + 3];
        assert!(is_zero(&page));
        for i in [0, 7, 8, 63, 64, 4095, PAGE_SIZE + 2] {
            page[i] = 1;
            assert!(!is_zero(&page), "byte {i}");
            page[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
