//! What a member does on its own, on timers: lease expiry, auto-compaction, corruption checks
//! scheduled backups and their archive. Each task takes the narrow handles it needs (a `Proposer`, the
//! `Store`, raft's status), never the assembled server, and acts only while this member leads
//! (the start-up corruption check excepted).

pub mod archive;
pub mod backup;
pub mod compactor;
pub mod corrupt;
pub mod lease;

/// Time since the Unix epoch by the wall clock (zero if the clock is before it): what backups
/// record and report.
pub(crate) fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
