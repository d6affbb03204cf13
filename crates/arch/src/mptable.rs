//! Intel MultiProcessor Specification 1.4 table (as Firecracker's mptable.rs): processors, an
//! ISA bus, the IOAPIC, identity routes for IRQs 0-23 and the LINT0/LINT1 wiring. Linux uses it
//! when booted with `acpi=off`; otherwise the ACPI MADT describes the same machine.

use vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::GuestMemory;

use crate::error::{write_err, Result};
use crate::layout::{IOAPIC_PINS, IOAPIC_START, LAPIC_START, MPTABLE_START};

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// CPU signature (family 6) and feature flags (FPU, APIC) as Firecracker reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Size of the whole MP table for `vcpus` processors.
pub fn mptable_size(vcpus: u32) -> usize {
    FLOATING_LEN
        + HEADER_LEN
        + vcpus as usize * CPU_ENTRY_LEN
        + (2 + IOAPIC_PINS as usize + 2) * SMALL_ENTRY_LEN
}

/// The IOAPIC id in the MP table (after the processors' APIC ids).
pub fn ioapic_id(vcpus: u32) -> u8 {
    (vcpus + 1).min(255) as u8
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn small_entry(kind: u8, irq_type: u8, src_irq: u8, dst_id: u8, dst_pin: u8) -> [u8; 8] {
    // type, irqtype, irqflag (2 bytes: conforming), source bus 0, source irq, destination
    [kind, irq_type, 0, 0, 0, src_irq, dst_id, dst_pin]
}

fn entries(vcpus: u32) -> (Vec<u8>, u16) {
    let mut t = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        t.extend_from_slice(&[0, id as u8, APIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        count += 1;
    }
    t.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic = ioapic_id(vcpus);
    t.extend_from_slice(&[2, ioapic, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS as u8 {
        t.extend_from_slice(&small_entry(3, MP_IRQ_INT, irq, ioapic, irq));
        count += 1;
    }
    t.extend_from_slice(&small_entry(4, MP_IRQ_EXTINT, 0, 0, 0));
    t.extend_from_slice(&small_entry(4, MP_IRQ_NMI, 0, 0xff, 1));
    (t, count + 2)
}

/// Builds the MP floating pointer + configuration table as placed at `base`.
pub fn build_mptable(base: u64, vcpus: u32) -> Vec<u8> {
    let table_addr = base + FLOATING_LEN as u64;
    let mut fp = Vec::with_capacity(FLOATING_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 16 bytes, spec 1.4, checksum, features
    fp[10] = checksum(&fp);

    let (body, count) = entries(vcpus);
    let mut hdr = Vec::with_capacity(HEADER_LEN + body.len());
    hdr.extend_from_slice(b"PCMP");
    hdr.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_le_bytes());
    hdr.extend_from_slice(&[4, 0]); // spec revision, checksum
    hdr.extend_from_slice(b"VMR     ");
    hdr.extend_from_slice(b"000000000000");
    hdr.extend_from_slice(&[0; 6]); // OEM table pointer and size
    hdr.extend_from_slice(&count.to_le_bytes());
    hdr.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    hdr.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    hdr.extend_from_slice(&body);
    hdr[7] = checksum(&hdr);
    fp.extend_from_slice(&hdr);
    fp
}

/// Writes the MP table at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemory, vcpus: u32) -> Result<()> {
    let table = build_mptable(MPTABLE_START, vcpus);
    mem.write_slice(&table, GuestAddress(MPTABLE_START)).map_err(write_err("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::EBDA_START;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn table_parses_back_with_valid_checksums() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for vcpus in [1u32, 2, 16, 254] {
            setup_mptable(&mem, vcpus).unwrap();
            let mut fp = [0u8; 16];
            mem.read_slice(&mut fp, GuestAddress(MPTABLE_START)).unwrap();
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(sum(&fp), 0);
            let table_addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
            let mut hdr = [0u8; HEADER_LEN];
            mem.read_slice(&mut hdr, GuestAddress(table_addr)).unwrap();
            assert_eq!(&hdr[..4], b"PCMP");
            let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
            let mut table = vec![0u8; len];
            mem.read_slice(&mut table, GuestAddress(table_addr)).unwrap();
            assert_eq!(sum(&table), 0);
            assert_eq!(len + 16, mptable_size(vcpus));
            assert!(MPTABLE_START + mptable_size(vcpus) as u64 <= EBDA_START + 0x1_0000);
            // Walk the entries: count processors, check the BSP flag.
            let mut off = HEADER_LEN;
            let mut cpus = 0;
            while off < len {
                let step = if table[off] == 0 { CPU_ENTRY_LEN } else { SMALL_ENTRY_LEN };
                if table[off] == 0 {
                    assert_eq!(table[off + 1] as u32, cpus);
                    assert_eq!(table[off + 3] & CPU_BSP != 0, cpus == 0);
                    cpus += 1;
                }
                off += step;
            }
            assert_eq!(cpus, vcpus);
            assert_eq!(u16::from_le_bytes([hdr[34], hdr[35]]) as u32, vcpus + 2 + IOAPIC_PINS + 2);
        }
    }
}
