//! cluster: several relay replicas on one database, through NATS JetStream.
//!
//! With `CHAT_RELAY_NATS_URL` set, every replica runs the same `serve`:
//!
//! - [`leader`]: replicas compete for a session advisory lock on a direct
//!   Postgres connection; the holder runs the replicator (and so holds the
//!   slot). Losing the lock connection stops its stream at once. Each
//!   leadership is a term vouched for by a [`leader::Lease`].
//! - [`publish`]: the leader's pipeline hands each sequenced event to
//!   [`publish::JetStreamFanout`] (the [`crate::fanout::Fanout`] seam)
//!   instead of its hub: one JetStream message per frame, subject per chat,
//!   message id naming the change (see [`format::stream_id`]), so a replayed WAL range is dropped by
//!   JetStream's duplicate window. The slot is confirmed only up to what
//!   JetStream has acknowledged, and nothing is published for a term its
//!   lease no longer vouches for (a deposed leader waking up).
//! - [`follow`]: every replica, the leader included, consumes the stream and
//!   feeds its own hub. Anything a replica misses (a consumer restart, the
//!   stream's retention) is covered by the sessions' seq checks and a
//!   resynchronisation from the table: the table is the history, never the
//!   stream.
//! - [`presence`]: who is online and who is typing, over NATS core subjects,
//!   with heartbeats so a dead replica's users go offline everywhere.

pub mod follow;
pub mod format;
pub mod leader;
pub mod presence;
pub mod publish;

use std::time::Duration;

/// Subjects and stream of one slot's events.
#[derive(Debug, Clone)]
pub struct Names {
    /// `chat_relay.<slot>`: the stream's subjects.
    pub prefix: String,
    /// `chat_relay_live.<slot>`: ephemeral subjects (presence, typing),
    /// outside the stream.
    pub live: String,
    /// `CHAT_RELAY_<SLOT>`
    pub stream: String,
}

impl Names {
    pub fn new(slot: &str) -> Names {
        Names {
            prefix: format!("chat_relay.{slot}"),
            live: format!("chat_relay_live.{slot}"),
            stream: format!("CHAT_RELAY_{}", slot.to_uppercase()),
        }
    }

    /// Frames of one chat.
    pub fn chat(&self, chat: &uuid::Uuid) -> String {
        format!("{}.chat.{chat}", self.prefix)
    }

    /// Revocations, membership, resynchronisation.
    pub fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    /// Everything the stream holds: chat frames and control events.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    pub fn stream_subjects(&self) -> Vec<String> {
        vec![format!("{}.chat.*", self.prefix), self.control()]
    }
}

/// Stream limits: JetStream is a relay between replicas, not the history.
pub const MAX_AGE: Duration = Duration::from_secs(600);
pub const MAX_PER_SUBJECT: i64 = 10_000;
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates (or updates) the stream.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    names: &Names,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::Error> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    let config = Config {
        name: names.stream.clone(),
        subjects: names.stream_subjects(),
        retention: RetentionPolicy::Limits,
        max_age: MAX_AGE,
        max_messages_per_subject: MAX_PER_SUBJECT,
        duplicate_window: DUPLICATE_WINDOW,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        ..Default::default()
    };
    Ok(js.get_or_create_stream(config).await?)
}
