//! `snapshot restore`: a data directory for a member of a new cluster, built offline from a
//! snapshot file — the store from the file, and the log a first start of that member would
//! write (identity and bootstrap membership from the `--initial-cluster` flags), as etcd's
//! restore does. The member then starts as a restart of that log, whatever flags it is given.

use std::path::{Path, PathBuf};

use ballast_raft::Node;
use ballast_state::snapfile::{self, SnapStatus};

use crate::config::Config;
use crate::membership;

/// The flags of `snapshot restore`, named as etcdctl names them.
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    pub snapshot: PathBuf,
    pub name: String,
    pub data_dir: Option<String>,
    pub wal_dir: Option<String>,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
}

/// Where the restored member's data went.
#[derive(Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub status: SnapStatus,
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Restores `a.snapshot` into a new data directory, which must not exist yet. On failure
/// nothing is left behind.
pub fn restore(a: &RestoreArgs) -> Result<Restored, String> {
    let data_dir = a
        .data_dir
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| format!("{}.ballast", a.name));
    // The server's own flag resolution, so the same names, URLs and errors apply.
    let mut args = vec![
        "ballast".to_string(),
        "--name".into(),
        a.name.clone(),
        "--data-dir".into(),
        data_dir.clone(),
        "--initial-cluster".into(),
        a.initial_cluster.clone(),
        "--initial-cluster-token".into(),
        a.initial_cluster_token.clone(),
        "--initial-advertise-peer-urls".into(),
        a.initial_advertise_peer_urls.clone(),
        "--initial-cluster-state".into(),
        "new".into(),
    ];
    if let Some(w) = a.wal_dir.as_ref().filter(|w| !w.is_empty()) {
        args.extend(["--wal-dir".to_string(), w.clone()]);
    }
    let cfg = Config::from_args(args).map_err(|e| e.to_string())?;
    if cfg.data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            cfg.data_dir.display().to_string()
        ));
    }
    let start = membership::startup(&cfg).map_err(|e| e.to_string())?;
    let result = build(&cfg, &start, a);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
        if !cfg.wal_dir.starts_with(&cfg.data_dir) {
            let _ = std::fs::remove_dir_all(&cfg.wal_dir);
        }
    }
    let status = result?;
    Ok(Restored {
        data_dir: cfg.data_dir.clone(),
        wal_dir: cfg.wal_dir.clone(),
        member_id: start.member_id,
        cluster_id: start.cluster_id,
        status,
    })
}

fn build(cfg: &Config, start: &membership::Startup, a: &RestoreArgs) -> Result<SnapStatus, String> {
    let snap_dir = cfg.data_dir.join("member").join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| format!("cannot create {}: {e}", snap_dir.display()))?;
    let status = snapfile::restore(&a.snapshot, &snap_dir.join("db"), a.skip_hash_check)
        .map_err(|e| e.to_string())?;
    sync_dir(&snap_dir)?;
    Node::bootstrap_log(
        &cfg.wal_dir,
        start.member_id,
        start.cluster_id,
        &start.bootstrap,
    )
    .map_err(|e| e.to_string())?;
    for dir in [&cfg.data_dir.join("member"), &cfg.data_dir] {
        sync_dir(dir)?;
    }
    Ok(status)
}
