//! The HTTPS listener: the JSON API under `/api/v1` and the dashboard at
//! `/`, served by the master itself when master.yaml has `api:` (off
//! otherwise; `init` writes a self-signed pair into the data dir, `demo`
//! turns it on at 127.0.0.1).
//!
//! # Layout
//! - [`tls`] — the certificate, the self-signed pair, the TLS listener.
//! - [`auth`] — bearer token (or `halite_token` cookie) → [`Principal`],
//!   the extractor every handler takes.
//! - [`api`] — one file per resource; [`openapi`]: the document at
//!   `/api/v1/openapi.json`.
//! - [`ring`] — the last [`ring::RING`] events, for `Last-Event-ID`.
//! - [`dashboard`] — the pages (issue #17 item 4).
//! - [`runtime`] — the thread all of it (and `/metrics`) runs on, niced,
//!   apart from the master's runtime.
//!
//! Every request body is capped at [`MAX_BODY`] and every response must
//! start within [`REQUEST_TIMEOUT`] (a stream, once started, runs on).
//! Streams end when the master stops, so the graceful shutdown finishes.
//! Nothing here decides anything the control socket decides differently:
//! handlers call the same `server/` functions and `server::access`'s one
//! rule.
//!
//! [`Principal`]: crate::server::access::Principal

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::server::context::Master;

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod openapi;
pub mod ring;
pub mod runtime;
pub mod tls;

/// The largest request body taken (an uploaded event for `check`, an
/// apply request): 1 MiB.
pub const MAX_BODY: usize = 1 << 20;
/// A response that has not started in this long is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler reaches.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The running master: keys, sessions, jobs, tree, bus, access.
    pub master: Arc<Master>,
    /// Recent events, for `Last-Event-ID`, and the last reload.
    pub ring: Arc<ring::Ring>,
    /// Cancelled when the master stops: streams end with it.
    pub cancel: CancellationToken,
}

/// The whole HTTP surface: the API and the dashboard, with the body limit
/// and the timeout.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(api::router())
        .merge(openapi::router())
        .merge(dashboard::router(&state))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Binds `config.listen` with its certificate and serves until `cancel`;
/// returns the URL (port 0 resolved) and the task, which ends once every
/// connection has finished.
pub async fn start(
    master: Arc<Master>,
    config: &ApiConfig,
    data_dir: &std::path::Path,
    cancel: CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let (cert, key) = (config.cert_path(data_dir), config.key_path(data_dir));
    if config.cert.is_none() && config.key.is_none() {
        // As with master.key: `run` alone makes what `init` would have.
        let (cert, key, names) = (cert.clone(), key.clone(), tls::names_for(&config.listen));
        if tokio::task::spawn_blocking(move || tls::self_signed(&cert, &key, &names)).await?? {
            tracing::info!(cert = %config.cert_path(data_dir).display(), "Made a self-signed certificate for the API.");
        }
    }
    let (client_ca, client_certs) = (config.client_ca.clone(), config.client_certs);
    let tls = tokio::task::spawn_blocking(move || {
        let clients = client_ca.as_deref().map(|ca| tls::ClientAuth { ca, certs: client_certs });
        tls::server_config_for(&cert, &key, clients)
    })
    .await??;
    let address: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("api: listen `{}` is not IP:PORT (write e.g. 127.0.0.1:8443)", config.listen))?;
    let tcp =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot bind the API on {address}"))?;
    let local = tcp.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::info!(api = %local, "The API is reachable beyond this host; every call needs a token.");
    }
    let listener = tls::TlsListener::new(tcp, tls, cancel.clone())?;
    let ring = ring::Ring::start(&master.bus, master.fleet.as_ref(), cancel.clone());
    let app = router(HttpState { master, ring, cancel: cancel.clone() });
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<tls::Peer>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "The API stopped.");
        }
    });
    Ok((format!("https://{local}"), task))
}
