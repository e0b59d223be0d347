//! Counters the member keeps for `/metrics` that its gauges cannot derive. The metrics edge
//! reads them; the member and its background tasks only add.

use std::sync::atomic::{AtomicU64, Ordering};

/// The `/livez` and `/readyz` checks, as etcd labels them (type, name).
pub const HEALTH_CHECKS: [(&str, &str); 5] = [
    ("livez", "serializable_read"),
    ("readyz", "data_corruption"),
    ("readyz", "serializable_read"),
    ("readyz", "linearizable_read"),
    ("readyz", "non_learner"),
];

/// One check's outcomes so far.
#[derive(Default)]
pub struct CheckCounts {
    pub success: AtomicU64,
    pub error: AtomicU64,
    /// 1 when the last run passed (etcd's `etcd_server_healthcheck` gauge).
    pub last_ok: AtomicU64,
}

/// Server-wide counters.
#[derive(Default)]
pub struct ServerCounters {
    pub leader_changes: AtomicU64,
    pub proposals_failed: AtomicU64,
    /// `/health` answers, as etcd's `etcd_server_health_success` / `_failures`.
    pub health_success: AtomicU64,
    pub health_failures: AtomicU64,
    /// Per entry of [`HEALTH_CHECKS`].
    pub checks: [CheckCounts; 5],
}

impl ServerCounters {
    /// Records one run of a `/livez` or `/readyz` check.
    pub fn check_ran(&self, kind: &str, name: &str, ok: bool) {
        if let Some(i) = HEALTH_CHECKS.iter().position(|c| *c == (kind, name)) {
            let c = &self.checks[i];
            let counter = if ok { &c.success } else { &c.error };
            counter.fetch_add(1, Ordering::Relaxed);
            c.last_ok.store(u64::from(ok), Ordering::Relaxed);
        }
    }
}

/// What `/metrics` reports about scheduled backups.
#[derive(Default)]
pub struct BackupStats {
    /// Unix seconds of the last verified backup (0: none yet).
    pub last_success: AtomicU64,
    pub failures: AtomicU64,
    /// The last verified backup's duration (milliseconds), size and revision.
    pub last_duration_ms: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_revision: AtomicU64,
    /// The continuous archive: the last raft index it holds, when it last stored a segment
    /// (Unix seconds), segments that failed, and gaps (entries compacted before archived).
    pub archive_index: AtomicU64,
    pub archive_last_success: AtomicU64,
    pub archive_failures: AtomicU64,
    pub archive_gaps: AtomicU64,
}
