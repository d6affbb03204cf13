//! 16550A UART (COM1) on top of vm-superio.
//!
//! Guest output goes to a `Box<dyn Write + Send>`; host input is queued with
//! [`Serial::enqueue_input`] (by the console thread), which raises the interrupt if the guest
//! enabled it. Interrupts are edge pulses on the ISA line (IRQ 4 for COM1).

use std::convert::Infallible;
use std::io::Write;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_superio::serial::{NoEvents, SerialState as SuperioState};
use vm_superio::Trigger;

use crate::{BusDevice, IrqLine};

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
}

/// Raises the UART's interrupt line.
struct IrqTrigger(IrqLine);

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.pulse();
        Ok(())
    }
}

/// Register state of the UART (a serde mirror of vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SuperioState> for SerialState {
    fn from(s: SuperioState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for SuperioState {
    fn from(s: &SerialState) -> Self {
        SuperioState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

type Uart = vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART. Insert on the PIO bus at [`COM1_PORT`], length [`SERIAL_PORT_LEN`].
pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// A UART in reset state raising `irq`, writing guest output to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Serial { uart: vm_superio::Serial::new(IrqTrigger(irq), out) }
    }

    /// Restores a UART from [`Serial::state`].
    pub fn from_state(
        state: &SerialState,
        irq: IrqLine,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        let max = 64;
        if state.in_buffer.len() > max {
            return Err(SerialError::FifoOverflow { len: state.in_buffer.len(), max });
        }
        let uart = vm_superio::Serial::from_state(&state.into(), IrqTrigger(irq), NoEvents, out)
            .map_err(|_| SerialError::FifoOverflow { len: state.in_buffer.len(), max })?;
        Ok(Serial { uart })
    }

    /// The register state, for snapshots.
    pub fn state(&self) -> SerialState {
        self.uart.state().into()
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO (the rest must
    /// be offered again later). Raises the receive interrupt if the guest enabled it.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset @ 0..=7)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset @ 0..=7)) = (data.first(), u8::try_from(offset)) {
            // An output error loses the byte; the guest still sees THR empty, like a real UART
            // with nothing attached.
            let _ = self.uart.write(offset, value);
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

    #[test]
    fn fifo_limits_input_and_state_round_trips() {
        let (mut s, _, chip) = serial();
        assert_eq!(s.enqueue_input(&[b'x'; 100]), 64);
        assert_eq!(s.enqueue_input(b"y"), 0);
        s.write(7, &[0x5a]);
        let state = s.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: SerialState = serde_json::from_str(&json).unwrap();
        let restored =
            Serial::from_state(&back, IrqLine::new(chip.clone(), 4), Box::new(std::io::sink())).unwrap();
        assert_eq!(restored.state(), state);
        assert_eq!(restored.fifo_capacity(), 0);
        let bad = SerialState { in_buffer: vec![0; 65], ..state };
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
