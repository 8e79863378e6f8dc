//! Writing scenario scripts that boot an L2 guest with ember inside L1,
//! and checking whether an ember binary is ready for that.
//!
//! ```
//! use ember_harness::l2::L2Boot;
//! let script = L2Boot::new("vmlinux")
//!     .initrd("initrd")
//!     .guest_run("hello")
//!     .script();
//! assert!(script.contains("--no-api --kernel \"$EMBER_L2/vmlinux\""));
//! assert!(script.contains("EMBER-EXIT rc="));
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::find_ember;
use crate::util::run_captured;

/// One ember invocation inside L1 (`ember --no-api --kernel ...`).
#[derive(Debug, Clone)]
pub struct L2Boot {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    vcpus: u32,
    mem_mib: u32,
    boot_timer: bool,
    extra_args: Vec<String>,
    time_limit: Option<Duration>,
}

impl L2Boot {
    /// Boot `$EMBER_L2/<kernel>` with `console=ttyS0 reboot=k panic=1`,
    /// 1 vCPU, 256 MiB and `--boot-timer`.
    pub fn new(kernel: &str) -> Self {
        L2Boot {
            kernel: kernel.to_string(),
            initrd: None,
            cmdline: "console=ttyS0 reboot=k panic=1".to_string(),
            vcpus: 1,
            mem_mib: 256,
            boot_timer: true,
            extra_args: Vec::new(),
            time_limit: None,
        }
    }

    /// Use `$EMBER_L2/<name>` as the initramfs.
    pub fn initrd(mut self, name: &str) -> Self {
        self.initrd = Some(name.to_string());
        self
    }

    /// Append words to the guest kernel command line.
    pub fn cmdline(mut self, words: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(words);
        self
    }

    /// Ask the guest init to run `/ember/run/<names>` (comma-separated).
    pub fn guest_run(self, names: &str) -> Self {
        self.cmdline(&format!("ember.run={names}"))
    }

    /// Number of vCPUs.
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Guest memory in MiB.
    pub fn mem_mib(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Whether to pass `--boot-timer` (default on).
    pub fn boot_timer(mut self, on: bool) -> Self {
        self.boot_timer = on;
        self
    }

    /// More ember arguments (each one word; quoted for sh).
    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_string());
        self
    }

    /// Kill ember (SIGKILL) after this long inside L1 (busybox `timeout`).
    pub fn time_limit(mut self, t: Duration) -> Self {
        self.time_limit = Some(t);
        self
    }

    /// The sh commands that run ember with stderr merged into stdout,
    /// preceded by `EMBER-START uptime=<L1 /proc/uptime>` and followed by
    /// `EMBER-EXIT rc=<ember's exit code>`.
    pub fn script(&self) -> String {
        let mut s = String::from("echo \"EMBER-START uptime=$(cut -d' ' -f1 /proc/uptime)\"\n");
        if let Some(t) = self.time_limit {
            s.push_str(&format!("timeout -s KILL {} ", t.as_secs().max(1)));
        }
        s.push_str(&format!(
            "\"$EMBER\" --no-api --kernel \"$EMBER_L2/{}\"",
            self.kernel
        ));
        if let Some(i) = &self.initrd {
            s.push_str(&format!(" --initrd \"$EMBER_L2/{i}\""));
        }
        s.push_str(&format!(
            " --cmdline {} --vcpus {} --mem {}",
            sh_quote(&self.cmdline),
            self.vcpus,
            self.mem_mib
        ));
        if self.boot_timer {
            s.push_str(" --boot-timer");
        }
        for a in &self.extra_args {
            s.push(' ');
            s.push_str(&sh_quote(a));
        }
        s.push_str(" 2>&1; echo \"EMBER-EXIT rc=$?\"");
        s
    }
}

impl L2Boot {
    /// The same boot with QEMU (`-M microvm,acpi=on -accel kvm`) instead
    /// of ember, as a reference VMM inside L1: needs
    /// [`crate::NestedHost::reference_qemu`]. QEMU wants a bzImage (or a
    /// vmlinux with a PVH note) as the kernel; `--boot-timer` and extra
    /// ember arguments do not apply. Ends with `EMBER-EXIT rc=<n>` too.
    pub fn qemu_script(&self) -> String {
        let mut s = String::new();
        if let Some(t) = self.time_limit {
            s.push_str(&format!("timeout -s KILL {} ", t.as_secs().max(1)));
        }
        s.push_str(&format!(
            "qemu-system-x86_64 -L /usr/share/qemu -M microvm,acpi=on -accel kvm -cpu host \
             -m {} -smp {} -kernel \"$EMBER_L2/{}\"",
            self.mem_mib, self.vcpus, self.kernel
        ));
        if let Some(i) = &self.initrd {
            s.push_str(&format!(" -initrd \"$EMBER_L2/{i}\""));
        }
        s.push_str(&format!(
            " -append {} -nodefaults -serial stdio -no-reboot -display none -monitor none \
             2>&1; echo \"EMBER-EXIT rc=$?\"",
            sh_quote(&self.cmdline)
        ));
        s
    }
}

/// Quote a word for sh (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Why no ember binary can boot L2 guests yet, or its path if one can: it
/// must exist and its `--help` must mention `--no-api` and `--kernel`.
pub fn ember_ready() -> Result<PathBuf, String> {
    let Some(path) = find_ember() else {
        return Err(
            "no ember binary (build it with `cargo build --release -p ember`, or set EMBER_BIN)"
                .into(),
        );
    };
    ember_accepts_cli(&path).map(|()| path)
}

/// Check that `path --help` mentions `--no-api` and `--kernel`.
pub fn ember_accepts_cli(path: &Path) -> Result<(), String> {
    let out = run_captured(Command::new(path).arg("--help"), Duration::from_secs(10))
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if text.contains("--no-api") && text.contains("--kernel") {
        Ok(())
    } else {
        Err(format!(
            "{} --help does not mention --no-api and --kernel yet",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_shape() {
        let s = L2Boot::new("k")
            .initrd("i")
            .guest_run("a,b")
            .vcpus(2)
            .mem_mib(512)
            .arg("--x=it's")
            .time_limit(Duration::from_secs(30))
            .script();
        assert_eq!(
            s,
            "echo \"EMBER-START uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
             timeout -s KILL 30 \"$EMBER\" --no-api --kernel \"$EMBER_L2/k\" --initrd \"$EMBER_L2/i\" \
             --cmdline 'console=ttyS0 reboot=k panic=1 ember.run=a,b' --vcpus 2 --mem 512 \
             --boot-timer '--x=it'\\''s' 2>&1; echo \"EMBER-EXIT rc=$?\""
        );
    }

    #[test]
    fn qemu_reference_script() {
        let s = L2Boot::new("bz").initrd("i").vcpus(2).qemu_script();
        assert!(
            s.starts_with("qemu-system-x86_64 -L /usr/share/qemu -M microvm,acpi=on -accel kvm")
        );
        assert!(s.contains("-kernel \"$EMBER_L2/bz\" -initrd \"$EMBER_L2/i\""));
        assert!(s.contains("-smp 2") && s.contains("-nodefaults"));
        assert!(!s.contains("-netdev") && !s.contains("-nic"));
        assert!(s.ends_with("echo \"EMBER-EXIT rc=$?\""));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("'"), "''\\'''");
    }
}
