//! The client side of TLS to a member's client port, with rustls (ring provider): whom to
//! trust, which identity to present, and a tonic channel over it. ballastctl and members
//! dialling members (leader forwarding, corruption checks) share it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("open {0}: no such file or directory")]
    Missing(String),
    #[error("{0}: {1}")]
    Pem(String, String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("open {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("{0}")]
    Dial(#[from] tonic::transport::Error),
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad member URL {0:?}")]
    BadUrl(String),
    /// Making `--auto-tls`'s certificate failed.
    #[error("tls: {0}")]
    Generate(String),
    #[error("unexpected TLS cipher suite {0:?}")]
    Cipher(String),
    #[error("unexpected TLS version {0:?} (supported: TLS1.2, TLS1.3)")]
    Version(String),
}

/// Every certificate in a PEM file; a missing file or one without certificates is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(TlsError::Missing(shown));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem(shown.clone(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(shown, "no certificate found".into()));
    }
    Ok(certs)
}

/// Accepts any server certificate (`--insecure-skip-tls-verify`), still checking signatures.
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl SkipVerify {
    fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> SkipVerify {
        SkipVerify(provider)
    }
}

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A trusted CA certificate presented as the leaf itself: a self-signed certificate that is at
/// once CA, server and client certificate. Go's verifier accepts it; webpki refuses it as
/// `CaUsedAsEndEntity`. The wrappers below accept exactly that case: a leaf byte-identical to a
/// configured root, without intermediates, inside its validity period; everything else is
/// webpki's verdict.
#[derive(Debug, Clone)]
pub struct RootAsLeaf(Vec<CertificateDer<'static>>);

impl RootAsLeaf {
    pub fn new(roots: &[CertificateDer<'static>]) -> RootAsLeaf {
        RootAsLeaf(roots.to_vec())
    }

    fn admits(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        intermediates.is_empty()
            && self.0.iter().any(|r| r.as_ref() == leaf.as_ref())
            && crate::cert::validity(leaf).is_some_and(|(from, to)| from <= now && now <= to)
    }
}

/// Which verified certificates a port admits besides trusting their CA: etcd's `allowed-cn`
/// (subject CN in the list) and `allowed-hostname` (a SAN matching one of the names, as Go's
/// `VerifyHostname`), which etcd makes mutually exclusive. A peer port applies it to peers
/// dialling in and to the peers it dials, as etcd's `TLSInfo` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Allowed {
    #[default]
    Anyone,
    Cns(Vec<String>),
    Hostnames(Vec<String>),
}

impl Allowed {
    /// etcd's lists: both given is its start-up error, word for word.
    pub fn from_lists(cns: Vec<String>, hostnames: Vec<String>) -> Result<Allowed, String> {
        match (cns.is_empty(), hostnames.is_empty()) {
            (true, true) => Ok(Allowed::Anyone),
            (false, true) => Ok(Allowed::Cns(cns)),
            (true, false) => Ok(Allowed::Hostnames(hostnames)),
            (false, false) => Err(format!(
                "AllowedCNs and AllowedHostnames are mutually exclusive (cns={}, hostnames={})",
                go_quoted(&cns),
                go_quoted(&hostnames)
            )),
        }
    }

    fn admits(&self, leaf: &CertificateDer<'_>) -> bool {
        match self {
            Allowed::Anyone => true,
            Allowed::Cns(cns) => crate::cert::subject_cn(leaf).is_some_and(|cn| cns.contains(&cn)),
            Allowed::Hostnames(names) => ParsedCertificate::try_from(leaf).is_ok_and(|cert| {
                names.iter().any(|n| {
                    ServerName::try_from(n.as_str())
                        .is_ok_and(|name| verify_server_name(&cert, &name).is_ok())
                })
            }),
        }
    }

    /// etcd's refusal of a verified certificate the list does not name.
    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.admits(leaf) {
            return Ok(());
        }
        Err(rustls::Error::General(
            "client certificate authentication failed".into(),
        ))
    }
}

/// A string list as Go's `%q` prints a `[]string`.
fn go_quoted(l: &[String]) -> String {
    let q: Vec<String> = l.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(" "))
}

/// webpki's server verification, plus a trusted root presented as the server's own
/// certificate (its names are still checked against the one dialled), then `Allowed`.
#[derive(Debug)]
struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    root_as_leaf: RootAsLeaf,
    allowed: Allowed,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match self
            .webpki
            .verify_server_cert(leaf, intermediates, name, ocsp, now)
        {
            Err(_) if self.root_as_leaf.admits(leaf, intermediates, now) => {
                verify_server_name(&ParsedCertificate::try_from(leaf)?, name)?;
                ServerCertVerified::assertion()
            }
            other => other?,
        };
        self.allowed.check(leaf)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// webpki's client-certificate verification (roots, CRLs), plus a trusted root presented as
/// the client's own certificate, then `Allowed`.
#[derive(Debug)]
pub struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    root_as_leaf: RootAsLeaf,
    allowed: Allowed,
}

impl ClientVerifier {
    pub fn new(
        webpki: Arc<dyn ClientCertVerifier>,
        root_as_leaf: RootAsLeaf,
        allowed: Allowed,
    ) -> ClientVerifier {
        ClientVerifier {
            webpki,
            root_as_leaf,
            allowed,
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self.webpki.verify_client_cert(leaf, intermediates, now) {
            Err(_) if self.root_as_leaf.admits(leaf, intermediates, now) => {
                ClientCertVerified::assertion()
            }
            other => other?,
        };
        self.allowed.check(leaf)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `host` and `port` of a scheme-less `host:port` (IPv6 hosts in brackets), for dialling.
pub fn host_port(hostport: &str) -> Option<(&str, u16)> {
    let (h, p) = hostport.trim_end_matches('/').rsplit_once(':')?;
    Some((h.trim_matches(|c| c == '[' || c == ']'), p.parse().ok()?))
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type Dialling = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TlsIo>> + Send>>;

/// A tonic connector that dials `host:port` and completes a TLS handshake with `cfg`.
pub fn connector(
    host: &str,
    port: u16,
    cfg: Arc<ClientConfig>,
) -> Result<tower::util::ServiceFn<impl Fn(http::Uri) -> Dialling + Clone>, TlsError> {
    let name = ServerName::try_from(host.to_string())?;
    let addr = format!("{host}:{port}");
    Ok(tower::service_fn(move |_: http::Uri| -> Dialling {
        let (cfg, name, addr) = (cfg.clone(), name.clone(), addr.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }))
}

/// A gRPC channel to `host:port` over TLS.
pub async fn connect(
    host: &str,
    port: u16,
    cfg: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, TlsError> {
    let dial = connector(host, port, cfg)?;
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))?
            .connect_timeout(timeout)
            .connect_with_connector(dial)
            .await?,
    )
}

/// A lazily connected gRPC channel to `host:port` over TLS, for calls that should not wait
/// for the connection when made.
pub fn connect_lazy(
    host: &str,
    port: u16,
    cfg: Arc<ClientConfig>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<tonic::transport::Channel, TlsError> {
    let dial = connector(host, port, cfg)?;
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))?
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .connect_with_connector_lazy(dial),
    )
}

/// A connection a client dials: TCP or a unix socket, with or without TLS.
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}

type UnixDialling = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<hyper_util::rt::TokioIo<Box<dyn ClientIo>>>,
            > + Send,
    >,
>;

/// A gRPC channel to a member's unix socket (`unix://` and `unixs://` URLs, see
/// `urls::unix_socket`), over TLS when `tls` is given. Lazy: it connects on first use.
pub fn connect_unix_lazy(
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
) -> Result<tonic::transport::Channel, TlsError> {
    let path = path.to_string();
    let name = ServerName::try_from(crate::urls::unix_server_name(&path).to_string())?;
    let dial = tower::service_fn(move |_: http::Uri| -> UnixDialling {
        let (path, name, tls) = (path.clone(), name.clone(), tls.clone());
        Box::pin(async move {
            let s = tokio::net::UnixStream::connect(&path).await?;
            let io: Box<dyn ClientIo> = match tls {
                None => Box::new(s),
                Some(cfg) => Box::new(
                    tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, s)
                        .await?,
                ),
            };
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    });
    // The URI only names the :authority; the connector picks the socket.
    let mut ep = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(connect_timeout);
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    Ok(ep.connect_with_connector_lazy(dial))
}

/// Whose certificates a TLS client accepts.
pub enum Trust<'a> {
    /// Those issued by the CA bundle at this path (none at all without one).
    Roots(Option<&'a Path>),
    /// Any (`--insecure-skip-tls-verify`, auto TLS): signatures are still checked.
    Anyone,
}

/// A rustls client configuration for gRPC over TLS (ALPN h2), presenting `identity`
/// (certificate and key files) if given. Shared by ballastctl and members dialling members.
pub fn client_config(
    trust: Trust<'_>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    client_config_allowing(trust, identity, Allowed::Anyone)
}

/// `client_config` admitting only servers whose certificate `allowed` names (members dialling
/// peers under `--peer-cert-allowed-cn`/`-hostname`).
pub fn client_config_allowing(
    trust: Trust<'_>,
    identity: Option<(&Path, &Path)>,
    allowed: Allowed,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Roots(ca) => {
            let mut roots = RootCertStore::empty();
            let certs = match ca {
                Some(ca) => read_certs(ca)?,
                None => Vec::new(),
            };
            for c in &certs {
                roots.add(c.clone())?;
            }
            if certs.is_empty() {
                // webpki's builder refuses an empty store; nothing can verify either way.
                return finish(builder.with_root_certificates(roots), identity);
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                    webpki,
                    root_as_leaf: RootAsLeaf::new(&certs),
                    allowed,
                }))
        }
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify::new(provider))),
    };
    finish(builder, identity)
}

/// The client configuration from its verifier on: the identity presented, ALPN h2.
fn finish(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let mut cfg = match identity {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
                path: key.display().to_string(),
                source,
            })?;
            builder.with_client_auth_cert(read_certs(cert)?, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
