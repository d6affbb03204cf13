//! Exit statistics of one boot (`VMR_STATS=1`): exits to vmr by kind and port I/O accesses by
//! port, printed as one line to stderr when the machine stops. Counting is always on; it costs
//! one relaxed atomic increment per exit and per port access, next to an exit of microseconds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use vmr_hypervisor::ExitKind;

/// Ports below this (legacy ISA space: serial, i8042, CMOS, PIT) and the PCI configuration
/// ports are counted one by one, the rest together: 4 KiB of counters.
const ISA_PORTS: usize = 0x400;
const PCI_CONFIG_PORTS: std::ops::RangeInclusive<u16> = 0xcf8..=0xcff;
const TRACKED_PORTS: usize = ISA_PORTS + 8;

/// Counter index of `port`, if it has its own.
fn port_slot(port: u16) -> Option<usize> {
    if usize::from(port) < ISA_PORTS {
        Some(usize::from(port))
    } else if PCI_CONFIG_PORTS.contains(&port) {
        Some(ISA_PORTS + usize::from(port - PCI_CONFIG_PORTS.start()))
    } else {
        None
    }
}

/// The port of counter `slot` (inverse of [`port_slot`]).
fn slot_port(slot: usize) -> usize {
    if slot < ISA_PORTS {
        slot
    } else {
        slot - ISA_PORTS + usize::from(*PCI_CONFIG_PORTS.start())
    }
}
/// How many of the busiest ports the line names.
const TOP_PORTS: usize = 8;

static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Remembers now as the process start (call first thing in `main`), for `start_ms`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// Time since [`mark_process_start`] (zero if it was not called).
pub fn since_process_start() -> Duration {
    PROCESS_START.get().map_or(Duration::ZERO, |t| t.elapsed())
}

/// The environment variable that turns the statistics line on.
pub const STATS_ENV: &str = "VMR_STATS";

/// True if the user asked for the statistics line (`VMR_STATS` set, not empty or `0`).
pub fn enabled() -> bool {
    std::env::var_os(STATS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Where the time of one boot went, for the statistics line.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootTimes {
    /// From the process start to the vCPUs starting.
    pub start: Duration,
    /// Of `setup`: guest memory, kernel, initrd and tables (before any backend call).
    pub load: Duration,
    /// From the start of this boot to the vCPUs starting: `load`, then the backend's VM,
    /// devices and vCPUs.
    pub setup: Duration,
    /// From the vCPUs starting to the end of the boot.
    pub run: Duration,
}

/// Counters of one machine, shared by its vCPU threads.
pub struct ExitStats {
    exits: [AtomicU64; ExitKind::COUNT],
    ports: Box<[AtomicU32]>,
    high_ports: AtomicU64,
    mmio: AtomicU64,
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats {
            exits: Default::default(),
            ports: (0..TRACKED_PORTS).map(|_| AtomicU32::new(0)).collect(),
            high_ports: AtomicU64::new(0),
            mmio: AtomicU64::new(0),
        }
    }
}

impl ExitStats {
    pub fn exit(&self, kind: ExitKind) {
        if let Some(c) = self.exits.get(kind.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One port access (string I/O makes several per exit).
    pub fn port_access(&self, port: u16) {
        match port_slot(port).and_then(|i| self.ports.get(i)) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.high_ports.fetch_add(1, Ordering::Relaxed) as u32,
        };
    }

    pub fn mmio_access(&self) {
        self.mmio.fetch_add(1, Ordering::Relaxed);
    }

    /// `vmr: stats start_ms=.. load_ms=.. setup_ms=.. run_ms=.. exits=.. pio_in=.. ... |
    /// port_accesses=.. 0x3f8=.. ... | mmio_accesses=..` (times: see [`BootTimes`]).
    pub fn line(&self, t: &BootTimes) -> String {
        let counts: Vec<u64> = self.exits.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut out = format!(
            "vmr: stats start_ms={} load_ms={} setup_ms={} run_ms={} exits={}",
            t.start.as_millis(),
            t.load.as_millis(),
            t.setup.as_millis(),
            t.run.as_millis(),
            counts.iter().sum::<u64>()
        );
        for (kind, n) in ExitKind::ALL.iter().zip(&counts) {
            let _ = write!(out, " {}={n}", kind.name());
        }
        let mut ports: Vec<(usize, u32)> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, c)| (slot_port(i), c.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 =
            ports.iter().map(|&(_, n)| u64::from(n)).sum::<u64>() + self.high_ports.load(Ordering::Relaxed);
        let _ = write!(out, " | port_accesses={total}");
        for (port, n) in ports.iter().take(TOP_PORTS) {
            let _ = write!(out, " {port:#x}={n}");
        }
        let high = self.high_ports.load(Ordering::Relaxed);
        if high > 0 {
            let _ = write!(out, " high={high}");
        }
        let _ = write!(out, " | mmio_accesses={}", self.mmio.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_counts_kinds_and_busiest_ports() {
        let s = ExitStats::default();
        for _ in 0..3 {
            s.exit(ExitKind::PioOut);
            s.port_access(0x3f8);
        }
        s.exit(ExitKind::Hlt);
        s.port_access(0x70);
        s.port_access(0xcf8);
        s.port_access(0xcf8);
        s.port_access(0xc000);
        s.port_access(0x400);
        s.mmio_access();
        let ms = Duration::from_millis;
        let line = s.line(&BootTimes { start: ms(20), load: ms(9), setup: ms(12), run: ms(3400) });
        assert!(
            line.starts_with("vmr: stats start_ms=20 load_ms=9 setup_ms=12 run_ms=3400 exits=4 "),
            "{line}"
        );
        assert!(line.contains(" exits=4 pio_in=0 pio_out=3 mmio_read=0 mmio_write=0 hlt=1 "), "{line}");
        assert!(line.contains("| port_accesses=8 0x3f8=3 0xcf8=2 0x70=1 high=2 | mmio_accesses=1"), "{line}");
    }

    #[test]
    fn only_the_busiest_ports_are_named() {
        let s = ExitStats::default();
        for port in (0..10u16).chain(0xcf8..=0xcff) {
            s.port_access(port);
        }
        s.port_access(0xcff);
        let line = s.line(&BootTimes::default());
        assert!(line.contains("port_accesses=19 0xcff=2 0x0=1 0x1=1 "), "{line}");
        let named = s.line(&BootTimes::default()).split(" | ").nth(1).unwrap().split(' ').count() - 1;
        assert_eq!(named, TOP_PORTS);
    }
}
