//! Snapshots on real KVM with tiny guests, in-process: a counting guest is
//! paused, snapshotted and restored into a new VM, which goes on counting
//! from where it was; every kind of hostile file is refused with a clear
//! error and nothing half-built. (The same through the real binary, in a
//! new process, is in `crates/ember/tests/snapshot.rs`.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_state::envelope::{reseal, seal_version};
use ember_vmm::builder;
use ember_vmm::config::{ConsoleOutput, VmConfig};
use ember_vmm::snapshot::{self, decode_state, RestoreError, RestoreOptions};
use ember_vmm::vmm::{RunState, Vmm};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-vmm-snap-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn counter(vmm: &Arc<Mutex<Vmm>>) -> u64 {
    vmm.lock()
        .unwrap()
        .vm()
        .memory()
        .read_obj::<u64>(GuestAddress(tiny_guests::COUNTER_ADDR))
        .unwrap()
}

fn wait_counter_above(vmm: &Arc<Mutex<Vmm>>, el: &mut Loop, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        el.run_with_timeout(20).unwrap();
        let c = counter(vmm);
        if c > at_least {
            return c;
        }
        assert!(vmm.lock().unwrap().exit().is_none(), "the guest ended");
        assert!(Instant::now() < deadline, "the counter stayed at {c}");
    }
}

/// Boots `counter.elf` (2 vCPUs, `mib` MiB), lets it count, pauses it and
/// snapshots it into `d`. Returns the counter value in the snapshot.
fn snapshot_counter(d: &Path, mib: usize) -> u64 {
    let (kvm, host) = builder::open_host().expect("KVM");
    let mut c = VmConfig::new(tiny_guests::image("counter.elf"));
    c.console = ConsoleOutput::Sink;
    c.mem_size_mib = mib;
    c.vcpu_count = 2;
    let vmm = builder::shared(builder::build(&kvm, host, &c).expect("build"));
    let mut el = Loop::new().unwrap();
    el.add_subscriber(vmm.clone());
    wait_counter_above(&vmm, &mut el, 1000);
    let mut v = vmm.lock().unwrap();
    v.pause().unwrap();
    let at = v
        .vm()
        .memory()
        .read_obj::<u64>(GuestAddress(tiny_guests::COUNTER_ADDR))
        .unwrap();
    let info = v.snapshot(&d.join("state"), &d.join("mem")).unwrap();
    assert!(info.memory.data_pages >= 2, "{info:?}");
    assert!(info.memory.data_pages < 64, "{info:?}");
    // Paused means paused: the snapshot did not move the counter.
    assert_eq!(
        v.vm()
            .memory()
            .read_obj::<u64>(GuestAddress(tiny_guests::COUNTER_ADDR))
            .unwrap(),
        at
    );
    v.stop();
    at
}

fn restore(d: &Path, resume: bool) -> Result<Vmm, RestoreError> {
    let (kvm, host) = builder::open_host().expect("KVM");
    let mut o = RestoreOptions::new(d.join("state"), d.join("mem"));
    o.console = ConsoleOutput::Sink;
    o.resume = resume;
    snapshot::restore(&kvm, host, &o)
}

#[test]
fn a_restored_guest_counts_on_from_where_it_was() {
    let d = dir("counts-on");
    let at = snapshot_counter(&d, 64);
    let vmm = builder::shared(restore(&d, false).expect("restore"));
    assert_eq!(vmm.lock().unwrap().state(), RunState::Paused);
    assert_eq!(counter(&vmm), at, "the restored memory is the snapshot's");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&vmm), at, "a paused restore does not run");
    vmm.lock().unwrap().resume().unwrap();
    let mut el = Loop::new().unwrap();
    el.add_subscriber(vmm.clone());
    let now = wait_counter_above(&vmm, &mut el, at + 1000);
    assert!(now > at);
    // The snapshot's memory file is untouched by the restored guest.
    let mem = std::fs::read(d.join("mem")).unwrap();
    let off = tiny_guests::COUNTER_ADDR as usize;
    let in_file = u64::from_le_bytes(mem[off..off + 8].try_into().unwrap());
    assert_eq!(in_file, at);
    vmm.lock().unwrap().stop();
}

#[test]
fn a_restored_vm_can_be_snapshotted_again_to_the_file_it_runs_from() {
    let d = dir("again");
    let at = snapshot_counter(&d, 32);
    let vmm = builder::shared(restore(&d, true).expect("restore"));
    let mut el = Loop::new().unwrap();
    el.add_subscriber(vmm.clone());
    let later = wait_counter_above(&vmm, &mut el, at + 1000);
    let mut v = vmm.lock().unwrap();
    v.pause().unwrap();
    let frozen = v
        .vm()
        .memory()
        .read_obj::<u64>(GuestAddress(tiny_guests::COUNTER_ADDR))
        .unwrap();
    assert!(frozen >= later);
    v.snapshot(&d.join("state"), &d.join("mem")).unwrap();
    v.stop();
    drop(v);
    let again = builder::shared(restore(&d, false).expect("second restore"));
    assert_eq!(counter(&again), frozen);
    again.lock().unwrap().stop();
}

fn err_of(d: &Path) -> String {
    match restore(d, false) {
        Ok(_) => panic!("a bad snapshot was restored"),
        Err(e) => e.to_string(),
    }
}

fn copy_snapshot(from: &Path, name: &str) -> PathBuf {
    let d = dir(name);
    std::fs::copy(from.join("state"), d.join("state")).unwrap();
    std::fs::copy(from.join("mem"), d.join("mem")).unwrap();
    d
}

/// Decodes the state, lets `edit` change it, writes it back sealed.
fn edit_state(d: &Path, edit: impl FnOnce(&mut snapshot::MicrovmState)) {
    let bytes = std::fs::read(d.join("state")).unwrap();
    let env = ember_state::open(&bytes).unwrap();
    let mut s: snapshot::MicrovmState = env.decode().unwrap();
    edit(&mut s);
    std::fs::write(d.join("state"), ember_state::seal(&s).unwrap()).unwrap();
}

#[test]
fn hostile_and_mismatched_files_are_refused_clearly() {
    let good = dir("hostile-good");
    snapshot_counter(&good, 16);
    let state = std::fs::read(good.join("state")).unwrap();

    // Truncated state.
    let d = copy_snapshot(&good, "trunc");
    std::fs::write(d.join("state"), &state[..state.len() / 2]).unwrap();
    assert!(err_of(&d).contains("truncated"), "{}", err_of(&d));

    // One bit flipped anywhere in the state.
    for at in [9usize, 30, state.len() / 2, state.len() - 1] {
        let d = copy_snapshot(&good, &format!("flip{at}"));
        let mut s = state.clone();
        s[at] ^= 0x10;
        std::fs::write(d.join("state"), &s).unwrap();
        let e = err_of(&d);
        assert!(
            e.contains("corrupt") || e.contains("version") || e.contains("header"),
            "bit flip at {at}: {e}"
        );
    }

    // Written by a newer Ember.
    let d = copy_snapshot(&good, "newer");
    let env = ember_state::open(&state).unwrap();
    let s: snapshot::MicrovmState = env.decode().unwrap();
    std::fs::write(d.join("state"), seal_version(2, &s).unwrap()).unwrap();
    assert!(err_of(&d).contains("newer Ember"), "{}", err_of(&d));

    // Not a state at all.
    let d = copy_snapshot(&good, "foreign");
    std::fs::write(d.join("state"), b"{\"not\": \"a snapshot\"}").unwrap();
    assert!(err_of(&d).contains("magic"), "{}", err_of(&d));

    // Memory file truncated, bit-flipped, or from another snapshot.
    let d = copy_snapshot(&good, "memtrunc");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("mem"))
        .unwrap();
    f.set_len((16 << 20) - 4096).unwrap();
    assert!(err_of(&d).contains("truncated"), "{}", err_of(&d));
    let d = copy_snapshot(&good, "memflip");
    let mut m = std::fs::read(d.join("mem")).unwrap();
    m[tiny_guests::COUNTER_ADDR as usize] ^= 1;
    std::fs::write(d.join("mem"), &m).unwrap();
    assert!(err_of(&d).contains("does not match"), "{}", err_of(&d));
    let other = dir("hostile-other");
    snapshot_counter(&other, 32);
    let d = copy_snapshot(&good, "memforeign");
    std::fs::copy(other.join("mem"), d.join("mem")).unwrap();
    assert!(
        err_of(&d).contains("truncated or belongs to another snapshot"),
        "{}",
        err_of(&d)
    );

    // A state for another vCPU count or memory size than it holds.
    let d = copy_snapshot(&good, "vcpus");
    edit_state(&d, |s| s.machine.vcpu_count = 3);
    assert!(
        err_of(&d).contains("3 vCPUs but holds the state of 2"),
        "{}",
        err_of(&d)
    );
    let d = copy_snapshot(&good, "memsize");
    edit_state(&d, |s| s.machine.mem_size_mib = 32);
    assert!(err_of(&d).contains("32 MiB"), "{}", err_of(&d));

    // CPU features the host lacks (SGX is never offered on this AMD host,
    // nor by KVM on AMD).
    let d = copy_snapshot(&good, "cpu");
    edit_state(&d, |s| {
        for v in &mut s.vcpus {
            for e in &mut v.cpuid {
                if e.function == 7 && e.index == 0 {
                    e.ebx |= 1 << 2;
                }
            }
        }
    });
    let e = err_of(&d);
    assert!(e.contains("sgx (CPUID 0x7.0 EBX bit 2)"), "{e}");

    // A TSC 1% off, on a host that cannot scale the TSC.
    let d = copy_snapshot(&good, "tsc");
    let mut saved_khz = 0;
    edit_state(&d, |s| {
        for v in &mut s.vcpus {
            saved_khz = v.tsc_khz;
            v.tsc_khz += v.tsc_khz / 100;
        }
    });
    let (kvm, _) = builder::open_host().unwrap();
    if saved_khz == 0 {
        eprintln!("SKIPPED the TSC case: KVM does not report the TSC frequency here");
    } else if kvm.check_extension(kvm_ioctls::Cap::TscControl) {
        eprintln!("SKIPPED the TSC case: this host's KVM scales the TSC, so it restores");
    } else {
        let e = err_of(&d);
        assert!(e.contains("TSC") && e.contains("kHz"), "{e}");
    }

    // The good one still restores.
    restore(&good, false)
        .expect("the unmodified snapshot")
        .stop();
}

#[test]
fn every_envelope_byte_is_checked_before_decoding() {
    let good = dir("envelope");
    snapshot_counter(&good, 8);
    let state = std::fs::read(good.join("state")).unwrap();
    // Every prefix fails, none panics.
    for n in (0..state.len()).step_by(97) {
        assert!(decode_state(&state[..n]).is_err());
    }
    // A resealed state with a lying vCPU count decodes but fails the check.
    let env = ember_state::open(&state).unwrap();
    let mut s: snapshot::MicrovmState = env.decode().unwrap();
    s.machine.vcpu_count = 200;
    let mut bytes = ember_state::seal(&s).unwrap();
    assert!(decode_state(&bytes)
        .unwrap_err()
        .to_string()
        .contains("200 vCPUs"));
    let last = bytes.len() - 9;
    bytes[last] ^= 1;
    reseal(&mut bytes);
    assert!(decode_state(&bytes).is_err());
}
