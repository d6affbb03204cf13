//! The translator tier (`vmr_emu::jit`) against the interpreter: random blocks of the forms it
//! translates (and of some it leaves to handler calls), faults in the middle of a translated
//! block, self-modifying and DMA-written code, a page remapped under running code, interrupts
//! during a hot loop, 32-bit code with segment bases. Each guest runs on both tiers from the
//! same state and must end in the same state (registers, RFLAGS, RIP, CR2, retired
//! instructions, memory), and where the answer is known, in that answer.

mod common;

use common::{Guest, Rng, CODE, DONE_PORT, STACK_TOP};
use iced_x86::code_asm::*;
use vmr_emu::engine::{InterruptSource, IrqEvent};
use vmr_emu::StopReason;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

/// Data the random blocks read and write: 8 bytes before a page end, so accesses cross pages.
const DATA: u64 = 0x10_0ff8;
/// Not mapped (the harness maps the first 1 GiB): accesses there raise #PF.
const UNMAPPED: u64 = 0x8000_0000;
const HANDLER: u64 = CODE + 0x8000;

fn out(a: &mut CodeAssembler, port: u8) {
    a.out(port as u32, al).unwrap();
}

/// Everything a guest can observe, plus the retired-instruction count.
#[derive(Debug, PartialEq, Eq)]
struct State {
    gpr: [u64; 16],
    rflags: u64,
    rip: u64,
    cr2: u64,
    icount: u64,
    data: Vec<u8>,
    stack: Vec<u8>,
}

fn state(g: &mut Guest) -> State {
    let mut data = vec![0u8; 0x2000];
    g.mem.read_slice(&mut data, GuestAddress(DATA - 0x1000)).unwrap();
    let mut stack = vec![0u8; 0x200];
    g.mem.read_slice(&mut stack, GuestAddress(STACK_TOP - 0x200)).unwrap();
    let c = g.cpu();
    State { gpr: c.gpr, rflags: c.rflags(), rip: c.rip, cr2: c.cr2, icount: c.icount, data, stack }
}

/// A 64-bit guest built by `setup`, run to the done port on the interpreter and on the
/// translator (`hot`: executions before translation); both final states.
fn both(hot: u32, setup: &dyn Fn(&mut Guest)) -> (State, State, Guest) {
    let run = |jit: Option<u32>| {
        let mut g = Guest::new();
        g.long_mode();
        g.engine.set_jit(jit).unwrap();
        g.set_gate64(13, HANDLER, 0, 0);
        g.set_gate64(14, HANDLER, 0, 0);
        g.asm(64, HANDLER, |a| {
            a.mov(al, 0xeeu32).unwrap();
            out(a, DONE_PORT as u8);
        });
        setup(&mut g);
        assert_eq!(g.run(), StopReason::Kicked, "the guest must reach the done port");
        (state(&mut g), g)
    };
    let (interp, _) = run(None);
    let (jit, g) = run(Some(hot));
    (interp, jit, g)
}

const R64: [AsmRegister64; 12] = [rax, rcx, rdx, rbx, rsi, rdi, r8, r9, r10, r11, r12, r13];
const R32: [AsmRegister32; 12] = [eax, ecx, edx, ebx, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d];

fn alu64(a: &mut CodeAssembler, k: u64, d: AsmRegister64, s: AsmRegister64) {
    match k % 7 {
        0 => a.add(d, s),
        1 => a.sub(d, s),
        2 => a.and(d, s),
        3 => a.or(d, s),
        4 => a.xor(d, s),
        5 => a.cmp(d, s),
        _ => a.test(d, s),
    }
    .unwrap()
}

fn alu32_imm(a: &mut CodeAssembler, k: u64, d: AsmRegister32, i: i32) {
    match k % 7 {
        0 => a.add(d, i),
        1 => a.sub(d, i),
        2 => a.and(d, i),
        3 => a.or(d, i),
        4 => a.xor(d, i),
        5 => a.cmp(d, i),
        _ => a.test(d, i),
    }
    .unwrap()
}

fn alu_mem(a: &mut CodeAssembler, k: u64, wide: bool, d: usize, m: AsmMemoryOperand) {
    if wide {
        let d = R64[d];
        match k % 6 {
            0 => a.add(d, qword_ptr(m)),
            1 => a.sub(d, qword_ptr(m)),
            2 => a.and(d, qword_ptr(m)),
            3 => a.or(d, qword_ptr(m)),
            4 => a.xor(d, qword_ptr(m)),
            _ => a.cmp(d, qword_ptr(m)),
        }
    } else {
        let d = R32[d];
        match k % 6 {
            0 => a.add(d, dword_ptr(m)),
            1 => a.sub(d, dword_ptr(m)),
            2 => a.and(d, dword_ptr(m)),
            3 => a.or(d, dword_ptr(m)),
            4 => a.xor(d, dword_ptr(m)),
            _ => a.cmp(d, dword_ptr(m)),
        }
    }
    .unwrap()
}

fn jcc(a: &mut CodeAssembler, cc: u64, l: CodeLabel) {
    match cc % 16 {
        0 => a.jo(l),
        1 => a.jno(l),
        2 => a.jb(l),
        3 => a.jae(l),
        4 => a.je(l),
        5 => a.jne(l),
        6 => a.jbe(l),
        7 => a.ja(l),
        8 => a.js(l),
        9 => a.jns(l),
        10 => a.jp(l),
        11 => a.jnp(l),
        12 => a.jl(l),
        13 => a.jge(l),
        14 => a.jle(l),
        _ => a.jg(l),
    }
    .unwrap()
}

/// One random instruction (or a compare-and-branch pair) of the translated and called forms.
fn random_ins(a: &mut CodeAssembler, r: &mut Rng, faults: bool) {
    let (d, s) = (r.below(12) as usize, r.below(12) as usize);
    let m = rbp + (r.below(24) as i32 - 8);
    let imm = r.next();
    match r.below(if faults { 30 } else { 29 }) {
        0 => a.mov(R64[d], R64[s]).unwrap(),
        1 => a.mov(R32[d], R32[s]).unwrap(),
        2 => a.mov(R64[d], imm).unwrap(),
        3 => a.mov(R32[d], imm as u32).unwrap(),
        4 | 5 => alu64(a, imm, R64[d], R64[s]),
        6 => alu32_imm(a, imm >> 8, R32[d], imm as i32),
        7 => alu_mem(a, imm, true, d, m),
        8 => alu_mem(a, imm, false, d, m),
        9 => a.mov(R64[d], qword_ptr(m)).unwrap(),
        10 => a.mov(R32[d], dword_ptr(m)).unwrap(),
        11 => a.mov(qword_ptr(m), R64[s]).unwrap(),
        12 => a.mov(dword_ptr(m), R32[s]).unwrap(),
        13 => a.mov(qword_ptr(m), imm as i32).unwrap(),
        14 => a.lea(R64[d], qword_ptr(R64[s] + R64[d] * 4 + (imm as i32 >> 8))).unwrap(),
        15 => a.lea(R32[d], dword_ptr(R64[s] + 0x7fff_fff0)).unwrap(),
        16 => if imm & 1 == 0 { a.inc(R32[d]) } else { a.dec(R64[d]) }.unwrap(),
        17 => a.shl(R64[d], (imm % 64) as u32).unwrap(),
        18 => a.adc(R64[d], R64[s]).unwrap(),
        19 => a.movzx(R32[d], byte_ptr(m)).unwrap(),
        20 => a.cmovb(R64[d], R64[s]).unwrap(),
        21 | 22 => {
            // A compare (or ALU op) and a forward conditional branch over one instruction.
            let mut l = a.create_label();
            if imm & 1 == 0 {
                alu64(a, imm >> 1, R64[d], R64[s]);
            } else {
                alu32_imm(a, imm >> 1, R32[d], (imm >> 20) as i32);
            }
            jcc(a, imm >> 40, l);
            a.add(R64[s], 1).unwrap();
            a.set_label(&mut l).unwrap();
            a.nop().unwrap();
        }
        23 => a.add(ax, cx).unwrap(),
        24 => {
            if imm & 1 == 0 {
                a.push(R64[s]).unwrap();
                a.pop(R64[d]).unwrap();
            } else {
                a.pop(R64[d]).unwrap();
                a.push(R64[s]).unwrap();
            }
        }
        25 => match imm % 4 {
            0 => a.movzx(R32[d], word_ptr(m)).unwrap(),
            1 => a.movsx(R64[d], byte_ptr(m)).unwrap(),
            2 => a.movsxd(R64[d], dword_ptr(m)).unwrap(),
            _ => a.movsx(R32[d], word_ptr(m)).unwrap(),
        },
        26 => match imm % 3 {
            0 => a.movzx(R32[d], [al, cl, dl, bl][s % 4]).unwrap(),
            1 => a.movsx(R64[d], [ax, cx, dx, bx][s % 4]).unwrap(),
            _ => a.movsxd(R64[d], R32[s]).unwrap(),
        },
        27 | 28 => {
            let c = [0, 1, 1, 2, 31, 63, (imm >> 8) as u32 % 64][(imm % 7) as usize];
            match (imm >> 4) % 6 {
                0 => a.shl(R64[d], c),
                1 => a.shr(R64[d], c),
                2 => a.sar(R64[d], c),
                3 => a.shl(R32[d], c),
                4 => a.shr(R32[d], c),
                _ => a.sar(R32[d], c),
            }
            .unwrap()
        }
        _ => match imm % 3 {
            0 => a.mov(R64[d], qword_ptr(r14 + 8)).unwrap(),
            1 => a.mov(dword_ptr(r14), R32[s]).unwrap(),
            _ => alu_mem(a, imm, true, d, r14 + 0),
        },
    }
}

/// Random blocks of translated and called forms, looping three times, with random registers,
/// memory and flags; one block in four contains an access that raises #PF midway.
#[test]
fn random_blocks_match_the_interpreter() {
    let cases = std::env::var("VMR_EMU_JIT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400u64);
    for seed in 1..=cases {
        for hot in [1, 2] {
            let setup = |g: &mut Guest| {
                let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let faults = r.below(4) == 0;
                let n = 1 + r.below(40);
                g.asm(64, CODE, |a| {
                    let mut top = a.create_label();
                    a.mov(r15d, 3u32).unwrap();
                    a.set_label(&mut top).unwrap();
                    for _ in 0..n {
                        random_ins(a, &mut r, faults);
                    }
                    a.dec(r15d).unwrap();
                    a.jne(top).unwrap();
                    a.mov(al, 0x11u32).unwrap();
                    out(a, DONE_PORT as u8);
                });
                let c = g.cpu();
                for (i, v) in c.gpr.iter_mut().enumerate() {
                    *v = if i == 4 { STACK_TOP } else { r.next() >> (r.below(4) * 16) };
                }
                c.gpr[5] = DATA;
                c.gpr[14] = UNMAPPED;
                c.flags.set(r.next() & 0x8d5);
                let data: Vec<u8> = (0..0x2000).map(|_| r.next() as u8).collect();
                g.write(DATA - 0x1000, &data);
            };
            let (i, j, _) = both(hot, &setup);
            assert_eq!(i, j, "seed {seed}, hot {hot}: the tiers disagree");
        }
    }
}

/// A fault in the middle of a translated block: RIP of the faulting instruction, the
/// registers and flags as the instructions before it left them, nothing of it or after it.
#[test]
fn fault_midblock_leaves_the_interpreters_state() {
    let setup = |g: &mut Guest| {
        g.asm(64, CODE, |a| {
            let mut top = a.create_label();
            a.mov(r15d, 2u32).unwrap();
            a.mov(r14, UNMAPPED - 0x10_0000).unwrap();
            a.set_label(&mut top).unwrap();
            a.mov(eax, 5u32).unwrap();
            a.add(rax, 7).unwrap(); // flags of 5 + 7
            a.mov(qword_ptr(rbp), rax).unwrap();
            a.add(r14, 0x8_0000).unwrap(); // reaches UNMAPPED in the second iteration
            a.mov(rbx, 0x1234u64).unwrap();
            a.mov(rcx, qword_ptr(r14 + 0x8_0000)).unwrap(); // faults in the second round
            a.mov(rdx, 99u64).unwrap();
            a.sub(rdx, 1).unwrap();
            a.dec(r15d).unwrap();
            a.jne(top).unwrap();
            out(a, DONE_PORT as u8);
        });
        g.cpu().gpr[5] = DATA;
    };
    let (i, j, g) = both(1, &setup);
    assert_eq!(i, j);
    // The handler ran with the faulting MOV's RIP pushed, CR2 its address, RBX written, RDX
    // not; the flags pushed are those of `add r14` (no carry, not zero).
    let jit = g.engine.jit.as_ref().unwrap();
    assert!(jit.translated > 0 && jit.native_ops > 0, "the loop ran translated");
    assert_eq!(j.cr2, UNMAPPED);
    assert_eq!(j.gpr[3], 0x1234);
    assert_eq!(j.gpr[1], 0);
    let pushed_rip = u64::from_le_bytes(j.stack[0x200 - 40..0x200 - 32].try_into().unwrap());
    let mut code = [0u8; 15];
    g.mem.read_slice(&mut code, GuestAddress(pushed_rip)).unwrap();
    let ins = iced_x86::Decoder::with_ip(64, &code, pushed_rip, 0).decode();
    assert_eq!(ins.to_string(), "mov rcx,[r14+80000h]", "the pushed RIP is the faulting MOV's");
}

/// Code the loop itself rewrites through a translated 32-bit store is never run stale.
#[test]
fn self_modifying_code_in_a_hot_loop() {
    let f = CODE + 0x1000;
    let setup = |g: &mut Guest| {
        g.asm(64, f, |a| {
            a.mov(eax, 1u32).unwrap(); // b8 imm32: the immediate is at f + 1
            a.ret().unwrap();
        });
        g.asm(64, CODE, |a| {
            let mut top = a.create_label();
            a.mov(rsi, f).unwrap();
            a.xor(edi, edi).unwrap();
            a.mov(ecx, 300u32).unwrap();
            a.set_label(&mut top).unwrap();
            a.call(rsi).unwrap();
            a.add(rdi, rax).unwrap();
            a.mov(dword_ptr(rsi + 1), ecx).unwrap(); // next call returns this counter
            a.dec(ecx).unwrap();
            a.jne(top).unwrap();
            out(a, DONE_PORT as u8);
        });
    };
    let (i, j, _) = both(1, &setup);
    assert_eq!(i, j);
    // 1 + 300 + 299 + ... + 2
    assert_eq!(j.gpr[7], 1 + (2..=300).sum::<u64>());
}

/// Stores a function returning `v` at `gpa`.
fn returns(g: &Guest, gpa: u64, v: u32) {
    g.asm(64, gpa, |a| {
        a.mov(eax, v).unwrap();
        a.ret().unwrap();
    });
}

/// Code that calls the function at `f` 200 times (R8 counting down), summing its results in
/// RDI, and runs `change` once, right after the call with R8 = 100.
fn call_loop(g: &Guest, f: u64, change: impl FnOnce(&mut CodeAssembler)) {
    g.asm(64, CODE, |a| {
        let (mut top, mut skip) = (a.create_label(), a.create_label());
        a.mov(rsi, f).unwrap();
        a.xor(edi, edi).unwrap();
        a.mov(r8d, 200u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(rsi).unwrap();
        a.add(rdi, rax).unwrap();
        a.cmp(r8d, 100).unwrap();
        a.jne(skip).unwrap();
        change(a);
        a.set_label(&mut skip).unwrap();
        a.dec(r8d).unwrap();
        a.jne(top).unwrap();
        out(a, DONE_PORT as u8);
    });
}

/// Calls with R8 = 200..=100 return 1 (the change comes after the call at 100), 99..=1 return 2.
const CHANGED_SUM: u64 = 101 + 2 * 99;

/// Code a device writes behind the CPU's back (DMA) is seen after the next serializing
/// instruction, on the translator as on the interpreter.
#[test]
fn dma_written_code_is_never_run_stale() {
    let f = CODE + 0x2000;
    let setup = |g: &mut Guest| {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(eax, 2u32).unwrap();
        a.ret().unwrap();
        *g.ops.dma.lock().unwrap() = Some((0xf5, f, a.assemble(f).unwrap()));
        returns(g, f, 1);
        call_loop(g, f, |a| {
            out(a, 0xf5); // the device rewrites F
            a.xor(eax, eax).unwrap();
            a.cpuid().unwrap();
        });
    };
    let (i, j, _) = both(1, &setup);
    assert_eq!(i, j);
    assert_eq!(j.gpr[7], CHANGED_SUM);
}

/// A page remapped under running code (PDE rewritten, INVLPG): the translation made for the
/// old mapping does not run for the new one.
#[test]
fn page_remapped_under_running_code() {
    // Virtual 2 MiB + 512 KiB is physical 2.5 MiB, then 512 KiB (PD entry 1 rebased to 0).
    let (virt, old, new) = (0x28_0000u64, 0x28_0000u64, 0x8_0000u64);
    let setup = |g: &mut Guest| {
        returns(g, old, 1);
        returns(g, new, 2);
        call_loop(g, virt, |a| {
            a.mov(eax, 0x83u32).unwrap();
            a.mov(qword_ptr(0x3008u64), rax).unwrap();
            a.invlpg(ptr(rsi)).unwrap();
        });
    };
    let (i, j, _) = both(1, &setup);
    assert_eq!(i, j);
    assert_eq!(j.gpr[7], CHANGED_SUM);
}

/// Raises vector 0x30 at every `k`-th block boundary the CPU polls at.
struct Storm {
    polls: u64,
    k: u64,
}

impl InterruptSource for Storm {
    fn pending(&self) -> bool {
        false
    }
    fn acknowledge(&mut self) -> Option<u8> {
        None
    }
    fn take_event(&mut self, if_set: bool) -> Option<IrqEvent> {
        self.polls += 1;
        (if_set && self.polls.is_multiple_of(self.k)).then_some(IrqEvent::Vector(0x30))
    }
}

/// An interrupt storm during a hot translated loop: interrupts are taken between blocks, the
/// handler's count and the loop's result are the interpreter's.
#[test]
fn interrupt_storm_during_a_hot_loop() {
    let counter = 0x30_0000u64;
    let setup = |g: &mut Guest| {
        g.engine.irq = Some(Box::new(Storm { polls: 0, k: 7 }));
        g.set_gate64(0x30, CODE + 0x3000, 0, 0);
        g.asm(64, CODE + 0x3000, |a| {
            a.mov(r9, counter).unwrap();
            a.add(qword_ptr(r9), 1).unwrap();
            a.iretq().unwrap();
        });
        g.asm(64, CODE, |a| {
            let mut top = a.create_label();
            a.sti().unwrap();
            a.xor(eax, eax).unwrap();
            a.mov(ecx, 20_000u32).unwrap();
            a.set_label(&mut top).unwrap();
            a.add(rax, rcx).unwrap();
            a.xor(rax, 0x55).unwrap();
            a.dec(ecx).unwrap();
            a.jne(top).unwrap();
            a.cli().unwrap();
            out(a, DONE_PORT as u8);
        });
    };
    let (i, j, g) = both(1, &setup);
    assert_eq!(i, j);
    let taken = g.read_u64(counter);
    assert!(taken > 1000, "interrupts were taken during the loop ({taken})");
    let mut want = 0u64;
    for c in (1..=20_000u64).rev() {
        want = (want + c) ^ 0x55;
    }
    assert_eq!(j.gpr[0], want);
}

/// 32-bit protected-mode code with a data segment base: the translated memory operands add
/// the base and wrap at 4 GiB like the interpreter's.
#[test]
fn protected_mode_segment_bases() {
    let run = |jit: Option<u32>| {
        let mut g = Guest::new();
        g.long_mode();
        g.engine.set_jit(jit).unwrap();
        g.protected_mode_flat(0x4000);
        g.cpu().seg[3].base = 0x1000; // DS
        g.asm(32, CODE, |a| {
            let mut top = a.create_label();
            a.mov(ecx, 500u32).unwrap();
            a.mov(ebx, 0x20_0000u32).unwrap();
            a.set_label(&mut top).unwrap();
            a.mov(eax, dword_ptr(ebx + ecx * 4 + 4)).unwrap();
            a.add(eax, ecx).unwrap();
            a.mov(dword_ptr(ebx + ecx * 4), eax).unwrap();
            a.dec(ecx).unwrap();
            a.jne(top).unwrap();
            a.mov(eax, dword_ptr(ebx + 4)).unwrap();
            out(a, 0xf1);
            out(a, DONE_PORT as u8);
        });
        assert_eq!(g.run(), StopReason::Kicked);
        (g.port_writes(0xf1), g.cpu().icount, g.engine.jit.as_ref().map_or(0, |j| j.native_ops))
    };
    let (i, j) = (run(None), run(Some(1)));
    assert_eq!((&i.0, i.1), (&j.0, j.1));
    assert!(j.2 > 0);
    // [base + 0x200000 + 4*c] = [.. 4*c + 4] + c, from zeroed memory: [.. + 4] = 1 + .. + 500.
    assert_eq!(j.0, vec![(1..=500u64).sum::<u64>() & 0xff]);
}

/// Delivers vector 0x30 once, when the CPU polls with IF set, and clears the flag it raised.
struct Once(std::sync::Arc<std::sync::atomic::AtomicU8>, bool);

impl InterruptSource for Once {
    fn pending(&self) -> bool {
        !self.1
    }
    fn acknowledge(&mut self) -> Option<u8> {
        self.1 = true;
        self.0.store(0, std::sync::atomic::Ordering::SeqCst);
        Some(0x30)
    }
}

/// A translated loop that never leaves its block still stops for the instruction budget, a
/// kick from another thread and an interrupt raised from another thread (the engine's checks
/// between blocks, which such a loop makes inline).
#[test]
fn endless_translated_loop_stops_for_budget_kick_and_interrupt() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    let mut g = Guest::new();
    g.long_mode();
    g.engine.set_jit(Some(1)).unwrap();
    let flag = Arc::new(AtomicU8::new(0));
    g.engine.irq = Some(Box::new(Once(flag.clone(), false)));
    g.engine.irq_flag = Some(flag.clone());
    g.set_gate64(0x30, CODE + 0x1000, 0, 0);
    g.asm(64, CODE + 0x1000, |a| {
        a.mov(al, 0x30u32).unwrap();
        out(a, 0xf1);
        out(a, DONE_PORT as u8);
        a.hlt().unwrap();
    });
    g.asm(64, CODE, |a| {
        let mut top = a.create_label();
        a.sti().unwrap();
        a.set_label(&mut top).unwrap();
        a.add(rbx, 1).unwrap();
        a.jmp(top).unwrap();
    });
    // Budget: the loop stops within one iteration of it.
    assert_eq!(g.engine.run(1_000_000), StopReason::Budget);
    let n = g.cpu().icount;
    assert!((1_000_000..=1_000_002).contains(&n), "retired {n}");
    assert!(g.engine.jit.as_ref().unwrap().translated > 0);
    // Kick from another thread.
    let kick = g.engine.kick.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        kick.store(true, Ordering::SeqCst);
    });
    assert_eq!(g.engine.run(u64::MAX), StopReason::Kicked);
    t.join().unwrap();
    assert!(g.port_writes(0xf1).is_empty());
    // An interrupt raised from another thread is taken: its handler ends the run.
    let f = flag.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        f.store(1, Ordering::SeqCst);
    });
    assert_eq!(g.engine.run(u64::MAX), StopReason::Kicked);
    t.join().unwrap();
    assert_eq!(g.port_writes(0xf1), vec![0x30]);
    // RBX counted every retired ADD of the loop, which kept running until the interrupt: the
    // rest is the STI and the handler's MOV and two OUTs (the kick stops it before the HLT).
    let (sum, icount) = (g.engine.cpu.gpr[3], g.engine.cpu.icount);
    assert!(sum > 1_000_000 && icount == sum * 2 + 4, "rbx {sum} icount {icount}");
}
