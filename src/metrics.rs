//! What `GET /metrics` exposes (SPEC §7), in the Prometheus text format
//! 0.0.4, through the Prometheus project's own client, `prometheus-client`.
//!
//! Owns the registry, the metric names and their help texts. Every layer
//! records into the one process-wide [`Metrics`] (a server is one process
//! and holds one store, as a Prometheus target is one process); values
//! that already live elsewhere (keys held, Raft's term and indexes) are
//! read when scraped, not kept twice. It must never cost a request more
//! than a few atomic operations and one uncontended-in-practice lock (the
//! latency histogram's): the counter and histogram a request resolves to
//! are looked up once and then cached in a fixed table, so the hot path
//! never hashes a label set or takes a family's lock.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The HTTP methods requests are counted by; anything else is `OTHER`.
const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "DELETE", "POST", "OTHER"];

/// The routes requests are counted by: paths, with the key left out so that
/// the number of series stays fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Health,
    Kv,
    Clear,
    Metrics,
    ClusterInfo,
    ClusterPartition,
    ClusterHeal,
    Raft,
    Unknown,
}

impl RouteLabel {
    const COUNT: usize = RouteLabel::Unknown as usize + 1;

    fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Health => "/health",
            RouteLabel::Kv => "/kv/{key}",
            RouteLabel::Clear => "/clear",
            RouteLabel::Metrics => "/metrics",
            RouteLabel::ClusterInfo => "/cluster/info",
            RouteLabel::ClusterPartition => "/cluster/partition",
            RouteLabel::ClusterHeal => "/cluster/heal",
            RouteLabel::Raft => "/raft/*",
            RouteLabel::Unknown => "other",
        }
    }
}

/// The statuses the API answers with get a slot each in the cache; any
/// other is still counted, through the family's lock.
const STATUSES: [u16; 14] = [
    200, 307, 400, 401, 404, 405, 408, 409, 411, 413, 414, 431, 500, 503,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    /// Requests by method, route and status.
    requests: Family<RequestLabels, Counter>,
    /// `requests`' counters, resolved once per (method, route, status).
    request_slots: Box<[OnceLock<Counter>]>,
    /// Time from a request's head to its response, by method and route.
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    latency_slots: Box<[OnceLock<Histogram>]>,
    /// Pairs in the store, set when scraped.
    keys: Gauge,
    /// Bytes in the write-ahead log (or a member's Raft log).
    log_bytes: Gauge,
    /// How long each fsync of the log took.
    pub fsync_seconds: Histogram,
    /// Writes made durable by one fsync (group commit); fsyncs that carried
    /// none are left out.
    pub batch_writes: Histogram,
    /// How long each completed checkpoint (or compaction) took.
    pub checkpoint_seconds: Histogram,
    checkpoints: Family<ResultLabels, Counter>,
    /// Failed writes, fsyncs and renames in the data directory.
    pub disk_errors: Counter,
    /// Raft's state, set when scraped; registered only in cluster mode.
    raft_term: Gauge,
    raft_role: Family<RoleLabels, Gauge>,
    /// New leaders seen by this member.
    pub raft_leader_changes: Counter,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    /// What single nodes and members both show.
    common: Registry,
    /// What only members show.
    cluster: Registry,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s: a GET from memory to a write that waited out
    // an election.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            request_slots: slots(METHODS.len() * RouteLabel::COUNT * STATUSES.len()),
            latency: Family::new_with_constructor(latency_histogram),
            latency_slots: slots(METHODS.len() * RouteLabel::COUNT),
            keys: Gauge::default(),
            log_bytes: Gauge::default(),
            // 50 µs to about 3 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            // 1 to 4096 writes.
            batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 1 ms to about 65 s.
            checkpoint_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            checkpoints: Family::default(),
            disk_errors: Counter::default(),
            raft_term: Gauge::default(),
            raft_role: Family::default(),
            raft_leader_changes: Counter::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            common: Registry::with_prefix("kvs"),
            cluster: Registry::with_prefix("kvs_raft"),
        };
        // Both results from the start, so a rate over them is defined
        // before the first checkpoint.
        for result in ["ok", "failed"] {
            let _ = metrics
                .checkpoints
                .get_or_create_owned(&ResultLabels { result });
        }
        metrics.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.common;
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            self.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's head to its response, by method and route",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register("keys", "Pairs held in the store", self.keys.clone());
        r.register_with_unit(
            "log_size",
            "Bytes in the write-ahead log (a member: its Raft log) since the last checkpoint",
            Unit::Bytes,
            self.log_bytes.clone(),
        );
        r.register_with_unit(
            "fsync_duration",
            "Time each fsync of the log took",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        r.register(
            "fsync_batch_writes",
            "Writes made durable together by one fsync (fsyncs that carried none left out)",
            self.batch_writes.clone(),
        );
        r.register_with_unit(
            "checkpoint_duration",
            "Time each completed checkpoint (a member: each compaction) took",
            Unit::Seconds,
            self.checkpoint_seconds.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints (a member: compactions), by result",
            self.checkpoints.clone(),
        );
        r.register(
            "disk_errors",
            "Failed writes, fsyncs and renames in the data directory",
            self.disk_errors.clone(),
        );
        let c = &mut self.cluster;
        c.register("term", "The current Raft term", self.raft_term.clone());
        c.register(
            "role",
            "1 for this member's current role (leader, candidate or follower)",
            self.raft_role.clone(),
        );
        c.register(
            "leader_changes",
            "Times this member learned of a new leader",
            self.raft_leader_changes.clone(),
        );
        c.register(
            "commit_index",
            "The highest log index known committed",
            self.raft_commit_index.clone(),
        );
        c.register(
            "applied_index",
            "The highest log index applied to the store",
            self.raft_applied_index.clone(),
        );
        self
    }

    /// Counts one answered request and the time it took.
    pub fn request(&self, method: &str, route: RouteLabel, status: u16, took: Duration) {
        let m = METHODS[..5]
            .iter()
            .position(|&known| known == method)
            .unwrap_or(5);
        let r = route as usize;
        let latency = self.latency_slots[m * RouteLabel::COUNT + r].get_or_init(|| {
            self.latency.get_or_create_owned(&LatencyLabels {
                method: METHODS[m],
                route: route.as_str(),
            })
        });
        latency.observe(took.as_secs_f64());
        let labels = || RequestLabels {
            method: METHODS[m],
            route: route.as_str(),
            status,
        };
        match STATUSES.iter().position(|&s| s == status) {
            Some(s) => {
                let slot = (m * RouteLabel::COUNT + r) * STATUSES.len() + s;
                self.request_slots[slot]
                    .get_or_init(|| self.requests.get_or_create_owned(&labels()))
                    .inc();
            }
            None => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
    }

    /// Counts a checkpoint (or compaction) that completed in `took`.
    pub fn checkpoint_done(&self, took: Duration) {
        self.checkpoint_seconds.observe(took.as_secs_f64());
        self.checkpoints
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
    }

    /// Counts a checkpoint (or compaction) that failed.
    pub fn checkpoint_failed(&self) {
        self.checkpoints
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }

    /// Sets the size of the log since the last checkpoint.
    pub fn set_log_bytes(&self, bytes: u64) {
        self.log_bytes.set(gauge(bytes));
    }

    /// Counts one fsync of the log that made `writes` writes durable. An
    /// fsync that carried no write (a checkpoint's, or a member's that
    /// only recorded a commit index) counts in the latency alone, so the
    /// batch histogram shows group commit's batches.
    pub fn fsynced(&self, took: Duration, writes: usize) {
        self.fsync_seconds.observe(took.as_secs_f64());
        if writes > 0 {
            self.batch_writes.observe(writes as f64);
        }
    }

    /// The exposition: what single nodes and members both show, and with
    /// `raft` (a member's state, read now) what only members show.
    pub fn encode(&self, keys: usize, raft: Option<RaftState>) -> String {
        self.keys.set(gauge(keys as u64));
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.common);
        if let Some(raft) = raft {
            self.raft_term.set(gauge(raft.term));
            self.raft_commit_index.set(gauge(raft.commit_index));
            self.raft_applied_index.set(gauge(raft.applied_index));
            for role in ["leader", "candidate", "follower"] {
                self.raft_role
                    .get_or_create(&RoleLabels { role })
                    .set(i64::from(role == raft.role));
            }
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.cluster);
        }
        text
    }
}

/// A count as a gauge's value (gauges are signed).
fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A member's Raft state at a scrape.
pub struct RaftState {
    pub term: u64,
    pub role: &'static str,
    pub commit_index: u64,
    pub applied_index: u64,
}
