//! One interface over a directory and a bucket: whole files in (multipart with bounded memory
//! for a bucket; fsync, rename and directory fsync for a directory), small objects, listing,
//! reading back and deleting. Objects are named relative to the location's prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use opendal::layers::RetryLayer;
use opendal::{HttpBody, HttpTransport, HttpTransporter, OperationContext, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::location::{Location, S3Settings};
use crate::{io_at, BackupStoreError, Result};

/// Bytes per part of a multipart upload. With [`PUT_CONCURRENCY`] parts in flight this bounds
/// an upload's memory, whatever the snapshot's size. S3 takes 5 MiB parts and larger.
pub const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PUT_CONCURRENCY: usize = 2;
/// Attempts for a failed request (with exponential backoff and jitter) before giving up.
pub const RETRIES: usize = 4;
/// How long connecting to the endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the endpoint may stay silent within one request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An object directly under the location's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
}

/// Where backups are written and read.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Inner,
    shown: String,
}

#[derive(Debug, Clone)]
enum Inner {
    Dir(PathBuf),
    Bucket(Operator),
}

impl Store {
    /// Opens `loc`; for a bucket, with `s3`'s endpoint, region, addressing and CA bundle and
    /// credentials from the standard chain. Nothing is sent until the first request.
    pub fn open(loc: &Location, s3: &S3Settings) -> Result<Store> {
        let inner = match loc {
            Location::Dir(p) => Inner::Dir(p.clone()),
            Location::S3 { bucket, prefix } => {
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(&s3.region);
                if let Some(ep) = &s3.endpoint {
                    b = b.endpoint(ep);
                }
                if !s3.path_style() {
                    b = b.enable_virtual_host_style();
                }
                let client = http_client(s3.ca_file.as_deref())?;
                let transport = HttpTransporter::new(Transport {
                    inner: ReqwestTransport::new(client),
                    sts: sts_base(s3.sts_endpoint.as_deref())?,
                });
                let op = Operator::new(b)?
                    .layer(RetryLayer::new().with_jitter().with_max_times(RETRIES))
                    .with_context(OperationContext::new().with_http_transport(transport));
                Inner::Bucket(op)
            }
        };
        Ok(Store {
            inner,
            shown: loc.to_string(),
        })
    }

    /// Where a file bound for this store is written first: the directory itself (so putting
    /// it is a rename), or `scratch` for a bucket.
    pub fn staging_dir(&self, scratch: &Path) -> PathBuf {
        match &self.inner {
            Inner::Dir(d) => d.clone(),
            Inner::Bucket(_) => scratch.to_path_buf(),
        }
    }

    /// Stores the file at `src` as `name`, durably, and returns its size. The object appears
    /// whole or not at all; a failed multipart upload is aborted.
    pub async fn put_file(&self, name: &str, src: &Path) -> Result<u64> {
        match &self.inner {
            Inner::Dir(d) => {
                let (d, src, name) = (d.clone(), src.to_path_buf(), name.to_string());
                blocking(move || dir_put_file(&d, &name, &src)).await
            }
            Inner::Bucket(op) => {
                let mut f = tokio::fs::File::open(src).await.map_err(io_at(src))?;
                let len = f.metadata().await.map_err(io_at(src))?.len();
                let mut w = op
                    .writer_with(name)
                    .chunk(PART_BYTES)
                    .concurrent(PUT_CONCURRENCY)
                    .await?;
                let sent = async {
                    let mut sent = 0u64;
                    loop {
                        let mut buf = Vec::with_capacity(PART_BYTES);
                        let n = (&mut f)
                            .take(PART_BYTES as u64)
                            .read_to_end(&mut buf)
                            .await
                            .map_err(io_at(src))?;
                        if n == 0 {
                            break;
                        }
                        sent += n as u64;
                        w.write(buf).await?;
                    }
                    w.close().await?;
                    Ok::<_, BackupStoreError>(sent)
                }
                .await;
                let sent = match sent {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(e);
                    }
                };
                // What the store holds now must be what was read.
                let stored = op.stat(name).await?.content_length();
                if sent != len || stored != len {
                    return Err(BackupStoreError::Object {
                        name: name.to_string(),
                        why: format!("{len} bytes to send, {sent} sent, {stored} stored"),
                    });
                }
                Ok(len)
            }
        }
    }

    /// Stores a small object whole.
    pub async fn put_small(&self, name: &str, data: Vec<u8>) -> Result<()> {
        match &self.inner {
            Inner::Dir(d) => {
                let (d, name) = split(d, name);
                blocking(move || {
                    ballast_storage::private::create_dir_all(&d).map_err(io_at(&d))?;
                    let tmp = d.join(format!(".{name}.tmp"));
                    write_synced(&tmp, &data)?;
                    dir_put_file(&d, &name, &tmp).map(|_| ())
                })
                .await
            }
            Inner::Bucket(op) => {
                op.write(name, data).await?;
                Ok(())
            }
        }
    }

    /// Objects directly under the prefix (no sub-prefixes, no hidden staging files).
    pub async fn list(&self) -> Result<Vec<Object>> {
        self.list_under("").await
    }

    /// Objects directly under `sub` (a sub-prefix such as `archive`, or "" for the prefix),
    /// named relative to it.
    pub async fn list_under(&self, sub: &str) -> Result<Vec<Object>> {
        match &self.inner {
            Inner::Dir(d) => {
                // `join("")` is the directory itself.
                let d = d.join(sub);
                blocking(move || {
                    let rd = match std::fs::read_dir(&d) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                        Err(e) => return Err(io_at(&d)(e)),
                    };
                    let mut out = Vec::new();
                    for e in rd {
                        let e = e.map_err(io_at(&d))?;
                        let md = e.metadata().map_err(io_at(&e.path()))?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        if md.is_file() && !name.starts_with('.') {
                            out.push(Object {
                                name,
                                size: md.len(),
                            });
                        }
                    }
                    Ok(out)
                })
                .await
            }
            Inner::Bucket(op) => {
                let mut out = Vec::new();
                let dir = if sub.is_empty() {
                    "/".to_string()
                } else {
                    format!("{sub}/")
                };
                for e in op.list(&dir).await? {
                    let name = e.path().trim_start_matches('/');
                    let name = name.strip_prefix(dir.as_str()).unwrap_or(name);
                    if e.metadata().is_file() && !name.is_empty() && !name.contains('/') {
                        out.push(Object {
                            name: name.to_string(),
                            size: e.metadata().content_length(),
                        });
                    }
                }
                Ok(out)
            }
        }
    }

    /// Reads a small object whole, refusing one larger than `limit` before reading it.
    pub async fn get_small(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let too_big = |size: u64| BackupStoreError::Object {
            name: name.to_string(),
            why: format!("{size} bytes, more than the {limit} expected"),
        };
        match &self.inner {
            Inner::Dir(d) => {
                let path = d.join(name);
                let size = tokio::fs::metadata(&path)
                    .await
                    .map_err(io_at(&path))?
                    .len();
                if size > limit {
                    return Err(too_big(size));
                }
                tokio::fs::read(&path).await.map_err(io_at(&path))
            }
            Inner::Bucket(op) => {
                let size = op.stat(name).await?.content_length();
                if size > limit {
                    return Err(too_big(size));
                }
                let data = op.read_with(name).range(0..size).await?.to_vec();
                Ok(data)
            }
        }
    }

    /// Copies object `name` of `size` bytes into a new file at `dest` (owner-only, fsynced),
    /// refusing an object of another size.
    pub async fn get_file(&self, name: &str, size: u64, dest: &Path) -> Result<()> {
        let mismatch = |got: u64| BackupStoreError::Object {
            name: name.to_string(),
            why: format!("{got} bytes where the manifest says {size}"),
        };
        let file = ballast_storage::private::create_file(dest).map_err(io_at(dest))?;
        let mut out = tokio::fs::File::from_std(file);
        let mut got = 0u64;
        match &self.inner {
            Inner::Dir(d) => {
                let path = d.join(name);
                let mut f = tokio::fs::File::open(&path).await.map_err(io_at(&path))?;
                got = tokio::io::copy(&mut (&mut f).take(size + 1), &mut out)
                    .await
                    .map_err(io_at(dest))?;
            }
            Inner::Bucket(op) => {
                let stored = op.stat(name).await?.content_length();
                if stored != size {
                    return Err(mismatch(stored));
                }
                let mut chunks = op
                    .reader_with(name)
                    .chunk(PART_BYTES)
                    .await?
                    .into_bytes_stream(0..size)
                    .await?;
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(io_at(dest))?;
                    got += chunk.len() as u64;
                    if got > size {
                        break;
                    }
                    out.write_all(&chunk).await.map_err(io_at(dest))?;
                }
            }
        }
        if got != size {
            return Err(mismatch(got));
        }
        out.sync_all().await.map_err(io_at(dest))
    }

    /// Deletes an object; one already gone is no error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        match &self.inner {
            Inner::Dir(d) => {
                let path = d.join(name);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_at(&path)(e)),
                }
            }
            Inner::Bucket(op) => Ok(op.delete(name).await?),
        }
    }

    /// Makes deletions in a directory durable (a bucket's are on return).
    pub async fn sync(&self) -> Result<()> {
        self.sync_under("").await
    }

    /// [`Store::sync`] for a sub-prefix.
    pub async fn sync_under(&self, sub: &str) -> Result<()> {
        match &self.inner {
            Inner::Dir(d) => {
                // `join("")` is the directory itself.
                let d = d.join(sub);
                blocking(move || ballast_storage::wal::sync_dir(&d).map_err(io_at(&d))).await
            }
            Inner::Bucket(_) => Ok(()),
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A directory store's directory and file name for an object name that may hold `/`.
fn split(d: &Path, name: &str) -> (PathBuf, String) {
    match name.rsplit_once('/') {
        Some((sub, file)) => (d.join(sub), file.to_string()),
        None => (d.to_path_buf(), name.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupStoreError::Io {
            path: "backup task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = ballast_storage::private::create_file(path).map_err(io_at(path))?;
    f.write_all(data).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

/// Puts `src` into directory `d` as `name`: a rename when it is already there, else a copy
/// beside it first. The file and the directory are fsynced before this returns.
fn dir_put_file(d: &Path, name: &str, src: &Path) -> Result<u64> {
    ballast_storage::private::create_dir_all(d).map_err(io_at(d))?;
    let dest = d.join(name);
    let from = if src.parent() == Some(d) {
        std::fs::File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(io_at(src))?;
        src.to_path_buf()
    } else {
        let tmp = d.join(format!(".{name}.tmp"));
        let copied = (|| {
            let mut out = ballast_storage::private::create_file(&tmp)?;
            std::io::copy(&mut std::fs::File::open(src)?, &mut out)?;
            out.sync_all()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_at(&tmp)(e));
        }
        tmp
    };
    std::fs::rename(&from, &dest).map_err(io_at(&dest))?;
    ballast_storage::wal::sync_dir(d).map_err(io_at(d))?;
    Ok(std::fs::metadata(&dest).map_err(io_at(&dest))?.len())
}

/// OpenDAL's reqwest transport, sending unsigned requests for AWS STS (web identity's
/// `AssumeRoleWithWebIdentity`; the token is the credential) to the configured STS endpoint
/// instead. A signed request is left as it is: its signature covers the host.
struct Transport {
    inner: ReqwestTransport,
    sts: Option<http::Uri>,
}

impl HttpTransport for Transport {
    async fn fetch(
        &self,
        mut req: http::Request<opendal::Buffer>,
    ) -> opendal::Result<http::Response<HttpBody>> {
        if let Some(base) = &self.sts {
            if !req.headers().contains_key(http::header::AUTHORIZATION) {
                if let Some(uri) = sts_redirect(req.uri(), base) {
                    *req.uri_mut() = uri;
                }
            }
        }
        self.inner.fetch(req).await
    }
}

/// The STS endpoint's URI: an absolute http or https URL.
fn sts_base(endpoint: Option<&str>) -> Result<Option<http::Uri>> {
    let Some(e) = endpoint else {
        return Ok(None);
    };
    let uri: http::Uri = e
        .parse()
        .map_err(|err| BackupStoreError::Endpoint(format!("{e}: {err}")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(Some(uri)),
        _ => Err(BackupStoreError::Endpoint(format!(
            "{e}: not an http or https URL"
        ))),
    }
}

/// `uri` sent to `base` instead, if it is one of AWS STS's hosts (`sts.amazonaws.com`,
/// `sts.<region>.amazonaws.com`, and China's).
fn sts_redirect(uri: &http::Uri, base: &http::Uri) -> Option<http::Uri> {
    let host = uri.host()?;
    let rest = host.strip_prefix("sts.")?;
    let aws = rest == "amazonaws.com"
        || rest == "amazonaws.com.cn"
        || rest
            .split_once('.')
            .is_some_and(|(_, d)| d == "amazonaws.com" || d == "amazonaws.com.cn");
    if !aws {
        return None;
    }
    let prefix = base.path().trim_end_matches('/');
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder()
        .scheme(base.scheme_str()?)
        .authority(base.authority()?.as_str())
        .path_and_query(format!("{prefix}{pq}"))
        .build()
        .ok()
}

/// An HTTP client that trusts the system's roots plus `ca`, over rustls with ring (the
/// provider the rest of Ballast uses).
fn http_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let ca_err = |e: &dyn std::fmt::Display| BackupStoreError::Ca(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as every TLS client does.
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = ca {
        for c in ballast_net::tls::read_certs(p).map_err(|e| ca_err(&e))? {
            roots.add(c).map_err(|e| ca_err(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| ca_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aws_sts_hosts_go_to_the_sts_endpoint() {
        let base = sts_base(Some("https://minio.internal:9000/sts/"))
            .expect("valid")
            .expect("some");
        let to = |u: &str| sts_redirect(&u.parse().expect("uri"), &base).map(|u| u.to_string());
        assert_eq!(
            to("https://sts.amazonaws.com/").as_deref(),
            Some("https://minio.internal:9000/sts/")
        );
        assert_eq!(
            to("https://sts.eu-west-1.amazonaws.com/?Action=X").as_deref(),
            Some("https://minio.internal:9000/sts/?Action=X")
        );
        assert_eq!(
            to("https://sts.cn-north-1.amazonaws.com.cn/").as_deref(),
            Some("https://minio.internal:9000/sts/")
        );
        for other in [
            "https://bucket.s3.amazonaws.com/key",
            "https://sts.example.com/",
            "https://sts.a.b.amazonaws.com/",
            "http://169.254.169.254/latest/api/token",
        ] {
            assert_eq!(to(other), None, "{other}");
        }
        assert!(sts_base(None).expect("none").is_none());
        for bad in ["minio:9000", "ftp://x/", "https://"] {
            assert!(sts_base(Some(bad)).is_err(), "{bad}");
        }
    }
}
