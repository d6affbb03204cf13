//! i8042 PS/2 controller with a keyboard that answers but never types, and no AUX (mouse) port.
//!
//! Enough of the protocol for Linux's i8042 and atkbd drivers to probe quickly and quietly
//! (self test, CTR read/write, AUX loop test failing at once, keyboard ID/reset/scancode set
//! commands acknowledged), and command 0xFE (pulse reset line) requests a VM reset. Insert on
//! the PIO bus at [`I8042_PORT`] with length [`I8042_PORT_LEN`]: offset 0 is the data port
//! (0x60), offset 4 the status/command port (0x64).

mod persist;
pub use persist::I8042Host;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, IrqLine, VmExitRequest, VmExitRequester};

/// First port of the controller (data port).
pub const I8042_PORT: u16 = 0x60;
/// Length of the range: 0x60..=0x64.
pub const I8042_PORT_LEN: u16 = 5;
/// Keyboard IRQ.
pub const I8042_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM_FLAG: u8 = 0x04;
const SR_LAST_WAS_COMMAND: u8 = 0x08;
const SR_KBD_UNLOCKED: u8 = 0x10;

// Controller configuration byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_TRANSLATE;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
/// AUX interface test result "clock line stuck low": tells Linux there is no AUX port.
const AUX_TEST_ABSENT: u8 = 0x01;

// Keyboard commands (port 0x60) and answers.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
const KBD_SET_LEDS: u8 = 0xed;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_RATE: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Output port bit 0: the CPU reset line (active low).
const OUTPUT_PORT_RESET_LINE: u8 = 0x01;
const OUTPUT_PORT_DEFAULT: u8 = 0x03; // reset line high, A20 on

/// Ctrl down, Alt down, Del down (extended), Del up, Alt up, Ctrl up, in scancode set 1.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Bytes the output queue holds at most (a real controller holds one; a keyboard a few more).
const QUEUE_MAX: usize = 16;

/// Saved state of the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Controller configuration byte.
    pub control: u8,
    /// Output port.
    pub output_port: u8,
    /// Controller command waiting for its parameter byte on port 0x60.
    pub pending_command: Option<u8>,
    /// Keyboard command waiting for its parameter byte.
    pub pending_kbd_command: Option<u8>,
    /// Current keyboard scancode set.
    pub scancode_set: u8,
    /// Bytes waiting to be read from port 0x60.
    pub queue: Vec<u8>,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            status: SR_KBD_UNLOCKED | SR_SYSTEM_FLAG,
            control: CTR_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            pending_command: None,
            pending_kbd_command: None,
            scancode_set: 2,
            queue: Vec::new(),
        }
    }
}

/// The PS/2 controller.
pub struct I8042 {
    state: I8042State,
    queue: VecDeque<u8>,
    exit: VmExitRequester,
    irq: IrqLine,
}

impl I8042 {
    /// A controller after power-on, raising `irq` (IRQ 1) and asking `exit` for resets.
    pub fn new(exit: VmExitRequester, irq: IrqLine) -> Self {
        Self::from_state(&I8042State::default(), exit, irq)
    }

    /// Restores a controller from [`I8042::state`] (an over-long queue is truncated).
    pub fn from_state(state: &I8042State, exit: VmExitRequester, irq: IrqLine) -> Self {
        let queue = state.queue.iter().copied().take(QUEUE_MAX).collect();
        I8042 { state: I8042State { queue: Vec::new(), ..state.clone() }, queue, exit, irq }
    }

    /// The controller state, for snapshots.
    pub fn state(&self) -> I8042State {
        I8042State { queue: self.queue.iter().copied().collect(), ..self.state.clone() }
    }

    /// Types Ctrl-Alt-Del on the keyboard (Firecracker's `SendCtrlAltDel`): press Ctrl, Alt
    /// and Del, then release them, as scancode set 1 bytes, which is what the guest reads from
    /// a controller that translates (the CTR bit Linux leaves on). Linux's keyboard driver turns
    /// the chord into `ctrl_alt_del()`: a reboot, or SIGINT to init if init asked for it.
    /// Returns false (and types nothing) when the keyboard is disabled or its interrupt off,
    /// since the guest would then never read the keys.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if self.state.control & CTR_KBD_DISABLED != 0 || self.state.control & CTR_KBD_INT == 0 {
            return false;
        }
        for byte in CTRL_ALT_DEL_SET1 {
            self.push(byte);
        }
        true
    }

    fn push(&mut self, byte: u8) {
        if self.queue.len() < QUEUE_MAX {
            self.queue.push_back(byte);
        }
        self.state.status |= SR_OUTPUT_FULL;
        if self.state.control & CTR_KBD_INT != 0 {
            self.irq.pulse();
        }
    }

    /// A controller command's answer replaces whatever was pending, like the one-byte buffer of
    /// a real controller.
    fn respond(&mut self, byte: u8) {
        self.queue.clear();
        self.push(byte);
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.queue.pop_front().unwrap_or(0);
        if self.queue.is_empty() {
            self.state.status &= !SR_OUTPUT_FULL;
        } else if self.state.control & CTR_KBD_INT != 0 {
            self.irq.pulse();
        }
        byte
    }

    fn write_command(&mut self, cmd: u8) {
        self.state.status |= SR_LAST_WAS_COMMAND;
        self.state.pending_command = None;
        match cmd {
            CMD_READ_CTR => self.respond(self.state.control),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.state.pending_command = Some(cmd),
            CMD_AUX_DISABLE => self.state.control |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.state.control &= !CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.respond(AUX_TEST_ABSENT),
            CMD_SELF_TEST => {
                self.state.status |= SR_SYSTEM_FLAG;
                self.respond(SELF_TEST_OK)
            }
            CMD_KBD_TEST => self.respond(0),
            CMD_KBD_DISABLE => self.state.control |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.state.control &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.respond(self.state.output_port),
            CMD_PULSE_RESET => (self.exit)(VmExitRequest::Reset),
            _ => {}
        }
    }

    fn write_command_parameter(&mut self, cmd: u8, value: u8) {
        match cmd {
            CMD_WRITE_CTR => {
                self.state.control = value;
                if value & CTR_SYSTEM_FLAG != 0 {
                    self.state.status |= SR_SYSTEM_FLAG;
                }
            }
            CMD_WRITE_OUTPUT_PORT => {
                self.state.output_port = value;
                if value & OUTPUT_PORT_RESET_LINE == 0 {
                    (self.exit)(VmExitRequest::Reset);
                }
            }
            CMD_WRITE_KBD_BUFFER => self.respond(value),
            // Echo an AUX loopback byte without the AUX-data status bit: Linux then decides at
            // once that there is no AUX port instead of waiting for a timeout.
            CMD_WRITE_AUX_BUFFER => self.respond(value),
            _ => {} // CMD_WRITE_AUX: no mouse to talk to
        }
    }

    fn write_keyboard(&mut self, value: u8) {
        if let Some(cmd) = self.state.pending_kbd_command.take() {
            if cmd == KBD_SCANCODE_SET {
                if value == 0 {
                    self.push(KBD_ACK);
                    self.push(self.state.scancode_set);
                    return;
                }
                if (1..=3).contains(&value) {
                    self.state.scancode_set = value;
                }
            }
            self.push(KBD_ACK);
            return;
        }
        match value {
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_SET_LEDS | KBD_SET_RATE | KBD_SCANCODE_SET => {
                self.state.pending_kbd_command = Some(value);
                self.push(KBD_ACK);
            }
            KBD_GET_ID => {
                self.push(KBD_ACK);
                KBD_ID.iter().for_each(|&b| self.push(b));
            }
            KBD_RESET => {
                self.state.scancode_set = 2;
                self.push(KBD_ACK);
                self.push(KBD_BAT_OK);
            }
            _ => self.push(KBD_ACK),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.state.status &= !SR_LAST_WAS_COMMAND;
        match self.state.pending_command.take() {
            Some(cmd) => self.write_command_parameter(cmd, value),
            None => self.write_keyboard(value),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.state.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::test_util::RecordingIrqChip;

    struct Rig {
        dev: I8042,
        exits: Arc<Mutex<Vec<VmExitRequest>>>,
        chip: Arc<RecordingIrqChip>,
    }

    fn rig() -> Rig {
        let exits = Arc::new(Mutex::new(Vec::new()));
        let sink = exits.clone();
        let exit: VmExitRequester = Arc::new(move |r| sink.lock().unwrap().push(r));
        let chip = Arc::new(RecordingIrqChip::default());
        let dev = I8042::new(exit, IrqLine::new(chip.clone(), I8042_IRQ));
        Rig { dev, exits, chip }
    }

    #[test]
    fn ctrl_alt_del_is_typed_as_set1_scancodes() {
        let mut r = rig();
        assert!(r.dev.send_ctrl_alt_del());
        assert!(r.chip.pulses(I8042_IRQ) > 0, "the guest is interrupted");
        let mut read = Vec::new();
        while r.dev.state.status & SR_OUTPUT_FULL != 0 {
            read.push(r.dev.read_data());
        }
        assert_eq!(read, CTRL_ALT_DEL_SET1);
        assert!(r.exits.lock().unwrap().is_empty(), "the guest decides what the chord does");
        r.dev.state.control |= CTR_KBD_DISABLED;
        assert!(!r.dev.send_ctrl_alt_del(), "a disabled keyboard types nothing");
        assert!(r.dev.queue.is_empty());
    }

    impl Rig {
        fn cmd(&mut self, c: u8) {
            self.dev.write(COMMAND_OFFSET, &[c]);
        }
        fn data(&mut self, d: u8) {
            self.dev.write(DATA_OFFSET, &[d]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(COMMAND_OFFSET, &mut b);
            b[0]
        }
        fn read(&mut self) -> Option<u8> {
            if self.status() & SR_OUTPUT_FULL == 0 {
                return None;
            }
            let mut b = [0];
            self.dev.read(DATA_OFFSET, &mut b);
            Some(b[0])
        }
    }

    #[test]
    fn pulse_reset_requests_a_vm_reset() {
        let mut r = rig();
        r.cmd(CMD_PULSE_RESET);
        assert_eq!(*r.exits.lock().unwrap(), vec![VmExitRequest::Reset]);
        r.cmd(CMD_WRITE_OUTPUT_PORT);
        r.data(0x02); // reset line low
        assert_eq!(r.exits.lock().unwrap().len(), 2);
    }

    #[test]
    fn linux_probe_sequence() {
        let mut r = rig();
        assert_ne!(r.status(), 0xff, "controller present");
        assert_eq!(r.read(), None, "nothing to flush");
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.read(), Some(SELF_TEST_OK));
        r.cmd(CMD_READ_CTR);
        let ctr = r.read().unwrap();
        assert_eq!(ctr, CTR_DEFAULT);
        r.cmd(CMD_WRITE_CTR);
        r.data(ctr & !CTR_KBD_INT | CTR_KBD_DISABLED);
        r.cmd(CMD_READ_CTR);
        assert_eq!(r.read(), Some(ctr & !CTR_KBD_INT | CTR_KBD_DISABLED));
        // AUX loop: answered at once, so Linux's AUXDATA check fails and it moves on.
        r.cmd(CMD_WRITE_AUX_BUFFER);
        r.data(0x5a);
        assert_eq!(r.status() & 0x20, 0, "no AUX data bit");
        r.cmd(CMD_AUX_TEST);
        assert_eq!(r.read(), Some(AUX_TEST_ABSENT), "replaces the stale loop byte");
        assert_eq!(r.read(), None);
        assert!(r.exits.lock().unwrap().is_empty());
    }

    #[test]
    fn keyboard_commands_are_acknowledged_with_interrupts() {
        let mut r = rig();
        let before = r.chip.pulses(I8042_IRQ);
        r.data(KBD_GET_ID);
        assert_eq!(r.chip.pulses(I8042_IRQ), before + 3);
        assert_eq!((r.read(), r.read(), r.read(), r.read()), (Some(KBD_ACK), Some(0xab), Some(0x83), None));
        r.data(KBD_RESET);
        assert_eq!((r.read(), r.read()), (Some(KBD_ACK), Some(KBD_BAT_OK)));
        r.data(KBD_SCANCODE_SET);
        r.data(0);
        assert_eq!((r.read(), r.read(), r.read()), (Some(KBD_ACK), Some(KBD_ACK), Some(2)));
        r.data(KBD_SET_LEDS);
        r.data(0x07);
        assert_eq!((r.read(), r.read(), r.read()), (Some(KBD_ACK), Some(KBD_ACK), None));
        // With the keyboard interrupt disabled, no pulses.
        r.cmd(CMD_WRITE_CTR);
        r.data(0);
        let before = r.chip.pulses(I8042_IRQ);
        r.data(KBD_ECHO);
        assert_eq!(r.chip.pulses(I8042_IRQ), before);
        assert_eq!(r.read(), Some(KBD_ECHO));
    }

    #[test]
    fn state_round_trips_and_hostile_access_is_harmless() {
        let mut r = rig();
        r.data(KBD_GET_ID);
        let state = r.dev.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: I8042State = serde_json::from_str(&json).unwrap();
        let exit: VmExitRequester = Arc::new(|_| {});
        let mut dev = I8042::from_state(&back, exit, IrqLine::new(r.chip.clone(), 1));
        assert_eq!(dev.state(), state);
        for offset in [1u64, 2, 3, 5, 0x1000, u64::MAX] {
            let mut buf = [0u8; 4];
            dev.read(offset, &mut buf);
            dev.write(offset, &[CMD_PULSE_RESET]);
        }
        dev.read(0, &mut []);
        dev.write(4, &[]);
        for _ in 0..100 {
            dev.write(0, &[KBD_GET_ID]);
        }
        assert!(dev.state().queue.len() <= QUEUE_MAX);
    }
}
