//! The scratch disk: a host file formatted as ext4, attached to L1 as a
//! virtio-blk drive and mounted on `/scratch`, so that results survive L1
//! (including its sudden death when a test kills QEMU).
//!
//! Files are read back on the host with `debugfs` (no root, no mount).
//! Because QEMU may have been killed before L1's ext4 checkpointed its
//! journal, reads go through a recovered copy of the image (`e2fsck -fy`
//! replays the journal), refreshed whenever the image changes; the image
//! itself is never modified by reading.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::error::{HarnessError, Result};
use crate::util::run_captured;

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// A scratch disk image on the host.
#[derive(Debug, Clone)]
pub struct ScratchDisk {
    path: PathBuf,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchEntry {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
}

impl ScratchDisk {
    /// Create a new empty ext4 image of `size_mib` MiB at `path`
    /// (replacing any file there).
    pub fn create(path: &Path, size_mib: u64) -> Result<ScratchDisk> {
        let _ = std::fs::remove_file(path);
        let file = std::fs::File::create(path)
            .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
        file.set_len(size_mib * 1024 * 1024)
            .map_err(|e| HarnessError::io(format!("resize {}", path.display()), e))?;
        drop(file);
        let mut cmd = Command::new("mke2fs");
        cmd.args(["-q", "-F", "-t", "ext4", "-L", "ember-scratch"])
            .args(["-E", "root_owner=0:0"])
            .arg(path);
        let out = run_captured(&mut cmd, TOOL_TIMEOUT)?;
        if !out.success() {
            return Err(HarnessError::Tool {
                what: format!("mke2fs {}", path.display()),
                detail: out.tail(20),
            });
        }
        Ok(ScratchDisk {
            path: path.to_path_buf(),
        })
    }

    /// Use an existing image.
    pub fn open(path: &Path) -> ScratchDisk {
        ScratchDisk {
            path: path.to_path_buf(),
        }
    }

    /// The image file (raw ext4).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn recovered_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".recovered");
        PathBuf::from(p)
    }

    /// A copy of the image with its journal replayed, refreshed if the
    /// image changed since the copy was made.
    pub fn recovered(&self) -> Result<PathBuf> {
        let copy = self.recovered_path();
        let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let src = stamp(&self.path).ok_or_else(|| {
            HarnessError::Missing(format!("scratch image {}", self.path.display()))
        })?;
        if let Some((copy_time, _)) = stamp(&copy) {
            if copy_time >= src.0 {
                return Ok(copy);
            }
        }
        let tmp = {
            let mut p = copy.clone().into_os_string();
            p.push(".tmp");
            PathBuf::from(p)
        };
        let out = run_captured(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&self.path)
                .arg(&tmp),
            TOOL_TIMEOUT,
        )?;
        if !out.success() {
            return Err(HarnessError::Tool {
                what: "copy scratch image".into(),
                detail: out.tail(10),
            });
        }
        // e2fsck: 0 = clean, 1 = errors corrected, 2 = corrected + reboot.
        let fsck = run_captured(
            Command::new("e2fsck").args(["-f", "-y"]).arg(&tmp),
            TOOL_TIMEOUT,
        )?;
        let code = fsck.status.and_then(|s| s.code());
        if !matches!(code, Some(0..=2)) {
            return Err(HarnessError::Tool {
                what: format!("e2fsck of a copy of {}", self.path.display()),
                detail: fsck.tail(30),
            });
        }
        std::fs::rename(&tmp, &copy)
            .map_err(|e| HarnessError::io(format!("rename to {}", copy.display()), e))?;
        Ok(copy)
    }

    fn debugfs(&self, request: &str) -> Result<crate::util::Output> {
        let image = self.recovered()?;
        run_captured(
            Command::new("debugfs").arg("-R").arg(request).arg(&image),
            TOOL_TIMEOUT,
        )
    }

    /// Read a file (path inside the file system, e.g. "/results/x").
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let dst = {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".dump.{}", std::process::id()));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(&dst);
        let out = self.debugfs(&format!("dump -p {path} {}", dst.display()))?;
        match std::fs::read(&dst) {
            Ok(data) => {
                let _ = std::fs::remove_file(&dst);
                Ok(data)
            }
            Err(_) => Err(HarnessError::Missing(format!(
                "{path} on scratch disk {}: {}",
                self.path.display(),
                out.stderr.trim()
            ))),
        }
    }

    /// Read a file as (lossy) UTF-8 text.
    pub fn read_to_string(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read_file(path)?).into_owned())
    }

    /// List a directory ("." and ".." left out).
    pub fn list(&self, dir: &str) -> Result<Vec<ScratchEntry>> {
        let out = self.debugfs(&format!("ls -p {dir}"))?;
        if out.stdout.trim().is_empty() {
            return Err(HarnessError::Missing(format!(
                "directory {dir} on scratch disk: {}",
                out.stderr.trim()
            )));
        }
        Ok(parse_ls_p(&out.stdout))
    }

    /// Whether a path exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let out = self.debugfs(&format!("stat {path}"))?;
        Ok(out.stdout.contains("Inode:"))
    }
}

/// Parse `debugfs ls -p` output: `/ino/mode/uid/gid/name/size/` per line.
fn parse_ls_p(text: &str) -> Vec<ScratchEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().split('/').collect();
            // "", ino, mode, uid, gid, name, size, ""
            if f.len() < 8 {
                return None;
            }
            let name = f[5..f.len() - 2].join("/");
            if name.is_empty() || name == "." || name == ".." {
                return None;
            }
            let mode = u32::from_str_radix(f[2], 8).ok()?;
            Some(ScratchEntry {
                name,
                size: f[f.len() - 2].parse().unwrap_or(0),
                is_dir: mode & 0o170000 == 0o040000,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_parsing() {
        // As debugfs 1.47 prints it: directories have an empty size.
        let text = "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/11/040700/0/0/lost+found//\n\
                    /12/100644/0/0/hello.txt/6/\n\n";
        let e = parse_ls_p(text);
        assert_eq!(
            e,
            vec![
                ScratchEntry {
                    name: "lost+found".into(),
                    size: 0,
                    is_dir: true
                },
                ScratchEntry {
                    name: "hello.txt".into(),
                    size: 6,
                    is_dir: false
                },
            ]
        );
    }

    #[test]
    fn create_and_read_back() {
        if crate::util::which("mke2fs").is_none() || crate::util::which("debugfs").is_none() {
            eprintln!("skipping: e2fsprogs not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ember-scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = ScratchDisk::create(&dir.join("s.img"), 8).unwrap();
        // Write a file the way L1 would not: with debugfs, on the image.
        let src = dir.join("payload");
        std::fs::write(&src, b"durable\n").unwrap();
        let out = run_captured(
            Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} payload", src.display()))
                .arg(disk.path()),
            TOOL_TIMEOUT,
        )
        .unwrap();
        assert!(out.success(), "{}", out.tail(10));
        assert_eq!(disk.read_file("/payload").unwrap(), b"durable\n");
        assert!(disk.exists("/payload").unwrap());
        assert!(!disk.exists("/nope").unwrap());
        assert!(disk.read_file("/nope").is_err());
        let names: Vec<String> = disk
            .list("/")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(&"payload".to_string()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
