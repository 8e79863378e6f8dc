//! An i8042 keyboard controller with a PS/2 keyboard behind it.
//!
//! It does what a microVM needs: the guest's `reboot` (pulsing the CPU reset
//! line, command 0xFE) ends the VM, and the host can inject key sequences,
//! such as Ctrl+Alt+Del, that the guest's `atkbd` driver sees as real
//! keystrokes. There is no auxiliary (mouse) port.
//!
//! Register map, relative to port 0x60: offset 0 is the data port (0x60),
//! offset 4 the status/command port (0x64).
//!
//! Its snapshot state is [`I8042State`]: the configuration byte, the output
//! buffer, what the next data byte is for, and the keyboard's scan-code set
//! and scanning flag. The reset counter is a host-side statistic, not state.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use super::LegacyStateError;
use crate::bus::BusDevice;

/// Offset of the data port (0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the status/command port (0x64).
pub const COMMAND_OFFSET: u64 = 4;
/// Number of ports the device spans (0x60..=0x64).
pub const PORT_SPAN: u64 = 5;

// Status register bits.
const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
const SR_UNLOCKED: u8 = 0x10;

// Controller configuration byte ("command byte") bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;

/// The output buffer never holds more than this; the guest reads one byte
/// per interrupt, and nothing we send is longer.
pub const OUTPUT_LIMIT: usize = 32;

const DEVICE: &str = "i8042";

/// Scan codes for Ctrl+Alt+Del, press then release, in set 1 (what the
/// guest sees when the controller translates) and set 2 (untranslated).
const CTRL_ALT_DEL_SET1: [u8; 10] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d, 0, 0];
const CTRL_ALT_DEL_SET1_LEN: usize = 8;
const CTRL_ALT_DEL_SET2: [u8; 10] = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0];
const CTRL_ALT_DEL_SET2_TAIL: u8 = 0x14;

/// What the next byte on the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingInput {
    None,
    /// Controller command 0x60: the next byte is the configuration byte.
    WriteConfig,
    /// Controller command 0xD1: the next byte is the output port.
    WriteOutputPort,
    /// Controller command 0xD2: the next byte is echoed as keyboard data.
    EchoKeyboard,
    /// Controller commands 0xD3/0xD4: a byte for the absent aux port.
    DiscardAux,
    /// A keyboard command that takes a parameter (LEDs, typematic, set).
    KeyboardParam(u8),
}

/// Keyboard commands followed by a parameter byte.
const PARAM_COMMANDS: [u8; 3] = [0xed, 0xf3, 0xf0];

/// The controller's and keyboard's guest-visible state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct I8042State {
    /// The controller configuration ("command") byte.
    pub config: u8,
    /// The last write went to the command port (status bit 3).
    pub last_write_was_command: bool,
    /// Bytes waiting for the guest on the data port, oldest first (at most
    /// [`OUTPUT_LIMIT`]).
    pub output: Vec<u8>,
    /// What the next data-port byte is for.
    pub pending: PendingInput,
    /// The keyboard's scan-code set (1, 2 or 3).
    pub scancode_set: u8,
    /// The keyboard is scanning (enabled with 0xF4, disabled with 0xF5).
    pub scanning: bool,
}

impl I8042State {
    /// Refuses a state the device can never be in: an output buffer longer
    /// than its bound, a scan-code set other than 1 to 3, a pending keyboard
    /// parameter for a command that takes none.
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        if self.output.len() > OUTPUT_LIMIT {
            return Err(LegacyStateError::TooLong {
                device: DEVICE,
                field: "output",
                len: self.output.len(),
                max: OUTPUT_LIMIT,
            });
        }
        if !(1..=3).contains(&self.scancode_set) {
            return Err(LegacyStateError::InvalidValue {
                device: DEVICE,
                field: "scancode_set",
                value: u32::from(self.scancode_set),
            });
        }
        if let PendingInput::KeyboardParam(cmd) = self.pending {
            if !PARAM_COMMANDS.contains(&cmd) {
                return Err(LegacyStateError::InvalidValue {
                    device: DEVICE,
                    field: "pending",
                    value: u32::from(cmd),
                });
            }
        }
        Ok(())
    }
}

/// Errors injecting input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The guest disabled the keyboard interface or has not enabled it.
    #[error("the guest's keyboard is disabled")]
    KeyboardDisabled,
    /// The output buffer is full: the guest is not reading the keyboard.
    #[error("the keyboard buffer is full")]
    BufferFull,
}

/// The i8042. `I` raises IRQ 1; `R` requests a system reset.
pub struct I8042<I: Trigger, R: Trigger> {
    irq: I,
    reset: R,
    config: u8,
    last_write_was_command: bool,
    output: VecDeque<u8>,
    pending: PendingInput,
    scancode_set: u8,
    scanning: bool,
    resets_requested: u64,
}

impl<I: Trigger, R: Trigger> I8042<I, R> {
    /// A controller in its power-on state.
    pub fn new(irq: I, reset: R) -> Self {
        Self {
            irq,
            reset,
            config: CTR_KBDINT | CTR_SYS | CTR_XLATE,
            last_write_was_command: false,
            output: VecDeque::new(),
            pending: PendingInput::None,
            scancode_set: 2,
            scanning: true,
            resets_requested: 0,
        }
    }

    /// The guest-visible state.
    pub fn state(&self) -> I8042State {
        I8042State {
            config: self.config,
            last_write_was_command: self.last_write_was_command,
            output: self.output.iter().copied().collect(),
            pending: self.pending,
            scancode_set: self.scancode_set,
            scanning: self.scanning,
        }
    }

    /// A controller in `state`, raising `irq` and requesting resets on
    /// `reset`. The state is validated first. When bytes are waiting and
    /// the guest enabled the interrupt, IRQ 1 is raised again, so an
    /// interrupt in flight at snapshot time is not lost.
    pub fn from_state(irq: I, reset: R, state: &I8042State) -> Result<Self, LegacyStateError> {
        state.validate()?;
        let dev = Self {
            irq,
            reset,
            config: state.config,
            last_write_was_command: state.last_write_was_command,
            output: state.output.iter().copied().collect(),
            pending: state.pending,
            scancode_set: state.scancode_set,
            scanning: state.scanning,
            resets_requested: 0,
        };
        dev.raise_irq();
        Ok(dev)
    }

    /// How many times the guest asked for a reset.
    pub fn resets_requested(&self) -> u64 {
        self.resets_requested
    }

    /// Injects Ctrl+Alt+Del as a guest keyboard would send it.
    pub fn inject_ctrl_alt_del(&mut self) -> Result<(), InjectError> {
        if self.config & CTR_KBDDIS != 0 || !self.scanning {
            return Err(InjectError::KeyboardDisabled);
        }
        let mut seq: Vec<u8> = Vec::with_capacity(11);
        if self.config & CTR_XLATE != 0 || self.scancode_set == 1 {
            seq.extend_from_slice(&CTRL_ALT_DEL_SET1[..CTRL_ALT_DEL_SET1_LEN]);
        } else {
            seq.extend_from_slice(&CTRL_ALT_DEL_SET2);
            seq.push(CTRL_ALT_DEL_SET2_TAIL);
        }
        if self.output.len() + seq.len() > OUTPUT_LIMIT {
            return Err(InjectError::BufferFull);
        }
        let was_empty = self.output.is_empty();
        self.output.extend(seq);
        if was_empty {
            self.raise_irq();
        }
        Ok(())
    }

    fn raise_irq(&self) {
        if self.config & CTR_KBDINT != 0 && !self.output.is_empty() {
            if let Err(e) = self.irq.trigger() {
                tracing::warn!("i8042: could not raise IRQ 1: {e:?}");
            }
        }
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_LIMIT {
            let was_empty = self.output.is_empty();
            self.output.push_back(byte);
            if was_empty {
                self.raise_irq();
            }
        }
    }

    fn request_reset(&mut self) {
        self.resets_requested += 1;
        if let Err(e) = self.reset.trigger() {
            tracing::error!("i8042: could not signal the reset request: {e:?}");
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_UNLOCKED;
        if !self.output.is_empty() {
            s |= SR_OBF;
        }
        if self.config & CTR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_write_was_command {
            s |= SR_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        // One interrupt per byte, as the hardware does.
        self.raise_irq();
        byte
    }

    fn controller_command(&mut self, cmd: u8) {
        self.pending = PendingInput::None;
        match cmd {
            0x20 => self.push(self.config),
            0x60 => self.pending = PendingInput::WriteConfig,
            0xa7 => self.config |= CTR_AUXDIS,
            0xa8 => self.config &= !CTR_AUXDIS,
            // Aux interface test: "clock line stuck low", i.e. no mouse.
            0xa9 => self.push(0x01),
            0xaa => self.push(0x55),
            0xab => self.push(0x00),
            0xad => self.config |= CTR_KBDDIS,
            0xae => self.config &= !CTR_KBDDIS,
            0xc0 => self.push(0x00),
            0xd0 => self.push(0x01),
            0xd1 => self.pending = PendingInput::WriteOutputPort,
            0xd2 => self.pending = PendingInput::EchoKeyboard,
            0xd3 | 0xd4 => self.pending = PendingInput::DiscardAux,
            // Pulse output lines; bit 0 clear pulses the CPU reset line.
            0xf0..=0xff if cmd & 1 == 0 => self.request_reset(),
            _ => {}
        }
    }

    fn data_write(&mut self, byte: u8) {
        match std::mem::replace(&mut self.pending, PendingInput::None) {
            PendingInput::WriteConfig => self.config = byte,
            PendingInput::WriteOutputPort => {
                if byte & 1 == 0 {
                    self.request_reset();
                }
            }
            PendingInput::EchoKeyboard => self.push(byte),
            PendingInput::DiscardAux => {}
            PendingInput::KeyboardParam(cmd) => self.keyboard_param(cmd, byte),
            PendingInput::None => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        // Writing to the keyboard re-enables its interface.
        self.config &= !CTR_KBDDIS;
        match cmd {
            0xed | 0xf3 | 0xf0 => {
                self.push(KBD_ACK);
                self.pending = PendingInput::KeyboardParam(cmd);
            }
            0xee => self.push(0xee),
            0xf2 => {
                self.push(KBD_ACK);
                self.push(0xab);
                self.push(if self.config & CTR_XLATE != 0 {
                    0x41
                } else {
                    0x83
                });
            }
            0xf4 => {
                self.scanning = true;
                self.push(KBD_ACK);
            }
            0xf5 => {
                self.scanning = false;
                self.push(KBD_ACK);
            }
            0xf6 => {
                self.scancode_set = 2;
                self.push(KBD_ACK);
            }
            0xff => {
                self.scancode_set = 2;
                self.scanning = true;
                self.push(KBD_ACK);
                self.push(KBD_BAT_OK);
            }
            _ => self.push(KBD_ACK),
        }
    }

    fn keyboard_param(&mut self, cmd: u8, param: u8) {
        self.push(KBD_ACK);
        if cmd == 0xf0 {
            match param {
                0 => {
                    let set = self.scancode_set;
                    // The controller translates the set number as well.
                    let reply = if self.config & CTR_XLATE != 0 {
                        [0, 0x43, 0x41, 0x3f][set as usize & 3]
                    } else {
                        set
                    };
                    self.push(reply);
                }
                1..=3 => self.scancode_set = param,
                _ => {}
            }
        }
    }
}

impl<I: Trigger + Send, R: Trigger + Send> BusDevice for I8042<I, R> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            DATA_OFFSET => {
                self.last_write_was_command = false;
                self.data_write(data[0]);
            }
            COMMAND_OFFSET => {
                self.last_write_was_command = true;
                self.controller_command(data[0]);
            }
            _ => {}
        }
    }
}

impl<'a, I: Trigger, R: Trigger> ember_state::Persist<'a> for I8042<I, R> {
    type State = I8042State;
    /// What [`I8042::new`] takes: the IRQ 1 trigger and the reset trigger.
    type ConstructorArgs = (I, R);
    type Error = LegacyStateError;

    fn save(&self) -> I8042State {
        self.state()
    }

    fn restore((irq, reset): (I, R), state: &I8042State) -> Result<Self, LegacyStateError> {
        Self::from_state(irq, reset, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_util::CountingTrigger;

    type Dev = I8042<CountingTrigger, CountingTrigger>;

    fn dev() -> (Dev, CountingTrigger, CountingTrigger) {
        let irq = CountingTrigger::default();
        let reset = CountingTrigger::default();
        (I8042::new(irq.clone(), reset.clone()), irq, reset)
    }

    fn rd(d: &mut Dev, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn drain(d: &mut Dev) -> Vec<u8> {
        let mut out = vec![];
        while rd(d, COMMAND_OFFSET) & SR_OBF != 0 {
            out.push(rd(d, DATA_OFFSET));
        }
        out
    }

    #[test]
    fn reset_command_requests_a_reset() {
        let (mut d, _, reset) = dev();
        d.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(reset.count(), 1);
        // Output-port write with bit 0 clear resets too.
        d.write(COMMAND_OFFSET, &[0xd1]);
        d.write(DATA_OFFSET, &[0xfe]);
        assert_eq!(reset.count(), 2);
        // Pulsing other lines does not.
        d.write(COMMAND_OFFSET, &[0xff]);
        assert_eq!(reset.count(), 2);
    }

    #[test]
    fn self_test_and_config_byte_round_trip() {
        let (mut d, _, _) = dev();
        d.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(drain(&mut d), vec![0x55]);
        d.write(COMMAND_OFFSET, &[0x60]);
        d.write(DATA_OFFSET, &[0x47]);
        d.write(COMMAND_OFFSET, &[0x20]);
        assert_eq!(drain(&mut d), vec![0x47]);
    }

    #[test]
    fn keyboard_reset_and_identify() {
        let (mut d, _, _) = dev();
        d.write(DATA_OFFSET, &[0xff]);
        assert_eq!(drain(&mut d), vec![KBD_ACK, KBD_BAT_OK]);
        d.write(DATA_OFFSET, &[0xf2]);
        assert_eq!(drain(&mut d), vec![KBD_ACK, 0xab, 0x41]);
        d.write(DATA_OFFSET, &[0xed]);
        d.write(DATA_OFFSET, &[0x07]);
        assert_eq!(drain(&mut d), vec![KBD_ACK, KBD_ACK]);
    }

    #[test]
    fn ctrl_alt_del_translated_raises_one_irq_per_byte() {
        let (mut d, irq, _) = dev();
        d.inject_ctrl_alt_del().unwrap();
        let before = irq.count();
        assert_eq!(before, 1);
        let got = drain(&mut d);
        assert_eq!(got, CTRL_ALT_DEL_SET1[..CTRL_ALT_DEL_SET1_LEN].to_vec());
        // One more IRQ per remaining byte after each read.
        assert_eq!(irq.count(), got.len());
    }

    #[test]
    fn ctrl_alt_del_untranslated_uses_set_2() {
        let (mut d, _, _) = dev();
        d.write(COMMAND_OFFSET, &[0x60]);
        d.write(DATA_OFFSET, &[CTR_KBDINT | CTR_SYS]);
        d.inject_ctrl_alt_del().unwrap();
        let got = drain(&mut d);
        assert_eq!(got.first(), Some(&0x14));
        assert_eq!(got.last(), Some(&0x14));
        assert_eq!(got.len(), 11);
    }

    #[test]
    fn injection_refused_when_keyboard_disabled_or_full() {
        let (mut d, _, _) = dev();
        d.write(COMMAND_OFFSET, &[0xad]);
        assert_eq!(d.inject_ctrl_alt_del(), Err(InjectError::KeyboardDisabled));
        d.write(COMMAND_OFFSET, &[0xae]);
        for _ in 0..4 {
            d.inject_ctrl_alt_del().unwrap();
        }
        assert_eq!(d.inject_ctrl_alt_del(), Err(InjectError::BufferFull));
    }

    #[test]
    fn no_interrupt_when_guest_masks_it() {
        let (mut d, irq, _) = dev();
        d.write(COMMAND_OFFSET, &[0x60]);
        d.write(DATA_OFFSET, &[CTR_SYS | CTR_XLATE]);
        d.inject_ctrl_alt_del().unwrap();
        assert_eq!(irq.count(), 0);
        assert_eq!(drain(&mut d).len(), CTRL_ALT_DEL_SET1_LEN);
    }

    /// What a guest sees from here on: status, the waiting bytes, the answer
    /// to the pending parameter, an injected Ctrl+Alt+Del and the config.
    fn guest_view(d: &mut Dev) -> Vec<u8> {
        let mut out = vec![rd(d, COMMAND_OFFSET)];
        out.extend(drain(d));
        d.write(DATA_OFFSET, &[0x00]);
        out.push(rd(d, COMMAND_OFFSET));
        out.extend(drain(d));
        out.push(u8::from(d.inject_ctrl_alt_del().is_ok()));
        out.extend(drain(d));
        d.write(COMMAND_OFFSET, &[0x20]);
        out.extend(drain(d));
        out
    }

    #[test]
    fn restored_controller_answers_the_guest_as_the_original() {
        let (mut a, _, _) = dev();
        // No translation, scan-code set 3, then "get scan-code set" half
        // written, with the ACKs still unread.
        a.write(COMMAND_OFFSET, &[0x60]);
        a.write(DATA_OFFSET, &[CTR_KBDINT | CTR_SYS]);
        a.write(DATA_OFFSET, &[0xf0]);
        a.write(DATA_OFFSET, &[0x03]);
        a.write(DATA_OFFSET, &[0xf0]);
        let saved = a.state();
        assert_eq!(saved.pending, PendingInput::KeyboardParam(0xf0));
        assert_eq!(saved.output, vec![KBD_ACK, KBD_ACK, KBD_ACK]);
        assert_eq!(saved.scancode_set, 3);
        let decoded: I8042State =
            postcard::from_bytes(&postcard::to_allocvec(&saved).unwrap()).unwrap();
        assert_eq!(decoded, saved);

        let expected = guest_view(&mut a);
        // The set query answers 3, untranslated; Ctrl+Alt+Del is set 2.
        assert!(expected.windows(2).any(|w| w == [KBD_ACK, 3]));
        assert_ne!(a.state(), saved);
        let irq = CountingTrigger::default();
        let mut b = I8042::from_state(irq.clone(), CountingTrigger::default(), &decoded).unwrap();
        // Bytes are waiting and the interrupt is enabled: IRQ 1 again.
        assert_eq!(irq.count(), 1);
        assert_eq!(guest_view(&mut b), expected);
    }

    #[test]
    fn restored_controller_keeps_the_disabled_keyboard_and_masked_irq() {
        use ember_state::Persist;
        let (mut a, _, _) = dev();
        a.write(COMMAND_OFFSET, &[0x60]);
        a.write(DATA_OFFSET, &[CTR_SYS | CTR_XLATE | CTR_KBDDIS]);
        a.write(COMMAND_OFFSET, &[0xaa]);
        let irq = CountingTrigger::default();
        let mut b = <Dev as Persist>::restore(
            (irq.clone(), CountingTrigger::default()),
            &Persist::save(&a),
        )
        .unwrap();
        assert_eq!(irq.count(), 0);
        assert_eq!(b.inject_ctrl_alt_del(), Err(InjectError::KeyboardDisabled));
        assert_eq!(
            rd(&mut b, COMMAND_OFFSET),
            SR_UNLOCKED | SR_OBF | SR_SYS | SR_CMD
        );
        assert_eq!(drain(&mut b), vec![0x55]);
    }

    #[test]
    fn hostile_controller_states_are_refused() {
        let (d, _, _) = dev();
        let good = d.state();
        let restore = |s: &I8042State| {
            I8042::from_state(CountingTrigger::default(), CountingTrigger::default(), s).map(|_| ())
        };
        assert!(restore(&good).is_ok());
        let mut s = good.clone();
        s.output = vec![0xaa; OUTPUT_LIMIT + 1];
        assert_eq!(
            restore(&s),
            Err(LegacyStateError::TooLong {
                device: "i8042",
                field: "output",
                len: OUTPUT_LIMIT + 1,
                max: OUTPUT_LIMIT
            })
        );
        let mut s = good.clone();
        s.output = vec![0; 1 << 20];
        assert!(restore(&s).is_err());
        for set in [0, 4, 0xff] {
            let mut s = good.clone();
            s.scancode_set = set;
            assert!(matches!(
                restore(&s),
                Err(LegacyStateError::InvalidValue {
                    field: "scancode_set",
                    ..
                })
            ));
        }
        let mut s = good;
        s.pending = PendingInput::KeyboardParam(0x12);
        assert!(matches!(
            restore(&s),
            Err(LegacyStateError::InvalidValue {
                field: "pending",
                ..
            })
        ));
    }

    #[test]
    fn garbage_never_panics_and_output_stays_bounded() {
        let (mut d, _, _) = dev();
        for i in 0..=255u8 {
            for j in 0..=255u8 {
                d.write(COMMAND_OFFSET, &[i]);
                d.write(DATA_OFFSET, &[j]);
            }
            assert!(d.output.len() <= OUTPUT_LIMIT);
        }
        d.read(2, &mut [0u8]);
        d.read(0, &mut [0u8; 3]);
    }
}
