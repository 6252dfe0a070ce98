//! Every replica's side: the JetStream stream into the local hub.
//!
//! An ordered push consumer from "new" (what happened before is in the
//! table). Each (re)start tells every session to resynchronise from the
//! table, so a replica that lost its consumer for a while, or a stream that
//! dropped messages by its limits, never leaves a client with a hole.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Names;
use crate::fanout::{Fanout, LocalFanout};
use crate::protocol::{EventFrame, FrameKind};
use crate::replication::Health;

/// Consumes until `stop`, restarting with backoff; `health` says whether
/// the consumer runs (what `/readyz` reports on a replica).
pub async fn follow(
    client: async_nats::Client,
    names: Names,
    local: Arc<LocalFanout>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut wait = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            r = consume(&client, &names, &local, &health) => r,
            _ = stop.cancelled() => return,
        };
        let e = match result {
            Ok(()) => "the consumer ended".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "JetStream consumer failed; restarting");
        health.set(false, format!("JetStream consumer: {e}"));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

async fn consume(
    client: &async_nats::Client,
    names: &Names,
    local: &LocalFanout,
    health: &Health,
) -> Result<(), async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = super::ensure_stream(&js, names).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: names.all(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    health.set(true, "following the JetStream stream");
    // Whatever happened while no consumer ran is in the table.
    local.resync_all();
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        if let Ok(info) = msg.info() {
            crate::metrics::jetstream_pending(info.pending);
        }
        apply(&msg, names, local);
    }
    Ok(())
}

fn header<'a>(msg: &'a async_nats::jetstream::Message, name: &str) -> Option<&'a str> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str())
}

fn uuid_header(msg: &async_nats::jetstream::Message, name: &str) -> Option<Uuid> {
    header(msg, name).and_then(|v| Uuid::parse_str(v).ok())
}

/// One message into the hub; anything malformed is logged and skipped (the
/// sessions' seq checks and the table cover it).
fn apply(msg: &async_nats::jetstream::Message, names: &Names, local: &LocalFanout) {
    if msg.subject.as_str() == names.control() {
        let (chat, user) = (uuid_header(msg, "c"), uuid_header(msg, "u"));
        match (header(msg, "op"), chat, user) {
            (Some("revoke"), Some(c), Some(u)) => local.revoke(c, u),
            (Some("member"), Some(c), Some(u)) => local.member(c, u, header(msg, "in") == Some("1")),
            (Some("resync"), _, _) => local.resync_all(),
            _ => tracing::warn!(subject = %msg.subject, "unreadable control message skipped"),
        }
        return;
    }
    let Some(chat_id) = msg.subject.as_str().rsplit('.').next().and_then(|c| Uuid::parse_str(c).ok()) else {
        tracing::warn!(subject = %msg.subject, "message on an unexpected subject skipped");
        return;
    };
    let kind = match header(msg, "k") {
        Some("m") => FrameKind::Message,
        Some("u") => FrameKind::Update,
        Some("d") => FrameKind::Delete,
        Some("r") => FrameKind::Receipt,
        _ => {
            tracing::warn!(subject = %msg.subject, "frame without a kind skipped");
            return;
        }
    };
    let (Some(seq), Ok(text)) =
        (header(msg, "s").and_then(|s| s.parse::<i64>().ok()), std::str::from_utf8(&msg.payload))
    else {
        tracing::warn!(subject = %msg.subject, "unreadable frame skipped");
        return;
    };
    let commit_time = header(msg, "t")
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_micros);
    local.publish(Arc::new(EventFrame {
        chat_id,
        seq,
        kind,
        commit_time,
        subject: uuid_header(msg, "u"),
        text: Utf8Bytes::from(text),
    }));
}
