//! `wss://` served natively: the rustls acceptor built at start-up from `EXAI_WS_TLS_CERT` and
//! `EXAI_WS_TLS_KEY` (PEM files). The handshake itself runs in the accept loop (`server`),
//! under the HTTP header timeout, after the connection has taken its slot.

use std::sync::Arc;

use exai_shared::config::TlsFiles;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::DaemonError;

/// Reads the certificate chain and key and builds the acceptor (TLS 1.2 and 1.3, ALPN
/// `http/1.1`). Any problem is an error naming the variable and the file.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, DaemonError> {
    let bad = |var: &'static str, path: &std::path::Path, what: String| DaemonError::Tls {
        var,
        message: format!("{}: {what}", path.display()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("EXAI_WS_TLS_CERT", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("EXAI_WS_TLS_CERT", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "EXAI_WS_TLS_CERT",
            &files.cert,
            "no PEM certificate in the file".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("EXAI_WS_TLS_KEY", &files.key, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("EXAI_WS_TLS_CERT", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("EXAI_WS_TLS_KEY", &files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
