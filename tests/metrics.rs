//! SPEC §7 `GET /metrics`: the Prometheus text format, accepted by
//! `promtool check metrics`, with counters that move as requests are made.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Server, request, temp_dir};

/// The value of the sample `name` (with its labels, exactly as exposed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}

fn scrape(server: &Server) -> String {
    let response = request(server.addr, "GET", "/metrics", None);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response.text().to_owned()
}

#[test]
fn metrics_count_requests_and_show_the_store_and_the_log() {
    let data = temp_dir();
    let server = Server::start(data.path(), &[]);
    let before = scrape(&server);
    let puts = r#"kvs_http_requests_total{method="PUT",route="/kv/{key}",status="200"}"#;
    let misses = r#"kvs_http_requests_total{method="GET",route="/kv/{key}",status="404"}"#;
    assert_eq!(sample(&before, puts), None, "{before}");
    assert_eq!(sample(&before, "kvs_keys"), Some(0.0), "{before}");

    for i in 0..25 {
        server.put(&format!("k{i}"), "value").assert(200, "");
    }
    for _ in 0..3 {
        server.get("absent").assert(404, "key not found\n");
    }
    let after = scrape(&server);
    assert_eq!(sample(&after, puts), Some(25.0), "{after}");
    assert_eq!(sample(&after, misses), Some(3.0), "{after}");
    assert_eq!(sample(&after, "kvs_keys"), Some(25.0), "{after}");
    let latencies = r#"kvs_http_request_duration_seconds_count{method="PUT",route="/kv/{key}"}"#;
    assert_eq!(sample(&after, latencies), Some(25.0), "{after}");
    // Every PUT was fsynced, in at least one batch.
    let batches = sample(&after, "kvs_fsync_duration_seconds_count").expect("fsync count");
    assert!((1.0..=25.0).contains(&batches), "{after}");
    let batched = sample(&after, "kvs_fsync_batch_writes_sum").expect("batch sum");
    assert_eq!(batched, 25.0, "{after}");
    assert!(
        sample(&after, "kvs_log_size_bytes").expect("log size") > 0.0,
        "{after}"
    );
    // The previous scrape is counted too.
    let scrapes = r#"kvs_http_requests_total{method="GET",route="/metrics",status="200"}"#;
    assert_eq!(sample(&after, scrapes), Some(1.0), "{after}");
    // Single nodes show no Raft state.
    assert!(!after.contains("kvs_raft_"), "{after}");

    promtool_accepts(&after);
}

/// `promtool check metrics` on `text`, where promtool is installed (CI
/// installs it, and sets KVS_REQUIRE_PROMTOOL so its absence fails).
fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("KVS_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {e}"
            );
            eprintln!("promtool not found ({e}): skipping the format check");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_need_the_token_like_everything_but_health() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = temp_dir();
    let token = secrets.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = temp_dir();
    let server = Server::start(data.path(), &["--token-file", token.to_str().unwrap()]);
    let response = request(server.addr, "GET", "/metrics", None);
    response.assert(401, "unauthorized\n");
}

#[test]
fn metrics_count_disk_errors_and_checkpoints() {
    let data = temp_dir();
    // The second fsync fails once (a test build's fault injection); the
    // log heals, and a small log limit makes checkpoints frequent.
    let server = Server::try_start_with_env(
        data.path(),
        &["--wal-max-bytes", "2000"],
        &[("KVS_FAIL_AT", "wal-fsync#2")],
    )
    .unwrap_or_else(|exit| panic!("{}", exit.log));
    server.put("a", "1").assert(200, "");
    let refused = server.put("b", "2");
    assert_eq!(refused.status, 503, "{refused:?}");
    let started = std::time::Instant::now();
    // Writes resume on their own; then enough of them for checkpoints.
    let mut written = 0;
    while written < 200 {
        assert!(started.elapsed().as_secs() < 20, "writes did not resume");
        if server.put(&format!("k{written}"), &"v".repeat(40)).status == 200 {
            written += 1;
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = scrape(&server);
        if sample(&text, r#"kvs_checkpoints_total{result="ok"}"#).is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint counted:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        sample(&text, "kvs_disk_errors_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "kvs_checkpoint_duration_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    promtool_accepts(&text);
}
