//! The x87 environment and full-state images: FNSTENV, FLDENV, FNSAVE, FRSTOR, in the 14/28-byte
//! (environment) and 94/108-byte (state) layouts of protected and real mode, with the full
//! 2-bit tag word computed from the abridged tags and register contents.
//!
//! FCS and FDS are stored as 0 (as CPUs with the FCS/FDS deprecation do); FIP/FDP/FOP are the
//! values the arithmetic handlers record.

use iced_x86::{Instruction, Mnemonic as M};

use super::fpu::{with_summary, x87_check, x87_reset};
use crate::cpu::{Cpu, Ex};
use crate::decode::{Handler, Op};
use crate::mem::Access;

pub(super) fn handler(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Fnstenv => fnstenv,
        M::Fldenv => fldenv,
        M::Fnsave => fnsave,
        M::Frstor => frstor,
        _ => return None,
    })
}

/// The 2-bit tag of an 80-bit value: 0 valid, 1 zero, 2 special (NaN, infinity, denormal,
/// unsupported encodings).
pub(super) fn tag_of(r: &[u8; 16]) -> u16 {
    let mant = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7fff;
    match exp {
        0x7fff => 2,
        0 if mant == 0 => 1,
        0 => 2,
        _ if mant >> 63 == 0 => 2,
        _ => 0,
    }
}

/// The full tag word (physical register order) of the current state.
pub(super) fn full_tag_word(cpu: &Cpu) -> u16 {
    let f = &cpu.fpu;
    let top = (f.fsw >> 11) as usize & 7;
    (0..8).fold(0u16, |tw, p| {
        let t = if f.ftwx >> p & 1 == 0 { 3 } else { tag_of(&f.fpr[(p + 8 - top) & 7]) };
        tw | t << (2 * p)
    })
}

/// The abridged tag byte for a full tag word: a register is valid unless tagged empty (11).
pub(super) fn abridged(tw: u16) -> u8 {
    (0..8).fold(0u8, |b, p| b | (((tw >> (2 * p) & 3) != 3) as u8) << p)
}

/// Layout of the environment: 32-bit (28 bytes) or 16-bit (14 bytes), real or protected.
#[derive(Clone, Copy)]
struct Layout {
    wide: bool,
    real: bool,
}

impl Layout {
    fn of(cpu: &Cpu, op: &Op) -> Layout {
        Layout { wide: matches!(op.ins.memory_size().size(), 28 | 108), real: !cpu.protected() }
    }
    fn env_len(self) -> usize {
        if self.wide {
            28
        } else {
            14
        }
    }
}

fn env_image(cpu: &Cpu, l: Layout) -> [u8; 28] {
    let f = &cpu.fpu;
    let words: [u32; 7] = {
        let (ip, dp, fop) = (f.last_ip as u32, f.last_dp as u32, f.last_opcode as u32 & 0x7ff);
        let tw = full_tag_word(cpu) as u32;
        let (fcw, fsw) = (f.fcw as u32, f.fsw as u32);
        match (l.wide, l.real) {
            (true, false) => [fcw, fsw, tw, ip, fop << 16, dp, 0],
            (true, true) => [
                fcw,
                fsw,
                tw,
                ip & 0xffff,
                (ip >> 16 & 0xffff) << 12 | fop,
                dp & 0xffff,
                (dp >> 16 & 0xffff) << 12,
            ],
            (false, false) => [fcw, fsw, tw, ip & 0xffff, 0, dp & 0xffff, 0],
            (false, true) => {
                [fcw, fsw, tw, ip & 0xffff, (ip >> 16 & 0xf) << 12 | fop, dp & 0xffff, (dp >> 16 & 0xf) << 12]
            }
        }
    };
    let mut b = [0u8; 28];
    for (i, w) in words.iter().enumerate() {
        if l.wide {
            // The reserved upper halves of FCW/FSW/FTW read as ones.
            let v = if i < 3 { w | 0xffff_0000 } else { *w };
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        } else {
            b[2 * i..2 * i + 2].copy_from_slice(&(*w as u16).to_le_bytes());
        }
    }
    b
}

fn load_env(cpu: &mut Cpu, b: &[u8], l: Layout) {
    let at = |i: usize| -> u32 {
        if l.wide {
            u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        } else {
            u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32
        }
    };
    let (ip, dp, fop) = match (l.wide, l.real) {
        (true, false) => (at(3), at(5), at(4) >> 16 & 0x7ff),
        (true, true) => (
            at(3) & 0xffff | (at(4) >> 12 & 0xffff) << 16,
            at(5) & 0xffff | (at(6) >> 12 & 0xffff) << 16,
            at(4) & 0x7ff,
        ),
        (false, false) => (at(3), at(5), 0),
        (false, true) => {
            (at(3) | (at(4) >> 12 & 0xf) << 16, at(5) | (at(6) >> 12 & 0xf) << 16, at(4) & 0x7ff)
        }
    };
    let f = &mut cpu.fpu;
    let fsw = at(1) as u16;
    // The registers stay where they are physically: ST(i) moves with a new TOP.
    let shift = ((fsw >> 11) as usize).wrapping_sub((f.fsw >> 11) as usize) & 7;
    f.fpr.rotate_left(shift);
    f.fcw = at(0) as u16;
    f.fsw = with_summary(fsw, f.fcw);
    f.ftwx = abridged(at(2) as u16);
    f.last_ip = ip as u64;
    f.last_dp = dp as u64;
    f.last_opcode = fop as u16;
}

fn fnstenv(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let l = Layout::of(cpu, op);
    let img = env_image(cpu, l);
    let lin = cpu.mem_lin(op);
    cpu.write_bytes(lin, &img[..l.env_len()], Access::WRITE)?;
    cpu.fpu.fcw |= 0x3f;
    Ok(())
}

fn fldenv(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let l = Layout::of(cpu, op);
    let mut b = [0u8; 28];
    let lin = cpu.mem_lin(op);
    cpu.read_bytes(lin, &mut b[..l.env_len()], Access::READ)?;
    load_env(cpu, &b, l);
    Ok(())
}

fn fnsave(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let l = Layout::of(cpu, op);
    let n = l.env_len();
    let mut img = [0u8; 108];
    img[..n].copy_from_slice(&env_image(cpu, l)[..n]);
    for (i, r) in cpu.fpu.fpr.iter().enumerate() {
        img[n + 10 * i..n + 10 * i + 10].copy_from_slice(&r[..10]);
    }
    let lin = cpu.mem_lin(op);
    cpu.write_bytes(lin, &img[..n + 80], Access::WRITE)?;
    x87_reset(cpu);
    Ok(())
}

fn frstor(cpu: &mut Cpu, op: &Op) -> Ex {
    x87_check(cpu)?;
    let l = Layout::of(cpu, op);
    let n = l.env_len();
    let mut img = [0u8; 108];
    let lin = cpu.mem_lin(op);
    cpu.read_bytes(lin, &mut img[..n + 80], Access::READ)?;
    load_env(cpu, &img, l);
    for (i, r) in cpu.fpu.fpr.iter_mut().enumerate() {
        r[..10].copy_from_slice(&img[n + 10 * i..n + 10 * i + 10]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(mant: u64, se: u16) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&mant.to_le_bytes());
        r[8..10].copy_from_slice(&se.to_le_bytes());
        r
    }

    #[test]
    fn tags_classify_values() {
        assert_eq!(tag_of(&reg(1 << 63, 0x3fff)), 0, "1.0 valid");
        assert_eq!(tag_of(&reg(0, 0x8000)), 1, "-0 zero");
        assert_eq!(tag_of(&reg(5, 0)), 2, "denormal special");
        assert_eq!(tag_of(&reg(1 << 63, 0x7fff)), 2, "infinity special");
        assert_eq!(tag_of(&reg(1, 0x4000)), 2, "unnormal special");
    }

    #[test]
    fn abridged_tags_round_trip() {
        assert_eq!(abridged(0xffff), 0);
        assert_eq!(abridged(0x0000), 0xff);
        assert_eq!(abridged(0xfff9), 0x03);
        assert_eq!(abridged(0x3fff), 0x80);
    }
}
