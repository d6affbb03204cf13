//! Wiring tests: IOAPIC -> LAPIC, IPIs, the PIC through LINT0, level EOI, timers.

use super::lapic::WriteEffect;
use super::lapic::{
    REG_EOI, REG_ICR_HI, REG_ICR_LO, REG_LDR, REG_LVT_LINT0, REG_LVT_TIMER, REG_SVR, REG_TMICT,
};
use super::source::ApicSource;
use super::*;
use crate::engine::{InterruptSource, IrqEvent};

fn chip(n: u32) -> (Arc<IrqChipCore>, Vec<Arc<LocalApic>>) {
    let core = Arc::new(IrqChipCore::new(n).unwrap());
    let lapics: Vec<_> = (0..n).map(|id| Arc::new(LocalApic::new(id, Waiter::default()))).collect();
    for l in &lapics {
        core.add_lapic(l.clone());
        l.with(|m| m.write(REG_SVR, 0x1ff, 0));
    }
    (core, lapics)
}

fn redirect(core: &IrqChipCore, pin: u32, lo: u32, dest: u8) {
    core.ioapic_write(0, 0x11 + 2 * pin);
    core.ioapic_write(0x10, (dest as u32) << 24);
    core.ioapic_write(0, 0x10 + 2 * pin);
    core.ioapic_write(0x10, lo);
}

#[test]
fn ioapic_pin_reaches_the_addressed_lapic() {
    let (core, l) = chip(2);
    redirect(&core, 5, 0x35, 1);
    core.set_irq(5, true);
    core.set_irq(5, false);
    assert_eq!(l[0].flag.load(Ordering::Acquire), 0);
    assert_eq!(l[1].flag.load(Ordering::Acquire), FLAG_MASKABLE);
    let mut src = ApicSource { lapic: l[1].clone(), core: core.clone() };
    assert_eq!(src.take_event(false), None, "IF clear");
    assert_eq!(src.take_event(true), Some(IrqEvent::Vector(0x35)));
    assert_eq!(l[1].flag.load(Ordering::Acquire), 0);
}

#[test]
fn level_interrupt_redelivered_after_eoi_while_asserted() {
    let (core, l) = chip(1);
    redirect(&core, 9, 0x8000 | 0x49, 0);
    core.set_irq(9, true);
    let mut src = ApicSource { lapic: l[0].clone(), core: core.clone() };
    assert_eq!(src.take_event(true), Some(IrqEvent::Vector(0x49)));
    let eff = l[0].with(|m| m.write(REG_EOI, 0, 0));
    assert_eq!(eff, lapic::WriteEffect::LevelEoi(0x49));
    core.eoi_level(0x49);
    assert_eq!(src.take_event(true), Some(IrqEvent::Vector(0x49)), "line still high");
    core.set_irq(9, false);
    l[0].with(|m| m.write(REG_EOI, 0, 0));
    core.eoi_level(0x49);
    assert_eq!(src.take_event(true), None);
}

#[test]
fn init_sipi_and_fixed_ipis() {
    let (core, l) = chip(3);
    l[2].waiting_sipi.store(true, Ordering::Release);
    let send = |lo: u32, dest: u32| {
        let WriteEffect::Ipi(msg) = l[0].with(|m| {
            m.write(REG_ICR_HI, dest << 24, 0);
            m.write(REG_ICR_LO, lo, 0)
        }) else {
            panic!("no IPI")
        };
        core.deliver(&msg, Some(0));
    };
    send(0x4500, 1); // INIT to 1
    send(0x0608, 2); // SIPI to 2 (waiting)
    send(0x0609, 1); // SIPI to 1 (INIT pending: kept)
    assert_eq!(l[1].flag.load(Ordering::Acquire), FLAG_NMI_INIT);
    assert!(l[1].take_init());
    assert_eq!(l[1].take_sipi(), Some(9));
    l[1].with(|m| m.write(REG_SVR, 0x1ff, 0)); // INIT disabled it
    assert_eq!(l[2].take_sipi(), Some(8));
    l[2].waiting_sipi.store(false, Ordering::Release);
    send(0x0607, 2);
    assert_eq!(l[2].take_sipi(), None, "a running CPU ignores SIPI");
    // Fixed, all excluding self; then logical flat to APIC 2 only.
    send(0x000c_0040, 0);
    assert_eq!(l[0].with(|m| m.deliverable()), None);
    assert_eq!(l[1].with(|m| m.deliverable()), Some(0x40));
    l[2].with(|m| m.write(REG_LDR, 0x0400_0000, 0));
    send(0x0841, 0x04);
    assert_eq!(l[2].with(|m| m.acknowledge()), Some(0x41));
    assert_eq!(l[1].with(|m| m.acknowledge()), Some(0x40), "only 0x40 on APIC 1");
}

#[test]
fn pic_through_lint0_extint() {
    let (core, l) = chip(1);
    l[0].with(|m| m.write(REG_LVT_LINT0, 0x700, 0));
    for (port, v) in [(0x20, 0x11), (0x21, 0x08), (0x21, 4), (0x21, 1), (0x21, 0xfd)] {
        assert!(core.pio_write(port, v));
    }
    core.set_irq(1, true);
    assert_eq!(l[0].flag.load(Ordering::Acquire), FLAG_MASKABLE);
    let mut src = ApicSource { lapic: l[0].clone(), core: core.clone() };
    assert_eq!(src.take_event(true), Some(IrqEvent::Vector(0x09)));
    assert_eq!(l[0].flag.load(Ordering::Acquire), 0);
    core.pio_write(0x20, 0x20);
    // Masked LINT0: the PIC's INTR is not taken.
    l[0].with(|m| m.write(REG_LVT_LINT0, 0x10700, 0));
    core.set_irq(1, false);
    core.set_irq(1, true);
    assert_eq!(src.take_event(true), None);
    assert_eq!(core.pio_read(0x21), Some(0xfd));
}

#[test]
fn service_timers_fires_lapic_and_pit() {
    let (core, l) = chip(1);
    l[0].with(|m| {
        m.write(REG_LVT_TIMER, 0x50, 0);
        m.write(REG_TMICT, 100, 0); // divide by 2: 100 * 2 * 40 ns = 8 us
    });
    assert_eq!(core.service_timers(0), Some(8000));
    assert_eq!(core.service_timers(8000), None);
    assert_eq!(l[0].with(|m| m.acknowledge()), Some(0x50));
    l[0].with(|m| m.write(REG_EOI, 0, 0));
    // PIT channel 0 periodic, IRQ 0 routed by the IOAPIC pin 0 (no override).
    redirect(&core, 0, 0x30, 0);
    core.pio_write(0x43, 0x34);
    core.pio_write(0x40, 100);
    core.pio_write(0x40, 0);
    let d = core.service_timers(0).expect("PIT deadline");
    assert!(d > 0);
    core.service_timers(d.max(core.clock.now()) + 1);
    assert_eq!(core.edges(0), 1);
    assert_eq!(l[0].with(|m| m.acknowledge()), Some(0x30));
}

#[test]
fn tsc_writes_of_one_value_share_an_offset() {
    let (core, _) = chip(1);
    let a = core.tsc_offset_for(0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(core.tsc_offset_for(0), a);
    assert_ne!(core.tsc_offset_for(5), a);
}

#[test]
fn cpuid_leaves_describe_the_clocks() {
    let leaves = cpuid_leaves();
    let l15 = leaves.iter().find(|e| e.function == 0x15).unwrap();
    assert_eq!(l15.ecx as u64 * l15.ebx as u64 / l15.eax as u64, TSC_HZ);
    assert_eq!(1_000_000_000 / l15.ecx as u64, LAPIC_TICK_NS);
}

#[test]
fn add_cpuid_merges_into_the_table() {
    let mut t = crate::cpuid::default_cpuid();
    add_cpuid(&mut t);
    let r = crate::cpuid::lookup(&t, 1, 0, 0);
    assert_ne!(r[3] & CPUID_1_EDX_APIC, 0);
    assert_ne!(r[2] & CPUID_1_ECX_TSC_DEADLINE, 0);
    assert!(crate::cpuid::lookup(&t, 0, 0, 0)[0] >= 0x16);
    assert_ne!(crate::cpuid::lookup(&t, 7, 0, 0)[1] & CPUID_7_EBX_TSC_ADJUST, 0);
    assert_ne!(crate::cpuid::lookup(&t, 0x8000_0007, 0, 0)[3] & CPUID_E7_EDX_INVARIANT_TSC, 0);
    assert_eq!(crate::cpuid::lookup(&t, 0x15, 0, 0)[2] as u64, CRYSTAL_HZ);
    assert_eq!(crate::cpuid::lookup(&t, 0x8000_0001, 0, 0)[3] & (1 << 29), 1 << 29, "others kept");
    let n = t.len();
    add_cpuid(&mut t);
    assert_eq!(t.len(), n, "idempotent");
}

/// Guest-controlled offsets, ports and values never panic any model.
#[test]
fn hostile_register_traffic_never_panics() {
    let (core, l) = chip(2);
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..200_000u64 {
        let (r, v) = (next(), next() as u32);
        let now = i * 1000;
        match r % 5 {
            0 => {
                let eff = l[(r >> 8) as usize & 1].with(|m| m.write((r >> 16) as u32 & 0xffc, v, now));
                if let WriteEffect::Ipi(msg) = eff {
                    // INIT/SIPI storms are fine; keep delivery on.
                    core.deliver(&msg, Some(0));
                }
                l[0].with(|m| m.read((r >> 32) as u32 & 0xffc, now));
            }
            1 => {
                core.ioapic_write((r >> 8) & 0xffc, v);
                core.ioapic_read((r >> 20) & 0xffc);
                core.eoi_level(v as u8);
            }
            2 => {
                let port = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61]
                    [(r >> 8) as usize % 11];
                core.pio_write(port, v as u8);
                core.pio_read(port);
            }
            3 => core.set_irq((r >> 8) as u32 % 24, v & 1 != 0),
            _ => {
                core.service_timers(now);
                let mut src = ApicSource { lapic: l[1].clone(), core: core.clone() };
                src.take_event(v & 1 != 0);
                l[1].take_init();
            }
        }
    }
}
