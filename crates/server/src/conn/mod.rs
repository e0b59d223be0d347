//! Client and peer connections below the services: TLS (listeners, handshakes, certificate
//! reloads, the peer port's configuration files), the `:authority` shim for etcdctl 3.4 and
//! write coalescing. Nothing here knows the member; `rpc::dispatch` serves what they accept.

pub mod authority;
pub mod coalesce;
pub mod tls;
