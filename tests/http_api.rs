//! SPEC §2 against the real binary: every row of the API table, byte for
//! byte, plus key decoding, validation order and body handling.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{Server, read_response, request, send_raw, temp_dir};

#[test]
fn put_get_head_delete_round_trip() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let value = "spaces  and\ttabs\nand newlines\r\nand emoji 🦀✨ and \"quotes\" \\";

    server.put("user:1_a.b-C", value).assert(200, "");
    server.get("user:1_a.b-C").assert(200, value);

    let head = request(server.addr, "HEAD", "/kv/user:1_a.b-C", None);
    head.assert(200, "");
    assert_eq!(
        head.header("content-length"),
        Some(value.len().to_string().as_str())
    );

    server.put("user:1_a.b-C", "second").assert(200, "");
    server.get("user:1_a.b-C").assert(200, "second");

    server.delete("user:1_a.b-C").assert(200, "");
    server.get("user:1_a.b-C").assert(404, "key not found\n");
    request(server.addr, "HEAD", "/kv/user:1_a.b-C", None).assert(404, "");
    // Deleting what is not there is still a success.
    server.delete("user:1_a.b-C").assert(200, "");
}

#[test]
fn keys_are_case_sensitive_and_percent_decoded() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    server.put("Key", "upper").assert(200, "");
    server.put("key", "lower").assert(200, "");
    server.get("Key").assert(200, "upper");
    server.get("KEY").assert(404, "key not found\n");
    // %3A is ':' and %61 is 'a': the decoded key is what is stored.
    server.put("a%3A%61", "decoded").assert(200, "");
    server.get("a:a").assert(200, "decoded");
}

#[test]
fn clear_removes_everything() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for i in 0..10 {
        server.put(&format!("k{i}"), "v").assert(200, "");
    }
    request(server.addr, "DELETE", "/clear", None).assert(200, "");
    for i in 0..10 {
        server.get(&format!("k{i}")).assert(404, "key not found\n");
    }
    request(server.addr, "DELETE", "/clear", None).assert(200, "");
}

#[test]
fn health() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    request(server.addr, "GET", "/health", None).assert(200, "ok\n");
    request(server.addr, "HEAD", "/health", None).assert(200, "");
}

#[test]
fn key_errors() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for method in ["GET", "PUT", "DELETE", "HEAD", "POST"] {
        let body = (method == "PUT").then_some(&b"v"[..]);
        let expect = |path: &str, text: &str| {
            let response = request(server.addr, method, path, body);
            let text = if method == "HEAD" { "" } else { text };
            response.assert(400, text);
        };
        expect("/kv/", "key cannot be empty\n");
        expect("/kv/a%20b", "key contains invalid characters\n");
        expect("/kv/a/b", "key contains invalid characters\n");
        expect("/kv/a%2Fb", "key contains invalid characters\n");
        expect("/kv/caf%C3%A9", "key contains invalid characters\n");
        expect("/kv/%FF", "key contains invalid characters\n");
        expect(&format!("/kv/{}", "k".repeat(1025)), "key too long\n");
    }
    let longest = "k".repeat(1024);
    server.put(&longest, "fits").assert(200, "");
    server.get(&longest).assert(200, "fits");
}

#[test]
fn value_errors() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &["--max-value-bytes", "10"]);
    request(server.addr, "PUT", "/kv/k", Some(b"")).assert(400, "value cannot be empty\n");
    request(server.addr, "PUT", "/kv/k", None).assert(400, "value cannot be empty\n");
    request(server.addr, "PUT", "/kv/k", Some(b"\xff\xfe"))
        .assert(400, "value must be valid UTF-8\n");
    request(server.addr, "PUT", "/kv/k", Some(b"0123456789")).assert(200, "");
    request(server.addr, "PUT", "/kv/k", Some(b"0123456789x")).assert(413, "value too large\n");
    server.get("k").assert(200, "0123456789");
}

#[test]
fn chunked_bodies_are_read_and_limited_while_reading() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &["--max-value-bytes", "10"]);
    let chunked = |chunks: &[&str]| {
        let mut raw =
            b"PUT /kv/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        for chunk in chunks {
            raw.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        send_raw(server.addr, &raw).unwrap()
    };
    chunked(&["hello", " wo", "rl"]).assert(200, "");
    server.get("c").assert(200, "hello worl");
    chunked(&["hello", " world"]).assert(413, "value too large\n");
    server.get("c").assert(200, "hello worl");

    // A chunked body that never ends is refused as soon as it crosses the
    // limit, without waiting for the rest.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"PUT /kv/d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n")
        .unwrap();
    read_response(&mut stream, false)
        .unwrap()
        .assert(413, "value too large\n");
}

#[test]
fn oversized_content_length_is_refused_before_the_body_arrives() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    // Default limit: 16 MiB. Nothing of the body is ever sent.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 16777217\r\n\r\n")
        .unwrap();
    read_response(&mut stream, false)
        .unwrap()
        .assert(413, "value too large\n");
    // Exactly 16 MiB is accepted.
    let value = "v".repeat(16 * 1024 * 1024);
    server.put("big", &value).assert(200, "");
    assert_eq!(server.get("big").body.len(), value.len());
}

#[test]
fn method_not_allowed_names_the_allowed_methods() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for method in ["POST", "PATCH", "OPTIONS"] {
        let response = request(server.addr, method, "/kv/k", None);
        response.assert(405, "method not allowed\n");
        assert_eq!(response.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    }
    for method in ["GET", "PUT", "POST"] {
        let response = request(server.addr, method, "/clear", None);
        response.assert(405, "method not allowed\n");
        assert_eq!(response.header("allow"), Some("DELETE"));
    }
    // The key is checked before the method; the value after it.
    request(server.addr, "POST", "/kv/", None).assert(400, "key cannot be empty\n");
    request(server.addr, "POST", "/kv/k", Some(b"")).assert(405, "method not allowed\n");
}

#[test]
fn unknown_paths_are_404_whatever_the_method() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for method in ["GET", "PUT", "POST", "DELETE"] {
        for path in ["/", "/kv", "/nope", "/kvx/a", "/clear/x", "/health/x"] {
            request(server.addr, method, path, None).assert(404, "not found\n");
        }
    }
}

#[test]
fn concurrent_puts_to_one_key_end_with_one_of_the_values() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let value = format!("writer {t} write {i}");
                    request(addr, "PUT", "/kv/shared", Some(value.as_bytes())).assert(200, "");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let last = server.get("shared");
    assert_eq!(last.status, 200);
    assert!(
        (0..16).any(|t| last.text() == format!("writer {t} write 24")),
        "{}",
        last.text()
    );
}
