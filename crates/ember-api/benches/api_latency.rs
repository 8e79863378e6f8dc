//! Latency of one `PUT /machine-config` over the real Unix socket against
//! the real server with the fake backend: median and p99 over many
//! requests, on a kept-alive connection and with a new connection each time.
//!
//! Run: `cargo bench -p ember-api --bench api_latency`
//! (`EMBER_BENCH_REQUESTS` sets the request count; default 20000).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#;

fn request() -> Vec<u8> {
    format!(
        "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Sends one request and reads the 204 (which has no body).
fn round_trip(stream: &mut UnixStream, req: &[u8], buf: &mut [u8]) {
    stream.write_all(req).expect("write");
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "server closed");
        got += n;
        if buf[..got].ends_with(b"\r\n\r\n") {
            break;
        }
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&buf[..got])
    );
}

fn summarize(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} median={:.1}us p99={:.1}us min={:.1}us max={:.1}us",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples[0].as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
    );
}

fn main() {
    let n: usize = std::env::var("EMBER_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("ember-api-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("api.sock");
    let (server, _backend, _telemetry) =
        ember_api::testing::spawn_fake_vmm(Path::new(&sock), |_| {}).expect("server");
    let req = request();
    let mut buf = vec![0u8; 4096];

    let mut stream = UnixStream::connect(&sock).expect("connect");
    for _ in 0..1000 {
        round_trip(&mut stream, &req, &mut buf);
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        round_trip(&mut stream, &req, &mut buf);
        samples.push(t.elapsed());
    }
    summarize("PUT /machine-config (keep-alive)", samples);

    let per_conn = n / 4;
    let mut samples = Vec::with_capacity(per_conn);
    for _ in 0..per_conn {
        let t = Instant::now();
        let mut s = UnixStream::connect(&sock).expect("connect");
        round_trip(&mut s, &req, &mut buf);
        samples.push(t.elapsed());
    }
    summarize("PUT /machine-config (new connection)", samples);

    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
