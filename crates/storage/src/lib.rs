//! Ballast's durable storage layer.
//!
//! * [`wal`]: append-only, checksummed, segmented log of opaque records (the raft log lives here).
//! * [`backend`]: the redb database that holds MVCC revisions and apply metadata.
//! * [`limits`]: every bound this layer keeps.
//! * `staging`: writes staged by updates until the store writer commits them.
//! * `split`: long values stored in parts that fill redb's pages (the `kv` row layout).
//! * [`stats`]: latency histograms of WAL fsyncs and backend commits, for `/metrics`.
//! * [`failpoint`]: crash, I/O-error and safety-breaking switches for fault injection (only
//!   with the `failpoints` feature).
//!
//! Architecture invariant: this crate knows nothing of gRPC, Raft or etcd semantics; it stores
//! bytes under keys it is given (revisions, named counters, the caller's named tables) and says
//! exactly where the disk lied to it.

pub mod backend;
pub mod failpoint;
pub mod limits;
mod overlay;
pub mod private;
mod split;
mod staging;
pub mod stats;
pub mod wal;

pub use backend::{Backend, BackendError, Rev, SnapRecord, SnapshotReader};
pub use wal::{Reader, Record, RecordPos, Wal, WalError};
