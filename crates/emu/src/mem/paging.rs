//! Linear-to-physical translation: page walks, permission checks, A/D bits, page faults.

use super::access::Access;
use super::tlb::{TlbEntry, P_DIRTY, P_EXEC, P_GLOBAL, P_USER, P_WFAST, P_WRITE};
use crate::cpu::{Cpu, Ex, Exc, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, EFER_NXE, PF_VEC};

/// Physical address width the CPU model advertises (CPUID 0x80000008).
pub const MAX_PHYS_BITS: u32 = 40;
const ADDR_MASK: u64 = ((1u64 << MAX_PHYS_BITS) - 1) & !0xfff;
/// Bits 40..52 of a 64-bit entry: reserved at our physical width.
const RSVD_HIGH: u64 = ((1u64 << 52) - 1) & !((1u64 << MAX_PHYS_BITS) - 1);

const PTE_P: u64 = 1;
const PTE_W: u64 = 2;
const PTE_U: u64 = 4;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;

/// Page-fault error code bits.
pub const PFEC_P: u32 = 1;
pub const PFEC_W: u32 = 2;
pub const PFEC_U: u32 = 4;
pub const PFEC_RSVD: u32 = 8;
pub const PFEC_I: u32 = 16;

/// Result of a successful walk.
struct Walk {
    gpa: u64,
    user: bool,
    write: bool,
    exec: bool,
    dirty: bool,
    global: bool,
}

/// Shape of one paging mode.
struct Format {
    /// Shift of the top level's index.
    top_shift: u32,
    levels: u32,
    /// Bits of index per level.
    bits: u32,
    /// Bytes per entry.
    entry: u64,
}

const LONG4: Format = Format { top_shift: 39, levels: 4, bits: 9, entry: 8 };
const PAE: Format = Format { top_shift: 30, levels: 3, bits: 9, entry: 8 };
const LEGACY: Format = Format { top_shift: 22, levels: 2, bits: 10, entry: 4 };

impl Cpu {
    /// TLB permission bits an access needs at the current CPL and CR0.WP.
    #[inline(always)]
    pub(crate) fn need(&self, acc: Access) -> u8 {
        let user = self.cpl == 3 && !acc.is_sys();
        let mut n = if user { P_USER } else { 0 };
        if acc.is_write() {
            n |= P_DIRTY;
            if user || self.cr0 & CR0_WP != 0 {
                n |= P_WRITE;
            }
        }
        if acc.is_exec() {
            n |= P_EXEC;
        }
        n
    }

    /// Translates `lin` for `acc`, through the TLB.
    #[inline(always)]
    pub fn translate(&mut self, lin: u64, acc: Access) -> Ex<TlbEntry> {
        let need = self.need(acc);
        match self.mem.tlb.lookup(lin, need) {
            Some(e) => Ok(*e),
            None => self.translate_slow(lin, acc, need),
        }
    }

    /// Translates `lin` for `acc` to (physical address of the page, host address of the
    /// page or 0 for MMIO) without copying a whole TLB entry.
    #[inline(always)]
    pub fn translate_page(&mut self, lin: u64, acc: Access) -> Ex<(u64, usize)> {
        let need = self.need(acc);
        match self.mem.tlb.lookup(lin, need) {
            Some(e) => Ok((e.gpa, e.host)),
            None => self.translate_slow(lin, acc, need).map(|e| (e.gpa, e.host)),
        }
    }

    #[cold]
    fn translate_slow(&mut self, lin: u64, acc: Access, need: u8) -> Ex<TlbEntry> {
        if self.long_mode() && !canonical(lin) {
            return Err(Exc::gp(0));
        }
        let page = lin & !0xfff;
        let walk = if self.cr0 & CR0_PG == 0 {
            Walk { gpa: page & 0xffff_ffff, user: true, write: true, exec: true, dirty: true, global: false }
        } else {
            self.walk(lin, acc)?
        };
        let mut perm = 0;
        for (cond, bit) in [
            (walk.user, P_USER),
            (walk.write, P_WRITE),
            (walk.exec, P_EXEC),
            (walk.dirty, P_DIRTY),
            (walk.global, P_GLOBAL),
        ] {
            if cond {
                perm |= bit;
            }
        }
        if perm & need != need {
            return Err(self.page_fault(lin, acc, PFEC_P));
        }
        let host = self.mem.host_page(walk.gpa).map_or(0, |p| p as usize);
        if host != 0 && walk.dirty && !self.mem.is_code_page(walk.gpa) {
            perm |= P_WFAST;
        }
        self.mem.tlb.insert(lin, walk.gpa, host, perm);
        Ok(TlbEntry { tag: 0, gpa: walk.gpa, host, perm })
    }

    /// Raises #PF for `lin` with the access bits added to `code`; sets CR2.
    fn page_fault(&mut self, lin: u64, acc: Access, mut code: u32) -> Exc {
        if acc.is_write() {
            code |= PFEC_W;
        }
        if self.cpl == 3 && !acc.is_sys() {
            code |= PFEC_U;
        }
        if acc.is_exec() && self.efer & EFER_NXE != 0 {
            code |= PFEC_I;
        }
        self.cr2 = lin;
        Exc::with_error(PF_VEC, code)
    }

    fn format(&self) -> &'static Format {
        if self.long_mode() {
            &LONG4
        } else if self.cr4 & CR4_PAE != 0 {
            &PAE
        } else {
            &LEGACY
        }
    }

    /// Walks the page tables for `lin`, setting accessed (and for writes dirty) bits.
    fn walk(&mut self, lin: u64, acc: Access) -> Ex<Walk> {
        let f = self.format();
        let nxe = self.efer & EFER_NXE != 0;
        let mut table = if f.entry == 4 {
            self.cr3 & 0xffff_f000
        } else if f.levels == 3 {
            self.cr3 & 0xffff_ffe0
        } else {
            self.cr3 & ADDR_MASK
        };
        let (mut user, mut write, mut exec) = (true, true, true);
        let mut shift = f.top_shift;
        let mut entries = [0u64; 4];
        for level in (1..=f.levels).rev() {
            let idx_bits = if f.levels == 3 && level == 3 { 2 } else { f.bits };
            let idx = (lin >> shift) & ((1 << idx_bits) - 1);
            let ea = table + idx * f.entry;
            let pte = self.mem.read_phys_u(ea, f.entry as u8);
            entries[level as usize - 1] = ea;
            if pte & PTE_P == 0 {
                return Err(self.page_fault(lin, acc, 0));
            }
            let pdpte = f.levels == 3 && level == 3;
            if f.entry == 8 && (pte & RSVD_HIGH != 0 || (!nxe && pte & PTE_NX != 0)) {
                return Err(self.page_fault(lin, acc, PFEC_P | PFEC_RSVD));
            }
            if !pdpte {
                user &= pte & PTE_U != 0;
                write &= pte & PTE_W != 0;
                exec &= !(nxe && f.entry == 8 && pte & PTE_NX != 0);
            }
            let large = pte & PTE_PS != 0 && !pdpte && level > 1;
            if large && (level == 4 || (f.entry == 4 && self.cr4 & CR4_PSE == 0)) {
                if level == 4 {
                    return Err(self.page_fault(lin, acc, PFEC_P | PFEC_RSVD));
                }
            } else if large || level == 1 {
                let page_mask = (1u64 << shift) - 1;
                let base = if f.entry == 4 { pte & 0xffff_f000 } else { pte & ADDR_MASK };
                if large && base & page_mask & !0x1fff != 0 {
                    return Err(self.page_fault(lin, acc, PFEC_P | PFEC_RSVD));
                }
                let gpa = (base & !page_mask) | (lin & page_mask & !0xfff);
                let w = Walk {
                    gpa,
                    user,
                    write,
                    exec,
                    dirty: pte & PTE_D != 0,
                    global: pte & PTE_G != 0 && self.cr4 & CR4_PGE != 0,
                };
                return self.finish_walk(
                    lin,
                    acc,
                    w,
                    &entries[level as usize - 1..f.levels as usize],
                    f.entry,
                );
            }
            table = if f.entry == 4 { pte & 0xffff_f000 } else { pte & ADDR_MASK };
            shift -= if f.levels == 3 && level == 3 { 9 } else { f.bits };
        }
        Err(self.page_fault(lin, acc, 0))
    }

    /// Checks permissions, then sets A bits on every level and D on the leaf for writes.
    fn finish_walk(&mut self, lin: u64, acc: Access, mut w: Walk, entries: &[u64], size: u64) -> Ex<Walk> {
        let user_access = self.cpl == 3 && !acc.is_sys();
        let denied = (user_access && !w.user)
            || (acc.is_write() && !w.write && (user_access || self.cr0 & CR0_WP != 0))
            || (acc.is_exec() && !w.exec);
        if denied {
            return Err(self.page_fault(lin, acc, PFEC_P));
        }
        let pae_pdpte = size == 8 && !self.long_mode();
        for (i, &ea) in entries.iter().enumerate() {
            if pae_pdpte && i == entries.len() - 1 {
                continue;
            }
            let mut bits = PTE_A;
            if i == 0 && acc.is_write() {
                bits |= PTE_D;
            }
            let cur = self.mem.read_phys_u(ea, size as u8);
            if cur & bits != bits {
                if size == 8 {
                    self.mem.or_phys_u64(ea, bits);
                } else {
                    self.mem.write_phys_u(ea, 4, cur | bits);
                }
            }
        }
        if acc.is_write() {
            w.dirty = true;
        }
        Ok(w)
    }

    /// Drops every cached translation (paging mode change).
    pub fn flush_tlb(&mut self) {
        self.mem.tlb.flush_all();
    }
}

/// True if `lin` is canonical for 48-bit linear addresses.
#[inline]
pub fn canonical(lin: u64) -> bool {
    ((lin as i64) << 16 >> 16) as u64 == lin
}
