//! Write-ahead log: segment files of length-prefixed, CRC32C-checked records.
//!
//! Record layout (little endian): `len: u32 | crc32c(kind ++ data): u32 | kind: u8 | data`.
//! `len` counts `kind ++ data`. Segments are named `{seq:016x}.wal`; each starts with a
//! record of kind [`KIND_SEGMENT_HEADER`] so an empty segment is still self-describing.
//!
//! Crash handling follows etcd: a damaged *tail* of the last segment is a torn write and is
//! truncated; damage anywhere else is corruption and is reported with file and offset.
//!
//! Space is reserved ahead of the records by writing zeros, [`RESERVE_STEP`] at a time: an
//! `fdatasync` then has only data to write, no new file size and no extent to convert (what
//! etcd's `fallocate` leaves it), which here takes a third of its time off.
//! The open segment's reserved rest reads as zeros, which mark the end of the log; a segment
//! is cut to its records when it is sealed, so sealed segments stay whole.
//! See `docs/wal.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::failpoint;
use crate::limits::{MAX_RECORD_BYTES, SEGMENT_BYTES};

/// Zeros written at a time to reserve a segment's space (the file length stays a multiple).
pub const RESERVE_STEP: u64 = 256 << 10;
/// How far ahead of the records the reserved space reaches.
const RESERVE_AHEAD: u64 = 1 << 20;
static ZEROS: [u8; RESERVE_STEP as usize] = [0; RESERVE_STEP as usize];
/// Reserved record kind written first in every segment.
pub const KIND_SEGMENT_HEADER: u8 = 0;
const HEADER_LEN: usize = 8;
const SEGMENT_MAGIC: &[u8] = b"ballast-wal-v1";
/// A segment a compaction superseded, kept for `--max-wals` (`{seq:016x}.wal.retired`).
const RETIRED_SUFFIX: &str = ".wal.retired";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("wal corrupt: {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("wal record of {0} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge(usize),
    #[error("wal kind {0} is reserved")]
    ReservedKind(u8),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub data: Vec<u8>,
    /// Where it lies, to read it again with a [`Reader`].
    pub pos: RecordPos,
}

/// Where a record lies: its segment's number and the offset of its header there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordPos {
    pub seq: u64,
    pub offset: u64,
}

/// What [`Wal::open`] found besides the records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Set when a torn tail was cut off: (segment, offset it was truncated to).
    pub truncated: Option<(PathBuf, u64)>,
}

pub struct Wal {
    dir: PathBuf,
    seq: u64,
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    /// Everything below is records or written zeros; reserved space past `size` reads as zeros.
    allocated: u64,
}

/// Reads records back where they were written and synced: the raft log keeps only recent
/// entries in memory and reads older ones for followers that need them. Keeps the last
/// segment it opened, as reads come in runs. A record's length is checked before
/// allocating, its CRC and kind after; anything else at a position (a segment since retired,
/// damage) is an error, never other data.
pub struct Reader {
    dir: PathBuf,
    open: Option<(u64, File)>,
}

impl Reader {
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            open: None,
        }
    }

    pub fn read(&mut self, pos: RecordPos, kind: u8) -> Result<Vec<u8>, WalError> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(segment_name(pos.seq));
        let corrupt = |reason| WalError::Corrupt {
            path: path.clone(),
            offset: pos.offset,
            reason,
        };
        let f = match &mut self.open {
            Some((seq, f)) if *seq == pos.seq => f,
            open => {
                &open
                    .insert((pos.seq, File::open(&path).map_err(io_err(&path))?))
                    .1
            }
        };
        let mut buf = vec![0u8; HEADER_LEN];
        f.read_exact_at(&mut buf, pos.offset)
            .map_err(io_err(&path))?;
        let len = record_len(&buf).ok_or_else(|| corrupt("invalid record length"))?;
        buf.resize(HEADER_LEN + len, 0);
        f.read_exact_at(&mut buf[HEADER_LEN..], pos.offset + HEADER_LEN as u64)
            .map_err(io_err(&path))?;
        match decode_at(&buf, 0) {
            Decoded::Record(k, data, _) if k == kind => {
                buf.truncate(data.end);
                buf.drain(..data.start);
                Ok(buf)
            }
            Decoded::Record(..) => Err(corrupt("not the record kind expected there")),
            Decoded::Bad(reason, _) => Err(corrupt(reason)),
            Decoded::End => Err(corrupt("invalid record length")),
        }
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn encode_into(buf: &mut Vec<u8>, kind: u8, data: &[u8]) {
    let len = (data.len() + 1) as u32;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, data);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(data);
}

/// Writes zeros over `[from, to)`; returns how far it got. Records only ever go below `from`,
/// so this never touches data. A failure (a full disk) only costs the speed-up: records then
/// extend the file themselves, and their own write reports the error.
fn reserve(f: &File, from: u64, to: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut at = from;
    while at < to {
        let n = (to - at).min(RESERVE_STEP) as usize;
        if f.write_all_at(&ZEROS[..n], at).is_err() {
            break;
        }
        at += n as u64;
    }
    at
}

/// Where reserving for records that end at `end` should reach.
fn reserve_target(end: u64) -> u64 {
    (end + RESERVE_AHEAD).div_ceil(RESERVE_STEP) * RESERVE_STEP
}

/// A segment's bytes, less the whole zero chunks after its last data (the open segment's
/// reserved rest: not held in memory), and the file's length.
fn read_segment(path: &Path) -> Result<(Vec<u8>, u64), WalError> {
    const CHUNK: usize = 1 << 20;
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    // Compared as slices (memcmp): a byte loop over reserved zeros is slow unoptimized.
    let zero = vec![0u8; CHUNK];
    let (mut zeros, mut len) = (0usize, 0u64);
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        len += n as u64;
        if chunk[..n] == zero[..n] {
            zeros += n;
        } else {
            buf.resize(buf.len() + zeros, 0);
            zeros = 0;
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok((buf, len))
}

/// fsync a directory so a created or renamed file's entry survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

enum Decoded {
    /// A record: its kind, where its data lies in the buffer, and its whole length.
    Record(u8, std::ops::Range<usize>, usize),
    /// Only zeros from here on.
    End,
    /// Damage; the bool says whether it looks like a torn write (nothing valid can follow).
    Bad(&'static str, bool),
}

/// The length a record header (at least [`HEADER_LEN`] bytes) announces, if one can be valid:
/// checked before anything is allocated for it.
fn record_len(head: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (len != 0 && len <= MAX_RECORD_BYTES + 1).then_some(len)
}

fn decode_at(buf: &[u8], off: usize) -> Decoded {
    let rest = &buf[off..];
    if rest.iter().all(|b| *b == 0) {
        return Decoded::End;
    }
    if rest.len() < HEADER_LEN {
        return Decoded::Bad("short record header", true);
    }
    let Some(len) = record_len(rest) else {
        return Decoded::Bad("invalid record length", false);
    };
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if rest.len() < HEADER_LEN + len {
        // A record cut short by the end of the file can only be a torn append.
        return Decoded::Bad("record extends past end of file", true);
    }
    let body = &rest[HEADER_LEN..HEADER_LEN + len];
    if crc32c::crc32c(body) != crc {
        let is_last = rest.len() == HEADER_LEN + len;
        let zero_after = rest[HEADER_LEN + len..].iter().all(|b| *b == 0);
        return Decoded::Bad("crc mismatch", is_last || zero_after);
    }
    let start = off + HEADER_LEN + 1;
    Decoded::Record(body[0], start..off + HEADER_LEN + len, HEADER_LEN + len)
}

impl Wal {
    /// Whether `dir` already holds a log.
    pub fn exists(dir: &Path) -> bool {
        Self::segments(dir).map(|s| !s.is_empty()).unwrap_or(false)
    }

    fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
        Self::numbered(dir, ".wal")
    }

    /// Files in `dir` named `{seq:016x}{suffix}`, by sequence number; none if `dir` is absent.
    fn numbered(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, WalError> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(dir)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err(dir))?;
            let name = ent.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
                continue;
            };
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                out.push((seq, ent.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates a new, empty log in `dir` (which must not hold one).
    pub fn create(dir: &Path) -> Result<Wal, WalError> {
        crate::private::create_dir_all(dir).map_err(io_err(dir))?;
        let wal = Self::start_segment(dir, 0)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_err(parent))?;
        }
        Ok(wal)
    }

    fn start_segment(dir: &Path, seq: u64) -> Result<Wal, WalError> {
        let path = dir.join(segment_name(seq));
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let mut f = crate::private::create_file(&tmp).map_err(io_err(&tmp))?;
        let mut buf = Vec::new();
        encode_into(&mut buf, KIND_SEGMENT_HEADER, SEGMENT_MAGIC);
        f.write_all(&buf).map_err(io_err(&tmp))?;
        let at = buf.len() as u64;
        let allocated = reserve(&f, at, reserve_target(at));
        f.sync_all().map_err(io_err(&tmp))?;
        // Rename only once the header is durable, so a crash never leaves a headerless segment.
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir).map_err(io_err(dir))?;
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(buf.len() as u64))
            .map_err(io_err(&path))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            seq,
            path,
            out: BufWriter::with_capacity(256 << 10, f),
            size: buf.len() as u64,
            allocated,
        })
    }

    /// [`Wal::open_each`], collecting every record (the tests' view of a log).
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Record>, OpenReport), WalError> {
        let mut records = Vec::new();
        let (wal, report) = Self::open_each(dir, |kind, data: &[u8], pos| {
            records.push(Record {
                kind,
                data: data.to_vec(),
                pos,
            });
            Ok::<_, WalError>(())
        })?;
        Ok((wal, records, report))
    }

    /// Opens an existing log, handing each record to `visit` in order as it is read, without
    /// copying it (a restart read 125 MiB of log, and copying every record out cost more than
    /// reading it). A torn tail of the last segment is truncated (and reported); any other
    /// damage is [`WalError::Corrupt`].
    pub fn open_each<E: From<WalError>>(
        dir: &Path,
        mut visit: impl FnMut(u8, &[u8], RecordPos) -> Result<(), E>,
    ) -> Result<(Wal, OpenReport), E> {
        let segs = Self::segments(dir)?;
        let Some(&(last_seq, _)) = segs.last() else {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: "no wal segments",
            }
            .into());
        };
        let mut report = OpenReport::default();
        let (mut last_size, mut last_len) = (0u64, 0u64);
        for (i, (seq, path)) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            let (mut buf, mut file_len) = read_segment(path)?;
            let mut off = 0usize;
            let mut first = true;
            while off < buf.len() {
                match decode_at(&buf, off) {
                    // A record may end in zeros that were not read: put them back, try again.
                    Decoded::Bad(..) if (buf.len() as u64) < file_len => {
                        let more = (file_len - buf.len() as u64).min(1 << 20) as usize;
                        buf.resize(buf.len() + more, 0);
                    }
                    // The reserved rest of the open segment: the log ends here.
                    Decoded::End if is_last && !first => buf.truncate(off),
                    Decoded::End => {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: off as u64,
                            reason: if first {
                                "bad segment header"
                            } else {
                                "zeros in a sealed segment"
                            },
                        }
                        .into());
                    }
                    Decoded::Record(kind, data, n) => {
                        let pos = RecordPos {
                            seq: *seq,
                            offset: off as u64,
                        };
                        let data = &buf[data];
                        if first {
                            if kind != KIND_SEGMENT_HEADER || data != SEGMENT_MAGIC {
                                return Err(WalError::Corrupt {
                                    path: path.clone(),
                                    offset: 0,
                                    reason: "bad segment header",
                                }
                                .into());
                            }
                        } else if kind == KIND_SEGMENT_HEADER {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset: off as u64,
                                reason: "segment header in mid-segment",
                            }
                            .into());
                        } else {
                            visit(kind, data, pos)?;
                        }
                        first = false;
                        off += n;
                    }
                    Decoded::Bad(reason, torn) => {
                        if !(is_last && torn && !first) {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset: off as u64,
                                reason,
                            }
                            .into());
                        }
                        tracing::warn!(
                            file = %path.display(),
                            offset = off,
                            reason,
                            "truncating torn wal tail"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(io_err(path))?;
                        f.set_len(off as u64).map_err(io_err(path))?;
                        f.sync_all().map_err(io_err(path))?;
                        report.truncated = Some((path.clone(), off as u64));
                        file_len = off as u64;
                        buf.truncate(off);
                        break;
                    }
                }
            }
            if first {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: "empty segment",
                }
                .into());
            }
            if !is_last && (buf.len() as u64) < file_len {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: buf.len() as u64,
                    reason: "zeros in a sealed segment",
                }
                .into());
            }
            if *seq == last_seq {
                last_size = buf.len() as u64;
                last_len = file_len;
            }
        }
        let path = dir.join(segment_name(last_seq));
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(last_size)).map_err(io_err(&path))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            seq: last_seq,
            path,
            out: BufWriter::with_capacity(256 << 10, f),
            size: last_size,
            allocated: last_len,
        };
        Ok((wal, report))
    }

    /// Where the next appended record will lie.
    pub fn next_pos(&self) -> RecordPos {
        RecordPos {
            seq: self.seq,
            offset: self.size,
        }
    }

    /// Buffers one record. Not durable until [`Wal::sync`] returns.
    pub fn append(&mut self, kind: u8, data: &[u8]) -> Result<(), WalError> {
        if kind == KIND_SEGMENT_HEADER {
            return Err(WalError::ReservedKind(kind));
        }
        if data.len() > MAX_RECORD_BYTES {
            return Err(WalError::RecordTooLarge(data.len()));
        }
        failpoint::io("wal-write").map_err(io_err(&self.path))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + 1 + data.len());
        encode_into(&mut buf, kind, data);
        let end = self.size + buf.len() as u64;
        if end + RESERVE_AHEAD / 2 > self.allocated {
            // The next sync also writes these zeros and the grown size: one sync in dozens.
            let from = self.allocated.max(end);
            self.allocated = reserve(self.out.get_ref(), from, reserve_target(end)).max(end);
        }
        self.out.write_all(&buf).map_err(io_err(&self.path))?;
        self.size += buf.len() as u64;
        crate::stats::WAL_WRITE_BYTES
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes every appended record durable (one fdatasync for all of them: group commit),
    /// then rolls to a new segment if this one is full.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if failpoint::enabled("break-skip-wal-sync") {
            return Ok(());
        }
        failpoint::io("wal-fsync").map_err(io_err(&self.path))?;
        let started = std::time::Instant::now();
        self.out.flush().map_err(io_err(&self.path))?;
        crate::stats::WAL_WRITE.observe(started.elapsed());
        let started = std::time::Instant::now();
        self.out.get_ref().sync_data().map_err(io_err(&self.path))?;
        crate::stats::WAL_FSYNC.observe(started.elapsed());
        if self.size >= SEGMENT_BYTES {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals this segment at its last record and continues in the next one. The reserved
    /// rest is cut first: only the last segment may end in zeros, so a sealed one that kept
    /// them would read back as corrupt.
    fn roll(&mut self) -> Result<(), WalError> {
        self.out.flush().map_err(io_err(&self.path))?;
        let f = self.out.get_ref();
        f.set_len(self.size).map_err(io_err(&self.path))?;
        f.sync_all().map_err(io_err(&self.path))?;
        *self = Self::start_segment(&self.dir, self.seq + 1)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes what was appended durable and continues in a fresh segment, returning its number.
    /// With [`Wal::retire_before`] this lets a caller rewrite everything still needed into the
    /// new segment and drop the old ones (log compaction).
    pub fn cut(&mut self) -> Result<u64, WalError> {
        self.roll()?;
        Ok(self.seq)
    }

    /// Deletes every segment of the log in `dir`, the retired ones too (and a segment left
    /// half-created), touching no other file there.
    pub fn remove_all(dir: &Path) -> Result<(), WalError> {
        for (seq, path) in Self::segments(dir)? {
            fs::remove_file(&path).map_err(io_err(&path))?;
            let _ = fs::remove_file(dir.join(format!("{}.tmp", segment_name(seq))));
        }
        for (_, path) in Self::retired(dir)? {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let _ = fs::remove_file(dir.join(format!("{}.tmp", segment_name(0))));
        if dir.exists() {
            sync_dir(dir).map_err(io_err(dir))?;
        }
        Ok(())
    }

    /// Segments a compaction superseded and [`Wal::retire_before`] kept, oldest first.
    pub fn retired(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
        Self::numbered(dir, RETIRED_SUFFIX)
    }

    /// Segments numbered below `seq` are superseded (the caller made everything still needed
    /// durable in a later segment). They are renamed out of the log, so recovery never reads
    /// them, and kept as etcd keeps old WAL files: while the log's segments and the retired
    /// ones number at most `max_files` (`--max-wals`; 0 keeps them all), the oldest retired
    /// going first. Returns how many were deleted.
    pub fn retire_before(&self, seq: u64, max_files: usize) -> Result<usize, WalError> {
        let mut live = 0usize;
        for (s, path) in Self::segments(&self.dir)? {
            if s < seq {
                let to = self.dir.join(format!("{s:016x}{RETIRED_SUFFIX}"));
                fs::rename(&path, &to).map_err(io_err(&path))?;
            } else {
                live += 1;
            }
        }
        let retired = Self::retired(&self.dir)?;
        let excess = match max_files {
            0 => 0,
            max => (live + retired.len())
                .saturating_sub(max)
                .min(retired.len()),
        };
        for (_, path) in &retired[..excess] {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(excess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compacts `n` times: each rewrite cuts, appends the record and retires what came before.
    fn compact(w: &mut Wal, n: usize, max_files: usize) -> usize {
        let mut deleted = 0;
        for i in 0..n {
            let seq = w.cut().unwrap();
            w.append(1, format!("new{i}").as_bytes()).unwrap();
            w.sync().unwrap();
            deleted += w.retire_before(seq, max_files).unwrap();
        }
        deleted
    }

    #[test]
    fn retired_segments_are_never_read_back_and_are_kept_up_to_max_files() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        w.append(1, b"old").unwrap();
        // Six compactions with room for five files: one live segment, four retired.
        assert_eq!(compact(&mut w, 6, 5), 2);
        drop(w);
        let retired: Vec<u64> = Wal::retired(d.path())
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(retired, vec![2, 3, 4, 5]);
        let (mut w, recs, _) = Wal::open(d.path()).unwrap();
        let data: Vec<&[u8]> = recs.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, vec![b"new5".as_slice()]);
        // 0 keeps every superseded segment; 1 keeps none beside the live one.
        assert_eq!(compact(&mut w, 3, 0), 0);
        assert_eq!(Wal::retired(d.path()).unwrap().len(), 7);
        assert_eq!(compact(&mut w, 1, 1), 8);
        assert!(Wal::retired(d.path()).unwrap().is_empty());
        drop(w);
        Wal::remove_all(d.path()).unwrap();
        compact(&mut Wal::create(d.path()).unwrap(), 2, 0);
        Wal::remove_all(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    fn write(dir: &Path, recs: &[(u8, &[u8])]) {
        let mut w = Wal::create(dir).unwrap();
        for (k, d) in recs {
            w.append(*k, d).unwrap();
        }
        w.sync().unwrap();
    }

    fn seg0(dir: &Path) -> PathBuf {
        dir.join(segment_name(0))
    }

    #[test]
    fn a_record_is_read_back_where_it_was_written_and_nothing_else_is() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        let a = w.next_pos();
        w.append(1, b"first").unwrap();
        let b = w.next_pos();
        w.append(2, b"second").unwrap();
        w.sync().unwrap();
        assert_eq!(Reader::new(d.path()).read(a, 1).unwrap(), b"first");
        assert_eq!(Reader::new(d.path()).read(b, 2).unwrap(), b"second");
        // Positions match what opening the log reports.
        let (_, recs, _) = Wal::open(d.path()).unwrap();
        assert_eq!((recs[0].pos, recs[1].pos), (a, b));
        // Another kind, an offset inside a record, a flipped byte: errors, never other data.
        assert!(Reader::new(d.path()).read(b, 1).is_err());
        let inside = RecordPos {
            offset: b.offset + 3,
            ..b
        };
        assert!(Reader::new(d.path()).read(inside, 2).is_err());
        let mut f = OpenOptions::new().write(true).open(seg0(d.path())).unwrap();
        f.seek(SeekFrom::Start(b.offset + 10)).unwrap();
        f.write_all(b"X").unwrap();
        drop(f);
        assert!(matches!(
            Reader::new(d.path()).read(b, 2),
            Err(WalError::Corrupt { .. })
        ));
        // A segment a compaction retired is gone for reads.
        let seq = w.cut().unwrap();
        w.retire_before(seq, 0).unwrap();
        assert!(matches!(
            Reader::new(d.path()).read(a, 1),
            Err(WalError::Io { .. })
        ));
    }

    #[test]
    fn roundtrip_and_reopen_append() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[(1, b"a"), (2, b"bb")]);
        let (mut w, recs, rep) = Wal::open(d.path()).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            recs[1],
            Record {
                kind: 2,
                data: b"bb".to_vec(),
                pos: RecordPos {
                    seq: 0,
                    offset: recs[0].pos.offset + 8 + 2,
                }
            }
        );
        assert!(rep.truncated.is_none());
        w.append(3, b"ccc").unwrap();
        w.sync().unwrap();
        let (_, recs, _) = Wal::open(d.path()).unwrap();
        assert_eq!(recs.len(), 3);
    }

    #[test]
    fn torn_tail_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        w.append(1, b"first").unwrap();
        w.append(1, b"second").unwrap();
        w.sync().unwrap();
        let end = w.size;
        drop(w);
        let p = seg0(d.path());
        // The last record's end never reached the disk, as after a crash mid-append: its bytes
        // read as the reserved zeros.
        let mut f = OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(end - 3)).unwrap();
        f.write_all(&[0, 0, 0]).unwrap();
        drop(f);
        let (_, recs, rep) = Wal::open(d.path()).unwrap();
        let kept: Vec<(u8, &[u8])> = recs.iter().map(|r| (r.kind, r.data.as_slice())).collect();
        assert_eq!(kept, vec![(1, b"first".as_slice())]);
        let (_, at) = rep.truncated.unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), at);
    }

    #[test]
    fn zeros_after_the_records_are_the_end_of_the_log() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[(1, b"x")]);
        let p = seg0(d.path());
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        let (mut w, recs, rep) = Wal::open(d.path()).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(
            rep.truncated.is_none(),
            "unwritten space is not a torn write"
        );
        // Writing goes on right after the last record, over the zeros.
        w.append(1, b"y").unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, recs, _) = Wal::open(d.path()).unwrap();
        let data: Vec<&[u8]> = recs.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, vec![b"x".as_slice(), b"y".as_slice()]);
    }

    #[test]
    fn segment_space_is_reserved_and_records_ending_in_zeros_survive() {
        let d = tempfile::tempdir().unwrap();
        // Longer than a read chunk, all zeros but for the kind byte: a reader that took the
        // zeros for the end of the log would cut it off as a torn write.
        let zeros = vec![0u8; 3 << 20];
        write(d.path(), &[(1, b"a"), (2, &zeros)]);
        let len = fs::metadata(seg0(d.path())).unwrap().len();
        assert!(
            len > (3 << 20),
            "segment of {len} bytes has no reserved space"
        );
        assert_eq!(len % RESERVE_STEP, 0);
        let (mut w, recs, rep) = Wal::open(d.path()).unwrap();
        assert!(rep.truncated.is_none());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].data, zeros);
        w.append(3, b"b").unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, recs, _) = Wal::open(d.path()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].data, b"b");
    }

    #[test]
    fn a_segment_sealed_early_keeps_no_zeros() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        w.append(1, b"old").unwrap();
        w.cut().unwrap();
        w.append(1, b"new").unwrap();
        w.sync().unwrap();
        drop(w);
        assert!(fs::metadata(seg0(d.path())).unwrap().len() < 100);
        let (_, recs, _) = Wal::open(d.path()).unwrap();
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn a_full_segment_rolls_over_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        // Records that do not end on a preallocation boundary, so the roll comes mid-step.
        let rec = vec![7u8; (1 << 20) + 123];
        let n = (SEGMENT_BYTES / rec.len() as u64) + 1;
        for _ in 0..n {
            w.append(1, &rec).unwrap();
            w.sync().unwrap();
        }
        w.append(2, b"after").unwrap();
        w.sync().unwrap();
        drop(w);
        assert_eq!(Wal::segments(d.path()).unwrap().len(), 2);
        let (_, recs, rep) = Wal::open(d.path()).unwrap();
        assert!(rep.truncated.is_none());
        assert_eq!(recs.len() as u64, n + 1);
        assert_eq!(recs[n as usize].data, b"after");
    }

    #[test]
    fn zeros_in_a_sealed_segment_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[(1, b"first")]);
        // Segment 0 keeps its reserved rest, as if sealed without being cut.
        Wal::start_segment(d.path(), 1).unwrap();
        assert!(matches!(
            Wal::open(d.path()),
            Err(WalError::Corrupt {
                reason: "zeros in a sealed segment",
                ..
            })
        ));
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_naming_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[(1, b"first"), (1, b"second"), (1, b"third")]);
        let p = seg0(d.path());
        let mut bytes = fs::read(&p).unwrap();
        let hdr = HEADER_LEN + 1 + SEGMENT_MAGIC.len();
        let second = hdr + HEADER_LEN + 1 + 5;
        bytes[second + HEADER_LEN + 2] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        match Wal::open(d.path()) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, p);
                assert_eq!(offset, second as u64);
            }
            other => panic!("expected corruption, got {:?}", other.map(|r| r.1)),
        }
    }

    #[test]
    fn damage_in_a_sealed_segment_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        w.append(1, b"first").unwrap();
        // A later segment makes segment 0 sealed: its tail cannot be a torn write.
        w.cut().unwrap();
        drop(w);
        let p = seg0(d.path());
        let len = fs::metadata(&p).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(matches!(Wal::open(d.path()), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn reserved_kind_and_oversize_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::create(d.path()).unwrap();
        assert!(matches!(w.append(0, b""), Err(WalError::ReservedKind(0))));
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            w.append(1, &big),
            Err(WalError::RecordTooLarge(_))
        ));
    }

    proptest::proptest! {
        // Arbitrary bytes appended to a valid log never panic the reader, and never lose the
        // valid prefix: they are either truncated as a torn tail or reported as corruption.
        #[test]
        fn random_tail_never_panics(recs in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..64), 1..8),
                                    junk in proptest::collection::vec(0u8..=255, 0..128)) {
            let d = tempfile::tempdir().unwrap();
            let mut w = Wal::create(d.path()).unwrap();
            for r in &recs { w.append(1, r).unwrap(); }
            w.sync().unwrap();
            let end = w.size;
            drop(w);
            // Right after the records, where a torn append would leave it.
            let p = seg0(d.path());
            let mut f = OpenOptions::new().write(true).open(&p).unwrap();
            f.seek(SeekFrom::Start(end)).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            if let Ok((_, got, _)) = Wal::open(d.path()) {
                proptest::prop_assert!(got.len() >= recs.len());
                for (g, r) in got.iter().zip(recs.iter()) {
                    proptest::prop_assert_eq!(&g.data, r);
                }
            }
        }
    }
}
