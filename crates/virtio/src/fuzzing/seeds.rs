//! Seed inputs for the fuzz targets: the conformance cases a hostile guest found (wrong-way
//! virtio-blk data descriptors, QueueReady with an invalid QueueNum), encoded in each target's
//! input format. `fuzz/seeds/<target>/<name>` holds them as files for cargo-fuzz (see
//! `fuzz/README.md`); the tests below check that the files match this code and that every seed
//! still gets the conforming answer from the device.

use crate::block::request::{S_IOERR, S_OK, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT};

/// One seed input of a fuzz target.
pub struct Seed {
    /// The fuzz target (`fuzz/fuzz_targets/<target>.rs`).
    pub target: &'static str,
    pub name: &'static str,
    pub data: Vec<u8>,
}

/// Every seed, in a stable order.
pub fn all() -> Vec<Seed> {
    let mut seeds = vec![Seed { target: "blk", name: "wrong-direction-data", data: blk_input(&wrong_way()) }];
    for size in MMIO_BAD_SIZES {
        let name = match size {
            0 => "queue-num-zero",
            3 => "queue-num-not-power-of-two",
            _ => "queue-num-above-max",
        };
        seeds.push(Seed { target: "mmio", name, data: mmio_bad_queue_num(size) });
    }
    seeds
}

const MMIO_BAD_SIZES: [u32; 3] = [0, 3, 512];

// virtio-blk seed layout (guest memory = the input): rings of 32 entries, one header, data
// area and status byte per request.
const DESC: u64 = 0x100;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x600;
const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x3f00;
const BLK_LEN: usize = 0x4000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Requests as (type, data descriptors as (length, device-writable)), and the status each must
/// get: every wrong direction fails, the last (a well-formed read) succeeds.
type Request = (u32, Vec<(u32, bool)>, u8);

fn wrong_way() -> Vec<Request> {
    vec![
        (T_IN, vec![(512, false)], S_IOERR),
        (T_OUT, vec![(512, true)], S_IOERR),
        (T_GET_ID, vec![(20, false)], S_IOERR),
        (T_FLUSH, vec![(512, true)], S_IOERR),
        (T_DISCARD, vec![(16, true)], S_IOERR),
        (T_IN, vec![(512, true), (512, false)], S_IOERR),
        (T_IN, vec![(512, true)], S_OK),
    ]
}

fn put(mem: &mut [u8], at: u64, bytes: &[u8]) {
    let at = at as usize;
    mem[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A `blk` input holding `requests` as available chains (queue size 32).
fn blk_input(requests: &[Request]) -> Vec<u8> {
    let mut mem = vec![0u8; BLK_LEN];
    mem[0] = 5; // queue size 1 << 5
    put(&mut mem, 2, &((DESC / 2) as u16).to_le_bytes());
    put(&mut mem, 4, &((AVAIL / 2) as u16).to_le_bytes());
    put(&mut mem, 6, &((USED / 2) as u16).to_le_bytes());
    let mut next = 0u16;
    for (i, (kind, data, _)) in requests.iter().enumerate() {
        let i = i as u64;
        let head = next;
        put(&mut mem, HDR + 16 * i, &kind.to_le_bytes());
        let mut descs = vec![(HDR + 16 * i, 16u32, 0u16)];
        for (j, &(len, writable)) in data.iter().enumerate() {
            descs.push((DATA + 0x800 * i + 0x400 * j as u64, len, if writable { F_WRITE } else { 0 }));
        }
        descs.push((STATUS + i, 1, F_WRITE));
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let more = if k + 1 < descs.len() { F_NEXT } else { 0 };
            let at = DESC + 16 * u64::from(next);
            put(&mut mem, at, &addr.to_le_bytes());
            put(&mut mem, at + 8, &len.to_le_bytes());
            put(&mut mem, at + 12, &(flags | more).to_le_bytes());
            put(&mut mem, at + 14, &(next + 1).to_le_bytes());
            next += 1;
        }
        put(&mut mem, AVAIL + 4 + 2 * i, &head.to_le_bytes());
        put(&mut mem, STATUS + i, &[0xff]);
    }
    put(&mut mem, AVAIL + 2, &(requests.len() as u16).to_le_bytes());
    mem
}

/// An `mmio` input: the driver init sequence as register writes, with `size` in QueueNum, then
/// QueueReady and DRIVER_OK (rings placed where a 256-entry queue would be valid).
fn mmio_bad_queue_num(size: u32) -> Vec<u8> {
    let writes: [(u16, u32); 17] = [
        (0x70, 1),
        (0x70, 3),
        (0x24, 1),
        (0x20, 1), // VERSION_1
        (0x24, 0),
        (0x20, 0),
        (0x70, 0xb),
        (0x30, 0),
        (0x38, size),
        (0x80, 0x1000),
        (0x84, 0),
        (0x90, 0x3000),
        (0x94, 0),
        (0xa0, 0x4000),
        (0xa4, 0),
        (0x44, 1),
        (0x70, 0xf),
    ];
    // Byte 0 even: no guided init; bytes 1..9 unused; then 6-byte register ops.
    let mut data = vec![0u8; 9];
    for (offset, value) in writes {
        data.extend_from_slice(&offset.to_le_bytes());
        data.extend_from_slice(&value.to_le_bytes());
    }
    data
}

#[cfg(test)]
mod tests {
    use vmr_hypervisor::vm_memory::{Bytes, GuestAddress};

    use super::super::{blk_run, mmio_run};
    use super::*;
    use crate::status;

    /// Each request of the blk seed gets its status, and the used length counts the status
    /// byte (plus the data of the one good read).
    #[test]
    fn blk_seed_requests_get_the_conforming_status() {
        let requests = wrong_way();
        let mem = blk_run(&blk_input(&requests)).expect("the seed's queue is valid");
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(usize::from(used_idx), requests.len());
        for (i, (kind, data, want)) in requests.iter().enumerate() {
            let st: u8 = mem.read_obj(GuestAddress(STATUS + i as u64)).unwrap();
            assert_eq!(st, *want, "request {i} (type {kind})");
            let len: u32 = mem.read_obj(GuestAddress(USED + 4 + 8 * i as u64 + 4)).unwrap();
            let data_len = if *want == S_OK { data.iter().map(|d| d.0).sum::<u32>() } else { 0 };
            assert_eq!(len, data_len + 1, "used length of request {i}");
        }
    }

    /// QueueReady is refused for the bad sizes, so DRIVER_OK does not start the device.
    #[test]
    fn mmio_seeds_do_not_activate_an_invalid_queue() {
        for size in MMIO_BAD_SIZES {
            let t = mmio_run(&mmio_bad_queue_num(size)).expect("transport");
            let st = t.state();
            assert!(!st.queues[0].ready, "QueueNum {size}: ready");
            assert!(!st.activated, "QueueNum {size}: activated");
            assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
        }
        // The same sequence with a valid size activates (the seeds reach the queue code).
        assert!(mmio_run(&mmio_bad_queue_num(16)).expect("transport").state().activated);
    }

    /// `fuzz/seeds` holds exactly what `all()` generates. Regenerate with
    /// `VMR_WRITE_FUZZ_SEEDS=1 cargo test -p vmr-virtio seed_files`.
    #[test]
    fn seed_files_match_the_generator() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        for seed in all() {
            let path = dir.join(seed.target).join(seed.name);
            if std::env::var_os("VMR_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &seed.data).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(on_disk == seed.data, "{} differs from the generator", path.display());
        }
    }
}
