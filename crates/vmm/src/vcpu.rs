//! One thread per vCPU: run guest code, report the exits the machine must act on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use vmr_hypervisor::{Regs, SpecialRegs, Vcpu, VcpuExit};

use crate::machine::VmEvent;
use crate::pause::PauseGate;
use crate::VmmError;

/// Spawns the thread that runs `vcpu` until `stop` is set (and the vCPU kicked) or the guest
/// does something that ends the machine. Between runs the thread passes `gate`, where it parks
/// while the machine is paused.
/// A vCPU shared between its thread (which holds the lock only inside `run`) and the VMM,
/// which reads and writes its state while the machine is paused (snapshots).
pub type SharedVcpu = Arc<Mutex<Box<dyn Vcpu>>>;

pub fn lock(vcpu: &SharedVcpu) -> MutexGuard<'_, Box<dyn Vcpu>> {
    vcpu.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn spawn(
    vcpu: SharedVcpu,
    stop: Arc<AtomicBool>,
    gate: Arc<PauseGate>,
    events: Sender<VmEvent>,
) -> Result<JoinHandle<()>, VmmError> {
    let id = lock(&vcpu).id();
    thread::Builder::new()
        .name(format!("vmr-vcpu{id}"))
        .spawn(move || {
            crate::seccomp::apply_for_thread(crate::seccomp::Role::Vcpu);
            run_loop(&vcpu, &stop, &gate, &events)
        })
        .map_err(|source| VmmError::Thread { what: "vCPU", source })
}

fn run_loop(shared: &SharedVcpu, stop: &AtomicBool, gate: &PauseGate, events: &Sender<VmEvent>) {
    let id = lock(shared).id();
    let counters = &crate::metrics::metrics().vcpu;
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Parked at the gate without the lock: the VMM may read or replace the state meanwhile.
        if gate.pass(stop) {
            if let Err(e) = lock(shared).resumed_after_pause() {
                tracing::warn!("vCPU {id}: telling the guest it was paused failed: {e}");
            }
            continue;
        }
        let mut guard = lock(shared);
        let vcpu: &mut dyn Vcpu = guard.as_mut();
        let exit = vcpu.run();
        match &exit {
            Ok(VcpuExit::Interrupted) => counters.exit_interrupted.inc(),
            Ok(VcpuExit::Hlt) => counters.exit_hlt.inc(),
            Ok(VcpuExit::SystemPoweroff | VcpuExit::SystemReset) => counters.exit_system_event.inc(),
            Ok(VcpuExit::Shutdown) => counters.exit_shutdown.inc(),
            Ok(VcpuExit::InternalError(_)) | Err(_) => counters.failures.inc(),
        }
        let event = match exit {
            Ok(VcpuExit::Interrupted) => continue,
            Ok(VcpuExit::Hlt) => {
                // Only backends without their own interrupt handling return HLT; none of ours
                // does today. Yield so a buggy backend cannot spin a core.
                thread::yield_now();
                continue;
            }
            Ok(VcpuExit::SystemPoweroff) => VmEvent::Poweroff,
            Ok(VcpuExit::SystemReset) => VmEvent::Reset,
            Ok(VcpuExit::Shutdown) => VmEvent::Crash(crash_report(vcpu, id, "triple fault (shutdown)")),
            Ok(VcpuExit::InternalError(what)) => VmEvent::Crash(crash_report(vcpu, id, &what)),
            Err(e) => VmEvent::Crash(crash_report(vcpu, id, &format!("running the vCPU failed: {e}"))),
        };
        let _ = events.send(event);
        return;
    }
}

/// "vCPU 0: triple fault (shutdown); rip=... " with the registers a developer needs first.
fn crash_report(vcpu: &dyn Vcpu, id: u32, cause: &str) -> String {
    let (r, s) = (vcpu.regs(), vcpu.sregs());
    let note = match (&r, &s) {
        (Ok(r), Ok(s)) if is_reset_state(r, s) => RESET_NOTE,
        _ => "",
    };
    let regs = r.map(|r| format_regs(&r)).unwrap_or_else(|e| format!("registers unreadable: {e}"));
    let sregs = s.map(|s| format_sregs(&s)).unwrap_or_default();
    format!("vCPU {id}: {cause}\n  {regs}\n  {sregs}{note}")
}

const RESET_NOTE: &str =
    "\n  (the x86 reset state: the backend re-initialised the vCPU before reporting the \
     shutdown, as KVM on AMD SVM does, so the faulting registers are lost)";

/// True if the registers are the power-on/INIT state (CS:IP f000:fff0, CS base ffff0000).
fn is_reset_state(r: &Regs, s: &SpecialRegs) -> bool {
    r.rip == 0xfff0 && s.cs.selector == 0xf000 && s.cs.base == 0xffff_0000
}

fn format_regs(r: &Regs) -> String {
    format!(
        "rip={:#018x} rflags={:#010x} rsp={:#018x} rbp={:#018x}\n  \
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  \
         rsi={:#018x} rdi={:#018x} r8={:#018x} r9={:#018x}",
        r.rip, r.rflags, r.rsp, r.rbp, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.r8, r.r9
    )
}

fn format_sregs(s: &SpecialRegs) -> String {
    format!(
        "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#06x}(base {:#x}, l={}) idt={:#x}/{:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.cs.l as u8, s.idt.base, s.idt.limit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_is_recognised() {
        let mut r = Regs { rip: 0xfff0, ..Default::default() };
        let mut s = SpecialRegs::default();
        s.cs.selector = 0xf000;
        s.cs.base = 0xffff_0000;
        assert!(is_reset_state(&r, &s));
        r.rip = 0xfff3;
        assert!(!is_reset_state(&r, &s), "a vCPU that ran from the reset vector");
        r.rip = 0xfff0;
        s.cs.base = 0;
        assert!(!is_reset_state(&r, &s));
    }
}
