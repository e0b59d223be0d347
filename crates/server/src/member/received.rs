//! The key index of the store the transport's snapshot builder made last, kept until the
//! applier installs that store, so the install does not read every row to build it again.
//!
//! Invariant: an index is handed over only for the file it was built with (the same inode,
//! which the staging rename keeps); at most one is held, and a newer build replaces it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use ballast_state::mvcc::ImportedIndex;

#[derive(Default)]
pub struct ReceivedIndex(Mutex<Option<((u64, u64), ImportedIndex)>>);

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl ReceivedIndex {
    /// Keeps `index`, built with the store at `path`, in place of any held before.
    pub fn put(&self, path: &Path, index: ImportedIndex) {
        let kept = file_id(path).map(|id| (id, index));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = kept;
    }

    /// The index built with the store at `path`, if it is the one held (which goes).
    pub fn take(&self, path: &Path) -> Option<ImportedIndex> {
        let id = file_id(path)?;
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match held.take() {
            Some((i, index)) if i == id => Some(index),
            other => {
                *held = other;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_goes_only_with_its_own_file_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut stream = Vec::new();
        ballast_state::Mvcc::open(&dir.path().join("src"))
            .unwrap()
            .export(&mut |b| {
                stream.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        let index = |p: &Path| ballast_state::Mvcc::import(p, stream.as_slice()).unwrap();
        let held = ReceivedIndex::default();
        held.put(&a, index(&a));
        let _other = index(&b);
        assert!(held.take(&b).is_none(), "another file's index");
        // Renamed, as staging renames a built store: still the same file.
        let moved = dir.path().join("moved");
        std::fs::rename(&a, &moved).unwrap();
        assert!(held.take(&moved).is_some());
        assert!(held.take(&moved).is_none(), "handed over once");
    }
}
