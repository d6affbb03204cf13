//! The `cpu` fuzz target's harness (`fuzz/fuzz_targets/cpu.rs`), here so that tests can run
//! its seed inputs. Input: [mode][16 x u64 registers][n][n x (u64 table slot, u64 entry)]
//! [code...]. The table slots overwrite entries of the identity-mapped long-mode tables (PML4
//! at 0x1000, PDPT at 0x2000, PD at 0x3000), so entries get random flags, reserved bits,
//! huge-page bits, and point at other tables, the code page or outside RAM.

use super::*;

const HANDLER: u64 = 0xa000;
const LOW: usize = 0x10000;

/// The guest every case runs in, and its low 64 KiB (tables, handlers) as set up.
pub struct World {
    pub g: Guest,
    low: Vec<u8>,
}

/// Long mode at CPL 0, every IDT/IVT vector leading to a handler that ends the case.
pub fn world() -> World {
    use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, HANDLER, |a| {
        use iced_x86::code_asm::*;
        a.mov(edx, DONE_PORT as u32).unwrap();
        a.out(dx, al).unwrap();
        a.hlt().unwrap();
    });
    for v in 0..=255u8 {
        g.set_gate64(v, HANDLER, (v % 3 == 0) as u8, 3);
        g.write(4 * v as u64, &[0, 0, 0x00, 0x0a]); // real-mode IVT -> 0a00:0000
    }
    let mut low = vec![0u8; LOW];
    g.mem.read_slice(&mut low, GuestAddress(0)).unwrap();
    World { g, low }
}

fn take_u64(data: &mut &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    u64::from_le_bytes(b)
}

/// Runs one input (decoded as the module doc says) for at most 500 instructions.
pub fn run(w: &mut World, mut data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    data = rest;
    let g = &mut w.g;
    g.write(0, &w.low);
    let mut regs = [0u64; 16];
    for r in regs.iter_mut() {
        *r = take_u64(&mut data);
    }
    let n = data.first().copied().unwrap_or(0) as usize % 32;
    data = data.get(1..).unwrap_or(&[]);
    for _ in 0..n {
        let slot = (take_u64(&mut data) & 0x5ff) as u64; // 1536 slots over the three tables
        let entry = take_u64(&mut data);
        g.write_u64(0x1000 + slot * 8, entry);
    }
    let code = &data[..data.len().min(256)];
    g.write(CODE, code);
    g.engine.notify_write(0, LOW);
    g.engine.notify_write(CODE, code.len().max(1));
    g.ops.pio.lock().unwrap().clear();
    g.ops.mmio.lock().unwrap().clear();
    match mode % 4 {
        0 | 1 => g.long_mode_regs(),
        2 => g.protected_mode_flat(0x6800),
        _ => g.real_mode_reset(),
    }
    let c = g.cpu();
    c.halted = false;
    c.shutdown = false;
    c.int_shadow = false;
    let sp = c.gpr[4];
    c.gpr = regs;
    c.gpr[4] = if mode & 4 == 0 { sp } else { regs[4] };
    c.flags.set(2 | (regs[0] & 0xcd5));
    let _ = g.engine.run(500);
}

/// A seed input for [`run`]: long mode at CPL 0 with the harness's RSP, all other registers
/// zero, no table changes, and `code` (at most 256 bytes) at `CODE`.
pub fn long_mode_seed(code: &[u8]) -> Vec<u8> {
    assert!(code.len() <= 256, "the harness runs at most 256 code bytes");
    let mut data = vec![0u8]; // mode 0
    data.extend_from_slice(&[0u8; 16 * 8]);
    data.push(0); // no table slots
    data.extend_from_slice(code);
    data
}
