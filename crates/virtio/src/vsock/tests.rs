//! virtio-vsock through the mmio transport, with real host Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::packet::*;
use super::*;
use crate::status;
use crate::testutil::{Harness, DATA, F_WRITE};

const CID: u64 = 3;
const QSIZE: u16 = 64;
const RX_BUFS: u16 = 32;
const RX_BUF_LEN: u32 = 4096;
const TX_AREA: u64 = DATA + 0x40_0000;
const TX_SLOT: u64 = 0x2_0000;
const GUEST_BUF_ALLOC: u32 = 256 << 10;

struct Guest {
    h: Harness,
    path: PathBuf,
    _dir: tempfile::TempDir,
    rx_posted: u16,
    rx_seen: u16,
    tx_sent: u16,
    /// fwd_cnt the guest reports (bytes it consumed).
    fwd_cnt: u32,
    buf_alloc: u32,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let dev = Vsock::new(&VsockConfig { cid: CID, socket: path.clone() }, 0).unwrap();
        let mut h = Harness::new(Box::new(dev), QSIZE);
        let st = h.init_default();
        assert_eq!(st & status::DEVICE_NEEDS_RESET, 0);
        let mut g = Guest {
            h,
            path,
            _dir: dir,
            rx_posted: 0,
            rx_seen: 0,
            tx_sent: 0,
            fwd_cnt: 0,
            buf_alloc: GUEST_BUF_ALLOC,
        };
        g.post_rx(RX_BUFS);
        g
    }

    fn post_rx(&mut self, n: u16) {
        self.h.select(0);
        for _ in 0..n {
            let i = self.rx_posted % QSIZE;
            self.h.add_chain(i, &[(DATA + u64::from(i) * 0x1000, RX_BUF_LEN, F_WRITE)]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.h.kick();
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..Default::default()
        }
    }

    /// Places raw descriptors (addr, len, flags) on the transmit queue and waits for completion.
    fn send_descs(&mut self, descs: &[(u64, u32, u16)]) {
        self.h.select(1);
        let first = (self.tx_sent * 4) % QSIZE;
        self.h.add_chain(first, descs);
        self.h.kick();
        self.tx_sent = self.tx_sent.wrapping_add(1);
        assert!(self.h.wait_used(self.tx_sent), "transmit chain not completed");
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        let addr = TX_AREA + u64::from(self.tx_sent % 32) * TX_SLOT;
        self.h.write_mem(addr, bytes);
        self.send_descs(&[(addr, bytes.len() as u32, 0)]);
    }

    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes);
    }

    /// The next packet the device put in a receive buffer, within `timeout`.
    fn recv_within(&mut self, timeout: Duration) -> Option<(Header, Vec<u8>)> {
        self.h.select(0);
        let deadline = Instant::now() + timeout;
        while self.h.used_idx() == self.rx_seen {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (id, len) = self.h.used(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        assert!(len as usize >= HDR_LEN && len <= RX_BUF_LEN, "used len {len}");
        let bytes = self.h.read_mem(DATA + u64::from(id) * 0x1000, len as usize);
        let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
        assert_eq!(hdr.len as usize, len as usize - HDR_LEN);
        assert_eq!((hdr.src_cid, hdr.dst_cid, hdr.type_), (HOST_CID, CID, TYPE_STREAM));
        self.post_rx(1);
        Some((hdr, bytes[HDR_LEN..].to_vec()))
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.recv_within(Duration::from_secs(10)).expect("no packet for the guest")
    }

    fn expect_nothing(&mut self) {
        if let Some((h, _)) = self.recv_within(Duration::from_millis(200)) {
            panic!("unexpected packet {h:?}");
        }
    }

    /// Host client: CONNECT, guest accepts; returns (client, host-side port).
    fn host_connect(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(&self.path).unwrap();
        client.write_all(format!("CONNECT {guest_port}\n").as_bytes()).unwrap();
        let (req, _) = self.recv();
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, guest_port));
        assert!(req.src_port >= 1 << 30);
        self.send(self.hdr(guest_port, req.src_port, OP_RESPONSE), &[]);
        let line = read_line(&mut client);
        assert_eq!(line, format!("OK {}\n", req.src_port));
        (client, req.src_port)
    }

    /// Guest connects to host port `port` (a `<socket>_port` listener must exist).
    fn guest_connect(&mut self, listener: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(self.hdr(src, port, OP_REQUEST), &[]);
        let (resp, _) = self.recv();
        assert_eq!((resp.op, resp.src_port, resp.dst_port), (OP_RESPONSE, port, src));
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn port_listener(&self, port: u32) -> UnixListener {
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(p).unwrap()
    }

    /// Receives RW packets until `n` bytes arrived; counts them as consumed.
    fn recv_data(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let (h, data) = self.recv();
            assert_eq!(h.op, OP_RW, "{h:?}");
            out.extend(data);
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(out.len() as u32);
        out
    }
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "connection closed");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn is_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset, // not a timeout
    }
}

#[test]
fn config_space_is_the_cid_and_device_is_type_19() {
    let mut g = Guest::new();
    assert_eq!(g.h.rd(0x08), 19);
    assert_eq!(g.h.rd(0x100), CID as u32);
    assert_eq!(g.h.rd(0x104), 0);
}

#[test]
fn host_initiated_stream_carries_data_both_ways_and_closes() {
    let mut g = Guest::new();
    let (mut client, port) = g.host_connect(1234);
    client.write_all(b"hello").unwrap();
    assert_eq!(g.recv_data(5), b"hello");
    g.send(g.hdr(1234, port, OP_RW), b"world");
    assert_eq!(read_exact_timeout(&mut client, 5), b"world");
    // Host half-closes: the guest sees SHUTDOWN(SEND) and can still send.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(h.fwd_cnt, 5, "only the guest's bytes count, not the OK line");
    g.send(g.hdr(1234, port, OP_RW), b"late");
    assert_eq!(read_exact_timeout(&mut client, 4), b"late");
    // Guest closes: the host sees EOF, the guest gets the RST it waits for.
    g.send(g.hdr(1234, port, OP_SHUTDOWN), &[]);
    let mut sd = g.hdr(1234, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert!(is_eof(&mut client));
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, port, 1234));
    // The stream is gone: more data gets an RST.
    g.send(g.hdr(1234, port, OP_RW), b"x");
    assert_eq!(g.recv().0.op, OP_RST);
}

#[test]
fn guest_refusal_closes_the_host_client() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.path).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, OP_REQUEST);
    g.send(g.hdr(9, req.src_port, OP_RST), &[]);
    assert!(is_eof(&mut client));
    g.expect_nothing();
}

#[test]
fn bad_connect_line_closes_the_client_without_bothering_the_guest() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.path).unwrap();
    client.write_all(b"HELLO 9\n").unwrap();
    assert!(is_eof(&mut client));
    let mut client = UnixStream::connect(&g.path).unwrap();
    client.write_all(&[b'7'; 100]).unwrap();
    assert!(is_eof(&mut client));
    g.expect_nothing();
}

#[test]
fn guest_initiated_stream_to_a_listening_port() {
    let mut g = Guest::new();
    let listener = g.port_listener(52);
    let mut host = g.guest_connect(&listener, 1000, 52);
    g.send(g.hdr(1000, 52, OP_RW), b"ping");
    assert_eq!(read_exact_timeout(&mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port, data.as_slice()), (OP_RW, 52, 1000, &b"pong"[..]));
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    assert_eq!(h.fwd_cnt, 4, "the guest's 4 bytes were forwarded");
    // The host process exits: the guest sees a full shutdown and answers RST.
    drop(host);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    g.send(g.hdr(1000, 52, OP_RST), &[]);
    g.expect_nothing();
    g.send(g.hdr(1000, 52, OP_RW), b"x");
    assert_eq!(g.recv().0.op, OP_RST);
}

#[test]
fn everything_a_host_client_sent_before_closing_reaches_the_guest() {
    let mut g = Guest::new();
    let (client, port) = g.host_connect(77);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        let mut client = client;
        std::thread::spawn(move || {
            client.write_all(&data).unwrap();
        }) // the client is closed when the thread ends
    };
    let mut got = Vec::new();
    let shutdown = loop {
        let (h, d) = g.recv();
        assert_eq!(h.dst_port, 77);
        if h.op != OP_RW {
            break h;
        }
        got.extend(d);
        // The guest application reads everything at once and says so.
        g.fwd_cnt = got.len() as u32;
        g.send(g.hdr(77, port, OP_CREDIT_UPDATE), &[]);
    };
    writer.join().unwrap();
    assert_eq!((shutdown.op, shutdown.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream corrupted");
}

#[test]
fn guest_connect_without_a_listener_gets_rst() {
    let mut g = Guest::new();
    g.send(g.hdr(1000, 53, OP_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 53, 1000));
}

#[test]
fn data_to_the_guest_respects_its_credit() {
    let mut g = Guest::new();
    let listener = g.port_listener(60);
    g.buf_alloc = 1000;
    let mut host = g.guest_connect(&listener, 7, 60);
    host.write_all(&[5u8; 5000]).unwrap();
    assert_eq!(g.recv_data(1000).len(), 1000);
    g.expect_nothing();
    // The guest consumed its buffer and says so.
    g.send(g.hdr(7, 60, OP_CREDIT_UPDATE), &[]);
    assert_eq!(g.recv_data(1000).len(), 1000);
    g.expect_nothing();
    // A larger window lets the rest through, never more than advertised in flight.
    g.buf_alloc = 100_000;
    g.send(g.hdr(7, 60, OP_CREDIT_UPDATE), &[]);
    assert_eq!(g.recv_data(3000), vec![5u8; 3000]);
}

#[test]
fn credit_request_gets_a_credit_update() {
    let mut g = Guest::new();
    let listener = g.port_listener(61);
    let _host = g.guest_connect(&listener, 8, 61);
    g.send(g.hdr(8, 61, OP_CREDIT_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.buf_alloc, h.fwd_cnt), (OP_CREDIT_UPDATE, BUF_ALLOC, 0));
}

#[test]
fn host_that_does_not_read_bounds_memory_and_guest_overrun_is_reset() {
    let mut g = Guest::new();
    let listener = g.port_listener(62);
    let _host = g.guest_connect(&listener, 9, 62); // never reads
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0usize;
    // A guest ignoring credit: vmr holds at most BUF_ALLOC, then resets the stream.
    let rst = loop {
        g.send(g.hdr(9, 62, OP_RW), &chunk);
        sent += chunk.len();
        if let Some((h, _)) = g.recv_within(Duration::from_millis(5)) {
            if h.op == OP_RST {
                break true;
            }
        }
        if sent > 64 << 20 {
            break false;
        }
    };
    assert!(rst, "no RST after {sent} bytes");
}

#[test]
fn shutdown_by_guest_send_side_only_keeps_host_to_guest_open() {
    let mut g = Guest::new();
    let listener = g.port_listener(63);
    let mut host = g.guest_connect(&listener, 10, 63);
    g.send(g.hdr(10, 63, OP_RW), b"last");
    let mut sd = g.hdr(10, 63, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert_eq!(read_exact_timeout(&mut host, 4), b"last");
    assert!(is_eof(&mut host));
    host.write_all(b"reply").unwrap();
    assert_eq!(g.recv_data(5), b"reply");
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_others_keep_working() {
    let mut g = Guest::new();
    let listener = g.port_listener(70);
    let mut host = g.guest_connect(&listener, 11, 70);
    // Wrong source cid, wrong destination cid: dropped silently.
    let mut h = g.hdr(11, 70, OP_RW);
    h.src_cid = 4;
    g.send(h, b"spoof");
    let mut h = g.hdr(11, 70, OP_RW);
    h.dst_cid = 5;
    g.send(h, b"spoof");
    // len larger than the chain; a short header; a writable-only chain: dropped.
    let mut h = g.hdr(11, 70, OP_RW);
    h.len = 1000;
    g.send_bytes(&h.to_bytes());
    g.send_bytes(&[0u8; 20]);
    g.send_descs(&[(TX_AREA, 64, F_WRITE)]);
    let mut h = g.hdr(11, 70, OP_RW);
    h.len = u32::MAX;
    g.send_bytes(&h.to_bytes());
    g.expect_nothing();
    // The stream is intact.
    g.send(g.hdr(11, 70, OP_RW), b"ok");
    assert_eq!(read_exact_timeout(&mut host, 2), b"ok");
    // Unknown op on an unknown stream, non-stream type: RST. RST to unknown: nothing.
    g.send(g.hdr(500, 501, 99), &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    let mut h = g.hdr(502, 70, OP_REQUEST);
    h.type_ = 2;
    g.send(h, &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    g.send(g.hdr(503, 504, OP_RST), &[]);
    g.expect_nothing();
    // Unknown op on the live stream resets it (the host sees EOF).
    g.send(g.hdr(11, 70, 42), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (OP_RST, 11));
    assert!(is_eof(&mut host));
    assert_eq!(g.h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn duplicate_request_resets_the_stream() {
    let mut g = Guest::new();
    let listener = g.port_listener(71);
    let mut host = g.guest_connect(&listener, 12, 71);
    g.send(g.hdr(12, 71, OP_REQUEST), &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    assert!(is_eof(&mut host));
}

#[test]
fn reset_closes_connections_and_keeps_listening() {
    let mut g = Guest::new();
    let (mut client, _) = g.host_connect(80);
    g.h.wr(0x70, 0);
    assert!(is_eof(&mut client));
    assert!(UnixStream::connect(&g.path).is_ok());
}

#[test]
fn socket_path_is_removed_on_drop_and_must_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let cfg = VsockConfig { cid: CID, socket: path.clone() };
    let dev = Vsock::new(&cfg, 0).unwrap();
    assert!(matches!(Vsock::new(&cfg, 1), Err(VsockError::Bind { .. })));
    drop(dev);
    assert!(!path.exists());
}

/// Deterministic random packets (valid cids, random ops, ports, flags, lengths and credit)
/// against a device with some listening ports: no panic, no hang, the device still serves a
/// fresh stream afterwards.
#[test]
fn random_packets_never_break_the_device() {
    let mut g = Guest::new();
    let listeners: Vec<UnixListener> = (0..3).map(|p| g.port_listener(p)).collect();
    for l in &listeners {
        l.set_nonblocking(true).unwrap();
    }
    let mut accepted = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..1500 {
        let r = next();
        let mut h = g.hdr((r % 4) as u32, ((r >> 8) % 4) as u32, ((r >> 16) % 9) as u16);
        h.flags = ((r >> 24) % 4) as u32;
        h.buf_alloc = (r >> 32) as u32 % 70_000;
        h.fwd_cnt = (r >> 40) as u32 % 70_000;
        if r >> 60 == 0 {
            h.type_ = 2;
        }
        let payload = vec![r as u8; ((r >> 48) % 300) as usize];
        g.send(h, &payload);
        while g.recv_within(Duration::from_millis(0)).is_some() {}
        for l in &listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                let _ = (&s).write(b"data from host");
                accepted.push(s);
            }
        }
    }
    while g.recv_within(Duration::from_millis(50)).is_some() {}
    assert_eq!(g.h.rd(0x70) & status::DEVICE_NEEDS_RESET, 0);
    let listener = g.port_listener(99);
    let mut host = g.guest_connect(&listener, 4000, 99);
    g.send(g.hdr(4000, 99, OP_RW), b"still");
    assert_eq!(read_exact_timeout(&mut host, 5), b"still");
}

#[test]
fn guest_that_stops_reading_pushes_back_on_the_host_client() {
    let mut g = Guest::new();
    g.buf_alloc = u32::MAX; // claims endless room, but posts no more receive buffers
    let (client, _) = g.host_connect(90);
    client.set_nonblocking(true).unwrap();
    let chunk = [3u8; 4096];
    let mut accepted = 0usize;
    let mut idle_since = Instant::now();
    // Write until the host socket stays full for a while: vmr stopped reading.
    while idle_since.elapsed() < Duration::from_millis(300) {
        match (&client).write(&chunk) {
            Ok(n) => {
                accepted += n;
                idle_since = Instant::now();
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        assert!(accepted < 8 << 20, "vmr keeps reading: {accepted} bytes");
    }
    // Guest buffers (32 x 4 KiB) + read-ahead + the socket's own buffer, nothing unbounded.
    assert!(accepted >= TO_GUEST_CAP, "{accepted}");
}

#[test]
fn connection_table_is_bounded() {
    let g = Guest::new();
    let clients: Vec<UnixStream> =
        (0..MAX_CONNECTIONS).map(|_| UnixStream::connect(&g.path).unwrap()).collect();
    let mut extra = UnixStream::connect(&g.path).unwrap();
    assert!(is_eof(&mut extra), "connection beyond the limit kept");
    // Freeing a slot lets a new client in.
    drop(clients);
    std::thread::sleep(Duration::from_millis(100));
    let mut c = UnixStream::connect(&g.path).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
fn silent_clients_and_unanswered_requests_time_out() {
    let mut g = Guest::new();
    let mut silent = UnixStream::connect(&g.path).unwrap();
    let mut waiting = UnixStream::connect(&g.path).unwrap();
    waiting.write_all(b"CONNECT 5\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, OP_REQUEST);
    let start = Instant::now();
    // The guest never answers: the client is closed and the guest gets an RST.
    assert!(is_eof(&mut waiting));
    assert!(is_eof(&mut silent));
    let elapsed = start.elapsed();
    assert!(elapsed >= CONNECT_TIMEOUT / 2 && elapsed < CONNECT_TIMEOUT * 3, "{elapsed:?}");
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, req.src_port, 5));
    // A late RESPONSE is refused.
    g.send(g.hdr(5, req.src_port, OP_RESPONSE), &[]);
    assert_eq!(g.recv().0.op, OP_RST);
}

#[test]
fn a_restored_device_tells_the_guest_its_connections_were_reset() {
    use vmr_hypervisor::Persist;
    let dir = tempfile::tempdir().unwrap();
    let config = VsockConfig { cid: CID, socket: dir.path().join("r.sock") };
    let state = VsockState { cid: CID, socket: config.socket.clone(), acked_features: 0 };
    let host = VsockHost { config: config.clone(), index: 0 };
    let wrong = VsockHost { config: VsockConfig { cid: 9, ..config.clone() }, index: 0 };
    assert!(Vsock::restore(wrong, &state).err().unwrap().to_string().contains("CID is 3"));
    let dev = Vsock::restore(host, &state).unwrap();
    let mut h = Harness::new(Box::new(dev), QSIZE);
    let st = h.negotiate(crate::features::VERSION_1);
    h.setup_queue();
    // The driver posts an event buffer before DRIVER_OK, as Linux does.
    h.select(2);
    h.add_chain(0, &[(DATA, 8, F_WRITE)]);
    h.write_mem(DATA, &[0xff; 8]);
    h.wr(0x70, st | status::DRIVER_OK);
    assert!(h.wait_used(1), "no event");
    assert_eq!(h.used(0), (0, 4));
    assert_eq!(h.read_mem(DATA, 4), [0, 0, 0, 0], "TRANSPORT_RESET is event id 0");
}
