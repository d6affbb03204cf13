//! The 16550A register model: registers, receive FIFO and the interrupt logic of the TI
//! PC16550D datasheet (tables 4 and 5).
//!
//! Why not vm-superio's `Serial` (which this replaces): its IIR is a bit mask, so received data
//! and THR empty pending together read 0x06 (receiver line status); reading IIR clears every
//! source, received data included, while data is still in the FIFO; disabling a source in IER
//! leaves it in IIR; a THRE interrupt already latched is not raised again when the guest
//! unmasks ETBEI (a driver waiting for it stalls); FCR, line-status and modem-status interrupts
//! are not modelled. Its state is private, so a wrapper cannot correct it.
//!
//! Interrupt sources, highest priority first, and what clears them:
//! - receiver line status (IIR 0x06, IER.ELSI): overrun; reading LSR;
//! - received data (0x04, IER.ERBFI) at or above the FIFO trigger level, or a character
//!   timeout (0x0c) below it (time does not pass in this model, so the timeout is immediate);
//!   reading RBR below the level / until empty;
//! - THR empty (0x02, IER.ETBEI): set when the transmitter empties (at once, in this model)
//!   and when ETBEI goes from 0 to 1; reading IIR while it is the reported source, writing THR;
//! - modem status (0x00, IER.EDSSI): a delta bit in MSR; reading MSR.
//!
//! The INTR output is the OR of the enabled pending sources. The ISA line is edge-triggered, so
//! the line is pulsed when INTR rises, and again when new received data arrives while INTR is
//! already high (a driver's handler that leaves with data still arriving gets another call).

use std::collections::VecDeque;
use std::io::Write;

use crate::IrqLine;

/// Receive FIFO depth.
pub(super) const FIFO_SIZE: usize = 64;

pub(super) const RBR: u8 = 0;
pub(super) const IER: u8 = 1;
const IIR: u8 = 2;
pub(super) const LCR: u8 = 3;
const MCR: u8 = 4;
pub(super) const LSR: u8 = 5;
const MSR: u8 = 6;
const SCR: u8 = 7;

pub(super) const IER_ERBFI: u8 = 0x01;
const IER_ETBEI: u8 = 0x02;
const IER_ELSI: u8 = 0x04;
const IER_EDSSI: u8 = 0x08;

const IIR_NONE: u8 = 0x01;
const IIR_MODEM: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_TIMEOUT: u8 = 0x0c;
const IIR_FIFO_BITS: u8 = 0xc0;

const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
/// FCR bits kept: enable, DMA mode, receive trigger level.
const FCR_KEPT: u8 = 0xc9;

pub(super) const LCR_DLAB: u8 = 0x80;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
/// Error bits of LSR (overrun, parity, framing, break): the receiver line status source.
pub(super) const LSR_ERRORS: u8 = 0x1e;
const LSR_THRE_TEMT: u8 = 0x60;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_TERI: u8 = 0x04;
/// Modem input lines of an attached terminal outside loopback: carrier, DSR and CTS on.
const MSR_LINES_ATTACHED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// Reset values.
pub(super) const DEFAULT_DIVISOR_LOW: u8 = 0x0c;
pub(super) const DEFAULT_LCR: u8 = 0x03;
pub(super) const DEFAULT_MCR: u8 = MCR_OUT2;

/// FCR as kept after writing `value`: without the enable bit the other bits cannot be set.
pub(super) fn fcr_value(value: u8) -> u8 {
    if value & FCR_ENABLE != 0 {
        value & FCR_KEPT
    } else {
        0
    }
}

/// The registers of a 16550A.
pub(super) struct Uart {
    pub(super) dll: u8,
    pub(super) dlm: u8,
    pub(super) ier: u8,
    pub(super) lcr: u8,
    pub(super) mcr: u8,
    pub(super) fcr: u8,
    pub(super) scr: u8,
    /// LSR error bits (only overrun arises here), until LSR is read.
    pub(super) lsr_errors: u8,
    /// MSR delta bits, until MSR is read.
    pub(super) msr_deltas: u8,
    /// THR-empty interrupt latched.
    pub(super) thre_pending: bool,
    pub(super) rx: VecDeque<u8>,
    /// Host input an FCR write cleared from the FIFO, for the caller to deliver again.
    cleared: Vec<u8>,
    out: Box<dyn Write + Send>,
    irq: IrqLine,
    /// INTR level last seen.
    intr: bool,
}

impl Uart {
    /// A UART in reset state.
    pub(super) fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Uart {
        Uart {
            dll: DEFAULT_DIVISOR_LOW,
            dlm: 0,
            ier: 0,
            lcr: DEFAULT_LCR,
            mcr: DEFAULT_MCR,
            fcr: 0,
            scr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            thre_pending: false,
            rx: VecDeque::new(),
            cleared: Vec::new(),
            out,
            irq,
            intr: false,
        }
    }

    /// Raises the line if a restored state has an interrupt pending.
    pub(super) fn restored(mut self) -> Uart {
        self.update_irq(false);
        self
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Receive FIFO trigger level (1 without FIFOs).
    fn trigger_level(&self) -> usize {
        if self.fcr & FCR_ENABLE == 0 {
            return 1;
        }
        [1, 4, 8, 14][usize::from(self.fcr >> 6)]
    }

    /// The highest-priority enabled pending source, as IIR bits 0-3.
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_ELSI != 0 && self.lsr_errors != 0 {
            IIR_RLS
        } else if self.ier & IER_ERBFI != 0 && !self.rx.is_empty() {
            if self.rx.len() >= self.trigger_level() {
                IIR_RDA
            } else {
                IIR_TIMEOUT
            }
        } else if self.ier & IER_ETBEI != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            IIR_MODEM
        } else {
            IIR_NONE
        }
    }

    /// Follows INTR after a change; `new_data` forces a pulse while it stays high.
    fn update_irq(&mut self, new_data: bool) {
        let id = self.interrupt_id();
        let intr = id != IIR_NONE;
        let rx_source = matches!(id, IIR_RDA | IIR_TIMEOUT);
        if intr && (!self.intr || (new_data && rx_source)) {
            self.irq.pulse();
        }
        self.intr = intr;
    }

    /// Free space in the receive FIFO.
    pub(super) fn fifo_capacity(&self) -> usize {
        FIFO_SIZE - self.rx.len()
    }

    /// Host input into the receive FIFO; returns the bytes taken (none in loopback mode, where
    /// the receiver listens to the transmitter).
    pub(super) fn receive(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let n = bytes.len().min(self.fifo_capacity());
        self.rx.extend(&bytes[..n]);
        self.update_irq(n > 0);
        n
    }

    pub(super) fn read(&mut self, offset: u8) -> u8 {
        let v = match offset {
            RBR if self.dlab() => self.dll,
            RBR => self.rx.pop_front().unwrap_or(0),
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR => {
                let id = self.interrupt_id();
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                let fifo = if self.fcr & FCR_ENABLE != 0 { IIR_FIFO_BITS } else { 0 };
                id | fifo
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
                let v = dr | self.lsr_errors | LSR_THRE_TEMT;
                self.lsr_errors = 0;
                v
            }
            MSR => {
                let v = self.modem_lines() | self.msr_deltas;
                self.msr_deltas = 0;
                v
            }
            SCR => self.scr,
            _ => 0,
        };
        self.update_irq(false);
        v
    }

    /// Returns an output error (the byte is lost; the guest still sees THR empty, like a real
    /// UART with nothing attached).
    pub(super) fn write(&mut self, offset: u8, value: u8) -> std::io::Result<()> {
        let mut result = Ok(());
        match offset {
            RBR if self.dlab() => self.dll = value,
            RBR => result = self.transmit(value),
            IER if self.dlab() => self.dlm = value,
            IER => {
                let was = self.ier;
                self.ier = value & 0x0f;
                if (was ^ self.ier) & IER_ETBEI != 0 {
                    // THR is always empty here: enabling ETBEI raises THRE, disabling drops it.
                    self.thre_pending = self.ier & IER_ETBEI != 0;
                }
            }
            IIR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => {
                let before = self.modem_lines();
                self.mcr = value & 0x1f;
                self.note_modem_change(before);
            }
            SCR => self.scr = value,
            _ => {}
        }
        self.update_irq(false);
        result
    }

    /// A byte written to THR: out (or back in, in loopback mode); THR empties at once.
    fn transmit(&mut self, value: u8) -> std::io::Result<()> {
        // Writing THR clears THRE; the falling and rising edge make a new interrupt.
        self.thre_pending = false;
        self.update_irq(false);
        let result = if self.loopback() {
            if self.rx.len() < FIFO_SIZE {
                self.rx.push_back(value);
            } else {
                self.lsr_errors |= LSR_OE;
            }
            Ok(())
        } else {
            self.out.write_all(&[value]).and_then(|()| self.out.flush())
        };
        self.thre_pending = true;
        self.update_irq(self.loopback());
        result
    }

    fn write_fcr(&mut self, value: u8) {
        // Changing the enable bit clears the FIFOs; so does the receiver-reset bit.
        if (value ^ self.fcr) & FCR_ENABLE != 0 || value & FCR_CLEAR_RX != 0 {
            let loopback = self.loopback();
            let bytes = self.rx.drain(..);
            if !loopback {
                self.cleared.extend(bytes);
            }
        }
        self.fcr = fcr_value(value);
    }

    /// MSR bits 4-7: in loopback the modem outputs (RTS, DTR, OUT1, OUT2 to CTS, DSR, RI, DCD).
    fn modem_lines(&self) -> u8 {
        if !self.loopback() {
            return MSR_LINES_ATTACHED;
        }
        let map = [(MCR_RTS, MSR_CTS), (MCR_DTR, MSR_DSR), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)];
        map.iter().filter(|(m, _)| self.mcr & m != 0).fold(0, |acc, (_, s)| acc | s)
    }

    /// Sets the MSR delta bits for lines that changed from `before`: DCTS, DDSR, DDCD on any
    /// change, TERI only when RI goes off.
    fn note_modem_change(&mut self, before: u8) {
        let now = self.modem_lines();
        let changed = before ^ now;
        self.msr_deltas |= (changed & (MSR_CTS | MSR_DSR | MSR_DCD)) >> 4;
        if before & MSR_RI != 0 && now & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
    }

    /// Host input the guest's last FIFO clear removed (unread by the guest). Linux clears and
    /// re-enables the FIFOs while it opens the port, after it has enabled the receive
    /// interrupt, which is when queued input starts to enter the FIFO: that input must not be
    /// lost, so the caller queues it again and it arrives as if a moment later.
    pub(super) fn take_cleared(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.cleared)
    }

    /// LSR as the guest would read it, without clearing anything (for snapshots).
    pub(super) fn line_status(&self) -> u8 {
        (if self.rx.is_empty() { 0 } else { LSR_DR }) | self.lsr_errors | LSR_THRE_TEMT
    }

    /// MSR as the guest would read it, without clearing anything (for snapshots).
    pub(super) fn modem_status(&self) -> u8 {
        self.modem_lines() | self.msr_deltas
    }
}
