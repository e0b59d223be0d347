//! Counters the member keeps for `/metrics` that its gauges cannot derive. The metrics edge
//! reads them; the member and its background tasks only add.

use std::sync::atomic::AtomicU64;

/// Server-wide counters.
#[derive(Default)]
pub struct ServerCounters {
    pub leader_changes: AtomicU64,
    pub proposals_failed: AtomicU64,
}

/// What `/metrics` reports about scheduled backups.
#[derive(Default)]
pub struct BackupStats {
    /// Unix seconds of the last verified backup (0: none yet).
    pub last_success: AtomicU64,
    pub failures: AtomicU64,
}
