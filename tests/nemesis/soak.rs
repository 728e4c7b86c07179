//! The nemesis soak: 8 clients write and read 5 keys through any member
//! while a seeded nemesis kills, stops, pauses and cuts members; then the
//! whole history must be linearizable, key by key, and every key readable
//! once the faults are healed. `#[ignore]`d: `.ci/run` runs it with
//! `cargo test --test nemesis -- --ignored --test-threads=1`.
//!
//! `KVS_SOAK_SEED=N` repeats a run's fault schedule (the seed is printed
//! at the start and in every failure); `KVS_SOAK_SECS` sets how long the
//! nemesis runs (20 s by default, per cluster size); `KVS_SOAK_VERBOSE=1`
//! prints the fault timeline and saves every member's log even on success;
//! `KVS_NEMESIS_BIN` runs another `kvs` binary (see `netns.rs`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::checker::{self, Kind, Op, Verdict};
use crate::common::{Response, read_response};
use crate::fixture::{StopOnDrop, parse_location};
use crate::netns::{NetCluster, OneWay, leftovers, say};

const CLIENTS: usize = 8;
const KEYS: usize = 5;

/// A Raft log small enough that members compact it every few seconds under
/// this load, so that a member restarted or cut off for a moment often
/// catches up from the leader's snapshot rather than from its log.
const SERVER_ARGS: &[&str] = &["--wal-max-bytes=16384"];

/// Each request's connect, write and read timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client keeps retrying one operation that was definitely not
/// performed (no leader, refused connection) before giving it up.
const OP_BUDGET: Duration = Duration::from_secs(5);

/// A client's mean pause between operations: keeps the history to a size
/// the checker gets through in a few seconds.
const THINK: Duration = Duration::from_millis(10);

/// Redirects followed before starting over at another member.
const MAX_HOPS: usize = 4;

/// How long the checker may search one key's history.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

/// SplitMix64: small, seedable, and the same schedule for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }

    /// `k` distinct members out of `0..n`.
    fn choose(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort();
        all
    }
}

/// The seed: `KVS_SOAK_SEED`, or the clock.
fn seed() -> u64 {
    match std::env::var("KVS_SOAK_SEED") {
        Ok(seed) => seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KVS_SOAK_SEED={seed:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000_000),
    }
}

/// How one request went.
enum Delivery {
    Answered(Response),
    /// The request never reached the server whole (no connection, or the
    /// write failed): it was not performed.
    Undelivered,
    /// Sent, but no answer (timeout, connection cut or reset): it may or
    /// may not be performed.
    Lost,
}

fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Delivery {
    let mut stream = match TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT) {
        Ok(stream) => stream,
        Err(_) => return Delivery::Undelivered,
    };
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    if stream.write_all(&raw).is_err() {
        return Delivery::Undelivered;
    }
    match read_response(&mut stream, false) {
        Ok(response) => Delivery::Answered(response),
        Err(_) => Delivery::Lost,
    }
}

/// How one operation ended, over all its attempts.
enum Outcome {
    /// 200 or 404, to the request sent at `invoked`.
    Done {
        invoked: Duration,
        completed: Duration,
        response: Response,
    },
    /// A write that may or may not have been performed, by the request
    /// sent at `invoked`.
    Unknown { invoked: Duration },
    /// Every attempt was refused before it was performed (or, for a read,
    /// unanswered): nothing to record.
    NotDone,
}

/// What every client and the nemesis share.
struct Run<'a> {
    cluster: &'a NetCluster,
    addrs: Vec<SocketAddr>,
    clock: Instant,
    stop_clients: AtomicBool,
    history: Mutex<Vec<Op>>,
    /// Things the server must never do, whatever the faults.
    anomalies: Mutex<Vec<String>>,
    /// What the nemesis did, and when.
    timeline: Mutex<Vec<(Duration, String)>>,
    faults: AtomicUsize,
}

impl Run<'_> {
    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    fn anomaly(&self, what: String) {
        let at = self.now();
        self.anomalies
            .lock()
            .unwrap()
            .push(format!("{:.1} s: {what}", at.as_secs_f64()));
    }

    fn event(&self, what: String) {
        let at = self.now();
        self.timeline.lock().unwrap().push((at, what));
    }

    /// Sends one operation as a careful client does: starts at `first`,
    /// follows 307s to other members, retries `no leader` (and, for reads,
    /// any 503 or lost answer) elsewhere after a short sleep, and stops at
    /// the first answer that settles it. A write's outcome is settled by a
    /// 200 (done), or by a lost answer or a 503 other than `no leader`
    /// (unknown: never retried, since a retry could apply it twice).
    /// `put` is the value of a PUT; None sends a GET.
    fn perform(
        &self,
        rng: &mut Rng,
        first: usize,
        path: &str,
        put: Option<&[u8]>,
        budget: Duration,
        stop: Option<&AtomicBool>,
    ) -> Outcome {
        let write = put.is_some();
        let method = if write { "PUT" } else { "GET" };
        let started = Instant::now();
        let mut start_at = first;
        loop {
            if started.elapsed() > budget || stop.is_some_and(|s| s.load(SeqCst)) {
                return Outcome::NotDone;
            }
            let mut target = self.addrs[start_at % self.addrs.len()];
            let mut target_path = path.to_owned();
            for _hop in 0..=MAX_HOPS {
                let invoked = self.now();
                let response = match send(target, method, &target_path, put) {
                    Delivery::Undelivered => break,
                    Delivery::Lost if write => return Outcome::Unknown { invoked },
                    Delivery::Lost => break,
                    Delivery::Answered(response) => response,
                };
                let completed = self.now();
                let text = String::from_utf8_lossy(&response.body).into_owned();
                match response.status {
                    200 | 404 if response.status == 200 || !write => {
                        return Outcome::Done {
                            invoked,
                            completed,
                            response,
                        };
                    }
                    307 => {
                        let location = response.header("location").unwrap_or_default();
                        match parse_location(location) {
                            Some((addr, next)) if self.addrs.contains(&addr) && next == path => {
                                target = addr;
                                target_path = next;
                            }
                            _ => {
                                self.anomaly(format!(
                                    "{method} http://{target}{target_path}: 307 to {location:?}, \
                                     not this path on a member"
                                ));
                                break;
                            }
                        }
                    }
                    503 if text == "no leader\n" => break,
                    503 if !write => break,
                    503 => return Outcome::Unknown { invoked },
                    status => {
                        self.anomaly(format!(
                            "{method} http://{target}{target_path}: unexpected {status} {text:?}"
                        ));
                        if write {
                            return Outcome::Unknown { invoked };
                        }
                        break;
                    }
                }
            }
            start_at += 1 + rng.below(self.addrs.len());
            std::thread::sleep(rng.millis(20, 80));
        }
    }

    /// One client: random reads and writes of unique values, until told
    /// to stop.
    fn client(&self, c: usize, seed: u64) {
        let mut rng = Rng::new(seed ^ (c as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        let mut written = 0;
        while !self.stop_clients.load(SeqCst) {
            let key = format!("k{}", rng.below(KEYS));
            let path = format!("/kv/{key}");
            // Any member: a follower redirects to the leader it knows,
            // which after a cut may be a deposed one.
            let first = rng.below(self.addrs.len());
            let (kind, outcome) = if rng.chance(0.5) {
                written += 1;
                let value = format!("c{c}-{written}");
                let outcome = self.perform(
                    &mut rng,
                    first,
                    &path,
                    Some(value.as_bytes()),
                    OP_BUDGET,
                    Some(&self.stop_clients),
                );
                (Kind::Write(value), outcome)
            } else {
                let outcome = self.perform(
                    &mut rng,
                    first,
                    &path,
                    None,
                    OP_BUDGET,
                    Some(&self.stop_clients),
                );
                (Kind::Read(None), outcome)
            };
            let op = |kind, invoked, completed| Op {
                client: c,
                key: key.clone(),
                kind,
                invoked,
                completed,
            };
            if THINK > Duration::ZERO {
                std::thread::sleep(rng.millis(0, 2 * THINK.as_millis() as u64));
            }
            let op = match (kind, outcome) {
                (_, Outcome::NotDone) => continue,
                (Kind::Write(value), Outcome::Unknown { invoked }) => {
                    op(Kind::Write(value), invoked, None)
                }
                (Kind::Read(_), Outcome::Unknown { .. }) => unreachable!("reads are retried"),
                (
                    kind,
                    Outcome::Done {
                        invoked,
                        completed,
                        response,
                    },
                ) => {
                    let kind = match kind {
                        Kind::Read(_) if response.status == 404 => Kind::Read(None),
                        Kind::Read(_) => {
                            Kind::Read(Some(String::from_utf8_lossy(&response.body).into_owned()))
                        }
                        write => write,
                    };
                    op(kind, invoked, Some(completed))
                }
            };
            self.history.lock().unwrap().push(op);
        }
    }

    /// Notices a member that exited without being told to, and starts it
    /// again.
    fn reap_unexpected(&self) {
        for i in self.cluster.all() {
            if let Some(status) = self.cluster.reap(i) {
                self.anomaly(format!(
                    "member {i} exited on its own with {status}; its log:\n{}",
                    tail(&self.cluster.log(i), 40)
                ));
                self.restart(&[i]);
            }
        }
    }

    fn restart(&self, which: &[usize]) {
        if let Err(e) = self.cluster.start_members(which) {
            self.anomaly(format!("restart of {which:?} failed: {e}"));
        }
    }

    /// A victim: the leader half the time (when one is known), any member
    /// otherwise.
    fn victim(&self, rng: &mut Rng) -> usize {
        // The same draws whatever the cluster's state, so that a seed
        // repeats the schedule.
        let (leader, any) = (rng.chance(0.5), rng.below(self.cluster.len()));
        match self.cluster.leader() {
            Some(l) if leader => l,
            _ => any,
        }
    }

    /// A minority of the members, with the leader among them half the
    /// time: a deposed leader that still believes it leads is what a
    /// linearizable read must not be fooled by.
    fn minority(&self, rng: &mut Rng) -> Vec<usize> {
        let n = self.cluster.len();
        let count = 1 + rng.below((n - 1) / 2);
        let (leader, mut chosen) = (rng.chance(0.5), rng.choose(n, count));
        if let Some(l) = self.cluster.leader()
            && leader
            && !chosen.contains(&l)
        {
            chosen[0] = l;
            chosen.sort();
        }
        chosen
    }

    /// The nemesis: a fault 0.2-0.8 s after the last was undone, each held
    /// for 0.1-4 s, until `run_for` has passed. One at a time, so every
    /// member is up and every link whole between two faults.
    fn nemesis(&self, seed: u64, run_for: Duration) {
        let mut rng = Rng::new(seed);
        let n = self.cluster.len();
        while self.now() < run_for {
            std::thread::sleep(rng.millis(200, 800));
            self.reap_unexpected();
            self.faults.fetch_add(1, SeqCst);
            match rng.below(16) {
                0..=2 => {
                    let victims = self.minority(&mut rng);
                    self.event(format!("SIGKILL {victims:?}"));
                    if let Err(e) = self.cluster.kill(&victims) {
                        self.anomaly(e);
                    }
                    std::thread::sleep(rng.millis(200, 1200));
                    self.event(format!("restart {victims:?}"));
                    self.restart(&victims);
                }
                3 => {
                    self.event("SIGKILL every member".to_owned());
                    if let Err(e) = self.cluster.kill(&self.cluster.all()) {
                        self.anomaly(e);
                    }
                    std::thread::sleep(rng.millis(100, 1000));
                    self.event("restart every member".to_owned());
                    self.restart(&self.cluster.all());
                }
                4 | 5 => {
                    let victim = self.victim(&mut rng);
                    self.event(format!("SIGTERM {victim}"));
                    let signalled = Instant::now();
                    match self.cluster.terminate(victim, Duration::from_secs(10)) {
                        Ok(status) if status.code() == Some(0) => self.event(format!(
                            "member {victim} exited 0 after {:.2} s",
                            signalled.elapsed().as_secs_f64()
                        )),
                        Ok(status) => self.anomaly(format!(
                            "member {victim} exited with {status} after SIGTERM; its log:\n{}",
                            tail(&self.cluster.log(victim), 40)
                        )),
                        Err(e) => self.anomaly(format!("after SIGTERM: {e}")),
                    }
                    std::thread::sleep(rng.millis(100, 800));
                    self.event(format!("restart {victim}"));
                    self.restart(&[victim]);
                }
                6 | 7 => {
                    let victim = self.victim(&mut rng);
                    self.event(format!("SIGSTOP {victim}"));
                    self.cluster.pause(victim);
                    std::thread::sleep(rng.millis(500, 4000));
                    self.event(format!("SIGCONT {victim}"));
                    self.cluster.resume(victim);
                }
                8..=10 => {
                    let cut_off = self.minority(&mut rng);
                    let rest: Vec<usize> = (0..n).filter(|i| !cut_off.contains(i)).collect();
                    self.event(format!("partition {cut_off:?} | {rest:?}"));
                    self.hold_then_heal(&mut rng, self.cluster.cut(&cut_off, &rest), 500, 2500);
                }
                11..=13 => {
                    let from = self.victim(&mut rng);
                    let to = (from + 1 + rng.below(n - 1)) % n;
                    let how = if rng.chance(0.5) {
                        OneWay::Messages
                    } else {
                        OneWay::Packets
                    };
                    self.event(format!("cut {from} -> {to} one way ({how:?})"));
                    self.hold_then_heal(
                        &mut rng,
                        self.cluster.cut_one_way(from, to, how),
                        500,
                        2500,
                    );
                }
                _ => {
                    if !self.cluster.is_netns() {
                        // No lossy links on loopback: a symmetric cut of
                        // one member instead.
                        let victim = rng.below(n);
                        let rest: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
                        self.event(format!("partition [{victim}] | {rest:?}"));
                        self.hold_then_heal(
                            &mut rng,
                            self.cluster.cut(&[victim], &rest),
                            500,
                            2000,
                        );
                        continue;
                    }
                    let victim = self.victim(&mut rng);
                    let loss = [0.1, 0.2, 0.3, 0.5][rng.below(4)];
                    self.event(format!("member {victim} loses {loss} of its packets"));
                    self.hold_then_heal(&mut rng, self.cluster.lossy(victim, loss), 1000, 3000);
                }
            }
        }
        self.event("nemesis done".to_owned());
    }

    fn hold_then_heal(&self, rng: &mut Rng, applied: Result<(), String>, from: u64, to: u64) {
        if let Err(e) = applied {
            self.anomaly(format!("fault not applied: {e}"));
        }
        std::thread::sleep(rng.millis(from, to));
        self.event("heal".to_owned());
        if let Err(e) = self.cluster.heal() {
            self.anomaly(format!("heal failed: {e}"));
        }
    }

    /// Undoes every fault that may be left: resumes, restarts, heals, and
    /// waits for a leader.
    fn heal_all(&self) {
        self.reap_unexpected();
        for i in self.cluster.all() {
            self.cluster.resume(i);
            if !self.cluster.is_up(i) {
                self.restart(&[i]);
            }
        }
        if let Err(e) = self.cluster.heal() {
            self.anomaly(format!("heal failed: {e}"));
        }
        match self
            .cluster
            .wait_for_leader(&self.cluster.all(), Duration::from_secs(15))
        {
            Ok(leader) => self.event(format!("healed; member {leader} leads")),
            Err(e) => self.anomaly(format!("after every fault was healed: {e}")),
        }
    }
}

/// The last `lines` lines of `log`, indented.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect()
}

/// Runs the soak on `n` members and panics with everything needed to
/// reproduce and understand a failure.
fn soak(n: usize, test_name: &str) {
    let seed = seed();
    let run_for = std::env::var("KVS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs);
    let repeat = format!(
        "KVS_SOAK_SEED={seed} cargo test --test nemesis -- --ignored --exact soak::{test_name}"
    );
    say(&format!(
        "nemesis soak: {n} members, seed {seed} (to repeat: {repeat})"
    ));
    let started = Instant::now();
    let cluster = NetCluster::start(n, SERVER_ARGS);
    let network = if cluster.is_netns() {
        format!("network namespaces {:?}", cluster.namespaces())
    } else {
        "loopback".to_owned()
    };
    if let Err(e) = cluster.wait_for_leader(&cluster.all(), Duration::from_secs(10)) {
        panic!("seed {seed}: {e}\n{}", cluster.report());
    }
    let run = Run {
        cluster: &cluster,
        addrs: cluster.addrs(),
        clock: Instant::now(),
        stop_clients: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
        anomalies: Mutex::new(Vec::new()),
        timeline: Mutex::new(Vec::new()),
        faults: AtomicUsize::new(0),
    };

    std::thread::scope(|s| {
        // Clients stop even if the nemesis panics.
        let _stop = StopOnDrop(&run.stop_clients);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let run = &run;
                s.spawn(move || run.client(c, seed))
            })
            .collect();
        run.nemesis(seed, run_for);
        run.heal_all();
        // A moment of calm: the clients see the healed cluster serve.
        std::thread::sleep(Duration::from_secs(1));
        run.stop_clients.store(true, SeqCst);
        for client in clients {
            client.join().unwrap();
        }
    });

    // One last read of every key, after every other operation: the value
    // an acknowledged write left must be there.
    let mut rng = Rng::new(seed);
    for k in 0..KEYS {
        let key = format!("k{k}");
        match run.perform(
            &mut rng,
            k,
            &format!("/kv/{key}"),
            None,
            Duration::from_secs(10),
            None,
        ) {
            Outcome::Done {
                invoked,
                completed,
                response,
                ..
            } => {
                let value = (response.status == 200)
                    .then(|| String::from_utf8_lossy(&response.body).into_owned());
                run.history.lock().unwrap().push(Op {
                    client: usize::MAX,
                    key,
                    kind: Kind::Read(value),
                    invoked,
                    completed: Some(completed),
                });
            }
            _ => run.anomaly(format!(
                "the final read of {key} got no answer within 10 s after the heal"
            )),
        }
    }

    let history = run.history.lock().unwrap().clone();
    let (acked, unknown, reads) = checker::counts(&history);
    let checking = Instant::now();
    let keys = checker::by_key(&history);
    let verdicts: BTreeMap<String, Verdict> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|(key, ops)| {
                (
                    key.clone(),
                    s.spawn(move || checker::check_key(ops, CHECK_BUDGET)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(key, h)| (key, h.join().unwrap()))
            .collect()
    });
    let check_took = checking.elapsed();
    let mut acks: Vec<Duration> = history
        .iter()
        .filter(|op| matches!(op.kind, Kind::Write(_)))
        .filter_map(|op| op.completed)
        .collect();
    acks.sort();
    let longest_gap = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let faults = run.faults.load(SeqCst);
    let anomalies = run.anomalies.lock().unwrap().clone();
    // What the members' logs say they did, for the summary: the soak
    // means to exercise compaction and snapshot catch-up too.
    let logged = |what: &str| {
        cluster
            .all()
            .into_iter()
            .map(|i| cluster.log(i).matches(what).count())
            .sum::<usize>()
    };
    let (compactions, installs) = (
        logged("compaction done"),
        logged("installed the leader's snapshot"),
    );
    let bad: Vec<(&String, &Verdict)> = verdicts
        .iter()
        .filter(|(_, v)| **v != Verdict::Linearizable)
        .collect();
    let verdict = if bad.is_empty() {
        "linearizable".to_owned()
    } else {
        format!("NOT linearizable: {bad:?}")
    };
    say(&format!(
        "nemesis soak: {n} members on {}, seed {seed}: {} ops ({acked} acknowledged writes, \
         {unknown} of unknown outcome, {reads} reads), {faults} faults, {compactions} compactions, {installs} snapshot installs, \
         longest without an acknowledged write {:.1} s, \
         {} anomalies, {verdict} (checked in {:.2} s), {:.1} s in all",
        if cluster.is_netns() {
            "netns"
        } else {
            "loopback"
        },
        history.len(),
        longest_gap.as_secs_f64(),
        anomalies.len(),
        check_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));

    if std::env::var("KVS_SOAK_VERBOSE").is_ok() {
        for (at, what) in run.timeline.lock().unwrap().iter() {
            say(&format!("  {:9.1}  {what}", at.as_secs_f64() * 1000.0));
        }
        for anomaly in &anomalies {
            say(&format!("  anomaly: {anomaly}"));
        }
        for i in cluster.all() {
            let path = std::env::temp_dir().join(format!("kvs-soak-{n}-{seed}-member{i}.log"));
            let _ = std::fs::write(&path, cluster.log(i));
            say(&format!("  member {i}'s log: {}", path.display()));
        }
    }
    let mut failure = String::new();
    for (key, verdict) in &bad {
        let ops = &keys[key.as_str()];
        match verdict {
            Verdict::Violation => {
                let small = checker::shrink(ops, Duration::from_secs(30));
                failure.push_str(&format!(
                    "key {key}: NOT LINEARIZABLE. A failing sub-history ({} of its {} ops; \
                     times in ms since the clients started; ? = outcome unknown):\n{}",
                    small.len(),
                    ops.len(),
                    checker::render(&small)
                ));
            }
            _ => failure.push_str(&format!(
                "key {key}: the checker gave up after {CHECK_BUDGET:?} ({} ops)\n",
                ops.len()
            )),
        }
    }
    if !anomalies.is_empty() {
        failure.push_str("anomalies:\n");
        for anomaly in &anomalies {
            failure.push_str(&format!("  {anomaly}\n"));
        }
    }
    if acked < 20 {
        failure.push_str(&format!(
            "only {acked} writes were acknowledged in {run_for:?}: the cluster hardly served\n"
        ));
    }
    if !failure.is_empty() {
        let saved = std::env::temp_dir().join(format!("kvs-soak-{n}-{seed}.history"));
        let _ = std::fs::write(&saved, checker::render(&history));
        let mut timeline = String::new();
        for (at, what) in run.timeline.lock().unwrap().iter() {
            timeline.push_str(&format!("  {:9.1}  {what}\n", at.as_secs_f64() * 1000.0));
        }
        panic!(
            "nemesis soak on {n} members ({network}) failed, seed {seed}\nto repeat: \
             {repeat}\n{failure}whole history: {}\nnemesis timeline (ms):\n{timeline}\
             members:\n{}\nseed {seed}",
            saved.display(),
            cluster.report()
        );
    }
    let netns = cluster.is_netns();
    drop(cluster);
    if netns {
        let left = leftovers();
        assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
    }
}

#[test]
#[ignore = "a minute of faults; run with --ignored"]
fn three_members() {
    soak(3, "three_members");
}

#[test]
#[ignore = "a minute of faults; run with --ignored"]
fn five_members() {
    soak(5, "five_members");
}
