//! `cache=none`: O_DIRECT I/O, which needs offsets, lengths and buffer addresses aligned to the
//! device's logical block size. [`AlignedBuf`] is memory with that alignment; [`DirectFile`]
//! reads and writes any range of an O_DIRECT file, going straight to the file when the request
//! is aligned and through an aligned bounce buffer (read-modify-write of the edge blocks for
//! writes) when it is not.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;

/// Alignment of O_DIRECT requests: 4 KiB covers the logical block size of common disks and
/// filesystems (512-byte devices accept it too).
pub const DIRECT_ALIGN: usize = 4096;
/// Size of the bounce buffer of unaligned requests (larger requests go in several steps).
const BOUNCE_LEN: usize = 1 << 20;

/// A zeroed heap buffer whose address is aligned to [`DIRECT_ALIGN`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes (at least one byte is allocated).
    pub fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        // A size this large cannot be allocated anyway: treat it like an allocation failure.
        Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .unwrap_or_else(|_| alloc::handle_alloc_error(Layout::new::<u8>()))
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialized (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Switches an open file to O_DIRECT (EINVAL where the filesystem has no direct I/O).
pub(crate) fn set_direct(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_aligned(addr: usize, len: usize, offset: u64) -> bool {
    let a = DIRECT_ALIGN;
    addr.is_multiple_of(a) && len.is_multiple_of(a) && offset.is_multiple_of(a as u64)
}

/// An O_DIRECT file that accepts requests of any alignment.
pub(crate) struct DirectFile {
    bounce: Option<AlignedBuf>,
}

impl DirectFile {
    pub(crate) fn new() -> Self {
        DirectFile { bounce: None }
    }

    fn bounce(&mut self) -> &mut AlignedBuf {
        self.bounce.get_or_insert_with(|| AlignedBuf::new(BOUNCE_LEN))
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zero.
    pub(crate) fn read_at(&mut self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if is_aligned(buf.as_ptr() as usize, buf.len(), offset) {
            return file.read_exact_at(buf, offset);
        }
        let mut done = 0;
        while done < buf.len() {
            let Chunk { start, skip, want, span } = Chunk::at(offset, done, buf.len());
            let bounce = self.bounce();
            read_full(file, &mut bounce[..span], start)?;
            buf[done..done + want].copy_from_slice(&bounce[skip..skip + want]);
            done += want;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`. Unaligned edges are read, patched and written back, so
    /// the file's size must be a multiple of [`DIRECT_ALIGN`] (checked at open).
    pub(crate) fn write_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if is_aligned(buf.as_ptr() as usize, buf.len(), offset) {
            return file.write_all_at(buf, offset);
        }
        let a = DIRECT_ALIGN;
        let mut done = 0;
        while done < buf.len() {
            let Chunk { start, skip, want, span } = Chunk::at(offset, done, buf.len());
            let bounce = self.bounce();
            if skip != 0 {
                read_full(file, &mut bounce[..a], start)?;
            }
            if !(skip + want).is_multiple_of(a) && (skip == 0 || span > a) {
                read_full(file, &mut bounce[span - a..span], start + (span - a) as u64)?;
            }
            bounce[skip..skip + want].copy_from_slice(&buf[done..done + want]);
            file.write_all_at(&bounce[..span], start)?;
            done += want;
        }
        Ok(())
    }
}

/// One bounce-buffer pass of an unaligned request: the aligned file range `start..start+span`
/// (at most [`BOUNCE_LEN`]) holds the request's bytes `done..done+want` at `skip`.
struct Chunk {
    start: u64,
    skip: usize,
    want: usize,
    span: usize,
}

impl Chunk {
    /// The pass for a request of `len` bytes at `offset` of which `done` are handled.
    fn at(offset: u64, done: usize, len: usize) -> Chunk {
        let pos = offset + done as u64;
        let start = pos - pos % DIRECT_ALIGN as u64;
        let skip = (pos - start) as usize;
        let want = (len - done).min(BOUNCE_LEN - skip);
        Chunk { start, skip, want, span: (skip + want).next_multiple_of(DIRECT_ALIGN) }
    }
}

/// Fills `buf` from `offset`, zero-filling what lies past the end of the file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[got..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        for len in [0, 1, 4096, 300_000] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn alignment_check() {
        assert!(is_aligned(8192, 4096, 4096));
        assert!(!is_aligned(8192 + 512, 4096, 0));
        assert!(!is_aligned(8192, 512, 0));
        assert!(!is_aligned(8192, 4096, 512));
    }
}
