//! Faults for tests: crash points, where a test build can be told to abort
//! the process, and I/O points, where it can be told to fail one disk
//! operation, to prove that a crash or a disk error at that moment loses
//! nothing acknowledged and brings nothing deleted back.
//!
//! Compiled in only with the `fault-injection` feature, which the test
//! suite turns on for the binary it runs (see `Cargo.toml`); in every other
//! build `crash_point` and `io_point` are empty inline functions. It must
//! never change behaviour except by aborting, or failing the one operation,
//! where it is told to.

use std::io;

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

/// Fails once, as the disk would, at each hit `KVS_FAIL_AT` plans for this
/// I/O step, and succeeds otherwise. `KVS_FAIL_AT` is a comma-separated
/// list of `NAME[#N][:ERRNO]`: fail the N-th hit (default the first) of the
/// step NAME with `ENOSPC` or `EIO` (the default). The steps are
/// `wal-append`, `wal-fsync`, `snapshot-write` and `snapshot-rename`.
/// Entries that do not parse are ignored.
#[cfg(feature = "fault-injection")]
pub fn io_point(name: &str) -> io::Result<()> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// One planned failure, and how often its step was hit so far.
    struct Planned {
        name: String,
        nth: u32,
        errno: i32,
        hits: AtomicU32,
    }

    fn parse(entry: &str) -> Option<Planned> {
        const EIO: i32 = 5;
        const ENOSPC: i32 = 28;
        let (step, errno) = match entry.trim().split_once(':') {
            Some((step, "ENOSPC")) => (step, ENOSPC),
            Some((step, "EIO")) => (step, EIO),
            Some(_) => return None,
            None => (entry.trim(), EIO),
        };
        let (name, nth) = match step.split_once('#') {
            Some((name, n)) => (name, n.parse().ok()?),
            None => (step, 1),
        };
        Some(Planned {
            name: name.to_owned(),
            nth,
            errno,
            hits: AtomicU32::new(0),
        })
    }

    static PLAN: OnceLock<Vec<Planned>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        std::env::var("KVS_FAIL_AT")
            .map(|list| list.split(',').filter_map(parse).collect())
            .unwrap_or_default()
    });
    for planned in plan.iter().filter(|p| p.name == name) {
        if planned.hits.fetch_add(1, Ordering::SeqCst) + 1 == planned.nth {
            let error = io::Error::from_raw_os_error(planned.errno);
            eprintln!("kvs: fault injection: failing {name} with {error}");
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn io_point(_name: &str) -> io::Result<()> {
    Ok(())
}
