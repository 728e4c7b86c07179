//! SPEC §7 in a cluster: members started with a token and TLS elect,
//! replicate and redirect over HTTPS, keep the token out of
//! `/cluster/info`, show their Raft state in `/metrics`, and a member
//! started with another token never joins while the others go on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::temp_dir;
use crate::common::tls::make_certs;
use crate::fixture::Cluster;

const TOKEN: &str = "cluster-token-0123456789abcdefghijklmnopqrstuv";
const OTHER_TOKEN: &str = "another-token-0123456789abcdefghijklmnopqrstu";

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, token).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn members_with_a_token_and_tls_replicate_and_one_with_another_token_never_joins() {
    let secrets = temp_dir();
    let certs = make_certs(secrets.path());
    let token_file = secrets.path().join("token");
    write_token(&token_file, TOKEN);
    let args = [
        format!("--token-file={}", token_file.display()),
        format!("--tls-cert={}", certs.cert.display()),
        format!("--tls-key={}", certs.key.display()),
        format!("--tls-ca={}", certs.ca.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_without(3, &[2], &args);
    cluster.set_client(Some(&certs.ca), Some(TOKEN));
    let leader = cluster.wait_for_leader(&[0, 1], Duration::from_secs(5));
    let follower = if leader == 0 { 1 } else { 0 };

    let put = cluster.send(leader, "PUT", "/kv/k", Some(b"v1")).unwrap();
    put.assert(200, "");
    // Followers send clients to the leader's HTTPS address.
    let redirect = cluster.send(follower, "GET", "/kv/k", None).unwrap();
    assert_eq!(redirect.status, 307, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://{}/kv/k", cluster.id(leader)).as_str())
    );
    // Replicated: the follower applied it.
    let leader_commit = cluster.info(leader).commit_index;
    let started = Instant::now();
    while cluster.info(follower).last_applied < leader_commit {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            cluster.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without the token, members refuse clients too.
    cluster.set_client(Some(&certs.ca), None);
    assert_eq!(
        cluster.send(leader, "GET", "/kv/k", None).unwrap().status,
        401
    );
    cluster.set_client(Some(&certs.ca), Some(TOKEN));
    for i in [0, 1] {
        let info = cluster.send(i, "GET", "/cluster/info", None).unwrap();
        assert!(!info.text().contains(TOKEN), "{info:?}");
    }
    let metrics = cluster.send(leader, "GET", "/metrics", None).unwrap();
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = metrics.text();
    assert!(text.contains("kvs_raft_role{role=\"leader\"} 1"), "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    assert!(value("kvs_raft_term") >= 1.0, "{text}");
    assert!(value("kvs_raft_leader_changes_total") >= 1.0, "{text}");
    assert!(value("kvs_raft_commit_index") >= 2.0, "{text}");
    assert!(value("kvs_fsync_duration_seconds_count") >= 1.0, "{text}");
    assert!(value("kvs_log_size_bytes") > 0.0, "{text}");
    assert_eq!(value("kvs_keys"), 1.0, "{text}");

    // The third member comes up with another token: the others refuse
    // its messages, so it never learns of the leader, and they go on.
    write_token(&token_file, OTHER_TOKEN);
    cluster.restart(2);
    std::thread::sleep(Duration::from_secs(3));
    cluster.set_client(Some(&certs.ca), Some(OTHER_TOKEN));
    let outsider = cluster.info(2);
    assert_eq!(outsider.leader, None, "{}", cluster.report());
    assert_eq!(outsider.last_applied, 0, "{}", cluster.report());
    assert!(
        cluster
            .log(2)
            .contains("refuses this member's messages (401)"),
        "{}",
        cluster.log(2)
    );
    cluster.set_client(Some(&certs.ca), Some(TOKEN));
    let now_leader = cluster.wait_for_leader(&[0, 1], Duration::from_secs(5));
    cluster
        .send(now_leader, "PUT", "/kv/k", Some(b"v2"))
        .unwrap()
        .assert(200, "");
    cluster
        .send(now_leader, "GET", "/kv/k", None)
        .unwrap()
        .assert(200, "v2");
    for i in 0..3 {
        assert!(
            !cluster.log(i).contains(TOKEN),
            "member {i} logged the token"
        );
        assert!(
            !cluster.log(i).contains(OTHER_TOKEN),
            "member {i} logged the token"
        );
    }
}
