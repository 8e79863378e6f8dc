//! The nested test host: build an L1 image for a batch of scenarios, boot
//! it under QEMU (one emulated host at a time, behind a lock), retry once
//! if L1 hangs or dies, and report per scenario.
//!
//! ```no_run
//! use ember_harness::NestedHost;
//! let report = NestedHost::new()
//!     .scenario("kvm", "test -c /dev/kvm && echo kvm is here")
//!     .run()
//!     .unwrap();
//! assert_eq!(report.scenario("kvm").unwrap().rc, Some(0), "{}", report.summary());
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::artifacts::debian_kernel;
use crate::console::{GuestOutput, ScenarioSection};
use crate::error::{HarnessError, Result};
use crate::lock::HostLock;
use crate::qemu::{console_path, interesting_stderr, Attempt, QemuSpec, RunningHost};
use crate::scratch::ScratchDisk;
use crate::util::{cache_dir, repo_root, run_script};

/// Time limit for building the L1 image.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Run directories kept under `<cache>/runs` (older ones are pruned).
const KEEP_RUNS: usize = 24;

/// Where the ember binary for L1 comes from.
#[derive(Debug, Clone)]
enum EmberBin {
    /// [`find_ember`].
    Default,
    Path(PathBuf),
    None,
}

/// One scenario: a busybox sh script run inside L1.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Script text.
    pub script: String,
}

/// Builder and runner of one batch of scenarios on the nested test host.
#[derive(Debug, Clone)]
pub struct NestedHost {
    ember: EmberBin,
    l2: Vec<(PathBuf, String)>,
    files: Vec<(PathBuf, String)>,
    programs: Vec<(PathBuf, Option<String>)>,
    scenarios: Vec<Scenario>,
    timeout: Option<Duration>,
    scenario_timeout: Duration,
    retries: u32,
    scratch_mib: Option<u64>,
    memory_mib: u32,
    smp: u32,
    stall_limit: Option<Duration>,
}

impl Default for NestedHost {
    fn default() -> Self {
        Self::new()
    }
}

/// The ember binary the harness would use by default, if it exists:
/// `$EMBER_BIN`, else the newest of `release/ember` and `debug/ember` under
/// `$CARGO_TARGET_DIR` and `<repo>/target` (`cargo test` builds the debug
/// one; a stale release binary must not win over a fresh debug build).
pub fn find_ember() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    [target, Some(repo_root().join("target"))]
        .into_iter()
        .flatten()
        .flat_map(|t| [t.join("release/ember"), t.join("debug/ember")])
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            (m.is_file()).then(|| (m.modified().ok(), p))
        })
        .max_by_key(|(mtime, _)| *mtime)
        .map(|(_, p)| p)
}

impl NestedHost {
    /// A host with no scenarios yet: 2 vCPUs, 2048 MiB, a 256 MiB scratch
    /// disk, one retry, 120 s per scenario.
    pub fn new() -> Self {
        NestedHost {
            ember: EmberBin::Default,
            l2: Vec::new(),
            files: Vec::new(),
            programs: Vec::new(),
            scenarios: Vec::new(),
            timeout: None,
            scenario_timeout: Duration::from_secs(120),
            retries: 1,
            scratch_mib: Some(256),
            memory_mib: 2048,
            smp: 2,
            stall_limit: Some(Duration::from_secs(60)),
        }
    }

    /// Ship this ember binary (as `/usr/local/bin/ember`, `$EMBER`).
    pub fn ember(mut self, path: impl Into<PathBuf>) -> Self {
        self.ember = EmberBin::Path(path.into());
        self
    }

    /// Ship no ember binary.
    pub fn without_ember(mut self) -> Self {
        self.ember = EmberBin::None;
        self
    }

    /// Ship an L2 kernel or image as `$EMBER_L2/<name>`.
    pub fn l2_file(mut self, src: impl Into<PathBuf>, name: &str) -> Self {
        self.l2.push((src.into(), name.to_string()));
        self
    }

    /// Ship any file at `dst` (absolute path in L1).
    pub fn file(mut self, src: impl Into<PathBuf>, dst: &str) -> Self {
        self.files.push((src.into(), dst.to_string()));
        self
    }

    /// Ship a program with the shared libraries `ldd` lists, as `dst`
    /// (default `/usr/local/bin/<file name>`).
    pub fn program(mut self, src: impl Into<PathBuf>, dst: Option<&str>) -> Self {
        self.programs.push((src.into(), dst.map(str::to_string)));
        self
    }

    /// Ship QEMU itself (with its libraries and the microvm firmware) so
    /// that scenarios can boot L2 with QEMU/KVM as a reference VMM, e.g.
    /// to tell a guest-side problem from an ember problem (see
    /// [`crate::L2Boot::qemu_script`]).
    pub fn reference_qemu(mut self) -> Result<Self> {
        let qemu = crate::util::which("qemu-system-x86_64")
            .ok_or_else(|| HarnessError::Missing("qemu-system-x86_64".into()))?;
        self.programs
            .push((qemu, Some("/usr/local/bin/qemu-system-x86_64".into())));
        for fw in ["bios-microvm.bin", "linuxboot_dma.bin"] {
            let src = Path::new("/usr/share/qemu").join(fw);
            let real = std::fs::canonicalize(&src)
                .map_err(|e| HarnessError::io(format!("resolve {}", src.display()), e))?;
            self.files.push((real, format!("/usr/share/qemu/{fw}")));
        }
        Ok(self)
    }

    /// Add a scenario (run in the order added).
    pub fn scenario(mut self, name: &str, script: &str) -> Self {
        self.scenarios.push(Scenario {
            name: name.to_string(),
            script: script.to_string(),
        });
        self
    }

    /// Hard timeout for one boot of L1 (default: 60 s + 90 s a scenario).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Time limit of each scenario, enforced inside L1 (default 120 s).
    pub fn scenario_timeout(mut self, t: Duration) -> Self {
        self.scenario_timeout = t;
        self
    }

    /// How many times a hung or dead L1 is booted again (default 1).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Scratch disk size in MiB (None: no scratch disk).
    pub fn scratch_mib(mut self, mib: Option<u64>) -> Self {
        self.scratch_mib = mib;
        self
    }

    /// Declare L1 hung when its heartbeat (a line every 2 s on a second
    /// serial port) stops for this long (default 60 s; None: only the hard
    /// timeout). A hang found this way is retried like any other.
    pub fn stall_limit(mut self, limit: Option<Duration>) -> Self {
        self.stall_limit = limit;
        self
    }

    /// L1 memory in MiB (default 2048).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// L1 vCPUs (default 2).
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }

    fn hard_timeout(&self) -> Duration {
        self.timeout
            .unwrap_or(Duration::from_secs(60 + 90 * self.scenarios.len() as u64))
    }

    fn ember_path(&self) -> Result<Option<PathBuf>> {
        match &self.ember {
            EmberBin::Default => Ok(find_ember()),
            EmberBin::Path(p) if p.is_file() => Ok(Some(p.clone())),
            EmberBin::Path(p) => Err(HarnessError::Missing(format!(
                "ember binary {}",
                p.display()
            ))),
            EmberBin::None => Ok(None),
        }
    }

    /// Build the L1 image in a fresh run directory (no QEMU yet).
    pub fn prepare(&self) -> Result<PreparedHost> {
        let started = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.scenarios {
            let ok = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok || s.name == "ORDER" || !seen.insert(s.name.as_str()) {
                return Err(HarnessError::Invalid(format!(
                    "bad or duplicate scenario name {:?}",
                    s.name
                )));
            }
        }
        let kernel = debian_kernel()?;
        let run_dir = new_run_dir()?;
        let scen_dir = run_dir.join("scenarios");
        std::fs::create_dir_all(&scen_dir)
            .map_err(|e| HarnessError::io(format!("create {}", scen_dir.display()), e))?;

        let image = run_dir.join("l1.cpio");
        let mut args: Vec<String> = vec![
            "-o".into(),
            image.display().to_string(),
            "--kernel-dir".into(),
            kernel.dir.display().to_string(),
            "--ember".into(),
        ];
        let ember = self.ember_path()?;
        args.push(match &ember {
            Some(p) => p.display().to_string(),
            None => "none".into(),
        });
        for s in &self.scenarios {
            let path = scen_dir.join(format!("{}.sh", s.name));
            std::fs::write(&path, format!("#!/bin/sh\n{}\n", s.script))
                .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))?;
            args.push("--scenario".into());
            args.push(format!("{}:{}", path.display(), s.name));
        }
        for (src, name) in &self.l2 {
            args.push("--l2".into());
            args.push(format!("{}:{name}", src.display()));
        }
        for (src, dst) in &self.files {
            args.push("--file".into());
            args.push(format!("{}:{dst}", src.display()));
        }
        for (src, dst) in &self.programs {
            args.push("--bin".into());
            args.push(match dst {
                Some(d) => format!("{}:{d}", src.display()),
                None => src.display().to_string(),
            });
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("nested/build-l1-image.sh", &argv, BUILD_TIMEOUT)?;

        let mut append = format!(
            "console=ttyS0 panic=-1 rdinit=/init quiet ember.heartbeat=1 ember.scenario_timeout={}",
            self.scenario_timeout.as_secs().max(1)
        );
        if self.scratch_mib.is_some() {
            append.push_str(" ember.scratch=1");
        }
        Ok(PreparedHost {
            spec: QemuSpec {
                kernel: kernel.vmlinuz,
                initrd: image,
                append,
                memory_mib: self.memory_mib,
                smp: self.smp,
                scratch: self.scratch_mib.map(|_| run_dir.join("scratch.img")),
                console: console_path(&run_dir),
                heartbeat: Some(run_dir.join("heartbeat.log")),
            },
            stall_limit: self.stall_limit,
            scratch_mib: self.scratch_mib,
            timeout: self.hard_timeout(),
            retries: self.retries,
            scenarios: self.scenarios.iter().map(|s| s.name.clone()).collect(),
            ember,
            run_dir,
            build_time: started.elapsed(),
        })
    }

    /// Build, boot and wait, retrying a hung or dead L1 up to the retry
    /// count. Scenario failures are not retried: they are results.
    pub fn run(&self) -> Result<RunReport> {
        self.prepare()?.run()
    }

    /// Build and boot once (no retry), and hand back the running host, so
    /// that a test can watch the console and kill QEMU mid-run.
    pub fn start(&self) -> Result<RunningHost> {
        self.prepare()?.start()
    }
}

/// An L1 image, ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedHost {
    /// The QEMU invocation.
    pub spec: QemuSpec,
    scratch_mib: Option<u64>,
    stall_limit: Option<Duration>,
    /// Hard timeout of one boot.
    pub timeout: Duration,
    retries: u32,
    /// Scenario names in order.
    pub scenarios: Vec<String>,
    /// The ember binary shipped, if any.
    pub ember: Option<PathBuf>,
    /// Directory of this run (image, console log, scratch disk).
    pub run_dir: PathBuf,
    /// How long building the image took.
    pub build_time: Duration,
}

impl PreparedHost {
    /// Take the host lock, make a fresh scratch disk and start QEMU.
    pub fn start(&self) -> Result<RunningHost> {
        let lock = HostLock::acquire(&cache_dir().join("locks").join("nested-host.lock"))?;
        let scratch = match (self.scratch_mib, &self.spec.scratch) {
            (Some(mib), Some(path)) => Some(ScratchDisk::create(path, mib)?),
            _ => None,
        };
        let mut host = RunningHost::spawn(&self.spec, self.timeout, scratch, Some(lock))?;
        host.set_stall_limit(self.stall_limit);
        Ok(host)
    }

    /// Boot until L1 completes or the retries are used up.
    pub fn run(&self) -> Result<RunReport> {
        let started = Instant::now();
        let mut failed = Vec::new();
        loop {
            let attempt = self.start()?.wait()?;
            match attempt.failure() {
                Some(reason) if (failed.len() as u32) < self.retries => {
                    eprintln!(
                        "ember-harness: L1 attempt {} failed ({reason}); retrying once more. Console tail:\n{}",
                        failed.len() + 1,
                        attempt.parser.tail(15)
                    );
                    failed.push(FailedAttempt {
                        reason,
                        console_tail: attempt.parser.tail(40),
                        wall: attempt.wall,
                    });
                    // Keep the failed console for inspection.
                    let _ = std::fs::rename(
                        &attempt.console_path,
                        self.run_dir
                            .join(format!("console.attempt{}.log", failed.len())),
                    );
                }
                _ => {
                    return Ok(RunReport::new(
                        self,
                        attempt,
                        failed,
                        started.elapsed() + self.build_time,
                    ))
                }
            }
        }
    }
}

/// An attempt that did not complete and was retried.
#[derive(Debug, Clone)]
pub struct FailedAttempt {
    /// Why it failed (hang, QEMU died, ...).
    pub reason: String,
    /// The last lines of its console.
    pub console_tail: String,
    /// How long it ran.
    pub wall: Duration,
}

/// The result of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Exit code (None: it never ended, or never started).
    pub rc: Option<i32>,
    /// Whether it started at all.
    pub started: bool,
    /// L1 killed it for running past the scenario time limit.
    pub timed_out: bool,
    /// Its console section.
    pub output: String,
    /// Duration measured inside L1.
    pub l1_ms: Option<u64>,
    /// Duration measured on the host (console timestamps).
    pub host_time: Option<Duration>,
}

impl ScenarioResult {
    fn from_section(name: &str, s: Option<&ScenarioSection>) -> Self {
        match s {
            None => ScenarioResult {
                name: name.to_string(),
                rc: None,
                started: false,
                timed_out: false,
                output: String::new(),
                l1_ms: None,
                host_time: None,
            },
            Some(s) => ScenarioResult {
                name: name.to_string(),
                rc: s.rc,
                started: true,
                timed_out: s.timed_out,
                output: s.output(),
                l1_ms: s.l1_ms,
                host_time: s.ended_at.map(|e| e.saturating_sub(s.began_at)),
            },
        }
    }

    /// Whether it exited with 0.
    pub fn passed(&self) -> bool {
        self.rc == Some(0)
    }

    /// L2 guest markers and ember boot-timer lines found in the output.
    pub fn guest(&self) -> GuestOutput {
        GuestOutput::parse(&self.output)
    }
}

/// Everything about one batch run on the nested host.
#[derive(Debug)]
pub struct RunReport {
    /// Per scenario, in the order given.
    pub scenarios: Vec<ScenarioResult>,
    /// L1 ran all scenarios and reached its final marker.
    pub completed: bool,
    /// The final attempt hung (hard timeout).
    pub hung: bool,
    /// How many times L1 was booted again.
    pub retries: u32,
    /// The attempts that failed and were retried.
    pub failed_attempts: Vec<FailedAttempt>,
    /// Wall time of the final boot (QEMU start to end).
    pub wall: Duration,
    /// Wall time of everything: image build and all attempts.
    pub total_wall: Duration,
    /// Host time from QEMU start to L1's init.
    pub l1_boot: Option<Duration>,
    /// Host time from QEMU start to L1 being ready for scenarios.
    pub l1_ready: Option<Duration>,
    /// Whether /dev/kvm worked in L1.
    pub kvm: Option<bool>,
    /// Time spent waiting for the host lock (final attempt).
    pub lock_wait: Duration,
    /// The whole console of the final attempt.
    pub console: String,
    /// The console log file.
    pub console_path: PathBuf,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The scratch disk of the final attempt.
    pub scratch: Option<ScratchDisk>,
    /// QEMU's exit status.
    pub qemu_exit: Option<ExitStatus>,
    /// QEMU's stderr, less the expected TCG feature warnings.
    pub qemu_stderr: String,
    /// The ember binary shipped, if any.
    pub ember: Option<PathBuf>,
    tail: String,
}

impl RunReport {
    fn new(
        prep: &PreparedHost,
        a: Attempt,
        failed_attempts: Vec<FailedAttempt>,
        total: Duration,
    ) -> Self {
        let scenarios = prep
            .scenarios
            .iter()
            .map(|n| ScenarioResult::from_section(n, a.parser.section(n)))
            .collect();
        RunReport {
            scenarios,
            completed: a.completed(),
            hung: a.hung,
            retries: failed_attempts.len() as u32,
            failed_attempts,
            wall: a.wall,
            total_wall: total,
            l1_boot: a.parser.booted_at,
            l1_ready: a.parser.ready_at,
            kvm: a.parser.kvm(),
            lock_wait: a.lock_wait,
            console: a.parser.text(),
            tail: a.parser.tail(40),
            console_path: a.console_path,
            run_dir: prep.run_dir.clone(),
            scratch: a.scratch,
            qemu_exit: a.exit,
            qemu_stderr: interesting_stderr(&a.qemu_stderr),
            ember: prep.ember.clone(),
        }
    }

    /// The named scenario's result.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// The last lines of the console.
    pub fn console_tail(&self) -> &str {
        &self.tail
    }

    /// Whether L1 completed and every scenario exited with 0.
    pub fn all_passed(&self) -> bool {
        self.completed && self.scenarios.iter().all(ScenarioResult::passed)
    }

    /// A human-readable summary: timings, per-scenario status, and the
    /// console tail when something went wrong.
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
        let mut s = format!(
            "nested host: {} in {:.1} s wall (total {:.1} s), L1 init at {}, ready at {}, kvm={}, retries={}, hung={}\n",
            if self.completed { "completed" } else { "DID NOT COMPLETE" },
            self.wall.as_secs_f64(),
            self.total_wall.as_secs_f64(),
            ms(self.l1_boot),
            ms(self.l1_ready),
            self.kvm.map_or("?", |k| if k { "yes" } else { "no" }),
            self.retries,
            self.hung,
        );
        for r in &self.scenarios {
            s.push_str(&format!(
                "  scenario {:<24} rc={:<5} l1={:<9} host={}{}\n",
                r.name,
                r.rc.map_or("-".into(), |c| c.to_string()),
                r.l1_ms.map_or("-".into(), |m| format!("{m} ms")),
                ms(r.host_time),
                if r.timed_out {
                    " TIMED OUT"
                } else if !r.started {
                    " NOT STARTED"
                } else {
                    ""
                },
            ));
        }
        for (i, f) in self.failed_attempts.iter().enumerate() {
            s.push_str(&format!(
                "  retried attempt {}: {} after {:.1} s; its console tail:\n{}\n",
                i + 1,
                f.reason,
                f.wall.as_secs_f64(),
                indent(&f.console_tail)
            ));
        }
        if !self.all_passed() {
            s.push_str(&format!(
                "  console ({}), last lines:\n{}\n",
                self.console_path.display(),
                indent(&self.tail)
            ));
            if !self.qemu_stderr.is_empty() {
                s.push_str(&format!("  qemu stderr:\n{}\n", indent(&self.qemu_stderr)));
            }
        }
        s
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new, unique run directory under `<cache>/runs`; old ones are pruned.
fn new_run_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let runs = cache_dir().join("runs");
    std::fs::create_dir_all(&runs)
        .map_err(|e| HarnessError::io(format!("create {}", runs.display()), e))?;
    prune_runs(&runs);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let dir = runs.join(format!(
        "{now}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

/// Remove run directories beyond the newest [`KEEP_RUNS`] that are more
/// than an hour old (so none in use by a parallel test goes away).
fn prune_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(KEEP_RUNS);
    for (mtime, path) in dirs.into_iter().take(excess) {
        if mtime.elapsed().unwrap_or_default() > Duration::from_secs(3600) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_checked() {
        let err = NestedHost::new()
            .without_ember()
            .scenario("a b", "true")
            .prepare()
            .unwrap_err();
        assert!(matches!(err, HarnessError::Invalid(_)), "{err}");
        let err = NestedHost::new()
            .without_ember()
            .scenario("a", "true")
            .scenario("a", "true")
            .prepare()
            .unwrap_err();
        assert!(matches!(err, HarnessError::Invalid(_)), "{err}");
    }

    #[test]
    fn default_timeout_grows_with_scenarios() {
        let h = NestedHost::new()
            .scenario("a", "true")
            .scenario("b", "true");
        assert_eq!(h.hard_timeout(), Duration::from_secs(240));
        assert_eq!(
            h.timeout(Duration::from_secs(5)).hard_timeout(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn result_from_missing_section() {
        let r = ScenarioResult::from_section("x", None);
        assert!(!r.started && !r.passed() && r.rc.is_none());
    }
}
