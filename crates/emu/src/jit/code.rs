//! The bounded code cache: one memfd mapped twice, writable at one address and executable at
//! another (no page is ever writable and executable through the same mapping), filled by a
//! bump pointer. When it is full everything in it is dropped at once (a new generation):
//! translations are cheap to redo and a flush happens only between blocks, never while
//! translated code runs.

use std::ptr::NonNull;

use super::JitError;

/// The code cache of one vCPU.
pub struct CodeCache {
    rw: NonNull<u8>,
    rx: NonNull<u8>,
    size: usize,
    used: usize,
    /// Advanced by every flush: translations of an older generation are gone.
    pub generation: u32,
    /// Flushes so far (statistics, tests).
    pub flushes: u64,
}

// SAFETY: the mappings belong to this value alone and are only touched through `&mut self`
// (writes) or by running translated code on the thread that owns the engine.
unsafe impl Send for CodeCache {}

impl CodeCache {
    /// A cache of `size` bytes (rounded up to whole pages).
    pub fn new(size: usize) -> Result<CodeCache, JitError> {
        let size = size.div_ceil(4096).max(1) * 4096;
        // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vmr-emu-jit".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(JitError::Map(std::io::Error::last_os_error()));
        }
        let map = |prot| {
            // SAFETY: a fresh shared mapping of the memfd (sized below); checked for failure.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0) };
            if p == libc::MAP_FAILED {
                Err(JitError::Map(std::io::Error::last_os_error()))
            } else {
                Ok(NonNull::new(p as *mut u8).expect("mmap returned NULL"))
            }
        };
        // SAFETY: `fd` is ours; ftruncate sizes the memfd before it is mapped.
        let r = unsafe { libc::ftruncate(fd, size as libc::off_t) };
        let maps = if r < 0 {
            Err(JitError::Map(std::io::Error::last_os_error()))
        } else {
            map(libc::PROT_READ | libc::PROT_WRITE)
                .and_then(|rw| Ok((rw, map(libc::PROT_READ | libc::PROT_EXEC)?)))
        };
        // SAFETY: the mappings keep the memory alive; the descriptor is no longer needed.
        unsafe { libc::close(fd) };
        let (rw, rx) = maps?;
        Ok(CodeCache { rw, rx, size, used: 0, generation: 0, flushes: 0 })
    }

    /// The executable address the next translation will be placed at, if `len` more bytes fit.
    pub fn next_addr(&self, len: usize) -> Option<u64> {
        (self.used + len <= self.size).then(|| self.rx.as_ptr() as u64 + self.used as u64)
    }

    /// Drops every translation.
    pub fn flush(&mut self) {
        self.used = 0;
        self.generation = self.generation.wrapping_add(1);
        self.flushes += 1;
    }

    /// Copies `code` (assembled for [`CodeCache::next_addr`]) in; returns its entry address.
    pub fn push(&mut self, code: &[u8]) -> Option<u64> {
        let at = self.next_addr(code.len())?;
        // SAFETY: `used + code.len() <= size` (next_addr); the writable mapping covers `size`
        // bytes and nothing executes this range yet (it is past every published entry).
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.as_ptr().add(self.used), code.len()) };
        // Keep entries 16-byte aligned.
        self.used = (self.used + code.len()).div_ceil(16) * 16;
        Some(at)
    }

    /// Bytes in use (counted in the VMM's overhead).
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn capacity(&self) -> usize {
        self.size
    }
}

impl Drop for CodeCache {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with `size` bytes and are unmapped once.
        unsafe {
            libc::munmap(self.rw.as_ptr() as *mut _, self.size);
            libc::munmap(self.rx.as_ptr() as *mut _, self.size);
        }
    }
}
