//! The host terminal as the guest's serial console.
//!
//! An interactive terminal goes to raw mode (so the guest's shell sees every key, Ctrl-C
//! included) and is restored on every exit path: normal return, error, signal and panic. The
//! escape `Ctrl-A x` ends the VM, as in QEMU; `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

/// Where console input goes (the serial device's receive FIFO).
pub type InputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

const CTRL_A: u8 = 0x01;

/// Saved terminal settings, restored by [`restore_terminal`] from any path.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode if it is a terminal. Idempotent.
pub fn enter_raw_mode() {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        return;
    }
    let mut saved = SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner());
    if saved.is_some() {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal descriptor.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal, termios a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut termios) } != 0 {
        return;
    }
    let original = termios;
    // SAFETY: cfmakeraw edits the struct in place.
    unsafe { libc::cfmakeraw(&mut termios) };
    // Keep output post-processing so host-side messages still start at column 0.
    termios.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: valid terminal descriptor and settings derived from its own.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) } == 0 {
        *saved = Some(original);
        install_panic_restore();
    }
}

/// Restores the terminal settings saved by [`enter_raw_mode`], if any.
pub fn restore_terminal() {
    let mut saved = match SAVED_TERMIOS.try_lock() {
        Ok(s) => s,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        // Held by a thread in the middle of entering raw mode; nothing saved yet that we can use.
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some(original) = saved.take() {
        // SAFETY: restoring settings previously read from the same descriptor.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &original) };
    }
}

fn install_panic_restore() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// Restores the terminal when dropped.
pub struct RawModeGuard;

impl RawModeGuard {
    pub fn new() -> Self {
        enter_raw_mode();
        RawModeGuard
    }
}

impl Default for RawModeGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Splits console input into guest bytes and the `Ctrl-A x` quit request.
#[derive(Default)]
pub struct EscapeParser {
    pending_ctrl_a: bool,
}

impl EscapeParser {
    /// Appends the bytes meant for the guest to `out`; returns true if the user asked to quit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.pending_ctrl_a {
                self.pending_ctrl_a = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => out.push(CTRL_A),
                    other => {
                        out.push(CTRL_A);
                        out.push(other);
                    }
                }
            } else if b == CTRL_A {
                self.pending_ctrl_a = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Reads stdin on its own thread for the life of the process, forwarding bytes to the current
/// sink. The sink can be swapped when the VM restarts. `on_quit` runs on `Ctrl-A x` (only when
/// stdin is a terminal: piped input is passed through untouched).
pub struct ConsoleInput {
    sink: Arc<Mutex<Option<InputSink>>>,
}

impl ConsoleInput {
    pub fn start(on_quit: Box<dyn Fn() + Send>) -> Self {
        let sink: Arc<Mutex<Option<InputSink>>> = Arc::new(Mutex::new(None));
        let thread_sink = sink.clone();
        // SAFETY: isatty only inspects the descriptor.
        let interactive = unsafe { libc::isatty(std::io::stdin().as_raw_fd()) } == 1;
        let spawned = thread::Builder::new().name("vmr-console".into()).spawn(move || {
            crate::seccomp::apply_for_thread(crate::seccomp::Role::Console);
            let mut stdin = std::io::stdin();
            let mut parser = EscapeParser::default();
            let mut buf = [0u8; 256];
            let mut out = Vec::with_capacity(256);
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return, // EOF: the guest keeps running without input.
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                out.clear();
                if interactive {
                    if parser.feed(&buf[..n], &mut out) {
                        on_quit();
                        return;
                    }
                } else {
                    out.extend_from_slice(&buf[..n]);
                }
                let current = thread_sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(sink) = current {
                    sink(&out);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("console input disabled: cannot start its thread: {e}");
        }
        ConsoleInput { sink }
    }

    /// Sends further input to `sink` (or nowhere with `None`).
    pub fn set_sink(&self, sink: Option<InputSink>) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut p = EscapeParser::default();
        let mut out = vec![];
        assert!(!p.feed(b"ls\r", &mut out));
        assert_eq!(out, b"ls\r");
        out.clear();
        assert!(!p.feed(&[CTRL_A, CTRL_A, b'a', CTRL_A, b'c'], &mut out));
        assert_eq!(out, vec![CTRL_A, b'a', CTRL_A, b'c']);
        out.clear();
        // The escape may be split across reads.
        assert!(!p.feed(&[b'q', CTRL_A], &mut out));
        assert!(p.feed(b"x", &mut out));
        assert_eq!(out, b"q");
    }
}
