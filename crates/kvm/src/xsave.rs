//! x87/SSE state through the vCPU's XSAVE area.
//!
//! `KVM_GET_FPU` / `KVM_SET_FPU` ignore the `mxcsr` field (the kernel never copies it), and
//! `KVM_SET_FPU` does not mark the x87/SSE components as in use in the XSAVE header, so a
//! compacted XRSTOR may load their init state instead. vmr therefore reads and writes the whole
//! [`FpuState`] in the legacy (FXSAVE-layout) part of the XSAVE area.

use kvm_bindings::{kvm_xsave, Xsave};
use kvm_ioctls::VcpuFd;
use vmr_hypervisor::{FpuState, HypervisorError, Result};

/// Size of the legacy FXSAVE-layout region at the start of the XSAVE area.
const LEGACY_SIZE: usize = 512;
/// Byte offsets in the FXSAVE layout (64-bit format).
const FCW: usize = 0;
const FSW: usize = 2;
const FTW: usize = 4;
const FOP: usize = 6;
const FIP: usize = 8;
const FDP: usize = 16;
const MXCSR: usize = 24;
const MXCSR_MASK: usize = 28;
const ST_SPACE: usize = 32;
const XMM_SPACE: usize = 160;
/// Word index of XSTATE_BV in the XSAVE header (byte 512) and its x87 and SSE bits.
const XSTATE_BV_WORD: usize = 128;
const XFEATURE_FP_SSE: u32 = 0b11;
/// The MXCSR_MASK to assume when the CPU reports 0 (bit 6, DAZ, not supported).
const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

/// How this vCPU's XSAVE area is read and written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum XsaveAccess {
    /// `KVM_GET/SET_XSAVE` with the fixed 4 KiB `kvm_xsave` (kernels before KVM_CAP_XSAVE2).
    Legacy,
    /// `KVM_GET_XSAVE2/SET_XSAVE` with a buffer of this many bytes (KVM_CAP_XSAVE2's answer).
    Sized(usize),
}

impl XsaveAccess {
    /// `xsave2_size` is `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on the VM: 0 if unsupported.
    pub(crate) fn new(xsave2_size: i32) -> Self {
        match usize::try_from(xsave2_size) {
            Ok(size) if size > 0 => XsaveAccess::Sized(size.max(std::mem::size_of::<kvm_xsave>())),
            _ => XsaveAccess::Legacy,
        }
    }
}

fn os(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::os(op, e)
}

/// Reads the XSAVE area, lets `edit` inspect or change its first 4 KiB, and writes it back
/// if `edit` returns true.
fn with_xsave<T>(
    fd: &VcpuFd,
    access: XsaveAccess,
    edit: impl FnOnce(&mut [u32; 1024]) -> Result<(T, bool)>,
) -> Result<T> {
    match access {
        XsaveAccess::Legacy => {
            let mut xsave = fd.get_xsave().map_err(os("KVM_GET_XSAVE"))?;
            let (value, write) = edit(&mut xsave.region)?;
            if write {
                // SAFETY: without KVM_CAP_XSAVE2 the kernel copies exactly sizeof(kvm_xsave).
                unsafe { fd.set_xsave(&xsave) }.map_err(os("KVM_SET_XSAVE"))?;
            }
            Ok(value)
        }
        XsaveAccess::Sized(size) => {
            let extra = (size - std::mem::size_of::<kvm_xsave>()).div_ceil(std::mem::size_of::<u32>());
            let mut xsave = Xsave::new(extra)
                .map_err(|e| HypervisorError::Invalid(format!("XSAVE buffer of {size} bytes: {e:?}")))?;
            // SAFETY: the buffer holds `size` bytes, the size KVM_CAP_XSAVE2 reported.
            unsafe { fd.get_xsave2(&mut xsave) }.map_err(os("KVM_GET_XSAVE2"))?;
            // SAFETY: the FAM header is followed by `extra` words we allocated.
            let (value, write) = edit(&mut unsafe { xsave.as_mut_fam_struct() }.xsave.region)?;
            if write {
                // SAFETY: as above, the buffer is as large as the kernel will read.
                unsafe { fd.set_xsave2(&xsave) }.map_err(os("KVM_SET_XSAVE"))?;
            }
            Ok(value)
        }
    }
}

/// Reads the x87/SSE state.
pub(crate) fn read_fpu(fd: &VcpuFd, access: XsaveAccess) -> Result<FpuState> {
    with_xsave(fd, access, |region| Ok((fpu_from_legacy(&legacy_bytes(region)), false)))
}

/// Writes the x87/SSE state and marks both components in use.
pub(crate) fn write_fpu(fd: &VcpuFd, access: XsaveAccess, fpu: &FpuState) -> Result<()> {
    with_xsave(fd, access, |region| {
        let mut bytes = legacy_bytes(region);
        check_mxcsr(fpu.mxcsr, u32_at(&bytes, MXCSR_MASK))?;
        fpu_to_legacy(fpu, &mut bytes);
        for (word, chunk) in region.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        region[XSTATE_BV_WORD] |= XFEATURE_FP_SSE;
        Ok(((), true))
    })
}

fn legacy_bytes(region: &[u32; 1024]) -> [u8; LEGACY_SIZE] {
    let mut bytes = [0u8; LEGACY_SIZE];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

fn u32_at(bytes: &[u8; LEGACY_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u16_at(bytes: &[u8; LEGACY_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u64_at(bytes: &[u8; LEGACY_SIZE], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | (u64::from(u32_at(bytes, at + 4)) << 32)
}

fn fpu_from_legacy(bytes: &[u8; LEGACY_SIZE]) -> FpuState {
    let mut fpu = FpuState {
        fcw: u16_at(bytes, FCW),
        fsw: u16_at(bytes, FSW),
        ftwx: bytes[FTW],
        last_opcode: u16_at(bytes, FOP),
        last_ip: u64_at(bytes, FIP),
        last_dp: u64_at(bytes, FDP),
        mxcsr: u32_at(bytes, MXCSR),
        ..Default::default()
    };
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        st.copy_from_slice(&bytes[ST_SPACE + 16 * i..ST_SPACE + 16 * (i + 1)]);
    }
    for (i, xmm) in fpu.xmm.iter_mut().enumerate() {
        xmm.copy_from_slice(&bytes[XMM_SPACE + 16 * i..XMM_SPACE + 16 * (i + 1)]);
    }
    fpu
}

fn fpu_to_legacy(fpu: &FpuState, bytes: &mut [u8; LEGACY_SIZE]) {
    bytes[FCW..FCW + 2].copy_from_slice(&fpu.fcw.to_le_bytes());
    bytes[FSW..FSW + 2].copy_from_slice(&fpu.fsw.to_le_bytes());
    bytes[FTW] = fpu.ftwx;
    bytes[FOP..FOP + 2].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    bytes[FIP..FIP + 8].copy_from_slice(&fpu.last_ip.to_le_bytes());
    bytes[FDP..FDP + 8].copy_from_slice(&fpu.last_dp.to_le_bytes());
    bytes[MXCSR..MXCSR + 4].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        bytes[ST_SPACE + 16 * i..ST_SPACE + 16 * (i + 1)].copy_from_slice(st);
    }
    for (i, xmm) in fpu.xmm.iter().enumerate() {
        bytes[XMM_SPACE + 16 * i..XMM_SPACE + 16 * (i + 1)].copy_from_slice(xmm);
    }
}

/// MXCSR bits outside MXCSR_MASK make the CPU fault on restore: refuse them up front.
fn check_mxcsr(mxcsr: u32, mask: u32) -> Result<()> {
    let mask = if mask == 0 { DEFAULT_MXCSR_MASK } else { mask };
    if mxcsr & !mask != 0 {
        return Err(HypervisorError::Invalid(format!(
            "MXCSR {mxcsr:#x} sets bits this CPU does not have (MXCSR_MASK {mask:#x})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_mode_from_capability() {
        assert!(matches!(XsaveAccess::new(0), XsaveAccess::Legacy));
        assert!(matches!(XsaveAccess::new(-1), XsaveAccess::Legacy));
        assert!(matches!(XsaveAccess::new(4096), XsaveAccess::Sized(4096)));
        assert!(matches!(XsaveAccess::new(11008), XsaveAccess::Sized(11008)));
        // A bogus small answer still gets a full legacy-sized buffer.
        assert!(matches!(XsaveAccess::new(512), XsaveAccess::Sized(4096)));
    }

    #[test]
    fn legacy_layout_round_trip() {
        let mut fpu = FpuState { fcw: 0x27f, fsw: 0x3800, ftwx: 0x81, mxcsr: 0x9fa0, ..Default::default() };
        fpu.last_opcode = 0x7ff;
        fpu.last_ip = 0x1122_3344_5566_7788;
        fpu.last_dp = 0x99aa_bbcc_ddee_ff00;
        fpu.fpr[7] = [7; 16];
        fpu.xmm[15] = [0xf5; 16];
        fpu.xmm[0][3] = 3;
        let mut region = [0u32; 1024];
        region[MXCSR_MASK / 4] = 0xffff;
        let mut bytes = legacy_bytes(&region);
        fpu_to_legacy(&fpu, &mut bytes);
        // Fixed offsets of the FXSAVE layout.
        assert_eq!(u32_at(&bytes, 24), 0x9fa0);
        assert_eq!(u32_at(&bytes, 28), 0xffff, "MXCSR_MASK kept");
        assert_eq!(bytes[160 + 3], 3);
        assert_eq!(bytes[32 + 7 * 16], 7);
        assert_eq!(fpu_from_legacy(&bytes), fpu);
    }

    #[test]
    fn mxcsr_checked_against_mask() {
        assert!(check_mxcsr(0x1f80, 0xffff).is_ok());
        assert!(check_mxcsr(0x1fc0, 0xffff).is_ok());
        // DAZ (bit 6) without support, with an explicit or the default mask.
        assert!(check_mxcsr(0x1fc0, 0xffbf).is_err());
        assert!(check_mxcsr(0x1fc0, 0).is_err());
        let err = check_mxcsr(0x1_0000, 0xffff).unwrap_err().to_string();
        assert!(err.contains("0x10000"), "{err}");
    }
}
