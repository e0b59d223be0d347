//! The raft log on disk: raft entries, hard state and configuration as WAL records.

use std::path::Path;

use ballast_storage::{Reader, RecordPos, Wal, WalError};
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_MEMBER: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("wal record of kind {kind} does not decode: {reason}")]
    Decode { kind: u8, reason: String },
    #[error("wal has no member record; the data dir is not a Ballast member")]
    NoMember,
    #[error("cannot encode a wal record of kind {kind}: {reason}")]
    Encode { kind: u8, reason: String },
}

/// Identity written once when a member's log is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRecord {
    pub member_id: u64,
    pub cluster_id: u64,
}

/// Everything recovered from the log on restart.
pub struct Recovered {
    pub member: MemberRecord,
    pub conf_state: ConfState,
    pub hard_state: HardState,
    /// The last snapshot point: entries at or below it live only in the state machine.
    pub snapshot: SnapshotMetadata,
    /// Entries after the snapshot point. Those at or below `logged_to` hold only index and
    /// term: the state machine has applied them, and the WAL keeps them.
    pub entries: Vec<Entry>,
    /// Where each of `entries` lies in the log.
    pub positions: Vec<RecordPos>,
    /// Each entry's encoded size.
    pub sizes: Vec<u64>,
    pub logged_to: u64,
}

/// The fields of a logged `eraftpb.Entry` (its field numbers) a restart needs for applied
/// entries; prost skips the data without copying it.
#[derive(Clone, PartialEq, prost::Message)]
struct EntryHead {
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
}

pub struct RaftLog {
    wal: Wal,
}

/// An entry a compaction keeps: in memory, or only in the log (read back to rewrite it).
pub enum Retained<'a> {
    Held(&'a Entry),
    Logged(RecordPos),
}

fn decode<M: protobuf::Message>(kind: u8, data: &[u8]) -> Result<M, LogError> {
    M::parse_from_bytes(data).map_err(|e| LogError::Decode {
        kind,
        reason: e.to_string(),
    })
}

/// A message as a record's data. An encode error is returned, never written as an empty
/// record (which would read back as a default message).
fn encode<M: protobuf::Message>(kind: u8, m: &M) -> Result<Vec<u8>, LogError> {
    m.write_to_bytes().map_err(|e| LogError::Encode {
        kind,
        reason: e.to_string(),
    })
}

/// The identity record: member ID, cluster ID, u64 LE each.
fn member_bytes(member: MemberRecord) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&member.member_id.to_le_bytes());
    m[8..].copy_from_slice(&member.cluster_id.to_le_bytes());
    m
}

impl RaftLog {
    pub fn exists(dir: &Path) -> bool {
        Wal::exists(dir)
    }

    pub fn create(dir: &Path, member: MemberRecord, cs: &ConfState) -> Result<RaftLog, LogError> {
        let mut wal = Wal::create(dir)?;
        wal.append(KIND_MEMBER, &member_bytes(member))?;
        wal.append(KIND_CONF_STATE, &encode(KIND_CONF_STATE, cs)?)?;
        wal.sync()?;
        Ok(RaftLog { wal })
    }

    /// Removes the log in `dir`, and nothing else there.
    pub fn remove(dir: &Path) -> Result<(), LogError> {
        Wal::remove_all(dir)?;
        Ok(())
    }

    /// Opens the log in `dir`. Entries at or below `applied` (what the state machine holds)
    /// are recovered as index and term only: decoding every entry whole took most of a
    /// restart's time, for entries only a lagging follower may ever ask for again.
    pub fn open(dir: &Path, applied: u64) -> Result<(RaftLog, Recovered), LogError> {
        let mut member = None;
        let mut conf_state = ConfState::default();
        let mut hard_state = HardState::default();
        let mut snapshot = SnapshotMetadata::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut positions = Vec::new();
        let mut sizes = Vec::new();
        let (wal, _) = Wal::open_each(dir, |kind, data: &[u8], pos| {
            match kind {
                KIND_MEMBER => {
                    let b = data;
                    if b.len() != 16 {
                        return Err(LogError::Decode {
                            kind,
                            reason: "member record is not 16 bytes".into(),
                        });
                    }
                    let mut id = [0u8; 8];
                    let mut cid = [0u8; 8];
                    id.copy_from_slice(&b[..8]);
                    cid.copy_from_slice(&b[8..]);
                    member = Some(MemberRecord {
                        member_id: u64::from_le_bytes(id),
                        cluster_id: u64::from_le_bytes(cid),
                    });
                }
                KIND_CONF_STATE => conf_state = decode(kind, data)?,
                KIND_HARD_STATE => hard_state = decode(kind, data)?,
                KIND_SNAPSHOT => {
                    // Everything logged before a snapshot record is superseded by it; the
                    // entries after it follow as ordinary records.
                    snapshot = decode(kind, data)?;
                    entries.clear();
                    positions.clear();
                    sizes.clear();
                }
                KIND_ENTRY => {
                    let head = <EntryHead as prost::Message>::decode(data).map_err(|e| {
                        LogError::Decode {
                            kind,
                            reason: e.to_string(),
                        }
                    })?;
                    // Covered by the snapshot: the log store would drop it.
                    if head.index <= snapshot.index {
                        return Ok(());
                    }
                    let e = if head.index <= applied {
                        Entry {
                            index: head.index,
                            term: head.term,
                            ..Default::default()
                        }
                    } else {
                        decode(kind, data)?
                    };
                    // A later append at an index overwrites that index and everything after it.
                    let keep = entries.partition_point(|x| x.index < e.index);
                    entries.truncate(keep);
                    positions.truncate(keep);
                    sizes.truncate(keep);
                    entries.push(e);
                    positions.push(pos);
                    sizes.push(data.len() as u64);
                }
                other => {
                    return Err(LogError::Decode {
                        kind: other,
                        reason: "unknown record kind".into(),
                    })
                }
            }
            Ok(())
        })?;
        let member = member.ok_or(LogError::NoMember)?;
        Ok((
            RaftLog { wal },
            Recovered {
                member,
                conf_state,
                hard_state,
                snapshot,
                entries,
                positions,
                sizes,
                logged_to: applied,
            },
        ))
    }

    /// Appends entries and hard state; durable only after [`RaftLog::sync`]. Returns where
    /// each entry lies.
    pub fn save(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<Vec<RecordPos>, LogError> {
        let mut at = Vec::with_capacity(entries.len());
        for e in entries {
            at.push(self.wal.next_pos());
            self.wal.append(KIND_ENTRY, &encode(KIND_ENTRY, e)?)?;
        }
        if let Some(hs) = hs {
            self.wal
                .append(KIND_HARD_STATE, &encode(KIND_HARD_STATE, hs)?)?;
        }
        Ok(at)
    }

    /// The entry record at `pos`, as written there by [`RaftLog::save`].
    pub fn read_entry(reader: &mut Reader, pos: RecordPos) -> Result<Entry, LogError> {
        decode(KIND_ENTRY, &reader.read(pos, KIND_ENTRY)?)
    }

    /// Records a received snapshot's position; durable only after [`RaftLog::sync`].
    pub fn save_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogError> {
        self.wal
            .append(KIND_SNAPSHOT, &encode(KIND_SNAPSHOT, meta)?)?;
        Ok(())
    }

    /// Log compaction: writes everything still needed (identity, configuration, hard state,
    /// snapshot point, entries after it) into a fresh segment, makes it durable, then retires
    /// the older segments, keeping at most `max_files` segment files (`--max-wals`; 0: all).
    /// A crash at any point leaves a log that recovers to the same state. Returns where each
    /// entry now lies.
    pub fn rewrite<'a>(
        &mut self,
        max_files: usize,
        member: MemberRecord,
        cs: &ConfState,
        hs: &HardState,
        snapshot: &SnapshotMetadata,
        entries: impl Iterator<Item = Retained<'a>>,
    ) -> Result<Vec<RecordPos>, LogError> {
        // Everything is encoded, and every logged entry read and checked, before the cut, so
        // a failure leaves the log as it was. Logged entries are read again after it rather
        // than held: they are the ones memory is kept free of.
        let records = [
            (KIND_CONF_STATE, encode(KIND_CONF_STATE, cs)?),
            (KIND_SNAPSHOT, encode(KIND_SNAPSHOT, snapshot)?),
        ];
        // Held entries encoded; logged ones as where to read them (checked readable now).
        let mut plan: Vec<Result<Vec<u8>, RecordPos>> = Vec::new();
        let mut old = Reader::new(self.wal.dir());
        for e in entries {
            plan.push(match e {
                Retained::Held(e) => Ok(encode(KIND_ENTRY, e)?),
                Retained::Logged(pos) => {
                    old.read(pos, KIND_ENTRY)?;
                    Err(pos)
                }
            });
        }
        let hard = encode(KIND_HARD_STATE, hs)?;
        let seq = self.wal.cut()?;
        self.wal.append(KIND_MEMBER, &member_bytes(member))?;
        for (kind, data) in &records {
            self.wal.append(*kind, data)?;
        }
        let mut at = Vec::with_capacity(plan.len());
        for e in plan {
            at.push(self.wal.next_pos());
            match e {
                Ok(data) => self.wal.append(KIND_ENTRY, &data)?,
                Err(pos) => self.wal.append(KIND_ENTRY, &old.read(pos, KIND_ENTRY)?)?,
            }
        }
        self.wal.append(KIND_HARD_STATE, &hard)?;
        self.wal.sync()?;
        self.wal.retire_before(seq, max_files)?;
        Ok(at)
    }

    /// Records a configuration raft has applied; durable only after [`RaftLog::sync`].
    pub fn save_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError> {
        self.wal
            .append(KIND_CONF_STATE, &encode(KIND_CONF_STATE, cs)?)?;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), LogError> {
        self.wal.sync()?;
        Ok(())
    }
}
