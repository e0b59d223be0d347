//! The in-memory raft log raft-rs reads through its `Storage` trait; the WAL makes it durable.
//!
//! Unlike raft-rs's `MemStorage`, the snapshot it reports is a point the state machine has
//! already applied (not the commit index), so the data shipped with a snapshot — exported
//! from the live store — always covers the index its metadata names. The driver moves it
//! forward every few thousand applied entries to keep memory bounded; the WAL keeps older
//! entries until the state machine holds them durably.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The state machine has applied everything up to here; what a snapshot ships.
    snapshot: SnapshotMetadata,
    /// Entries at or below this (index, term) are dropped. At or below `snapshot.index`: a few
    /// thousand entries are kept past a snapshot so briefly lagging followers catch up from
    /// the log instead of needing a whole snapshot.
    compacted: (u64, u64),
    /// Entries after `compacted`, contiguous.
    entries: Vec<Entry>,
}

impl LogStore {
    pub fn new(conf_state: ConfState) -> LogStore {
        LogStore {
            conf_state,
            ..Default::default()
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// Entries still held (after the compaction point), for rewriting the WAL.
    pub fn retained_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn first(&self) -> u64 {
        self.compacted.0 + 1
    }

    fn last(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }

    /// Appends entries, replacing any existing ones from the first new index on.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first() {
            // Already covered by the snapshot: keep only what lies beyond it.
            let skip = (self.first() - first.index) as usize;
            return self.append(ents.get(skip..).unwrap_or(&[]));
        }
        if first.index > self.last() + 1 {
            return Err(StorageError::Unavailable);
        }
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// Records that the state machine has applied everything up to `meta.index`, and drops
    /// entries up to `keep` before it.
    pub fn compact_to(&mut self, meta: SnapshotMetadata, keep: u64) {
        if meta.index <= self.snapshot.index {
            return;
        }
        let cut = meta.index.saturating_sub(keep);
        if cut > self.compacted.0 {
            if let Some(term) = self.term_of(cut) {
                let drop = ((cut - self.compacted.0) as usize).min(self.entries.len());
                self.entries.drain(..drop);
                self.compacted = (cut, term);
            }
        }
        if meta.index > self.hard_state.commit {
            self.hard_state.commit = meta.index;
        }
        self.snapshot = meta;
    }

    /// Replaces the log with a received snapshot's position.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.entries.clear();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.compacted = (meta.index, meta.term);
        self.snapshot = meta;
    }

    pub fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.compacted.0 {
            return Some(self.compacted.1);
        }
        if idx == self.snapshot.index && self.snapshot.index > 0 {
            return Some(self.snapshot.term);
        }
        if idx < self.first() || idx > self.last() {
            return None;
        }
        self.entries
            .get((idx - self.first()) as usize)
            .map(|e| e.term)
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(hi - lo);
        let mut size = 0u64;
        for e in &self.entries[lo..hi] {
            size += protobuf::Message::compute_size(e) as u64;
            // Always at least one entry, as raft-rs requires.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut s = Snapshot::default();
        s.set_metadata(self.snapshot.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_compact_and_terms() {
        let mut s = LogStore::new(ConfState::default());
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
        assert_eq!((s.first(), s.last()), (1, 3));
        // Overwrite from index 3.
        s.append(&[entry(3, 3), entry(4, 3)]).unwrap();
        assert_eq!(s.term(3).unwrap(), 3);
        s.compact_to(
            SnapshotMetadata {
                index: 2,
                term: 1,
                ..Default::default()
            },
            0,
        );
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(s.term(1).is_err());
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(3, 5, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(s.snapshot(0, 0).unwrap().get_metadata().index, 2);
        // A gap is refused.
        assert!(s.append(&[entry(9, 3)]).is_err());
        // Entries before a snapshot point can be kept for catching up.
        s.append(&[entry(5, 3), entry(6, 3), entry(7, 3)]).unwrap();
        s.compact_to(
            SnapshotMetadata {
                index: 6,
                term: 3,
                ..Default::default()
            },
            2,
        );
        assert_eq!(s.first_index().unwrap(), 5);
        assert_eq!(s.term(4).unwrap(), 3);
        assert_eq!(s.snapshot(0, 0).unwrap().get_metadata().index, 6);
    }
}
