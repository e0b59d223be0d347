//! The applier: one thread applies committed entries in log order, so applying never blocks
//! the driver's next fsync. Per batch: apply to the store in one transaction, publish the
//! events to the watch hub, apply side effects (lease clocks, tokens), answer the waiters,
//! then, when due, make the store durable and let the driver compact the log.
//!
//! Invariants: entries apply in log order, each once (the store skips what it already
//! applied); a waiter is answered only after its entry's events are published; the log is
//! compacted only to an index the store holds durably; a storage failure stops the member
//! rather than acknowledge anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::{raft_request, RaftRequest};
use ballast_raft::{Apply, Committed, Transport};
use ballast_state::{layout, Applied, KvError, Mvcc};
use ballast_storage::failpoint;
use prost::Message;
use tokio::sync::watch;

use super::proposer::ProposalWaiters;
use super::store::Store;
use super::ServerError;
use crate::background::lease::Lessor;
use crate::limits::MAX_MERGED_ENTRIES;
use crate::watch::WatchHub;

/// Applies committed entries in log order on its own thread, so applying never blocks the
/// driver's next fsync.
pub struct Applier {
    pub(crate) store: Store,
    pub(crate) snap_dir: std::path::PathBuf,
    pub(crate) snapshot_count: u64,
    /// Applied index at the last log compaction (WAL rewrite).
    pub(crate) last_compact: u64,
    /// Applied index at the last trim of the in-memory log, and how often to trim: the raft
    /// log would otherwise hold up to `snapshot_count` entries in memory.
    pub(crate) last_trim: u64,
    pub(crate) trim_every: u64,
    /// Entry bytes applied since the last trim.
    pub(crate) trim_bytes: u64,
    /// Keys and revisions per compaction step (`--compaction-batch-limit`); a step runs
    /// after each applied batch, so this bounds what a compaction adds to one.
    pub(crate) compaction_step: usize,
    /// How long an idle applier waits for entries before its next whole compaction step
    /// (`--compaction-sleep-interval`, the pause etcd takes between its batches).
    pub(crate) compaction_idle: std::time::Duration,
    /// When the compaction whose deletions are still in progress was applied (etcd's
    /// compaction total duration runs from there to its last batch).
    pub(crate) compaction_started: Option<Instant>,
    /// A batch slower than this is logged and counted (`--experimental-warning-apply-duration`).
    pub(crate) warn_apply: std::time::Duration,
    pub(crate) compact: Box<dyn Fn(u64, bool) + Send>,
    pub(crate) watch: Arc<WatchHub>,
    pub(crate) lessor: Arc<Lessor>,
    pub(crate) waiters: Arc<ProposalWaiters>,
    pub(crate) applied: watch::Sender<u64>,
    pub(crate) transport: Transport,
    pub(crate) member_id: u64,
    /// Whether this member's own record has been applied (a joiner's comes later).
    pub(crate) was_member: bool,
    pub(crate) removed: watch::Sender<bool>,
    pub(crate) learner: Arc<AtomicBool>,
    /// Held while the store's file is being replaced (snapshot install, defragmentation).
    pub(crate) file_swap: Arc<Mutex<()>>,
    pub(crate) auth: Arc<crate::auth::Authenticator>,
    /// Why applying stopped (a storage failure); the process exits on it.
    pub(crate) failed: watch::Sender<Option<String>>,
    pub(crate) checkpoint: super::checkpoint::Checkpointer,
    /// The key index the snapshot builder made with the store it built.
    pub(crate) received: Arc<super::received::ReceivedIndex>,
}

/// A compaction step taken between applied batches handles at most this fraction of
/// `--compaction-batch-limit`, in slices of `BUSY_SLICE` keys and revisions until
/// `BUSY_STEP_BUDGET` has passed; idle steps handle all of it, in the same slices, unless
/// entries arrive first.
const BUSY_STEP_FRACTION: usize = 10;
const BUSY_SLICE: usize = 10;
/// What a busy compaction step may add to the batch behind it: deleting a revision whose page
/// is not cached reads it first, so a count alone did not bound the delay (100 revisions of a
/// 1 GiB store added 2.5 ms to a 0.5 ms put p99).
const BUSY_STEP_BUDGET: Duration = Duration::from_micros(200);
/// Compaction stages deletions only while the store writer has fewer writes than this
/// waiting: staging a deletion is cheap, writing it is not, and a compaction that ran ahead
/// of the writer would fill the staged writes' bound and make every update wait.
const COMPACTION_BACKLOG: usize = 2_000;

impl Applier {
    /// Applies until the driver stops, or a storage failure stops it first (reported on
    /// `failed`; nothing after it is applied or answered).
    pub fn run(mut self, committed: std::sync::mpsc::Receiver<Apply>) {
        let mut next = None;
        loop {
            let work = match next.take() {
                Some(w) => w,
                None => match self.idle_wait() {
                    Some(wait) => match committed.recv_timeout(wait) {
                        Ok(w) => w,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            match self.idle_work(&committed) {
                                Ok(arrived) => next = arrived,
                                Err(e) => {
                                    self.stop(e);
                                    return;
                                }
                            }
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    },
                    None => match committed.recv() {
                        Ok(w) => w,
                        Err(_) => break,
                    },
                },
            };
            let res = match work {
                Apply::Entries(mut batch) => {
                    // Batches that queued up meanwhile share one store transaction: each
                    // commit copies the B-tree pages it touched, so fewer commits do less.
                    while batch.len() < MAX_MERGED_ENTRIES {
                        match committed.try_recv() {
                            Ok(Apply::Entries(more)) => batch.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(batch)
                }
                Apply::Snapshot { index, path, done } => {
                    let r = self.install(index, &path);
                    let _ = ballast_storage::private::remove_gradually(&path);
                    let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    r
                }
            };
            if let Err(e) = res {
                self.stop(e);
                return;
            }
        }
        if let Err(e) = self.store.current().sync() {
            tracing::error!(error = %e, "final backend sync failed");
        }
    }

    /// How long to wait for entries before doing idle work, if there is any: a compaction in
    /// progress takes a whole step whenever nothing arrives for `--compaction-sleep-interval`.
    /// (The store's own writer makes applied state durable, within a second, busy or idle.)
    fn idle_wait(&self) -> Option<Duration> {
        self.store
            .current()
            .compacting()
            .then_some(self.compaction_idle)
    }

    /// The idle work [`Applier::idle_wait`] waited for. A compaction step goes in slices and
    /// stops early when entries arrive (returned, to be applied next): a whole step of 1,000
    /// revisions took 7-17 ms on a 400 MiB store, which every put arriving meanwhile waited
    /// out.
    fn idle_work(
        &mut self,
        committed: &std::sync::mpsc::Receiver<Apply>,
    ) -> Result<Option<Apply>, KvError> {
        let mut arrived = None;
        self.compact_slices(self.compaction_step, |_| match committed.try_recv() {
            Ok(work) => {
                arrived = Some(work);
                true
            }
            Err(_) => false,
        })?;
        self.compaction_finished();
        Ok(arrived)
    }

    /// The disk failed: stop acknowledging anything, and stop the member.
    fn stop(&self, e: KvError) {
        tracing::error!(error = %e, "apply failed; stopping");
        self.failed.send_replace(Some(format!("apply failed: {e}")));
    }

    /// One step of the compaction in progress, of at most `limit` keys and revisions, taken
    /// in slices of `BUSY_SLICE` (see `Mvcc::compact_step`) until `stop` (given the time
    /// spent) says so, and only while the store writer's backlog is under
    /// `COMPACTION_BACKLOG`. One pause is observed for a step taken, as etcd observes one per
    /// batch.
    fn compact_slices(
        &mut self,
        limit: usize,
        mut stop: impl FnMut(Duration) -> bool,
    ) -> Result<(), KvError> {
        let mvcc = self.store.current();
        let behind = || mvcc.staged_writes() >= COMPACTION_BACKLOG;
        if !mvcc.compacting() || behind() {
            return Ok(());
        }
        let before = mvcc.compacted_revisions();
        let started = Instant::now();
        let mut left = limit.max(1);
        while left > 0 && mvcc.compacting() && !behind() {
            let slice = left.min(BUSY_SLICE);
            mvcc.compact_step(slice)?;
            left -= slice;
            if stop(started.elapsed()) {
                break;
            }
        }
        crate::stats::COMPACTION_PAUSE_MS
            .get()
            .observe_value(started.elapsed().as_secs_f64() * 1000.0);
        let dropped = mvcc.compacted_revisions().saturating_sub(before);
        crate::stats::add(crate::stats::Counter::CompactionKeys, dropped);
        Ok(())
    }

    /// Once the compaction in progress has deleted all it drops: etcd's total duration, its
    /// time of the last compaction and its log line.
    fn compaction_finished(&mut self) {
        let mvcc = self.store.current();
        if mvcc.compacting() {
            return;
        }
        let Some(started) = self.compaction_started.take() else {
            return;
        };
        let took = started.elapsed();
        crate::stats::COMPACTION_TOTAL_MS
            .get()
            .observe_value(took.as_secs_f64() * 1000.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::stats::COMPACTION_LAST.store(now, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            compact_revision = mvcc.compact_rev(),
            took = ?took,
            "finished scheduled compaction"
        );
    }

    /// Replaces the state machine with a received snapshot: build a new store beside the
    /// old, fsync it, rename it into place, then switch readers over.
    fn install(&mut self, index: u64, path: &std::path::Path) -> Result<(), KvError> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = Instant::now();
        crate::stats::SNAPSHOT_APPLYING.store(1, Relaxed);
        let out = self.install_file(index, path);
        crate::stats::SNAPSHOT_APPLYING.store(0, Relaxed);
        crate::stats::SNAP_DB_SAVE.get().observe(started.elapsed());
        out
    }

    fn install_file(&mut self, index: u64, path: &std::path::Path) -> Result<(), KvError> {
        let swap = self.file_swap.clone();
        let _swap = swap.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.snap_dir.join(layout::STORE_FILE);
        // Built into a store as it arrived (the transport's builder), or its bytes to import;
        // with the key index built from its rows on the way, when there is one.
        let (fresh, built) = if ballast_raft::is_built_snapshot(path) {
            (path.to_path_buf(), self.received.take(path))
        } else {
            let fresh = self.snap_dir.join(layout::STORE_FILE_NEW);
            let file = std::fs::File::open(path)
                .map_err(|e| KvError::Corrupt(format!("snapshot {}: {e}", path.display())))?;
            let index = Mvcc::import(&fresh, std::io::BufReader::with_capacity(1 << 20, file))?;
            (fresh, Some(index))
        };
        // Checked before the store is replaced; its key index is built once, after.
        let covered = Mvcc::stored_applied_index(&fresh)?;
        if covered < index {
            return Err(KvError::Corrupt(format!(
                "snapshot data covers index {covered} but raft sent it for {index}"
            )));
        }
        let synced = Instant::now();
        std::fs::rename(&fresh, &db)
            .and_then(|_| ballast_storage::wal::sync_dir(&self.snap_dir))
            .map_err(|e| KvError::Corrupt(format!("installing snapshot: {e}")))?;
        crate::stats::SNAP_DB_FSYNC.get().observe(synced.elapsed());
        let opened = Instant::now();
        let m = Arc::new(match built {
            Some(built) => Mvcc::open_imported(&db, built)?,
            None => Mvcc::open(&db)?,
        });
        super::store::log_opened(&m, "opened the received snapshot's store", opened.elapsed());
        let applied = m.applied_index();
        self.checkpoint.reset(&m);
        self.store.replace(m);
        self.last_compact = applied;
        self.last_trim = applied;
        self.applied.send_replace(applied);
        self.watch.resync(self.store.current().current_rev());
        self.sync_membership();
        Ok(())
    }

    fn apply(&mut self, batch: Vec<Committed>) -> Result<(), KvError> {
        let Some(last) = batch.last().map(|c| c.index) else {
            return Ok(());
        };
        let mvcc = self.store.current();
        let mut ids = Vec::with_capacity(batch.len());
        self.trim_bytes += batch.iter().map(|c| c.data.len() as u64).sum::<u64>();
        let entries: Vec<(u64, Option<RaftRequest>)> = batch
            .into_iter()
            .map(|c| {
                let req = if c.rejected || c.data.is_empty() {
                    None
                } else {
                    match RaftRequest::decode(c.data.as_slice()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            // Every member decodes the same bytes the same way, so skipping
                            // keeps members identical.
                            tracing::error!(index = c.index, error = %e, "undecodable entry skipped");
                            None
                        }
                    }
                };
                (c.index, req)
            })
            .collect();
        for (index, req) in &entries {
            if *index > mvcc.applied_index() {
                ids.push(req.as_ref().map(|r| r.id));
            }
        }
        let membership = entries.iter().any(|(_, r)| {
            matches!(
                r.as_ref().and_then(|r| r.request.as_ref()),
                Some(raft_request::Request::MemberChange(_))
            )
        });
        // Membership must survive a crash with the raft configuration it matches.
        failpoint::crash("apply-before");
        let started = Instant::now();
        let compacted = mvcc.compacted_revisions();
        let applied = mvcc.apply_batch(&entries, membership)?;
        failpoint::crash("apply-after");
        let results = applied.results;
        if observe_batch(&entries, &results, started.elapsed(), self.warn_apply) > 0 {
            self.compaction_started.get_or_insert(started);
        }
        let compacted = mvcc.compacted_revisions().saturating_sub(compacted);
        crate::stats::add(crate::stats::Counter::CompactionKeys, compacted);
        self.watch.publish_from_thread(applied.events, applied.rev);
        // Effects first, so a client that hears back can already use what it created.
        for res in results.iter().flatten() {
            match res {
                Applied::LeaseGrant(g) => self.lessor.granted(g.id, g.ttl),
                // Every member learns every simple token, so any member accepts it.
                Applied::Authenticated { user, token } if !token.is_empty() => {
                    self.auth.assign(token.clone(), user.clone())
                }
                Applied::Auth(effect) => self.auth.apply_effect(effect),
                _ => {}
            }
        }
        self.waiters.answer_all(
            ids.into_iter()
                .zip(results.into_iter().map(|r| r.map_err(ServerError::from))),
        );
        self.applied.send_replace(last);
        if membership {
            self.sync_membership();
        }
        if last.saturating_sub(self.last_compact) >= self.snapshot_count {
            // The WAL may only drop what the store holds durably.
            mvcc.sync()?;
            self.last_compact = last;
            self.last_trim = last;
            self.trim_bytes = 0;
            (self.compact)(last, true);
        } else if membership
            || last.saturating_sub(self.last_trim) >= self.trim_every
            || self.trim_bytes >= crate::limits::TRIM_AFTER_BYTES
        {
            // After a membership change at once: the snapshot point is what a member just
            // added is sent, and its configuration must have that member.
            self.last_trim = last;
            self.trim_bytes = 0;
            (self.compact)(last, false);
        }
        // Under load a compaction in progress advances a little per batch, after the batch's
        // answers are out: a step delays the entries behind it, so busy steps are small and
        // timed (a whole one added 1.5 ms to a 0.4 ms put p99).
        self.compact_slices(self.compaction_step / BUSY_STEP_FRACTION, |spent| {
            spent >= BUSY_STEP_BUDGET
        })?;
        self.compaction_finished();
        self.checkpoint.maybe_start(&mvcc);
        Ok(())
    }

    /// Points the transport at the applied members and notices this member's own removal.
    fn sync_membership(&mut self) {
        let members = self.store.current().members();
        let mut present = false;
        for m in &members {
            if m.id == self.member_id {
                present = true;
                self.learner.store(m.is_learner, Ordering::Release);
            } else {
                self.transport.set_peer(m.id, m.peer_ur_ls.clone());
            }
        }
        self.transport
            .retain_peers(|id| members.iter().any(|m| m.id == id));
        if self.was_member && !present {
            tracing::warn!("the member has been permanently removed from the cluster");
            self.removed.send_replace(true);
        }
        self.was_member |= present;
    }
}

/// The batch's share of `/metrics`: mvcc and lease counters per applied entry, and each
/// entry's apply time as an equal share of the batch's (entries of a batch apply in one store
/// transaction, so none has a time of its own). Returns how many compactions it applied.
fn observe_batch(
    entries: &[(u64, Option<RaftRequest>)],
    results: &[Result<Applied, KvError>],
    took: std::time::Duration,
    warn_apply: std::time::Duration,
) -> usize {
    // Results cover the entries past the applied index: the last ones.
    let skip = entries.len().saturating_sub(results.len());
    let share = took / u32::try_from(results.len().max(1)).unwrap_or(u32::MAX);
    let mut compactions = 0;
    for ((_, req), res) in entries[skip..].iter().zip(results) {
        let Some(req) = req.as_ref().and_then(|r| r.request.as_ref()) else {
            continue;
        };
        if let Ok(applied) = res {
            crate::stats::count_applied(req, applied);
        }
        if matches!(req, raft_request::Request::Compaction(_)) && res.is_ok() {
            compactions += 1;
        }
        crate::stats::APPLY.observe(crate::stats::kind(req), res.is_ok(), share);
    }
    if took > warn_apply {
        crate::stats::add(crate::stats::Counter::SlowApply, 1);
        tracing::warn!(
            took = ?took,
            expected_duration = ?warn_apply,
            entries = results.len(),
            "apply request took too long"
        );
    }
    if compactions > 0 {
        // The batch that applied a compaction held the store like one of etcd's batches.
        crate::stats::COMPACTION_PAUSE_MS
            .get()
            .observe_value(took.as_secs_f64() * 1000.0);
    }
    compactions
}
