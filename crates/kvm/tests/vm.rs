//! VM-level checks of the KVM backend that need /dev/kvm (skipped with a notice without it;
//! failing if /dev/kvm exists but cannot be used).

use std::path::Path;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::vm_memory::GuestAddress;
use vmr_hypervisor::{GuestMemory, Hypervisor, HypervisorError, VmConfig, VmOps};

struct NoDevices;

impl VmOps for NoDevices {
    fn pio_read(&self, _: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, _: u16, _: &[u8]) {}
    fn mmio_read(&self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

fn kvm() -> Option<vmr_kvm::Kvm> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: /dev/kvm does not exist");
        return None;
    }
    Some(vmr_kvm::Kvm::new().expect("/dev/kvm exists, so vmr must be able to use it"))
}

#[test]
fn vcpu_count_is_enforced() {
    let Some(kvm) = kvm() else { return };
    assert_eq!(kvm.name(), "kvm");
    let too_many = VmConfig { vcpus: kvm.max_vcpus() + 1 };
    assert!(matches!(kvm.create_vm(&too_many), Err(HypervisorError::Invalid(_))));
    let vm = kvm.create_vm(&VmConfig { vcpus: 2 }).unwrap();
    let ops: Arc<dyn VmOps> = Arc::new(NoDevices);
    let v0 = vm.create_vcpu(0, ops.clone()).unwrap();
    let v1 = vm.create_vcpu(1, ops.clone()).unwrap();
    assert_eq!((v0.id(), v1.id()), (0, 1));
    let err = vm.create_vcpu(2, ops).err().expect("index 2 of 2 vCPUs");
    assert!(err.to_string().contains("vCPU index 2 out of range"), "{err}");
}

#[test]
fn memory_is_set_once_and_slots_are_checked() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm(&VmConfig { vcpus: 1 }).unwrap();
    // Two regions around a hole, as the x86 layout has below and above 4 GiB.
    let memory =
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(0x1_0000_0000), 1 << 20)])
            .unwrap();
    vm.set_memory(&memory).unwrap();
    let err = vm.set_memory(&memory).unwrap_err();
    assert!(err.to_string().contains("already set"), "{err}");
}

#[test]
fn irq_routing_inputs_are_checked() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm(&VmConfig { vcpus: 1 }).unwrap();
    let fd = EventFd::new(0).unwrap();
    vm.register_irqfd(&fd, 5).unwrap();
    assert!(vm.register_irqfd(&fd, 24).is_err());
    let chip = vm.irqchip();
    chip.set_irq_line(4, true).unwrap();
    chip.set_irq_line(4, false).unwrap();
    chip.pulse_irq(23).unwrap();
    assert!(chip.set_irq_line(1000, true).is_err());
}

#[test]
fn supported_cpuid_has_the_basic_leaves() {
    let Some(kvm) = kvm() else { return };
    let cpuid = kvm.supported_cpuid().unwrap();
    let leaf = |f: u32| cpuid.iter().find(|e| e.function == f).copied();
    let max_basic = leaf(0).expect("leaf 0").eax;
    assert!(max_basic >= 1);
    // Long mode (leaf 0x8000_0001 EDX bit 29): vmr only runs 64-bit guests.
    let ext = leaf(0x8000_0001).expect("leaf 0x80000001");
    assert_ne!(ext.edx & (1 << 29), 0, "no long mode in KVM's CPUID");
}
