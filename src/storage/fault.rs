//! Crash points for tests: places where a test build can be told to abort
//! the process, to prove that a crash at that moment loses nothing
//! acknowledged and brings nothing deleted back.
//!
//! Compiled in only with the `fault-injection` feature, which the test
//! suite turns on for the binary it runs (see `Cargo.toml`); in every other
//! build `crash_point` is an empty inline function. It must never change
//! behaviour except by aborting where it is told to.

/// Aborts the process (as a power cut or SIGKILL would end it: no
/// destructors, no flushing) if `KVS_CRASH_AT` names this point: `NAME`
/// for its first hit, `NAME#N` for its N-th.
#[cfg(feature = "fault-injection")]
pub fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Ok(target) = std::env::var("KVS_CRASH_AT") else {
        return;
    };
    let (target_name, nth) = match target.split_once('#') {
        Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
        None => (target, 1),
    };
    if target_name == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("kvs: fault injection: crashing at {name}");
        // A crash, not a core dump to clean up after.
        let _ = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0);
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
