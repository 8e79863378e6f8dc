//! Kicking a vCPU thread out of KVM_RUN without losing the kick.
//!
//! The control thread sends a real-time signal to the vCPU thread. Its
//! handler sets `kvm_run.immediate_exit` through a thread-local pointer, so
//! a kick that lands just before the thread enters KVM_RUN still makes the
//! next KVM_RUN return at once with EINTR.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let ptr = KVM_RUN_PTR.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // `bind` and cleared by `unbind` before the mapping goes away.
        let field = unsafe { &raw mut (*ptr).immediate_exit };
        // SAFETY: `field` points into that live mapping; a volatile byte
        // store is async-signal-safe.
        unsafe { std::ptr::write_volatile(field, 1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), on_kick));
    result
}

/// Binds the calling thread to its vCPU's `kvm_run`.
pub fn bind(run: *mut kvm_run) {
    KVM_RUN_PTR.with(|p| p.set(run));
}

/// Unbinds the calling thread.
pub fn unbind() {
    KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
}
