//! Where a member starts from: its data directory made ready, and its identity and first
//! configuration — read back from the log on a restart, derived from `--initial-cluster` on a
//! first start of a new cluster, or asked from running members when joining one.
//!
//! Invariant: the `--initial-cluster*` flags only ever describe a first start, as in etcd; a
//! restart takes identity from the log and peers from the applied member records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballast_api::etcdserverpb::MemberListResponse;
use ballast_net::ids;
use ballast_net::urls::sorted;
use ballast_raft::Node;
use ballast_state::{layout, Mvcc};
use prost::Message;

use super::StartupError;
use crate::config::Config;
use crate::conn::tls::TlsError;

/// How this member learns its identity and the first configuration.
pub struct Startup {
    pub member_id: u64,
    pub cluster_id: u64,
    /// Initial members' configuration entries (new cluster only).
    pub bootstrap: Vec<(u64, Vec<u8>)>,
    /// Other members to connect to at once.
    pub peers: Vec<(u64, Vec<String>)>,
}

/// Creates `<data-dir>/member/snap` and removes what a crash left there half-received or
/// never installed (the leader sends it again). Only Ballast's own names: etcd's files there
/// (a converted etcd member's `db` and `*.snap`) stay untouched.
pub fn prepare_snap_dir(data_dir: &Path) -> Result<PathBuf, StartupError> {
    let snap_dir = layout::snap_dir(data_dir);
    ballast_storage::private::create_dir_all(&snap_dir).map_err(|source| {
        StartupError::CreateDir {
            path: snap_dir.clone(),
            source,
        }
    })?;
    if let Ok(rd) = std::fs::read_dir(&snap_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ballast_raft::is_received_snapshot_file(&name) || name == layout::STORE_FILE_NEW {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(snap_dir)
}

/// This member's identity and first configuration.
pub fn identity(cfg: &Config, store: &Mvcc) -> Result<Startup, StartupError> {
    if !Node::log_exists(&cfg.wal_dir) {
        return first_start(cfg);
    }
    Ok(Startup {
        member_id: 0,
        cluster_id: 0,
        bootstrap: vec![],
        peers: store
            .members()
            .into_iter()
            .map(|m| (m.id, m.peer_ur_ls))
            .collect(),
    })
}

/// Resolves identity for a first start. (Restarts read it back from the log instead.)
fn first_start(cfg: &Config) -> Result<Startup, StartupError> {
    let token = &cfg.initial_cluster_token;
    let member_id = ids::member_id(&cfg.advertise_peer_urls, token);
    let initial = ids::initial_members(&cfg.initial_cluster, token);
    let peers: Vec<(u64, Vec<String>)> = initial
        .iter()
        .map(|(id, _, urls)| (*id, urls.clone()))
        .collect();
    if cfg.new_cluster {
        return Ok(Startup {
            member_id,
            cluster_id: ids::cluster_id(&initial.iter().map(|m| m.0).collect::<Vec<_>>()),
            bootstrap: ballast_state::members::bootstrap(&initial),
            peers,
        });
    }
    // Joining: the running members know our id (chosen by MemberAdd) and the cluster's.
    let others: Vec<String> = cfg
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls.clone())
        .collect();
    let tls = peer_tls(cfg)?;
    let body =
        ballast_raft::fetch_membership(&others, Duration::from_secs(2), 16 << 20, tls.as_ref())
            .ok_or_else(|| StartupError::NoPeerAnswered(others.clone()))?;
    let list = MemberListResponse::decode(body.as_slice())?;
    let cluster_id = list.header.map(|h| h.cluster_id).unwrap_or(0);
    let me = sorted(&cfg.advertise_peer_urls);
    let found = list
        .members
        .iter()
        .find(|m| sorted(&m.peer_ur_ls) == me)
        .ok_or_else(|| StartupError::NotAdded(me.clone()))?;
    Ok(Startup {
        member_id: found.id,
        cluster_id,
        bootstrap: vec![],
        peers: list
            .members
            .iter()
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect(),
    })
}

/// The peer port's TLS (`--peer-*`, or `--peer-auto-tls` kept in `<data-dir>/fixtures/peer`),
/// when the peer URLs are `https`. The same certificate serves and identifies this member.
pub fn peer_tls(cfg: &Config) -> Result<Option<ballast_raft::PeerTls>, TlsError> {
    if !cfg.peer_https {
        return Ok(None);
    }
    let dir = cfg.data_dir.join("fixtures").join("peer");
    let Some(mut files) = crate::conn::tls::port_files(
        cfg.peer_tls.as_ref(),
        cfg.peer_auto_tls,
        &dir,
        &cfg.listen_peer,
        cfg.self_signed_cert_validity,
    )?
    else {
        return Ok(None);
    };
    files.allowed = cfg.peer_allowed.clone();
    let server = Arc::new(crate::conn::tls::Reloading::new(files.clone())?);
    // Auto TLS files name no CA: peers' certificates are then not verified, as in etcd.
    let mut client =
        crate::conn::tls::member_client_config(Some(&files), cfg.peer_allowed.clone())?;
    // The peer protocol is Ballast's own, not HTTP.
    client.alpn_protocols.clear();
    Ok(Some(ballast_raft::PeerTls {
        client: Arc::new(client),
        server: Arc::new(move || server.current()),
    }))
}
