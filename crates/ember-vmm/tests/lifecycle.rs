//! The VMM's lifecycle on real KVM with tiny guests: build, run the event
//! loop to the guest's exit, pause and resume, stop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_vmm::builder;
use ember_vmm::config::{ConsoleOutput, VmConfig};
use ember_vmm::vmm::{RunState, VmExit, Vmm};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

fn have_kvm() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIPPED: no /dev/kvm on this machine");
    }
    ok
}

fn config(image: &str) -> VmConfig {
    let mut c = VmConfig::new(tiny_guests::image(image));
    c.console = ConsoleOutput::Sink;
    c
}

fn start(c: &VmConfig) -> (Arc<Mutex<Vmm>>, Loop) {
    let (kvm, host) = builder::open_host().expect("KVM");
    let vmm = builder::shared(builder::build(&kvm, host, c).expect("build"));
    let mut el = Loop::new().unwrap();
    el.add_subscriber(vmm.clone());
    (vmm, el)
}

fn run_to_exit(vmm: &Arc<Mutex<Vmm>>, el: &mut Loop) -> VmExit {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        el.run_with_timeout(100).unwrap();
        if let Some(e) = vmm.lock().unwrap().exit() {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "guest did not exit");
    }
}

#[test]
fn reboot_poweroff_and_panic_reach_the_event_loop() {
    if !have_kvm() {
        return;
    }
    for (image, want) in [
        ("hello.elf", VmExit::Reboot),
        ("bootinfo.elf", VmExit::PowerOff),
    ] {
        let (vmm, mut el) = start(&config(image));
        assert_eq!(run_to_exit(&vmm, &mut el), want, "{image}");
    }
    let (vmm, mut el) = start(&config("panic.elf"));
    assert!(matches!(run_to_exit(&vmm, &mut el), VmExit::Panic { .. }));
    let (vmm, mut el) = start(&config("triple_fault.elf"));
    match run_to_exit(&vmm, &mut el) {
        VmExit::Fault(f) => {
            assert_eq!(f.vcpu, 0);
            assert!(f.to_string().contains("triple fault"));
            assert!(f.registers.contains("rip=0x1"));
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

fn counter(vmm: &Arc<Mutex<Vmm>>) -> u64 {
    vmm.lock()
        .unwrap()
        .vm()
        .memory()
        .read_obj::<u64>(GuestAddress(tiny_guests::COUNTER_ADDR))
        .unwrap()
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    if !have_kvm() {
        return;
    }
    let mut c = config("counter.elf");
    c.vcpu_count = 2;
    let (vmm, _el) = start(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&vmm) < 1000 {
        assert!(Instant::now() < deadline, "the counter guest never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    vmm.lock().unwrap().pause().unwrap();
    assert_eq!(vmm.lock().unwrap().state(), RunState::Paused);
    let c1 = counter(&vmm);
    std::thread::sleep(Duration::from_millis(200));
    let c2 = counter(&vmm);
    assert_eq!(c1, c2, "the guest ran while paused");
    // Pausing twice is harmless.
    vmm.lock().unwrap().pause().unwrap();
    vmm.lock().unwrap().resume().unwrap();
    assert_eq!(vmm.lock().unwrap().state(), RunState::Running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&vmm) <= c2 {
        assert!(Instant::now() < deadline, "the guest did not resume");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut v = vmm.lock().unwrap();
    v.stop();
    assert_eq!(v.exit(), Some(&VmExit::Stopped));
    assert!(v.pause().is_err(), "a stopped VM cannot be paused");
}

#[test]
fn ctrl_alt_del_is_injected_while_running_and_refused_after_stop() {
    if !have_kvm() {
        return;
    }
    // The counter guest never touches the keyboard: the controller is in
    // its power-on state and accepts the injection.
    let (vmm, _el) = start(&config("counter.elf"));
    vmm.lock().unwrap().send_ctrl_alt_del().unwrap();
    vmm.lock().unwrap().stop();
    assert!(vmm.lock().unwrap().send_ctrl_alt_del().is_err());
}

#[test]
fn a_guest_above_4_gib_gets_two_memory_slots() {
    if !have_kvm() {
        return;
    }
    let mut c = config("counter.elf");
    c.mem_size_mib = 4096 + 512;
    let (vmm, _el) = start(&c);
    let v = vmm.lock().unwrap();
    let mem = v.vm().memory();
    // Both sides of the gap are guest RAM the VMM can reach.
    mem.write_obj(0xabu8, GuestAddress(0xbfff_ffff)).unwrap();
    mem.write_obj(0xcdu8, GuestAddress(0x1_1fff_ffff)).unwrap();
    assert!(mem.read_obj::<u8>(GuestAddress(0xc000_0000)).is_err());
    drop(v);
    vmm.lock().unwrap().stop();
}
