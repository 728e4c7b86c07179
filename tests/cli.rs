//! SPEC §4 against the real binary: `kvs get`, `kvs dump`, `kvs restore`,
//! their exit codes and errors, and how they share a directory with a
//! running server.

mod common;

use common::{Server, TestEnv, line};
use predicates::prelude::*;

/// A data file with awkward values, in the order kvs writes it.
fn sample() -> String {
    [
        line("a", "1"),
        line("b:multi", "line one\nline two\n"),
        line("c", "tab\there \"quoted\" \\ 🦀"),
        line("user:1", "alice"),
        line("user:2", "bob"),
    ]
    .concat()
}

#[test]
fn get_prints_the_exact_value() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    // Not a terminal: exactly the bytes, no newline added.
    env.kvs("get", &["b:multi"])
        .assert()
        .success()
        .stdout("line one\nline two\n");
    env.kvs("get", &["c"])
        .assert()
        .success()
        .stdout("tab\there \"quoted\" \\ 🦀");
}

#[test]
fn get_of_a_missing_key_exits_1() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    env.kvs("get", &["nope"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("key not found: nope\n");
}

#[test]
fn get_takes_the_later_of_repeated_keys() {
    let env = TestEnv::new();
    env.write_data_file(&[line("k", "old"), line("j", "x"), line("k", "new")].concat());
    env.kvs("get", &["k"]).assert().success().stdout("new");
}

#[test]
fn get_refuses_an_invalid_key() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    env.kvs("get", &["a b"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid key \"a b\": key contains invalid characters",
        ));
}

#[test]
fn dump_prints_the_data_file_format_when_piped() {
    let env = TestEnv::new();
    // Out of order, with a repeat and a blank line: dump normalizes.
    env.write_data_file(
        &[
            line("user:2", "bob"),
            line("a", "0"),
            "\n".into(),
            line("c", "tab\there \"quoted\" \\ 🦀"),
            line("b:multi", "line one\nline two\n"),
            line("user:1", "alice"),
            line("a", "1"),
        ]
        .concat(),
    );
    env.kvs("dump", &[]).assert().success().stdout(sample());
    env.kvs("dump", &["--format", "jsonl", "--prefix", "user:"])
        .assert()
        .success()
        .stdout([line("user:1", "alice"), line("user:2", "bob")].concat());
}

#[test]
fn dump_table_keeps_each_pair_on_one_row() {
    let env = TestEnv::new();
    let long = "x".repeat(500);
    env.write_data_file(&[sample(), line("z", &long)].concat());
    let output = env.kvs("dump", &["--format=table"]).output().unwrap();
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("KEY") && table.contains("VALUE"), "{table}");
    assert!(table.contains("line one\\nline two\\n"), "{table}");
    assert!(table.contains('…'), "long value not shortened:\n{table}");
    assert!(!table.contains(&long), "{table}");
    // Header, 6 rows, 3 rules, and the count line: one line per pair.
    assert_eq!(table.lines().count(), 1 + 6 + 3 + 1, "{table}");
    assert!(table.trim_end().ends_with("6 keys"), "{table}");
    for l in table.lines() {
        assert!(l.chars().count() <= 100, "line too wide: {l}");
    }
}

#[test]
fn dump_restore_dump_round_trips_byte_for_byte() {
    let from = TestEnv::new();
    from.write_data_file(&sample());
    let dumped = from.kvs("dump", &[]).output().unwrap().stdout;

    let to = TestEnv::new();
    to.kvs("restore", &[])
        .write_stdin(dumped.clone())
        .assert()
        .success()
        .stdout(format!("restored 5 keys into {}\n", to.dir().display()));
    assert_eq!(to.data_file().as_bytes(), &dumped[..]);
    to.kvs("dump", &[]).assert().success().stdout(dumped);
}

#[test]
fn restore_reads_a_file_argument_and_later_lines_win() {
    let env = TestEnv::new();
    let input = env.dir().with_file_name("input.jsonl");
    std::fs::write(
        &input,
        [line("k", "first"), line("a", "x"), line("k", "second")].concat(),
    )
    .unwrap();
    env.kvs("restore", &[input.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("restored 2 keys into "));
    assert_eq!(
        env.data_file(),
        [line("a", "x"), line("k", "second")].concat()
    );
}

#[test]
fn an_invalid_line_5_writes_nothing_and_is_named() {
    for (bad, reason) in [
        ("{\"key\":\"k\",\"value\":", "not valid JSON"),
        (
            "{\"key\":\"bad key\",\"value\":\"v\"}",
            "key contains invalid characters",
        ),
        ("{\"key\":\"k\",\"value\":\"\"}", "value cannot be empty"),
        (
            "{\"key\":\"k\",\"value\":\"v\",\"ttl\":1}",
            "unknown field `ttl`",
        ),
        ("{\"key\":\"k\"}", "missing field `value`"),
    ] {
        let env = TestEnv::new();
        env.write_data_file(&sample());
        let before = env.data_file();
        let input = [
            line("n1", "v"),
            line("n2", "v"),
            "\n".into(),
            line("n4", "v"),
            format!("{bad}\n"),
            line("n6", "v"),
        ]
        .concat();
        env.kvs("restore", &["--force"])
            .write_stdin(input)
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::contains("standard input, line 5: "))
            .stderr(predicate::str::contains(reason))
            .stderr(predicate::str::contains("nothing was written"));
        assert_eq!(env.data_file(), before, "{bad}");
        assert_eq!(env.listing(), ["LOCK", "snapshot.jsonl"]);
    }
}

#[test]
fn restore_applies_the_value_limit() {
    let env = TestEnv::new();
    env.kvs("restore", &["--max-value-bytes", "3"])
        .write_stdin([line("a", "123"), line("b", "1234")].concat())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 2: value too large"));
    assert_eq!(env.data_file(), "");
}

#[test]
fn restore_refuses_to_replace_data_without_force() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    env.kvs("restore", &[])
        .write_stdin(line("new", "v"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already holds 5 keys"))
        .stderr(predicate::str::contains("--force"));
    assert_eq!(env.data_file(), sample());

    env.kvs("restore", &["--force"])
        .write_stdin(line("new", "v"))
        .assert()
        .success()
        .stdout(predicate::str::starts_with("restored 1 keys into "));
    assert_eq!(env.data_file(), line("new", "v"));
}

#[test]
fn restore_merge_upserts_into_the_existing_store() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    env.kvs("restore", &["--merge"])
        .write_stdin([line("user:1", "alice v2"), line("zz", "new")].concat())
        .assert()
        .success()
        .stdout(predicate::str::starts_with("restored 6 keys into "));
    env.kvs("get", &["user:1"]).assert().stdout("alice v2");
    env.kvs("get", &["a"]).assert().stdout("1");
    env.kvs("get", &["zz"]).assert().stdout("new");
}

#[test]
fn restore_never_overwrites_a_data_file_it_cannot_read() {
    let env = TestEnv::new();
    let corrupt = [line("a", "1"), "{oops\n".into()].concat();
    env.write_data_file(&corrupt);
    env.kvs("restore", &["--force"])
        .write_stdin(line("b", "2"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("snapshot.jsonl, line 2:"));
    assert_eq!(env.data_file(), corrupt);
}

#[test]
fn restore_is_refused_while_a_server_holds_the_directory() {
    let env = TestEnv::new();
    let server = Server::start(&env.dir(), &[]);
    env.kvs("restore", &["--force"])
        .write_stdin(line("b", "2"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "is in use by another kvs process (pid {})",
            server.pid()
        )));
    server.stop().assert_clean();
    assert_eq!(env.data_file(), "");
}

#[test]
fn get_and_dump_show_a_running_servers_logged_writes_and_say_so() {
    let env = TestEnv::new();
    env.write_data_file(&sample());
    let server = Server::start(&env.dir(), &[]);
    server.put("a", "changed").assert(200, "");
    server.delete("user:2").assert(200, "");
    server.put("new", "v").assert(200, "");
    let note = "this shows the writes it had logged";
    env.kvs("get", &["a"])
        .assert()
        .success()
        .stdout("changed")
        .stderr(predicate::str::contains(note))
        .stderr(predicate::str::contains(server.pid().to_string()));
    env.kvs("get", &["user:2"]).assert().code(1);
    let expected = [
        line("a", "changed"),
        line("b:multi", "line one\nline two\n"),
        line("c", "tab\there \"quoted\" \\ 🦀"),
        line("new", "v"),
        line("user:1", "alice"),
    ]
    .concat();
    env.kvs("dump", &[])
        .assert()
        .success()
        .stdout(expected.clone())
        .stderr(predicate::str::contains(note));
    // Reading changed nothing: the server's log is as it was.
    let log = std::fs::read(env.dir().join("wal.jsonl")).unwrap();
    assert_eq!(log.iter().filter(|&&b| b == b'\n').count(), 3);
    server.stop().assert_clean();
    // Once the server has saved, the data file holds it all, and no note.
    assert_eq!(env.data_file(), expected);
    env.kvs("get", &["a"])
        .assert()
        .success()
        .stdout("changed")
        .stderr("");
}

#[test]
fn get_and_dump_create_and_change_nothing() {
    let env = TestEnv::new();
    // A missing directory is an error, not created.
    env.kvs("dump", &[])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "does not exist; check --working-dir",
        ));
    env.kvs("get", &["a"]).assert().code(2);
    assert!(!env.dir().exists());

    // An empty directory stays empty: no LOCK, no data file.
    std::fs::create_dir_all(env.dir()).unwrap();
    env.kvs("get", &["a"]).assert().code(1);
    env.kvs("dump", &[]).assert().success().stdout("");
    assert!(env.listing().is_empty(), "{:?}", env.listing());

    env.write_data_file(&sample());
    let modified = std::fs::metadata(env.dir().join("snapshot.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    env.kvs("dump", &[]).assert().success();
    env.kvs("get", &["a"]).assert().success();
    assert_eq!(env.listing(), ["snapshot.jsonl"]);
    assert_eq!(env.data_file(), sample());
    let after = std::fs::metadata(env.dir().join("snapshot.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, after);
}

#[test]
fn a_restored_directory_is_what_the_server_loads() {
    let env = TestEnv::new();
    env.kvs("restore", &[])
        .write_stdin(sample())
        .assert()
        .success();
    let server = Server::start(&env.dir(), &[]);
    server.get("b:multi").assert(200, "line one\nline two\n");
    server.get("user:2").assert(200, "bob");
    server.stop().assert_clean();
    assert_eq!(env.data_file(), sample());
}

#[test]
fn a_corrupt_data_file_is_named_by_the_readers() {
    let env = TestEnv::new();
    env.write_data_file(&[line("a", "1"), line("b", "2"), "[]\n".into()].concat());
    for sub in ["get", "dump"] {
        let args: &[&str] = if sub == "get" { &["a"] } else { &[] };
        env.kvs(sub, args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("snapshot.jsonl, line 3:"));
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = TestEnv::new();
    env.kvs("dump", &["--bogus"]).assert().code(2);
    env.kvs("dump", &["--format", "xml"]).assert().code(2);
    env.kvs("restore", &["--force", "--merge"]).assert().code(2);
    assert_cmd::Command::new(common::KVS).assert().code(2);
    assert_cmd::Command::new(common::KVS)
        .args(["serve", "--port", "nope"])
        .assert()
        .code(2);
    assert_cmd::Command::new(common::KVS)
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("restore"));
}

/// Runs `kvs ARGS` with its stdout and stderr on a pseudo-terminal of 80
/// columns (through util-linux's `script`), returning what the terminal
/// showed.
fn on_a_terminal(env: &TestEnv, args: &str) -> String {
    let command = format!(
        "stty cols 80 rows 50; {} {args} --working-dir {}",
        common::KVS,
        env.dir().display()
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("util-linux's `script` runs commands on a pseudo-terminal");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn on_a_terminal_get_ends_with_a_newline_and_dump_is_a_fitted_table() {
    let env = TestEnv::new();
    env.write_data_file(&[sample(), line("z", &"y".repeat(300))].concat());
    // The terminal turns "\n" into "\r\n".
    assert_eq!(on_a_terminal(&env, "get a"), "1\r\n");
    let table = on_a_terminal(&env, "dump");
    assert!(table.contains("KEY") && table.contains("VALUE"), "{table}");
    assert!(table.contains('…'), "{table}");
    assert!(table.trim_end().ends_with("6 keys"), "{table}");
    for l in table.lines() {
        assert!(l.chars().count() <= 80, "wider than the terminal: {l}");
    }
}
