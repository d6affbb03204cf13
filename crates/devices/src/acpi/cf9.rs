//! The PCI reset control register at port 0xCF9 (Linux `reboot=pci`, some firmware).

use crate::{BusDevice, VmExitRequest, VmExitRequester};

/// Port of the reset control register (length 1).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;

/// Bit 2: perform the reset selected by bits 1 (hard) and 3 (full).
const RST_CPU: u8 = 0x04;
const WRITABLE_BITS: u8 = 0x0a;

/// Port 0xCF9: a write with RST_CPU set requests a VM reset. Insert on the PIO bus at
/// [`RESET_CONTROL_PORT`], length 1 (a later PCI host bridge must then claim 0xCF8 and 0xCFC
/// as two 4-byte ranges instead of one 8-byte range).
pub struct ResetControl {
    value: u8,
    exit: VmExitRequester,
}

impl ResetControl {
    /// A register that asks `exit` for resets.
    pub fn new(exit: VmExitRequester) -> Self {
        ResetControl { value: 0, exit }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), 0) = (data.first_mut(), offset) {
            *first = self.value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), 0) = (data.first(), offset) else { return };
        self.value = value & WRITABLE_BITS;
        if value & RST_CPU != 0 {
            (self.exit)(VmExitRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tests::recorder;

    #[test]
    fn linux_cf9_reset_sequence() {
        let (exit, log) = recorder();
        let mut r = ResetControl::new(exit);
        r.write(0, &[0x02]); // select hard reset
        assert!(log.lock().unwrap().is_empty());
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b[0], 0x02);
        r.write(0, &[0x06]);
        assert_eq!(*log.lock().unwrap(), vec![VmExitRequest::Reset]);
        r.write(1, &[0x06]);
        r.write(0, &[]);
        r.read(5, &mut [0u8; 4]);
        assert_eq!(log.lock().unwrap().len(), 1);
    }
}
