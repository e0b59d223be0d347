//! Ballast's own `backup list` and `snapshot restore --backup-url`: the scheduled backups in a
//! directory or an S3-compatible bucket, found by their manifests; credentials from the
//! standard AWS places, as the server takes them.

use std::path::{Path, PathBuf};

use ballast_backup::catalog::{self, Catalog};
use ballast_backup::{Location, Manifest, S3Settings, SnapshotName, Store};

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
            print_list(p, &c, &rows);
            Ok(())
        }
    }
}

fn print_list(p: &Printer, c: &Catalog, ms: &[Manifest]) {
    match p.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "snapshots": ms,
                "incomplete": c.incomplete.iter().map(SnapshotName::db).collect::<Vec<_>>(),
            })
        ),
        Format::Table => table(
            &[
                "SNAPSHOT",
                "REVISION",
                "HASH",
                "TOTAL KEYS",
                "SIZE",
                "CREATED",
                "MEMBER",
            ],
            &ms.iter()
                .map(|m| {
                    vec![
                        m.snapshot.clone(),
                        m.revision.to_string(),
                        format!("{:x}", m.hash),
                        m.total_keys.to_string(),
                        human_bytes(m.size),
                        m.created.clone(),
                        m.member_id.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        Format::Simple | Format::Fields => {
            for m in ms {
                println!(
                    "{}, {}, {:x}, {}, {}, {}, {}",
                    m.snapshot,
                    m.revision,
                    m.hash,
                    m.total_keys,
                    human_bytes(m.size),
                    m.created,
                    m.member_id
                );
            }
        }
    }
}

/// Downloads the newest complete backup at or below `to_revision` (the newest of all if
/// `None`) into a new file beside `near`, checks it against its manifest, and returns its
/// path and manifest. Without an archive a snapshot is the only state there is: a revision
/// between snapshots is refused, never approximated.
pub async fn fetch_for_restore(
    f: &StoreFlags,
    to_revision: Option<i64>,
    near: &Path,
) -> Result<(PathBuf, Manifest), Failure> {
    let store = f.open()?;
    let c = catalog::catalog(&store).await.map_err(other)?;
    let Some(n) = c.newest_at_or_below(to_revision) else {
        return Err(Failure::Other(match to_revision {
            Some(r) => format!("no backup at or below revision {r} in {store}"),
            None => format!("no backup in {store}"),
        }));
    };
    if let Some(r) = to_revision.filter(|r| *r != n.revision) {
        return Err(Failure::Other(format!(
            "no backup at revision {r} in {store}: the newest below it is at revision {}, and there is no archive to replay from it",
            n.revision
        )));
    }
    let m = catalog::read_manifest(&store, &n).await.map_err(other)?;
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
    Ok((tmp, m))
}
