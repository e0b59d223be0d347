//! The continuous backup archive (`--backup-archive`): while this member leads, committed
//! raft entries after the newest backup's index go to the store as segments
//! (`ballast_backup::archive`), at least every `--backup-archive-interval` and whenever
//! `SEGMENT_BYTES` have gathered. A new leader resumes after the last stored segment, from
//! its own log. Entries compacted out of the log before they were archived are a gap: it is
//! logged and counted, a snapshot is asked for at once, and the archive starts again after
//! it — never silently past the hole.
//!
//! A store holds one raft history. Before writing, the leader checks that the newest archived
//! entry (or, with no archive, the newest snapshot's) is in its own log with the same term
//! ([`check_history`]): a cluster restored from these backups starts a new log, and writing
//! its entries after the old cluster's would make every later restore wrong. Such a store is
//! refused until the cluster is given a new prefix (or the old objects are moved away).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_backup::archive::{self, Entry, SEGMENT_BYTES};
use ballast_backup::{catalog, BackupStoreError, Store};
use ballast_raft::{LogTerm, Node, RaftError, RaftStatus};
use tokio::sync::{watch, Notify};

use crate::member::counters::BackupStats;

/// How often the archive looks for newly committed entries.
const TICK: Duration = Duration::from_millis(500);
/// How often a member that does not lead learns how far the archive has got, so its own log
/// keeps what the archive still needs should it lead next.
const FOLLOWER_REFRESH: Duration = Duration::from_secs(5);
/// How long a store holding another history is left alone before it is checked again.
const HISTORY_RECHECK: Duration = Duration::from_secs(30);

/// Why this member may not write to a backup store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{url} holds another cluster's history: its {what} (raft index {index}, term {term}) is not in this member's log, which {ours}; a cluster restored from backups must write to a new prefix (--backup-url), or the old objects must be moved away")]
    Other {
        url: String,
        what: String,
        index: u64,
        term: u64,
        ours: String,
    },
    #[error(transparent)]
    Store(#[from] BackupStoreError),
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// Checks that `target` continues this member's raft log: its newest archived entry, or with
/// no archive its newest snapshot's, is in the log with the same term. An entry compacted out
/// of the log cannot be compared, and passes.
pub async fn check_history(target: &Store, node: &Node) -> Result<(), HistoryError> {
    let (what, index, term) = match archive::segments(target).await?.last() {
        Some(seg) => {
            let d = archive::get(target, seg).await?;
            let term = d.entries.last().map_or(0, |e| e.term);
            (format!("archive segment {}", seg.path()), seg.last, term)
        }
        None => {
            let c = catalog::catalog(target).await?;
            let Some(newest) = c.newest_at_or_below(None) else {
                return Ok(());
            };
            let m = catalog::read_manifest(target, &newest).await?;
            (format!("backup {}", m.snapshot), m.index, m.term)
        }
    };
    if index == 0 {
        return Ok(());
    }
    let ours = match node.log_term(index).await? {
        LogTerm::Beyond => "ends before that index".to_string(),
        LogTerm::Term(t) if term != 0 && t != term => format!("has term {t} there"),
        LogTerm::Term(_) | LogTerm::Gone => return Ok(()),
    };
    Err(HistoryError::Other {
        url: target.to_string(),
        what,
        index,
        term,
        ours,
    })
}

/// The term of the entry at `index` in this member's log (0: not known).
pub async fn term_at(node: &Node, index: u64) -> u64 {
    match node.log_term(index).await {
        Ok(LogTerm::Term(t)) => t,
        _ => 0,
    }
}

/// Where the archive goes on from: after the last segment, or after the newest snapshot when
/// that is newer (or there is no segment yet). `None` until a snapshot exists (or one newer
/// than `after` when a gap is being rebased).
async fn resume_point(target: &Store, after: Option<u64>) -> ballast_backup::Result<Option<u64>> {
    let c = catalog::catalog(target).await?;
    let Some(newest) = c.newest_at_or_below(None) else {
        return Ok(None);
    };
    let base = catalog::read_manifest(target, &newest).await?.index;
    if base == 0 || after.is_some_and(|a| base < a) {
        return Ok(None);
    }
    let last = archive::segments(target).await?.last().map(|s| s.last);
    Ok(Some(match last {
        Some(l) if l >= base => l + 1,
        _ => base + 1,
    }))
}

fn unix_ms() -> u64 {
    super::unix_now().as_millis() as u64
}

/// Runs for the member's life.
pub async fn run(
    target: Store,
    member_store: crate::member::store::Store,
    node: Arc<Node>,
    status: watch::Receiver<RaftStatus>,
    stats: Arc<BackupStats>,
    flush_every: Duration,
    snapshot_now: Arc<Notify>,
) {
    let mut next: Option<u64> = None;
    // The term of the entry before the next one (0: not known).
    let mut prev_term = 0;
    // Set while the store holds another history: when to check it again.
    let mut recheck_at: Option<Instant> = None;
    // Set after a gap: the first index the archive could not read.
    let mut rebase_after: Option<u64> = None;
    let mut pending: Vec<Entry> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut last_flush = Instant::now();
    let mut last_refresh: Option<Instant> = None;
    // Whether the last turn stored a full segment: then more is waiting, so no pause.
    let mut behind = false;
    loop {
        if !behind {
            tokio::time::sleep(TICK.min(flush_every)).await;
        }
        behind = false;
        if !status.borrow().is_leader {
            next = None;
            pending.clear();
            pending_bytes = 0;
            if last_refresh.is_none_or(|t| t.elapsed() >= FOLLOWER_REFRESH) {
                last_refresh = Some(Instant::now());
                if let Ok(Some(last)) = archive::segments(&target)
                    .await
                    .map(|v| v.last().map(|s| s.last))
                {
                    node.hold_log_after(last);
                }
            }
            continue;
        }
        let from = match next {
            Some(n) => n,
            None => {
                if recheck_at.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                recheck_at = None;
                match check_history(&target, &node).await {
                    Ok(()) => {}
                    Err(e) => {
                        stats.archive_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(url = %target, error = %e, "backup archive refused");
                        let wait = match e {
                            HistoryError::Other { .. } => HISTORY_RECHECK,
                            _ => FOLLOWER_REFRESH,
                        };
                        recheck_at = Some(Instant::now() + wait);
                        continue;
                    }
                }
                match resume_point(&target, rebase_after).await {
                    Ok(Some(n)) => {
                        tracing::info!(url = %target, index = n, "backup archive resumes");
                        prev_term = term_at(&node, n - 1).await;
                        rebase_after = None;
                        next = Some(n);
                        node.hold_log_after(n - 1);
                        // The snapshot below holds everything before `n`.
                        stats.archive_index.fetch_max(n - 1, Ordering::Relaxed);
                        last_flush = Instant::now();
                        n
                    }
                    Ok(None) => {
                        // No snapshot to build on yet: ask for one.
                        snapshot_now.notify_one();
                        continue;
                    }
                    Err(e) => {
                        stats.archive_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(url = %target, error = %e, "backup archive cannot list the store");
                        continue;
                    }
                }
            }
        };
        // Gather committed entries, up to one segment's worth. Each is stamped with the time
        // it was read: it was committed by then.
        let mut through_ms = 0;
        // Only what the store has applied, so the revision after the last entry is known.
        let (applied, rev) = member_store.current().applied_and_rev();
        while pending_bytes < SEGMENT_BYTES {
            let read_at = unix_ms();
            let low = from + pending.len() as u64;
            match node
                .committed_entries(low, applied, SEGMENT_BYTES - pending_bytes)
                .await
            {
                Ok(v) if v.is_empty() => {
                    // Everything committed before this read is gathered.
                    through_ms = read_at;
                    break;
                }
                Ok(v) => {
                    for c in v {
                        pending_bytes += c.data.len() as u64;
                        pending.push(Entry {
                            index: c.index,
                            term: c.term,
                            unix_ms: read_at,
                            conf_change: c.conf_change,
                            data: c.data,
                        });
                    }
                }
                Err(RaftError::Compacted(at)) => {
                    stats.archive_gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        url = %target,
                        index = at,
                        "backup archive gap: entries left the raft log before the archive held them; taking a snapshot to start again after it"
                    );
                    next = None;
                    rebase_after = Some(at);
                    pending.clear();
                    pending_bytes = 0;
                    snapshot_now.notify_one();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backup archive cannot read the raft log");
                    break;
                }
            }
        }
        let due = last_flush.elapsed() >= flush_every || pending_bytes >= SEGMENT_BYTES;
        if pending.is_empty() || !due {
            continue;
        }
        // A segment cut at its size limit holds everything up to its last entry's read.
        if through_ms == 0 {
            through_ms = pending.last().map_or(0, |e| e.unix_ms);
        }
        let last_revision = match pending.last() {
            Some(e) if e.index == applied => rev,
            _ => 0,
        };
        // A deposed leader may have stored a segment after this one resumed: what the stored
        // run already holds from this segment's first entry on is left out, so no entry is
        // archived twice. (Not knowing leaves an overlap, which a restore skips.)
        if let Ok(segs) = archive::segments(&target).await {
            if let Some((held, term)) = archive::leave_out_stored(&mut pending, &segs) {
                prev_term = term;
                pending_bytes = pending.iter().map(|e| e.data.len() as u64).sum();
                tracing::info!(url = %target, through = held, "backup archive leaves out entries another leader stored");
                next = Some(held + 1);
                if pending.is_empty() {
                    node.hold_log_after(held);
                    continue;
                }
            }
        }
        match archive::put(&target, &pending, prev_term, through_ms, last_revision).await {
            Ok(seg) => {
                behind = pending_bytes >= SEGMENT_BYTES;
                prev_term = pending.last().map_or(prev_term, |e| e.term);
                next = Some(seg.last + 1);
                node.hold_log_after(seg.last);
                pending.clear();
                pending_bytes = 0;
                last_flush = Instant::now();
                let now = super::unix_now().as_secs();
                stats.archive_index.store(seg.last, Ordering::Relaxed);
                stats.archive_last_success.store(now, Ordering::Relaxed);
                tracing::debug!(url = %target, first = seg.first, last = seg.last, "archived entries");
            }
            Err(e) => {
                // Kept and tried again at the next tick; reading stops while a segment's worth
                // waits, so this holds at most one segment.
                stats.archive_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %target, error = %e, "backup archive segment failed");
            }
        }
    }
}
