//! Shared helpers for the socket tests: a temp directory with a fake kernel
//! and disk, a real server with the fake backend, and a tiny HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ember_api::http::ServerConfig;
use ember_api::testing::{spawn_fake_vmm, FakeBackend};
use ember_api::{ApiServerHandle, Telemetry};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ember-api-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server with a fake VMM in a temp directory holding `vmlinux` and
/// `rootfs.ext4`.
pub struct Harness {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub backend: FakeBackend,
    pub telemetry: Telemetry,
    server: Option<ApiServerHandle>,
}

impl Harness {
    pub fn new(tag: &str) -> Self {
        Self::with_config(tag, |_| {})
    }

    pub fn with_config(tag: &str, config: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = temp_dir(tag);
        std::fs::write(dir.join("vmlinux"), b"\x7fELF fake kernel").unwrap();
        std::fs::write(dir.join("rootfs.ext4"), vec![0u8; 4096]).unwrap();
        let socket = dir.join("api.sock");
        let (server, backend, telemetry) = spawn_fake_vmm(&socket, config).unwrap();
        Self {
            dir,
            socket,
            backend,
            telemetry,
            server: Some(server),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// One request on a new connection.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.client().request(method, path, body)
    }

    pub fn server(&self) -> &ApiServerHandle {
        self.server.as_ref().unwrap()
    }

    /// Configures a bootable VM (kernel + root drive) and starts it.
    pub fn boot(&self) {
        let mut c = self.client();
        c.request(
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path": "{}"}}"#,
                self.path("vmlinux")
            )),
        )
        .expect(204);
        c.request(
            "PUT",
            "/drives/rootfs",
            Some(&format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
                self.path("rootfs.ext4")
            )),
        )
        .expect(204);
        c.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        )
        .expect(204);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {:?}", self))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status; returns self.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Asserts a 400 (or `status`) whose fault_message contains `needle`.
    #[track_caller]
    pub fn expect_fault(self, status: u16, needle: &str) -> Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let f = self.fault();
        assert!(f.contains(needle), "fault {f:?} lacks {needle:?}");
        self
    }
}

/// A minimal HTTP/1.1 client over a Unix socket.
pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.send_raw(req.as_bytes());
        self.read_response().expect("no response")
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response; `None` if the server closed the connection first.
    pub fn read_response(&mut self) -> Option<Resp> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < end + 4 + len {
                    if !self.fill() {
                        return None;
                    }
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(Resp {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}
