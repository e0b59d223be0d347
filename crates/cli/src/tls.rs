//! etcdctl's client TLS: `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`,
//! `--insecure-transport`. An `https://` endpoint, or any of the certificate flags, means TLS
//! (trusting `--cacert`). The connection itself is `ballast_net::tls::connect`.

use std::path::Path;

use ballast_net::tls::{TlsError, Trust};
use rustls::ClientConfig;

/// The TLS flags of a ballastctl invocation.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub cacert: String,
    pub cert: String,
    pub key: String,
    pub skip_verify: bool,
    /// `--insecure-transport=false` dials plain endpoints with TLS too.
    pub insecure_transport: bool,
}

impl ClientTls {
    /// Whether plain endpoints (`host:port`) are dialled with TLS.
    pub fn configured(&self) -> bool {
        !self.cacert.is_empty()
            || !self.cert.is_empty()
            || !self.key.is_empty()
            || self.skip_verify
            || !self.insecure_transport
    }
}

/// The rustls client configuration the flags describe.
pub fn client_config(t: &ClientTls) -> Result<ClientConfig, TlsError> {
    let trust = if t.skip_verify {
        Trust::Anyone
    } else {
        Trust::Roots((!t.cacert.is_empty()).then(|| Path::new(&t.cacert)))
    };
    let identity =
        (!t.cert.is_empty() && !t.key.is_empty()).then(|| (Path::new(&t.cert), Path::new(&t.key)));
    ballast_net::tls::client_config(trust, identity)
}
