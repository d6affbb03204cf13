//! virtio-net against a real tap whose host end lives in a network namespace made by the test
//! (needs root and /dev/net/tun, as on the project's machines and CI).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::status;
use crate::testutil::{Harness, DATA, F_WRITE};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const HOST_IP: [u8; 4] = [10, 213, 7, 1];
const GUEST_IP: [u8; 4] = [10, 213, 7, 2];

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace holding the host end of a tap; deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn tap_in_netns() -> (Tap, Netns) {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("vmrt{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
    let tap = Tap::open(&id).expect("tap (root and /dev/net/tun needed)");
    ip(&["netns", "add", &id]);
    let ns = Netns(id.clone());
    ip(&["link", "set", &id, "netns", &id]);
    ip(&["-n", &id, "addr", "add", "10.213.7.1/24", "dev", &id]);
    ip(&["-n", &id, "link", "set", &id, "up"]);
    (tap, ns)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend([0xff; 6]);
    f.extend(MAC);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend(MAC);
    f.extend(GUEST_IP);
    f.extend([0; 6]);
    f.extend(HOST_IP);
    f
}

/// Posts `n` receive buffers of 2 KiB (descriptors 0..n on queue 0).
fn post_rx(h: &mut Harness, n: u16) {
    h.select(0);
    for i in 0..n {
        h.add_chain(i, &[(DATA + u64::from(i) * 0x1000, 2048, F_WRITE)]);
    }
    h.kick();
}

fn is_arp_reply_for_us(frame: &[u8]) -> bool {
    let eth = &frame[VNET_HDR_LEN..];
    eth.len() >= 42
        && eth[..6] == MAC
        && eth[12..14] == [0x08, 0x06]
        && eth[20..22] == [0, 2]
        && eth[28..32] == HOST_IP
}

fn unlimited() -> (Arc<RateLimiter>, Arc<RateLimiter>) {
    (Arc::new(RateLimiter::unlimited().unwrap()), Arc::new(RateLimiter::unlimited().unwrap()))
}

fn arp_exchange(acked: u64) {
    let (tap, _ns) = tap_in_netns();
    let mut h = Harness::new(Box::new(Net::with_tap(tap, MAC, 0, unlimited())), 16);
    let st = h.init(acked);
    assert_eq!(st & status::DEVICE_NEEDS_RESET, 0);
    post_rx(&mut h, 8);
    // Guest -> host: an ARP request on the transmit queue.
    h.select(1);
    let req = arp_request();
    h.write_mem(DATA + 0x10_0000, &req);
    h.add_chain(0, &[(DATA + 0x10_0000, req.len() as u32, 0)]);
    h.kick();
    assert!(h.wait_used(1), "transmit not completed");
    // Host -> guest: the namespace's kernel answers; find the reply among received frames.
    h.select(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = h.used_idx();
        let found = (0..got).any(|i| {
            let (id, len) = h.used(i);
            len as usize > VNET_HDR_LEN
                && is_arp_reply_for_us(&h.read_mem(DATA + u64::from(id) * 0x1000, len as usize))
        });
        if found {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no ARP reply received ({got} frames)");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Reset stops the worker and gives the tap back.
    h.wr(0x70, 0);
    assert_eq!(h.rd(0x70), 0);
}

#[test]
fn arp_both_ways_over_a_tap() {
    arp_exchange(crate::features::VERSION_1 | features::MAC);
}

#[test]
fn arp_both_ways_with_offloads_negotiated() {
    let all = crate::features::VERSION_1
        | crate::features::RING_EVENT_IDX
        | features::MAC
        | features::CSUM
        | features::HOST_TSO4
        | features::HOST_TSO6
        | features::GUEST_CSUM
        | features::GUEST_TSO4
        | features::GUEST_TSO6;
    assert_eq!(tap_offloads(all), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
    assert_eq!(tap_offloads(features::GUEST_TSO4), 0, "TSO without checksum offload");
    arp_exchange(all);
}

#[test]
fn config_space_holds_the_mac() {
    let (tap, _ns) = tap_in_netns();
    let net = Net::with_tap(tap, MAC, 0, unlimited());
    let mut b = [0u8; 8];
    net.read_config(0, &mut b);
    assert_eq!(b, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 0, 0]);
    assert_eq!(net.device_type(), crate::device_type::NET);
}

#[test]
fn tap_errors_are_one_line() {
    assert_eq!(Tap::open("").err().unwrap().to_string(), "tap name '' is empty or longer than 15 bytes");
    let e = Tap::open("lo").err().unwrap().to_string();
    assert!(e.starts_with("cannot open tap lo: "), "{e}");
}

/// A transmit limit of 16 frames per second: 12 frames take about (12 - 2) / 16 s, the first
/// two (the bucket of an eighth of a second) going at once; frames wait in the ring, none is lost.
#[test]
fn transmit_limit_paces_frames_without_dropping_them() {
    let (tap, _ns) = tap_in_netns();
    let tx = RateLimiterConfig { bandwidth: None, ops: TokenBucketConfig::per_second(16) };
    let limiters = (Arc::new(RateLimiter::unlimited().unwrap()), Arc::new(RateLimiter::new(&tx).unwrap()));
    let net = Net::with_tap(tap, MAC, 0, limiters);
    let handle = net.tx_rate_limiter_handle();
    let mut h = Harness::new(Box::new(net), 16);
    h.init(crate::features::VERSION_1 | features::MAC);
    h.select(1);
    let req = arp_request();
    h.write_mem(DATA + 0x10_0000, &req);
    let start = std::time::Instant::now();
    for i in 0..12 {
        h.add_chain(i, &[(DATA + 0x10_0000, req.len() as u32, 0)]);
    }
    h.kick();
    assert!(h.wait_used(12), "transmit not completed");
    let took = start.elapsed();
    assert!(took >= std::time::Duration::from_millis(560), "12 frames at 16/s took only {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    // Lifting the limit live: the next 12 go at once.
    handle.update(&RateLimiterConfig::default()).unwrap();
    let start = std::time::Instant::now();
    for i in 0..12 {
        h.add_chain(i, &[(DATA + 0x10_0000, req.len() as u32, 0)]);
    }
    h.kick();
    assert!(h.wait_used(24), "transmit not completed");
    assert!(start.elapsed() < std::time::Duration::from_millis(400), "{:?}", start.elapsed());
}
