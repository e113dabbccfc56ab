//! TLS for the API: the certificate and key from PEM files, the
//! self-signed pair `init` and `demo` make, and [`TlsListener`], an
//! `axum::serve::Listener` that hands axum only connections whose
//! handshake completed.
//!
//! Handshakes run in tasks of their own, at most [`HANDSHAKES`] at once and
//! each within [`HANDSHAKE_TIMEOUT`], so a client that opens a connection
//! and says nothing holds no one else back. Finished streams wait in a
//! queue of [`READY_QUEUE`]; when it is full, handshaking tasks wait.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// TLS handshakes in progress at most; further connections wait in the
/// kernel's backlog.
pub const HANDSHAKES: usize = 64;
/// A connection that has not completed its handshake in this long is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken and not yet taken by axum.
pub const READY_QUEUE: usize = 64;
/// How long the listener waits after a failed accept (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Why the API's TLS cannot be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the API's {what} {path}: {source}")]
    Pem { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the API's certificate {cert} and key {key} do not go together: {source}")]
    Config { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The server configuration from PEM files (ring provider, HTTP/1.1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { what: "certificate", path: cert.to_path_buf(), source })?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|source| TlsError::Config { cert: cert.to_path_buf(), key: key.to_path_buf(), source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes a self-signed certificate for `names` (host names or
/// addresses) and its key, the key owner-only, unless both exist. True
/// when it wrote them.
pub fn self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec())?;
    let write = |path: &Path, text: &str, mode: u32| {
        use std::io::Write as _;
        let _ = std::fs::remove_file(path);
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
            .map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
    };
    write(key, &made.signing_key.serialize_pem(), 0o600)?;
    write(cert, &made.cert.pem(), 0o600)?;
    Ok(true)
}

/// The names a self-signed certificate for `listen` covers: loopback, the
/// host's name, and the listen address itself.
pub fn names_for(listen: &str) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(address) = listen.parse::<SocketAddr>()
        && !address.ip().is_unspecified()
    {
        names.push(address.ip().to_string());
    }
    let host = halite_state::host::hostname();
    if !host.is_empty() {
        names.push(host);
    }
    names.sort();
    names.dedup();
    names
}

/// Connections whose TLS handshake completed, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `cancel`.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, ready) = mpsc::channel(READY_QUEUE);
        let slots = Arc::new(Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                // Never closed, so acquiring only waits.
                let slot = tokio::select! {
                    () = cancel.cancelled() => return,
                    slot = slots.clone().acquire_owned() => slot,
                };
                let Ok(slot) = slot else { return };
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "API accept failed; retrying.");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "API TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // Stopped: no connection ever comes again; axum's graceful
            // shutdown ends the serve loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
