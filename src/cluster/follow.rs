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
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::format::{self, StreamEvent};
use super::Names;
use crate::fanout::{Fanout, LocalFanout};
use crate::protocol::FrameKind;
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
        // What the consumer published before it ended leaves now.
        local.flush();
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
    loop {
        // Nothing more at hand: what was published leaves now.
        let next = match messages.next().now_or_never() {
            Some(next) => next,
            None => {
                local.flush();
                messages.next().await
            }
        };
        let Some(msg) = next else { break };
        let msg = msg?;
        if let Ok(info) = msg.info() {
            crate::metrics::jetstream_pending(info.pending);
        }
        apply(&msg, names, local);
    }
    Ok(())
}

/// One message into the local fan-out; anything unreadable is logged and
/// skipped (the sessions' seq checks and the table cover it).
fn apply(msg: &async_nats::jetstream::Message, names: &Names, local: &LocalFanout) {
    match format::decode(names, msg.subject.as_str(), msg.headers.as_ref(), &msg.payload) {
        Ok(StreamEvent::Frame(frame)) => {
            if frame.kind == FrameKind::Message {
                local.committed(frame.chat_id, frame.seq);
            }
            local.publish(frame)
        }
        Ok(StreamEvent::Revoke { chat_id, user_id }) => local.revoke(chat_id, user_id),
        Ok(StreamEvent::Member { chat_id, user_id, member }) => local.member(chat_id, user_id, member),
        Ok(StreamEvent::Resync) => local.resync_all(),
        Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "stream message skipped"),
    }
}
