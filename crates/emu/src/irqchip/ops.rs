//! The `VmOps` interposer of one vCPU: the PIC/ELCR/PIT/port-0x61 ports, the IOAPIC page and
//! this vCPU's LAPIC page are served here; everything else goes on to the VMM.

use std::sync::Arc;

use vmr_hypervisor::VmOps;

use super::{IrqChipCore, LocalApic, IOAPIC_BASE, MMIO_SIZE};

pub struct ChipOps {
    pub inner: Arc<dyn VmOps>,
    pub core: Arc<IrqChipCore>,
    pub lapic: Arc<LocalApic>,
}

fn is_chip_port(port: u16) -> bool {
    matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 | 0x40..=0x43 | 0x61)
}

/// The 32-bit register an access at `offset` of `len` bytes falls in, and the byte within it.
fn reg_of(offset: u64) -> (u64, usize) {
    (offset & !3, (offset & 3) as usize)
}

impl ChipOps {
    fn lapic_offset(&self, addr: u64) -> Option<u64> {
        if !self.lapic.hw_enabled() || self.lapic.x2apic() {
            return None;
        }
        let base = self.lapic.apic_base() & !0xfff;
        addr.checked_sub(base).filter(|&o| o < MMIO_SIZE)
    }

    fn lapic_write(&self, offset: u64, v: u32) {
        let now = self.core.clock.now();
        let effect = self.lapic.with(|m| m.write(offset as u32, v, now));
        self.core.apply(&self.lapic, effect);
    }
}

/// Fills `data` from the 32-bit register value `v`, starting at byte `at`.
fn fill(data: &mut [u8], v: u32, at: usize) {
    let bytes = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(at + i).copied().unwrap_or(0);
    }
}

/// The 32-bit value of a write (narrower writes are zero-extended at their byte offset).
fn value(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, d) in data.iter().enumerate().take(4usize.saturating_sub(at)) {
        b[at + i] = *d;
    }
    u32::from_le_bytes(b)
}

impl VmOps for ChipOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !is_chip_port(port) {
            return self.inner.pio_read(port, data);
        }
        for (i, d) in data.iter_mut().enumerate() {
            let p = port.wrapping_add(i as u16);
            *d = self.core.pio_read(p).unwrap_or(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if !is_chip_port(port) {
            return self.inner.pio_write(port, data);
        }
        for (i, d) in data.iter().enumerate() {
            self.core.pio_write(port.wrapping_add(i as u16), *d);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some(off) = self.lapic_offset(addr) {
            let (reg, at) = reg_of(off);
            let now = self.core.clock.now();
            let v = self.lapic.with(|m| m.read(reg as u32, now));
            return fill(data, v, at);
        }
        match addr.checked_sub(IOAPIC_BASE).filter(|&o| o < MMIO_SIZE) {
            Some(off) => {
                let (reg, at) = reg_of(off);
                fill(data, self.core.ioapic_read(reg), at)
            }
            None => self.inner.mmio_read(addr, data),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some(off) = self.lapic_offset(addr) {
            let (reg, at) = reg_of(off);
            return self.lapic_write(reg, value(data, at));
        }
        match addr.checked_sub(IOAPIC_BASE).filter(|&o| o < MMIO_SIZE) {
            Some(off) => {
                let (reg, at) = reg_of(off);
                self.core.ioapic_write(reg, value(data, at))
            }
            None => self.inner.mmio_write(addr, data),
        }
    }
}
