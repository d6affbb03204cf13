//! Differential tests against the host CPU (x86-64 too): each instruction form runs natively
//! (in a generated function in an RWX page: load registers and flags, run, store) and on the
//! emulator, with random seeded operands; registers, defined flags and memory must match.
//!
//! Memory operands are `[r15 + disp8]`; r15 (and rsi/rdi for string forms) point into a
//! buffer whose address differs between host and guest, so those registers are compared
//! relative to the buffer.

mod common;
// Not in `common`: it needs libc, which the fuzz target (also using `common`) does not have.
#[path = "common/native.rs"]
mod native;

use common::*;
use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions};
use native::Native;
use vmr_emu::cpu::DE;
use vmr_emu::decode::make_op;
use vmr_emu::flags::{AF, ARITH, CF, DF, OF, PF, SF, ZF};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

const BUF: usize = 256;
const GUEST_BUF: u64 = 0x20000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct State {
    regs: [u64; 16],
    flags: u64,
}

impl Rng {
    /// Random operand value biased towards edge cases.
    fn value(&mut self) -> u64 {
        const EDGE: [u64; 14] = [
            0,
            1,
            u64::MAX,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ];
        match self.below(8) {
            0 | 1 => EDGE[self.below(EDGE.len() as u64) as usize] ^ (self.below(2) * self.below(4)),
            2 => self.below(256),
            _ => self.next(),
        }
    }
}

/// The native side: general registers and RFLAGS loaded from and stored to a `State`.
fn native() -> Native {
    let regs = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
    let mut a = CodeAssembler::new(64).unwrap();
    for r in [rbx, rbp, r12, r13, r14, r15, rdi] {
        a.push(r).unwrap();
    }
    a.push(qword_ptr(rdi + 128)).unwrap();
    a.popfq().unwrap();
    for (i, r) in regs.iter().enumerate() {
        if i != 4 && i != 7 {
            a.mov(*r, qword_ptr(rdi + 8 * i as i32)).unwrap();
        }
    }
    a.mov(rdi, qword_ptr(rdi + 56)).unwrap();
    let prologue = a.assemble(0).unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    a.pushfq().unwrap();
    a.xchg(qword_ptr(rsp + 8), rdi).unwrap();
    a.pop(qword_ptr(rdi + 128)).unwrap();
    a.cld().unwrap();
    for (i, r) in regs.iter().enumerate() {
        if i != 4 && i != 7 {
            a.mov(qword_ptr(rdi + 8 * i as i32), *r).unwrap();
        }
    }
    a.pop(qword_ptr(rdi + 56)).unwrap();
    for r in [r15, r14, r13, r12, rbp, rbx] {
        a.pop(r).unwrap();
    }
    a.ret().unwrap();
    let epilogue = a.assemble(0).unwrap();
    Native::new(prologue, epilogue)
}

#[derive(Clone, Copy, PartialEq)]
enum Modrm {
    /// `/r`: reg field and rm both operands.
    R,
    /// `/n`.
    Digit(u8),
    /// No ModRM.
    No,
    /// Register in the low opcode bits (BSWAP).
    OpReg,
}

#[derive(Clone, Copy, PartialEq)]
enum Imm {
    No,
    B,
    /// 2 bytes at 16-bit operand size, else 4.
    Z,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Full,
    Logic,
    /// Shift/rotate; `rot` for ROL/ROR/RCL/RCR, `dbl` for SHLD/SHRD; count from CL (`cl`),
    /// the immediate, or 1.
    Shift {
        rot: bool,
        dbl: bool,
        cl: bool,
        one: bool,
    },
    Mul,
    Div,
    Bt,
    Bsf,
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    None,
    Cl,
    Small,
    Cmpxchg,
    Str,
    Div,
}

struct Form {
    name: &'static str,
    sizes: &'static [u8],
    pre: &'static [u8],
    op8: &'static [u8],
    op: &'static [u8],
    modrm: Modrm,
    imm: Imm,
    mem: bool,
    kind: Kind,
    setup: Setup,
}

const ALL: &[u8] = &[1, 2, 4, 8];
const WIDE: &[u8] = &[2, 4, 8];

#[allow(clippy::too_many_arguments)]
const fn f(
    name: &'static str,
    sizes: &'static [u8],
    op8: &'static [u8],
    op: &'static [u8],
    modrm: Modrm,
    imm: Imm,
    mem: bool,
    kind: Kind,
) -> Form {
    Form { name, sizes, pre: &[], op8, op, modrm, imm, mem, kind, setup: Setup::None }
}

const fn with(mut form: Form, setup: Setup) -> Form {
    form.setup = setup;
    form
}

const fn pre(mut form: Form, p: &'static [u8]) -> Form {
    form.pre = p;
    form
}

const fn sh(rot: bool, dbl: bool, by_cl: bool, one: bool) -> Kind {
    Kind::Shift { rot, dbl, cl: by_cl, one }
}

use Imm::{No as NI, B as IB, Z as IZ};
use Kind::{Bsf, Bt, Div, Full, Logic, Mul};
use Modrm::{Digit as D, No as NM, OpReg, R};

fn forms() -> Vec<Form> {
    let mut v = Vec::new();
    // ALU r/m,r and r,r/m (memory through the second form).
    let alu: [(&str, u8, Kind); 9] = [
        ("add", 0x00, Full),
        ("or", 0x08, Logic),
        ("adc", 0x10, Full),
        ("sbb", 0x18, Full),
        ("and", 0x20, Logic),
        ("sub", 0x28, Full),
        ("xor", 0x30, Logic),
        ("cmp", 0x38, Full),
        ("test", 0x84, Logic),
    ];
    for (i, (name, base, kind)) in alu.iter().enumerate() {
        let op8: &'static [u8] = Box::leak(Box::new([*base]));
        let op: &'static [u8] = Box::leak(Box::new([*base + 1]));
        v.push(f(name, ALL, op8, op, R, NI, false, *kind));
        v.push(f(name, ALL, op8, op, R, NI, true, *kind));
        if *base != 0x84 {
            let op8r: &'static [u8] = Box::leak(Box::new([*base + 2]));
            let opr: &'static [u8] = Box::leak(Box::new([*base + 3]));
            v.push(f(name, ALL, op8r, opr, R, NI, true, *kind));
            v.push(f(name, ALL, &[0x80], &[0x81], D(i as u8), IZ, false, *kind));
            v.push(f(name, WIDE, &[], &[0x83], D(i as u8), IB, true, *kind));
        }
    }
    v.push(f("test imm", ALL, &[0xf6], &[0xf7], D(0), IZ, false, Logic));
    for (name, d) in [("inc", 0), ("dec", 1)] {
        v.push(f(name, ALL, &[0xfe], &[0xff], D(d), NI, false, Full));
        v.push(f(name, ALL, &[0xfe], &[0xff], D(d), NI, true, Full));
    }
    for (name, d) in [("not", 2), ("neg", 3)] {
        v.push(f(name, ALL, &[0xf6], &[0xf7], D(d), NI, false, Full));
        v.push(f(name, ALL, &[0xf6], &[0xf7], D(d), NI, true, Full));
    }
    // Shifts and rotates: /0 rol /1 ror /2 rcl /3 rcr /4 shl /5 shr /7 sar.
    for d in [0u8, 1, 2, 3, 4, 5, 7] {
        let rot = d < 4;
        v.push(with(
            f("shift cl", ALL, &[0xd2], &[0xd3], D(d), NI, false, sh(rot, false, true, false)),
            Setup::Cl,
        ));
        v.push(with(
            f("shift cl mem", ALL, &[0xd2], &[0xd3], D(d), NI, true, sh(rot, false, true, false)),
            Setup::Cl,
        ));
        v.push(f("shift imm", ALL, &[0xc0], &[0xc1], D(d), IB, false, sh(rot, false, false, false)));
        v.push(f("shift 1", ALL, &[0xd0], &[0xd1], D(d), NI, false, sh(rot, false, false, true)));
    }
    v.push(f("shld imm", WIDE, &[], &[0x0f, 0xa4], R, IB, false, sh(false, true, false, false)));
    v.push(with(
        f("shld cl", WIDE, &[], &[0x0f, 0xa5], R, NI, false, sh(false, true, true, false)),
        Setup::Cl,
    ));
    v.push(f("shrd imm", WIDE, &[], &[0x0f, 0xac], R, IB, true, sh(false, true, false, false)));
    v.push(with(
        f("shrd cl", WIDE, &[], &[0x0f, 0xad], R, NI, false, sh(false, true, true, false)),
        Setup::Cl,
    ));
    // Multiply and divide.
    v.push(f("mul", ALL, &[0xf6], &[0xf7], D(4), NI, false, Mul));
    v.push(f("imul1", ALL, &[0xf6], &[0xf7], D(5), NI, true, Mul));
    v.push(f("imul2", WIDE, &[], &[0x0f, 0xaf], R, NI, false, Mul));
    v.push(f("imul3", WIDE, &[], &[0x69], R, IZ, false, Mul));
    v.push(f("imul3b", WIDE, &[], &[0x6b], R, IB, true, Mul));
    v.push(with(f("div", ALL, &[0xf6], &[0xf7], D(6), NI, false, Div), Setup::Div));
    v.push(with(f("idiv", ALL, &[0xf6], &[0xf7], D(7), NI, true, Div), Setup::Div));
    // Bit operations.
    for (name, op) in [("bt", 0xa3u8), ("bts", 0xab), ("btr", 0xb3), ("btc", 0xbb)] {
        let ops: &'static [u8] = Box::leak(Box::new([0x0f, op]));
        v.push(f(name, WIDE, &[], ops, R, NI, false, Bt));
        v.push(with(f(name, WIDE, &[], ops, R, NI, true, Bt), Setup::Small));
    }
    for d in 4..8u8 {
        v.push(f("bt imm", WIDE, &[], &[0x0f, 0xba], D(d), IB, false, Bt));
        v.push(f("bt imm mem", WIDE, &[], &[0x0f, 0xba], D(d), IB, true, Bt));
    }
    v.push(f("bsf", WIDE, &[], &[0x0f, 0xbc], R, NI, false, Bsf));
    v.push(f("bsr", WIDE, &[], &[0x0f, 0xbd], R, NI, true, Bsf));
    v.push(pre(f("popcnt", WIDE, &[], &[0x0f, 0xb8], R, NI, false, Full), &[0xf3]));
    // Exchange and compare-exchange.
    v.push(f("xchg", ALL, &[0x86], &[0x87], R, NI, false, Full));
    v.push(f("xchg mem", ALL, &[0x86], &[0x87], R, NI, true, Full));
    v.push(f("xadd", ALL, &[0x0f, 0xc0], &[0x0f, 0xc1], R, NI, true, Full));
    v.push(f("xadd reg", ALL, &[0x0f, 0xc0], &[0x0f, 0xc1], R, NI, false, Full));
    v.push(with(f("cmpxchg", ALL, &[0x0f, 0xb0], &[0x0f, 0xb1], R, NI, true, Full), Setup::Cmpxchg));
    v.push(with(
        f("cmpxchg reg", &[1, 2, 8], &[0x0f, 0xb0], &[0x0f, 0xb1], R, NI, false, Full),
        Setup::Cmpxchg,
    ));
    v.push(with(f("cmpxchg8b", &[4], &[], &[0x0f, 0xc7], D(1), NI, true, Full), Setup::Cmpxchg));
    v.push(with(f("cmpxchg16b", &[8], &[], &[0x0f, 0xc7], D(1), NI, true, Full), Setup::Cmpxchg));
    // Data movement and conversions.
    v.push(f("movzx8", WIDE, &[], &[0x0f, 0xb6], R, NI, true, Full));
    v.push(f("movzx16", &[4, 8], &[], &[0x0f, 0xb7], R, NI, false, Full));
    v.push(f("movsx8", WIDE, &[], &[0x0f, 0xbe], R, NI, false, Full));
    v.push(f("movsx16", &[4, 8], &[], &[0x0f, 0xbf], R, NI, true, Full));
    v.push(f("movsxd", &[8], &[], &[0x63], R, NI, false, Full));
    v.push(f("mov", ALL, &[0x88], &[0x89], R, NI, true, Full));
    v.push(f("mov load", ALL, &[0x8a], &[0x8b], R, NI, true, Full));
    v.push(f("bswap", &[4, 8], &[], &[0x0f, 0xc8], OpReg, NI, false, Full));
    v.push(f("cbw", WIDE, &[], &[0x98], NM, NI, false, Full));
    v.push(f("cwd", WIDE, &[], &[0x99], NM, NI, false, Full));
    for op in [0x9eu8, 0x9f, 0xf5, 0xf8, 0xf9] {
        let ops: &'static [u8] = Box::leak(Box::new([op]));
        v.push(f("flags op", &[4], &[], ops, NM, NI, false, Full));
    }
    for cc in 0..16u8 {
        let set: &'static [u8] = Box::leak(Box::new([0x0f, 0x90 + cc]));
        let cmov: &'static [u8] = Box::leak(Box::new([0x0f, 0x40 + cc]));
        v.push(f("setcc", &[1], set, &[], D(0), NI, cc % 2 == 1, Full));
        v.push(f("cmovcc", WIDE, &[], cmov, R, NI, cc % 3 == 0, Full));
    }
    // String instructions (rep variants through `pre`).
    for (op8, op) in [(0xa4u8, 0xa5u8), (0xaa, 0xab), (0xac, 0xad), (0xa6, 0xa7), (0xae, 0xaf)] {
        let o8: &'static [u8] = Box::leak(Box::new([op8]));
        let o: &'static [u8] = Box::leak(Box::new([op]));
        for p in [&[][..], &[0xf3][..], &[0xf2][..]] {
            v.push(with(pre(f("string", ALL, o8, o, NM, NI, false, Full), p), Setup::Str));
        }
    }
    v
}

/// Flags the manuals leave undefined for this case, or None if the whole result is undefined.
fn undefined(kind: Kind, size: u8, count: u64) -> Option<u64> {
    let bits = size as u64 * 8;
    Some(match kind {
        Kind::Full => 0,
        Kind::Logic => AF,
        Kind::Mul => SF | ZF | AF | PF,
        Kind::Div => ARITH,
        Kind::Bt => OF | SF | AF | PF,
        Kind::Bsf => CF | OF | SF | AF | PF,
        Kind::Shift { rot, dbl, .. } => {
            let c = count & if size == 8 { 63 } else { 31 };
            if c == 0 {
                0
            } else if dbl && c > bits {
                return None;
            } else {
                let mut u = if c != 1 { OF } else { 0 };
                if !rot {
                    u |= AF;
                    if c >= bits && !dbl {
                        u |= CF;
                    }
                }
                u
            }
        }
    })
}

const REGS: [u8; 14] = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

struct Case {
    bytes: Vec<u8>,
    rm: Option<usize>,
    count: u64,
}

/// Encodes one random instance of `form` at operand size `size`.
fn encode(form: &Form, size: u8, rng: &mut Rng, regs: &[u64; 16]) -> Case {
    let mut b = Vec::new();
    b.extend_from_slice(form.pre);
    if size == 2 {
        b.push(0x66);
    }
    let legacy8 = size == 1 && !form.mem && rng.below(2) == 0;
    let pick = |rng: &mut Rng| {
        if legacy8 {
            rng.below(8) as u8
        } else {
            REGS[rng.below(REGS.len() as u64) as usize]
        }
    };
    let reg = match form.modrm {
        Modrm::Digit(d) => d,
        _ => pick(rng),
    };
    let rm = if form.mem { 15 } else { pick(rng) };
    let opreg = form.modrm == Modrm::OpReg;
    let (rex_r, rex_b) = if opreg { (0, reg >> 3) } else { (reg >> 3 & 1, rm >> 3) };
    let rex = 0x40 | if size == 8 { 8 } else { 0 } | (rex_r << 2) | rex_b;
    if !legacy8 && (rex != 0x40 || size == 1) {
        b.push(rex);
    }
    let ops = if size == 1 { form.op8 } else { form.op };
    b.extend_from_slice(ops);
    if opreg {
        let last = b.len() - 1;
        b[last] += reg & 7;
    }
    let mut disp = 0i8;
    match form.modrm {
        Modrm::R | Modrm::Digit(_) if form.mem => {
            disp = if form.name == "cmpxchg16b" {
                (rng.below(8) as i8 - 4) * 16
            } else {
                rng.below(112) as i8 - 56
            };
            b.push(0x40 | ((reg & 7) << 3) | 7);
            b.push(disp as u8);
        }
        Modrm::R | Modrm::Digit(_) => b.push(0xc0 | ((reg & 7) << 3) | (rm & 7)),
        _ => {}
    }
    let mut count = 1;
    match form.imm {
        Imm::No => {}
        Imm::B => {
            let v = rng.below(72) as u8;
            count = v as u64;
            b.push(v);
        }
        Imm::Z => {
            let n = if size == 2 {
                2
            } else if size == 1 {
                1
            } else {
                4
            };
            b.extend_from_slice(&rng.next().to_le_bytes()[..n]);
        }
    }
    if let Kind::Shift { cl: true, .. } = form.kind {
        count = regs[1] & 0xff;
    }
    let _ = disp;
    Case { bytes: b, rm: (!form.mem && !opreg && form.modrm != Modrm::No).then_some(rm as usize), count }
}

fn random_state(form: &Form, rng: &mut Rng, buf: &mut [u8; BUF]) -> State {
    let mut s = State::default();
    for r in s.regs.iter_mut() {
        *r = rng.value();
    }
    for b in buf.iter_mut() {
        *b = rng.next() as u8;
    }
    s.flags = (rng.next() & ARITH) | 2;
    match form.setup {
        Setup::Cl => s.regs[1] = (rng.next() & !0xff) | rng.below(71),
        Setup::Small => {
            for r in s.regs.iter_mut() {
                *r = (rng.below(256) as i64 - 128) as u64;
            }
        }
        Setup::Str => {
            s.regs[1] = rng.below(9);
            s.regs[6] = 96 + rng.below(64);
            s.regs[7] = 96 + rng.below(64);
            if rng.below(2) == 0 {
                s.flags |= DF;
            }
            if rng.below(2) == 0 {
                // Make the compared ranges equal so REPE runs longer.
                let (a, b) = (s.regs[6] as usize, s.regs[7] as usize);
                for i in 0..64 {
                    buf[b - 64 + i] = buf[a - 64 + i];
                }
            }
        }
        Setup::Div => {
            if rng.below(2) == 0 {
                s.regs[2] = 0;
            }
        }
        Setup::None | Setup::Cmpxchg => {}
    }
    s.regs[15] = 128;
    s
}

/// Registers holding buffer offsets for this form.
fn pointer_regs(form: &Form) -> &'static [usize] {
    if form.setup == Setup::Str {
        &[6, 7, 15]
    } else {
        &[15]
    }
}

fn check_form(g: &mut Guest, native: &Native, form: &Form, seed: u64, cases: usize) -> (usize, usize) {
    let mut rng = Rng(seed | 1);
    let (mut run, mut faults) = (0, 0);
    for n in 0..cases {
        let size = form.sizes[n % form.sizes.len()];
        let mut buf = [0u8; BUF];
        let mut input = random_state(form, &mut rng, &mut buf);
        let case = encode(form, size, &mut rng, &input.regs);
        if form.setup == Setup::Cmpxchg && rng.below(2) == 0 {
            // Make the comparison succeed half of the time.
            match case.rm {
                Some(rm) => input.regs[0] = input.regs[rm],
                None => {
                    let disp = case.bytes[case.bytes.len() - 1] as i8 as i64;
                    let at = (128 + disp) as usize;
                    input.regs[0] = u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
                    input.regs[2] = u64::from_le_bytes(buf[at + 8..at + 16].try_into().unwrap());
                }
            }
        }
        let Some(undef) = undefined(form.kind, size, case.count) else { continue };
        let ptrs = pointer_regs(form);
        // Emulator.
        let cpu = g.cpu();
        cpu.gpr = input.regs;
        for &p in ptrs {
            cpu.gpr[p] = cpu.gpr[p].wrapping_add(GUEST_BUF);
        }
        cpu.flags.set(input.flags);
        g.mem.write_slice(&buf, GuestAddress(GUEST_BUF)).unwrap();
        let mut dec = Decoder::with_ip(64, &case.bytes, CODE, DecoderOptions::NONE);
        let ins = dec.decode();
        assert!(!ins.is_invalid(), "{}: invalid encoding {:02x?}", form.name, case.bytes);
        let op = make_op(&ins, 64);
        let cpu = g.cpu();
        cpu.rip = CODE;
        cpu.next_rip = ins.next_ip();
        let r = (op.exec)(cpu, &op);
        if let Err(e) = r {
            assert!(
                form.kind == Kind::Div && e.vector == DE,
                "{}: unexpected exception {e:?} for {:02x?}",
                form.name,
                case.bytes
            );
            faults += 1;
            continue;
        }
        let mut emu = State { regs: cpu.gpr, flags: cpu.rflags() };
        for &p in ptrs {
            emu.regs[p] = emu.regs[p].wrapping_sub(GUEST_BUF);
        }
        let mut emu_buf = [0u8; BUF];
        g.mem.read_slice(&mut emu_buf, GuestAddress(GUEST_BUF)).unwrap();
        // Host.
        let mut host = input;
        let mut host_buf = buf;
        for &p in ptrs {
            host.regs[p] = host.regs[p].wrapping_add(native.buf as u64);
        }
        // SAFETY: the prologue/epilogue save and restore the callee-saved registers and clear
        // DF; the instruction under test only touches the buffer, through the registers
        // pointed into the data page above.
        unsafe { native.run(&case.bytes, &mut host, &mut host_buf) };
        for &p in ptrs {
            host.regs[p] = host.regs[p].wrapping_sub(native.buf as u64);
        }
        let mask = (ARITH & !undef) | DF;
        let ctx = || {
            format!(
                "{} size {size} bytes {:02x?} ({ins}) input {:x?} flags {:#x}",
                form.name, case.bytes, input.regs, input.flags
            )
        };
        for i in 0..16 {
            if i != 4 {
                assert_eq!(emu.regs[i], host.regs[i], "reg {i} differs: {}", ctx());
            }
        }
        assert_eq!(emu.flags & mask, host.flags & mask, "flags differ (mask {mask:#x}): {}", ctx());
        assert!(emu_buf == host_buf, "memory differs: {}", ctx());
        run += 1;
    }
    (run, faults)
}

#[test]
fn differential_against_host_cpu() {
    let mut g = Guest::new();
    g.long_mode();
    let native = native();
    let cases: usize = diff_cases();
    let (mut total, mut faults) = (0, 0);
    let forms = forms();
    for (i, form) in forms.iter().enumerate() {
        let (r, f) =
            check_form(&mut g, &native, form, 0x9e37_79b9_7f4a_7c15 ^ (i as u64 * 0x1000_0001), cases);
        total += r;
        faults += f;
    }
    eprintln!(
        "differential: {} forms, {total} cases compared, {faults} #DE cases checked on the emulator only",
        forms.len()
    );
    assert!(total > forms.len() * cases / 2);
}
