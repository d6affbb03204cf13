//! Pausing vCPU threads: a gate each vCPU passes before it enters the guest.
//!
//! Pausing closes the gate and kicks every vCPU out of the guest; each parks on a condition
//! variable (no host CPU used) until the gate opens again or the machine stops. The API thread
//! only waits for the vCPUs to say they parked; a vCPU never waits for the API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct GateState {
    paused: bool,
    /// vCPU threads parked at the gate right now.
    parked: usize,
}

/// The gate every vCPU thread of one machine passes.
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a vCPU thread between runs: parks while the gate is closed and `stop` is not
    /// set. Returns true if the thread was parked (the caller then tells the backend the guest
    /// was paused, e.g. kvmclock).
    pub fn pass(&self, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        if !state.paused || stop.load(Ordering::Acquire) {
            return false;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !stop.load(Ordering::Acquire) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
        true
    }

    /// Closes the gate; the caller kicks the vCPUs and then calls [`PauseGate::wait_parked`].
    pub fn close(&self) {
        self.lock().paused = true;
    }

    /// Waits until `count` vCPU threads are parked (false after `timeout`).
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.parked < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Opens the gate and wakes every parked vCPU (also used to let them see a stop request).
    pub fn open(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Wakes parked vCPUs without opening the gate, so they notice `stop`.
    pub fn wake(&self) {
        let _guard = self.lock();
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().paused
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_closed_gate_parks_until_opened_or_stopped() {
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        assert!(!gate.pass(&stop), "an open gate does not park");
        gate.close();
        let (g, s) = (gate.clone(), stop.clone());
        let thread = std::thread::spawn(move || g.pass(&s));
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        assert!(!thread.is_finished());
        gate.open();
        assert!(thread.join().unwrap(), "the thread reports it was parked");

        gate.close();
        let (g, s) = (gate.clone(), stop.clone());
        let thread = std::thread::spawn(move || g.pass(&s));
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        stop.store(true, Ordering::Release);
        gate.wake();
        thread.join().unwrap();
        assert!(!gate.wait_parked(1, Duration::from_millis(10)), "nobody parked any more");
    }
}
