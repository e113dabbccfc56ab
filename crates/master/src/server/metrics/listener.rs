//! The metrics listener: plain HTTP on `metrics.listen` (master.yaml), one
//! route, `GET /metrics`, answered from the counters in [`super::METRICS`]
//! and gauges read from the running master at that moment. Off unless
//! configured. It has no authentication and reads nothing from the
//! request: keep it on loopback or a scrape network.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::Gauges;
use crate::server::context::Master;

/// The content type of the OpenMetrics text format that prometheus-client
/// writes (Prometheus negotiates it; the 0.0.4 text parsers read it too).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics listener did not start; names the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {listen} (master.yaml `metrics.listen`): {source}")]
pub struct MetricsError {
    pub listen: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `listen` and serves `/metrics` until `cancel`; returns the address
/// bound (port 0 resolved).
pub async fn serve(
    master: Arc<Master>,
    listen: SocketAddr,
    store: Option<std::path::PathBuf>,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| MetricsError { listen, source })?;
    let bound = listener.local_addr().map_err(|source| MetricsError { listen, source })?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "The metrics listener is reachable beyond this host and has no authentication.");
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (master, store) = (master.clone(), store.clone());
            async move { scrape(&master, store.as_deref()).await }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::warn!(%error, "The metrics listener stopped.");
        }
    });
    Ok(bound)
}

/// One scrape: the gauges now, then every counter.
async fn scrape(master: &Master, store: Option<&std::path::Path>) -> Response {
    let sessions = master.sessions.list();
    let depths = master.engine.queue_depths();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut store_bytes = 0;
    if let Some(store) = store {
        for path in [store.to_path_buf(), crate::server::store::wal(store)] {
            if let Ok(meta) = tokio::fs::metadata(&path).await {
                store_bytes += i64::try_from(meta.len()).unwrap_or(i64::MAX);
            }
        }
    }
    let gauges = Gauges {
        sessions: count(sessions.len()),
        accepted: count(sessions.iter().filter(|s| s.accepted).count()),
        queued: count(depths.iter().map(|(_, d)| *d).sum()),
        queued_max: count(depths.iter().map(|(_, d)| *d).max().unwrap_or(0)),
        store_bytes,
    };
    match super::render(gauges) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response(),
    }
}
