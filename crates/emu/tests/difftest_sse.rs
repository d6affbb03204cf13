//! Differential tests of the SSE/SSE2 integer, logical, shuffle and move forms against the
//! host CPU (the SSE counterpart of `difftest.rs`): random 128-bit values in all 16 XMM
//! registers, random RAX/RCX and a random buffer addressed as `[r15 + disp8]`; afterwards
//! every XMM register, RAX, RCX and the buffer must match. Plus the fault rules (#UD, #NM,
//! #GP on misaligned aligned forms).

mod common;
// Not in `common`: it needs libc, which the fuzz target (also using `common`) does not have.
#[path = "common/native.rs"]
mod native;

use common::*;
use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions};
use native::Native;
use vmr_emu::cpu::{CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, GP, NM, UD, XM};
use vmr_emu::decode::make_op;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

const BUF: usize = 256;
const GUEST_BUF: u64 = 0x20000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct State {
    xmm: [u128; 16],
    rax: u64,
    rcx: u64,
    r15: u64,
    mxcsr: u32,
    host_mxcsr: u32,
    flags: u64,
    /// PCMPESTRx's second length.
    rdx: u64,
}

impl Rng {
    /// A random byte biased towards values the compare/min/max/saturation forms care about.
    fn byte(&mut self) -> u8 {
        const EDGE: [u8; 6] = [0, 0x7f, 0x80, 0xff, 1, 0x20];
        match self.below(4) {
            0 => EDGE[self.below(6) as usize],
            _ => self.next() as u8,
        }
    }
    /// Four f32 or two f64 lanes: specials, small integers, fractions or random bits.
    fn float_xmm(&mut self) -> u128 {
        let double = self.below(2) == 0;
        let mut r = 0u128;
        let (n, bits) = if double { (2, 64) } else { (4, 32) };
        for i in 0..n {
            let v: f64 = match self.below(6) {
                0 => [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-310, 1e300, -2.5e9]
                    [self.below(8) as usize],
                1 | 2 => (self.below(2001) as f64 - 1000.0) / [1.0, 3.0, 7.0, 0.5][self.below(4) as usize],
                3 => (self.next() as i64) as f64,
                _ => f64::NAN,
            };
            let lane = if self.below(6) == 5 {
                self.next() & if double { u64::MAX } else { 0xffff_ffff }
            } else if double {
                v.to_bits()
            } else {
                (v as f32).to_bits() as u64
            };
            r |= (lane as u128) << (bits * i);
        }
        r
    }
    fn xmm(&mut self) -> u128 {
        let mut b = [0u8; 16];
        for x in b.iter_mut() {
            *x = self.byte();
        }
        u128::from_le_bytes(b)
    }
}

const XMMS: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// The native side: XMM0-15, RAX, RCX, RDX, R15, MXCSR and RFLAGS loaded from and stored to
/// a `State`.
fn native() -> Native {
    let mut a = CodeAssembler::new(64).unwrap();
    a.push(r15).unwrap();
    a.stmxcsr(dword_ptr(rdi + 284)).unwrap();
    a.ldmxcsr(dword_ptr(rdi + 280)).unwrap();
    a.push(qword_ptr(rdi + 288)).unwrap();
    a.popfq().unwrap();
    for (i, x) in XMMS.iter().enumerate() {
        a.movdqu(*x, xmmword_ptr(rdi + 16 * i as i32)).unwrap();
    }
    a.mov(rax, qword_ptr(rdi + 256)).unwrap();
    a.mov(rcx, qword_ptr(rdi + 264)).unwrap();
    a.mov(r15, qword_ptr(rdi + 272)).unwrap();
    a.mov(rdx, qword_ptr(rdi + 296)).unwrap();
    let prologue = a.assemble(0).unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    for (i, x) in XMMS.iter().enumerate() {
        a.movdqu(xmmword_ptr(rdi + 16 * i as i32), *x).unwrap();
    }
    a.mov(qword_ptr(rdi + 256), rax).unwrap();
    a.mov(qword_ptr(rdi + 264), rcx).unwrap();
    a.mov(qword_ptr(rdi + 296), rdx).unwrap();
    a.pushfq().unwrap();
    a.pop(qword_ptr(rdi + 288)).unwrap();
    a.stmxcsr(dword_ptr(rdi + 280)).unwrap();
    a.ldmxcsr(dword_ptr(rdi + 284)).unwrap();
    a.pop(r15).unwrap();
    a.ret().unwrap();
    let epilogue = a.assemble(0).unwrap();
    Native::new(prologue, epilogue)
}

/// What the ModRM reg field names.
#[derive(Clone, Copy, PartialEq)]
enum Reg {
    Xmm,
    Gpr,
    Digit(u8),
}

/// What the ModRM rm field may name.
#[derive(Clone, Copy, PartialEq)]
enum Rm {
    XmmOrMem,
    XmmOnly,
    MemOnly,
    GprOrMem,
}

struct Form {
    name: &'static str,
    /// Mandatory prefix (0x66, 0xf2, 0xf3) or 0.
    pfx: u8,
    rex_w: bool,
    op: &'static [u8],
    reg: Reg,
    rm: Rm,
    /// Memory operands 16-byte aligned (the aligned forms #GP otherwise).
    align: bool,
    imm: bool,
}

const fn f(name: &'static str, pfx: u8, op: &'static [u8], reg: Reg, rm: Rm, align: bool) -> Form {
    Form { name, pfx, rex_w: false, op, reg, rm, align, imm: false }
}

const fn ib(mut form: Form) -> Form {
    form.imm = true;
    form
}

const fn w(mut form: Form) -> Form {
    form.rex_w = true;
    form
}

use Reg::{Digit, Gpr, Xmm};
use Rm::{GprOrMem, MemOnly, XmmOnly, XmmOrMem};

/// Packed binary forms `66 0F xx /r` (all with aligned m128).
const BINARY_66: [(&str, u8); 50] = [
    ("pmulhw", 0xe5),
    ("pmulhuw", 0xe4),
    ("pmuludq", 0xf4),
    ("pmaddwd", 0xf5),
    ("psadbw", 0xf6),
    ("paddsb", 0xec),
    ("paddsw", 0xed),
    ("psubsb", 0xe8),
    ("psubsw", 0xe9),
    ("pand", 0xdb),
    ("pandn", 0xdf),
    ("por", 0xeb),
    ("pxor", 0xef),
    ("paddb", 0xfc),
    ("paddw", 0xfd),
    ("paddd", 0xfe),
    ("paddq", 0xd4),
    ("psubb", 0xf8),
    ("psubw", 0xf9),
    ("psubd", 0xfa),
    ("psubq", 0xfb),
    ("paddusb", 0xdc),
    ("paddusw", 0xdd),
    ("psubusb", 0xd8),
    ("psubusw", 0xd9),
    ("pcmpeqb", 0x74),
    ("pcmpeqw", 0x75),
    ("pcmpeqd", 0x76),
    ("pcmpgtb", 0x64),
    ("pcmpgtw", 0x65),
    ("pcmpgtd", 0x66),
    ("pminub", 0xda),
    ("pmaxub", 0xde),
    ("pminsw", 0xea),
    ("pmaxsw", 0xee),
    ("pavgb", 0xe0),
    ("pavgw", 0xe3),
    ("pmullw", 0xd5),
    ("punpcklbw", 0x60),
    ("punpcklwd", 0x61),
    ("punpckldq", 0x62),
    ("punpcklqdq", 0x6c),
    ("punpckhbw", 0x68),
    ("punpckhwd", 0x69),
    ("punpckhdq", 0x6a),
    ("punpckhqdq", 0x6d),
    ("packsswb", 0x63),
    ("packssdw", 0x6b),
    ("packuswb", 0x67),
    ("psllw", 0xf1),
];

fn forms() -> Vec<Form> {
    let mut v: Vec<Form> = BINARY_66
        .iter()
        .map(|&(name, op)| Form {
            op: Box::leak(Box::new([0x0f, op])),
            ..f(name, 0x66, &[], Xmm, XmmOrMem, true)
        })
        .collect();
    for (name, op) in [("pslld", 0xf2), ("psllq", 0xf3), ("psrlw", 0xd1), ("psrld", 0xd2), ("psrlq", 0xd3)] {
        v.push(Form { op: Box::leak(Box::new([0x0f, op])), ..f(name, 0x66, &[], Xmm, XmmOrMem, true) });
    }
    for (name, op) in [("psraw", 0xe1), ("psrad", 0xe2)] {
        v.push(Form { op: Box::leak(Box::new([0x0f, op])), ..f(name, 0x66, &[], Xmm, XmmOrMem, true) });
    }
    // Float-typed logic and unpacks.
    for (name, pfx, op) in [
        ("andps", 0, 0x54),
        ("andnps", 0, 0x55),
        ("orps", 0, 0x56),
        ("xorps", 0, 0x57),
        ("andpd", 0x66, 0x54),
        ("xorpd", 0x66, 0x57),
        ("unpcklps", 0, 0x14),
        ("unpckhps", 0, 0x15),
        ("unpcklpd", 0x66, 0x14),
        ("unpckhpd", 0x66, 0x15),
    ] {
        v.push(Form { op: Box::leak(Box::new([0x0f, op])), ..f(name, pfx, &[], Xmm, XmmOrMem, true) });
    }
    // Floating point: 0F xx with none/66/F3/F2 for PS/PD/SS/SD.
    for (name, op) in [
        ("add", 0x58),
        ("mul", 0x59),
        ("sub", 0x5c),
        ("min", 0x5d),
        ("div", 0x5e),
        ("max", 0x5f),
        ("sqrt", 0x51),
    ] {
        for (sfx, pfx) in [("ps", 0), ("pd", 0x66), ("ss", 0xf3), ("sd", 0xf2)] {
            let n: &'static str = Box::leak(format!("{name}{sfx}").into_boxed_str());
            v.push(Form { op: Box::leak(Box::new([0x0f, op])), ..f(n, pfx, &[], Xmm, XmmOrMem, true) });
        }
    }
    for (name, pfx, op) in [
        ("cvtps2pd", 0, 0x5a),
        ("cvtpd2ps", 0x66, 0x5a),
        ("cvtss2sd", 0xf3, 0x5a),
        ("cvtsd2ss", 0xf2, 0x5a),
        ("cvtdq2ps", 0, 0x5b),
        ("cvtps2dq", 0x66, 0x5b),
        ("cvttps2dq", 0xf3, 0x5b),
        ("cvttpd2dq", 0x66, 0xe6),
        ("cvtdq2pd", 0xf3, 0xe6),
        ("cvtpd2dq", 0xf2, 0xe6),
        ("rcpps", 0, 0x53),
        ("rcpss", 0xf3, 0x53),
        ("rsqrtps", 0, 0x52),
        ("rsqrtss", 0xf3, 0x52),
        ("ucomiss", 0, 0x2e),
        ("comiss", 0, 0x2f),
        ("ucomisd", 0x66, 0x2e),
        ("comisd", 0x66, 0x2f),
    ] {
        v.push(Form { op: Box::leak(Box::new([0x0f, op])), ..f(name, pfx, &[], Xmm, XmmOrMem, true) });
    }
    for (name, pfx) in [("cmpps", 0), ("cmppd", 0x66), ("cmpss", 0xf3), ("cmpsd", 0xf2)] {
        v.push(ib(f(name, pfx, &[0x0f, 0xc2], Xmm, XmmOrMem, true)));
    }
    for (name, pfx, op, reg, rm) in [
        ("cvtsi2ss", 0xf3, 0x2a, Xmm, GprOrMem),
        ("cvtsi2sd", 0xf2, 0x2a, Xmm, GprOrMem),
        ("cvttss2si", 0xf3, 0x2c, Gpr, XmmOrMem),
        ("cvtss2si", 0xf3, 0x2d, Gpr, XmmOrMem),
        ("cvttsd2si", 0xf2, 0x2c, Gpr, XmmOrMem),
        ("cvtsd2si", 0xf2, 0x2d, Gpr, XmmOrMem),
    ] {
        let op: &'static [u8] = Box::leak(Box::new([0x0f, op]));
        v.push(Form { op, ..f(name, pfx, &[], reg, rm, false) });
        v.push(w(Form { op, ..f(name, pfx, &[], reg, rm, false) }));
    }
    v.extend([
        // Moves.
        f("movaps load", 0, &[0x0f, 0x28], Xmm, XmmOrMem, true),
        f("movaps store", 0, &[0x0f, 0x29], Xmm, XmmOrMem, true),
        f("movapd load", 0x66, &[0x0f, 0x28], Xmm, XmmOrMem, true),
        f("movups load", 0, &[0x0f, 0x10], Xmm, XmmOrMem, false),
        f("movups store", 0, &[0x0f, 0x11], Xmm, XmmOrMem, false),
        f("movupd store", 0x66, &[0x0f, 0x11], Xmm, XmmOrMem, false),
        f("movdqa load", 0x66, &[0x0f, 0x6f], Xmm, XmmOrMem, true),
        f("movdqa store", 0x66, &[0x0f, 0x7f], Xmm, XmmOrMem, true),
        f("movdqu load", 0xf3, &[0x0f, 0x6f], Xmm, XmmOrMem, false),
        f("movdqu store", 0xf3, &[0x0f, 0x7f], Xmm, XmmOrMem, false),
        f("movntdq", 0x66, &[0x0f, 0xe7], Xmm, MemOnly, true),
        f("movntps", 0, &[0x0f, 0x2b], Xmm, MemOnly, true),
        f("movd xmm, r/m32", 0x66, &[0x0f, 0x6e], Xmm, GprOrMem, false),
        f("movd r/m32, xmm", 0x66, &[0x0f, 0x7e], Xmm, GprOrMem, false),
        w(f("movq xmm, r/m64", 0x66, &[0x0f, 0x6e], Xmm, GprOrMem, false)),
        w(f("movq r/m64, xmm", 0x66, &[0x0f, 0x7e], Xmm, GprOrMem, false)),
        f("movq xmm, xmm/m64", 0xf3, &[0x0f, 0x7e], Xmm, XmmOrMem, false),
        f("movq xmm/m64, xmm", 0x66, &[0x0f, 0xd6], Xmm, XmmOrMem, false),
        f("movss load", 0xf3, &[0x0f, 0x10], Xmm, XmmOrMem, false),
        f("movss store", 0xf3, &[0x0f, 0x11], Xmm, XmmOrMem, false),
        f("movsd load", 0xf2, &[0x0f, 0x10], Xmm, XmmOrMem, false),
        f("movsd store", 0xf2, &[0x0f, 0x11], Xmm, XmmOrMem, false),
        f("movlps/movhlps", 0, &[0x0f, 0x12], Xmm, XmmOrMem, false),
        f("movlps store", 0, &[0x0f, 0x13], Xmm, MemOnly, false),
        f("movhps/movlhps", 0, &[0x0f, 0x16], Xmm, XmmOrMem, false),
        f("movhps store", 0, &[0x0f, 0x17], Xmm, MemOnly, false),
        f("movlpd load", 0x66, &[0x0f, 0x12], Xmm, MemOnly, false),
        f("movhpd load", 0x66, &[0x0f, 0x16], Xmm, MemOnly, false),
        f("movhpd store", 0x66, &[0x0f, 0x17], Xmm, MemOnly, false),
        // Masks, word insert/extract.
        f("pmovmskb", 0x66, &[0x0f, 0xd7], Gpr, XmmOnly, false),
        f("movmskps", 0, &[0x0f, 0x50], Gpr, XmmOnly, false),
        f("movmskpd", 0x66, &[0x0f, 0x50], Gpr, XmmOnly, false),
        ib(f("pextrw", 0x66, &[0x0f, 0xc5], Gpr, XmmOnly, false)),
        ib(f("pinsrw", 0x66, &[0x0f, 0xc4], Xmm, GprOrMem, false)),
        // Shuffles.
        ib(f("pshufd", 0x66, &[0x0f, 0x70], Xmm, XmmOrMem, true)),
        ib(f("pshuflw", 0xf2, &[0x0f, 0x70], Xmm, XmmOrMem, true)),
        ib(f("pshufhw", 0xf3, &[0x0f, 0x70], Xmm, XmmOrMem, true)),
        ib(f("shufps", 0, &[0x0f, 0xc6], Xmm, XmmOrMem, true)),
        ib(f("shufpd", 0x66, &[0x0f, 0xc6], Xmm, XmmOrMem, true)),
        // Shifts by immediate.
        ib(f("psrlw imm", 0x66, &[0x0f, 0x71], Digit(2), XmmOnly, false)),
        ib(f("psraw imm", 0x66, &[0x0f, 0x71], Digit(4), XmmOnly, false)),
        ib(f("psllw imm", 0x66, &[0x0f, 0x71], Digit(6), XmmOnly, false)),
        ib(f("psrld imm", 0x66, &[0x0f, 0x72], Digit(2), XmmOnly, false)),
        ib(f("psrad imm", 0x66, &[0x0f, 0x72], Digit(4), XmmOnly, false)),
        ib(f("pslld imm", 0x66, &[0x0f, 0x72], Digit(6), XmmOnly, false)),
        ib(f("psrlq imm", 0x66, &[0x0f, 0x73], Digit(2), XmmOnly, false)),
        ib(f("psrldq", 0x66, &[0x0f, 0x73], Digit(3), XmmOnly, false)),
        ib(f("psllq imm", 0x66, &[0x0f, 0x73], Digit(6), XmmOnly, false)),
        ib(f("pslldq", 0x66, &[0x0f, 0x73], Digit(7), XmmOnly, false)),
    ]);
    v.extend(v2_forms());
    v
}

/// The x86-64-v2 additions: SSE3, SSSE3, SSE4.1, SSE4.2 (CRC32 included).
fn v2_forms() -> Vec<Form> {
    let op = |b: &[u8]| -> &'static [u8] { Box::leak(b.to_vec().into_boxed_slice()) };
    let mut v = vec![
        // SSE3.
        f("addsubps", 0xf2, &[0x0f, 0xd0], Xmm, XmmOrMem, true),
        f("addsubpd", 0x66, &[0x0f, 0xd0], Xmm, XmmOrMem, true),
        f("haddps", 0xf2, &[0x0f, 0x7c], Xmm, XmmOrMem, true),
        f("haddpd", 0x66, &[0x0f, 0x7c], Xmm, XmmOrMem, true),
        f("hsubps", 0xf2, &[0x0f, 0x7d], Xmm, XmmOrMem, true),
        f("hsubpd", 0x66, &[0x0f, 0x7d], Xmm, XmmOrMem, true),
        f("movddup", 0xf2, &[0x0f, 0x12], Xmm, XmmOrMem, false),
        f("movshdup", 0xf3, &[0x0f, 0x16], Xmm, XmmOrMem, true),
        f("movsldup", 0xf3, &[0x0f, 0x12], Xmm, XmmOrMem, true),
        f("lddqu", 0xf2, &[0x0f, 0xf0], Xmm, MemOnly, false),
        // SSSE3 and SSE4.1/4.2 with an immediate.
        ib(f("palignr", 0x66, &[0x0f, 0x3a, 0x0f], Xmm, XmmOrMem, true)),
        ib(f("roundps", 0x66, &[0x0f, 0x3a, 0x08], Xmm, XmmOrMem, true)),
        ib(f("roundpd", 0x66, &[0x0f, 0x3a, 0x09], Xmm, XmmOrMem, true)),
        ib(f("roundss", 0x66, &[0x0f, 0x3a, 0x0a], Xmm, XmmOrMem, false)),
        ib(f("roundsd", 0x66, &[0x0f, 0x3a, 0x0b], Xmm, XmmOrMem, false)),
        ib(f("blendps", 0x66, &[0x0f, 0x3a, 0x0c], Xmm, XmmOrMem, true)),
        ib(f("blendpd", 0x66, &[0x0f, 0x3a, 0x0d], Xmm, XmmOrMem, true)),
        ib(f("pblendw", 0x66, &[0x0f, 0x3a, 0x0e], Xmm, XmmOrMem, true)),
        ib(f("pextrb", 0x66, &[0x0f, 0x3a, 0x14], Xmm, GprOrMem, false)),
        ib(f("pextrw r/m16", 0x66, &[0x0f, 0x3a, 0x15], Xmm, GprOrMem, false)),
        ib(f("pextrd", 0x66, &[0x0f, 0x3a, 0x16], Xmm, GprOrMem, false)),
        ib(w(f("pextrq", 0x66, &[0x0f, 0x3a, 0x16], Xmm, GprOrMem, false))),
        ib(f("extractps", 0x66, &[0x0f, 0x3a, 0x17], Xmm, GprOrMem, false)),
        ib(f("pinsrb", 0x66, &[0x0f, 0x3a, 0x20], Xmm, GprOrMem, false)),
        ib(f("insertps", 0x66, &[0x0f, 0x3a, 0x21], Xmm, XmmOrMem, false)),
        ib(f("pinsrd", 0x66, &[0x0f, 0x3a, 0x22], Xmm, GprOrMem, false)),
        ib(w(f("pinsrq", 0x66, &[0x0f, 0x3a, 0x22], Xmm, GprOrMem, false))),
        ib(f("dpps", 0x66, &[0x0f, 0x3a, 0x40], Xmm, XmmOrMem, true)),
        ib(f("dppd", 0x66, &[0x0f, 0x3a, 0x41], Xmm, XmmOrMem, true)),
        ib(f("mpsadbw", 0x66, &[0x0f, 0x3a, 0x42], Xmm, XmmOrMem, true)),
        ib(f("pcmpestrm", 0x66, &[0x0f, 0x3a, 0x60], Xmm, XmmOrMem, false)),
        ib(w(f("pcmpestrm64", 0x66, &[0x0f, 0x3a, 0x60], Xmm, XmmOrMem, false))),
        ib(f("pcmpestri", 0x66, &[0x0f, 0x3a, 0x61], Xmm, XmmOrMem, false)),
        ib(w(f("pcmpestri64", 0x66, &[0x0f, 0x3a, 0x61], Xmm, XmmOrMem, false))),
        ib(f("pcmpistrm", 0x66, &[0x0f, 0x3a, 0x62], Xmm, XmmOrMem, false)),
        ib(f("pcmpistri", 0x66, &[0x0f, 0x3a, 0x63], Xmm, XmmOrMem, false)),
        f("movntdqa", 0x66, &[0x0f, 0x38, 0x2a], Xmm, MemOnly, true),
        // CRC32 (F2 0F 38 F0/F1): r32/r64 with r/m8, r/m16 (66 first), r/m32, r/m64.
        f("crc32 r32, r/m8", 0xf2, &[0x0f, 0x38, 0xf0], Gpr, GprOrMem, false),
        w(f("crc32 r64, r/m8", 0xf2, &[0x0f, 0x38, 0xf0], Gpr, GprOrMem, false)),
        f("crc32 r32, r/m16", 0x66, &[0xf2, 0x0f, 0x38, 0xf1], Gpr, GprOrMem, false),
        f("crc32 r32, r/m32", 0xf2, &[0x0f, 0x38, 0xf1], Gpr, GprOrMem, false),
        w(f("crc32 r64, r/m64", 0xf2, &[0x0f, 0x38, 0xf1], Gpr, GprOrMem, false)),
    ];
    // 66 0F 38 xx /r, aligned m128 (SSSE3, SSE4.1, PCMPGTQ).
    for (name, b) in [
        ("pshufb", 0x00),
        ("phaddw", 0x01),
        ("phaddd", 0x02),
        ("phaddsw", 0x03),
        ("pmaddubsw", 0x04),
        ("phsubw", 0x05),
        ("phsubd", 0x06),
        ("phsubsw", 0x07),
        ("psignb", 0x08),
        ("psignw", 0x09),
        ("psignd", 0x0a),
        ("pmulhrsw", 0x0b),
        ("pabsb", 0x1c),
        ("pabsw", 0x1d),
        ("pabsd", 0x1e),
        ("pblendvb", 0x10),
        ("blendvps", 0x14),
        ("blendvpd", 0x15),
        ("ptest", 0x17),
        ("pmuldq", 0x28),
        ("pcmpeqq", 0x29),
        ("packusdw", 0x2b),
        ("pcmpgtq", 0x37),
        ("pminsb", 0x38),
        ("pminsd", 0x39),
        ("pminuw", 0x3a),
        ("pminud", 0x3b),
        ("pmaxsb", 0x3c),
        ("pmaxsd", 0x3d),
        ("pmaxuw", 0x3e),
        ("pmaxud", 0x3f),
        ("pmulld", 0x40),
        ("phminposuw", 0x41),
    ] {
        v.push(f(name, 0x66, op(&[0x0f, 0x38, b]), Xmm, XmmOrMem, true));
    }
    // PMOVSX/PMOVZX: narrow memory operands, no alignment.
    for (name, b) in [
        ("pmovsxbw", 0x20),
        ("pmovsxbd", 0x21),
        ("pmovsxbq", 0x22),
        ("pmovsxwd", 0x23),
        ("pmovsxwq", 0x24),
        ("pmovsxdq", 0x25),
        ("pmovzxbw", 0x30),
        ("pmovzxbd", 0x31),
        ("pmovzxbq", 0x32),
        ("pmovzxwd", 0x33),
        ("pmovzxwq", 0x34),
        ("pmovzxdq", 0x35),
    ] {
        v.push(f(name, 0x66, op(&[0x0f, 0x38, b]), Xmm, XmmOrMem, false));
    }
    v
}

/// Encodes one random instance of `form`.
fn encode(form: &Form, rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    if form.pfx != 0 {
        b.push(form.pfx);
    }
    let reg = match form.reg {
        Xmm => rng.below(16) as u8,
        Gpr => rng.below(2) as u8,
        Digit(d) => d,
    };
    let mem = match form.rm {
        MemOnly => true,
        XmmOnly => false,
        XmmOrMem | GprOrMem => rng.below(2) == 0,
    };
    let rm = match (mem, form.rm) {
        (true, _) => 15,
        (false, GprOrMem) => rng.below(2) as u8,
        (false, _) => rng.below(16) as u8,
    };
    // A second legacy prefix at the start of `op` (CRC32 r/m16: 66 F2) goes before REX.
    let split = form.op.iter().take_while(|&&x| matches!(x, 0x66 | 0xf2 | 0xf3)).count();
    b.extend_from_slice(&form.op[..split]);
    let rex = 0x40 | if form.rex_w { 8 } else { 0 } | ((reg >> 3 & 1) << 2) | (rm >> 3);
    if rex != 0x40 {
        b.push(rex);
    }
    b.extend_from_slice(&form.op[split..]);
    if mem {
        let disp =
            if form.align { (rng.below(6) as i8 - 3) * 16 } else { (rng.below(200) as i16 - 100) as i8 };
        b.push(0x40 | ((reg & 7) << 3) | 7);
        b.push(disp as u8);
    } else {
        b.push(0xc0 | ((reg & 7) << 3) | (rm & 7));
    }
    if form.imm {
        // Shift counts around the lane widths, shuffle selectors anywhere.
        let v = if matches!(form.reg, Digit(_)) { rng.below(72) as u8 } else { rng.next() as u8 };
        b.push(v);
    }
    b
}

fn random_state(rng: &mut Rng, buf: &mut [u8; BUF]) -> State {
    let mut s = State::default();
    let float = rng.below(2) == 0;
    for x in s.xmm.iter_mut() {
        *x = if float { rng.float_xmm() } else { rng.xmm() };
        if rng.below(4) == 0 {
            // Small values in the low quadword: shift counts by register take effect.
            *x = (*x & !(u64::MAX as u128)) | rng.below(72) as u128;
        }
    }
    s.rax = rng.next();
    s.rcx = rng.next();
    for b in buf.iter_mut() {
        *b = rng.byte();
    }
    if rng.below(4) == 0 {
        // A small count in memory for the shift-by-m128 forms.
        for at in (0..BUF).step_by(16) {
            buf[at..at + 8].copy_from_slice(&rng.below(72).to_le_bytes());
        }
    }
    if float {
        for at in (0..BUF).step_by(16) {
            buf[at..at + 16].copy_from_slice(&rng.float_xmm().to_le_bytes());
        }
        if rng.below(2) == 0 {
            s.rax = (rng.below(2001) as i64 - 1000) as u64;
        }
    }
    // Any rounding mode, FTZ (no DAZ: not in MXCSR_MASK), random sticky flags; exceptions masked (an unmasked
    // one would trap on the host).
    s.mxcsr = 0x1f80 | (rng.next() as u32 & 0xe03f);
    s.flags = 2 | (rng.next() & 0x8d5);
    s.r15 = 128;
    s.rdx = rng.next();
    if rng.below(4) == 0 {
        // Strings for PCMPxSTRx: a small alphabet (so that elements match) with NULs, and
        // lengths for the explicit forms around 0..16 of both signs.
        const ABC: [u8; 6] = [0, b'a', b'b', b'c', 0x80, 0xff];
        let pick = |rng: &mut Rng| if rng.below(8) == 0 { 0 } else { ABC[1 + rng.below(5) as usize] };
        for x in s.xmm.iter_mut() {
            *x = u128::from_le_bytes(std::array::from_fn(|_| pick(rng)));
        }
        for b in buf.iter_mut() {
            *b = pick(rng);
        }
        let len = |rng: &mut Rng| {
            (rng.below(41) as i64 - 20) as u64 ^ (rng.below(4) == 0) as u64 * 0xffff_ffff_0000_0000
        };
        s.rax = len(rng);
        s.rdx = len(rng);
    }
    s
}

fn emulate(g: &mut Guest, bytes: &[u8], input: &State, buf: &[u8; BUF]) -> (State, [u8; BUF]) {
    g.mem.write_slice(buf, GuestAddress(GUEST_BUF)).unwrap();
    let cpu = g.cpu();
    cpu.cr4 |= CR4_OSFXSR;
    for (i, x) in input.xmm.iter().enumerate() {
        cpu.fpu.xmm[i] = x.to_le_bytes();
    }
    cpu.gpr[0] = input.rax;
    cpu.gpr[1] = input.rcx;
    cpu.gpr[2] = input.rdx;
    cpu.gpr[15] = GUEST_BUF + input.r15;
    cpu.fpu.mxcsr = input.mxcsr;
    cpu.flags.set(input.flags);
    let mut dec = Decoder::with_ip(64, bytes, CODE, DecoderOptions::NONE);
    let ins = dec.decode();
    assert!(!ins.is_invalid(), "invalid encoding {bytes:02x?}");
    let op = make_op(&ins, 64);
    cpu.rip = CODE;
    cpu.next_rip = ins.next_ip();
    if let Err(e) = (op.exec)(cpu, &op) {
        panic!("unexpected exception {e:?} for {bytes:02x?} ({ins})");
    }
    let mut out = State {
        rax: cpu.gpr[0],
        rcx: cpu.gpr[1],
        rdx: cpu.gpr[2],
        r15: cpu.gpr[15] - GUEST_BUF,
        mxcsr: cpu.fpu.mxcsr,
        flags: cpu.rflags() & 0x8d5,
        ..State::default()
    };
    for (i, x) in out.xmm.iter_mut().enumerate() {
        *x = u128::from_le_bytes(cpu.fpu.xmm[i]);
    }
    let mut out_buf = [0u8; BUF];
    g.mem.read_slice(&mut out_buf, GuestAddress(GUEST_BUF)).unwrap();
    (out, out_buf)
}

fn check_form(g: &mut Guest, native: &Native, form: &Form, seed: u64, cases: usize) {
    let mut rng = Rng(seed | 1);
    for _ in 0..cases {
        let mut buf = [0u8; BUF];
        let input = random_state(&mut rng, &mut buf);
        let bytes = encode(form, &mut rng);
        let (emu, emu_buf) = emulate(g, &bytes, &input, &buf);
        let mut host = input;
        host.r15 = native.buf as u64 + 128;
        let mut host_buf = buf;
        // SAFETY: the prologue/epilogue restore r15 (XMM, RAX, RCX are caller-saved); the
        // instruction only touches the buffer, through r15, which points into the data page.
        unsafe { native.run(&bytes, &mut host, &mut host_buf) };
        host.r15 -= native.buf as u64;
        host.flags &= 0x8d5;
        let ctx = || format!("{} bytes {bytes:02x?} input {input:x?}", form.name);
        for i in 0..16 {
            assert_eq!(
                emu.xmm[i],
                host.xmm[i],
                "xmm{i} differs: {:#x} vs {:#x}: {}",
                emu.xmm[i],
                host.xmm[i],
                ctx()
            );
        }
        assert_eq!(
            (emu.rax, emu.rcx, emu.rdx),
            (host.rax, host.rcx, host.rdx),
            "rax/rcx/rdx differ: {}",
            ctx()
        );
        assert!(emu_buf == host_buf, "memory differs: {}", ctx());
        assert_eq!(emu.mxcsr, host.mxcsr, "mxcsr differs: {}", ctx());
        assert_eq!(emu.flags, host.flags, "flags differ: {}", ctx());
    }
}

#[test]
fn sse_differential_against_host_cpu() {
    let mut g = Guest::new();
    g.long_mode();
    let native = native();
    let cases: usize = diff_cases();
    let forms = forms();
    for (i, form) in forms.iter().enumerate() {
        check_form(&mut g, &native, form, 0x51e5_3c0d_ee11_0001 ^ (i as u64 * 0x1000_0001), cases);
    }
    eprintln!("sse differential: {} forms x {cases} cases compared", forms.len());
}

/// Runs `bytes` once on the emulator with `[r15]` at `GUEST_BUF + off` and returns the vector
/// of the exception raised, if any.
fn fault_of(g: &mut Guest, bytes: &[u8], off: u64) -> Option<u8> {
    let cpu = g.cpu();
    cpu.gpr[15] = GUEST_BUF + off;
    let mut dec = Decoder::with_ip(64, bytes, CODE, DecoderOptions::NONE);
    let ins = dec.decode();
    let op = make_op(&ins, 64);
    cpu.rip = CODE;
    cpu.next_rip = ins.next_ip();
    (op.exec)(cpu, &op).err().map(|e| e.vector)
}

#[test]
fn sse_fault_rules() {
    let mut g = Guest::new();
    g.long_mode();
    let movaps_load = [0x41, 0x0f, 0x28, 0x07]; // movaps xmm0, [r15]
    let movdqa_store = [0x66, 0x41, 0x0f, 0x7f, 0x07]; // movdqa [r15], xmm0
    let movdqu_load = [0xf3, 0x41, 0x0f, 0x6f, 0x07]; // movdqu xmm0, [r15]
    let pxor_mem = [0x66, 0x41, 0x0f, 0xef, 0x07]; // pxor xmm0, [r15]
    let pxor_reg = [0x66, 0x0f, 0xef, 0xc1]; // pxor xmm0, xmm1
    let cpu = g.cpu();
    cpu.cr4 &= !CR4_OSFXSR;
    assert_eq!(fault_of(&mut g, &pxor_reg, 0), Some(UD), "no CR4.OSFXSR: #UD");
    g.cpu().cr4 |= CR4_OSFXSR;
    g.cpu().cr0 |= CR0_EM;
    assert_eq!(fault_of(&mut g, &pxor_reg, 0), Some(UD), "CR0.EM: #UD");
    g.cpu().cr0 &= !CR0_EM;
    g.cpu().cr0 |= CR0_TS;
    assert_eq!(fault_of(&mut g, &movdqu_load, 0), Some(NM), "CR0.TS: #NM");
    g.cpu().cr0 &= !CR0_TS;
    assert_eq!(fault_of(&mut g, &pxor_reg, 0), None);
    for off in [0, 16, 32] {
        assert_eq!(fault_of(&mut g, &movaps_load, off), None);
        assert_eq!(fault_of(&mut g, &movdqa_store, off), None);
        assert_eq!(fault_of(&mut g, &pxor_mem, off), None);
    }
    for off in [1, 8, 15] {
        assert_eq!(fault_of(&mut g, &movaps_load, off), Some(GP), "misaligned movaps");
        assert_eq!(fault_of(&mut g, &movdqa_store, off), Some(GP), "misaligned movdqa");
        assert_eq!(fault_of(&mut g, &pxor_mem, off), Some(GP), "misaligned pxor m128");
        assert_eq!(fault_of(&mut g, &movdqu_load, off), None, "movdqu is unaligned");
    }
    // A faulting aligned store left memory alone.
    g.write(GUEST_BUF, &[0xaa; 32]);
    g.cpu().fpu.xmm[0] = [0x11; 16];
    assert_eq!(fault_of(&mut g, &movdqa_store, 4), Some(GP));
    let mut back = [0u8; 32];
    g.mem.read_slice(&mut back, GuestAddress(GUEST_BUF)).unwrap();
    assert_eq!(back, [0xaa; 32]);
    // MMX register forms run (sse_mmx.rs, sse_float.rs, ssse3.rs).
    assert_eq!(fault_of(&mut g, &[0x0f, 0xef, 0xc1], 0), None, "pxor mm0, mm1");
    assert_eq!(fault_of(&mut g, &[0x0f, 0x2a, 0xc1], 0), None, "cvtpi2ps xmm0, mm1");
    assert_eq!(fault_of(&mut g, &[0x0f, 0x38, 0x00, 0xc1], 0), None, "pshufb mm0, mm1");
}

#[test]
fn sse_unmasked_exceptions_fault_and_leave_the_destination() {
    let mut g = Guest::new();
    g.long_mode();
    let divss = [0xf3, 0x0f, 0x5e, 0xc1]; // divss xmm0, xmm1
    let one = 1.0f32.to_bits() as u128;
    let cpu = g.cpu();
    cpu.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
    cpu.fpu.xmm[0] = one.to_le_bytes();
    cpu.fpu.xmm[1] = [0; 16];
    cpu.fpu.mxcsr = 0x1f80 & !(1 << 9); // divide-by-zero unmasked
    assert_eq!(fault_of(&mut g, &divss, 0), Some(XM));
    assert_eq!(g.cpu().fpu.xmm[0], one.to_le_bytes(), "destination unchanged");
    assert_eq!(g.cpu().fpu.mxcsr & 0x3f, 1 << 2, "ZE flag set");
    g.cpu().cr4 &= !CR4_OSXMMEXCPT;
    assert_eq!(fault_of(&mut g, &divss, 0), Some(UD), "#UD without CR4.OSXMMEXCPT");
    // Masked: infinity and the sticky flag.
    g.cpu().fpu.mxcsr = 0x1f80;
    assert_eq!(fault_of(&mut g, &divss, 0), None);
    assert_eq!(u32::from_le_bytes(g.cpu().fpu.xmm[0][..4].try_into().unwrap()), f32::INFINITY.to_bits());
    assert_eq!(g.cpu().fpu.mxcsr, 0x1f80 | 1 << 2);
}

#[test]
fn maskmovdqu_against_host_cpu() {
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().cr4 |= CR4_OSFXSR;
    let mut rng = Rng(0x3a5c_0001);
    for case in 0..500 {
        let (data, mut mask) = (rng.xmm(), rng.xmm());
        if case % 5 == 0 {
            mask = 0;
        }
        let mut init = [0u8; 64];
        for b in init.iter_mut() {
            *b = rng.next() as u8;
        }
        let off = rng.below(48) as usize;
        let mut host = init;
        // SAFETY: MASKMOVDQU writes at most 16 bytes at rdi = host[off..], off + 16 <= 64; xmm0/1
        // are declared clobbered.
        unsafe {
            std::arch::asm!(
                "movdqu xmm0, [{d}]",
                "movdqu xmm1, [{m}]",
                "maskmovdqu xmm0, xmm1",
                d = in(reg) &data,
                m = in(reg) &mask,
                in("rdi") host.as_mut_ptr().add(off),
                out("xmm0") _,
                out("xmm1") _,
            );
        }
        g.write(GUEST_BUF, &init);
        let cpu = g.cpu();
        cpu.fpu.xmm[3] = data.to_le_bytes();
        cpu.fpu.xmm[12] = mask.to_le_bytes();
        cpu.gpr[7] = GUEST_BUF + off as u64;
        // maskmovdqu xmm3, xmm12
        let bytes = [0x66, 0x41, 0x0f, 0xf7, 0xdc];
        let mut dec = Decoder::with_ip(64, &bytes, CODE, DecoderOptions::NONE);
        let ins = dec.decode();
        let op = make_op(&ins, 64);
        assert_eq!((op.exec)(cpu, &op).err().map(|e| e.vector), None);
        let mut emu = [0u8; 64];
        g.mem.read_slice(&mut emu, GuestAddress(GUEST_BUF)).unwrap();
        assert_eq!(emu, host, "data {data:#x} mask {mask:#x} off {off}");
    }
}

#[test]
fn maskmovq_against_host_cpu() {
    let mut g = Guest::new();
    g.long_mode();
    let mut rng = Rng(0x3a5c_0002);
    for case in 0..300 {
        let (data, mut mask) = (rng.next(), rng.next());
        if case % 5 == 0 {
            mask = 0;
        }
        let mut init = [0u8; 32];
        for b in init.iter_mut() {
            *b = rng.next() as u8;
        }
        let off = rng.below(24) as usize;
        let mut host = init;
        // SAFETY: MASKMOVQ writes at most 8 bytes at rdi = host[off..], off + 8 <= 32; mm0/mm1
        // are declared clobbered and EMMS leaves the x87 tags empty again.
        unsafe {
            std::arch::asm!(
                "movq mm0, [{d}]",
                "movq mm1, [{m}]",
                "maskmovq mm0, mm1",
                "emms",
                d = in(reg) &data,
                m = in(reg) &mask,
                in("rdi") host.as_mut_ptr().add(off),
                out("mm0") _,
                out("mm1") _,
            );
        }
        g.write(GUEST_BUF, &init);
        let cpu = g.cpu();
        cpu.fpu.fsw = 0;
        cpu.fpu.fpr[2][..8].copy_from_slice(&data.to_le_bytes());
        cpu.fpu.fpr[7][..8].copy_from_slice(&mask.to_le_bytes());
        cpu.gpr[7] = GUEST_BUF + off as u64;
        assert_eq!(fault_of(&mut g, &[0x0f, 0xf7, 0xd7], 0), None, "maskmovq mm2, mm7");
        let mut emu = [0u8; 32];
        g.mem.read_slice(&mut emu, GuestAddress(GUEST_BUF)).unwrap();
        assert_eq!(emu, host, "data {data:#x} mask {mask:#x} off {off}");
    }
}

#[test]
fn movq2dq_and_movdq2q() {
    let mut g = Guest::new();
    g.long_mode();
    let cpu = g.cpu();
    cpu.cr4 |= CR4_OSFXSR;
    cpu.fpu.fsw = 3 << 11; // TOP 3: MM1 is ST(6) until the MMX transition
    cpu.fpu.fpr[6][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0x12, 0x34]);
    cpu.fpu.xmm[3] = [0xee; 16];
    cpu.fpu.xmm[5] = u128::to_le_bytes(0x1111_2222_3333_4444_5555_6666_7777_8888);
    assert_eq!(fault_of(&mut g, &[0xf3, 0x0f, 0xd6, 0xd9], 0), None, "movq2dq xmm3, mm1");
    let f = g.cpu().fpu;
    assert_eq!(u128::from_le_bytes(f.xmm[3]), 0x0807_0605_0403_0201);
    assert_eq!((f.fsw >> 11 & 7, f.ftwx), (0, 0xff), "MMX state: TOP 0, all valid");
    assert_eq!(fault_of(&mut g, &[0xf2, 0x0f, 0xd6, 0xd5], 0), None, "movdq2q mm2, xmm5");
    let f = g.cpu().fpu;
    assert_eq!(&f.fpr[2][..10], &[0x88, 0x88, 0x77, 0x77, 0x66, 0x66, 0x55, 0x55, 0xff, 0xff]);
    g.cpu().cr4 &= !CR4_OSFXSR;
    assert_eq!(fault_of(&mut g, &[0xf2, 0x0f, 0xd6, 0xd5], 0), Some(UD), "SSE2 form needs OSFXSR");
    assert_eq!(fault_of(&mut g, &[0x0f, 0xfc, 0xc1], 0), None, "paddb mm0, mm1 does not");
    g.cpu().cr0 |= CR0_EM;
    assert_eq!(fault_of(&mut g, &[0x0f, 0xfc, 0xc1], 0), Some(UD), "MMX with CR0.EM: #UD");
    g.cpu().cr0 &= !CR0_EM;
    g.cpu().cr0 |= CR0_TS;
    assert_eq!(fault_of(&mut g, &[0x0f, 0xfc, 0xc1], 0), Some(NM), "MMX with CR0.TS: #NM");
}

/// The x86-64-v2 forms: which memory operands must be aligned, and #UD for each extension the
/// guest's CPUID does not advertise (one at a time, so each form is tied to its own bit).
#[test]
fn v2_fault_rules() {
    use vmr_emu::cpuid::{default_cpuid, Isa, CX16, POPCNT, SSE3, SSE41, SSE42, SSSE3};
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().cr4 |= CR4_OSFXSR;
    let aligned: [(&[u8], &str); 6] = [
        (&[0x66, 0x41, 0x0f, 0x38, 0x00, 0x07], "pshufb xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x38, 0x17, 0x07], "ptest xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x38, 0x2a, 0x07], "movntdqa xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x3a, 0x08, 0x07, 0x04], "roundps xmm0, [r15], 4"),
        (&[0xf3, 0x41, 0x0f, 0x16, 0x07], "movshdup xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x3a, 0x0f, 0x07, 0x03], "palignr xmm0, [r15], 3"),
    ];
    let unaligned: [(&[u8], &str); 6] = [
        (&[0x66, 0x41, 0x0f, 0x3a, 0x63, 0x07, 0x0c], "pcmpistri xmm0, [r15], 0x0c"),
        (&[0x66, 0x41, 0x0f, 0x3a, 0x61, 0x07, 0x00], "pcmpestri xmm0, [r15], 0"),
        (&[0xf2, 0x41, 0x0f, 0xf0, 0x07], "lddqu xmm0, [r15]"),
        (&[0xf2, 0x41, 0x0f, 0x12, 0x07], "movddup xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x38, 0x30, 0x07], "pmovzxbw xmm0, [r15]"),
        (&[0x66, 0x41, 0x0f, 0x3a, 0x0a, 0x07, 0x04], "roundss xmm0, [r15], 4"),
    ];
    g.write(GUEST_BUF, &[0x11; 64]);
    for off in [0, 16] {
        for (b, name) in aligned.iter().chain(unaligned.iter()) {
            assert_eq!(fault_of(&mut g, b, off), None, "{name} at {off}");
        }
    }
    for off in [1, 8, 15] {
        for (b, name) in aligned {
            assert_eq!(fault_of(&mut g, b, off), Some(GP), "misaligned {name}");
        }
        for (b, name) in unaligned {
            assert_eq!(fault_of(&mut g, b, off), None, "{name} need not be aligned");
        }
    }
    // Each form with its feature bit: runs when advertised, #UD when not.
    let forms: [(&[u8], u32, &str); 12] = [
        (&[0xf2, 0x0f, 0x12, 0xc1], SSE3, "movddup xmm0, xmm1"),
        (&[0xf2, 0x0f, 0x7c, 0xc1], SSE3, "haddps xmm0, xmm1"),
        (&[0x66, 0x0f, 0x38, 0x00, 0xc1], SSSE3, "pshufb xmm0, xmm1"),
        (&[0x0f, 0x38, 0x1c, 0xc1], SSSE3, "pabsb mm0, mm1"),
        (&[0x66, 0x0f, 0x38, 0x17, 0xc1], SSE41, "ptest xmm0, xmm1"),
        (&[0x66, 0x0f, 0x3a, 0x40, 0xc1, 0xff], SSE41, "dpps xmm0, xmm1, 0xff"),
        (&[0x66, 0x0f, 0x3a, 0x63, 0xc1, 0x00], SSE42, "pcmpistri xmm0, xmm1, 0"),
        (&[0xf2, 0x0f, 0x38, 0xf1, 0xc1], SSE42, "crc32 eax, ecx"),
        (&[0x66, 0x0f, 0x38, 0x37, 0xc1], SSE42, "pcmpgtq xmm0, xmm1"),
        (&[0xf3, 0x48, 0x0f, 0xb8, 0xc1], POPCNT, "popcnt rax, rcx"),
        (&[0x49, 0x0f, 0xc7, 0x0f], CX16, "cmpxchg16b [r15]"),
        (&[0x9f], Isa::LAHF64, "lahf (64-bit mode)"),
    ];
    for (b, feature, name) in forms {
        let mut table = default_cpuid();
        g.cpu().set_cpuid(table.clone());
        g.cpu().fpu.fsw = 0;
        assert_eq!(fault_of(&mut g, b, 0), None, "{name} with its feature");
        for e in table.iter_mut().filter(|e| e.function == 1) {
            e.ecx &= !feature;
        }
        for e in table.iter_mut().filter(|e| e.function == 0x8000_0001 && feature == Isa::LAHF64) {
            e.ecx &= !1;
        }
        g.cpu().set_cpuid(table);
        assert_eq!(fault_of(&mut g, b, 0), Some(UD), "{name} without its feature");
        // The other features' forms are unaffected.
        if feature != SSE3 {
            assert_eq!(fault_of(&mut g, &[0xf2, 0x0f, 0x12, 0xc1], 0), None, "movddup without {name}'s bit");
        }
    }
    // LAHF/SAHF outside 64-bit mode need no CPUID bit.
    let mut table = default_cpuid();
    table.iter_mut().filter(|e| e.function == 0x8000_0001).for_each(|e| e.ecx = 0);
    g.cpu().set_cpuid(table);
    g.protected_mode_flat(0x6800);
    let cpu = g.cpu();
    for b in [[0x9fu8], [0x9e]] {
        let ins = Decoder::with_ip(32, &b, CODE, DecoderOptions::NONE).decode();
        let op = make_op(&ins, 32);
        cpu.next_rip = ins.next_ip();
        assert_eq!((op.exec)(cpu, &op).err().map(|e| e.vector), None, "{ins} in 32-bit mode");
    }
}
