//! How a device signals the outside world: an interrupt line or an event.
//!
//! We reuse `vm_superio::Trigger` as the one trigger trait of the crate, so
//! the UART from `vm-superio` and our own devices plug into the same wiring.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub use vm_superio::Trigger;

/// A trigger backed by an `EventFd`: an irqfd registered with KVM for an
/// interrupt line, or an eventfd the VMM's event loop watches.
#[derive(Clone, Debug)]
pub struct EventFdTrigger(Arc<EventFd>);

impl EventFdTrigger {
    /// Creates a new non-blocking eventfd trigger.
    pub fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(EventFd::new(libc::EFD_NONBLOCK)?)))
    }

    /// Wraps an existing eventfd.
    pub fn from_eventfd(fd: EventFd) -> Self {
        Self(Arc::new(fd))
    }

    /// The underlying eventfd, for registering with KVM or an epoll loop.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl AsRawFd for EventFdTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Fake triggers for in-process device tests.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::Trigger;

    /// Counts how many times it was triggered.
    #[derive(Clone, Default, Debug)]
    pub struct CountingTrigger(pub Arc<AtomicUsize>);

    impl CountingTrigger {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Trigger for CountingTrigger {
        type E = std::convert::Infallible;
        fn trigger(&self) -> Result<(), Self::E> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}
