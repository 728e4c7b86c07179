//! SPEC §6 "Mode mismatch" and "Members": a directory remembers whether a
//! single node or a cluster member wrote it and is refused (exit 2, a
//! message naming the mode, nothing changed) in the other mode; and a
//! cluster member whose ID would not be routable is a usage error.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::{KVS, Server, temp_dir};
use crate::fixture::{Cluster, dir_contents, free_ports};

/// `kvs serve ARGS` with nothing from the environment configuring it;
/// killed if it has not exited after 10 s (it should exit at once).
fn serve(args: &[String]) -> Output {
    assert_cmd::Command::new(KVS)
        .env_remove("ADDR")
        .env_remove("PEERS")
        .env_remove("DATA_DIR")
        .arg("serve")
        .args(args)
        .timeout(Duration::from_secs(10))
        .output()
        .expect("run kvs serve")
}

/// Starts `kvs serve` on `dir` with `args`, expects exit 2 with `needle`
/// (any of them, case-insensitive) on stderr, and the directory untouched.
#[track_caller]
fn assert_refused(dir: &Path, args: &[String], needles: &[&str]) {
    let before = dir_contents(dir);
    let output = serve(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        needles.iter().any(|n| stderr.to_lowercase().contains(n)),
        "{args:?}: stderr does not say {needles:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        dir_contents(dir) == before,
        "{args:?} changed files in {}",
        dir.display()
    );
}

#[test]
fn a_single_node_directory_is_refused_in_cluster_mode() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]);
    server.put("solo", "1").assert(200, "");
    server.stop().assert_clean();

    let ports = free_ports(3);
    let peers: Vec<String> = ports.iter().map(|p| format!(":{p}")).collect();
    assert_refused(
        dir.path(),
        &[
            format!("--port={}", ports[0]),
            format!("--working-dir={}", dir.path().display()),
            format!("--peers={}", peers.join(",")),
        ],
        &["single-node", "single node"],
    );
}

#[test]
fn a_cluster_members_directory_is_refused_in_single_node_mode() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let put = cluster.put("member", "1");
    assert!(put.is_ok_and(|r| r.status == 200), "{}", cluster.report());
    cluster.stop_all();

    assert_refused(
        cluster.dir(0),
        &[
            "--port=0".to_owned(),
            format!("--working-dir={}", cluster.dir(0).display()),
        ],
        &["cluster"],
    );
}

#[test]
fn binding_all_interfaces_without_addr_is_a_usage_error_in_cluster_mode() {
    // Port 0 and a temp directory, so that even a binary that wrongly
    // starts takes no fixed port and writes nowhere else.
    let dir = temp_dir();
    let output = serve(&[
        "--bind".to_owned(),
        "0.0.0.0".to_owned(),
        "--port=0".to_owned(),
        format!("--working-dir={}", dir.path().display()),
        "--peers=:1,:2".to_owned(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // The fix is `--addr`, so a clear message names it (and this tells
    // the refusal apart from protected mode's, which names other flags).
    assert!(stderr.contains("--addr"), "{stderr}");
}
