//! 16550A interrupt conformance: register sequences a driver (or a hostile guest) performs and
//! what IIR, LSR, MSR and the interrupt line must show after each (TI PC16550D datasheet,
//! tables 4 and 5: priorities, set and reset conditions of each interrupt source).

use std::sync::Arc;

use super::*;
use crate::test_util::RecordingIrqChip;

// Register offsets (as bus offsets; they shadow the u8 ones of the parent module).
const RBR: u64 = 0;
const THR: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;

struct Uart {
    s: Serial,
    chip: Arc<RecordingIrqChip>,
}

impl Uart {
    /// A UART with FIFOs enabled (receive trigger level 1), as after Linux's probe.
    fn new() -> Uart {
        let chip = Arc::new(RecordingIrqChip::default());
        let s = Serial::new(IrqLine::new(chip.clone(), COM1_IRQ), Box::new(std::io::sink()));
        let mut u = Uart { s, chip };
        u.wr(FCR, 0x01);
        u
    }
    fn rd(&mut self, offset: u64) -> u8 {
        let mut b = [0u8];
        self.s.read(offset, &mut b);
        b[0]
    }
    fn wr(&mut self, offset: u64, v: u8) {
        self.s.write(offset, &[v]);
    }
    fn pulses(&self) -> usize {
        self.chip.pulses(COM1_IRQ)
    }
}

#[test]
fn setting_etbei_with_thr_empty_raises_thre() {
    let mut u = Uart::new();
    assert_eq!(u.rd(IIR), 0xc1);
    let before = u.pulses();
    u.wr(IER, 0x02);
    assert_eq!(u.pulses(), before + 1, "the interrupt line rose");
    assert_eq!(u.rd(IIR), 0xc2);
    // Reading IIR while THRE is the reported source clears it.
    assert_eq!(u.rd(IIR), 0xc1);
    // Writing IER again without a 0 -> 1 change of ETBEI does not bring it back.
    u.wr(IER, 0x02);
    assert_eq!(u.rd(IIR), 0xc1);
    // Off and on again: it does (Linux's THRE test at port start-up, and Windows, rely on it).
    u.wr(IER, 0x00);
    u.wr(IER, 0x02);
    assert_eq!(u.pulses(), before + 2);
    assert_eq!(u.rd(IIR), 0xc2);
}

/// Linux's console masks IER while it prints and restores it after: a THRE interrupt pending
/// at that moment must show again, with a new edge on the line.
#[test]
fn masking_ier_hides_pending_sources_and_unmasking_raises_them_again() {
    let mut u = Uart::new();
    u.wr(IER, 0x02);
    let before = u.pulses();
    u.wr(IER, 0x00);
    assert_eq!(u.rd(IIR), 0xc1, "a disabled source is not reported");
    for b in b"console\n" {
        u.wr(THR, *b);
    }
    assert_eq!(u.pulses(), before, "no interrupt while masked");
    u.wr(IER, 0x02);
    assert_eq!(u.pulses(), before + 1);
    assert_eq!(u.rd(IIR), 0xc2);
    // Received data behaves the same.
    u.wr(IER, 0x01);
    u.s.enqueue_input(b"x");
    u.wr(IER, 0x00);
    assert_eq!(u.rd(IIR), 0xc1);
    let before = u.pulses();
    u.wr(IER, 0x01);
    assert_eq!(u.pulses(), before + 1);
    assert_eq!(u.rd(IIR), 0xc4);
}

#[test]
fn writing_thr_clears_thre_and_the_empty_transmitter_raises_it_again() {
    let mut u = Uart::new();
    u.wr(IER, 0x02);
    assert_eq!(u.rd(IIR), 0xc2);
    let before = u.pulses();
    u.wr(THR, b'a');
    assert_eq!(u.pulses(), before + 1, "a new THRE edge after the byte went out");
    assert_eq!(u.rd(IIR), 0xc2);
    assert_eq!(u.rd(LSR) & 0x60, 0x60);
}

#[test]
fn received_data_outranks_thre_and_reading_iir_keeps_it() {
    let mut u = Uart::new();
    u.wr(IER, 0x03);
    assert_eq!(u.s.enqueue_input(b"ab"), 2);
    // Both pending: the higher priority is reported, and reading IIR does not clear it (nor
    // THRE, which was not the reported source).
    assert_eq!(u.rd(IIR), 0xc4);
    assert_eq!(u.rd(IIR), 0xc4);
    assert_eq!(u.rd(RBR), b'a');
    assert_eq!(u.rd(IIR), 0xc4, "a byte is still in the FIFO");
    assert_eq!(u.rd(RBR), b'b');
    assert_eq!(u.rd(IIR), 0xc2, "THRE is next");
    assert_eq!(u.rd(IIR), 0xc1);
}

#[test]
fn below_the_trigger_level_received_data_is_a_character_timeout() {
    let mut u = Uart::new();
    u.wr(FCR, 0x81); // trigger level 8
    u.wr(IER, 0x01);
    u.s.enqueue_input(b"abc");
    assert_eq!(u.rd(IIR), 0xcc);
    u.s.enqueue_input(b"defgh");
    assert_eq!(u.rd(IIR), 0xc4, "8 bytes reach the trigger level");
    assert_eq!(u.rd(RBR), b'a');
    assert_eq!(u.rd(IIR), 0xcc);
    while u.rd(LSR) & 1 != 0 {
        u.rd(RBR);
    }
    assert_eq!(u.rd(IIR), 0xc1);
}

#[test]
fn overrun_is_a_line_status_interrupt_cleared_by_reading_lsr() {
    let mut u = Uart::new();
    u.wr(MCR, 0x10); // loopback: THR feeds the receiver
    u.wr(IER, 0x05);
    for i in 0..65u8 {
        u.wr(THR, i);
    }
    assert_eq!(u.rd(IIR), 0xc6, "line status outranks received data");
    let lsr = u.rd(LSR);
    assert_eq!(lsr & 0x03, 0x03, "data ready and overrun");
    assert_eq!(u.rd(LSR) & 0x02, 0, "reading LSR clears overrun");
    assert_eq!(u.rd(IIR), 0xc4);
    assert_eq!(u.rd(RBR), 0, "the FIFO kept the first 64 bytes");
    // Without ELSI the overrun shows in LSR only.
    u.wr(IER, 0x00);
    u.wr(THR, 0xfe); // the FIFO is full again
    u.wr(THR, 0xff);
    assert_eq!(u.rd(IIR), 0xc1);
    assert_eq!(u.rd(LSR) & 0x02, 0x02);
}

#[test]
fn modem_status_changes_interrupt_last_and_reading_msr_clears_them() {
    let mut u = Uart::new();
    u.wr(MCR, 0x10); // loopback, all outputs off
    assert_eq!(u.rd(MSR) & 0xf0, 0);
    u.wr(IER, 0x0a);
    assert_eq!(u.rd(IIR), 0xc2, "THRE outranks modem status");
    u.wr(MCR, 0x11); // DTR -> DSR
    assert_eq!(u.rd(IIR), 0xc0);
    assert_eq!(u.rd(MSR), 0x22, "DSR and delta DSR");
    assert_eq!(u.rd(IIR), 0xc1);
    u.wr(MCR, 0x14); // DTR off, OUT1 (RI) on
    assert_eq!(u.rd(MSR), 0x42, "RI, delta DSR");
    u.wr(MCR, 0x10); // RI trailing edge
    assert_eq!(u.rd(MSR), 0x04);
    // Out of loopback: the lines of an attached terminal (DCD, DSR, CTS).
    u.wr(MCR, 0x0b);
    assert_eq!(u.rd(MSR) & 0xf0, 0xb0);
}

#[test]
fn fcr_controls_the_fifo_bits_and_clears_the_receiver() {
    let mut u = Uart::new();
    u.wr(FCR, 0x00);
    assert_eq!(u.rd(IIR), 0x01, "no FIFO bits with the FIFOs off");
    u.wr(FCR, 0x01);
    assert_eq!(u.rd(IIR), 0xc1);
    u.wr(IER, 0x01);
    u.s.enqueue_input(b"stale");
    assert_eq!(u.rd(LSR) & 1, 1);
    u.wr(IER, 0x00);
    u.wr(FCR, 0x03); // clear the receive FIFO
    assert_eq!(u.rd(LSR) & 1, 0);
    assert_eq!(u.rd(IIR), 0xc1);
    // Host input is not lost to the clear: it comes again once the receive interrupt is on.
    u.wr(IER, 0x01);
    u.wr(LCR, 0x03);
    let got: Vec<u8> = std::iter::from_fn(|| (u.rd(LSR) & 1 != 0).then(|| u.rd(RBR))).collect();
    assert_eq!(got, b"stale");
    // Bytes the guest sent itself in loopback mode are cleared for good.
    u.wr(MCR, 0x10);
    u.wr(THR, b'l');
    u.wr(FCR, 0x03);
    u.wr(MCR, 0x08);
    assert_eq!(u.rd(LSR) & 1, 0);
    assert_eq!(u.s.pending_input(), 0);
}

/// Linux's port start-up (6.1 `serial8250_do_startup` and `set_termios`): FIFOs cleared and
/// disabled, the discarding reads, IER with the receive interrupt, then LCR, divisor and the
/// FIFOs enabled again, which clears them. Input typed before all this arrives whole.
#[test]
fn input_typed_ahead_survives_linux_port_start_up() {
    let mut u = Uart::new();
    assert_eq!(u.s.enqueue_input(b"echo early\n"), 11);
    u.wr(FCR, 0x01);
    u.wr(FCR, 0x07);
    u.wr(FCR, 0x00);
    for off in [LSR, RBR, IIR, MSR] {
        u.rd(off);
    }
    u.wr(IER, 0x05);
    u.wr(LCR, 0x83);
    u.wr(RBR, 0x01);
    u.wr(IER, 0x00);
    u.wr(LCR, 0x03);
    u.wr(FCR, 0x01);
    u.wr(FCR, 0x81);
    let got: Vec<u8> = std::iter::from_fn(|| (u.rd(LSR) & 1 != 0).then(|| u.rd(RBR))).collect();
    assert_eq!(got, b"echo early\n");
}

#[test]
fn ier_under_dlab_is_the_divisor() {
    let mut u = Uart::new();
    u.wr(LCR, 0x83);
    let before = u.pulses();
    u.wr(IER, 0x02); // divisor latch high
    assert_eq!(u.pulses(), before);
    u.wr(LCR, 0x03);
    assert_eq!(u.rd(IER), 0);
    assert_eq!(u.rd(IIR), 0xc1);
    u.wr(LCR, 0x83);
    assert_eq!(u.rd(IER), 0x02);
}

#[test]
fn pending_thre_and_fifo_mode_survive_a_snapshot() {
    let mut u = Uart::new();
    u.wr(FCR, 0x81);
    u.wr(IER, 0x02);
    let state = u.s.state();
    let chip = Arc::new(RecordingIrqChip::default());
    let mut r =
        Serial::from_state(&state, IrqLine::new(chip.clone(), COM1_IRQ), Box::new(std::io::sink())).unwrap();
    assert_eq!(chip.pulses(COM1_IRQ), 1, "the restored line is raised again");
    let mut b = [0u8];
    r.read(IIR, &mut b);
    assert_eq!(b[0], 0xc2);
    assert_eq!(r.state().fifo_control, 0x81);
}
