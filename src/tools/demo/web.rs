//! The browser chat of `chat-relay demo`: a small chat app built on the
//! TypeScript client and its React bindings (`clients/typescript`,
//! `clients/react`), served beside the relay.
//!
//! Everything is compiled into the binary (the page and its one bundled
//! script, committed in `clients/typescript/demo/`), so the demo needs no
//! Node at run time. The page asks `/demo/config` who is in which chat and
//! `/demo/token` for tokens: demo users only, signed with the demo's
//! throwaway secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PAGE: &str = include_str!("../../../clients/typescript/demo/index.html");
/// The app (`demo/app.jsx`) with React, the bindings and the client, bundled
/// by `npm run build` in clients/typescript (scripts/bundle-demo.mjs).
const APP: &str = include_str!("../../../clients/typescript/demo/app.js");

/// Who the page may sign in as, and their chats.
pub struct DemoPage {
    pub ws_url: String,
    pub users: Vec<(String, Uuid)>,
    pub chats: Vec<DemoChat>,
    pub secret: String,
    pub token_ttl_secs: i64,
}

/// One seeded chat, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DemoChat {
    /// Stable across runs (`alice-bob`, `group`, ...): the page and tests name chats by it.
    pub key: &'static str,
    pub id: Uuid,
    /// Groups have one; a pair is shown by the other person's name.
    pub title: Option<String>,
    /// User names.
    pub members: Vec<String>,
}

/// Serves the page until `stop`; returns the bound address at once.
pub async fn serve(page: DemoPage, port: u16, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP) }))
        .route("/demo/config", get(config))
        .route("/demo/token", get(token))
        .with_state(Arc::new(page));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok(addr)
}

async fn config(State(page): State<Arc<DemoPage>>) -> Json<Value> {
    let users: Vec<Value> = page.users.iter().map(|(name, id)| json!({"name": name, "id": id})).collect();
    Json(json!({"ws_url": page.ws_url, "users": users, "chats": page.chats}))
}

async fn token(State(page): State<Arc<DemoPage>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(user) = q.get("user").and_then(|u| Uuid::parse_str(u).ok()) else {
        return (StatusCode::BAD_REQUEST, "user=<uuid> required").into_response();
    };
    if !page.users.iter().any(|(_, id)| *id == user) {
        return (StatusCode::FORBIDDEN, "not a demo user").into_response();
    }
    match crate::gateway::issue(&page.secret, user, page.token_ttl_secs) {
        Ok(token) => Json(json!({"token": token})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
