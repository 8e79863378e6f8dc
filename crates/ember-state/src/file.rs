//! Reading and writing state files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::StateError;

fn io(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a whole file of at most `max` bytes. The size is checked before
/// anything is allocated, and the read stops at `max + 1` bytes whatever
/// the file claims (a FIFO or a growing file cannot make it read more).
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, StateError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let meta = file.metadata().map_err(|e| io(path, e))?;
    if meta.is_dir() {
        return Err(io(
            path,
            std::io::Error::other("is a directory, not a state file"),
        ));
    }
    if meta.is_file() && meta.len() > max {
        return Err(StateError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    let hint = if meta.is_file() { meta.len() } else { 0 };
    let mut bytes = Vec::with_capacity(hint as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(StateError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` so that a reader sees either the old file or
/// the whole new one: into a temporary file beside it, then renamed over.
/// A path that is not a regular file (a FIFO, a device) is written in place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io(path, e))?;
            return f.write_all(bytes).map_err(|e| io(path, e));
        }
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-state-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn caps_are_enforced_before_reading() {
        let p = dir().join("big");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(matches!(
            read_capped(&p, 99),
            Err(StateError::TooLarge { size: 100, max: 99 })
        ));
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
    }

    #[test]
    fn missing_files_and_directories_are_clear_errors() {
        let e = read_capped(Path::new("/nonexistent/state"), 10).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/state"), "{e}");
        let e = read_capped(&dir(), 10).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let p = dir().join("state");
        write_atomically(&p, b"first").unwrap();
        write_atomically(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert!(!temp_path(&p).exists());
        let e = write_atomically(Path::new("/nonexistent/dir/state"), b"x").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/state"), "{e}");
    }
}
