//! SPEC §6 "Shutdown": SIGTERM on every member at once ends each with exit
//! 0 within the drain deadline, and a restart of all from the same
//! directories has every acknowledged write.

use std::time::Duration;

use crate::fixture::Cluster;

#[test]
fn sigterm_stops_every_member_cleanly_and_a_restart_keeps_every_write() {
    let cluster = Cluster::start(3, &["--shutdown-timeout=5s"]);
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    for i in 0..30 {
        let response = cluster.put(&format!("t{i}"), &format!("value {i}"));
        assert!(
            response.as_ref().is_ok_and(|r| r.status == 200),
            "PUT t{i}: {response:?}\n{}",
            cluster.report()
        );
    }

    // 5 s to drain, and 10 s allowed in all to save and exit.
    cluster.stop_all();

    cluster.start_members(&cluster.all());
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    for i in 0..30 {
        let response = cluster.get(&format!("t{i}"));
        assert!(
            response
                .as_ref()
                .is_ok_and(|r| r.status == 200 && r.text() == format!("value {i}")),
            "GET t{i} after a restart of every member: {response:?}\n{}",
            cluster.report()
        );
    }
}
