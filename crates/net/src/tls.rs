//! The client side of TLS to a member's client port, with rustls (ring provider): whom to
//! trust, which identity to present, and a tonic channel over it. ballastctl and members
//! dialling members (leader forwarding, corruption checks) share it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Roots(ca) => {
            let mut roots = RootCertStore::empty();
            if let Some(ca) = ca {
                for c in read_certs(ca)? {
                    roots.add(c)?;
                }
            }
            builder.with_root_certificates(roots)
        }
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify::new(provider))),
    };
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
