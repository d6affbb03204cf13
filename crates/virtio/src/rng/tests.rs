//! virtio-rng, and the hostile-queue cases every device shares (run against rng, the simplest).

use super::*;
use crate::status;
use crate::testutil::{Harness, DATA, F_INDIRECT, F_NEXT, F_WRITE, MEM_SIZE};

fn rng() -> Harness {
    let mut h = Harness::new(Box::new(Rng::new(0)), 16);
    h.init_default();
    h
}

#[test]
fn fills_every_writable_buffer_of_the_chain() {
    let mut h = rng();
    h.add_chain(0, &[(DATA, 4096, F_WRITE), (DATA + 0x2000, 16, F_WRITE)]);
    h.kick();
    assert!(h.wait_used(1));
    assert_eq!(h.used(0), (0, 4096 + 16));
    let data = h.read_mem(DATA, 4096);
    assert!(data.iter().filter(|&&b| b == 0).count() < 100, "buffer not filled");
    assert_ne!(h.read_mem(DATA + 0x2000, 16), vec![0u8; 16]);
}

#[test]
fn large_buffers_are_capped_per_request() {
    let mut h = rng();
    h.add_chain(0, &[(DATA, 1 << 20, F_WRITE)]);
    h.kick();
    assert!(h.wait_used(1));
    assert_eq!(h.used(0), (0, MAX_REQUEST as u32));
}

#[test]
fn read_only_descriptors_get_nothing() {
    let mut h = rng();
    h.add_chain(0, &[(DATA, 4096, 0)]);
    h.kick();
    assert!(h.wait_used(1));
    assert_eq!(h.used(0), (0, 0));
    assert_eq!(h.read_mem(DATA, 16), vec![0u8; 16]);
}

#[test]
fn descriptor_loop_ends_and_device_keeps_working() {
    let mut h = rng();
    // 0 -> 1 -> 0 -> ... : the chain ends after a queue size of descriptors.
    h.set_desc(0, DATA, 8, F_WRITE | F_NEXT, 1);
    h.set_desc(1, DATA + 8, 8, F_WRITE | F_NEXT, 0);
    h.push_avail(0);
    h.kick();
    assert!(h.wait_used(1));
    assert!(h.used(0).1 <= 16 * 8, "loop served {} bytes", h.used(0).1);
    h.add_chain(2, &[(DATA, 32, F_WRITE)]);
    h.kick();
    assert!(h.wait_used(2));
    assert_eq!(h.used(1), (2, 32));
}

#[test]
fn next_index_out_of_the_table_and_indirect_chains_longer_than_the_queue() {
    let mut h = rng();
    h.set_desc(0, DATA, 8, F_WRITE | F_NEXT, 500);
    h.push_avail(0);
    // An indirect table of 64 descriptors (more than the queue size 16), looping on itself.
    let table = 0x80_0000u64;
    for i in 0..64u64 {
        let d = virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
            DATA + 0x1000,
            4,
            F_WRITE | F_NEXT,
            ((i + 1) % 64) as u16,
        ));
        h.write_mem(table + 16 * i, vmr_hypervisor::vm_memory::ByteValued::as_slice(&d));
    }
    h.set_desc(1, table, 64 * 16, F_INDIRECT, 0);
    h.push_avail(1);
    h.kick();
    assert!(h.wait_used(2));
    assert!(h.used(0).1 <= 8);
    assert!(h.used(1).1 <= 64 * 4);
    assert_eq!(h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn out_of_range_zero_and_huge_lengths_complete_with_nothing() {
    let mut h = rng();
    h.add_chain(0, &[(MEM_SIZE as u64 - 8, 64, F_WRITE)]); // crosses the end of memory
    h.add_chain(1, &[(u64::MAX - 4, 64, F_WRITE)]); // wraps around
    h.add_chain(2, &[(DATA, 0, F_WRITE)]); // zero length
    h.add_chain(3, &[(DATA, u32::MAX, F_WRITE)]); // huge
    h.kick();
    assert!(h.wait_used(4));
    for i in 0..4 {
        assert_eq!(h.used(i).1, 0, "chain {i}");
    }
    assert_eq!(h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn avail_index_far_ahead_needs_reset_and_other_devices_keep_working() {
    let mut bad = rng();
    let mut good = rng();
    bad.set_avail_idx(1000);
    bad.kick();
    assert!(bad.wait_needs_reset());
    // The broken device ignores further notifications instead of spinning.
    bad.kick();
    good.add_chain(0, &[(DATA, 32, F_WRITE)]);
    good.kick();
    assert!(good.wait_used(1));
    // A driver reset brings the broken device back.
    bad.wr(0x70, 0);
    bad.init_default();
    assert_eq!(bad.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn rings_outside_memory_are_refused_at_driver_ok() {
    let mut h = Harness::new(Box::new(Rng::new(0)), 16);
    let st = h.negotiate(crate::features::VERSION_1);
    h.wr(0x30, 0);
    h.wr(0x38, 16);
    h.wr(0x80, 0xffff_f000);
    h.wr(0x84, 0xffff_ffff);
    h.wr(0x44, 1);
    h.wr(0x70, st | status::DRIVER_OK);
    assert_ne!(h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_paused_worker_serves_nothing_until_resumed() {
    let gate = std::sync::Arc::new(crate::pause::WorkerGate::default());
    let mut h = Harness::new(Box::new(Rng::new(0)), 16);
    h.transport.set_pause_gate(gate.clone());
    h.init_default();
    gate.pause();
    h.add_chain(0, &[(DATA, 64, F_WRITE)]);
    h.kick();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(h.read_mem(DATA, 64), vec![0u8; 64], "a paused device wrote guest memory");
    gate.resume();
    assert!(h.wait_used(1));
    assert_eq!(h.used(0), (0, 64));
}
