//! The continuous archive: committed raft entries, as the leader's log holds them, in
//! immutable segment objects under `archive/`, named by the first and last index they hold
//! and the revision the store is at after the last (`archive/<first>-<last>-<revision>.seg`,
//! zero-padded so names sort by index; revision 0: not known). A snapshot's manifest
//! records the raft index it holds; the snapshot plus the segments after that index rebuild
//! the state at any later revision the archive reaches.
//!
//! A segment: `MAGIC`, the term of the entry before its first (0: not known), then per entry index, term, the Unix time in milliseconds the leader
//! read it from its log, kind (0 normal, 1 configuration change) and the data's length (u64,
//! u64, u64, u8, u32, little-endian), the data, and a CRC-32C of the record; then `END`, the
//! entry count, the time through which the segment holds every committed entry (u32, u64)
//! and a CRC-32C of everything before it. Reading one back trusts nothing: lengths are
//! checked before allocating, indexes must run on from the name's first to its last without
//! a hole, terms never fall, and every checksum must match.
//!
//! Terms tell one raft history from another: two logs holding an entry of the same index and
//! term agree up to it. A restore checks that each segment continues the snapshot or the
//! segment before it ([`Decoded::continues`]), so the archive of another cluster (one restored
//! from these backups and writing to the same prefix) is never replayed onto this one.

use crate::store::Store;
use crate::{BackupStoreError, Result};

/// The archive's sub-prefix.
pub const DIR: &str = "archive";
const MAGIC: &[u8; 8] = b"BLSTARC2";
const END: &[u8; 4] = b"END.";
const SUFFIX: &str = ".seg";
/// Bytes of entries one segment holds at most (a segment may end sooner, at a flush).
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// The largest segment read back: one entry past `SEGMENT_BYTES` (raft entries are bounded
/// by the request size limit) and the framing.
pub const SEGMENT_LIMIT: u64 = 4 * SEGMENT_BYTES;
/// The largest entry a segment may hold.
pub const ENTRY_LIMIT: u32 = 64 << 20;
const RECORD_HEAD: usize = 8 + 8 + 8 + 1 + 4;
const TRAILER: usize = 4 + 4 + 8;
const HEAD: usize = MAGIC.len() + 8;

/// One archived log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    /// When the leader read it from its log (Unix milliseconds): it was committed by then.
    pub unix_ms: u64,
    pub conf_change: bool,
    pub data: Vec<u8>,
}

/// A segment object's index range, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub first: u64,
    pub last: u64,
    /// The store's revision after the last entry (0: not known).
    pub last_revision: i64,
}

impl Segment {
    /// The object's name under the archive's sub-prefix.
    pub fn name(&self) -> String {
        format!(
            "{:020}-{:020}-{:020}{SUFFIX}",
            self.first, self.last, self.last_revision
        )
    }

    /// The object's name from the location's prefix.
    pub fn path(&self) -> String {
        format!("{DIR}/{}", self.name())
    }

    pub fn parse(name: &str) -> Option<Segment> {
        let stem = name.strip_suffix(SUFFIX)?;
        let mut parts = stem.split('-');
        let (a, b, r) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || [a, b, r]
                .iter()
                .any(|p| p.len() != 20 || !p.bytes().all(|c| c.is_ascii_digit()))
        {
            return None;
        }
        let s = Segment {
            first: a.parse().ok()?,
            last: b.parse().ok()?,
            last_revision: r.parse().ok()?,
        };
        (s.first >= 1 && s.first <= s.last).then_some(s)
    }
}

/// A decoded segment: its entries, the term of the entry before them, and the time through
/// which it holds every committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The term of the entry before the first (0: not known).
    pub prev_term: u64,
    pub entries: Vec<Entry>,
    pub through_ms: u64,
}

impl Decoded {
    /// Whether these entries continue a log whose entry at `index` has `term`: the entry
    /// before the first, or one inside, agrees. `None`: nothing to compare (a term not known,
    /// or `index` not next to or inside the segment).
    pub fn continues(&self, index: u64, term: u64) -> Option<bool> {
        let first = self.entries.first()?.index;
        if term == 0 {
            return None;
        }
        if index + 1 == first {
            return (self.prev_term != 0).then_some(self.prev_term == term);
        }
        let e = self
            .entries
            .get(usize::try_from(index.checked_sub(first)?).ok()?)?;
        Some(e.term == term)
    }
}

/// Encodes `entries` (consecutive indexes, at least one), after an entry of `prev_term` (0: not
/// known), as a segment holding every entry committed by `through_ms`.
pub fn encode(entries: &[Entry], prev_term: u64, through_ms: u64) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| RECORD_HEAD + e.data.len() + 4).sum();
    let mut out = Vec::with_capacity(HEAD + size + TRAILER + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&prev_term.to_le_bytes());
    for e in entries {
        let start = out.len();
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&e.unix_ms.to_le_bytes());
        out.push(u8::from(e.conf_change));
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend_from_slice(END);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&through_ms.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a segment named `seg`; any damage is an error.
pub fn decode(seg: &Segment, bytes: &[u8]) -> Result<Decoded> {
    let bad = |why: String| BackupStoreError::Object {
        name: seg.path(),
        why,
    };
    let body_len = bytes
        .len()
        .checked_sub(4)
        .filter(|n| *n >= HEAD + TRAILER)
        .ok_or_else(|| bad("too short for a segment".into()))?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch".into()));
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err(bad("not an archive segment".into()));
    }
    let expected = seg.last - seg.first + 1;
    let mut out: Vec<Entry> = Vec::new();
    let le_u64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let prev_term = le_u64(&body[MAGIC.len()..HEAD]);
    let mut at = HEAD;
    loop {
        let rest = &body[at..];
        if rest.len() == TRAILER && &rest[..END.len()] == END {
            let count = u32::from_le_bytes(rest[4..8].try_into().unwrap_or([0; 4]));
            if u64::from(count) != out.len() as u64 || out.len() as u64 != expected {
                return Err(bad(format!(
                    "{} entries where {expected} are named",
                    out.len()
                )));
            }
            return Ok(Decoded {
                prev_term,
                entries: out,
                through_ms: le_u64(&rest[8..16]),
            });
        }
        if rest.len() < RECORD_HEAD + 4 {
            return Err(bad("torn record".into()));
        }
        let index = le_u64(&rest[0..8]);
        let term = le_u64(&rest[8..16]);
        let unix_ms = le_u64(&rest[16..24]);
        let kind = rest[24];
        let len = u32::from_le_bytes(rest[25..29].try_into().unwrap_or([0; 4]));
        if len > ENTRY_LIMIT || kind > 1 {
            return Err(bad(format!("record at index {index}: bad header")));
        }
        let end = RECORD_HEAD + len as usize;
        if rest.len() < end + 4 {
            return Err(bad(format!("record at index {index}: torn")));
        }
        let crc = u32::from_le_bytes(rest[end..end + 4].try_into().unwrap_or([0; 4]));
        if crc32c::crc32c(&rest[..end]) != crc {
            return Err(bad(format!("record at index {index}: checksum mismatch")));
        }
        if index != seg.first + out.len() as u64 || index > seg.last {
            return Err(bad(format!("index {index} out of order")));
        }
        // A raft log's terms never fall.
        if term < out.last().map_or(prev_term, |e| e.term) {
            return Err(bad(format!("index {index}: its term {term} falls")));
        }
        out.push(Entry {
            index,
            term,
            unix_ms,
            conf_change: kind == 1,
            data: rest[RECORD_HEAD..end].to_vec(),
        });
        at += end + 4;
    }
}

/// The archive's segments, by first index.
pub async fn segments(store: &Store) -> Result<Vec<Segment>> {
    let mut v: Vec<Segment> = store
        .list_under(DIR)
        .await?
        .iter()
        .filter_map(|o| Segment::parse(&o.name))
        .collect();
    v.sort();
    Ok(v)
}

/// Stores one segment of `entries` after an entry of `prev_term` (0: not known), holding every
/// entry committed by `through_ms`, after whose last entry the store is at `last_revision`
/// (0: not known).
pub async fn put(
    store: &Store,
    entries: &[Entry],
    prev_term: u64,
    through_ms: u64,
    last_revision: i64,
) -> Result<Segment> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(BackupStoreError::Object {
            name: DIR.into(),
            why: "an empty segment".into(),
        });
    };
    let seg = Segment {
        first: first.index,
        last: last.index,
        last_revision,
    };
    store
        .put_small(&seg.path(), encode(entries, prev_term, through_ms))
        .await?;
    Ok(seg)
}

/// Reads one segment back, checked.
pub async fn get(store: &Store, seg: &Segment) -> Result<Decoded> {
    let bytes = store.get_small(&seg.path(), SEGMENT_LIMIT).await?;
    decode(seg, &bytes)
}

/// The segments to replay after raft index `base`, in order and without a hole: each one
/// must start at or before the index after the last one's end. Returns them and, if the run
/// stops at a hole before the newest segment, where the hole is.
pub fn run_after(all: &[Segment], base: u64) -> (Vec<Segment>, Option<u64>) {
    let mut next = base + 1;
    let mut out = Vec::new();
    for s in all {
        if s.last < next {
            continue;
        }
        if s.first > next {
            return (out, Some(next));
        }
        next = s.last + 1;
        out.push(*s);
    }
    (out, None)
}

/// Leaves out of `pending` (consecutive entries about to be stored) those the stored run of
/// `segs` already holds from `pending`'s first index on — a deposed leader may store a
/// segment late. Returns the last index held and the term of the last entry left out, if any
/// was.
pub fn leave_out_stored(pending: &mut Vec<Entry>, segs: &[Segment]) -> Option<(u64, u64)> {
    let first = pending.first()?.index;
    let held = run_after(segs, first - 1).0.last()?.last;
    let n = pending.iter().take_while(|e| e.index <= held).count();
    let term = pending.get(n.checked_sub(1)?)?.term;
    pending.drain(..n);
    Some((held, term))
}

/// Deletes segments that end at or before `index` (nothing restorable needs them once the
/// oldest kept snapshot holds `index`). Returns their names.
pub async fn prune_before(store: &Store, index: u64) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for s in segments(store).await? {
        if s.last <= index {
            store.delete(&s.path()).await?;
            gone.push(s.path());
        }
    }
    if !gone.is_empty() {
        store.sync_under(DIR).await?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sg(first: u64, last: u64, last_revision: i64) -> Segment {
        Segment {
            first,
            last,
            last_revision,
        }
    }

    fn entries(first: u64, n: u64) -> Vec<Entry> {
        (first..first + n)
            .map(|i| Entry {
                index: i,
                term: 2 + i / 12,
                unix_ms: 1_800_000_000_000 + i,
                conf_change: i % 7 == 0,
                data: vec![i as u8; (i % 5) as usize],
            })
            .collect()
    }

    #[test]
    fn segments_round_trip_and_any_damage_is_an_error() {
        let es = entries(10, 9);
        let seg = sg(10, 18, 30);
        let bytes = encode(&es, 2, 77);
        assert_eq!(
            decode(&seg, &bytes).ok(),
            Some(Decoded {
                prev_term: 2,
                entries: es.clone(),
                through_ms: 77
            })
        );
        assert_eq!(Segment::parse(&seg.name()), Some(seg));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&seg, &b).is_err(), "flipped byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&seg, &bytes[..n]).is_err(), "cut at {n}");
        }
        // The name must match the contents.
        assert!(decode(&sg(10, 19, 0), &bytes).is_err());
        assert!(decode(&sg(11, 18, 0), &bytes).is_err());
        // A hole inside is refused even with good checksums.
        let mut holed = es.clone();
        holed.remove(3);
        assert!(decode(&seg, &encode(&holed, 2, 77)).is_err());
        // So is a falling term, and a first term below the one before it.
        let mut fell = es.clone();
        fell[5].term = 1;
        assert!(decode(&seg, &encode(&fell, 2, 77)).is_err());
        assert!(decode(&seg, &encode(&es, 3, 77)).is_err());
        for bad in [
            "00000000000000000010-00000000000000000009-00000000000000000000.seg",
            "00000000000000000000-00000000000000000009-00000000000000000000.seg",
            "00000000000000000010-00000000000000000018.seg",
            "10-18-30.seg",
            "00000000000000000010-00000000000000000018-00000000000000000030.db",
            "00000000000000000010-00000000000000000018-00000000000000000030-1.seg",
        ] {
            assert_eq!(Segment::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_segment_continues_only_the_history_it_follows() {
        // Entries 10..=18: terms 2 through 11, 3 from 12.
        let d = decode(&sg(10, 18, 0), &encode(&entries(10, 9), 2, 0)).expect("decode");
        assert_eq!(d.continues(9, 2), Some(true));
        assert_eq!(d.continues(9, 5), Some(false));
        assert_eq!(d.continues(12, 3), Some(true));
        assert_eq!(d.continues(12, 2), Some(false));
        assert_eq!(d.continues(9, 0), None);
        assert_eq!(d.continues(5, 2), None);
        assert_eq!(d.continues(19, 3), None);
        let unknown = decode(&sg(10, 18, 0), &encode(&entries(10, 9), 0, 0)).expect("decode");
        assert_eq!(unknown.continues(9, 2), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let seg = sg(1, 3, 0);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..600 {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if len > 8 {
                b[..8].copy_from_slice(MAGIC);
            }
            assert!(decode(&seg, &b).is_err());
        }
    }

    #[test]
    fn a_run_stops_at_a_hole() {
        let s = |first, last| sg(first, last, 0);
        let all = [s(1, 5), s(6, 9), s(8, 12), s(20, 25)];
        assert_eq!(
            run_after(&all, 3),
            (vec![s(1, 5), s(6, 9), s(8, 12)], Some(13))
        );
        assert_eq!(run_after(&all, 12), (vec![], Some(13)));
        assert_eq!(run_after(&all, 19), (vec![s(20, 25)], None));
        assert_eq!(run_after(&all, 30), (vec![], None));
    }

    #[test]
    fn entries_another_leader_stored_are_left_out() {
        let s = |first, last| sg(first, last, 0);
        let mut p = entries(10, 6);
        assert_eq!(leave_out_stored(&mut p, &[s(1, 9)]), None);
        assert_eq!(p.len(), 6);
        // A segment from a hole on does not count: nothing before it holds 10..=11.
        assert_eq!(leave_out_stored(&mut p, &[s(1, 9), s(12, 20)]), None);
        assert_eq!(
            leave_out_stored(&mut p, &[s(1, 9), s(10, 12)]),
            Some((12, 3))
        );
        assert_eq!(p.first().map(|e| e.index), Some(13));
        assert_eq!(
            leave_out_stored(&mut p, &[s(5, 13), s(14, 40)]),
            Some((40, 3))
        );
        assert!(p.is_empty());
        assert_eq!(leave_out_stored(&mut p, &[s(1, 50)]), None);
    }

    #[tokio::test]
    async fn segments_store_list_and_prune() {
        let d = tempfile::tempdir().expect("tmp");
        let store = Store::open(
            &crate::Location::Dir(d.path().to_path_buf()),
            &crate::S3Settings::from_env(),
        )
        .expect("open");
        put(&store, &entries(1, 4), 0, 1, 3).await.expect("put");
        put(&store, &entries(5, 3), 2, 2, 0).await.expect("put");
        let segs = segments(&store).await.expect("list");
        assert_eq!(segs, [sg(1, 4, 3), sg(5, 7, 0)]);
        assert_eq!(
            get(&store, &segs[1]).await.expect("get").entries,
            entries(5, 3)
        );
        let gone = prune_before(&store, 4).await.expect("prune");
        assert_eq!(gone.len(), 1);
        assert_eq!(segments(&store).await.expect("list"), [segs[1]]);
        // The snapshot listing does not see the archive.
        assert!(store.list().await.expect("list").is_empty());
    }
}
