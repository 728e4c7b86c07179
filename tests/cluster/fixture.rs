//! The cluster fixture: n real `kvs serve` processes on free loopback
//! ports, one temp directory each, started in either published form (lsfr's
//! `--peers` listing every member, or clstr's `ADDR`/`PEERS`/`DATA_DIR`
//! environment), plus the polling helpers the scenarios share. Members are
//! killed by PID only, and every live one is killed when the fixture drops,
//! so a failing test never leaves a process behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::tls::https_request;
use crate::common::{KVS, Response, raw_request, send_raw_request};

/// How long a member may take to start listening or to exit after SIGKILL.
const PATIENCE: Duration = Duration::from_secs(30);

/// How often the waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// Redirects a client follows before it starts over at another member.
const MAX_HOPS: usize = 4;

/// Log lines shown per member when a test fails.
const LOG_TAIL: usize = 25;

/// SPEC §6 states its timing bounds (election within 2 s, step-down within
/// 500 ms) for a machine that is not also running four other clusters: on
/// two cores, two 5-member clusters electing and fsyncing side by side
/// would make the bounds flaky for reasons that are not the server's. So
/// one cluster runs at a time; the whole target takes under a minute.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Ports handed out so far in this test process, so two fixtures never
/// pick the same one even though each listener is dropped before use.
static PORTS_GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `n` distinct free loopback ports. Each is bound on 127.0.0.1:0 to let
/// the OS choose, then released for the server to take.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut given = PORTS_GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Hold every listener until all are chosen so the OS cannot hand the
    // same port out twice.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().unwrap().port();
        listeners.push(listener);
        if given.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// How the members learn who they and their peers are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    /// `--port=P --working-dir=DIR --peers=:P1,:P2,...` (itself included).
    Lsfr,
    /// `ADDR=127.0.0.1:P PEERS=<the others> DATA_DIR=DIR`, no flags.
    Clstr,
}

/// A member's processes over its lives: the one running now (None while
/// it is down) and everything they logged. Kills the running one, by
/// PID, when dropped, so a failing test never leaves a process behind.
/// Shared with the nemesis fixture, which starts its members otherwise.
#[derive(Default)]
pub struct Lives {
    child: Mutex<Option<Child>>,
    /// Everything it logged on stderr, over all its lives.
    log: Arc<Mutex<String>>,
    count: Mutex<usize>,
}

impl Lives {
    /// Starts a new life with `command`, its stderr captured; the address
    /// it logs `listening on` arrives on the returned channel.
    pub fn spawn(&self, mut command: Command) -> Result<mpsc::Receiver<SocketAddr>, String> {
        let mut slot = self.child.lock().unwrap();
        if slot.is_some() {
            return Err("it is already running".to_owned());
        }
        let life = {
            let mut count = self.count.lock().unwrap();
            *count += 1;
            *count
        };
        self.log
            .lock()
            .unwrap()
            .push_str(&format!("----- life {life} -----\n"));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start it: {e}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        *slot = Some(child);
        Ok(crate::common::capture_log(stderr, Arc::clone(&self.log)))
    }

    /// The running process's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn is_up(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// Sends `signal` by PID; false if it is down.
    pub fn signal(&self, signal: Signal) -> bool {
        self.pid()
            .is_some_and(|pid| kill(Pid::from_raw(pid as i32), signal).is_ok())
    }

    /// If the running process has exited, forgets it and says how it
    /// ended (after a moment for the reader to catch its last lines).
    pub fn reap(&self) -> Option<ExitStatus> {
        let mut slot = self.child.lock().unwrap();
        let status = slot.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            *slot = None;
            drop(slot);
            std::thread::sleep(Duration::from_millis(20));
        }
        status
    }

    /// Everything logged over all lives.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Lives {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// One member: its identity, its directory, and its processes.
pub struct Member {
    pub id: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    lives: Lives,
    /// Extra environment for its next lives (such as `KVS_CRASH_AT`).
    env: Mutex<Vec<(String, String)>>,
    _dir: tempfile::TempDir,
}

/// A member's `/cluster/info`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub id: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub peers: Vec<String>,
    pub voted_for: Option<String>,
    pub commit_index: u64,
    pub last_applied: u64,
}

impl Info {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }

    /// Parses the body SPEC §6 gives; every field is required.
    pub fn parse(body: &str) -> Result<Info, String> {
        let json: Value =
            serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:?}"))?;
        let field = |name: &str| {
            json.get(name)
                .ok_or_else(|| format!("no {name:?} field in {body}"))
        };
        let string = |name: &str| {
            field(name)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{name:?} is not a string in {body}"))
        };
        let nullable = |name: &str| match field(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("{name:?} is neither a string nor null in {body}")),
        };
        let role = string("role")?;
        if !["leader", "candidate", "follower"].contains(&role.as_str()) {
            return Err(format!("unknown role {role:?} in {body}"));
        }
        let peers = field("peers")?
            .as_array()
            .ok_or_else(|| format!("\"peers\" is not an array in {body}"))?
            .iter()
            .map(|p| p.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("\"peers\" holds a non-string in {body}"))?;
        Ok(Info {
            id: string("id")?,
            role,
            term: field("term")?
                .as_u64()
                .ok_or_else(|| format!("\"term\" is not a non-negative integer in {body}"))?,
            leader: nullable("leader")?,
            peers,
            voted_for: nullable("voted-for")?,
            commit_index: field("commit-index")?.as_u64().unwrap_or(0),
            last_applied: field("last-applied")?.as_u64().unwrap_or(0),
        })
    }
}

/// A running cluster. Dropping it kills every live member.
pub struct Cluster {
    // Declared first so members die before the lock is released.
    pub members: Vec<Member>,
    form: Form,
    extra_args: Vec<String>,
    /// How the fixture itself talks to members: plain HTTP, or HTTPS
    /// trusting this CA file; and the token, if any.
    client: Mutex<(Option<PathBuf>, Option<String>)>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Cluster {
    /// `n` members in the lsfr form, each given `extra_args` too; returns
    /// once every one logs `listening on`.
    pub fn start(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_as(Form::Lsfr, n, extra_args)
    }

    /// `n` members configured only through `ADDR`, `PEERS` and `DATA_DIR`.
    pub fn start_clstr(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_as(Form::Clstr, n, extra_args)
    }

    /// `n` members in the lsfr form of which only those not in `absent`
    /// are started: the others are down from the start, their
    /// directories empty, until `restart`.
    pub fn start_without(n: usize, absent: &[usize], extra_args: &[&str]) -> Cluster {
        let cluster = Cluster::create(Form::Lsfr, n, extra_args);
        let present: Vec<usize> = cluster
            .all()
            .into_iter()
            .filter(|i| !absent.contains(i))
            .collect();
        cluster.start_members(&present);
        cluster
    }

    fn start_as(form: Form, n: usize, extra_args: &[&str]) -> Cluster {
        let cluster = Cluster::create(form, n, extra_args);
        cluster.start_members(&cluster.all());
        cluster
    }

    fn create(form: Form, n: usize, extra_args: &[&str]) -> Cluster {
        let guard = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let members = free_ports(n)
            .into_iter()
            .map(|port| {
                let dir = tempfile::tempdir().expect("temp dir");
                Member {
                    id: format!("127.0.0.1:{port}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    dir: dir.path().to_owned(),
                    lives: Lives::default(),
                    env: Mutex::default(),
                    _dir: dir,
                }
            })
            .collect();
        Cluster {
            members,
            form,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            client: Mutex::default(),
            _one_at_a_time: guard,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Every member's index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.len()).collect()
    }

    /// Every member's index but `i`'s.
    pub fn others(&self, i: usize) -> Vec<usize> {
        self.all().into_iter().filter(|&j| j != i).collect()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.members[i].id
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr).collect()
    }

    pub fn dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }

    /// The member whose ID is `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// The command line (and environment) of member `i`, in this
    /// cluster's form.
    pub fn command(&self, i: usize) -> Command {
        let member = &self.members[i];
        let mut command = Command::new(KVS);
        // Whatever the test process inherited must not configure a member.
        command
            .env_remove("ADDR")
            .env_remove("PEERS")
            .env_remove("DATA_DIR")
            .arg("serve");
        match self.form {
            Form::Lsfr => {
                let peers: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!(":{}", m.addr.port()))
                    .collect();
                command
                    .arg(format!("--port={}", member.addr.port()))
                    .arg(format!("--working-dir={}", member.dir.display()))
                    .arg(format!("--peers={}", peers.join(",")));
            }
            Form::Clstr => {
                let peers: Vec<&str> = self.others(i).into_iter().map(|j| self.id(j)).collect();
                command
                    .env("ADDR", &member.id)
                    .env("PEERS", peers.join(","))
                    .env("DATA_DIR", &member.dir);
            }
        }
        command.args(&self.extra_args);
        command.envs(member.env.lock().unwrap().iter().cloned());
        command
    }

    /// Sets the extra environment of member `i`'s next lives (empty:
    /// none), such as `KVS_CRASH_AT`, which the test build's crash points
    /// obey.
    pub fn set_env(&self, i: usize, env: &[(&str, &str)]) {
        *self.members[i].env.lock().unwrap() = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts every member in `which` (all at once, as an operator
    /// restarting a cluster would), then waits until each listens.
    pub fn start_members(&self, which: &[usize]) {
        let waiting: Vec<_> = which.iter().map(|&i| (i, self.spawn(i))).collect();
        for (i, listening) in waiting {
            self.wait_listening(i, listening);
        }
    }

    /// Starts member `i` again on its port and directory, with its
    /// arguments, and waits until it listens.
    pub fn restart(&self, i: usize) {
        self.start_members(&[i]);
    }

    fn spawn(&self, i: usize) -> mpsc::Receiver<SocketAddr> {
        self.members[i]
            .lives
            .spawn(self.command(i))
            .unwrap_or_else(|e| panic!("member {i}: {e}"))
    }

    fn wait_listening(&self, i: usize, listening: mpsc::Receiver<SocketAddr>) {
        let started = Instant::now();
        loop {
            match listening.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    assert_eq!(
                        addr,
                        self.addr(i),
                        "member {i} listens elsewhere than its ID says\n{}",
                        self.report()
                    );
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = self.members[i].lives.reap() {
                panic!(
                    "member {i} exited with {status} before listening\n{}",
                    self.report()
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "member {i} did not listen within {PATIENCE:?}\n{}",
                self.report()
            );
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].lives.is_up()
    }

    /// Sends `signal` to member `i`'s process, by PID.
    pub fn signal(&self, i: usize, signal: Signal) {
        assert!(
            self.members[i].lives.signal(signal),
            "member {i} is not running"
        );
    }

    /// Waits up to `within` for member `i` to exit, and returns how it
    /// ended; panics (after which Drop kills it) if it does not.
    pub fn wait_exit(&self, i: usize, within: Duration) -> ExitStatus {
        let started = Instant::now();
        assert!(self.is_up(i), "member {i} is not running");
        loop {
            if let Some(status) = self.members[i].lives.reap() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "member {i} did not exit within {within:?}\n{}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: member `i` dies at once, saving nothing.
    pub fn kill(&self, i: usize) {
        self.signal(i, Signal::SIGKILL);
        self.wait_exit(i, PATIENCE);
    }

    /// SIGKILLs every member in `which` at the same moment.
    pub fn kill_all(&self, which: &[usize]) {
        for &i in which {
            self.signal(i, Signal::SIGKILL);
        }
        for &i in which {
            self.wait_exit(i, PATIENCE);
        }
    }

    /// SIGTERM to every live member at once; each must exit 0 within 10 s
    /// of the signal.
    #[track_caller]
    pub fn stop_all(&self) {
        let live: Vec<usize> = self.all().into_iter().filter(|&i| self.is_up(i)).collect();
        let signalled = Instant::now();
        for &i in &live {
            self.signal(i, Signal::SIGTERM);
        }
        for &i in &live {
            let status = self.wait_exit(
                i,
                Duration::from_secs(10).saturating_sub(signalled.elapsed()),
            );
            assert_eq!(
                status.code(),
                Some(0),
                "member {i} after SIGTERM exited with {status}\n{}",
                self.report()
            );
        }
    }

    /// Everything member `i` logged, over all its lives.
    pub fn log(&self, i: usize) -> String {
        self.members[i].lives.log()
    }

    /// Makes the fixture reach members over HTTPS trusting `ca`, and
    /// send `token`, as members started with TLS and a token require.
    pub fn set_client(&self, ca: Option<&Path>, token: Option<&str>) {
        *self.client.lock().unwrap() = (ca.map(Path::to_owned), token.map(str::to_owned));
    }

    /// One request to member `i`, as the fixture's client is set up.
    pub fn send(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let (ca, token) = self.client.lock().unwrap().clone();
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        match ca {
            Some(ca) => https_request(self.addr(i), &ca, method, path, &headers, body),
            None => {
                let raw = raw_request(self.addr(i), method, path, &headers, body);
                crate::common::send_raw(self.addr(i), &raw)
            }
        }
    }

    /// `GET /cluster/info` of member `i`, or why it could not be had.
    pub fn try_info(&self, i: usize) -> Result<Info, String> {
        let response = self
            .send(i, "GET", "/cluster/info", None)
            .map_err(|e| format!("GET /cluster/info: {e}"))?;
        if response.status != 200 {
            return Err(format!("GET /cluster/info: {response:?}"));
        }
        Info::parse(&String::from_utf8_lossy(&response.body))
    }

    /// `GET /cluster/info` of member `i`; panics with the report if it fails.
    #[track_caller]
    pub fn info(&self, i: usize) -> Info {
        self.try_info(i)
            .unwrap_or_else(|e| panic!("member {i}: {e}\n{}", self.report()))
    }

    /// The leader every member of `members` agrees on at this instant:
    /// exactly one of them says it is the leader, and all of them name it
    /// and its term. Returns its index and its info.
    pub fn agreed_leader(&self, members: &[usize]) -> Option<(usize, Info)> {
        let infos: Vec<Info> = members
            .iter()
            .map(|&i| self.try_info(i))
            .collect::<Result<_, _>>()
            .ok()?;
        let mut leaders = infos.iter().filter(|info| info.is_leader());
        let leader = leaders.next()?.clone();
        if leaders.next().is_some() {
            return None;
        }
        let agreed = infos
            .iter()
            .all(|info| info.leader.as_deref() == Some(&leader.id) && info.term == leader.term);
        if !agreed {
            return None;
        }
        Some((self.index_of(&leader.id)?, leader))
    }

    /// Polls every 50 ms until the members in `members` agree on one
    /// leader (see `agreed_leader`), and returns its index; panics with
    /// every member's info and log tail if that takes longer than `within`.
    #[track_caller]
    pub fn wait_for_leader(&self, members: &[usize], within: Duration) -> usize {
        let started = Instant::now();
        loop {
            if let Some((leader, _)) = self.agreed_leader(members) {
                return leader;
            }
            if started.elapsed() > within {
                panic!(
                    "members {members:?} did not agree on a leader within {within:?}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `POST /cluster/partition`: member `i` exchanges Raft RPCs with
    /// `peers` only.
    #[track_caller]
    pub fn partition(&self, i: usize, peers: &[&str]) {
        let body = serde_json::json!({ "peers": peers }).to_string();
        let response = send_raw_request(
            self.addr(i),
            "POST",
            "/cluster/partition",
            Some(body.as_bytes()),
        );
        self.expect_200(i, "POST /cluster/partition", response);
    }

    /// `POST /cluster/heal`: member `i` talks to everyone again.
    #[track_caller]
    pub fn heal(&self, i: usize) {
        let response = send_raw_request(self.addr(i), "POST", "/cluster/heal", Some(b""));
        self.expect_200(i, "POST /cluster/heal", response);
    }

    #[track_caller]
    fn expect_200(&self, i: usize, what: &str, response: std::io::Result<Response>) {
        match response {
            Ok(r) if r.status == 200 => {}
            other => panic!("member {i}: {what}: {other:?}\n{}", self.report()),
        }
    }

    /// PUT through any member, following redirects (see
    /// `send_following_redirects`).
    pub fn put(&self, key: &str, value: &str) -> Result<Response, String> {
        put_following_redirects(&self.addrs(), 0, key, value, WRITE_BUDGET)
    }

    /// GET through any member, following redirects.
    pub fn get(&self, key: &str) -> Result<Response, String> {
        get_following_redirects(&self.addrs(), 0, key, WRITE_BUDGET)
    }

    /// Every member's state and the tail of its log, for failure messages.
    pub fn report(&self) -> String {
        let mut report = String::new();
        for (i, member) in self.members.iter().enumerate() {
            let state = if self.is_up(i) {
                match self.try_info(i) {
                    Ok(info) => format!("{info:?}"),
                    Err(e) => e,
                }
            } else {
                "down".to_owned()
            };
            report.push_str(&format!("=== member {i} ({}): {state}\n", member.id));
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                report.push_str("    ");
                report.push_str(line);
                report.push('\n');
            }
        }
        report
    }
}

/// How long a client keeps retrying one idempotent request while the
/// cluster elects a leader.
pub const WRITE_BUDGET: Duration = Duration::from_secs(8);

/// Where a `Location` header points: `http://HOST:PORT/path?query`.
pub fn parse_location(location: &str) -> Option<(SocketAddr, String)> {
    let rest = location.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    Some((host.parse().ok()?, path.to_owned()))
}

/// Sends an idempotent request as a cluster client would: starts at
/// `addrs[first]`, follows 307s to their `Location` with the same method
/// and body (up to a few hops), and when a member is unreachable or
/// answers 503 (`no leader`, or an outcome it cannot know) sleeps briefly
/// and starts over at the next member. Returns the first answer that is
/// neither, or an error once `budget` has passed. Only for requests that
/// may safely be repeated: the same PUT of the same value, a GET, a DELETE.
pub fn send_following_redirects(
    addrs: &[SocketAddr],
    first: usize,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    budget: Duration,
) -> Result<Response, String> {
    let started = Instant::now();
    let mut start_at = first % addrs.len();
    let mut last = String::from("nothing tried");
    while started.elapsed() < budget {
        let mut target = addrs[start_at];
        let mut target_path = path.to_owned();
        for _hop in 0..=MAX_HOPS {
            match send_raw_request(target, method, &target_path, body) {
                Err(e) => {
                    last = format!("{method} http://{target}{target_path}: {e}");
                    break;
                }
                Ok(r) if r.status == 307 => {
                    let location = r.header("location").unwrap_or_default();
                    let Some((addr, next_path)) = parse_location(location) else {
                        return Err(format!("307 with a bad Location: {r:?}"));
                    };
                    last = format!("{method} http://{target}{target_path}: 307 to {location}");
                    target = addr;
                    target_path = next_path;
                }
                Ok(r) if r.status == 503 => {
                    last = format!(
                        "{method} http://{target}{target_path}: 503 {:?}",
                        String::from_utf8_lossy(&r.body)
                    );
                    break;
                }
                Ok(r) => return Ok(r),
            }
        }
        start_at = (start_at + 1) % addrs.len();
        std::thread::sleep(POLL);
    }
    Err(format!("no answer within {budget:?}; last: {last}"))
}

/// `PUT /kv/{key}` with `value`, following redirects and retrying 503s.
pub fn put_following_redirects(
    addrs: &[SocketAddr],
    first: usize,
    key: &str,
    value: &str,
    budget: Duration,
) -> Result<Response, String> {
    send_following_redirects(
        addrs,
        first,
        "PUT",
        &format!("/kv/{key}"),
        Some(value.as_bytes()),
        budget,
    )
}

/// `GET /kv/{key}`, following redirects and retrying 503s.
pub fn get_following_redirects(
    addrs: &[SocketAddr],
    first: usize,
    key: &str,
    budget: Duration,
) -> Result<Response, String> {
    send_following_redirects(addrs, first, "GET", &format!("/kv/{key}"), None, budget)
}

/// Every file under `dir` (recursively) with its contents, to show that
/// something left a directory exactly as it was.
pub fn dir_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut contents = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                contents.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    contents
}

/// Polls `condition` every 20 ms for up to `within`; says whether it held.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets its flag when dropped, so a client thread told to run until the
/// flag is set stops even when the test panics (a scope waits for it).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
