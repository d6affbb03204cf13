//! Differential tests of the x87 instructions against the host CPU: a random x87 state (FCW
//! with random precision, rounding and exception masks, TOP, C0-C3, sticky flags, tags, and
//! registers holding normals, denormals, pseudo-denormals, unnormals, zeros, infinities, NaNs)
//! and a random memory operand at `[r15 + disp8]`; the instruction runs natively and on the
//! emulator, and the FCW, FSW, abridged tags, the eight registers, RFLAGS and the buffer must
//! match. On the emulator the state goes in with the guest's FXRSTOR and comes out with its
//! FXSAVE, so every case also checks those. Plus the #NM and #MF rules.

mod common;
// Not in `common`: it needs libc, which the fuzz target (also using `common`) does not have.
#[path = "common/native.rs"]
mod native;

use common::*;
use iced_x86::{Decoder, DecoderOptions};
use native::Native;
use vmr_emu::cpu::{CR0_EM, CR0_MP, CR0_NE, CR0_TS, CR4_OSFXSR, MF, NM};
use vmr_emu::decode::make_op;
use vmr_emu::StopReason;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

const BUF: usize = 512;
const R15_OFF: u64 = 256;
const GUEST_BUF: u64 = 0x20000;
/// Where the emulator's FXRSTOR/FXSAVE image lives.
const IMG_GPA: u64 = 0x30000;

/// The native function's argument: guest image in/out, the host's own save area, RFLAGS.
#[repr(C, align(16))]
struct State {
    img: [u8; 512],
    host: [u8; 512],
    flags: u64,
    r15: u64,
    rax: u64,
}

impl Rng {
    /// An 80-bit value (mantissa, sign/exponent) of every class the FPU distinguishes.
    fn f80(&mut self) -> (u64, u16) {
        let sign = (self.below(2) as u16) << 15;
        let j = 1u64 << 63;
        let frac = self.next() >> 1;
        let (m, e) = match self.below(12) {
            0 => (0, 0),
            1 => (j, 0x7fff),
            2 => (j | frac | 1, 0x7fff),         // NaN (quiet or signalling)
            3 => (j | (1 << 62) | frac, 0x7fff), // QNaN
            4 => (frac | 1, 0),                  // denormal
            5 => (j | frac, 0),                  // pseudo-denormal
            6 => (frac, 1 + self.below(0x7ffe) as u16), // unnormal / pseudo-zero
            7 => {
                let v = self.below(4001) as f64 - 2000.0;
                return f64_to_f80(v / [1.0, 4.0, 3.0, 10.0][self.below(4) as usize]);
            }
            8 => {
                return f64_to_f80(f64::from_bits(
                    self.next() & !(0x7ff << 52) | (self.below(0x7fe) + 1) << 52,
                ))
            }
            9 => (j | frac, [1, 2, 0x7ffe, 0x7ffd, 0x3fff, 0x403e][self.below(6) as usize]),
            _ => (j | frac, 0x3fbf + self.below(0x80) as u16),
        };
        (m, e | sign)
    }
    fn f80_bytes(&mut self) -> [u8; 10] {
        let (m, e) = self.f80();
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&m.to_le_bytes());
        b[8..].copy_from_slice(&e.to_le_bytes());
        b
    }
    fn int(&mut self, bits: u32) -> u64 {
        let edge = [0u64, 1, u64::MAX, 1 << (bits - 1), (1 << (bits - 1)) - 1, (1 << (bits - 1)) + 1];
        match self.below(4) {
            0 => edge[self.below(6) as usize],
            1 => (self.below(2001) as i64 - 1000) as u64,
            _ => self.next(),
        }
    }
    fn f64_bits(&mut self) -> u64 {
        match self.below(5) {
            0 => [
                0,
                1 << 63,
                0x7ff << 52,
                0xfff << 52,
                0x7ff8 << 48,
                0x7ff0_0000_0000_0001,
                1,
                0x000f_ffff_ffff_ffff,
            ][self.below(8) as usize],
            1 => ((self.below(2001) as f64 - 1000.0) / 8.0).to_bits(),
            _ => self.next(),
        }
    }
    fn f32_bits(&mut self) -> u32 {
        match self.below(5) {
            0 => [0, 1 << 31, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 1, 0x007f_ffff]
                [self.below(8) as usize],
            1 => ((self.below(2001) as f32 - 1000.0) / 8.0).to_bits(),
            _ => self.next() as u32,
        }
    }
}

/// A normal or zero f64 as an 80-bit value.
fn f64_to_f80(v: f64) -> (u64, u16) {
    let b = v.to_bits();
    let sign = ((b >> 63) as u16) << 15;
    let e = (b >> 52) & 0x7ff;
    if e == 0 {
        return (0, sign);
    }
    ((1 << 63) | (b & ((1 << 52) - 1)) << 11, sign | (e as u16 + 16383 - 1023))
}

/// What the memory operand holds.
#[derive(Clone, Copy, PartialEq)]
enum Data {
    F32,
    F64,
    F80,
    I16,
    I32,
    I64,
    Bcd,
    /// FLDENV/FRSTOR images (28/108 bytes), FNSTENV/FNSAVE targets.
    Env,
    Save,
    /// The same with an operand-size prefix: the 14/94-byte layouts.
    Env16,
    Save16,
    /// FLDCW source, FNSTCW/FNSTSW targets.
    Cw,
}

#[derive(Clone, Copy)]
enum Enc {
    /// `opcode modrm`.
    Fixed(u8),
    /// `opcode base+i`, i random.
    Sti(u8),
    /// `opcode /reg` with the memory operand `[r15 + disp8]`.
    Mem(u8, Data),
    /// An MMX form `0F opcode /r`.
    Mmx(Mmx),
}

/// What the ModRM fields of an MMX form name.
#[derive(Clone, Copy, PartialEq)]
enum MReg {
    Mm,
    /// RAX.
    Gpr,
    Digit(u8),
}

#[derive(Clone, Copy, PartialEq)]
enum MRm {
    MmOrMem,
    MmOnly,
    GprOrMem,
    MemOnly,
}

#[derive(Clone, Copy)]
struct Mmx {
    reg: MReg,
    rm: MRm,
    imm: bool,
    rex_w: bool,
    /// Mandatory prefix (0x66) or 0.
    pfx: u8,
    /// A 16-byte memory operand that must be aligned.
    align: bool,
    /// The second opcode byte of the three-byte maps (0x38, 0x3a) or 0.
    esc: u8,
}

struct Form {
    name: &'static str,
    opcode: u8,
    enc: Enc,
}

fn forms() -> Vec<Form> {
    use Data::*;
    use Enc::*;
    let mut v = Vec::new();
    let mut add = |name: &'static str, opcode: u8, enc: Enc| v.push(Form { name, opcode, enc });
    const ARITH: [&str; 8] = ["add", "mul", "com", "comp", "sub", "subr", "div", "divr"];
    for (r, n) in ARITH.iter().enumerate() {
        let r = r as u8;
        add(Box::leak(format!("f{n} m32fp").into_boxed_str()), 0xd8, Mem(r, F32));
        add(Box::leak(format!("f{n} m64fp").into_boxed_str()), 0xdc, Mem(r, F64));
        add(Box::leak(format!("fi{n} m32int").into_boxed_str()), 0xda, Mem(r, I32));
        add(Box::leak(format!("fi{n} m16int").into_boxed_str()), 0xde, Mem(r, I16));
        add(Box::leak(format!("D8 group {r} st(i)").into_boxed_str()), 0xd8, Sti(0xc0 + 8 * r));
        add(Box::leak(format!("DC group {r} st(i)").into_boxed_str()), 0xdc, Sti(0xc0 + 8 * r));
    }
    for (name, op, r) in [("faddp", 0xde, 0u8), ("fmulp", 0xde, 1), ("fcomp5", 0xde, 2), ("fsubrp", 0xde, 4)]
    {
        add(name, op, Sti(0xc0 + 8 * r));
    }
    for (name, r) in [("fsubp", 5u8), ("fdivrp", 6), ("fdivp", 7)] {
        add(name, 0xde, Sti(0xc0 + 8 * r));
    }
    add("fcompp", 0xde, Fixed(0xd9));
    let loads_stores = [
        ("fld m32", 0xd9, 0, F32),
        ("fst m32", 0xd9, 2, F32),
        ("fstp m32", 0xd9, 3, F32),
        ("fld m64", 0xdd, 0, F64),
        ("fst m64", 0xdd, 2, F64),
        ("fstp m64", 0xdd, 3, F64),
        ("fld m80", 0xdb, 5, F80),
        ("fstp m80", 0xdb, 7, F80),
        ("fild m16", 0xdf, 0, I16),
        ("fild m32", 0xdb, 0, I32),
        ("fild m64", 0xdf, 5, I64),
        ("fist m16", 0xdf, 2, I16),
        ("fist m32", 0xdb, 2, I32),
        ("fistp m16", 0xdf, 3, I16),
        ("fistp m32", 0xdb, 3, I32),
        ("fistp m64", 0xdf, 7, I64),
        ("fisttp m16", 0xdf, 1, I16),
        ("fisttp m32", 0xdb, 1, I32),
        ("fisttp m64", 0xdd, 1, I64),
        ("fbld", 0xdf, 4, Bcd),
        ("fbstp", 0xdf, 6, Bcd),
        ("fldenv", 0xd9, 4, Env),
        ("fnstenv", 0xd9, 6, Env),
        ("frstor", 0xdd, 4, Save),
        ("fnsave", 0xdd, 6, Save),
        ("fldenv o16", 0xd9, 4, Env16),
        ("fnstenv o16", 0xd9, 6, Env16),
        ("frstor o16", 0xdd, 4, Save16),
        ("fnsave o16", 0xdd, 6, Save16),
        ("fldcw", 0xd9, 5, Cw),
        ("fnstcw", 0xd9, 7, Cw),
        ("fnstsw m16", 0xdd, 7, Cw),
    ];
    for (name, op, r, d) in loads_stores {
        add(name, op, Mem(r, d));
    }
    for (name, op, base) in [
        ("fld st(i)", 0xd9, 0xc0),
        ("fxch", 0xd9, 0xc8),
        ("fstp1 alias", 0xd9, 0xd8),
        ("fcmovb", 0xda, 0xc0),
        ("fcmove", 0xda, 0xc8),
        ("fcmovbe", 0xda, 0xd0),
        ("fcmovu", 0xda, 0xd8),
        ("fcmovnb", 0xdb, 0xc0),
        ("fcmovne", 0xdb, 0xc8),
        ("fcmovnbe", 0xdb, 0xd0),
        ("fcmovnu", 0xdb, 0xd8),
        ("fucomi", 0xdb, 0xe8),
        ("fcomi", 0xdb, 0xf0),
        ("ffree", 0xdd, 0xc0),
        ("fxch4 alias", 0xdd, 0xc8),
        ("fst st(i)", 0xdd, 0xd0),
        ("fstp st(i)", 0xdd, 0xd8),
        ("fucom", 0xdd, 0xe0),
        ("fucomp", 0xdd, 0xe8),
        ("ffreep", 0xdf, 0xc0),
        ("fxch7 alias", 0xdf, 0xc8),
        ("fstp8 alias", 0xdf, 0xd0),
        ("fstp9 alias", 0xdf, 0xd8),
        ("fucomip", 0xdf, 0xe8),
        ("fcomip", 0xdf, 0xf0),
    ] {
        add(name, op, Sti(base));
    }
    let d9 = [
        ("fnop", 0xd0),
        ("fchs", 0xe0),
        ("fabs", 0xe1),
        ("ftst", 0xe4),
        ("fxam", 0xe5),
        ("fld1", 0xe8),
        ("fldl2t", 0xe9),
        ("fldl2e", 0xea),
        ("fldpi", 0xeb),
        ("fldlg2", 0xec),
        ("fldln2", 0xed),
        ("fldz", 0xee),
        ("f2xm1", 0xf0),
        ("fyl2x", 0xf1),
        ("fptan", 0xf2),
        ("fpatan", 0xf3),
        ("fxtract", 0xf4),
        ("fprem1", 0xf5),
        ("fdecstp", 0xf6),
        ("fincstp", 0xf7),
        ("fprem", 0xf8),
        ("fyl2xp1", 0xf9),
        ("fsqrt", 0xfa),
        ("fsincos", 0xfb),
        ("frndint", 0xfc),
        ("fscale", 0xfd),
        ("fsin", 0xfe),
        ("fcos", 0xff),
    ];
    for (name, m) in d9 {
        add(name, 0xd9, Fixed(m));
    }
    add("fucompp", 0xda, Fixed(0xe9));
    add("fnclex", 0xdb, Fixed(0xe2));
    add("fninit", 0xdb, Fixed(0xe3));
    add("fneni", 0xdb, Fixed(0xe0));
    add("fndisi", 0xdb, Fixed(0xe1));
    add("fnsetpm", 0xdb, Fixed(0xe4));
    add("emms", 0x0f, Fixed(0x77));
    v.extend(mmx_forms());
    v
}

fn mmx_forms() -> Vec<Form> {
    let mut v = Vec::new();
    let mut add = |name: &'static str, opcode: u8, reg: MReg, rm: MRm, imm: bool, rex_w: bool| {
        v.push(Form {
            name,
            opcode,
            enc: Enc::Mmx(Mmx { reg, rm, imm, rex_w, pfx: 0, align: false, esc: 0 }),
        })
    };
    use MReg::*;
    use MRm::*;
    let binary = [
        ("punpcklbw", 0x60),
        ("punpcklwd", 0x61),
        ("punpckldq", 0x62),
        ("packsswb", 0x63),
        ("pcmpgtb", 0x64),
        ("pcmpgtw", 0x65),
        ("pcmpgtd", 0x66),
        ("packuswb", 0x67),
        ("punpckhbw", 0x68),
        ("punpckhwd", 0x69),
        ("punpckhdq", 0x6a),
        ("packssdw", 0x6b),
        ("pcmpeqb", 0x74),
        ("pcmpeqw", 0x75),
        ("pcmpeqd", 0x76),
        ("psrlw", 0xd1),
        ("psrld", 0xd2),
        ("psrlq", 0xd3),
        ("paddq", 0xd4),
        ("pmullw", 0xd5),
        ("psubusb", 0xd8),
        ("psubusw", 0xd9),
        ("pminub", 0xda),
        ("pand", 0xdb),
        ("paddusb", 0xdc),
        ("paddusw", 0xdd),
        ("pmaxub", 0xde),
        ("pandn", 0xdf),
        ("pavgb", 0xe0),
        ("psraw", 0xe1),
        ("psrad", 0xe2),
        ("pavgw", 0xe3),
        ("pmulhuw", 0xe4),
        ("pmulhw", 0xe5),
        ("psubsb", 0xe8),
        ("psubsw", 0xe9),
        ("pminsw", 0xea),
        ("por", 0xeb),
        ("paddsb", 0xec),
        ("paddsw", 0xed),
        ("pmaxsw", 0xee),
        ("pxor", 0xef),
        ("psllw", 0xf1),
        ("pslld", 0xf2),
        ("psllq", 0xf3),
        ("pmuludq", 0xf4),
        ("pmaddwd", 0xf5),
        ("psadbw", 0xf6),
        ("psubb", 0xf8),
        ("psubw", 0xf9),
        ("psubd", 0xfa),
        ("psubq", 0xfb),
        ("paddb", 0xfc),
        ("paddw", 0xfd),
        ("paddd", 0xfe),
    ];
    for (name, op) in binary {
        add(name, op, Mm, MmOrMem, false, false);
    }
    add("movd mm, r/m32", 0x6e, Mm, GprOrMem, false, false);
    add("movq mm, r/m64", 0x6e, Mm, GprOrMem, false, true);
    add("movd r/m32, mm", 0x7e, Mm, GprOrMem, false, false);
    add("movq r/m64, mm", 0x7e, Mm, GprOrMem, false, true);
    add("movq mm, mm/m64", 0x6f, Mm, MmOrMem, false, false);
    add("movq mm/m64, mm", 0x7f, Mm, MmOrMem, false, false);
    add("movntq", 0xe7, Mm, MemOnly, false, false);
    add("pshufw", 0x70, Mm, MmOrMem, true, false);
    add("pmovmskb", 0xd7, Gpr, MmOnly, false, false);
    add("pextrw", 0xc5, Gpr, MmOnly, true, false);
    add("pinsrw", 0xc4, Mm, GprOrMem, true, false);
    for (name, op, d) in [
        ("psrlw imm", 0x71, 2),
        ("psraw imm", 0x71, 4),
        ("psllw imm", 0x71, 6),
        ("psrld imm", 0x72, 2),
        ("psrad imm", 0x72, 4),
        ("pslld imm", 0x72, 6),
        ("psrlq imm", 0x73, 2),
        ("psllq imm", 0x73, 6),
    ] {
        add(name, op, Digit(d), MmOnly, true, false);
    }
    // The SSE conversions between MM and XMM registers (reg and rm are register numbers 0-7).
    for (name, pfx, op, align) in [
        ("cvtpi2ps", 0, 0x2a, false),
        ("cvtps2pi", 0, 0x2d, false),
        ("cvttps2pi", 0, 0x2c, false),
        ("cvtpi2pd", 0x66, 0x2a, false),
        ("cvtpd2pi", 0x66, 0x2d, true),
        ("cvttpd2pi", 0x66, 0x2c, true),
    ] {
        let enc = Enc::Mmx(Mmx { reg: Mm, rm: MmOrMem, imm: false, rex_w: false, pfx, align, esc: 0 });
        v.push(Form { name, opcode: op, enc });
    }
    // SSSE3 on MM registers (0F 38 xx, PALIGNR 0F 3A 0F ib).
    for (name, op) in [
        ("pshufb mm", 0x00),
        ("phaddw mm", 0x01),
        ("phaddd mm", 0x02),
        ("phaddsw mm", 0x03),
        ("pmaddubsw mm", 0x04),
        ("phsubw mm", 0x05),
        ("phsubd mm", 0x06),
        ("phsubsw mm", 0x07),
        ("psignb mm", 0x08),
        ("psignw mm", 0x09),
        ("psignd mm", 0x0a),
        ("pmulhrsw mm", 0x0b),
        ("pabsb mm", 0x1c),
        ("pabsw mm", 0x1d),
        ("pabsd mm", 0x1e),
    ] {
        let enc =
            Enc::Mmx(Mmx { reg: Mm, rm: MmOrMem, imm: false, rex_w: false, pfx: 0, align: false, esc: 0x38 });
        v.push(Form { name, opcode: op, enc });
    }
    let enc =
        Enc::Mmx(Mmx { reg: Mm, rm: MmOrMem, imm: true, rex_w: false, pfx: 0, align: false, esc: 0x3a });
    v.push(Form { name: "palignr mm", opcode: 0x0f, enc });
    v
}

/// The native side: saves the host FPU/SSE state, loads the guest image, RFLAGS, R15 and RAX
/// from a `State`, and stores them back.
fn native() -> Native {
    let prologue = vec![
        0x41, 0x57, // push r15
        0x48, 0x0f, 0xae, 0x87, 0x00, 0x02, 0x00, 0x00, // fxsave64 [rdi+512]
        0x48, 0x0f, 0xae, 0x0f, // fxrstor64 [rdi]
        0xff, 0xb7, 0x00, 0x04, 0x00, 0x00, // push qword [rdi+1024]
        0x9d, // popfq
        0x4c, 0x8b, 0xbf, 0x08, 0x04, 0x00, 0x00, // mov r15, [rdi+1032]
        0x48, 0x8b, 0x87, 0x10, 0x04, 0x00, 0x00, // mov rax, [rdi+1040]
    ];
    let epilogue = vec![
        0x48, 0x89, 0x87, 0x10, 0x04, 0x00, 0x00, // mov [rdi+1040], rax
        0x9c, // pushfq
        0x8f, 0x87, 0x00, 0x04, 0x00, 0x00, // pop qword [rdi+1024]
        0x48, 0x0f, 0xae, 0x07, // fxsave64 [rdi]
        0x48, 0x0f, 0xae, 0x8f, 0x00, 0x02, 0x00, 0x00, // fxrstor64 [rdi+512]
        0x41, 0x5f, // pop r15
        0xc3, // ret
    ];
    Native::new(prologue, epilogue)
}

/// Encodes one random instance of `form`; returns the bytes and the buffer offset of the
/// memory operand.
fn encode(form: &Form, rng: &mut Rng) -> (Vec<u8>, usize) {
    match form.enc {
        Enc::Fixed(m) => (vec![form.opcode, m], 0),
        Enc::Sti(base) => (vec![form.opcode, base + rng.below(8) as u8], 0),
        Enc::Mmx(m) => {
            let reg = match m.reg {
                MReg::Mm => rng.below(8) as u8,
                MReg::Gpr => 0,
                MReg::Digit(d) => d,
            };
            let mem = match m.rm {
                MRm::MemOnly => true,
                MRm::MmOnly => false,
                _ => rng.below(2) == 0,
            };
            let rm = if m.rm == MRm::GprOrMem { 0 } else { rng.below(8) as u8 };
            let disp = if m.align { (rng.below(15) as i64 - 8) * 16 } else { rng.below(248) as i64 - 128 };
            let mut b = Vec::new();
            if m.pfx != 0 {
                b.push(m.pfx);
            }
            let rex = 0x40 | if m.rex_w { 8 } else { 0 } | mem as u8;
            if rex != 0x40 {
                b.push(rex);
            }
            b.push(0x0f);
            if m.esc != 0 {
                b.push(m.esc);
            }
            b.push(form.opcode);
            if mem {
                b.extend([0x47 | (reg << 3), disp as i8 as u8]);
            } else {
                b.push(0xc0 | (reg << 3) | rm);
            }
            if m.imm {
                b.push(if matches!(m.reg, MReg::Digit(_)) { rng.below(72) as u8 } else { rng.next() as u8 });
            }
            (b, (R15_OFF as i64 + disp) as usize)
        }
        Enc::Mem(r, d) => {
            let disp = match d {
                Data::Save | Data::Env | Data::Save16 | Data::Env16 => -(rng.below(129) as i64),
                _ => rng.below(256) as i64 - 128,
            };
            let mut b = vec![0x41, form.opcode, 0x47 | (r << 3), disp as i8 as u8];
            if matches!(d, Data::Env16 | Data::Save16) {
                b.insert(0, 0x66);
            }
            (b, (R15_OFF as i64 + disp) as usize)
        }
    }
}

fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    buf[at..at + v.len()].copy_from_slice(v);
}

/// Fills the memory operand with a value of its type.
fn fill_operand(rng: &mut Rng, d: Data, buf: &mut [u8; BUF], at: usize) {
    match d {
        Data::F32 => put(buf, at, &rng.f32_bits().to_le_bytes()),
        Data::F64 => put(buf, at, &rng.f64_bits().to_le_bytes()),
        Data::F80 => put(buf, at, &rng.f80_bytes()),
        Data::I16 => put(buf, at, &(rng.int(16) as u16).to_le_bytes()),
        Data::I32 => put(buf, at, &(rng.int(32) as u32).to_le_bytes()),
        Data::I64 => put(buf, at, &rng.int(64).to_le_bytes()),
        Data::Bcd => {
            let mut b = [0u8; 10];
            for x in b.iter_mut().take(9) {
                *x = if rng.below(8) == 0 {
                    rng.next() as u8
                } else {
                    (rng.below(10) * 16 + rng.below(10)) as u8
                };
            }
            b[9] = if rng.below(2) == 0 { 0x80 } else { 0 };
            put(buf, at, &b);
        }
        Data::Cw => put(buf, at, &(rng.next() as u16).to_le_bytes()),
        Data::Env | Data::Save | Data::Env16 | Data::Save16 => {
            let (step, len) = if matches!(d, Data::Env | Data::Save) { (4, 28) } else { (2, 14) };
            let words = [rng.next() as u16 & 0x1f7f | 0x40, rng.next() as u16, rng.next() as u16];
            for (i, w) in words.iter().enumerate() {
                put(buf, at + step * i, &w.to_le_bytes());
            }
            for i in 0..8 {
                let v = rng.f80_bytes();
                put(buf, at + len + 10 * i, &v);
            }
        }
    }
}

/// A random x87 state as an FXSAVE image, with no unmasked exception pending.
fn random_image(rng: &mut Rng) -> [u8; 512] {
    let mut img = [0u8; 512];
    let masks = if rng.below(3) == 0 { 0x3f } else { rng.next() as u16 & 0x3f };
    let pc = [0u16, 2, 3][rng.below(3) as usize];
    let fcw = masks | 0x40 | pc << 8 | (rng.below(4) as u16) << 10;
    let mut flags = rng.next() as u16 & masks & 0x3f;
    if flags & 1 != 0 && rng.below(2) == 0 {
        flags |= 0x40;
    }
    let fsw = flags | (rng.next() as u16 & 0x4700) | (rng.below(8) as u16) << 11;
    let tags = match rng.below(4) {
        0 => 0,
        1 => 0xff,
        _ => rng.next() as u8,
    };
    img[0..2].copy_from_slice(&fcw.to_le_bytes());
    img[2..4].copy_from_slice(&fsw.to_le_bytes());
    img[4] = tags;
    // MXCSR: any rounding mode, FTZ, sticky flags; exceptions masked (the host would trap).
    let mxcsr = 0x1f80 | (rng.next() as u32 & 0xe03f);
    img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    for i in 0..8 {
        let (lo, hi) = if rng.below(2) == 0 {
            let f = |r: &mut Rng| r.f32_bits() as u64 | (r.f32_bits() as u64) << 32;
            (f(rng), f(rng))
        } else {
            (rng.f64_bits(), rng.f64_bits())
        };
        img[160 + 16 * i..168 + 16 * i].copy_from_slice(&lo.to_le_bytes());
        img[168 + 16 * i..176 + 16 * i].copy_from_slice(&hi.to_le_bytes());
    }
    for i in 0..8 {
        let v = rng.f80_bytes();
        img[32 + 16 * i..42 + 16 * i].copy_from_slice(&v);
    }
    img
}

/// Runs `bytes` on the emulator at `CODE` (the x87 handlers re-read the instruction bytes).
fn exec(g: &mut Guest, bytes: &[u8]) -> Option<u8> {
    exec_bits(g, 64, bytes)
}

/// [`exec`] for a CPU in `bitness`-bit mode (CS base + RIP = `CODE`).
fn exec_bits(g: &mut Guest, bitness: u32, bytes: &[u8]) -> Option<u8> {
    g.write(CODE, bytes);
    let rip = CODE - g.cpu().seg[1].base;
    let mut dec = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let ins = dec.decode();
    assert!(!ins.is_invalid(), "invalid encoding {bytes:02x?}");
    let op = make_op(&ins, bitness);
    let cpu = g.cpu();
    cpu.rip = rip;
    cpu.next_rip = ins.next_ip();
    (op.exec)(cpu, &op).err().map(|e| e.vector)
}

const FXRSTOR_RAX: [u8; 4] = [0x48, 0x0f, 0xae, 0x08];
const FXSAVE_RAX: [u8; 4] = [0x48, 0x0f, 0xae, 0x00];

fn emulate(
    g: &mut Guest,
    bytes: &[u8],
    img: &[u8; 512],
    flags: u64,
    rax: u64,
    buf: &[u8; BUF],
) -> ([u8; 512], u64, u64, [u8; BUF]) {
    g.mem.write_slice(buf, GuestAddress(GUEST_BUF)).unwrap();
    g.mem.write_slice(img, GuestAddress(IMG_GPA)).unwrap();
    g.cpu().cr4 |= CR4_OSFXSR;
    g.cpu().gpr[0] = IMG_GPA;
    g.cpu().gpr[15] = GUEST_BUF + R15_OFF;
    g.cpu().flags.set(flags);
    assert_eq!(exec(g, &FXRSTOR_RAX), None, "fxrstor");
    g.cpu().gpr[0] = rax;
    if let Some(v) = exec(g, bytes) {
        panic!("unexpected exception {v} for {bytes:02x?}");
    }
    let rax = g.cpu().gpr[0];
    g.cpu().gpr[0] = IMG_GPA;
    assert_eq!(exec(g, &FXSAVE_RAX), None, "fxsave");
    let mut out = [0u8; 512];
    g.mem.read_slice(&mut out, GuestAddress(IMG_GPA)).unwrap();
    let mut out_buf = [0u8; BUF];
    g.mem.read_slice(&mut out_buf, GuestAddress(GUEST_BUF)).unwrap();
    (out, g.cpu().rflags() & 0x8d5, rax, out_buf)
}

/// FCW, FSW, abridged tags, MXCSR, the eight x87/MM registers and XMM0-7 (FIP/FDP/FOP are
/// not compared).
fn x87_part(img: &[u8; 512]) -> Vec<u8> {
    let mut v = img[0..5].to_vec();
    v.extend_from_slice(&img[24..28]);
    for i in 0..8 {
        v.extend_from_slice(&img[32 + 16 * i..42 + 16 * i]);
    }
    v.extend_from_slice(&img[160..288]);
    v
}

fn check_form(g: &mut Guest, native: &Native, form: &Form, seed: u64, cases: usize) {
    let mut rng = Rng(seed | 1);
    for _ in 0..cases {
        let mut buf = [0u8; BUF];
        for b in buf.iter_mut() {
            *b = rng.next() as u8;
        }
        let img = random_image(&mut rng);
        let flags = 2 | (rng.next() & 0x8d5);
        let (bytes, at) = encode(form, &mut rng);
        if let Enc::Mem(_, d) = form.enc {
            fill_operand(&mut rng, d, &mut buf, at);
        }
        let rax = if rng.below(2) == 0 { rng.next() } else { rng.below(72) };
        let (emu_img, emu_flags, emu_rax, emu_buf) = emulate(g, &bytes, &img, flags, rax, &buf);
        let mut st = State { img, host: [0; 512], flags, r15: native.buf as u64 + R15_OFF, rax };
        let mut host_buf = buf;
        // SAFETY: the prologue/epilogue restore r15 and save and restore the host FPU/SSE
        // state; RFLAGS status bits are caller-saved and DF stays clear. The instruction only
        // touches the buffer, through r15. The loaded image never has an unmasked exception
        // pending and nothing after the instruction waits, so no #MF is raised.
        unsafe { native.run(&bytes, &mut st, &mut host_buf) };
        let ctx = || {
            format!(
                "{} bytes {bytes:02x?} fcw {:02x?} fsw {:02x?} tags {:#x}",
                form.name,
                &img[0..2],
                &img[2..4],
                img[4]
            )
        };
        let (e, h) = (x87_part(&emu_img), x87_part(&st.img));
        assert!(e == h, "x87 state differs:\n emu  {e:02x?}\n host {h:02x?}\n{}", ctx());
        assert_eq!(emu_flags, st.flags & 0x8d5, "rflags differ: {}", ctx());
        assert_eq!(emu_rax, st.rax, "rax differs: {}", ctx());
        let mut eb = emu_buf;
        // FIP, FCS/FOP, FDP, FDS are not modelled bit for bit.
        let ptrs = match form.enc {
            Enc::Mem(_, Data::Env | Data::Save) => 12..28,
            Enc::Mem(_, Data::Env16 | Data::Save16) => 6..14,
            _ => 0..0,
        };
        eb[at + ptrs.start..at + ptrs.end].fill(0);
        host_buf[at + ptrs.start..at + ptrs.end].fill(0);
        assert!(
            eb == host_buf,
            "memory differs: {}\n emu  {:02x?}\n host {:02x?}",
            ctx(),
            &eb[at..at + 28],
            &host_buf[at..at + 28]
        );
    }
}

#[test]
fn x87_differential_against_host_cpu() {
    let mut g = Guest::new();
    g.long_mode();
    let native = native();
    let cases: usize = diff_cases();
    let forms = forms();
    for (i, form) in forms.iter().enumerate() {
        check_form(&mut g, &native, form, 0x87_0f0f_1234_0001 ^ (i as u64 * 0x1000_0001), cases);
    }
    eprintln!("x87 differential: {} forms x {cases} cases compared", forms.len());
}

/// Loads `img` into the emulator's x87 state directly.
fn set_state(g: &mut Guest, fcw: u16, fsw: u16, tags: u8) {
    let f = &mut g.cpu().fpu;
    f.fcw = fcw;
    f.fsw = fsw;
    f.ftwx = tags;
}

#[test]
fn x87_device_not_available() {
    let mut g = Guest::new();
    g.long_mode();
    let fadd = [0xd8, 0xc1]; // fadd st0, st1
    let fld_mem = [0x41, 0xdd, 0x07]; // fld qword [r15]
    let wait = [0x9b];
    g.cpu().gpr[15] = GUEST_BUF;
    set_state(&mut g, 0x37f, 0, 0);
    g.cpu().cr0 |= CR0_TS;
    assert_eq!(exec(&mut g, &fadd), Some(NM), "CR0.TS: #NM");
    assert_eq!(exec(&mut g, &fld_mem), Some(NM));
    assert_eq!(exec(&mut g, &wait), None, "WAIT ignores TS without MP");
    g.cpu().cr0 |= CR0_MP;
    assert_eq!(exec(&mut g, &wait), Some(NM), "WAIT with MP and TS: #NM");
    g.cpu().cr0 &= !(CR0_TS | CR0_MP);
    g.cpu().cr0 |= CR0_EM;
    assert_eq!(exec(&mut g, &fadd), Some(NM), "CR0.EM: #NM");
    assert_eq!(exec(&mut g, &wait), None, "WAIT ignores EM");
    g.cpu().cr0 &= !CR0_EM;
    assert_eq!(g.cpu().fpu.fsw, 0, "state untouched by the faults");
    g.write_u64(GUEST_BUF, 2.5f64.to_bits());
    assert_eq!(exec(&mut g, &fld_mem), None);
    let f = &g.cpu().fpu;
    assert_eq!(f.fsw >> 11 & 7, 7, "TOP decremented");
    assert_eq!(f.ftwx, 0x80, "physical register 7 valid");
    assert_eq!(&f.fpr[0][..10], &[0, 0, 0, 0, 0, 0, 0, 0xa0, 0x00, 0x40], "2.5 as 80 bits");
}

#[test]
fn x87_pending_exception_raises_mf_only_with_cr0_ne() {
    let mut g = Guest::new();
    g.long_mode();
    let fld1 = [0xd9, 0xe8];
    let fldz = [0xd9, 0xee];
    let fdivp = [0xde, 0xf9]; // fdivp st1, st0: 1 / 0
    let fnstsw_mem = [0x41, 0xdd, 0x3f]; // fnstsw [r15]
    let fnclex = [0xdb, 0xe2];
    let wait = [0x9b];
    g.cpu().gpr[15] = GUEST_BUF;
    g.cpu().cr0 |= CR0_NE;
    set_state(&mut g, 0x37f & !(1 << 2), 0, 0); // ZE unmasked
    assert_eq!(exec(&mut g, &fld1), None);
    assert_eq!(exec(&mut g, &fldz), None);
    assert_eq!(exec(&mut g, &fdivp), None, "the faulting instruction completes");
    let fsw = g.cpu().fpu.fsw;
    assert_eq!(fsw & 0x80ff, 0x8084, "ZE, ES and B set: {fsw:#x}");
    assert_eq!(fsw >> 11 & 7, 6, "unmasked ZE: no pop");
    assert_eq!(exec(&mut g, &fld1), Some(MF), "next waiting instruction: #MF");
    assert_eq!(exec(&mut g, &wait), Some(MF), "WAIT: #MF");
    assert_eq!(g.cpu().fpu.fsw, fsw, "#MF left the state alone");
    assert_eq!(exec(&mut g, &fnstsw_mem), None, "FNSTSW does not wait");
    assert_eq!(g.read_u64(GUEST_BUF) as u16, fsw);
    // With CR0.NE clear the pending exception is ignored.
    g.cpu().cr0 &= !CR0_NE;
    assert_eq!(exec(&mut g, &wait), None);
    assert_eq!(exec(&mut g, &fld1), None);
    assert_eq!(g.cpu().fpu.fsw >> 11 & 7, 5);
    g.cpu().cr0 |= CR0_NE;
    assert_eq!(exec(&mut g, &fnclex), None);
    assert_eq!(g.cpu().fpu.fsw & 0x80ff, 0, "FNCLEX clears flags, ES and B");
    assert_eq!(exec(&mut g, &fld1), None);
    // Masked: no ES, the default result, the sticky flag.
    set_state(&mut g, 0x37f, 0, 0);
    assert_eq!(exec(&mut g, &fld1), None);
    assert_eq!(exec(&mut g, &fldz), None);
    assert_eq!(exec(&mut g, &fdivp), None);
    let f = &g.cpu().fpu;
    assert_eq!(f.fsw & 0x80ff, 0x0004);
    assert_eq!(&f.fpr[0][..10], &[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x7f], "+infinity");
}

#[test]
fn x87_stack_overflow_and_underflow() {
    let mut g = Guest::new();
    g.long_mode();
    let fld1 = [0xd9, 0xe8];
    let fadd = [0xd8, 0xc1];
    set_state(&mut g, 0x37f, 0, 0xff); // all registers full
    assert_eq!(exec(&mut g, &fld1), None);
    let f = &g.cpu().fpu;
    assert_eq!(f.fsw & 0x02c1, 0x0241, "IE, SF and C1 (overflow): {:#x}", f.fsw);
    assert_eq!(&f.fpr[0][..10], &[0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff], "QNaN indefinite");
    set_state(&mut g, 0x37f, 0, 0); // all empty
    assert_eq!(exec(&mut g, &fadd), None);
    let f = &g.cpu().fpu;
    assert_eq!(f.fsw & 0x02c1, 0x0041, "IE and SF, C1 clear (underflow): {:#x}", f.fsw);
}

#[test]
fn x87_store_fault_leaves_the_state() {
    let mut g = Guest::new();
    g.long_mode();
    let fstp_mem = [0x41, 0xdd, 0x1f]; // fstp qword [r15]
    let fld1 = [0xd9, 0xe8];
    set_state(&mut g, 0x37f, 0, 0);
    assert_eq!(exec(&mut g, &fld1), None);
    let before = g.cpu().fpu;
    g.cpu().gpr[15] = 0x8000_0000; // not mapped (1 GiB identity map)
    assert_eq!(exec(&mut g, &fstp_mem), Some(vmr_emu::cpu::PF_VEC));
    assert_eq!(g.cpu().fpu, before, "no pop, no flags");
    g.cpu().gpr[15] = GUEST_BUF;
    assert_eq!(exec(&mut g, &fstp_mem), None);
    assert_eq!(g.read_u64(GUEST_BUF), 1.0f64.to_bits());
    assert_eq!(g.cpu().fpu.ftwx, 0, "popped");
}

/// A long-mode program through the engine: the handlers find their instruction bytes at RIP.
#[test]
fn x87_program_runs_in_the_engine() {
    use iced_x86::code_asm::*;
    let mut g = Guest::new();
    g.long_mode();
    g.cpu().cr0 |= CR0_NE | CR0_MP;
    g.write_u64(GUEST_BUF, 3.0f64.to_bits());
    g.write_u64(GUEST_BUF + 8, 7);
    g.asm(64, CODE, |a| {
        a.fninit().unwrap();
        a.mov(rsi, GUEST_BUF).unwrap();
        a.fld(qword_ptr(rsi)).unwrap(); // 3
        a.fild(qword_ptr(rsi + 8)).unwrap(); // 7, 3
        a.fmulp(st1, st0).unwrap(); // 21
        a.fldpi().unwrap();
        a.fcomip(st0, st1).unwrap(); // pi < 21: CF
        a.fsqrt().unwrap(); // sqrt(21)
        a.fld1().unwrap();
        a.faddp(st1, st0).unwrap();
        a.fistp(dword_ptr(rsi + 16)).unwrap(); // round(5.58) = 6
        a.setc(al).unwrap();
        a.movzx(eax, al).unwrap();
        a.out(0xf0, eax).unwrap();
        a.fnstsw(ax).unwrap();
        a.out(0xf1, eax).unwrap();
        a.out(0xf4, al).unwrap();
    });
    assert_eq!(g.run(), StopReason::Kicked);
    assert_eq!(g.port_writes(0xf0), vec![1], "fcomip set CF");
    assert_eq!(g.read_u64(GUEST_BUF + 16) as u32, 6);
    assert_eq!(g.port_writes(0xf1)[0] as u16 & 0x3800, 0, "stack empty again, TOP 0");
    assert_eq!(g.cpu().fpu.ftwx, 0);
}

/// FNSTENV/FLDENV and FNSAVE/FRSTOR round trips in the four layouts (protected/real mode x
/// 16/32-bit operand size); the stored control words sit where the layout puts them.
#[test]
fn x87_environment_round_trips_in_every_layout() {
    // (real mode, 16-bit operand size, FIP/FDP that the layout can hold, FOP kept)
    let layouts = [
        (false, false, 0x1234_5678u64, true),
        (false, true, 0x9abc, false),
        (true, false, 0x0abc_def0, true),
        (true, true, 0xa_bcde, true),
    ];
    for (real, o16, ptr, keeps_fop) in layouts {
        let mut g = Guest::new();
        let bits = if real {
            g.real_mode(0x1000, 0);
            g.cpu().gpr[3] = 0x8000; // [bx]
            16
        } else {
            g.long_mode();
            g.cpu().gpr[15] = GUEST_BUF; // [r15]
            64
        };
        let at = if real { 0x8000 } else { GUEST_BUF };
        let enc = |op: u8, reg: u8| -> Vec<u8> {
            let mut v = if o16 != real { vec![0x66] } else { vec![] };
            v.extend(if real { vec![op, reg << 3 | 7] } else { vec![0x41, op, reg << 3 | 7] });
            v
        };
        let f = &mut g.cpu().fpu;
        f.fcw = 0x0b73;
        f.fsw = 0x3d61 & !0x80; // TOP 7, C3 C2 C0, SF|IE (masked)
        f.ftwx = 0b1011_0101;
        f.last_ip = ptr;
        f.last_dp = ptr ^ 0x1111;
        f.last_opcode = 0x5ab;
        for (i, r) in f.fpr.iter_mut().enumerate() {
            *r = [i as u8 + 1, 0, 0, 0, 0, 0, 0, 0x80 | i as u8, 0xff - i as u8, 0x3f, 0, 0, 0, 0, 0, 0];
        }
        f.fpr[3][..10].fill(0); // a zero and an empty register, tags 01 and 11
        let saved = g.cpu().fpu;
        let ctx = format!("real {real} o16 {o16}");
        let n = if o16 { 14 } else { 28 };
        assert_eq!(exec_bits(&mut g, bits, &enc(0xd9, 6)), None, "fnstenv {ctx}");
        let mut img = [0u8; 108];
        g.mem.read_slice(&mut img, GuestAddress(at)).unwrap();
        let fsw_at = if n == 28 { 4 } else { 2 };
        assert_eq!(u16::from_le_bytes([img[0], img[1]]), 0x0b73, "{ctx}");
        assert_eq!(u16::from_le_bytes([img[fsw_at], img[fsw_at + 1]]), saved.fsw, "{ctx}");
        assert_eq!(g.cpu().fpu.fcw, 0x0b7f, "FNSTENV masks all exceptions");
        assert_eq!(exec_bits(&mut g, bits, &[0xd9, 0xf7]), None, "fincstp {ctx}"); // another TOP
        assert_ne!(g.cpu().fpu.fpr, saved.fpr);
        g.cpu().fpu.ftwx = 0;
        assert_eq!(exec_bits(&mut g, bits, &enc(0xd9, 4)), None, "fldenv {ctx}");
        let f = g.cpu().fpu;
        assert_eq!((f.fcw, f.fsw, f.ftwx), (saved.fcw, saved.fsw, saved.ftwx), "{ctx}");
        assert_eq!((f.last_ip, f.last_dp), (saved.last_ip, saved.last_dp), "{ctx}");
        assert_eq!(f.last_opcode, if keeps_fop { 0x5ab } else { 0 }, "{ctx}");
        assert_eq!(f.fpr, saved.fpr, "registers stay with TOP restored: {ctx}");
        // FNSAVE resets, FRSTOR brings everything back.
        assert_eq!(exec_bits(&mut g, bits, &enc(0xdd, 6)), None, "fnsave {ctx}");
        let f = g.cpu().fpu;
        assert_eq!((f.fcw, f.fsw, f.ftwx), (0x37f, 0, 0), "FNSAVE initialises: {ctx}");
        assert_eq!(exec_bits(&mut g, bits, &enc(0xdd, 4)), None, "frstor {ctx}");
        let f = g.cpu().fpu;
        assert_eq!((f.fcw, f.fsw, f.ftwx, f.fpr), (saved.fcw, saved.fsw, saved.ftwx, saved.fpr), "{ctx}");
        let mut tail = [0u8; 10];
        g.mem.read_slice(&mut tail, GuestAddress(at + n as u64 + 70)).unwrap();
        assert_eq!(&tail[..], &saved.fpr[7][..10], "ST(7) is the last register of the image: {ctx}");
    }
}
