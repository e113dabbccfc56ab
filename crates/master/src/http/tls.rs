//! TLS for the API: the certificate and key from PEM files, the
//! self-signed pair `init` and `demo` make, and [`TlsListener`], an
//! `axum::serve::Listener` that hands axum only connections whose
//! handshake completed.
//!
//! Handshakes run in tasks of their own, at most [`HANDSHAKES`] at once and
//! each within [`HANDSHAKE_TIMEOUT`], so a client that opens a connection
//! and says nothing holds no one else back. Finished streams wait in a
//! queue of [`READY_QUEUE`]; when it is full, handshaking tasks wait.
//!
//! With `api.client_ca` the server asks each client for a certificate and
//! checks it against that authority (`WebPkiClientVerifier`); a
//! certificate that does not verify fails the handshake, and so does none
//! at all under `client_certs: required`. What a verified certificate
//! names reaches the handlers as [`Peer`], per connection.

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

use crate::config::ClientCerts;

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
    #[error("master.yaml: api.client_ca: {problem}")]
    ClientCa { problem: String },
    #[error("master.yaml: api.client_ca: cannot check client certificates against {path}: {source}")]
    Verifier { path: PathBuf, source: rustls::server::VerifierBuilderError },
}

/// How clients are asked for certificates (`api.client_ca`,
/// `api.client_certs`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAuth<'a> {
    /// The authority's PEM file.
    pub ca: &'a Path,
    pub certs: ClientCerts,
}

/// The server configuration from PEM files (ring provider, HTTP/1.1),
/// asking for no client certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_for(cert, key, None)
}

/// The server configuration from PEM files, asking clients for
/// certificates signed by `clients.ca` when given.
pub fn server_config_for(
    cert: &Path,
    key: &Path,
    clients: Option<ClientAuth<'_>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { what: "certificate", path: cert.to_path_buf(), source })?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match clients {
        None => None,
        Some(clients) => Some(client_verifier(clients, provider.clone())?),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            let builder = match verifier {
                None => builder.with_no_client_auth(),
                Some(verifier) => builder.with_client_cert_verifier(verifier),
            };
            builder.with_single_cert(chain, private)
        })
        .map_err(|source| TlsError::Config { cert: cert.to_path_buf(), key: key.to_path_buf(), source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of client certificates against `clients.ca`; one that
/// lets a client without a certificate through unless `required`.
fn client_verifier(
    clients: ClientAuth<'_>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::config::read_ca(clients.ca).map_err(|problem| TlsError::ClientCa { problem })? {
        roots.add(cert).map_err(|error| TlsError::ClientCa {
            problem: format!("{} holds a certificate that is not an authority's: {error}", clients.ca.display()),
        })?;
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match clients.certs {
        ClientCerts::Optional => builder.allow_unauthenticated(),
        ClientCerts::Required => builder,
    };
    builder.build().map_err(|source| TlsError::Verifier { path: clients.ca.to_path_buf(), source })
}

/// Who is at the other end of a connection: its address and the names of
/// the client certificate it presented, which the verifier checked.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// `None` when the client sent no certificate (or none was asked for).
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// The names a verified client certificate carries, which
/// `access.certificates` maps to roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's common name (CN).
    pub common_name: Option<String>,
    /// The subject alternative names of type DNS.
    pub dns_names: Vec<String>,
}

impl ClientCertificate {
    /// Reads the names of a DER certificate; one that cannot be parsed
    /// (the verifier accepted it, so this does not happen) has none, and
    /// maps to no role.
    pub fn of(der: &[u8]) -> ClientCertificate {
        use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
        use x509_cert::der::{Decode, Tagged};
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        /// id-at-commonName (RFC 4519).
        const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
        let Ok(cert) = x509_cert::Certificate::from_der(der) else {
            return ClientCertificate::default();
        };
        let common_name = cert
            .tbs_certificate
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|attribute| attribute.oid == COMMON_NAME)
            .and_then(|attribute| match attribute.value.tag() {
                x509_cert::der::Tag::Utf8String => {
                    Utf8StringRef::try_from(&attribute.value).ok().map(|name| name.as_str().to_owned())
                }
                x509_cert::der::Tag::PrintableString => {
                    PrintableStringRef::try_from(&attribute.value).ok().map(|name| name.as_str().to_owned())
                }
                _ => None,
            });
        let dns_names = match cert.tbs_certificate.get::<SubjectAltName>() {
            Ok(Some((_, names))) => names
                .0
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DnsName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        ClientCertificate { common_name, dns_names }
    }

    /// Its names, the common name first, for the certificate → role map.
    pub fn names(&self) -> Vec<&str> {
        self.common_name.iter().chain(&self.dns_names).map(String::as_str).collect()
    }
}

impl<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'a, TlsListener>) -> Peer {
        let certificate = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Arc::new(ClientCertificate::of(leaf.as_ref())));
        Peer { address: *stream.remote_addr(), certificate }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client certificate's names: the subject's CN first, then its DNS
    /// names; none from bytes that are not a certificate.
    #[test]
    fn a_client_certificate_is_named_by_its_cn_then_its_dns_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ops.example.org".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "ops-laptop");
        let cert = params.self_signed(&key).unwrap();
        let named = ClientCertificate::of(cert.der());
        assert_eq!(named.names(), ["ops-laptop", "ops.example.org"]);
        let mut params = rcgen::CertificateParams::new(vec!["only-dns".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let unnamed_cn = ClientCertificate::of(params.self_signed(&key).unwrap().der());
        assert_eq!(unnamed_cn.names(), ["only-dns"]);
        assert!(ClientCertificate::of(b"not a certificate").names().is_empty());
    }
}
