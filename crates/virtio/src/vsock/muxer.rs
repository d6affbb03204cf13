//! The host side: the listening socket, the connection table, and the packets flowing between
//! the guest's queues and the host's Unix sockets (Firecracker's convention).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, ConnectLine, State, BUF_ALLOC};
use super::packet::*;
use super::HostSocket;

/// Most connections (including host clients still sending their CONNECT line).
pub const MAX_CONNECTIONS: usize = 256;
/// Most control packets (RST, RESPONSE, REQUEST) waiting for guest receive buffers; the
/// transmit queue is not served while this many are pending.
pub const MAX_PENDING_CONTROL: usize = 1024;
/// Largest payload in one packet either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 << 10;
/// First port given to host-initiated connections (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long a host client may take to send `CONNECT <port>\n`, and the guest to answer the
/// REQUEST that follows (Firecracker's 2 s): then the client is closed (and the guest reset).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline check period while any deadline is pending.
const TIMER_TICK: Duration = Duration::from_millis(250);
const LISTENER_TOKEN: u64 = 0;
const TIMER_TOKEN: u64 = u64::MAX;
const EVENTS_PER_POLL: usize = 32;

enum RxItem {
    /// A header-only packet, ready to go.
    Control(Header),
    /// A connection that may have data, a credit update or a shutdown to send.
    Conn(u64),
}

pub(crate) struct Muxer {
    cid: u64,
    host: HostSocket,
    epoll: Epoll,
    /// Ticks while a connection has a deadline.
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<u64, Conn>,
    /// (local port, peer port) -> token.
    by_ports: HashMap<(u32, u32), u64>,
    rxq: VecDeque<RxItem>,
    control_pending: usize,
    next_token: u64,
    next_local_port: u32,
    scratch: Vec<u8>,
}

/// Connects to a Unix socket without blocking (a full backlog fails instead of waiting).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes; fd is open.
    let rc = unsafe { libc::connect(owned.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

impl Muxer {
    pub(crate) fn new(cid: u64, host: HostSocket) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            host.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        let timer = TimerFd::new()?;
        // SAFETY: F_SETFL on an fd this function owns; no memory is involved.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        epoll.ctl(ControlOperation::Add, timer.as_raw_fd(), EpollEvent::new(EventSet::IN, TIMER_TOKEN))?;
        Ok(Muxer {
            cid,
            host,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            rxq: VecDeque::new(),
            control_pending: 0,
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0; MAX_PAYLOAD],
        })
    }

    /// Gives the listening socket back; every connection is closed.
    pub(crate) fn into_host(self) -> HostSocket {
        self.host
    }

    /// The fd the worker waits on: readable when a socket has an event.
    pub(crate) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Whether the transmit queue may be served (its replies have room).
    pub(crate) fn can_take_tx(&self, batch: usize) -> bool {
        self.control_pending + batch <= MAX_PENDING_CONTROL
    }

    pub(crate) fn has_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn header(&self, local_port: u32, peer_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            ..Default::default()
        }
    }

    fn push_control(&mut self, hdr: Header) {
        self.control_pending += 1;
        self.rxq.push_back(RxItem::Control(hdr));
    }

    /// Queues `token` for the receive path if it has something for the guest, and brings its
    /// epoll registration up to date.
    fn refresh(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        // A closed socket is not polled (its HUP would fire for ever): what it still holds
        // is read here, as the guest makes room.
        while conn.host_closed && !conn.host_eof && conn.read_room() > 0 {
            let before = conn.to_guest.len();
            match conn.read_host(&mut self.scratch) {
                Ok(_) if conn.host_eof || conn.to_guest.len() > before => {}
                // No progress (not expected from a closed peer): give up on the rest.
                _ => conn.host_eof = true,
            }
        }
        if conn.finished() {
            self.kill(token);
            return;
        }
        if !conn.queued && conn.wants_rx() {
            conn.queued = true;
            self.rxq.push_back(RxItem::Conn(token));
        }
        let fd = conn.stream.as_raw_fd();
        let want = if conn.host_closed { None } else { Some(conn.interest()) };
        if want == conn.registered {
            return;
        }
        let result = match (conn.registered, want) {
            (None, Some(ev)) => self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token)),
            (Some(_), Some(ev)) => self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, token)),
            (Some(_), None) => self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, None) => Ok(()),
        };
        conn.registered = want;
        if let Err(e) = result {
            tracing::warn!("vsock: epoll update failed: {e}");
        }
    }

    /// Drops a connection: its socket closes, the guest gets an RST (unless `quiet`).
    fn remove(&mut self, token: u64, quiet: bool) {
        let Some(conn) = self.conns.remove(&token) else { return };
        let key = (conn.local_port, conn.peer_port);
        if self.by_ports.get(&key) == Some(&token) {
            self.by_ports.remove(&key);
        }
        if conn.registered.is_some() {
            let _ = self.epoll.ctl(ControlOperation::Delete, conn.stream.as_raw_fd(), EpollEvent::default());
        }
        if !quiet && !matches!(conn.state, State::AwaitingConnect(_)) {
            let hdr = self.header(conn.local_port, conn.peer_port, OP_RST);
            self.push_control(hdr);
        }
    }

    fn kill(&mut self, token: u64) {
        self.remove(token, false);
    }

    // ---- guest -> host ----

    /// Handles one packet from the guest's transmit queue.
    pub(crate) fn handle_guest(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            tracing::debug!("vsock: dropped packet {} -> {}", hdr.src_cid, hdr.dst_cid);
            return;
        }
        let Some(&token) = self.by_ports.get(&(hdr.dst_port, hdr.src_port)) else {
            match hdr.op {
                OP_REQUEST if hdr.type_ == TYPE_STREAM => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.reply_rst(hdr),
            }
            return;
        };
        if hdr.type_ != TYPE_STREAM {
            self.kill(token);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RST => return self.remove(token, true),
            OP_RESPONSE if conn.state == State::LocalInit => {
                conn.state = State::Established;
                conn.deadline = None;
                let ok = format!("OK {}\n", conn.local_port);
                conn.to_host.extend(ok.as_bytes());
                conn.own_bytes = conn.to_host.len();
                if conn.flush_host().is_err() {
                    return self.kill(token);
                }
            }
            OP_RW if conn.state == State::Established && conn.guest_shut & SHUTDOWN_SEND == 0 => {
                // The guest must respect the credit we advertised.
                if conn.guest_bytes_held() + payload.len() > BUF_ALLOC as usize {
                    tracing::debug!("vsock: guest exceeded its credit on port {}", hdr.src_port);
                    return self.kill(token);
                }
                conn.to_host.extend(payload);
                if conn.flush_host().is_err() {
                    return self.kill(token);
                }
            }
            OP_SHUTDOWN if conn.state == State::Established => {
                conn.guest_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.guest_shut & SHUTDOWN_RCV != 0 {
                    conn.to_guest.clear();
                }
                if conn.flush_host().is_err() {
                    return self.kill(token);
                }
            }
            OP_CREDIT_UPDATE if conn.state == State::Established => {}
            OP_CREDIT_REQUEST if conn.state == State::Established => conn.credit_update_wanted = true,
            _ => return self.kill(token),
        }
        self.refresh(token);
    }

    fn reply_rst(&mut self, hdr: &Header) {
        let rst = self.header(hdr.dst_port, hdr.src_port, OP_RST);
        self.push_control(rst);
    }

    /// The guest connects to host port P: relay to `<socket>_P`, or refuse with RST.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.reply_rst(hdr);
        }
        let mut path: OsString = self.host.path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", PathBuf::from(&path).display());
                return self.reply_rst(hdr);
            }
        };
        let mut conn = Conn::new(stream, State::Established, hdr.dst_port, hdr.src_port);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        let token = self.insert(conn, true);
        let response = self.header(hdr.dst_port, hdr.src_port, OP_RESPONSE);
        self.push_control(response);
        self.refresh(token);
    }

    /// Adds a connection; `keyed`: reachable by its ports (not yet for a host client that has
    /// not named a guest port).
    fn insert(&mut self, conn: Conn, keyed: bool) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        if keyed {
            self.by_ports.insert((conn.local_port, conn.peer_port), token);
        }
        self.conns.insert(token, conn);
        token
    }

    // ---- host sockets ----

    /// Handles what the sockets report. Returns true if more events may be waiting.
    pub(crate) fn poll_host(&mut self) -> bool {
        let mut events = [EpollEvent::default(); EVENTS_PER_POLL];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("vsock: epoll wait failed: {e}");
                }
                return false;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                LISTENER_TOKEN => self.accept(),
                TIMER_TOKEN => self.expire(),
                token => self.conn_event(token, ev.event_set()),
            }
        }
        n == EVENTS_PER_POLL
    }

    fn accept(&mut self) {
        for _ in 0..EVENTS_PER_POLL {
            let stream = match self.host.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return tracing::warn!("vsock: accept failed: {e}"),
            };
            // Also refused while the guest does not take the packets queued for it: each
            // client costs up to two (REQUEST, RST) whatever the guest does.
            let full = self.conns.len() >= MAX_CONNECTIONS || self.control_pending >= MAX_PENDING_CONTROL;
            if full || stream.set_nonblocking(true).is_err() {
                tracing::debug!("vsock: host connection refused (table or queue full)");
                continue;
            }
            let token = self.insert(Conn::new(stream, State::AwaitingConnect(Vec::new()), 0, 0), false);
            self.set_deadline(token);
            self.refresh(token);
        }
    }

    fn conn_event(&mut self, token: u64, ev: EventSet) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        match conn.state {
            State::AwaitingConnect(_) => return self.connect_line(token),
            State::LocalInit => return self.kill(token), // the client went away
            State::Established => {}
        }
        let readable = ev.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP);
        if readable && conn.read_host(&mut self.scratch).is_err() {
            return self.kill(token);
        }
        if ev.contains(EventSet::OUT) && conn.flush_host().is_err() {
            return self.kill(token);
        }
        if ev.contains(EventSet::ERROR) {
            return self.kill(token);
        }
        if ev.contains(EventSet::HANG_UP) {
            conn.host_closed = true;
            conn.to_host.clear();
        }
        self.refresh(token);
    }

    /// A host client's `CONNECT <port>\n`: ask the guest with a REQUEST.
    fn connect_line(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let port = match conn.read_connect_line() {
            ConnectLine::Incomplete => return,
            ConnectLine::Invalid => return self.remove(token, true),
            ConnectLine::Port(p) => p,
        };
        let local_port = self.alloc_local_port(port);
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.state = State::LocalInit;
        conn.local_port = local_port;
        conn.peer_port = port;
        self.by_ports.insert((local_port, port), token);
        self.set_deadline(token);
        let request = self.header(local_port, port, OP_REQUEST);
        self.push_control(request);
        self.refresh(token);
    }

    fn set_deadline(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        if !self.timer_armed {
            match self.timer.reset(TIMER_TICK, Some(TIMER_TICK)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => tracing::warn!("vsock: cannot arm the connect timer: {e}"),
            }
        }
    }

    /// Closes host clients whose CONNECT line or guest answer is overdue.
    fn expire(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&t, _)| t)
            .collect();
        for token in overdue {
            tracing::debug!("vsock: host connection timed out before it was established");
            self.kill(token);
        }
        if !self.conns.values().any(|c| c.deadline.is_some()) {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    // ---- host -> guest ----

    /// The next packet for a guest receive buffer with `room` payload bytes; its payload is
    /// left in `buf`. None when nothing is waiting.
    pub(crate) fn next_rx(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        buf.clear();
        while let Some(item) = self.rxq.pop_front() {
            let token = match item {
                RxItem::Control(hdr) => {
                    self.control_pending -= 1;
                    return Some(hdr);
                }
                RxItem::Conn(token) => token,
            };
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            conn.queued = false;
            let Some(hdr) = self.conn_packet(token, room, buf) else { continue };
            self.refresh(token);
            return Some(hdr);
        }
        None
    }

    fn conn_packet(&mut self, token: u64, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        let conn = self.conns.get_mut(&token)?;
        if conn.state != State::Established {
            return None;
        }
        let n = conn.to_guest.len().min(conn.peer_credit()).min(room).min(MAX_PAYLOAD);
        let (op, flags) = if n > 0 {
            buf.extend(conn.to_guest.drain(..n));
            conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
            (OP_RW, 0)
        } else if let Some(flags) = conn.shutdown_due() {
            conn.shutdown_sent = true;
            (OP_SHUTDOWN, flags)
        } else if conn.wants_credit_update() {
            (OP_CREDIT_UPDATE, 0)
        } else {
            return None;
        };
        conn.credit_update_wanted = false;
        conn.last_fwd_cnt_sent = conn.fwd_cnt;
        let (local, peer, fwd) = (conn.local_port, conn.peer_port, conn.fwd_cnt);
        let mut hdr = self.header(local, peer, op);
        hdr.len = n as u32;
        hdr.flags = flags;
        hdr.fwd_cnt = fwd;
        Some(hdr)
    }
}

impl HostSocket {
    /// Binds `path` (which must not exist) and listens, non-blocking.
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(HostSocket { listener, path: path.to_owned() })
    }
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
