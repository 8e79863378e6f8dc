//! Paths (repository, cache) and running external tools with a hard
//! timeout and captured output.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The cache directory: `$EMBER_CACHE`, else `~/.cache/ember`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBER_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("ember")
}

/// A script of the repository, e.g. `script("guest/build-initramfs.sh")`.
pub fn script(rel: &str) -> PathBuf {
    repo_root().join("scripts").join(rel)
}

/// Whether `program` is found in `PATH` as an executable file.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether QEMU's x86 system emulator is installed.
pub fn qemu_available() -> bool {
    which("qemu-system-x86_64").is_some()
}

/// The output of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status (None if it was killed for running too long).
    pub status: Option<ExitStatus>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last line of stdout, trimmed (scripts print their result there).
    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("").trim()
    }

    /// The last `n` lines of stderr and stdout, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "status: {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status,
            tail(&self.stderr),
            tail(&self.stdout)
        )
    }
}

/// Run `cmd` to completion with captured stdout/stderr, killing it after
/// `timeout`. The command's own stdin is /dev/null.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    // Own process group, so a timeout kills grandchildren too (they would
    // otherwise keep the output pipes open).
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::io(format!("spawn {what}"), e))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(HarnessError::io(format!("wait {what}"), e)),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    })
}

/// Send SIGKILL to the process group `pgid` (a child spawned with
/// `process_group(0)` leads a group whose id is its pid).
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) has no memory-safety requirements; a negative pid
        // names the process group we created for our own child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Run a repository script; on success return the last line of its stdout
/// (the scripts print their result path there).
pub fn run_script(rel: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let path = script(rel);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).args(args);
    let out = run_captured(&mut cmd, timeout)?;
    if out.status.is_none() {
        return Err(HarnessError::Tool {
            what: format!("{rel} (killed after {timeout:?})"),
            detail: out.tail(30),
        });
    }
    if !out.success() {
        return Err(HarnessError::Tool {
            what: format!("{rel} {}", args.join(" ")),
            detail: out.tail(30),
        });
    }
    Ok(out.last_line().to_string())
}

/// 64-bit FNV-1a over some byte slices, as a cache key.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ["ab","c"] and ["a","bc"] differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_and_timeout() {
        let out = run_captured(
            Command::new("sh").args(["-c", "echo a; echo b >&2; echo last"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.last_line(), "last");
        assert_eq!(out.stderr, "b\n");

        let slow = run_captured(
            Command::new("sh").args(["-c", "sleep 5"]),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(slow.status.is_none());
        assert!(slow.elapsed < Duration::from_secs(4));
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }

    #[test]
    fn paths() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(script("lib/common.sh").is_file());
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-program-ember").is_none());
    }
}
