//! Loop microbenchmark: instructions per second of the interpreter on a few guest loops.
//!
//! `cargo run --release -p vmr-emu --example mips [iterations]`

use std::sync::Arc;
use std::time::Instant;

use iced_x86::code_asm::*;
use vmr_emu::cpu::{Cpu, CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use vmr_emu::mem::Memory;
use vmr_emu::segment::parse_descriptor;
use vmr_emu::{Engine, StopReason};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::{GuestMemory, VmOps};

struct NoDevices;

impl VmOps for NoDevices {
    fn pio_read(&self, _: u16, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn pio_write(&self, _: u16, _: &[u8]) {}
    fn mmio_read(&self, _: u64, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

const CODE: u64 = 0x10000;

fn guest(body: impl FnOnce(&mut CodeAssembler)) -> Engine {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap();
    mem.write_obj(0x3003u64, GuestAddress(0x2000)).unwrap();
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(0x3000 + 8 * i)).unwrap();
    }
    let mut a = CodeAssembler::new(64).unwrap();
    body(&mut a);
    a.hlt().unwrap();
    mem.write_slice(&a.assemble(CODE).unwrap(), GuestAddress(CODE)).unwrap();
    let memory = Memory::new(&mem, Some(Arc::new(NoDevices) as Arc<dyn VmOps>)).unwrap();
    let mut cpu = Cpu::new(memory, 0);
    cpu.cr0 = CR0_PE | CR0_PG | CR0_ET;
    cpu.cr4 = CR4_PAE;
    cpu.cr3 = 0x1000;
    cpu.efer = EFER_LME | EFER_LMA;
    let code = parse_descriptor(0x00af_9b00_0000_ffff, 8);
    let data = parse_descriptor(0x00cf_9300_0000_ffff, 0x10);
    cpu.seg = [data, code, data, data, data, data];
    cpu.rip = CODE;
    cpu.gpr[4] = 0x80_0000;
    cpu.update_mode();
    Engine::new(cpu)
}

/// CPU time of this thread (the machine may be shared: wall time would mislead).
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn measure(name: &str, mut e: Engine) -> f64 {
    let (t, c) = (Instant::now(), thread_cpu_time());
    let r = e.run(u64::MAX);
    let (dt, dc) = (t.elapsed().as_secs_f64(), thread_cpu_time() - c);
    assert_eq!(r, StopReason::Halt);
    let mips = e.cpu.icount as f64 / dc / 1e6;
    println!("{name:<28} {:>11} insns, {dc:>6.3} s CPU ({dt:>6.3} s wall): {mips:>6.1} MIPS", e.cpu.icount);
    mips
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    let alu = guest(|a| {
        let mut top = a.create_label();
        a.mov(ecx, n).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(rax, rcx).unwrap();
        a.xor(rbx, rax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
    });
    let mem = guest(|a| {
        let mut top = a.create_label();
        let mut func = a.create_label();
        let mut start = a.create_label();
        a.jmp(start).unwrap();
        a.set_label(&mut func).unwrap();
        a.add(rax, rdx).unwrap();
        a.ret().unwrap();
        a.set_label(&mut start).unwrap();
        a.mov(ecx, n / 2).unwrap();
        a.mov(rsi, 0x40_0000u64).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(qword_ptr(rsi + rcx * 8 - 0x1000), rax).unwrap();
        a.mov(rdx, qword_ptr(rsi + 8)).unwrap();
        a.call(func).unwrap();
        a.cmp(rax, rdx).unwrap();
        a.setb(bl).unwrap();
        a.and(ecx, 0x0fff_ffffu32).unwrap();
        a.sub(ecx, 1u32).unwrap();
        a.jnz(top).unwrap();
    });
    println!("vmr-emu loop microbenchmark ({} iterations)", n);
    let a = measure("alu loop (4 insns/iter)", alu);
    let b = measure("load/store/call loop", mem);
    println!("geometric mean: {:.1} MIPS", (a * b).sqrt());
}
