//! Model-specific registers the CPU model implements.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::irqchip::{IrqChipCore, LocalApic};

/// MSR numbers.
pub const IA32_TSC: u32 = 0x10;
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_SPEC_CTRL: u32 = 0x48;
pub const IA32_PRED_CMD: u32 = 0x49;
pub const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MCG_CAP: u32 = 0x179;
pub const IA32_MCG_STATUS: u32 = 0x17a;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;

/// IA32_ARCH_CAPABILITIES: the interpreter executes nothing speculatively, so it is immune to
/// every transient-execution attack the MSR can report: RDCL_NO (Meltdown, L1TF), IBRS_ALL
/// (enhanced IBRS: indirect branches need no retpolines), SSB_NO, MDS_NO, PSCHANGE_MC_NO,
/// TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO (MMIO stale data), BHI_NO, PBRSB_NO, GDS_NO,
/// RFDS_NO and ITS_NO (bit 62, defined for VMMs to synthesize). A guest that believed the CPU
/// vulnerable would turn on page-table isolation, return thunks and retpolines, which cost an
/// interpreter far more than they cost hardware and protect against nothing here.
pub const ARCH_CAPABILITIES: u64 = 1 // RDCL_NO
    | (1 << 1) // IBRS_ALL
    | (1 << 4) // SSB_NO
    | (1 << 5) // MDS_NO
    | (1 << 6) // PSCHANGE_MC_NO
    | (1 << 8) // TAA_NO
    | (1 << 13) // SBDR_SSDP_NO
    | (1 << 14) // FBSDP_NO
    | (1 << 15) // PSDP_NO
    | (1 << 20) // BHI_NO
    | (1 << 24) // PBRSB_NO
    | (1 << 26) // GDS_NO
    | (1 << 27) // RFDS_NO
    | (1 << 62); // ITS_NO
/// Machine-check banks the model has (as QEMU's default). An interpreter never detects a
/// hardware error, so the banks never log one; they exist because Linux expects MCE/MCA on an
/// x86-64 CPU (without them it prints "mce: Unable to init MCE device" on every boot).
pub const MCE_BANKS: u32 = 10;
/// IA32_MCG_CAP: the bank count; no MCG_CTL, CMCI, LMCE or extended registers.
pub const MCG_CAP: u64 = MCE_BANKS as u64;
/// First bank MSR: IA32_MC0_CTL; bank i has CTL, STATUS, ADDR, MISC at 0x400 + 4i + 0..3.
pub const IA32_MC0_CTL: u32 = 0x400;

/// Whether `index` is a machine-check bank register (IA32_MCi_{CTL,STATUS,ADDR,MISC}).
fn is_mc_bank(index: u32) -> bool {
    (IA32_MC0_CTL..IA32_MC0_CTL + 4 * MCE_BANKS).contains(&index)
}

/// IA32_SPEC_CTRL bits the model accepts (IBRS, STIBP; CPUID 7.EDX[26,27]). They have no effect
/// on a CPU that does not speculate; SSBD is not advertised, so bit 2 faults like other
/// reserved bits.
const SPEC_CTRL_MASK: u64 = 0b11;

/// The MSRs a vCPU's local APIC owns (APIC base, TSC deadline), reached from RDMSR/WRMSR.
#[derive(Clone)]
pub struct ApicMsrs {
    pub lapic: Arc<LocalApic>,
    pub core: Arc<IrqChipCore>,
}

impl std::fmt::Debug for ApicMsrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApicMsrs(apic {})", self.lapic.id)
    }
}

/// Plain storage for MSRs without side effects. MSRs with side effects (EFER, FS/GS base,
/// TSC, APIC base) are handled by the CPU itself and only mirrored here for snapshots.
#[derive(Clone, Debug)]
pub struct MsrFile {
    values: BTreeMap<u32, u64>,
    /// The LAPIC behind IA32_APIC_BASE and IA32_TSC_DEADLINE, when the vCPU has one.
    pub apic: Option<ApicMsrs>,
}

/// Whether `index` is an MSR the model stores (with no side effects).
fn is_plain(index: u32) -> bool {
    matches!(
        index,
        IA32_PLATFORM_ID
            | IA32_FEATURE_CONTROL
            | IA32_TSC_ADJUST
            | IA32_BIOS_SIGN_ID
            | IA32_MTRRCAP
            | IA32_SYSENTER_CS
            | IA32_SYSENTER_ESP
            | IA32_SYSENTER_EIP
            | IA32_MCG_CAP
            | IA32_MCG_STATUS
            | IA32_MISC_ENABLE
            | IA32_PAT
            | IA32_MTRR_DEF_TYPE
            | IA32_STAR
            | IA32_LSTAR
            | IA32_CSTAR
            | IA32_FMASK
            | IA32_KERNEL_GS_BASE
            | IA32_TSC_AUX
            | IA32_SPEC_CTRL
    ) || (0x200..0x210).contains(&index)
        || is_mc_bank(index)
        || matches!(index, 0x250 | 0x258 | 0x259 | 0x268..=0x26f)
}

impl MsrFile {
    pub fn new(_apic_id: u32) -> Self {
        let mut values = BTreeMap::new();
        values.insert(IA32_PAT, 0x0007_0406_0007_0406);
        values.insert(IA32_MISC_ENABLE, 1);
        values.insert(IA32_MTRR_DEF_TYPE, 0);
        values.insert(IA32_MTRRCAP, 0);
        values.insert(IA32_MCG_CAP, MCG_CAP);
        MsrFile { values, apic: None }
    }

    /// Reads a plain MSR; None if the model does not implement it.
    pub fn get(&self, index: u32) -> Option<u64> {
        if index == IA32_TSC_DEADLINE {
            return self.apic.as_ref().map(|a| a.lapic.with(|m| m.r.tsc_deadline));
        }
        if index == IA32_ARCH_CAPABILITIES {
            return Some(ARCH_CAPABILITIES);
        }
        if is_plain(index) {
            Some(self.values.get(&index).copied().unwrap_or(0))
        } else {
            None
        }
    }

    /// Writes a plain MSR; false if the model does not implement it (or it is read-only).
    pub fn set(&mut self, index: u32, value: u64) -> bool {
        if index == IA32_TSC_DEADLINE {
            let Some(a) = &self.apic else { return false };
            a.lapic.with(|m| m.set_tsc_deadline(value));
            a.core.timers_changed();
            return true;
        }
        match index {
            // IBPB: a write-only command with nothing to flush.
            IA32_PRED_CMD => return value & !1 == 0,
            IA32_SPEC_CTRL if value & !SPEC_CTRL_MASK != 0 => return false,
            // MCi_CTL takes all zeros or all ones (the SDM's supported values), MCi_STATUS only
            // zero (clearing a logged error; software may not log one), as KVM enforces.
            i if is_mc_bank(i) && (i - IA32_MC0_CTL) & 3 == 0 && value != 0 && value != u64::MAX => {
                return false
            }
            i if is_mc_bank(i) && (i - IA32_MC0_CTL) & 3 == 1 && value != 0 => return false,
            _ => {}
        }
        if !is_plain(index) || matches!(index, IA32_MTRRCAP | IA32_PLATFORM_ID | IA32_MCG_CAP) {
            return false;
        }
        self.values.insert(index, value);
        true
    }

    /// Loads a value regardless of writability (state restore).
    pub fn restore(&mut self, index: u32, value: u64) -> bool {
        if index == IA32_APIC_BASE {
            if let Some(a) = &self.apic {
                a.lapic.set_apic_base(value);
                self.values.insert(index, a.lapic.apic_base());
            } else {
                self.values.insert(index, value);
            }
            return true;
        }
        if index == IA32_TSC_DEADLINE {
            return self.set(index, value);
        }
        // Read-only: a saved state restores only if it came from this model.
        if index == IA32_ARCH_CAPABILITIES {
            return value == ARCH_CAPABILITIES;
        }
        if !is_plain(index) {
            return false;
        }
        self.values.insert(index, value);
        true
    }

    /// Every stored MSR and its value (snapshots).
    pub fn stored(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.values.iter().map(|(&i, &v)| (i, v))
    }

    #[inline]
    pub fn raw(&self, index: u32) -> u64 {
        self.values.get(&index).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_msrs() {
        let mut m = MsrFile::new(0);
        assert!(m.set(IA32_LSTAR, 0xffff_8000_0000_1000));
        assert_eq!(m.get(IA32_LSTAR), Some(0xffff_8000_0000_1000));
        assert!(!m.set(IA32_MTRRCAP, 1));
        assert_eq!(m.get(0x1234), None);
        assert!(!m.set(0x1234, 0));
    }

    #[test]
    fn speculation_control_msrs() {
        let mut m = MsrFile::new(0);
        // The immunity bits Linux checks before turning on PTI, retpolines and return thunks.
        let caps = m.get(IA32_ARCH_CAPABILITIES).unwrap();
        for bit in [0, 1, 4, 5, 6, 8, 13, 14, 15, 20, 24, 26, 27, 62] {
            assert_ne!(caps & (1 << bit), 0, "ARCH_CAPABILITIES bit {bit}");
        }
        assert!(!m.set(IA32_ARCH_CAPABILITIES, 0), "read-only");
        assert_eq!(m.get(IA32_ARCH_CAPABILITIES), Some(caps));
        assert!(m.restore(IA32_ARCH_CAPABILITIES, caps), "a saved state of this model restores");
        assert!(!m.restore(IA32_ARCH_CAPABILITIES, 0));
        assert!(m.set(IA32_SPEC_CTRL, 1));
        assert_eq!(m.get(IA32_SPEC_CTRL), Some(1));
        assert!(!m.set(IA32_SPEC_CTRL, 1 << 2), "SSBD is not advertised");
        assert_eq!(m.get(IA32_SPEC_CTRL), Some(1));
        assert!(m.set(IA32_PRED_CMD, 1));
        assert!(!m.set(IA32_PRED_CMD, 2));
        assert_eq!(m.get(IA32_PRED_CMD), None, "write-only");
    }

    #[test]
    fn machine_check_banks() {
        let mut m = MsrFile::new(0);
        assert_eq!(m.get(IA32_MCG_CAP), Some(10), "ten banks, no MCG_CTL/CMCI/LMCE");
        assert!(!m.set(IA32_MCG_CAP, 0), "read-only");
        assert!(m.set(IA32_MCG_STATUS, 0));
        // What Linux does at boot: read every bank's status, enable all error types, clear.
        for bank in 0..10 {
            let ctl = IA32_MC0_CTL + 4 * bank;
            assert_eq!(m.get(ctl + 1), Some(0), "no error logged in bank {bank}");
            assert!(m.set(ctl, u64::MAX));
            assert_eq!(m.get(ctl), Some(u64::MAX));
            assert!(m.set(ctl + 1, 0));
            assert!(m.set(ctl + 2, 0x1234) && m.set(ctl + 3, 5));
            assert!(!m.set(ctl, 0x1), "MCi_CTL: all zeros or all ones");
            assert!(!m.set(ctl + 1, 1 << 63), "software cannot log an error");
        }
        assert_eq!(m.get(IA32_MC0_CTL + 40), None, "no 11th bank");
    }
}
