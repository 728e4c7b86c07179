//! SPEC §6 "Timing" and `/cluster/info`: a 3-member cluster elects a
//! leader within 2 s that every member agrees on, never has two leaders in
//! one term (even across a leader crash), and keeps its leader and term
//! while idle because heartbeats reach the followers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::request;
use crate::fixture::{Cluster, POLL};

#[test]
fn a_leader_is_elected_within_2s_and_every_member_agrees() {
    let cluster = Cluster::start(3, &[]);
    // `start` returns once every member listens: the clock starts here.
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(2));

    for i in cluster.all() {
        let info = cluster.info(i);
        let report = || format!("member {i}: {info:?}\n{}", cluster.report());
        assert_eq!(info.id, cluster.id(i), "{}", report());
        assert!(info.term >= 1, "{}", report());
        let mut others: Vec<&str> = cluster.others(i).iter().map(|&j| cluster.id(j)).collect();
        others.sort();
        assert_eq!(
            info.peers,
            others,
            "peers: the others, sorted; {}",
            report()
        );
    }
    let info = cluster.info(leader);
    assert_eq!(
        info.voted_for.as_deref(),
        Some(cluster.id(leader)),
        "a leader voted for itself in its term\n{}",
        cluster.report()
    );

    let response = request(cluster.addr(leader), "GET", "/cluster/info", None);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{response:?}"
    );
}

#[test]
fn never_two_leaders_in_one_term_even_across_a_leader_crash() {
    let cluster = Cluster::start(3, &[]);
    let started = Instant::now();
    // term -> every member that said it led in that term.
    let mut leaders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut killed: Option<(usize, u64)> = None;
    while started.elapsed() < Duration::from_secs(5) {
        for i in cluster.all().into_iter().filter(|&i| cluster.is_up(i)) {
            if let Ok(info) = cluster.try_info(i)
                && info.is_leader()
            {
                leaders.entry(info.term).or_default().insert(info.id);
            }
        }
        // Halfway through, crash whichever leader everyone follows, so the
        // survivors hold an election while we watch.
        if killed.is_none()
            && started.elapsed() >= Duration::from_millis(2500)
            && let Some((leader, info)) = cluster.agreed_leader(&cluster.all())
        {
            cluster.kill(leader);
            killed = Some((leader, info.term));
        }
        std::thread::sleep(POLL);
    }

    let twice: Vec<_> = leaders.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "two leaders in one term: {twice:?}\n{}",
        cluster.report()
    );
    // Without these the test would pass on a cluster that never elects.
    let (_, killed_term) = killed.unwrap_or_else(|| {
        panic!(
            "no agreed leader to kill 2.5 s in; seen {leaders:?}\n{}",
            cluster.report()
        )
    });
    assert!(
        leaders.keys().any(|&term| term > killed_term),
        "no new leader within 2.5 s of the crash of the term-{killed_term} leader; seen {leaders:?}\n{}",
        cluster.report()
    );
}

#[test]
fn an_idle_leader_keeps_its_term_for_3s() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let term = cluster.info(leader).term;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        // A follower that missed heartbeats would start an election and
        // bump the term; the leader must stay the one everyone follows.
        let now = cluster.agreed_leader(&cluster.all());
        assert!(
            matches!(&now, Some((l, info)) if *l == leader && info.term == term),
            "after {:?} of no traffic the term-{term} leader {} is no longer followed: {now:?}\n{}",
            started.elapsed(),
            cluster.id(leader),
            cluster.report()
        );
        std::thread::sleep(POLL);
    }
}
