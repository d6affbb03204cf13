//! The vsock worker: transmit queue -> muxer -> host sockets, muxer -> receive queue.

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::muxer::{Muxer, MAX_PAYLOAD};
use super::packet::{Header, HDR_LEN, OP_RW};
use crate::queue::{Drained, BUDGET};
use crate::worker::QueueHandler;
use crate::{GuestMemory, Interrupt};

pub(crate) struct VsockHandler {
    pub(crate) mem: GuestMemory,
    pub(crate) interrupt: Arc<Interrupt>,
    pub(crate) rx: Queue,
    pub(crate) tx: Queue,
    /// The event queue: only used for TRANSPORT_RESET after a restore, which vmr does not do
    /// yet; its buffers stay with the device.
    pub(crate) _event: Queue,
    pub(crate) muxer: Muxer,
    pub(crate) buf: Vec<u8>,
    pub(crate) broken: bool,
    pub(crate) metrics: Arc<crate::metrics::VsockMetrics>,
}

/// Reads one packet from a transmit chain and hands it to the muxer. Malformed packets (short
/// header, a `len` beyond the chain or above [`MAX_PAYLOAD`]) are dropped.
pub(crate) fn transmit_chain(
    mem: &GuestMemory,
    muxer: &mut Muxer,
    buf: &mut Vec<u8>,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let Ok(mut reader) = Reader::<()>::new(mem, chain) else { return 0 };
    let mut raw = [0u8; HDR_LEN];
    if reader.read_exact(&mut raw).is_err() {
        return 0;
    }
    let hdr = Header::from_bytes(&raw);
    let len = if hdr.op == OP_RW { hdr.len as usize } else { 0 };
    if len > MAX_PAYLOAD || len > reader.available_bytes() {
        tracing::debug!(
            "vsock: dropped packet with len {} (chain has {})",
            hdr.len,
            reader.available_bytes()
        );
        return 0;
    }
    buf.resize(len, 0);
    if reader.read_exact(buf).is_err() {
        return 0;
    }
    muxer.handle_guest(&hdr, buf);
    0
}

/// Writes the muxer's next packet into a receive chain. None: nothing to send (the chain is
/// untouched); Some(bytes written) otherwise (0 for a chain too small for a header).
pub(crate) fn receive_chain(
    mem: &GuestMemory,
    muxer: &mut Muxer,
    buf: &mut Vec<u8>,
    chain: DescriptorChain<&GuestMemory>,
) -> Option<u32> {
    let Ok(mut writer) = Writer::<()>::new(mem, chain) else { return Some(0) };
    let room = writer.available_bytes();
    if room < HDR_LEN {
        return Some(0);
    }
    let hdr = muxer.next_rx(room - HDR_LEN, buf)?;
    if writer.write_all(&hdr.to_bytes()).is_err() || writer.write_all(buf).is_err() {
        return Some(0);
    }
    Some((HDR_LEN + buf.len()) as u32)
}

impl VsockHandler {
    fn fail(&mut self) {
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Serves the transmit queue unless replies for the guest are piling up. True: call again.
    fn transmit(&mut self) -> bool {
        if !self.muxer.can_take_tx(BUDGET) {
            return false; // resumed by `receive` once the guest takes the replies
        }
        let (mem, muxer, buf, metrics) = (&self.mem, &mut self.muxer, &mut self.buf, &self.metrics);
        match crate::queue::drain(&mut self.tx, mem, &self.interrupt, |chain| {
            metrics.tx_packets_count.inc();
            transmit_chain(mem, muxer, buf, chain)
        }) {
            Drained::Idle | Drained::Throttled => false,
            Drained::More => true,
            Drained::Broken => {
                self.broken = true;
                false
            }
        }
    }

    /// Fills receive buffers with what the muxer has for the guest. True: call again.
    fn receive(&mut self) -> bool {
        let mut used_any = false;
        let mut more = false;
        for turn in 0.. {
            if !self.muxer.has_rx() {
                break;
            }
            if turn == BUDGET {
                more = true;
                break;
            }
            let chain = match self.rx.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    self.fail();
                    return false;
                }
            };
            let Some(chain) = chain else {
                match self.rx.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(_) => {
                        self.fail();
                        return false;
                    }
                }
            };
            let head = chain.head_index();
            let Some(len) = receive_chain(&self.mem, &mut self.muxer, &mut self.buf, chain) else {
                self.rx.go_to_previous_position();
                break;
            };
            if self.rx.add_used(&self.mem, head, len).is_err() {
                self.fail();
                return false;
            }
            self.metrics.rx_packets_count.inc();
            self.metrics.rx_bytes_count.add(u64::from(len));
            used_any = true;
        }
        if used_any && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        more
    }

    fn run(&mut self, poll_host: bool) -> bool {
        if self.broken {
            return false;
        }
        let mut more = poll_host && self.muxer.poll_host();
        more |= self.transmit();
        more |= !self.broken && self.receive();
        // Replies drained: the transmit queue may have been held back.
        more |= !self.broken && self.muxer.can_take_tx(BUDGET) && self.transmit();
        more && !self.broken
    }
}

impl QueueHandler for VsockHandler {
    fn queue_states(&self, out: &mut Vec<virtio_queue::QueueState>) {
        out.clear();
        out.extend([self.rx.state(), self.tx.state(), self._event.state()]);
    }

    fn process_queue(&mut self, _index: usize) -> bool {
        self.run(false)
    }

    fn process_fd(&mut self, _index: usize) -> bool {
        self.run(true)
    }
}
