//! Snapshot state of a software vCPU in the backend-neutral [`VcpuState`]: every MSR the model
//! keeps, the LAPIC page and its pending NMI/INIT/SIPI, the TSC as value and rate, the run state
//! (halted, waiting for SIPI, interrupt shadow) and CPUID.
//!
//! Restore order (the traps Firecracker documents for KVM apply to the model too): segment and
//! control registers first (they set the mode), then the general registers, FPU, the TSC (the
//! LAPIC's TSC-deadline timer is relative to it), the LAPIC, and the MSRs after the LAPIC
//! (IA32_TSC_DEADLINE arms the LAPIC timer); the timer service looks at the deadlines last.

use std::sync::atomic::Ordering;

use vmr_hypervisor::{HypervisorError, MsrEntry, Result, TscState, Vcpu, VcpuEvents, VcpuState};

use super::EmuVcpu;
use crate::irqchip::TSC_HZ;
use crate::msr::{IA32_APIC_BASE, IA32_TSC_DEADLINE};

/// More CPUID entries than any real table holds: a state with more is not ours.
const MAX_CPUID_ENTRIES: usize = 512;

impl EmuVcpu {
    pub(super) fn save_full(&self) -> Result<VcpuState> {
        let c = &self.engine.cpu;
        let mut msrs: Vec<MsrEntry> = c.msr.stored().map(|(index, data)| MsrEntry { index, data }).collect();
        if let Some(data) = c.msr.get(IA32_TSC_DEADLINE).filter(|_| c.msr.apic.is_some()) {
            msrs.push(MsrEntry { index: IA32_TSC_DEADLINE, data });
        }
        let (nmi_pending, init_pending, sipi_vector) = match &self.apic {
            Some(a) => a.with(|m| (m.r.pending_nmi, m.r.pending_init, m.r.pending_sipi)),
            None => (false, false, None),
        };
        Ok(VcpuState {
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: c.fpu,
            msrs,
            lapic: Some(self.lapic()?),
            xcr0: c.xcr0,
            debug_regs: c.dr,
            events: VcpuEvents {
                halted: c.halted,
                waiting_for_sipi: self.wait_sipi,
                interrupt_shadow: c.int_shadow,
                nmi_pending,
                init_pending: init_pending || self.engine.init_pending,
                sipi_vector,
            },
            tsc: Some(TscState { value: c.tsc(), hz: TSC_HZ }),
            cpuid: c.cpuid.clone(),
        })
    }

    pub(super) fn restore_full(&mut self, s: &VcpuState) -> Result<()> {
        if let Some(tsc) = s.tsc.filter(|t| t.hz != TSC_HZ) {
            return Err(HypervisorError::Invalid(format!(
                "the saved TSC runs at {} Hz, the software CPU's at {TSC_HZ} Hz (TSC scaling is not implemented)",
                tsc.hz
            )));
        }
        if s.xcr0 & 1 == 0 {
            return Err(HypervisorError::Invalid(format!("XCR0 {:#x} lacks x87 (bit 0)", s.xcr0)));
        }
        if s.cpuid.len() > MAX_CPUID_ENTRIES {
            return Err(HypervisorError::Invalid(format!("{} CPUID entries", s.cpuid.len())));
        }
        self.set_sregs(&s.sregs)?;
        self.set_regs(&s.regs)?;
        self.set_fpu(&s.fpu)?;
        {
            let c = &mut self.engine.cpu;
            c.xcr0 = s.xcr0;
            c.dr = s.debug_regs;
            if !s.cpuid.is_empty() {
                c.cpuid = s.cpuid.clone();
            }
        }
        // The TSC before the LAPIC: a TSC-deadline timer is an absolute TSC value, turned into
        // VM-clock time with the offset the LAPIC holds; loaded with a stale offset, the timer
        // service would sleep until the wrong time.
        if let Some(tsc) = s.tsc {
            let c = &mut self.engine.cpu;
            c.tsc_offset = match &self.core {
                Some(k) => k.tsc_offset_for(tsc.value),
                None => tsc.value.wrapping_sub(c.tsc_origin.elapsed().as_nanos() as u64),
            };
        }
        self.sync_tsc_offset();
        if let Some(lapic) = &s.lapic {
            self.set_lapic(lapic)?;
        }
        // APIC base is in the special registers (already loaded), the deadline arms the timer.
        let msrs: Vec<MsrEntry> = s.msrs.iter().copied().filter(|m| m.index != IA32_APIC_BASE).collect();
        self.set_msrs(&msrs)?;
        self.restore_events(&s.events);
        if let Some(k) = &self.core {
            k.timers_changed();
        }
        Ok(())
    }

    fn restore_events(&mut self, e: &VcpuEvents) {
        let c = &mut self.engine.cpu;
        c.halted = e.halted;
        c.int_shadow = e.interrupt_shadow;
        self.engine.init_pending = false;
        self.set_wait_sipi(e.waiting_for_sipi);
        if let Some(a) = &self.apic {
            a.with(|m| {
                m.r.pending_nmi = e.nmi_pending;
                m.r.pending_init = e.init_pending;
                m.r.pending_sipi = e.sipi_vector;
            });
            a.waiting_sipi.store(e.waiting_for_sipi, Ordering::Release);
        }
        self.sync_tsc_offset();
    }
}
