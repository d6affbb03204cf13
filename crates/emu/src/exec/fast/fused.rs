//! Fused ops: an ALU instruction and the Jcc right after it run as one op (one dispatch; for
//! CMP, SUB, TEST and the logic ops the condition comes straight from the operands), built by
//! `decode::fuse`. Each must behave exactly like the pair: same reads, writes, faults (only the
//! first instruction can fault), flags and branch.

use iced_x86::Mnemonic as Mn;

use super::form;
use super::{
    alu_op, gi, imm, incdec_r, mask, src, sx, Access, Cpu, Ex, FlagOp, Handler, Op, Opnd, ADD, AND, CMP, I,
    M, OR, R, SUB, TEST, XOR,
};

/// INC/DEC (only in [`fuse_jcc`]).
const INCDEC: u8 = 7;

/// Condition `cc` after `CMP a, b` at size `S` (`a`, `b` masked to `S`, `r = a - b` masked),
/// straight from the operands: what `Flags::cond` answers after the lazy record of the CMP.
#[inline(always)]
fn cmp_cond<const S: u8>(cc: u8, a: u64, b: u64, r: u64) -> bool {
    let sign = crate::flags::sign_bit(S);
    let t = match cc >> 1 {
        0 => (a ^ b) & (a ^ r) & sign != 0,
        1 => a < b,
        2 => a == b,
        3 => a <= b,
        4 => r & sign != 0,
        5 => (r as u8).count_ones() & 1 == 0,
        6 => sx::<S>(a) < sx::<S>(b),
        _ => sx::<S>(a) <= sx::<S>(b),
    };
    t ^ (cc & 1 != 0)
}

/// Condition `cc` after `TEST` with result `r` (masked): CF = OF = 0.
#[inline(always)]
fn test_cond<const S: u8>(cc: u8, r: u64) -> bool {
    let sf = r & crate::flags::sign_bit(S) != 0;
    let t = match cc >> 1 {
        0 | 1 => false,
        2 | 3 => r == 0,
        4 | 6 => sf,
        5 => (r as u8).count_ones() & 1 == 0,
        _ => r == 0 || sf,
    };
    t ^ (cc & 1 != 0)
}

/// `CMP/TEST DST, SRC` fused with the `Jcc` after it ([`fuse_jcc`]): one dispatch for the
/// pair, the condition computed from the operands. The flags are recorded as the CMP/TEST
/// records them; reads and faults are the CMP/TEST's (a Jcc cannot fault). The pair retires
/// as two instructions.
fn cmp_jcc<const K: u8, const DST: u8, const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let (a, b) = if DST == R {
        let a = cpu.gpr[gi(op, 0)] & mask(S);
        (a, src::<SRC, S>(cpu, op)?)
    } else {
        let lin = cpu.mem_lin(op);
        let b = src::<SRC, S>(cpu, op)?;
        (cpu.read_lin(lin, S, Access::READ)?, b)
    };
    let taken = if K == CMP {
        let r = a.wrapping_sub(b);
        cpu.flags.record(FlagOp::Sub, S, a, b, r);
        cmp_cond::<S>(op.cc, a, b, r & mask(S))
    } else {
        let r = a & b;
        cpu.flags.record(FlagOp::Logic, S, 0, 0, r);
        test_cond::<S>(op.cc, r)
    };
    fused_branch(cpu, op, taken)
}

/// The branch half of a fused op: retires the Jcc and leaves the block when `taken`.
#[inline(always)]
fn fused_branch(cpu: &mut Cpu, op: &Op, taken: bool) -> Ex {
    cpu.icount += 1;
    if taken {
        cpu.next_rip = imm(op, 2);
        cpu.block_break = true;
    }
    Ok(())
}

/// `ADD/SUB/AND/OR/XOR reg, SRC` fused with the `Jcc` after it ([`fuse_jcc`]): `alu_r`, then
/// the branch (SUB and the logic ops compute the condition from the operands).
fn alu_jcc<const K: u8, const SRC: u8, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    let d = gi(op, 0);
    let a = cpu.gpr[d] & mask(S);
    let b = src::<SRC, S>(cpu, op)?;
    let r = alu_op::<K, S>(cpu, a, b);
    cpu.write_gpr(d, S, r);
    let taken = match K {
        SUB => cmp_cond::<S>(op.cc, a, b, r & mask(S)),
        AND | OR | XOR => test_cond::<S>(op.cc, r & mask(S)),
        _ => cpu.flags.cond(op.cc),
    };
    fused_branch(cpu, op, taken)
}

/// `INC/DEC reg` fused with the `Jcc` after it: `incdec_r`, then the branch.
fn incdec_jcc<const DEC: bool, const S: u8>(cpu: &mut Cpu, op: &Op) -> Ex {
    incdec_r::<DEC, S>(cpu, op)?;
    let taken = cpu.flags.cond(op.cc);
    fused_branch(cpu, op, taken)
}

/// `cmp` (CMP or TEST, ADD/SUB/AND/OR/XOR to a register, INC/DEC of a register) fused with
/// `jcc` (a Jcc to an immediate target that follows it directly) into one op, or None if the
/// forms do not qualify. The fused op spans both instructions: its `ins` keeps the first one's
/// address and ends where the Jcc ends, the target goes in operand 2 and the condition in `cc`.
pub(crate) fn fuse_jcc(cmp: &Op, jcc: &Op) -> Option<Op> {
    let k = match cmp.ins.mnemonic() {
        Mn::Cmp => CMP,
        Mn::Test => TEST,
        Mn::Add => ADD,
        Mn::Sub => SUB,
        Mn::And => AND,
        Mn::Or => OR,
        Mn::Xor => XOR,
        Mn::Inc | Mn::Dec => INCDEC,
        _ => return None,
    };
    if cmp.locked
        || cmp.ins.op_count() != if k == INCDEC { 1 } else { 2 }
        || cmp.ins.has_rep_prefix()
        || cmp.ins.has_repne_prefix()
        || !jcc.ins.is_jcc_short_or_near()
        || jcc.ins.ip() != cmp.ins.next_ip()
        || jcc.cc > 15
    {
        return None;
    }
    let Opnd::Imm(target) = jcc.o[0] else { return None };
    let s = cmp.size;
    macro_rules! k {
        ($d:expr, $src:expr) => {
            if k == CMP {
                sized!(s, cmp_jcc, CMP, $d, $src)
            } else {
                sized!(s, cmp_jcc, TEST, $d, $src)
            }
        };
    }
    let exec = match k {
        INCDEC if form(cmp, 0, s)? == R => {
            if cmp.ins.mnemonic() == Mn::Dec {
                sized!(s, incdec_jcc, true)
            } else {
                sized!(s, incdec_jcc, false)
            }
        }
        INCDEC => return None,
        CMP | TEST => match (form(cmp, 0, s)?, form(cmp, 1, s)?) {
            (R, R) => k!(R, R),
            (R, I) => k!(R, I),
            (R, M) => k!(R, M),
            (M, R) => k!(M, R),
            (M, I) => k!(M, I),
            _ => return None,
        },
        _ => match (form(cmp, 0, s)?, form(cmp, 1, s)?) {
            (R, R) => alu_kind!(k, s, alu_jcc, R),
            (R, I) => alu_kind!(k, s, alu_jcc, I),
            (R, M) => alu_kind!(k, s, alu_jcc, M),
            _ => return None,
        },
    };
    let mut op = cmp.clone();
    op.exec = exec;
    op.o[2] = Opnd::Imm(target);
    op.cc = jcc.cc;
    op.ins.set_len(cmp.ins.len() + jcc.ins.len());
    op.ins.set_next_ip(jcc.ins.next_ip());
    Some(op)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    /// A CMP/TEST + Jcc pair decoded as one fused op takes the same branch and leaves the same
    /// flags as the two instructions run one after the other, for every condition, operand
    /// size and register/immediate form, on edge and random values.
    #[test]
    fn fused_compare_and_branch_matches_the_pair() {
        use crate::cpu::Cpu;
        use crate::decode::{decode_block, Key};
        use crate::mem::Memory;

        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut vals = vec![0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff, 0x8000_0000];
        vals.extend([0xffff_ffff, i64::MAX as u64, 1 << 63, u64::MAX, 0x1_0000_0000]);
        vals.extend((0..24).map(|_| rnd()));
        let mut fused_seen = 0;
        for test in [false, true] {
            for size in [1u8, 2, 4, 8] {
                for imm_form in [false, true] {
                    let mut a = CodeAssembler::new(64).unwrap();
                    let imm = 0x5a5a_5a5a_u32 as i32 >> (32 - 8 * size.min(4) as u32);
                    match (size, test, imm_form) {
                        (1, false, false) => a.cmp(al, bl),
                        (2, false, false) => a.cmp(ax, bx),
                        (4, false, false) => a.cmp(eax, ebx),
                        (8, false, false) => a.cmp(rax, rbx),
                        (1, true, false) => a.test(al, bl),
                        (2, true, false) => a.test(ax, bx),
                        (4, true, false) => a.test(eax, ebx),
                        (8, true, false) => a.test(rax, rbx),
                        (1, false, true) => a.cmp(al, imm),
                        (2, false, true) => a.cmp(ax, imm),
                        (4, false, true) => a.cmp(eax, imm),
                        (8, false, true) => a.cmp(rax, imm),
                        (1, true, true) => a.test(al, imm),
                        (2, true, true) => a.test(ax, imm),
                        (4, true, true) => a.test(eax, imm),
                        _ => a.test(rax, imm),
                    }
                    .unwrap();
                    let cmp_bytes = a.assemble(0x1000).unwrap();
                    for cc in 0u8..16 {
                        let mut bytes = cmp_bytes.clone();
                        bytes.extend([0x70 + cc, 0x20, 0x90]);
                        let key = Key { rip: 0x1000, phys: 0x1000, bits: 64 };
                        let block = decode_block(&bytes, &key).unwrap();
                        assert_eq!(block.ops.len(), 2, "the pair is one op, then the NOP");
                        let fused = &block.ops[0];
                        assert_eq!(fused.ins.ip(), 0x1000);
                        assert_eq!(fused.ins.next_ip(), 0x1000 + bytes.len() as u64 - 1);
                        fused_seen += 1;
                        let pair = decode_block(&bytes[..cmp_bytes.len()], &key).unwrap();
                        let jkey = Key { rip: 0x1000 + cmp_bytes.len() as u64, ..key };
                        let jcc = decode_block(&bytes[cmp_bytes.len()..], &jkey).unwrap();
                        let (cmp_op, jcc_op) = (&pair.ops[0], &jcc.ops[0]);
                        for &x in &vals {
                            for &y in vals.iter().step_by(3) {
                                let mut c1 = Cpu::new(Memory::empty(), 0);
                                let mut c2 = Cpu::new(Memory::empty(), 0);
                                for c in [&mut c1, &mut c2] {
                                    c.gpr[0] = x;
                                    c.gpr[3] = y;
                                }
                                c1.next_rip = fused.ins.next_ip();
                                (fused.exec)(&mut c1, fused).unwrap();
                                c2.next_rip = cmp_op.ins.next_ip();
                                (cmp_op.exec)(&mut c2, cmp_op).unwrap();
                                c2.next_rip = jcc_op.ins.next_ip();
                                (jcc_op.exec)(&mut c2, jcc_op).unwrap();
                                let what = format!(
                                    "test={test} size={size} imm={imm_form} cc={cc} x={x:#x} y={y:#x}"
                                );
                                assert_eq!(c1.next_rip, c2.next_rip, "branch: {what}");
                                assert_eq!(c1.block_break, c2.block_break, "leaves the block: {what}");
                                assert_eq!(c1.flags.get(), c2.flags.get(), "flags: {what}");
                                assert_eq!(c1.icount, 1, "the Jcc half is counted by the op");
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(fused_seen, 2 * 4 * 2 * 16);
    }

    /// ADD/SUB/AND/OR/XOR/INC/DEC of a register fused with the Jcc after it: same registers,
    /// flags and branch as the pair, for every condition and size.
    #[test]
    fn fused_alu_and_branch_matches_the_pair() {
        use crate::cpu::Cpu;
        use crate::decode::{decode_block, Key};
        use crate::mem::Memory;

        type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;
        let firsts: [(&str, Build); 16] = [
            ("add r8", |a| a.add(al, bl)),
            ("add r64", |a| a.add(rax, rbx)),
            ("add imm32", |a| a.add(eax, 0x7fff_fff0)),
            ("sub r16", |a| a.sub(ax, bx)),
            ("sub r32", |a| a.sub(eax, ebx)),
            ("sub imm64", |a| a.sub(rax, 1)),
            ("and r32", |a| a.and(eax, ebx)),
            ("or r64", |a| a.or(rax, rbx)),
            ("xor r8", |a| a.xor(al, bl)),
            ("xor imm16", |a| a.xor(ax, 0x8001)),
            ("dec r32", |a| a.dec(eax)),
            ("dec r64", |a| a.dec(rax)),
            ("inc r8", |a| a.inc(al)),
            ("inc r16", |a| a.inc(ax)),
            ("add [mem], r32 stays unfused", |a| a.add(dword_ptr(rbx), eax)),
            ("mov r32 stays unfused", |a| a.mov(eax, ebx)),
        ];
        let vals = [
            0u64,
            1,
            0x7f,
            0x80,
            0xff,
            0xffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 63,
            u64::MAX,
            0x1234_5678_9abc_def0,
        ];
        let key = Key { rip: 0x1000, phys: 0x1000, bits: 64 };
        for (name, f) in firsts {
            let mut a = CodeAssembler::new(64).unwrap();
            f(&mut a).unwrap();
            let first = a.assemble(0x1000).unwrap();
            for cc in 0u8..16 {
                let mut bytes = first.clone();
                bytes.extend([0x70 + cc, 0x20, 0x90]);
                let block = decode_block(&bytes, &key).unwrap();
                let fused = block.ops.len() == 2;
                assert_eq!(fused, !name.contains("unfused"), "{name}");
                if !fused {
                    continue;
                }
                let op = &block.ops[0];
                let one = decode_block(&first, &key).unwrap();
                let jkey = Key { rip: 0x1000 + first.len() as u64, ..key };
                let jcc = decode_block(&bytes[first.len()..], &jkey).unwrap();
                for &x in &vals {
                    for &y in &vals {
                        for carry in [0u64, 1] {
                            let (mut c1, mut c2) =
                                (Cpu::new(Memory::empty(), 0), Cpu::new(Memory::empty(), 0));
                            for c in [&mut c1, &mut c2] {
                                c.gpr[0] = x;
                                c.gpr[3] = y;
                                c.flags.set(2 | carry);
                            }
                            c1.next_rip = op.ins.next_ip();
                            (op.exec)(&mut c1, op).unwrap();
                            for o in [&one.ops[0], &jcc.ops[0]] {
                                c2.next_rip = o.ins.next_ip();
                                (o.exec)(&mut c2, o).unwrap();
                            }
                            let what = format!("{name} cc={cc} x={x:#x} y={y:#x} cf={carry}");
                            assert_eq!(c1.gpr, c2.gpr, "{what}");
                            assert_eq!(c1.next_rip, c2.next_rip, "{what}");
                            assert_eq!(c1.block_break, c2.block_break, "{what}");
                            assert_eq!(c1.flags.get(), c2.flags.get(), "{what}");
                        }
                    }
                }
            }
        }
    }
}
