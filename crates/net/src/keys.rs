//! Key ranges as etcd's clients spell them.

/// etcd's prefix end (`clientv3.GetPrefixRangeEnd`): the key with its last byte below 0xff
/// incremented and what follows dropped; `"\0"` (every key) when there is no such byte.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;
    use proptest::prelude::*;

    #[test]
    fn matches_etcds_examples() {
        assert_eq!(prefix_end(b"foo"), b"fop");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    proptest! {
        #[test]
        fn every_key_with_the_prefix_sorts_below_the_end(
            prefix in proptest::collection::vec(any::<u8>(), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..6),
        ) {
            let end = prefix_end(&prefix);
            let mut key = prefix.clone();
            key.extend_from_slice(&tail);
            prop_assert!(key >= prefix);
            // "\0" means "to the end of the keyspace".
            prop_assert!(end == b"\0" || key < end);
        }
    }
}
