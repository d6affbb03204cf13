use super::request::{S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};
use super::*;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::status;
use crate::testutil::{Harness, DATA, F_WRITE, MEM_SIZE};
use vmr_devices::BusDevice;

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x800;
const DISK_SIZE: u64 = 4 << 20;

struct Disk {
    h: Harness,
    handle: crate::rate_limiter::RateLimiterHandle,
    file: tempfile::NamedTempFile,
    n: u16,
}

fn disk(read_only: bool) -> Disk {
    disk_with(read_only, "writeback").unwrap()
}

/// A disk with `cache=<cache>`; the open error if it fails.
fn disk_with(read_only: bool, cache: &str) -> Result<Disk, BlockDeviceError> {
    disk_with_limits(read_only, cache == "none", RateLimiterConfig::default())
}

/// Limits of `bw` bytes and `ops` requests per second (what `--disk bw=,iops=` makes).
fn per_second(bw: Option<u64>, ops: Option<u64>) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: bw.and_then(TokenBucketConfig::per_second),
        ops: ops.and_then(TokenBucketConfig::per_second),
    }
}

/// A disk with these rate limits.
fn disk_with_limits(
    read_only: bool,
    direct: bool,
    rate_limiter: RateLimiterConfig,
) -> Result<Disk, BlockDeviceError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(DISK_SIZE).unwrap();
    let config = DiskConfig {
        read_only,
        serial: Some("disk-7".into()),
        direct,
        rate_limiter,
        ..DiskConfig::new(file.path())
    };
    let block = Block::new(&config, 0)?;
    let handle = block.rate_limiter_handle();
    let mut h = Harness::new(Box::new(block), 16);
    let f = h.device_features() & !crate::features::RING_EVENT_IDX;
    h.init(f);
    Ok(Disk { h, handle, file, n: 0 })
}

impl Disk {
    /// Sends header + optional data descriptor + status; returns (status, used len).
    fn request(&mut self, kind: u32, sector: u64, data: Option<(u64, u32, u16)>) -> (u8, u32) {
        self.request_chain(kind, sector, data.as_slice())
    }

    /// Sends header + the `data` descriptors + status; returns (status, used len).
    fn request_chain(&mut self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        self.h.write_mem(HDR, &hdr);
        self.h.write_mem(STATUS, &[0xff]);
        let mut chain = vec![(HDR, 16, 0)];
        chain.extend_from_slice(data);
        chain.push((STATUS, 1, F_WRITE));
        let first = (self.n * 4) % 16;
        self.h.add_chain(first, &chain);
        self.n += 1;
        self.h.kick();
        assert!(self.h.wait_used(self.n), "request not completed");
        let (_, len) = self.h.used(self.n - 1);
        (self.h.read_mem(STATUS, 1)[0], len)
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; len];
        self.file.as_file().read_exact_at(&mut v, offset).unwrap();
        v
    }
}

#[test]
fn config_space_and_features() {
    let mut d = disk(false);
    let mut cap = [0u8; 8];
    d.h.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SIZE / 512);
    // Any width and offset, also past the end.
    let mut b = [0xffu8; 3];
    d.h.transport.read(0x100 + 58, &mut b);
    assert_eq!(b, [0, 0, 0]);
    d.h.transport.read(0x100 + 0xe00, &mut b);
    assert_eq!(b, [0, 0, 0]);
    let f = d.h.device_features();
    assert_ne!(f & features::FLUSH, 0);
    assert_ne!(f & features::DISCARD, 0);
    assert_eq!(f & features::RO, 0);
    assert_ne!(disk(true).h.device_features() & features::RO, 0);
}

#[test]
fn write_read_flush_roundtrip() {
    let mut d = disk(false);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    d.h.write_mem(BUF, &data);
    assert_eq!(d.request(T_OUT, 8, Some((BUF, 8192, 0))), (S_OK, 1));
    assert_eq!(d.request(T_FLUSH, 0, None), (S_OK, 1));
    assert_eq!(d.file_bytes(8 * 512, 8192), data);
    d.h.write_mem(BUF, &[0u8; 8192]);
    assert_eq!(d.request(T_IN, 8, Some((BUF, 8192, F_WRITE))), (S_OK, 8193));
    assert_eq!(d.h.read_mem(BUF, 8192), data);
}

/// cache=none: 512-byte sector requests (not 4 KiB aligned) and aligned ones both land in the
/// file through O_DIRECT.
#[test]
fn cache_none_serves_sector_sized_and_aligned_requests() {
    let mut d = match disk_with(false, "none") {
        Ok(d) => d,
        Err(e) if e.to_string().contains("O_DIRECT") => return eprintln!("skipped: {e}"),
        Err(e) => panic!("{e}"),
    };
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
    d.h.write_mem(BUF, &data[..512]);
    assert_eq!(d.request(T_OUT, 3, Some((BUF, 512, 0))), (S_OK, 1));
    d.h.write_mem(BUF, &data);
    assert_eq!(d.request(T_OUT, 16, Some((BUF, 4096, 0))), (S_OK, 1));
    assert_eq!(d.request(T_FLUSH, 0, None), (S_OK, 1));
    assert_eq!(d.file_bytes(3 * 512, 512), data[..512]);
    assert_eq!(d.file_bytes(16 * 512, 4096), data);
    assert_eq!(d.file_bytes(2 * 512, 512), vec![0u8; 512]);
    d.h.write_mem(BUF, &[0u8; 4096]);
    assert_eq!(d.request(T_IN, 3, Some((BUF, 512, F_WRITE))), (S_OK, 513));
    assert_eq!(d.h.read_mem(BUF, 512), data[..512]);
}

#[test]
fn get_id_returns_the_serial() {
    let mut d = disk(false);
    assert_eq!(d.request(T_GET_ID, 0, Some((BUF, 20, F_WRITE))), (S_OK, 21));
    assert_eq!(&d.h.read_mem(BUF, 20)[..7], b"disk-7\0");
    assert_eq!(default_serial(Path::new("/x/y.img")), default_serial(Path::new("/x/y.img")));
    assert_ne!(default_serial(Path::new("/x/y.img")), default_serial(Path::new("/x/z.img")));
    assert_eq!(default_serial(Path::new("/x/y.img")).len(), 19);
}

#[test]
fn discard_and_write_zeroes() {
    let mut d = disk(false);
    d.h.write_mem(BUF, &[0x77; 65536]);
    assert_eq!(d.request(T_OUT, 0, Some((BUF, 65536, 0))).0, S_OK);
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    };
    let segs = DATA + 0x3000;
    d.h.write_mem(segs, &seg(0, 8, 1));
    assert_eq!(d.request(T_WRITE_ZEROES, 0, Some((segs, 16, 0))).0, S_OK);
    assert_eq!(d.file_bytes(0, 4096), vec![0u8; 4096]);
    d.h.write_mem(segs, &seg(8, 8, 0));
    assert_eq!(d.request(T_DISCARD, 0, Some((segs, 16, 0))).0, S_OK);
    // Discard with the unmap flag, a ragged segment list, and a range past the end.
    d.h.write_mem(segs, &seg(8, 8, 1));
    assert_eq!(d.request(T_DISCARD, 0, Some((segs, 16, 0))).0, S_UNSUPP);
    assert_eq!(d.request(T_DISCARD, 0, Some((segs, 15, 0))).0, S_UNSUPP);
    d.h.write_mem(segs, &seg(DISK_SIZE / 512 - 4, 8, 0));
    assert_eq!(d.request(T_WRITE_ZEROES, 0, Some((segs, 16, 0))).0, S_IOERR);
    assert_eq!(d.file_bytes(8192, 4096), vec![0x77u8; 4096]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut d = disk(true);
    d.h.write_mem(BUF, &[1u8; 512]);
    assert_eq!(d.request(T_OUT, 0, Some((BUF, 512, 0))), (S_IOERR, 1));
    assert_eq!(d.request(T_FLUSH, 0, None), (S_OK, 1));
    // DISCARD was not offered (and so not negotiated).
    assert_eq!(d.request(T_DISCARD, 0, Some((BUF, 16, 0))).0, S_UNSUPP);
    assert_eq!(d.file_bytes(0, 512), vec![0u8; 512]);
}

#[test]
fn malformed_requests_get_error_status() {
    let mut d = disk(false);
    // Past the end, straddling the end, not a whole sector, sector overflow.
    assert_eq!(d.request(T_IN, DISK_SIZE / 512, Some((BUF, 512, F_WRITE))).0, S_IOERR);
    assert_eq!(d.request(T_OUT, DISK_SIZE / 512 - 1, Some((BUF, 1024, 0))).0, S_IOERR);
    assert_eq!(d.request(T_IN, 0, Some((BUF, 100, F_WRITE))).0, S_IOERR);
    assert_eq!(d.request(T_IN, u64::MAX / 256, Some((BUF, 512, F_WRITE))).0, S_IOERR);
    // Unknown type.
    assert_eq!(d.request(99, 0, None).0, S_UNSUPP);
    // Wrong direction: the data of a read is device-readable (see
    // `data_descriptors_in_the_wrong_direction_fail`).
    assert_eq!(d.request(T_IN, 0, Some((BUF, 512, 0))), (S_IOERR, 1));
    // Data buffer outside guest memory.
    assert_eq!(d.request(T_IN, 0, Some((MEM_SIZE as u64, 512, F_WRITE))).1, 0);
    assert_eq!(d.request(T_OUT, 0, Some((MEM_SIZE as u64 - 256, 512, 0))), (S_IOERR, 1));
    assert_eq!(d.h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn header_in_writable_descriptor_or_missing_status() {
    let mut d = disk(false);
    // Header in a device-writable buffer: there is no readable header.
    d.h.add_chain(8, &[(HDR, 16, F_WRITE), (STATUS, 1, F_WRITE)]);
    d.n += 1;
    d.h.kick();
    assert!(d.h.wait_used(d.n));
    assert_eq!(d.h.read_mem(STATUS, 1)[0], S_IOERR);
    // No writable byte at all: completed with nothing written.
    d.h.add_chain(12, &[(HDR, 16, 0)]);
    d.n += 1;
    d.h.kick();
    assert!(d.h.wait_used(d.n));
    assert_eq!(d.h.used(d.n - 1).1, 0);
}

#[test]
fn huge_request_is_served_in_bounded_chunks() {
    let mut d = disk(false);
    // 3 MiB read: many bounce-buffer chunks, one request.
    assert_eq!(d.request(T_IN, 0, Some((BUF, 3 << 20, F_WRITE))), (S_OK, (3 << 20) + 1));
}

#[test]
fn image_lock_is_held_while_the_device_exists() {
    let d = disk(false);
    let config = DiskConfig::new(d.file.path());
    let err = Block::new(&config, 1).err().unwrap().to_string();
    assert_eq!(err, format!("image {} is in use by another process", d.file.path().display()));
}

/// Resets the device and its rings, then runs the driver init again with `features`.
fn reinit(d: &mut Disk, features: u64) {
    d.h.wr(0x70, 0);
    d.h.set_avail_idx(0);
    d.h.write_mem(d.h.used_addr().0, &[0u8; 4]);
    d.h.init(features);
    d.n = 0;
}

#[test]
fn reset_returns_the_disk_and_reactivation_works() {
    let mut d = disk(false);
    d.h.write_mem(BUF, &[0x42; 512]);
    assert_eq!(d.request(T_OUT, 3, Some((BUF, 512, 0))).0, S_OK);
    let f = d.h.device_features() & !crate::features::RING_EVENT_IDX;
    reinit(&mut d, f);
    assert_eq!(d.request(T_IN, 3, Some((BUF + 4096, 512, F_WRITE))).0, S_OK);
    assert_eq!(d.h.read_mem(BUF + 4096, 512), vec![0x42; 512]);
}

#[test]
fn event_idx_negotiated_still_completes_requests() {
    let mut d = disk(false);
    let f = d.h.device_features();
    assert_ne!(f & crate::features::RING_EVENT_IDX, 0);
    reinit(&mut d, f);
    for _ in 0..3 {
        assert_eq!(d.request(T_FLUSH, 0, None).0, S_OK);
    }
}

#[test]
fn swapped_image_serves_the_next_requests_and_the_guest_is_told_the_new_size() {
    let old = tempfile::NamedTempFile::new().unwrap();
    old.as_file().set_len(DISK_SIZE).unwrap();
    let config = DiskConfig::new(old.path());
    let block = Block::new(&config, 0).unwrap();
    let swap = block.swap_handle();
    let handle = block.rate_limiter_handle();
    let mut h = Harness::new(Box::new(block), 16);
    let f = h.device_features() & !crate::features::RING_EVENT_IDX;
    h.init(f);
    let mut d = Disk { h, handle, file: old, n: 0 };
    d.h.write_mem(BUF, &[0x11; 512]);
    assert_eq!(d.request(T_OUT, 0, Some((BUF, 512, 0))).0, S_OK);
    assert_eq!(d.file_bytes(0, 4), [0x11; 4]);

    let new = tempfile::NamedTempFile::new().unwrap();
    new.as_file().set_len(2 * DISK_SIZE).unwrap();
    let opened = vmr_block::open(new.path(), &vmr_block::OpenOptions::default()).unwrap();
    swap.replace(opened, new.path().display().to_string());
    let mut isr = [0u8; 4];
    d.h.transport.read(0x60, &mut isr);
    assert_ne!(u32::from_le_bytes(isr) & crate::interrupt::INT_CONFIG, 0, "config-change interrupt");
    let mut cap = [0u8; 8];
    d.h.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2 * DISK_SIZE / 512);

    d.h.write_mem(BUF, &[0x22; 512]);
    assert_eq!(d.request(T_OUT, 8192, Some((BUF, 512, 0))).0, S_OK, "past the old end");
    use std::os::unix::fs::FileExt;
    let mut got = [0u8; 4];
    new.as_file().read_exact_at(&mut got, 8192 * 512).unwrap();
    assert_eq!(got, [0x22; 4]);
    assert_eq!(d.file_bytes(0, 4), [0x11; 4], "the old image is untouched");
}

/// Time to read `count` requests of `len` bytes, one after the other.
fn timed_reads(d: &mut Disk, count: u32, len: u32) -> std::time::Duration {
    let start = std::time::Instant::now();
    for i in 0..count {
        let sector = u64::from(i * len / 512) % (DISK_SIZE / 512 - u64::from(len / 512));
        assert_eq!(d.request(T_IN, sector, Some((BUF, len, F_WRITE))), (S_OK, len + 1));
    }
    start.elapsed()
}

/// `bw=1M`: 1 MiB in 128 KiB reads takes about 0.875 s (the first eighth of a second's worth
/// goes at once); the requests wait in the ring and all succeed.
#[test]
fn bandwidth_limit_paces_reads() {
    let mut d = disk_with_limits(false, false, per_second(Some(1 << 20), None)).unwrap();
    let took = timed_reads(&mut d, 8, 128 << 10);
    let ms = took.as_millis();
    assert!((800..3000).contains(&ms), "1 MiB at 1 MiB/s took {took:?}");
}

/// `iops=80` (10 per 125 ms): 30 flushes take about (30 - 10) / 80 s = 0.25 s.
#[test]
fn ops_limit_paces_requests_and_updates_live() {
    let mut d = disk_with_limits(false, false, per_second(None, Some(80))).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..30 {
        assert_eq!(d.request(T_FLUSH, 0, None).0, S_OK);
    }
    let took = start.elapsed();
    assert!(took >= std::time::Duration::from_millis(230), "30 ops at 80/s took only {took:?}");
    // No limit any more, changed while the worker runs: 20 flushes go at once.
    d.handle.update(&crate::rate_limiter::RateLimiterConfig::default()).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(d.request(T_FLUSH, 0, None).0, S_OK);
    }
    assert!(start.elapsed() < std::time::Duration::from_millis(250), "{:?}", start.elapsed());
}

#[test]
fn unlimited_disk_is_not_paced() {
    let mut d = disk(false);
    let took = timed_reads(&mut d, 8, 128 << 10);
    assert!(took < std::time::Duration::from_millis(500), "{took:?}");
}

/// Data descriptors in the wrong direction fail the request with IOERR (used length 1: only the
/// status byte is written), and neither the disk nor guest memory changes: a read whose buffer
/// is device-readable, a write whose buffer is device-writable, and the same for GET_ID (must
/// be writable), FLUSH (no data at all) and DISCARD / WRITE_ZEROES (must be readable).
#[test]
fn data_descriptors_in_the_wrong_direction_fail() {
    let mut d = disk(false);
    let disk_data = vec![0x5au8; 1024];
    d.h.write_mem(BUF, &disk_data);
    assert_eq!(d.request(T_OUT, 8, Some((BUF, 1024, 0))), (S_OK, 1));
    let guest = vec![0xc3u8; 1024];
    let two = BUF + 0x1000;
    let cases: [(u32, &[(u64, u32, u16)]); 11] = [
        (T_IN, &[(BUF, 512, 0)]),
        (T_IN, &[(BUF, 512, F_WRITE), (two, 512, 0)]),
        (T_IN, &[(BUF, 512, 0), (two, 512, F_WRITE)]),
        (T_OUT, &[(BUF, 512, F_WRITE)]),
        (T_OUT, &[(BUF, 512, 0), (two, 512, F_WRITE)]),
        (T_GET_ID, &[(BUF, 20, 0)]),
        (T_FLUSH, &[(BUF, 512, 0)]),
        (T_FLUSH, &[(BUF, 512, F_WRITE)]),
        (T_DISCARD, &[(BUF, 16, F_WRITE)]),
        (T_WRITE_ZEROES, &[(BUF, 16, F_WRITE)]),
        (T_DISCARD, &[(BUF, 16, 0), (two, 16, F_WRITE)]),
    ];
    for (kind, data) in cases {
        d.h.write_mem(BUF, &guest);
        d.h.write_mem(two, &guest);
        if matches!(kind, T_DISCARD | T_WRITE_ZEROES) {
            // One valid segment: sector 8, 2 sectors.
            let mut seg = [0u8; 16];
            seg[..8].copy_from_slice(&8u64.to_le_bytes());
            seg[8..12].copy_from_slice(&2u32.to_le_bytes());
            d.h.write_mem(BUF, &seg);
        }
        let before = (d.h.read_mem(BUF, 1024), d.h.read_mem(two, 1024));
        assert_eq!(d.request_chain(kind, 8, data), (S_IOERR, 1), "type {kind}, data {data:x?}");
        assert_eq!((d.h.read_mem(BUF, 1024), d.h.read_mem(two, 1024)), before, "type {kind}: guest memory");
        assert_eq!(d.file_bytes(8 * 512, 1024), disk_data, "type {kind}: disk");
    }
    // The right directions still work after the failures.
    assert_eq!(d.request(T_IN, 8, Some((BUF, 1024, F_WRITE))), (S_OK, 1025));
    assert_eq!(d.h.read_mem(BUF, 1024), disk_data);
    assert_eq!(d.request(T_GET_ID, 0, Some((BUF, 20, F_WRITE))), (S_OK, 21));
}
