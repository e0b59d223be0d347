//! The member's core, without gRPC services or HTTP: where it starts from (`bootstrap`, and
//! `convert` for an etcd member's data directory), its store handle (`store`), proposing
//! (`proposer`, `waiters`), applying (`applier`, with the key index of a received snapshot
//! from `received`), reading (`read`), and the counters it keeps
//! (`counters`). The edge (`rpc`, `gateway`, `http`,
//! `metrics`, `main`) and the background tasks use these through the assembled `EtcdServer`
//! or narrow handles.

pub mod applier;
pub mod bootstrap;
pub mod checkpoint;
pub mod convert;
pub mod counters;
mod error;
pub mod proposer;
pub mod read;
pub mod received;
pub mod store;
pub mod waiters;

pub use error::{ServerError, StartupError};
