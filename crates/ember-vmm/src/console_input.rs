//! Feeds the host's standard input to the guest console without losing a
//! byte: when the UART's receive FIFO is full, input waits until the guest
//! drains it.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use ember_devices::EventFdTrigger;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::device_manager::Console;

const TOKEN_INPUT: u32 = 1;
const TOKEN_DRAINED: u32 = 2;

/// The event-loop subscriber that pumps input into the console.
pub struct ConsoleInput<R: Read + AsRawFd + Send> {
    input: R,
    console: Arc<Mutex<Console>>,
    drained: EventFdTrigger,
    pending: Vec<u8>,
    watching_input: bool,
    eof: bool,
}

impl<R: Read + AsRawFd + Send> ConsoleInput<R> {
    pub fn new(input: R, console: Arc<Mutex<Console>>, drained: EventFdTrigger) -> Self {
        Self {
            input,
            console,
            drained,
            pending: Vec::new(),
            watching_input: false,
            eof: false,
        }
    }

    fn input_fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }

    /// Moves pending bytes into the FIFO; returns true when all went in.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut console = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let n = console.enqueue_input(&self.pending);
        self.pending.drain(..n);
        self.pending.is_empty()
    }

    fn set_watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_input || self.eof {
            return;
        }
        let ev = Events::with_data_raw(self.input_fd(), TOKEN_INPUT, EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        if let Err(e) = r {
            tracing::warn!(
                "console input: cannot {} stdin: {e}",
                if on { "watch" } else { "unwatch" }
            );
        }
        self.watching_input = on;
    }
}

impl<R: Read + AsRawFd + Send> MutEventSubscriber for ConsoleInput<R> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            self.drained.eventfd(),
            TOKEN_DRAINED,
            EventSet::IN,
        )) {
            tracing::warn!("console input: cannot watch the UART: {e}");
        }
        self.set_watch(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_DRAINED => {
                let _ = self.drained.eventfd().read();
                if self.flush_pending() {
                    self.set_watch(ops, true);
                }
            }
            TOKEN_INPUT => {
                let mut buf = [0u8; 64];
                match self.input.read(&mut buf) {
                    Ok(0) => {
                        self.set_watch(ops, false);
                        self.eof = true;
                    }
                    Ok(n) => {
                        self.pending.extend_from_slice(&buf[..n]);
                        if !self.flush_pending() {
                            // The FIFO is full: wait for the guest to read.
                            self.set_watch(ops, false);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("console input: {e}; no more input");
                        self.set_watch(ops, false);
                        self.eof = true;
                    }
                }
            }
            _ => {}
        }
    }
}
