//! The net worker: tap -> receive queue, transmit queue -> tap.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use crate::metrics::NetMetrics;
use crate::rate_limiter::RateLimiter;

use super::tap::{Tap, VNET_HDR_LEN};
use crate::queue::{Drained, BUDGET};
use crate::worker::QueueHandler;
use crate::{GuestMemory, Interrupt};

const RX: usize = 0;
const TX: usize = 1;
/// Largest frame with its header: a 64 KiB TSO frame plus Ethernet and vnet headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 65536 + 14;

pub(crate) struct NetHandler {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    rx: Queue,
    tx: Queue,
    tap: Tap,
    /// A frame read from the tap that no receive buffer took yet.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    rx_limiter: Arc<RateLimiter>,
    tx_limiter: Arc<RateLimiter>,
    metrics: Arc<NetMetrics>,
    broken: bool,
}

/// Extra fds the worker polls, in this order (see [`NetHandler::process_fd`]).
pub(crate) const FD_TAP: usize = 0;
pub(crate) const FD_RX_LIMITER: usize = 1;
pub(crate) const FD_TX_LIMITER: usize = 2;

impl NetHandler {
    pub(crate) fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        (rx, tx): (Queue, Queue),
        tap: Tap,
        (rx_limiter, tx_limiter): (Arc<RateLimiter>, Arc<RateLimiter>),
        metrics: Arc<NetMetrics>,
    ) -> Self {
        NetHandler {
            metrics,
            rx_limiter,
            tx_limiter,
            mem,
            interrupt,
            rx,
            tx,
            tap,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            broken: false,
        }
    }

    pub(crate) fn into_tap(self) -> Tap {
        self.tap
    }

    fn fail(&mut self) {
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Moves frames from the tap into receive buffers until the tap is empty, the guest has no
    /// buffer left, or the budget is spent (then returns true: call again).
    fn receive(&mut self) -> bool {
        let mut used_any = false;
        let mut more = false;
        for turn in 0.. {
            if turn == BUDGET {
                more = true;
                break;
            }
            let len = match self.pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.metrics.rx_fails.inc();
                        tracing::warn!("virtio-net: tap read failed: {e}");
                        break;
                    }
                },
            };
            self.pending = Some(len);
            let chain = match self.rx.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    self.fail();
                    return false;
                }
            };
            let Some(chain) = chain else {
                // No buffer: wait for the guest's next receive-queue notification.
                match self.rx.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(_) => {
                        self.fail();
                        return false;
                    }
                }
            };
            // Over the receive limit: the frame waits (in `pending`, the rest in the tap) until
            // the limiter's timer fires.
            if !self.rx_limiter.consume(len as u64) {
                self.metrics.rx_rate_limiter_throttled.inc();
                self.rx.go_to_previous_position();
                break;
            }
            let head = chain.head_index();
            let written = match Writer::<()>::new(&self.mem, chain) {
                Ok(mut w) if w.available_bytes() >= len => {
                    w.write_all(&self.rx_buf[..len]).map_or(0, |()| len as u32)
                }
                // A buffer too small (or unwritable) for the frame: the frame is dropped.
                _ => 0,
            };
            if written == 0 {
                self.metrics.rx_dropped.inc();
            } else {
                self.metrics.rx_packets_count.inc();
                self.metrics.rx_bytes_count.add(u64::from(written));
            }
            self.pending = None;
            if self.rx.add_used(&self.mem, head, written).is_err() {
                self.fail();
                return false;
            }
            used_any = true;
        }
        if used_any && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        more
    }

    /// Sends one transmit chain to the tap; the used length is 0 (nothing written to the guest).
    /// `None` (the chain stays queued) when over the transmit limit.
    fn transmit_chain(
        mem: &GuestMemory,
        tap: &mut Tap,
        buf: &mut [u8],
        (limiter, metrics): (&RateLimiter, &NetMetrics),
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> Option<u32> {
        let Ok(mut reader) = Reader::<()>::new(mem, chain) else {
            metrics.tx_malformed_frames.inc();
            return Some(0);
        };
        let len = reader.available_bytes();
        if !limiter.consume(len as u64) {
            metrics.tx_rate_limiter_throttled.inc();
            return None;
        }
        Self::send(tap, buf, &mut reader, len, metrics);
        Some(0)
    }

    fn send(tap: &mut Tap, buf: &mut [u8], reader: &mut Reader<'_>, len: usize, metrics: &NetMetrics) {
        if !(VNET_HDR_LEN..=buf.len()).contains(&len) || reader.read_exact(&mut buf[..len]).is_err() {
            metrics.tx_malformed_frames.inc();
            return;
        }
        match tap.write_frame(&buf[..len]) {
            Ok(_) => {
                metrics.tx_packets_count.inc();
                metrics.tx_bytes_count.add(len as u64);
            }
            Err(e) => {
                // A full tap queue or a frame the kernel rejects: dropped, like a lossy link.
                metrics.tx_dropped.inc();
                tracing::debug!("virtio-net: tap write failed: {e}");
            }
        }
    }

    fn transmit(&mut self) -> bool {
        let (mem, tap, buf) = (&self.mem, &mut self.tap, &mut self.tx_buf);
        let limits = (&*self.tx_limiter, &*self.metrics);
        let serve = |chain: virtio_queue::DescriptorChain<&GuestMemory>| {
            Self::transmit_chain(mem, tap, buf, limits, chain)
        };
        match crate::queue::drain_lingering(&mut self.tx, mem, &self.interrupt, Duration::ZERO, serve) {
            Drained::Idle | Drained::Throttled => false,
            Drained::More => true,
            Drained::Broken => {
                self.broken = true;
                false
            }
        }
    }
}

impl QueueHandler for NetHandler {
    fn queue_states(&self, out: &mut Vec<virtio_queue::QueueState>) {
        out.clear();
        out.extend([self.rx.state(), self.tx.state()]);
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            _ if self.broken => false,
            RX => self.receive(),
            TX => self.transmit(),
            _ => false,
        }
    }

    fn process_fd(&mut self, index: usize) -> bool {
        match index {
            FD_TAP => {}
            FD_RX_LIMITER => self.rx_limiter.timer_fired(),
            FD_TX_LIMITER => {
                self.tx_limiter.timer_fired();
                return !self.broken && self.transmit();
            }
            _ => {}
        }
        !self.broken && self.receive()
    }
}
