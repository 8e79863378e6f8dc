//! The harness's error type.

use std::fmt;
use std::io;

/// What went wrong while preparing or running a nested host.
#[derive(Debug)]
pub enum HarnessError {
    /// An I/O error, with what was being done.
    Io { context: String, source: io::Error },
    /// A build script or tool failed; carries its output tail.
    Tool { what: String, detail: String },
    /// A required program is not installed.
    Missing(String),
    /// The caller asked for something inconsistent.
    Invalid(String),
}

impl HarnessError {
    /// Wrap an I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            HarnessError::Tool { what, detail } => write!(f, "{what} failed:\n{detail}"),
            HarnessError::Missing(what) => write!(f, "missing: {what}"),
            HarnessError::Invalid(what) => write!(f, "invalid request: {what}"),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result with [`HarnessError`].
pub type Result<T> = std::result::Result<T, HarnessError>;
