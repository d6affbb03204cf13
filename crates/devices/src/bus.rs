//! Address-range dispatch for port I/O and MMIO.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

/// A device on a [`Bus`]. `offset` is relative to the start of the range it was inserted at.
/// Implementations must accept any offset and data length without panicking: both come from
/// the guest.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `[base, base + len)` with `device`.
    pub fn insert(&self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let end = base + len;
        let before = ranges.range(..end).next_back();
        if let Some((&b, e)) = before {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (addr - base, entry.device.clone()))
    }

    /// Reads from the device at `addr`; returns false (and fills `data` with ones) if none.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; returns false if none.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert!(bus.write(0x3ff, &[7]));
        assert!(!bus.write(0x3f7, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(bus.insert(dev.clone(), 0x10f, 1), Err(BusError::Overlap { base: 0x10f, len: 1 }));
        assert_eq!(bus.insert(dev.clone(), 0xf8, 9), Err(BusError::Overlap { base: 0xf8, len: 9 }));
        assert!(bus.insert(dev.clone(), 0xf8, 8).is_ok());
        assert!(bus.insert(dev.clone(), 0x110, 1).is_ok());
        assert!(bus.insert(dev.clone(), 0x200, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
