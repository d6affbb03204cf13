//! Random instruction bytes must never panic the emulator: only guest exceptions (delivered
//! through IDT/IVT gates that end the case), halts and shutdowns are allowed. Long mode with
//! page tables, 32-bit protected mode and real mode.

mod common;

use common::*;
use iced_x86::code_asm::*;
use vmr_emu::StopReason;

const HANDLER64: u64 = 0xa000;
const HANDLER32: u64 = 0xa100;
const HANDLER16: u64 = 0xa200;
const IDT32: u64 = 0x6800;

/// Snapshot of the low 64 KiB (tables, handlers) restored before every case.
fn snapshot(g: &Guest) -> Vec<u8> {
    use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
    let mut v = vec![0u8; 0x10000];
    g.mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

fn setup() -> Guest {
    let mut g = Guest::new();
    g.long_mode();
    let finish = |a: &mut CodeAssembler| {
        a.mov(edx, DONE_PORT as u32).unwrap();
        a.out(dx, al).unwrap();
        a.hlt().unwrap();
    };
    g.asm(64, HANDLER64, finish);
    g.asm(32, HANDLER32, finish);
    g.asm(16, HANDLER16, finish);
    for v in 0..=255u8 {
        g.set_gate64(v, HANDLER64, (v % 3 == 0) as u8, 3);
        // 32-bit interrupt gate, DPL 3.
        let lo = (HANDLER32 & 0xffff) | ((CODE32 as u64) << 16) | (0xeeu64 << 40) | ((HANDLER32 >> 16) << 48);
        g.write_u64(IDT32 + 8 * v as u64, lo);
        // Real-mode IVT (at 0x0..0x400) -> 0x0a20:0000.
        g.write(4 * v as u64, &[0, 0, 0x20, 0x0a]);
    }
    g
}

fn reset(g: &mut Guest, mode: u64, rng: &mut Rng, low: &[u8], code: &[u8]) {
    g.write(0, low);
    g.write(CODE, code);
    g.engine.notify_write(0, 0x10000);
    g.engine.notify_write(CODE, code.len());
    g.ops.pio.lock().unwrap().clear();
    g.ops.mmio.lock().unwrap().clear();
    let c = g.cpu();
    c.halted = false;
    c.shutdown = false;
    c.int_shadow = false;
    c.flags.set(2 | (rng.next() & 0xcd5));
    c.dr = [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400];
    for r in c.gpr.iter_mut() {
        *r = match rng.next() % 4 {
            0 => rng.next() % 0x40_0000,
            1 => rng.next() % 64,
            _ => rng.next(),
        };
    }
    c.gpr[4] = STACK_TOP - (rng.next() % 64) * 8;
    match mode {
        0 => g.long_mode_regs(),
        1 => g.protected_mode_flat(IDT32),
        _ => {
            g.real_mode_reset();
            g.cpu().gpr[4] = 0x9000;
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let cases: u64 =
        std::env::var("VMR_EMU_RANDOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let mut g = setup();
    let low = snapshot(&g);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut counts = [0u64; 4];
    for n in 0..cases {
        let mut code = [0u8; 48];
        for chunk in code.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let mode = match n % 8 {
            0 => 1,
            1 => 2,
            _ => 0,
        };
        reset(&mut g, mode, &mut rng, &low, &code);
        let r = g.engine.run(48);
        counts[match r {
            StopReason::Kicked => 0,
            StopReason::Halt => 1,
            StopReason::Shutdown => 2,
            StopReason::Budget => 3,
        }] += 1;
    }
    eprintln!(
        "random bytes: {cases} cases: handler reached {}, halted {}, shutdown {}, budget {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    // Most random sequences fault quickly into a handler.
    assert!(counts[0] > cases / 2, "{counts:?}");
}
