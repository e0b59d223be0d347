//! Large revision rows stored in parts that fill redb's pages.
//!
//! redb gives every B-tree leaf a power-of-two number of 4 KiB pages, so a row a little over a
//! power of two takes nearly twice its size, and rows of 2-4 KiB fit one to a leaf: a store of
//! 20 kB values was 1.6x etcd's bbolt file, of 2 kB values 2x the data. So a row longer than
//! [`INLINE_MAX`] is cut, in order, into:
//! * *pages*: parts sized to fill a leaf of exactly `2^order` pages alone (table `kv_pages`),
//!   largest first, while at least a one-page part is left;
//! * *pieces*: what is left, if more than [`INLINE_MAX`], in equal parts of at most
//!   [`PIECE_MAX`] (table `kv_pieces`), which pack many to a leaf like small rows;
//! * the rest, inline in the `kv` row after a header: `flags | SPLIT`, the whole length
//!   (u32 LE), the number of pages and of pieces (u8 each).
//!
//! Parts are keyed by the 16-byte revision and a u32 big-endian index. Measured on redb 4.6
//! with 16 MiB of values (docs/storage-layout.md): 2 kB values 32.7 -> 19.9 MiB, 4 kB
//! 32.4 -> 16.9, 20 kB 26.3 -> 16.6, 100 kB 20.9 -> 16.1, 1 MB 16.0 -> 15.3.
//!
//! Invariant: everything outside this module sees whole rows (`flags | encoded value`, no
//! SPLIT bit): views, the overlay, snapshot streams and hashes never depend on the layout.

use redb::{ReadableTable, TableDefinition};

use crate::backend::{row_bytes, BackendError, BytesTable, Rev};

pub(crate) const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_pages");
pub(crate) const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_pieces");

/// The flag bit of a `kv` row whose value is split.
pub(crate) const SPLIT: u8 = 2;
/// Rows up to this long are stored whole; so is the inline rest of a split row.
pub(crate) const INLINE_MAX: usize = 1024;
/// Longest piece (a few to a page, packed with other pieces).
pub(crate) const PIECE_MAX: usize = 1000;
const PAGE: usize = 4096;
/// What a leaf holding one part spends besides the part: its header (4 bytes), the key's and
/// the value's end offsets (4 each) and the 20-byte key. Checked by
/// `tests::a_page_part_fills_its_leaf_exactly`.
const LEAF_OVERHEAD: usize = 32;
/// Largest page part: 1 MiB leaves (a 64 MiB row is under 80 parts).
const MAX_ORDER: u32 = 8;
/// The shortest first part of a split value: a page part is longer, and pieces share more
/// than `INLINE_MAX` bytes out in parts of at most `PIECE_MAX`, so each gets over half.
pub(crate) const FIRST_PART_MIN: usize = PIECE_MAX / 2;
/// `flags`, whole length, page count, piece count.
const HEADER: usize = 1 + 4 + 1 + 1;

/// How many bytes a page part of `order` holds.
const fn page_fit(order: u32) -> usize {
    (PAGE << order) - LEAF_OVERHEAD
}

/// Where each part of a value of a given length goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Lengths of the page parts, in order.
    pages: Vec<usize>,
    pieces: usize,
    piece_len: usize,
    /// Bytes left inline in the row.
    inline: usize,
}

/// How a value of `len` bytes is stored; `None` when it is stored whole.
pub(crate) fn plan(len: usize) -> Option<Plan> {
    if len <= INLINE_MAX {
        return None;
    }
    let mut pages = Vec::new();
    let mut rest = len;
    while rest >= page_fit(0) {
        let order = (0..=MAX_ORDER)
            .rev()
            .find(|&o| page_fit(o) <= rest)
            .unwrap_or(0);
        pages.push(page_fit(order));
        rest -= page_fit(order);
    }
    let (pieces, piece_len) = if rest > INLINE_MAX {
        let n = rest.div_ceil(PIECE_MAX);
        (n, rest.div_ceil(n))
    } else {
        (0, 0)
    };
    let inline = rest - (pieces * piece_len).min(rest);
    Some(Plan {
        pages,
        pieces,
        piece_len,
        inline,
    })
}

fn part_key(rev: Rev, i: usize) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&rev.to_bytes());
    k[16..].copy_from_slice(&(i as u32).to_be_bytes());
    k
}

/// The revision and index a part's key holds.
fn split_part_key(k: &[u8]) -> Option<(Rev, usize)> {
    let i = u32::from_be_bytes(k.get(16..20)?.try_into().ok()?);
    Some((Rev::from_bytes(k)?, i as usize))
}

/// Gone revisions closer than this (in main revisions) are removed in one range scan, which
/// also reads the rows kept between them: a compaction keeps at most one row per key.
const RUN_GAP: i64 = 64;

/// `revs` (ascending) cut into runs for [`Writer::remove_rows`]: neighbours at most `RUN_GAP`
/// apart. A revision with a negative part sorts differently as bytes, so it is a run alone.
fn runs(revs: &[Rev]) -> impl Iterator<Item = &[Rev]> {
    let ordered = |r: &Rev| r.main >= 0 && r.sub >= 0;
    revs.chunk_by(move |a, b| ordered(a) && ordered(b) && b.main.saturating_sub(a.main) <= RUN_GAP)
}

/// A split row's header: whole length, page count, piece count.
fn header(rev: Rev, row: &[u8]) -> Result<(usize, usize, usize), BackendError> {
    let h = row.get(..HEADER).ok_or(BackendError::Malformed(rev))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    Ok((len, h[5] as usize, h[6] as usize))
}

/// Whether a stored `kv` row is split.
pub(crate) fn is_split(row: &[u8]) -> bool {
    row.first().is_some_and(|f| f & SPLIT != 0)
}

/// The length of the encoded value a stored `kv` row holds, whole or split.
pub(crate) fn value_len(rev: Rev, row: &[u8]) -> Result<usize, BackendError> {
    if is_split(row) {
        return Ok(header(rev, row)?.0);
    }
    row.len().checked_sub(1).ok_or(BackendError::Malformed(rev))
}

/// The whole row (`flags | value`) a stored `kv` row stands for: the row itself, or for a
/// split one its parts joined in `buf`; a part missing or of the wrong length is
/// [`BackendError::Malformed`].
pub(crate) fn whole<'r, T>(
    rev: Rev,
    row: &'r [u8],
    pages: &T,
    pieces: &T,
    buf: &'r mut Vec<u8>,
) -> Result<&'r [u8], BackendError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    if !is_split(row) {
        return Ok(row);
    }
    buf.clear();
    join(rev, row, buf, |which, i| {
        let table = if which == 0 { pages } else { pieces };
        table
            .get(part_key(rev, i).as_slice())?
            .ok_or(BackendError::Malformed(rev))
    })?;
    Ok(buf)
}

/// The first part of a split `kv` row: the start of its value. No value is split into a
/// first part shorter than [`FIRST_PART_MIN`].
pub(crate) fn first_part<'t, T>(
    rev: Rev,
    row: &[u8],
    pages: &'t T,
    pieces: &'t T,
) -> Result<redb::AccessGuard<'t, &'static [u8]>, BackendError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let (_, n_pages, n_pieces) = header(rev, row)?;
    let table = match (n_pages, n_pieces) {
        (0, 0) => return Err(BackendError::Malformed(rev)),
        (0, _) => pieces,
        _ => pages,
    };
    table
        .get(part_key(rev, 0).as_slice())?
        .ok_or(BackendError::Malformed(rev))
}

type PartRange = redb::Range<'static, &'static [u8], &'static [u8]>;
type ReadOnlyParts = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Joins the split rows a walk meets in ascending revision order by walking the part tables
/// beside it, a leaf at a time, where [`whole`] looks each part up from the root of its tree:
/// the export of a 3 GB store spent 15% of its time in those lookups.
pub(crate) struct Joiner {
    parts: [PartRange; 2],
}

impl Joiner {
    /// For a walk from `from` on.
    pub(crate) fn new(
        pages: &ReadOnlyParts,
        pieces: &ReadOnlyParts,
        from: Rev,
    ) -> Result<Joiner, BackendError> {
        let start = part_key(from, 0);
        Ok(Joiner {
            parts: [
                pages.range(start.as_slice()..)?,
                pieces.range(start.as_slice()..)?,
            ],
        })
    }

    /// [`whole`] for the next row of the walk: `rev` is above every revision asked before.
    pub(crate) fn whole<'r>(
        &mut self,
        rev: Rev,
        row: &'r [u8],
        buf: &'r mut Vec<u8>,
    ) -> Result<&'r [u8], BackendError> {
        if !is_split(row) {
            return Ok(row);
        }
        buf.clear();
        let parts = &mut self.parts;
        join(rev, row, buf, |which, i| {
            let want = part_key(rev, i);
            loop {
                let (k, v) = parts[which].next().ok_or(BackendError::Malformed(rev))??;
                match k.value().cmp(want.as_slice()) {
                    // A part of a row the walk did not ask for (one before `from`).
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => return Ok(v),
                    std::cmp::Ordering::Greater => return Err(BackendError::Malformed(rev)),
                }
            }
        })?;
        Ok(buf)
    }
}

/// Appends the whole row a split `kv` row stands for to `out`, its parts read by
/// `part(which, i)`: page part (`which` 0) or piece (1) number `i`.
fn join<'g>(
    rev: Rev,
    row: &[u8],
    out: &mut Vec<u8>,
    mut part: impl FnMut(usize, usize) -> Result<redb::AccessGuard<'g, &'static [u8]>, BackendError>,
) -> Result<(), BackendError> {
    let (len, n_pages, n_pieces) = header(rev, row)?;
    // The length is checked against what is read, not trusted for the allocation.
    out.reserve(len.min(crate::limits::MAX_RECORD_BYTES) + 1);
    let start = out.len();
    out.push(row[0] & !SPLIT);
    for (which, n) in [(0, n_pages), (1, n_pieces)] {
        for i in 0..n {
            out.extend_from_slice(part(which, i)?.value());
            if out.len() - start > len + 1 {
                return Err(BackendError::Malformed(rev));
            }
        }
    }
    out.extend_from_slice(&row[HEADER..]);
    if out.len() - start != len + 1 {
        return Err(BackendError::Malformed(rev));
    }
    Ok(())
}

/// Cuts the whole row `row` (`flags | value`) into its parts (see [`plan`]), handing each
/// page part (`which` 0) and piece (`which` 1) to `part` in order, which returns the change in
/// stored bytes. Returns the `kv` row to store (the row itself, or in `scratch` the split
/// header and the inline rest), its page and piece counts, and the parts' change in bytes.
fn cut<'s>(
    rev: Rev,
    row: &'s [u8],
    scratch: &'s mut Vec<u8>,
    mut part: impl FnMut(usize, usize, &[u8]) -> Result<i64, BackendError>,
) -> Result<(&'s [u8], [usize; 2], i64), BackendError> {
    let (&flags, value) = row.split_first().ok_or(BackendError::Malformed(rev))?;
    // A whole row never carries the bit (a snapshot stream that sets it is damaged).
    if flags & SPLIT != 0 {
        return Err(BackendError::Malformed(rev));
    }
    let Some(plan) = plan(value.len()) else {
        return Ok((row, [0, 0], 0));
    };
    let too_many = |_| BackendError::Malformed(rev);
    let mut delta = 0;
    let mut rest = value;
    for (i, &n) in plan.pages.iter().enumerate() {
        let (p, tail) = rest.split_at(n);
        delta += part(0, i, p)?;
        rest = tail;
    }
    for i in 0..plan.pieces {
        let (p, tail) = rest.split_at(plan.piece_len.min(rest.len()));
        delta += part(1, i, p)?;
        rest = tail;
    }
    debug_assert_eq!(rest.len(), plan.inline);
    scratch.clear();
    scratch.push(flags | SPLIT);
    let len = u32::try_from(value.len()).map_err(too_many)?;
    scratch.extend_from_slice(&len.to_le_bytes());
    scratch.push(u8::try_from(plan.pages.len()).map_err(too_many)?);
    scratch.push(u8::try_from(plan.pieces).map_err(too_many)?);
    scratch.extend_from_slice(rest);
    Ok((scratch.as_slice(), [plan.pages.len(), plan.pieces], delta))
}

type TableCursor<'c> = redb::CursorMut<'c, &'static [u8], &'static [u8]>;

/// Writes rows in ascending revision order after everything the tables hold (an import into
/// a new file): each table is written through a cursor at its end, which redb packs into
/// full leaves a megabyte at a time instead of descending the tree for every row. A row out
/// of order is [`BackendError::Malformed`].
pub(crate) struct Appender<'c> {
    kv: TableCursor<'c>,
    parts: [TableCursor<'c>; 2],
    scratch: Vec<u8>,
}

/// Appends `value` at `key` through `cursor`: a key not above the last is `Malformed(rev)`.
fn append(
    cursor: &mut TableCursor<'_>,
    rev: Rev,
    key: &[u8],
    value: &[u8],
) -> Result<(), BackendError> {
    cursor.insert_before(key, value).map_err(|e| match e {
        redb::CursorError::Storage(e) => e.into(),
        _ => BackendError::Malformed(rev),
    })
}

impl<'c> Appender<'c> {
    pub(crate) fn open(w: &'c mut Writer<'_>) -> Result<Self, BackendError> {
        use std::ops::Bound::Unbounded;
        Ok(Appender {
            kv: w.kv.upper_bound_mut(Unbounded::<&[u8]>)?,
            parts: [
                w.pages.upper_bound_mut(Unbounded::<&[u8]>)?,
                w.pieces.upper_bound_mut(Unbounded::<&[u8]>)?,
            ],
            scratch: Vec::new(),
        })
    }

    /// Appends the whole row `row` at `rev`. Returns the stored bytes it adds.
    pub(crate) fn append(&mut self, rev: Rev, row: &[u8]) -> Result<i64, BackendError> {
        let parts = &mut self.parts;
        let (stored, _, delta) = cut(rev, row, &mut self.scratch, |which, i, part| {
            append(&mut parts[which], rev, &part_key(rev, i), part)?;
            Ok(row_bytes(20, part.len()))
        })?;
        append(&mut self.kv, rev, &rev.to_bytes(), stored)?;
        Ok(delta + row_bytes(16, stored.len()))
    }

    /// Applies what the cursors hold back; their errors surface here.
    pub(crate) fn close(self) -> Result<(), BackendError> {
        let [pages, pieces] = self.parts;
        for c in [self.kv, pages, pieces] {
            c.close()?;
        }
        Ok(())
    }
}

/// The `kv` table with the part tables, for writing rows in whatever layout they need.
pub(crate) struct Writer<'a> {
    pub(crate) kv: BytesTable<'a>,
    pub(crate) pages: BytesTable<'a>,
    pub(crate) pieces: BytesTable<'a>,
    /// Reused for split rows' headers.
    scratch: Vec<u8>,
}

/// Writes part `i` of `rev` into `table`. Returns the change in stored bytes.
fn put_part(
    table: &mut BytesTable<'_>,
    rev: Rev,
    i: usize,
    part: &[u8],
) -> Result<i64, BackendError> {
    let old = table.insert(part_key(rev, i).as_slice(), part)?;
    Ok(row_bytes(20, part.len()) - old.map_or(0, |o| row_bytes(20, o.value().len())))
}

impl<'a> Writer<'a> {
    pub(crate) fn open(tx: &'a redb::WriteTransaction) -> Result<Self, BackendError> {
        Ok(Writer {
            kv: tx.open_table(crate::backend::KV)?,
            pages: tx.open_table(PAGES)?,
            pieces: tx.open_table(PIECES)?,
            scratch: Vec::new(),
        })
    }

    /// Stores the whole row `row` (`flags | value`) at `rev`, replacing what was there.
    /// Returns the change in stored bytes. Revisions are almost always new, so the row is
    /// written first and what it replaced looked at after, one lookup instead of two.
    pub(crate) fn insert(&mut self, rev: Rev, row: &[u8]) -> Result<i64, BackendError> {
        let key = rev.to_bytes();
        let (pages, pieces) = (&mut self.pages, &mut self.pieces);
        let (stored, parts, mut delta) = cut(rev, row, &mut self.scratch, |which, i, part| {
            let table = if which == 0 {
                &mut *pages
            } else {
                &mut *pieces
            };
            put_part(table, rev, i, part)
        })?;
        delta += row_bytes(16, stored.len());
        let old_parts = match self.kv.insert(key.as_slice(), stored)? {
            Some(old) => {
                let old = old.value();
                delta -= row_bytes(16, old.len());
                is_split(old)
                    .then(|| header(rev, old).map(|(_, p, q)| [p, q]))
                    .transpose()?
            }
            None => None,
        };
        // The parts the old row had beyond the new one's (those below were overwritten).
        if let Some(old_parts) = old_parts {
            delta += self.remove_parts(rev, old_parts, parts)?;
        }
        Ok(delta)
    }

    /// Removes the row at `rev` and its parts. Returns the change in stored bytes (zero or
    /// less).
    pub(crate) fn remove_row(&mut self, rev: Rev) -> Result<i64, BackendError> {
        let Some(old) = self.kv.remove(rev.to_bytes().as_slice())? else {
            return Ok(0);
        };
        let row = old.value();
        let delta = -row_bytes(16, row.len());
        if !is_split(row) {
            return Ok(delta);
        }
        let (_, n_pages, n_pieces) = header(rev, row)?;
        drop(old);
        Ok(delta + self.remove_parts(rev, [n_pages, n_pieces], [0, 0])?)
    }

    /// Removes the rows at `revs` (ascending) and their parts. Returns the change in stored
    /// bytes (zero or less). Each run of neighbouring revisions goes in one range scan per
    /// table, which redb applies a leaf at a time: removed one by one, a compaction's rows
    /// cost a tree descent each and a move of the rest of their leaf.
    pub(crate) fn remove_rows(&mut self, revs: &[Rev]) -> Result<i64, BackendError> {
        let mut delta = 0;
        for run in runs(revs) {
            delta += match run {
                [rev] => self.remove_row(*rev)?,
                _ => self.remove_run(run)?,
            };
        }
        Ok(delta)
    }

    /// [`Writer::remove_rows`] for one run: revisions in byte order, `RUN_GAP` apart at most.
    fn remove_run(&mut self, run: &[Rev]) -> Result<i64, BackendError> {
        let (Some(&lo), Some(&hi)) = (run.first(), run.last()) else {
            return Ok(0);
        };
        let mut delta = 0;
        // The split rows removed, with their page and piece counts.
        let mut split: Vec<(Rev, [usize; 2])> = Vec::new();
        let mut bad = None;
        let (lo_key, hi_key) = (lo.to_bytes(), hi.to_bytes());
        self.kv
            .retain_in(lo_key.as_slice()..=hi_key.as_slice(), |k, v| {
                let Some(rev) = Rev::from_bytes(k).filter(|r| run.binary_search(r).is_ok()) else {
                    return true;
                };
                delta -= row_bytes(16, v.len());
                if is_split(v) {
                    match header(rev, v) {
                        Ok((_, p, q)) => split.push((rev, [p, q])),
                        Err(e) => bad = Some(e),
                    }
                }
                false
            })?;
        // A row whose parts cannot be found fails the commit, as a single removal does.
        if let Some(e) = bad {
            return Err(e);
        }
        let (Some(&(first, _)), Some(&(last, _))) = (split.first(), split.last()) else {
            return Ok(delta);
        };
        let (from, to) = (part_key(first, 0), part_key(last, u32::MAX as usize));
        for (which, table) in [&mut self.pages, &mut self.pieces].into_iter().enumerate() {
            if split.iter().all(|(_, n)| n[which] == 0) {
                continue;
            }
            table.retain_in(from.as_slice()..=to.as_slice(), |k, v| {
                let Some((rev, i)) = split_part_key(k) else {
                    return true;
                };
                let dropped = split
                    .binary_search_by_key(&rev, |s| s.0)
                    .is_ok_and(|at| i < split[at].1[which]);
                if dropped {
                    delta -= row_bytes(20, v.len());
                }
                !dropped
            })?;
        }
        Ok(delta)
    }

    /// Removes the page and piece parts of `rev` from index `from` up to `to` (exclusive).
    /// Returns the change in stored bytes.
    fn remove_parts(
        &mut self,
        rev: Rev,
        to: [usize; 2],
        from: [usize; 2],
    ) -> Result<i64, BackendError> {
        let mut delta = 0;
        for (table, i, n) in [
            (&mut self.pages, from[0], to[0]),
            (&mut self.pieces, from[1], to[1]),
        ] {
            for i in i..n {
                if let Some(p) = table.remove(part_key(rev, i).as_slice())? {
                    delta -= row_bytes(20, p.value().len());
                }
            }
        }
        Ok(delta)
    }

    /// The whole row at `rev`, if any.
    #[cfg(test)]
    pub(crate) fn get(&self, rev: Rev) -> Result<Option<Vec<u8>>, BackendError> {
        let Some(row) = self.kv.get(rev.to_bytes().as_slice())? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        Ok(Some(
            whole(rev, row.value(), &self.pages, &self.pieces, &mut buf)?.to_vec(),
        ))
    }

    /// The length of the value stored at `rev`, if any, without reading its parts.
    #[cfg(test)]
    pub(crate) fn value_len(&self, rev: Rev) -> Result<Option<usize>, BackendError> {
        match self.kv.get(rev.to_bytes().as_slice())? {
            Some(row) => Ok(Some(value_len(rev, row.value())?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableTableMetadata};

    #[test]
    fn plans_cover_the_value_exactly() {
        for len in (0..70_000)
            .step_by(7)
            .chain([page_fit(0), page_fit(3) + 1, 5 << 20])
        {
            let Some(p) = plan(len) else {
                assert!(len <= INLINE_MAX);
                continue;
            };
            let in_pages: usize = p.pages.iter().sum();
            let in_pieces = len - in_pages - p.inline;
            assert!(p.inline <= INLINE_MAX, "{len}: {p:?}");
            assert!(p
                .pages
                .iter()
                .all(|&n| (page_fit(0)..=page_fit(MAX_ORDER)).contains(&n)));
            assert!(
                len - in_pages < page_fit(0),
                "{len}: a whole page left over"
            );
            if p.pieces > 0 {
                assert!(p.inline == 0 && p.piece_len <= PIECE_MAX, "{len}: {p:?}");
                assert!(in_pieces > (p.pieces - 1) * p.piece_len);
                assert!(in_pieces <= p.pieces * p.piece_len);
            }
            assert!(p.pages.len() <= 255 && p.pieces <= 255);
            let first = p.pages.first().copied().unwrap_or(p.piece_len);
            assert!(first >= FIRST_PART_MIN, "{len}: first part {first}");
        }
    }

    fn allocated(db: &Database) -> u64 {
        let tx = db.begin_write().unwrap();
        let s = tx.stats().unwrap();
        s.allocated_pages() * s.page_size() as u64
    }

    /// A redb upgrade that changes its leaf layout would quietly double every page part.
    #[test]
    fn a_page_part_fills_its_leaf_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for (order, extra) in [(0, 0), (2, 0), (0, 1)] {
            let path = dir.path().join(format!("db{order}{extra}"));
            let db = Database::create(&path).unwrap();
            let before = allocated(&db);
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(PAGES).unwrap();
                let part = vec![7u8; page_fit(order) + extra];
                for i in 0..64 {
                    t.insert(part_key(Rev::new(1, 0), i).as_slice(), part.as_slice())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
            let per_part = (allocated(&db) - before) / 64;
            let leaf = (PAGE << order) as u64;
            if extra == 0 {
                // One leaf each, plus a share of the branch page over them.
                assert!((leaf..leaf + leaf / 8).contains(&per_part), "{per_part}");
            } else {
                assert!(per_part >= 2 * leaf, "{per_part}");
            }
        }
    }

    #[test]
    fn rows_of_every_size_read_back_whole_and_removal_leaves_no_part() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let tx = db.begin_write().unwrap();
        let sizes = [
            0, 1, 1024, 1025, 2100, 4063, 4064, 4065, 20_060, 100_060, 1_000_060,
        ];
        {
            let mut w = Writer::open(&tx).unwrap();
            let mut stored = 0;
            for (i, &n) in sizes.iter().enumerate() {
                let mut row: Vec<u8> = (0..=n).map(|b| (b * 31 + i) as u8).collect();
                row[0] = (i % 2) as u8;
                let rev = Rev::new(i as i64 + 1, 0);
                // Overwriting a longer row drops the parts this one does not need.
                stored += w.insert(rev, &vec![0u8; 300_000]).unwrap();
                stored += w.insert(rev, &row).unwrap();
                assert_eq!(w.get(rev).unwrap().as_deref(), Some(row.as_slice()));
                assert_eq!(w.value_len(rev).unwrap(), Some(n));
                let kept = w.kv.get(rev.to_bytes().as_slice()).unwrap().unwrap();
                if is_split(kept.value()) {
                    let first = first_part(rev, kept.value(), &w.pages, &w.pieces).unwrap();
                    assert!(
                        row[1..].starts_with(first.value()),
                        "{n}: the value's start"
                    );
                    assert!(first.value().len() >= FIRST_PART_MIN);
                }
            }
            assert!(stored > 0);
            for i in 0..sizes.len() {
                let d = w.remove_row(Rev::new(i as i64 + 1, 0)).unwrap();
                assert!(d < 0, "a row was removed");
                stored += d;
            }
            assert_eq!(stored, 0);
            assert_eq!(w.kv.len().unwrap(), 0);
            assert_eq!(w.pages.len().unwrap(), 0);
            assert_eq!(w.pieces.len().unwrap(), 0);
        }
        tx.commit().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Removing rows in runs leaves what removing them one by one leaves, and counts the
        /// same bytes: the kept rows whole, no part of a removed one.
        #[test]
        fn removing_runs_matches_removing_rows_one_by_one(
            rows in proptest::collection::vec((1i64..400, 0usize..6, proptest::prelude::any::<bool>()), 1..60),
        ) {
            let sizes = [0, 900, 2100, 4065, 9000, 70_000];
            let dir = tempfile::tempdir().unwrap();
            let mut left = Vec::new();
            let mut deltas = Vec::new();
            for by_run in [false, true] {
                let db = Database::create(dir.path().join(format!("db{by_run}"))).unwrap();
                let tx = db.begin_write().unwrap();
                let mut w = Writer::open(&tx).unwrap();
                let mut gone = std::collections::BTreeSet::new();
                for &(main, size, drop) in &rows {
                    let rev = Rev::new(main, main % 3);
                    let mut row = vec![(main % 251) as u8; sizes[size] + 1];
                    row[0] = (main % 2) as u8;
                    w.insert(rev, &row).unwrap();
                    if drop {
                        gone.insert(rev);
                    } else {
                        gone.remove(&rev);
                    }
                }
                let gone: Vec<Rev> = gone.into_iter().collect();
                let delta = if by_run {
                    w.remove_rows(&gone).unwrap()
                } else {
                    gone.iter().map(|&r| w.remove_row(r).unwrap()).sum()
                };
                deltas.push(delta);
                let mut kept = Vec::new();
                for row in w.kv.iter().unwrap() {
                    let (k, _) = row.unwrap();
                    let rev = Rev::from_bytes(k.value()).unwrap();
                    kept.push((rev, w.get(rev).unwrap().unwrap()));
                }
                left.push((kept, w.pages.len().unwrap(), w.pieces.len().unwrap()));
            }
            proptest::prop_assert_eq!(deltas[0], deltas[1]);
            proptest::prop_assert_eq!(&left[0], &left[1]);
        }
    }

    /// Appending stores what inserting stores, in no more pages, and refuses a row out of
    /// order.
    #[test]
    fn appended_rows_read_back_as_inserted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0, 1, 1025, 2100, 4064, 4065, 20_060, 100_060, 1_000_060];
        let rows: Vec<(Rev, Vec<u8>)> = (0..400)
            .map(|i| {
                let n = sizes[i % sizes.len()] + i % 7;
                let mut row: Vec<u8> = (0..=n).map(|b| (b * 31 + i) as u8).collect();
                row[0] = (i % 2) as u8;
                (Rev::new(i as i64 + 1, (i % 3) as i64), row)
            })
            .collect();
        let mut seen = Vec::new();
        for by_append in [false, true] {
            let db = Database::create(dir.path().join(format!("db{by_append}"))).unwrap();
            let before = allocated(&db);
            let tx = db.begin_write().unwrap();
            let mut stored = 0;
            {
                let mut w = Writer::open(&tx).unwrap();
                if by_append {
                    let mut a = Appender::open(&mut w).unwrap();
                    for (rev, row) in &rows {
                        stored += a.append(*rev, row).unwrap();
                    }
                    let (last, row) = rows.last().unwrap();
                    assert!(
                        matches!(a.append(*last, row), Err(BackendError::Malformed(r)) if r == *last)
                    );
                    a.close().unwrap();
                } else {
                    for (rev, row) in &rows {
                        stored += w.insert(*rev, row).unwrap();
                    }
                }
                for (rev, row) in &rows {
                    assert_eq!(w.get(*rev).unwrap().as_deref(), Some(row.as_slice()));
                }
            }
            tx.commit().unwrap();
            seen.push((stored, allocated(&db) - before));
        }
        assert_eq!(seen[0].0, seen[1].0, "the same bytes stored");
        assert!(
            seen[1].1 <= seen[0].1,
            "appended in no more pages: {seen:?}"
        );
    }

    /// A walk's joins match lookups from any starting row, and a missing part is malformed.
    #[test]
    fn joining_along_a_walk_matches_looking_parts_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let sizes = [0, 1025, 2100, 4065, 20_060, 100_060, 5, 1_000_060];
        let tx = db.begin_write().unwrap();
        {
            let mut w = Writer::open(&tx).unwrap();
            for i in 0..40usize {
                let mut row = vec![(i * 7) as u8; sizes[i % sizes.len()] + 1];
                row[0] = 0;
                w.insert(Rev::new(i as i64 + 1, 0), &row).unwrap();
            }
            // Rev 30 loses its first page part: it and only it is malformed.
            w.pages
                .remove(part_key(Rev::new(30, 0), 0).as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let kv = tx.open_table(crate::backend::KV).unwrap();
        let (pages, pieces) = (
            tx.open_table(PAGES).unwrap(),
            tx.open_table(PIECES).unwrap(),
        );
        for from in [1i64, 2, 5, 13, 31] {
            let mut joiner = Joiner::new(&pages, &pieces, Rev::new(from, 0)).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let start = Rev::new(from, 0).to_bytes();
            for row in kv.range(start.as_slice()..).unwrap() {
                let (k, v) = row.unwrap();
                let rev = Rev::from_bytes(k.value()).unwrap();
                let looked_up = whole(rev, v.value(), &pages, &pieces, &mut a).map(<[u8]>::to_vec);
                let joined = joiner.whole(rev, v.value(), &mut b).map(<[u8]>::to_vec);
                if rev == Rev::new(30, 0) {
                    assert!(matches!(joined, Err(BackendError::Malformed(r)) if r == rev));
                    assert!(looked_up.is_err());
                    break;
                }
                assert_eq!(joined.unwrap(), looked_up.unwrap(), "{rev:?} from {from}");
            }
        }
    }

    #[test]
    fn a_missing_or_short_part_is_malformed_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let tx = db.begin_write().unwrap();
        let rev = Rev::new(5, 0);
        let mut w = Writer::open(&tx).unwrap();
        // One page part, three pieces.
        let row = vec![0u8; page_fit(0) + 2101];
        w.insert(rev, &row).unwrap();
        w.pages.remove(part_key(rev, 0).as_slice()).unwrap();
        assert!(matches!(w.get(rev), Err(BackendError::Malformed(r)) if r == rev));
        w.insert(rev, &row).unwrap();
        w.pieces.remove(part_key(rev, 0).as_slice()).unwrap();
        assert!(matches!(w.get(rev), Err(BackendError::Malformed(r)) if r == rev));
        w.pieces
            .insert(part_key(rev, 0).as_slice(), &[1u8][..])
            .unwrap();
        assert!(matches!(w.get(rev), Err(BackendError::Malformed(_))));
        assert!(w.insert(rev, &[SPLIT, 1, 2]).is_err());
        for bad in [&[SPLIT][..], &[SPLIT, 0xff, 0xff, 0xff, 0xff, 9, 9][..]] {
            w.kv.insert(rev.to_bytes().as_slice(), bad).unwrap();
            assert!(w.get(rev).is_err());
        }
    }
}
