//! SSE/SSE2 floating point: ADD/SUB/MUL/DIV/SQRT/MIN/MAX/CMP in SS/SD/PS/PD forms, RCP/RSQRT
//! PS/SS (the host's approximations), the
//! conversions between integers and floats and between precisions, and (U)COMISS/SD; the SSE3
//! ADDSUB/HADD/HSUB PS/PD and the SSE4.1 DPPS/DPPD and ROUNDPS/PD/SS/SD.
//!
//! Each operation runs as the same instruction on the host, under the guest's MXCSR (rounding
//! mode, FTZ, DAZ) with every exception masked, so results, NaN propagation and the sticky
//! exception flags are exactly the hardware's. Flags then raised that the guest left unmasked
//! raise #XM (or #UD without CR4.OSXMMEXCPT) and the destination is left unchanged.

use std::arch::asm;
use std::arch::x86_64::__m128i;

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use super::fpu::{sse_check, MXCSR_MASK};
use super::sse::{dst, src, xmm};
use super::sse_mmx::{enter, mm, mreg, set_mm};
use crate::cpu::{Cpu, Ex, Exc, CR4_OSXMMEXCPT, XM};
use crate::decode::{Handler, Op};
use crate::flags::{AF, CF, OF, PF, SF, ZF};

/// A host operation: `(dst, src, gpr source, mxcsr) -> (result xmm, result gpr, mxcsr after)`.
type HostOp = fn(u128, u128, u64, u32) -> (u128, u64, u32);

/// Defines a host operation running `insn` between loading `csr` and storing it back.
/// `$body` names the operand template; operands: `{x}` dst xmm (in/out), `{y}` src xmm,
/// `{g}` a 64-bit GPR (in/out), `{f}` rflags out.
macro_rules! host_op {
    ($name:ident, $insn:literal) => {
        fn $name(a: u128, b: u128, g: u64, csr: u32) -> (u128, u64, u32) {
            // SAFETY: u128 and __m128i are both 16 plain bytes.
            let mut x: __m128i = unsafe { std::mem::transmute::<u128, __m128i>(a) };
            // SAFETY: as above.
            let y: __m128i = unsafe { std::mem::transmute::<u128, __m128i>(b) };
            let mut g = g;
            let mut c = [csr, 0];
            // SAFETY: the block saves the host MXCSR in c[1], loads the guest's (all exceptions
            // masked, so nothing traps), runs one SSE instruction on registers only, stores the
            // resulting MXCSR in c[0] and restores the host's. It touches only `c`.
            unsafe {
                asm!(
                    "stmxcsr [{c} + 4]",
                    "ldmxcsr [{c}]",
                    $insn,
                    "stmxcsr [{c}]",
                    "ldmxcsr [{c} + 4]",
                    "/* {x} {y} {g} */",
                    c = in(reg) c.as_mut_ptr(),
                    x = inout(xmm_reg) x,
                    y = in(xmm_reg) y,
                    g = inout(reg) g,
                );
            }
            let _ = y;
            // SAFETY: as above.
            (unsafe { std::mem::transmute::<__m128i, u128>(x) }, g, c[0])
        }
    };
}

host_op!(addss, "addss {x}, {y}");
host_op!(addsd, "addsd {x}, {y}");
host_op!(addps, "addps {x}, {y}");
host_op!(addpd, "addpd {x}, {y}");
host_op!(subss, "subss {x}, {y}");
host_op!(subsd, "subsd {x}, {y}");
host_op!(subps, "subps {x}, {y}");
host_op!(subpd, "subpd {x}, {y}");
host_op!(mulss, "mulss {x}, {y}");
host_op!(mulsd, "mulsd {x}, {y}");
host_op!(mulps, "mulps {x}, {y}");
host_op!(mulpd, "mulpd {x}, {y}");
host_op!(divss, "divss {x}, {y}");
host_op!(divsd, "divsd {x}, {y}");
host_op!(divps, "divps {x}, {y}");
host_op!(divpd, "divpd {x}, {y}");
host_op!(sqrtss, "sqrtss {x}, {y}");
host_op!(sqrtsd, "sqrtsd {x}, {y}");
host_op!(sqrtps, "sqrtps {x}, {y}");
host_op!(sqrtpd, "sqrtpd {x}, {y}");
host_op!(minss, "minss {x}, {y}");
host_op!(minsd, "minsd {x}, {y}");
host_op!(minps, "minps {x}, {y}");
host_op!(minpd, "minpd {x}, {y}");
host_op!(maxss, "maxss {x}, {y}");
host_op!(maxsd, "maxsd {x}, {y}");
host_op!(maxps, "maxps {x}, {y}");
host_op!(maxpd, "maxpd {x}, {y}");
host_op!(rcpps, "rcpps {x}, {y}");
host_op!(rcpss, "rcpss {x}, {y}");
host_op!(rsqrtps, "rsqrtps {x}, {y}");
host_op!(rsqrtss, "rsqrtss {x}, {y}");
host_op!(cvtss2sd, "cvtss2sd {x}, {y}");
host_op!(cvtsd2ss, "cvtsd2ss {x}, {y}");
host_op!(cvtps2pd, "cvtps2pd {x}, {y}");
host_op!(cvtpd2ps, "cvtpd2ps {x}, {y}");
host_op!(cvtdq2ps, "cvtdq2ps {x}, {y}");
host_op!(cvtps2dq, "cvtps2dq {x}, {y}");
host_op!(cvttps2dq, "cvttps2dq {x}, {y}");
host_op!(cvtdq2pd, "cvtdq2pd {x}, {y}");
host_op!(cvtpd2dq, "cvtpd2dq {x}, {y}");
host_op!(cvttpd2dq, "cvttpd2dq {x}, {y}");
host_op!(cvtsi2ss32, "cvtsi2ss {x}, {g:e}");
host_op!(cvtsi2ss64, "cvtsi2ss {x}, {g}");
host_op!(cvtsi2sd32, "cvtsi2sd {x}, {g:e}");
host_op!(cvtsi2sd64, "cvtsi2sd {x}, {g}");
host_op!(cvtss2si32, "cvtss2si {g:e}, {y}");
host_op!(cvtss2si64, "cvtss2si {g}, {y}");
host_op!(cvttss2si32, "cvttss2si {g:e}, {y}");
host_op!(cvttss2si64, "cvttss2si {g}, {y}");
host_op!(cvtsd2si32, "cvtsd2si {g:e}, {y}");
host_op!(cvtsd2si64, "cvtsd2si {g}, {y}");
host_op!(cvttsd2si32, "cvttsd2si {g:e}, {y}");
host_op!(cvttsd2si64, "cvttsd2si {g}, {y}");
// SSE3.
host_op!(addsubps, "addsubps {x}, {y}");
host_op!(addsubpd, "addsubpd {x}, {y}");
host_op!(haddps, "haddps {x}, {y}");
host_op!(haddpd, "haddpd {x}, {y}");
host_op!(hsubps, "hsubps {x}, {y}");
host_op!(hsubpd, "hsubpd {x}, {y}");
// SSE4.1: the dot products with every lane multiplied and the sum in lane 0 (`dot_product`
// zeroes the lanes the guest's mask leaves out and places the sum); the rounds under MXCSR.RC
// (`round` puts the immediate's mode there), with and without the precision exception.
host_op!(dpps_all, "dpps {x}, {y}, 0xf1");
host_op!(dppd_all, "dppd {x}, {y}, 0x31");
host_op!(roundps_p, "roundps {x}, {y}, 4");
host_op!(roundps_np, "roundps {x}, {y}, 12");
host_op!(roundpd_p, "roundpd {x}, {y}, 4");
host_op!(roundpd_np, "roundpd {x}, {y}, 12");
host_op!(roundss_p, "roundss {x}, {y}, 4");
host_op!(roundss_np, "roundss {x}, {y}, 12");
host_op!(roundsd_p, "roundsd {x}, {y}, 4");
host_op!(roundsd_np, "roundsd {x}, {y}, 12");
// The compares leave RFLAGS in {g}.
host_op!(ucomiss, "ucomiss {x}, {y}\npushfq\npop {g}");
host_op!(comiss, "comiss {x}, {y}\npushfq\npop {g}");
host_op!(ucomisd, "ucomisd {x}, {y}\npushfq\npop {g}");
host_op!(comisd, "comisd {x}, {y}\npushfq\npop {g}");

// CMPxx with each of the eight predicates (the immediate selects the function).
host_op!(cmpps_0, "cmpps {x}, {y}, 0");
host_op!(cmpps_1, "cmpps {x}, {y}, 1");
host_op!(cmpps_2, "cmpps {x}, {y}, 2");
host_op!(cmpps_3, "cmpps {x}, {y}, 3");
host_op!(cmpps_4, "cmpps {x}, {y}, 4");
host_op!(cmpps_5, "cmpps {x}, {y}, 5");
host_op!(cmpps_6, "cmpps {x}, {y}, 6");
host_op!(cmpps_7, "cmpps {x}, {y}, 7");
const CMPPS: [HostOp; 8] = [cmpps_0, cmpps_1, cmpps_2, cmpps_3, cmpps_4, cmpps_5, cmpps_6, cmpps_7];
host_op!(cmppd_0, "cmppd {x}, {y}, 0");
host_op!(cmppd_1, "cmppd {x}, {y}, 1");
host_op!(cmppd_2, "cmppd {x}, {y}, 2");
host_op!(cmppd_3, "cmppd {x}, {y}, 3");
host_op!(cmppd_4, "cmppd {x}, {y}, 4");
host_op!(cmppd_5, "cmppd {x}, {y}, 5");
host_op!(cmppd_6, "cmppd {x}, {y}, 6");
host_op!(cmppd_7, "cmppd {x}, {y}, 7");
const CMPPD: [HostOp; 8] = [cmppd_0, cmppd_1, cmppd_2, cmppd_3, cmppd_4, cmppd_5, cmppd_6, cmppd_7];
host_op!(cmpss_0, "cmpss {x}, {y}, 0");
host_op!(cmpss_1, "cmpss {x}, {y}, 1");
host_op!(cmpss_2, "cmpss {x}, {y}, 2");
host_op!(cmpss_3, "cmpss {x}, {y}, 3");
host_op!(cmpss_4, "cmpss {x}, {y}, 4");
host_op!(cmpss_5, "cmpss {x}, {y}, 5");
host_op!(cmpss_6, "cmpss {x}, {y}, 6");
host_op!(cmpss_7, "cmpss {x}, {y}, 7");
const CMPSS: [HostOp; 8] = [cmpss_0, cmpss_1, cmpss_2, cmpss_3, cmpss_4, cmpss_5, cmpss_6, cmpss_7];
host_op!(cmpsd_0, "cmpsd {x}, {y}, 0");
host_op!(cmpsd_1, "cmpsd {x}, {y}, 1");
host_op!(cmpsd_2, "cmpsd {x}, {y}, 2");
host_op!(cmpsd_3, "cmpsd {x}, {y}, 3");
host_op!(cmpsd_4, "cmpsd {x}, {y}, 4");
host_op!(cmpsd_5, "cmpsd {x}, {y}, 5");
host_op!(cmpsd_6, "cmpsd {x}, {y}, 6");
host_op!(cmpsd_7, "cmpsd {x}, {y}, 7");
const CMPSD: [HostOp; 8] = [cmpsd_0, cmpsd_1, cmpsd_2, cmpsd_3, cmpsd_4, cmpsd_5, cmpsd_6, cmpsd_7];

/// How the result of a host operation is written back.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    Xmm,
    Gpr,
    Flags,
}

fn pick(ins: &Instruction) -> Option<(HostOp, Out)> {
    let wide = |i: u32| ins.op_kind(i) == OpKind::Register && ins.op_register(i).size() == 8;
    let x = Out::Xmm;
    Some(match ins.mnemonic() {
        M::Addss => (addss, x),
        M::Addsd => (addsd, x),
        M::Addps => (addps, x),
        M::Addpd => (addpd, x),
        M::Subss => (subss, x),
        M::Subsd => (subsd, x),
        M::Subps => (subps, x),
        M::Subpd => (subpd, x),
        M::Mulss => (mulss, x),
        M::Mulsd => (mulsd, x),
        M::Mulps => (mulps, x),
        M::Mulpd => (mulpd, x),
        M::Divss => (divss, x),
        M::Divsd => (divsd, x),
        M::Divps => (divps, x),
        M::Divpd => (divpd, x),
        M::Sqrtss => (sqrtss, x),
        M::Sqrtsd => (sqrtsd, x),
        M::Sqrtps => (sqrtps, x),
        M::Sqrtpd => (sqrtpd, x),
        M::Minss => (minss, x),
        M::Minsd => (minsd, x),
        M::Minps => (minps, x),
        M::Minpd => (minpd, x),
        M::Maxss => (maxss, x),
        M::Maxsd => (maxsd, x),
        M::Maxps => (maxps, x),
        M::Maxpd => (maxpd, x),
        M::Rcpps => (rcpps, x),
        M::Rcpss => (rcpss, x),
        M::Rsqrtps => (rsqrtps, x),
        M::Rsqrtss => (rsqrtss, x),
        M::Cvtss2sd => (cvtss2sd, x),
        M::Cvtsd2ss => (cvtsd2ss, x),
        M::Cvtps2pd => (cvtps2pd, x),
        M::Cvtpd2ps => (cvtpd2ps, x),
        M::Cvtdq2ps => (cvtdq2ps, x),
        M::Cvtps2dq => (cvtps2dq, x),
        M::Cvttps2dq => (cvttps2dq, x),
        M::Cvtdq2pd => (cvtdq2pd, x),
        M::Cvtpd2dq => (cvtpd2dq, x),
        M::Cvttpd2dq => (cvttpd2dq, x),
        M::Cvtsi2ss => (if ins.memory_size().size() == 8 || wide(1) { cvtsi2ss64 } else { cvtsi2ss32 }, x),
        M::Cvtsi2sd => (if ins.memory_size().size() == 8 || wide(1) { cvtsi2sd64 } else { cvtsi2sd32 }, x),
        M::Cvtss2si => (if wide(0) { cvtss2si64 } else { cvtss2si32 }, Out::Gpr),
        M::Cvttss2si => (if wide(0) { cvttss2si64 } else { cvttss2si32 }, Out::Gpr),
        M::Cvtsd2si => (if wide(0) { cvtsd2si64 } else { cvtsd2si32 }, Out::Gpr),
        M::Cvttsd2si => (if wide(0) { cvttsd2si64 } else { cvttsd2si32 }, Out::Gpr),
        M::Cmpps => (CMPPS[(ins.immediate(2) & 7) as usize], x),
        M::Cmppd => (CMPPD[(ins.immediate(2) & 7) as usize], x),
        M::Cmpss => (CMPSS[(ins.immediate(2) & 7) as usize], x),
        M::Cmpsd => (CMPSD[(ins.immediate(2) & 7) as usize], x),
        M::Addsubps => (addsubps, x),
        M::Addsubpd => (addsubpd, x),
        M::Haddps => (haddps, x),
        M::Haddpd => (haddpd, x),
        M::Hsubps => (hsubps, x),
        M::Hsubpd => (hsubpd, x),
        M::Ucomiss => (ucomiss, Out::Flags),
        M::Comiss => (comiss, Out::Flags),
        M::Ucomisd => (ucomisd, Out::Flags),
        M::Comisd => (comisd, Out::Flags),
        _ => return None,
    })
}

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    if matches!(
        ins.mnemonic(),
        M::Cvtpi2ps | M::Cvtps2pi | M::Cvttps2pi | M::Cvtpi2pd | M::Cvtpd2pi | M::Cvttpd2pi
    ) {
        return Some(cvt_mmx);
    }
    match ins.mnemonic() {
        M::Dpps | M::Dppd => return Some(dot_product),
        M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => return Some(round),
        _ => {}
    }
    pick(ins).map(|_| float_op as Handler)
}

/// The CPUID feature a float form needs beyond SSE/SSE2 (0 for none).
fn feature(m: M) -> u32 {
    match m {
        M::Addsubps | M::Addsubpd | M::Haddps | M::Haddpd | M::Hsubps | M::Hsubpd => crate::cpuid::SSE3,
        M::Dpps | M::Dppd | M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => crate::cpuid::SSE41,
        _ => 0,
    }
}

/// DPPS/DPPD: the lanes outside imm8[7:4] are zeroed in both operands (their product is +0.0
/// and raises nothing, exactly what the instruction uses for a masked lane), the host sums all
/// products in the instruction's order, and the sum goes to the lanes in imm8[3:0].
fn dot_product(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(crate::cpuid::SSE41)?;
    sse_check(cpu)?;
    let imm = op.ins.immediate(2) as u32;
    let (f, bits, lanes): (HostOp, u32, u32) =
        if op.ins.mnemonic() == M::Dpps { (dpps_all, 32, 4) } else { (dppd_all, 64, 2) };
    let lane_mask = |sel: u32| {
        (0..lanes)
            .fold(0u128, |m, i| m | if sel >> i & 1 != 0 { ((1u128 << bits) - 1) << (bits * i) } else { 0 })
    };
    let keep = lane_mask(imm >> 4);
    let b = src(cpu, op, 1, true)? & keep;
    let a = xmm(cpu, op, 0) & keep;
    let (r, _) = under_guest_mxcsr(cpu, f, a, b, 0, None)?;
    let sum = r & ((1u128 << bits) - 1);
    let out = (0..lanes).fold(0u128, |o, i| o | sum << (bits * i)) & lane_mask(imm & 15);
    dst(cpu, op, 0, out, 16, false)
}

/// ROUNDPS/PD/SS/SD: imm8[2] set rounds by MXCSR.RC, clear by imm8[1:0] (run with that mode in
/// MXCSR.RC, the guest's restored after); imm8[3] suppresses the precision exception.
fn round(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(crate::cpuid::SSE41)?;
    sse_check(cpu)?;
    let imm = op.ins.immediate(2) as u32;
    let p = imm & 8 == 0;
    let f: HostOp = match (op.ins.mnemonic(), p) {
        (M::Roundps, true) => roundps_p,
        (M::Roundps, false) => roundps_np,
        (M::Roundpd, true) => roundpd_p,
        (M::Roundpd, false) => roundpd_np,
        (M::Roundss, true) => roundss_p,
        (M::Roundss, false) => roundss_np,
        (M::Roundsd, true) => roundsd_p,
        _ => roundsd_np,
    };
    let b = src(cpu, op, 1, true)?;
    let a = xmm(cpu, op, 0);
    let rc = if imm & 4 == 0 { Some(imm & 3) } else { None };
    let (r, _) = under_guest_mxcsr(cpu, f, a, b, 0, rc)?;
    dst(cpu, op, 0, r, 16, false)
}

/// Runs `f` under the guest's MXCSR (with rounding mode `rc` instead of MXCSR.RC if given)
/// with exceptions masked and merges the flags raised; an unmasked one faults (#XM, or #UD
/// without CR4.OSXMMEXCPT).
fn under_guest_mxcsr(cpu: &mut Cpu, f: HostOp, a: u128, b: u128, g: u64, rc: Option<u32>) -> Ex<(u128, u64)> {
    let guest = cpu.fpu.mxcsr & MXCSR_MASK;
    let run = match rc {
        Some(rc) => (guest & !0x6000) | (rc & 3) << 13,
        None => guest,
    };
    let (r, g, after) = f(a, b, g, (run & !0x3f) | 0x1f80);
    let raised = after & 0x3f;
    cpu.fpu.mxcsr = guest | raised;
    if raised & !(guest >> 7) & 0x3f != 0 {
        return Err(if cpu.cr4 & CR4_OSXMMEXCPT != 0 { Exc::new(XM) } else { Exc::ud() });
    }
    Ok((r, g))
}

/// CVTPI2PS/CVTPI2PD (MM or m64 source), CVT(T)PS2PI (xmm/m64 source) and CVT(T)PD2PI
/// (xmm/m128 source, aligned): the packed-dword conversions on two lanes, other lanes zero so
/// they raise nothing. An MM register operand switches the x87 unit to MMX state first.
fn cvt_mmx(cpu: &mut Cpu, op: &Op) -> Ex {
    sse_check(cpu)?;
    let ins = &op.ins;
    if mreg(ins, 0).is_some() || mreg(ins, 1).is_some() {
        enter(cpu)?;
    }
    let b = match mreg(ins, 1) {
        Some(m) => mm(cpu, m) as u128,
        None => src(cpu, op, 1, true)?,
    };
    let low = u64::MAX as u128;
    let (f, b): (HostOp, u128) = match ins.mnemonic() {
        M::Cvtpi2ps => (cvtdq2ps, b & low),
        M::Cvtpi2pd => (cvtdq2pd, b & low),
        M::Cvtps2pi => (cvtps2dq, b & low),
        M::Cvttps2pi => (cvttps2dq, b & low),
        M::Cvtpd2pi => (cvtpd2dq, b),
        _ => (cvttpd2dq, b),
    };
    let (r, _) = under_guest_mxcsr(cpu, f, 0, b, 0, None)?;
    match (ins.mnemonic(), mreg(ins, 0)) {
        (M::Cvtpi2ps, _) => {
            let d = xmm(cpu, op, 0);
            dst(cpu, op, 0, (d & !low) | (r & low), 16, false)
        }
        (M::Cvtpi2pd, _) => dst(cpu, op, 0, r, 16, false),
        (_, Some(m)) => {
            set_mm(cpu, m, r as u64);
            Ok(())
        }
        _ => Err(Exc::ud()),
    }
}

fn float_op(cpu: &mut Cpu, op: &Op) -> Ex {
    cpu.require(feature(op.ins.mnemonic()))?;
    sse_check(cpu)?;
    let (f, out) = pick(&op.ins).ok_or_else(Exc::ud)?;
    let (a, b, g) = match op.ins.mnemonic() {
        M::Cvtsi2ss | M::Cvtsi2sd => (xmm(cpu, op, 0), 0, src(cpu, op, 1, true)? as u64),
        _ => (xmm(cpu, op, 0), src(cpu, op, 1, true)?, 0),
    };
    // All exceptions masked, sticky flags cleared: the flags after are this operation's.
    let (r, g) = under_guest_mxcsr(cpu, f, a, b, g, None)?;
    match out {
        Out::Xmm => dst(cpu, op, 0, r, 16, false),
        Out::Gpr => {
            let size = cpu.opnd_size(op, 0);
            cpu.wr(op, 0, size, g)
        }
        Out::Flags => {
            cpu.flags.set_arith(ZF | PF | CF | OF | SF | AF, g & (ZF | PF | CF));
            Ok(())
        }
    }
}
