//! Membership answers for `ack`, `read` and `typing`, cached briefly.
//!
//! Only requests that change nothing a stranger could use rely on this cache:
//! subscribe, history, catch-up and send check participation in SQL, in the
//! same statement that reads or writes. The WAL corrects cached answers at
//! once (a removal is learned the moment it streams), and the cache only
//! holds pairs a connection asked about recently: at most [`CAPACITY`],
//! least recently used first out, each for the configured TTL.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// Cached (chat, user) answers, at most.
pub const CAPACITY: usize = 100_000;

/// Cache of "is this user a participant of this chat".
pub struct Membership {
    cache: Mutex<LruCache<(Uuid, Uuid), (bool, Instant)>>,
    ttl: Duration,
    store: Store,
}

impl Membership {
    pub fn new(store: Store, ttl: Duration) -> Membership {
        Self::with_capacity(store, ttl, CAPACITY)
    }

    pub fn with_capacity(store: Store, ttl: Duration, capacity: usize) -> Membership {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Membership { cache: Mutex::new(LruCache::new(cap)), ttl, store }
    }

    /// Checks, from cache when fresh.
    pub async fn check(&self, chat_id: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
        if let Some(answer) = self.cached(chat_id, user_id) {
            return Ok(answer);
        }
        let asked = Instant::now();
        let member = self.store.is_participant(chat_id, user_id).await?;
        let Ok(mut cache) = self.cache.lock() else { return Ok(member) };
        // Don't overwrite what the WAL said while we were asking.
        match cache.get_mut(&(chat_id, user_id)) {
            Some(e) if e.1 > asked => Ok(e.0),
            Some(e) => {
                *e = (member, asked);
                Ok(member)
            }
            None => {
                cache.put((chat_id, user_id), (member, asked));
                Ok(member)
            }
        }
    }

    /// The cached answer, when fresh.
    pub fn cached(&self, chat_id: Uuid, user_id: Uuid) -> Option<bool> {
        let mut cache = self.cache.lock().ok()?;
        cache.get(&(chat_id, user_id)).filter(|e| e.1.elapsed() < self.ttl).map(|e| e.0)
    }

    /// The WAL says the participant row now exists (true) or is gone (false).
    /// Only pairs already cached are touched: participant changes of chats
    /// nobody asked about must not fill the cache.
    pub fn learn(&self, chat_id: Uuid, user_id: Uuid, member: bool) {
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(e) = cache.peek_mut(&(chat_id, user_id)) {
                *e = (member, Instant::now());
            }
        }
    }

    /// Forget everything (after a truncate or a lost slot).
    pub fn clear(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// Drops stale entries; called periodically.
    pub fn sweep(&self) {
        let Ok(mut cache) = self.cache.lock() else { return };
        let stale: Vec<(Uuid, Uuid)> =
            cache.iter().filter(|(_, e)| e.1.elapsed() >= self.ttl).map(|(k, _)| *k).collect();
        for k in stale {
            cache.pop(&k);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgconn::ConnInfo;

    /// A store that is never reached: these tests only touch the cache.
    fn store() -> Store {
        Store::new(&ConnInfo::parse("postgres://u:p@127.0.0.1:1/db?sslmode=disable").unwrap(), 1).unwrap()
    }

    fn seeded(m: &Membership, chat: Uuid, user: Uuid, member: bool) {
        m.cache.lock().unwrap().put((chat, user), (member, Instant::now()));
    }

    #[tokio::test]
    async fn learning_corrects_only_pairs_someone_asked_about() {
        let m = Membership::new(store(), Duration::from_secs(30));
        let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
        // A bulk import of participants for chats nobody watches.
        for _ in 0..1000 {
            m.learn(Uuid::new_v4(), Uuid::new_v4(), true);
        }
        assert!(m.is_empty());
        seeded(&m, chat, user, true);
        m.learn(chat, user, false);
        assert_eq!(m.cached(chat, user), Some(false), "the removal is learned at once");
    }

    #[tokio::test]
    async fn the_cache_is_capped() {
        let m = Membership::with_capacity(store(), Duration::from_secs(30), 100);
        for _ in 0..1000 {
            seeded(&m, Uuid::new_v4(), Uuid::new_v4(), false);
        }
        assert_eq!(m.len(), 100);
    }

    #[tokio::test]
    async fn stale_answers_are_not_used_and_are_swept() {
        let m = Membership::new(store(), Duration::from_millis(1));
        let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
        m.cache.lock().unwrap().put((chat, user), (true, Instant::now() - Duration::from_secs(1)));
        assert_eq!(m.cached(chat, user), None);
        m.sweep();
        assert!(m.is_empty());
    }
}
