//! The destination of log lines and metrics lines: a regular file or a named
//! pipe (FIFO), opened so that neither opening nor writing can block.
//!
//! Opening a FIFO for writing only blocks until a reader appears (or fails
//! with `ENXIO` under `O_NONBLOCK`). Opening it read-write never blocks on
//! Linux, because the opener counts as a reader itself, and it also keeps
//! `SIGPIPE`/`EPIPE` away when the real reader goes and comes back. The
//! descriptor stays non-blocking: when a pipe is full because nobody reads
//! it, a line is dropped (and counted by the caller) instead of stalling the
//! thread that logs, which may be the VMM event loop or a vCPU.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The path could not be opened (missing directory, permissions...).
    #[error("cannot open {path:?}: {source}")]
    Open {
        /// The path that was asked for.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path names something that is neither a file nor a FIFO.
    #[error("{path:?} is neither a regular file nor a named pipe")]
    NotFileOrFifo {
        /// The path that was asked for.
        path: PathBuf,
    },
}

/// What became of one line handed to [`Sink::write_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole line was written.
    Written,
    /// The destination was full (a FIFO nobody reads); the line, or what
    /// was left of it, was dropped.
    Dropped,
}

/// An open file or FIFO that takes whole lines without blocking.
#[derive(Debug)]
pub struct Sink {
    file: File,
    path: PathBuf,
}

/// Opens `path` as a [`Sink`]: creates a regular file if nothing exists
/// there, appends to an existing file, and attaches to an existing FIFO
/// without waiting for a reader.
pub fn open_sink(path: &Path) -> Result<Sink, SinkError> {
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let file_type = file
        .metadata()
        .map_err(|source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    if !(file_type.is_file() || file_type.is_fifo()) {
        return Err(SinkError::NotFileOrFifo {
            path: path.to_path_buf(),
        });
    }
    Ok(Sink {
        file,
        path: path.to_path_buf(),
    })
}

impl Sink {
    /// The path this sink was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `line` (which should end with `\n`). A full pipe drops the
    /// line; other errors are returned.
    pub fn write_line(&self, line: &[u8]) -> io::Result<WriteOutcome> {
        let mut rest = line;
        while !rest.is_empty() {
            match (&self.file).write(rest) {
                Ok(0) => return Ok(WriteOutcome::Dropped),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(WriteOutcome::Dropped)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(WriteOutcome::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo failed: {}", io::Error::last_os_error());
    }

    #[test]
    fn file_is_created_and_appended() {
        let dir = temp_dir("file");
        let path = dir.join("out.log");
        let sink = open_sink(&path).unwrap();
        assert_eq!(sink.write_line(b"one\n").unwrap(), WriteOutcome::Written);
        drop(sink);
        let sink = open_sink(&path).unwrap();
        sink.write_line(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn fifo_without_reader_opens_and_drops_when_full() {
        let dir = temp_dir("fifo");
        let path = dir.join("pipe");
        mkfifo(&path);
        let sink = open_sink(&path).unwrap();
        let line = vec![b'x'; 1023];
        let mut dropped = false;
        // A pipe holds 64 KiB by default: this must hit "full" well before
        // 1024 lines, and must never block.
        for _ in 0..1024 {
            if sink.write_line(&line).unwrap() == WriteOutcome::Dropped {
                dropped = true;
                break;
            }
        }
        assert!(dropped);
        // A late reader sees the lines that fit.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut buf = [0u8; 10];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"xxxxxxxxxx");
    }

    #[test]
    fn directories_and_missing_parents_fail() {
        let dir = temp_dir("bad");
        assert!(open_sink(&dir).is_err());
        let e = open_sink(&dir.join("no/such/file")).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
    }
}
