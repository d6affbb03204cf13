//! Where vmr's log lines go and from which level: stderr and `warn` until `PUT /logger` (or
//! the config file's `logger`) names a file and a level, as Firecracker's logger does. The
//! `vmr` binary's tracing subscriber asks [`enabled`] and writes through [`writer`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::api::schema::Logger;

/// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static LEVEL: AtomicU8 = AtomicU8::new(2);
static FILE: Mutex<Option<Arc<File>>> = Mutex::new(None);

/// Parses Firecracker's level names (`Error`, `Warning`, `Info`, `Debug`, `Trace`, `Off`, any
/// case; `Warn` too). Returns 0 for `Off`.
pub fn parse_level(text: &str) -> Result<u8, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(0),
        "error" => Ok(1),
        "warning" | "warn" => Ok(2),
        "info" => Ok(3),
        "debug" => Ok(4),
        "trace" => Ok(5),
        _ => Err(format!("log level '{text}': expected Error, Warning, Info, Debug, Trace or Off")),
    }
}

/// Applies a `PUT /logger` body: opens `log_path` for appending (a FIFO too: Kata passes one)
/// and sets the level.
pub fn configure(logger: &Logger) -> Result<(), String> {
    let level = logger.level.as_deref().map(parse_level).transpose()?;
    if let Some(path) = &logger.log_path {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot open log_path {path}: {e}"))?;
        *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(file));
    }
    if let Some(level) = level {
        LEVEL.store(level, Ordering::Relaxed);
    }
    Ok(())
}

/// True if a line at `level` (1 error .. 5 trace) is logged.
pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// The current log destination.
pub fn writer() -> LogWriter {
    LogWriter(FILE.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Writes to the configured file, or to stderr.
pub struct LogWriter(Option<Arc<File>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Some(file) => (&**file).write(buf),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &self.0 {
            Some(file) => (&**file).flush(),
            None => io::stderr().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("Warning"), Ok(2));
        assert_eq!(parse_level("DEBUG"), Ok(4));
        assert!(parse_level("loud").unwrap_err().contains("expected Error"));
    }
}
