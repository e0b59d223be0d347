//! Where a member's files live in its data directory. Ballast's names never collide with
//! etcd's, so an etcd data directory converted in place keeps etcd's own files untouched
//! beside Ballast's (`member/snap/db`, `*.snap`, `member/wal/*-*.wal` are etcd's).
//!
//! Invariant: nothing Ballast writes, renames or deletes under `member/` has a name etcd uses.

use std::path::{Path, PathBuf};

/// Ballast's store (redb), in the snap directory.
pub const STORE_FILE: &str = "ballast.db";
/// A store being built beside the live one (an installed raft snapshot, a migration).
pub const STORE_FILE_NEW: &str = "ballast.db.new";
/// etcd's backend file, in the same directory.
pub const ETCD_DB_FILE: &str = "db";

/// `<data-dir>/member/snap`.
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

/// `<data-dir>/member/snap/ballast.db`.
pub fn store_path(data_dir: &Path) -> PathBuf {
    snap_dir(data_dir).join(STORE_FILE)
}

/// `<data-dir>/member/snap/db`: where etcd keeps its backend.
pub fn etcd_db_path(data_dir: &Path) -> PathBuf {
    snap_dir(data_dir).join(ETCD_DB_FILE)
}
