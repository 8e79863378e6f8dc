//! The channel between the HTTP thread and the VMM thread.
//!
//! The HTTP thread holds a [`VmmChannel`]: it sends an [`ApiRequest`],
//! writes 1 to the kick `EventFd`, and blocks until the answer comes back.
//! The VMM thread holds the [`ApiEndpoint`]: when the kick fd is readable it
//! calls [`ApiEndpoint::handle_pending`] (or lets `event_manager` do it, as
//! the endpoint is a [`MutEventSubscriber`]), which runs each request
//! through the [`ApiController`] and sends the outcome back. The HTTP thread
//! never touches VMM state.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::controller::{ApiController, VmmBackend};
use crate::request::{ApiError, ApiOutcome, ApiRequest};

/// The message the HTTP thread answers when the VMM thread is gone.
pub const VMM_GONE: &str = "The VMM is not processing API requests any more.";

/// The HTTP thread's end: sends requests, waits for outcomes.
#[derive(Debug)]
pub struct VmmChannel {
    to_vmm: Sender<ApiRequest>,
    from_vmm: Receiver<ApiOutcome>,
    kick: EventFd,
}

impl VmmChannel {
    /// Sends `request` to the VMM thread and waits for its outcome.
    pub fn call(&self, request: ApiRequest) -> ApiOutcome {
        let gone = || Err(ApiError::with_status(503, VMM_GONE));
        if self.to_vmm.send(request).is_err() {
            return gone();
        }
        if self.kick.write(1).is_err() {
            tracing::error!("cannot signal the VMM thread");
        }
        self.from_vmm.recv().unwrap_or_else(|_| gone())
    }
}

/// The VMM thread's end: owns the controller and answers requests.
#[derive(Debug)]
pub struct ApiEndpoint<B> {
    controller: ApiController<B>,
    requests: Receiver<ApiRequest>,
    replies: Sender<ApiOutcome>,
    kick: EventFd,
}

/// Creates both ends around `controller`.
pub fn api_channel<B: VmmBackend>(
    controller: ApiController<B>,
) -> std::io::Result<(VmmChannel, ApiEndpoint<B>)> {
    let kick = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let (to_vmm, requests) = channel();
    let (replies, from_vmm) = channel();
    Ok((
        VmmChannel {
            to_vmm,
            from_vmm,
            kick: kick.try_clone()?,
        },
        ApiEndpoint {
            controller,
            requests,
            replies,
            kick,
        },
    ))
}

impl<B: VmmBackend> ApiEndpoint<B> {
    /// Answers every queued request; returns how many. Call it when the
    /// kick fd ([`Self::kick_fd`]) is readable.
    pub fn handle_pending(&mut self) -> usize {
        // Clear the kick first: a request queued after this read kicks again.
        let _ = self.kick.read();
        let mut handled = 0;
        while let Ok(request) = self.requests.try_recv() {
            self.answer(request);
            handled += 1;
        }
        handled
    }

    /// Waits for one request and answers it. Useful before boot, when the
    /// VMM thread has nothing else to do (Firecracker's pre-boot loop).
    /// Returns `false` once the HTTP side is gone.
    pub fn handle_next_blocking(&mut self) -> bool {
        match self.requests.recv() {
            Ok(request) => {
                self.answer(request);
                true
            }
            Err(_) => false,
        }
    }

    fn answer(&mut self, request: ApiRequest) {
        let outcome = self.controller.handle(request);
        // The HTTP thread may have exited; nothing to do then.
        let _ = self.replies.send(outcome);
    }

    /// The fd that becomes readable when requests are queued.
    pub fn kick_fd(&self) -> RawFd {
        self.kick.as_raw_fd()
    }

    /// The controller.
    pub fn controller(&self) -> &ApiController<B> {
        &self.controller
    }

    /// The controller, mutably (e.g. to boot from a configuration file).
    pub fn controller_mut(&mut self) -> &mut ApiController<B> {
        &mut self.controller
    }
}

impl<B: VmmBackend> MutEventSubscriber for ApiEndpoint<B> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            self.handle_pending();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.kick, EventSet::IN)) {
            tracing::error!("cannot watch the API kick fd: {e}");
        }
    }
}
