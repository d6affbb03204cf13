//! One stream between a host Unix socket and a guest vsock port, with both directions'
//! buffers and credit counters.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Buffer space advertised to the guest per connection (`buf_alloc`): the most guest-to-host
/// bytes vmr holds for a host client that does not read.
pub const BUF_ALLOC: u32 = 128 << 10;
/// Most host-to-guest bytes read ahead from a host socket per connection.
pub const TO_GUEST_CAP: usize = 64 << 10;
/// A standalone CREDIT_UPDATE goes out once this many forwarded bytes are unannounced.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Longest `CONNECT <port>\n` line accepted from a host client.
const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// A host client was accepted; its `CONNECT <port>\n` line is being read.
    AwaitingConnect(Vec<u8>),
    /// REQUEST sent to the guest for a host client; waiting for RESPONSE.
    LocalInit,
    Established,
}

/// Outcome of reading the connect line.
pub(crate) enum ConnectLine {
    Incomplete,
    Port(u32),
    Invalid,
}

pub(crate) struct Conn {
    pub stream: UnixStream,
    pub state: State,
    /// Host side port (the `_P` suffix, or the port allocated for a host client).
    pub local_port: u32,
    /// Guest side port.
    pub peer_port: u32,
    /// Host -> guest bytes read from the socket, not yet in a guest buffer.
    pub to_guest: VecDeque<u8>,
    /// Host -> guest bytes placed in guest buffers.
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Guest -> host bytes not yet written to the socket.
    pub to_host: VecDeque<u8>,
    /// Bytes at the front of `to_host` that vmr wrote itself (the `OK <port>\n` line): not
    /// the guest's, so not counted in `fwd_cnt` nor against its credit.
    pub own_bytes: usize,
    /// Guest -> host bytes written to the socket.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub last_fwd_cnt_sent: u32,
    pub credit_update_wanted: bool,
    /// The host client shut its sending side (read returned 0).
    pub host_eof: bool,
    /// The host client closed its socket (HUP): nothing more can be written to it, what it
    /// sent before is still read.
    pub host_closed: bool,
    /// SHUTDOWN flags received from the guest.
    pub guest_shut: u32,
    pub shutdown_sent: bool,
    pub host_write_shut: bool,
    /// Already in the muxer's rx queue.
    pub queued: bool,
    /// Events registered with the muxer's epoll (None: not registered).
    pub registered: Option<EventSet>,
    /// When a host client that has not sent its CONNECT line, or the guest that has not
    /// answered its REQUEST, gives up.
    pub deadline: Option<Instant>,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Conn {
            stream,
            state,
            local_port,
            peer_port,
            to_guest: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            to_host: VecDeque::new(),
            own_bytes: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            credit_update_wanted: false,
            host_eof: false,
            host_closed: false,
            guest_shut: 0,
            shutdown_sent: false,
            host_write_shut: false,
            queued: false,
            registered: None,
            deadline: None,
        }
    }

    /// Bytes the guest can still take: its buf_alloc minus what is in flight towards it. A
    /// guest reporting a fwd_cnt ahead of what it was sent gets no credit.
    pub(crate) fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    /// How many more bytes to read from the host socket right now.
    pub(crate) fn read_room(&self) -> usize {
        if self.state != State::Established || self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0 {
            return 0;
        }
        let limit = TO_GUEST_CAP.min(self.peer_credit());
        limit.saturating_sub(self.to_guest.len())
    }

    pub(crate) fn wants_credit_update(&self) -> bool {
        self.state == State::Established
            && (self.credit_update_wanted
                || self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD)
    }

    /// SHUTDOWN flags to send now (the host stopped sending and all its bytes reached the guest).
    pub(crate) fn shutdown_due(&self) -> Option<u32> {
        if self.shutdown_sent || !self.host_eof || !self.to_guest.is_empty() {
            return None;
        }
        Some(if self.host_closed { SHUTDOWN_SEND | SHUTDOWN_RCV } else { SHUTDOWN_SEND })
    }

    /// Whether the connection has a packet for the guest.
    pub(crate) fn wants_rx(&self) -> bool {
        self.state == State::Established
            && ((!self.to_guest.is_empty() && self.peer_credit() > 0)
                || self.wants_credit_update()
                || self.shutdown_due().is_some())
    }

    /// Both directions are finished: the connection ends with an RST.
    pub(crate) fn finished(&self) -> bool {
        let guest_done_sending = self.guest_shut & SHUTDOWN_SEND != 0 && self.to_host.is_empty();
        let guest_closed = self.guest_shut == SHUTDOWN_SEND | SHUTDOWN_RCV;
        guest_done_sending && (guest_closed || self.shutdown_sent)
    }

    /// The epoll events wanted now.
    pub(crate) fn interest(&self) -> EventSet {
        match self.state {
            State::AwaitingConnect(_) => EventSet::IN | EventSet::READ_HANG_UP,
            State::LocalInit => EventSet::READ_HANG_UP,
            State::Established => {
                let mut ev = EventSet::empty();
                if self.read_room() > 0 {
                    ev |= EventSet::IN | EventSet::READ_HANG_UP;
                }
                if !self.to_host.is_empty() && !self.host_closed {
                    ev |= EventSet::OUT;
                }
                ev
            }
        }
    }

    /// Reads up to `read_room` bytes into `to_guest`. Ok(false) on end of stream.
    pub(crate) fn read_host(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        let room = self.read_room().min(scratch.len());
        if room == 0 {
            return Ok(true);
        }
        match self.stream.read(&mut scratch[..room]) {
            Ok(0) => {
                self.host_eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.to_guest.extend(&scratch[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes `to_host` to the socket until it is empty or the socket is full; shuts the
    /// socket's write side once the guest stopped sending and everything is out.
    pub(crate) fn flush_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let own = n.min(self.own_bytes);
                    self.own_bytes -= own;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - own) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut && !self.host_closed {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Guest bytes held for the host socket.
    pub(crate) fn guest_bytes_held(&self) -> usize {
        self.to_host.len() - self.own_bytes
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so no stream byte after it is taken.
    pub(crate) fn read_connect_line(&mut self) -> ConnectLine {
        let State::AwaitingConnect(line) = &mut self.state else { return ConnectLine::Invalid };
        loop {
            let mut b = [0u8; 1];
            match self.stream.read(&mut b) {
                Ok(0) => return ConnectLine::Invalid,
                Ok(_) if b[0] == b'\n' => return parse_connect(line),
                Ok(_) if line.len() >= MAX_CONNECT_LINE => return ConnectLine::Invalid,
                Ok(_) => line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ConnectLine::Incomplete,
                Err(_) => return ConnectLine::Invalid,
            }
        }
    }
}

fn parse_connect(line: &[u8]) -> ConnectLine {
    let Ok(line) = std::str::from_utf8(line) else { return ConnectLine::Invalid };
    let line = line.strip_suffix('\r').unwrap_or(line);
    match line.strip_prefix("CONNECT ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(port)) => ConnectLine::Port(port),
        _ => ConnectLine::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, State::Established, 1, 2), b)
    }

    #[test]
    fn connect_line_parsing() {
        assert!(matches!(parse_connect(b"CONNECT 52"), ConnectLine::Port(52)));
        assert!(matches!(parse_connect(b"CONNECT 4294967295\r"), ConnectLine::Port(u32::MAX)));
        for bad in [&b"CONNECT"[..], b"CONNECT x", b"connect 5", b"CONNECT 4294967296", b"\xff"] {
            assert!(matches!(parse_connect(bad), ConnectLine::Invalid));
        }
    }

    #[test]
    fn credit_never_exceeds_what_the_guest_advertised() {
        let (mut c, _peer) = conn();
        assert_eq!(c.peer_credit(), 0);
        assert_eq!(c.read_room(), 0);
        c.peer_buf_alloc = 1000;
        c.tx_cnt = 600;
        c.peer_fwd_cnt = 100;
        assert_eq!(c.peer_credit(), 500);
        c.to_guest.extend([0u8; 200]);
        assert_eq!(c.read_room(), 300);
        // A lying fwd_cnt (ahead of what was sent) gives no credit.
        c.peer_fwd_cnt = 700;
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.tx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 990);
    }

    #[test]
    fn read_ahead_is_capped() {
        let (mut c, mut peer) = conn();
        c.peer_buf_alloc = u32::MAX;
        peer.set_nonblocking(true).unwrap();
        let mut sent = 0;
        while sent < TO_GUEST_CAP * 2 {
            match peer.write(&[7u8; 4096]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(sent >= TO_GUEST_CAP, "{sent}");
        let mut scratch = vec![0u8; TO_GUEST_CAP * 4];
        for _ in 0..4 {
            c.read_host(&mut scratch).unwrap();
        }
        assert_eq!(c.to_guest.len(), TO_GUEST_CAP);
        assert!(!c.interest().contains(EventSet::IN));
    }
}
