use super::*;
use crate::rng::Rng;
use crate::testutil::{Harness, DATA, F_WRITE};
use crate::{device_type, features, status};

fn rng() -> Harness {
    Harness::new(Box::new(Rng::new(0)), 16)
}

#[test]
fn identification_registers() {
    let mut h = rng();
    assert_eq!(h.rd(0x000), 0x7472_6976);
    assert_eq!(h.rd(0x004), 2);
    assert_eq!(h.rd(0x008), device_type::RNG);
    assert_eq!(h.rd(0x034), 256); // QueueNumMax of queue 0
    h.wr(0x30, 7);
    assert_eq!(h.rd(0x034), 0, "no queue 7");
    assert_eq!(h.rd(0x0b0), u32::MAX, "no shared memory");
    let f = h.device_features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_eq!(cmdline_fragment(0xd000_0000, 5), "virtio_mmio.device=4K@0xd0000000:5");
}

#[test]
fn odd_accesses_never_panic_and_read_zero() {
    let mut h = rng();
    for offset in [0u64, 1, 2, 3, 0x50, 0x70, 0xff, 0x100, 0x101, 0xfff, 0x1000, u64::MAX] {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            let mut data = vec![0xaau8; len];
            h.transport.read(offset, &mut data);
            if offset < 0x100 && (len != 4 || offset % 4 != 0) {
                assert!(data.iter().all(|&b| b == 0), "{offset:#x}/{len}");
            }
            h.transport.write(offset, &data);
        }
    }
    assert_eq!(h.rd(0x70), 0);
}

#[test]
fn features_ok_requires_version_1_and_offered_bits() {
    let mut h = rng();
    assert_eq!(h.negotiate(0) & status::FEATURES_OK, 0, "legacy driver accepted");
    h.wr(0x70, 0);
    assert_eq!(h.negotiate(features::VERSION_1 | 1 << 40) & status::FEATURES_OK, 0, "unoffered bit accepted");
    h.wr(0x70, 0);
    let st = h.negotiate(features::VERSION_1 | features::RING_EVENT_IDX);
    assert_ne!(st & status::FEATURES_OK, 0);
    // After FEATURES_OK the features are frozen.
    h.wr(0x24, 1);
    h.wr(0x20, 0);
    assert_eq!(h.transport.state().driver_features, features::VERSION_1 | features::RING_EVENT_IDX);
}

#[test]
fn queue_registers_only_between_features_ok_and_driver_ok() {
    let mut h = rng();
    h.wr(0x38, 8);
    h.wr(0x44, 1);
    assert_eq!(h.rd(0x44), 0, "queue configured before FEATURES_OK");
    h.negotiate(features::VERSION_1);
    h.wr(0x38, 3); // not a power of two: ignored
    assert_eq!(h.transport.state().queues[0].size, 256);
    h.wr(0x38, 1024); // above the maximum: ignored
    assert_eq!(h.transport.state().queues[0].size, 256);
    h.setup_queue();
    assert_eq!(h.rd(0x44), 1);
    // Address writes while ready are ignored.
    h.wr(0x80, 0x1234_0000);
    assert_eq!(h.transport.state().queues[0].desc_table, h.queue().desc_table_addr().0);
}

#[test]
fn driver_ok_with_unready_queue_needs_reset_and_reset_recovers() {
    let mut h = rng();
    let st = h.negotiate(features::VERSION_1);
    h.wr(0x70, st | status::DRIVER_OK);
    assert_ne!(h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(h.rd(0x60) & 2, 0, "config interrupt for NEEDS_RESET");
    assert_eq!(h.irqfd.read().unwrap(), 1);
    h.wr(0x70, 0);
    assert_eq!(h.rd(0x70), 0);
    assert_eq!(h.rd(0x60), 0);
    assert_eq!(h.init_default() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn status_bits_cannot_be_cleared_or_skipped() {
    let mut h = rng();
    h.wr(0x70, status::DRIVER_OK); // DRIVER_OK without FEATURES_OK: ignored
    assert_eq!(h.rd(0x70), 0);
    let st = h.negotiate(features::VERSION_1);
    h.wr(0x70, status::ACKNOWLEDGE); // clearing bits: ignored
    assert_eq!(h.rd(0x70), st);
    h.wr(0x70, st | status::DEVICE_NEEDS_RESET); // a device bit: ignored
    assert_eq!(h.rd(0x70), st);
}

#[test]
fn notify_fallback_interrupt_ack_and_reset_stop_the_worker() {
    let mut h = rng();
    h.init_default();
    h.add_chain(0, &[(DATA, 64, F_WRITE)]);
    h.kick();
    assert!(h.wait_used(1));
    assert_eq!(h.used(0), (0, 64));
    assert_eq!(h.rd(0x60), 1);
    assert!(h.irqfd.read().unwrap() >= 1);
    h.wr(0x64, 1);
    assert_eq!(h.rd(0x60), 0);
    // Reset joins the worker: a later notification is not served.
    h.wr(0x70, 0);
    h.add_chain(1, &[(DATA, 64, F_WRITE)]);
    h.kick();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(h.used_idx(), 1);
    // Notifying a queue that does not exist is ignored.
    h.wr(0x50, 9);
    let state = h.transport.state();
    assert!(!state.activated);
    assert_eq!(state.status, 0);
}

#[test]
fn random_register_traffic_never_panics() {
    // A deterministic xorshift stream of writes and reads over the whole window.
    let mut h = rng();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = ((x >> 8) % 0x140) & !3;
        let value = (x >> 32) as u32;
        if x & 1 == 0 {
            h.wr(offset, value);
        } else {
            h.rd(offset);
        }
    }
    h.wr(0x70, 0);
    assert_eq!(h.rd(0x70), 0);
}

/// QueueReady is refused (reads back 0) while the last QueueNum the driver wrote is invalid:
/// zero, not a power of two (split ring) or above QueueNumMax. The device would otherwise run
/// the ring at a size the driver did not lay out.
#[test]
fn queue_ready_refused_for_an_invalid_queue_size() {
    for bad in [0u32, 3, 100, 512, 1024, 0x1_0000, u32::MAX] {
        let mut h = rng();
        h.negotiate(features::VERSION_1);
        h.setup_queue_with_size(bad);
        assert_eq!(h.rd(0x44), 0, "QueueReady accepted with QueueNum {bad}");
        // A valid size afterwards makes the queue usable again.
        h.wr(0x38, 16);
        h.wr(0x44, 1);
        assert_eq!(h.rd(0x44), 1, "valid QueueNum after {bad}");
        assert_eq!(h.transport.state().queues[0].size, 16);
    }
    // Every valid size is accepted, up to QueueNumMax.
    for good in [1u32, 2, 16, 256] {
        let mut h = rng();
        h.negotiate(features::VERSION_1);
        h.setup_queue_with_size(good);
        assert_eq!(h.rd(0x44), 1, "QueueNum {good}");
        assert_eq!(h.transport.state().queues[0].size, good as u16);
    }
}

/// DRIVER_OK after a refused QueueReady does not start the device on the bad queue.
#[test]
fn driver_ok_after_an_invalid_queue_size_needs_reset() {
    let mut h = rng();
    let st = h.negotiate(features::VERSION_1);
    h.setup_queue_with_size(6);
    h.wr(0x70, st | status::DRIVER_OK);
    assert_ne!(h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!h.transport.state().activated);
}

fn restore_host(h: &Harness) -> (MmioHost, EventFd) {
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(crate::IrqTrigger::EventFd(irqfd.try_clone().unwrap())));
    let host =
        MmioHost { mem: h.mem.clone(), device: Box::new(Rng::new(1)), interrupt, gate: Default::default() };
    (host, irqfd)
}

#[test]
fn a_restored_transport_serves_on_from_the_saved_queue_positions() {
    let mut h = rng();
    h.init_default();
    h.add_chain(0, &[(DATA, 64, F_WRITE)]);
    h.kick();
    assert!(h.wait_used(1));
    let state = h.transport.state();
    assert!(state.activated);
    assert_eq!((state.queues[0].next_avail, state.queues[0].next_used), (1, 1));
    assert_eq!(state.device.kind, "virtio-rng");
    // The old process goes away (its worker stops); the rings stay in guest memory.
    h.wr(0x70, 0);
    let (host, irqfd) = restore_host(&h);
    let mut restored = MmioTransport::restore(host, &state).unwrap();
    let rd = |t: &mut MmioTransport, off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(rd(&mut restored, 0x70) & status::DRIVER_OK, status::DRIVER_OK);
    // The next request is served at ring position 1, not from the start.
    h.add_chain(1, &[(DATA + 0x100, 32, F_WRITE)]);
    restored.write(0x50, &0u32.to_le_bytes());
    assert!(h.wait_used(2), "the restored device did not serve the new request");
    assert_eq!(h.used(1), (1, 32));
    assert!(irqfd.read().unwrap() >= 1);
    assert_eq!(restored.state().queues[0].next_used, 2);
}

#[test]
fn hostile_transport_states_are_refused_in_one_line() {
    let mut h = rng();
    h.init_default();
    let good = h.transport.state();
    h.wr(0x70, 0);
    let refuse = |h: &Harness, edit: &dyn Fn(&mut MmioState)| {
        let mut s = good.clone();
        edit(&mut s);
        let (host, _irqfd) = restore_host(h);
        let err = MmioTransport::restore(host, &s).err().expect("hostile state accepted").to_string();
        assert!(!err.contains('\n'), "{err}");
        err
    };
    // Queue positions further apart than the ring is long.
    assert!(refuse(&h, &|s| s.queues[0].next_avail = 40).contains("past the next used"));
    // Rings outside guest memory.
    assert!(refuse(&h, &|s| s.queues[0].used_ring = u64::MAX - 0xfff).contains("not inside guest memory"));
    // A size that is not a power of two, or above the maximum.
    assert!(refuse(&h, &|s| s.queues[0].size = 12).contains("size 12"));
    assert!(refuse(&h, &|s| s.queues[0].size = 512).contains("size 512"));
    // Queues the device does not have, of sizes it does not offer.
    assert!(refuse(&h, &|s| s.queues.push(s.queues[0])).contains("2 queues"));
    assert!(refuse(&h, &|s| s.queues[0].max_size = 1024).contains("maximum size"));
    // Another device type, features never offered, activated without DRIVER_OK.
    assert!(refuse(&h, &|s| s.device_type = 2).contains("device type"));
    assert!(refuse(&h, &|s| s.driver_features |= 1 << 50).contains("does not offer"));
    assert!(refuse(&h, &|s| s.status = 0).contains("activated with status"));
}
