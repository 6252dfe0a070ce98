//! Membership checks, cached briefly and corrected at once by the WAL.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// Cache of "is this user a participant of this chat".
pub struct Membership {
    cache: DashMap<(Uuid, Uuid), (bool, Instant)>,
    ttl: Duration,
    store: Store,
}

impl Membership {
    pub fn new(store: Store, ttl: Duration) -> Membership {
        Membership { cache: DashMap::new(), ttl, store }
    }

    /// Checks, from cache when fresh.
    pub async fn check(&self, chat_id: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
        if let Some(answer) = self.cached(chat_id, user_id) {
            return Ok(answer);
        }
        let asked = Instant::now();
        let member = self.store.is_participant(chat_id, user_id).await?;
        // Don't overwrite what the WAL said while we were asking.
        let mut entry = self.cache.entry((chat_id, user_id)).or_insert((member, asked));
        if entry.1 <= asked {
            *entry = (member, asked);
        }
        Ok(entry.0)
    }

    /// The cached answer, when fresh.
    pub fn cached(&self, chat_id: Uuid, user_id: Uuid) -> Option<bool> {
        self.cache.get(&(chat_id, user_id)).filter(|e| e.1.elapsed() < self.ttl).map(|e| e.0)
    }

    /// The WAL says the participant row now exists (true) or is gone (false).
    pub fn learn(&self, chat_id: Uuid, user_id: Uuid, member: bool) {
        self.cache.insert((chat_id, user_id), (member, Instant::now()));
    }

    /// Forget everything (after a truncate or a lost slot).
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Drops stale entries; called periodically.
    pub fn sweep(&self) {
        self.cache.retain(|_, e| e.1.elapsed() < self.ttl);
    }
}
