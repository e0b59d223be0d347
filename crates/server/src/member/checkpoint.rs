//! When the key index checkpoint is written (`Mvcc::checkpoint_index`): on a thread of its
//! own beside the applier, once enough revisions have been applied since the last one, or,
//! in a store of `MIN_REVISIONS` keys or more, when there is none or a compaction has passed
//! it (the next open could not use it), at most once per interval; and at a clean stop
//! (`main`).
//!
//! Invariant: one checkpoint at a time; a failed one is logged and retried later, never fatal
//! (the next open rebuilds the index from the store instead).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ballast_state::Mvcc;

/// Revisions after a checkpoint before the next: at least this many, and at least the key
/// count over `KEYS_PER_REVISION`, so writing checkpoints (which cost the whole index) takes
/// a bounded share of the work, while a restart after a crash replays at most about that.
const MIN_REVISIONS: i64 = 10_000;
const KEYS_PER_REVISION: i64 = 8;
/// At most one checkpoint started per interval.
const MIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Checkpointer {
    /// The revision of the checkpoint the store records (0: none).
    last: i64,
    started: Option<Instant>,
    running: Option<JoinHandle<Option<i64>>>,
}

impl Checkpointer {
    pub fn new(mvcc: &Mvcc) -> Checkpointer {
        Checkpointer {
            last: recorded(mvcc),
            started: None,
            running: None,
        }
    }

    /// After the store was replaced (an installed snapshot).
    pub fn reset(&mut self, mvcc: &Mvcc) {
        self.last = recorded(mvcc);
    }

    /// Starts a checkpoint if one is due; called after each applied batch.
    pub fn maybe_start(&mut self, mvcc: &Arc<Mvcc>) {
        if let Some(t) = self.running.take_if(|t| t.is_finished()) {
            if let Ok(Some(rev)) = t.join() {
                self.last = rev;
            }
        }
        if self.running.is_some() || self.started.is_some_and(|s| s.elapsed() < MIN_INTERVAL) {
            return;
        }
        let rev = mvcc.current_rev();
        let since = rev - self.last;
        let keys = mvcc.key_count() as i64;
        // Under MIN_REVISIONS keys a rebuild at open takes milliseconds: no checkpoint just
        // for a missing or passed one (a fresh member wrote one beside its first puts, and
        // its commit could push a store at etcd's 13-page minimum quota over it).
        let passed = keys >= MIN_REVISIONS && (self.last == 0 || mvcc.compact_rev() > self.last);
        let enough = since >= MIN_REVISIONS.max(keys / KEYS_PER_REVISION);
        if since <= 0 || !(passed || enough) {
            return;
        }
        self.started = Some(Instant::now());
        let m = mvcc.clone();
        let spawned = std::thread::Builder::new()
            .name("index-checkpoint".into())
            .spawn(move || write(&m));
        match spawned {
            Ok(t) => self.running = Some(t),
            Err(e) => tracing::warn!(error = %e, "could not start the key index checkpoint"),
        }
    }
}

fn recorded(mvcc: &Mvcc) -> i64 {
    mvcc.index_checkpoint_rev().ok().flatten().unwrap_or(0)
}

/// Writes a checkpoint and logs what happened; its revision if it was written.
pub fn write(mvcc: &Mvcc) -> Option<i64> {
    let started = Instant::now();
    match mvcc.checkpoint_index() {
        Ok(rev) => {
            tracing::info!(
                revision = rev,
                keys = mvcc.key_count(),
                took = ?started.elapsed(),
                "wrote the key index checkpoint"
            );
            Some(rev)
        }
        Err(e) => {
            tracing::warn!(error = %e, "writing the key index checkpoint failed");
            None
        }
    }
}
