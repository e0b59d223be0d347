//! `/metrics`: Prometheus text with etcd's metric names and types, so dashboards and alerts
//! built for etcd read Ballast unchanged. Counters live where the work happens (atomics);
//! gauges are read from the server when scraped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use axum::extract::State;
use axum::response::IntoResponse;
use ballast_net::go::CODES;
use ballast_storage::stats::{
    Histogram, HistogramSnapshot, BACKEND_COMMIT, WAL_FSYNC, WAL_WRITE, WAL_WRITE_BYTES,
};

use crate::stats::{get, Counter};

use crate::limits::MAX_CLIENT_VERSIONS;
use crate::server::EtcdServer;
use crate::version::{BALLAST_VERSION, ETCD_API_VERSION};

/// Every gRPC method Ballast registers: (service, method, grpc_type), as go-grpc-prometheus
/// labels them.
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "RangeStream", "server_stream"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
];

/// Per-method gRPC counters, lock-free: the path is looked up in a table built once.
struct GrpcCounters {
    by_path: HashMap<String, usize>,
    started: Vec<AtomicU64>,
    /// `handled[method * 17 + code]`.
    handled: Vec<AtomicU64>,
}

static GRPC: LazyLock<GrpcCounters> = LazyLock::new(|| GrpcCounters {
    by_path: METHODS
        .iter()
        .enumerate()
        .map(|(i, (s, m, _))| (format!("/{s}/{m}"), i))
        .collect(),
    started: METHODS.iter().map(|_| AtomicU64::new(0)).collect(),
    handled: (0..METHODS.len() * CODES.len())
        .map(|_| AtomicU64::new(0))
        .collect(),
});

/// Counts a gRPC call as started; the index is for [`grpc_handled`]. `None` for paths
/// that are not etcd methods.
pub fn grpc_started(path: &str) -> Option<usize> {
    let &i = GRPC.by_path.get(path)?;
    GRPC.started[i].fetch_add(1, Ordering::Relaxed);
    Some(i)
}

/// Counts a call as handled with the code its response (or trailers-only error) starts with.
/// A stream counts as handled when its response starts.
pub fn grpc_handled(i: usize, headers: &axum::http::HeaderMap) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|c| *c < CODES.len())
        .unwrap_or(0);
    if let Some(c) = GRPC.handled.get(i * CODES.len() + code) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// `etcd_server_client_requests_total`: calls by client API version, unary (0) or stream (1).
/// Versions are few: a call takes the read lock and one atomic add; only a new version writes.
static CLIENT_REQUESTS: LazyLock<RwLock<[BTreeMap<String, AtomicU64>; 2]>> =
    LazyLock::new(|| RwLock::new([BTreeMap::new(), BTreeMap::new()]));

/// Counts a call by the `client-api-version` its client sent ("unknown" without one), as
/// etcd's interceptors do.
pub fn client_request(i: usize, headers: &axum::http::HeaderMap) {
    let kind = match METHODS.get(i) {
        Some((_, _, "unary")) => 0,
        _ => 1,
    };
    let version = headers
        .get("client-api-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    {
        let m = CLIENT_REQUESTS.read().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m[kind].get(version) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut m = CLIENT_REQUESTS.write().unwrap_or_else(|p| p.into_inner());
    let by = &mut m[kind];
    let version = if by.len() < MAX_CLIENT_VERSIONS {
        version
    } else {
        "unknown"
    };
    by.entry(version.to_string())
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    /// A family with one unlabelled histogram.
    fn hist(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        self.histogram(name, "", &h.snapshot());
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in &h.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            self.0,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            h.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.0, "{name}_sum{braces} {}", h.sum);
        let _ = writeln!(self.0, "{name}_count{braces} {}", h.count);
    }
}

/// The whole exposition, in Prometheus text format 0.0.4.
pub fn render(s: &EtcdServer) -> String {
    let mut o = Out(String::with_capacity(64 << 10));
    let raft = s.raft_status();
    let mvcc = s.mvcc();
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    o.one(
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        b(raft.leader != 0),
    );
    o.one(
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        b(raft.is_leader),
    );
    o.one(
        "etcd_server_is_learner",
        "gauge",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        b(s.is_learner()),
    );
    let c = s.counters();
    o.one(
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        c.leader_changes.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        s.raft_commit() as f64,
    );
    o.one(
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        s.applied_index() as f64,
    );
    o.one(
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        s.pending_proposals() as f64,
    );
    o.one(
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        c.proposals_failed.load(Ordering::Relaxed) as f64,
    );
    health_metrics(&mut o, c);
    o.head(
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    let _ = writeln!(o.0, "etcd_server_id{{server_id=\"{:x}\"}} 1", s.member_id());
    o.head(
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    let _ = writeln!(
        o.0,
        "etcd_server_version{{server_version=\"{ETCD_API_VERSION}\"}} 1"
    );
    o.head(
        "etcd_cluster_version",
        "gauge",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
    );
    let _ = writeln!(
        o.0,
        "etcd_cluster_version{{cluster_version=\"{}\"}} 1",
        &ETCD_API_VERSION[..3]
    );
    o.head(
        "ballast_version",
        "gauge",
        "Ballast's own version. 1 for 'version' label with the running version.",
    );
    let _ = writeln!(o.0, "ballast_version{{version=\"{BALLAST_VERSION}\"}} 1");
    o.one(
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        s.cfg.quota_backend_bytes as f64,
    );
    o.one(
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        mvcc.db_size() as f64,
    );
    o.one(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        mvcc.db_size_in_use() as f64,
    );
    o.one(
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        mvcc.key_count() as f64,
    );
    o.one(
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        mvcc.current_rev() as f64,
    );
    o.one(
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        mvcc.compact_rev().max(0) as f64,
    );
    o.head(
        "etcd_disk_wal_fsync_duration_seconds",
        "histogram",
        "The latency distributions of fsync called by WAL.",
    );
    o.histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "",
        &WAL_FSYNC.snapshot(),
    );
    o.head(
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        "The latency distributions of commit called by backend.",
    );
    o.histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "",
        &BACKEND_COMMIT.snapshot(),
    );
    let peers = s.transport().peer_stats();
    o.head(
        "etcd_network_peer_sent_bytes_total",
        "counter",
        "The total number of bytes sent to peers.",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o.0,
            "etcd_network_peer_sent_bytes_total{{To=\"{id:x}\"}} {}",
            p.sent_bytes.load(Ordering::Relaxed)
        );
    }
    o.head(
        "etcd_network_peer_round_trip_time_seconds",
        "histogram",
        "Round-Trip-Time histogram between peers",
    );
    for (id, p) in &peers {
        o.histogram(
            "etcd_network_peer_round_trip_time_seconds",
            &format!("To=\"{id:x}\""),
            &p.round_trip.snapshot(),
        );
    }
    o.head(
        "grpc_server_started_total",
        "counter",
        "Total number of RPCs started on the server.",
    );
    for (i, (svc, m, t)) in METHODS.iter().enumerate() {
        let n = GRPC.started[i].load(Ordering::Relaxed);
        let _ = writeln!(o.0, "grpc_server_started_total{{grpc_method=\"{m}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {n}");
    }
    o.head(
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    );
    for (i, (svc, m, t)) in METHODS.iter().enumerate() {
        for (code, name) in CODES.iter().enumerate() {
            let n = GRPC.handled[i * CODES.len() + code].load(Ordering::Relaxed);
            let _ = writeln!(o.0, "grpc_server_handled_total{{grpc_code=\"{name}\",grpc_method=\"{m}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {n}");
        }
    }
    mvcc_metrics(&mut o, s);
    server_metrics(&mut o, s);
    network_metrics(&mut o, s);
    disk_metrics(&mut o);
    let b = s.backup_stats();
    o.one(
        "ballast_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last verified scheduled backup (0: none yet).",
        b.last_success.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_failures_total",
        "counter",
        "Scheduled backups that failed.",
        b.failures.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_last_duration_seconds",
        "gauge",
        "How long the last verified scheduled backup took, snapshot to retention.",
        b.last_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0,
    );
    o.one(
        "ballast_backup_last_size_bytes",
        "gauge",
        "Bytes of the last verified scheduled backup.",
        b.last_bytes.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_last_revision",
        "gauge",
        "The revision the last verified scheduled backup holds.",
        b.last_revision.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_archive_index",
        "gauge",
        "The last raft index the backups hold, snapshot and archive together (0: none yet).",
        b.archive_index.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_archive_last_success_timestamp_seconds",
        "gauge",
        "Unix time the backup archive last stored a segment (0: none yet).",
        b.archive_last_success.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_archive_failures_total",
        "counter",
        "Archive segments that failed to store (retried).",
        b.archive_failures.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "ballast_backup_archive_gaps_total",
        "counter",
        "Times entries left the raft log before the archive held them (a new snapshot rebases it).",
        b.archive_gaps.load(Ordering::Relaxed) as f64,
    );
    process(&mut o);
    o.0
}

/// The store's counters, watch gauges, leases and compaction, under etcd 3.7's names and
/// 3.4's `etcd_debugging_` ones where they moved.
fn mvcc_metrics(o: &mut Out, s: &EtcdServer) {
    let mvcc = s.mvcc();
    for (what, c) in [
        ("puts", Counter::Put),
        ("ranges", Counter::Range),
        ("deletes", Counter::Delete),
        ("txns", Counter::Txn),
    ] {
        let short = &what[..what.len() - 1];
        for prefix in ["etcd_mvcc", "etcd_debugging_mvcc"] {
            o.one(
                &format!("{prefix}_{short}_total"),
                "counter",
                &format!("Total number of {what} seen by this member."),
                get(c) as f64,
            );
        }
    }
    o.one(
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "gauge",
        "The total size of put kv pairs seen by this member.",
        get(Counter::PutBytes) as f64,
    );
    o.one(
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        mvcc.db_size() as f64,
    );
    o.one(
        "etcd_debugging_auth_revision",
        "gauge",
        "The current revision of auth store.",
        mvcc.with_auth(|a| a.revision()) as f64,
    );
    let (watchers, slow) = s.watch_hub().counts();
    o.one(
        "etcd_debugging_mvcc_watcher_total",
        "gauge",
        "Total number of watchers.",
        watchers as f64,
    );
    o.one(
        "etcd_debugging_mvcc_slow_watcher_total",
        "gauge",
        "Total number of unsynced slow watchers.",
        slow as f64,
    );
    o.one(
        "etcd_debugging_mvcc_watch_stream_total",
        "gauge",
        "Total number of watch streams.",
        crate::stats::WATCH_STREAMS.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "etcd_debugging_mvcc_events_total",
        "counter",
        "Total number of events sent by this member.",
        get(Counter::EventsSent) as f64,
    );
    for (name, help, c) in [
        (
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            Counter::LeaseGranted,
        ),
        (
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            Counter::LeaseRenewed,
        ),
        (
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            Counter::LeaseRevoked,
        ),
        (
            "etcd_debugging_server_lease_expired_total",
            "The total number of expired leases.",
            Counter::LeaseExpired,
        ),
        (
            "etcd_debugging_mvcc_db_compaction_keys_total",
            "Total number of db keys compacted.",
            Counter::CompactionKeys,
        ),
    ] {
        o.one(name, "counter", help, get(c) as f64);
    }
    o.hist(
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
        crate::stats::LEASE_TTL.get(),
    );
    o.one(
        "etcd_debugging_mvcc_db_compaction_last",
        "gauge",
        "The unix time of the last db compaction. Resets to 0 on start.",
        crate::stats::COMPACTION_LAST.load(Ordering::Relaxed) as f64,
    );
    o.hist(
        "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
        "Bucketed histogram of db compaction pause duration.",
        crate::stats::COMPACTION_PAUSE_MS.get(),
    );
    o.hist(
        "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
        "Bucketed histogram of db compaction total duration.",
        crate::stats::COMPACTION_TOTAL_MS.get(),
    );
    o.hist(
        "etcd_mvcc_hash_duration_seconds",
        "The latency distribution of storage hash operation.",
        crate::stats::HASH.get(),
    );
    o.hist(
        "etcd_mvcc_hash_rev_duration_seconds",
        "The latency distribution of storage hash by revision operation.",
        crate::stats::HASH_REV.get(),
    );
}

/// Labelled latency histograms: one series per (label value, success), then `extra` labels
/// (etcd orders labels by name).
fn labelled(
    o: &mut Out,
    (name, help): (&str, &str),
    label: &str,
    extra: &str,
    h: &crate::stats::Labelled,
) {
    o.head(name, "histogram", help);
    for ((kind, ok), h) in h.each() {
        let labels = if label.is_empty() {
            format!("success=\"{ok}\"{extra}")
        } else {
            format!("{label}=\"{kind}\",success=\"{ok}\"{extra}")
        };
        o.histogram(name, &labels, &h.snapshot());
    }
}

fn server_metrics(o: &mut Out, s: &EtcdServer) {
    for (name, help, c) in [
        (
            "etcd_server_read_indexes_failed_total",
            "The total number of failed read indexes seen.",
            Counter::ReadIndexFailed,
        ),
        (
            "etcd_server_slow_read_indexes_total",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            Counter::SlowReadIndex,
        ),
        (
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            Counter::SlowApply,
        ),
        (
            "etcd_server_learner_promote_successes",
            "The total number of successful learner promotions while this member is leader.",
            Counter::LearnerPromoted,
        ),
    ] {
        o.one(name, "counter", help, get(c) as f64);
    }
    let heartbeat_failures: u64 = s
        .transport()
        .peer_stats()
        .iter()
        .map(|(_, p)| p.heartbeat_failures.load(Ordering::Relaxed))
        .sum();
    o.one(
        "etcd_server_heartbeat_send_failures_total",
        "counter",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        heartbeat_failures as f64,
    );
    o.one(
        "etcd_server_snapshot_apply_in_progress_total",
        "gauge",
        "1 if the server is applying the incoming snapshot. 0 if none.",
        crate::stats::SNAPSHOT_APPLYING.load(Ordering::Relaxed) as f64,
    );
    o.head(
        "etcd_server_feature_enabled",
        "gauge",
        "Whether or not a feature is enabled. 1 is enabled, 0 is not.",
    );
    for &(name, stage, _, fixed) in crate::config::FEATURE_GATES {
        let on = match name {
            "InitialCorruptCheck" => s.cfg.initial_corrupt_check,
            _ => fixed,
        };
        let _ = writeln!(
            o.0,
            "etcd_server_feature_enabled{{name=\"{name}\",stage=\"{stage}\"}} {}",
            u8::from(on)
        );
    }
    o.head(
        "etcd_server_client_requests_total",
        "counter",
        "The total number of client requests per client version.",
    );
    {
        let m = CLIENT_REQUESTS.read().unwrap_or_else(|p| p.into_inner());
        for (kind, by) in ["unary", "stream"].iter().zip(m.iter()) {
            for (v, n) in by {
                let n = n.load(Ordering::Relaxed);
                let v = v.escape_debug();
                let _ = writeln!(
                    o.0,
                    "etcd_server_client_requests_total{{client_api_version=\"{v}\",type=\"{kind}\"}} {n}"
                );
            }
        }
    }
    labelled(
        o,
        (
            "etcd_server_apply_duration_seconds",
            "The latency distributions of v2 apply called by backend.",
        ),
        "op",
        ",version=\"v3\"",
        &crate::stats::APPLY,
    );
    labelled(
        o,
        (
            "etcd_server_request_duration_seconds",
            "Response latency distribution in seconds for each type.",
        ),
        "type",
        "",
        &crate::stats::REQUEST,
    );
    labelled(
        o,
        (
            "etcd_server_range_duration_seconds",
            "The latency distributions of txn.Range",
        ),
        "",
        "",
        &crate::stats::RANGE,
    );
}

fn network_metrics(o: &mut Out, s: &EtcdServer) {
    let me = format!("{:x}", s.member_id());
    let members = s.mvcc().members();
    o.head(
        "etcd_network_known_peers",
        "gauge",
        "The current number of known peers.",
    );
    for m in &members {
        let _ = writeln!(
            o.0,
            "etcd_network_known_peers{{Local=\"{me}\",Remote=\"{:x}\"}} 1",
            m.id
        );
    }
    let peers = s.transport().peer_stats();
    o.head(
        "etcd_network_active_peers",
        "gauge",
        "The current number of active peer connections.",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o.0,
            "etcd_network_active_peers{{Local=\"{me}\",Remote=\"{id:x}\"}} {}",
            p.active.load(Ordering::Relaxed)
        );
    }
    o.head(
        "etcd_network_peer_received_bytes_total",
        "counter",
        "The total number of bytes received from peers.",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o.0,
            "etcd_network_peer_received_bytes_total{{From=\"{id:x}\"}} {}",
            p.received_bytes.load(Ordering::Relaxed)
        );
    }
    o.one(
        "etcd_network_client_grpc_sent_bytes_total",
        "counter",
        "The total number of bytes sent to grpc clients.",
        ballast_api::codec::SENT_BYTES.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "etcd_network_client_grpc_received_bytes_total",
        "counter",
        "The total number of bytes received from grpc clients.",
        ballast_api::codec::RECEIVED_BYTES.load(Ordering::Relaxed) as f64,
    );
}

fn disk_metrics(o: &mut Out) {
    o.hist(
        "etcd_disk_wal_write_duration_seconds",
        "The latency distributions of write called by WAL.",
        &WAL_WRITE,
    );
    o.one(
        "etcd_disk_wal_write_bytes_total",
        "gauge",
        "Total number of bytes written in WAL.",
        WAL_WRITE_BYTES.load(Ordering::Relaxed) as f64,
    );
    o.hist(
        "etcd_disk_backend_defrag_duration_seconds",
        "The latency distribution of backend defragmentation.",
        crate::stats::DEFRAG.get(),
    );
    o.one(
        "etcd_disk_defrag_inflight",
        "gauge",
        "Whether or not defrag is active on the member. 1 means active, 0 means not.",
        crate::stats::DEFRAG_INFLIGHT.load(Ordering::Relaxed) as f64,
    );
    o.hist(
        "etcd_disk_backend_snapshot_duration_seconds",
        "The latency distribution of backend snapshots.",
        crate::stats::BACKEND_SNAPSHOT.get(),
    );
    o.hist(
        "etcd_snap_db_fsync_duration_seconds",
        "The latency distributions of fsyncing .snap.db file",
        crate::stats::SNAP_DB_FSYNC.get(),
    );
    o.hist(
        "etcd_snap_db_save_total_duration_seconds",
        "The total latency distributions of v3 snapshot save",
        crate::stats::SNAP_DB_SAVE.get(),
    );
}

/// etcd's health metrics: `/health` answers, then each `/livez`/`/readyz` check, listed once
/// it has run (as etcd's labelled families appear once observed).
fn health_metrics(o: &mut Out, c: &crate::member::counters::ServerCounters) {
    use crate::member::counters::HEALTH_CHECKS;
    o.one(
        "etcd_server_health_success",
        "counter",
        "The total number of successful health checks",
        c.health_success.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "etcd_server_health_failures",
        "counter",
        "The total number of failed health checks",
        c.health_failures.load(Ordering::Relaxed) as f64,
    );
    let ran: Vec<_> = HEALTH_CHECKS
        .iter()
        .zip(&c.checks)
        .map(|(l, n)| {
            let (ok, err) = (
                n.success.load(Ordering::Relaxed),
                n.error.load(Ordering::Relaxed),
            );
            (l, ok, err, n.last_ok.load(Ordering::Relaxed))
        })
        .filter(|(_, ok, err, _)| ok + err > 0)
        .collect();
    if ran.is_empty() {
        return;
    }
    o.head(
        "etcd_server_healthcheck",
        "gauge",
        "The result of each kind of healthcheck.",
    );
    for ((kind, name), _, _, last) in &ran {
        let _ = writeln!(
            o.0,
            "etcd_server_healthcheck{{name=\"{name}\",type=\"{kind}\"}} {last}"
        );
    }
    o.head(
        "etcd_server_healthchecks_total",
        "counter",
        "The total number of each kind of healthcheck.",
    );
    for ((kind, name), ok, err, _) in &ran {
        for (status, n) in [("error", err), ("success", ok)] {
            if *n > 0 {
                let _ = writeln!(
                    o.0,
                    "etcd_server_healthchecks_total{{name=\"{name}\",status=\"{status}\",type=\"{kind}\"}} {n}"
                );
            }
        }
    }
}

/// The standard `process_*` metrics, from /proc as the Prometheus client libraries read them.
fn process(o: &mut Out) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may itself contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    o.one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        (field(14) + field(15)) / ticks,
    );
    o.one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    o.one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(24) * page,
    );
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    o.one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot + field(22) / ticks,
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    o.one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds as f64,
    );
    // A limit's soft value ("unlimited" does not parse).
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).map(|l| {
            l[name.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    let max_fds = limit("Max open files").flatten().unwrap_or(0.0);
    o.one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds,
    );
    // etcd's own copies of the two.
    o.one(
        "os_fd_used",
        "gauge",
        "The number of used file descriptors.",
        fds as f64,
    );
    o.one(
        "os_fd_limit",
        "gauge",
        "The file descriptor limit.",
        max_fds,
    );
    let max_vm = limit("Max address space")
        .flatten()
        .unwrap_or(u64::MAX as f64);
    o.one(
        "process_virtual_memory_max_bytes",
        "gauge",
        "Maximum amount of virtual memory available in bytes.",
        max_vm,
    );
    // The network namespace's interface totals, as the Go client's procfs reads them.
    let (mut rx, mut tx) = (0.0, 0.0);
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    for line in dev.lines().skip(2) {
        let Some((_, nums)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<f64> = nums
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        rx += v.first().copied().unwrap_or(0.0);
        tx += v.get(8).copied().unwrap_or(0.0);
    }
    o.one(
        "process_network_receive_bytes_total",
        "counter",
        "Number of bytes received by the process over the network.",
        rx,
    );
    o.one(
        "process_network_transmit_bytes_total",
        "counter",
        "Number of bytes sent by the process over the network.",
        tx,
    );
    use crate::stats::{SCRAPES, SCRAPES_IN_FLIGHT};
    o.one(
        "promhttp_metric_handler_requests_in_flight",
        "gauge",
        "Current number of scrapes being served.",
        SCRAPES_IN_FLIGHT.load(Ordering::Relaxed) as f64,
    );
    o.head(
        "promhttp_metric_handler_requests_total",
        "counter",
        "Total number of scrapes by HTTP status code.",
    );
    // Rendering cannot fail, so every scrape so far was a 200.
    let _ = writeln!(
        o.0,
        "promhttp_metric_handler_requests_total{{code=\"200\"}} {}",
        SCRAPES.load(Ordering::Relaxed)
    );
    for code in ["500", "503"] {
        let _ = writeln!(
            o.0,
            "promhttp_metric_handler_requests_total{{code=\"{code}\"}} 0"
        );
    }
}

pub async fn metrics(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    use crate::stats::{SCRAPES, SCRAPES_IN_FLIGHT};
    SCRAPES_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    let body = render(&s);
    SCRAPES_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    SCRAPES.fetch_add(1, Ordering::Relaxed);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
