//! etcdctl's client TLS: `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`,
//! `--insecure-transport`. An `https://` endpoint, or any of the certificate flags, means TLS
//! (trusting `--cacert`). The connection itself is `ballast_server::tls::connect`.

use std::path::Path;
use std::sync::Arc;

use ballast_server::tls::SkipVerify;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The TLS flags of a ballastctl invocation.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub cacert: String,
    pub cert: String,
    pub key: String,
    pub skip_verify: bool,
}

impl ClientTls {
    /// Whether plain endpoints (`host:port`) are dialled with TLS.
    pub fn configured(&self) -> bool {
        !self.cacert.is_empty() || !self.cert.is_empty() || !self.key.is_empty() || self.skip_verify
    }
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("open {path}: {e}"))
}

/// The rustls client configuration the flags describe.
pub fn client_config(t: &ClientTls) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if t.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify::new(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if !t.cacert.is_empty() {
            for c in certs(&t.cacert)? {
                roots.add(c).map_err(|e| e.to_string())?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut cfg = if !t.cert.is_empty() && !t.key.is_empty() {
        let key = PrivateKeyDer::from_pem_file(Path::new(&t.key))
            .map_err(|e| format!("open {}: {e}", t.key))?;
        builder
            .with_client_auth_cert(certs(&t.cert)?, key)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
