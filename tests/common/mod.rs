//! Test fixtures shared by the integration tests: a real `kvs serve`
//! process on a free port in a temp dir, and a plain HTTP/1.1 client that
//! shows responses byte for byte.
#![allow(dead_code)] // each test binary uses a different part of this

pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const KVS: &str = env!("CARGO_BIN_EXE_kvs");

/// How long a server may take to start or stop before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `kvs serve`. Killed (by pid) when dropped, so a failing test
/// never leaves a server behind.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// Appends every line a server writes on `stderr` to `log`, on a thread
/// of its own, and sends the address it logs `listening on`.
pub fn capture_log(
    stderr: std::process::ChildStderr,
    log: Arc<Mutex<String>>,
) -> mpsc::Receiver<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split("listening on ").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                if let Ok(addr) = addr.parse::<SocketAddr>() {
                    let _ = tx.send(addr);
                }
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    rx
}

/// How a server process ended.
pub struct Exit {
    pub status: ExitStatus,
    pub log: String,
    pub took: Duration,
}

impl Server {
    /// Starts `kvs serve` on a free port with `dir` as working directory,
    /// and waits until it listens.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        match Server::try_start(dir, args) {
            Ok(server) => server,
            Err(exit) => panic!(
                "kvs serve exited with {} before listening:\n{}",
                exit.status, exit.log
            ),
        }
    }

    /// Like `start`, but returns how the process ended if it exits before
    /// listening.
    pub fn try_start(dir: &Path, args: &[&str]) -> Result<Server, Exit> {
        Server::try_start_with_env(dir, args, &[])
    }

    /// Like `try_start`, with extra environment variables (such as
    /// `KVS_CRASH_AT`, which the test build's crash points obey).
    pub fn try_start_with_env(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, Exit> {
        let mut command = Command::new(KVS);
        command
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--port=0")
            .arg("--working-dir")
            .arg(dir)
            .args(args);
        Server::launch(command, dir)
    }

    /// Starts `kvs serve --working-dir RELATIVE` from the directory `cwd`.
    pub fn start_in(cwd: &Path, relative: &str) -> Server {
        let mut command = Command::new(KVS);
        command
            .current_dir(cwd)
            .args(["serve", "--port=0", "--working-dir", relative]);
        Server::launch(command, &cwd.join(relative))
            .unwrap_or_else(|exit| panic!("kvs serve exited with {}:\n{}", exit.status, exit.log))
    }

    fn launch(mut command: Command, dir: &Path) -> Result<Server, Exit> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvs");
        let log = Arc::new(Mutex::new(String::new()));

        let stderr = child.stderr.take().unwrap();
        let rx = capture_log(stderr, Arc::clone(&log));
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    return Ok(Server {
                        child,
                        addr,
                        dir: dir.to_owned(),
                        log,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader thread catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let log = log.lock().unwrap().clone();
                return Err(Exit {
                    status,
                    log,
                    took: started.elapsed(),
                });
            }
            if started.elapsed() > PATIENCE {
                // Never leave a server behind, even when failing.
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvs serve did not start in time:\n{}", log.lock().unwrap());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: the process dies at once, saving nothing.
    pub fn kill(self) -> Exit {
        self.stop_with(Signal::SIGKILL)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(self) -> Exit {
        self.stop_with(Signal::SIGTERM)
    }

    pub fn stop_with(self, signal: Signal) -> Exit {
        self.signal(signal);
        self.wait()
    }

    /// Waits for the process to exit on its own (after a signal sent).
    pub fn wait(mut self) -> Exit {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return Exit {
                    status,
                    log: self.log(),
                    took: started.elapsed(),
                };
            }
            // On a timeout, Drop kills the process.
            assert!(
                started.elapsed() < PATIENCE,
                "kvs serve did not exit in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn get(&self, key: &str) -> Response {
        request(self.addr, "GET", &format!("/kv/{key}"), None)
    }

    pub fn put(&self, key: &str, value: &str) -> Response {
        request(
            self.addr,
            "PUT",
            &format!("/kv/{key}"),
            Some(value.as_bytes()),
        )
    }

    pub fn delete(&self, key: &str) -> Response {
        request(self.addr, "DELETE", &format!("/kv/{key}"), None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exit {
    pub fn assert_clean(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "exit status; log:\n{}",
            self.log
        );
    }
}

/// An HTTP response as it came off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// Asserts status and body, and that the Content-Type is the API's.
    #[track_caller]
    pub fn assert(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status, self.text()),
            (status, body),
            "response: {self:?}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "content-type of {self:?}"
        );
    }
}

/// Sends one request on a new connection and reads the whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    send_raw_request(addr, method, path, body).expect("request")
}

/// Sends raw bytes on a new connection and parses what comes back; an
/// error if the server closed the connection without a response.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(raw)?;
    read_response(&mut stream, raw.starts_with(b"HEAD "))
}

/// Reads one response from `stream`, which the server then closes or
/// keeps open.
pub fn read_response(stream: &mut impl Read, head: bool) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = parsed
            .parse(&buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            let status = parsed.code.unwrap();
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            if status == 100 {
                buf.drain(..len);
                continue;
            }
            let content_length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let body_len = if head { 0 } else { content_length };
            while buf.len() < len + body_len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(Response {
                status,
                headers,
                body: buf[len..len + body_len].to_vec(),
            });
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The data file of a working directory, as text.
pub fn data_file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("snapshot.jsonl")).unwrap_or_default()
}

/// A fresh temporary working directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A working directory for the offline tools, in the spirit of fd's
/// `TestEnv`: runs `kvs` subcommands against it.
pub struct TestEnv {
    root: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv { root: temp_dir() }
    }

    /// The working directory (created on first use by a writer).
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// `kvs SUBCOMMAND --working-dir DIR ARGS...`
    pub fn kvs(&self, subcommand: &str, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::new(KVS);
        cmd.arg(subcommand)
            .arg("--working-dir")
            .arg(self.dir())
            .args(args);
        cmd
    }

    /// Seeds the data file with `text`, byte for byte.
    pub fn write_data_file(&self, text: &str) {
        std::fs::create_dir_all(self.dir()).unwrap();
        std::fs::write(self.dir().join("snapshot.jsonl"), text).unwrap();
    }

    pub fn data_file(&self) -> String {
        data_file(&self.dir())
    }

    /// The names in the working directory, sorted.
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// A data file line.
pub fn line(key: &str, value: &str) -> String {
    format!("{}\n", serde_json::json!({ "key": key, "value": value }))
}

/// Like `request`, but returns an error instead of panicking when the
/// server is gone or closed the connection unanswered.
pub fn send_raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    send_raw(addr, &raw_request(addr, method, path, &[], body))
}

/// The bytes of one request that closes its connection: the head with
/// `headers` (and `Content-Length` when there is a body), then the body.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    raw
}

/// Four lives of a server on `dir`: each checks every key the earlier
/// lives wrote, writes `per_life` keys of its own, and ends with `end` (a
/// clean stop, or a kill).
pub fn accumulate_over_four_lives(
    dir: &Path,
    args: &[&str],
    per_life: usize,
    end: impl Fn(Server),
) {
    for life in 0..4 {
        let server = Server::start(dir, args);
        for earlier in 0..life {
            for i in 0..per_life {
                server
                    .get(&format!("c{earlier}-{i}"))
                    .assert(200, &format!("life {earlier} value {i}"));
            }
        }
        for i in 0..per_life {
            server
                .put(&format!("c{life}-{i}"), &format!("life {life} value {i}"))
                .assert(200, "");
        }
        end(server);
    }
}

/// 10,000 PUTs from 500 concurrent clients, each opening a new connection
/// per request, as Go's default client does against a server that closes
/// idle ones. Returns once every one was acknowledged.
pub fn put_10k_from_500_clients(addr: SocketAddr) {
    let clients: Vec<_> = (0..500)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..20 {
                    let value = format!("value {c} {i}");
                    request(
                        addr,
                        "PUT",
                        &format!("/kv/key-{c}-{i}"),
                        Some(value.as_bytes()),
                    )
                    .assert(200, "");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

/// Checks every `step`-th client's keys from `put_10k_from_500_clients`.
pub fn check_10k_sample(server: &Server, step: usize) {
    assert!(
        server.log().contains("loaded 10000 keys"),
        "{}",
        server.log()
    );
    for c in (0..500).step_by(step) {
        for i in 0..20 {
            server
                .get(&format!("key-{c}-{i}"))
                .assert(200, &format!("value {c} {i}"));
        }
    }
}
