//! SPEC §6 "Durability" and "Data directory": a member SIGKILLed and
//! restarted resumes its term and vote (one member, then all at once), the
//! directory stays plain text, and every write acknowledged before the
//! leader is SIGKILLed is still there once a new leader serves.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::fixture::{
    Cluster, Info, StopOnDrop, dir_contents, get_following_redirects, put_following_redirects,
    wait_until,
};

/// After a restart a member may have moved on to a later term, but never
/// back; in the same term it must remember whom it voted for (else it
/// could vote twice in one term and let two leaders win it).
#[track_caller]
fn assert_resumed(cluster: &Cluster, i: usize, before: &Info, after: &Info) {
    assert!(
        after.term > before.term
            || (after.term == before.term && after.voted_for == before.voted_for),
        "member {i} forgot its term or vote across SIGKILL:\nbefore {before:?}\nafter  {after:?}\n{}",
        cluster.report()
    );
}

/// Every file in the directory is text a person can read: UTF-8 with no
/// control characters but tab and line ends (JSON escapes the rest).
#[track_caller]
fn assert_plain_text(cluster: &Cluster, i: usize) {
    let contents = dir_contents(cluster.dir(i));
    assert!(!contents.is_empty(), "member {i}'s directory is empty");
    for (path, bytes) in contents {
        let text = std::str::from_utf8(&bytes)
            .unwrap_or_else(|e| panic!("member {i}: {} is not UTF-8: {e}", path.display()));
        let control = text
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        assert!(
            control.is_none(),
            "member {i}: {} holds the control character {control:?}:\n{text}",
            path.display()
        );
    }
}

#[test]
fn term_and_vote_survive_sigkill_of_the_leader_and_of_every_member() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));

    // Restarted at once, before the others' election timeout can fire,
    // the old leader has only its disk to tell it its term and vote.
    let before = cluster.info(leader);
    cluster.kill(leader);
    cluster.restart(leader);
    let after = cluster.info(leader);
    assert_resumed(&cluster, leader, &before, &after);

    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(5));
    let before: Vec<Info> = cluster.all().iter().map(|&i| cluster.info(i)).collect();
    cluster.kill_all(&cluster.all());
    for i in cluster.all() {
        assert_plain_text(&cluster, i);
    }
    cluster.start_members(&cluster.all());
    for i in cluster.all() {
        let after = cluster.info(i);
        assert_resumed(&cluster, i, &before[i], &after);
    }
    // And the cluster serves again once a majority is back.
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
}

#[test]
fn every_write_acknowledged_before_a_leader_crash_is_readable_afterwards() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let addrs = cluster.addrs();
    let stop = AtomicBool::new(false);
    let acked_count = AtomicUsize::new(0);

    let (acked, at_kill, after_kill) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // One client, sequential PUTs of distinct keys; only a 200 counts.
        // A PUT in flight when the leader dies has an unknown outcome and
        // is retried (same key, same value) or given up.
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(SeqCst) {
                let (key, value) = (format!("w{i}"), format!("value {i}"));
                let response =
                    put_following_redirects(&addrs, i, &key, &value, Duration::from_secs(5));
                if response.is_ok_and(|r| r.status == 200) {
                    acked.push((key, value));
                    acked_count.fetch_add(1, SeqCst);
                }
                i += 1;
            }
            acked
        });
        wait_until(Duration::from_secs(5), || acked_count.load(SeqCst) >= 20);
        let at_kill = acked_count.load(SeqCst);
        cluster.kill(leader);
        // Keep writing to the survivors until they have taken 20 more.
        wait_until(Duration::from_secs(8), || {
            acked_count.load(SeqCst) >= at_kill + 20
        });
        stop.store(true, SeqCst);
        let acked = writer.join().unwrap();
        let after_kill = acked.len() - at_kill;
        (acked, at_kill, after_kill)
    });
    assert!(
        at_kill > 0 && after_kill > 0,
        "{at_kill} writes acknowledged before the leader crash, {after_kill} after\n{}",
        cluster.report()
    );

    cluster.restart(leader);
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(5));
    for (n, (key, value)) in acked.iter().enumerate() {
        let response = get_following_redirects(&addrs, n, key, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("GET {key}: {e}\n{}", cluster.report()));
        assert_eq!(
            (response.status, response.text()),
            (200, value.as_str()),
            "acknowledged write {key} (one of {at_kill} before the crash, {after_kill} after)\n{}",
            cluster.report()
        );
    }
}
