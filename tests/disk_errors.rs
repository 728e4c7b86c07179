//! Disk errors in single-node mode, against the real binary: a failed
//! append, fsync, data-file write or rename (injected through the test
//! build's `KVS_FAIL_AT`, or a real full tmpfs) makes writes answer 503
//! with `Retry-After` while reads go on, and writes resume by themselves
//! once the server has written a new data file and log; a failed
//! checkpoint is retried. Across a SIGKILL at any point, nothing
//! acknowledged is lost, and nothing refused or deleted comes back.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Response, Server, temp_dir};

/// How long a test waits for writes to resume: the backoff is capped at
/// 5 s, and a loaded machine is slow.
const RESUME_PATIENCE: Duration = Duration::from_secs(30);

/// Starts a server with `KVS_FAIL_AT` (and more of the test build's
/// environment) set.
fn start_failing(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    Server::try_start_with_env(dir, args, env)
        .unwrap_or_else(|exit| panic!("did not start ({}):\n{}", exit.status, exit.log))
}

/// Checks a refused write's answer: 503, `Retry-After`, one line naming
/// the disk error and telling the client to retry.
#[track_caller]
fn assert_refused(response: &Response, os_error: &str) {
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{response:?}"
    );
    let body = response.text();
    assert!(
        body.starts_with("write not applied: disk error: ")
            && body.contains(os_error)
            && body.ends_with("; retry later\n")
            && body.lines().count() == 1,
        "{body:?}"
    );
}

/// PUTs `key` until it is acknowledged, checking that every refusal on
/// the way is a proper 503; returns how many were refused.
#[track_caller]
fn put_until_accepted(server: &Server, key: &str, value: &str) -> usize {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let response = server.put(key, value);
        if response.status == 200 {
            return refused;
        }
        assert_refused(&response, "");
        refused += 1;
        assert!(
            started.elapsed() < RESUME_PATIENCE,
            "writes did not resume:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One injected disk error, and what the test expects of it.
struct Case {
    fail_at: &'static str,
    os_error: &'static str,
    /// The log line that says writes were suspended.
    suspended: &'static str,
    /// Whether the heal itself fails at least once before it succeeds.
    heal_fails: bool,
}

const EIO: &str = "Input/output error";
const ENOSPC: &str = "No space left on device";

/// Each sequential write is one batch: one append and one fsync, so `#3`
/// is the third write.
const CASES: &[Case] = &[
    Case {
        fail_at: "wal-append#3",
        os_error: EIO,
        suspended: "writes suspended: cannot append to",
        heal_fails: false,
    },
    Case {
        fail_at: "wal-fsync#3",
        os_error: EIO,
        suspended: "writes suspended: cannot sync",
        heal_fails: false,
    },
    Case {
        fail_at: "wal-append#3:ENOSPC",
        os_error: ENOSPC,
        suspended: "writes suspended: cannot append to",
        heal_fails: false,
    },
    Case {
        fail_at: "wal-fsync#3:ENOSPC",
        os_error: ENOSPC,
        suspended: "writes suspended: cannot sync",
        heal_fails: false,
    },
    // The heal's data file fails twice before it is written, so writes
    // stay suspended for at least 100 + 200 + 400 ms.
    Case {
        fail_at: "wal-append#3,snapshot-write#1,snapshot-write#2",
        os_error: EIO,
        suspended: "writes suspended: cannot append to",
        heal_fails: true,
    },
    Case {
        fail_at: "wal-fsync#3:ENOSPC,snapshot-rename#1:ENOSPC,snapshot-rename#2",
        os_error: ENOSPC,
        suspended: "writes suspended: cannot sync",
        heal_fails: true,
    },
];

#[test]
fn each_disk_error_suspends_writes_and_they_resume_without_a_restart() {
    for (n, case) in CASES.iter().enumerate() {
        let dir = temp_dir();
        // A first life leaves a key in the data file, to delete later.
        let server = Server::start(dir.path(), &[]);
        server.put("old", "from the data file").assert(200, "");
        server.stop().assert_clean();

        let server = start_failing(dir.path(), &[], &[("KVS_FAIL_AT", case.fail_at)]);
        server.put("a", "1").assert(200, "");
        server.delete("old").assert(200, "");
        // The third write fails: a PUT in some cases, a DELETE in others.
        let refused = if n % 2 == 0 {
            server.put("refused", "never acknowledged")
        } else {
            server.delete("a")
        };
        assert_refused(&refused, case.os_error);
        // Not applied, and reads go on.
        server.get("a").assert(200, "1");
        server.get("refused").assert(404, "key not found\n");
        server.get("old").assert(404, "key not found\n");
        if case.heal_fails {
            assert_refused(&server.put("b", "2"), case.os_error);
            server.get("a").assert(200, "1");
        }
        let refusals = put_until_accepted(&server, "after", "healed");
        if case.heal_fails {
            assert!(
                refusals > 0,
                "{}: no write refused while healing",
                case.fail_at
            );
        }
        server.put("later", "1").assert(200, "");
        server.delete("after").assert(200, "");
        server.put("after", "healed again").assert(200, "");

        let log = server.log();
        let wal = dir.path().join("wal.jsonl").display().to_string();
        let suspended = log
            .lines()
            .find(|l| l.contains(case.suspended))
            .unwrap_or_else(|| panic!("{}: no suspension logged:\n{log}", case.fail_at));
        assert!(
            suspended.contains(&wal) && suspended.contains(case.os_error),
            "{}: {suspended}",
            case.fail_at
        );
        assert!(
            log.contains("writes resumed: saved"),
            "{}: {log}",
            case.fail_at
        );
        assert_eq!(
            log.contains("writes still suspended"),
            case.heal_fails,
            "{}: {log}",
            case.fail_at
        );
        assert!(!dir.path().join("wal.prev.jsonl").exists());

        // SIGKILL right after: exactly the acknowledged writes come back.
        server.kill();
        let server = Server::start(dir.path(), &[]);
        server.get("a").assert(200, "1");
        server.get("old").assert(404, "key not found\n");
        server.get("refused").assert(404, "key not found\n");
        server.get("b").assert(404, "key not found\n");
        server.get("later").assert(200, "1");
        server.get("after").assert(200, "healed again");
        server.stop().assert_clean();
    }
}

#[test]
fn a_failed_periodic_sync_suspends_writes_and_the_heal_keeps_what_was_acknowledged() {
    let dir = temp_dir();
    let server = start_failing(
        dir.path(),
        &["--fsync", "periodic"],
        &[("KVS_FAIL_AT", "wal-fsync#1")],
    );
    // The first sync, within a second of the first write, fails; every
    // write acknowledged before it must survive.
    let started = Instant::now();
    let mut acked = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let response = server.put(&key, "v");
        if response.status != 200 {
            assert_refused(&response, EIO);
            break;
        }
        acked.push(key);
        assert!(
            started.elapsed() < RESUME_PATIENCE,
            "the sync never failed:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!acked.is_empty());
    put_until_accepted(&server, "after", "healed");
    server.kill();
    let server = Server::start(dir.path(), &[]);
    for key in &acked {
        server.get(key).assert(200, "v");
    }
    server.get("after").assert(200, "healed");
}

#[test]
fn a_crash_at_each_step_of_the_heal_loses_nothing_and_resurrects_nothing() {
    for crash_at in [
        "snapshot:before-rename",
        "fold:after-data-file",
        "heal:after-fold",
    ] {
        // After a failed fsync the refused record is whole in the log, so
        // only the cut keeps a restart from replaying it.
        for fail_at in ["wal-fsync#3", "wal-append#3:ENOSPC"] {
            let dir = temp_dir();
            let server = Server::start(dir.path(), &[]);
            server.put("old", "from the data file").assert(200, "");
            server.put("kept", "from the data file").assert(200, "");
            server.stop().assert_clean();

            let server = start_failing(
                dir.path(),
                &[],
                &[("KVS_FAIL_AT", fail_at), ("KVS_CRASH_AT", crash_at)],
            );
            server.put("a", "1").assert(200, "");
            server.delete("old").assert(200, "");
            assert_refused(&server.put("refused", "never acknowledged"), "");
            let exit = server.wait();
            assert!(
                exit.log.contains(&format!("crashing at {crash_at}")),
                "{fail_at}, {crash_at}:\n{}",
                exit.log
            );

            for life in ["after the crash", "after a clean restart"] {
                let server = Server::start(dir.path(), &[]);
                let what = format!("{fail_at}, {crash_at}, {life}");
                assert_eq!(server.get("a").status, 200, "{what}");
                assert_eq!(server.get("kept").status, 200, "{what}");
                assert_eq!(server.get("old").status, 404, "{what}");
                assert_eq!(server.get("refused").status, 404, "{what}");
                server.stop().assert_clean();
            }
        }
    }
}

#[test]
fn a_failed_checkpoint_is_retried_and_later_ones_still_run() {
    for fail_at in ["snapshot-write#1", "snapshot-rename#1:ENOSPC"] {
        let dir = temp_dir();
        let server = start_failing(
            dir.path(),
            &["--wal-max-bytes", "2000"],
            &[("KVS_FAIL_AT", fail_at)],
        );
        let count_done = |log: &str| log.matches("checkpoint done").count();
        // Writes go on throughout, through the failure and the retries,
        // until two checkpoints have completed after the failed one.
        let started = Instant::now();
        let mut i = 0usize;
        while count_done(&server.log()) < 2 {
            server
                .put(&format!("k{}", i % 50), &format!("value {i}"))
                .assert(200, "");
            i += 1;
            assert!(
                started.elapsed() < RESUME_PATIENCE,
                "{fail_at}: checkpoints did not complete:\n{}",
                server.log()
            );
        }
        let log = server.log();
        let failed = log
            .find("checkpoint failed")
            .unwrap_or_else(|| panic!("{fail_at}: no failed checkpoint:\n{log}"));
        assert!(log[failed..].contains("retrying in 100 ms"), "{log}");
        assert!(log[failed..].contains("checkpoint done"), "{log}");
        assert!(!log.contains("writes suspended"), "{log}");
        server.kill();
        let server = Server::start(dir.path(), &[]);
        for n in i.saturating_sub(50)..i {
            server
                .get(&format!("k{}", n % 50))
                .assert(200, &format!("value {n}"));
        }
    }
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` where the kernel or the
    /// user may not.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "kvs-test"])
            .arg(dir)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                dir: dir.to_owned(),
            }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Fills the filesystem of `path` with a file until it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
            break;
        }
    }
    // Whatever the last chunk left, byte by byte.
    while file.write_all(b"x").is_ok() {}
}

#[test]
fn a_full_disk_suspends_writes_until_space_is_freed() {
    let root = temp_dir();
    let Some(mount) = Tmpfs::mount(root.path(), "4m") else {
        return;
    };
    let dir = mount.dir.join("data");
    let server = Server::start(&dir, &[]);
    let value = "v".repeat(8 * 1024);
    let mut acked = Vec::new();
    // More than a refused write frees when it is cut off, so the heal
    // cannot succeed on a full disk.
    for i in 0..8 {
        let key = format!("before-{i}");
        server.put(&key, &value).assert(200, "");
        acked.push(key);
    }
    let filler = mount.dir.join("filler");
    fill(&filler);
    let mut refused = None;
    for i in 0..100 {
        let key = format!("full-{i}");
        let response = server.put(&key, &value);
        if response.status == 200 {
            acked.push(key);
        } else {
            refused = Some((key, response));
            break;
        }
    }
    let (refused_key, response) = refused.expect("writes never failed on a full disk");
    assert_refused(&response, ENOSPC);
    server.get("before-0").assert(200, &value);
    // Still full: the heal fails and writes stay refused.
    let started = Instant::now();
    while !server.log().contains("writes still suspended") {
        assert!(started.elapsed() < RESUME_PATIENCE, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_refused(&server.put("while-full", "x"), ENOSPC);
    server.get("before-7").assert(200, &value);

    std::fs::remove_file(&filler).unwrap();
    put_until_accepted(&server, "after", "space was freed");
    acked.push("after".into());
    assert!(server.log().contains("writes resumed"), "{}", server.log());

    server.kill();
    let server = Server::start(&dir, &[]);
    for key in &acked {
        assert_eq!(server.get(key).status, 200, "{key}");
    }
    server.get(&refused_key).assert(404, "key not found\n");
    server.get("while-full").assert(404, "key not found\n");
    server.stop().assert_clean();
    drop(mount);
}
