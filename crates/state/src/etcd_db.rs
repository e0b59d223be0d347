//! etcd's backend files (bbolt, etcd's schema) as snapshot files: `snapshot status` as
//! etcdctl reports it, and `snapshot restore` into Ballast's store with every revision kept.
//!
//! What a restore keeps, as etcd's own restore does: every revision of every key (create and
//! mod revisions, versions, tombstones), the current and compacted revisions, leases with
//! their TTLs, auth (enabled flag, revision, users, roles). What it drops: membership, alarms
//! and the applied index, which belong to the old cluster. Converting an etcd member in place
//! (`convert_member`) keeps those too, since the member itself carries on.
//!
//! Invariant: the file is untrusted; a row that does not parse is refused with what was wrong,
//! and memory stays bounded by one batch of rows, not by the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ballast_api::etcdserverpb::Member;
use ballast_api::mvccpb::KeyValue;
use ballast_storage::backend::ReadSnapshot;
use ballast_storage::{Backend, BackendError, Rev};
use prost::Message;

use crate::auth::{META_AUTH_ENABLED, META_AUTH_REVISION};
use crate::bbolt::{BoltError, BoltReader, BucketRef};
use crate::bbolt_write::{RowVisitor, Rows};
use crate::mvcc::{META_COMPACT, META_REV};
use crate::schema::{self, AUTH_ROLE, AUTH_USER, TABLES};
use crate::snapfile::{SnapFileError, SnapStatus};
use crate::KvError;

/// Rows written per store transaction during a restore.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

fn corrupt(e: impl std::fmt::Display) -> SnapFileError {
    SnapFileError::Corrupt(e.to_string())
}

impl From<BoltError> for SnapFileError {
    fn from(e: BoltError) -> Self {
        corrupt(e)
    }
}

/// Whether the file starts like a bbolt database (a meta page with bbolt's magic).
pub fn is_etcd_db(f: &mut File) -> std::io::Result<bool> {
    let mut head = [0u8; 20];
    f.seek(SeekFrom::Start(0))?;
    if f.read(&mut head)? < head.len() {
        return Ok(false);
    }
    Ok(head[..8] == [0; 8] && head[16..20] == crate::bbolt::MAGIC.to_le_bytes())
}

fn open(f: &mut File, len: u64) -> Result<BoltReader<&mut File>, SnapFileError> {
    Ok(BoltReader::open(f, len)?)
}

/// etcdctl's `snapshot status`: CRC-32C over every bucket's name, keys and values in order,
/// the main revision of the last key of `key`, the number of keys in every bucket, and the
/// database's size (its pages in use).
pub fn status(f: &mut File, len: u64) -> Result<SnapStatus, SnapFileError> {
    let mut r = open(f, len)?;
    let total_size = r.meta().high_water * r.meta().page_size;
    let mut buckets = Vec::new();
    let root = r.root();
    r.for_each(&root, &mut |name, v, nested| {
        if nested {
            buckets.push((name.to_vec(), BucketRef::from_value(v)?));
        }
        Ok(())
    })?;
    let (mut hash, mut live, mut revision) = (0u32, crate::snapfile::LiveKeys::default(), 0i64);
    let mut version = None;
    for (name, b) in buckets {
        hash = crc32c::crc32c_append(hash, &name);
        let (is_key, is_meta) = (name == b"key", name == b"meta");
        r.for_each(&b, &mut |k, v, _| {
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
            if is_key {
                if let Some((rev, tombstone)) = revision_of(k) {
                    revision = rev.main;
                    let kv = KeyValue::decode(v)
                        .map_err(|e| BoltError::Invalid(format!("key-value: {e}")))?;
                    live.saw(&kv.key, tombstone);
                }
            }
            if is_meta && k == b"storageVersion" {
                version = Some(String::from_utf8_lossy(v).into_owned());
            }
            Ok(())
        })?;
    }
    Ok(SnapStatus {
        hash,
        revision,
        total_keys: live.count(),
        total_size,
        version,
    })
}

/// A `key` bucket key: 8-byte big-endian main revision, `_`, 8-byte sub revision, and `t`
/// for a tombstone.
fn revision_of(k: &[u8]) -> Option<(Rev, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((Rev::new(main, sub), tombstone))
}

/// A revision in etcd's `meta` bucket (`scheduledCompactRev`, `finishedCompactRev`).
fn meta_revision(v: &[u8]) -> Option<i64> {
    revision_of(v.get(..17)?).map(|(r, _)| r.main)
}

/// What etcd's backend records about the member it belongs to: read when converting that
/// member in place, where (unlike a restore) membership, alarms and the applied index carry on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberState {
    /// `meta/consistent_index`: the last raft index the backend holds.
    pub applied: u64,
    /// `members` (etcd's JSON records) and `members_removed`.
    pub members: Vec<Member>,
    pub removed: Vec<u64>,
    /// `alarm`: (member, alarm type).
    pub alarms: Vec<(u64, i32)>,
    /// `cluster/clusterVersion` and `meta/storageVersion` (etcd 3.6+), when set.
    pub cluster_version: Option<String>,
    pub storage_version: Option<String>,
}

/// `etcdserverpb.AlarmMember`, the key of etcd's `alarm` bucket.
#[derive(Clone, PartialEq, Message)]
struct AlarmMember {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(int32, tag = "2")]
    alarm: i32,
}

/// Reads [`MemberState`] from the etcd database in the first `len` bytes of `f`.
pub fn member_state(f: &mut File, len: u64) -> Result<MemberState, SnapFileError> {
    let mut r = open(f, len)?;
    let root = r.root();
    let mut st = MemberState::default();
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    if let Some(meta) = r.bucket(&root, b"meta")? {
        r.for_each(&meta, &mut |k, v, _| {
            match k {
                b"consistent_index" => {
                    let v: [u8; 8] = v
                        .try_into()
                        .map_err(|_| BoltError::Invalid("bad consistent_index".into()))?;
                    st.applied = u64::from_be_bytes(v);
                }
                b"storageVersion" => st.storage_version = Some(text(v)),
                _ => {}
            }
            Ok(())
        })?;
    }
    if let Some(b) = r.bucket(&root, b"cluster")? {
        r.for_each(&b, &mut |k, v, _| {
            if k == b"clusterVersion" {
                st.cluster_version = Some(text(v));
            }
            Ok(())
        })?;
    }
    if let Some(b) = r.bucket(&root, b"members")? {
        r.for_each(&b, &mut |_, v, _| {
            let m = crate::etcd_log::member_from_json(v)
                .map_err(|e| BoltError::Invalid(e.to_string()))?;
            st.members.push(m);
            Ok(())
        })?;
    }
    if let Some(b) = r.bucket(&root, b"members_removed")? {
        r.for_each(&b, &mut |k, _, _| {
            let id = std::str::from_utf8(k)
                .ok()
                .and_then(|k| u64::from_str_radix(k, 16).ok())
                .ok_or_else(|| BoltError::Invalid(format!("bad removed member {k:02x?}")))?;
            st.removed.push(id);
            Ok(())
        })?;
    }
    if let Some(b) = r.bucket(&root, b"alarm")? {
        r.for_each(&b, &mut |k, _, _| {
            let a =
                AlarmMember::decode(k).map_err(|e| BoltError::Invalid(format!("alarm: {e}")))?;
            st.alarms.push((a.member_id, a.alarm));
            Ok(())
        })?;
    }
    Ok(st)
}

/// Builds a Ballast store at `db` from the etcd database in the first `len` bytes of `f`, for
/// a member of a new cluster (`snapshot restore`).
pub fn restore(f: &mut File, len: u64, db: &Path) -> Result<(), SnapFileError> {
    import(f, len, db, None)
}

/// Builds a Ballast store at `db` for the etcd member whose backend `f` is, carrying on with
/// `member`'s membership, alarms and applied index (conversion in place).
pub fn convert_member(
    f: &mut File,
    len: u64,
    db: &Path,
    member: &MemberState,
) -> Result<(), SnapFileError> {
    import(f, len, db, Some(member))
}

fn import(
    f: &mut File,
    len: u64,
    db: &Path,
    member: Option<&MemberState>,
) -> Result<(), SnapFileError> {
    let _ = std::fs::remove_file(db);
    let store = Backend::open(db, TABLES).map_err(corrupt)?;
    let mut r = open(f, len)?;
    let root = r.root();
    let bucket = |r: &mut BoltReader<&mut File>, name: &[u8]| r.bucket(&root, name);

    let mut batch: Vec<(Rev, bool, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    let mut last = 0i64;
    let flush = |batch: &mut Vec<(Rev, bool, Vec<u8>)>| {
        store
            .update(false, |w| {
                for (rev, tomb, kv) in batch.iter() {
                    w.put_rev(*rev, *tomb, kv)?;
                }
                Ok::<_, ballast_storage::BackendError>(())
            })
            .map_err(corrupt)?;
        batch.clear();
        Ok::<_, SnapFileError>(())
    };
    let mut failed = None;
    if let Some(keys) = bucket(&mut r, b"key")? {
        r.for_each(&keys, &mut |k, v, _| {
            let Some((rev, tomb)) = revision_of(k) else {
                return Err(BoltError::Invalid(format!("bad revision key {k:02x?}")));
            };
            if v.is_empty() {
                // etcdutl's --bump-revision marker: a revision with no key.
                last = rev.main;
                return Ok(());
            }
            let mut kv = KeyValue::decode(v)
                .map_err(|e| BoltError::Invalid(format!("revision {}: {e}", rev.main)))?;
            if tomb && kv.mod_revision == 0 {
                // etcd's tombstones carry only the key; Ballast's name their revision.
                kv.mod_revision = rev.main;
            }
            last = rev.main;
            batch_bytes += kv.encoded_len();
            batch.push((rev, tomb, kv.encode_to_vec()));
            if batch_bytes >= RESTORE_BATCH_BYTES {
                batch_bytes = 0;
                if let Err(e) = flush(&mut batch) {
                    failed = Some(e);
                    return Err(BoltError::Invalid("restore stopped".into()));
                }
            }
            Ok(())
        })
        .map_err(|e| failed.take().unwrap_or(corrupt(e)))?;
    }
    flush(&mut batch)?;

    let mut compacted = None;
    if let Some(meta) = bucket(&mut r, b"meta")? {
        r.for_each(&meta, &mut |k, v, _| {
            if k == b"finishedCompactRev" || k == b"scheduledCompactRev" {
                let rev = meta_revision(v)
                    .ok_or_else(|| BoltError::Invalid("bad compaction revision".into()))?;
                compacted = Some(compacted.map_or(rev, |c: i64| c.max(rev)));
            }
            Ok(())
        })?;
    }
    let mut leases = Vec::new();
    if let Some(b) = bucket(&mut r, b"lease")? {
        r.for_each(&b, &mut |_, v, _| {
            let l = EtcdLease::decode(v).map_err(|e| BoltError::Invalid(format!("lease: {e}")))?;
            leases.push(l);
            Ok(())
        })?;
    }
    let (mut auth_enabled, mut auth_revision) = (false, None);
    if let Some(b) = bucket(&mut r, b"auth")? {
        r.for_each(&b, &mut |k, v, _| {
            match k {
                b"authEnabled" => auth_enabled = v.first() == Some(&1),
                b"authRevision" => {
                    let rev: [u8; 8] = v
                        .try_into()
                        .map_err(|_| BoltError::Invalid("bad auth revision".into()))?;
                    auth_revision = Some(u64::from_be_bytes(rev));
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let mut auth_rows = Vec::new();
    for (name, kind) in [(&b"authUsers"[..], AUTH_USER), (b"authRoles", AUTH_ROLE)] {
        if let Some(b) = bucket(&mut r, name)? {
            r.for_each(&b, &mut |k, v, _| {
                let mut key = vec![kind];
                key.extend_from_slice(k);
                auth_rows.push((key, v.to_vec()));
                Ok(())
            })?;
        }
    }
    store
        .update(true, |w| {
            w.set_meta(META_REV, last.max(1) as u64)?;
            if let Some(c) = compacted {
                w.set_meta(META_COMPACT, c as u64)?;
            }
            for l in &leases {
                schema::put_lease(w, l.id, l.ttl, l.remaining_ttl)?;
            }
            w.set_meta(META_AUTH_ENABLED, u64::from(auth_enabled))?;
            if let Some(rev) = auth_revision {
                w.set_meta(META_AUTH_REVISION, rev)?;
            }
            for (k, v) in &auth_rows {
                w.put(schema::AUTH, k, v)?;
            }
            if let Some(m) = member {
                for record in &m.members {
                    let row = schema::id_key(record.id);
                    w.put(schema::MEMBERS, &row, &record.encode_to_vec())?;
                }
                for id in &m.removed {
                    w.put(
                        schema::MEMBERS_REMOVED,
                        &schema::id_key(*id),
                        &0u64.to_le_bytes(),
                    )?;
                }
                let mut alarms = std::collections::BTreeMap::<u64, u64>::new();
                for (id, kind) in &m.alarms {
                    if (0..64).contains(kind) {
                        *alarms.entry(*id).or_default() |= 1 << kind;
                    }
                }
                for (id, bits) in alarms {
                    schema::set_alarms(w, id, bits)?;
                }
                w.set_meta(crate::mvcc::META_APPLIED, m.applied)?;
            }
            Ok::<_, ballast_storage::BackendError>(())
        })
        .map_err(corrupt)?;
    Ok(())
}

/// The `key` bucket from a store snapshot, as etcd keys and stores revisions.
struct KeyRows<'a> {
    snap: &'a ReadSnapshot,
    /// A revision past the last stored one (bumped, or a delete that found nothing) is kept
    /// as etcdutl keeps it: an empty row at that revision.
    current: i64,
}

impl Rows for KeyRows<'_> {
    fn for_each(&mut self, visit: &mut RowVisitor<'_>) -> std::io::Result<()> {
        let mut last = 0;
        let mut row = EtcdRow::default();
        self.snap
            .for_each_rev(&mut |rev, tomb, kv| {
                last = rev.main;
                let (key, value) = row.of(rev, tomb, kv)?;
                visit(key, value)
            })
            .map_err(|e| match e {
                BackendError::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })?;
        if self.current > last {
            visit(&rev_key(self.current, 0), &[])?;
        }
        Ok(())
    }
}

/// One stored revision as a row of etcd's `key` bucket, in buffers reused from row to row.
#[derive(Default)]
pub(crate) struct EtcdRow {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl EtcdRow {
    /// The row of revision `rev` holding `kv` (an encoded `KeyValue`): its revision key, with
    /// `t` after it for a tombstone, and the value; etcd's tombstones hold only the key.
    pub(crate) fn of<'a>(
        &'a mut self,
        rev: Rev,
        tomb: bool,
        kv: &'a [u8],
    ) -> std::io::Result<(&'a [u8], &'a [u8])> {
        self.key.clear();
        self.key.extend_from_slice(&rev_key(rev.main, rev.sub));
        if !tomb {
            return Ok((&self.key, kv));
        }
        self.key.push(b't');
        let stored = KeyValue::decode(kv).map_err(std::io::Error::other)?;
        let only_key = KeyValue {
            key: stored.key,
            ..Default::default()
        };
        self.value.clear();
        only_key
            .encode(&mut self.value)
            .map_err(std::io::Error::other)?;
        Ok((&self.key, &self.value))
    }
}

/// etcd's revision key: main (8 bytes BE), `_`, sub (8 bytes BE).
pub(crate) fn rev_key(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&main.to_be_bytes());
    k[8] = b'_';
    k[9..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// Writes `mvcc` as an etcd database file (bbolt, etcd's schema) to `out`: what
/// `etcdctl snapshot save` receives from etcd, so etcd's tools and etcd itself take it.
/// Returns the bytes written.
pub fn write(
    mvcc: &crate::Mvcc,
    size: &mut dyn FnMut(u64) -> std::io::Result<()>,
    out: &mut dyn std::io::Write,
) -> Result<u64, KvError> {
    // etcd's file holds no revision its compaction dropped.
    mvcc.finish_compaction()?;
    let snap = mvcc.read_snapshot()?;
    let meta_u64 = |n: &str| snap.meta(n).map(|v| v.unwrap_or(0));
    let current = meta_u64(META_REV)? as i64;
    let compacted = snap
        .meta(META_COMPACT)?
        .map(|c| c as i64)
        .filter(|c| *c > 0);
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = vec![(
        b"consistent_index".to_vec(),
        meta_u64(crate::mvcc::META_APPLIED)?.to_be_bytes().to_vec(),
    )];
    if let Some(c) = compacted {
        meta.push((b"finishedCompactRev".to_vec(), rev_key(c, 0).to_vec()));
        meta.push((b"scheduledCompactRev".to_vec(), rev_key(c, 0).to_vec()));
    }
    meta.sort();
    let mut leases: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, v) in snap.rows(schema::LEASES)? {
        let (id, ttl, remaining_ttl) = schema::decode_lease(&k, &v)?;
        let l = EtcdLease {
            id,
            ttl,
            remaining_ttl,
        };
        leases.push((id.to_be_bytes().to_vec(), l.encode_to_vec()));
    }
    leases.sort();
    let mut auth = vec![
        (
            b"authEnabled".to_vec(),
            vec![u8::from(meta_u64(META_AUTH_ENABLED)? != 0)],
        ),
        (
            b"authRevision".to_vec(),
            meta_u64(META_AUTH_REVISION)?.to_be_bytes().to_vec(),
        ),
    ];
    auth.sort();
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    for (k, v) in snap.rows(schema::AUTH)? {
        match k.split_first() {
            Some((&AUTH_USER, name)) => users.push((name.to_vec(), v)),
            Some((&AUTH_ROLE, name)) => roles.push((name.to_vec(), v)),
            _ => {}
        }
    }
    let mut keys = KeyRows {
        snap: &snap,
        current,
    };
    let mut empty = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let [alarm, cluster, members, removed] = &mut empty;
    let mut buckets: Vec<(&[u8], &mut dyn Rows)> = vec![
        (b"alarm", alarm),
        (b"auth", &mut auth),
        (b"authRoles", &mut roles),
        (b"authUsers", &mut users),
        (b"cluster", cluster),
        (b"key", &mut keys),
        (b"lease", &mut leases),
        (b"members", members),
        (b"members_removed", removed),
        (b"meta", &mut meta),
    ];
    crate::bbolt_write::write_db(size, out, ETCD_PAGE, &mut buckets)
        .map_err(|e| KvError::Corrupt(format!("writing an etcd database: {e}")))
}

/// The page size etcd's files have on the machines etcd runs on.
const ETCD_PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    const ETCD_34: &[u8] = include_bytes!("../testdata/etcd-3.4.23-snapshot.db");

    fn fixture(dir: &Path) -> File {
        let p = dir.join("etcd.db");
        std::fs::write(&p, ETCD_34).expect("write");
        File::open(&p).expect("open")
    }

    /// The fixture restored into a store under `dir`.
    fn restored_fixture(dir: &Path) -> crate::Mvcc {
        let db = dir.join("db");
        restore(&mut fixture(dir), ETCD_34.len() as u64 - 32, &db).expect("restore");
        crate::Mvcc::open(&db).expect("open")
    }

    #[test]
    fn status_is_etcdctls() {
        let d = tempfile::tempdir().expect("tmp");
        let mut f = fixture(d.path());
        assert!(is_etcd_db(&mut f).expect("read"));
        let s = status(&mut f, ETCD_34.len() as u64 - 32).expect("status");
        // What etcdutl 3.7.3 prints for this file: de299ba2, revision 6, 2 live keys, 37 kB,
        // no storage version (3.4 wrote none).
        assert_eq!(format!("{:x}", s.hash), "de299ba2");
        assert_eq!((s.revision, s.total_keys, s.total_size), (6, 2, 36_864));
        assert_eq!(s.version, None);
    }

    #[test]
    fn restore_keeps_every_revision_lease_and_the_current_revision() {
        let d = tempfile::tempdir().expect("tmp");
        let m = restored_fixture(d.path());
        assert_eq!(m.current_rev(), 6);
        let get = |key: &str, revision: i64| {
            m.range(&ballast_api::etcdserverpb::RangeRequest {
                key: key.into(),
                revision,
                ..Default::default()
            })
            .expect("range")
            .kvs
        };
        assert!(get("foo", 0).is_empty(), "deleted at 6");
        let old = get("foo", 3);
        assert_eq!((old[0].value.as_slice(), old[0].version), (&b"baz"[..], 2));
        assert_eq!((old[0].create_revision, old[0].mod_revision), (2, 3));
        assert_eq!(get("big", 0)[0].value.len(), 9000);
        let leased = &get("leased", 0)[0];
        let lease = m.lease_ttl(leased.lease).expect("lease restored");
        assert_eq!(lease.ttl, 100);
    }

    #[test]
    fn a_store_written_as_an_etcd_database_reads_back_the_same() {
        let d = tempfile::tempdir().expect("tmp");
        let m = restored_fixture(d.path());
        let path = d.path().join("out.db");
        let mut out = std::io::BufWriter::new(File::create(&path).expect("create"));
        let n = write(&m, &mut |_| Ok(()), &mut out).expect("write");
        drop(out);
        let mut back = File::open(&path).expect("open");
        assert!(is_etcd_db(&mut back).expect("read"));
        let s = status(&mut back, n).expect("status");
        let theirs = status(&mut fixture(d.path()), ETCD_34.len() as u64 - 32).expect("status");
        assert_eq!(s.revision, theirs.revision);
        // Round trip: the file restores into a store holding the same history.
        let again = d.path().join("again");
        restore(&mut back, n, &again).expect("restore ours");
        let m2 = crate::Mvcc::open(&again).expect("open");
        assert_eq!(m2.current_rev(), m.current_rev());
        assert_eq!(m2.hash_kv(0).expect("hash"), m.hash_kv(0).expect("hash"));
        assert_eq!(m2.lease_ttls(), m.lease_ttls());
    }

    #[test]
    fn a_damaged_database_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("bad.db");
        let mut bytes = ETCD_34[..ETCD_34.len() - 32].to_vec();
        // The `key` bucket's leaf page: scramble its element table.
        for b in &mut bytes[5 * 4096 + 16..5 * 4096 + 64] {
            *b = 0xff;
        }
        std::fs::write(&p, &bytes).expect("write");
        let mut f = File::open(&p).expect("open");
        let len = bytes.len() as u64;
        assert!(
            status(&mut f, len).is_err() || restore(&mut f, len, &d.path().join("db")).is_err()
        );
    }
}
