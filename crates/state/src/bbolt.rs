//! Reading bbolt database files (etcd's backend, and so etcd's snapshot files), trusting
//! nothing in them. The layout is `docs/bbolt-format.md`.
//!
//! Pages are read one at a time from any `Read + Seek` source, so memory is bounded by the
//! largest page (an overflow run holding one large value), never by the file.
//!
//! Invariants: every offset and length is checked against the page it is in before it is
//! read; every page id is checked against the file's high-water mark and length; keys come out
//! of a bucket strictly increasing, so a page reachable twice (a loop or a shared subtree in a
//! damaged file) is an error, not an endless walk; nothing here panics on any input.

use std::io::{Read, Seek, SeekFrom};

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;
/// The meta struct: magic, version, page size, flags, root bucket (16), freelist, high-water
/// page id, txid, then the FNV-1a checksum of everything before it.
pub(crate) const META_CHECKED: usize = 56;
const META_LEN: usize = META_CHECKED + 8;
/// A bucket's value starts with its root page id and sequence.
const BUCKET_HEADER: usize = 16;

pub(crate) const FLAG_BRANCH: u16 = 0x01;
pub(crate) const FLAG_LEAF: u16 = 0x02;
pub(crate) const FLAG_META: u16 = 0x04;
pub(crate) const LEAF_BUCKET: u32 = 0x01;

/// Smallest and largest page sizes accepted.
const MIN_PAGE: u64 = 512;
const MAX_PAGE: u64 = 64 << 10;
/// Largest run of pages read as one (a page and its overflow): bounds what one damaged header
/// can make us allocate.
pub const MAX_PAGE_RUN: u64 = 256 << 20;
/// Deepest B+tree accepted (bbolt's are a handful of levels).
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("invalid database: {0}")]
    Invalid(String),
    #[error("reading the database: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(what: impl Into<String>) -> BoltError {
    BoltError::Invalid(what.into())
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// 64-bit FNV-1a, bbolt's meta checksum.
pub(crate) fn fnv1a64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The valid meta page with the higher transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u64,
    /// The root bucket's root page.
    pub root: u64,
    /// `u64::MAX` when the file carries no freelist (etcd's `NoFreelistSync`).
    pub freelist: u64,
    /// Pages below this id are in use.
    pub high_water: u64,
    pub txid: u64,
}

fn parse_meta(b: &[u8]) -> Option<Meta> {
    let m = b.get(..META_LEN)?;
    if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION {
        return None;
    }
    if fnv1a64(&m[..META_CHECKED]) != u64_at(m, META_CHECKED)? {
        return None;
    }
    let page_size = u64::from(u32_at(m, 8)?);
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    Some(Meta {
        page_size,
        root: u64_at(m, 16)?,
        freelist: u64_at(m, 32)?,
        high_water: u64_at(m, 40)?,
        txid: u64_at(m, 48)?,
    })
}

/// Where a bucket's tree lives: in a page of the file, or inline in its parent's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRef {
    Page(u64),
    /// The bytes of a leaf page held in the bucket's value.
    Inline(Vec<u8>),
}

impl BucketRef {
    /// The bucket a leaf value describes.
    pub fn from_value(v: &[u8]) -> Result<BucketRef, BoltError> {
        let root = u64_at(v, 0).ok_or_else(|| invalid("bucket value too short"))?;
        if root != 0 {
            return Ok(BucketRef::Page(root));
        }
        Ok(BucketRef::Inline(v[BUCKET_HEADER.min(v.len())..].to_vec()))
    }
}

/// One element of a page, located by the page's own offsets.
struct Element<'a> {
    key: &'a [u8],
    /// A leaf's value, or a branch element's child page id.
    value: &'a [u8],
    child: u64,
    bucket: bool,
}

/// Elements of a page (header included in `p`), each bounds-checked.
fn elements(p: &[u8], at_page: u64) -> Result<(bool, Vec<Element<'_>>), BoltError> {
    let bad = |what: &str| invalid(format!("page {at_page}: {what}"));
    let flags = u16_at(p, 8).ok_or_else(|| bad("truncated header"))?;
    let count = usize::from(u16_at(p, 10).ok_or_else(|| bad("truncated header"))?);
    let leaf = match flags {
        FLAG_LEAF => true,
        FLAG_BRANCH => false,
        f => return Err(bad(&format!("flags {f:#x} where a tree page belongs"))),
    };
    if PAGE_HEADER + count * ELEMENT > p.len() {
        return Err(bad("element table past the page"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let word = |off: usize| u32_at(p, at + off).map(|w| w as usize);
        let e = if leaf {
            let (Some(fl), Some(pos), Some(ks), Some(vs)) = (word(0), word(4), word(8), word(12))
            else {
                return Err(bad("element past the page"));
            };
            let start = at.checked_add(pos).ok_or_else(|| bad("element offset"))?;
            let kend = start.checked_add(ks).ok_or_else(|| bad("key size"))?;
            let vend = kend.checked_add(vs).ok_or_else(|| bad("value size"))?;
            let (Some(key), Some(value)) = (p.get(start..kend), p.get(kend..vend)) else {
                return Err(bad("key or value past the page"));
            };
            Element {
                key,
                value,
                child: 0,
                bucket: fl as u32 & LEAF_BUCKET != 0,
            }
        } else {
            let (Some(pos), Some(ks), Some(child)) = (word(0), word(4), u64_at(p, at + 8)) else {
                return Err(bad("element past the page"));
            };
            let start = at.checked_add(pos).ok_or_else(|| bad("element offset"))?;
            let kend = start.checked_add(ks).ok_or_else(|| bad("key size"))?;
            let key = p.get(start..kend).ok_or_else(|| bad("key past the page"))?;
            Element {
                key,
                value: &[],
                child,
                bucket: false,
            }
        };
        out.push(e);
    }
    Ok((leaf, out))
}

/// What a bucket's entries are handed to: key, value, whether it is a nested bucket.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), BoltError> + 'a;

/// A bbolt file opened for reading.
pub struct BoltReader<R> {
    src: R,
    len: u64,
    meta: Meta,
}

impl<R: Read + Seek> BoltReader<R> {
    /// Reads and checks the meta pages of a source `len` bytes long.
    pub fn open(mut src: R, len: u64) -> Result<BoltReader<R>, BoltError> {
        let mut first = vec![0u8; (PAGE_HEADER + META_LEN).min(len as usize)];
        src.seek(SeekFrom::Start(0))?;
        src.read_exact(&mut first)?;
        let m0 = first.get(PAGE_HEADER..).and_then(parse_meta);
        // Without a valid first meta, the second sits one (usual) page in.
        let second_at = m0.as_ref().map_or(4096, |m| m.page_size);
        let m1 = if second_at + (PAGE_HEADER + META_LEN) as u64 <= len {
            let mut b = vec![0u8; PAGE_HEADER + META_LEN];
            src.seek(SeekFrom::Start(second_at))?;
            src.read_exact(&mut b)?;
            b.get(PAGE_HEADER..).and_then(parse_meta)
        } else {
            None
        };
        let meta = match (m0, m1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return Err(invalid("no valid meta page")),
        };
        if meta
            .high_water
            .checked_mul(meta.page_size)
            .is_none_or(|end| end > len)
        {
            return Err(invalid(format!(
                "file of {len} bytes is shorter than its {} pages",
                meta.high_water
            )));
        }
        Ok(BoltReader { src, len, meta })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A page and its overflow pages, checked against the high-water mark and the file.
    fn page(&mut self, id: u64) -> Result<Vec<u8>, BoltError> {
        let ps = self.meta.page_size;
        if id < 2 || id >= self.meta.high_water {
            return Err(invalid(format!(
                "page {id} outside 2..{}",
                self.meta.high_water
            )));
        }
        let mut head = [0u8; PAGE_HEADER];
        self.src.seek(SeekFrom::Start(id * ps))?;
        self.src.read_exact(&mut head)?;
        if u64_at(&head, 0) != Some(id) {
            return Err(invalid(format!("page {id} names another id")));
        }
        let overflow = u64::from(u32_at(&head, 12).unwrap_or(0));
        let run = (overflow + 1).saturating_mul(ps);
        let last = id.saturating_add(overflow);
        if run > MAX_PAGE_RUN || last >= self.meta.high_water || (last + 1) * ps > self.len {
            return Err(invalid(format!("page {id} overflows past the file")));
        }
        let mut p = vec![0u8; run as usize];
        p[..PAGE_HEADER].copy_from_slice(&head);
        self.src.read_exact(&mut p[PAGE_HEADER..])?;
        Ok(p)
    }

    /// The root bucket's tree.
    pub fn root(&self) -> BucketRef {
        BucketRef::Page(self.meta.root)
    }

    /// The named bucket inside `parent`, if there is one.
    pub fn bucket(
        &mut self,
        parent: &BucketRef,
        name: &[u8],
    ) -> Result<Option<BucketRef>, BoltError> {
        let mut found = None;
        self.for_each(parent, &mut |k, v, is_bucket| {
            if is_bucket && k == name && found.is_none() {
                found = Some(BucketRef::from_value(v)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every entry of a bucket in key order: key, value (a nested bucket's is its header and
    /// inline page) and whether it is a nested bucket. Keys must strictly increase.
    pub fn for_each(&mut self, bucket: &BucketRef, f: &mut Visitor<'_>) -> Result<(), BoltError> {
        let mut last: Option<Vec<u8>> = None;
        let mut visit = |k: &[u8], v: &[u8], b: bool| -> Result<(), BoltError> {
            if last.as_deref().is_some_and(|l| l >= k) {
                return Err(invalid("keys out of order (or a page reached twice)"));
            }
            last = Some(k.to_vec());
            f(k, v, b)
        };
        match bucket {
            BucketRef::Page(id) => self.walk(*id, 0, &mut visit),
            BucketRef::Inline(page) => {
                let (leaf, els) = elements(page, 0)?;
                if !leaf {
                    return Err(invalid("inline bucket is not a leaf"));
                }
                for e in els {
                    visit(e.key, e.value, e.bucket)?;
                }
                Ok(())
            }
        }
    }

    fn walk(&mut self, id: u64, depth: usize, visit: &mut Visitor<'_>) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(invalid("tree deeper than any bbolt writes"));
        }
        let p = self.page(id)?;
        let (leaf, els) = elements(&p, id)?;
        if leaf {
            for e in els {
                visit(e.key, e.value, e.bucket)?;
            }
            return Ok(());
        }
        let children: Vec<u64> = els.iter().map(|e| e.child).collect();
        drop(els);
        drop(p);
        for child in children {
            self.walk(child, depth + 1, visit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// `etcdctl snapshot save` of an etcd 3.4.23 holding: foo=bar (rev 2), foo=baz (3), big =
    /// 9,000 bytes of `x` (4, an overflow page), leased=v on a 100 s lease (5), foo deleted
    /// (6). Its last 32 bytes are the SHA-256 etcdctl appends.
    const ETCD_34: &[u8] = include_bytes!("../testdata/etcd-3.4.23-snapshot.db");

    fn reader(b: &[u8]) -> Result<BoltReader<Cursor<&[u8]>>, BoltError> {
        BoltReader::open(Cursor::new(b), b.len() as u64)
    }

    fn entries(r: &mut BoltReader<Cursor<&[u8]>>, b: &BucketRef) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
        let mut out = Vec::new();
        r.for_each(b, &mut |k, v, n| {
            out.push((k.to_vec(), v.to_vec(), n));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_an_etcd_snapshot() {
        let db = &ETCD_34[..ETCD_34.len() - 32];
        let mut r = reader(db).unwrap();
        assert_eq!(r.meta().page_size, 4096);
        assert_eq!(r.meta().freelist, u64::MAX, "etcd writes no freelist");
        let root = r.root();
        let names: Vec<String> = entries(&mut r, &root)
            .into_iter()
            .filter(|e| e.2)
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
            .collect();
        for b in [
            "key", "meta", "lease", "members", "cluster", "alarm", "auth",
        ] {
            assert!(names.iter().any(|n| n == b), "bucket {b} in {names:?}");
        }
        let key = r.bucket(&root, b"key").unwrap().unwrap();
        let revs = entries(&mut r, &key);
        // Keys: 8-byte big-endian main revision, '_', 8-byte sub revision, 't' if a tombstone.
        let mains: Vec<u64> = revs
            .iter()
            .map(|e| u64_at(&e.0, 0).unwrap().swap_bytes())
            .collect();
        assert_eq!(mains, [2, 3, 4, 5, 6]);
        assert_eq!(revs[4].0.len(), 18, "the delete is a tombstone");
        assert_eq!(revs[4].0[17], b't');
        // The overflow page's value is whole: 9,000 bytes of x inside the KeyValue.
        let big = &revs[2].1;
        assert!(big.windows(9000).any(|w| w.iter().all(|c| *c == b'x')));
        let lease = r.bucket(&root, b"lease").unwrap().unwrap();
        assert_eq!(entries(&mut r, &lease).len(), 1);
    }

    #[test]
    fn damaged_files_are_refused_without_panicking() {
        let db = &ETCD_34[..ETCD_34.len() - 32];
        assert!(reader(&db[..100]).is_err());
        assert!(reader(&db[..4096 * 3]).is_err(), "shorter than its pages");
        let mut junk = db.to_vec();
        junk[16..20].copy_from_slice(&0u32.to_le_bytes());
        junk[4096 + 16..4096 + 20].copy_from_slice(&0u32.to_le_bytes());
        assert!(reader(&junk).is_err(), "no valid meta");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any bytes changed anywhere: an answer or an error, never a panic, and never a
        /// page run past the cap.
        #[test]
        fn mutated_files_never_panic(
            flips in proptest::collection::vec((0usize..36_864, proptest::prelude::any::<u8>()), 1..8),
        ) {
            let mut db = ETCD_34[..ETCD_34.len() - 32].to_vec();
            for (at, b) in flips {
                if let Some(x) = db.get_mut(at) {
                    *x = b;
                }
            }
            if let Ok(mut r) = reader(&db) {
                let root = r.root();
                let mut buckets = Vec::new();
                let _ = r.for_each(&root, &mut |_, v, nested| {
                    if nested {
                        buckets.push(BucketRef::from_value(v)?);
                    }
                    Ok(())
                });
                for b in buckets {
                    let _ = r.for_each(&b, &mut |_, _, _| Ok(()));
                }
            }
        }
    }
}
