//! etcd's MVCC store: an in-memory key index over revisions kept in the redb backend.
//!
//! Invariants:
//! * every write request that changes anything gets exactly one new main revision; its
//!   changes are numbered by `sub` in the order they happen;
//! * `index.rev` is the newest main revision; every entry in the key index is `<= rev`;
//! * a request either applies all of its changes or none (checks run before the first write);
//! * history below `compact_rev` is gone, except each key's newest live revision at it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ballast_api::ballast::internal::{member_change, raft_request, MemberChange, RaftRequest};
use ballast_api::etcdserverpb::{
    alarm_request::AlarmAction, compare, range_request::SortOrder, range_request::SortTarget,
    request_op, response_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, Member, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ballast_api::mvccpb::{event::EventType, Event, KeyValue};
use ballast_storage::backend::SnapRecord;
use ballast_storage::backend::{RevRead, WriteTx};
use ballast_storage::{Backend, BackendError, Rev};
use prost::Message;

use crate::auth::{self, AuthEffect, AuthInfo, AuthState};
use crate::key::Key;
use crate::schema;
use crate::KvError;

pub(crate) const META_APPLIED: &str = "consistent_index";
pub(crate) const META_REV: &str = "current_rev";
pub(crate) const META_COMPACT: &str = "compact_rev";
/// The downgrade job's target as `major << 32 | minor`; 0 or absent: none.
pub(crate) const META_DOWNGRADE: &str = "downgrade_target";
/// The revision and checksum of the key index checkpoint the store's rows match (see
/// [`crate::indexfile`]).
pub(crate) const META_INDEX_REV: &str = "index_checkpoint_rev";
pub(crate) const META_INDEX_SUM: &str = "index_checkpoint_sum";
/// Keys a checkpoint copies per hold of the index's read lock: the applier waits at most
/// for one chunk.
const CHECKPOINT_CHUNK: usize = 1_024;

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// An entry with no client request (raft no-op, configuration change).
    Nothing,
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    /// A membership change; the member records after it.
    Members(Vec<Member>),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    /// An auth change applied; what it means for issued tokens.
    Auth(AuthEffect),
    /// A password-checked Authenticate entry: the simple token it issued (empty for JWT,
    /// which the proposer signs).
    Authenticated {
        user: String,
        token: String,
    },
}

/// A lease as the state machine knows it (expiry is the leader's business, not state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint; 0 if never checkpointed.
    pub remaining: i64,
    pub keys: std::collections::BTreeSet<Vec<u8>>,
}

impl Lease {
    fn ttls(&self) -> LeaseTtl {
        LeaseTtl {
            id: self.id,
            ttl: self.ttl,
            remaining: self.remaining,
        }
    }
}

/// A lease without its keys: what expiry bookkeeping needs, cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    pub id: i64,
    pub ttl: i64,
    pub remaining: i64,
}

/// What one [`Mvcc::apply_batch`] did.
#[derive(Debug)]
pub struct AppliedBatch {
    /// One result per entry past the applied index, in log order.
    pub results: Vec<Result<Applied, KvError>>,
    /// The changes to keys, in revision order, for watchers.
    pub events: Vec<Event>,
    /// The store's revision after the batch.
    pub rev: i64,
}

/// etcd's bound on lease TTLs (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Default, Clone)]
struct KeyHistory {
    /// Ascending revisions; `true` marks a tombstone.
    revs: Vec<(Rev, bool)>,
    /// Creation revision of the live generation (0 when deleted).
    create_rev: i64,
    /// Version of the live generation (0 when deleted).
    version: i64,
}

impl KeyHistory {
    /// The live revision of this key as of main revision `at`.
    fn at(&self, at: i64) -> Option<Rev> {
        let pos = self.revs.partition_point(|(r, _)| r.main <= at);
        match pos.checked_sub(1).map(|i| self.revs[i]) {
            Some((r, false)) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Compacting {
    at: i64,
    /// The index walk's next key, in key order (`None`: from the first); done once it has
    /// passed the last.
    keys_from: Option<Key>,
    keys_done: bool,
    /// The next stored revision the row walk looks at; `None` once it is done.
    rows_from: Option<Rev>,
}

impl Compacting {
    fn new(at: i64) -> Compacting {
        Compacting {
            at,
            keys_from: None,
            keys_done: false,
            rows_from: Some(Rev::default()),
        }
    }
}

#[derive(Debug)]
struct Index {
    keys: BTreeMap<Key, KeyHistory>,
    rev: i64,
    /// -1 until the first compaction, as in etcd.
    compact_rev: i64,
    applied: u64,
    /// The cluster's member records, kept in the backend beside the keys so they are applied
    /// at the same consistent index.
    members: BTreeMap<u64, Member>,
    removed: std::collections::BTreeSet<u64>,
    /// Changes made by the last `apply_batch`, in revision order, for watchers.
    events: Vec<Event>,
    leases: BTreeMap<i64, Lease>,
    /// The lease each leased key is attached to.
    key_lease: std::collections::HashMap<Vec<u8>, i64>,
    /// Active alarms: member id -> bit set of alarm types.
    alarms: BTreeMap<u64, u64>,
    auth: AuthState,
    /// Revisions removed by compactions since this store was opened (for metrics only).
    compacted_revs: u64,
    /// A compaction applied but not yet done: the revisions at or below `at` that it drops
    /// are deleted in bounded steps ([`Mvcc::compact_step`]; the job says where each of its
    /// two walks stands). Reads never see them (they ask for revisions at or above
    /// `compact_rev`).
    compacting: Option<Compacting>,
    /// The enabled downgrade job's target (`major << 32 | minor`), 0 for none.
    downgrade: u64,
}

/// Stored rows a compaction step reads at once, however large its limit: the keys of the
/// rows it looks at are held while it drops them.
const COMPACT_SCAN_ROWS: usize = 10_000;

/// One step of the compaction in progress, in two walks that each handle up to `limit`
/// items from where they stopped: the key index in key order, dropping from each key every
/// revision at or below the compaction revision but the newest (and that one too if it is a
/// deletion); and the stored revisions at or below it in revision order, deleting every row
/// that is not its key's revision the index keeps. Returns whether more remains.
///
/// The rows go in revision order, as etcd walks its key bucket, so each step's deletions are
/// neighbours in the `kv` table and a commit copies a few leaves. Deleting them key by key
/// spread every step over the whole table: compacting 200,000 revisions of a 1 GB store
/// wrote 1.3 GiB and slowed the WAL's fsyncs for every put meanwhile. The index has its own
/// walk because it can hold revisions whose rows are already gone (a checkpoint read at a
/// restart mid-compaction), which no row walk would meet.
fn drop_compacted(idx: &mut Index, w: &mut WriteTx<'_>, limit: usize) -> Result<bool, KvError> {
    let Some(mut job) = idx.compacting.take() else {
        return Ok(false);
    };
    let limit = limit.clamp(1, COMPACT_SCAN_ROWS);
    if !job.keys_done {
        job.keys_from = prune_index(idx, job.at, job.keys_from.take(), limit);
        job.keys_done = job.keys_from.is_none();
    }
    if let Some(from) = job.rows_from {
        job.rows_from = delete_rows(idx, w, job.at, from, limit)?;
    }
    let more = !job.keys_done || job.rows_from.is_some();
    if more {
        idx.compacting = Some(job);
    }
    Ok(more)
}

/// Where a key's revisions at or below `at` stop being dropped: the index of its newest one
/// at or below `at` if that is a put (kept), else of the first after `at`.
fn keep_from(revs: &[(Rev, bool)], at: i64) -> usize {
    let pos = revs.partition_point(|(r, _)| r.main <= at);
    match pos.checked_sub(1).map(|i| revs[i]) {
        Some((_, false)) => pos - 1,
        _ => pos,
    }
}

/// The index walk of [`drop_compacted`]: up to `limit` keys and dropped revisions from `from`;
/// returns the key to go on from, `None` once every key was seen.
fn prune_index(idx: &mut Index, at: i64, from: Option<Key>, limit: usize) -> Option<Key> {
    let mut work = 0usize;
    let mut emptied = Vec::new();
    let mut next = None;
    let range = match &from {
        Some(k) => idx.keys.range_mut(k.clone()..),
        None => idx.keys.range_mut(..),
    };
    for (key, h) in range {
        if work >= limit {
            next = Some(key.clone());
            break;
        }
        let drop = keep_from(&h.revs, at);
        h.revs.drain(..drop);
        idx.compacted_revs += drop as u64;
        work += 1 + drop;
        if h.revs.is_empty() {
            emptied.push(key.clone());
        }
    }
    for k in emptied {
        idx.keys.remove(&k);
    }
    next
}

/// The row walk of [`drop_compacted`]: up to `limit` stored revisions at or below `at` from
/// `from`, each deleted unless it is the revision its key's index entry keeps; returns the
/// revision to go on from, `None` once past `at`.
fn delete_rows(
    idx: &Index,
    w: &mut WriteTx<'_>,
    at: i64,
    from: Rev,
    limit: usize,
) -> Result<Option<Rev>, KvError> {
    let mut gone: Vec<Rev> = Vec::new();
    let mut seen = 0usize;
    let mut next = None;
    let r: &WriteTx<'_> = w;
    // Read first (the walk borrows the transaction), then delete. Only each row's start is
    // read: the key is all the walk needs, and a split value's other parts are not read.
    r.for_each_head_between(from, Rev::new(at.saturating_add(1), 0), |rev, head| {
        if seen >= limit {
            next = Some(rev);
            return Ok(false);
        }
        seen += 1;
        let owned;
        let key = match encoded_key(head.kv) {
            Some(key) => key,
            None if head.whole => {
                owned = stored_key(rev, head.kv)?;
                owned.as_slice()
            }
            None => {
                let whole = r.get_rev(rev)?.ok_or(BackendError::Malformed(rev))?;
                owned = stored_key(rev, &whole.kv)?;
                owned.as_slice()
            }
        };
        if idx.keys.get(&Key::new(key)).and_then(|h| h.at(at)) != Some(rev) {
            gone.push(rev);
        }
        Ok(true)
    })?;
    for rev in gone {
        w.delete_rev(rev)?;
    }
    Ok(next)
}

/// The key of an encoded `mvccpb.KeyValue` read from the start of its encoding, when the
/// encoding starts with it (the key is field 1, and encoders write fields in order) and the
/// start holds all of it; `None` otherwise.
fn encoded_key(kv: &[u8]) -> Option<&[u8]> {
    const KEY_TAG: u8 = (1 << 3) | 2;
    let mut rest = kv.strip_prefix(&[KEY_TAG])?;
    let len = prost::decode_length_delimiter(&mut rest).ok()?;
    rest.get(..len)
}

/// The key of a whole encoded `mvccpb.KeyValue`, however its fields are laid out.
fn stored_key(rev: Rev, kv: &[u8]) -> Result<Vec<u8>, BackendError> {
    Ok(IndexFields::decode(kv)
        .map_err(|_| BackendError::Malformed(rev))?
        .key)
}

pub struct Mvcc {
    backend: Backend,
    index: RwLock<Index>,
    /// Mirrors `index.auth.enabled()` so the common case (auth off) costs no lock.
    auth_enabled: std::sync::atomic::AtomicBool,
    /// Set when a compaction step run outside the applier (for a hash or an export) failed:
    /// the store's uncommitted writes went with it, so nothing applies any more and the
    /// applier stops the member on its next batch, as on any storage failure.
    failed: std::sync::OnceLock<String>,
    /// Where the key index checkpoint goes, beside the store.
    index_path: std::path::PathBuf,
    /// How the key index was built at open.
    index_source: IndexSource,
}

/// A key's entry in the index: key, revisions, creation revision, version, lease.
#[cfg(test)]
pub(crate) type IndexDigest = (Vec<u8>, Vec<(Rev, bool)>, i64, i64, i64);

/// The key index of a copy of the store at `path` built from its rows alone.
#[cfg(test)]
pub(crate) fn rebuilt_digest(path: &Path) -> Vec<IndexDigest> {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    std::fs::copy(path, &copy).unwrap();
    let s = Mvcc::open(&copy).unwrap();
    assert!(matches!(s.index_source(), IndexSource::Rebuilt(_)));
    s.index_digest()
}

/// The store's snapshot stream, as a leader sends it.
#[cfg(test)]
pub(crate) fn exported(s: &Mvcc) -> Vec<u8> {
    let mut stream = Vec::new();
    s.export(&mut |b| {
        stream.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    stream
}

/// How [`Mvcc::open`] built the key index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSource {
    /// From every stored revision; why the checkpoint was not used.
    Rebuilt(String),
    /// From the checkpoint at `rev` and the `replayed` revisions stored after it.
    Checkpoint { rev: i64, keys: u64, replayed: u64 },
    /// Built while a received snapshot was imported, from its rows as they were stored.
    Imported { keys: u64, revisions: u64 },
}

impl std::fmt::Display for IndexSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexSource::Rebuilt(why) => write!(f, "rebuilt from the store ({why})"),
            IndexSource::Checkpoint {
                rev,
                keys,
                replayed,
            } => write!(
                f,
                "read from the checkpoint at revision {rev} ({keys} keys) and {replayed} revisions after it"
            ),
            IndexSource::Imported { keys, revisions } => write!(
                f,
                "built while the snapshot was imported ({keys} keys, {revisions} revisions)"
            ),
        }
    }
}

/// The key index as stored rows build it, one revision at a time in revision order: at open
/// (the rows after the checkpoint, or all of them) and while a snapshot is imported.
#[derive(Default)]
pub struct RowIndex {
    keys: BTreeMap<Key, KeyHistory>,
    /// The lease of each leased key.
    key_lease: std::collections::HashMap<Vec<u8>, i64>,
    /// The highest main revision added.
    rev: i64,
    rows: u64,
}

impl RowIndex {
    /// Adds the stored revision `rev`, newer than every one added before it.
    fn add(&mut self, rev: Rev, tombstone: bool, row: &[u8]) -> std::io::Result<()> {
        let kv = IndexFields::decode(row).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("revision {rev:?}: {e}"),
            )
        })?;
        self.rows += 1;
        self.rev = self.rev.max(rev.main);
        // Revisions arrive in order, so the last one seen decides a key's lease.
        if tombstone || kv.lease == 0 {
            self.key_lease.remove(&kv.key);
        } else {
            self.key_lease.insert(kv.key.clone(), kv.lease);
        }
        let h = self.keys.entry(Key::new(&kv.key)).or_default();
        h.revs.push((rev, tombstone));
        if tombstone {
            h.version = 0;
            h.create_rev = 0;
        } else {
            h.version = kv.version;
            h.create_rev = kv.create_revision;
        }
        Ok(())
    }
}

/// The key index [`Mvcc::import`] built from a snapshot's rows as it stored them, and what
/// the snapshot's meta said, so [`Mvcc::open_imported`] can tell the store it belongs to.
pub struct ImportedIndex {
    index: RowIndex,
    applied: Option<u64>,
    rev: Option<u64>,
}

/// Fills the index from the checkpoint the store recorded, if it can be used, and returns the
/// revision to replay stored rows from; on any failure the index is left empty and the
/// reason returned. A checkpoint at revision `R` is used only when the store's revision is
/// at least `R` and its compaction revision at most `R`: a compaction past `R` deleted
/// tombstones after `R` that the replay would need to end keys the file holds live.
fn load_checkpoint(
    idx: &mut Index,
    path: &Path,
    recorded: Option<(u64, u64)>,
) -> Result<(Rev, u64), String> {
    let Some((rev, sum)) = recorded else {
        return Err("no checkpoint recorded".into());
    };
    let rev = i64::try_from(rev).map_err(|_| "bad checkpoint revision".to_string())?;
    if rev > idx.rev || rev < idx.compact_rev {
        return Err(format!(
            "checkpoint at revision {rev}, store at {} compacted at {}",
            idx.rev, idx.compact_rev
        ));
    }
    let sum = u32::try_from(sum).map_err(|_| "bad checkpoint checksum".to_string())?;
    let read = crate::indexfile::read(path, rev, sum, &mut |r| {
        if r.lease != 0 {
            idx.key_lease.insert(r.key.clone(), r.lease);
        }
        idx.keys.insert(
            Key::new(&r.key),
            KeyHistory {
                revs: r.revs,
                create_rev: r.create_rev,
                version: r.version,
            },
        );
    });
    match read {
        Ok(keys) => Ok((Rev::new(rev + 1, 0), keys)),
        Err(e) => {
            idx.keys.clear();
            idx.key_lease.clear();
            Err(e.to_string())
        }
    }
}

/// Fills the key index from the store: the checkpoint beside it, if it can be used, and the
/// stored revisions after it, or else every stored revision.
fn index_from_store(
    backend: &Backend,
    idx: &mut Index,
    index_path: &Path,
    checkpoint: Option<(u64, u64)>,
) -> Result<IndexSource, KvError> {
    let loaded = load_checkpoint(idx, index_path, checkpoint);
    let from = loaded.as_ref().map_or(Rev::default(), |(from, _)| *from);
    let mut built = RowIndex {
        keys: std::mem::take(&mut idx.keys),
        key_lease: std::mem::take(&mut idx.key_lease),
        rev: idx.rev,
        rows: 0,
    };
    // The rows straight from a read snapshot (nothing is held at open), decoding only what
    // the index keeps: the values, most of the file, are never copied.
    backend
        .read_snapshot()?
        .for_each_rev_from(from, &mut |rev, tombstone, row| {
            built.add(rev, tombstone, row)
        })
        .map_err(|e| KvError::Corrupt(e.to_string()))?;
    idx.keys = built.keys;
    idx.key_lease = built.key_lease;
    idx.rev = built.rev;
    Ok(match loaded {
        Ok((from, keys)) => IndexSource::Checkpoint {
            rev: from.main - 1,
            keys,
            replayed: built.rows,
        },
        Err(why) => IndexSource::Rebuilt(why),
    })
}

/// The fields of a stored `KeyValue` the index is rebuilt from (its field numbers); prost
/// skips the value without copying it.
#[derive(Clone, PartialEq, prost::Message)]
struct IndexFields {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

fn decode_kv(bytes: &[u8]) -> Result<KeyValue, KvError> {
    KeyValue::decode(bytes).map_err(|e| KvError::Corrupt(e.to_string()))
}

/// Key bounds of a request: `end` empty means the single key; `"\0"` means to the end.
fn bounds<'a>(key: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(end))
    }
}

impl Index {
    /// Live keys in `[key, end)` as of `at`, in key order.
    fn live_in<'s>(
        &'s self,
        key: &'s [u8],
        end: &'s [u8],
        at: i64,
    ) -> impl Iterator<Item = (&'s Key, Rev)> + 's {
        let (lo, hi) = bounds(key, end);
        let empty = matches!((lo, hi), (Bound::Included(a), Bound::Excluded(b)) if a >= b);
        let range = if empty {
            None
        } else {
            Some(
                self.keys
                    .range((lo.map(Key::new), hi.map(Key::new)))
                    .filter_map(move |(k, h)| h.at(at).map(|r| (k, r))),
            )
        };
        range.into_iter().flatten()
    }
}

/// A range too large to answer from memory, fixed at the store revision it was asked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    /// The store's revision when it was read (the response header's).
    pub revision: i64,
    /// The revision its key-values are read at.
    pub at: i64,
    pub count: i64,
    pub more: bool,
    /// Key-values the response carries (`count`, or the limit below it).
    pub send: usize,
}

/// What [`Mvcc::range_within`] answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Ranged {
    Whole(RangeResponse),
    Pinned(Pinned),
}

/// Bytes one key-value of `len` encoded bytes takes in `RangeResponse.kvs` (tag and length).
pub fn range_entry_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Whether a range's answer is its keys in key order, so it can be read in pages.
fn pageable(req: &RangeRequest) -> bool {
    let key_order = req.sort_order == SortOrder::None as i32
        || (req.sort_target == SortTarget::Key as i32
            && req.sort_order == SortOrder::Ascend as i32);
    key_order
        && !req.count_only
        && req.min_mod_revision == 0
        && req.max_mod_revision == 0
        && req.min_create_revision == 0
        && req.max_create_revision == 0
}

/// The revision a range reads at, if the store can answer it at `cur`.
fn readable_at(idx: &Index, req: &RangeRequest, cur: i64) -> Result<i64, KvError> {
    if req.revision > cur {
        return Err(KvError::FutureRev);
    }
    let at = if req.revision <= 0 { cur } else { req.revision };
    if at < idx.compact_rev {
        return Err(KvError::Compacted);
    }
    Ok(at)
}

/// A stored key-value, without its value for `keys_only`.
fn loaded<R: RevRead>(r: &R, rev: Rev, keys_only: bool) -> Result<KeyValue, KvError> {
    let mut kv = load(r, rev)?;
    if keys_only {
        kv.value.clear();
    }
    Ok(kv)
}

fn not_stored(rev: Rev) -> KvError {
    KvError::Corrupt(format!("revision {rev:?} is indexed but not stored"))
}

fn load<R: RevRead>(r: &R, rev: Rev) -> Result<KeyValue, KvError> {
    let stored = r.get_rev(rev)?.ok_or_else(|| not_stored(rev))?;
    decode_kv(&stored.kv)
}

/// A stored key-value's encoding: as stored, or re-encoded without its value for `keys_only`.
fn stored_kv<R: RevRead>(r: &R, rev: Rev, keys_only: bool) -> Result<Vec<u8>, KvError> {
    let stored = r.get_rev(rev)?.ok_or_else(|| not_stored(rev))?;
    if !keys_only {
        return Ok(stored.kv);
    }
    let mut kv = decode_kv(&stored.kv)?;
    kv.value.clear();
    Ok(kv.encode_to_vec())
}

/// etcd's range semantics over a view at store revision `cur`.
fn range_view<R: RevRead>(
    idx: &Index,
    r: &R,
    req: &RangeRequest,
    cur: i64,
) -> Result<RangeResponse, KvError> {
    let at = readable_at(idx, req, cur)?;
    let order = SortOrder::try_from(req.sort_order).map_err(|_| KvError::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| KvError::InvalidSortOption)?;
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting and filtering need every match; otherwise fetch one past the limit for `more`.
    let fetch = if order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };
    let mut count = 0i64;
    let mut revs = Vec::new();
    for (_, rev) in idx.live_in(&req.key, &req.range_end, at) {
        count += 1;
        if !req.count_only && revs.len() < fetch {
            revs.push(rev);
        }
    }
    let mut kvs = Vec::with_capacity(revs.len());
    for rev in revs {
        kvs.push(load(r, rev)?);
    }
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    // Results come in key order already; other targets sort ascending unless told otherwise.
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None {
        // A stable sort on the comparison (reversed for descending), as etcd's reversed
        // sorter leaves ties: in the ascending key order the range produced.
        let descend = order == SortOrder::Descend;
        let by = |o: std::cmp::Ordering| if descend { o.reverse() } else { o };
        match target {
            SortTarget::Key => kvs.sort_by(|a, b| by(a.key.cmp(&b.key))),
            SortTarget::Version => kvs.sort_by(|a, b| by(a.version.cmp(&b.version))),
            SortTarget::Create => kvs.sort_by(|a, b| by(a.create_revision.cmp(&b.create_revision))),
            SortTarget::Mod => kvs.sort_by(|a, b| by(a.mod_revision.cmp(&b.mod_revision))),
            SortTarget::Value => kvs.sort_by(|a, b| by(a.value.cmp(&b.value))),
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: cur,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    })
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => kv.create_revision.cmp(&v),
            _ => kv.create_revision.cmp(&0),
        },
        Ok(CompareTarget::Mod) => match c.target_union {
            Some(TargetUnion::ModRevision(v)) => kv.mod_revision.cmp(&v),
            _ => kv.mod_revision.cmp(&0),
        },
        Ok(CompareTarget::Version) => match c.target_union {
            Some(TargetUnion::Version(v)) => kv.version.cmp(&v),
            _ => kv.version.cmp(&0),
        },
        Ok(CompareTarget::Lease) => match c.target_union {
            Some(TargetUnion::Lease(v)) => kv.lease.cmp(&v),
            _ => kv.lease.cmp(&0),
        },
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

fn apply_compare<R: RevRead>(idx: &Index, r: &R, c: &Compare, cur: i64) -> Result<bool, KvError> {
    let mut any = false;
    for (_, rev) in idx.live_in(&c.key, &c.range_end, cur) {
        any = true;
        if !compare_kv(c, &load(r, rev)?) {
            return Ok(false);
        }
    }
    if !any {
        // A missing key has no value to compare, but compares as zero revisions/version.
        if c.target == compare::CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(true)
}

/// The branch taken by a txn and, in pre-order, by each nested txn on that branch.
fn compare_path<R: RevRead>(
    idx: &Index,
    r: &R,
    t: &TxnRequest,
    cur: i64,
    path: &mut Vec<bool>,
) -> Result<(), KvError> {
    let mut ok = true;
    for c in &t.compare {
        if !apply_compare(idx, r, c, cur)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(n)) = &op.request {
            compare_path(idx, r, n, cur, path)?;
        }
    }
    Ok(())
}

/// etcd's appliers ahead of the apply, outermost first; each may refuse a request before
/// anything changes: auth (permissions checked again as the entry applies, against the auth
/// state every member has at this point of the log), quota (etcd's capped applier) and
/// corruption (etcd's corrupt applier).
///
/// Invariant: a request a layer refuses changes nothing and takes no revision, on every
/// member alike.
fn admit(idx: &Index, r: &raft_request::Request, who: &AuthInfo) -> Result<(), KvError> {
    auth_layer(idx, r, who)?;
    quota_layer(idx, r)?;
    corrupt_layer(idx, r)
}

fn auth_layer(idx: &Index, r: &raft_request::Request, who: &AuthInfo) -> Result<(), KvError> {
    if idx.auth.enabled() {
        check_permissions(idx, r, who)?;
    }
    Ok(())
}

fn alarm_raised(idx: &Index, alarm: AlarmType) -> bool {
    idx.alarms.values().any(|b| b & alarm_bit(alarm) != 0)
}

/// With NOSPACE raised, nothing that can grow the store applies; deletes, compaction and
/// reads still do, so space can be freed.
fn quota_layer(idx: &Index, r: &raft_request::Request) -> Result<(), KvError> {
    if crate::check::quota_cost(r) > 0 && alarm_raised(idx, AlarmType::Nospace) {
        return Err(KvError::NoSpace);
    }
    Ok(())
}

/// With CORRUPT raised, no request changes the keyspace; alarms, membership, auth and lease
/// checkpoints still apply so the cluster can recover.
fn corrupt_layer(idx: &Index, r: &raft_request::Request) -> Result<(), KvError> {
    let changes_keys = matches!(
        r,
        raft_request::Request::Put(_)
            | raft_request::Request::DeleteRange(_)
            | raft_request::Request::Txn(_)
            | raft_request::Request::Compaction(_)
            | raft_request::Request::LeaseGrant(_)
            | raft_request::Request::LeaseRevoke(_)
    );
    if changes_keys && alarm_raised(idx, AlarmType::Corrupt) {
        return Err(KvError::CorruptCluster);
    }
    Ok(())
}

/// The checks etcd's auth applier makes before a request applies (auth is on).
fn check_permissions(
    idx: &Index,
    r: &raft_request::Request,
    who: &AuthInfo,
) -> Result<(), KvError> {
    use raft_request::Request as R;
    let a = &idx.auth;
    // A lease's keys must all be writable to revoke it or attach more keys to it.
    let lease_puts = |id: i64| -> Result<(), KvError> {
        if let Some(l) = idx.leases.get(&id) {
            for k in &l.keys {
                a.check(who, k, b"", true)?;
            }
        }
        Ok(())
    };
    match r {
        r if auth::needs_admin(r) => a.check_admin(who),
        R::Put(p) => {
            a.check(who, &p.key, b"", true)?;
            lease_puts(p.lease)?;
            if p.prev_kv {
                a.check(who, &p.key, b"", false)?;
            }
            Ok(())
        }
        R::DeleteRange(d) => {
            a.check(who, &d.key, &d.range_end, true)?;
            if d.prev_kv {
                a.check(who, &d.key, &d.range_end, false)?;
            }
            Ok(())
        }
        R::Txn(t) => a.check_txn(who, t),
        R::LeaseRevoke(l) => lease_puts(l.id),
        _ => Ok(()),
    }
}

/// One write request in progress: all of its changes share main revision `begin + 1`.
struct WriteCtx<'i, 't, 'w> {
    idx: &'i mut Index,
    w: &'t mut WriteTx<'w>,
    begin: i64,
    changes: i64,
}

impl WriteCtx<'_, '_, '_> {
    fn view_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn next_rev(&mut self) -> Rev {
        let rev = Rev::new(self.begin + 1, self.changes);
        self.changes += 1;
        rev
    }

    fn current(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        match self
            .idx
            .keys
            .get(&Key::new(key))
            .and_then(|h| h.at(self.view_rev()))
        {
            Some(rev) => Ok(Some(load(&*self.w, rev)?)),
            None => Ok(None),
        }
    }

    fn put_kv(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<(), KvError> {
        let rev = self.next_rev();
        let hist = self.idx.keys.entry(Key::new(key)).or_default();
        if hist.version == 0 {
            hist.create_rev = rev.main;
        }
        hist.version += 1;
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: hist.create_rev,
            mod_revision: rev.main,
            version: hist.version,
            value,
            lease,
        };
        hist.revs.push((rev, false));
        self.put_row(rev, false, &kv)?;
        self.attach(key, lease);
        self.idx.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    /// Stores a revision's row, encoded straight into the backend's buffer.
    fn put_row(&mut self, rev: Rev, tombstone: bool, kv: &KeyValue) -> Result<(), KvError> {
        // Encoding into a Vec cannot run out of room: the result has nothing to report.
        self.w.put_rev_with(rev, tombstone, kv.encoded_len(), |v| {
            kv.encode(v).unwrap_or(())
        })?;
        Ok(())
    }

    /// Moves `key` to `lease` (0: none) in the lease index.
    fn attach(&mut self, key: &[u8], lease: i64) {
        if lease == 0 && self.idx.key_lease.is_empty() {
            return;
        }
        if let Some(old) = self.idx.key_lease.remove(key) {
            if let Some(l) = self.idx.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if lease != 0 {
            if let Some(l) = self.idx.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
                self.idx.key_lease.insert(key.to_vec(), lease);
            }
        }
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, KvError> {
        if g.ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if g.id == 0 {
            return Err(KvError::LeaseNotFound);
        }
        if self.idx.leases.contains_key(&g.id) {
            return Err(KvError::LeaseExist);
        }
        schema::put_lease(self.w, g.id, g.ttl, 0)?;
        self.idx.leases.insert(
            g.id,
            Lease {
                id: g.id,
                ttl: g.ttl,
                ..Default::default()
            },
        );
        Ok(LeaseGrantResponse {
            header: Some(ResponseHeader {
                revision: self.view_rev(),
                ..Default::default()
            }),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// Revokes a lease, deleting its keys in one revision.
    fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, KvError> {
        let Some(lease) = self.idx.leases.get(&r.id) else {
            return Err(KvError::LeaseNotFound);
        };
        let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
        for key in keys {
            self.delete(&DeleteRangeRequest {
                key,
                ..Default::default()
            })?;
        }
        self.idx.leases.remove(&r.id);
        schema::delete_lease(self.w, r.id)?;
        Ok(LeaseRevokeResponse {
            header: Some(ResponseHeader {
                revision: self.view_rev(),
                ..Default::default()
            }),
        })
    }

    fn lease_checkpoint(&mut self, c: &LeaseCheckpointRequest) -> Result<(), KvError> {
        for cp in &c.checkpoints {
            if let Some(l) = self.idx.leases.get_mut(&cp.id) {
                l.remaining = cp.remaining_ttl;
                schema::put_lease(self.w, cp.id, l.ttl, l.remaining)?;
            }
        }
        Ok(())
    }

    fn check_put(&self, p: &PutRequest) -> Result<(), KvError> {
        if (p.ignore_value || p.ignore_lease) && self.current(&p.key)?.is_none() {
            return Err(KvError::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !self.idx.leases.contains_key(&p.lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, KvError> {
        let prev = if p.prev_kv || p.ignore_value || p.ignore_lease {
            self.current(&p.key)?
        } else {
            None
        };
        self.check_put(p)?;
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        self.put_kv(&p.key, value, lease)?;
        Ok(PutResponse {
            header: Some(ResponseHeader {
                revision: self.begin + 1,
                ..Default::default()
            }),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
        let at = self.view_rev();
        let live: Vec<(Key, Rev)> = self
            .idx
            .live_in(&d.key, &d.range_end, at)
            .map(|(k, r)| (k.clone(), r))
            .collect();
        let mut prev_kvs = Vec::new();
        if d.prev_kv {
            for (_, rev) in &live {
                prev_kvs.push(load(&*self.w, *rev)?);
            }
        }
        for (key, _) in &live {
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.put_row(rev, true, &tomb)?;
            self.attach(key.as_bytes(), 0);
            self.idx.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: None,
            });
            if let Some(h) = self.idx.keys.get_mut(key) {
                h.revs.push((rev, true));
                h.version = 0;
                h.create_rev = 0;
            }
        }
        Ok(DeleteRangeResponse {
            header: Some(ResponseHeader {
                revision: self.view_rev(),
                ..Default::default()
            }),
            deleted: live.len() as i64,
            prev_kvs,
        })
    }

    fn range(&self, q: &RangeRequest) -> Result<RangeResponse, KvError> {
        range_view(self.idx, &*self.w, q, self.view_rev())
    }

    /// etcd's pre-execution checks along the chosen path: puts (lease, key existence) and
    /// ranges (revision bounds), so a failing txn changes nothing.
    fn check_txn(&self, t: &TxnRequest, path: &[bool], pos: &mut usize) -> Result<(), KvError> {
        let ok = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestRange(q)) => {
                    if q.revision > self.begin {
                        return Err(KvError::FutureRev);
                    }
                    if q.revision > 0 && q.revision < self.idx.compact_rev {
                        return Err(KvError::Compacted);
                    }
                }
                Some(request_op::Request::RequestTxn(n)) => self.check_txn(n, path, pos)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn exec_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<TxnResponse, KvError> {
        let ok = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(q)) => {
                    response_op::Response::ResponseRange(self.range(q)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(d)?)
                }
                Some(request_op::Request::RequestTxn(n)) => {
                    response_op::Response::ResponseTxn(self.exec_txn(n, path, pos)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: ok,
            responses,
        })
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, KvError> {
        let mut path = Vec::new();
        compare_path(self.idx, &*self.w, t, self.begin, &mut path)?;
        self.check_txn(t, &path, &mut 0)?;
        let mut resp = self.exec_txn(t, &path, &mut 0)?;
        resp.header = Some(ResponseHeader {
            revision: self.view_rev(),
            ..Default::default()
        });
        Ok(resp)
    }

    /// etcd's compaction: from the moment it applies, reads below `c.revision` fail; the
    /// revisions it drops are deleted later in bounded steps, as etcd's scheduled compaction
    /// does (the applier runs them between batches), so applying it costs the same whatever
    /// the history. `physical` deletes them all before answering, as etcd answers it only
    /// once they are gone.
    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, KvError> {
        if c.revision <= self.idx.compact_rev {
            return Err(KvError::Compacted);
        }
        if c.revision > self.idx.rev {
            return Err(KvError::FutureRev);
        }
        let at = c.revision;
        // A later compaction covers an earlier one still in progress: start over at `at`.
        self.idx.compacting = Some(Compacting::new(at));
        if c.physical {
            while drop_compacted(self.idx, self.w, usize::MAX)? {}
        }
        self.idx.compact_rev = at;
        self.w.set_meta(META_COMPACT, at as u64)?;
        Ok(CompactionResponse {
            header: Some(ResponseHeader {
                revision: self.idx.rev,
                ..Default::default()
            }),
        })
    }
}

impl Mvcc {
    /// Opens (or creates) the store at `path`; its key index comes from the checkpoint
    /// beside it and the rows after that, or from every row.
    pub fn open(path: &Path) -> Result<Mvcc, KvError> {
        Mvcc::open_with(path, None)
    }

    /// Opens the store [`Mvcc::import`] built at `path` with the key index the import built
    /// from its rows, so none is read again; when the store's meta is not what the import
    /// saw, the index is built as [`Mvcc::open`] builds it.
    pub fn open_imported(path: &Path, imported: ImportedIndex) -> Result<Mvcc, KvError> {
        Mvcc::open_with(path, Some(imported))
    }

    fn open_with(path: &Path, imported: Option<ImportedIndex>) -> Result<Mvcc, KvError> {
        let backend = Backend::open(path, schema::TABLES)?;
        let mut idx = Index {
            keys: BTreeMap::new(),
            rev: 1,
            compact_rev: -1,
            applied: 0,
            members: BTreeMap::new(),
            removed: backend
                .rows(schema::MEMBERS_REMOVED)?
                .iter()
                .map(|(k, _)| schema::decode_id(schema::MEMBERS_REMOVED, k))
                .collect::<Result<_, _>>()?,
            events: Vec::new(),
            leases: BTreeMap::new(),
            key_lease: std::collections::HashMap::new(),
            compacted_revs: 0,
            compacting: None,
            downgrade: 0,
            alarms: backend
                .rows(schema::ALARMS)?
                .iter()
                .map(|(k, v)| {
                    let id = schema::decode_id(schema::ALARMS, k)?;
                    Ok((id, schema::decode_word(schema::ALARMS, k, v)?))
                })
                .collect::<Result<_, KvError>>()?,
            auth: AuthState::default(),
        };
        for (k, v) in backend.rows(schema::LEASES)? {
            let (id, ttl, remaining) = schema::decode_lease(&k, &v)?;
            idx.leases.insert(
                id,
                Lease {
                    id,
                    ttl,
                    remaining,
                    keys: Default::default(),
                },
            );
        }
        for (k, bytes) in backend.rows(schema::MEMBERS)? {
            let id = schema::decode_id(schema::MEMBERS, &k)?;
            let m = Member::decode(bytes.as_slice())
                .map_err(|e| KvError::Corrupt(format!("member {id:x}: {e}")))?;
            idx.members.insert(id, m);
        }
        let auth_rows = backend.rows(schema::AUTH)?;
        let mut checkpoint = None;
        let mut stored = (None, None);
        backend.view(|r| {
            idx.auth = AuthState::load(
                auth_rows,
                r.meta(auth::META_AUTH_ENABLED)?,
                r.meta(auth::META_AUTH_REVISION)?,
            )?;
            stored = (r.meta(META_APPLIED)?, r.meta(META_REV)?);
            idx.applied = stored.0.unwrap_or(0);
            if let Some(rev) = stored.1 {
                idx.rev = rev as i64;
            }
            idx.downgrade = r.meta(META_DOWNGRADE)?.unwrap_or(0);
            checkpoint = r.meta(META_INDEX_REV)?.zip(r.meta(META_INDEX_SUM)?);
            if let Some(c) = r.meta(META_COMPACT)? {
                idx.compact_rev = c as i64;
                // Whatever a compaction left undone before a restart (or came in a
                // snapshot) is finished in the background, by a pass over the stored
                // revisions at or below it (what a compaction left there is the newest of
                // each key, so the pass reads and keeps them).
                idx.compacting = Some(Compacting::new(c as i64));
            }
            Ok::<_, KvError>(())
        })?;
        let index_path = crate::indexfile::path_for(path);
        let index_source = match imported {
            Some(i) if (i.applied, i.rev) == stored => {
                idx.keys = i.index.keys;
                idx.key_lease = i.index.key_lease;
                idx.rev = idx.rev.max(i.index.rev);
                IndexSource::Imported {
                    keys: idx.keys.len() as u64,
                    revisions: i.index.rows,
                }
            }
            other => match index_from_store(&backend, &mut idx, &index_path, checkpoint)? {
                IndexSource::Rebuilt(why) if other.is_some() => IndexSource::Rebuilt(format!(
                    "the index the import built is not this store's; {why}"
                )),
                source => source,
            },
        };
        for (key, lease) in &idx.key_lease {
            if let Some(l) = idx.leases.get_mut(lease) {
                l.keys.insert(key.clone());
            }
        }
        let enabled = idx.auth.enabled();
        Ok(Mvcc {
            backend,
            index: RwLock::new(idx),
            auth_enabled: enabled.into(),
            failed: std::sync::OnceLock::new(),
            index_path,
            index_source,
        })
    }

    /// The whole key index, with every compaction finished, to compare indexes built
    /// differently.
    #[cfg(test)]
    pub(crate) fn index_digest(&self) -> Vec<IndexDigest> {
        self.finish_compaction().unwrap();
        let idx = self.read();
        idx.keys
            .iter()
            .map(|(k, h)| {
                let lease = idx.key_lease.get(k.as_bytes()).copied().unwrap_or(0);
                (
                    k.as_bytes().to_vec(),
                    h.revs.clone(),
                    h.create_rev,
                    h.version,
                    lease,
                )
            })
            .collect()
    }

    /// How the key index was built at open.
    pub fn index_source(&self) -> &IndexSource {
        &self.index_source
    }

    /// The revision of the key index checkpoint the store records, if any.
    pub fn index_checkpoint_rev(&self) -> Result<Option<i64>, KvError> {
        Ok(self
            .backend
            .view(|r| r.meta(META_INDEX_REV))?
            .map(|r| r as i64))
    }

    /// Writes the key index to its checkpoint file and records the file in the store, so the
    /// next open reads it instead of every stored revision. Runs beside the applier: the
    /// index is copied in chunks under its read lock, each key's revisions up to the
    /// revision `R` it started at. A key's other fields may be newer than `R`; its revisions
    /// after `R` are stored rows, which the next open replays over them. Returns `R`.
    pub fn checkpoint_index(&self) -> Result<i64, crate::indexfile::IndexFileError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let rev = self.read().rev;
        let mut w = crate::indexfile::Writer::create(&self.index_path, rev)?;
        let mut buf = Vec::new();
        let mut after: Option<Key> = None;
        loop {
            buf.clear();
            let (mut records, mut last) = (0u64, None);
            {
                let idx = self.read();
                // A failed apply changed the index without storing the change.
                self.check_failed()?;
                let range = match &after {
                    Some(k) => idx.keys.range((Excluded(k.clone()), Unbounded)),
                    None => idx.keys.range(..),
                };
                for (key, h) in range.take(CHECKPOINT_CHUNK) {
                    last = Some(key.clone());
                    let upto = h.revs.partition_point(|(r, _)| r.main <= rev);
                    if upto == 0 {
                        continue;
                    }
                    let bytes = key.as_bytes();
                    let lease = idx.key_lease.get(bytes).copied().unwrap_or(0);
                    crate::indexfile::encode(
                        &mut buf,
                        bytes,
                        h.create_rev,
                        h.version,
                        lease,
                        &h.revs[..upto],
                    );
                    records += 1;
                }
            }
            w.chunk(&buf, records)?;
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let sum = w.finish()?;
        // Staged after every row up to `rev`: once this is durable, so are they.
        self.backend.update(false, |w| {
            self.check_failed()?;
            w.set_meta(META_INDEX_REV, rev as u64)?;
            w.set_meta(META_INDEX_SUM, u64::from(sum))?;
            Ok::<_, KvError>(())
        })?;
        Ok(rev)
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies log entries `(index, request)` in order, all in one backend transaction.
    /// Entries at or below the applied index are skipped (replay after restart).
    /// The outer error is fatal (storage failed); inner errors belong to each request.
    pub fn apply_batch(
        &self,
        entries: &[(u64, Option<RaftRequest>)],
        durable: bool,
    ) -> Result<AppliedBatch, KvError> {
        self.check_failed()?;
        let mut idx = self.write();
        let idx = &mut *idx;
        idx.events.clear();
        let out = self.backend.update(durable, |w| {
            let mut out = Vec::with_capacity(entries.len());
            let mut last = idx.applied;
            for (index, req) in entries {
                if *index <= last {
                    continue;
                }
                last = *index;
                let res = match req {
                    Some(RaftRequest {
                        request: Some(r),
                        username,
                        auth_revision,
                        ..
                    }) => {
                        let who = AuthInfo {
                            user: username.clone(),
                            revision: *auth_revision,
                        };
                        Self::apply_one(idx, w, r, &who, *index)
                    }
                    _ => Ok(Applied::Nothing),
                };
                if let Err(KvError::Backend(e)) = res {
                    return Err(KvError::Backend(e));
                }
                out.push(res);
            }
            if last > idx.applied {
                idx.applied = last;
                w.set_meta(META_APPLIED, last)?;
                w.set_meta(META_REV, idx.rev as u64)?;
            }
            Ok(out)
        });
        if let Err(e) = &out {
            // Before the index lock goes: a checkpoint must not copy what was not stored.
            let _ = self.failed.set(e.to_string());
        }
        self.auth_enabled
            .store(idx.auth.enabled(), std::sync::atomic::Ordering::Relaxed);
        // The next batch is likely as large: room for it now rather than regrown per event.
        let room = Vec::with_capacity(idx.events.len());
        let events = std::mem::replace(&mut idx.events, room);
        Ok(AppliedBatch {
            results: out?,
            events,
            rev: idx.rev,
        })
    }

    fn apply_one(
        idx: &mut Index,
        w: &mut WriteTx<'_>,
        r: &raft_request::Request,
        who: &AuthInfo,
        index: u64,
    ) -> Result<Applied, KvError> {
        admit(idx, r, who)?;
        match r {
            raft_request::Request::Authenticate(a) => {
                idx.auth.authenticate(a)?;
                let token = if a.simple_token_prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}.{index}", a.simple_token_prefix)
                };
                return Ok(Applied::Authenticated {
                    user: a.name.clone(),
                    token,
                });
            }
            r if auth::is_auth_change(r) => return Ok(Applied::Auth(idx.auth.apply(w, r)?)),
            _ => {}
        }
        let begin = idx.rev;
        let mut ctx = WriteCtx {
            idx,
            w,
            begin,
            changes: 0,
        };
        let out = match r {
            raft_request::Request::Alarm(a) => Applied::Alarm(apply_alarm(ctx.idx, ctx.w, a)?),
            raft_request::Request::Put(p) => Applied::Put(ctx.put(p)?),
            raft_request::Request::DeleteRange(d) => Applied::DeleteRange(ctx.delete(d)?),
            raft_request::Request::Txn(t) => Applied::Txn(ctx.txn(t)?),
            raft_request::Request::Compaction(c) => Applied::Compaction(ctx.compact(c)?),
            raft_request::Request::MemberChange(c) => {
                Applied::Members(apply_member(ctx.idx, ctx.w, c)?)
            }
            raft_request::Request::LeaseGrant(g) => Applied::LeaseGrant(ctx.lease_grant(g)?),
            raft_request::Request::LeaseRevoke(r) => Applied::LeaseRevoke(ctx.lease_revoke(r)?),
            raft_request::Request::LeaseCheckpoint(c) => {
                ctx.lease_checkpoint(c)?;
                Applied::Nothing
            }
            raft_request::Request::DowngradeInfoSet(d) => {
                let target = if d.enabled {
                    let mut parts = d.ver.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
                    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                    (major << 32) | minor
                } else {
                    0
                };
                ctx.idx.downgrade = target;
                ctx.w.set_meta(META_DOWNGRADE, target)?;
                Applied::Nothing
            }
            // Handled above, before any revision is taken.
            _ => Applied::Nothing,
        };
        if ctx.changes > 0 {
            ctx.idx.rev = begin + 1;
        }
        Ok(out)
    }

    /// Whether auth is on (no lock taken).
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` over the applied auth store.
    pub fn with_auth<R>(&self, f: impl FnOnce(&AuthState) -> R) -> R {
        f(&self.read().auth)
    }

    /// The keys a lease holds, for permission checks.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.read()
            .leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a compaction has revisions left to delete.
    pub fn compacting(&self) -> bool {
        self.read().compacting.is_some()
    }

    /// Deletes up to `limit` keys' and revisions' worth of what the compaction in progress
    /// drops, in one (not yet durable) store transaction. Returns whether more remains.
    pub fn compact_step(&self, limit: usize) -> Result<bool, KvError> {
        self.check_failed()?;
        let mut idx = self.write();
        if idx.compacting.is_none() {
            return Ok(false);
        }
        let idx = &mut *idx;
        let out = self
            .backend
            .update(false, |w| drop_compacted(idx, w, limit.max(1)));
        if let Err(e) = &out {
            let _ = self.failed.set(e.to_string());
        }
        out
    }

    fn check_failed(&self) -> Result<(), KvError> {
        match self.failed.get() {
            Some(e) => Err(KvError::Corrupt(format!("store failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Finishes the compaction in progress, so a hash or an export sees the store as every
    /// member ends up holding it, whatever its progress.
    pub(crate) fn finish_compaction(&self) -> Result<(), KvError> {
        // Asked under the read lock first: with nothing pending (the usual case) a hash or
        // an export never takes the write lock.
        while self.compacting() && self.compact_step(usize::MAX)? {}
        Ok(())
    }

    /// Rewrites the backend compactly while reads and writes go on (see
    /// [`Backend::defragment`]); returns the file size before and after.
    pub fn defragment(&self) -> Result<(u64, u64), KvError> {
        Ok(self.backend.defragment()?)
    }

    /// Active alarms, by member then type, as etcd lists them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        alarm_list(&self.read().alarms)
    }

    /// Streams the whole state (keys, history, members, applied index) from one consistent
    /// read; the payload of a raft snapshot.
    pub fn export(&self, out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<(), KvError> {
        self.finish_compaction()?;
        Ok(self.backend.export(out)?)
    }

    /// [`Mvcc::export`], telling `size` the stream's exact length first.
    pub fn export_sized(
        &self,
        size: &mut dyn FnMut(u64) -> std::io::Result<()>,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), KvError> {
        self.finish_compaction()?;
        Ok(self.backend.export_sized(size, out)?)
    }

    /// The applied index the store file at `path` records, read without building its key
    /// index (what [`Mvcc::open`] spends its time on).
    pub fn stored_applied_index(path: &Path) -> Result<u64, KvError> {
        let backend = Backend::open(path, schema::TABLES)?;
        Ok(backend.view(|r| r.meta(META_APPLIED))?.unwrap_or(0))
    }

    /// Builds a store at `path` from an [`Mvcc::export`] stream (durably), and its key index
    /// from the rows as they go in: open it with [`Mvcc::open_imported`]. The sender's
    /// key index checkpoint record is dropped: its file is not here.
    pub fn import(path: &Path, input: impl std::io::Read) -> Result<ImportedIndex, KvError> {
        let mut out = ImportedIndex {
            index: RowIndex::default(),
            applied: None,
            rev: None,
        };
        Backend::import_filtered(path, schema::TABLES, input, &mut |rec| {
            match &rec {
                SnapRecord::Kv(..) => {
                    let (rev, tombstone, row) = rec
                        .kv_row()
                        .ok_or_else(|| BackendError::BadSnapshot("stored revision".into()))?;
                    out.index
                        .add(rev, tombstone, row)
                        .map_err(|e| BackendError::BadSnapshot(e.to_string()))?;
                }
                SnapRecord::Meta(name, _) if name == META_INDEX_REV || name == META_INDEX_SUM => {
                    return Ok(None)
                }
                SnapRecord::Meta(name, v) if name == META_APPLIED => out.applied = Some(*v),
                SnapRecord::Meta(name, v) if name == META_REV => out.rev = Some(*v),
                _ => {}
            }
            Ok(Some(rec))
        })?;
        Ok(out)
    }

    /// Every lease, in id order.
    /// Every lease's TTLs, in id order (without copying the keys they hold).
    pub fn lease_ttls(&self) -> Vec<LeaseTtl> {
        self.read().leases.values().map(Lease::ttls).collect()
    }

    pub fn lease_ttl(&self, id: i64) -> Option<LeaseTtl> {
        self.read().leases.get(&id).map(Lease::ttls)
    }

    /// `snapshot restore --bump-revision N --mark-compacted`: the store's revision moves `N`
    /// past its latest and everything before the new revision is compacted (as etcdutl's
    /// restore marks it), so a cluster restored from an older snapshot never reuses a revision
    /// clients have seen. Returns the new revision.
    pub fn bump_and_compact(&self, amount: i64) -> Result<i64, KvError> {
        let mut idx = self.write();
        let idx = &mut *idx;
        let rev = idx
            .rev
            .checked_add(amount)
            .filter(|r| *r > 0)
            .ok_or(KvError::FutureRev)?;
        self.backend.update(true, |w| {
            idx.rev = rev;
            w.set_meta(META_REV, rev as u64)?;
            let mut ctx = WriteCtx {
                idx: &mut *idx,
                w,
                begin: rev,
                changes: 0,
            };
            ctx.compact(&CompactionRequest {
                revision: rev,
                physical: true,
            })?;
            Ok::<_, KvError>(())
        })?;
        Ok(rev)
    }

    /// Forgets the raft index the store was applied to, durably: after a restore replays an
    /// archive into it, the new cluster's own log starts again from the first index.
    pub fn forget_applied(&self) -> Result<(), KvError> {
        let mut idx = self.write();
        self.backend.update(true, |w| {
            w.set_meta(META_APPLIED, 0)?;
            Ok::<_, KvError>(())
        })?;
        idx.applied = 0;
        Ok(())
    }

    /// A consistent read-only snapshot of the store, for exports that walk it more than once.
    pub fn read_snapshot(&self) -> Result<ballast_storage::backend::ReadSnapshot, KvError> {
        Ok(self.backend.read_snapshot()?)
    }

    /// A lease with the keys attached to it.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.read().leases.get(&id).cloned()
    }

    /// Changes to keys in `[key, range_end)` at revisions `from..=to`, in revision order, at
    /// most `max` events (whole revisions are never split). The second value is the last
    /// revision covered. Compacted history is `KvError::Compacted`.
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<(Vec<Event>, i64), KvError> {
        let idx = self.read();
        if from < idx.compact_rev {
            return Err(KvError::Compacted);
        }
        let to = to.min(idx.rev);
        let mut out = Vec::new();
        let mut covered = to;
        self.backend.view(|r| {
            r.for_each_rev_between(Rev::new(from, 0), Rev::new(to + 1, 0), |rev, stored| {
                if out.len() >= max && out.last().is_some_and(|e: &Event| mod_rev(e) != rev.main) {
                    covered = rev.main - 1;
                    return Ok(false);
                }
                let kv = KeyValue::decode(stored.kv.as_slice())
                    .map_err(|_| BackendError::Malformed(rev))?;
                if in_range(&kv.key, key, range_end) {
                    let kind = if stored.tombstone {
                        EventType::Delete
                    } else {
                        EventType::Put
                    };
                    out.push(Event {
                        r#type: kind as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    });
                }
                Ok(true)
            })?;
            Ok::<_, KvError>(())
        })?;
        Ok((out, covered))
    }

    /// etcd's HashKV: a CRC32C over every stored revision up to `rev` (0: the current one),
    /// identical on members that applied the same log. Returns (hash, compact revision, the
    /// revision hashed).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), KvError> {
        self.finish_compaction()?;
        // The index is read under its lock together with a read snapshot of the rows, so the
        // two agree; the lock is released before the rows are hashed.
        let (snap, keep, any_live, compact, at) = {
            let idx = self.read();
            let (cur, compact) = (idx.rev, idx.compact_rev);
            if rev > cur {
                return Err(KvError::FutureRev);
            }
            if rev > 0 && rev < compact {
                return Err(KvError::Compacted);
            }
            let at = if rev <= 0 { cur } else { rev };
            // etcd's `kvindex.Keep(at)` for the revisions at or below the compaction: the
            // latest revision of each key at `at`, if that is not a tombstone.
            // etcd filters only when its keep map is not empty, i.e. when some key is live at
            // `at`; only the kept revisions at or below the compaction need remembering.
            let mut any_live = false;
            let mut keep: std::collections::HashSet<Rev> = Default::default();
            if compact > 0 {
                for h in idx.keys.values() {
                    let pos = h.revs.partition_point(|(r, _)| r.main <= at);
                    let Some(&(r, tomb)) = pos.checked_sub(1).and_then(|i| h.revs.get(i)) else {
                        continue;
                    };
                    any_live |= !tomb;
                    if r.main <= compact && !tomb {
                        keep.insert(r);
                    }
                }
            }
            (self.backend.read_snapshot()?, keep, any_live, compact, at)
        };
        // etcd's HashByRev: CRC-32C of the bucket name `key`, then of each stored revision up
        // to `at` as etcd stores it (its revision key, then its KeyValue; a tombstone's holds
        // only the key), skipping what a compaction at or below `at` drops, and a tombstone at
        // the compaction revision itself (etcd versions disagree on keeping it).
        let mut h = crc32c::crc32c(b"key");
        let mut row = crate::etcd_db::EtcdRow::default();
        snap.for_each_rev(&mut |r, tomb, kv| {
            if r.main > at {
                return Ok(());
            }
            if r.main <= compact && any_live && !keep.contains(&r) {
                return Ok(());
            }
            if r.main == compact && tomb {
                return Ok(());
            }
            let (key, value) = row.of(r, tomb, kv)?;
            h = crc32c::crc32c_append(crc32c::crc32c_append(h, key), value);
            Ok(())
        })?;
        Ok((h, compact, at))
    }

    /// The value `key` had just before revision `rev` (a watcher's `prev_kv`).
    pub fn prev_kv(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        if rev <= 1 {
            return None;
        }
        let req = RangeRequest {
            key: key.to_vec(),
            revision: rev - 1,
            ..Default::default()
        };
        self.range(&req).ok()?.kvs.into_iter().next()
    }

    /// Whether member `id` is a learner (false for unknown members).
    pub fn is_learner(&self, id: u64) -> bool {
        self.read().members.get(&id).is_some_and(|m| m.is_learner)
    }

    /// Whether `id` belonged to a member that was removed (IDs are never reused).
    pub fn is_removed(&self, id: u64) -> bool {
        self.read().removed.contains(&id)
    }

    /// The member records as of the applied index, in id order.
    pub fn members(&self) -> Vec<Member> {
        self.read().members.values().cloned().collect()
    }

    /// A range over this member's applied state.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let idx = self.read();
        self.backend.view(|r| range_view(&idx, r, req, idx.rev))
    }

    /// A range answered from memory while its key-values stay within `budget` encoded bytes;
    /// a larger one in key order (no sort, no filter, not count-only) is pinned instead, for
    /// the caller to read page by page with [`Mvcc::range_page`] and never hold it whole.
    pub fn range_within(&self, req: &RangeRequest, budget: usize) -> Result<Ranged, KvError> {
        if !pageable(req) {
            return self.range(req).map(Ranged::Whole);
        }
        let idx = self.read();
        let cur = idx.rev;
        self.backend.view(|r| {
            let at = readable_at(&idx, req, cur)?;
            let fetch = if req.limit > 0 {
                req.limit as usize
            } else {
                usize::MAX
            };
            let (mut count, mut bytes, mut over) = (0i64, 0usize, false);
            let mut kvs = Vec::new();
            for (_, rev) in idx.live_in(&req.key, &req.range_end, at) {
                count += 1;
                if over || kvs.len() >= fetch {
                    continue;
                }
                // Sized before it is read (a key's stored length is its encoding's), so an
                // answer over budget is never held.
                let len = if req.keys_only {
                    0
                } else {
                    r.kv_len(rev)?.ok_or_else(|| not_stored(rev))?
                };
                if bytes + range_entry_len(len) > budget {
                    over = true;
                    kvs = Vec::new();
                    continue;
                }
                let kv = loaded(r, rev, req.keys_only)?;
                bytes += range_entry_len(kv.encoded_len());
                kvs.push(kv);
            }
            let more = req.limit > 0 && count > req.limit;
            if over {
                return Ok(Ranged::Pinned(Pinned {
                    revision: cur,
                    at,
                    count,
                    more,
                    send: (count as usize).min(fetch),
                }));
            }
            Ok(Ranged::Whole(RangeResponse {
                header: Some(ResponseHeader {
                    revision: cur,
                    ..Default::default()
                }),
                kvs,
                more,
                count,
            }))
        })
    }

    /// Up to `max_keys` key-values of a range at revision `at` from `from` on, handed to `out`
    /// as encoded `mvccpb.KeyValue`s (as stored; re-encoded without the value for
    /// `keys_only`), stopping once `max_bytes` have been handed out. Returns the key the next
    /// page starts from, if keys are left. Fails with `Compacted` once a compaction passes
    /// `at`, and with what `out` fails with.
    #[allow(clippy::too_many_arguments)]
    pub fn range_page<E: From<KvError> + From<BackendError>>(
        &self,
        from: &[u8],
        end: &[u8],
        at: i64,
        keys_only: bool,
        max_keys: usize,
        max_bytes: usize,
        out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<Vec<u8>>, E> {
        self.page_view(from, end, at, max_keys, max_bytes, &mut |r, rev| {
            let kv = stored_kv(r, rev, keys_only)?;
            out(&kv)?;
            Ok(kv.len())
        })
    }

    /// [`Mvcc::range_page`] handing out only the length of each encoded key-value, read
    /// without copying it where the value is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn range_page_lens<E: From<KvError> + From<BackendError>>(
        &self,
        from: &[u8],
        end: &[u8],
        at: i64,
        keys_only: bool,
        max_keys: usize,
        max_bytes: usize,
        out: &mut dyn FnMut(usize) -> Result<(), E>,
    ) -> Result<Option<Vec<u8>>, E> {
        self.page_view(from, end, at, max_keys, max_bytes, &mut |r, rev| {
            let len = if keys_only {
                stored_kv(r, rev, true)?.len()
            } else {
                r.kv_len(rev)?.ok_or_else(|| not_stored(rev))?
            };
            out(len)?;
            Ok(len)
        })
    }

    /// Visits the live revisions of a range at `at` from `from` on, `visit` answering the
    /// bytes each took, until `max_keys` or `max_bytes`; returns the next live key, if any.
    fn page_view<E: From<KvError> + From<BackendError>>(
        &self,
        from: &[u8],
        end: &[u8],
        at: i64,
        max_keys: usize,
        max_bytes: usize,
        visit: &mut dyn FnMut(&ballast_storage::backend::ReadTx<'_>, Rev) -> Result<usize, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let idx = self.read();
        if at < idx.compact_rev {
            return Err(KvError::Compacted.into());
        }
        self.backend.view(|r| {
            let (mut n, mut bytes) = (0usize, 0usize);
            let mut live = idx.live_in(from, end, at).peekable();
            while n < max_keys && bytes < max_bytes {
                let Some((_, rev)) = live.next() else {
                    return Ok(None);
                };
                bytes += visit(r, rev)?;
                n += 1;
            }
            Ok(live.peek().map(|(k, _)| k.as_bytes().to_vec()))
        })
    }

    /// Keys in the index, live or not yet compacted away (etcd's `keys_total`).
    pub fn key_count(&self) -> usize {
        self.read().keys.len()
    }

    pub fn current_rev(&self) -> i64 {
        self.read().rev
    }

    /// The enabled downgrade job's target version (major, minor), if any.
    pub fn downgrade_target(&self) -> Option<(u64, u64)> {
        let d = self.read().downgrade;
        (d != 0).then_some((d >> 32, d & 0xffff_ffff))
    }

    /// Revisions compactions removed since the store was opened (etcd's
    /// `etcd_debugging_mvcc_db_compaction_keys_total`, which also starts at 0).
    pub fn compacted_revisions(&self) -> u64 {
        self.read().compacted_revs
    }

    pub fn compact_rev(&self) -> i64 {
        self.read().compact_rev
    }

    /// Index of the last applied log entry (etcd's consistent index).
    pub fn applied_index(&self) -> u64 {
        self.read().applied
    }

    /// The applied raft index and the revision it left, read together.
    pub fn applied_and_rev(&self) -> (u64, i64) {
        let idx = self.read();
        (idx.applied, idx.rev)
    }

    pub fn db_size(&self) -> u64 {
        self.backend.size()
    }

    /// What the backend quota counts (see `Backend::quota_size`).
    pub fn quota_size(&self) -> u64 {
        self.backend.quota_size()
    }

    pub fn db_size_in_use(&self) -> u64 {
        self.backend.size_in_use()
    }

    /// Row writes the store has staged and not yet begun to commit.
    pub fn staged_writes(&self) -> usize {
        self.backend.staged_writes()
    }

    /// Forces everything applied so far to disk.
    pub fn sync(&self) -> Result<(), KvError> {
        let _idx = self.read();
        self.backend.update(true, |_| Ok::<_, KvError>(()))
    }
}

/// Applies a membership change. Idempotent: re-applying a change, or a change to a member that
/// is already gone, leaves the records as they were.
fn apply_member(
    idx: &mut Index,
    w: &mut WriteTx<'_>,
    c: &MemberChange,
) -> Result<Vec<Member>, KvError> {
    use member_change::Kind;
    let Some(m) = c.member.as_ref() else {
        return Ok(idx.members.values().cloned().collect());
    };
    let kind = Kind::try_from(c.kind).unwrap_or(Kind::Attr);
    let updated = match (kind, idx.members.get(&m.id)) {
        (Kind::Add, _) => Some(m.clone()),
        (Kind::Remove, Some(_)) => {
            idx.members.remove(&m.id);
            w.delete(schema::MEMBERS, &schema::id_key(m.id))?;
            idx.removed.insert(m.id);
            w.put(
                schema::MEMBERS_REMOVED,
                &schema::id_key(m.id),
                &0u64.to_le_bytes(),
            )?;
            None
        }
        (Kind::Promote, Some(old)) => Some(Member {
            is_learner: false,
            ..old.clone()
        }),
        (Kind::Update, Some(old)) => Some(Member {
            peer_ur_ls: m.peer_ur_ls.clone(),
            ..old.clone()
        }),
        (Kind::Attr, Some(old)) => Some(Member {
            name: m.name.clone(),
            client_ur_ls: m.client_ur_ls.clone(),
            ..old.clone()
        }),
        (_, None) => None,
    };
    if let Some(u) = updated {
        w.put(schema::MEMBERS, &schema::id_key(u.id), &u.encode_to_vec())?;
        idx.members.insert(u.id, u);
    }
    Ok(idx.members.values().cloned().collect())
}

/// The revision an event happened at.
pub fn mod_rev(e: &Event) -> i64 {
    e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

/// Whether `k` lies in `[key, end)` with etcd's conventions (empty end: the key alone;
/// `"\0"`: everything from `key`).
pub fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return k == key;
    }
    k >= key && (end == [0] || k < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: u64, kind: member_change::Kind, id: u64) -> (u64, Option<RaftRequest>) {
        let m = Member {
            id,
            name: format!("m{id}"),
            peer_ur_ls: vec![format!("http://h{id}:2380")],
            ..Default::default()
        };
        let r = RaftRequest {
            id: 0,
            request: Some(raft_request::Request::MemberChange(MemberChange {
                kind: kind as i32,
                member: Some(m),
            })),
            ..Default::default()
        };
        (index, Some(r))
    }

    #[test]
    fn member_changes_are_idempotent_and_removals_are_remembered() {
        use member_change::Kind;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            let s = Mvcc::open(&path).unwrap();
            let batch = [
                change(1, Kind::Add, 1),
                change(2, Kind::Add, 2),
                change(3, Kind::Remove, 2),
                change(4, Kind::Remove, 2),
                change(5, Kind::Promote, 9),
            ];
            let res = s.apply_batch(&batch, true).unwrap();
            assert!(res.results.iter().all(|r| r.is_ok()));
            assert_eq!(s.members().len(), 1);
            assert!(s.is_removed(2) && !s.is_removed(1));
        }
        // Replaying the same entries over the reopened store changes nothing.
        let s = Mvcc::open(&path).unwrap();
        assert!(s.is_removed(2));
        assert_eq!(s.members().iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
        s.apply_batch(&[change(2, Kind::Add, 2)], true).unwrap();
        assert_eq!(s.members().len(), 1);
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    fn put(index: u64, k: &str, v: &str) -> (u64, Option<RaftRequest>) {
        let p = PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let r = RaftRequest {
            id: 0,
            request: Some(raft_request::Request::Put(p)),
            ..Default::default()
        };
        (index, Some(r))
    }

    fn store(entries: &[(u64, Option<RaftRequest>)]) -> (tempfile::TempDir, Mvcc) {
        let d = tempfile::tempdir().unwrap();
        let s = Mvcc::open(&d.path().join("db")).unwrap();
        s.apply_batch(entries, false).unwrap();
        (d, s)
    }

    fn request(index: u64, r: raft_request::Request) -> (u64, Option<RaftRequest>) {
        let r = RaftRequest {
            request: Some(r),
            ..Default::default()
        };
        (index, Some(r))
    }

    #[test]
    fn an_imported_index_is_used_only_with_the_store_it_was_built_with() {
        let (d, a) = store(&[put(1, "a", "1"), put(2, "b", "2")]);
        let (_e, b) = store(&[put(1, "a", "1"), put(2, "a", "3"), put(3, "c", "4")]);
        let (pa, pb) = (d.path().join("a"), d.path().join("b"));
        let built_a = Mvcc::import(&pa, exported(&a).as_slice()).unwrap();
        Mvcc::import(&pb, exported(&b).as_slice()).unwrap();
        let wrong = Mvcc::open_imported(&pb, built_a).unwrap();
        match wrong.index_source() {
            IndexSource::Rebuilt(why) => assert!(why.contains("not this store's"), "{why}"),
            other => panic!("{other}"),
        }
        assert_eq!(wrong.index_digest(), b.index_digest());
    }

    #[test]
    fn an_import_refuses_a_row_the_index_cannot_read() {
        let (d, s) = store(&[put(1, "a", "1")]);
        s.backend
            .update(true, |w| {
                w.put_rev(Rev::new(2, 0), false, &[0xff, 0xff, 0xff])?;
                w.set_meta(META_REV, 2)
            })
            .unwrap();
        let out = Mvcc::import(&d.path().join("copy"), exported(&s).as_slice());
        assert!(
            matches!(out, Err(KvError::Backend(BackendError::BadSnapshot(_)))),
            "{:?}",
            out.err()
        );
    }

    #[test]
    fn a_checkpoint_taken_while_entries_apply_reopens_to_the_index_the_rows_give() {
        use raft_request::Request as R;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let mut index = 0u64;
        let mut next = |r: R| {
            index += 1;
            request(index, r)
        };
        {
            let s = std::sync::Arc::new(Mvcc::open(&path).unwrap());
            let grant = |id| R::LeaseGrant(LeaseGrantRequest { ttl: 60, id });
            s.apply_batch(&[next(grant(5)), next(grant(6))], false)
                .unwrap();
            let checkpoints = {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| s.checkpoint_index().unwrap())
                        .collect::<Vec<_>>()
                })
            };
            for round in 0..400u32 {
                let key = format!("k{}", round % 37).into_bytes();
                let r = match round % 5 {
                    0 => R::DeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    }),
                    n => R::Put(PutRequest {
                        key,
                        value: vec![n as u8; 10],
                        lease: [0, 5, 6][round as usize % 3],
                        ..Default::default()
                    }),
                };
                s.apply_batch(&[next(r)], false).unwrap();
            }
            let taken = checkpoints.join().unwrap();
            assert!(taken.windows(2).all(|w| w[0] <= w[1]), "{taken:?}");
            // After the last checkpoint: a lease revoked, keys deleted and written.
            s.apply_batch(
                &[
                    next(R::LeaseRevoke(LeaseRevokeRequest { id: 5 })),
                    next(R::Put(PutRequest {
                        key: b"k1".to_vec(),
                        lease: 6,
                        ..Default::default()
                    })),
                ],
                false,
            )
            .unwrap();
            assert!(s.lease_keys(5).is_empty());
            s.sync().unwrap();
        }
        let s = Mvcc::open(&path).unwrap();
        assert!(
            matches!(s.index_source(), IndexSource::Checkpoint { replayed, .. } if *replayed > 0),
            "{}",
            s.index_source()
        );
        assert_eq!(s.index_digest(), rebuilt_digest(&path));
        assert!(s.lease_keys(6).contains(&b"k1".to_vec()));
        assert_eq!(s.lease(5), None);
    }

    #[test]
    fn a_damaged_or_foreign_checkpoint_means_a_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let other = d.path().join("other");
        for (p, second) in [(&path, "b"), (&other, "c")] {
            let s = Mvcc::open(p).unwrap();
            s.apply_batch(&[put(1, "a", "1"), put(2, second, "2")], false)
                .unwrap();
            s.checkpoint_index().unwrap();
            s.apply_batch(&[put(3, "a", "3")], false).unwrap();
        }
        assert!(matches!(
            Mvcc::open(&path).unwrap().index_source(),
            IndexSource::Checkpoint { replayed: 1, .. }
        ));
        let file = crate::indexfile::path_for(&path);
        let good = std::fs::read(&file).unwrap();
        let mut bad = good.clone();
        bad[20] ^= 4;
        // Damaged; another store's (same revision, other keys); missing.
        let foreign = std::fs::read(crate::indexfile::path_for(&other)).unwrap();
        for contents in [bad, foreign, vec![]] {
            std::fs::write(&file, &contents).unwrap();
            let s = Mvcc::open(&path).unwrap();
            assert!(
                matches!(s.index_source(), IndexSource::Rebuilt(_)),
                "{}",
                s.index_source()
            );
            let got = s
                .range(&RangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(got.kvs[0].value, b"3");
        }
    }

    /// Every page of a pinned range, concatenated, as `RangeResponse.kvs` entries.
    fn paged(s: &Mvcc, req: &RangeRequest, p: &Pinned, max_bytes: usize) -> Vec<KeyValue> {
        let (mut out, mut from) = (Vec::new(), req.key.clone());
        loop {
            let left = p.send - out.len();
            let mut page = Vec::new();
            let next = s
                .range_page::<KvError>(
                    &from,
                    &req.range_end,
                    p.at,
                    req.keys_only,
                    left,
                    max_bytes,
                    &mut |b| {
                        page.push(KeyValue::decode(b).unwrap());
                        Ok(())
                    },
                )
                .unwrap();
            assert!(
                !page.is_empty() || left == 0,
                "a page always makes progress"
            );
            // The lengths-only read of the same page sees the same key-values.
            let mut lens = Vec::new();
            let next_too = s
                .range_page_lens::<KvError>(
                    &from,
                    &req.range_end,
                    p.at,
                    req.keys_only,
                    left,
                    max_bytes,
                    &mut |n| {
                        lens.push(n);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(next_too, next);
            assert_eq!(
                lens,
                page.iter().map(|kv| kv.encoded_len()).collect::<Vec<_>>()
            );
            out.extend(page);
            match next {
                Some(k) if out.len() < p.send => from = k,
                _ => return out,
            }
        }
    }

    #[test]
    fn a_range_over_budget_is_pinned_and_its_pages_are_the_whole_answer() {
        let mut entries: Vec<_> = (0..40)
            .map(|i| put(i + 1, &format!("k{i:02}"), &"v".repeat(50 + i as usize)))
            .collect();
        entries.push(put(41, "k05", "newer"));
        entries.push(put(42, "z", "outside"));
        let (_d, s) = store(&entries);
        for (limit, keys_only, revision) in
            [(0, false, 0), (7, false, 0), (0, true, 0), (0, false, 20)]
        {
            let req = RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                limit,
                keys_only,
                revision,
                ..Default::default()
            };
            let whole = s.range(&req).unwrap();
            // A budget the answer fits in: the same answer, whole.
            assert_eq!(
                s.range_within(&req, 1 << 20).unwrap(),
                Ranged::Whole(whole.clone())
            );
            let Ranged::Pinned(p) = s.range_within(&req, 100).unwrap() else {
                panic!("over budget: pinned");
            };
            assert_eq!((p.revision, p.count, p.more), (43, whole.count, whole.more));
            assert_eq!(p.send, whole.kvs.len());
            // Pages of any size make up exactly the whole answer, in order.
            for max_bytes in [1, 150, 1000, usize::MAX] {
                assert_eq!(
                    paged(&s, &req, &p, max_bytes),
                    whole.kvs,
                    "limit {limit} bytes {max_bytes}"
                );
            }
        }
        // Sorted, filtered or count-only ranges are never pinned.
        let sorted = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        };
        assert!(matches!(
            s.range_within(&sorted, 1).unwrap(),
            Ranged::Whole(_)
        ));
    }

    #[test]
    fn pages_of_a_pinned_range_fail_once_a_compaction_passes_it() {
        let (_d, s) = store(&[put(1, "a", "1"), put(2, "a", "2"), put(3, "b", "1")]);
        let req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            revision: 2,
            ..Default::default()
        };
        let Ranged::Pinned(p) = s.range_within(&req, 0).unwrap() else {
            panic!("over budget: pinned");
        };
        let compact = RaftRequest {
            request: Some(raft_request::Request::Compaction(CompactionRequest {
                revision: 4,
                physical: false,
            })),
            ..Default::default()
        };
        s.apply_batch(&[(4, Some(compact))], false).unwrap();
        let page = s.range_page::<KvError>(b"a", b"c", p.at, false, 10, 10, &mut |_| Ok(()));
        assert!(matches!(page, Err(KvError::Compacted)), "{page:?}");
    }

    fn compaction(index: u64, revision: i64, physical: bool) -> (u64, Option<RaftRequest>) {
        let r = RaftRequest {
            request: Some(raft_request::Request::Compaction(CompactionRequest {
                revision,
                physical,
            })),
            ..Default::default()
        };
        (index, Some(r))
    }

    /// Every revision the store holds, in order, with its encoded key-value (after a sync).
    fn stored_rows(s: &Mvcc) -> Vec<(i64, Vec<u8>)> {
        s.sync().unwrap();
        let mut rows = Vec::new();
        s.backend
            .read_snapshot()
            .unwrap()
            .for_each_rev(&mut |rev, _, kv| {
                rows.push((rev.main, kv.to_vec()));
                Ok(())
            })
            .unwrap();
        rows
    }

    /// 40 keys written 50 times each, in turn (entries 1 to 2,000): every key has revisions
    /// all over the table, and a compaction at 2,001 drops 1,960 of them.
    fn forty_keys_fifty_times() -> Vec<(u64, Option<RaftRequest>)> {
        (0..2000u64)
            .map(|i| put(i + 1, &format!("k{:02}", i % 40), &i.to_string()))
            .collect()
    }

    #[test]
    fn a_compaction_step_deletes_the_oldest_stored_revisions() {
        let (_d, s) = store(&forty_keys_fifty_times());
        s.apply_batch(&[compaction(2001, 2001, false)], true)
            .unwrap();
        assert!(s.compact_step(500).unwrap());
        let left: Vec<i64> = stored_rows(&s).into_iter().map(|(rev, _)| rev).collect();
        // The step looked at the 500 oldest rows (revisions 2 to 501: the store starts at
        // 1) and dropped them all, neighbours in the table as etcd's compaction deletes,
        // not every revision of a dozen keys.
        assert_eq!(left.len(), 1500);
        assert_eq!(left.first(), Some(&502));
        while s.compact_step(500).unwrap() {}
        assert_eq!(s.compacted_revisions(), 1960);
    }

    #[test]
    fn the_applied_index_is_read_without_opening_the_store() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            let s = Mvcc::open(&path).unwrap();
            s.apply_batch(&forty_keys_fifty_times(), false).unwrap();
            s.sync().unwrap();
        }
        assert_eq!(Mvcc::stored_applied_index(&path).unwrap(), 2000);
        let empty = d.path().join("empty");
        drop(Mvcc::open(&empty).unwrap());
        assert_eq!(Mvcc::stored_applied_index(&empty).unwrap(), 0);
    }

    /// The compaction's row walk reads only the start of each row: the key comes from it when
    /// it holds the whole key, and from the whole row when a long key runs past a split
    /// value's first part. Either way every key keeps exactly its newest revision.
    #[test]
    fn a_compaction_finds_the_keys_of_split_rows_and_long_keys() {
        let sizes = [10usize, 700, 5_000];
        let mut history = Vec::new();
        for round in 0..4 {
            for (i, &key_len) in sizes.iter().enumerate() {
                for (j, &value_len) in [1usize, 3_000, 10_000].iter().enumerate() {
                    let key = format!("{i}{j}{}", "k".repeat(key_len));
                    let value = format!("{round}{}", "v".repeat(value_len));
                    history.push(put(history.len() as u64 + 1, &key, &value));
                }
            }
        }
        let (_d, s) = store(&history);
        let head = history.len() as i64 + 1;
        s.apply_batch(&[compaction(history.len() as u64 + 1, head, false)], true)
            .unwrap();
        while s.compact_step(4).unwrap() {}
        let mut left = Vec::new();
        for (rev, kv) in stored_rows(&s) {
            let kv = KeyValue::decode(kv.as_slice()).unwrap();
            assert!(kv.value.starts_with(b"3"), "the newest value");
            left.push(rev);
        }
        assert_eq!(left, (head - 8..=head).collect::<Vec<_>>());
        assert_eq!(s.compacted_revisions(), 27);

        let kv = KeyValue {
            key: b"abc".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(encoded_key(&kv), Some(&b"abc"[..]));
        assert_eq!(encoded_key(&kv[..3]), None);
        assert_eq!(encoded_key(&KeyValue::default().encode_to_vec()), None);
    }

    /// A compaction applies at once whatever the history, and its revisions are deleted in
    /// bounded steps afterwards (after a restart too); reads below it fail from the start,
    /// and the store ends as a physical compaction leaves it, with the same hash.
    #[test]
    fn compaction_is_applied_at_once_and_deleted_in_bounded_steps() {
        let history = forty_keys_fifty_times();
        let (_dp, physical) = store(&history);
        physical
            .apply_batch(&[compaction(2001, 2001, true)], false)
            .unwrap();
        assert!(!physical.compacting());
        assert_eq!(physical.compacted_revisions(), 1960);

        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            let s = Mvcc::open(&path).unwrap();
            s.apply_batch(&history, false).unwrap();
            s.apply_batch(&[compaction(2001, 2001, false)], true)
                .unwrap();
            // Applied, not yet deleted; reads below it already fail.
            assert!(s.compacting());
            assert_eq!(s.compacted_revisions(), 0);
            let old = RangeRequest {
                key: b"k00".to_vec(),
                revision: 100,
                ..Default::default()
            };
            assert!(matches!(s.range(&old), Err(KvError::Compacted)));
            // One bounded step, then the member stops.
            assert!(s.compact_step(500).unwrap());
            assert!(s.compacted_revisions() > 0 && s.compacted_revisions() < 500);
            s.sync().unwrap();
        }
        let s = Mvcc::open(&path).unwrap();
        assert!(s.compacting());
        let mut steps = 0;
        while s.compact_step(500).unwrap() {
            steps += 1;
        }
        assert!(steps >= 2, "{steps} steps");
        assert!(!s.compacting());
        assert_eq!(s.hash_kv(0).unwrap(), physical.hash_kv(0).unwrap());
        assert_eq!(s.key_count(), 40);
        // A hash mid-compaction finishes it first, so members agree whatever their progress.
        let (_dh, h) = store(&history);
        h.apply_batch(&[compaction(2001, 2001, false)], false)
            .unwrap();
        assert_eq!(h.hash_kv(0).unwrap(), physical.hash_kv(0).unwrap());
        assert!(!h.compacting());
    }

    #[test]
    fn hash_kv_depends_on_history_up_to_the_revision_only() {
        let a = [put(1, "a", "1"), put(2, "b", "2"), put(3, "a", "3")];
        let (_da, sa) = store(&a);
        let (_db, sb) = store(&a[..2]);
        let (_dc, sc) = store(&[put(1, "a", "1"), put(2, "b", "X")]);
        let (h3, compact, at) = sa.hash_kv(0).unwrap();
        assert_eq!((compact, at), (-1, 4));
        assert_eq!(sa.hash_kv(4).unwrap().0, h3);
        // The same prefix of history hashes the same; different values do not.
        assert_eq!(sa.hash_kv(3).unwrap().0, sb.hash_kv(0).unwrap().0);
        assert_ne!(sb.hash_kv(0).unwrap().0, sc.hash_kv(0).unwrap().0);
        assert_ne!(sa.hash_kv(3).unwrap().0, h3);
        assert!(matches!(sa.hash_kv(5), Err(KvError::FutureRev)));
    }

    #[test]
    fn bumping_moves_the_revision_ahead_and_compacts_everything_before_it() {
        let (_d, s) = store(&[put(1, "a", "1"), put(2, "a", "2"), put(3, "b", "1")]);
        assert_eq!(s.current_rev(), 4);
        assert_eq!(s.bump_and_compact(1000).unwrap(), 1004);
        assert_eq!((s.current_rev(), s.compact_rev()), (1004, 1004));
        let get = |key: &str, revision: i64| {
            s.range(&RangeRequest {
                key: key.into(),
                revision,
                ..Default::default()
            })
        };
        // Latest values keep their own revisions; anything older is compacted away.
        let a = get("a", 0).unwrap().kvs;
        assert_eq!((a[0].value.as_slice(), a[0].mod_revision), (&b"2"[..], 3));
        assert!(matches!(get("a", 2), Err(KvError::Compacted)));
        // The next write takes the revision after the bumped one.
        let next = s.apply_batch(&[put(4, "c", "1")], true).unwrap();
        assert_eq!(next.rev, 1005);
    }

    #[test]
    fn a_batch_returns_its_events_in_revision_order_and_replays_return_none() {
        let d = tempfile::tempdir().unwrap();
        let s = Mvcc::open(&d.path().join("db")).unwrap();
        let del = RaftRequest {
            request: Some(raft_request::Request::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let batch = [put(1, "a", "1"), put(2, "b", "2"), (3, Some(del))];
        let b = s.apply_batch(&batch, false).unwrap();
        let got: Vec<(i32, Vec<u8>, i64)> = b
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                (e.r#type, kv.key, kv.mod_revision)
            })
            .collect();
        let (put_t, del_t) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(
            got,
            vec![
                (put_t, b"a".to_vec(), 2),
                (put_t, b"b".to_vec(), 3),
                (del_t, b"a".to_vec(), 4)
            ]
        );
        assert_eq!((b.rev, b.results.len()), (4, 3));
        // Entries already applied change nothing and report nothing.
        let again = s.apply_batch(&batch, false).unwrap();
        assert!(again.events.is_empty() && again.results.is_empty());
        assert_eq!(again.rev, 4);
    }
}

/// An alarm as etcd words it in `Status.errors` and `alarm list`: the proto's text format
/// (Go's `%v`), trailing space included.
pub fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| a.alarm.to_string());
    format!("memberID:{} alarm:{name} ", a.member_id)
}

fn alarm_bit(t: AlarmType) -> u64 {
    1u64 << (t as i32)
}

fn alarm_list(alarms: &BTreeMap<u64, u64>) -> Vec<AlarmMember> {
    let mut out = Vec::new();
    for (member, bits) in alarms {
        for t in [AlarmType::Nospace, AlarmType::Corrupt] {
            if bits & alarm_bit(t) != 0 {
                out.push(AlarmMember {
                    member_id: *member,
                    alarm: t as i32,
                });
            }
        }
    }
    out
}

/// etcd's alarm store: ACTIVATE answers with the alarm it raised, DEACTIVATE with the one it
/// cleared (nothing if it was not raised), GET with every active alarm. An alarm type of NONE
/// with GET lists all; raising NONE does nothing.
fn apply_alarm(
    idx: &mut Index,
    w: &mut WriteTx<'_>,
    a: &AlarmRequest,
) -> Result<AlarmResponse, KvError> {
    let t = AlarmType::try_from(a.alarm).unwrap_or(AlarmType::None);
    let one = AlarmMember {
        member_id: a.member_id,
        alarm: t as i32,
    };
    let mut resp = AlarmResponse::default();
    match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
        AlarmAction::Get => {
            resp.alarms = alarm_list(&idx.alarms)
                .into_iter()
                .filter(|m| t == AlarmType::None || m.alarm == t as i32)
                .collect();
        }
        AlarmAction::Activate => {
            if t == AlarmType::None {
                return Ok(resp);
            }
            let bits = idx.alarms.entry(a.member_id).or_insert(0);
            *bits |= alarm_bit(t);
            schema::set_alarms(w, a.member_id, *bits)?;
            resp.alarms.push(one);
        }
        AlarmAction::Deactivate => {
            let Some(bits) = idx.alarms.get_mut(&a.member_id) else {
                return Ok(resp);
            };
            if *bits & alarm_bit(t) == 0 {
                return Ok(resp);
            }
            *bits &= !alarm_bit(t);
            schema::set_alarms(w, a.member_id, *bits)?;
            if *bits == 0 {
                idx.alarms.remove(&a.member_id);
            }
            resp.alarms.push(one);
        }
    }
    Ok(resp)
}
