//! The HTTP/1.1 API server on a Unix socket.
//!
//! One thread runs an epoll loop over the listening socket, a shutdown
//! `EventFd` and up to [`ServerConfig::max_connections`] non-blocking client
//! connections, each with its own buffers and deadlines:
//!
//! - a request must arrive completely within [`ServerConfig::request_timeout`]
//!   of its first byte (else 408 and close);
//! - queued output must be taken within [`ServerConfig::write_timeout`];
//! - when the table is full, a new client evicts the idle connection unused
//!   the longest (or else the slowest unfinished request), so nobody waits on
//!   a stuck client;
//! - heads are capped at [`ServerConfig::max_head_bytes`] (431) and bodies at
//!   [`ServerConfig::max_body_bytes`] (413, Firecracker's 51200 by default).
//!
//! Pipelined requests are answered in order. Each valid request goes to the
//! VMM thread through a [`crate::VmmChannel`]; the answer is awaited before
//! the next request is read, as in Firecracker.

mod connection;
pub mod metrics;
pub mod parser;
pub mod response;
pub mod router;
mod server;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ember_telemetry::MetricsRegistry;
use vmm_sys_util::eventfd::EventFd;

use crate::endpoint::VmmChannel;
pub use metrics::ApiMetrics;
pub use router::{Method, Route, ROUTES};

/// Firecracker's default API payload limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 51_200;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub socket_path: PathBuf,
    /// Open connections at most.
    pub max_connections: usize,
    /// Request line and headers at most.
    pub max_head_bytes: usize,
    /// Body at most.
    pub max_body_bytes: usize,
    /// Time for a request to arrive completely.
    pub request_timeout: Duration,
    /// Time for the client to take a response.
    pub write_timeout: Duration,
    /// Where the server's counters are registered, if anywhere.
    pub metrics: Option<Arc<MetricsRegistry>>,
}

impl ServerConfig {
    /// Defaults for a socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: path.into(),
            max_connections: 16,
            max_head_bytes: 8 * 1024,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// Starts the API server thread.
#[derive(Debug)]
pub struct ApiServer;

/// The running server. Dropping it leaves the server running (for the life
/// of the process); [`ApiServerHandle::shutdown`] stops it.
#[derive(Debug)]
#[must_use = "dropping the handle detaches the server; keep it to shut the server down"]
pub struct ApiServerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    socket_path: PathBuf,
    metrics: Arc<ApiMetrics>,
}

/// Binds `path`, replacing a stale socket file that nobody listens on.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            });
            let refused = matches!(UnixStream::connect(path),
                Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused);
            if is_socket && refused {
                std::fs::remove_file(path)?;
                UnixListener::bind(path)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use", path.display()),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

impl ApiServer {
    /// Binds the socket (errors are returned here, before any thread
    /// starts) and serves it on a thread named `ember_api`.
    pub fn spawn(config: ServerConfig, channel: VmmChannel) -> io::Result<ApiServerHandle> {
        let listener = bind(&config.socket_path)?;
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let metrics = Arc::new(ApiMetrics::default());
        if let Some(registry) = &config.metrics {
            for source in metrics.sources() {
                registry.register(source);
            }
        }
        let mut server = server::Server::new(
            config.clone(),
            listener,
            stop.try_clone()?,
            channel,
            metrics.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("ember_api".into())
            .spawn(move || server.run())?;
        Ok(ApiServerHandle {
            stop,
            thread: Some(thread),
            socket_path: config.socket_path,
            metrics,
        })
    }
}

impl ApiServerHandle {
    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<ApiMetrics> {
        &self.metrics
    }

    /// Stops the server, waits for its thread and removes the socket file.
    /// A request being handled completes first.
    pub fn shutdown(mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}
