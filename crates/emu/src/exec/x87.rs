//! x87 arithmetic, run on the host FPU.
//!
//! Each instruction runs as the same instruction on the host: the guest's x87 state is loaded
//! with FXRSTOR from a 512-byte image built from [`Cpu::fpu`], the instruction runs from a
//! table of pre-assembled stubs (its own opcode and ModRM byte, a memory operand redirected to
//! a host buffer at `[rsi]`), and FXSAVE brings the result back; the host's own FPU/SSE state
//! is saved before and restored after. So results in all precisions and rounding modes, NaN
//! and denormal handling, stack overflow/underflow, tags, TOP and C0-C3 are the hardware's.
//!
//! Exceptions: the guest's FCW is used as is. The image's exception flags, SF, ES and B are
//! cleared before the run so nothing is pending on the host (x87 exceptions are delayed: an
//! unmasked one only sets ES, and FXSAVE/FXRSTOR do not wait, so the host never traps). The
//! flags raised are then merged into the guest's sticky flags and ES/B recomputed; a later
//! waiting x87 instruction (or WAIT) with ES set raises #MF if CR0.NE is set and otherwise
//! goes on (the FERR#/IGNNE# path is not modelled). CR0.EM or CR0.TS give #NM first.
//!
//! The ModRM byte is taken from the instruction's bytes (re-read through the TLB, they are the
//! bytes the block was decoded from), which keeps the many register-form aliases exact.

use std::arch::{asm, naked_asm};

use iced_x86::{Instruction, Mnemonic as M};

use super::fpu::{pending_check, with_summary, x87_check, FSW_B, FSW_ES, FSW_FLAGS, FSW_SF};
use crate::cpu::{Cpu, Ex, Exc, CS};
use crate::decode::{Handler, Op, Opnd};
use crate::flags::{AF, CF, OF, PF, SF, ZF};
use crate::mem::Access;

/// What the instruction does besides changing the x87 state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Writes its memory operand (FST/FSTP/FIST/FISTP/FISTTP/FBSTP).
    Store,
    /// Reads CF/ZF/PF (FCMOVcc).
    FlagsIn,
    /// Writes ZF/PF/CF and clears OF/SF/AF (FCOMI/FUCOMI and the popping forms).
    FlagsOut,
}

fn kind(m: M) -> Option<Kind> {
    Some(match m {
        M::Fst | M::Fstp | M::Fstpnce | M::Fist | M::Fistp | M::Fisttp | M::Fbstp => Kind::Store,
        M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu => Kind::FlagsIn,
        M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => Kind::FlagsOut,
        M::Fld
        | M::Fild
        | M::Fbld
        | M::Fld1
        | M::Fldz
        | M::Fldpi
        | M::Fldl2e
        | M::Fldl2t
        | M::Fldlg2
        | M::Fldln2
        | M::Fxch
        | M::Fadd
        | M::Faddp
        | M::Fiadd
        | M::Fsub
        | M::Fsubp
        | M::Fisub
        | M::Fsubr
        | M::Fsubrp
        | M::Fisubr
        | M::Fmul
        | M::Fmulp
        | M::Fimul
        | M::Fdiv
        | M::Fdivp
        | M::Fidiv
        | M::Fdivr
        | M::Fdivrp
        | M::Fidivr
        | M::Fchs
        | M::Fabs
        | M::Fsqrt
        | M::Frndint
        | M::Fscale
        | M::Fxtract
        | M::Fprem
        | M::Fprem1
        | M::Fcom
        | M::Fcomp
        | M::Fcompp
        | M::Fucom
        | M::Fucomp
        | M::Fucompp
        | M::Ficom
        | M::Ficomp
        | M::Ftst
        | M::Fxam
        | M::Ffree
        | M::Ffreep
        | M::Fincstp
        | M::Fdecstp
        | M::Fnop
        | M::Fsin
        | M::Fcos
        | M::Fsincos
        | M::Fptan
        | M::Fpatan
        | M::F2xm1
        | M::Fyl2x
        | M::Fyl2xp1 => Kind::Plain,
        _ => return None,
    })
}

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    kind(ins.mnemonic()).map(|_| x87_op as Handler)
}

/// The D8-DF opcode byte and the ModRM byte of the current instruction.
fn opcode_modrm(cpu: &mut Cpu, op: &Op) -> Ex<(u8, u8)> {
    let lin = cpu.lin(CS, op.ins.ip());
    let n = (op.len as usize).clamp(2, 15);
    let mut b = [0u8; 15];
    cpu.read_bytes(lin, &mut b[..n], Access::EXEC)?;
    for i in 0..n - 1 {
        match b[i] {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 => {}
            0x40..=0x4f if cpu.bitness == 64 => {}
            0xd8..=0xdf => return Ok((b[i], b[i + 1])),
            _ => break,
        }
    }
    Err(Exc::ud())
}

/// A 16-byte aligned FXSAVE area.
#[repr(C, align(16))]
struct Area([u8; 512]);

/// Stubs `<opcode> <modrm>; ret; int3`, 4 bytes each: first the 512 register forms
/// (D8 C0 .. DF FF), then the 64 memory forms (D8 /0 .. DF /7) addressing `[rsi]`.
#[unsafe(naked)]
extern "C" fn x87_stubs() {
    naked_asm!(
        ".set vmr_x87_n, 0",
        ".rept 512",
        ".byte 0xd8 + (vmr_x87_n / 64), 0xc0 + (vmr_x87_n % 64), 0xc3, 0xcc",
        ".set vmr_x87_n, vmr_x87_n + 1",
        ".endr",
        ".set vmr_x87_n, 0",
        ".rept 64",
        ".byte 0xd8 + (vmr_x87_n / 8), (vmr_x87_n % 8) * 8 + 6, 0xc3, 0xcc",
        ".set vmr_x87_n, vmr_x87_n + 1",
        ".endr",
    )
}

/// Index into [`x87_stubs`] of the instruction `opcode modrm`.
fn stub_index(opcode: u8, modrm: u8) -> usize {
    let o = (opcode.wrapping_sub(0xd8) & 7) as usize;
    if modrm >= 0xc0 {
        o * 64 + (modrm - 0xc0) as usize
    } else {
        512 + o * 8 + ((modrm >> 3) & 7) as usize
    }
}

/// Runs stub `index` on the host with x87 state `img` (FXSAVE layout, loaded and stored back),
/// the memory operand at `mem`, and CF/PF/ZF from `flags`; returns the RFLAGS after.
fn run_on_host(index: usize, img: &mut Area, mem: &mut [u8; 16], flags: u64) -> u64 {
    let mut host = Area([0; 512]);
    let entry = x87_stubs as *const () as usize + 4 * index.min(575);
    let mut fl = (flags & (CF | PF | ZF)) | 2;
    // SAFETY: both areas are 512 bytes and 16-byte aligned. The host's FPU/SSE state is saved
    // first and restored last, so nothing the compiler keeps in x87/XMM registers or MXCSR
    // changes. The loaded image has every exception flag clear, so nothing is pending and the
    // one x87 instruction run cannot trap (a new unmasked exception only sets ES; FXSAVE and
    // FXRSTOR do not wait). RFLAGS is loaded with only CF/PF/ZF and the reserved bit (DF, TF,
    // AC stay clear) and restored by the compiler-visible clobber. The stub is one x87
    // instruction from the table, whose only memory operand is `[rsi]` = `mem` (16 bytes, the
    // largest x87 data operand is 10); it uses the stack only for its return address, which
    // is allowed without `nostack`.
    unsafe {
        asm!(
            "fxsave64 [{h}]",
            "fxrstor64 [{g}]",
            "push {fl}",
            "popfq",
            "call {e}",
            "pushfq",
            "pop {fl}",
            "fxsave64 [{g}]",
            "fxrstor64 [{h}]",
            h = in(reg) host.0.as_mut_ptr(),
            g = in(reg) img.0.as_mut_ptr(),
            e = in(reg) entry,
            fl = inout(reg) fl,
            in("rsi") mem.as_mut_ptr(),
        );
    }
    fl
}

/// The image the host runs on: the guest's FCW, TOP, C0-C3, tags and registers, with the
/// exception flags, SF, ES and B clear.
fn image_of(cpu: &Cpu) -> Area {
    let f = &cpu.fpu;
    let mut a = Area([0; 512]);
    a.0[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    a.0[2..4].copy_from_slice(&(f.fsw & !(FSW_FLAGS | FSW_SF | FSW_ES | FSW_B)).to_le_bytes());
    a.0[4] = f.ftwx;
    a.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    for (i, r) in f.fpr.iter().enumerate() {
        a.0[32 + 16 * i..42 + 16 * i].copy_from_slice(&r[..10]);
    }
    a
}

/// Takes the host's result: registers, tags, TOP and C0-C3, this instruction's exception
/// flags merged into the sticky ones, ES/B recomputed.
fn commit(cpu: &mut Cpu, a: &Area) {
    let f = &mut cpu.fpu;
    let fsw = u16::from_le_bytes([a.0[2], a.0[3]]) | (f.fsw & (FSW_FLAGS | FSW_SF));
    f.fsw = with_summary(fsw, f.fcw);
    f.ftwx = a.0[4];
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r[..10].copy_from_slice(&a.0[32 + 16 * i..42 + 16 * i]);
    }
}

fn x87_op(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    pending_check(cpu)?;
    let k = kind(op.ins.mnemonic()).ok_or_else(Exc::ud)?;
    let (opcode, modrm) = opcode_modrm(cpu, op)?;
    let mem = modrm < 0xc0;
    if mem != op.o.contains(&Opnd::Mem) {
        return Err(Exc::ud());
    }
    let mut buf = [0u8; 16];
    let size = op.ins.memory_size().size().min(10);
    let lin = cpu.mem_lin(op);
    if mem {
        let acc = if k == Kind::Store { Access::WRITE } else { Access::READ };
        cpu.read_bytes(lin, &mut buf[..size], acc)?;
    }
    let mut img = image_of(cpu);
    let flags = run_on_host(stub_index(opcode, modrm), &mut img, &mut buf, cpu.rflags());
    if mem && k == Kind::Store {
        // A faulting store leaves the x87 state as it was.
        cpu.write_bytes(lin, &buf[..size], Access::WRITE)?;
    }
    commit(cpu, &img);
    if k == Kind::FlagsOut {
        cpu.flags.set_arith(ZF | PF | CF | OF | SF | AF, flags & (ZF | PF | CF));
    }
    let (ip, ea) = (op.ins.ip(), cpu.ea(op));
    let f = &mut cpu.fpu;
    f.last_opcode = (((opcode & 7) as u16) << 8) | modrm as u16;
    f.last_ip = ip;
    if mem {
        f.last_dp = ea;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_table_layout() {
        let base = x87_stubs as *const () as usize as *const u8;
        // SAFETY: the naked function is 576 * 4 bytes of code, readable.
        let code = unsafe { std::slice::from_raw_parts(base, 576 * 4) };
        for (opcode, modrm) in [(0xd8u8, 0xc0u8), (0xd9, 0xe8), (0xde, 0xd9), (0xdf, 0xff), (0xdd, 0x06)] {
            let i = stub_index(opcode, modrm);
            let m = if modrm >= 0xc0 { modrm } else { (modrm & 0x38) | 6 };
            assert_eq!(&code[4 * i..4 * i + 4], &[opcode, m, 0xc3, 0xcc], "{opcode:#x} {modrm:#x}");
        }
        assert_eq!(stub_index(0xdb, 0x2f), 512 + 3 * 8 + 5);
    }
}
