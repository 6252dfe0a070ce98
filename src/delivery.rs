//! delivery: debounced delivered/read marking.
//!
//! `ack` and `read` frames only record a watermark in memory, coalesced per
//! (chat, user) keeping the highest seq. The first pending mark arms a timer;
//! when it fires (after `CHAT_RELAY_DELIVERED_DEBOUNCE_MS`), or earlier when
//! the batch is large, everything pending is written in ONE statement
//! ([`Store::apply_marks`]). A failed write keeps the marks (merged with newer
//! ones) and retries with backoff; shutdown flushes what is pending.
//! The status changes then come back through the WAL as `update` and
//! `receipt` events, which never cause another write: no loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics as m;
use crate::store::{Mark, Store};

/// A batch this large is flushed without waiting for the window.
const EAGER_BATCH: usize = 5_000;

#[derive(Default)]
struct Pending {
    delivered: HashMap<(Uuid, Uuid), i64>,
    read: HashMap<(Uuid, Uuid), i64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.delivered.len() + self.read.len()
    }
    fn merge(&mut self, other: Pending) {
        for (k, v) in other.delivered {
            let e = self.delivered.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
        for (k, v) in other.read {
            let e = self.read.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
    }
}

/// Handle for recording marks; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
}

impl Delivery {
    /// Starts the flusher task; it runs until `shutdown`, then flushes once more.
    pub fn start(
        store: Store,
        window: Duration,
        shutdown: CancellationToken,
    ) -> (Delivery, tokio::task::JoinHandle<()>) {
        let d = Delivery { pending: Arc::new(Mutex::new(Pending::default())), wake: Arc::new(Notify::new()) };
        let task = tokio::spawn(d.clone().flusher(store, window, shutdown));
        (d, task)
    }

    /// Everything up to `seq` reached one of the user's devices.
    pub fn delivered(&self, chat_id: Uuid, user_id: Uuid, seq: i64) {
        self.record(|p| &mut p.delivered, chat_id, user_id, seq);
    }

    /// The user has read up to `seq` (implies delivered).
    pub fn read(&self, chat_id: Uuid, user_id: Uuid, seq: i64) {
        self.record(|p| &mut p.read, chat_id, user_id, seq);
    }

    fn record(
        &self,
        which: fn(&mut Pending) -> &mut HashMap<(Uuid, Uuid), i64>,
        chat_id: Uuid,
        user_id: Uuid,
        seq: i64,
    ) {
        let (first, large) = match self.pending.lock() {
            Ok(mut p) => {
                let was_empty = p.len() == 0;
                let e = which(&mut p).entry((chat_id, user_id)).or_insert(seq);
                *e = (*e).max(seq);
                (was_empty, p.len() >= EAGER_BATCH)
            }
            Err(_) => return,
        };
        if first || large {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Pending {
        self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }

    fn put_back(&self, batch: Pending) {
        if let Ok(mut p) = self.pending.lock() {
            p.merge(batch);
        }
    }

    fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    async fn flusher(self, store: Store, window: Duration, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            // Let the window fill (unless the batch is already large).
            if self.pending_len() < EAGER_BATCH {
                tokio::select! {
                    _ = tokio::time::sleep(window) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            if self.flush(&store).await {
                failures = 0;
            } else {
                failures += 1;
                let wait =
                    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            if self.pending_len() > 0 {
                self.wake.notify_one();
            }
        }
        // Shutdown: a last flush, retried briefly.
        for _ in 0..10 {
            if self.pending_len() == 0 || self.flush(&store).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let left = self.pending_len();
        if left > 0 {
            tracing::error!(pending = left, "delivered/read marks could not be written before shutdown");
        }
    }

    /// Writes one batch; true on success (or nothing to do).
    async fn flush(&self, store: &Store) -> bool {
        let batch = self.take();
        if batch.len() == 0 {
            return true;
        }
        let to_marks = |m: &HashMap<(Uuid, Uuid), i64>| {
            let mut v: Vec<Mark> = m.iter().map(|(&(chat_id, user_id), &seq)| Mark { chat_id, user_id, seq }).collect();
            // One lock order for every writer: no deadlocks between flushes.
            v.sort_by_key(|m| (m.chat_id, m.user_id));
            v
        };
        let (delivered, read) = (to_marks(&batch.delivered), to_marks(&batch.read));
        match store.apply_marks(&delivered, &read).await {
            Ok(()) => {
                m::delivered_flush();
                tracing::debug!(delivered = delivered.len(), read = read.len(), "marks flushed");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = batch.len(), "flushing marks failed; will retry");
                self.put_back(batch);
                false
            }
        }
    }
}
