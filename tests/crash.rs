//! Crash safety against the real binary: whatever kills the server
//! (SIGKILL, or an abort injected at any step of a checkpoint, a save or a
//! restore), the next start shows exactly the acknowledged writes: nothing
//! acknowledged is lost and nothing deleted comes back.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Server, TestEnv, data_file, line, request, temp_dir};
use predicates::prelude::*;

/// What the clients were told: key -> Some(value) after an acknowledged
/// PUT, None after an acknowledged DELETE.
type Acked = BTreeMap<String, Option<String>>;

/// Checks that a restarted server shows every acknowledged write; keys
/// named in `unsure` (a write in flight when the server died) may show
/// either their old or their new state.
#[track_caller]
fn assert_recovered(server: &Server, acked: &Acked, unsure: &[String]) {
    for (key, expected) in acked {
        if unsure.contains(key) {
            continue;
        }
        let response = server.get(key);
        match expected {
            Some(value) => response.assert(200, value),
            None => response.assert(404, "key not found\n"),
        }
    }
}

#[test]
fn acknowledged_puts_overwrites_and_deletes_survive_sigkill() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let mut acked = Acked::new();
    for i in 0..20 {
        server
            .put(&format!("k{i}"), &format!("v{i}"))
            .assert(200, "");
        acked.insert(format!("k{i}"), Some(format!("v{i}")));
    }
    for i in 0..5 {
        server.put(&format!("k{i}"), "overwritten").assert(200, "");
        acked.insert(format!("k{i}"), Some("overwritten".into()));
    }
    for i in 5..10 {
        server.delete(&format!("k{i}")).assert(200, "");
        acked.insert(format!("k{i}"), None);
    }
    server.kill();

    let server = Server::start(dir.path(), &[]);
    assert!(
        server.log().contains("and 30 log records"),
        "{}",
        server.log()
    );
    assert_recovered(&server, &acked, &[]);
    server.stop().assert_clean();
    assert!(
        !dir.path().join("wal.jsonl").exists(),
        "the log outlived a clean stop"
    );
}

#[test]
fn a_clear_survives_sigkill() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    server.put("a", "1").assert(200, "");
    server.stop().assert_clean();
    let server = Server::start(dir.path(), &[]);
    server.put("b", "2").assert(200, "");
    request(server.addr, "DELETE", "/clear", None).assert(200, "");
    server.put("c", "3").assert(200, "");
    server.kill();
    let server = Server::start(dir.path(), &[]);
    server.get("a").assert(404, "key not found\n");
    server.get("b").assert(404, "key not found\n");
    server.get("c").assert(200, "3");
}

#[test]
fn five_hundred_sequential_1000_byte_puts_then_sigkill() {
    for fsync in ["always", "periodic"] {
        let dir = temp_dir();
        let server = Server::start(dir.path(), &["--fsync", fsync]);
        for i in 0..500 {
            let value = format!("{i:04}{}", "x".repeat(996));
            server.put(&format!("seq-{i}"), &value).assert(200, "");
        }
        server.kill();
        let server = Server::start(dir.path(), &[]);
        assert!(
            server.log().contains("loaded 500 keys"),
            "{fsync}: {}",
            server.log()
        );
        for i in (0..500).step_by(37).chain([499]) {
            let response = server.get(&format!("seq-{i}"));
            assert_eq!(response.status, 200);
            assert_eq!(response.body.len(), 1000);
            assert!(response.text().starts_with(&format!("{i:04}x")));
        }
    }
}

#[test]
fn ten_thousand_puts_on_500_connections_then_sigkill() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr;
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
    server.kill();

    let server = Server::start(dir.path(), &[]);
    assert!(
        server.log().contains("loaded 10000 keys"),
        "{}",
        server.log()
    );
    for c in (0..500).step_by(11) {
        for i in 0..20 {
            server
                .get(&format!("key-{c}-{i}"))
                .assert(200, &format!("value {c} {i}"));
        }
    }
}

#[test]
fn four_sigkill_cycles_accumulate_keys() {
    let dir = temp_dir();
    for cycle in 0..4 {
        let server = Server::start(dir.path(), &["--wal-max-bytes", "2000"]);
        for earlier in 0..cycle {
            for i in 0..30 {
                server
                    .get(&format!("c{earlier}-{i}"))
                    .assert(200, &format!("cycle {earlier} value {i}"));
            }
        }
        for i in 0..30 {
            server
                .put(
                    &format!("c{cycle}-{i}"),
                    &format!("cycle {cycle} value {i}"),
                )
                .assert(200, "");
        }
        server.kill();
    }
    let server = Server::start(dir.path(), &[]);
    assert!(server.log().contains("loaded 120 keys"), "{}", server.log());
}

#[test]
fn a_torn_last_record_is_dropped_with_a_warning_and_cut_off() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    server.put("a", "1").assert(200, "");
    server.put("b", "2").assert(200, "");
    server.kill();
    let wal = dir.path().join("wal.jsonl");
    let whole = std::fs::read(&wal).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(b"{\"op\":\"set\",\"key\":\"c\",\"val");
    std::fs::write(&wal, &torn).unwrap();

    // Readers skip it and leave the file alone.
    let env_dir = dir.path().to_str().unwrap();
    assert_cmd::Command::new(common::KVS)
        .args(["dump", "--working-dir", env_dir])
        .assert()
        .success()
        .stdout([line("a", "1"), line("b", "2")].concat());
    assert_eq!(std::fs::read(&wal).unwrap(), torn);

    let server = Server::start(dir.path(), &[]);
    let log = server.log();
    assert!(log.contains("dropped a torn last record"), "{log}");
    assert!(
        log.contains(&format!("byte offset {}", whole.len())),
        "{log}"
    );
    assert_eq!(std::fs::read(&wal).unwrap(), whole);
    server.get("a").assert(200, "1");
    server.get("c").assert(404, "key not found\n");
    // New writes append after the cut, not after the garbage.
    server.put("d", "4").assert(200, "");
    server.kill();
    let server = Server::start(dir.path(), &[]);
    server.get("d").assert(200, "4");
    server.get("b").assert(200, "2");
}

#[test]
fn a_bad_record_in_the_middle_is_refused_and_left_untouched() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    for key in ["a", "b", "c"] {
        server.put(key, "v").assert(200, "");
    }
    server.kill();
    let wal = dir.path().join("wal.jsonl");
    let text = std::fs::read_to_string(&wal).unwrap();
    let corrupt = text.replacen(
        "\"op\":\"set\",\"key\":\"b\"",
        "\"op\":\"set\",\"key\":\"b b\"",
        1,
    );
    std::fs::write(&wal, &corrupt).unwrap();
    let Err(exit) = Server::try_start(dir.path(), &[]) else {
        panic!("started on a corrupt log");
    };
    assert_eq!(exit.status.code(), Some(2), "{}", exit.log);
    assert!(exit.log.contains("wal.jsonl, line 2:"), "{}", exit.log);
    assert!(
        exit.log.contains("key contains invalid characters"),
        "{}",
        exit.log
    );
    assert_eq!(std::fs::read_to_string(&wal).unwrap(), corrupt);
}

/// Writes until the server dies at `crash_at`, through checkpoints forced
/// by a tiny `--wal-max-bytes`, then restarts it and checks that exactly
/// the acknowledged writes are there. Keys deleted before the crash run
/// must stay deleted.
fn crash_during_writes(crash_at: &str) {
    let dir = temp_dir();
    let mut acked = Acked::new();
    // A first life that ends cleanly: a data file with deletions behind it.
    let server = Server::start(dir.path(), &[]);
    for i in 0..20 {
        server.put(&format!("old-{i}"), "old").assert(200, "");
        acked.insert(format!("old-{i}"), Some("old".into()));
    }
    for i in 0..10 {
        server.delete(&format!("old-{i}")).assert(200, "");
        acked.insert(format!("old-{i}"), None);
    }
    server.stop().assert_clean();

    let server = Server::try_start_with_env(
        dir.path(),
        &["--wal-max-bytes", "1500"],
        &[("KVS_CRASH_AT", crash_at)],
    )
    .unwrap_or_else(|exit| panic!("{crash_at}: did not start: {}", exit.log));
    let mut unsure = Vec::new();
    for i in 0..2000 {
        let (key, value) = (format!("new-{}", i % 150), format!("value {i}"));
        let op = if i % 7 == 3 { "DELETE" } else { "PUT" };
        let body = (op == "PUT").then_some(value.as_bytes());
        match common::send_raw_request(server.addr, op, &format!("/kv/{key}"), body) {
            Ok(response) if response.status == 200 => {
                acked.insert(key, (op == "PUT").then_some(value));
            }
            _ => {
                // The write in flight when the server died: either state.
                unsure.push(key);
                break;
            }
        }
    }
    let exit = server.wait();
    assert!(
        exit.log.contains(&format!(
            "crashing at {}",
            crash_at.split('#').next().unwrap()
        )),
        "{crash_at}: the server never reached the crash point:\n{}",
        exit.log
    );
    assert_ne!(exit.status.code(), Some(0));

    let server = Server::start(dir.path(), &[]);
    assert_recovered(&server, &acked, &unsure);
    server.stop().assert_clean();
    // And once more from the data file alone.
    let server = Server::start(dir.path(), &[]);
    assert_recovered(&server, &acked, &unsure);
}

#[test]
fn a_crash_at_each_step_of_a_checkpoint_loses_and_resurrects_nothing() {
    for point in [
        "wal:after-append#40",
        "checkpoint:after-log-switch",
        "checkpoint:after-copy",
        "snapshot:before-rename",
        "checkpoint:after-snapshot",
        "checkpoint:after-snapshot#2",
    ] {
        crash_during_writes(point);
    }
}

#[test]
fn a_crash_at_each_step_of_the_shutdown_save_loses_nothing() {
    for point in ["snapshot:before-rename", "save:after-snapshot"] {
        let dir = temp_dir();
        let server = Server::start(dir.path(), &[]);
        server.put("kept", "1").assert(200, "");
        server.put("gone", "1").assert(200, "");
        server.stop().assert_clean();
        let server = Server::try_start_with_env(dir.path(), &[], &[("KVS_CRASH_AT", point)])
            .unwrap_or_else(|exit| panic!("{}", exit.log));
        server.delete("gone").assert(200, "");
        server.put("new", "2").assert(200, "");
        let exit = server.stop();
        assert!(exit.log.contains("crashing at"), "{point}: {}", exit.log);
        let server = Server::start(dir.path(), &[]);
        server.get("kept").assert(200, "1");
        server.get("new").assert(200, "2");
        server.get("gone").assert(404, "key not found\n");
    }
}

/// A directory whose data is split between the data file and a log.
fn data_file_and_log(dir: &Path) {
    let server = Server::start(dir, &[]);
    server.put("a", "from the data file").assert(200, "");
    server.put("gone", "x").assert(200, "");
    server.stop().assert_clean();
    let server = Server::start(dir, &[]);
    server.put("b", "from the log").assert(200, "");
    server.delete("gone").assert(200, "");
    server.kill();
    assert!(dir.join("wal.jsonl").exists());
}

#[test]
fn a_crash_at_each_step_of_restore_leaves_the_old_or_the_new_data() {
    let old = [line("a", "from the data file"), line("b", "from the log")].concat();
    let new = [line("gone", "restored"), line("z", "new")].concat();
    for (point, expect_new) in [
        ("snapshot:before-rename", false), // while folding the log in
        ("restore:after-fold", false),
        ("snapshot:before-rename#2", false), // while writing the new data
    ] {
        let env = TestEnv::new();
        data_file_and_log(&env.dir());
        env.kvs("restore", &["--force"])
            .env("KVS_CRASH_AT", point)
            .write_stdin(new.clone())
            .assert()
            .failure()
            .stderr(predicate::str::contains("crashing at"));
        let expected = if expect_new { &new } else { &old };
        env.kvs("dump", &[])
            .assert()
            .success()
            .stdout(expected.clone());
        // The server agrees, and a clean restore still works afterwards.
        let server = Server::start(&env.dir(), &[]);
        server.get("gone").assert(404, "key not found\n");
        server.stop().assert_clean();
        env.kvs("restore", &["--force"])
            .write_stdin(new.clone())
            .assert()
            .success();
        env.kvs("dump", &[]).assert().success().stdout(new.clone());
        let server = Server::start(&env.dir(), &[]);
        server.get("gone").assert(200, "restored");
        server.get("b").assert(404, "key not found\n");
        server.stop().assert_clean();
        assert_eq!(data_file(&env.dir()), new);
    }
}

#[test]
fn restore_merge_over_a_log_does_not_let_old_writes_win() {
    let env = TestEnv::new();
    data_file_and_log(&env.dir());
    env.kvs("restore", &["--merge"])
        .write_stdin(line("b", "merged"))
        .assert()
        .success()
        .stdout(predicate::str::starts_with("restored 2 keys"));
    assert!(!env.dir().join("wal.jsonl").exists());
    let server = Server::start(&env.dir(), &[]);
    server.get("b").assert(200, "merged");
    server.get("a").assert(200, "from the data file");
    server.get("gone").assert(404, "key not found\n");
}

#[test]
fn memory_and_the_log_agree_on_concurrent_writes_to_one_key() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr;
    for round in 0..5 {
        let writers: Vec<_> = (0..16)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let value = format!("round {round} writer {t} write {i}");
                        request(addr, "PUT", "/kv/contended", Some(value.as_bytes()))
                            .assert(200, "");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    }
    let in_memory = server.get("contended").text().to_owned();
    server.kill();
    let server = Server::start(dir.path(), &[]);
    server.get("contended").assert(200, &in_memory);
}

#[test]
fn a_refused_restore_leaves_the_data_file_and_the_log_as_they_were() {
    let env = TestEnv::new();
    data_file_and_log(&env.dir());
    let snapshot_before = data_file(&env.dir());
    let log_before = std::fs::read(env.dir().join("wal.jsonl")).unwrap();
    // Without --force, and with a bad line: refused either way.
    env.kvs("restore", &[])
        .write_stdin(line("z", "new"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already holds 2 keys"));
    env.kvs("restore", &["--force"])
        .write_stdin([line("z", "new"), "{bad\n".into()].concat())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 2:"));
    assert_eq!(data_file(&env.dir()), snapshot_before);
    assert_eq!(
        std::fs::read(env.dir().join("wal.jsonl")).unwrap(),
        log_before
    );
}
