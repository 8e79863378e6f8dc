//! A running `ember --api-sock` process and a minimal HTTP/1.1 client over
//! its Unix socket, for end-to-end API tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An ember process serving the API, with its console captured.
pub struct ApiVm {
    pub sock: PathBuf,
    child: Child,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn pump(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

impl ApiVm {
    /// Starts `ember --api-sock <tmp> --id <id> [extra...]` and waits for the socket.
    pub fn spawn(id: &str, extra: &[&str]) -> Self {
        let sock = std::env::temp_dir().join(format!("ember-api-{}-{id}.sock", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("--api-sock")
            .arg(&sock)
            .args(["--id", id])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ember");
        let console = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        pump(child.stdout.take().unwrap(), console.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        let vm = ApiVm {
            sock,
            child,
            console,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&vm.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "the API socket never appeared: {}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vm
    }

    /// One request; returns (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n{}\r\n{body}",
            if body.is_empty() {
                String::new()
            } else {
                format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
            }
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status: u16 = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad response: {resp:?}"));
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn put(&self, path: &str, body: &str) -> (u16, String) {
        self.request("PUT", path, Some(body))
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the console has a line satisfying `pred`.
    pub fn wait_console(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pred(&self.console()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; console: {}; stderr: {}",
                self.console(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; returns its code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the pumps drain.
                std::thread::sleep(Duration::from_millis(50));
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "ember did not exit; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}
