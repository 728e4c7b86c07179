//! Bad input and heavy load never hurt the server: each hostile request
//! gets a 4xx or a closed connection, and afterwards the server is still
//! up, still correct, and still small in memory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, read_response, request, send_raw, temp_dir};

/// The server's resident memory, in KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `raw` and returns the status, or None if the server closed the
/// connection without answering.
fn status_of(server: &Server, raw: &[u8]) -> Option<u16> {
    send_raw(server.addr, raw).ok().map(|r| r.status)
}

#[track_caller]
fn assert_refused(status: Option<u16>, what: &str) {
    if let Some(status) = status {
        assert!((400..500).contains(&status), "{what}: got {status}");
    }
}

fn assert_still_healthy(server: &Server) {
    request(server.addr, "GET", "/health", None).assert(200, "ok\n");
    server.put("after", "still fine").assert(200, "");
    server.get("after").assert(200, "still fine");
}

#[test]
fn garbage_bytes() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage.extend_from_slice(b"\r\n\r\n");
    assert_refused(status_of(&server, &garbage), "random bytes");
    assert_refused(status_of(&server, b"\0\0\0\0\r\n\r\n"), "NUL bytes");
    assert_refused(
        status_of(&server, b"GET /kv/a HTTP/9.9\r\n\r\n"),
        "unknown HTTP version",
    );
    assert_refused(
        status_of(
            &server,
            b"PUT /kv/a HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        ),
        "bad Content-Length",
    );
    assert_still_healthy(&server);
}

#[test]
fn a_64_kib_request_line() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let raw = format!(
        "GET /kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_refused(status_of(&server, raw.as_bytes()), "64 KiB request line");
    assert_still_healthy(&server);
}

#[test]
fn a_100_kib_header_block() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let mut raw = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        raw.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)));
    }
    raw.push_str("\r\n");
    assert_refused(status_of(&server, raw.as_bytes()), "100 KiB of headers");
    assert_still_healthy(&server);
}

#[test]
fn a_10_gb_content_length_with_no_body() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let before = rss_kib(&server);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"PUT /kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        .unwrap();
    read_response(&mut stream, false)
        .unwrap()
        .assert(413, "value too large\n");
    assert!(rss_kib(&server) < before + 10 * 1024, "memory grew");
    assert_still_healthy(&server);
}

#[test]
fn many_hostile_clients_leave_memory_small() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let before = rss_kib(&server);
    let addr = server.addr;
    // 200 clients each send 200 KiB of headers and then stall. Buffered
    // whole, that would be 40 MiB; the server buffers at most 64 KiB a
    // connection, answers 431 and closes.
    let clients: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let _ = stream.write_all(b"GET /health HTTP/1.1\r\n");
                for _ in 0..200 {
                    let line = format!("X-A: {}\r\n", "a".repeat(1018));
                    if stream.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                stream
            })
        })
        .collect();
    let streams: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(grown < 30 * 1024, "RSS grew by {grown} KiB");
    drop(streams);
    assert_still_healthy(&server);
}

#[test]
fn ten_thousand_concurrent_connections() {
    // Our own side needs a descriptor per connection too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        soft >= 10_500,
        "this machine allows only {soft} open files per process"
    );

    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    assert!(
        server.log().contains("open files limit"),
        "{}",
        server.log()
    );
    let mut streams = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        streams.push(TcpStream::connect(server.addr).expect("connect"));
    }
    // Every one of them is served while all are open.
    for (i, stream) in streams.iter_mut().enumerate() {
        let req = format!("PUT /kv/conn-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        stream.write_all(req.as_bytes()).unwrap();
    }
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        read_response(stream, false).unwrap().assert(200, "");
    }
    drop(streams);
    server.get("conn-9999").assert(200, "x");
    let mut probe = TcpStream::connect(server.addr).unwrap();
    probe
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    probe.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
}

#[test]
fn a_request_head_over_64_kib_gets_431() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let raw = format!(
        "GET /kv/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_eq!(status_of(&server, raw.as_bytes()), Some(431));
    assert_still_healthy(&server);
}

/// hyper answers requests it cannot parse itself, before the routes see
/// them; those answers must carry the Content-Type every response has
/// (SPEC §2) all the same, and the server must go on serving.
#[test]
fn requests_hyper_refuses_still_get_a_content_type() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let long_uri = format!("GET /kv/{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70_000));
    let big_head = format!(
        "GET /kv/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    for (raw, expected) in [
        (&b"GARBAGE\r\n\r\n"[..], &[400][..]),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            &[400],
        ),
        (long_uri.as_bytes(), &[414, 431]),
        (big_head.as_bytes(), &[431]),
    ] {
        let response = send_raw(server.addr, raw).expect("an answer");
        assert!(
            expected.contains(&response.status),
            "{}: got {}",
            String::from_utf8_lossy(&raw[..20]),
            response.status
        );
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{} {:?}",
            response.status,
            response.headers
        );
    }
    assert_still_healthy(&server);
}
