//! A [`VmOps`] that records every device access and answers reads with values a test chose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use vmr_hypervisor::{VcpuKicker, VmOps};

/// A guest write to this port ends the test run: the runner kicks the vCPU and reports the
/// byte written. Such writes are not recorded in [`RecordingOps::accesses`].
pub const DONE_PORT: u16 = 0xf4;

/// One device access the guest made, with the bytes written or the bytes it was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    PioRead { port: u16, data: Vec<u8> },
    PioWrite { port: u16, data: Vec<u8> },
    MmioRead { addr: u64, data: Vec<u8> },
    MmioWrite { addr: u64, data: Vec<u8> },
}

#[derive(Default)]
struct Inner {
    log: Vec<Access>,
    pio_answers: HashMap<u16, u64>,
    mmio_answers: HashMap<u64, u64>,
    done: Option<u8>,
}

/// Called on a guest write to a port, with the bytes written (e.g. to raise an interrupt).
pub type PioHook = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Records port I/O and MMIO; reads return the configured value (little-endian, truncated to
/// the access width) or all ones like an open bus.
#[derive(Default)]
pub struct RecordingOps {
    inner: Mutex<Inner>,
    hooks: Mutex<HashMap<u16, PioHook>>,
    kicker: OnceLock<Arc<dyn VcpuKicker>>,
}

impl RecordingOps {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kicker of the vCPU this instance serves; a write to [`DONE_PORT`] kicks it.
    pub fn set_kicker(&self, kicker: Arc<dyn VcpuKicker>) {
        // A second call keeps the first kicker: one RecordingOps serves one vCPU.
        let _ = self.kicker.set(kicker);
    }

    /// Reads of `port` return `value`.
    pub fn answer_pio(&self, port: u16, value: u64) {
        self.lock().pio_answers.insert(port, value);
    }

    /// Reads at guest-physical `addr` return `value`.
    pub fn answer_mmio(&self, addr: u64, value: u64) {
        self.lock().mmio_answers.insert(addr, value);
    }

    /// Calls `hook` after each guest write to `port` (the write is still recorded).
    pub fn on_pio_write(&self, port: u16, hook: PioHook) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).insert(port, hook);
    }

    /// Every access so far, in order (except writes to [`DONE_PORT`]).
    pub fn accesses(&self) -> Vec<Access> {
        self.lock().log.clone()
    }

    /// All bytes written to `port`, concatenated in order.
    pub fn pio_bytes_written(&self, port: u16) -> Vec<u8> {
        let inner = self.lock();
        let writes = inner.log.iter().filter_map(|a| match a {
            Access::PioWrite { port: p, data } if *p == port => Some(data.as_slice()),
            _ => None,
        });
        writes.flatten().copied().collect()
    }

    /// The byte the guest wrote to [`DONE_PORT`], if it did.
    pub fn done(&self) -> Option<u8> {
        self.lock().done
    }
}

fn fill(data: &mut [u8], value: Option<u64>) {
    match value {
        Some(v) => {
            let bytes = v.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(i).copied().unwrap_or(0);
            }
        }
        None => data.fill(0xff),
    }
}

impl VmOps for RecordingOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        let mut inner = self.lock();
        fill(data, inner.pio_answers.get(&port).copied());
        inner.log.push(Access::PioRead { port, data: data.to_vec() });
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if port == DONE_PORT {
            self.lock().done = Some(data.first().copied().unwrap_or(0));
            if let Some(kicker) = self.kicker.get() {
                kicker.kick();
            }
            return;
        }
        self.lock().log.push(Access::PioWrite { port, data: data.to_vec() });
        let hook = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).get(&port).cloned();
        if let Some(hook) = hook {
            hook(data);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let mut inner = self.lock();
        fill(data, inner.mmio_answers.get(&addr).copied());
        inner.log.push(Access::MmioRead { addr, data: data.to_vec() });
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.lock().log.push(Access::MmioWrite { addr, data: data.to_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct CountingKicker(AtomicU32);

    impl VcpuKicker for CountingKicker {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn reads_are_answered_and_recorded() {
        let ops = RecordingOps::new();
        ops.answer_pio(0x60, 0x1234_5678);
        let mut two = [0u8; 2];
        ops.pio_read(0x60, &mut two);
        assert_eq!(two, [0x78, 0x56]);
        let mut open_bus = [0u8; 4];
        ops.mmio_read(0xd000_0000, &mut open_bus);
        assert_eq!(open_bus, [0xff; 4]);
        // Wider than the answer: the upper bytes are zero.
        ops.answer_mmio(0x10, 0xab);
        let mut wide = [0x55u8; 16];
        ops.mmio_read(0x10, &mut wide);
        assert_eq!(wide[0], 0xab);
        assert!(wide[1..].iter().all(|&b| b == 0));
        assert_eq!(ops.accesses().len(), 3);
    }

    #[test]
    fn hooks_run_on_writes() {
        let ops = RecordingOps::new();
        let seen = Arc::new(AtomicU32::new(0));
        let seen2 = seen.clone();
        ops.on_pio_write(
            0x700,
            Arc::new(move |data| {
                seen2.fetch_add(u32::from(data[0]), Ordering::SeqCst);
            }),
        );
        ops.pio_write(0x700, &[3]);
        ops.pio_write(0x701, &[9]);
        ops.pio_write(0x700, &[4]);
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        assert_eq!(ops.accesses().len(), 3);
    }

    #[test]
    fn done_port_kicks_and_is_not_logged() {
        let ops = RecordingOps::new();
        let kicker = Arc::new(CountingKicker::default());
        ops.set_kicker(kicker.clone());
        ops.pio_write(0x3f8, b"h");
        ops.pio_write(0x3f8, b"i");
        assert_eq!(ops.done(), None);
        ops.pio_write(DONE_PORT, &[7]);
        assert_eq!(ops.done(), Some(7));
        assert_eq!(kicker.0.load(Ordering::SeqCst), 1);
        assert_eq!(ops.pio_bytes_written(0x3f8), b"hi");
        assert_eq!(ops.accesses().len(), 2);
        // An empty write cannot panic.
        ops.pio_write(DONE_PORT, &[]);
        assert_eq!(ops.done(), Some(0));
    }
}
