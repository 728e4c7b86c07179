//! SPEC §6 "Reads": a GET sent to the leader right after an acknowledged
//! PUT never shows an older value, even while the leader is SIGKILLed and
//! a new one takes over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::fixture::{
    Cluster, StopOnDrop, get_following_redirects, put_following_redirects, wait_until,
};

#[test]
fn a_read_after_an_acknowledged_write_never_sees_an_older_value() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(3));
    let addrs = cluster.addrs();
    let stop = AtomicBool::new(false);
    let pairs = AtomicUsize::new(0);

    let (outcome, at_kill) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let client = s.spawn(|| -> Result<(), String> {
            let budget = Duration::from_secs(5);
            let mut last_acked: Option<u64> = None;
            let mut i: u64 = 0;
            while !stop.load(SeqCst) {
                i += 1;
                match put_following_redirects(&addrs, i as usize, "k", &i.to_string(), budget) {
                    Ok(r) if r.status == 200 => last_acked = Some(i),
                    Ok(r) => return Err(format!("PUT k={i}: {r:?}")),
                    // Outcome unknown (the leader died with it in flight):
                    // it may or may not take effect, so it bounds nothing.
                    Err(_) => {}
                }
                let Some(acked) = last_acked else { continue };
                match get_following_redirects(&addrs, i as usize + 1, "k", budget) {
                    Ok(r) if r.status == 200 => {
                        // Anything from the last acknowledged PUT on; a
                        // later unknown-outcome PUT may have landed too.
                        let read: Option<u64> = r.text().parse().ok();
                        if !read.is_some_and(|v| (acked..=i).contains(&v)) {
                            return Err(format!(
                                "GET k after PUT k={acked} was acknowledged (last tried {i}) read {r:?}"
                            ));
                        }
                        pairs.fetch_add(1, SeqCst);
                    }
                    Ok(r) => {
                        return Err(format!(
                            "GET k after PUT k={acked} was acknowledged: {r:?}"
                        ));
                    }
                    Err(_) => {}
                }
            }
            Ok(())
        });
        wait_until(Duration::from_secs(5), || pairs.load(SeqCst) >= 20);
        let at_kill = pairs.load(SeqCst);
        cluster.kill(leader);
        wait_until(Duration::from_secs(8), || {
            pairs.load(SeqCst) >= at_kill + 20
        });
        stop.store(true, SeqCst);
        (client.join().unwrap(), at_kill)
    });
    if let Err(violation) = outcome {
        panic!("{violation}\n{}", cluster.report());
    }
    let after_kill = pairs.load(SeqCst) - at_kill;
    assert!(
        at_kill > 0 && after_kill > 0,
        "{at_kill} write-then-read pairs before the leader crash, {after_kill} after\n{}",
        cluster.report()
    );
}
