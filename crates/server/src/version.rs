//! Versions Ballast reports. Clients gate features on the etcd API version (Kubernetes uses
//! watch progress requests only from 3.5.13), so report the etcd API Ballast implements.

pub const ETCD_API_VERSION: &str = "3.6.0";
pub const BALLAST_VERSION: &str = env!("CARGO_PKG_VERSION");
