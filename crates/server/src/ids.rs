//! Member and cluster IDs derived exactly as etcd derives them, so the same flags give the same
//! IDs as etcd: member = first 8 bytes (big endian) of SHA-1(sorted peer URLs ++ cluster token);
//! cluster = first 8 bytes of SHA-1 over the sorted member IDs (big endian each).

use sha1::{Digest, Sha1};

fn first_u64(bytes: &[u8]) -> u64 {
    let hash = Sha1::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    first_u64(&b)
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_u64(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_etcd_default_single_member() {
        // etcd's well-known IDs for `etcd` with no flags.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
