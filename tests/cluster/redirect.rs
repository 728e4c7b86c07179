//! SPEC §6 "Not the leader": a follower sends `/kv` and `/clear` to the
//! leader with a 307 that keeps path, query, method and body; with no
//! leader it answers 503 `no leader`; `/health` is answered by every
//! member; and single-node mode has no `/cluster` API at all.

use std::time::{Duration, Instant};

use crate::common::{Server, request, temp_dir};
use crate::fixture::{Cluster, parse_location, wait_until};

#[test]
fn a_follower_redirects_kv_and_clear_to_the_leader_keeping_path_and_query() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let follower = cluster.others(leader)[0];
    let location = format!("http://{}/kv/k?x=1", cluster.id(leader));

    // Each step goes to the follower, then to where it points, as `curl
    // -L` would: same method, same body.
    let steps: [(&str, Option<&[u8]>, u16, &str); 4] = [
        ("PUT", Some(b"v1"), 200, ""),
        ("GET", None, 200, "v1"),
        ("DELETE", None, 200, ""),
        ("GET", None, 404, "key not found\n"),
    ];
    for (method, body, status, text) in steps {
        let redirect = request(cluster.addr(follower), method, "/kv/k?x=1", body);
        assert_eq!(
            (redirect.status, redirect.header("location")),
            (307, Some(location.as_str())),
            "{method} on a follower: {redirect:?}\n{}",
            cluster.report()
        );
        let (addr, path) = parse_location(&location).unwrap();
        request(addr, method, &path, body).assert(status, text);
    }

    let redirect = request(cluster.addr(follower), "DELETE", "/clear", None);
    assert_eq!(
        (redirect.status, redirect.header("location")),
        (
            307,
            Some(format!("http://{}/clear", cluster.id(leader)).as_str())
        ),
        "{redirect:?}"
    );

    for i in cluster.all() {
        request(cluster.addr(i), "GET", "/health", None).assert(200, "ok\n");
    }
}

#[test]
fn with_no_majority_the_survivor_answers_503_no_leader() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let survivor = cluster.others(leader)[0];
    cluster.kill_all(&cluster.others(survivor));
    let killed = Instant::now();

    // SPEC: within 2 s of losing contact with a majority, leader is null.
    let forgot = wait_until(Duration::from_secs(2), || {
        cluster
            .try_info(survivor)
            .is_ok_and(|info| info.leader.is_none() && !info.is_leader())
    });
    assert!(
        forgot,
        "the survivor still names a leader {:?} after the others died\n{}",
        killed.elapsed(),
        cluster.report()
    );
    let addr = cluster.addr(survivor);
    request(addr, "GET", "/kv/k", None).assert(503, "no leader\n");
    request(addr, "PUT", "/kv/k", Some(b"v")).assert(503, "no leader\n");
    request(addr, "DELETE", "/clear", None).assert(503, "no leader\n");
    request(addr, "GET", "/health", None).assert(200, "ok\n");
}

#[test]
fn single_node_mode_has_no_cluster_api() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    request(server.addr, "GET", "/cluster/info", None).assert(404, "not found\n");
    request(server.addr, "POST", "/cluster/heal", Some(b"")).assert(404, "not found\n");
    request(
        server.addr,
        "POST",
        "/cluster/partition",
        Some(br#"{"peers":[]}"#),
    )
    .assert(404, "not found\n");
    server.stop().assert_clean();
}
