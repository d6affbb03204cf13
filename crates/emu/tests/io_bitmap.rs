//! The TSS I/O permission bitmap: port I/O at CPL 3 with IOPL 0 is allowed exactly when every
//! bit the access covers is clear in the bitmap at the TSS's I/O map base, and the two bitmap
//! bytes the CPU reads lie within the TSS limit (Intel SDM vol. 1, 19.5.2). Tiny guests in
//! 64-bit and 32-bit protected mode do IN/OUT/INS/OUTS from user mode; a #GP handler reports
//! the error code and the faulting RIP, an INT3 after the access reports success.

mod common;

use common::*;
use iced_x86::code_asm::*;
use vmr_emu::segment::parse_descriptor;
use vmr_emu::StopReason;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

const USER: u64 = CODE + 0x2000;
const USER_STACK: u64 = 0x8f00;
const GP_HANDLER: u64 = CODE + 0x1000;
const BP_HANDLER: u64 = CODE + 0x1800;
/// The 32-bit guests' IDT (the 64-bit one is at `IDT`).
const IDT32: u64 = 0xb000;
/// A 32-bit DPL 3 code segment, in the GDT slot the 64-bit TSS descriptor's upper half uses.
const USER_CS32: u16 = 0x3b;
const USER_CS32_DESC: u64 = 0x00cf_fb00_0000_ffff;
/// Where the handlers report: #GP error code, #GP RIP, INT3 reached (with RAX).
const GP_ERR_PORT: u16 = 0xf7;
const GP_RIP_PORT: u16 = 0xf5;
const BP_PORT: u16 = 0xf8;
/// The TSS of these guests (away from the stacks, so a bitmap of 8 KiB fits).
const TSS_AT: u64 = 0x20000;
/// The I/O map base of most cases: right after the 0x68-byte TSS header.
const MAP: u16 = 0x68;

/// What one user-mode run ended with.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The access went through; RAX at the INT3 after it.
    Ran(u64),
    /// #GP with this error code at this offset from `USER`.
    Gp(u64, u64),
}

struct Setup {
    bits: u32,
    iopl: u64,
    map_base: u16,
    /// TSS limit.
    limit: u32,
    /// TSS type (0xb: busy 32/64-bit TSS, 0x3: busy 16-bit TSS).
    tss_type: u8,
    /// Ports whose bitmap bit is clear (all others set).
    allowed: Vec<u16>,
}

impl Setup {
    fn new(bits: u32, allowed: &[u16]) -> Setup {
        Setup {
            bits,
            iopl: 0,
            map_base: MAP,
            limit: u32::from(MAP) + 0x2000,
            tss_type: 0xb,
            allowed: allowed.to_vec(),
        }
    }
}

fn out_port(a: &mut CodeAssembler, port: u16) {
    a.mov(edx, port as u32).unwrap();
    a.out(dx, eax).unwrap();
}

/// Handlers for the guest's bitness: #GP reports error code and RIP, #BP reports RAX.
fn handlers(g: &Guest, bits: u32) {
    g.asm(bits, GP_HANDLER, |a| {
        if bits == 64 {
            a.pop(rax).unwrap();
            out_port(a, GP_ERR_PORT);
            a.mov(rax, qword_ptr(rsp)).unwrap();
        } else {
            a.pop(eax).unwrap();
            out_port(a, GP_ERR_PORT);
            a.mov(eax, dword_ptr(esp)).unwrap();
        }
        out_port(a, GP_RIP_PORT);
        a.mov(edx, DONE_PORT as u32).unwrap();
        a.out(dx, al).unwrap();
    });
    g.asm(bits, BP_HANDLER, |a| {
        out_port(a, BP_PORT);
        a.mov(edx, DONE_PORT as u32).unwrap();
        a.out(dx, al).unwrap();
    });
    if bits == 64 {
        g.set_gate64(13, GP_HANDLER, 0, 0);
        g.set_gate64(3, BP_HANDLER, 0, 3);
    } else {
        for (vec, handler, dpl) in [(13u64, GP_HANDLER, 0u64), (3, BP_HANDLER, 3)] {
            let gate = (handler & 0xffff)
                | (u64::from(CODE32) << 16)
                | (0x8e << 40)
                | (dpl << 45)
                | ((handler >> 16 & 0xffff) << 48);
            g.write_u64(IDT32 + 8 * vec, gate);
        }
    }
}

/// Runs `user` (assembled for `s.bits`) at CPL 3 with the TSS and bitmap of `s`.
fn run(s: &Setup, user: impl FnOnce(&mut CodeAssembler)) -> (End, Guest) {
    let mut g = Guest::new();
    g.long_mode();
    // The first 2 MiB page (code, stacks, tables) user-accessible.
    g.write_u64(PML4, 0x2000 | 7);
    g.write_u64(0x2000, 0x3000 | 7);
    g.write_u64(0x3000, 0x87);
    // TSS: the ring-0 stack (64-bit: RSP0 at 4; 32-bit: ESP0 at 4, SS0 at 8), the I/O map
    // base, a bitmap of all ones up to the limit, then the allowed ports' bits cleared.
    if s.bits == 64 {
        g.write_u64(TSS_AT + 4, 0x7000);
    } else {
        g.write_u64(GDT + u64::from(USER_CS32 & !7), USER_CS32_DESC);
        g.write(TSS_AT + 4, &0x7000u32.to_le_bytes());
        g.write(TSS_AT + 8, &u32::from(KERNEL_DS).to_le_bytes());
    }
    g.write(TSS_AT + 0x66, &s.map_base.to_le_bytes());
    let end = TSS_AT + u64::from(s.limit) + 1;
    let start = TSS_AT + u64::from(MAP);
    g.write(start, &vec![0xff; (end - start) as usize]);
    for &p in &s.allowed {
        let at = TSS_AT + u64::from(s.map_base) + u64::from(p / 8);
        let mut b = [0u8];
        g.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        g.write(at, &[b[0] & !(1 << (p % 8))]);
    }
    if s.bits == 32 {
        g.protected_mode_flat(IDT32);
    }
    handlers(&g, s.bits);
    g.asm(s.bits, USER, |a| {
        user(a);
        a.int3().unwrap();
    });
    let c = g.cpu();
    c.tr.base = TSS_AT;
    c.tr.limit = s.limit;
    c.tr.type_ = s.tss_type;
    let (cs_sel, cs_desc) =
        if s.bits == 64 { (USER_CS, 0x00af_fb00_0000_ffffu64) } else { (USER_CS32, USER_CS32_DESC) };
    c.seg[1] = parse_descriptor(cs_desc, cs_sel);
    let user_ds = parse_descriptor(0x00cf_f300_0000_ffff, USER_DS);
    for i in [0, 2, 3] {
        c.seg[i] = user_ds;
    }
    c.rip = USER;
    c.gpr[4] = USER_STACK;
    c.flags.set(0x2 | (s.iopl << 12));
    c.update_mode();
    c.flush_tlb();
    assert_eq!(c.cpl, 3);
    assert_eq!(g.run(), StopReason::Kicked);
    let end = match (g.port_writes(BP_PORT).as_slice(), g.port_writes(GP_ERR_PORT).as_slice()) {
        ([value], []) => End::Ran(*value),
        ([], [code]) => End::Gp(*code, g.port_writes(GP_RIP_PORT)[0] - USER),
        other => panic!("unexpected end {other:x?}"),
    };
    (end, g)
}

/// `mov edx, port; mov eax, 0x44332211; out dx, <size>`: 10 bytes before the OUT.
fn out_sized(port: u16, size: u32) -> impl FnOnce(&mut CodeAssembler) {
    move |a| {
        a.mov(edx, port as u32).unwrap();
        a.mov(eax, 0x4433_2211u32).unwrap();
        match size {
            1 => a.out(dx, al).unwrap(),
            2 => a.out(dx, ax).unwrap(),
            _ => a.out(dx, eax).unwrap(),
        }
    }
}

/// OUT of `size` bytes to `port` with the bitmap allowing `allowed`: Some(value written) or
/// None after a #GP(0) on the OUT (at offset 10) that wrote nothing.
fn try_out(bits: u32, allowed: &[u16], port: u16, size: u32) -> Option<u64> {
    let (end, g) = run(&Setup::new(bits, allowed), out_sized(port, size));
    let writes = g.port_writes(port);
    match end {
        End::Ran(_) => {
            assert_eq!(writes.len(), 1, "{bits}-bit out{size} {port:#x}");
            Some(writes[0])
        }
        End::Gp(err, rip) => {
            assert_eq!((err, rip), (0, 10), "{bits}-bit out{size} {port:#x}: #GP(0) on the OUT");
            assert!(writes.is_empty(), "the port was written before the #GP");
            None
        }
    }
}

#[test]
fn out_is_allowed_exactly_when_its_bits_are_clear() {
    for bits in [64, 32] {
        let ok = |allowed: &[u16], port, size| try_out(bits, allowed, port, size).is_some();
        // One byte: only its own bit counts.
        assert!(ok(&[0x3f8], 0x3f8, 1));
        assert!(!ok(&[0x3f8], 0x3f9, 1));
        assert!(!ok(&[0x3f9], 0x3f8, 1));
        // Word and dword: every bit they cover.
        assert!(ok(&[0x3f8, 0x3f9], 0x3f8, 2));
        assert!(!ok(&[0x3f8], 0x3f8, 2));
        assert!(!ok(&[0x3f9], 0x3f8, 2));
        assert!(ok(&[0x3f8, 0x3f9, 0x3fa, 0x3fb], 0x3f8, 4));
        assert!(!ok(&[0x3f8, 0x3f9, 0x3fa], 0x3f8, 4));
        assert!(!ok(&[0x3f8, 0x3fa, 0x3fb], 0x3f8, 4));
        // Ranges crossing a bitmap byte: 0x3f7 is bit 7 of byte 0x7e, 0x3f8 bit 0 of 0x7f.
        assert!(ok(&[0x3f7, 0x3f8], 0x3f7, 2));
        assert!(!ok(&[0x3f7], 0x3f7, 2));
        assert!(!ok(&[0x3f8], 0x3f7, 2));
        assert!(ok(&[0x3f5, 0x3f6, 0x3f7, 0x3f8], 0x3f5, 4));
        assert!(!ok(&[0x3f5, 0x3f6, 0x3f7], 0x3f5, 4));
        // Port 0 and the last ports.
        assert!(ok(&[0], 0, 1));
        assert!(ok(&[0xfffe, 0xffff], 0xfffe, 2));
        assert!(!ok(&[0xfffe], 0xfffe, 2));
        assert_eq!(try_out(bits, &[0x80], 0x80, 1), Some(0x11));
        assert_eq!(try_out(bits, &[0x80, 0x81], 0x80, 2), Some(0x2211));
    }
}

#[test]
fn in_ins_and_outs_check_the_bitmap() {
    for bits in [64, 32] {
        // IN: port 0x80 reads 0x5a from the test bus.
        let read = |allowed: &[u16]| {
            run(&Setup::new(bits, allowed), |a| {
                a.mov(edx, 0x80u32).unwrap();
                a.mov(eax, 0x1111_1111u32).unwrap();
                a.in_(ax, dx).unwrap();
            })
            .0
        };
        assert_eq!(read(&[0x80, 0x81]), End::Ran(0x1111_5a5a));
        assert_eq!(read(&[0x80]), End::Gp(0, 10));
        // REP OUTSB / INSB of 3 bytes: all or nothing.
        let string = |allowed: &[u16], outs: bool| {
            run(&Setup::new(bits, allowed), move |a| {
                a.mov(edx, 0x3f8u32).unwrap();
                a.mov(ecx, 3u32).unwrap();
                if bits == 64 {
                    a.mov(rsi, USER + 0x100).unwrap();
                    a.mov(rdi, USER + 0x200).unwrap();
                } else {
                    a.mov(esi, (USER + 0x100) as u32).unwrap();
                    a.mov(edi, (USER + 0x200) as u32).unwrap();
                }
                if outs {
                    a.rep().outsb().unwrap();
                } else {
                    a.rep().insb().unwrap();
                }
            })
        };
        let (end, g) = string(&[0x3f8], true);
        assert!(matches!(end, End::Ran(_)), "{bits}: {end:?}");
        assert_eq!(g.port_writes(0x3f8).len(), 3);
        let (end, g) = string(&[0x3f9], true);
        assert!(matches!(end, End::Gp(0, _)), "{bits}: {end:?}");
        assert!(g.port_writes(0x3f8).is_empty());
        let (end, g) = string(&[0x3f9], false);
        assert!(matches!(end, End::Gp(0, _)), "{bits}: {end:?}");
        assert_eq!(g.read_u64(USER + 0x200) & 0xff_ffff, 0, "INS stored nothing");
        let (end, g) = string(&[0x3f8], false);
        assert!(matches!(end, End::Ran(_)), "{bits}: {end:?}");
        assert_eq!(g.read_u64(USER + 0x200) & 0xff_ffff, 0xff_ffff, "INS stored the port's bytes");
    }
}

/// The CPU reads two bitmap bytes for every access; both must be within the TSS limit. A map
/// base at or past the limit means no bitmap (Linux's default for tasks without `ioperm`).
#[test]
fn bitmap_bytes_beyond_the_tss_limit_fault() {
    for bits in [64, 32] {
        // Bitmap bytes 0..=0x7f inside the limit: 0x3f8 is in byte 0x7f, whose successor is
        // outside, so even a clear bit faults; 0x3f0 (byte 0x7e, 0x7f) is allowed.
        let limit = u32::from(MAP) + 0x7f;
        let out = |port: u16, limit: u32, map_base: u16| {
            let s = Setup { limit, map_base, ..Setup::new(bits, &[0x3f0, 0x3f8]) };
            run(&s, out_sized(port, 1)).0
        };
        assert_eq!(out(0x3f0, limit, MAP), End::Ran(0x4433_2211));
        assert_eq!(out(0x3f8, limit, MAP), End::Gp(0, 10));
        assert_eq!(out(0x3f8, limit + 1, MAP), End::Ran(0x4433_2211));
        // No bitmap: map base at or beyond the limit.
        assert_eq!(out(0x3f0, limit, (limit + 1) as u16), End::Gp(0, 10));
        assert_eq!(out(0x3f0, limit, 0xffff), End::Gp(0, 10));
    }
}

/// IOPL 3 allows any port without looking at the bitmap; a 16-bit TSS has no bitmap.
#[test]
fn iopl_and_tss_type() {
    for bits in [64, 32] {
        let s = Setup { iopl: 3, ..Setup::new(bits, &[]) };
        assert_eq!(run(&s, out_sized(0x3f8, 4)).0, End::Ran(0x4433_2211));
        let s = Setup { tss_type: 0x3, ..Setup::new(bits, &[0x3f8]) };
        if bits == 32 {
            assert_eq!(run(&s, out_sized(0x3f8, 1)).0, End::Gp(0, 10));
        }
        // CLI at CPL 3 still depends on IOPL only.
        let (end, _) = run(&Setup::new(bits, &[0x3f8]), |a| {
            a.cli().unwrap();
        });
        assert_eq!(end, End::Gp(0, 0));
    }
}

// Seeds of the `cpu` fuzz target (`fuzz/seeds/cpu`): the same checks as inputs of the fuzz
// harness, which starts at CPL 0 in long mode. Each seed makes the first 2 MiB user-accessible
// through its table-slot entries, loads a TSS with a bitmap (ports 0x3f0-0x3f7 and 0x3fc-0x3ff
// denied, the others allowed) and enters CPL 3 with IRETQ, where the user code does port I/O
// until an access faults (every vector ends the case).

/// A `cpu` fuzz input: the TSS limit, then the user code.
fn cpu_seed(tss_limit: u16, user: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut data = vec![0u8]; // mode 0: long mode, the harness's RSP
    data.extend_from_slice(&[0u8; 16 * 8]); // registers
    let slots: [(u64, u64); 3] = [(0, 0x2000 | 7), (512, 0x3000 | 7), (1024, 0x87)];
    data.push(slots.len() as u8);
    for (slot, entry) in slots {
        data.extend_from_slice(&slot.to_le_bytes());
        data.extend_from_slice(&entry.to_le_bytes());
    }
    let desc = u64::from(tss_limit) | (TSS << 16) | (0x89 << 40);
    let mut a = CodeAssembler::new(64).unwrap();
    let mut user_start = a.create_label();
    a.mov(rax, desc).unwrap();
    a.mov(qword_ptr(GDT + u64::from(TSS_SEL)), rax).unwrap();
    a.mov(eax, u32::from(TSS_SEL)).unwrap();
    a.ltr(ax).unwrap();
    a.mov(word_ptr(TSS + 0x66), u32::from(MAP)).unwrap();
    a.mov(byte_ptr(TSS + u64::from(MAP) + 0x7e), 0xff).unwrap();
    a.mov(byte_ptr(TSS + u64::from(MAP) + 0x7f), 0xf0).unwrap();
    a.push(i32::from(USER_DS)).unwrap();
    a.push(USER_STACK as i32).unwrap();
    a.push(2i32).unwrap();
    a.push(i32::from(USER_CS)).unwrap();
    a.lea(rax, ptr(user_start)).unwrap();
    a.push(rax).unwrap();
    a.iretq().unwrap();
    a.set_label(&mut user_start).unwrap();
    user(&mut a);
    a.hlt().unwrap();
    data.extend(a.assemble(CODE).unwrap());
    data
}

/// The seeds: (name, input, port writes the run must show in order).
fn cpu_seeds() -> Vec<(&'static str, Vec<u8>, Vec<(u16, u64)>)> {
    let sizes = cpu_seed(0xfff, |a| {
        a.mov(eax, 0x4433_2211u32).unwrap();
        a.mov(edx, 0x3f8u32).unwrap();
        a.out(dx, al).unwrap();
        a.out(dx, ax).unwrap();
        a.out(dx, eax).unwrap();
        a.mov(edx, 0x3f7u32).unwrap();
        a.out(dx, ax).unwrap(); // 0x3f7 denied: #GP
        a.out(dx, al).unwrap();
    });
    let strings = cpu_seed(0xfff, |a| {
        a.mov(edx, 0x3f8u32).unwrap();
        a.mov(ecx, 2u32).unwrap();
        a.mov(esi, CODE as u32).unwrap();
        a.rep().outsb().unwrap();
        a.in_(al, dx).unwrap();
        a.mov(edx, 0x3fau32).unwrap();
        a.in_(ax, dx).unwrap();
        a.out(dx, al).unwrap();
        a.mov(edx, 0x3fbu32).unwrap();
        a.in_(ax, dx).unwrap(); // 0x3fc denied: #GP
        a.out(dx, al).unwrap();
    });
    // Limit 0x68 + 0x7f: bitmap byte 0x7f (port 0x3f8) is the last inside the TSS, so the
    // second byte read for it is outside.
    let limit = cpu_seed(u16::from(MAP) + 0x7f, |a| {
        a.mov(eax, 0x55u32).unwrap();
        a.mov(edx, 0x3e8u32).unwrap();
        a.out(dx, al).unwrap();
        a.mov(edx, 0x3f8u32).unwrap();
        a.out(dx, al).unwrap(); // beyond the limit: #GP
    });
    vec![
        ("io-bitmap-sizes", sizes, vec![(0x3f8, 0x11), (0x3f8, 0x2211), (0x3f8, 0x4433_2211)]),
        ("io-bitmap-strings-and-in", strings, vec![(0x3fa, 0xff)]),
        ("io-bitmap-limit", limit, vec![(0x3e8, 0x55)]),
    ]
}

#[test]
fn fuzz_seeds_do_user_port_io_through_the_bitmap() {
    let mut w = common::fuzz_cpu::world();
    for (name, data, want) in cpu_seeds() {
        common::fuzz_cpu::run(&mut w, &data);
        let pio = w.g.ops.pio.lock().unwrap().clone();
        let io: Vec<(u16, u64)> = pio.iter().copied().filter(|(p, _)| (0x3e0..0x400).contains(p)).collect();
        let outs: Vec<(u16, u64)> =
            io.iter().copied().filter(|(p, _)| *p != 0x3f8 || name != "io-bitmap-strings-and-in").collect();
        assert_eq!(outs, want, "{name}");
        if name == "io-bitmap-strings-and-in" {
            assert_eq!(io.iter().filter(|(p, _)| *p == 0x3f8).count(), 2, "REP OUTSB wrote both bytes");
        }
        assert_eq!(pio.last().map(|w| w.0), Some(DONE_PORT), "{name}: the fault ended the case");
    }
}

/// `fuzz/seeds/cpu` holds exactly what `cpu_seeds` generates. Regenerate with
/// `VMR_WRITE_FUZZ_SEEDS=1 cargo test -p vmr-emu --test io_bitmap seed_files`.
#[test]
fn seed_files_match_the_generator() {
    common::check_seed_files(cpu_seeds().into_iter().map(|(name, data, _)| (name, data)));
}
