//! The `vmr-hypervisor` trait implementation: VM and vCPU lifecycle, run/exit reasons, kicks,
//! register round trips, MSRs, ioevents.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmr_emu::EmuHypervisor;
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::*;

#[derive(Default)]
struct Ops {
    pio: Mutex<Vec<(u16, u8)>>,
}

impl VmOps for Ops {
    fn pio_read(&self, _: u16, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn pio_write(&self, port: u16, d: &[u8]) {
        self.pio.lock().unwrap().push((port, d[0]));
    }
    fn mmio_read(&self, _: u64, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

fn setup(code: &[u8]) -> (Arc<dyn Vm>, Box<dyn Vcpu>, Arc<Ops>, GuestMemory) {
    let hv = EmuHypervisor::new();
    assert_eq!(hv.name(), "emu");
    assert!(hv.supported_cpuid().unwrap().iter().any(|e| e.function == 0x8000_0001));
    let vm = hv.create_vm(&VmConfig { vcpus: 1 }).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    vm.set_memory(&mem).unwrap();
    let ops = Arc::new(Ops::default());
    let mut vcpu = vm.create_vcpu(0, ops.clone()).unwrap();
    // Real mode at 0000:1000, as a conformance-style guest.
    let mut s = vcpu.sregs().unwrap();
    for seg in [&mut s.cs, &mut s.ds, &mut s.es, &mut s.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    vcpu.set_sregs(&s).unwrap();
    vcpu.set_regs(&Regs { rip: 0x1000, rsp: 0x8000, rflags: 2, ..Default::default() }).unwrap();
    (vm, vcpu, ops, mem)
}

/// Runs `vcpu`, kicking it after 100 ms (HLT waits inside `run`, as with KVM's in-kernel
/// irqchip).
fn run_then_kick(vcpu: &mut Box<dyn Vcpu>) -> VcpuExit {
    let kicker = vcpu.kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        kicker.kick();
    });
    let exit = vcpu.run().unwrap();
    t.join().unwrap();
    exit
}

#[test]
fn runs_to_hlt_with_pio() {
    // mov al, 0x41; out 0x10, al; inc ax; hlt
    let (_vm, mut vcpu, ops, _mem) = setup(&[0xb0, 0x41, 0xe6, 0x10, 0x40, 0xf4]);
    assert_eq!(run_then_kick(&mut vcpu), VcpuExit::Interrupted);
    assert_eq!(*ops.pio.lock().unwrap(), vec![(0x10, 0x41)]);
    let r = vcpu.regs().unwrap();
    assert_eq!((r.rax, r.rip), (0x42, 0x1006));
}

#[test]
fn kick_interrupts_a_spinning_vcpu() {
    // jmp $
    let (_vm, mut vcpu, _ops, _mem) = setup(&[0xeb, 0xfe]);
    let kicker = vcpu.kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        kicker.kick();
    });
    assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
    t.join().unwrap();
    assert_eq!(vcpu.regs().unwrap().rip, 0x1000);
}

#[test]
fn triple_fault_is_shutdown() {
    // int3 with an IDT of limit 0 in protected mode would need setup; in real mode an IVT
    // limit of 0 makes any interrupt #GP -> #DF -> shutdown.
    let (_vm, mut vcpu, _ops, _mem) = setup(&[0xcc]);
    let mut s = vcpu.sregs().unwrap();
    s.idt.limit = 0;
    vcpu.set_sregs(&s).unwrap();
    assert_eq!(vcpu.run().unwrap(), VcpuExit::Shutdown);
}

#[test]
fn state_round_trips() {
    let (_vm, mut vcpu, _ops, _mem) = setup(&[0xf4]);
    let regs = Regs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        rsp: 7,
        rbp: 8,
        r8: 9,
        r15: 10,
        rip: 0x1000,
        rflags: 0x246,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
    assert_eq!(vcpu.regs().unwrap(), regs);
    vcpu.set_msrs(&[
        MsrEntry { index: 0xc000_0082, data: 0xffff_ffff_8100_0000 },
        MsrEntry { index: 0x277, data: 0x0606 },
    ])
    .unwrap();
    let m = vcpu.msrs(&[0xc000_0082, 0x277, 0x10]).unwrap();
    assert_eq!((m[0].data, m[1].data), (0xffff_ffff_8100_0000, 0x0606));
    assert!(vcpu.msrs(&[0x1234_5678]).is_err());
    let mut lapic = LapicState::default();
    lapic.set_reg(0x80, 0x10);
    vcpu.set_lapic(&lapic).unwrap();
    assert_eq!(vcpu.lapic().unwrap().reg(0x80), 0x10);
    let state = vcpu.state(&[0x277]).unwrap();
    vcpu.set_state(&state).unwrap();
    assert_eq!(vcpu.state(&[0x277]).unwrap().regs, state.regs);
}

#[test]
fn ioevent_replaces_the_pio_callback() {
    // mov al, 7; out 0x30, al; mov al, 8; out 0x30, al; hlt
    let (vm, _vcpu, ops, _mem) = setup(&[]);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_ioevent(&fd, IoEventAddress::Pio(0x30), Some(8)).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    mem.write_slice(&[0xb0, 7, 0xe6, 0x30, 0xb0, 8, 0xe6, 0x30, 0xf4], GuestAddress(0x1000)).unwrap();
    vm.set_memory(&mem).unwrap();
    let mut vcpu = vm.create_vcpu(0, ops.clone()).unwrap();
    let mut s = vcpu.sregs().unwrap();
    s.cs.base = 0;
    s.cs.selector = 0;
    vcpu.set_sregs(&s).unwrap();
    vcpu.set_regs(&Regs { rip: 0x1000, rflags: 2, ..Default::default() }).unwrap();
    assert_eq!(run_then_kick(&mut vcpu), VcpuExit::Interrupted);
    assert_eq!(*ops.pio.lock().unwrap(), vec![(0x30, 7)], "the matching write went to the eventfd");
    assert_eq!(fd.read().unwrap(), 1);
}

#[test]
fn irq_lines_are_recorded() {
    let hv = EmuHypervisor::new();
    let vm = hv.create_vm(&VmConfig { vcpus: 2 }).unwrap();
    let chip = vm.irqchip();
    chip.pulse_irq(4).unwrap();
    chip.set_irq_line(5, true).unwrap();
    assert!(chip.set_irq_line(99, true).is_err());
    assert!(hv.create_vm(&VmConfig { vcpus: 0 }).is_err());
}

#[test]
fn irqfd_becomes_an_edge() {
    let vm = EmuHypervisor::new().create_emu_vm(&VmConfig { vcpus: 1 }).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // hlt; jmp back to the hlt
    mem.write_slice(&[0xf4, 0xeb, 0xfd], GuestAddress(0xffff0)).unwrap();
    vm.set_memory(&mem).unwrap();
    let mut vcpu = vm.create_vcpu(0, Arc::new(Ops::default())).unwrap();
    let mut s = vcpu.sregs().unwrap();
    s.cs.base = 0xf0000;
    vcpu.set_sregs(&s).unwrap();
    let fd = EventFd::new(0).unwrap();
    vm.register_irqfd(&fd, 9).unwrap();
    assert!(vm.register_irqfd(&fd, 40).is_err());
    fd.write(1).unwrap();
    assert_eq!(run_then_kick(&mut vcpu), VcpuExit::Interrupted);
    assert_eq!(vm.emu_irqchip().edges(9), 1);
    // Signalled while the vCPU waits in HLT; a drained blocking eventfd must not hang it.
    let fd2 = fd.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        fd2.write(1).unwrap();
    });
    assert_eq!(run_then_kick(&mut vcpu), VcpuExit::Interrupted);
    t.join().unwrap();
    // The irq thread turns the write into an edge; give it time on a loaded host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while vm.emu_irqchip().edges(9) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(vm.emu_irqchip().edges(9), 2);
}
