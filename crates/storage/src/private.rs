//! Files and directories only their owner may read, as etcd makes them (directories 0700,
//! files 0600): a member's data is every key, Kubernetes' secrets among them.
//!
//! Invariant: everything a member creates under its data, WAL and backup directories is made
//! through these, so nothing it writes is readable by other users of the machine.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// etcd's `PrivateDirMode`.
pub const DIR_MODE: u32 = 0o700;
/// etcd's `PrivateFileMode`.
pub const FILE_MODE: u32 = 0o600;

/// `create_dir_all`, each directory it creates owner-only (existing ones are left as they are).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates (or truncates) an owner-only file for writing.
pub fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates an empty owner-only file unless one exists, for a library that creates its file
/// itself (redb) to open.
pub fn touch(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn made_owner_only() {
        let d = tempfile::tempdir().expect("tmp");
        let deep = d.path().join("a/b");
        create_dir_all(&deep).expect("dirs");
        assert_eq!((mode(&d.path().join("a")), mode(&deep)), (0o700, 0o700));
        create_file(&deep.join("f")).expect("file");
        touch(&deep.join("g")).expect("touch");
        touch(&deep.join("g")).expect("touch again");
        assert_eq!(
            (mode(&deep.join("f")), mode(&deep.join("g"))),
            (0o600, 0o600)
        );
    }
}

/// Bytes a large file loses per step when it is removed gradually.
const REMOVE_STEP_BYTES: u64 = 64 << 20;

/// Removes a file of possibly hundreds of MiB (a received snapshot) a step at a time: freeing
/// it whole is one burst of filesystem journal work, and the fsyncs of anything else on the
/// disk (a leader's WAL) wait behind it.
pub fn remove_gradually(path: &Path) -> io::Result<()> {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let mut len = f.metadata()?.len();
        while len > REMOVE_STEP_BYTES {
            len -= REMOVE_STEP_BYTES;
            f.set_len(len)?;
            f.sync_data()?;
        }
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod remove_tests {
    #[test]
    fn a_large_file_is_removed_gradually() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("snap");
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(3 * super::REMOVE_STEP_BYTES + 5).expect("len");
        super::remove_gradually(&p).expect("remove");
        assert!(!p.exists());
        assert!(super::remove_gradually(&p).is_err());
    }
}
