//! Scheduled backups (Ballast's own; etcd needs an external agent): with `--backup-dir`, the
//! leader writes a snapshot every `--backup-interval`, verifies it by reading it back (record
//! checksums and the SHA-256 trailer), fsyncs it, renames it into place and keeps the newest
//! `--backup-retention` files. Files are `ballast-<UTC time>-rev<revision>-<hash>.db`, the same
//! format `snapshot save` writes, so `snapshot restore` takes them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ballast_raft::RaftStatus;
use ballast_state::snapfile;
use ballast_state::{KvError, Mvcc};
use tokio::sync::watch;

use crate::member::counters::BackupStats;
use crate::member::store::Store;

const PREFIX: &str = "ballast-";
const SUFFIX: &str = ".db";

/// `YYYYMMDDTHHMMSSZ` for a Unix time.
fn utc_stamp(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = ballast_net::time::utc_civil(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Backup files in `dir`, oldest first (names sort by time).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

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
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one verified backup into `dir`; returns its path.
pub fn write_one(store: &Mvcc, dir: &Path, now: SystemTime) -> Result<PathBuf, BackupError> {
    ballast_storage::private::create_dir_all(dir).map_err(io_at(dir))?;
    let tmp = dir.join(".backup.tmp");
    let result = (|| {
        let file = ballast_storage::private::create_file(&tmp).map_err(io_at(&tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        snapfile::write(store, &mut |_| Ok(()), &mut out)?;
        let file = out.into_inner().map_err(|e| io_at(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_at(&tmp))?;
        // Read back what reached the disk before trusting it.
        let st = snapfile::status(&tmp)?;
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let name = format!(
            "{PREFIX}{}-rev{:012}-{:08x}{SUFFIX}",
            utc_stamp(secs),
            st.revision,
            st.hash
        );
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        ballast_storage::wal::sync_dir(dir).map_err(io_at(dir))?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes all but the newest `keep` backups.
pub fn rotate(dir: &Path, keep: usize) -> Result<(), BackupError> {
    let all = list(dir);
    let excess = all.len().saturating_sub(keep);
    for old in &all[..excess] {
        std::fs::remove_file(old).map_err(io_at(old))?;
    }
    if excess > 0 {
        ballast_storage::wal::sync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(())
}

/// Where, how often and how many backups the leader keeps (`--backup-*`).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: usize,
}

/// Writes a verified backup every interval while this member leads, keeping the newest
/// `keep`; runs for the member's life.
pub async fn run(
    schedule: Schedule,
    store: Store,
    status: watch::Receiver<RaftStatus>,
    stats: Arc<BackupStats>,
) {
    let Schedule { dir, every, keep } = schedule;
    loop {
        tokio::time::sleep(every).await;
        if !status.borrow().is_leader {
            continue;
        }
        let (mvcc, d) = (store.current(), dir.clone());
        let done = tokio::task::spawn_blocking(move || {
            let path = write_one(&mvcc, &d, SystemTime::now())?;
            rotate(&d, keep)?;
            Ok::<_, BackupError>(path)
        })
        .await
        .unwrap_or_else(|e| Err(e.into()));
        match done {
            Ok(path) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                stats.last_success.store(now, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "wrote scheduled backup");
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %dir.display(), error = %e, "scheduled backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sort_by_time() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_453_706), "20261123T170826Z");
        assert!(utc_stamp(1_000_000_000) < utc_stamp(1_795_453_706));
    }

    #[test]
    fn rotation_keeps_the_newest() {
        let d = tempfile::tempdir().expect("tmp");
        for t in ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"] {
            std::fs::write(d.path().join(format!("ballast-{t}-rev1-0.db")), b"x").expect("w");
        }
        std::fs::write(d.path().join("other.txt"), b"x").expect("w");
        rotate(d.path(), 2).expect("rotate");
        let left: Vec<String> = list(d.path())
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            left,
            [
                "ballast-20260102T000000Z-rev1-0.db",
                "ballast-20260103T000000Z-rev1-0.db"
            ]
        );
        assert!(d.path().join("other.txt").exists());
    }
}
