//! Per-vCPU CPUID normalisation.
//!
//! Topology: `vcpus` cores in one socket, one thread per core; the APIC id of a vCPU is its
//! index. What is changed, leaf by leaf:
//! - 0x1: EBX[31:24] APIC id, EBX[23:16] logical processors, EDX.HTT if more than one vCPU,
//!   ECX[31] hypervisor present. TSC-deadline (ECX[24]) and everything else pass through from
//!   the backend's list (the backend reports what it emulates).
//! - 0x4 (Intel): cores per package and threads sharing each cache level.
//! - 0x6: power management zeroed, except ARAT (APIC timer always running) if supported.
//! - 0xb / 0x1f: rebuilt with an SMT level (1 thread) and a core level (`vcpus` cores).
//! - 0x4000_0000: "KVMKVMKVM\0\0\0" signature; 0x4000_0001 (KVM features) kept if supplied,
//!   else present and empty. 0xa (PMU) passes through: a backend without PMU reports it zero.
//! - 0x8000_0008 (AMD): core count; 0x8000_001e (AMD): extended APIC id and core id.

use vmr_hypervisor::CpuidEntry;

const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EAX_ARAT: u32 = 1 << 2;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Leaf 0x0 vendor strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(entries: &[CpuidEntry]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => Vendor::Intel,
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to hold `n` distinct ids (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The CPUID table for vCPU `vcpu_id` of a `vcpus`-vCPU guest, from the backend's supported
/// list (see the module documentation for what changes).
pub fn vcpu_cpuid(supported: &[CpuidEntry], vcpu_id: u32, vcpus: u32) -> Vec<CpuidEntry> {
    let vcpus = vcpus.max(1);
    let vendor = vendor(supported);
    let max_basic = supported.iter().find(|e| e.function == 0).map_or(0, |e| e.eax);
    let mut out: Vec<CpuidEntry> =
        supported.iter().filter(|e| !matches!(e.function, 0xb | 0x1f | LEAF_HYPERVISOR)).copied().collect();
    for e in &mut out {
        match e.function {
            0x1 => leaf_1(e, vcpu_id, vcpus),
            0x4 if vendor == Vendor::Intel => leaf_4(e, vcpus),
            0x6 => {
                *e = CpuidEntry { eax: e.eax & EAX_ARAT, ebx: 0, ecx: 0, edx: 0, ..*e };
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(vcpus) << 12) | (vcpus - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                *e = CpuidEntry { eax: vcpu_id, ebx: vcpu_id & 0xff, ecx: 0, edx: 0, ..*e };
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        if max_basic >= leaf || supported.iter().any(|e| e.function == leaf) {
            out.extend(topology_leaf(leaf, vcpu_id, vcpus));
        }
    }
    if !supported.iter().any(|e| e.function == LEAF_KVM_FEATURES) {
        out.push(CpuidEntry { function: LEAF_KVM_FEATURES, ..Default::default() });
    }
    let max_hv = out.iter().filter(|e| e.function & 0xffff_ff00 == LEAF_HYPERVISOR).map(|e| e.function).max();
    let [ebx, ecx, edx] = KVM_SIGNATURE;
    out.push(CpuidEntry {
        function: LEAF_HYPERVISOR,
        index: 0,
        flags: 0,
        eax: max_hv.unwrap_or(LEAF_KVM_FEATURES),
        ebx,
        ecx,
        edx,
    });
    out
}

fn leaf_1(e: &mut CpuidEntry, vcpu_id: u32, vcpus: u32) {
    let logical = vcpus.min(255);
    e.ebx = (e.ebx & 0x0000_ffff) | ((vcpu_id & 0xff) << 24) | (logical << 16);
    if vcpus > 1 {
        e.edx |= EDX_HTT;
    } else {
        e.edx &= !EDX_HTT;
    }
    e.ecx |= ECX_HYPERVISOR;
}

fn leaf_4(e: &mut CpuidEntry, vcpus: u32) {
    let cache_level = (e.eax >> 5) & 0x7;
    if e.eax & 0x1f == 0 {
        return; // no more caches
    }
    let sharing = if cache_level >= 3 { vcpus - 1 } else { 0 };
    let cores = vcpus.min(64) - 1;
    e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
}

/// Extended topology leaf (0xb or 0x1f): subleaf 0 SMT (1 thread), 1 core, 2 invalid.
fn topology_leaf(leaf: u32, vcpu_id: u32, vcpus: u32) -> [CpuidEntry; 3] {
    let base =
        CpuidEntry { function: leaf, flags: CpuidEntry::FLAG_INDEXED, edx: vcpu_id, ..Default::default() };
    [
        CpuidEntry { index: 0, eax: 0, ebx: 1, ecx: 1 << 8, ..base },
        CpuidEntry { index: 1, eax: id_bits(vcpus), ebx: vcpus & 0xffff, ecx: (2 << 8) | 1, ..base },
        CpuidEntry { index: 2, ecx: 2, ..base },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(entries: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *entries.iter().find(|e| e.function == function && e.index == index).unwrap()
    }

    fn intel() -> Vec<CpuidEntry> {
        vec![
            CpuidEntry {
                function: 0,
                eax: 0xd,
                ebx: 0x756e_6547,
                edx: 0x4965_6e69,
                ecx: 0x6c65_746e,
                ..Default::default()
            },
            CpuidEntry { function: 1, ebx: 0x0000_0800, ecx: 1 << 24, edx: 0, ..Default::default() },
            CpuidEntry { function: 4, index: 0, flags: 1, eax: 0x121, ..Default::default() },
            CpuidEntry { function: 4, index: 3, flags: 1, eax: 0x163, ..Default::default() },
            CpuidEntry { function: 6, eax: 0x77, ebx: 1, ecx: 9, ..Default::default() },
            CpuidEntry { function: 0xb, index: 0, flags: 1, eax: 9, ..Default::default() },
            CpuidEntry { function: 0x4000_0001, eax: 0x1234, ..Default::default() },
        ]
    }

    #[test]
    fn apic_ids_and_topology() {
        let out = vcpu_cpuid(&intel(), 3, 4);
        let l1 = leaf(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC deadline kept");
        assert_ne!(l1.edx & EDX_HTT, 0);
        let smt = leaf(&out, 0xb, 0);
        let core = leaf(&out, 0xb, 1);
        assert_eq!((smt.ebx, smt.ecx, smt.edx), (1, 0x100, 3));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        assert_eq!(leaf(&out, 0xb, 2).ecx, 2);
        assert_eq!(out.iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(!out.iter().any(|e| e.function == 0x1f), "0x1f only when the CPU has it");
        assert_eq!(leaf(&out, 4, 0).eax >> 26, 3);
        assert_eq!((leaf(&out, 4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((leaf(&out, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all cores");
        assert_eq!(leaf(&out, 6, 0), CpuidEntry { function: 6, eax: EAX_ARAT, ..Default::default() });
    }

    #[test]
    fn kvm_signature_and_features() {
        let out = vcpu_cpuid(&intel(), 0, 1);
        let hv = leaf(&out, LEAF_HYPERVISOR, 0);
        let sig: Vec<u8> = [hv.ebx, hv.ecx, hv.edx].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert_eq!(hv.eax, LEAF_KVM_FEATURES);
        assert_eq!(leaf(&out, LEAF_KVM_FEATURES, 0).eax, 0x1234);
        assert_eq!(leaf(&out, 1, 0).edx & EDX_HTT, 0);
        let bare = vcpu_cpuid(&[], 0, 1);
        assert_eq!(leaf(&bare, LEAF_KVM_FEATURES, 0).eax, 0);
        assert_eq!(bare.iter().filter(|e| e.function == LEAF_HYPERVISOR).count(), 1);
    }

    #[test]
    fn amd_core_leaves() {
        let amd = vec![
            CpuidEntry {
                function: 0,
                eax: 0x10,
                ebx: 0x6874_7541,
                edx: 0x6974_6e65,
                ecx: 0x444d_4163,
                ..Default::default()
            },
            CpuidEntry { function: 0x8000_0008, ecx: 0x7007, ..Default::default() },
            CpuidEntry { function: 0x8000_001e, eax: 9, ebx: 0x100, ecx: 0x300, ..Default::default() },
        ];
        let out = vcpu_cpuid(&amd, 5, 6);
        assert_eq!(leaf(&out, 0x8000_0008, 0).ecx, (3 << 12) | 5);
        let e = leaf(&out, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (5, 5, 0));
        assert!(out.iter().any(|e| e.function == 0xb), "max basic leaf 0x10 implies 0xb");
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}
