//! SPEC §6 "Shutdown" with a leader: SIGTERM makes it hand leadership to
//! an up-to-date follower before it drains, so another member serves
//! within 300 ms, and no request the old leader was sent gets anything but
//! 200 or a redirect to the new leader.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::send_raw_request;
use crate::fixture::{Cluster, StopOnDrop};

#[test]
fn sigterm_to_the_leader_hands_over_at_once_and_clients_see_only_200_or_redirects() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let others = cluster.others(leader);
    let old = cluster.addr(leader);
    let stop = AtomicBool::new(false);
    let answers: Mutex<Vec<(u16, String)>> = Mutex::default();

    std::thread::scope(|scope| {
        let _stop_clients = StopOnDrop(&stop);
        for client in 0..4 {
            let (stop, answers) = (&stop, &answers);
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Straight at the old leader: a request it accepts
                    // must end in 200 or a redirect. Once it has closed
                    // its listener a connection is refused, and that
                    // request was never in flight.
                    let path = format!("/kv/c{client}-{n}");
                    if let Ok(r) = send_raw_request(old, "PUT", &path, Some(b"v")) {
                        let body = String::from_utf8_lossy(&r.body).into_owned();
                        answers.lock().unwrap().push((r.status, body));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let signalled = Instant::now();
        cluster.signal(leader, Signal::SIGTERM);

        // The first 200 from another member.
        let mut served = None;
        while served.is_none() && signalled.elapsed() < Duration::from_secs(3) {
            for &i in &others {
                let r = send_raw_request(cluster.addr(i), "PUT", "/kv/after", Some(b"x"));
                if r.is_ok_and(|r| r.status == 200) {
                    served = Some(signalled.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = cluster.wait_exit(leader, Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        assert_eq!(status.code(), Some(0), "{}", cluster.log(leader));
        let served = served.unwrap_or_else(|| panic!("no member served\n{}", cluster.report()));
        assert!(
            served <= Duration::from_millis(300),
            "the first write served by another member came {served:?} after SIGTERM\n{}",
            cluster.report()
        );
    });

    let answers = answers.into_inner().unwrap();
    assert!(
        answers.iter().any(|(status, _)| *status == 200),
        "no write reached the old leader before SIGTERM"
    );
    let bad: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200 && *status != 307)
        .collect();
    assert!(
        bad.is_empty(),
        "requests in flight at the old leader got {bad:?}\n{}",
        cluster.log(leader)
    );
    assert!(
        cluster.log(leader).contains("handing leadership to"),
        "{}",
        cluster.log(leader)
    );
}
