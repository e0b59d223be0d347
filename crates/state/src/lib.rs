//! Ballast's state machine: etcd's MVCC key-value semantics.
//!
//! Architecture invariant: deterministic. Applying the same log to the same state gives the
//! same result on every member; nothing here reads a clock, a random source or the network.
//! Validation that etcd does before proposing lives in [`check`]; what it does while applying
//! lives in [`mvcc`].

pub mod auth;
pub mod bbolt;
pub mod bbolt_write;
pub mod check;
pub mod error;
pub mod etcd_db;
pub mod etcd_log;
pub mod etcd_wal;
pub mod indexfile;
mod key;
pub mod layout;
pub mod lease_clock;
pub mod members;
pub mod mvcc;
pub mod schema;
pub mod snapfile;
pub mod watch;

pub use auth::{AuthEffect, AuthInfo, AuthState};
pub use error::KvError;
pub use mvcc::{Applied, Mvcc, Pinned, Ranged};

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod model_tests;
