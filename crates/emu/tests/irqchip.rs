//! Interrupt controllers end to end through the `vmr-hypervisor` traits: the LAPIC timer
//! waking HLT, an irqfd routed by the IOAPIC waking a halted vCPU, and INIT/SIPI start-up of an
//! application processor.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use iced_x86::code_asm::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmr_emu::cpu::Cpu;
use vmr_emu::EmuHypervisor;
use vmr_hypervisor::{Regs, SpecialRegs, Vcpu, VcpuExit, VcpuKicker, Vm, VmConfig, VmOps};

const APIC: u64 = 0xfee0_0000;
const IOAPIC: u64 = 0xfec0_0000;
/// The guest writes this port right before its HLT; its handler writes 0xf1.
const READY_PORT: u16 = 0xf0;
const HANDLED_PORT: u16 = 0xf1;

/// Records port writes with their time; the done port kicks the vCPU.
#[derive(Default)]
struct Ops {
    writes: Mutex<Vec<(u16, u64, Instant)>>,
    kicker: Mutex<Option<Arc<dyn VcpuKicker>>>,
}

impl Ops {
    fn times(&self, port: u16) -> Vec<Instant> {
        self.writes.lock().unwrap().iter().filter(|w| w.0 == port).map(|w| w.2).collect()
    }
}

impl VmOps for Ops {
    fn pio_read(&self, _: u16, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn pio_write(&self, port: u16, d: &[u8]) {
        let mut b = [0u8; 8];
        b[..d.len().min(8)].copy_from_slice(&d[..d.len().min(8)]);
        self.writes.lock().unwrap().push((port, u64::from_le_bytes(b), Instant::now()));
        if port == DONE_PORT {
            if let Some(k) = self.kicker.lock().unwrap().as_ref() {
                k.kick();
            }
        }
    }
    fn mmio_read(&self, _: u64, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

fn sregs_of(c: &Cpu) -> SpecialRegs {
    SpecialRegs {
        es: c.seg[0],
        cs: c.seg[1],
        ss: c.seg[2],
        ds: c.seg[3],
        fs: c.seg[4],
        gs: c.seg[5],
        tr: c.tr,
        ldt: c.ldtr,
        gdt: c.gdtr,
        idt: c.idtr,
        cr0: c.cr0,
        cr2: 0,
        cr3: c.cr3,
        cr4: c.cr4,
        cr8: 0,
        efer: c.efer,
        apic_base: APIC | 0x900,
    }
}

/// A long-mode guest (tables from the common harness, the first 4 GiB identity-mapped so the
/// APIC pages are reachable) on an emu VM with `vcpus` vCPUs; vCPU 0 starts at `CODE`.
type Setup = (Guest, Arc<vmr_emu::EmuVm>, Vec<Box<dyn Vcpu>>, Arc<Ops>);

fn setup(vcpus: u32) -> Setup {
    let mut g = Guest::new();
    g.long_mode();
    for gib in 1..4u64 {
        g.write_u64(0x2000 + 8 * gib, (gib << 30) | 0x83);
    }
    let vm = EmuHypervisor::new().create_emu_vm(&VmConfig { vcpus }).unwrap();
    vm.set_memory(&g.mem).unwrap();
    let ops = Arc::new(Ops::default());
    let mut list = Vec::new();
    for id in 0..vcpus {
        list.push(vm.create_vcpu(id, ops.clone()).unwrap());
    }
    list[0].set_sregs(&sregs_of(&g.engine.cpu)).unwrap();
    list[0].set_regs(&Regs { rip: CODE, rsp: STACK_TOP, rflags: 2, ..Default::default() }).unwrap();
    *ops.kicker.lock().unwrap() = Some(list[0].kicker());
    (g, vm, list, ops)
}

fn done(a: &mut CodeAssembler) {
    a.mov(edx, DONE_PORT as u32).unwrap();
    a.out(dx, al).unwrap();
}

fn out(a: &mut CodeAssembler, port: u16) {
    a.mov(edx, port as u32).unwrap();
    a.out(dx, al).unwrap();
}

/// `mov dword [rbx + off], v` with RBX = the APIC (or IOAPIC) base.
fn reg(a: &mut CodeAssembler, off: u32, v: u32) {
    a.mov(dword_ptr(rbx + off), v).unwrap();
}

/// Handler: count in R12, EOI, IRETQ.
fn counting_handler(g: &Guest, vector: u8, at: u64) {
    g.set_gate64(vector, at, 0, 0);
    g.asm(64, at, |a| {
        a.inc(r12).unwrap();
        out(a, HANDLED_PORT);
        a.mov(dword_ptr(rbx + 0xb0), 0u32).unwrap();
        a.iretq().unwrap();
    });
}

#[test]
fn lapic_periodic_timer_wakes_hlt() {
    let (g, _vm, mut vcpus, _ops) = setup(1);
    counting_handler(&g, 0x40, CODE + 0x1000);
    g.asm(64, CODE, |a| {
        a.mov(rbx, APIC).unwrap();
        reg(a, 0xf0, 0x1ff); // SVR: software enable
        reg(a, 0x3e0, 0xb); // divide by 1
        reg(a, 0x320, 0x2_0040); // periodic, vector 0x40
        reg(a, 0x380, 50_000); // 50000 ticks of 40 ns = 2 ms
        a.sti().unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.hlt().unwrap();
        a.cmp(r12, 5).unwrap();
        a.jb(top).unwrap();
        reg(a, 0x320, 0x1_0000); // mask
        a.mov(eax, dword_ptr(rbx + 0x390)).unwrap(); // current count
        a.mov(r13, rax).unwrap();
        done(a);
    });
    let start = Instant::now();
    assert_eq!(vcpus[0].run().unwrap(), VcpuExit::Interrupted);
    let took = start.elapsed();
    let r = vcpus[0].regs().unwrap();
    assert_eq!(r.r12, 5, "five timer interrupts");
    assert!(r.r13 <= 50_000, "current count {}", r.r13);
    assert!(took >= Duration::from_millis(9), "5 periods of 2 ms took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let lapic = vcpus[0].lapic().unwrap();
    assert_eq!(lapic.reg(0x320), 0x1_0000, "masked by the guest");
    assert_eq!(lapic.reg(0x3e0), 0xb);
}

#[test]
fn irqfd_through_ioapic_wakes_halted_vcpu() {
    let (g, vm, mut vcpus, ops) = setup(1);
    counting_handler(&g, 0x45, CODE + 0x1000);
    g.asm(64, CODE, |a| {
        a.mov(rbx, APIC).unwrap();
        reg(a, 0xf0, 0x1ff);
        a.mov(rbx, IOAPIC).unwrap();
        reg(a, 0, 0x10 + 2 * 5 + 1);
        reg(a, 0x10, 0); // destination APIC 0
        reg(a, 0, 0x10 + 2 * 5);
        reg(a, 0x10, 0x45); // edge, fixed, vector 0x45, unmasked
        a.mov(rbx, APIC).unwrap();
        a.sti().unwrap();
        out(a, READY_PORT);
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.hlt().unwrap();
        a.cmp(r12, 3).unwrap();
        a.jb(top).unwrap();
        done(a);
    });
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&fd, 5).unwrap();
    let writer = {
        let fd = fd.try_clone().unwrap();
        let ops = ops.clone();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..3 {
                while ops.times(HANDLED_PORT).len() < i || ops.times(READY_PORT).is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Let the vCPU settle into HLT.
                std::thread::sleep(Duration::from_millis(20));
                sent.push(Instant::now());
                fd.write(1).unwrap();
            }
            sent
        })
    };
    assert_eq!(vcpus[0].run().unwrap(), VcpuExit::Interrupted);
    let sent = writer.join().unwrap();
    assert_eq!(vcpus[0].regs().unwrap().r12, 3);
    let handled = ops.times(HANDLED_PORT);
    for (s, h) in sent.iter().zip(&handled) {
        let latency = h.duration_since(*s);
        eprintln!("irqfd to handler: {latency:?}");
        assert!(latency < Duration::from_millis(20), "a halted vCPU took {latency:?} to take an irqfd");
    }
    assert_eq!(vm.emu_irqchip().edges(5), 3);
}

/// AP code at 0x8000 (SIPI vector 8), real mode: count at 0x20000, then CLI; HLT.
const AP_CODE: [u8; 14] = [
    0xb8, 0x00, 0x20, // mov ax, 0x2000
    0x8e, 0xd8, // mov ds, ax
    0xf0, 0xff, 0x06, 0x00, 0x00, // lock inc word [0]
    0xfa, // cli
    0xf4, // hlt
    0xeb, 0xfd, // jmp to the hlt
];

#[test]
fn init_sipi_starts_the_ap_in_real_mode() {
    let (g, _vm, mut vcpus, ops) = setup(2);
    g.write(0x8000, &AP_CODE);
    g.asm(64, CODE, |a| {
        a.mov(rbx, APIC).unwrap();
        reg(a, 0xf0, 0x1ff);
        reg(a, 0x310, 1 << 24); // destination APIC 1
        reg(a, 0x300, 0x4500); // INIT, level assert
        reg(a, 0x300, 0x8500); // INIT de-assert
        reg(a, 0x300, 0x0608); // SIPI, vector 8
        let mut wait = a.create_label();
        a.set_label(&mut wait).unwrap();
        a.pause().unwrap();
        a.cmp(word_ptr(0x20000), 0).unwrap();
        a.je(wait).unwrap();
        reg(a, 0x300, 0x0608); // a second SIPI: the running AP ignores it
        done(a);
    });
    let mut ap = vcpus.pop().unwrap();
    let ap_kick = ap.kicker();
    let ap_thread = std::thread::spawn(move || {
        let exit = ap.run().unwrap();
        (exit, ap)
    });
    assert_eq!(vcpus[0].run().unwrap(), VcpuExit::Interrupted);
    std::thread::sleep(Duration::from_millis(50));
    ap_kick.kick();
    let (exit, ap) = ap_thread.join().unwrap();
    assert_eq!(exit, VcpuExit::Interrupted);
    assert_eq!(g.read_u64(0x20000) & 0xffff, 1, "the AP ran once");
    let s = ap.sregs().unwrap();
    assert_eq!((s.cs.selector, s.cs.base, s.cr0 & 1), (0x0800, 0x8000, 0));
    assert_eq!(ap.regs().unwrap().rip, 12, "halted after its HLT");
    assert_eq!(ops.times(DONE_PORT).len(), 1);
}

#[test]
fn ap_waits_for_sipi_and_stays_kickable() {
    let (_g, _vm, mut vcpus, _ops) = setup(2);
    let kicker = vcpus[1].kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        kicker.kick();
    });
    let start = Instant::now();
    assert_eq!(vcpus[1].run().unwrap(), VcpuExit::Interrupted);
    assert!(start.elapsed() >= Duration::from_millis(25), "the AP ran without a SIPI");
    t.join().unwrap();
    assert_eq!(vcpus[1].regs().unwrap().rip, 0xfff0, "still at the reset state");
}

#[test]
fn cr8_is_the_task_priority() {
    let (g, _vm, mut vcpus, _ops) = setup(1);
    g.asm(64, CODE, |a| {
        a.mov(rbx, APIC).unwrap();
        a.mov(eax, 3u32).unwrap();
        a.mov(cr8, rax).unwrap();
        a.mov(r12d, dword_ptr(rbx + 0x80)).unwrap(); // TPR
        reg(a, 0x80, 0x50);
        a.mov(r13, cr8).unwrap();
        done(a);
    });
    assert_eq!(vcpus[0].run().unwrap(), VcpuExit::Interrupted);
    let r = vcpus[0].regs().unwrap();
    assert_eq!((r.r12, r.r13), (0x30, 5));
}

/// `wrmsr` of `msr` with EDX:EAX = `v`.
fn wrmsr(a: &mut CodeAssembler, msr: u32, v: u64) {
    a.mov(ecx, msr).unwrap();
    a.mov(eax, v as u32).unwrap();
    a.mov(edx, (v >> 32) as u32).unwrap();
    a.wrmsr().unwrap();
}

/// x2APIC mode: entered through IA32_APIC_BASE, registers as MSRs (32-bit ID, derived LDR,
/// 64-bit ICR, SELF IPI, EOI), the MMIO page no longer decoded, the forbidden accesses and
/// mode changes #GP, and INIT/SIPI to the AP through the 64-bit ICR.
#[test]
fn x2apic_msrs_ipis_and_ap_start() {
    let (g, _vm, mut vcpus, ops) = setup(2);
    g.write(0x8000, &AP_CODE);
    // Vector 0x41: count in R12, EOI by MSR. #GP (13): count in R15, skip the 2-byte
    // RDMSR/WRMSR (the error code is popped first).
    let (h41, h13) = (CODE + 0x1000, CODE + 0x1100);
    g.set_gate64(0x41, h41, 0, 0);
    g.asm(64, h41, |a| {
        a.inc(r12).unwrap();
        a.push(rax).unwrap();
        a.push(rcx).unwrap();
        a.push(rdx).unwrap();
        wrmsr(a, 0x80b, 0);
        a.pop(rdx).unwrap();
        a.pop(rcx).unwrap();
        a.pop(rax).unwrap();
        a.iretq().unwrap();
    });
    g.set_gate64(13, h13, 0, 0);
    g.asm(64, h13, |a| {
        a.inc(r15).unwrap();
        a.add(rsp, 8).unwrap();
        a.add(qword_ptr(rsp), 2).unwrap();
        a.iretq().unwrap();
    });
    g.asm(64, CODE, |a| {
        a.mov(rbx, APIC).unwrap();
        a.xor(r12d, r12d).unwrap();
        a.xor(r15d, r15d).unwrap();
        // Not in x2APIC mode yet: the MSRs #GP.
        a.mov(ecx, 0x802u32).unwrap();
        a.rdmsr().unwrap();
        // Enter x2APIC mode (EN stays set).
        a.mov(ecx, 0x1bu32).unwrap();
        a.rdmsr().unwrap();
        a.or(eax, 0x400).unwrap();
        a.wrmsr().unwrap();
        a.mov(r14d, dword_ptr(rbx + 0x30)).unwrap(); // the page now reads as plain MMIO
        a.mov(ecx, 0x802u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(r13d, eax).unwrap(); // ID
        a.mov(ecx, 0x80du32).unwrap();
        a.rdmsr().unwrap();
        a.shl(rax, 32).unwrap();
        a.or(r13, rax).unwrap(); // LDR in the high half
                                 // STI before a WRMSR (which ends the block): the interrupt shadow is over by the SELF IPI.
        a.sti().unwrap();
        wrmsr(a, 0x80f, 0x1ff); // SVR: enabled
        wrmsr(a, 0x83f, 0x41); // SELF IPI
        a.nop().unwrap();
        a.mov(r11, r12).unwrap();
        wrmsr(a, 0x830, 0x41); // ICR: fixed 0x41 to APIC 0, physical
        a.nop().unwrap();
        a.cli().unwrap();
        wrmsr(a, 0x1b, APIC | 0x900); // back to xAPIC: #GP
        a.mov(ecx, 0x80eu32).unwrap();
        a.rdmsr().unwrap(); // DFR: #GP
        wrmsr(a, 0x80b, 1); // EOI with a non-zero value: #GP
        wrmsr(a, 0x830, 1 << 32 | 0x4500); // INIT to APIC 1
        wrmsr(a, 0x830, 1 << 32 | 0x8500); // INIT de-assert
        wrmsr(a, 0x830, 1 << 32 | 0x0608); // SIPI, vector 8
        let mut wait = a.create_label();
        a.set_label(&mut wait).unwrap();
        a.pause().unwrap();
        a.cmp(word_ptr(0x20000), 0).unwrap();
        a.je(wait).unwrap();
        done(a);
    });
    let mut ap = vcpus.pop().unwrap();
    let ap_kick = ap.kicker();
    let ap_thread = std::thread::spawn(move || ap.run().unwrap());
    assert_eq!(vcpus[0].run().unwrap(), VcpuExit::Interrupted);
    std::thread::sleep(Duration::from_millis(50));
    ap_kick.kick();
    assert_eq!(ap_thread.join().unwrap(), VcpuExit::Interrupted);
    let r = vcpus[0].regs().unwrap();
    assert_eq!(r.r15, 4, "#GP: MSR before x2APIC mode, x2APIC to xAPIC, DFR, EOI of 1");
    assert_eq!(r.r11, 1, "the SELF IPI was taken");
    assert_eq!(r.r12, 2, "the SELF IPI and the ICR IPI were taken");
    assert_eq!(r.r13, 1 << 32, "ID 0, LDR cluster 0 bit 0");
    assert_eq!(r.r14 as u32, u32::MAX, "the xAPIC page is not decoded in x2APIC mode");
    assert_eq!(g.read_u64(0x20000) & 0xffff, 1, "the AP started by INIT/SIPI through the x2APIC ICR");
    assert_eq!(vcpus[0].sregs().unwrap().apic_base & 0xc00, 0xc00, "still in x2APIC mode");
    assert_eq!(ops.times(DONE_PORT).len(), 1);
}
