//! Rows written by an uncommitted transaction, kept for readers that only see committed state.
//!
//! Row bytes go into one growing buffer and are indexed by revision, so writing a row costs
//! no allocation of its own (the apply path encodes straight into the buffer) and emptying
//! it keeps the buffer for the next transaction.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::Rev;

#[derive(Default)]
pub(crate) struct Rows {
    bytes: Vec<u8>,
    /// Ascending by revision: where each row's bytes are.
    index: Vec<(Rev, usize, usize)>,
    /// Deleted revisions, committed ones included: they hide what a snapshot still holds.
    gone: BTreeSet<Rev>,
    pub(crate) meta: BTreeMap<&'static str, u64>,
}

impl Rows {
    /// Appends the row `encode` writes (after whatever the buffer holds) and returns it.
    pub(crate) fn push_with(&mut self, rev: Rev, encode: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        let start = self.bytes.len();
        encode(&mut self.bytes);
        let end = self.bytes.len();
        self.place(rev, start, end);
        &self.bytes[start..end]
    }

    fn place(&mut self, rev: Rev, start: usize, end: usize) {
        if !self.gone.is_empty() {
            self.gone.remove(&rev);
        }
        match self.index.last() {
            Some(&(last, _, _)) if last >= rev => {
                // Only out-of-order writers (never the apply path) get here.
                match self.index.binary_search_by_key(&rev, |e| e.0) {
                    Ok(i) => self.index[i] = (rev, start, end),
                    Err(i) => self.index.insert(i, (rev, start, end)),
                }
            }
            _ => self.index.push((rev, start, end)),
        }
    }

    pub(crate) fn delete(&mut self, rev: Rev) {
        self.gone.insert(rev);
    }

    /// `Some(None)`: deleted here; `None`: not written here.
    pub(crate) fn get(&self, rev: Rev) -> Option<Option<&[u8]>> {
        if self.is_gone(rev) {
            return Some(None);
        }
        let i = self.index.binary_search_by_key(&rev, |e| e.0).ok()?;
        let (_, s, e) = self.index[i];
        Some(Some(&self.bytes[s..e]))
    }

    pub(crate) fn is_gone(&self, rev: Rev) -> bool {
        !self.gone.is_empty() && self.gone.contains(&rev)
    }

    /// Live rows in `[from, to)` (no upper bound without `to`), in revision order.
    pub(crate) fn range(
        &self,
        from: Rev,
        to: Option<Rev>,
    ) -> impl Iterator<Item = (Rev, &[u8])> + '_ {
        let lo = self.index.partition_point(|e| e.0 < from);
        let hi = to.map_or(self.index.len(), |t| {
            self.index.partition_point(|e| e.0 < t)
        });
        self.index[lo..hi.max(lo)]
            .iter()
            .filter(|e| !self.is_gone(e.0))
            .map(|&(r, s, e)| (r, &self.bytes[s..e]))
    }

    /// Adds what a later transaction wrote.
    pub(crate) fn extend(&mut self, later: &Rows) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&later.bytes);
        for &(rev, s, e) in &later.index {
            self.place(rev, base + s, base + e);
        }
        self.gone.extend(later.gone.iter().copied());
        self.meta.extend(later.meta.iter().map(|(k, v)| (*k, *v)));
    }

    /// Rows written here and not deleted since, in revision order.
    pub(crate) fn live(&self) -> impl Iterator<Item = (Rev, &[u8])> + '_ {
        self.range(Rev::new(i64::MIN, i64::MIN), None)
    }

    /// Revisions deleted here (and not written again since).
    pub(crate) fn gone_revs(&self) -> impl Iterator<Item = Rev> + '_ {
        self.gone.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(i64, u8),
        Delete(i64),
        /// Start a later batch, merged in with `extend`.
        Batch,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..30i64, any::<u8>()).prop_map(|(r, b)| Op::Put(r, b)),
            1 => (0..30i64).prop_map(Op::Delete),
            1 => Just(Op::Batch),
        ]
    }

    proptest! {
        /// Against a map of revision -> row (`None`: deleted), with writes in any order and
        /// split into merged batches.
        #[test]
        fn behaves_like_an_ordered_map(ops in prop::collection::vec(op(), 0..60)) {
            let mut model: BTreeMap<Rev, Option<Vec<u8>>> = BTreeMap::new();
            let mut rows = Rows::default();
            let mut batch = Rows::default();
            for op in ops {
                match op {
                    Op::Put(r, b) => {
                        let row = vec![b; (b % 5) as usize + 1];
                        let got = batch.push_with(Rev::new(r, 0), |v| v.extend_from_slice(&row));
                        prop_assert_eq!(got, &row[..]);
                        model.insert(Rev::new(r, 0), Some(row));
                    }
                    Op::Delete(r) => {
                        batch.delete(Rev::new(r, 0));
                        model.insert(Rev::new(r, 0), None);
                    }
                    Op::Batch => {
                        rows.extend(&batch);
                        batch = Rows::default();
                    }
                }
            }
            rows.extend(&batch);
            for r in 0..31 {
                let rev = Rev::new(r, 0);
                let want = model.get(&rev).map(|o| o.as_deref());
                prop_assert_eq!(rows.get(rev), want);
            }
            let live: Vec<(Rev, Vec<u8>)> = model
                .range(Rev::new(5, 0)..Rev::new(20, 0))
                .filter_map(|(r, o)| o.clone().map(|v| (*r, v)))
                .collect();
            let got: Vec<(Rev, Vec<u8>)> = rows
                .range(Rev::new(5, 0), Some(Rev::new(20, 0)))
                .map(|(r, b)| (r, b.to_vec()))
                .collect();
            prop_assert_eq!(got, live);
        }
    }
}
