//! A KVM virtual machine: memory slots, vCPUs, in-kernel irqchip/PIT, ioeventfd and irqfd.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmr_hypervisor::{
    GuestMemory, HypervisorError, IoEventAddress, IrqChip, Result, Vcpu, Vm, VmConfig, VmOps,
};

use crate::vcpu::KvmVcpu;
use crate::xsave::XsaveAccess;

/// Guest-physical address of the 3-page TSS KVM needs on Intel (just below the 4 GiB hole top).
pub const TSS_ADDRESS: u64 = 0xfffb_d000;
/// Guest-physical address of the identity-map page KVM needs on Intel (the page below the TSS).
pub const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
// The identity map is one page and the TSS three, below the 4 GiB top and not overlapping.
const _: () = assert!(IDENTITY_MAP_ADDRESS + 0x1000 <= TSS_ADDRESS && TSS_ADDRESS + 0x3000 <= 0x1_0000_0000);

/// Interrupt inputs of the in-kernel IOAPIC.
const IOAPIC_PINS: u32 = 24;

/// One KVM VM. Created by [`crate::Kvm`] through [`vmr_hypervisor::Hypervisor::create_vm`].
pub struct KvmVm {
    fd: Arc<VmFd>,
    vcpus: u32,
    max_memslots: usize,
    /// Keeps the mappings KVM points at alive for as long as the VM.
    memory: Mutex<Option<GuestMemory>>,
}

pub(crate) fn os<E: Into<std::io::Error>>(op: &'static str) -> impl FnOnce(E) -> HypervisorError {
    move |e| HypervisorError::os(op, e)
}

impl KvmVm {
    /// Sets up a VM created by `KVM_CREATE_VM`: TSS and identity map, in-kernel PIC/IOAPIC/LAPICs
    /// and PIT.
    pub(crate) fn new(fd: VmFd, config: &VmConfig, max_memslots: usize) -> Result<Self> {
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS).map_err(os("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.set_tss_address(TSS_ADDRESS as usize).map_err(os("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(os("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(os("KVM_CREATE_PIT2"))?;
        Ok(KvmVm { fd: Arc::new(fd), vcpus: config.vcpus, max_memslots, memory: Mutex::new(None) })
    }

    fn map_regions(&self, memory: &GuestMemory) -> Result<()> {
        let count = memory.num_regions();
        if count > self.max_memslots {
            return Err(HypervisorError::Invalid(format!(
                "guest memory has {count} regions but KVM offers {} memory slots",
                self.max_memslots
            )));
        }
        for (slot, region) in memory.iter().enumerate() {
            let slot = u32::try_from(slot)
                .map_err(|_| HypervisorError::Invalid(format!("memory slot {slot} out of range")))?;
            let kvm_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes, and a clone of
            // `memory` (which shares the mappings) is kept in `self.memory` for the VM's lifetime.
            unsafe { self.fd.set_user_memory_region(kvm_region) }
                .map_err(os("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }
}

impl Vm for KvmVm {
    fn set_memory(&self, memory: &GuestMemory) -> Result<()> {
        let mut kept = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_some() {
            return Err(HypervisorError::Invalid("guest memory is already set for this VM".into()));
        }
        // Keep the mappings before KVM can point at them.
        *kept = Some(memory.clone());
        self.map_regions(memory)
    }

    fn create_vcpu(&self, id: u32, ops: Arc<dyn VmOps>) -> Result<Box<dyn Vcpu>> {
        if id >= self.vcpus {
            return Err(HypervisorError::Invalid(format!(
                "vCPU index {id} out of range: the VM has {} vCPUs",
                self.vcpus
            )));
        }
        crate::kick::install_kick_handler().map_err(os("installing the vCPU kick signal handler"))?;
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(os("KVM_CREATE_VCPU"))?;
        let xsave = XsaveAccess::new(self.fd.check_extension_int(Cap::Xsave2));
        Ok(Box::new(KvmVcpu::new(id, fd, ops, xsave)))
    }

    fn irqchip(&self) -> Arc<dyn IrqChip> {
        Arc::new(KvmIrqChip { fd: self.fd.clone() })
    }

    /// With `datamatch`, KVM compares a fixed width: values that fit in 32 bits match 4-byte
    /// writes (the virtio notify width), larger values match 8-byte writes.
    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u64>) -> Result<()> {
        let addr = match addr {
            IoEventAddress::Pio(port) => kvm_ioctls::IoEventAddress::Pio(u64::from(port)),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        };
        let result = match datamatch {
            None => self.fd.register_ioevent(fd, &addr, NoDatamatch),
            Some(value) => match u32::try_from(value) {
                Ok(v32) => self.fd.register_ioevent(fd, &addr, v32),
                Err(_) => self.fd.register_ioevent(fd, &addr, value),
            },
        };
        result.map_err(os("KVM_IOEVENTFD"))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        check_gsi(gsi)?;
        self.fd.register_irqfd(fd, gsi).map_err(os("KVM_IRQFD"))
    }
}

fn check_gsi(gsi: u32) -> Result<()> {
    if gsi >= IOAPIC_PINS {
        return Err(HypervisorError::Invalid(format!(
            "GSI {gsi} out of range: the in-kernel IOAPIC has {IOAPIC_PINS} inputs"
        )));
    }
    Ok(())
}

/// The in-kernel PIC + IOAPIC, driven with `KVM_IRQ_LINE`.
pub struct KvmIrqChip {
    fd: Arc<VmFd>,
}

impl IrqChip for KvmIrqChip {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        check_gsi(gsi)?;
        self.fd.set_irq_line(gsi, level).map_err(os("KVM_IRQ_LINE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsi_range() {
        assert!(check_gsi(0).is_ok());
        assert!(check_gsi(23).is_ok());
        let err = check_gsi(24).unwrap_err().to_string();
        assert!(err.contains("GSI 24"), "{err}");
    }
}
