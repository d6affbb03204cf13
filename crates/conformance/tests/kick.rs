//! Kicking: another thread makes `run()` return `Interrupted` promptly, whether the guest
//! spins or sits in HLT; a kick before `run()` is not lost and is consumed by one return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmr_conformance::guests::{CODE_ADDR, SPIN_THEN_HALT, SPIN_THEN_HALT_HLT};
use vmr_conformance::{for_each_backend, machine, Machine, Outcome};
use vmr_hypervisor::{Hypervisor, VcpuExit};

/// How long after a kick `run()` may take to return (the host KVM may emulate every
/// instruction at ~1 us each; this leaves a wide margin).
const KICK_DEADLINE: Duration = Duration::from_secs(2);

fn spinning_machine(hv: &dyn Hypervisor, entry_offset: u64) -> Machine {
    let mut m = machine(hv);
    m.load(CODE_ADDR, SPIN_THEN_HALT).unwrap();
    m.real_mode((CODE_ADDR + entry_offset) as u16).unwrap();
    m
}

/// Runs the vCPU while another thread kicks it after `delay`; returns the exit and how long
/// `run()` took after the kick was sent.
fn run_with_kick_after(m: &mut Machine, delay: Duration) -> (VcpuExit, Duration) {
    let kicker = m.vcpu.kicker();
    let sent = Arc::new(AtomicBool::new(false));
    let kick_thread = {
        let sent = sent.clone();
        thread::spawn(move || {
            thread::sleep(delay);
            let at = Instant::now();
            sent.store(true, Ordering::SeqCst);
            kicker.kick();
            at
        })
    };
    let exit = m.vcpu.run().expect("run");
    let returned = Instant::now();
    assert!(sent.load(Ordering::SeqCst), "run() returned {exit:?} before it was kicked");
    let kicked_at = kick_thread.join().unwrap();
    (exit, returned.saturating_duration_since(kicked_at))
}

#[test]
fn kick_interrupts_a_spinning_guest_and_run_resumes() {
    for_each_backend("kick_interrupts_a_spinning_guest_and_run_resumes", |hv| {
        let mut m = spinning_machine(hv, 0);
        let mut last_count = 0;
        for round in 0..3 {
            let (exit, latency) = run_with_kick_after(&mut m, Duration::from_millis(150));
            assert_eq!(exit, VcpuExit::Interrupted, "round {round}");
            assert!(latency < KICK_DEADLINE, "round {round}: run() took {latency:?} after the kick");
            let regs = m.vcpu.regs().unwrap();
            assert!(regs.rax > last_count, "round {round}: the guest made no progress ({:#x})", regs.rax);
            assert!((CODE_ADDR..CODE_ADDR + 4).contains(&regs.rip), "rip {:#x}", regs.rip);
            last_count = regs.rax;
        }
    });
}

#[test]
fn kick_interrupts_a_halted_guest() {
    for_each_backend("kick_interrupts_a_halted_guest", |hv| {
        let mut m = spinning_machine(hv, SPIN_THEN_HALT_HLT);
        let (exit, latency) = run_with_kick_after(&mut m, Duration::from_millis(150));
        if hv.name() == "kvm" {
            // The in-kernel irqchip keeps HLT inside KVM: only the kick gets us out.
            assert_eq!(exit, VcpuExit::Interrupted);
        } else {
            assert!(matches!(exit, VcpuExit::Interrupted | VcpuExit::Hlt), "{exit:?}");
        }
        assert!(latency < KICK_DEADLINE, "run() took {latency:?} after the kick");
    });
}

#[test]
fn kick_before_run_is_kept_and_consumed_once() {
    for_each_backend("kick_before_run_is_kept_and_consumed_once", |hv| {
        let mut m = spinning_machine(hv, 0);
        let kicker = m.vcpu.kicker();
        kicker.kick();
        kicker.kick();
        let start = Instant::now();
        assert_eq!(m.vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert!(start.elapsed() < KICK_DEADLINE);
        // Both kicks were consumed by that return: the next run() waits for a new kick.
        let (exit, latency) = run_with_kick_after(&mut m, Duration::from_millis(300));
        assert_eq!(exit, VcpuExit::Interrupted);
        assert!(latency < KICK_DEADLINE);
    });
}

#[test]
fn deadline_times_out_and_kicker_outlives_vcpu() {
    for_each_backend("deadline_times_out_and_kicker_outlives_vcpu", |hv| {
        let mut m = spinning_machine(hv, 0);
        let (outcome, took) = m.run_timed(Duration::from_millis(200));
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(took < Duration::from_millis(200) + KICK_DEADLINE, "took {took:?}");
        let kicker = m.vcpu.kicker();
        drop(m);
        // The vCPU and its kvm_run page are gone: kicking must be a harmless no-op.
        kicker.kick();
        kicker.kick();
    });
}

#[test]
fn many_kicks_from_many_threads() {
    for_each_backend("many_kicks_from_many_threads", |hv| {
        let mut m = spinning_machine(hv, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let kickers: Vec<_> = (0..3)
            .map(|_| {
                let (kicker, stop) = (m.vcpu.kicker(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        kicker.kick();
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            let start = Instant::now();
            assert_eq!(m.vcpu.run().unwrap(), VcpuExit::Interrupted);
            assert!(start.elapsed() < KICK_DEADLINE);
        }
        stop.store(true, Ordering::SeqCst);
        kickers.into_iter().for_each(|t| t.join().unwrap());
    });
}
