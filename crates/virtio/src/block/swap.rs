//! Swapping a disk's backing image while the guest runs (Firecracker's `PATCH /drives/{id}`
//! with `path_on_host`).
//!
//! The VMM opens the new image (taking its lock) and hands it over through a [`DiskSwap`]; the
//! worker thread takes it before it serves the next batch of requests, so no request is served
//! half on one image and half on the other, and the old image (and its lock) is released there.
//! The new capacity is visible in config space at once, and a config-change interrupt tells the
//! driver to read it (Linux then logs "new size" and resizes the disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmr_block::{DiskImage, SECTOR_SIZE};

use crate::Interrupt;

/// Shared between a [`super::Block`], its worker and the VMM.
#[derive(Default)]
pub struct DiskSwap {
    pending: Mutex<Option<(Box<dyn DiskImage>, String)>>,
    capacity_sectors: AtomicU64,
    /// The interrupt of the active device (None before the driver activated it).
    interrupt: Mutex<Option<Arc<Interrupt>>>,
}

impl DiskSwap {
    pub(crate) fn new(capacity_sectors: u64) -> Arc<Self> {
        let swap = DiskSwap::default();
        swap.capacity_sectors.store(capacity_sectors, Ordering::Release);
        Arc::new(swap)
    }

    /// Replaces the device's image by `disk` (opened by the caller, named `path` in the
    /// device's state) and tells the guest the new size.
    pub fn replace(&self, disk: Box<dyn DiskImage>, path: String) {
        let sectors = disk.len() / SECTOR_SIZE;
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((disk, path));
        self.capacity_sectors.store(sectors, Ordering::Release);
        if let Some(interrupt) = self.interrupt.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            interrupt.signal_config_change();
        }
    }

    /// The capacity the guest reads from config space.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors.load(Ordering::Acquire)
    }

    /// The image waiting to replace the current one, if any.
    pub(crate) fn take(&self) -> Option<(Box<dyn DiskImage>, String)> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn set_interrupt(&self, interrupt: Option<Arc<Interrupt>>) {
        *self.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = interrupt;
    }
}
