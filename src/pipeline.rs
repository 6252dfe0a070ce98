//! pipeline: committed transactions → chat events → sequencer → fan-out.
//!
//! ```text
//!  replication ──StreamEvent──▶ Pipeline::transaction ──ChatEvent──▶ Sequencer
//!      ▲                              │                                 │ Sequenced
//!      │                              │                                 ▼
//!      └── Checkpoint (safe LSN) ◀────┘            dispatch ──frames, revocations──▶ dyn Fanout
//! ```
//!
//! A transaction is taken one change at a time, so its size never matters
//! here. The sequencer lets each message pass once and in order, holding
//! what comes early; a gap it gives up waiting for is read from the table
//! ([`run`] does that, and only that, with the [`Store`]). After every step
//! the sequencer's safe LSN (nothing before it still held) goes to the
//! [`Checkpoint`], which lets the replicator confirm it to the slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::event::{push_events, ChatEvent};
use crate::fanout::{Backlog, Fanout};
use crate::lsn::Lsn;
use crate::pgoutput::{DecodeError, Transaction};
use crate::protocol::EventFrame;
use crate::replication::{Checkpoint, StreamEvent};
use crate::sequencer::{Sequenced, Sequencer};
use crate::store::Store;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A spilled transaction could not be read back: nothing past it may be
    /// confirmed, so the relay stops and a restart replays it.
    #[error("transaction at {lsn} cannot be read back: {source}")]
    Unreadable {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
}

/// Chat state the sequencer keeps is dropped after this long without events.
const SEQUENCER_IDLE: Duration = Duration::from_secs(300);

/// The pipeline stage: its sequencer, where its output goes, and what it
/// last reported as handed on.
pub struct Pipeline {
    seq: Sequencer,
    fanout: Arc<dyn Fanout>,
    checkpoint: Arc<dyn Checkpoint>,
    /// When the fan-out queues (JetStream): how much it holds; the stage
    /// waits, between changes, while that is over its limit.
    backlog: Option<Arc<Backlog>>,
    handed: Option<Lsn>,
    events: Vec<ChatEvent>,
    out: Vec<Sequenced>,
}

impl Pipeline {
    pub fn new(
        seq: Sequencer,
        fanout: Arc<dyn Fanout>,
        checkpoint: Arc<dyn Checkpoint>,
        backlog: Option<Arc<Backlog>>,
    ) -> Pipeline {
        Pipeline { seq, fanout, checkpoint, backlog, handed: None, events: Vec::new(), out: Vec::new() }
    }

    /// One committed transaction, change by change; while a queueing
    /// fan-out holds too much, the next change waits (so a transaction of
    /// any size is handed on in bounded memory).
    pub async fn transaction(&mut self, txn: Transaction) -> Result<(), PipelineError> {
        let commit_lsn = txn.commit_lsn;
        self.seq.begin(commit_lsn, txn.end_lsn, txn.commit_time);
        for change in txn.into_changes() {
            if let Some(backlog) = &self.backlog {
                backlog.room().await;
            }
            let change = change.map_err(|source| PipelineError::Unreadable { lsn: commit_lsn, source })?;
            if let Err(table) = push_events(change, &mut self.events) {
                tracing::warn!(table, lsn = %commit_lsn, "skipping a change that lacks ids or seq");
            }
            self.flush_events();
        }
        self.seq.commit();
        self.report();
        Ok(())
    }

    /// Events of the open transaction, through the sequencer to the fan-out.
    fn flush_events(&mut self) {
        let now = Instant::now();
        for event in self.events.drain(..) {
            self.seq.event(event, now, &mut self.out);
        }
        for item in self.out.drain(..) {
            dispatch(item, &*self.fanout);
        }
    }

    /// A new leadership term replays the slot from its confirmed position;
    /// the publisher dropped what an earlier term left unpublished, so
    /// nothing may be skipped as already seen.
    pub fn term(&mut self, term: u64) {
        self.seq.reset();
        self.handed = None;
        self.checkpoint.term(term);
        self.report();
    }

    /// The slot was recreated: seqs, ids and positions of the stream before
    /// mean nothing now, and every connection resynchronises.
    pub fn slot_reset(&mut self, reason: &str) {
        tracing::warn!(reason, "telling every connection to resynchronise");
        self.seq.reset();
        self.checkpoint.reset();
        self.handed = None;
        self.fanout.resync_all();
        self.report();
    }

    /// Gaps whose wait is over, each filled from the table (or retried when
    /// the table cannot be read: a gap is never counted unchecked).
    pub async fn fill_gaps(&mut self, store: &Store) {
        for gap in self.seq.expired(Instant::now()) {
            // What was published so far leaves before this waits on the table.
            self.fanout.flush();
            match store.messages_between(gap.chat_id, gap.after, gap.before).await {
                Ok(found) => {
                    for item in self.seq.fill(gap, found, Instant::now()) {
                        dispatch(item, &*self.fanout);
                    }
                }
                Err(e) => {
                    tracing::warn!(chat_id = %gap.chat_id, error = %e, "gap lookup failed; retrying");
                    self.seq.retry(gap, Instant::now());
                }
            }
        }
        self.report();
    }

    /// Forgets chats that were quiet for a while.
    pub fn sweep(&mut self) {
        let dropped = self.seq.evict_idle(Instant::now(), SEQUENCER_IDLE);
        if dropped > 0 {
            tracing::debug!(dropped, kept = self.seq.chats(), "forgot quiet chats");
        }
        self.report();
    }

    /// When the sequencer next wants [`Pipeline::fill_gaps`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.seq.next_deadline()
    }

    /// Reports the safe LSN when it moved.
    fn report(&mut self) {
        let safe = self.seq.safe_lsn();
        if self.handed != Some(safe) {
            self.checkpoint.handed_on(safe);
            self.handed = Some(safe);
        }
    }
}

/// Runs the stage until the stream ends.
pub async fn run(
    mut rx: mpsc::Receiver<StreamEvent>,
    mut pipeline: Pipeline,
    store: Store,
) -> Result<(), PipelineError> {
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(backlog) = &pipeline.backlog {
            backlog.room().await;
        }
        let deadline = pipeline.next_deadline();
        tokio::select! {
            ev = rx.recv() => match ev {
                None => return Ok(()),
                Some(StreamEvent::Transaction(txn)) => pipeline.transaction(txn).await?,
                Some(StreamEvent::Term(term)) => pipeline.term(term),
                Some(StreamEvent::SlotReset { reason }) => pipeline.slot_reset(&reason),
            },
            _ = sleep_until(deadline), if deadline.is_some() => pipeline.fill_gaps(&store).await,
            _ = sweep.tick() => pipeline.sweep(),
        }
        // Nothing more at hand: what was published leaves now (together,
        // when several transactions came at once).
        if rx.is_empty() {
            pipeline.fanout.flush();
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Turns one sequenced event into frames and membership changes. Never
/// waits: a subscriber that cannot take a frame falls behind (see
/// [`crate::hub`]).
pub fn dispatch(item: Sequenced, fanout: &dyn Fanout) {
    let (t, at) = (item.commit_time, item.position);
    if let ChatEvent::Inserted(row) = &item.event {
        fanout.committed(row.chat_id, row.seq);
    }
    // Frames for chats nobody is subscribed to are never encoded.
    let wanted = item.event.chat_id().is_none_or(|c| fanout.wants(&c));
    match item.event {
        ChatEvent::Inserted(_) | ChatEvent::Updated(_) | ChatEvent::Deleted { .. } if !wanted => {}
        ChatEvent::Inserted(row) => fanout.publish(Arc::new(EventFrame::message(&row, Some(t)).at(at))),
        ChatEvent::Updated(row) => fanout.publish(Arc::new(EventFrame::update(&row, Some(t)).at(at))),
        ChatEvent::Deleted { chat_id, id, seq } => {
            fanout.publish(Arc::new(EventFrame::delete(chat_id, id, seq, Some(t)).at(at)))
        }
        ChatEvent::ParticipantChanged { now, previous } => {
            fanout.member(now.chat_id, now.user_id, true);
            let moved = previous.is_some_and(|p| p.delivered_seq != now.delivered_seq || p.read_seq != now.read_seq);
            if moved && wanted {
                fanout.publish(Arc::new(EventFrame::receipt(&now, Some(t)).at(at)))
            }
        }
        ChatEvent::ParticipantRemoved { chat_id, user_id } => fanout.revoke(chat_id, user_id),
        ChatEvent::Truncated => fanout.resync_all(),
    }
}

#[cfg(test)]
mod tests;
