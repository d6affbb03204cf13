//! Reads and writes of linear (and segment-relative) addresses.

use super::tlb::{TlbEntry, P_WFAST};
use crate::cpu::{Cpu, Ex, Exc, FS, GS};

/// Kind of memory access, for permission checks and page-fault error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const READ: Access = Access(0);
    pub const WRITE: Access = Access(1);
    pub const EXEC: Access = Access(2);
    /// Implicit supervisor read (descriptor tables, TSS, IDT) regardless of CPL.
    pub const SYS_READ: Access = Access(4);
    pub const SYS_WRITE: Access = Access(5);

    #[inline(always)]
    pub fn is_write(self) -> bool {
        self.0 & 1 != 0
    }
    #[inline(always)]
    pub fn is_exec(self) -> bool {
        self.0 & 2 != 0
    }
    #[inline(always)]
    pub fn is_sys(self) -> bool {
        self.0 & 4 != 0
    }
}

impl Cpu {
    /// Linear address of offset `ea` in segment `seg` (64-bit mode: only FS/GS have bases).
    #[inline(always)]
    pub fn lin(&self, seg: usize, ea: u64) -> u64 {
        if self.bitness == 64 {
            if seg == FS || seg == GS {
                ea.wrapping_add(self.seg[seg].base)
            } else {
                ea
            }
        } else {
            ea.wrapping_add(self.seg[seg % 6].base) & 0xffff_ffff
        }
    }

    /// Reads `size` (1, 2, 4 or 8) bytes at linear `lin`.
    #[inline(always)]
    pub fn read_lin(&mut self, lin: u64, size: u8, acc: Access) -> Ex<u64> {
        if (lin & 0xfff) + size as u64 <= 0x1000 {
            let (gpa, host) = self.translate_page(lin, acc)?;
            if host != 0 {
                let p = host + (lin & 0xfff) as usize;
                if self.locked && acc.is_write() {
                    return Ok(self.locked_read(p, size));
                }
                // SAFETY: `host` is the start of a mapped 4 KiB RAM page and the access stays
                // inside it (checked above); unaligned reads are allowed by read_unaligned.
                return Ok(unsafe {
                    match size {
                        1 => *(p as *const u8) as u64,
                        2 => std::ptr::read_unaligned(p as *const u16) as u64,
                        4 => std::ptr::read_unaligned(p as *const u32) as u64,
                        _ => std::ptr::read_unaligned(p as *const u64),
                    }
                });
            }
            // MMIO: let the run loop look at kicks and interrupts right after this instruction.
            self.block_break = true;
            return Ok(self.mem.read_phys_u(gpa | (lin & 0xfff), size));
        }
        let mut buf = [0u8; 8];
        self.read_bytes(lin, &mut buf[..(size as usize).min(8)], acc)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Writes `size` (1, 2, 4 or 8) bytes at linear `lin`.
    #[inline(always)]
    pub fn write_lin(&mut self, lin: u64, size: u8, v: u64, acc: Access) -> Ex {
        if (lin & 0xfff) + size as u64 <= 0x1000 {
            let e = self.translate(lin, acc)?;
            if e.perm & P_WFAST != 0 {
                let p = e.host + (lin & 0xfff) as usize;
                if self.locked {
                    return self.locked_write(p, size, v);
                }
                // SAFETY: P_WFAST is only set for mapped RAM pages; the access stays inside the
                // page (checked above).
                unsafe {
                    match size {
                        1 => *(p as *mut u8) = v as u8,
                        2 => std::ptr::write_unaligned(p as *mut u16, v as u16),
                        4 => std::ptr::write_unaligned(p as *mut u32, v as u32),
                        _ => std::ptr::write_unaligned(p as *mut u64, v),
                    }
                }
                return Ok(());
            }
            self.write_phys_slow(e, lin, &v.to_le_bytes()[..(size as usize).min(8)]);
            return Ok(());
        }
        self.write_bytes(lin, &v.to_le_bytes()[..(size as usize).min(8)], acc)
    }

    /// The read half of a locked read-modify-write: remembers the value for the CAS.
    #[cold]
    fn locked_read(&mut self, p: usize, size: u8) -> u64 {
        // SAFETY: `p` points at `size` readable bytes inside a mapped RAM page (callers check
        // that the access does not cross the page).
        let v = unsafe {
            match size {
                1 => *(p as *const u8) as u64,
                2 => std::ptr::read_unaligned(p as *const u16) as u64,
                4 => std::ptr::read_unaligned(p as *const u32) as u64,
                _ => std::ptr::read_unaligned(p as *const u64),
            }
        };
        self.rmw = Some((p, size, v));
        v
    }

    /// The write half: compare-and-swap against the value read; a lost race asks the run
    /// loop to execute the instruction again. Misaligned locked accesses (split locks, which
    /// Linux never issues) are written non-atomically.
    #[cold]
    fn locked_write(&mut self, p: usize, size: u8, v: u64) -> Ex {
        use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};
        let old = match self.rmw.take() {
            Some((q, s, old)) if q == p && s == size && p.is_multiple_of(size as usize) => old,
            _ => {
                // SAFETY: as in `locked_read`.
                unsafe {
                    match size {
                        1 => *(p as *mut u8) = v as u8,
                        2 => std::ptr::write_unaligned(p as *mut u16, v as u16),
                        4 => std::ptr::write_unaligned(p as *mut u32, v as u32),
                        _ => std::ptr::write_unaligned(p as *mut u64, v),
                    }
                }
                return Ok(());
            }
        };
        // SAFETY: `p` is aligned to `size` (checked above) and inside a mapped RAM page;
        // atomics have the size and alignment of the plain integers.
        let ok = unsafe {
            match size {
                1 => AtomicU8::from_ptr(p as *mut u8)
                    .compare_exchange(old as u8, v as u8, SeqCst, SeqCst)
                    .is_ok(),
                2 => AtomicU16::from_ptr(p as *mut u16)
                    .compare_exchange(old as u16, v as u16, SeqCst, SeqCst)
                    .is_ok(),
                4 => AtomicU32::from_ptr(p as *mut u32)
                    .compare_exchange(old as u32, v as u32, SeqCst, SeqCst)
                    .is_ok(),
                _ => AtomicU64::from_ptr(p as *mut u64).compare_exchange(old, v, SeqCst, SeqCst).is_ok(),
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Exc::retry())
        }
    }

    #[cold]
    fn write_phys_slow(&mut self, e: TlbEntry, lin: u64, data: &[u8]) {
        if e.host == 0 {
            self.block_break = true;
        }
        self.mem.write_phys(e.gpa | (lin & 0xfff), data);
        if !self.mem.dirty_code.is_empty() {
            self.block_break = true;
        }
        if e.host != 0 {
            // The page may have stopped being a code page: re-walk to regain fast writes.
            self.mem.tlb.flush_page(lin);
        }
    }

    /// Reads any number of bytes; all pages are translated before anything is read.
    pub fn read_bytes(&mut self, lin: u64, buf: &mut [u8], acc: Access) -> Ex {
        let mut pages = [TlbEntry::default(); 2];
        let n = self.translate_span(lin, buf.len(), acc, &mut pages)?;
        let mut off = 0usize;
        for (i, e) in pages[..n].iter().enumerate() {
            let start = if i == 0 { lin & 0xfff } else { 0 };
            let chunk = ((0x1000 - start) as usize).min(buf.len() - off);
            self.mem.read_phys(e.gpa | start, &mut buf[off..off + chunk]);
            off += chunk;
        }
        Ok(())
    }

    /// Writes any number of bytes (at most two pages); all pages are translated first.
    pub fn write_bytes(&mut self, lin: u64, data: &[u8], acc: Access) -> Ex {
        let mut pages = [TlbEntry::default(); 2];
        let n = self.translate_span(lin, data.len(), acc, &mut pages)?;
        let mut off = 0usize;
        for (i, e) in pages[..n].iter().enumerate() {
            let start = if i == 0 { lin & 0xfff } else { 0 };
            let chunk = ((0x1000 - start) as usize).min(data.len() - off);
            self.mem.write_phys(e.gpa | start, &data[off..off + chunk]);
            off += chunk;
        }
        if !self.mem.dirty_code.is_empty() {
            self.block_break = true;
        }
        Ok(())
    }

    /// Translates the (at most two) pages `[lin, lin+len)` touches.
    fn translate_span(&mut self, lin: u64, len: usize, acc: Access, out: &mut [TlbEntry; 2]) -> Ex<usize> {
        let len = len.clamp(1, 0x1000);
        out[0] = self.translate(lin, acc)?;
        let last = self.wrap_lin(lin.wrapping_add(len as u64 - 1));
        if last >> 12 == lin >> 12 {
            return Ok(1);
        }
        out[1] = self.translate(last & !0xfff, acc)?;
        Ok(2)
    }

    /// Wraps a linear address to 32 bits outside long mode.
    #[inline]
    pub fn wrap_lin(&self, lin: u64) -> u64 {
        if self.long_mode() {
            lin
        } else {
            lin & 0xffff_ffff
        }
    }

    /// Reads `size` bytes at `seg:ea`.
    #[inline(always)]
    pub fn read_seg(&mut self, seg: usize, ea: u64, size: u8) -> Ex<u64> {
        let lin = self.lin(seg, ea);
        self.read_lin(lin, size, Access::READ)
    }

    /// Writes `size` bytes at `seg:ea`.
    #[inline(always)]
    pub fn write_seg(&mut self, seg: usize, ea: u64, size: u8, v: u64) -> Ex {
        let lin = self.lin(seg, ea);
        self.write_lin(lin, size, v, Access::WRITE)
    }
}
