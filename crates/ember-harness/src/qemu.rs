//! Starting QEMU (TCG, `-cpu EPYC,+svm`) as the nested test host, following
//! its console as it grows, and ending it: normally, on a hard timeout
//! (reported as a hang), or on purpose mid-run ([`RunningHost::kill`]).
//!
//! QEMU gets no network card, ever: `-nodefaults` and no `-netdev`.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::ConsoleParser;
use crate::error::{HarnessError, Result};
use crate::lock::HostLock;
use crate::scratch::ScratchDisk;

/// How often the console file is read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Everything QEMU needs to boot L1.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// L1 kernel (bzImage).
    pub kernel: PathBuf,
    /// L1 initramfs.
    pub initrd: PathBuf,
    /// L1 kernel command line.
    pub append: String,
    /// L1 memory in MiB.
    pub memory_mib: u32,
    /// L1 vCPUs.
    pub smp: u32,
    /// Scratch disk image attached as a virtio-blk drive.
    pub scratch: Option<PathBuf>,
    /// Where QEMU writes the serial console.
    pub console: PathBuf,
    /// Where QEMU writes the second serial port (L1's heartbeat), if any.
    pub heartbeat: Option<PathBuf>,
}

impl QemuSpec {
    /// The QEMU command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg,thread=multi"])
            .args(["-smp", &self.smp.to_string()])
            .args(["-cpu", "EPYC,+svm"])
            .args(["-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &self.append])
            .args(["-nographic", "-no-reboot", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()));
        if let Some(hb) = &self.heartbeat {
            c.arg("-serial").arg(format!("file:{}", hb.display()));
        }
        c.args(["-monitor", "none", "-display", "none"]);
        if let Some(disk) = &self.scratch {
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                disk.display()
            ));
        }
        c
    }
}

/// How one boot of L1 ended.
#[derive(Debug)]
pub struct Attempt {
    /// The parsed console.
    pub parser: ConsoleParser,
    /// Wall time from starting QEMU to its end.
    pub wall: Duration,
    /// QEMU was killed because the hard timeout passed or L1 stalled.
    pub hung: bool,
    /// L1's heartbeat stopped (an L1 hang, found before the hard timeout).
    pub stalled: bool,
    /// QEMU was killed on purpose ([`RunningHost::kill`]).
    pub killed: bool,
    /// QEMU's exit status.
    pub exit: Option<ExitStatus>,
    /// What QEMU printed on stderr.
    pub qemu_stderr: String,
    /// The console log file.
    pub console_path: PathBuf,
    /// The scratch disk, if any.
    pub scratch: Option<ScratchDisk>,
    /// Time spent waiting for the host lock before starting.
    pub lock_wait: Duration,
}

impl Attempt {
    /// Whether L1 ran to its final marker without being killed.
    pub fn completed(&self) -> bool {
        self.parser.done() && !self.hung && !self.killed
    }

    /// A one-line reason why the attempt did not complete (None if it did).
    pub fn failure(&self) -> Option<String> {
        if self.completed() {
            None
        } else if self.stalled {
            Some(format!(
                "hang: L1 stopped responding (no heartbeat) after {:.1} s (QEMU killed)",
                self.wall.as_secs_f64()
            ))
        } else if self.hung {
            Some(format!(
                "hang: no end within {:.1} s (QEMU killed)",
                self.wall.as_secs_f64()
            ))
        } else if self.killed {
            Some("killed on purpose".into())
        } else if self.parser.booted_at.is_none() {
            Some(format!(
                "L1 never reached its init (QEMU exit {:?})",
                self.exit
            ))
        } else {
            Some(format!(
                "QEMU exited ({:?}) before L1 finished its scenarios",
                self.exit
            ))
        }
    }
}

/// A QEMU process running L1. Holds the host lock until it ends. Dropping
/// it kills QEMU.
#[derive(Debug)]
pub struct RunningHost {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    console: File,
    console_path: PathBuf,
    parser: ConsoleParser,
    started: Instant,
    deadline: Instant,
    scratch: Option<ScratchDisk>,
    lock: Option<HostLock>,
    lock_wait: Duration,
    exit: Option<ExitStatus>,
    verbose: bool,
    echoed: usize,
    ended: bool,
    heartbeat: Option<PathBuf>,
    heartbeat_len: u64,
    heartbeat_at: Instant,
    stall_limit: Option<Duration>,
}

impl RunningHost {
    /// Start QEMU. `timeout` is the hard limit for the whole run; `lock`
    /// (normally held) is released when the host ends. If the spec has a
    /// heartbeat file, see [`RunningHost::set_stall_limit`].
    pub fn spawn(
        spec: &QemuSpec,
        timeout: Duration,
        scratch: Option<ScratchDisk>,
        lock: Option<HostLock>,
    ) -> Result<RunningHost> {
        File::create(&spec.console)
            .map_err(|e| HarnessError::io(format!("create {}", spec.console.display()), e))?;
        let console = File::open(&spec.console)
            .map_err(|e| HarnessError::io(format!("open {}", spec.console.display()), e))?;
        let mut cmd = spec.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| HarnessError::io("start qemu-system-x86_64", e))?;
        let started = Instant::now();
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        });
        let verbose = std::env::var_os("EMBER_HARNESS_VERBOSE").is_some_and(|v| v != "0");
        Ok(RunningHost {
            child,
            stderr,
            console,
            console_path: spec.console.clone(),
            parser: ConsoleParser::new(),
            started,
            deadline: started + timeout,
            scratch,
            lock_wait: lock.as_ref().map_or(Duration::ZERO, HostLock::waited),
            lock,
            exit: None,
            verbose,
            echoed: 0,
            ended: false,
            heartbeat: spec.heartbeat.clone(),
            heartbeat_len: 0,
            heartbeat_at: started,
            stall_limit: None,
        })
    }

    /// Treat L1 as hung when its heartbeat (second serial port) has not
    /// grown for `limit` (counting from QEMU's start until the first
    /// beat). Checked by [`RunningHost::wait`]. None disables the check.
    pub fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.stall_limit = limit;
    }

    /// Whether L1's heartbeat has been silent for longer than the limit.
    pub fn stalled(&mut self) -> bool {
        let (Some(hb), Some(limit)) = (&self.heartbeat, self.stall_limit) else {
            return false;
        };
        let len = std::fs::metadata(hb).map_or(0, |m| m.len());
        if len != self.heartbeat_len {
            self.heartbeat_len = len;
            self.heartbeat_at = Instant::now();
        }
        self.heartbeat_at.elapsed() > limit
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console parsed so far (call [`RunningHost::poll`] to update).
    pub fn parser(&self) -> &ConsoleParser {
        &self.parser
    }

    /// The scratch disk, if any.
    pub fn scratch(&self) -> Option<&ScratchDisk> {
        self.scratch.as_ref()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Read new console output. Returns whether QEMU is still running.
    pub fn poll(&mut self) -> Result<bool> {
        let mut buf = Vec::new();
        self.console
            .read_to_end(&mut buf)
            .map_err(|e| HarnessError::io(format!("read {}", self.console_path.display()), e))?;
        if !buf.is_empty() {
            self.parser.feed(&buf, self.started.elapsed());
        }
        if self.verbose {
            for line in &self.parser.lines()[self.echoed..] {
                eprintln!("[L1 {:7.2}] {line}", self.started.elapsed().as_secs_f64());
            }
            self.echoed = self.parser.lines().len();
        }
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| HarnessError::io("wait for qemu", e))?;
        }
        Ok(self.exit.is_none())
    }

    /// Wait until `cond` holds for the console, QEMU exits, `timeout`
    /// passes or the run's hard deadline passes. Returns whether `cond`
    /// held.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&ConsoleParser) -> bool,
    ) -> Result<bool> {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            let running = self.poll()?;
            if cond(&self.parser) {
                return Ok(true);
            }
            if !running || Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until a console line contains `needle` (see
    /// [`RunningHost::wait_until`]).
    pub fn wait_for_text(&mut self, needle: &str, timeout: Duration) -> Result<bool> {
        let mut scanned = 0;
        self.wait_until(timeout, |p| {
            let lines = p.lines();
            let hit = lines[scanned..].iter().any(|l| l.contains(needle));
            scanned = lines.len();
            hit
        })
    }

    /// Kill QEMU now (SIGKILL), e.g. to test durability, and collect what
    /// it left behind. The scratch disk can be inspected afterwards.
    pub fn kill(mut self) -> Result<Attempt> {
        self.end(true, false, false)
    }

    /// Wait for QEMU to end by itself; past the hard deadline it is killed
    /// and the attempt is reported as a hang.
    pub fn wait(mut self) -> Result<Attempt> {
        loop {
            if !self.poll()? {
                return self.end(false, false, false);
            }
            if Instant::now() >= self.deadline {
                return self.end(false, true, false);
            }
            if self.stalled() {
                return self.end(false, true, true);
            }
            std::thread::sleep(POLL);
        }
    }

    fn kill_qemu(&mut self) {
        crate::util::kill_group(self.child.id());
        let _ = self.child.kill();
    }

    fn end(&mut self, killed: bool, hung: bool, stalled: bool) -> Result<Attempt> {
        if self.exit.is_none() {
            self.kill_qemu();
            self.exit = Some(
                self.child
                    .wait()
                    .map_err(|e| HarnessError::io("wait for qemu", e))?,
            );
        }
        let wall = self.started.elapsed();
        self.ended = true;
        // Whatever QEMU wrote last.
        self.poll()?;
        self.parser.finish(wall);
        let qemu_stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        self.lock = None;
        Ok(Attempt {
            parser: std::mem::take(&mut self.parser),
            wall,
            hung,
            stalled,
            killed,
            exit: self.exit,
            qemu_stderr,
            console_path: self.console_path.clone(),
            scratch: self.scratch.clone(),
            lock_wait: self.lock_wait,
        })
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        if !self.ended && self.exit.is_none() {
            self.kill_qemu();
            let _ = self.child.wait();
        }
    }
}

/// Keep only the QEMU warnings worth showing (TCG's "doesn't support
/// requested feature" lines are expected and dropped).
pub fn interesting_stderr(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("TCG doesn't support requested feature"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The console log of a run directory.
pub fn console_path(run_dir: &Path) -> PathBuf {
    run_dir.join("console.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_no_network_and_has_scratch() {
        let spec = QemuSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            append: "console=ttyS0".into(),
            memory_mib: 2048,
            smp: 2,
            scratch: Some("/s.img".into()),
            console: "/c.log".into(),
            heartbeat: Some("/h.log".into()),
        };
        let cmd = spec.command();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-nodefaults"));
        assert!(!joined.contains("-netdev") && !joined.contains("-nic"));
        assert!(joined.contains("-cpu EPYC,+svm"));
        assert!(joined.contains("-serial file:/c.log -serial file:/h.log"));
        assert!(joined.contains("file=/s.img,format=raw,if=virtio"));
        assert!(joined.contains("-accel tcg,thread=multi"));
    }

    #[test]
    fn stderr_filter() {
        let s = "qemu: warning: TCG doesn't support requested feature: x\nreal problem";
        assert_eq!(interesting_stderr(s), "real problem");
    }
}
