//! Snapshot state of the software CPU: a vCPU's full state and the VM's interrupt controllers
//! saved from one VM load into a fresh one (another "process") and read back the same; the
//! TSC goes on from its saved value.

use std::sync::Arc;

use vmr_emu::EmuHypervisor;
use vmr_hypervisor::vm_memory::GuestAddress;
use vmr_hypervisor::*;

struct NoOps;
impl VmOps for NoOps {
    fn pio_read(&self, _: u16, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn pio_write(&self, _: u16, _: &[u8]) {}
    fn mmio_read(&self, _: u64, d: &mut [u8]) {
        d.fill(0xff)
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

fn new_vm() -> (Arc<dyn Vm>, Box<dyn Vcpu>) {
    let vm = EmuHypervisor::new().create_vm(&VmConfig { vcpus: 1 }).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    vm.set_memory(&mem).unwrap();
    let vcpu = vm.create_vcpu(0, Arc::new(NoOps)).unwrap();
    (vm, vcpu)
}

#[test]
fn vcpu_and_irqchip_state_move_to_a_new_vm() {
    let (vm, mut vcpu) = new_vm();
    let mut s = vcpu.sregs().unwrap();
    s.cr0 = 0x8000_0011;
    s.cr3 = 0x5000;
    s.cr4 = 0x20;
    s.efer = 0x500;
    s.cs.l = true;
    vcpu.set_sregs(&s).unwrap();
    vcpu.set_regs(&Regs { rip: 0xffff_8000_1234, rax: 7, r15: 9, rflags: 0x202, ..Default::default() })
        .unwrap();
    vcpu.set_msrs(&[MsrEntry { index: 0xc000_0082, data: 0xffff_ffff_8100_0000 }]).unwrap();
    let mut lapic = vcpu.lapic().unwrap();
    lapic.set_reg(0xf0, 0x1ff); // SVR: enabled, spurious vector 0xff
    lapic.set_reg(0x80, 0x20); // TPR
    vcpu.set_lapic(&lapic).unwrap();
    vcpu.set_msrs(&[MsrEntry { index: 0x10, data: 5_000_000_000 }]).unwrap();
    let saved = vcpu.save_state().unwrap();
    let chip = vm.irqchip_state().unwrap();
    assert_eq!(saved.regs.rax, 7);
    assert!(saved.msrs.iter().any(|m| m.index == 0xc000_0082 && m.data == 0xffff_ffff_8100_0000));
    let tsc = saved.tsc.unwrap();
    assert_eq!(tsc.hz, 1_000_000_000);
    assert!(tsc.value >= 5_000_000_000);

    // Restored into another VM a while later: the guest sees no time pass.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (vm2, mut vcpu2) = new_vm();
    vcpu2.restore_state(&saved).unwrap();
    vm2.set_irqchip_state(&chip).unwrap();
    let again = vcpu2.save_state().unwrap();
    assert_eq!(again.regs, saved.regs);
    assert_eq!(again.sregs, saved.sregs);
    assert_eq!(again.fpu, saved.fpu);
    assert_eq!(again.msrs, saved.msrs);
    assert_eq!(again.lapic.as_ref().unwrap().reg(0x80), 0x20);
    assert_eq!(again.lapic.as_ref().unwrap().reg(0xf0) & 0x1ff, 0x1ff);
    assert_eq!(again.events, saved.events);
    assert_eq!(again.cpuid, saved.cpuid);
    let drift = again.tsc.unwrap().value - tsc.value;
    assert!(drift < 40_000_000, "the TSC jumped by {drift} ns across the restore");
    assert_eq!(vm2.irqchip_state().unwrap().ioapic, chip.ioapic);

    // A state from a CPU whose TSC runs at another rate is refused, not silently rescaled.
    let mut other = saved.clone();
    other.tsc = Some(TscState { value: 1, hz: 2_000_000_000 });
    let err = vcpu2.restore_state(&other).unwrap_err().to_string();
    assert!(err.contains("2000000000 Hz"), "{err}");
    let mut short = saved;
    short.lapic = Some(LapicState { regs: vec![0; 16] });
    assert!(vcpu2.restore_state(&short).is_err());
}
