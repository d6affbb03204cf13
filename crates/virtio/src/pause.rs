//! Holding device workers while the VM is paused: a worker that wakes up (a queue notify left
//! over, a tap or vsock peer with data) parks here before it touches a queue or guest memory,
//! until the VMM resumes the VM or stops the device.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// One per machine, shared by every device worker.
#[derive(Default)]
pub struct WorkerGate {
    paused: Mutex<bool>,
    changed: Condvar,
}

impl WorkerGate {
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks the calling worker while paused. Returns true if `stop` was signalled meanwhile
    /// (the worker then ends instead of serving).
    pub(crate) fn park(&self, stop: &EventFd) -> bool {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *paused {
            // The stop EventFd is non-blocking: a successful read is a stop request.
            if stop.read().is_ok() {
                return true;
            }
            paused = self
                .changed
                .wait_timeout(paused, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_paused_gate_holds_until_resume_or_stop() {
        let gate = Arc::new(WorkerGate::default());
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(!gate.park(&stop));
        gate.pause();
        let (g, s) = (gate.clone(), stop.try_clone().unwrap());
        let t = std::thread::spawn(move || g.park(&s));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "a paused worker waits");
        gate.resume();
        assert!(!t.join().unwrap());
        gate.pause();
        let (g, s) = (gate.clone(), stop.try_clone().unwrap());
        let t = std::thread::spawn(move || g.park(&s));
        stop.write(1).unwrap();
        assert!(t.join().unwrap(), "stop ends a parked worker");
    }
}
