//! Wire facts shared by every Ballast crate that talks to a member: how to dial one (client
//! TLS), how URLs and `--initial-cluster` are read and which member IDs they give, how peers
//! greet each other, HTTP/2's frame constants, etcd's prefix end and grpc-go's error text.
//!
//! Invariant: no server state and no storage here; the crates that only talk to members
//! (`ballastctl`, the harness, the benchmark) depend on this, never on `ballast-server`.

pub mod cert;
pub mod go;
pub mod http2;
pub mod ids;
pub mod keys;
pub mod listen;
pub mod peer;
pub mod time;
pub mod tls;
pub mod urls;
