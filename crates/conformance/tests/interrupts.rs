//! Interrupt delivery through the backend's interrupt controllers: a real-mode guest programs
//! the 8259 PIC, the test raises IRQ 1 (with `IrqChip` or an irqfd) and the guest's handler runs.

use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmr_conformance::guests::{CODE_ADDR, IRQ1_HANDLER, IRQ1_HANDLER_ADDR, IRQ1_READY_PORT, IRQ1_WAIT};
use vmr_conformance::{for_each_backend_needing, machine, Machine, Needs, Outcome};
use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};
use vmr_hypervisor::Hypervisor;

/// EFD_NONBLOCK, spelled out to avoid a libc dependency for one constant.
const EFD_NONBLOCK: i32 = 0o4000;
/// LVT LINT0 register offset and its ExtINT delivery mode: PIC interrupts reach the CPU.
const APIC_LVT0: usize = 0x350;
const APIC_MODE_EXTINT: u32 = 0x700;

fn irq_machine(hv: &dyn Hypervisor) -> Machine {
    let mut m = machine(hv);
    m.load(CODE_ADDR, IRQ1_WAIT).unwrap();
    m.load(IRQ1_HANDLER_ADDR, IRQ1_HANDLER).unwrap();
    m.real_mode(CODE_ADDR as u16).unwrap();
    let mut lapic = m.vcpu.lapic().unwrap();
    lapic.set_reg(APIC_LVT0, APIC_MODE_EXTINT);
    m.vcpu.set_lapic(&lapic).unwrap();
    assert_eq!(m.vcpu.lapic().unwrap().reg(APIC_LVT0), APIC_MODE_EXTINT);
    m
}

fn assert_handler_ran(m: &mut Machine) {
    assert_eq!(m.run(Duration::from_secs(10)), Outcome::Done(0x42));
    let regs = m.vcpu.regs().unwrap();
    assert_eq!(regs.rip, IRQ1_HANDLER_ADDR + 4, "stopped in the handler");
    // The interrupt frame: IP of the instruction after HLT, CS 0, FLAGS with IF.
    assert_eq!(regs.rsp, 0x8000 - 6);
    let mut frame = [0u16; 3];
    for (i, word) in frame.iter_mut().enumerate() {
        *word = m.memory.read_obj(GuestAddress(0x8000 - 6 + 2 * i as u64)).unwrap();
    }
    assert_eq!(frame[0], CODE_ADDR as u16 + 0x2a);
    assert_eq!(frame[1], 0);
    assert_ne!(frame[2] & 0x200, 0, "IF was set when the interrupt came");
    assert_eq!(regs.rflags & 0x200, 0, "IF is clear inside the handler");
}

#[test]
fn irq_line_reaches_guest_handler() {
    for_each_backend_needing("irq_line_reaches_guest_handler", &[Needs::InterruptControllers], |hv| {
        let mut m = irq_machine(hv);
        let chip = m.vm.irqchip();
        m.ops.on_pio_write(IRQ1_READY_PORT, Arc::new(move |_| chip.pulse_irq(1).expect("pulse IRQ 1")));
        assert_handler_ran(&mut m);
        assert!(m.vm.irqchip().set_irq_line(24, true).is_err(), "there is no GSI 24");
    });
}

#[test]
fn irqfd_reaches_guest_handler() {
    for_each_backend_needing("irqfd_reaches_guest_handler", &[Needs::InterruptControllers], |hv| {
        let mut m = irq_machine(hv);
        let irqfd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        m.vm.register_irqfd(&irqfd, 1).unwrap();
        let fd = irqfd.clone();
        m.ops.on_pio_write(IRQ1_READY_PORT, Arc::new(move |_| fd.write(1).expect("write irqfd")));
        assert_handler_ran(&mut m);
    });
}
