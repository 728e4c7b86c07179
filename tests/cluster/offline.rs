//! SPEC §6 "Offline tools" on a cluster member's directory: `get` and
//! `dump` show its committed state; `restore` refuses, says why (it is a
//! cluster member's), and changes nothing.

use std::time::Duration;

use predicates::prelude::*;

use crate::common::{KVS, line};
use crate::fixture::{Cluster, dir_contents};

#[test]
fn get_and_dump_read_a_members_directory_and_restore_refuses() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let pairs = [("a", "1"), ("b", "two words"), ("c", "🦀\nline")];
    for (key, value) in pairs {
        let put = cluster.put(key, value);
        assert!(put.is_ok_and(|r| r.status == 200), "{}", cluster.report());
    }
    // The leader applied every write before acknowledging it, so its
    // committed state certainly holds them (a follower may not have
    // heard the last commit index before the shutdown).
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    cluster.stop_all();
    let dir = cluster.dir(leader);
    let kvs = |subcommand: &str| {
        let mut command = assert_cmd::Command::new(KVS);
        command
            .arg(subcommand)
            .arg("--working-dir")
            .arg(dir)
            .timeout(Duration::from_secs(10));
        command
    };

    kvs("get").arg("b").assert().success().stdout("two words");
    let expected: String = pairs.iter().map(|(k, v)| line(k, v)).collect();
    kvs("dump")
        .args(["--format", "jsonl"])
        .assert()
        .success()
        .stdout(expected);

    let before = dir_contents(dir);
    kvs("restore")
        .write_stdin(line("x", "y"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cluster").or(predicate::str::contains("Cluster")));
    assert!(dir_contents(dir) == before, "restore changed the directory");
}
