//! An exclusive `flock(2)` lock on a file under the cache directory, so
//! that only one emulated host runs at a time on this machine, across
//! threads (`cargo test` runs tests in parallel), test binaries and the
//! shell driver `scripts/nested/run-l1.sh` (which takes the same lock).

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct HostLock {
    _file: File,
    path: PathBuf,
    waited: Duration,
}

impl HostLock {
    /// Block until the lock at `path` is ours.
    pub fn acquire(path: &Path) -> Result<HostLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HarnessError::io(format!("open lock {}", path.display()), e))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock only reads the descriptor, which `file` keeps
            // open for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(HarnessError::io(format!("flock {}", path.display()), err));
            }
        }
        Ok(HostLock {
            _file: file,
            path: path.to_path_buf(),
            waited: start.elapsed(),
        })
    }

    /// How long acquiring the lock took.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn excludes_other_holders() {
        let dir = std::env::temp_dir().join(format!("ember-lock-test-{}", std::process::id()));
        let path = dir.join("x.lock");
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (path, inside) = (path.clone(), inside.clone());
                std::thread::spawn(move || {
                    let _g = HostLock::acquire(&path).unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
