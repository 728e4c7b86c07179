//! SPEC §3 against the real binary: signals, the save at shutdown, the
//! load at start, the lock, and what happens to bad or leftover files.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, data_file, read_response, temp_dir};
use nix::sys::signal::Signal;

#[test]
fn sigterm_and_sigint_save_everything_and_exit_zero() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let dir = temp_dir();
        let server = Server::start(dir.path(), &[]);
        server.put("a", "1").assert(200, "");
        server.put("b", "two\nlines").assert(200, "");
        server.put("gone", "x").assert(200, "");
        server.delete("gone").assert(200, "");
        let exit = server.stop_with(signal);
        exit.assert_clean();
        for needle in [
            "loaded 0 keys",
            "listening on",
            "shutdown begun",
            "saved 2 keys",
            "exiting",
        ] {
            assert!(
                exit.log.contains(needle),
                "{signal}: no {needle:?} in\n{}",
                exit.log
            );
        }

        let server = Server::start(dir.path(), &[]);
        assert!(server.log().contains("loaded 2 keys"), "{}", server.log());
        server.get("a").assert(200, "1");
        server.get("b").assert(200, "two\nlines");
        server.get("gone").assert(404, "key not found\n");
        server.stop().assert_clean();
    }
}

#[test]
fn four_restart_cycles_accumulate_keys() {
    let dir = temp_dir();
    common::accumulate_over_four_lives(dir.path(), &[], 25, |server| server.stop().assert_clean());
    assert_eq!(data_file(dir.path()).lines().count(), 100);
}

#[test]
fn data_file_is_sorted_json_lines_with_exactly_two_fields() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for key in ["b", "a", "B", "a:1", "A-", "a.b", "_"] {
        server.put(key, &format!("value of {key}")).assert(200, "");
    }
    server.put("q", "say \"hi\"\\\n\t🦀").assert(200, "");
    server.stop().assert_clean();

    let text = data_file(dir.path());
    assert!(text.ends_with('\n'));
    let mut keys = Vec::new();
    for line in text.lines() {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap();
        let fields: Vec<_> = object.keys().map(String::as_str).collect();
        assert_eq!(fields, ["key", "value"], "{line}");
        assert!(line.starts_with("{\"key\":"), "key first: {line}");
        keys.push(object["key"].as_str().unwrap().to_owned());
    }
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(keys, sorted);
    assert!(
        text.contains("{\"key\":\"q\",\"value\":\"say \\\"hi\\\"\\\\\\n\\t🦀\"}\n"),
        "{text}"
    );
}

#[test]
fn ten_thousand_puts_on_500_connections_then_sigterm_lose_nothing() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    common::put_10k_from_500_clients(server.addr);
    server.stop().assert_clean();

    let server = Server::start(dir.path(), &[]);
    common::check_10k_sample(&server, 7);
    server.stop().assert_clean();
    assert_eq!(data_file(dir.path()).lines().count(), 10_000);
}

#[test]
fn a_put_still_arriving_at_sigterm_completes_and_persists() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"PUT /kv/late HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf ")
        .unwrap();
    // Let the server read the headers and start on the body.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"done!").unwrap();
    read_response(&mut stream, false).unwrap().assert(200, "");
    server.wait().assert_clean();
    assert_eq!(
        data_file(dir.path()),
        "{\"key\":\"late\",\"value\":\"half done!\"}\n"
    );
}

/// Opens a PUT whose body never finishes, and returns its connection.
fn stall_a_put(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"PUT /kv/stuck HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nnever fini")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream
}

#[test]
fn a_stalled_client_cannot_hold_shutdown_past_the_timeout() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &["--shutdown-timeout", "1s"]);
    server.put("kept", "yes").assert(200, "");
    let _stalled = stall_a_put(&server);
    let exit = server.stop();
    exit.assert_clean();
    assert!(exit.took >= Duration::from_millis(900), "{:?}", exit.took);
    assert!(exit.took < Duration::from_secs(5), "{:?}", exit.took);
    assert!(exit.log.contains("gave up waiting"), "{}", exit.log);
    assert_eq!(
        data_file(dir.path()),
        "{\"key\":\"kept\",\"value\":\"yes\"}\n"
    );
}

#[test]
fn a_second_signal_ends_the_wait_but_not_the_save() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &["--shutdown-timeout", "60s"]);
    server.put("kept", "yes").assert(200, "");
    let _stalled = stall_a_put(&server);
    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    server.signal(Signal::SIGINT);
    let exit = server.wait();
    exit.assert_clean();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(exit.log.contains("second signal"), "{}", exit.log);
    assert!(exit.log.contains("saved 1 keys"), "{}", exit.log);
    assert_eq!(
        data_file(dir.path()),
        "{\"key\":\"kept\",\"value\":\"yes\"}\n"
    );
}

#[test]
fn a_corrupt_data_file_is_refused_and_left_untouched() {
    let dir = temp_dir();
    let corrupt = "{\"key\":\"a\",\"value\":\"1\"}\n\n{\"key\":\"b\",\"value\":2}\n{\"key\":\"c\",\"value\":\"3\"}\n";
    std::fs::write(dir.path().join("snapshot.jsonl"), corrupt).unwrap();
    let Err(exit) = Server::try_start(dir.path(), &[]) else {
        panic!("a server started on a corrupt data file");
    };
    assert_eq!(exit.status.code(), Some(2), "{}", exit.log);
    assert!(exit.log.contains("snapshot.jsonl, line 3:"), "{}", exit.log);
    assert!(!exit.log.contains("panicked"), "{}", exit.log);
    assert_eq!(data_file(dir.path()), corrupt);
}

#[test]
fn invalid_keys_and_values_in_the_data_file_are_refused() {
    for (line, needle) in [
        (
            "{\"key\":\"a b\",\"value\":\"1\"}",
            "key contains invalid characters",
        ),
        ("{\"key\":\"a\",\"value\":\"\"}", "value cannot be empty"),
        (
            "{\"key\":\"a\",\"value\":\"1\",\"ttl\":5}",
            "unknown field `ttl`",
        ),
        ("{\"key\":\"a\"}", "missing field `value`"),
        ("not json", "not valid JSON"),
    ] {
        let dir = temp_dir();
        let text = format!("{line}\n");
        std::fs::write(dir.path().join("snapshot.jsonl"), &text).unwrap();
        let Err(exit) = Server::try_start(dir.path(), &[]) else {
            panic!("started with {line}");
        };
        assert_eq!(exit.status.code(), Some(2));
        assert!(exit.log.contains("line 1:"), "{}", exit.log);
        assert!(exit.log.contains(needle), "{line}: {}", exit.log);
        assert_eq!(data_file(dir.path()), text);
    }
}

#[test]
fn a_leftover_temp_file_is_ignored_and_removed() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("snapshot.jsonl"),
        "{\"key\":\"real\",\"value\":\"data\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("snapshot.jsonl.tmp"), "{\"key\":\"half").unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(!dir.path().join("snapshot.jsonl.tmp").exists());
    assert!(
        server.log().contains("interrupted save"),
        "{}",
        server.log()
    );
    server.get("real").assert(200, "data");
    server.stop().assert_clean();
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = temp_dir();
    let first = Server::start(dir.path(), &[]);
    let Err(exit) = Server::try_start(dir.path(), &[]) else {
        panic!("two servers on one directory");
    };
    assert_eq!(exit.status.code(), Some(2));
    let expected = format!("is in use by another kvs process (pid {})", first.pid());
    assert!(exit.log.contains(&expected), "{}", exit.log);
    first.put("still", "works").assert(200, "");
    first.stop().assert_clean();
}

#[test]
fn a_failed_save_exits_2_and_keeps_the_previous_file() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    server.put("old", "data").assert(200, "");
    server.stop().assert_clean();
    let before = data_file(dir.path());

    let server = Server::start(dir.path(), &[]);
    server.put("new", "data").assert(200, "");
    // A directory where the temp file must go makes the save fail.
    std::fs::create_dir(dir.path().join("snapshot.jsonl.tmp")).unwrap();
    let exit = server.stop();
    assert_eq!(exit.status.code(), Some(2), "{}", exit.log);
    assert!(exit.log.contains("cannot save"), "{}", exit.log);
    assert!(
        exit.log.contains("previous data file was left intact"),
        "{}",
        exit.log
    );
    assert_eq!(data_file(dir.path()), before);
}

#[test]
fn the_working_directory_is_created_and_relative_paths_work() {
    let dir = temp_dir();
    let nested = dir.path().join("a/b/c");
    let server = Server::start_in(dir.path(), "a/b/c");
    server.put("k", "v").assert(200, "");
    server.stop().assert_clean();
    assert!(nested.join("LOCK").exists());
    assert_eq!(data_file(&nested), "{\"key\":\"k\",\"value\":\"v\"}\n");
}
