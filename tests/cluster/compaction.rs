//! SPEC §6 "Data directory": once a member's Raft log passes
//! `--wal-max-bytes` it snapshots and trims it, and a member too far behind
//! (or with an empty directory) receives the leader's snapshot, installs it
//! and follows the log again. A crash at each step of a compaction or an
//! install leaves a member that restarts and catches up.

use std::process::Command;
use std::time::Duration;

use crate::common::{KVS, request};
use crate::fixture::{Cluster, wait_until};

/// Small enough that a few hundred writes compact several times.
const LOG_LIMIT: u64 = 8 * 1024;

fn small_log() -> String {
    format!("--wal-max-bytes={LOG_LIMIT}")
}

/// `commit-index` and `last-applied` of member `i`.
fn positions(cluster: &Cluster, i: usize) -> Option<(u64, u64)> {
    let response =
        crate::common::send_raw_request(cluster.addr(i), "GET", "/cluster/info", None).ok()?;
    let info: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    Some((
        info["commit-index"].as_u64()?,
        info["last-applied"].as_u64()?,
    ))
}

/// Writes `count` keys `prefix0..` through the cluster, each acknowledged.
fn write_keys(cluster: &Cluster, prefix: &str, count: usize) {
    // Straight to the leader while it leads: half the requests.
    let mut leader = current_leader(cluster);
    for n in 0..count {
        let key = format!("{prefix}{n}");
        let value = format!("value of {prefix}{n}");
        let mut response = crate::common::send_raw_request(
            cluster.addr(leader),
            "PUT",
            &format!("/kv/{key}"),
            Some(value.as_bytes()),
        )
        .map_err(|e| e.to_string());
        if !response.as_ref().is_ok_and(|r| r.status == 200) {
            response = cluster.put(&key, &value);
            leader = current_leader(cluster);
        }
        assert!(
            response.as_ref().is_ok_and(|r| r.status == 200),
            "PUT {prefix}{n}: {response:?}\n{}",
            cluster.report()
        );
    }
}

/// A member that says it leads (0 if none does).
fn current_leader(cluster: &Cluster) -> usize {
    cluster
        .all()
        .into_iter()
        .find(|&i| cluster.try_info(i).is_ok_and(|info| info.is_leader()))
        .unwrap_or(0)
}

/// Waits until member `i` has applied everything the leader had
/// committed when this was called.
fn wait_caught_up(cluster: &Cluster, leader: usize, i: usize) {
    let (commit, _) = positions(cluster, leader).expect("the leader answers");
    let caught_up = wait_until(Duration::from_secs(10), || {
        positions(cluster, i).is_some_and(|(_, applied)| applied >= commit)
    });
    assert!(
        caught_up,
        "member {i} did not catch up to index {commit}\n{}",
        cluster.report()
    );
}

/// What `kvs dump` shows of member `i`'s directory.
fn dump(cluster: &Cluster, i: usize) -> String {
    let output = Command::new(KVS)
        .args(["dump", "--format", "jsonl", "--working-dir"])
        .arg(cluster.dir(i))
        .env_remove("DATA_DIR")
        .output()
        .expect("run kvs dump");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Stops every member and checks that each directory holds exactly the
/// pairs written. A follower learns that the last entries are committed
/// from the leader's next message, so each member is first given the time
/// to apply everything the leader has committed: its directory shows its
/// committed state (SPEC §6), which may lag the leader's by a heartbeat.
fn assert_every_member_holds(cluster: &Cluster, expected: &[(String, String)]) {
    let leader = current_leader(cluster);
    for i in cluster.others(leader) {
        wait_caught_up(cluster, leader, i);
    }
    cluster.stop_all();
    let mut lines: Vec<String> = expected
        .iter()
        .map(|(k, v)| crate::common::line(k, v))
        .collect();
    lines.sort();
    let expected = lines.concat();
    for i in cluster.all() {
        assert_eq!(dump(cluster, i), expected, "member {i}'s data");
    }
}

fn pairs(prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|n| (format!("{prefix}{n}"), format!("value of {prefix}{n}")))
        .collect()
}

fn file_len(cluster: &Cluster, i: usize, name: &str) -> u64 {
    std::fs::metadata(cluster.dir(i).join(name)).map_or(0, |m| m.len())
}

#[test]
fn a_member_that_missed_compactions_catches_up_through_a_snapshot() {
    let cluster = Cluster::start(3, &[&small_log()]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let behind = cluster.others(leader)[0];
    cluster.kill(behind);
    write_keys(&cluster, "k", 200);
    assert!(
        file_len(&cluster, leader, "snapshot.meta.json") > 0,
        "the leader never compacted its log\n{}",
        cluster.report()
    );

    cluster.restart(behind);
    wait_caught_up(&cluster, leader, behind);
    assert!(
        cluster
            .log(behind)
            .contains("installed the leader's snapshot"),
        "member {behind} caught up without a snapshot\n{}",
        cluster.log(behind)
    );
    // It follows the log again after the snapshot.
    write_keys(&cluster, "after", 20);
    wait_caught_up(&cluster, leader, behind);
    let mut expected = pairs("k", 200);
    expected.extend(pairs("after", 20));
    assert_every_member_holds(&cluster, &expected);
}

#[test]
fn a_member_first_started_after_compactions_catches_up_from_an_empty_directory() {
    let late = 2;
    let cluster = Cluster::start_without(3, &[late], &[&small_log()]);
    let leader = cluster.wait_for_leader(&[0, 1], Duration::from_secs(3));
    write_keys(&cluster, "k", 200);
    cluster.restart(late);
    wait_caught_up(&cluster, leader, late);
    assert_every_member_holds(&cluster, &pairs("k", 200));
}

#[test]
fn a_member_whose_directory_was_wiped_stops_with_an_error() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    write_keys(&cluster, "k", 20);
    let wiped = cluster.others(leader)[0];
    cluster.kill(wiped);
    for entry in std::fs::read_dir(cluster.dir(wiped)).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    cluster.restart(wiped);
    // It had acknowledged entries it no longer has; taking part again
    // would break Raft's promises, so it must stop, and say why.
    let status = cluster.wait_exit(wiped, Duration::from_secs(5));
    assert_eq!(status.code(), Some(2), "{}", cluster.log(wiped));
    assert!(
        cluster.log(wiped).contains("lost what it had acknowledged"),
        "{}",
        cluster.log(wiped)
    );
    // The other two carry on.
    write_keys(&cluster, "more", 5);
}

#[test]
fn the_raft_log_stays_bounded_under_sustained_writes() {
    let cluster = Cluster::start(3, &[&small_log()]);
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let mut largest = 0;
    for round in 0..10 {
        write_keys(&cluster, &format!("r{round}-"), 40);
        for i in cluster.all() {
            largest = largest.max(file_len(&cluster, i, "raft-log.jsonl"));
        }
    }
    assert!(
        largest <= 3 * LOG_LIMIT,
        "a Raft log reached {largest} bytes with --wal-max-bytes={LOG_LIMIT}\n{}",
        cluster.report()
    );
    let expected: Vec<_> = (0..10).flat_map(|r| pairs(&format!("r{r}-"), 40)).collect();
    assert_every_member_holds(&cluster, &expected);
}

/// Member `victim` crashes at `point`: in its own compaction, or (with
/// `install`) while installing the leader's snapshot after missing
/// compactions. Restarted without the crash point, it catches up and
/// holds every acknowledged write.
fn crash_and_recover(point: &str, install: bool) {
    let cluster = Cluster::start(3, &[&small_log()]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let victim = cluster.others(leader)[0];
    if install {
        cluster.kill(victim);
        write_keys(&cluster, "k", 200);
        cluster.set_env(victim, &[("KVS_CRASH_AT", point)]);
        cluster.restart(victim);
    } else {
        cluster.kill(victim);
        cluster.set_env(victim, &[("KVS_CRASH_AT", point)]);
        cluster.restart(victim);
        write_keys(&cluster, "k", 200);
    }
    let status = cluster.wait_exit(victim, Duration::from_secs(10));
    assert!(
        !status.success()
            && cluster
                .log(victim)
                .contains(&format!("crashing at {point}")),
        "member {victim} did not crash at {point}: {status}\n{}",
        cluster.log(victim)
    );
    cluster.set_env(victim, &[]);
    cluster.restart(victim);
    write_keys(&cluster, "after", 10);
    wait_caught_up(&cluster, leader, victim);
    let info = request(cluster.addr(victim), "GET", "/cluster/info", None);
    assert_eq!(info.status, 200);
    let mut expected = pairs("k", 200);
    expected.extend(pairs("after", 10));
    assert_every_member_holds(&cluster, &expected);
}

#[test]
fn a_crash_after_the_compactions_copy_loses_nothing() {
    crash_and_recover("compaction:after-copy", false);
}

#[test]
fn a_crash_at_each_step_of_switching_to_a_compacted_snapshot_loses_nothing() {
    crash_and_recover("snapshot-switch:after-commit-point", false);
    crash_and_recover("snapshot-switch:after-switch", false);
}

#[test]
fn a_crash_at_each_step_of_installing_the_leaders_snapshot_loses_nothing() {
    crash_and_recover("snapshot-switch:after-commit-point", true);
    crash_and_recover("snapshot-switch:after-switch", true);
}
