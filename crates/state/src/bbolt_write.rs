//! Writing bbolt database files that bbolt (and so etcd and its tools) opens: a fresh,
//! compact B+tree per bucket, written front to back as one stream.
//!
//! The meta pages come first but name the root bucket's page, which is written last, so every
//! bucket's rows are walked twice: once to lay out its pages (counting them), once to write
//! them. Between the two walks only sizes are kept (one length per leaf page), so memory is
//! bounded by one page run and that list, not by the data.
//!
//! Invariants: keys go into each bucket strictly increasing (a source that breaks this is an
//! error); both walks must see the same rows, or the write fails rather than produce a file
//! whose pages disagree with its meta; every page id written lies below the high-water mark.

use std::io::Write;

use crate::bbolt::{
    fnv1a64, ELEMENT, FLAG_BRANCH, FLAG_LEAF, FLAG_META, LEAF_BUCKET, MAGIC, META_CHECKED,
    PAGE_HEADER, VERSION,
};

/// Transaction id both meta pages carry (bbolt's `Tx.WriteTo` writes the same meta twice).
const TXID: u64 = 1;

/// What a walk over a bucket's rows hands each one: key, value.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> std::io::Result<()> + 'a;

/// A bucket's rows, which the writer walks twice in the same order.
pub trait Rows {
    fn for_each(&mut self, visit: &mut RowVisitor<'_>) -> std::io::Result<()>;
}

/// Rows held in memory (small buckets, tests).
impl Rows for Vec<(Vec<u8>, Vec<u8>)> {
    fn for_each(&mut self, visit: &mut RowVisitor<'_>) -> std::io::Result<()> {
        for (k, v) in self.iter() {
            visit(k, v)?;
        }
        Ok(())
    }
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Pages a run of `bytes` takes.
fn span(bytes: usize, page: usize) -> u64 {
    bytes.div_ceil(page).max(1) as u64
}

/// How a bucket's pages are laid out: the span of every leaf page and the key length that
/// starts it, then the branch levels above them.
#[derive(Debug, Default, PartialEq)]
struct Layout {
    leaves: Vec<(u64, usize)>,
    levels: Vec<Vec<(u64, usize)>>,
}

impl Layout {
    fn pages(&self) -> u64 {
        let leaf: u64 = self.leaves.iter().map(|l| l.0).sum();
        let branch: u64 = self.levels.iter().flatten().map(|l| l.0).sum();
        leaf + branch
    }
}

/// The one packing rule every page follows, so the layout walk and the write walk agree:
/// elements fill a page in order, and one that would overflow a non-empty page starts the
/// next (an element larger than a page gets a page run of its own).
#[derive(Default)]
struct Fill {
    /// Bytes of the current page so far, header included; 0 before the first element.
    used: usize,
}

impl Fill {
    /// Adds an element of `size` bytes; true if it starts a new page.
    fn add(&mut self, size: usize, page: usize) -> bool {
        let starts = self.used == 0 || self.used + size > page;
        if starts {
            self.used = PAGE_HEADER;
        }
        self.used += size;
        starts
    }
}

/// Packs elements of `sizes` (bytes each, header included) into pages: per page, the index
/// of its first element and the bytes it uses.
fn pack(sizes: impl Iterator<Item = usize>, page: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut fill = Fill::default();
    for (i, size) in sizes.enumerate() {
        if fill.add(size, page) {
            out.push((i, 0));
        }
        if let Some(last) = out.last_mut() {
            last.1 = fill.used;
        }
    }
    out
}

/// The branch levels over pages whose first keys are `firsts` (span, key length).
fn branch_levels(mut below: Vec<(u64, usize)>, page: usize) -> Vec<Vec<(u64, usize)>> {
    let mut levels = Vec::new();
    while below.len() > 1 {
        let groups = pack(below.iter().map(|(_, k)| ELEMENT + k), page);
        let level: Vec<(u64, usize)> = groups
            .iter()
            .map(|(first, used)| (span(*used, page), below[*first].1))
            .collect();
        levels.push(level.clone());
        below = level;
    }
    levels
}

/// The leaf page boundaries of one walk: for each page, its span and first key's length.
fn lay_out(rows: &mut dyn Rows, page: usize) -> std::io::Result<Layout> {
    let mut leaves: Vec<(u64, usize)> = Vec::new();
    let mut fill = Fill::default();
    let mut last: Option<Vec<u8>> = None;
    rows.for_each(&mut |k, v| {
        if last.as_deref().is_some_and(|l| l >= k) {
            return Err(invalid("bucket keys out of order"));
        }
        last = Some(k.to_vec());
        if fill.add(ELEMENT + k.len() + v.len(), page) {
            leaves.push((1, k.len()));
        }
        if let Some(l) = leaves.last_mut() {
            l.0 = span(fill.used, page);
        }
        Ok(())
    })?;
    let levels = branch_levels(leaves.clone(), page);
    Ok(Layout { leaves, levels })
}

/// A page: header, element table, then keys and values in element order.
struct PageBuf {
    count: usize,
    data: Vec<u8>,
}

/// Zeros to pad pages with.
static PAD: [u8; 4096] = [0; 4096];

impl PageBuf {
    fn new() -> PageBuf {
        PageBuf {
            count: 0,
            data: Vec::new(),
        }
    }

    /// Writes the page (spanning as many pages as it needs, zero-padded) to `out` in pieces,
    /// never assembled: values are the bulk of a snapshot and are copied once, into `data`.
    /// Returns its size in bytes.
    fn write_to(
        &self,
        out: &mut dyn Write,
        id: u64,
        flags: u16,
        elements: &[u8],
        page: usize,
    ) -> std::io::Result<u64> {
        let used = PAGE_HEADER + elements.len() + self.data.len();
        let pages = span(used, page);
        let mut head = [0u8; PAGE_HEADER];
        head[..8].copy_from_slice(&id.to_le_bytes());
        head[8..10].copy_from_slice(&flags.to_le_bytes());
        head[10..12].copy_from_slice(&(self.count as u16).to_le_bytes());
        head[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        out.write_all(&head)?;
        out.write_all(elements)?;
        out.write_all(&self.data)?;
        let total = pages * page as u64;
        let mut pad = total - used as u64;
        while pad > 0 {
            let n = pad.min(PAD.len() as u64);
            out.write_all(&PAD[..n as usize])?;
            pad -= n;
        }
        Ok(total)
    }
}

/// The leaf pages of one bucket as they are written: the rows of the page being filled, and
/// where the next page goes.
struct Leaves<'a> {
    layout: &'a Layout,
    page: usize,
    next: u64,
    index: usize,
    /// Key and value lengths of the rows whose bytes are in `buf.data`.
    pending: Vec<(usize, usize)>,
    elements: Vec<u8>,
    buf: PageBuf,
}

impl Leaves<'_> {
    /// Writes the pending rows as one leaf page, which must be the page the layout walk
    /// counted; nothing when no row is pending.
    fn flush(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let want = self
            .layout
            .leaves
            .get(self.index)
            .ok_or_else(|| invalid("rows changed between the two walks"))?;
        leaf_elements(&mut self.elements, &self.pending);
        self.buf.count = self.pending.len();
        let used = PAGE_HEADER + self.elements.len() + self.buf.data.len();
        if span(used, self.page) != want.0 {
            return Err(invalid("rows changed between the two walks"));
        }
        self.buf
            .write_to(out, self.next, FLAG_LEAF, &self.elements, self.page)?;
        self.next += want.0;
        self.index += 1;
        self.pending.clear();
        self.elements.clear();
        self.buf.data.clear();
        self.buf.count = 0;
        Ok(())
    }
}

/// Writes one bucket's pages from `first` on; returns its root page id.
fn write_bucket(
    out: &mut dyn Write,
    rows: &mut dyn Rows,
    layout: &Layout,
    first: u64,
    page: usize,
) -> std::io::Result<u64> {
    let mut firsts: Vec<(u64, Vec<u8>)> = Vec::with_capacity(layout.leaves.len());
    let mut fill = Fill::default();
    let mut leaves = Leaves {
        layout,
        page,
        next: first,
        index: 0,
        pending: Vec::new(),
        elements: Vec::new(),
        buf: PageBuf::new(),
    };
    rows.for_each(&mut |k, v| {
        if fill.add(ELEMENT + k.len() + v.len(), page) {
            leaves.flush(out)?;
            firsts.push((leaves.next, k.to_vec()));
        }
        leaves.pending.push((k.len(), v.len()));
        leaves.buf.data.extend_from_slice(k);
        leaves.buf.data.extend_from_slice(v);
        Ok(())
    })?;
    leaves.flush(out)?;
    if leaves.index != layout.leaves.len() {
        return Err(invalid("rows changed between the two walks"));
    }
    let mut next = leaves.next;
    // Branch levels, bottom up, packed as the layout packed them.
    let mut below = firsts;
    for level in &layout.levels {
        let groups = pack(below.iter().map(|(_, k)| ELEMENT + k.len()), page);
        if groups.len() != level.len() {
            return Err(invalid("rows changed between the two walks"));
        }
        let mut above = Vec::with_capacity(groups.len());
        for (g, (start, _)) in groups.iter().enumerate() {
            let end = groups.get(g + 1).map_or(below.len(), |n| n.0);
            let children = &below[*start..end];
            let mut elements = Vec::with_capacity(children.len() * ELEMENT);
            let mut data: Vec<u8> = Vec::new();
            let table = children.len() * ELEMENT;
            for (i, (pgid, key)) in children.iter().enumerate() {
                let pos = table - i * ELEMENT + data.len();
                elements.extend_from_slice(&(pos as u32).to_le_bytes());
                elements.extend_from_slice(&(key.len() as u32).to_le_bytes());
                elements.extend_from_slice(&pgid.to_le_bytes());
                data.extend_from_slice(key);
            }
            let b = PageBuf {
                count: children.len(),
                data,
            };
            let bytes = b.write_to(out, next, FLAG_BRANCH, &elements, page)?;
            above.push((next, children[0].1.clone()));
            next += bytes / page as u64;
        }
        below = above;
    }
    below
        .first()
        .map(|(root, _)| *root)
        .ok_or_else(|| invalid("empty bucket written as pages"))
}

/// A leaf page's element table for rows of these (key, value) lengths, whose bytes follow
/// the table in order.
fn leaf_elements(elements: &mut Vec<u8>, rows: &[(usize, usize)]) {
    let table = rows.len() * ELEMENT;
    let mut data = 0;
    for (i, (k, v)) in rows.iter().enumerate() {
        let pos = table - i * ELEMENT + data;
        elements.extend_from_slice(&0u32.to_le_bytes());
        elements.extend_from_slice(&(pos as u32).to_le_bytes());
        elements.extend_from_slice(&(*k as u32).to_le_bytes());
        elements.extend_from_slice(&(*v as u32).to_le_bytes());
        data += k + v;
    }
}

fn meta_page(id: u64, page: usize, root: u64, high_water: u64) -> Vec<u8> {
    let mut p = vec![0u8; page];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&MAGIC.to_le_bytes());
    m.extend_from_slice(&VERSION.to_le_bytes());
    m.extend_from_slice(&(page as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&root.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&u64::MAX.to_le_bytes());
    m.extend_from_slice(&high_water.to_le_bytes());
    m.extend_from_slice(&TXID.to_le_bytes());
    debug_assert_eq!(m.len(), META_CHECKED);
    let sum = fnv1a64(&m);
    m.extend_from_slice(&sum.to_le_bytes());
    p[PAGE_HEADER..PAGE_HEADER + m.len()].copy_from_slice(&m);
    p
}

/// Writes a bbolt database of `page` bytes per page holding `buckets` (names in any order;
/// each bucket's rows strictly increasing) to `out`; `size` learns the length before the
/// first byte is written. Returns the bytes written.
pub fn write_db(
    size: &mut dyn FnMut(u64) -> std::io::Result<()>,
    out: &mut dyn Write,
    page: usize,
    buckets: &mut [(&[u8], &mut dyn Rows)],
) -> std::io::Result<u64> {
    buckets.sort_by(|a, b| a.0.cmp(b.0));
    if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid("two buckets of one name"));
    }
    let mut layouts = Vec::with_capacity(buckets.len());
    for (_, rows) in buckets.iter_mut() {
        layouts.push(lay_out(*rows, page)?);
    }
    let data_pages: u64 = layouts.iter().map(Layout::pages).sum();
    // The root bucket's leaf: one element per bucket, its 16-byte header as the value (an
    // empty bucket inline, with an empty leaf page after the header).
    let mut root_rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(buckets.len());
    let mut next = 2u64;
    for ((name, _), layout) in buckets.iter().zip(&layouts) {
        let mut v = Vec::with_capacity(32);
        if layout.leaves.is_empty() {
            v.extend_from_slice(&[0u8; 16]);
            PageBuf::new().write_to(&mut v, 0, FLAG_LEAF, &[], PAGE_HEADER)?;
        } else {
            // The bucket's root is its last page (the top branch, or its only leaf).
            let root = next + layout.pages() - last_span(layout);
            v.extend_from_slice(&root.to_le_bytes());
            v.extend_from_slice(&0u64.to_le_bytes());
        }
        next += layout.pages();
        root_rows.push((name.to_vec(), v));
    }
    let mut root_elements = Vec::new();
    let lens: Vec<(usize, usize)> = root_rows.iter().map(|(k, v)| (k.len(), v.len())).collect();
    leaf_elements(&mut root_elements, &lens);
    let root_buf = PageBuf {
        count: root_rows.len(),
        data: root_rows
            .iter()
            .flat_map(|(k, v)| [&k[..], &v[..]].concat())
            .collect(),
    };
    // Mark every element a bucket.
    for i in 0..root_rows.len() {
        root_elements[i * ELEMENT..i * ELEMENT + 4].copy_from_slice(&LEAF_BUCKET.to_le_bytes());
    }
    let root_id = 2 + data_pages;
    let mut root_page = Vec::with_capacity(page);
    root_buf.write_to(&mut root_page, root_id, FLAG_LEAF, &root_elements, page)?;
    let high_water = root_id + span(root_page.len(), page);
    size(high_water * page as u64)?;

    out.write_all(&meta_page(0, page, root_id, high_water))?;
    out.write_all(&meta_page(1, page, root_id, high_water))?;
    let mut at = 2u64;
    for ((_, rows), layout) in buckets.iter_mut().zip(&layouts) {
        if layout.leaves.is_empty() {
            continue;
        }
        write_bucket(out, *rows, layout, at, page)?;
        at += layout.pages();
    }
    out.write_all(&root_page)?;
    Ok(high_water * page as u64)
}

fn last_span(l: &Layout) -> u64 {
    match l.levels.last() {
        Some(top) => top.last().map_or(1, |p| p.0),
        None => l.leaves.last().map_or(1, |p| p.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bbolt::{BoltReader, BucketRef};
    use std::io::Cursor;

    fn rows(n: usize, value: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("k{i:06}").into_bytes(), vec![b'v'; value]))
            .collect()
    }

    fn read_all(db: &[u8], name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut r = BoltReader::open(Cursor::new(db), db.len() as u64).unwrap();
        let root = r.root();
        let b = r.bucket(&root, name).unwrap().unwrap();
        let mut out = Vec::new();
        r.for_each(&b, &mut |k, v, _| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut small = rows(3, 10);
        let mut many = rows(5000, 100);
        let mut big = vec![(b"big".to_vec(), vec![7u8; 20_000])];
        let mut empty: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut out = Vec::new();
        let n = write_db(
            &mut |_| Ok(()),
            &mut out,
            4096,
            &mut [
                (b"small", &mut small),
                (b"many", &mut many),
                (b"big", &mut big),
                (b"empty", &mut empty),
            ],
        )
        .unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4096, 0);
        assert_eq!(read_all(&out, b"small"), rows(3, 10));
        assert_eq!(read_all(&out, b"many"), rows(5000, 100));
        assert_eq!(read_all(&out, b"big")[0].1.len(), 20_000);
        let mut r = BoltReader::open(Cursor::new(&out[..]), out.len() as u64).unwrap();
        let root = r.root();
        let e = r.bucket(&root, b"empty").unwrap().unwrap();
        assert!(matches!(e, BucketRef::Inline(_)));
        assert!(read_all(&out, b"empty").is_empty());
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let mut bad = vec![(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])];
        let mut out = Vec::new();
        assert!(write_db(&mut |_| Ok(()), &mut out, 4096, &mut [(b"x", &mut bad)]).is_err());
    }
}
