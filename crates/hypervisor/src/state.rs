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

    /// Reads the 32-bit register at `offset` (e.g. 0x350 for LVT LINT0); 0 past the end of a
    /// page that is too short (a state read from a file may be).
    pub fn reg(&self, offset: usize) -> u32 {
        let b = self.regs.get(offset..offset.saturating_add(4)).unwrap_or(&[0; 4]);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Writes the 32-bit register at `offset` (nothing past the end of a short page).
    pub fn set_reg(&mut self, offset: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(offset..offset.saturating_add(4)) {
            r.copy_from_slice(&value.to_le_bytes());
        }
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
    /// XCR0 (XSAVE feature mask).
    #[serde(default)]
    pub xcr0: u64,
    /// DR0-DR7.
    #[serde(default)]
    pub debug_regs: [u64; 8],
    /// Run state outside the registers.
    #[serde(default)]
    pub events: VcpuEvents,
    /// The TSC; `None` where the caller does not set it (boot state).
    #[serde(default)]
    pub tsc: Option<TscState>,
    /// CPUID the guest saw (it must see the same after a restore).
    #[serde(default)]
    pub cpuid: Vec<CpuidEntry>,
}

/// Time-stamp counter: its value when saved and the rate it counts at. A restore sets the
/// value (guest time does not jump by the time the snapshot spent on disk) and checks the rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TscState {
    pub value: u64,
    pub hz: u64,
}

/// vCPU state that is neither a register nor in the LAPIC page: what KVM calls vCPU events
/// and the MP state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuEvents {
    /// Stopped in HLT until an interrupt.
    pub halted: bool,
    /// An application processor not started yet (waits for INIT/SIPI).
    pub waiting_for_sipi: bool,
    /// Interrupts inhibited for one instruction (after STI, MOV SS).
    pub interrupt_shadow: bool,
    pub nmi_pending: bool,
    pub init_pending: bool,
    /// A startup IPI received and not yet taken.
    pub sipi_vector: Option<u8>,
}

/// One 8259A, with KVM's `kvm_pic_state` fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicChipState {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: bool,
    pub poll: bool,
    pub special_mask: bool,
    pub init_state: u8,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub special_fully_nested_mode: bool,
    pub init4: bool,
    /// ICW1 SNGL (single PIC, no cascade).
    pub single: bool,
    pub elcr: u8,
    pub elcr_mask: u8,
}

/// One 8254 counter, with KVM's `kvm_pit_channel_state` fields; its load time is given as
/// time elapsed since (so it does not depend on a clock origin of the process that saved it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannelState {
    /// Reload value; 0 is stored as 0x10000.
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: bool,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: bool,
    pub gate: bool,
    /// Nanoseconds since the count was loaded (or the gate restarted it).
    pub elapsed_ns: u64,
    /// Channel 0: nanoseconds until IRQ 0 is raised next.
    pub irq_in_ns: Option<u64>,
}

/// The 8254 and port 0x61's speaker bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    pub channels: [PitChannelState; 3],
    pub speaker: bool,
}

/// The IOAPIC: id, selected register, redirection table and input levels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    pub id: u32,
    pub ioregsel: u32,
    /// One 64-bit entry per pin (24).
    pub redirection: Vec<u64>,
    /// Input levels, bit per pin.
    pub levels: u32,
}

/// VM-wide interrupt controllers and timers (the LAPICs are per vCPU, in [`VcpuState`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqChipState {
    /// Master, slave.
    pub pic: [PicChipState; 2],
    pub ioapic: IoapicState,
    pub pit: PitState,
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

    /// A page read from a snapshot file may be short: reads give 0, writes are dropped.
    #[test]
    fn a_short_lapic_page_never_panics() {
        let mut lapic = LapicState { regs: vec![0xff; 0x352] };
        assert_eq!(lapic.reg(0x350), 0);
        lapic.set_reg(0x350, 1);
        lapic.set_reg(usize::MAX, 1);
        assert_eq!(lapic.reg(usize::MAX), 0);
        assert_eq!(lapic.reg(0x10), 0xffff_ffff);
    }

    #[test]
    fn state_serializes() {
        let state = VcpuState { regs: Regs { rip: 0x1000, ..Default::default() }, ..Default::default() };
        let json = serde_json::to_string(&state).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
