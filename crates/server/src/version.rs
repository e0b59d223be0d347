//! Versions Ballast reports. Clients gate features on the etcd API version (Kubernetes uses
//! watch progress requests only from 3.5.13, and RangeStream from 3.7), so report the etcd
//! API Ballast implements: 3.7's, RangeStream included.

pub const ETCD_API_VERSION: &str = "3.7.0";
pub const BALLAST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Major and minor of [`ETCD_API_VERSION`]: the cluster version etcd reports.
pub fn api_major_minor() -> (u64, u64) {
    let mut p = ETCD_API_VERSION
        .split('.')
        .map(|x| x.parse::<u64>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}
