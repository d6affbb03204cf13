//! Interrupt controllers and timers of the software CPU: one [`lapic`] per vCPU, the
//! [`ioapic`], the [`pic`] pair, the [`pit`], and the wiring between them ([`IrqChipCore`]).
//!
//! Wiring (as the machine's MADT/MP table announce it): GSI n is IOAPIC pin n (no interrupt
//! source override; ISA IRQ 0, the PIT, is pin 0) and, below 16, PIC input n; the PIC's INTR goes
//! to the BSP's LINT0 (ExtINT). Locks nest PIC -> LAPIC only; the IOAPIC lock is released before
//! its messages are delivered.
//!
//! Each LAPIC publishes "something to deliver" in an atomic byte the run loop reads between
//! blocks ([`LocalApic::flag`]); whoever raises an interrupt sets it and wakes a halted vCPU.
//! Timer deadlines (LAPIC timers, PIT channel 0) and irqfds are served by one thread per VM
//! ([`service`]), so the run loop never reads the clock.
//!
//! Time: the VM clock counts nanoseconds from VM creation; the TSC runs at [`TSC_HZ`] (1 GHz) on
//! the same clock, the LAPIC timer at the [`CRYSTAL_HZ`] crystal ([`cpuid_leaves`] tells the
//! guest both, so Linux calibrates nothing).

pub mod ioapic;
pub mod lapic;
pub mod ops;
pub mod persist;
pub mod pic;
pub mod pit;
pub mod service;
pub mod source;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::Thread;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;
use vmr_hypervisor::CpuidEntry;

use ioapic::{Ioapic, IOAPIC_PINS};
use lapic::{Lapic, Msi, Shorthand, WriteEffect, DM_FIXED, DM_INIT, DM_LOWEST, DM_NMI, DM_SIPI};
use pic::Pic;
use pit::Pit;

/// TSC frequency (the guest TSC is the VM clock in nanoseconds plus an offset).
pub const TSC_HZ: u64 = 1_000_000_000;
/// Core crystal clock: the LAPIC timer input (CPUID 0x15 ECX).
pub const CRYSTAL_HZ: u64 = 25_000_000;
/// One LAPIC timer tick before the divider.
pub const LAPIC_TICK_NS: u64 = 1_000_000_000 / CRYSTAL_HZ;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Size of the IOAPIC and LAPIC MMIO windows.
pub const MMIO_SIZE: u64 = 0x1000;

/// Bit of [`LocalApic::flag`]: a maskable interrupt passes the priority checks (needs IF).
pub const FLAG_MASKABLE: u8 = 1;
/// Bit of [`LocalApic::flag`]: NMI or INIT pending (taken regardless of IF).
pub const FLAG_NMI_INIT: u8 = 2;

/// CPUID leaf-1 ECX bit: TSC-deadline timer.
pub const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID leaf-1 ECX bit: x2APIC (IA32_APIC_BASE.EXTD and the MSRs at 0x800-0x8ff).
pub const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// IA32_APIC_BASE: APIC global enable.
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE: x2APIC mode.
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// CPUID leaf-1 EDX bit: on-chip APIC.
pub const CPUID_1_EDX_APIC: u32 = 1 << 9;
/// CPUID leaf-6 EAX bit: APIC timer always running (ARAT).
pub const CPUID_6_EAX_ARAT: u32 = 1 << 2;
/// CPUID leaf-7 EBX bit: IA32_TSC_ADJUST.
pub const CPUID_7_EBX_TSC_ADJUST: u32 = 1 << 1;
/// CPUID leaf-0x80000007 EDX bit: invariant TSC.
pub const CPUID_E7_EDX_INVARIANT_TSC: u32 = 1 << 8;

/// The CPUID leaves the interrupt/timer model needs: 0x6 (ARAT), 0x15 (TSC/crystal ratio and
/// crystal frequency, which Linux also takes as the LAPIC timer rate) and 0x16 (nominal MHz).
/// Leaf 0's maximum must be raised to at least 0x16 and leaf 1 must carry
/// [`CPUID_1_EDX_APIC`], [`CPUID_1_ECX_TSC_DEADLINE`] and [`CPUID_1_ECX_X2APIC`].
pub fn cpuid_leaves() -> Vec<CpuidEntry> {
    let leaf = |function, eax, ebx, ecx, edx| CpuidEntry { function, index: 0, flags: 0, eax, ebx, ecx, edx };
    let mhz = (TSC_HZ / 1_000_000) as u32;
    vec![
        leaf(0x6, CPUID_6_EAX_ARAT, 0, 0, 0),
        leaf(0x15, 1, (TSC_HZ / CRYSTAL_HZ) as u32, CRYSTAL_HZ as u32, 0),
        leaf(0x16, mhz, mhz, (CRYSTAL_HZ / 1_000_000) as u32, 0),
    ]
}

/// Adds [`cpuid_leaves`], the leaf-1 APIC and TSC-deadline bits, TSC_ADJUST (leaf 7) and the
/// invariant TSC (leaf 0x80000007) to `table`, raising the maximum basic leaf to 0x16. With a
/// known frequency, an invariant TSC and TSC_ADJUST, Linux trusts the TSC without the clocksource
/// watchdog (which otherwise compares it with jiffies and, when ticks arrive late on a busy
/// host, marks it unstable).
pub fn add_cpuid(table: &mut Vec<CpuidEntry>) {
    let extra = cpuid_leaves();
    table.retain(|e| !extra.iter().any(|x| x.function == e.function));
    for e in table.iter_mut() {
        match e.function {
            0 => e.eax = e.eax.max(0x16),
            1 => {
                e.edx |= CPUID_1_EDX_APIC;
                e.ecx |= CPUID_1_ECX_TSC_DEADLINE | CPUID_1_ECX_X2APIC;
            }
            7 if e.index == 0 => e.ebx |= CPUID_7_EBX_TSC_ADJUST,
            0x8000_0007 => e.edx |= CPUID_E7_EDX_INVARIANT_TSC,
            _ => {}
        }
    }
    if !table.iter().any(|e| e.function == 0x8000_0007) {
        table.push(CpuidEntry {
            function: 0x8000_0007,
            edx: CPUID_E7_EDX_INVARIANT_TSC,
            ..Default::default()
        });
    }
    table.extend(extra);
    table.sort_by_key(|e| (e.function, e.index));
}

/// The VM clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub origin: Instant,
}

impl Clock {
    /// Nanoseconds since the VM was created.
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// The thread inside `Vcpu::run`, woken (unparked) by interrupts and kicks.
pub type Waiter = Arc<Mutex<Option<Thread>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One vCPU's local APIC as the rest of the machine reaches it.
pub struct LocalApic {
    pub id: u32,
    model: Mutex<Lapic>,
    /// [`FLAG_MASKABLE`] | [`FLAG_NMI_INIT`]: read by the run loop without a lock.
    pub flag: Arc<AtomicU8>,
    /// The PIC's INTR line (meaningful on the BSP).
    extint: AtomicBool,
    /// IA32_APIC_BASE (base | enable bit 11 | BSP bit 8).
    apic_base: AtomicU64,
    /// The vCPU waits for a SIPI (SIPIs are dropped otherwise, unless an INIT is pending).
    pub waiting_sipi: AtomicBool,
    waiter: Waiter,
}

impl LocalApic {
    pub fn new(id: u32, waiter: Waiter) -> Self {
        let bsp = if id == 0 { 1 << 8 } else { 0 };
        LocalApic {
            id,
            model: Mutex::new(Lapic::new(id)),
            flag: Arc::new(AtomicU8::new(0)),
            extint: AtomicBool::new(false),
            apic_base: AtomicU64::new(LAPIC_BASE | APIC_BASE_EN | bsp),
            waiting_sipi: AtomicBool::new(false),
            waiter,
        }
    }

    pub fn apic_base(&self) -> u64 {
        self.apic_base.load(Ordering::Acquire)
    }

    /// Loads IA32_APIC_BASE (state restore, the VMM's setup): base, enable (bit 11), x2APIC
    /// mode (EXTD, bit 10, only with enable) and BSP (bit 8).
    pub fn set_apic_base(&self, v: u64) {
        let mut v = v & (0x000f_ffff_ffff_f000 | APIC_BASE_EN | APIC_BASE_EXTD | (1 << 8));
        if v & APIC_BASE_EN == 0 {
            v &= !APIC_BASE_EXTD;
        }
        self.apic_base.store(v, Ordering::Release);
        self.with(|m| m.r.x2apic = v & APIC_BASE_EXTD != 0);
    }

    /// WRMSR of IA32_APIC_BASE by the guest: false (#GP) for reserved bits and the mode changes
    /// the SDM forbids (x2APIC to xAPIC, disabled to x2APIC, EXTD without enable).
    pub fn write_apic_base(&self, v: u64) -> bool {
        let (old, new) =
            (self.apic_base() & (APIC_BASE_EN | APIC_BASE_EXTD), v & (APIC_BASE_EN | APIC_BASE_EXTD));
        let reserved = v & !(0x000f_ffff_ffff_f000 | APIC_BASE_EN | APIC_BASE_EXTD | (1 << 8)) != 0;
        let x2 = APIC_BASE_EN | APIC_BASE_EXTD;
        let forbidden =
            new == APIC_BASE_EXTD || (old == x2 && new == APIC_BASE_EN) || (old == 0 && new == x2);
        if reserved || forbidden {
            return false;
        }
        self.set_apic_base(v);
        true
    }

    pub fn hw_enabled(&self) -> bool {
        self.apic_base() & APIC_BASE_EN != 0
    }

    /// In x2APIC mode the registers are MSRs and the MMIO page is not decoded.
    pub fn x2apic(&self) -> bool {
        self.apic_base() & APIC_BASE_EXTD != 0
    }

    /// Runs `f` on the register model, then republishes the flag (waking the vCPU if something
    /// new became deliverable).
    pub fn with<R>(&self, f: impl FnOnce(&mut Lapic) -> R) -> R {
        let mut m = lock(&self.model);
        let r = f(&mut m);
        self.refresh(&m);
        r
    }

    fn refresh(&self, m: &Lapic) {
        let mut f = 0;
        if m.deliverable().is_some()
            || (self.extint.load(Ordering::Acquire) && m.accepts_extint(self.hw_enabled()))
        {
            f |= FLAG_MASKABLE;
        }
        if m.r.pending_nmi || m.r.pending_init {
            f |= FLAG_NMI_INIT;
        }
        let old = self.flag.swap(f, Ordering::AcqRel);
        if f & !old != 0 || m.r.pending_sipi.is_some() {
            self.wake();
        }
    }

    /// Unparks the vCPU thread (a halted or SIPI-waiting vCPU re-checks its state).
    pub fn wake(&self) {
        if let Some(t) = lock(&self.waiter).as_ref() {
            t.unpark();
        }
    }

    fn set_extint(&self, level: bool) {
        self.extint.store(level, Ordering::Release);
        self.with(|_| ());
    }

    fn extint_wanted(&self) -> bool {
        self.extint.load(Ordering::Acquire) && self.with(|m| m.accepts_extint(self.hw_enabled()))
    }

    /// Takes a SIPI vector, if one arrived.
    pub fn take_sipi(&self) -> Option<u8> {
        self.with(|m| m.r.pending_sipi.take())
    }

    /// Takes a pending INIT: the APIC resets (a SIPI that came after the INIT is kept).
    pub fn take_init(&self) -> bool {
        self.with(|m| {
            if !m.r.pending_init {
                return false;
            }
            let sipi = m.r.pending_sipi;
            m.init_reset();
            m.r.pending_sipi = sipi;
            true
        })
    }

    /// Accepts one message addressed to this APIC.
    fn receive(&self, msg: &Msi) {
        self.with(|m| match msg.mode {
            DM_FIXED | DM_LOWEST => {
                m.accept(msg.vector, msg.level_triggered);
            }
            DM_NMI => m.r.pending_nmi = true,
            DM_INIT if !msg.deassert => m.r.pending_init = true,
            DM_SIPI if self.waiting_sipi.load(Ordering::Acquire) || m.r.pending_init => {
                m.r.pending_sipi = Some(msg.vector)
            }
            _ => {}
        });
    }
}

/// Everything VM-wide: the IOAPIC, PIC, PIT, the LAPIC list, irqfds and the service thread's
/// wake-up eventfd.
pub struct IrqChipCore {
    pub clock: Clock,
    ioapic: Mutex<Ioapic>,
    pic: Mutex<Pic>,
    pit: Mutex<Pit>,
    lapics: RwLock<Vec<Arc<LocalApic>>>,
    /// Input levels and rising edges per GSI (diagnostics and tests).
    lines: Mutex<[(bool, u64); IOAPIC_PINS]>,
    /// Written when a timer deadline may have moved earlier: the service thread re-reads them.
    pub timer_kick: EventFd,
    /// The last host-side TSC write (value, offset), so that every vCPU set to the same value
    /// gets the same offset (as KVM matches TSC writes).
    tsc_sync: Mutex<Option<(u64, u64)>>,
}

impl IrqChipCore {
    /// A chip whose IOAPIC has `ioapic_id`.
    pub fn new(ioapic_id: u32) -> std::io::Result<Self> {
        Ok(IrqChipCore {
            clock: Clock { origin: Instant::now() },
            ioapic: Mutex::new(Ioapic::new(ioapic_id)),
            pic: Mutex::new(Pic::default()),
            pit: Mutex::new(Pit::default()),
            lapics: RwLock::new(Vec::new()),
            lines: Mutex::new([(false, 0); IOAPIC_PINS]),
            timer_kick: EventFd::new(libc::EFD_NONBLOCK)?,
            tsc_sync: Mutex::new(None),
        })
    }

    /// Adds a vCPU's LAPIC to the bus.
    pub fn add_lapic(&self, lapic: Arc<LocalApic>) {
        self.lapics.write().unwrap_or_else(|e| e.into_inner()).push(lapic);
    }

    fn lapics(&self) -> Vec<Arc<LocalApic>> {
        self.lapics.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn bsp(&self) -> Option<Arc<LocalApic>> {
        self.lapics().into_iter().find(|l| l.apic_base() & (1 << 8) != 0)
    }

    /// Drives `gsi` (IOAPIC pin, and PIC input below 16). Out-of-range GSIs are the caller's
    /// error (checked by the `IrqChip` impl).
    pub fn set_irq(&self, gsi: u32, level: bool) {
        if let Some(slot) = lock(&self.lines).get_mut(gsi as usize) {
            if level && !slot.0 {
                slot.1 += 1;
            }
            slot.0 = level;
        }
        if gsi < 16 {
            let mut pic = lock(&self.pic);
            let intr = pic.set_irq(gsi, level);
            self.route_intr(intr);
        }
        let msg = lock(&self.ioapic).set_irq(gsi as usize, level);
        if let Some(m) = msg {
            self.deliver(&m, None);
        }
    }

    /// Rising edges seen on `gsi`.
    pub fn edges(&self, gsi: u32) -> u64 {
        lock(&self.lines).get(gsi as usize).map_or(0, |s| s.1)
    }

    /// Current level of `gsi`.
    pub fn level(&self, gsi: u32) -> bool {
        lock(&self.lines).get(gsi as usize).is_some_and(|s| s.0)
    }

    /// Called with the PIC lock held: the INTR level goes to the BSP's LINT0.
    fn route_intr(&self, intr: bool) {
        if let Some(bsp) = self.bsp() {
            bsp.set_extint(intr);
        }
    }

    /// Carries out what a register write of `lapic` asked for.
    pub fn apply(&self, lapic: &LocalApic, effect: WriteEffect) {
        match effect {
            WriteEffect::None => {}
            WriteEffect::LevelEoi(vector) => self.eoi_level(vector),
            WriteEffect::Ipi(msg) => self.deliver(&msg, Some(lapic.id)),
            WriteEffect::Timer => self.timers_changed(),
        }
    }

    /// Sends `msg` to the APICs it addresses (`from` for the ICR shorthands).
    pub fn deliver(&self, msg: &Msi, from: Option<u32>) {
        let lapics = self.lapics();
        let targets = lapics.iter().filter(|l| match msg.shorthand {
            Shorthand::None => l.with(|m| m.matches(msg.dest, msg.logical)),
            Shorthand::SelfOnly => Some(l.id) == from,
            Shorthand::All => true,
            Shorthand::AllButSelf => Some(l.id) != from,
        });
        if msg.mode == DM_LOWEST {
            // Any one target will do: take the one with the lowest task priority.
            if let Some(l) = targets.min_by_key(|l| l.with(|m| m.r.tpr)) {
                l.receive(msg);
            }
            return;
        }
        for l in targets {
            l.receive(msg);
        }
    }

    /// EOI of a level-triggered vector: the IOAPIC may deliver again.
    pub fn eoi_level(&self, vector: u8) {
        let msgs = lock(&self.ioapic).eoi(vector);
        for m in &msgs {
            self.deliver(m, None);
        }
    }

    /// Tells the service thread to look at the deadlines again.
    pub fn timers_changed(&self) {
        let _ = self.timer_kick.write(1);
    }

    /// Fires every expired timer at `now`; returns the earliest future deadline.
    pub fn service_timers(&self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for l in self.lapics() {
            let d = l.with(|m| {
                m.timer_tick(now);
                m.timer_deadline()
            });
            next = next.into_iter().chain(d).min();
        }
        let (fire, pit_next) = {
            let mut pit = lock(&self.pit);
            (pit.tick(now), pit.irq_deadline())
        };
        if fire {
            self.set_irq(0, true);
            self.set_irq(0, false);
        }
        next.into_iter().chain(pit_next).min()
    }

    /// Port I/O on the PIC, ELCR, PIT and port 0x61; None for other ports.
    pub fn pio_read(&self, port: u16) -> Option<u8> {
        match port {
            0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => {
                let mut pic = lock(&self.pic);
                let (v, intr) = pic.read(port);
                self.route_intr(intr);
                Some(v)
            }
            0x40..=0x43 | 0x61 => Some(lock(&self.pit).read(port, self.clock.now())),
            _ => None,
        }
    }

    /// Port write; false if the port is not one of the chip's.
    pub fn pio_write(&self, port: u16, v: u8) -> bool {
        match port {
            0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => {
                let mut pic = lock(&self.pic);
                let intr = pic.write(port, v);
                self.route_intr(intr);
            }
            0x40..=0x43 | 0x61 => {
                if lock(&self.pit).write(port, v, self.clock.now()) {
                    self.timers_changed();
                }
            }
            _ => return false,
        }
        true
    }

    pub fn ioapic_read(&self, offset: u64) -> u32 {
        lock(&self.ioapic).read(offset)
    }

    pub fn ioapic_write(&self, offset: u64, v: u32) {
        let msgs = lock(&self.ioapic).write(offset, v);
        for m in &msgs {
            self.deliver(m, None);
        }
    }

    /// Interrupt acknowledge towards the PIC (ExtINT): the vector, if INTR is still up.
    fn pic_intack(&self) -> Option<u8> {
        let mut pic = lock(&self.pic);
        if !pic.intr() {
            return None;
        }
        let (v, intr) = pic.intack();
        self.route_intr(intr);
        Some(v)
    }

    /// The TSC offset for a host-side write of `value` (the same value gets the same offset).
    pub fn tsc_offset_for(&self, value: u64) -> u64 {
        let mut s = lock(&self.tsc_sync);
        if let Some((v, off)) = *s {
            if v == value {
                return off;
            }
        }
        let off = value.wrapping_sub(self.clock.now());
        *s = Some((value, off));
        off
    }
}

#[cfg(test)]
mod tests;
