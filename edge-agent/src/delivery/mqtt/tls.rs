//! TLS for `mqtts://`: a rustls client configuration on the `ring` provider (no aws-lc C build)
//! with a custom CA or the system's CAs, and an optional client certificate for mutual TLS. Errors
//! name the config key and file; no key material ever reaches a log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("`{key}` {path}: {problem}")]
    File { key: &'static str, path: PathBuf, problem: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The TLS files of `[mqtt]`; `Debug` shows file names only.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A ready rustls configuration; `Debug` says what it was built from, not what it holds.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub files: TlsFiles,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("files", &self.files).finish_non_exhaustive()
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let file_error = |problem: String| TlsSetupError::File { key, path: path.to_owned(), problem };
    let bytes = std::fs::read(path).map_err(|e| file_error(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("holds no `BEGIN CERTIFICATE` block; expected PEM certificates".into()));
    }
    Ok(certs)
}

impl TlsClient {
    pub fn build(files: TlsFiles) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match &files.ca_file {
            Some(path) => {
                for cert in certificates("mqtt.ca_file", path)? {
                    roots.add(cert).map_err(|e| TlsSetupError::File {
                        key: "mqtt.ca_file",
                        path: path.clone(),
                        problem: format!("holds a certificate rustls cannot use as a CA: {e}"),
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(TlsSetupError::Rustls(
                        "no `mqtt.ca_file` given and no system CA certificates found (install ca-certificates)".into(),
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&files.client_cert, &files.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let chain = certificates("mqtt.client_cert", cert_path)?;
                let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsSetupError::File {
                    key: "mqtt.client_key",
                    path: key_path.clone(),
                    problem: format!("is not a readable PEM private key: {e}"),
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| TlsSetupError::File {
                    key: "mqtt.client_key",
                    path: key_path.clone(),
                    problem: format!("does not go with `mqtt.client_cert` {}: {e}", cert_path.display()),
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Self { config: Arc::new(config), files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_names_the_key_and_file() {
        let files = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let err = TlsClient::build(files).unwrap_err().to_string();
        assert!(err.contains("mqtt.ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "hello\n").unwrap();
        let files = TlsFiles { ca_file: Some(path), ..Default::default() };
        let err = TlsClient::build(files).unwrap_err().to_string();
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
    }
}
