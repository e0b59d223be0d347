//! Ballast's own `backup list` and `snapshot restore --backup-url`: the scheduled backups in a
//! directory or an S3-compatible bucket, found by their manifests; credentials from the
//! standard AWS places, as the server takes them.

use std::path::{Path, PathBuf};

use ballast_backup::archive::{self, Segment};
use ballast_backup::catalog::{self, Catalog};
use ballast_backup::{Location, Manifest, S3Settings, SnapshotName, Store};

use ballast_api::ballast::internal::{raft_request, RaftRequest};
use prost::Message;

use crate::output::{table, Format, Printer};
use crate::{human_bytes, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// Lists the scheduled backups in a backup store
    List(StoreFlags),
}

/// Where the backups are and how to reach the bucket (the server's `--backup-*` flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreFlags {
    /// Where the backups are: s3://bucket/prefix or file:///path
    #[arg(long = "backup-url", default_value = "")]
    pub url: String,
    /// S3-compatible endpoint (else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)
    #[arg(long = "backup-endpoint", default_value = "")]
    pub endpoint: String,
    /// S3 region (else AWS_REGION or AWS_DEFAULT_REGION; else us-east-1)
    #[arg(long = "backup-region", default_value = "")]
    pub region: String,
    /// S3 addressing: path, virtual or auto
    #[arg(long = "backup-addressing-style", default_value = "auto")]
    pub addressing: String,
    /// Extra CA certificates (PEM) for the S3 endpoint (else AWS_CA_BUNDLE)
    #[arg(long = "backup-ca-file", default_value = "")]
    pub ca_file: String,
}

impl StoreFlags {
    pub fn open(&self) -> Result<Store, Failure> {
        if self.url.is_empty() {
            return Err(Failure::BadArgs("--backup-url is required".into()));
        }
        let loc = Location::parse(&self.url).map_err(|e| Failure::BadArgs(e.to_string()))?;
        let mut s3 = S3Settings::from_env();
        if !self.endpoint.is_empty() {
            s3.endpoint = Some(self.endpoint.clone());
        }
        if !self.region.is_empty() {
            s3.region = self.region.clone();
        }
        s3.addressing = self.addressing.parse().map_err(Failure::BadArgs)?;
        if !self.ca_file.is_empty() {
            s3.ca_file = Some(PathBuf::from(&self.ca_file));
        }
        Store::open(&loc, &s3).map_err(|e| Failure::Other(e.to_string()))
    }
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

pub async fn run(p: &Printer, cmd: &BackupCmd) -> Result<(), Failure> {
    match cmd {
        BackupCmd::List(f) => {
            let store = f.open()?;
            let c = catalog::catalog(&store).await.map_err(other)?;
            let mut rows = Vec::with_capacity(c.complete.len());
            for (n, _) in &c.complete {
                rows.push(catalog::read_manifest(&store, n).await.map_err(other)?);
            }
            let segs = archive::segments(&store).await.map_err(other)?;
            print_list(p, &c, &rows, &runs(&segs));
            Ok(())
        }
    }
}

/// The archive's contiguous runs of raft indexes: (first, last, segments).
fn runs(segs: &[Segment]) -> Vec<(u64, u64, usize)> {
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for s in segs {
        match out.last_mut() {
            Some(r) if s.first <= r.1 + 1 => {
                r.1 = r.1.max(s.last);
                r.2 += 1;
            }
            _ => out.push((s.first, s.last, 1)),
        }
    }
    out
}

fn print_list(p: &Printer, c: &Catalog, ms: &[Manifest], runs: &[(u64, u64, usize)]) {
    match p.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "snapshots": ms,
                "incomplete": c.incomplete.iter().map(SnapshotName::db).collect::<Vec<_>>(),
                "archive": runs.iter().map(|(first, last, n)| serde_json::json!({
                    "firstIndex": first, "lastIndex": last, "segments": n,
                })).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            let head = [
                "SNAPSHOT",
                "REVISION",
                "INDEX",
                "HASH",
                "TOTAL KEYS",
                "SIZE",
                "CREATED",
                "MEMBER",
            ];
            let rows: Vec<Vec<String>> = ms
                .iter()
                .map(|m| {
                    vec![
                        m.snapshot.clone(),
                        m.revision.to_string(),
                        m.index.to_string(),
                        format!("{:x}", m.hash),
                        m.total_keys.to_string(),
                        human_bytes(m.size),
                        m.created.clone(),
                        m.member_id.clone(),
                    ]
                })
                .collect();
            table(&head, &rows);
            if !runs.is_empty() {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|(a, b, n)| vec![a.to_string(), b.to_string(), n.to_string()])
                    .collect();
                table(
                    &["ARCHIVE FIRST INDEX", "ARCHIVE LAST INDEX", "SEGMENTS"],
                    &rows,
                );
            }
        }
        Format::Simple | Format::Fields => {
            for m in ms {
                println!(
                    "{}, {}, {}, {:x}, {}, {}, {}, {}",
                    m.snapshot,
                    m.revision,
                    m.index,
                    m.hash,
                    m.total_keys,
                    human_bytes(m.size),
                    m.created,
                    m.member_id
                );
            }
            for (a, b, n) in runs {
                println!("archive, {a}, {b}, {n}");
            }
        }
    }
}

/// What a restore from a backup store needs: the snapshot (downloaded) and, for a revision
/// past it, the store and the archive segments to replay after the snapshot's index.
pub struct Fetched {
    pub file: PathBuf,
    pub manifest: Manifest,
    pub replay: Option<(Store, Vec<Segment>, i64)>,
}

/// Downloads the newest complete backup at or below `to_revision` (the newest of all if
/// `None`) into a new file beside `near` and checks it against its manifest. A revision past
/// that snapshot needs the archive, without a hole, from the snapshot's index on; otherwise
/// it is refused, never approximated.
pub async fn fetch_for_restore(
    f: &StoreFlags,
    to_revision: Option<i64>,
    near: &Path,
) -> Result<Fetched, Failure> {
    let store = f.open()?;
    let c = catalog::catalog(&store).await.map_err(other)?;
    let Some(n) = c.newest_at_or_below(to_revision) else {
        return Err(Failure::Other(match to_revision {
            Some(r) => format!("no backup at or below revision {r} in {store}"),
            None => format!("no backup in {store}"),
        }));
    };
    let m = catalog::read_manifest(&store, &n).await.map_err(other)?;
    let mut replay = None;
    if let Some(r) = to_revision.filter(|r| *r != n.revision) {
        let segs = archive::segments(&store).await.map_err(other)?;
        let (run, _) = archive::run_after(&segs, m.index);
        if run.is_empty() || m.index == 0 {
            return Err(Failure::Other(format!(
                "no backup at revision {r} in {store}: the newest below it is at revision {}, and there is no archive to replay from it",
                n.revision
            )));
        }
        replay = Some((store.clone(), run, r));
    }
    let dir = near
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{}.part", m.snapshot));
    let got = store.get_file(&m.snapshot, m.size, &tmp).await;
    if let Err(e) = got {
        let _ = std::fs::remove_file(&tmp);
        return Err(other(e));
    }
    Ok(Fetched {
        file: tmp,
        manifest: m,
        replay,
    })
}

/// The request an archived entry applies, as the applier decodes it; membership, alarms and
/// the downgrade job belong to the old cluster and are left out, as a restore leaves them.
fn request_of(e: &archive::Entry) -> Option<RaftRequest> {
    if e.conf_change || e.data.is_empty() {
        return None;
    }
    let r = RaftRequest::decode(e.data.as_slice()).ok()?;
    match r.request {
        Some(
            raft_request::Request::MemberChange(_)
            | raft_request::Request::Alarm(_)
            | raft_request::Request::DowngradeInfoSet(_),
        ) => None,
        _ => Some(r),
    }
}

/// Entries applied per store transaction while replaying.
const REPLAY_BATCH: usize = 1024;

/// Replays `segs` after raft index `base` (the snapshot's) into the restored store at `db`
/// until its revision is `to`: each entry
/// makes at most one revision, so a batch never holds more entries than revisions still
/// wanted, and replay stops right after the entry that made revision `to`. One segment is in
/// memory at a time. The store then forgets the old cluster's raft index. Returns the
/// revision reached.
pub async fn replay(
    db: &Path,
    store: &Store,
    segs: &[Segment],
    base: u64,
    to: i64,
) -> Result<i64, Failure> {
    let mvcc = ballast_state::Mvcc::open(db).map_err(other)?;
    let mut rev = mvcc.current_rev();
    // The snapshot holds everything up to its raft index.
    let mut applied = base;
    'segments: for seg in segs {
        if rev >= to {
            break;
        }
        let entries = archive::get(store, seg).await.map_err(other)?;
        // Overlapping segments (two leaders for a moment) hold the same committed entries.
        let floor = applied;
        let mut it = entries.iter().filter(move |e| e.index > floor).peekable();
        while it.peek().is_some() {
            let room = usize::try_from(to - rev).unwrap_or(0).min(REPLAY_BATCH);
            if room == 0 {
                break 'segments;
            }
            let batch: Vec<(u64, Option<RaftRequest>)> = it
                .by_ref()
                .take(room)
                .map(|e| (e.index, request_of(e)))
                .collect();
            applied = batch.last().map_or(applied, |b| b.0);
            mvcc.apply_batch(&batch, false).map_err(other)?;
            rev = mvcc.current_rev();
        }
    }
    mvcc.forget_applied().map_err(other)?;
    Ok(rev)
}
