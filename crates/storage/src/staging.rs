//! Writes that updates have staged and the store writer has not committed yet.
//!
//! An update never touches redb: it stages its rows in memory ([`Gen`]) and returns. The store
//! writer (a thread of the backend) takes everything staged at once, writes it into one redb
//! transaction and commits it, while later updates stage the next generation. So the
//! applier never waits for a commit's page writes and fsync (a durable commit took 20-60 ms
//! while a compaction was deleting, and every put behind it waited as long).
//!
//! Invariant: a row is visible to views from the moment its update returns until the commit
//! that writes it is visible, in exactly one of: the open generation, the sealed one (being
//! committed), or a committed redb transaction.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::backend::Rev;
use crate::overlay::Rows;

/// What updates staged since the writer last took it.
#[derive(Default)]
pub(crate) struct Gen {
    pub(crate) rows: Rows,
    /// The caller's tables: (index into the backend's tables, key) -> value (`None`: removed).
    pub(crate) tables: BTreeMap<(usize, Vec<u8>), Option<Vec<u8>>>,
    /// Row writes and bytes, for the commit limits and back-pressure.
    pub(crate) writes: usize,
    pub(crate) bytes: usize,
}

impl Gen {
    /// Adds what a later update staged.
    pub(crate) fn absorb(&mut self, later: Gen) {
        self.rows.extend(&later.rows);
        self.tables.extend(later.tables);
        self.writes += later.writes;
        self.bytes += later.bytes;
    }
}

/// The row at `rev` as the newest of `overlays` (newest first) that knows it says:
/// `Some(None)` deleted, `None` in none of them.
pub(crate) fn resolve<'r>(overlays: &[&'r Rows], rev: Rev) -> Option<Option<&'r [u8]>> {
    overlays.iter().find_map(|o| o.get(rev))
}

/// The meta value `name` as the newest overlay that has it says.
pub(crate) fn resolve_meta(overlays: &[&Rows], name: &str) -> Option<u64> {
    overlays.iter().find_map(|o| o.meta.get(name).copied())
}

/// Progress between updates (staging) and the store writer (committing), under one lock.
pub(crate) struct Flow {
    /// Updates staged, written (committed) and durably committed, counted in update order.
    pub(crate) staged: u64,
    pub(crate) written: u64,
    pub(crate) durable: u64,
    /// The highest update a reader needs committed, or a caller durably committed.
    pub(crate) want_written: u64,
    pub(crate) want_durable: u64,
    /// When the oldest update not taken by the writer was staged.
    pub(crate) since: Option<Instant>,
    pub(crate) last_durable: Instant,
    /// Of the open generation.
    pub(crate) writes: usize,
    pub(crate) bytes: usize,
    /// Why the writer stopped: nothing is staged or committed after it.
    pub(crate) failed: Option<String>,
    pub(crate) stop: bool,
}

impl Flow {
    pub(crate) fn new() -> Flow {
        Flow {
            staged: 0,
            written: 0,
            durable: 0,
            want_written: 0,
            want_durable: 0,
            since: None,
            last_durable: Instant::now(),
            writes: 0,
            bytes: 0,
            failed: None,
            stop: false,
        }
    }
}
