//! Scheduled backups (Ballast's own; etcd needs an external agent): with `--backup-url` (or
//! `--backup-dir`), the leader writes a snapshot every `--backup-interval`, verifies it by
//! reading it back (record checksums and the SHA-256 trailer), stores it in the directory or
//! bucket, then its manifest, and applies retention. Snapshots are etcd-format `.db` files,
//! the same `snapshot save` writes, so `snapshot restore` (Ballast's or etcd's) takes them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ballast_backup::catalog::{self, rfc3339};
use ballast_backup::{BackupStoreError, Manifest, SnapshotName, Store};
use ballast_raft::RaftStatus;
use ballast_state::snapfile;
use ballast_state::{KvError, Mvcc};
use tokio::sync::watch;

use crate::config::BackupConfig;
use crate::member::counters::BackupStats;
use crate::member::store::Store as MemberStore;

/// The local file a snapshot is written to before it is stored (hidden: listings skip it).
const STAGING: &str = ".backup.tmp";
/// The least time between a failed backup and the next attempt.
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a scheduled backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] KvError),
    #[error("verifying: {0}")]
    Verify(#[from] snapfile::SnapFileError),
    #[error("the backup task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] BackupStoreError),
    #[error(transparent)]
    History(#[from] super::archive::HistoryError),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a snapshot of `store` to `tmp`, fsyncs it and reads it back end to end.
pub fn write_verified(store: &Mvcc, tmp: &Path) -> Result<snapfile::SnapStatus, BackupError> {
    if let Some(dir) = tmp.parent() {
        ballast_storage::private::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let result = (|| {
        let file = ballast_storage::private::create_file(tmp).map_err(io_at(tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        snapfile::write(store, &mut |_| Ok(()), &mut out)?;
        let file = out.into_inner().map_err(|e| io_at(tmp)(e.into_error()))?;
        file.sync_all().map_err(io_at(tmp))?;
        // Read back what reached the disk before trusting it.
        Ok(snapfile::status(tmp)?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Where, how often and how many backups the leader keeps, and who it is.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub config: BackupConfig,
    /// Where a snapshot bound for a bucket is written first (the data directory).
    pub scratch: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// One backup: check that the store holds this cluster's history, snapshot, verify, store,
/// manifest, retention. Returns the manifest.
pub async fn back_up_once(
    s: &Schedule,
    target: &Store,
    node: &ballast_raft::Node,
    mvcc: Arc<Mvcc>,
    now: SystemTime,
) -> Result<Manifest, BackupError> {
    super::archive::check_history(target, node).await?;
    let tmp = target.staging_dir(&s.scratch).join(STAGING);
    let t = tmp.clone();
    let (st, size, index, taken_ms) = tokio::task::spawn_blocking(move || {
        let st = write_verified(&mvcc, &t)?;
        let size = std::fs::metadata(&t).map_err(io_at(&t))?.len();
        let index = snapfile::applied_index(&t)?;
        // Written and read back: the state in it was read before now.
        let taken_ms = super::unix_now().as_millis() as u64;
        Ok::<_, BackupError>((st, size, index, taken_ms))
    })
    .await??;
    let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let name = SnapshotName {
        unix,
        revision: st.revision,
        hash: st.hash,
    };
    let m = Manifest {
        snapshot: name.db(),
        revision: st.revision,
        index,
        term: super::archive::term_at(node, index).await,
        hash: st.hash,
        size,
        total_keys: st.total_keys,
        created: rfc3339(unix),
        taken_ms,
        member_id: format!("{:x}", s.member_id),
        cluster_id: format!("{:x}", s.cluster_id),
    };
    let stored = catalog::put_snapshot(target, &tmp, &m).await;
    // A directory target renamed it; a bucket's copy is uploaded (or failed): either way the
    // local file has served.
    let _ = tokio::fs::remove_file(&tmp).await;
    stored?;
    let mut gone = catalog::prune(target, s.config.keep, s.config.max_age, unix).await?;
    if s.config.archive.is_some() {
        // Segments only the deleted snapshots needed go with them.
        let c = catalog::catalog(target).await?;
        if let Some((oldest, _)) = c.complete.first() {
            let index = catalog::read_manifest(target, oldest).await?.index;
            gone.extend(ballast_backup::archive::prune_before(target, index).await?);
        }
    }
    if !gone.is_empty() {
        tracing::info!(url = %target, deleted = ?gone, "applied backup retention");
    }
    Ok(m)
}

/// Writes a verified backup every interval while this member leads (and at once when the
/// archive asks for one); runs for the member's life. With `--backup-archive` it also runs the
/// archive. A failure is logged and counted; the member keeps serving and tries again next
/// time.
pub async fn run(
    s: Schedule,
    store: MemberStore,
    node: Arc<ballast_raft::Node>,
    status: watch::Receiver<RaftStatus>,
    stats: Arc<BackupStats>,
) {
    let target = match Store::open(&s.config.location, &s.config.s3) {
        Ok(t) => t,
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(url = %s.config.location, error = %e, "cannot open the backup store; no backups will be written");
            return;
        }
    };
    let snapshot_now = Arc::new(tokio::sync::Notify::new());
    if let Some(flush_every) = s.config.archive {
        tokio::spawn(crate::background::archive::run(
            target.clone(),
            store.clone(),
            node.clone(),
            status.clone(),
            stats.clone(),
            flush_every,
            snapshot_now.clone(),
        ));
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(s.config.every) => {}
            () = snapshot_now.notified() => {}
        }
        if !status.borrow().is_leader {
            continue;
        }
        let started = Instant::now();
        tracing::info!(url = %target, "writing scheduled backup");
        match back_up_once(&s, &target, &node, store.current(), SystemTime::now()).await {
            Ok(m) => {
                let took = started.elapsed();
                let now = super::unix_now().as_secs();
                stats.last_success.store(now, Ordering::Relaxed);
                stats
                    .last_duration_ms
                    .store(took.as_millis() as u64, Ordering::Relaxed);
                stats.last_bytes.store(m.size, Ordering::Relaxed);
                stats
                    .last_revision
                    .store(u64::try_from(m.revision).unwrap_or(0), Ordering::Relaxed);
                tracing::info!(
                    url = %target,
                    snapshot = %m.snapshot,
                    revision = m.revision,
                    size = m.size,
                    took = ?took,
                    "wrote scheduled backup"
                );
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %target, error = %e, "scheduled backup failed");
                // The archive asks again at once while it has no snapshot to build on: do not
                // hammer a store that refuses.
                tokio::time::sleep(RETRY_AFTER_FAILURE.min(s.config.every)).await;
            }
        }
    }
}
