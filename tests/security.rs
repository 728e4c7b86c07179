//! SPEC §7 against the real binary: the bearer token, the token file's
//! checks, protected mode, TLS, and the slow-client limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tls::{https_request, make_certs};
use common::{Response, Server, raw_request, read_response, send_raw, temp_dir};

const TOKEN: &str = "s3cr3t-token-0123456789abcdefghijklmnop";

/// Writes `content` to `dir/token` with `mode`.
fn token_file(dir: &Path, content: &str, mode: u32) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// One request with an optional `Authorization` header.
fn send(addr: SocketAddr, method: &str, path: &str, authorization: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let body = (method == "PUT").then_some(&b"v"[..]);
    send_raw(addr, &raw_request(addr, method, path, &headers, body)).expect("request")
}

#[test]
fn with_a_token_every_route_but_health_needs_it() {
    let secrets = temp_dir();
    let data = temp_dir();
    let token = token_file(secrets.path(), &format!("\n  {TOKEN}  \n"), 0o600);
    let server = Server::start(
        data.path(),
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    );
    let good = format!("Bearer {TOKEN}");
    let wrong: Vec<String> = vec![
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]), // a prefix
        format!("Bearer {TOKEN}x"),                      // one too many
        format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]), // one character off
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        "Bearer ".to_string(),
    ];
    let routes = [
        ("GET", "/kv/a"),
        ("PUT", "/kv/a"),
        ("DELETE", "/kv/a"),
        ("HEAD", "/kv/a"),
        ("DELETE", "/clear"),
        ("GET", "/metrics"),
        ("GET", "/cluster/info"),
        ("POST", "/raft/message"),
        ("GET", "/nowhere"),
        ("POST", "/health"),
    ];
    for (method, path) in routes {
        let mut attempts: Vec<Option<&str>> = vec![None];
        attempts.extend(wrong.iter().map(|w| Some(w.as_str())));
        for authorization in attempts {
            let response = send(server.addr, method, path, authorization);
            assert_eq!(
                response.status, 401,
                "{method} {path} with {authorization:?}: {response:?}"
            );
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            if method != "HEAD" {
                response.assert(401, "unauthorized\n");
            }
        }
    }
    // The health check stays open, for load balancers and orchestrators.
    send(server.addr, "GET", "/health", None).assert(200, "ok\n");
    assert_eq!(send(server.addr, "HEAD", "/health", None).status, 200);

    send(server.addr, "PUT", "/kv/a", Some(&good)).assert(200, "");
    send(server.addr, "GET", "/kv/a", Some(&good)).assert(200, "v");
    send(
        server.addr,
        "GET",
        "/kv/a",
        Some(&format!("bearer {TOKEN}")),
    )
    .assert(200, "v");
    send(server.addr, "GET", "/nowhere", Some(&good)).assert(404, "not found\n");
    send(server.addr, "DELETE", "/clear", Some(&good)).assert(200, "");

    let exit = server.stop();
    assert!(exit.status.success(), "{}", exit.log);
    assert!(
        exit.log.contains("DEBUG"),
        "no debug lines were logged:\n{}",
        exit.log
    );
    assert!(
        !exit.log.contains(TOKEN),
        "the token was logged:\n{}",
        exit.log
    );
    assert!(
        !exit.log.contains(&TOKEN[..16]),
        "part of the token was logged"
    );
}

/// Starts a server expected to refuse; returns its log and checks that
/// it changed nothing on disk.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let parent = temp_dir();
    let data = parent.path().join("data");
    let exit = match Server::try_start_with_env(&data, args, env) {
        Ok(server) => panic!("started with {args:?}:\n{}", server.log()),
        Err(exit) => exit,
    };
    assert_eq!(exit.status.code(), Some(2), "{}", exit.log);
    assert!(!data.exists(), "a refused start created {}", data.display());
    let lines: Vec<&str> = exit
        .log
        .lines()
        .filter(|l| l.starts_with("kvs: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{}", exit.log);
    lines[0].to_string()
}

#[test]
fn a_token_file_others_can_read_an_empty_one_and_a_short_one_are_refused() {
    let secrets = temp_dir();
    let open = token_file(secrets.path(), TOKEN, 0o644);
    let error = refused(&["--token-file", open.to_str().unwrap()], &[]);
    assert!(
        error.contains("chmod 600") && error.contains(open.to_str().unwrap()),
        "{error}"
    );
    assert!(!error.contains(TOKEN), "{error}");

    let group = token_file(secrets.path(), TOKEN, 0o640);
    let error = refused(&["--token-file", group.to_str().unwrap()], &[]);
    assert!(
        error.contains("group or others") && error.contains("--token-file"),
        "{error}"
    );

    let empty = token_file(secrets.path(), " \n\n", 0o600);
    let error = refused(&["--token-file", empty.to_str().unwrap()], &[]);
    assert!(
        error.contains("is empty") && error.contains("32"),
        "{error}"
    );

    let short = token_file(secrets.path(), "0123456789abcdef0123456789abcde\n", 0o600);
    let error = refused(&["--token-file", short.to_str().unwrap()], &[]);
    assert!(
        error.contains("31 characters") && error.contains("at least 32"),
        "{error}"
    );
    assert!(!error.contains("0123456789abcdef"), "{error}");

    let missing = secrets.path().join("absent");
    let error = refused(&["--token-file", missing.to_str().unwrap()], &[]);
    assert!(error.contains("cannot read --token-file"), "{error}");

    let error = refused(&["--token-file", secrets.path().to_str().unwrap()], &[]);
    assert!(error.contains("not a regular file"), "{error}");
}

/// The loopback address to reach a server that logged `addr`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

#[test]
fn binding_beyond_loopback_needs_a_token_or_insecure() {
    let error = refused(&["--bind", "0.0.0.0"], &[]);
    assert!(
        error.contains("0.0.0.0") && error.contains("--token-file") && error.contains("--insecure"),
        "{error}"
    );

    for (args, env) in [
        (vec!["--bind", "0.0.0.0", "--insecure"], vec![]),
        (vec!["--bind", "0.0.0.0"], vec![("KVS_INSECURE", "1")]),
    ] {
        let data = temp_dir();
        let server = Server::try_start_with_env(data.path(), &args, &env)
            .unwrap_or_else(|exit| panic!("{args:?} {env:?}: {}", exit.log));
        let addr = loopback(server.addr);
        send(addr, "PUT", "/kv/a", None).assert(200, "");
        send(addr, "GET", "/kv/a", None).assert(200, "v");
    }

    let secrets = temp_dir();
    let token = token_file(secrets.path(), TOKEN, 0o600);
    let data = temp_dir();
    let server = Server::start(
        data.path(),
        &["--bind", "0.0.0.0", "--token-file", token.to_str().unwrap()],
    );
    let addr = loopback(server.addr);
    assert_eq!(send(addr, "GET", "/kv/a", None).status, 401);
    send(addr, "GET", "/kv/a", Some(&format!("Bearer {TOKEN}"))).assert(404, "key not found\n");
}

#[test]
fn with_tls_the_port_speaks_https_only() {
    let secrets = temp_dir();
    let certs = make_certs(secrets.path());
    let data = temp_dir();
    let server = Server::start(
        data.path(),
        &[
            "--tls-cert",
            certs.cert.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    );
    https_request(
        server.addr,
        &certs.ca,
        "PUT",
        "/kv/k",
        &[],
        Some(b"over tls"),
    )
    .expect("trusted HTTPS client")
    .assert(200, "");
    https_request(server.addr, &certs.ca, "GET", "/kv/k", &[], None)
        .unwrap()
        .assert(200, "over tls");

    // A client that trusts another CA fails the handshake.
    let untrusted = https_request(server.addr, &certs.other_ca, "GET", "/kv/k", &[], None);
    let error = untrusted.expect_err("a client that does not trust the certificate got in");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "not a certificate error: {error}"
    );

    // Plain HTTP on the TLS port is served nothing.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    // Nothing, or a TLS alert record (content type 21).
    assert!(
        answer.is_empty() || (answer[0] == 0x15 && answer.len() < 16),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // And a standard client, where there is one.
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-sS", "--cacert", certs.ca.to_str().unwrap()])
        .arg(format!("https://127.0.0.1:{}/kv/k", server.addr.port()))
        .output()
    {
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"over tls");
    } else {
        eprintln!("curl not found: skipping the curl check");
    }
}

#[test]
fn tls_files_that_cannot_be_used_are_refused_with_the_file_named() {
    let secrets = temp_dir();
    let certs = make_certs(secrets.path());
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    // The certificate given as its own key.
    let error = refused(&["--tls-cert", cert, "--tls-key", cert], &[]);
    assert!(
        error.contains(cert) && error.contains("private key"),
        "{error}"
    );
    let error = refused(&["--tls-cert", key, "--tls-key", key], &[]);
    assert!(
        error.contains(key) && error.contains("certificate"),
        "{error}"
    );
    let missing = secrets.path().join("nope.pem");
    let error = refused(
        &["--tls-cert", missing.to_str().unwrap(), "--tls-key", key],
        &[],
    );
    assert!(error.contains("nope.pem"), "{error}");
}

#[test]
fn a_client_that_dribbles_its_head_is_cut_off_after_10s_while_others_are_served() {
    let data = temp_dir();
    let server = Server::start(data.path(), &[]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let started = Instant::now();
        // A head that never ends: one byte a second, as slowloris sends,
        // after blank lines that parsers skip (and that must not pass for
        // the end of a head).
        let head = b"\r\n\r\nGET /kv/a HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head {
            if stream.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            let mut buf = [0u8; 64];
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_secs(1) {
                match stream.read(&mut buf) {
                    Ok(0) => return started.elapsed(),
                    Ok(_) => panic!("the server answered a head that never ended"),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return started.elapsed(),
                }
            }
        }
        panic!("still connected after {:?}", started.elapsed());
    });
    // Others are served all the while.
    let started = Instant::now();
    while !slow.is_finished() && started.elapsed() < Duration::from_secs(20) {
        send(addr, "PUT", "/kv/b", None).assert(200, "");
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut = slow.join().unwrap();
    assert!(
        cut >= Duration::from_secs(9) && cut <= Duration::from_secs(13),
        "the slow client was cut off after {cut:?}, not about 10 s"
    );
}

#[test]
fn an_idle_connection_survives_the_head_limit_and_closes_after_30s() {
    let data = temp_dir();
    let server = Server::start(data.path(), &[]);
    let addr = server.addr;
    // A connection that never sends a byte is closed at 30 s.
    let silent = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(45)))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the server sent something to a silent client");
        started.elapsed()
    });
    // A keep-alive connection idle for longer than the head limit is
    // still served.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream, false)
        .unwrap()
        .assert(200, "ok\n");
    std::thread::sleep(Duration::from_secs(12));
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream, false)
        .expect("a keep-alive connection idle for 12 s was closed")
        .assert(200, "ok\n");

    let closed = silent.join().unwrap();
    assert!(
        closed >= Duration::from_secs(29) && closed <= Duration::from_secs(34),
        "a silent connection was closed after {closed:?}, not about 30 s"
    );
}

#[test]
fn a_pipelined_body_may_be_slow_but_a_stalled_one_gets_408_after_30s() {
    let data = temp_dir();
    let server = Server::start(data.path(), &[]);
    let addr = server.addr;
    // A body that stops is answered 408 once it has sent nothing for 30 s.
    let stalled = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(45)))
            .unwrap();
        stream
            .write_all(b"PUT /kv/s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let started = Instant::now();
        let response = read_response(&mut stream, false).expect("an answer");
        (started.elapsed(), response)
    });
    // Two pipelined requests, the second's head read ahead with the first,
    // its body finished 12 s later: longer than a head may take, but the
    // head was complete, so both are served.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nPUT /kv/p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
        )
        .unwrap();
    read_response(&mut stream, false)
        .unwrap()
        .assert(200, "ok\n");
    std::thread::sleep(Duration::from_secs(12));
    stream.write_all(b"cde").unwrap();
    read_response(&mut stream, false)
        .expect("the pipelined PUT was cut off")
        .assert(200, "");
    send(addr, "GET", "/kv/p", None).assert(200, "abcde");

    let (took, response) = stalled.join().unwrap();
    response.assert(
        408,
        "request body stalled: no data for 30 s; send the whole body without pausing\n",
    );
    assert!(
        took >= Duration::from_secs(29) && took <= Duration::from_secs(34),
        "the stalled body was answered after {took:?}"
    );
    send(addr, "GET", "/kv/s", None).assert(404, "key not found\n");
}
