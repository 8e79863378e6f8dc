//! Runs the real `ember` binary with a hard timeout and captures its output.

#![allow(dead_code)]

pub mod api;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// True when this machine has /dev/kvm; prints why a test is skipped if not.
pub fn have_kvm() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIPPED: no /dev/kvm on this machine");
    }
    ok
}

pub fn image(name: &str) -> String {
    tiny_guests::image(name).display().to_string()
}

/// Runs ember with `args`, killing it after `timeout`.
pub fn ember(args: &[&str], timeout: Duration) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ember {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn quick(args: &[&str]) -> Outcome {
    ember(args, Duration::from_secs(30))
}

/// A scratch file removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str, contents: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("ember-test-{}-{name}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        Scratch(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The value of `key=` on a line of the guest's output.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(&format!("{key}=")))
}

pub fn hex(out: &str, key: &str) -> u64 {
    let v = field(out, key).unwrap_or_else(|| panic!("no {key} in:\n{out}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}
