//! The in-memory raft log raft-rs reads through its `Storage` trait; the WAL makes it durable.
//!
//! Unlike raft-rs's `MemStorage`, the snapshot it reports is a point the state machine has
//! already applied (not the commit index), so the data shipped with a snapshot — exported
//! from the live store — always covers the index its metadata names. The driver moves it
//! forward every few hundred applied entries to keep memory bounded; the WAL keeps older
//! entries until the state machine holds them durably. Applied entries past the newest
//! [`HELD_APPLIED_BYTES`] keep only index and term here and are read back from the WAL for a
//! follower that needs them, so the catch-up window costs little memory whatever the size
//! of its entries.

use std::path::PathBuf;

use ballast_storage::{Reader, RecordPos};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::limits::HELD_APPLIED_BYTES;
use crate::log::{RaftLog, Retained};

/// One entry of the log: whole, or (`logged`) only index and term with its data in the WAL.
#[derive(Clone)]
struct Slot {
    entry: Entry,
    /// Where the WAL holds it; unknown until the driver has saved it.
    pos: Option<RecordPos>,
    /// Its encoded size, which raft's message size limit counts.
    size: u64,
    logged: bool,
}

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
    entries: Vec<Slot>,
    /// The WAL's directory, to read logged entries from; without one all are held.
    wal_dir: Option<PathBuf>,
    /// Entries at or below this index are logged (never past the applied index).
    logged_to: u64,
}

impl LogStore {
    pub fn new(conf_state: ConfState) -> LogStore {
        LogStore {
            conf_state,
            ..Default::default()
        }
    }

    /// Lets applied entries be dropped from memory and read back from the WAL in `dir`.
    pub fn set_wal_dir(&mut self, dir: PathBuf) {
        self.wal_dir = Some(dir);
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
    pub fn retained(&self) -> impl Iterator<Item = Retained<'_>> {
        self.entries.iter().map(|s| match (s.logged, s.pos) {
            (true, Some(pos)) => Retained::Logged(pos),
            _ => Retained::Held(&s.entry),
        })
    }

    /// The first entry still held, if any.
    pub fn first_retained(&self) -> Option<u64> {
        self.entries.first().map(|s| s.entry.index)
    }

    /// Where the WAL now holds each retained entry, in order (after a rewrite).
    pub fn set_positions(&mut self, at: &[RecordPos]) {
        debug_assert_eq!(at.len(), self.entries.len());
        for (s, p) in self.entries.iter_mut().zip(at) {
            s.pos = Some(*p);
        }
    }

    fn first(&self) -> u64 {
        self.compacted.0 + 1
    }

    fn last(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }

    /// Appends entries, replacing any existing ones from the first new index on.
    #[cfg(test)]
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        self.append_at(ents, &[])
    }

    /// Appends entries the WAL holds at `at` (one position each, or none known).
    pub fn append_at(&mut self, ents: &[Entry], at: &[RecordPos]) -> Result<(), StorageError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first() {
            // Already covered by the snapshot: keep only what lies beyond it.
            let skip = (self.first() - first.index) as usize;
            return self.append_at(
                ents.get(skip..).unwrap_or(&[]),
                at.get(skip..).unwrap_or(&[]),
            );
        }
        if first.index > self.last() + 1 {
            return Err(StorageError::Unavailable);
        }
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.logged_to = self.logged_to.min(self.last());
        self.entries
            .extend(ents.iter().enumerate().map(|(i, e)| Slot {
                entry: e.clone(),
                pos: at.get(i).copied(),
                size: u64::from(protobuf::Message::compute_size(e)),
                logged: false,
            }));
        Ok(())
    }

    /// Appends the entries a restart read from the log; those it read as index and term only
    /// (at or below `rec.logged_to`) stay that way, read back from the WAL when asked for.
    pub fn recover(&mut self, rec: &crate::log::Recovered) -> Result<(), StorageError> {
        self.append_at(&rec.entries, &rec.positions)?;
        let first = self.first();
        for ((e, size), pos) in rec.entries.iter().zip(&rec.sizes).zip(&rec.positions) {
            if e.index < first || e.index > rec.logged_to {
                continue;
            }
            if let Some(s) = self.entries.get_mut((e.index - first) as usize) {
                debug_assert_eq!(s.pos, Some(*pos));
                s.size = *size;
                s.logged = true;
                self.logged_to = self.logged_to.max(e.index);
            }
        }
        Ok(())
    }

    /// Records that the state machine has applied everything up to `meta.index`, and drops
    /// entries up to `keep` before it. Of the applied entries left, all but the newest
    /// [`HELD_APPLIED_BYTES`] keep only index and term in memory.
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
        self.log_applied();
    }

    /// Drops the data of applied entries older than the newest [`HELD_APPLIED_BYTES`], where
    /// the WAL holds them.
    fn log_applied(&mut self) {
        if self.wal_dir.is_none() {
            return;
        }
        let applied = self.snapshot.index.min(self.last());
        let from = self.logged_to.max(self.compacted.0);
        if applied <= from {
            return;
        }
        // Walk back from the applied index until the held bytes are spent.
        let (lo, hi) = (
            (from - self.compacted.0) as usize,
            (applied - self.compacted.0) as usize,
        );
        let mut held = 0u64;
        let mut upto = lo;
        for i in (lo..hi).rev() {
            held += self.entries[i].size;
            if held > HELD_APPLIED_BYTES {
                upto = i + 1;
                break;
            }
        }
        for s in &mut self.entries[lo..upto] {
            if s.pos.is_none() {
                break;
            }
            s.entry.data = Default::default();
            s.entry.context = Default::default();
            s.logged = true;
            self.logged_to = s.entry.index;
        }
        self.entries.shrink_to(self.entries.len() * 2);
    }

    /// Replaces the log with a received snapshot's position.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.entries.clear();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.compacted = (meta.index, meta.term);
        self.logged_to = meta.index;
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
            .map(|s| s.entry.term)
    }

    /// A slot's whole entry: held, or read back from the WAL (and checked to be the same
    /// index and term).
    fn whole(&self, s: &Slot, reader: &mut Option<Reader>) -> Option<Entry> {
        if !s.logged {
            return Some(s.entry.clone());
        }
        let (dir, pos) = (self.wal_dir.as_ref()?, s.pos?);
        match RaftLog::read_entry(reader.get_or_insert_with(|| Reader::new(dir)), pos) {
            Ok(e) if e.index == s.entry.index && e.term == s.entry.term => Some(e),
            Ok(e) => {
                tracing::error!(
                    index = s.entry.index,
                    found = e.index,
                    "wal holds another entry where one was written"
                );
                None
            }
            Err(e) => {
                tracing::error!(index = s.entry.index, error = %e, "cannot read an entry back from the wal");
                None
            }
        }
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
        let mut reader = None;
        for s in &self.entries[lo..hi] {
            size += s.size;
            // Always at least one entry, as raft-rs requires.
            if !out.is_empty() && size > max {
                break;
            }
            // One that cannot be read back is as good as compacted: raft sends the follower a
            // snapshot instead.
            out.push(
                self.whole(s, &mut reader)
                    .ok_or(raft::Error::Store(StorageError::Compacted))?,
            );
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

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A peer added after this point would ignore the snapshot ("not in the ConfState")
        // after it crossed the wire whole; raft asks again once the point has moved on.
        if to != raft::INVALID_ID && !in_conf(self.snapshot.get_conf_state(), to) {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut s = Snapshot::default();
        s.set_metadata(self.snapshot.clone());
        Ok(s)
    }
}

/// Whether `id` is a voter or learner of `cs` (either side of a joint configuration).
fn in_conf(cs: &ConfState, id: u64) -> bool {
    [
        cs.get_voters(),
        cs.get_learners(),
        cs.get_voters_outgoing(),
        cs.get_learners_next(),
    ]
    .iter()
    .any(|ids| ids.contains(&id))
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

    fn big(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 100 << 10].into(),
            ..Default::default()
        }
    }

    fn applied(index: u64, term: u64) -> SnapshotMetadata {
        SnapshotMetadata {
            index,
            term,
            ..Default::default()
        }
    }

    fn logged(s: &LogStore) -> usize {
        s.entries.iter().filter(|s| s.logged).count()
    }

    #[test]
    fn applied_entries_past_the_held_bytes_are_read_back_from_the_wal() {
        use crate::log::{MemberRecord, RaftLog};
        let d = tempfile::tempdir().unwrap();
        let member = MemberRecord {
            member_id: 1,
            cluster_id: 2,
        };
        let mut log = RaftLog::create(d.path(), member, &ConfState::default()).unwrap();
        let ents: Vec<Entry> = (1..=40).map(|i| big(i, 1)).collect();
        let at = log.save(&ents, None).unwrap();
        log.sync().unwrap();
        let mut s = LogStore::new(ConfState::default());
        s.set_wal_dir(d.path().to_path_buf());
        s.append_at(&ents, &at).unwrap();
        // Applied to 30 with the whole log kept: of 30 applied 100 KiB entries, the newest
        // 1 MiB (10) stay whole, the rest is read back; unapplied ones are never dropped.
        s.compact_to(applied(30, 1), 1000);
        assert_eq!(logged(&s), 20);
        assert!(s.entries[..20].iter().all(|s| s.entry.data.is_empty()));
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(s.entries(1, 41, None, ctx()).unwrap(), ents);
        // The message size limit still counts the logged entries' whole size.
        assert_eq!(s.entries(1, 41, 250 << 10, ctx()).unwrap().len(), 2);
        // A compaction rewrites them into a new segment and retires the old: still readable.
        let at = log
            .rewrite(
                0,
                member,
                &ConfState::default(),
                &HardState::default(),
                &applied(30, 1),
                s.retained(),
            )
            .unwrap();
        s.set_positions(&at);
        assert_eq!(s.entries(1, 41, None, ctx()).unwrap(), ents);
        // A restart skips what the snapshot record covers.
        let (_, rec) = RaftLog::open(d.path(), 0).unwrap();
        assert!(rec.entries == ents[30..]);
        // It reads applied entries as index and term only; the store reads them back.
        let (_, rec) = RaftLog::open(d.path(), 35).unwrap();
        assert!(rec.entries[..5].iter().all(|e| e.data.is_empty()));
        assert!(rec.entries[5..] == ents[35..]);
        let mut restarted = LogStore::new(ConfState::default());
        restarted.set_wal_dir(d.path().to_path_buf());
        restarted.apply_snapshot(rec.snapshot.clone());
        restarted.recover(&rec).unwrap();
        assert_eq!(logged(&restarted), 5);
        assert!(restarted.entries(31, 41, None, ctx()).unwrap() == ents[30..]);
        // The size limit counts them whole: two 100 KiB entries fit in 250 KiB.
        assert_eq!(
            restarted.entries(31, 41, 250 << 10, ctx()).unwrap().len(),
            2
        );
        // An entry that cannot be read back is as if compacted: raft sends a snapshot.
        s.entries[0].pos = Some(s.entries[5].pos.unwrap());
        assert!(matches!(
            s.entries(1, 3, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        // Without a WAL directory nothing is dropped.
        let mut held = LogStore::new(ConfState::default());
        held.append_at(&ents, &at).unwrap();
        held.compact_to(applied(40, 1), 1000);
        assert_eq!(logged(&held), 0);
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
        // A peer the point's configuration does not have waits for a later point.
        assert_eq!(
            s.snapshot(0, 7).err(),
            Some(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        let mut meta = SnapshotMetadata {
            index: 7,
            term: 3,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((vec![1], vec![7])));
        s.compact_to(meta, 2);
        assert_eq!(s.snapshot(0, 7).unwrap().get_metadata().index, 7);
    }
}
