//! limits: what one user may ask of the relay.
//!
//! Beside the gateway: a cap on open connections per user (further upgrades
//! get HTTP 429), a `send` rate per user (GCRA from `governor`: a steady
//! `CHAT_RELAY_SEND_RATE` per second with a burst of as many), a rate for
//! every other request that costs a database query or a cache entry
//! (`subscribe`, `history`, `ack`, `read`: `CHAT_RELAY_REQUEST_RATE`), and `typing`
//! at most once per second per user and chat. Limits are per relay process;
//! with replicas, a user spread over several replicas gets each one's share.
//! Limiter state is swept of users idle long enough to be back at full
//! allowance, so memory follows active users, not all users ever seen.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::metrics as m;

/// Settings, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_connections_per_user: u32,
    pub send_per_second: u32,
    pub requests_per_second: u32,
}

/// The per-user limits of one relay process.
pub struct Limits {
    cfg: LimitsConfig,
    connections: Arc<DashMap<Uuid, u32>>,
    sends: DefaultKeyedRateLimiter<Uuid>,
    requests: DefaultKeyedRateLimiter<Uuid>,
    typing: DefaultKeyedRateLimiter<(Uuid, Uuid)>,
}

/// One of a user's connection slots; given back when dropped.
pub struct ConnectionSlot {
    user: Uuid,
    connections: Arc<DashMap<Uuid, u32>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.connections.entry(self.user) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Limits {
        let rate = |n: u32| Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Limits {
            cfg,
            connections: Arc::default(),
            sends: RateLimiter::keyed(rate(cfg.send_per_second)),
            requests: RateLimiter::keyed(rate(cfg.requests_per_second)),
            typing: RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN)),
        }
    }

    /// A connection slot for `user`, or None when they hold the maximum
    /// (counted as rate limited).
    pub fn connect(&self, user: Uuid) -> Option<ConnectionSlot> {
        let mut n = self.connections.entry(user).or_insert(0);
        if *n >= self.cfg.max_connections_per_user {
            drop(n);
            m::rate_limited();
            return None;
        }
        *n += 1;
        Some(ConnectionSlot { user, connections: self.connections.clone() })
    }

    /// Connections `user` holds now.
    #[cfg(test)]
    pub fn connections(&self, user: &Uuid) -> u32 {
        self.connections.get(user).map(|n| *n).unwrap_or(0)
    }

    /// Ok when `user` may send now; else how long until they may (counted).
    pub fn send(&self, user: Uuid) -> Result<(), Duration> {
        Self::check(&self.sends, user)
    }

    /// Ok when `user` may make another `subscribe`, `history`, `ack` or
    /// `read` now; else how long until they may (counted).
    pub fn request(&self, user: Uuid) -> Result<(), Duration> {
        Self::check(&self.requests, user)
    }

    fn check(limiter: &DefaultKeyedRateLimiter<Uuid>, user: Uuid) -> Result<(), Duration> {
        limiter.check_key(&user).map_err(|not_until| {
            m::rate_limited();
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    /// Whether a `typing` of `user` in `chat` goes out now (at most one per
    /// second; the rest are dropped silently, as the protocol says).
    pub fn typing(&self, user: Uuid, chat: Uuid) -> bool {
        self.typing.check_key(&(user, chat)).is_ok()
    }

    /// Forgets limiter state of users back at full allowance; periodically.
    pub fn sweep(&self) {
        self.sends.retain_recent();
        self.sends.shrink_to_fit();
        self.requests.retain_recent();
        self.requests.shrink_to_fit();
        self.typing.retain_recent();
        self.typing.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, rate: u32) -> Limits {
        Limits::new(LimitsConfig { max_connections_per_user: max, send_per_second: rate, requests_per_second: rate })
    }

    #[test]
    fn connection_slots_are_capped_and_given_back() {
        let l = limits(2, 10);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = l.connect(alice).unwrap();
        let _a2 = l.connect(alice).unwrap();
        assert!(l.connect(alice).is_none(), "third connection refused");
        assert!(l.connect(bob).is_some(), "others are not affected");
        drop(a1);
        assert_eq!(l.connections(&alice), 1);
        assert!(l.connect(alice).is_some());
    }

    #[test]
    fn sends_allow_a_burst_then_say_when() {
        let l = limits(50, 5);
        let user = Uuid::new_v4();
        for _ in 0..5 {
            assert!(l.send(user).is_ok());
        }
        let wait = l.send(user).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        assert!(l.send(Uuid::new_v4()).is_ok(), "per user");
    }

    #[test]
    fn typing_is_once_per_second_per_user_and_chat() {
        let l = limits(50, 5);
        let (user, chat) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(l.typing(user, chat));
        assert!(!l.typing(user, chat));
        assert!(l.typing(user, Uuid::new_v4()), "another chat");
    }
}
