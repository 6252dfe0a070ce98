//! server: the operational HTTP endpoints beside `/v1/ws`.
//!
//! `/healthz` answers 200 while the process runs; `/readyz` answers 200 only
//! while the replication stream runs and the database answers, 503 with the
//! reason otherwise; `/metrics` is the Prometheus text exposition.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::replication::Health;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub prometheus: PrometheusHandle,
    pub health: Arc<Health>,
    pub store: Store,
    /// Set when this relay is one of several replicas (NATS).
    pub cluster: Option<ClusterState>,
}

/// A replica's readiness: its JetStream consumer runs, and, while it leads,
/// its replication stream.
#[derive(Clone)]
pub struct ClusterState {
    pub leading: Arc<std::sync::atomic::AtomicBool>,
    pub following: Arc<Health>,
    pub nats: async_nats::Client,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    let not_ready = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    match &s.cluster {
        None if !s.health.is_streaming() => return not_ready(s.health.reason()),
        None => {}
        Some(c) => {
            if c.nats.connection_state() != async_nats::connection::State::Connected {
                return not_ready("not connected to NATS".into());
            }
            if !c.following.is_streaming() {
                return not_ready(c.following.reason());
            }
            if c.leading.load(std::sync::atomic::Ordering::Acquire) && !s.health.is_streaming() {
                return not_ready(s.health.reason());
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: database did not answer within 2 s\n").into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.prometheus.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.prometheus.render()).into_response()
}

/// Waits until the relay at `port` on 127.0.0.1 answers `/readyz` with 200
/// (used by the demo and the benchmarks, which start their own relay).
pub async fn wait_ready(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok((200, _)) = http_get(port, "/readyz").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the relay did not become ready within {timeout:?}")
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: (status, body).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
