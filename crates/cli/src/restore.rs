//! `snapshot restore`: a data directory for a member of a new cluster, built offline from a
//! snapshot file — the store from the file, and the log a first start of that member would
//! write (identity and bootstrap membership from the `--initial-cluster` flags), as etcd's
//! restore does. The member then starts as a restart of that log, whatever flags it is given.
//! Names and URLs resolve through `ballast_net::urls`, as the server's flags do, so both
//! refuse the same input with the same words.

use std::path::{Path, PathBuf};

use ballast_net::{ids, urls};
use ballast_raft::Node;
use ballast_state::layout;
use ballast_state::snapfile::{self, SnapStatus};

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
    /// `--bump-revision` (with `--mark-compacted`): move the latest revision this far ahead
    /// and compact everything before it.
    pub bump_revision: u64,
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

/// The new member's identity and first configuration, resolved from the flags.
struct Plan {
    data_dir: PathBuf,
    wal_dir: PathBuf,
    member_id: u64,
    cluster_id: u64,
    bootstrap: Vec<(u64, Vec<u8>)>,
}

/// Why a restore failed, in the words etcdctl's restore uses where it has them.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Flag(#[from] urls::FlagError),
    #[error("data-dir {0:?} exists")]
    Exists(String),
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sync {path}: {source}")]
    Sync {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] snapfile::SnapFileError),
    #[error(transparent)]
    Log(#[from] ballast_raft::RaftError),
    #[error(transparent)]
    Store(#[from] ballast_state::KvError),
    #[error("--bump-revision is larger than any revision")]
    BumpTooLarge,
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RestoreError::Sync {
            path: dir.display().to_string(),
            source,
        })
}

fn plan(a: &RestoreArgs) -> Result<Plan, RestoreError> {
    if a.name.is_empty() {
        return Err(urls::FlagError::Invalid {
            flag: "--name",
            value: String::new(),
            reason: "name must not be empty".into(),
        }
        .into());
    }
    let data_dir = PathBuf::from(
        a.data_dir
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| format!("{}.ballast", a.name)),
    );
    let wal_dir = a
        .wal_dir
        .as_ref()
        .filter(|w| !w.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("member").join("wal"));
    let advertise = urls::split_urls(
        "--initial-advertise-peer-urls",
        &a.initial_advertise_peer_urls,
    )?;
    let initial = urls::parse_initial_cluster(&a.initial_cluster)?;
    urls::check_local_member(&a.name, &initial, &advertise)?;
    let token = &a.initial_cluster_token;
    let members = ids::initial_members(&initial, token);
    let all: Vec<u64> = members.iter().map(|m| m.0).collect();
    Ok(Plan {
        data_dir,
        wal_dir,
        member_id: ids::member_id(&advertise, token),
        cluster_id: ids::cluster_id(&all),
        bootstrap: ballast_state::members::bootstrap(&members),
    })
}

/// Restores `a.snapshot` into a new data directory, which must not exist yet. On failure
/// nothing is left behind.
pub fn restore(a: &RestoreArgs) -> Result<Restored, RestoreError> {
    let plan = plan(a)?;
    if plan.data_dir.exists() {
        return Err(RestoreError::Exists(plan.data_dir.display().to_string()));
    }
    let result = build(&plan, a);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&plan.data_dir);
        if !plan.wal_dir.starts_with(&plan.data_dir) {
            let _ = std::fs::remove_dir_all(&plan.wal_dir);
        }
    }
    let status = result?;
    Ok(Restored {
        data_dir: plan.data_dir,
        wal_dir: plan.wal_dir,
        member_id: plan.member_id,
        cluster_id: plan.cluster_id,
        status,
    })
}

fn build(p: &Plan, a: &RestoreArgs) -> Result<SnapStatus, RestoreError> {
    let snap_dir = layout::snap_dir(&p.data_dir);
    ballast_storage::private::create_dir_all(&snap_dir).map_err(|source| {
        RestoreError::CreateDir {
            path: snap_dir.display().to_string(),
            source,
        }
    })?;
    let db = snap_dir.join(layout::STORE_FILE);
    let mut status = snapfile::restore(&a.snapshot, &db, a.skip_hash_check)?;
    if a.bump_revision > 0 {
        let bump = i64::try_from(a.bump_revision).map_err(|_| RestoreError::BumpTooLarge)?;
        status.revision = ballast_state::Mvcc::open(&db)?.bump_and_compact(bump)?;
    }
    sync_dir(&snap_dir)?;
    Node::bootstrap_log(&p.wal_dir, p.member_id, p.cluster_id, &p.bootstrap)?;
    for dir in [&p.data_dir.join("member"), &p.data_dir] {
        sync_dir(dir)?;
    }
    Ok(status)
}
