//! TLS on the client port, with rustls (ring provider): `--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, `--client-crl-file`, `--auto-tls`,
//! `--cipher-suites`, `--tls-min-version`, `--tls-max-version`.
//!
//! Certificates are read again whenever one of the files changes (checked on every handshake,
//! as etcd reads them per handshake), so rotation needs no restart. Handshakes run in their own
//! tasks under a deadline: a client that stalls its handshake delays nobody else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ballast_net::listen::Accept;
pub use ballast_net::tls::TlsError;
use ballast_net::tls::{
    client_config_allowing, host_port, read_certs, Allowed, ClientVerifier, RootAsLeaf, Trust,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::conn::authority::FixAuthority;
use crate::conn::coalesce::Coalesce;

/// How long a client may take to finish its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// What the TLS flags of one port say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl: Option<PathBuf>,
    /// Go names of the allowed TLS 1.2 cipher suites (empty: rustls's defaults).
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` / `TLS1.3`; empty means no limit.
    pub min_version: String,
    pub max_version: String,
    /// Which verified client certificates are admitted (`allowed-cn`, `allowed-hostname`).
    pub allowed: Allowed,
    /// Certificate and key presented when this member dials out, if not `cert`/`key`
    /// (`--client-cert-file`, `--peer-client-cert-file` and their keys).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Go's names of TLS 1.2 suites etcd accepts but rustls does not implement (CBC, RC4, 3DES):
/// accepted with a warning and left out.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Go's names of the TLS 1.3 suites, which Go's `tls.CipherSuites()` lists and so etcd
/// accepts; like Go, the list does not change TLS 1.3, whose suites stay on.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's names for the TLS 1.2 suites rustls implements.
fn suite_by_go_name(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

fn version(v: &str) -> Result<Option<u8>, TlsError> {
    match v {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(2)),
        "TLS1.3" => Ok(Some(3)),
        other => Err(TlsError::Version(other.to_string())),
    }
}

/// Checks the flags without reading any file (for start-up validation).
pub fn validate(f: &TlsFiles) -> Result<(), TlsError> {
    version(&f.min_version)?;
    version(&f.max_version)?;
    validate_cipher_suites(&f.cipher_suites)
}

/// Every name must be one Go's TLS knows, as etcd checks `--cipher-suites` whether or not
/// any listener uses TLS.
pub fn validate_cipher_suites(names: &[String]) -> Result<(), TlsError> {
    for name in names {
        let known =
            GO_ONLY_SUITES.contains(&name.as_str()) || TLS13_SUITES.contains(&name.as_str());
        if suite_by_go_name(name).is_none() && !known {
            return Err(TlsError::Cipher(name.clone()));
        }
    }
    Ok(())
}

pub fn server_config(f: &TlsFiles) -> Result<ServerConfig, TlsError> {
    validate(f)?;
    let certs = read_certs(&f.cert)?;
    let key_shown = f.key.display().to_string();
    if !f.key.exists() {
        return Err(TlsError::Missing(key_shown));
    }
    let key = PrivateKeyDer::from_pem_file(&f.key)
        .map_err(|e| TlsError::Pem(key_shown, e.to_string()))?;
    let mut provider = rustls::crypto::ring::default_provider();
    if !f.cipher_suites.is_empty() {
        for name in &f.cipher_suites {
            if suite_by_go_name(name).is_none() && !TLS13_SUITES.contains(&name.as_str()) {
                tracing::warn!(cipher_suite = %name, "cipher suite not available with rustls; left out");
            }
        }
        let wanted: Vec<SupportedCipherSuite> = f
            .cipher_suites
            .iter()
            .filter_map(|n| suite_by_go_name(n))
            .collect();
        // Go applies the list to TLS 1.2 only; TLS 1.3's suites stay.
        provider.cipher_suites.retain(|s| {
            s.version() == &rustls::version::TLS13 || wanted.iter().any(|w| w.suite() == s.suite())
        });
    }
    let (min, max) = (
        version(&f.min_version)?.unwrap_or(2),
        version(&f.max_version)?.unwrap_or(3),
    );
    let mut versions = Vec::new();
    if min <= 2 && max >= 2 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        versions.push(&rustls::version::TLS13);
    }
    let provider = Arc::new(provider);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = if f.client_cert_auth {
        let mut roots = RootCertStore::empty();
        let cas = match &f.trusted_ca {
            Some(ca) => read_certs(ca)?,
            None => Vec::new(),
        };
        for c in &cas {
            roots.add(c.clone())?;
        }
        let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if let Some(crl) = &f.crl {
            let shown = crl.display().to_string();
            if !crl.exists() {
                return Err(TlsError::Missing(shown));
            }
            let crls = CertificateRevocationListDer::pem_file_iter(crl)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Pem(shown, e.to_string()))?;
            v = v.with_crls(crls);
        }
        let verifier = ClientVerifier::new(v.build()?, RootAsLeaf::new(&cas), f.allowed.clone());
        builder.with_client_cert_verifier(Arc::new(verifier))
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    // gRPC needs h2; curl against /health may speak HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A server configuration rebuilt whenever one of its files changes.
pub struct Reloading {
    files: TlsFiles,
    cached: Mutex<(Vec<Option<SystemTime>>, Arc<ServerConfig>)>,
}

fn stamps(f: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&f.cert),
        Some(&f.key),
        f.trusted_ca.as_ref(),
        f.crl.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

impl Reloading {
    /// Reads the files once now, so bad ones stop the member at start-up.
    pub fn new(files: TlsFiles) -> Result<Reloading, TlsError> {
        let cfg = Arc::new(server_config(&files)?);
        Ok(Reloading {
            cached: Mutex::new((stamps(&files), cfg)),
            files,
        })
    }

    /// The current configuration; if a file changed it is read again (a broken new file
    /// keeps the last good configuration and says why).
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = stamps(&self.files);
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != now {
            match server_config(&self.files) {
                Ok(cfg) => {
                    tracing::info!(cert = %self.files.cert.display(), "reloaded TLS certificates");
                    *c = (now, Arc::new(cfg));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones")
                }
            }
        }
        c.1.clone()
    }
}

/// A client connection's address and, when it presented a certificate the handshake
/// verified, that certificate's subject CN (the user name under `--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub cn: Option<String>,
}

/// Accepts connections (TCP, or a unix socket for `unixs://`) and completes TLS handshakes in
/// their own tasks; `axum::serve` takes the finished streams.
pub struct TlsListener<S = TcpStream> {
    rx: mpsc::Receiver<(FixAuthority<Coalesce<TlsStream<S>>>, ClientAddr)>,
    local: SocketAddr,
}

impl TlsListener<TcpStream> {
    pub fn new(tcp: TcpListener, tls: Arc<Reloading>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        Ok(TlsListener::spawn(tcp, local, tls))
    }
}

impl TlsListener<tokio::net::UnixStream> {
    pub fn new_unix(l: tokio::net::UnixListener, tls: Arc<Reloading>) -> Self {
        TlsListener::spawn(l, ballast_net::listen::UNIX_PEER, tls)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> TlsListener<S> {
    fn spawn<A: Accept<Stream = S>>(l: A, local: SocketAddr, tls: Arc<Reloading>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match l.next().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tx, acceptor) = (tx.clone(), TlsAcceptor::from(tls.current()));
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            // Only a certificate the handshake verified gets this far.
                            let cn = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| ballast_net::cert::subject_cn(c));
                            let _ = tx
                                .send((
                                    FixAuthority::new(Coalesce::new(s)),
                                    ClientAddr { addr, cn },
                                ))
                                .await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(remote = %addr, error = %e, "rejected connection");
                        }
                        Err(_) => tracing::warn!(remote = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> axum::serve::Listener
    for TlsListener<S>
{
    type Io = FixAuthority<Coalesce<TlsStream<S>>>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientAddr {
            addr: self.local,
            cn: None,
        })
    }
}

/// One port's TLS files: the configured ones, else (with auto TLS) a self-signed certificate
/// for the port's listen addresses kept in `dir`, else none.
pub fn port_files(
    files: Option<&TlsFiles>,
    auto: bool,
    dir: &Path,
    listen: &[SocketAddr],
    validity_years: u32,
) -> Result<Option<TlsFiles>, TlsError> {
    match (files, auto) {
        (Some(f), _) => Ok(Some(f.clone())),
        (None, true) => {
            let hosts: Vec<String> = listen.iter().map(|a| a.ip().to_string()).collect();
            auto_tls(dir, &hosts, validity_years).map(Some)
        }
        (None, false) => Ok(None),
    }
}

/// `--auto-tls`: a self-signed certificate for `hosts`, valid from now for `validity_years`
/// of 365 days as etcd makes it, kept in `dir` (made once, reused).
pub fn auto_tls(dir: &Path, hosts: &[String], validity_years: u32) -> Result<TlsFiles, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !(cert.exists() && key.exists()) {
        ballast_storage::private::create_dir_all(dir).map_err(|source| TlsError::File {
            path: dir.display().to_string(),
            source,
        })?;
        if validity_years == 0 {
            return Err(TlsError::Generate(
                "selfSignedCertValidity is invalid,it should be greater than 0".into(),
            ));
        }
        let mut names: Vec<String> = hosts.to_vec();
        names.push("localhost".into());
        let generate = || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut params = rcgen::CertificateParams::new(names)?;
            params.not_before = time::OffsetDateTime::from_unix_timestamp(now as i64)
                .map_err(|_| rcgen::Error::Time)?;
            params.not_after =
                params.not_before + time::Duration::days(365 * i64::from(validity_years));
            let key_pair = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key_pair)?;
            Ok::<_, rcgen::Error>(rcgen::CertifiedKey { cert, key_pair })
        };
        let generated = generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let write = |p: &Path, data: String| {
            use std::io::Write;
            let mut o = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .and_then(|mut f| f.write_all(data.as_bytes()).and_then(|()| f.sync_all()))
                .map_err(|source| TlsError::File {
                    path: p.display().to_string(),
                    source,
                })
        };
        write(&key, generated.key_pair.serialize_pem())?;
        write(&cert, generated.cert.pem())?;
    }
    Ok(TlsFiles {
        allowed: Allowed::Anyone,
        cert,
        key,
        ..Default::default()
    })
}

/// A lazily connected channel to another member's client URL, for the calls members make to
/// each other (forwarding to the leader, corruption checks). `https` URLs are dialled with
/// this member's own certificate as client identity, trusting `--trusted-ca-file` (with
/// `--auto-tls` and no CA, certificates are not verified, as etcd does for auto TLS).
pub fn member_channel(
    url: &str,
    tls: Option<&TlsFiles>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, TlsError> {
    if let Some((path, secure)) = ballast_net::urls::unix_socket(url) {
        let cfg = match secure {
            true => Some(Arc::new(member_client_config(tls, Allowed::Anyone)?)),
            false => None,
        };
        return ballast_net::tls::connect_unix_lazy(
            path,
            cfg,
            Duration::from_secs(2),
            Some(timeout),
        );
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy());
    };
    let (host, port) = host_port(rest).ok_or_else(|| TlsError::BadUrl(url.to_string()))?;
    let cfg = Arc::new(member_client_config(tls, Allowed::Anyone)?);
    ballast_net::tls::connect_lazy(host, port, cfg, Duration::from_secs(2), timeout)
}

/// How a member dials other members over TLS: its own certificate as client identity,
/// trusting the CA of `tls` (with none — auto TLS — certificates are not verified, as etcd
/// does for auto TLS), admitting the servers `allowed` names.
pub fn member_client_config(
    tls: Option<&TlsFiles>,
    allowed: Allowed,
) -> Result<ClientConfig, TlsError> {
    let trust = match tls.and_then(|t| t.trusted_ca.as_deref()) {
        Some(ca) => Trust::Roots(Some(ca)),
        None => Trust::Anyone,
    };
    let identity = tls.map(|t| match &t.client_identity {
        Some((cert, key)) => (cert.as_path(), key.as_path()),
        None => (t.cert.as_path(), t.key.as_path()),
    });
    client_config_allowing(trust, identity, allowed)
}
