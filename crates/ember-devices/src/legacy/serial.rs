//! The 8250/16550 UART console, from `vm-superio`, adapted to the bus.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;

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
