//! The member's handle on its state machine. A snapshot from the leader replaces the store
//! whole; every reader asks for the current one each time instead of keeping an old one.
//!
//! Invariant: `current` never blocks behind an apply (the lock only guards the swap).

use std::sync::{Arc, RwLock};

use ballast_state::Mvcc;

#[derive(Clone)]
pub struct Store(Arc<RwLock<Arc<Mvcc>>>);

impl Store {
    pub fn new(m: Arc<Mvcc>) -> Store {
        Store(Arc::new(RwLock::new(m)))
    }

    /// The store as of now.
    pub fn current(&self) -> Arc<Mvcc> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a store built from a snapshot.
    pub fn replace(&self, m: Arc<Mvcc>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = m;
    }
}

/// Logs a store just opened (`what`), with how its key index was built and how long it took.
pub fn log_opened(m: &Mvcc, what: &str, took: std::time::Duration) {
    tracing::info!(
        keys = m.key_count(),
        revision = m.current_rev(),
        key_index = %m.index_source(),
        took = ?took,
        "{what}"
    );
}
