//! SPEC §6 "Members", clstr's form: five members configured only by the
//! environment (`ADDR` this node, `PEERS` the others, `DATA_DIR`), no
//! flags, listen on ADDR, elect a leader and redirect to its ADDR.

use std::time::Duration;

use crate::common::request;
use crate::fixture::{Cluster, parse_location};

#[test]
fn five_members_configured_by_the_environment_elect_and_redirect() {
    // The fixture checks each member logs `listening on` its ADDR.
    let cluster = Cluster::start_clstr(5, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    for i in cluster.all() {
        let info = cluster.info(i);
        let mut others: Vec<&str> = cluster.others(i).iter().map(|&j| cluster.id(j)).collect();
        others.sort();
        assert_eq!(
            (info.id.as_str(), info.peers.clone()),
            (
                cluster.id(i),
                others.iter().map(|s| s.to_string()).collect()
            ),
            "member {i}\n{}",
            cluster.report()
        );
    }

    let follower = cluster.others(leader)[0];
    let redirect = request(cluster.addr(follower), "PUT", "/kv/env-key", Some(b"v"));
    let location = format!("http://{}/kv/env-key", cluster.id(leader));
    assert_eq!(
        (redirect.status, redirect.header("location")),
        (307, Some(location.as_str())),
        "{redirect:?}\n{}",
        cluster.report()
    );
    let (addr, path) = parse_location(&location).unwrap();
    request(addr, "PUT", &path, Some(b"v")).assert(200, "");
    request(addr, "GET", &path, None).assert(200, "v");
    assert!(
        cluster.dir(leader).read_dir().unwrap().next().is_some(),
        "DATA_DIR is used"
    );
}
