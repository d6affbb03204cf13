//! Software TLB: direct-mapped, one entry per linear page number.

/// Permission bits of a TLB entry.
pub const P_USER: u8 = 1;
/// Writable at every level.
pub const P_WRITE: u8 = 2;
/// Dirty bit already set in the leaf entry.
pub const P_DIRTY: u8 = 4;
/// Executable (no NX at any level, or NX disabled).
pub const P_EXEC: u8 = 8;
/// Global page (survives CR3 reloads when CR4.PGE).
pub const P_GLOBAL: u8 = 16;
/// Writes may go straight to the host page (RAM, no cached code on it).
pub const P_WFAST: u8 = 32;

const ENTRIES: usize = 1024;
const VALID: u64 = 1;

/// One cached translation.
/// `repr(C)`: translated code probes entries inline (`crate::jit`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TlbEntry {
    /// (linear page number << 1) | VALID.
    pub tag: u64,
    /// Physical address of the page.
    pub gpa: u64,
    /// Host address of the page, 0 for MMIO.
    pub host: usize,
    pub perm: u8,
}

/// The cache itself.
pub struct Tlb {
    entries: Box<[TlbEntry]>,
}

impl Default for Tlb {
    fn default() -> Self {
        Self::new()
    }
}

impl Tlb {
    pub fn new() -> Self {
        Tlb { entries: vec![TlbEntry::default(); ENTRIES].into_boxed_slice() }
    }

    #[inline(always)]
    fn slot(lin: u64) -> usize {
        ((lin >> 12) as usize) & (ENTRIES - 1)
    }

    #[inline(always)]
    fn tag(lin: u64) -> u64 {
        ((lin >> 12) << 1) | VALID
    }

    /// The entry for `lin` if it is cached and grants every bit of `need`.
    #[inline(always)]
    pub fn lookup(&self, lin: u64, need: u8) -> Option<&TlbEntry> {
        // The slot index is masked to the table size, so indexing cannot fail.
        let e = &self.entries[Self::slot(lin)];
        (e.tag == Self::tag(lin) && e.perm & need == need).then_some(e)
    }

    pub fn insert(&mut self, lin: u64, gpa: u64, host: usize, perm: u8) {
        self.entries[Self::slot(lin)] = TlbEntry { tag: Self::tag(lin), gpa: gpa & !0xfff, host, perm };
    }

    /// The entries, for the translator's inline probe (the table is never reallocated).
    pub(crate) fn entries_ptr(&self) -> *const TlbEntry {
        self.entries.as_ptr()
    }

    /// INVLPG.
    pub fn flush_page(&mut self, lin: u64) {
        let e = &mut self.entries[Self::slot(lin)];
        if e.tag == Self::tag(lin) {
            e.tag = 0;
        }
    }

    /// Everything, global pages included.
    pub fn flush_all(&mut self) {
        for e in self.entries.iter_mut() {
            e.tag = 0;
        }
    }

    /// Everything but global pages (CR3 reload with CR4.PGE).
    pub fn flush_non_global(&mut self) {
        for e in self.entries.iter_mut() {
            if e.perm & P_GLOBAL == 0 {
                e.tag = 0;
            }
        }
    }

    /// Removes direct-write permission from entries mapping physical page `gpa`.
    pub fn drop_fast_writes(&mut self, gpa: u64) {
        for e in self.entries.iter_mut() {
            if e.gpa == gpa {
                e.perm &= !P_WFAST;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_checks_tag_and_permissions() {
        let mut t = Tlb::new();
        t.insert(0x7000_1234, 0x5000, 0, P_WRITE | P_DIRTY);
        assert!(t.lookup(0x7000_1fff, P_WRITE).is_some());
        assert!(t.lookup(0x7000_1000, P_USER).is_none());
        assert!(t.lookup(0x7040_1000, 0).is_none());
        t.flush_page(0x7000_1000);
        assert!(t.lookup(0x7000_1000, 0).is_none());
    }

    #[test]
    fn global_survives_non_global_flush() {
        let mut t = Tlb::new();
        t.insert(0x1000, 0x1000, 0, P_GLOBAL);
        t.insert(0x2000, 0x2000, 0, 0);
        t.flush_non_global();
        assert!(t.lookup(0x1000, 0).is_some());
        assert!(t.lookup(0x2000, 0).is_none());
        t.flush_all();
        assert!(t.lookup(0x1000, 0).is_none());
    }
}
