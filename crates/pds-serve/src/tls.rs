//! TLS for the listeners (rustls with the ring provider).
//!
//! A certificate that is configured but cannot be read, parsed or matched
//! with its key stops the server: there is no fallback to plaintext.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ServeError;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| {
        ServeError::Tls(format!(
            "cannot read the {what} {}: {e}; set [serve] tls_cert and tls_key in config.toml, run `pds tls self-signed` for a local test certificate, or pass --insecure-local",
            path.display()
        ))
    })
}

/// Loads a certificate chain and key into a server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let cert_pem = read(cert, "TLS certificate")?;
    let key_pem = read(key, "TLS private key")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ServeError::Tls(format!(
                "{}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ServeError::Tls(format!("{}: not a PEM private key: {e}", key.display())))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| {
                ServeError::Tls(format!(
                    "{} and {} do not make a usable certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
    Ok(Arc::new(config))
}

/// An acceptor with the given ALPN protocols.
pub fn acceptor(config: Arc<ServerConfig>, alpn: &[Vec<u8>]) -> tokio_rustls::TlsAcceptor {
    let mut c = (*config).clone();
    c.alpn_protocols = alpn.to_vec();
    tokio_rustls::TlsAcceptor::from(Arc::new(c))
}

/// The same files as a tonic identity (Flight SQL).
pub fn identity(cert: &Path, key: &Path) -> Result<tonic::transport::Identity, ServeError> {
    // Checked by `load` first so that errors read the same.
    load(cert, key)?;
    Ok(tonic::transport::Identity::from_pem(
        read(cert, "TLS certificate")?,
        read(key, "TLS private key")?,
    ))
}

/// Writes a self-signed certificate for `names` to `cert` and its key to
/// `key` (readable by its owner only), creating their directories. For
/// local testing: clients must not verify it (`sslmode=require`).
pub fn self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), ServeError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| ServeError::Tls(format!("generating a certificate: {e}")))?;
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ServeError::Tls(format!("creating {}: {e}", dir.display())))?;
        }
    }
    std::fs::write(cert, ck.cert.pem())
        .map_err(|e| ServeError::Tls(format!("writing {}: {e}", cert.display())))?;
    pds_keys::write_private(key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| ServeError::Tls(format!("writing the key: {e}")))
}
