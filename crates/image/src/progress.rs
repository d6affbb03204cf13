//! Progress display for long steps: a one-line, self-updating display on a terminal, plain
//! lines otherwise (logs, CI).

use std::cell::Cell;
use std::io::{IsTerminal, Write};

/// Receives progress of a pull.
pub trait Progress {
    /// A new step starts.
    fn step(&self, what: &str);
    /// Byte progress within the current step.
    fn bytes(&self, done: u64, total: u64);
    /// The current step finished; `result` says how (e.g. "done", "cached").
    fn finish(&self, result: &str);
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: &str) {}
    fn bytes(&self, _: u64, _: u64) {}
    fn finish(&self, _: &str) {}
}

/// Progress on stderr: a percentage updated in place on a terminal, one line per step otherwise.
pub struct StderrProgress {
    tty: bool,
    current: std::cell::RefCell<String>,
    last_percent: Cell<Option<u64>>,
}

impl StderrProgress {
    /// Detects whether stderr is a terminal.
    pub fn new() -> Self {
        StderrProgress {
            tty: std::io::stderr().is_terminal(),
            current: Default::default(),
            last_percent: Cell::new(None),
        }
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for StderrProgress {
    fn step(&self, what: &str) {
        *self.current.borrow_mut() = what.to_string();
        self.last_percent.set(None);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{what} ...");
        } else {
            let _ = writeln!(err, "{what} ...");
        }
        let _ = err.flush();
    }

    fn bytes(&self, done: u64, total: u64) {
        if !self.tty || total == 0 {
            return;
        }
        let pct = done.saturating_mul(100) / total;
        if self.last_percent.get() == Some(pct) {
            return;
        }
        self.last_percent.set(Some(pct));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{} ... {pct:3}%", self.current.borrow());
        let _ = err.flush();
    }

    fn finish(&self, result: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[K{} ... {result}", self.current.borrow());
        } else {
            let _ = writeln!(err, "{} ... {result}", self.current.borrow());
        }
    }
}
