//! What a member does on its own, on timers: lease expiry, auto-compaction, corruption checks
//! scheduled backups and their archive. Each task takes the narrow handles it needs (a `Proposer`, the
//! `Store`, raft's status), never the assembled server, and acts only while this member leads
//! (the start-up corruption check excepted).

pub mod archive;
pub mod backup;
pub mod compactor;
pub mod corrupt;
pub mod lease;
