//! Process-level tests: real `ballast` processes on 127.0.0.1 ports, driven by real clients
//! (the `etcd-client` crate and Debian's `etcdctl`), and the real `etcd` as the reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod backups;
mod bench;
mod cluster;
mod concurrency;
mod config;
mod differential;
mod durability;
mod gateway;
mod kubernetes;
mod kv;
mod lease;
mod malformed;
mod membership;
mod migration;
mod operations;
mod raft_cluster;
mod reliability;
mod tls;
mod watch;
