//! Every bound the storage layer keeps, in one place.

use std::time::Duration;

/// Largest WAL record accepted on write or read; anything bigger in a file is damage.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// redb's page cache (read cache and write buffer together). A full scan (a snapshot, a
/// defragmentation) fills it once, so this is what streaming a store of any size adds to the
/// member's memory: at 64 MiB a 1 GiB snapshot added 62-69 MiB, at 32 MiB 29-37 MiB, with
/// `compare --quick` and the snapshot's time unchanged (docs/benchmarks/log.md).
pub const STORE_CACHE_BYTES: usize = 32 << 20;
/// redb's page cache while a store is built from a snapshot stream (a learner's catch-up, a
/// restore), then freed. With the live store's 32 MiB, whose write buffer is half of it, a
/// 16 MiB import batch evicted pages it then wrote again: 3.2 GB written for a 1.5 GB store,
/// and the stream took 15.9 s instead of 11.7 s (300,000 values of 4 kB).
pub const IMPORT_CACHE_BYTES: usize = 128 << 20;
/// A WAL segment is closed and a new one started once it grows past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Longest a write transaction is held open across non-durable updates (etcd's
/// `--backend-batch-interval` default).
pub const HOLD_FOR: Duration = Duration::from_millis(100);
/// Most row writes a held transaction takes before it commits (etcd's `--backend-batch-limit`).
pub const HOLD_WRITES: usize = 10_000;
/// Most row bytes it holds (large values would otherwise be kept twice, in redb's dirty pages
/// and for readers, until the interval ends).
pub const HOLD_BYTES: usize = 8 << 20;
/// Staged writes an update waits behind (the store writer is that far behind the updates):
/// what staging may hold in memory, besides the generation being committed.
pub const STAGED_MAX_WRITES: usize = 4 * HOLD_WRITES;
pub const STAGED_MAX_BYTES: usize = 4 * HOLD_BYTES;
/// Longest the store goes without a durable commit while it has writes that are not durable:
/// the WAL covers them after a crash, this bounds how much of it a restart replays.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Records per snapshot import transaction are capped by size, so memory stays bounded.
pub const IMPORT_BATCH_BYTES: usize = 16 << 20;
/// Bytes a snapshot being received or imported may leave to the OS before they are synced: a
/// burst of hundreds of MiB written back at once stalls the fsyncs of anything else on the
/// disk (a leader's WAL beside its new member's data).
pub const SNAPSHOT_SYNC_BYTES: usize = 16 << 20;
/// No key or value in a snapshot can be larger than a WAL record.
pub const MAX_SNAPSHOT_FIELD: usize = MAX_RECORD_BYTES;
