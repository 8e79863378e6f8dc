//! The 8250/16550 UART console, from `vm-superio`, adapted to the bus.
//!
//! Its snapshot state is [`SerialPortState`], a serde mirror of
//! `vm_superio::serial::SerialState`: the registers and the receive FIFO.
//! The output writer, the triggers and the counters are host resources.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::LegacyStateError;
use crate::bus::BusDevice;

/// Bytes the UART's receive FIFO holds (vm-superio's 16550 model).
pub const FIFO_SIZE: usize = 64;

const DEVICE: &str = "serial";
/// The interrupt-enable bits a 16550 has; the model keeps no others.
const IER_VALID: u8 = 0x0f;
/// "No interrupt pending", and the two interrupt sources the model raises.
const IIR_NONE: u8 = 0x01;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
/// Line status: data ready, and the always-set "transmitter empty" bits.
const LSR_DATA_READY: u8 = 0x01;
const LSR_TX_EMPTY: u8 = 0x60;

/// Counters of UART activity, shared with the metrics system.
#[derive(Debug, Default)]
pub struct SerialCounters {
    /// Bytes the guest wrote to the console.
    pub out_bytes: AtomicU64,
    /// Bytes lost because the output could not be written.
    pub lost_bytes: AtomicU64,
    /// Times the guest read the input buffer.
    pub reads: AtomicU64,
}

/// The UART's guest-visible state: its registers and the bytes waiting in
/// the receive FIFO, oldest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SerialPortState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register (without the FIFO bits).
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
    /// Received bytes the guest has not read yet (at most [`FIFO_SIZE`]).
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialPortState {
    fn from(s: SerialState) -> Self {
        Self {
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

impl SerialPortState {
    /// Refuses a state the vm-superio model can never be in: a FIFO longer
    /// than the hardware's, interrupt-enable bits a 16550 lacks, an
    /// interrupt identification or line status the model never produces
    /// (data-ready must match a non-empty FIFO).
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        let invalid = |field, value: u8| LegacyStateError::InvalidValue {
            device: DEVICE,
            field,
            value: u32::from(value),
        };
        if self.in_buffer.len() > FIFO_SIZE {
            return Err(LegacyStateError::TooLong {
                device: DEVICE,
                field: "in_buffer",
                len: self.in_buffer.len(),
                max: FIFO_SIZE,
            });
        }
        if self.interrupt_enable & !IER_VALID != 0 {
            return Err(invalid("interrupt_enable", self.interrupt_enable));
        }
        let iir = self.interrupt_identification;
        if ![IIR_NONE, IIR_THR_EMPTY, IIR_RDA, IIR_THR_EMPTY | IIR_RDA].contains(&iir) {
            return Err(invalid("interrupt_identification", iir));
        }
        let mut lsr = LSR_TX_EMPTY;
        if !self.in_buffer.is_empty() {
            lsr |= LSR_DATA_READY;
        }
        if self.line_status != lsr {
            return Err(invalid("line_status", self.line_status));
        }
        Ok(())
    }

    fn to_superio(&self) -> SerialState {
        SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

/// Serial events: counts, and tells the input side when the receive FIFO
/// drained so it can resume feeding input (no input is ever dropped).
pub struct SerialEventSink<T: Trigger> {
    counters: Arc<SerialCounters>,
    input_drained: T,
}

impl<T: Trigger> SerialEvents for SerialEventSink<T> {
    fn buffer_read(&self) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.counters.out_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.counters.lost_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        let _ = self.input_drained.trigger();
    }
}

/// A UART on the port-I/O bus (8 registers).
///
/// `I` raises the UART's interrupt line, `D` signals that the receive FIFO
/// has room again, and `W` receives the guest's console output.
pub struct SerialPort<I: Trigger, D: Trigger, W: Write> {
    inner: Serial<I, SerialEventSink<D>, W>,
}

impl<I: Trigger, D: Trigger, W: Write> SerialPort<I, D, W> {
    /// A UART raising `irq`, signalling `input_drained`, writing to `out`.
    pub fn new(irq: I, input_drained: D, out: W, counters: Arc<SerialCounters>) -> Self {
        let events = SerialEventSink {
            counters,
            input_drained,
        };
        Self {
            inner: Serial::with_events(irq, events, out),
        }
    }

    /// The UART's guest-visible state.
    pub fn state(&self) -> SerialPortState {
        self.inner.state().into()
    }

    /// A UART in `state`, with the same host resources as [`Self::new`].
    /// The state is validated first; an interrupt that was pending (and
    /// enabled) is raised again, so one in flight at snapshot time is not
    /// lost.
    pub fn from_state(
        irq: I,
        input_drained: D,
        out: W,
        counters: Arc<SerialCounters>,
        state: &SerialPortState,
    ) -> Result<Self, LegacyStateError> {
        state.validate()?;
        let events = SerialEventSink {
            counters,
            input_drained,
        };
        let inner = Serial::from_state(&state.to_superio(), irq, events, out).map_err(|e| {
            LegacyStateError::Trigger {
                device: DEVICE,
                reason: format!("{e:?}"),
            }
        })?;
        Ok(Self { inner })
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues host input for the guest. Returns how many bytes were taken;
    /// the caller keeps the rest until `input_drained` fires.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.inner.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.inner.enqueue_raw_bytes(&bytes[..n]) {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!("serial: could not queue input: {e:?}");
                0
            }
        }
    }

    /// The output sink.
    pub fn writer_mut(&mut self) -> &mut W {
        self.inner.writer_mut()
    }
}

impl<I: Trigger + Send, D: Trigger + Send, W: Write + Send> BusDevice for SerialPort<I, D, W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= 8 {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::warn!("serial: write to register {offset} failed: {e:?}");
        }
        // Console output is interactive: flush at line ends.
        if offset == 0 && data[0] == b'\n' {
            let _ = self.inner.writer_mut().flush();
        }
    }
}

impl<'a, I: Trigger, D: Trigger, W: Write> ember_state::Persist<'a> for SerialPort<I, D, W> {
    type State = SerialPortState;
    /// What [`SerialPort::new`] takes: IRQ, input-drained trigger, output,
    /// counters.
    type ConstructorArgs = (I, D, W, Arc<SerialCounters>);
    type Error = LegacyStateError;

    fn save(&self) -> SerialPortState {
        self.state()
    }

    fn restore(
        (irq, drained, out, counters): Self::ConstructorArgs,
        state: &SerialPortState,
    ) -> Result<Self, LegacyStateError> {
        Self::from_state(irq, drained, out, counters, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_util::CountingTrigger;

    fn port() -> SerialPort<CountingTrigger, CountingTrigger, Vec<u8>> {
        SerialPort::new(
            CountingTrigger::default(),
            CountingTrigger::default(),
            Vec::new(),
            Arc::default(),
        )
    }

    #[test]
    fn output_reaches_the_writer_and_is_counted() {
        let counters = Arc::new(SerialCounters::default());
        let mut p = SerialPort::new(
            CountingTrigger::default(),
            CountingTrigger::default(),
            Vec::new(),
            counters.clone(),
        );
        for b in b"hi\n" {
            p.write(0, &[*b]);
        }
        assert_eq!(p.writer_mut().as_slice(), b"hi\n");
        assert_eq!(counters.out_bytes.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_never_dropped_silently() {
        let mut p = port();
        let cap = p.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(p.enqueue_input(&big), cap);
        assert_eq!(p.enqueue_input(b"y"), 0);
        // Reading a byte makes room again.
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], b'x');
        assert_eq!(p.enqueue_input(b"y"), 1);
    }

    /// Reads every register (IIR last: reading it clears it) and drains the
    /// FIFO: what a guest driver sees from here on.
    fn guest_view(p: &mut SerialPort<CountingTrigger, CountingTrigger, Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for off in [1u64, 3, 4, 5, 6, 7, 2, 2] {
            let mut b = [0u8];
            p.read(off, &mut b);
            out.push(b[0]);
        }
        // Divisor latch, through DLAB.
        let mut lcr = [0u8];
        p.read(3, &mut lcr);
        p.write(3, &[lcr[0] | 0x80]);
        for off in [0u64, 1] {
            let mut b = [0u8];
            p.read(off, &mut b);
            out.push(b[0]);
        }
        p.write(3, &lcr);
        loop {
            let mut lsr = [0u8];
            p.read(5, &mut lsr);
            if lsr[0] & LSR_DATA_READY == 0 {
                break;
            }
            let mut b = [0u8];
            p.read(0, &mut b);
            out.push(b[0]);
        }
        out
    }

    #[test]
    fn restored_uart_answers_the_guest_as_the_original() {
        let mut a = port();
        // The guest programs 115200 8N1 with the receive interrupt on.
        a.write(3, &[0x80]);
        a.write(0, &[0x01]);
        a.write(1, &[0x00]);
        a.write(3, &[0x03]);
        a.write(1, &[0x01]);
        a.write(7, &[0x5a]);
        // Input arrives; the guest reads two bytes of it.
        assert_eq!(a.enqueue_input(b"hello"), 5);
        for _ in 0..2 {
            a.read(0, &mut [0u8]);
        }
        // More input raises the receive interrupt again.
        a.enqueue_input(b"!");
        let saved = a.state();
        assert_eq!(saved.in_buffer, b"llo!");
        assert_eq!(saved.interrupt_identification, IIR_RDA);
        // Through the snapshot format.
        let bytes = postcard::to_allocvec(&saved).unwrap();
        let decoded: SerialPortState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, saved);

        // The original carries on; a restored copy must answer the same.
        let expected = guest_view(&mut a);
        assert_ne!(a.state(), saved);
        let irq = CountingTrigger::default();
        let mut b = SerialPort::from_state(
            irq.clone(),
            CountingTrigger::default(),
            Vec::new(),
            Arc::default(),
            &decoded,
        )
        .unwrap();
        // The receive interrupt that was pending is raised again.
        assert_eq!(irq.count(), 1);
        assert_eq!(guest_view(&mut b), expected);
        assert_eq!(&expected[expected.len() - 4..], b"llo!");
        // Both now accept the same amount of input.
        assert_eq!(b.input_capacity(), FIFO_SIZE);
        assert_eq!(b.input_capacity(), a.input_capacity());
    }

    #[test]
    fn persist_trait_round_trips() {
        use ember_state::Persist;
        let mut a = port();
        a.enqueue_input(b"xyz");
        let s = Persist::save(&a);
        let b = <SerialPort<_, _, _> as Persist>::restore(
            (
                CountingTrigger::default(),
                CountingTrigger::default(),
                Vec::new(),
                Arc::default(),
            ),
            &s,
        )
        .unwrap();
        assert_eq!(b.state(), s);
    }

    #[test]
    fn hostile_uart_states_are_refused() {
        let mut good = port().state();
        good.in_buffer = vec![1; FIFO_SIZE];
        good.line_status = LSR_TX_EMPTY | LSR_DATA_READY;
        assert!(good.validate().is_ok());
        let restore = |s: &SerialPortState| {
            SerialPort::from_state(
                CountingTrigger::default(),
                CountingTrigger::default(),
                Vec::new(),
                Arc::default(),
                s,
            )
            .map(|_| ())
        };
        let mut s = good.clone();
        s.in_buffer.push(0);
        assert_eq!(
            restore(&s),
            Err(LegacyStateError::TooLong {
                device: "serial",
                field: "in_buffer",
                len: FIFO_SIZE + 1,
                max: FIFO_SIZE
            })
        );
        let mut s = good.clone();
        s.in_buffer = vec![0; 1 << 20];
        assert!(matches!(restore(&s), Err(LegacyStateError::TooLong { .. })));
        let mut s = good.clone();
        s.interrupt_enable = 0x10;
        assert!(matches!(
            restore(&s),
            Err(LegacyStateError::InvalidValue {
                field: "interrupt_enable",
                ..
            })
        ));
        for iir in [0x00, 0x03, 0x08, 0xc1] {
            let mut s = good.clone();
            s.interrupt_identification = iir;
            assert!(restore(&s).is_err(), "IIR {iir:#x}");
        }
        // Data ready without data, or data without data ready.
        let mut s = good.clone();
        s.in_buffer.clear();
        assert!(restore(&s).is_err());
        let mut s = good.clone();
        s.line_status = LSR_TX_EMPTY;
        assert!(restore(&s).is_err());
        let mut s = good;
        s.line_status |= 0x80;
        assert!(restore(&s).is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut p = port();
        let mut wide = [0u8; 4];
        p.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        p.write(9, &[1]);
        p.write(0, &[]);
    }
}
