//! Snapshot files, as `Maintenance.Snapshot` streams them and `snapshot save` writes them: the
//! store's export stream (records, then an end record with a count and CRC32C) followed by the
//! SHA-256 of everything before it, as etcd appends one to its database file.
//!
//! Reading one back never trusts it: sizes are checked before allocating, the end record's
//! checksum must match, and the trailer must be the hash of the rest.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ballast_storage::{Backend, SnapRecord, SnapshotReader};
use sha2::{Digest, Sha256};

use crate::mvcc::{META_APPLIED, META_INDEX_REV, META_INDEX_SUM, META_REV};

/// Bytes of the trailing SHA-256.
pub const HASH_LEN: usize = 32;

/// Writes a snapshot of `mvcc` to `out` as etcd's own snapshot files are: the store as an
/// etcd database (bbolt, etcd's schema; whole 4 KiB pages, so etcdctl finds the hash after
/// whole 512-byte pages), then the SHA-256 of it. etcd's tools take it, and so does Ballast's
/// restore. `size` learns the total length (trailer included) before the first byte.
pub fn write(
    mvcc: &crate::Mvcc,
    size: &mut dyn FnMut(u64) -> std::io::Result<()>,
    out: &mut dyn std::io::Write,
) -> Result<(), crate::KvError> {
    struct Hashing<'a> {
        out: &'a mut dyn std::io::Write,
        hasher: Sha256,
    }
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(b)?;
            self.hasher.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let mut w = Hashing {
        out,
        hasher: Sha256::new(),
    };
    crate::etcd_db::write(mvcc, &mut |n| size(n + HASH_LEN as u64), &mut w)?;
    let io = |e: std::io::Error| crate::KvError::Corrupt(format!("writing snapshot: {e}"));
    let Hashing { out, hasher } = w;
    out.write_all(&hasher.finalize()).map_err(io)?;
    out.flush().map_err(io)
}

#[derive(Debug, thiserror::Error)]
pub enum SnapFileError {
    #[error("{0}")]
    Io(String),
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {expected:?}, got {got:?}")]
    HashMismatch { expected: Vec<u8>, got: Vec<u8> },
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(String),
}

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapStatus {
    /// CRC32C of every record: equal for equal stores.
    pub hash: u32,
    pub revision: i64,
    /// Keys alive at the snapshot's revision, as etcdutl 3.7 counts them.
    pub total_keys: u64,
    /// Bytes of the store's data (the file without its hash).
    pub total_size: u64,
    /// The storage version the file records (etcd 3.6+'s `meta/storageVersion`), if any.
    pub version: Option<String>,
}

/// The keys alive at the end of a walk over revisions in order: a put adds its key, a
/// tombstone removes it (etcdutl 3.7's count). Keys are held as 64-bit hashes, 8 bytes each
/// whatever their length; two live keys sharing a hash (odds ~1e-8 at a million keys) would be
/// counted once.
#[derive(Default)]
pub(crate) struct LiveKeys(std::collections::HashSet<u64>);

impl LiveKeys {
    pub(crate) fn saw(&mut self, key: &[u8], tombstone: bool) {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same count on every run.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let h = h.finish();
        if tombstone {
            self.0.remove(&h);
        } else {
            self.0.insert(h);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.len() as u64
    }
}

/// An OS error worded as Go words it (`stat FILE: no such file or directory`), since
/// operators and scripts match etcdctl's messages.
fn io(path: &Path, e: std::io::Error) -> SnapFileError {
    io_op("read", path, e)
}

fn io_op(op: &str, path: &Path, e: std::io::Error) -> SnapFileError {
    let msg = e.to_string();
    let msg = msg.split(" (os error").next().unwrap_or(&msg);
    let mut c = msg.chars();
    let msg = match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    };
    SnapFileError::Io(format!("{op} {}: {msg}", path.display()))
}

fn open(path: &Path) -> Result<File, SnapFileError> {
    std::fs::metadata(path).map_err(|e| io_op("stat", path, e))?;
    File::open(path).map_err(|e| io_op("open", path, e))
}

/// SHA-256 of the first `len` bytes of `f`.
fn sha256_prefix(f: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize().to_vec())
}

/// Finds how many leading bytes of the file are the store's data, checking the hash trailer.
/// Without a valid trailer the whole file is data only if `skip_hash_check`.
fn data_len(path: &Path, f: &mut File, skip_hash_check: bool) -> Result<u64, SnapFileError> {
    let len = f.metadata().map_err(|e| io(path, e))?.len();
    if len >= HASH_LEN as u64 {
        let body = len - HASH_LEN as u64;
        let got = sha256_prefix(f, body).map_err(|e| io(path, e))?;
        let mut expected = vec![0u8; HASH_LEN];
        f.read_exact(&mut expected).map_err(|e| io(path, e))?;
        if got == expected {
            return Ok(body);
        }
        if skip_hash_check {
            return Ok(len);
        }
        // A well-formed body with a wrong trailer is a hash mismatch; anything else is a
        // file without a hash (or a damaged one, which the scan then reports).
        if scan_any(f, body).is_ok() {
            return Err(SnapFileError::HashMismatch { expected, got });
        }
    }
    if skip_hash_check {
        Ok(len)
    } else {
        Err(SnapFileError::MissingHash)
    }
}

/// Reads `len` bytes of records from the start of `f`, checking them, and sums them up.
fn scan(f: &mut File, len: u64) -> Result<SnapStatus, SnapFileError> {
    f.seek(SeekFrom::Start(0))
        .map_err(|e| SnapFileError::Io(e.to_string()))?;
    let mut r = SnapshotReader::new(BufReader::new(&mut *f).take(len), crate::schema::TABLES);
    let (mut live, mut max_rev, mut meta_rev) = (LiveKeys::default(), 0i64, None);
    while let Some(rec) = r
        .next_record()
        .map_err(|e| SnapFileError::Corrupt(e.to_string()))?
    {
        if let Some(rev) = rec.kv_rev() {
            max_rev = max_rev.max(rev.main);
        }
        // A stored revision: a tombstone flag byte, then the encoded key-value.
        if let SnapRecord::Kv(_, v) = &rec {
            if let Some((flag, kv)) = v.split_first() {
                let kv = <ballast_api::mvccpb::KeyValue as prost::Message>::decode(kv)
                    .map_err(|e| SnapFileError::Corrupt(format!("key-value: {e}")))?;
                live.saw(&kv.key, *flag != 0);
            }
        }
        if let SnapRecord::Meta(name, v) = &rec {
            if name == META_REV {
                meta_rev = Some(*v as i64);
            }
        }
    }
    Ok(SnapStatus {
        hash: r.checksum(),
        revision: meta_rev.unwrap_or(max_rev),
        total_keys: live.count(),
        total_size: len,
        version: None,
    })
}

/// Checks a snapshot file end to end and reports what it holds.
/// Ballast's own snapshot files and etcd's (a bbolt database, as `etcdctl snapshot save`
/// writes it or a stopped member's `member/snap/db`) alike.
pub fn status(path: &Path) -> Result<SnapStatus, SnapFileError> {
    let mut f = open(path)?;
    let len = data_len(path, &mut f, true)?;
    scan_any(&mut f, len)
}

/// The raft index the store in an etcd-format snapshot file holds (`meta/consistent_index`),
/// checked like [`status`] checks the file; 0 for a file without one.
pub fn applied_index(path: &Path) -> Result<u64, SnapFileError> {
    let mut f = open(path)?;
    let len = data_len(path, &mut f, true)?;
    if crate::etcd_db::is_etcd_db(&mut f).map_err(|e| io(path, e))? {
        return Ok(crate::etcd_db::member_state(&mut f, len)?.applied);
    }
    Ok(0)
}

/// [`scan`] for Ballast's files, etcdctl's status for etcd's.
fn scan_any(f: &mut File, len: u64) -> Result<SnapStatus, SnapFileError> {
    if crate::etcd_db::is_etcd_db(f).map_err(|e| SnapFileError::Io(e.to_string()))? {
        crate::etcd_db::status(f, len)
    } else {
        scan(f, len)
    }
}

/// Builds a store at `db` from a snapshot file for a member of a new cluster: keys, history
/// and leases are kept; the old membership is dropped (the new cluster's log brings its own)
/// and the applied index starts again from zero, as etcd's restore does.
pub fn restore(path: &Path, db: &Path, skip_hash_check: bool) -> Result<SnapStatus, SnapFileError> {
    let mut f = open(path)?;
    let len = data_len(path, &mut f, skip_hash_check)?;
    let status = scan_any(&mut f, len)?;
    if crate::etcd_db::is_etcd_db(&mut f).map_err(|e| io(path, e))? {
        crate::etcd_db::restore(&mut f, len, db)?;
        return Ok(status);
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
    let input = BufReader::with_capacity(1 << 20, f).take(len);
    use crate::schema::{ALARMS, MEMBERS, MEMBERS_REMOVED, TABLES};
    let old_members = [MEMBERS.tag, MEMBERS_REMOVED.tag, ALARMS.tag];
    Backend::import_filtered(db, TABLES, input, &mut |rec| match rec {
        // Alarms belong to the old members.
        SnapRecord::Row(tag, ..) if old_members.contains(&tag) => Ok(None),
        // The sender's key index checkpoint is not here.
        SnapRecord::Meta(ref name, _)
            if [META_APPLIED, META_INDEX_REV, META_INDEX_SUM].contains(&name.as_str()) =>
        {
            Ok(None)
        }
        other => Ok(Some(other)),
    })
    .map_err(|e| SnapFileError::Corrupt(e.to_string()))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_snapshot(dir: &Path) -> std::path::PathBuf {
        let db = dir.join("src.db");
        let b = Backend::open(&db, crate::schema::TABLES).expect("open");
        b.update(true, |w| {
            let kv = ballast_api::mvccpb::KeyValue {
                key: b"k".to_vec(),
                ..Default::default()
            };
            w.put_rev(
                ballast_storage::Rev::new(2, 0),
                false,
                &prost::Message::encode_to_vec(&kv),
            )?;
            w.set_meta(META_REV, 2)?;
            w.set_meta(META_APPLIED, 7)?;
            w.put(crate::schema::MEMBERS, &crate::schema::id_key(9), b"m")
        })
        .expect("update");
        let mut body = Vec::new();
        b.export(&mut |r| {
            body.extend_from_slice(r);
            Ok(())
        })
        .expect("export");
        let path = dir.join("snap.db");
        let mut f = File::create(&path).expect("create");
        f.write_all(&body).expect("write");
        f.write_all(&Sha256::digest(&body)).expect("write");
        path
    }

    #[test]
    fn status_and_restore_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = write_snapshot(dir.path());
        let st = status(&path).expect("status");
        assert_eq!((st.revision, st.total_keys), (2, 1));
        let out = dir.path().join("restored.db");
        assert_eq!(restore(&path, &out, false).expect("restore"), st);
        let b = Backend::open(&out, crate::schema::TABLES).expect("open");
        let members = b.rows(crate::schema::MEMBERS).expect("members");
        assert!(members.is_empty());
        let applied = b.view(|r| {
            use ballast_storage::backend::RevRead;
            r.meta(META_APPLIED)
        });
        assert_eq!(applied.expect("meta"), None);
    }

    #[test]
    fn written_files_are_whole_512_byte_pages_before_their_hash() {
        let d = tempfile::tempdir().expect("tmp");
        let m = crate::Mvcc::open(&d.path().join("db")).expect("open");
        let mut announced = 0;
        let mut out = Vec::new();
        write(
            &m,
            &mut |n| {
                announced = n;
                Ok(())
            },
            &mut out,
        )
        .expect("write");
        assert_eq!(announced, out.len() as u64);
        let body = out.len() - HASH_LEN;
        assert_eq!(
            body % 512,
            0,
            "etcdctl reads the trailer only after whole pages"
        );
        assert_eq!(Sha256::digest(&out[..body]).as_slice(), &out[body..]);
        let path = d.path().join("snap.db");
        std::fs::write(&path, &out).expect("save");
        assert!(status(&path).is_ok());
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = write_snapshot(dir.path());
        let full = std::fs::read(&path).expect("read");
        let out = dir.path().join("r.db");
        // Truncated: no trailer and no end record.
        std::fs::write(&path, &full[..full.len() - 40]).expect("write");
        assert!(matches!(
            restore(&path, &out, false),
            Err(SnapFileError::MissingHash)
        ));
        assert!(matches!(
            restore(&path, &out, true),
            Err(SnapFileError::Corrupt(_))
        ));
        assert!(status(&path).is_err());
        // A flipped trailer byte: the body is intact, so this is a hash mismatch.
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let err = restore(&path, &out, false).expect_err("mismatch");
        assert!(err.to_string().starts_with("expected sha256 ["), "{err}");
        // Without a trailer, only --skip-hash-check accepts it.
        std::fs::write(&path, &full[..full.len() - HASH_LEN]).expect("write");
        assert!(matches!(
            restore(&path, &out, false),
            Err(SnapFileError::MissingHash)
        ));
        assert!(restore(&path, &out, true).is_ok());
    }
}
