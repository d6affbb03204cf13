//! 16550A UART (COM1).
//!
//! The register model is in `uart.rs` (why not vm-superio's is said there). Guest output goes
//! to a `Box<dyn Write + Send>`; host input is queued with [`Serial::enqueue_input`] (by the
//! console thread). It waits in a host-side queue until the guest's driver has the port open
//! (receive interrupt enabled), then enters the 64-byte FIFO as the guest drains it: what a
//! user types or pipes in before the guest is ready is not lost to the FIFO clears and
//! discarding reads of the driver's start-up. Interrupts are edge pulses on the ISA line
//! (IRQ 4 for COM1).

mod persist;
mod uart;
pub use persist::SerialHost;

use std::collections::VecDeque;
use std::io::Write;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{BusDevice, IrqLine};
use uart::{Uart, FIFO_SIZE, IER, IER_ERBFI, LCR_DLAB, LSR, LSR_ERRORS, RBR};

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ (IOAPIC input / PIC line).
pub const COM1_IRQ: u32 = 4;
/// Length of the UART's port range.
pub const SERIAL_PORT_LEN: u16 = 8;

/// Errors restoring a serial device.
#[derive(Debug, Error)]
pub enum SerialError {
    /// The saved state holds more input than the FIFO.
    #[error("serial state holds {len} pending input bytes, the FIFO holds {max}")]
    FifoOverflow { len: usize, max: usize },
    /// The saved state holds more host input than the queue takes.
    #[error("serial state holds {len} queued input bytes, at most {max} may wait")]
    PendingOverflow { len: usize, max: usize },
}

/// Register state of the UART. The field set is the one vm-superio's `SerialState` had (older
/// snapshots restore), plus FCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// The THR-empty interrupt latch: 0x02 when pending, else 0x01 (the other sources follow
    /// from LSR, the FIFO and MSR; vm-superio's bit mask had THRE in the same bit).
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register (its error bits are kept until the guest reads it).
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register (its delta bits are kept until the guest reads it).
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
    /// Host input not yet in the FIFO (waiting for the guest to open the port or drain it).
    #[serde(default)]
    pub pending_input: Vec<u8>,
    /// FIFO control register (enable and receive trigger level). States from before it was
    /// kept had FIFOs on (vm-superio always reported them), trigger level 1.
    #[serde(default = "fifo_on")]
    pub fifo_control: u8,
}

fn fifo_on() -> u8 {
    0x01
}

impl Default for SerialState {
    /// The reset state.
    fn default() -> Self {
        SerialState {
            baud_divisor_low: uart::DEFAULT_DIVISOR_LOW,
            baud_divisor_high: 0,
            interrupt_enable: 0,
            interrupt_identification: 0x01,
            line_control: uart::DEFAULT_LCR,
            line_status: 0x60,
            modem_control: uart::DEFAULT_MCR,
            modem_status: 0xb0,
            scratch: 0,
            in_buffer: Vec::new(),
            pending_input: Vec::new(),
            fifo_control: 0,
        }
    }
}

/// Host input held before it enters the FIFO, at most (a paste or a piped script fits; beyond
/// it [`Serial::enqueue_input`] takes nothing until the guest reads).
pub const PENDING_INPUT_MAX: usize = 1 << 20;

/// Reads of LSR in a row, with the receive interrupt off and no other access to the UART in
/// between, after which the guest is taken to poll for input (a driver without interrupts) and
/// input is let in. Linux never does that: it reads LSR once per character it prints, between
/// THR writes, and its port start-up reads mix LSR with RBR, IIR and MSR (the RBR reads throw
/// away what the FIFO holds, so input let in before them would be lost).
const POLLING_READS: u32 = 64;

/// A 16550A UART. Insert on the PIO bus at [`COM1_PORT`], length [`SERIAL_PORT_LEN`].
pub struct Serial {
    uart: Uart,
    /// Host input not yet in the FIFO.
    pending: VecDeque<u8>,
    /// Consecutive LSR reads with the receive interrupt off and no other access in between
    /// (see [`POLLING_READS`]).
    lsr_polls: u32,
}

impl Serial {
    /// A UART in reset state raising `irq`, writing guest output to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Serial { uart: Uart::new(irq, out), pending: VecDeque::new(), lsr_polls: 0 }
    }

    /// Restores a UART from [`Serial::state`].
    pub fn from_state(
        state: &SerialState,
        irq: IrqLine,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialError::FifoOverflow { len: state.in_buffer.len(), max: FIFO_SIZE });
        }
        if state.pending_input.len() > PENDING_INPUT_MAX {
            return Err(SerialError::PendingOverflow {
                len: state.pending_input.len(),
                max: PENDING_INPUT_MAX,
            });
        }
        let mut uart = Uart::new(irq, out);
        uart.dll = state.baud_divisor_low;
        uart.dlm = state.baud_divisor_high;
        uart.ier = state.interrupt_enable & 0x0f;
        uart.lcr = state.line_control;
        uart.mcr = state.modem_control & 0x1f;
        uart.fcr = uart::fcr_value(state.fifo_control);
        uart.scr = state.scratch;
        uart.lsr_errors = state.line_status & LSR_ERRORS;
        uart.msr_deltas = state.modem_status & 0x0f;
        uart.thre_pending = state.interrupt_identification & 0x03 == 0x02;
        uart.rx = state.in_buffer.iter().copied().collect();
        Ok(Serial {
            uart: uart.restored(),
            pending: state.pending_input.iter().copied().collect(),
            lsr_polls: 0,
        })
    }

    /// The register state, for snapshots.
    pub fn state(&self) -> SerialState {
        let u = &self.uart;
        SerialState {
            baud_divisor_low: u.dll,
            baud_divisor_high: u.dlm,
            interrupt_enable: u.ier,
            interrupt_identification: if u.thre_pending { 0x02 } else { 0x01 },
            line_control: u.lcr,
            line_status: u.line_status(),
            modem_control: u.mcr,
            modem_status: u.modem_status(),
            scratch: u.scr,
            in_buffer: u.rx.iter().copied().collect(),
            pending_input: self.pending.iter().copied().collect(),
            fifo_control: u.fcr,
        }
    }

    /// Queues host input for the guest; returns how many bytes were taken (all of them unless
    /// [`PENDING_INPUT_MAX`] bytes already wait: the rest must be offered again later). Bytes
    /// enter the FIFO, raising the receive interrupt, once the guest has enabled it.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(PENDING_INPUT_MAX.saturating_sub(self.pending.len()));
        self.pending.extend(&bytes[..n]);
        self.pump();
        n
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Host input bytes not yet in the FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    /// Moves pending input into the FIFO while the guest has the receive interrupt on, or
    /// polls LSR for input without it. Linux turns the interrupt on only once the port is open
    /// (after the start-up reads that discard what the FIFO holds) and off when the port is
    /// closed. Called on host input and on guest accesses (see `read`).
    fn pump(&mut self) {
        if self.pending.is_empty() || (self.uart.ier & IER_ERBFI == 0 && self.lsr_polls < POLLING_READS) {
            return;
        }
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room).collect();
        let taken = self.uart.receive(&chunk);
        // Not taken (loopback mode): put back in front, in order.
        for &b in chunk[taken..].iter().rev() {
            self.pending.push_front(b);
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset @ 0..=7)) = (data.first_mut(), u8::try_from(offset)) {
            // Pending input enters the FIFO on any access but to IER: Linux's port probe writes
            // a test pattern with the receive bit to IER, reads it back and restores IER, and
            // input let in then would be thrown away by the driver's start-up. Opening the port
            // sets IER and then writes LCR, the divisor, FCR and MCR, which lets input in.
            if offset == LSR && self.uart.ier & IER_ERBFI == 0 {
                self.lsr_polls = self.lsr_polls.saturating_add(1);
                if self.lsr_polls == POLLING_READS && !self.pending.is_empty() {
                    tracing::debug!("serial: the guest polls LSR with interrupts off; letting input in");
                }
            } else {
                self.lsr_polls = 0;
            }
            if offset != IER {
                self.pump();
            }
            *first = self.uart.read(offset);
            if offset == RBR && self.uart.lcr & LCR_DLAB == 0 {
                self.pump();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset @ 0..=7)) = (data.first(), u8::try_from(offset)) {
            self.lsr_polls = 0;
            // An output error loses the byte; the guest still sees THR empty, like a real UART
            // with nothing attached.
            let _ = self.uart.write(offset, value);
            // Input a FIFO clear removed goes back in front of the queue.
            for b in self.uart.take_cleared().into_iter().rev() {
                self.pending.push_front(b);
            }
            if offset != IER {
                self.pump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::test_util::RecordingIrqChip;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf, Arc<RecordingIrqChip>) {
        let chip = Arc::new(RecordingIrqChip::default());
        let out = SharedBuf::default();
        (Serial::new(IrqLine::new(chip.clone(), COM1_IRQ), Box::new(out.clone())), out, chip)
    }

    #[test]
    fn output_reaches_the_writer() {
        let (mut s, out, _) = serial();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THR and transmitter empty");
    }

    #[test]
    fn input_raises_the_interrupt_and_is_read_back() {
        let (mut s, _, chip) = serial();
        s.write(1, &[0x01]); // IER: received data available
        let before = chip.pulses(COM1_IRQ);
        assert_eq!(s.enqueue_input(b"ok"), 2);
        assert!(chip.pulses(COM1_IRQ) > before);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'o');
        s.read(0, &mut b);
        assert_eq!(b[0], b'k');
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
    }

    fn lsr(s: &mut Serial) -> u8 {
        let mut b = [0u8];
        s.read(5, &mut b);
        b[0]
    }

    /// Reads the data register while LSR says data is ready.
    fn drain(s: &mut Serial) -> Vec<u8> {
        let mut got = Vec::new();
        while lsr(s) & 1 != 0 {
            let mut b = [0u8];
            s.read(0, &mut b);
            got.push(b[0]);
        }
        got
    }

    #[test]
    fn input_waits_for_the_guest_to_open_the_port() {
        let (mut s, _, chip) = serial();
        // Typed (or piped) before the guest's driver is up: held back, nothing in the FIFO.
        assert_eq!(s.enqueue_input(b"echo hi\n"), 8);
        assert_eq!(lsr(&mut s) & 1, 0);
        assert_eq!(s.fifo_capacity(), 64);
        // Linux's port probe: IER test pattern with the receive bit, read back, restored.
        let before = chip.pulses(COM1_IRQ);
        s.write(1, &[0x0f]);
        let mut ier = [0u8];
        s.read(1, &mut ier);
        assert_eq!(ier[0], 0x0f);
        s.write(1, &[0x00]);
        // The driver's start-up reads that discard what the FIFO holds.
        for off in [5u64, 0, 2, 6] {
            s.read(off, &mut [0u8]);
        }
        assert_eq!(s.pending_input(), 8, "nothing was let in before the port was opened");
        // Opening the port: IER receive interrupts on, then LCR.
        s.write(1, &[0x05]);
        s.write(3, &[0x03]);
        assert!(chip.pulses(COM1_IRQ) > before, "the receive interrupt fires");
        assert_eq!(drain(&mut s), b"echo hi\n");
        assert_eq!(s.pending_input(), 0);
    }

    #[test]
    fn a_guest_polling_without_interrupts_gets_input() {
        let (mut s, out, _) = serial();
        assert_eq!(s.enqueue_input(b"go"), 2);
        // Printing polls LSR once per character: not taken for waiting on input.
        let text = b"boot messages, boot messages, boot messages, boot messages, boot messages\n";
        for b in text {
            assert_eq!(lsr(&mut s) & 1, 0);
            s.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), text);
        // Polling LSR for data, interrupts off: input arrives.
        let polls = (0..1000).take_while(|_| lsr(&mut s) & 1 == 0).count();
        assert!(polls < 100, "polled {polls} times");
        assert_eq!(drain(&mut s), b"go");
    }

    #[test]
    fn lsr_reads_mixed_with_other_accesses_are_not_polling() {
        let (mut s, _, _) = serial();
        assert_eq!(s.enqueue_input(b"typed ahead\n"), 12);
        // A quiet boot: hundreds of LSR reads, never 64 in a row without another access (the
        // probe's and start-up's reads of RBR, IIR and MSR, the console's IER save/restore).
        for round in 0..200 {
            for _ in 0..(round % 60) {
                assert_eq!(lsr(&mut s) & 1, 0);
            }
            s.read([0u64, 2, 6][round % 3], &mut [0u8]);
            s.write(3, &[0x03]);
        }
        assert_eq!(s.pending_input(), 12, "input was let in before the port was opened");
        s.write(1, &[0x01]);
        s.write(3, &[0x03]);
        assert_eq!(drain(&mut s), b"typed ahead\n");
    }

    #[test]
    fn a_long_paste_arrives_whole_and_in_order() {
        let (mut s, _, _) = serial();
        s.write(1, &[0x01]);
        let paste: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(s.enqueue_input(&paste), paste.len());
        assert_eq!(s.fifo_capacity(), 0, "the FIFO is full, the rest waits");
        assert_eq!(drain(&mut s), paste);
        // Over the limit: the excess is refused (offered again by the caller), not lost.
        let big = vec![b'x'; PENDING_INPUT_MAX + 10];
        let taken = s.enqueue_input(&big);
        assert_eq!(taken, PENDING_INPUT_MAX);
        // 64 of them went on into the FIFO: that much more is taken, then nothing.
        let more = (0..100).take_while(|_| s.enqueue_input(b"y") == 1).count();
        assert_eq!(more, 64);
        assert_eq!(s.fifo_capacity() + s.pending_input(), PENDING_INPUT_MAX);
        s.read(0, &mut [0u8]);
        assert_eq!(s.enqueue_input(b"y"), 1, "room again once the guest read a byte");
    }

    #[test]
    fn fifo_and_queued_input_survive_a_state_round_trip() {
        let (mut s, _, chip) = serial();
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(&[b'x'; 100]), 100);
        assert_eq!(s.fifo_capacity(), 0);
        s.write(7, &[0x5a]);
        let state = s.state();
        assert_eq!((state.in_buffer.len(), state.pending_input.len()), (64, 36));
        let json = serde_json::to_string(&state).unwrap();
        let back: SerialState = serde_json::from_str(&json).unwrap();
        let mut restored =
            Serial::from_state(&back, IrqLine::new(chip.clone(), 4), Box::new(std::io::sink())).unwrap();
        assert_eq!(restored.state(), state);
        assert_eq!(drain(&mut restored), vec![b'x'; 100]);
        let bad = SerialState { in_buffer: vec![0; 65], ..state.clone() };
        assert!(Serial::from_state(&bad, IrqLine::new(chip.clone(), 4), Box::new(std::io::sink())).is_err());
        let bad = SerialState { pending_input: vec![0; PENDING_INPUT_MAX + 1], ..state };
        assert!(Serial::from_state(&bad, IrqLine::new(chip, 4), Box::new(std::io::sink())).is_err());
    }

    #[test]
    fn odd_offsets_and_widths_do_not_panic() {
        let (mut s, _, _) = serial();
        for offset in [0u64, 7, 8, 255, 256, u64::MAX] {
            for len in [0usize, 1, 2, 4, 8] {
                let mut buf = vec![0xaa; len];
                s.read(offset, &mut buf);
                if offset > 7 {
                    assert!(buf.iter().all(|&b| b == 0));
                }
                s.write(offset, &buf);
            }
        }
    }
}

#[cfg(test)]
mod conformance;
