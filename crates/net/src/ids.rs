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

/// Sorted peer URLs, concatenated, then the cluster token: what etcd hashes for a member id.
fn urls_and_token(peer_urls: &[String], token: &str) -> Vec<u8> {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    b
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    first_u64(&urls_and_token(peer_urls, token))
}

/// The id etcd gives a member added at run time (`member add`): its peer URLs, the cluster
/// token and the Unix time in seconds, so re-adding the same URLs later gets a fresh id.
pub fn added_member_id(peer_urls: &[String], token: &str, unix_secs: u64) -> u64 {
    let mut b = urls_and_token(peer_urls, token);
    b.extend_from_slice(unix_secs.to_string().as_bytes());
    first_u64(&b)
}

/// The members `--initial-cluster` names, each as `(id, name, peer URLs)`, in its order.
pub fn initial_members(
    initial_cluster: &[(String, Vec<String>)],
    token: &str,
) -> Vec<(u64, String, Vec<String>)> {
    initial_cluster
        .iter()
        .map(|(name, urls)| (member_id(urls, token), name.clone(), urls.clone()))
        .collect()
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

    #[test]
    fn added_members_differ_by_time() {
        let urls = ["http://127.0.0.1:2380".to_string()];
        let a = added_member_id(&urls, "t", 1);
        assert_ne!(a, added_member_id(&urls, "t", 2));
        assert_eq!(a, added_member_id(&urls, "t", 1));
    }
}
