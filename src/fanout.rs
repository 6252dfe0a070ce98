//! fanout: the seam between the pipeline and whoever delivers its events.
//!
//! The pipeline hands every sequenced event to a [`Fanout`] and never waits
//! for it. Two implementations stand behind the seam:
//!
//! - [`LocalFanout`], the receiving side of every relay: this process's
//!   [`Hub`] (who is subscribed where), its [`Membership`] cache and its
//!   [`Inbox`] (every online user's conversation list). It is
//!   the one place that knows what a revocation, a membership change or a
//!   lost stream means for both: a single relay's pipeline calls it
//!   directly, and with replicas the NATS follower calls it for what it
//!   consumes.
//! - `cluster::publish::JetStreamFanout` on a cluster leader: everything goes
//!   to JetStream, and every replica's follower hands it to its own
//!   [`LocalFanout`].
//!
//! [`Backlog`] is how a fan-out that queues (JetStream) pushes back on the
//! pipeline without the pipeline knowing what it is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::hub::Hub;
use crate::inbox::Inbox;
use crate::membership::Membership;
use crate::protocol::EventFrame;

/// The pipeline's view of fan-out.
pub trait Fanout: Send + Sync {
    /// Whether anyone may want events of this chat (a broker-backed fan-out
    /// answers true); lets the pipeline skip encoding frames nobody reads.
    fn wants(&self, chat_id: &Uuid) -> bool;
    /// Offers a frame to every subscriber of its chat. Never waits. What
    /// connections take may wait for [`Fanout::flush`] (at most
    /// [`crate::hub::HOLD_AT_MOST`]).
    fn publish(&self, frame: Arc<EventFrame>);
    /// The publisher has nothing more at hand: write what was published.
    /// Called whenever its input is empty, so frames that arrived together
    /// leave together and a lone frame leaves at once.
    fn flush(&self) {}
    /// A message with `seq` was committed in `chat_id`, whether or not
    /// anyone wants its frame.
    fn committed(&self, _chat_id: Uuid, _seq: i64) {}
    /// `user_id` left `chat_id`: cut their subscriptions to it.
    fn revoke(&self, chat_id: Uuid, user_id: Uuid);
    /// `user_id` is (now) a participant of `chat_id`, or no longer one.
    fn member(&self, chat_id: Uuid, user_id: Uuid, member: bool);
    /// The stream lost continuity (a slot recreated, a table truncated, a
    /// consumer restarted): forget what was learned from it and tell every
    /// connection to resynchronise from the tables.
    fn resync_all(&self);
}

/// This process's hub, membership cache and inbox, fed by one stream of
/// events.
pub struct LocalFanout {
    hub: Arc<Hub>,
    membership: Arc<Membership>,
    inbox: Option<Arc<Inbox>>,
}

impl LocalFanout {
    pub fn new(hub: Arc<Hub>, membership: Arc<Membership>) -> LocalFanout {
        LocalFanout { hub, membership, inbox: None }
    }

    /// The same, with the users' inboxes fed too.
    pub fn with_inbox(mut self, inbox: Arc<Inbox>) -> LocalFanout {
        self.inbox = Some(inbox);
        self
    }
}

impl Fanout for LocalFanout {
    fn wants(&self, chat_id: &Uuid) -> bool {
        self.hub.wants(chat_id) || self.inbox.as_ref().is_some_and(|i| i.wants(chat_id))
    }

    fn publish(&self, frame: Arc<EventFrame>) {
        self.hub.publish(&frame);
        if let Some(inbox) = &self.inbox {
            inbox.frame(&frame);
        }
    }

    fn flush(&self) {
        self.hub.flush();
    }

    fn committed(&self, chat_id: Uuid, seq: i64) {
        self.hub.committed(chat_id, seq);
    }

    fn revoke(&self, chat_id: Uuid, user_id: Uuid) {
        // Learned first: a request racing the revocation is refused.
        self.membership.learn(chat_id, user_id, false);
        self.hub.revoke(chat_id, user_id);
        if let Some(inbox) = &self.inbox {
            inbox.member(chat_id, user_id, false);
        }
    }

    fn member(&self, chat_id: Uuid, user_id: Uuid, member: bool) {
        self.membership.learn(chat_id, user_id, member);
        if let Some(inbox) = &self.inbox {
            inbox.member(chat_id, user_id, member);
        }
    }

    fn resync_all(&self) {
        self.membership.clear();
        self.hub.resync_all();
        if let Some(inbox) = &self.inbox {
            inbox.resync();
        }
    }
}

/// Items a queueing fan-out holds but has not delivered yet; the pipeline
/// waits in [`Backlog::room`] while there are more than the limit.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    limit: usize,
    drained: Notify,
}

impl Backlog {
    pub fn new(limit: usize) -> Backlog {
        Backlog { queued: AtomicUsize::new(0), limit, drained: Notify::new() }
    }

    /// One more item queued.
    pub fn add(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// One item left the queue.
    pub fn done(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits while too much is queued (the broker slow or away).
    pub async fn room(&self) {
        while self.queued() > self.limit {
            let notified = self.drained.notified();
            if self.queued() <= self.limit {
                break;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn room_waits_until_the_backlog_drains_below_its_limit() {
        let backlog = Arc::new(Backlog::new(1));
        backlog.add();
        backlog.room().await; // at the limit: room
        backlog.add();
        let waiter = tokio::spawn({
            let b = backlog.clone();
            async move { b.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        backlog.done();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
