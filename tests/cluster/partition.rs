//! SPEC §6 "Timing" (check-quorum) and `/cluster/partition`: in a
//! 5-member cluster cut into {old leader, one follower} and the other
//! three, the old leader steps down and the minority never has a leader,
//! serves no write and no stale read, while the majority elects its own
//! and keeps serving; the cut survives crashes and restarts; after a heal
//! all five follow one leader, and the minority's stray write is gone.

use std::time::{Duration, Instant};

use crate::common::send_raw_request;
use crate::fixture::{Cluster, POLL, put_following_redirects, wait_until};

/// Cuts the cluster into `groups`: each member exchanges Raft RPCs only
/// within its own group. IDs go in both accepted forms: the minority gets
/// `127.0.0.1:PORT`, the majority `:PORT`.
fn cut(cluster: &Cluster, minority: &[usize], majority: &[usize]) {
    for (group, short) in [(minority, false), (majority, true)] {
        for &i in group {
            let peers: Vec<String> = group
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| {
                    if short {
                        format!(":{}", cluster.addr(j).port())
                    } else {
                        cluster.id(j).to_owned()
                    }
                })
                .collect();
            let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
            cluster.partition(i, &peers);
        }
    }
}

/// Watches for `watch`: every member of the minority reports no leader
/// at every poll, and the majority agrees on a leader of its own by
/// `majority_within` from `since`. Returns the majority's leader.
#[track_caller]
fn minority_leaderless_majority_leads(
    cluster: &Cluster,
    minority: &[usize],
    majority: &[usize],
    watch: Duration,
    since: Instant,
    majority_within: Duration,
) -> usize {
    let started = Instant::now();
    let mut majority_leader = None;
    while started.elapsed() < watch {
        for &i in minority {
            let info = cluster.info(i);
            assert!(
                info.leader.is_none() && !info.is_leader(),
                "minority member {i} reports a leader {:?} after the cut\n{}",
                since.elapsed(),
                cluster.report()
            );
        }
        if majority_leader.is_none() {
            majority_leader = cluster.agreed_leader(majority).map(|(l, _)| l);
            assert!(
                majority_leader.is_some() || since.elapsed() < majority_within,
                "the majority {majority:?} has no leader {:?} after the cut\n{}",
                since.elapsed(),
                cluster.report()
            );
        }
        std::thread::sleep(POLL);
    }
    majority_leader.unwrap_or_else(|| panic!("no majority leader\n{}", cluster.report()))
}

#[test]
fn a_partitioned_minority_loses_its_leader_and_the_majority_carries_on() {
    let cluster = Cluster::start(5, &[]);
    let old = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let old_term = cluster.info(old).term;
    let put = |key: &str, value: &str| cluster.put(key, value).map(|r| r.status);
    assert_eq!(put("p", "before"), Ok(200), "{}", cluster.report());

    let buddy = cluster.others(old)[0];
    let minority = [old, buddy];
    let majority: Vec<usize> = cluster
        .others(old)
        .into_iter()
        .filter(|&j| j != buddy)
        .collect();
    let majority_addrs: Vec<_> = majority.iter().map(|&j| cluster.addr(j)).collect();
    cut(&cluster, &minority, &majority);
    let cut_at = Instant::now();

    std::thread::scope(|s| {
        // Straight to the old leader, which cannot commit any more: it
        // must never be acknowledged, whether or not it was proposed.
        let stray =
            s.spawn(|| send_raw_request(cluster.addr(old), "PUT", "/kv/stray", Some(b"minority")));

        // Check-quorum: the old leader steps down within 500 ms of losing
        // the majority (1.5 s allowed), its follower forgets it within 2 s.
        let stepped_down = wait_until(Duration::from_millis(1500), || {
            cluster
                .try_info(old)
                .is_ok_and(|info| !info.is_leader() && info.leader.is_none())
        });
        assert!(
            stepped_down,
            "old leader still leads 1.5 s after the cut\n{}",
            cluster.report()
        );
        let forgot = wait_until(
            Duration::from_secs(2).saturating_sub(cut_at.elapsed()),
            || {
                cluster
                    .try_info(buddy)
                    .is_ok_and(|info| info.leader.is_none())
            },
        );
        assert!(
            forgot,
            "minority follower names a leader 2 s after the cut\n{}",
            cluster.report()
        );

        let new = minority_leaderless_majority_leads(
            &cluster,
            &minority,
            &majority,
            Duration::from_secs(5),
            cut_at,
            Duration::from_secs(3),
        );
        assert!(cluster.info(new).term > old_term, "{}", cluster.report());

        // The majority serves writes; the old leader serves no stale read.
        let written =
            put_following_redirects(&majority_addrs, 0, "p", "after", Duration::from_secs(5));
        assert!(
            written.is_ok_and(|r| r.status == 200),
            "{}",
            cluster.report()
        );
        let stale = send_raw_request(cluster.addr(old), "GET", "/kv/p", None);
        assert!(
            stale.as_ref().is_ok_and(|r| [307, 503].contains(&r.status)),
            "GET from the cut-off old leader: {stale:?}\n{}",
            cluster.report()
        );

        let stray = stray.join().unwrap();
        assert!(
            stray.as_ref().is_ok_and(|r| [307, 503].contains(&r.status)),
            "PUT sent to the old leader after the cut: {stray:?}\n{}",
            cluster.report()
        );
    });

    // The cut is persisted: a restarted minority member is still cut off.
    cluster.kill(buddy);
    cluster.restart(buddy);
    let since = Instant::now();
    minority_leaderless_majority_leads(
        &cluster,
        &minority,
        &majority,
        Duration::from_secs(2),
        since,
        Duration::from_secs(2),
    );
    // Both sides enforce the cut, so only a crash of every member shows
    // whether each of them kept it.
    cluster.kill_all(&cluster.all());
    cluster.start_members(&cluster.all());
    let since = Instant::now();
    minority_leaderless_majority_leads(
        &cluster,
        &minority,
        &majority,
        Duration::from_secs(3),
        since,
        Duration::from_secs(3),
    );

    for i in cluster.all() {
        cluster.heal(i);
    }
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let get = |key: &str| cluster.get(key).map(|r| (r.status, r.text().to_owned()));
    assert_eq!(
        get("p"),
        Ok((200, "after".to_owned())),
        "{}",
        cluster.report()
    );
    assert_eq!(
        get("stray"),
        Ok((404, "key not found\n".to_owned())),
        "the minority's write took effect\n{}",
        cluster.report()
    );
}
