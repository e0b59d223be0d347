//! The state machine's tables in the backend, and how their rows are encoded: etcd's data
//! model, kept here rather than in `ballast-storage`, which stores bytes under bytes.
//!
//! The tags are the tables' ids in snapshot streams and keys and values are encoded as the
//! streams have always carried them (integers little endian), so snapshot files written
//! before the schema moved here restore unchanged.
//!
//! Invariant: every decoder checks lengths and reports a malformed row as an error, never a
//! panic; rows come from files that may be damaged.

use ballast_storage::backend::{Table, WriteTx};
use ballast_storage::BackendError;

use crate::KvError;

/// Member id (u64 LE) -> encoded `etcdserverpb.Member`.
pub const MEMBERS: Table = Table {
    name: "members",
    tag: 2,
};
/// IDs of members removed from the cluster (u64 LE) -> 0 (u64 LE): never reused, as in etcd.
pub const MEMBERS_REMOVED: Table = Table {
    name: "members_removed",
    tag: 3,
};
/// Lease id (i64 LE) -> granted TTL, last checkpointed remaining TTL (seconds, i64 LE each).
pub const LEASES: Table = Table {
    name: "leases",
    tag: 4,
};
/// Member id (u64 LE) -> bit set of its active alarms (bit n = etcd's `AlarmType` n, u64 LE).
pub const ALARMS: Table = Table {
    name: "alarms",
    tag: 5,
};
/// [`AUTH_USER`] or [`AUTH_ROLE`], then the name -> encoded `authpb.User` / `authpb.Role`.
pub const AUTH: Table = Table {
    name: "auth",
    tag: 6,
};
/// Every table of the state machine besides the backend's own `kv` and `meta`.
pub const TABLES: &[Table] = &[MEMBERS, MEMBERS_REMOVED, LEASES, ALARMS, AUTH];

pub const AUTH_USER: u8 = b'u';
pub const AUTH_ROLE: u8 = b'r';

/// An id as its row key.
pub fn id_key(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

fn word(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn malformed(table: Table, key: &[u8]) -> KvError {
    KvError::Corrupt(format!("malformed row {key:02x?} in table {}", table.name))
}

/// A u64 row key, or the error naming the row.
pub fn decode_id(table: Table, key: &[u8]) -> Result<u64, KvError> {
    word(key).ok_or_else(|| malformed(table, key))
}

/// A u64 row value, or the error naming the row.
pub fn decode_word(table: Table, key: &[u8], value: &[u8]) -> Result<u64, KvError> {
    word(value).ok_or_else(|| malformed(table, key))
}

/// A lease row: (id, granted TTL, checkpointed remaining TTL or 0).
pub fn decode_lease(key: &[u8], value: &[u8]) -> Result<(i64, i64, i64), KvError> {
    let id = word(key).ok_or_else(|| malformed(LEASES, key))? as i64;
    let (Some(ttl), Some(rem)) = (value.get(..8).and_then(word), value.get(8..).and_then(word))
    else {
        return Err(malformed(LEASES, key));
    };
    Ok((id, ttl as i64, rem as i64))
}

pub fn put_lease(
    w: &mut WriteTx<'_>,
    id: i64,
    ttl: i64,
    remaining: i64,
) -> Result<(), BackendError> {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&ttl.to_le_bytes());
    v[8..].copy_from_slice(&remaining.to_le_bytes());
    w.put(LEASES, &id.to_le_bytes(), &v)
}

pub fn delete_lease(w: &mut WriteTx<'_>, id: i64) -> Result<(), BackendError> {
    w.delete(LEASES, &id.to_le_bytes())
}

/// Sets a member's active alarms (an empty set removes its row).
pub fn set_alarms(w: &mut WriteTx<'_>, member: u64, bits: u64) -> Result<(), BackendError> {
    if bits == 0 {
        w.delete(ALARMS, &id_key(member))
    } else {
        w.put(ALARMS, &id_key(member), &bits.to_le_bytes())
    }
}

/// Stores (or, with `None`, removes) an auth row; `kind` is [`AUTH_USER`] or [`AUTH_ROLE`].
pub fn put_auth(
    w: &mut WriteTx<'_>,
    kind: u8,
    name: &[u8],
    value: Option<&[u8]>,
) -> Result<(), BackendError> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(kind);
    k.extend_from_slice(name);
    match value {
        Some(v) => w.put(AUTH, &k, v),
        None => w.delete(AUTH, &k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_or_name_what_is_wrong() {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&30i64.to_le_bytes());
        v[8..].copy_from_slice(&12i64.to_le_bytes());
        assert_eq!(
            decode_lease(&7i64.to_le_bytes(), &v).ok(),
            Some((7, 30, 12))
        );
        assert!(decode_lease(&7i64.to_le_bytes(), &v[..15]).is_err());
        assert!(decode_lease(&[1, 2], &v).is_err());
        assert_eq!(decode_id(MEMBERS, &id_key(9)).ok(), Some(9));
        let e = decode_word(ALARMS, b"k", b"short").unwrap_err().to_string();
        assert!(e.contains("alarms"), "{e}");
    }
}
