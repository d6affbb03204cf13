//! Paging and the software TLB: page sizes, permissions, A/D bits, faults, flushes.

mod common;

use common::*;
use vmr_emu::cpu::{Exc, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, EFER_LMA, EFER_LME, GP, PF_VEC};
use vmr_emu::mem::Access;

const PT: u64 = 0x20_0000;

/// Long-mode guest where 0x4000_0000.. is mapped by 4 KiB pages from the table at PT.
fn guest() -> Guest {
    let mut g = Guest::new();
    g.long_mode();
    g.write_u64(PML4, 0x2000 | 7);
    g.write_u64(0x2000 + 8, (PT + 0x1000) | 7); // PDPT[1] -> PD
    g.write_u64(PT + 0x1000, PT | 7); // PD[0] -> PT
    g
}

fn pte(g: &Guest, i: u64, v: u64) {
    g.write_u64(PT + 8 * i, v);
}

fn pf(e: Result<vmr_emu::mem::tlb::TlbEntry, Exc>) -> u32 {
    match e {
        Err(e) if e.vector == PF_VEC && e.error().is_some() => e.error().unwrap(),
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn page_sizes_translate() {
    let mut g = guest();
    pte(&g, 3, 0x12_3000 | 3);
    // 1 GiB page at PDPT[2].
    g.write_u64(0x2000 + 16, 0x4000_0000 | 0x83);
    let c = g.cpu();
    assert_eq!(c.translate(0x4000_3abc, Access::READ).unwrap().gpa, 0x12_3000);
    assert_eq!(c.translate(0x0060_1234, Access::READ).unwrap().gpa, 0x60_1000);
    assert_eq!(c.translate(0x8765_4321, Access::READ).unwrap().gpa, 0x4765_4000);
    assert_eq!(pf(c.translate(0x4000_4000, Access::READ)), 0);
    assert_eq!(c.cr2, 0x4000_4000);
}

#[test]
fn permissions_and_error_codes() {
    let mut g = guest();
    pte(&g, 0, 0x30_0000 | 1); // present, read-only, supervisor
    pte(&g, 1, 0x30_1000 | 7 | (1 << 63)); // user, writable, NX
    let c = g.cpu();
    assert!(c.translate(0x4000_0000, Access::READ).is_ok());
    assert_eq!(pf(c.translate(0x4000_0000, Access::WRITE)), 0x3);
    c.cr0 &= !CR0_WP;
    c.flush_tlb();
    assert!(c.translate(0x4000_0000, Access::WRITE).is_ok(), "supervisor writes ignore R/W without CR0.WP");
    c.cr0 |= CR0_WP;
    c.flush_tlb();
    assert_eq!(pf(c.translate(0x4000_1000, Access::EXEC)), 0x11);
    c.cpl = 3;
    assert_eq!(pf(c.translate(0x4000_0000, Access::READ)), 0x5);
    assert!(c.translate(0x4000_1000, Access::WRITE).is_ok());
    // Implicit supervisor accesses (descriptor tables) are checked as CPL 0.
    assert!(c.translate(0x4000_0000, Access::SYS_READ).is_ok());
}

#[test]
fn accessed_and_dirty_bits() {
    let mut g = guest();
    pte(&g, 5, 0x30_5000 | 3);
    g.cpu().translate(0x4000_5000, Access::READ).unwrap();
    assert_eq!(g.read_u64(PT + 40) & 0x60, 0x20, "read sets A only");
    g.cpu().translate(0x4000_5000, Access::WRITE).unwrap();
    assert_eq!(g.read_u64(PT + 40) & 0x60, 0x60, "write sets D");
    assert_eq!(g.read_u64(PT + 0x1000) & 0x20, 0x20, "upper levels get A");
}

#[test]
fn reserved_bits_and_non_canonical() {
    let mut g = guest();
    pte(&g, 2, 0x30_2000 | 3 | (1 << 45));
    let c = g.cpu();
    assert_eq!(pf(c.translate(0x4000_2000, Access::WRITE)), 0xb);
    assert_eq!(c.translate(0x0000_8000_0000_0000, Access::READ).unwrap_err(), Exc::gp(0));
    assert_eq!(c.translate(0x0000_8000_0000_0000, Access::READ).unwrap_err().vector, GP);
}

#[test]
fn tlb_flushes() {
    let mut g = guest();
    pte(&g, 7, 0x30_7000 | 3);
    pte(&g, 8, 0x30_8000 | 3 | 0x100); // global
    g.cpu().cr4 |= CR4_PGE;
    g.cpu().flush_tlb();
    assert_eq!(g.cpu().translate(0x4000_7000, Access::READ).unwrap().gpa, 0x30_7000);
    assert_eq!(g.cpu().translate(0x4000_8000, Access::READ).unwrap().gpa, 0x30_8000);
    pte(&g, 7, 0x31_7000 | 3);
    pte(&g, 8, 0x31_8000 | 3 | 0x100);
    assert_eq!(g.cpu().translate(0x4000_7000, Access::READ).unwrap().gpa, 0x30_7000, "stale until flushed");
    let cr3 = g.cpu().cr3;
    g.cpu().write_cr3(cr3);
    assert_eq!(g.cpu().translate(0x4000_7000, Access::READ).unwrap().gpa, 0x31_7000);
    assert_eq!(
        g.cpu().translate(0x4000_8000, Access::READ).unwrap().gpa,
        0x30_8000,
        "global survives CR3 reload"
    );
    g.cpu().mem.tlb.flush_page(0x4000_8000);
    assert_eq!(g.cpu().translate(0x4000_8000, Access::READ).unwrap().gpa, 0x31_8000);
}

#[test]
fn legacy_and_pae_paging() {
    let mut g = Guest::new();
    // Legacy 2-level: PD at 0x1000, 4 MiB page for 0x0040_0000 -> 0x0080_0000, 4K table for 0.
    g.write(0x1000 + 4, &(0x0080_0000u32 | 0x83).to_le_bytes());
    g.write(0x1000, &(0x2000u32 | 3).to_le_bytes());
    g.write(0x2000 + 4 * 5, &(0x0007_7000u32 | 3).to_le_bytes());
    let c = g.cpu();
    c.cr0 = CR0_PE | CR0_PG;
    c.cr4 = CR4_PSE;
    c.cr3 = 0x1000;
    c.update_mode();
    c.flush_tlb();
    assert_eq!(c.translate(0x0041_2345, Access::READ).unwrap().gpa, 0x0081_2000);
    assert_eq!(c.translate(0x0000_5678, Access::READ).unwrap().gpa, 0x0007_7000);
    // PAE 3-level: PDPT at 0x3000, PD at 0x4000 with a 2 MiB page.
    g.write_u64(0x3000 + 8, 0x4000 | 1);
    g.write_u64(0x4000 + 8, 0x0060_0000 | 0x83);
    let c = g.cpu();
    c.cr4 = CR4_PAE;
    c.cr3 = 0x3000;
    c.flush_tlb();
    assert_eq!(c.translate(0x4020_1234, Access::WRITE).unwrap().gpa, 0x0060_1000);
    assert_eq!(g.read_u64(0x4008) & 0x60, 0x60);
}

#[test]
fn enabling_long_mode_paging_sets_lma() {
    let mut g = Guest::new();
    g.long_mode();
    let c = g.cpu();
    // Back to 32-bit protected mode without paging, then enable paging with LME.
    c.efer = EFER_LME;
    c.cr0 = CR0_PE;
    c.seg[1] = vmr_emu::segment::parse_descriptor(0x00cf_9b00_0000_ffff, CODE32);
    c.update_mode();
    assert_eq!(c.bitness, 32);
    c.write_cr4(CR4_PAE).unwrap();
    c.write_cr0(CR0_PE | CR0_PG).unwrap();
    assert_ne!(c.efer & EFER_LMA, 0);
    assert_eq!(c.translate(0x1234, Access::READ).unwrap().gpa, 0x1000);
    // Turning PAE off in long mode is refused.
    assert!(c.write_cr4(0).is_err());
}
