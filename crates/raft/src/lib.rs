//! Ballast's consensus layer: one driver thread owns a raft-rs `RawNode` and its WAL.
//!
//! Architecture invariant: entries are opaque bytes. This crate never decodes a client
//! request; it orders them, makes them durable and hands committed ones to the applier.

mod driver;
pub mod limits;
mod log;
mod logger;
mod store;
mod transport;

pub use driver::{
    Apply, Committed, ConfKind, ImportedEntry, ImportedLog, LogTerm, Node, NodeConfig, RaftError,
    RaftStatus,
};
pub use transport::{
    fetch_membership, is_built_snapshot, is_received_snapshot_file, PeerTls, SnapshotBuilder,
    Transport,
};
