//! Where Ballast's backups live and how they are named: a local directory (`file://`) or an
//! S3-compatible bucket (`s3://`), verified snapshot objects with a manifest written last, and
//! retention by count and age. The server's backup task and `ballastctl backup` and
//! `snapshot restore --backup-url` share it.

pub mod archive;
pub mod catalog;
pub mod location;
pub mod store;

pub use catalog::{Manifest, SnapshotName};
pub use location::{Addressing, Location, S3Settings};
pub use store::Store;

/// Why reaching the backup store failed. Remote errors keep the store's own words.
#[derive(Debug, thiserror::Error)]
pub enum BackupStoreError {
    #[error("invalid backup URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(#[from] opendal::Error),
    #[error("reading the CA bundle: {0}")]
    Ca(String),
    #[error("invalid STS endpoint (AWS_ENDPOINT_URL_STS or AWS_ENDPOINT_URL) {0}")]
    Endpoint(String),
    #[error("{name}: {why}")]
    Object { name: String, why: String },
}

impl BackupStoreError {
    /// The object (or file) is not there: deleted between a listing and the read (the leader's
    /// retention runs while anyone may list).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Remote(e) => e.kind() == opendal::ErrorKind::NotFound,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

pub type Result<T, E = BackupStoreError> = std::result::Result<T, E>;

fn io_at(path: &std::path::Path) -> impl Fn(std::io::Error) -> BackupStoreError + '_ {
    move |source| BackupStoreError::Io {
        path: path.display().to_string(),
        source,
    }
}
