//! Nemesis testing of cluster mode (SPEC §6) on a real network: members in
//! network namespaces joined by a bridge, faults as iptables rules and
//! signals, histories judged by a linearizability checker. The soak is
//! `#[ignore]`d; `.ci/run` runs it with `--ignored --test-threads=1`. The
//! checker's own tests run with the normal suite.

#[path = "../common/mod.rs"]
mod common;
#[path = "../cluster/fixture.rs"]
#[allow(dead_code)] // the loopback cluster itself is not used here
mod fixture;

mod checker;
mod netns;
mod soak;
