//! etcd's write-ahead log (`member/wal/<seq>-<index>.wal`), read when a stopped etcd member is
//! converted in place: its identity, its raft hard state, and the entries a conversion needs
//! (those past the backend's consistent index, and the membership changes a caller asks for).
//!
//! The format, as etcd's `server/storage/wal` writes it: records framed by a little-endian
//! u64 whose low 56 bits are the record's length and whose top byte, when its high bit is set,
//! holds the padding (0-7 bytes) that keeps frames 8-byte aligned; each record a
//! `walpb.Record{type, crc, data}`; `crc` is CRC-32C over every record's data since the log
//! began, chained across files by a CRC record at the start of each file. A zero length ends
//! a file (etcd preallocates them with zeros). Types: 1 metadata (`etcdserverpb.Metadata`),
//! 2 entry (`raftpb.Entry`), 3 hard state, 4 CRC, 5 snapshot (`walpb.Snapshot`). A later entry
//! at an index replaces that index and everything after it.
//!
//! Invariant: the files are untrusted and never written; a record is checked against the
//! file's remaining size before anything is allocated for it, every record's CRC is checked,
//! and only a torn write at the very end of the last file (a frame cut short or holding a
//! zeroed sector, never acknowledged by etcd) ends the log early rather than failing.

use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;

/// The largest record read; etcd's entries are bounded by `--max-request-bytes`.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
/// The most entry bytes held from one log (the tail past the consistent index, and the
/// membership changes asked for).
pub const MAX_KEPT_BYTES: usize = 1 << 30;
/// etcd's sector size for torn-write detection.
const SECTOR: usize = 512;

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, optional, tag = "1")]
    kind: Option<i64>,
    #[prost(uint32, optional, tag = "2")]
    crc: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    data: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct Metadata {
    #[prost(uint64, optional, tag = "1")]
    node_id: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    cluster_id: Option<u64>,
}

/// `walpb.Snapshot`: a raft snapshot etcd took (its configuration only since etcd 3.5).
#[derive(Clone, PartialEq, Message)]
struct WalSnapshot {
    #[prost(uint64, optional, tag = "1")]
    index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    term: Option<u64>,
}

/// `raftpb.HardState`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct HardState {
    #[prost(uint64, optional, tag = "1")]
    pub term: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub vote: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub commit: Option<u64>,
}

/// `raftpb.Entry` (prost's getters `index()`, `term()`, `kind()`, `data()` read it). Types: 0
/// normal, 1 configuration change, 2 configuration change v2.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(int32, optional, tag = "1")]
    pub kind: Option<i32>,
    #[prost(uint64, optional, tag = "2")]
    pub term: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub index: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdWalError {
    #[error("cannot read etcd wal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no etcd wal files in {0}")]
    Missing(PathBuf),
    #[error("etcd wal {path} is damaged at offset {offset}: {reason}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("etcd wal files are not in sequence: {0}")]
    Sequence(String),
    #[error("etcd wal holds more than {MAX_KEPT_BYTES} bytes of entries to convert")]
    TooLarge,
}

/// What a conversion takes from etcd's log.
#[derive(Debug, Default)]
pub struct EtcdWal {
    pub member_id: u64,
    pub cluster_id: u64,
    pub hard_state: HardState,
    /// Snapshot records `(index, term)`, in log order.
    pub snapshots: Vec<(u64, u64)>,
    /// The lowest entry index the log still holds (1 when it holds the whole history).
    pub first_index: Option<u64>,
    /// The last entry index.
    pub last_index: u64,
    /// The term of the entry at `after` (the index asked for), when the log holds it.
    pub term_at_after: Option<u64>,
    /// Entries past `after`, and those at or below it that the caller kept, in index order,
    /// after etcd's overwrite rule.
    pub entries: Vec<Entry>,
}

/// etcd's WAL file names: `<seq:016x>-<index:016x>.wal`, in sequence order.
fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, EtcdWalError> {
    let io = |source| EtcdWalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io)? {
        let ent = ent.map_err(io)?;
        let name = ent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        let Some((seq, index)) = stem.split_once('-') else {
            continue;
        };
        if let (Ok(seq), Ok(_)) = (u64::from_str_radix(seq, 16), u64::from_str_radix(index, 16)) {
            files.push((seq, ent.path()));
        }
    }
    files.sort();
    for w in files.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(EtcdWalError::Sequence(format!(
                "{} follows {}",
                w[1].1.display(),
                w[0].1.display()
            )));
        }
    }
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Whether `dir` holds etcd WAL files.
pub fn exists(dir: &Path) -> bool {
    wal_files(dir).map(|f| !f.is_empty()).unwrap_or(false)
}

/// etcd's torn-write test: a record whose bytes, cut at the file's sector boundaries, hold a
/// sector-sized run of zeros was cut short by a crash.
fn torn(data: &[u8], file_offset: u64) -> bool {
    let mut pos = 0usize;
    let mut off = file_offset as usize;
    while pos < data.len() {
        let to_boundary = SECTOR - off % SECTOR;
        let end = (pos + to_boundary).min(data.len());
        let chunk = &data[pos..end];
        if chunk.len() == to_boundary && chunk.iter().all(|b| *b == 0) {
            return true;
        }
        off += end - pos;
        pos = end;
    }
    false
}

struct Reader<'a> {
    out: EtcdWal,
    crc: u32,
    after: u64,
    kept_bytes: usize,
    keep: &'a mut dyn FnMut(&Entry) -> bool,
    metadata: Option<Vec<u8>>,
}

impl Reader<'_> {
    fn record(&mut self, rec: Record) -> Result<(), String> {
        let kind = rec.kind.unwrap_or(0);
        let data = rec.data.unwrap_or_default();
        if kind == CRC {
            // The chain restarts from the value the previous file ended with; a reader that
            // starts at a later file (older ones purged) takes it as given, as etcd does.
            let want = rec.crc.unwrap_or(0);
            if self.crc != 0 && want != self.crc {
                return Err(format!("crc record {want:08x} != {:08x}", self.crc));
            }
            self.crc = want;
            return Ok(());
        }
        self.crc = crc32c::crc32c_append(self.crc, &data);
        if rec.crc != Some(self.crc) {
            return Err(format!(
                "record crc {:08x} != computed {:08x}",
                rec.crc.unwrap_or(0),
                self.crc
            ));
        }
        match kind {
            METADATA => {
                if self.metadata.as_ref().is_some_and(|m| *m != data) {
                    return Err("metadata differs between records".into());
                }
                let m = Metadata::decode(data.as_slice()).map_err(|e| e.to_string())?;
                self.out.member_id = m.node_id.unwrap_or(0);
                self.out.cluster_id = m.cluster_id.unwrap_or(0);
                self.metadata = Some(data);
            }
            ENTRY => self.entry(Entry::decode(data.as_slice()).map_err(|e| e.to_string())?)?,
            STATE => {
                let hs = HardState::decode(data.as_slice()).map_err(|e| e.to_string())?;
                // etcd saves an empty hard state with nothing to record; it changes nothing.
                if hs != HardState::default() {
                    self.out.hard_state = hs;
                }
            }
            SNAPSHOT => {
                let s = WalSnapshot::decode(data.as_slice()).map_err(|e| e.to_string())?;
                let (index, term) = (s.index.unwrap_or(0), s.term.unwrap_or(0));
                if index == self.after {
                    self.out.term_at_after = Some(term);
                }
                self.out.snapshots.push((index, term));
            }
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }

    fn entry(&mut self, e: Entry) -> Result<(), String> {
        let index = e.index();
        // A later entry at an index replaces it and everything after it.
        let cut = self.out.entries.partition_point(|k| k.index() < index);
        for dropped in self.out.entries.drain(cut..) {
            self.kept_bytes -= dropped.encoded_len();
        }
        if index < self.after {
            // Replaced below `after`: its term is looked up again when it comes.
            self.out.term_at_after = None;
        }
        self.out.first_index = Some(self.out.first_index.map_or(index, |f| f.min(index)));
        self.out.last_index = index;
        if index == self.after {
            self.out.term_at_after = Some(e.term());
        }
        if index > self.after || (self.keep)(&e) {
            if let Some(prev) = self.out.entries.last() {
                if index > self.after && prev.index() > self.after && prev.index() + 1 != index {
                    return Err(format!("entry {index} follows entry {}", prev.index()));
                }
            }
            self.kept_bytes += e.encoded_len();
            if self.kept_bytes > MAX_KEPT_BYTES {
                return Err(EtcdWalError::TooLarge.to_string());
            }
            self.out.entries.push(e);
        }
        Ok(())
    }
}

/// Reads every WAL file in `dir`. Entries past `after` are kept; those at or below it only
/// when `keep` says so.
pub fn read(
    dir: &Path,
    after: u64,
    keep: &mut dyn FnMut(&Entry) -> bool,
) -> Result<EtcdWal, EtcdWalError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(EtcdWalError::Missing(dir.to_path_buf()));
    }
    let mut r = Reader {
        out: EtcdWal::default(),
        crc: 0,
        after,
        kept_bytes: 0,
        keep,
        metadata: None,
    };
    let last_file = files.len() - 1;
    for (n, path) in files.iter().enumerate() {
        read_file(&mut r, path, n == last_file)?;
    }
    if let Some(first) = r.out.entries.iter().find(|e| e.index() > after) {
        if first.index() != after + 1 {
            return Err(EtcdWalError::Sequence(format!(
                "the log resumes at entry {} after the database's index {after}",
                first.index()
            )));
        }
    }
    Ok(r.out)
}

fn read_file(r: &mut Reader<'_>, path: &Path, last: bool) -> Result<(), EtcdWalError> {
    let io = |source| EtcdWalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    loop {
        let damaged = |offset: u64, reason: String| EtcdWalError::Damaged {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        if size - offset < 8 {
            return Ok(());
        }
        let mut head = [0u8; 8];
        input.read_exact(&mut head).map_err(io)?;
        let frame = u64::from_le_bytes(head);
        if frame == 0 {
            // The preallocated rest of the file.
            return Ok(());
        }
        let len = frame & !(0xff << 56);
        let pad = if frame >> 63 == 1 {
            (frame >> 56) & 7
        } else {
            0
        };
        let remaining = size - offset - 8;
        if len > MAX_RECORD_BYTES || len + pad > remaining {
            if last {
                // A frame cut short by a crash: etcd never acknowledged it.
                return Ok(());
            }
            return Err(damaged(
                offset,
                format!("record of {len} bytes past the file's end"),
            ));
        }
        let mut data = vec![0u8; (len + pad) as usize];
        input.read_exact(&mut data).map_err(io)?;
        let result = Record::decode(&data[..len as usize])
            .map_err(|e| e.to_string())
            .and_then(|rec| r.record(rec));
        if let Err(reason) = result {
            if last && torn(&data, offset + 8) {
                return Ok(());
            }
            return Err(damaged(offset, reason));
        }
        offset += 8 + len + pad;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes records as etcd's encoder does, CRCs chained; returns the file's bytes.
    pub(crate) struct Writer {
        pub bytes: Vec<u8>,
        pub crc: u32,
    }

    impl Writer {
        pub fn new(prev_crc: u32) -> Writer {
            let mut w = Writer {
                bytes: Vec::new(),
                crc: prev_crc,
            };
            w.frame(Record {
                kind: Some(CRC),
                crc: Some(prev_crc),
                data: None,
            });
            w
        }

        fn frame(&mut self, rec: Record) {
            let body = rec.encode_to_vec();
            let pad = (8 - body.len() % 8) % 8;
            let mut len = body.len() as u64;
            if pad != 0 {
                len |= (0x80 | pad as u64) << 56;
            }
            self.bytes.extend_from_slice(&len.to_le_bytes());
            self.bytes.extend_from_slice(&body);
            self.bytes.extend(std::iter::repeat_n(0u8, pad));
        }

        pub fn record(&mut self, kind: i64, data: Vec<u8>) {
            self.crc = crc32c::crc32c_append(self.crc, &data);
            self.frame(Record {
                kind: Some(kind),
                crc: Some(self.crc),
                data: Some(data),
            });
        }

        pub fn metadata(&mut self, member: u64, cluster: u64) {
            let m = Metadata {
                node_id: Some(member),
                cluster_id: Some(cluster),
            };
            self.record(METADATA, m.encode_to_vec());
        }

        pub fn entry(&mut self, index: u64, term: u64, kind: i32, data: Vec<u8>) {
            let e = Entry {
                kind: Some(kind),
                term: Some(term),
                index: Some(index),
                data: Some(data),
            };
            self.record(ENTRY, e.encode_to_vec());
        }

        pub fn state(&mut self, term: u64, vote: u64, commit: u64) {
            let hs = HardState {
                term: Some(term),
                vote: Some(vote),
                commit: Some(commit),
            };
            self.record(STATE, hs.encode_to_vec());
        }

        pub fn snapshot(&mut self, index: u64, term: u64) {
            let s = WalSnapshot {
                index: Some(index),
                term: Some(term),
            };
            self.record(SNAPSHOT, s.encode_to_vec());
        }

        /// The file as etcd leaves it: the records, then preallocated zeros.
        pub fn save(&self, dir: &Path, seq: u64, index: u64) -> PathBuf {
            let path = dir.join(format!("{seq:016x}-{index:016x}.wal"));
            let mut bytes = self.bytes.clone();
            bytes.resize(bytes.len() + 4096, 0);
            std::fs::write(&path, bytes).expect("write wal");
            path
        }
    }

    /// Two files: entries 1-4 at term 1, entry 4 replaced at term 2, then entry 5; with
    /// `tail`, a last 2000-byte entry 6 too.
    fn two_files(dir: &Path, tail: bool) -> PathBuf {
        let mut w = Writer::new(0);
        w.metadata(7, 9);
        w.snapshot(0, 0);
        for i in 1..=4 {
            w.entry(i, 1, 0, vec![i as u8]);
        }
        w.entry(4, 2, 0, vec![40]);
        w.state(2, 7, 4);
        w.save(dir, 0, 0);
        let mut w2 = Writer::new(w.crc);
        w2.metadata(7, 9);
        w2.entry(5, 2, 1, vec![50]);
        w2.state(2, 7, 5);
        if tail {
            w2.entry(6, 2, 0, vec![1; 2000]);
        }
        w2.save(dir, 1, 5)
    }

    #[test]
    fn reads_identity_state_and_the_entries_past_an_index() {
        let d = tempfile::tempdir().expect("tempdir");
        two_files(d.path(), false);
        let wal = read(d.path(), 3, &mut |e| e.kind == Some(1)).expect("read");
        assert_eq!((wal.member_id, wal.cluster_id), (7, 9));
        assert_eq!(
            (
                wal.hard_state.term,
                wal.hard_state.vote,
                wal.hard_state.commit
            ),
            (Some(2), Some(7), Some(5))
        );
        assert_eq!((wal.first_index, wal.last_index), (Some(1), 5));
        assert_eq!(wal.term_at_after, Some(1));
        let got: Vec<(u64, u64, Vec<u8>)> = wal
            .entries
            .iter()
            .map(|e| (e.index(), e.term(), e.data.clone().unwrap_or_default()))
            .collect();
        assert_eq!(got, vec![(4, 2, vec![40]), (5, 2, vec![50])]);
        assert_eq!(wal.snapshots, vec![(0, 0)]);
    }

    #[test]
    fn a_torn_tail_ends_the_log_and_damage_elsewhere_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        two_files(d.path(), false);
        let whole = read(d.path(), 3, &mut |_| false).expect("read");
        let last = two_files(d.path(), true);
        assert_eq!(
            read(d.path(), 3, &mut |_| false).expect("read").last_index,
            6
        );
        // A crash left a zeroed sector inside the last record: the log ends before it.
        let mut bytes = std::fs::read(&last).expect("read");
        let end = bytes.iter().rposition(|b| *b == 1).expect("tail entry");
        let sector = (end / SECTOR - 1) * SECTOR;
        bytes[sector..sector + SECTOR].fill(0);
        std::fs::write(&last, &bytes).expect("write");
        let torn = read(d.path(), 3, &mut |_| false).expect("a torn tail is the end");
        assert_eq!(torn.last_index, 5);
        assert_eq!(torn.entries, whole.entries);
        // A frame cut short at the file's end, likewise.
        bytes.truncate(end - 100);
        std::fs::write(&last, &bytes).expect("write");
        assert_eq!(
            read(d.path(), 3, &mut |_| false).expect("cut").last_index,
            5
        );

        // Damage in a file before the last is refused.
        let first = d.path().join(format!("{:016x}-{:016x}.wal", 0, 0));
        let mut bytes = std::fs::read(&first).expect("read");
        bytes[60] ^= 0xff;
        std::fs::write(&first, &bytes).expect("write");
        let err = read(d.path(), 3, &mut |_| false).expect_err("damaged");
        assert!(err.to_string().contains("is damaged at offset"), "{err}");
    }

    #[test]
    fn a_gap_after_the_index_and_missing_files_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::new(0);
        w.metadata(1, 1);
        w.entry(10, 1, 0, vec![]);
        w.save(d.path(), 0, 0);
        let err = read(d.path(), 3, &mut |_| false).expect_err("gap");
        assert!(err.to_string().contains("resumes at entry 10"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read(empty.path(), 0, &mut |_| false),
            Err(EtcdWalError::Missing(_))
        ));
        std::fs::write(d.path().join(format!("{:016x}-{:016x}.wal", 2, 0)), b"").expect("w");
        assert!(matches!(
            read(d.path(), 0, &mut |_| false),
            Err(EtcdWalError::Sequence(_))
        ));
    }

    proptest::proptest! {
        /// Any bytes in the files are an error or a log, never a panic or a huge allocation.
        #[test]
        fn damaged_files_never_panic(flips in proptest::collection::vec((0usize..4096, 0u8..=255), 1..16)) {
            let d = tempfile::tempdir().expect("tempdir");
            two_files(d.path(), true);
            for (seq, index) in [(0u64, 0u64), (1, 5)] {
                let p = d.path().join(format!("{seq:016x}-{index:016x}.wal"));
                let mut bytes = std::fs::read(&p).expect("read");
                for (at, v) in &flips {
                    let at = at % bytes.len();
                    bytes[at] ^= v;
                }
                std::fs::write(&p, bytes).expect("write");
            }
            let _ = read(d.path(), 2, &mut |_| true);
        }
    }
}
