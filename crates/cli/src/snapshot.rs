//! `snapshot save|status|restore`, as etcdctl 3.4 runs them. `save` streams a member's
//! snapshot to `FILE.part`, checks its SHA-256 trailer, fsyncs and renames it; `status` and
//! `restore` read the file offline (restore writes a new member's data directory).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::restore::{restore, RestoreArgs};
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::SnapshotRequest;
use ballast_state::snapfile::{self, HASH_LEN};
use sha2::{Digest, Sha256};

use crate::output::{table, Format, Printer};
use crate::{connect, human_bytes, zap_timestamp, Cli, Failure};

/// etcdctl's exit code for a failed `snapshot save`.
const EXIT_INTERRUPTED: u8 = 5;

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Stores an etcd node backend snapshot to a given file
    Save { args: Vec<String> },
    /// Gets backend snapshot status of a given file
    Status { args: Vec<String> },
    /// Restores an etcd member snapshot to an etcd directory
    Restore(Box<RestoreFlags>),
}

#[derive(clap::Args, Debug)]
pub struct RestoreFlags {
    /// Path to the data directory
    #[arg(long = "data-dir", default_value = "")]
    data_dir: String,
    /// Path to the WAL directory (use --data-dir if none given)
    #[arg(long = "wal-dir", default_value = "")]
    wal_dir: String,
    /// Initial cluster configuration for restore bootstrap
    #[arg(
        long = "initial-cluster",
        default_value = "default=http://localhost:2380"
    )]
    initial_cluster: String,
    /// Initial cluster token for the etcd cluster during restore bootstrap
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster
    #[arg(
        long = "initial-advertise-peer-urls",
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: String,
    /// Human-readable name for this member
    #[arg(long, default_value = "default")]
    name: String,
    /// Ignore snapshot integrity hash value (required if copied from data directory)
    #[arg(long = "skip-hash-check")]
    skip_hash_check: bool,
    /// How much to increase the latest revision after restore
    #[arg(long = "bump-revision", default_value_t = 0)]
    bump_revision: u64,
    /// Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise)
    #[arg(long = "mark-compacted")]
    mark_compacted: bool,
    /// Restore from this backup store instead of a file: the newest snapshot and the archive after it (Ballast's own)
    #[command(flatten)]
    store: crate::backup::StoreFlags,
    /// With --backup-url: the revision to restore (0: the newest backup)
    #[arg(long = "to-revision", default_value_t = 0)]
    to_revision: i64,
    /// With --backup-url: restore what was committed by this time (RFC 3339)
    #[arg(long = "to-time", default_value = "")]
    to_time: String,
    args: Vec<String>,
}

/// One zap-style log line on stderr, as etcdctl's snapshot commands log their steps.
pub(crate) fn log(msg: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "level": "info",
        "ts": zap_timestamp(std::time::SystemTime::now()),
        "msg": msg,
    });
    if let (Some(l), Some(f)) = (line.as_object_mut(), fields.as_object()) {
        l.extend(f.clone());
    }
    eprintln!("{line}");
}

pub async fn run(cli: &Cli, p: &Printer, cmd: &SnapshotCmd) -> Result<(), Failure> {
    match cmd {
        SnapshotCmd::Save { args } => {
            let [file] = args.as_slice() else {
                return Err(Failure::BadArgs(
                    "snapshot save expects one argument <filename>".into(),
                ));
            };
            save(cli, Path::new(file))
                .await
                .map_err(|m| Failure::Exit(EXIT_INTERRUPTED, m))
        }
        SnapshotCmd::Status { args } => {
            let [file] = args.as_slice() else {
                return Err(Failure::BadArgs(
                    "snapshot status requires exactly one argument".into(),
                ));
            };
            let st =
                snapfile::status(Path::new(file)).map_err(|e| Failure::Other(e.to_string()))?;
            print_status(p, &st);
            Ok(())
        }
        SnapshotCmd::Restore(f) => {
            if !f.store.url.is_empty() {
                return restore_backup(f).await;
            }
            let [file] = f.args.as_slice() else {
                return Err(Failure::BadArgs(
                    "snapshot restore requires exactly one argument".into(),
                ));
            };
            restore_from(f, file)
        }
    }
}

/// `snapshot restore FILE`, as etcdutl runs it.
fn restore_from(f: &RestoreFlags, file: &str) -> Result<(), Failure> {
    if (f.bump_revision == 0) == f.mark_compacted {
        // etcdutl's own words, flag name included.
        return Err(Failure::BadArgs(
            "--mark-compacted required if --revision-bump > 0".into(),
        ));
    }
    let a = RestoreArgs {
        snapshot: PathBuf::from(file),
        name: f.name.clone(),
        data_dir: Some(f.data_dir.clone()),
        wal_dir: Some(f.wal_dir.clone()),
        initial_cluster: f.initial_cluster.clone(),
        initial_cluster_token: f.initial_cluster_token.clone(),
        initial_advertise_peer_urls: f.initial_advertise_peer_urls.clone(),
        skip_hash_check: f.skip_hash_check,
        bump_revision: f.bump_revision,
    };
    log("restoring snapshot", serde_json::json!({"path": file}));
    let r = restore(&a).map_err(|e| Failure::Other(e.to_string()))?;
    log(
        "restored snapshot",
        serde_json::json!({
            "path": file,
            "data-dir": r.data_dir.display().to_string(),
            "wal-dir": r.wal_dir.display().to_string(),
            "member-id": format!("{:x}", r.member_id),
            "cluster-id": format!("{:x}", r.cluster_id),
            "revision": r.status.revision,
        }),
    );
    Ok(())
}

/// `snapshot restore --backup-url URL`: the newest backup (or the one at `--to-revision`),
/// downloaded beside the new data directory, checked against its manifest, then restored as
/// a file would be.
async fn restore_backup(f: &RestoreFlags) -> Result<(), Failure> {
    if !f.args.is_empty() {
        return Err(Failure::BadArgs(
            "snapshot restore takes a file or --backup-url, not both".into(),
        ));
    }
    if f.data_dir.is_empty() {
        return Err(Failure::BadArgs(
            "snapshot restore --backup-url needs --data-dir".into(),
        ));
    }
    let target = crate::backup::target(f.to_revision, &f.to_time)?;
    crate::backup::restore_into(&f.store, target, Path::new(&f.data_dir), |file| {
        restore_from(f, file)
    })
    .await
}

fn print_status(p: &Printer, st: &snapfile::SnapStatus) {
    let hash = format!("{:x}", st.hash);
    let size = human_bytes(st.total_size);
    // etcdutl 3.7's columns; the version is the file's storage version, empty before 3.6.
    let version = st.version.clone().unwrap_or_default();
    match p.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "hash": st.hash,
                "revision": st.revision,
                "totalKey": st.total_keys,
                "totalSize": st.total_size,
                "version": version,
            })
        ),
        Format::Table => table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION"],
            &[vec![
                hash,
                st.revision.to_string(),
                st.total_keys.to_string(),
                size,
                version,
            ]],
        ),
        Format::Fields => {
            println!("\"Hash\" : {}", st.hash);
            println!("\"Revision\" : {}", st.revision);
            println!("\"Keys\" : {}", st.total_keys);
            println!("\"Size\" : {}", st.total_size);
            println!("\"Version\" : {version}");
        }
        Format::Simple => println!(
            "{hash}, {}, {}, {size}, {version}",
            st.revision, st.total_keys
        ),
    }
}

async fn save(cli: &Cli, file: &Path) -> Result<(), String> {
    if cli.endpoints.len() != 1 {
        return Err(format!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            cli.endpoints.join(" ")
        ));
    }
    let ep = &cli.endpoints[0];
    let part = PathBuf::from(format!("{}.part", file.display()));
    let _ = std::fs::remove_file(&part);
    // Snapshot files hold every key: only their owner may read them, as with etcdctl.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .map_err(|e| format!("could not open {} ({e})", part.display()))?;
    log(
        "created temporary db file",
        serde_json::json!({"path": part.display().to_string()}),
    );
    let started = Instant::now();
    let fetched = fetch(cli, ep, &mut out).await;
    let size = match fetched {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    log(
        "fetched snapshot",
        serde_json::json!({
            "endpoint": ep,
            "size": human_bytes(size),
            "took": started.elapsed().as_secs_f64(),
        }),
    );
    std::fs::rename(&part, file)
        .map_err(|e| format!("could not rename {} ({e})", part.display()))?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("could not sync {} ({e})", dir.display()))?;
    log(
        "saved",
        serde_json::json!({"path": file.display().to_string()}),
    );
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

/// Streams the snapshot into `out`, checking its SHA-256 trailer; fsyncs; returns its size.
async fn fetch(cli: &Cli, ep: &str, out: &mut std::fs::File) -> Result<u64, String> {
    let ch = connect(cli, ep)
        .await
        .map_err(|_| "context deadline exceeded".to_string())?;
    let mut m = crate::limited!(MaintenanceClient::new(ch)).max_decoding_message_size(usize::MAX);
    let mut stream = m
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    log("fetching snapshot", serde_json::json!({"endpoint": ep}));
    let progress = std::io::stderr().is_terminal();
    let mut hasher = Sha256::new();
    // The last HASH_LEN bytes seen are the trailer, not data: hold them back.
    let mut tail: Vec<u8> = Vec::new();
    let mut written = 0u64;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
    {
        tail.extend_from_slice(&msg.blob);
        if tail.len() > HASH_LEN {
            let body = tail.len() - HASH_LEN;
            hasher.update(&tail[..body]);
            out.write_all(&tail[..body]).map_err(|e| e.to_string())?;
            written += body as u64;
            tail.drain(..body);
        }
        if progress {
            let total = written + msg.remaining_bytes;
            eprint!("\r{} / {}", human_bytes(written), human_bytes(total));
        }
    }
    if progress {
        eprintln!();
    }
    if tail.len() != HASH_LEN || hasher.finalize().as_slice() != tail.as_slice() {
        return Err(format!(
            "sha256 checksum not found [bytes: {}]",
            written + tail.len() as u64
        ));
    }
    out.write_all(&tail).map_err(|e| e.to_string())?;
    out.sync_all().map_err(|e| e.to_string())?;
    Ok(written + HASH_LEN as u64)
}
