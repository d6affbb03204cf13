//! The interrupt a virtio device raises: InterruptStatus bits plus a trigger.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmr_devices::IrqLine;

/// InterruptStatus bit: a queue's used ring was updated.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed (also used to report `DEVICE_NEEDS_RESET`).
pub const INT_CONFIG: u32 = 2;

/// How the interrupt reaches the guest.
pub enum IrqTrigger {
    /// An EventFd the integrator registered with `Vm::register_irqfd` (KVM): each signal is an
    /// edge on the GSI.
    EventFd(EventFd),
    /// A line of the VM's interrupt controllers, driven level-style: high while any
    /// InterruptStatus bit is set, low once the guest acknowledged them all.
    Line(IrqLine),
}

/// Interrupt state of one virtio device, shared by its transport (vCPU thread: reads status,
/// takes acks) and its worker thread (sets bits).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    trigger: IrqTrigger,
}

impl Interrupt {
    pub fn new(trigger: IrqTrigger) -> Self {
        Interrupt { status: AtomicU32::new(0), needs_reset: AtomicBool::new(false), trigger }
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        match &self.trigger {
            IrqTrigger::EventFd(fd) => {
                // EAGAIN only when the counter is saturated, i.e. an interrupt is pending anyway.
                let _ = fd.write(1);
            }
            IrqTrigger::Line(line) => line.set_level(true),
        }
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Tells the driver that the config space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET` in the status register) and tells the driver.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            tracing::warn!("virtio device entered DEVICE_NEEDS_RESET");
            self.signal_config_change();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Raises the interrupt again if a bit is pending (after a restore: the interrupt
    /// controller may have been saved before it took the last edge; a spurious one is harmless,
    /// the driver finds nothing new and returns).
    pub fn resignal(&self) {
        let bits = self.status();
        if bits != 0 {
            self.raise(bits);
        }
    }

    /// Loads a saved InterruptStatus (snapshot restore; only the two defined bits).
    pub(crate) fn restore_status(&self, bits: u32) {
        self.status.store(bits & (INT_VRING | INT_CONFIG), Ordering::SeqCst);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`, lowers a level line when nothing is left pending.
    pub fn ack(&self, bits: u32) {
        let left = self.status.fetch_and(!bits, Ordering::SeqCst) & !bits;
        if let IrqTrigger::Line(line) = &self.trigger {
            if left == 0 {
                line.set_level(false);
                // A worker may have raised a bit between the fetch_and and the lowering.
                if self.status() != 0 {
                    line.set_level(true);
                }
            }
        }
    }

    /// Device reset: no pending bits, not broken, line low.
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        if let IrqTrigger::Line(line) = &self.trigger {
            line.set_level(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmr_hypervisor::IrqChip;

    #[derive(Default)]
    struct Chip(Mutex<Vec<(u32, bool)>>);
    impl IrqChip for Chip {
        fn set_irq_line(&self, gsi: u32, level: bool) -> vmr_hypervisor::Result<()> {
            self.0.lock().unwrap().push((gsi, level));
            Ok(())
        }
    }

    #[test]
    fn eventfd_trigger_counts_signals_and_status_bits_accumulate() {
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        let IrqTrigger::EventFd(fd) = &irq.trigger else { unreachable!() };
        assert_eq!(fd.read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }

    #[test]
    fn line_trigger_is_level_until_all_bits_acked() {
        let chip = Arc::new(Chip::default());
        let irq = Interrupt::new(IrqTrigger::Line(IrqLine::new(chip.clone(), 5)));
        irq.signal_used_queue();
        irq.signal_config_change();
        irq.ack(INT_VRING);
        assert_eq!(*chip.0.lock().unwrap(), vec![(5, true), (5, true)]);
        irq.ack(INT_CONFIG);
        assert_eq!(chip.0.lock().unwrap().last(), Some(&(5, false)));
    }

    #[test]
    fn needs_reset_signals_config_once_and_clears_on_reset() {
        let irq = Interrupt::new(IrqTrigger::EventFd(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        irq.set_needs_reset();
        irq.set_needs_reset();
        assert!(irq.needs_reset());
        assert_eq!(irq.status(), INT_CONFIG);
        let IrqTrigger::EventFd(fd) = &irq.trigger else { unreachable!() };
        assert_eq!(fd.read().unwrap(), 1);
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
