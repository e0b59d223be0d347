//! Keys of the in-memory key index.
//!
//! The index is a B-tree over every key in the store, searched on each put. With keys in
//! `Vec<u8>`s each comparison followed a pointer to bytes somewhere else on the heap, and a
//! lookup in a tree of 100,000 keys made some forty of those (a tenth of the applier's time,
//! mostly cache misses). Short keys are now kept in the tree node itself, in the space the
//! `Vec` header took, and compared eight bytes at a time. A lookup builds a `Key` (`BTreeMap`
//! borrows only through `Borrow`, which a byte slice cannot give for this enum without unsafe
//! code), so finding a long key costs one allocation, as copying it for the old insert did.

use std::cmp::Ordering;

/// Longest key kept inline: the enum stays the size of a `Vec<u8>` (24 bytes).
const INLINE: usize = 22;

#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    pub(crate) fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

/// Byte-wise lexicographic order (what `[u8]`'s `Ord` gives), without a `memcmp` call: whole
/// eight-byte chunks compare as big-endian integers.
pub(crate) fn cmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let (mut x, mut y) = (a, b);
    while let (Some(p), Some(q)) = (x.first_chunk::<8>(), y.first_chunk::<8>()) {
        let (p, q) = (u64::from_be_bytes(*p), u64::from_be_bytes(*q));
        if p != q {
            return p.cmp(&q);
        }
        x = &x[8..];
        y = &y[8..];
    }
    for (p, q) in x.iter().zip(y) {
        if p != q {
            return p.cmp(q);
        }
    }
    x.len().cmp(&y.len())
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        cmp_bytes(self.as_bytes(), other.as_bytes())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_key_is_as_small_as_a_vec() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Vec<u8>>());
    }

    fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes, so shared prefixes and equal chunks are common.
        prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..40)
    }

    proptest! {
        #[test]
        fn order_is_the_byte_order(a in key_bytes(), b in key_bytes()) {
            prop_assert_eq!(cmp_bytes(&a, &b), a.cmp(&b));
            let (ka, kb) = (Key::new(&a), Key::new(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.as_bytes(), &a[..]);
        }
    }
}
