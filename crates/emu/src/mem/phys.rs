//! Guest physical memory: RAM through host pointers, the rest through `VmOps` as MMIO.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmr_hypervisor::vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmr_hypervisor::{GuestMemory, VmOps};

use super::tlb::Tlb;
use crate::error::EmuError;

/// One RAM region: guest physical `[gpa, gpa + len)` at host address `host`.
#[derive(Clone, Copy, Debug)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Guest physical memory plus the per-vCPU software TLB and code-page tracking.
pub struct Memory {
    regions: Vec<Region>,
    ops: Option<Arc<dyn VmOps>>,
    /// Keeps the mappings behind `regions` alive.
    _guest: Option<GuestMemory>,
    /// One byte per 4 KiB page of `[0, code_map.len() * 4096)`: non-zero when decoded code
    /// from that page is cached.
    code_map: Vec<u8>,
    /// Physical pages holding cached code that were written; the engine drops their blocks.
    pub dirty_code: Vec<u64>,
    pub tlb: Tlb,
}

// SAFETY: the raw host pointers point into mappings owned by `_guest` (kept alive as long as
// this value) and are only dereferenced through the accessors below; guest memory is shared
// memory by design, concurrent guest accesses from several vCPUs are the guest's business.
unsafe impl Send for Memory {}

impl Memory {
    /// Memory with no RAM and no devices (reads return all ones): for unit tests.
    pub fn empty() -> Self {
        Memory {
            regions: Vec::new(),
            ops: None,
            _guest: None,
            code_map: Vec::new(),
            dirty_code: Vec::new(),
            tlb: Tlb::new(),
        }
    }

    /// Wraps `guest` (RAM) and `ops` (everything outside RAM).
    pub fn new(guest: &GuestMemory, ops: Option<Arc<dyn VmOps>>) -> Result<Self, EmuError> {
        let mut regions = Vec::new();
        let mut top = 0u64;
        for r in guest.iter() {
            let gpa = r.start_addr().0;
            let len = r.len();
            if gpa & 0xfff != 0 || len & 0xfff != 0 {
                return Err(EmuError::Memory(format!("region {gpa:#x}+{len:#x} is not page aligned")));
            }
            let host = r.as_ptr();
            if host.is_null() {
                return Err(EmuError::Memory(format!("region {gpa:#x} has no host mapping")));
            }
            regions.push(Region { gpa, len, host });
            top = top.max(gpa + len);
        }
        let pages = usize::try_from(top >> 12).map_err(|_| EmuError::Memory("RAM too large".into()))?;
        Ok(Memory {
            regions,
            ops,
            _guest: Some(guest.clone()),
            code_map: vec![0; pages],
            dirty_code: Vec::new(),
            tlb: Tlb::new(),
        })
    }

    /// Host pointer to the start of the 4 KiB RAM page holding `gpa`, or None for MMIO.
    #[inline]
    pub fn host_page(&self, gpa: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.gpa);
            if off < r.len {
                // SAFETY: off < len, so the result stays inside the region's mapping.
                return Some(unsafe { r.host.add((off & !0xfff) as usize) });
            }
        }
        None
    }

    /// Whether the page is marked as holding cached code.
    #[inline]
    pub fn is_code_page(&self, gpa: u64) -> bool {
        self.code_map.get((gpa >> 12) as usize).is_some_and(|&b| b != 0)
    }

    /// Marks the page as holding cached code; writable TLB entries to it are dropped so
    /// writes take the slow path that notices.
    pub fn mark_code_page(&mut self, gpa: u64) {
        if let Some(b) = self.code_map.get_mut((gpa >> 12) as usize) {
            if *b == 0 {
                *b = 1;
                self.tlb.drop_fast_writes(gpa & !0xfff);
            }
        }
    }

    /// Notes a write to physical `[gpa, gpa+len)`: pages with cached code are queued for
    /// invalidation. Returns true if any was.
    pub fn note_write(&mut self, gpa: u64, len: usize) -> bool {
        let mut hit = false;
        let mut page = gpa & !0xfff;
        let end = gpa.saturating_add(len.max(1) as u64 - 1);
        while page <= end {
            if let Some(b) = self.code_map.get_mut((page >> 12) as usize) {
                if *b != 0 {
                    *b = 0;
                    self.dirty_code.push(page);
                    hit = true;
                }
            }
            page = match page.checked_add(0x1000) {
                Some(p) => p,
                None => break,
            };
        }
        hit
    }

    /// Reads physical memory (RAM or MMIO), any length, any alignment.
    pub fn read_phys(&self, mut gpa: u64, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let chunk = ((0x1000 - (gpa & 0xfff)) as usize).min(buf.len());
            let (head, tail) = buf.split_at_mut(chunk);
            match self.host_page(gpa) {
                // SAFETY: the page is inside a RAM region and `chunk` does not cross its end.
                Some(p) => unsafe {
                    std::ptr::copy_nonoverlapping(p.add((gpa & 0xfff) as usize), head.as_mut_ptr(), chunk)
                },
                None => self.mmio_read(gpa, head),
            }
            buf = tail;
            gpa = gpa.wrapping_add(chunk as u64);
        }
    }

    /// Writes physical memory (RAM or MMIO), noting writes to code pages.
    pub fn write_phys(&mut self, mut gpa: u64, mut buf: &[u8]) {
        while !buf.is_empty() {
            let chunk = ((0x1000 - (gpa & 0xfff)) as usize).min(buf.len());
            let (head, tail) = buf.split_at(chunk);
            match self.host_page(gpa) {
                Some(p) => {
                    self.note_write(gpa, chunk);
                    // SAFETY: as in read_phys.
                    unsafe {
                        std::ptr::copy_nonoverlapping(head.as_ptr(), p.add((gpa & 0xfff) as usize), chunk)
                    }
                }
                None => self.mmio_write(gpa, head),
            }
            buf = tail;
            gpa = gpa.wrapping_add(chunk as u64);
        }
    }

    /// Reads a little-endian value of `size` bytes (1..=8) from physical memory.
    pub fn read_phys_u(&self, gpa: u64, size: u8) -> u64 {
        let mut b = [0u8; 8];
        self.read_phys(gpa, &mut b[..(size as usize).min(8)]);
        u64::from_le_bytes(b)
    }

    /// Writes a little-endian value of `size` bytes (1..=8) to physical memory.
    pub fn write_phys_u(&mut self, gpa: u64, size: u8, v: u64) {
        let b = v.to_le_bytes();
        self.write_phys(gpa, &b[..(size as usize).min(8)]);
    }

    /// Atomically ORs `bits` into the aligned 64-bit RAM word at `gpa` (page-table A/D bits);
    /// MMIO page tables get a plain read-modify-write.
    pub fn or_phys_u64(&mut self, gpa: u64, bits: u64) {
        match self.host_page(gpa) {
            Some(p) if gpa & 7 == 0 => {
                self.note_write(gpa, 8);
                // SAFETY: 8-byte aligned, inside the RAM page; AtomicU64 has the layout of u64.
                let a = unsafe { AtomicU64::from_ptr(p.add((gpa & 0xfff) as usize) as *mut u64) };
                a.fetch_or(bits, Ordering::SeqCst);
            }
            _ => {
                let v = self.read_phys_u(gpa, 8);
                self.write_phys_u(gpa, 8, v | bits);
            }
        }
    }

    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) {
        match &self.ops {
            Some(ops) => ops.mmio_read(gpa, data),
            None => data.fill(0xff),
        }
    }

    pub fn mmio_write(&self, gpa: u64, data: &[u8]) {
        if let Some(ops) = &self.ops {
            ops.mmio_write(gpa, data);
        }
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match &self.ops {
            Some(ops) => ops.pio_read(port, data),
            None => data.fill(0xff),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        if let Some(ops) = &self.ops {
            ops.pio_write(port, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmr_hypervisor::vm_memory::GuestAddress;

    #[test]
    fn ram_and_open_bus() {
        let gm = GuestMemory::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        let mut m = Memory::new(&gm, None).unwrap();
        m.write_phys_u(0xffe, 4, 0xdead_beef);
        assert_eq!(m.read_phys_u(0xffe, 4), 0xdead_beef);
        assert_eq!(m.read_phys_u(0x1ffe, 4), 0xffff_0000);
        assert_eq!(m.read_phys_u(0x5000, 2), 0xffff);
    }

    #[test]
    fn code_page_tracking() {
        let gm = GuestMemory::from_ranges(&[(GuestAddress(0), 0x3000)]).unwrap();
        let mut m = Memory::new(&gm, None).unwrap();
        m.mark_code_page(0x1234);
        assert!(m.is_code_page(0x1000));
        m.write_phys_u(0xfff, 2, 0);
        assert_eq!(m.dirty_code, vec![0x1000]);
        assert!(!m.is_code_page(0x1000));
    }
}
