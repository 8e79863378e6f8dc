//! The server against hostile clients, over the real socket: framing errors,
//! huge bodies, slow and silent clients, too many clients, pipelining,
//! chunked bodies, missing Content-Length and `Expect: 100-continue`. Every
//! case gets a precise 4xx with a fault_message, and the server keeps
//! serving others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Client, Harness};

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = Harness::new("pipeline");
    let mut c = h.client();
    let body = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
    let mut batch = String::new();
    batch.push_str("GET /machine-config HTTP/1.1\r\n\r\n");
    batch.push_str(&format!(
        "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    batch.push_str("GET /machine-config HTTP/1.1\r\n\r\n");
    batch.push_str("GET /nope HTTP/1.1\r\n\r\n");
    batch.push_str("GET /version HTTP/1.1\r\n\r\n");
    c.send_raw(batch.as_bytes());
    assert_eq!(
        c.read_response().unwrap().expect(200).json()["vcpu_count"],
        1
    );
    c.read_response().unwrap().expect(204);
    assert_eq!(
        c.read_response().unwrap().expect(200).json()["vcpu_count"],
        2
    );
    c.read_response()
        .unwrap()
        .expect_fault(400, "Invalid request method and/or path");
    c.read_response().unwrap().expect(200);
    // Byte by byte works too.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for b in req {
        c.send_raw(&[*b]);
    }
    c.read_response().unwrap().expect(200);
}

#[test]
fn oversized_bodies_and_heads_are_refused() {
    let h = Harness::new("big");
    // Declared too large: refused before the body is sent, then closed.
    let mut c = h.client();
    c.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 51201\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.header("Connection"), Some("close"));
    r.expect_fault(413, "larger than the limit of 51200");
    assert!(c.is_closed_by_server());
    // A body at the limit is read (and refused for its content, not size).
    let mut c = h.client();
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(51_200 - 25));
    assert_eq!(big.len(), 51_200);
    c.request("PUT", "/boot-source", Some(&big))
        .expect_fault(400, "Boot source error");
    // A huge body sent anyway (without waiting for the answer) still gets
    // the 413, and the server does not read it all.
    let mut c = h.client();
    c.send_raw(b"PUT /mmds HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n");
    let _ = c.stream.write_all(&vec![b'x'; 200_000]);
    c.read_response().unwrap().expect(413);
    // Headers too large.
    let mut c = h.client();
    let long = format!("GET / HTTP/1.1\r\nX-Junk: {}\r\n\r\n", "j".repeat(9000));
    let _ = c.stream.write_all(long.as_bytes());
    c.read_response()
        .unwrap()
        .expect_fault(431, "exceed the limit of 8192 bytes");
    let mut c = h.client();
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.send_raw(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    c.read_response()
        .unwrap()
        .expect_fault(431, "Too many headers");
    h.call("GET", "/", None).expect(200);
}

#[test]
fn framing_errors_get_precise_4xx() {
    let h = Harness::new("framing");
    let raw = |bytes: &[u8]| {
        let mut c = h.client();
        c.send_raw(bytes);
        let r = c.read_response().expect("no response");
        (r, c)
    };
    // Chunked bodies are not supported.
    let (r, mut c) = raw(
        b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\n{\"action_type\": \"FlushMe\"}\r\n0\r\n\r\n",
    );
    r.expect_fault(411, "Transfer-Encoding");
    assert!(c.is_closed_by_server());
    // PUT without Content-Length: no body, and the connection is closed.
    let (r, mut c) = raw(b"PUT /actions HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.header("Connection"), Some("close"));
    r.expect_fault(400, "Empty PUT request.");
    assert!(c.is_closed_by_server());
    let (r, _) = raw(b"PATCH /vm HTTP/1.1\r\n\r\n{\"state\": \"Paused\"}");
    r.expect_fault(400, "Empty PATCH request.");
    // Bad Content-Length values.
    let (r, _) = raw(b"PUT /vm HTTP/1.1\r\nContent-Length: abc\r\n\r\n");
    r.expect_fault(400, "Invalid Content-Length");
    let (r, _) = raw(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}");
    r.expect_fault(400, "Conflicting Content-Length");
    // Unsupported protocol versions and garbage.
    let (r, _) = raw(b"GET / HTTP/2.0\r\n\r\n");
    r.expect_fault(400, "Unsupported HTTP version");
    let (r, mut c) = raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
    r.expect_fault(400, "Invalid HTTP request");
    assert!(c.is_closed_by_server());
    // Methods the API does not have: 400, and close (HEAD expects no body).
    let (r, mut c) = raw(b"DELETE /drives/a HTTP/1.1\r\n\r\n");
    r.expect_fault(400, "Invalid HTTP Method");
    assert!(c.is_closed_by_server());
    let (r, _) = raw(b"HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    // Unknown expectations.
    let (r, _) = raw(b"PUT /vm HTTP/1.1\r\nExpect: something\r\nContent-Length: 2\r\n\r\n");
    r.expect_fault(417, "only 100-continue");
    // HTTP/1.0 gets an answer and a close.
    let (r, mut c) = raw(b"GET /version HTTP/1.0\r\n\r\n");
    r.expect(200);
    assert!(c.is_closed_by_server());
    h.call("GET", "/", None).expect(200);
}

#[test]
fn expect_100_continue_is_honoured() {
    let h = Harness::new("continue");
    let mut c = h.client();
    let body = r#"{"vcpu_count": 4, "mem_size_mib": 256}"#;
    c.send_raw(
        format!(
            "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response().unwrap().expect(100);
    c.send_raw(body.as_bytes());
    c.read_response().unwrap().expect(204);
    // With the body already there, no interim response is sent.
    c.send_raw(
        format!(
            "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response().unwrap().expect(204);
    // A refused size gets the final status instead of 100.
    c.send_raw(
        b"PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n",
    );
    c.read_response().unwrap().expect(413);
}

#[test]
fn slow_clients_do_not_block_others_and_time_out() {
    let h = Harness::with_config("slow", |c| {
        c.request_timeout = Duration::from_millis(2000);
    });
    let mut slow = h.client();
    slow.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu");
    let mut slow_head = h.client();
    slow_head.send_raw(b"GET /vers");
    // Others are served at once.
    let start = Instant::now();
    for _ in 0..20 {
        h.call("GET", "/machine-config", None).expect(200);
    }
    // (Well before the slow ones time out.)
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    // The slow ones get a 408 and are closed.
    slow.read_response()
        .unwrap()
        .expect_fault(408, "not completed within 2 seconds");
    assert!(slow.is_closed_by_server());
    slow_head.read_response().unwrap().expect(408);
    // An idle keep-alive connection is not timed out.
    let mut idle = h.client();
    idle.request("GET", "/", None).expect(200);
    std::thread::sleep(Duration::from_millis(2500));
    idle.request("GET", "/", None).expect(200);
}

#[test]
fn many_clients_are_bounded_and_new_ones_still_get_served() {
    let h = Harness::with_config("many", |c| {
        c.max_connections = 8;
    });
    let closed_or_408 = |c: &mut Client| -> bool {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 512];
        match c.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                true
            }
            Err(_) => false,
        }
    };
    // Fill the table: 4 idle connections and 4 with half a request.
    let mut idle: Vec<Client> = (0..4).map(|_| h.client()).collect();
    let mut busy: Vec<Client> = (0..4).map(|_| h.client()).collect();
    for c in busy.iter_mut() {
        c.send_raw(b"GET /ver");
    }
    std::thread::sleep(Duration::from_millis(100));
    // New clients that stay connected: each is served at once, evicting
    // idle connections first (the oldest first).
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut c = h.client();
        c.request("GET", "/version", None).expect(200);
        kept.push(c);
    }
    for c in idle.iter_mut() {
        assert!(closed_or_408(c), "an idle connection survived");
    }
    for c in busy.iter_mut() {
        assert!(
            !closed_or_408(c),
            "a busy connection was evicted before idle ones"
        );
    }
    // Turn the kept ones busy too: now a newcomer evicts the oldest
    // unfinished request, which is told 408.
    for c in kept.iter_mut() {
        c.send_raw(b"GET /machine");
    }
    std::thread::sleep(Duration::from_millis(50));
    h.call("GET", "/", None).expect(200);
    busy[0]
        .read_response()
        .unwrap()
        .expect_fault(408, "make room for a new client");
    assert!(h.server().metrics().connections_evicted.count() >= 5);
    drop(kept);
    drop(busy);
    // Many at once, concurrently, more than the table holds.
    let sock = h.socket.clone();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    // Evictions may close a kept-alive connection between
                    // requests; a fresh connection per request always works.
                    Client::connect(&sock)
                        .request("GET", "/machine-config", None)
                        .expect(200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn clients_that_vanish_or_never_read_do_not_hurt() {
    let h = Harness::with_config("vanish", |c| {
        c.write_timeout = Duration::from_millis(2000);
    });
    // Half a request, then gone.
    {
        let mut c = h.client();
        c.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{");
    }
    // A full request, then gone before the answer.
    {
        let mut c = h.client();
        c.send_raw(b"GET /vm/config HTTP/1.1\r\n\r\n");
    }
    // Half-close after a request: the answer still arrives.
    let mut c = h.client();
    c.send_raw(b"GET /version HTTP/1.1\r\n\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    c.read_response().unwrap().expect(200);
    assert!(c.is_closed_by_server());
    // A client that pipelines a lot and never reads: others stay served,
    // and it is dropped after the write timeout.
    let mut greedy = UnixStream::connect(&h.socket).unwrap();
    greedy.set_nonblocking(true).unwrap();
    let one = b"GET /vm/config HTTP/1.1\r\n\r\n";
    let mut sent = 0;
    for _ in 0..20_000 {
        match greedy.write(one) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent > 0);
    let start = Instant::now();
    h.call("GET", "/", None).expect(200);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(3000));
    h.call("GET", "/", None).expect(200);
    // The greedy connection was closed: reading drains then hits EOF or reset.
    greedy.set_nonblocking(false).unwrap();
    greedy
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut ended = false;
    for _ in 0..10_000 {
        match greedy.read(&mut buf) {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(ended);
}

#[test]
fn stale_sockets_are_replaced_and_live_ones_refused() {
    let dir = common::temp_dir("stale");
    let path = dir.join("api.sock");
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (server, _, _) = ember_api::testing::spawn_fake_vmm(&path, |_| {}).unwrap();
    Client::connect(&path).request("GET", "/", None).expect(200);
    // A second server on the same live socket is refused.
    let err = ember_api::testing::spawn_fake_vmm(&path, |_| {}).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // A regular file is never removed.
    let file = dir.join("file");
    std::fs::write(&file, b"keep").unwrap();
    assert!(ember_api::testing::spawn_fake_vmm(&file, |_| {}).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    server.shutdown();
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
