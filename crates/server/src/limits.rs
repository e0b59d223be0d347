//! Every bound the server keeps on queues, maps, buffers and batches, in one place, so memory
//! never grows with the data set or with what clients ask for. Each module names the limit
//! it applies from here.

/// Proposals made on this member and not yet applied or failed (the waiter map). Beyond it a
/// write is refused with `etcdserver: too many requests`, as etcd refuses when its applier
/// falls too far behind.
pub const MAX_PENDING_PROPOSALS: usize = 65_536;

/// Committed entries one store transaction takes when the applier merges queued batches.
pub const MAX_MERGED_ENTRIES: usize = 4096;

/// Responses buffered per watch stream (etcd's is 128); a watcher that would overflow it
/// catches up from history instead.
pub const WATCH_STREAM_BUFFER: usize = 128;

/// Watchers on one watch stream. etcd has no limit; this one only stops a client from
/// growing the hub without bound, far above what real clients open on one stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;

/// Encoded responses a watcher whose stream is full keeps in memory, in order, for its
/// stream to take as it drains (etcd's victims); past it, it drops them and reads history.
pub const WATCH_PENDING_BYTES: usize = 1 << 20;
/// The same for all waiting watchers together (counted per watcher, though watchers of one
/// key or prefix share their responses' bytes): 10,000 watchers a client could not read fast
/// enough must not hold a megabyte each.
pub const WATCH_PENDING_TOTAL_BYTES: usize = 64 << 20;

/// Events read from history per catch-up step of a watcher.
pub const CATCH_UP_EVENTS: usize = 1000;

/// Lease checkpoints per raft entry.
pub const LEASE_CHECKPOINT_BATCH: usize = 1000;

/// Blob size of a snapshot chunk. etcd sends 32 KiB; 256 KiB costs the streaming thread an
/// eighth of the hand-offs (1 GiB was 32k wake-ups) and stays far below the 4 MiB that gRPC
/// clients accept by default. With the 4-chunk queue, 1 MiB in flight at most.
pub const SNAPSHOT_CHUNK: usize = 256 << 10;

/// gRPC's framing overhead allowed on top of `--max-request-bytes`, as etcd allows.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Times a write is proposed when auth changes keep landing between resolving its user and
/// applying it (etcd retries until the request times out).
pub const AUTH_RETRY_LIMIT: usize = 16;

/// Distinct `client-api-version` values `etcd_server_client_requests_total` keeps a series
/// for; later ones count as "unknown" (the header is the client's to choose).
pub const MAX_CLIENT_VERSIONS: usize = 32;

/// User names the password-guessing guard remembers; beyond this the stalest are forgotten.
pub const AUTH_TRACKED_USERS: usize = 10_000;

/// Bytes a client connection holds before a write goes straight through without waiting for
/// a flush.
pub const CONNECTION_HELD_BYTES: usize = 64 * 1024;

/// HTTP/2 header blocks the `:authority` shim decodes; larger ones pass on untouched, for
/// HTTP/2 to judge.
pub const AUTHORITY_MAX_HEADER_BLOCK: usize = 1 << 20;

/// Encoded key-values a unary `Range` builds in memory; a larger answer in key order is
/// written as it is read (`rpc::large_range`), so twenty such reads hold megabytes, not their
/// answers.
pub const RANGE_INLINE_BYTES: usize = 1 << 20;

/// Key-values one page of a large range's sizing pass reads under the store's index lock.
pub const LARGE_RANGE_PAGE: usize = 256 << 10;

/// Bytes of a large range's message, or of a range stream's chunk, read and handed to HTTP/2
/// each time it asks for more (one piece per stream at a time, besides what HTTP/2 buffers).
pub const LARGE_RANGE_CHUNK: usize = 64 << 10;

/// Keys in a range stream's first chunk, as etcd 3.7 starts (`initialStreamChunkLimit`).
pub const RANGE_STREAM_FIRST_CHUNK: i64 = 10;

/// The in-memory raft log is trimmed back to the catch-up window
/// (`--experimental-snapshot-catchup-entries`) every window/this applied entries, so it holds
/// at most 1.1 windows of applied entries rather than two.
pub const TRIMS_PER_CATCH_UP_WINDOW: u64 = 10;
/// It is also trimmed once this many bytes of entries have been applied since the last trim,
/// so the raft log can drop large applied entries from memory (it keeps the newest
/// `ballast_raft::limits::HELD_APPLIED_BYTES` whole) before hundreds of them pile up.
pub const TRIM_AFTER_BYTES: u64 = 1 << 20;
