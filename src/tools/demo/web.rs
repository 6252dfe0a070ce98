//! The browser chat of `chat-relay demo`: a static page built from the
//! TypeScript client (`clients/typescript`), served beside the relay.
//!
//! Everything is compiled into the binary (the client's committed `dist/`
//! and the page), so the demo needs no Node at run time. The page asks
//! `/demo/config` who is in the chat and `/demo/token` for tokens: demo
//! users only, signed with the demo's throwaway secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The client, by file name: one ES module bundled from its `dist/`
/// (`npm run build` writes `demo/client.js`), so this list does not follow
/// the client's own module layout.
const CLIENT: &[(&str, &str)] = &[("index.js", include_str!("../../../clients/typescript/demo/client.js"))];
const PAGE: &str = include_str!("../../../clients/typescript/demo/index.html");
const APP: &str = include_str!("../../../clients/typescript/demo/app.js");

/// Who the page may sign in as.
pub struct DemoChat {
    pub ws_url: String,
    pub chat_id: Uuid,
    pub users: Vec<(String, Uuid)>,
    pub secret: String,
    pub token_ttl_secs: i64,
}

/// Serves the page until `stop`; returns the bound address at once.
pub async fn serve(chat: DemoChat, port: u16, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/app.js", get(|| async { js(APP) }))
        .route("/client/{file}", get(client_file))
        .route("/demo/config", get(config))
        .route("/demo/token", get(token))
        .with_state(Arc::new(chat));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok(addr)
}

fn js(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body).into_response()
}

async fn client_file(Path(file): Path<String>) -> Response {
    match CLIENT.iter().find(|(name, _)| *name == file) {
        Some((_, body)) => js(body),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

async fn config(State(chat): State<Arc<DemoChat>>) -> Json<Value> {
    let users: Vec<Value> = chat.users.iter().map(|(name, id)| json!({"name": name, "id": id})).collect();
    Json(json!({"ws_url": chat.ws_url, "chat_id": chat.chat_id, "users": users}))
}

async fn token(State(chat): State<Arc<DemoChat>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(user) = q.get("user").and_then(|u| Uuid::parse_str(u).ok()) else {
        return (StatusCode::BAD_REQUEST, "user=<uuid> required").into_response();
    };
    if !chat.users.iter().any(|(_, id)| *id == user) {
        return (StatusCode::FORBIDDEN, "not a demo user").into_response();
    }
    match crate::gateway::issue(&chat.secret, user, chat.token_ttl_secs) {
        Ok(token) => Json(json!({"token": token})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
