//! Plain x86-64 vCPU and machine state, independent of any backend.
//!
//! These structs are what the machine model writes at boot, what a snapshot stores and what
//! conformance tests compare between backends. They are deliberately dumb data: backends
//! convert to and from their own representations.

use serde::{Deserialize, Serialize};

/// General-purpose registers, instruction pointer and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden (descriptor cache) part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type field (4 bits).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: bool,
    /// Code or data segment (S bit); false for system segments.
    pub s: bool,
    /// 64-bit code segment (L bit).
    pub l: bool,
    /// Granularity (limit in 4 KiB units).
    pub g: bool,
    pub avl: bool,
    /// Null / unusable segment.
    pub unusable: bool,
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// x87/SSE state in FXSAVE layout terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// ST0-ST7 / MM0-MM7, 80 bits each stored in 16 bytes.
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word as in FXSAVE.
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl Default for FpuState {
    /// The state after reset/FNINIT as Linux expects it (FCW 0x37f, MXCSR 0x1f80).
    fn default() -> Self {
        FpuState {
            fpr: [[0; 16]; 8],
            fcw: 0x37f,
            fsw: 0,
            ftwx: 0,
            last_opcode: 0,
            last_ip: 0,
            last_dp: 0,
            xmm: [[0; 16]; 16],
            mxcsr: 0x1f80,
        }
    }
}

/// One CPUID leaf/subleaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Backend flags; bit 0 = the leaf is indexed by ECX (KVM's KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidEntry {
    /// `flags` bit meaning the leaf is indexed by ECX.
    pub const FLAG_INDEXED: u32 = 1;
}

/// One model-specific register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

/// The local APIC register page (1 KiB as in KVM_GET_LAPIC; registers at their MMIO offsets
/// divided as the architecture lays them out, 16-byte aligned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapicState {
    pub regs: Vec<u8>,
}

impl LapicState {
    pub const SIZE: usize = 1024;

    /// Reads the 32-bit register at `offset` (e.g. 0x350 for LVT LINT0).
    pub fn reg(&self, offset: usize) -> u32 {
        let b = &self.regs[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Writes the 32-bit register at `offset`.
    pub fn set_reg(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
}

impl Default for LapicState {
    fn default() -> Self {
        LapicState { regs: vec![0; Self::SIZE] }
    }
}

/// Everything needed to put a vCPU in a given state (boot, snapshot, migration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: Regs,
    pub sregs: SpecialRegs,
    pub fpu: FpuState,
    pub msrs: Vec<MsrEntry>,
    pub lapic: Option<LapicState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_register_round_trip() {
        let mut lapic = LapicState::default();
        lapic.set_reg(0x350, 0x700);
        assert_eq!(lapic.reg(0x350), 0x700);
        assert_eq!(lapic.reg(0x360), 0);
    }

    #[test]
    fn state_serializes() {
        let state = VcpuState { regs: Regs { rip: 0x1000, ..Default::default() }, ..Default::default() };
        let json = serde_json::to_string(&state).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
