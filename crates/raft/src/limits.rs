//! Every bound the consensus layer keeps, in one place. Frame sizes are flags
//! (`--max-request-bytes`), passed in as `NodeConfig::max_msg_bytes`.

/// Commands queued for the driver; bounded so a flood of clients gets `etcdserver: too many
/// requests`, not OOM.
pub const CMD_QUEUE: usize = 8192;
/// Messages from peers waiting for the driver; kept apart from client commands so a client
/// flood cannot starve heartbeats.
pub const INBOUND_QUEUE: usize = 4096;
/// Committed batches queued for the applier; when full, the driver waits (back-pressure).
pub const APPLY_QUEUE: usize = 256;
/// Messages waiting for one peer; beyond this they are dropped (raft tolerates loss).
pub const PEER_QUEUE: usize = 4096;
/// Largest data frame of a snapshot stream, and so what either end buffers of it.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Bytes of applied entries the in-memory raft log keeps whole, newest first; older applied
/// entries keep only index and term and are read back from the WAL when a lagging follower
/// needs them. Followers a little behind are served from memory; the catch-up window
/// (`--experimental-snapshot-catchup-entries`) no longer costs its entries' size in memory.
pub const HELD_APPLIED_BYTES: u64 = 1 << 20;
/// Entries the leader keeps past the catch-up window for a peer it is still catching up (a
/// snapshot in flight, an active follower behind): the log is trimmed to the applied index
/// only as far as that peer's next entry, by at most this many more. Without it a snapshot
/// that took longer to send than the window took to fill under writes was followed by
/// another (a 3 GB one sent twice, at 500 puts/s). The held entries are in the WAL, not in
/// memory ([`HELD_APPLIED_BYTES`]).
pub const CATCH_UP_HOLD: u64 = 100_000;
/// How long after a snapshot was delivered the leader keeps the entries after it for a peer
/// that has not answered since: installing a 3 GB store (its key index built) kept a learner
/// silent for 6 s, past the election timeout that marks a peer inactive.
pub const SNAPSHOT_INSTALL_GRACE: std::time::Duration = std::time::Duration::from_secs(120);
