//! The CPUID model: it advertises exactly the features the interpreter implements.

use vmr_hypervisor::CpuidEntry;

use crate::mem::paging::MAX_PHYS_BITS;

/// Leaf 1 EDX bits we implement.
///
/// Linux x86-64 (6.1 `required-features.h`) refuses to boot without every REQUIRED_MASK0 bit
/// (FPU PSE MSR PAE CX8 PGE CMOV FXSR SSE SSE2) and REQUIRED_MASK1 (LM, in [`E1_EDX`]); all of
/// them are here. The x87 arithmetic runs on the host FPU (`exec/x87.rs`) and SSE/SSE2 floats
/// too (`exec/sse_float.rs`), so FPU/SSE/SSE2 are only advertised on x86-64 hosts. MMX
/// (`exec/sse_mmx.rs`) is needed by glibc: its x86-64 "baseline" ISA level, which Debian's
/// libc.so.6 and static binaries require (`CPU ISA level is lower than required` otherwise), is
/// CMOV CX8 FPU FXSR MMX SSE SSE2. Not here: APIC/TSC-deadline (the interrupt controller adds
/// those to [`default_cpuid`]).
pub const L1_EDX: u32 = L1_EDX_BASE | L1_EDX_FLOAT;
/// Leaf 1 EDX bits of the integer and system ISA.
const L1_EDX_BASE: u32 = (1 << 3) // pse
    | (1 << 4) // tsc
    | (1 << 5) // msr
    | (1 << 6) // pae
    | (1 << 7) // mce (CR4.MCE; #MC is never raised: nothing detects hardware errors)
    | (1 << 8) // cx8
    | (1 << 13) // pge
    | (1 << 14) // mca (IA32_MCG_CAP and the banks of `msr.rs`)
    | (1 << 15) // cmov
    | (1 << 16) // pat
    | (1 << 19) // clflush
    | (1 << 23) // mmx
    | (1 << 24); // fxsr (FXSAVE/FXRSTOR, CR4.OSFXSR)
/// Leaf 1 EDX floating-point bits: fpu, sse, sse2.
#[cfg(target_arch = "x86_64")]
const L1_EDX_FLOAT: u32 = 1 | (1 << 25) | (1 << 26);
#[cfg(not(target_arch = "x86_64"))]
const L1_EDX_FLOAT: u32 = 0;
/// Leaf 1 ECX bits we implement: with LAHF/SAHF in 64-bit mode ([`E1_ECX`]) the x86-64-v2 ISA
/// level (SSE3 SSSE3 SSE4.1 SSE4.2 POPCNT CX16 LAHF), which glibc's `ld.so` checks for
/// `x86-64-v2` builds and its string functions pick SSE4.2/SSSE3 variants by. The vector
/// ones float with SSE/SSE2 (x86-64 hosts only: the float forms run on the host).
pub const L1_ECX: u32 = (1 << 13) // cx16
    | (1 << 23) // popcnt
    | L1_ECX_VECTOR;
#[cfg(target_arch = "x86_64")]
const L1_ECX_VECTOR: u32 = SSE3 | SSSE3 | SSE41 | SSE42;
#[cfg(not(target_arch = "x86_64"))]
const L1_ECX_VECTOR: u32 = 0;
/// Leaf 1 ECX feature bits.
pub const SSE3: u32 = 1;
pub const SSSE3: u32 = 1 << 9;
pub const CX16: u32 = 1 << 13;
pub const SSE41: u32 = 1 << 19;
pub const SSE42: u32 = 1 << 20;
pub const POPCNT: u32 = 1 << 23;
/// Leaf 7 (subleaf 0) EDX bits: IBRS/IBPB and STIBP (IA32_SPEC_CTRL and IA32_PRED_CMD, no-ops
/// here) and IA32_ARCH_CAPABILITIES, which tells the guest the CPU does not speculate
/// ([`crate::msr::ARCH_CAPABILITIES`]).
pub const L7_EDX: u32 = (1 << 26) | (1 << 27) | (1 << 29);
/// Leaf 0x80000001 EDX bits.
pub const E1_EDX: u32 = (1 << 11) // syscall
    | (1 << 20) // nx
    | (1 << 26) // 1 GiB pages
    | (1 << 27) // rdtscp
    | (1 << 29); // lm
/// Leaf 0x80000001 ECX bits.
pub const E1_ECX: u32 = 1; // lahf/sahf in 64-bit mode

fn regs_from_str(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
    CpuidEntry { function, index: 0, flags: 0, eax, ebx, ecx, edx }
}

/// The leaves of the software CPU (APIC id fields are patched per vCPU by [`lookup`]).
pub fn default_cpuid() -> Vec<CpuidEntry> {
    let (b, d, c) = regs_from_str(b"GenuineIntel");
    let brand: &[u8; 48] = b"vmr software x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut v = vec![
        leaf(0, 7, b, c, d),
        leaf(1, 0x0005_06e3, (1 << 16) | (8 << 8), L1_ECX, L1_EDX),
        CpuidEntry {
            function: 7,
            index: 0,
            flags: CpuidEntry::FLAG_INDEXED,
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: L7_EDX,
        },
        leaf(0x8000_0000, 0x8000_0008, 0, 0, 0),
        leaf(0x8000_0001, 0, 0, E1_ECX, E1_EDX),
    ];
    for (i, chunk) in brand.chunks(16).enumerate() {
        let w = |j: usize| u32::from_le_bytes([chunk[j], chunk[j + 1], chunk[j + 2], chunk[j + 3]]);
        v.push(leaf(0x8000_0002 + i as u32, w(0), w(4), w(8), w(12)));
    }
    v.push(leaf(0x8000_0008, (48 << 8) | MAX_PHYS_BITS, 0, 0, 0));
    v
}

/// The instruction-set extensions a CPUID table advertises, as the handlers check them: an
/// instruction whose feature the guest's CPUID does not show raises #UD, so a VMM that hides a
/// feature (a CPU model, a migration baseline) gets the hardware's answer for its use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(u32);

impl Isa {
    /// Leaf 1 ECX bits in their own positions; [`Isa::LAHF64`] is 0x8000_0001 ECX bit 0, kept
    /// at bit 31 (leaf 1 ECX bit 31 is the hypervisor bit, never an ISA feature).
    pub const LAHF64: u32 = 1 << 31;

    /// What `table` advertises.
    pub fn of(table: &[CpuidEntry]) -> Isa {
        let ecx = lookup(table, 1, 0, 0)[2] & !Isa::LAHF64;
        let lahf = if lookup(table, 0x8000_0001, 0, 0)[2] & 1 != 0 { Isa::LAHF64 } else { 0 };
        Isa(ecx | lahf)
    }

    /// Everything the software CPU implements.
    pub fn all() -> Isa {
        Isa(L1_ECX | Isa::LAHF64)
    }

    /// True when every bit of `feature` (leaf 1 ECX bits, or [`Isa::LAHF64`]) is advertised.
    #[inline(always)]
    pub fn has(self, feature: u32) -> bool {
        self.0 & feature == feature
    }
}

/// Looks up `function`/`index` in `table`; unknown leaves read as zeros.
pub fn lookup(table: &[CpuidEntry], function: u32, index: u32, apic_id: u32) -> [u32; 4] {
    let e = table
        .iter()
        .find(|e| e.function == function && (e.flags & CpuidEntry::FLAG_INDEXED == 0 || e.index == index));
    let Some(e) = e else { return [0; 4] };
    let mut r = [e.eax, e.ebx, e.ecx, e.edx];
    if function == 1 {
        r[1] = (r[1] & 0x00ff_ffff) | (apic_id << 24);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_and_features() {
        let t = default_cpuid();
        let r = lookup(&t, 0, 0, 0);
        let mut s = Vec::new();
        for w in [r[1], r[3], r[2]] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&s, b"GenuineIntel");
        let r = lookup(&t, 1, 0, 3);
        assert_eq!(r[1] >> 24, 3);
        assert_ne!(r[3] & (1 << 8), 0);
        assert_eq!(lookup(&t, 0x4000_0000, 0, 0), [0; 4]);
        assert_eq!(lookup(&t, 0x8000_0001, 0, 0)[3] & (1 << 29), 1 << 29);
    }

    /// Linux 6.1 x86-64 REQUIRED_MASK0 (leaf 1 EDX) and REQUIRED_MASK1 (0x8000_0001 EDX), and
    /// glibc's x86-64 baseline (adds MMX).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn linux_x86_64_required_features() {
        let t = default_cpuid();
        let edx = lookup(&t, 1, 0, 0)[3];
        let bits = [(0, "fpu"), (3, "pse"), (5, "msr"), (6, "pae"), (8, "cx8"), (13, "pge"), (15, "cmov")];
        for (bit, name) in bits.into_iter().chain([(23, "mmx"), (24, "fxsr"), (25, "sse"), (26, "sse2")]) {
            assert_ne!(edx & (1 << bit), 0, "{name} missing");
        }
        assert_ne!(lookup(&t, 0x8000_0001, 0, 0)[3] & (1 << 29), 0, "lm missing");
    }

    /// Only what is implemented: no APIC/x2APIC/TSC-deadline (the irqchip adds those), no
    /// PCLMULQDQ, MONITOR, XSAVE, AVX, MOVBE, AES.
    #[test]
    fn nothing_unimplemented_advertised() {
        let t = default_cpuid();
        let [_, _, ecx, edx] = lookup(&t, 1, 0, 0);
        assert_eq!(edx & (1 << 9), 0, "apic");
        let not_here =
            (1 << 1) | (1 << 3) | (1 << 21) | (1 << 22) | (1 << 24) | (1 << 25) | (1 << 26) | (1 << 28);
        assert_eq!(ecx & not_here, 0, "pclmulqdq/monitor/x2apic/movbe/tsc-deadline/aes/xsave/avx");
    }

    /// The x86-64-v2 level as glibc's `ld.so` checks it (`sysdeps/x86/get-isa-level.h`):
    /// CMPXCHG16B, LAHF64_SAHF64, POPCNT, SSE3, SSE4_1, SSE4_2, SSSE3 on top of the baseline.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_64_v2_advertised() {
        let t = default_cpuid();
        let isa = Isa::of(&t);
        for (f, name) in [(SSE3, "sse3"), (SSSE3, "ssse3"), (SSE41, "sse4.1"), (SSE42, "sse4.2")]
            .into_iter()
            .chain([(POPCNT, "popcnt"), (CX16, "cx16"), (Isa::LAHF64, "lahf64")])
        {
            assert!(isa.has(f), "{name} missing");
        }
        assert_eq!(isa, Isa::all());
        // A table without them: nothing.
        let mut bare = t.clone();
        bare.iter_mut().filter(|e| e.function == 1 || e.function == 0x8000_0001).for_each(|e| e.ecx = 0);
        let isa = Isa::of(&bare);
        assert!(!isa.has(SSE3) && !isa.has(POPCNT) && !isa.has(Isa::LAHF64));
        assert!(isa.has(0), "no feature needed");
    }
}
