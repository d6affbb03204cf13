//! x87/SSE control state: FNINIT FNSTCW FLDCW FNSTSW FNCLEX WAIT LDMXCSR STMXCSR FXSAVE
//! FXRSTOR, the CR0.TS/EM checks and the pending-exception (#MF) rule. The x87 arithmetic is
//! in `x87.rs`, the environment images in `x87_env.rs`.

use iced_x86::{Instruction, Mnemonic as M};

use crate::cpu::{Cpu, Ex, Exc, CR0_EM, CR0_MP, CR0_NE, CR0_TS, CR4_OSFXSR, MF, NM};
use crate::decode::{Handler, Op};
use crate::mem::Access;

/// MXCSR bits software may set (no DAZ).
pub const MXCSR_MASK: u32 = 0xffbf;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Fninit => fninit,
        M::Fnstcw => fnstcw,
        M::Fldcw => fldcw,
        M::Fnstsw => fnstsw,
        M::Fnclex => fnclex,
        M::Wait => wait,
        M::Emms => emms,
        M::Fnsetpm | M::Fneni | M::Fndisi => x87_nop,
        M::Ldmxcsr => ldmxcsr,
        M::Stmxcsr => stmxcsr,
        M::Fxsave | M::Fxsave64 => fxsave,
        M::Fxrstor | M::Fxrstor64 => fxrstor,
        _ => return None,
    })
}

/// FSW bits: exception flags (IE DE ZE OE UE PE), stack fault, error summary, busy.
pub(super) const FSW_FLAGS: u16 = 0x3f;
pub(super) const FSW_SF: u16 = 1 << 6;
pub(super) const FSW_ES: u16 = 1 << 7;
pub(super) const FSW_B: u16 = 1 << 15;

/// ES and B set exactly when an exception flag is set that FCW leaves unmasked.
pub(super) fn with_summary(fsw: u16, fcw: u16) -> u16 {
    if fsw & !fcw & FSW_FLAGS != 0 {
        fsw | FSW_ES | FSW_B
    } else {
        fsw & !(FSW_ES | FSW_B)
    }
}

/// #MF before a waiting x87 instruction when an unmasked exception is pending (FSW.ES) and
/// CR0.NE is set; with CR0.NE clear the pending exception is ignored (no FERR# modelled).
pub(super) fn pending_check(cpu: &Cpu) -> Ex {
    if cpu.fpu.fsw & FSW_ES != 0 && cpu.cr0 & CR0_NE != 0 {
        return Err(Exc::new(MF));
    }
    Ok(())
}

/// #NM for x87 instructions when CR0.EM or CR0.TS is set.
pub(super) fn x87_check(cpu: &Cpu) -> Ex {
    if cpu.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Exc::new(NM));
    }
    Ok(())
}

/// LDMXCSR/STMXCSR: #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS.
pub(super) fn sse_check(cpu: &Cpu) -> Ex {
    if cpu.cr0 & CR0_EM != 0 || cpu.cr4 & CR4_OSFXSR == 0 {
        return Err(Exc::ud());
    }
    if cpu.cr0 & CR0_TS != 0 {
        return Err(Exc::new(NM));
    }
    Ok(())
}

fn fninit(cpu: &mut Cpu, _: &Op) -> Ex {
    x87_check(cpu)?;
    x87_reset(cpu);
    Ok(())
}

/// The FNINIT state. `fpr` holds ST(0)..ST(7), so the registers rotate as TOP goes to 0.
pub(super) fn x87_reset(cpu: &mut Cpu) {
    let f = &mut cpu.fpu;
    f.fpr.rotate_left((8 - (f.fsw as usize >> 11 & 7)) & 7);
    f.fcw = 0x37f;
    f.fsw = 0;
    f.ftwx = 0;
    f.last_opcode = 0;
    f.last_ip = 0;
    f.last_dp = 0;
}

fn fnstcw(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let v = cpu.fpu.fcw as u64;
    cpu.wr(op, 0, 2, v)
}

fn fldcw(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let v = cpu.rd(op, 0, 2)? as u16;
    let f = &mut cpu.fpu;
    f.fcw = (v & 0x1f3f) | 0x40;
    // Unmasking a flag that is set makes the exception pending (ES), masking it clears ES.
    f.fsw = with_summary(f.fsw, f.fcw);
    Ok(())
}

fn fnstsw(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let v = cpu.fpu.fsw as u64;
    cpu.wr(op, 0, 2, v)
}

fn fnclex(cpu: &mut Cpu, _: &Op) -> Ex {
    x87_check(cpu)?;
    cpu.fpu.fsw &= 0x7f00;
    Ok(())
}

fn wait(cpu: &mut Cpu, _: &Op) -> Ex {
    if cpu.cr0 & (CR0_MP | CR0_TS) == (CR0_MP | CR0_TS) {
        return Err(Exc::new(NM));
    }
    pending_check(cpu)
}

/// EMMS: all x87 registers empty, TOP 0 (#UD with CR0.EM, #NM with CR0.TS, #MF if pending).
fn emms(cpu: &mut Cpu, _: &Op) -> Ex {
    if cpu.cr0 & CR0_EM != 0 {
        return Err(Exc::ud());
    }
    x87_check(cpu)?;
    pending_check(cpu)?;
    // Like every MMX instruction it also sets TOP to 0 (ST(i) follows the registers).
    let f = &mut cpu.fpu;
    f.fpr.rotate_left((8 - (f.fsw as usize >> 11 & 7)) & 7);
    f.fsw &= !(7 << 11);
    f.ftwx = 0;
    Ok(())
}

/// FNSETPM/FNENI/FNDISI: 80287/8087 controls, no-ops since the 80387.
fn x87_nop(cpu: &mut Cpu, _: &Op) -> Ex {
    x87_check(cpu)
}

fn ldmxcsr(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let v = cpu.rd(op, 0, 4)? as u32;
    if v & !MXCSR_MASK != 0 {
        return Err(Exc::gp(0));
    }
    cpu.fpu.mxcsr = v;
    Ok(())
}

fn stmxcsr(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let v = cpu.fpu.mxcsr as u64;
    cpu.wr(op, 0, 4, v)
}

/// The 512-byte FXSAVE image of the current state.
fn fxsave_image(cpu: &Cpu, wide: bool) -> [u8; 512] {
    let f = &cpu.fpu;
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    if wide {
        b[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
        b[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
    } else {
        b[8..12].copy_from_slice(&(f.last_ip as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(f.last_dp as u32).to_le_bytes());
    }
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + 16 * i..42 + 16 * i].copy_from_slice(&r[..10]);
    }
    let nxmm = if cpu.bitness == 64 { 16 } else { 8 };
    if cpu.cr4 & CR4_OSFXSR != 0 {
        for (i, x) in f.xmm.iter().take(nxmm).enumerate() {
            b[160 + 16 * i..176 + 16 * i].copy_from_slice(x);
        }
    }
    b
}

fn fxsave(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let lin = cpu.mem_lin(op);
    if lin & 15 != 0 {
        return Err(Exc::gp(0));
    }
    let img = fxsave_image(cpu, op.ins.mnemonic() == M::Fxsave64);
    // Only the architectural part; the reserved and software-available tail is left alone.
    cpu.write_bytes(lin, &img[..416], Access::WRITE)
}

fn fxrstor(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let lin = cpu.mem_lin(op);
    if lin & 15 != 0 {
        return Err(Exc::gp(0));
    }
    let mut b = [0u8; 416];
    cpu.read_bytes(lin, &mut b, Access::READ)?;
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let mxcsr = u32_at(24);
    if cpu.cr4 & CR4_OSFXSR != 0 && mxcsr & !MXCSR_MASK != 0 {
        return Err(Exc::gp(0));
    }
    let wide = op.ins.mnemonic() == M::Fxrstor64;
    let nxmm = if cpu.bitness == 64 { 16 } else { 8 };
    let osfxsr = cpu.cr4 & CR4_OSFXSR != 0;
    let f = &mut cpu.fpu;
    f.fcw = u16_at(0);
    f.fsw = u16_at(2);
    f.ftwx = b[4];
    f.last_opcode = u16_at(6);
    f.last_ip = if wide { u64_at(8) } else { u32_at(8) as u64 };
    f.last_dp = if wide { u64_at(16) } else { u32_at(16) as u64 };
    if osfxsr {
        f.mxcsr = mxcsr;
        for (i, x) in f.xmm.iter_mut().take(nxmm).enumerate() {
            x.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
        }
    }
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r[..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_follows_unmasked_flags() {
        assert_eq!(with_summary(0x0004, 0x037f), 0x0004);
        assert_eq!(with_summary(0x0004, 0x037b), 0x8084);
        assert_eq!(with_summary(0x8084, 0x037f), 0x0004);
    }
}
