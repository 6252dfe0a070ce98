//! gateway: the WebSocket endpoint `/v1/ws`.
//!
//! The token is checked before the upgrade (401 with a JSON body otherwise);
//! each accepted connection becomes a [`session::Session`] task that speaks the
//! protocol of docs/protocol.md. Live frames reach the socket through the
//! connection's [`link::Link`], mostly without waking the session. Connections
//! are cheap while idle: small read and write buffers, one bounded queue, no
//! per-subscription task.

mod auth;
mod link;
mod outbox;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{issue, Auth, AuthConfig};

use crate::delivery::Delivery;
use crate::hub::Hub;
use crate::inbox::Inbox;
use crate::limits::Limits;
use crate::membership::Membership;
use crate::protocol::HttpError;
use crate::store::Store;

/// Gateway tunables.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub max_frame_bytes: usize,
    pub max_content_bytes: usize,
    pub outbound_queue: usize,
    /// A connection whose socket takes nothing this long while frames wait is closed (4008).
    pub slow_consumer: Duration,
    pub backfill_page: i64,
    pub ping_interval: Duration,
    pub auto_delivered: bool,
    pub max_connections_per_user: u32,
}

/// What the gateway works with, built by the relay's wiring.
pub struct GatewayParts {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub membership: Arc<Membership>,
    pub auth: Arc<Auth>,
    pub delivery: Delivery,
    pub limits: Arc<Limits>,
    pub inbox: Arc<Inbox>,
}

/// Shared state of all sessions.
pub struct Gateway {
    pub parts: GatewayParts,
    pub cfg: GatewayConfig,
    /// Cancelled on SIGTERM: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for their close frames.
    pub sessions: TaskTracker,
    next_id: AtomicU64,
}

impl Gateway {
    pub fn new(parts: GatewayParts, cfg: GatewayConfig, shutdown: CancellationToken) -> Gateway {
        Gateway { parts, cfg, shutdown, sessions: TaskTracker::new(), next_id: AtomicU64::new(1) }
    }

    fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn unauthorized(message: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Json(HttpError { error: "unauthorized", message })).into_response()
}

/// `GET /v1/ws`
pub async fn ws_handler(
    State(gw): State<Arc<Gateway>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let Some(token) = params.get("access_token").cloned().or(bearer) else {
        return unauthorized("missing token: pass access_token=<jwt> or Authorization: Bearer <jwt>");
    };
    let identity = match gw.parts.auth.verify(&token).await {
        Ok(id) => id,
        Err(why) => return unauthorized(&why),
    };
    if gw.shutdown.is_cancelled() {
        let body = HttpError { error: "unavailable", message: "shutting down" };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Held by the session; given back when it ends, or here if the upgrade fails.
    let Some(slot) = gw.parts.limits.connect(identity.user_id) else {
        let message = format!(
            "this user already holds {} connections to this relay; close one first",
            gw.cfg.max_connections_per_user
        );
        let body = HttpError { error: "too_many_connections", message: &message };
        return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    };
    let max = gw.cfg.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Defaults are 128 KiB each per connection; an idle chat client needs
        // little. Frames handed over together are written together up to
        // this, so a burst costs one write per 16 KiB, not one per frame.
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        // The session bounds what waits (MAX_UNSENT); one frame may be big.
        .max_write_buffer_size(usize::MAX)
        .on_upgrade(move |socket| {
            let tracker = gw.sessions.clone();
            let (session, stream) = session::Session::open(gw, socket, identity);
            let f = async move {
                session.run(stream).await;
                drop(slot);
            };
            tracker.track_future(f)
        })
}
