//! Locked read-modify-writes are atomic across vCPU threads sharing guest memory.

mod common;

use std::sync::Arc;

use common::*;
use iced_x86::code_asm::*;
use vmr_emu::cpu::Cpu;
use vmr_emu::mem::Memory;
use vmr_emu::{Engine, StopReason};
use vmr_hypervisor::VmOps;

const COUNTER: u64 = 0x30000;
const ITER: u32 = 200_000;

#[test]
fn locked_increments_from_two_vcpus_are_not_lost() {
    let mut g = Guest::new();
    g.long_mode();
    g.asm(64, CODE, |a| {
        let mut top = a.create_label();
        let mut spin = a.create_label();
        a.mov(rbx, COUNTER).unwrap();
        a.mov(ecx, ITER).unwrap();
        a.set_label(&mut top).unwrap();
        a.lock().inc(dword_ptr(rbx)).unwrap();
        a.mov(eax, 2u32).unwrap();
        a.lock().xadd(dword_ptr(rbx + 8), eax).unwrap();
        // CAS loop adding 3 at +16.
        a.set_label(&mut spin).unwrap();
        a.mov(eax, dword_ptr(rbx + 16)).unwrap();
        a.lea(edx, dword_ptr(rax + 3)).unwrap();
        a.lock().cmpxchg(dword_ptr(rbx + 16), edx).unwrap();
        a.jne(spin).unwrap();
        a.xchg(qword_ptr(rbx + 24), rsi).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let second = {
        let memory = Memory::new(&g.mem, Some(g.ops.clone() as Arc<dyn VmOps>)).unwrap();
        let mut e = Engine::new(Cpu::new(memory, 1));
        let c = &mut e.cpu;
        let src = &g.engine.cpu;
        (c.cr0, c.cr3, c.cr4, c.efer, c.seg, c.gdtr, c.idtr, c.tr) =
            (src.cr0, src.cr3, src.cr4, src.efer, src.seg, src.gdtr, src.idtr, src.tr);
        c.rip = CODE;
        c.gpr[4] = STACK_TOP - 0x800;
        c.update_mode();
        e
    };
    let t = std::thread::spawn(move || {
        let mut e = second;
        e.run(u64::MAX)
    });
    assert_eq!(g.engine.run(u64::MAX), StopReason::Halt);
    assert_eq!(t.join().unwrap(), StopReason::Halt);
    let total = 2 * ITER as u64;
    assert_eq!(g.read_u64(COUNTER) & 0xffff_ffff, total);
    assert_eq!(g.read_u64(COUNTER + 8) & 0xffff_ffff, 2 * total);
    assert_eq!(g.read_u64(COUNTER + 16) & 0xffff_ffff, 3 * total);
}

#[test]
fn locked_cmpxchg16b_is_atomic() {
    let mut g = Guest::new();
    g.long_mode();
    g.write_u64(COUNTER + 32, 0);
    g.write_u64(COUNTER + 40, 0);
    g.asm(64, CODE, |a| {
        let mut spin = a.create_label();
        a.mov(rsi, COUNTER + 32).unwrap();
        a.mov(edi, 1000u32).unwrap();
        a.xor(eax, eax).unwrap();
        a.xor(edx, edx).unwrap();
        a.set_label(&mut spin).unwrap();
        a.lea(rbx, qword_ptr(rax + 1)).unwrap();
        a.lea(rcx, qword_ptr(rdx + 1)).unwrap();
        a.lock().cmpxchg16b(xmmword_ptr(rsi)).unwrap();
        a.jne(spin).unwrap();
        a.dec(edi).unwrap();
        a.jnz(spin).unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(g.run(), StopReason::Halt);
    assert_eq!((g.read_u64(COUNTER + 32), g.read_u64(COUNTER + 40)), (1000, 1000));
}
