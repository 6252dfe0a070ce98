//! Presence and typing across replicas, over NATS core subjects (ephemeral:
//! nothing of this is stored; JetStream is for messages).
//!
//! Each replica publishes its users' presence changes and typing as they
//! happen, and a heartbeat with everything it holds every [`HEARTBEAT`]. A
//! replica that starts asks the others for theirs at once. A replica not
//! heard from for [`EXPIRE`] is taken as gone: its users go offline
//! everywhere (well within 10 s of its death).
//!
//! Subjects and bodies: [`super::format::Live`] (outside the JetStream
//! stream's subjects).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::format::{live_subjects, Live};
use super::Names;
use crate::hub::{Hub, PresenceOut};

pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const EXPIRE: Duration = Duration::from_secs(6);

/// Runs until `stop`.
/// `replica` is this process's id, as in [`super::format`]'s headers.
pub async fn run(client: async_nats::Client, names: Names, replica: Uuid, hub: Arc<Hub>, stop: CancellationToken) {
    let me = replica.to_string();
    let mut out = hub.presence_out();
    let mut incoming = match client.subscribe(live_subjects(&names)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to presence; presence stays local to this replica");
            return;
        }
    };
    let publish = |live: Live| {
        let client = client.clone();
        let (subject, payload) = live.encode(&names);
        async move {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::debug!(error = %e, "presence publish failed");
            }
        }
    };
    let heartbeat = |hub: &Hub| Live::Heartbeat { replica: me.clone(), set: hub.local_presence() };
    // Learn the others' sets now, not a heartbeat from now.
    publish(Live::Sync { replica: me.clone() }).await;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                publish(heartbeat(&hub)).await;
                let now = Instant::now();
                let gone: Vec<String> = seen.iter().filter(|(_, t)| now - **t > EXPIRE).map(|(r, _)| r.clone()).collect();
                for r in gone {
                    tracing::info!(replica = r, "replica silent; its users go offline");
                    seen.remove(&r);
                    hub.remote_replace(&r, HashSet::new());
                }
            }
            o = out.recv() => match o {
                Some(PresenceOut::Changed(chat_id, user_id, online)) => {
                    publish(Live::Delta { replica: me.clone(), chat_id, user_id, online }).await
                }
                Some(PresenceOut::Typing(chat_id, user_id)) => {
                    publish(Live::Typing { replica: me.clone(), chat_id, user_id }).await
                }
                None => return,
            },
            m = incoming.next() => {
                let Some(m) = m else { return };
                let Some(live) = Live::decode(m.subject.as_str(), &m.payload) else { continue };
                if live.replica() == me {
                    continue;
                }
                match live {
                    Live::Heartbeat { replica, set } => {
                        seen.insert(replica.clone(), Instant::now());
                        hub.remote_replace(&replica, set.into_iter().collect());
                    }
                    Live::Delta { replica, chat_id, user_id, online } => {
                        seen.insert(replica.clone(), Instant::now());
                        hub.remote_set(&replica, chat_id, user_id, online);
                    }
                    Live::Typing { chat_id, user_id, .. } => hub.remote_typing(chat_id, user_id),
                    Live::Sync { .. } => publish(heartbeat(&hub)).await,
                }
            }
        }
    }
}
