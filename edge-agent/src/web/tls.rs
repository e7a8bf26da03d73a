//! Optional HTTPS for the page (rustls with the ring provider): the certificate from config, or a
//! self-signed one made on first start (rcgen) and kept in `state_dir/web-tls/` so browsers see
//! the same one after a restart. Handshakes run in their own tasks so a slow client holds up nobody.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::config::WebConfig;
use crate::base::write_file::write_atomically_with_mode;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("web page HTTPS: cannot read {what} {path} (config `web.{key}`): {message}")]
    Read { what: &'static str, key: &'static str, path: PathBuf, message: String },
    #[error("web page HTTPS: cannot make a self-signed certificate in {path}: {message}")]
    SelfSigned { path: PathBuf, message: String },
    #[error("web page HTTPS: certificate and key do not fit together: {0}")]
    Config(String),
}

/// Where the self-signed certificate lives.
pub fn self_signed_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("web-tls")
}

/// The rustls server configuration for `[web]`: configured files, or the kept self-signed pair.
pub fn server_config(web: &WebConfig, state_dir: &Path, device_id: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&web.tls_cert, &web.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => ensure_self_signed(&self_signed_dir(state_dir), web, device_id)?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what: "certificate",
            key: "tls_cert",
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Read {
            what: "certificate",
            key: "tls_cert",
            path: cert_path,
            message: "no PEM certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Read {
        what: "private key",
        key: "tls_key",
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let fingerprint = hex::encode(Sha256::digest(certs[0].as_ref()));
    tracing::info!(certificate = %cert_path.display(), sha256 = %fingerprint, "web page HTTPS certificate");
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Makes `cert.pem` and `key.pem` in `dir` unless both are there already.
fn ensure_self_signed(dir: &Path, web: &WebConfig, device_id: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let fail = |message: String| TlsError::SelfSigned { path: dir.to_owned(), message };
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string(), device_id.to_string()];
    if let Some(address) = web.listen_address().filter(|a| !a.ip().is_unspecified()) {
        names.push(address.ip().to_string());
    }
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("edge-agent {device_id}"));
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
    write_atomically_with_mode(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
    write_atomically_with_mode(&cert_path, cert.pem().as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    tracing::info!(folder = %dir.display(), "made a self-signed certificate for the web page");
    Ok((cert_path, key_path))
}

/// A listener that hands axum connections whose TLS handshake has completed.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!("web page: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "web page: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "web page: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local_addr, ready, acceptor_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task only ends when aborted, i.e. when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let state = tempfile::tempdir().unwrap();
        let web = WebConfig { https: true, ..WebConfig::default() };
        server_config(&web, state.path(), "box-1").unwrap();
        let dir = self_signed_dir(state.path());
        let first = std::fs::read(dir.join("cert.pem")).unwrap();
        server_config(&web, state.path(), "box-1").unwrap();
        assert_eq!(std::fs::read(dir.join("cert.pem")).unwrap(), first, "the kept certificate is reused");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private to its owner: {mode:o}");
    }

    #[test]
    fn a_missing_certificate_file_is_named_with_its_key() {
        let state = tempfile::tempdir().unwrap();
        let web = WebConfig {
            https: true,
            tls_cert: Some(state.path().join("nope.pem")),
            tls_key: Some(state.path().join("nope.key")),
            ..WebConfig::default()
        };
        let err = server_config(&web, state.path(), "box-1").unwrap_err().to_string();
        assert!(err.contains("nope.pem") && err.contains("web.tls_cert"), "{err}");
    }
}
